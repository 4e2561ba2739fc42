/*
 * http.c - strict, zero-copy HTTP/1.1 heads (RFC 9112) and chunked framing.
 *
 * The head parsers are stateless: the caller hands them everything received
 * so far and they make one forward pass, returning 0 at the first byte they
 * lack. A head is a few hundred bytes and arrives in one read almost always,
 * so re-scanning a partial head is cheaper than carrying parser state across
 * reads, and it lets an error surface on the read that delivers the bad byte.
 */
#include "http.h"

#include <string.h>

#include "util.h"

/* Fails the current parse with an HTTP status and a static cause. */
#define FAIL(status, text)                                                                         \
    do {                                                                                           \
        *why = (text);                                                                             \
        return -(status);                                                                          \
    } while (0)

/* tchar (RFC 9110 5.6.2): header names, methods, coding names, list tokens. */
static const bool token_char[256] = {
    ['0' ... '9'] = true, ['A' ... 'Z'] = true, ['a' ... 'z'] = true, ['!'] = true,  ['#'] = true,
    ['$'] = true,         ['%'] = true,         ['&'] = true,         ['\''] = true, ['*'] = true,
    ['+'] = true,         ['-'] = true,         ['.'] = true,         ['^'] = true,  ['_'] = true,
    ['`'] = true,         ['|'] = true,         ['~'] = true,
};

/* field-value, reason-phrase and qdtext bytes: HTAB, SP, VCHAR, obs-text. */
static const bool value_char[256] = {
    ['\t'] = true,
    [' ' ... '~'] = true,
    [0x80 ... 0xff] = true,
};

/*
 * Request-target bytes: VCHAR except '#'. A fragment never belongs in a target,
 * and refusing raw non-ASCII keeps the path a proxy logs identical to the one
 * upstream sees.
 */
static const bool target_char[256] = {
    ['!' ... '"'] = true,
    ['$' ... '~'] = true,
};

/* uri-host [":" port] bytes: unreserved, pct-encoded, sub-delims, ':' and IP-literal brackets. */
static const bool host_char[256] = {
    ['0' ... '9'] = true, ['A' ... 'Z'] = true, ['a' ... 'z'] = true, ['-'] = true, ['.'] = true,
    ['_'] = true,         ['~'] = true,         ['%'] = true,         ['!'] = true, ['$'] = true,
    ['&'] = true,         ['\''] = true,        ['('] = true,         [')'] = true, ['*'] = true,
    ['+'] = true,         [','] = true,         [';'] = true,         ['='] = true, [':'] = true,
    ['['] = true,         [']'] = true,
};

/*
 * Word-at-a-time scanning for the long runs (values, targets): eight bytes per step while
 * none of them can end the run. The byte loops that follow decide the exact stopping byte.
 */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t
load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    return w;
}

/* Nonzero when some byte of w is below n (n <= 128). */
static inline uint64_t
any_below(uint64_t w, unsigned n)
{
    return (w - ONES * n) & ~w & HIGHS;
}

/* Nonzero when some byte of w equals c. */
static inline uint64_t
any_equal(uint64_t w, unsigned c)
{
    return any_below(w ^ (ONES * c), 1);
}

/* Skips bytes that are SP, VCHAR or obs-text; HTAB and the rest go to the byte loop. */
static inline size_t
skip_value_words(const unsigned char *u, size_t pos, size_t end)
{
    while (end - pos >= 8) {
        uint64_t w = load64(u + pos);
        if (any_below(w, 0x20) | any_equal(w, 0x7f)) {
            break;
        }
        pos += 8;
    }
    return pos;
}

/* Skips bytes of target_char in whole words. */
static inline size_t
skip_target_words(const unsigned char *u, size_t pos, size_t end)
{
    while (end - pos >= 8) {
        uint64_t w = load64(u + pos);
        if ((w & HIGHS) | any_below(w, 0x21) | any_equal(w, 0x7f) | any_equal(w, '#')) {
            break;
        }
        pos += 8;
    }
    return pos;
}

static inline unsigned char
ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

static inline bool
is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* Case-insensitive compare of p[0..n) with a lower-case literal of length lit_len. */
static bool
equals_lower(const char *p, size_t n, const char *lit, size_t lit_len)
{
    if (n != lit_len) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)p[i]) != (unsigned char)lit[i]) {
            return false;
        }
    }
    return true;
}

#define EQUALS_LIT(p, n, lit) equals_lower((p), (n), (lit), sizeof(lit) - 1)

