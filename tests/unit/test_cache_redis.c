/*
 * test_cache_redis.c - the cache's Redis tier against a real redis-server
 * (Debian's redis-server package) that each test starts on a unix socket in a
 * mkdtemp directory: no TCP port, nothing shared with other tests. A missing
 * redis-server fails the test, naming the package; it is never skipped.
 *
 * The loop is driven in slices of a few milliseconds until a condition holds
 * or a deadline passes, so no test can hang.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache_redis.h"
#include "log.h"
#include "util.h"

/* ---- the redis-server child -------------------------------------------------- */

static char redis_dir[64];
static char redis_sock[128];
static char redis_addr[160];
static pid_t redis_pid = -1;
static struct event_base *base;

static bool
socket_answers(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    bool ok;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        return false;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

static int redis_tcp_port; /* nonzero: also listen on 127.0.0.1:port */

static void
redis_start(const char *password)
{
    int status;
    uint64_t deadline = util_mono_ms() + 10000;

    redis_pid = fork();
    cr_assert_geq(redis_pid, 0, "fork: %s", strerror(errno));
    if (redis_pid == 0) {
        char log[128];
        int fd;
        snprintf(log, sizeof(log), "%s/redis.log", redis_dir);
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        char port[16];
        const char *argv[20];
        int n = 0;
        snprintf(port, sizeof(port), "%d", redis_tcp_port);
        argv[n++] = "redis-server";
        argv[n++] = "--port";
        argv[n++] = port;
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
        argv[n++] = "--unixsocket";
        argv[n++] = redis_sock;
        argv[n++] = "--save";
        argv[n++] = "";
        argv[n++] = "--appendonly";
        argv[n++] = "no";
        argv[n++] = "--daemonize";
        argv[n++] = "no";
        argv[n++] = "--dir";
        argv[n++] = redis_dir;
        if (password != NULL) {
            argv[n++] = "--requirepass";
            argv[n++] = password;
        }
        argv[n] = NULL;
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    while (!socket_answers(redis_sock)) {
        if (waitpid(redis_pid, &status, WNOHANG) == redis_pid) {
            redis_pid = -1;
            cr_assert_fail("redis-server did not start (exit %d): is it installed? On Debian: "
                     "apt-get install redis-server",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        cr_assert_lt(util_mono_ms(), deadline, "redis-server did not open %s in 10 s",
                     redis_sock);
        usleep(5000);
    }
}

static void
redis_kill(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

static void
setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_ERROR);
    snprintf(redis_dir, sizeof(redis_dir), "/tmp/akosha-redis-XXXXXX");
    cr_assert_not_null(mkdtemp(redis_dir));
    snprintf(redis_sock, sizeof(redis_sock), "%s/redis.sock", redis_dir);
    snprintf(redis_addr, sizeof(redis_addr), "unix:%s", redis_sock);
    base = event_base_new();
    cr_assert_not_null(base);
}

static void
teardown(void)
{
    char path[256];

    redis_kill();
    event_base_free(base);
    snprintf(path, sizeof(path), "%s/redis.log", redis_dir);
    unlink(path);
    unlink(redis_sock);
    rmdir(redis_dir);
}

TestSuite(cache_redis, .init = setup, .fini = teardown, .timeout = 60);

/* ---- loop helpers ------------------------------------------------------------ */

/* Run the loop in 2 ms slices until *flag or ms pass; returns whether *flag became true. */
static bool
loop_until_flag(const bool *flag, uint64_t ms)
{
    uint64_t deadline = util_mono_ms() + ms;
    struct timeval slice = {0, 2000};

    while (!*flag) {
        if (util_mono_ms() >= deadline) {
            return false;
        }
        event_base_loopexit(base, &slice);
        event_base_dispatch(base);
    }
    return true;
}

static void
loop_for(uint64_t ms)
{
    bool never = false;
    (void)loop_until_flag(&never, ms);
}

static struct cache_redis_stats
stats_of(struct cache_redis *r)
{
    struct cache_redis_stats st;
    cache_redis_stats(r, &st);
    return st;
}

static bool
wait_connected(struct cache_redis *r, uint64_t ms)
{
    uint64_t deadline = util_mono_ms() + ms;

    while (stats_of(r).state != CACHE_REDIS_CONNECTED) {
        if (util_mono_ms() >= deadline) {
            return false;
        }
        loop_for(5);
    }
    return true;
}

static bool
wait_stores(struct cache_redis *r, uint64_t ms)
{
    uint64_t deadline = util_mono_ms() + ms;

    while (stats_of(r).pending_stores != 0) {
        if (util_mono_ms() >= deadline) {
            return false;
        }
        loop_for(2);
    }
    return true;
}

/* What a lookup's callback saw, copied out of the tier's buffers. */
#define MAXK 8
struct answer {
    bool done;
    int calls;
    size_t n;
    bool hit[MAXK];
    uint32_t dim[MAXK];
    uint64_t created_ms[MAXK];
    float vec[MAXK][8];
    uint64_t at_ms;
};

static void
on_done(const struct cache_redis_result *res, size_t n, void *arg)
{
    struct answer *a = arg;

    a->calls++;
    a->done = true;
    a->n = n;
    a->at_ms = util_mono_ms();
    for (size_t i = 0; i < n && i < MAXK; i++) {
        a->hit[i] = res[i].vec != NULL;
        a->dim[i] = res[i].dim;
        a->created_ms[i] = res[i].created_ms;
        if (res[i].vec != NULL) {
            memcpy(a->vec[i], res[i].vec, MIN(res[i].dim, 8u) * sizeof(float));
        }
    }
}

static struct cache_key
key_n(int n)
{
    struct cache_key k;
    memset(&k, 0, sizeof(k));
    k.b[0] = (unsigned char)n;
    k.b[31] = 0xa5;
    return k;
}

static struct cache_redis *
tier_new(const char *password, uint64_t timeout_ms, const struct breaker_config *bc,
         uint32_t max_inflight)
{
    struct cache_redis_settings s;
    const char *cause = NULL;
    struct cache_redis *r;

    memset(&s, 0, sizeof(s));
    s.address = redis_addr;
    s.password = password;
    s.prefix = "test:";
    s.timeout_ms = timeout_ms;
    s.breaker = bc;
    s.max_inflight = max_inflight;
    s.reconnect_max_ms = 100;
    r = cache_redis_new(base, &s, &cause);
    cr_assert_not_null(r, "cache_redis_new: %s", cause);
    return r;
}

/* One lookup to its end; the answer is in *a. */
static void
lookup(struct cache_redis *r, const struct cache_key *keys, size_t n, struct answer *a)
{
    struct cache_redis_op *op;

    memset(a, 0, sizeof(*a));
    cr_assert_eq(cache_redis_mget(r, keys, n, on_done, a, &op), 0, "Redis was not asked");
    cr_assert_not_null(op);
    cr_assert(loop_until_flag(&a->done, 2000), "no answer in 2 s");
    cr_assert_eq(a->calls, 1);
    cr_assert_eq(a->n, n);
}

/* ---- against redis-server ------------------------------------------------------ */

Test(cache_redis, store_then_mget_hits_and_absent_keys_miss)
{
    struct cache_redis *r;
    struct cache_key keys[3] = {key_n(1), key_n(2), key_n(3)};
    const float v1[4] = {1.0f, -2.5f, 3.25f, 0.0f};
    const float v2[3] = {7.0f, 8.0f, 9.0f};
    struct answer a;
    struct cache_redis_stats st;

    redis_start(NULL);
    r = tier_new(NULL, 500, NULL, 0);
    cr_assert(wait_connected(r, 2000));
    cache_redis_store(r, &keys[0], v1, 4, 1700000000123ull, 3600);
    cache_redis_store(r, &keys[2], v2, 3, 1700000000456ull, 3600);
    cr_assert(wait_stores(r, 2000));

    lookup(r, keys, 3, &a);
    cr_assert(a.hit[0]);
    cr_assert_eq(a.dim[0], 4);
    cr_assert_eq(a.created_ms[0], 1700000000123ull);
    cr_assert_arr_eq(a.vec[0], v1, sizeof(v1));
    cr_assert(!a.hit[1], "an absent key must miss");
    cr_assert(a.hit[2]);
    cr_assert_eq(a.dim[2], 3);
    cr_assert_eq(a.created_ms[2], 1700000000456ull);
    cr_assert_arr_eq(a.vec[2], v2, sizeof(v2));

    st = stats_of(r);
    cr_assert_eq(st.lookups, 1);
    cr_assert_eq(st.keys, 3);
    cr_assert_eq(st.hits, 2);
    cr_assert_eq(st.misses, 1);
    cr_assert_eq(st.errors, 0);
    cr_assert_eq(st.stores, 2);
    cr_assert_eq(st.store_errors, 0);
    cr_assert_eq(st.latency_count, 1);
    cr_assert_eq(st.inflight, 0);
    cr_assert_eq(st.breaker.state, BREAKER_CLOSED);
    cache_redis_free(r);
}

Test(cache_redis, key_is_prefix_and_hex_with_the_expiry_set)
{
    struct cache_redis *r;
    struct cache_key k = key_n(0x3c);
    const float v[2] = {1.0f, 2.0f};
    redisContext *c;
    redisReply *reply;
    char name[128];

    redis_start(NULL);
    r = tier_new(NULL, 500, NULL, 0);
    cr_assert(wait_connected(r, 2000));
    cache_redis_store(r, &k, v, 2, 42, 1000);
    cr_assert(wait_stores(r, 2000));

    snprintf(name, sizeof(name), "test:3c%060d5", 0);
    memcpy(name + 5 + 62, "a5", 3);
    c = redisConnectUnix(redis_sock);
    cr_assert(c != NULL && c->err == 0);
    reply = redisCommand(c, "TTL %s", name);
    cr_assert_not_null(reply);
    cr_assert_eq(reply->type, REDIS_REPLY_INTEGER, "no key %s", name);
    cr_assert(reply->integer > 990 && reply->integer <= 1000, "TTL %lld", reply->integer);
    freeReplyObject(reply);
    reply = redisCommand(c, "STRLEN %s", name);
    cr_assert_eq(reply->integer, (long long)cache_value_size(2));
    freeReplyObject(reply);
    redisFree(c);
    cache_redis_free(r);
}

Test(cache_redis, corrupt_value_counts_an_error_and_misses)
{
    struct cache_redis *r;
    struct cache_key keys[2] = {key_n(9), key_n(10)};
    const float v[1] = {0.5f};
    redisContext *c;
    redisReply *reply;
    char name[128];
    struct answer a;
    struct cache_redis_stats st;

    redis_start(NULL);
    r = tier_new(NULL, 500, NULL, 0);
    cr_assert(wait_connected(r, 2000));
    cache_redis_store(r, &keys[1], v, 1, 5, 60);
    cr_assert(wait_stores(r, 2000));

    snprintf(name, sizeof(name), "test:09%060d", 0);
    memcpy(name + 5 + 62, "a5", 3);
    c = redisConnectUnix(redis_sock);
    cr_assert(c != NULL && c->err == 0);
    reply = redisCommand(c, "SET %s %s", name, "AKCV-but-not-really-a-vector");
    cr_assert_not_null(reply);
    freeReplyObject(reply);
    redisFree(c);

    lookup(r, keys, 2, &a);
    cr_assert(!a.hit[0], "a value that does not decode is a miss");
    cr_assert(a.hit[1]);
    st = stats_of(r);
    cr_assert_eq(st.errors, 1);
    cr_assert_eq(st.hits, 1);
    cr_assert_eq(st.misses, 1);
    /* Redis itself answered: the breaker counts a success. */
    cr_assert_eq(st.breaker.successful_calls, 1);
    cr_assert_eq(st.breaker.failed_calls, 0);
    cache_redis_free(r);
}

Test(cache_redis, stopped_redis_times_out_opens_the_breaker_then_it_closes)
{
    struct breaker_config bc = {.failure_threshold = 3,
                                .open_timeout_ms = 300,
                                .half_open_max_calls = 1,
                                .success_threshold = 1};
    struct cache_redis *r;
    struct cache_key k = key_n(4);
    const float v[2] = {4.0f, 5.0f};
    struct cache_redis_op *op;
    struct answer a;
    struct cache_redis_stats st;

    redis_start(NULL);
    r = tier_new(NULL, 20, &bc, 0);
    cr_assert(wait_connected(r, 2000));
    cache_redis_store(r, &k, v, 2, 1, 60);
    cr_assert(wait_stores(r, 2000));
    lookup(r, &k, 1, &a);
    cr_assert(a.hit[0]);

    kill(redis_pid, SIGSTOP);
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = util_mono_ms();
        lookup(r, &k, 1, &a);
        cr_assert(!a.hit[0], "a stopped Redis answers nothing: all-miss");
        /*
         * Within redis_timeout plus a margin for a machine shared by several
         * builds; libevent's timers run on CLOCK_MONOTONIC_COARSE (a few ms a
         * tick), so one may also fire a tick early.
         */
        cr_assert_geq(a.at_ms - t0, 14, "answered after %llu ms", (unsigned long long)(a.at_ms - t0));
        cr_assert_leq(a.at_ms - t0, 20 + 30, "answered after %llu ms",
                      (unsigned long long)(a.at_ms - t0));
    }
    st = stats_of(r);
    cr_assert_eq(st.timeouts, 3);
    cr_assert_eq(st.breaker.state, BREAKER_OPEN);
    cr_assert_eq(st.inflight, 3, "timed-out lookups wait for Redis to let go of them");

    /* Open: lookups miss at once without asking Redis, stores are dropped. */
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a, &op), -1);
    cr_assert_null(op);
    cache_redis_store(r, &k, v, 2, 1, 60);
    st = stats_of(r);
    cr_assert_eq(st.lookups_skipped, 1);
    cr_assert_eq(st.stores_dropped, 1);

    kill(redis_pid, SIGCONT);
    loop_for(350); /* past the open timeout; the late replies arrive meanwhile */
    st = stats_of(r);
    cr_assert_eq(st.late_replies, 3);
    cr_assert_eq(st.inflight, 0);

    lookup(r, &k, 1, &a); /* the half-open trial */
    cr_assert(a.hit[0]);
    st = stats_of(r);
    cr_assert_eq(st.breaker.state, BREAKER_CLOSED);
    cache_redis_free(r);
}

