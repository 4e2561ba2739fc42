/*
 * upstream.c - upstream set, failover order, TLS and connection pools.
 *
 * A connection is lent to one attempt at a time (UPCONN_BUSY) and comes
 * back to the pool (UPCONN_IDLE) only when its response was read in full
 * and both sides keep the connection alive. An idle connection that reads
 * anything, or is closed by the peer, is dropped: it can carry no response.
 */
#include "upstream.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <event2/buffer.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "model.h"
#include "retry.h"
#include "sockio.h"
#include "util.h"

/*
 * Largest read from a plain upstream: an answer of 64 x 1536 floats is 2 MB,
 * and each read costs a system call and, on loopback, a window update that
 * wakes the backend. Reads of 256 KiB (sockio's spill blocks, relayed without
 * a copy) measured 10-15 % less CPU per 2 MB answer than 64 KiB reads; a
 * small answer still takes one read into the 16 KiB reserved extent.
 */
#define UPCONN_READ_MAX (256 * 1024)

static void upconn_free(struct upconn *c);
static void idle_sweep_arm(struct upstream *up);
static void upstream_maybe_free(struct upstream *up);

void
upstream_ref(struct upstream *up)
{
    up->refs++;
}

void
upstream_unref(struct upstream *up)
{
    up->refs--;
    upstream_maybe_free(up);
}

static void
upstream_destroy(struct upstream *up)
{
    struct upconn *c;

    while ((c = TAILQ_FIRST(&up->idle)) != NULL) {
        TAILQ_REMOVE(&up->idle, c, link);
        up->nidle--;
        c->up = NULL;
        upconn_free(c);
    }
    if (up->ssl_ctx != NULL) {
        SSL_CTX_free(up->ssl_ctx);
    }
    if (up->idle_sweep != NULL) {
        event_free(up->idle_sweep);
    }
    config_unref(up->cfg_owner);
    free(up->span_attrs);
    free(up->name);
    free(up);
}

static void
upstream_maybe_free(struct upstream *up)
{
    if (up->refs == 0 && up->nbusy == 0 && up->nconnecting == 0) {
        upstream_destroy(up);
    }
}

