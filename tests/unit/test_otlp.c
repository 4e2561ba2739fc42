/*
 * test_otlp.c - the batch span processor and exporter against a real HTTP
 * receiver on loopback, run in a thread of the test.
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "otlp.h"
#include "util.h"
#include "pbdec.h"

/* ---- a tiny OTLP receiver ---- */

#define MAX_SCRIPT 8

struct receiver {
    int fd;
    uint16_t port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    /* Script: status for request i, 200 once it runs out. */
    int statuses[MAX_SCRIPT];
    size_t nstatuses;
    const char *retry_after; /* sent with non-2xx answers when set */
    unsigned stall_first_ms; /* delay before answering the first request */
    /* Observations. */
    size_t requests;
    size_t spans_accepted; /* spans in requests answered 2xx */
    uint64_t request_ms[MAX_SCRIPT];
    char path[128];
    char content_type[64];
    char content_encoding[32];
    char api_key[64];
    bool bad_body;
};

static bool
read_request(int fd, struct buf *head, struct buf *body)
{
    char chunk[4096];
    char *end = NULL;
    size_t content_length = 0, head_len;
    const char *cl;

    while (end == NULL) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n <= 0) {
            return false;
        }
        buf_append(head, chunk, (size_t)n);
        end = strstr(head->data, "\r\n\r\n");
    }
    head_len = (size_t)(end - head->data) + 4;
    cl = strcasestr(head->data, "\r\ncontent-length:");
    if (cl != NULL && cl < end) {
        content_length = strtoul(cl + 17, NULL, 10);
    }
    buf_append(body, head->data + head_len, head->len - head_len);
    head->len = head_len;
    head->data[head_len] = '\0';
    while (body->len < content_length) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n <= 0) {
            return false;
        }
        buf_append(body, chunk, (size_t)n);
    }
    return true;
}

static void
header_value(const char *head, const char *name, char *out, size_t outlen)
{
    char pattern[64];
    const char *p, *eol;

    snprintf(pattern, sizeof(pattern), "\r\n%s:", name);
    out[0] = '\0';
    p = strcasestr(head, pattern);
    if (p == NULL) {
        return;
    }
    p += strlen(pattern);
    while (*p == ' ') {
        p++;
    }
    eol = strstr(p, "\r\n");
    snprintf(out, outlen, "%.*s", (int)(eol - p), p);
}

static bool
gunzip(const struct buf *in, struct buf *out)
{
    z_stream zs;
    char chunk[16384];
    int rc;

    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, 15 + 32) != Z_OK) {
        return false;
    }
    zs.next_in = (Bytef *)in->data;
    zs.avail_in = (uInt)in->len;
    do {
        zs.next_out = (Bytef *)chunk;
        zs.avail_out = sizeof(chunk);
        rc = inflate(&zs, Z_NO_FLUSH);
        buf_append(out, chunk, sizeof(chunk) - zs.avail_out);
    } while (rc == Z_OK);
    inflateEnd(&zs);
    return rc == Z_STREAM_END;
}

/* Spans in an ExportTraceServiceRequest, or -1 when it is not one. */
static long
count_spans(const char *json, size_t len)
{
    json_t *root = json_loadb(json, len, 0, NULL), *rs, *ss;
    size_t i, j;
    long n = 0;

    if (root == NULL || !json_is_array(json_object_get(root, "resourceSpans"))) {
        json_decref(root);
        return -1;
    }
    json_array_foreach(json_object_get(root, "resourceSpans"), i, rs)
    {
        json_array_foreach(json_object_get(rs, "scopeSpans"), j, ss)
        {
            n += (long)json_array_size(json_object_get(ss, "spans"));
        }
    }
    json_decref(root);
    return n;
}

