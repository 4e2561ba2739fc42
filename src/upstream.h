/*
 * upstream.h - the configured upstreams: failover order, circuit breakers,
 * TLS contexts and the pool of keep-alive connections to each.
 *
 * All of it lives on the event-loop thread.
 */
#ifndef AKOSHA_UPSTREAM_H
#define AKOSHA_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "sockio.h"

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "breaker.h"
#include "config.h"
#include "health.h"

struct upstream;
struct upconn;

/* What a connection tells its owner. */
enum upconn_event {
    UPCONN_READY,    /* connected (and TLS done): the owner may write */
    UPCONN_READ,     /* bytes arrived in upconn_input() */
    UPCONN_DRAINED,  /* output fully written */
    UPCONN_EOF,      /* peer closed */
    UPCONN_ERROR,    /* connect, TLS or socket error; cause in upconn_error() */
    UPCONN_TIMEOUT,  /* connect_timeout elapsed */
};

typedef void (*upconn_cb)(struct upconn *c, enum upconn_event ev, void *arg);

enum upconn_state {
    UPCONN_CONNECTING,
    UPCONN_IDLE, /* in the pool */
    UPCONN_BUSY, /* lent to an attempt */
};

struct upconn {
    struct upstream *up;
    struct bufferevent *bev; /* TLS connections, and plain ones while connecting */
    bool up_tls;
    /* plain connections once up: direct reads and writes (sockio.c) */
    evutil_socket_t fd;
    struct evbuffer *in, *out;
    struct event *rev, *wev, *defer_ev;
    struct sockio_deferred flush; /* queued request goes out at the end of the loop turn */
    enum upconn_state state;
    bool read_armed;        /* plain: rev is added (reads on, no timeout) */
    uint64_t idle_since_ms; /* when it joined the idle list (idle_sweep) */
    bool reused; /* served a request before */
    unsigned generation; /* the upstream's connection settings it was made with */
    bool tls_failed;
    char error[128];
    upconn_cb cb;
    void *arg;
    struct event *connect_timer;
    TAILQ_ENTRY(upconn) link;
};
TAILQ_HEAD(upconn_list, upconn);

/* An attempt waiting for a connection slot; see upstream_acquire. */
struct upstream_waiter {
    upconn_cb cb;
    void *arg;
    struct upconn **slot;
    bool queued; /* on the upstream's wait list; only upstream.c changes it */
    TAILQ_ENTRY(upstream_waiter) link;
};
TAILQ_HEAD(waiter_list, upstream_waiter);

struct upstream_stats {
    uint64_t requests;  /* attempts sent */
    uint64_t successes;
    uint64_t failures;
    uint64_t client_errors;
    uint64_t pool_waits; /* attempts that waited for a connection slot */
};

struct trace_attr_block; /* trace.h */

/*
 * One upstream, shared by every set that names it: a reload keeps an
 * upstream whose name and url are unchanged (breaker, pool and counters).
 * refs counts the sets holding it and the attempts and connections using it.
 */
struct upstream {
    char *name;
    struct event_base *base;
    struct evdns_base *dns;
    const struct upstream_config *cfg; /* owned by cfg_owner */
    struct config *cfg_owner;          /* reference held (config_ref) */
    struct breaker breaker;
    SSL_CTX *ssl_ctx; /* https only */
    int refs;         /* sets holding it, attempts using it */
    bool retired;     /* not in the current set: its connections are not pooled */
    uint64_t cooldown_until_ms; /* monotonic: skipped by routing until then (Retry-After) */
    unsigned generation; /* bumped when a reload changes how connections are made */
    int64_t current_weight;
    /*
     * balance = ewma: peak-EWMA of attempt latency in microseconds, decayed
     * toward zero with UPSTREAM_EWMA_DECAY_MS from ewma_stamp_ms (monotonic).
     */
    double ewma_us;
    uint64_t ewma_stamp_ms;
    bool ewma_sampled; /* false: no attempt finished yet; routing uses a neutral estimate */
    struct health_status health;     /* health.c's; routing reads health.healthy */
    struct health_checker *checker;  /* owned by health.c; NULL when not checked */
    struct upconn_list idle; /* most recently used first */
    struct event *idle_sweep; /* closes plain connections idle past the limit */
    size_t nidle, nbusy, nconnecting;
    struct waiter_list waiters;
    size_t nwaiters;
    struct upstream_stats stats;
    /*
     * observe.c's: the attributes every CLIENT span to this upstream carries
     * (address, port, name), encoded at its first traced attempt; a reload
     * keeps an upstream only with the same name and URL. Plain memory, freed
     * with the upstream; NULL until then.
     */
    struct trace_attr_block *span_attrs;
};

/*
 * The upstreams of one configuration, in config order. Reference counted:
 * the server holds the current set, and each request holds the set it
 * started with, so a reload never changes the upstreams a request in flight
 * chooses from, nor frees one it has tried.
 */
struct upstream_set {
    struct upstream **ups;
    size_t n;
    int refs;
    enum balance_mode balance; /* [proxy] balance of the config it was built from */
    uint64_t rng;              /* power of two choices */
};

