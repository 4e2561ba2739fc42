/*
 * http_backend.c - the fixed upstream of the benchmark: answers every request
 * with one canned body, as fast as one epoll loop per thread allows, so the
 * backend is never what limits a proxy's numbers.
 *
 *   http_backend [-l HOST:PORT] [-t THREADS] [-d DIMENSIONS] [-s]
 *
 * Default body: an OpenAI /v1/embeddings answer with one DIMENSIONS-float
 * vector. -s (sink): answer "{}", which is all an OTLP/HTTP JSON exporter
 * needs; on SIGTERM the sink prints how many requests and body bytes it took.
 * HTTP/1.1 keep-alive and pipelining; Content-Length and chunked bodies are
 * read and dropped. Not a general server: no timeouts, loopback use only.
 *
 * Build: cc -std=gnu11 -O2 -Wall -Wextra -pthread tests/bench/http_backend.c -lm -o http_backend
 */
#define _GNU_SOURCE /* memmem, accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define READ_CHUNK 65536
#define MAX_REQUEST (64u * 1024 * 1024) /* a request larger than this closes the connection */
#define MAX_THREADS 64

struct conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
    bool close_after; /* the last queued answer ends the connection */
    bool want_write;  /* EPOLLOUT armed */
};

static struct sockaddr_in listen_addr;
static char *response; /* head and body of the one answer, shared read-only */
static size_t response_len;
static atomic_ulong total_requests, total_body_bytes;
static volatile sig_atomic_t stopping;

static void *
xmalloc(size_t n)
{
    void *p = malloc(n);

    if (p == NULL) {
        fprintf(stderr, "http_backend: out of memory\n");
        abort();
    }
    return p;
}

static void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (p == NULL) {
        fprintf(stderr, "http_backend: out of memory\n");
        abort();
    }
    return p;
}

/* Builds the one answer; the vector is deterministic and unit-length so that
 * clients which check it see a plausible embedding. */
static void
build_response(bool sink, int dimensions)
{
    size_t cap = 256 + (size_t)dimensions * 16, len = 0;
    char *body = xmalloc(cap);
    double norm = 0.0;

    if (sink) {
        len = (size_t)snprintf(body, cap, "{}");
    } else {
        for (int i = 0; i < dimensions; i++) {
            double v = sin(i * 0.37 + 1.0);
            norm += v * v;
        }
        norm = sqrt(norm);
        len = (size_t)snprintf(body, cap,
                               "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                               "\"index\":0,\"embedding\":[");
        for (int i = 0; i < dimensions; i++) {
            len += (size_t)snprintf(body + len, cap - len, "%s%.7f", i ? "," : "",
                                    sin(i * 0.37 + 1.0) / norm);
        }
        len += (size_t)snprintf(body + len, cap - len,
                                "]}],\"model\":\"bench-model\","
                                "\"usage\":{\"prompt_tokens\":64,\"total_tokens\":64}}");
    }
    response_len = len + 256;
    response = xmalloc(response_len);
    response_len = (size_t)snprintf(response, response_len,
                                    "HTTP/1.1 200 OK\r\n"
                                    "Content-Type: application/json\r\n"
                                    "Content-Length: %zu\r\n"
                                    "\r\n%s",
                                    len, body);
    free(body);
}

/* Case-insensitive search for a header line; returns its value or NULL. */
static const char *
find_header(const char *head, size_t head_len, const char *name, size_t *value_len)
{
    size_t name_len = strlen(name);
    const char *p = memchr(head, '\n', head_len), *end = head + head_len;

    while (p != NULL && p + 1 < end) {
        const char *line = p + 1, *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL) {
            eol = end;
        }
        if ((size_t)(eol - line) > name_len && line[name_len] == ':' &&
            strncasecmp(line, name, name_len) == 0) {
            const char *v = line + name_len + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) {
                v++;
            }
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) {
                ve--;
            }
            *value_len = (size_t)(ve - v);
            return v;
        }
        p = eol < end ? eol : NULL;
    }
    return NULL;
}

