/*
 * Exercises every call of larder.h from C: argument checks, buffers, every outcome,
 * fills across processes (a waiter, a revocation, a SIGKILLed filler), fork and threads.
 *
 * Usage: abi_test DIR   (DIR: an empty directory of its own; caches are made in it)
 * Prints one line per section and "all N checks passed"; exits 1 on any failure.
 * Every wait has a deadline: a child that does not answer in time is killed.
 */
#define _GNU_SOURCE
#include "larder.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(larder_options) == 88, "larder_options layout");
_Static_assert(offsetof(larder_options, attach_only) == 52, "larder_options layout");
_Static_assert(offsetof(larder_options, group) == 56, "larder_options layout");
_Static_assert(offsetof(larder_options, allow_uids) == 64, "larder_options layout");
_Static_assert(offsetof(larder_options, allow_uids_count) == 80, "larder_options layout");
_Static_assert(sizeof(struct larder_stats) == 208, "larder_stats layout");
_Static_assert(offsetof(struct larder_stats, locks) == 200, "larder_stats layout");
_Static_assert(sizeof(larder_version) == 24, "larder_version layout");
_Static_assert(sizeof(larder_ticket) == 32, "larder_ticket layout");

/* How long any wait in this program may last. */
#define DEADLINE_MS 20000

static int checks;
static int failures;
static const char *dir;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "[%d] %s:%d: CHECK failed: %s (last error: %s)\n",       \
                    (int)getpid(), __FILE__, __LINE__, #cond, larder_last_error());  \
        }                                                                            \
    } while (0)

