<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_TOO_LARGE: the key or the value is over the cache's max_key_len /
 * max_value_len; nothing was stored.
 */
class TooLargeException extends Exception
{
}
