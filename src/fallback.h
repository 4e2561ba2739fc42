/*
 * fallback.h - the local fallback as a job service: an embedding request
 * answered on the worker pool by the model's own weights (a [model] local
 * directory) or the hash embedder, in the caller's API shape.
 *
 * The service knows nothing of connections: its caller hands in the request
 * and a sink, and gets the answer (whole, or streamed a piece at a time)
 * and the job's outcome back through the sink, on the loop thread.
 */
#ifndef AKOSHA_FALLBACK_H
#define AKOSHA_FALLBACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embed_api.h"

struct config;
struct event_base;
struct evbuffer;
struct fallback_job;
struct worker_pool;

/* The worker pool for cfg's [fallback] section. NULL with *cause (malloc'd). */
struct worker_pool *fallback_pool_new(struct event_base *base, const struct config *cfg,
                                      char **cause);

/* What a job came to, for its caller's accounting (metrics, spans). */
struct fallback_outcome {
    int status;                     /* 200, 400, or 503 when shed */
    enum embed_mode mode;           /* LOCAL (the model's own) or FALLBACK (the hash) */
    const struct embed_request *er; /* the request as parsed; NULL when it did not parse */
    const char *model_name;         /* what the answer calls the model */
    unsigned dim;
    size_t text_chars;
    uint64_t start_ns, end_ns;      /* the work, wall clock */
    const char *shed;               /* "stale" or "deadline" when shed, else NULL */
    const unsigned char *known;     /* per input, 1: answered from a known (real) vector; or NULL */
};

/* How a job hands back its answer: every call on the loop thread, with the caller's arg. */
struct fallback_sink {
    /* The whole answer: a small one, an error, or a 503 when shed. */
    void (*answer)(void *arg, int status, const char *body, size_t len, const char *headers);
    /* A big answer: its head (always 200), then pieces; the last one ends it. */
    void (*stream_begin)(void *arg, enum embed_mode mode, const char *headers);
    void (*stream_piece)(void *arg, const char *data, size_t len, bool last);
    /* The job is over: called once, before the answer or the last piece is handed on. */
    void (*finished)(void *arg, const struct fallback_outcome *o);
};

struct fallback_request {
    struct config *cfg;    /* a reference is taken: [model] sizes and local models */
    enum embed_api api;
    struct evbuffer *body; /* its bytes are moved into the job */
    const char *model;     /* canonical (owned by cfg), NULL when none is known */
    const char *model_key; /* what learned sizes go by */
    uint64_t deadline_ms;  /* monotonic: the caller's request_timeout */
    /*
     * Vectors known before the job runs (cache hits, an upstream's answer):
     * nknown entries of known_dim floats, one per input in order, NULL where
     * the job computes one. The job takes the array and every vector (it
     * frees them). Inputs with a vector are answered with it as they are
     * (real); when every input has one, the answer is real (X-Akosha-Mode:
     * real, from upstream_name), else the rest are computed at known_dim
     * and X-Akosha-Fallback-Items lists them. Ignored (freed) when the body
     * parses to another number of inputs.
     */
    float **known;
    size_t nknown;
    unsigned known_dim;
    size_t known_usage;        /* tokens to report when every vector is known */
    const char *upstream_name; /* X-Akosha-Upstream of an all-known answer (copied) */
    const char *extra_headers; /* "Name: value\r\n"... added to every answer (copied), or NULL */
};

/*
 * Queue the request. NULL when the queue is full: nothing was taken (the
 * body and the known vectors stay the caller's), and the caller answers (503). Otherwise the job calls the sink until it is over
 * or detached.
 */
struct fallback_job *fallback_submit(struct worker_pool *pool, const struct fallback_request *req,
                                     const struct fallback_sink *sink, void *arg);
/*
 * The client has taken every byte of the streamed answer so far: compute the
 * next piece. 0, or -1 when the pool refused (stopping): cut the connection.
 */
int fallback_stream_drained(struct fallback_job *job);
/*
 * The caller went away or timed out: the sink is never called again. The job
 * is freed now unless a worker is running it; then it stops before its next
 * input.
 */
void fallback_detach(struct fallback_job *job);
/* Room for fallback_answer_headers: a 63-byte upstream name and a 127-byte model fit. */
#define FALLBACK_HEADERS_MAX 320
/*
 * The headers the answers akosha renders itself carry, into out:
 * X-Akosha-Mode (mode), X-Akosha-Upstream (upstream, NULL: local),
 * X-Akosha-Model when model is not NULL, and Retry-After: 1 when asked.
 * For the fallback's answers, the cache's, and the caller's own 503s.
 */
const char *fallback_answer_headers(enum embed_mode mode, const char *upstream, const char *model,
                                    bool retry_after, char out[FALLBACK_HEADERS_MAX]);

#endif
