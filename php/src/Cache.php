<?php

declare(strict_types=1);

namespace Larder;

use FFI;
use FFI\CData;

/**
 * A larder cache, shaped like APCu's functions, over liblarder.so through PHP's FFI.
 *
 * Every PHP-FPM worker (and every CLI process) that opens the same name shares one file
 * in /dev/shm. A worker killed at any instant (request_terminate_timeout, the OOM
 * killer) costs at most the entry it was writing: the next worker repairs the shard,
 * and a fill it held passes to the next caller of entry().
 *
 * Values are strings by default (the bytes other languages see); with
 * ['serializer' => 'php'] any serializable value, ints stored as larder's counters.
 * Errors are exceptions (Larder\Exception and its subclasses); outcomes are return
 * values, as in APCu: fetch's false and $success, add's false when the key exists,
 * delete's false when it was absent.
 */
final class Cache
{
    /** Options that map onto struct larder_options (0 means larder's default). */
    private const C_OPTIONS = [
        'capacity', 'max_key_len', 'max_value_len', 'shards', 'lock_timeout_ms',
        'fill_timeout_ms', 'mode', 'attach_only',
    ];
    private const INITIAL_BUFFER = 4096;
    /** How often a read retries when the value grew between two calls. */
    private const READ_TRIES = 8;
    /** How often cas retries when the entry changed but still holds $old. */
    private const CAS_TRIES = 1000;

    /** Fills begun and not yet ended in this request, ended at shutdown if a fatal error skipped that. */
    private static array $fills = [];
    private static bool $shutdownRegistered = false;

    private FFI $ffi;
    private ?CData $handle;
    private string $name;
    private bool $php;
    private bool $persistent;
    private CData $buf;
    private int $cap;
    private CData $len;
    private CData $lenPtr;
    private CData $int;
    private CData $intPtr;
    private int $ok;
    private int $miss;
    private int $exists;
    private int $fenced;
    private int $tooSmall;
    private int $stale;
    private int $fill;
    private int $notACounter;

