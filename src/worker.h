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

#include <stdatomic.h>
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
 * Help for one running job from one idle thread of its pool: the job's run()
 * splits its own work in two (the local model's dense layers, half the
 * weights each) while nothing else wants the thread. The helper spins
 * between tasks rather than sleeping, so a task starts within a
 * microsecond or so, not a futex wake-up later; it goes back to the pool as
 * soon as a job is queued, after ASSIST_IDLE_NS without a task, or at
 * worker_assist_end. A task it has not taken yet the borrower takes back
 * and runs itself, so no task ever waits for a helper that is late.
 *
 * The borrower's, usually on its stack; every field is the pool's.
 */
struct worker_assist {
    struct worker_pool *pool;
    void (*fn)(void *arg);
    void *arg;
    atomic_int task;    /* ASSIST_NONE, POSTED, TAKEN, DONE (worker.c) */
    atomic_bool closed; /* the borrower is done: the helper leaves */
    atomic_bool gone;   /* the helper has left and touches the struct no more */
    bool asked;         /* queued for a helper (queue_lock) */
    bool joined;        /* a helper took it (queue_lock) */
};

/*
 * From a job's run(): ask for an idle thread of p (one that no queued job
 * will take). Never blocks on one; with none idle, every post returns
 * false. Pair with worker_assist_end before run() returns.
 */
void worker_assist_begin(struct worker_pool *p, struct worker_assist *as);

/*
 * Give fn(arg) to the helper. true: then call worker_assist_wait before
 * reusing what fn reads or writes. false: there is no helper (none idle, or
 * it has left), and the caller runs fn itself.
 */
bool worker_assist_post(struct worker_assist *as, void (*fn)(void *arg), void *arg);

/* Until the posted fn(arg) has returned: run by the helper, or here if it had not started. */
void worker_assist_wait(struct worker_assist *as);

/* The borrower has no more tasks: returns once no helper holds as. */
void worker_assist_end(struct worker_assist *as);

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