static bool
equals_nocase(const char *a, size_t a_len, const char *b, size_t b_len)
{
    if (a_len != b_len) {
        return false;
    }
    for (size_t i = 0; i < a_len; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i])) {
            return false;
        }
    }
    return true;
}

enum list_result { LIST_END, LIST_TOKEN, LIST_TOKEN_PARAMS, LIST_MALFORMED };

/*
 * Next token of a #token list (RFC 9110 5.6.1) in [*pos, end). Empty elements
 * are skipped as the RFC asks. LIST_TOKEN_PARAMS means the token carries ";"
 * parameters, which no list we parse supports; the caller decides how to refuse
 * them.
 */
static enum list_result
list_next(const char **pos, const char *end, const char **tok, size_t *tok_len)
{
    const char *p = *pos;

    while (p < end && (*p == ',' || is_ows((unsigned char)*p))) {
        p++;
    }
    if (p == end) {
        *pos = p;
        return LIST_END;
    }
    const char *start = p;
    while (p < end && token_char[(unsigned char)*p]) {
        p++;
    }
    *tok = start;
    *tok_len = (size_t)(p - start);
    while (p < end && is_ows((unsigned char)*p)) {
        p++;
    }
    *pos = p;
    if (*tok_len == 0) {
        return LIST_MALFORMED;
    }
    if (p == end || *p == ',') {
        return LIST_TOKEN;
    }
    return *p == ';' ? LIST_TOKEN_PARAMS : LIST_MALFORMED;
}

/* What the field section says about framing and the connection, gathered in one pass. */
struct fields {
    bool response;
    int version_minor;
    struct http_header *headers;
    int nheaders;
    int64_t content_length;
    bool te_seen;
    bool chunked_seen;
    bool chunked_final;
    bool conn_close;
    bool conn_keep_alive;
    bool conn_upgrade;
    int host_index;
    bool expect_continue;
};

static int
parse_content_length(struct fields *f, const char *v, size_t n, const char **why)
{
    int64_t value = 0;

    if (f->content_length >= 0) {
        FAIL(400, "duplicate Content-Length");
    }
    if (f->te_seen) {
        FAIL(400, "Transfer-Encoding with Content-Length");
    }
    if (n == 0) {
        FAIL(400, "empty Content-Length");
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i] == ',') {
            FAIL(400, "Content-Length list refused");
        }
        if (v[i] < '0' || v[i] > '9') {
            FAIL(400, "invalid Content-Length");
        }
    }
    if (n > 18) {
        FAIL(400, "Content-Length too large");
    }
    for (size_t i = 0; i < n; i++) {
        value = value * 10 + (v[i] - '0');
    }
    f->content_length = value;
    return 0;
}

/* Several Transfer-Encoding lines form one list, so finality is judged after the last line. */
static int
parse_transfer_encoding(struct fields *f, const char *v, size_t n, const char **why)
{
    const char *pos = v, *end = v + n, *tok;
    size_t tok_len;
    enum list_result r;
    bool any = false;

    if (f->version_minor == 0) {
        /* RFC 9112 6.1: framing of a 1.0 message with TE is faulty. */
        FAIL(400, f->response ? "Transfer-Encoding in HTTP/1.0 response"
                              : "Transfer-Encoding in HTTP/1.0 request");
    }
    if (f->content_length >= 0) {
        FAIL(400, "Transfer-Encoding with Content-Length");
    }
    f->te_seen = true;
    while ((r = list_next(&pos, end, &tok, &tok_len)) != LIST_END) {
        if (r == LIST_MALFORMED) {
            FAIL(400, "invalid Transfer-Encoding");
        }
        if (r == LIST_TOKEN_PARAMS) {
            FAIL(501, "transfer coding parameters unsupported");
        }
        any = true;
        if (EQUALS_LIT(tok, tok_len, "chunked")) {
            if (f->chunked_seen) {
                FAIL(400, "chunked applied twice");
            }
            f->chunked_seen = true;
            f->chunked_final = true;
        } else {
            /*
             * gzip and the like: akosha forwards bodies de-chunked with a
             * Content-Length, which cannot carry another coding, and does
             * not decode them. Refused (501; a malformed 502 upstream)
             * rather than passed on mislabelled.
             */
            FAIL(501, "transfer coding other than chunked unsupported");
        }
    }
    if (!any) {
        FAIL(400, "empty Transfer-Encoding");
    }
    return 0;
}

