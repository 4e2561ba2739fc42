/*
 * trace.h - the tracing model: W3C trace context (traceparent/tracestate),
 * span and trace ids, the sampler, spans with OTel HTTP attributes, the OTLP
 * JSON encoding and the [telemetry] settings with their environment overrides.
 *
 * Pure: no sockets, no libevent, no clock; the span pool's mutex is its only
 * shared state. Times come in as Unix nanoseconds
 * (otlp_now_unix_ns() in otlp.h reads the clock). The only outside input is
 * getrandom(2), read once per thread to seed the id generator.
 *
 * A request's tracing, as the proxy wires it:
 *
 *     struct trace_context remote, req, attempt;
 *     bool has_remote = trace_parse_traceparent(tp, tp_len, &remote);
 *     if (has_remote) trace_set_tracestate(&remote, ts, ts_len);
 *     trace_start(&sampler, has_remote ? &remote : NULL, &req);
 *     if (trace_context_sampled(&req))
 *         server = trace_span_new(&req, has_remote ? remote.span_id : NULL,
 *                                 TRACE_KIND_SERVER, "POST /v1/embeddings", now_ns);
 *     per upstream attempt:
 *         trace_child_context(&req, &attempt);   send trace_format_traceparent(&attempt)
 *         if (trace_context_sampled(&attempt)) client = trace_span_new(&attempt, req.span_id, ...)
 *
 * An unsampled request creates no span but still propagates a traceparent
 * with the sampled flag cleared.
 */
#ifndef AKOSHA_TRACE_H
#define AKOSHA_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "util.h"

#define TRACE_ID_SIZE 16
#define TRACE_SPAN_ID_SIZE 8
/* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACE_TRACEPARENT_LEN 55
/* W3C: a vendor must propagate at least 512 characters of tracestate. */
#define TRACE_TRACESTATE_MAX 512
#define TRACE_FLAG_SAMPLED 0x01

struct trace_context {
    uint8_t trace_id[TRACE_ID_SIZE];
    uint8_t span_id[TRACE_SPAN_ID_SIZE]; /* the wire's parent-id: the span the next hop hangs off */
    uint8_t flags;                       /* only TRACE_FLAG_SAMPLED is kept */
    char tracestate[TRACE_TRACESTATE_MAX + 1]; /* "" when none; forwarded untouched */
};

/*
 * Parse a traceparent header value by the W3C Trace Context rules: version
 * "ff" is invalid; version 00 is exactly 55 characters; a higher version must
 * be at least 55 and, when longer, have '-' after the flags, and is read by
 * the version-00 prefix; lower-case hex only; all-zero trace-id or parent-id
 * is invalid. Surrounding spaces and tabs (HTTP OWS) are ignored. On success
 * fills out (tracestate cleared) and returns true; on failure out is untouched.
 */
bool trace_parse_traceparent(const char *s, size_t len, struct trace_context *out)
    __attribute__((warn_unused_result));

/* Write the version-00 traceparent of ctx: 55 characters and a NUL. */
void trace_format_traceparent(const struct trace_context *ctx, char out[56]);

/*
 * Keep a tracestate header value (only meaningful after a valid traceparent).
 * Values longer than TRACE_TRACESTATE_MAX lose whole list members from the
 * right, as the spec allows; a value with control characters is discarded.
 */
void trace_set_tracestate(struct trace_context *ctx, const char *s, size_t len);

/* Random ids from a per-thread generator seeded once from getrandom(2); never all-zero. */
void trace_new_trace_id(uint8_t out[TRACE_ID_SIZE]);
void trace_new_span_id(uint8_t out[TRACE_SPAN_ID_SIZE]);

/* Lower-case hex of n bytes into out (2n characters and a NUL). */
void trace_hex(const uint8_t *bytes, size_t n, char *out);

/* ---- sampling ---- */

enum trace_sampler_kind {
    TRACE_SAMPLER_ALWAYS_ON,
    TRACE_SAMPLER_ALWAYS_OFF,
    TRACE_SAMPLER_TRACEIDRATIO,
    TRACE_SAMPLER_PARENTBASED_ALWAYS_ON,
    TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF,
    TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO,
};

