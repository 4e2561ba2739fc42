/*
 * test_breaker.c - the circuit breaker rules, driven by an injected clock.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "breaker.h"

/* Start well away from 0, which the stats use to mean "never". */
#define T0 1000000ULL
#define OPEN_MS 60000ULL

struct change_log {
    int count;
    enum breaker_state from[16];
    enum breaker_state to[16];
    char why[16][64];
    const struct breaker *seen;
    void *arg_seen;
};

static void
record_change(const struct breaker *b, enum breaker_state from, enum breaker_state to,
              const char *why, void *arg)
{
    struct change_log *log = arg;

    cr_assert_lt(log->count, 16);
    /* The breaker already holds the new state when told. */
    cr_assert_eq(b->state, to);
    log->from[log->count] = from;
    log->to[log->count] = to;
    snprintf(log->why[log->count], sizeof(log->why[0]), "%s", why);
    log->seen = b;
    log->arg_seen = arg;
    log->count++;
}

static void
make_breaker(struct breaker *b, struct change_log *log)
{
    struct breaker_config cfg = {
        .failure_threshold = 5,
        .open_timeout_ms = OPEN_MS,
        .half_open_max_calls = 3,
        .success_threshold = 2,
    };

    breaker_init(b, "tei-1", &cfg);
    if (log != NULL) {
        memset(log, 0, sizeof(*log));
        breaker_set_on_change(b, record_change, log);
    }
}

/* Run one admitted call to completion with the given outcome. */
static void
call(struct breaker *b, enum breaker_outcome outcome, uint64_t now)
{
    struct breaker_ticket t;

    cr_assert(breaker_allow(b, now, &t), "call at %llu should be admitted",
              (unsigned long long)now);
    breaker_record(b, &t, outcome, now);
}

static void
fail_n(struct breaker *b, int n, uint64_t now)
{
    for (int i = 0; i < n; i++) {
        call(b, BREAKER_FAILURE, now);
    }
}

static void
stats(const struct breaker *b, struct breaker_stats *s)
{
    breaker_get_stats(b, s);
}

Test(breaker, starts_closed_admitting_calls_with_empty_stats)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket t;

    make_breaker(&b, NULL);
    stats(&b, &s);
    cr_assert_eq(s.state, BREAKER_CLOSED);
    cr_assert_eq(s.total_calls, 0);
    cr_assert_eq(s.last_failure_ms, 0);
    cr_assert_eq(s.last_state_change_ms, 0);
    cr_assert_float_eq(s.success_rate, 1.0, 1e-12);
    cr_assert(breaker_would_allow(&b, T0));
    cr_assert(breaker_allow(&b, T0, &t));
    cr_assert_neq(t.generation, 0);
    cr_assert_str_eq(b.name, "tei-1");
}

Test(breaker, opens_after_failure_threshold_consecutive_failures)
{
    struct breaker b;
    struct change_log log;

    make_breaker(&b, &log);
    fail_n(&b, 4, T0);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    cr_assert_eq(log.count, 0);
    fail_n(&b, 1, T0 + 5);
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert_eq(log.count, 1);
    cr_assert_eq(log.from[0], BREAKER_CLOSED);
    cr_assert_eq(log.to[0], BREAKER_OPEN);
    cr_assert_str_eq(log.why[0], "5 consecutive failures");
    cr_assert_eq(b.last_state_change_ms, T0 + 5);
    cr_assert_eq(b.last_failure_ms, T0 + 5);
}

Test(breaker, success_in_closed_resets_failure_count)
{
    struct breaker b;
    struct breaker_stats s;

    make_breaker(&b, NULL);
    fail_n(&b, 4, T0);
    call(&b, BREAKER_SUCCESS, T0);
    stats(&b, &s);
    cr_assert_eq(s.consecutive_failures, 0);
    cr_assert_eq(s.consecutive_successes, 1);
    fail_n(&b, 4, T0);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    stats(&b, &s);
    cr_assert_eq(s.consecutive_failures, 4);
    cr_assert_eq(s.consecutive_successes, 0);
    fail_n(&b, 1, T0);
    cr_assert_eq(b.state, BREAKER_OPEN);
}

