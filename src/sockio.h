/*
 * sockio.h - direct socket reads and writes over evbuffers.
 *
 * libevent 2.1's bufferevents read at most 4 KB per call after an
 * ioctl(FIONREAD), and write only on the next loop turn after arming
 * EPOLLOUT. On a proxy's hot path that is three times the system calls of a
 * plain read and write, so plain sockets are read here into reserved
 * evbuffer space and written directly; EV_WRITE is armed only when the
 * kernel pushes back. Requests to upstreams wait for the end of the loop
 * turn (sockio_defer), so that one turn's requests leave together and the
 * backend they wake (often on the same CPU, preempting the proxy) is woken
 * once per turn, not once per request.
 */
#ifndef AKOSHA_SOCKIO_H
#define AKOSHA_SOCKIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/queue.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/util.h>

/* Largest single read from a client: a whole typical request in one call. */
#define SOCKIO_READ_MAX (64 * 1024)

/*
 * Read once into buf, at most max bytes (at most 16 KiB + 8 x 64 KiB):
 * bytes read (> 0), 0 at end of file, -1 on error (errno), -2 would block.
 * Up to 16 KiB land in buf's own reserved space; more is read into blocks of
 * just under 64 KiB that buf then holds by reference (no copy). A block
 * returns to a per-thread free list when buf lets go of it.
 */
ssize_t sockio_read(evutil_socket_t fd, struct evbuffer *buf, size_t max);
/*
 * Write as much of out as the kernel takes now: bytes still queued (>= 0), or
 * -1 on an error other than would-block (errno set).
 */
ssize_t sockio_write(evutil_socket_t fd, struct evbuffer *out);

/*
 * Writes deferred to the end of the event loop's turn. A connection that has
 * output queues its flush here; sockio_loop runs every queued flush once the
 * turn's callbacks are done, so the writes of one turn go out back to back.
 */
struct sockio_deferred {
    TAILQ_ENTRY(sockio_deferred) link;
    void (*fn)(struct sockio_deferred *d);
    bool queued;
};

/* Queue d->fn for the end of this loop turn (once, however often called). */
void sockio_defer(struct sockio_deferred *d);
/* Take d off the queue (its owner is going away). */
void sockio_cancel(struct sockio_deferred *d);
/* Run everything queued, including what the flushes queue themselves. */
void sockio_run_deferred(void);
/* event_base_dispatch that runs the deferred flushes after every turn. */
int sockio_loop(struct event_base *base);

#endif
