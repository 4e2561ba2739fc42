/*
 * test_retry.c - backoff bounds and jitter, Retry-After parsing, retry budget.
 * Expected dates come from libc's timegm, an implementation independent of
 * the parser's own calendar arithmetic.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "retry.h"

/* Seconds since the epoch for a UTC civil time, via libc. */
static int64_t
utc(int year, int month, int day, int hour, int minute, int second)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = month - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = minute;
    tm.tm_sec = second;
    return (int64_t)timegm(&tm);
}

static int
parse(const char *s, int64_t now, uint64_t *delay_ms)
{
    return retry_after_parse(s, strlen(s), now, delay_ms);
}

/* ---- backoff ---- */

Test(retry_backoff, rnd_zero_gives_zero_and_rnd_max_gives_the_cap_for_n_0_to_40)
{
    uint64_t cap = 100;

    for (unsigned n = 0; n <= 40; n++) {
        cr_assert_eq(retry_backoff_ms(100, 2.0, 2000, n, 0), 0, "n=%u", n);
        cr_assert_eq(retry_backoff_ms(100, 2.0, 2000, n, UINT64_MAX), cap, "n=%u", n);
        cap = cap * 2 > 2000 ? 2000 : cap * 2;
    }
}

Test(retry_backoff, cap_doubles_exactly_until_a_huge_max)
{
    for (unsigned n = 0; n <= 40; n++) {
        uint64_t delay = retry_backoff_ms(1, 2.0, UINT64_MAX, n, UINT64_MAX);

        cr_assert_eq(delay, UINT64_C(1) << n, "n=%u", n);
        cr_assert_eq(retry_backoff_ms(1, 2.0, UINT64_MAX, n, 0), 0);
    }
}

Test(retry_backoff, never_exceeds_the_cap_for_any_rnd)
{
    uint64_t state = 7;

    for (unsigned n = 0; n <= 40; n++) {
        for (int i = 0; i < 200; i++) {
            uint64_t delay = retry_backoff_ms(250, 1.5, 30000, n, retry_rand(&state));
            double cap = fmin(30000.0, floor(250.0 * pow(1.5, n)));

            cr_assert_leq((double)delay, cap, "n=%u delay=%llu", n, (unsigned long long)delay);
        }
    }
}

Test(retry_backoff, huge_n_and_multipliers_do_not_overflow, .timeout = 2)
{
    cr_assert_eq(retry_backoff_ms(100, 2.0, 5000, UINT_MAX, UINT64_MAX), 5000);
    cr_assert_eq(retry_backoff_ms(100, 100.0, 5000, 1000, UINT64_MAX), 5000);
    cr_assert_eq(retry_backoff_ms(UINT64_MAX, 100.0, UINT64_MAX, 64, UINT64_MAX), UINT64_MAX);
    cr_assert_eq(retry_backoff_ms(UINT64_MAX, 100.0, UINT64_MAX, 64, 0), 0);
    cr_assert_eq(retry_backoff_ms(UINT64_MAX, 1.0, UINT64_MAX, 3, 12345), 12345,
                 "a cap of UINT64_MAX passes rnd through");
    /* A multiplier of 1 with a huge n must stay fast (exponentiation by squaring). */
    cr_assert_eq(retry_backoff_ms(300, 1.0, 5000, UINT_MAX, UINT64_MAX), 300);
}

Test(retry_backoff, degenerate_inputs_are_safe)
{
    cr_assert_eq(retry_backoff_ms(0, 2.0, 5000, 3, UINT64_MAX), 0, "zero base");
    cr_assert_eq(retry_backoff_ms(100, 2.0, 0, 3, UINT64_MAX), 0, "zero max");
    cr_assert_eq(retry_backoff_ms(100, NAN, 5000, 3, UINT64_MAX), 100, "NaN multiplier is 1");
    cr_assert_eq(retry_backoff_ms(100, -2.0, 5000, 3, UINT64_MAX), 100);
    cr_assert_eq(retry_backoff_ms(100, 0.5, 5000, 2, UINT64_MAX), 25,
                 "a multiplier below 1 shrinks");
    cr_assert_eq(retry_backoff_ms(9000, 2.0, 5000, 0, UINT64_MAX), 5000, "base above max");
}

Test(retry_backoff, jitter_spreads_uniformly_over_zero_to_cap)
{
    const uint64_t cap = 800; /* 100 * 2^3 */
    const int samples = 10000;
    uint64_t state = 0x5eed;
    uint64_t lo = UINT64_MAX;
    uint64_t hi = 0;
    double sum = 0;
    int deciles[10] = {0};

    for (int i = 0; i < samples; i++) {
        uint64_t d = retry_backoff_ms(100, 2.0, 2000, 3, retry_rand(&state));

        cr_assert_leq(d, cap);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        sum += (double)d;
        deciles[d * 10 / (cap + 1)]++;
    }
    cr_assert_float_eq(sum / samples, cap / 2.0, 0.05 * cap / 2.0, "mean %f", sum / samples);
    cr_assert_lt(lo, cap * 5 / 100);
    cr_assert_gt(hi, cap * 95 / 100);
    for (int i = 0; i < 10; i++) {
        cr_assert(deciles[i] > 800 && deciles[i] < 1200, "decile %d holds %d of %d", i, deciles[i],
                  samples);
    }
}