/* A call's status must be `want`. */
#define EXPECT(want, call)                                                           \
    do {                                                                             \
        larder_status got_ = (call);                                                 \
        checks++;                                                                    \
        if (got_ != (want)) {                                                        \
            failures++;                                                              \
            fprintf(stderr, "[%d] %s:%d: %s gave %d (%s), expected %s; last error: %s\n", \
                    (int)getpid(), __FILE__, __LINE__, #call, (int)got_,             \
                    larder_strerror(got_), #want, larder_last_error());              \
        }                                                                            \
    } while (0)

#define K(s) (s), (sizeof(s) - 1)

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void path_of(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

/* Waits (up to the deadline) for child `pid`; its exit code, or -1 (killed by us, or by a
   signal: then *sig holds it when sig is not NULL). */
static int wait_child(pid_t pid, int *sig) {
    long long end = now_ms() + DEADLINE_MS;
    for (;;) {
        int status = 0;
        pid_t rc = waitpid(pid, &status, WNOHANG);
        if (rc == pid) {
            if (WIFEXITED(status)) return WEXITSTATUS(status);
            if (sig && WIFSIGNALED(status)) *sig = WTERMSIG(status);
            return -1;
        }
        if (rc < 0 || now_ms() > end) {
            fprintf(stderr, "child %d did not finish in time\n", (int)pid);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        pause_ms(2);
    }
}

/* Reads one byte from fd, up to the deadline; 1 if one came. */
static int read_byte(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    char c;
    if (poll(&p, 1, DEADLINE_MS) != 1) return 0;
    return read(fd, &c, 1) == 1;
}

static void write_byte(int fd) {
    char c = 'x';
    if (write(fd, &c, 1) != 1) failures++;
}

static larder_stats_t stats_of(larder_cache *c) {
    struct larder_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (larder_stats(c, &s) != LARDER_OK) failures++;
    return s;
}

static larder_cache *open_small(const char *name) {
    char path[4096];
    larder_options o;
    larder_cache *c = NULL;
    path_of(path, sizeof path, name);
    larder_options_init(&o);
    o.capacity = 4 << 20;
    o.max_key_len = 64;
    o.max_value_len = 4096;
    o.fill_timeout_ms = DEADLINE_MS;
    EXPECT(LARDER_OK, larder_open(path, &o, &c));
    return c;
}

static void test_open(void) {
    char path[4096], path2[4096];
    larder_options o, other;
    larder_cache *c = NULL, *again = NULL, *third = (larder_cache *)&o;

    larder_options_init(NULL); /* a no-op */
    larder_options_init(&o);
    CHECK(o.struct_size == sizeof o);
    CHECK(o.capacity > 0 && o.max_key_len > 0 && o.mode == 0600 && o.attach_only == 0);
    o.capacity = 4 << 20;
    path_of(path, sizeof path, "open");

    EXPECT(LARDER_E_NULL, larder_open(NULL, &o, &c));
    CHECK(c == NULL);
    EXPECT(LARDER_E_NULL, larder_open(path, &o, NULL));
    EXPECT(LARDER_E_INVALID_NAME, larder_open("not a name", &o, &third));
    CHECK(third == NULL); /* a failed open leaves NULL */
    CHECK(strstr(larder_last_error(), "not a name") != NULL);

    /* attach_only to nothing: NOT_FOUND, naming the file and the remedy */
    other = o;
    other.attach_only = 1;
    EXPECT(LARDER_E_NOT_FOUND, larder_open(path, &other, &c));
    CHECK(strstr(larder_last_error(), path) != NULL);
    CHECK(strstr(larder_last_error(), "attach_only") != NULL);

    /* options the core refuses */
    other = o;
    other.mode = 0666; /* world-writable */
    EXPECT(LARDER_E_INVALID_OPTIONS, larder_open(path, &other, &c));
    CHECK(c == NULL);
    other = o;
    other.capacity = 4096; /* no room for a shard */
    EXPECT(LARDER_E_INVALID_OPTIONS, larder_open(path, &other, &c));

    /* struct_size: smaller than the first layout, or larger with unknown fields set */
    other = o;
    other.struct_size = 8;
    EXPECT(LARDER_E_INVALID_ARGUMENT, larder_open(path, &other, &c));
    other.struct_size = offsetof(larder_options, attach_only) + 3;
    EXPECT(LARDER_E_INVALID_ARGUMENT, larder_open(path, &other, &c));
    CHECK(strstr(larder_last_error(), "struct_size") != NULL);
    {
        struct { larder_options o; uint64_t newer; } big;
        memset(&big, 0, sizeof big);
        big.o = o;
        big.o.struct_size = sizeof big;
        big.newer = 1;
        EXPECT(LARDER_E_INVALID_ARGUMENT, larder_open(path, &big.o, &c));
        big.newer = 0; /* zeroed unknown fields are fine */
        EXPECT(LARDER_OK, larder_open(path, &big.o, &c));
        larder_close(c);
    }

    /* the same name and options: the same handle; other options: another */
    EXPECT(LARDER_OK, larder_open(path, &o, &c));
    EXPECT(LARDER_OK, larder_open(path, &o, &again));
    CHECK(c != NULL && c == again);
    other = o;
    other.lock_timeout_ms = 123;
    EXPECT(LARDER_OK, larder_open(path, &other, &third));
    CHECK(third != NULL && third != c);
    /* defaults spelled out are the defaults */
    {
        larder_options zeros;
        larder_cache *z = NULL;
        memset(&zeros, 0, sizeof zeros);
        zeros.struct_size = sizeof zeros;
        zeros.capacity = 4 << 20;
        EXPECT(LARDER_OK, larder_open(path, &zeros, &z));
        CHECK(z == c);
        larder_close(z);
    }
    EXPECT(LARDER_OK, larder_set(c, K("k"), K("v"), 0));
    larder_close(again);
    /* still open through the first reference */
    {
        char buf[8];
        size_t len = 0;
        EXPECT(LARDER_OK, larder_get(c, K("k"), buf, sizeof buf, &len));
        CHECK(len == 1 && buf[0] == 'v');
    }
    larder_close(c);
    larder_close(third);
    larder_close(NULL); /* a no-op */

    /* a creation parameter that differs: INCOMPATIBLE (the file is there) */
    other = o;
    other.capacity = 8 << 20;
    EXPECT(LARDER_E_INCOMPATIBLE, larder_open(path, &other, &c));
    /* attach_only takes the file's own parameters */
    other.attach_only = 1;
    EXPECT(LARDER_OK, larder_open(path, &other, &c));
    larder_close(c);

    /* one file, one handle: a relative path, and a path through a symlinked directory */
    {
        char cwd[4096], link[4096], via_link[4096], canon[4096];
        larder_cache *rel = NULL, *abs_ = NULL, *linked = NULL;
        path_of(canon, sizeof canon, "canon");
        path_of(link, sizeof link, "link");
        snprintf(via_link, sizeof via_link, "%s/link/canon", dir);
        CHECK(getcwd(cwd, sizeof cwd) != NULL);
        CHECK(symlink(dir, link) == 0);
        EXPECT(LARDER_OK, larder_open(canon, &o, &abs_));
        CHECK(chdir(dir) == 0);
        EXPECT(LARDER_OK, larder_open("./canon", &o, &rel));
        CHECK(chdir(cwd) == 0);
        EXPECT(LARDER_OK, larder_open(via_link, &o, &linked));
        CHECK(abs_ != NULL && rel == abs_ && linked == abs_);
        larder_close(rel);
        larder_close(linked);
        larder_close(abs_);
        EXPECT(LARDER_OK, larder_unlink(canon));
        CHECK(unlink(link) == 0);
    }

    /* names are bytes, not necessarily UTF-8 */
    snprintf(path2, sizeof path2, "%s/caf\xe9", dir);
    EXPECT(LARDER_OK, larder_open(path2, &o, &c));
    EXPECT(LARDER_OK, larder_set(c, K("k"), K("v"), 0));
    larder_close(c);
    EXPECT(LARDER_OK, larder_unlink(path2));
    EXPECT(LARDER_E_NULL, larder_unlink(NULL));
    EXPECT(LARDER_OK, larder_unlink(path));
}

/* The fields after the first layout (group, allowed uids): an older caller's smaller
   struct, their limits, and their part in which handle a re-open gets. */
static void test_options(void) {
    char path[4096];
    larder_options o, other;
    larder_cache *c = NULL, *again = NULL, *third = NULL;
    path_of(path, sizeof path, "options");
    larder_options_init(&o);
    o.capacity = 4 << 20;
    CHECK(o.has_group == 0 && o.allow_uids_count == 0 && o.reserved == 0);
    EXPECT(LARDER_OK, larder_open(path, &o, &c));

    /* a struct of the first layout (up to attach_only): the rest reads as 0, the default;
       bytes past its struct_size are never read */
    other = o;
    other.struct_size = offsetof(larder_options, attach_only) + sizeof other.attach_only;
    other.has_group = 1;
    other.group = 4321;
    other.allow_uids_count = 99;
    other.reserved = 7;
    EXPECT(LARDER_OK, larder_open(path, &other, &again));
    CHECK(again == c);
    larder_close(again);
    /* one that ends inside the new fields: the missing ones are 0 too */
    other.struct_size = offsetof(larder_options, allow_uids_count);
    other.allow_uids[0] = 0;
    EXPECT(LARDER_OK, larder_open(path, &other, &again));
    CHECK(again != NULL && again != c); /* the group is set, the count is 0 */
    larder_close(again);

    /* at most four allowed uids; reserved must be 0 */
    other = o;
    other.allow_uids_count = 5;
    EXPECT(LARDER_E_INVALID_ARGUMENT, larder_open(path, &other, &again));
    CHECK(again == NULL);
    CHECK(strstr(larder_last_error(), "allow_uids_count is 5") != NULL);
    other.allow_uids_count = 0xffffffffu;
    EXPECT(LARDER_E_INVALID_ARGUMENT, larder_open(path, &other, &again));
    other = o;
    other.reserved = 1;
    EXPECT(LARDER_E_INVALID_ARGUMENT, larder_open(path, &other, &again));
    CHECK(strstr(larder_last_error(), "reserved") != NULL);

    /* the permissions are part of the handle's identity: other allowed uids or another
       group give another handle; the same set in another order, or repeated, the same;
       uids past the count do not count */
    other = o;
    other.allow_uids[0] = 33;
    other.allow_uids[1] = 0;
    other.allow_uids[2] = 12345; /* past the count */
    other.allow_uids_count = 2;
    EXPECT(LARDER_OK, larder_open(path, &other, &again));
    CHECK(again != NULL && again != c);
    other.allow_uids[0] = 0;
    other.allow_uids[1] = 33;
    other.allow_uids[2] = 0;
    other.allow_uids_count = 3;
    EXPECT(LARDER_OK, larder_open(path, &other, &third));
    CHECK(third == again);
    larder_close(third);
    other.allow_uids[2] = 12345;
    EXPECT(LARDER_OK, larder_open(path, &other, &third));
    CHECK(third != NULL && third != again && third != c);
    larder_close(third);
    larder_close(again);
    other = o;
    other.has_group = 1;
    other.group = (uint32_t)getegid();
    EXPECT(LARDER_OK, larder_open(path, &other, &again));
    CHECK(again != NULL && again != c);
    larder_close(again);
    /* a group without has_group is no group */
    other.has_group = 0;
    EXPECT(LARDER_OK, larder_open(path, &other, &again));
    CHECK(again == c);
    larder_close(again);

    larder_close(c);
    EXPECT(LARDER_OK, larder_unlink(path));
}

static void test_basic(void) {
    larder_cache *c = open_small("basic");
    char buf[64], big[5000];
    size_t len = 99;
    int64_t n = 0, ttl = 0;
    uint64_t removed = 0;
    larder_stats_t s;

    /* NULL checks */
    EXPECT(LARDER_E_NULL, larder_get(NULL, K("a"), buf, sizeof buf, &len));
    EXPECT(LARDER_E_NULL, larder_get(c, NULL, 1, buf, sizeof buf, &len));
    EXPECT(LARDER_E_NULL, larder_get(c, K("a"), NULL, 1, &len));
    EXPECT(LARDER_E_NULL, larder_get(c, K("a"), buf, sizeof buf, NULL));
    EXPECT(LARDER_E_NULL, larder_set(c, K("a"), NULL, 1, 0));
    EXPECT(LARDER_E_NULL, larder_set(NULL, K("a"), K("v"), 0));
    EXPECT(LARDER_E_NULL, larder_incr(c, K("n"), 1, 0, 0, NULL));
    EXPECT(LARDER_E_NULL, larder_ttl(c, K("a"), NULL));
    EXPECT(LARDER_E_NULL, larder_stats(c, NULL));
    EXPECT(LARDER_E_NULL, larder_remove(NULL, K("a")));
    EXPECT(LARDER_E_NULL, larder_touch(NULL, K("a"), 0));
    EXPECT(LARDER_E_NULL, larder_clear(NULL, NULL));
    CHECK(strstr(larder_last_error(), "NULL") != NULL);

    /* get / set, miss, too small */
    EXPECT(LARDER_MISS, larder_get(c, K("a"), buf, sizeof buf, &len));
    CHECK(len == 0);
    EXPECT(LARDER_OK, larder_set(c, K("a"), K("hello"), 0));
    EXPECT(LARDER_TOO_SMALL, larder_get(c, K("a"), NULL, 0, &len));
    CHECK(len == 5);
    memset(buf, '#', sizeof buf);
    EXPECT(LARDER_TOO_SMALL, larder_get(c, K("a"), buf, 4, &len));
    CHECK(len == 5 && buf[0] == '#'); /* nothing copied */
    EXPECT(LARDER_OK, larder_get(c, K("a"), buf, 5, &len));
    CHECK(len == 5 && memcmp(buf, "hello", 5) == 0);
    /* binary keys and values, an empty value, an empty key */
    EXPECT(LARDER_OK, larder_set(c, "\0b\0", 3, "\0\1\2", 3, 0));
    EXPECT(LARDER_OK, larder_get(c, "\0b\0", 3, buf, sizeof buf, &len));
    CHECK(len == 3 && memcmp(buf, "\0\1\2", 3) == 0);
    EXPECT(LARDER_OK, larder_set(c, K("empty"), NULL, 0, 0));
    EXPECT(LARDER_OK, larder_get(c, K("empty"), NULL, 0, &len));
    CHECK(len == 0);

    /* limits: the cache's own errors */
    memset(big, 'x', sizeof big);
    EXPECT(LARDER_E_TOO_LARGE, larder_set(c, big, 65, K("v"), 0));
    EXPECT(LARDER_E_TOO_LARGE, larder_get(c, big, 65, buf, sizeof buf, &len));
    EXPECT(LARDER_E_TOO_LARGE, larder_set(c, K("big"), big, sizeof big, 0));
    CHECK(strstr(larder_last_error(), "max_value_len") != NULL);
    EXPECT(LARDER_E_INVALID_ARGUMENT, larder_set(c, big, (size_t)-1, K("v"), 0));

    /* add / replace / remove / touch / ttl */
    EXPECT(LARDER_EXISTS, larder_add(c, K("a"), K("other"), 0));
    EXPECT(LARDER_OK, larder_add(c, K("b"), K("bee"), 0));
    EXPECT(LARDER_OK, larder_replace(c, K("b"), K("bee2"), 0));
    EXPECT(LARDER_MISS, larder_replace(c, K("nope"), K("x"), 0));
    EXPECT(LARDER_MISS, larder_get(c, K("nope"), buf, sizeof buf, &len));
    EXPECT(LARDER_OK, larder_ttl(c, K("b"), &ttl));
    CHECK(ttl == -1);
    EXPECT(LARDER_OK, larder_touch(c, K("b"), 60000));
    EXPECT(LARDER_OK, larder_ttl(c, K("b"), &ttl));
    CHECK(ttl > 0 && ttl <= 60000);
    EXPECT(LARDER_MISS, larder_touch(c, K("nope"), 1000));
    EXPECT(LARDER_MISS, larder_ttl(c, K("nope"), &ttl));
    EXPECT(LARDER_OK, larder_remove(c, K("b")));
    EXPECT(LARDER_MISS, larder_remove(c, K("b")));
    /* a TTL beyond any clock is accepted */
    EXPECT(LARDER_OK, larder_set(c, K("forever"), K("v"), UINT64_MAX));
    EXPECT(LARDER_OK, larder_get(c, K("forever"), buf, sizeof buf, &len));

    /* the calls that never wait: with no lock held elsewhere, their siblings' outcomes */
    EXPECT(LARDER_E_NULL, larder_try_get(NULL, K("a"), buf, sizeof buf, &len));
    EXPECT(LARDER_E_NULL, larder_try_get(c, K("a"), buf, sizeof buf, NULL));
    EXPECT(LARDER_E_NULL, larder_try_set(c, NULL, 2, K("v"), 0));
    EXPECT(LARDER_E_NULL, larder_try_incr(c, K("tn"), 1, 0, 0, NULL));
    EXPECT(LARDER_MISS, larder_try_get(c, K("try"), buf, sizeof buf, &len));
    EXPECT(LARDER_OK, larder_try_add(c, K("try"), K("one"), 0));
    EXPECT(LARDER_EXISTS, larder_try_add(c, K("try"), K("two"), 0));
    EXPECT(LARDER_OK, larder_try_set(c, K("try"), K("three"), 0));
    EXPECT(LARDER_TOO_SMALL, larder_try_get(c, K("try"), buf, 2, &len));
    CHECK(len == 5);
    EXPECT(LARDER_OK, larder_try_get(c, K("try"), buf, sizeof buf, &len));
    CHECK(len == 5 && memcmp(buf, "three", 5) == 0);
    EXPECT(LARDER_OK, larder_try_touch(c, K("try"), 60000));
    EXPECT(LARDER_OK, larder_ttl(c, K("try"), &ttl));
    CHECK(ttl > 0 && ttl <= 60000);
    EXPECT(LARDER_MISS, larder_try_touch(c, K("none"), 60000));
    EXPECT(LARDER_OK, larder_try_incr(c, K("tn"), 2, 40, 0, &n));
    CHECK(n == 42);
    EXPECT(LARDER_E_NOT_A_COUNTER, larder_try_incr(c, K("try"), 1, 0, 0, &n));
    EXPECT(LARDER_OK, larder_try_remove(c, K("try")));
    EXPECT(LARDER_MISS, larder_try_remove(c, K("try")));
    EXPECT(LARDER_E_TOO_LARGE, larder_try_set(c, big, 65, K("v"), 0));
    EXPECT(LARDER_MISS, larder_try_replace(c, K("try"), K("r"), 0));
    EXPECT(LARDER_OK, larder_try_set(c, K("try"), K("four"), 0));
    EXPECT(LARDER_OK, larder_try_replace(c, K("try"), K("five"), 60000));
    EXPECT(LARDER_OK, larder_try_get_stale(c, K("try"), buf, sizeof buf, &len));
    CHECK(len == 4 && memcmp(buf, "five", 4) == 0);
    EXPECT(LARDER_TOO_SMALL, larder_try_get_stale(c, K("try"), buf, 2, &len));
    CHECK(len == 4);
    EXPECT(LARDER_MISS, larder_try_get_stale(c, K("none"), buf, sizeof buf, &len));
    EXPECT(LARDER_E_NULL, larder_try_ttl(c, K("try"), NULL));
    EXPECT(LARDER_OK, larder_try_ttl(c, K("try"), &ttl));
    CHECK(ttl > 0 && ttl <= 60000);
    EXPECT(LARDER_MISS, larder_try_ttl(c, K("none"), &ttl));
    {
        larder_version v1;
        EXPECT(LARDER_E_NULL, larder_try_gets(c, K("try"), buf, sizeof buf, &len, NULL));
        EXPECT(LARDER_OK, larder_try_gets(c, K("try"), buf, sizeof buf, &len, &v1));
        CHECK(len == 4 && memcmp(buf, "five", 4) == 0);
        EXPECT(LARDER_MISS, larder_try_gets(c, K("none"), buf, sizeof buf, &len, &v1));
        EXPECT(LARDER_OK, larder_try_gets(c, K("try"), buf, sizeof buf, &len, &v1));
        EXPECT(LARDER_E_NULL, larder_try_cas(c, K("try"), K("x"), 0, NULL));
        EXPECT(LARDER_OK, larder_try_cas(c, K("try"), K("six"), 0, &v1));
        EXPECT(LARDER_EXISTS, larder_try_cas(c, K("try"), K("seven"), 0, &v1)); /* moved */
        EXPECT(LARDER_OK, larder_try_get(c, K("try"), buf, sizeof buf, &len));
        CHECK(len == 3 && memcmp(buf, "six", 3) == 0);
        EXPECT(LARDER_OK, larder_try_remove(c, K("try")));
        EXPECT(LARDER_MISS, larder_try_cas(c, K("try"), K("eight"), 0, &v1)); /* gone */
    }
    {
        /* clearing shard by shard empties the cache; a shard past the last is refused */
        struct larder_stats st = stats_of(c);
        uint64_t shard, cleared = 0, one;
        EXPECT(LARDER_OK, larder_try_set(c, K("cl1"), K("v"), 0));
        EXPECT(LARDER_OK, larder_try_set(c, K("cl2"), K("v"), 0));
        st = stats_of(c);
        for (shard = 0; shard < st.shard_count; shard++) {
            EXPECT(LARDER_OK, larder_try_clear_shard(c, (uint32_t)shard, &one));
            cleared += one;
        }
        CHECK(cleared == st.entries && cleared >= 2);
        EXPECT(LARDER_OK, larder_try_clear_shard(c, 0, NULL));
        EXPECT(LARDER_E_INVALID_ARGUMENT,
               larder_try_clear_shard(c, (uint32_t)st.shard_count, &one));
        EXPECT(LARDER_E_NULL, larder_try_clear_shard(NULL, 0, &one));
        EXPECT(LARDER_MISS, larder_try_get(c, K("cl1"), buf, sizeof buf, &len));
        EXPECT(LARDER_MISS, larder_get(c, K("a"), buf, sizeof buf, &len));
        /* what the tests below read again */
        EXPECT(LARDER_OK, larder_set(c, K("a"), K("hello"), 0));
    }

    /* expiry and get_stale: poll (with a deadline) until the entry has expired */
    EXPECT(LARDER_OK, larder_set(c, K("short"), K("old"), 1));
    {
        long long end = now_ms() + DEADLINE_MS;
        while (larder_get(c, K("short"), buf, sizeof buf, &len) == LARDER_OK && now_ms() < end)
            pause_ms(1);
    }
    EXPECT(LARDER_MISS, larder_get(c, K("short"), buf, sizeof buf, &len));
    EXPECT(LARDER_STALE, larder_get_stale(c, K("short"), buf, sizeof buf, &len));
    CHECK(len == 3 && memcmp(buf, "old", 3) == 0);
    EXPECT(LARDER_TOO_SMALL, larder_get_stale(c, K("short"), buf, 2, &len));
    CHECK(len == 3);
    EXPECT(LARDER_OK, larder_get_stale(c, K("a"), buf, sizeof buf, &len));
    EXPECT(LARDER_MISS, larder_get_stale(c, K("nope"), buf, sizeof buf, &len));

    /* counters */
    EXPECT(LARDER_OK, larder_incr(c, K("n"), 5, 10, 0, &n));
    CHECK(n == 15);
    EXPECT(LARDER_OK, larder_incr(c, K("n"), -20, 0, 0, &n));
    CHECK(n == -5);
    EXPECT(LARDER_OK, larder_get(c, K("n"), buf, sizeof buf, &len));
    {
        int64_t le = -5; /* the stored form: 8 bytes little-endian (this host is LE) */
        CHECK(len == 8 && memcmp(buf, &le, 8) == 0);
    }
    EXPECT(LARDER_E_NOT_A_COUNTER, larder_incr(c, K("a"), 1, 0, 0, &n));
    EXPECT(LARDER_OK, larder_incr(c, K("max"), 0, INT64_MAX, 0, &n));
    EXPECT(LARDER_E_OVERFLOW, larder_incr(c, K("max"), 1, 0, 0, &n));
    CHECK(n == INT64_MAX);

    /* gets / cas */
    {
        larder_version v1, v2;
        EXPECT(LARDER_E_NULL, larder_gets(c, K("a"), buf, sizeof buf, &len, NULL));
        EXPECT(LARDER_OK, larder_gets(c, K("a"), buf, sizeof buf, &len, &v1));
        CHECK(len == 5);
        EXPECT(LARDER_E_NULL, larder_cas(c, K("a"), K("x"), 0, NULL));
        EXPECT(LARDER_OK, larder_cas(c, K("a"), K("cas1"), 0, &v1));
        EXPECT(LARDER_EXISTS, larder_cas(c, K("a"), K("cas2"), 0, &v1)); /* moved */
        EXPECT(LARDER_OK, larder_gets(c, K("a"), buf, sizeof buf, &len, &v2));
        CHECK(len == 4 && memcmp(buf, "cas1", 4) == 0);
        CHECK(memcmp(&v1, &v2, sizeof v1) != 0);
        EXPECT(LARDER_TOO_SMALL, larder_gets(c, K("a"), buf, 1, &len, &v2));
        EXPECT(LARDER_OK, larder_remove(c, K("a")));
        EXPECT(LARDER_MISS, larder_cas(c, K("a"), K("cas3"), 0, &v2)); /* gone */
        EXPECT(LARDER_MISS, larder_gets(c, K("a"), buf, sizeof buf, &len, &v2));
    }

    /* tickets */
    {
        larder_ticket t;
        EXPECT(LARDER_E_NULL, larder_ticket_take(c, K("t"), NULL));
        EXPECT(LARDER_OK, larder_ticket_take(c, K("t"), &t));
        EXPECT(LARDER_OK, larder_set_with_ticket(c, K("t"), K("v1"), 0, &t));
        EXPECT(LARDER_OK, larder_ticket_take(c, K("t"), &t));
        EXPECT(LARDER_MISS, larder_remove(c, K("t2"))); /* another key: no effect */
        EXPECT(LARDER_OK, larder_remove(c, K("t"))); /* revokes the ticket */
        EXPECT(LARDER_FENCED, larder_set_with_ticket(c, K("t"), K("v2"), 0, &t));
        EXPECT(LARDER_MISS, larder_get(c, K("t"), buf, sizeof buf, &len));
        EXPECT(LARDER_E_NULL, larder_set_with_ticket(c, K("t"), K("v"), 0, NULL));
    }

    /* stats, written up to struct_size */
    s = stats_of(c);
    CHECK(s.entries > 0 && s.hits > 0 && s.misses > 0 && s.shard_count > 0);
    CHECK(s.file_size > 0 && s.inserts > 0);
    {
        struct larder_stats head;
        memset(&head, 0xab, sizeof head);
        head.struct_size = 16; /* the header and `entries` only */
        EXPECT(LARDER_OK, larder_stats(c, &head));
        CHECK(head.struct_size == 16 && head.entries == s.entries);
        CHECK(head.bytes_live == 0xababababababababULL); /* untouched */
        head.struct_size = 4;
        EXPECT(LARDER_E_INVALID_ARGUMENT, larder_stats(c, &head));
    }

    /* clear */
    EXPECT(LARDER_OK, larder_clear(c, &removed));
    CHECK(removed > 0);
    EXPECT(LARDER_OK, larder_clear(c, NULL));
    EXPECT(LARDER_MISS, larder_get(c, K("n"), buf, sizeof buf, &len));
    larder_close(c);
}

static void test_errors(void) {
    int s;
    for (s = -5; s < 140; s++) CHECK(larder_strerror((larder_status)s) != NULL);
    CHECK(larder_strerror((larder_status)99999) != NULL);
    CHECK(strcmp(larder_strerror(LARDER_OK), larder_strerror(LARDER_E_NULL)) != 0);
    CHECK(larder_last_error() != NULL);
}

/* Fills in one process. */
static void test_fill_local(void) {
    larder_cache *c = open_small("fill_local");
    larder_fill *f = NULL, *g = (larder_fill *)&f;
    char buf[64];
    size_t len = 0;

    EXPECT(LARDER_E_NULL, larder_fill_begin(c, K("k"), buf, sizeof buf, &len, NULL));
    EXPECT(LARDER_E_NULL, larder_fill_begin(NULL, K("k"), buf, sizeof buf, &len, &g));
    CHECK(g == NULL);
    EXPECT(LARDER_E_NULL, larder_fill_complete(NULL, K("v"), 0));
    larder_fill_abandon(NULL); /* a no-op */

    EXPECT(LARDER_E_NULL, larder_fill_try_complete(NULL, K("v"), 0));
    EXPECT(LARDER_FILL, larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &f));
    CHECK(f != NULL);
    EXPECT(LARDER_OK, larder_fill_complete(f, K("computed"), 0));
    /* the non-waiting completion: stored, or fenced, and the fill ended either way */
    EXPECT(LARDER_FILL, larder_fill_try_begin(c, K("kt"), buf, sizeof buf, &len, &f));
    EXPECT(LARDER_OK, larder_fill_try_complete(f, K("tried"), 0));
    EXPECT(LARDER_OK, larder_get(c, K("kt"), buf, sizeof buf, &len));
    CHECK(len == 5 && memcmp(buf, "tried", 5) == 0);
    EXPECT(LARDER_OK, larder_remove(c, K("kt")));
    EXPECT(LARDER_FILL, larder_fill_try_begin(c, K("kt"), buf, sizeof buf, &len, &f));
    EXPECT(LARDER_MISS, larder_remove(c, K("kt")));
    EXPECT(LARDER_FENCED, larder_fill_try_complete(f, K("late"), 0));
    EXPECT(LARDER_FILL, larder_fill_try_begin(c, K("kt"), buf, sizeof buf, &len, &f));
    larder_fill_abandon(f);
    f = (larder_fill *)&g;
    EXPECT(LARDER_OK, larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &f));
    CHECK(f == NULL && len == 8 && memcmp(buf, "computed", 8) == 0);
    EXPECT(LARDER_TOO_SMALL, larder_fill_begin(c, K("k"), buf, 3, &len, &f));
    CHECK(f == NULL && len == 8);

    /* abandon: the next caller computes */
    EXPECT(LARDER_FILL, larder_fill_begin(c, K("k2"), buf, sizeof buf, &len, &f));
    larder_fill_abandon(f);
    EXPECT(LARDER_FILL, larder_fill_begin(c, K("k2"), buf, sizeof buf, &len, &f));
    /* a revocation in the same process fences it */
    EXPECT(LARDER_MISS, larder_remove(c, K("k2")));
    EXPECT(LARDER_FENCED, larder_fill_complete(f, K("late"), 0));
    EXPECT(LARDER_MISS, larder_get(c, K("k2"), buf, sizeof buf, &len));
    /* a value over the limit ends the fill all the same */
    {
        static char big[5000];
        EXPECT(LARDER_FILL, larder_fill_begin(c, K("k3"), buf, sizeof buf, &len, &f));
        EXPECT(LARDER_E_TOO_LARGE, larder_fill_complete(f, big, sizeof big, 0));
        EXPECT(LARDER_FILL, larder_fill_try_begin(c, K("k3"), buf, sizeof buf, &len, &f));
        larder_fill_abandon(f);
    }
    /* stale: served to others while the holder refreshes */
    EXPECT(LARDER_OK, larder_set(c, K("s"), K("old"), 1));
    {
        long long end = now_ms() + DEADLINE_MS;
        while (larder_get(c, K("s"), buf, sizeof buf, &len) == LARDER_OK && now_ms() < end)
            pause_ms(1);
    }
    EXPECT(LARDER_FILL, larder_fill_begin(c, K("s"), buf, sizeof buf, &len, &f));
    larder_close(c);
    larder_fill_abandon(f); /* a fill outlives its handle's close */
}

struct wrong_thread_arg {
    larder_fill *f;
    larder_status complete;
    int message_ok;
};

static void *finish_elsewhere(void *p) {
    struct wrong_thread_arg *a = p;
    a->complete = larder_fill_complete(a->f, K("x"), 0);
    larder_fill_abandon(a->f); /* nothing happens */
    a->message_ok = strstr(larder_last_error(), "another thread") != NULL;
    return NULL;
}

static void test_fill_wrong_thread(void) {
    larder_cache *c = open_small("fill_thread");
    larder_fill *f = NULL;
    char buf[16];
    size_t len;
    pthread_t t;
    struct wrong_thread_arg a;

    EXPECT(LARDER_FILL, larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &f));
    a.f = f;
    a.complete = LARDER_OK;
    a.message_ok = 0;
    CHECK(pthread_create(&t, NULL, finish_elsewhere, &a) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(a.complete == LARDER_E_WRONG_THREAD);
    CHECK(a.message_ok);
    /* still this thread's, still held */
    EXPECT(LARDER_OK, larder_fill_complete(f, K("mine"), 0));
    EXPECT(LARDER_OK, larder_get(c, K("k"), buf, sizeof buf, &len));
    CHECK(len == 4 && memcmp(buf, "mine", 4) == 0);
    larder_close(c);
}

/* A child waits on the parent's fill; a second child revokes the key mid-fill, so the
   parent's store is FENCED and the waiting child computes the value. Another child gets
   the stale value while the parent refreshes an expired one. */
static void test_fill_processes(void) {
    larder_cache *c = open_small("fill_proc");
    larder_fill *f = NULL;
    char buf[64];
    size_t len;
    int ready[2];
    pid_t waiter, revoker;
    larder_stats_t before, s;
    long long end;

    EXPECT(LARDER_FILL, larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &f));
    before = stats_of(c);
    CHECK(pipe(ready) == 0);
    fflush(NULL);
    waiter = fork();
    if (waiter == 0) {
        larder_fill *mine = NULL;
        int bad = 0;
        close(ready[0]);
        /* the parent's fill is not this process's */
        if (larder_fill_complete(f, K("no"), 0) != LARDER_E_WRONG_THREAD) bad |= 1;
        if (larder_fill_try_begin(c, K("k"), buf, sizeof buf, &len, &mine) !=
            LARDER_E_WOULD_BLOCK)
            bad |= 2;
        write_byte(ready[1]);
        /* waits for the parent's fill; FILL once it ended without a stored value */
        if (larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &mine) != LARDER_FILL) bad |= 4;
        if (larder_fill_complete(mine, K("child"), 0) != LARDER_OK) bad |= 8;
        if (bad) fprintf(stderr, "waiter: failures %d: %s\n", bad, larder_last_error());
        _exit(bad ? 10 + bad : 0);
    }
    close(ready[1]);
    CHECK(waiter > 0);
    CHECK(read_byte(ready[0]));
    close(ready[0]);
    /* the waiter counted its miss just before it waits on the fill slot */
    end = now_ms() + DEADLINE_MS;
    do {
        s = stats_of(c);
    } while (s.misses <= before.misses && now_ms() < end && (pause_ms(1), 1));
    CHECK(s.misses > before.misses);

    fflush(NULL);
    revoker = fork();
    if (revoker == 0) {
        /* a re-open in a child gives the inherited handle */
        larder_cache *again = NULL;
        char path[4096];
        larder_options o;
        int bad = 0;
        path_of(path, sizeof path, "fill_proc");
        larder_options_init(&o);
        o.capacity = 4 << 20;
        o.max_key_len = 64;
        o.max_value_len = 4096;
        o.fill_timeout_ms = DEADLINE_MS;
        if (larder_open(path, &o, &again) != LARDER_OK || again != c) bad |= 1;
        if (larder_remove(again, K("k")) != LARDER_MISS) bad |= 2; /* revokes */
        larder_close(again);
        _exit(bad ? 20 + bad : 0);
    }
    CHECK(wait_child(revoker, NULL) == 0);
    EXPECT(LARDER_FENCED, larder_fill_complete(f, K("parent"), 0));
    CHECK(wait_child(waiter, NULL) == 0);
    EXPECT(LARDER_OK, larder_get(c, K("k"), buf, sizeof buf, &len));
    CHECK(len == 5 && memcmp(buf, "child", 5) == 0);
    s = stats_of(c);
    CHECK(s.fills_fenced > before.fills_fenced);

    /* stale while another process refreshes */
    EXPECT(LARDER_OK, larder_set(c, K("st"), K("old"), 1));
    end = now_ms() + DEADLINE_MS;
    while (larder_get(c, K("st"), buf, sizeof buf, &len) == LARDER_OK && now_ms() < end)
        pause_ms(1);
    EXPECT(LARDER_FILL, larder_fill_begin(c, K("st"), buf, sizeof buf, &len, &f));
    fflush(NULL);
    waiter = fork();
    if (waiter == 0) {
        larder_fill *mine = NULL;
        larder_status st = larder_fill_begin(c, K("st"), buf, sizeof buf, &len, &mine);
        _exit(st == LARDER_STALE && mine == NULL && len == 3 && memcmp(buf, "old", 3) == 0
                  ? 0
                  : 30);
    }
    CHECK(wait_child(waiter, NULL) == 0);
    EXPECT(LARDER_OK, larder_fill_complete(f, K("new"), 0));
    EXPECT(LARDER_OK, larder_get(c, K("st"), buf, sizeof buf, &len));
    CHECK(len == 3 && memcmp(buf, "new", 3) == 0);
    larder_close(c);
}

