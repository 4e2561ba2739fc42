/*
 * proxy.c - client connections, requests and upstream attempts.
 *
 * A client connection:
 *
 *   READ_HEAD --head--> READ_BODY --body--> DISPATCH --head from upstream--> STREAM
 *       ^                                      |  \--own answer (error, fallback)--> WRITE
 *       |                                      |                                       |
 *       +------------- keep-alive <------------+--------- flushed <--------------------+
 *   any state --error or no keep-alive--> CLOSING --flushed--> freed
 *
 * An attempt (inside DISPATCH):
 *
 *   WAIT_SLOT --> CONNECT --> HEAD --> BODY --> done (connection pooled)
 *        \___________\__________\______\--failure--> BACKOFF --> next attempt
 *
 * client_set_state() and attempt_set_state() are the only places a state
 * changes; client_drive() is the one function that moves a connection on.
 * Transport (bufferevents, TLS) lives in upstream.c; framing in http.c.
 */
#include "proxy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include <event2/buffer.h>
#include <openssl/evp.h>

#include "accesslog.h"
#include "fallback.h"
#include "log.h"
#include "model.h"
#include "observe.h"
#include "retry.h"
#include "sockio.h"
#include "util.h"

#define STREAM_HIGH_WATER (256 * 1024) /* pause the upstream above this much unsent */

/* Scratch for building heads: loop thread only, grown once, never shrunk. */
static struct buf scratch;
/* The last traced answer's edges, kept for the next (a malloc less per request): loop thread only. */
static struct answer_edges *spare_edges;

static const char *client_state_names[] = {"read_head", "read_body", "dispatch",
                                           "stream",    "write",     "closing"};
static const char *attempt_state_names[] = {"idle", "wait_slot", "connect",
                                            "head", "body",      "backoff"};

static void client_drive(struct client *c);
static void client_free(struct client *c);
static void dispatch(struct client *c);
static void attempt_start(struct client *c);
static void attempt_failed(struct client *c, int status, const char *cause, uint64_t retry_after,
                           bool have_after, const char *reason);
static void attempt_abort(struct client *c);
static void detach_cache(struct request *r);
static void upconn_event(struct upconn *conn, enum upconn_event ev, void *arg);
static void request_done(struct client *c);
static void on_response_body(struct client *c, bool eof);
static void detach_fallback(struct client *c);

static void
client_set_state(struct client *c, enum client_state st)
{
    if (c->state != st) {
        log_debug("client %s: %s -> %s", c->addr, client_state_names[c->state],
                  client_state_names[st]);
    }
    c->state = st;
}

static void
attempt_set_state(struct client *c, enum attempt_state st)
{
    struct attempt *a = &c->req->att;

    if (a->state != st) {
        log_debug("request %s: attempt %s -> %s", c->req->id, attempt_state_names[a->state],
                  attempt_state_names[st]);
    }
    a->state = st;
}

static void
timer_arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = util_ms_to_tv(ms);

    evtimer_add(ev, &tv);
}

/* The request's own config while there is one: a reload never changes it mid-request. */
static const struct config *
cfg_of(struct client *c)
{
    return c->req != NULL ? c->req->cfg : c->srv->cfg;
}

/*
 * The idle-read limit while a body arrives; off otherwise (the head has its
 * own deadline timer). The write limit, client_timeout, is always set: it only
 * runs while output is pending. Changed only when needed: each change is an
 * event_add.
 */
static void
client_reading(struct client *c, bool on)
{
    c->reading = on;
    if (!on) {
        event_del(c->rev);
    } else if (c->body_timeout) {
        struct timeval tv = util_ms_to_tv(cfg_of(c)->proxy.client_timeout_ms);
        event_add(c->rev, &tv);
    } else {
        event_add(c->rev, NULL);
    }
}

static void
body_timeout(struct client *c, bool on)
{
    if (c->body_timeout == on) {
        return;
    }
    c->body_timeout = on;
    if (c->reading) {
        client_reading(c, true);
    }
}

/* The client caught up with a paused relay: read the upstream again. */
static bool
stream_resume(struct client *c)
{
    struct attempt *a;

    if (c->state == CLIENT_STREAM && c->req != NULL && c->req->job != NULL) {
        /* a streamed fallback answer: its next piece is computed only now */
        if (fallback_stream_drained(c->req->job) < 0) {
            c->write_failed = true;
            event_active(c->drive_ev, 0, 0);
        }
        return true;
    }
    if (c->state != CLIENT_STREAM || c->req == NULL || c->req->att.conn == NULL) {
        return false;
    }
    a = &c->req->att;
    if (a->paused) {
        a->paused = false;
        upconn_pause_read(a->conn, false);
    }
    return true;
}

/*
 * Send queued output now. What the kernel does not take waits for EV_WRITE
 * (client_write_cb); when everything went, the machine moves on from a
 * fresh callback, never from inside the caller. Unlike upstream requests
 * (upconn_flush), answers are not held to the end of the loop turn: held,
 * they measured 2 % slower, with more context switches, than sent at once.
 */
/* sockio_write, counting what the socket took against the request (access log). */
static ssize_t
client_write(struct client *c)
{
    size_t before = evbuffer_get_length(c->out);
    ssize_t left = sockio_write(c->fd, c->out);

    if (left >= 0 && c->req != NULL) {
        c->req->bytes_out += before - (size_t)left;
    }
    return left;
}

static void
client_flush(struct client *c)
{
    ssize_t left;

    if (event_pending(c->wev, EV_WRITE, NULL)) {
        return; /* blocked already: client_write_cb sends it in order */
    }
    left = client_write(c);
    if (left < 0) {
        c->write_failed = true;
        event_active(c->drive_ev, 0, 0);
    } else if (left > 0) {
        /* client_timeout bounds how long a client may leave its answer unread. */
        struct timeval tv = util_ms_to_tv(cfg_of(c)->proxy.client_timeout_ms);
        event_add(c->wev, &tv);
    } else if (!stream_resume(c)) {
        event_active(c->drive_ev, 0, 0);
    }
}

/* ---- answers the proxy writes itself ---------------------------------- */

static void
write_head(struct client *c, int status, const char *content_type, size_t len,
           const char *extra_headers, bool close)
{
    struct evbuffer *out = c->out;
    struct request *r = c->req;

    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "X-Request-Id: %s\r\n%s%s\r\n",
                        status, http_reason(status), content_type, len, r ? r->id : "-",
                        extra_headers ? extra_headers : "", close ? "Connection: close\r\n" : "");
}

void
proxy_respond(struct client *c, int status, const char *content_type, const char *body, size_t len,
              const char *extra_headers)
{
    struct request *r = c->req;
    bool close = r == NULL || !r->keep_alive || c->srv->draining;

    if (r != NULL) {
        r->status = status;
        if (r->keep_alive && close) {
            r->keep_alive = false;
        }
    }
    write_head(c, status, content_type, (r != NULL && r->is_head) ? 0 : len, extra_headers, close);
    if (r == NULL || !r->is_head) {
        evbuffer_add(c->out, body, len);
    }
    client_set_state(c, close ? CLIENT_CLOSING : CLIENT_WRITE);
    body_timeout(c, false);
    client_flush(c);
}

void
proxy_stream_begin(struct client *c, int status, const char *content_type,
                   const char *extra_headers)
{
    struct request *r = c->req;
    bool chunked = r->hd.version_minor == 1;

    r->status = status;
    if (!chunked || c->srv->draining) {
        r->keep_alive = false; /* HTTP/1.0: the end of the answer is the end of the connection */
    }
    evbuffer_add_printf(
        c->out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sX-Request-Id: %s\r\n%s%s\r\n", status,
        http_reason(status), content_type, chunked ? "Transfer-Encoding: chunked\r\n" : "", r->id,
        extra_headers ? extra_headers : "", r->keep_alive ? "" : "Connection: close\r\n");
    client_set_state(c, CLIENT_STREAM);
    body_timeout(c, false);
}

void
proxy_stream_piece(struct client *c, const char *data, size_t len, bool last)
{
    bool chunked = c->req->hd.version_minor == 1;

    if (chunked && len > 0) {
        evbuffer_add_printf(c->out, "%zx\r\n", len);
    }
    evbuffer_add(c->out, data, len);
    if (chunked && len > 0) {
        evbuffer_add(c->out, "\r\n", 2);
    }
    if (last) {
        if (chunked) {
            evbuffer_add(c->out, "0\r\n\r\n", 5);
        }
        client_set_state(c, c->req->keep_alive ? CLIENT_WRITE : CLIENT_CLOSING);
    }
    client_flush(c);
}

void
proxy_respond_error(struct client *c, int status, const char *type, const char *message,
                    const char *extra_headers)
{
    enum embed_api api = c->req ? c->req->api : EMBED_API_NONE;
    size_t len;
    char *body = embed_render_error(api, message, type, NULL, NULL, &len);

    if (c->req != NULL && c->req->reason == NULL) {
        c->req->reason = type; /* a more precise cause, when known, was set already */
    }

    proxy_respond(c, status, "application/json", body, len, extra_headers);
    free(body);
}

/* An error before a request exists (bad head): answer and close. */
static void
respond_early_error(struct client *c, int status, const char *message)
{
    const char *type = status == 413   ? "request_too_large"
                       : status == 431 ? "request_header_fields_too_large"
                       : status == 405 ? "method_not_allowed"
                       : status == 408 ? "request_timeout"
                                       : "invalid_request_error";
    if (c->req != NULL) {
        c->req->keep_alive = false;
    }
    log_info("client %s: %d %s", c->addr, status, message);
    proxy_respond_error(c, status, type, message, NULL);
    client_set_state(c, CLIENT_CLOSING);
}

/* ---- request lifecycle ------------------------------------------------- */

static void
gen_request_id(struct server *srv, char *out)
{
    static const char hex[] = "0123456789abcdef";

    for (int half = 0; half < 2; half++) {
        uint64_t v = retry_rand(&srv->rng);
        for (int i = 15; i >= 0; i--, v >>= 4) {
            out[half * 16 + i] = hex[v & 15];
        }
    }
    out[32] = '\0';
}

static bool
valid_request_id(const char *v, size_t len)
{
    if (len == 0 || len > 64) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (!isalnum((unsigned char)v[i]) && strchr("-_.:", v[i]) == NULL) {
            return false;
        }
    }
    return true;
}

/* The model key learned sizes go by: the canonical name, else the name as sent. */
static const char *
request_model_key(const struct request *r)
{
    return r->model != NULL ? r->model : r->model_sent;
}

/* What observe reports of r's answer, into *a. */
static const struct observe_answer *
answer_of(const struct request *r, struct observe_answer *a)
{
    *a = (struct observe_answer){
        .route = r->route,
        .status = r->status,
        .mode = r->mode,
        .model = r->model,
        .model_sent = r->model_sent,
        .response_model = r->response_model,
        .start_us = r->start_us,
        .end_us = r->end_us != 0 ? r->end_us : util_mono_us(),
        .sniffed_dim = r->sniffed_dim,
        .cache = cacheflow_use_name(r->cache),
        .cache_hits = r->cache_hits,
        .cache_misses = r->cache_misses,
    };
    a->sampled = observe_sampled(&r->obs) && observe_trace_id(&r->obs, a->trace_id);
    return a;
}

