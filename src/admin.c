/*
 * admin.c - the admin listener: health, readiness, stats, config, metrics,
 * and breaker control. A separate socket from traffic; one request per
 * connection (Connection: close), small heads only.
 *
 * An admin connection: READ (head) -> WRITE (answer queued) -> closed.
 * Each state has one deadline counted from entering it, never restarted by
 * traffic: ADMIN_HEAD_TIMEOUT_S for the head (a peer sending a byte now and
 * then is cut off all the same), ADMIN_WRITE_TIMEOUT_S for the answer. With
 * the table full, accept evicts the connection that has been reading its head
 * longest, so trickling peers cannot lock probes and scrapes out; one being
 * answered is never evicted.
 *
 * HEAD is answered like GET, with the GET body's Content-Length and no body.
 *
 * Read-only routes (GET, HEAD) are open to whoever reaches the listener.
 * Every other method may change behaviour (POST /upstreams/NAME/... can push
 * every caller onto fallback vectors), so it needs the [admin] token when one
 * is set, and otherwise a peer on this host (loopback or the unix socket).
 */
#include "admin.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "breaker.h"
#include "cache.h"
#include "cache_redis.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "observe.h"
#include "otlp.h"
#include "server.h"
#include "util.h"
#include "worker.h"

#define ADMIN_MAX_HEAD 8192
/* Evictions and refusals at the connection limit are logged this often. */
#define ADMIN_FULL_REPORT_MS 5000

enum admin_state { ADMIN_READ, ADMIN_WRITE };

static const char *const admin_state_names[] = {"read", "write"};

struct admin_conn {
    struct server *srv;
    struct bufferevent *bev;
    struct event *deadline; /* the current state's deadline */
    enum admin_state state;
    bool local_peer; /* loopback or unix socket: see util_peer_is_local */
    bool head_only;  /* a HEAD request: headers of the GET answer, no body */
    TAILQ_ENTRY(admin_conn) link;
};
TAILQ_HEAD(admin_list, admin_conn);

/* In accept order, so the first connection still reading is the oldest. */
static struct admin_list conns = TAILQ_HEAD_INITIALIZER(conns);
static size_t nconns;

/* Connection-limit events since the last report, and when that was. */
static uint64_t full_evicted, full_refused, full_reported_ms;

static void
admin_free(struct admin_conn *a)
{
    TAILQ_REMOVE(&conns, a, link);
    nconns--;
    event_free(a->deadline);
    bufferevent_free(a->bev);
    free(a);
}

/* The one place a connection changes state; starts the new state's deadline. */
static void
admin_set_state(struct admin_conn *a, enum admin_state to)
{
    struct timeval tv = {to == ADMIN_READ ? ADMIN_HEAD_TIMEOUT_S : ADMIN_WRITE_TIMEOUT_S, 0};

    if (a->state != to) {
        log_debug("admin: connection %s -> %s", admin_state_names[a->state], admin_state_names[to]);
    }
    a->state = to;
    evtimer_add(a->deadline, &tv);
}

void
admin_close_all(struct server *srv)
{
    (void)srv;
    while (!TAILQ_EMPTY(&conns)) {
        admin_free(TAILQ_FIRST(&conns));
    }
}

/* extra: more header lines, each ending in CRLF, or "". */
static void
reply_with(struct admin_conn *a, int status, const char *extra, const char *ctype, const char *body,
           size_t len)
{
    struct evbuffer *out = bufferevent_get_output(a->bev);

    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                        status, http_reason(status), ctype, len, extra);
    if (!a->head_only) {
        evbuffer_add(out, body, len);
    }
    admin_set_state(a, ADMIN_WRITE);
    bufferevent_disable(a->bev, EV_READ);
}

static void
reply(struct admin_conn *a, int status, const char *ctype, const char *body, size_t len)
{
    reply_with(a, status, "", ctype, body, len);
}

static void
reply_json(struct admin_conn *a, int status, struct buf *b)
{
    reply(a, status, "application/json", b->data ? b->data : "", b->len);
}

