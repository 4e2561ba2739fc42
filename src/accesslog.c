/*
 * accesslog.c - the access log: line formatting, the ring and its writer.
 *
 * The ring is a single-producer/single-consumer byte queue. head and tail
 * count bytes since start (they never wrap in practice: 2^64 bytes); the
 * loop thread alone advances head, the writer alone advances tail. The loop
 * never takes a lock to queue a line. The writer sleeps up to
 * WRITER_FLUSH_MS between batches; the loop wakes it early (a mutex and a
 * futex wake) only when the ring is half full and the writer said it is
 * sleeping (a Dekker handshake on head and sleeping, both seq_cst). Woken
 * per line instead, the writer cost a futex wake, a context switch and a
 * write(2) per request: 35 % more CPU per request in tests/bench/run.
 */
#include "accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* ---- formatting (pure) -------------------------------------------------- */

struct line {
    char *p;
    size_t len;
};

static inline void
put(struct line *l, const char *s, size_t n)
{
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

#define PUT_LIT(l, lit) put((l), (lit), sizeof(lit) - 1)

static void
put_u64(struct line *l, uint64_t v)
{
    char tmp[20];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        l->p[l->len++] = tmp[--n];
    }
}

/* Digits, zero-padded to width. */
static void
put_padded(struct line *l, unsigned v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        l->p[l->len + (size_t)i] = (char)('0' + v % 10);
        v /= 10;
    }
    l->len += (size_t)width;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ"; the seconds' part is kept per thread, gmtime_r once a second. */
static void
put_time(struct line *l, int64_t ms)
{
    static __thread int64_t cached_secs = -1;
    static __thread char cached[19];
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    struct line c = {cached, 0};

    if (secs == cached_secs) {
        put(l, cached, sizeof(cached));
        l->p[l->len++] = '.';
        put_padded(l, (unsigned)(ms % 1000), 3);
        l->p[l->len++] = 'Z';
        return;
    }
    gmtime_r(&secs, &tm);
    put_padded(&c, (unsigned)(tm.tm_year + 1900), 4);
    c.p[c.len++] = '-';
    put_padded(&c, (unsigned)tm.tm_mon + 1, 2);
    c.p[c.len++] = '-';
    put_padded(&c, (unsigned)tm.tm_mday, 2);
    c.p[c.len++] = 'T';
    put_padded(&c, (unsigned)tm.tm_hour, 2);
    c.p[c.len++] = ':';
    put_padded(&c, (unsigned)tm.tm_min, 2);
    c.p[c.len++] = ':';
    put_padded(&c, (unsigned)tm.tm_sec, 2);
    cached_secs = secs;
    put(l, cached, sizeof(cached));
    l->p[l->len++] = '.';
    put_padded(l, (unsigned)(ms % 1000), 3);
    l->p[l->len++] = 'Z';
}

/* Milliseconds with three decimals. */
static void
put_ms(struct line *l, uint64_t us)
{
    put_u64(l, us / 1000);
    l->p[l->len++] = '.';
    put_padded(l, (unsigned)(us % 1000), 3);
}

/*
 * Length of the well-formed UTF-8 sequence at s (n bytes left), 0 when the
 * bytes there are not one (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
 */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t len;

    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) {
            lo = 0xA0;
        } else if (c == 0xED) {
            hi = 0x9F;
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F;
        }
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) {
            return 0;
        }
    }
    return len;
}

static const char hexdigits[] = "0123456789abcdef";
static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/*
 * s[0..n) as the inside of a JSON string, at most max bytes of output: cut
 * before the escape or character that would not fit, never inside one.
 */
