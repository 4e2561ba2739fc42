/*
 * retry.c - full-jitter backoff, a strict Retry-After parser and a sliding
 * window retry budget. See retry.h.
 *
 * The date parser is hand-written rather than strptime-based because
 * strptime honours the locale and accepts loose input (missing fields,
 * variable widths) that RFC 9110 does not allow.
 */
#include "retry.h"

#include <string.h>

uint64_t
retry_backoff_ms(uint64_t base_ms, double multiplier, uint64_t max_ms, unsigned n, uint64_t rnd)
{
    double factor = 1.0;
    double square;
    double cap_d;
    uint64_t cap;
    unsigned e = n;

    if (base_ms == 0 || max_ms == 0) {
        return 0;
    }
    if (!(multiplier > 0.0)) {
        multiplier = 1.0;
    }
    /*
     * Exponentiation by squaring: O(log n) whatever n is. Overflow goes to
     * +inf, which the comparison below turns into max_ms.
     */
    square = multiplier;
    while (e != 0) {
        if (e & 1) {
            factor *= square;
        }
        e >>= 1;
        if (e != 0) {
            square *= square;
        }
    }
    cap_d = (double)base_ms * factor;
    if (!(cap_d < (double)max_ms)) {
        cap = max_ms;
    } else {
        cap = (uint64_t)cap_d;
        /* (double)max_ms may have rounded up past max_ms. */
        if (cap > max_ms) {
            cap = max_ms;
        }
    }
    if (cap == UINT64_MAX) {
        return rnd;
    }
    /* Scale rnd onto [0, cap] by a 128-bit multiply: no modulo bias, no overflow. */
    return (uint64_t)(((unsigned __int128)rnd * (cap + 1)) >> 64);
}

uint64_t
retry_rand(uint64_t *state)
{
    uint64_t z;

    *state += 0x9e3779b97f4a7c15ULL;
    z = *state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ---- Retry-After ---- */

struct cursor {
    const char *p;
    const char *end;
};

static const char *const day_short[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
static const char *const day_long[] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                       "Friday", "Saturday", "Sunday"};
static const char *const month_names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

struct http_date {
    int64_t year;
    int month; /* 1..12 */
    int day;
    int hour;
    int minute;
    int second;
    bool two_digit_year;
};

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool
take_literal(struct cursor *c, const char *lit)
{
    size_t n = strlen(lit);

    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) {
        return false;
    }
    c->p += n;
    return true;
}

/* Exactly count digits. */
static bool
take_digits(struct cursor *c, int count, int *out)
{
    int v = 0;

    if (c->end - c->p < count) {
        return false;
    }
    for (int i = 0; i < count; i++) {
        if (!is_digit(c->p[i])) {
            return false;
        }
        v = v * 10 + (c->p[i] - '0');
    }
    c->p += count;
    *out = v;
    return true;
}

/* One of names (case-sensitive, as RFC 9110 requires); the longest match wins. */
static bool
take_name(struct cursor *c, const char *const *names, int count, int *index)
{
    int best = -1;
    size_t best_len = 0;

    for (int i = 0; i < count; i++) {
        size_t n = strlen(names[i]);

        if ((size_t)(c->end - c->p) >= n && memcmp(c->p, names[i], n) == 0 && n > best_len) {
            best = i;
            best_len = n;
        }
    }
    if (best < 0) {
        return false;
    }
    c->p += best_len;
    *index = best;
    return true;
}

static bool
take_month(struct cursor *c, int *month)
{
    int index;

    if (!take_name(c, month_names, 12, &index)) {
        return false;
    }
    *month = index + 1;
    return true;
}