static void
serve_one(struct receiver *r, int fd)
{
    struct buf head, body, plain;
    char encoding[32], ctype[64], reply[256];
    int status;
    size_t index;
    long spans;

    buf_init(&head);
    buf_init(&body);
    buf_init(&plain);
    if (!read_request(fd, &head, &body)) {
        goto out;
    }
    header_value(head.data, "content-encoding", encoding, sizeof(encoding));
    if (strcmp(encoding, "gzip") == 0) {
        if (!gunzip(&body, &plain)) {
            buf_append(&plain, "x", 1);
        }
    } else {
        buf_append(&plain, body.data ? body.data : "", body.len);
    }
    header_value(head.data, "content-type", ctype, sizeof(ctype));
    if (strcmp(ctype, "application/x-protobuf") == 0) {
        spans = pb_count_spans(plain.data, plain.len);
    } else {
        spans = count_spans(plain.data ? plain.data : "", plain.len);
    }

    pthread_mutex_lock(&r->lock);
    index = r->requests++;
    if (index < MAX_SCRIPT) {
        r->request_ms[index] = util_mono_ms();
    }
    sscanf(head.data, "POST %127s", r->path);
    header_value(head.data, "content-type", r->content_type, sizeof(r->content_type));
    snprintf(r->content_encoding, sizeof(r->content_encoding), "%s", encoding);
    header_value(head.data, "x-api-key", r->api_key, sizeof(r->api_key));
    status = index < r->nstatuses ? r->statuses[index] : 200;
    if (spans < 0) {
        r->bad_body = true;
        status = 400;
    }
    /* Counted before answering: the exporter may report success as soon as it reads the reply. */
    if (status >= 200 && status < 300) {
        r->spans_accepted += (size_t)spans;
    }
    pthread_mutex_unlock(&r->lock);

    if (index == 0 && r->stall_first_ms > 0) {
        usleep(r->stall_first_ms * 1000);
    }
    snprintf(reply, sizeof(reply),
             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
             "Connection: close\r\n%s%s%s\r\n{}",
             status, (status >= 300 && r->retry_after) ? "Retry-After: " : "",
             (status >= 300 && r->retry_after) ? r->retry_after : "",
             (status >= 300 && r->retry_after) ? "\r\n" : "");
    if (write(fd, reply, strlen(reply)) < 0) {
        goto out;
    }
out:
    buf_free(&head);
    buf_free(&body);
    buf_free(&plain);
}

static void *
receiver_main(void *arg)
{
    struct receiver *r = arg;

    while (!atomic_load(&r->stop)) {
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        int fd;
        if (poll(&pfd, 1, 20) <= 0) {
            continue;
        }
        fd = accept(r->fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        serve_one(r, fd);
        close(fd);
    }
    return NULL;
}

static int
listen_loopback(uint16_t *port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert_geq(fd, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    cr_assert_eq(listen(fd, 16), 0);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    *port = ntohs(sin.sin_port);
    return fd;
}

static void
receiver_start(struct receiver *r)
{
    r->fd = listen_loopback(&r->port);
    atomic_init(&r->stop, false);
    pthread_mutex_init(&r->lock, NULL);
    pthread_create(&r->thread, NULL, receiver_main, r);
}

static void
receiver_stop(struct receiver *r)
{
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    close(r->fd);
    pthread_mutex_destroy(&r->lock);
}

static size_t
receiver_get(struct receiver *r, const size_t *field)
{
    size_t v;

    pthread_mutex_lock(&r->lock);
    v = *field;
    pthread_mutex_unlock(&r->lock);
    return v;
}

/* Poll until *field reaches want or timeout_ms passes; returns the last value. */
static size_t
wait_for(struct receiver *r, const size_t *field, size_t want, uint64_t timeout_ms)
{
    uint64_t end = util_mono_ms() + timeout_ms;
    size_t v;

    while ((v = receiver_get(r, field)) < want && util_mono_ms() < end) {
        usleep(5000);
    }
    return v;
}

/* ---- helpers ---- */

static void
test_settings(struct telemetry_settings *t, uint16_t port)
{
    char url[64];

    telemetry_settings_init(t);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)port);
    telemetry_settings_set(&t->otlp_endpoint, url);
    t->schedule_delay_ms = 50;
    t->export_timeout_ms = 3000;
    t->request_timeout_ms = 1000;
    t->retry_base_ms = 20;
    t->retry_max_ms = 100;
}

/* A receiver on loopback and settings that export to it fast; finish undoes both. */
static void
begin(struct receiver *r, struct telemetry_settings *t)
{
    receiver_start(r);
    test_settings(t, r->port);
}

