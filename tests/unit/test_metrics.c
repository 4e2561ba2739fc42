/*
 * test_metrics.c - the family table, series updates, the exposition page,
 * collectors, process parsing, and drift between the table and the shipped
 * alert rules and dashboard.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics.h"

static void
setup(void)
{
    metrics_init();
}

static void
teardown(void)
{
    metrics_free();
}

TestSuite(metrics, .init = setup, .fini = teardown);

/* Caller frees. */
static char *
render(void)
{
    struct buf b;

    buf_init(&b);
    metrics_render(&b);
    cr_assert_not_null(b.data);
    return b.data;
}

/* The page in OpenMetrics. Caller frees. */
static char *
render_openmetrics(void)
{
    struct buf b;

    buf_init(&b);
    metrics_render_as(&b, METRICS_FORMAT_OPENMETRICS);
    cr_assert_not_null(b.data);
    return b.data;
}

/* The value of the sample line that starts with exactly `series ` ; NAN when absent. */
static double
sample_value(const char *page, const char *series)
{
    size_t n = strlen(series);
    const char *line = page;

    while (line != NULL && *line != '\0') {
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            return strtod(line + n + 1, NULL);
        }
        line = strchr(line, '\n');
        if (line != NULL) {
            line++;
        }
    }
    return NAN;
}

static size_t
count_occurrences(const char *hay, const char *needle)
{
    size_t n = 0;
    const char *p = hay;

    while ((p = strstr(p, needle)) != NULL) {
        n++;
        p += strlen(needle);
    }
    return n;
}

/* The family a sample line belongs to: its name, less a histogram suffix. */
static int
family_of_sample(const char *line, size_t len)
{
    static const char *suffixes[] = {"_bucket", "_sum", "_count"};
    size_t name_len = 0;
    size_t i, k;

    while (name_len < len && line[name_len] != '{' && line[name_len] != ' ') {
        name_len++;
    }
    for (i = 0; i < METRIC_COUNT; i++) {
        const char *fname = metrics_families[i].name;
        size_t flen = strlen(fname);

        if (flen == name_len && strncmp(line, fname, flen) == 0) {
            return (int)i;
        }
        if (metrics_families[i].type != METRIC_HISTOGRAM || name_len <= flen ||
            strncmp(line, fname, flen) != 0) {
            continue;
        }
        for (k = 0; k < ARRAY_SIZE(suffixes); k++) {
            if (name_len - flen == strlen(suffixes[k]) &&
                strncmp(line + flen, suffixes[k], name_len - flen) == 0) {
                return (int)i;
            }
        }
    }
    return -1;
}

static void
populate_every_direct_family(void)
{
    const char *values[METRICS_MAX_LABELS] = {"a", "b", "c", "d"};
    const char *other[METRICS_MAX_LABELS] = {"x", "y", "z", "w"};
    size_t i;

    for (i = 0; i < METRIC_COUNT; i++) {
        const struct metric_family *f = &metrics_families[i];
        struct metric_series *s1, *s2;

        if (f->collected) {
            continue;
        }
        s1 = metrics_series((enum metric_id)i, values);
        s2 = metrics_family_nlabels((enum metric_id)i) > 0
                 ? metrics_series((enum metric_id)i, other)
                 : s1;
        switch (f->type) {
        case METRIC_COUNTER:
            metrics_add(s1, 3);
            metrics_inc(s2);
            break;
        case METRIC_GAUGE:
            metrics_gauge_set(s1, 0.25);
            metrics_gauge_add(s2, 2);
            break;
        case METRIC_HISTOGRAM:
            metrics_observe(s1, f->buckets[0] / 2);
            metrics_observe(s2, f->buckets[f->nbuckets - 1] * 2);
            break;
        }
    }
}

/* Writes one or two samples into every collected family except the process ones. */
static void
fill_collected(struct metrics_writer *w, void *arg)
{
    const char *a[METRICS_MAX_LABELS] = {"tei", "idle", NULL, NULL};
    const char *b[METRICS_MAX_LABELS] = {"ollama \"2\"", "active", NULL, NULL};
    size_t i;

    (void)arg;
    for (i = 0; i < METRIC_COUNT; i++) {
        if (!metrics_families[i].collected ||
            strncmp(metrics_families[i].name, "process_", 8) == 0) {
            continue;
        }
        metrics_writer_sample(w, (enum metric_id)i, a, 1);
        if (metrics_family_nlabels((enum metric_id)i) > 0) {
            metrics_writer_sample(w, (enum metric_id)i, b, 0.5);
        }
    }
}

/* Table */