Test(cache_redis, killed_redis_misses_promptly_and_reconnects_after_restart)
{
    struct breaker_config bc = {.failure_threshold = 2,
                                .open_timeout_ms = 100,
                                .half_open_max_calls = 1,
                                .success_threshold = 1};
    struct cache_redis *r;
    struct cache_key k = key_n(5);
    const float v[2] = {1.0f, 2.0f};
    struct cache_redis_op *op;
    struct answer a;
    struct cache_redis_stats st;
    uint64_t t0, deadline;
    bool hit = false;

    redis_start(NULL);
    r = tier_new(NULL, 1000, &bc, 0);
    cr_assert(wait_connected(r, 2000));

    redis_kill();
    /* Asked before the loop noticed: the lost connection answers it, long before the timeout. */
    memset(&a, 0, sizeof(a));
    t0 = util_mono_ms();
    if (cache_redis_mget(r, &k, 1, on_done, &a, &op) == 0) {
        cr_assert(loop_until_flag(&a.done, 2000));
        cr_assert(!a.hit[0]);
        cr_assert_lt(a.at_ms - t0, 200, "answered after %llu ms",
                     (unsigned long long)(a.at_ms - t0));
    }
    loop_for(20);
    st = stats_of(r);
    cr_assert_neq(st.state, CACHE_REDIS_CONNECTED);
    /* Down: misses at once; enough of them open the breaker. */
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a, &op), -1);
    }
    cr_assert_eq(stats_of(r).breaker.state, BREAKER_OPEN);

    redis_start(NULL); /* same socket path */
    cr_assert(wait_connected(r, 3000), "no reconnect within 3 s");
    cr_assert_geq(stats_of(r).connects, 2);

    /* After the open timeout the trial goes through and the breaker closes. */
    deadline = util_mono_ms() + 3000;
    while (!hit && util_mono_ms() < deadline) {
        loop_for(20);
        if (stats_of(r).breaker.state == BREAKER_CLOSED) {
            cache_redis_store(r, &k, v, 2, 1, 60);
            cr_assert(wait_stores(r, 2000));
            lookup(r, &k, 1, &a);
            hit = a.hit[0];
        } else if (cache_redis_mget(r, &k, 1, on_done, &a, &op) == 0) {
            memset(&a, 0, sizeof(a));
            cr_assert(loop_until_flag(&a.done, 2000));
        }
    }
    cr_assert(hit, "no round trip after the restart");
    cr_assert_eq(stats_of(r).breaker.state, BREAKER_CLOSED);
    cache_redis_free(r);
}

