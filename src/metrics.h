/*
 * metrics.h - the Prometheus registry and its exposition: the text format
 * 0.0.4 by default, OpenMetrics 1.0.0 when the scraper asks for it.
 *
 * Every family is one row of metrics_families[] (metrics.c): name, type,
 * help, label names, histogram buckets and whether its values are kept here
 * ("direct") or computed at scrape time by a collector ("collected"). The
 * page is generated from that table, so a family cannot be exposed without
 * HELP/TYPE, and families are always emitted whole, in table order. Every
 * declared family gets its HELP/TYPE lines even when it has no samples yet.
 *
 * Direct families: a caller looks a series up once with metrics_series() and
 * keeps the handle; updating is then one relaxed atomic operation, with no
 * lock shared with the scrape. Lookups of existing series are lock-free;
 * creating a new series takes a mutex that only other creators contend on.
 *
 * Value representation:
 *   counters    _Atomic uint64_t, integer increments.
 *   gauges      an IEEE double kept as its bit pattern in an _Atomic uint64_t;
 *               set is a store, add is a compare-and-swap loop.
 *   histograms  one _Atomic uint64_t per bucket (non-cumulative, +Inf last) and
 *               the sum as an atomic double (CAS loop on its bit pattern). The
 *               rendered _count is the total of the bucket counts read for that
 *               scrape, so +Inf always equals _count even mid-update. NaN
 *               observations are dropped.
 *
 * Collected families (breakers, worker queue depth, connection pools, the
 * process) are written by collectors registered with metrics_add_collector().
 * metrics_render() runs every collector once per scrape, buffers what they
 * write per family, and emits each family's samples together.
 *
 * Label values by family (documented here because callers must agree):
 *   mode      "real" (an upstream answered) | "fallback" (hash worker)
 *   route     "embeddings" (/v1/embeddings) | "embed" (TEI /embed) |
 *             "api_embed" (Ollama /api/embed) | "api_embeddings" (Ollama
 *             /api/embeddings) | "other"
 *   code      the HTTP status sent to the client, "200", "503", ...
 *   outcome   of one upstream attempt: "success" (2xx) | "client_error" (4xx
 *             other than 408/429, the request's fault, not the upstream's) |
 *             "failure" (5xx, 408, 429 or an unparsable response) |
 *             "timeout" | "connect_error" (connect, TLS or reset before a
 *             response) | "rejected" (breaker open or half-open full, or
 *             every upstream failing its health checks: no attempt was made)
 *   reason    akosha_retries_total: "failure" | "timeout" | "connect_error";
 *             akosha_fallback_total: "all_open" | "attempts_exhausted" |
 *             "no_upstreams" | "mode_always" | "retry_budget";
 *             akosha_fallback_shed_total: "stale" (waited queue_timeout) |
 *             "deadline" (its work would end past request_timeout) |
 *             "cancelled" (the client left or timed out first)
 *   state     akosha_upstream_connections: "idle" | "active"
 *   result    akosha_health_checks_total: "pass" (2xx in time) | "fail"
 *   result    akosha_config_reloads_total: "success" | "failure"
 *   service_name, upstream   the upstream's name from the config
 *
 * Breaker collectors must use these meanings: circuit_state 0 open, 1 closed,
 * 2 half_open; circuit_total_calls_total counts every call offered to the
 * breaker, rejected ones included, so successful + failed + rejected ==
 * total; circuit_success_rate is successful / (successful + failed) over the
 * breaker's current window, 0 to 1 (1 when the window is empty).
 *
 * Removal: a series is never freed before metrics_free(), because handles are
 * cached and the scrape walks the lists without a lock. metrics_series_remove()
 * hides a series from the page (for an upstream dropped on reload); looking the
 * same labels up again shows it again, with its values kept.
 *
 * OpenMetrics: the same table and values; counter families are named
 * without "_total" in HELP/TYPE (their samples keep it), bucket bounds are
 * canonical ("1.0"), the page ends with "# EOF", and histogram buckets carry
 * an exemplar, the latest observation made with metrics_observe_exemplar()
 * that fell in that bucket: # {trace_id="<32 hex>"} value timestamp.
 *
 * Threads: metrics_series, metrics_inc, _add, _gauge_set, _gauge_add, _observe and
 * metrics_series_remove may be called from any thread. metrics_init,
 * metrics_free and metrics_add_collector are for start-up and shutdown on one
 * thread. metrics_render may run concurrently with updates (renders are
 * serialised with each other). metrics_observe_exemplar may be called from
 * any thread, but from only one per series (the loop thread): its slots have
 * a single writer and a sequence count, so neither side takes a lock.
 */