static void
reply_error_with(struct admin_conn *a, int status, const char *extra, const char *message)
{
    struct buf b;

    buf_init(&b);
    buf_puts(&b, "{\"error\":{\"message\":");
    buf_json_string(&b, message, strlen(message));
    buf_printf(&b, ",\"type\":\"admin_error\",\"param\":null,\"code\":%d}}", status);
    reply_with(a, status, extra, "application/json", b.data, b.len);
    buf_free(&b);
}

static void
reply_error(struct admin_conn *a, int status, const char *message)
{
    reply_error_with(a, status, "", message);
}

/* SHA-256 of s[0..len) into out (32 bytes); false if OpenSSL fails. */
static bool
digest(const char *s, size_t len, unsigned char *out)
{
    unsigned int n = 0;

    return EVP_Digest(s, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

bool
admin_bearer_matches(const char *value, size_t value_len, const char *token)
{
    unsigned char given[EVP_MAX_MD_SIZE], want[EVP_MAX_MD_SIZE];
    size_t i = 0;

    if (value_len < 7 || strncasecmp(value, "Bearer", 6) != 0 ||
        (value[6] != ' ' && value[6] != '\t')) {
        return false;
    }
    i = 7;
    while (i < value_len && (value[i] == ' ' || value[i] == '\t')) {
        i++;
    }
    /*
     * Equal-length digests make the comparison's time independent of where
     * the strings differ and of how long either is.
     */
    if (!digest(value + i, value_len - i, given) || !digest(token, strlen(token), want)) {
        return false;
    }
    return CRYPTO_memcmp(given, want, 32) == 0 && value_len > i && token[0] != '\0';
}

/* Whether a request that changes behaviour may go on; if not, answers it. */
static bool
authorized(struct admin_conn *a, const struct http_request_head *hd)
{
    const char *token = a->srv->cfg->admin.token;
    const struct http_header *h;

    if (token == NULL || token[0] == '\0') {
        if (a->local_peer) {
            return true;
        }
        log_warn("admin: refused %.*s %.*s from a non-local peer: no [admin] token is set",
                 (int)hd->method_len, hd->method_str, (int)hd->path_len, hd->path);
        reply_error(a, 403,
                    "without [admin] token, this endpoint accepts only loopback and "
                    "unix-socket peers");
        return false;
    }
    h = http_find_header(hd->headers, hd->nheaders, "Authorization");
    if (h != NULL && admin_bearer_matches(h->value, h->value_len, token)) {
        return true;
    }
    log_warn("admin: refused %.*s %.*s: %s bearer token", (int)hd->method_len, hd->method_str,
             (int)hd->path_len, hd->path, h == NULL ? "no" : "a wrong");
    reply_error_with(a, 401, "WWW-Authenticate: Bearer realm=\"akosha-admin\"\r\n",
                     "this endpoint needs Authorization: Bearer with the [admin] token");
    return false;
}

static void
json_time(struct buf *b, struct server *srv, uint64_t mono_ms)
{
    char iso[40];

    if (mono_ms == 0) {
        buf_puts(b, "null");
        return;
    }
    /* Breakers keep monotonic times; show them as wall-clock UTC. */
    util_iso8601(util_wall_ms() - (int64_t)(util_mono_ms() - mono_ms), iso, sizeof(iso));
    (void)srv;
    buf_printf(b, "\"%s\"", iso);
}

static void
breaker_json(struct buf *b, struct server *srv, const char *name, const struct breaker_stats *st)
{
    buf_puts(b, "{\"service_name\":");
    buf_json_string(b, name, strlen(name));
    buf_printf(b,
               ",\"state\":\"%s\",\"total_calls\":%" PRIu64 ",\"successful_calls\":%" PRIu64
               ",\"failed_calls\":%" PRIu64 ",\"rejected_calls\":%" PRIu64
               ",\"consecutive_failures\":%u,\"consecutive_successes\":%u,"
               "\"success_rate\":%.4f,\"forced_open\":%s,\"last_failure_time\":",
               breaker_state_name(st->state), st->total_calls, st->successful_calls,
               st->failed_calls, st->rejected_calls, st->consecutive_failures,
               st->consecutive_successes, st->success_rate, st->forced_open ? "true" : "false");
    json_time(b, srv, st->last_failure_ms);
    buf_puts(b, ",\"last_state_change\":");
    json_time(b, srv, st->last_state_change_ms);
    buf_putc(b, '}');
}

/*
 * An upstream's active health checks and latency estimate, as fields of its
 * /stats object. last_result is null before the first check; unchecked
 * upstreams are always healthy.
 */
static void
health_json(struct buf *b, const struct upstream *up, uint64_t now)
{
    const struct health_status *h = &up->health;

    buf_printf(b,
               ",\"latency_ewma_ms\":%.3f,\"in_flight\":%zu,\"health\":{\"checked\":%s,"
               "\"healthy\":%s,\"last_result\":%s,\"last_status\":%d,\"last_latency_ms\":%.3f,"
               "\"last_error\":",
               up->ewma_sampled ? upstream_latency_estimate_us(up, now) / 1000.0 : 0.0,
               upstream_in_flight(up), h->checked ? "true" : "false",
               h->healthy ? "true" : "false",
               !h->have_last ? "null" : h->last_pass ? "\"pass\"" : "\"fail\"", h->last_status,
               (double)h->last_latency_us / 1000.0);
    buf_json_string(b, h->last_error, strlen(h->last_error));
    buf_printf(b,
               ",\"seconds_since_last\":%.3f,\"consecutive_passes\":%u,"
               "\"consecutive_failures\":%u,\"passes\":%" PRIu64 ",\"failures\":%" PRIu64 "}",
               h->have_last ? (double)(now - h->last_check_ms) / 1000.0 : 0.0,
               (unsigned)h->consecutive_passes, (unsigned)h->consecutive_failures, h->passes,
               h->failures);
}

/* One object a canonical model: names, upstreams, answers, sizes. */
static void
stats_model(struct server *srv, const char *name, const struct model_config *m, bool first,
            struct buf *b)
{
    const struct config *cfg = srv->cfg;
    struct observe_model_counts n = observe_model_counts(name);
    bool any = false;

    if (!first) {
        buf_putc(b, ',');
    }
    buf_puts(b, "{\"name\":");
    buf_json_string(b, name, strlen(name));
    buf_puts(b, ",\"aliases\":[");
    for (size_t j = 0; m != NULL && j < m->aliases.n; j++) {
        if (j > 0) {
            buf_putc(b, ',');
        }
        buf_json_string(b, m->aliases.names[j], strlen(m->aliases.names[j]));
    }
    buf_puts(b, "],\"upstreams\":[");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const char *remote = NULL;
        if (model_upstream_serves(cfg, &cfg->upstreams[i], name, &remote)) {
            if (any) {
                buf_putc(b, ',');
            }
            any = true;
            buf_puts(b, "{\"name\":");
            buf_json_string(b, cfg->upstreams[i].name, strlen(cfg->upstreams[i].name));
            buf_puts(b, ",\"calls_it\":");
            buf_json_string(b, remote ? remote : name, strlen(remote ? remote : name));
            buf_putc(b, '}');
        }
    }
    buf_printf(b,
               "],\"requests\":%" PRIu64 ",\"real\":%" PRIu64 ",\"local\":%" PRIu64
               ",\"fallback\":%" PRIu64 ",\"dimensions\":%lld,\"learned_dimensions\":%u,"
               "\"local_model\":%s}",
               n.requests, n.real, n.local, n.fallback,
               m != NULL ? (long long)m->dimensions : 0LL, model_learned_peek(name),
               m != NULL && m->bert != NULL ? "true" : "false");
}

static void
stats_models(struct server *srv, struct buf *b)
{
    const struct config *cfg = srv->cfg;
    bool first = true;

    for (size_t i = 0; i < cfg->nmodels; i++) {
        stats_model(srv, cfg->models[i].name, &cfg->models[i], first, b);
        first = false;
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct name_list *l = &cfg->upstreams[i].models;
        for (size_t j = 0; j < l->n; j++) {
            if (l->canon[j] == l->names[j]) {
                stats_model(srv, l->names[j], NULL, first, b);
                first = false;
            }
        }
    }
}

static void
stats(struct admin_conn *a)
{
    struct server *srv = a->srv;
    struct buf b;
    struct breaker_stats st;
    uint64_t now = util_mono_ms();
    struct observe_totals totals = observe_totals();

    buf_init(&b);
    buf_printf(&b,
               "{\"version\":\"%s\",\"uptime_seconds\":%.3f,\"ready\":%s,\"draining\":%s,"
               "\"connections\":%zu,\"requests_in_flight\":%zu,\"requests_total\":%" PRIu64
               ",\"fallback_total\":%" PRIu64 ",\"fallback_queue_depth\":%zu,"
               "\"config_reloads\":{\"success\":%" PRIu64 ",\"failure\":%" PRIu64 "},"
               "\"retry_budget_available\":%" PRIu64 ",\"upstreams\":[",
               PACKAGE_VERSION, (double)(util_mono_ms() - srv->started_mono_ms) / 1000.0,
               srv->ready ? "true" : "false", srv->draining ? "true" : "false", srv->nclients,
               srv->in_flight, totals.requests, totals.fallbacks,
               srv->workers ? worker_pool_depth(srv->workers) : 0, srv->reloads_ok,
               srv->reloads_failed, retry_budget_available(&srv->budget, util_mono_ms()));
    for (size_t i = 0; i < srv->ups->n; i++) {
        struct upstream *up = srv->ups->ups[i];
        if (i > 0) {
            buf_putc(&b, ',');
        }
        buf_puts(&b, "{\"name\":");
        buf_json_string(&b, up->name, strlen(up->name));
        buf_puts(&b, ",\"url\":");
        {
            /*
             * As written, like /config: a url built from ${VAR} is not echoed
             * expanded. config_parse_url refuses userinfo; redact anyway.
             */
            const char *raw = up->cfg->raw[config_key_index(SEC_UPSTREAM, "url")];
            char *shown = util_url_redact(raw != NULL ? raw : up->cfg->url.text);
            buf_json_string(&b, shown, strlen(shown));
            free(shown);
        }
        buf_printf(&b,
                   ",\"priority\":%" PRId64 ",\"weight\":%" PRId64 ",\"requests\":%" PRIu64
                   ",\"successes\":%" PRIu64 ",\"failures\":%" PRIu64
                   ",\"client_errors\":%" PRIu64 ",\"pool_waits\":%" PRIu64
                   ",\"cooldown_seconds\":%.3f,\"pool\":{\"idle\":%zu,\"active\":%zu,"
                   "\"connecting\":%zu,\"waiting\":%zu,\"max\":%" PRId64 "}}",
                   up->cfg->priority, up->cfg->weight, up->stats.requests, up->stats.successes,
                   up->stats.failures, up->stats.client_errors, up->stats.pool_waits,
                   upstream_cooling(up, now) ? (double)(up->cooldown_until_ms - now) / 1000.0 : 0.0,
                   up->nidle, up->nbusy, up->nconnecting, up->nwaiters, up->cfg->max_connections);
        b.len--; /* reopen the object for its health and balancing fields */
        health_json(&b, up, now);
        buf_putc(&b, '}');
    }
    buf_puts(&b, "],\"models\":[");
    stats_models(srv, &b);
    buf_puts(&b, "],\"breakers\":[");
    for (size_t i = 0; i < srv->ups->n; i++) {
        struct upstream *up = srv->ups->ups[i];
        if (i > 0) {
            buf_putc(&b, ',');
        }
        breaker_get_stats(&up->breaker, &st);
        breaker_json(&b, srv, up->name, &st);
    }
    if (observe_exporter() != NULL) {
        otlp_breaker_stats(observe_exporter(), &st);
        if (srv->ups->n > 0) {
            buf_putc(&b, ',');
        }
        breaker_json(&b, srv, "otlp-exporter", &st);
    }
    if (srv->redis != NULL) {
        struct cache_redis_stats rs;
        cache_redis_stats(srv->redis, &rs);
        if (srv->ups->n > 0 || observe_exporter() != NULL) {
            buf_putc(&b, ',');
        }
        breaker_json(&b, srv, CACHE_REDIS_BREAKER_NAME, &rs.breaker);
    }
    buf_puts(&b, "]");
    if (srv->cache != NULL) {
        struct cache_stats cs;
        cache_stats(srv->cache, &cs);
        buf_printf(&b,
                   ",\"cache\":{\"entries\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"budget\":%" PRIu64
                   ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"stale_hits\":%" PRIu64
                   ",\"evictions\":%" PRIu64 ",\"inserts\":%" PRIu64,
                   cs.entries, cs.bytes, cs.budget, cs.hits, cs.misses, cs.stale_hits,
                   cs.evictions, cs.inserts);
        if (srv->redis != NULL) {
            struct cache_redis_stats rs;
            cache_redis_stats(srv->redis, &rs);
            buf_printf(&b,
                       ",\"redis\":{\"state\":\"%s\",\"circuit_state\":\"%s\",\"lookups\":%" PRIu64
                       ",\"skipped\":%" PRIu64 ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64
                       ",\"errors\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"stores\":%" PRIu64
                       ",\"stores_dropped\":%" PRIu64 "}",
                       cache_redis_state_name(rs.state), breaker_state_name(rs.breaker.state),
                       rs.lookups, rs.lookups_skipped, rs.hits, rs.misses, rs.errors,
                       rs.timeouts, rs.stores, rs.stores_dropped);
        }
        buf_putc(&b, '}');
    }
    buf_puts(&b, "}");
    reply_json(a, 200, &b);
    buf_free(&b);
}

/*
 * POST /cache/purge: every entry, or ?model=NAME those of one model (a
 * name or an alias; its canonical name is what entries are tagged with).
 */
static void
cache_purge_route(struct admin_conn *a, const struct http_request_head *hd)
{
    struct server *srv = a->srv;
    char model[128];
    const char *canonical;
    size_t removed;
    struct buf b;

    if (hd->method != HTTP_POST) {
        reply_error(a, 405, "use POST");
        return;
    }
    if (srv->cache == NULL) {
        reply_error(a, 409, "no cache is configured ([cache] memory)");
        return;
    }
    if (hd->query == NULL || hd->query_len == 0) {
        removed = cache_purge(srv->cache, true, 0);
    } else {
        if (hd->query_len <= 6 || memcmp(hd->query, "model=", 6) != 0 ||
            hd->query_len - 6 >= sizeof(model)) {
            reply_error(a, 400, "expected /cache/purge or /cache/purge?model=NAME");
            return;
        }
        memcpy(model, hd->query + 6, hd->query_len - 6);
        model[hd->query_len - 6] = '\0';
        canonical = model_canonical(srv->cfg, model);
        removed = cache_purge(srv->cache, false,
                              cache_model_tag(canonical != NULL ? canonical : model));
    }
    log_info("admin: cache purged%s%s: %zu entries", hd->query_len > 0 ? " for " : "",
             hd->query_len > 0 ? model : "", removed);
    buf_init(&b);
    buf_printf(&b, "{\"purged\":%zu}", removed);
    reply_json(a, 200, &b);
    buf_free(&b);
}

static void
control(struct admin_conn *a, const char *path, size_t len)
{
    struct server *srv = a->srv;
    const char *rest = path + strlen("/upstreams/");
    const char *slash = memchr(rest, '/', len - strlen("/upstreams/"));
    char name[128], action[16];
    struct upstream *up;
    struct buf b;
    struct breaker_stats st;
    uint64_t now = util_mono_ms();

    if (slash == NULL || (size_t)(slash - rest) >= sizeof(name) ||
        (size_t)(path + len - slash - 1) >= sizeof(action)) {
        reply_error(a, 404, "expected /upstreams/NAME/open, /close or /reset");
        return;
    }
    memcpy(name, rest, (size_t)(slash - rest));
    name[slash - rest] = '\0';
    memcpy(action, slash + 1, (size_t)(path + len - slash - 1));
    action[path + len - slash - 1] = '\0';
    up = upstream_find(srv->ups, name);
    if (up == NULL) {
        reply_error(a, 404, "no such upstream");
        return;
    }
    if (strcmp(action, "open") == 0) {
        breaker_force_open(&up->breaker, now);
    } else if (strcmp(action, "close") == 0) {
        breaker_force_close(&up->breaker, now);
    } else if (strcmp(action, "reset") == 0) {
        breaker_reset(&up->breaker, now);
    } else {
        reply_error(a, 404, "unknown action: use open, close or reset");
        return;
    }
    log_warn("admin: upstream %s: breaker %s by admin request", up->name, action);
    buf_init(&b);
    breaker_get_stats(&up->breaker, &st);
    breaker_json(&b, srv, up->name, &st);
    reply_json(a, 200, &b);
    buf_free(&b);
}

static bool
path_is(const struct http_request_head *hd, const char *p)
{
    return hd->path_len == strlen(p) && memcmp(hd->path, p, hd->path_len) == 0;
}

static void
route(struct admin_conn *a, const struct http_request_head *hd)
{
    struct server *srv = a->srv;
    bool get = hd->method == HTTP_GET || hd->method == HTTP_HEAD;
    struct buf b;

    /*
     * Anything but GET and HEAD is taken to change behaviour, so a route
     * added later is guarded without anyone remembering to.
     */
    if (!get && !authorized(a, hd)) {
        return;
    }
    if (hd->path_len > 11 && memcmp(hd->path, "/upstreams/", 11) == 0) {
        char path[256];
        if (hd->method != HTTP_POST) {
            reply_error(a, 405, "use POST");
            return;
        }
        if (hd->path_len >= sizeof(path)) {
            reply_error(a, 404, "no such upstream");
            return;
        }
        memcpy(path, hd->path, hd->path_len);
        path[hd->path_len] = '\0';
        control(a, path, hd->path_len);
        return;
    }
    if (path_is(hd, "/cache/purge")) {
        cache_purge_route(a, hd);
        return;
    }
    if (!path_is(hd, "/healthz") && !path_is(hd, "/readyz") && !path_is(hd, "/stats") &&
        !path_is(hd, "/config") && !path_is(hd, "/metrics")) {
        reply_error(a, 404, "not found: try /healthz /readyz /stats /config /metrics");
        return;
    }
    if (!get) {
        reply_error(a, 405, "use GET");
        return;
    }
    if (path_is(hd, "/healthz")) {
        reply(a, 200, "application/json", "{\"status\":\"ok\"}", 15);
    } else if (path_is(hd, "/readyz")) {
        /* Something must be able to answer: a healthy upstream, or the fallback. */
        bool can_serve = srv->cfg->fallback.mode != FALLBACK_OFF || srv->ups->n == 0 ||
                         upstream_any_healthy(srv->ups);
        if (srv->ready && !srv->draining && can_serve) {
            reply(a, 200, "application/json", "{\"status\":\"ready\"}", 18);
        } else if (srv->ready && !srv->draining) {
            reply(a, 503, "application/json", "{\"status\":\"no_healthy_upstream\"}", 32);
        } else {
            reply(a, 503, "application/json",
                  srv->draining ? "{\"status\":\"draining\"}" : "{\"status\":\"starting\"}",
                  srv->draining ? 21 : 21);
        }
    } else if (path_is(hd, "/stats")) {
        stats(a);
    } else if (path_is(hd, "/config")) {
        buf_init(&b);
        config_dump_json(srv->cfg, &b);
        reply_json(a, 200, &b);
        buf_free(&b);
    } else {
        const struct http_header *h = http_find_header(hd->headers, hd->nheaders, "Accept");
        enum metrics_format fmt =
            h != NULL ? metrics_negotiate(h->value, h->value_len) : METRICS_FORMAT_PROMETHEUS;
        buf_init(&b);
        metrics_render_as(&b, fmt);
        reply(a, 200, metrics_content_type(fmt), b.data ? b.data : "", b.len);
        buf_free(&b);
    }
}

static void
admin_read_cb(struct bufferevent *bev, void *arg)
{
    struct admin_conn *a = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    struct http_request_head hd;
    const char *cause = "malformed request";
    unsigned char *p;
    int rc;

    if (a->state != ADMIN_READ) {
        return;
    }
    p = evbuffer_pullup(in, (ssize_t)MIN(len, (size_t)ADMIN_MAX_HEAD));
    rc = http_parse_request_head((const char *)p, MIN(len, (size_t)ADMIN_MAX_HEAD), &hd, &cause);
    if (rc == 0 && len < ADMIN_MAX_HEAD) {
        return;
    }
    if (rc <= 0) {
        reply_error(a, rc == 0 ? 431 : -rc, rc == 0 ? "request head too large" : cause);
        return;
    }
    a->head_only = hd.method == HTTP_HEAD;
    route(a, &hd);
}

static void
admin_write_cb(struct bufferevent *bev, void *arg)
{
    struct admin_conn *a = arg;

    if (a->state == ADMIN_WRITE && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        admin_free(a);
    }
}

static void
admin_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    admin_free(arg);
}

