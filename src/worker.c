/*
 * worker.c - the worker thread pool (see worker.h).
 *
 * Two lists, two locks: the job queue (workers take from it) and the
 * completion list (workers append, the loop drains). A worker that appends
 * writes to an eventfd the loop watches; the drain reads the counter and
 * takes the whole list, so no completion is ever missed or delivered twice.
 *
 * An eventfd rather than event_active(): cross-thread activation needs
 * libevent's thread support, which puts a mutex around every event and
 * buffer operation of the whole proxy. The eventfd's read event is added
 * only while jobs are outstanding, so the loop stays alive exactly as long
 * as the pool has work, like a referenced handle in libuv.
 *
 * Under overload the queue is a deque: oldest at the head, newest at the
 * tail. Urgent jobs (the continuation of an answer already started) have a
 * list of their own and go first. With max_wait set, jobs that waited too long
 * are shed onto the completion list unrun, and a standing queue is served
 * newest first: a job taken fresh finishes while its caller still waits,
 * where first-in-first-out would finish only jobs whose callers gave up.
 */
#define _GNU_SOURCE
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

struct worker_pool {
    struct event_base *base;
    struct event *wakeup;
    int efd; /* eventfd: workers write, the loop reads */
    pthread_t *threads;
    unsigned nthreads; /* started successfully */
    size_t queue_size;

    pthread_mutex_t queue_lock; /* guards queue_*, urgent_*, waiting, idle, stopping, max_wait */
    pthread_cond_t queue_cond;
    struct worker_job *queue_head, *queue_tail;   /* oldest first */
    struct worker_job *urgent_head, *urgent_tail; /* continuations: first served */
    size_t waiting;                               /* both lists */
    size_t nurgent;
    uint64_t max_wait_ns; /* 0: never shed, always oldest first */
    unsigned idle;        /* threads blocked waiting for a job */
    bool stopping;
    atomic_size_t depth; /* mirror of waiting for lock-free reads */

    pthread_mutex_t done_lock; /* guards done_*, ns_per_unit */
    struct worker_job *done_head, *done_tail;
    double ns_per_unit; /* moving average of finished runs; 0 before the first */

    struct worker_assist *assist; /* a borrower waiting for an idle thread (queue_lock) */

    size_t outstanding; /* submitted, done() not yet called; loop thread only */
};

enum { ASSIST_NONE, ASSIST_POSTED, ASSIST_TAKEN, ASSIST_DONE };

/*
 * How long a helper spins without a task before it goes back to sleep: the
 * gaps between a 12-token text's dense layers (attention, layer norms) are
 * 10-30 us; a longer gap means work that does not split, and the thread is
 * better asleep.
 */
#define ASSIST_IDLE_NS 200000u

static void
append(struct worker_job **head, struct worker_job **tail, struct worker_job *job)
{
    job->next = NULL;
    job->prev = *tail;
    if (*tail != NULL) {
        (*tail)->next = job;
    } else {
        *head = job;
    }
    *tail = job;
}

static void
unlink_job(struct worker_job **head, struct worker_job **tail, struct worker_job *job)
{
    if (job->prev != NULL) {
        job->prev->next = job->next;
    } else {
        *head = job->next;
    }
    if (job->next != NULL) {
        job->next->prev = job->prev;
    } else {
        *tail = job->prev;
    }
    job->next = job->prev = NULL;
}

static uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Under queue_lock: job leaves whichever list holds it. */
static void
dequeue(struct worker_pool *p, struct worker_job *job)
{
    if (job->urgent) {
        unlink_job(&p->urgent_head, &p->urgent_tail, job);
        p->nurgent--;
    } else {
        unlink_job(&p->queue_head, &p->queue_tail, job);
    }
    job->queued = false;
    p->waiting--;
    atomic_store_explicit(&p->depth, p->waiting, memory_order_relaxed);
}

/* Under queue_lock: moves jobs that waited past max_wait onto *shed (a list by next). */
static void
shed_stale(struct worker_pool *p, uint64_t now, struct worker_job **shed)
{
    while (p->max_wait_ns > 0 && p->queue_head != NULL &&
           now - p->queue_head->enqueued_ns >= p->max_wait_ns) {
        struct worker_job *job = p->queue_head;
        dequeue(p, job);
        job->shed = true;
        job->next = *shed;
        *shed = job;
    }
}

