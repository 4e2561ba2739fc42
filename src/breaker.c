/*
 * breaker.c - the circuit breaker state machine. See breaker.h for the rules.
 *
 * Tickets carry the generation that admitted them. The generation changes on
 * every state change and admin action, so "does this outcome belong to the
 * current episode?" is one comparison, and a late outcome from an earlier
 * episode can be counted without disturbing the half-open bookkeeping.
 */
#include "breaker.h"

#include <stdio.h>
#include <string.h>

static uint64_t
add_saturating(uint64_t a, uint64_t b)
{
    if (a > UINT64_MAX - b) {
        return UINT64_MAX;
    }
    return a + b;
}

static uint32_t
inc_saturating(uint32_t v)
{
    if (v == UINT32_MAX) {
        return v;
    }
    return v + 1;
}

static void
sanitize(struct breaker_config *dst, const struct breaker_config *src)
{
    if (src == NULL) {
        breaker_config_default(dst);
        return;
    }
    *dst = *src;
    /* A zero would open on no failures or admit no trial at all: never useful. */
    if (dst->failure_threshold == 0) {
        dst->failure_threshold = 1;
    }
    if (dst->half_open_max_calls == 0) {
        dst->half_open_max_calls = 1;
    }
    if (dst->success_threshold == 0) {
        dst->success_threshold = 1;
    }
}

static uint64_t
open_deadline(const struct breaker *b)
{
    return add_saturating(b->opened_at_ms, b->cfg.open_timeout_ms);
}

/*
 * The one place the state changes. The generation moves even when the state
 * does not (an admin action on a breaker already in that state), so tickets
 * issued before the action stop counting toward the consecutive counters.
 */
static void
set_state(struct breaker *b, enum breaker_state to, uint64_t now_ms, const char *why)
{
    enum breaker_state from = b->state;

    b->generation++;
    b->half_open_in_flight = 0;
    if (to == BREAKER_OPEN) {
        b->opened_at_ms = now_ms;
    }
    if (from == to) {
        return;
    }
    b->state = to;
    b->last_state_change_ms = now_ms;
    if (to == BREAKER_HALF_OPEN) {
        b->consecutive_successes = 0;
    } else if (to == BREAKER_CLOSED) {
        b->consecutive_failures = 0;
    }
    if (b->on_change != NULL) {
        b->on_change(b, from, to, why, b->on_change_arg);
    }
}

void
breaker_config_default(struct breaker_config *cfg)
{
    cfg->failure_threshold = BREAKER_DEFAULT_FAILURE_THRESHOLD;
    cfg->open_timeout_ms = BREAKER_DEFAULT_OPEN_TIMEOUT_MS;
    cfg->half_open_max_calls = BREAKER_DEFAULT_HALF_OPEN_MAX_CALLS;
    cfg->success_threshold = BREAKER_DEFAULT_SUCCESS_THRESHOLD;
}

void
breaker_init(struct breaker *b, const char *name, const struct breaker_config *cfg)
{
    memset(b, 0, sizeof(*b));
    snprintf(b->name, sizeof(b->name), "%s", name != NULL ? name : "");
    sanitize(&b->cfg, cfg);
    b->state = BREAKER_CLOSED;
    /* Generation 0 marks a void ticket, so real ones start at 1. */
    b->generation = 1;
}

void
breaker_configure(struct breaker *b, const struct breaker_config *cfg)
{
    sanitize(&b->cfg, cfg);
}

void
breaker_set_on_change(struct breaker *b, breaker_change_fn fn, void *arg)
{
    b->on_change = fn;
    b->on_change_arg = arg;
}

bool
breaker_allow(struct breaker *b, uint64_t now_ms, struct breaker_ticket *ticket)
{
    b->total_calls++;
    ticket->generation = 0;

    if (b->state == BREAKER_OPEN) {
        if (b->forced_open || now_ms < open_deadline(b)) {
            b->rejected_calls++;
            return false;
        }
        set_state(b, BREAKER_HALF_OPEN, now_ms, "open_timeout elapsed");
    }
    if (b->state == BREAKER_HALF_OPEN) {
        if (b->half_open_in_flight >= b->cfg.half_open_max_calls) {
            b->rejected_calls++;
            return false;
        }
        b->half_open_in_flight++;
    }
    ticket->generation = b->generation;
    return true;
}

bool
breaker_would_allow(const struct breaker *b, uint64_t now_ms)
{
    switch (b->state) {
    case BREAKER_CLOSED:
        return true;
    case BREAKER_OPEN:
        /* Expiry leads to an empty HALF_OPEN, which always has a slot. */
        return !b->forced_open && now_ms >= open_deadline(b);
    case BREAKER_HALF_OPEN:
        return b->half_open_in_flight < b->cfg.half_open_max_calls;
    }
    return false;
}