/* A child SIGKILLed while it holds a fill: the next caller takes the fill over. */
static void test_fill_killed(void) {
    larder_cache *c = open_small("fill_kill");
    larder_fill *f = NULL;
    char buf[16];
    size_t len;
    int ready[2], never[2], sig = 0;
    pid_t child;
    larder_stats_t before = stats_of(c), s;

    CHECK(pipe(ready) == 0 && pipe(never) == 0);
    fflush(NULL);
    child = fork();
    if (child == 0) {
        larder_fill *mine = NULL;
        close(ready[0]);
        close(never[1]);
        if (larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &mine) != LARDER_FILL) _exit(40);
        write_byte(ready[1]);
        read_byte(never[0]); /* killed while waiting here (or gives up at the deadline) */
        _exit(41);
    }
    close(ready[1]);
    close(never[0]);
    CHECK(read_byte(ready[0]));
    kill(child, SIGKILL);
    CHECK(wait_child(child, &sig) == -1 && sig == SIGKILL);
    close(ready[0]);
    close(never[1]);
    EXPECT(LARDER_FILL, larder_fill_begin(c, K("k"), buf, sizeof buf, &len, &f));
    s = stats_of(c);
    CHECK(s.fill_handovers == before.fill_handovers + 1);
    EXPECT(LARDER_OK, larder_fill_complete(f, K("v"), 0));
    EXPECT(LARDER_OK, larder_get(c, K("k"), buf, sizeof buf, &len));
    larder_close(c);
}