Test(breaker, open_rejects_without_admitting_and_counts_rejections)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket t;

    make_breaker(&b, NULL);
    fail_n(&b, 5, T0);
    for (int i = 0; i < 3; i++) {
        t.generation = 12345;
        cr_assert_not(breaker_allow(&b, T0 + 1000, &t));
        cr_assert_eq(t.generation, 0, "a rejected call gets a void ticket");
    }
    stats(&b, &s);
    cr_assert_eq(s.rejected_calls, 3);
    cr_assert_eq(s.total_calls, 8, "total counts admitted and rejected calls");
    cr_assert_eq(s.failed_calls, 5);
    cr_assert_eq(s.state, BREAKER_OPEN);
}

Test(breaker, open_timeout_elapsed_admits_trial_and_turns_half_open)
{
    struct breaker b;
    struct change_log log;
    struct breaker_ticket t;

    make_breaker(&b, &log);
    fail_n(&b, 5, T0);
    cr_assert_not(breaker_would_allow(&b, T0 + OPEN_MS - 1));
    cr_assert_not(breaker_allow(&b, T0 + OPEN_MS - 1, &t));
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert(breaker_allow(&b, T0 + OPEN_MS, &t));
    cr_assert_eq(b.state, BREAKER_HALF_OPEN);
    cr_assert_eq(b.half_open_in_flight, 1);
    cr_assert_eq(log.count, 2);
    cr_assert_eq(log.from[1], BREAKER_OPEN);
    cr_assert_eq(log.to[1], BREAKER_HALF_OPEN);
    cr_assert_str_eq(log.why[1], "open_timeout elapsed");
    cr_assert_eq(b.last_state_change_ms, T0 + OPEN_MS);
}

Test(breaker, half_open_rejects_beyond_max_calls_until_a_slot_frees)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket trial[3];
    struct breaker_ticket extra;
    uint64_t now = T0 + OPEN_MS;

    make_breaker(&b, NULL);
    fail_n(&b, 5, T0);
    for (int i = 0; i < 3; i++) {
        cr_assert(breaker_allow(&b, now, &trial[i]), "trial %d admitted", i);
    }
    cr_assert_not(breaker_would_allow(&b, now));
    cr_assert_not(breaker_allow(&b, now, &extra), "4th concurrent trial rejected");
    stats(&b, &s);
    cr_assert_eq(s.rejected_calls, 1);
    cr_assert_eq(s.half_open_in_flight, 3);

    breaker_record(&b, &trial[0], BREAKER_SUCCESS, now + 10);
    cr_assert_eq(b.state, BREAKER_HALF_OPEN);
    cr_assert(breaker_would_allow(&b, now + 10));
    cr_assert(breaker_allow(&b, now + 10, &trial[0]), "the freed slot admits one more");
    cr_assert_not(breaker_allow(&b, now + 10, &extra));
    stats(&b, &s);
    cr_assert_eq(s.rejected_calls, 2);
}

Test(breaker, half_open_closes_after_success_threshold_trial_successes)
{
    struct breaker b;
    struct change_log log;
    struct breaker_ticket t1, t2;
    uint64_t now = T0 + OPEN_MS;

    make_breaker(&b, &log);
    fail_n(&b, 5, T0);
    cr_assert(breaker_allow(&b, now, &t1));
    cr_assert(breaker_allow(&b, now, &t2));
    breaker_record(&b, &t1, BREAKER_SUCCESS, now + 1);
    cr_assert_eq(b.state, BREAKER_HALF_OPEN, "one success is not enough");
    cr_assert_eq(b.consecutive_successes, 1);
    breaker_record(&b, &t2, BREAKER_SUCCESS, now + 2);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    cr_assert_eq(b.half_open_in_flight, 0);
    cr_assert_eq(b.consecutive_failures, 0);
    cr_assert_eq(log.count, 3);
    cr_assert_eq(log.from[2], BREAKER_HALF_OPEN);
    cr_assert_eq(log.to[2], BREAKER_CLOSED);
    cr_assert_str_eq(log.why[2], "2 consecutive trial successes");
    cr_assert_eq(b.last_state_change_ms, now + 2);
}

