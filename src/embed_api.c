/*
 * embed_api.c - parse and render the four embedding APIs (see embed_api.h).
 *
 * Requests are parsed with jansson, then every text and token id is copied
 * into one allocation so the request owns its memory and the JSON tree dies
 * here. Responses are written straight into a struct buf with our own float
 * formatter: fallback answers can carry 2048 x 4096 floats, and a printf per
 * float would cost more than computing the embeddings.
 */
#define _GNU_SOURCE /* memrchr */
#include "embed_api.h"

#include <ctype.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedder_hash.h"
#include "log.h"
#include "util.h"

typedef unsigned __int128 u128;

#define U128(hi, lo) (((u128)(hi) << 64) | (u128)(lo))

/* ---------------------------------------------------------------- routing */

struct route {
    const char *path;
    enum embed_api api;
};

static const struct route routes[] = {
    {"/v1/embeddings", EMBED_API_OPENAI},
    {"/embeddings", EMBED_API_OPENAI},
    {"/embed", EMBED_API_TEI},
    {"/api/embed", EMBED_API_OLLAMA},
    {"/api/embeddings", EMBED_API_OLLAMA_LEGACY},
};

const char *
embed_mode_name(enum embed_mode mode)
{
    switch (mode) {
    case EMBED_MODE_REAL:
        return "real";
    case EMBED_MODE_LOCAL:
        return "local";
    case EMBED_MODE_FALLBACK:
        return "fallback";
    case EMBED_MODE_NONE:
        break;
    }
    return "none";
}

enum embed_api
embed_api_route(const char *path, size_t path_len)
{
    if (path == NULL) {
        return EMBED_API_NONE;
    }
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++) {
        if (strlen(routes[i].path) == path_len && memcmp(routes[i].path, path, path_len) == 0) {
            return routes[i].api;
        }
    }
    return EMBED_API_NONE;
}

const char *
embed_api_route_label(enum embed_api api, const char *path, size_t len)
{
    if (api == EMBED_API_NONE) {
        api = embed_api_route(path, len);
    }
    switch (api) {
    case EMBED_API_OPENAI:
        return "embeddings";
    case EMBED_API_TEI:
        return "embed";
    case EMBED_API_OLLAMA:
        return "api_embed";
    case EMBED_API_OLLAMA_LEGACY:
        return "api_embeddings";
    case EMBED_API_NONE:
        break;
    }
    return "other";
}

/* ---------------------------------------------------------- float output */

static const u128 pow5[] = {
    U128(0x0000000000000000ULL, 0x0000000000000001ULL), /* 5^0 */
    U128(0x0000000000000000ULL, 0x0000000000000005ULL), /* 5^1 */
    U128(0x0000000000000000ULL, 0x0000000000000019ULL), /* 5^2 */
    U128(0x0000000000000000ULL, 0x000000000000007dULL), /* 5^3 */
    U128(0x0000000000000000ULL, 0x0000000000000271ULL), /* 5^4 */
    U128(0x0000000000000000ULL, 0x0000000000000c35ULL), /* 5^5 */
    U128(0x0000000000000000ULL, 0x0000000000003d09ULL), /* 5^6 */
    U128(0x0000000000000000ULL, 0x000000000001312dULL), /* 5^7 */
    U128(0x0000000000000000ULL, 0x000000000005f5e1ULL), /* 5^8 */
    U128(0x0000000000000000ULL, 0x00000000001dcd65ULL), /* 5^9 */
    U128(0x0000000000000000ULL, 0x00000000009502f9ULL), /* 5^10 */
    U128(0x0000000000000000ULL, 0x0000000002e90eddULL), /* 5^11 */
    U128(0x0000000000000000ULL, 0x000000000e8d4a51ULL), /* 5^12 */
    U128(0x0000000000000000ULL, 0x0000000048c27395ULL), /* 5^13 */
    U128(0x0000000000000000ULL, 0x000000016bcc41e9ULL), /* 5^14 */
    U128(0x0000000000000000ULL, 0x000000071afd498dULL), /* 5^15 */
    U128(0x0000000000000000ULL, 0x0000002386f26fc1ULL), /* 5^16 */
    U128(0x0000000000000000ULL, 0x000000b1a2bc2ec5ULL), /* 5^17 */
    U128(0x0000000000000000ULL, 0x000003782dace9d9ULL), /* 5^18 */
    U128(0x0000000000000000ULL, 0x00001158e460913dULL), /* 5^19 */
    U128(0x0000000000000000ULL, 0x000056bc75e2d631ULL), /* 5^20 */
    U128(0x0000000000000000ULL, 0x0001b1ae4d6e2ef5ULL), /* 5^21 */
    U128(0x0000000000000000ULL, 0x000878678326eac9ULL), /* 5^22 */
    U128(0x0000000000000000ULL, 0x002a5a058fc295edULL), /* 5^23 */
    U128(0x0000000000000000ULL, 0x00d3c21bcecceda1ULL), /* 5^24 */
    U128(0x0000000000000000ULL, 0x0422ca8b0a00a425ULL), /* 5^25 */
    U128(0x0000000000000000ULL, 0x14adf4b7320334b9ULL), /* 5^26 */
    U128(0x0000000000000000ULL, 0x6765c793fa10079dULL), /* 5^27 */
    U128(0x0000000000000002ULL, 0x04fce5e3e2502611ULL), /* 5^28 */
    U128(0x000000000000000aULL, 0x18f07d736b90be55ULL), /* 5^29 */
    U128(0x0000000000000032ULL, 0x7cb2734119d3b7a9ULL), /* 5^30 */
    U128(0x00000000000000fcULL, 0x6f7c40458122964dULL), /* 5^31 */
    U128(0x00000000000004eeULL, 0x2d6d415b85acef81ULL), /* 5^32 */
    U128(0x00000000000018a6ULL, 0xe32246c99c60ad85ULL), /* 5^33 */
    U128(0x0000000000007b42ULL, 0x6fab61f00de36399ULL), /* 5^34 */
    U128(0x000000000002684cULL, 0x2e58e9b04570f1fdULL), /* 5^35 */
    U128(0x00000000000c097cULL, 0xe7bc90715b34b9f1ULL), /* 5^36 */
    U128(0x00000000003c2f70ULL, 0x86aed236c807a1b5ULL), /* 5^37 */
    U128(0x00000000012ced32ULL, 0xa16a1b11e8262889ULL), /* 5^38 */
    U128(0x0000000005e0a1fdULL, 0x2712875988becaadULL), /* 5^39 */
    U128(0x000000001d6329f1ULL, 0xc35ca4bfabb9f561ULL), /* 5^40 */
    U128(0x0000000092efd1b8ULL, 0xd0cf37be5aa1cae5ULL), /* 5^41 */
    U128(0x00000002deaf189cULL, 0x140c16b7c528f679ULL), /* 5^42 */
    U128(0x0000000e596b7b0cULL, 0x643c7196d9ccd05dULL), /* 5^43 */
};

static const u128 pow10[] = {
    U128(0x0000000000000000ULL, 0x0000000000000001ULL),
    U128(0x0000000000000000ULL, 0x000000000000000aULL),
    U128(0x0000000000000000ULL, 0x0000000000000064ULL),
    U128(0x0000000000000000ULL, 0x00000000000003e8ULL),
    U128(0x0000000000000000ULL, 0x0000000000002710ULL),
    U128(0x0000000000000000ULL, 0x00000000000186a0ULL),
    U128(0x0000000000000000ULL, 0x00000000000f4240ULL),
    U128(0x0000000000000000ULL, 0x0000000000989680ULL),
    U128(0x0000000000000000ULL, 0x0000000005f5e100ULL),
    U128(0x0000000000000000ULL, 0x000000003b9aca00ULL),
    U128(0x0000000000000000ULL, 0x00000002540be400ULL),
    U128(0x0000000000000000ULL, 0x000000174876e800ULL),
    U128(0x0000000000000000ULL, 0x000000e8d4a51000ULL),
    U128(0x0000000000000000ULL, 0x000009184e72a000ULL),
    U128(0x0000000000000000ULL, 0x00005af3107a4000ULL),
    U128(0x0000000000000000ULL, 0x00038d7ea4c68000ULL),
    U128(0x0000000000000000ULL, 0x002386f26fc10000ULL),
    U128(0x0000000000000000ULL, 0x016345785d8a0000ULL),
    U128(0x0000000000000000ULL, 0x0de0b6b3a7640000ULL),
    U128(0x0000000000000000ULL, 0x8ac7230489e80000ULL),
    U128(0x0000000000000005ULL, 0x6bc75e2d63100000ULL),
    U128(0x0000000000000036ULL, 0x35c9adc5dea00000ULL),
    U128(0x000000000000021eULL, 0x19e0c9bab2400000ULL),
    U128(0x000000000000152dULL, 0x02c7e14af6800000ULL),
    U128(0x000000000000d3c2ULL, 0x1bcecceda1000000ULL),
    U128(0x0000000000084595ULL, 0x161401484a000000ULL),
    U128(0x000000000052b7d2ULL, 0xdcc80cd2e4000000ULL),
    U128(0x00000000033b2e3cULL, 0x9fd0803ce8000000ULL),
    U128(0x00000000204fce5eULL, 0x3e25026110000000ULL),
    U128(0x00000001431e0faeULL, 0x6d7217caa0000000ULL),
    U128(0x0000000c9f2c9cd0ULL, 0x4674edea40000000ULL),
    U128(0x0000007e37be2022ULL, 0xc0914b2680000000ULL),
    U128(0x000004ee2d6d415bULL, 0x85acef8100000000ULL),
    U128(0x0000314dc6448d93ULL, 0x38c15b0a00000000ULL),
    U128(0x0001ed09bead87c0ULL, 0x378d8e6400000000ULL),
    U128(0x0013426172c74d82ULL, 0x2b878fe800000000ULL),
    U128(0x00c097ce7bc90715ULL, 0xb34b9f1000000000ULL),
    U128(0x0785ee10d5da46d9ULL, 0x00f436a000000000ULL),
    U128(0x4b3b4ca85a86c47aULL, 0x098a224000000000ULL),
};