static SSL_CTX *
make_ssl_ctx(const struct upstream_config *uc, char **cause)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL) {
        *cause = xstrdup("SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (uc->tls_verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (uc->tls_ca_file != NULL) {
            if (SSL_CTX_load_verify_locations(ctx, uc->tls_ca_file, NULL) != 1) {
                /* Name the file as written: a path from ${VAR} may say more than it should. */
                const char *shown = uc->raw[config_key_index(SEC_UPSTREAM, "tls_ca_file")];
                *cause = xasprintf("[upstream %s] tls_ca_file: cannot load %s (no PEM "
                                   "certificate in it?)",
                                   uc->name, shown != NULL ? shown : "(unset)");
                SSL_CTX_free(ctx);
                return NULL;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            *cause = xasprintf("[upstream %s]: cannot load the system CA store", uc->name);
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

static void
breaker_changed(const struct breaker *b, enum breaker_state from, enum breaker_state to,
                const char *why, void *arg)
{
    (void)arg;
    log_warn("upstream %s: circuit %s -> %s: %s", b->name, breaker_state_name(from),
             breaker_state_name(to), why);
}

static void
breaker_config_from(const struct upstream_config *uc, struct breaker_config *bc)
{
    bc->failure_threshold = (uint32_t)uc->failure_threshold;
    bc->open_timeout_ms = uc->open_timeout_ms;
    bc->half_open_max_calls = (uint32_t)uc->half_open_max_calls;
    bc->success_threshold = (uint32_t)uc->success_threshold;
}

static void
close_idle(struct upstream *up)
{
    while (!TAILQ_EMPTY(&up->idle)) {
        struct upconn *c = TAILQ_FIRST(&up->idle);
        TAILQ_REMOVE(&up->idle, c, link);
        up->nidle--;
        c->up = NULL;
        upconn_free(c);
    }
}

/* Not in the current set any more: close its idle connections and pool no others. */
static void
upstream_retire(struct upstream *up)
{
    up->retired = true;
    close_idle(up);
}

static bool
str_same(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/*
 * Whether connections made under a would be wrong under b: the peer they
 * reach or how it is verified. Tightened TLS must not ride a warm
 * connection made without it.
 */
static bool
connection_settings_differ(const struct upstream_config *a, const struct upstream_config *b)
{
    return a->tls_verify != b->tls_verify || !str_same(a->tls_ca_file, b->tls_ca_file) ||
           !str_same(a->tls_server_name, b->tls_server_name) ||
           strcmp(a->url.text, b->url.text) != 0;
}

static bool
set_has(const struct upstream_set *set, const struct upstream *up)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->ups[i] == up) {
            return true;
        }
    }
    return false;
}

struct upstream_set *
upstream_set_new(struct event_base *base, struct evdns_base *dns, struct config *cfg,
                 struct upstream_set *old, char **cause)
{
    struct upstream_set *set;
    SSL_CTX **ctxs = xcalloc(cfg->nupstreams + 1, sizeof(SSL_CTX *));

    /* Build every TLS context first so that a failure changes nothing. */
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (cfg->upstreams[i].url.tls) {
            ctxs[i] = make_ssl_ctx(&cfg->upstreams[i], cause);
            if (ctxs[i] == NULL) {
                for (size_t j = 0; j < i; j++) {
                    if (ctxs[j] != NULL) {
                        SSL_CTX_free(ctxs[j]);
                    }
                }
                free(ctxs);
                return NULL;
            }
        }
    }
    set = xcalloc(1, sizeof(*set));
    set->refs = 1;
    set->balance = (enum balance_mode)cfg->proxy.balance;
    set->rng = util_mono_us() ^ ((uint64_t)(uintptr_t)set << 16) ^ (old ? old->rng : 0);
    set->ups = xcalloc(cfg->nupstreams + 1, sizeof(struct upstream *));
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct upstream_config *uc = &cfg->upstreams[i];
        struct upstream *up = NULL;
        struct breaker_config bc;

        breaker_config_from(uc, &bc);
        for (size_t j = 0; old != NULL && j < old->n; j++) {
            struct upstream *o = old->ups[j];
            if (strcmp(o->name, uc->name) == 0 && strcmp(o->cfg->url.text, uc->url.text) == 0 &&
                !set_has(set, o)) {
                up = o;
                break;
            }
        }
        if (up != NULL) {
            /* Carried over: keep breaker state, counters and pooled connections. */
            if (connection_settings_differ(up->cfg, uc)) {
                /* Idle ones close now; busy ones close when they come back. */
                log_info("upstream %s: connection settings changed; not reusing its "
                         "connections",
                         up->name);
                close_idle(up);
                up->generation++;
            } else if (uc->max_connections < up->cfg->max_connections) {
                close_idle(up); /* busy ones beyond the new limit close as they return */
            }
            config_unref(up->cfg_owner);
            if (up->ssl_ctx != NULL) {
                SSL_CTX_free(up->ssl_ctx);
            }
            breaker_configure(&up->breaker, &bc);
        } else {
            up = xcalloc(1, sizeof(*up));
            up->name = xstrdup(uc->name);
            up->base = base;
            up->dns = dns;
            TAILQ_INIT(&up->idle);
            TAILQ_INIT(&up->waiters);
            breaker_init(&up->breaker, uc->name, &bc);
            up->breaker.on_change = breaker_changed;
            health_status_init(&up->health);
            up->ewma_stamp_ms = util_mono_ms();
        }
        upstream_ref(up); /* the set's */
        up->cfg = uc;
        up->cfg_owner = cfg;
        config_ref(cfg);
        up->ssl_ctx = ctxs[i];
        set->ups[set->n++] = up;
    }
    free(ctxs);
    for (size_t j = 0; old != NULL && j < old->n; j++) {
        if (!set_has(set, old->ups[j])) {
            upstream_retire(old->ups[j]);
        }
    }
    return set;
}

struct upstream_set *
upstream_set_ref(struct upstream_set *set)
{
    set->refs++;
    return set;
}

void
upstream_set_unref(struct upstream_set *set)
{
    if (set == NULL || --set->refs > 0) {
        return;
    }
    for (size_t i = 0; i < set->n; i++) {
        upstream_unref(set->ups[i]);
    }
    free(set->ups);
    free(set);
}

struct upstream *
upstream_find(struct upstream_set *set, const char *name)
{
    for (size_t i = 0; i < set->n; i++) {
        if (strcmp(set->ups[i]->name, name) == 0) {
            return set->ups[i];
        }
    }
    return NULL;
}

bool
upstream_serves(const struct upstream *up, const struct upstream_want *want)
{
    return !want->by_model || model_upstream_serves(up->cfg_owner, up->cfg, want->model, NULL);
}

