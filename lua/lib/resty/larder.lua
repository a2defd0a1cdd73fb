-- resty.larder: ngx.shared.DICT's API over larder, a cache shared by the processes of
-- one host through one memory-mapped file in /dev/shm, whose locks survive a worker
-- killed in the middle of a write (the next caller repairs what it left).
--
--     local dict = require("resty.larder").open("tokens", { capacity = 64 * 1024 * 1024 })
--
-- replaces `local dict = ngx.shared.tokens`; the methods keep the dict's names,
-- arguments and return values. See lua/README.md for what differs and what is missing.

local ffi = require("ffi")
local bit = require("bit")

local ffi_new = ffi.new
local ffi_str = ffi.string
local ffi_copy = ffi.copy
local ffi_cast = ffi.cast
local ffi_gc = ffi.gc
local band = bit.band
local bor = bit.bor
local type = type
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local math_floor = math.floor
local math_max = math.max
local math_min = math.min
local select = select
local unpack = unpack
local rawequal = rawequal
local pcall = pcall
local ipairs = ipairs
local pairs = pairs
local getmetatable = getmetatable
local ngx = ngx -- nil outside nginx (plain LuaJIT)

local _M = { _VERSION = "0.1.0" }

-- The declarations between the LARDER_FFI_BEGIN and LARDER_FFI_END lines of
-- capi/include/larder.h, verbatim: this module is written against this version of the
-- ABI (structs grow by struct_size, so a newer library accepts it). lua/t/test_nginx.py
-- checks that the two stay identical.
local CDEF = [=[

/* An open cache (opaque). Thread-safe; survives fork. */
typedef struct larder_cache larder_cache;
/* A claimed fill (opaque), owned by the thread that began it. */
typedef struct larder_fill larder_fill;

typedef enum larder_status {
    LARDER_OK = 0,
    LARDER_MISS = 1,        /* no fresh entry (get, replace, remove, touch, ttl, cas) */
    LARDER_EXISTS = 2,      /* add: a fresh entry is already there; cas: its version moved */
    LARDER_FENCED = 3,      /* fill/ticket store refused: the key was revoked meanwhile */
    LARDER_TOO_SMALL = 4,   /* the caller's buffer is too small: *len holds the size needed */
    LARDER_STALE = 5,       /* get_stale / fill_begin: an expired value was copied */
    LARDER_FILL = 6,        /* fill_begin: no value; the caller must compute it (it holds *fill) */
    /* errors: >= 100, one per larder error kind, plus the boundary's own */
    LARDER_E_NULL = 100,            /* a required pointer was NULL */
    LARDER_E_INTERNAL = 101,        /* a bug in larder (a caught panic): please report */
    LARDER_E_INVALID_NAME = 102,
    LARDER_E_INVALID_OPTIONS = 103,
    LARDER_E_TOO_LARGE = 104,       /* key or value over the cache's limit; nothing stored */
    LARDER_E_INCOMPATIBLE = 105,    /* the file has other parameters, or another build's layout */
    LARDER_E_VERSION = 106,         /* the file has another format version */
    LARDER_E_NOT_A_CACHE = 107,
    LARDER_E_CORRUPT = 108,
    LARDER_E_UNSAFE_FILE = 109,     /* symlink, not a regular file, foreign owner, world-writable */
    LARDER_E_TRUNCATED = 110,
    LARDER_E_OTHER_BOOT = 111,
    LARDER_E_OTHER_PID_NAMESPACE = 112,
    LARDER_E_OTHER_TIME_NAMESPACE = 113,
    LARDER_E_DETACHED = 114,        /* the file was replaced or removed; the handle cannot attach */
    LARDER_E_NOT_A_COUNTER = 115,   /* incr on a value that is not 8 bytes */
    LARDER_E_OVERFLOW = 116,        /* incr would leave int64 */
    LARDER_E_INVALID_ARGUMENT = 117,
    LARDER_E_NO_SPACE = 118,        /* no room on the file system for the cache file */
    LARDER_E_TIMEOUT = 119,         /* a lock or another process's fill outlasted its timeout */
    LARDER_E_WOULD_BLOCK = 120,     /* a try_ call would have waited */
    LARDER_E_IN_USE = 121,
    LARDER_E_NOT_FOUND = 122,       /* attach_only and no cache file exists */
    LARDER_E_PROC_UNAVAILABLE = 123,/* /proc is not mounted */
    LARDER_E_IO = 124,              /* another operating-system error */
    LARDER_E_UNSUPPORTED = 125,     /* an error kind newer than this build of the ABI names */
    LARDER_E_WRONG_THREAD = 126     /* a fill completed/abandoned by a thread that did not begin it */
} larder_status;

/* Creation parameters and runtime settings. Initialise with larder_options_init, then
   change fields; 0 in a field means larder's default. Creation parameters (capacity,
   max_key_len, max_value_len, shards) are fixed in the file when it is created; opening
   an existing file with others gives LARDER_E_INCOMPATIBLE (use attach_only to take the
   file's own). */
typedef struct larder_options {
    uint32_t struct_size;      /* sizeof(larder_options): lets the struct grow */
    uint64_t capacity;         /* bytes; 0 = larder's default (32 MiB) */
    uint32_t max_key_len;      /* 0 = default (256) */
    uint32_t max_value_len;    /* 0 = default (65536) */
    uint32_t shards;           /* 0 = chosen from the capacity */
    uint64_t lock_timeout_ms;  /* 0 = default (500) */
    uint64_t fill_timeout_ms;  /* 0 = default (5000) */
    uint32_t mode;             /* file mode; 0 = default (0600) */
    uint32_t attach_only;      /* nonzero: attach to an existing file, never create */
    /* Sharing one file between uids (a web server's workers and an application of its
       own user): create it with mode 0660 and a group both are in; each accepts the
       other's file by naming the creator's uid in allow_uids. The fields above make the
       first layout (struct_size 56): a struct that ends there reads these as 0. */
    uint32_t group;            /* the file's group at creation, when has_group is nonzero */
    uint32_t has_group;        /* 0 = the creating process's effective group (gid 0 is valid) */
    uint32_t allow_uids[4];    /* owners accepted besides this process's effective uid */
    uint32_t allow_uids_count; /* how many of allow_uids are set: 0..4 (more: E_INVALID_ARGUMENT) */
    uint32_t reserved;         /* 0 */
} larder_options;

/* Counters of the whole cache, for the call larder_stats. In C a typedef and a function
   cannot share a name, so the struct is named by its tag, `struct larder_stats`, or by
   the typedef larder_stats_t (in PHP FFI and LuaJIT: "struct larder_stats"). Set
   struct_size to sizeof(struct larder_stats) before the call; the library writes the
   fields that fit in it. */
struct larder_stats {
    uint32_t struct_size;
    uint32_t reserved;
    uint64_t entries;          /* live entries (expired ones until reclaimed) */
    uint64_t bytes_live;       /* bytes of keys and values of live entries */
    uint64_t bytes_used;       /* bytes of the logs in use */
    uint64_t bytes_free;       /* bytes of the logs free */
    uint64_t file_size;
    uint64_t shard_count;
    uint64_t hits;
    uint64_t misses;
    uint64_t stale_hits;
    uint64_t inserts;
    uint64_t updates;
    uint64_t removals;
    uint64_t evictions;
    uint64_t index_evictions;
    uint64_t bytes_written;
    uint64_t bytes_moved;
    uint64_t expirations;
    uint64_t lock_timeouts;
    uint64_t recoveries;
    uint64_t repair_dropped;
    uint64_t fills;
    uint64_t fill_timeouts;
    uint64_t fill_handovers;
    uint64_t fills_fenced;
    uint64_t locks;
};
typedef struct larder_stats larder_stats_t;

/* The version of an entry (opaque token), from larder_gets, for larder_cas. */
typedef struct larder_version { uint64_t words[3]; } larder_version;
/* A ticket (opaque token), from larder_ticket_take, for larder_set_with_ticket. */
typedef struct larder_ticket { uint64_t words[4]; } larder_ticket;

/* Writes the defaults into *opts, struct_size set. NULL: nothing happens. */
void larder_options_init(larder_options *opts);

/* Opens (creates, unless attach_only) the cache `name`; opts NULL = defaults.
   OK: *out is the handle. Error: *out is NULL (E_INVALID_NAME, E_INCOMPATIBLE,
   E_NOT_FOUND, E_NO_SPACE, E_UNSAFE_FILE, ...); a file owned by another uid than this
   process's effective one and not in allow_uids is E_UNSAFE_FILE. Same name and options
   (group and allowed uids included) again: the same handle, one more reference. */
larder_status larder_open(const char *name, const larder_options *opts, larder_cache **out);
/* Drops one reference; the last one closes the handle. NULL is a no-op. */
void larder_close(larder_cache *c);
/* Removes the cache file `name` (handles attached to it notice and follow). */
larder_status larder_unlink(const char *name);

/* OK: the fresh value copied, *len = its length. TOO_SMALL: *len = the size needed,
   nothing copied (buf may be NULL when cap == 0). MISS: no fresh entry, *len = 0. */
larder_status larder_get(larder_cache *c, const void *key, size_t key_len,
                         void *buf, size_t cap, size_t *len);
/* As larder_get, but an expired value is copied too: OK fresh, STALE expired, MISS. */
larder_status larder_get_stale(larder_cache *c, const void *key, size_t key_len,
                               void *buf, size_t cap, size_t *len);
/* Stores a value (ttl_ms 0 = no expiry). OK. */
larder_status larder_set(larder_cache *c, const void *key, size_t key_len,
                         const void *val, size_t val_len, uint64_t ttl_ms);
/* OK: stored; EXISTS: a fresh entry is there (nothing stored). */
larder_status larder_add(larder_cache *c, const void *key, size_t key_len,
                         const void *val, size_t val_len, uint64_t ttl_ms);
/* OK: replaced; MISS: no fresh entry (nothing stored). */
larder_status larder_replace(larder_cache *c, const void *key, size_t key_len,
                             const void *val, size_t val_len, uint64_t ttl_ms);
/* OK: removed; MISS: there was no fresh entry. Either way, fills of the key in flight
   are fenced off. */
larder_status larder_remove(larder_cache *c, const void *key, size_t key_len);
/* Adds delta to the counter at key (8-byte little-endian int64, larder's format);
   an absent key starts as init + delta with ttl_ms. OK: *out = the new value.
   E_NOT_A_COUNTER, E_OVERFLOW: nothing changed. */
larder_status larder_incr(larder_cache *c, const void *key, size_t key_len,
                          int64_t delta, int64_t init, uint64_t ttl_ms, int64_t *out);
/* Gives a fresh entry a new TTL (0 = none). OK, MISS. */
larder_status larder_touch(larder_cache *c, const void *key, size_t key_len, uint64_t ttl_ms);
/* OK: *ttl_ms = milliseconds left, or -1 when the entry has no expiry. MISS. */
larder_status larder_ttl(larder_cache *c, const void *key, size_t key_len, int64_t *ttl_ms);
/* Removes every entry. OK: *removed (if not NULL) = how many there were. */
larder_status larder_clear(larder_cache *c, uint64_t *removed);
/* OK: the counters, written up to out->struct_size (which the caller sets). */
larder_status larder_stats(larder_cache *c, struct larder_stats *out);

/* For event loops (OpenResty): the same calls, but none waits for a lock. Where one
   would (another process holds the shard lock), E_WOULD_BLOCK and nothing was done;
   otherwise each returns what its waiting sibling returns. */
larder_status larder_try_get(larder_cache *c, const void *key, size_t key_len,
                             void *buf, size_t cap, size_t *len);
larder_status larder_try_set(larder_cache *c, const void *key, size_t key_len,
                             const void *val, size_t val_len, uint64_t ttl_ms);
larder_status larder_try_add(larder_cache *c, const void *key, size_t key_len,
                             const void *val, size_t val_len, uint64_t ttl_ms);
larder_status larder_try_remove(larder_cache *c, const void *key, size_t key_len);
larder_status larder_try_incr(larder_cache *c, const void *key, size_t key_len,
                              int64_t delta, int64_t init, uint64_t ttl_ms, int64_t *out);
larder_status larder_try_touch(larder_cache *c, const void *key, size_t key_len,
                               uint64_t ttl_ms);
larder_status larder_try_get_stale(larder_cache *c, const void *key, size_t key_len,
                                   void *buf, size_t cap, size_t *len);
larder_status larder_try_replace(larder_cache *c, const void *key, size_t key_len,
                                 const void *val, size_t val_len, uint64_t ttl_ms);
larder_status larder_try_ttl(larder_cache *c, const void *key, size_t key_len,
                             int64_t *ttl_ms);
/* larder_clear has no try_ form: an event loop clears shard by shard (shard in
   0 .. stats.shard_count - 1, else E_INVALID_ARGUMENT), retrying a busy one later.
   OK: *removed (if not NULL) = how many entries the shard had. */
larder_status larder_try_clear_shard(larder_cache *c, uint32_t shard, uint64_t *removed);

/* CAS. As larder_get, and on OK *version = the entry's version. */
larder_status larder_gets(larder_cache *c, const void *key, size_t key_len, void *buf,
                          size_t cap, size_t *len, larder_version *version);
/* OK: stored (the entry has a new version). EXISTS: the version moved (someone wrote
   it). MISS: no fresh entry (removed, expired or evicted). */
larder_status larder_cas(larder_cache *c, const void *key, size_t key_len, const void *val,
                         size_t val_len, uint64_t ttl_ms, const larder_version *version);
/* The same, never waiting for a lock (E_WOULD_BLOCK; nothing was stored). */
larder_status larder_try_gets(larder_cache *c, const void *key, size_t key_len, void *buf,
                              size_t cap, size_t *len, larder_version *version);
larder_status larder_try_cas(larder_cache *c, const void *key, size_t key_len,
                             const void *val, size_t val_len, uint64_t ttl_ms,
                             const larder_version *version);

/* Tickets, for cache-aside code: take one on a miss BEFORE reading the source, store
   with it. OK: *out is the ticket. */
larder_status larder_ticket_take(larder_cache *c, const void *key, size_t key_len,
                                 larder_ticket *out);
/* OK: stored. FENCED: a write revoked the key since the ticket was taken; not stored. */
larder_status larder_set_with_ticket(larder_cache *c, const void *key, size_t key_len,
                                     const void *val, size_t val_len, uint64_t ttl_ms,
                                     const larder_ticket *ticket);

/* Single flight without callbacks. *fill is NULL unless the result is FILL.
   OK: the fresh value copied (as get). STALE: another process refreshes it, its stale
   value was copied. TOO_SMALL: as get (no fill held). FILL: the caller holds the key's
   fill (others wait for it, up to the fill timeout): compute the value, then call
   larder_fill_complete or larder_fill_abandon, from the same thread, always.
   E_TIMEOUT: another process's fill did not finish within the fill timeout. */
larder_status larder_fill_begin(larder_cache *c, const void *key, size_t key_len,
                                void *buf, size_t cap, size_t *len, larder_fill **fill);
/* As larder_fill_begin, but never waits: E_WOULD_BLOCK where it would (for an event
   loop that must not block). */
larder_status larder_fill_try_begin(larder_cache *c, const void *key, size_t key_len,
                                    void *buf, size_t cap, size_t *len, larder_fill **fill);
/* Stores the value (fenced) and ends the fill, freeing f, in every case but one: from a
   thread other than the one that began it, E_WRONG_THREAD and f is left as it was.
   OK: stored. FENCED: the key was revoked since begin (the value is the caller's to
   use, nobody is served it later). Errors as larder_set (the fill ends all the same). */
larder_status larder_fill_complete(larder_fill *f, const void *val, size_t val_len,
                                   uint64_t ttl_ms);
/* As larder_fill_complete, but never waits for the shard lock: E_WOULD_BLOCK, nothing
   stored, and f is still the caller's (call it again later, or abandon it). Any other
   result ends the fill and frees f, as larder_fill_complete. */
larder_status larder_fill_try_complete(larder_fill *f, const void *val, size_t val_len,
                                       uint64_t ttl_ms);
/* Ends the fill without a value, freeing f: a waiter computes next. NULL is a no-op.
   From another thread than the one that began it, nothing happens (see
   larder_last_error). */
void larder_fill_abandon(larder_fill *f);

/* Errors. A static description of any status value (unknown ones too); never NULL. */
const char *larder_strerror(larder_status s);
/* This thread's last error message, with the file's name and the remedy ("" if none
   yet); never NULL; valid until the next error on this thread. */
const char *larder_last_error(void);

]=]

