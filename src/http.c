/*
 * http.c - strict HTTP/1.1 head parsing and chunked decoding (RFC 9112).
 *
 * The head parsers re-scan from the start of the buffer on every call and stop at the first byte
 * that is wrong or missing. Heads are small (HTTP_MAX_HEAD_SIZE) and the scan is a table lookup
 * per byte, so keeping no state between calls costs little and leaves nothing to get out of sync
 * with the caller's buffer. Stopping at the first bad byte is what lets a client that sends
 * "\n\n" get its 400 at once instead of waiting for the head timeout.
 */
#include "http.h"

#include <string.h>

/* Internal results of the scanning helpers; errors are negative HTTP statuses. */
#define SCAN_MORE 0
#define SCAN_DONE 1

/* tchar (RFC 9110 5.6.2). */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1,  ['|'] = 1,
    ['~'] = 1, ['0' ... '9'] = 1,   ['A' ... 'Z'] = 1,     ['a' ... 'z'] = 1,
};

/* field-value bytes: HTAB, SP, VCHAR, obs-text (RFC 9110 5.5). Also the reason-phrase set. */
static const unsigned char vchar_ws[256] = {
    ['\t'] = 1,
    [' ' ... '~'] = 1,
    [0x80 ... 0xff] = 1,
};

/*
 * Bytes of an origin-form or asterisk-form target: the RFC 3986 path and query characters,
 * pct-encoded included. '#' is excluded since a fragment is never sent, and so are non-ASCII
 * bytes, which an upstream might decode differently.
 */
static const unsigned char target_char[256] = {
    ['!'] = 1,         ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1,
    [')'] = 1,         ['*'] = 1, ['+'] = 1, [','] = 1, ['-'] = 1,  ['.'] = 1,
    ['/'] = 1,         [':'] = 1, [';'] = 1, ['='] = 1, ['?'] = 1,  ['@'] = 1,
    ['_'] = 1,         ['~'] = 1, ['['] = 1, [']'] = 1, ['0' ... '9'] = 1,
    ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
};

/* Hex digit value plus one, so that zero (the default) means "not a hex digit". */
static const unsigned char hexval1[256] = {
    ['0'] = 1,   ['1'] = 2,   ['2'] = 3,   ['3'] = 4,   ['4'] = 5,   ['5'] = 6,
    ['6'] = 7,   ['7'] = 8,   ['8'] = 9,   ['9'] = 10,  ['a'] = 11,  ['b'] = 12,
    ['c'] = 13,  ['d'] = 14,  ['e'] = 15,  ['f'] = 16,  ['A'] = 11,  ['B'] = 12,
    ['C'] = 13,  ['D'] = 14,  ['E'] = 15,  ['F'] = 16,
};

static inline bool
is_tchar(char c)
{
    return tchar[(unsigned char)c] != 0;
}

static inline bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline char
lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Case-insensitive compare of s[0..len) with the lower-case NUL-terminated lit. */
static bool
eq_ci(const char *s, size_t len, const char *lit)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (lit[i] == '\0' || lower(s[i]) != lit[i]) {
            return false;
        }
    }
    return lit[i] == '\0';
}

static int
fail(const char **cause, int status, const char *why)
{
    *cause = why;
    return status;
}

/*
 * A comma-separated list walker (RFC 9110 5.6.1). Yields each element with surrounding OWS
 * trimmed; empty elements are yielded too, callers decide whether they are allowed.
 */
struct list_iter {
    const char *p;
    const char *end;
    bool done;
};

static void
list_init(struct list_iter *it, const char *s, size_t len)
{
    it->p = s;
    it->end = s + len;
    it->done = false;
}

static bool
list_next(struct list_iter *it, const char **elem, size_t *elem_len)
{
    const char *start;
    const char *stop;

    if (it->done) {
        return false;
    }
    start = it->p;
    stop = memchr(start, ',', (size_t)(it->end - start));
    if (stop == NULL) {
        stop = it->end;
        it->done = true;
        it->p = it->end;
    } else {
        it->p = stop + 1;
    }
    while (start < stop && is_ows(*start)) {
        start++;
    }
    while (stop > start && is_ows(stop[-1])) {
        stop--;
    }
    *elem = start;
    *elem_len = (size_t)(stop - start);
    return true;
}

