<?php

/**
 * Test-only operations that op.php does not need (scenarios of the FPM suite, the kill
 * comparison and the benchmark), one per request:
 *
 *   lab.php?op=hold_entry&cache=C&key=K&value=V&started=PATH&gate=PATH
 *       entry() whose generator counts its runs in the counter "runs:K", writes the file
 *       started, then waits (20 s deadline) while the file gate exists.
 *   lab.php?op=hold_ticket&cache=C&key=K&value=V&started=PATH&gate=PATH
 *       ticket(), then as above, then storeWithTicket(): {"stored": bool}.
 *   lab.php?op=stop_entry&cache=C&key=K&value=V
 *       entry() whose generator SIGSTOPs its own worker (holding the fill).
 *   lab.php?op=fatal_entry&cache=C&key=K
 *       entry() whose generator dies of a fatal error (memory_limit), which skips finally.
 *   lab.php?op=apcu_stop_entry&key=K&value=V, op=apcu_fetch&key=K, op=apcu_store&key=K&value=V
 *       the same for APCu (whose apcu_entry holds APCu's lock around the generator).
 *   lab.php?op=bench&lib=larder|apcu&kind=fetch|store&n=N[&cache=C]
 *       N operations in a loop inside the request: {"ns_per_op": ...}.
 *   lab.php?op=bench&lib=ffi&kind=trivial|get&n=N&cache=C
 *       the same loop around bare FFI calls through the FFI object Cache uses: trivial,
 *       larder_close(NULL) (a documented no-op: one pointer in, nothing returned); get,
 *       larder_get of a hit with the Cache's own handle and buffer (the C call of fetch,
 *       without the PHP around it).
 *   lab.php?op=open_cost&cache=C[&persistent=0]
 *       the time of `new Larder\Cache(C)` in this request: {"open_ns": ...}.
 */

declare(strict_types=1);

require __DIR__ . '/boot.php';

try {
    $op = param('op');
    switch ($op) {
        case 'hold_entry':
            $cache = open_cache();
            $generated = false;
            $value = $cache->entry(param('key'), static function (string $key) use ($cache, &$generated): string {
                $generated = true;
                $cache->inc("runs:{$key}");
                file_put_contents(param('started'), (string) getmypid());
                wait_for_gate(param('gate'));
                return param('value');
            });
            answer(['ok' => true, 'generated' => $generated] + value_fields($value));
        case 'hold_ticket':
            $cache = open_cache();
            $ticket = $cache->ticket(param('key'));
            file_put_contents(param('started'), (string) getmypid());
            wait_for_gate(param('gate'));
            answer(['ok' => true, 'stored' => $cache->storeWithTicket($ticket, param('value'))]);
        case 'stop_entry':
            $cache = open_cache();
            $value = $cache->entry(param('key'), static function (): string {
                posix_kill(getmypid(), SIGNAL_STOP);
                return param('value');
            });
            answer(['ok' => true] + value_fields($value));
        case 'fatal_entry':
            $cache = open_cache();
            $cache->entry(param('key'), static function (): string {
                ini_set('memory_limit', '16M');
                return str_repeat('x', 64 << 20);
            });
            answer(['ok' => false, 'error' => 'the generator returned']);
        case 'apcu_stop_entry':
            $value = apcu_entry(param('key'), static function (): string {
                posix_kill(getmypid(), SIGNAL_STOP);
                return param('value');
            });
            answer(['ok' => true, 'value' => $value]);
        case 'apcu_fetch':
            $value = apcu_fetch(param('key'), $found);
            answer(['ok' => true, 'found' => $found, 'value' => $found ? $value : null]);
        case 'apcu_store':
            answer(['ok' => true, 'stored' => apcu_store(param('key'), param('value'))]);
        case 'bench':
            $n = (int) param('n');
            $kind = param('kind');
            $value = str_repeat('v', 256);
            $keys = [];
            for ($i = 0; $i < 1000; $i++) {
                $keys[] = sprintf('bench:key:%024d', $i);
            }
            if (param('lib') === 'ffi') {
                $ffi = Larder\Library::ffi();
                if ($kind === 'trivial') {
                    $t = hrtime(true);
                    for ($i = 0; $i < $n; $i++) {
                        $ffi->larder_close(null); // documented as a no-op
                    }
                    answer(['ok' => true, 'ns_per_op' => (hrtime(true) - $t) / $n]);
                }
                $cache = open_cache();
                foreach ($keys as $k) {
                    $cache->store($k, $value);
                }
                // The handle and buffers of the Cache (under ffi.enable=preload only preloaded
                // code may create CData; calling functions is allowed everywhere).
                $field = static fn (string $name) => (new ReflectionProperty(Larder\Cache::class, $name))
                    ->getValue($cache);
                [$handle, $buf, $cap, $lenPtr] = [$field('handle'), $field('buf'), $field('cap'), $field('lenPtr')];
                $t = hrtime(true);
                for ($i = 0; $i < $n; $i++) {
                    $k = $keys[$i % 1000];
                    $ffi->larder_get($handle, $k, strlen($k), $buf, $cap, $lenPtr);
                }
                answer(['ok' => true, 'ns_per_op' => (hrtime(true) - $t) / $n]);
            } elseif (param('lib') === 'larder') {
                $cache = open_cache();
                foreach ($keys as $k) {
                    $cache->store($k, $value);
                }
                $t = hrtime(true);
                for ($i = 0; $i < $n; $i++) {
                    $kind === 'fetch' ? $cache->fetch($keys[$i % 1000]) : $cache->store($keys[$i % 1000], $value);
                }
            } else {
                foreach ($keys as $k) {
                    apcu_store($k, $value);
                }
                $t = hrtime(true);
                for ($i = 0; $i < $n; $i++) {
                    $kind === 'fetch' ? apcu_fetch($keys[$i % 1000]) : apcu_store($keys[$i % 1000], $value);
                }
            }
            answer(['ok' => true, 'ns_per_op' => (hrtime(true) - $t) / $n]);
        case 'open_cost':
            $persistent = param('persistent', '1') === '1';
            $t = hrtime(true);
            $cache = new Larder\Cache(param('cache'), ['persistent' => $persistent]);
            $ns = hrtime(true) - $t;
            $cache->fetch('k');
            answer(['ok' => true, 'open_ns' => $ns]);
        default:
            answer(['ok' => false, 'error' => 'usage', 'message' => "unknown op {$op}"]);
    }
} catch (Throwable $e) {
    answer_error($e);
}
