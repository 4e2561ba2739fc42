/*
 * fallback.h - the local fallback: embedding requests answered by the
 * embedded hash embedder on the worker pool, in the caller's API shape.
 */
#ifndef AKOSHA_FALLBACK_H
#define AKOSHA_FALLBACK_H

struct client;
struct fallback_job;
struct server;

/* Start the worker pool from srv->cfg; 0, or -1 with *cause (malloc'd). */
int fallback_init(struct server *srv, char **cause);
void fallback_shutdown(struct server *srv);

/*
 * Answer the client's current request from the worker pool. reason is the
 * akosha_fallback_total label. A full queue answers 503 at once; so does a
 * job shed under overload, once shed. A big answer is streamed (see
 * proxy_stream_begin) a piece at a time.
 */
void fallback_start(struct client *c, const char *reason);
/*
 * The client has taken every byte of the streamed answer so far: compute the
 * next piece. 0, or -1 when the pool refused (stopping): cut the connection.
 */
int fallback_stream_drained(struct fallback_job *job);
/*
 * The client went away or timed out: no answer is sent. The job is freed now
 * unless a worker is running it; then it stops before its next input.
 */
void fallback_detach(struct fallback_job *job);

#endif