/* Under queue_lock: the next job to run, or NULL. */
static struct worker_job *
pick(struct worker_pool *p, uint64_t now)
{
    struct worker_job *job = p->urgent_head;

    if (job == NULL && p->queue_head != NULL) {
        bool standing =
            p->max_wait_ns > 0 && now - p->queue_head->enqueued_ns >= p->max_wait_ns / 4;
        job = standing ? p->queue_tail : p->queue_head;
    }
    if (job != NULL) {
        dequeue(p, job);
    }
    return job;
}

/* Hands finished (or shed) jobs to the loop. Takes done_lock; call without queue_lock. */
static void
complete(struct worker_pool *p, struct worker_job *list)
{
    uint64_t one = 1;

    if (list == NULL) {
        return;
    }
    pthread_mutex_lock(&p->done_lock);
    while (list != NULL) {
        struct worker_job *next = list->next;
        append(&p->done_head, &p->done_tail, list);
        list = next;
    }
    pthread_mutex_unlock(&p->done_lock);
    /* Cannot fail short of a counter overflow; the loop drains everything anyway. */
    if (write(p->efd, &one, sizeof(one)) < 0) {
        log_warn("worker pool: eventfd write: %s", strerror(errno));
    }
}

static void
learn(struct worker_pool *p, size_t units, uint64_t ns)
{
    double sample;

    if (units == 0) {
        return;
    }
    sample = (double)ns / (double)units;
    pthread_mutex_lock(&p->done_lock);
    /* weight 1/8: a few jobs of a new kind move it, one odd job does not */
    p->ns_per_unit = p->ns_per_unit == 0 ? sample : p->ns_per_unit + (sample - p->ns_per_unit) / 8;
    pthread_mutex_unlock(&p->done_lock);
}

static void
deliver_completions(struct worker_pool *p)
{
    struct worker_job *job;

    pthread_mutex_lock(&p->done_lock);
    job = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->done_lock);
    while (job != NULL) {
        struct worker_job *next = job->next; /* done() may free job */
        p->outstanding--;
        job->done(job);
        job = next;
    }
    if (p->outstanding == 0) {
        event_del(p->wakeup);
    }
}

static void
wakeup_cb(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;

    (void)what;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN) {
        log_warn("worker pool: eventfd read: %s", strerror(errno));
    }
    deliver_completions(arg);
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/*
 * One turn of a borrower's wait for its helper (*spins counts them): a pause,
 * and now and then the CPU given up, in case the helper was preempted.
 */
static inline void
borrower_spin(unsigned *spins)
{
    cpu_relax();
    if (++*spins % 4096 == 0) {
        sched_yield();
    }
}

/*
 * A helper thread, without queue_lock: run the borrower's tasks until it
 * closes, a job is queued, or ASSIST_IDLE_NS pass without a task.
 */
static void
assist_serve(struct worker_pool *p, struct worker_assist *as)
{
    uint64_t idle_since = now_ns();
    unsigned spins = 0;

    while (!atomic_load_explicit(&as->closed, memory_order_acquire)) {
        int posted = ASSIST_POSTED;
        if (atomic_load_explicit(&as->task, memory_order_relaxed) == ASSIST_POSTED &&
            atomic_compare_exchange_strong_explicit(&as->task, &posted, ASSIST_TAKEN,
                                                    memory_order_acquire, memory_order_relaxed)) {
            as->fn(as->arg);
            atomic_store_explicit(&as->task, ASSIST_DONE, memory_order_release);
            idle_since = now_ns();
            continue;
        }
        cpu_relax();
        if (++spins % 64 != 0) {
            continue;
        }
        if (atomic_load_explicit(&p->depth, memory_order_relaxed) > 0 ||
            now_ns() - idle_since > ASSIST_IDLE_NS) {
            break;
        }
    }
    atomic_store_explicit(&as->gone, true, memory_order_release);
}

