/*
 * http_backend.c - the fixed upstream of the benchmark: answers every request
 * with a canned body, as fast as one epoll loop per thread allows, so the
 * backend is never what limits a proxy's numbers.
 *
 *   http_backend [-l HOST:PORT] [-t THREADS] [-d DIMENSIONS] [-n BATCH]
 *                [-D BATCH_DIMENSIONS] [-c] [-s]
 *
 * Default body: an OpenAI /v1/embeddings answer with one DIMENSIONS-float
 * vector. A request whose "input" is an array gets the batch answer instead:
 * BATCH vectors (64) of BATCH_DIMENSIONS (1536) float32 values, as
 * full-precision JSON numbers (the shortest text that reads back as the same
 * double, about 2 MB in all) or, when the request says
 * "encoding_format":"base64", as base64 of the little-endian float32 array
 * (about 530 KB). Every answer is built once at start and written from that
 * one copy. -c (count): one vector per input instead, as an embedding cache
 * that asks for its misses alone needs; an "input" array of k strings gets
 * the first k of the BATCH vectors (answers for every k in 1..BATCH are built
 * at start, so keep BATCH_DIMENSIONS modest, e.g. -D 384: about 20 MB), a
 * string input gets the first vector, and an array of more than BATCH
 * strings (or of none, such as token ids) gets a 400. k is counted by a
 * plain scan of the array's strings, not a JSON parser: it assumes an array
 * of strings, which is what the bench scripts send (their texts hold no
 * quotes, commas or escapes; a backslash escape is skipped all the same).
 * -s (sink): answer "{}", which is all an OTLP/HTTP exporter
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define READ_CHUNK 65536
#define MAX_REQUEST (64u * 1024 * 1024) /* a request larger than this closes the connection */
#define MAX_THREADS 64
#define OUT_QUEUE 64 /* answers queued per connection; parsing waits when full */

/* One whole answer, head and body, built at start and shared read-only. */
struct answer {
    char *text;
    size_t len;
};

struct conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    /* answers to write, in order: pointers to the shared ones, never copies */
    const struct answer *out[OUT_QUEUE];
    unsigned out_first, out_count;
    size_t out_off;   /* bytes of out[out_first] already written */
    bool close_after; /* the last queued answer ends the connection */
    bool want_write;  /* EPOLLOUT armed */
};

static struct sockaddr_in listen_addr;
static struct answer single_answer, batch_float, batch_base64;
/* -c: count_float[k] and count_base64[k] hold k vectors, k = 1..count_max */
static struct answer *count_float, *count_base64, too_many;
static int count_max;
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

/* Grows a text buffer; the answers are built once, so doubling is plenty. */
struct text {
    char *p;
    size_t len, cap;
};

static void
text_reserve(struct text *t, size_t more)
{
    if (t->len + more + 1 > t->cap) {
        while (t->len + more + 1 > t->cap) {
            t->cap = t->cap ? t->cap * 2 : 4096;
        }
        t->p = xrealloc(t->p, t->cap);
    }
}

static void
text_add(struct text *t, const char *s, size_t n)
{
    text_reserve(t, n);
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void
text_str(struct text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

/* Head and body into one answer; takes the body's text. */
static void
make_answer_status(struct answer *a, const char *status, struct text *body)
{
    char head[200];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\n"
                     "\r\n",
                     status, body->len);

    a->len = (size_t)n + body->len;
    a->text = xmalloc(a->len);
    memcpy(a->text, head, (size_t)n);
    memcpy(a->text + n, body->p, body->len);
    free(body->p);
}

static void
make_answer(struct answer *a, struct text *body)
{
    make_answer_status(a, "200 OK", body);
}

/* The single-vector answer: deterministic and unit-length, 7 decimals. */
static void
build_single(bool sink, int dimensions)
{
    struct text body = {0};
    double norm = 0.0;
    char num[32];

    if (sink) {
        text_str(&body, "{}");
        make_answer(&single_answer, &body);
        return;
    }
    for (int i = 0; i < dimensions; i++) {
        double v = sin(i * 0.37 + 1.0);
        norm += v * v;
    }
    norm = sqrt(norm);
    text_str(&body, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                    "\"index\":0,\"embedding\":[");
    for (int i = 0; i < dimensions; i++) {
        int n = snprintf(num, sizeof(num), "%s%.7f", i ? "," : "", sin(i * 0.37 + 1.0) / norm);
        text_add(&body, num, (size_t)n);
    }
    text_str(&body, "]}],\"model\":\"bench-model\","
                    "\"usage\":{\"prompt_tokens\":64,\"total_tokens\":64}}");
    make_answer(&single_answer, &body);
}

/*
 * A float32 as an OpenAI answer prints it: the float widened to a double,
 * written with the fewest significant digits that read back as that double
 * (up to 17, e.g. -0.023044034466147423).
 */
static int
format_float(char *buf, size_t cap, float f)
{
    double d = f;
    int n = 0;

    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, d);
        if (strtod(buf, NULL) == d) {
            break;
        }
    }
    return n;
}

