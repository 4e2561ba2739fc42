/*
 * breaker.h - the per-upstream circuit breaker, a pure state machine.
 *
 *   CLOSED --failure_threshold consecutive failures--> OPEN
 *   OPEN --open_timeout_ms elapsed, on the next breaker_allow--> HALF_OPEN
 *   HALF_OPEN --success_threshold consecutive trial successes--> CLOSED
 *   HALF_OPEN --any trial failure--> OPEN (open_timeout_ms starts again)
 *   OPEN --breaker_half_open (an active health check passed)--> HALF_OPEN
 *
 * Time comes in as monotonic milliseconds; nothing here reads a clock, logs
 * or touches libevent, so the module links alone into unit tests.
 *
 * Not thread-safe: one thread owns a breaker. Other threads read it through a
 * struct breaker_stats snapshot taken by the owner (or under the owner's lock).
 *
 * Every admitted call gets a ticket. Its outcome is recorded with that ticket,
 * so an outcome from an earlier episode (a call admitted while CLOSED that
 * finishes after the breaker opened) is counted in the totals but never frees
 * a half-open trial slot, never moves the state and never touches the
 * consecutive counters.
 */
#ifndef AKOSHA_BREAKER_H
#define AKOSHA_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#define BREAKER_NAME_MAX 64

#define BREAKER_DEFAULT_FAILURE_THRESHOLD 5
#define BREAKER_DEFAULT_OPEN_TIMEOUT_MS 60000
#define BREAKER_DEFAULT_HALF_OPEN_MAX_CALLS 3
#define BREAKER_DEFAULT_SUCCESS_THRESHOLD 2

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

enum breaker_outcome {
    BREAKER_SUCCESS,
    BREAKER_FAILURE,
    BREAKER_NEUTRAL,  /* a caller error (4xx): neither success nor failure */
    BREAKER_ABANDONED /* the client left before an outcome: only frees the slot */
};

/* Zero thresholds and a zero half_open_max_calls are treated as 1. */
struct breaker_config {
    uint32_t failure_threshold;
    uint64_t open_timeout_ms;
    uint32_t half_open_max_calls;
    uint32_t success_threshold;
};

/*
 * Proof of admission, filled by breaker_allow and consumed by breaker_record.
 * generation 0 means "no call": a rejected or already recorded ticket.
 */
struct breaker_ticket {
    uint64_t generation;
};

/* A plain copy of everything /stats and Prometheus show; safe to hand across threads. */
struct breaker_stats {
    enum breaker_state state;
    bool forced_open;
    uint64_t total_calls; /* every breaker_allow: admitted + rejected */
    uint64_t successful_calls;
    uint64_t failed_calls;
    uint64_t rejected_calls;
    uint32_t consecutive_failures;
    uint32_t consecutive_successes;
    uint32_t half_open_in_flight;
    uint64_t last_failure_ms;      /* monotonic; 0 = never */
    uint64_t last_state_change_ms; /* monotonic; 0 = never */
    double success_rate;           /* successful / (successful + failed); 1.0 when none */
};

struct breaker;

/*
 * Called once per state change, after the breaker holds the new state. why is
 * a short human reason valid only during the call. The callback may read the
 * breaker but must not call breaker functions that change it.
 */
typedef void (*breaker_change_fn)(const struct breaker *b, enum breaker_state from,
                                  enum breaker_state to, const char *why, void *arg);

struct breaker {
    char name[BREAKER_NAME_MAX];
    struct breaker_config cfg;
    enum breaker_state state;
    bool forced_open;
    uint64_t generation; /* bumped on every state change and admin action */
    uint64_t opened_at_ms;
    uint32_t half_open_in_flight;
    uint64_t total_calls;
    uint64_t successful_calls;
    uint64_t failed_calls;
    uint64_t rejected_calls;
    uint32_t consecutive_failures;
    uint32_t consecutive_successes;
    uint64_t last_failure_ms;
    uint64_t last_state_change_ms;
    breaker_change_fn on_change;
    void *on_change_arg;
};

/* Fill cfg with the defaults (5 failures, 60 s open, 3 trials, 2 successes). */
void breaker_config_default(struct breaker_config *cfg);

/*
 * Start CLOSED with zeroed counters and no callback. cfg NULL means defaults.
 * The name is copied (truncated to BREAKER_NAME_MAX - 1 bytes).
 */
void breaker_init(struct breaker *b, const char *name, const struct breaker_config *cfg);

/*
 * Reload: take new thresholds, keep state, counters and calls in flight. No
 * transition happens here; the new thresholds apply from the next event, and a
 * running open timeout is measured against the new open_timeout_ms.
 */
void breaker_configure(struct breaker *b, const struct breaker_config *cfg);

/* The callback is not owned; arg is passed back untouched. fn NULL disables it. */
void breaker_set_on_change(struct breaker *b, breaker_change_fn fn, void *arg);

/*
 * Ask to make a call. Returns true and fills *ticket when admitted (in
 * HALF_OPEN this reserves a trial slot, and an expired OPEN becomes HALF_OPEN
 * here). Returns false, counts a rejection and voids *ticket otherwise.
 */
bool breaker_allow(struct breaker *b, uint64_t now_ms, struct breaker_ticket *ticket)
    __attribute__((warn_unused_result));

/* Would breaker_allow admit a call now? No side effects. */
bool breaker_would_allow(const struct breaker *b, uint64_t now_ms);

/*
 * Record the outcome of an admitted call and void *ticket, so recording the
 * same ticket twice (or a rejected one) does nothing. Keep one ticket per call
 * and do not record copies of it: a copy is not voided.
 */
void breaker_record(struct breaker *b, struct breaker_ticket *ticket, enum breaker_outcome outcome,
                    uint64_t now_ms);

/*
 * Earliest monotonic time a call could be admitted, for Retry-After: now_ms
 * when admitted now (also in HALF_OPEN with every slot busy, since a slot frees
 * whenever a trial finishes), the end of the open timeout while OPEN, and
 * UINT64_MAX while forced open.
 */
uint64_t breaker_next_trial_ms(const struct breaker *b, uint64_t now_ms);

/*
 * Evidence from outside the calls (an active health check passed): an OPEN
 * breaker moves to HALF_OPEN now instead of at the end of open_timeout, so
 * trial calls may start. Returns whether it moved; a breaker that is not
 * OPEN, or is forced open by an admin, is left alone. Counters are untouched.
 */
bool breaker_half_open(struct breaker *b, uint64_t now_ms, const char *why);

/* Admin: OPEN until breaker_force_close or breaker_reset; never turns HALF_OPEN by itself. */
void breaker_force_open(struct breaker *b, uint64_t now_ms);
/* Admin: CLOSED with the consecutive counts zeroed; totals are kept. */
void breaker_force_close(struct breaker *b, uint64_t now_ms);
/*
 * Admin: CLOSED with every counter zeroed, as after breaker_init. If the state
 * changed, the callback runs and last_state_change_ms records now_ms.
 */
void breaker_reset(struct breaker *b, uint64_t now_ms);

void breaker_get_stats(const struct breaker *b, struct breaker_stats *out);

/* "closed", "open", "half_open"; static strings. */
const char *breaker_state_name(enum breaker_state s);
/* The Prometheus gauge value: open 0, closed 1, half_open 2. */
int breaker_state_metric(enum breaker_state s);

#endif