Test(metrics, family_table_follows_prometheus_naming)
{
    regex_t metric_name, label_name;
    size_t i, k;

    cr_assert_eq(regcomp(&metric_name, "^[a-zA-Z_:][a-zA-Z0-9_:]*$", REG_EXTENDED | REG_NOSUB), 0);
    cr_assert_eq(regcomp(&label_name, "^[a-zA-Z_][a-zA-Z0-9_]*$", REG_EXTENDED | REG_NOSUB), 0);
    for (i = 0; i < METRIC_COUNT; i++) {
        const struct metric_family *f = &metrics_families[i];
        size_t len;

        cr_assert_not_null(f->name, "family %zu has no row", i);
        len = strlen(f->name);
        cr_assert_eq(regexec(&metric_name, f->name, 0, NULL, 0), 0, "%s", f->name);
        cr_assert(f->help != NULL && f->help[0] != '\0', "%s has no help", f->name);
        if (f->type == METRIC_COUNTER) {
            cr_assert(len > 6 && strcmp(f->name + len - 6, "_total") == 0,
                      "counter %s must end in _total", f->name);
        } else {
            cr_assert(strstr(f->name, "_total") == NULL, "%s is not a counter", f->name);
        }
        if (f->type == METRIC_HISTOGRAM) {
            cr_assert_gt(f->nbuckets, 0, "%s has no buckets", f->name);
            for (k = 1; k < f->nbuckets; k++) {
                cr_assert_lt(f->buckets[k - 1], f->buckets[k], "%s buckets not ascending", f->name);
            }
            cr_assert_not(f->collected, "collectors cannot write histogram %s", f->name);
        }
        cr_assert_leq(metrics_family_nlabels((enum metric_id)i), METRICS_MAX_LABELS);
        for (k = 0; f->labels[k] != NULL; k++) {
            cr_assert_eq(regexec(&label_name, f->labels[k], 0, NULL, 0), 0, "%s", f->labels[k]);
            cr_assert_neq(strncmp(f->labels[k], "__", 2), 0, "%s: reserved label", f->name);
            cr_assert_str_neq(f->labels[k], "le", "%s: le is reserved for buckets", f->name);
        }
        for (k = 0; k < i; k++) {
            cr_assert_str_neq(metrics_families[k].name, f->name, "%s declared twice", f->name);
        }
    }
    regfree(&metric_name);
    regfree(&label_name);
}

/* Series */

Test(metrics, same_labels_return_the_same_handle)
{
    const char *real[] = {"real"};
    const char *fallback[] = {"fallback"};
    struct metric_series *a = metrics_series(METRIC_EMBEDDING_GENERATED, real);
    struct metric_series *b = metrics_series(METRIC_EMBEDDING_GENERATED, real);
    struct metric_series *c = metrics_series(METRIC_EMBEDDING_GENERATED, fallback);

    cr_assert_eq(a, b);
    cr_assert_neq(a, c);
    metrics_inc(a);
    metrics_add(b, 4);
    cr_assert_eq(metrics_counter_value(a), 5);
    cr_assert_eq(metrics_counter_value(c), 0);
}

Test(metrics, gauge_set_and_add_combine)
{
    struct metric_series *g = metrics_series(METRIC_REQUESTS_IN_FLIGHT, NULL);
    char *page;

    metrics_gauge_set(g, 10);
    metrics_gauge_add(g, -3);
    metrics_gauge_add(g, 1);
    cr_assert_float_eq(metrics_gauge_value(g), 8.0, 1e-12);
    page = render();
    cr_assert_not_null(strstr(page, "\nakosha_requests_in_flight 8\n"), "%s", page);
    free(page);
}

Test(metrics, removed_series_is_hidden_until_looked_up_again)
{
    const char *labels[] = {"old-upstream", "failure"};
    struct metric_series *s = metrics_series(METRIC_RETRIES, labels);
    char *page;

    metrics_add(s, 7);
    metrics_series_remove(s);
    page = render();
    cr_assert_null(strstr(page, "old-upstream"), "removed series still rendered");
    free(page);

    cr_assert_eq(metrics_series(METRIC_RETRIES, labels), s);
    page = render();
    cr_assert_float_eq(
        sample_value(page, "akosha_retries_total{upstream=\"old-upstream\",reason=\"failure\"}"),
        7.0, 1e-9);
    free(page);
}

/* Exposition */

Test(metrics, label_values_are_escaped)
{
    const char *labels[] = {"back\\slash \"quoted\"\nnext", "m"};
    struct buf b;
    char *page;

    buf_init(&b);
    metrics_escape_label(&b, "a\\b\"c\nd");
    cr_assert_str_eq(b.data, "a\\\\b\\\"c\\nd");
    buf_free(&b);

    metrics_inc(metrics_series(METRIC_FALLBACK, labels));
    page = render();
    cr_assert_not_null(
        strstr(page, "\nakosha_fallback_total{reason=\"back\\\\slash \\\"quoted\\\"\\nnext\","
                     "model=\"m\"} 1\n"),
        "%s", page);
    free(page);
}

