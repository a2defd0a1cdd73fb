<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_INCOMPATIBLE, LARDER_E_VERSION: the file was created with other parameters, by
 * another build's layout, or in another format version (open with attach_only to take the
 * file's own parameters).
 */
class IncompatibleException extends Exception
{
}
