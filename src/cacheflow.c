/*
 * cacheflow.c - the embedding cache on the request path (see cacheflow.h).
 *
 * Keys: SHA-256 over the model's canonical name, its revision, the
 * caller's hash when per_caller, every parameter that changes the vectors
 * (embed_request_vector_params) and the input as sent: a text's bytes after
 * JSON unescaping, or its token ids. Times are wall-clock milliseconds, the
 * clock a shared tier (Redis) can agree on.
 */
#include "cacheflow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct keying {
    struct cache_keyer keyer;
    bool ok;
};

static void
key_param(void *arg, const char *name, const char *json, size_t n)
{
    struct keying *k = arg;
    const char *cause;

    if (k->ok && cache_keyer_param(&k->keyer, name, json, n, &cause) != 0) {
        k->ok = false; /* a request the key cannot describe is not cached */
    }
}

static void
drop_vector(struct cacheflow *cf, size_t i)
{
    free(cf->vecs[i]);
    cf->vecs[i] = NULL;
    cf->stale[i] = 0;
}

/* Worker thread: the body asking for the misses alone, when some inputs are cached. */
static void
build_plan(struct cacheflow *cf)
{
    cf->miss_body.len = 0;
    if (cf->fresh > 0 && cf->nmiss > 0 &&
        embed_request_subset(cf->p.api, cf->body, cf->body_len, cf->miss, cf->nmiss,
                             &cf->miss_body) != 0) {
        cf->usable = false; /* cannot ask for the misses alone: not cached */
        return;
    }
    cf->planned = true;
}

static void
plan_run(struct worker_job *wj)
{
    build_plan((struct cacheflow *)wj);
}

/* Recount after another tier added vectors: which inputs still lack a fresh one. */
static void
recount(struct cacheflow *cf)
{
    cf->fresh = cf->nstale = cf->nmiss = 0;
    for (size_t i = 0; i < cf->n; i++) {
        if (cf->vecs[i] != NULL && !cf->stale[i]) {
            cf->fresh++;
        } else {
            cf->nstale += cf->vecs[i] != NULL;
            cf->miss[cf->nmiss++] = i;
        }
    }
}

/*
 * Parse body and derive the prefix of every input's key from the model, its
 * revision, the caller and the parameters, in one JSON parse. false when
 * the body is not a request of its API, or has more parameters than a key
 * holds (er needs no freeing then).
 */
static bool
parse_and_key(const struct cacheflow_params *p, const char *model, const char *revision,
              const unsigned char *caller, const char *body, size_t len, struct embed_request *er,
              struct cache_keyer *keyer)
{
    struct keying k;
    char err[256];
    const char *param;

    cache_keyer_begin(&k.keyer, model, revision, caller);
    k.ok = true;
    if (embed_request_parse_keyed(p->api, body, len, er, err, sizeof(err), &param, key_param, &k) !=
        0) {
        return false; /* the upstream answers the caller's mistake in its own words */
    }
    if (!k.ok) {
        embed_request_free(er);
        return false;
    }
    cache_keyer_end(&k.keyer);
    *keyer = k.keyer;
    return true;
}

static void
input_key(const struct cache_keyer *keyer, const struct embed_input *in, struct cache_key *key)
{
    if (in->text != NULL) {
        cache_key_text(keyer, in->text, in->len, key);
    } else {
        cache_key_tokens(keyer, in->tokens, in->ntokens, key);
    }
}

int
cacheflow_answer_inline(const struct cacheflow_params *p, const char *body, size_t len,
                        struct embed_request *er, struct buf *out)
{
    struct cache_keyer keyer;
    struct cache_key key;
    struct buf vec;
    uint64_t now = (uint64_t)util_wall_ms();
    size_t vecs_at;
    uint32_t dim, dim0 = 0;