static int
bit_length(u128 v)
{
    uint64_t hi = (uint64_t)(v >> 64), lo = (uint64_t)v;

    if (hi != 0) {
        return 128 - __builtin_clzll(hi);
    }
    return lo != 0 ? 64 - __builtin_clzll(lo) : 0;
}

/* Number of decimal digits of v > 0. */
static int
decimal_digits(u128 v)
{
    int nd = (bit_length(v) * 1233) >> 12; /* about bits * log10(2) */

    if (nd < 1) {
        nd = 1;
    }
    while (nd < (int)ARRAY_SIZE(pow10) && v >= pow10[nd]) {
        nd++;
    }
    while (nd > 1 && v < pow10[nd - 1]) {
        nd--;
    }
    return nd;
}

/*
 * Lays out value = digits * 10^exp10 (digits has no trailing zero) the way
 * JSON readers and humans expect: plain decimals for moderate magnitudes,
 * exponent notation otherwise.
 */
static size_t
layout_decimal(uint64_t digits, int exp10, char *out)
{
    char tmp[24];
    int ndig = 0, point;
    char *p = out;

    do {
        tmp[ndig++] = (char)('0' + digits % 10);
        digits /= 10;
    } while (digits != 0);
    /* tmp holds the digits reversed */
    point = ndig + exp10; /* value = 0.DIGITS x 10^point */
    if (point > 0 && point <= 9) {
        for (int i = 0; i < point; i++) {
            *p++ = i < ndig ? tmp[ndig - 1 - i] : '0';
        }
        *p++ = '.';
        if (point >= ndig) {
            *p++ = '0';
        }
        for (int i = point; i < ndig; i++) {
            *p++ = tmp[ndig - 1 - i];
        }
    } else if (point <= 0 && point > -5) {
        *p++ = '0';
        *p++ = '.';
        for (int i = point; i < 0; i++) {
            *p++ = '0';
        }
        for (int i = 0; i < ndig; i++) {
            *p++ = tmp[ndig - 1 - i];
        }
    } else {
        int e = point - 1;
        *p++ = tmp[ndig - 1];
        if (ndig > 1) {
            *p++ = '.';
            for (int i = 1; i < ndig; i++) {
                *p++ = tmp[ndig - 1 - i];
            }
        }
        *p++ = 'e';
        if (e < 0) {
            *p++ = '-';
            e = -e;
        }
        if (e >= 10) {
            *p++ = (char)('0' + e / 10);
        }
        *p++ = (char)('0' + e % 10);
    }
    return (size_t)(p - out);
}

/*
 * Rare magnitudes (below 2^-18 or at least 2^126) where the exact integer
 * method would overflow 128 bits: try 1..9 significant digits through the C
 * library until one reads back exactly. Assumes the "C" numeric locale.
 */
static size_t
format_slow(float f, char *out)
{
    char tmp[48];
    uint64_t digits = 0;
    int ndig = 0, exp10;
    char *e;

    for (int precision = 1; precision <= 9; precision++) {
        snprintf(tmp, sizeof(tmp), "%.*e", precision - 1, (double)f);
        if (strtof(tmp, NULL) == f) {
            break;
        }
    }
    for (const char *s = tmp; *s != 'e'; s++) {
        if (*s >= '0' && *s <= '9') {
            digits = digits * 10 + (uint64_t)(*s - '0');
            ndig++;
        }
    }
    e = strchr(tmp, 'e');
    exp10 = (int)strtol(e + 1, NULL, 10) - (ndig - 1);
    while (digits % 10 == 0 && digits != 0) {
        digits /= 10;
        exp10++;
    }
    return layout_decimal(digits, exp10, out);
}

/*
 * Shortest round-trip digits, computed exactly: the float and the midpoints
 * to its neighbours become integers (scaled by 2^q, and for q < 0 by 5^-q so
 * the scale is a power of ten), then we look for the coarsest power of ten
 * with a multiple strictly inside the rounding interval (inclusive when the
 * mantissa is even, as round-half-even reads it back), and take the multiple
 * closest to the float.
 */
static size_t
format_float(float f, char *out, bool shift)
{
    uint32_t bits, frac, biased;
    uint64_t m, x, x_lo, x_hi;
    int e, q, scale, t, nd;
    bool inclusive;
    u128 X, LO, HI, P;
    uint64_t fl_x, fl_lo, fl_hi;
    bool rem_lo, rem_hi, sticky;
    unsigned dropped;
    int64_t n_lo, n_hi, n;
    char *p = out;

    memcpy(&bits, &f, sizeof(bits));
    if (bits >> 31) {
        *p++ = '-';
        f = -f;
    }
    biased = (bits >> 23) & 0xff;
    frac = bits & 0x7fffff;
    if (biased == 0 && frac == 0) {
        memcpy(p, "0.0", 3);
        return (size_t)(p + 3 - out);
    }
    e = (int)biased - 150;
    if (biased == 0 || e < -41 || e > 103) {
        return (size_t)(p - out) + format_slow(f, p);
    }
    m = frac | (1u << 23);
    q = e - 2;
    x = 4 * m;
    /* at a power of two the neighbour below is half as far away */
    x_lo = x - ((frac == 0 && biased > 1) ? 1 : 2);
    x_hi = x + 2;
    inclusive = (m & 1) == 0;
    if (q >= 0) {
        X = (u128)x << q;
        LO = (u128)x_lo << q;
        HI = (u128)x_hi << q;
        scale = 0;
    } else {
        X = (u128)x * pow5[-q];
        LO = (u128)x_lo * pow5[-q];
        HI = (u128)x_hi * pow5[-q];
        scale = q;
    }
    /* start at 9 significant digits, which always fit inside the interval for float32 */
    nd = decimal_digits(X);
    t = nd > 9 ? nd - 9 : 0;
    if (shift && q < 0 && t <= -q) {
        /*
         * The usual case (|f| < 2^24): X = x * 5^-q and 10^t = 2^t * 5^t, so
         * X / 10^t is x * 5^(-q-t) / 2^t exactly: a product and a shift
         * instead of four 128-bit divisions.
         */
        int k = -q - t;
        u128 xs = (u128)x * pow5[k], los = (u128)x_lo * pow5[k], his = (u128)x_hi * pow5[k];
        u128 mask = ((u128)1 << t) - 1;

        fl_x = (uint64_t)(xs >> t);
        fl_lo = (uint64_t)(los >> t);
        fl_hi = (uint64_t)(his >> t);
        rem_lo = (los & mask) != 0;
        rem_hi = (his & mask) != 0;
        if (t > 0) {
            /* X / 10^(t-1) = x * 5^(k+1) / 2^(t-1): ten digits, its last one dropped */
            u128 ys = (u128)x * pow5[k + 1];
            dropped = (unsigned)((uint64_t)(ys >> (t - 1)) % 10);
            sticky = (ys & (mask >> 1)) != 0;
        } else {
            dropped = 0;
            sticky = false;
        }
    } else {
        P = pow10[t];
        fl_x = (uint64_t)(X / P);
        fl_lo = (uint64_t)(LO / P);
        fl_hi = (uint64_t)(HI / P);
        rem_lo = LO % P != 0;
        rem_hi = HI % P != 0;
        if (t > 0) {
            u128 r = X % P;
            dropped = (unsigned)(r / pow10[t - 1]);
            sticky = r % pow10[t - 1] != 0;
        } else {
            dropped = 0;
            sticky = false;
        }
    }
    n_lo = (int64_t)fl_lo + ((inclusive && !rem_lo) ? 0 : 1);
    n_hi = (int64_t)fl_hi - ((!inclusive && !rem_hi) ? 1 : 0);
    for (;;) {
        uint64_t nfl_lo = fl_lo / 10, nfl_hi = fl_hi / 10;
        bool nrem_lo = rem_lo || fl_lo % 10 != 0;
        bool nrem_hi = rem_hi || fl_hi % 10 != 0;
        int64_t nn_lo = (int64_t)nfl_lo + ((inclusive && !nrem_lo) ? 0 : 1);
        int64_t nn_hi = (int64_t)nfl_hi - ((!inclusive && !nrem_hi) ? 1 : 0);

        if (nn_lo > nn_hi) {
            break;
        }
        fl_lo = nfl_lo;
        fl_hi = nfl_hi;
        rem_lo = nrem_lo;
        rem_hi = nrem_hi;
        n_lo = nn_lo;
        n_hi = nn_hi;
        sticky = sticky || dropped != 0;
        dropped = (unsigned)(fl_x % 10);
        fl_x /= 10;
        t++;
    }
    n = (int64_t)fl_x;
    if (dropped > 5 || (dropped == 5 && (sticky || (n & 1)))) {
        n++;
    }
    if (n < n_lo) {
        n = n_lo;
    } else if (n > n_hi) {
        n = n_hi;
    }
    t += scale;
    while (n % 10 == 0) {
        n /= 10;
        t++;
    }
    return (size_t)(p - out) + layout_decimal((uint64_t)n, t, p);
}