static bool
take_time(struct cursor *c, struct http_date *d)
{
    return take_digits(c, 2, &d->hour) && take_literal(c, ":") && take_digits(c, 2, &d->minute) &&
           take_literal(c, ":") && take_digits(c, 2, &d->second);
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static bool
parse_imf_fixdate(struct cursor c, struct http_date *d)
{
    int index;
    int year;

    if (!take_name(&c, day_short, 7, &index) || !take_literal(&c, ", ") ||
        !take_digits(&c, 2, &d->day) || !take_literal(&c, " ") || !take_month(&c, &d->month) ||
        !take_literal(&c, " ") || !take_digits(&c, 4, &year) || !take_literal(&c, " ") ||
        !take_time(&c, d) || !take_literal(&c, " GMT")) {
        return false;
    }
    d->year = year;
    d->two_digit_year = false;
    return c.p == c.end;
}

/* "Sunday, 06-Nov-94 08:49:37 GMT" */
static bool
parse_rfc850(struct cursor c, struct http_date *d)
{
    int index;
    int year;

    if (!take_name(&c, day_long, 7, &index) || !take_literal(&c, ", ") ||
        !take_digits(&c, 2, &d->day) || !take_literal(&c, "-") || !take_month(&c, &d->month) ||
        !take_literal(&c, "-") || !take_digits(&c, 2, &year) || !take_literal(&c, " ") ||
        !take_time(&c, d) || !take_literal(&c, " GMT")) {
        return false;
    }
    d->year = year;
    d->two_digit_year = true;
    return c.p == c.end;
}

/* "Sun Nov  6 08:49:37 1994": the day is two digits or a space and one digit. */
static bool
parse_asctime(struct cursor c, struct http_date *d)
{
    int index;
    int year;

    if (!take_name(&c, day_short, 7, &index) || !take_literal(&c, " ") ||
        !take_month(&c, &d->month) || !take_literal(&c, " ")) {
        return false;
    }
    if (take_literal(&c, " ")) {
        if (!take_digits(&c, 1, &d->day)) {
            return false;
        }
    } else if (!take_digits(&c, 2, &d->day)) {
        return false;
    }
    if (!take_literal(&c, " ") || !take_time(&c, d) || !take_literal(&c, " ") ||
        !take_digits(&c, 4, &year)) {
        return false;
    }
    d->year = year;
    d->two_digit_year = false;
    return c.p == c.end;
}

static bool
is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
days_in_month(int64_t year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    if (month == 2 && is_leap(year)) {
        return 29;
    }
    return days[month - 1];
}

/* Days since 1970-01-01 in the proleptic Gregorian calendar, eras of 400 years. */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
    int64_t era;
    int64_t year_of_era;
    int64_t day_of_year;
    int64_t day_of_era;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    year_of_era = y - era * 400;
    day_of_year = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* The inverse of days_from_civil, year only. */
static int64_t
year_from_days(int64_t z)
{
    int64_t era;
    int64_t day_of_era;
    int64_t year_of_era;
    int64_t day_of_year;
    int64_t mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    day_of_era = z - era * 146097;
    year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    mp = (5 * day_of_year + 2) / 153;
    return year_of_era + era * 400 + (mp >= 10 ? 1 : 0);
}

static int64_t
floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;

    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q--;
    }
    return q;
}

/*
 * RFC 9110 5.6.7: a two-digit year more than 50 years in the future means the
 * most recent past year with those digits.
 */
static int64_t
resolve_two_digit_year(int yy, int64_t now_unix_s)
{
    /* About 35,000 years either way: keeps the date arithmetic far from overflow. */
    const int64_t limit = INT64_C(1) << 40;
    int64_t now_year;
    int64_t year;

    if (now_unix_s > limit) {
        now_unix_s = limit;
    } else if (now_unix_s < -limit) {
        now_unix_s = -limit;
    }
    now_year = year_from_days(floor_div(now_unix_s, 86400));
    year = now_year - ((now_year % 100) + 100) % 100 + yy;

    if (year > now_year + 50) {
        year -= 100;
    } else if (year <= now_year - 50) {
        year += 100;
    }
    return year;
}

static int
parse_http_date(const char *s, size_t len, int64_t now_unix_s, int64_t *unix_s)
{
    struct cursor c = {s, s + len};
    struct http_date d;

    memset(&d, 0, sizeof(d));
    if (!parse_imf_fixdate(c, &d) && !parse_rfc850(c, &d) && !parse_asctime(c, &d)) {
        return -1;
    }
    /*
     * Whether a date is valid must not depend on the clock. A two-digit year
     * has no century, so 29 February is checked against the digits alone
     * (every fourth year); in a century year that is not a leap year it is
     * read as 1 March, the day after 28 February.
     */
    if (d.day < 1 || d.hour > 23 || d.minute > 59 || d.second > 60) {
        return -1;
    }
    if (d.two_digit_year) {
        if (d.day > days_in_month(d.year % 4 == 0 ? 2000 : 2001, d.month)) {
            return -1;
        }
        d.year = resolve_two_digit_year((int)d.year, now_unix_s);
    } else if (d.day > days_in_month(d.year, d.month)) {
        return -1;
    }
    *unix_s =
        days_from_civil(d.year, d.month, d.day) * 86400 + d.hour * 3600 + d.minute * 60 + d.second;
    return 0;
}

