/*
 * cache_redis.c - the embedding cache's Redis tier (see cache_redis.h).
 *
 * The connection is a small state machine, DISCONNECTED -> CONNECTING ->
 * CONNECTED -> DISCONNECTED, changed only by set_state. One timer serves as
 * the connect timeout while CONNECTING and as the reconnect backoff while
 * DISCONNECTED.
 *
 * A lookup (struct cache_redis_op) lives from cache_redis_mget until hiredis
 * hands its reply back, which it always does: with the reply, or with NULL
 * when the connection closes or is freed. Its caller may be answered before
 * that (the timeout), or may leave (cancel); the op then only waits for
 * hiredis to let go of it. Ops are recycled through a free list, at most
 * max_inflight of them exist.
 */
#include "cache_redis.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "retry.h"
#include "util.h"

const uint32_t cache_redis_latency_bounds_us[CACHE_REDIS_LATENCY_NBOUNDS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000};

#define KEY_HEX_LEN (2 * CACHE_KEY_LEN)
#define RECONNECT_BASE_MS 50
#define RECONNECT_MIN_MS 10

enum op_state {
    OP_WAITING,  /* the caller waits for the callback */
    OP_ANSWERED, /* the caller was answered (timeout); Redis has not replied yet */
    OP_CANCELLED /* the caller left; Redis has not replied yet */
};

struct cache_redis_op {
    struct cache_redis *r;
    enum op_state state;
    cache_redis_done_cb cb;
    void *arg;
    size_t n;
    struct event *timer; /* made once per op object, kept across reuse */
    struct breaker_ticket ticket;
    uint64_t sent_us;
    struct cache_redis_op *next_free;
};

struct cache_redis {
    struct event_base *base;
    struct redis_addr addr;
    char *auth_user;     /* NULL: AUTH with the password alone */
    char *auth_password; /* NULL: no AUTH */
    char *prefix;
    size_t prefix_len;
    uint64_t timeout_ms;
    uint64_t connect_timeout_ms;
    uint64_t reconnect_max_ms;
    uint32_t max_inflight;
    uint32_t max_pending_stores;

    redisAsyncContext *ac; /* NULL while DISCONNECTED */
    enum cache_redis_conn_state state;
    struct event *conn_timer;
    unsigned failed_connects; /* in a row, for the backoff */
    uint64_t rnd;
    bool in_outage; /* a failure was logged at warn; the next connect logs at info */
    bool freeing;

    struct breaker breaker;
    struct cache_redis_op *free_ops;

    /* Scratch, reused by every call (loop thread only). */
    char *keybuf;
    const char **argv;
    size_t *argvlen;
    struct cache_redis_result *results;
    float *floats;
    size_t floats_cap;
    unsigned char *valbuf;
    size_t valbuf_cap;

    struct cache_redis_stats st; /* state and breaker are filled in by cache_redis_stats */
};

static void connect_start(struct cache_redis *r);

/* ---- connection state ---------------------------------------------------- */

const char *
cache_redis_state_name(enum cache_redis_conn_state s)
{
    switch (s) {
    case CACHE_REDIS_DISCONNECTED:
        return "disconnected";
    case CACHE_REDIS_CONNECTING:
        return "connecting";
    case CACHE_REDIS_CONNECTED:
        return "connected";
    }
    return "unknown";
}

/* The one place the connection state changes. */
static void
set_state(struct cache_redis *r, enum cache_redis_conn_state to, const char *why)
{
    if (r->state == to) {
        return;
    }
    log_debug("cache-redis: %s -> %s (%s)", cache_redis_state_name(r->state),
              cache_redis_state_name(to), why);
    r->state = to;
}

static const char *
address_text(const struct cache_redis *r, char *buf, size_t len)
{
    if (r->addr.is_unix) {
        snprintf(buf, len, "unix:%s", r->addr.path);
    } else if (strchr(r->addr.host, ':') != NULL) {
        snprintf(buf, len, "[%s]:%u", r->addr.host, (unsigned)r->addr.port);
    } else {
        snprintf(buf, len, "%s:%u", r->addr.host, (unsigned)r->addr.port);
    }
    return buf;
}

