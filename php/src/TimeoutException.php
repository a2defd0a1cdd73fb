<?php

declare(strict_types=1);

namespace Larder;

/**
 * LARDER_E_TIMEOUT: a shard lock held by a live (stopped) process, or another process's
 * fill, outlasted lock_timeout_ms / fill_timeout_ms. Never a hang: a dead holder is
 * repaired instead.
 */
class TimeoutException extends Exception
{
}
