/*
 * sockio.c - see sockio.h.
 */
#include "sockio.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

/*
 * Bytes reserved in the evbuffer per read: a chain of 16 KiB with libevent's
 * chain header, enough for a typical request or answer. What does not fit
 * lands in a per-thread scratch area and is copied in; reserving 64 KiB per
 * read made every connection's buffer a 128 KiB allocation, and a loop turn
 * of them churned the heap (brk, mmap, page faults).
 */
#define SOCKIO_RESERVE (16 * 1024 - 128)

ssize_t
sockio_read(evutil_socket_t fd, struct evbuffer *buf, size_t max)
{
    static __thread char scratch[SOCKIO_READ_MAX];
    struct evbuffer_iovec vec[2];
    struct iovec iov[3];
    size_t want = max < SOCKIO_RESERVE ? max : SOCKIO_RESERVE;
    size_t reserved = 0;
    int nvec = evbuffer_reserve_space(buf, (ev_ssize_t)want, vec, 2);
    int niov;
    ssize_t n;

    if (nvec <= 0) {
        errno = ENOMEM;
        return -1;
    }
    for (int i = 0; i < nvec; i++) {
        /* libevent may hand out more than asked for: max is a hard cap */
        size_t len = vec[i].iov_len < max - reserved ? vec[i].iov_len : max - reserved;
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = len;
        vec[i].iov_len = len;
        reserved += len;
    }
    niov = nvec;
    if (max > reserved) {
        size_t extra = max - reserved;
        iov[niov].iov_base = scratch;
        iov[niov].iov_len = extra < sizeof(scratch) ? extra : sizeof(scratch);
        niov++;
    }
    do {
        n = readv(fd, iov, niov);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        evbuffer_commit_space(buf, vec, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return -2;
        }
        return n;
    }
    /* Commit exactly what arrived, across the reserved extents it filled. */
    {
        size_t left = (size_t)n;
        int used = 0;
        for (int i = 0; i < nvec && left > 0; i++) {
            size_t take = left < vec[i].iov_len ? left : vec[i].iov_len;
            vec[i].iov_len = take;
            left -= take;
            used++;
        }
        evbuffer_commit_space(buf, vec, used);
        if (left > 0 && evbuffer_add(buf, scratch, left) != 0) {
            errno = ENOMEM;
            return -1;
        }
    }
    return n;
}

ssize_t
sockio_write(evutil_socket_t fd, struct evbuffer *out)
{
    while (evbuffer_get_length(out) > 0) {
        int n = evbuffer_write(out, fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            break;
        }
    }
    return (ssize_t)evbuffer_get_length(out);
}

/* Only the event loop's thread queues and runs flushes. */
static TAILQ_HEAD(, sockio_deferred) deferred = TAILQ_HEAD_INITIALIZER(deferred);

void
sockio_defer(struct sockio_deferred *d)
{
    if (!d->queued) {
        d->queued = true;
        TAILQ_INSERT_TAIL(&deferred, d, link);
    }
}

void
sockio_cancel(struct sockio_deferred *d)
{
    if (d->queued) {
        d->queued = false;
        TAILQ_REMOVE(&deferred, d, link);
    }
}

void
sockio_run_deferred(void)
{
    struct sockio_deferred *d;

    while ((d = TAILQ_FIRST(&deferred)) != NULL) {
        TAILQ_REMOVE(&deferred, d, link);
        d->queued = false;
        d->fn(d);
    }
}

int
sockio_loop(struct event_base *base)
{
    int rc;

    for (;;) {
        rc = event_base_loop(base, EVLOOP_ONCE);
        sockio_run_deferred();
        if (rc != 0 || event_base_got_exit(base) || event_base_got_break(base)) {
            return rc < 0 ? -1 : 0;
        }
    }
}
