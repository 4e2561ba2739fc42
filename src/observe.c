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
#include "fallback.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "otlp.h"
#include "proxy.h"
#include "trace.h"
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
/* by mode: 0 real, 1 fallback (the hash), 2 local (the model's own, run here) */
static const char *modes[] = {"real", "fallback", "local"};
static struct metric_series *m_generated[3], *m_batch[3], *m_textlen[3], *m_batchsize[3];

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


static void observe_batch(int m, size_t ninputs);

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

static void
collect_breakers(struct metrics_writer *w, void *arg)
{
    struct server *srv = arg;
    struct breaker_stats st;
    uint64_t exported = 0, dropped = 0, failures = 0;

    for (size_t i = 0; i < srv->ups->n; i++) {
        struct upstream *up = srv->ups->ups[i];
        const char *idle[] = {up->name, "idle"}, *active[] = {up->name, "active"};
        breaker_get_stats(&up->breaker, &st);
        breaker_samples(w, up->name, &st);
        metrics_writer_sample(w, METRIC_UPSTREAM_CONNECTIONS, idle, (double)up->nidle);
        metrics_writer_sample(w, METRIC_UPSTREAM_CONNECTIONS, active,
                              (double)(up->nbusy + up->nconnecting));
    }
    if (srv->otlp != NULL) {
        otlp_breaker_stats(srv->otlp, &st);
        breaker_samples(w, "otlp-exporter", &st);
        otlp_counters(srv->otlp, &exported, &dropped, &failures);
    }
    metrics_writer_sample(w, METRIC_SPANS_EXPORTED, NULL, (double)exported);
    metrics_writer_sample(w, METRIC_SPANS_DROPPED, NULL, (double)dropped);
    metrics_writer_sample(w, METRIC_SPAN_EXPORT_FAILURES, NULL, (double)failures);
    accesslog_counters(srv->alog, &exported, &dropped);
    metrics_writer_sample(w, METRIC_ACCESS_LOG_LINES, NULL, (double)exported);
    metrics_writer_sample(w, METRIC_ACCESS_LOG_DROPPED, NULL, (double)dropped);
    metrics_writer_sample(w, METRIC_FALLBACK_QUEUE_DEPTH, NULL,
                          srv->workers ? (double)worker_pool_depth(srv->workers) : 0);
}

