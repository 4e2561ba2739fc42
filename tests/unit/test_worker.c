/*
 * test_worker.c - the worker pool runs jobs off the loop thread, returns every
 * completion exactly once on the loop thread, bounds its queue, and drains on free.
 */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"
#include "worker.h"

struct test_job {
    struct worker_job job; /* first, so a worker_job * is a test_job * */
    int index;
    atomic_int runs;
    int dones;
    bool ran_on_loop_thread;
    bool done_on_other_thread;
    struct harness *h;
};

struct harness {
    struct event_base *base;
    pthread_t loop_thread;
    int completed;
    int expected;
    int *order; /* indexes in completion order */
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    bool gate_open;
    atomic_bool blocker_running;
};

static struct harness H;

static void
setup(void)
{
    cr_assert_eq(evthread_use_pthreads(), 0);
    memset(&H, 0, sizeof(H));
    H.base = event_base_new();
    cr_assert_not_null(H.base);
    H.loop_thread = pthread_self();
    pthread_mutex_init(&H.gate_lock, NULL);
    pthread_cond_init(&H.gate_cond, NULL);
}

static void
teardown(void)
{
    event_base_free(H.base);
    pthread_mutex_destroy(&H.gate_lock);
    pthread_cond_destroy(&H.gate_cond);
    free(H.order);
    libevent_global_shutdown();
}

static void
run_count(struct worker_job *job)
{
    struct test_job *t = (struct test_job *)job;

    atomic_fetch_add(&t->runs, 1);
    if (pthread_equal(pthread_self(), t->h->loop_thread)) {
        t->ran_on_loop_thread = true;
    }
}

static void
done_count(struct worker_job *job)
{
    struct test_job *t = (struct test_job *)job;

    t->dones++;
    if (!pthread_equal(pthread_self(), t->h->loop_thread)) {
        t->done_on_other_thread = true;
    }
    if (t->h->order != NULL) {
        t->h->order[t->h->completed] = t->index;
    }
    t->h->completed++;
    if (t->h->completed == t->h->expected) {
        event_base_loopbreak(t->h->base);
    }
}

/* Blocks its worker until the test opens the gate. */
static void
run_blocked(struct worker_job *job)
{
    struct test_job *t = (struct test_job *)job;

    atomic_store(&t->h->blocker_running, true);
    pthread_mutex_lock(&t->h->gate_lock);
    while (!t->h->gate_open) {
        pthread_cond_wait(&t->h->gate_cond, &t->h->gate_lock);
    }
    pthread_mutex_unlock(&t->h->gate_lock);
    run_count(job);
}

static void
open_gate(void)
{
    pthread_mutex_lock(&H.gate_lock);
    H.gate_open = true;
    pthread_cond_broadcast(&H.gate_cond);
    pthread_mutex_unlock(&H.gate_lock);
}

static void *
open_gate_thread(void *arg)
{
    (void)arg;
    open_gate();
    return NULL;
}

static void
sleep_ms(long ms)
{
    struct timespec ts = {0, ms * 1000000};
    nanosleep(&ts, NULL);
}

static void
wait_for_blocker(void)
{
    for (int i = 0; i < 5000 && !atomic_load(&H.blocker_running); i++) {
        sleep_ms(1);
    }
    cr_assert(atomic_load(&H.blocker_running), "the blocking job never started");
}

static void
init_job(struct test_job *t, int index, void (*run)(struct worker_job *))
{
    memset(t, 0, sizeof(*t));
    t->job.run = run;
    t->job.done = done_count;
    t->index = index;
    t->h = &H;
}

/* Fails the test instead of hanging when completions never arrive. */
static void
run_loop_until_done(void)
{
    struct timeval limit = {10, 0};

    event_base_loopexit(H.base, &limit);
    event_base_dispatch(H.base);
    cr_assert_eq(H.completed, H.expected, "only %d of %d jobs completed", H.completed, H.expected);
}

TestSuite(worker, .init = setup, .fini = teardown, .timeout = 30);