static bool
all_tchar(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!is_tchar(s[i])) {
            return false;
        }
    }
    return true;
}

/* What the framing and connection fields of a head say, shared by requests and responses. */
struct fields {
    bool is_request;
    int version_minor;
    struct http_header *headers;
    int nheaders;
    int64_t content_length;
    bool has_te;
    bool chunked; /* chunked seen; nothing may follow it, so it is then the final coding */
    bool conn_close;
    bool conn_keep_alive;
    bool conn_upgrade;
    int host_index;
    bool expect_continue;
};

static void
fields_init(struct fields *f, bool is_request, int version_minor, struct http_header *headers)
{
    f->is_request = is_request;
    f->version_minor = version_minor;
    f->headers = headers;
    f->nheaders = 0;
    f->content_length = -1;
    f->has_te = false;
    f->chunked = false;
    f->conn_close = false;
    f->conn_keep_alive = false;
    f->conn_upgrade = false;
    f->host_index = -1;
    f->expect_continue = false;
}

static int
apply_content_length(struct fields *f, const struct http_header *h, const char **cause)
{
    int64_t n = 0;

    if (f->content_length >= 0) {
        return fail(cause, -400, "duplicate Content-Length");
    }
    if (f->has_te) {
        return fail(cause, -400, "Transfer-Encoding with Content-Length");
    }
    /* 18 digits cannot overflow int64_t, so no overflow arithmetic is needed. */
    if (h->value_len == 0 || h->value_len > 18) {
        return fail(cause, -400, "invalid Content-Length");
    }
    for (size_t i = 0; i < h->value_len; i++) {
        char c = h->value[i];
        if (c < '0' || c > '9') {
            return fail(cause, -400, "invalid Content-Length");
        }
        n = n * 10 + (c - '0');
    }
    f->content_length = n;
    return SCAN_DONE;
}

static bool
known_coding(const char *s, size_t len)
{
    return eq_ci(s, len, "gzip") || eq_ci(s, len, "x-gzip") || eq_ci(s, len, "deflate") ||
           eq_ci(s, len, "compress") || eq_ci(s, len, "x-compress");
}

static int
apply_transfer_encoding(struct fields *f, const struct http_header *h, const char **cause)
{
    struct list_iter it;
    const char *elem;
    size_t elem_len;

    /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. */
    if (f->version_minor == 0) {
        return fail(cause, -400, f->is_request ? "Transfer-Encoding in HTTP/1.0 request"
                                               : "Transfer-Encoding in HTTP/1.0 response");
    }
    if (f->content_length >= 0) {
        return fail(cause, -400, "Transfer-Encoding with Content-Length");
    }
    f->has_te = true;
    list_init(&it, h->value, h->value_len);
    while (list_next(&it, &elem, &elem_len)) {
        size_t name_len = 0;

        while (name_len < elem_len && is_tchar(elem[name_len])) {
            name_len++;
        }
        if (elem_len == 0 || name_len == 0) {
            return fail(cause, -400, "empty transfer coding");
        }
        if (eq_ci(elem, name_len, "chunked")) {
            if (f->chunked) {
                return fail(cause, -400, "chunked applied twice");
            }
        } else if (!known_coding(elem, name_len)) {
            return fail(cause, -501, "unsupported transfer coding");
        } else if (f->chunked) {
            return fail(cause, -400, "chunked must be final");
        }
        if (name_len != elem_len) {
            /* None of the codings we accept takes parameters. */
            return fail(cause, -400, "invalid transfer coding");
        }
        if (eq_ci(elem, name_len, "chunked")) {
            f->chunked = true;
        }
    }
    return SCAN_DONE;
}

static int
apply_connection(struct fields *f, const struct http_header *h, const char **cause)
{
    struct list_iter it;
    const char *elem;
    size_t elem_len;

    list_init(&it, h->value, h->value_len);
    while (list_next(&it, &elem, &elem_len)) {
        if (!all_tchar(elem, elem_len)) {
            return fail(cause, -400, "invalid Connection header");
        }
        if (eq_ci(elem, elem_len, "close")) {
            f->conn_close = true;
        } else if (eq_ci(elem, elem_len, "keep-alive")) {
            f->conn_keep_alive = true;
        } else if (eq_ci(elem, elem_len, "upgrade")) {
            f->conn_upgrade = true;
        }
    }
    return SCAN_DONE;
}