bool
upstream_routable(const struct upstream *up, const struct upstream_want *want, uint64_t now_ms)
{
    return up->health.healthy && upstream_serves(up, want) && !upstream_cooling(up, now_ms);
}

bool
upstream_callable(const struct upstream *up, const struct upstream_want *want, uint64_t now_ms)
{
    return upstream_routable(up, want, now_ms) && breaker_would_allow(&up->breaker, now_ms);
}

static bool
was_tried(struct upstream *up, struct upstream *const *tried, size_t ntried)
{
    for (size_t i = 0; i < ntried; i++) {
        if (tried[i] == up) {
            return true;
        }
    }
    return false;
}

/* Smooth weighted round-robin (as nginx): even spread, no bursts. */
static struct upstream *
pick_in_priority(struct upstream_set *set, const struct upstream_want *want, int64_t prio,
                 struct upstream *const *tried, size_t ntried, bool skip_tried, uint64_t now_ms)
{
    struct upstream *best = NULL;
    int64_t total = 0;

    for (size_t i = 0; i < set->n; i++) {
        struct upstream *up = set->ups[i];
        if (up->cfg->priority != prio || !upstream_callable(up, want, now_ms)) {
            continue;
        }
        if (skip_tried && was_tried(up, tried, ntried)) {
            continue;
        }
        up->current_weight += up->cfg->weight;
        total += up->cfg->weight;
        if (best == NULL || up->current_weight > best->current_weight) {
            best = up;
        }
    }
    if (best != NULL) {
        best->current_weight -= total;
    }
    return best;
}

size_t
upstream_in_flight(const struct upstream *up)
{
    return up->nbusy + up->nconnecting + up->nwaiters;
}

double
upstream_latency_estimate_us(const struct upstream *up, uint64_t now_ms)
{
    double age = now_ms > up->ewma_stamp_ms ? (double)(now_ms - up->ewma_stamp_ms) : 0.0;

    return up->ewma_us * exp(-age / UPSTREAM_EWMA_DECAY_MS);
}

void
upstream_observe_latency(struct upstream *up, uint64_t rtt_us, bool ok, uint64_t now_ms)
{
    double est = upstream_latency_estimate_us(up, now_ms);
    double sample = (double)rtt_us;
    double age = now_ms > up->ewma_stamp_ms ? (double)(now_ms - up->ewma_stamp_ms) : 0.0;
    double keep = exp(-age / UPSTREAM_EWMA_DECAY_MS);

    if (!ok && sample < 2 * est) {
        sample = 2 * est;
    }
    if (!up->ewma_sampled || sample > est) {
        up->ewma_us = sample; /* peak: a slowdown is believed at once */
    } else {
        /* the older the estimate, the more this sample counts: est = ewma_us * keep */
        up->ewma_us = est + sample * (1.0 - keep);
    }
    up->ewma_sampled = true;
    up->ewma_stamp_ms = now_ms;
}

/* Whether up is a candidate of pick_in_priority's walk. */
static bool
candidate(const struct upstream *up, const struct upstream_want *want, int64_t prio,
          struct upstream *const *tried, size_t ntried, bool skip_tried, uint64_t now_ms)
{
    return up->cfg->priority == prio && upstream_callable(up, want, now_ms) &&
           !(skip_tried && was_tried((struct upstream *)up, tried, ntried));
}

/*
 * Load of up for balance = ewma: latency estimate x (attempts in flight + 1)
 * / weight. neutral_us stands in for the estimate of an upstream with no sample.
 */
static double
upstream_load(const struct upstream *up, double neutral_us, uint64_t now_ms)
{
    double est = up->ewma_sampled ? upstream_latency_estimate_us(up, now_ms) : neutral_us;

    return est * (double)(upstream_in_flight(up) + 1) / (double)up->cfg->weight;
}

/* Power of two choices over the peak-EWMA load (as Finagle and Linkerd balance). */
static struct upstream *
pick_ewma(struct upstream_set *set, const struct upstream_want *want, int64_t prio,
          struct upstream *const *tried, size_t ntried, bool skip_tried, uint64_t now_ms)
{
    size_t k = 0, nsampled = 0, first, second, seen = 0;
    double sum = 0, neutral = UPSTREAM_EWMA_DEFAULT_US;
    struct upstream *a = NULL, *b = NULL;

