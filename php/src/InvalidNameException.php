<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_INVALID_NAME: the cache name is neither a bare name ([A-Za-z0-9._-], 1..200
 * bytes, not starting with '.') nor a path.
 */
class InvalidNameException extends InvalidArgumentException
{
}
