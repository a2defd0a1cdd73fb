<?php

/**
 * Unit tests of Larder\Cache in php-cli (ffi.enable=1, FFI::cdef from larder.h):
 *
 *   php8.2 -n -d extension=ffi -d ffi.enable=1 php/tests/unit.php [FILTER]
 *
 * A small runner: every function named test_* runs with a fresh cache name (pid and a
 * counter) whose file is removed afterwards, pass or fail. Exit status 1 if any failed.
 */

declare(strict_types=1);

// A test entry script: it declares its tests, then runs them below (PSR-1's rule against
// declarations with side effects does not fit a self-running file).

require __DIR__ . '/www/boot.php';

use Larder\Cache;

final class Failure extends Exception
{
}

function check(bool $condition, string $what): void
{
    if (!$condition) {
        throw new Failure($what);
    }
}

function same(mixed $expected, mixed $actual, string $what): void
{
    if ($expected !== $actual) {
        throw new Failure(sprintf(
            '%s: expected %s, got %s',
            $what,
            var_export($expected, true),
            var_export($actual, true)
        ));
    }
}

/** Runs $f and checks that it throws $class (or a subclass); returns the throwable. */
function throws(string $class, callable $f, string $what): Throwable
{
    try {
        $f();
    } catch (Throwable $e) {
        if (!$e instanceof $class) {
            throw new Failure(sprintf('%s: expected %s, got %s: %s', $what, $class, get_class($e), $e->getMessage()));
        }
        return $e;
    }
    throw new Failure("{$what}: expected {$class}, nothing was thrown");
}

/** A unique cache name for one test; run() removes its file. */
function name(): string
{
    static $n = 0;
    $name = sprintf('php-unit-%d-%d', getmypid(), ++$n);
    $GLOBALS['names'][] = $name;
    return $name;
}

/** A unique path in /dev/shm (a name with '/', used as given) for one test; run() removes it. */
function shm_path(): string
{
    $path = '/dev/shm/' . name();
    $GLOBALS['names'][] = $path;
    return $path;
}

function small(array $options = []): Cache
{
    return new Cache(name(), $options + ['capacity' => 4 << 20]);
}

function test_store_fetch_round_trip_of_bytes(): void
{
    $c = small();
    $bytes = "a\0b\xff\x00" . str_repeat('z', 5000);
    same(true, $c->store('k', $bytes), 'store');
    same($bytes, $c->fetch('k', $ok), 'fetch of binary bytes over the first buffer');
    same(true, $ok, 'success');
    same(true, $c->store('empty', ''), 'store of an empty value');
    same('', $c->fetch('empty', $ok), 'fetch of an empty value');
    same(true, $ok, 'an empty value is found');
    same(false, $c->fetch('absent', $ok), 'fetch of a miss');
    same(false, $ok, 'a miss sets success false');
    same(true, $c->store("k\0with nul", 'v'), 'a key with a NUL byte');
    same('v', $c->fetch("k\0with nul"), 'fetch by a key with a NUL byte');
}

function test_add_delete_exists_follow_apcu(): void
{
    $c = small();
    same(true, $c->add('k', 'one'), 'add to an absent key');
    same(false, $c->add('k', 'two'), 'add to a present key');
    same('one', $c->fetch('k'), 'add kept the first value');
    same(true, $c->exists('k'), 'exists');
    same(true, $c->delete('k'), 'delete of a present key');
    same(false, $c->delete('k'), 'delete of an absent key');
    same(false, $c->exists('k'), 'exists after delete');
    $c->store('empty', '');
    same(true, $c->exists('empty'), 'exists with an empty value');
}

function test_array_forms_follow_apcu(): void
{
    $c = small();
    same([], $c->store(['a' => '1', 'b' => '2']), 'store of an array returns no failed keys');
    same(['a' => '1', 'b' => '2'], $c->fetch(['a', 'b', 'c'], $ok), 'fetch of an array: the found ones');
    same(true, $ok, 'success of an array fetch');
    same(['a'], $c->add(['a' => 'x', 'c' => '3']), 'add of an array: the keys already there');
    same(['a' => true, 'c' => true], $c->exists(['a', 'c', 'd']), 'exists of an array');
    same(['d'], $c->delete(['a', 'd']), 'delete of an array: the keys that were absent');
}