    for (size_t i = 0; i < set->n; i++) {
        struct upstream *up = set->ups[i];
        if (candidate(up, want, prio, tried, ntried, skip_tried, now_ms)) {
            k++;
            if (up->ewma_sampled) {
                nsampled++;
                sum += upstream_latency_estimate_us(up, now_ms);
            }
        }
    }
    if (k == 0) {
        return NULL;
    }
    if (nsampled > 0) {
        neutral = sum / (double)nsampled; /* a newcomer is taken for average */
    }
    first = k == 1 ? 0 : (size_t)(retry_rand(&set->rng) % k);
    second = k == 1 ? 0 : (size_t)(retry_rand(&set->rng) % (k - 1));
    if (k > 1 && second >= first) {
        second++;
    }
    for (size_t i = 0; i < set->n && (a == NULL || b == NULL); i++) {
        struct upstream *up = set->ups[i];
        if (!candidate(up, want, prio, tried, ntried, skip_tried, now_ms)) {
            continue;
        }
        if (seen == first) {
            a = up;
        }
        if (seen == second) {
            b = up;
        }
        seen++;
    }
    if (upstream_load(b, neutral, now_ms) < upstream_load(a, neutral, now_ms)) {
        return b;
    }
    return a;
}

bool
upstream_any_healthy(const struct upstream_set *set)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->ups[i]->health.healthy) {
            return true;
        }
    }
    return false;
}

struct upstream *
upstream_pick(struct upstream_set *set, const struct upstream_want *want,
              struct upstream *const *tried, size_t ntried, uint64_t now_ms)
{
    for (int pass = 0; pass < 2; pass++) {
        bool skip_tried = pass == 0;
        int64_t prio = -1;
        /* Walk priorities in ascending order without sorting. */
        for (;;) {
            int64_t next = INT64_MAX;
            struct upstream *up;
            for (size_t i = 0; i < set->n; i++) {
                int64_t p = set->ups[i]->cfg->priority;
                if (p > prio && p < next) {
                    next = p;
                }
            }
            if (next == INT64_MAX) {
                break;
            }
            prio = next;
            up = set->balance == BALANCE_EWMA
                     ? pick_ewma(set, want, prio, tried, ntried, skip_tried, now_ms)
                     : pick_in_priority(set, want, prio, tried, ntried, skip_tried, now_ms);
            if (up != NULL) {
                return up;
            }
        }
    }
    return NULL;
}

uint64_t
upstream_next_trial_ms(struct upstream_set *set, uint64_t now_ms)
{
    uint64_t soonest = UINT64_MAX;

    for (size_t i = 0; i < set->n; i++) {
        const struct upstream *up = set->ups[i];
        uint64_t t = breaker_next_trial_ms(&up->breaker, now_ms);
        if (upstream_cooling(up, now_ms)) {
            t = MAX(t, up->cooldown_until_ms);
        }
        if (!up->health.healthy) {
            t = MAX(t, now_ms + up->cfg->health_interval_ms); /* a check may bring it back */
        }
        soonest = MIN(soonest, t);
    }
    return soonest;
}

bool
upstream_any_callable(struct upstream_set *set, const struct upstream_want *want,
                      uint64_t now_ms)
{
    for (size_t i = 0; i < set->n; i++) {
        if (upstream_callable(set->ups[i], want, now_ms)) {
            return true;
        }
    }
    return false;
}

bool
upstream_cooling(const struct upstream *up, uint64_t now_ms)
{
    return now_ms < up->cooldown_until_ms;
}

void
upstream_cooldown(struct upstream *up, uint64_t until_ms)
{
    if (until_ms > up->cooldown_until_ms) {
        up->cooldown_until_ms = until_ms;
    }
}

/* ---- connections ------------------------------------------------------- */

static void
upconn_free(struct upconn *c)
{
    if (c->connect_timer != NULL) {
        event_free(c->connect_timer);
    }
    if (c->bev != NULL) {
        /* Plain connections' bufferevents do not own their socket (see plain_takeover). */
        evutil_socket_t fd = c->up_tls ? -1 : bufferevent_getfd(c->bev);
        bufferevent_free(c->bev);
        if (fd >= 0) {
            evutil_closesocket(fd);
        }
    }
    sockio_cancel(&c->flush);
    if (c->rev != NULL) {
        event_free(c->rev);
        event_free(c->wev);
        event_free(c->defer_ev);
        evbuffer_free(c->in);
        evbuffer_free(c->out);
        evutil_closesocket(c->fd);
    }
    free(c);
}

