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
 * akosha_fallback_total label. A full queue answers 503 at once.
 */
void fallback_start(struct client *c, const char *reason);
/* The client went away: the job finishes and is freed without answering. */
void fallback_detach(struct fallback_job *job);

#endif
