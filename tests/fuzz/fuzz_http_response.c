/*
 * fuzz_http_response.c - libFuzzer harness for upstream answers:
 * http_parse_response_head, http_response_body_kind, and the chunked decoder
 * on the body when the head says chunked (on the whole input otherwise).
 *
 * An upstream is untrusted input too: a confused body length is how a proxy
 * ends up splicing one response into the next request's answer.
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
parse_exact(const uint8_t *data, size_t len, struct http_response_head *head)
{
    char *copy = fuzz_copy(data, len);
    const char *cause = NULL;
    int rc = http_parse_response_head(copy, len, head, &cause);

    FUZZ_CHECK((rc < 0) == (cause != NULL), "response rc %d with cause %s", rc,
               cause ? cause : "(null)");
    free(copy);
    return rc;
}

static void
check_head(const struct http_response_head *h, const char *buf, size_t rc)
{
    FUZZ_CHECK(h->head_len == rc, "head_len %zu but rc %zu", h->head_len, rc);
    FUZZ_CHECK(h->status >= 100 && h->status <= 599, "status %d", h->status);
    FUZZ_CHECK(h->version_minor == 0 || h->version_minor == 1, "version 1.%d", h->version_minor);
    FUZZ_CHECK(h->reason_len == 0 || inside(h->reason, h->reason_len, buf, rc),
               "reason outside the head");
    FUZZ_CHECK(h->nheaders >= 0 && h->nheaders <= HTTP_MAX_HEADERS, "nheaders %d", h->nheaders);
    FUZZ_CHECK(h->content_length >= -1, "content_length %lld", (long long)h->content_length);
    FUZZ_CHECK(!(h->chunked && !h->has_transfer_encoding), "chunked without Transfer-Encoding");
    FUZZ_CHECK(!(h->has_transfer_encoding && !h->chunked && h->keep_alive),
               "keep-alive with a body that runs until close");
    for (int i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        FUZZ_CHECK(inside(f->name, f->name_len, buf, rc) && f->name_len > 0,
                   "header %d name outside the head", i);
        FUZZ_CHECK(f->value_len == 0 || inside(f->value, f->value_len, buf, rc),
                   "header %d value outside the head", i);
        (void)http_is_hop_by_hop(f, h->headers, h->nheaders);
    }
}

static void
check_body_kind(const struct http_response_head *h)
{
    enum http_body_kind after_head = http_response_body_kind(h, true);
    enum http_body_kind kind = http_response_body_kind(h, false);
    bool bodiless = h->status < 200 || h->status == 204 || h->status == 304;

    FUZZ_CHECK(after_head == HTTP_BODY_NONE, "answer to HEAD has a body (kind %d)", after_head);
    if (bodiless) {
        FUZZ_CHECK(kind == HTTP_BODY_NONE, "status %d has a body (kind %d)", h->status, kind);
    } else if (h->chunked) {
        FUZZ_CHECK(kind == HTTP_BODY_CHUNKED, "chunked head gives kind %d", kind);
    } else if (h->has_transfer_encoding) {
        FUZZ_CHECK(kind == HTTP_BODY_UNTIL_CLOSE, "non-chunked coding gives kind %d", kind);
    } else if (h->content_length >= 0) {
        FUZZ_CHECK(kind == HTTP_BODY_LENGTH, "Content-Length head gives kind %d", kind);
    } else {
        FUZZ_CHECK(kind == HTTP_BODY_UNTIL_CLOSE, "unframed body gives kind %d", kind);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_response_head *head = malloc(sizeof(*head));
    struct http_response_head *shorter = malloc(sizeof(*shorter));
    char *buf = fuzz_copy(data, size);
    const char *cause = NULL;
    int rc = http_parse_response_head(buf, size, head, &cause);

    FUZZ_CHECK(rc >= 0 || rc == -502, "unexpected response result %d", rc);
    FUZZ_CHECK((rc < 0) == (cause != NULL), "response rc %d with cause %s", rc,
               cause ? cause : "(null)");
    FUZZ_CHECK(http_parse_response_head(buf, size, shorter, NULL) == rc,
               "result depends on whether a cause is asked for");
    if (rc > 0) {
        FUZZ_CHECK((size_t)rc <= size, "head %d longer than input %zu", rc, size);
        check_head(head, buf, (size_t)rc);
        check_body_kind(head);
        FUZZ_CHECK(parse_exact(data, (size_t)rc, shorter) == rc, "head alone parses differently");
        FUZZ_CHECK(parse_exact(data, (size_t)rc - 1, shorter) == 0,
                   "head minus its last byte is not 'need more'");
        if (http_response_body_kind(head, false) == HTTP_BODY_CHUNKED) {
            (void)fuzz_chunked_check(data + rc, size - (size_t)rc);
        }
    } else {
        if (size > 0) {
            int prefix = parse_exact(data, size - 1, shorter);
            FUZZ_CHECK(prefix == 0 || prefix == rc, "prefix gives %d, whole input %d", prefix, rc);
        }
        (void)fuzz_chunked_check(data, size);
    }
    free(buf);
    free(shorter);
    free(head);
    return 0;
}