struct trace_sampler {
    enum trace_sampler_kind kind;
    double ratio;       /* for the *traceidratio kinds, clamped to [0, 1] */
    uint64_t threshold; /* rejection threshold over the trace id's low 56 bits */
};

void trace_sampler_init(struct trace_sampler *s, enum trace_sampler_kind kind, double ratio);

/* "always_on", ...; -1 when the name is unknown. */
int trace_sampler_kind_parse(const char *name);
const char *trace_sampler_kind_name(enum trace_sampler_kind kind);

/*
 * The TraceIdRatioBased decision, deterministic from the id: the low 56 bits
 * R of the trace id are compared with the rejection threshold
 * T = (1 - ratio) * 2^56 and the trace is sampled when R >= T (the OTel
 * consistent-probability rule; W3C level 2 puts the id's randomness there).
 */
bool trace_ratio_sampled(const struct trace_sampler *s, const uint8_t trace_id[TRACE_ID_SIZE]);

/* The decision for a new span; parent is the remote or local parent, NULL for a root. */
bool trace_sampler_decide(const struct trace_sampler *s, const struct trace_context *parent,
                          const uint8_t trace_id[TRACE_ID_SIZE]);

/*
 * The context of a request's own (SERVER) span: the parent's trace id (and
 * tracestate) or a new trace id, a new span id, and the sampled flag from
 * the sampler. parent NULL starts a new trace.
 */
void trace_start(const struct trace_sampler *s, const struct trace_context *parent,
                 struct trace_context *out);

/* A child of parent in the same trace with a new span id; the sampled flag is inherited. */
void trace_child_context(const struct trace_context *parent, struct trace_context *child);

static inline bool
trace_context_sampled(const struct trace_context *ctx)
{
    return (ctx->flags & TRACE_FLAG_SAMPLED) != 0;
}

/* ---- spans ---- */

/* Values are the OTLP enum numbers. */
enum trace_span_kind {
    TRACE_KIND_INTERNAL = 1,
    TRACE_KIND_SERVER = 2,
    TRACE_KIND_CLIENT = 3,
};

enum trace_status_code {
    TRACE_STATUS_UNSET = 0,
    TRACE_STATUS_OK = 1,
    TRACE_STATUS_ERROR = 2,
};

enum trace_attr_type { TRACE_ATTR_STRING, TRACE_ATTR_INT, TRACE_ATTR_DOUBLE, TRACE_ATTR_BOOL };

#define TRACE_NAME_MAX 64
#define TRACE_ATTR_STR_MAX 96
#define TRACE_MAX_ATTRS 16
#define TRACE_SPAN_ATTRS_MAX 768
#define TRACE_STATUS_MSG_MAX 96
#define TRACE_SPAN_POOL_MAX 512
#define TRACE_SPAN_CACHE_MAX 32 /* freed spans a thread keeps for itself, before the pool */
/*
 * Span events: at most TRACE_MAX_EVENTS per span (later ones are dropped and
 * counted in droppedEventsCount), each with at most TRACE_EVENT_ATTRS
 * attributes whose strings share TRACE_EVENT_TEXT_MAX bytes.
 */
#define TRACE_MAX_EVENTS 16
#define TRACE_EVENT_ATTRS 4
#define TRACE_EVENT_TEXT_MAX 192

/*
 * An event's attribute. The key is not copied: it must have static storage
 * (the callers pass string literals of plain ASCII, no '"' or '\\'). A
 * string value lives in its event's text.
 */
struct trace_attr {
    const char *key;
    uint32_t key_len;
    uint8_t type; /* enum trace_attr_type */
    uint8_t len;  /* string value: bytes, without the NUL */
    union {
        uint16_t off; /* string value: offset in the event's text */
        int64_t i;
        double d;
        bool b;
    } v;
};

/* A span event (OTLP Span.Event). name is a static literal, as attribute keys are. */
struct trace_event {
    uint64_t time_unix_ns;
    const char *name;
    uint8_t name_len;
    uint8_t nattrs;
    uint8_t dropped_attrs;
    uint16_t text_used;
    struct trace_attr attrs[TRACE_EVENT_ATTRS];
    char text[TRACE_EVENT_TEXT_MAX]; /* string values, NUL-terminated */
};

