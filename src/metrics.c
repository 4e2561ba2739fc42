/*
 * metrics.c - the family table, the series registry and the text exposition.
 *
 * Series of a family form a singly linked list that only grows: creators
 * append under create_lock and publish with a release store, readers (lookups
 * and the scrape) walk it with acquire loads and no lock. Nothing is unlinked
 * before metrics_free(), which is what keeps cached handles valid.
 */
#include "metrics.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

static const double text_length_buckets[] = {16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
static const double batch_size_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
/* The proxy itself adds well under a millisecond; upstream calls take longer. */
static const double latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,   0.5,   1,      2.5,   5,    10,    30,   60};

#define BUCKETS(a) a, ARRAY_SIZE(a)
#define NO_BUCKETS NULL, 0

/* Field order: name, type, collected, help, labels, buckets. One family per row. */
/* clang-format off */
const struct metric_family metrics_families[METRIC_COUNT] = {
    [METRIC_EMBEDDING_GENERATED] = {"embedding_generated_total", METRIC_COUNTER, false,
                                    "Embeddings produced, one per input text, by mode "
                                    "(real: from an upstream, fallback: hash worker).",
                                    {"mode", NULL}, NO_BUCKETS},
    [METRIC_EMBEDDING_BATCH_GENERATED] = {"embedding_batch_generated_total", METRIC_COUNTER,
                                          false,
                                          "Embedding requests with more than one input, by mode.",
                                          {"mode", NULL}, NO_BUCKETS},
    [METRIC_EMBEDDING_TEXT_LENGTH] = {"embedding_text_length", METRIC_HISTOGRAM, false,
                                      "Characters per embedded input text, by mode.",
                                      {"mode", NULL}, BUCKETS(text_length_buckets)},
    [METRIC_EMBEDDING_BATCH_SIZE] = {"embedding_batch_size", METRIC_HISTOGRAM, false,
                                     "Input texts per embedding request, by mode.",
                                     {"mode", NULL}, BUCKETS(batch_size_buckets)},
    [METRIC_CIRCUIT_STATE] = {"circuit_state", METRIC_GAUGE, true,
                              "Circuit breaker state per upstream: 0 open, 1 closed, 2 half_open.",
                              {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_TOTAL_CALLS] = {"circuit_total_calls_total", METRIC_COUNTER, true,
                                    "Calls offered to the circuit breaker, rejected ones "
                                    "included.",
                                    {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_SUCCESSFUL_CALLS] = {"circuit_successful_calls_total", METRIC_COUNTER, true,
                                         "Calls the circuit breaker recorded as successful.",
                                         {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_FAILED_CALLS] = {"circuit_failed_calls_total", METRIC_COUNTER, true,
                                     "Calls the circuit breaker recorded as failed.",
                                     {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_REJECTED_CALLS] = {"circuit_rejected_calls_total", METRIC_COUNTER, true,
                                       "Calls the circuit breaker refused without trying the "
                                       "upstream (open, or half_open at its probe limit).",
                                       {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_CONSECUTIVE_FAILURES] = {"circuit_consecutive_failures", METRIC_GAUGE, true,
                                             "Failures recorded in a row since the last success.",
                                             {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_CONSECUTIVE_SUCCESSES] = {"circuit_consecutive_successes", METRIC_GAUGE,
                                              true,
                                              "Successes recorded in a row since the last "
                                              "failure.",
                                              {"service_name", NULL}, NO_BUCKETS},
    [METRIC_CIRCUIT_SUCCESS_RATE] = {"circuit_success_rate", METRIC_GAUGE, true,
                                     "Share of calls that succeeded in the breaker's current "
                                     "window, 0 to 1 (1 when the window is empty).",
                                     {"service_name", NULL}, NO_BUCKETS},
    [METRIC_REQUESTS] = {"akosha_requests_total", METRIC_COUNTER, false,
                         "Client requests answered, by route, HTTP status code and model "
                         "(configured models by name, the rest as other).",
                         {"route", "code", "model", NULL}, NO_BUCKETS},
    [METRIC_REQUEST_DURATION] = {"akosha_request_duration_seconds", METRIC_HISTOGRAM, false,
                                 "Time from a client request's head to its last response byte, "
                                 "retries and fallback included, by route.",
                                 {"route", NULL}, BUCKETS(latency_buckets)},
    [METRIC_UPSTREAM_REQUESTS] = {"akosha_upstream_requests_total", METRIC_COUNTER, false,
                                  "Attempts sent to an upstream (or refused by its breaker), by "
                                  "outcome.",
                                  {"upstream", "outcome", NULL}, NO_BUCKETS},
    [METRIC_UPSTREAM_REQUEST_DURATION] = {"akosha_upstream_request_duration_seconds",
                                          METRIC_HISTOGRAM, false,
                                          "Time of one upstream attempt, connect included.",
                                          {"upstream", NULL}, BUCKETS(latency_buckets)},
    [METRIC_RETRIES] = {"akosha_retries_total", METRIC_COUNTER, false,
                        "Retries sent to an upstream, by the reason the previous attempt failed.",
                        {"upstream", "reason", NULL}, NO_BUCKETS},
    [METRIC_UPSTREAM_POOL_WAITS] = {"akosha_upstream_pool_waits_total", METRIC_COUNTER, false,
                                    "Attempts that found every connection slot of an upstream "
                                    "busy and waited for one (not upstream failures).",
                                    {"upstream", NULL}, NO_BUCKETS},
    [METRIC_RETRY_BUDGET_EXHAUSTED] = {"akosha_retry_budget_exhausted_total", METRIC_COUNTER,
                                       false,
                                       "Retries not sent because the retry budget was spent.",
                                       {NULL}, NO_BUCKETS},
    [METRIC_FALLBACK] = {"akosha_fallback_total", METRIC_COUNTER, false,
                         "Requests answered by the fallback hash worker, by reason and model "
                         "(configured models by name, the rest as other).",
                         {"reason", "model", NULL}, NO_BUCKETS},
    [METRIC_FALLBACK_QUEUE_DEPTH] = {"akosha_fallback_queue_depth", METRIC_GAUGE, true,
                                     "Jobs waiting for a fallback worker thread.", {NULL},
                                     NO_BUCKETS},
    [METRIC_FALLBACK_SHED] = {"akosha_fallback_shed_total", METRIC_COUNTER, false,
                              "Fallback jobs dropped before their answer was complete, by "
                              "reason (stale: answered 503 after waiting queue_timeout; "
                              "deadline: answered 503, would end past request_timeout; "
                              "cancelled: the client left or timed out).",
                              {"reason", NULL}, NO_BUCKETS},
    [METRIC_REQUESTS_IN_FLIGHT] = {"akosha_requests_in_flight", METRIC_GAUGE, false,
                                   "Client requests received and not yet answered.", {NULL},
                                   NO_BUCKETS},
    [METRIC_UPSTREAM_CONNECTIONS] = {"akosha_upstream_connections", METRIC_GAUGE, true,
                                     "Open connections to an upstream, by state (idle, active).",
                                     {"upstream", "state", NULL}, NO_BUCKETS},
    [METRIC_UPSTREAM_HEALTHY] = {"akosha_upstream_healthy", METRIC_GAUGE, true,
                                 "1 when routing may use the upstream by its active health "
                                 "checks (always 1 without health_check), 0 when it failed them.",
                                 {"upstream", NULL}, NO_BUCKETS},
    [METRIC_HEALTH_CHECKS] = {"akosha_health_checks_total", METRIC_COUNTER, true,
                              "Active health checks finished, by result (pass: 2xx within "
                              "health_timeout; fail: anything else).",
                              {"upstream", "result", NULL}, NO_BUCKETS},
    [METRIC_HEALTH_CHECK_LAST_SECONDS] = {"akosha_health_check_last_duration_seconds",
                                          METRIC_GAUGE, true,
                                          "How long the upstream's last health check took.",
                                          {"upstream", NULL}, NO_BUCKETS},
    [METRIC_HEALTH_CHECK_LAST_SUCCESS] = {"akosha_health_check_last_success", METRIC_GAUGE, true,
                                          "1 when the upstream's last health check passed, 0 "
                                          "when it failed.",
                                          {"upstream", NULL}, NO_BUCKETS},
    [METRIC_UPSTREAM_LATENCY_EWMA] = {"akosha_upstream_latency_ewma_seconds", METRIC_GAUGE, true,
                                      "Peak-EWMA of the upstream's attempt latency, as balance = "
                                      "ewma sees it (0 before its first attempt).",
                                      {"upstream", NULL}, NO_BUCKETS},
    [METRIC_CONFIG_RELOADS] = {"akosha_config_reloads_total", METRIC_COUNTER, false,
                               "Configuration reloads, by result (success, failure).",
                               {"result", NULL}, NO_BUCKETS},
    [METRIC_BUILD_INFO] = {"akosha_build_info", METRIC_GAUGE, false,
                           "Always 1; the version label names the running build.",
                           {"version", NULL}, NO_BUCKETS},
    [METRIC_SPANS_EXPORTED] = {"akosha_spans_exported_total", METRIC_COUNTER, true,
                               "Spans accepted by the OTLP collector.", {NULL}, NO_BUCKETS},
    [METRIC_SPANS_DROPPED] = {"akosha_spans_dropped_total", METRIC_COUNTER, true,
                              "Spans discarded because the export queue was full or an export "
                              "failed.",
                              {NULL}, NO_BUCKETS},
    [METRIC_SPAN_EXPORT_FAILURES] = {"akosha_span_export_failures_total", METRIC_COUNTER, true,
                                     "OTLP export requests that failed.", {NULL}, NO_BUCKETS},
    [METRIC_ACCESS_LOG_LINES] = {"akosha_access_log_lines_total", METRIC_COUNTER, true,
                                 "Access log lines queued for writing.", {NULL}, NO_BUCKETS},
    [METRIC_ACCESS_LOG_DROPPED] = {"akosha_access_log_dropped_total", METRIC_COUNTER, true,
                                   "Access log lines dropped because access_log_buffer was "
                                   "full (the file was slow or could not be opened).",
                                   {NULL}, NO_BUCKETS},
    [METRIC_CACHE_REQUESTS] = {"akosha_cache_requests_total", METRIC_COUNTER, false,
                               "Embedding requests by what the cache did for them: off, "
                               "bypass, miss, partial or hit (X-Akosha-Cache).",
                               {"result", NULL}, NO_BUCKETS},
    [METRIC_CACHE_LOOKUPS] = {"akosha_cache_lookups_total", METRIC_COUNTER, true,
                              "Inputs looked up in the memory cache, by result: hit (within "
                              "ttl), stale (within stale_if_error) or miss.",
                              {"result", NULL}, NO_BUCKETS},
    [METRIC_CACHE_ENTRIES] = {"akosha_cache_entries", METRIC_GAUGE, true,
                              "Vectors held in the memory cache.", {NULL}, NO_BUCKETS},
    [METRIC_CACHE_BYTES] = {"akosha_cache_bytes", METRIC_GAUGE, true,
                            "Memory the cache's entries and table take, overhead included "
                            "(at most [cache] memory).",
                            {NULL}, NO_BUCKETS},
    [METRIC_CACHE_EVICTIONS] = {"akosha_cache_evictions_total", METRIC_COUNTER, true,
                                "Vectors removed from the memory cache to make room.", {NULL},
                                NO_BUCKETS},
    [METRIC_CACHE_REDIS_LOOKUPS] = {"akosha_cache_redis_lookups_total", METRIC_COUNTER, true,
                                    "Lookups (one MGET each) by outcome: asked, skipped (down, "
                                    "breaker open, in-flight bound) or timeout.",
                                    {"result", NULL}, NO_BUCKETS},
    [METRIC_CACHE_REDIS_KEYS] = {"akosha_cache_redis_keys_total", METRIC_COUNTER, true,
                                 "Inputs asked of Redis, by result: hit or miss.",
                                 {"result", NULL}, NO_BUCKETS},
    [METRIC_CACHE_REDIS_ERRORS] = {"akosha_cache_redis_errors_total", METRIC_COUNTER, true,
                                   "Redis errors by kind: reply (error replies, lost "
                                   "connections, undecodable values), store, connect.",
                                   {"kind", NULL}, NO_BUCKETS},
    [METRIC_CACHE_REDIS_LATENCY] = {"akosha_cache_redis_lookup_seconds_total", METRIC_COUNTER,
                                    true,
                                    "Seconds Redis took to answer lookups, summed (divide by "
                                    "akosha_cache_redis_lookups_total{result=\"answered\"}).",
                                    {NULL}, NO_BUCKETS},
    [METRIC_CACHE_REDIS_STORES] = {"akosha_cache_redis_stores_total", METRIC_COUNTER, true,
                                   "Vectors sent to Redis (sent), or dropped unsent (breaker "
                                   "open, bound).",
                                   {"result", NULL}, NO_BUCKETS},
    [METRIC_CACHE_REDIS_CONNECTED] = {"akosha_cache_redis_connected", METRIC_GAUGE, true,
                                      "1 while connected to Redis.", {NULL}, NO_BUCKETS},
    [METRIC_PROCESS_RESIDENT_MEMORY] = {"process_resident_memory_bytes", METRIC_GAUGE, true,
                                        "Resident memory size in bytes.", {NULL}, NO_BUCKETS},
    [METRIC_PROCESS_VIRTUAL_MEMORY] = {"process_virtual_memory_bytes", METRIC_GAUGE, true,
                                       "Virtual memory size in bytes.", {NULL}, NO_BUCKETS},
    [METRIC_PROCESS_CPU_SECONDS] = {"process_cpu_seconds_total", METRIC_COUNTER, true,
                                    "Total user and system CPU time spent in seconds.", {NULL},
                                    NO_BUCKETS},
    [METRIC_PROCESS_OPEN_FDS] = {"process_open_fds", METRIC_GAUGE, true,
                                 "Number of open file descriptors.", {NULL}, NO_BUCKETS},
    [METRIC_PROCESS_MAX_FDS] = {"process_max_fds", METRIC_GAUGE, true,
                                "Maximum number of open file descriptors.", {NULL}, NO_BUCKETS},
    [METRIC_PROCESS_START_TIME] = {"process_start_time_seconds", METRIC_GAUGE, true,
                                   "Start time of the process since unix epoch in seconds.",
                                   {NULL}, NO_BUCKETS},
};
/* clang-format on */

/*
 * The latest sampled observation of one histogram bucket. One writer per
 * series (the loop thread), so a sequence count is all the reader needs: odd
 * while a write is under way, changed when one happened during the read.
 */
struct exemplar {
    _Atomic uint32_t seq; /* 0: never written */
    _Atomic uint64_t trace_id[2];
    _Atomic uint64_t value_bits;
    _Atomic uint64_t time_bits; /* seconds since the epoch, as a double */
};

struct metric_series {
    struct metric_series *_Atomic next;
    enum metric_id id;
    char **label_values; /* nlabels strings */
    char *label_text;    /* a="x",b="y" escaped, "" without labels */
    atomic_bool hidden;
    _Atomic uint64_t value;    /* counter: count; gauge: bits of a double */
    _Atomic uint64_t sum_bits; /* histogram: bits of a double */
    _Atomic uint64_t *buckets; /* histogram: nbuckets + 1, not cumulative */
    struct exemplar *exemplars; /* histogram: nbuckets + 1 */
};

struct family_state {
    struct metric_series *_Atomic head;
    struct metric_series *tail; /* under create_lock */
};

struct collector {
    metrics_collector_fn fn;
    void *arg;
};

struct metrics_writer {
    struct buf families[METRIC_COUNT];
};

static struct {
    bool initialised;
    pthread_mutex_t create_lock;
    /* Serialises renders, and guards the collector list. */
    pthread_mutex_t render_lock;
    struct family_state families[METRIC_COUNT];
    struct collector *collectors;
    size_t ncollectors;
} reg;

static void process_collector(struct metrics_writer *w, void *arg);

static uint64_t
double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double
bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static void
atomic_double_add(_Atomic uint64_t *p, double delta)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, double_bits(bits_double(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* A bug in the caller, not a runtime condition: stop where it happened. */
static void __attribute__((noreturn)) misuse(const char *what, enum metric_id id)
{
    log_error("metrics: %s (family %s)", what,
              (unsigned)id < METRIC_COUNT ? metrics_families[id].name : "?");
    abort();
}

size_t
metrics_family_nlabels(enum metric_id id)
{
    size_t n = 0;

    while (metrics_families[id].labels[n] != NULL) {
        n++;
    }
    return n;
}

void
metrics_escape_label(struct buf *out, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\') {
            buf_puts(out, "\\\\");
        } else if (*s == '"') {
            buf_puts(out, "\\\"");
        } else if (*s == '\n') {
            buf_puts(out, "\\n");
        } else {
            buf_putc(out, *s);
        }
    }
}

/* HELP text escapes backslash and newline; OpenMetrics also double quotes. */
static void
escape_help(struct buf *out, const char *s, enum metrics_format fmt)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\') {
            buf_puts(out, "\\\\");
        } else if (*s == '"' && fmt == METRICS_FORMAT_OPENMETRICS) {
            buf_puts(out, "\\\"");
        } else if (*s == '\n') {
            buf_puts(out, "\\n");
        } else {
            buf_putc(out, *s);
        }
    }
}

void
metrics_format_value(struct buf *out, double v)
{
    char tmp[40];
    int precision;

    if (isnan(v)) {
        buf_puts(out, "NaN");
        return;
    }
    if (isinf(v)) {
        buf_puts(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == 0) {
        buf_putc(out, '0'); /* also for -0 */
        return;
    }
    if (v == trunc(v) && fabs(v) < 9007199254740992.0) {
        buf_printf(out, "%.0f", v);
        return;
    }
    /* Shortest precision that reads back to the same double. */
    for (precision = 15; precision < 17; precision++) {
        snprintf(tmp, sizeof(tmp), "%.*g", precision, v);
        if (strtod(tmp, NULL) == v) {
            buf_puts(out, tmp);
            return;
        }
    }
    buf_printf(out, "%.17g", v);
}

static char *
label_text(enum metric_id id, const char *const *values)
{
    const struct metric_family *f = &metrics_families[id];
    struct buf b;
    size_t i;

    buf_init(&b);
    for (i = 0; f->labels[i] != NULL; i++) {
        buf_printf(&b, "%s%s=\"", i > 0 ? "," : "", f->labels[i]);
        metrics_escape_label(&b, values[i]);
        buf_putc(&b, '"');
    }
    if (b.data == NULL) {
        return xstrdup("");
    }
    return b.data;
}

static void
check_labels(enum metric_id id, const char *const *values, size_t nlabels)
{
    size_t i;

    if (nlabels > 0 && values == NULL) {
        misuse("label values missing", id);
    }
    for (i = 0; i < nlabels; i++) {
        if (values[i] == NULL) {
            misuse("a label value is NULL", id);
        }
    }
}

static bool
series_matches(const struct metric_series *s, const char *const *values, size_t nlabels)
{
    size_t i;

    for (i = 0; i < nlabels; i++) {
        if (strcmp(s->label_values[i], values[i]) != 0) {
            return false;
        }
    }
    return true;
}

static struct metric_series *
find_series(enum metric_id id, const char *const *values, size_t nlabels)
{
    struct metric_series *s;

    s = atomic_load_explicit(&reg.families[id].head, memory_order_acquire);
    for (; s != NULL; s = atomic_load_explicit(&s->next, memory_order_acquire)) {
        if (series_matches(s, values, nlabels)) {
            return s;
        }
    }
    return NULL;
}

static struct metric_series *
series_new(enum metric_id id, const char *const *values, size_t nlabels)
{
    const struct metric_family *f = &metrics_families[id];
    struct metric_series *s = xcalloc(1, sizeof(*s));
    size_t i;

    atomic_init(&s->next, NULL);
    s->id = id;
    s->label_values = xcalloc(nlabels ? nlabels : 1, sizeof(char *));
    for (i = 0; i < nlabels; i++) {
        s->label_values[i] = xstrdup(values[i]);
    }
    s->label_text = label_text(id, values);
    atomic_init(&s->hidden, false);
    atomic_init(&s->value, f->type == METRIC_GAUGE ? double_bits(0.0) : 0);
    atomic_init(&s->sum_bits, double_bits(0.0));
    if (f->type == METRIC_HISTOGRAM) {
        s->buckets = xcalloc(f->nbuckets + 1, sizeof(*s->buckets));
        s->exemplars = xcalloc(f->nbuckets + 1, sizeof(*s->exemplars));
        for (i = 0; i <= f->nbuckets; i++) {
            atomic_init(&s->buckets[i], 0);
            atomic_init(&s->exemplars[i].seq, 0);
        }
    }
    return s;
}

static void
series_free(struct metric_series *s)
{
    size_t i, n = metrics_family_nlabels(s->id);

    for (i = 0; i < n; i++) {
        free(s->label_values[i]);
    }
    free(s->label_values);
    free(s->label_text);
    free(s->buckets);
    free(s->exemplars);
    free(s);
}

struct metric_series *
metrics_series(enum metric_id id, const char *const *label_values)
{
    struct family_state *fs;
    struct metric_series *s;
    size_t nlabels;

    if ((unsigned)id >= METRIC_COUNT) {
        misuse("unknown family", id);
    }
    if (metrics_families[id].collected) {
        misuse("series asked of a collected family", id);
    }
    nlabels = metrics_family_nlabels(id);
    check_labels(id, label_values, nlabels);

    s = find_series(id, label_values, nlabels);
    if (s == NULL) {
        pthread_mutex_lock(&reg.create_lock);
        /* Another thread may have created it since the lock-free look. */
        s = find_series(id, label_values, nlabels);
        if (s == NULL) {
            fs = &reg.families[id];
            s = series_new(id, label_values, nlabels);
            if (fs->tail == NULL) {
                atomic_store_explicit(&fs->head, s, memory_order_release);
            } else {
                atomic_store_explicit(&fs->tail->next, s, memory_order_release);
            }
            fs->tail = s;
        }
        pthread_mutex_unlock(&reg.create_lock);
    }
    if (atomic_load_explicit(&s->hidden, memory_order_relaxed)) {
        atomic_store_explicit(&s->hidden, false, memory_order_relaxed);
    }
    return s;
}

void
metrics_series_remove(struct metric_series *s)
{
    if (s != NULL) {
        atomic_store_explicit(&s->hidden, true, memory_order_relaxed);
    }
}

void
metrics_inc(struct metric_series *s)
{
    metrics_add(s, 1);
}

void
metrics_add(struct metric_series *s, uint64_t n)
{
    assert(metrics_families[s->id].type == METRIC_COUNTER);
    atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
}

void
metrics_gauge_set(struct metric_series *s, double value)
{
    assert(metrics_families[s->id].type == METRIC_GAUGE);
    atomic_store_explicit(&s->value, double_bits(value), memory_order_relaxed);
}

void
metrics_gauge_add(struct metric_series *s, int64_t delta)
{
    assert(metrics_families[s->id].type == METRIC_GAUGE);
    atomic_double_add(&s->value, (double)delta);
}

void
metrics_observe(struct metric_series *s, double value)
{
    const struct metric_family *f = &metrics_families[s->id];
    size_t i;

    assert(f->type == METRIC_HISTOGRAM);
    if (isnan(value)) {
        return;
    }
    /* Few buckets: a linear scan beats a binary search's branches. */
    for (i = 0; i < f->nbuckets && value > f->buckets[i]; i++) {
    }
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_double_add(&s->sum_bits, value);
}

void
metrics_observe_exemplar(struct metric_series *s, double value,
                         const uint8_t trace_id[METRICS_TRACE_ID_SIZE], double unix_seconds)
{
    struct exemplar *e;
    uint64_t id[2];
    uint32_t seq;

    if (isnan(value)) {
        return;
    }
    metrics_observe(s, value);
    e = &s->exemplars[metrics_bucket_of(s->id, value)];
    memcpy(id, trace_id, sizeof(id));
    seq = atomic_load_explicit(&e->seq, memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e->trace_id[0], id[0], memory_order_relaxed);
    atomic_store_explicit(&e->trace_id[1], id[1], memory_order_relaxed);
    atomic_store_explicit(&e->value_bits, double_bits(value), memory_order_relaxed);
    atomic_store_explicit(&e->time_bits, double_bits(unix_seconds), memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 2, memory_order_release);
}

/* A consistent copy of e; false when it was never written or kept changing. */
static bool
exemplar_read(const struct exemplar *e, uint8_t trace_id[METRICS_TRACE_ID_SIZE], double *value,
              double *unix_seconds)
{
    uint64_t id[2], value_bits, time_bits;
    uint32_t before, after;
    int tries;

    for (tries = 0; tries < 4; tries++) {
        before = atomic_load_explicit(&e->seq, memory_order_acquire);
        if (before == 0) {
            return false;
        }
        if (before & 1) {
            continue;
        }
        id[0] = atomic_load_explicit(&e->trace_id[0], memory_order_relaxed);
        id[1] = atomic_load_explicit(&e->trace_id[1], memory_order_relaxed);
        value_bits = atomic_load_explicit(&e->value_bits, memory_order_relaxed);
        time_bits = atomic_load_explicit(&e->time_bits, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        after = atomic_load_explicit(&e->seq, memory_order_relaxed);
        if (before == after) {
            memcpy(trace_id, id, sizeof(id));
            *value = bits_double(value_bits);
            *unix_seconds = bits_double(time_bits);
            return true;
        }
    }
    return false;
}

size_t
metrics_bucket_of(enum metric_id id, double value)
{
    const struct metric_family *f = &metrics_families[id];
    size_t i;

    assert(f->type == METRIC_HISTOGRAM);
    for (i = 0; i < f->nbuckets && value > f->buckets[i]; i++) {
    }
    return i;
}

void
metrics_observe_folded(struct metric_series *s, const uint32_t *counts, double sum)
{
    const struct metric_family *f = &metrics_families[s->id];

    assert(f->type == METRIC_HISTOGRAM);
    for (size_t i = 0; i <= f->nbuckets; i++) {
        if (counts[i] != 0) {
            atomic_fetch_add_explicit(&s->buckets[i], counts[i], memory_order_relaxed);
        }
    }
    atomic_double_add(&s->sum_bits, sum);
}

uint64_t
metrics_counter_value(const struct metric_series *s)
{
    return atomic_load_explicit(&s->value, memory_order_relaxed);
}

double
metrics_gauge_value(const struct metric_series *s)
{
    return bits_double(atomic_load_explicit(&s->value, memory_order_relaxed));
}

uint64_t
metrics_histogram_count(const struct metric_series *s)
{
    const struct metric_family *f = &metrics_families[s->id];
    uint64_t total = 0;
    size_t i;

    for (i = 0; i <= f->nbuckets; i++) {
        total += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    }
    return total;
}

double
metrics_histogram_sum(const struct metric_series *s)
{
    return bits_double(atomic_load_explicit(&s->sum_bits, memory_order_relaxed));
}

void
metrics_set_build_info(const char *version)
{
    const char *values[] = {version};

    metrics_gauge_set(metrics_series(METRIC_BUILD_INFO, values), 1);
}

void
metrics_add_collector(metrics_collector_fn fn, void *arg)
{
    pthread_mutex_lock(&reg.render_lock);
    reg.collectors = xrealloc(reg.collectors, (reg.ncollectors + 1) * sizeof(*reg.collectors));
    reg.collectors[reg.ncollectors].fn = fn;
    reg.collectors[reg.ncollectors].arg = arg;
    reg.ncollectors++;
    pthread_mutex_unlock(&reg.render_lock);
}

void
metrics_remove_collector(metrics_collector_fn fn, void *arg)
{
    size_t i;

    pthread_mutex_lock(&reg.render_lock);
    for (i = 0; i < reg.ncollectors; i++) {
        if (reg.collectors[i].fn == fn && reg.collectors[i].arg == arg) {
            memmove(&reg.collectors[i], &reg.collectors[i + 1],
                    (reg.ncollectors - i - 1) * sizeof(*reg.collectors));
            reg.ncollectors--;
            break;
        }
    }
    pthread_mutex_unlock(&reg.render_lock);
}

void
metrics_writer_sample(struct metrics_writer *w, enum metric_id id, const char *const *label_values,
                      double value)
{
    const struct metric_family *f;
    struct buf *b;
    char *labels;
    size_t nlabels;

    if ((unsigned)id >= METRIC_COUNT) {
        misuse("unknown family", id);
    }
    f = &metrics_families[id];
    if (!f->collected || f->type == METRIC_HISTOGRAM) {
        log_warn("metrics: collector sample for %s dropped: family is not collected", f->name);
        return;
    }
    nlabels = metrics_family_nlabels(id);
    check_labels(id, label_values, nlabels);
    b = &w->families[id];
    buf_puts(b, f->name);
    if (nlabels > 0) {
        labels = label_text(id, label_values);
        buf_printf(b, "{%s}", labels);
        free(labels);
    }
    buf_putc(b, ' ');
    metrics_format_value(b, value);
    buf_putc(b, '\n');
}

static void
render_series_name(struct buf *out, const char *name, const char *suffix,
                   const struct metric_series *s, const char *le)
{
    buf_puts(out, name);
    buf_puts(out, suffix);
    if (s->label_text[0] == '\0' && le == NULL) {
        return;
    }
    buf_putc(out, '{');
    buf_puts(out, s->label_text);
    if (le != NULL) {
        buf_printf(out, "%sle=\"%s\"", s->label_text[0] != '\0' ? "," : "", le);
    }
    buf_putc(out, '}');
}

/*
 * A bucket bound as le="..." shows it. OpenMetrics wants canonical numbers,
 * so a whole bound keeps a ".0" there ("1.0"); the 0.0.4 text keeps "1".
 */
static void
format_le(struct buf *out, double bound, enum metrics_format fmt)
{
    size_t from = out->len;

    metrics_format_value(out, bound);
    if (fmt == METRICS_FORMAT_OPENMETRICS && !isinf(bound) &&
        memchr(out->data + from, '.', out->len - from) == NULL &&
        memchr(out->data + from, 'e', out->len - from) == NULL) {
        buf_puts(out, ".0");
    }
}

/* " # {trace_id="..."} value timestamp" after a bucket's count, when it has one. */
static void
render_exemplar(struct buf *out, const struct exemplar *e)
{
    uint8_t trace_id[METRICS_TRACE_ID_SIZE];
    double value, unix_seconds;
    size_t i;

    if (!exemplar_read(e, trace_id, &value, &unix_seconds)) {
        return;
    }
    buf_puts(out, " # {trace_id=\"");
    for (i = 0; i < METRICS_TRACE_ID_SIZE; i++) {
        buf_printf(out, "%02x", trace_id[i]);
    }
    buf_puts(out, "\"} ");
    metrics_format_value(out, value);
    buf_printf(out, " %.3f", unix_seconds);
}

static void
render_histogram(struct buf *out, const struct metric_family *f, const struct metric_series *s,
                 enum metrics_format fmt)
{
    uint64_t cumulative = 0;
    struct buf le;
    size_t i;

    buf_init(&le);
    for (i = 0; i <= f->nbuckets; i++) {
        cumulative += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        le.len = 0;
        if (i < f->nbuckets) {
            format_le(&le, f->buckets[i], fmt);
        } else {
            buf_puts(&le, "+Inf");
        }
        render_series_name(out, f->name, "_bucket", s, le.data);
        buf_printf(out, " %" PRIu64, cumulative);
        if (fmt == METRICS_FORMAT_OPENMETRICS) {
            render_exemplar(out, &s->exemplars[i]);
        }
        buf_putc(out, '\n');
    }
    buf_free(&le);
    render_series_name(out, f->name, "_sum", s, NULL);
    buf_putc(out, ' ');
    metrics_format_value(out, metrics_histogram_sum(s));
    buf_putc(out, '\n');
    /* The +Inf bucket read above, not a separate counter: the two must agree. */
    render_series_name(out, f->name, "_count", s, NULL);
    buf_printf(out, " %" PRIu64 "\n", cumulative);
}

static void
render_direct(struct buf *out, enum metric_id id, enum metrics_format fmt)
{
    const struct metric_family *f = &metrics_families[id];
    struct metric_series *s;

    s = atomic_load_explicit(&reg.families[id].head, memory_order_acquire);
    for (; s != NULL; s = atomic_load_explicit(&s->next, memory_order_acquire)) {
        if (atomic_load_explicit(&s->hidden, memory_order_relaxed)) {
            continue;
        }
        if (f->type == METRIC_HISTOGRAM) {
            render_histogram(out, f, s, fmt);
            continue;
        }
        render_series_name(out, f->name, "", s, NULL);
        buf_putc(out, ' ');
        if (f->type == METRIC_COUNTER) {
            buf_printf(out, "%" PRIu64, metrics_counter_value(s));
        } else {
            metrics_format_value(out, metrics_gauge_value(s));
        }
        buf_putc(out, '\n');
    }
}

static const char *
type_name(enum metric_type t, enum metrics_format fmt)
{
    switch (t) {
    case METRIC_COUNTER:
        return "counter";
    case METRIC_GAUGE:
        return "gauge";
    case METRIC_HISTOGRAM:
        return "histogram";
    }
    return fmt == METRICS_FORMAT_OPENMETRICS ? "unknown" : "untyped";
}

/*
 * HELP and TYPE lines. An OpenMetrics counter family is named without the
 * "_total" its samples carry; the 0.0.4 text names family and samples alike.
 */
static void
render_metadata(struct buf *out, const struct metric_family *f, enum metrics_format fmt)
{
    size_t len = strlen(f->name);

    if (fmt == METRICS_FORMAT_OPENMETRICS && f->type == METRIC_COUNTER && len > 6 &&
        strcmp(f->name + len - 6, "_total") == 0) {
        len -= 6;
    }
    buf_printf(out, "# HELP %.*s ", (int)len, f->name);
    escape_help(out, f->help, fmt);
    buf_printf(out, "\n# TYPE %.*s %s\n", (int)len, f->name, type_name(f->type, fmt));
}

void
metrics_render(struct buf *out)
{
    metrics_render_as(out, METRICS_FORMAT_PROMETHEUS);
}

void
metrics_render_as(struct buf *out, enum metrics_format fmt)
{
    struct metrics_writer *w = xcalloc(1, sizeof(*w));
    const struct metric_family *f;
    size_t i;

    pthread_mutex_lock(&reg.render_lock);
    for (i = 0; i < METRIC_COUNT; i++) {
        buf_init(&w->families[i]);
    }
    for (i = 0; i < reg.ncollectors; i++) {
        reg.collectors[i].fn(w, reg.collectors[i].arg);
    }
    for (i = 0; i < METRIC_COUNT; i++) {
        f = &metrics_families[i];
        render_metadata(out, f, fmt);
        if (f->collected) {
            if (w->families[i].len > 0) {
                buf_append(out, w->families[i].data, w->families[i].len);
            }
        } else {
            render_direct(out, (enum metric_id)i, fmt);
        }
    }
    pthread_mutex_unlock(&reg.render_lock);
    if (fmt == METRICS_FORMAT_OPENMETRICS) {
        buf_puts(out, "# EOF\n");
    }
    for (i = 0; i < METRIC_COUNT; i++) {
        buf_free(&w->families[i]);
    }
    free(w);
}

const char *
metrics_content_type(enum metrics_format fmt)
{
    return fmt == METRICS_FORMAT_OPENMETRICS ? METRICS_OPENMETRICS_CONTENT_TYPE
                                             : METRICS_CONTENT_TYPE;
}

static bool
token_is(const char *p, size_t len, const char *token)
{
    return len == strlen(token) && strncasecmp(p, token, len) == 0;
}

/* The q parameter of one media range's parameters ("; a=b; q=0.5"), 1 when absent. */
static double
range_quality(const char *p, const char *end)
{
    char num[16];
    size_t n;

    while (p < end) {
        const char *param = p, *next = memchr(p, ';', (size_t)(end - p));
        if (next == NULL) {
            next = end;
        }
        while (param < next && (*param == ' ' || *param == '\t' || *param == ';')) {
            param++;
        }
        if (next - param >= 2 && (param[0] == 'q' || param[0] == 'Q') && param[1] == '=') {
            n = MIN((size_t)(next - param - 2), sizeof(num) - 1);
            memcpy(num, param + 2, n);
            num[n] = '\0';
            return strtod(num, NULL);
        }
        p = next + 1;
    }
    return 1;
}

enum metrics_format
metrics_negotiate(const char *accept, size_t len)
{
    const char *p = accept, *end = accept + len;
    double openmetrics_q = 0, text_q = 0;

    while (p < end) {
        const char *range_end = memchr(p, ',', (size_t)(end - p));
        const char *type_end;
        double q;

        if (range_end == NULL) {
            range_end = end;
        }
        while (p < range_end && (*p == ' ' || *p == '\t')) {
            p++;
        }
        for (type_end = p;
             type_end < range_end && *type_end != ';' && *type_end != ' ' && *type_end != '\t';
             type_end++) {
        }
        q = range_quality(type_end, range_end);
        if (token_is(p, (size_t)(type_end - p), "application/openmetrics-text")) {
            openmetrics_q = MAX(openmetrics_q, q);
        } else if (token_is(p, (size_t)(type_end - p), "text/plain") ||
                   token_is(p, (size_t)(type_end - p), "text/*") ||
                   token_is(p, (size_t)(type_end - p), "*/*")) {
            text_q = MAX(text_q, q);
        }
        if (range_end == end) {
            break;
        }
        p = range_end + 1;
    }
    return openmetrics_q > 0 && openmetrics_q >= text_q ? METRICS_FORMAT_OPENMETRICS
                                                        : METRICS_FORMAT_PROMETHEUS;
}

void
metrics_init(void)
{
    memset(&reg, 0, sizeof(reg));
    pthread_mutex_init(&reg.create_lock, NULL);
    pthread_mutex_init(&reg.render_lock, NULL);
    reg.initialised = true;
    metrics_add_collector(process_collector, NULL);
}

void
metrics_free(void)
{
    struct metric_series *s, *next;
    size_t i;

    if (!reg.initialised) {
        return;
    }
    for (i = 0; i < METRIC_COUNT; i++) {
        s = atomic_load_explicit(&reg.families[i].head, memory_order_acquire);
        for (; s != NULL; s = next) {
            next = atomic_load_explicit(&s->next, memory_order_relaxed);
            series_free(s);
        }
    }
    free(reg.collectors);
    pthread_mutex_destroy(&reg.create_lock);
    pthread_mutex_destroy(&reg.render_lock);
    memset(&reg, 0, sizeof(reg));
}

/* Process statistics. */

int
metrics_process_parse_stat(const char *text, long ticks_per_second, long page_size, double btime,
                           struct metrics_process *out, const char **cause)
{
    /* Fields counted from 1 as in proc(5); field 3 is the first after "(comm)". */
    enum { F_UTIME = 14, F_STIME = 15, F_STARTTIME = 22, F_VSIZE = 23, F_RSS = 24 };
    unsigned long long fields[F_RSS + 1];
    const char *p = strrchr(text, ')');
    char *end;
    int field;

    /* comm may itself contain spaces and ')', hence the last one. */
    if (p == NULL) {
        *cause = "no ')' after the command name";
        return -1;
    }
    if (ticks_per_second <= 0 || page_size <= 0) {
        *cause = "bad clock tick rate or page size";
        return -1;
    }
    p++;
    for (field = 3; field <= F_RSS; field++) {
        while (*p == ' ') {
            p++;
        }
        if (field == 3) {
            /* The state is a letter, not a number. */
            if (*p == '\0') {
                break;
            }
            p++;
            fields[field] = 0;
            continue;
        }
        errno = 0;
        fields[field] = strtoull(p, &end, 10);
        if (end == p || errno != 0) {
            break;
        }
        p = end;
    }
    if (field <= F_RSS) {
        *cause = "fewer fields than expected";
        return -1;
    }
    out->cpu_seconds = (double)(fields[F_UTIME] + fields[F_STIME]) / (double)ticks_per_second;
    out->start_time_seconds = btime + (double)fields[F_STARTTIME] / (double)ticks_per_second;
    out->virtual_bytes = (double)fields[F_VSIZE];
    out->resident_bytes = (double)fields[F_RSS] * (double)page_size;
    return 0;
}

int
metrics_process_parse_limits(const char *text, double *max_fds, const char **cause)
{
    static const char key[] = "Max open files";
    const char *line = text;
    const char *p;
    char *end;
    double v;

    while (line != NULL && *line != '\0') {
        if (strncmp(line, key, sizeof(key) - 1) == 0) {
            p = line + sizeof(key) - 1;
            while (*p == ' ') {
                p++;
            }
            if (strncmp(p, "unlimited", 9) == 0) {
                *max_fds = -1;
                return 0;
            }
            v = strtod(p, &end);
            if (end == p) {
                *cause = "unreadable \"Max open files\" soft limit";
                return -1;
            }
            *max_fds = v;
            return 0;
        }
        line = strchr(line, '\n');
        if (line != NULL) {
            line++;
        }
    }
    *cause = "no \"Max open files\" line";
    return -1;
}

/* Whole small file into b (NUL-terminated); -1 when it cannot be read. */
static int
read_file(const char *path, struct buf *b)
{
    char chunk[4096];
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd == -1) {
        return -1;
    }
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        buf_append(b, chunk, (size_t)n);
    }
    close(fd);
    if (n < 0 || b->data == NULL) {
        return -1;
    }
    return 0;
}

static double
boot_time(void)
{
    struct buf b;
    const char *p;
    double btime = -1;

    buf_init(&b);
    if (read_file("/proc/stat", &b) == 0) {
        p = strstr(b.data, "\nbtime ");
        if (p != NULL) {
            btime = strtod(p + 7, NULL);
        }
    }
    buf_free(&b);
    return btime;
}

static double
count_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *de;
    double n = 0;

    if (dir == NULL) {
        return -1;
    }
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] != '.') {
            n++;
        }
    }
    closedir(dir);
    /* Not counting the descriptor opendir itself held. */
    return n > 0 ? n - 1 : 0;
}