/* The request is over (answered, or its client left): its access log line. */
static void
access_line(struct client *c)
{
    const struct request *r = c->req;
    struct accesslog *log = c->srv->alog;
    char trace_id[TRACE_ID_SIZE * 2 + 1];
    uint8_t tid[TRACE_ID_SIZE];
    bool has_tid;
    struct accesslog_entry e;

    if (!accesslog_enabled(log)) {
        return;
    }
    has_tid = observe_trace_id(&r->obs, tid);
    if (!has_tid && r->hd.path != NULL) {
        /* Not tracing: the caller's trace id still ties the line to its trace. */
        const struct http_header *h =
            http_find_header(r->hd.headers, r->hd.nheaders, "traceparent");
        struct trace_context parent;
        if (h != NULL && trace_parse_traceparent(h->value, h->value_len, &parent)) {
            memcpy(tid, parent.trace_id, TRACE_ID_SIZE);
            has_tid = true;
        }
    }
    if (has_tid) {
        trace_hex(tid, TRACE_ID_SIZE, trace_id);
    }
    e = (struct accesslog_entry){
        .time_ms = util_wall_ms(),
        .request_id = r->id,
        .trace_id = has_tid ? trace_id : NULL,
        .client = c->addr,
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
        .mode = r->mode != EMBED_MODE_NONE ? embed_mode_name(r->mode) : NULL,
        .reason = r->reason,
        /* the cache's result where there is a cache */
        .cache = r->cache != CACHEFLOW_OFF ? cacheflow_use_name(r->cache) : NULL,
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
    if (r->mode == EMBED_MODE_LOCAL || r->mode == EMBED_MODE_FALLBACK) {
        e.upstream = "local";
    } else if (r->mode == EMBED_MODE_REAL && r->cache == CACHEFLOW_HIT) {
        e.upstream = "cache"; /* as X-Akosha-Upstream says */
    } else if (r->ntried > 0) {
        e.upstream = r->tried[r->ntried - 1]->name;
    }
    accesslog_write(log, &e);
}

static void
request_free(struct client *c)
{
    struct request *r = c->req;

    if (r == NULL) {
        return;
    }
    attempt_abort(c);
    if (r->att.timer != NULL) {
        /* kept for the connection's next request: an event_new and free less each */
        evtimer_del(r->att.timer);
        if (c->spare_timer == NULL) {
            c->spare_timer = r->att.timer;
        } else {
            event_free(r->att.timer);
        }
    }
    detach_fallback(c);
    detach_cache(r);
    if (observe_sampled(&r->obs)) {
        struct observe_answer ans;
        observe_server_span_end(&r->obs, answer_of(r, &ans));
    }
    if (r->body != NULL) {
        if (c->spare_body == NULL) {
            evbuffer_drain(r->body, evbuffer_get_length(r->body));
            c->spare_body = r->body;
        } else {
            evbuffer_free(r->body);
        }
    }
    free(r->head);
    upstream_set_unref(r->ups);
    config_unref(r->cfg);
    r->ups = NULL;
    r->cfg = NULL;
    if (c->spare == NULL) {
        c->spare = r;
    } else {
        free(r);
    }
    c->req = NULL;
    c->srv->in_flight--;
    observe_in_flight(-1);
}

/* The answer is fully handed to the socket: account, then next request or close. */
static void
request_done(struct client *c)
{
    struct request *r = c->req;
    bool keep = r->keep_alive && !c->srv->draining && c->state != CLIENT_CLOSING;
    struct observe_answer ans;

    r->end_us = util_mono_us(); /* one reading for the metrics and the span */
    observe_request_done(answer_of(r, &ans), request_model_key(r));
    access_line(c);
    log_debug("request %s: %.*s %.*s -> %d (%s) in %" PRIu64 "us", r->id, (int)r->hd.method_len,
              r->hd.method_str, (int)r->hd.target_len, r->hd.target, r->status,
              r->mode != EMBED_MODE_NONE ? embed_mode_name(r->mode) : "proxy",
              util_mono_us() - r->start_us);
    request_free(c);
    c->served++;
    if (!keep) {
        client_set_state(c, CLIENT_CLOSING);
        client_drive(c);
        return;
    }
    client_set_state(c, CLIENT_READ_HEAD);
    c->head_scan = 0;
    c->head_started = false;
    evtimer_del(c->timer);
    timer_arm(c->timer, cfg_of(c)->proxy.client_timeout_ms);
    if (!c->reading) {
        client_reading(c, true);
    }
    client_drive(c);
}

/* ---- reading the request ---------------------------------------------- */

/*
 * Find the end of the head; 1 found (*head_len), 0 need more, <0 error status.
 * Jumps from line feed to line feed; a bare LF is refused as soon as it
 * arrives, everything else about the head is the parser's to judge.
 */
static int
find_head(struct client *c, size_t *head_len, const char **cause)
{
    struct evbuffer *in = c->in;
    size_t len = evbuffer_get_length(in);
    size_t max = cfg_of(c)->proxy.max_header_size;
    size_t scan = len < max ? len : max;
    const unsigned char *p;
    size_t i = c->head_scan;

    if (len == 0) {
        return 0;
    }
    p = evbuffer_pullup(in, (ssize_t)scan);
    while (i < scan) {
        const unsigned char *nl = memchr(p + i, '\n', scan - i);
        size_t at;
        if (nl == NULL) {
            break;
        }
        at = (size_t)(nl - p);
        if (at == 0 || p[at - 1] != '\r') {
            *cause = "bare LF in request head";
            return -400;
        }
        if (at >= 3 && p[at - 2] == '\n' && p[at - 3] == '\r') {
            *head_len = at + 1;
            return 1;
        }
        i = at + 1;
    }
    /* Resume at the last line start: a CRLF may straddle reads. */
    c->head_scan = scan > 3 ? scan - 3 : 0;
    if (len >= max) {
        *cause = "request head larger than max_header_size";
        return -431;
    }
    return 0;
}

static bool
header_token_has(const struct http_header *h, const char *token)
{
    size_t tl = strlen(token);
    const char *v = h->value, *end = h->value + h->value_len;

    while (v < end) {
        const char *comma = memchr(v, ',', (size_t)(end - v));
        const char *e = comma ? comma : end;
        while (v < e && (*v == ' ' || *v == '\t')) {
            v++;
        }
        const char *te = e;
        while (te > v && (te[-1] == ' ' || te[-1] == '\t')) {
            te--;
        }
        if ((size_t)(te - v) == tl && strncasecmp(v, token, tl) == 0) {
            return true;
        }
        v = comma ? comma + 1 : end;
    }
    return false;
}

static void
start_request(struct client *c, size_t head_len)
{
    struct server *srv = c->srv;
    const struct config *cfg = srv->cfg;
    struct request *r = c->spare;
    struct evbuffer *in = c->in;
    const struct http_header *h;
    const char *cause = "malformed request";
    int rc;

    /* One request allocation per connection, reused; the parser fills hd. */
    if (r == NULL) {
        r = xmalloc(sizeof(*r));
    }
    c->spare = NULL;
    memset(r, 0, offsetof(struct request, hd));
    memset(&r->hd, 0, offsetof(struct http_request_head, headers));
    r->hd.nheaders = 0;
    r->hd.content_length = -1;
    r->cfg = srv->cfg;
    config_ref(r->cfg);
    r->ups = upstream_set_ref(srv->ups);
    c->req = r;
    srv->in_flight++;
    observe_in_flight(1);
    r->start_us = util_mono_us();
    r->head = xmalloc(head_len + 1);
    evbuffer_remove(in, r->head, head_len);
    r->head[head_len] = '\0';
    r->bytes_in = head_len;
    r->route = "other";
    r->api = EMBED_API_NONE;
    r->fail_status = 502;
    gen_request_id(srv, r->id);

    rc = http_parse_request_head(r->head, head_len, &r->hd, &cause);
    if (rc <= 0) {
        int status = rc == 0 ? 400 : -rc;
        respond_early_error(c, status, cause != NULL ? cause : "incomplete request head");
        return;
    }
    r->keep_alive = r->hd.keep_alive && !c->read_eof;
    r->is_head = r->hd.method == HTTP_HEAD;
    h = http_find_header(r->hd.headers, r->hd.nheaders, "X-Request-Id");
    if (h != NULL && valid_request_id(h->value, h->value_len)) {
        memcpy(r->id, h->value, h->value_len);
        r->id[h->value_len] = '\0';
    }
    h = http_find_header(r->hd.headers, r->hd.nheaders, "X-Akosha-Fallback");
    if (h != NULL && h->value_len == 4 && strncasecmp(h->value, "deny", 4) == 0) {
        r->deny_fallback = true;
    }
    if (r->hd.method == HTTP_POST) {
        r->api = embed_api_route(r->hd.path, r->hd.path_len);
    }
    r->route = embed_api_route_label(r->api, r->hd.path, r->hd.path_len);
    observe_request_start(&r->obs, &r->hd, r->id, r->start_us);

    if (r->hd.content_length > 0 && (uint64_t)r->hd.content_length > cfg->proxy.max_body_size) {
        respond_early_error(c, 413, "request body larger than max_body_size");
        return;
    }
    r->body = c->spare_body != NULL ? c->spare_body : evbuffer_new();
    c->spare_body = NULL;
    if (r->hd.chunked) {
        http_chunked_init(&r->chunk);
    }
    if (r->hd.expect_continue && r->hd.version_minor == 1 &&
        (r->hd.chunked || r->hd.content_length > 0)) {
        h = http_find_header(r->hd.headers, r->hd.nheaders, "Expect");
        if (h != NULL && !header_token_has(h, "100-continue")) {
            respond_early_error(c, 417, "unsupported Expect");
            return;
        }
        evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        client_flush(c);
    }
    /* The whole request, body included, must finish by request_timeout. */
    r->deadline_ms = util_mono_ms() + cfg->proxy.request_timeout_ms;
    evtimer_del(c->timer);
    timer_arm(c->timer, cfg->proxy.request_timeout_ms);
    client_set_state(c, CLIENT_READ_BODY);
}

/* Move body bytes from the socket into the request; 1 complete, 0 more, -1 answered. */
static int
read_body(struct client *c)
{
    struct request *r = c->req;
    struct evbuffer *in = c->in;
    uint64_t max = cfg_of(c)->proxy.max_body_size;

    if (!r->hd.chunked) {
        size_t want = r->hd.content_length > 0 ? (size_t)r->hd.content_length : 0;
        size_t have = evbuffer_get_length(r->body);
        if (have < want) {
            evbuffer_remove_buffer(in, r->body, want - have);
        }
        return evbuffer_get_length(r->body) == want ? 1 : 0;
    }
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        size_t consumed = 0, payload = 0;
        int rc;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) {
            break;
        }
        rc = http_chunked_step(&r->chunk, v.iov_base, v.iov_len, &consumed, &payload);
        if (rc < 0) {
            respond_early_error(c, 400, "invalid chunked request body");
            return -1;
        }
        if (payload > 0) {
            if (evbuffer_get_length(r->body) + payload > max) {
                respond_early_error(c, 413, "request body larger than max_body_size");
                return -1;
            }
            evbuffer_remove_buffer(in, r->body, payload);
        } else {
            evbuffer_drain(in, consumed);
        }
        if (rc == 1) {
            return 1;
        }
        if (consumed == 0) {
            break;
        }
    }
    return 0;
}