    if (len > CACHEFLOW_INLINE_MAX_BODY || !p->lookup ||
        !parse_and_key(p, p->model != NULL ? p->model : "", p->revision != NULL ? p->revision : "",
                       p->caller, body, len, er, &keyer)) {
        return 0;
    }
    if (er->ninputs > CACHEFLOW_INLINE_MAX_INPUTS) {
        embed_request_free(er);
        return 0;
    }
    /* Each vector as the answer writes it, one after another, then the answer around them. */
    buf_init(&vec);
    size_t ends[CACHEFLOW_INLINE_MAX_INPUTS];
    for (size_t i = 0; i < er->ninputs; i++) {
        input_key(&keyer, &er->inputs[i], &key);
        if (cache_get_text(p->cache, &key, now, p->ttl_ms,
                           er->base64 ? embed_render_base64_floats : embed_render_float_array,
                           !er->base64, &vec, &dim) != CACHE_HIT ||
            (dim0 != 0 && dim != dim0)) {
            buf_free(&vec);
            embed_request_free(er);
            return 0;
        }
        dim0 = dim;
        ends[i] = vec.len;
    }
    cache_note_hits(p->cache, er->ninputs);
    er->usage_tokens = 0;
    er->usage_known = true;
    embed_render_open(er, er->model[0] != '\0' ? er->model : p->model, out);
    vecs_at = 0;
    for (size_t i = 0; i < er->ninputs; i++) {
        embed_render_vector_text(er, i, NULL, dim0, vec.data + vecs_at, ends[i] - vecs_at, out);
        vecs_at = ends[i];
    }
    embed_render_close(er, er->model[0] != '\0' ? er->model : p->model, out);
    buf_free(&vec);
    return 1;
}

/* Worker thread: parse, key and look up every input. */
static void
lookup_run(struct worker_job *wj)
{
    struct cacheflow *cf = (struct cacheflow *)wj;
    struct embed_request er;
    struct keying k;
    uint64_t now = (uint64_t)util_wall_ms();

    if (!parse_and_key(&cf->p, cf->model, cf->revision, cf->p.caller != NULL ? cf->caller : NULL,
                       cf->body, cf->body_len, &er, &k.keyer)) {
        return;
    }
    cf->n = er.ninputs;
    cf->keys = xcalloc(cf->n, sizeof(*cf->keys));
    cf->vecs = xcalloc(cf->n, sizeof(*cf->vecs));
    cf->stale = xcalloc(cf->n, 1);
    cf->miss = xcalloc(cf->n, sizeof(*cf->miss));
    for (size_t i = 0; i < cf->n; i++) {
        const struct embed_input *in = &er.inputs[i];
        enum cache_result got = CACHE_MISS;
        uint32_t dim = 0;

        input_key(&k.keyer, in, &cf->keys[i]);
        if (cf->p.lookup) {
            got = cache_get_copy(cf->p.cache, &cf->keys[i], now, cf->p.ttl_ms, cf->p.stale_ms,
                                 &cf->vecs[i], &dim);
        }
        if (got != CACHE_MISS && cf->dim != 0 && dim != cf->dim) {
            got = CACHE_MISS; /* one answer has one size: the odd one is asked again */
            drop_vector(cf, i);
        }
        if (got != CACHE_MISS) {
            cf->dim = dim;
        }
        cf->stale[i] = got == CACHE_STALE;
    }
    embed_request_free(&er);
    recount(cf);
    cf->usable = true;
    if (cf->p.redis != NULL && cf->p.lookup && cf->nmiss > 0) {
        return; /* Redis may hold more: the plan waits for its answer */
    }
    build_plan(cf);
}

/* Worker thread: parse the upstream's answer, store its vectors, keep them for the merge. */
static void
store_run(struct worker_job *wj)
{
    struct cacheflow *cf = (struct cacheflow *)wj;
    size_t nans = cf->whole ? cf->n : cf->nmiss;
    uint64_t now = (uint64_t)util_wall_ms();
    float *vecs = NULL;
    unsigned dim = 0;
    bool usage_known;
    const char *cause;

    if (embed_answer_parse(cf->p.api, cf->answer, cf->answer_len, nans, &vecs, &dim, &cf->usage,
                           &usage_known, cf->err, sizeof(cf->err)) != 0) {
        return;
    }
    if (!cf->whole && cf->fresh > 0 && dim != cf->dim) {
        snprintf(cf->err, sizeof(cf->err),
                 "the upstream's vectors have %u elements and the cached ones %u: bump the "
                 "model's revision (or purge the cache) when its model changes",
                 dim, cf->dim);
        free(vecs);
        return;
    }
    for (size_t k = 0; k < nans; k++) {
        size_t i = cf->whole ? k : cf->miss[k];
        const float *v = vecs + k * dim;
        if (cache_put(cf->p.cache, &cf->keys[i], cf->model_tag, v, dim, now, &cause) != 0) {
            log_debug("cache: input %zu not stored: %s", i, cause);
        }
        if (!cf->whole) {
            drop_vector(cf, i); /* a stale one gives way to the fresh answer */
            cf->vecs[i] = xmalloc((size_t)dim * sizeof(float));
            memcpy(cf->vecs[i], v, (size_t)dim * sizeof(float));
        }
    }
    cf->dim = dim;
    if (cf->p.redis != NULL) {
        cf->got = vecs; /* the loop sends them to Redis (flow_done) */
        cf->got_n = nans;
        cf->got_dim = dim;
    } else {
        free(vecs);
    }
    cf->stored_ok = true;
}

