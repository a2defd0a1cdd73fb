<?php

declare(strict_types=1);

namespace Larder;

/**
 * liblarder.so or larder.h could not be loaded through FFI (not a status of the C ABI).
 */
class LibraryException extends Exception
{
}