/* A span's events, allocated with its first event: most spans have none. */
struct trace_events {
    uint32_t n;
    uint32_t dropped;
    struct trace_event ev[TRACE_MAX_EVENTS];
};

/*
 * One span, about 1 KB and laid out so that a typical request's span
 * touches a dozen cache lines: the exporter's queue holds thousands, and
 * spans that sprawl evict the proxy's own working set.
 *
 * Attributes are kept as they go on the wire: attrs holds their encoded
 * Span.attributes fields (protobuf KeyValue messages) back to back, written
 * once when set, so sending a span copies them and the JSON encoder decodes
 * them. A string value is cut at TRACE_ATTR_STR_MAX - 1 bytes, at a UTF-8
 * character boundary, with invalid bytes as '?'; where the span's room
 * (TRACE_SPAN_ATTRS_MAX bytes) runs out it is cut further, and an attribute
 * with no room at all, or beyond TRACE_MAX_ATTRS, is dropped and counted
 * (droppedAttributesCount).
 */
struct trace_span {
    uint8_t trace_id[TRACE_ID_SIZE];
    uint8_t span_id[TRACE_SPAN_ID_SIZE];
    uint8_t parent_span_id[TRACE_SPAN_ID_SIZE];
    bool has_parent;
    uint8_t flags;
    uint8_t name_len;
    uint8_t status_message_len;
    uint8_t kind;   /* enum trace_span_kind */
    uint8_t status; /* enum trace_status_code */
    uint8_t nattrs;
    uint16_t attrs_len; /* bytes of attrs in use */
    uint16_t dropped_attrs;
    uint64_t key_bits; /* a bit per key held (trace.c key_bit): most new keys skip the lookup */
    uint64_t start_unix_ns;
    uint64_t end_unix_ns;         /* 0 until trace_span_end */
    struct trace_span *pool_next; /* only while the span sits in the pool */
    struct trace_events *events;  /* NULL until the first event */
    char name[TRACE_NAME_MAX];
    char attrs[TRACE_SPAN_ATTRS_MAX];          /* encoded Span.attributes fields */
    char status_message[TRACE_STATUS_MSG_MAX]; /* last: written only on errors */
};

/* An attribute's value as trace_span_find reads it back; a string points into the span. */
struct trace_value {
    enum trace_attr_type type;
    const char *str; /* string: len bytes, not NUL-terminated */
    size_t len;
    int64_t i;
    double d;
    bool b;
};

/*
 * A span whose own ids are ctx's (trace id, span id, flags), child of
 * parent_span_id (NULL for a root span). Returns a span the caller owns:
 * trace_span_free it, or hand it to otlp_submit which takes it. Any thread
 * may create and free spans: freed spans are kept for reuse (the thread's
 * own few, then a mutex-guarded LIFO) so that spans made and freed at
 * request rate do not churn the heap; glibc trimming and regrowing its top
 * on that churn cost brk(2) calls and page faults on the request path.
 */
struct trace_span *trace_span_new(const struct trace_context *ctx, const uint8_t *parent_span_id,
                                  enum trace_span_kind kind, const char *name,
                                  uint64_t start_unix_ns);
void trace_span_free(struct trace_span *span);
/*
 * Spans waiting for reuse now: the calling thread's own (at most
 * TRACE_SPAN_CACHE_MAX, taken and given back without a lock) and the shared
 * pool's (at most TRACE_SPAN_POOL_MAX); the rest go back to malloc, and a
 * thread's own go to the pool when it ends. otlp_submit frees each span as
 * soon as it is encoded, so under load the loop thread reuses the same few
 * warm spans.
 */
size_t trace_span_pool_count(void);

/*
 * Setting a key again replaces its value, as OTel does. The trace_span_put_*
 * functions take the key's length; the trace_span_attr_* wrappers measure
 * it, which the compiler does at compile time for the literal keys of the
 * request path. Keys and string values are copied (see struct trace_span).
 */
void trace_span_put_str(struct trace_span *span, const char *key, size_t key_len,
                        const char *value, size_t len);
