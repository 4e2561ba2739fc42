/*
 * test_trace.c - W3C trace context, sampler, spans, OTLP JSON and the
 * telemetry settings.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pbdec.h"
#include "trace.h"

/* Attribute keys must have static storage (trace.h): a table of literals. */
static const char *const many_keys[] = {"k0",  "k1",  "k2",  "k3",  "k4",  "k5",  "k6",
                                        "k7",  "k8",  "k9",  "k10", "k11", "k12", "k13",
                                        "k14", "k15", "k16", "k17", "k18"};

#define VALID_TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static bool
parse(const char *s, struct trace_context *ctx)
{
    return trace_parse_traceparent(s, strlen(s), ctx);
}

static bool
valid(const char *s)
{
    struct trace_context ctx;
    return parse(s, &ctx);
}

/* ---- traceparent ---- */

Test(traceparent, parses_the_spec_example_into_ids_and_flags)
{
    struct trace_context ctx;
    static const uint8_t trace_id[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                         0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
    static const uint8_t span_id[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};

    cr_assert(parse(VALID_TP, &ctx));
    cr_assert_arr_eq(ctx.trace_id, trace_id, 16);
    cr_assert_arr_eq(ctx.span_id, span_id, 8);
    cr_assert(trace_context_sampled(&ctx));
    cr_assert_str_eq(ctx.tracestate, "");
}

Test(traceparent, formats_back_to_the_same_header)
{
    struct trace_context ctx;
    char out[56];

    cr_assert(parse(VALID_TP, &ctx));
    trace_format_traceparent(&ctx, out);
    cr_assert_str_eq(out, VALID_TP);
    cr_assert_eq(strlen(out), TRACE_TRACEPARENT_LEN);
}

Test(traceparent, unsampled_flag_is_read_and_written)
{
    struct trace_context ctx;
    char out[56];

    cr_assert(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &ctx));
    cr_assert_not(trace_context_sampled(&ctx));
    trace_format_traceparent(&ctx, out);
    cr_assert_str_eq(out + 53, "00");
}