Test(worker, thousand_jobs_complete_once_each_on_the_loop_thread)
{
    enum { N = 1000 };
    struct test_job *jobs = calloc(N, sizeof(*jobs));
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 2, N, &cause);

    cr_assert_not_null(p, "%s", cause);
    H.expected = N;
    for (int i = 0; i < N; i++) {
        init_job(&jobs[i], i, run_count);
        cr_assert_eq(worker_pool_submit(p, &jobs[i].job), 0, "job %d refused", i);
    }
    run_loop_until_done();
    for (int i = 0; i < N; i++) {
        cr_expect_eq(atomic_load(&jobs[i].runs), 1, "job %d ran %d times", i,
                     atomic_load(&jobs[i].runs));
        cr_expect_eq(jobs[i].dones, 1, "job %d done %d times", i, jobs[i].dones);
        cr_expect_not(jobs[i].ran_on_loop_thread, "job %d ran on the loop thread", i);
        cr_expect_not(jobs[i].done_on_other_thread, "job %d done off the loop thread", i);
    }
    cr_expect_eq(worker_pool_depth(p), 0);
    worker_pool_free(p);
    free(jobs);
}

Test(worker, loop_with_nothing_else_to_watch_runs_until_every_job_is_done)
{
    enum { N = 300 };
    struct test_job *jobs = calloc(N, sizeof(*jobs));
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 2, N, &cause);

    cr_assert_not_null(p, "%s", cause);
    H.expected = -1; /* no loopbreak: dispatch must return by itself once the pool is idle */
    for (int i = 0; i < N; i++) {
        init_job(&jobs[i], i, run_count);
        cr_assert_eq(worker_pool_submit(p, &jobs[i].job), 0);
    }
    cr_assert_geq(event_base_dispatch(H.base), 0);
    cr_expect_eq(H.completed, N);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(jobs[i].dones, 1, "job %d", i);
    }
    /* an idle pool does not hold the loop open */
    cr_expect_eq(event_base_loop(H.base, EVLOOP_NONBLOCK), 1);
    worker_pool_free(p);
    free(jobs);
}

Test(worker, single_thread_completes_in_submission_order)
{
    enum { N = 200 };
    struct test_job *jobs = calloc(N, sizeof(*jobs));
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, N, &cause);

    cr_assert_not_null(p, "%s", cause);
    H.expected = N;
    H.order = calloc(N, sizeof(int));
    for (int i = 0; i < N; i++) {
        init_job(&jobs[i], i, run_count);
        cr_assert_eq(worker_pool_submit(p, &jobs[i].job), 0);
    }
    run_loop_until_done();
    for (int i = 0; i < N; i++) {
        cr_expect_eq(H.order[i], i, "completion %d was job %d", i, H.order[i]);
    }
    worker_pool_free(p);
    free(jobs);
}

Test(worker, full_queue_refuses_the_next_job)
{
    enum { QUEUE = 4 };
    struct test_job blocker, queued[QUEUE], extra;
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, QUEUE, &cause);

    cr_assert_not_null(p, "%s", cause);
    init_job(&blocker, -1, run_blocked);
    cr_assert_eq(worker_pool_submit(p, &blocker.job), 0);
    wait_for_blocker();
    for (int i = 0; i < QUEUE; i++) {
        init_job(&queued[i], i, run_count);
        cr_assert_eq(worker_pool_submit(p, &queued[i].job), 0, "job %d refused", i);
    }
    cr_expect_eq(worker_pool_depth(p), QUEUE);
    init_job(&extra, 99, run_count);
    cr_expect_eq(worker_pool_submit(p, &extra.job), -1);
    cr_expect_eq(worker_pool_depth(p), QUEUE);

    H.expected = QUEUE + 1;
    open_gate();
    run_loop_until_done();
    cr_expect_eq(atomic_load(&extra.runs), 0, "a refused job must not run");
    cr_expect_eq(extra.dones, 0);
    cr_expect_eq(worker_pool_depth(p), 0);
    /* room again once the queue drained */
    H.expected++;
    cr_expect_eq(worker_pool_submit(p, &extra.job), 0);
    run_loop_until_done();
    cr_expect_eq(extra.dones, 1);
    worker_pool_free(p);
}

Test(worker, zero_queue_accepts_only_what_idle_threads_take)
{
    struct test_job blocker, extra;
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, 0, &cause);

    cr_assert_not_null(p, "%s", cause);
    init_job(&blocker, 0, run_blocked);
    /* accepted once the thread has reached its idle wait and so counts as available */
    for (int i = 0; i < 5000 && worker_pool_submit(p, &blocker.job) != 0; i++) {
        sleep_ms(1);
    }
    wait_for_blocker();
    init_job(&extra, 1, run_count);
    cr_expect_eq(worker_pool_submit(p, &extra.job), -1);
    H.expected = 1;
    open_gate();
    run_loop_until_done();
    cr_expect_eq(blocker.dones, 1);
    worker_pool_free(p);
}

