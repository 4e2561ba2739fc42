/*
 * otlp.c - batch span processor and OTLP/HTTP exporter thread (protobuf or
 * JSON bodies).
 *
 * Threads: any thread calls otlp_submit; one exporter thread owns the curl
 * handle, the PRNG and the export loop. The queue lock is held to append a
 * span's encoding (under a microsecond) and to swap the queue out for export
 * (see take_batch), never for a batch's copy or across network I/O. The
 * breaker has its own lock because /stats reads it from the event loop
 * thread.
 *
 * Why spans are encoded on submit: queued as structures, the thousands of
 * spans in flight cycled through the cache and cost the loop thread a fifth
 * of its time per traced request (measured: a ring of 1,024 spans kept on
 * the loop thread alone costs as much); encoded at once, the loop thread
 * reuses a few warm spans and writes the queue sequentially. Protobuf, the
 * default, is about half the bytes of JSON per span (raw ids, fixed64 times,
 * no field names), which is half the queue to write and the body to send.
 *
 * libcurl is loaded with dlopen() the first time an exporter starts, not
 * linked: Debian's libcurl pulls in GnuTLS, LDAP, RTMP, SSH and a dozen more
 * libraries whose start-up costs every process about 3 MiB of RSS and a few
 * milliseconds, also when no OTLP endpoint is configured (the default).
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include "otlp.h"

#define CURL_DISABLE_TYPECHECK /* the calls below go through function pointers */
#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "retry.h"
#include "util.h"

/* The libcurl functions the exporter uses, resolved from libcurl.so.4. */
static struct {
    void *lib;
    CURLcode (*global_init)(long flags);
    void (*global_cleanup)(void);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *curl, CURLoption option, ...);
    CURLcode (*easy_perform)(CURL *curl);
    CURLcode (*easy_getinfo)(CURL *curl, CURLINFO info, ...);
    const char *(*easy_strerror)(CURLcode code);
    void (*easy_cleanup)(CURL *curl);
    struct curl_slist *(*slist_append)(struct curl_slist *list, const char *s);
    void (*slist_free_all)(struct curl_slist *list);
    curl_version_info_data *(*version_info)(CURLversion age);
} curlfn;

/* Load libcurl once (exporters start on the main thread); NULL, or why not. */
static const char *
curl_load(void)
{
    static const struct {
        const char *name;
        size_t offset;
    } syms[] = {
        {"curl_global_init", offsetof(__typeof__(curlfn), global_init)},
        {"curl_global_cleanup", offsetof(__typeof__(curlfn), global_cleanup)},
        {"curl_easy_init", offsetof(__typeof__(curlfn), easy_init)},
        {"curl_easy_setopt", offsetof(__typeof__(curlfn), easy_setopt)},
        {"curl_easy_perform", offsetof(__typeof__(curlfn), easy_perform)},
        {"curl_easy_getinfo", offsetof(__typeof__(curlfn), easy_getinfo)},
        {"curl_easy_strerror", offsetof(__typeof__(curlfn), easy_strerror)},
        {"curl_easy_cleanup", offsetof(__typeof__(curlfn), easy_cleanup)},
        {"curl_slist_append", offsetof(__typeof__(curlfn), slist_append)},
        {"curl_slist_free_all", offsetof(__typeof__(curlfn), slist_free_all)},
        {"curl_version_info", offsetof(__typeof__(curlfn), version_info)},
    };

    if (curlfn.lib != NULL) {
        return NULL;
    }
    curlfn.lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (curlfn.lib == NULL) {
        return "cannot load libcurl.so.4 (apt-get install libcurl4)";
    }
    for (size_t i = 0; i < ARRAY_SIZE(syms); i++) {
        void *f = dlsym(curlfn.lib, syms[i].name);
        if (f == NULL) {
            dlclose(curlfn.lib);
            curlfn.lib = NULL;
            return "libcurl.so.4 lacks a needed function";
        }
        memcpy((char *)&curlfn + syms[i].offset, &f, sizeof(f));
    }
    return NULL;
}

#define curl_global_init (*curlfn.global_init)
#define curl_global_cleanup (*curlfn.global_cleanup)
#define curl_easy_init (*curlfn.easy_init)
#undef curl_easy_setopt
#define curl_easy_setopt (*curlfn.easy_setopt)
#define curl_easy_perform (*curlfn.easy_perform)
#undef curl_easy_getinfo
#define curl_easy_getinfo (*curlfn.easy_getinfo)
#define curl_easy_strerror (*curlfn.easy_strerror)
#define curl_easy_cleanup (*curlfn.easy_cleanup)
#define curl_slist_append (*curlfn.slist_append)
#define curl_slist_free_all (*curlfn.slist_free_all)
#define curl_version_info (*curlfn.version_info)

#define OTLP_BACKOFF_MULTIPLIER 2.0
/* Collectors answer with a short status body; more is not worth keeping. */
#define OTLP_RETRY_AFTER_MAX 64
/* A grpc-message is kept this long (percent-decoded, for the log). */
#define OTLP_GRPC_MESSAGE_MAX 128
/*
 * libcurl's upload buffer (its default is 64 KiB) and the socket's send
 * buffer: a batch of 512 request spans is about 165 KB, written in one go
 * instead of in 64 KiB pieces each waited for in poll(2). Measured under
 * load: 2 sendto (head, body) and about 5 poll per export where there were
 * 4 and 9, and 15-20 % less CPU on the exporter thread (doc/BENCHMARK.md).
 */
#define OTLP_UPLOAD_BUFFER (512 * 1024)
/* The gRPC length prefix: the compressed flag, then the message length big-endian. */
#define GRPC_PREFIX_LEN 5
/* No grpc-status seen yet (an answer without one is a failed call). */
#define GRPC_STATUS_NONE (-1)