Test(traceparent, unknown_flag_bits_are_not_propagated)
{
    struct trace_context ctx;
    char out[56];

    cr_assert(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", &ctx));
    cr_assert(trace_context_sampled(&ctx));
    trace_format_traceparent(&ctx, out);
    cr_assert_str_eq(out + 53, "01");
}

Test(traceparent, version_ff_is_invalid)
{
    cr_assert_not(valid("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
}

Test(traceparent, all_zero_trace_id_is_invalid)
{
    cr_assert_not(valid("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
}

Test(traceparent, all_zero_parent_id_is_invalid)
{
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
}

Test(traceparent, wrong_field_lengths_are_invalid)
{
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"));
    cr_assert_not(valid("0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    cr_assert_not(valid(""));
}

Test(traceparent, upper_case_hex_is_invalid)
{
    cr_assert_not(valid("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"));
    cr_assert_not(valid("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
}

Test(traceparent, non_hex_and_wrong_separators_are_invalid)
{
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"));
    cr_assert_not(valid("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7-01"));
    cr_assert_not(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x"));
}

Test(traceparent, version_00_with_extra_fields_is_invalid)
{
    cr_assert_not(valid(VALID_TP "-what-the-future-will-be-like"));
    cr_assert_not(valid(VALID_TP "0"));
}

Test(traceparent, future_version_is_read_by_the_version_00_prefix)
{
    struct trace_context ctx;
    char out[56];

    cr_assert(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-"
                    "be-like",
                    &ctx));
    trace_format_traceparent(&ctx, out);
    cr_assert_str_eq(out, VALID_TP, "a future version is propagated as version 00");
    cr_assert(valid("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
}

Test(traceparent, future_version_needs_a_dash_after_the_flags)
{
    cr_assert_not(valid("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what"));
    cr_assert_not(valid("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"));
}

Test(traceparent, surrounding_http_whitespace_is_ignored)
{
    cr_assert(valid("  " VALID_TP "\t"));
}

Test(traceparent, failure_leaves_the_output_untouched)
{
    struct trace_context ctx;

    memset(&ctx, 0xab, sizeof(ctx));
    cr_assert_not(parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &ctx));
    cr_assert_eq(ctx.trace_id[0], 0xab);
    cr_assert_eq(ctx.flags, 0xab);
}

/* ---- tracestate ---- */

Test(tracestate, short_value_is_kept_verbatim)
{
    struct trace_context ctx;

    cr_assert(parse(VALID_TP, &ctx));
    trace_set_tracestate(&ctx, " congo=t61rcWkgMzE,rojo=00f067aa0ba902b7 ", 41);
    cr_assert_str_eq(ctx.tracestate, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
}

Test(tracestate, control_characters_discard_the_value)
{
    struct trace_context ctx;

    cr_assert(parse(VALID_TP, &ctx));
    trace_set_tracestate(&ctx, "a=b\r\nx=y", 8);
    cr_assert_str_eq(ctx.tracestate, "");
}

Test(tracestate, long_value_loses_long_members_then_members_from_the_right)
{
    struct trace_context ctx;
    char value[1400], expect_prefix[32];
    size_t len = 0;

    /* One 200-character member, then 40 members of 24 characters. */
    len += (size_t)sprintf(value + len, "big=");
    memset(value + len, 'x', 196);
    len += 196;
    for (int i = 0; i < 40; i++) {
        len += (size_t)sprintf(value + len, ",k%02d=aaaaaaaaaaaaaaaaaaaa", i);
    }
    cr_assert_gt(len, TRACE_TRACESTATE_MAX);
    cr_assert(parse(VALID_TP, &ctx));
    trace_set_tracestate(&ctx, value, len);
    cr_assert_leq(strlen(ctx.tracestate), TRACE_TRACESTATE_MAX);
    cr_assert_null(strstr(ctx.tracestate, "big="), "members over 128 characters go first");
    snprintf(expect_prefix, sizeof(expect_prefix), "k00=aaaaaaaaaaaaaaaaaaaa,k01=");
    cr_assert_eq(strncmp(ctx.tracestate, expect_prefix, strlen(expect_prefix)), 0);
    cr_assert_null(strstr(ctx.tracestate, "k39="), "members are dropped from the right");
    cr_assert_neq(ctx.tracestate[strlen(ctx.tracestate) - 1], ',');
}

/* ---- ids ---- */

Test(ids, span_and_trace_ids_are_never_zero_and_rarely_repeat)
{
    uint8_t prev[TRACE_ID_SIZE] = {0}, id[TRACE_ID_SIZE], sid[TRACE_SPAN_ID_SIZE];
    static const uint8_t zero[TRACE_ID_SIZE] = {0};

    for (int i = 0; i < 1000; i++) {
        trace_new_trace_id(id);
        trace_new_span_id(sid);
        cr_assert_neq(memcmp(id, zero, sizeof(id)), 0);
        cr_assert_neq(memcmp(sid, zero, sizeof(sid)), 0);
        cr_assert_neq(memcmp(id, prev, sizeof(id)), 0);
        memcpy(prev, id, sizeof(id));
    }
}

static void *
thread_first_id(void *arg)
{
    trace_new_trace_id(arg);
    return NULL;
}

Test(ids, threads_draw_different_ids)
{
    uint8_t a[TRACE_ID_SIZE], b[TRACE_ID_SIZE];
    pthread_t t1, t2;

    pthread_create(&t1, NULL, thread_first_id, a);
    pthread_create(&t2, NULL, thread_first_id, b);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    cr_assert_neq(memcmp(a, b, sizeof(a)), 0, "each thread seeds its own generator");
}

Test(ids, hex_is_lower_case)
{
    static const uint8_t bytes[3] = {0xab, 0x01, 0xf0};
    char out[7];

    trace_hex(bytes, 3, out);
    cr_assert_str_eq(out, "ab01f0");
}

Test(ids, hex_of_every_byte_at_every_offset_matches_printf)
{
    uint8_t bytes[259];
    char out[2 * sizeof(bytes) + 1], want[2 * sizeof(bytes) + 1];

    for (size_t i = 0; i < sizeof(bytes); i++) {
        bytes[i] = (uint8_t)(i * 7 + 3); /* every value, in an order that mixes neighbours */
    }
    for (size_t n = 0; n <= sizeof(bytes); n++) { /* whole words and each remainder */
        for (size_t i = 0; i < n; i++) {
            snprintf(want + 2 * i, 3, "%02x", bytes[i]);
        }
        want[2 * n] = '\0';
        trace_hex(bytes, n, out);
        cr_assert_str_eq(out, want, "n = %zu", n);
    }
}

/* ---- sampler ---- */

Test(sampler, ratio_quarter_samples_about_a_quarter_of_random_traces)
{
    struct trace_sampler s;
    uint8_t id[TRACE_ID_SIZE];
    int sampled = 0;

    trace_sampler_init(&s, TRACE_SAMPLER_TRACEIDRATIO, 0.25);
    for (int i = 0; i < 10000; i++) {
        trace_new_trace_id(id);
        sampled += trace_sampler_decide(&s, NULL, id);
    }
    cr_assert(sampled >= 2300 && sampled <= 2700, "sampled %d of 10000", sampled);
}

Test(sampler, ratio_decision_is_deterministic_from_the_trace_id)
{
    struct trace_sampler s;
    uint8_t id[TRACE_ID_SIZE];

    trace_sampler_init(&s, TRACE_SAMPLER_TRACEIDRATIO, 0.5);
    for (int i = 0; i < 200; i++) {
        bool first;
        trace_new_trace_id(id);
        first = trace_ratio_sampled(&s, id);
        cr_assert_eq(trace_ratio_sampled(&s, id), first);
    }
}

Test(sampler, ratio_compares_the_low_56_bits_with_the_threshold)
{
    struct trace_sampler s;
    /* Threshold for 0.5 is 2^55: byte 9 (the top of the low 56 bits) 0x80. */
    uint8_t at[TRACE_ID_SIZE] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80};
    uint8_t below[TRACE_ID_SIZE] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                    0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

    trace_sampler_init(&s, TRACE_SAMPLER_TRACEIDRATIO, 0.5);
    cr_assert_eq(s.threshold, (uint64_t)1 << 55);
    cr_assert(trace_ratio_sampled(&s, at));
    cr_assert_not(trace_ratio_sampled(&s, below), "the high 9 bytes do not count");
}

Test(sampler, a_trace_sampled_at_a_low_ratio_is_sampled_at_every_higher_ratio)
{
    struct trace_sampler lo, hi;
    uint8_t id[TRACE_ID_SIZE];

    trace_sampler_init(&lo, TRACE_SAMPLER_TRACEIDRATIO, 0.1);
    trace_sampler_init(&hi, TRACE_SAMPLER_TRACEIDRATIO, 0.6);
    for (int i = 0; i < 2000; i++) {
        trace_new_trace_id(id);
        if (trace_ratio_sampled(&lo, id)) {
            cr_assert(trace_ratio_sampled(&hi, id));
        }
    }
}

Test(sampler, ratio_zero_never_and_one_always_samples)
{
    struct trace_sampler zero, one;
    uint8_t id[TRACE_ID_SIZE];

    trace_sampler_init(&zero, TRACE_SAMPLER_TRACEIDRATIO, 0.0);
    trace_sampler_init(&one, TRACE_SAMPLER_TRACEIDRATIO, 1.0);
    for (int i = 0; i < 1000; i++) {
        trace_new_trace_id(id);
        cr_assert_not(trace_ratio_sampled(&zero, id));
        cr_assert(trace_ratio_sampled(&one, id));
    }
    memset(id, 0xff, sizeof(id));
    cr_assert_not(trace_ratio_sampled(&zero, id));
}

Test(sampler, parent_based_follows_the_parent_flag)
{
    struct trace_sampler none, all;
    struct trace_context sampled, unsampled;
    uint8_t id[TRACE_ID_SIZE];

    cr_assert(parse(VALID_TP, &sampled));
    cr_assert(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &unsampled));
    trace_sampler_init(&none, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO, 0.0);
    trace_sampler_init(&all, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO, 1.0);
    trace_new_trace_id(id);
    cr_assert(trace_sampler_decide(&none, &sampled, id));
    cr_assert_not(trace_sampler_decide(&all, &unsampled, id));
    cr_assert_not(trace_sampler_decide(&none, NULL, id), "a root uses the ratio");
    cr_assert(trace_sampler_decide(&all, NULL, id));
}

Test(sampler, plain_kinds_ignore_the_parent)
{
    struct trace_sampler on, off, pb_off;
    struct trace_context sampled, unsampled;
    uint8_t id[TRACE_ID_SIZE];

    cr_assert(parse(VALID_TP, &sampled));
    cr_assert(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &unsampled));
    trace_new_trace_id(id);
    trace_sampler_init(&on, TRACE_SAMPLER_ALWAYS_ON, 0);
    trace_sampler_init(&off, TRACE_SAMPLER_ALWAYS_OFF, 0);
    trace_sampler_init(&pb_off, TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF, 0);
    cr_assert(trace_sampler_decide(&on, &unsampled, id));
    cr_assert_not(trace_sampler_decide(&off, &sampled, id));
    cr_assert_not(trace_sampler_decide(&pb_off, NULL, id));
    cr_assert(trace_sampler_decide(&pb_off, &sampled, id));
}

Test(sampler, kind_names_parse_case_insensitively)
{
    cr_assert_eq(trace_sampler_kind_parse("parentbased_traceidratio"),
                 TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO);
    cr_assert_eq(trace_sampler_kind_parse("Always_Off"), TRACE_SAMPLER_ALWAYS_OFF);
    cr_assert_eq(trace_sampler_kind_parse("jaeger_remote"), -1);
    cr_assert_str_eq(trace_sampler_kind_name(TRACE_SAMPLER_TRACEIDRATIO), "traceidratio");
}

/* ---- contexts ---- */

Test(context, start_continues_the_remote_trace_with_a_new_span)
{
    struct trace_sampler s;
    struct trace_context remote, req;

    trace_sampler_init(&s, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO, 0.0);
    cr_assert(parse(VALID_TP, &remote));
    trace_set_tracestate(&remote, "rojo=1", 6);
    trace_start(&s, &remote, &req);
    cr_assert_arr_eq(req.trace_id, remote.trace_id, TRACE_ID_SIZE);
    cr_assert_neq(memcmp(req.span_id, remote.span_id, TRACE_SPAN_ID_SIZE), 0);
    cr_assert(trace_context_sampled(&req), "parent sampled wins over ratio 0");
    cr_assert_str_eq(req.tracestate, "rojo=1");
}

Test(context, unsampled_request_still_propagates_with_the_flag_cleared)
{
    struct trace_sampler s;
    struct trace_context req, attempt;
    char tp[56];

    trace_sampler_init(&s, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO, 0.0);
    trace_start(&s, NULL, &req);
    cr_assert_not(trace_context_sampled(&req));
    trace_child_context(&req, &attempt);
    trace_format_traceparent(&attempt, tp);
    cr_assert(valid(tp), "the propagated header is valid: %s", tp);
    cr_assert_str_eq(tp + 53, "00");
    cr_assert_arr_eq(attempt.trace_id, req.trace_id, TRACE_ID_SIZE);
    cr_assert_neq(memcmp(attempt.span_id, req.span_id, TRACE_SPAN_ID_SIZE), 0);
}

Test(context, root_start_makes_a_new_trace_each_time)
{
    struct trace_sampler s;
    struct trace_context a, b;

    trace_sampler_init(&s, TRACE_SAMPLER_ALWAYS_ON, 0);
    trace_start(&s, NULL, &a);
    trace_start(&s, NULL, &b);
    cr_assert_neq(memcmp(a.trace_id, b.trace_id, TRACE_ID_SIZE), 0);
    cr_assert(trace_context_sampled(&a));
    cr_assert_str_eq(a.tracestate, "");
}

/* ---- spans ---- */

static struct trace_span *
new_span(enum trace_span_kind kind)
{
    struct trace_sampler s;
    struct trace_context ctx;

    trace_sampler_init(&s, TRACE_SAMPLER_ALWAYS_ON, 0);
    trace_start(&s, NULL, &ctx);
    return trace_span_new(&ctx, NULL, kind, "POST /v1/embeddings", 1000);
}

/* A string attribute's value as a NUL-terminated copy (in out), or NULL when unset. */
static const char *
attr_text(const struct trace_span *span, const char *key, char out[TRACE_ATTR_STR_MAX + 1])
{
    struct trace_value v;

    if (!trace_span_attr_get(span, key, &v) || v.type != TRACE_ATTR_STRING) {
        return NULL;
    }
    cr_assert_leq(v.len, TRACE_ATTR_STR_MAX);
    memcpy(out, v.str, v.len);
    out[v.len] = '\0';
    return out;
}

Test(span, setting_a_key_again_replaces_its_value)
{
    struct trace_span *span = new_span(TRACE_KIND_SERVER);
    struct trace_value v;
    char text[TRACE_ATTR_STR_MAX + 1];

    trace_span_attr_str(span, "akosha.upstream", "tei-a");
    trace_span_attr_str(span, "akosha.model", "minilm");
    trace_span_attr_int(span, "akosha.upstream", 7);
    cr_assert_eq(span->nattrs, 2);
    cr_assert(trace_span_attr_get(span, "akosha.upstream", &v));
    cr_assert_eq(v.type, TRACE_ATTR_INT);
    cr_assert_eq(v.i, 7);
    cr_assert_str_eq(attr_text(span, "akosha.model", text), "minilm", "the other key is intact");
    trace_span_attr_int(span, "akosha.upstream", -9);
    cr_assert(trace_span_attr_get(span, "akosha.upstream", &v));
    cr_assert_eq(v.i, -9);
    trace_span_attr_double(span, "akosha.upstream", 0.25);
    cr_assert(trace_span_attr_get(span, "akosha.upstream", &v));
    cr_assert_eq(v.type, TRACE_ATTR_DOUBLE);
    cr_assert_float_eq(v.d, 0.25, 1e-12);
    trace_span_attr_bool(span, "akosha.upstream", true);
    cr_assert(trace_span_attr_get(span, "akosha.upstream", &v));
    cr_assert_eq(v.type, TRACE_ATTR_BOOL);
    cr_assert(v.b);
    cr_assert_eq(span->nattrs, 2);
    cr_assert_eq(span->dropped_attrs, 0);
    trace_span_free(span);
}

/* A block of server.address, server.port and akosha.upstream, as observe.c makes one. */
static void
upstream_block(struct trace_attr_block *b, const char *host)
{
    struct trace_span *s = new_span(TRACE_KIND_CLIENT);

    trace_span_attr_str(s, "server.address", host);
    trace_span_attr_int(s, "server.port", 8080);
    trace_span_attr_str(s, "akosha.upstream", "tei-a");
    cr_assert_eq(trace_attr_block_take(b, s), 3);
    trace_span_free(s);
}

Test(span, an_attribute_block_puts_the_same_fields_as_one_by_one)
{
    struct trace_attr_block b;
    struct trace_span *blocked = new_span(TRACE_KIND_CLIENT), *plain = new_span(TRACE_KIND_CLIENT);
    struct buf x = {0};
    char text[TRACE_ATTR_STR_MAX + 1];

    upstream_block(&b, "10.0.0.7");
    trace_span_attr_str(blocked, "http.request.method", "POST");
    trace_span_put_block(blocked, &b);
    trace_span_attr_str(plain, "http.request.method", "POST");
    trace_span_attr_str(plain, "server.address", "10.0.0.7");
    trace_span_attr_int(plain, "server.port", 8080);
    trace_span_attr_str(plain, "akosha.upstream", "tei-a");
    cr_assert_eq(blocked->nattrs, 4);
    cr_assert_eq(blocked->attrs_len, plain->attrs_len);
    cr_assert(memcmp(blocked->attrs, plain->attrs, plain->attrs_len) == 0, "the same bytes");
    /* the keys it brought are known to the span: setting one again replaces it */
    trace_span_attr_str(blocked, "akosha.upstream", "tei-b");
    cr_assert_eq(blocked->nattrs, 4);
    cr_assert_str_eq(attr_text(blocked, "akosha.upstream", text), "tei-b");
    cr_assert_str_eq(attr_text(blocked, "server.address", text), "10.0.0.7");
    trace_span_proto(&x, blocked);
    cr_assert_gt(x.len, 0);
    buf_free(&x);
    trace_span_free(blocked);
    trace_span_free(plain);
}

Test(span, an_attribute_block_replaces_keys_the_span_holds)
{
    struct trace_attr_block b;
    struct trace_span *span = new_span(TRACE_KIND_CLIENT);
    struct trace_value v;
    char text[TRACE_ATTR_STR_MAX + 1];

    upstream_block(&b, "10.0.0.7");
    trace_span_attr_str(span, "akosha.upstream", "old");
    trace_span_attr_int(span, "server.port", 1);
    trace_span_put_block(span, &b);
    cr_assert_eq(span->nattrs, 3, "no key twice");
    cr_assert_str_eq(attr_text(span, "akosha.upstream", text), "tei-a");
    cr_assert(trace_span_attr_get(span, "server.port", &v));
    cr_assert_eq(v.i, 8080);
    cr_assert_str_eq(attr_text(span, "server.address", text), "10.0.0.7");
    trace_span_free(span);
}

Test(span, an_attribute_block_on_a_full_span_is_dropped_and_counted_by_the_usual_rules)
{
    struct trace_attr_block b;
    struct trace_span *span = new_span(TRACE_KIND_CLIENT);
    char key[32], text[TRACE_ATTR_STR_MAX + 1];

    upstream_block(&b, "10.0.0.7");
    for (int i = 0; i < TRACE_MAX_ATTRS - 1; i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        trace_span_attr_int(span, key, i);
    }
    trace_span_put_block(span, &b);
    cr_assert_eq(span->nattrs, TRACE_MAX_ATTRS, "the first of the block fit");
    cr_assert_eq(span->dropped_attrs, 2, "the other two were dropped and counted");
    cr_assert_str_eq(attr_text(span, "server.address", text), "10.0.0.7");
    trace_span_free(span);
}

Test(span, an_attribute_block_takes_as_many_whole_attributes_as_fit)
{
    struct trace_attr_block b;
    struct trace_span *s = new_span(TRACE_KIND_CLIENT);
    char key[32], value[80];

    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "key.%d", i);
        trace_span_attr_str(s, key, value); /* about 90 bytes each */
    }
    cr_assert_eq(trace_attr_block_take(&b, s), 2, "two fit in %d bytes, the third does not",
                 TRACE_ATTR_BLOCK_MAX);
    cr_assert_leq(b.len, TRACE_ATTR_BLOCK_MAX);
    trace_span_free(s);
}

Test(span, attributes_beyond_the_limit_are_dropped_and_counted)
{
    struct trace_span *span = new_span(TRACE_KIND_SERVER);

    cr_assert_geq(sizeof(many_keys) / sizeof(many_keys[0]), TRACE_MAX_ATTRS + 3);
    for (int i = 0; i < TRACE_MAX_ATTRS + 3; i++) {
        trace_span_attr_bool(span, many_keys[i], true);
    }
    cr_assert_eq(span->nattrs, TRACE_MAX_ATTRS);
    cr_assert_eq(span->dropped_attrs, 3);
    trace_span_attr_bool(span, "k0", false);
    cr_assert_eq(span->dropped_attrs, 3, "replacing an existing key is not a drop");
    trace_span_free(span);
}

Test(span, long_strings_are_cut_on_a_utf8_boundary)
{
    struct trace_span *span = new_span(TRACE_KIND_SERVER);
    char value[300];
    size_t len = 0;

    while (len + 2 < sizeof(value)) {
        value[len++] = (char)0xc3; /* "é" */
        value[len++] = (char)0xa9;
    }
    value[len] = '\0';
    trace_span_attr_str(span, "url.path", value);
    len = strlen(attr_text(span, "url.path", (char[TRACE_ATTR_STR_MAX + 1]){0}));
    cr_assert_lt(len, TRACE_ATTR_STR_MAX);
    cr_assert_eq(len % 2, 0, "no half character at the cut");
    trace_span_free(span);
}

Test(span, string_values_are_cut_when_the_span_runs_out_of_room_then_dropped)
{
    struct trace_span *span = new_span(TRACE_KIND_SERVER);
    char value[80], text[TRACE_ATTR_STR_MAX + 1];
    size_t whole = 0, cut = 0, empty = 0;
    struct buf out;
    json_t *root;

    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    for (int i = 0; i < TRACE_MAX_ATTRS; i++) {
        trace_span_attr_str(span, many_keys[i], value);
    }
    cr_assert_leq(span->attrs_len, TRACE_SPAN_ATTRS_MAX);
    cr_assert_eq(span->nattrs + span->dropped_attrs, TRACE_MAX_ATTRS);
    for (int i = 0; i < TRACE_MAX_ATTRS; i++) {
        const char *v = attr_text(span, many_keys[i], text);
        size_t len;
        if (v == NULL) {
            continue;
        }
        len = strlen(v);
        cr_assert(strncmp(v, value, len) == 0, "a value is a prefix of what was set");
        whole += len == sizeof(value) - 1;
        cut += len > 0 && len < sizeof(value) - 1;
        empty += len == 0;
    }
    cr_assert_gt(whole, 0, "the first values are whole");
    cr_assert_lt(whole, TRACE_MAX_ATTRS, "the room runs out: %zu whole", whole);
    cr_assert_gt(span->attrs_len, TRACE_SPAN_ATTRS_MAX - 32, "the room is used up: %u",
                 span->attrs_len);
    cr_assert_leq(cut, 1, "at most one value is cut short");
    cr_assert_gt(span->dropped_attrs + empty, 0, "the last ones found no room");
    buf_init(&out);
    trace_span_json(&out, span);
    root = json_loadb(out.data, out.len, 0, NULL);
    cr_assert_not_null(root, "invalid JSON: %s", out.data);
    cr_assert_eq(json_array_size(json_object_get(root, "attributes")), span->nattrs);
    if (span->dropped_attrs > 0) {
        cr_assert_eq(json_integer_value(json_object_get(root, "droppedAttributesCount")),
                     span->dropped_attrs);
    }
    json_decref(root);
    buf_free(&out);
    trace_span_free(span);
}

Test(span, a_cut_at_the_room_never_splits_a_character)
{
    struct trace_span *span = new_span(TRACE_KIND_SERVER);
    char value[90], text[TRACE_ATTR_STR_MAX + 1];
    size_t len = 0;

    while (len + 2 < sizeof(value)) {
        value[len++] = (char)0xc3; /* "é" */
        value[len++] = (char)0xa9;
    }
    value[len] = '\0';
    for (int i = 0; i < TRACE_MAX_ATTRS; i++) {
        trace_span_attr_str(span, many_keys[i], value);
    }
    for (int i = 0; i < TRACE_MAX_ATTRS; i++) {
        const char *v = attr_text(span, many_keys[i], text);
        if (v != NULL) {
            cr_assert_eq(strlen(v) % 2, 0, "no half character at the cut (key %d)", i);
        }
    }
    trace_span_free(span);
}

Test(span, invalid_utf8_becomes_question_marks)
{
    struct trace_sampler s;
    struct trace_context ctx;
    struct trace_span *span;

    trace_sampler_init(&s, TRACE_SAMPLER_ALWAYS_ON, 0);
    trace_start(&s, NULL, &ctx);
    span = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, "GET /a\xff\xc0z", 1);
    cr_assert_str_eq(span->name, "GET /a??z");
    trace_span_free(span);
}

/*
 * One byte that is not ASCII, at every place of every short length: the
 * ASCII test reads words (the last one overlapping), so each length and
 * place is a different case. The byte must come back as '?' in names and
 * values alike, and an all-ASCII string as it went in.
 */
Test(span, one_non_ascii_byte_is_found_at_every_place_of_every_length)
{
    char in[48], want[48], name[48], got[TRACE_ATTR_STR_MAX + 1];

    for (size_t len = 0; len <= 40; len++) {
        for (size_t at = 0; at <= len; at++) { /* at == len: none */
            struct trace_span *span = new_span(TRACE_KIND_SERVER);
            for (size_t i = 0; i < len; i++) {
                in[i] = want[i] = (char)('a' + i % 26);
            }
            if (at < len) {
                in[at] = (char)0xff;
                want[at] = '?';
            }
            want[len] = '\0';
            trace_span_attr_strn(span, "k", in, len);
            cr_assert_str_eq(attr_text(span, "k", got), want, "length %zu, byte at %zu", len, at);
            trace_span_free(span);

            memcpy(name, in, len);
            name[len] = '\0';
            span = trace_span_new(&(struct trace_context){.trace_id = {1}, .span_id = {1}}, NULL,
                                  TRACE_KIND_SERVER, name, 1);
            cr_assert_str_eq(span->name, want, "name of length %zu, byte at %zu", len, at);
            trace_span_free(span);
        }
    }
}

Test(span, http_5xx_is_an_error_on_server_spans)
{
    struct trace_span *span = new_span(TRACE_KIND_SERVER);

    trace_span_set_http_status(span, 503);
    cr_assert_eq(span->status, TRACE_STATUS_ERROR);
    struct trace_value v;

    cr_assert_str_eq(attr_text(span, "error.type", (char[TRACE_ATTR_STR_MAX + 1]){0}), "503");
    cr_assert(trace_span_attr_get(span, "http.response.status_code", &v));
    cr_assert_eq(v.i, 503);
    trace_span_free(span);
}

Test(span, http_4xx_is_unset_on_server_spans_and_error_on_client_spans)
{
    struct trace_span *server = new_span(TRACE_KIND_SERVER);
    struct trace_span *client = new_span(TRACE_KIND_CLIENT);

    trace_span_set_http_status(server, 404);
    trace_span_set_http_status(client, 404);
    cr_assert_eq(server->status, TRACE_STATUS_UNSET);
    cr_assert_null(attr_text(server, "error.type", (char[TRACE_ATTR_STR_MAX + 1]){0}));
    cr_assert_eq(client->status, TRACE_STATUS_ERROR);
    trace_span_free(server);
    trace_span_free(client);
}

Test(span, http_2xx_leaves_status_unset_and_never_clears_an_error)
{
    struct trace_span *span = new_span(TRACE_KIND_CLIENT);

    trace_span_set_http_status(span, 200);
    cr_assert_eq(span->status, TRACE_STATUS_UNSET);
    trace_span_attr_str(span, "error.type", "timeout");
    trace_span_set_status(span, TRACE_STATUS_ERROR, "upstream timed out");
    trace_span_set_http_status(span, 204);
    cr_assert_eq(span->status, TRACE_STATUS_ERROR);
    trace_span_set_http_status(span, 502);
    cr_assert_str_eq(attr_text(span, "error.type", (char[TRACE_ATTR_STR_MAX + 1]){0}), "timeout",
                     "an error.type already set is kept");
    trace_span_free(span);
}

Test(span, end_before_start_is_clamped)
{
    struct trace_span *span = new_span(TRACE_KIND_INTERNAL);

    trace_span_end(span, 10);
    cr_assert_eq(span->end_unix_ns, span->start_unix_ns);
    trace_span_free(span);
}

/* ---- OTLP JSON ---- */

static json_t *
find_attr(json_t *attrs, const char *key)
{
    size_t i;
    json_t *a;

    json_array_foreach(attrs, i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "key")), key) == 0) {
            return json_object_get(a, "value");
        }
    }
    return NULL;
}

/* A request's SERVER span with one value of each type, and its CLIENT attempt span. */
static void
two_spans(struct trace_context *req, struct trace_span *spans[2])
{
    struct trace_sampler s;
    struct trace_context attempt;

    trace_sampler_init(&s, TRACE_SAMPLER_ALWAYS_ON, 0);
    trace_start(&s, NULL, req);
    trace_child_context(req, &attempt);
    spans[0] = trace_span_new(req, NULL, TRACE_KIND_SERVER, "POST /v1/embeddings",
                              1700000000123456789ull);
    trace_span_attr_str(spans[0], "http.request.method", "POST");
    trace_span_attr_int(spans[0], "batch.size", 42);
    trace_span_attr_double(spans[0], "ratio", 0.5);
    trace_span_attr_bool(spans[0], "cached", true);
    trace_span_end(spans[0], 1700000000223456789ull);
    spans[1] =
        trace_span_new(&attempt, req->span_id, TRACE_KIND_CLIENT, "POST", 1700000000130000000ull);
    trace_span_end(spans[1], 1700000000140000000ull);
}

Test(otlp_json, request_has_the_otlp_shape_and_value_encodings)
{
    struct telemetry_settings t;
    struct trace_context req;
    struct trace_span *spans[2];
    struct buf res, out;
    json_t *root, *rs, *ss, *js, *attrs, *v;
    json_error_t err;
    char hex[33];

    telemetry_settings_init(&t);
    two_spans(&req, spans);
    trace_span_set_http_status(spans[0], 500);

    buf_init(&res);
    buf_init(&out);
    trace_resource_json(&res, &t, "1.2.3", "host-a", 4242);
    trace_encode_otlp_json(&out, res.data, "1.2.3", spans, 2);
    root = json_loadb(out.data, out.len, 0, &err);
    cr_assert_not_null(root, "invalid JSON: %s", err.text);

    rs = json_array_get(json_object_get(root, "resourceSpans"), 0);
    attrs = json_object_get(json_object_get(rs, "resource"), "attributes");
    cr_assert_str_eq(
        json_string_value(json_object_get(find_attr(attrs, "service.name"), "stringValue")),
        "akosha");
    cr_assert_str_eq(
        json_string_value(json_object_get(find_attr(attrs, "process.pid"), "intValue")), "4242");
    ss = json_array_get(json_object_get(rs, "scopeSpans"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ss, "scope"), "name")),
                     "akosha");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ss, "scope"), "version")),
                     "1.2.3");

    js = json_array_get(json_object_get(ss, "spans"), 0);
    trace_hex(req.trace_id, TRACE_ID_SIZE, hex);
    cr_assert_str_eq(json_string_value(json_object_get(js, "traceId")), hex);
    trace_hex(req.span_id, TRACE_SPAN_ID_SIZE, hex);
    cr_assert_str_eq(json_string_value(json_object_get(js, "spanId")), hex);
    cr_assert_null(json_object_get(js, "parentSpanId"), "a root span has no parent");
    cr_assert_eq(json_integer_value(json_object_get(js, "kind")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(js, "startTimeUnixNano")),
                     "1700000000123456789");
    cr_assert_str_eq(json_string_value(json_object_get(js, "endTimeUnixNano")),
                     "1700000000223456789");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(js, "status"), "code")), 2);
    attrs = json_object_get(js, "attributes");
    cr_assert_str_eq(
        json_string_value(json_object_get(find_attr(attrs, "http.request.method"), "stringValue")),
        "POST");
    v = json_object_get(find_attr(attrs, "batch.size"), "intValue");
    cr_assert(json_is_string(v), "intValue is a string in OTLP JSON");
    cr_assert_str_eq(json_string_value(v), "42");
    v = json_object_get(find_attr(attrs, "ratio"), "doubleValue");
    cr_assert(json_is_real(v));
    cr_assert_float_eq(json_real_value(v), 0.5, 1e-12);
    cr_assert(json_is_true(json_object_get(find_attr(attrs, "cached"), "boolValue")));
    v = json_object_get(find_attr(attrs, "http.response.status_code"), "intValue");
    cr_assert_str_eq(json_string_value(v), "500");

    js = json_array_get(json_object_get(ss, "spans"), 1);
    trace_hex(req.span_id, TRACE_SPAN_ID_SIZE, hex);
    cr_assert_str_eq(json_string_value(json_object_get(js, "parentSpanId")), hex);
    cr_assert_eq(json_integer_value(json_object_get(js, "kind")), 3);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(js, "status"), "code")), 0);

    json_decref(root);
    buf_free(&res);
    buf_free(&out);
    trace_span_free(spans[0]);
    trace_span_free(spans[1]);
    telemetry_settings_free(&t);
}