Test(worker, free_runs_queued_jobs_and_delivers_their_completions)
{
    enum { N = 50 };
    struct test_job blocker, jobs[N];
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 2, N + 1, &cause);
    pthread_t opener;

    cr_assert_not_null(p, "%s", cause);
    init_job(&blocker, -1, run_blocked);
    cr_assert_eq(worker_pool_submit(p, &blocker.job), 0);
    for (int i = 0; i < N; i++) {
        init_job(&jobs[i], i, run_count);
        cr_assert_eq(worker_pool_submit(p, &jobs[i].job), 0);
    }
    wait_for_blocker();
    /* free must wait for the blocked job too: open the gate from another thread */
    cr_assert_eq(pthread_create(&opener, NULL, open_gate_thread, NULL), 0);
    worker_pool_free(p); /* the loop never ran: every done() must come from free */
    pthread_join(opener, NULL);
    cr_expect_eq(blocker.dones, 1);
    cr_expect_eq(atomic_load(&blocker.runs), 1);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(atomic_load(&jobs[i].runs), 1, "job %d", i);
        cr_expect_eq(jobs[i].dones, 1, "job %d", i);
        cr_expect_not(jobs[i].done_on_other_thread);
    }
    cr_expect_eq(H.completed, N + 1);
    /* nothing left for the loop: it must not call into the freed pool */
    cr_expect_eq(event_base_loop(H.base, EVLOOP_NONBLOCK), 1);
}

static struct worker_pool *resubmit_pool;
static int resubmit_result = 0;

static void
done_resubmit(struct worker_job *job)
{
    resubmit_result = worker_pool_submit(resubmit_pool, job);
}

Test(worker, submit_from_done_during_free_is_refused)
{
    struct test_job t;
    char *cause = NULL;

    resubmit_pool = worker_pool_new(H.base, 1, 1, &cause);
    cr_assert_not_null(resubmit_pool, "%s", cause);
    init_job(&t, 0, run_count);
    t.job.done = done_resubmit;
    cr_assert_eq(worker_pool_submit(resubmit_pool, &t.job), 0);
    worker_pool_free(resubmit_pool);
    cr_expect_eq(resubmit_result, -1);
    cr_expect_eq(atomic_load(&t.runs), 1);
}

Test(worker, zero_threads_is_refused_with_cause)
{
    char *cause = NULL;

    cr_expect_null(worker_pool_new(H.base, 0, 8, &cause));
    cr_assert_not_null(cause);
    cr_expect(strstr(cause, "at least one thread") != NULL, "%s", cause);
    free(cause);
}

Test(worker, free_of_idle_pool_joins_and_null_is_ignored)
{
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 3, 8, &cause);

    cr_assert_not_null(p, "%s", cause);
    cr_expect_eq(worker_pool_depth(p), 0);
    worker_pool_free(p);
    worker_pool_free(NULL);
    cr_expect_eq(H.completed, 0);
}

Test(worker, cancel_takes_a_queued_job_back_and_leaves_a_running_one)
{
    struct test_job blocker, queued, after;
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, 4, &cause);

    cr_assert_not_null(p, "%s", cause);
    init_job(&blocker, 0, run_blocked);
    cr_assert_eq(worker_pool_submit(p, &blocker.job), 0);
    wait_for_blocker();
    init_job(&queued, 1, run_count);
    init_job(&after, 2, run_count);
    cr_assert_eq(worker_pool_submit(p, &queued.job), 0);
    cr_assert_eq(worker_pool_submit(p, &after.job), 0);
    cr_expect(worker_pool_cancel(p, &queued.job));
    cr_expect_not(worker_pool_cancel(p, &queued.job), "cancelled twice");
    cr_expect_not(worker_pool_cancel(p, &blocker.job), "a running job cannot be taken back");
    cr_expect_eq(worker_pool_depth(p), 1);
    H.expected = 2;
    open_gate();
    run_loop_until_done();
    cr_expect_eq(atomic_load(&queued.runs), 0);
    cr_expect_eq(queued.dones, 0, "a cancelled job gets no done()");
    cr_expect_eq(blocker.dones, 1);
    cr_expect_eq(after.dones, 1);
    worker_pool_free(p);
}