static void
schedule_reconnect(struct cache_redis *r)
{
    uint64_t delay = retry_backoff_ms(RECONNECT_BASE_MS, 2.0, r->reconnect_max_ms,
                                      r->failed_connects, retry_rand(&r->rnd));
    struct timeval tv = util_ms_to_tv(MAX(delay, RECONNECT_MIN_MS));

    if (r->failed_connects < 64) {
        r->failed_connects++;
    }
    evtimer_add(r->conn_timer, &tv);
}

/* A connect failed or a connection ended: log once per outage, then retry later. */
static void
connection_failed(struct cache_redis *r, const char *what, const char *detail)
{
    char where[160];

    set_state(r, CACHE_REDIS_DISCONNECTED, what);
    if (!r->in_outage) {
        log_warn("cache-redis: %s %s: %s; lookups miss until it is back", what,
                 address_text(r, where, sizeof(where)), detail != NULL ? detail : "");
        r->in_outage = true;
    } else {
        log_debug("cache-redis: %s: %s", what, detail != NULL ? detail : "");
    }
    schedule_reconnect(r);
}

/* The connection is usable: AUTH and SELECT (if any) were accepted. */
static void
connection_ready(struct cache_redis *r)
{
    char where[160];

    r->failed_connects = 0;
    if (r->in_outage) {
        log_info("cache-redis: connected to %s", address_text(r, where, sizeof(where)));
        r->in_outage = false;
    } else {
        log_debug("cache-redis: connected to %s", address_text(r, where, sizeof(where)));
    }
}

static void
on_setup_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct cache_redis *r = ac->data;
    redisReply *reply = reply_ptr;
    const char *what = privdata;
    bool last = r->addr.db != 0 ? strcmp(what, "SELECT") == 0 : true;

    if (reply == NULL || r->freeing) {
        return;
    }
    if (reply->type != REDIS_REPLY_ERROR) {
        if (last) {
            connection_ready(r);
        }
        return;
    }
    /* Redis's message names no credential ("WRONGPASS invalid username-password pair"). */
    if (!r->in_outage) {
        log_error("cache-redis: %s refused, retrying: %.200s", what, reply->str);
        r->in_outage = true;
    } else {
        log_debug("cache-redis: %s refused: %.200s", what, reply->str);
    }
    set_state(r, CACHE_REDIS_DISCONNECTED, "setup refused");
    redisAsyncDisconnect(ac); /* on_disconnect schedules the retry */
}

/* AUTH and SELECT go ahead of every lookup on this connection, so those run authenticated. */
static void
on_connect(const redisAsyncContext *ac, int status)
{
    struct cache_redis *r = ac->data;
    redisAsyncContext *mac = r->ac;

    evtimer_del(r->conn_timer);
    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns. */
        r->ac = NULL;
        r->st.connect_failures++;
        connection_failed(r, "cannot connect to", ac->errstr);
        return;
    }
    set_state(r, CACHE_REDIS_CONNECTED, "connected");
    r->st.connects++;
    if (r->auth_password == NULL && r->addr.db == 0) {
        connection_ready(r);
        return;
    }
    if (r->auth_password != NULL) {
        const char *argv[3] = {"AUTH", r->auth_user, r->auth_password};
        if (r->auth_user == NULL) {
            argv[1] = r->auth_password;
            redisAsyncCommandArgv(mac, on_setup_reply, (void *)"AUTH", 2, argv, NULL);
        } else {
            redisAsyncCommandArgv(mac, on_setup_reply, (void *)"AUTH", 3, argv, NULL);
        }
    }
    if (r->addr.db != 0) {
        char db[16];
        const char *argv[2] = {"SELECT", db};
        snprintf(db, sizeof(db), "%u", r->addr.db);
        redisAsyncCommandArgv(mac, on_setup_reply, (void *)"SELECT", 2, argv, NULL);
    }
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    struct cache_redis *r = ac->data;

    /* hiredis frees the context after this returns. */
    r->ac = NULL;
    if (r->freeing) {
        return;
    }
    if (status == REDIS_OK) {
        /* We asked (a refused AUTH or SELECT): already logged. */
        set_state(r, CACHE_REDIS_DISCONNECTED, "closed");
        schedule_reconnect(r);
        return;
    }
    connection_failed(r, "lost the connection to", ac->errstr);
}

