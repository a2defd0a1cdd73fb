<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_OTHER_BOOT, LARDER_E_OTHER_PID_NAMESPACE, LARDER_E_OTHER_TIME_NAMESPACE,
 * LARDER_E_PROC_UNAVAILABLE: the file belongs to another boot or namespace, or /proc is
 * missing.
 */
class EnvironmentException extends Exception
{
}
