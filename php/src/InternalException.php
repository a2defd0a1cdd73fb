<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_INTERNAL (a bug in larder: please report), LARDER_E_UNSUPPORTED (an error kind
 * newer than this library build), LARDER_E_WRONG_THREAD, or a status this binding does not
 * know.
 */
class InternalException extends Exception
{
}
