/*
 * observe.c - metrics and spans for the request path.
 *
 * Series handles are looked up once and cached (per route and status code,
 * per upstream and outcome), so the request path only does atomic adds and
 * never takes the registry's lock. Spans are created only for sampled
 * requests and handed to the exporter thread without waiting.
 */
#include "observe.h"

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "accesslog.h"
#include "breaker.h"
#include "cache.h"
#include "cache_redis.h"
#include "fallback.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "otlp.h"
#include "trace.h"
#include "upstream.h"
#include "util.h"
#include "worker.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.0.0"
#endif

static const char *routes[] = {"embeddings", "embed", "api_embed", "api_embeddings", "other"};
#define NROUTES 5
static const char *outcomes[] = {"success", "client_error",  "failure",
                                 "timeout", "connect_error", "rejected"};
#define NOUTCOMES 6
enum { OUT_SUCCESS, OUT_CLIENT_ERROR, OUT_FAILURE, OUT_TIMEOUT, OUT_CONNECT, OUT_REJECTED };

/* Cached handles; created on first use on the loop thread. */
/*
 * Model label values: configured models' canonical names, each kept once;
 * index 0 is "other", for every other name and past MODEL_LABELS_MAX, so a
 * caller cannot grow the series without bound.
 */
#define MODEL_LABELS_MAX 64
static char *model_labels[MODEL_LABELS_MAX] = {"other"};
static size_t nmodel_labels = 1;
/* answers by model label, for /stats: loop thread only */
static struct observe_model_counts model_counts[MODEL_LABELS_MAX];
/* per route and status: the series by model label index, allocated on first use */
static struct metric_series **m_requests[NROUTES][600];
static struct metric_series *m_duration[NROUTES];
static struct metric_series *m_in_flight;
/* by enum embed_mode; NONE has no series */
static struct metric_series *m_generated[EMBED_MODES], *m_batch[EMBED_MODES],
    *m_textlen[EMBED_MODES], *m_batchsize[EMBED_MODES];

struct upstream_series {
    char name[64];
    struct metric_series *outcome[NOUTCOMES];
    struct metric_series *duration;
    struct metric_series *retries[3];
    struct metric_series *pool_waits;
};
#define MAX_UPSTREAM_SERIES 256
static struct upstream_series up_series[MAX_UPSTREAM_SERIES];
static size_t n_up_series;

static struct trace_sampler sampler;
static bool tracing;
static struct telemetry_settings tele;
static struct otlp_exporter *exporter; /* NULL when not tracing */
static struct observe_totals totals;
/* the server's current upstream set, worker pool and access log, read at scrape time */
static struct observe_sources sources;

static void observe_batch(enum embed_mode m, size_t ninputs);

/* The label index of a canonical model name (NULL: none known): see model_labels. */
static size_t
model_label(const char *model)
{
    if (model == NULL) {
        return 0;
    }
    for (size_t i = 1; i < nmodel_labels; i++) {
        if (strcmp(model_labels[i], model) == 0) {
            return i;
        }
    }
    if (nmodel_labels == MODEL_LABELS_MAX) {
        return 0;
    }
    model_labels[nmodel_labels] = xstrdup(model);
    return nmodel_labels++;
}

static int
route_index(const char *route)
{
    for (int i = 0; i < NROUTES; i++) {
        if (strcmp(routes[i], route) == 0) {
            return i;
        }
    }
    return NROUTES - 1;
}

static struct upstream_series *
series_for(const char *name)
{
    for (size_t i = 0; i < n_up_series; i++) {
        if (strcmp(up_series[i].name, name) == 0) {
            return &up_series[i];
        }
    }
    if (n_up_series == MAX_UPSTREAM_SERIES) {
        return NULL; /* bounded: past this many names, upstream series are not kept */
    }
    struct upstream_series *s = &up_series[n_up_series++];
    snprintf(s->name, sizeof(s->name), "%s", name);
    for (int i = 0; i < NOUTCOMES; i++) {
        const char *lv[] = {s->name, outcomes[i]};
        s->outcome[i] = metrics_series(METRIC_UPSTREAM_REQUESTS, lv);
    }
    {
        const char *lv[] = {s->name};
        s->duration = metrics_series(METRIC_UPSTREAM_REQUEST_DURATION, lv);
        s->pool_waits = metrics_series(METRIC_UPSTREAM_POOL_WAITS, lv);
    }
    static const char *reasons[] = {"failure", "timeout", "connect_error"};
    for (int i = 0; i < 3; i++) {
        const char *lv[] = {s->name, reasons[i]};
        s->retries[i] = metrics_series(METRIC_RETRIES, lv);
    }
    return s;
}

