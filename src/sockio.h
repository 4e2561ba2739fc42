/*
 * sockio.h - direct socket reads and writes over evbuffers.
 *
 * libevent 2.1's bufferevents read at most 4 KB per call after an
 * ioctl(FIONREAD), and write only on the next loop turn after arming
 * EPOLLOUT. On a proxy's hot path that is three times the system calls of a
 * plain read and write, so plain sockets are read here into reserved
 * evbuffer space and written at once; EV_WRITE is armed only when the kernel
 * pushes back.
 */
#ifndef AKOSHA_SOCKIO_H
#define AKOSHA_SOCKIO_H

#include <stddef.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/util.h>

/* Largest single read: a whole typical response in one call. */
#define SOCKIO_READ_MAX (64 * 1024)

/* Read once into buf: bytes read (> 0), 0 at end of file, -1 on error (errno), -2 would block. */
ssize_t sockio_read(evutil_socket_t fd, struct evbuffer *buf, size_t max);
/*
 * Write as much of out as the kernel takes now: bytes still queued (>= 0), or
 * -1 on an error other than would-block (errno set).
 */
ssize_t sockio_write(evutil_socket_t fd, struct evbuffer *out);

#endif