/* Act on a complete field line as soon as it is read, so framing conflicts fail early. */
static int
apply_field(struct fields *f, int index, const char **cause)
{
    const struct http_header *h = &f->headers[index];

    switch (h->name_len) {
    case 4:
        if (f->is_request && eq_ci(h->name, 4, "host")) {
            if (f->host_index >= 0) {
                return fail(cause, -400, "duplicate Host");
            }
            f->host_index = index;
        }
        break;
    case 6:
        if (f->is_request && eq_ci(h->name, 6, "expect") &&
            eq_ci(h->value, h->value_len, "100-continue")) {
            f->expect_continue = true;
        }
        break;
    case 10:
        if (eq_ci(h->name, 10, "connection")) {
            return apply_connection(f, h, cause);
        }
        break;
    case 14:
        if (eq_ci(h->name, 14, "content-length")) {
            return apply_content_length(f, h, cause);
        }
        break;
    case 17:
        if (eq_ci(h->name, 17, "transfer-encoding")) {
            return apply_transfer_encoding(f, h, cause);
        }
        break;
    default:
        break;
    }
    return SCAN_DONE;
}

/*
 * Parse field lines and the final empty line from *pp. Returns SCAN_DONE with *pp just past the
 * head, SCAN_MORE when the buffer ends first, or a negative status (request codes; responses
 * map them).
 */
static int
parse_fields(const char **pp, const char *end, struct fields *f, const char **cause)
{
    const char *p = *pp;

    for (;;) {
        const char *name;
        const char *value;
        const char *vend;
        struct http_header *h;
        int rc;

        if (p == end) {
            return SCAN_MORE;
        }
        if (*p == '\r') {
            if (p + 1 == end) {
                return SCAN_MORE;
            }
            if (p[1] != '\n') {
                return fail(cause, -400, "bare CR");
            }
            *pp = p + 2;
            return SCAN_DONE;
        }
        if (*p == '\n') {
            return fail(cause, -400, "bare LF");
        }
        if (is_ows(*p)) {
            return fail(cause, -400, "obsolete line folding");
        }
        if (f->nheaders == HTTP_MAX_HEADERS) {
            return fail(cause, -431, "too many headers");
        }
        name = p;
        while (p < end && is_tchar(*p)) {
            p++;
        }
        if (p == end) {
            return SCAN_MORE;
        }
        if (*p != ':') {
            if (is_ows(*p)) {
                return fail(cause, -400, "whitespace before colon");
            }
            if (*p == '\r' || *p == '\n') {
                return fail(cause, -400, "header line without colon");
            }
            return fail(cause, -400, "invalid character in header name");
        }
        if (p == name) {
            return fail(cause, -400, "empty header name");
        }
        h = &f->headers[f->nheaders];
        h->name = name;
        h->name_len = (size_t)(p - name);
        p++;
        while (p < end && is_ows(*p)) {
            p++;
        }
        value = p;
        while (p < end && vchar_ws[(unsigned char)*p]) {
            p++;
        }
        if (p == end) {
            return SCAN_MORE;
        }
        if (*p == '\r') {
            if (p + 1 == end) {
                return SCAN_MORE;
            }
            if (p[1] != '\n') {
                return fail(cause, -400, "bare CR");
            }
        } else if (*p == '\n') {
            return fail(cause, -400, "bare LF");
        } else {
            return fail(cause, -400, "control character in header value");
        }
        vend = p;
        while (vend > value && is_ows(vend[-1])) {
            vend--;
        }
        h->value = value;
        h->value_len = (size_t)(vend - value);
        p += 2;
        rc = apply_field(f, f->nheaders, cause);
        f->nheaders++;
        if (rc < 0) {
            return rc;
        }
    }
}

/*
 * Check the 8 bytes of "HTTP/x.y" available at p (fewer when the buffer ends). Returns
 * SCAN_DONE with *minor set, SCAN_MORE, -400 when the bytes are not shaped like an HTTP
 * version, -505 when they are but name a version other than 1.0 or 1.1.
 */