struct evbuffer *
upconn_input(struct upconn *c)
{
    return c->bev != NULL ? bufferevent_get_input(c->bev) : c->in;
}

struct evbuffer *
upconn_output(struct upconn *c)
{
    return c->bev != NULL ? bufferevent_get_output(c->bev) : c->out;
}

/*
 * Reads on, without a timeout: the call has its attempt timer and an idle
 * connection its sweep. Already on is the common case and costs nothing.
 */
static void
plain_read_on(struct upconn *c)
{
    if (!c->read_armed) {
        event_add(c->rev, NULL);
        c->read_armed = true;
    }
}

void
upconn_pause_read(struct upconn *c, bool paused)
{
    if (c->bev != NULL) {
        if (paused) {
            bufferevent_disable(c->bev, EV_READ);
        } else {
            bufferevent_enable(c->bev, EV_READ);
        }
    } else if (paused) {
        event_del(c->rev);
        c->read_armed = false;
    } else {
        plain_read_on(c);
    }
}

/* Report an error from a fresh callback, never from inside the caller's stack. */
static void
defer_error(struct upconn *c, const char *what)
{
    snprintf(c->error, sizeof(c->error), "%s: %s", what, strerror(errno));
    event_active(c->defer_ev, 0, 0);
}

static void
upconn_flush_now(struct sockio_deferred *d)
{
    struct upconn *c = (struct upconn *)((char *)d - offsetof(struct upconn, flush));
    /* queued by upconn_flush only while EV_WRITE is not armed; only this arms it */
    ssize_t left = sockio_write(c->fd, c->out);
    if (left < 0) {
        defer_error(c, "write");
    } else if (left > 0) {
        event_add(c->wev, NULL); /* call_timeout bounds the wait */
    }
}

void
upconn_flush(struct upconn *c)
{
    if (c->bev != NULL || event_pending(c->wev, EV_WRITE, NULL)) {
        return; /* TLS writes itself; a blocked plain write resumes in order */
    }
    sockio_defer(&c->flush);
}

static void
drop_idle(struct upconn *c)
{
    struct upstream *up = c->up;

    TAILQ_REMOVE(&up->idle, c, link);
    up->nidle--;
    upconn_free(c);
    upstream_maybe_free(up);
}

/*
 * Plain idle connections time out by a sweep once a second (or every
 * idle_timeout when shorter) rather than a timeout on each read event:
 * re-arming that timeout on every release and acquire was two timer-heap
 * changes per request. The idle list is in order of release, so the sweep
 * starts from its oldest end and stops at the first young one. A connection
 * lives idle_timeout to one sweep interval more.
 */
#define IDLE_SWEEP_MS 1000

static void
idle_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *up = arg;
    uint64_t now = util_mono_ms();
    struct upconn *c;

    (void)fd;
    (void)what;
    up->refs++; /* dropping connections must not free up under us */
    while ((c = TAILQ_LAST(&up->idle, upconn_list)) != NULL) {
        if (c->bev != NULL) {
            break; /* TLS: its bufferevent times itself out; older plain ones wait a turn */
        }
        if (now - c->idle_since_ms < up->cfg->idle_timeout_ms) {
            break;
        }
        drop_idle(c);
    }
    up->refs--;
    if (!TAILQ_EMPTY(&up->idle)) {
        idle_sweep_arm(up);
    }
    upstream_maybe_free(up);
}

static void
idle_sweep_arm(struct upstream *up)
{
    struct timeval tv;

    if (up->retired) {
        return; /* its connections are not kept */
    }
    tv = util_ms_to_tv(MIN(IDLE_SWEEP_MS, up->cfg->idle_timeout_ms));
    if (up->idle_sweep == NULL) {
        up->idle_sweep = evtimer_new(up->base, idle_sweep_cb, up);
        if (up->idle_sweep == NULL) {
            fatal("out of memory setting up the idle sweep");
        }
    }
    if (!evtimer_pending(up->idle_sweep, NULL)) {
        evtimer_add(up->idle_sweep, &tv);
    }
}