Test(metrics, values_are_formatted_as_integers_or_shortest_round_trip)
{
    static const struct {
        double v;
        const char *text;
    } cases[] = {
        {0, "0"},
        {-0.0, "0"},
        {42, "42"},
        {-7, "-7"},
        {0.1, "0.1"},
        {0.0005, "0.0005"},
        {1e300, "1e+300"},
        {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"},
        {1.0 / 3.0, "0.3333333333333333"},
        {0.1 + 0.2, "0.30000000000000004"},
    };
    struct buf b;
    size_t i;

    buf_init(&b);
    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        b.len = 0;
        metrics_format_value(&b, cases[i].v);
        cr_assert_str_eq(b.data, cases[i].text, "case %zu", i);
        if (isfinite(cases[i].v)) {
            cr_assert_eq(strtod(b.data, NULL), cases[i].v, "%s does not round-trip", b.data);
        }
    }
    b.len = 0;
    metrics_format_value(&b, NAN);
    cr_assert_str_eq(b.data, "NaN");
    buf_free(&b);
}

Test(metrics, histogram_buckets_are_cumulative)
{
    const char *labels[] = {"real"};
    struct metric_series *s = metrics_series(METRIC_EMBEDDING_TEXT_LENGTH, labels);
    char *page;

    /* 16 falls in le=16 (bounds are inclusive), 17 and 32 in le=32, 100 in le=128. */
    metrics_observe(s, 3);
    metrics_observe(s, 16);
    metrics_observe(s, 17);
    metrics_observe(s, 32);
    metrics_observe(s, 100);
    page = render();
    cr_assert_float_eq(sample_value(page, "embedding_text_length_bucket{mode=\"real\",le=\"16\"}"),
                       2.0, 1e-9);
    cr_assert_float_eq(sample_value(page, "embedding_text_length_bucket{mode=\"real\",le=\"32\"}"),
                       4.0, 1e-9);
    cr_assert_float_eq(sample_value(page, "embedding_text_length_bucket{mode=\"real\",le=\"64\"}"),
                       4.0, 1e-9);
    cr_assert_float_eq(sample_value(page, "embedding_text_length_bucket{mode=\"real\",le=\"128\"}"),
                       5.0, 1e-9);
    cr_assert_float_eq(
        sample_value(page, "embedding_text_length_bucket{mode=\"real\",le=\"8192\"}"), 5.0, 1e-9);
    free(page);
}

Test(metrics, histogram_inf_bucket_equals_count_and_sum_adds_up)
{
    struct metric_series *s = metrics_series(METRIC_REQUEST_DURATION, (const char *[]){"embed"});
    double observed[] = {0.0001, 0.003, 0.75, 45, 120};
    double expected_sum = 0;
    char *page;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(observed); i++) {
        metrics_observe(s, observed[i]);
        expected_sum += observed[i];
    }
    metrics_observe(s, NAN); /* dropped */
    page = render();
    cr_assert_float_eq(
        sample_value(page, "akosha_request_duration_seconds_bucket{route=\"embed\",le=\"+Inf\"}"),
        (double)ARRAY_SIZE(observed), 1e-9);
    cr_assert_float_eq(sample_value(page, "akosha_request_duration_seconds_count{route=\"embed\"}"),
                       (double)ARRAY_SIZE(observed), 1e-9);
    /* 120 is above the last bound (60): only +Inf holds it. */
    cr_assert_float_eq(
        sample_value(page, "akosha_request_duration_seconds_bucket{route=\"embed\",le=\"60\"}"),
        (double)ARRAY_SIZE(observed) - 1, 1e-9);
    cr_assert_float_eq(
        sample_value(page, "akosha_request_duration_seconds_bucket{route=\"embed\",le=\"0.0005\"}"),
        1.0, 1e-9);
    cr_assert_float_eq(sample_value(page, "akosha_request_duration_seconds_sum{route=\"embed\"}"),
                       expected_sum, 1e-9);
    cr_assert_float_eq(metrics_histogram_sum(s), expected_sum, 1e-9);
    cr_assert_eq(metrics_histogram_count(s), ARRAY_SIZE(observed));
    /* The +Inf line is the last bucket line: le values ascend. */
    cr_assert_lt(strstr(page, "le=\"60\"}"), strstr(page, "le=\"+Inf\"}"));
    free(page);
}

Test(metrics, every_family_has_help_and_type_once_before_its_samples)
{
    char *page;
    size_t i;

    populate_every_direct_family();
    metrics_add_collector(fill_collected, NULL);
    page = render();
    for (i = 0; i < METRIC_COUNT; i++) {
        const struct metric_family *f = &metrics_families[i];
        char help[256], type[256], sample[256];
        const char *h, *t, *s;

        snprintf(help, sizeof(help), "# HELP %s ", f->name);
        snprintf(type, sizeof(type), "# TYPE %s %s\n", f->name,
                 f->type == METRIC_COUNTER ? "counter"
                 : f->type == METRIC_GAUGE ? "gauge"
                                           : "histogram");
        snprintf(sample, sizeof(sample), "\n%s", f->name);
        h = strstr(page, help);
        t = strstr(page, type);
        cr_assert_not_null(h, "no HELP for %s", f->name);
        cr_assert_not_null(t, "no TYPE for %s", f->name);
        cr_assert_eq(count_occurrences(page, help), 1, "HELP twice for %s", f->name);
        cr_assert_eq(count_occurrences(page, type), 1, "TYPE twice for %s", f->name);
        cr_assert_lt(h, t, "%s: TYPE before HELP", f->name);
        s = strstr(t, sample);
        cr_assert_not_null(s, "%s has no sample", f->name);
        cr_assert_eq(s, t + strlen(type) - 1, "%s: samples do not follow TYPE", f->name);
    }
    free(page);
}