Test(cache_redis, cancelled_lookup_never_calls_back)
{
    struct cache_redis *r;
    struct cache_key k = key_n(6);
    struct cache_redis_op *op;
    struct answer a, b;

    redis_start(NULL);
    r = tier_new(NULL, 50, NULL, 0);
    cr_assert(wait_connected(r, 2000));

    /* Cancelled before the reply. */
    memset(&a, 0, sizeof(a));
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a, &op), 0);
    cache_redis_cancel(op);
    loop_for(100);
    cr_assert_eq(a.calls, 0);
    cr_assert_eq(stats_of(r).inflight, 0);

    /* Cancelled while Redis is stopped, then the tier freed with it still in hiredis. */
    kill(redis_pid, SIGSTOP);
    memset(&b, 0, sizeof(b));
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &b, &op), 0);
    cache_redis_cancel(op);
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a, &op), 0); /* left waiting */
    loop_for(10);
    cache_redis_free(r); /* no callback runs; LeakSanitizer checks the rest */
    cr_assert_eq(a.calls, 0);
    cr_assert_eq(b.calls, 0);
}

Test(cache_redis, inflight_bound_misses_at_once_and_counts)
{
    struct cache_redis *r;
    struct cache_key k = key_n(7);
    struct cache_redis_op *op;
    struct answer a[5];

    redis_start(NULL);
    r = tier_new(NULL, 30, NULL, 4);
    cr_assert(wait_connected(r, 2000));
    kill(redis_pid, SIGSTOP);
    memset(a, 0, sizeof(a));
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a[i], &op), 0);
    }
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a[4], &op), -1);
    cr_assert_null(op);
    cr_assert_eq(stats_of(r).lookups_overflow, 1);
    /* Timed out, but still Redis's: the bound holds until Redis answers. */
    loop_for(60);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(a[i].calls, 1);
    }
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a[4], &op), -1);
    cr_assert_eq(stats_of(r).lookups_overflow, 2);
    kill(redis_pid, SIGCONT);
    loop_for(50);
    cr_assert_eq(stats_of(r).inflight, 0);
    cache_redis_free(r);
}