function test_inc_dec_counters(): void
{
    $c = small();
    same(1, $c->inc('n'), 'inc of an absent key starts at 0');
    same(11, $c->inc('n', 10, $ok), 'inc by 10');
    same(true, $ok, 'success');
    same(8, $c->dec('n', 3), 'dec by 3');
    same(pack('P', 8), $c->fetch('n'), 'a counter is 8 little-endian bytes');
    $c->store('s', 'text');
    same(false, $c->inc('s', 1, $ok), 'inc of a non-counter is false');
    same(false, $ok, 'and success false');
    $c->inc('max', PHP_INT_MAX);
    throws(Larder\OverflowException::class, fn () => $c->inc('max'), 'inc past int64');
    same(PHP_INT_MAX, $c->inc('max', 0), 'an overflow changed nothing');
    throws(Larder\OverflowException::class, fn () => $c->dec('m', PHP_INT_MIN), 'dec by PHP_INT_MIN');
}

function test_cas_follows_apcu_on_ints(): void
{
    $c = small();
    same(false, $c->cas('n', 0, 1), 'cas of an absent key');
    $c->inc('n', 5, $ok, 100);
    same(true, $c->cas('n', 5, 9), 'cas from the right value');
    same(9, $c->inc('n', 0), 'cas stored the new value');
    same(false, $c->cas('n', 5, 10), 'cas from a wrong value');
    $ttl = $c->ttl('n');
    check($ttl > 90 && $ttl <= 100, "cas kept the TTL (left: {$ttl})");
    $c->store('s', 'not a counter');
    same(false, $c->cas('s', 0, 1), 'cas of a non-counter');
    $c->store('forever', pack('P', 3));
    same(true, $c->cas('forever', 3, 4), 'cas of an entry without expiry');
    same(0, $c->ttl('forever'), 'it still has no expiry');
}

function test_entry_generates_once_and_then_serves(): void
{
    $c = small();
    $runs = 0;
    $gen = function (string $key) use (&$runs): string {
        $runs++;
        return "value of {$key}";
    };
    same('value of k', $c->entry('k', $gen, 60), 'entry on a miss');
    same('value of k', $c->entry('k', $gen, 60), 'entry on a hit');
    same(1, $runs, 'the generator ran once');
    same('value of k', $c->fetch('k'), 'entry stored the value');
    check($c->ttl('k') > 0, 'with its TTL');
}

function test_entry_generator_that_throws_hands_the_key_on(): void
{
    $c = small(['fill_timeout_ms' => 2000]);
    $e = throws(RuntimeException::class, fn () => $c->entry('k', function (): string {
        throw new RuntimeException('source down');
    }), 'a throwing generator');
    same('source down', $e->getMessage(), 'the generator\'s exception is rethrown');
    same('second', $c->entry('k', fn () => 'second'), 'the next entry computes (the fill was abandoned)');
    throws(TypeError::class, fn () => $c->entry('t', fn () => ['not', 'a', 'string']), 'a non-string value');
    same('third', $c->entry('t', fn () => 'third'), 'the fill of a wrong-typed value was abandoned too');
    $e = throws(
        Larder\InvalidArgumentException::class,
        fn () => $c->entry('r', fn () => $c->entry('r', fn () => 'x')),
        'entry from its own generator'
    );
    same('after', $c->entry('r', fn () => 'after'), 'the outer fill was abandoned');
    throws(
        Larder\TooLargeException::class,
        fn () => $c->entry('big', fn () => str_repeat('x', 70000)),
        'a value over max_value_len'
    );
    same('small', $c->entry('big', fn () => 'small'), 'the too-large fill ended');
}

function test_delete_during_entry_is_never_undone(): void
{
    $c = small();
    $c->store('token', 'valid');
    $c->delete('token');
    $value = $c->entry('token', function (string $key) use ($c): string {
        // The source said valid, then a revocation arrives before the store.
        $c->delete($key);
        return 'valid';
    });
    same('valid', $value, 'the generator\'s value goes to its caller');
    same(false, $c->fetch('token', $ok), 'but it was not stored over the revocation');
    same(1, $c->stats()['fills_fenced'], 'the fill was fenced');
}

function test_ticket_store_is_refused_after_a_revocation(): void
{
    $c = small();
    $t = $c->ticket('k');
    same(true, $c->storeWithTicket($t, 'v1'), 'a ticket with no revocation stores');
    $t = $c->ticket('k');
    $c->delete('k');
    same(false, $c->storeWithTicket($t, 'stale'), 'a ticket taken before a delete is refused');
    same(false, $c->fetch('k'), 'nothing was stored');
    $other = small();
    throws(
        Larder\InvalidArgumentException::class,
        fn () => $other->storeWithTicket($c->ticket('k'), 'x'),
        'a ticket of another cache'
    );
}