void
breaker_record(struct breaker *b, struct breaker_ticket *ticket, enum breaker_outcome outcome,
               uint64_t now_ms)
{
    char why[64];
    bool current;

    if (ticket == NULL || ticket->generation == 0) {
        return;
    }
    current = ticket->generation == b->generation;
    ticket->generation = 0;

    /* Only a ticket of this very HALF_OPEN episode holds one of its slots. */
    if (current && b->state == BREAKER_HALF_OPEN && b->half_open_in_flight > 0) {
        b->half_open_in_flight--;
    }

    switch (outcome) {
    case BREAKER_SUCCESS:
        b->successful_calls++;
        if (!current) {
            break;
        }
        b->consecutive_successes = inc_saturating(b->consecutive_successes);
        b->consecutive_failures = 0;
        if (b->state == BREAKER_HALF_OPEN && b->consecutive_successes >= b->cfg.success_threshold) {
            snprintf(why, sizeof(why), "%u consecutive trial successes",
                     (unsigned)b->consecutive_successes);
            set_state(b, BREAKER_CLOSED, now_ms, why);
        }
        break;
    case BREAKER_FAILURE:
        b->failed_calls++;
        b->last_failure_ms = now_ms;
        if (!current) {
            /* A late failure says nothing about the episode now running. */
            break;
        }
        b->consecutive_failures = inc_saturating(b->consecutive_failures);
        b->consecutive_successes = 0;
        if (b->state == BREAKER_HALF_OPEN) {
            set_state(b, BREAKER_OPEN, now_ms, "trial failed");
        } else if (b->state == BREAKER_CLOSED &&
                   b->consecutive_failures >= b->cfg.failure_threshold) {
            snprintf(why, sizeof(why), "%u consecutive failures",
                     (unsigned)b->consecutive_failures);
            set_state(b, BREAKER_OPEN, now_ms, why);
        }
        break;
    case BREAKER_NEUTRAL:
    case BREAKER_ABANDONED:
        break;
    }
}

uint64_t
breaker_next_trial_ms(const struct breaker *b, uint64_t now_ms)
{
    uint64_t deadline;

    if (b->state != BREAKER_OPEN) {
        return now_ms;
    }
    if (b->forced_open) {
        return UINT64_MAX;
    }
    deadline = open_deadline(b);
    return deadline > now_ms ? deadline : now_ms;
}

bool
breaker_half_open(struct breaker *b, uint64_t now_ms, const char *why)
{
    if (b->state != BREAKER_OPEN || b->forced_open) {
        return false;
    }
    set_state(b, BREAKER_HALF_OPEN, now_ms, why);
    return true;
}

void
breaker_force_open(struct breaker *b, uint64_t now_ms)
{
    b->forced_open = true;
    set_state(b, BREAKER_OPEN, now_ms, "forced open by admin");
}

void
breaker_force_close(struct breaker *b, uint64_t now_ms)
{
    b->forced_open = false;
    b->consecutive_failures = 0;
    b->consecutive_successes = 0;
    set_state(b, BREAKER_CLOSED, now_ms, "forced closed by admin");
}

void
breaker_reset(struct breaker *b, uint64_t now_ms)
{
    b->forced_open = false;
    b->total_calls = 0;
    b->successful_calls = 0;
    b->failed_calls = 0;
    b->rejected_calls = 0;
    b->consecutive_failures = 0;
    b->consecutive_successes = 0;
    b->last_failure_ms = 0;
    b->last_state_change_ms = 0;
    b->opened_at_ms = 0;
    /* The generation keeps counting: restarting it would revive old tickets. */
    set_state(b, BREAKER_CLOSED, now_ms, "reset by admin");
}

void
breaker_get_stats(const struct breaker *b, struct breaker_stats *out)
{
    uint64_t decided = b->successful_calls + b->failed_calls;

    memset(out, 0, sizeof(*out));
    out->state = b->state;
    out->forced_open = b->forced_open;
    out->total_calls = b->total_calls;
    out->successful_calls = b->successful_calls;
    out->failed_calls = b->failed_calls;
    out->rejected_calls = b->rejected_calls;
    out->consecutive_failures = b->consecutive_failures;
    out->consecutive_successes = b->consecutive_successes;
    out->half_open_in_flight = b->half_open_in_flight;
    out->last_failure_ms = b->last_failure_ms;
    out->last_state_change_ms = b->last_state_change_ms;
    out->success_rate = decided == 0 ? 1.0 : (double)b->successful_calls / (double)decided;
}

const char *
breaker_state_name(enum breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED:
        return "closed";
    case BREAKER_OPEN:
        return "open";
    case BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

int
breaker_state_metric(enum breaker_state s)
{
    switch (s) {
    case BREAKER_OPEN:
        return 0;
    case BREAKER_CLOSED:
        return 1;
    case BREAKER_HALF_OPEN:
        return 2;
    }
    return -1;
}
