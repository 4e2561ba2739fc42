/*
 * sockio.c - see sockio.h.
 */
#include "sockio.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

ssize_t
sockio_read(evutil_socket_t fd, struct evbuffer *buf, size_t max)
{
    struct evbuffer_iovec vec[2];
    struct iovec iov[2];
    int nvec = evbuffer_reserve_space(buf, (ev_ssize_t)max, vec, 2);
    ssize_t n;

    if (nvec <= 0) {
        errno = ENOMEM;
        return -1;
    }
    for (int i = 0; i < nvec; i++) {
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = vec[i].iov_len;
    }
    do {
        n = readv(fd, iov, nvec);
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