void
metrics_process_read(struct metrics_process *out)
{
    struct buf b;
    const char *cause;
    double btime;

    out->cpu_seconds = -1;
    out->virtual_bytes = -1;
    out->resident_bytes = -1;
    out->start_time_seconds = -1;
    out->open_fds = count_open_fds();
    out->max_fds = -1;

    buf_init(&b);
    btime = boot_time();
    if (read_file("/proc/self/stat", &b) == 0 && btime >= 0 &&
        metrics_process_parse_stat(b.data, sysconf(_SC_CLK_TCK), sysconf(_SC_PAGESIZE), btime, out,
                                   &cause) != 0) {
        log_debug("metrics: /proc/self/stat: %s", cause);
    }
    buf_free(&b);
    if (read_file("/proc/self/limits", &b) == 0 &&
        metrics_process_parse_limits(b.data, &out->max_fds, &cause) != 0) {
        log_debug("metrics: /proc/self/limits: %s", cause);
    }
    buf_free(&b);
}

static void
sample_if_known(struct metrics_writer *w, enum metric_id id, double value)
{
    if (value >= 0) {
        metrics_writer_sample(w, id, NULL, value);
    }
}

static void
process_collector(struct metrics_writer *w, void *arg)
{
    struct metrics_process p;

    (void)arg;
    metrics_process_read(&p);
    sample_if_known(w, METRIC_PROCESS_RESIDENT_MEMORY, p.resident_bytes);
    sample_if_known(w, METRIC_PROCESS_VIRTUAL_MEMORY, p.virtual_bytes);
    sample_if_known(w, METRIC_PROCESS_CPU_SECONDS, p.cpu_seconds);
    sample_if_known(w, METRIC_PROCESS_OPEN_FDS, p.open_fds);
    sample_if_known(w, METRIC_PROCESS_MAX_FDS, p.max_fds);
    sample_if_known(w, METRIC_PROCESS_START_TIME, p.start_time_seconds);
}
