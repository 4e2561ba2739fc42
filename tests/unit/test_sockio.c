/*
 * test_sockio.c - direct reads (the reserved extent, then the scratch spill)
 * and the end-of-turn write queue, over real socketpairs.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sockio.h"

static void
pair(int fds[2])
{
    int size = 1 << 20;

    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    for (int i = 0; i < 2; i++) {
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
}

static void
fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char)((i * 131 + seed) >> 3);
    }
}

/* Sizes around the reserved extent and the scratch area, each read whole and in order. */
Test(sockio_read, small_and_spilled_reads_arrive_whole)
{
    static const size_t sizes[] = {1, 100, 16 * 1024 - 129, 16 * 1024 - 128, 16 * 1024,
                                   40000, SOCKIO_READ_MAX, SOCKIO_READ_MAX + 5000};
    static unsigned char sent[SOCKIO_READ_MAX + 5000], got[SOCKIO_READ_MAX + 5000];
    int fds[2];

    pair(fds);
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        struct evbuffer *buf = evbuffer_new();
        size_t n = sizes[k], have = 0;

        /* something already queued: the read appends after it */
        evbuffer_add(buf, "head", 4);
        fill(sent, n, (unsigned)k);
        cr_assert_eq(write(fds[0], sent, n), (ssize_t)n);
        while (have < n) {
            ssize_t r = sockio_read(fds[1], buf, SOCKIO_READ_MAX);
            cr_assert_gt(r, 0, "size %zu: read returned %zd after %zu", n, r, have);
            cr_assert_leq((size_t)r, SOCKIO_READ_MAX);
            have += (size_t)r;
        }
        cr_assert_eq(have, n);
        cr_assert_eq(evbuffer_get_length(buf), n + 4);
        cr_assert_eq(evbuffer_remove(buf, got, 4), 4);
        cr_assert_eq(memcmp(got, "head", 4), 0);
        cr_assert_eq(evbuffer_remove(buf, got, n), (int)n);
        cr_assert_eq(memcmp(got, sent, n), 0, "size %zu: bytes differ", n);
        cr_assert_eq(sockio_read(fds[1], buf, SOCKIO_READ_MAX), -2, "nothing left: would block");
        evbuffer_free(buf);
    }
    close(fds[0]);
    close(fds[1]);
}

Test(sockio_read, max_caps_one_read_and_eof_is_zero)
{
    static unsigned char sent[50000];
    struct evbuffer *buf = evbuffer_new();
    int fds[2];

    pair(fds);
    fill(sent, sizeof(sent), 7);
    cr_assert_eq(write(fds[0], sent, sizeof(sent)), (ssize_t)sizeof(sent));
    cr_assert_eq(sockio_read(fds[1], buf, 1000), 1000);
    cr_assert_eq(sockio_read(fds[1], buf, 30000), 30000);
    cr_assert_eq(sockio_read(fds[1], buf, SOCKIO_READ_MAX), 19000);
    cr_assert_eq(evbuffer_get_length(buf), sizeof(sent));
    close(fds[0]);
    cr_assert_eq(sockio_read(fds[1], buf, SOCKIO_READ_MAX), 0);
    close(fds[1]);
    evbuffer_free(buf);
}

/*
 * Reads larger than the reserved extent span spill blocks held by reference:
 * the bytes arrive whole and in order, survive moving to another buffer and
 * partial drains, and the blocks go back when the buffers let go of them.
 */
