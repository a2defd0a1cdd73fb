<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_NOT_A_COUNTER: inc/dec/cas on a value that is not larder's 8-byte counter.
 */
class NotACounterException extends Exception
{
}
