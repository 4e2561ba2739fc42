/*
 * cache_redis_bench.c - the Redis tier's lookup latency: p50/p99/p99.9 of an
 * MGET of 1 key and of 64 keys (384-float vectors, all hits), one lookup at
 * a time, from cache_redis_mget to its callback, through a libevent loop and
 * a redis-server on a unix socket that the benchmark starts in a temp dir
 * (Debian's redis-server package). Not a test: prints numbers.
 *   tests/bench/cache_redis_bench                       # 20,000 lookups each
 *   CACHE_REDIS_BENCH_LOOKUPS=5000 tests/bench/cache_redis_bench
 */
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache.h"
#include "cache_redis.h"
#include "log.h"
#include "util.h"

#define DIM 384
#define KEYS 64

static struct event_base *base;
static bool done;
static size_t hits;

static void
on_done(const struct cache_redis_result *res, size_t n, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < n; i++) {
        hits += res[i].vec != NULL;
    }
    done = true;
}

static void
run_until_done(void)
{
    while (!done) {
        event_base_loop(base, EVLOOP_ONCE);
    }
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool
socket_answers(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    bool ok;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

static void
measure(struct cache_redis *r, const struct cache_key *keys, size_t n, unsigned lookups)
{
    uint64_t *us = xmalloc(lookups * sizeof(*us));
    struct cache_redis_op *op;

    hits = 0;
    for (unsigned i = 0; i < lookups; i++) {
        uint64_t t0 = util_mono_us();
        done = false;
        if (cache_redis_mget(r, keys, n, on_done, NULL, &op) != 0) {
            fatal("cache_redis_bench: lookup %u was not sent", i);
        }
        run_until_done();
        us[i] = util_mono_us() - t0;
    }
    if (hits != (size_t)lookups * n) {
        fatal("cache_redis_bench: %zu hits of %zu", hits, (size_t)lookups * n);
    }
    qsort(us, lookups, sizeof(*us), cmp_u64);
    printf("MGET of %2zu key(s), %u lookups: p50 %4llu us  p99 %4llu us  p99.9 %4llu us  max %llu us\n",
           n, lookups, (unsigned long long)us[lookups / 2],
           (unsigned long long)us[(size_t)(lookups * 0.99)],
           (unsigned long long)us[(size_t)(lookups * 0.999)],
           (unsigned long long)us[lookups - 1]);
    free(us);
}

int
main(void)
{
    char dir[] = "/tmp/akosha-redis-bench-XXXXXX";
    char sock[128], addr[160], logpath[160];
    const char *env = getenv("CACHE_REDIS_BENCH_LOOKUPS");
    unsigned lookups = env != NULL ? (unsigned)atoi(env) : 20000;
    struct cache_redis_settings s;
    struct cache_redis *r;
    struct cache_key keys[KEYS];
    float vec[DIM];
    const char *cause = NULL;
    uint64_t deadline;
    pid_t pid;

    if (lookups < 100) {
        lookups = 100;
    }
    signal(SIGPIPE, SIG_IGN);
    if (mkdtemp(dir) == NULL) {
        fatal("mkdtemp failed");
    }
    snprintf(sock, sizeof(sock), "%s/redis.sock", dir);
    snprintf(addr, sizeof(addr), "unix:%s", sock);
    snprintf(logpath, sizeof(logpath), "%s/redis.log", dir);
    pid = fork();
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", dir, (char *)NULL);
        _exit(127);
    }
    deadline = util_mono_ms() + 10000;
    while (!socket_answers(sock)) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid || util_mono_ms() > deadline) {
            fatal("redis-server did not start; on Debian: apt-get install redis-server");
        }
        usleep(5000);
    }

    for (size_t i = 0; i < DIM; i++) {
        vec[i] = (float)i / DIM;
    }
    for (size_t k = 0; k < KEYS; k++) {
        memset(&keys[k], 0, sizeof(keys[k]));
        keys[k].b[0] = (unsigned char)k;
        keys[k].b[1] = 0x5e;
    }
    base = event_base_new();
    memset(&s, 0, sizeof(s));
    s.address = addr;
    s.timeout_ms = 1000; /* measure Redis, not the timeout */
    r = cache_redis_new(base, &s, &cause);
    if (r == NULL) {
        fatal("cache_redis_new: %s", cause);
    }
    while (cache_redis_mget(r, keys, 1, on_done, NULL, &(struct cache_redis_op *){NULL}) != 0) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    done = false;
    run_until_done();

    for (size_t k = 0; k < KEYS; k++) {
        cache_redis_store(r, &keys[k], vec, DIM, (uint64_t)util_wall_ms(), 600);
    }
    {
        struct cache_redis_stats st;
        do {
            event_base_loop(base, EVLOOP_ONCE);
            cache_redis_stats(r, &st);
        } while (st.pending_stores != 0);
    }

    measure(r, keys, 1, lookups / 10); /* warm-up */
    measure(r, keys, 1, lookups);
    measure(r, keys, KEYS, lookups);

    cache_redis_free(r);
    event_base_free(base);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    unlink(sock);
    unlink(logpath);
    rmdir(dir);
    return 0;
}