/* Time constant of the latency EWMA: a sample weighs 1 - e^(-dt/10 s) against the estimate. */
#define UPSTREAM_EWMA_DECAY_MS 10000.0
/* The estimate of an upstream with no sample when no other upstream has one either. */
#define UPSTREAM_EWMA_DEFAULT_US 10000.0

/*
 * Build the set for cfg, with one reference for the caller. Upstreams of old
 * (may be NULL) whose name and url are unchanged are shared with it, breaker
 * and pool included; the rest of old are retired (their idle connections
 * closed, none pooled again), though old keeps them for the requests that
 * hold it. Returns NULL with *cause on failure (TLS setup), old unchanged.
 */
struct upstream_set *upstream_set_new(struct event_base *base, struct evdns_base *dns,
                                      struct config *cfg, struct upstream_set *old, char **cause);
struct upstream_set *upstream_set_ref(struct upstream_set *set);
void upstream_set_unref(struct upstream_set *set);
struct upstream *upstream_find(struct upstream_set *set, const char *name);

/* Which upstreams a request may use: any (by_model false), or those serving model. */
struct upstream_want {
    bool by_model;
    const char *model; /* canonical; NULL: only upstreams serving any model */
};
bool upstream_serves(const struct upstream *up, const struct upstream_want *want);
/*
 * Whether want may be routed to up at now_ms: it serves the model, is not
 * cooling down and has not failed its health checks (when it has checks).
 */
bool upstream_routable(const struct upstream *up, const struct upstream_want *want,
                       uint64_t now_ms);
/* upstream_routable, and its breaker would let a call through (without committing it). */
bool upstream_callable(const struct upstream *up, const struct upstream_want *want,
                       uint64_t now_ms);

/*
 * Choose the next upstream for an attempt, among those want allows: lowest
 * priority first; within a priority smooth weighted round-robin (balance =
 * weighted) or the cheaper of two random upstreams by upstream_load (ewma);
 * skipping unhealthy upstreams, those upstreams whose breaker
 * would reject or that are cooling down after a long Retry-After and, when
 * possible, those in tried[] (ntried entries). Does not commit the breaker.
 * NULL when no upstream may be called.
 */
struct upstream *upstream_pick(struct upstream_set *set, const struct upstream_want *want,
                               struct upstream *const *tried, size_t ntried, uint64_t now_ms);
/* Soonest monotonic ms at which some upstream may be called (breaker and cooldown). */
uint64_t upstream_next_trial_ms(struct upstream_set *set, uint64_t now_ms);
/* Whether some upstream of set that want allows may be called now (breaker and cooldown). */
bool upstream_any_callable(struct upstream_set *set, const struct upstream_want *want,
                           uint64_t now_ms);
/* Whether some upstream of set is healthy (unchecked ones count as healthy). */
bool upstream_any_healthy(const struct upstream_set *set);

/*
 * An attempt on up ended after rtt_us: fold it into the peak-EWMA. A slower
 * sample than the estimate replaces it at once; faster ones pull it down
 * with the decay. A failed attempt (ok false) counts as at least twice the
 * estimate, so an upstream failing fast never looks fast.
 */
void upstream_observe_latency(struct upstream *up, uint64_t rtt_us, bool ok, uint64_t now_ms);
/* The latency estimate at now_ms in microseconds, decayed; 0 before any sample. */
double upstream_latency_estimate_us(const struct upstream *up, uint64_t now_ms);
/* Attempts using up now: connections lent or being made, and attempts waiting for one. */
size_t upstream_in_flight(const struct upstream *up);

/*
 * A TLS session for a new connection to up (https only): SNI and, with
 * tls_verify, the host name to check. Caller owns it. NULL with *cause.
 */
SSL *upstream_ssl_new(struct upstream *up, const char **cause);

/* Whether up is cooling down at now_ms (see upstream_cooldown). */
bool upstream_cooling(const struct upstream *up, uint64_t now_ms);
/* Skip up in routing until until_ms (monotonic): it asked for a pause we will not wait out. */
void upstream_cooldown(struct upstream *up, uint64_t until_ms);

void upstream_ref(struct upstream *up);
void upstream_unref(struct upstream *up);

/*
 * Get a connection: an idle pooled one (*out set, returns 1, the caller may
 * write at once), a new connect under way (*out set, returns 0, cb gets
 * UPCONN_READY), or, at max_connections, w is queued (returns 0, *out NULL;
 * *w->slot and cb(UPCONN_READY) when a connection frees). -1 with *cause on
 * immediate failure.
 */
int upstream_acquire(struct upstream *up, struct upstream_waiter *w, upconn_cb cb, void *arg,
                     struct upconn **out, const char **cause);
/* Leave the wait list; nothing when w is not queued (a slot already served it). */
void upstream_cancel_wait(struct upstream *up, struct upstream_waiter *w);
/* Give the connection back: reusable → pooled; otherwise closed. */
void upstream_release(struct upconn *c, bool reusable);

struct evbuffer *upconn_input(struct upconn *c);
struct evbuffer *upconn_output(struct upconn *c);
/* Send queued output now (plain); TLS connections write by themselves. */
void upconn_flush(struct upconn *c);
void upconn_pause_read(struct upconn *c, bool paused);

#endif
