<?php

declare(strict_types=1);

namespace Larder;

/**
 * A bad argument: an empty key, an unknown option, a negative TTL (found by the binding),
 * or LARDER_E_NULL / LARDER_E_INVALID_ARGUMENT.
 */
class InvalidArgumentException extends Exception
{
}