-- Another module of this process may have declared the ABI already.
if not pcall(ffi.typeof, "larder_cache") then
    ffi.cdef(CDEF)
end

local lib -- the loaded liblarder.so, from the first open()
local lib_path
local S = {} -- status codes, read from the library through FFI (never hard-coded)

local function load_library(path)
    if lib then
        if path and path ~= lib_path then
            return nil, "liblarder is already loaded from " .. tostring(lib_path)
                        .. ", not " .. path
        end
        return lib
    end
    path = path or os.getenv("LARDER_LIBRARY") or "larder"
    local ok, loaded = pcall(ffi.load, path)
    if not ok then
        return nil, "cannot load liblarder (" .. path .. "): " .. tostring(loaded)
                    .. " (set open()'s library option or LARDER_LIBRARY, with"
                    .. " `env LARDER_LIBRARY;` in nginx.conf)"
    end
    for _, name in ipairs({ "OK", "MISS", "EXISTS", "FENCED", "TOO_SMALL", "STALE",
                            "FILL", "E_TOO_LARGE", "E_TIMEOUT", "E_WOULD_BLOCK",
                            "E_INVALID_ARGUMENT",
                            "E_NOT_A_COUNTER", "E_OVERFLOW" }) do
        S[name] = tonumber(loaded["LARDER_" .. name])
    end
    lib, lib_path = loaded, path
    return lib