static int
parse_connection(struct fields *f, const char *v, size_t n, const char **why)
{
    const char *pos = v, *end = v + n, *tok;
    size_t tok_len;
    enum list_result r;

    while ((r = list_next(&pos, end, &tok, &tok_len)) != LIST_END) {
        if (r != LIST_TOKEN) {
            FAIL(400, "invalid Connection header");
        }
        if (EQUALS_LIT(tok, tok_len, "close")) {
            f->conn_close = true;
        } else if (EQUALS_LIT(tok, tok_len, "keep-alive")) {
            f->conn_keep_alive = true;
        } else if (EQUALS_LIT(tok, tok_len, "upgrade")) {
            f->conn_upgrade = true;
        }
    }
    return 0;
}

static int
parse_host(struct fields *f, const char *v, size_t n, const char **why)
{
    if (f->host_index >= 0) {
        FAIL(400, "duplicate Host header");
    }
    /* Empty is legal (RFC 9112 3.2); anything else must look like host[:port]. */
    for (size_t i = 0; i < n; i++) {
        if (!host_char[(unsigned char)v[i]]) {
            FAIL(400, "invalid Host header");
        }
    }
    f->host_index = f->nheaders - 1;
    return 0;
}

static void
parse_expect(struct fields *f, const char *v, size_t n)
{
    const char *pos = v, *end = v + n, *tok;
    size_t tok_len;

    /* Other expectations are the caller's to refuse with 417; a 1.0 client gets none. */
    while (list_next(&pos, end, &tok, &tok_len) == LIST_TOKEN) {
        if (f->version_minor == 1 && EQUALS_LIT(tok, tok_len, "100-continue")) {
            f->expect_continue = true;
        }
    }
}