Test(cache_redis, password_authenticates_and_a_wrong_one_only_misses)
{
    struct cache_redis *r, *wrong;
    struct cache_key k = key_n(8);
    const float v[3] = {3.0f, 2.0f, 1.0f};
    struct cache_redis_op *op;
    struct answer a;
    struct cache_redis_stats st;

    redis_start("s3cret pass");
    r = tier_new("s3cret pass", 500, NULL, 0);
    cr_assert(wait_connected(r, 2000));
    cache_redis_store(r, &k, v, 3, 11, 60);
    cr_assert(wait_stores(r, 2000));
    cr_assert_eq(stats_of(r).store_errors, 0);
    lookup(r, &k, 1, &a);
    cr_assert(a.hit[0]);
    cr_assert_arr_eq(a.vec[0], v, sizeof(v));

    wrong = tier_new("not it", 500, NULL, 0);
    loop_for(100);
    memset(&a, 0, sizeof(a));
    if (cache_redis_mget(wrong, &k, 1, on_done, &a, &op) == 0) {
        cr_assert(loop_until_flag(&a.done, 2000));
    }
    cr_assert(!a.hit[0]);
    st = stats_of(wrong);
    cr_assert_eq(st.hits, 0);
    cache_redis_free(wrong);
    cache_redis_free(r);
}