end

-- The message for an error status: the dict's words where the dict has one.
local function status_error(st)
    if st == S.E_TOO_LARGE then
        return "value too large"
    elseif st == S.E_TIMEOUT then
        return "timeout"
    elseif st == S.E_NOT_A_COUNTER then
        return "not a number"
    elseif st == S.E_WOULD_BLOCK then
        return "busy"
    end
    return "larder: " .. ffi_str(lib.larder_strerror(st)) .. ": "
           .. ffi_str(lib.larder_last_error())
end

-- Scratch buffers, one per Lua VM (an nginx worker runs Lua on one thread). They grow
-- to the largest value seen. A call that sleeps (see "Waiting" below) may see another
-- coroutine use them meanwhile: what it passes is copied first (`stable`), and what it
-- gets back is read before anything can yield.
local get_buf_size = 4096
local get_buf = ffi_new("uint8_t[?]", get_buf_size)
local put_buf_size = 4096
local put_buf = ffi_new("uint8_t[?]", put_buf_size)
local len_out = ffi_new("size_t[1]")
local i64_out = ffi_new("int64_t[1]")
local fill_out = ffi_new("larder_fill *[1]")
local version_box = ffi_new("larder_version")
local i64_box = ffi_new("int64_t[1]")
local u32_box = ffi_new("uint32_t[1]")
local dbl_box = ffi_new("double[1]")

local function put_reserve(n)
    if n > put_buf_size then
        put_buf_size = math_max(n, put_buf_size * 2)
        put_buf = ffi_new("uint8_t[?]", put_buf_size)
    end
    return put_buf
end