/* Applies one complete field line (the last one stored) to the framing state. */
static int
field_semantics(struct fields *f, const struct http_header *h, const char **why)
{
    const char *name = h->name;
    size_t len = h->name_len;

    switch (len) {
    case 4:
        if (!f->response && EQUALS_LIT(name, len, "host")) {
            return parse_host(f, h->value, h->value_len, why);
        }
        break;
    case 6:
        if (!f->response && EQUALS_LIT(name, len, "expect")) {
            parse_expect(f, h->value, h->value_len);
        }
        break;
    case 10:
        if (EQUALS_LIT(name, len, "connection")) {
            return parse_connection(f, h->value, h->value_len, why);
        }
        break;
    case 14:
        if (EQUALS_LIT(name, len, "content-length")) {
            return parse_content_length(f, h->value, h->value_len, why);
        }
        break;
    case 17:
        if (EQUALS_LIT(name, len, "transfer-encoding")) {
            return parse_transfer_encoding(f, h->value, h->value_len, why);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* Out of bytes: either more are coming, or the head is already longer than we accept. */
static int
fields_incomplete(size_t len, const char **why)
{
    if (len > HTTP_MAX_HEAD_SIZE) {
        FAIL(431, "header section too large");
    }
    return 0;
}

/*
 * Parses field lines from buf[pos] through the empty line. Returns the head
 * length, 0 when more bytes are needed, or a negative status.
 */
static int
parse_fields(const char *buf, size_t pos, size_t len, struct fields *f, const char **why)
{
    const unsigned char *u = (const unsigned char *)buf;
    size_t end = len < HTTP_MAX_HEAD_SIZE ? len : HTTP_MAX_HEAD_SIZE;

    for (;;) {
        if (pos >= end) {
            return fields_incomplete(len, why);
        }
        unsigned char c = u[pos];
        if (c == '\r') {
            if (pos + 1 >= end) {
                return fields_incomplete(len, why);
            }
            if (u[pos + 1] != '\n') {
                FAIL(400, "bare CR");
            }
            return (int)(pos + 2);
        }
        if (c == '\n') {
            FAIL(400, "bare LF");
        }
        if (is_ows(c)) {
            FAIL(400, "obsolete line folding");
        }
        if (f->nheaders == HTTP_MAX_HEADERS) {
            FAIL(431, "too many headers");
        }

        size_t name_start = pos;
        while (pos < end && token_char[u[pos]]) {
            pos++;
        }
        if (pos >= end) {
            return fields_incomplete(len, why);
        }
        if (u[pos] != ':') {
            if (u[pos] == '\n') {
                FAIL(400, "bare LF");
            }
            if (is_ows(u[pos]) && pos > name_start) {
                FAIL(400, "whitespace before colon");
            }
            if (u[pos] == '\r' && pos + 1 < end && u[pos + 1] != '\n') {
                FAIL(400, "bare CR");
            }
            if (u[pos] == '\r' && pos > name_start) {
                FAIL(400, "header line without colon");
            }
            FAIL(400, "invalid character in header name");
        }
        if (pos == name_start) {
            FAIL(400, "empty header name");
        }
        size_t name_end = pos++;

        while (pos < end && is_ows(u[pos])) {
            pos++;
        }
        size_t value_start = pos;
        pos = skip_value_words(u, pos, end);
        while (pos < end && value_char[u[pos]]) {
            pos++;
        }
        if (pos >= end) {
            return fields_incomplete(len, why);
        }
        if (u[pos] != '\r') {
            if (u[pos] == '\n') {
                FAIL(400, "bare LF");
            }
            if (u[pos] == '\0') {
                FAIL(400, "NUL in header value");
            }
            FAIL(400, "control character in header value");
        }
        if (pos + 1 >= end) {
            return fields_incomplete(len, why);
        }
        if (u[pos + 1] != '\n') {
            FAIL(400, "bare CR");
        }
        size_t value_end = pos;
        while (value_end > value_start && is_ows(u[value_end - 1])) {
            value_end--;
        }

        struct http_header *h = &f->headers[f->nheaders++];
        h->name = buf + name_start;
        h->name_len = name_end - name_start;
        h->value = buf + value_start;
        h->value_len = value_end - value_start;
        int rc = field_semantics(f, h, why);
        if (rc < 0) {
            return rc;
        }
        pos += 2;
    }
}

static void
fields_init(struct fields *f, bool response, int version_minor, struct http_header *headers)
{
    memset(f, 0, sizeof(*f));
    f->response = response;
    f->version_minor = version_minor;
    f->headers = headers;
    f->content_length = -1;
    f->host_index = -1;
}

static bool
fields_keep_alive(const struct fields *f)
{
    if (f->conn_close) {
        return false;
    }
    return f->version_minor == 1 || f->conn_keep_alive;
}

/*
 * Checks "HTTP/d.d" against the bytes available at p. Returns 1 for HTTP/1.0 or
 * HTTP/1.1 (8 bytes), 0 when the available prefix is fine so far, -400 when the
 * shape is wrong and -505 for a well-formed other version.
 */
static int
parse_version(const unsigned char *p, size_t avail, int *minor, const char **why)
{
    static const char shape[] = "HTTP/";

    for (size_t i = 0; i < 8 && i < avail; i++) {
        bool ok;
        if (i < 5) {
            ok = p[i] == (unsigned char)shape[i];
        } else if (i == 6) {
            ok = p[i] == '.';
        } else {
            ok = p[i] >= '0' && p[i] <= '9';
        }
        if (!ok) {
            FAIL(400, "invalid HTTP version");
        }
    }
    if (avail < 8) {
        return 0;
    }
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) {
        FAIL(505, "unsupported HTTP version");
    }
    *minor = p[7] - '0';
    return 1;
}

static enum http_method
classify_method(const char *m, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(m, "GET", 3) == 0) {
            return HTTP_GET;
        }
        if (memcmp(m, "PUT", 3) == 0) {
            return HTTP_PUT;
        }
        break;
    case 4:
        if (memcmp(m, "POST", 4) == 0) {
            return HTTP_POST;
        }
        if (memcmp(m, "HEAD", 4) == 0) {
            return HTTP_HEAD;
        }
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0) {
            return HTTP_PATCH;
        }
        if (memcmp(m, "TRACE", 5) == 0) {
            return HTTP_TRACE;
        }
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0) {
            return HTTP_DELETE;
        }
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0) {
            return HTTP_OPTIONS;
        }
        if (memcmp(m, "CONNECT", 7) == 0) {
            return HTTP_CONNECT;
        }
        break;
    default:
        break;
    }
    return HTTP_OTHER;
}

/* host ":" port with a non-empty, all-digit port: the CONNECT-only authority-form. */
static bool
looks_like_authority(const char *t, size_t n)
{
    size_t colon = n;

    for (size_t i = n; i > 0; i--) {
        if (t[i - 1] == ':') {
            colon = i - 1;
            break;
        }
    }
    if (colon == 0 || colon == n || colon + 1 == n || colon + 6 < n) {
        return false;
    }
    for (size_t i = colon + 1; i < n; i++) {
        if (t[i] < '0' || t[i] > '9') {
            return false;
        }
    }
    for (size_t i = 0; i < colon; i++) {
        if (!host_char[(unsigned char)t[i]]) {
            return false;
        }
    }
    return true;
}

