<?php

declare(strict_types=1);

namespace Larder;

use FFI;

/**
 * The base of every exception this package throws for a larder_status error.
 *
 * getCode() is the larder_status number (read from the header through FFI, so it is the
 * library's); getStatusName() its name (e.g. "LARDER_E_TIMEOUT"); the message is the C
 * ABI's larder_last_error(): what happened, the cache file's name, and what to do.
 * Outcomes that are not errors (MISS, EXISTS, FENCED) are return values, never thrown;
 * fromStatus() of an outcome (a binding bug) is an InternalException naming it, without
 * larder_last_error() (which an outcome does not set).
 */
class Exception extends \RuntimeException
{
    /** Status name => class; a status not listed is an InternalException. */
    private const CLASSES = [
        'LARDER_E_NULL' => InvalidArgumentException::class,
        'LARDER_E_INTERNAL' => InternalException::class,
        'LARDER_E_INVALID_NAME' => InvalidNameException::class,
        'LARDER_E_INVALID_OPTIONS' => InvalidOptionsException::class,
        'LARDER_E_TOO_LARGE' => TooLargeException::class,
        'LARDER_E_INCOMPATIBLE' => IncompatibleException::class,
        'LARDER_E_VERSION' => IncompatibleException::class,
        'LARDER_E_NOT_A_CACHE' => CorruptException::class,
        'LARDER_E_CORRUPT' => CorruptException::class,
        'LARDER_E_UNSAFE_FILE' => UnsafeFileException::class,
        'LARDER_E_TRUNCATED' => CorruptException::class,
        'LARDER_E_OTHER_BOOT' => EnvironmentException::class,
        'LARDER_E_OTHER_PID_NAMESPACE' => EnvironmentException::class,
        'LARDER_E_OTHER_TIME_NAMESPACE' => EnvironmentException::class,
        'LARDER_E_DETACHED' => FileException::class,
        'LARDER_E_NOT_A_COUNTER' => NotACounterException::class,
        'LARDER_E_OVERFLOW' => OverflowException::class,
        'LARDER_E_INVALID_ARGUMENT' => InvalidArgumentException::class,
        'LARDER_E_NO_SPACE' => NoSpaceException::class,
        'LARDER_E_TIMEOUT' => TimeoutException::class,
        'LARDER_E_WOULD_BLOCK' => WouldBlockException::class,
        'LARDER_E_IN_USE' => FileException::class,
        'LARDER_E_NOT_FOUND' => NotFoundException::class,
        'LARDER_E_PROC_UNAVAILABLE' => EnvironmentException::class,
        'LARDER_E_IO' => IoException::class,
        'LARDER_E_UNSUPPORTED' => InternalException::class,
        'LARDER_E_WRONG_THREAD' => InternalException::class,
    ];

    /** The first error status: below it, a larder_status is an outcome (OK, MISS, ...). */
    private const FIRST_ERROR = 100;
    /** The outcomes of larder.h, by name. */
    private const OUTCOMES = [
        'LARDER_OK', 'LARDER_MISS', 'LARDER_EXISTS', 'LARDER_FENCED', 'LARDER_TOO_SMALL',
        'LARDER_STALE', 'LARDER_FILL',
    ];

    private string $statusName = '';

    /** The status's name, e.g. "LARDER_E_TIMEOUT" ("" for the binding's own errors). */
    public function getStatusName(): string
    {
        return $this->statusName;
    }

    /**
     * The exception for an error status, with this thread's larder_last_error() message.
     *
     * @internal Used by Cache; the numbers come from the loaded header.
     */
    public static function fromStatus(FFI $ffi, int $status, string $doing): self
    {
        static $byCode = null;
        if ($byCode === null) {
            $byCode = [];
            foreach (self::CLASSES as $name => $class) {
                $byCode[$ffi->{$name}] = [$name, $class];
            }
        }
        [$name, $class] = $byCode[$status] ?? ['', InternalException::class];
        if ($status >= 0 && $status < self::FIRST_ERROR) {
            // An outcome (MISS, TOO_SMALL, ...) sets no larder_last_error(): what that
            // returns is an earlier call's message. An outcome here is a binding bug.
            $name = self::outcomeName($ffi, $status);
            $detail = sprintf(
                'the outcome %s (%d) is not an error; the binding should have handled it: %s',
                $name,
                $status,
                (string) $ffi->larder_strerror($status)
            );
        } else {
            // FFI returns a const char * as a PHP string (a copy; the library keeps its own).
            $detail = (string) $ffi->larder_last_error();
            if ($detail === '') {
                $detail = (string) $ffi->larder_strerror($status);
            }
            if ($name === '') {
                $detail = sprintf('unknown larder_status %d: %s', $status, $detail);
            }
        }
        $e = new $class(sprintf('%s: %s', $doing, $detail), $status);
        $e->statusName = $name;
        return $e;
    }

    /** The name of an outcome status, e.g. "LARDER_TOO_SMALL" ("" if the header has none). */
    private static function outcomeName(FFI $ffi, int $status): string
    {
        foreach (self::OUTCOMES as $name) {
            if ($ffi->{$name} === $status) {
                return $name;
            }
        }
        return '';
    }
}