Test(otlp_json, non_finite_doubles_and_dropped_counts_stay_valid_json)
{
    struct trace_span *span = new_span(TRACE_KIND_INTERNAL);
    struct buf out;
    json_t *root, *attrs;

    trace_span_attr_double(span, "nan", NAN);
    trace_span_attr_double(span, "inf", -INFINITY);
    for (int i = 0; i < TRACE_MAX_ATTRS; i++) {
        trace_span_attr_int(span, many_keys[i], i);
    }
    buf_init(&out);
    trace_span_json(&out, span);
    root = json_loadb(out.data, out.len, 0, NULL);
    cr_assert_not_null(root, "invalid JSON: %s", out.data);
    attrs = json_object_get(root, "attributes");
    cr_assert_str_eq(json_string_value(json_object_get(find_attr(attrs, "nan"), "doubleValue")),
                     "NaN");
    cr_assert_str_eq(json_string_value(json_object_get(find_attr(attrs, "inf"), "doubleValue")),
                     "-Infinity");
    cr_assert_eq(json_integer_value(json_object_get(root, "droppedAttributesCount")), 2);
    json_decref(root);
    buf_free(&out);
    trace_span_free(span);
}

/*
 * Strings are checked eight bytes at a time for what JSON must escape: put
 * each such byte at every position of a word (and of the tail) and read the
 * value back through a JSON parser.
 */