/* The gRPC status codes the exporter tells apart (google.rpc.Code). */
enum grpc_code {
    GRPC_OK = 0,
    GRPC_CANCELLED = 1,
    GRPC_UNKNOWN = 2,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_NOT_FOUND = 5,
    GRPC_ALREADY_EXISTS = 6,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_FAILED_PRECONDITION = 9,
    GRPC_ABORTED = 10,
    GRPC_OUT_OF_RANGE = 11,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
    GRPC_DATA_LOSS = 15,
    GRPC_UNAUTHENTICATED = 16,
};

/*
 * Encoded spans back to back (JSON ones joined by commas, protobuf ones are
 * whole ScopeSpans.spans fields); ends[i] is the offset just past span i.
 * A protobuf queue keeps head bytes free before its first span: a batch's
 * envelope is written just before its spans, and the request body is the
 * queue's own bytes (batch_body), not a copy.
 */
struct spanq {
    struct buf data;
    size_t *ends; /* max_queue entries; NULL when the queue is not in use */
    size_t head;  /* bytes before the first span */
    bool json;
};

/* Where span i of q starts (past the comma that joins JSON spans). */
static size_t
spanq_start(const struct spanq *q, size_t i)
{
    return i > 0 ? q->ends[i - 1] + (q->json ? 1 : 0) : q->head;
}

/* Empty q: its room before the first span kept. */
static void
spanq_clear(struct spanq *q)
{
    q->data.len = 0;
    if (q->head > 0) {
        buf_reserve(&q->data, q->head);
        q->data.len = q->head;
    }
}

struct otlp_exporter {
    /* Set by otlp_start, read-only afterwards. */
    char *url; /* NULL: console export only */
    struct curl_slist *headers;
    bool console;
    bool gzip;
    bool grpc;              /* OTLP/gRPC: HTTP/2, length-prefixed message, status in the trailers */
    char *resource_json;    /* the resource, for JSON bodies (wire.json) */
    struct buf resource_pb; /* or for protobuf bodies */
    char *scope_version;
    size_t max_queue;
    size_t max_batch;
    uint64_t schedule_delay_ms;
    uint64_t export_timeout_ms;
    uint64_t request_timeout_ms;
    uint64_t retry_base_ms;
    uint64_t retry_max_ms;

    /*
     * Queue, guarded by lock: spans are encoded as they are submitted and
     * the span itself goes straight back to the pool, so the request path
     * keeps reusing a few warm spans instead of cycling thousands through
     * the cache. wire holds them in the body's encoding when there is a
     * URL; lines holds their JSON when console export is on. Both hold the
     * same count spans.
     */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* exporter thread waits here */
    pthread_cond_t done; /* otlp_flush callers wait here */
    struct spanq wire, lines;
    size_t count;
    bool stopping;
    uint64_t stop_deadline_ms;
    uint64_t flush_requested;
    uint64_t flush_done;
    bool all_exported; /* cleared when a span is lost during the shutdown drain */

    /* Read by the curl progress callback without the lock. */
    atomic_uint_fast64_t abort_at_ms; /* UINT64_MAX until shutdown sets a deadline */

    pthread_mutex_t breaker_lock;
    struct breaker breaker;

    atomic_uint_fast64_t exported;
    atomic_uint_fast64_t dropped;
    atomic_uint_fast64_t failures;

    /* Exporter thread only. */
    pthread_t thread;
    CURL *curl;
    uint64_t rng;
    bool last_export_failed;
    char retry_after[OTLP_RETRY_AFTER_MAX];
    size_t retry_after_len;
    int grpc_status; /* GRPC_STATUS_NONE until a grpc-status header or trailer */
    char grpc_message[OTLP_GRPC_MESSAGE_MAX];
    bool grpc_retry_info; /* grpc-status-details-bin names google.rpc.RetryInfo */
    char curl_error[CURL_ERROR_SIZE];
    /*
     * The batch being exported: the request body (the OTLP envelope around
     * a slice of the taken spans), or for protobuf only the envelope, the
     * body being the taken queue's bytes. Kept between batches unless grown
     * past BODY_KEEP_MAX, as the taken queues are.
     */
    struct buf body;
    /*
     * Spans taken from the queue and not all exported yet. Taking swaps the
     * queues (wire, lines) with these emptied ones under the lock: a
     * pointer swap, and at most the spans past the last whole batch copied
     * back (take_batch), so a submit never waits behind a batch's copy. As
     * in OTel's BatchSpanProcessor, max_queue bounds the spans waiting, not
     * those being exported: at most two queues' worth are held. taken_n and
     * taken_pos are read by the exporter thread and written with the lock.
     */
    struct spanq taken_wire, taken_lines;
    size_t taken_n;   /* spans in them */
    size_t taken_pos; /* spans of them exported (or given up on) */
};

/* A body buffer larger than this is released after its export rather than kept. */
#define BODY_KEEP_MAX (4u << 20)

uint64_t
otlp_now_unix_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
deadline_timespec(uint64_t deadline_ms, struct timespec *ts)
{
    ts->tv_sec = (time_t)(deadline_ms / 1000);
    ts->tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
}

/* Wait on cond until deadline_ms (monotonic); the condvars use CLOCK_MONOTONIC. */
static void
cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, uint64_t deadline_ms)
{
    struct timespec ts;

    deadline_timespec(deadline_ms, &ts);
    pthread_cond_timedwait(cond, lock, &ts);
}

static void
cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* ---- headers ---- */

static bool
is_token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

struct header_build {
    struct curl_slist *list;
};