static void
put_json_chars(struct line *l, const char *str, size_t n, size_t max)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t end = l->len + max;

    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t seq;
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            /* a run of bytes written as they are: one copy */
            size_t run = i + 1;
            while (run < n && s[run] >= 0x20 && s[run] < 0x7F && s[run] != '"' &&
                   s[run] != '\\') {
                run++;
            }
            run = MIN(run - i, end - l->len);
            if (run == 0) {
                return;
            }
            put(l, str + i, run);
            i += run;
            continue;
        }
        if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t') {
            if (l->len + 2 > end) {
                return;
            }
            l->p[l->len++] = '\\';
            l->p[l->len++] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
            i++;
            continue;
        }
        if (c < 0x80) { /* other controls and DEL */
            if (l->len + 6 > end) {
                return;
            }
            put(l, "\\u00", 4);
            l->p[l->len++] = hexdigits[c >> 4];
            l->p[l->len++] = hexdigits[c & 15];
            i++;
            continue;
        }
        seq = utf8_seq(s + i, n - i);
        if (seq == 0) {
            if (l->len + 3 > end) {
                return;
            }
            put(l, replacement, 3);
            i++;
            continue;
        }
        if (l->len + seq > end) {
            return;
        }
        put(l, (const char *)s + i, seq);
        i += seq;
    }
}

static void
json_str(struct line *l, const char *key, size_t keylen, const char *s, size_t n, size_t max)
{
    put(l, key, keylen);
    l->p[l->len++] = '"';
    put_json_chars(l, s, n, max);
    l->p[l->len++] = '"';
}

static bool
text_needs_quotes(const unsigned char *s, size_t n)
{
    if (n == 0) {
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] <= 0x20 || s[i] == '"' || s[i] == '=' || s[i] == '\\' || s[i] >= 0x7F) {
            return true;
        }
    }
    return false;
}

/* A text value: bare when safe, else quoted with \" \\ \n \r \t \xHH; at most max bytes. */
static void
put_text_value(struct line *l, const char *str, size_t n, size_t max)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t end;

    if (!text_needs_quotes(s, n)) {
        put(l, str, MIN(n, max));
        return;
    }
    end = l->len + max - 1; /* room for the closing quote */
    l->p[l->len++] = '"';
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t seq;
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            if (l->len + 1 > end) {
                break;
            }
            l->p[l->len++] = (char)c;
            i++;
        } else if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t') {
            if (l->len + 2 > end) {
                break;
            }
            l->p[l->len++] = '\\';
            l->p[l->len++] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
            i++;
        } else if (c < 0x80) {
            if (l->len + 4 > end) {
                break;
            }
            put(l, "\\x", 2);
            l->p[l->len++] = hexdigits[c >> 4];
            l->p[l->len++] = hexdigits[c & 15];
            i++;
        } else if ((seq = utf8_seq(s + i, n - i)) == 0) {
            if (l->len + 3 > end) {
                break;
            }
            put(l, replacement, 3);
            i++;
        } else {
            if (l->len + seq > end) {
                break;
            }
            put(l, str + i, seq);
            i += seq;
        }
    }
    l->p[l->len++] = '"';
}

static void
text_str(struct line *l, const char *key, size_t keylen, const char *s, size_t n, size_t max)
{
    put(l, key, keylen);
    put_text_value(l, s, n, max);
}

/*
 * Output budgets per string field. Their sum, the keys and the numbers stay
 * below ACCESSLOG_LINE_MAX, so a line never needs a bounds check per byte
 * beyond the field's own.
 */
enum {
    MAX_ID = 200,
    MAX_TRACE = 64,
    MAX_CLIENT = 128,
    MAX_METHOD = 64,
    MAX_PATH = 2048,
    MAX_MODEL = 512,
    MAX_UPSTREAM = 256,
    MAX_MODE = 32,
    MAX_REASON = 128,
};
_Static_assert(MAX_ID + MAX_TRACE + MAX_CLIENT + MAX_METHOD + MAX_PATH + MAX_MODEL +
                       MAX_UPSTREAM + 2 * MAX_MODE + MAX_REASON + 512 <
                   ACCESSLOG_LINE_MAX,
               "the fields' budgets fit a line");

