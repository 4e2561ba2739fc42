/*
 * server.c - listeners, signals, reload and drain.
 *
 * A SIGHUP reload reads and parses the file on a short-lived thread (file
 * I/O never runs on the loop), then applies it on the loop thread all or
 * nothing: new listeners are bound and TLS contexts built before anything is
 * swapped, so a failure leaves the old config serving.
 */
#include "server.h"
#include "sockio.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "admin.h"
#include "fallback.h"
#include "log.h"
#include "notify.h"
#include "observe.h"
#include "proxy.h"
#include "util.h"

static void
proxy_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                void *arg)
{
    (void)l;
    proxy_accept(arg, fd, sa, salen);
}

static void
admin_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                void *arg)
{
    (void)l;
    admin_accept(arg, fd, sa, (socklen_t)salen);
}

static void
accept_error_cb(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();

    (void)arg;
    (void)l;
    /* EMFILE and friends: the listener keeps going; say why once per event. */
    log_error("accept: %s", evutil_socket_error_to_string(err));
}

/*
 * Bind a listener. A unix socket is created with no permissions at all (the
 * umask is 0777 for the bind), then given mode: what callers may do does not
 * depend on the umask akosha runs under (the unit's UMask=0077 would leave
 * only the service's own user able to connect).
 */
static struct evconnlistener *
bind_listener(struct server *srv, const struct listen_addr *la, int mode, evconnlistener_cb cb,
              char **cause)
{
    struct evconnlistener *l;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    const struct sockaddr_un *sun = (const struct sockaddr_un *)&la->ss;
    mode_t old_umask = 0;
    int bind_errno;

    if (la->is_unix) {
        struct stat st;
        /* Remove a stale socket file, never another kind of file. */
        if (lstat(sun->sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            unlink(sun->sun_path);
        }
        /* Only the loop thread creates files; the umask is back before anyone else could. */
        old_umask = umask(0777);
    }
    l = evconnlistener_new_bind(srv->base, cb, srv, flags, 1024, (const struct sockaddr *)&la->ss,
                                (int)la->sslen);
    bind_errno = errno;
    if (la->is_unix) {
        umask(old_umask);
    }
    if (l == NULL) {
        *cause = xasprintf("cannot listen on %s: %s", la->text, strerror(bind_errno));
        return NULL;
    }
    if (la->is_unix && chmod(sun->sun_path, (mode_t)mode) < 0) {
        *cause =
            xasprintf("cannot set mode %04o on %s: %s", (unsigned)mode, la->text, strerror(errno));
        evconnlistener_free(l);
        return NULL;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    return l;
}

/* A reload that keeps a unix listener may still change its mode. */
static void
apply_listen_mode(const struct listen_addr *la, int mode)
{
    const struct sockaddr_un *sun = (const struct sockaddr_un *)&la->ss;

    if (la->is_unix && chmod(sun->sun_path, (mode_t)mode) < 0) {
        log_warn("reload: cannot set mode %04o on %s: %s", (unsigned)mode, la->text,
                 strerror(errno));
    }
}

static bool
same_listen(const struct listen_addr *a, const struct listen_addr *b)
{
    return strcmp(a->text, b->text) == 0;
}

/* ---- learned dimensions ------------------------------------------------ */

/* The model's entry, or NULL. Call with learned_lock held. */
static struct learned_dim *
learned_find(struct server *srv, const char *model)
{
    for (size_t i = 0; i < srv->nlearned; i++) {
        if (strcmp(srv->learned[i].model, model) == 0) {
            return &srv->learned[i];
        }
    }
    return NULL;
}

unsigned
server_learned_dim(struct server *srv, const char *model)
{
    const struct learned_dim *l;
    unsigned d;

    pthread_mutex_lock(&srv->learned_lock);
    l = learned_find(srv, model);
    d = l != NULL ? l->dimensions : 0;
    pthread_mutex_unlock(&srv->learned_lock);
    return d;
}

void
server_learn_dim(struct server *srv, const char *model, unsigned dim)
{
    struct learned_dim *l;

    if (strlen(model) >= sizeof(srv->learned[0].model) || dim == 0 || dim > 65536) {
        return;
    }
    pthread_mutex_lock(&srv->learned_lock);
    l = learned_find(srv, model);
    if (l == NULL) {
        if (srv->nlearned == LEARNED_DIMS_MAX) {
            /* bounded: the newest model replaces the last slot */
            l = &srv->learned[srv->nlearned - 1];
        } else {
            l = &srv->learned[srv->nlearned++];
        }
        snprintf(l->model, sizeof(l->model), "%s", model);
    }
    if (l->dimensions != dim) {
        log_info("model '%s': learned %u dimensions from an upstream answer", model, dim);
    }
    l->dimensions = dim;
    l->checked_ms = util_mono_ms();
    pthread_mutex_unlock(&srv->learned_lock);
}

bool
server_dim_due(struct server *srv, const char *model, uint64_t now_ms)
{
    struct learned_dim *l;
    bool due;

    pthread_mutex_lock(&srv->learned_lock);
    l = learned_find(srv, model);
    due = l == NULL || now_ms - l->checked_ms >= LEARNED_DIM_REFRESH_MS;
    if (l != NULL && due) {
        l->checked_ms = now_ms;
    }
    pthread_mutex_unlock(&srv->learned_lock);
    return due;
}

/* ---- status ------------------------------------------------------------ */

static void
send_status(struct server *srv)
{
    struct buf b;

    buf_init(&b);
    buf_printf(&b, "STATUS=%s; fallback %s; ", srv->draining ? "draining" : "serving",
               srv->cfg->fallback.mode == FALLBACK_OFF      ? "off"
               : srv->cfg->fallback.mode == FALLBACK_ALWAYS ? "always"
                                                            : "auto");
    if (srv->ups->n == 0) {
        buf_puts(&b, "no upstreams (embedded fallback serves)");
    }
    for (size_t i = 0; i < srv->ups->n; i++) {
        struct upstream *up = srv->ups->ups[i];
        buf_printf(&b, "%s%s=%s", i ? ", " : "", up->name, breaker_state_name(up->breaker.state));
    }
    notify_send(b.data);
    buf_free(&b);
}

/* ---- reload ------------------------------------------------------------ */

static void *
reload_thread(void *arg)
{
    struct server *srv = arg;

    uint64_t one = 1;

    srv->reload_result = config_load(srv->cfg->path, &srv->reload_errors, NULL);
    /* Wake the loop; the eventfd keeps libevent free of cross-thread locking. */
    if (write(srv->reload_efd, &one, sizeof(one)) < 0) {
        log_error("reload: cannot wake the event loop: %s", strerror(errno));
    }
    return NULL;
}

static void
apply_reload(struct server *srv, struct config *cfg)
{
    struct evconnlistener *nl = NULL, *nadmin = NULL;
    struct upstream_set *ups;
    char *cause = NULL;
    struct buf restart;

    if (!same_listen(&cfg->proxy.listen, &srv->cfg->proxy.listen)) {
        nl =
            bind_listener(srv, &cfg->proxy.listen, cfg->proxy.listen_mode, proxy_accept_cb, &cause);
        if (nl == NULL) {
            goto fail;
        }
    }
    if (!same_listen(&cfg->admin.listen, &srv->cfg->admin.listen)) {
        nadmin =
            bind_listener(srv, &cfg->admin.listen, cfg->admin.listen_mode, admin_accept_cb, &cause);
        if (nadmin == NULL) {
            goto fail;
        }
    }
    ups = upstream_set_new(srv->base, srv->dns, cfg, srv->ups, &cause);
    if (ups == NULL) {
        goto fail;
    }
    upstream_set_unref(srv->ups); /* requests in flight keep theirs */
    srv->ups = ups;
    if (nl != NULL) {
        evconnlistener_free(srv->listener);
        srv->listener = nl;
        log_info("now listening on %s", cfg->proxy.listen.text);
    } else if (cfg->proxy.listen_mode != srv->cfg->proxy.listen_mode) {
        apply_listen_mode(&cfg->proxy.listen, cfg->proxy.listen_mode);
    }
    if (nadmin != NULL) {
        evconnlistener_free(srv->admin_listener);
        srv->admin_listener = nadmin;
        log_info("admin now listening on %s", cfg->admin.listen.text);
    } else if (cfg->admin.listen_mode != srv->cfg->admin.listen_mode) {
        apply_listen_mode(&cfg->admin.listen, cfg->admin.listen_mode);
    }
    buf_init(&restart);
    config_restart_needed(srv->cfg, cfg, &restart);
    if (restart.len > 0) {
        log_warn("reload: %s changed; takes effect after a restart", restart.data);
    }
    buf_free(&restart);
    retry_budget_configure(&srv->budget, cfg->proxy.retry_budget, cfg->proxy.retry_budget_min);
    log_set_level(cfg->proxy.log_level);
    config_unref(srv->cfg);
    srv->cfg = cfg;
    srv->reloads_ok++;
    observe_reload(srv, true);
    log_info("reload: %s applied (%zu upstreams)", cfg->path, cfg->nupstreams);
    return;

fail:
    if (nl != NULL) {
        evconnlistener_free(nl);
    }
    if (nadmin != NULL) {
        evconnlistener_free(nadmin);
    }
    log_error("reload failed, keeping the old config: %s", cause);
    free(cause);
    config_unref(cfg);
    srv->reloads_failed++;
    observe_reload(srv, false);
}

static void
reload_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    struct config *cfg = srv->reload_result;
    uint64_t n;

    (void)what;
    if (read(fd, &n, sizeof(n)) < 0) {
        return;
    }
    srv->reload_running = false;
    srv->reload_result = NULL;
    if (cfg == NULL) {
        for (size_t i = 0; i < srv->reload_errors.n; i++) {
            log_error("reload: %s", srv->reload_errors.msgs[i]);
        }
        log_error("reload failed with %zu error(s); keeping the old config", srv->reload_errors.n);
        srv->reloads_failed++;
        observe_reload(srv, false);
    } else {
        apply_reload(srv, cfg);
    }
    config_errors_free(&srv->reload_errors);
    notify_send("READY=1");
    send_status(srv);
}

static void
start_reload(struct server *srv)
{
    if (srv->reload_running) {
        log_warn("SIGHUP: a reload is already running; ignored");
        return;
    }
    if (srv->reload_joinable) {
        /* The previous reload's thread has finished (its result was applied). */
        pthread_join(srv->reload_thread, NULL);
        srv->reload_joinable = false;
    }
    notify_reloading();
    srv->reload_running = true;
    if (pthread_create(&srv->reload_thread, NULL, reload_thread, srv) != 0) {
        srv->reload_running = false;
        log_error("reload: cannot start a thread: %s", strerror(errno));
        notify_send("READY=1");
        return;
    }
    srv->reload_joinable = true;
}

/* ---- drain and signals ------------------------------------------------- */

static void
drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;

    (void)fd;
    (void)what;
    log_warn("drain_timeout reached with %zu connection(s) open; closing them", srv->nclients);
    proxy_close_all(srv);
    event_base_loopexit(srv->base, NULL);
}