size_t
embed_format_float(float f, char *out)
{
    return format_float(f, out, true);
}

size_t
embed_format_float_reference(float f, char *out)
{
    return format_float(f, out, false);
}

static void
put_float_array(struct buf *b, const float *v, size_t dim)
{
    char *p;

    /*
     * A hashing embedder's vector holds a handful of distinct values (small
     * sums of feature weights over one norm), so a tiny cache of formatted
     * values per vector saves most of the exact shortest-decimal work.
     */
    struct {
        uint32_t bits;
        uint8_t len;
        char text[EMBED_FLOAT_MAX_CHARS];
    } cache[64];

    for (size_t i = 0; i < ARRAY_SIZE(cache); i++) {
        cache[i].len = 0;
    }
    buf_reserve(b, dim * (EMBED_FLOAT_MAX_CHARS + 1) + 2);
    p = b->data + b->len;
    *p++ = '[';
    for (size_t i = 0; i < dim; i++) {
        uint32_t bits;
        size_t slot;
        if (i > 0) {
            *p++ = ',';
        }
        memcpy(&bits, &v[i], sizeof(bits));
        slot = (bits ^ (bits >> 13) ^ (bits >> 23)) & (ARRAY_SIZE(cache) - 1);
        if (cache[slot].len == 0 || cache[slot].bits != bits) {
            cache[slot].bits = bits;
            cache[slot].len = (uint8_t)embed_format_float(v[i], cache[slot].text);
        }
        /* A fixed 16-byte copy compiles to two moves; buf_reserve left room for the tail. */
        memcpy(p, cache[slot].text, 16);
        if (cache[slot].len > 16) {
            memcpy(p + 16, cache[slot].text + 16, cache[slot].len - 16u);
        }
        p += cache[slot].len;
    }
    *p++ = ']';
    b->len = (size_t)(p - b->data);
    b->data[b->len] = '\0';
}

/* Base64 of the floats as little-endian float32, whatever the host byte order. */
static void
put_base64_floats(struct buf *b, const float *v, size_t dim)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t nbytes = dim * 4, i;
    unsigned char chunk[3];
    size_t have = 0;
    char *p;

    buf_reserve(b, (nbytes + 2) / 3 * 4 + 2);
    p = b->data + b->len;
    *p++ = '"';
    for (i = 0; i < nbytes; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i / 4], sizeof(bits));
        chunk[have++] = (unsigned char)(bits >> (8 * (i % 4)));
        if (have == 3) {
            *p++ = alphabet[chunk[0] >> 2];
            *p++ = alphabet[((chunk[0] & 3) << 4) | (chunk[1] >> 4)];
            *p++ = alphabet[((chunk[1] & 15) << 2) | (chunk[2] >> 6)];
            *p++ = alphabet[chunk[2] & 63];
            have = 0;
        }
    }
    if (have == 1) {
        *p++ = alphabet[chunk[0] >> 2];
        *p++ = alphabet[(chunk[0] & 3) << 4];
        *p++ = '=';
        *p++ = '=';
    } else if (have == 2) {
        *p++ = alphabet[chunk[0] >> 2];
        *p++ = alphabet[((chunk[0] & 3) << 4) | (chunk[1] >> 4)];
        *p++ = alphabet[(chunk[1] & 15) << 2];
        *p++ = '=';
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
    b->data[b->len] = '\0';
}

/* ---------------------------------------------------------------- parsing */

static const char *
input_field(enum embed_api api)
{
    switch (api) {
    case EMBED_API_TEI:
        return "inputs";
    case EMBED_API_OLLAMA_LEGACY:
        return "prompt";
    default:
        return "input";
    }
}

/* Token ids are vocabulary indices: non-negative and within a C int. */
static bool
valid_token(json_t *v)
{
    json_int_t id;

    if (!json_is_integer(v)) {
        return false;
    }
    id = json_integer_value(v);
    return id >= 0 && id <= INT32_MAX;
}

struct parse_ctx {
    char *err;
    size_t errlen;
    const char **param;
    const char *field;
};

static int __attribute__((format(printf, 3, 4)))
fail(struct parse_ctx *ctx, const char *param, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (ctx->errlen > 0) {
        vsnprintf(ctx->err, ctx->errlen, fmt, ap);
    }
    va_end(ap);
    *ctx->param = param;
    return -1;
}

static int
check_text(struct parse_ctx *ctx, json_t *v, size_t index, bool in_array)
{
    if (!embedder_hash_is_blank(json_string_value(v), json_string_length(v))) {
        return 0;
    }
    if (in_array) {
        return fail(ctx, ctx->field, "'%s[%zu]' is empty or whitespace-only", ctx->field, index);
    }
    return fail(ctx, ctx->field, "'%s' is empty or whitespace-only", ctx->field);
}

static int
check_token_list(struct parse_ctx *ctx, json_t *list, bool nested, size_t outer)
{
    size_t i;
    json_t *v;

    if (json_array_size(list) == 0) {
        return fail(ctx, ctx->field, "'%s[%zu]' is an empty token list", ctx->field, outer);
    }
    json_array_foreach(list, i, v)
    {
        if (valid_token(v)) {
            continue;
        }
        if (nested) {
            return fail(ctx, ctx->field,
                        "'%s[%zu][%zu]' is not a token id: token ids are integers between 0 "
                        "and 2147483647",
                        ctx->field, outer, i);
        }
        if (json_is_integer(v)) {
            return fail(ctx, ctx->field,
                        "'%s[%zu]' is not a token id: token ids are integers between 0 and "
                        "2147483647",
                        ctx->field, i);
        }
        return fail(ctx, ctx->field, "'%s' mixes token ids with other values (at index %zu)",
                    ctx->field, i);
    }
    return 0;
}

enum input_shape { SHAPE_STRING, SHAPE_STRINGS, SHAPE_TOKENS, SHAPE_TOKEN_LISTS };

