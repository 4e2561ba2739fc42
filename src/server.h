/*
 * server.h - the runtime: event loop, listeners, the current config and
 * upstream set, signals, reload and drain. One per process.
 */
#ifndef AKOSHA_SERVER_H
#define AKOSHA_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "config.h"
#include "retry.h"
#include "upstream.h"

struct client;
TAILQ_HEAD(client_list, client);
struct worker_pool;
struct reload_job;
struct accesslog;

/*
 * A listener whose accept(2) failed for want of descriptors or memory is
 * paused for pause_ms (doubling while it keeps failing, up to a second)
 * instead of spinning on a socket that stays readable; failures are counted
 * and reported at most once per report interval.
 */
struct accept_pause {
    struct server *srv;
    bool admin;           /* which listener: srv->admin_listener, else srv->listener */
    struct event *resume; /* re-enables the listener */
    unsigned pause_ms;    /* 0: not backing off */
    uint64_t failures;    /* since the last report */
    uint64_t reported_ms; /* monotonic: last failure report, 0 before the first */
    uint64_t resumed_ms;  /* monotonic: last "accepting again", 0 before the first */
    int last_error;
};

struct server {
    struct event_base *base;
    struct evdns_base *dns;
    struct config *cfg; /* current; reference held */
    struct upstream_set *ups;
    struct evconnlistener *listener;
    struct evconnlistener *admin_listener;
    struct event *sig_events[4];
    struct event *drain_timer;
    struct event *reload_event; /* the reload thread's result is ready */
    int reload_efd;             /* eventfd the reload thread writes */
    struct reload_job *reload;  /* the parse under way, or NULL */
    bool reload_again;          /* a SIGHUP came during it: reload once more after */
    struct accept_pause proxy_pause, admin_pause;
    struct client_list clients;
    size_t nclients;
    size_t in_flight; /* requests between head and answer */
    bool draining;
    bool ready;
    int exit_code;
    struct retry_budget budget;
    struct worker_pool *workers;
    struct cache *cache;    /* the memory tier of the embedding cache, NULL when no cache */
    struct cache_redis *redis; /* the shared tier, NULL when [cache] redis is unset */
    struct accesslog *alog; /* never NULL once running; takes no line while access_log = off */
    uint64_t started_mono_ms;
    int64_t started_wall_ms;
    uint64_t rng;
    uint64_t reloads_ok, reloads_failed;
    /*
     * Set by server_init; proxy.c calls it each time a client is freed, so
     * a drain can finish. The traffic side reports up through this hook
     * and calls nothing in server.c.
     */
    void (*client_gone)(struct server *srv);
};

/* Start-up: bind listeners, build upstreams; fatal on failure. Takes cfg's reference. */
void server_init(struct server *srv, struct config *cfg);
int server_run(struct server *srv);
void server_free(struct server *srv);

#endif