/* Loop thread: the stored answer's vectors go to the shared tier too. */
static void
store_redis(struct cacheflow *cf)
{
    uint64_t now = (uint64_t)util_wall_ms();
    uint64_t expire_s = (cf->p.stale_ms + 999) / 1000;

    for (size_t k = 0; cf->got != NULL && k < cf->got_n; k++) {
        size_t i = cf->whole ? k : cf->miss[k];
        cache_redis_store(cf->p.redis, &cf->keys[i], cf->got + k * cf->got_dim, cf->got_dim, now,
                          expire_s);
    }
    free(cf->got);
    cf->got = NULL;
}

static void
flow_free(struct cacheflow *cf)
{
    for (size_t i = 0; cf->vecs != NULL && i < cf->n; i++) {
        free(cf->vecs[i]);
    }
    free(cf->vecs);
    free(cf->keys);
    free(cf->stale);
    free(cf->miss);
    free(cf->body);
    free(cf->answer);
    free(cf->got);
    free(cf->asked);
    if (cf->redis_op != NULL) {
        cache_redis_cancel(cf->redis_op);
    }
    buf_free(&cf->miss_body);
    free(cf);
}

/* Loop thread: a step is over. */
static void
flow_done(struct worker_job *wj)
{
    struct cacheflow *cf = (struct cacheflow *)wj;

    cf->submitted = false;
    free(cf->answer);
    cf->answer = NULL;
    if (cf->storing && cf->stored_ok && cf->got != NULL) {
        store_redis(cf);
    }
    if (wj->shed && !cf->storing) {
        cf->usable = false; /* waited queue_timeout: the request goes on uncached */
    }
    if (wj->shed && cf->storing) {
        snprintf(cf->err, sizeof(cf->err), "the worker pool is overloaded");
    }
    if (cf->detached || cf->done == NULL) {
        flow_free(cf);
        return;
    }
    cf->done(cf, cf->arg);
}

struct cacheflow *
cacheflow_lookup(struct worker_pool *pool, const struct cacheflow_params *p, const char *body,
                 size_t len, cacheflow_cb done, void *arg)
{
    struct cacheflow *cf = xcalloc(1, sizeof(*cf));

    cf->job.run = lookup_run;
    cf->job.done = flow_done;
    cf->pool = pool;
    cf->done = done;
    cf->arg = arg;
    cf->p = *p;
    snprintf(cf->model, sizeof(cf->model), "%s", p->model != NULL ? p->model : "");
    snprintf(cf->revision, sizeof(cf->revision), "%s", p->revision != NULL ? p->revision : "");
    if (p->caller != NULL) {
        memcpy(cf->caller, p->caller, CACHE_KEY_LEN);
    }
    cf->model_tag = cache_model_tag(cf->model);
    cf->body = xmalloc(len + 1);
    memcpy(cf->body, body, len);
    cf->body[len] = '\0';
    cf->body_len = len;
    buf_init(&cf->miss_body);
    if (worker_pool_submit(pool, &cf->job) < 0) {
        flow_free(cf);
        return NULL;
    }
    cf->submitted = true;
    return cf;
}

const char *
cacheflow_use_name(enum cacheflow_use use)
{
    static const char *names[] = {NULL, "off", "bypass", "miss", "partial", "hit"};

    return names[use];
}

int
cacheflow_store(struct cacheflow *cf, char *answer, size_t len, bool whole, cacheflow_cb done)
{
    cf->done = done;
    cf->answer = answer;
    cf->answer_len = len;
    cf->whole = whole;
    cf->storing = true;
    cf->stored_ok = false;
    cf->err[0] = '\0';
    cf->job.run = store_run;
    cf->job.shed = false;
    /*
     * A merge answers a caller who waits and whose upstream already answered:
     * ahead of the queue, never shed (one per request at most, so bounded by
     * the connections). A background store of a relayed answer may wait.
     */
    cf->job.urgent = !whole;
    if (worker_pool_submit(cf->pool, &cf->job) < 0) {
        free(cf->answer);
        cf->answer = NULL;
        return -1;
    }
    cf->submitted = true;
    return 0;
}

