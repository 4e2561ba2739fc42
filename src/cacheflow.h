/*
 * cacheflow.h - the embedding cache on the request path.
 *
 * For one request: which of its inputs the cache holds (the lookup), the
 * body that asks an upstream for the others, and the vectors of the
 * upstream's answer, stored for next time and merged with the hits (the
 * store). Both steps run on the worker pool (JSON, SHA-256, copies); the
 * loop thread submits them and reads their results in the done callback.
 * The cache itself (cache.c) is shared between threads and locked.
 *
 * A flow belongs to its request until cacheflow_detach: then a lookup is
 * abandoned, and a store under way still completes (its vectors are real)
 * before the flow frees itself.
 */
#ifndef AKOSHA_CACHEFLOW_H
#define AKOSHA_CACHEFLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache_redis.h"
#include "embed_api.h"
#include "util.h"
#include "worker.h"

/* An upstream answer the cache will parse, at most; a larger one is relayed unstored. */
#define CACHEFLOW_ANSWER_MAX (128u << 20)

/* What the cache did for a request: X-Akosha-Cache, the access log. */
enum cacheflow_use {
    CACHEFLOW_NONE,    /* not an embedding request */
    CACHEFLOW_OFF,     /* no cache configured */
    CACHEFLOW_BYPASS,  /* Cache-Control: no-store or no-cache, or a body it cannot key */
    CACHEFLOW_MISS,    /* every input asked upstream */
    CACHEFLOW_PARTIAL, /* some inputs from the cache, the others from upstream */
    CACHEFLOW_HIT,     /* every input from the cache */
};
/* "off", "bypass", "miss", "partial", "hit"; NULL for CACHEFLOW_NONE. */
const char *cacheflow_use_name(enum cacheflow_use use);

struct cacheflow_params {
    struct cache *cache;
    enum embed_api api;
    const char *model;           /* canonical name, else the name as sent ("" none); copied */
    const char *revision;        /* the [model] revision, "" when none; copied */
    const unsigned char *caller; /* SHA-256 of the caller's Authorization (per_caller), or NULL */
    uint64_t ttl_ms, stale_ms;
    bool lookup;                 /* false (Cache-Control: no-cache): every input is a miss */
    struct cache_redis *redis;   /* the shared tier, or NULL: asked for the memory's misses */
};

struct cacheflow;
typedef void (*cacheflow_cb)(struct cacheflow *cf, void *arg);

struct cacheflow {
    struct worker_job job; /* first: the pool sees only this */
    struct worker_pool *pool;
    cacheflow_cb done; /* loop thread, after each step; not after detach */
    void *arg;
    bool submitted;
    bool detached;
    bool storing; /* the step under way is the store */
    /* the request (the worker's while submitted) */
    struct cacheflow_params p;
    char model[128], revision[128];
    unsigned char caller[CACHE_KEY_LEN];
    uint32_t model_tag;
    char *body; /* the caller's body, copied */
    size_t body_len;
    /* the lookup's result */
    bool usable;           /* a well-formed request of its API: the cache applies */
    size_t n;              /* its inputs */
    struct cache_key *keys;
    float **vecs;          /* per input: a copy of its cached vector, or NULL */
    unsigned char *stale;  /* per input: 1 when vecs[i] is older than ttl */
    unsigned dim;          /* of the cached vectors (0: none) */
    size_t fresh, nstale;  /* inputs with a vector within ttl, and past it */
    size_t *miss;          /* inputs without a fresh vector, ascending */
    size_t nmiss;
    struct buf miss_body;  /* when 0 < fresh < n: the request for the misses only */
    bool planned;          /* miss_body matches the misses (else cacheflow_plan builds it) */
    struct cache_redis_op *redis_op; /* the Redis lookup under way, or NULL */
    bool redis_asked;      /* cacheflow_ask_redis was called (asked or not) */
    size_t *asked;         /* the inputs Redis was asked for */
    size_t redis_hits;     /* inputs Redis had fresh */
    /* the store's */
    char *answer;          /* the upstream's 2xx answer (owned while storing) */
    size_t answer_len;
    bool whole;            /* the answer is to the caller's body, not to miss_body */
    bool stored_ok;        /* parsed: every miss now has its vector in vecs */
    float *got;            /* the answer's vectors (got_n of got_dim), for the Redis stores */
    size_t got_n;
    unsigned got_dim;
    size_t usage;          /* tokens the answer reported */
    char err[160];         /* why the store failed */
};

/* A body at most this long, of at most this many inputs, is first looked up on the loop. */
#define CACHEFLOW_INLINE_MAX_BODY 4096
#define CACHEFLOW_INLINE_MAX_INPUTS 4
/*
 * Loop thread, for a small request (see above): when every input is in
 * memory within ttl, render the whole answer (real, usage 0) into out and
 * return 1, with *er the parsed request (the caller frees it). 0 when any
 * is not: nothing is rendered, no miss is counted, and the request goes the
 * usual way (cacheflow_lookup). A hit on the loop costs less than the two
 * trips to the worker pool it saves, and hot entries keep their rendering.
 */
int cacheflow_answer_inline(const struct cacheflow_params *p, const char *body, size_t len,
                            struct embed_request *er, struct buf *out);

/*
 * Start the lookup of body's inputs. done(cf, arg) follows on the loop
 * thread. NULL when the pool refused the job (the request goes on uncached).
 */
struct cacheflow *cacheflow_lookup(struct worker_pool *pool, const struct cacheflow_params *p,
                                   const char *body, size_t len, cacheflow_cb done, void *arg);
/*
 * After the memory lookup, with a Redis tier: ask it for the memory's
 * misses. 0: done(cf, arg) follows when it answers or redis_timeout passes
 * (found entries are added, and fresh ones copied into memory); -1: Redis
 * is not asked (down, breaker open, nothing to ask) and nothing follows.
 */
int cacheflow_ask_redis(struct cacheflow *cf, cacheflow_cb done);
/*
 * Settle which inputs go upstream: recount, and when some but not all are
 * cached build the request for the misses on the worker pool. 1: settled
 * now; 0: done follows; -1: the pool refused (the request goes uncached).
 */
int cacheflow_plan(struct cacheflow *cf, cacheflow_cb done);

/*
 * Store the upstream's 2xx answer (taken: malloc'd, len bytes): to the
 * caller's whole body when whole (a background store, queued like any job),
 * else to miss_body (a merge the caller waits for: an urgent job). done follows; then
 * stored_ok says whether every miss got its vector (else err says why).
 * -1 when the pool refused (the answer is freed).
 */
int cacheflow_store(struct cacheflow *cf, char *answer, size_t len, bool whole,
                    cacheflow_cb done);
/*
 * The vectors for a fallback_request's known: per input the cached one
 * (and the stale ones when with_stale), and the stored answer's; moved out
 * of cf. *count of them are set. NULL when none is.
 */
float **cacheflow_take(struct cacheflow *cf, bool with_stale, size_t *count);
/* Whether every input has a vector (stale ones counted when with_stale). */
bool cacheflow_complete(const struct cacheflow *cf, bool with_stale);
/* The request is gone or done with it: see the top of this file. NULL is ignored. */
void cacheflow_detach(struct cacheflow *cf);

#endif