static void
on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    struct cache_redis *r = arg;

    (void)fd;
    (void)what;
    if (r->state == CACHE_REDIS_DISCONNECTED) {
        connect_start(r);
    } else if (r->state == CACHE_REDIS_CONNECTING) {
        /* Not connected yet: hiredis calls neither callback for a context it never connected. */
        redisAsyncFree(r->ac);
        r->ac = NULL;
        r->st.connect_failures++;
        connection_failed(r, "cannot connect to", "connect timed out");
    }
}

static void
connect_start(struct cache_redis *r)
{
    redisAsyncContext *ac;
    struct timeval tv;

    ac = r->addr.is_unix ? redisAsyncConnectUnix(r->addr.path)
                         : redisAsyncConnect(r->addr.host, r->addr.port);
    if (ac == NULL) {
        fatal("cache-redis: out of memory");
    }
    if (ac->err != 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "%s", ac->errstr);
        redisAsyncFree(ac);
        r->st.connect_failures++;
        connection_failed(r, "cannot connect to", detail);
        return;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        fatal("cache-redis: cannot attach to the event loop");
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    set_state(r, CACHE_REDIS_CONNECTING, "connect started");
    tv = util_ms_to_tv(r->connect_timeout_ms);
    evtimer_add(r->conn_timer, &tv);
}

/* ---- new / free -------------------------------------------------------------- */

static void
on_breaker_change(const struct breaker *b, enum breaker_state from, enum breaker_state to,
                  const char *why, void *arg)
{
    (void)arg;
    if (to == BREAKER_OPEN) {
        log_warn("%s: breaker %s -> %s (%s)", b->name, breaker_state_name(from),
                 breaker_state_name(to), why);
    } else {
        log_info("%s: breaker %s -> %s (%s)", b->name, breaker_state_name(from),
                 breaker_state_name(to), why);
    }
}

struct cache_redis *
cache_redis_new(struct event_base *base, const struct cache_redis_settings *s, const char **cause)
{
    struct cache_redis *r;
    struct breaker_config bc;
    const char *prefix = s->prefix != NULL ? s->prefix : CACHE_REDIS_DEFAULT_PREFIX;

    if (strlen(prefix) > CACHE_REDIS_PREFIX_MAX) {
        *cause = "redis_prefix is longer than 256 bytes";
        return NULL;
    }
    r = xcalloc(1, sizeof(*r));
    if (config_parse_redis_addr(s->address, &r->addr, cause) != 0) {
        free(r);
        return NULL;
    }
    r->base = base;
    if (s->password != NULL && *s->password != '\0') {
        r->auth_password = xstrdup(s->password);
        r->auth_user = r->addr.user != NULL ? xstrdup(r->addr.user) : NULL;
    } else if (r->addr.password != NULL) {
        r->auth_password = xstrdup(r->addr.password);
        r->auth_user = r->addr.user != NULL ? xstrdup(r->addr.user) : NULL;
    }
    r->prefix = xstrdup(prefix);
    r->prefix_len = strlen(prefix);
    r->timeout_ms = s->timeout_ms != 0 ? s->timeout_ms : CACHE_REDIS_DEFAULT_TIMEOUT_MS;
    r->connect_timeout_ms =
        s->connect_timeout_ms != 0 ? s->connect_timeout_ms : CACHE_REDIS_DEFAULT_CONNECT_TIMEOUT_MS;
    r->reconnect_max_ms =
        s->reconnect_max_ms != 0 ? s->reconnect_max_ms : CACHE_REDIS_DEFAULT_RECONNECT_MAX_MS;
    r->max_inflight = s->max_inflight != 0 ? s->max_inflight : CACHE_REDIS_DEFAULT_MAX_INFLIGHT;
    r->max_pending_stores =
        s->max_pending_stores != 0 ? s->max_pending_stores : CACHE_REDIS_DEFAULT_MAX_PENDING_STORES;
    if (s->breaker != NULL) {
        bc = *s->breaker;
    } else {
        bc.failure_threshold = CACHE_REDIS_BREAKER_FAILURES;
        bc.open_timeout_ms = CACHE_REDIS_BREAKER_OPEN_MS;
        bc.half_open_max_calls = CACHE_REDIS_BREAKER_TRIALS;
        bc.success_threshold = CACHE_REDIS_BREAKER_SUCCESSES;
    }
    breaker_init(&r->breaker, CACHE_REDIS_BREAKER_NAME, &bc);
    breaker_set_on_change(&r->breaker, on_breaker_change, r);
    r->rnd = util_mono_us() ^ (uint64_t)(uintptr_t)r;

    r->keybuf = xmalloc(CACHE_REDIS_MAX_KEYS * (r->prefix_len + KEY_HEX_LEN));
    r->argv = xmalloc((CACHE_REDIS_MAX_KEYS + 1) * sizeof(*r->argv));
    r->argvlen = xmalloc((CACHE_REDIS_MAX_KEYS + 1) * sizeof(*r->argvlen));
    r->results = xmalloc(CACHE_REDIS_MAX_KEYS * sizeof(*r->results));
    r->conn_timer = evtimer_new(base, on_conn_timer, r);
    if (r->conn_timer == NULL) {
        fatal("cache-redis: out of memory");
    }
    r->state = CACHE_REDIS_DISCONNECTED;
    connect_start(r);
    return r;
}

