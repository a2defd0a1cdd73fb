/* The README's example: open (or create) a cache, store, read, count, close.
   Build: cc -std=c11 -I capi/include capi/examples/hello.c \
          -L target/release -l:liblarder.so -Wl,-rpath,$PWD/target/release -o hello */
#include "larder.h"

#include <stdio.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "hello-example"; /* /dev/shm/hello-example... */
    larder_options opts;
    larder_cache *cache = NULL;
    larder_status st;
    char buf[256];
    size_t len = 0;
    int64_t fails = 0;

    larder_options_init(&opts);
    opts.capacity = 8 << 20;
    st = larder_open(name, &opts, &cache);
    if (st != LARDER_OK) {
        fprintf(stderr, "open: %s: %s\n", larder_strerror(st), larder_last_error());
        return 1;
    }
    larder_set(cache, "token:abc", 9, "claims", 6, 300000); /* a 5-minute TTL */
    st = larder_get(cache, "token:abc", 9, buf, sizeof buf, &len);
    if (st == LARDER_OK) printf("token:abc = %.*s\n", (int)len, buf);
    else if (st == LARDER_TOO_SMALL) printf("token:abc needs %zu bytes\n", len);
    else if (st == LARDER_MISS) printf("token:abc: miss\n");
    else fprintf(stderr, "get: %s\n", larder_last_error());
    larder_incr(cache, "fail:alice", 10, 1, 0, 60000, &fails); /* a counter per minute */
    printf("fail:alice = %lld\n", (long long)fails);
    larder_close(cache);
    return 0;
}