-- Calls fn(c, key, key_len, buf, cap, len, ...) until the value fits in get_buf.
-- Returns the status; on OK/STALE the value is get_buf[0 .. len_out[0]).
local function read_into(fn, c, key, ...)
    while true do
        local st = tonumber(fn(c, key, #key, get_buf, get_buf_size, len_out, ...))
        if st ~= S.TOO_SMALL then
            return st
        end
        local need = tonumber(len_out[0])
        get_buf_size = math_max(need, get_buf_size * 2)
        get_buf = ffi_new("uint8_t[?]", get_buf_size)
    end
end

------------------------------------------------------------------------------------
-- Waiting. An nginx worker is an event loop: a call that waited there for a lock
-- would stall every request of the worker. So every method first makes larder's call
-- that never waits (larder_try_*); when that answers E_WOULD_BLOCK (another process
-- holds the key's shard lock: mid-write, or stopped or killed there), what follows
-- depends on the phase (ngx.get_phase()):
--  * phases that may yield (CAN_SLEEP): sleep (ngx.sleep, 1 ms doubling to 16 ms) and
--    try again, until the handle's lock timeout (lock_timeout_ms, 500 ms by default)
--    has passed: then "timeout";
--  * init (init_by_lua*, in the master before it runs any event loop) and plain LuaJIT
--    outside nginx: the waiting call, which waits up to the lock timeout ("timeout");
--  * every other phase (init_worker, which runs on the worker's event loop; set,
--    rewrite/access/content under a non-yieldable header or body filter, log,
--    header_filter, body_filter, balancer, exit_worker...): "busy" at once, nothing
--    done.
------------------------------------------------------------------------------------

-- Phases in which ngx.sleep may yield (lua-nginx-module's docs of ngx.sleep).
local CAN_SLEEP = {
    rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
    preread = true,
}

local SLEEP_FIRST = 0.001
local SLEEP_MAX = 0.016

-- "sleep", "wait" (the library's waiting call) or "fail" ("busy").
local function how_to_wait()
    if ngx == nil then
        return "wait"
    end
    local phase = ngx.get_phase()
    if phase == "init" then
        return "wait"
    elseif CAN_SLEEP[phase] then
        return "sleep"
    end
    return "fail"
end

local function clock()
    ngx.update_time()
    return ngx.now()
end

-- Sleeps and calls try(...) again while it answers E_WOULD_BLOCK, up to the deadline
-- (ngx.now() seconds); E_TIMEOUT when the last try at the deadline still would block.
local function sleep_retry(deadline, try, ...)
    local pause = SLEEP_FIRST
    while true do
        local left = deadline - clock()
        if left <= 0 then
            return S.E_TIMEOUT
        end
        ngx.sleep(math_min(pause, left))
        pause = math_min(pause * 2, SLEEP_MAX)
        local st = tonumber(try(...))
        if st ~= S.E_WOULD_BLOCK then
            return st
        end
    end
end

-- The arguments, with the scratch input buffers (an encoded value, followed by its
-- length) copied into strings, so that they survive a sleep.
local function stable(...)
    local n = select("#", ...)
    local args = { ... }
    for i = 1, n do
        local a = args[i]
        if rawequal(a, put_buf) or rawequal(a, i64_box) then
            args[i] = ffi_str(a, args[i + 1])
        end
    end
    return unpack(args, 1, n)
end

-- The status of try_fn(...), larder's call that never waits, or as the rules above:
-- of wait_fn(...), its waiting sibling; of tries after sleeps; or E_WOULD_BLOCK.
local function call(self, try_fn, wait_fn, ...)
    local st = tonumber(try_fn(...))
    if st ~= S.E_WOULD_BLOCK then
        return st
    end
    local how = how_to_wait()
    if how == "wait" then
        return tonumber(wait_fn(...))
    elseif how == "fail" then
        return st
    end
    return sleep_retry(clock() + self.lock_timeout, try_fn, stable(...))
end

-- As call, for the reads into get_buf (read_into).
local function read(self, try_fn, wait_fn, key, ...)
    local st = read_into(try_fn, self.c, key, ...)
    if st ~= S.E_WOULD_BLOCK then
        return st
    end
    local how = how_to_wait()
    if how == "wait" then
        return read_into(wait_fn, self.c, key, ...)
    elseif how == "fail" then
        return st
    end
    return sleep_retry(clock() + self.lock_timeout, read_into, try_fn, self.c, key, ...)
end

------------------------------------------------------------------------------------
-- The value format of the normal (non-raw) mode.
--
-- ngx.shared.DICT keeps each value's Lua type and a 32-bit flags number. Here:
--  * an integral number in [-2^53, 2^53] with flags 0 is stored as larder's own
--    counter, 8 bytes of little-endian int64, so incr() is one atomic larder_incr and
--    the counter is shared with the other languages' incr;
--  * every other value is a tag byte, then the flags (4 bytes, little-endian) when
--    they are not 0, then the payload: the string's bytes, a double (8 bytes), or a
--    boolean (1 byte, 0 or 1).
-- An encoded value is never 8 bytes long: a string whose encoding would be, gets one
-- padding byte after the header. So the length alone tells a counter from the rest.
------------------------------------------------------------------------------------

local T_STRING = 0x01
local T_NUMBER = 0x02
local T_BOOLEAN = 0x03
local T_MASK = 0x0f
local F_PAD = 0x40
local F_FLAGS = 0x80
local COUNTER_LEN = 8
local EXACT = 2 ^ 53

local function is_counter_number(n)
    return n == math_floor(n) and n >= -EXACT and n <= EXACT
           and not (n == 0 and 1 / n < 0)
end

local function is_integer(n)
    return n == math_floor(n) and n >= -EXACT and n <= EXACT
end

-- Returns ptr, len of the encoded value, or nil, err.
local function encode(value, flags)
    local vt = type(value)
    if vt == "number" and flags == 0 and is_counter_number(value) then
        i64_box[0] = value
        return i64_box, COUNTER_LEN
    end
    local tag, payload, plen
    if vt == "string" then
        tag, payload, plen = T_STRING, value, #value
    elseif vt == "number" then
        dbl_box[0] = value
        tag, payload, plen = T_NUMBER, dbl_box, 8
    elseif vt == "boolean" then
        tag, payload, plen = T_BOOLEAN, value and "\1" or "\0", 1
    else
        return nil, "bad value type"
    end
    local hlen = 1
    if flags ~= 0 then
        tag = bor(tag, F_FLAGS)
        hlen = 5
    end
    if hlen + plen == COUNTER_LEN then
        tag = bor(tag, F_PAD)
        hlen = hlen + 1
    end
    local buf = put_reserve(hlen + plen)
    buf[0] = tag
    if flags ~= 0 then
        u32_box[0] = flags
        ffi_copy(buf + 1, u32_box, 4)
    end
    if band(tag, F_PAD) ~= 0 then
        buf[hlen - 1] = 0
    end
    ffi_copy(buf + hlen, payload, plen)
    return buf, hlen + plen
end

-- Decodes get_buf[0 .. len): value, flags; or nil, err.
local function decode(len)
    local p = get_buf
    if len == COUNTER_LEN then
        ffi_copy(i64_box, p, 8)
        return tonumber(i64_box[0]), 0
    end
    if len == 0 then
        return nil, "value not written by resty.larder (open with raw = true)"
    end
    local tag = p[0]
    local typ = band(tag, T_MASK)
    if band(tag, 0x30) ~= 0 or typ == 0 or typ > T_BOOLEAN then
        return nil, "value not written by resty.larder (open with raw = true)"
    end
    local off, flags = 1, 0
    if band(tag, F_FLAGS) ~= 0 then
        if len < 5 then
            return nil, "corrupt resty.larder value"
        end
        ffi_copy(u32_box, p + 1, 4)
        flags = tonumber(u32_box[0])
        off = 5
    end
    if band(tag, F_PAD) ~= 0 then
        off = off + 1
    end
    local plen = len - off
    if typ == T_STRING and plen >= 0 then
        return ffi_str(p + off, plen), flags
    elseif typ == T_NUMBER and plen == 8 then
        ffi_copy(dbl_box, p + off, 8)
        return tonumber(dbl_box[0]), flags
    elseif typ == T_BOOLEAN and plen == 1 then
        return p[off] ~= 0, flags
    end
    return nil, "corrupt resty.larder value"
end

------------------------------------------------------------------------------------
-- Argument checks, as ngx.shared.DICT makes them (it converts a non-string key with
-- tostring). Where the dict raises a Lua error (a bad exptime, init, init_ttl), this
-- module returns nil and the same message instead: it never raises on bad input.
------------------------------------------------------------------------------------

local function check_key(self, key)
    if key == nil then
        return nil, "nil key"
    end
    if type(key) ~= "string" then
        key = tostring(key)
    end
    local n = #key
    if n == 0 then
        return nil, "empty key"
    end
    if n > self.max_key_len then
        return nil, "key too long"
    end
    return key
end

-- Seconds (the dict's unit, fractions allowed) to larder's milliseconds; nil/0 = none.
local function to_ms(seconds, what)
    if seconds == nil then
        return 0
    end
    if type(seconds) ~= "number" then
        seconds = tonumber(seconds)
    end
    if not seconds or seconds < 0 or seconds ~= seconds or seconds == 1 / 0 then
        return nil, "bad \"" .. what .. "\" argument"
    end
    local ms = math_floor(seconds * 1000 + 0.5)
    if ms > EXACT then
        -- Beyond 2^53 ms (285,000 years) a double no longer counts milliseconds, and
        -- larder's uint64 would wrap to "no expiry".
        return nil, "bad \"" .. what .. "\" argument"
    end
    if seconds > 0 and ms == 0 then
        ms = 1 -- a positive TTL below a millisecond must not mean "never expires"
    end
    return ms
end

local function check_self(self)
    if type(self) ~= "table" or self.c == nil then
        return nil, "bad \"zone\" argument"
    end
    return self
end

local function check_flags(self, flags)
    if flags == nil then
        return 0
    end
    flags = tonumber(flags)
    if not flags or flags < 0 or flags > 0xffffffff or flags ~= math_floor(flags) then
        return nil, "bad \"flags\" argument"
    end
    if flags ~= 0 and self.raw then
        return nil, "flags not supported in raw mode"
    end
    return flags
end

-- Returns ptr, len for a value in this dict's mode, or nil, err.
local function value_bytes(self, value, flags)
    if not self.raw then
        return encode(value, flags)
    end
    local vt = type(value)
    if vt == "number" then
        value = tostring(value)
    elseif vt ~= "string" then
        return nil, "bad value type"
    end
    return value, #value
end

local mt = {}
mt.__index = mt

------------------------------------------------------------------------------------
-- Reads
------------------------------------------------------------------------------------

local function read_value(self)
    local len = tonumber(len_out[0])
    if self.raw then
        return ffi_str(get_buf, len), 0
    end
    return decode(len)
end

function mt.get(self, key)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    local st = read(self, lib.larder_try_get, lib.larder_get, key)
    if st == S.MISS then
        return nil
    elseif st ~= S.OK then
        return nil, status_error(st)
    end
    local val, flags = read_value(self)
    if val == nil then
        return nil, flags
    end
    if flags ~= 0 then
        return val, flags
    end
    return val
end

function mt.get_stale(self, key)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    local st = read(self, lib.larder_try_get_stale, lib.larder_get_stale, key)
    if st == S.MISS then
        return nil
    elseif st ~= S.OK and st ~= S.STALE then
        return nil, status_error(st)
    end
    local val, flags = read_value(self)
    if val == nil then
        return nil, flags
    end
    return val, flags ~= 0 and flags or nil, st == S.STALE
end

------------------------------------------------------------------------------------
-- Writes: (true, nil, forcible) or (false, err, forcible), as the dict.
-- forcible is always false: larder evicts the least recently used entries of a full
-- shard as the dict does, but does not tell a writer that its own write did
-- (stats().evictions counts them).
------------------------------------------------------------------------------------

local OP_SET, OP_ADD, OP_REPLACE = 1, 2, 3

local function store(self, op, safe, key, value, exptime, flags)
    local err
    self, err = check_self(self)
    if not self then
        return false, err, false
    end
    local ttl_ms
    ttl_ms, err = to_ms(exptime, "exptime")
    if not ttl_ms then
        return false, err, false
    end
    flags, err = check_flags(self, flags)
    if not flags then
        return false, err, false
    end
    -- Argument errors are (nil, err), as the dict's; refusals (false, err, forcible).
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    if value == nil then
        -- set(key, nil) deletes, as in the dict; add/replace of nil too.
        local st = call(self, lib.larder_try_remove, lib.larder_remove, self.c, key, #key)
        if st ~= S.OK and st ~= S.MISS then
            return false, status_error(st), false
        end
        return true, nil, false
    end
    local p, n = value_bytes(self, value, flags)
    if not p then
        return nil, n
    end
    if safe and n + #key > self:free_space() then
        return false, "no memory", false
    end
    local st
    if op == OP_SET then
        st = call(self, lib.larder_try_set, lib.larder_set, self.c, key, #key, p, n, ttl_ms)
    elseif op == OP_ADD then
        st = call(self, lib.larder_try_add, lib.larder_add, self.c, key, #key, p, n, ttl_ms)
        if st == S.EXISTS then
            return false, "exists", false
        end
    else
        st = call(self, lib.larder_try_replace, lib.larder_replace, self.c, key, #key, p, n,
                  ttl_ms)
        if st == S.MISS then
            return false, "not found", false
        end
    end
    if st ~= S.OK then
        return false, status_error(st), false
    end
    return true, nil, false
end

function mt.set(self, key, value, exptime, flags)
    return store(self, OP_SET, false, key, value, exptime, flags)
end

-- safe_set/safe_add refuse ("no memory") when the cache's free bytes are fewer than
-- the entry needs, instead of evicting; larder fills shard by shard, so an entry that
-- passes this check may still evict in its own full shard (see lua/README.md).
function mt.safe_set(self, key, value, exptime, flags)
    return store(self, OP_SET, true, key, value, exptime, flags)
end

function mt.add(self, key, value, exptime, flags)
    return store(self, OP_ADD, false, key, value, exptime, flags)
end

function mt.safe_add(self, key, value, exptime, flags)
    return store(self, OP_ADD, true, key, value, exptime, flags)
end

function mt.replace(self, key, value, exptime, flags)
    return store(self, OP_REPLACE, false, key, value, exptime, flags)
end

function mt.delete(self, key)
    return store(self, OP_SET, false, key, nil)
end

------------------------------------------------------------------------------------
-- incr
------------------------------------------------------------------------------------

local CAS_TRIES = 1000

-- incr by compare-and-swap: for a missing key without init (the dict then says "not
-- found", while larder_incr would create it), a delta or init that is not an integer,
-- a value stored as a double, and an int64 overflow. Keeps the entry's TTL and flags.
-- In raw mode value and init are integers (mt.incr checks) and so is every result.
local function incr_cas(self, key, value, init, init_ttl_ms)
    local c = self.c
    -- Its own: a sleep between larder_gets and larder_cas lets other calls run.
    local version = ffi_new("larder_version")
    for _ = 1, CAS_TRIES do
        local st = read(self, lib.larder_try_gets, lib.larder_gets, key, version)
        if st == S.MISS then
            if init == nil then
                return nil, "not found"
            end
            local new = init + value
            if self.raw and not is_counter_number(new) then
                return nil, "raw counters are integers"
            end
            local p, n = encode(new, 0)
            st = call(self, lib.larder_try_add, lib.larder_add, c, key, #key, p, n,
                      init_ttl_ms)
            if st == S.OK then
                return new
            elseif st ~= S.EXISTS then
                return nil, status_error(st)
            end
        elseif st ~= S.OK then
            return nil, status_error(st)
        else
            local old, flags
            if self.raw then
                if tonumber(len_out[0]) ~= COUNTER_LEN then
                    return nil, "not a number"
                end
                ffi_copy(i64_box, get_buf, 8)
                old, flags = tonumber(i64_box[0]), 0
            else
                old, flags = decode(tonumber(len_out[0]))
            end
            if type(old) ~= "number" then
                return nil, "not a number"
            end
            local new = old + value
            if self.raw and not is_counter_number(new) then
                return nil, "raw counters are integers"
            end
            -- Keep the remaining TTL: larder_cas sets the one it is given.
            st = call(self, lib.larder_try_ttl, lib.larder_ttl, c, key, #key, i64_out)
            if st == S.OK then
                local left = tonumber(i64_out[0])
                local ttl_ms = left < 0 and 0 or math_max(left, 1)
                local p, n
                if self.raw then
                    i64_box[0] = new
                    p, n = i64_box, COUNTER_LEN
                else
                    p, n = encode(new, flags)
                end
                st = call(self, lib.larder_try_cas, lib.larder_cas, c, key, #key, p, n,
                          ttl_ms, version)
                if st == S.OK then
                    return new
                elseif st ~= S.EXISTS and st ~= S.MISS then
                    return nil, status_error(st)
                end
            elseif st ~= S.MISS then
                return nil, status_error(st)
            end
        end
        -- Another writer came in between: read again.
    end
    return nil, "busy"
end

function mt.incr(self, key, value, init, init_ttl)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    if type(value) ~= "number" then
        value = tonumber(value)
        if not value then
            return nil, "not a number"
        end
    end
    if init ~= nil and type(init) ~= "number" then
        local typ = type(init)
        init = tonumber(init)
        if not init then
            return nil, "bad init arg: number expected, got " .. typ
        end
    end
    if self.raw and (not is_integer(value) or (init ~= nil and not is_integer(init))) then
        -- A raw counter is larder's 8-byte int64: no fractions.
        return nil, "raw counters are integers"
    end
    local init_ttl_ms = 0
    if init_ttl ~= nil then
        if init == nil then
            return nil, "must provide \"init\" when providing \"init_ttl\""
        end
        init_ttl_ms, err = to_ms(init_ttl, "init_ttl")
        if not init_ttl_ms then
            return nil, err
        end
    end
    local new
    if init ~= nil and is_counter_number(value) and is_counter_number(init) then
        -- The common case, one atomic call: a counter with an initial value.
        local st = call(self, lib.larder_try_incr, lib.larder_incr, self.c, key, #key,
                        value, init, init_ttl_ms, i64_out)
        if st == S.OK then
            new = tonumber(i64_out[0])
        elseif st ~= S.E_NOT_A_COUNTER and st ~= S.E_OVERFLOW then
            return nil, status_error(st)
        end
    end
    if new == nil then
        new, err = incr_cas(self, key, value, init, init_ttl_ms)
        if new == nil then
            return nil, err
        end
    end
    if init == nil then
        return new
    end
    return new, nil, false
end

------------------------------------------------------------------------------------
-- TTLs, flush, sizes
------------------------------------------------------------------------------------

function mt.ttl(self, key)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    local st = call(self, lib.larder_try_ttl, lib.larder_ttl, self.c, key, #key, i64_out)
    if st == S.MISS then
        return nil, "not found"
    elseif st ~= S.OK then
        return nil, status_error(st)
    end
    local ms = tonumber(i64_out[0])
    if ms < 0 then
        return 0 -- no expiry, as the dict says it
    end
    return ms / 1000
end

function mt.expire(self, key, exptime)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    if exptime == nil then
        return nil, "bad \"exptime\" argument"
    end
    local ttl_ms
    ttl_ms, err = to_ms(exptime, "exptime")
    if not ttl_ms then
        return nil, err
    end
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    local st = call(self, lib.larder_try_touch, lib.larder_touch, self.c, key, #key, ttl_ms)
    if st == S.MISS then
        return nil, "not found"
    elseif st ~= S.OK then
        return nil, status_error(st)
    end
    return true
end

local stats_box = ffi_new("struct larder_stats")

local function read_stats(self)
    stats_box.struct_size = ffi.sizeof(stats_box)
    local st = tonumber(lib.larder_stats(self.c, stats_box))
    if st ~= S.OK then
        return nil, status_error(st)
    end
    return stats_box
end

-- Removes every entry (the dict marks them expired, so its get_stale still sees them
-- until they are reused; here they are gone). Returns nothing, as the dict. Clears
-- shard by shard, each without waiting for its lock (larder_try_clear_shard); a busy
-- shard is waited for as any call (see "Waiting"): nil, "timeout" or nil, "busy"
-- then, the shards before it cleared, the rest not.
function mt.flush_all(self)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    local s
    s, err = read_stats(self)
    if not s then
        return nil, err
    end
    local c = self.c
    for shard = 0, tonumber(s.shard_count) - 1 do
        local st = tonumber(lib.larder_try_clear_shard(c, shard, nil))
        if st == S.E_WOULD_BLOCK then
            local how = how_to_wait()
            if how == "wait" then
                st = tonumber(lib.larder_clear(c, nil))
                if st ~= S.OK then
                    return nil, status_error(st)
                end
                return
            elseif how == "sleep" then
                st = sleep_retry(clock() + self.lock_timeout, lib.larder_try_clear_shard, c,
                                 shard, nil)
            end
        end
        if st == S.E_INVALID_ARGUMENT then
            -- The file was replaced meanwhile by one with fewer shards: none is left.
            break
        elseif st ~= S.OK then
            return nil, status_error(st)
        end
    end
end

-- The size of the cache file in bytes (the dict: its zone's size).
function mt.capacity(self)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    local s
    s, err = read_stats(self)
    if not s then
        return nil, err
    end
    return tonumber(s.file_size)
end

-- Free bytes in the cache's logs (the dict: its free pages, in bytes).
function mt.free_space(self)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    local s
    s, err = read_stats(self)
    if not s then
        return nil, err
    end
    return tonumber(s.bytes_free)
end

local STATS_FIELDS = {
    "entries", "bytes_live", "bytes_used", "bytes_free", "file_size", "shard_count",
    "hits", "misses", "stale_hits", "inserts", "updates", "removals", "evictions",
    "index_evictions", "bytes_written", "bytes_moved", "expirations", "lock_timeouts",
    "recoveries", "repair_dropped", "fills", "fill_timeouts", "fill_handovers",
    "fills_fenced", "locks",
}

-- larder's counters of the whole cache, as a table of numbers (not in the dict).
function mt.stats(self)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    local s
    s, err = read_stats(self)
    if not s then
        return nil, err
    end
    local t = {}
    for _, f in ipairs(STATS_FIELDS) do
        t[f] = tonumber(s[f])
    end
    return t
end

------------------------------------------------------------------------------------
-- What the dict has and larder does not: present, answering nil, "not supported".
------------------------------------------------------------------------------------

local function not_supported()
    return nil, "not supported"
end

mt.get_keys = not_supported
mt.flush_expired = not_supported
mt.lpush = not_supported
mt.rpush = not_supported
mt.lpop = not_supported
mt.rpop = not_supported
mt.llen = not_supported

------------------------------------------------------------------------------------
-- Single flight: get_or_fill
------------------------------------------------------------------------------------

local function abandon(fill)
    lib.larder_fill_abandon(fill)
end

-- Completes the fill (a cdata with `abandon` as its finalizer) with p, n: the status
-- of larder_fill_try_complete, waited for as any call (see "Waiting"). On E_TIMEOUT
-- or E_WOULD_BLOCK the fill is abandoned here; otherwise larder ended it.
local function complete(self, fill, p, n, ttl_ms)
    ffi_gc(fill, nil)
    local st = tonumber(lib.larder_fill_try_complete(fill, p, n, ttl_ms))
    if st ~= S.E_WOULD_BLOCK then
        return st
    end
    local how = how_to_wait()
    if how == "wait" then
        return tonumber(lib.larder_fill_complete(fill, p, n, ttl_ms))
    elseif how == "fail" then
        lib.larder_fill_abandon(fill)
        return st
    end
    -- The value must outlive the sleeps; the fill is given up if this coroutine dies.
    local value = type(p) == "string" and p or ffi_str(p, n)
    ffi_gc(fill, abandon)
    local deadline = clock() + self.lock_timeout
    local pause = SLEEP_FIRST
    while true do
        local left = deadline - clock()
        if left <= 0 then
            ffi_gc(fill, nil)
            lib.larder_fill_abandon(fill)
            return S.E_TIMEOUT
        end
        ngx.sleep(math_min(pause, left))
        pause = math_min(pause * 2, SLEEP_MAX)
        ffi_gc(fill, nil)
        st = tonumber(lib.larder_fill_try_complete(fill, value, n, ttl_ms))
        if st ~= S.E_WOULD_BLOCK then
            return st
        end
        ffi_gc(fill, abandon)
    end
end

-- value, err, how: the value for key, computed by fn(...) and stored with ttl seconds
-- when missing, by one caller at a time across every worker and process of the cache
-- (the others wait for it, yielding, up to the fill timeout; an expired value is
-- served at once while another caller refreshes it).
--   how: "hit" (found fresh), "stale" (an expired value, another caller is refreshing
--   it), "filled" (fn ran here and its value was stored), "fenced" (fn ran here but the
--   key was revoked meanwhile by a delete/set/flush_all: its value is returned to this
--   caller and not stored).
-- fn returns the value (a string, or in the normal mode a number or boolean too), or
-- nil and an error: then nothing is stored, the fill is handed to the next waiter, and
-- get_or_fill returns nil, err. An error raised by fn is caught (the fill is given up
-- the same way) and returned as nil, err.
-- fn may yield (cosockets, ngx.sleep): the fill belongs to the worker's thread, which
-- every coroutine of the worker shares. If the request is torn down while fn yields,
-- the fill is given up when the Lua garbage collector frees its handle; until then the
-- key's other callers wait (at most the fill timeout each). fn must not call
-- get_or_fill itself: keys share 256 fill slots, so that may wait for itself.
-- Waiting (for a lock, or for another process's fill) follows the rules of "Waiting"
-- above, with the fill timeout as the deadline of the wait for another's fill: "busy"
-- in phases that cannot yield, "timeout" past the deadline. Storing the computed
-- value waits for the shard lock the same way, up to the lock timeout; if it cannot,
-- the fill is given up (the next waiter computes) and get_or_fill returns nil, "timeout"
-- (or nil, "busy").
function mt.get_or_fill(self, key, fn, ttl, ...)
    local err
    self, err = check_self(self)
    if not self then
        return nil, err
    end
    key, err = check_key(self, key)
    if not key then
        return nil, err
    end
    if type(fn) ~= "function" and not (type(fn) == "table" and getmetatable(fn)
                                        and getmetatable(fn).__call) then
        return nil, "bad \"fn\" argument"
    end
    local ttl_ms
    ttl_ms, err = to_ms(ttl, "ttl")
    if not ttl_ms then
        return nil, err
    end

    fill_out[0] = nil
    local st = read_into(lib.larder_fill_try_begin, self.c, key, fill_out)
    if st == S.E_WOULD_BLOCK then
        local how = how_to_wait()
        if how == "wait" then
            st = read_into(lib.larder_fill_begin, self.c, key, fill_out)
        elseif how == "fail" then
            return nil, "busy"
        else
            st = sleep_retry(clock() + self.fill_timeout, read_into,
                             lib.larder_fill_try_begin, self.c, key, fill_out)
        end
    end

    if st == S.OK or st == S.STALE then
        local val, flags = read_value(self)
        if val == nil then
            return nil, flags
        end
        return val, nil, st == S.OK and "hit" or "stale"
    elseif st ~= S.FILL then
        return nil, status_error(st)
    end

    -- This caller holds the fill. Whatever happens to this coroutine from here, the
    -- fill ends: completed, abandoned below, or abandoned by the collector.
    local fill = ffi_gc(fill_out[0], abandon)
    fill_out[0] = nil
    local ok, val, ferr = pcall(fn, ...)
    if not ok or val == nil then
        ffi_gc(fill, nil)
        lib.larder_fill_abandon(fill)
        if not ok then
            return nil, "fn failed: " .. tostring(val)
        end
        return nil, ferr or "fn returned nil"
    end
    local p, n = value_bytes(self, val, 0)
    if not p then
        ffi_gc(fill, nil)
        lib.larder_fill_abandon(fill)
        return nil, n
    end
    st = complete(self, fill, p, n, ttl_ms)
    if st == S.OK then
        return val, nil, "filled"
    elseif st == S.FENCED then
        return val, nil, "fenced"
    end
    return nil, status_error(st)
end

------------------------------------------------------------------------------------
-- open
------------------------------------------------------------------------------------

local DEFAULT_MAX_KEY_LEN = 256
local DEFAULT_FILL_TIMEOUT_MS = 5000
local DEFAULT_LOCK_TIMEOUT_MS = 500
local NUMERIC_OPTIONS = {
    "capacity", "max_key_len", "max_value_len", "shards", "lock_timeout_ms",
    "fill_timeout_ms", "mode",
}

local MAX_ALLOW_UIDS = 4 -- the size of larder_options.allow_uids
local UINT32_MAX = 4294967295

-- The largest value of each numeric option: its larder_options field's (uint32_t), or
-- 2^53 for the uint64_t ones (beyond it a Lua number no longer counts by one).
local OPTION_MAX = {
    capacity = EXACT, max_key_len = UINT32_MAX, max_value_len = UINT32_MAX,
    shards = UINT32_MAX, lock_timeout_ms = EXACT, fill_timeout_ms = EXACT,
    mode = UINT32_MAX,
}

local function is_uint32(v)
    return type(v) == "number" and v >= 0 and v <= UINT32_MAX and v == math_floor(v)
end

-- The uids of opts.allow_uids, sorted (one id for one set), or nil, err.
local function allowed_uids(list)
    if list == nil then
        return {}
    end
    local bad = 'bad "allow_uids" option: a list of at most ' .. MAX_ALLOW_UIDS .. " uids"
    if type(list) ~= "table" then
        return nil, bad
    end
    local n = 0
    for _ in pairs(list) do
        n = n + 1
    end
    if n ~= #list or n > MAX_ALLOW_UIDS then
        return nil, bad
    end
    local uids = {}
    for i = 1, n do
        if not is_uint32(list[i]) then
            return nil, bad
        end
        uids[i] = list[i]
    end
    table.sort(uids)
    return uids
end

-- The open dicts of this Lua VM, by name and options: open() again returns the same
-- object (larder's registry would return the same handle too, at a small cost).
local opened = {}

-- dict, or nil, err. name: a bare name (a file in /dev/shm) or a path on a tmpfs.
-- opts (all optional): capacity, max_key_len, max_value_len, shards (creation
-- parameters, fixed in the file), lock_timeout_ms, fill_timeout_ms, mode (e.g.
-- tonumber("660", 8)), group (the file's gid at creation; else the worker's group),
-- allow_uids (a list of at most 4 uids whose files are accepted besides the worker's
-- own), attach_only, raw (values byte for byte, no type or flags), library (the path
-- of liblarder.so; else env LARDER_LIBRARY; else ffi.load("larder")).
function _M.open(name, opts)
    if type(name) ~= "string" or name == "" then
        return nil, "bad \"name\" argument"
    end
    if opts ~= nil and type(opts) ~= "table" then
        return nil, "bad \"opts\" argument"
    end
    opts = opts or {}
    local loaded, err = load_library(opts.library)
    if not loaded then
        return nil, err
    end
    if opts.group ~= nil and not is_uint32(opts.group) then
        return nil, 'bad "group" option'
    end
    local uids, uids_err = allowed_uids(opts.allow_uids)
    if not uids then
        return nil, uids_err
    end
    local id = { name, opts.raw and "raw" or "typed", opts.attach_only and "attach" or "",
                 tostring(opts.group), table.concat(uids, ",") }
    for _, f in ipairs(NUMERIC_OPTIONS) do
        local v = opts[f]
        if v ~= nil then
            v = tonumber(v)
            -- NaN fails v == floor(v); an infinity fails the maximum.
            if not v or v < 0 or v > OPTION_MAX[f] or v ~= math_floor(v) then
                return nil, "bad \"" .. f .. "\" option"
            end
        end
        id[#id + 1] = tostring(v or 0)
    end
    id = table.concat(id, "\0")
    local dict = opened[id]
    if dict then
        return dict
    end

    local o = ffi_new("larder_options")
    lib.larder_options_init(o)
    for _, f in ipairs(NUMERIC_OPTIONS) do
        if opts[f] then
            o[f] = tonumber(opts[f])
        end
    end
    o.attach_only = opts.attach_only and 1 or 0
    if opts.group ~= nil then
        o.group = opts.group
        o.has_group = 1
    end
    for i, uid in ipairs(uids) do
        o.allow_uids[i - 1] = uid
    end
    o.allow_uids_count = #uids
    local out = ffi_new("larder_cache *[1]")
    local st = tonumber(lib.larder_open(name, o, out))
    if st ~= S.OK then
        return nil, status_error(st)
    end
    local max_key_len = tonumber(opts.max_key_len) or 0
    if max_key_len == 0 then
        -- attach_only takes the file's limit, which this module does not know: larder
        -- itself refuses a longer key ("value too large").
        max_key_len = opts.attach_only and 65535 or DEFAULT_MAX_KEY_LEN
    end
    dict = setmetatable({
        c = ffi_gc(out[0], lib.larder_close),
        name = name,
        raw = opts.raw and true or false,
        max_key_len = max_key_len,
        fill_timeout = (tonumber(opts.fill_timeout_ms) or 0) > 0
                       and tonumber(opts.fill_timeout_ms) / 1000
                       or DEFAULT_FILL_TIMEOUT_MS / 1000,
        lock_timeout = (tonumber(opts.lock_timeout_ms) or 0) > 0
                       and tonumber(opts.lock_timeout_ms) / 1000
                       or DEFAULT_LOCK_TIMEOUT_MS / 1000,
    }, mt)
    opened[id] = dict
    return dict
end

-- Removes the cache file `name` (processes that have it open notice and follow).
function _M.unlink(name, library)
    if type(name) ~= "string" or name == "" then
        return nil, "bad \"name\" argument"
    end
    local loaded, err = load_library(library)
    if not loaded then
        return nil, err
    end
    local st = tonumber(lib.larder_unlink(name))
    if st ~= S.OK then
        return nil, status_error(st)
    end
    return true
end

return _M