    /**
     * Opens (creating it if needed) the cache $name: a bare name ([A-Za-z0-9._-]) lives
     * in /dev/shm, a name with '/' is a path on a tmpfs.
     *
     * Options (all optional):
     *  - capacity (bytes, default 32 MiB), max_key_len (256), max_value_len (65536),
     *    shards (chosen from the capacity): fixed in the file when it is created; opening
     *    an existing file with others throws IncompatibleException (use attach_only).
     *  - lock_timeout_ms (500), fill_timeout_ms (5000): how long a call waits for a lock
     *    held by a live process, or for another worker's entry() generator.
     *  - mode (file mode at creation, default 0600), attach_only (bool: never create).
     *  - group (int gid, or null for the creating process's group): the file's group at
     *    creation; with mode 0660, the workers of other uids in that group share it.
     *  - allow_uids (list of at most 4 int uids): owners accepted besides this process's
     *    effective uid (by default another uid's file throws UnsafeFileException).
     *  - serializer: null (strings only, the default) or 'php' (serialize/unserialize).
     *  - persistent (bool, default true): the object's reference to the handle is kept
     *    for the life of the process (PHP-FPM workers outlive requests), so every later
     *    `new Cache` of the name is the C library's cheap re-open (no open, mmap or
     *    flock; one more count on the handle). With false, the object gives its
     *    reference back when it is destroyed, and the last one unmaps the file.
     *
     * @param array<string, int|bool|string|array<int>|null> $options
     */
    public function __construct(string $name, array $options = [])
    {
        $this->ffi = $ffi = Library::ffi();
        $this->name = $name;
        if ($name === '' || str_contains($name, "\0")) {
            throw new InvalidNameException(sprintf(
                'open: a cache name is a non-empty string without NUL bytes, not %s',
                self::quote($name)
            ));
        }
        $serializer = $options['serializer'] ?? null;
        if ($serializer !== null && $serializer !== 'php') {
            throw new InvalidArgumentException(sprintf(
                "open %s: serializer must be null (strings) or 'php', not %s",
                $name,
                var_export($serializer, true)
            ));
        }
        $this->php = $serializer === 'php';
        $persistent = $options['persistent'] ?? true;
        if (!is_bool($persistent)) {
            throw new InvalidArgumentException("open {$name}: option persistent must be a bool");
        }
        $this->persistent = $persistent;
        $copts = $ffi->new('larder_options');
        $ffi->larder_options_init(FFI::addr($copts));
        foreach ($options as $option => $value) {
            if ($option === 'serializer' || $option === 'persistent') {
                continue;
            }
            if ($option === 'group') {
                if ($value !== null) {
                    $copts->group = self::uint32($name, 'group', $value);
                    $copts->has_group = 1;
                }
                continue;
            }
            if ($option === 'allow_uids') {
                self::allowUids($name, $value, $copts);
                continue;
            }
            if (!in_array($option, self::C_OPTIONS, true)) {
                throw new InvalidArgumentException(sprintf(
                    'open %s: unknown option %s (known: %s, group, allow_uids, serializer, persistent)',
                    $name,
                    var_export($option, true),
                    implode(', ', self::C_OPTIONS)
                ));
            }
            if ($option === 'attach_only' && is_bool($value)) {
                $value = (int) $value;
            }
            if (!is_int($value) || $value < 0) {
                throw new InvalidArgumentException(sprintf(
                    'open %s: option %s must be an integer >= 0 (0 = default), not %s',
                    $name,
                    $option,
                    var_export($value, true)
                ));
            }
            if ($value > 0xFFFFFFFF && !in_array($option, ['capacity', 'lock_timeout_ms', 'fill_timeout_ms'], true)) {
                throw new InvalidArgumentException("open {$name}: option {$option} is over 2^32-1");
            }
            $copts->{$option} = $value;
        }
        $out = $ffi->new('larder_cache*');
        // A name already open in this process (an earlier request of this worker) is the
        // library's registry hit: the same handle, one more reference, no open/mmap/flock.
        $status = $ffi->larder_open($name, FFI::addr($copts), FFI::addr($out));
        if ($status !== $ffi->LARDER_OK) {
            throw Exception::fromStatus($ffi, $status, "open {$name}");
        }
        $this->handle = $out;
        $this->cap = self::INITIAL_BUFFER;
        $this->buf = $ffi->new("char[{$this->cap}]");
        $this->len = $ffi->new('size_t');
        $this->lenPtr = FFI::addr($this->len);
        $this->int = $ffi->new('int64_t');
        $this->intPtr = FFI::addr($this->int);
        $this->ok = $ffi->LARDER_OK;
        $this->miss = $ffi->LARDER_MISS;
        $this->exists = $ffi->LARDER_EXISTS;
        $this->fenced = $ffi->LARDER_FENCED;
        $this->tooSmall = $ffi->LARDER_TOO_SMALL;
        $this->stale = $ffi->LARDER_STALE;
        $this->fill = $ffi->LARDER_FILL;
        $this->notACounter = $ffi->LARDER_E_NOT_A_COUNTER;
    }

    /** $value as a uint32_t field of larder_options, or InvalidArgumentException. */
    private static function uint32(string $name, string $option, mixed $value): int
    {
        if (!is_int($value) || $value < 0 || $value > 0xFFFFFFFF) {
            throw new InvalidArgumentException(sprintf(
                'open %s: option %s must be an integer from 0 to 2^32-1, not %s',
                $name,
                $option,
                var_export($value, true)
            ));
        }
        return $value;
    }

