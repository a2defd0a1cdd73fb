<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_WOULD_BLOCK: a non-waiting call would have waited.
 */
class WouldBlockException extends Exception
{
}