static bool
value_has(const char *v, size_t len, const char *token)
{
    size_t tl = strlen(token);

    for (size_t i = 0; i + tl <= len; i++) {
        if (strncasecmp(v + i, token, tl) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * Length of the chunked body starting at p (through the last CRLF), 0 while
 * incomplete, -1 when malformed.
 */
static long
chunked_length(const char *p, size_t avail)
{
    size_t off = 0;

    for (;;) {
        char *endp;
        const char *eol = memmem(p + off, avail - off, "\r\n", 2);
        unsigned long size;
        if (eol == NULL) {
            return 0;
        }
        size = strtoul(p + off, &endp, 16);
        if (endp == p + off) {
            return -1;
        }
        off = (size_t)(eol - p) + 2;
        if (size == 0) {
            /* trailers end with an empty line */
            for (;;) {
                const char *tl = memmem(p + off, avail - off, "\r\n", 2);
                if (tl == NULL) {
                    return 0;
                }
                if (tl == p + off) {
                    return (long)(off + 2);
                }
                off = (size_t)(tl - p) + 2;
            }
        }
        if (size > MAX_REQUEST || avail - off < size + 2) {
            return size > MAX_REQUEST ? -1 : 0;
        }
        off += size + 2;
    }
}

/* memmem would do, but gcc's nonnull analysis misfires on it under -fsanitize=undefined */
static const char *
find_head_end(const char *p, size_t len)
{
    for (size_t i = 3; i < len; i++) {
        if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r') {
            return p + i - 3;
        }
    }
    return NULL;
}

static void
queue_response(struct conn *c)
{
    if (c->out_len + response_len > c->out_cap) {
        c->out_cap = (c->out_len + response_len) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, response, response_len);
    c->out_len += response_len;
}

/* Consumes every complete request in the input; false on a protocol error. */
static bool
parse_requests(struct conn *c)
{
    size_t off = 0;

    while (!c->close_after && off < c->in_len) {
        const char *head = c->in + off, *v;
        const char *hend = find_head_end(head, c->in_len - off);
        size_t head_len, vlen, body_len = 0;
        bool http10;
        if (hend == NULL) {
            break;
        }
        head_len = (size_t)(hend - head) + 4;
        http10 = memmem(head, head_len, "HTTP/1.0\r\n", 10) != NULL;
        if ((v = find_header(head, head_len, "Transfer-Encoding", &vlen)) != NULL &&
            value_has(v, vlen, "chunked")) {
            long n = chunked_length(head + head_len, c->in_len - off - head_len);
            if (n < 0) {
                return false;
            }
            if (n == 0) {
                break;
            }
            body_len = (size_t)n;
        } else if ((v = find_header(head, head_len, "Content-Length", &vlen)) != NULL) {
            char tmp[24];
            if (vlen == 0 || vlen >= sizeof(tmp)) {
                return false;
            }
            memcpy(tmp, v, vlen);
            tmp[vlen] = '\0';
            body_len = strtoul(tmp, NULL, 10);
            if (body_len > MAX_REQUEST) {
                return false;
            }
            if (c->in_len - off - head_len < body_len) {
                break;
            }
        }
        v = find_header(head, head_len, "Connection", &vlen);
        if (v != NULL ? value_has(v, vlen, "close") : http10) {
            c->close_after = true;
        }
        if (http10 && !(v != NULL && value_has(v, vlen, "keep-alive"))) {
            c->close_after = true;
        }
        off += head_len + body_len;
        atomic_fetch_add_explicit(&total_requests, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&total_body_bytes, body_len, memory_order_relaxed);
        queue_response(c);
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return c->in_len <= MAX_REQUEST;
}

static void
conn_free(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Writes what is queued; false when the connection is finished. */
static bool
flush_out(int ep, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            return false;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->close_after) {
            return false;
        }
    }
    if ((c->out_len > 0) != c->want_write) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        c->want_write = c->out_len > 0;
        if (c->want_write) {
            ev.events |= EPOLLOUT;
        }
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return true;
}

/* Reads what is available; false when the peer closed or misbehaved. */
static bool
read_in(struct conn *c)
{
    for (;;) {
        ssize_t n;
        size_t room;
        if (c->in_cap - c->in_len < READ_CHUNK / 4) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : READ_CHUNK;
            c->in = xrealloc(c->in, c->in_cap);
        }
        room = c->in_cap - c->in_len;
        n = read(c->fd, c->in + c->in_len, room);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true;
        }
        if (n <= 0) {
            return false;
        }
        c->in_len += (size_t)n;
        if ((size_t)n < room) {
            return true; /* short read: the socket is drained */
        }
    }
}

