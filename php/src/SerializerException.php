<?php

declare(strict_types=1);

namespace Larder;

/**
 * A value stored in the cache cannot be decoded by the cache's serializer (for example a
 * value another language wrote, fetched with 'serializer' => 'php'). Not a larder_status.
 */
class SerializerException extends Exception
{
}