    /** Writes the list $uids into larder_options.allow_uids and its count. */
    private static function allowUids(string $name, mixed $uids, CData $copts): void
    {
        $max = count($copts->allow_uids);
        if (!is_array($uids) || !array_is_list($uids) || count($uids) > $max) {
            throw new InvalidArgumentException(sprintf(
                'open %s: option allow_uids must be a list of at most %d uids, not %s',
                $name,
                $max,
                !is_array($uids) ? var_export($uids, true)
                    : (array_is_list($uids) ? count($uids) . ' of them' : 'an array with keys')
            ));
        }
        foreach ($uids as $i => $uid) {
            $copts->allow_uids[$i] = self::uint32($name, "allow_uids[{$i}]", $uid);
        }
        $copts->allow_uids_count = count($uids);
    }

    public function __destruct()
    {
        if (!$this->persistent) {
            $this->close();
        }
    }

    /**
     * Removes the cache file $name (what `larder rm` does): true if it existed. Handles
     * still open follow to a new file of that name when one is created.
     */
    public static function unlink(string $name): bool
    {
        $ffi = Library::ffi();
        if ($name === '' || str_contains($name, "\0")) {
            throw new InvalidNameException(sprintf('unlink: not a cache name: %s', self::quote($name)));
        }
        $status = $ffi->larder_unlink($name);
        if ($status === $ffi->LARDER_OK) {
            return true;
        }
        if ($status === $ffi->LARDER_E_NOT_FOUND || $status === $ffi->LARDER_MISS) {
            return false;
        }
        throw Exception::fromStatus($ffi, $status, "unlink {$name}");
    }

    /** The name the cache was opened with. */
    public function name(): string
    {
        return $this->name;
    }

    /**
     * Gives the handle back now (persistent or not); later calls on this object throw.
     * Other objects of the same name keep theirs.
     */
    public function close(): void
    {
        if ($this->handle === null) {
            return;
        }
        $this->ffi->larder_close($this->handle);
        $this->handle = null;
    }

    /**
     * The value of $key, or false when there is none ($success says which, as a stored
     * false is possible with the php serializer). With an array of keys: an array of
     * the keys found and their values.
     *
     * @param string|array<string> $key
     */
    public function fetch(string|array $key, mixed &$success = null): mixed
    {
        if (is_array($key)) {
            $found = [];
            foreach ($key as $one) {
                $value = $this->fetchOne((string) $one, $hit);
                if ($hit) {
                    $found[$one] = $value;
                }
            }
            $success = true;
            return $found;
        }
        return $this->fetchOne($key, $success);
    }