Test(breaker, failed_trial_reopens_and_restarts_open_timeout)
{
    struct breaker b;
    struct change_log log;
    struct breaker_ticket t;
    uint64_t trial_at = T0 + OPEN_MS + 5000;
    uint64_t failed_at = trial_at + 700;

    make_breaker(&b, &log);
    fail_n(&b, 5, T0);
    cr_assert(breaker_allow(&b, trial_at, &t));
    call(&b, BREAKER_SUCCESS, trial_at);
    breaker_record(&b, &t, BREAKER_FAILURE, failed_at);
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert_eq(b.consecutive_successes, 0);
    cr_assert_eq(log.count, 3);
    cr_assert_eq(log.from[2], BREAKER_HALF_OPEN);
    cr_assert_eq(log.to[2], BREAKER_OPEN);
    cr_assert_str_eq(log.why[2], "trial failed");

    cr_assert_eq(breaker_next_trial_ms(&b, failed_at), failed_at + OPEN_MS);
    cr_assert_not(breaker_allow(&b, failed_at + OPEN_MS - 1, &t),
                  "still open one millisecond before the restarted timeout");
    cr_assert(breaker_allow(&b, failed_at + OPEN_MS, &t));
    cr_assert_eq(b.state, BREAKER_HALF_OPEN);
}

Test(breaker, neutral_outcome_counts_as_neither_and_keeps_consecutive_counts)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket trial[3];
    struct breaker_ticket extra;
    uint64_t now = T0 + OPEN_MS;

    make_breaker(&b, NULL);
    fail_n(&b, 4, T0);
    call(&b, BREAKER_NEUTRAL, T0);
    stats(&b, &s);
    cr_assert_eq(s.consecutive_failures, 4, "a 4xx does not reset the failure run");
    cr_assert_eq(s.successful_calls, 0);
    cr_assert_eq(s.failed_calls, 4);
    fail_n(&b, 1, T0);
    cr_assert_eq(b.state, BREAKER_OPEN);

    for (int i = 0; i < 3; i++) {
        cr_assert(breaker_allow(&b, now, &trial[i]));
    }
    breaker_record(&b, &trial[0], BREAKER_SUCCESS, now);
    breaker_record(&b, &trial[1], BREAKER_NEUTRAL, now);
    stats(&b, &s);
    cr_assert_eq(s.consecutive_successes, 1, "a 4xx does not reset the trial success run");
    cr_assert_eq(s.half_open_in_flight, 1, "a neutral trial frees its slot");
    cr_assert(breaker_allow(&b, now, &extra));
    breaker_record(&b, &extra, BREAKER_SUCCESS, now);
    cr_assert_eq(b.state, BREAKER_CLOSED);
}

Test(breaker, abandoned_call_only_frees_its_slot)
{
    struct breaker b;
    struct breaker_stats before, after;
    struct breaker_ticket trial[3];
    uint64_t now = T0 + OPEN_MS;

    make_breaker(&b, NULL);
    fail_n(&b, 5, T0);
    for (int i = 0; i < 3; i++) {
        cr_assert(breaker_allow(&b, now, &trial[i]));
    }
    breaker_record(&b, &trial[0], BREAKER_SUCCESS, now);
    stats(&b, &before);
    breaker_record(&b, &trial[1], BREAKER_ABANDONED, now);
    stats(&b, &after);
    cr_assert_eq(after.half_open_in_flight, before.half_open_in_flight - 1);
    cr_assert_eq(after.successful_calls, before.successful_calls);
    cr_assert_eq(after.failed_calls, before.failed_calls);
    cr_assert_eq(after.consecutive_successes, before.consecutive_successes);
    cr_assert_eq(after.state, BREAKER_HALF_OPEN);
}

Test(breaker, success_rate_is_successes_over_decided_calls)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket t;

    make_breaker(&b, NULL);
    for (int i = 0; i < 3; i++) {
        call(&b, BREAKER_SUCCESS, T0);
    }
    call(&b, BREAKER_FAILURE, T0);
    call(&b, BREAKER_NEUTRAL, T0);
    cr_assert(breaker_allow(&b, T0, &t));
    breaker_record(&b, &t, BREAKER_ABANDONED, T0);
    stats(&b, &s);
    cr_assert_float_eq(s.success_rate, 0.75, 1e-12);
    cr_assert_eq(s.total_calls, 6);
    cr_assert_eq(s.successful_calls, 3);
    cr_assert_eq(s.failed_calls, 1);

    /* The 4xx did not break the failure run, so four more failures open. */
    fail_n(&b, 4, T0);
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert_not(breaker_allow(&b, T0 + 1, &t));
    stats(&b, &s);
    cr_assert_float_eq(s.success_rate, 3.0 / 8.0, 1e-12, "rejections do not change the rate");
}