static void
plain_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *c = arg;
    ssize_t n;

    if (c->state == UPCONN_IDLE) {
        /* Idle too long, closed by the peer, or unsolicited bytes: not reusable. */
        drop_idle(c);
        return;
    }
    if (what & EV_TIMEOUT) {
        return;
    }
    n = sockio_read(fd, c->in, UPCONN_READ_MAX);
    if (n == -2) {
        return;
    }
    if (n == 0) {
        snprintf(c->error, sizeof(c->error), "connection closed by upstream");
        c->cb(c, UPCONN_EOF, c->arg);
        return;
    }
    if (n < 0) {
        snprintf(c->error, sizeof(c->error), "%s", strerror(errno));
        c->cb(c, UPCONN_ERROR, c->arg);
        return;
    }
    c->cb(c, UPCONN_READ, c->arg);
}

static void
plain_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *c = arg;
    ssize_t left = sockio_write(fd, c->out);

    (void)what;
    if (left < 0) {
        snprintf(c->error, sizeof(c->error), "write: %s", strerror(errno));
        event_del(c->wev);
        if (c->state == UPCONN_BUSY) {
            c->cb(c, UPCONN_ERROR, c->arg);
        }
        return;
    }
    if (left == 0) {
        event_del(c->wev);
    }
}

static void
defer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *c = arg;

    (void)fd;
    (void)what;
    if (c->state == UPCONN_BUSY) {
        c->cb(c, UPCONN_ERROR, c->arg);
    }
}

/*
 * A plain connection is up: leave the bufferevent (it only connected us) for
 * direct reads and writes on the socket.
 */
static void
plain_takeover(struct upconn *c)
{
    struct event_base *base = c->up->base;

    c->fd = bufferevent_getfd(c->bev);
    bufferevent_free(c->bev); /* created without BEV_OPT_CLOSE_ON_FREE: the socket stays */
    c->bev = NULL;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->rev = event_new(base, c->fd, EV_READ | EV_PERSIST, plain_read_cb, c);
    c->wev = event_new(base, c->fd, EV_WRITE | EV_PERSIST, plain_write_cb, c);
    c->defer_ev = event_new(base, -1, 0, defer_cb, c);
    c->flush.fn = upconn_flush_now;
    if (c->in == NULL || c->out == NULL || c->rev == NULL || c->wev == NULL ||
        c->defer_ev == NULL) {
        fatal("out of memory setting up an upstream connection");
    }
    {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    plain_read_on(c);
}

/*
 * Name why a TLS connection failed: the certificate, a peer that does not
 * speak TLS, the peer closing or resetting mid-handshake, or OpenSSL's own
 * reason. e is the first error taken from the connection's queue (0: none).
 */
static void
fill_ssl_error(struct upconn *c, unsigned long e, int sock_err, bool eof)
{
    long verify = X509_V_OK;
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);

    if (ssl != NULL) {
        verify = SSL_get_verify_result(ssl);
    }
    if (verify != X509_V_OK) {
        snprintf(c->error, sizeof(c->error), "TLS: certificate verify failed: %s",
                 X509_verify_cert_error_string(verify));
    } else if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL &&
               (ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER ||
                ERR_GET_REASON(e) == SSL_R_PACKET_LENGTH_TOO_LONG ||
                ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST)) {
        snprintf(c->error, sizeof(c->error), "TLS: the upstream does not speak TLS (%s)",
                 ERR_reason_error_string(e));
    } else if (e != 0 && ERR_reason_error_string(e) != NULL) {
        snprintf(c->error, sizeof(c->error), "TLS handshake: %s", ERR_reason_error_string(e));
    } else if (eof && sock_err != ECONNRESET) {
        snprintf(c->error, sizeof(c->error), "TLS handshake: closed by the upstream");
    } else if (sock_err != 0) {
        snprintf(c->error, sizeof(c->error), "TLS handshake: %s",
                 evutil_socket_error_to_string(sock_err));
    } else {
        snprintf(c->error, sizeof(c->error), "TLS handshake failed");
    }
    c->tls_failed = true;
    while (bufferevent_get_openssl_error(c->bev) != 0) {
        /* drain the queue so errors never leak into the next connection */
    }
}