static int
reason_class(const char *reason)
{
    if (strcmp(reason, "timeout") == 0 || strcmp(reason, "connect_timeout") == 0) {
        return OUT_TIMEOUT;
    }
    if (strcmp(reason, "connect_error") == 0 || strcmp(reason, "tls_error") == 0 ||
        strcmp(reason, "reset") == 0) {
        return OUT_CONNECT;
    }
    return OUT_FAILURE;
}

/* ---- collectors: values read at scrape time ---------------------------- */

static void
breaker_samples(struct metrics_writer *w, const char *name, const struct breaker_stats *st)
{
    const char *lv[] = {name};

    metrics_writer_sample(w, METRIC_CIRCUIT_STATE, lv, breaker_state_metric(st->state));
    metrics_writer_sample(w, METRIC_CIRCUIT_TOTAL_CALLS, lv, (double)st->total_calls);
    metrics_writer_sample(w, METRIC_CIRCUIT_SUCCESSFUL_CALLS, lv, (double)st->successful_calls);
    metrics_writer_sample(w, METRIC_CIRCUIT_FAILED_CALLS, lv, (double)st->failed_calls);
    metrics_writer_sample(w, METRIC_CIRCUIT_REJECTED_CALLS, lv, (double)st->rejected_calls);
    metrics_writer_sample(w, METRIC_CIRCUIT_CONSECUTIVE_FAILURES, lv, st->consecutive_failures);
    metrics_writer_sample(w, METRIC_CIRCUIT_CONSECUTIVE_SUCCESSES, lv, st->consecutive_successes);
    metrics_writer_sample(w, METRIC_CIRCUIT_SUCCESS_RATE, lv, st->success_rate);
}

/* An upstream's health verdict, its last check and its latency estimate. */
static void
health_samples(struct metrics_writer *w, const struct upstream *up, uint64_t now)
{
    const struct health_status *h = &up->health;
    const char *lv[] = {up->name}, *pass[] = {up->name, "pass"}, *fail[] = {up->name, "fail"};

    metrics_writer_sample(w, METRIC_UPSTREAM_HEALTHY, lv, h->healthy ? 1 : 0);
    if (h->checked || h->have_last) {
        metrics_writer_sample(w, METRIC_HEALTH_CHECKS, pass, (double)h->passes);
        metrics_writer_sample(w, METRIC_HEALTH_CHECKS, fail, (double)h->failures);
    }
    if (h->have_last) {
        metrics_writer_sample(w, METRIC_HEALTH_CHECK_LAST_SECONDS, lv,
                              (double)h->last_latency_us / 1e6);
        metrics_writer_sample(w, METRIC_HEALTH_CHECK_LAST_SUCCESS, lv, h->last_pass ? 1 : 0);
    }
    metrics_writer_sample(w, METRIC_UPSTREAM_LATENCY_EWMA, lv,
                          up->ewma_sampled ? upstream_latency_estimate_us(up, now) / 1e6 : 0);
}

