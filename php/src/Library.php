<?php

declare(strict_types=1);

namespace Larder;

use FFI;

/**
 * Loads liblarder.so through PHP's FFI, once per request.
 *
 * Two ways, tried in this order:
 *
 *  1. FFI::scope('larder'): the declarations and the library were loaded at server start
 *     by preload.php (opcache.preload with ffi.enable=preload, the production setting,
 *     where FFI::cdef is refused inside requests).
 *  2. FFI::cdef(): the declarations are read from larder.h (the block between the lines
 *     LARDER_FFI_BEGIN and LARDER_FFI_END) and the library is opened by path (the CLI
 *     with ffi.enable=1, or ffi.enable=preload and no preloading in the CLI).
 *
 * The library is found by, first match wins: the argument of Library::configure(), the
 * environment variable LARDER_LIBRARY, the php.ini entry larder.library (read with
 * get_cfg_var, so it must be in a php.ini file, not set with ini_set), this repository's
 * target/release/liblarder.so when it exists, else "liblarder.so" (the dynamic loader's
 * search path: ld.so.cache, LD_LIBRARY_PATH). The header likewise: configure(),
 * LARDER_HEADER, larder.header, this repository's capi/include/larder.h,
 * /usr/local/include/larder.h, /usr/include/larder.h.
 */
final class Library
{
    /** The FFI scope name preload.php registers. */
    public const SCOPE = 'larder';

    private static ?FFI $ffi = null;
    private static ?string $libraryPath = null;
    private static ?string $headerPath = null;

    /**
     * Sets the library and header paths for this request (before the first cache is
     * opened); null keeps the lookup described on the class.
     */
    public static function configure(?string $library = null, ?string $header = null): void
    {
        self::$libraryPath = $library;
        self::$headerPath = $header;
        self::$ffi = null;
    }

    /** The loaded FFI instance, loading it on first use in this request. */
    public static function ffi(): FFI
    {
        if (self::$ffi !== null) {
            return self::$ffi;
        }
        if (self::$libraryPath === null && self::$headerPath === null) {
            try {
                return self::$ffi = FFI::scope(self::SCOPE);
            } catch (FFI\Exception) {
                // Not preloaded: load the header's declarations below.
            }
        }
        try {
            return self::$ffi = FFI::cdef(self::declarations(self::headerPath()), self::libraryPath());
        } catch (FFI\Exception $e) {
            throw new LibraryException(sprintf(
                'cannot load %s with declarations from %s: %s (set LARDER_LIBRARY and LARDER_HEADER, '
                . 'see php/README.md; in PHP-FPM preload php/preload.php with ffi.enable=preload)',
                self::libraryPath(),
                self::headerPath(),
                $e->getMessage()
            ), 0, $e);
        }
    }

    /** The library's path or name, by the lookup described on the class. */
    public static function libraryPath(): string
    {
        $repo = dirname(__DIR__, 2) . '/target/release/liblarder.so';
        return self::$libraryPath
            ?? self::setting('LARDER_LIBRARY', 'larder.library')
            ?? (is_file($repo) ? $repo : 'liblarder.so');
    }

    /** The header's path, by the lookup described on the class. */
    public static function headerPath(): string
    {
        $chosen = self::$headerPath ?? self::setting('LARDER_HEADER', 'larder.header');
        if ($chosen !== null) {
            return $chosen;
        }
        $candidates = [
            dirname(__DIR__, 2) . '/capi/include/larder.h',
            '/usr/local/include/larder.h',
            '/usr/include/larder.h',
        ];
        foreach ($candidates as $path) {
            if (is_file($path)) {
                return $path;
            }
        }
        return $candidates[0];
    }

    /**
     * The FFI block of larder.h: the text between the LARDER_FFI_BEGIN and LARDER_FFI_END
     * lines, plain declarations that FFI::cdef and FFI::load accept.
     */
    public static function declarations(string $headerPath): string
    {
        $text = is_file($headerPath) ? file_get_contents($headerPath) : false;
        if ($text === false) {
            throw new LibraryException(sprintf(
                'cannot read the header %s (set LARDER_HEADER to the path of larder.h)',
                $headerPath
            ));
        }
        $begin = strpos($text, "/* LARDER_FFI_BEGIN */\n");
        $end = strpos($text, '/* LARDER_FFI_END */');
        if ($begin === false || $end === false || $end < $begin) {
            throw new LibraryException(sprintf(
                '%s has no LARDER_FFI_BEGIN ... LARDER_FFI_END block: not larder.h, or too old',
                $headerPath
            ));
        }
        $begin += strlen("/* LARDER_FFI_BEGIN */\n");
        return substr($text, $begin, $end - $begin);
    }

    /**
     * A header for FFI::load() and the ffi.preload setting: the FFI block of larder.h
     * after FFI_SCOPE "larder" and FFI_LIB $library, the two defines those accept.
     */
    public static function ffiHeader(?string $library = null, ?string $header = null): string
    {
        $library ??= self::libraryPath();
        if (str_contains($library, '"') || str_contains($library, "\n")) {
            throw new LibraryException("the library path {$library} has a quote or a newline");
        }
        return sprintf(
            "#define FFI_SCOPE \"%s\"\n#define FFI_LIB \"%s\"\n%s",
            self::SCOPE,
            $library,
            self::declarations($header ?? self::headerPath())
        );
    }

    private static function setting(string $env, string $ini): ?string
    {
        $value = getenv($env);
        if (is_string($value) && $value !== '') {
            return $value;
        }
        $value = get_cfg_var($ini);
        return is_string($value) && $value !== '' ? $value : null;
    }
}