Test(otlp_json, every_special_byte_at_every_position_is_escaped)
{
    static const char *const specials[] = {"\"",           "\\",   "\n", "\x01", "\x1f", "\xc3\xa9",
                                           "\xe2\x82\xac", "\x7f", " ",  "~",    "\xff"};
    /* what the value reads back as: invalid UTF-8 becomes '?' (the default is the byte itself) */
    static const char *const expect[] = {[10] = "?"};

    for (size_t k = 0; k < sizeof(specials) / sizeof(specials[0]); k++) {
        for (size_t total = 0; total < 24; total++) {
            for (size_t pos = 0; pos <= total; pos++) {
                struct trace_span *span = new_span(TRACE_KIND_CLIENT);
                char value[64];
                struct buf out;
                json_t *root;
                const char *got;
                size_t len;

                /* total plain bytes around one special at pos: short strings and long ones */
                memset(value, 'a', pos);
                len = pos + (size_t)snprintf(value + pos, sizeof(value) - pos, "%s", specials[k]);
                memset(value + len, 'z', total - pos);
                len += total - pos;
                value[len] = '\0';
                trace_span_attr_str(span, "url.path", value);
                if (expect[k] != NULL) {
                    value[pos] = expect[k][0];
                }
                buf_init(&out);
                trace_span_json(&out, span);
                root = json_loadb(out.data, out.len, 0, NULL);
                cr_assert_not_null(root, "special %zu at %zu/%zu: invalid JSON: %s", k, pos, total,
                                   out.data);
                got = json_string_value(json_object_get(
                    find_attr(json_object_get(root, "attributes"), "url.path"), "stringValue"));
                cr_assert_str_eq(got, value, "special %zu at %zu/%zu", k, pos, total);
                json_decref(root);
                buf_free(&out);
                trace_span_free(span);
            }
        }
    }
}