static int
parse_version(const char *p, const char *end, int *minor, const char **cause)
{
    static const char shape[] = "HTTP/9.9";
    size_t avail = (size_t)(end - p);

    for (size_t i = 0; i < 8 && i < avail; i++) {
        bool ok = shape[i] == '9' ? (p[i] >= '0' && p[i] <= '9') : p[i] == shape[i];
        if (!ok) {
            return fail(cause, -400, "invalid HTTP version");
        }
    }
    if (avail < 8) {
        return SCAN_MORE;
    }
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) {
        return fail(cause, -505, "HTTP version not supported");
    }
    *minor = p[7] - '0';
    return SCAN_DONE;
}

static enum http_method
method_lookup(const char *s, size_t len)
{
    switch (len) {
    case 3:
        if (memcmp(s, "GET", 3) == 0) {
            return HTTP_GET;
        }
        if (memcmp(s, "PUT", 3) == 0) {
            return HTTP_PUT;
        }
        break;
    case 4:
        if (memcmp(s, "POST", 4) == 0) {
            return HTTP_POST;
        }
        if (memcmp(s, "HEAD", 4) == 0) {
            return HTTP_HEAD;
        }
        break;
    case 5:
        if (memcmp(s, "PATCH", 5) == 0) {
            return HTTP_PATCH;
        }
        if (memcmp(s, "TRACE", 5) == 0) {
            return HTTP_TRACE;
        }
        break;
    case 6:
        if (memcmp(s, "DELETE", 6) == 0) {
            return HTTP_DELETE;
        }
        break;
    case 7:
        if (memcmp(s, "OPTIONS", 7) == 0) {
            return HTTP_OPTIONS;
        }
        if (memcmp(s, "CONNECT", 7) == 0) {
            return HTTP_CONNECT;
        }
        break;
    default:
        break;
    }
    return HTTP_OTHER;
}

/*
 * Tell apart the target forms that are not origin-form (RFC 9112 3.2): authority-form is
 * host ":" port, absolute-form is scheme ":" anything.
 */
