/* Rough per-call costs through the C ABI (means over many calls, one thread):
   a get hit (32-byte key, 256-byte value), a set, and a re-open + close of an open
   name (the registry's hit) against a first open + close (open, mmap, flock).
   Usage: bench DIR   (prints ns per call) */
#define _GNU_SOURCE
#include "larder.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    char path[4096], key[32], val[256], buf[512];
    larder_options o;
    larder_cache *c = NULL, *again = NULL;
    size_t len;
    int i, n = 1000000, opens = 2000;
    double t;
    if (argc != 2) return 2;
    snprintf(path, sizeof path, "%s/bench", argv[1]);
    larder_options_init(&o);
    o.capacity = 64 << 20;
    if (larder_open(path, &o, &c) != LARDER_OK) {
        fprintf(stderr, "%s\n", larder_last_error());
        return 1;
    }
    memset(key, 'k', sizeof key);
    memset(val, 'v', sizeof val);
    for (i = 0; i < 1000; i++) {
        memcpy(key, &i, sizeof i);
        larder_set(c, key, sizeof key, val, sizeof val, 0);
    }
    t = now_ns();
    for (i = 0; i < n; i++) {
        int k = i % 1000;
        memcpy(key, &k, sizeof k);
        if (larder_get(c, key, sizeof key, buf, sizeof buf, &len) != LARDER_OK) return 3;
    }
    printf("get hit: %.0f ns\n", (now_ns() - t) / n);
    t = now_ns();
    for (i = 0; i < n / 4; i++) {
        int k = i % 1000;
        memcpy(key, &k, sizeof k);
        if (larder_set(c, key, sizeof key, val, sizeof val, 0) != LARDER_OK) return 4;
    }
    printf("set: %.0f ns\n", (now_ns() - t) / (n / 4));
    t = now_ns();
    for (i = 0; i < opens * 50; i++) {
        if (larder_open(path, &o, &again) != LARDER_OK || again != c) return 5;
        larder_close(again);
    }
    printf("re-open + close of an open name: %.0f ns\n", (now_ns() - t) / (opens * 50));
    larder_close(c);
    t = now_ns();
    for (i = 0; i < opens; i++) {
        if (larder_open(path, &o, &again) != LARDER_OK) return 6;
        larder_close(again);
    }
    printf("first open + last close: %.0f ns\n", (now_ns() - t) / opens);
    return larder_unlink(path) == LARDER_OK ? 0 : 7;
}