Test(breaker, force_open_stays_open_past_timeout_until_force_close)
{
    struct breaker b;
    struct change_log log;
    struct breaker_stats s;
    struct breaker_ticket t;

    make_breaker(&b, &log);
    call(&b, BREAKER_SUCCESS, T0);
    fail_n(&b, 2, T0);
    breaker_force_open(&b, T0 + 10);
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert_eq(log.count, 1);
    cr_assert_eq(log.from[0], BREAKER_CLOSED);
    cr_assert_eq(log.to[0], BREAKER_OPEN);
    cr_assert_str_eq(log.why[0], "forced open by admin");

    uint64_t later = T0 + 10 * OPEN_MS;
    cr_assert_not(breaker_would_allow(&b, later));
    cr_assert_not(breaker_allow(&b, later, &t));
    cr_assert_eq(b.state, BREAKER_OPEN, "forced open never turns half-open by itself");
    cr_assert_eq(breaker_next_trial_ms(&b, later), UINT64_MAX);
    stats(&b, &s);
    cr_assert(s.forced_open);

    breaker_force_close(&b, later + 1);
    stats(&b, &s);
    cr_assert_eq(s.state, BREAKER_CLOSED);
    cr_assert_not(s.forced_open);
    cr_assert_eq(s.consecutive_failures, 0);
    cr_assert_eq(s.consecutive_successes, 0);
    cr_assert_eq(s.failed_calls, 2, "force close keeps the totals");
    cr_assert_eq(s.rejected_calls, 1);
    cr_assert_eq(s.last_state_change_ms, later + 1);
    cr_assert_eq(log.count, 2);
    cr_assert_eq(log.from[1], BREAKER_OPEN);
    cr_assert_eq(log.to[1], BREAKER_CLOSED);
    cr_assert(breaker_allow(&b, later + 1, &t));
}

Test(breaker, force_close_from_half_open_drops_trials)
{
    struct breaker b;
    struct breaker_ticket trial;

    make_breaker(&b, NULL);
    fail_n(&b, 5, T0);
    cr_assert(breaker_allow(&b, T0 + OPEN_MS, &trial));
    breaker_force_close(&b, T0 + OPEN_MS + 1);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    cr_assert_eq(b.half_open_in_flight, 0);
    /* The dropped trial's late failure counts but starts no new failure run. */
    breaker_record(&b, &trial, BREAKER_FAILURE, T0 + OPEN_MS + 2);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    cr_assert_eq(b.consecutive_failures, 0);
    cr_assert_eq(b.failed_calls, 6);
}

Test(breaker, reset_zeroes_every_counter_and_closes)
{
    struct breaker b;
    struct change_log log;
    struct breaker_stats s;
    struct breaker_ticket t;

    make_breaker(&b, &log);
    call(&b, BREAKER_SUCCESS, T0);
    fail_n(&b, 5, T0);
    cr_assert_not(breaker_allow(&b, T0 + 1, &t));
    breaker_force_open(&b, T0 + 2);
    breaker_reset(&b, T0 + 3);
    stats(&b, &s);
    cr_assert_eq(s.state, BREAKER_CLOSED);
    cr_assert_not(s.forced_open);
    cr_assert_eq(s.total_calls, 0);
    cr_assert_eq(s.successful_calls, 0);
    cr_assert_eq(s.failed_calls, 0);
    cr_assert_eq(s.rejected_calls, 0);
    cr_assert_eq(s.consecutive_failures, 0);
    cr_assert_eq(s.consecutive_successes, 0);
    cr_assert_eq(s.last_failure_ms, 0);
    cr_assert_eq(s.last_state_change_ms, T0 + 3, "the reset itself changed the state");
    cr_assert_float_eq(s.success_rate, 1.0, 1e-12);
    /* CLOSED->OPEN by failures, forced open while OPEN (no change), OPEN->CLOSED. */
    cr_assert_eq(log.count, 2);
    cr_assert_str_eq(log.why[1], "reset by admin");
    cr_assert_eq(log.from[1], BREAKER_OPEN);
    cr_assert_eq(log.to[1], BREAKER_CLOSED);
}

