/*
 * larder.h: the C ABI of larder, a cache shared by many processes on one Linux host
 * through one memory-mapped file in /dev/shm (liblarder.so / liblarder.a).
 *
 * RETURNS. Every call but larder_options_init, larder_close, larder_fill_abandon,
 * larder_strerror and larder_last_error returns a larder_status: LARDER_OK (0), an
 * outcome below 100 (MISS, EXISTS, FENCED, TOO_SMALL, STALE, FILL), or an error >= 100.
 * On an error, larder_last_error() gives this thread's message: what happened, the
 * file's name, and what to do. The same error has the same status from every call.
 * The numbers are fixed by this header and never reused.
 *
 * OWNERSHIP.
 *  - A larder_cache comes from larder_open and is given back with larder_close, once
 *    per successful larder_open. Opening the same name with the same options again in
 *    a process returns the SAME handle with one more reference (no open, mmap or flock:
 *    cheap per request); the last larder_close unmaps it. Using a handle after its last
 *    close, or closing it more often than it was opened, is undefined (as free()).
 *  - A larder_fill comes from larder_fill_begin returning LARDER_FILL and is ended by
 *    exactly one larder_fill_complete or larder_fill_abandon, which free it.
 *  - Keys and values are raw bytes with lengths (no NUL terminator); the library never
 *    keeps a pointer the caller passed after the call returns. A value is copied into
 *    the caller's buffer: on LARDER_TOO_SMALL nothing is copied and *len holds the size
 *    needed (call again with a larger buffer; the value may have changed meanwhile).
 *  - Strings returned (larder_strerror, larder_last_error) belong to the library: never
 *    free them. larder_strerror's are static; larder_last_error's is valid until the
 *    next error on the same thread.
 *  - Names are NUL-terminated byte strings (not necessarily UTF-8): a bare name
 *    ([A-Za-z0-9._-], 1..200 bytes, not starting with '.') lives in /dev/shm; a name
 *    containing '/' is a path (under /dev/shm or any tmpfs directory).
 *
 * POINTERS. A required pointer that is NULL gives LARDER_E_NULL. key may be NULL only
 * when key_len == 0, val only when val_len == 0, buf only when cap == 0. A key or value
 * over the cache's limits gives LARDER_E_TOO_LARGE; nothing is stored.
 *
 * THREADS. A larder_cache may be used by any number of threads at once. A larder_fill
 * belongs to the thread that began it: only that thread completes or abandons it (from
 * another, LARDER_E_WRONG_THREAD, and the fill is left as it was). larder_last_error is
 * per thread.
 *
 * FORK. Handles survive fork: a child uses its parent's handles as they are, and a
 * re-open in the child returns the inherited handle. The child's references are its
 * own (close them in the child as usual; the parent is unaffected). The registry of
 * open handles never waits in a child for a parent's thread that held it at the moment
 * of fork (the child takes it over), and fork itself never waits for it. A fill the
 * parent held stays the parent's thread's (the child gets LARDER_E_WRONG_THREAD on it). A process killed while it holds a fill or a lock is
 * repaired by the others: the next caller takes the fill over (LARDER_FILL).
 *
 * PANICS. No panic crosses this boundary: a bug inside larder is LARDER_E_INTERNAL.
 *
 * FOR FFI LOADERS (PHP FFI::cdef, LuaJIT ffi.cdef): pass them the text between the two
 * marker comment lines below (BEGIN and END): plain C declarations only, no
 * preprocessor lines, macros, bitfields or bool.
 */
#ifndef LARDER_H
#define LARDER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* LARDER_FFI_BEGIN */

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

/* LARDER_FFI_END */

#ifdef __cplusplus
}
#endif

#endif /* LARDER_H */