static void
op_release(struct cache_redis *r, struct cache_redis_op *op)
{
    op->next_free = r->free_ops;
    r->free_ops = op;
}

void
cache_redis_free(struct cache_redis *r)
{
    if (r == NULL) {
        return;
    }
    r->freeing = true;
    evtimer_del(r->conn_timer);
    if (r->ac != NULL) {
        /* Hands every waiting op and store back with NULL; freeing: no callbacks run. */
        redisAsyncFree(r->ac);
        r->ac = NULL;
    }
    while (r->free_ops != NULL) {
        struct cache_redis_op *op = r->free_ops;
        r->free_ops = op->next_free;
        event_free(op->timer);
        free(op);
    }
    event_free(r->conn_timer);
    if (r->auth_password != NULL) {
        explicit_bzero(r->auth_password, strlen(r->auth_password));
        free(r->auth_password);
    }
    free(r->auth_user);
    config_redis_addr_free(&r->addr);
    free(r->prefix);
    free(r->keybuf);
    free(r->argv);
    free(r->argvlen);
    free(r->results);
    free(r->floats);
    free(r->valbuf);
    free(r);
}

/* ---- lookups ------------------------------------------------------------- */

static void
key_name(const struct cache_redis *r, const struct cache_key *key, char *out)
{
    static const char hex[] = "0123456789abcdef";

    memcpy(out, r->prefix, r->prefix_len);
    out += r->prefix_len;
    for (size_t i = 0; i < CACHE_KEY_LEN; i++) {
        *out++ = hex[key->b[i] >> 4];
        *out++ = hex[key->b[i] & 15];
    }
}

static void
record_latency(struct cache_redis *r, uint64_t us)
{
    size_t i = 0;

    while (i < CACHE_REDIS_LATENCY_NBOUNDS && us > cache_redis_latency_bounds_us[i]) {
        i++;
    }
    r->st.latency_buckets[i]++;
    r->st.latency_count++;
    r->st.latency_sum_us += us;
}

static void
answer_all_miss(struct cache_redis *r, struct cache_redis_op *op)
{
    memset(r->results, 0, op->n * sizeof(*r->results));
    r->st.misses += op->n;
    op->cb(r->results, op->n, op->arg);
}