/* A TLS connection whose TCP connect is done: OpenSSL has left its initial state. */
static bool
handshake_started(struct upconn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);

    return ssl != NULL && !SSL_in_before(ssl);
}

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct upconn *c = arg;

    (void)bev;
    if (c->state == UPCONN_IDLE) {
        /* Unsolicited bytes on an idle connection: it cannot be reused. */
        struct upstream *up = c->up;
        TAILQ_REMOVE(&up->idle, c, link);
        up->nidle--;
        upconn_free(c);
        upstream_maybe_free(up);
        return;
    }
    c->cb(c, UPCONN_READ, c->arg);
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct upconn *c = arg;

    (void)bev;
    if (c->state == UPCONN_BUSY) {
        c->cb(c, UPCONN_DRAINED, c->arg);
    }
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct upconn *c = arg;
    struct upstream *up = c->up;

    (void)bev;
    if (c->state == UPCONN_IDLE) {
        TAILQ_REMOVE(&up->idle, c, link);
        up->nidle--;
        upconn_free(c);
        upstream_maybe_free(up);
        return;
    }
    if (what & BEV_EVENT_CONNECTED) {
        if (c->connect_timer != NULL) {
            event_free(c->connect_timer);
            c->connect_timer = NULL;
        }
        if (!c->up_tls) {
            plain_takeover(c);
        }
        up->nconnecting--;
        up->nbusy++;
        c->state = UPCONN_BUSY;
        c->cb(c, UPCONN_READY, c->arg);
        return;
    }
    if (c->up_tls && c->state == UPCONN_CONNECTING && handshake_started(c) &&
        (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
        /* TCP is up and the handshake under way: whatever ends it is a TLS failure. */
        unsigned long e = bufferevent_get_openssl_error(c->bev);
        fill_ssl_error(c, e, EVUTIL_SOCKET_ERROR(), (what & BEV_EVENT_EOF) != 0);
        c->cb(c, UPCONN_ERROR, c->arg);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        snprintf(c->error, sizeof(c->error), "connection closed by upstream");
        c->cb(c, UPCONN_EOF, c->arg);
        return;
    }
    if (what & BEV_EVENT_ERROR) {
        int dns_err = bufferevent_socket_get_dns_error(c->bev);
        unsigned long e = c->up_tls ? bufferevent_get_openssl_error(c->bev) : 0;
        if (dns_err != 0) {
            snprintf(c->error, sizeof(c->error), "DNS: %s", evutil_gai_strerror(dns_err));
        } else if (e != 0) {
            fill_ssl_error(c, e, EVUTIL_SOCKET_ERROR(), false);
        } else if (EVUTIL_SOCKET_ERROR() != 0) {
            snprintf(c->error, sizeof(c->error), "%s",
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        } else if (c->up_tls) {
            fill_ssl_error(c, 0, 0, false);
        } else {
            snprintf(c->error, sizeof(c->error), "socket error");
        }
        c->cb(c, UPCONN_ERROR, c->arg);
    }
}

static void
connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *c = arg;

    (void)fd;
    (void)what;
    snprintf(c->error, sizeof(c->error), "connect timed out");
    c->cb(c, UPCONN_TIMEOUT, c->arg);
}

SSL *
upstream_ssl_new(struct upstream *up, const char **cause)
{
    const struct upstream_config *uc = up->cfg;
    SSL *ssl = SSL_new(up->ssl_ctx);
    const char *sni = uc->tls_server_name ? uc->tls_server_name : uc->url.host;

    if (ssl == NULL) {
        *cause = "SSL_new failed";
        return NULL;
    }
    /* SNI only for names, never for literal addresses (RFC 6066). */
    if (strspn(sni, "0123456789.") != strlen(sni) && strchr(sni, ':') == NULL) {
        SSL_set_tlsext_host_name(ssl, sni);
    }
    if (uc->tls_verify) {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(ssl, sni) != 1) {
            *cause = "cannot set TLS host name";
            SSL_free(ssl);
            return NULL;
        }
    }
    return ssl;
}

static struct upconn *
start_connect(struct upstream *up, upconn_cb cb, void *arg, const char **cause)
{
    struct upconn *c = xcalloc(1, sizeof(*c));
    struct event_base *base = up->base;
    const struct upstream_config *uc = up->cfg;
    struct timeval tv;

    c->up = up;
    c->cb = cb;
    c->arg = arg;
    c->state = UPCONN_CONNECTING;
    c->generation = up->generation;
    c->up_tls = uc->url.tls;
    c->fd = -1;
    if (uc->url.tls) {
        SSL *ssl = upstream_ssl_new(up, cause);
        if (ssl == NULL) {
            free(c);
            return NULL;
        }
        c->bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (c->bev != NULL) {
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        }
    } else {
        /* Only connects: plain_takeover keeps the socket when it frees this. */
        c->bev = bufferevent_socket_new(base, -1, 0);
    }
    if (c->bev == NULL) {
        *cause = "cannot create connection";
        free(c);
        return NULL;
    }
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->connect_timer = evtimer_new(base, connect_timeout_cb, c);
    tv = util_ms_to_tv(uc->connect_timeout_ms);
    evtimer_add(c->connect_timer, &tv);
    up->nconnecting++;
    /* Non-blocking: numeric hosts connect at once, names go through evdns. */
    if (bufferevent_socket_connect_hostname(c->bev, up->dns, AF_UNSPEC, uc->url.host,
                                            uc->url.port) < 0) {
        up->nconnecting--;
        upconn_free(c);
        *cause = "connect failed";
        return NULL;
    }
    return c;
}