Test(cache_redis, two_instances_share_entries)
{
    struct cache_redis *one, *two;
    struct cache_key k = key_n(12);
    const float v[4] = {0.25f, 0.5f, 0.75f, 1.0f};
    struct answer a;

    redis_start(NULL);
    one = tier_new(NULL, 500, NULL, 0);
    two = tier_new(NULL, 500, NULL, 0);
    cr_assert(wait_connected(one, 2000));
    cr_assert(wait_connected(two, 2000));
    cache_redis_store(one, &k, v, 4, 99, 60);
    cr_assert(wait_stores(one, 2000));
    lookup(two, &k, 1, &a);
    cr_assert(a.hit[0], "an entry one sidecar stored is found by another");
    cr_assert_eq(a.created_ms[0], 99);
    cr_assert_arr_eq(a.vec[0], v, sizeof(v));
    cache_redis_free(one);
    cache_redis_free(two);
}

Test(cache_redis, no_redis_misses_at_once_and_drops_stores)
{
    struct cache_redis *r;
    struct cache_key k = key_n(13);
    struct cache_redis_op *op;
    struct answer a;

    /* No redis-server: connects fail; lookups miss at once and stores are dropped. */
    r = tier_new(NULL, 20, NULL, 0);
    loop_for(20);
    cr_assert_eq(cache_redis_mget(r, &k, 1, on_done, &a, &op), -1);
    cr_assert_null(op);
    cache_redis_store(r, &k, (const float[]){1.0f}, 1, 1, 60);
    cr_assert_eq(stats_of(r).stores_dropped, 1);
    cr_assert_neq(stats_of(r).state, CACHE_REDIS_CONNECTED);
    cr_assert_geq(stats_of(r).connect_failures, 1);
    cache_redis_free(r);
}