/* Fill r->results from an MGET reply; returns whether Redis answered well. */
static bool
decode_reply(struct cache_redis *r, struct cache_redis_op *op, const redisReply *reply)
{
    size_t total = 0, off = 0;

    memset(r->results, 0, op->n * sizeof(*r->results));
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != op->n) {
        if (reply->type == REDIS_REPLY_ERROR) {
            log_debug("cache-redis: MGET: %.200s", reply->str);
        }
        r->st.errors++;
        r->st.misses += op->n;
        return false;
    }
    for (size_t i = 0; i < op->n; i++) {
        const redisReply *e = reply->element[i];
        if (e->type == REDIS_REPLY_STRING && e->len > CACHE_VALUE_HEADER) {
            total += MIN((e->len - CACHE_VALUE_HEADER) / 4, (size_t)CACHE_MAX_DIM);
        }
    }
    if (total > r->floats_cap) {
        free(r->floats);
        r->floats = xmalloc(total * sizeof(float));
        r->floats_cap = total;
    }
    for (size_t i = 0; i < op->n; i++) {
        const redisReply *e = reply->element[i];
        struct cache_redis_result *res = &r->results[i];
        const char *cause;
        size_t cap;

        if (e->type == REDIS_REPLY_NIL) {
            r->st.misses++;
            continue;
        }
        if (e->type != REDIS_REPLY_STRING) {
            r->st.errors++;
            r->st.misses++;
            continue;
        }
        cap = e->len > CACHE_VALUE_HEADER
                  ? MIN((e->len - CACHE_VALUE_HEADER) / 4, (size_t)CACHE_MAX_DIM)
                  : 0;
        if (cache_value_decode((const unsigned char *)e->str, e->len, r->floats + off,
                               (uint32_t)cap, &res->dim, &res->created_ms, &cause) != 0) {
            log_debug("cache-redis: undecodable value (%zu bytes): %s", e->len, cause);
            res->dim = 0;
            res->created_ms = 0;
            r->st.errors++;
            r->st.misses++;
            continue;
        }
        res->vec = r->floats + off;
        off += cap;
        r->st.hits++;
    }
    return true;
}

static void
on_mget_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct cache_redis_op *op = privdata;
    struct cache_redis *r = op->r;
    redisReply *reply = reply_ptr;
    uint64_t now_us;
    bool ok;

    (void)ac;
    r->st.inflight--;
    if (r->freeing || op->state == OP_CANCELLED) {
        op_release(r, op);
        return;
    }
    if (reply == NULL && r->state == CACHE_REDIS_CONNECTED) {
        /* The connection is closing: lookups started from callbacks now must not use it. */
        set_state(r, CACHE_REDIS_DISCONNECTED, "connection closing");
    }
    if (op->state == OP_ANSWERED) {
        if (reply != NULL) {
            r->st.late_replies++;
        }
        op_release(r, op);
        return;
    }
    evtimer_del(op->timer);
    now_us = util_mono_us();
    if (reply == NULL) {
        r->st.errors++;
        breaker_record(&r->breaker, &op->ticket, BREAKER_FAILURE, now_us / 1000);
        answer_all_miss(r, op);
        op_release(r, op);
        return;
    }
    ok = decode_reply(r, op, reply);
    if (ok) {
        record_latency(r, now_us - op->sent_us);
    }
    breaker_record(&r->breaker, &op->ticket, ok ? BREAKER_SUCCESS : BREAKER_FAILURE,
                   now_us / 1000);
    op->cb(r->results, op->n, op->arg);
    op_release(r, op);
}

static void
on_op_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct cache_redis_op *op = arg;
    struct cache_redis *r = op->r;

    (void)fd;
    (void)what;
    op->state = OP_ANSWERED;
    r->st.timeouts++;
    breaker_record(&r->breaker, &op->ticket, BREAKER_FAILURE, util_mono_ms());
    answer_all_miss(r, op);
}

static struct cache_redis_op *
op_get(struct cache_redis *r)
{
    struct cache_redis_op *op = r->free_ops;

    if (op != NULL) {
        r->free_ops = op->next_free;
        return op;
    }
    op = xcalloc(1, sizeof(*op));
    op->r = r;
    op->timer = evtimer_new(r->base, on_op_timeout, op);
    if (op->timer == NULL) {
        fatal("cache-redis: out of memory");
    }
    return op;
}

