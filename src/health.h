/*
 * health.h - active health checks of upstreams ([upstream] health_check).
 *
 * Each checked upstream has one checker: a timer and at most one check in
 * flight, on a dedicated short-lived connection (never a pooled one, never a
 * caller's connection slot) made with the upstream's address, TLS settings,
 * Host header and configured headers. A check is GET PATH; a 2xx status line
 * within health_timeout passes, anything else fails. healthy_threshold
 * consecutive passes make the upstream healthy, unhealthy_threshold
 * consecutive failures unhealthy; routing skips an unhealthy upstream
 * (upstream_routable). Checks never count as breaker calls; a passing check
 * moves an OPEN breaker to HALF_OPEN at once (breaker_half_open).
 *
 * The per-check machine:
 *
 *   IDLE --timer--> CONNECT --TCP up, https--> TLS --handshake--> SEND
 *   CONNECT --TCP up, http--> SEND --written--> READ_HEAD --status line--> IDLE
 *   any state but IDLE --error, EOF or health_timeout--> IDLE (failed)
 *
 * The result and its bookkeeping (struct health_status) live on the upstream,
 * so a reload that keeps the upstream keeps them. Loop thread only.
 */
#ifndef AKOSHA_HEALTH_H
#define AKOSHA_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

struct upstream;
struct upstream_set;
struct health_checker;

/* What /stats and /metrics show, and what routing reads (healthy). */
struct health_status {
    bool checked;   /* a checker runs (health_check set, not draining) */
    bool healthy;   /* routable; true while unchecked and until checks say otherwise */
    bool have_last; /* a check has finished */
    bool last_pass;
    int last_status;          /* HTTP status of the last check, 0 when none came */
    uint64_t last_latency_us; /* how long the last check took */
    uint64_t last_check_ms;   /* monotonic end of the last check */
    char last_error[96];      /* why the last check failed; "" when it passed */
    uint32_t consecutive_passes;
    uint32_t consecutive_failures;
    uint64_t passes, failures; /* totals */
};

/* A new upstream's status: healthy, unchecked. */
void health_status_init(struct health_status *st);

/*
 * Count one check's result against the thresholds. Returns true when it
 * changed st->healthy. Pure: no clock, no I/O.
 */
bool health_status_record(struct health_status *st, bool pass, uint32_t healthy_threshold,
                          uint32_t unhealthy_threshold);

/*
 * After a set is built (start-up or reload): start a checker for every
 * upstream of set with health_check, stop the ones of set without it (they
 * become healthy, unchecked) and those of old (may be NULL) not in set. A
 * kept upstream keeps its running checker and its status; new intervals and
 * thresholds apply from its next check.
 */
void health_apply(struct upstream_set *set, struct upstream_set *old);

/*
 * Drain or shutdown: stop every checker of set, a check in flight included.
 * The last verdicts stay: requests still draining route by them.
 */
void health_stop_all(struct upstream_set *set);

#endif
