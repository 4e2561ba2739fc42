/*
 * health.c - active health checks: one checker per checked upstream, one
 * check in flight at most. See health.h for the rules and the machine.
 *
 * A check has its own connection: a plain bufferevent that connects
 * (through evdns for names, like the pool's), then, for https, an OpenSSL
 * filter on top of it for the handshake, so CONNECT and TLS are separate
 * states with separate causes. The request asks the server to close; the
 * connection is freed when the status line is read.
 *
 * One timer per checker serves both ends: while IDLE it waits for the next
 * check, while a check runs it is the check's health_timeout.
 */
#include "health.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>

#include "log.h"
#include "retry.h"
#include "upstream.h"
#include "util.h"

/* A status line longer than this is not HTTP. */
#define HEALTH_STATUS_LINE_MAX 1024
/* A check that may turn the verdict is confirmed after a tenth of the interval, at least this. */
#define HEALTH_CONFIRM_MIN_MS 100
/* The first check of a new checker comes within this (or the interval, when shorter). */
#define HEALTH_FIRST_CHECK_MAX_MS 1000

enum health_check_state {
    HC_IDLE,      /* no check running: the timer waits for the next */
    HC_CONNECT,   /* DNS and TCP connect */
    HC_TLS,       /* TLS handshake (https) */
    HC_SEND,      /* request being written */
    HC_READ_HEAD, /* waiting for the status line */
};

enum health_event {
    HE_TIMER,     /* IDLE: time for a check; otherwise health_timeout */
    HE_CONNECTED, /* the current bufferevent is up (TCP, or TLS on the filter) */
    HE_WRITTEN,   /* the request left */
    HE_READ,      /* bytes arrived */
    HE_EOF,
    HE_ERROR,
};

struct health_checker {
    struct upstream *up; /* reference held */
    struct event *timer;
    enum health_check_state state;
    struct bufferevent *bev; /* the check's connection (the TLS filter once it exists) */
    uint64_t started_us;
    uint64_t rng;
    char cause[96]; /* why the running check failed */
};

static const char *state_names[] = {"idle", "connect", "tls", "send", "read_head"};

static void drive(struct health_checker *hc, enum health_event ev);

void
health_status_init(struct health_status *st)
{
    memset(st, 0, sizeof(*st));
    st->healthy = true;
}

bool
health_status_record(struct health_status *st, bool pass, uint32_t healthy_threshold,
                     uint32_t unhealthy_threshold)
{
    bool was = st->healthy;

    if (pass) {
        st->passes++;
        st->consecutive_failures = 0;
        if (st->consecutive_passes < UINT32_MAX) {
            st->consecutive_passes++;
        }
        if (!st->healthy && st->consecutive_passes >= MAX(healthy_threshold, 1u)) {
            st->healthy = true;
        }
    } else {
        st->failures++;
        st->consecutive_passes = 0;
        if (st->consecutive_failures < UINT32_MAX) {
            st->consecutive_failures++;
        }
        if (st->healthy && st->consecutive_failures >= MAX(unhealthy_threshold, 1u)) {
            st->healthy = false;
        }
    }
    return st->healthy != was;
}

/* The one place a check's state changes. */
static void
set_state(struct health_checker *hc, enum health_check_state to)
{
    log_debug("upstream %s: health check %s -> %s", hc->up->name, state_names[hc->state],
              state_names[to]);
    hc->state = to;
}

static void
arm(struct health_checker *hc, uint64_t ms)
{
    struct timeval tv = util_ms_to_tv(ms);

    evtimer_add(hc->timer, &tv);
}

/* health_interval, give or take 15 %: checkers that start together drift apart. */
static uint64_t
next_delay_ms(struct health_checker *hc)
{
    uint64_t interval = hc->up->cfg->health_interval_ms;
    uint64_t spread = interval * 3 / 10; /* the whole span of the jitter: 30 % */

    if (spread == 0) {
        return interval;
    }
    return interval - spread / 2 + retry_rand(&hc->rng) % (spread + 1);
}