Test(breaker, reset_while_closed_reports_no_state_change)
{
    struct breaker b;
    struct change_log log;

    make_breaker(&b, &log);
    fail_n(&b, 2, T0);
    breaker_reset(&b, T0 + 1);
    cr_assert_eq(log.count, 0);
    cr_assert_eq(b.last_state_change_ms, 0);
    cr_assert_eq(b.failed_calls, 0);
}

Test(breaker, ticket_from_before_reset_does_not_count_toward_new_run)
{
    struct breaker b;
    struct breaker_config cfg = {1, OPEN_MS, 1, 1};
    struct breaker_ticket old;

    breaker_init(&b, "x", &cfg);
    cr_assert(breaker_allow(&b, T0, &old));
    breaker_reset(&b, T0 + 1);
    breaker_record(&b, &old, BREAKER_FAILURE, T0 + 2);
    cr_assert_eq(b.state, BREAKER_CLOSED, "threshold 1, yet a pre-reset ticket must not open");
    cr_assert_eq(b.failed_calls, 1);
}

Test(breaker, on_change_called_once_per_change_through_full_cycle)
{
    struct breaker b;
    struct change_log log;
    struct breaker_ticket t;
    int marker;
    const enum breaker_state expect_from[] = {BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN,
                                              BREAKER_OPEN, BREAKER_HALF_OPEN};
    const enum breaker_state expect_to[] = {BREAKER_OPEN, BREAKER_HALF_OPEN, BREAKER_OPEN,
                                            BREAKER_HALF_OPEN, BREAKER_CLOSED};
    uint64_t now = T0;

    make_breaker(&b, &log);
    breaker_set_on_change(&b, record_change, &log);
    fail_n(&b, 5, now);
    now += OPEN_MS;
    call(&b, BREAKER_FAILURE, now);
    /* Rejections while OPEN are not changes. */
    cr_assert_not(breaker_allow(&b, now + 1, &t));
    now += OPEN_MS;
    call(&b, BREAKER_SUCCESS, now);
    call(&b, BREAKER_SUCCESS, now);
    /* Calls while CLOSED are not changes either. */
    call(&b, BREAKER_SUCCESS, now);
    cr_assert_eq(log.count, 5);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(log.from[i], expect_from[i], "change %d from", i);
        cr_assert_eq(log.to[i], expect_to[i], "change %d to", i);
    }
    cr_assert_eq(log.seen, &b);
    cr_assert_eq(log.arg_seen, &log);

    breaker_set_on_change(&b, NULL, &marker);
    fail_n(&b, 5, now);
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert_eq(log.count, 5, "a cleared callback is not called");
}

Test(breaker, late_closed_era_outcomes_do_not_free_half_open_slots)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket early[10];
    struct breaker_ticket trial[3];
    struct breaker_ticket extra;
    uint64_t now = T0 + 1 + OPEN_MS;

    make_breaker(&b, NULL);
    for (int i = 0; i < 10; i++) {
        cr_assert(breaker_allow(&b, T0, &early[i]));
    }
    for (int i = 0; i < 5; i++) {
        breaker_record(&b, &early[i], BREAKER_FAILURE, T0 + 1);
    }
    cr_assert_eq(b.state, BREAKER_OPEN);
    for (int i = 0; i < 3; i++) {
        cr_assert(breaker_allow(&b, now, &trial[i]));
    }
    /* Five CLOSED-era calls finish now: two succeed, one fails, two were 4xx/abandoned. */
    breaker_record(&b, &early[5], BREAKER_SUCCESS, now + 1);
    breaker_record(&b, &early[6], BREAKER_SUCCESS, now + 1);
    breaker_record(&b, &early[7], BREAKER_FAILURE, now + 1);
    breaker_record(&b, &early[8], BREAKER_NEUTRAL, now + 1);
    breaker_record(&b, &early[9], BREAKER_ABANDONED, now + 1);
    stats(&b, &s);
    cr_assert_eq(s.state, BREAKER_HALF_OPEN, "late outcomes move no state");
    cr_assert_eq(s.half_open_in_flight, 3, "late outcomes free no trial slot");
    cr_assert_eq(s.consecutive_successes, 0);
    cr_assert_eq(s.successful_calls, 2, "late outcomes are still counted");
    cr_assert_eq(s.failed_calls, 6);
    cr_assert_eq(s.last_failure_ms, now + 1);
    cr_assert_not(breaker_allow(&b, now + 1, &extra));

    /* The real trials still drive the machine. */
    breaker_record(&b, &trial[0], BREAKER_SUCCESS, now + 2);
    breaker_record(&b, &trial[1], BREAKER_SUCCESS, now + 2);
    cr_assert_eq(b.state, BREAKER_CLOSED);
}

