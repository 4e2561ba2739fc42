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
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "accesslog.h"
#include "cache.h"
#include "cache_redis.h"
#include "admin.h"
#include "fallback.h"
#include "health.h"
#include "log.h"
#include "notify.h"
#include "observe.h"
#include "proxy.h"
#include "util.h"
#include "worker.h"

/* ---- accepting ---------------------------------------------------------- */

#define ACCEPT_PAUSE_MIN_MS 100
#define ACCEPT_PAUSE_MAX_MS 1000
#define ACCEPT_REPORT_MS 5000

static struct evconnlistener *
paused_listener(struct accept_pause *p)
{
    return p->admin ? p->srv->admin_listener : p->srv->listener;
}

static const char *
paused_name(struct accept_pause *p)
{
    return p->admin ? p->srv->cfg->admin.listen.text : p->srv->cfg->proxy.listen.text;
}

/*
 * A connection was accepted: a backoff in progress is over. Said at most once
 * per report interval too, or a limit hovering at the edge would log every
 * flap; failures meanwhile go into the next report's count.
 */
static void
accept_ok(struct accept_pause *p)
{
    uint64_t now;

    if (p->pause_ms == 0) {
        return;
    }
    p->pause_ms = 0;
    now = util_mono_ms();
    if (p->resumed_ms == 0 || now - p->resumed_ms >= ACCEPT_REPORT_MS) {
        log_info("accept on %s: accepting again", paused_name(p));
        p->resumed_ms = now;
    }
}

static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct accept_pause *p = arg;
    struct evconnlistener *l = paused_listener(p);

    (void)fd;
    (void)what;
    /* The listener may have been replaced by a reload or freed by a drain meanwhile. */
    if (l != NULL) {
        evconnlistener_enable(l);
    }
}

static void
proxy_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                void *arg)
{
    struct server *srv = arg;

    (void)l;
    accept_ok(&srv->proxy_pause);
    proxy_accept(srv, fd, sa, salen);
}

static void
admin_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                void *arg)
{
    struct server *srv = arg;

    (void)l;
    accept_ok(&srv->admin_pause);
    admin_accept(srv, fd, sa, (socklen_t)salen);
}

/*
 * accept(2) failed with an error libevent does not retry: EMFILE, ENFILE,
 * ENOBUFS, ENOMEM. The pending connection stays queued and the socket stays
 * readable, so carrying on would spin the loop and flood the log; pause the
 * listener instead, longer while the failures go on, and report them at most
 * once per ACCEPT_REPORT_MS.
 */
static void
accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct server *srv = arg;
    struct accept_pause *p = l == srv->admin_listener ? &srv->admin_pause : &srv->proxy_pause;
    uint64_t now = util_mono_ms();
    struct timeval tv;

    p->last_error = EVUTIL_SOCKET_ERROR();
    p->failures++;
    p->pause_ms =
        p->pause_ms == 0 ? ACCEPT_PAUSE_MIN_MS : MIN(p->pause_ms * 2, ACCEPT_PAUSE_MAX_MS);
    if (p->reported_ms == 0 || now - p->reported_ms >= ACCEPT_REPORT_MS) {
        log_error("accept on %s: %s; %llu failure(s) since the last report, pausing accepts "
                  "for %ums at a time",
                  paused_name(p), evutil_socket_error_to_string(p->last_error),
                  (unsigned long long)p->failures, p->pause_ms);
        p->failures = 0;
        p->reported_ms = now;
    }
    evconnlistener_disable(l);
    tv = util_ms_to_tv(p->pause_ms);
    evtimer_add(p->resume, &tv);
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

/* ---- open files limit --------------------------------------------------- */

/* Listeners, epoll, eventfds, DNS, the OTLP exporter, logs: beyond the connections. */
#define NOFILE_MARGIN 64

/*
 * Make room for every connection the config allows: raise the soft
 * RLIMIT_NOFILE toward the hard limit (as far as needed, no further), and
 * warn when even that is short. Running out shows as paused accepts and
 * failed upstream connects, not as a crash; this says why in advance.
 */
static void
check_nofile(struct server *srv)
{
    const struct config *cfg = srv->cfg;
    struct rlimit rl;
    uint64_t pools = 0, need;
    const char *why = NULL;

    for (size_t i = 0; i < cfg->nupstreams; i++) {
        pools += (uint64_t)cfg->upstreams[i].max_connections;
    }
    need = (uint64_t)cfg->proxy.max_connections + ADMIN_MAX_CONNECTIONS + pools + NOFILE_MARGIN;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need) {
        return;
    }
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > rl.rlim_cur) {
        struct rlimit raised = rl;
        raised.rlim_cur = rl.rlim_max == RLIM_INFINITY ? need : MIN(rl.rlim_max, need);
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            log_info("open files limit raised from %llu to %llu", (unsigned long long)rl.rlim_cur,
                     (unsigned long long)raised.rlim_cur);
            rl = raised;
        } else {
            why = strerror(errno);
        }
    }
    if (rl.rlim_cur < need) {
        log_warn("open files limit %llu (hard %llu) is below the %llu needed: max_connections "
                 "%lld, admin %d, upstream pools %llu, margin %d%s%s; raise LimitNOFILE= or "
                 "ulimit -n, or lower max_connections",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
                 (unsigned long long)need, (long long)cfg->proxy.max_connections,
                 ADMIN_MAX_CONNECTIONS, (unsigned long long)pools, NOFILE_MARGIN,
                 why ? "; cannot raise it: " : "", why ? why : "");
    }
}