static void
close_conn(struct health_checker *hc)
{
    if (hc->bev != NULL) {
        /* The TLS filter owns the socket bufferevent under it (BEV_OPT_CLOSE_ON_FREE). */
        bufferevent_free(hc->bev);
        hc->bev = NULL;
    }
}

/* The check is over: count it, move health and the breaker, and wait for the next. */
static void
finish(struct health_checker *hc, bool pass, int status)
{
    struct upstream *up = hc->up;
    struct health_status *st = &up->health;
    uint64_t now = util_mono_ms();
    bool changed;

    close_conn(hc);
    evtimer_del(hc->timer);
    st->have_last = true;
    st->last_pass = pass;
    st->last_status = status;
    st->last_latency_us = util_mono_us() - hc->started_us;
    st->last_check_ms = now;
    snprintf(st->last_error, sizeof(st->last_error), "%s", pass ? "" : hc->cause);
    changed = health_status_record(st, pass, (uint32_t)up->cfg->healthy_threshold,
                                   (uint32_t)up->cfg->unhealthy_threshold);
    if (!pass) {
        log_debug("upstream %s: health check failed: %s", up->name, hc->cause);
    }
    if (changed && st->healthy) {
        log_info("upstream %s: healthy again after %u passing health check(s)", up->name,
                 (unsigned)st->consecutive_passes);
    } else if (changed) {
        log_warn("upstream %s: unhealthy after %u failed health check(s) (last: %s); routing "
                 "skips it",
                 up->name, (unsigned)st->consecutive_failures, hc->cause);
    }
    if (pass) {
        /* Not a call: the breaker counts nothing, it only stops waiting out open_timeout. */
        breaker_half_open(&up->breaker, now, "health check passed");
    }
    set_state(hc, HC_IDLE);
    if ((st->healthy && st->consecutive_failures > 0) ||
        (!st->healthy && st->consecutive_passes > 0)) {
        /*
         * The verdict is about to turn: confirm it soon, so a recovery (or a
         * failure) is acted on about one interval after it happened, not
         * healthy_threshold intervals.
         */
        arm(hc, MIN(up->cfg->health_interval_ms, MAX(up->cfg->health_interval_ms / 10,
                                                     (uint64_t)HEALTH_CONFIRM_MIN_MS)));
        return;
    }
    arm(hc, next_delay_ms(hc));
}

static void
fail(struct health_checker *hc, const char *fmt, const char *detail)
{
    snprintf(hc->cause, sizeof(hc->cause), fmt, detail);
    finish(hc, false, 0);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    drive(arg, HE_READ);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    drive(arg, HE_WRITTEN);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct health_checker *hc = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        drive(hc, HE_CONNECTED);
    } else if (what & BEV_EVENT_EOF) {
        drive(hc, HE_EOF);
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        drive(hc, HE_ERROR);
    }
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    drive(arg, HE_TIMER);
}

