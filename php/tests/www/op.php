<?php

/**
 * One cache operation per request, for tests in any language:
 *
 *   op.php?cache=NAME&op=OP&key=K[&value=V][&ttl=SECONDS][&capacity=BYTES][&shards=N]
 *         [&fill_timeout_ms=MS]
 *
 * OP: fetch, store, add, delete, inc (value = the step, default 1), entry (its generator
 * returns value), stats. Prints one JSON object with "ok" and "pid" (the worker's):
 *   fetch   {"ok":true,"found":true,"value":"...","value_hex":"..."}  (found false: no value)
 *   store   {"ok":true,"stored":true}
 *   add     {"ok":true,"stored":false}          (false: a fresh value was there)
 *   delete  {"ok":true,"deleted":true}          (false: there was no value)
 *   inc     {"ok":true,"value":"7"}             (or ok false, error "not a counter")
 *   entry   {"ok":true,"value":"...","value_hex":"...","generated":true}
 *   stats   {"ok":true,"stats":{"entries":1,...}}
 * An exception gives HTTP status 500 and {"ok":false,"error":CLASS,"status":
 * "LARDER_E_...","message":"..."}. The cache is opened with larder's default options
 * except capacity, shards and fill_timeout_ms when given.
 */

declare(strict_types=1);

require __DIR__ . '/boot.php';

try {
    $cache = open_cache();
    $op = param('op');
    $ttl = (int) param('ttl', '0');
    switch ($op) {
        case 'fetch':
            $value = $cache->fetch(param('key'), $found);
            answer($found ? ['ok' => true, 'found' => true] + value_fields($value) : ['ok' => true, 'found' => false]);
        case 'store':
            answer(['ok' => true, 'stored' => $cache->store(param('key'), param('value'), $ttl)]);
        case 'add':
            answer(['ok' => true, 'stored' => $cache->add(param('key'), param('value'), $ttl)]);
        case 'delete':
            answer(['ok' => true, 'deleted' => $cache->delete(param('key'))]);
        case 'inc':
            $value = $cache->inc(param('key'), (int) param('value', '1'), $success, $ttl);
            answer($success
                ? ['ok' => true, 'value' => (string) $value]
                : ['ok' => false, 'error' => 'not a counter', 'status' => '', 'message' => 'not a counter']);
        case 'entry':
            $generated = false;
            $value = $cache->entry(param('key'), static function () use (&$generated): string {
                $generated = true;
                return param('value');
            }, $ttl);
            answer(['ok' => true, 'generated' => $generated] + value_fields($value));
        case 'stats':
            answer(['ok' => true, 'stats' => $cache->stats()]);
        default:
            answer(['ok' => false, 'error' => 'usage', 'message' => "unknown op {$op}"]);
    }
} catch (Throwable $e) {
    answer_error($e);
}