static void
finish(struct receiver *r, struct telemetry_settings *t)
{
    receiver_stop(r);
    telemetry_settings_free(t);
}

static struct otlp_exporter *
start(const struct telemetry_settings *t)
{
    const char *cause = NULL;
    struct otlp_exporter *e = otlp_start(t, "9.9.9", &cause);

    cr_assert_not_null(e, "otlp_start: %s", cause ? cause : "(no cause)");
    return e;
}

static struct trace_span *
make_span(const char *name)
{
    struct trace_sampler s;
    struct trace_context ctx;
    struct trace_span *span;
    uint64_t now = otlp_now_unix_ns();

    trace_sampler_init(&s, TRACE_SAMPLER_ALWAYS_ON, 0);
    trace_start(&s, NULL, &ctx);
    span = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, name, now);
    trace_span_attr_str(span, "http.request.method", "POST");
    trace_span_end(span, now + 1000);
    return span;
}

static void
submit_n(struct otlp_exporter *e, int n)
{
    for (int i = 0; i < n; i++) {
        otlp_submit(e, make_span("POST /v1/embeddings"));
    }
}

/* ---- tests ---- */

Test(otlp, spans_arrive_with_path_content_type_and_headers)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;

    begin(&r, &t);
    telemetry_settings_set(&t.otlp_headers, "x-api-key=s3cret%21");
    e = start(&t);
    submit_n(e, 5);
    cr_assert_eq(wait_for(&r, &r.spans_accepted, 5, 5000), 5, "the schedule delay sends them");
    cr_assert(otlp_shutdown(e, 2000));
    cr_assert_str_eq(r.path, "/v1/traces");
    cr_assert_str_eq(r.content_type, "application/x-protobuf", "protobuf is the default");
    cr_assert_str_eq(r.api_key, "s3cret!", "header values are percent-decoded");
    cr_assert_not(r.bad_body);
    finish(&r, &t);
}

Test(otlp, http_json_sends_json_bodies)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;

    begin(&r, &t);
    t.protocol = TELEMETRY_HTTP_JSON;
    t.schedule_delay_ms = 60000;
    e = start(&t);
    submit_n(e, 700); /* more than a batch: two bodies, the second after a shift */
    cr_assert(otlp_flush(e, 5000));
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 700);
    cr_assert_eq(receiver_get(&r, &r.requests), 2);
    cr_assert_str_eq(r.content_type, "application/json");
    cr_assert_not(r.bad_body, "each body parses as an ExportTraceServiceRequest");
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, counters_report_exported_spans)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint64_t exported, dropped, failures;

    begin(&r, &t);
    t.schedule_delay_ms = 60000; /* only the flush sends, in one batch */
    e = start(&t);
    submit_n(e, 6);
    cr_assert(otlp_flush(e, 5000));
    otlp_counters(e, &exported, &dropped, &failures);
    cr_assert_eq(exported, 6);
    cr_assert_eq(dropped, 0);
    cr_assert_eq(failures, 0);
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, a_full_batch_leaves_before_the_schedule_delay)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint64_t start_ms;

    begin(&r, &t);
    t.schedule_delay_ms = 60000;
    t.max_export_batch = 4;
    e = start(&t);
    start_ms = util_mono_ms();
    submit_n(e, 4);
    cr_assert_eq(wait_for(&r, &r.spans_accepted, 4, 5000), 4);
    cr_assert_lt(util_mono_ms() - start_ms, 5000);
    cr_assert_eq(receiver_get(&r, &r.requests), 1, "one request for one full batch");
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, a_backlog_leaves_in_batches_of_at_most_the_batch_size)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;

    begin(&r, &t);
    t.schedule_delay_ms = 60000;
    t.max_export_batch = 4;
    r.stall_first_ms = 300; /* the first batch is slow: the next spans queue up behind it */
    e = start(&t);
    submit_n(e, 11);
    cr_assert(otlp_flush(e, 5000));
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 11, "every span arrives once");
    cr_assert_eq(receiver_get(&r, &r.requests), 3, "4 + 4 + 3");
    cr_assert_not(r.bad_body, "each batch is valid OTLP JSON");
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

