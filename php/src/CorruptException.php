<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_NOT_A_CACHE, LARDER_E_CORRUPT, LARDER_E_TRUNCATED: the file is not a larder
 * cache, or is damaged (the message names the way out).
 */
class CorruptException extends FileException
{
}
