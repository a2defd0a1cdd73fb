<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_UNSAFE_FILE: a symlink, not a regular file, a foreign owner or a world-writable
 * file.
 */
class UnsafeFileException extends FileException
{
}
