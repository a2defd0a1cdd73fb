<?php

declare(strict_types=1);

namespace Larder;

/**
 * A read (fetch, entry) found the value larger than its buffer, grew the buffer, and found
 * it larger again, READ_TRIES times in a row: other processes kept replacing the value
 * with a larger one between the reads. The binding's own error; getCode() is
 * LARDER_TOO_SMALL, the outcome every one of those reads had. Retrying later may succeed.
 */
class ValueGrewException extends Exception
{
}