int
observe_init(struct server *srv, const char **cause)
{
    const struct config *cfg = srv->cfg;

    metrics_set_build_info(PACKAGE_VERSION);
    metrics_add_collector(collect_breakers, srv);
    for (int i = 0; i < 3; i++) {
        const char *lv[] = {modes[i]};
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
    tele.json = cfg->telemetry.otlp_protocol == 1;
    telemetry_apply_env(&tele, NULL);
    telemetry_sampler(&tele, &sampler);
    *cause = NULL;
    srv->otlp = otlp_start(&tele, PACKAGE_VERSION, cause);
    if (srv->otlp == NULL && *cause != NULL) {
        telemetry_settings_free(&tele);
        return -1;
    }
    tracing = srv->otlp != NULL;
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
observe_shutdown(struct server *srv, unsigned long timeout_ms)
{
    if (srv->otlp != NULL) {
        otlp_shutdown(srv->otlp, timeout_ms);
        srv->otlp = NULL;
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
observe_reload(struct server *srv, bool ok)
{
    const char *lv[] = {ok ? "success" : "failure"};

    (void)srv;
    metrics_inc(metrics_series(METRIC_CONFIG_RELOADS, lv));
}

/* ---- requests ---------------------------------------------------------- */

/* "METHOD PATH" (with_path) or "METHOD" into out[TRACE_NAME_MAX], cut to fit. */
static void
span_name(const struct request *r, bool with_path, char out[TRACE_NAME_MAX])
{
    size_t n = MIN(r->hd.method_len, (size_t)TRACE_NAME_MAX - 1);

    memcpy(out, r->hd.method_str, n);
    if (with_path && n + 1 < TRACE_NAME_MAX) {
        size_t p = MIN(r->hd.path_len, (size_t)TRACE_NAME_MAX - 2 - n);
        out[n++] = ' ';
        memcpy(out + n, r->hd.path, p);
        n += p;
    }
    out[n] = '\0';
}

void
observe_request_start(struct server *srv, struct request *r)
{
    const struct http_header *h;
    char name[TRACE_NAME_MAX];

    (void)srv;
    if (!tracing) {
        return;
    }
    h = http_find_header(r->hd.headers, r->hd.nheaders, "traceparent");
    if (h != NULL && trace_parse_traceparent(h->value, h->value_len, &r->trace_parent)) {
        const struct http_header *ts =
            http_find_header(r->hd.headers, r->hd.nheaders, "tracestate");
        r->has_parent = true;
        if (ts != NULL) {
            trace_set_tracestate(&r->trace_parent, ts->value, ts->value_len);
        }
    }
    trace_start(&sampler, r->has_parent ? &r->trace_parent : NULL, &r->ctx);
    if (!trace_context_sampled(&r->ctx)) {
        return;
    }
    span_name(r, true, name);
    r->span = trace_span_new(&r->ctx, r->has_parent ? r->trace_parent.span_id : NULL,
                             TRACE_KIND_SERVER, name, otlp_now_unix_ns());
    trace_span_attr_strn(r->span, "http.request.method", r->hd.method_str, r->hd.method_len);
    trace_span_attr_strn(r->span, "url.path", r->hd.path, r->hd.path_len);
    trace_span_attr_str(r->span, "http.request.id", r->id);
}

void
observe_in_flight(int delta)
{
    metrics_gauge_add(m_in_flight, delta);
}

void
observe_server_span_end(struct server *srv, struct request *r)
{
    struct trace_span *s = r->span;

    r->span = NULL;
    if (s == NULL) {
        return;
    }
    if (r->status > 0) {
        trace_span_attr_int(s, "http.response.status_code", r->status);
        trace_span_set_http_status(s, r->status);
        if (r->status >= 500) {
            char t[16];
            snprintf(t, sizeof(t), "%d", r->status);
            trace_span_attr_str(s, "error.type", t);
        }
    } else {
        trace_span_attr_str(s, "error.type", "client_disconnected");
        trace_span_set_status(s, TRACE_STATUS_ERROR, "client went away");
    }
    if (r->mode != NULL) {
        trace_span_attr_str(s, "embedding.mode", r->mode);
    }
    /* OpenTelemetry's GenAI conventions: what the caller asked for, what answered. */
    if (r->model_sent[0] != '\0') {
        trace_span_attr_str(s, "gen_ai.request.model", r->model_sent);
    }
    if (r->response_model[0] != '\0') {
        trace_span_attr_str(s, "gen_ai.response.model", r->response_model);
    }
    if (r->model != NULL) {
        trace_span_attr_str(s, "akosha.model", r->model);
    }
    trace_span_end(s, otlp_now_unix_ns());
    if (srv->otlp != NULL) {
        otlp_submit(srv->otlp, s);
    } else {
        trace_span_free(s);
    }
}

void
observe_request_done(struct server *srv, struct request *r)
{
    int ri = route_index(r->route);
    int code = r->status >= 100 && r->status < 600 ? r->status : 0;
    double secs = (double)(util_mono_us() - r->start_us) / 1e6;

    srv->requests_total++;
    if (code != 0) {
        size_t mi = model_label(r->model);
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
        if (r->mode != NULL) {
            if (strcmp(r->mode, "real") == 0) {
                model_counts[mi].real++;
            } else if (strcmp(r->mode, "local") == 0) {
                model_counts[mi].local++;
            } else {
                model_counts[mi].fallback++;
            }
        }
    }
    metrics_observe(m_duration[ri], secs);
    if (r->sniffed_dim > 0) {
        model_learn_dim(observe_model_key(r), r->sniffed_dim, util_mono_ms());
    }
}

static bool
trace_id_set(const uint8_t *id)
{
    for (size_t i = 0; i < TRACE_ID_SIZE; i++) {
        if (id[i] != 0) {
            return true;
        }
    }
    return false;
}

void
observe_access(struct server *srv, const struct request *r, const char *peer)
{
    char trace_id[TRACE_ID_SIZE * 2 + 1];
    struct accesslog_entry e;
    const uint8_t *tid = NULL;
    struct trace_context parent;

    if (!accesslog_enabled(srv->alog)) {
        return;
    }
    if (trace_id_set(r->ctx.trace_id)) {
        tid = r->ctx.trace_id;
    } else {
        /* Not tracing: the caller's trace id still ties the line to its trace. */
        const struct http_header *h = http_find_header(r->hd.headers, r->hd.nheaders, "traceparent");
        if (h != NULL && trace_parse_traceparent(h->value, h->value_len, &parent)) {
            tid = parent.trace_id;
        }
    }
    if (tid != NULL) {
        trace_hex(tid, TRACE_ID_SIZE, trace_id);
    }
    e = (struct accesslog_entry){
        .time_ms = util_wall_ms(),
        .request_id = r->id,
        .trace_id = tid != NULL ? trace_id : NULL,
        .client = peer,
        .method = r->hd.method_str,
        .method_len = r->hd.method_len,
        .path = r->hd.path,
        .path_len = r->hd.path_len,
        .status = r->status,
        .bytes_in = r->bytes_in + (r->body != NULL ? evbuffer_get_length(r->body) : 0),
        .bytes_out = r->bytes_out,
        .duration_us = util_mono_us() - r->start_us,
        .model = r->model_sent[0] != '\0' ? r->model_sent : NULL,
        .inputs = r->ninputs,
        .attempts = r->attempts,
        .mode = r->mode,
        .reason = r->reason,
    };
    if (e.path == NULL && r->head != NULL) {
        /* The head did not parse: its request line as sent, so the odd ones are seen. */
        const char *line = r->head, *end = line + strcspn(line, "\r\n");
        const char *sp = memchr(line, ' ', (size_t)(end - line));
        if (sp != NULL) {
            const char *target = sp + 1, *sp2 = memchr(target, ' ', (size_t)(end - target));
            const char *tend = sp2 != NULL ? sp2 : end;
            const char *q = memchr(target, '?', (size_t)(tend - target));
            e.method = line;
            e.method_len = (size_t)(sp - line);
            e.path = target;
            e.path_len = (size_t)((q != NULL ? q : tend) - target);
        }
    }
    if (r->mode != NULL && strcmp(r->mode, "real") != 0) {
        e.upstream = "local";
    } else if (r->ntried > 0) {
        e.upstream = r->tried[r->ntried - 1]->name;
    }
    accesslog_write(srv->alog, &e);
}

const char *
observe_model_key(const struct request *r)
{
    return r->model != NULL ? r->model : r->model_sent;
}

void
observe_request_scan(struct request *r, const struct embed_scan *scan)
{
    r->ninputs = (uint32_t)scan->ninputs;
    for (size_t i = 0; i < scan->ninputs; i++) {
        r->textlen[metrics_bucket_of(METRIC_EMBEDDING_TEXT_LENGTH, (double)scan->chars[i])]++;
        r->textlen_sum += (double)scan->chars[i];
    }
}

bool
observe_real_answer(struct server *srv, struct request *r)
{
    (void)srv;
    if (!r->scanned) {
        return false;
    }
    observe_batch(0, r->ninputs);
    metrics_observe_folded(m_textlen[0], r->textlen, r->textlen_sum);
    /* An answer cut to the caller's "dimensions" says nothing of the model's own size. */
    return !r->sized && model_dim_due(observe_model_key(r), util_mono_ms());
}

void
observe_connection_refused(struct server *srv)
{
    (void)srv;
    log_warn("max_connections reached: refused a connection");
}

/* ---- attempts ---------------------------------------------------------- */

void
observe_attempt_start(struct server *srv, struct request *r)
{
    struct attempt *a = &r->att;

    (void)srv;
    a->span = NULL;
    if (r->span == NULL) {
        return;
    }
    struct trace_context child;
    trace_child_context(&r->ctx, &child);
    {
        char name[TRACE_NAME_MAX];
        span_name(r, false, name);
        a->span =
            trace_span_new(&child, r->ctx.span_id, TRACE_KIND_CLIENT, name, otlp_now_unix_ns());
    }
    trace_span_attr_strn(a->span, "http.request.method", r->hd.method_str, r->hd.method_len);
    trace_span_attr_str(a->span, "server.address", a->up->cfg->url.host);
    trace_span_attr_int(a->span, "server.port", a->up->cfg->url.port);
    trace_span_attr_strn(a->span, "url.path", r->hd.path, r->hd.path_len);
    trace_span_attr_str(a->span, "akosha.upstream", a->up->name);
    trace_span_attr_str(a->span, "akosha.circuit_state", breaker_state_name(a->up->breaker.state));
    if (r->attempts > 1) {
        trace_span_attr_int(a->span, "http.request.resend_count", r->attempts - 1);
    }
    if (r->model_sent[0] != '\0') {
        const char *remote = NULL;
        if (r->model != NULL) {
            model_upstream_serves(a->up->cfg_owner, a->up->cfg, r->model, &remote);
        }
        trace_span_attr_str(a->span, "gen_ai.request.model", remote ? remote : r->model_sent);
    }
}

bool
observe_attempt_traceparent(struct server *srv, struct request *r, char *out, size_t len)
{
    struct trace_context ctx;

    (void)srv;
    if (!tracing || len < 56) {
        return false;
    }
    if (r->att.span != NULL) {
        memcpy(ctx.trace_id, r->att.span->trace_id, TRACE_ID_SIZE);
        memcpy(ctx.span_id, r->att.span->span_id, TRACE_SPAN_ID_SIZE);
        ctx.flags = r->att.span->flags;
    } else {
        trace_child_context(&r->ctx, &ctx); /* unsampled: propagate the decision */
    }
    trace_format_traceparent(&ctx, out);
    return true;
}

void
observe_attempt_status(struct server *srv, struct request *r, int status)
{
    (void)srv;
    if (r->att.span != NULL) {
        trace_span_attr_int(r->att.span, "http.response.status_code", status);
        trace_span_set_http_status(r->att.span, status);
    }
}

void
observe_attempt_failed(struct server *srv, struct request *r, const char *reason, int status)
{
    struct upstream_series *s = series_for(r->att.up->name);

    (void)srv;
    (void)status;
    if (s != NULL) {
        metrics_inc(s->outcome[reason_class(reason)]);
        metrics_observe(s->duration, (double)(util_mono_us() - r->att.start_us) / 1e6);
    }
    if (r->att.span != NULL) {
        trace_span_attr_str(r->att.span, "error.type", reason);
        trace_span_set_status(r->att.span, TRACE_STATUS_ERROR, reason);
    }
}

void
observe_attempt_success(struct server *srv, struct request *r)
{
    struct upstream_series *s = series_for(r->att.up->name);

    (void)srv;
    if (s != NULL) {
        bool client_error = r->att.status >= 400;
        metrics_inc(s->outcome[client_error ? OUT_CLIENT_ERROR : OUT_SUCCESS]);
        metrics_observe(s->duration, (double)(util_mono_us() - r->att.start_us) / 1e6);
    }
}

void
observe_attempt_end(struct server *srv, struct request *r)
{
    struct trace_span *s = r->att.span;

    r->att.span = NULL;
    if (s == NULL) {
        return;
    }
    trace_span_end(s, otlp_now_unix_ns());
    if (srv->otlp != NULL) {
        otlp_submit(srv->otlp, s);
    } else {
        trace_span_free(s);
    }
}

void
observe_all_open(struct server *srv, struct request *r)
{
    (void)srv;
    for (size_t i = 0; i < r->ups->n; i++) {
        struct upstream_series *s = series_for(r->ups->ups[i]->name);
        if (s != NULL) {
            metrics_inc(s->outcome[OUT_REJECTED]);
        }
    }
}

void
observe_pool_wait(struct server *srv, struct upstream *up)
{
    struct upstream_series *s = series_for(up->name);

    (void)srv;
    if (s != NULL) {
        metrics_inc(s->pool_waits);
    }
}

void
observe_retry(struct server *srv, struct request *r, const char *reason)
{
    struct upstream_series *s = series_for(r->att.up->name);
    int cls = reason_class(reason);

    (void)srv;
    if (s != NULL) {
        metrics_inc(s->retries[cls == OUT_TIMEOUT ? 1 : cls == OUT_CONNECT ? 2 : 0]);
    }
}

void
observe_budget_exhausted(struct server *srv)
{
    (void)srv;
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
observe_fallback_done(struct server *srv, struct request *r, const struct fallback_outcome *o)
{
    struct trace_context child;
    struct trace_span *s;

    if (o->status == 200 && o->er != NULL) {
        observe_embeddings(srv, o->mode, o->er);
        r->mode = o->mode;
        snprintf(r->response_model, sizeof(r->response_model), "%s", o->model_name);
    }
    if (o->shed != NULL) {
        log_info("request %s: fallback job shed (%s); answering 503", r->id, o->shed);
        observe_fallback_shed(srv, o->shed);
    }
    if (r->span == NULL || srv->otlp == NULL || o->er == NULL) {
        return;
    }
    trace_child_context(&r->ctx, &child);
    s = trace_span_new(&child, r->ctx.span_id, TRACE_KIND_INTERNAL,
                       o->er->ninputs > 1 ? "generate_batch_embeddings" : "generate_embedding",
                       o->start_ns);
    trace_span_attr_str(s, "embedding.mode", o->mode);
    trace_span_attr_int(s, "embedding.text_length", (int64_t)o->text_chars);
    trace_span_attr_int(s, "batch.size", (int64_t)o->er->ninputs);
    trace_span_attr_int(s, "embedding.dimensions", o->dim);
    if (o->status != 200) {
        trace_span_set_status(s, TRACE_STATUS_ERROR,
                              o->status == 503 ? "shed: past the deadline" : "invalid input");
    }
    trace_span_end(s, o->end_ns);
    otlp_submit(srv->otlp, s);
}

void
observe_fallback(struct server *srv, const char *reason, const char *model)
{
    const char *lv[] = {reason, model_labels[model_label(model)]};

    srv->fallback_total++;
    metrics_inc(metrics_series(METRIC_FALLBACK, lv));
}

void
observe_fallback_shed(struct server *srv, const char *reason)
{
    const char *lv[] = {reason};

    (void)srv;
    metrics_inc(metrics_series(METRIC_FALLBACK_SHED, lv));
}

static void
observe_batch(int m, size_t ninputs)
{
    metrics_add(m_generated[m], ninputs);
    if (ninputs > 1) {
        metrics_inc(m_batch[m]);
    }
    metrics_observe(m_batchsize[m], (double)ninputs);
}

void
observe_embeddings(struct server *srv, const char *mode, const struct embed_request *er)
{
    int m = strcmp(mode, "real") == 0 ? 0 : strcmp(mode, "local") == 0 ? 2 : 1;

    (void)srv;
    observe_batch(m, er->ninputs);
    for (size_t i = 0; i < er->ninputs; i++) {
        const struct embed_input *in = &er->inputs[i];
        metrics_observe(m_textlen[m],
                        (double)(in->text ? util_utf8_chars(in->text, in->len) : in->ntokens));
    }
}
