<?php

/**
 * Shared by the test scripts: the Larder\ classes (preloaded in the test pools; an
 * autoloader where they are not) and the JSON answer.
 */

declare(strict_types=1);

if (!class_exists(Larder\Cache::class)) {
    spl_autoload_register(static function (string $class): void {
        if (str_starts_with($class, 'Larder\\')) {
            require __DIR__ . '/../../src/' . substr($class, strlen('Larder\\')) . '.php';
        }
    });
}

// From the command line (the benchmark): NAME=VALUE arguments are the query.
if (PHP_SAPI === 'cli' && !empty($argv) && count($argv) > 1) {
    parse_str(implode('&', array_slice($argv, 1)), $_GET);
}

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

/** The cache named by the query: default options, but capacity=BYTES if given. */
function open_cache(): Larder\Cache
{
    $options = [];
    if (isset($_GET['capacity'])) {
        $options['capacity'] = (int) param('capacity');
    }
    if (isset($_GET['shards'])) {
        $options['shards'] = (int) param('shards');
    }
    return new Larder\Cache(param('cache'), $options);
}

/** The value fields of an answer: the string, and its bytes in hex (values may be binary). */
function value_fields(string $value): array
{
    return ['value' => $value, 'value_hex' => bin2hex($value)];
}