Test(span, a_freed_span_is_reused_and_comes_back_clean)
{
    struct trace_span *a = new_span(TRACE_KIND_SERVER), *b;

    trace_span_attr_str(a, "akosha.upstream", "tei-a");
    trace_span_set_status(a, TRACE_STATUS_ERROR, "boom");
    trace_span_free(a);
    b = new_span(TRACE_KIND_CLIENT);
    cr_assert_eq(b, a, "the pool hands back the span just freed");
    cr_assert_eq(b->nattrs, 0);
    cr_assert_eq(b->status, TRACE_STATUS_UNSET);
    cr_assert_eq(b->status_message_len, 0);
    cr_assert_eq(b->kind, TRACE_KIND_CLIENT);
    cr_assert_null(attr_text(b, "akosha.upstream", (char[TRACE_ATTR_STR_MAX + 1]){0}));
    cr_assert_eq(b->attrs_len, 0);
    trace_span_free(b);
}

Test(span, the_pool_keeps_at_most_its_bound)
{
    enum { N = TRACE_SPAN_CACHE_MAX + TRACE_SPAN_POOL_MAX + 8 };
    static struct trace_span *spans[N];

    for (size_t i = 0; i < N; i++) {
        spans[i] = new_span(TRACE_KIND_INTERNAL);
    }
    cr_assert_eq(trace_span_pool_count(), 0, "every pooled span was taken");
    for (size_t i = 0; i < N; i++) {
        trace_span_free(spans[i]);
    }
    cr_assert_eq(trace_span_pool_count(), TRACE_SPAN_CACHE_MAX + TRACE_SPAN_POOL_MAX,
                 "this thread's own and the pool's are full, the rest went back to malloc");
    spans[0] = new_span(TRACE_KIND_INTERNAL);
    cr_assert_eq(trace_span_pool_count(), TRACE_SPAN_CACHE_MAX + TRACE_SPAN_POOL_MAX - 1);
    trace_span_free(spans[0]);
}

enum { THREAD_SPANS = TRACE_SPAN_CACHE_MAX / 2 };

static void *
make_and_free_spans(void *arg)
{
    struct trace_span *spans[THREAD_SPANS];
    size_t *kept = arg;

    for (size_t i = 0; i < THREAD_SPANS; i++) {
        spans[i] = new_span(TRACE_KIND_INTERNAL);
    }
    for (size_t i = 0; i < THREAD_SPANS; i++) {
        trace_span_free(spans[i]);
    }
    *kept = trace_span_pool_count();
    return NULL;
}

