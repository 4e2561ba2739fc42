/*
 * worker.h - a bounded pool of threads for CPU work (fallback embeddings), so
 * the event loop never computes. Jobs run on a worker thread; their done()
 * callback runs afterwards on the event-loop thread, in completion order.
 *
 * Requires evthread_use_pthreads() before the event_base is created: workers
 * wake the loop with event_active(), which is thread-safe only then.
 */
#ifndef AKOSHA_WORKER_H
#define AKOSHA_WORKER_H

#include <stddef.h>

struct event_base;

/* Intrusive: the caller embeds it in its own request state (or allocates it) and owns it. */
struct worker_job {
    void (*run)(struct worker_job *job);  /* on a worker thread: must not touch the loop */
    void (*done)(struct worker_job *job); /* on the loop thread after run(); may free the job */
    struct worker_job *next;              /* pool-private link */
};

struct worker_pool;

/*
 * Starts nthreads (>= 1) threads. At most queue_size jobs may wait for a
 * thread, not counting running ones or ones an idle thread is about to take.
 * Returns the pool, which the caller owns and releases with worker_pool_free,
 * or NULL with *cause set (malloc'd, caller frees).
 */
struct worker_pool *worker_pool_new(struct event_base *base, unsigned nthreads, size_t queue_size,
                                    char **cause);

/*
 * Queues job. Returns 0, or -1 when the queue is full or the pool is being
 * freed (the caller answers 503 with Retry-After; job is untouched). Loop thread only.
 */
int worker_pool_submit(struct worker_pool *p, struct worker_job *job)
    __attribute__((warn_unused_result));

/* Jobs waiting for a thread now (any thread; a relaxed atomic read). */
size_t worker_pool_depth(struct worker_pool *p);

/*
 * Drains and stops the pool: every job already submitted still runs, then the
 * threads are joined, then every outstanding done() is called here, before
 * this returns, so no job is lost and no callback fires after the pool is
 * gone. Call it on the loop thread (or once the loop has stopped). Submits
 * from those done() callbacks fail. NULL is ignored.
 */
void worker_pool_free(struct worker_pool *p);

#endif