/* Why the connection failed, for the status and the log; never a header value. */
static void
describe_error(struct health_checker *hc)
{
    unsigned long e = 0;
    int dns_err = 0;

    if (hc->up->cfg->url.tls && hc->state >= HC_TLS) {
        e = bufferevent_get_openssl_error(hc->bev);
        while (bufferevent_get_openssl_error(hc->bev) != 0) {
            /* drain the queue */
        }
    } else if (hc->state == HC_CONNECT) {
        dns_err = bufferevent_socket_get_dns_error(hc->bev);
    }
    if (dns_err != 0) {
        snprintf(hc->cause, sizeof(hc->cause), "DNS: %s", evutil_gai_strerror(dns_err));
    } else if (e != 0 && ERR_reason_error_string(e) != NULL) {
        snprintf(hc->cause, sizeof(hc->cause), "TLS: %s", ERR_reason_error_string(e));
    } else if (EVUTIL_SOCKET_ERROR() != 0) {
        snprintf(hc->cause, sizeof(hc->cause), "%s: %s",
                 hc->state == HC_TLS ? "TLS handshake" : state_names[hc->state],
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    } else {
        snprintf(hc->cause, sizeof(hc->cause), "%s failed",
                 hc->state == HC_TLS ? "TLS handshake" : state_names[hc->state]);
    }
}

static void
start_check(struct health_checker *hc)
{
    struct upstream *up = hc->up;
    const struct upstream_config *uc = up->cfg;

    hc->started_us = util_mono_us();
    hc->cause[0] = '\0';
    arm(hc, uc->health_timeout_ms);
    set_state(hc, HC_CONNECT);
    /* Deferred callbacks: a connect that fails at once reports from the loop, not from here. */
    hc->bev = bufferevent_socket_new(up->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (hc->bev == NULL) {
        fail(hc, "%s", "cannot create a connection");
        return;
    }
    bufferevent_setcb(hc->bev, read_cb, write_cb, event_cb, hc);
    bufferevent_enable(hc->bev, EV_READ | EV_WRITE);
    /* Non-blocking: numeric hosts connect at once, names go through evdns. */
    if (bufferevent_socket_connect_hostname(hc->bev, up->dns, AF_UNSPEC, uc->url.host,
                                            uc->url.port) < 0) {
        fail(hc, "%s", "connect failed");
    }
}

/* TCP is up on an https upstream: the handshake runs on a filter over it. */
static void
start_tls(struct health_checker *hc)
{
    const char *cause = NULL;
    SSL *ssl = upstream_ssl_new(hc->up, &cause);
    struct bufferevent *tls;

    if (ssl == NULL) {
        fail(hc, "TLS: %s", cause);
        return;
    }
    tls = bufferevent_openssl_filter_new(hc->up->base, hc->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
                                         BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (tls == NULL) {
        SSL_free(ssl);
        fail(hc, "%s", "TLS: cannot set up the handshake");
        return;
    }
    hc->bev = tls; /* frees the socket's bufferevent with it */
    bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
    set_state(hc, HC_TLS);
    bufferevent_setcb(tls, read_cb, write_cb, event_cb, hc);
    bufferevent_enable(tls, EV_READ | EV_WRITE);
}

/* GET PATH with the upstream's Host and configured headers (secrets: never logged). */
static void
send_request(struct health_checker *hc)
{
    const struct upstream_config *uc = hc->up->cfg;
    struct evbuffer *out = bufferevent_get_output(hc->bev);

    set_state(hc, HC_SEND);
    evbuffer_add_printf(out, "GET %s%s HTTP/1.1\r\nHost: %s\r\n", uc->url.prefix, uc->health_check,
                        uc->host_header);
    for (size_t j = 0; j < uc->headers.n; j++) {
        const char *line = uc->headers.lines[j];
        const char *colon = strchr(line, ':');
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        evbuffer_add(out, line, (size_t)(colon - line));
        evbuffer_add_printf(out, ": %s\r\n", v);
    }
    evbuffer_add_printf(out,
                        "User-Agent: akosha/%s health-check\r\nAccept: */*\r\n"
                        "Connection: close\r\n\r\n",
                        PACKAGE_VERSION);
}

/* The status line, once it is all here: 1 read (status set), 0 not yet, -1 malformed. */
static int
read_status(struct health_checker *hc, int *status)
{
    struct evbuffer *in = bufferevent_get_input(hc->bev);
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF);
    char line[16];
    size_t len;

    if (eol.pos < 0) {
        return evbuffer_get_length(in) > HEALTH_STATUS_LINE_MAX ? -1 : 0;
    }
    len = MIN((size_t)eol.pos, sizeof(line) - 1);
    evbuffer_copyout(in, line, len);
    line[len] = '\0';
    /* "HTTP/1.x NNN" */
    if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || line[8] != ' ' || line[9] < '1' ||
        line[9] > '5' || line[10] < '0' || line[10] > '9' || line[11] < '0' || line[11] > '9' ||
        (len > 12 && line[12] != ' ')) {
        return -1;
    }
    *status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    return 1;
}

/* Every libevent callback of a checker lands here. */
static void
drive(struct health_checker *hc, enum health_event ev)
{
    int status = 0, rc;

    if (hc->state == HC_IDLE) {
        if (ev == HE_TIMER) {
            start_check(hc);
        }
        return;
    }
    switch (ev) {
    case HE_TIMER:
        fail(hc, "no answer within health_timeout (in %s)", state_names[hc->state]);
        return;
    case HE_EOF:
        fail(hc, "connection closed by the upstream (in %s)", state_names[hc->state]);
        return;
    case HE_ERROR:
        describe_error(hc);
        finish(hc, false, 0);
        return;
    case HE_CONNECTED:
        if (hc->state == HC_CONNECT && hc->up->cfg->url.tls) {
            start_tls(hc);
        } else if (hc->state == HC_CONNECT || hc->state == HC_TLS) {
            send_request(hc);
        }
        return;
    case HE_WRITTEN:
        if (hc->state == HC_SEND) {
            set_state(hc, HC_READ_HEAD);
        }
        return;
    case HE_READ:
        if (hc->state != HC_SEND && hc->state != HC_READ_HEAD) {
            return;
        }
        rc = read_status(hc, &status);
        if (rc < 0) {
            fail(hc, "%s", "malformed status line");
        } else if (rc > 0 && status >= 200 && status < 300) {
            finish(hc, true, status);
        } else if (rc > 0) {
            snprintf(hc->cause, sizeof(hc->cause), "HTTP %d", status);
            finish(hc, false, status);
        }
        return;
    }
}

static void
checker_start(struct upstream *up)
{
    struct health_checker *hc = xcalloc(1, sizeof(*hc));
    uint64_t first;

    hc->up = up;
    upstream_ref(up);
    hc->rng = util_mono_us() ^ ((uint64_t)(uintptr_t)hc << 8);
    hc->timer = evtimer_new(up->base, timer_cb, hc);
    if (hc->timer == NULL) {
        fatal("out of memory starting health checks");
    }
    hc->state = HC_IDLE;
    up->checker = hc;
    up->health.checked = true;
    /* Soon, at a random point, so checkers started together do not fire together. */
    first = MIN(up->cfg->health_interval_ms, (uint64_t)HEALTH_FIRST_CHECK_MAX_MS);
    arm(hc, retry_rand(&hc->rng) % (first + 1));
    log_info("upstream %s: health checks every %llums", up->name,
             (unsigned long long)up->cfg->health_interval_ms);
}

/*
 * Stop checking up. forget: it is no longer checked, so it counts as healthy
 * again (nothing says otherwise); else (drain) the last verdict stays.
 */
static void
checker_stop(struct upstream *up, bool forget)
{
    struct health_checker *hc = up->checker;

    if (hc == NULL) {
        return;
    }
    close_conn(hc);
    event_free(hc->timer);
    up->checker = NULL;
    up->health.checked = false;
    if (forget) {
        up->health.healthy = true;
        up->health.consecutive_passes = 0;
        up->health.consecutive_failures = 0;
    }
    free(hc);
    upstream_unref(up); /* may free a retired upstream: touch nothing after */
}

static bool
in_set(const struct upstream_set *set, const struct upstream *up)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->ups[i] == up) {
            return true;
        }
    }
    return false;
}

void
health_apply(struct upstream_set *set, struct upstream_set *old)
{
    for (size_t i = 0; old != NULL && i < old->n; i++) {
        if (!in_set(set, old->ups[i])) {
            checker_stop(old->ups[i], true);
        }
    }
    for (size_t i = 0; i < set->n; i++) {
        struct upstream *up = set->ups[i];
        if (up->cfg->health_check == NULL) {
            checker_stop(up, true);
        } else if (up->checker == NULL) {
            checker_start(up);
        }
    }
}

void
health_stop_all(struct upstream_set *set)
{
    for (size_t i = 0; set != NULL && i < set->n; i++) {
        checker_stop(set->ups[i], false);
    }
}
