/*
 * http.h - HTTP/1.1 message parsing (RFC 9112): request and response heads,
 * body length rules and an incremental chunked decoder.
 *
 * Pure and zero-copy: the functions read contiguous memory given by the
 * caller, never allocate, never touch a socket or the clock. Every pointer in
 * a parsed head points into the caller's buffer and is valid only while that
 * buffer is unchanged.
 *
 * The parser is strict on purpose: it sits in front of upstreams that may
 * frame messages differently, so anything that two parsers could read two ways
 * (bare LF, obs-fold, duplicate Content-Length, TE with CL, ...) is refused.
 */
#ifndef AKOSHA_HTTP_H
#define AKOSHA_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 100
/* Longest request line or status line, CRLF excluded. */
#define HTTP_MAX_REQUEST_LINE 8192
/* Longest head (start line, fields and the final CRLFCRLF); larger gets -431 / -502. */
#define HTTP_MAX_HEAD_SIZE 65536
/* Empty lines tolerated before a request line (RFC 9112 2.2 asks for at least one). */
#define HTTP_MAX_LEADING_EMPTY_LINES 16
/* Longest chunk-size line (with extensions) and longest trailer line, CRLF excluded. */
#define HTTP_MAX_CHUNK_LINE 4096

struct http_header {
    const char *name;
    size_t name_len; /* points into caller's buffer */
    const char *value;
    size_t value_len; /* leading/trailing OWS trimmed */
};

enum http_method {
    HTTP_GET,
    HTTP_HEAD,
    HTTP_POST,
    HTTP_PUT,
    HTTP_DELETE,
    HTTP_PATCH,
    HTTP_OPTIONS,
    HTTP_CONNECT,
    HTTP_TRACE,
    HTTP_OTHER
};

struct http_request_head {
    enum http_method method;
    const char *method_str;
    size_t method_len;
    const char *target; /* the request-target as sent (origin-form: path?query, or "*") */
    size_t target_len;
    const char *path; /* target without the ?query */
    size_t path_len;
    const char *query; /* after the '?', NULL when the target has no '?' */
    size_t query_len;
    int version_minor; /* HTTP/1.0 -> 0, HTTP/1.1 -> 1 */
    struct http_header headers[HTTP_MAX_HEADERS];
    int nheaders;
    int64_t content_length;     /* -1 when absent */
    bool has_transfer_encoding; /* a Transfer-Encoding field was present */
    bool chunked;               /* Transfer-Encoding: chunked (final coding) */
    bool keep_alive;            /* per version default + Connection header */
    bool connection_upgrade;    /* "upgrade" among the Connection tokens */
    bool expect_continue;       /* Expect: 100-continue (HTTP/1.1 only, RFC 9110 10.1.1) */
    int host_index;             /* index of the Host field in headers, -1 when absent */
    size_t head_len;            /* bytes of the head incl. leading CRLFs and final CRLFCRLF */
};

/*
 * Parse a complete or partial request head in buf[0..len).
 * Returns head length (>0) when complete, 0 when more bytes are needed (everything so far is
 * valid), or a negative HTTP status on error: -400 malformed/smuggling, -405 CONNECT or
 * authority-form, -414 request line too long (> HTTP_MAX_REQUEST_LINE), -431 too many headers or
 * head over HTTP_MAX_HEAD_SIZE, -501 unsupported transfer coding, -505 version not HTTP/1.0 or
 * 1.1. An error is reported by the first call whose buf holds the offending byte.
 * *cause (static string; cause may be NULL) explains the error and is set to NULL otherwise.
 * *out is meaningful only when the result is > 0; its pointers point into buf (caller owns).
 */
int http_parse_request_head(const char *buf, size_t len, struct http_request_head *out,
                            const char **cause) __attribute__((warn_unused_result));

struct http_response_head {
    int status;
    int version_minor;
    const char *reason; /* may be empty */
    size_t reason_len;
    struct http_header headers[HTTP_MAX_HEADERS];
    int nheaders;
    int64_t content_length;     /* -1 when absent */
    bool has_transfer_encoding; /* present; when !chunked the body runs until close */
    bool chunked;               /* Transfer-Encoding with chunked as the final coding */
    bool keep_alive; /* false on Connection: close, 1.0 without keep-alive, non-chunked TE */
    size_t head_len;
};

/*
 * Same convention as http_parse_request_head; every error is -502 (malformed upstream
 * response), with the precise reason in *cause.
 */
int http_parse_response_head(const char *buf, size_t len, struct http_response_head *out,
                             const char **cause) __attribute__((warn_unused_result));

/*
 * Body length rules for a response (RFC 9112 6.3): no body for HEAD requests, 1xx, 204, 304;
 * otherwise chunked, Content-Length, or until close (also when Transfer-Encoding is present
 * without chunked final). A connection whose body runs until close cannot be reused.
 */
enum http_body_kind { HTTP_BODY_NONE, HTTP_BODY_LENGTH, HTTP_BODY_CHUNKED, HTTP_BODY_UNTIL_CLOSE };
enum http_body_kind http_response_body_kind(const struct http_response_head *h,
                                            bool request_was_head);

/* Incremental chunked decoder; trailers are validated and discarded. Fields are private. */
struct http_chunked {
    int state;
    uint64_t remaining; /* payload left in the current chunk, or the size being read */
    size_t line_len;    /* bytes of the current size or trailer line */
    int ntrailers;
    bool size_digits; /* at least one hex digit read on this size line */
};

void http_chunked_init(struct http_chunked *c);
/*
 * Consume bytes from buf[0..len). Sets *consumed. When the consumed bytes are chunk payload,
 * *payload_len == *consumed and the payload is buf[0..*consumed); when they are framing
 * (size lines, CRLFs, extensions, trailers) *payload_len == 0. Callers loop until len is used up.
 * Returns 1 when the terminating chunk and trailer section are complete (the message ends after
 * *consumed bytes), 0 to continue, -1 on a framing error (invalid hex, size overflow > 2^62,
 * missing CRLF, bare LF or CR, bad extension syntax, size line or trailer line over
 * HTTP_MAX_CHUNK_LINE, more than HTTP_MAX_HEADERS trailer fields). After 1 or -1 every later
 * call returns the same with *consumed == 0.
 */
int http_chunked_step(struct http_chunked *c, const char *buf, size_t len, size_t *consumed,
                      size_t *payload_len) __attribute__((warn_unused_result));

/* Case-insensitive header lookup; returns the first match (points into h), NULL when absent. */
const struct http_header *http_find_header(const struct http_header *h, int n, const char *name);
/* Case-insensitive (ASCII) compare of h's name with name. */
bool http_header_is(const struct http_header *h, const char *name);
/*
 * True for hop-by-hop headers that a proxy must not forward: Connection, Keep-Alive,
 * Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate,
 * Proxy-Authorization, plus any header named in the message's Connection header (pass the
 * head's headers as all/n).
 */
bool http_is_hop_by_hop(const struct http_header *h, const struct http_header *all, int n);
/* "OK", "Bad Request", ... for common codes, "Unknown" otherwise; a static string. */
const char *http_reason(int status);
/* "GET", "POST", ...; "OTHER" for HTTP_OTHER (method_str has the spelling); static string. */
const char *http_method_name(enum http_method m);

#endif