int
cache_redis_mget(struct cache_redis *r, const struct cache_key *keys, size_t n,
                 cache_redis_done_cb cb, void *arg, struct cache_redis_op **opp)
{
    struct breaker_ticket ticket;
    struct cache_redis_op *op;
    size_t klen = r->prefix_len + KEY_HEX_LEN;
    struct timeval tv;
    uint64_t now_ms;

    *opp = NULL;
    r->st.lookups++;
    if (n == 0 || n > CACHE_REDIS_MAX_KEYS) {
        r->st.lookups_skipped++;
        return -1;
    }
    if (r->st.inflight >= r->max_inflight) {
        r->st.lookups_skipped++;
        r->st.lookups_overflow++;
        return -1;
    }
    now_ms = util_mono_ms();
    if (!breaker_allow(&r->breaker, now_ms, &ticket)) {
        r->st.lookups_skipped++;
        return -1;
    }
    if (r->state != CACHE_REDIS_CONNECTED) {
        /* Down is a failure; the first connect still under way is nobody's fault. */
        breaker_record(&r->breaker, &ticket,
                       r->state == CACHE_REDIS_CONNECTING ? BREAKER_NEUTRAL : BREAKER_FAILURE,
                       now_ms);
        r->st.lookups_skipped++;
        return -1;
    }
    r->argv[0] = "MGET";
    r->argvlen[0] = 4;
    for (size_t i = 0; i < n; i++) {
        char *name = r->keybuf + i * klen;
        key_name(r, &keys[i], name);
        r->argv[i + 1] = name;
        r->argvlen[i + 1] = klen;
    }
    op = op_get(r);
    op->state = OP_WAITING;
    op->cb = cb;
    op->arg = arg;
    op->n = n;
    op->ticket = ticket;
    op->sent_us = util_mono_us();
    if (redisAsyncCommandArgv(r->ac, on_mget_reply, op, (int)(n + 1), r->argv, r->argvlen) !=
        REDIS_OK) {
        breaker_record(&r->breaker, &op->ticket, BREAKER_FAILURE, now_ms);
        op_release(r, op);
        r->st.errors++;
        r->st.lookups_skipped++;
        return -1;
    }
    tv = util_ms_to_tv(r->timeout_ms);
    evtimer_add(op->timer, &tv);
    r->st.inflight++;
    r->st.keys += n;
    *opp = op;
    return 0;
}

void
cache_redis_cancel(struct cache_redis_op *op)
{
    if (op == NULL || op->state != OP_WAITING) {
        return;
    }
    evtimer_del(op->timer);
    breaker_record(&op->r->breaker, &op->ticket, BREAKER_ABANDONED, util_mono_ms());
    op->state = OP_CANCELLED;
}

/* ---- stores ------------------------------------------------------------------ */

static void
on_store_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct cache_redis *r = privdata;
    redisReply *reply = reply_ptr;

    (void)ac;
    r->st.pending_stores--;
    if (r->freeing) {
        return;
    }
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (reply != NULL) {
            log_debug("cache-redis: SET: %.200s", reply->str);
        }
        r->st.store_errors++;
    }
}

void
cache_redis_store(struct cache_redis *r, const struct cache_key *key, const float *vec,
                  uint32_t dim, uint64_t created_ms, uint64_t expire_s)
{
    char name[CACHE_REDIS_PREFIX_MAX + KEY_HEX_LEN];
    char secs[24];
    const char *argv[5];
    size_t argvlen[5];
    size_t len;

    if (r->state != CACHE_REDIS_CONNECTED || r->breaker.state != BREAKER_CLOSED ||
        r->st.pending_stores >= r->max_pending_stores || dim == 0 || dim > CACHE_MAX_DIM) {
        r->st.stores_dropped++;
        return;
    }
    len = cache_value_size(dim);
    if (len > r->valbuf_cap) {
        free(r->valbuf);
        r->valbuf = xmalloc(len);
        r->valbuf_cap = len;
    }
    if (cache_value_encode(vec, dim, created_ms, r->valbuf, r->valbuf_cap) != len) {
        r->st.stores_dropped++;
        return;
    }
    key_name(r, key, name);
    argv[0] = "SET";
    argvlen[0] = 3;
    argv[1] = name;
    argvlen[1] = r->prefix_len + KEY_HEX_LEN;
    argv[2] = (const char *)r->valbuf;
    argvlen[2] = len;
    argv[3] = "EX";
    argvlen[3] = 2;
    argvlen[4] = (size_t)snprintf(secs, sizeof(secs), "%llu", (unsigned long long)expire_s);
    argv[4] = secs;
    /* hiredis copies the command into its output buffer here; nothing of ours is kept. */
    if (redisAsyncCommandArgv(r->ac, on_store_reply, r, expire_s != 0 ? 5 : 3, argv, argvlen) !=
        REDIS_OK) {
        r->st.stores_dropped++;
        return;
    }
    r->st.pending_stores++;
    r->st.stores++;
}

/* ---- stats ------------------------------------------------------------------- */

void
cache_redis_stats(const struct cache_redis *r, struct cache_redis_stats *out)
{
    *out = r->st;
    out->state = r->state;
    breaker_get_stats(&r->breaker, &out->breaker);
}