void
worker_assist_begin(struct worker_pool *p, struct worker_assist *as)
{
    as->pool = p;
    atomic_init(&as->task, ASSIST_NONE);
    atomic_init(&as->closed, false);
    atomic_init(&as->gone, false);
    as->asked = as->joined = false;
    pthread_mutex_lock(&p->queue_lock);
    /* Only a thread no queued job is about to take, and one borrower at a time. */
    if (p->assist == NULL && p->idle > p->waiting && !p->stopping) {
        p->assist = as;
        as->asked = true;
        pthread_cond_signal(&p->queue_cond);
    }
    pthread_mutex_unlock(&p->queue_lock);
    if (!as->asked) {
        atomic_store_explicit(&as->gone, true, memory_order_relaxed);
    }
}

bool
worker_assist_post(struct worker_assist *as, void (*fn)(void *arg), void *arg)
{
    if (atomic_load_explicit(&as->gone, memory_order_acquire)) {
        return false;
    }
    as->fn = fn;
    as->arg = arg;
    atomic_store_explicit(&as->task, ASSIST_POSTED, memory_order_release);
    return true;
}

void
worker_assist_wait(struct worker_assist *as)
{
    int posted = ASSIST_POSTED;
    unsigned spins = 0;

    /* Not started yet (the helper is still waking up, or has left): run it here. */
    if (atomic_compare_exchange_strong_explicit(&as->task, &posted, ASSIST_NONE,
                                                memory_order_acquire, memory_order_relaxed)) {
        as->fn(as->arg);
        return;
    }
    /* The helper runs it: as long as the caller's own half, give or take. */
    while (atomic_load_explicit(&as->task, memory_order_acquire) != ASSIST_DONE) {
        borrower_spin(&spins);
    }
    atomic_store_explicit(&as->task, ASSIST_NONE, memory_order_relaxed);
}

void
worker_assist_end(struct worker_assist *as)
{
    struct worker_pool *p = as->pool;
    unsigned spins = 0;
    bool joined;

    if (!as->asked) {
        return;
    }
    atomic_store_explicit(&as->closed, true, memory_order_release);
    pthread_mutex_lock(&p->queue_lock);
    if (p->assist == as) {
        p->assist = NULL; /* no thread came for it */
    }
    joined = as->joined;
    pthread_mutex_unlock(&p->queue_lock);
    /* The helper is between tasks: it sees closed at its next look, unless preempted. */
    while (joined && !atomic_load_explicit(&as->gone, memory_order_acquire)) {
        borrower_spin(&spins);
    }
}

static void *
worker_main(void *arg)
{
    struct worker_pool *p = arg;

    pthread_mutex_lock(&p->queue_lock);
    for (;;) {
        struct worker_job *job, *shed = NULL;
        uint64_t start;

        while (p->waiting == 0 && p->assist == NULL && !p->stopping) {
            p->idle++;
            pthread_cond_wait(&p->queue_cond, &p->queue_lock);
            p->idle--;
        }
        if (p->waiting == 0 && p->assist != NULL) {
            struct worker_assist *as = p->assist;
            p->assist = NULL;
            as->joined = true;
            pthread_mutex_unlock(&p->queue_lock);
            assist_serve(p, as);
            pthread_mutex_lock(&p->queue_lock);
            continue;
        }
        if (p->waiting == 0) {
            break; /* stopping, and the queue is drained */
        }
        start = now_ns();
        shed_stale(p, start, &shed);
        job = pick(p, start);
        pthread_mutex_unlock(&p->queue_lock);
        complete(p, shed);

        if (job != NULL) {
            job->units = 0;
            job->run(job);
            learn(p, job->units, now_ns() - start);
            job->next = NULL;
            complete(p, job);
        }

        pthread_mutex_lock(&p->queue_lock);
    }
    pthread_mutex_unlock(&p->queue_lock);
    return NULL;
}

/* Wakes every thread, lets them finish the queue, and joins them. */
static void
stop_threads(struct worker_pool *p)
{
    pthread_mutex_lock(&p->queue_lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->queue_cond);
    pthread_mutex_unlock(&p->queue_lock);
    for (unsigned i = 0; i < p->nthreads; i++) {
        pthread_join(p->threads[i], NULL);
    }
    p->nthreads = 0;
}

static void
destroy(struct worker_pool *p)
{
    if (p->wakeup != NULL) {
        event_free(p->wakeup);
    }
    if (p->efd >= 0) {
        close(p->efd);
    }
    pthread_cond_destroy(&p->queue_cond);
    pthread_mutex_destroy(&p->queue_lock);
    pthread_mutex_destroy(&p->done_lock);
    free(p->threads);
    free(p);
}