Test(span, a_threads_own_spans_go_to_the_pool_when_it_ends)
{
    pthread_t t;
    size_t kept = 0, before = trace_span_pool_count(), after;

    cr_assert_eq(before, 0, "a fresh process starts with nothing kept");
    cr_assert_eq(pthread_create(&t, NULL, make_and_free_spans, &kept), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(kept, THREAD_SPANS, "the thread kept its freed spans for itself");
    after = trace_span_pool_count();
    cr_assert_eq(after, THREAD_SPANS, "its end gave them to the shared pool, not to the leak checker");
    /* this thread takes them from the pool, and keeps them when freed */
    struct trace_span *spans[THREAD_SPANS];
    for (size_t i = 0; i < THREAD_SPANS; i++) {
        spans[i] = new_span(TRACE_KIND_INTERNAL);
    }
    cr_assert_eq(trace_span_pool_count(), 0);
    for (size_t i = 0; i < THREAD_SPANS; i++) {
        trace_span_free(spans[i]);
    }
    cr_assert_eq(trace_span_pool_count(), THREAD_SPANS);
}

Test(otlp_json, resource_takes_percent_decoded_env_attributes)
{
    struct telemetry_settings t;
    struct buf res;
    json_t *root, *attrs;

    telemetry_settings_init(&t);
    telemetry_settings_set(&t.resource_attributes,
                           "team=search%20infra, host.name=override ,service.name=ignored");
    buf_init(&res);
    trace_resource_json(&res, &t, "0.1", "host-a", 7);
    root = json_loadb(res.data, res.len, 0, NULL);
    cr_assert_not_null(root);
    attrs = json_object_get(root, "attributes");
    cr_assert_str_eq(json_string_value(json_object_get(find_attr(attrs, "team"), "stringValue")),
                     "search infra");
    cr_assert_str_eq(
        json_string_value(json_object_get(find_attr(attrs, "host.name"), "stringValue")),
        "override");
    cr_assert_str_eq(
        json_string_value(json_object_get(find_attr(attrs, "service.name"), "stringValue")),
        "akosha", "service.name comes from the resolved settings");
    cr_assert_str_eq(
        json_string_value(json_object_get(find_attr(attrs, "service.namespace"), "stringValue")),
        "akosha");
    cr_assert_str_eq(json_string_value(json_object_get(find_attr(attrs, "deployment.environment"),
                                                       "stringValue")),
                     "development");
    cr_assert_eq(json_array_size(attrs), 7);
    json_decref(root);
    buf_free(&res);
    telemetry_settings_free(&t);
}

/* ---- settings and environment ---- */

static const char *const *fake_env;

static const char *
fake_getenv(const char *name)
{
    for (size_t i = 0; fake_env[i] != NULL; i += 2) {
        if (strcmp(fake_env[i], name) == 0) {
            return fake_env[i + 1];
        }
    }
    return NULL;
}

/* Settings as the file would leave them, then the fake environment applied. */
static void
settings_with_env(struct telemetry_settings *t, const char *const *env)
{
    static const char *const none[] = {NULL};

    telemetry_settings_init(t);
    telemetry_settings_set(&t->otlp_endpoint, "http://file:4318");
    telemetry_settings_set(&t->service_name, "from-file");
    telemetry_settings_set(&t->environment, "staging");
    fake_env = env ? env : none;
    telemetry_apply_env(t, fake_getenv);
}

static void
assert_url(struct telemetry_settings *t, const char *expect)
{
    char *url = telemetry_traces_url(t);

    if (expect == NULL) {
        cr_assert_null(url);
    } else {
        cr_assert_not_null(url);
        cr_assert_str_eq(url, expect);
    }
    free(url);
}

Test(settings, defaults_follow_the_otel_batch_processor)
{
    struct telemetry_settings t;

    telemetry_settings_init(&t);
    cr_assert_str_eq(t.service_name, "akosha");
    cr_assert_str_eq(t.environment, "development");
    cr_assert_eq(t.max_queue_size, 2048);
    cr_assert_eq(t.max_export_batch, 512);
    cr_assert_eq(t.schedule_delay_ms, 5000);
    cr_assert_eq(t.export_timeout_ms, 30000);
    assert_url(&t, NULL);
    telemetry_settings_free(&t);
}

Test(settings, file_endpoint_gets_v1_traces_appended)
{
    struct telemetry_settings t;

    settings_with_env(&t, NULL);
    assert_url(&t, "http://file:4318/v1/traces");
    telemetry_settings_set(&t.otlp_endpoint, "http://file:4318/");
    assert_url(&t, "http://file:4318/v1/traces");
    telemetry_settings_free(&t);
}

Test(settings, endpoint_precedence_specific_over_general_over_prototype_over_file)
{
    struct telemetry_settings t;
    const char *proto[] = {"OTLP_ENDPOINT", "http://proto:4318", NULL};
    const char *general[] = {"OTLP_ENDPOINT", "http://proto:4318", "OTEL_EXPORTER_OTLP_ENDPOINT",
                             "http://general:4318", NULL};
    const char *specific[] = {"OTLP_ENDPOINT",
                              "http://proto:4318",
                              "OTEL_EXPORTER_OTLP_ENDPOINT",
                              "http://general:4318",
                              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                              "http://specific:4318/custom/path",
                              NULL};

    settings_with_env(&t, proto);
    assert_url(&t, "http://proto:4318/v1/traces");
    telemetry_settings_free(&t);
    settings_with_env(&t, general);
    assert_url(&t, "http://general:4318/v1/traces");
    telemetry_settings_free(&t);
    settings_with_env(&t, specific);
    assert_url(&t, "http://specific:4318/custom/path");
    telemetry_settings_free(&t);
}

Test(settings, empty_variables_count_as_unset)
{
    struct telemetry_settings t;
    const char *env[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "", "OTEL_SERVICE_NAME", "", NULL};

    settings_with_env(&t, env);
    assert_url(&t, "http://file:4318/v1/traces");
    cr_assert_str_eq(t.service_name, "from-file");
    telemetry_settings_free(&t);
}

Test(settings, service_name_and_environment_precedence)
{
    struct telemetry_settings t;
    const char *res_only[] = {"OTEL_RESOURCE_ATTRIBUTES",
                              "service.name=res-svc,deployment.environment=res-env", "ENVIRONMENT",
                              "proto-env", NULL};
    const char *both[] = {"OTEL_RESOURCE_ATTRIBUTES",
                          "service.name=res-svc",
                          "OTEL_SERVICE_NAME",
                          "otel-svc",
                          "ENVIRONMENT",
                          "proto-env",
                          NULL};

    settings_with_env(&t, res_only);
    cr_assert_str_eq(t.service_name, "res-svc");
    cr_assert_str_eq(t.environment, "res-env");
    telemetry_settings_free(&t);
    settings_with_env(&t, both);
    cr_assert_str_eq(t.service_name, "otel-svc");
    cr_assert_str_eq(t.environment, "proto-env");
    telemetry_settings_free(&t);
}

Test(settings, malformed_resource_attributes_are_discarded_whole)
{
    struct telemetry_settings t;
    const char *env[] = {"OTEL_RESOURCE_ATTRIBUTES", "service.name=res-svc,broken", NULL};

    settings_with_env(&t, env);
    cr_assert_str_eq(t.service_name, "from-file");
    cr_assert_str_eq(t.resource_attributes, "");
    telemetry_settings_free(&t);
}

Test(settings, default_sample_rate_depends_on_environment)
{
    struct telemetry_settings t;
    struct trace_sampler s;
    const char *dev[] = {"ENVIRONMENT", "development", NULL};

    settings_with_env(&t, NULL);
    telemetry_sampler(&t, &s);
    cr_assert_eq(s.kind, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO);
    cr_assert_float_eq(s.ratio, 0.1, 1e-12);
    telemetry_settings_free(&t);
    settings_with_env(&t, dev);
    telemetry_sampler(&t, &s);
    cr_assert_float_eq(s.ratio, 1.0, 1e-12);
    t.sample_rate = 0.3;
    telemetry_sampler(&t, &s);
    cr_assert_float_eq(s.ratio, 0.3, 1e-12, "the file's sample_rate wins over the default");
    telemetry_settings_free(&t);
}

Test(settings, otel_traces_sampler_and_arg_win_over_the_file)
{
    struct telemetry_settings t;
    struct trace_sampler s;
    const char *env[] = {"OTEL_TRACES_SAMPLER", "traceidratio", "OTEL_TRACES_SAMPLER_ARG", "0.05",
                         NULL};
    const char *bad[] = {"OTEL_TRACES_SAMPLER", "xray", "OTEL_TRACES_SAMPLER_ARG", "2", NULL};

    settings_with_env(&t, env);
    t.sample_rate = 0.7;
    telemetry_sampler(&t, &s);
    cr_assert_eq(s.kind, TRACE_SAMPLER_TRACEIDRATIO);
    cr_assert_float_eq(s.ratio, 0.05, 1e-12);
    telemetry_settings_free(&t);
    settings_with_env(&t, bad);
    telemetry_sampler(&t, &s);
    cr_assert_eq(s.kind, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO, "unknown sampler ignored");
    cr_assert_float_eq(s.ratio, 0.1, 1e-12, "out-of-range arg ignored");
    telemetry_settings_free(&t);
}

Test(settings, sdk_disabled_means_no_export_and_no_sampling)
{
    struct telemetry_settings t;
    struct trace_sampler s;
    const char *env[] = {"OTEL_SDK_DISABLED", "TRUE", "OTEL_TRACES_SAMPLER", "always_on", NULL};

    settings_with_env(&t, env);
    cr_assert(t.disabled);
    assert_url(&t, NULL);
    telemetry_sampler(&t, &s);
    cr_assert_eq(s.kind, TRACE_SAMPLER_ALWAYS_OFF);
    telemetry_settings_free(&t);
}

Test(settings, batch_processor_variables_override_and_bad_values_are_ignored)
{
    struct telemetry_settings t;
    const char *env[] = {"OTEL_BSP_MAX_QUEUE_SIZE",
                         "100",
                         "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                         "500",
                         "OTEL_BSP_SCHEDULE_DELAY",
                         "250",
                         "OTEL_BSP_EXPORT_TIMEOUT",
                         "12s",
                         NULL};

    settings_with_env(&t, env);
    cr_assert_eq(t.max_queue_size, 100);
    cr_assert_eq(t.max_export_batch, 100, "a batch never exceeds the queue");
    cr_assert_eq(t.schedule_delay_ms, 250);
    cr_assert_eq(t.export_timeout_ms, 30000, "\"12s\" is not milliseconds");
    telemetry_settings_free(&t);
}

Test(settings, headers_and_compression_specific_over_general)
{
    struct telemetry_settings t;
    const char *env[] = {"OTEL_EXPORTER_OTLP_HEADERS",
                         "api-key=general",
                         "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                         "api-key=specific",
                         "OTEL_EXPORTER_OTLP_COMPRESSION",
                         "gzip",
                         "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                         "2500",
                         NULL};
    const char *off[] = {"OTEL_EXPORTER_OTLP_COMPRESSION", "gzip",
                         "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none", NULL};

    settings_with_env(&t, env);
    cr_assert_str_eq(t.otlp_headers, "api-key=specific");
    cr_assert(t.gzip);
    cr_assert_eq(t.request_timeout_ms, 2500);
    telemetry_settings_free(&t);
    settings_with_env(&t, off);
    cr_assert_not(t.gzip);
    telemetry_settings_free(&t);
}

/* ---- k=v lists ---- */

struct kv_seen {
    char text[256];
};

static void
collect(void *arg, const char *key, const char *value)
{
    struct kv_seen *seen = arg;
    size_t len = strlen(seen->text);

    snprintf(seen->text + len, sizeof(seen->text) - len, "[%s|%s]", key, value);
}

Test(kv_list, members_are_trimmed_and_percent_decoded)
{
    struct kv_seen seen = {""};
    const char *cause = NULL;

    cr_assert_eq(trace_kv_list_parse(" a = 1 ,, b%3Dc=x%2cy ,c=50%,d=%4A", collect, &seen, &cause),
                 0);
    cr_assert_str_eq(seen.text, "[a|1][b=c|x,y][c|50%][d|J]");
}

Test(kv_list, a_malformed_member_discards_the_whole_list)
{
    struct kv_seen seen = {""};
    const char *cause = NULL;

    cr_assert_eq(trace_kv_list_parse("a=1,Bearer secret", collect, &seen, &cause), -1);
    cr_assert_str_eq(seen.text, "");
    cr_assert_not_null(cause);
    cr_assert_null(strstr(cause, "secret"), "the cause never quotes the text");
    cr_assert_eq(trace_kv_list_parse("=v", collect, &seen, &cause), -1);
}

/* ---- OTLP protobuf ---- */

/* The one field numbered num in a message (wire type checked), or fails the test. */
static struct pb_field
pb_get(const uint8_t *p, size_t len, uint32_t num, int wire)
{
    const uint8_t *end = p + len;
    struct pb_field f, found = {0};
    int rc, seen = 0;

    while ((rc = pb_next(&p, end, &f)) == 1) {
        if (f.num == num) {
            cr_assert_eq(f.wire, wire, "field %u: wire type %d, want %d", num, f.wire, wire);
            found = f;
            seen++;
        }
    }
    cr_assert_eq(rc, 0, "malformed message");
    cr_assert_eq(seen, 1, "field %u seen %d times", num, seen);
    return found;
}

static bool
pb_has(const uint8_t *p, size_t len, uint32_t num)
{
    const uint8_t *end = p + len;
    struct pb_field f;

    while (pb_next(&p, end, &f) == 1) {
        if (f.num == num) {
            return true;
        }
    }
    return false;
}

static bool
pb_str_eq(struct pb_field f, const char *s)
{
    return f.len == strlen(s) && memcmp(f.p, s, f.len) == 0;
}

/* The AnyValue of the span attribute key (Span.attributes = 9, KeyValue key 1, value 2). */
static struct pb_field
pb_attr(const uint8_t *span, size_t len, const char *key)
{
    const uint8_t *p = span, *end = span + len;
    struct pb_field f;

    while (pb_next(&p, end, &f) == 1) {
        if (f.num == 9 && pb_str_eq(pb_get(f.p, f.len, 1, 2), key)) {
            return pb_get(f.p, f.len, 2, 2);
        }
    }
    cr_assert_fail("attribute %s missing", key);
    return f;
}

/* The same two spans as the JSON test, read back field by field from the wire format. */
Test(otlp_proto, request_has_the_otlp_fields_and_value_encodings)
{
    struct telemetry_settings t;
    struct trace_context req;
    struct trace_span *spans[2];
    struct buf res, out;
    struct pb_field rs, ss, scope, sp, f, v;
    const uint8_t *p, *end;
    double d;
    int nspans = 0;

    telemetry_settings_init(&t);
    two_spans(&req, spans);
    trace_span_attr_int(spans[0], "negative", -5);
    trace_span_attr_str(spans[0], "text", "caf\xc3\xa9 \"q\"");
    trace_span_set_status(spans[0], TRACE_STATUS_ERROR, "upstream said no");

    buf_init(&res);
    buf_init(&out);
    trace_resource_proto(&res, &t, "1.2.3", "host-a", 4242);
    trace_encode_otlp_proto(&out, &res, "1.2.3", spans, 2);
    cr_assert_eq(pb_count_spans(out.data, out.len), 2);

    /* ExportTraceServiceRequest.resource_spans 1 > ResourceSpans */
    rs = pb_get((const uint8_t *)out.data, out.len, 1, 2);
    f = pb_get(rs.p, rs.len, 1, 2); /* Resource */
    {
        bool name = false, pid = false;
        p = f.p;
        end = f.p + f.len;
        while (pb_next(&p, end, &v) == 1) {
            struct pb_field key = pb_get(v.p, v.len, 1, 2), any = pb_get(v.p, v.len, 2, 2);
            cr_assert_eq(v.num, 1);
            if (pb_str_eq(key, "service.name")) {
                name = pb_str_eq(pb_get(any.p, any.len, 1, 2), "akosha");
            }
            if (pb_str_eq(key, "process.pid")) {
                pid = pb_get(any.p, any.len, 3, 0).v == 4242;
            }
        }
        cr_assert(name && pid, "resource has service.name and process.pid");
    }
    ss = pb_get(rs.p, rs.len, 2, 2);
    scope = pb_get(ss.p, ss.len, 1, 2);
    cr_assert(pb_str_eq(pb_get(scope.p, scope.len, 1, 2), "akosha"));
    cr_assert(pb_str_eq(pb_get(scope.p, scope.len, 2, 2), "1.2.3"));

    p = ss.p;
    end = ss.p + ss.len;
    while (pb_next(&p, end, &sp) == 1) {
        if (sp.num != 2) {
            continue;
        }
        if (nspans++ == 0) {
            f = pb_get(sp.p, sp.len, 1, 2);
            cr_assert(f.len == 16 && memcmp(f.p, req.trace_id, 16) == 0, "trace_id raw bytes");
            f = pb_get(sp.p, sp.len, 2, 2);
            cr_assert(f.len == 8 && memcmp(f.p, req.span_id, 8) == 0);
            cr_assert_not(pb_has(sp.p, sp.len, 4), "a root span has no parent");
            cr_assert(pb_str_eq(pb_get(sp.p, sp.len, 5, 2), "POST /v1/embeddings"));
            cr_assert_eq(pb_get(sp.p, sp.len, 6, 0).v, 2);
            cr_assert_eq(pb_get(sp.p, sp.len, 7, 1).v, 1700000000123456789ull);
            cr_assert_eq(pb_get(sp.p, sp.len, 8, 1).v, 1700000000223456789ull);
            v = pb_attr(sp.p, sp.len, "http.request.method");
            cr_assert(pb_str_eq(pb_get(v.p, v.len, 1, 2), "POST"));
            v = pb_attr(sp.p, sp.len, "batch.size");
            cr_assert_eq(pb_get(v.p, v.len, 3, 0).v, 42);
            v = pb_attr(sp.p, sp.len, "negative");
            cr_assert_eq((int64_t)pb_get(v.p, v.len, 3, 0).v, -5, "two's complement varint");
            v = pb_attr(sp.p, sp.len, "ratio");
            f = pb_get(v.p, v.len, 4, 1);
            memcpy(&d, &f.v, sizeof(d));
            cr_assert_float_eq(d, 0.5, 1e-12);
            v = pb_attr(sp.p, sp.len, "cached");
            cr_assert_eq(pb_get(v.p, v.len, 2, 0).v, 1);
            v = pb_attr(sp.p, sp.len, "text");
            cr_assert(pb_str_eq(pb_get(v.p, v.len, 1, 2), "caf\xc3\xa9 \"q\""),
                      "strings go unescaped");
            f = pb_get(sp.p, sp.len, 15, 2); /* Status */
            cr_assert_eq(pb_get(f.p, f.len, 3, 0).v, 2);
            cr_assert(pb_str_eq(pb_get(f.p, f.len, 2, 2), "upstream said no"));
        } else {
            f = pb_get(sp.p, sp.len, 4, 2);
            cr_assert(f.len == 8 && memcmp(f.p, req.span_id, 8) == 0, "parent is the request");
            cr_assert_eq(pb_get(sp.p, sp.len, 6, 0).v, 3);
            cr_assert_not(pb_has(sp.p, sp.len, 15), "an unset status is left out");
            cr_assert_not(pb_has(sp.p, sp.len, 9), "no attributes, no field");
        }
    }
    cr_assert_eq(nspans, 2);
    buf_free(&res);
    buf_free(&out);
    trace_span_free(spans[0]);
    trace_span_free(spans[1]);
    telemetry_settings_free(&t);
}

/* Lengths past one varint byte, the dropped count, and the smallest span's exact bytes. */
Test(otlp_proto, long_fields_and_dropped_counts_frame_correctly)
{
    static const uint8_t tid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    static const uint8_t sid[8] = {0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8};
    struct trace_context ctx = {.flags = 1};
    struct trace_span *span;
    struct buf out;
    struct pb_field f;
    const uint8_t *p;
    char big[200];
    static const char keys[20][8] = {"k0",  "k1",  "k2",  "k3",  "k4",  "k5",  "k6",
                                     "k7",  "k8",  "k9",  "k10", "k11", "k12", "k13",
                                     "k14", "k15", "k16", "k17", "k18", "k19"};

    memcpy(ctx.trace_id, tid, 16);
    memcpy(ctx.span_id, sid, 8);
    span = trace_span_new(&ctx, NULL, TRACE_KIND_INTERNAL, "n", 1);
    trace_span_end(span, 2);
    buf_init(&out);
    trace_span_proto(&out, span);
    {
        /* 0x12 len | 0a 10 <16> | 12 08 <8> | 2a 01 'n' | 30 01 | 39 <1 LE> | 41 <2 LE> */
        uint8_t want[2 + 18 + 10 + 3 + 2 + 9 + 9] = {0x12, 51, 0x0a, 16};
        size_t o = 4;
        memcpy(want + o, tid, 16);
        o += 16;
        want[o++] = 0x12;
        want[o++] = 8;
        memcpy(want + o, sid, 8);
        o += 8;
        memcpy(want + o, "\x2a\x01n\x30\x01\x39\x01\0\0\0\0\0\0\0\x41\x02\0\0\0\0\0\0\0", 23);
        o += 23;
        cr_assert_eq(o, sizeof(want));
        cr_assert_eq(out.len, sizeof(want));
        cr_assert_eq(memcmp(out.data, want, sizeof(want)), 0, "the smallest span, byte for byte");
    }
    trace_span_free(span);

    span = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, "long", 1);
    memset(big, 'x', sizeof(big));
    trace_span_attr_strn(span, "big", big, sizeof(big)); /* cut to TRACE_ATTR_STR_MAX - 1 */
    for (int i = 0; i < 20; i++) {
        trace_span_attr_int(span, keys[i], (int64_t)1 << (i * 3));
    }
    cr_assert_gt(span->dropped_attrs, 0);
    trace_span_end(span, 2);
    out.len = 0;
    trace_span_proto(&out, span);
    p = (const uint8_t *)out.data;
    cr_assert_eq(pb_next(&p, p + out.len, &f), 1);
    cr_assert_eq(f.num, 2);
    cr_assert_gt(f.len, 127, "a two-byte length");
    cr_assert_eq(p, (const uint8_t *)out.data + out.len, "the length covers the span exactly");
    cr_assert(pb_span_ok(f.p, f.len));
    cr_assert_eq(pb_get(f.p, f.len, 10, 0).v, span->dropped_attrs);
    {
        struct pb_field v = pb_attr(f.p, f.len, "big");
        cr_assert_eq(pb_get(v.p, v.len, 1, 2).len, TRACE_ATTR_STR_MAX - 1);
        v = pb_attr(f.p, f.len, "k14");
        cr_assert_eq(pb_get(v.p, v.len, 3, 0).v, (uint64_t)1 << 42);
    }
    trace_span_free(span);

    /*
     * A KeyValue past 127 bytes, and a span past 16383: lengths that outgrow
     * their room. A span attribute's key is copied into the span, so a huge
     * one finds no room and is dropped; an event's is a static key, so the
     * huge one goes there.
     */
    {
        static char long_key[120], huge_key[20000];
        struct pb_field kv, v;
        struct trace_event *ev;
        memset(long_key, 'k', sizeof(long_key) - 1);
        memset(huge_key, 'h', sizeof(huge_key) - 1);
        span = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, "grow", 1);
        trace_span_attr_strn(span, long_key, big, sizeof(big));
        trace_span_attr_bool(span, huge_key, true);
        cr_assert_eq(span->dropped_attrs, 1, "no room for a 20 KB key");
        cr_assert_not(trace_span_attr_get(span, huge_key, &(struct trace_value){0}));
        ev = trace_span_add_event(span, "huge", 1);
        trace_event_attr_int(ev, huge_key, 1);
        trace_span_attr_int(span, "after", 7);
        trace_span_end(span, 2);
        out.len = 0;
        trace_span_proto(&out, span);
        p = (const uint8_t *)out.data;
        cr_assert_eq(pb_next(&p, p + out.len, &f), 1);
        cr_assert_gt(f.len, 16383, "a three-byte length");
        cr_assert_eq(p, (const uint8_t *)out.data + out.len);
        cr_assert(pb_span_ok(f.p, f.len));
        v = pb_attr(f.p, f.len, long_key);
        cr_assert_eq(pb_get(v.p, v.len, 1, 2).len, TRACE_ATTR_STR_MAX - 1);
        cr_assert_eq(pb_get(f.p, f.len, 10, 0).v, 1, "the dropped key is counted");
        v = pb_attr(f.p, f.len, "after");
        cr_assert_eq(pb_get(v.p, v.len, 3, 0).v, 7, "fields after the moved ones intact");
        {
            /* the long KeyValue itself: a two-byte length */
            const uint8_t *q = f.p, *qend = f.p + f.len;
            while (pb_next(&q, qend, &kv) == 1) {
                if (kv.num == 9 && kv.len > 127 && kv.len < 1000) {
                    break;
                }
            }
            cr_assert(kv.num == 9 && kv.len > 127 && kv.len < 1000);
        }
        trace_span_free(span);
    }
    buf_free(&out);
}