function test_ttl_and_touch(): void
{
    $c = small();
    same(false, $c->ttl('k'), 'ttl of an absent key');
    $c->store('k', 'v', 30);
    $ttl = $c->ttl('k');
    check($ttl >= 29 && $ttl <= 30, "ttl of a 30 s entry is {$ttl}");
    same(true, $c->touch('k', 0), 'touch to no expiry');
    same(0, $c->ttl('k'), 'no expiry reads 0');
    same(true, $c->touch('k', 500), 'touch to 500 s');
    check($c->ttl('k') > 30, 'touch lengthened the TTL');
    same(false, $c->touch('absent', 5), 'touch of an absent key');
}

function test_php_serializer_round_trips_and_counts(): void
{
    $c = small(['serializer' => 'php']);
    $values = [
        'array' => ['a' => [1, 2.5, null], 'b' => true],
        'object' => (object) ['x' => 1],
        'false' => false,
        'null' => null,
        'float' => 0.125,
        'eight' => 'x', // serialize('x') is 8 bytes, as long as a counter
        'string' => 'plain',
        'negative' => -42,
    ];
    foreach ($values as $key => $value) {
        $c->store($key, $value);
        $back = $c->fetch($key, $ok);
        same(true, $ok, "fetch {$key}");
        check(
            $back == $value && gettype($back) === gettype($value),
            "round trip of {$key}: " . var_export($back, true)
        );
    }
    $c->store('hits', 0);
    same(1, $c->inc('hits'), 'an int stored by store() is a counter, as in APCu');
    same(1, $c->fetch('hits'), 'and fetch reads the counter as an int');
    same(true, $c->cas('hits', 1, 5), 'cas on a stored int');
    same(['v' => 1], $c->entry('e', fn () => ['v' => 1]), 'entry with the serializer');
    same(['v' => 1], $c->fetch('e'), 'entry stored it serialized');
    $raw = new Cache($c->name(), ['capacity' => 4 << 20]);
    $raw->store('foreign', 'not serialized');
    throws(
        Larder\SerializerException::class,
        fn () => $c->fetch('foreign'),
        'fetch of a value written without the serializer'
    );
    throws(Exception::class, fn () => $c->store('closure', fn () => 1), 'a closure cannot be serialized');
}

