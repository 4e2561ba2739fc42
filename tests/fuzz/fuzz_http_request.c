/*
 * fuzz_http_request.c - libFuzzer harness for the client side of the proxy:
 * http_parse_request_head on everything received, then the chunked decoder on
 * the bytes after the head (or on the whole input when there is no head).
 *
 * Besides crashes and sanitizer reports it checks the parser's contract: a
 * head's pointers stay inside the head, smuggling shapes never parse, and a
 * prefix of the input gives "need more" or the same answer, never another one,
 * because the proxy re-parses a growing buffer after every read.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "http.h"

static bool
inside(const char *p, size_t n, const char *base, size_t len)
{
    return p != NULL && p >= base && n <= len && (size_t)(p - base) <= len - n;
}

static int
parse_exact(const uint8_t *data, size_t len, struct http_request_head *head)
{
    char *copy = fuzz_copy(data, len);
    const char *cause = NULL;
    int rc = http_parse_request_head(copy, len, head, &cause);

    FUZZ_CHECK((rc < 0) == (cause != NULL), "request rc %d with cause %s", rc,
               cause ? cause : "(null)");
    free(copy);
    return rc;
}

static void
check_head(const struct http_request_head *h, const char *buf, size_t rc)
{
    FUZZ_CHECK(h->head_len == rc, "head_len %zu but rc %zu", h->head_len, rc);
    FUZZ_CHECK(h->nheaders >= 0 && h->nheaders <= HTTP_MAX_HEADERS, "nheaders %d", h->nheaders);
    FUZZ_CHECK(h->method != HTTP_CONNECT, "CONNECT request parsed");
    FUZZ_CHECK(h->version_minor == 0 || h->version_minor == 1, "version 1.%d", h->version_minor);
    FUZZ_CHECK(inside(h->method_str, h->method_len, buf, rc) && h->method_len > 0,
               "method outside the head");
    FUZZ_CHECK(inside(h->target, h->target_len, buf, rc) && h->target_len > 0,
               "target outside the head");
    FUZZ_CHECK(inside(h->path, h->path_len, buf, rc), "path outside the head");
    FUZZ_CHECK(h->query == NULL || inside(h->query, h->query_len, buf, rc),
               "query outside the head");
    FUZZ_CHECK(h->content_length >= -1, "content_length %lld", (long long)h->content_length);
    FUZZ_CHECK(!(h->chunked && !h->has_transfer_encoding), "chunked without Transfer-Encoding");
    FUZZ_CHECK(!(h->has_transfer_encoding && h->content_length >= 0),
               "Transfer-Encoding together with Content-Length parsed");
    FUZZ_CHECK(h->host_index >= -1 && h->host_index < h->nheaders, "host_index %d",
               h->host_index);
    FUZZ_CHECK(h->target_len != 0 && (h->target[0] == '/' || h->target[0] == '*'),
               "target not in origin form or '*'");
    for (int i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        FUZZ_CHECK(inside(f->name, f->name_len, buf, rc) && f->name_len > 0,
                   "header %d name outside the head", i);
        FUZZ_CHECK(f->value_len == 0 || inside(f->value, f->value_len, buf, rc),
                   "header %d value outside the head", i);
        FUZZ_CHECK(memchr(f->name, ':', f->name_len) == NULL, "header %d name holds ':'", i);
        for (size_t k = 0; k < f->value_len; k++) {
            unsigned char c = (unsigned char)f->value[k];
            FUZZ_CHECK(c != '\0' && c != '\r' && c != '\n', "header %d value holds NUL/CR/LF", i);
        }
        (void)http_is_hop_by_hop(f, h->headers, h->nheaders);
    }
    if (h->host_index >= 0) {
        FUZZ_CHECK(http_header_is(&h->headers[h->host_index], "host"), "host_index not Host");
    }
    FUZZ_CHECK(http_method_name(h->method) != NULL, "method without a name");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_request_head *head = malloc(sizeof(*head));
    struct http_request_head *shorter = malloc(sizeof(*shorter));
    char *buf = fuzz_copy(data, size);
    const char *cause = NULL;
    int rc = http_parse_request_head(buf, size, head, &cause);

    FUZZ_CHECK(rc == 0 || rc > 0 || rc == -400 || rc == -405 || rc == -414 || rc == -431 ||
                   rc == -501 || rc == -505,
               "unexpected request result %d", rc);
    FUZZ_CHECK((rc < 0) == (cause != NULL), "request rc %d with cause %s", rc,
               cause ? cause : "(null)");
    FUZZ_CHECK(http_parse_request_head(buf, size, shorter, NULL) == rc,
               "result depends on whether a cause is asked for");
    if (rc > 0) {
        FUZZ_CHECK((size_t)rc <= size, "head %d longer than input %zu", rc, size);
        check_head(head, buf, (size_t)rc);
        FUZZ_CHECK(parse_exact(data, (size_t)rc, shorter) == rc, "head alone parses differently");
        FUZZ_CHECK(parse_exact(data, (size_t)rc - 1, shorter) == 0,
                   "head minus its last byte is not 'need more'");
        FUZZ_CHECK(parse_exact(data, (size_t)rc / 2, shorter) == 0,
                   "half of a head is not 'need more'");
        (void)fuzz_chunked_check(data + rc, size - (size_t)rc);
    } else {
        if (size > 0) {
            int prefix = parse_exact(data, size - 1, shorter);
            FUZZ_CHECK(prefix == 0 || prefix == rc, "prefix gives %d, whole input %d", prefix, rc);
            prefix = parse_exact(data, size / 2, shorter);
            FUZZ_CHECK(prefix == 0 || prefix == rc, "half gives %d, whole input %d", prefix, rc);
        }
        FUZZ_CHECK(http_reason(-rc) != NULL, "no reason phrase for %d", -rc);
        (void)fuzz_chunked_check(data, size);
    }
    free(buf);
    free(shorter);
    free(head);
    return 0;
}
