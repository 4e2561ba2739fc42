/*
 * cache_redis.h - the embedding cache's Redis tier, shared by every sidecar of
 * a service: one asynchronous hiredis connection driven by the caller's
 * libevent loop, a breaker of its own ("cache-redis"), bounded queues.
 *
 * The loop never blocks: the address must be a numeric IP (or "localhost",
 * taken as 127.0.0.1 when parsed) or a unix socket, because hiredis resolves a
 * host name with a blocking getaddrinfo; connects, AUTH, SELECT and every
 * command are asynchronous. A slow or dead Redis adds at most timeout_ms to a
 * lookup and never fails one: every way a lookup can go wrong ends as misses.
 *
 * Keys. An entry's Redis key is prefix followed by the 64 lowercase hex digits
 * of its struct cache_key ("akosha:3f5a..."): printable, so redis-cli can show
 * and delete them, at 32 bytes more per key than binary. Values are
 * cache_value_encode's format (cache.h), versioned and described in
 * akosha.conf(5). created_ms is whatever the caller stores; sidecars share
 * entries, so it should be wall-clock time (util_wall_ms), not monotonic.
 *
 * Pipelining. hiredis appends each command to the connection's output buffer
 * and writes the buffer when the socket is next writable, so every lookup and
 * store issued during one turn of the loop goes out in one write. A lookup is
 * one MGET of all its keys.
 *
 * Threads: everything here runs on the loop thread that owns the event_base;
 * cache_redis_stats too (it copies plain numbers for other threads). Free the
 * tier before the event_base. hiredis writes with write(2), so the process
 * must ignore SIGPIPE (server.c does) or a dead Redis would kill it.
 */
#ifndef AKOSHA_CACHE_REDIS_H
#define AKOSHA_CACHE_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "cache.h"
#include "config.h"

struct event_base;

#define CACHE_REDIS_BREAKER_NAME "cache-redis"
#define CACHE_REDIS_DEFAULT_PREFIX "akosha:"
#define CACHE_REDIS_DEFAULT_TIMEOUT_MS 20
#define CACHE_REDIS_DEFAULT_MAX_INFLIGHT 1024
#define CACHE_REDIS_DEFAULT_MAX_PENDING_STORES 4096
#define CACHE_REDIS_DEFAULT_CONNECT_TIMEOUT_MS 1000
#define CACHE_REDIS_DEFAULT_RECONNECT_MAX_MS 1000
#define CACHE_REDIS_MAX_KEYS 2048 /* one lookup's keys at most (EMBED_MAX_INPUTS) */
#define CACHE_REDIS_PREFIX_MAX CONFIG_REDIS_PREFIX_MAX

/* The breaker's defaults here: a cache is cheap to retry, so it opens for 5 s, not 60. */
#define CACHE_REDIS_BREAKER_FAILURES 5
#define CACHE_REDIS_BREAKER_OPEN_MS 5000
#define CACHE_REDIS_BREAKER_TRIALS 1
#define CACHE_REDIS_BREAKER_SUCCESSES 1

/* ---- the tier ------------------------------------------------------------ */

/* Strings are copied by cache_redis_new. Zero numbers and NULL pointers mean the defaults. */
struct cache_redis_settings {
    const char *address;         /* required: config_parse_redis_addr's forms */
    const char *password;        /* overrides the address's; NULL or "": the address's */
    const char *prefix;          /* NULL: CACHE_REDIS_DEFAULT_PREFIX; "" is allowed */
    uint64_t timeout_ms;         /* a lookup's limit */
    uint32_t max_inflight;       /* lookups Redis has not answered yet, timed out ones too */
    uint32_t max_pending_stores; /* stores Redis has not acknowledged yet */
    uint64_t connect_timeout_ms; /* a connect (TCP) not done by then is retried */
    uint64_t reconnect_max_ms;   /* the backoff's cap between connect attempts */
    const struct breaker_config *breaker; /* NULL: the CACHE_REDIS_BREAKER_* values */
};

struct cache_redis;
struct cache_redis_op;

/* One key's outcome; results[i] answers keys[i]. */
struct cache_redis_result {
    const float *vec; /* NULL: a miss; else dim floats owned by the tier, valid during the call */
    uint32_t dim;
    uint64_t created_ms;
};

/*
 * A lookup's answer, on the loop thread, never from inside cache_redis_mget.
 * results and the vectors belong to the tier and are valid only during the
 * call. The callback may start lookups and stores and cancel other ops; it
 * must not call cache_redis_free.
 */
typedef void (*cache_redis_done_cb)(const struct cache_redis_result *results, size_t n,
                                    void *arg);