/*
 * Protobuf bodies are the queue's own bytes, each batch's envelope written
 * just before its spans: over the queue's head room for the first batch of
 * a take, over the batch before it for the others. Twelve spans queue up
 * behind a stalled first batch and are taken together, three batches of
 * four: each must arrive as a whole, valid request.
 */
Test(otlp, protobuf_batches_taken_together_each_arrive_whole)
{
    struct receiver r = {.stall_first_ms = 500};
    struct telemetry_settings t;
    struct otlp_exporter *e;

    begin(&r, &t);
    t.schedule_delay_ms = 60000;
    t.max_export_batch = 4;
    e = start(&t);
    submit_n(e, 4);
    cr_assert_eq(wait_for(&r, &r.requests, 1, 5000), 1, "the first batch is at the collector");
    submit_n(e, 12);
    cr_assert(otlp_flush(e, 5000));
    cr_assert_str_eq(r.content_type, "application/x-protobuf");
    cr_assert_not(r.bad_body, "each body parses as an ExportTraceServiceRequest");
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 16, "every span arrives once");
    cr_assert_eq(receiver_get(&r, &r.requests), 4, "4, then 12 taken together and sent as 4 + 4 + 4");
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, a_503_is_retried_and_the_spans_still_arrive)
{
    struct receiver r = {.statuses = {503}, .nstatuses = 1};
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint64_t exported, failures;

    begin(&r, &t);
    t.schedule_delay_ms = 60000; /* only the flush sends, in one batch */
    e = start(&t);
    submit_n(e, 3);
    cr_assert(otlp_flush(e, 5000));
    otlp_counters(e, &exported, NULL, &failures);
    cr_assert_eq(receiver_get(&r, &r.requests), 2);
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 3);
    cr_assert_eq(exported, 3);
    cr_assert_eq(failures, 0);
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, retry_after_from_the_collector_sets_the_delay)
{
    struct receiver r = {.statuses = {429}, .nstatuses = 1, .retry_after = "1"};
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint64_t gap;

    begin(&r, &t);
    t.schedule_delay_ms = 60000; /* only the flush sends, in one batch */
    e = start(&t);
    submit_n(e, 2);
    cr_assert(otlp_flush(e, 5000));
    cr_assert_eq(receiver_get(&r, &r.requests), 2);
    gap = r.request_ms[1] - r.request_ms[0];
    cr_assert_geq(gap, 900, "retried after %llu ms, Retry-After said 1 s", (unsigned long long)gap);
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 2);
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, a_400_is_not_retried)
{
    struct receiver r = {.statuses = {400}, .nstatuses = 1};
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint64_t exported, failures;
    struct breaker_stats bs;

    begin(&r, &t);
    t.schedule_delay_ms = 60000; /* only the flush sends, in one batch */
    e = start(&t);
    submit_n(e, 2);
    cr_assert(otlp_flush(e, 5000));
    otlp_counters(e, &exported, NULL, &failures);
    cr_assert_eq(receiver_get(&r, &r.requests), 1);
    cr_assert_eq(exported, 0);
    cr_assert_eq(failures, 1);
    otlp_breaker_stats(e, &bs);
    cr_assert_eq(bs.failed_calls, 0, "a rejected payload says nothing about the collector");
    otlp_shutdown(e, 2000);
    finish(&r, &t);
}

Test(otlp, collector_down_counts_failures_and_submit_never_blocks)
{
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint64_t exported, failures, worst = 0;
    struct breaker_stats bs;
    uint16_t port;
    int fd = listen_loopback(&port);

    close(fd); /* nothing listens there now: connection refused */
    test_settings(&t, port);
    t.export_timeout_ms = 300;
    t.max_export_batch = 8;
    e = start(&t);
    for (int i = 0; i < 400; i++) {
        uint64_t t0 = util_mono_us(), dt;
        otlp_submit(e, make_span("POST /v1/embeddings"));
        dt = util_mono_us() - t0;
        worst = MAX(worst, dt);
        if (i % 50 == 0) {
            usleep(20000);
        }
    }
    cr_assert_lt(worst, 50000, "a submit took %llu us", (unsigned long long)worst);
    cr_assert(otlp_flush(e, 10000));
    otlp_counters(e, &exported, NULL, &failures);
    cr_assert_eq(exported, 0);
    cr_assert_geq(failures, 1);
    otlp_breaker_stats(e, &bs);
    cr_assert_gt(bs.failed_calls, 0);
    cr_assert_eq(bs.state, BREAKER_OPEN, "repeated refusals open the otlp-exporter breaker");
    otlp_shutdown(e, 1000);
    telemetry_settings_free(&t);
}

