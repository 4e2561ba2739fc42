/*
 * test_cache.c - the embedding cache's memory tier: key derivation, the
 * byte-bounded SIEVE store with injected clock values, and the value format.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "util.h"

/* ---- keys ----------------------------------------------------------------- */

struct param {
    const char *name, *value;
};

/* The key of text under model/revision/caller and params, passed in the given order. */
static struct cache_key
key_of(const char *model, const char *revision, const unsigned char *caller,
       const struct param *params, size_t nparams, const char *text)
{
    struct cache_keyer k;
    struct cache_key out;
    const char *cause = NULL;

    cache_keyer_begin(&k, model, revision, caller);
    for (size_t i = 0; i < nparams; i++) {
        cr_assert_eq(cache_keyer_param(&k, params[i].name, params[i].value,
                                       strlen(params[i].value), &cause),
                     0);
    }
    cache_keyer_end(&k);
    cache_key_text(&k, text, strlen(text), &out);
    return out;
}

static bool
same(struct cache_key a, struct cache_key b)
{
    return memcmp(a.b, b.b, CACHE_KEY_LEN) == 0;
}

static const unsigned char caller_a[32] = {1};
static const unsigned char caller_b[32] = {2};

Test(cache_key, is_deterministic_and_each_field_changes_it)
{
    struct param p[] = {{"dimensions", "256"}, {"encoding_format", "\"float\""}};
    struct cache_key base = key_of("m", "", NULL, p, 2, "hello");

    cr_assert(same(base, key_of("m", "", NULL, p, 2, "hello")));
    cr_assert_not(same(base, key_of("m2", "", NULL, p, 2, "hello")), "model");
    cr_assert_not(same(base, key_of("m", "r1", NULL, p, 2, "hello")), "revision");
    cr_assert_not(same(base, key_of("m", "", caller_a, p, 2, "hello")), "caller vs shared");
    cr_assert_not(same(key_of("m", "", caller_a, p, 2, "hello"),
                       key_of("m", "", caller_b, p, 2, "hello")),
                  "two callers");
    cr_assert_not(same(base, key_of("m", "", NULL, p, 1, "hello")), "a parameter dropped");
    cr_assert_not(same(base, key_of("m", "", NULL, p, 2, "hello!")), "input");

    struct param value_changed[] = {{"dimensions", "255"}, {"encoding_format", "\"float\""}};
    cr_assert_not(same(base, key_of("m", "", NULL, value_changed, 2, "hello")), "value");
    struct param name_changed[] = {{"dimension", "256"}, {"encoding_format", "\"float\""}};
    cr_assert_not(same(base, key_of("m", "", NULL, name_changed, 2, "hello")), "name");
}

Test(cache_key, parameter_order_does_not_matter)
{
    struct param ab[] = {{"dimensions", "256"}, {"encoding_format", "\"float\""}, {"x", "1"}};
    struct param ba[] = {{"x", "1"}, {"encoding_format", "\"float\""}, {"dimensions", "256"}};

    cr_assert(same(key_of("m", "r", NULL, ab, 3, "t"), key_of("m", "r", NULL, ba, 3, "t")));
}

Test(cache_key, framing_keeps_split_fields_apart)
{
    /* model/revision boundary */
    cr_assert_not(same(key_of("ab", "c", NULL, NULL, 0, "x"), key_of("a", "bc", NULL, NULL, 0, "x")));
    /* revision/input boundary is behind a digest, but check it anyway */
    cr_assert_not(same(key_of("m", "ab", NULL, NULL, 0, "c"), key_of("m", "a", NULL, NULL, 0, "bc")));
    /* parameter name/value boundary */
    struct param p1[] = {{"ab", "c"}};
    struct param p2[] = {{"a", "bc"}};
    cr_assert_not(same(key_of("m", "", NULL, p1, 1, "x"), key_of("m", "", NULL, p2, 1, "x")));
    /* one parameter vs two that concatenate to it */
    struct param one[] = {{"a", "bc"}};
    struct param two[] = {{"a", "b"}, {"c", ""}};
    cr_assert_not(same(key_of("m", "", NULL, one, 1, "x"), key_of("m", "", NULL, two, 2, "x")));
    /* an empty revision is not an absent one folded into the model */
    cr_assert_not(same(key_of("m", "", NULL, NULL, 0, "x"), key_of("", "m", NULL, NULL, 0, "x")));
    /* embedded NUL in the input counts */
    struct cache_keyer k;
    struct cache_key a, b;
    cache_keyer_begin(&k, "m", "", NULL);
    cache_keyer_end(&k);
    cache_key_text(&k, "a\0b", 3, &a);
    cache_key_text(&k, "a", 1, &b);
    cr_assert_not(same(a, b));
}

