<?php

/**
 * Shared by the test scripts: the Larder\ classes (preloaded in the test pools; an
 * autoloader where they are not), the query, and the functions of functions.php.
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

require_once __DIR__ . '/functions.php';