/*
 * An exporter with a queue of 4 behind a first batch of 4 that the receiver
 * (its first answer stalled) holds: the queue is empty and the exporter busy.
 */
static struct otlp_exporter *
start_behind_a_stalled_batch(struct receiver *r, struct telemetry_settings *t)
{
    struct otlp_exporter *e;

    r->stall_first_ms = 800;
    begin(r, t);
    t->max_queue_size = 4;
    t->max_export_batch = 4;
    t->schedule_delay_ms = 60000;
    e = start(t);
    submit_n(e, 4); /* a full batch: the exporter takes it and waits on the stalled receiver */
    cr_assert_eq(wait_for(r, &r->requests, 1, 2000), 1);
    return e;
}

Test(otlp, a_full_queue_drops_and_counts_spans)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e = start_behind_a_stalled_batch(&r, &t);
    uint64_t dropped;

    submit_n(e, 10); /* 4 fit in the queue, 6 do not */
    otlp_counters(e, NULL, &dropped, NULL);
    cr_assert_eq(dropped, 6);
    cr_assert(otlp_shutdown(e, 5000), "the 8 queued spans are exported at shutdown");
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 8);
    finish(&r, &t);
}

/*
 * A request's spans go in under one lock (otlp_submit_spans): as many as
 * the queue has room for are queued, in order, the rest dropped and
 * counted, and every span is freed (LeakSanitizer checks the last).
 */
Test(otlp, spans_submitted_together_fill_the_queue_and_the_rest_are_dropped)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e = start_behind_a_stalled_batch(&r, &t);
    struct trace_span *spans[3];
    uint64_t dropped;

    for (int i = 0; i < 3; i++) {
        spans[i] = make_span("POST /v1/embeddings");
    }
    otlp_submit_spans(e, spans, 3); /* room for 4: all three */
    for (int i = 0; i < 3; i++) {
        spans[i] = make_span("POST /v1/embeddings");
    }
    otlp_submit_spans(e, spans, 3); /* room for 1: one queued, two dropped */
    otlp_counters(e, NULL, &dropped, NULL);
    cr_assert_eq(dropped, 2);
    cr_assert(otlp_shutdown(e, 5000), "the 4 queued spans are exported at shutdown");
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 8);
    cr_assert_not(r.bad_body);
    finish(&r, &t);
}

/* A batch submitted to no exporter is freed span by span: back to the span pool. */
Test(otlp, spans_submitted_to_no_exporter_are_freed)
{
    struct trace_span *spans[2] = {make_span("a"), make_span("b")};
    size_t pooled = trace_span_pool_count();

    otlp_submit_spans(NULL, spans, 2);
    cr_assert_eq(trace_span_pool_count(), pooled + 2);
    otlp_submit_spans(NULL, spans, 0);
    cr_assert_eq(trace_span_pool_count(), pooled + 2, "none: nothing freed");
}

Test(otlp, shutdown_flushes_pending_spans)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;

    begin(&r, &t);
    t.schedule_delay_ms = 60000;
    e = start(&t);
    submit_n(e, 7);
    cr_assert(otlp_shutdown(e, 5000), "every pending span reached the collector");
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 7);
    finish(&r, &t);
}