Test(cache_key, text_and_tokens_of_the_same_bytes_differ)
{
    struct cache_keyer k;
    struct cache_key text_key, tok_key, tok_key2, tok_other;
    int64_t ids[] = {1, 2, 3};
    int64_t ids_other[] = {1, 2, 4};
    unsigned char le[24] = {0};

    for (int i = 0; i < 3; i++) {
        le[8 * i] = (unsigned char)ids[i];
    }
    cache_keyer_begin(&k, "m", "", NULL);
    cache_keyer_end(&k);
    /* A text whose bytes are exactly the little-endian ids. */
    cache_key_text(&k, (const char *)le, sizeof(le), &text_key);
    cache_key_tokens(&k, ids, 3, &tok_key);
    cache_key_tokens(&k, ids, 3, &tok_key2);
    cache_key_tokens(&k, ids_other, 3, &tok_other);
    cr_assert_not(same(text_key, tok_key));
    cr_assert(same(tok_key, tok_key2));
    cr_assert_not(same(tok_key, tok_other));
}

Test(cache_key, too_many_parameters_are_refused)
{
    struct cache_keyer k;
    const char *cause = NULL;
    char name[16];

    cache_keyer_begin(&k, "m", "", NULL);
    for (int i = 0; i < CACHE_KEYER_MAX_PARAMS; i++) {
        snprintf(name, sizeof(name), "p%d", i);
        cr_assert_eq(cache_keyer_param(&k, name, "1", 1, &cause), 0);
    }
    cr_assert_eq(cache_keyer_param(&k, "one_more", "1", 1, &cause), -1);
    cr_assert_not_null(cause);
}

Test(cache_key, model_tag_is_stable)
{
    /* FNV-1a 32 of "a" is 0xe40c292c: the tag must not change between releases (Redis). */
    cr_assert_eq(cache_model_tag("a"), 0xe40c292cu);
    cr_assert_neq(cache_model_tag("bge-small"), cache_model_tag("bge-base"));
}

/* ---- store ---------------------------------------------------------------- */

#define DAY (24ull * 3600 * 1000)

static struct cache_key
nkey(uint32_t n)
{
    struct cache_key k;

    memset(&k, 0, sizeof(k));
    /* Spread like a digest would be; the first bytes feed the slot hash. */
    for (int i = 0; i < CACHE_KEY_LEN; i++) {
        k.b[i] = (unsigned char)((n * 2654435761u) >> (i % 4 * 8)) ^ (unsigned char)i;
    }
    memcpy(k.b + 28, &n, 4);
    return k;
}

static void
vec_fill(float *v, uint32_t dim, float seed)
{
    for (uint32_t i = 0; i < dim; i++) {
        v[i] = seed + (float)i;
    }
}

static void
put_ok(struct cache *c, uint32_t n, uint32_t tag, uint32_t dim, uint64_t now)
{
    float v[512];
    const char *cause = NULL;
    struct cache_key k = nkey(n);

    cr_assert_leq(dim, 512);
    vec_fill(v, dim, (float)n);
    cr_assert_eq(cache_put(c, &k, tag, v, dim, now, &cause), 0, "put %u: %s", n,
                 cause ? cause : "?");
}