/* scheme ":" ... (RFC 3986 3.1) */
static bool
looks_like_absolute(const char *t, size_t n)
{
    if (n == 0 || !((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z'))) {
        return false;
    }
    for (size_t i = 1; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == ':') {
            return true;
        }
        bool scheme = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '+' || c == '-' || c == '.';
        if (!scheme) {
            return false;
        }
    }
    return false;
}

static int
check_target(struct http_request_head *out, const char **why)
{
    const char *t = out->target;
    size_t n = out->target_len;

    if (t[0] == '/') {
        const char *q = memchr(t, '?', n);
        out->path = t;
        out->path_len = q != NULL ? (size_t)(q - t) : n;
        out->query = q != NULL ? q + 1 : NULL;
        out->query_len = q != NULL ? n - out->path_len - 1 : 0;
        return 0;
    }
    if (n == 1 && t[0] == '*') {
        if (out->method != HTTP_OPTIONS) {
            FAIL(400, "asterisk-form only with OPTIONS");
        }
        out->path = t;
        out->path_len = 1;
        out->query = NULL;
        out->query_len = 0;
        return 0;
    }
    /* "host:443" also has scheme syntax, so the narrower authority-form is tested first. */
    if (looks_like_authority(t, n)) {
        FAIL(405, "CONNECT refused");
    }
    if (looks_like_absolute(t, n)) {
        FAIL(400, "absolute-form target refused");
    }
    FAIL(400, "invalid request-target");
}

/* Out of bytes inside the start line: more may come unless the line is already too long. */
static int
line_incomplete(size_t len, size_t limit, int status, const char *text, const char **why)
{
    if (len >= limit) {
        FAIL(status, text);
    }
    return 0;
}

static int
parse_request(const char *buf, size_t len, struct http_request_head *out, const char **why)
{
    const unsigned char *u = (const unsigned char *)buf;
    size_t pos = 0;
    int empty_lines = 0;
    int rc;

    for (;;) {
        if (pos >= len) {
            return 0;
        }
        if (u[pos] == '\n') {
            FAIL(400, "bare LF");
        }
        if (u[pos] != '\r') {
            break;
        }
        if (pos + 1 >= len) {
            return 0;
        }
        if (u[pos + 1] != '\n') {
            FAIL(400, "bare CR");
        }
        if (++empty_lines > HTTP_MAX_LEADING_EMPTY_LINES) {
            FAIL(400, "too many empty lines before request line");
        }
        pos += 2;
    }

    /* The line's CR may sit at most HTTP_MAX_REQUEST_LINE bytes after its start.
     */
    size_t limit = pos + HTTP_MAX_REQUEST_LINE + 1;
    size_t end = len < limit ? len : limit;
    const char *too_long = "request line too long";

    size_t method_start = pos;
    while (pos < end && token_char[u[pos]]) {
        pos++;
    }
    if (pos >= end) {
        return line_incomplete(len, limit, 414, too_long, why);
    }
    if (u[pos] != ' ' || pos == method_start) {
        FAIL(400, u[pos] == '\n' ? "bare LF" : "invalid character in method");
    }
    out->method_str = buf + method_start;
    out->method_len = pos - method_start;
    out->method = classify_method(out->method_str, out->method_len);
    if (out->method == HTTP_CONNECT) {
        FAIL(405, "CONNECT refused");
    }

    size_t target_start = ++pos;
    pos = skip_target_words(u, pos, end);
    while (pos < end && target_char[u[pos]]) {
        pos++;
    }
    if (pos >= end) {
        return line_incomplete(len, limit, 414, too_long, why);
    }
    if (u[pos] != ' ') {
        if (u[pos] == '\n') {
            FAIL(400, "bare LF");
        }
        if (u[pos] == '\r') {
            FAIL(400, "missing HTTP version");
        }
        FAIL(400, "invalid character in request-target");
    }
    if (pos == target_start) {
        FAIL(400, "extra whitespace in request line");
    }
    out->target = buf + target_start;
    out->target_len = pos - target_start;
    rc = check_target(out, why);
    if (rc < 0) {
        return rc;
    }

    pos++;
    rc = parse_version(u + pos, end - pos, &out->version_minor, why);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        return line_incomplete(len, limit, 414, too_long, why);
    }
    pos += 8;
    if (pos >= end) {
        return line_incomplete(len, limit, 414, too_long, why);
    }
    if (u[pos] != '\r') {
        if (u[pos] == '\n') {
            FAIL(400, "bare LF");
        }
        FAIL(400, u[pos] == ' ' ? "extra whitespace in request line" : "invalid HTTP version");
    }
    if (pos + 1 >= len) {
        return 0;
    }
    if (u[pos + 1] != '\n') {
        FAIL(400, "bare CR");
    }
    pos += 2;

    struct fields f;
    fields_init(&f, false, out->version_minor, out->headers);
    rc = parse_fields(buf, pos, len, &f, why);
    out->nheaders = f.nheaders;
    if (rc <= 0) {
        return rc;
    }
    if (f.te_seen && !f.chunked_final) {
        FAIL(400, "chunked must be final");
    }
    if (out->version_minor == 1 && f.host_index < 0) {
        FAIL(400, "missing Host header");
    }
    out->content_length = f.content_length;
    out->has_transfer_encoding = f.te_seen;
    out->chunked = f.chunked_final;
    out->keep_alive = fields_keep_alive(&f);
    out->connection_upgrade = f.conn_upgrade;
    out->expect_continue = f.expect_continue;
    out->host_index = f.host_index;
    out->head_len = (size_t)rc;
    return rc;
}