function test_bad_input_is_an_exception_never_a_crash(): void
{
    $c = small();
    foreach (['fetch' => fn () => $c->fetch(''), 'store' => fn () => $c->store('', 'v'),
        'add' => fn () => $c->add('', 'v'), 'delete' => fn () => $c->delete(''),
        'exists' => fn () => $c->exists(''), 'inc' => fn () => $c->inc(''),
        'cas' => fn () => $c->cas('', 1, 2), 'entry' => fn () => $c->entry('', fn () => 'v'),
        'ttl' => fn () => $c->ttl(''), 'touch' => fn () => $c->touch('', 1),
        'ticket' => fn () => $c->ticket('')] as $method => $call) {
        throws(Larder\InvalidArgumentException::class, $call, "{$method} with an empty key");
    }
    $e = throws(
        Larder\TooLargeException::class,
        fn () => $c->store(str_repeat('k', 300), 'v'),
        'a key over max_key_len'
    );
    same('LARDER_E_TOO_LARGE', $e->getStatusName(), 'the status name');
    same(Larder\Library::ffi()->LARDER_E_TOO_LARGE, $e->getCode(), 'the code is the larder_status');
    check(str_contains($e->getMessage(), 'max_key_len'), 'the message names the remedy: ' . $e->getMessage());
    throws(
        Larder\TooLargeException::class,
        fn () => $c->store('k', str_repeat('v', 70000)),
        'a value over max_value_len'
    );
    throws(
        Larder\TooLargeException::class,
        fn () => $c->fetch(str_repeat('k', 300)),
        'fetch with a key over max_key_len'
    );
    $e = throws(TypeError::class, fn () => $c->store('k', ['array']), 'an array value without a serializer');
    check(
        str_contains($e->getMessage(), "'serializer' => 'php'"),
        'the TypeError names the option: ' . $e->getMessage()
    );
    throws(TypeError::class, fn () => $c->store('k', 42), 'an int value without a serializer');
    throws(TypeError::class, fn () => $c->store('k', null), 'null without a serializer');
    throws(TypeError::class, fn () => $c->add('k', new stdClass()), 'an object without a serializer');
    throws(Larder\InvalidArgumentException::class, fn () => $c->store('k', 'v', -1), 'a negative ttl');
    throws(
        Larder\InvalidArgumentException::class,
        fn () => $c->store('k', 'v', PHP_INT_MAX),
        'a ttl beyond int64 milliseconds'
    );
    throws(Larder\InvalidArgumentException::class, fn () => new Cache(name(), ['capcity' => 1]), 'an unknown option');
    throws(Larder\InvalidArgumentException::class, fn () => new Cache(name(), ['capacity' => -1]), 'a negative option');
    throws(Larder\InvalidArgumentException::class, fn () => new Cache(name(), ['capacity' => '1M']), 'a string option');
    throws(
        Larder\InvalidArgumentException::class,
        fn () => new Cache(name(), ['shards' => 1 << 40]),
        'an option over 32 bits'
    );
    throws(
        Larder\InvalidArgumentException::class,
        fn () => new Cache(name(), ['serializer' => 'igbinary']),
        'an unsupported serializer'
    );
    throws(
        Larder\InvalidArgumentException::class,
        fn () => new Cache(name(), ['persistent' => 'yes']),
        'persistent not a bool'
    );
    throws(
        Larder\InvalidOptionsException::class,
        fn () => new Cache(name(), ['capacity' => 1024]),
        'a capacity the core refuses'
    );
    throws(Larder\InvalidNameException::class, fn () => new Cache('bad name!'), 'an invalid name');
    throws(Larder\InvalidNameException::class, fn () => new Cache(''), 'an empty name');
    throws(Larder\InvalidNameException::class, fn () => new Cache("a\0b"), 'a name with a NUL byte');
    throws(
        Larder\IncompatibleException::class,
        fn () => new Cache($c->name(), ['capacity' => 8 << 20]),
        'reopening with another capacity'
    );
    $e = throws(
        Larder\NotFoundException::class,
        fn () => new Cache(name(), ['attach_only' => true]),
        'attach_only without a file'
    );
    check($e instanceof Larder\FileException && $e instanceof Larder\Exception, 'NotFoundException is a FileException');
    $attached = new Cache($c->name(), ['attach_only' => true]);
    $c->store('shared', 'yes');
    same('yes', $attached->fetch('shared'), 'attach_only takes the file\'s own parameters');
}

function test_every_error_status_has_a_documented_class(): void
{
    $ffi = Larder\Library::ffi();
    preg_match_all('/\b(LARDER_E_[A-Z_]+)\s*=/', file_get_contents(Larder\Library::headerPath()), $m);
    check(count($m[1]) >= 27, 'the header has its error statuses');
    foreach ($m[1] as $name) {
        $e = Larder\Exception::fromStatus($ffi, $ffi->{$name}, 'test');
        same($name, $e->getStatusName(), "the status name of {$name}");
        same($ffi->{$name}, $e->getCode(), "the code of {$name}");
        check(get_class($e) !== Larder\Exception::class, "{$name} has its own class (" . get_class($e) . ')');
    }
    same(
        Larder\TimeoutException::class,
        get_class(Larder\Exception::fromStatus($ffi, $ffi->LARDER_E_TIMEOUT, 't')),
        'E_TIMEOUT'
    );
    same(
        Larder\NoSpaceException::class,
        get_class(Larder\Exception::fromStatus($ffi, $ffi->LARDER_E_NO_SPACE, 't')),
        'E_NO_SPACE'
    );
    $unknown = Larder\Exception::fromStatus($ffi, 999, 'test');
    same(Larder\InternalException::class, get_class($unknown), 'an unknown status');
    check(str_contains($unknown->getMessage(), 'unknown larder_status 999'), 'names the number');
}