Test(cache_store, hit_returns_the_stored_vector)
{
    struct cache *c = cache_new(1 << 20);
    struct cache_key k = nkey(7);
    float v[4] = {0.5f, -1.0f, 2.25f, 3.0f};
    const float *got = NULL;
    uint32_t dim = 0;
    const char *cause = NULL;
    struct cache_stats st;

    cr_assert_eq(cache_get(c, &k, 0, DAY, 30 * DAY, &got, &dim), CACHE_MISS);
    cr_assert_eq(cache_put(c, &k, 1, v, 4, 1000, &cause), 0);
    cr_assert_eq(cache_get(c, &k, 2000, DAY, 30 * DAY, &got, &dim), CACHE_HIT);
    cr_assert_eq(dim, 4);
    cr_assert_arr_eq(got, v, sizeof(v));
    cache_stats(c, &st);
    cr_assert_eq(st.entries, 1);
    cr_assert_eq(st.hits, 1);
    cr_assert_eq(st.misses, 1);
    cr_assert_eq(st.inserts, 1);
    cr_assert_gt(st.bytes, sizeof(v));
    cr_assert_leq(st.bytes, st.budget);
    cache_free(c);
}

Test(cache_store, ttl_and_stale_windows_with_an_injected_clock)
{
    struct cache *c = cache_new(1 << 20);
    struct cache_key k = nkey(1);
    float v[2] = {1, 2};
    const float *got;
    uint32_t dim;
    const char *cause;
    uint64_t t0 = 1000000;
    struct cache_stats st;

    cr_assert_eq(cache_put(c, &k, 0, v, 2, t0, &cause), 0);
    cr_assert_eq(cache_get(c, &k, t0, 100, 500, &got, &dim), CACHE_HIT, "age 0");
    cr_assert_eq(cache_get(c, &k, t0 + 100, 100, 500, &got, &dim), CACHE_HIT, "age == ttl");
    cr_assert_eq(cache_get(c, &k, t0 + 101, 100, 500, &got, &dim), CACHE_STALE, "just past ttl");
    cr_assert_eq(dim, 2);
    cr_assert_eq(cache_get(c, &k, t0 + 500, 100, 500, &got, &dim), CACHE_STALE, "age == stale");
    cr_assert_eq(cache_get(c, &k, t0 + 501, 100, 500, &got, &dim), CACHE_MISS, "past stale");
    cr_assert_eq(cache_get(c, &k, t0 - 50, 100, 500, &got, &dim), CACHE_HIT,
                 "a clock that went backwards is age 0");
    cache_stats(c, &st);
    cr_assert_eq(st.hits, 3);
    cr_assert_eq(st.stale_hits, 2);
    cr_assert_eq(st.misses, 1);
    /* get never frees: the entry is still there for a longer stale window. */
    cr_assert_eq(st.entries, 1);
    cache_free(c);
}

Test(cache_store, put_replaces_an_existing_entry)
{
    struct cache *c = cache_new(1 << 20);
    struct cache_key k = nkey(3);
    float v1[3] = {1, 2, 3}, v2[5] = {9, 8, 7, 6, 5};
    const float *got;
    uint32_t dim;
    const char *cause;
    struct cache_stats st;

    cr_assert_eq(cache_put(c, &k, 0, v1, 3, 0, &cause), 0);
    cr_assert_eq(cache_put(c, &k, 0, v2, 5, 5000, &cause), 0);
    cache_stats(c, &st);
    cr_assert_eq(st.entries, 1);
    cr_assert_eq(cache_get(c, &k, 5000, 10, 10, &got, &dim), CACHE_HIT,
                 "the replacement's creation time counts");
    cr_assert_eq(dim, 5);
    cr_assert_arr_eq(got, v2, sizeof(v2));
    cache_free(c);
}

Test(cache_store, bytes_never_exceed_the_budget)
{
    const size_t budget = 200 * 1024;
    struct cache *c = cache_new(budget);
    struct cache_stats st;
    uint32_t dims[] = {384, 1, 17, 256, 3, 512, 64};

    for (uint32_t n = 0; n < 5000; n++) {
        put_ok(c, n, 0, dims[n % 7], n);
        cache_stats(c, &st);
        cr_assert_leq(st.bytes, budget, "after put %u: %llu bytes", n,
                      (unsigned long long)st.bytes);
    }
    cr_assert_gt(st.evictions, 0);
    cr_assert_gt(st.entries, 100, "the budget holds a fair number of entries");
    /* Many tiny entries grow the table; it is counted too. */
    for (uint32_t n = 5000; n < 20000; n++) {
        put_ok(c, n, 0, 1, n);
        cache_stats(c, &st);
        cr_assert_leq(st.bytes, budget);
    }
    /* And a big entry after them still fits, evicting as needed. */
    put_ok(c, 99999, 0, 512, 0);
    cache_stats(c, &st);
    cr_assert_leq(st.bytes, budget);
    cache_free(c);
}