static int
classify_other_target(const char *t, size_t len, const char **cause)
{
    const char *colon = memchr(t, ':', len);
    size_t i;

    if (colon == NULL || colon == t) {
        return fail(cause, -400, "invalid request-target");
    }
    if ((size_t)(colon - t) + 2 < len && colon[1] == '/' && colon[2] == '/') {
        return fail(cause, -400, "absolute-form target refused");
    }
    for (i = (size_t)(colon - t) + 1; i < len; i++) {
        if (t[i] < '0' || t[i] > '9') {
            break;
        }
    }
    if (i == len) {
        return fail(cause, -405, "authority-form target refused");
    }
    for (i = 0; t + i < colon; i++) {
        char c = t[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alpha && (i == 0 || !((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))) {
            return fail(cause, -400, "invalid request-target");
        }
    }
    return fail(cause, -400, "absolute-form target refused");
}

/* Where a scan that stopped at p inside the request line went: out of data or over the limit. */
static int
line_stop(const char *p, const char *end, const char **cause)
{
    if (p == end) {
        return SCAN_MORE;
    }
    return fail(cause, -414, "request line too long");
}

static int
parse_request_line(const char **pp, const char *end, struct http_request_head *out,
                   const char **cause)
{
    const char *p = *pp;
    const char *line;
    const char *stop;
    const char *question = NULL;
    int empty_lines = 0;
    int rc;

    /* RFC 9112 2.2: some clients send a CRLF after a POST body; skip a few. */
    for (;;) {
        if (p == end) {
            return SCAN_MORE;
        }
        if (*p == '\n') {
            return fail(cause, -400, "bare LF");
        }
        if (*p != '\r') {
            break;
        }
        if (p + 1 == end) {
            return SCAN_MORE;
        }
        if (p[1] != '\n') {
            return fail(cause, -400, "bare CR");
        }
        if (++empty_lines > HTTP_MAX_LEADING_EMPTY_LINES) {
            return fail(cause, -400, "too many empty lines before request line");
        }
        p += 2;
    }

    line = p;
    stop = (size_t)(end - line) > HTTP_MAX_REQUEST_LINE ? line + HTTP_MAX_REQUEST_LINE : end;

    while (p < stop && is_tchar(*p)) {
        p++;
    }
    if (p == stop) {
        return line_stop(p, end, cause);
    }
    if (*p != ' ') {
        if (*p == '\n') {
            return fail(cause, -400, "bare LF");
        }
        if (p == line) {
            return fail(cause, -400, "invalid character in method");
        }
        return fail(cause, -400, *p == '\r' ? "malformed request line" : "invalid character in method");
    }
    if (p == line) {
        return fail(cause, -400, "empty method");
    }
    out->method_str = line;
    out->method_len = (size_t)(p - line);
    out->method = method_lookup(line, out->method_len);
    if (out->method == HTTP_CONNECT) {
        return fail(cause, -405, "CONNECT refused");
    }
    p++;

    out->target = p;
    while (p < stop && target_char[(unsigned char)*p]) {
        if (*p == '?' && question == NULL) {
            question = p;
        }
        p++;
    }
    if (p == stop) {
        return line_stop(p, end, cause);
    }
    if (*p != ' ') {
        if (*p == '\n') {
            return fail(cause, -400, "bare LF");
        }
        if (*p == '\r') {
            return fail(cause, -400, "missing HTTP version");
        }
        return fail(cause, -400, "invalid character in request-target");
    }
    if (p == out->target) {
        return fail(cause, -400, "more than one SP in request line");
    }
    out->target_len = (size_t)(p - out->target);
    if (out->target[0] == '*') {
        if (out->target_len != 1 || out->method != HTTP_OPTIONS) {
            return fail(cause, -400, "asterisk-form only with OPTIONS");
        }
    } else if (out->target[0] != '/') {
        return classify_other_target(out->target, out->target_len, cause);
    }
    if (question != NULL) {
        out->path_len = (size_t)(question - out->target);
        out->query = question + 1;
        out->query_len = (size_t)(p - question - 1);
    } else {
        out->path_len = out->target_len;
        out->query = NULL;
        out->query_len = 0;
    }
    out->path = out->target;
    p++;

    if (p < end && *p == ' ') {
        return fail(cause, -400, "more than one SP in request line");
    }
    /* The version and the CR must fit within the line limit too. */
    if ((size_t)(stop - p) < 8 && stop != end) {
        return fail(cause, -414, "request line too long");
    }
    rc = parse_version(p, end, &out->version_minor, cause);
    if (rc != SCAN_DONE) {
        return rc;
    }
    p += 8;
    if (p == end) {
        return SCAN_MORE;
    }
    if (*p != '\r') {
        return fail(cause, -400, *p == '\n' ? "bare LF" : "malformed request line");
    }
    if (p + 1 == end) {
        return SCAN_MORE;
    }
    if (p[1] != '\n') {
        return fail(cause, -400, "bare CR");
    }
    *pp = p + 2;
    return SCAN_DONE;
}

int
http_parse_request_head(const char *buf, size_t len, struct http_request_head *out,
                        const char **cause)
{
    const char *ignored;
    const char *p = buf;
    const char *end = buf + (len > HTTP_MAX_HEAD_SIZE ? HTTP_MAX_HEAD_SIZE : len);
    struct fields f;
    int rc;

    if (cause == NULL) {
        cause = &ignored;
    }
    *cause = NULL;

    rc = parse_request_line(&p, end, out, cause);
    if (rc < 0) {
        return rc;
    }
    if (rc == SCAN_DONE) {
        fields_init(&f, true, out->version_minor, out->headers);
        rc = parse_fields(&p, end, &f, cause);
        out->nheaders = f.nheaders;
        if (rc < 0) {
            return rc;
        }
    }
    if (rc == SCAN_MORE) {
        if (len > HTTP_MAX_HEAD_SIZE) {
            return fail(cause, -431, "request head too large");
        }
        return 0;
    }

    if (out->version_minor == 1 && f.host_index < 0) {
        return fail(cause, -400, "missing Host");
    }
    if (f.has_te && !f.chunked) {
        return fail(cause, -400, "chunked must be final");
    }
    out->content_length = f.content_length;
    out->has_transfer_encoding = f.has_te;
    out->chunked = f.chunked;
    out->keep_alive = !f.conn_close && (out->version_minor == 1 || f.conn_keep_alive);
    out->connection_upgrade = f.conn_upgrade;
    out->expect_continue = f.expect_continue && out->version_minor == 1;
    out->host_index = f.host_index;
    out->head_len = (size_t)(p - buf);
    return (int)out->head_len;
}

static int
parse_status_line(const char **pp, const char *end, struct http_response_head *out,
                  const char **cause)
{
    const char *p = *pp;
    const char *line = p;
    const char *stop;
    int rc;

    rc = parse_version(p, end, &out->version_minor, cause);
    if (rc != SCAN_DONE) {
        return rc;
    }
    p += 8;
    if (p == end) {
        return SCAN_MORE;
    }
    if (*p != ' ') {
        return fail(cause, -400, "malformed status line");
    }
    p++;
    out->status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == end) {
            return SCAN_MORE;
        }
        if (*p < '0' || *p > '9') {
            return fail(cause, -400, "invalid status code");
        }
        out->status = out->status * 10 + (*p - '0');
    }
    if (out->status < 100 || out->status > 599) {
        return fail(cause, -400, "invalid status code");
    }
    if (p == end) {
        return SCAN_MORE;
    }
    /* The SP before an empty reason is required, but some servers omit it; harmless to accept. */
    if (*p == ' ') {
        p++;
    } else if (*p != '\r') {
        return fail(cause, -400, *p == '\n' ? "bare LF" : "invalid status code");
    }
    out->reason = p;
    stop = (size_t)(end - line) > HTTP_MAX_REQUEST_LINE ? line + HTTP_MAX_REQUEST_LINE : end;
    while (p < stop && vchar_ws[(unsigned char)*p]) {
        p++;
    }
    if (p == stop) {
        if (p == end) {
            return SCAN_MORE;
        }
        if (*p != '\r') {
            return fail(cause, -400, "status line too long");
        }
    }
    if (*p != '\r') {
        return fail(cause, -400, *p == '\n' ? "bare LF" : "control character in reason phrase");
    }
    out->reason_len = (size_t)(p - out->reason);
    if (p + 1 == end) {
        return SCAN_MORE;
    }
    if (p[1] != '\n') {
        return fail(cause, -400, "bare CR");
    }
    *pp = p + 2;
    return SCAN_DONE;
}

