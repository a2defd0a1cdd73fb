<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_OVERFLOW: inc/dec would leave the int64 range; nothing changed.
 */
class OverflowException extends Exception
{
}