static void
start_drain(struct server *srv, const char *why)
{
    struct timeval tv;
    uint64_t ms = srv->cfg->proxy.drain_timeout_ms;

    if (srv->draining) {
        return;
    }
    log_info("%s: draining %zu connection(s), up to %llums", why, srv->nclients,
             (unsigned long long)ms);
    notify_send("STOPPING=1");
    srv->draining = true;
    srv->ready = false;
    if (srv->listener != NULL) {
        evconnlistener_free(srv->listener);
        srv->listener = NULL;
    }
    proxy_close_idle(srv);
    if (srv->nclients == 0) {
        event_base_loopexit(srv->base, NULL);
        return;
    }
    tv = util_ms_to_tv(ms);
    srv->drain_timer = evtimer_new(srv->base, drain_timeout_cb, srv);
    evtimer_add(srv->drain_timer, &tv);
}

void
server_client_gone(struct server *srv)
{
    if (srv->draining && srv->nclients == 0) {
        event_base_loopexit(srv->base, NULL);
    }
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct server *srv = arg;

    (void)what;
    switch (sig) {
    case SIGTERM:
        start_drain(srv, "SIGTERM");
        break;
    case SIGINT:
        start_drain(srv, "SIGINT");
        break;
    case SIGHUP:
        start_reload(srv);
        break;
    }
}