static void
collect_breakers(struct metrics_writer *w, void *arg)
{
    const struct upstream_set *ups = *sources.ups;
    struct worker_pool *workers = *sources.workers;
    struct breaker_stats st;
    uint64_t exported = 0, dropped = 0, failures = 0;
    uint64_t now = util_mono_ms();

    (void)arg;
    for (size_t i = 0; i < ups->n; i++) {
        struct upstream *up = ups->ups[i];
        const char *idle[] = {up->name, "idle"}, *active[] = {up->name, "active"};
        breaker_get_stats(&up->breaker, &st);
        breaker_samples(w, up->name, &st);
        metrics_writer_sample(w, METRIC_UPSTREAM_CONNECTIONS, idle, (double)up->nidle);
        metrics_writer_sample(w, METRIC_UPSTREAM_CONNECTIONS, active,
                              (double)(up->nbusy + up->nconnecting));
        health_samples(w, up, now);
    }
    if (exporter != NULL) {
        otlp_breaker_stats(exporter, &st);
        breaker_samples(w, "otlp-exporter", &st);
        otlp_counters(exporter, &exported, &dropped, &failures);
    }
    metrics_writer_sample(w, METRIC_SPANS_EXPORTED, NULL, (double)exported);
    metrics_writer_sample(w, METRIC_SPANS_DROPPED, NULL, (double)dropped);
    metrics_writer_sample(w, METRIC_SPAN_EXPORT_FAILURES, NULL, (double)failures);
    accesslog_counters(*sources.alog, &exported, &dropped);
    metrics_writer_sample(w, METRIC_ACCESS_LOG_LINES, NULL, (double)exported);
    metrics_writer_sample(w, METRIC_ACCESS_LOG_DROPPED, NULL, (double)dropped);
    if (sources.cache != NULL && *sources.cache != NULL) {
        struct cache_stats cs;
        const char *hit[] = {"hit"}, *stale[] = {"stale"}, *miss[] = {"miss"};
        cache_stats(*sources.cache, &cs);
        metrics_writer_sample(w, METRIC_CACHE_LOOKUPS, hit, (double)cs.hits);
        metrics_writer_sample(w, METRIC_CACHE_LOOKUPS, stale, (double)cs.stale_hits);
        metrics_writer_sample(w, METRIC_CACHE_LOOKUPS, miss, (double)cs.misses);
        metrics_writer_sample(w, METRIC_CACHE_ENTRIES, NULL, (double)cs.entries);
        metrics_writer_sample(w, METRIC_CACHE_BYTES, NULL, (double)cs.bytes);
        metrics_writer_sample(w, METRIC_CACHE_EVICTIONS, NULL, (double)cs.evictions);
    }
    if (sources.redis != NULL && *sources.redis != NULL) {
        struct cache_redis_stats rs;
        cache_redis_stats(*sources.redis, &rs);
        breaker_samples(w, CACHE_REDIS_BREAKER_NAME, &rs.breaker);
        {
            const char *asked[] = {"answered"}, *skipped[] = {"skipped"},
                       *timeout[] = {"timeout"};
            metrics_writer_sample(w, METRIC_CACHE_REDIS_LOOKUPS, asked,
                                  (double)rs.latency_count);
            metrics_writer_sample(w, METRIC_CACHE_REDIS_LOOKUPS, skipped,
                                  (double)rs.lookups_skipped);
            metrics_writer_sample(w, METRIC_CACHE_REDIS_LOOKUPS, timeout, (double)rs.timeouts);
        }
        {
            const char *hit[] = {"hit"}, *miss[] = {"miss"};
            metrics_writer_sample(w, METRIC_CACHE_REDIS_KEYS, hit, (double)rs.hits);
            metrics_writer_sample(w, METRIC_CACHE_REDIS_KEYS, miss, (double)rs.misses);
        }
        {
            const char *reply[] = {"reply"}, *store[] = {"store"}, *connect[] = {"connect"};
            metrics_writer_sample(w, METRIC_CACHE_REDIS_ERRORS, reply, (double)rs.errors);
            metrics_writer_sample(w, METRIC_CACHE_REDIS_ERRORS, store, (double)rs.store_errors);
            metrics_writer_sample(w, METRIC_CACHE_REDIS_ERRORS, connect,
                                  (double)rs.connect_failures);
        }
        {
            const char *sent[] = {"sent"}, *dropped[] = {"dropped"};
            metrics_writer_sample(w, METRIC_CACHE_REDIS_STORES, sent, (double)rs.stores);
            metrics_writer_sample(w, METRIC_CACHE_REDIS_STORES, dropped,
                                  (double)rs.stores_dropped);
        }
        metrics_writer_sample(w, METRIC_CACHE_REDIS_LATENCY, NULL,
                              (double)rs.latency_sum_us / 1e6);
        metrics_writer_sample(w, METRIC_CACHE_REDIS_CONNECTED, NULL,
                              rs.state == CACHE_REDIS_CONNECTED ? 1.0 : 0.0);
    }
    metrics_writer_sample(w, METRIC_FALLBACK_QUEUE_DEPTH, NULL,
                          workers ? (double)worker_pool_depth(workers) : 0);
}

