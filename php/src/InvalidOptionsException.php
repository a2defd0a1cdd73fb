<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_INVALID_OPTIONS: the core refused the options (capacity too small for the
 * shards, limits out of range).
 */
class InvalidOptionsException extends InvalidArgumentException
{
}
