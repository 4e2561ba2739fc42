/*
 * fuzz_traceparent.c - libFuzzer harness for the W3C trace context headers
 * a caller sends: trace_parse_traceparent and trace_set_tracestate on the
 * same bytes.
 *
 * A parsed traceparent must round-trip through trace_format_traceparent with
 * the ids unchanged, a refused one must leave the context untouched, and a
 * kept tracestate must fit its buffer and hold only printable ASCII, because
 * it is forwarded upstream as a header.
 */
#include <stdlib.h>
#include <string.h>

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

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_copy(data, size);

    check_traceparent(s, size);
    check_tracestate(s, size);
    free(s);
    return 0;
}
