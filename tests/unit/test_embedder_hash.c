/*
 * test_embedder_hash.c - the fallback embedder is deterministic bit for bit,
 * unit length, similarity-preserving, and refuses texts without tokens.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "embedder_hash.h"

/* FNV-1a over the vector's bytes: pins every bit of the output, not just a sample. */
static uint64_t
vector_hash(const float *v, size_t dim)
{
    const unsigned char *p = (const unsigned char *)v;
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < dim * sizeof(float); i++) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    return h;
}

static uint32_t
float_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    return b;
}

static double
cosine(const float *a, const float *b, size_t dim)
{
    double dot = 0, na = 0, nb = 0;

    for (size_t i = 0; i < dim; i++) {
        dot += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    return dot / (sqrt(na) * sqrt(nb));
}

static double
norm(const float *v, size_t dim)
{
    double s = 0;
    for (size_t i = 0; i < dim; i++) {
        s += (double)v[i] * v[i];
    }
    return sqrt(s);
}

struct golden {
    const char *text;
    size_t dim;
    struct {
        size_t index;
        uint32_t bits;
    } nonzero[8]; /* the first eight non-zero entries, in index order */
    uint64_t hash;
};

/*
 * Recorded from the first build of EMBEDDER_HASH_VERSION 1. If these change,
 * every stored fallback vector changes: that needs a version bump, not a
 * silent update of the numbers.
 */
static const struct golden goldens[] = {
    {"the cat sat on the mat",
     384,
     {{14, 0x3e031c1a},
      {35, 0xbe831c1a},
      {63, 0xbf031c1a},
      {125, 0xbe031c1a},
      {149, 0x3e831c1a},
      {156, 0x3ec4aa26},
      {173, 0xbe831c1a},
      {176, 0x3e831c1a}},
     0x0edeee85258180c0ULL},
    {"Hello, World! 123",
     384,
     {{7, 0x3e4344e6},
      {36, 0x3e4344e6},
      {48, 0xbe4344e6},
      {98, 0x3e4344e6},
      {125, 0xbec344e6},
      {188, 0x3e4344e6},
      {234, 0x3e4344e6},
      {235, 0x3ec344e6}},
     0x0fbf1feaa4f3eba6ULL},
    {"\xc3\x9c"
     "bergr\xc3\xb6\xc3\x9f"
     "e caf\xc3\xa9",
     384,
     {{14, 0x3e5f7483},
      {52, 0xbe5f7483},
      {72, 0xbe5f7483},
      {131, 0xbe5f7483},
      {142, 0x3e5f7483},
      {147, 0xbe5f7483},
      {174, 0x3e5f7483},
      {194, 0x3e5f7483}},
     0xc62692593db91e13ULL},
    {"the cat sat on the mat",
     1536,
     {{59, 0x3e031c1a},
      {143, 0xbe831c1a},
      {253, 0xbf031c1a},
      {501, 0xbe031c1a},
      {597, 0x3e831c1a},
      {625, 0x3ec4aa26},
      {692, 0xbe831c1a},
      {707, 0x3e831c1a}},
     0x3dddeb6c38cbf590ULL},
    {"Hello, World! 123",
     1536,
     {{29, 0x3e4ac83f},
      {144, 0x3e4ac83f},
      {195, 0xbe4ac83f},
      {393, 0x3e4ac83f},
      {502, 0xbecac83f},
      {752, 0x3e4ac83f},
      {939, 0x3e4ac83f},
      {940, 0x3ecac83f}},
     0x05e2d2b3a3fbb731ULL},
    {"\xc3\x9c"
     "bergr\xc3\xb6\xc3\x9f"
     "e caf\xc3\xa9",
     1536,
     {{59, 0x3e5f7483},
      {208, 0xbe5f7483},
      {289, 0xbe5f7483},
      {524, 0xbe5f7483},
      {568, 0x3e5f7483},
      {590, 0xbe5f7483},
      {698, 0x3e5f7483},
      {778, 0x3e5f7483}},
     0xbd6ead3ca3e4eed3ULL},
};

Test(embedder_hash, text_vectors_match_recorded_bits)
{
    float v[1536];

    for (size_t g = 0; g < sizeof(goldens) / sizeof(goldens[0]); g++) {
        const struct golden *gold = &goldens[g];
        size_t k = 0;

        cr_assert_eq(embedder_hash_text(gold->text, strlen(gold->text), v, gold->dim), 0);
        for (size_t i = 0; i < gold->dim && k < 8; i++) {
            if (v[i] == 0.0f) {
                continue;
            }
            cr_expect_eq(i, gold->nonzero[k].index, "golden %zu entry %zu: index %zu", g, k, i);
            cr_expect_eq(float_bits(v[i]), gold->nonzero[k].bits, "golden %zu entry %zu", g, k);
            k++;
        }
        cr_expect_eq(k, 8);
        cr_expect_eq(vector_hash(v, gold->dim), gold->hash, "golden %zu: whole-vector hash", g);
    }
}

Test(embedder_hash, single_letter_has_word_and_trigram_features)
{
    float v[384];

    cr_assert_eq(embedder_hash_text("a", 1, v, 384), 0);
    /* word weight 1 and "<a>" weight 1/2 in two buckets: values 2/sqrt(5) and 1/sqrt(5). */
    cr_expect_eq(float_bits(v[309]), 0x3f64f92eu);
    cr_expect_eq(float_bits(v[298]), 0xbee4f92eu);
    cr_expect_eq(vector_hash(v, 384), 0x0f6cfb633be7c6e6ULL);
}

Test(embedder_hash, token_vectors_match_recorded_bits)
{
    static const int64_t ids[] = {101, 2023, 2003, 1037, 3231, 102};
    float v[384];

    cr_assert_eq(embedder_hash_tokens(ids, 6, v, 384), 0);
    cr_expect_eq(float_bits(v[4]), 0x3e3e26ebu);
    cr_expect_eq(float_bits(v[108]), 0xbebe26ebu);
    cr_expect_eq(float_bits(v[316]), 0xbe3e26ebu);
    cr_expect_eq(vector_hash(v, 384), 0xcc8da29137a1bdc8ULL);
}

Test(embedder_hash, same_text_gives_identical_vector_every_call)
{
    const char *text = "Deterministic: the same words, the same bits.";
    float a[768], b[768];

    cr_assert_eq(embedder_hash_text(text, strlen(text), a, 768), 0);
    memset(b, 0x5a, sizeof(b)); /* stale garbage in out must not leak into the result */
    cr_assert_eq(embedder_hash_text(text, strlen(text), b, 768), 0);
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0);
}