int
http_parse_response_head(const char *buf, size_t len, struct http_response_head *out,
                         const char **cause)
{
    const char *ignored;
    const char *p = buf;
    const char *end = buf + (len > HTTP_MAX_HEAD_SIZE ? HTTP_MAX_HEAD_SIZE : len);
    struct fields f;
    int rc;

    if (cause == NULL) {
        cause = &ignored;
    }
    *cause = NULL;

    rc = parse_status_line(&p, end, out, cause);
    if (rc == SCAN_DONE) {
        fields_init(&f, false, out->version_minor, out->headers);
        rc = parse_fields(&p, end, &f, cause);
        out->nheaders = f.nheaders;
    }
    if (rc < 0) {
        /* The cause says what was wrong; to our client it is all a bad gateway. */
        return -502;
    }
    if (rc == SCAN_MORE) {
        if (len > HTTP_MAX_HEAD_SIZE) {
            return fail(cause, -502, "response head too large");
        }
        return 0;
    }

    out->content_length = f.content_length;
    out->has_transfer_encoding = f.has_te;
    out->chunked = f.chunked;
    /* Without chunked last the body runs until close (RFC 9112 6.3), so it cannot be reused. */
    out->keep_alive = !f.conn_close && (out->version_minor == 1 || f.conn_keep_alive) &&
                      (!f.has_te || f.chunked);
    out->head_len = (size_t)(p - buf);
    return (int)out->head_len;
}

enum http_body_kind
http_response_body_kind(const struct http_response_head *h, bool request_was_head)
{
    if (request_was_head || h->status < 200 || h->status == 204 || h->status == 304) {
        return HTTP_BODY_NONE;
    }
    if (h->chunked) {
        return HTTP_BODY_CHUNKED;
    }
    if (h->has_transfer_encoding) {
        return HTTP_BODY_UNTIL_CLOSE;
    }
    if (h->content_length >= 0) {
        return HTTP_BODY_LENGTH;
    }
    return HTTP_BODY_UNTIL_CLOSE;
}

/* Chunked decoder states. X_* walk a chunk extension (RFC 9112 7.1.1). */
enum {
    C_SIZE,          /* hex digits of chunk-size */
    C_SIZE_LF,       /* CR seen at end of the size line */
    C_DATA,          /* payload */
    C_DATA_CR,       /* CRLF after payload */
    C_DATA_LF,
    C_TRAILER_START, /* start of a trailer line or of the final empty line */
    C_TRAILER_NAME,
    C_TRAILER_VALUE,
    C_TRAILER_LF,
    C_FINAL_LF,
    C_DONE,
    C_ERROR,
    X_BWS_SEMI,   /* whitespace after the size, ';' must follow */
    X_NAME_START, /* after ';' */
    X_NAME,
    X_AFTER_NAME, /* whitespace after a name */
    X_VAL_START,  /* after '=' */
    X_VAL_TOKEN,
    X_VAL_QUOTED,
    X_VAL_ESCAPE,
    X_AFTER_VAL,
};