Test(metrics, samples_of_a_family_are_never_split)
{
    bool seen[METRIC_COUNT] = {false};
    int current = -1;
    const char *line;
    char *page;

    populate_every_direct_family();
    metrics_add_collector(fill_collected, NULL);
    /* Series created in interleaved order across families must still render grouped. */
    metrics_inc(metrics_series(METRIC_REQUESTS, (const char *[]){"embed", "503", "other"}));
    metrics_inc(metrics_series(METRIC_FALLBACK, (const char *[]){"all_open", "other"}));
    metrics_inc(metrics_series(METRIC_REQUESTS, (const char *[]){"embeddings", "200", "m"}));
    page = render();
    for (line = page; *line != '\0'; line = strchr(line, '\n') + 1) {
        size_t len = (size_t)(strchr(line, '\n') - line);
        int fam;

        if (line[0] == '#') {
            continue;
        }
        fam = family_of_sample(line, len);
        cr_assert_geq(fam, 0, "sample of an undeclared family: %.*s", (int)len, line);
        if (fam != current) {
            cr_assert_not(seen[fam], "%s samples split", metrics_families[fam].name);
            seen[fam] = true;
            current = fam;
        }
    }
    free(page);
}

Test(metrics, collector_output_appears_under_its_family)
{
    char *page;
    const char *type_state, *type_next, *sample;

    metrics_add_collector(fill_collected, NULL);
    page = render();
    type_state = strstr(page, "# TYPE circuit_state gauge\n");
    type_next = strstr(page, "# HELP circuit_total_calls_total ");
    sample = strstr(page, "circuit_state{service_name=\"ollama \\\"2\\\"\"} 0.5\n");
    cr_assert_not_null(type_state);
    cr_assert_not_null(type_next);
    cr_assert_not_null(sample, "%s", page);
    cr_assert(sample > type_state && sample < type_next, "collector sample outside its family");
    cr_assert_float_eq(
        sample_value(page, "akosha_upstream_connections{upstream=\"tei\",state=\"idle\"}"), 1.0,
        1e-9);
    free(page);

    metrics_remove_collector(fill_collected, NULL);
    page = render();
    cr_assert_null(strstr(page, "circuit_state{"), "removed collector still ran");
    free(page);
}

static void
misdirected_collector(struct metrics_writer *w, void *arg)
{
    (void)arg;
    metrics_writer_sample(w, METRIC_FALLBACK, (const char *[]){"from_collector", "other"}, 5);
    metrics_writer_sample(w, METRIC_FALLBACK_QUEUE_DEPTH, NULL, 3);
}

Test(metrics, collector_sample_for_a_direct_family_is_dropped)
{
    char *page;

    metrics_add_collector(misdirected_collector, NULL);
    page = render();
    cr_assert_null(strstr(page, "from_collector"), "%s", page);
    cr_assert_float_eq(sample_value(page, "akosha_fallback_queue_depth"), 3.0, 1e-9);
    free(page);
}

struct hammer {
    struct metric_series *counter;
    struct metric_series *histogram;
    struct metric_series *gauge;
};

#define THREADS 4
#define INCREMENTS 100000

static atomic_bool stop_rendering;

static void *
hammer_thread(void *arg)
{
    struct hammer *h = arg;
    size_t i;

    for (i = 0; i < INCREMENTS; i++) {
        metrics_inc(h->counter);
        metrics_observe(h->histogram, (double)(i % 100) * 0.001);
        metrics_gauge_add(h->gauge, 1);
    }
    return NULL;
}

static void *
create_and_hammer_thread(void *arg)
{
    struct hammer h;

    (void)arg;
    /* Every thread races to create the same series. */
    h.counter = metrics_series(METRIC_UPSTREAM_REQUESTS, (const char *[]){"tei", "success"});
    h.histogram = metrics_series(METRIC_UPSTREAM_REQUEST_DURATION, (const char *[]){"tei"});
    h.gauge = metrics_series(METRIC_REQUESTS_IN_FLIGHT, NULL);
    return hammer_thread(&h);
}

static void *
render_thread(void *arg)
{
    size_t *renders = arg;

    while (!atomic_load(&stop_rendering)) {
        char *page = render();
        double inf = sample_value(
            page, "akosha_upstream_request_duration_seconds_bucket{upstream=\"tei\",le=\"+Inf\"}");
        double count =
            sample_value(page, "akosha_upstream_request_duration_seconds_count{upstream=\"tei\"}");

        /* NaN before the series exists; afterwards the two lines always agree. */
        if (!isnan(inf)) {
            cr_assert_eq(inf, count);
        }
        free(page);
        (*renders)++;
    }
    return NULL;
}