function test_an_outcome_is_never_reported_with_a_stale_last_error(): void
{
    $ffi = Larder\Library::ffi();
    // An error leaves its message in larder_last_error(); an outcome sets none.
    throws(Larder\InvalidNameException::class, fn () => new Cache('stale message!'), 'an invalid name');
    $e = Larder\Exception::fromStatus($ffi, $ffi->LARDER_TOO_SMALL, 'test');
    same(Larder\InternalException::class, get_class($e), 'an outcome given to fromStatus');
    same('LARDER_TOO_SMALL', $e->getStatusName(), 'its status name');
    same($ffi->LARDER_TOO_SMALL, $e->getCode(), 'its code');
    check(str_contains($e->getMessage(), 'LARDER_TOO_SMALL (4) is not an error'), 'names it: ' . $e->getMessage());
    check(!str_contains($e->getMessage(), 'stale message'), 'not the earlier error: ' . $e->getMessage());
    check(!str_contains($e->getMessage(), 'unknown'), 'a known status: ' . $e->getMessage());
}

function test_a_value_that_keeps_growing_between_reads_is_a_clear_error(): void
{
    $ffi = Larder\Library::ffi();
    $name = name();
    (new Cache($name, ['capacity' => 4 << 20]))->store('k', 'v');
    // A Cache that takes OK for TOO_SMALL, so every read of the present value is one more
    // "it grew": what other processes replacing it with larger values would cause. (One
    // each: every read doubles its buffer.)
    $rigged = function () use ($ffi, $name): Cache {
        $c = new Cache($name, ['capacity' => 4 << 20]);
        (new ReflectionProperty(Cache::class, 'ok'))->setValue($c, -1);
        (new ReflectionProperty(Cache::class, 'tooSmall'))->setValue($c, $ffi->LARDER_OK);
        return $c;
    };
    $reads = [
        'fetch' => fn () => $rigged()->fetch('k'),
        'entry' => fn () => $rigged()->entry('k', fn () => 'generated'),
    ];
    foreach ($reads as $doing => $read) {
        $e = throws(Larder\ValueGrewException::class, $read, "{$doing} of a value that keeps growing");
        check($e instanceof Larder\Exception, 'a Larder\Exception');
        same($ffi->LARDER_TOO_SMALL, $e->getCode(), 'the code is LARDER_TOO_SMALL');
        check(
            str_starts_with($e->getMessage(), "{$doing} 'k': the value kept growing between reads"),
            'says what happened: ' . $e->getMessage()
        );
    }
}

function test_stats_and_clear(): void
{
    $c = small();
    $c->store('a', '1');
    $c->store('b', '2');
    $c->fetch('a');
    $c->fetch('zz');
    $s = $c->stats();
    same(2, $s['entries'], 'entries');
    check($s['hits'] >= 1 && $s['misses'] >= 1, 'hits and misses are counted');
    foreach (['bytes_live', 'bytes_free', 'evictions', 'recoveries', 'fill_handovers', 'lock_timeouts'] as $field) {
        check(is_int($s[$field] ?? null), "stats has {$field}");
    }
    check(!isset($s['struct_size']), 'no struct_size');
    same(true, $c->clear(), 'clear');
    same(0, $c->stats()['entries'], 'clear removed every entry');
}

function test_handles_are_shared_and_closed(): void
{
    $name = name();
    $a = new Cache($name, ['capacity' => 4 << 20]);
    $b = new Cache($name, ['capacity' => 4 << 20]);
    $a->store('k', 'v');
    same('v', $b->fetch('k'), 'two objects of one name share the cache');
    $b->close();
    same('v', $a->fetch('k'), 'closing one leaves the other open');
    throws(Larder\Exception::class, fn () => $b->fetch('k'), 'a closed object refuses');
    $c = new Cache($name, ['capacity' => 4 << 20, 'persistent' => false]);
    same('v', $c->fetch('k'), 'a non-persistent handle');
    unset($c);
    same('v', $a->fetch('k'), 'destroying a non-persistent object leaves the others open');
    same(true, Cache::unlink($name), 'unlink removes the file');
    same(false, Cache::unlink($name), 'unlink of a missing file');
}

function test_library_errors_are_clear(): void
{
    $e = throws(
        Larder\LibraryException::class,
        fn () => Larder\Library::declarations('/nonexistent/larder.h'),
        'a missing header'
    );
    check(str_contains($e->getMessage(), 'LARDER_HEADER'), 'names LARDER_HEADER: ' . $e->getMessage());
    $tmp = tempnam(sys_get_temp_dir(), 'larder-unit-');
    try {
        file_put_contents($tmp, "int x;\n");
        throws(
            Larder\LibraryException::class,
            fn () => Larder\Library::declarations($tmp),
            'a header without the block'
        );
    } finally {
        unlink($tmp);
    }
    $header = Larder\Library::ffiHeader('/x/liblarder.so');
    check(str_starts_with($header, "#define FFI_SCOPE \"larder\"\n#define FFI_LIB \"/x/liblarder.so\"\n"), 'ffiHeader');
    throws(
        Larder\LibraryException::class,
        fn () => Larder\Library::ffiHeader('/x/"quoted'),
        'a quote in the library path'
    );
}