int
observe_init(const struct config *cfg, const struct observe_sources *src, const char **cause)
{
    sources = *src;
    metrics_set_build_info(PACKAGE_VERSION);
    metrics_add_collector(collect_breakers, NULL);
    for (int i = EMBED_MODE_REAL; i < EMBED_MODES; i++) {
        const char *lv[] = {embed_mode_name((enum embed_mode)i)};
        m_generated[i] = metrics_series(METRIC_EMBEDDING_GENERATED, lv);
        m_batch[i] = metrics_series(METRIC_EMBEDDING_BATCH_GENERATED, lv);
        m_textlen[i] = metrics_series(METRIC_EMBEDDING_TEXT_LENGTH, lv);
        /* requests fold their input sizes into OBSERVE_TEXTLEN_SLOTS counts */
        assert(metrics_families[METRIC_EMBEDDING_TEXT_LENGTH].nbuckets + 1 ==
               OBSERVE_TEXTLEN_SLOTS);
        m_batchsize[i] = metrics_series(METRIC_EMBEDDING_BATCH_SIZE, lv);
    }
    m_in_flight = metrics_series(METRIC_REQUESTS_IN_FLIGHT, NULL);
    for (int i = 0; i < NROUTES; i++) {
        const char *lv[] = {routes[i]};
        m_duration[i] = metrics_series(METRIC_REQUEST_DURATION, lv);
    }
    {
        const char *lv[] = {"success"}, *lv2[] = {"failure"};
        metrics_series(METRIC_CONFIG_RELOADS, lv);
        metrics_series(METRIC_CONFIG_RELOADS, lv2);
    }
    metrics_series(METRIC_RETRY_BUDGET_EXHAUSTED, NULL);

    telemetry_settings_init(&tele);
    telemetry_settings_set(&tele.service_name, cfg->telemetry.service_name);
    telemetry_settings_set(&tele.environment, cfg->telemetry.environment);
    telemetry_settings_set(&tele.otlp_endpoint, cfg->telemetry.otlp_endpoint);
    telemetry_settings_set(&tele.otlp_headers, cfg->telemetry.otlp_headers);
    tele.sample_rate = cfg->telemetry.sample_rate;
    tele.console_export = cfg->telemetry.console_export;
    tele.protocol = cfg->telemetry.otlp_protocol;
    telemetry_apply_env(&tele, NULL);
    telemetry_sampler(&tele, &sampler);
    *cause = NULL;
    exporter = otlp_start(&tele, PACKAGE_VERSION, cause);
    if (exporter == NULL && *cause != NULL) {
        telemetry_settings_free(&tele);
        return -1;
    }
    tracing = exporter != NULL;
    if (tracing) {
        char *full = telemetry_traces_url(&tele);
        /* The endpoint may carry user:password@ (curl honours it); never log that part. */
        char *url = full != NULL ? util_url_redact(full) : NULL;
        free(full);
        log_info("tracing: sampler %s ratio %.3f, export to %s%s",
                 trace_sampler_kind_name(sampler.kind), sampler.ratio, url ? url : "(none)",
                 tele.console_export ? " and stderr" : "");
        free(url);
    }
    return 0;
}

void
observe_shutdown(unsigned long timeout_ms)
{
    if (exporter != NULL) {
        otlp_shutdown(exporter, timeout_ms);
        exporter = NULL;
    }
    tracing = false;
    telemetry_settings_free(&tele);
    for (int ri = 0; ri < NROUTES; ri++) {
        for (int code = 0; code < 600; code++) {
            free(m_requests[ri][code]);
            m_requests[ri][code] = NULL;
        }
    }
    for (size_t i = 1; i < nmodel_labels; i++) {
        free(model_labels[i]);
    }
    nmodel_labels = 1;
    memset(model_counts, 0, sizeof(model_counts));
}

void
observe_reload(bool ok)
{
    const char *lv[] = {ok ? "success" : "failure"};

    metrics_inc(metrics_series(METRIC_CONFIG_RELOADS, lv));
}

struct otlp_exporter *
observe_exporter(void)
{
    return exporter;
}

struct observe_totals
observe_totals(void)
{
    return totals;
}

/*
 * The wall-clock time of a monotonic reading, in ns. Spans are timed on the
 * monotonic readings the request path takes anyway (its start, the answer,
 * each attempt's start and outcome): no clock read of their own, and no
 * clock step inside a span. The wall clock's offset is read again once a
 * second, per thread.
 */
static __thread uint64_t wall_offset_ns, wall_offset_at_us;

static uint64_t
wall_ns(uint64_t mono_us)
{
    /* A reading older than the offset (a request's start) is placed with it as well. */
    if (wall_offset_at_us == 0 ||
        (mono_us > wall_offset_at_us && mono_us - wall_offset_at_us > 1000000)) {
        uint64_t now_us = util_mono_us();
        wall_offset_ns = otlp_now_unix_ns() - now_us * 1000;
        wall_offset_at_us = now_us;
    }
    return wall_offset_ns + mono_us * 1000;
}

/* A finished span goes to the exporter, or is freed when there is none. */
static void
span_submit(struct trace_span *s)
{
    if (exporter != NULL) {
        otlp_submit(exporter, s);
    } else {
        trace_span_free(s);
    }
}

/* ---- requests ---------------------------------------------------------- */

