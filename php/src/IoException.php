<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_IO: another operating-system error (the message has it).
 */
class IoException extends Exception
{
}