/* ---- the connection machine ------------------------------------------- */

/* RFC 9112 2.2: empty lines before a request line are ignored, however many. */
static void
skip_empty_lines(struct client *c)
{
    size_t len = evbuffer_get_length(c->in);

    while (len >= 2) {
        const unsigned char *p = evbuffer_pullup(c->in, 2);
        if (p[0] != '\r' || p[1] != '\n') {
            return;
        }
        evbuffer_drain(c->in, 2);
        len -= 2;
        c->head_scan = 0;
    }
}

static void
client_drive(struct client *c)
{
    for (;;) {
        switch (c->state) {
        case CLIENT_READ_HEAD: {
            size_t head_len = 0;
            const char *cause = NULL;
            int rc;
            if (c->srv->draining && evbuffer_get_length(c->in) == 0) {
                client_set_state(c, CLIENT_CLOSING);
                continue;
            }
            skip_empty_lines(c);
            rc = find_head(c, &head_len, &cause);
            if (rc == 0) {
                if (evbuffer_get_length(c->in) > 0) {
                    c->head_started = true;
                }
                return;
            }
            if (rc < 0) {
                respond_early_error(c, -rc, cause);
                continue;
            }
            start_request(c, head_len);
            continue;
        }
        case CLIENT_READ_BODY: {
            int rc = read_body(c);
            if (rc == 0) {
                body_timeout(c, true); /* a body still coming: each read within client_timeout */
                return;
            }
            if (rc < 0) {
                continue;
            }
            /* Pipelined bytes wait in the input until this request is answered. */
            body_timeout(c, false);
            client_set_state(c, CLIENT_DISPATCH);
            dispatch(c);
            return;
        }
        case CLIENT_DISPATCH:
        case CLIENT_STREAM:
            return;
        case CLIENT_WRITE:
            if (evbuffer_get_length(c->out) > 0) {
                return;
            }
            request_done(c);
            return;
        case CLIENT_CLOSING:
            if (evbuffer_get_length(c->out) > 0) {
                if (c->reading) {
                    client_reading(c, false);
                }
                return;
            }
            client_free(c);
            return;
        }
    }
}

static void
client_gone(struct client *c, const char *why)
{
    if (c->req != NULL) {
        c->req->reason = "client_gone";
        log_info("request %s: client %s %s in state %s", c->req->id, c->addr, why,
                 client_state_names[c->state]);
    }
    client_free(c);
}

/* Readable (or the body's idle limit passed): one direct read, then drive. */
static void
client_sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    struct evbuffer *in = c->in;
    ssize_t n;

    if (what & EV_TIMEOUT) {
        if (c->state == CLIENT_READ_BODY) {
            respond_early_error(c, 408, "request body not received within client_timeout");
            client_drive(c);
        }
        return;
    }
    n = sockio_read(fd, in, SOCKIO_READ_MAX);
    if (n == -2) {
        return;
    }
    if (n == 0) {
        /*
         * A read EOF after a whole request means no more requests, not that
         * nobody listens: answer the request under way, then close. Only a
         * write error says the client is gone.
         */
        bool whole = c->state == CLIENT_DISPATCH || c->state == CLIENT_STREAM ||
                     c->state == CLIENT_WRITE ||
                     (c->state == CLIENT_READ_HEAD && evbuffer_get_length(in) > 0);
        if (!whole) {
            client_gone(c, "closed the connection");
            return;
        }
        c->read_eof = true;
        client_reading(c, false);
        if (c->req != NULL) {
            c->req->keep_alive = false;
        }
        client_drive(c);
        return;
    }
    if (n < 0) {
        client_gone(c, "connection failed");
        return;
    }
    /* Bound what a client can queue ahead of us (pipelining). */
    if (evbuffer_get_length(in) > cfg_of(c)->proxy.max_header_size + SOCKIO_READ_MAX &&
        c->state != CLIENT_READ_BODY) {
        client_reading(c, false);
    }
    client_drive(c);
}

/* Writable again after the kernel pushed back (or the client stopped reading). */
static void
client_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    ssize_t left;

    if (what & EV_TIMEOUT) {
        client_gone(c, "stopped reading its answer");
        return;
    }
    (void)fd;
    left = client_write(c);
    if (left < 0) {
        client_gone(c, "could not be written to");
        return;
    }
    if (left > 0) {
        return; /* still blocked: the persistent event fires again */
    }
    event_del(c->wev);
    if (stream_resume(c)) {
        return;
    }
    client_drive(c);
}

static void
client_drive_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;

    (void)fd;
    (void)what;
    if (c->write_failed) {
        client_gone(c, "could not be written to");
        return;
    }
    client_drive(c);
}

static void
client_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;

    (void)fd;
    (void)what;
    switch (c->state) {
    case CLIENT_READ_HEAD:
        if (c->head_started) {
            respond_early_error(c, 408, "request head not received within client_timeout");
            client_drive(c);
        } else {
            client_free(c); /* idle keep-alive: close quietly */
        }
        return;
    case CLIENT_READ_BODY:
    case CLIENT_DISPATCH:
        c->req->reason = "request_timeout";
        log_warn("request %s: request_timeout reached in %s", c->req->id,
                 client_state_names[c->state]);
        attempt_abort(c);
        detach_fallback(c);
        detach_cache(c->req);
        c->req->keep_alive = c->state == CLIENT_DISPATCH && c->req->keep_alive;
        proxy_respond_error(c, 504, "timeout", "request_timeout reached", NULL);
        client_drive(c);
        return;
    case CLIENT_STREAM:
        /* The status line is out; the only honest signal left is a cut. */
        c->req->reason = "request_timeout";
        log_warn("request %s: request_timeout reached while streaming; closing", c->req->id);
        client_free(c);
        return;
    case CLIENT_WRITE:
    case CLIENT_CLOSING:
        client_free(c);
        return;
    }
}

static void
client_free(struct client *c)
{
    struct server *srv = c->srv;

    if (c->req != NULL && c->req->status != 0) {
        struct observe_answer ans;
        /* answered, then closed: still counted once */
        c->req->end_us = util_mono_us();
        observe_request_done(answer_of(c->req, &ans), request_model_key(c->req));
    }
    if (c->req != NULL) {
        access_line(c); /* answered and closed, or the client left */
    }
    request_free(c);
    free(c->spare);
    if (c->spare_body != NULL) {
        evbuffer_free(c->spare_body);
    }
    if (c->spare_timer != NULL) {
        event_free(c->spare_timer);
    }
    if (c->timer != NULL) {
        event_free(c->timer);
    }
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->drive_ev);
    evbuffer_free(c->in);
    evbuffer_free(c->out);
    evutil_closesocket(c->fd);
    TAILQ_REMOVE(&srv->clients, c, link);
    srv->nclients--;
    free(c);
    srv->client_gone(srv);
}

static void
format_peer(struct sockaddr *sa, char *out, size_t len)
{
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)len);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)len);
    } else {
        snprintf(out, len, "unix");
    }
}

