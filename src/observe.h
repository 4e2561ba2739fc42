/*
 * observe.h - where the request path reports to metrics and tracing.
 *
 * proxy.c calls these at fixed points of a request's life, with plain
 * values: what observe keeps of a request lives in its struct observe_req,
 * and nothing here reads a connection, a request or the server. This file
 * turns the calls into Prometheus series (metrics.c) and spans (trace.c,
 * exported by otlp.c). Every call is cheap: cached series handles and
 * atomics, and a span handed off without waiting. Loop thread only.
 */
#ifndef AKOSHA_OBSERVE_H
#define AKOSHA_OBSERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embed_api.h"
#include "http.h"
#include "trace.h"

struct config;
struct upstream;
struct upstream_set;
struct worker_pool;
struct otlp_exporter;
struct accesslog;
struct cache;
struct cache_redis;
struct embed_scan;
struct fallback_outcome;

/* Buckets of the embedding_text_length histogram, its +Inf included. */
#define OBSERVE_TEXTLEN_SLOTS 11
/* A request's ended attempt spans held for its SERVER span's submit. */
#define OBSERVE_ENDED_MAX 4

/*
 * What observe keeps of one request: its trace context and spans, and the
 * sizes of its inputs until the answer's mode is known. Embedded in the
 * request and zeroed with it; only these functions read or write it.
 */
struct observe_req {
    struct trace_context parent; /* from the caller's traceparent (and tracestate) */
    bool has_parent;
    struct trace_context ctx;       /* this request's (its SERVER span's) */
    struct trace_span *span;        /* SERVER span, NULL when unsampled */
    struct trace_span *attempt;     /* CLIENT span of the current attempt, or NULL */
    uint64_t attempt_start_us;
    uint64_t attempt_end_us; /* read once by the attempt's outcome, for its metric and span */
    const struct upstream *attempt_up; /* the current attempt's upstream, NULL between them */
    /*
     * Ended CLIENT spans, owned here until the SERVER span ends and all go
     * to the exporter under one lock; past OBSERVE_ENDED_MAX, each goes as
     * it ends.
     */
    struct trace_span *ended[OBSERVE_ENDED_MAX];
    unsigned nended;
    int attempt_breaker;               /* its breaker's state when the attempt began */
    bool scanned; /* the body was a well-formed request of its API */
    uint32_t ninputs;
    uint32_t textlen[OBSERVE_TEXTLEN_SLOTS]; /* input sizes by histogram bucket */
    double textlen_sum;
};

/* A request's answer, as reported when it ends. */
struct observe_answer {
    const char *route;          /* metrics label */
    int status;                 /* 0: the client went before any answer */
    enum embed_mode mode;
    const char *model;          /* canonical, NULL when none is known */
    const char *model_sent;     /* what the caller named, "" when nothing */
    const char *response_model; /* what the answer named, "" when unknown */
    uint64_t start_us;          /* monotonic */
    uint64_t end_us;            /* monotonic: answered, or the client went */
    unsigned sniffed_dim;       /* vector size counted in a real answer, 0 if none */
    const char *cache;          /* X-Akosha-Cache ("hit", ...), NULL off embedding routes */
    uint32_t cache_hits;        /* inputs the cache held (looked up) */
    uint32_t cache_misses;      /* and those it did not */
    bool sampled;               /* trace_id is set: the request has a SERVER span */
    uint8_t trace_id[TRACE_ID_SIZE]; /* the duration histogram's exemplar */
};

/*
 * What the scrape-time collectors read: the server's current upstream set,
 * worker pool and access log, through the server's own pointers (they
 * change on reload). The pointers must outlive observe_shutdown.
 */
struct observe_sources {
    struct upstream_set *const *ups;
    struct worker_pool *const *workers;
    struct accesslog *const *alog;
    struct cache *const *cache; /* the memory tier, *cache NULL when off */
    struct cache_redis *const *redis; /* the shared tier, *redis NULL when off */
};
/* Start-up: tracing from cfg plus the environment; src is copied. 0, or -1 with *cause. */
int observe_init(const struct config *cfg, const struct observe_sources *src,
                 const char **cause);
void observe_shutdown(unsigned long timeout_ms);
void observe_reload(bool ok);
/* The span exporter, NULL when not tracing (its breaker, for /stats). */
struct otlp_exporter *observe_exporter(void);