    /**
     * Stores $value under $key for $ttl seconds (0: no expiry), replacing any value.
     * With an array of key => value (and $value null): stores each, returns [] (the keys
     * that failed: none, since a failure throws).
     *
     * @param string|array<string, mixed> $key
     * @return bool|array<string>
     */
    public function store(string|array $key, mixed $value = null, int $ttl = 0): bool|array
    {
        if (is_array($key)) {
            foreach ($key as $one => $each) {
                $this->store((string) $one, $each, $ttl);
            }
            return [];
        }
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'store');
        $bytes = $this->encode($value, 'store');
        $status = $this->ffi->larder_set($h, $key, strlen($key), $bytes, strlen($bytes), self::ttlMs($ttl));
        if ($status !== $this->ok) {
            throw $this->error($status, 'store', $key);
        }
        return true;
    }

    /**
     * Stores $value only if $key has no fresh value: true if stored, false if one is
     * there. With an array of key => value: the keys that were already there.
     *
     * @param string|array<string, mixed> $key
     * @return bool|array<string>
     */
    public function add(string|array $key, mixed $value = null, int $ttl = 0): bool|array
    {
        if (is_array($key)) {
            $present = [];
            foreach ($key as $one => $each) {
                if (!$this->add((string) $one, $each, $ttl)) {
                    $present[] = $one;
                }
            }
            return $present;
        }
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'add');
        $bytes = $this->encode($value, 'add');
        $status = $this->ffi->larder_add($h, $key, strlen($key), $bytes, strlen($bytes), self::ttlMs($ttl));
        if ($status === $this->ok) {
            return true;
        }
        if ($status === $this->exists) {
            return false;
        }
        throw $this->error($status, 'add', $key);
    }

    /**
     * Removes $key: true if it had a fresh value, false if not. Either way the removal
     * is a revocation: an entry() generator or a ticket begun before it cannot store its
     * value afterwards. With an array: the keys that had no value.
     *
     * @param string|array<string> $key
     * @return bool|array<string>
     */
    public function delete(string|array $key): bool|array
    {
        if (is_array($key)) {
            $absent = [];
            foreach ($key as $one) {
                if (!$this->delete((string) $one)) {
                    $absent[] = $one;
                }
            }
            return $absent;
        }
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'delete');
        $status = $this->ffi->larder_remove($h, $key, strlen($key));
        if ($status === $this->ok) {
            return true;
        }
        if ($status === $this->miss) {
            return false;
        }
        throw $this->error($status, 'delete', $key);
    }

    /**
     * Whether $key has a fresh value. With an array: key => true for those that do.
     *
     * @param string|array<string> $key
     * @return bool|array<string, true>
     */
    public function exists(string|array $key): bool|array
    {
        if (is_array($key)) {
            $present = [];
            foreach ($key as $one) {
                if ($this->exists((string) $one)) {
                    $present[$one] = true;
                }
            }
            return $present;
        }
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'exists');
        $status = $this->ffi->larder_get($h, $key, strlen($key), null, 0, $this->lenPtr);
        if ($status === $this->ok || $status === $this->tooSmall) {
            return true;
        }
        if ($status === $this->miss) {
            return false;
        }
        throw $this->error($status, 'exists', $key);
    }

    /**
     * Adds $step to the counter at $key and returns the new value; an absent key starts
     * at 0 (with $ttl seconds). Counters are larder's: 8-byte little-endian int64, the
     * same in every language. false (and $success false) when the value is not a
     * counter; OverflowException when the result would leave int64.
     */
    public function inc(string $key, int $step = 1, mixed &$success = null, int $ttl = 0): int|false
    {
        $success = false;
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'inc');
        $status = $this->ffi->larder_incr($h, $key, strlen($key), $step, 0, self::ttlMs($ttl), $this->intPtr);
        if ($status === $this->ok) {
            $success = true;
            return $this->int->cdata;
        }
        if ($status === $this->notACounter) {
            return false;
        }
        throw $this->error($status, 'inc', $key);
    }

    /** Subtracts $step from the counter at $key; as inc(). */
    public function dec(string $key, int $step = 1, mixed &$success = null, int $ttl = 0): int|false
    {
        if ($step === PHP_INT_MIN) {
            $success = false;
            throw new OverflowException(
                sprintf('dec %s: a step of PHP_INT_MIN cannot be negated', self::quote($key)),
                $this->ffi->LARDER_E_OVERFLOW
            );
        }
        return $this->inc($key, -$step, $success, $ttl);
    }

    /**
     * Sets the counter at $key to $new if it holds $old, as apcu_cas: true if it was
     * changed, false if the key is absent, not a counter, or holds another value. The
     * entry keeps its remaining time to live.
     */
    public function cas(string $key, int $old, int $new): bool
    {
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'cas');
        $ffi = $this->ffi;
        $version = $ffi->new('larder_version');
        $versionPtr = FFI::addr($version);
        $newBytes = pack('P', $new);
        for ($try = 0; $try < self::CAS_TRIES; $try++) {
            $status = $ffi->larder_gets($h, $key, strlen($key), $this->buf, $this->cap, $this->lenPtr, $versionPtr);
            if ($status === $this->miss || $status === $this->tooSmall) {
                return false;
            }
            if ($status !== $this->ok) {
                throw $this->error($status, 'cas', $key);
            }
            if ($this->len->cdata !== 8 || unpack('P', FFI::string($this->buf, 8))[1] !== $old) {
                return false;
            }
            $status = $ffi->larder_ttl($h, $key, strlen($key), $this->intPtr);
            if ($status === $this->miss) {
                return false;
            }
            if ($status !== $this->ok) {
                throw $this->error($status, 'cas', $key);
            }
            $left = $this->int->cdata;
            // -1: no expiry (0 to the C ABI); 0 left: expiring now, so keep the shortest TTL.
            $ttlMs = $left < 0 ? 0 : max($left, 1);
            $status = $ffi->larder_cas($h, $key, strlen($key), $newBytes, 8, $ttlMs, $versionPtr);
            if ($status === $this->ok) {
                return true;
            }
            if ($status === $this->miss) {
                return false;
            }
            if ($status !== $this->exists) {
                throw $this->error($status, 'cas', $key);
            }
            // EXISTS: written in between; look again (it may still hold $old).
        }
        throw new TimeoutException(sprintf(
            'cas %s: the entry changed between the read and the write %d times in a row',
            self::quote($key),
            self::CAS_TRIES
        ), $ffi->LARDER_E_TIMEOUT);
    }

    /**
     * The value of $key; if there is none, $generator($key) computes it, it is stored for
     * $ttl seconds and returned. Single flight across processes: while one worker runs
     * the generator, the others asking for the key wait for its value (up to
     * fill_timeout_ms, then TimeoutException), or get the expired value while it is
     * refreshed. A generator that throws gives the key to the next waiter (the exception
     * is rethrown here); a worker killed inside its generator does likewise. If the key
     * is deleted while the generator runs, its value is returned to this caller but not
     * stored (a revocation is never undone).
     */
    public function entry(string $key, callable $generator, int $ttl = 0): mixed
    {
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'entry');
        $ttlMs = self::ttlMs($ttl);
        $ffi = $this->ffi;
        $fillKey = $this->name . "\0" . $key;
        if (isset(self::$fills[$fillKey])) {
            throw new InvalidArgumentException(sprintf(
                'entry %s: called again for the same key from inside its own generator',
                self::quote($key)
            ));
        }
        $out = $ffi->new('larder_fill*');
        $outPtr = FFI::addr($out);
        for ($try = 0;; $try++) {
            $status = $ffi->larder_fill_begin($h, $key, strlen($key), $this->buf, $this->cap, $this->lenPtr, $outPtr);
            if ($status === $this->ok || $status === $this->stale) {
                return $this->decode(FFI::string($this->buf, $this->len->cdata), 'entry', $key);
            }
            if ($status === $this->tooSmall) {
                if ($try < self::READ_TRIES) {
                    $this->grow($this->len->cdata);
                    continue;
                }
                throw $this->grew('entry', $key);
            }
            if ($status === $this->fill) {
                break;
            }
            throw $this->error($status, 'entry', $key);
        }
        $this->trackFill($fillKey, $out);
        $ended = false;
        try {
            $value = $generator($key);
            $bytes = $this->encode($value, 'entry');
            // Ends the fill whatever it returns (but WRONG_THREAD, impossible here).
            $status = $ffi->larder_fill_complete($out, $bytes, strlen($bytes), $ttlMs);
            $ended = true;
        } finally {
            unset(self::$fills[$fillKey]);
            if (!$ended) {
                $ffi->larder_fill_abandon($out);
            }
        }
        if ($status === $this->ok || $status === $this->fenced) {
            return $value;
        }
        throw $this->error($status, 'entry', $key);
    }

    /**
     * A ticket for cache-aside code of one's own: take it on a miss, BEFORE reading the
     * source of the value, then storeWithTicket(). See Ticket.
     */
    public function ticket(string $key): Ticket
    {
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'ticket');
        $token = $this->ffi->new('larder_ticket');
        $status = $this->ffi->larder_ticket_take($h, $key, strlen($key), FFI::addr($token));
        if ($status !== $this->ok) {
            throw $this->error($status, 'ticket', $key);
        }
        return new Ticket($this->name, $key, $token);
    }

    /**
     * Stores $value under the ticket's key unless the key was revoked (deleted or
     * written) since the ticket was taken: true if stored, false if refused.
     */
    public function storeWithTicket(Ticket $ticket, mixed $value, int $ttl = 0): bool
    {
        $h = $this->handle ?? throw $this->closed();
        if ($ticket->cache !== $this->name) {
            throw new InvalidArgumentException(sprintf(
                'storeWithTicket: the ticket is for the cache %s, not %s',
                $ticket->cache,
                $this->name
            ));
        }
        $key = $ticket->key;
        $bytes = $this->encode($value, 'storeWithTicket');
        $status = $this->ffi->larder_set_with_ticket(
            $h,
            $key,
            strlen($key),
            $bytes,
            strlen($bytes),
            self::ttlMs($ttl),
            FFI::addr($ticket->token)
        );
        if ($status === $this->ok) {
            return true;
        }
        if ($status === $this->fenced) {
            return false;
        }
        throw $this->error($status, 'storeWithTicket', $key);
    }

    /** Removes every entry (a revocation of each). Returns true, as apcu_clear_cache. */
    public function clear(): bool
    {
        $h = $this->handle ?? throw $this->closed();
        $status = $this->ffi->larder_clear($h, null);
        if ($status !== $this->ok) {
            throw Exception::fromStatus($this->ffi, $status, "clear {$this->name}");
        }
        return true;
    }

    /**
     * The whole cache's counters (entries, bytes_live, hits, misses, evictions,
     * recoveries, fill_handovers, ...: the fields of struct larder_stats).
     *
     * @return array<string, int>
     */
    public function stats(): array
    {
        $h = $this->handle ?? throw $this->closed();
        $stats = $this->ffi->new('struct larder_stats');
        $stats->struct_size = FFI::sizeof($stats);
        $status = $this->ffi->larder_stats($h, FFI::addr($stats));
        if ($status !== $this->ok) {
            throw Exception::fromStatus($this->ffi, $status, "stats {$this->name}");
        }
        $out = [];
        foreach (FFI::typeof($stats)->getStructFieldNames() as $field) {
            if ($field !== 'struct_size' && $field !== 'reserved') {
                $out[$field] = $stats->{$field};
            }
        }
        return $out;
    }

    /**
     * Seconds left for $key (rounded up), 0 when it has no expiry, false when there is
     * no fresh value.
     */
    public function ttl(string $key): int|false
    {
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'ttl');
        $status = $this->ffi->larder_ttl($h, $key, strlen($key), $this->intPtr);
        if ($status === $this->miss) {
            return false;
        }
        if ($status !== $this->ok) {
            throw $this->error($status, 'ttl', $key);
        }
        $ms = $this->int->cdata;
        return $ms < 0 ? 0 : max(1, intdiv($ms + 999, 1000));
    }

    /** Gives $key a new time to live ($ttl seconds, 0: none): true, or false if absent. */
    public function touch(string $key, int $ttl): bool
    {
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'touch');
        $status = $this->ffi->larder_touch($h, $key, strlen($key), self::ttlMs($ttl));
        if ($status === $this->ok) {
            return true;
        }
        if ($status === $this->miss) {
            return false;
        }
        throw $this->error($status, 'touch', $key);
    }

    private function fetchOne(string $key, mixed &$success): mixed
    {
        $success = false;
        $h = $this->handle ?? throw $this->closed();
        self::checkKey($key, 'fetch');
        for ($try = 0;; $try++) {
            $status = $this->ffi->larder_get($h, $key, strlen($key), $this->buf, $this->cap, $this->lenPtr);
            if ($status === $this->ok) {
                $value = $this->decode(FFI::string($this->buf, $this->len->cdata), 'fetch', $key);
                $success = true;
                return $value;
            }
            if ($status === $this->miss) {
                return false;
            }
            if ($status === $this->tooSmall) {
                if ($try < self::READ_TRIES) {
                    $this->grow($this->len->cdata);
                    continue;
                }
                throw $this->grew('fetch', $key);
            }
            throw $this->error($status, 'fetch', $key);
        }
    }

    /** Makes the read buffer at least $need bytes. */
    private function grow(int $need): void
    {
        $cap = max($need, 2 * $this->cap);
        $this->buf = $this->ffi->new("char[{$cap}]");
        $this->cap = $cap;
    }

    /** The bytes stored for $value. */
    private function encode(mixed $value, string $doing): string
    {
        if (!$this->php) {
            if (is_string($value)) {
                return $value;
            }
            throw new \TypeError(sprintf(
                "Larder\\Cache::%s: the cache %s stores strings, not %s; open it with ['serializer' => 'php'] "
                . 'to store other values',
                $doing,
                $this->name,
                get_debug_type($value)
            ));
        }
        if (is_int($value)) {
            return pack('P', $value);
        }
        $bytes = serialize($value);
        // 8 bytes are a counter; serialize() output ends in ';' or '}', so one trailing
        // space marks a padded one unambiguously.
        return strlen($bytes) === 8 ? $bytes . ' ' : $bytes;
    }

    /** The value of stored bytes (the inverse of encode). */
    private function decode(string $bytes, string $doing, string $key): mixed
    {
        if (!$this->php) {
            return $bytes;
        }
        if (strlen($bytes) === 8) {
            return unpack('P', $bytes)[1];
        }
        if (str_ends_with($bytes, ' ')) {
            $bytes = substr($bytes, 0, -1);
        }
        if ($bytes === 'b:0;') {
            return false;
        }
        $value = @unserialize($bytes);
        if ($value === false) {
            throw new SerializerException(sprintf(
                "%s %s: the value (%d bytes) is not PHP serialize() output; was it written without "
                . "'serializer' => 'php', or by another language?",
                $doing,
                self::quote($key),
                strlen($bytes)
            ));
        }
        return $value;
    }

    private function error(int $status, string $doing, string $key): Exception
    {
        return Exception::fromStatus($this->ffi, $status, sprintf('%s %s', $doing, self::quote($key)));
    }

    /** The read of $key met a larger value READ_TRIES + 1 times in a row. */
    private function grew(string $doing, string $key): ValueGrewException
    {
        return new ValueGrewException(sprintf(
            '%s %s: the value kept growing between reads (%d reads in a row found it larger '
            . 'than the buffer, last %d bytes needed): other processes keep replacing it with '
            . 'larger values; retry later',
            $doing,
            self::quote($key),
            self::READ_TRIES + 1,
            $this->len->cdata
        ), $this->ffi->LARDER_TOO_SMALL);
    }

    private function closed(): Exception
    {
        return new Exception("the cache {$this->name} was closed");
    }

    /** Registers a fill so that a fatal error in its generator still ends it. */
    private function trackFill(string $fillKey, CData $fill): void
    {
        self::$fills[$fillKey] = [$this->ffi, $fill];
        if (!self::$shutdownRegistered) {
            self::$shutdownRegistered = true;
            register_shutdown_function(static function (): void {
                // A fatal error (max_execution_time, memory_limit) skips finally blocks:
                // hand such fills to the next worker now, not when this one exits.
                foreach (self::$fills as [$ffi, $fill]) {
                    $ffi->larder_fill_abandon($fill);
                }
                self::$fills = [];
            });
        }
    }

    private static function checkKey(string $key, string $doing): void
    {
        if ($key === '') {
            throw new InvalidArgumentException("{$doing}: the key is empty");
        }
    }

    private static function ttlMs(int $ttl): int
    {
        if ($ttl < 0 || $ttl > intdiv(PHP_INT_MAX, 1000)) {
            throw new InvalidArgumentException(sprintf(
                'ttl must be between 0 (no expiry) and %d seconds, not %d',
                intdiv(PHP_INT_MAX, 1000),
                $ttl
            ));
        }
        return $ttl * 1000;
    }

    /** A key for a message: at most 64 bytes, non-printable bytes escaped. */
    private static function quote(string $key): string
    {
        $short = strlen($key) > 64 ? substr($key, 0, 64) . '...' : $key;
        return "'" . addcslashes($short, "\0..\37\177..\377'\\") . "'";
    }
}