Test(worker, urgent_jobs_go_first_and_ignore_queue_size)
{
    struct test_job blocker, normal, urgent;
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, 1, &cause);

    cr_assert_not_null(p, "%s", cause);
    init_job(&blocker, 0, run_blocked);
    cr_assert_eq(worker_pool_submit(p, &blocker.job), 0);
    wait_for_blocker();
    init_job(&normal, 1, run_count);
    init_job(&urgent, 2, run_count);
    urgent.job.urgent = true;
    cr_assert_eq(worker_pool_submit(p, &normal.job), 0);
    cr_expect_eq(worker_pool_submit(p, &urgent.job), 0, "urgent work is refused when full");
    H.expected = 3;
    H.order = calloc(3, sizeof(int));
    open_gate();
    run_loop_until_done();
    cr_expect_eq(H.order[1], 2, "the urgent job ran after job %d", H.order[1]);
    cr_expect_eq(H.order[2], 1);
    worker_pool_free(p);
}

static void
done_record_shed(struct worker_job *job)
{
    struct test_job *t = (struct test_job *)job;

    if (job->shed) {
        t->index = -100 - t->index;
    }
    done_count(job);
}

Test(worker, standing_queue_is_served_newest_first_and_old_jobs_are_shed)
{
    enum { N = 4 };
    struct test_job blocker, jobs[N], late;
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, 16, &cause);

    cr_assert_not_null(p, "%s", cause);
    worker_pool_set_max_wait(p, 200 * 1000000ull);
    init_job(&blocker, 0, run_blocked);
    cr_assert_eq(worker_pool_submit(p, &blocker.job), 0);
    wait_for_blocker();
    for (int i = 0; i < N; i++) {
        init_job(&jobs[i], i + 1, run_count);
        jobs[i].job.done = done_record_shed;
        cr_assert_eq(worker_pool_submit(p, &jobs[i].job), 0);
    }
    sleep_ms(120); /* past a quarter of max_wait: standing, newest first */
    init_job(&late, 9, run_count);
    cr_assert_eq(worker_pool_submit(p, &late.job), 0);
    sleep_ms(100); /* the first four have now waited past max_wait */
    H.expected = N + 2;
    H.order = calloc(N + 2, sizeof(int));
    open_gate();
    run_loop_until_done();
    cr_expect_eq(atomic_load(&late.runs), 1, "the newest job must run");
    for (int i = 0; i < N; i++) {
        cr_expect_eq(atomic_load(&jobs[i].runs), 0, "stale job %d ran", i);
        cr_expect_eq(jobs[i].dones, 1);
        cr_expect_eq(jobs[i].index, -100 - (i + 1), "job %d not marked shed", i);
    }
    cr_expect_eq(worker_pool_depth(p), 0);
    worker_pool_free(p);
}

Test(worker, estimate_follows_the_measured_cost_per_unit)
{
    struct test_job t;
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, 4, &cause);

    cr_assert_not_null(p, "%s", cause);
    cr_expect_eq(worker_pool_estimate_ns(p, 1000), 0, "no estimate before any job");
    init_job(&t, 0, run_blocked);
    H.gate_open = true; /* runs through */
    H.expected = 1;
    cr_assert_eq(worker_pool_submit(p, &t.job), 0);
    run_loop_until_done();
    /* the job reported no units: still nothing learned */
    cr_expect_eq(worker_pool_estimate_ns(p, 1000), 0);
    worker_pool_free(p);
}

/* ---- assist: one idle thread helps a running job --------------------------- */

struct assist_job {
    struct test_job t; /* first */
    struct worker_pool *pool;
    int tasks, posted;
    atomic_int ran_elsewhere, ran_here;
    pthread_t runner;
    bool sleep_before_wait; /* the first task waits until the helper has taken it */
};

struct assist_task {
    struct assist_job *a;
    int value;
    int *out;
};

static void
assist_task_run(void *arg)
{
    struct assist_task *t = arg;

    *t->out = t->value * 2;
    if (pthread_equal(pthread_self(), t->a->runner)) {
        atomic_fetch_add(&t->a->ran_here, 1);
    } else {
        atomic_fetch_add(&t->a->ran_elsewhere, 1);
    }
}