Test(cache_store, every_stored_entry_is_found_until_evicted)
{
    struct cache *c = cache_new(64 << 20);
    const float *got;
    uint32_t dim;
    struct cache_stats st;

    /* Enough to grow the table many times and exercise backward-shift deletion. */
    for (uint32_t n = 0; n < 20000; n++) {
        put_ok(c, n, n % 3, 4, 0);
    }
    cr_assert_eq(cache_purge(c, false, 1), 6667);
    for (uint32_t n = 0; n < 20000; n++) {
        struct cache_key k = nkey(n);
        enum cache_result r = cache_get(c, &k, 0, 1, 1, &got, &dim);
        if (n % 3 == 1) {
            cr_assert_eq(r, CACHE_MISS, "purged %u", n);
        } else {
            cr_assert_eq(r, CACHE_HIT, "kept %u", n);
            cr_assert_float_eq(got[0], (float)n, 0);
        }
    }
    cache_stats(c, &st);
    cr_assert_eq(st.entries, 20000 - 6667);
    cr_assert_eq(st.evictions, 0);
    cache_free(c);
}

Test(cache_store, hot_keys_survive_a_scan)
{
    /* Room for about 100 entries of 64 floats. */
    const size_t budget = 100 * (64 * 4 + 80) + 2048;
    struct cache *c = cache_new(budget);
    const float *got;
    uint32_t dim;
    struct cache_stats st;
    uint32_t hot_hits = 0;

    for (uint32_t h = 0; h < 10; h++) {
        put_ok(c, h, 0, 64, 0);
    }
    /* A scan of 5000 keys seen once, while the 10 hot keys are each read every 50 puts. */
    for (uint32_t n = 0; n < 5000; n++) {
        put_ok(c, 1000 + n, 0, 64, 0);
        if (n % 5 == 0) {
            struct cache_key hk = nkey((n / 5) % 10);
            hot_hits += cache_get(c, &hk, 0, 1, 1, &got, &dim) == CACHE_HIT;
        }
    }
    cache_stats(c, &st);
    cr_assert_gt(st.evictions, 4800);
    cr_assert_eq(hot_hits, 1000, "every hot read hit (got %u of 1000)", hot_hits);
    for (uint32_t h = 0; h < 10; h++) {
        struct cache_key hk = nkey(h);
        cr_assert_eq(cache_get(c, &hk, 0, 1, 1, &got, &dim), CACHE_HIT, "hot key %u", h);
    }
    cache_free(c);
}

Test(cache_store, purge_all_and_by_model)
{
    struct cache *c = cache_new(1 << 20);
    uint32_t tag_a = cache_model_tag("model-a"), tag_b = cache_model_tag("model-b");
    const float *got;
    uint32_t dim;
    struct cache_stats st;

    for (uint32_t n = 0; n < 30; n++) {
        put_ok(c, n, n < 10 ? tag_a : tag_b, 8, 0);
    }
    cr_assert_eq(cache_purge(c, false, tag_a), 10);
    cr_assert_eq(cache_purge(c, false, tag_a), 0);
    for (uint32_t n = 0; n < 30; n++) {
        struct cache_key k = nkey(n);
        cr_assert_eq(cache_get(c, &k, 0, 1, 1, &got, &dim), n < 10 ? CACHE_MISS : CACHE_HIT);
    }
    cr_assert_eq(cache_purge(c, true, 0), 20);
    cache_stats(c, &st);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(st.evictions, 0, "purges are not evictions");
    put_ok(c, 1, tag_a, 8, 0);
    cache_stats(c, &st);
    cr_assert_eq(st.entries, 1, "usable after a purge");
    cache_free(c);
}