Test(breaker, late_failure_while_open_is_counted_without_extending_timeout)
{
    struct breaker b;
    struct breaker_stats s;
    struct breaker_ticket early[7];
    struct breaker_ticket t;

    make_breaker(&b, NULL);
    for (int i = 0; i < 7; i++) {
        cr_assert(breaker_allow(&b, T0, &early[i]));
    }
    for (int i = 0; i < 5; i++) {
        breaker_record(&b, &early[i], BREAKER_FAILURE, T0);
    }
    breaker_record(&b, &early[5], BREAKER_FAILURE, T0 + 30000);
    breaker_record(&b, &early[6], BREAKER_SUCCESS, T0 + 30001);
    stats(&b, &s);
    cr_assert_eq(s.state, BREAKER_OPEN);
    cr_assert_eq(s.failed_calls, 6);
    cr_assert_eq(s.successful_calls, 1);
    cr_assert_eq(s.last_failure_ms, T0 + 30000);
    cr_assert_eq(s.last_state_change_ms, T0, "no transition from late outcomes");
    cr_assert_eq(breaker_next_trial_ms(&b, T0 + 30001), T0 + OPEN_MS);
    cr_assert(breaker_allow(&b, T0 + OPEN_MS, &t), "the open timeout was not extended");
}

Test(breaker, late_trial_outcome_after_close_does_not_reopen)
{
    struct breaker b;
    struct breaker_ticket trial[3];
    uint64_t now = T0 + OPEN_MS;

    make_breaker(&b, NULL);
    fail_n(&b, 5, T0);
    for (int i = 0; i < 3; i++) {
        cr_assert(breaker_allow(&b, now, &trial[i]));
    }
    breaker_record(&b, &trial[0], BREAKER_SUCCESS, now + 1);
    breaker_record(&b, &trial[1], BREAKER_SUCCESS, now + 1);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    breaker_record(&b, &trial[2], BREAKER_FAILURE, now + 2);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    cr_assert_eq(b.half_open_in_flight, 0);
    cr_assert_eq(b.consecutive_failures, 0);
    cr_assert_eq(b.failed_calls, 6);
}

Test(breaker, recording_a_ticket_twice_or_a_rejected_ticket_does_nothing)
{
    struct breaker b;
    struct breaker_stats before, after;
    struct breaker_ticket trial, rejected;
    uint64_t now = T0 + OPEN_MS;

    make_breaker(&b, NULL);
    b.cfg.half_open_max_calls = 1;
    fail_n(&b, 5, T0);
    cr_assert(breaker_allow(&b, now, &trial));
    cr_assert_not(breaker_allow(&b, now, &rejected));
    breaker_record(&b, &rejected, BREAKER_FAILURE, now);
    cr_assert_eq(b.state, BREAKER_HALF_OPEN, "a rejected ticket's outcome is ignored");
    breaker_record(&b, &trial, BREAKER_SUCCESS, now);
    cr_assert_eq(trial.generation, 0, "recording voids the ticket");
    stats(&b, &before);
    breaker_record(&b, &trial, BREAKER_SUCCESS, now);
    breaker_record(&b, NULL, BREAKER_SUCCESS, now);
    stats(&b, &after);
    cr_assert_eq(after.successful_calls, before.successful_calls);
    cr_assert_eq(after.consecutive_successes, 1);
    cr_assert_eq(after.state, BREAKER_HALF_OPEN);
}