Test(retry_rand, is_deterministic_per_seed_and_differs_between_seeds)
{
    uint64_t a = 1, b = 1, c = 2;
    uint64_t first_a = retry_rand(&a);

    cr_assert_eq(first_a, retry_rand(&b));
    cr_assert_neq(first_a, retry_rand(&c));
    cr_assert_neq(first_a, retry_rand(&a), "the state advances");
}

Test(retry_rand, matches_the_splitmix64_reference_output)
{
    /* First outputs of the published splitmix64 for seed 0. */
    uint64_t state = 0;

    cr_assert_eq(retry_rand(&state), UINT64_C(0xe220a8397b1dcdaf));
    cr_assert_eq(retry_rand(&state), UINT64_C(0x6e789e6aa1b965f4));
}

/* ---- Retry-After ---- */

Test(retry_after, delta_seconds)
{
    uint64_t d = 1;

    cr_assert_eq(parse("120", 0, &d), 0);
    cr_assert_eq(d, 120000);
    cr_assert_eq(parse("0", 0, &d), 0);
    cr_assert_eq(d, 0);
    cr_assert_eq(parse("007", 0, &d), 0);
    cr_assert_eq(d, 7000);
    cr_assert_eq(parse(" \t5 ", 0, &d), 0, "surrounding whitespace is optional whitespace");
    cr_assert_eq(d, 5000);
}

Test(retry_after, delta_seconds_saturate_instead_of_overflowing)
{
    uint64_t d = 0;

    cr_assert_eq(parse("99999999999999999999999999999", 0, &d), 0);
    cr_assert_eq(d, UINT64_MAX);
    d = 0;
    /* Fits in seconds, overflows once turned into milliseconds. */
    cr_assert_eq(parse("18446744073709552", 0, &d), 0);
    cr_assert_eq(d, UINT64_MAX);
    cr_assert_eq(parse("18446744073709551", 0, &d), 0);
    cr_assert_eq(d, UINT64_C(18446744073709551000));
}

Test(retry_after, honours_len_rather_than_the_terminator)
{
    uint64_t d = 0;

    cr_assert_eq(retry_after_parse("30junk", 2, 0, &d), 0);
    cr_assert_eq(d, 30000);
}

Test(retry_after, imf_fixdate_in_the_future)
{
    int64_t when = utc(1994, 11, 6, 8, 49, 37);
    uint64_t d = 0;

    cr_assert_eq(parse("Sun, 06 Nov 1994 08:49:37 GMT", when - 30, &d), 0);
    cr_assert_eq(d, 30000);
}

Test(retry_after, all_three_date_forms_agree)
{
    int64_t now = utc(1994, 11, 6, 8, 0, 0);
    int64_t expect = (utc(1994, 11, 6, 8, 49, 37) - now) * 1000;
    const char *forms[] = {
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun Nov 06 08:49:37 1994",
    };

    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        uint64_t d = 0;

        cr_assert_eq(parse(forms[i], now, &d), 0, "%s", forms[i]);
        cr_assert_eq(d, (uint64_t)expect, "%s", forms[i]);
    }
}

Test(retry_after, date_in_the_past_gives_zero)
{
    uint64_t d = 99;

    cr_assert_eq(parse("Sun, 06 Nov 1994 08:49:37 GMT", utc(2025, 1, 1, 0, 0, 0), &d), 0);
    cr_assert_eq(d, 0);
    d = 99;
    cr_assert_eq(parse("Sun, 06 Nov 1994 08:49:37 GMT", utc(1994, 11, 6, 8, 49, 37), &d), 0);
    cr_assert_eq(d, 0, "now itself is no delay");
}

Test(retry_after, every_month_and_a_leap_day_map_to_the_right_instant)
{
    const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int64_t now = utc(2000, 1, 1, 0, 0, 0);
    char text[64];
    uint64_t d;

    for (int m = 1; m <= 12; m++) {
        snprintf(text, sizeof(text), "Mon, 28 %s 2031 23:59:59 GMT", months[m - 1]);
        cr_assert_eq(parse(text, now, &d), 0, "%s", text);
        cr_assert_eq(d, (uint64_t)(utc(2031, m, 28, 23, 59, 59) - now) * 1000, "%s", text);
    }
    cr_assert_eq(parse("Thu, 29 Feb 2024 12:00:00 GMT", now, &d), 0);
    cr_assert_eq(d, (uint64_t)(utc(2024, 2, 29, 12, 0, 0) - now) * 1000);
    cr_assert_eq(parse("Tue, 29 Feb 2000 00:00:00 GMT", now, &d), 0, "2000 is a leap year");
    cr_assert_eq(parse("Sat, 31 Dec 2099 23:59:60 GMT", now, &d), 0, "leap second");
    cr_assert_eq(d, (uint64_t)(utc(2100, 1, 1, 0, 0, 0) - now) * 1000);
}