int
http_parse_request_head(const char *buf, size_t len, struct http_request_head *out,
                        const char **cause)
{
    const char *why = NULL;
    int rc = parse_request(buf, len, out, &why);

    if (cause != NULL) {
        *cause = rc < 0 ? why : NULL;
    }
    return rc;
}

static int
parse_response(const char *buf, size_t len, struct http_response_head *out, const char **why)
{
    const unsigned char *u = (const unsigned char *)buf;
    size_t limit = HTTP_MAX_REQUEST_LINE + 1;
    size_t end = len < limit ? len : limit;
    const char *too_long = "status line too long";
    size_t pos = 0;
    int rc;

    rc = parse_version(u, end, &out->version_minor, why);
    if (rc <= 0) {
        return rc;
    }
    pos = 8;
    /* "HTTP/1.1 200 OK": SP, three digits, then SP and a reason, or a CR right away. */
    for (size_t i = 0; i < 4; i++, pos++) {
        if (pos >= end) {
            return line_incomplete(len, limit, 502, too_long, why);
        }
        bool ok = i == 0 ? u[pos] == ' ' : (u[pos] >= '0' && u[pos] <= '9');
        if (!ok) {
            FAIL(502, u[pos] == '\n' ? "bare LF" : "invalid status line");
        }
    }
    out->status = (u[9] - '0') * 100 + (u[10] - '0') * 10 + (u[11] - '0');
    if (out->status < 100 || out->status > 599) {
        FAIL(502, "status code out of range");
    }
    if (pos >= end) {
        return line_incomplete(len, limit, 502, too_long, why);
    }
    size_t reason_start = pos;
    if (u[pos] == ' ') {
        reason_start = ++pos;
        while (pos < end && value_char[u[pos]]) {
            pos++;
        }
        if (pos >= end) {
            return line_incomplete(len, limit, 502, too_long, why);
        }
    }
    if (u[pos] != '\r') {
        if (u[pos] == '\n') {
            FAIL(502, "bare LF");
        }
        FAIL(502, pos == 12 ? "invalid status line" : "control character in reason phrase");
    }
    out->reason = buf + reason_start;
    out->reason_len = pos - reason_start;
    if (pos + 1 >= len) {
        return 0;
    }
    if (u[pos + 1] != '\n') {
        FAIL(502, "bare CR");
    }
    pos += 2;

    struct fields f;
    fields_init(&f, true, out->version_minor, out->headers);
    rc = parse_fields(buf, pos, len, &f, why);
    out->nheaders = f.nheaders;
    if (rc <= 0) {
        return rc;
    }
    out->content_length = f.content_length;
    out->has_transfer_encoding = f.te_seen;
    out->chunked = f.chunked_final;
    out->keep_alive = fields_keep_alive(&f);
    out->head_len = (size_t)rc;
    return rc;
}

int
http_parse_response_head(const char *buf, size_t len, struct http_response_head *out,
                         const char **cause)
{
    const char *why = NULL;
    int rc = parse_response(buf, len, out, &why);

    if (rc < 0) {
        rc = -502;
    }
    if (cause != NULL) {
        *cause = rc < 0 ? why : NULL;
    }
    return rc;
}

enum http_body_kind
http_response_body_kind(const struct http_response_head *h, bool request_was_head)
{
    if (request_was_head || h->status < 200 || h->status == 204 || h->status == 304) {
        return HTTP_BODY_NONE;
    }
    if (h->chunked) {
        return HTTP_BODY_CHUNKED; /* the only transfer coding the parser accepts */
    }
    if (h->content_length >= 0) {
        return HTTP_BODY_LENGTH;
    }
    return HTTP_BODY_UNTIL_CLOSE;
}