static bool
same_listen(const struct listen_addr *a, const struct listen_addr *b)
{
    return strcmp(a->text, b->text) == 0;
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

/*
 * One parse on its own thread. The job, not the server, holds what the
 * thread touches, so a shutdown need not wait for a parse stuck on a slow
 * file: it abandons the job and the thread frees it when (if ever) it ends.
 */
enum reload_job_state { RELOAD_RUNNING, RELOAD_DONE, RELOAD_ABANDONED };

struct reload_job {
    char *path;
    int efd; /* the server's eventfd; written only by a job still RUNNING at its end */
    struct config *result;
    struct config_errors errors;
    _Atomic int state;
    pthread_t thread;
};

static void
reload_job_free(struct reload_job *job)
{
    config_free(job->result);
    config_errors_free(&job->errors);
    free(job->path);
    free(job);
}

static void *
reload_thread(void *arg)
{
    struct reload_job *job = arg;
    int running = RELOAD_RUNNING;
    uint64_t one = 1;

    job->result = config_load(job->path, &job->errors, NULL);
    if (!atomic_compare_exchange_strong(&job->state, &running, RELOAD_DONE)) {
        /* Abandoned by a shutdown, which no longer reads the eventfd. */
        reload_job_free(job);
        return NULL;
    }
    /* Wake the loop; the eventfd keeps libevent free of cross-thread locking. */
    if (write(job->efd, &one, sizeof(one)) < 0) {
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
    health_apply(ups, srv->ups); /* kept upstreams keep their checker and verdict */
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
    /* A new path is opened by the writer thread; a bad one is logged there and retried. */
    accesslog_configure(srv->alog, cfg->proxy.access_log,
                        (enum accesslog_format)cfg->proxy.access_log_format);
    config_unref(srv->cfg);
    srv->cfg = cfg;
    srv->reloads_ok++;
    observe_reload(true);
    log_info("reload: %s applied (%zu upstreams)", cfg->path, cfg->nupstreams);
    check_nofile(srv);
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
    observe_reload(false);
}

static void start_reload(struct server *srv);

static void
reload_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    struct reload_job *job = srv->reload;
    struct config *cfg;
    uint64_t n;

    (void)what;
    if (read(fd, &n, sizeof(n)) < 0 || job == NULL || atomic_load(&job->state) != RELOAD_DONE) {
        return;
    }
    pthread_join(job->thread, NULL);
    srv->reload = NULL;
    cfg = job->result;
    job->result = NULL;
    if (srv->draining) {
        /* The listener a changed address would replace is gone; nothing to apply to. */
        log_warn("reload: finished while draining; not applied");
        config_free(cfg);
    } else if (cfg == NULL) {
        for (size_t i = 0; i < job->errors.n; i++) {
            log_error("reload: %s", job->errors.msgs[i]);
        }
        log_error("reload failed with %zu error(s); keeping the old config", job->errors.n);
        srv->reloads_failed++;
        observe_reload(false);
    } else {
        apply_reload(srv, cfg);
    }
    reload_job_free(job);
    if (!srv->draining) {
        /* Ends RELOADING=1; once STOPPING=1 is sent the service never becomes ready again. */
        notify_send("READY=1");
    }
    send_status(srv);
    if (srv->reload_again && !srv->draining) {
        srv->reload_again = false;
        log_info("reload: once more for the SIGHUP that came during the last one");
        start_reload(srv);
    }
}

static void
start_reload(struct server *srv)
{
    struct reload_job *job;
    int rc;

    if (srv->draining) {
        log_warn("SIGHUP while draining: reload refused");
        return;
    }
    if (srv->reload != NULL) {
        /* Any number of these coalesce into one more reload, which reads the newest file. */
        if (!srv->reload_again) {
            log_info("SIGHUP during a reload: reloading again when it finishes");
        }
        srv->reload_again = true;
        return;
    }
    job = xcalloc(1, sizeof(*job));
    job->path = xstrdup(srv->cfg->path);
    job->efd = srv->reload_efd;
    atomic_init(&job->state, RELOAD_RUNNING);
    notify_reloading();
    rc = pthread_create(&job->thread, NULL, reload_thread, job);
    if (rc != 0) {
        log_error("reload: cannot start a thread: %s", strerror(rc));
        reload_job_free(job);
        notify_send("READY=1");
        return;
    }
    srv->reload = job;
}

#define RELOAD_STOP_WAIT_MS 1000
#define ACCESSLOG_SHUTDOWN_MS 1000 /* queued access log lines get this long to be written */

/* At shutdown: wait for a parse about to finish, leave a stuck one to end on its own. */
static void
reload_stop(struct server *srv)
{
    struct reload_job *job = srv->reload;
    int running = RELOAD_RUNNING;
    pthread_t thread;

    if (job == NULL) {
        return;
    }
    thread = job->thread;
    srv->reload = NULL;
    /* A parse of an ordinary file ends in milliseconds; only a stuck one is left behind. */
    for (int waited_ms = 0; waited_ms < RELOAD_STOP_WAIT_MS; waited_ms++) {
        if (atomic_load(&job->state) == RELOAD_DONE) {
            break;
        }
        usleep(1000);
    }
    if (atomic_compare_exchange_strong(&job->state, &running, RELOAD_ABANDONED)) {
        /* From here the thread owns job and may free it at any moment. */
        pthread_detach(thread);
        log_warn("reload: a parse still running at shutdown was abandoned");
        return;
    }
    pthread_join(job->thread, NULL);
    reload_job_free(job);
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
    health_stop_all(srv->ups); /* no checks while draining */
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

/* srv->client_gone: the drain ends when its last client goes. */
static void
client_gone(struct server *srv)
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
    case SIGUSR1:
        /* logrotate moved the file: the writer thread opens it again by its name. */
        log_info("SIGUSR1: reopening the access log");
        accesslog_reopen(srv->alog);
        break;
    }
}