static uint64_t
seconds_to_ms_saturating(uint64_t seconds)
{
    if (seconds > UINT64_MAX / 1000) {
        return UINT64_MAX;
    }
    return seconds * 1000;
}

int
retry_after_parse(const char *value, size_t len, int64_t now_unix_s, uint64_t *delay_ms)
{
    int64_t when;
    int64_t delta;

    if (value == NULL) {
        return -1;
    }
    while (len > 0 && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        len--;
    }
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t')) {
        len--;
    }
    if (len == 0) {
        return -1;
    }

    if (is_digit(value[0])) {
        uint64_t seconds = 0;

        for (size_t i = 0; i < len; i++) {
            unsigned digit;

            if (!is_digit(value[i])) {
                return -1;
            }
            digit = (unsigned)(value[i] - '0');
            if (seconds > (UINT64_MAX - digit) / 10) {
                seconds = UINT64_MAX;
            } else {
                seconds = seconds * 10 + digit;
            }
        }
        *delay_ms = seconds_to_ms_saturating(seconds);
        return 0;
    }

    if (parse_http_date(value, len, now_unix_s, &when) != 0) {
        return -1;
    }
    if (__builtin_sub_overflow(when, now_unix_s, &delta)) {
        /* The two are far apart; the sign of now_unix_s says which way. */
        delta = now_unix_s < 0 ? INT64_MAX : 0;
    }
    *delay_ms = delta <= 0 ? 0 : seconds_to_ms_saturating((uint64_t)delta);
    return 0;
}

/* ---- retry budget ---- */

static double
non_negative(double v)
{
    /* NaN fails every comparison, so it lands on 0 too. */
    return v > 0.0 ? v : 0.0;
}

/* Callers may pass a timestamp taken a moment earlier; never move the window back. */
static uint64_t
effective_second(const struct retry_budget *b, uint64_t now_ms)
{
    uint64_t second = now_ms / RETRY_BUDGET_BUCKET_MS;
    uint64_t newest = 0;

    for (int i = 0; i < RETRY_BUDGET_BUCKETS; i++) {
        if (b->bucket_second[i] > newest) {
            newest = b->bucket_second[i];
        }
    }
    return second > newest ? second : newest;
}

static size_t
current_bucket(struct retry_budget *b, uint64_t now_ms)
{
    uint64_t second = effective_second(b, now_ms);
    size_t i = (size_t)(second % RETRY_BUDGET_BUCKETS);

    if (b->bucket_second[i] != second) {
        b->bucket_second[i] = second;
        b->requests[i] = 0;
        b->retries[i] = 0;
    }
    return i;
}

void
retry_budget_init(struct retry_budget *b, double ratio, double min_per_sec, uint64_t now_ms)
{
    memset(b, 0, sizeof(*b));
    retry_budget_configure(b, ratio, min_per_sec);
    (void)current_bucket(b, now_ms);
}

void
retry_budget_configure(struct retry_budget *b, double ratio, double min_per_sec)
{
    b->ratio = non_negative(ratio);
    b->min_per_sec = non_negative(min_per_sec);
}

void
retry_budget_note_request(struct retry_budget *b, uint64_t now_ms)
{
    b->requests[current_bucket(b, now_ms)]++;
}

uint64_t
retry_budget_available(const struct retry_budget *b, uint64_t now_ms)
{
    uint64_t second = effective_second(b, now_ms);
    uint64_t requests = 0;
    uint64_t retries = 0;
    uint64_t allowance;
    double allowance_d;

    for (int i = 0; i < RETRY_BUDGET_BUCKETS; i++) {
        if (second - b->bucket_second[i] < RETRY_BUDGET_BUCKETS) {
            requests += b->requests[i];
            retries += b->retries[i];
        }
    }
    /* The epsilon keeps 0.2 * 100 from landing on 19.999... and flooring to 19. */
    allowance_d =
        b->ratio * (double)requests + b->min_per_sec * (double)RETRY_BUDGET_WINDOW_S + 1e-9;
    if (allowance_d >= 18446744073709551616.0) {
        allowance = UINT64_MAX;
    } else {
        allowance = (uint64_t)allowance_d;
    }
    return allowance > retries ? allowance - retries : 0;
}

bool
retry_budget_try_spend(struct retry_budget *b, uint64_t now_ms)
{
    size_t i = current_bucket(b, now_ms);

    if (retry_budget_available(b, now_ms) == 0) {
        b->exhausted++;
        return false;
    }
    b->retries[i]++;
    return true;
}