static void
run_assisted(struct worker_job *job)
{
    struct assist_job *a = (struct assist_job *)job;
    struct worker_assist as;

    a->runner = pthread_self();
    worker_assist_begin(a->pool, &as);
    for (int i = 0; i < a->tasks; i++) {
        int out = -1;
        struct assist_task t = {a, i, &out};
        if (worker_assist_post(&as, assist_task_run, &t)) {
            a->posted++;
            /* The first task: give the helper (waking up) time to take it. */
            bool first = a->sleep_before_wait && i == 0;
            for (int ms = 0; first && ms < 2000 && atomic_load(&a->ran_elsewhere) == 0; ms++) {
                sleep_ms(1);
            }
            worker_assist_wait(&as);
        } else {
            assist_task_run(&t);
        }
        cr_assert_eq(out, 2 * i, "task %d: %d", i, out);
    }
    worker_assist_end(&as);
    run_count(job);
}

static void
init_assist(struct assist_job *a, struct worker_pool *pool, int tasks, bool sleep_before_wait)
{
    memset(a, 0, sizeof(*a));
    init_job(&a->t, 0, run_assisted);
    a->pool = pool;
    a->tasks = tasks;
    a->sleep_before_wait = sleep_before_wait;
}

Test(worker, assist_borrows_an_idle_thread_for_the_running_jobs_tasks)
{
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 2, 4, &cause);
    struct assist_job a;

    cr_assert_not_null(p, "%s", cause);
    /*
     * A helper that waits ASSIST_IDLE_NS (200 us) for a task goes back, and a
     * job preempted that long between borrowing and its first post (make
     * check -j runs other tests beside this one, and under ASan on two CPUs
     * five tries in a row have) posts nothing: then every task runs here, as
     * designed. Tries for up to 10 s (at most 200) for one where the helper
     * was there; each try's tasks must all run.
     */
    uint64_t until_ms = util_mono_ms() + 10000;
    for (int tries = 0; tries < 200 && util_mono_ms() < until_ms; tries++) {
        sleep_ms(50); /* both threads asleep: one runs the job, the other is idle */
        init_assist(&a, p, 50, true);
        H.expected = 1;
        H.completed = 0;
        cr_assert_eq(worker_pool_submit(p, &a.t.job), 0);
        run_loop_until_done();
        cr_assert_eq(atomic_load(&a.ran_here) + atomic_load(&a.ran_elsewhere), 50);
        if (a.posted >= 1) {
            break;
        }
    }
    /* Not necessarily all 50: a helper that waits ASSIST_IDLE_NS for a task goes back. */
    cr_assert_geq(a.posted, 1);
    cr_assert_eq(atomic_load(&a.ran_here) + atomic_load(&a.ran_elsewhere), 50);
    cr_assert_gt(atomic_load(&a.ran_elsewhere), 0, "no task ran on the helper");
    worker_pool_free(p);
}

Test(worker, assist_with_no_idle_thread_leaves_every_task_to_the_job)
{
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 1, 4, &cause);
    struct assist_job a;

    cr_assert_not_null(p, "%s", cause);
    init_assist(&a, p, 20, false);
    H.expected = 1;
    cr_assert_eq(worker_pool_submit(p, &a.t.job), 0);
    run_loop_until_done();
    cr_assert_eq(a.posted, 0);
    cr_assert_eq(atomic_load(&a.ran_here), 20);
    worker_pool_free(p);
}

Test(worker, assist_helper_leaves_for_a_queued_job_and_tasks_still_all_run)
{
    char *cause = NULL;
    struct worker_pool *p = worker_pool_new(H.base, 2, 4, &cause);
    struct assist_job a, b;

    cr_assert_not_null(p, "%s", cause);
    sleep_ms(50);
    /* Many quick tasks, and meanwhile two more jobs: the helper goes to them. */
    init_assist(&a, p, 20000, false);
    init_assist(&b, p, 2000, false);
    a.t.index = 0;
    b.t.index = 1;
    H.expected = 3;
    struct test_job c;
    init_job(&c, 2, run_count);
    cr_assert_eq(worker_pool_submit(p, &a.t.job), 0);
    sleep_ms(1);
    cr_assert_eq(worker_pool_submit(p, &b.t.job), 0);
    cr_assert_eq(worker_pool_submit(p, &c.job), 0);
    run_loop_until_done();
    cr_assert_eq(atomic_load(&a.ran_here) + atomic_load(&a.ran_elsewhere), 20000);
    cr_assert_eq(atomic_load(&b.ran_here) + atomic_load(&b.ran_elsewhere), 2000);
    cr_assert_eq(atomic_load(&c.runs), 1);
    worker_pool_free(p);
}
