<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_NO_SPACE: no room on the file system (/dev/shm) for the cache file.
 */
class NoSpaceException extends Exception
{
}