Test(retry_after, rfc850_two_digit_year_is_never_more_than_50_years_ahead)
{
    int64_t now = utc(2025, 6, 1, 0, 0, 0);
    uint64_t d = 0;

    cr_assert_eq(parse("Friday, 01-Jan-27 00:00:00 GMT", now, &d), 0);
    cr_assert_eq(d, (uint64_t)(utc(2027, 1, 1, 0, 0, 0) - now) * 1000, "27 means 2027");
    cr_assert_eq(parse("Wednesday, 01-Jan-75 00:00:00 GMT", now, &d), 0);
    cr_assert_eq(d, (uint64_t)(utc(2075, 1, 1, 0, 0, 0) - now) * 1000, "75 means 2075");
    d = 99;
    cr_assert_eq(parse("Thursday, 01-Jan-76 00:00:00 GMT", now, &d), 0);
    cr_assert_eq(d, 0, "76 would be 2076, over 50 years ahead, so 1976: in the past");
}

Test(retry_after, rfc850_feb_29_parses_the_same_at_every_clock)
{
    /* "00" is 2000 (a leap year) in 2025 but 2100 (not one) in 2075. */
    int64_t now_2025 = utc(2025, 6, 1, 0, 0, 0);
    int64_t now_2075 = utc(2075, 6, 1, 0, 0, 0);
    uint64_t d = 7;

    cr_assert_eq(parse("Tuesday, 29-Feb-00 00:00:00 GMT", now_2025, &d), 0);
    cr_assert_eq(d, 0, "29 Feb 2000 is in the past");
    cr_assert_eq(parse("Monday, 29-Feb-00 00:00:00 GMT", now_2075, &d), 0);
    cr_assert_eq(d, (uint64_t)(utc(2100, 3, 1, 0, 0, 0) - now_2075) * 1000,
                 "2100 has no 29 February: read as 1 March");
    d = 7;
    cr_assert_eq(parse("Sunday, 29-Feb-01 00:00:00 GMT", now_2025, &d), -1);
    cr_assert_eq(parse("Sunday, 29-Feb-01 00:00:00 GMT", now_2075, &d), -1);
    cr_assert_eq(d, 7);
}

Test(retry_after, garbage_is_rejected_and_leaves_the_output_alone)
{
    const char *bad[] = {
        "",
        "   ",
        "-1",
        "+5",
        "1.5",
        "5s",
        "5 5",
        "0x10",
        "soon",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT x",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Fri, 29 Feb 2023 08:49:37 GMT",
        "Mon, 29 Feb 1900 00:00:00 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun Nov 31 08:49:37 1994",
        "Funday, 06-Nov-94 08:49:37 GMT",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t d = 4242;

        cr_assert_eq(parse(bad[i], 0, &d), -1, "\"%s\" should be rejected", bad[i]);
        cr_assert_eq(d, 4242, "\"%s\" touched the output", bad[i]);
    }
    cr_assert_eq(retry_after_parse(NULL, 0, 0, NULL), -1);
}

Test(retry_after, extreme_now_values_saturate_without_overflow)
{
    uint64_t d = 0;

    cr_assert_eq(parse("Sun, 06 Nov 1994 08:49:37 GMT", INT64_MIN, &d), 0);
    cr_assert_eq(d, UINT64_MAX);
    cr_assert_eq(parse("Sun, 06 Nov 1994 08:49:37 GMT", INT64_MAX, &d), 0);
    cr_assert_eq(d, 0);
    cr_assert_eq(parse("Sunday, 06-Nov-94 08:49:37 GMT", INT64_MIN, &d), 0);
    cr_assert_eq(parse("Sunday, 06-Nov-94 08:49:37 GMT", INT64_MAX, &d), 0);
}

/* ---- retry budget ---- */

/* Second-aligned so bucket boundaries are easy to reason about. */
#define B0 1000000ULL