void
proxy_accept(struct server *srv, evutil_socket_t fd, struct sockaddr *sa, int salen)
{
    struct client *c;

    (void)salen;
    if ((int64_t)srv->nclients >= srv->cfg->proxy.max_connections || srv->draining) {
        /* Over the limit: a short answer and close, never an unbounded queue. */
        static const char busy[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Content-Length: 102\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
            "{\"error\":{\"message\":\"too many connections\",\"type\":\"overloaded\","
            "\"param\":null,\"code\":\"max_connections\"}}";
        ssize_t n = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        evutil_closesocket(fd);
        observe_connection_refused();
        return;
    }
    c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    format_peer(sa, c->addr, sizeof(c->addr));
    evutil_make_socket_nonblocking(fd);
    if (sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    c->fd = fd;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->timer = evtimer_new(srv->base, client_timer_cb, c);
    c->rev = event_new(srv->base, fd, EV_READ | EV_PERSIST, client_sock_cb, c);
    c->wev = event_new(srv->base, fd, EV_WRITE | EV_PERSIST, client_write_cb, c);
    c->drive_ev = event_new(srv->base, -1, 0, client_drive_cb, c);
    if (c->in == NULL || c->out == NULL || c->timer == NULL || c->rev == NULL || c->wev == NULL ||
        c->drive_ev == NULL) {
        fatal("out of memory accepting a connection");
    }
    TAILQ_INSERT_TAIL(&srv->clients, c, link);
    srv->nclients++;
    client_reading(c, true);
    client_set_state(c, CLIENT_READ_HEAD);
    timer_arm(c->timer, srv->cfg->proxy.client_timeout_ms);
}

void
proxy_close_idle(struct server *srv)
{
    struct client *c, *next;

    for (c = TAILQ_FIRST(&srv->clients); c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state == CLIENT_READ_HEAD && !c->head_started && evbuffer_get_length(c->in) == 0) {
            client_free(c);
        }
    }
}

void
proxy_close_all(struct server *srv)
{
    while (!TAILQ_EMPTY(&srv->clients)) {
        struct client *c = TAILQ_FIRST(&srv->clients);
        if (c->req != NULL) {
            c->req->reason = "closed_at_shutdown";
        }
        client_free(c);
    }
}

void
proxy_shutdown(void)
{
    buf_free(&scratch);
    free(spare_edges);
    spare_edges = NULL;
}

/* ---- dispatch: upstream, fallback or an error -------------------------- */

/* ---- the fallback job service's sink ------------------------------------ */

static void
fallback_answer(void *arg, int status, const char *body, size_t len, const char *headers)
{
    struct client *c = arg;

    proxy_respond(c, status, "application/json", body, len, headers);
    /* queued; the write callback finishes the request */
}

static void
fallback_stream_begin(void *arg, enum embed_mode mode, const char *headers)
{
    struct client *c = arg;

    c->req->mode = mode;
    proxy_stream_begin(c, 200, "application/json", headers);
}

static void
fallback_stream_piece(void *arg, const char *data, size_t len, bool last)
{
    proxy_stream_piece(arg, data, len, last);
}

static void
fallback_finished(void *arg, const struct fallback_outcome *o)
{
    struct client *c = arg;

    struct request *r = c->req;

    r->job = NULL;
    if (o->shed != NULL) {
        r->reason = o->shed;
    }
    if (o->status == 200 && o->er != NULL) {
        r->mode = o->mode;
        snprintf(r->response_model, sizeof(r->response_model), "%s", o->model_name);
    }
    observe_fallback_done(&r->obs, r->id, o);
}

static const struct fallback_sink fallback_to_client = {
    .answer = fallback_answer,
    .stream_begin = fallback_stream_begin,
    .stream_piece = fallback_stream_piece,
    .finished = fallback_finished,
};

/*
 * The cache's headers for an answer the job service renders: what it held
 * of the request (hits of inputs) into out.
 */
static const char *
cache_headers(const struct request *r, size_t hits, char *out, size_t len)
{
    const struct cacheflow *cf = r->cf;

    if (r->cache == CACHEFLOW_NONE) {
        out[0] = '\0';
    } else if (cf == NULL || !cf->usable || r->cache == CACHEFLOW_BYPASS || hits == 0) {
        snprintf(out, len, "X-Akosha-Cache: %s\r\n",
                 cacheflow_use_name(r->cache == CACHEFLOW_PARTIAL ? CACHEFLOW_MISS : r->cache));
    } else if (hits == cf->n) {
        snprintf(out, len, "X-Akosha-Cache: hit\r\n");
    } else {
        snprintf(out, len, "X-Akosha-Cache: partial\r\nX-Akosha-Cache-Hits: %zu/%zu\r\n", hits,
                 cf->n);
    }
    return out;
}

/* The caller's body, as it came, back in r->body (a partial request asked upstream for less). */
static void
restore_body(struct request *r)
{
    if (r->cf != NULL) {
        evbuffer_drain(r->body, evbuffer_get_length(r->body));
        evbuffer_add(r->body, r->cf->body, r->cf->body_len);
    }
}

/*
 * Hand the request to the job service. reason: akosha_fallback_total's
 * label, or NULL for an answer of real vectors only (the cache's, merged
 * with an upstream's: from_upstream names it, NULL for the cache alone).
 * outage: no upstream answered, so cached entries up to stale_if_error serve.
 */
static void
submit_answer_job(struct client *c, const char *reason, const char *from_upstream, bool outage)
{
    struct request *r = c->req;
    char extra[128];
    size_t hits = 0;
    float **known = NULL;
    struct fallback_request fr = {
        .cfg = r->cfg,
        .api = r->api,
        .body = r->body,
        .model = r->model,
        .model_key = request_model_key(r),
        .deadline_ms = r->deadline_ms,
        .upstream_name = from_upstream,
    };

    if (r->cf != NULL && r->cf->usable) {
        /* In an outage, entries up to stale_if_error old are served too. */
        known = cacheflow_take(r->cf, outage, &hits);
        fr.known = known;
        fr.nknown = r->cf->n;
        fr.known_dim = r->cf->dim;
        fr.known_usage = from_upstream != NULL ? r->cf->usage : 0;
        restore_body(r);
    }
    if (r->cache == CACHEFLOW_PARTIAL && from_upstream != NULL) {
        hits = r->cf->fresh; /* the rest came from the upstream, not the cache */
    }
    fr.extra_headers = cache_headers(r, hits, extra, sizeof(extra));
    r->reason = reason;
    r->job = fallback_submit(c->srv->workers, &fr, &fallback_to_client, c);
    if (r->job == NULL) {
        /* Refused: the vectors are still ours. */
        for (size_t i = 0; known != NULL && i < fr.nknown; i++) {
            free(known[i]);
        }
        free(known);
    }
    if (r->job == NULL && reason == NULL) {
        r->reason = "queue_full";
        log_warn("request %s: worker queue full; answering 503", r->id);
        proxy_respond_error(c, 503, "overloaded", "the worker queue is full; retry shortly",
                            "Retry-After: 1\r\n");
        client_drive(c);
        return;
    }
    if (r->job == NULL) {
        char hb[FALLBACK_HEADERS_MAX];
        size_t len;
        char *body = embed_render_error(r->api, "fallback queue is full; retry shortly",
                                        "overloaded", NULL, "queue_full", &len);
        r->reason = "queue_full";
        log_warn("request %s: fallback queue full (%lld); answering 503", r->id,
                 (long long)r->cfg->fallback.queue_size);
        observe_fallback(&r->obs, "queue_full", r->model);
        proxy_respond(c, 503, "application/json", body, len,
                      fallback_answer_headers(EMBED_MODE_FALLBACK, NULL, r->model, true, hb));
        free(body);
        return;
    }
    if (reason == NULL) {
        log_debug("request %s: answered with real vectors (%s)", r->id,
                  from_upstream != NULL ? from_upstream : "cache");
        return;
    }
    observe_fallback(&r->obs, reason, r->model);
    log_debug("request %s: answered by the fallback worker (%s)", r->id, reason);
}

static void
answer_from_fallback(struct client *c, const char *reason)
{
    submit_answer_job(c, reason, NULL, true);
}

/* The caller is gone: no answer, and the job is dropped (counted as cancelled). */
static void
detach_fallback(struct client *c)
{
    if (c->req != NULL && c->req->job != NULL) {
        fallback_detach(c->req->job);
        c->req->job = NULL;
        observe_fallback_shed("cancelled");
    }
}

static bool
fallback_applies(struct client *c)
{
    struct request *r = c->req;

    return r->api != EMBED_API_NONE && !r->deny_fallback &&
           cfg_of(c)->fallback.mode != FALLBACK_OFF;
}

/*
 * Time kept back from the upstreams for the fallback's own work, so that its
 * answer leaves before request_timeout: 5 %, at least 50 ms, at most half.
 */
static uint64_t
fallback_reserve_ms(uint64_t request_timeout_ms)
{
    uint64_t reserve = MAX(request_timeout_ms / 20, (uint64_t)50);

    return MIN(reserve, request_timeout_ms / 2);
}

static void
answer_unavailable(struct client *c, const char *why)
{
    struct request *r = c->req;
    uint64_t now = util_mono_ms();
    uint64_t next = upstream_next_trial_ms(r->ups, now);
    uint64_t secs = next != UINT64_MAX && next > now ? (next - now + 999) / 1000 : 1;
    char extra[64];

    snprintf(extra, sizeof(extra), "Retry-After: %" PRIu64 "\r\n", secs);
    proxy_respond_error(c, 503, "service_unavailable", why, extra);
    client_drive(c);
}

/*
 * No upstream will answer. The fallback worker if it may serve; else, on an
 * embedding route, 503 with Retry-After whatever the last attempt returned
 * (the caller refused local vectors, or they are off); else the attempt's
 * own error. A request whose deadline passed gets 504 when no fallback may
 * serve it.
 */
static void
give_up(struct client *c, const char *fallback_reason, int status, const char *message)
{
    struct request *r = c->req;
    bool deadline = strcmp(fallback_reason, "deadline") == 0;

    r->reason = fallback_reason;

    if (r->cf != NULL && cacheflow_complete(r->cf, true)) {
        /* Every input is cached (within stale_if_error): real vectors through the outage. */
        log_info("request %s: %s; answered from the cache", r->id, message);
        submit_answer_job(c, NULL, NULL, true);
        return;
    }
    if (fallback_applies(c)) {
        answer_from_fallback(c, fallback_reason);
        return;
    }
    if (deadline) {
        proxy_respond_error(c, 504, "timeout", "request_timeout reached", NULL);
        client_drive(c);
        return;
    }
    if (r->api != EMBED_API_NONE) {
        if (r->deny_fallback && cfg_of(c)->fallback.mode != FALLBACK_OFF) {
            log_info("request %s: %s; X-Akosha-Fallback: deny refuses fallback vectors", r->id,
                     message);
            message = "no upstream could answer and X-Akosha-Fallback: deny refuses fallback "
                      "vectors";
        } else if (status != 503) {
            log_info("request %s: %s; [fallback] mode = off", r->id, message);
            message = "no upstream could answer and the fallback is off";
        }
        status = 503;
    }
    if (status == 503) {
        answer_unavailable(c, message);
        return;
    }
    proxy_respond_error(c, status, status == 504 ? "timeout" : "upstream_error", message, NULL);
    client_drive(c);
}

/*
 * Read the body's model (one pass, no JSON tree) and resolve it: the
 * canonical name, the upstreams it allows, the input sizes for metrics.
 * False when the request was answered (a model the config does not serve).
 */
static bool
resolve_model(struct client *c)
{
    static struct embed_scan scan; /* loop thread only; 8 KB kept off the stack */
    struct request *r = c->req;
    const struct config *cfg = cfg_of(c);
    size_t n = evbuffer_get_length(r->body);
    const char *body = n > 0 ? (const char *)evbuffer_pullup(r->body, -1) : "";
    const char *name;

    if (embed_request_scan(r->api, body, n, &scan) == 0) {
        r->scanned = true;
        _Static_assert(sizeof(r->model_sent) == sizeof(scan.model), "the model is copied whole");
        memcpy(r->model_sent, scan.model, sizeof(r->model_sent));
        r->model_at = scan.model_at;
        r->model_len = scan.model_len;
        r->sized = scan.sized;
        r->ninputs = (uint32_t)scan.ninputs;
        observe_request_scan(&r->obs, &scan);
    }
    name = r->model_sent[0] != '\0' ? r->model_sent : cfg->proxy.default_model;
    r->model = model_canonical(cfg, name);
    r->want.by_model = true;
    r->want.model = r->model;
    /* With no upstream at all akosha is the embedding server: every model is served. */
    if (r->model == NULL && name != NULL && cfg->nupstreams > 0 && model_names_configured(cfg) &&
        !model_open_upstream(cfg)) {
        char msg[200];
        size_t len;
        char *err;
        snprintf(msg, sizeof(msg), "The model '%s' is not served here", name);
        err = embed_render_error(r->api, msg, "invalid_request_error", "model", "model_not_found",
                                 &len);
        log_info("request %s: model '%s' is not configured: 404", r->id, name);
        r->reason = "model_not_found";
        proxy_respond(c, 404, "application/json", err, len, NULL);
        free(err);
        client_drive(c);
        return false;
    }
    return true;
}

/* Whether any upstream of the request's set may serve it at all. */
static bool
any_upstream_serves(struct request *r)
{
    for (size_t i = 0; i < r->ups->n; i++) {
        if (upstream_serves(r->ups->ups[i], &r->want)) {
            return true;
        }
    }
    return false;
}

/*
 * GET /v1/models (and /models) or /api/tags, when the config names models:
 * answered from the config, so that clients listing models see what akosha
 * routes. Without named models these pass through to the upstreams.
 */
static bool
answer_model_list(struct client *c)
{
    struct request *r = c->req;
    const struct config *cfg = cfg_of(c);
    enum model_list_shape shape;
    struct buf b;

#define PATH_IS(lit) (r->hd.path_len == sizeof(lit) - 1 && memcmp(r->hd.path, lit, r->hd.path_len) == 0)
    if ((r->hd.method != HTTP_GET && r->hd.method != HTTP_HEAD) || !model_names_configured(cfg)) {
        return false;
    }
    if (PATH_IS("/v1/models") || PATH_IS("/models")) {
        shape = MODEL_LIST_OPENAI;
    } else if (PATH_IS("/api/tags")) {
        shape = MODEL_LIST_OLLAMA;
    } else {
        return false;
    }
#undef PATH_IS
    buf_init(&b);
    model_list_json(cfg, shape, c->srv->started_wall_ms / 1000, &b);
    proxy_respond(c, 200, "application/json", b.data, b.len, "X-Akosha-Upstream: local\r\n");
    buf_free(&b);
    client_drive(c);
    return true;
}

static void dispatch_on(struct client *c);

/* ---- the cache ------------------------------------------------------------- */

static void
detach_cache(struct request *r)
{
    cacheflow_detach(r->cf);
    r->cf = NULL;
    if (r->answer != NULL) {
        evbuffer_free(r->answer);
        r->answer = NULL;
    }
}

/* The lookup is over: answer from the cache, or go upstream for what it lacks. */
static void
cache_looked_up(struct cacheflow *cf, void *arg)
{
    static struct embed_scan scan; /* loop thread only */
    struct client *c = arg;
    struct request *r = c->req;

    if (cf->usable && !cf->planned) {
        /* The memory's misses may be in Redis; then which inputs go upstream is settled. */
        int rc;
        if (cacheflow_ask_redis(cf, cache_looked_up) == 0) {
            return;
        }
        rc = cacheflow_plan(cf, cache_looked_up);
        if (rc == 0) {
            return;
        }
        cf->usable = rc > 0;
    }
    if (!cf->usable) {
        r->cache = CACHEFLOW_BYPASS;
        detach_cache(r);
        dispatch_on(c);
        return;
    }
    r->cache_hits = (uint32_t)cf->fresh;
    r->cache_misses = (uint32_t)cf->nmiss;
    if (!cf->p.lookup) {
        r->cache = CACHEFLOW_BYPASS; /* no-cache: not looked up, the answer is stored */
    } else if (cf->fresh == cf->n) {
        r->cache = CACHEFLOW_HIT;
        submit_answer_job(c, NULL, NULL, false);
        return;
    } else {
        r->cache = cf->fresh > 0 ? CACHEFLOW_PARTIAL : CACHEFLOW_MISS;
    }
    if (r->cache == CACHEFLOW_PARTIAL) {
        /* Ask for the misses alone; the model's place is found again for the rewrite. */
        evbuffer_drain(r->body, evbuffer_get_length(r->body));
        evbuffer_add(r->body, cf->miss_body.data, cf->miss_body.len);
        r->model_at = r->model_len = 0;
        if (embed_request_scan(r->api, cf->miss_body.data, cf->miss_body.len, &scan) == 0) {
            r->model_at = scan.model_at;
            r->model_len = scan.model_len;
        }
    }
    dispatch_on(c);
}

/* SHA-256 of the caller's Authorization (empty when none), for per_caller keys. */
static void
caller_hash(const struct request *r, unsigned char out[CACHE_KEY_LEN])
{
    const struct http_header *h = http_find_header(r->hd.headers, r->hd.nheaders, "Authorization");
    unsigned int n = 0;

    if (EVP_Digest(h != NULL ? h->value : "", h != NULL ? h->value_len : 0, out, &n, EVP_sha256(),
                   NULL) != 1) {
        fatal("cache: SHA-256 failed");
    }
}

/* A small request whose inputs are all in memory: answered here, without the worker pool. */
static bool
answer_inline(struct client *c, const struct cacheflow_params *p)
{
    struct request *r = c->req;
    struct embed_request er;
    struct buf out;
    char hdr[FALLBACK_HEADERS_MAX + 32];

    buf_init(&out);
    if (cacheflow_answer_inline(p, (const char *)evbuffer_pullup(r->body, -1),
                                evbuffer_get_length(r->body), &er, &out) != 1) {
        buf_free(&out);
        return false;
    }
    r->cache = CACHEFLOW_HIT;
    r->mode = EMBED_MODE_REAL;
    r->cache_hits = (uint32_t)er.ninputs;
    fallback_answer_headers(EMBED_MODE_REAL, "cache", r->model, false, hdr);
    strcat(hdr, "X-Akosha-Cache: hit\r\n");
    observe_embeddings(EMBED_MODE_REAL, &er, NULL);
    embed_request_free(&er);
    proxy_respond(c, 200, "application/json", out.data, out.len, hdr);
    buf_free(&out);
    client_drive(c);
    return true;
}

/* Start the lookup of an embedding request; false when the cache does not apply. */
static bool
cache_lookup_start(struct client *c)
{
    struct request *r = c->req;
    const struct config *cfg = cfg_of(c);
    const struct http_header *cc;
    const struct model_config *m;
    unsigned char caller[CACHE_KEY_LEN];
    size_t n = evbuffer_get_length(r->body);
    struct cacheflow_params p;

    if (c->srv->cache == NULL) {
        r->cache = CACHEFLOW_OFF;
        return false;
    }
    r->cache = CACHEFLOW_BYPASS;
    cc = http_find_header(r->hd.headers, r->hd.nheaders, "Cache-Control");
    if (cc != NULL && header_token_has(cc, "no-store")) {
        return false;
    }
    if (!r->scanned || r->ups->n == 0 || cfg->fallback.mode == FALLBACK_ALWAYS) {
        return false; /* nothing real to store or serve */
    }
    m = r->model != NULL ? model_section(cfg, r->model) : NULL;
    p = (struct cacheflow_params){
        .cache = c->srv->cache,
        .api = r->api,
        .model = request_model_key(r),
        .revision = m != NULL && m->revision != NULL ? m->revision : "",
        .ttl_ms = cfg->cache.ttl_ms,
        .stale_ms = cfg->cache.stale_if_error_ms,
        .lookup = true,
        .redis = c->srv->redis,
    };
    if (cc != NULL && header_token_has(cc, "no-cache")) {
        p.lookup = false;
    }
    if (cfg->cache.per_caller) {
        caller_hash(r, caller);
        p.caller = caller;
    }
    if (n <= CACHEFLOW_INLINE_MAX_BODY && answer_inline(c, &p)) {
        return true;
    }
    r->cf = cacheflow_lookup(c->srv->workers, &p, (const char *)evbuffer_pullup(r->body, -1), n,
                             cache_looked_up, c);
    return r->cf != NULL;
}

/* A merged answer's vectors are stored and in hand: render them, or say what went wrong. */
static void
cache_merged(struct cacheflow *cf, void *arg)
{
    struct client *c = arg;
    struct request *r = c->req;

    if (!cf->stored_ok) {
        log_warn("request %s: the upstream's answer cannot be merged with the cache: %s", r->id,
                 cf->err);
        r->reason = "cache_merge";
        proxy_respond_error(c, 502, "upstream_error", cf->err, NULL);
        client_drive(c);
        return;
    }
    submit_answer_job(c, NULL, r->ntried > 0 ? r->tried[r->ntried - 1]->name : "upstream", false);
}

/*
 * A 2xx answer kept for the cache is complete. Partial: hand it to the
 * merge. Relayed: store it in the background (the caller has it already).
 */
static void
cache_answer_complete(struct client *c, bool partial)
{
    struct request *r = c->req;
    size_t len = evbuffer_get_length(r->answer);
    char *bytes;

    if (r->answer_over || r->cf == NULL) {
        if (partial) {
            r->reason = "cache_merge";
            proxy_respond_error(c, 502, "upstream_error",
                                "the upstream's answer is too large to merge with the cache",
                                NULL);
            client_drive(c);
        }
        detach_cache(r);
        return;
    }
    bytes = xmalloc(len + 1);
    evbuffer_remove(r->answer, bytes, len);
    bytes[len] = '\0';
    evbuffer_free(r->answer);
    r->answer = NULL;
    if (cacheflow_store(r->cf, bytes, len, !partial, partial ? cache_merged : NULL) < 0) {
        if (partial) {
            proxy_respond_error(c, 503, "overloaded", "the worker queue is full; retry shortly",
                                "Retry-After: 1\r\n");
            client_drive(c);
        }
        detach_cache(r);
        return;
    }
    if (!partial) {
        cacheflow_detach(r->cf); /* the store completes on its own */
        r->cf = NULL;
    }
}

/* ---- dispatch ------------------------------------------------------------- */

static void
dispatch(struct client *c)
{
    struct request *r = c->req;

    if (r->api == EMBED_API_NONE && answer_model_list(c)) {
        return;
    }
    if (r->api != EMBED_API_NONE && !resolve_model(c)) {
        return;
    }
    if (r->api != EMBED_API_NONE && cache_lookup_start(c)) {
        return; /* cache_looked_up goes on */
    }
    dispatch_on(c);
}

/* Upstream, fallback or an error, once the cache (if any) has had its say. */
static void
dispatch_on(struct client *c)
{
    struct request *r = c->req;
    uint64_t now = util_mono_ms();

    if (r->ups->n > 0 && cfg_of(c)->fallback.mode != FALLBACK_ALWAYS && !any_upstream_serves(r)) {
        /* Another model's upstream would answer in another vector space: never. */
        give_up(c, "no_upstream_for_model", 503, "no upstream serves this model");
        return;
    }
    if (r->ups->n == 0 || cfg_of(c)->fallback.mode == FALLBACK_ALWAYS) {
        if (r->api != EMBED_API_NONE && cfg_of(c)->fallback.mode != FALLBACK_OFF) {
            if (r->deny_fallback) {
                answer_unavailable(c, "fallback denied by X-Akosha-Fallback and no upstream is "
                                      "used");
                return;
            }
            answer_from_fallback(c, r->ups->n == 0 ? "no_upstreams" : "mode_always");
            return;
        }
        answer_unavailable(c, "no upstream configured for this path");
        return;
    }
    r->upstream_deadline_ms = r->deadline_ms;
    if (fallback_applies(c)) {
        r->upstream_deadline_ms -= fallback_reserve_ms(cfg_of(c)->proxy.request_timeout_ms);
    }
    if (now >= r->upstream_deadline_ms) {
        /* The body took the time there was: no attempt could finish. */
        give_up(c, "deadline", 504, "request_timeout reached before any attempt");
        return;
    }
    retry_budget_note_request(&c->srv->budget, now);
    attempt_start(c);
}

/* ---- attempts ----------------------------------------------------------- */

static inline void
put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        buf_reserve(b, n);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

#define PUT_LIT(b, lit) put((b), (lit), sizeof(lit) - 1)

static void
put_str(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Request headers akosha replaces or must not forward, besides hop-by-hop ones. */
static bool
is_replaced_request_header(const struct http_header *h)
{
    switch (h->name_len) {
    case 4:
        return http_header_is(h, "Host");
    case 6:
        return http_header_is(h, "Expect");
    case 10:
        return http_header_is(h, "tracestate");
    case 11:
        return http_header_is(h, "traceparent");
    case 12:
        return http_header_is(h, "X-Request-Id");
    case 14:
        return http_header_is(h, "Content-Length");
    case 17:
        return http_header_is(h, "X-Forwarded-Proto") || http_header_is(h, "X-Akosha-Fallback");
    default:
        return false;
    }
}

static void
append_upstream_head(struct client *c, struct evbuffer *out, size_t body_len)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    const struct upstream_config *uc = a->up->cfg;
    const struct http_header *xff = NULL, *caller_tp = NULL, *caller_ts = NULL;
    struct buf *b = &scratch;
    char tp[64];

    b->len = 0;
    put(b, r->hd.method_str, r->hd.method_len);
    PUT_LIT(b, " ");
    put_str(b, uc->url.prefix);
    put(b, r->hd.target, r->hd.target_len);
    PUT_LIT(b, " HTTP/1.1\r\nHost: ");
    put_str(b, uc->host_header);
    PUT_LIT(b, "\r\n");
    for (int i = 0; i < r->hd.nheaders; i++) {
        const struct http_header *h = &r->hd.headers[i];
        bool replaced = false;
        if (is_replaced_request_header(h) || http_is_hop_by_hop(h, r->hd.headers, r->hd.nheaders)) {
            if (h->name_len == 11 && http_header_is(h, "traceparent")) {
                caller_tp = h;
            } else if (h->name_len == 10 && http_header_is(h, "tracestate")) {
                caller_ts = h;
            }
            continue;
        }
        if (h->name_len == 15 && http_header_is(h, "X-Forwarded-For")) {
            xff = h;
            continue;
        }
        /* A configured header replaces the caller's of the same name (e.g. a real key). */
        for (size_t j = 0; j < uc->headers.n; j++) {
            const char *line = uc->headers.lines[j];
            const char *colon = strchr(line, ':');
            if ((size_t)(colon - line) == h->name_len &&
                strncasecmp(line, h->name, h->name_len) == 0) {
                replaced = true;
                break;
            }
        }
        if (replaced) {
            continue;
        }
        put(b, h->name, h->name_len);
        PUT_LIT(b, ": ");
        put(b, h->value, h->value_len);
        PUT_LIT(b, "\r\n");
    }
    for (size_t j = 0; j < uc->headers.n; j++) {
        const char *line = uc->headers.lines[j];
        const char *colon = strchr(line, ':');
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        put(b, line, (size_t)(colon - line));
        PUT_LIT(b, ": ");
        put_str(b, v);
        PUT_LIT(b, "\r\n");
    }
    PUT_LIT(b, "X-Forwarded-For: ");
    if (xff != NULL) {
        put(b, xff->value, xff->value_len);
        PUT_LIT(b, ", ");
    }
    put_str(b, c->addr);
    PUT_LIT(b, "\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ");
    put_str(b, r->id);
    PUT_LIT(b, "\r\n");
    if (observe_attempt_traceparent(&r->obs, tp, sizeof(tp))) {
        PUT_LIT(b, "traceparent: ");
        put_str(b, tp);
        PUT_LIT(b, "\r\n");
        if (observe_tracestate(&r->obs)[0] != '\0') {
            PUT_LIT(b, "tracestate: ");
            put_str(b, observe_tracestate(&r->obs));
            PUT_LIT(b, "\r\n");
        }
    } else {
        /* Not tracing: akosha is no hop of the trace; the caller's context goes on unchanged. */
        const struct http_header *ctx[] = {caller_tp, caller_ts};
        for (size_t i = 0; i < ARRAY_SIZE(ctx); i++) {
            if (ctx[i] != NULL) {
                put(b, ctx[i]->name, ctx[i]->name_len);
                PUT_LIT(b, ": ");
                put(b, ctx[i]->value, ctx[i]->value_len);
                PUT_LIT(b, "\r\n");
            }
        }
    }
    if (body_len > 0 || r->hd.content_length >= 0 || r->hd.chunked) {
        PUT_LIT(b, "Content-Length: ");
        buf_put_i64(b, (int64_t)body_len);
        PUT_LIT(b, "\r\n");
    }
    PUT_LIT(b, "\r\n");
    evbuffer_add(out, b->data, b->len);
}

static void
send_request(struct client *c)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    struct evbuffer *out = upconn_output(a->conn);
    size_t n = evbuffer_get_length(r->body);
    /* NAME=REMOTE: this upstream calls the model by another name. */
    const char *remote = a->remote_model;
    const char *body;

    if (remote == NULL) {
        append_upstream_head(c, out, n);
        if (n > 0) {
            /* The body stays in the request: a retry replays the same bytes. */
            evbuffer_add(out, evbuffer_pullup(r->body, -1), n);
        }
    } else {
        size_t rl = strlen(remote);
        append_upstream_head(c, out, n - r->model_len + rl);
        body = (const char *)evbuffer_pullup(r->body, -1);
        evbuffer_add(out, body, r->model_at);
        evbuffer_add(out, remote, rl);
        evbuffer_add(out, body + r->model_at + r->model_len, n - r->model_at - r->model_len);
    }
    attempt_set_state(c, ATTEMPT_HEAD);
    upconn_pause_read(a->conn, false);
    upconn_flush(a->conn);
}