void trace_span_put_int(struct trace_span *span, const char *key, size_t key_len, int64_t value);
void trace_span_put_double(struct trace_span *span, const char *key, size_t key_len,
                           double value);
void trace_span_put_bool(struct trace_span *span, const char *key, size_t key_len, bool value);
/* Read an attribute back into out; false when the key is not set. */
bool trace_span_find(const struct trace_span *span, const char *key, size_t key_len,
                     struct trace_value *out);

static inline void
trace_span_attr_strn(struct trace_span *span, const char *key, const char *value, size_t len)
{
    trace_span_put_str(span, key, strlen(key), value, len);
}

/* value NULL is the empty string. */
static inline void
trace_span_attr_str(struct trace_span *span, const char *key, const char *value)
{
    trace_span_put_str(span, key, strlen(key), value ? value : "", value ? strlen(value) : 0);
}

static inline void
trace_span_attr_int(struct trace_span *span, const char *key, int64_t value)
{
    trace_span_put_int(span, key, strlen(key), value);
}

static inline void
trace_span_attr_double(struct trace_span *span, const char *key, double value)
{
    trace_span_put_double(span, key, strlen(key), value);
}

static inline void
trace_span_attr_bool(struct trace_span *span, const char *key, bool value)
{
    trace_span_put_bool(span, key, strlen(key), value);
}

static inline bool
trace_span_attr_get(const struct trace_span *span, const char *key, struct trace_value *out)
{
    return trace_span_find(span, key, strlen(key), out);
}

/*
 * Attributes encoded once and put on many spans, as they go on the wire:
 * what is the same on every span of its kind (an upstream's address, port
 * and name on each attempt's CLIENT span). Built from a span that carries
 * them (trace_attr_block_take); putting a block copies its bytes, unless
 * the span already holds one of its keys or lacks the room, when each
 * attribute is put in turn by the usual rules.
 */
#define TRACE_ATTR_BLOCK_MAX 256

struct trace_attr_block {
    uint64_t key_bits;
    uint16_t len;
    uint8_t nattrs;
    char bytes[TRACE_ATTR_BLOCK_MAX];
};

/* span's attributes into b, as many whole ones as fit; returns how many. */
size_t trace_attr_block_take(struct trace_attr_block *b, const struct trace_span *span);
void trace_span_put_block(struct trace_span *span, const struct trace_attr_block *b);

/* message may be NULL; OTel keeps a description only with ERROR. */
void trace_span_set_status(struct trace_span *span, enum trace_status_code code,
                           const char *message);
/*
 * Record an HTTP response status by the OTel HTTP conventions: sets
 * http.response.status_code (when status > 0); 5xx is ERROR on every span,
 * 4xx is ERROR on CLIENT spans only, anything else leaves the status as it
 * was (an earlier ERROR is never cleared). With ERROR and no error.type yet,
 * error.type becomes the status code as a string.
 */
void trace_span_set_http_status(struct trace_span *span, int status);

void trace_span_end(struct trace_span *span, uint64_t end_unix_ns);

/*
 * Add an event named name (a static literal, see struct trace_attr) at
 * time_unix_ns. Returns the event to add attributes to, owned by the span;
 * NULL when the span already has TRACE_MAX_EVENTS (the event is counted as
 * dropped). The attribute setters accept NULL and do nothing then; beyond
 * TRACE_EVENT_ATTRS an attribute is dropped and counted, and strings are cut
 * (at a UTF-8 boundary, invalid bytes as '?') where the event's text runs out.
 */
struct trace_event *trace_span_add_event(struct trace_span *span, const char *name,
                                         uint64_t time_unix_ns);
void trace_event_attr_str(struct trace_event *ev, const char *key, const char *value);
void trace_event_attr_int(struct trace_event *ev, const char *key, int64_t value);

/* ---- OTLP JSON ---- */

/* Append the OTLP JSON object of one span (also the console export line). */
void trace_span_json(struct buf *out, const struct trace_span *span);

/*
 * Append an ExportTraceServiceRequest: one resourceSpans with resource_json
 * (an object as made by trace_resource_json) and one scopeSpans with scope
 * {"name":"akosha","version":scope_version} holding the n spans.
 */