#define SLEN(s) ((s) != NULL ? strlen(s) : 0)

size_t
accesslog_format_line(enum accesslog_format fmt, const struct accesslog_entry *e, char *out)
{
    struct line l = {out, 0};
    bool json = fmt == ACCESSLOG_JSON;
    void (*str)(struct line *, const char *, size_t, const char *, size_t, size_t) =
        json ? json_str : text_str;
    /* 499 (nginx's "client closed request") when the client left before any answer. */
    uint64_t status = e->status > 0 ? (uint64_t)e->status : 499;

#define KEY(name) (json ? ",\"" name "\":" : " " name "="), (json ? sizeof(",\"" name "\":") - 1 : sizeof(" " name "=") - 1)
    if (json) {
        PUT_LIT(&l, "{\"time\":\"");
        put_time(&l, e->time_ms);
        l.p[l.len++] = '"';
    } else {
        PUT_LIT(&l, "time=");
        put_time(&l, e->time_ms);
    }
    str(&l, KEY("request_id"), e->request_id ? e->request_id : "", SLEN(e->request_id), MAX_ID);
    if (e->trace_id != NULL) {
        str(&l, KEY("trace_id"), e->trace_id, strlen(e->trace_id), MAX_TRACE);
    }
    str(&l, KEY("client"), e->client ? e->client : "", SLEN(e->client), MAX_CLIENT);
    str(&l, KEY("method"), e->method ? e->method : "", e->method ? e->method_len : 0, MAX_METHOD);
    str(&l, KEY("path"), e->path ? e->path : "", e->path ? e->path_len : 0, MAX_PATH);
    put(&l, KEY("status"));
    put_u64(&l, status);
    put(&l, KEY("bytes_in"));
    put_u64(&l, e->bytes_in);
    put(&l, KEY("bytes_out"));
    put_u64(&l, e->bytes_out);
    put(&l, KEY("duration_ms"));
    put_ms(&l, e->duration_us);
    if (e->model != NULL) {
        str(&l, KEY("model"), e->model, strlen(e->model), MAX_MODEL);
    }
    put(&l, KEY("inputs"));
    put_u64(&l, e->inputs);
    if (e->upstream != NULL) {
        str(&l, KEY("upstream"), e->upstream, strlen(e->upstream), MAX_UPSTREAM);
    }
    put(&l, KEY("attempts"));
    put_u64(&l, e->attempts);
    if (e->mode != NULL) {
        str(&l, KEY("mode"), e->mode, strlen(e->mode), MAX_MODE);
    }
    if (e->cache != NULL) {
        str(&l, KEY("cache"), e->cache, strlen(e->cache), MAX_MODE);
    }
    if (e->reason != NULL) {
        str(&l, KEY("reason"), e->reason, strlen(e->reason), MAX_REASON);
    }
#undef KEY
    if (json) {
        l.p[l.len++] = '}';
    }
    l.p[l.len++] = '\n';
    return l.len;
}

/* ---- the ring and its writer -------------------------------------------- */

#define REOPEN_RETRY_MS 1000 /* a target that would not open is tried again this often */
#define WRITER_FLUSH_MS 100  /* lines wait at most about this long for the writer */

struct accesslog {
    /* ring: buf[size]; head written by the loop, tail by the writer */
    char *buf;
    size_t size;
    _Atomic uint64_t head, tail;
    _Atomic uint64_t lines, dropped;
    /* loop thread only */
    bool enabled;
    enum accesslog_format fmt;
    char *target; /* as configured: "stderr" or a path */
    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    _Atomic int sleeping;  /* the writer is (about to be) waiting on wake */
    bool pending;          /* a reopen or a new target is asked for */
    uint64_t pending_at;   /* ... once the bytes before this offset are written */
    char *pending_target;  /* owned; NULL: reopen the current one */
    bool stop;
    uint64_t stop_deadline_ms;
    bool stopped;          /* the writer has left its loop */
    pthread_t thread;
    bool started;          /* thread runs: the first target other than "off" came */
    /* writer thread only */
    int fd;                /* -1: none open */
    bool own_fd;           /* not stderr */
    char *wtarget;         /* the target the writer writes to; owned */
    uint64_t next_open_ms; /* when fd < 0: next try */
    bool open_failed_logged;
    bool write_failed_logged;
};

