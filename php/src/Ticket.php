<?php

declare(strict_types=1);

namespace Larder;

use FFI\CData;

/**
 * A ticket for one key of one cache, from Cache::ticket(): the right to store a value
 * computed from now on, refused if the key is revoked (deleted or written) meanwhile.
 * Take it on a miss BEFORE reading the source, then Cache::storeWithTicket().
 */
final class Ticket
{
    /** @internal Made by Cache::ticket(). */
    public function __construct(
        public readonly string $cache,
        public readonly string $key,
        /** @internal The C ABI's larder_ticket. */
        public readonly CData $token
    ) {
    }
}