void trace_encode_otlp_json(struct buf *out, const char *resource_json, const char *scope_version,
                            struct trace_span *const *spans, size_t n);
/*
 * The same envelope in two halves, for spans already encoded with
 * trace_span_json and joined by commas: open, the spans, close.
 */
void trace_otlp_json_open(struct buf *out, const char *resource_json, const char *scope_version);
void trace_otlp_json_close(struct buf *out);

/* ---- OTLP protobuf ---- */

/*
 * Append one span as a ScopeSpans.spans field (tag, length, Span message):
 * spans encoded this way and concatenated are the body of a ScopeSpans.
 * Same content as trace_span_json; ids are raw bytes, times fixed64.
 */
void trace_span_proto(struct buf *out, const struct trace_span *span);
/*
 * Append the ExportTraceServiceRequest up to its spans: one ResourceSpans
 * with resource (a Resource message as made by trace_resource_proto) and one
 * ScopeSpans, scope {name "akosha", version scope_version}, whose spans are
 * the spans_len bytes the caller appends next (trace_span_proto's fields).
 */
void trace_otlp_proto_open(struct buf *out, const struct buf *resource, const char *scope_version,
                           size_t spans_len);
/* The whole request for n spans: open, then each span. */
void trace_encode_otlp_proto(struct buf *out, const struct buf *resource, const char *scope_version,
                             struct trace_span *const *spans, size_t n);

/* ---- settings ---- */

/*
 * The [telemetry] section plus what only the environment sets. Strings are
 * malloc'd and owned by the struct (telemetry_settings_free); otlp_headers is
 * a secret and never logged.
 */
struct telemetry_settings {
    char *service_name;         /* "akosha" */
    char *environment;          /* "development" */
    char *otlp_endpoint;        /* base URL, "/v1/traces" is appended; "" = no OTLP export */
    char *otlp_traces_endpoint; /* full URL used as-is, wins over otlp_endpoint; "" = unset */
    char *otlp_headers;         /* "k=v,k2=v2", keys and values percent-decoded; secret */
    char *resource_attributes;  /* OTEL_RESOURCE_ATTRIBUTES as given, "" when none */
    double sample_rate;         /* < 0: unset */
    bool console_export;
    bool disabled;      /* OTEL_SDK_DISABLED=true: no spans at all */
    bool gzip;          /* request bodies gzip-compressed (grpc-encoding: gzip with gRPC) */
    int protocol;       /* enum telemetry_protocol; -1 until telemetry_apply_env resolves it */
    int sampler_kind;   /* enum trace_sampler_kind, or -1: from sample_rate/environment */
    double sampler_arg; /* OTEL_TRACES_SAMPLER_ARG, < 0: unset */
    /* batch span processor (OTel defaults) */
    uint64_t max_queue_size;     /* 2048 */
    uint64_t max_export_batch;   /* 512, never above max_queue_size */
    uint64_t schedule_delay_ms;  /* 5000 */
    uint64_t export_timeout_ms;  /* 30000: one export, retries included */
    uint64_t request_timeout_ms; /* 10000: one HTTP attempt (OTEL_EXPORTER_OTLP_TIMEOUT) */
    uint64_t retry_base_ms;      /* 1000: first backoff; not from the environment */
    uint64_t retry_max_ms;       /* 5000 */
};

/* The OTLP transports; the numbers are the otlp_protocol enum's. */
enum telemetry_protocol {
    TELEMETRY_HTTP_PROTOBUF = 0,
    TELEMETRY_HTTP_JSON = 1,
    TELEMETRY_GRPC = 2,
};

/* The gRPC method spans are exported to, after the endpoint's scheme and authority. */
#define TELEMETRY_GRPC_PATH "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
/* The OTLP/gRPC port: an endpoint on it with no protocol given selects gRPC. */
#define TELEMETRY_GRPC_PORT 4317

/* Fill t with the defaults above (protocol unset); any strings it held are not freed. */
void telemetry_settings_init(struct telemetry_settings *t);
void telemetry_settings_free(struct telemetry_settings *t);
/* Replace *field with a copy of value (NULL counts as ""). */
void telemetry_settings_set(char **field, const char *value);