/* ---- life cycle -------------------------------------------------------- */

void
server_init(struct server *srv, struct config *cfg)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    char *cause = NULL;
    const char *ocause = NULL;

    memset(srv, 0, sizeof(*srv));
    TAILQ_INIT(&srv->clients);
    pthread_mutex_init(&srv->learned_lock, NULL);
    srv->cfg = cfg;
    srv->started_mono_ms = util_mono_ms();
    srv->started_wall_ms = util_wall_ms();
    srv->rng = (uint64_t)util_wall_ms() ^ ((uint64_t)getpid() << 32) ^ util_mono_us();
    signal(SIGPIPE, SIG_IGN);
    srv->base = event_base_new();
    if (srv->base == NULL) {
        fatal("cannot create the event loop");
    }
    srv->dns = evdns_base_new(srv->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (srv->dns == NULL) {
        /* No usable resolv.conf: names resolve from /etc/hosts only. */
        srv->dns = evdns_base_new(srv->base, 0);
        if (srv->dns == NULL) {
            fatal("cannot create the DNS resolver");
        }
        evdns_base_load_hosts(srv->dns, NULL);
        log_warn("no usable /etc/resolv.conf; upstream names resolve from /etc/hosts only");
    }
    log_set_level(cfg->proxy.log_level);
    retry_budget_init(&srv->budget, cfg->proxy.retry_budget, cfg->proxy.retry_budget_min,
                      util_mono_ms());
    srv->ups = upstream_set_new(srv->base, srv->dns, cfg, NULL, &cause);
    if (srv->ups == NULL) {
        fatal("%s", cause);
    }
    if (fallback_init(srv, &cause) < 0) {
        fatal("fallback worker: %s", cause);
    }
    if (observe_init(srv, &ocause) < 0) {
        fatal("telemetry: %s", ocause);
    }
    srv->listener =
        bind_listener(srv, &cfg->proxy.listen, cfg->proxy.listen_mode, proxy_accept_cb, &cause);
    if (srv->listener == NULL) {
        fatal("%s", cause);
    }
    srv->admin_listener =
        bind_listener(srv, &cfg->admin.listen, cfg->admin.listen_mode, admin_accept_cb, &cause);
    if (srv->admin_listener == NULL) {
        fatal("%s", cause);
    }
    for (size_t i = 0; i < ARRAY_SIZE(sigs); i++) {
        srv->sig_events[i] = evsignal_new(srv->base, sigs[i], signal_cb, srv);
        evsignal_add(srv->sig_events[i], NULL);
    }
    srv->reload_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (srv->reload_efd < 0) {
        fatal("eventfd: %s", strerror(errno));
    }
    srv->reload_event =
        event_new(srv->base, srv->reload_efd, EV_READ | EV_PERSIST, reload_done_cb, srv);
    event_add(srv->reload_event, NULL);
    notify_init(srv->base);
    srv->ready = true;
    log_info("akosha %s listening on %s (admin %s), %zu upstream(s), fallback %s", PACKAGE_VERSION,
             cfg->proxy.listen.text, cfg->admin.listen.text, cfg->nupstreams,
             cfg->fallback.mode == FALLBACK_OFF      ? "off"
             : cfg->fallback.mode == FALLBACK_ALWAYS ? "always"
                                                     : "auto");
    if (cfg->nupstreams == 0 && cfg->fallback.mode != FALLBACK_OFF) {
        log_info("no upstream configured: embedding requests are answered by the embedded "
                 "hash embedder");
    }
    notify_send("READY=1");
    send_status(srv);
}