int
upstream_acquire(struct upstream *up, struct upstream_waiter *w, upconn_cb cb, void *arg,
                 struct upconn **out, const char **cause)
{
    struct upconn *c = TAILQ_FIRST(&up->idle);
    /* max_connections may have been lowered by a reload: busy ones count first. */
    bool room = (int64_t)(up->nbusy + up->nconnecting) < up->cfg->max_connections;

    *out = NULL;
    if (c != NULL && room) {
        TAILQ_REMOVE(&up->idle, c, link);
        up->nidle--;
        up->nbusy++;
        c->state = UPCONN_BUSY;
        c->cb = cb;
        c->arg = arg;
        if (c->bev != NULL) {
            bufferevent_set_timeouts(c->bev, NULL, NULL);
        } else {
            plain_read_on(c);
        }
        *out = c;
        return 1;
    }
    if (room) {
        c = start_connect(up, cb, arg, cause);
        if (c == NULL) {
            return -1;
        }
        *out = c;
        return 0;
    }
    w->cb = cb;
    w->arg = arg;
    w->queued = true;
    TAILQ_INSERT_TAIL(&up->waiters, w, link);
    up->nwaiters++;
    return 0;
}

void
upstream_cancel_wait(struct upstream *up, struct upstream_waiter *w)
{
    if (!w->queued) {
        return;
    }
    w->queued = false;
    TAILQ_REMOVE(&up->waiters, w, link);
    up->nwaiters--;
}

/* A slot freed: hand it to the first waiter, as a pooled or a new connection. */
static void
serve_waiter(struct upstream *up)
{
    struct upstream_waiter *w = TAILQ_FIRST(&up->waiters);
    struct upconn *c;
    const char *cause = NULL;
    int rc;

    if (w == NULL) {
        return; /* a retired upstream still serves the requests that hold its set */
    }
    upstream_cancel_wait(up, w);
    rc = upstream_acquire(up, w, w->cb, w->arg, &c, &cause);
    if (rc < 0) {
        /* Report through the waiter's callback with no connection. */
        *w->slot = NULL;
        w->cb(NULL, UPCONN_ERROR, w->arg);
        return;
    }
    *w->slot = c;
    if (rc == 1) {
        w->cb(c, UPCONN_READY, w->arg);
    }
}

void
upstream_release(struct upconn *c, bool reusable)
{
    struct upstream *up = c->up;

    if (c->state == UPCONN_CONNECTING) {
        up->nconnecting--;
        reusable = false;
    } else {
        up->nbusy--;
    }
    if (c->connect_timer != NULL) {
        event_free(c->connect_timer);
        c->connect_timer = NULL;
    }
    /* Pool it only within max_connections (a reload may have lowered it) and if made as now. */
    if (reusable && !up->retired && c->generation == up->generation &&
        (int64_t)(up->nbusy + up->nconnecting + up->nidle) < up->cfg->max_connections &&
        evbuffer_get_length(upconn_input(c)) == 0) {
        c->state = UPCONN_IDLE;
        c->reused = true;
        c->cb = NULL;
        c->arg = NULL;
        /* Servers drop idle keep-alive connections; close ours first. */
        if (c->bev != NULL) {
            struct timeval idle = util_ms_to_tv(up->cfg->idle_timeout_ms);
            bufferevent_set_timeouts(c->bev, &idle, NULL);
            bufferevent_enable(c->bev, EV_READ);
        } else {
            /* reads stay on (a close or stray bytes drop it); the sweep times it out */
            plain_read_on(c);
            c->idle_since_ms = util_mono_ms();
            idle_sweep_arm(up);
        }
        TAILQ_INSERT_HEAD(&up->idle, c, link);
        up->nidle++;
        /* Most recently used first: warm connections, and the rest age out. */
    } else {
        upconn_free(c);
    }
    serve_waiter(up);
    upstream_maybe_free(up);
}