static void
add_header(void *arg, const char *key, const char *value)
{
    struct header_build *hb = arg;
    char *line;

    for (const char *p = key; *p != '\0'; p++) {
        if (!is_token_char((unsigned char)*p)) {
            log_warn("otlp: header name \"%s\" is not an HTTP token, skipped", key);
            return;
        }
    }
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == '\r' || *p == '\n') {
            /* The value is a secret: name only the header. */
            log_warn("otlp: header \"%s\" has a line break in its value, skipped", key);
            return;
        }
    }
    line = xasprintf("%s: %s", key, value);
    hb->list = curl_slist_append(hb->list, line);
    free(line);
    if (hb->list == NULL) {
        fatal("otlp: out of memory building headers");
    }
}

static struct curl_slist *
build_headers(const struct telemetry_settings *t, const char *service_version)
{
    struct header_build hb = {NULL};
    const char *cause;
    char *ua = xasprintf("User-Agent: akosha/%s", service_version);

    if (t->protocol == TELEMETRY_GRPC) {
        add_header(&hb, "Content-Type", "application/grpc");
        /* gRPC servers refuse calls whose client does not say it reads trailers. */
        add_header(&hb, "TE", "trailers");
        if (t->gzip) {
            add_header(&hb, "grpc-encoding", "gzip");
        }
    } else {
        add_header(&hb, "Content-Type",
                   t->protocol == TELEMETRY_HTTP_JSON ? "application/json"
                                                      : "application/x-protobuf");
        if (t->gzip) {
            add_header(&hb, "Content-Encoding", "gzip");
        }
    }
    /* No "Expect: 100-continue" round trip before large bodies. */
    hb.list = curl_slist_append(hb.list, "Expect:");
    hb.list = curl_slist_append(hb.list, ua);
    free(ua);
    if (t->otlp_headers != NULL && t->otlp_headers[0] != '\0') {
        if (trace_kv_list_parse(t->otlp_headers, add_header, &hb, &cause) < 0) {
            log_warn("otlp: otlp_headers: %s; no custom headers sent", cause);
        }
    }
    return hb.list;
}

/* ---- one HTTP attempt ---- */

static size_t
discard_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    (void)ptr;
    (void)arg;
    return size * nmemb;
}

/* The value of header line if it is named name (lower case, with the colon), trimmed; or NULL. */
static const char *
header_value(const char *line, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *v;

    if (len < nlen || strncasecmp(line, name, nlen) != 0) {
        return NULL;
    }
    v = line + nlen;
    len -= nlen;
    while (len > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) {
        len--;
    }
    *vlen = len;
    return v;
}

static int
hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* grpc-message is percent-encoded UTF-8; keep it printable for the one log line. */
static void
grpc_message_decode(const char *v, size_t vlen, char *out, size_t outsize)
{
    size_t o = 0;

    for (size_t i = 0; i < vlen && o + 1 < outsize; i++) {
        int c = (unsigned char)v[i];
        if (c == '%' && i + 2 < vlen && hex_digit(v[i + 1]) >= 0 && hex_digit(v[i + 2]) >= 0) {
            c = hex_digit(v[i + 1]) * 16 + hex_digit(v[i + 2]);
            i += 2;
        }
        out[o++] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
}


/*
 * Whether grpc-status-details-bin (a base64 google.rpc.Status, padding
 * optional) carries a google.rpc.RetryInfo detail: the type URL of the Any
 * that holds it is plain text inside the decoded message.
 */
static bool
details_have_retry_info(const char *v, size_t vlen)
{
    static const char needle[] = "google.rpc.RetryInfo";
    uint8_t decoded[512];
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < vlen && n < sizeof(decoded); i++) {
        int d = util_base64_digit(v[i], true);
        if (d < 0) {
            continue; /* '=' padding */
        }
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            decoded[n++] = (uint8_t)(acc >> bits);
        }
    }
    for (size_t i = 0; i + sizeof(needle) - 1 <= n; i++) {
        if (memcmp(decoded + i, needle, sizeof(needle) - 1) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * Headers, and with HTTP/2 the trailers after the body (libcurl hands both
 * here): Retry-After for OTLP/HTTP, the grpc-* status for gRPC, which comes
 * in the trailers or, for a call that failed at once, in the headers.
 */
static size_t
on_header(char *line, size_t size, size_t nmemb, void *arg)
{
    struct otlp_exporter *e = arg;
    size_t len = size * nmemb, vlen;
    const char *v;

    if ((v = header_value(line, len, "retry-after:", &vlen)) != NULL) {
        if (vlen < sizeof(e->retry_after)) {
            memcpy(e->retry_after, v, vlen);
            e->retry_after_len = vlen;
        }
    } else if (!e->grpc) {
        return len;
    } else if ((v = header_value(line, len, "grpc-status:", &vlen)) != NULL) {
        int code = 0;
        for (size_t i = 0; i < vlen && code < 1000; i++) {
            code = (v[i] >= '0' && v[i] <= '9') ? code * 10 + (v[i] - '0') : 1000;
        }
        e->grpc_status = (vlen > 0 && code < 1000) ? code : GRPC_UNKNOWN;
    } else if ((v = header_value(line, len, "grpc-message:", &vlen)) != NULL) {
        grpc_message_decode(v, vlen, e->grpc_message, sizeof(e->grpc_message));
    } else if ((v = header_value(line, len, "grpc-status-details-bin:", &vlen)) != NULL) {
        e->grpc_retry_info = details_have_retry_info(v, vlen);
    }
    return len;
}

/* Lets otlp_shutdown cut a slow request short at its deadline. */
static int
on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    struct otlp_exporter *e = arg;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return util_mono_ms() >= atomic_load(&e->abort_at_ms) ? 1 : 0;
}

static bool
transport_retryable(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return true;
    default:
        return false;
    }
}