Test(embedder_hash, vectors_have_unit_norm)
{
    static const char *texts[] = {"x", "the cat sat on the mat", "!!!", "a b c d e f g h i j k",
                                  "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"};
    static const int64_t ids[] = {5, 5, 5, 9};
    float v[1024];

    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
        cr_assert_eq(embedder_hash_text(texts[t], strlen(texts[t]), v, 1024), 0);
        cr_expect_float_eq(norm(v, 1024), 1.0, 1e-6, "text %zu", t);
    }
    cr_assert_eq(embedder_hash_tokens(ids, 4, v, 1024), 0);
    cr_expect_float_eq(norm(v, 1024), 1.0, 1e-6);
}

Test(embedder_hash, texts_sharing_words_are_closer_than_unrelated_texts)
{
    static const char *anchor = "the cat sat on the mat";
    static const char *near = "a cat sat on a mat";
    static const char *far = "quarterly revenue grew 5%";
    static const char *morph = "cats sitting on mats";
    float va[384], vn[384], vf[384], vm[384];

    cr_assert_eq(embedder_hash_text(anchor, strlen(anchor), va, 384), 0);
    cr_assert_eq(embedder_hash_text(near, strlen(near), vn, 384), 0);
    cr_assert_eq(embedder_hash_text(far, strlen(far), vf, 384), 0);
    cr_assert_eq(embedder_hash_text(morph, strlen(morph), vm, 384), 0);
    cr_expect_gt(cosine(va, vn, 384), 0.5);
    cr_expect_gt(cosine(va, vn, 384), cosine(va, vf, 384) + 0.3);
    /* shared character 3-grams make inflected forms closer than unrelated text */
    cr_expect_gt(cosine(va, vm, 384), cosine(va, vf, 384));
}

Test(embedder_hash, case_of_ascii_letters_is_ignored)
{
    float a[256], b[256];

    cr_assert_eq(embedder_hash_text("Hello WORLD", 11, a, 256), 0);
    cr_assert_eq(embedder_hash_text("hello world", 11, b, 256), 0);
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0);
}

Test(embedder_hash, whitespace_between_tokens_does_not_matter)
{
    float a[256], b[256];

    cr_assert_eq(embedder_hash_text("red  fox", 8, a, 256), 0);
    cr_assert_eq(embedder_hash_text("\tred\r\nfox ", 10, b, 256), 0);
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0);
}