/* Validates the input field and returns its shape through *shape. */
static int
check_input(struct parse_ctx *ctx, enum embed_api api, json_t *in, enum input_shape *shape)
{
    const char *f = ctx->field;
    bool tokens_ok = api == EMBED_API_OPENAI;
    const char *expect = tokens_ok ? "a string, an array of strings, an array of token ids or an "
                                     "array of arrays of token ids"
                         : api == EMBED_API_OLLAMA_LEGACY ? "a string"
                                                          : "a string or an array of strings";
    size_t i, n;
    json_t *v, *first;

    if (in == NULL || json_is_null(in)) {
        return fail(ctx, f, "'%s' is required", f);
    }
    if (json_is_string(in)) {
        *shape = SHAPE_STRING;
        return check_text(ctx, in, 0, false);
    }
    if (!json_is_array(in) || api == EMBED_API_OLLAMA_LEGACY) {
        return fail(ctx, f, "'%s' must be %s", f, expect);
    }
    n = json_array_size(in);
    if (n == 0) {
        return fail(ctx, f, "'%s' must not be an empty array", f);
    }
    first = json_array_get(in, 0);
    if (json_is_string(first)) {
        if (n > EMBED_MAX_INPUTS) {
            return fail(ctx, f, "'%s' has %zu items; at most %d are allowed", f, n,
                        EMBED_MAX_INPUTS);
        }
        json_array_foreach(in, i, v)
        {
            if (!json_is_string(v)) {
                return fail(ctx, f, "'%s' mixes strings with other values (at index %zu)", f, i);
            }
            if (check_text(ctx, v, i, true) != 0) {
                return -1;
            }
        }
        *shape = SHAPE_STRINGS;
        return 0;
    }
    if (tokens_ok && json_is_integer(first)) {
        *shape = SHAPE_TOKENS;
        return check_token_list(ctx, in, false, 0);
    }
    if (tokens_ok && json_is_array(first)) {
        if (n > EMBED_MAX_INPUTS) {
            return fail(ctx, f, "'%s' has %zu items; at most %d are allowed", f, n,
                        EMBED_MAX_INPUTS);
        }
        json_array_foreach(in, i, v)
        {
            if (!json_is_array(v)) {
                return fail(ctx, f, "'%s' mixes token lists with other values (at index %zu)", f,
                            i);
            }
            if (check_token_list(ctx, v, true, i) != 0) {
                return -1;
            }
        }
        *shape = SHAPE_TOKEN_LISTS;
        return 0;
    }
    return fail(ctx, f, "'%s' must be %s", f, expect);
}

static int
get_bool(struct parse_ctx *ctx, json_t *root, const char *key, bool *out)
{
    json_t *v = json_object_get(root, key);

    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        return fail(ctx, key, "'%s' must be true or false", key);
    }
    *out = json_is_true(v);
    return 0;
}

static int
parse_options(struct parse_ctx *ctx, enum embed_api api, json_t *root, struct embed_request *out)
{
    json_t *v;

    if (api != EMBED_API_TEI) {
        v = json_object_get(root, "model");
        if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
            return fail(ctx, "model", "'model' must be a string");
        }
        out->model = xstrdup(json_is_string(v) ? json_string_value(v) : "");
    } else {
        out->model = xstrdup("");
    }
    if (api == EMBED_API_OPENAI) {
        v = json_object_get(root, "encoding_format");
        if (v != NULL && !json_is_null(v)) {
            const char *s = json_is_string(v) ? json_string_value(v) : NULL;
            if (s != NULL && strcmp(s, "base64") == 0) {
                out->base64 = true;
            } else if (s == NULL || strcmp(s, "float") != 0) {
                return fail(ctx, "encoding_format",
                            "'encoding_format' must be \"float\" or \"base64\"");
            }
        }
    }
    if (api == EMBED_API_OPENAI || api == EMBED_API_OLLAMA) {
        v = json_object_get(root, "dimensions");
        if (v != NULL && !json_is_null(v)) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                json_integer_value(v) > EMBED_MAX_DIMENSIONS) {
                return fail(ctx, "dimensions", "'dimensions' must be an integer between 1 and %d",
                            EMBED_MAX_DIMENSIONS);
            }
            out->dimensions = (unsigned)json_integer_value(v);
        }
    }
    if (api == EMBED_API_TEI && get_bool(ctx, root, "normalize", &out->normalize) != 0) {
        return -1;
    }
    if ((api == EMBED_API_TEI || api == EMBED_API_OLLAMA) &&
        get_bool(ctx, root, "truncate", &out->truncate) != 0) {
        return -1;
    }
    return 0;
}

static void
copy_text(char **cursor, json_t *v, struct embed_input *in)
{
    size_t len = json_string_length(v);

    memcpy(*cursor, json_string_value(v), len);
    (*cursor)[len] = '\0';
    in->text = *cursor;
    in->len = len;
    *cursor += len + 1;
}

static void
copy_tokens(int64_t **cursor, json_t *list, struct embed_input *in)
{
    size_t i;
    json_t *v;

    in->tokens = *cursor;
    in->ntokens = json_array_size(list);
    json_array_foreach(list, i, v)
    {
        (*cursor)[i] = (int64_t)json_integer_value(v);
    }
    *cursor += in->ntokens;
}

/* Copies the validated input into one allocation: token ids first (aligned), then texts. */
static void
copy_inputs(struct embed_request *out, json_t *in, enum input_shape shape)
{
    size_t ntokens = 0, text_bytes = 0, i;
    json_t *v;
    int64_t *tok;
    char *text;

    switch (shape) {
    case SHAPE_STRING:
        out->ninputs = 1;
        text_bytes = json_string_length(in) + 1;
        break;
    case SHAPE_STRINGS:
        out->ninputs = json_array_size(in);
        json_array_foreach(in, i, v)
        {
            text_bytes += json_string_length(v) + 1;
        }
        break;
    case SHAPE_TOKENS:
        out->ninputs = 1;
        ntokens = json_array_size(in);
        break;
    case SHAPE_TOKEN_LISTS:
        out->ninputs = json_array_size(in);
        json_array_foreach(in, i, v)
        {
            ntokens += json_array_size(v);
        }
        break;
    }
    out->single = shape == SHAPE_STRING || shape == SHAPE_TOKENS;
    out->inputs = xcalloc(out->ninputs, sizeof(*out->inputs));
    out->storage = xmalloc(ntokens * sizeof(int64_t) + text_bytes);
    tok = (int64_t *)(void *)out->storage;
    text = out->storage + ntokens * sizeof(int64_t);
    switch (shape) {
    case SHAPE_STRING:
        copy_text(&text, in, &out->inputs[0]);
        break;
    case SHAPE_STRINGS:
        json_array_foreach(in, i, v)
        {
            copy_text(&text, v, &out->inputs[i]);
        }
        break;
    case SHAPE_TOKENS:
        copy_tokens(&tok, in, &out->inputs[0]);
        break;
    case SHAPE_TOKEN_LISTS:
        json_array_foreach(in, i, v)
        {
            copy_tokens(&tok, v, &out->inputs[i]);
        }
        break;
    }
}

static void emit_vector_params(enum embed_api api, json_t *root,
                               void (*fn)(void *, const char *, const char *, size_t), void *arg);

int
embed_request_parse(enum embed_api api, const char *body, size_t len, struct embed_request *out,
                    char *err, size_t errlen, const char **param)
{
    return embed_request_parse_keyed(api, body, len, out, err, errlen, param, NULL, NULL);
}

int
embed_request_parse_keyed(enum embed_api api, const char *body, size_t len,
                          struct embed_request *out, char *err, size_t errlen, const char **param,
                          void (*fn)(void *arg, const char *name, const char *json, size_t n),
                          void *arg)
{
    struct parse_ctx ctx = {err, errlen, param, input_field(api)};
    enum input_shape shape = SHAPE_STRING;
    json_error_t jerr;
    json_t *root, *in;

    memset(out, 0, sizeof(*out));
    out->api = api;
    out->normalize = true;
    *param = NULL;
    if (api == EMBED_API_NONE) {
        return fail(&ctx, NULL, "not an embedding route");
    }
    if (len == 0) {
        return fail(&ctx, NULL, "request body is empty; expected a JSON object");
    }
    root = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        if (json_error_code(&jerr) == json_error_numeric_overflow) {
            return fail(&ctx, NULL, "request body has a number out of range (line %d, column %d)",
                        jerr.line, jerr.column);
        }
        return fail(&ctx, NULL, "request body is not valid JSON: %s (line %d, column %d)",
                    jerr.text, jerr.line, jerr.column);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(&ctx, NULL, "request body must be a JSON object");
    }
    in = json_object_get(root, ctx.field);
    if (check_input(&ctx, api, in, &shape) != 0 || parse_options(&ctx, api, root, out) != 0) {
        json_decref(root);
        embed_request_free(out);
        return -1;
    }
    copy_inputs(out, in, shape);
    if (fn != NULL) {
        emit_vector_params(api, root, fn, arg);
    }
    json_decref(root);
    return 0;
}

void
embed_request_free(struct embed_request *r)
{
    free(r->model);
    free(r->inputs);
    free(r->storage);
    r->model = NULL;
    r->inputs = NULL;
    r->storage = NULL;
    r->ninputs = 0;
}

/* -------------------------------------------------------------- rendering */

static void
put_json_string_or_null(struct buf *b, const char *s)
{
    if (s == NULL) {
        buf_puts(b, "null");
    } else {
        buf_json_string(b, s, strlen(s));
    }
}

static char *
finish(struct buf *b, size_t *len_out)
{
    if (b->data == NULL) {
        buf_reserve(b, 0);
        b->data[0] = '\0';
    }
    if (len_out != NULL) {
        *len_out = b->len;
    }
    return b->data;
}