static bool
is_stderr(const char *target)
{
    return strcmp(target, "stderr") == 0;
}

static bool
is_off(const char *target)
{
    return target == NULL || strcmp(target, "off") == 0;
}

/*
 * Open target for appending. A file is opened non-blocking: a FIFO whose
 * reader stalls makes write(2) return EAGAIN (the writer polls, bounded)
 * rather than hold the thread where shutdown cannot reach it. ENXIO (a
 * FIFO nobody reads yet) is reported as such for the caller to retry.
 */
static int
open_target(const char *target, bool *own, int *err)
{
    int fd;

    if (is_stderr(target)) {
        *own = false;
        return STDERR_FILENO;
    }
    *own = true;
    fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0640);
    *err = fd < 0 ? errno : 0;
    return fd;
}

static void
close_fd(struct accesslog *al)
{
    if (al->fd >= 0 && al->own_fd) {
        close(al->fd);
    }
    al->fd = -1;
}

static void
writer_try_open(struct accesslog *al, uint64_t now)
{
    int err = 0;

    if (al->wtarget == NULL || now < al->next_open_ms) {
        return;
    }
    al->fd = open_target(al->wtarget, &al->own_fd, &err);
    if (al->fd >= 0) {
        if (al->open_failed_logged) {
            log_info("access_log: %s is open again", al->wtarget);
        }
        al->open_failed_logged = false;
        return;
    }
    al->next_open_ms = now + REOPEN_RETRY_MS;
    if (!al->open_failed_logged) {
        log_warn("access_log: cannot open %s: %s; lines wait in the buffer, then are dropped",
                 al->wtarget, strerror(err));
        al->open_failed_logged = true;
    }
}

/* Switch to the pending target (or reopen the current one). Called with mu held. */
static void
writer_apply_pending(struct accesslog *al)
{
    close_fd(al);
    if (al->pending_target != NULL) {
        free(al->wtarget);
        al->wtarget = is_off(al->pending_target) ? NULL : al->pending_target;
        if (al->wtarget == NULL) {
            free(al->pending_target);
        }
        al->pending_target = NULL;
    }
    al->pending = false;
    al->next_open_ms = 0;
}

/* Write from tail towards limit; false when nothing could be written now. */
static bool
writer_write(struct accesslog *al, uint64_t tail, uint64_t limit)
{
    size_t at = (size_t)(tail % al->size);
    size_t n = (size_t)MIN(limit - tail, (uint64_t)(al->size - at));
    ssize_t w = write(al->fd, al->buf + at, n);

    if (w > 0) {
        atomic_store_explicit(&al->tail, tail + (uint64_t)w, memory_order_release);
        al->write_failed_logged = false;
        return true;
    }
    if (w < 0 && errno == EINTR) {
        return true;
    }
    if (w < 0 && errno == EAGAIN) {
        struct pollfd p = {.fd = al->fd, .events = POLLOUT};
        (void)poll(&p, 1, 100);
        return false;
    }
    if (!al->write_failed_logged) {
        log_warn("access_log: writing %s failed: %s; retrying", al->wtarget,
                 w < 0 ? strerror(errno) : "no progress");
        al->write_failed_logged = true;
    }
    if (w < 0 && errno == EPIPE) {
        close_fd(al); /* a FIFO's reader left: open again when one comes */
        al->next_open_ms = util_mono_ms() + REOPEN_RETRY_MS;
    }
    return false;
}