Test(embedder_hash, word_order_changes_nothing_but_word_split_does)
{
    float a[512], b[512], c[512];

    cr_assert_eq(embedder_hash_text("red fox", 7, a, 512), 0);
    cr_assert_eq(embedder_hash_text("fox red", 7, b, 512), 0);
    cr_assert_eq(embedder_hash_text("redfox", 6, c, 512), 0);
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0);
    cr_expect_neq(memcmp(a, c, sizeof(a)), 0);
}

Test(embedder_hash, empty_and_blank_texts_are_refused)
{
    float v[64];

    cr_expect_eq(embedder_hash_text("", 0, v, 64), -1);
    cr_expect_eq(embedder_hash_text(" \t\r\n \v\f", 7, v, 64), -1);
    cr_expect_eq(embedder_hash_text("\x01\x7f", 2, v, 64), -1);
    cr_expect(embedder_hash_is_blank("  \n", 3));
    cr_expect(embedder_hash_is_blank("", 0));
    cr_expect_not(embedder_hash_is_blank(" . ", 3));
    cr_expect_not(embedder_hash_is_blank("\xc2\xa0", 2));
}

Test(embedder_hash, punctuation_only_text_is_embedded)
{
    float v[64];

    cr_expect_eq(embedder_hash_text("?!", 2, v, 64), 0);
    cr_expect_float_eq(norm(v, 64), 1.0, 1e-6);
}

Test(embedder_hash, text_length_is_respected_without_nul)
{
    float a[128], b[128];

    cr_assert_eq(embedder_hash_text("alpha beta", 5, a, 128), 0);
    cr_assert_eq(embedder_hash_text("alpha", 5, b, 128), 0);
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0);
}

Test(embedder_hash, empty_token_list_is_refused)
{
    int64_t id = 1;
    float v[16];

    cr_expect_eq(embedder_hash_tokens(&id, 0, v, 16), -1);
}

Test(embedder_hash, token_order_matters_through_bigrams)
{
    static const int64_t ab[] = {7, 8}, ba[] = {8, 7};
    float a[256], b[256];

    cr_assert_eq(embedder_hash_tokens(ab, 2, a, 256), 0);
    cr_assert_eq(embedder_hash_tokens(ba, 2, b, 256), 0);
    cr_expect_neq(memcmp(a, b, sizeof(a)), 0);
    cr_expect_gt(cosine(a, b, 256), 0.5); /* same unigrams still dominate */
}

Test(embedder_hash, every_dimension_from_1_to_4096_gives_unit_vectors)
{
    static const char *text = "the quick brown fox jumps over the lazy dog";
    float *v = malloc((EMBEDDER_HASH_MAX_DIM + 1) * sizeof(float));

    cr_assert_not_null(v);
    for (size_t dim = 1; dim <= EMBEDDER_HASH_MAX_DIM; dim++) {
        v[dim] = 12345.0f; /* sentinel just past the end */
        cr_assert_eq(embedder_hash_text(text, strlen(text), v, dim), 0, "dim %zu", dim);
        cr_assert_float_eq(norm(v, dim), 1.0, 1e-5, "dim %zu", dim);
        cr_assert_eq(v[dim], 12345.0f, "dim %zu wrote past the end", dim);
    }
    cr_expect_eq(embedder_hash_text(text, strlen(text), v, 0), -1);
    free(v);
}

Test(embedder_hash, dimension_above_maximum_is_refused)
{
    float v[1];

    cr_expect_eq(embedder_hash_text("x", 1, v, EMBEDDER_HASH_MAX_DIM + 1), -1);
}

Test(embedder_hash, dimension_one_never_yields_zero_vector)
{
    /* With one bucket, signed features can cancel exactly; the result must still be unit length. */
    static const char *texts[] = {"a", "a b", "a b c", "x y", "one two three four", "!", "?."};
    float v[1];

    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
        cr_assert_eq(embedder_hash_text(texts[t], strlen(texts[t]), v, 1), 0);
        cr_expect(v[0] == 1.0f || v[0] == -1.0f, "text %zu gave %g", t, (double)v[0]);
    }
}

Test(embedder_hash, model_name_includes_dimension)
{
    char buf[32];

    cr_expect_str_eq(embedder_hash_model_name(384, buf, sizeof(buf)), "akosha-hash-384");
    cr_expect_str_eq(embedder_hash_model_name(1536, buf, sizeof(buf)), "akosha-hash-1536");
}