/*
 * Apply environment variables over values read from the file. getenv_fn
 * NULL means getenv(3). Per setting, the first one set wins:
 *   endpoint:     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as-is) >
 *                 OTEL_EXPORTER_OTLP_ENDPOINT (base) > OTLP_ENDPOINT (base) > file
 *   headers:      OTEL_EXPORTER_OTLP_TRACES_HEADERS > OTEL_EXPORTER_OTLP_HEADERS > file
 *   compression:  OTEL_EXPORTER_OTLP_TRACES_COMPRESSION > OTEL_EXPORTER_OTLP_COMPRESSION
 *   protocol:     OTEL_EXPORTER_OTLP_TRACES_PROTOCOL > OTEL_EXPORTER_OTLP_PROTOCOL > file >
 *                 grpc when the endpoint's port is 4317 (said in one info line) >
 *                 http/protobuf; afterwards t->protocol is always set
 *   timeout:      OTEL_EXPORTER_OTLP_TRACES_TIMEOUT > OTEL_EXPORTER_OTLP_TIMEOUT (ms)
 *   service name: OTEL_SERVICE_NAME > service.name in OTEL_RESOURCE_ATTRIBUTES > file
 *   environment:  deployment.environment in OTEL_RESOURCE_ATTRIBUTES > ENVIRONMENT > file
 *   sampler:      OTEL_TRACES_SAMPLER (+ OTEL_TRACES_SAMPLER_ARG) > file sample_rate >
 *                 1.0 when environment is "development", else 0.1
 *   batching:     OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
 *                 OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_EXPORT_TIMEOUT (ms) > defaults
 *   OTEL_SDK_DISABLED=true turns tracing off whatever else is set.
 * An invalid value is ignored with a warning naming the variable (never a header value).
 */
void telemetry_apply_env(struct telemetry_settings *t, const char *(*getenv_fn)(const char *));
/* "http/protobuf" 0, "http/json" 1, "grpc" 2 (enum telemetry_protocol), anything else -1. */
int trace_protocol_parse(const char *name);

/*
 * The URL spans are POSTed to; a string the caller owns, NULL when OTLP
 * export is off. With gRPC it is the endpoint's scheme and authority (any
 * path dropped; "http://" added when the endpoint has no scheme) followed by
 * TELEMETRY_GRPC_PATH, as the OTLP/gRPC exporters treat endpoints.
 */
char *telemetry_traces_url(const struct telemetry_settings *t);

/* The port of url's authority (the scheme's default when none is written); -1 when unknown. */
int telemetry_url_port(const char *url);

/*
 * The sampler the settings ask for: OTEL_SDK_DISABLED gives always_off; an
 * explicit sampler kind wins; otherwise parentbased_traceidratio with
 * sample_rate, or 1.0 in development and 0.1 elsewhere.
 */
void telemetry_sampler(const struct telemetry_settings *t, struct trace_sampler *out);

/*
 * Append the OTLP resource object {"attributes":[...]}: service.name,
 * service.namespace "akosha", service.version, deployment.environment,
 * host.name, process.pid, then OTEL_RESOURCE_ATTRIBUTES (percent-decoded;
 * a key given there replaces the default, except service.name and
 * deployment.environment which the settings already resolved).
 */
void trace_resource_json(struct buf *out, const struct telemetry_settings *t,
                         const char *service_version, const char *host_name, int64_t pid);
/* The same attributes as a protobuf Resource message (its bytes, no tag or length). */
void trace_resource_proto(struct buf *out, const struct telemetry_settings *t,
                          const char *service_version, const char *host_name, int64_t pid);

/*
 * Split a "k=v,k2=v2" list (W3C baggage-like, as OTEL_EXPORTER_OTLP_HEADERS
 * and OTEL_RESOURCE_ATTRIBUTES use) calling fn for each member with the
 * percent-decoded key and value, both trimmed; empty members are skipped.
 * A malformed member (no '=', empty key) discards the whole list, as OTel
 * asks: returns -1 with *cause (static, never quoting the text) and fn is
 * not called. Returns 0 otherwise.
 */
int trace_kv_list_parse(const char *list, void (*fn)(void *arg, const char *key, const char *value),
                        void *arg, const char **cause);

#endif