#ifndef AKOSHA_METRICS_H
#define AKOSHA_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum metric_type {
    METRIC_COUNTER,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
};

/* One per row of metrics_families[], in the same order. */
enum metric_id {
    METRIC_EMBEDDING_GENERATED,
    METRIC_EMBEDDING_BATCH_GENERATED,
    METRIC_EMBEDDING_TEXT_LENGTH,
    METRIC_EMBEDDING_BATCH_SIZE,
    METRIC_CIRCUIT_STATE,
    METRIC_CIRCUIT_TOTAL_CALLS,
    METRIC_CIRCUIT_SUCCESSFUL_CALLS,
    METRIC_CIRCUIT_FAILED_CALLS,
    METRIC_CIRCUIT_REJECTED_CALLS,
    METRIC_CIRCUIT_CONSECUTIVE_FAILURES,
    METRIC_CIRCUIT_CONSECUTIVE_SUCCESSES,
    METRIC_CIRCUIT_SUCCESS_RATE,
    METRIC_REQUESTS,
    METRIC_REQUEST_DURATION,
    METRIC_UPSTREAM_REQUESTS,
    METRIC_UPSTREAM_REQUEST_DURATION,
    METRIC_RETRIES,
    METRIC_UPSTREAM_POOL_WAITS,
    METRIC_RETRY_BUDGET_EXHAUSTED,
    METRIC_FALLBACK,
    METRIC_FALLBACK_QUEUE_DEPTH,
    METRIC_FALLBACK_SHED,
    METRIC_REQUESTS_IN_FLIGHT,
    METRIC_UPSTREAM_CONNECTIONS,
    METRIC_UPSTREAM_HEALTHY,
    METRIC_HEALTH_CHECKS,
    METRIC_HEALTH_CHECK_LAST_SECONDS,
    METRIC_HEALTH_CHECK_LAST_SUCCESS,
    METRIC_UPSTREAM_LATENCY_EWMA,
    METRIC_CONFIG_RELOADS,
    METRIC_BUILD_INFO,
    METRIC_SPANS_EXPORTED,
    METRIC_SPANS_DROPPED,
    METRIC_SPAN_EXPORT_FAILURES,
    METRIC_ACCESS_LOG_LINES,
    METRIC_ACCESS_LOG_DROPPED,
    METRIC_CACHE_REQUESTS,
    METRIC_CACHE_LOOKUPS,
    METRIC_CACHE_ENTRIES,
    METRIC_CACHE_BYTES,
    METRIC_CACHE_EVICTIONS,
    METRIC_CACHE_REDIS_LOOKUPS,
    METRIC_CACHE_REDIS_KEYS,
    METRIC_CACHE_REDIS_ERRORS,
    METRIC_CACHE_REDIS_LATENCY,
    METRIC_CACHE_REDIS_STORES,
    METRIC_CACHE_REDIS_CONNECTED,
    METRIC_PROCESS_RESIDENT_MEMORY,
    METRIC_PROCESS_VIRTUAL_MEMORY,
    METRIC_PROCESS_CPU_SECONDS,
    METRIC_PROCESS_OPEN_FDS,
    METRIC_PROCESS_MAX_FDS,
    METRIC_PROCESS_START_TIME,
    METRIC_COUNT
};

#define METRICS_MAX_LABELS 4

struct metric_family {
    const char *name;
    enum metric_type type;
    bool collected; /* values come from collectors, never from handles */
    const char *help;
    const char *labels[METRICS_MAX_LABELS + 1]; /* NULL-terminated */
    const double *buckets;                      /* histograms: ascending, +Inf implied */
    size_t nbuckets;
};

/* Indexed by enum metric_id; rendered in this order. */
extern const struct metric_family metrics_families[METRIC_COUNT];

/* Number of label names of a family. */
size_t metrics_family_nlabels(enum metric_id id);

struct metric_series;
struct metrics_writer;

typedef void (*metrics_collector_fn)(struct metrics_writer *w, void *arg);

/* Create the registry. Registers the process collector. */
void metrics_init(void);
/* Free every series and collector; all handles become invalid. */
void metrics_free(void);

/*
 * The series of a direct family with these label values (one per label name,
 * in declaration order; NULL for a family without labels), created on first
 * use. The registry owns the series; the pointer stays valid until
 * metrics_free(). Aborts on a collected family or a missing label value: both
 * are programming errors.
 */
struct metric_series *metrics_series(enum metric_id id, const char *const *label_values);
/* Hide a series from the page until it is looked up again. NULL is ignored. */
void metrics_series_remove(struct metric_series *s);