Test(retry_budget, ratio_of_requests_plus_minimum_then_refused)
{
    struct retry_budget b;

    retry_budget_init(&b, 0.2, 10, B0);
    for (int i = 0; i < 100; i++) {
        retry_budget_note_request(&b, B0 + (uint64_t)i * 50);
    }
    cr_assert_eq(retry_budget_available(&b, B0 + 5000), 120, "20%% of 100 plus 10/s for 10 s");
    for (int i = 0; i < 120; i++) {
        cr_assert(retry_budget_try_spend(&b, B0 + 5000 + (uint64_t)i), "retry %d", i);
    }
    cr_assert_eq(retry_budget_available(&b, B0 + 6000), 0);
    cr_assert_not(retry_budget_try_spend(&b, B0 + 6000));
    cr_assert_not(retry_budget_try_spend(&b, B0 + 6001));
    cr_assert_eq(b.exhausted, 2);
}

Test(retry_budget, minimum_alone_applies_without_requests)
{
    struct retry_budget b;
    int granted = 0;

    retry_budget_init(&b, 0.2, 3, B0);
    while (retry_budget_try_spend(&b, B0) && granted < 1000) {
        granted++;
    }
    cr_assert_eq(granted, 30);
    cr_assert_eq(b.exhausted, 1);
}

Test(retry_budget, zero_budget_refuses_every_retry)
{
    struct retry_budget b;

    retry_budget_init(&b, 0, 0, B0);
    for (int i = 0; i < 4; i++) {
        retry_budget_note_request(&b, B0);
    }
    cr_assert_eq(retry_budget_available(&b, B0), 0);
    cr_assert_not(retry_budget_try_spend(&b, B0));
    cr_assert_eq(b.exhausted, 1);
}

Test(retry_budget, requests_and_retries_expire_after_the_window)
{
    struct retry_budget b;

    retry_budget_init(&b, 0.2, 10, B0);
    for (int i = 0; i < 100; i++) {
        retry_budget_note_request(&b, B0);
    }
    for (int i = 0; i < 120; i++) {
        cr_assert(retry_budget_try_spend(&b, B0 + 500));
    }
    cr_assert_eq(retry_budget_available(&b, B0 + 9999), 0, "still inside the 10 s window");
    cr_assert_not(retry_budget_try_spend(&b, B0 + 9999));
    cr_assert_eq(retry_budget_available(&b, B0 + 10000), 100,
                 "the first second left the window: only the minimum remains");
    cr_assert(retry_budget_try_spend(&b, B0 + 10000));
    cr_assert_eq(retry_budget_available(&b, B0 + 10000), 99);
}

Test(retry_budget, window_slides_one_second_at_a_time)
{
    struct retry_budget b;

    retry_budget_init(&b, 0.5, 0, B0);
    for (int i = 0; i < 40; i++) {
        retry_budget_note_request(&b, B0);
    }
    for (int i = 0; i < 40; i++) {
        retry_budget_note_request(&b, B0 + 5000);
    }
    cr_assert_eq(retry_budget_available(&b, B0 + 9000), 40);
    cr_assert_eq(retry_budget_available(&b, B0 + 10000), 20);
    cr_assert_eq(retry_budget_available(&b, B0 + 14999), 20);
    cr_assert_eq(retry_budget_available(&b, B0 + 15000), 0);
    cr_assert_eq(retry_budget_available(&b, B0 + 3600000), 0, "a long silence empties it");
}

Test(retry_budget, configure_keeps_history)
{
    struct retry_budget b;

    retry_budget_init(&b, 0.2, 10, B0);
    for (int i = 0; i < 100; i++) {
        retry_budget_note_request(&b, B0);
    }
    cr_assert(retry_budget_try_spend(&b, B0));
    retry_budget_configure(&b, 0.5, 1);
    cr_assert_eq(retry_budget_available(&b, B0 + 1), 50 + 10 - 1);
}

Test(retry_budget, available_has_no_side_effects)
{
    struct retry_budget b, copy;

    retry_budget_init(&b, 0.2, 10, B0);
    retry_budget_note_request(&b, B0);
    memcpy(&copy, &b, sizeof(b));
    (void)retry_budget_available(&b, B0 + 60000);
    cr_assert_eq(memcmp(&copy, &b, sizeof(b)), 0);
}

Test(retry_budget, slightly_stale_timestamp_does_not_wipe_newer_buckets)
{
    struct retry_budget b;

    retry_budget_init(&b, 1.0, 0, B0);
    for (int i = 0; i < 10; i++) {
        retry_budget_note_request(&b, B0 + 11000);
    }
    /* Same bucket index as B0 + 11000, one lap earlier. */
    retry_budget_note_request(&b, B0 + 1000);
    cr_assert_eq(retry_budget_available(&b, B0 + 11000), 11);
}

Test(retry_budget, negative_and_nan_settings_count_as_zero)
{
    struct retry_budget b;

    retry_budget_init(&b, NAN, -5, B0);
    retry_budget_note_request(&b, B0);
    cr_assert_eq(retry_budget_available(&b, B0), 0);
    retry_budget_configure(&b, -1, NAN);
    cr_assert_eq(retry_budget_available(&b, B0), 0);
}
