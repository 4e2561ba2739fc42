/*
 * fuzz_traceparent.c - libFuzzer harness for the W3C trace context headers
 * a caller sends: trace_parse_traceparent and trace_set_tracestate on the
 * same bytes.
 *
 * A parsed traceparent must round-trip through trace_format_traceparent with
 * the ids unchanged, a refused one must leave the context untouched, and a
 * kept tracestate must fit its buffer and hold only printable ASCII, because
 * it is forwarded upstream as a header.
 *
 * The same bytes, cut into pieces, are also a span's attribute values (paths
 * and model names come from callers): the span's encoded attributes must
 * stay in their room, read back as set (cut and cleaned), and encode to a
 * well-formed protobuf span and to JSON that parses, with valid UTF-8.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/pbdec.h"
#include "fuzz_common.h"
#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool
all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return false;
        }
    }
    return true;
}

static void
trim_ows(const char **s, size_t *len)
{
    while (*len > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t')) {
        (*len)--;
    }
}

static unsigned
hex_nibble(char c)
{
    return c >= 'a' ? (unsigned)(c - 'a' + 10) : (unsigned)(c - '0');
}

static void
check_traceparent(const char *s, size_t len)
{
    struct trace_context *ctx = malloc(sizeof(*ctx));
    struct trace_context *pristine = malloc(sizeof(*pristine));
    struct trace_context again;
    const char *t = s;
    size_t tlen = len;
    char formatted[56];

    memset(ctx, 0xa5, sizeof(*ctx));
    memcpy(pristine, ctx, sizeof(*ctx));
    trim_ows(&t, &tlen);
    if (!trace_parse_traceparent(s, len, ctx)) {
        FUZZ_CHECK(memcmp(ctx, pristine, sizeof(*ctx)) == 0, "refused traceparent changed out");
        free(pristine);
        free(ctx);
        return;
    }
    FUZZ_CHECK(tlen >= TRACE_TRACEPARENT_LEN, "accepted %zu characters", tlen);
    FUZZ_CHECK(!(t[0] == '0' && t[1] == '0' && tlen != TRACE_TRACEPARENT_LEN),
               "version 00 of length %zu accepted", tlen);
    FUZZ_CHECK(!(t[0] == 'f' && t[1] == 'f'), "version ff accepted");
    FUZZ_CHECK(!all_zero(ctx->trace_id, TRACE_ID_SIZE), "all-zero trace-id accepted");
    FUZZ_CHECK(!all_zero(ctx->span_id, TRACE_SPAN_ID_SIZE), "all-zero parent-id accepted");
    FUZZ_CHECK(ctx->tracestate[0] == '\0', "tracestate not cleared");
    FUZZ_CHECK(ctx->flags == ((hex_nibble(t[54]) & 1) ? TRACE_FLAG_SAMPLED : 0),
               "flags %02x from %.2s", ctx->flags, t + 53);

    trace_format_traceparent(ctx, formatted);
    FUZZ_CHECK(strlen(formatted) == TRACE_TRACEPARENT_LEN, "formatted length %zu",
               strlen(formatted));
    FUZZ_CHECK(memcmp(formatted, "00-", 3) == 0, "formatted version %.2s", formatted);
    FUZZ_CHECK(memcmp(formatted + 3, t + 3, 32) == 0 && memcmp(formatted + 36, t + 36, 16) == 0,
               "ids changed in the round trip: %.*s -> %s", (int)tlen, t, formatted);
    FUZZ_CHECK(trace_parse_traceparent(formatted, TRACE_TRACEPARENT_LEN, &again),
               "own traceparent %s refused", formatted);
    FUZZ_CHECK(memcmp(again.trace_id, ctx->trace_id, TRACE_ID_SIZE) == 0 &&
                   memcmp(again.span_id, ctx->span_id, TRACE_SPAN_ID_SIZE) == 0 &&
                   again.flags == ctx->flags,
               "re-parse of %s differs", formatted);
    free(pristine);
    free(ctx);
}

static void
check_tracestate(const char *s, size_t len)
{
    struct trace_context *ctx = malloc(sizeof(*ctx));
    const char *t = s;
    size_t tlen = len;
    size_t kept;
    bool printable = true;

    memset(ctx, 0xa5, sizeof(*ctx));
    trace_set_tracestate(ctx, s, len);
    kept = strnlen(ctx->tracestate, sizeof(ctx->tracestate));
    FUZZ_CHECK(kept <= TRACE_TRACESTATE_MAX, "tracestate of %zu characters kept", kept);
    for (size_t i = 0; i < kept; i++) {
        unsigned char c = (unsigned char)ctx->tracestate[i];
        FUZZ_CHECK(c >= 0x20 && c <= 0x7e, "tracestate keeps byte 0x%02x", c);
    }
    trim_ows(&t, &tlen);
    for (size_t i = 0; i < tlen; i++) {
        unsigned char c = (unsigned char)t[i];
        printable = printable && c >= 0x20 && c <= 0x7e;
    }
    if (printable && tlen <= TRACE_TRACESTATE_MAX) {
        FUZZ_CHECK(kept == tlen && memcmp(ctx->tracestate, t, tlen) == 0,
                   "a short printable tracestate was not kept as sent");
    }
    if (!printable) {
        FUZZ_CHECK(kept == 0, "tracestate with control characters kept");
    }
    free(ctx);
}

/*
 * A span message's attributes (field 9), each a KeyValue whose fields all
 * parse; -1 when a length runs off or a wire type is unknown.
 */
