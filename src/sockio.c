/*
 * sockio.c - see sockio.h.
 */
#include "sockio.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

/*
 * Bytes reserved in the evbuffer per read: a chain of 16 KiB with libevent's
 * chain header, enough for a typical request or answer. Reserving 64 KiB per
 * read made every connection's buffer a 128 KiB allocation (glibc's mmap
 * threshold), and a loop turn of them churned the heap (brk, mmap, page
 * faults).
 */
#define SOCKIO_RESERVE (16 * 1024 - 128)

/*
 * What does not fit the reserved extent is read into spill blocks, each just
 * under 64 KiB so that malloc serves it from the heap, and the filled blocks
 * are handed to the evbuffer by reference: a large answer crosses the proxy
 * without a copy in user space. A block comes back to its thread's free list
 * when the evbuffer lets go of it (written out or drained).
 */
#define SPILL_BLOCK (64 * 1024 - 64)
#define SPILL_BLOCKS_MAX 8 /* one read: the reserved extent and up to 8 blocks */
#define SPILL_POOL 16      /* free blocks kept per thread: 1 MiB at most */
/* A spill this small is copied: it would pin a whole block for a few bytes. */
#define SPILL_COPY_MAX 2048

struct spill_pool {
    void *free[SPILL_POOL];
    int n;
};

static __thread struct spill_pool pool;
static pthread_key_t pool_key;
static bool pool_key_ok;

/* The calling thread's free blocks go back to the heap. */
static void
pool_free(void *unused)
{
    (void)unused;
    while (pool.n > 0) {
        free(pool.free[--pool.n]);
    }
}

static void
pool_free_at_exit(void)
{
    pool_free(NULL);
}

/*
 * Another thread may free an evbuffer that holds blocks (a fallback worker
 * pulls up a request body): the blocks join that thread's list, emptied when
 * it exits (the key's destructor) or, for the main thread, at exit.
 */
static void
pool_init(void)
{
    /* without a key (out of keys), a thread that exits keeps up to SPILL_POOL blocks */
    pool_key_ok = pthread_key_create(&pool_key, pool_free) == 0;
    atexit(pool_free_at_exit);
}

/* A block for one read, from the free list or the heap; NULL when out of memory. */
static void *
block_get(void)
{
    if (pool.n > 0) {
        return pool.free[--pool.n];
    }
    return malloc(SPILL_BLOCK);
}

static void
block_put(void *block)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    if (pool.n == SPILL_POOL) {
        free(block);
        return;
    }
    if (pool.n == 0) {
        /* the key's value only has to be non-NULL for its destructor to run */
        pthread_once(&once, pool_init);
        if (pool_key_ok) {
            pthread_setspecific(pool_key, &pool);
        }
    }
    pool.free[pool.n++] = block;
}

/* evbuffer cleanup: the chain holding a block was freed. */
static void
block_release(const void *data, size_t len, void *extra)
{
    (void)len;
    (void)extra;
    block_put((void *)data);
}

ssize_t
sockio_read(evutil_socket_t fd, struct evbuffer *buf, size_t max)
{
    struct evbuffer_iovec vec[2];
    struct iovec iov[2 + SPILL_BLOCKS_MAX];
    size_t want = max < SOCKIO_RESERVE ? max : SOCKIO_RESERVE;
    size_t reserved = 0, extra;
    int nvec = evbuffer_reserve_space(buf, (ev_ssize_t)want, vec, 2);
    int niov, nblocks = 0;
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
    extra = max - reserved;
    while (extra > 0 && nblocks < SPILL_BLOCKS_MAX) {
        size_t len = extra < SPILL_BLOCK ? extra : SPILL_BLOCK;
        void *block = block_get();
        if (block == NULL) {
            break; /* read what the reserved extent holds */
        }
        iov[niov].iov_base = block;
        iov[niov].iov_len = len;
        niov++;
        nblocks++;
        extra -= len;
    }
    do {
        n = readv(fd, iov, niov);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        evbuffer_commit_space(buf, vec, 0);
        for (int i = nvec; i < niov; i++) {
            block_put(iov[i].iov_base);
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return -2;
        }
        return n;
    }
    /* Commit exactly what arrived, across the reserved extents it filled... */
    {
        size_t left = (size_t)n;
        int used = 0, failed = 0;
        for (int i = 0; i < nvec && left > 0; i++) {
            size_t take = left < vec[i].iov_len ? left : vec[i].iov_len;
            vec[i].iov_len = take;
            left -= take;
            used++;
        }
        evbuffer_commit_space(buf, vec, used);
        /* ...then the blocks: filled ones by reference, the unused back to the pool. */
        for (int i = nvec; i < niov; i++) {
            void *block = iov[i].iov_base;
            size_t take = left < iov[i].iov_len ? left : iov[i].iov_len;
            left -= take;
            if (take == 0 || failed) {
                block_put(block);
            } else if (take <= SPILL_COPY_MAX) {
                failed = evbuffer_add(buf, block, take) != 0;
                block_put(block);
            } else if (evbuffer_add_reference(buf, block, take, block_release, NULL) != 0) {
                block_put(block);
                failed = 1;
            }
        }
        if (failed) {
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
