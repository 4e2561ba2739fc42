/*
 * fuzz_retry_after.c - libFuzzer harness for retry_after_parse, the
 * Retry-After value an upstream sends with 429 and 503, read at several
 * clock values including the extremes of int64_t.
 *
 * Whether a value parses cannot depend on the clock; a later clock never
 * gives a longer delay; delta-seconds give exactly that many seconds
 * (saturating); a refused value leaves *delay_ms untouched. The same bytes
 * also drive retry_backoff_ms, which must stay within its cap.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "retry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define UNTOUCHED UINT64_C(0x5a5a5a5a5a5a5a5a)
/* 2023-11-14T22:13:20Z: a plausible "now". */
#define NOW INT64_C(1700000000)

static const int64_t clocks[] = {NOW, NOW + 1000, 0, -1, INT64_MAX, INT64_MIN};

static void
trim_ows(const char **s, size_t *len)
{
    while (*len > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t')) {
        (*len)--;
    }
}

/* Expected delay for an all-digit value: seconds * 1000, saturating at UINT64_MAX. */
static bool
delta_seconds(const char *s, size_t len, uint64_t *ms)
{
    uint64_t v = 0;
    bool saturated = false;

    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        if (v > (UINT64_MAX - 9) / 10) {
            saturated = true;
        } else {
            v = v * 10 + (uint64_t)(s[i] - '0');
        }
    }
    *ms = saturated || v > UINT64_MAX / 1000 ? UINT64_MAX : v * 1000;
    return true;
}

static void
check_backoff(const uint8_t *data, size_t size)
{
    struct {
        uint64_t base_ms, max_ms, rnd;
        double multiplier;
        unsigned n;
    } in;
    uint64_t state;

    memset(&in, 0, sizeof(in));
    memcpy(&in, data, size < sizeof(in) ? size : sizeof(in));
    uint64_t d = retry_backoff_ms(in.base_ms, in.multiplier, in.max_ms, in.n, in.rnd);
    FUZZ_CHECK(d <= in.max_ms, "backoff %llu above its cap %llu", (unsigned long long)d,
               (unsigned long long)in.max_ms);
    FUZZ_CHECK(retry_backoff_ms(in.base_ms, in.multiplier, in.max_ms, in.n, 0) == 0,
               "rnd 0 did not give 0");
    state = in.rnd;
    (void)retry_rand(&state);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_copy(data, size);
    const char *t = s;
    size_t tlen = size;
    uint64_t delays[sizeof(clocks) / sizeof(clocks[0])];
    int results[sizeof(clocks) / sizeof(clocks[0])];
    uint64_t expect;

    for (size_t i = 0; i < sizeof(clocks) / sizeof(clocks[0]); i++) {
        delays[i] = UNTOUCHED;
        results[i] = retry_after_parse(s, size, clocks[i], &delays[i]);
        FUZZ_CHECK(results[i] == 0 || results[i] == -1, "result %d", results[i]);
        FUZZ_CHECK(results[i] == results[0], "parses at one clock and not another");
        if (results[i] != 0) {
            FUZZ_CHECK(delays[i] == UNTOUCHED, "refused value changed delay_ms");
        }
    }
    if (results[0] == 0) {
        FUZZ_CHECK(delays[1] <= delays[0], "a later clock gave a longer delay: %llu > %llu",
                   (unsigned long long)delays[1], (unsigned long long)delays[0]);
        trim_ows(&t, &tlen);
        if (delta_seconds(t, tlen, &expect)) {
            for (size_t i = 0; i < sizeof(clocks) / sizeof(clocks[0]); i++) {
                FUZZ_CHECK(delays[i] == expect, "delta-seconds %.*s gave %llu ms", (int)tlen, t,
                           (unsigned long long)delays[i]);
            }
        }
    }
    check_backoff(data, size);
    free(s);
    return 0;
}