/* What one export attempt came to. */
struct attempt {
    long http_status; /* 0: transport failure */
    int grpc_status;  /* gRPC only: the call's status */
    bool retryable;
    enum breaker_outcome outcome;
};

static const char *
grpc_code_name(int code)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    return code >= 0 && (size_t)code < ARRAY_SIZE(names) ? names[code] : "?";
}

/*
 * A gRPC call's status: grpc-status from the trailers (or headers), else the
 * HTTP status mapped as gRPC's HTTP-to-gRPC table says. Retryable are the
 * codes the OTLP specification lists: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
 * OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and RESOURCE_EXHAUSTED only when the
 * server sent a RetryInfo detail (it then expects to recover; the delay is the
 * exporter's own backoff, not the RetryInfo's).
 */
static void
grpc_result(struct otlp_exporter *e, struct attempt *a)
{
    int code = e->grpc_status;

    if (code == GRPC_STATUS_NONE) {
        switch (a->http_status) {
        case 200:
            code = GRPC_INTERNAL; /* a response that never said how the call ended */
            break;
        case 400:
            code = GRPC_INTERNAL;
            break;
        case 401:
            code = GRPC_UNAUTHENTICATED;
            break;
        case 403:
            code = GRPC_PERMISSION_DENIED;
            break;
        case 404:
            code = GRPC_UNIMPLEMENTED;
            break;
        case 429:
        case 502:
        case 503:
        case 504:
            code = GRPC_UNAVAILABLE;
            break;
        default:
            code = GRPC_UNKNOWN;
            break;
        }
    }
    a->grpc_status = code;
    switch (code) {
    case GRPC_OK:
        a->retryable = false;
        a->outcome = BREAKER_SUCCESS;
        return;
    case GRPC_CANCELLED:
    case GRPC_DEADLINE_EXCEEDED:
    case GRPC_ABORTED:
    case GRPC_OUT_OF_RANGE:
    case GRPC_UNAVAILABLE:
    case GRPC_DATA_LOSS:
        a->retryable = true;
        a->outcome = BREAKER_FAILURE;
        return;
    case GRPC_RESOURCE_EXHAUSTED:
        a->retryable = e->grpc_retry_info;
        a->outcome = BREAKER_FAILURE;
        return;
    case GRPC_INTERNAL:
    case GRPC_UNKNOWN:
        a->retryable = false;
        a->outcome = BREAKER_FAILURE;
        return;
    default:
        /* The collector is up and refused this payload (or us): not its health. */
        a->retryable = false;
        a->outcome = BREAKER_NEUTRAL;
        return;
    }
}

/* One line on how the attempt failed, for the log. */
static void
attempt_describe(const struct otlp_exporter *e, const struct attempt *a, char *out, size_t size)
{
    if (a->http_status == 0) {
        snprintf(out, size, "%s", e->curl_error[0] ? e->curl_error : "transport error");
    } else if (e->grpc) {
        snprintf(out, size, "gRPC status %d %s%s%s", a->grpc_status,
                 grpc_code_name(a->grpc_status), e->grpc_message[0] ? ": " : "",
                 e->grpc_message);
    } else {
        snprintf(out, size, "HTTP %ld", a->http_status);
    }
}

/* POST body once and say how it went. */
static void
post_once(struct otlp_exporter *e, const struct buf *body, uint64_t timeout_ms, struct attempt *a)
{
    CURLcode rc;
    long status = 0;

    memset(a, 0, sizeof(*a));
    e->retry_after_len = 0;
    e->curl_error[0] = '\0';
    e->grpc_status = GRPC_STATUS_NONE;
    e->grpc_message[0] = '\0';
    e->grpc_retry_info = false;
    curl_easy_setopt(e->curl, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(e->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    curl_easy_setopt(e->curl, CURLOPT_TIMEOUT_MS, (long)MAX(timeout_ms, 1));
    curl_easy_setopt(e->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)MAX(timeout_ms, 1));
    rc = curl_easy_perform(e->curl);
    if (rc != CURLE_OK) {
        if (e->curl_error[0] == '\0') {
            snprintf(e->curl_error, sizeof(e->curl_error), "%s", curl_easy_strerror(rc));
        }
        a->retryable = transport_retryable(rc);
        a->outcome = BREAKER_FAILURE;
        log_debug("otlp: export attempt failed: %s", e->curl_error);
        return;
    }
    curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &status);
    a->http_status = status;
    if (e->grpc) {
        grpc_result(e, a);
        return;
    }
    a->retryable = status == 429 || status == 502 || status == 503 || status == 504;
    if (status >= 200 && status < 300) {
        a->outcome = BREAKER_SUCCESS;
    } else if (status >= 500 || status == 429) {
        a->outcome = BREAKER_FAILURE;
    } else {
        /* The collector is up and refused this payload: not its health. */
        a->outcome = BREAKER_NEUTRAL;
    }
}

/* CURLOPT_SOCKOPTFUNCTION: a fixed send buffer (the kernel doubles it) on each connection. */
static int
set_send_buffer(void *unused, curl_socket_t fd, curlsocktype purpose)
{
    int size = OTLP_UPLOAD_BUFFER;

    (void)unused;
    if (purpose == CURLSOCKTYPE_IPCXN) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    }
    return CURL_SOCKOPT_OK;
}