Test(breaker, configure_keeps_state_and_counters_and_applies_new_limits)
{
    struct breaker b;
    struct breaker_stats before, after;
    struct breaker_ticket t, extra;
    struct breaker_config cfg = {
        .failure_threshold = 2,
        .open_timeout_ms = 10000,
        .half_open_max_calls = 1,
        .success_threshold = 1,
    };

    make_breaker(&b, NULL);
    call(&b, BREAKER_SUCCESS, T0);
    fail_n(&b, 5, T0);
    stats(&b, &before);
    breaker_configure(&b, &cfg);
    stats(&b, &after);
    cr_assert_eq(after.state, BREAKER_OPEN);
    cr_assert_eq(after.failed_calls, before.failed_calls);
    cr_assert_eq(after.successful_calls, before.successful_calls);
    cr_assert_eq(after.last_state_change_ms, before.last_state_change_ms);
    cr_assert_str_eq(b.name, "tei-1");

    cr_assert_eq(breaker_next_trial_ms(&b, T0), T0 + 10000,
                 "the running timeout uses the new value");
    cr_assert(breaker_allow(&b, T0 + 10000, &t));
    cr_assert_not(breaker_allow(&b, T0 + 10000, &extra), "new half_open_max_calls of 1");
    breaker_record(&b, &t, BREAKER_SUCCESS, T0 + 10001);
    cr_assert_eq(b.state, BREAKER_CLOSED, "new success_threshold of 1");
    fail_n(&b, 2, T0 + 10002);
    cr_assert_eq(b.state, BREAKER_OPEN, "new failure_threshold of 2");
}

Test(breaker, configure_with_lower_failure_threshold_applies_on_next_failure)
{
    struct breaker b;
    struct breaker_config cfg = {2, OPEN_MS, 3, 2};

    make_breaker(&b, NULL);
    fail_n(&b, 3, T0);
    breaker_configure(&b, &cfg);
    cr_assert_eq(b.state, BREAKER_CLOSED, "configure itself never transitions");
    fail_n(&b, 1, T0);
    cr_assert_eq(b.state, BREAKER_OPEN);
}

Test(breaker, next_trial_ms_follows_the_state)
{
    struct breaker b;
    struct breaker_ticket trial[3];

    make_breaker(&b, NULL);
    cr_assert_eq(breaker_next_trial_ms(&b, T0), T0);
    fail_n(&b, 5, T0);
    cr_assert_eq(breaker_next_trial_ms(&b, T0 + 1), T0 + OPEN_MS);
    cr_assert_eq(breaker_next_trial_ms(&b, T0 + OPEN_MS + 7), T0 + OPEN_MS + 7,
                 "an expired timeout admits now");
    for (int i = 0; i < 3; i++) {
        cr_assert(breaker_allow(&b, T0 + OPEN_MS, &trial[i]));
    }
    cr_assert_eq(breaker_next_trial_ms(&b, T0 + OPEN_MS + 9), T0 + OPEN_MS + 9);
}

Test(breaker, would_allow_has_no_side_effects)
{
    struct breaker b;
    struct breaker_stats before, after;

    make_breaker(&b, NULL);
    fail_n(&b, 5, T0);
    stats(&b, &before);
    cr_assert(breaker_would_allow(&b, T0 + OPEN_MS));
    cr_assert_not(breaker_would_allow(&b, T0 + OPEN_MS - 1));
    stats(&b, &after);
    cr_assert_eq(after.state, BREAKER_OPEN);
    cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0);
}

Test(breaker, huge_open_timeout_saturates_instead_of_wrapping)
{
    struct breaker b;
    struct breaker_config cfg = {1, UINT64_MAX, 1, 1};
    struct breaker_ticket t;

    breaker_init(&b, "x", &cfg);
    call(&b, BREAKER_FAILURE, T0);
    cr_assert_not(breaker_allow(&b, UINT64_MAX - 1, &t));
    cr_assert_eq(breaker_next_trial_ms(&b, T0), UINT64_MAX);
}

Test(breaker, zero_config_values_are_raised_to_one_and_null_means_defaults)
{
    struct breaker b;
    struct breaker_config zero = {0, 0, 0, 0};
    struct breaker_ticket t;

    breaker_init(&b, "x", &zero);
    cr_assert_eq(b.cfg.failure_threshold, 1);
    cr_assert_eq(b.cfg.half_open_max_calls, 1);
    cr_assert_eq(b.cfg.success_threshold, 1);
    call(&b, BREAKER_FAILURE, T0);
    cr_assert_eq(b.state, BREAKER_OPEN);
    cr_assert(breaker_allow(&b, T0, &t), "a zero open timeout admits a trial at once");
    cr_assert_eq(b.state, BREAKER_HALF_OPEN);

    breaker_init(&b, NULL, NULL);
    cr_assert_str_eq(b.name, "");
    cr_assert_eq(b.cfg.failure_threshold, BREAKER_DEFAULT_FAILURE_THRESHOLD);
    cr_assert_eq(b.cfg.open_timeout_ms, BREAKER_DEFAULT_OPEN_TIMEOUT_MS);
    cr_assert_eq(b.cfg.half_open_max_calls, BREAKER_DEFAULT_HALF_OPEN_MAX_CALLS);
    cr_assert_eq(b.cfg.success_threshold, BREAKER_DEFAULT_SUCCESS_THRESHOLD);
}