Test(metrics, concurrent_updates_are_exact_while_rendering)
{
    pthread_t workers[THREADS], renderer;
    size_t renders = 0;
    struct metric_series *counter, *histogram, *gauge;
    char *page;
    size_t i;

    atomic_store(&stop_rendering, false);
    cr_assert_eq(pthread_create(&renderer, NULL, render_thread, &renders), 0);
    for (i = 0; i < THREADS; i++) {
        cr_assert_eq(pthread_create(&workers[i], NULL, create_and_hammer_thread, NULL), 0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(workers[i], NULL);
    }
    atomic_store(&stop_rendering, true);
    pthread_join(renderer, NULL);

    counter = metrics_series(METRIC_UPSTREAM_REQUESTS, (const char *[]){"tei", "success"});
    histogram = metrics_series(METRIC_UPSTREAM_REQUEST_DURATION, (const char *[]){"tei"});
    gauge = metrics_series(METRIC_REQUESTS_IN_FLIGHT, NULL);
    cr_assert_eq(metrics_counter_value(counter), (uint64_t)THREADS * INCREMENTS);
    cr_assert_eq(metrics_histogram_count(histogram), (uint64_t)THREADS * INCREMENTS);
    cr_assert_float_eq(metrics_gauge_value(gauge), (double)THREADS * INCREMENTS, 1e-9);
    cr_assert_gt(renders, 0);
    page = render();
    cr_assert_float_eq(
        sample_value(page, "akosha_upstream_requests_total{upstream=\"tei\",outcome=\"success\"}"),
        (double)THREADS * INCREMENTS, 1e-9);
    cr_assert_eq(count_occurrences(page, "akosha_upstream_requests_total{upstream=\"tei\""), 1,
                 "racing creators made duplicate series");
    free(page);
}

/* Process */

Test(metrics, process_stat_parses_fields_after_a_tricky_command_name)
{
    /* comm "a) (b c" holds spaces and a ')'. */
    const char *stat = "1234 (a) (b c) S 1 1234 1234 0 -1 4194560 500 0 0 0 "
                       "250 150 0 0 20 0 3 0 1000 104857600 2560 18446744073709551615 "
                       "1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
    struct metrics_process p;
    const char *cause = NULL;

    cr_assert_eq(metrics_process_parse_stat(stat, 100, 4096, 1700000000, &p, &cause), 0, "%s",
                 cause);
    cr_assert_float_eq(p.cpu_seconds, 4.0, 1e-9);                 /* (250 + 150) / 100 */
    cr_assert_float_eq(p.start_time_seconds, 1700000010.0, 1e-6); /* btime + 1000 / 100 */
    cr_assert_float_eq(p.virtual_bytes, 104857600.0, 1e-9);
    cr_assert_float_eq(p.resident_bytes, 2560.0 * 4096.0, 1e-9);
}

Test(metrics, process_stat_rejects_truncated_text)
{
    struct metrics_process p;
    const char *cause = NULL;

    cr_assert_eq(metrics_process_parse_stat("1234 (x) S 1 2 3", 100, 4096, 0, &p, &cause), -1);
    cr_assert_not_null(cause);
    cause = NULL;
    cr_assert_eq(metrics_process_parse_stat("garbage", 100, 4096, 0, &p, &cause), -1);
    cr_assert_not_null(cause);
}

Test(metrics, process_limits_reads_the_soft_open_files_limit)
{
    const char *limits =
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max processes             63704                63704                "
        "processes\n"
        "Max open files            1024                 524288               "
        "files\n";
    const char *unlimited = "Max open files            unlimited            unlimited            "
                            "files\n";
    const char *cause = NULL;
    double max_fds = 0;

    cr_assert_eq(metrics_process_parse_limits(limits, &max_fds, &cause), 0);
    cr_assert_float_eq(max_fds, 1024.0, 1e-9);
    cr_assert_eq(metrics_process_parse_limits(unlimited, &max_fds, &cause), 0);
    cr_assert_float_eq(max_fds, -1.0, 1e-9);
    cr_assert_eq(metrics_process_parse_limits("Max processes 5\n", &max_fds, &cause), -1);
    cr_assert_not_null(cause);
}

Test(metrics, process_families_report_this_process)
{
    char *page = render();
    double rss = sample_value(page, "process_resident_memory_bytes");
    double vsz = sample_value(page, "process_virtual_memory_bytes");
    double fds = sample_value(page, "process_open_fds");
    double max_fds = sample_value(page, "process_max_fds");
    double start = sample_value(page, "process_start_time_seconds");
    double now = (double)util_wall_ms() / 1000.0;

    cr_assert_gt(rss, 0);
    cr_assert_geq(vsz, rss);
    cr_assert_geq(fds, 3, "stdin, stdout and stderr at least");
    cr_assert_geq(max_fds, fds);
    cr_assert(start > now - 3600 && start <= now + 1, "start %f, now %f", start, now);
    cr_assert_geq(sample_value(page, "process_cpu_seconds_total"), 0);
    free(page);
}

/* promtool */

static bool
have_promtool(void)
{
    return system("command -v promtool >/dev/null 2>&1") == 0;
}

Test(metrics, promtool_accepts_a_page_with_every_family_populated)
{
    char path[] = "/tmp/akosha-metrics-XXXXXX";
    char cmd[256], out[4096];
    size_t n;
    FILE *p;
    char *page;
    int fd, status;

    /* A failure, not a skip: a skipped Criterion test would not show in make check. */
    cr_assert(have_promtool(), "promtool not installed (Debian: apt-get install prometheus)");
    populate_every_direct_family();
    metrics_add_collector(fill_collected, NULL);
    page = render();
    fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, page, strlen(page)), (ssize_t)strlen(page));
    close(fd);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    status = pclose(p);
    unlink(path);
    cr_assert_eq(n, 0, "promtool: %s", out);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "promtool exit %d", status);
    free(page);
}