enum chunked_state {
    CK_SIZE,
    CK_SIZE_BWS,
    CK_EXT_NAME_START,
    CK_EXT_NAME,
    CK_EXT_AFTER_NAME,
    CK_EXT_VALUE_START,
    CK_EXT_TOKEN,
    CK_EXT_QUOTED,
    CK_EXT_QUOTED_ESCAPE,
    CK_EXT_AFTER_VALUE,
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER_START,
    CK_TRAILER_NAME,
    CK_TRAILER_VALUE,
    CK_TRAILER_LF,
    CK_END_LF,
    CK_DONE,
    CK_ERROR,
};

#define CHUNK_SIZE_MAX (UINT64_C(1) << 62)

static void
start_size_line(struct http_chunked *c)
{
    c->state = CK_SIZE;
    c->remaining = 0;
    c->line_len = 0;
    c->size_digits = false;
}

void
http_chunked_init(struct http_chunked *c)
{
    memset(c, 0, sizeof(*c));
    start_size_line(c);
}

static int
hex_value(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    ch = ascii_lower(ch);
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    return -1;
}

/*
 * Feeds one framing byte to the machine; returns false on a framing error. The
 * size line accepts BWS before ';' and before its CR, as RFC 9112 7.1.1 and
 * common senders do.
 */
static bool
chunk_framing_byte(struct http_chunked *c, unsigned char ch)
{
    bool ws = is_ows(ch);

    if (c->state <= CK_EXT_AFTER_VALUE && ch != '\r' && ++c->line_len > HTTP_MAX_CHUNK_LINE) {
        return false;
    }
    switch ((enum chunked_state)c->state) {
    case CK_SIZE: {
        int digit = hex_value(ch);
        if (digit >= 0) {
            if (c->remaining > (CHUNK_SIZE_MAX - (uint64_t)digit) / 16) {
                return false;
            }
            c->remaining = c->remaining * 16 + (uint64_t)digit;
            c->size_digits = true;
            return true;
        }
        if (!c->size_digits) {
            return false;
        }
        c->state = ch == ';'    ? CK_EXT_NAME_START
                   : ws         ? CK_SIZE_BWS
                   : ch == '\r' ? CK_SIZE_LF
                                : CK_ERROR;
        return c->state != CK_ERROR;
    }
    case CK_SIZE_BWS:
    case CK_EXT_AFTER_VALUE:
        if (ws) {
            return true;
        }
        c->state = ch == ';' ? CK_EXT_NAME_START : ch == '\r' ? CK_SIZE_LF : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_EXT_NAME_START:
        if (ws) {
            return true;
        }
        c->state = token_char[ch] ? CK_EXT_NAME : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_EXT_NAME:
    case CK_EXT_AFTER_NAME:
        if (c->state == CK_EXT_NAME && token_char[ch]) {
            return true;
        }
        c->state = ws           ? CK_EXT_AFTER_NAME
                   : ch == '='  ? CK_EXT_VALUE_START
                   : ch == ';'  ? CK_EXT_NAME_START
                   : ch == '\r' ? CK_SIZE_LF
                                : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_EXT_VALUE_START:
        if (ws) {
            return true;
        }
        c->state = ch == '"' ? CK_EXT_QUOTED : token_char[ch] ? CK_EXT_TOKEN : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_EXT_TOKEN:
        if (token_char[ch]) {
            return true;
        }
        c->state = ws           ? CK_EXT_AFTER_VALUE
                   : ch == ';'  ? CK_EXT_NAME_START
                   : ch == '\r' ? CK_SIZE_LF
                                : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_EXT_QUOTED:
        if (ch == '"') {
            c->state = CK_EXT_AFTER_VALUE;
        } else if (ch == '\\') {
            c->state = CK_EXT_QUOTED_ESCAPE;
        } else if (!value_char[ch]) {
            c->state = CK_ERROR;
        }
        return c->state != CK_ERROR;
    case CK_EXT_QUOTED_ESCAPE:
        c->state = value_char[ch] ? CK_EXT_QUOTED : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_SIZE_LF:
        if (ch != '\n') {
            return false;
        }
        if (c->remaining == 0) {
            c->state = CK_TRAILER_START;
            c->ntrailers = 0;
        } else {
            c->state = CK_DATA;
        }
        return true;
    case CK_DATA_CR:
        c->state = ch == '\r' ? CK_DATA_LF : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_DATA_LF:
        if (ch != '\n') {
            return false;
        }
        start_size_line(c);
        return true;
    case CK_TRAILER_START:
        if (ch == '\r') {
            c->state = CK_END_LF;
            return true;
        }
        /* Fold, empty name, bare LF: all refused the same way as in a head. */
        if (!token_char[ch] || ++c->ntrailers > HTTP_MAX_HEADERS) {
            return false;
        }
        c->state = CK_TRAILER_NAME;
        c->line_len = 1;
        return true;
    case CK_TRAILER_NAME:
        if (++c->line_len > HTTP_MAX_CHUNK_LINE) {
            return false;
        }
        if (ch == ':') {
            c->state = CK_TRAILER_VALUE;
            return true;
        }
        return token_char[ch];
    case CK_TRAILER_VALUE:
        if (ch == '\r') {
            c->state = CK_TRAILER_LF;
            return true;
        }
        return value_char[ch] && ++c->line_len <= HTTP_MAX_CHUNK_LINE;
    case CK_TRAILER_LF:
        c->state = ch == '\n' ? CK_TRAILER_START : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_END_LF:
        c->state = ch == '\n' ? CK_DONE : CK_ERROR;
        return c->state != CK_ERROR;
    case CK_DATA:
    case CK_DONE:
    case CK_ERROR:
        break;
    }
    return false;
}