static int
open_listener(void)
{
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        perror("http_backend: socket");
        exit(1);
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* one listener per thread lets the kernel spread connections */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) < 0 ||
        listen(fd, 4096) < 0) {
        perror("http_backend: bind/listen");
        exit(1);
    }
    return fd;
}

static void *
serve(void *arg)
{
    int lfd = (int)(intptr_t)arg, ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, events[MAX_EVENTS];

    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        perror("http_backend: epoll");
        exit(1);
    }
    while (!stopping) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd, one = 1;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    struct conn *nc = calloc(1, sizeof(*nc));
                    struct epoll_event cev = {.events = EPOLLIN};
                    if (nc == NULL) {
                        close(fd);
                        continue;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    nc->fd = fd;
                    cev.data.ptr = nc;
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        close(fd);
                        free(nc);
                    }
                }
                continue;
            }
            if ((events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
                bool open = read_in(c);
                if (!parse_requests(c)) {
                    conn_free(ep, c);
                    continue;
                }
                if (!open && c->out_len == 0) {
                    conn_free(ep, c);
                    continue;
                }
                if (!open) {
                    c->close_after = true;
                }
            }
            if (!flush_out(ep, c)) {
                conn_free(ep, c);
            }
        }
    }
    /* connections still open at exit are reclaimed by the kernel */
    close(ep);
    return NULL;
}

static void
on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

int
main(int argc, char **argv)
{
    const char *listen_spec = "127.0.0.1:18400";
    int threads = 1, dimensions = 384, opt;
    bool sink = false;
    pthread_t tids[MAX_THREADS];
    char host[64];
    const char *colon;
    struct sigaction sa;

    while ((opt = getopt(argc, argv, "l:t:d:s")) != -1) {
        switch (opt) {
        case 'l':
            listen_spec = optarg;
            break;
        case 't':
            threads = atoi(optarg);
            break;
        case 'd':
            dimensions = atoi(optarg);
            break;
        case 's':
            sink = true;
            break;
        default:
            fprintf(stderr, "usage: %s [-l HOST:PORT] [-t THREADS] [-d DIMENSIONS] [-s]\n",
                    argv[0]);
            return 2;
        }
    }
    colon = strrchr(listen_spec, ':');
    if (threads < 1 || threads > MAX_THREADS || dimensions < 1 || dimensions > 65536 ||
        colon == NULL || (size_t)(colon - listen_spec) >= sizeof(host)) {
        fprintf(stderr, "http_backend: bad arguments\n");
        return 2;
    }
    memcpy(host, listen_spec, (size_t)(colon - listen_spec));
    host[colon - listen_spec] = '\0';
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &listen_addr.sin_addr) != 1) {
        fprintf(stderr, "http_backend: bad address %s\n", host);
        return 2;
    }
    build_response(sink, dimensions);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (int i = 0; i < threads; i++) {
        int lfd = open_listener();
        if (pthread_create(&tids[i], NULL, serve, (void *)(intptr_t)lfd) != 0) {
            fprintf(stderr, "http_backend: pthread_create failed\n");
            return 1;
        }
    }
    fprintf(stderr, "http_backend: listening on %s, %d thread(s), %zu-byte answer\n",
            listen_spec, threads, response_len);
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
    }
    printf("requests=%lu body_bytes=%lu\n", atomic_load(&total_requests),
           atomic_load(&total_body_bytes));
    free(response);
    return 0;
}