/*
 * The attempt's timer: the backoff's end, the call's limit (call_timeout or
 * the time left, whichever is shorter), or, while waiting for a pooled
 * connection, the time left.
 */
static void
attempt_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    struct request *r = c->req;
    struct attempt *a = &r->att;

    (void)fd;
    (void)what;
    switch (a->state) {
    case ATTEMPT_BACKOFF:
        attempt_set_state(c, ATTEMPT_IDLE);
        attempt_start(c);
        return;
    case ATTEMPT_WAIT_SLOT:
        /* Waiting for one of our own connection slots is not the upstream's failure. */
        log_info("request %s: no connection to upstream %s came free in time", r->id,
                 a->up->name);
        snprintf(r->fail_cause, sizeof(r->fail_cause),
                 "upstream %s: its connections stayed busy until the deadline", a->up->name);
        attempt_abort(c);
        give_up(c, "deadline", 504, r->fail_cause);
        return;
    case ATTEMPT_BODY:
        /* Response under way: too late to retry; cut the connection. */
        log_warn("request %s: upstream %s: call_timeout while relaying the body", r->id,
                 a->up->name);
        breaker_record(&a->up->breaker, &a->ticket, BREAKER_FAILURE, util_mono_ms());
        a->ticket_open = false;
        client_free(c);
        return;
    default:
        attempt_failed(c, 504,
                       a->deadline_cut ? "no answer before the request's deadline"
                                       : "upstream call_timeout reached",
                       0, false, "timeout");
        return;
    }
}