Test(breaker, long_name_is_truncated_and_terminated)
{
    struct breaker b;
    char name[200];

    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    breaker_init(&b, name, NULL);
    cr_assert_eq(strlen(b.name), BREAKER_NAME_MAX - 1);
}

Test(breaker, state_names_and_prometheus_values_match_the_prototype)
{
    cr_assert_str_eq(breaker_state_name(BREAKER_CLOSED), "closed");
    cr_assert_str_eq(breaker_state_name(BREAKER_OPEN), "open");
    cr_assert_str_eq(breaker_state_name(BREAKER_HALF_OPEN), "half_open");
    cr_assert_eq(breaker_state_metric(BREAKER_OPEN), 0);
    cr_assert_eq(breaker_state_metric(BREAKER_CLOSED), 1);
    cr_assert_eq(breaker_state_metric(BREAKER_HALF_OPEN), 2);
}

Test(breaker, half_open_on_demand_moves_open_to_half_open_before_the_timeout)
{
    struct breaker b;
    struct change_log log;
    struct breaker_stats s, before;
    struct breaker_ticket t;

    make_breaker(&b, &log);
    fail_n(&b, 5, T0);
    cr_assert_eq(b.state, BREAKER_OPEN);
    stats(&b, &before);
    cr_assert_not(breaker_would_allow(&b, T0 + 10));

    cr_assert(breaker_half_open(&b, T0 + 10, "health check passed"));
    cr_assert_eq(b.state, BREAKER_HALF_OPEN);
    cr_assert_eq(log.count, 2);
    cr_assert_eq(log.from[1], BREAKER_OPEN);
    cr_assert_eq(log.to[1], BREAKER_HALF_OPEN);
    cr_assert_str_eq(log.why[1], "health check passed");
    stats(&b, &s);
    cr_assert_eq(s.failed_calls, before.failed_calls, "no call is counted");
    cr_assert_eq(s.total_calls, before.total_calls);
    cr_assert_eq(s.last_state_change_ms, T0 + 10);
    /* Trials now, long before open_timeout; two successes close it as usual. */
    cr_assert(breaker_would_allow(&b, T0 + 11));
    call(&b, BREAKER_SUCCESS, T0 + 11);
    call(&b, BREAKER_SUCCESS, T0 + 12);
    cr_assert_eq(b.state, BREAKER_CLOSED);
    (void)t;
}

Test(breaker, half_open_on_demand_leaves_closed_half_open_and_forced_open_alone)
{
    struct breaker b;
    struct change_log log;
    struct breaker_ticket t;

    make_breaker(&b, &log);
    cr_assert_not(breaker_half_open(&b, T0, "health check passed"), "closed stays closed");
    cr_assert_eq(b.state, BREAKER_CLOSED);

    fail_n(&b, 5, T0);
    cr_assert(breaker_allow(&b, T0 + OPEN_MS, &t)); /* timeout: HALF_OPEN, one trial out */
    cr_assert_eq(b.state, BREAKER_HALF_OPEN);
    cr_assert_not(breaker_half_open(&b, T0 + OPEN_MS + 1, "health check passed"));
    cr_assert_eq(b.half_open_in_flight, 1, "the running trial keeps its slot");
    breaker_record(&b, &t, BREAKER_ABANDONED, T0 + OPEN_MS + 2);

    breaker_force_open(&b, T0 + OPEN_MS + 3);
    cr_assert_not(breaker_half_open(&b, T0 + OPEN_MS + 4, "health check passed"));
    cr_assert_eq(b.state, BREAKER_OPEN, "an admin's forced open wins over health checks");
    cr_assert_eq(log.count, 3);
}
