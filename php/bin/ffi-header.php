<?php

/**
 * Writes the FFI header for ffi.preload (the FFI block of larder.h, with FFI_SCOPE
 * "larder" and FFI_LIB set to the library's path) to standard output:
 *
 *   php8.2 php/bin/ffi-header.php [/path/to/liblarder.so [/path/to/larder.h]] > /etc/php/8.2/larder.ffi.h
 *
 * then in php.ini: ffi.enable=preload and ffi.preload=/etc/php/8.2/larder.ffi.h. Without
 * arguments the library and header are found as Larder\Library documents.
 */

declare(strict_types=1);

require __DIR__ . '/../src/Exception.php';
require __DIR__ . '/../src/LibraryException.php';
require __DIR__ . '/../src/Library.php';

try {
    echo Larder\Library::ffiHeader($argv[1] ?? null, $argv[2] ?? null);
} catch (Larder\LibraryException $e) {
    fwrite(STDERR, 'ffi-header.php: ' . $e->getMessage() . "\n");
    exit(1);
}