/*
 * Start connecting (asynchronously: this returns before the connect ends).
 * NULL with *cause (static) for a bad address or prefix. The caller owns the
 * result (cache_redis_free); aborts on out-of-memory like xmalloc. The
 * password is never logged.
 */
struct cache_redis *cache_redis_new(struct event_base *base, const struct cache_redis_settings *s,
                                    const char **cause);

/*
 * Disconnect and free everything. Lookups still waiting are freed without
 * their callbacks being called (their op handles become invalid); stores not
 * yet written are dropped. Do not call it from a cache_redis_done_cb.
 */
void cache_redis_free(struct cache_redis *r);

/*
 * Look n keys (1..CACHE_REDIS_MAX_KEYS) up with one MGET.
 *
 * 0: Redis was asked. cb runs exactly once, later, with a result per key,
 * unless cache_redis_cancel(*op) runs first: a hit, or a miss for an absent
 * key, a value that does not decode (also counted as an error), an error
 * reply, a lost connection, or timeout_ms passing first (a late reply is then
 * discarded). *op (owned by the tier) is valid until cb runs or it is
 * cancelled, whichever comes first.
 *
 * -1: Redis was not asked and every key is a miss now: not connected, the
 * breaker is open, max_inflight lookups are waiting, or n is 0 or too big.
 * cb is never called and *op is NULL. Why is counted in the stats. (An
 * immediate answer is returned rather than called back, so the caller never
 * runs its completion re-entrantly nor waits a loop turn for nothing.)
 */
int cache_redis_mget(struct cache_redis *r, const struct cache_key *keys, size_t n,
                     cache_redis_done_cb cb, void *arg, struct cache_redis_op **op)
    __attribute__((warn_unused_result));

/*
 * The caller goes away: cb will not be called. The op's memory is reclaimed
 * when Redis answers or the connection closes. Only for an op whose callback
 * has not run yet.
 */
void cache_redis_cancel(struct cache_redis_op *op);

/*
 * SET key value EX expire_s (0: no expiry), fire and forget, pipelined with
 * whatever else this loop turn sends. Dropped and counted (never queued for
 * later) while not connected, while the breaker is not closed, when
 * max_pending_stores are unacknowledged, or when dim is out of range.
 */
void cache_redis_store(struct cache_redis *r, const struct cache_key *key, const float *vec,
                       uint32_t dim, uint64_t created_ms, uint64_t expire_s);

/* ---- stats ------------------------------------------------------------------ */

/*
 * Lookup latency buckets, upper bounds in microseconds, from sending the MGET
 * to its reply, for lookups answered in time. Counts in latency_buckets are
 * per bucket (not cumulative); the last one is +Inf.
 */
#define CACHE_REDIS_LATENCY_NBOUNDS 10
/* 100 250 500 1000 2500 5000 10000 25000 50000 100000 */
extern const uint32_t cache_redis_latency_bounds_us[CACHE_REDIS_LATENCY_NBOUNDS];

enum cache_redis_conn_state {
    CACHE_REDIS_DISCONNECTED, /* waiting to retry */
    CACHE_REDIS_CONNECTING,
    CACHE_REDIS_CONNECTED,
};

struct cache_redis_stats {
    enum cache_redis_conn_state state;
    struct breaker_stats breaker;
    uint64_t lookups;          /* cache_redis_mget calls */
    uint64_t lookups_skipped;  /* returned -1: not connected, breaker open, bound, bad n */
    uint64_t lookups_overflow; /* of those, for max_inflight */
    uint64_t keys;             /* keys asked of Redis */
    uint64_t hits;             /* keys answered with a vector */
    uint64_t misses;           /* keys asked of Redis and not answered with a vector */
    uint64_t errors;           /* error replies, lost connections, undecodable values */
    uint64_t timeouts;         /* lookups answered all-miss because timeout_ms passed */
    uint64_t late_replies;     /* replies that came after their lookup timed out */
    uint64_t stores;           /* SETs sent */
    uint64_t stores_dropped;   /* not sent: see cache_redis_store */
    uint64_t store_errors;     /* SETs answered with an error or lost with the connection */
    uint64_t connects;         /* connections established */
    uint64_t connect_failures;
    uint32_t inflight;       /* lookups Redis has not answered (timed out ones too) */
    uint32_t pending_stores; /* SETs not acknowledged */
    uint64_t latency_buckets[CACHE_REDIS_LATENCY_NBOUNDS + 1];
    uint64_t latency_count;
    uint64_t latency_sum_us;
};

void cache_redis_stats(const struct cache_redis *r, struct cache_redis_stats *out);

/* "disconnected", "connecting", "connected"; static strings. */
const char *cache_redis_state_name(enum cache_redis_conn_state s);

#endif
