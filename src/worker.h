/*
 * worker.h - a bounded pool of threads for CPU work (fallback embeddings), so
 * the event loop never computes. Jobs run on a worker thread; their done()
 * callback runs afterwards on the event-loop thread, in completion order.
 *
 * Workers wake the loop through an eventfd (see worker.c), so libevent needs
 * no thread support for the pool.
 */
#ifndef AKOSHA_WORKER_H
#define AKOSHA_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;

/*
 * Intrusive: the caller embeds it in its own request state (or allocates it)
 * and owns it. The caller sets run, done and (before submitting) urgent; run()
 * may set units; the rest is the pool's.
 */
struct worker_job {
    void (*run)(struct worker_job *job);  /* on a worker thread: must not touch the loop */
    void (*done)(struct worker_job *job); /* on the loop thread after run(); may free the job */
    bool urgent;  /* served before any other, never shed, not counted against queue_size */
    bool shed;    /* set by the pool: waited past max_wait, so done() came without run() */
    size_t units; /* work run() did, in the caller's unit; teaches worker_pool_estimate_ns */
    /* pool-private */
    struct worker_job *next, *prev;
    uint64_t enqueued_ns;
    bool queued;
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
 * Queues job. Returns 0, or -1 when the queue is full (urgent jobs are never
 * refused for that) or the pool is being freed (the caller answers 503 with
 * Retry-After; job is untouched). Loop thread only. A job may be submitted
 * again from its done(): that is how work continues in pieces.
 */
int worker_pool_submit(struct worker_pool *p, struct worker_job *job)
    __attribute__((warn_unused_result));

/* Jobs waiting for a thread now (any thread; a relaxed atomic read). */
size_t worker_pool_depth(struct worker_pool *p);

/*
 * Overload policy, off (0) by default. A job that has waited max_wait_ns is
 * shed: taken off the queue unrun and handed to done() with shed set, at the
 * next submit or the next time a thread looks for work. While the oldest job
 * has waited a quarter of that (a standing queue), threads take the newest
 * job first, so what they finish is still wanted (adaptive LIFO). Loop thread.
 */
void worker_pool_set_max_wait(struct worker_pool *p, uint64_t max_wait_ns);

/*
 * Takes a job that no thread has started off the queue. Returns true, and
 * then the pool forgets the job (done() will not be called; the caller frees
 * it); false when it is running or finished (done() still comes). Loop thread.
 */
bool worker_pool_cancel(struct worker_pool *p, struct worker_job *job);

/*
 * Expected run time of a job of this many units, from a moving average of
 * the ns per unit that finished jobs reported (each run() timed by the pool);
 * 0 until a job has reported units. Any thread.
 */
uint64_t worker_pool_estimate_ns(struct worker_pool *p, size_t units);

/*
 * Drains and stops the pool: every job already submitted still runs, then the
 * threads are joined, then every outstanding done() is called here, before
 * this returns, so no job is lost and no callback fires after the pool is
 * gone. Call it on the loop thread (or once the loop has stopped). Submits
 * from those done() callbacks fail. NULL is ignored.
 */
void worker_pool_free(struct worker_pool *p);

#endif