static void
writer_sleep(struct accesslog *al, unsigned ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&al->wake, &al->mu, &ts);
}

static void *
writer_main(void *arg)
{
    struct accesslog *al = arg;

    pthread_mutex_lock(&al->mu);
    for (;;) {
        uint64_t now = util_mono_ms();
        uint64_t tail = atomic_load_explicit(&al->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&al->head, memory_order_acquire);
        uint64_t limit = head;

        if (al->pending && (tail >= al->pending_at || al->fd < 0)) {
            writer_apply_pending(al);
        }
        if (al->pending) {
            limit = al->pending_at; /* the old target's last bytes first */
        }
        if (al->stop && (tail == head || now >= al->stop_deadline_ms)) {
            break;
        }
        if (al->fd < 0) {
            writer_try_open(al, now);
        }
        if (al->fd >= 0 && tail < limit) {
            bool progressed;
            pthread_mutex_unlock(&al->mu);
            progressed = writer_write(al, tail, limit);
            pthread_mutex_lock(&al->mu);
            if (!progressed && al->fd >= 0 && !al->stop) {
                writer_sleep(al, 10); /* an error other than EAGAIN: do not spin */
            }
            continue;
        }
        /* Nothing to write (or nowhere to write it): sleep until the loop queues a line. */
        atomic_store(&al->sleeping, 1);
        if (atomic_load(&al->head) == head && !al->stop) {
            writer_sleep(al, WRITER_FLUSH_MS);
        }
        atomic_store(&al->sleeping, 0);
    }
    close_fd(al);
    al->stopped = true;
    pthread_cond_broadcast(&al->wake);
    pthread_mutex_unlock(&al->mu);
    return NULL;
}

static void
wake_writer(struct accesslog *al)
{
    pthread_mutex_lock(&al->mu);
    pthread_cond_broadcast(&al->wake);
    pthread_mutex_unlock(&al->mu);
}

static int
start_writer(struct accesslog *al, char **cause)
{
    int rc = pthread_create(&al->thread, NULL, writer_main, al);

    if (rc != 0) {
        *cause = xasprintf("access_log: cannot start the writer thread: %s", strerror(rc));
        return -1;
    }
    al->started = true;
    return 0;
}