/* OpenMetrics */

Test(metrics, openmetrics_names_counter_families_without_total_and_samples_with_it)
{
    const char *lv[] = {"real"};
    char *page;

    metrics_add(metrics_series(METRIC_EMBEDDING_GENERATED, lv), 3);
    page = render_openmetrics();
    cr_assert_not_null(strstr(page, "# TYPE embedding_generated counter\n"), "%s", page);
    cr_assert_not_null(strstr(page, "# HELP embedding_generated Embeddings"), "%s", page);
    cr_assert_not_null(strstr(page, "\nembedding_generated_total{mode=\"real\"} 3\n"));
    cr_assert_null(strstr(page, "# TYPE embedding_generated_total"));
    cr_assert_null(strstr(page, " untyped\n"));
    free(page);
    /* The 0.0.4 text keeps the sample name on the family. */
    page = render();
    cr_assert_not_null(strstr(page, "# TYPE embedding_generated_total counter\n"));
    cr_assert_null(strstr(page, "# EOF"));
    free(page);
}

Test(metrics, openmetrics_page_ends_with_eof_once)
{
    char *page = render_openmetrics();
    size_t len = strlen(page);
    const char *eof = strstr(page, "# EOF\n");

    cr_assert_not_null(eof);
    cr_assert_eq((size_t)(eof - page), len - 6, "# EOF must be the last line");
    free(page);
}

Test(metrics, openmetrics_bucket_carries_the_latest_exemplar_of_its_observations)
{
    const char *lv[] = {"embeddings"};
    struct metric_series *s = metrics_series(METRIC_REQUEST_DURATION, lv);
    uint8_t first[METRICS_TRACE_ID_SIZE], second[METRICS_TRACE_ID_SIZE];
    char *page;

    memset(first, 0x11, sizeof(first));
    memset(second, 0xab, sizeof(second));
    second[15] = 0x01;
    metrics_observe_exemplar(s, 0.2, first, 1700000000.25);
    metrics_observe_exemplar(s, 0.15, second, 1700000001.5);
    metrics_observe(s, 3); /* no trace: its bucket has no exemplar */
    page = render_openmetrics();
    cr_assert_not_null(strstr(page, "akosha_request_duration_seconds_bucket{route=\"embeddings\","
                                    "le=\"0.25\"} 2 # {trace_id=\"abababababababababababababab"
                                    "ab01\"} 0.15 1700000001.500\n"),
                       "%s", page);
    cr_assert_not_null(strstr(page, "akosha_request_duration_seconds_bucket{route=\"embeddings\","
                                    "le=\"5.0\"} 3\n"),
                       "whole bounds are canonical, and no exemplar without a trace: %s", page);
    cr_assert_not_null(strstr(page, "akosha_request_duration_seconds_bucket{route=\"embeddings\","
                                    "le=\"+Inf\"} 3\n"));
    cr_assert_not_null(
        strstr(page, "akosha_request_duration_seconds_count{route=\"embeddings\"} 3\n"));
    cr_assert_null(strstr(page, "11111111"), "the older exemplar was replaced");
    free(page);
    /* The 0.0.4 text has no exemplars, and keeps its bounds as they were. */
    page = render();
    cr_assert_null(strstr(page, "trace_id"));
    cr_assert_not_null(strstr(page, "le=\"5\"} 3\n"));
    cr_assert_eq(metrics_histogram_count(s), 3);
    free(page);
}