char *
embed_render_error(enum embed_api api, const char *message, const char *type, const char *param,
                   const char *code, size_t *len_out)
{
    struct buf b;

    buf_init(&b);
    if (message == NULL) {
        message = "";
    }
    switch (api) {
    case EMBED_API_TEI:
        buf_puts(&b, "{\"error\":");
        buf_json_string(&b, message, strlen(message));
        buf_puts(&b, ",\"error_type\":");
        put_json_string_or_null(&b, type);
        buf_putc(&b, '}');
        break;
    case EMBED_API_OLLAMA:
    case EMBED_API_OLLAMA_LEGACY:
        buf_puts(&b, "{\"error\":");
        buf_json_string(&b, message, strlen(message));
        buf_putc(&b, '}');
        break;
    case EMBED_API_OPENAI:
    case EMBED_API_NONE:
        buf_puts(&b, "{\"error\":{\"message\":");
        buf_json_string(&b, message, strlen(message));
        buf_puts(&b, ",\"type\":");
        put_json_string_or_null(&b, type);
        buf_puts(&b, ",\"param\":");
        put_json_string_or_null(&b, param);
        buf_puts(&b, ",\"code\":");
        put_json_string_or_null(&b, code);
        buf_puts(&b, "}}");
        break;
    }
    return finish(&b, len_out);
}

/* Usage as whitespace-separated words (the embedder's own notion of blank), or token ids. */
static size_t
count_usage(const struct embed_request *r)
{
    size_t total = 0;

    if (r->usage_tokens > 0 || r->usage_known) {
        return r->usage_tokens;
    }
    for (size_t i = 0; i < r->ninputs; i++) {
        const struct embed_input *in = &r->inputs[i];
        bool in_word = false;

        if (in->tokens != NULL) {
            total += in->ntokens;
            continue;
        }
        for (size_t k = 0; k < in->len; k++) {
            unsigned char c = (unsigned char)in->text[k];
            bool blank = c <= 0x20 || c == 0x7f;
            if (!blank && !in_word) {
                total++;
            }
            in_word = !blank;
        }
    }
    return total;
}

static const char *
answer_model(const struct embed_request *r, const char *model_name)
{
    return model_name != NULL ? model_name : (r->model != NULL ? r->model : "");
}

void
embed_render_open(const struct embed_request *r, const char *model_name, struct buf *b)
{
    const char *model = answer_model(r, model_name);

    switch (r->api) {
    case EMBED_API_TEI:
        buf_putc(b, '[');
        break;
    case EMBED_API_OLLAMA:
        buf_puts(b, "{\"model\":");
        buf_json_string(b, model, strlen(model));
        buf_puts(b, ",\"embeddings\":[");
        break;
    case EMBED_API_OLLAMA_LEGACY:
        buf_puts(b, "{\"embedding\":");
        break;
    case EMBED_API_OPENAI:
    case EMBED_API_NONE:
        buf_puts(b, "{\"object\":\"list\",\"data\":[");
        break;
    }
}

void
embed_render_float_array(const float *v, uint32_t dim, struct buf *b)
{
    put_float_array(b, v, dim);
}

void
embed_render_base64_floats(const float *v, uint32_t dim, struct buf *b)
{
    put_base64_floats(b, v, dim);
}

/* The vector as a JSON array: its text when given (floats only), else rendered. */
static void
vector_array(struct buf *b, const float *v, size_t dim, const char *text, size_t text_len)
{
    if (text != NULL) {
        buf_append(b, text, text_len);
    } else {
        put_float_array(b, v, dim);
    }
}

void
embed_render_vector_text(const struct embed_request *r, size_t index, const float *v, size_t dim,
                         const char *text, size_t text_len, struct buf *b)
{
    switch (r->api) {
    case EMBED_API_TEI:
    case EMBED_API_OLLAMA:
        if (index > 0) {
            buf_putc(b, ',');
        }
        vector_array(b, v, dim, text, text_len);
        break;
    case EMBED_API_OLLAMA_LEGACY:
        if (index == 0) { /* one prompt, one vector */
            vector_array(b, v, dim, text, text_len);
        }
        break;
    case EMBED_API_OPENAI:
    case EMBED_API_NONE:
        buf_printf(b,
                   "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", index > 0 ? "," : "",
                   index);
        if (text != NULL) {
            buf_append(b, text, text_len); /* rendered in the answer's encoding */
        } else if (r->base64) {
            put_base64_floats(b, v, dim);
        } else {
            put_float_array(b, v, dim);
        }
        buf_putc(b, '}');
        break;
    }
}

void
embed_render_vector(const struct embed_request *r, size_t index, const float *v, size_t dim,
                    struct buf *b)
{
    embed_render_vector_text(r, index, v, dim, NULL, 0, b);
}

void
embed_render_close(const struct embed_request *r, const char *model_name, struct buf *b)
{
    const char *model = answer_model(r, model_name);
    size_t usage;

    switch (r->api) {
    case EMBED_API_TEI:
        buf_putc(b, ']');
        break;
    case EMBED_API_OLLAMA:
        buf_printf(b, "],\"prompt_eval_count\":%zu}", count_usage(r));
        break;
    case EMBED_API_OLLAMA_LEGACY:
        if (r->ninputs == 0) {
            put_float_array(b, NULL, 0);
        }
        buf_putc(b, '}');
        break;
    case EMBED_API_OPENAI:
    case EMBED_API_NONE:
        usage = count_usage(r);
        buf_puts(b, "],\"model\":");
        buf_json_string(b, model, strlen(model));
        buf_printf(b, ",\"usage\":{\"prompt_tokens\":%zu,\"total_tokens\":%zu}}", usage, usage);
        break;
    }
}

char *
embed_render_response(const struct embed_request *r, const float *vectors, size_t dim,
                      const char *model_name, size_t *len_out)
{
    struct buf b;

    buf_init(&b);
    embed_render_open(r, model_name, &b);
    for (size_t i = 0; i < r->ninputs; i++) {
        embed_render_vector(r, i, vectors + i * dim, dim, &b);
    }
    embed_render_close(r, model_name, &b);
    return finish(&b, len_out);
}

/* --------------------------------------------------------------- sniffing */

static const char *
skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }
    return p;
}

/*
 * Finds the first object key equal to key and returns the position after its
 * ':' (NULL when not in these bytes). Walks every string properly, escapes
 * included, so a value like "model":"embedding" never matches.
 */
static const char *
find_key(const char *p, const char *end, const char *key)
{
    size_t keylen = strlen(key);

    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        const char *start;

        if (q == NULL) {
            return NULL;
        }
        start = ++q;
        while (q < end && *q != '"') {
            q += (*q == '\\') ? 2 : 1;
        }
        if (q >= end) {
            return NULL;
        }
        p = q + 1;
        if ((size_t)(q - start) == keylen && memcmp(start, key, keylen) == 0) {
            const char *c = skip_ws(p, end);
            if (c < end && *c == ':') {
                return c + 1;
            }
        }
    }
    return NULL;
}

/* Occurrences of c in p[0..n), sixteen bytes at a time: vectors run to tens of KB. */
static size_t
count_byte(const char *p, size_t n, unsigned char c)
{
    size_t count = 0;
#ifdef __SSE2__
    const __m128i pattern = _mm_set1_epi8((char)c), zero = _mm_setzero_si128();
    __m128i acc = zero; /* per-lane match counts, flushed before a lane can wrap */
    unsigned rounds = 0;

    for (; n >= 16; p += 16, n -= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        acc = _mm_sub_epi8(acc, _mm_cmpeq_epi8(v, pattern));
        if (++rounds == 255 || n < 32) {
            __m128i sums = _mm_sad_epu8(acc, zero);
            count += (size_t)_mm_cvtsi128_si32(sums) + (size_t)_mm_extract_epi16(sums, 4);
            acc = zero;
            rounds = 0;
        }
    }
#else
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7full, high = 0x8080808080808080ull;
    const uint64_t pattern = 0x0101010101010101ull * c;

    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w, x, nonzero;
        memcpy(&w, p, 8);
        x = w ^ pattern; /* zero bytes where p[i] == c */
        nonzero = (((x & low7) + low7) | x) & high;
        count += (size_t)((((~nonzero & high) >> 7) * 0x0101010101010101ull) >> 56);
    }
#endif
    for (; n > 0; p++, n--) {
        count += (unsigned char)*p == c;
    }
    return count;
}

/*
 * Where the first vector of an answer starts: its '[' (numbers) or '"'
 * (OpenAI base64). NULL while these bytes do not reach it yet; *bad when
 * they show the answer has none (an error body, say).
 */