/* "METHOD PATH" (with_path) or "METHOD" into out[TRACE_NAME_MAX], cut to fit. */
static void
span_name(const struct http_request_head *hd, bool with_path, char out[TRACE_NAME_MAX])
{
    size_t n = MIN(hd->method_len, (size_t)TRACE_NAME_MAX - 1);

    memcpy(out, hd->method_str, n);
    if (with_path && n + 1 < TRACE_NAME_MAX) {
        size_t p = MIN(hd->path_len, (size_t)TRACE_NAME_MAX - 2 - n);
        out[n++] = ' ';
        memcpy(out + n, hd->path, p);
        n += p;
    }
    out[n] = '\0';
}

void
observe_request_start(struct observe_req *o, const struct http_request_head *hd,
                      const char *request_id, uint64_t start_us)
{
    const struct http_header *h;
    char name[TRACE_NAME_MAX];

    if (!tracing) {
        return;
    }
    h = http_find_header(hd->headers, hd->nheaders, "traceparent");
    if (h != NULL && trace_parse_traceparent(h->value, h->value_len, &o->parent)) {
        const struct http_header *ts = http_find_header(hd->headers, hd->nheaders, "tracestate");
        o->has_parent = true;
        if (ts != NULL) {
            trace_set_tracestate(&o->parent, ts->value, ts->value_len);
        }
    }
    trace_start(&sampler, o->has_parent ? &o->parent : NULL, &o->ctx);
    if (!trace_context_sampled(&o->ctx)) {
        return;
    }
    span_name(hd, true, name);
    o->span = trace_span_new(&o->ctx, o->has_parent ? o->parent.span_id : NULL,
                             TRACE_KIND_SERVER, name, wall_ns(start_us));
    trace_span_attr_strn(o->span, "http.request.method", hd->method_str, hd->method_len);
    trace_span_attr_strn(o->span, "url.path", hd->path, hd->path_len);
    trace_span_attr_str(o->span, "http.request.id", request_id);
}

const char *
observe_tracestate(const struct observe_req *o)
{
    return o->ctx.tracestate;
}

bool
observe_trace_id(const struct observe_req *o, uint8_t out[TRACE_ID_SIZE])
{
    static const uint8_t zero[TRACE_ID_SIZE];

    if (memcmp(o->ctx.trace_id, zero, TRACE_ID_SIZE) == 0) {
        return false;
    }
    memcpy(out, o->ctx.trace_id, TRACE_ID_SIZE);
    return true;
}

bool
observe_sampled(const struct observe_req *o)
{
    return o->span != NULL;
}

void
observe_in_flight(int delta)
{
    metrics_gauge_add(m_in_flight, delta);
}

/* The request's held CLIENT spans, and s after them when not NULL, to the exporter at once. */
static void
submit_request_spans(struct observe_req *o, struct trace_span *s)
{
    struct trace_span *all[OBSERVE_ENDED_MAX + 1];
    size_t n = o->nended;

    memcpy(all, o->ended, n * sizeof(all[0]));
    o->nended = 0;
    if (s != NULL) {
        all[n++] = s;
    }
    otlp_submit_spans(exporter, all, n); /* frees them when there is no exporter */
}

void
observe_server_span_end(struct observe_req *o, const struct observe_answer *a)
{
    struct trace_span *s = o->span;

    o->span = NULL;
    if (s == NULL) {
        submit_request_spans(o, NULL);
        return;
    }
    if (a->status > 0) {
        /* the status code, and a 5xx's error.type and ERROR status */
        trace_span_set_http_status(s, a->status);
    } else {
        trace_span_attr_str(s, "error.type", "client_disconnected");
        trace_span_set_status(s, TRACE_STATUS_ERROR, "client went away");
    }
    if (a->mode != EMBED_MODE_NONE) {
        trace_span_attr_str(s, "embedding.mode", embed_mode_name(a->mode));
    }
    /* OpenTelemetry's GenAI conventions: what the caller asked for, what answered. */
    if (a->model_sent[0] != '\0') {
        trace_span_attr_str(s, "gen_ai.request.model", a->model_sent);
    }
    if (a->response_model[0] != '\0') {
        trace_span_attr_str(s, "gen_ai.response.model", a->response_model);
    }
    if (a->model != NULL) {
        trace_span_attr_str(s, "akosha.model", a->model);
    }
    if (a->cache != NULL && strcmp(a->cache, "off") != 0) {
        trace_span_attr_str(s, "akosha.cache", a->cache);
        trace_span_attr_int(s, "akosha.cache.hits", a->cache_hits);
        trace_span_attr_int(s, "akosha.cache.misses", a->cache_misses);
    }
    trace_span_end(s, wall_ns(a->end_us));
    submit_request_spans(o, s);
}