static long
count_attrs(const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    struct pb_field f, kv;
    long n = 0;
    int rc;

    while ((rc = pb_next(&p, end, &f)) == 1) {
        if (f.num == 9) {
            const uint8_t *q = f.p, *qend = f.p + f.len;
            int rc2;
            if (f.wire != 2) {
                return -1;
            }
            while ((rc2 = pb_next(&q, qend, &kv)) == 1) {
            }
            if (rc2 < 0) {
                return -1;
            }
            n++;
        }
    }
    return rc < 0 ? -1 : n;
}

static void
check_span_attrs(const char *s, size_t len)
{
    static const char *const keys[] = {"url.path", "gen_ai.request.model", "http.request.id",
                                       "akosha.model", "k", "a.much.longer.attribute.key.name"};
    struct trace_context ctx = {.flags = TRACE_FLAG_SAMPLED};
    struct trace_span *span;
    struct buf out;
    const uint8_t *p, *end;
    struct pb_field field;
    json_t *root;
    size_t at = 0, piece = 0;

    memset(ctx.trace_id, 1, TRACE_ID_SIZE);
    memset(ctx.span_id, 2, TRACE_SPAN_ID_SIZE);
    span = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, "fuzz", 1);
    /* pieces of 0-127 bytes, the length in each piece's first byte */
    while (at < len && piece < 40) {
        size_t plen = MIN((size_t)((unsigned char)s[at] & 0x7f), len - at - 1);
        const char *key = keys[piece % (sizeof(keys) / sizeof(keys[0]))];
        struct trace_value v;
        if (piece % 7 == 6) {
            trace_span_attr_int(span, key, (int64_t)plen - 64);
        } else {
            trace_span_attr_strn(span, key, s + at + 1, plen);
            if (trace_span_attr_get(span, key, &v)) {
                json_t *utf8 = json_stringn(v.str, v.len); /* NULL when not valid UTF-8 */
                FUZZ_CHECK(v.type == TRACE_ATTR_STRING && v.len < TRACE_ATTR_STR_MAX &&
                               v.len <= plen * 3 && utf8 != NULL,
                           "value read back: %zu bytes of %zu", v.len, plen);
                json_decref(utf8);
                if (v.len == plen) {
                    /* kept whole: as sent, unless cleaned (then not plain ASCII) */
                    bool ascii = true;
                    for (size_t i = 0; i < plen; i++) {
                        ascii = ascii && (unsigned char)s[at + 1 + i] < 0x80;
                    }
                    FUZZ_CHECK(!ascii || memcmp(v.str, s + at + 1, plen) == 0,
                               "an ASCII value changed");
                }
            } else {
                FUZZ_CHECK(span->dropped_attrs > 0, "a value neither kept nor counted");
            }
        }
        FUZZ_CHECK(span->attrs_len <= TRACE_SPAN_ATTRS_MAX && span->nattrs <= TRACE_MAX_ATTRS,
                   "attributes overflow their room");
        at += 1 + plen;
        piece++;
    }
    trace_span_end(span, 2);

    buf_init(&out);
    trace_span_proto(&out, span);
    p = (const uint8_t *)out.data;
    end = p + out.len;
    FUZZ_CHECK(pb_next(&p, end, &field) == 1 && field.num == 2 && field.wire == 2,
               "not a ScopeSpans.spans field");
    FUZZ_CHECK(p == end, "the span's length is not what follows");
    FUZZ_CHECK(pb_span_ok(field.p, field.len), "the span's fields do not parse");
    FUZZ_CHECK(count_attrs(field.p, field.len) == span->nattrs, "attribute count");

    out.len = 0;
    trace_span_json(&out, span);
    root = json_loadb(out.data, out.len, JSON_ALLOW_NUL, NULL); /* "\u0000" is JSON */
    FUZZ_CHECK(root != NULL, "span JSON does not parse: %s", out.data);
    FUZZ_CHECK(json_array_size(json_object_get(root, "attributes")) == span->nattrs,
               "JSON attribute count");
    json_decref(root);
    buf_free(&out);
    trace_span_free(span);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_copy(data, size);

    check_traceparent(s, size);
    check_tracestate(s, size);
    check_span_attrs(s, size);
    free(s);
    return 0;
}