static CURL *
curl_handle_new(struct otlp_exporter *e)
{
    CURL *c = curl_easy_init();

    if (c == NULL) {
        return NULL;
    }
    curl_easy_setopt(c, CURLOPT_URL, e->url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, e->headers);
    /* Signals would hit other threads; timeouts must not use SIGALRM. */
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, e);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, e);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, e->curl_error);
    curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, OTLP_UPLOAD_BUFFER);
    curl_easy_setopt(c, CURLOPT_SOCKOPTFUNCTION, set_send_buffer);
    if (e->grpc) {
        /*
         * gRPC is HTTP/2 only: h2c straight away on http:// (no Upgrade
         * round trip, which gRPC servers do not offer), ALPN "h2" on https://.
         */
        bool tls = strncasecmp(e->url, "https://", 8) == 0;
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, tls ? (long)CURL_HTTP_VERSION_2TLS
                                                      : (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
        /*
         * libcurl before 8.0 fails every request after the first on a reused
         * prior-knowledge HTTP/2 connection ("Error in the HTTP2 framing
         * layer"; curl issue 10634, Debian 12 ships 7.88): there, each export
         * opens its own cleartext connection.
         */
        if (!tls && curl_version_info(CURLVERSION_NOW)->version_num < 0x080000) {
            curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
        }
    }
    return c;
}

/* ---- gzip ---- */

static bool
gzip_body(const struct buf *in, struct buf *out)
{
    z_stream zs;
    uLong bound;
    int rc;

    memset(&zs, 0, sizeof(zs));
    /* 15 + 16: a gzip wrapper rather than raw zlib, as Content-Encoding: gzip means. */
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK) {
        return false;
    }
    bound = deflateBound(&zs, (uLong)in->len) + 32;
    buf_reserve(out, bound);
    zs.next_in = (Bytef *)in->data;
    zs.avail_in = (uInt)in->len;
    zs.next_out = (Bytef *)out->data;
    zs.avail_out = (uInt)bound;
    rc = deflate(&zs, Z_FINISH);
    out->len = zs.total_out;
    deflateEnd(&zs);
    return rc == Z_STREAM_END;
}

/* ---- export ---- */

/* One JSON line per span of the batch (taken spans from..from+n), each in one write. */
static void
console_print(struct otlp_exporter *e, size_t from, size_t n)
{
    const struct spanq *q = &e->taken_lines;
    struct buf line;

    buf_init(&line);
    for (size_t i = from; i < from + n; i++) {
        size_t start = spanq_start(q, i);
        line.len = 0;
        buf_append(&line, q->data.data + start, q->ends[i] - start);
        buf_putc(&line, '\n');
        /* one write per line, so lines stay whole next to logs */
        if (write(STDERR_FILENO, line.data, line.len) < 0) {
            break;
        }
    }
    buf_free(&line);
}

static void
export_failed(struct otlp_exporter *e, size_t n, const char *why)
{
    atomic_fetch_add(&e->failures, 1);
    if (!e->last_export_failed) {
        log_warn("otlp: export of %zu spans failed: %s", n, why);
    } else {
        log_debug("otlp: export of %zu spans failed again", n);
    }
    e->last_export_failed = true;
}

/* Retry delay: the collector's Retry-After when it gave one, else backoff. */
static uint64_t
retry_delay_ms(struct otlp_exporter *e, unsigned attempt)
{
    uint64_t delay;

    if (e->retry_after_len > 0 &&
        retry_after_parse(e->retry_after, e->retry_after_len, (int64_t)time(NULL), &delay) == 0) {
        return delay;
    }
    return retry_backoff_ms(e->retry_base_ms, OTLP_BACKOFF_MULTIPLIER, e->retry_max_ms, attempt,
                            retry_rand(&e->rng));
}

/* Sleep until deadline_ms unless shutdown cuts it short; false when cut short. */
static bool
backoff_sleep(struct otlp_exporter *e, uint64_t until_ms)
{
    bool cut = false;

    pthread_mutex_lock(&e->lock);
    while (util_mono_ms() < until_ms) {
        if (e->stopping && util_mono_ms() >= e->stop_deadline_ms) {
            cut = true;
            break;
        }
        cond_wait_until(&e->wake, &e->lock,
                        e->stopping ? MIN(until_ms, e->stop_deadline_ms) : until_ms);
    }
    pthread_mutex_unlock(&e->lock);
    return !cut;
}

/*
 * A gRPC message: the 5-byte prefix (compressed flag, big-endian length)
 * and msg, into out.
 */
static void
grpc_frame(const struct buf *msg, bool compressed, struct buf *out)
{
    uint8_t prefix[GRPC_PREFIX_LEN];

    prefix[0] = compressed ? 1 : 0;
    prefix[1] = (uint8_t)(msg->len >> 24);
    prefix[2] = (uint8_t)(msg->len >> 16);
    prefix[3] = (uint8_t)(msg->len >> 8);
    prefix[4] = (uint8_t)msg->len;
    out->len = 0;
    buf_append(out, (const char *)prefix, sizeof(prefix));
    buf_append(out, msg->data, msg->len);
}

/*
 * The request body for taken spans from..from+n: the OTLP envelope around
 * their encodings. A protobuf envelope goes into the queue just before the
 * spans (over the queue's head room, or over spans of a slice already
 * exported) and the body is *view, those bytes in place: a batch is copied
 * once on its way out (into libcurl's upload buffer), not twice. JSON
 * closes after the spans, where the next slice starts, so it is copied.
 */
static const struct buf *
batch_body(struct otlp_exporter *e, size_t from, size_t n, struct buf *view)
{
    struct spanq *q = &e->taken_wire;
    size_t start = spanq_start(q, from), end = q->ends[from + n - 1];

    e->body.len = 0;
    if (q->json) {
        trace_otlp_json_open(&e->body, e->resource_json, e->scope_version);
    } else {
        trace_otlp_proto_open(&e->body, &e->resource_pb, e->scope_version, end - start);
        if (e->body.len <= start) { /* always, with head room for the largest envelope */
            char *at = q->data.data + start - e->body.len;
            memcpy(at, e->body.data, e->body.len);
            *view = (struct buf){.data = at, .len = e->body.len + end - start, .cap = 0};
            return view;
        }
    }
    buf_append(&e->body, q->data.data + start, end - start);
    if (q->json) {
        trace_otlp_json_close(&e->body);
    }
    return &e->body;
}