/* ---- life cycle -------------------------------------------------------- */

void
server_init(struct server *srv, struct config *cfg)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
    char *cause = NULL;
    const char *ocause = NULL;

    memset(srv, 0, sizeof(*srv));
    TAILQ_INIT(&srv->clients);
    srv->client_gone = client_gone;
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
    check_nofile(srv);
    srv->proxy_pause.srv = srv;
    srv->proxy_pause.resume = evtimer_new(srv->base, accept_resume_cb, &srv->proxy_pause);
    srv->admin_pause.srv = srv;
    srv->admin_pause.admin = true;
    srv->admin_pause.resume = evtimer_new(srv->base, accept_resume_cb, &srv->admin_pause);
    if (srv->proxy_pause.resume == NULL || srv->admin_pause.resume == NULL) {
        fatal("out of memory");
    }
    retry_budget_init(&srv->budget, cfg->proxy.retry_budget, cfg->proxy.retry_budget_min,
                      util_mono_ms());
    srv->ups = upstream_set_new(srv->base, srv->dns, cfg, NULL, &cause);
    if (srv->ups == NULL) {
        fatal("%s", cause);
    }
    /* [cache] is read at start only: a new budget or Redis needs a restart. */
    if (cfg->cache.memory > 0 || cfg->cache.redis != NULL) {
        srv->cache = cache_new((size_t)cfg->cache.memory); /* 0: Redis alone */
    }
    if (cfg->cache.redis != NULL) {
        struct cache_redis_settings rs = {
            .address = cfg->cache.redis,
            .password = cfg->cache.redis_password,
            .prefix = cfg->cache.redis_prefix,
            .timeout_ms = cfg->cache.redis_timeout_ms,
        };
        const char *rcause = NULL;
        srv->redis = cache_redis_new(srv->base, &rs, &rcause);
        if (srv->redis == NULL) {
            fatal("[cache] redis: %s", rcause);
        }
    }
    health_apply(srv->ups, NULL);
    srv->workers = fallback_pool_new(srv->base, srv->cfg, &cause);
    if (srv->workers == NULL) {
        fatal("fallback worker: %s", cause);
    }
    srv->alog = accesslog_new(cfg->proxy.access_log,
                              (enum accesslog_format)cfg->proxy.access_log_format,
                              cfg->proxy.access_log_buffer, &cause);
    if (srv->alog == NULL) {
        fatal("%s", cause);
    }
    if (observe_init(srv->cfg, &(struct observe_sources){&srv->ups, &srv->workers, &srv->alog, &srv->cache,
                                              &srv->redis},
                     &ocause) < 0) {
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
    log_info("stopped after %llu request(s)", (unsigned long long)observe_totals().requests);
    return srv->exit_code;
}

void
server_free(struct server *srv)
{
    reload_stop(srv);
    proxy_close_all(srv);
    proxy_shutdown();
    /* After the last client's line; what the disk has not taken within this is counted lost. */
    accesslog_free(srv->alog, ACCESSLOG_SHUTDOWN_MS);
    srv->alog = NULL;
    admin_close_all(srv);
    /* Bounded so drain_timeout + shutdown_timeout fits the stop timeouts (see akosha(8)). */
    observe_shutdown(srv->cfg->telemetry.shutdown_timeout_ms);
    if (srv->workers != NULL) {
        worker_pool_free(srv->workers); /* its last store jobs use the cache */
        srv->workers = NULL;
    }
    cache_redis_free(srv->redis);
    srv->redis = NULL;
    cache_free(srv->cache);
    srv->cache = NULL;
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
    event_free(srv->proxy_pause.resume);
    event_free(srv->admin_pause.resume);
    if (srv->reload_event != NULL) {
        event_free(srv->reload_event);
        close(srv->reload_efd);
    }
    health_stop_all(srv->ups);
    upstream_set_unref(srv->ups);
    config_unref(srv->cfg);
    evdns_base_free(srv->dns, 0);
    event_base_free(srv->base);
}