/* A loopback port free a moment ago (redis-server then takes it). */
static int
free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

Test(cache_redis, tcp_round_trip_on_loopback_and_refused_connects_retry)
{
    struct cache_redis_settings s;
    struct cache_redis *r, *refused;
    struct cache_key k = key_n(14);
    const float v[2] = {6.0f, 7.0f};
    const char *cause = NULL;
    char tcp_addr[64];
    struct answer a;

    redis_tcp_port = free_port();
    redis_start(NULL);
    redis_tcp_port = 0;
    memset(&s, 0, sizeof(s));
    /* The port as redis-server reports it (localhost: taken as 127.0.0.1, no resolver). */
    {
        redisContext *c = redisConnectUnix(redis_sock);
        redisReply *reply = redisCommand(c, "CONFIG GET port");
        cr_assert(reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2);
        snprintf(tcp_addr, sizeof(tcp_addr), "redis://localhost:%s/1", reply->element[1]->str);
        freeReplyObject(reply);
        redisFree(c);
    }
    s.address = tcp_addr;
    s.timeout_ms = 500;
    r = cache_redis_new(base, &s, &cause);
    cr_assert_not_null(r, "%s", cause);
    cr_assert(wait_connected(r, 2000));
    cache_redis_store(r, &k, v, 2, 77, 60);
    cr_assert(wait_stores(r, 2000));
    lookup(r, &k, 1, &a);
    cr_assert(a.hit[0]);
    cr_assert_eq(a.created_ms[0], 77);
    {
        /* SELECT 1 ran: the entry is in database 1, not 0. */
        redisContext *c = redisConnectUnix(redis_sock);
        redisReply *reply = redisCommand(c, "DBSIZE");
        cr_assert_eq(reply->integer, 0);
        freeReplyObject(reply);
        reply = redisCommand(c, "SELECT 1");
        freeReplyObject(reply);
        reply = redisCommand(c, "DBSIZE");
        cr_assert_eq(reply->integer, 1);
        freeReplyObject(reply);
        redisFree(c);
    }
    cache_redis_free(r);

    /* Nothing listens on port 1: connects are refused and retried, nothing else happens. */
    s.address = "redis://127.0.0.1:1";
    s.reconnect_max_ms = 50;
    refused = cache_redis_new(base, &s, &cause);
    cr_assert_not_null(refused, "%s", cause);
    loop_for(300);
    cr_assert_geq(stats_of(refused).connect_failures, 2);
    cr_assert_neq(stats_of(refused).state, CACHE_REDIS_CONNECTED);
    cache_redis_free(refused);
}