/* A connection is ours: the call's limit runs from here, never past the deadline. */
static void
attempt_arm_call(struct client *c)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    uint64_t now = util_mono_ms();
    uint64_t left = r->upstream_deadline_ms > now ? r->upstream_deadline_ms - now : 0;

    evtimer_del(a->timer);
    a->deadline_cut = left < a->up->cfg->call_timeout_ms;
    timer_arm(a->timer, MIN((uint64_t)a->up->cfg->call_timeout_ms, left));
}

/* Tear down the current attempt's connection and references; no outcome recorded here. */
static void
attempt_release(struct client *c, bool reusable)
{
    struct attempt *a = &c->req->att;

    if (a->timer != NULL) {
        evtimer_del(a->timer);
    }
    free(a->dim_scan);
    a->dim_scan = NULL;
    if (spare_edges == NULL) {
        spare_edges = a->edges;
    } else {
        free(a->edges);
    }
    a->edges = NULL;
    if (a->state == ATTEMPT_WAIT_SLOT && a->conn == NULL) {
        /* Still queued (a freed slot may already have handed us a connection). */
        upstream_cancel_wait(a->up, &a->waiter);
    }
    if (a->conn != NULL) {
        upstream_release(a->conn, reusable);
        a->conn = NULL;
    }
    if (a->up != NULL) {
        observe_attempt_end(&c->req->obs);
        upstream_unref(a->up);
        a->up = NULL;
    }
    attempt_set_state(c, ATTEMPT_IDLE);
}

/* Client left or deadline passed: drop the attempt, freeing any half-open slot. */
static void
attempt_abort(struct client *c)
{
    struct attempt *a;

    if (c->req == NULL) {
        return;
    }
    a = &c->req->att;
    if (a->up != NULL && a->ticket_open) {
        breaker_record(&a->up->breaker, &a->ticket, BREAKER_ABANDONED, util_mono_ms());
        a->ticket_open = false;
    }
    if (a->state == ATTEMPT_BACKOFF && a->timer != NULL) {
        evtimer_del(a->timer);
    }
    attempt_release(c, false);
}

static void
attempt_start(struct client *c)
{
    struct server *srv = c->srv;
    struct request *r = c->req;
    struct attempt *a = &r->att;
    uint64_t now = util_mono_ms();
    struct upstream *up;
    const char *cause = NULL;
    int rc;

    if (now >= r->upstream_deadline_ms) {
        give_up(c, "deadline", 504, r->fail_cause);
        return;
    }
    up = upstream_pick(r->ups, &r->want, r->tried, r->ntried, now);
    if (up != NULL && !breaker_allow(&up->breaker, now, &a->ticket)) {
        up = NULL;
    }
    if (up == NULL) {
        /* Ask every breaker, so each counts the rejected call (or admits it after all). */
        for (size_t i = 0; i < r->ups->n && up == NULL; i++) {
            struct upstream *u = r->ups->ups[i];
            if (upstream_routable(u, &r->want, now) && breaker_allow(&u->breaker, now, &a->ticket)) {
                up = u;
            }
        }
    }
    if (up == NULL) {
        if (r->attempts == 0) {
            observe_all_open(r->ups);
            give_up(c, "all_open", 503,
                    "no upstream may be called: circuit breakers open or health checks failing");
        } else {
            give_up(c, "attempts_exhausted", r->fail_status, r->fail_cause);
        }
        return;
    }
    a->ticket_open = true;
    if (r->attempts == 0) {
        r->max_attempts = 1 + (unsigned)up->cfg->retries;
    }
    r->attempts++;
    if (r->ntried < ARRAY_SIZE(r->tried)) {
        r->tried[r->ntried++] = up;
    }
    upstream_ref(up);
    up->stats.requests++;
    a->up = up;
    a->start_us = util_mono_us();
    a->conn = NULL;
    a->status = 0;
    a->bytes_in = 0;
    a->keep_alive = false;
    a->paused = false;
    a->deadline_cut = false;
    a->collect = false;
    a->remote_model = NULL;
    if (r->model != NULL && r->model_len > 0) {
        model_upstream_serves(up->cfg_owner, up->cfg, r->model, &a->remote_model);
    }
    if (a->timer == NULL && c->spare_timer != NULL) {
        a->timer = c->spare_timer;
        c->spare_timer = NULL;
    } else if (a->timer == NULL) {
        a->timer = evtimer_new(srv->base, attempt_timer_cb, c);
    }
    observe_attempt_start(&r->obs, &r->hd, up, r->attempts,
                          a->remote_model != NULL ? a->remote_model : r->model_sent);
    a->waiter.slot = &a->conn;
    attempt_set_state(c, ATTEMPT_CONNECT);
    rc = upstream_acquire(up, &a->waiter, upconn_event, c, &a->conn, &cause);
    if (rc < 0) {
        attempt_failed(c, 502, cause, 0, false, "connect_error");
        return;
    }
    if (a->conn == NULL) {
        /* Every slot busy: wait, bounded by the deadline alone (attempt_timer_cb). */
        up->stats.pool_waits++;
        observe_pool_wait(up);
        attempt_set_state(c, ATTEMPT_WAIT_SLOT);
        timer_arm(a->timer, r->upstream_deadline_ms - now);
        return;
    }
    attempt_arm_call(c);
    if (rc == 1) {
        send_request(c);
    }
}