/** Whether this process runs as root: the owner of a file it creates. */
function is_root(): bool
{
    $tmp = tempnam(sys_get_temp_dir(), 'larder-unit-');
    try {
        return fileowner($tmp) === 0;
    } finally {
        unlink($tmp);
    }
}

function test_group_and_allow_uids_map_onto_the_options(): void
{
    $bad = [
        'too many uids' => ['allow_uids' => [1, 2, 3, 4, 5]],
        'uids not a list' => ['allow_uids' => ['a' => 1]],
        'uids not an array' => ['allow_uids' => 0],
        'a negative uid' => ['allow_uids' => [-1]],
        'a uid over 32 bits' => ['allow_uids' => [1 << 32]],
        'a uid as a string' => ['allow_uids' => ['0']],
        'a negative group' => ['group' => -1],
        'a group over 32 bits' => ['group' => 1 << 32],
        'a group as a string' => ['group' => 'www-data'],
    ];
    foreach ($bad as $what => $options) {
        $e = throws(Larder\InvalidArgumentException::class, fn () => small($options), $what);
        check(
            str_contains($e->getMessage(), array_key_first($options)),
            "{$what}: the message names the option: " . $e->getMessage()
        );
    }

    // The file gets the group and mode asked (root may choose any group; another user
    // its own, the group of a file it creates).
    $root = is_root();
    $probe = tempnam(sys_get_temp_dir(), 'larder-unit-');
    $mine = filegroup($probe);
    unlink($probe);
    $gid = $root ? 54321 : $mine;
    $path = shm_path();
    new Cache($path, ['capacity' => 4 << 20, 'mode' => 0660, 'group' => $gid, 'allow_uids' => [0]]);
    same($gid, filegroup($path), 'the file\'s group');
    same(0660, fileperms($path) & 0777, 'the file\'s mode');
    $default = shm_path();
    new Cache($default, ['capacity' => 4 << 20, 'group' => null]);
    same($mine, filegroup($default), 'a null group is the creator\'s');
    if (!$root) {
        echo "     (another uid's file: skipped, it needs root to chown)\n";
        return;
    }
    // A file owned by another uid: refused unless that owner is allowed (other allowed
    // uids are another handle, so each open below is a real one).
    $other = shm_path();
    $root = new Cache($other, ['capacity' => 4 << 20]);
    $root->store('from', 'root');
    $root->close();
    check(chown($other, 65534), 'chown to 65534');
    $e = throws(
        Larder\UnsafeFileException::class,
        fn () => new Cache($other, ['capacity' => 4 << 20, 'allow_uids' => [1234]]),
        'a foreign owner not allowed'
    );
    same('LARDER_E_UNSAFE_FILE', $e->getStatusName(), 'the status');
    check(str_contains($e->getMessage(), 'owned by uid 65534'), 'names the owner: ' . $e->getMessage());
    $allowed = new Cache($other, ['capacity' => 4 << 20, 'allow_uids' => [1234, 65534]]);
    same('root', $allowed->fetch('from'), 'opened with its owner allowed');
}

$filter = $argv[1] ?? '';
$failed = 0;
$ran = 0;
$started = hrtime(true);
foreach (get_defined_functions()['user'] as $fn) {
    if (!str_starts_with($fn, 'test_') || ($filter !== '' && !str_contains($fn, $filter))) {
        continue;
    }
    $ran++;
    $GLOBALS['names'] = [];
    try {
        $fn();
        echo "ok   {$fn}\n";
    } catch (Throwable $e) {
        $failed++;
        printf("FAIL %s: %s: %s\n  at %s:%d\n", $fn, get_class($e), $e->getMessage(), $e->getFile(), $e->getLine());
    } finally {
        gc_collect_cycles();
        foreach ($GLOBALS['names'] as $name) {
            Cache::unlink($name);
        }
    }
}
printf("%d tests, %d failed, %.2f s\n", $ran, $failed, (hrtime(true) - $started) / 1e9);
if ($ran === 0) {
    echo "no test matched {$filter}\n";
    exit(1);
}
exit($failed > 0 ? 1 : 0);