Test(cache_store, an_entry_bigger_than_the_budget_is_refused)
{
    struct cache *c = cache_new(1024);
    float v[512] = {0};
    struct cache_key k = nkey(1);
    const float *got;
    uint32_t dim;
    const char *cause = NULL;
    struct cache_stats st;

    cr_assert_eq(cache_put(c, &k, 0, v, 512, 0, &cause), -1);
    cr_assert_not_null(cause);
    cr_assert_eq(cache_get(c, &k, 0, 1, 1, &got, &dim), CACHE_MISS);
    cr_assert_eq(cache_put(c, &k, 0, v, 0, 0, &cause), -1, "dim 0");
    cr_assert_eq(cache_put(c, &k, 0, v, 100, 0, &cause), 0, "a small one fits");
    cache_stats(c, &st);
    cr_assert_leq(st.bytes, 1024);
    cache_free(c);
}

Test(cache_store, budget_zero_is_off)
{
    struct cache *c = cache_new(0);
    float v[4] = {1, 2, 3, 4};
    struct cache_key k = nkey(1);
    const float *got;
    uint32_t dim;
    const char *cause = NULL;
    struct cache_stats st;

    cr_assert_eq(cache_put(c, &k, 0, v, 4, 0, &cause), 0);
    cr_assert_eq(cache_get(c, &k, 0, DAY, DAY, &got, &dim), CACHE_MISS);
    cache_stats(c, &st);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(st.bytes, 0);
    cr_assert_eq(st.inserts, 0);
    cr_assert_eq(cache_purge(c, true, 0), 0);
    cache_free(c);
}

/* ---- value encoding ------------------------------------------------------- */

Test(cache_value, round_trip_from_an_unaligned_buffer)
{
    float v[3] = {1.5f, -0.0f, 3.4028235e38f};
    unsigned char buf[1 + CACHE_VALUE_HEADER + 12];
    unsigned char *at = buf + 1; /* odd address */
    float out[8];
    uint32_t dim = 0;
    uint64_t created = 0;
    const char *cause = NULL;
    size_t n = cache_value_encode(v, 3, 0x0102030405060708ull, at, sizeof(buf) - 1);

    cr_assert_eq(n, CACHE_VALUE_HEADER + 12);
    cr_assert_eq(n, cache_value_size(3));
    cr_assert_arr_eq(at, "AKCV\x01\0\0\0\x03\0\0\0\x08\x07\x06\x05\x04\x03\x02\x01", 20);
    /* 1.5f is 0x3fc00000, little-endian. */
    cr_assert_arr_eq(at + 20, "\x00\x00\xc0\x3f", 4);
    cr_assert_eq(cache_value_decode(at, n, out, 8, &dim, &created, &cause), 0, "%s", cause);
    cr_assert_eq(dim, 3);
    cr_assert_eq(created, 0x0102030405060708ull);
    cr_assert_arr_eq(out, v, sizeof(v));
    cr_assert_eq(cache_value_encode(v, 3, 0, at, n - 1), 0, "too small a buffer");
}

static void
expect_refused(const unsigned char *in, size_t len, uint32_t cap, const char *want)
{
    float out[8];
    uint32_t dim = 77;
    uint64_t created = 77;
    const char *cause = NULL;

    cr_assert_eq(cache_value_decode(in, len, out, cap, &dim, &created, &cause), -1, "%s", want);
    cr_assert_not_null(cause);
    cr_assert_not_null(strstr(cause, want), "cause '%s' lacks '%s'", cause, want);
    cr_assert_eq(dim, 77, "outputs untouched on error");
}