static void
admin_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin_conn *a = arg;

    (void)fd;
    (void)what;
    if (a->state == ADMIN_READ && evbuffer_get_length(bufferevent_get_input(a->bev)) > 0) {
        reply_error(a, 408, "request head not received within the admin head timeout");
        return;
    }
    /* Silent in READ, or an answer the peer would not take in time. */
    admin_free(a);
}

/* The connection that has been reading its head the longest, or NULL. */
static struct admin_conn *
oldest_reading(void)
{
    struct admin_conn *a;

    for (a = TAILQ_FIRST(&conns); a != NULL; a = TAILQ_NEXT(a, link)) {
        if (a->state == ADMIN_READ) {
            return a;
        }
    }
    return NULL;
}

/*
 * Makes room for one more connection when the table is full. False when
 * every open connection is being answered; those are left to finish.
 */
static bool
make_room(void)
{
    struct admin_conn *victim;
    uint64_t now;
    bool room;

    if (nconns < ADMIN_MAX_CONNECTIONS) {
        return true;
    }
    victim = oldest_reading();
    room = victim != NULL;
    if (room) {
        admin_free(victim);
        full_evicted++;
    } else {
        full_refused++;
    }
    now = util_mono_ms();
    if (full_reported_ms == 0 || now - full_reported_ms >= ADMIN_FULL_REPORT_MS) {
        log_warn("admin: all %d connection slots taken: closed %" PRIu64
                 " still reading a head to make room, refused %" PRIu64
                 " while every slot was being answered",
                 ADMIN_MAX_CONNECTIONS, full_evicted, full_refused);
        full_evicted = full_refused = 0;
        full_reported_ms = now;
    }
    return room;
}

void
admin_accept(struct server *srv, evutil_socket_t fd, const struct sockaddr *sa, socklen_t salen)
{
    struct admin_conn *a;

    if (!make_room()) {
        evutil_closesocket(fd);
        return;
    }
    a = xcalloc(1, sizeof(*a));
    a->srv = srv;
    a->local_peer = util_peer_is_local(sa, salen);
    a->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    a->deadline = evtimer_new(srv->base, admin_deadline_cb, a);
    if (a->bev == NULL || a->deadline == NULL) {
        if (a->deadline != NULL) {
            event_free(a->deadline);
        }
        if (a->bev != NULL) {
            bufferevent_free(a->bev);
        } else {
            evutil_closesocket(fd);
        }
        free(a);
        return;
    }
    evutil_make_socket_nonblocking(fd);
    TAILQ_INSERT_TAIL(&conns, a, link);
    nconns++;
    bufferevent_setcb(a->bev, admin_read_cb, admin_write_cb, admin_event_cb, a);
    a->state = ADMIN_READ;
    admin_set_state(a, ADMIN_READ);
    bufferevent_enable(a->bev, EV_READ | EV_WRITE);
}