/* 2^62: anything larger is an attack or a bug, and keeps remaining far from wrapping. */
#define CHUNK_SIZE_MAX (UINT64_C(1) << 62)

void
http_chunked_init(struct http_chunked *c)
{
    c->state = C_SIZE;
    c->remaining = 0;
    c->line_len = 0;
    c->ntrailers = 0;
    c->size_digits = false;
}

/* Where the extension states go on whitespace, ';' or CR, shared by several of them. */
static int
ext_common(char ch, int ws_state)
{
    if (is_ows(ch)) {
        return ws_state;
    }
    if (ch == ';') {
        return X_NAME_START;
    }
    if (ch == '\r') {
        return C_SIZE_LF;
    }
    return C_ERROR;
}

/* One framing byte; returns the next state. */
static int
chunk_framing_byte(struct http_chunked *c, char ch)
{
    unsigned char u = (unsigned char)ch;

    switch (c->state) {
    case C_SIZE: {
        int d = hexval1[u] - 1;
        if (d >= 0) {
            if (c->remaining > (CHUNK_SIZE_MAX - (uint64_t)d) / 16) {
                return C_ERROR;
            }
            c->remaining = c->remaining * 16 + (uint64_t)d;
            c->size_digits = true;
            return C_SIZE;
        }
        if (!c->size_digits) {
            return C_ERROR;
        }
        return ext_common(ch, X_BWS_SEMI);
    }
    case X_BWS_SEMI:
        if (is_ows(ch)) {
            return X_BWS_SEMI;
        }
        return ch == ';' ? X_NAME_START : C_ERROR;
    case X_NAME_START:
        if (is_ows(ch)) {
            return X_NAME_START;
        }
        return is_tchar(ch) ? X_NAME : C_ERROR;
    case X_NAME:
        if (is_tchar(ch)) {
            return X_NAME;
        }
        if (ch == '=') {
            return X_VAL_START;
        }
        return ext_common(ch, X_AFTER_NAME);
    case X_AFTER_NAME:
        if (ch == '=') {
            return X_VAL_START;
        }
        return ext_common(ch, X_AFTER_NAME);
    case X_VAL_START:
        if (is_ows(ch)) {
            return X_VAL_START;
        }
        if (ch == '"') {
            return X_VAL_QUOTED;
        }
        return is_tchar(ch) ? X_VAL_TOKEN : C_ERROR;
    case X_VAL_TOKEN:
        if (is_tchar(ch)) {
            return X_VAL_TOKEN;
        }
        return ext_common(ch, X_AFTER_VAL);
    case X_VAL_QUOTED:
        if (ch == '"') {
            return X_AFTER_VAL;
        }
        if (ch == '\\') {
            return X_VAL_ESCAPE;
        }
        return vchar_ws[u] ? X_VAL_QUOTED : C_ERROR;
    case X_VAL_ESCAPE:
        return vchar_ws[u] ? X_VAL_QUOTED : C_ERROR;
    case X_AFTER_VAL:
        return ext_common(ch, X_AFTER_VAL);
    case C_SIZE_LF:
        if (ch != '\n') {
            return C_ERROR;
        }
        c->line_len = 0;
        return c->remaining == 0 ? C_TRAILER_START : C_DATA;
    case C_DATA_CR:
        return ch == '\r' ? C_DATA_LF : C_ERROR;
    case C_DATA_LF:
        if (ch != '\n') {
            return C_ERROR;
        }
        c->remaining = 0;
        c->size_digits = false;
        c->line_len = 0;
        return C_SIZE;
    case C_TRAILER_START:
        if (ch == '\r') {
            return C_FINAL_LF;
        }
        if (!is_tchar(ch) || ++c->ntrailers > HTTP_MAX_HEADERS) {
            return C_ERROR;
        }
        return C_TRAILER_NAME;
    case C_TRAILER_NAME:
        if (is_tchar(ch)) {
            return C_TRAILER_NAME;
        }
        return ch == ':' ? C_TRAILER_VALUE : C_ERROR;
    case C_TRAILER_VALUE:
        if (vchar_ws[u]) {
            return C_TRAILER_VALUE;
        }
        return ch == '\r' ? C_TRAILER_LF : C_ERROR;
    case C_TRAILER_LF:
        if (ch != '\n') {
            return C_ERROR;
        }
        c->line_len = 0;
        return C_TRAILER_START;
    case C_FINAL_LF:
        return ch == '\n' ? C_DONE : C_ERROR;
    default:
        return C_ERROR;
    }
}