static void
base64_add(struct text *t, const unsigned char *p, size_t n)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;

    text_reserve(t, (n + 2) / 3 * 4);
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        t->p[t->len++] = digits[v >> 18];
        t->p[t->len++] = digits[(v >> 12) & 63];
        t->p[t->len++] = digits[(v >> 6) & 63];
        t->p[t->len++] = digits[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
        t->p[t->len++] = digits[v >> 18];
        t->p[t->len++] = digits[(v >> 12) & 63];
        t->p[t->len++] = i + 1 < n ? digits[(v >> 6) & 63] : '=';
        t->p[t->len++] = '=';
    }
    t->p[t->len] = '\0';
}

/* One batch vector as both encodings print it, without the object around it. */
struct vector_text {
    struct text json; /* [n,n,...] */
    struct text b64;  /* "...." */
};

/*
 * count unit-length vectors of pseudo-random float32 values (a fixed
 * xorshift sequence, so every run serves the same bytes), each printed once
 * as JSON numbers and once as base64.
 */
static struct vector_text *
build_vectors(int count, int dimensions)
{
    struct vector_text *vt = calloc((size_t)count, sizeof(*vt));
    float *vec = xmalloc((size_t)dimensions * sizeof(float));
    unsigned char *raw = xmalloc((size_t)dimensions * 4);
    uint64_t state = 0x9e3779b97f4a7c15ULL;
    char num[40];

    if (vt == NULL) {
        fprintf(stderr, "http_backend: out of memory\n");
        abort();
    }
    for (int k = 0; k < count; k++) {
        double norm = 0.0;
        for (int i = 0; i < dimensions; i++) {
            /* the sum of two uniforms: roughly bell-shaped, like real components */
            double u = 0.0;
            for (int j = 0; j < 2; j++) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                u += (double)(state >> 11) / 9007199254740992.0 - 0.5;
            }
            vec[i] = (float)u;
            norm += u * u;
        }
        norm = sqrt(norm);
        for (int i = 0; i < dimensions; i++) {
            uint32_t bits;
            vec[i] = (float)(vec[i] / norm);
            memcpy(&bits, &vec[i], 4);
            raw[4 * i] = (unsigned char)bits;
            raw[4 * i + 1] = (unsigned char)(bits >> 8);
            raw[4 * i + 2] = (unsigned char)(bits >> 16);
            raw[4 * i + 3] = (unsigned char)(bits >> 24);
        }
        text_add(&vt[k].json, "[", 1);
        for (int i = 0; i < dimensions; i++) {
            int n = format_float(num + 1, sizeof(num) - 1, vec[i]);
            num[0] = ',';
            text_add(&vt[k].json, i ? num : num + 1, (size_t)n + (i ? 1 : 0));
        }
        text_add(&vt[k].json, "]", 1);
        text_add(&vt[k].b64, "\"", 1);
        base64_add(&vt[k].b64, raw, (size_t)dimensions * 4);
        text_add(&vt[k].b64, "\"", 1);
    }
    free(vec);
    free(raw);
    return vt;
}

/* The answer holding the first count vectors, as JSON numbers and as base64. */
static void
assemble_batch(const struct vector_text *vt, int count, struct answer *json_answer,
               struct answer *b64_answer)
{
    struct text json = {0}, b64 = {0};
    char frame[96];