static const char *
first_vector(enum embed_api api, const char *body, const char *end, bool *bad)
{
    const char *p = body;

    *bad = false;
    switch (api) {
    case EMBED_API_TEI:
    case EMBED_API_OLLAMA:
        if (api == EMBED_API_OLLAMA) {
            p = find_key(body, end, "embeddings");
            if (p == NULL) {
                return NULL;
            }
        }
        p = skip_ws(p, end);
        if (p < end && *p != '[') {
            *bad = true;
            return NULL;
        }
        p = skip_ws(p + (p < end), end);
        if (p < end && *p != '[') {
            *bad = true;
        }
        return p < end && *p == '[' ? p : NULL;
    case EMBED_API_OLLAMA_LEGACY:
    case EMBED_API_OPENAI:
        p = find_key(body, end, "embedding");
        if (p == NULL) {
            return NULL;
        }
        p = skip_ws(p, end);
        if (p < end && (*p == '[' || (*p == '"' && api == EMBED_API_OPENAI))) {
            return p;
        }
        *bad = p < end;
        return NULL;
    case EMBED_API_NONE:
        break;
    }
    *bad = true;
    return NULL;
}

enum { DIM_PREFIX, DIM_NUMBERS, DIM_BASE64, DIM_DONE, DIM_FAILED };

void
embed_dim_scan_init(struct embed_dim_scan *s, enum embed_api api)
{
    memset(s, 0, offsetof(struct embed_dim_scan, prefix));
    s->api = api;
    s->phase = DIM_PREFIX;
}

/* Inside the first vector: count as the bytes pass, stop at its end. */
static int
dim_count(struct embed_dim_scan *s, const char *p, size_t n, unsigned *dim)
{
    const char *stop = memchr(p, s->phase == DIM_NUMBERS ? ']' : '"', n);
    size_t len = stop != NULL ? (size_t)(stop - p) : n;

    if (s->phase == DIM_NUMBERS) {
        s->elements += count_byte(p, len, ',');
        if (!s->any && skip_ws(p, p + len) < p + len) {
            s->any = true;
        }
        if (stop == NULL) {
            return 0;
        }
        s->phase = DIM_DONE;
        *dim = s->any ? (unsigned)MIN(s->elements + 1, (uint64_t)UINT32_MAX) : 0;
        return *dim > 0 ? 1 : -1;
    }
    {
        size_t eq = 0;
        while (eq < len && eq < 2 && p[len - 1 - eq] == '=') {
            eq++;
        }
        /* padding split across reads: "...=" then "=" */
        s->pad = eq == len ? (uint8_t)MIN((size_t)s->pad + eq, (size_t)2) : (uint8_t)eq;
        s->elements += len;
    }
    if (stop == NULL) {
        return 0;
    }
    s->phase = DIM_DONE;
    *dim = s->elements >= 4 ? (unsigned)MIN((s->elements / 4 * 3 - s->pad) / 4,
                                            (uint64_t)UINT32_MAX)
                            : 0;
    return *dim > 0 ? 1 : -1;
}

int
embed_dim_scan_feed(struct embed_dim_scan *s, const char *p, size_t n, unsigned *dim)
{
    *dim = 0;
    if (s->phase == DIM_DONE || s->phase == DIM_FAILED) {
        return -1;
    }
    if (s->phase == DIM_PREFIX) {
        size_t take = MIN(n, sizeof(s->prefix) - s->plen);
        const char *v;
        bool bad;

        memcpy(s->prefix + s->plen, p, take);
        s->plen += take;
        v = first_vector(s->api, s->prefix, s->prefix + s->plen, &bad);
        if (v == NULL) {
            if (bad || s->plen == sizeof(s->prefix)) {
                s->phase = DIM_FAILED; /* no vector near the start: not an embedding answer */
                return -1;
            }
            return 0;
        }
        s->phase = *v == '[' ? DIM_NUMBERS : DIM_BASE64;
        /* What followed the opening in the prefix, then the rest of these bytes. */
        {
            size_t after = (size_t)(s->prefix + s->plen - (v + 1));
            int rc = after > 0 ? dim_count(s, v + 1, after, dim) : 0;
            if (rc != 0 || take == n) {
                return rc;
            }
        }
        p += take;
        n -= take;
    }
    return dim_count(s, p, n, dim);
}

static int json_unescape(const char *s, size_t n, char *out, size_t cap);

/* The string value after a key's ':' at p (blanks allowed), decoded into out. */
static size_t
string_value(const char *p, const char *end, char *out, size_t cap)
{
    const char *q;
    int n;

    p = skip_ws(p, end);
    if (p >= end || *p != '"') {
        return 0;
    }
    q = p + 1;
    while (q < end && *q != '"' && *q != '\\') {
        q++;
    }
    if (q < end && *q == '"' && (size_t)(q - p - 1) < cap) {
        /* no escape: the usual model name, copied as it is */
        memcpy(out, p + 1, (size_t)(q - p - 1));
        out[q - p - 1] = '\0';
        return (size_t)(q - p - 1);
    }
    for (; q < end && *q != '"'; q += *q == '\\' ? 2 : 1) {
    }
    if (q >= end) {
        return 0;
    }
    n = json_unescape(p + 1, (size_t)(q - p - 1), out, cap);
    return n > 0 ? (size_t)n : 0;
}

size_t
embed_answer_model(const char *head, size_t hlen, const char *tail, size_t tlen, char *out,
                   size_t cap)
{
    static const char key[] = "\"model\"";
    const char *v;
    size_t n = 0, i = tlen;

    /*
     * The tail starts anywhere, strings included: look for the last key from
     * the end, quote by quote (an OpenAI answer's "model" is a few keys from
     * its end, after the vectors).
     */
    while (n == 0 && i >= sizeof(key) - 1) {
        /* the last quote where key can start */
        const char *q = memrchr(tail, '"', i - (sizeof(key) - 2));
        const char *c;
        if (q == NULL) {
            break;
        }
        i = (size_t)(q - tail) + sizeof(key) - 2; /* next time, quotes before this one */
        if (memcmp(q, key, sizeof(key) - 1) != 0) {
            continue;
        }
        c = skip_ws(q + sizeof(key) - 1, tail + tlen);
        if (c < tail + tlen && *c == ':') {
            n = string_value(c + 1, tail + tlen, out, cap);
            break;
        }
    }
    /* Not in the tail: the head's first "model" key, with every string walked (Ollama's place). */
    if (n == 0 && (v = find_key(head, head + hlen, "model")) != NULL) {
        n = string_value(v, head + hlen, out, cap);
    }
    if (n == 0 && cap > 0) {
        out[0] = '\0';
    }
    return n;
}

unsigned
embed_sniff_dimension(enum embed_api api, const char *body, size_t len)
{
    struct embed_dim_scan s;
    unsigned dim = 0;
    const char *v;
    bool bad;

    if (body == NULL) {
        return 0;
    }
    /* The whole body is at hand: no bound on where the first vector starts. */
    v = first_vector(api, body, body + len, &bad);
    if (v == NULL) {
        return 0;
    }
    embed_dim_scan_init(&s, api);
    s.phase = *v == '[' ? DIM_NUMBERS : DIM_BASE64;
    return dim_count(&s, v + 1, (size_t)(body + len - (v + 1)), &dim) == 1 ? dim : 0;
}

/* ---- quick scan of a request ------------------------------------------- */

#define SCAN_MAX_DEPTH 64

struct scanner {
    const char *p, *end;
};

static void
scan_ws(struct scanner *sc)
{
    while (sc->p < sc->end &&
           (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r')) {
        sc->p++;
    }
}

/* A JSON string at sc->p; *chars counts decoded characters. -1 when malformed. */
static int
scan_string(struct scanner *sc, const char **start, size_t *bytes, size_t *chars)
{
    size_t n = 0;

    if (sc->p >= sc->end || *sc->p != '"') {
        return -1;
    }
    *start = ++sc->p;
    while (sc->p < sc->end) {
        unsigned char ch;
        {
            size_t run = util_json_plain_run(sc->p, (size_t)(sc->end - sc->p));
            sc->p += run;
            n += run;
        }
        if (sc->p >= sc->end) {
            break;
        }
        ch = (unsigned char)*sc->p;
        if (ch == '"') {
            *bytes = (size_t)(sc->p - *start);
            sc->p++;
            if (chars != NULL) {
                *chars = n;
            }
            return 0;
        }
        if (ch < 0x20) {
            return -1;
        }
        if (ch == '\\') {
            if (sc->p + 1 >= sc->end) {
                return -1;
            }
            sc->p += sc->p[1] == 'u' ? 6 : 2;
            n++;
            continue;
        }
        n += (ch & 0xC0) != 0x80; /* count UTF-8 lead bytes only */
        sc->p++;
    }
    return -1;
}

static int scan_value(struct scanner *sc, int depth);

static int
hex4(const char *p)
{
    int v = 0;

    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= c - '0';
        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            v |= (c | 0x20) - 'a' + 10;
        } else {
            return -1;
        }
    }
    return v;
}