int
http_chunked_step(struct http_chunked *c, const char *buf, size_t len, size_t *consumed,
                  size_t *payload_len)
{
    *consumed = 0;
    *payload_len = 0;
    if (c->state == CK_DONE) {
        return 1;
    }
    if (c->state == CK_ERROR) {
        return -1;
    }
    if (c->state == CK_DATA) {
        size_t n = c->remaining < len ? (size_t)c->remaining : len;
        c->remaining -= n;
        if (c->remaining == 0) {
            c->state = CK_DATA_CR;
        }
        *consumed = n;
        *payload_len = n;
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (!chunk_framing_byte(c, (unsigned char)buf[i])) {
            c->state = CK_ERROR;
            *consumed = i;
            return -1;
        }
        if (c->state == CK_DONE) {
            *consumed = i + 1;
            return 1;
        }
        if (c->state == CK_DATA) {
            /* Payload goes out in its own step so *payload_len can equal *consumed.
             */
            *consumed = i + 1;
            return 0;
        }
    }
    *consumed = len;
    return 0;
}

const struct http_header *
http_find_header(const struct http_header *h, int n, const char *name)
{
    size_t name_len = strlen(name);

    for (int i = 0; i < n; i++) {
        if (equals_nocase(h[i].name, h[i].name_len, name, name_len)) {
            return &h[i];
        }
    }
    return NULL;
}

bool
http_header_is(const struct http_header *h, const char *name)
{
    return equals_nocase(h->name, h->name_len, name, strlen(name));
}

bool
http_is_hop_by_hop(const struct http_header *h, const struct http_header *all, int n)
{
    static const char *const fixed[] = {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    };

    for (size_t i = 0; i < ARRAY_SIZE(fixed); i++) {
        if (equals_lower(h->name, h->name_len, fixed[i], strlen(fixed[i]))) {
            return true;
        }
    }
    for (int i = 0; i < n; i++) {
        if (!EQUALS_LIT(all[i].name, all[i].name_len, "connection")) {
            continue;
        }
        const char *pos = all[i].value, *end = all[i].value + all[i].value_len, *tok;
        size_t tok_len;
        while (list_next(&pos, end, &tok, &tok_len) == LIST_TOKEN) {
            if (equals_nocase(tok, tok_len, h->name, h->name_len)) {
                return true;
            }
        }
    }
    return false;
}

static const struct {
    int status;
    const char *reason;
} reasons[] = {
    {100, "Continue"},
    {101, "Switching Protocols"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {417, "Expectation Failed"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

const char *
http_reason(int status)
{
    for (size_t i = 0; i < ARRAY_SIZE(reasons); i++) {
        if (reasons[i].status == status) {
            return reasons[i].reason;
        }
    }
    return "Unknown";
}

static const char *const method_names[] = {
    [HTTP_GET] = "GET",         [HTTP_HEAD] = "HEAD",       [HTTP_POST] = "POST",
    [HTTP_PUT] = "PUT",         [HTTP_DELETE] = "DELETE",   [HTTP_PATCH] = "PATCH",
    [HTTP_OPTIONS] = "OPTIONS", [HTTP_CONNECT] = "CONNECT", [HTTP_TRACE] = "TRACE",
    [HTTP_OTHER] = "OTHER",
};

const char *
http_method_name(enum http_method m)
{
    if ((unsigned)m >= ARRAY_SIZE(method_names)) {
        return "OTHER";
    }
    return method_names[m];
}