struct worker_pool *
worker_pool_new(struct event_base *base, unsigned nthreads, size_t queue_size, char **cause)
{
    struct worker_pool *p;
    sigset_t all, old;

    if (nthreads == 0) {
        *cause = xstrdup("worker pool needs at least one thread");
        return NULL;
    }
    p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->queue_size = queue_size;
    p->threads = xcalloc(nthreads, sizeof(*p->threads));
    atomic_init(&p->depth, 0);
    pthread_mutex_init(&p->queue_lock, NULL);
    pthread_mutex_init(&p->done_lock, NULL);
    pthread_cond_init(&p->queue_cond, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        *cause = xasprintf("cannot create the worker eventfd: %s", strerror(errno));
        p->wakeup = NULL;
        destroy(p);
        return NULL;
    }
    p->wakeup = event_new(base, p->efd, EV_READ | EV_PERSIST, wakeup_cb, p);
    if (p->wakeup == NULL) {
        *cause = xstrdup("cannot create the worker wakeup event");
        destroy(p);
        return NULL;
    }
    /* Workers inherit a full signal mask, so signals reach the loop thread only. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < nthreads; i++) {
        int rc = pthread_create(&p->threads[i], NULL, worker_main, p);
        if (rc != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            *cause =
                xasprintf("cannot start worker thread %u of %u: %s", i + 1, nthreads, strerror(rc));
            stop_threads(p);
            destroy(p);
            return NULL;
        }
        pthread_setname_np(p->threads[i], "akosha-worker");
        p->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    log_debug("worker pool: %u threads, queue %zu", nthreads, queue_size);
    return p;
}

int
worker_pool_submit(struct worker_pool *p, struct worker_job *job)
{
    struct worker_job *shed = NULL;
    uint64_t now = now_ns();

    pthread_mutex_lock(&p->queue_lock);
    shed_stale(p, now, &shed);
    /* jobs beyond what idle threads will take at once must fit in the queue */
    if (p->stopping || (!job->urgent && p->waiting - p->nurgent >= p->queue_size + p->idle)) {
        pthread_mutex_unlock(&p->queue_lock);
        complete(p, shed);
        return -1;
    }
    job->shed = false;
    job->queued = true;
    job->enqueued_ns = now;
    if (job->urgent) {
        append(&p->urgent_head, &p->urgent_tail, job);
        p->nurgent++;
    } else {
        append(&p->queue_head, &p->queue_tail, job);
    }
    p->waiting++;
    atomic_store_explicit(&p->depth, p->waiting, memory_order_relaxed);
    pthread_cond_signal(&p->queue_cond);
    pthread_mutex_unlock(&p->queue_lock);
    complete(p, shed);
    if (p->outstanding++ == 0) {
        event_add(p->wakeup, NULL);
    }
    return 0;
}

void
worker_pool_set_max_wait(struct worker_pool *p, uint64_t max_wait_ns)
{
    pthread_mutex_lock(&p->queue_lock);
    p->max_wait_ns = max_wait_ns;
    pthread_mutex_unlock(&p->queue_lock);
}

bool
worker_pool_cancel(struct worker_pool *p, struct worker_job *job)
{
    bool removed = false;

    pthread_mutex_lock(&p->queue_lock);
    if (job->queued) {
        dequeue(p, job);
        removed = true;
    }
    pthread_mutex_unlock(&p->queue_lock);
    if (removed && --p->outstanding == 0) {
        event_del(p->wakeup);
    }
    return removed;
}

uint64_t
worker_pool_estimate_ns(struct worker_pool *p, size_t units)
{
    double per;

    pthread_mutex_lock(&p->done_lock);
    per = p->ns_per_unit;
    pthread_mutex_unlock(&p->done_lock);
    return (uint64_t)(per * (double)units);
}

size_t
worker_pool_depth(struct worker_pool *p)
{
    return atomic_load_explicit(&p->depth, memory_order_relaxed);
}

void
worker_pool_free(struct worker_pool *p)
{
    if (p == NULL) {
        return;
    }
    stop_threads(p);
    deliver_completions(p);
    destroy(p);
}