_Static_assert(TRACE_ID_SIZE == METRICS_TRACE_ID_SIZE, "exemplars hold a whole trace id");

void
observe_request_done(const struct observe_answer *a, const char *model_key)
{
    int ri = route_index(a->route);
    int code = a->status >= 100 && a->status < 600 ? a->status : 0;
    double secs = (double)(a->end_us - a->start_us) / 1e6;

    totals.requests++;
    if (code != 0) {
        size_t mi = model_label(a->model);
        if (m_requests[ri][code] == NULL) {
            m_requests[ri][code] = xcalloc(MODEL_LABELS_MAX, sizeof(struct metric_series *));
        }
        if (m_requests[ri][code][mi] == NULL) {
            char cs[8];
            snprintf(cs, sizeof(cs), "%d", code);
            const char *lv[] = {routes[ri], cs, model_labels[mi]};
            m_requests[ri][code][mi] = metrics_series(METRIC_REQUESTS, lv);
        }
        metrics_inc(m_requests[ri][code][mi]);
        model_counts[mi].requests++;
        switch (a->mode) {
        case EMBED_MODE_REAL:
            model_counts[mi].real++;
            break;
        case EMBED_MODE_LOCAL:
            model_counts[mi].local++;
            break;
        case EMBED_MODE_FALLBACK:
            model_counts[mi].fallback++;
            break;
        case EMBED_MODE_NONE:
            break;
        }
    }
    if (a->sampled) {
        /* A sampled request's trace explains its bucket: keep it as the exemplar. */
        metrics_observe_exemplar(m_duration[ri], secs, a->trace_id,
                                 (double)wall_ns(a->end_us) / 1e9);
    } else {
        metrics_observe(m_duration[ri], secs);
    }
    if (a->cache != NULL) {
        const char *lv[] = {a->cache};
        metrics_inc(metrics_series(METRIC_CACHE_REQUESTS, lv));
    }
    if (a->sniffed_dim > 0) {
        model_learn_dim(model_key, a->sniffed_dim, util_mono_ms());
    }
}

void
observe_request_scan(struct observe_req *o, const struct embed_scan *scan)
{
    o->scanned = true;
    o->ninputs = (uint32_t)scan->ninputs;
    for (size_t i = 0; i < scan->ninputs; i++) {
        o->textlen[metrics_bucket_of(METRIC_EMBEDDING_TEXT_LENGTH, (double)scan->chars[i])]++;
        o->textlen_sum += (double)scan->chars[i];
    }
}

bool
observe_real_answer(struct observe_req *o, const char *model_key, bool sized)
{
    if (!o->scanned) {
        return false;
    }
    observe_batch(EMBED_MODE_REAL, o->ninputs);
    metrics_observe_folded(m_textlen[EMBED_MODE_REAL], o->textlen, o->textlen_sum);
    /* An answer cut to the caller's "dimensions" says nothing of the model's own size. */
    return !sized && model_dim_due(model_key, util_mono_ms());
}

void
observe_connection_refused(void)
{
    log_warn("max_connections reached: refused a connection");
}

/* ---- attempts ---------------------------------------------------------- */

/* The attributes of up's own on each CLIENT span, encoded at its first. */
static const struct trace_attr_block *
upstream_span_attrs(struct upstream *up)
{
    struct trace_context ctx;
    struct trace_span *s;

    if (up->span_attrs != NULL) {
        return up->span_attrs;
    }
    memset(&ctx, 0, sizeof(ctx)); /* a span only to encode on, never sent */
    s = trace_span_new(&ctx, NULL, TRACE_KIND_CLIENT, "", 0);
    trace_span_attr_str(s, "server.address", up->cfg->url.host);
    trace_span_attr_int(s, "server.port", up->cfg->url.port);
    trace_span_attr_str(s, "akosha.upstream", up->name);
    up->span_attrs = xmalloc(sizeof(*up->span_attrs));
    trace_attr_block_take(up->span_attrs, s);
    trace_span_free(s);
    return up->span_attrs;
}

void
observe_attempt_start(struct observe_req *o, const struct http_request_head *hd,
                      struct upstream *up, unsigned attempt, const char *model)
{
    struct trace_context child;
    char name[TRACE_NAME_MAX];
    struct trace_span *s;