/* Export taken spans from..from+n. Returns true when accepted. */
static bool
export_batch(struct otlp_exporter *e, size_t from, size_t n, uint64_t deadline_ms)
{
    struct buf gz, framed, view;
    const struct buf *plain, *body;
    bool ok = false;
    unsigned attempt = 0;
    char what[CURL_ERROR_SIZE + OTLP_GRPC_MESSAGE_MAX + 64], why[sizeof(what) + 64];

    if (e->console) {
        console_print(e, from, n);
    }
    if (e->url == NULL) {
        return true;
    }
    plain = batch_body(e, from, n, &view);
    buf_init(&gz);
    buf_init(&framed);
    body = plain;
    if (e->gzip) {
        if (gzip_body(plain, &gz)) {
            body = &gz;
        } else {
            export_failed(e, n, "gzip compression failed");
            goto out;
        }
    }
    if (e->grpc) {
        grpc_frame(body, e->gzip, &framed);
        body = &framed;
    }
    for (;;) {
        struct breaker_ticket ticket;
        uint64_t now = util_mono_ms(), delay;
        bool admitted;
        struct attempt a;

        if (now >= deadline_ms) {
            export_failed(e, n, "export timeout reached");
            break;
        }
        pthread_mutex_lock(&e->breaker_lock);
        admitted = breaker_allow(&e->breaker, now, &ticket);
        pthread_mutex_unlock(&e->breaker_lock);
        if (!admitted) {
            export_failed(e, n, "circuit breaker otlp-exporter is open");
            break;
        }
        post_once(e, body, MIN(e->request_timeout_ms, deadline_ms - now), &a);
        now = util_mono_ms();
        pthread_mutex_lock(&e->breaker_lock);
        breaker_record(&e->breaker, &ticket, a.outcome, now);
        pthread_mutex_unlock(&e->breaker_lock);

        if (a.outcome == BREAKER_SUCCESS) {
            atomic_fetch_add(&e->exported, n);
            if (e->last_export_failed) {
                log_info("otlp: export recovered");
            }
            e->last_export_failed = false;
            ok = true;
            break;
        }
        attempt_describe(e, &a, what, sizeof(what));
        if (!a.retryable) {
            snprintf(why, sizeof(why), "%s (not retried)", what);
            export_failed(e, n, why);
            break;
        }
        log_debug("otlp: export attempt %u failed (%s), retrying", attempt + 1, what);
        delay = retry_delay_ms(e, attempt++);
        if (delay >= deadline_ms - now) {
            snprintf(why, sizeof(why), "%s (retries ran out of export timeout)", what);
            export_failed(e, n, why);
            break;
        }
        if (!backoff_sleep(e, now + delay)) {
            export_failed(e, n, "shutdown deadline reached");
            break;
        }
    }
out:
    buf_free(&framed);
    if (e->body.cap > BODY_KEEP_MAX) {
        buf_free(&e->body);
    }
    buf_free(&gz);
    return ok;
}

/* Append span to q in q's encoding. */
static void
spanq_push(struct spanq *q, size_t count, const struct trace_span *span)
{
    if (q->json) {
        if (count > 0) {
            buf_putc(&q->data, ',');
        }
        trace_span_json(&q->data, span);
    } else {
        trace_span_proto(&q->data, span);
    }
    q->ends[count] = q->data.len;
}

static void
spanq_swap(struct spanq *a, struct spanq *b)
{
    struct spanq t = *a;

    *a = *b;
    *b = t;
}

/*
 * Move spans cut..count of from (whose spans 0..cut stay) to the empty to,
 * so they are its first spans.
 */
static void
spanq_move_tail(struct spanq *from, struct spanq *to, size_t cut, size_t count)
{
    size_t start = spanq_start(from, cut), at = to->data.len; /* at: past to's head room */

    buf_append(&to->data, from->data.data + start, from->data.len - start);
    for (size_t i = cut; i < count; i++) {
        to->ends[i - cut] = at + from->ends[i] - start;
    }
    from->data.len = from->ends[cut - 1];
}

/*
 * Take spans to export, up to max at a time: the next slice of those taken
 * before, or, when those are done, what is queued now. Taking swaps the
 * queues with the exporter's emptied ones; when the queue holds a full batch
 * or more, only whole batches are taken and the few spans past them (those
 * that came while the exporter woke) are moved back to wait for the next
 * batch, so the exporter does not send a small batch each time. Call with
 * the lock held; returns the slice's size (it starts at e->taken_pos), 0
 * when there is nothing to take.
 */
static size_t
take_batch(struct otlp_exporter *e, size_t max)
{
    if (e->taken_pos == e->taken_n) {
        size_t n = e->count, keep = n >= max ? n % max : 0;
        if (n == 0) {
            return 0;
        }
        spanq_clear(&e->taken_wire);
        spanq_clear(&e->taken_lines);
        spanq_swap(&e->wire, &e->taken_wire);
        spanq_swap(&e->lines, &e->taken_lines);
        if (keep > 0 && e->url != NULL) {
            spanq_move_tail(&e->taken_wire, &e->wire, n - keep, n);
        }
        if (keep > 0 && e->console) {
            spanq_move_tail(&e->taken_lines, &e->lines, n - keep, n);
        }
        e->taken_n = n - keep;
        e->taken_pos = 0;
        e->count = keep;
    }
    return MIN(e->taken_n - e->taken_pos, max);
}

