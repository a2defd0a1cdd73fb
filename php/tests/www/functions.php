<?php

/**
 * The functions of the test scripts (required by boot.php): the JSON answer, the query
 * parameters, the cache they name.
 */

declare(strict_types=1);

/** Prints one JSON object (status 500 when ok is false) and ends the request. */
function answer(array $fields): never
{
    $fields += ['pid' => getmypid()];
    if (($fields['ok'] ?? false) !== true) {
        http_response_code(500);
    }
    header('Content-Type: application/json');
    echo json_encode($fields, JSON_INVALID_UTF8_SUBSTITUTE | JSON_UNESCAPED_SLASHES), "\n";
    exit;
}

/** The answer for an exception: its class, larder_status name and message. */
function answer_error(Throwable $e): never
{
    answer([
        'ok' => false,
        'error' => get_class($e),
        'status' => $e instanceof Larder\Exception ? $e->getStatusName() : '',
        'message' => $e->getMessage(),
    ]);
}

/** A query parameter; a missing required one ends the request with ok:false. */
function param(string $name, ?string $default = null): string
{
    $value = $_GET[$name] ?? $default;
    if (!is_string($value)) {
        answer(['ok' => false, 'error' => 'usage', 'message' => "missing query parameter {$name}"]);
    }
    return $value;
}

/**
 * The cache named by the query: default options, but capacity, shards and
 * fill_timeout_ms (integers) where given.
 */
function open_cache(): Larder\Cache
{
    $options = [];
    foreach (['capacity', 'shards', 'fill_timeout_ms'] as $option) {
        if (isset($_GET[$option])) {
            $options[$option] = (int) param($option);
        }
    }
    return new Larder\Cache(param('cache'), $options);
}

/** The value fields of an answer: the string, and its bytes in hex (values may be binary). */
function value_fields(string $value): array
{
    return ['value' => $value, 'value_hex' => bin2hex($value)];
}

/** Linux's SIGSTOP (the constant is pcntl's, which php-fpm does not load). */
const SIGNAL_STOP = 19;

/** Waits while $gate exists, with a deadline. */
function wait_for_gate(string $gate): void
{
    $deadline = hrtime(true) + 20_000_000_000;
    while (file_exists($gate) && hrtime(true) < $deadline) {
        usleep(1000); // poll interval; the deadline bounds the wait
    }
}
