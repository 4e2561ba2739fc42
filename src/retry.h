/*
 * retry.h - retry arithmetic: full-jitter backoff, Retry-After parsing and a
 * retry budget. Pure: randomness and time come in as arguments; nothing here
 * reads a clock or touches libevent.
 *
 * Not thread-safe: a struct retry_budget and a PRNG state belong to one thread.
 */
#ifndef AKOSHA_RETRY_H
#define AKOSHA_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Delay before retry n (n = 0 for the first retry): uniform in
 * [0, min(max_ms, base_ms * multiplier^n)], chosen by rnd (any 64-bit value;
 * 0 gives 0 and UINT64_MAX gives the cap). Never overflows, whatever n is.
 * A multiplier that is not a positive number counts as 1.
 */
uint64_t retry_backoff_ms(uint64_t base_ms, double multiplier, uint64_t max_ms, unsigned n,
                          uint64_t rnd);

/* splitmix64: fast, non-cryptographic; any seed, 0 included, is fine. */
uint64_t retry_rand(uint64_t *state);

/*
 * Parse a Retry-After value (RFC 9110 10.2.3): delta-seconds, or an HTTP-date
 * in IMF-fixdate, RFC 850 or asctime form, measured from now_unix_s. A date in
 * the past gives 0; huge delays saturate at UINT64_MAX. Surrounding spaces and
 * tabs are ignored. The day name is checked for spelling, not against the date.
 * Returns 0 and sets *delay_ms, or -1 on anything else (*delay_ms untouched).
 */
int retry_after_parse(const char *value, size_t len, int64_t now_unix_s, uint64_t *delay_ms)
    __attribute__((warn_unused_result));

#define RETRY_BUDGET_BUCKETS 10
#define RETRY_BUDGET_BUCKET_MS 1000
#define RETRY_BUDGET_WINDOW_S (RETRY_BUDGET_BUCKETS * RETRY_BUDGET_BUCKET_MS / 1000)

/*
 * Over the last RETRY_BUDGET_WINDOW_S seconds (one bucket per second), retries
 * may number at most ratio * requests + min_per_sec * RETRY_BUDGET_WINDOW_S.
 * Only first attempts are requests; retries are not noted as requests.
 */
struct retry_budget {
    double ratio;
    double min_per_sec;
    uint64_t bucket_second[RETRY_BUDGET_BUCKETS]; /* which second each bucket holds */
    uint64_t requests[RETRY_BUDGET_BUCKETS];
    uint64_t retries[RETRY_BUDGET_BUCKETS];
    uint64_t exhausted; /* refusals by retry_budget_try_spend, never reset */
};

/* Negative or NaN ratio and min_per_sec count as 0. */
void retry_budget_init(struct retry_budget *b, double ratio, double min_per_sec, uint64_t now_ms);
/* Reload: new ratio and minimum, the window's history is kept. */
void retry_budget_configure(struct retry_budget *b, double ratio, double min_per_sec);
void retry_budget_note_request(struct retry_budget *b, uint64_t now_ms);
/* Take one retry from the budget; false (and exhausted++) when none is left. */
bool retry_budget_try_spend(struct retry_budget *b, uint64_t now_ms);
/* Retries that retry_budget_try_spend would grant now. No side effects. */
uint64_t retry_budget_available(const struct retry_budget *b, uint64_t now_ms);

#endif