Test(settings, protocol_from_the_environment)
{
    struct telemetry_settings t;
    const char *general[] = {"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", NULL};
    const char *specific[] = {"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json",
                              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf", NULL};
    const char *grpc[] = {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", NULL};
    const char *bogus[] = {"OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", NULL};

    cr_assert_eq(trace_protocol_parse("http/protobuf"), TELEMETRY_HTTP_PROTOBUF);
    cr_assert_eq(trace_protocol_parse("http/json"), TELEMETRY_HTTP_JSON);
    cr_assert_eq(trace_protocol_parse("grpc"), TELEMETRY_GRPC);
    cr_assert_eq(trace_protocol_parse("grpc/json"), -1);
    settings_with_env(&t, NULL);
    cr_assert_eq(t.protocol, TELEMETRY_HTTP_PROTOBUF, "protobuf by default");
    telemetry_settings_free(&t);
    settings_with_env(&t, general);
    cr_assert_eq(t.protocol, TELEMETRY_HTTP_JSON);
    telemetry_settings_free(&t);
    settings_with_env(&t, specific);
    cr_assert_eq(t.protocol, TELEMETRY_HTTP_PROTOBUF, "the traces variable wins");
    telemetry_settings_free(&t);
    settings_with_env(&t, grpc);
    cr_assert_eq(t.protocol, TELEMETRY_GRPC);
    assert_url(&t, "http://file:4318" TELEMETRY_GRPC_PATH);
    telemetry_settings_free(&t);
    settings_with_env(&t, bogus);
    cr_assert_eq(t.protocol, TELEMETRY_HTTP_PROTOBUF, "an unknown protocol is ignored");
    telemetry_settings_free(&t);
}

Test(settings, port_4317_without_a_protocol_selects_grpc)
{
    struct telemetry_settings t;
    const char *env_4317[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:pw@collector:4317/",
                              NULL};
    const char *explicit_http[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317",
                                   "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", NULL};

    settings_with_env(&t, env_4317);
    cr_assert_eq(t.protocol, TELEMETRY_GRPC);
    assert_url(&t, "https://user:pw@collector:4317" TELEMETRY_GRPC_PATH);
    telemetry_settings_free(&t);
    settings_with_env(&t, explicit_http);
    cr_assert_eq(t.protocol, TELEMETRY_HTTP_PROTOBUF, "a protocol given wins over the port");
    assert_url(&t, "http://collector:4317/v1/traces");
    telemetry_settings_free(&t);

    /* A protocol set from the file (>= 0 before the environment) is kept too. */
    telemetry_settings_init(&t);
    telemetry_settings_set(&t.otlp_endpoint, "http://collector:4317");
    t.protocol = TELEMETRY_HTTP_JSON;
    fake_env = explicit_http + 4;
    telemetry_apply_env(&t, fake_getenv);
    cr_assert_eq(t.protocol, TELEMETRY_HTTP_JSON);
    telemetry_settings_free(&t);
}

Test(settings, url_port_reads_the_authority)
{
    cr_assert_eq(telemetry_url_port("http://h:4317"), 4317);
    cr_assert_eq(telemetry_url_port("http://h:4317/v1/traces"), 4317);
    cr_assert_eq(telemetry_url_port("http://u:p@h:99/x:4317"), 99);
    cr_assert_eq(telemetry_url_port("http://[::1]:4317"), 4317);
    cr_assert_eq(telemetry_url_port("http://[::1]/"), 80);
    cr_assert_eq(telemetry_url_port("https://h"), 443);
    cr_assert_eq(telemetry_url_port("h:4317"), 4317);
    cr_assert_eq(telemetry_url_port("http://h:43x"), -1);
    cr_assert_eq(telemetry_url_port("http://h:999999"), -1);
}

/* ---- events ---- */

Test(span, events_beyond_the_limit_are_dropped_and_counted_in_json)
{
    struct trace_context ctx;
    struct trace_span *s;
    struct buf out;
    json_t *j, *evs, *ev;
    json_error_t err;

    struct trace_sampler on;

    trace_sampler_init(&on, TRACE_SAMPLER_ALWAYS_ON, 1.0);
    trace_start(&on, NULL, &ctx);
    s = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, "GET /x", 1000);
    for (int i = 0; i < TRACE_MAX_EVENTS + 2; i++) {
        struct trace_event *e = trace_span_add_event(s, "akosha.retry", 2000 + (uint64_t)i);
        if (i < TRACE_MAX_EVENTS) {
            cr_assert_not_null(e);
        } else {
            cr_assert_null(e, "the 17th event is dropped");
        }
        trace_event_attr_int(e, "akosha.retry.attempt", i);
        trace_event_attr_str(e, "akosha.retry.reason", "bad \"utf8\" \xff");
        trace_event_attr_str(e, "a", "1");
        trace_event_attr_str(e, "b", "2");
        trace_event_attr_str(e, "c", "dropped: beyond TRACE_EVENT_ATTRS");
    }
    trace_span_end(s, 5000);
    buf_init(&out);
    trace_span_json(&out, s);
    j = json_loads(out.data, 0, &err);
    cr_assert_not_null(j, "%s: %s", err.text, out.data);
    evs = json_object_get(j, "events");
    cr_assert_eq(json_array_size(evs), TRACE_MAX_EVENTS);
    cr_assert_eq(json_integer_value(json_object_get(j, "droppedEventsCount")), 2);
    ev = json_array_get(evs, 3);
    cr_assert_str_eq(json_string_value(json_object_get(ev, "name")), "akosha.retry");
    cr_assert_str_eq(json_string_value(json_object_get(ev, "timeUnixNano")), "2003");
    cr_assert_eq(json_array_size(json_object_get(ev, "attributes")), TRACE_EVENT_ATTRS);
    cr_assert_eq(json_integer_value(json_object_get(ev, "droppedAttributesCount")), 1);
    cr_assert_str_eq(
        json_string_value(json_object_get(
            json_object_get(json_array_get(json_object_get(ev, "attributes"), 0), "value"),
            "intValue")),
        "3");
    cr_assert_str_eq(
        json_string_value(json_object_get(
            json_object_get(json_array_get(json_object_get(ev, "attributes"), 1), "value"),
            "stringValue")),
        "bad \"utf8\" ?");
    json_decref(j);
    buf_free(&out);
    trace_span_free(s);

    /* A span from the pool starts without the last one's events. */
    s = trace_span_new(&ctx, NULL, TRACE_KIND_SERVER, "GET /y", 1000);
    cr_assert_null(s->events);
    trace_span_free(s);
}

Test(otlp_proto, events_are_span_field_11_with_time_name_and_attributes)
{
    struct trace_context ctx;
    struct trace_span *s;
    struct buf out;
    struct pb_field sp, ev, v;
    const uint8_t *p, *end;
    int nev = 0;

    struct trace_sampler on;

    trace_sampler_init(&on, TRACE_SAMPLER_ALWAYS_ON, 1.0);
    trace_start(&on, NULL, &ctx);
    s = trace_span_new(&ctx, NULL, TRACE_KIND_CLIENT, "POST", 1000);
    trace_event_attr_str(trace_span_add_event(s, "exception", 1500), "exception.message",
                         "HTTP 503");
    trace_span_add_event(s, "empty", 1600);
    trace_span_end(s, 2000);
    buf_init(&out);
    trace_span_proto(&out, s);
    sp = pb_get((const uint8_t *)out.data, out.len, 2, 2);
    p = sp.p;
    end = sp.p + sp.len;
    while (pb_next(&p, end, &ev) == 1) {
        if (ev.num != 11) {
            continue;
        }
        if (nev++ == 0) {
            cr_assert_eq(pb_get(ev.p, ev.len, 1, 1).v, 1500);
            cr_assert(pb_str_eq(pb_get(ev.p, ev.len, 2, 2), "exception"));
            v = pb_get(ev.p, ev.len, 3, 2); /* KeyValue */
            cr_assert(pb_str_eq(pb_get(v.p, v.len, 1, 2), "exception.message"));
            v = pb_get(v.p, v.len, 2, 2);
            cr_assert(pb_str_eq(pb_get(v.p, v.len, 1, 2), "HTTP 503"));
        } else {
            cr_assert(pb_str_eq(pb_get(ev.p, ev.len, 2, 2), "empty"));
            cr_assert_not(pb_has(ev.p, ev.len, 3));
        }
    }
    cr_assert_eq(nev, 2);
    cr_assert_not(pb_has(sp.p, sp.len, 12), "nothing dropped, no count");
    buf_free(&out);
    trace_span_free(s);
}