/* A Retry-After not waited out: longer than max_retry_after, or than the time left. */
static bool
retry_after_too_long(const struct request *r, const struct upstream *up, uint64_t after,
                     uint64_t now)
{
    return after > up->cfg->max_retry_after_ms || now + after >= r->upstream_deadline_ms;
}

/*
 * The attempt failed (transport, timeout, or a failure status whose body is
 * not relayed). Count it against the breaker, then retry, fall back or answer.
 */
static void
attempt_failed(struct client *c, int status, const char *cause, uint64_t retry_after,
               bool have_after, const char *reason)
{
    struct server *srv = c->srv;
    struct request *r = c->req;
    struct attempt *a = &r->att;
    uint64_t now = util_mono_ms();
    const struct upstream_config *uc = a->up->cfg;
    uint64_t delay;
    unsigned retry_no = r->attempts - 1;
    /* libevent may fire the deadline's timer a millisecond before the clock says so */
    bool out_of_time = now >= r->upstream_deadline_ms || (status == 504 && a->deadline_cut);

    log_info("request %s: upstream %s attempt %u failed: %s", r->id, a->up->name, r->attempts,
             cause);
    if (a->ticket_open) {
        breaker_record(&a->up->breaker, &a->ticket, BREAKER_FAILURE, now);
        a->ticket_open = false;
    }
    a->up->stats.failures++;
    upstream_observe_latency(a->up, util_mono_us() - a->start_us, false, now);
    observe_attempt_failed(&r->obs, a->up, reason, cause);
    r->fail_status = status;
    snprintf(r->fail_cause, sizeof(r->fail_cause), "upstream %s: %s", a->up->name, cause);

    if (have_after && retry_after_too_long(r, a->up, retry_after, now)) {
        /* A pause we will not wait out: skip this upstream for it and move on at once. */
        upstream_cooldown(a->up, now + retry_after);
        log_info("request %s: upstream %s asks for %" PRIu64 " ms (Retry-After); skipped for that "
                 "long",
                 r->id, a->up->name, retry_after);
        delay = 0;
    } else if (have_after) {
        delay = retry_after;
    } else {
        delay = retry_backoff_ms(uc->backoff_base_ms, uc->backoff_multiplier, uc->backoff_max_ms,
                                 retry_no, retry_rand(&srv->rng));
    }
    {
        const char *why_not = NULL;
        if (r->attempts >= r->max_attempts) {
            why_not = "attempts used up";
        } else if (out_of_time || now + delay >= r->upstream_deadline_ms) {
            why_not = "the retry delay would pass request_timeout";
        } else if (!retry_budget_try_spend(&srv->budget, now)) {
            why_not = "retry budget exhausted";
            log_warn("request %s: retry budget exhausted; not retrying", r->id);
            observe_budget_exhausted();
        } else {
            observe_retry(&r->obs, a->up, reason, r->attempts + 1, delay);
        }
        attempt_release(c, false);
        if (why_not != NULL) {
            log_debug("request %s: no retry: %s", r->id, why_not);
            give_up(c, out_of_time ? "deadline" : "attempts_exhausted", status, r->fail_cause);
            return;
        }
    }
    attempt_set_state(c, ATTEMPT_BACKOFF);
    timer_arm(a->timer, delay);
}

/*
 * Would a retry happen after a failure status at this point? A retry that
 * only the budget refuses is counted here, since the answer is then final.
 */
static bool
retry_possible(struct client *c, uint64_t delay)
{
    struct request *r = c->req;
    uint64_t now = util_mono_ms();

    if (r->attempts >= r->max_attempts || now + delay >= r->upstream_deadline_ms) {
        return false;
    }
    if (retry_budget_available(&c->srv->budget, now) == 0) {
        log_warn("request %s: retry budget exhausted; not retrying", r->id);
        c->srv->budget.exhausted++;
        observe_budget_exhausted();
        return false;
    }
    return true;
}

static bool
is_failure_status(int status)
{
    return status == 500 || status == 502 || status == 503 || status == 504 || status == 429;
}

/* Relay the upstream's status line and headers to the client. */
static void
relay_head(struct client *c, const struct http_response_head *rh)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    struct evbuffer *out = c->out;
    bool close = !r->keep_alive || c->srv->draining;
    struct buf *b = &scratch;

    if (a->body_kind == HTTP_BODY_UNTIL_CLOSE) {
        close = true; /* no framing to give the client but the close */
    }
    if (a->body_kind == HTTP_BODY_CHUNKED && r->hd.version_minor == 0) {
        close = true; /* HTTP/1.0 clients get the payload, ended by close */
    }
    r->keep_alive = !close;
    b->len = 0;
    PUT_LIT(b, "HTTP/1.1 ");
    buf_put_i64(b, rh->status);
    PUT_LIT(b, " ");
    put(b, rh->reason, rh->reason_len);
    PUT_LIT(b, "\r\n");
    for (int i = 0; i < rh->nheaders; i++) {
        const struct http_header *h = &rh->headers[i];
        if (http_is_hop_by_hop(h, rh->headers, rh->nheaders) ||
            (h->name_len == 12 && http_header_is(h, "X-Request-Id")) ||
            (h->name_len == 17 && http_header_is(h, "X-Akosha-Upstream")) ||
            (h->name_len == 13 && http_header_is(h, "X-Akosha-Mode")) ||
            (h->name_len == 14 && http_header_is(h, "X-Akosha-Model"))) {
            continue;
        }
        put(b, h->name, h->name_len);
        PUT_LIT(b, ": ");
        put(b, h->value, h->value_len);
        PUT_LIT(b, "\r\n");
    }
    if (a->body_kind == HTTP_BODY_CHUNKED && r->hd.version_minor == 1) {
        PUT_LIT(b, "Transfer-Encoding: chunked\r\n");
    }
    PUT_LIT(b, "X-Akosha-Upstream: ");
    put_str(b, a->up->name);
    PUT_LIT(b, "\r\nX-Akosha-Mode: real\r\n");
    if (r->cache != CACHEFLOW_NONE) {
        PUT_LIT(b, "X-Akosha-Cache: ");
        put_str(b, cacheflow_use_name(r->cache));
        PUT_LIT(b, "\r\n");
    }
    if (r->model != NULL) {
        PUT_LIT(b, "X-Akosha-Model: ");
        put_str(b, r->model);
        PUT_LIT(b, "\r\n");
    }
    PUT_LIT(b, "X-Request-Id: ");
    put_str(b, r->id);
    PUT_LIT(b, "\r\n");
    if (close) {
        PUT_LIT(b, "Connection: close\r\n");
    }
    PUT_LIT(b, "\r\n");
    evbuffer_add(out, b->data, b->len);
    r->status = rh->status;
    r->mode = EMBED_MODE_REAL;
}

/* The upstream's answer is complete: pool the connection and finish. */
static void
attempt_complete(struct client *c)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    uint64_t now = util_mono_ms();

    if (a->edges != NULL) {
        embed_answer_model(a->edges->head, a->edges->hlen, a->edges->tail, a->edges->tlen,
                           r->response_model, sizeof(r->response_model));
    }
    if (a->ticket_open) {
        enum breaker_outcome o = a->status >= 400 ? BREAKER_NEUTRAL : BREAKER_SUCCESS;
        breaker_record(&a->up->breaker, &a->ticket, o, now);
        a->ticket_open = false;
    }
    upstream_observe_latency(a->up, util_mono_us() - a->start_us, true, now);
    if (a->status < 400) {
        a->up->stats.successes++;
    } else {
        a->up->stats.client_errors++;
    }
    observe_attempt_success(&r->obs, a->up, a->status);
    attempt_release(c, a->keep_alive && a->body_kind != HTTP_BODY_UNTIL_CLOSE);
    if (a->collect) {
        /* Nothing is relayed yet: the merge answers, within the request's deadline. */
        a->collect = false;
        cache_answer_complete(c, true);
        return;
    }
    if (r->answer != NULL) {
        cache_answer_complete(c, false);
    }
    evtimer_del(c->timer);
    client_set_state(c, r->keep_alive ? CLIENT_WRITE : CLIENT_CLOSING);
    client_drive(c);
}

/*
 * Watch a real answer's bytes as they are relayed, with no copy of the body
 * and no second pass: count its first vector (learned dimensions) and, for
 * a traced request, keep its first and last bytes, where its "model" is.
 */
static void
watch_answer(struct attempt *a, struct request *r, const char *data, size_t len)
{
    struct answer_edges *e = a->edges;

    if (r->answer != NULL && !r->answer_over) {
        if (evbuffer_get_length(r->answer) + len > CACHEFLOW_ANSWER_MAX) {
            r->answer_over = true; /* relayed whole, stored never */
            evbuffer_drain(r->answer, evbuffer_get_length(r->answer));
        } else {
            evbuffer_add(r->answer, data, len);
        }
    }
    if (a->dim_scan != NULL) {
        unsigned dim;
        int rc = embed_dim_scan_feed(a->dim_scan, data, len, &dim);
        if (rc != 0) {
            r->sniffed_dim = rc == 1 ? dim : 0;
            free(a->dim_scan);
            a->dim_scan = NULL;
        }
    }
    if (e != NULL) {
        size_t take = MIN(len, sizeof(e->head) - e->hlen);
        memcpy(e->head + e->hlen, data, take);
        e->hlen += take;
        if (len >= sizeof(e->tail)) {
            memcpy(e->tail, data + len - sizeof(e->tail), sizeof(e->tail));
            e->tlen = sizeof(e->tail);
        } else {
            size_t keep = MIN(e->tlen, sizeof(e->tail) - len);
            memmove(e->tail, e->tail + e->tlen - keep, keep);
            memcpy(e->tail + keep, data, len);
            e->tlen = keep + len;
        }
    }
}

/*
 * The same over the first n bytes of an evbuffer, extent by extent, eight
 * extents a peek; the usual answer takes one peek from the start.
 */
static void
watch_answer_buffer(struct attempt *a, struct request *r, struct evbuffer *in, size_t n)
{
    size_t done = 0;

    while (n > 0) {
        struct evbuffer_ptr at;
        struct evbuffer_iovec v[8];
        int nv;

        if (done > 0) {
            evbuffer_ptr_set(in, &at, done, EVBUFFER_PTR_SET);
        }
        nv = evbuffer_peek(in, (ssize_t)n, done > 0 ? &at : NULL, v, 8);
        if (nv <= 0) {
            return;
        }
        for (int i = 0; i < nv && i < 8 && n > 0; i++) {
            size_t take = MIN(v[i].iov_len, n);
            watch_answer(a, r, v[i].iov_base, take);
            n -= take;
            done += take;
        }
    }
}