/* Open in the parent, fork: the child uses the handle, re-opens it (the same handle),
   closes its references; the parent is unaffected. */
static void test_fork(void) {
    larder_cache *c = open_small("fork");
    char buf[16];
    size_t len;
    pid_t child;

    EXPECT(LARDER_OK, larder_set(c, K("from"), K("parent"), 0));
    fflush(NULL);
    child = fork();
    if (child == 0) {
        larder_cache *again = NULL;
        char path[4096];
        larder_options o;
        int bad = 0;
        if (larder_get(c, K("from"), buf, sizeof buf, &len) != LARDER_OK || len != 6) bad |= 1;
        path_of(path, sizeof path, "fork");
        larder_options_init(&o);
        o.capacity = 4 << 20;
        o.max_key_len = 64;
        o.max_value_len = 4096;
        o.fill_timeout_ms = DEADLINE_MS;
        if (larder_open(path, &o, &again) != LARDER_OK || again != c) bad |= 2;
        if (larder_set(again, K("child"), K("was here"), 0) != LARDER_OK) bad |= 4;
        larder_close(again);
        /* the inherited reference still works after the re-open's close */
        if (larder_get(c, K("child"), buf, sizeof buf, &len) != LARDER_OK) bad |= 8;
        larder_close(c); /* the child's copy of the parent's reference */
        _exit(bad ? 50 + bad : 0);
    }
    CHECK(wait_child(child, NULL) == 0);
    EXPECT(LARDER_OK, larder_get(c, K("child"), buf, sizeof buf, &len));
    CHECK(len == 8 && memcmp(buf, "was here", 8) == 0);
    EXPECT(LARDER_OK, larder_set(c, K("after"), K("fork"), 0));
    larder_close(c);
}

