/*
 * observe.h - where the request path reports to metrics and tracing.
 *
 * proxy.c and fallback.c call these at fixed points of a request's life;
 * this file turns them into Prometheus series (metrics.c) and spans
 * (trace.c, exported by otlp.c). Every call is cheap: cached series
 * handles and atomics, and a span handed off without waiting.
 */
#ifndef AKOSHA_OBSERVE_H
#define AKOSHA_OBSERVE_H

#include <stdbool.h>
#include <stddef.h>

#include "embed_api.h"

struct server;
struct request;
struct upstream;
struct embed_scan;

/* Start-up and reload: tracing settings from cfg plus the environment. */
int observe_init(struct server *srv, const char **cause);
void observe_shutdown(struct server *srv, unsigned long timeout_ms);
void observe_reload(struct server *srv, bool ok);

/* A request began (+1) or ended (-1): akosha_requests_in_flight. */
void observe_in_flight(int delta);
void observe_request_start(struct server *srv, struct request *r);
void observe_request_done(struct server *srv, struct request *r);
/* Buckets of the embedding_text_length histogram, its +Inf included. */
#define OBSERVE_TEXTLEN_SLOTS 11
/* The request's body was scanned: keep its input sizes until its answer's mode is known. */
void observe_request_scan(struct request *r, const struct embed_scan *scan);
/*
 * A real 2xx embedding answer is about to be relayed: count its inputs as
 * real embeddings, and return whether the answer's vector size should be
 * counted (model_dim_due).
 */
bool observe_real_answer(struct server *srv, struct request *r);
/* The model key learned sizes go by: the canonical name, else the name as sent. */
const char *observe_model_key(const struct request *r);
void observe_server_span_end(struct server *srv, struct request *r);
/* The request is over (answered, or its client left): its access log line. peer: client address. */
void observe_access(struct server *srv, const struct request *r, const char *peer);
void observe_connection_refused(struct server *srv);

void observe_attempt_start(struct server *srv, struct request *r);
/* Writes the traceparent for the current attempt; false when not tracing. */
bool observe_attempt_traceparent(struct server *srv, struct request *r, char *out, size_t len);
void observe_attempt_status(struct server *srv, struct request *r, int status);
void observe_attempt_failed(struct server *srv, struct request *r, const char *reason,
                            int status);
void observe_attempt_success(struct server *srv, struct request *r);
void observe_attempt_end(struct server *srv, struct request *r);
void observe_all_open(struct server *srv, struct request *r);
void observe_retry(struct server *srv, struct request *r, const char *reason);
/* An attempt found every connection slot of up busy and waits for one. */
void observe_pool_wait(struct server *srv, struct upstream *up);
void observe_budget_exhausted(struct server *srv);

/* Answers for one configured model (canonical name) since start, for /stats. */
struct observe_model_counts {
    uint64_t requests, real, local, fallback;
};
struct observe_model_counts observe_model_counts(const char *model);
/* model: the request's canonical model, NULL when none is known. */
void observe_fallback(struct server *srv, const char *reason, const char *model);
struct fallback_outcome;
/* A fallback job is over: its embeddings, the answer's mode and model, its INTERNAL span. */
void observe_fallback_done(struct server *srv, struct request *r, const struct fallback_outcome *o);
/* A fallback job dropped: "stale", "deadline" or "cancelled". Loop thread. */
void observe_fallback_shed(struct server *srv, const char *reason);
/* Embeddings produced: mode "real" or "fallback". */
void observe_embeddings(struct server *srv, const char *mode, const struct embed_request *er);

#endif