int
server_run(struct server *srv)
{
    sockio_loop(srv->base);
    log_info("stopped after %llu request(s)", (unsigned long long)srv->requests_total);
    return srv->exit_code;
}

void
server_free(struct server *srv)
{
    if (srv->reload_joinable) {
        /* A SIGHUP raced the shutdown: wait for the parse and drop its result. */
        pthread_join(srv->reload_thread, NULL);
        config_free(srv->reload_result);
        config_errors_free(&srv->reload_errors);
    }
    proxy_close_all(srv);
    proxy_shutdown();
    admin_close_all(srv);
    observe_shutdown(srv, 30000);
    fallback_shutdown(srv);
    notify_shutdown();
    if (srv->listener != NULL) {
        evconnlistener_free(srv->listener);
    }
    if (srv->admin_listener != NULL) {
        evconnlistener_free(srv->admin_listener);
    }
    for (size_t i = 0; i < ARRAY_SIZE(srv->sig_events); i++) {
        if (srv->sig_events[i] != NULL) {
            event_free(srv->sig_events[i]);
        }
    }
    if (srv->drain_timer != NULL) {
        event_free(srv->drain_timer);
    }
    if (srv->reload_event != NULL) {
        event_free(srv->reload_event);
        close(srv->reload_efd);
    }
    upstream_set_unref(srv->ups);
    config_unref(srv->cfg);
    evdns_base_free(srv->dns, 0);
    event_base_free(srv->base);
    pthread_mutex_destroy(&srv->learned_lock);
}