#define THREADS 4
#define ROUNDS 2000

struct shared_arg {
    larder_cache *c;
    int id;
    int bad;
};

static void *hammer(void *p) {
    struct shared_arg *a = p;
    char key[32], val[32], buf[32];
    size_t len;
    int64_t n;
    int i;
    for (i = 0; i < ROUNDS; i++) {
        int kl = snprintf(key, sizeof key, "t%d:%d", a->id, i % 50);
        int vl = snprintf(val, sizeof val, "v%d", i);
        if (larder_set(a->c, key, (size_t)kl, val, (size_t)vl, 0) != LARDER_OK) a->bad++;
        if (larder_get(a->c, key, (size_t)kl, buf, sizeof buf, &len) != LARDER_OK ||
            len != (size_t)vl || memcmp(buf, val, len) != 0)
            a->bad++;
        if (larder_incr(a->c, K("shared"), 1, 0, 0, &n) != LARDER_OK) a->bad++;
    }
    return NULL;
}

static void test_threads(void) {
    larder_cache *c = open_small("threads");
    pthread_t t[THREADS];
    struct shared_arg a[THREADS];
    int i;
    char buf[16];
    size_t len;
    int64_t total = 0;
    for (i = 0; i < THREADS; i++) {
        a[i].c = c;
        a[i].id = i;
        a[i].bad = 0;
        CHECK(pthread_create(&t[i], NULL, hammer, &a[i]) == 0);
    }
    for (i = 0; i < THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(a[i].bad == 0);
    }
    EXPECT(LARDER_OK, larder_get(c, K("shared"), buf, sizeof buf, &len));
    CHECK(len == 8);
    memcpy(&total, buf, 8);
    CHECK(total == (int64_t)THREADS * ROUNDS);
    larder_close(c);
}

/* Runs one section, and says whether its checks passed. */
static void run(const char *name, void (*section)(void)) {
    int before = failures;
    section();
    printf("%s: %s\n", name, failures == before ? "ok" : "FAILED");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    run("open", test_open);
    run("options", test_options);
    run("basic", test_basic);
    run("errors", test_errors);
    run("fill_local", test_fill_local);
    run("fill_wrong_thread", test_fill_wrong_thread);
    run("fill_processes", test_fill_processes);
    run("fill_killed", test_fill_killed);
    run("fork", test_fork);
    run("threads", test_threads);
    if (failures) {
        printf("%d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("all %d checks passed\n", checks);
    return 0;
}