/* States whose bytes count toward the size-line or trailer-line limit. */
static bool
counts_line(int state)
{
    return state == C_SIZE || state >= X_BWS_SEMI || state == C_TRAILER_START ||
           state == C_TRAILER_NAME || state == C_TRAILER_VALUE;
}

int
http_chunked_step(struct http_chunked *c, const char *buf, size_t len, size_t *consumed,
                  size_t *payload_len)
{
    size_t i = 0;

    *consumed = 0;
    *payload_len = 0;
    if (c->state == C_DONE) {
        return 1;
    }
    if (c->state == C_ERROR) {
        return -1;
    }
    if (c->state == C_DATA) {
        size_t n = c->remaining < len ? (size_t)c->remaining : len;
        c->remaining -= n;
        if (c->remaining == 0) {
            c->state = C_DATA_CR;
        }
        *consumed = n;
        *payload_len = n;
        return 0;
    }
    while (i < len) {
        char ch = buf[i];

        /* The CR ending a line is not part of it; the limit is on the line's content. */
        if (counts_line(c->state) && ch != '\r' && ++c->line_len > HTTP_MAX_CHUNK_LINE) {
            c->state = C_ERROR;
            return -1;
        }
        c->state = chunk_framing_byte(c, ch);
        i++;
        if (c->state == C_ERROR) {
            return -1;
        }
        if (c->state == C_DONE) {
            *consumed = i;
            return 1;
        }
        if (c->state == C_DATA) {
            break;
        }
    }
    *consumed = i;
    return 0;
}

const struct http_header *
http_find_header(const struct http_header *h, int n, const char *name)
{
    for (int i = 0; i < n; i++) {
        if (http_header_is(&h[i], name)) {
            return &h[i];
        }
    }
    return NULL;
}

bool
http_header_is(const struct http_header *h, const char *name)
{
    size_t i;

    for (i = 0; i < h->name_len; i++) {
        if (name[i] == '\0' || lower(h->name[i]) != lower(name[i])) {
            return false;
        }
    }
    return name[i] == '\0';
}

bool
http_is_hop_by_hop(const struct http_header *h, const struct http_header *all, int n)
{
    static const char *const fixed[] = {
        "connection", "keep-alive",         "proxy-connection",   "te",         "trailer",
        "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
    };

    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (eq_ci(h->name, h->name_len, fixed[i])) {
            return true;
        }
    }
    for (int i = 0; i < n; i++) {
        struct list_iter it;
        const char *elem;
        size_t elem_len;

        if (!eq_ci(all[i].name, all[i].name_len, "connection")) {
            continue;
        }
        list_init(&it, all[i].value, all[i].value_len);
        while (list_next(&it, &elem, &elem_len)) {
            if (elem_len == h->name_len && elem_len > 0) {
                size_t k = 0;
                while (k < elem_len && lower(elem[k]) == lower(h->name[k])) {
                    k++;
                }
                if (k == elem_len) {
                    return true;
                }
            }
        }
    }
    return false;
}

const char *
http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

const char *
http_method_name(enum http_method m)
{
    static const char *const names[] = {
        [HTTP_GET] = "GET",         [HTTP_HEAD] = "HEAD",       [HTTP_POST] = "POST",
        [HTTP_PUT] = "PUT",         [HTTP_DELETE] = "DELETE",   [HTTP_PATCH] = "PATCH",
        [HTTP_OPTIONS] = "OPTIONS", [HTTP_CONNECT] = "CONNECT", [HTTP_TRACE] = "TRACE",
        [HTTP_OTHER] = "OTHER",
    };

    if ((unsigned)m >= sizeof(names) / sizeof(names[0])) {
        return "OTHER";
    }
    return names[m];
}