/*
 * The text of a JSON string's raw bytes s[0..n) (quotes excluded, already
 * checked by scan_string) into out, NUL-terminated. -1 when it does not
 * fit, or holds a NUL or a lone surrogate: no model is named that.
 */
/* The character a one-letter JSON escape stands for ('n' -> newline, '"' -> '"'). */
static char
json_escaped_char(char c)
{
    static const char from[] = "bfnrt", to[] = "\b\f\n\r\t";
    const char *p = strchr(from, c);

    return p != NULL ? to[p - from] : c;
}

static int
json_unescape(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;

    for (size_t i = 0; i < n;) {
        uint32_t cp;
        if (s[i] != '\\') {
            if (o + 1 >= cap) {
                return -1;
            }
            out[o++] = s[i++];
            continue;
        }
        if (i + 1 >= n) {
            return -1;
        }
        switch (s[i + 1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            cp = (unsigned char)json_escaped_char(s[i + 1]);
            i += 2;
            break;
        case 'u': {
            int hi = i + 6 <= n ? hex4(s + i + 2) : -1;
            if (hi < 0) {
                return -1;
            }
            i += 6;
            cp = (uint32_t)hi;
            if (hi >= 0xD800 && hi <= 0xDBFF) {
                int lo = i + 6 <= n && s[i] == '\\' && s[i + 1] == 'u' ? hex4(s + i + 2) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    return -1;
                }
                i += 6;
                cp = 0x10000 + (((uint32_t)hi - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
            } else if (hi >= 0xDC00 && hi <= 0xDFFF) {
                return -1;
            }
            break;
        }
        default:
            return -1;
        }
        if (cp == 0) {
            return -1;
        }
        {
            char u[4];
            size_t k = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
            if (k == 1) {
                u[0] = (char)cp;
            } else if (k == 2) {
                u[0] = (char)(0xC0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3F));
            } else if (k == 3) {
                u[0] = (char)(0xE0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
            } else {
                u[0] = (char)(0xF0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
            }
            if (o + k >= cap) {
                return -1;
            }
            memcpy(out + o, u, k);
            o += k;
        }
    }
    out[o] = '\0';
    return (int)o;
}

static int
scan_container(struct scanner *sc, int depth, char close)
{
    sc->p++;
    scan_ws(sc);
    if (sc->p < sc->end && *sc->p == close) {
        sc->p++;
        return 0;
    }
    for (;;) {
        if (close == '}') {
            const char *k;
            size_t kb;
            if (scan_string(sc, &k, &kb, NULL) < 0) {
                return -1;
            }
            scan_ws(sc);
            if (sc->p >= sc->end || *sc->p != ':') {
                return -1;
            }
            sc->p++;
        }
        if (scan_value(sc, depth + 1) < 0) {
            return -1;
        }
        scan_ws(sc);
        if (sc->p >= sc->end) {
            return -1;
        }
        if (*sc->p == close) {
            sc->p++;
            return 0;
        }
        if (*sc->p != ',') {
            return -1;
        }
        sc->p++;
        scan_ws(sc);
    }
}

/* Skip any JSON value; -1 when malformed or nested deeper than SCAN_MAX_DEPTH. */
static int
scan_value(struct scanner *sc, int depth)
{
    const char *s;
    size_t b;

    scan_ws(sc);
    if (sc->p >= sc->end || depth > SCAN_MAX_DEPTH) {
        return -1;
    }
    switch (*sc->p) {
    case '"':
        return scan_string(sc, &s, &b, NULL);
    case '{':
        return scan_container(sc, depth, '}');
    case '[':
        return scan_container(sc, depth, ']');
    default:
        s = sc->p;
        while (sc->p < sc->end && (isalnum((unsigned char)*sc->p) || *sc->p == '-' ||
                                   *sc->p == '+' || *sc->p == '.')) {
            sc->p++;
        }
        return sc->p > s ? 0 : -1;
    }
}

/* A number token at sc->p (a token id); -1 when it is not one. */
static int
scan_number(struct scanner *sc)
{
    const char *s = sc->p;

    while (sc->p < sc->end && (isdigit((unsigned char)*sc->p) || *sc->p == '-' || *sc->p == '+' ||
                               *sc->p == '.' || *sc->p == 'e' || *sc->p == 'E')) {
        sc->p++;
    }
    return sc->p > s ? 0 : -1;
}

/* The input value: a string, an array of strings, of numbers (one input), or of arrays. */
static int
scan_inputs(struct scanner *sc, struct embed_scan *out)
{
    size_t bytes, chars;
    const char *s;

    out->ninputs = 0;
    scan_ws(sc);
    if (sc->p >= sc->end) {
        return -1;
    }
    if (*sc->p == '"') {
        if (scan_string(sc, &s, &bytes, &chars) < 0) {
            return -1;
        }
        out->chars[0] = (uint32_t)MIN(chars, UINT32_MAX);
        out->ninputs = 1;
        return 0;
    }
    if (*sc->p != '[') {
        return -1;
    }
    sc->p++;
    scan_ws(sc);
    if (sc->p < sc->end && *sc->p == ']') {
        sc->p++;
        return 0;
    }
    if (sc->p < sc->end && (isdigit((unsigned char)*sc->p) || *sc->p == '-')) {
        /* One input of token ids. */
        size_t ntokens = 0;
        for (;;) {
            if (scan_number(sc) < 0) {
                return -1;
            }
            ntokens++;
            scan_ws(sc);
            if (sc->p < sc->end && *sc->p == ']') {
                sc->p++;
                out->chars[0] = (uint32_t)MIN(ntokens, UINT32_MAX);
                out->ninputs = 1;
                return 0;
            }
            if (sc->p >= sc->end || *sc->p != ',') {
                return -1;
            }
            sc->p++;
            scan_ws(sc);
        }
    }
    for (;;) {
        size_t n = 0;
        scan_ws(sc);
        if (sc->p >= sc->end) {
            return -1;
        }
        if (*sc->p == '"') {
            if (scan_string(sc, &s, &bytes, &n) < 0) {
                return -1;
            }
        } else if (*sc->p == '[') {
            const char *open = sc->p;
            if (scan_value(sc, 1) < 0) {
                return -1;
            }
            n = count_byte(open, (size_t)(sc->p - open), ',') + 1;
        } else {
            return -1;
        }
        if (out->ninputs == EMBED_MAX_INPUTS) {
            return -1;
        }
        out->chars[out->ninputs++] = (uint32_t)MIN(n, UINT32_MAX);
        scan_ws(sc);
        if (sc->p < sc->end && *sc->p == ']') {
            sc->p++;
            return 0;
        }
        if (sc->p >= sc->end || *sc->p != ',') {
            return -1;
        }
        sc->p++;
    }
}

int
embed_request_scan(enum embed_api api, const char *body, size_t len, struct embed_scan *out)
{
    struct scanner sc = {body, body + len};
    const char *input_key = api == EMBED_API_TEI             ? "inputs"
                            : api == EMBED_API_OLLAMA_LEGACY ? "prompt"
                                                             : "input";
    bool seen_input = false;

    out->ninputs = 0;
    out->model[0] = '\0';
    out->model_at = out->model_len = 0;
    out->sized = false;
    if (api == EMBED_API_NONE || body == NULL) {
        return -1;
    }
    scan_ws(&sc);
    if (sc.p >= sc.end || *sc.p != '{') {
        return -1;
    }
    sc.p++;
    scan_ws(&sc);
    if (sc.p < sc.end && *sc.p == '}') {
        return -1;
    }
    for (;;) {
        const char *k;
        size_t kb;
        scan_ws(&sc);
        if (scan_string(&sc, &k, &kb, NULL) < 0) {
            return -1;
        }
        scan_ws(&sc);
        if (sc.p >= sc.end || *sc.p != ':') {
            return -1;
        }
        sc.p++;
        scan_ws(&sc);
        if (kb == strlen(input_key) && memcmp(k, input_key, kb) == 0) {
            if (scan_inputs(&sc, out) < 0) {
                return -1;
            }
            seen_input = true;
        } else if (kb == 5 && memcmp(k, "model", 5) == 0 && sc.p < sc.end && *sc.p == '"') {
            const char *m;
            size_t mb;
            if (scan_string(&sc, &m, &mb, NULL) < 0) {
                return -1;
            }
            out->model_at = (size_t)(m - body);
            out->model_len = mb;
            if (json_unescape(m, mb, out->model, sizeof(out->model)) < 0) {
                out->model[0] = '\0'; /* too long, or an escape we will not route by */
            }
        } else {
            if (kb == 10 && memcmp(k, "dimensions", 10) == 0 && sc.p < sc.end && *sc.p != 'n') {
                out->sized = true; /* not null: the caller chose the size */
            }
            if (scan_value(&sc, 1) < 0) {
                return -1;
            }
        }
        scan_ws(&sc);
        if (sc.p >= sc.end) {
            return -1;
        }
        if (*sc.p == '}') {
            sc.p++;
            break;
        }
        if (*sc.p != ',') {
            return -1;
        }
        sc.p++;
    }
    scan_ws(&sc);
    if (sc.p != sc.end || !seen_input || out->ninputs == 0) {
        return -1;
    }
    return 0;
}

/* ------------------------------------------ the cache's view (worker threads) */

/* Compact JSON with sorted keys: equal values give equal bytes. */
static void
vector_param(json_t *root, const char *name, void (*fn)(void *, const char *, const char *, size_t),
             void *arg)
{
    json_t *v = json_object_get(root, name);
    char *text;

    if (v == NULL) {
        return;
    }
    text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (text == NULL) {
        fatal("embed_api: out of memory");
    }
    fn(arg, name, text, strlen(text));
    free(text);
}

static void
emit_vector_params(enum embed_api api, json_t *root,
                   void (*fn)(void *, const char *, const char *, size_t), void *arg)
{
    static const char *openai[] = {"dimensions", NULL};
    static const char *tei[] = {"normalize", "truncate", "truncation_direction", "prompt_name",
                                NULL};
    static const char *ollama[] = {"truncate", "dimensions", "options", NULL};
    const char **names = api == EMBED_API_TEI      ? tei
                         : api == EMBED_API_OPENAI ? openai
                                                   : ollama;

    for (size_t i = 0; names[i] != NULL; i++) {
        vector_param(root, names[i], fn, arg);
    }
}

int
embed_request_vector_params(enum embed_api api, const char *body, size_t len,
                            void (*fn)(void *arg, const char *name, const char *json, size_t n),
                            void *arg)
{
    json_t *root = json_loadb(body, len, 0, NULL);

    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return -1;
    }
    emit_vector_params(api, root, fn, arg);
    json_decref(root);
    return 0;
}

int
embed_request_subset(enum embed_api api, const char *body, size_t len, const size_t *idx, size_t n,
                     struct buf *out)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *in, *cut;
    char *text;

    if (root == NULL || !json_is_object(root) || api == EMBED_API_OLLAMA_LEGACY) {
        json_decref(root);
        return -1;
    }
    in = json_object_get(root, input_field(api));
    if (!json_is_array(in) || n == 0) {
        json_decref(root);
        return -1;
    }
    cut = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(in, idx[i]);
        if (v == NULL || (i > 0 && idx[i] <= idx[i - 1])) {
            json_decref(cut);
            json_decref(root);
            return -1;
        }
        json_array_append(cut, v);
    }
    json_object_set_new(root, input_field(api), cut);
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text == NULL) {
        fatal("embed_api: out of memory");
    }
    buf_append(out, text, strlen(text));
    free(text);
    return 0;
}