/* Counters. */
void metrics_inc(struct metric_series *s);
void metrics_add(struct metric_series *s, uint64_t n);
/* Gauges. */
void metrics_gauge_set(struct metric_series *s, double value);
void metrics_gauge_add(struct metric_series *s, int64_t delta);
/* Histograms. */
void metrics_observe(struct metric_series *s, double value);
#define METRICS_TRACE_ID_SIZE 16
/*
 * metrics_observe, and the observation becomes its bucket's exemplar (the
 * OpenMetrics page shows it): trace_id is copied; unix_seconds is when it was
 * made. One calling thread per series; see above.
 */
void metrics_observe_exemplar(struct metric_series *s, double value,
                              const uint8_t trace_id[METRICS_TRACE_ID_SIZE], double unix_seconds);
/*
 * Observations gathered ahead, before the series was known: counts[i] per
 * bucket (indexes from metrics_bucket_of, nbuckets + 1 of them) and their sum.
 */
size_t metrics_bucket_of(enum metric_id id, double value);
void metrics_observe_folded(struct metric_series *s, const uint32_t *counts, double sum);

/* Current values, for tests and the admin /stats page. */
uint64_t metrics_counter_value(const struct metric_series *s);
double metrics_gauge_value(const struct metric_series *s);
/* Observation count (sum of buckets) and sum of a histogram. */
uint64_t metrics_histogram_count(const struct metric_series *s);
double metrics_histogram_sum(const struct metric_series *s);

/* Convenience: build_info{version} = 1. */
void metrics_set_build_info(const char *version);

/*
 * Run fn at every scrape, on the rendering thread, with renders serialised.
 * arg is borrowed: it must outlive the registry (or the collector must be
 * removed with metrics_remove_collector first). fn must not add or remove
 * collectors or render: it runs under the render lock.
 */
void metrics_add_collector(metrics_collector_fn fn, void *arg);
void metrics_remove_collector(metrics_collector_fn fn, void *arg);

/*
 * Inside a collector: one sample of a collected counter or gauge family.
 * label_values as for metrics_series(). Samples for direct or histogram
 * families are dropped with a warning.
 */
void metrics_writer_sample(struct metrics_writer *w, enum metric_id id,
                           const char *const *label_values, double value);

enum metrics_format {
    METRICS_FORMAT_PROMETHEUS,  /* text 0.0.4 */
    METRICS_FORMAT_OPENMETRICS, /* OpenMetrics text 1.0.0, with exemplars */
};

/* Append the whole exposition page to out, as text 0.0.4. */
void metrics_render(struct buf *out);
/* Append the whole exposition page to out in fmt. */
void metrics_render_as(struct buf *out, enum metrics_format fmt);

/* Content-Type of the page in each format. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_OPENMETRICS_CONTENT_TYPE                                                           \
    "application/openmetrics-text; version=1.0.0; charset=utf-8"
/* The Content-Type for fmt (static). */
const char *metrics_content_type(enum metrics_format fmt);

/*
 * The format an Accept header value asks for: OpenMetrics when it names
 * application/openmetrics-text with a quality at least that of text/plain
 * (or a wildcard range); the 0.0.4 text otherwise, also for an absent (len 0) header.
 */
enum metrics_format metrics_negotiate(const char *accept, size_t len);

/* Append v as the exposition format writes numbers: integers without a
 * fraction, others shortest round-trip, "+Inf", "-Inf", "NaN". */
void metrics_format_value(struct buf *out, double v);

/* Append s with backslash, double quote and newline escaped (label values). */
void metrics_escape_label(struct buf *out, const char *s);

/*
 * Process statistics, parsed from /proc/self. The parsers are pure so tests
 * can feed them fixtures; metrics_process_read() reads the real files.
 */
struct metrics_process {
    double cpu_seconds;        /* utime + stime */
    double virtual_bytes;      /* vsize */
    double resident_bytes;     /* rss pages * page size */
    double start_time_seconds; /* since the epoch */
    double open_fds;
    double max_fds; /* soft limit; -1 when unlimited */
};

/*
 * Parse /proc/self/stat text into cpu, virtual, resident and start time; btime
 * is /proc/stat's boot time in seconds. 0, or -1 with *cause (static).
 */
int metrics_process_parse_stat(const char *text, long ticks_per_second, long page_size,
                               double btime, struct metrics_process *out, const char **cause)
    __attribute__((warn_unused_result));
/* Parse the soft "Max open files" limit from /proc/self/limits text. 0, or -1 with *cause. */
int metrics_process_parse_limits(const char *text, double *max_fds, const char **cause)
    __attribute__((warn_unused_result));
/* Read every field from /proc; fields that cannot be read are left at -1. */
void metrics_process_read(struct metrics_process *out);

#endif
