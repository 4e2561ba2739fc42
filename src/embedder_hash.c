/*
 * embedder_hash.c - feature-hashing embedder (see embedder_hash.h).
 *
 * Features, each hashed with its own fixed seed and added with a sign taken
 * from the hash's low bit (so collisions cancel on average instead of piling
 * up, as in scikit-learn's HashingVectorizer):
 *   - every lowercased word, weight 1
 *   - every character 3-gram of "<word>", weight 1/2 (a UTF-8 sequence counts
 *     as one character, so non-Latin text gets real character n-grams)
 *   - every punctuation byte, weight 1/4
 *
 * Determinism: the weights are dyadic, so float accumulation is exact for any
 * realistic text and in a fixed order anyway. The norm is summed in double
 * from products v*v that are exact (24-bit mantissas), so a compiler that
 * contracts them into fused multiply-adds computes the very same sum.
 */
#include "embedder_hash.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum byte_class { BYTE_BLANK = 0, BYTE_WORD = 1, BYTE_PUNCT = 2 };

#define SEED_WORD 0x9e3779b97f4a7c15ULL
#define SEED_TRIGRAM 0xc2b2ae3d27d4eb4fULL
#define SEED_PUNCT 0x165667b19e3779f9ULL
#define SEED_ID 0xd6e8feb86659fd93ULL
#define SEED_BIGRAM 0xa0761d6478bd642fULL
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

#define WEIGHT_WORD 1.0f
#define WEIGHT_TRIGRAM 0.5f
#define WEIGHT_PUNCT 0.25f
#define WEIGHT_ID 1.0f
#define WEIGHT_BIGRAM 0.5f

/* Word boundary markers; '<' and '>' are punctuation, so never inside a word. */
#define CHAR_BOW ((uint32_t)'<')
#define CHAR_EOW ((uint32_t)'>')

static uint64_t
fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static enum byte_class
classify(unsigned char c)
{
    if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return BYTE_WORD;
    }
    if (c > 0x20 && c < 0x7f) {
        return BYTE_PUNCT;
    }
    return BYTE_BLANK;
}

static unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Multiply-shift range reduction avoids a division per feature. */
static inline void
add_feature(float *out, size_t dim, uint64_t h, float weight)
{
    size_t bucket = (size_t)(((h >> 32) * (uint64_t)dim) >> 32);

    out[bucket] += (h & 1) ? -weight : weight;
}

static inline uint64_t
trigram_hash(uint32_t a, uint32_t b, uint32_t c)
{
    uint64_t h = (uint64_t)a * 0x9ddfea08eb382d69ULL + b;

    h = h * 0xff51afd7ed558ccdULL + c;
    return fmix64(h ^ SEED_TRIGRAM);
}

/*
 * Scales out to unit length. When every feature cancelled out (possible only
 * for tiny dims) the vector would be zero, which callers must never see, so
 * one deterministic bucket is set instead.
 */
static void
normalise(float *out, size_t dim, uint64_t first_feature)
{
    double sum = 0.0;
    double inv;
    size_t i;

    for (i = 0; i < dim; i++) {
        double v = out[i];
        sum += v * v;
    }
    if (sum == 0.0) {
        out[(size_t)(((first_feature >> 32) * (uint64_t)dim) >> 32)] = 1.0f;
        return;
    }
    inv = 1.0 / sqrt(sum);
    for (i = 0; i < dim; i++) {
        out[i] = (float)((double)out[i] * inv);
    }
}

/* Length of the character starting at text[i]: a UTF-8 lead byte and its continuations. */
static size_t
char_len(const unsigned char *text, size_t i, size_t end)
{
    size_t n = 1;

    if (text[i] < 0xc0) {
        return 1;
    }
    while (n < 4 && i + n < end && text[i + n] >= 0x80 && text[i + n] < 0xc0) {
        n++;
    }
    return n;
}

/* Hashes the word text[start..end) and its 3-grams; returns the word's hash. */
static uint64_t
embed_word(const unsigned char *text, size_t start, size_t end, float *out, size_t dim)
{
    uint64_t fnv = FNV_OFFSET;
    uint32_t prev2 = 0, prev1 = CHAR_BOW;
    bool have_prev2 = false;
    size_t i = start;

    while (i < end) {
        size_t n = char_len(text, i, end);
        uint32_t code = 0;

        for (size_t k = 0; k < n; k++) {
            unsigned char c = lower(text[i + k]);
            fnv = (fnv ^ c) * FNV_PRIME;
            code |= (uint32_t)c << (8 * k);
        }
        if (have_prev2) {
            add_feature(out, dim, trigram_hash(prev2, prev1, code), WEIGHT_TRIGRAM);
        }
        prev2 = prev1;
        prev1 = code;
        have_prev2 = true;
        i += n;
    }
    add_feature(out, dim, trigram_hash(prev2, prev1, CHAR_EOW), WEIGHT_TRIGRAM);
    fnv = fmix64(fnv ^ SEED_WORD);
    add_feature(out, dim, fnv, WEIGHT_WORD);
    return fnv;
}

bool
embedder_hash_is_blank(const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;

    for (size_t i = 0; i < len; i++) {
        if (classify(p[i]) != BYTE_BLANK) {
            return false;
        }
    }
    return true;
}

int
embedder_hash_text(const char *text, size_t len, float *out, size_t dim)
{
    const unsigned char *p = (const unsigned char *)text;
    uint64_t first_feature = 0;
    bool any = false;
    size_t i = 0;

    if (dim == 0 || dim > EMBEDDER_HASH_MAX_DIM) {
        return -1;
    }
    memset(out, 0, dim * sizeof(*out));
    while (i < len) {
        enum byte_class cls = classify(p[i]);
        uint64_t h;

        if (cls == BYTE_BLANK) {
            i++;
            continue;
        }
        if (cls == BYTE_PUNCT) {
            h = fmix64(p[i] ^ SEED_PUNCT);
            add_feature(out, dim, h, WEIGHT_PUNCT);
            i++;
        } else {
            size_t start = i;
            while (i < len && classify(p[i]) == BYTE_WORD) {
                i++;
            }
            h = embed_word(p, start, i, out, dim);
        }
        if (!any) {
            first_feature = h;
            any = true;
        }
    }
    if (!any) {
        return -1;
    }
    normalise(out, dim, first_feature);
    return 0;
}

int
embedder_hash_tokens(const int64_t *ids, size_t n, float *out, size_t dim)
{
    uint64_t first_feature = 0;

    if (n == 0 || dim == 0 || dim > EMBEDDER_HASH_MAX_DIM) {
        return -1;
    }
    memset(out, 0, dim * sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        uint64_t h = fmix64((uint64_t)ids[i] ^ SEED_ID);

        add_feature(out, dim, h, WEIGHT_ID);
        if (i == 0) {
            first_feature = h;
        } else {
            uint64_t b = fmix64(fmix64((uint64_t)ids[i - 1] ^ SEED_BIGRAM) ^ (uint64_t)ids[i]);
            add_feature(out, dim, b, WEIGHT_BIGRAM);
        }
    }
    normalise(out, dim, first_feature);
    return 0;
}

const char *
embedder_hash_model_name(size_t dim, char *buf, size_t buflen)
{
    if (buflen > 0) {
        snprintf(buf, buflen, "akosha-hash-%zu", dim);
    }
    return buf;
}