Test(metrics, accept_header_chooses_openmetrics_only_when_preferred)
{
    static const char prometheus[] =
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    static const char text_first[] = "text/plain;version=0.0.4, application/openmetrics-text;q=0.5";
    static const char refused[] = "application/openmetrics-text; q=0, text/plain";

    cr_assert_eq(metrics_negotiate(prometheus, strlen(prometheus)), METRICS_FORMAT_OPENMETRICS);
    cr_assert_eq(metrics_negotiate("application/openmetrics-text", 28), METRICS_FORMAT_OPENMETRICS);
    cr_assert_eq(metrics_negotiate(text_first, strlen(text_first)), METRICS_FORMAT_PROMETHEUS);
    cr_assert_eq(metrics_negotiate(refused, strlen(refused)), METRICS_FORMAT_PROMETHEUS);
    cr_assert_eq(metrics_negotiate("*/*", 3), METRICS_FORMAT_PROMETHEUS);
    cr_assert_eq(metrics_negotiate("", 0), METRICS_FORMAT_PROMETHEUS);
    cr_assert_str_eq(metrics_content_type(METRICS_FORMAT_OPENMETRICS),
                     "application/openmetrics-text; version=1.0.0; charset=utf-8");
    cr_assert_str_eq(metrics_content_type(METRICS_FORMAT_PROMETHEUS),
                     "text/plain; version=0.0.4; charset=utf-8");
}

/*
 * promtool 2.42's "check metrics" reads only the 0.0.4 text; its OpenMetrics
 * parser is reached through "tsdb create-blocks-from openmetrics", which
 * wants a timestamp on every sample. Add one (before any exemplar) and let it
 * parse the page: names, types, exemplars and # EOF.
 */
static void
write_timestamped(FILE *f, const char *page)
{
    const char *line = page, *nl, *hash;

    for (; *line != '\0'; line = nl + 1) {
        nl = strchr(line, '\n');
        cr_assert_not_null(nl);
        if (line[0] == '#') {
            fwrite(line, 1, (size_t)(nl - line + 1), f);
            continue;
        }
        hash = memchr(line, '#', (size_t)(nl - line));
        if (hash == NULL) {
            fprintf(f, "%.*s 1700000000\n", (int)(nl - line), line);
        } else {
            fprintf(f, "%.*s1700000000 %.*s\n", (int)(hash - line), line, (int)(nl - hash), hash);
        }
    }
}

Test(metrics, promtool_parses_the_openmetrics_page_with_exemplars)
{
    char dir[] = "/tmp/akosha-om-XXXXXX";
    char path[300], cmd[700], out[4096];
    const char *lv[] = {"embeddings"};
    uint8_t id[METRICS_TRACE_ID_SIZE];
    size_t n;
    FILE *f, *p;
    char *page;
    int status;

    cr_assert(have_promtool(), "promtool not installed (Debian: apt-get install prometheus)");
    populate_every_direct_family();
    metrics_add_collector(fill_collected, NULL);
    memset(id, 0x5a, sizeof(id));
    metrics_observe_exemplar(metrics_series(METRIC_REQUEST_DURATION, lv), 0.03, id, 1700000000.125);
    page = render_openmetrics();
    cr_assert_not_null(strstr(page, "# {trace_id=\""));
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/page.om", dir);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    write_timestamped(f, page);
    fclose(f);
    snprintf(cmd, sizeof(cmd),
             "promtool tsdb create-blocks-from openmetrics %s %s/blocks >/dev/null 2>%s/err; "
             "rc=$?; cat %s/err; rm -rf %s; exit $rc",
             path, dir, dir, dir, dir);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    status = pclose(p);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "promtool: %s", out);
    free(page);
}

/* Drift between the table and conf/ */

static const char *
srcdir(void)
{
    const char *d = getenv("srcdir");
    return d != NULL ? d : ".";
}

static bool
is_ident_start(char c)
{
    return isalpha((unsigned char)c) || c == '_' || c == ':';
}

static bool
is_ident(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == ':';
}

