<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_NOT_FOUND: attach_only was given and no cache file exists.
 */
class NotFoundException extends FileException
{
}
