<?php

declare(strict_types=1);

namespace Larder;

/**
 * The cache file is not usable: LARDER_E_DETACHED (replaced or removed, and the handle
 * could not attach), LARDER_E_IN_USE, and the subclasses.
 */
class FileException extends Exception
{
}