Test(otlp, shutdown_gives_up_at_its_deadline)
{
    struct telemetry_settings t;
    struct otlp_exporter *e;
    uint16_t port;
    int fd = listen_loopback(&port);
    uint64_t t0;

    close(fd);
    test_settings(&t, port);
    t.schedule_delay_ms = 60000;
    t.retry_base_ms = 200;
    t.retry_max_ms = 200;
    e = start(&t);
    submit_n(e, 3);
    t0 = util_mono_ms();
    cr_assert_not(otlp_shutdown(e, 300));
    cr_assert_lt(util_mono_ms() - t0, 1500, "shutdown honours its timeout, not the export's");
    telemetry_settings_free(&t);
}

Test(otlp, gzip_bodies_are_compressed_and_decodable)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;

    begin(&r, &t);
    t.schedule_delay_ms = 60000; /* only the flush sends, in one batch */
    t.gzip = true;
    e = start(&t);
    submit_n(e, 20);
    cr_assert(otlp_flush(e, 5000));
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 20);
    cr_assert_str_eq(r.content_encoding, "gzip");
    cr_assert_not(r.bad_body);
    cr_assert(otlp_shutdown(e, 2000));
    finish(&r, &t);
}

Test(otlp, console_export_prints_one_json_line_per_span, .init = cr_redirect_stderr)
{
    struct telemetry_settings t;
    struct otlp_exporter *e;
    char line[4096];
    FILE *err;
    int lines = 0;

    telemetry_settings_init(&t);
    t.console_export = true;
    t.schedule_delay_ms = 60000;
    e = start(&t);
    submit_n(e, 3);
    cr_assert(otlp_shutdown(e, 2000));
    fflush(stderr);
    err = cr_get_redirected_stderr();
    while (fgets(line, sizeof(line), err) != NULL) {
        json_t *span = json_loads(line, 0, NULL);
        if (span != NULL) {
            cr_assert_str_eq(json_string_value(json_object_get(span, "name")),
                             "POST /v1/embeddings");
            lines++;
            json_decref(span);
        }
    }
    cr_assert_eq(lines, 3);
    telemetry_settings_free(&t);
}

/* Console lines are JSON while the collector gets protobuf: both queues hold every span. */
Test(otlp, console_and_protobuf_export_together, .init = cr_redirect_stderr)
{
    struct receiver r = {0};
    struct telemetry_settings t;
    struct otlp_exporter *e;
    char line[4096];
    FILE *err;
    int lines = 0;

    begin(&r, &t);
    t.console_export = true;
    t.schedule_delay_ms = 60000;
    t.max_export_batch = 16; /* three batches: both queues shift between them */
    e = start(&t);
    submit_n(e, 40);
    cr_assert(otlp_shutdown(e, 5000));
    cr_assert_eq(receiver_get(&r, &r.spans_accepted), 40);
    cr_assert_eq(receiver_get(&r, &r.requests), 3);
    cr_assert_str_eq(r.content_type, "application/x-protobuf");
    cr_assert_not(r.bad_body);
    fflush(stderr);
    err = cr_get_redirected_stderr();
    while (fgets(line, sizeof(line), err) != NULL) {
        json_t *span = json_loads(line, 0, NULL);
        cr_assert_not_null(span, "not a JSON line: %s", line);
        cr_assert_str_eq(json_string_value(json_object_get(span, "name")), "POST /v1/embeddings");
        lines++;
        json_decref(span);
    }
    cr_assert_eq(lines, 40);
    finish(&r, &t);
}

Test(otlp, nothing_to_export_gives_no_exporter_and_submit_frees)
{
    struct telemetry_settings t;
    const char *cause = "unset";
    struct otlp_exporter *e;
    uint64_t exported = 99;

    telemetry_settings_init(&t);
    e = otlp_start(&t, "1", &cause);
    cr_assert_null(e);
    cr_assert_null(cause, "no endpoint is not an error");
    otlp_submit(NULL, make_span("x")); /* freed: LeakSanitizer would say otherwise */
    otlp_counters(NULL, &exported, NULL, NULL);
    cr_assert_eq(exported, 0);
    telemetry_settings_set(&t.otlp_endpoint, "http://127.0.0.1:9");
    t.disabled = true;
    cr_assert_null(otlp_start(&t, "1", &cause), "OTEL_SDK_DISABLED exports nothing");
    cr_assert(otlp_shutdown(NULL, 10));
    telemetry_settings_free(&t);
}