/* Move response body bytes to the client: 1 body complete, 0 more to come, -1 bad framing. */
static int
relay_body(struct client *c, bool eof)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    struct evbuffer *in = upconn_input(a->conn);
    struct evbuffer *out = c->out;

    switch (a->body_kind) {
    case HTTP_BODY_NONE:
        return 1;
    case HTTP_BODY_LENGTH: {
        size_t n = MIN(evbuffer_get_length(in), a->remaining);
        if (a->dim_scan != NULL || a->edges != NULL || r->answer != NULL) {
            watch_answer_buffer(a, r, in, n);
        }
        if (a->collect) {
            evbuffer_drain(in, n); /* kept in r->answer */
        } else {
            evbuffer_remove_buffer(in, out, n);
        }
        a->remaining -= n;
        return a->remaining == 0;
    }
    case HTTP_BODY_UNTIL_CLOSE:
        if (a->dim_scan != NULL || a->edges != NULL || r->answer != NULL) {
            watch_answer_buffer(a, r, in, evbuffer_get_length(in));
        }
        if (a->collect) {
            evbuffer_drain(in, evbuffer_get_length(in));
        } else {
            evbuffer_add_buffer(out, in);
        }
        return eof ? 1 : 0;
    case HTTP_BODY_CHUNKED:
        while (evbuffer_get_length(in) > 0) {
            struct evbuffer_iovec v;
            size_t consumed = 0, payload = 0;
            int rc;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) {
                break;
            }
            rc = http_chunked_step(&a->chunk, v.iov_base, v.iov_len, &consumed, &payload);
            if (rc < 0) {
                return -1;
            }
            if (payload > 0 && (a->dim_scan != NULL || a->edges != NULL || r->answer != NULL)) {
                watch_answer(a, r, v.iov_base, payload);
            }
            if (!a->collect && (r->hd.version_minor == 1 || payload > 0)) {
                evbuffer_remove_buffer(in, out, consumed);
            } else {
                evbuffer_drain(in, consumed);
            }
            if (rc == 1) {
                return 1;
            }
            if (consumed == 0) {
                break;
            }
        }
        return 0;
    }
    return 0;
}

static void
on_response_head(struct client *c)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    struct evbuffer *in = upconn_input(a->conn);
    struct http_response_head rh;
    const char *cause = "malformed response";
    size_t len = evbuffer_get_length(in);
    unsigned char *p;
    int rc;

    for (;;) {
        len = evbuffer_get_length(in);
        p = evbuffer_pullup(in, (ssize_t)MIN(len, (size_t)65536));
        rc = http_parse_response_head((const char *)p, MIN(len, (size_t)65536), &rh, &cause);
        if (rc == 0) {
            if (len >= 65536) {
                attempt_failed(c, 502, "upstream response head too large", 0, false, "malformed");
            }
            return;
        }
        if (rc < 0) {
            attempt_failed(c, 502, cause, 0, false, "malformed");
            return;
        }
        if (rh.status >= 100 && rh.status < 200) {
            if (rh.status == 101) {
                attempt_failed(c, 502, "unexpected protocol switch", 0, false, "malformed");
                return;
            }
            evbuffer_drain(in, (size_t)rc); /* interim answer: wait for the final one */
            continue;
        }
        break;
    }
    a->status = rh.status;
    a->keep_alive = rh.keep_alive;
    a->body_kind = http_response_body_kind(&rh, r->is_head);
    a->remaining = rh.content_length > 0 ? (uint64_t)rh.content_length : 0;
    http_chunked_init(&a->chunk);
    observe_attempt_status(&r->obs, rh.status);

    if (is_failure_status(rh.status)) {
        const struct http_header *ra = NULL;
        uint64_t after = 0, now;
        bool have_after = false, too_long;
        if (rh.status == 429 || rh.status == 503) {
            ra = http_find_header(rh.headers, rh.nheaders, "Retry-After");
        }
        if (ra != NULL &&
            retry_after_parse(ra->value, ra->value_len, util_wall_ms() / 1000, &after) == 0) {
            have_after = true;
        }
        now = util_mono_ms();
        too_long = have_after && retry_after_too_long(r, a->up, after, now);
        if (too_long) {
            upstream_cooldown(a->up, now + after); /* and a retry may only go elsewhere */
        }
        /* Embedding routes never relay a failure: a retry, the fallback, or a 503. */
        if (r->api != EMBED_API_NONE ||
            (retry_possible(c, have_after && !too_long ? after : 0) &&
             (!too_long || upstream_any_callable(r->ups, &r->want, now)))) {
            char cause_buf[64];
            snprintf(cause_buf, sizeof(cause_buf), "HTTP %d", rh.status);
            attempt_failed(c, 502, cause_buf, after, have_after, rh.status == 429 ? "429" : "5xx");
            return;
        }
        /* Final attempt and no fallback: relay the upstream's own answer, counted as failed. */
        breaker_record(&a->up->breaker, &a->ticket, BREAKER_FAILURE, util_mono_ms());
        a->ticket_open = false;
        a->up->stats.failures++;
        {
            char cause_buf[64];
            snprintf(cause_buf, sizeof(cause_buf), "HTTP %d (relayed)", rh.status);
            observe_attempt_failed(&r->obs, a->up, rh.status == 429 ? "429" : "5xx", cause_buf);
        }
    }
    if (rh.status >= 200 && rh.status < 300 &&
        observe_real_answer(&r->obs, request_model_key(r), r->sized)) {
        /* Once a second per model at most (server_dim_due): a malloc that rarely. */
        a->dim_scan = xmalloc(sizeof(*a->dim_scan));
        embed_dim_scan_init(a->dim_scan, r->api);
    }
    if (observe_sampled(&r->obs) && r->api != EMBED_API_NONE && rh.status >= 200 && rh.status < 300) {
        a->edges = spare_edges != NULL ? spare_edges : xmalloc(sizeof(*a->edges));
        spare_edges = NULL; /* the lengths say what is filled */
        a->edges->hlen = 0;
        a->edges->tlen = 0;
    }
    if (r->cf != NULL && rh.status >= 200 && rh.status < 300 && !r->is_head) {
        /* Real vectors for the cache: kept as they pass (or, for a partial request, kept whole). */
        if (r->answer != NULL) {
            evbuffer_free(r->answer); /* an earlier attempt's, cut short */
        }
        r->answer = evbuffer_new();
        r->answer_over = false;
        a->collect = r->cache == CACHEFLOW_PARTIAL;
    }
    attempt_set_state(c, ATTEMPT_BODY);
    if (a->collect) {
        evbuffer_drain(in, (size_t)rc);
        on_response_body(c, false);
        return;
    }
    relay_head(c, &rh); /* rh points into the input: drained only after */
    evbuffer_drain(in, (size_t)rc);
    client_set_state(c, CLIENT_STREAM);
    on_response_body(c, false);
}

static void
on_response_body(struct client *c, bool eof)
{
    struct request *r = c->req;
    struct attempt *a = &r->att;
    int rc = relay_body(c, eof);

    client_flush(c);
    if (rc == 1) {
        attempt_complete(c);
        return;
    }
    if ((eof || rc < 0) && a->collect) {
        /* Nothing was relayed: a failed attempt like any other (a retry, or the fallback). */
        a->collect = false;
        evbuffer_free(r->answer);
        r->answer = NULL;
        attempt_failed(c, 502,
                       rc < 0 ? "bad chunked framing in response body"
                              : "closed before the body was complete",
                       0, false, "reset");
        return;
    }
    if (eof || rc < 0) {
        log_warn("request %s: upstream %s: %s", r->id, a->up->name,
                 rc < 0 ? "bad chunked framing in response body"
                        : "closed before the body was complete");
        if (a->ticket_open) {
            breaker_record(&a->up->breaker, &a->ticket, BREAKER_FAILURE, util_mono_ms());
            a->ticket_open = false;
        }
        a->up->stats.failures++;
        observe_attempt_failed(&r->obs, a->up, "reset",
                               rc < 0 ? "bad chunked framing in response body"
                                      : "closed before the body was complete");
        r->keep_alive = false;
        attempt_release(c, false);
        client_set_state(c, CLIENT_CLOSING);
        client_drive(c);
        return;
    }
    if (evbuffer_get_length(c->out) > STREAM_HIGH_WATER && !a->paused) {
        a->paused = true; /* resumed by stream_resume once the client has it all */
        upconn_pause_read(a->conn, true);
    }
}

static void
upconn_event(struct upconn *conn, enum upconn_event ev, void *arg)
{
    struct client *c = arg;
    struct request *r = c->req;
    struct attempt *a = &r->att;

    if (conn == NULL) {
        /* A queued attempt whose connect could not even start. */
        attempt_failed(c, 502, "cannot connect", 0, false, "connect_error");
        return;
    }
    switch (ev) {
    case UPCONN_READY:
        a->conn = conn;
        if (a->state == ATTEMPT_WAIT_SLOT) {
            attempt_arm_call(c); /* a freed slot came to us: the call starts now */
        }
        send_request(c);
        return;
    case UPCONN_DRAINED:
        return;
    case UPCONN_READ:
        a->bytes_in = 1;
        if (a->state == ATTEMPT_HEAD) {
            on_response_head(c);
        } else if (a->state == ATTEMPT_BODY) {
            on_response_body(c, false);
        }
        return;
    case UPCONN_EOF:
        if (a->state == ATTEMPT_BODY) {
            on_response_body(c, true);
            return;
        }
        if (a->state == ATTEMPT_HEAD && a->bytes_in == 0 && conn->reused && a->ticket_open) {
            /* A pooled connection the server had already closed: not the server's fault. */
            log_debug("request %s: stale pooled connection to %s; reconnecting", r->id,
                      a->up->name);
            upstream_release(a->conn, false);
            a->conn = NULL;
            {
                const char *cause = NULL;
                int rc = upstream_acquire(a->up, &a->waiter, upconn_event, c, &a->conn, &cause);
                if (rc < 0) {
                    attempt_failed(c, 502, cause, 0, false, "connect_error");
                } else if (rc == 1) {
                    send_request(c);
                } else if (a->conn == NULL) {
                    attempt_set_state(c, ATTEMPT_WAIT_SLOT);
                } else {
                    attempt_set_state(c, ATTEMPT_CONNECT);
                }
            }
            return;
        }
        attempt_failed(c, 502, "connection closed before a complete response", 0, false, "reset");
        return;
    case UPCONN_ERROR:
        if (a->state == ATTEMPT_BODY) {
            on_response_body(c, true);
            return;
        }
        attempt_failed(c, 502, conn->error[0] ? conn->error : "connection error", 0, false,
                       conn->tls_failed              ? "tls_error"
                       : a->state == ATTEMPT_CONNECT ? "connect_error"
                                                     : "reset");
        return;
    case UPCONN_TIMEOUT:
        attempt_failed(c, 504, "connect_timeout reached", 0, false, "connect_timeout");
        return;
    }
}