Test(cache_value, every_bad_value_is_refused_with_a_cause)
{
    float v[4] = {1, 2, 3, 4};
    unsigned char good[CACHE_VALUE_HEADER + 16 + 4];
    unsigned char bad[sizeof(good)];
    size_t n = cache_value_encode(v, 4, 42, good, sizeof(good));

    cr_assert_eq(n, CACHE_VALUE_HEADER + 16);
    expect_refused(good, 0, 8, "shorter than its header");
    expect_refused(good, CACHE_VALUE_HEADER - 1, 8, "shorter than its header");
    memcpy(bad, good, n);
    bad[0] = 'X';
    expect_refused(bad, n, 8, "magic");
    memcpy(bad, good, n);
    bad[4] = 2;
    expect_refused(bad, n, 8, "version");
    memcpy(bad, good, n);
    bad[6] = 1;
    expect_refused(bad, n, 8, "reserved");
    expect_refused(good, n - 1, 8, "length");
    expect_refused(good, n - 4, 8, "length");
    memcpy(bad, good, n);
    memset(bad + n, 0, 4);
    expect_refused(bad, n + 4, 8, "length");
    memcpy(bad, good, n);
    bad[8] = 5; /* dim says 5, payload holds 4 */
    expect_refused(bad, n, 8, "length");
    memcpy(bad, good, n);
    memset(bad + 8, 0, 4);
    expect_refused(bad, n, 8, "dimension");
    memcpy(bad, good, n);
    bad[11] = 0x80; /* a huge dim */
    expect_refused(bad, n, 8, "dimension");
    expect_refused(good, n, 3, "larger than the buffer");
}

static int renders;

static void
render_count(const float *v, uint32_t dim, struct buf *out)
{
    renders++;
    buf_printf(out, "[%g..%u]", (double)v[0], dim);
}

Test(cache_store, a_hot_entry_keeps_its_rendering_within_the_budget)
{
    struct cache *c = cache_new(1 << 20);
    struct cache_key k = nkey(7), absent = nkey(8);
    struct cache_stats before, after;
    struct buf out;
    uint32_t dim = 0;

    put_ok(c, 7, 1, 16, 1000);
    buf_init(&out);
    renders = 0;
    cache_stats(c, &before);
    cr_assert_eq(cache_get_text(c, &k, 1001, 5000, render_count, true, &out, &dim), CACHE_HIT);
    cr_assert_str_eq(out.data, "[7..16]");
    cr_assert_eq(dim, 16);
    cr_assert_eq(cache_get_text(c, &k, 1002, 5000, render_count, true, &out, &dim), CACHE_HIT);
    cr_assert_str_eq(out.data, "[7..16][7..16]");
    cr_assert_eq(renders, 1, "the second hit copies the kept text");
    cr_assert_eq(cache_get_text(c, &k, 1003, 5000, render_count, false, &out, &dim), CACHE_HIT);
    cr_assert_eq(renders, 2, "another rendering (base64) is never served from the kept text");
    cache_stats(c, &after);
    cr_assert_gt(after.bytes, before.bytes, "the kept text is counted");
    cr_assert_eq(after.hits, before.hits, "counted by the caller, not here");
    cache_note_hits(c, 2);
    cache_stats(c, &after);
    cr_assert_eq(after.hits, before.hits + 2);
    cr_assert_eq(cache_get_text(c, &k, 9000, 5000, render_count, true, &out, &dim), CACHE_MISS,
                 "past ttl");
    cr_assert_eq(cache_get_text(c, &absent, 1001, 5000, render_count, true, &out, &dim),
                 CACHE_MISS);
    cache_stats(c, &after);
    cr_assert_eq(after.misses, before.misses, "misses are counted by the full lookup");
    buf_free(&out);
    cache_free(c);
}

Test(cache_store, a_full_budget_renders_without_keeping)
{
    struct cache *c = cache_new(1 << 20);
    struct cache_key k = nkey(3);
    struct cache_stats st;
    struct buf out;
    uint32_t dim;

    /* Room for the entry and its table, not for a text besides (8 bytes short of any malloc). */
    put_ok(c, 3, 1, 384, 1);
    cache_stats(c, &st);
    cache_free(c);
    c = cache_new(st.bytes + 8);
    put_ok(c, 3, 1, 384, 1);
    buf_init(&out);
    renders = 0;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cache_get_text(c, &k, 2, 10, render_count, true, &out, &dim), CACHE_HIT);
    }
    cr_assert_eq(renders, 3, "nothing kept: rendered every time");
    cache_stats(c, &st);
    cr_assert_leq(st.bytes, st.budget);
    buf_free(&out);
    cache_free(c);
}