static bool
is_promql_word(const char *w)
{
    /* Aggregations may be followed by "by (...)" rather than "(", so list them. */
    static const char *words[] = {
        "by",      "without",  "on",           "ignoring", "group_left", "group_right", "bool",
        "and",     "or",       "unless",       "offset",   "inf",        "nan",         "sum",
        "min",     "max",      "avg",          "count",    "stddev",     "stdvar",      "topk",
        "bottomk", "quantile", "count_values", "group",    NULL};
    size_t i;

    for (i = 0; words[i] != NULL; i++) {
        if (strcasecmp(w, words[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* Whether conf/alerts.yml records name with a recording rule. */
static bool
recorded_in_alerts(const char *name)
{
    char path[512], line[2048];
    bool found = false;
    FILE *f;

    snprintf(path, sizeof(path), "%s/conf/alerts.yml", srcdir());
    f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        char *p = line, *end;

        while (*p == ' ' || *p == '-') {
            p++;
        }
        if (strncmp(p, "record:", 7) != 0) {
            continue;
        }
        for (p += 7; *p == ' '; p++) {
        }
        for (end = p; is_ident(*end); end++) {
        }
        found = (size_t)(end - p) == strlen(name) && strncmp(p, name, (size_t)(end - p)) == 0;
    }
    fclose(f);
    return found;
}

static bool
metric_declared(const char *name)
{
    static const char *suffixes[] = {"_bucket", "_sum", "_count"};
    size_t i, k, len = strlen(name);

    /* up comes from Prometheus itself. */
    if (strcmp(name, "up") == 0) {
        return true;
    }
    /* Recording rules (the SLO ratios) are built from declared metrics themselves. */
    if (strchr(name, ':') != NULL) {
        return recorded_in_alerts(name);
    }
    for (i = 0; i < METRIC_COUNT; i++) {
        const char *f = metrics_families[i].name;
        size_t flen = strlen(f);

        if (strcmp(name, f) == 0) {
            return true;
        }
        if (metrics_families[i].type != METRIC_HISTOGRAM || strncmp(name, f, flen) != 0) {
            continue;
        }
        for (k = 0; k < ARRAY_SIZE(suffixes); k++) {
            if (strcmp(name + flen, suffixes[k]) == 0 && len > flen) {
                return true;
            }
        }
    }
    return false;
}

/*
 * Every metric name in a PromQL expression: identifiers outside {}, [], quotes
 * and grouping lists, that are not calls or keywords. Returns how many it saw.
 */
static size_t
check_expr_names(const char *expr, const char *where)
{
    const char *p = expr;
    size_t seen = 0;
    bool skip_list = false;

    while (*p != '\0') {
        if (*p == '"' || *p == '\'') {
            char q = *p++;
            while (*p != '\0' && *p != q) {
                p += (*p == '\\' && p[1] != '\0') ? 2 : 1;
            }
            p += *p != '\0';
        } else if (*p == '{' || *p == '[') {
            char close = *p == '{' ? '}' : ']';
            while (*p != '\0' && *p != close) {
                p++;
            }
            p += *p != '\0';
        } else if (*p == '(' && skip_list) {
            while (*p != '\0' && *p != ')') {
                p++;
            }
            p += *p != '\0';
            skip_list = false;
        } else if (isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1]))) {
            /* Numbers, durations ("5m") and exponents ("1e3"). */
            while (is_ident(*p) || *p == '.') {
                p++;
            }
        } else if (is_ident_start(*p)) {
            char word[128];
            const char *q = p;
            size_t len;

            while (is_ident(*q)) {
                q++;
            }
            len = MIN((size_t)(q - p), sizeof(word) - 1);
            memcpy(word, p, len);
            word[len] = '\0';
            p = q;
            while (*q == ' ') {
                q++;
            }
            if (is_promql_word(word)) {
                skip_list = strcmp(word, "by") == 0 || strcmp(word, "without") == 0 ||
                            strcmp(word, "on") == 0 || strcmp(word, "ignoring") == 0 ||
                            strcmp(word, "group_left") == 0 || strcmp(word, "group_right") == 0;
            } else if (*q != '(') {
                cr_expect(metric_declared(word), "%s: undeclared metric %s in: %s", where, word,
                          expr);
                seen++;
            }
        } else {
            p++;
        }
    }
    return seen;
}

Test(metrics, alert_rules_use_only_declared_metrics)
{
    char path[512], line[2048];
    size_t exprs = 0, names = 0;
    FILE *f;

    snprintf(path, sizeof(path), "%s/conf/alerts.yml", srcdir());
    f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s (run from the source root or set srcdir)", path);
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = line;

        while (*p == ' ') {
            p++;
        }
        if (strncmp(p, "expr:", 5) == 0) {
            /* Rules keep each expression on one line so this reader stays simple. */
            cr_assert(strchr("|>\n", p[6]) == NULL, "multi-line expr in %s: %s", path, p);
            names += check_expr_names(p + 5, "alerts.yml");
            exprs++;
        }
    }
    fclose(f);
    cr_assert_geq(exprs, 6, "expected an expression per alert");
    cr_assert_gt(names, exprs);
}

static void
collect_dashboard_exprs(json_t *node, size_t *exprs, size_t *names)
{
    const char *key;
    json_t *value;
    size_t i;

    if (json_is_object(node)) {
        json_object_foreach(node, key, value)
        {
            if (strcmp(key, "expr") == 0 && json_is_string(value)) {
                *names += check_expr_names(json_string_value(value), "akosha.json");
                (*exprs)++;
            } else {
                collect_dashboard_exprs(value, exprs, names);
            }
        }
    } else if (json_is_array(node)) {
        json_array_foreach(node, i, value)
        {
            collect_dashboard_exprs(value, exprs, names);
        }
    }
}

Test(metrics, dashboard_queries_use_only_declared_metrics)
{
    char path[512];
    json_error_t err;
    size_t exprs = 0, names = 0;
    json_t *root;

    snprintf(path, sizeof(path), "%s/conf/grafana/akosha.json", srcdir());
    root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "%s:%d: %s", path, err.line, err.text);
    collect_dashboard_exprs(root, &exprs, &names);
    cr_assert_geq(exprs, 15, "the dashboard should query traffic, breakers and the proxy");
    cr_assert_geq(names, exprs);
    json_decref(root);
}