/* Standard base64 (padded) of little-endian float32s into a malloc'd *out; -1 when malformed. */
static int
b64_floats(const char *s, size_t len, float **out, size_t *count)
{
    size_t pad = 0, nbytes;
    unsigned char *bytes;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (len % 4 != 0) {
        return -1;
    }
    while (pad < 2 && len > pad && s[len - 1 - pad] == '=') {
        pad++;
    }
    nbytes = len / 4 * 3 - pad;
    if (nbytes == 0 || nbytes % 4 != 0) {
        return -1;
    }
    bytes = xmalloc(nbytes + 3);
    for (size_t i = 0; i < len - pad; i++) {
        int v = util_base64_digit(s[i], false);
        if (v < 0) {
            free(bytes);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            bytes[o++] = (unsigned char)(acc >> bits);
        }
    }
    *count = nbytes / 4;
    *out = xmalloc(nbytes);
    for (size_t i = 0; i < *count; i++) {
        const unsigned char *p = bytes + 4 * i;
        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24;
        memcpy(&(*out)[i], &u, sizeof(u));
    }
    free(bytes);
    return 0;
}

/* One vector (a JSON array of numbers, or base64) into row i of *vecs, fixing *dim on the first. */
static int
answer_vector(json_t *v, size_t i, size_t n, float **vecs, unsigned *dim, char *err,
              size_t errlen)
{
    float *tmp = NULL;
    size_t count;

    if (json_is_string(v)) {
        if (b64_floats(json_string_value(v), json_string_length(v), &tmp, &count) != 0) {
            snprintf(err, errlen, "vector %zu: not base64 float32", i);
            return -1;
        }
    } else if (json_is_array(v)) {
        count = json_array_size(v);
        tmp = xmalloc((count > 0 ? count : 1) * sizeof(float));
        for (size_t k = 0; k < count; k++) {
            json_t *x = json_array_get(v, k);
            if (!json_is_number(x)) {
                free(tmp);
                snprintf(err, errlen, "vector %zu: element %zu is not a number", i, k);
                return -1;
            }
            tmp[k] = (float)json_number_value(x);
        }
    } else {
        snprintf(err, errlen, "vector %zu: neither an array nor base64", i);
        return -1;
    }
    for (size_t k = 0; k < count; k++) {
        if (!isfinite(tmp[k])) {
            free(tmp);
            snprintf(err, errlen, "vector %zu: element %zu is not a finite float32", i, k);
            return -1;
        }
    }
    if (count == 0 || count > EMBED_MAX_DIMENSIONS * 4 || (*dim != 0 && count != *dim)) {
        free(tmp);
        snprintf(err, errlen, "vector %zu has %zu elements%s", i, count,
                 *dim != 0 ? ", unlike the first" : "");
        return -1;
    }
    if (*dim == 0) {
        *dim = (unsigned)count;
        *vecs = xmalloc(n * count * sizeof(float));
    }
    memcpy(*vecs + i * count, tmp, count * sizeof(float));
    free(tmp);
    return 0;
}

int
embed_answer_parse(enum embed_api api, const char *body, size_t len, size_t n, float **vecs,
                   unsigned *dim, size_t *usage, bool *usage_known, char *err, size_t errlen)
{
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, NULL);
    json_t *list = NULL, *u = NULL;
    bool *seen = NULL;
    int rc = -1;

    *vecs = NULL;
    *dim = 0;
    *usage = 0;
    *usage_known = false;
    if (errlen > 0) {
        err[0] = '\0';
    }
    if (root == NULL) {
        snprintf(err, errlen, "the answer is not JSON");
        return -1;
    }
    switch (api) {
    case EMBED_API_TEI:
        list = root;
        break;
    case EMBED_API_OLLAMA:
        list = json_object_get(root, "embeddings");
        u = json_object_get(root, "prompt_eval_count");
        break;
    case EMBED_API_OLLAMA_LEGACY:
        list = json_object_get(root, "embedding");
        break;
    default:
        list = json_object_get(root, "data");
        u = json_object_get(json_object_get(root, "usage"), "prompt_tokens");
        break;
    }
    if (api == EMBED_API_OLLAMA_LEGACY) {
        /* One flat vector for its one prompt. */
        rc = n == 1 && json_is_array(list) ? answer_vector(list, 0, 1, vecs, dim, err, errlen) : -1;
        if (rc != 0 && err[0] == '\0') {
            snprintf(err, errlen, "the answer holds no \"embedding\"");
        }
        goto out;
    }
    if (!json_is_array(list) || json_array_size(list) != n) {
        snprintf(err, errlen, "the answer holds %zu vectors for %zu inputs",
                 json_is_array(list) ? json_array_size(list) : (size_t)0, n);
        goto out;
    }
    seen = xcalloc(n, 1);
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(list, i), *v = item;
        size_t at = i;
        if (api == EMBED_API_OPENAI) {
            json_t *index = json_object_get(item, "index");
            v = json_object_get(item, "embedding");
            if (index != NULL) {
                if (!json_is_integer(index) || json_integer_value(index) < 0 ||
                    (size_t)json_integer_value(index) >= n) {
                    snprintf(err, errlen, "data[%zu].index is out of range", i);
                    goto out;
                }
                at = (size_t)json_integer_value(index);
            }
        }
        if (seen[at]) {
            snprintf(err, errlen, "two vectors for input %zu", at);
            goto out;
        }
        seen[at] = true;
        if (answer_vector(v, at, n, vecs, dim, err, errlen) != 0) {
            goto out;
        }
    }
    rc = 0;
out:
    if (rc == 0 && json_is_integer(u) && json_integer_value(u) >= 0) {
        *usage = (size_t)json_integer_value(u);
        *usage_known = true;
    }
    if (rc != 0) {
        free(*vecs);
        *vecs = NULL;
        *dim = 0;
    }
    free(seen);
    json_decref(root);
    return rc;
}