/* Export the slice of n just taken with the lock released; returns with it held again. */
static bool
export_unlocked(struct otlp_exporter *e, size_t n, uint64_t deadline_ms)
{
    size_t from = e->taken_pos;
    bool ok;

    pthread_mutex_unlock(&e->lock);
    ok = export_batch(e, from, n, deadline_ms);
    pthread_mutex_lock(&e->lock);
    e->taken_pos = from + n;
    if (e->taken_pos == e->taken_n) {
        /* a burst's buffers are not kept: the queue is bounded, its memory should be too */
        if (e->taken_wire.data.cap > BODY_KEEP_MAX) {
            buf_free(&e->taken_wire.data);
        }
        if (e->taken_lines.data.cap > BODY_KEEP_MAX) {
            buf_free(&e->taken_lines.data);
        }
    }
    return ok;
}

/* Spans taken and not yet exported. */
static size_t
taken_left(const struct otlp_exporter *e)
{
    return e->taken_n - e->taken_pos;
}

static void *
exporter_main(void *arg)
{
    struct otlp_exporter *e = arg;
    uint64_t next_ms = util_mono_ms() + e->schedule_delay_ms;

    pthread_mutex_lock(&e->lock);
    for (;;) {
        uint64_t target;
        bool flushing, timer_fired;
        size_t owed;

        while (!e->stopping && e->count < e->max_batch && taken_left(e) == 0 &&
               e->flush_requested == e->flush_done && util_mono_ms() < next_ms) {
            cond_wait_until(&e->wake, &e->lock, next_ms);
        }
        if (e->stopping) {
            break;
        }
        flushing = e->flush_requested != e->flush_done;
        target = e->flush_requested;
        timer_fired = util_mono_ms() >= next_ms;
        /*
         * Full batches always go; the timer sends one partial batch; a flush
         * owes what was queued when it was asked (not what keeps arriving,
         * or a busy proxy would never see its flush end).
         */
        owed = flushing ? e->count + taken_left(e) : 0;
        while (!e->stopping &&
               (owed > 0 || timer_fired || e->count >= e->max_batch || taken_left(e) > 0)) {
            size_t n = take_batch(e, e->max_batch);
            if (n == 0) {
                break;
            }
            owed = owed > n ? owed - n : 0;
            timer_fired = false;
            export_unlocked(e, n, util_mono_ms() + e->export_timeout_ms);
        }
        if (flushing) {
            e->flush_done = target;
            pthread_cond_broadcast(&e->done);
        }
        next_ms = util_mono_ms() + e->schedule_delay_ms;
    }

    /* Shutdown: drain within the deadline, then give up on the rest. */
    while (e->count + taken_left(e) > 0 && util_mono_ms() < e->stop_deadline_ms) {
        size_t n = take_batch(e, e->max_batch);
        uint64_t deadline = MIN(util_mono_ms() + e->export_timeout_ms, e->stop_deadline_ms);
        if (!export_unlocked(e, n, deadline)) {
            e->all_exported = false;
        }
    }
    if (e->count + taken_left(e) > 0) {
        size_t lost = e->count + taken_left(e);
        log_warn("otlp: shutdown deadline reached, %zu spans not exported", lost);
        e->count = 0;
        spanq_clear(&e->wire);
        spanq_clear(&e->lines);
        e->taken_pos = e->taken_n;
        atomic_fetch_add(&e->dropped, lost);
        e->all_exported = false;
    }
    e->flush_done = e->flush_requested;
    pthread_cond_broadcast(&e->done);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* ---- lifecycle ---- */

static void
exporter_free(struct otlp_exporter *e)
{
    if (e->curl != NULL) {
        curl_easy_cleanup(e->curl);
    }
    curl_slist_free_all(e->headers);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->breaker_lock);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->done);
    buf_free(&e->wire.data);
    free(e->wire.ends);
    buf_free(&e->lines.data);
    free(e->lines.ends);
    buf_free(&e->taken_wire.data);
    free(e->taken_wire.ends);
    buf_free(&e->taken_lines.data);
    free(e->taken_lines.ends);
    buf_free(&e->body);
    free(e->url);
    free(e->resource_json);
    buf_free(&e->resource_pb);
    free(e->scope_version);
    free(e);
    curl_global_cleanup();
}