struct accesslog *
accesslog_new(const char *target, enum accesslog_format fmt, size_t ring_size, char **cause)
{
    struct accesslog *al;
    pthread_condattr_t ca;
    int err = 0;

    *cause = NULL;
    al = xcalloc(1, sizeof(*al));
    al->fd = -1;
    if (!is_off(target)) {
        /* Before the loop runs: a path that cannot be opened fails start-up. */
        al->fd = open_target(target, &al->own_fd, &err);
        if (al->fd < 0 && err != ENXIO) {
            *cause = xasprintf("access_log: cannot open %s: %s", target, strerror(err));
            free(al);
            return NULL;
        }
        al->wtarget = xstrdup(target);
    }
    al->size = ring_size;
    al->buf = xmalloc(ring_size);
    al->enabled = !is_off(target);
    al->fmt = fmt;
    al->target = xstrdup(is_off(target) ? "off" : target);
    pthread_mutex_init(&al->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&al->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (al->enabled && start_writer(al, cause) < 0) {
        close_fd(al);
        pthread_cond_destroy(&al->wake);
        pthread_mutex_destroy(&al->mu);
        free(al->buf);
        free(al->target);
        free(al->wtarget);
        free(al);
        return NULL;
    }
    return al;
}

static void
request_switch(struct accesslog *al, const char *target)
{
    pthread_mutex_lock(&al->mu);
    al->pending = true;
    al->pending_at = atomic_load_explicit(&al->head, memory_order_relaxed);
    if (target != NULL) {
        free(al->pending_target);
        al->pending_target = xstrdup(target);
    }
    pthread_cond_broadcast(&al->wake);
    pthread_mutex_unlock(&al->mu);
}

void
accesslog_configure(struct accesslog *al, const char *target, enum accesslog_format fmt)
{
    const char *t = is_off(target) ? "off" : target;

    al->fmt = fmt;
    if (strcmp(t, al->target) == 0) {
        return;
    }
    log_info("access_log: %s -> %s", al->target, t);
    free(al->target);
    al->target = xstrdup(t);
    request_switch(al, t);
    if (!is_off(t) && !al->started) {
        char *cause = NULL;
        if (start_writer(al, &cause) < 0) {
            log_error("%s; no access log", cause);
            free(cause);
            return;
        }
    }
    al->enabled = !is_off(t);
}

void
accesslog_reopen(struct accesslog *al)
{
    if (al->enabled) {
        request_switch(al, NULL);
    }
}

bool
accesslog_enabled(const struct accesslog *al)
{
    return al != NULL && al->enabled;
}

void
accesslog_write(struct accesslog *al, const struct accesslog_entry *e)
{
    char line[ACCESSLOG_LINE_MAX];
    size_t n = accesslog_format_line(al->fmt, e, line);
    uint64_t head = atomic_load_explicit(&al->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&al->tail, memory_order_acquire);
    size_t at, first;

    if (al->size - (size_t)(head - tail) < n) {
        atomic_fetch_add_explicit(&al->dropped, 1, memory_order_relaxed);
        return;
    }
    at = (size_t)(head % al->size);
    first = MIN(n, al->size - at);
    memcpy(al->buf + at, line, first);
    memcpy(al->buf, line + first, n - first);
    atomic_store(&al->head, head + n); /* seq_cst: pairs with the writer's sleeping store */
    atomic_fetch_add_explicit(&al->lines, 1, memory_order_relaxed);
    if (head + n - tail >= al->size / 2 && atomic_load(&al->sleeping)) {
        wake_writer(al);
    }
}

void
accesslog_counters(const struct accesslog *al, uint64_t *lines, uint64_t *dropped)
{
    *lines = al != NULL ? atomic_load_explicit(&al->lines, memory_order_relaxed) : 0;
    *dropped = al != NULL ? atomic_load_explicit(&al->dropped, memory_order_relaxed) : 0;
}

void
accesslog_free(struct accesslog *al, unsigned long timeout_ms)
{
    bool stopped;

    if (al == NULL) {
        return;
    }
    if (!al->started) {
        al->stopped = true;
    }
    pthread_mutex_lock(&al->mu);
    al->stop = true;
    al->stop_deadline_ms = util_mono_ms() + timeout_ms;
    pthread_cond_broadcast(&al->wake);
    /* The writer checks the deadline between writes; a write stuck in the kernel is not. */
    while (!al->stopped) {
        uint64_t now = util_mono_ms();
        if (now >= al->stop_deadline_ms + 100) {
            break;
        }
        writer_sleep(al, (unsigned)MIN(al->stop_deadline_ms + 100 - now, (uint64_t)100));
    }
    stopped = al->stopped;
    pthread_mutex_unlock(&al->mu);
    if (!stopped) {
        log_warn("access_log: the writer is stuck; %llu byte(s) not written",
                 (unsigned long long)(atomic_load(&al->head) - atomic_load(&al->tail)));
        pthread_detach(al->thread);
        return; /* al stays with the thread until the process exits */
    }
    if (al->started) {
        pthread_join(al->thread, NULL);
    }
    if (atomic_load(&al->head) != atomic_load(&al->tail)) {
        log_warn("access_log: %llu byte(s) not written by the shutdown deadline",
                 (unsigned long long)(atomic_load(&al->head) - atomic_load(&al->tail)));
    }
    pthread_cond_destroy(&al->wake);
    pthread_mutex_destroy(&al->mu);
    free(al->pending_target);
    free(al->wtarget);
    free(al->target);
    free(al->buf);
    free(al);
}