    text_str(&json, "{\"object\":\"list\",\"data\":[");
    text_str(&b64, "{\"object\":\"list\",\"data\":[");
    for (int k = 0; k < count; k++) {
        snprintf(frame, sizeof(frame),
                 "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", k ? "," : "", k);
        text_str(&json, frame);
        text_str(&b64, frame);
        text_add(&json, vt[k].json.p, vt[k].json.len);
        text_add(&b64, vt[k].b64.p, vt[k].b64.len);
        text_add(&json, "}", 1);
        text_add(&b64, "}", 1);
    }
    snprintf(frame, sizeof(frame),
             "],\"model\":\"bench-model\",\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}",
             count * 40, count * 40);
    text_str(&json, frame);
    text_str(&b64, frame);
    make_answer(json_answer, &json);
    make_answer(b64_answer, &b64);
}

/*
 * The batch answers: count vectors of dimensions floats. With counting, the
 * answers of 1..count vectors as well, and the 400 for any other count.
 */
static void
build_batch(int count, int dimensions, bool counting)
{
    struct vector_text *vt = build_vectors(count, dimensions);

    assemble_batch(vt, count, &batch_float, &batch_base64);
    if (counting) {
        struct text body = {0};
        count_max = count;
        count_float = calloc((size_t)count + 1, sizeof(struct answer));
        count_base64 = calloc((size_t)count + 1, sizeof(struct answer));
        if (count_float == NULL || count_base64 == NULL) {
            fprintf(stderr, "http_backend: out of memory\n");
            abort();
        }
        for (int k = 1; k <= count; k++) {
            assemble_batch(vt, k, &count_float[k], &count_base64[k]);
        }
        text_str(&body, "{\"error\":{\"message\":\"http_backend -c: expected an input "
                        "array of 1 to BATCH strings\",\"type\":\"invalid_request_error\"}}");
        make_answer_status(&too_many, "400 Bad Request", &body);
    }
    for (int k = 0; k < count; k++) {
        free(vt[k].json.p);
        free(vt[k].b64.p);
    }
    free(vt);
}

/*
 * The strings of the JSON array that starts at p ('['), counted by their
 * opening quotes; -1 when the array does not end before end. A plain scan,
 * not a parser: an array of strings is assumed (see the top of the file).
 */
static long
count_array_strings(const char *p, const char *end)
{
    long n = 0;
    bool in_string = false;

    for (p++; p < end; p++) {
        if (in_string) {
            if (*p == '\\') {
                p++;
            } else if (*p == '"') {
                in_string = false;
            }
        } else if (*p == '"') {
            in_string = true;
            n++;
        } else if (*p == ']') {
            return n;
        }
    }
    return -1;
}

/* The value after "key" and its colon in a JSON text, or NULL (a plain search: bench bodies only).
 */
static const char *
json_value_of(const char *p, size_t len, const char *quoted_key)
{
    size_t kl = strlen(quoted_key);
    const char *end = p + len, *k = memmem(p, len, quoted_key, kl);

    if (k == NULL) {
        return NULL;
    }
    k += kl;
    while (k < end && (*k == ' ' || *k == '\t' || *k == '\r' || *k == '\n')) {
        k++;
    }
    if (k == end || *k != ':') {
        return NULL;
    }
    k++;
    while (k < end && (*k == ' ' || *k == '\t' || *k == '\r' || *k == '\n')) {
        k++;
    }
    return k < end ? k : NULL;
}