    o->attempt = NULL;
    o->attempt_start_us = util_mono_us();
    o->attempt_end_us = 0;
    o->attempt_up = up;
    o->attempt_breaker = (int)up->breaker.state;
    if (o->span == NULL) {
        return;
    }
    trace_child_context(&o->ctx, &child);
    span_name(hd, false, name);
    s = trace_span_new(&child, o->ctx.span_id, TRACE_KIND_CLIENT, name,
                       wall_ns(o->attempt_start_us));
    trace_span_attr_strn(s, "http.request.method", hd->method_str, hd->method_len);
    trace_span_put_block(s, upstream_span_attrs(up));
    trace_span_attr_strn(s, "url.path", hd->path, hd->path_len);
    trace_span_attr_str(s, "akosha.circuit_state", breaker_state_name(up->breaker.state));
    if (attempt > 1) {
        trace_span_attr_int(s, "http.request.resend_count", attempt - 1);
    }
    if (model != NULL && model[0] != '\0') {
        trace_span_attr_str(s, "gen_ai.request.model", model);
    }
    o->attempt = s;
}

bool
observe_attempt_traceparent(const struct observe_req *o, char *out, size_t len)
{
    struct trace_context ctx;

    if (!tracing || len < 56) {
        return false;
    }
    if (o->attempt != NULL) {
        memcpy(ctx.trace_id, o->attempt->trace_id, TRACE_ID_SIZE);
        memcpy(ctx.span_id, o->attempt->span_id, TRACE_SPAN_ID_SIZE);
        ctx.flags = o->attempt->flags;
    } else {
        trace_child_context(&o->ctx, &ctx); /* unsampled: propagate the decision */
    }
    trace_format_traceparent(&ctx, out);
    return true;
}

void
observe_attempt_status(struct observe_req *o, int status)
{
    if (o->attempt != NULL) {
        trace_span_set_http_status(o->attempt, status);
    }
}

void
observe_attempt_failed(struct observe_req *o, const struct upstream *up, const char *reason,
                       const char *cause)
{
    struct upstream_series *s = series_for(up->name);

    o->attempt_end_us = util_mono_us();
    if (s != NULL) {
        metrics_inc(s->outcome[reason_class(reason)]);
        metrics_observe(s->duration, (double)(o->attempt_end_us - o->attempt_start_us) / 1e6);
    }
    if (o->attempt != NULL) {
        struct trace_event *ev =
            trace_span_add_event(o->attempt, "exception", wall_ns(o->attempt_end_us));
        trace_event_attr_str(ev, "exception.type", reason);
        trace_event_attr_str(ev, "exception.message", cause);
        trace_span_attr_str(o->attempt, "error.type", reason);
        trace_span_set_status(o->attempt, TRACE_STATUS_ERROR, cause);
    }
}

void
observe_attempt_success(struct observe_req *o, const struct upstream *up, int status)
{
    struct upstream_series *s = series_for(up->name);

    o->attempt_end_us = util_mono_us();
    if (s != NULL) {
        metrics_inc(s->outcome[status >= 400 ? OUT_CLIENT_ERROR : OUT_SUCCESS]);
        metrics_observe(s->duration, (double)(o->attempt_end_us - o->attempt_start_us) / 1e6);
    }
}

void
observe_attempt_end(struct observe_req *o)
{
    struct trace_span *s = o->attempt;
    const struct upstream *up = o->attempt_up;

    o->attempt = NULL;
    o->attempt_up = NULL;
    if (o->span != NULL && up != NULL && (int)up->breaker.state != o->attempt_breaker) {
        struct trace_event *ev =
            trace_span_add_event(o->span, "akosha.breaker", wall_ns(util_mono_us()));
        trace_event_attr_str(ev, "akosha.upstream", up->name);
        trace_event_attr_str(ev, "akosha.breaker.old_state",
                             breaker_state_name((enum breaker_state)o->attempt_breaker));
        trace_event_attr_str(ev, "akosha.breaker.new_state", breaker_state_name(up->breaker.state));
    }
    if (s == NULL) {
        return;
    }
    trace_span_end(s, wall_ns(o->attempt_end_us != 0 ? o->attempt_end_us : util_mono_us()));
    if (o->span != NULL && o->nended < OBSERVE_ENDED_MAX) {
        o->ended[o->nended++] = s; /* goes with the SERVER span */
    } else {
        span_submit(s);
    }
}

void
observe_all_open(const struct upstream_set *set)
{
    for (size_t i = 0; i < set->n; i++) {
        struct upstream_series *s = series_for(set->ups[i]->name);
        if (s != NULL) {
            metrics_inc(s->outcome[OUT_REJECTED]);
        }
    }
}

void
observe_pool_wait(const struct upstream *up)
{
    struct upstream_series *s = series_for(up->name);

    if (s != NULL) {
        metrics_inc(s->pool_waits);
    }
}