Test(sockio_read, large_reads_span_spill_blocks_in_order)
{
    enum { BIG = 256 * 1024 + 3000 };
    static unsigned char sent[BIG], got[BIG];
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    size_t have = 0;
    int fds[2], size = 4 << 20;

    pair(fds);
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    for (int round = 0; round < 3; round++) {
        size_t sent_len = 0;
        fill(sent, BIG, (unsigned)round + 11);
        have = 0;
        while (sent_len < BIG || have < BIG) {
            if (sent_len < BIG) {
                ssize_t w = write(fds[0], sent + sent_len, BIG - sent_len);
                if (w > 0) {
                    sent_len += (size_t)w;
                }
            }
            ssize_t r = sockio_read(fds[1], in, 256 * 1024);
            if (r == -2) {
                continue;
            }
            cr_assert_gt(r, 0, "round %d: read returned %zd after %zu", round, r, have);
            cr_assert_leq((size_t)r, 256 * 1024);
            have += (size_t)r;
            /* relayed as the proxy does: moved whole into the client's buffer */
            cr_assert_eq(evbuffer_add_buffer(out, in), 0);
        }
        cr_assert_eq(evbuffer_get_length(out), BIG);
        cr_assert_eq(evbuffer_remove(out, got, 1000), 1000);
        cr_assert_eq(evbuffer_remove(out, got + 1000, BIG - 1000), BIG - 1000);
        cr_assert_eq(memcmp(got, sent, BIG), 0, "round %d: bytes differ", round);
        cr_assert_eq(evbuffer_get_length(out), 0);
    }
    /* a spill of a few bytes beyond the reserved extent */
    fill(sent, 16 * 1024 + 10, 5);
    cr_assert_eq(write(fds[0], sent, 16 * 1024 + 10), 16 * 1024 + 10);
    cr_assert_eq(sockio_read(fds[1], in, 256 * 1024), 16 * 1024 + 10);
    cr_assert_eq(evbuffer_remove(in, got, 16 * 1024 + 10), 16 * 1024 + 10);
    cr_assert_eq(memcmp(got, sent, 16 * 1024 + 10), 0);
    /* blocks still held when a buffer is freed come back too (valgrind sees no leak) */
    cr_assert_eq(write(fds[0], sent, 60000), 60000);
    cr_assert_eq(sockio_read(fds[1], in, 256 * 1024), 60000);
    evbuffer_free(in);
    evbuffer_free(out);
    close(fds[0]);
    close(fds[1]);
}

struct probe {
    struct sockio_deferred d;
    int runs;
    struct probe *chain; /* queued from inside this one's run */
};

static void
probe_run(struct sockio_deferred *d)
{
    struct probe *p = (struct probe *)d;

    p->runs++;
    if (p->chain != NULL) {
        sockio_defer(&p->chain->d);
    }
}

Test(sockio_defer, once_per_turn_cancel_and_chained)
{
    struct probe a = {.d.fn = probe_run}, b = {.d.fn = probe_run}, c = {.d.fn = probe_run};

    sockio_defer(&a.d);
    sockio_defer(&a.d); /* queued twice: runs once */
    sockio_defer(&b.d);
    sockio_cancel(&b.d); /* its owner went away */
    sockio_cancel(&b.d); /* harmless when not queued */
    a.chain = &c;
    sockio_run_deferred();
    cr_assert_eq(a.runs, 1);
    cr_assert_eq(b.runs, 0);
    cr_assert_eq(c.runs, 1, "what a flush queues runs in the same pass");
    cr_assert_not(a.d.queued || b.d.queued || c.d.queued);
    sockio_run_deferred();
    cr_assert_eq(a.runs, 1, "nothing queued: nothing runs");
}

static void
turn_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;

    (void)fd;
    (void)what;
    sockio_defer(&p->d);
}

static void
stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;

    (void)fd;
    (void)what;
    cr_assert_eq(p->runs, 1, "the first turn's flush ran before a later turn");
    p->runs += 10; /* seen by the test: this turn happened */
}

/* sockio_loop runs a turn's queued flushes after that turn, and stops on loopexit. */
Test(sockio_loop, flushes_after_each_turn)
{
    struct event_base *base = event_base_new();
    struct probe p = {.d.fn = probe_run};
    struct timeval now = {0, 0}, later = {0, 20000};

    event_base_once(base, -1, EV_TIMEOUT, turn_cb, &p, &now);
    event_base_once(base, -1, EV_TIMEOUT, stop_cb, &p, &later);
    event_base_loopexit(base, &(struct timeval){0, 50000});
    cr_assert_eq(sockio_loop(base), 0);
    cr_assert_eq(p.runs, 11);
    event_base_free(base);
}