bool
cacheflow_complete(const struct cacheflow *cf, bool with_stale)
{
    if (!cf->usable || cf->n == 0) {
        return false;
    }
    for (size_t i = 0; i < cf->n; i++) {
        if (cf->vecs[i] == NULL || (cf->stale[i] && !with_stale)) {
            return false;
        }
    }
    return true;
}

float **
cacheflow_take(struct cacheflow *cf, bool with_stale, size_t *count)
{
    float **out;

    *count = 0;
    if (!cf->usable || cf->n == 0) {
        return NULL;
    }
    out = xcalloc(cf->n, sizeof(*out));
    for (size_t i = 0; i < cf->n; i++) {
        if (cf->vecs[i] != NULL && (with_stale || !cf->stale[i])) {
            out[i] = cf->vecs[i];
            cf->vecs[i] = NULL;
            (*count)++;
        }
    }
    if (*count == 0) {
        free(out);
        return NULL;
    }
    return out;
}

void
cacheflow_detach(struct cacheflow *cf)
{
    if (cf == NULL) {
        return;
    }
    cf->arg = NULL;
    cf->detached = true;
    if (!cf->submitted) {
        flow_free(cf);
        return;
    }
    if (!cf->storing && worker_pool_cancel(cf->pool, &cf->job)) {
        flow_free(cf);
    }
    /* else running, or a store that still completes: flow_done frees it */
}

/* Loop thread: Redis answered (or its time ran out: every key a miss). */
static void
redis_answered(const struct cache_redis_result *res, size_t n, void *arg)
{
    struct cacheflow *cf = arg;
    uint64_t now = (uint64_t)util_wall_ms();
    const char *cause;

    cf->redis_op = NULL;
    for (size_t k = 0; k < n; k++) {
        size_t i = cf->asked[k];
        uint64_t age;
        bool stale;

        if (res[k].vec == NULL || (cf->dim != 0 && res[k].dim != cf->dim)) {
            continue;
        }
        age = now > res[k].created_ms ? now - res[k].created_ms : 0;
        if (age > cf->p.stale_ms) {
            continue;
        }
        stale = age > cf->p.ttl_ms;
        if (cf->vecs[i] != NULL && (stale || !cf->stale[i])) {
            continue; /* memory's is as good */
        }
        free(cf->vecs[i]);
        cf->vecs[i] = xmalloc((size_t)res[k].dim * sizeof(float));
        memcpy(cf->vecs[i], res[k].vec, (size_t)res[k].dim * sizeof(float));
        cf->stale[i] = stale;
        cf->dim = res[k].dim;
        if (!stale) {
            cf->redis_hits++;
            /* The next request on this host finds it in memory. */
            if (cache_put(cf->p.cache, &cf->keys[i], cf->model_tag, res[k].vec, res[k].dim,
                          res[k].created_ms, &cause) != 0) {
                log_debug("cache: a Redis entry not copied to memory: %s", cause);
            }
        }
    }
    free(cf->asked);
    cf->asked = NULL;
    recount(cf);
    if (cf->detached) {
        flow_free(cf);
        return;
    }
    cf->done(cf, cf->arg);
}

int
cacheflow_ask_redis(struct cacheflow *cf, cacheflow_cb done)
{
    struct cache_key *keys;
    int rc;

    if (cf->redis_asked || cf->p.redis == NULL || !cf->usable || !cf->p.lookup ||
        cf->nmiss == 0) {
        return -1;
    }
    cf->redis_asked = true;
    keys = xmalloc(cf->nmiss * sizeof(*keys));
    cf->asked = xmalloc(cf->nmiss * sizeof(*cf->asked));
    for (size_t k = 0; k < cf->nmiss; k++) {
        cf->asked[k] = cf->miss[k];
        keys[k] = cf->keys[cf->miss[k]];
    }
    cf->done = done;
    rc = cache_redis_mget(cf->p.redis, keys, cf->nmiss, redis_answered, cf, &cf->redis_op);
    free(keys);
    if (rc != 0) {
        free(cf->asked);
        cf->asked = NULL;
        cf->redis_op = NULL;
        return -1;
    }
    return 0;
}

int
cacheflow_plan(struct cacheflow *cf, cacheflow_cb done)
{
    recount(cf);
    if (cf->planned || cf->fresh == 0 || cf->fresh == cf->n) {
        cf->planned = true;
        return 1;
    }
    cf->done = done;
    cf->job.run = plan_run;
    cf->job.shed = false;
    if (worker_pool_submit(cf->pool, &cf->job) < 0) {
        return -1;
    }
    cf->submitted = true;
    return 0;
}