void
observe_retry(struct observe_req *o, const struct upstream *up, const char *reason,
              unsigned next_attempt, uint64_t backoff_ms)
{
    struct upstream_series *s = series_for(up->name);
    int cls = reason_class(reason);

    if (s != NULL) {
        metrics_inc(s->retries[cls == OUT_TIMEOUT ? 1 : cls == OUT_CONNECT ? 2 : 0]);
    }
    if (o->span != NULL) {
        struct trace_event *ev =
            trace_span_add_event(o->span, "akosha.retry", wall_ns(util_mono_us()));
        trace_event_attr_int(ev, "akosha.retry.attempt", next_attempt);
        trace_event_attr_int(ev, "akosha.retry.backoff_ms", (int64_t)backoff_ms);
        trace_event_attr_str(ev, "akosha.retry.reason", reason);
        trace_event_attr_str(ev, "akosha.upstream", up->name);
    }
}

void
observe_budget_exhausted(void)
{
    metrics_inc(metrics_series(METRIC_RETRY_BUDGET_EXHAUSTED, NULL));
}

struct observe_model_counts
observe_model_counts(const char *model)
{
    struct observe_model_counts none = {0};

    for (size_t i = 1; i < nmodel_labels; i++) {
        if (strcmp(model_labels[i], model) == 0) {
            return model_counts[i];
        }
    }
    return none;
}

void
observe_fallback_done(struct observe_req *o, const char *request_id,
                      const struct fallback_outcome *out)
{
    struct trace_context child;
    struct trace_span *s;

    if (out->status == 200 && out->er != NULL) {
        observe_embeddings(out->mode, out->er, out->known);
    }
    if (out->shed != NULL) {
        log_info("request %s: fallback job shed (%s); answering 503", request_id, out->shed);
        observe_fallback_shed(out->shed);
    }
    if (o->span == NULL || exporter == NULL || out->er == NULL) {
        return;
    }
    trace_child_context(&o->ctx, &child);
    s = trace_span_new(&child, o->ctx.span_id, TRACE_KIND_INTERNAL,
                       out->er->ninputs > 1 ? "generate_batch_embeddings" : "generate_embedding",
                       out->start_ns);
    trace_span_attr_str(s, "embedding.mode", embed_mode_name(out->mode));
    trace_span_attr_int(s, "embedding.text_length", (int64_t)out->text_chars);
    trace_span_attr_int(s, "batch.size", (int64_t)out->er->ninputs);
    trace_span_attr_int(s, "embedding.dimensions", out->dim);
    if (out->status != 200) {
        trace_span_set_status(s, TRACE_STATUS_ERROR,
                              out->status == 503 ? "shed: past the deadline" : "invalid input");
    }
    trace_span_end(s, out->end_ns);
    otlp_submit(exporter, s);
}

void
observe_fallback(struct observe_req *o, const char *reason, const char *model)
{
    const char *lv[] = {reason, model_labels[model_label(model)]};

    totals.fallbacks++;
    metrics_inc(metrics_series(METRIC_FALLBACK, lv));
    if (o->span != NULL) {
        struct trace_event *ev =
            trace_span_add_event(o->span, "akosha.fallback", wall_ns(util_mono_us()));
        trace_event_attr_str(ev, "akosha.fallback.reason", reason);
    }
}

void
observe_fallback_shed(const char *reason)
{
    const char *lv[] = {reason};

    metrics_inc(metrics_series(METRIC_FALLBACK_SHED, lv));
}

static void
observe_batch(enum embed_mode m, size_t ninputs)
{
    metrics_add(m_generated[m], ninputs);
    if (ninputs > 1) {
        metrics_inc(m_batch[m]);
    }
    metrics_observe(m_batchsize[m], (double)ninputs);
}

void
observe_embeddings(enum embed_mode mode, const struct embed_request *er,
                   const unsigned char *known)
{
    size_t nknown = 0;

    if (mode == EMBED_MODE_NONE) {
        return;
    }
    for (size_t i = 0; i < er->ninputs; i++) {
        const struct embed_input *in = &er->inputs[i];
        enum embed_mode m = known != NULL && known[i] ? EMBED_MODE_REAL : mode;
        nknown += m != mode;
        metrics_observe(m_textlen[m],
                        (double)(in->text ? util_utf8_chars(in->text, in->len) : in->ntokens));
    }
    if (nknown > 0) {
        observe_batch(EMBED_MODE_REAL, nknown);
    }
    if (er->ninputs > nknown) {
        observe_batch(mode, er->ninputs - nknown);
    }
}