/* Which answer a request body asks for: an "input" array gets the batch (-c: k vectors). */
static const struct answer *
choose_answer(const char *body, size_t len)
{
    const char *input = json_value_of(body, len, "\"input\"");
    const char *enc;

    bool base64;

    if (batch_float.text == NULL || input == NULL || (*input != '[' && count_max == 0)) {
        return &single_answer;
    }
    enc = json_value_of(body, len, "\"encoding_format\"");
    base64 = enc != NULL && (size_t)(body + len - enc) >= 8 && memcmp(enc, "\"base64\"", 8) == 0;
    if (count_max > 0) {
        long k = *input == '[' ? count_array_strings(input, body + len) : 1;
        if (k < 1 || k > count_max) {
            return &too_many;
        }
        return base64 ? &count_base64[k] : &count_float[k];
    }
    return base64 ? &batch_base64 : &batch_float;
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
queue_answer(struct conn *c, const struct answer *a)
{
    c->out[(c->out_first + c->out_count) % OUT_QUEUE] = a;
    c->out_count++;
}

/*
 * Consumes the complete requests in the input, as many as the answer queue
 * has room for; false on a protocol error.
 */
static bool
parse_requests(struct conn *c)
{
    size_t off = 0;

    while (!c->close_after && off < c->in_len && c->out_count < OUT_QUEUE) {
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
        queue_answer(c, choose_answer(head + head_len, body_len));
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
    free(c);
}

/* Writes what is queued; false when the connection is finished. */
static bool
flush_out(int ep, struct conn *c)
{
    while (c->out_count > 0) {
        struct iovec iov[OUT_QUEUE];
        int niov = 0;
        ssize_t n;
        for (unsigned i = 0; i < c->out_count; i++) {
            const struct answer *a = c->out[(c->out_first + i) % OUT_QUEUE];
            size_t skip = i == 0 ? c->out_off : 0;
            iov[niov].iov_base = a->text + skip;
            iov[niov].iov_len = a->len - skip;
            niov++;
        }
        n = writev(c->fd, iov, niov);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            return false;
        }
        /* retire the answers that went out whole */
        while (n > 0) {
            const struct answer *a = c->out[c->out_first];
            size_t left = a->len - c->out_off;
            if ((size_t)n < left) {
                c->out_off += (size_t)n;
                break;
            }
            n -= (ssize_t)left;
            c->out_off = 0;
            c->out_first = (c->out_first + 1) % OUT_QUEUE;
            c->out_count--;
        }
    }
    if (c->out_count == 0 && c->close_after) {
        return false;
    }
    if ((c->out_count > 0) != c->want_write) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        c->want_write = c->out_count > 0;
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
                if (!open && c->out_count == 0) {
                    conn_free(ep, c);
                    continue;
                }
                if (!open) {
                    c->close_after = true;
                }
            }
            if (!flush_out(ep, c)) {
                conn_free(ep, c);
                continue;
            }
            /* requests left waiting for room in a full answer queue */
            while (c->in_len > 0 && c->out_count == 0 && !c->close_after) {
                unsigned before = c->out_count;
                if (!parse_requests(c)) {
                    conn_free(ep, c);
                    c = NULL;
                    break;
                }
                if (c->out_count == before) {
                    break; /* only an incomplete request is left */
                }
                if (!flush_out(ep, c)) {
                    conn_free(ep, c);
                    c = NULL;
                    break;
                }
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
    int threads = 1, dimensions = 384, batch = 64, batch_dimensions = 1536, opt;
    bool sink = false, counting = false;
    pthread_t tids[MAX_THREADS];
    char host[64];
    const char *colon;
    struct sigaction sa;

    while ((opt = getopt(argc, argv, "l:t:d:n:D:cs")) != -1) {
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
        case 'n':
            batch = atoi(optarg);
            break;
        case 'D':
            batch_dimensions = atoi(optarg);
            break;
        case 'c':
            counting = true;
            break;
        case 's':
            sink = true;
            break;
        default:
            fprintf(stderr,
                    "usage: %s [-l HOST:PORT] [-t THREADS] [-d DIMENSIONS] [-n BATCH] "
                    "[-D BATCH_DIMENSIONS] [-c] [-s]\n",
                    argv[0]);
            return 2;
        }
    }
    colon = strrchr(listen_spec, ':');
    if (threads < 1 || threads > MAX_THREADS || dimensions < 1 || dimensions > 65536 || batch < 1 ||
        batch > 2048 || batch_dimensions < 1 || batch_dimensions > 65536 || colon == NULL ||
        (size_t)(colon - listen_spec) >= sizeof(host)) {
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
    build_single(sink, dimensions);
    if (!sink) {
        build_batch(batch, batch_dimensions, counting);
    }

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
    fprintf(stderr,
            "http_backend: listening on %s, %d thread(s), %zu-byte answer; "
            "batch answers: float %zu bytes, base64 %zu bytes%s\n",
            listen_spec, threads, single_answer.len, batch_float.len, batch_base64.len,
            counting ? "; -c: one vector per input" : "");
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
    }
    printf("requests=%lu body_bytes=%lu\n", atomic_load(&total_requests),
           atomic_load(&total_body_bytes));
    free(single_answer.text);
    free(batch_float.text);
    free(batch_base64.text);
    for (int k = 1; k <= count_max; k++) {
        free(count_float[k].text);
        free(count_base64[k].text);
    }
    free(count_float);
    free(count_base64);
    free(too_many.text);
    return 0;
}
