<?php

/**
 * opcache.preload script: preloads the Larder\ classes and, unless ffi.preload already
 * did, loads liblarder.so and its declarations as the FFI scope 'larder', which requests
 * then reach with FFI::scope('larder') (ffi.enable=preload refuses FFI::cdef in requests).
 *
 * A server that starts as root (the usual PHP-FPM master) needs opcache.preload_user,
 * and PHP runs the preload script in a child as that user, where FFI::load is refused:
 * there, load the library with ffi.preload and a header from bin/ffi-header.php:
 *
 *   ffi.enable=preload
 *   ffi.preload=/etc/php/8.2/larder.ffi.h   ; php8.2 php/bin/ffi-header.php > that file
 *   opcache.preload=/path/to/php/preload.php
 *   opcache.preload_user=www-data
 *
 * A server that starts as its own user can leave ffi.preload out: this script loads the
 * library itself, found as Larder\Library documents.
 */

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'Larder\\')) {
        require __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen('Larder\\'))) . '.php';
    }
});

foreach (glob(__DIR__ . '/src/*.php') as $file) {
    class_exists('Larder\\' . basename($file, '.php'));
}

(static function (): void {
    try {
        FFI::scope(Larder\Library::SCOPE);
        return; // ffi.preload loaded it
    } catch (FFI\Exception) {
        // Not loaded yet: load it here.
    }
    // FFI::load takes a file (only there are FFI_SCOPE and FFI_LIB read): write one,
    // load it, remove it.
    $file = tempnam(sys_get_temp_dir(), 'larder-ffi-');
    if ($file === false) {
        throw new Larder\LibraryException('preload: cannot create a temporary file in ' . sys_get_temp_dir());
    }
    try {
        file_put_contents($file, Larder\Library::ffiHeader());
        try {
            $loaded = FFI::load($file);
        } catch (FFI\Exception $e) {
            throw new Larder\LibraryException(sprintf(
                'preload: FFI::load refused (%s); load the library with ffi.preload and a header '
                . 'written by php/bin/ffi-header.php instead (see php/README.md)',
                $e->getMessage()
            ), 0, $e);
        }
        if ($loaded === null) {
            throw new Larder\LibraryException(
                'preload: FFI::load could not load ' . Larder\Library::libraryPath() . ' (see the log above)'
            );
        }
    } finally {
        unlink($file);
    }
})();