struct otlp_exporter *
otlp_start(const struct telemetry_settings *t, const char *service_version, const char **cause)
{
    struct otlp_exporter *e;
    struct breaker_config bcfg;
    struct buf res;
    char host[256];
    int rc;

    *cause = NULL;
    if (t->disabled) {
        return NULL;
    }
    e = xcalloc(1, sizeof(*e));
    e->url = telemetry_traces_url(t);
    e->console = t->console_export;
    if (e->url == NULL && !e->console) {
        free(e);
        return NULL;
    }
    *cause = curl_load();
    if (*cause != NULL) {
        free(e->url);
        free(e);
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        free(e->url);
        free(e);
        *cause = "curl_global_init failed";
        return NULL;
    }
    e->gzip = t->gzip;
    e->grpc = t->protocol == TELEMETRY_GRPC;
    e->scope_version = xstrdup(service_version);
    e->max_queue = (size_t)MAX(t->max_queue_size, 1);
    e->max_batch = (size_t)MIN(MAX(t->max_export_batch, 1), e->max_queue);
    e->schedule_delay_ms = MAX(t->schedule_delay_ms, 1);
    e->export_timeout_ms = MAX(t->export_timeout_ms, 1);
    e->request_timeout_ms = MAX(t->request_timeout_ms, 1);
    e->retry_base_ms = t->retry_base_ms;
    e->retry_max_ms = t->retry_max_ms;
    if (e->url != NULL) {
        e->wire.ends = xcalloc(e->max_queue, sizeof(*e->wire.ends));
        e->wire.json = t->protocol == TELEMETRY_HTTP_JSON;
        e->taken_wire.ends = xcalloc(e->max_queue, sizeof(*e->taken_wire.ends));
        e->taken_wire.json = e->wire.json;
    }
    if (e->console) {
        e->lines.ends = xcalloc(e->max_queue, sizeof(*e->lines.ends));
        e->lines.json = true;
        e->taken_lines.ends = xcalloc(e->max_queue, sizeof(*e->taken_lines.ends));
        e->taken_lines.json = true;
    }
    e->all_exported = true;
    atomic_init(&e->abort_at_ms, UINT64_MAX);
    atomic_init(&e->exported, 0);
    atomic_init(&e->dropped, 0);
    atomic_init(&e->failures, 0);
    e->rng = (uint64_t)getpid() ^ util_mono_us() ^ (uint64_t)(uintptr_t)e;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->breaker_lock, NULL);
    cond_init_monotonic(&e->wake);
    cond_init_monotonic(&e->done);

    breaker_config_default(&bcfg);
    bcfg.open_timeout_ms = 30000;
    breaker_init(&e->breaker, "otlp-exporter", &bcfg);

    if (gethostname(host, sizeof(host)) != 0) {
        host[0] = '\0';
    }
    host[sizeof(host) - 1] = '\0';
    /* Only the request bodies carry the resource, in their one encoding. */
    if (e->url != NULL && e->wire.json) {
        buf_init(&res);
        trace_resource_json(&res, t, service_version, host, (int64_t)getpid());
        e->resource_json = res.data;
    } else if (e->url != NULL) {
        trace_resource_proto(&e->resource_pb, t, service_version, host, (int64_t)getpid());
        /* the largest envelope: the resource, the scope, three lengths and tags */
        e->wire.head = e->resource_pb.len + strlen(service_version) + 48;
        e->taken_wire.head = e->wire.head;
        spanq_clear(&e->wire);
        spanq_clear(&e->taken_wire);
    }

    if (e->url != NULL) {
        e->headers = build_headers(t, service_version);
        e->curl = curl_handle_new(e);
        if (e->curl == NULL) {
            *cause = "curl_easy_init failed";
            exporter_free(e);
            return NULL;
        }
    }
    rc = pthread_create(&e->thread, NULL, exporter_main, e);
    if (rc != 0) {
        *cause = "cannot start the exporter thread";
        exporter_free(e);
        return NULL;
    }
    pthread_setname_np(e->thread, "akosha-otlp"); /* top -H, and the benchmark's CPU split */
    return e;
}

void
otlp_submit_spans(struct otlp_exporter *e, struct trace_span *const *spans, size_t n)
{
    size_t queued = 0;

    if (e == NULL) {
        for (size_t i = 0; i < n; i++) {
            trace_span_free(spans[i]);
        }
        return;
    }
    pthread_mutex_lock(&e->lock);
    if (!e->stopping) {
        size_t before = e->count;
        queued = MIN(n, e->max_queue - e->count);
        for (size_t i = 0; i < queued; i++) {
            if (e->url != NULL) {
                spanq_push(&e->wire, e->count, spans[i]);
            }
            if (e->console) {
                spanq_push(&e->lines, e->count, spans[i]);
            }
            e->count++;
        }
        /* Wake the exporter once per full batch; it rechecks the count before sleeping. */
        if (before < e->max_batch && e->count >= e->max_batch) {
            pthread_cond_signal(&e->wake);
        }
    }
    pthread_mutex_unlock(&e->lock);
    if (queued < n) {
        atomic_fetch_add(&e->dropped, n - queued);
    }
    for (size_t i = 0; i < n; i++) {
        trace_span_free(spans[i]);
    }
}

void
otlp_submit(struct otlp_exporter *e, struct trace_span *span)
{
    otlp_submit_spans(e, &span, 1);
}

bool
otlp_flush(struct otlp_exporter *e, uint64_t timeout_ms)
{
    uint64_t deadline = util_mono_ms() + timeout_ms, target;
    bool done;

    if (e == NULL) {
        return true;
    }
    pthread_mutex_lock(&e->lock);
    target = ++e->flush_requested;
    pthread_cond_signal(&e->wake);
    while (e->flush_done < target && util_mono_ms() < deadline) {
        cond_wait_until(&e->done, &e->lock, deadline);
    }
    done = e->flush_done >= target;
    pthread_mutex_unlock(&e->lock);
    return done;
}

bool
otlp_shutdown(struct otlp_exporter *e, uint64_t timeout_ms)
{
    bool all;

    if (e == NULL) {
        return true;
    }
    pthread_mutex_lock(&e->lock);
    e->stopping = true;
    e->stop_deadline_ms = util_mono_ms() + timeout_ms;
    atomic_store(&e->abort_at_ms, e->stop_deadline_ms);
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
    all = e->all_exported;
    exporter_free(e);
    return all;
}

void
otlp_counters(struct otlp_exporter *e, uint64_t *exported, uint64_t *dropped, uint64_t *failures)
{
    if (exported != NULL) {
        *exported = e ? atomic_load(&e->exported) : 0;
    }
    if (dropped != NULL) {
        *dropped = e ? atomic_load(&e->dropped) : 0;
    }
    if (failures != NULL) {
        *failures = e ? atomic_load(&e->failures) : 0;
    }
}

void
otlp_breaker_stats(struct otlp_exporter *e, struct breaker_stats *out)
{
    if (e == NULL) {
        memset(out, 0, sizeof(*out));
        out->state = BREAKER_CLOSED;
        out->success_rate = 1.0;
        return;
    }
    pthread_mutex_lock(&e->breaker_lock);
    breaker_get_stats(&e->breaker, out);
    pthread_mutex_unlock(&e->breaker_lock);
}