/* Requests answered and fallback answers begun since start. */
struct observe_totals {
    uint64_t requests, fallbacks;
};
struct observe_totals observe_totals(void);

/* A request began (+1) or ended (-1): akosha_requests_in_flight. */
void observe_in_flight(int delta);
/* A request's head was read: its trace context, and its SERVER span when sampled. */
void observe_request_start(struct observe_req *o, const struct http_request_head *hd,
                           const char *request_id, uint64_t start_us);
/* The body was scanned: keep its input sizes until the answer's mode is known. */
void observe_request_scan(struct observe_req *o, const struct embed_scan *scan);
/* The tracestate to pass upstream, "" when none. */
const char *observe_tracestate(const struct observe_req *o);
/*
 * A real 2xx embedding answer is about to be relayed: count its inputs as
 * real embeddings, and return whether the answer's vector size should be
 * counted (model_dim_due for model_key; never when sized, an answer cut to
 * the caller's "dimensions").
 */
bool observe_real_answer(struct observe_req *o, const char *model_key, bool sized);
/* The request's trace id (tracing on), into out; false when there is none. */
bool observe_trace_id(const struct observe_req *o, uint8_t out[TRACE_ID_SIZE]);
/* Whether the request has a SERVER span (sampled). */
bool observe_sampled(const struct observe_req *o);
/* The SERVER span ends with the answer; a no-op when unsampled. */
void observe_server_span_end(struct observe_req *o, const struct observe_answer *a);
/* The request is over: its series, and the size its answer taught. */
void observe_request_done(const struct observe_answer *a, const char *model_key);
void observe_connection_refused(void);

/*
 * An attempt on up begins: its CLIENT span (attempt counts from 1). The first
 * traced attempt on up encodes up's own span attributes (up->span_attrs).
 */
void observe_attempt_start(struct observe_req *o, const struct http_request_head *hd,
                           struct upstream *up, unsigned attempt, const char *model);
/* Writes the traceparent for the current attempt; false when not tracing. */
bool observe_attempt_traceparent(const struct observe_req *o, char *out, size_t len);
void observe_attempt_status(struct observe_req *o, int status);
/*
 * The attempt failed: reason is the metrics class ("5xx", "timeout", ...),
 * cause the words for people ("HTTP 503", "connection refused"). The CLIENT
 * span gets status ERROR with the cause and an "exception" event.
 */
void observe_attempt_failed(struct observe_req *o, const struct upstream *up, const char *reason,
                            const char *cause);
void observe_attempt_success(struct observe_req *o, const struct upstream *up, int status);
/*
 * The attempt is over. When its upstream's breaker changed state since the
 * attempt began, the SERVER span gets an "akosha.breaker" event (old, new).
 */
void observe_attempt_end(struct observe_req *o);
/* Every upstream of set refused the call: each counts a rejected call. */
void observe_all_open(const struct upstream_set *set);
/*
 * Attempt next_attempt (counting from 1) follows after backoff_ms: counted,
 * and an "akosha.retry" event on the SERVER span.
 */
void observe_retry(struct observe_req *o, const struct upstream *up, const char *reason,
                   unsigned next_attempt, uint64_t backoff_ms);
/* An attempt found every connection slot of up busy and waits for one. */
void observe_pool_wait(const struct upstream *up);
void observe_budget_exhausted(void);

/* Answers for one configured model (canonical name) since start, for /stats. */
struct observe_model_counts {
    uint64_t requests, real, local, fallback;
};
struct observe_model_counts observe_model_counts(const char *model);
/*
 * The answer comes from the fallback for reason: counted, and an
 * "akosha.fallback" event on the SERVER span. model: the request's canonical
 * model, NULL when none is known.
 */
void observe_fallback(struct observe_req *o, const char *reason, const char *model);
/* A fallback job is over: its embeddings and its INTERNAL span. */
void observe_fallback_done(struct observe_req *o, const char *request_id,
                           const struct fallback_outcome *out);
/* A fallback job dropped: "stale", "deadline" or "cancelled". */
void observe_fallback_shed(const char *reason);
/* Embeddings produced in mode; known (per input, or NULL): 1 for a real vector passed on. */
void observe_embeddings(enum embed_mode mode, const struct embed_request *er,
                        const unsigned char *known);

#endif
