/*
 * trace.c - W3C trace context, ids, sampler, spans, OTLP JSON and the
 * telemetry settings. Pure: see trace.h.
 */
#include "trace.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "log.h"

/* ---- small helpers ---- */

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void
trim(const char **s, size_t *len)
{
    while (*len > 0 && is_ows((*s)[0])) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_ows((*s)[*len - 1])) {
        (*len)--;
    }
}

/* W3C allows lower-case hex only, so 'A'..'F' are rejected here. */
static int
lower_hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

static bool
parse_lower_hex(const char *s, size_t nbytes, uint8_t *out)
{
    for (size_t i = 0; i < nbytes; i++) {
        int hi = lower_hex_value(s[2 * i]);
        int lo = lower_hex_value(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool
all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) {
            return false;
        }
    }
    return true;
}

/* "000102...ff": a byte's two hex digits at twice its value (ids go out per traced request). */
#define HEX16(h)                                                                                   \
    h "0" h "1" h "2" h "3" h "4" h "5" h "6" h "7" h "8" h "9" h "a" h "b" h "c" h "d" h "e" h "f"
static const char hex_pairs[] = HEX16("0") HEX16("1") HEX16("2") HEX16("3") HEX16("4") HEX16("5")
    HEX16("6") HEX16("7") HEX16("8") HEX16("9") HEX16("a") HEX16("b") HEX16("c") HEX16("d")
        HEX16("e") HEX16("f");

#ifdef __SSE2__
/* Sixteen nibbles' hex digits at once (SSE2 is in every x86-64). */
static inline __m128i
hex_digits(__m128i nibbles)
{
    return _mm_add_epi8(_mm_add_epi8(nibbles, _mm_set1_epi8('0')),
                        _mm_and_si128(_mm_cmpgt_epi8(nibbles, _mm_set1_epi8(9)),
                                      _mm_set1_epi8('a' - '0' - 10)));
}

/*
 * The digits of x's low 8 bytes at out, and with wide those of its high 8
 * after them: each byte's high and low nibbles side by side, then '0'
 * added, and 'a' - '0' - 10 more where a nibble is over 9.
 */
static inline void
hex_sse2(__m128i x, char *out, bool wide)
{
    const __m128i low4 = _mm_set1_epi8(0x0f);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(x, 4), low4), lo = _mm_and_si128(x, low4);

    _mm_storeu_si128((__m128i *)(void *)out, hex_digits(_mm_unpacklo_epi8(hi, lo)));
    if (wide) {
        _mm_storeu_si128((__m128i *)(void *)(out + 16), hex_digits(_mm_unpackhi_epi8(hi, lo)));
    }
}
#endif

void
trace_hex(const uint8_t *bytes, size_t n, char *out)
{
    size_t i = 0;

#ifdef __SSE2__
    /* a trace id is one step, a span id one more; traceparent writes both per traced request */
    for (; i + 16 <= n; i += 16) {
        hex_sse2(_mm_loadu_si128((const __m128i *)(const void *)(bytes + i)), out + 2 * i, true);
    }
    if (i + 8 <= n) {
        hex_sse2(_mm_loadl_epi64((const __m128i *)(const void *)(bytes + i)), out + 2 * i, false);
        i += 8;
    }
#endif
    for (; i < n; i++) {
        memcpy(out + 2 * i, hex_pairs + 2 * bytes[i], 2);
    }
    out[2 * n] = '\0';
}

/* Length of the valid UTF-8 sequence at s (at most len bytes), 0 when invalid. */
static size_t
utf8_seq_len(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80) {
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
        hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (len < need || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < need; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return 0;
        }
    }
    return need;
}

/*
 * Copy n bytes, n small: two overlapping moves of a word size cover any
 * length up to twice it, without a call or reading past either end. Keys
 * and most values on the request path are 4 to 32 bytes.
 */
static inline void
copy_small(char *dst, const char *src, size_t n)
{
    uint64_t a, b;

    if (n >= 4 && n < 8) {
        uint32_t x, y;
        memcpy(&x, src, 4);
        memcpy(&y, src + n - 4, 4);
        memcpy(dst, &x, 4);
        memcpy(dst + n - 4, &y, 4);
    } else if (n >= 8 && n <= 16) {
        memcpy(&a, src, 8);
        memcpy(&b, src + n - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + n - 8, &b, 8);
    } else if (n > 16 && n <= 32) {
        uint64_t c, d;
        memcpy(&a, src, 8);
        memcpy(&b, src + 8, 8);
        memcpy(&c, src + n - 16, 8);
        memcpy(&d, src + n - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + 8, &b, 8);
        memcpy(dst + n - 16, &c, 8);
        memcpy(dst + n - 8, &d, 8);
    } else if (n > 0 && n < 4) {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    } else if (n > 32) {
        memcpy(dst, src, n);
    }
}

/*
 * True when s[0..len) is all ASCII: eight bytes at a time, the last word
 * overlapping the one before it (no byte loop for the tail); under eight
 * bytes, two overlapping four-byte words.
 */
static inline bool
all_ascii(const char *s, size_t len)
{
    uint64_t acc = 0, w;

    if (len >= 8) {
        size_t i = 0;
        for (; i + 8 <= len; i += 8) {
            memcpy(&w, s + i, 8);
            acc |= w;
        }
        memcpy(&w, s + len - 8, 8);
        acc |= w;
    } else if (len >= 4) {
        uint32_t x, y;
        memcpy(&x, s, 4);
        memcpy(&y, s + len - 4, 4);
        acc = x | y;
    } else {
        for (size_t i = 0; i < len; i++) {
            acc |= (unsigned char)s[i];
        }
    }
    return (acc & 0x8080808080808080ull) == 0;
}

/*
 * Copy into a fixed buffer keeping valid UTF-8: a collector rejects the whole
 * batch over one bad string, and names carry client-supplied paths. Invalid
 * bytes become '?', and a cut never splits a character. Returns the length
 * written (a NUL follows). Whether the copy needs JSON escaping is decided
 * when JSON is written: protobuf, the default, never asks.
 */
static size_t
copy_utf8(char *dst, size_t dstsize, const char *src, size_t len)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t in = 0, out = 0;

    if (len < dstsize && all_ascii(src, len)) {
        copy_small(dst, src, len);
        dst[len] = '\0';
        return len;
    }
    while (in < len) {
        size_t n;
        if (s[in] < 0x80) {
            if (out + 1 >= dstsize) {
                break;
            }
            dst[out++] = (char)s[in++];
            continue;
        }
        n = utf8_seq_len(s + in, len - in);
        if (n == 0) {
            if (out + 1 >= dstsize) {
                break;
            }
            dst[out++] = '?';
            in++;
            continue;
        }
        if (out + n >= dstsize) {
            break;
        }
        memcpy(dst + out, s + in, n);
        out += n;
        in += n;
    }
    dst[out] = '\0';
    return out;
}

/* ---- traceparent / tracestate ---- */

bool
trace_parse_traceparent(const char *s, size_t len, struct trace_context *out)
{
    uint8_t version, flags;
    uint8_t trace_id[TRACE_ID_SIZE], span_id[TRACE_SPAN_ID_SIZE];

    if (s == NULL) {
        return false;
    }
    trim(&s, &len);
    if (len < TRACE_TRACEPARENT_LEN) {
        return false;
    }
    if (!parse_lower_hex(s, 1, &version) || version == 0xff) {
        return false;
    }
    if (s[2] != '-' || s[35] != '-' || s[52] != '-') {
        return false;
    }
    if (!parse_lower_hex(s + 3, TRACE_ID_SIZE, trace_id) ||
        !parse_lower_hex(s + 36, TRACE_SPAN_ID_SIZE, span_id) ||
        !parse_lower_hex(s + 53, 1, &flags)) {
        return false;
    }
    if (version == 0 && len != TRACE_TRACEPARENT_LEN) {
        return false;
    }
    /* A future version may append fields, but only after a '-'. */
    if (version != 0 && len > TRACE_TRACEPARENT_LEN && s[TRACE_TRACEPARENT_LEN] != '-') {
        return false;
    }
    if (all_zero(trace_id, TRACE_ID_SIZE) || all_zero(span_id, TRACE_SPAN_ID_SIZE)) {
        return false;
    }
    memcpy(out->trace_id, trace_id, TRACE_ID_SIZE);
    memcpy(out->span_id, span_id, TRACE_SPAN_ID_SIZE);
    out->flags = flags & TRACE_FLAG_SAMPLED;
    out->tracestate[0] = '\0';
    return true;
}

void
trace_format_traceparent(const struct trace_context *ctx, char out[56])
{
    memcpy(out, "00-", 3);
    trace_hex(ctx->trace_id, TRACE_ID_SIZE, out + 3);
    out[35] = '-';
    trace_hex(ctx->span_id, TRACE_SPAN_ID_SIZE, out + 36);
    out[52] = '-';
    memcpy(out + 53, hex_pairs + 2 * ctx->flags, 2);
    out[55] = '\0';
}

/* W3C: members longer than this go first when the list must shrink. */
#define TRACESTATE_LONG_MEMBER 128

void
trace_set_tracestate(struct trace_context *ctx, const char *s, size_t len)
{
    size_t out = 0;
    const char *p, *end;

    ctx->tracestate[0] = '\0';
    if (s == NULL) {
        return;
    }
    trim(&s, &len);
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) {
            return;
        }
    }
    if (len <= TRACE_TRACESTATE_MAX) {
        memcpy(ctx->tracestate, s, len);
        ctx->tracestate[len] = '\0';
        return;
    }
    p = s;
    end = s + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *mend = comma ? comma : end;
        const char *m = p;
        size_t mlen = (size_t)(mend - p);

        p = comma ? comma + 1 : end;
        trim(&m, &mlen);
        if (mlen == 0 || mlen > TRACESTATE_LONG_MEMBER) {
            continue;
        }
        if (out + (out > 0) + mlen > TRACE_TRACESTATE_MAX) {
            break;
        }
        if (out > 0) {
            ctx->tracestate[out++] = ',';
        }
        memcpy(ctx->tracestate + out, m, mlen);
        out += mlen;
    }
    ctx->tracestate[out] = '\0';
}

/* ---- ids ---- */

/*
 * xoshiro256** per thread: ids are made on the request path of every thread,
 * and a lock or a syscall per id would cost more than the span itself.
 */
static __thread uint64_t rng_state[4];
static __thread bool rng_seeded;

static uint64_t
splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static void
rng_seed(void)
{
    uint64_t seed[4] = {0, 0, 0, 0};
    ssize_t got = getrandom(seed, sizeof(seed), 0);

    if (got != (ssize_t)sizeof(seed)) {
        /* Ids must only be unique, not secret: mix what differs per thread. */
        uint64_t x = (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&seed ^ seed[0];
        for (int i = 0; i < 4; i++) {
            seed[i] ^= splitmix64(&x);
        }
    }
    if (all_zero((const uint8_t *)seed, sizeof(seed))) {
        seed[0] = 1;
    }
    memcpy(rng_state, seed, sizeof(seed));
    rng_seeded = true;
}

static uint64_t
rng_next(void)
{
    uint64_t *s = rng_state;
    uint64_t result, t;

    if (!rng_seeded) {
        rng_seed();
    }
    result = rotl(s[1] * 5, 7) * 9;
    t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

_Static_assert(TRACE_ID_SIZE % 8 == 0 && TRACE_SPAN_ID_SIZE % 8 == 0, "ids are whole words");

/* n random bytes, n a multiple of 8, not all zero (an invalid id). */
static void
random_id(uint8_t *out, size_t n)
{
    uint64_t any;

    do {
        any = 0;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = rng_next();
            memcpy(out + i, &r, 8);
            any |= r;
        }
    } while (any == 0);
}

void
trace_new_trace_id(uint8_t out[TRACE_ID_SIZE])
{
    random_id(out, TRACE_ID_SIZE);
}

void
trace_new_span_id(uint8_t out[TRACE_SPAN_ID_SIZE])
{
    random_id(out, TRACE_SPAN_ID_SIZE);
}

/* ---- sampler ---- */

static const char *sampler_names[] = {
    [TRACE_SAMPLER_ALWAYS_ON] = "always_on",
    [TRACE_SAMPLER_ALWAYS_OFF] = "always_off",
    [TRACE_SAMPLER_TRACEIDRATIO] = "traceidratio",
    [TRACE_SAMPLER_PARENTBASED_ALWAYS_ON] = "parentbased_always_on",
    [TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF] = "parentbased_always_off",
    [TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO] = "parentbased_traceidratio",
};

int
trace_sampler_kind_parse(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(sampler_names); i++) {
        if (strcasecmp(name, sampler_names[i]) == 0) {
            return (int)i;
        }
    }
    return -1;
}

const char *
trace_sampler_kind_name(enum trace_sampler_kind kind)
{
    if ((size_t)kind >= ARRAY_SIZE(sampler_names)) {
        return "unknown";
    }
    return sampler_names[kind];
}

#define TWO_POW_56 72057594037927936.0

void
trace_sampler_init(struct trace_sampler *s, enum trace_sampler_kind kind, double ratio)
{
    double t;

    if (!(ratio >= 0.0)) { /* also catches NaN */
        ratio = 0.0;
    }
    if (ratio > 1.0) {
        ratio = 1.0;
    }
    s->kind = kind;
    s->ratio = ratio;
    t = (1.0 - ratio) * TWO_POW_56;
    s->threshold = t >= TWO_POW_56 ? (uint64_t)1 << 56 : (uint64_t)t;
}

bool
trace_ratio_sampled(const struct trace_sampler *s, const uint8_t trace_id[TRACE_ID_SIZE])
{
    uint64_t r;

    /* the id's last 7 bytes, big-endian: its last 8 read as one word, the first dropped */
    memcpy(&r, trace_id + TRACE_ID_SIZE - 8, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    r = __builtin_bswap64(r);
#endif
    return (r & 0x00ffffffffffffffull) >= s->threshold;
}

bool
trace_sampler_decide(const struct trace_sampler *s, const struct trace_context *parent,
                     const uint8_t trace_id[TRACE_ID_SIZE])
{
    switch (s->kind) {
    case TRACE_SAMPLER_ALWAYS_ON:
        return true;
    case TRACE_SAMPLER_ALWAYS_OFF:
        return false;
    case TRACE_SAMPLER_TRACEIDRATIO:
        return trace_ratio_sampled(s, trace_id);
    case TRACE_SAMPLER_PARENTBASED_ALWAYS_ON:
        return parent ? trace_context_sampled(parent) : true;
    case TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF:
        return parent ? trace_context_sampled(parent) : false;
    case TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO:
        return parent ? trace_context_sampled(parent) : trace_ratio_sampled(s, trace_id);
    }
    return false;
}

void
trace_start(const struct trace_sampler *s, const struct trace_context *parent,
            struct trace_context *out)
{
    if (parent != NULL) {
        memcpy(out->trace_id, parent->trace_id, TRACE_ID_SIZE);
        if (out != parent) {
            memcpy(out->tracestate, parent->tracestate, sizeof(out->tracestate));
        }
    } else {
        trace_new_trace_id(out->trace_id);
        out->tracestate[0] = '\0';
    }
    out->flags = trace_sampler_decide(s, parent, out->trace_id) ? TRACE_FLAG_SAMPLED : 0;
    trace_new_span_id(out->span_id);
}

void
trace_child_context(const struct trace_context *parent, struct trace_context *child)
{
    if (child != parent) {
        memcpy(child->trace_id, parent->trace_id, TRACE_ID_SIZE);
        /* the string only: the buffer's 513 bytes are 9 cache lines, most often empty */
        memcpy(child->tracestate, parent->tracestate, strlen(parent->tracestate) + 1);
        child->flags = parent->flags;
    }
    trace_new_span_id(child->span_id);
}

/* ---- protobuf primitives ---- */

/*
 * opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto, by
 * field number and wire type (0 varint, 1 fixed64, 2 length-delimited). A
 * nested message is written after its length, so each is sized first.
 */
#define PB_TAG(field, wire) ((char)((field) << 3 | (wire)))

static inline __attribute__((always_inline)) size_t
pb_varint_size(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline __attribute__((always_inline)) char *
pb_varint(char *o, uint64_t v)
{
    while (v >= 0x80) {
        *o++ = (char)(v | 0x80);
        v >>= 7;
    }
    *o++ = (char)v;
    return o;
}

/* Little-endian, as protobuf's fixed64 is: one store on the usual host. */
static inline __attribute__((always_inline)) char *
pb_fixed64(char *o, uint64_t v)
{
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(o, &v, 8);
    return o + 8;
}

/* A length-delimited field: tag, length, bytes. */
static inline __attribute__((always_inline)) char *
pb_bytes(char *o, char tag, const void *p, size_t len)
{
    *o++ = tag;
    o = pb_varint(o, len);
    memcpy(o, p, len);
    return o + len;
}

/* Size of a length-delimited field holding len bytes (one-byte tag). */
static size_t
pb_field_size(size_t len)
{
    return 1 + pb_varint_size(len) + len;
}

/*
 * A length-delimited field whose length is known only once its content is
 * written: pb_open leaves width bytes for the length, pb_close writes it
 * there and moves the content when the varint needs fewer or more bytes.
 * The callers pick the width that fits the usual case (1 for attributes,
 * 2 for a span), so the move is rare.
 */
static inline __attribute__((always_inline)) char *
pb_open(char *o, char tag, size_t width)
{
    *o++ = tag;
    return o + width;
}

static inline __attribute__((always_inline)) char *
pb_close(char *content, char *o, size_t width)
{
    size_t len = (size_t)(o - content), need = pb_varint_size(len);
    char *at = content - width;

    if (need != width) {
        memmove(at + need, content, len);
        o += (ptrdiff_t)need - (ptrdiff_t)width;
    }
    if (need == 2 && width == 2) {
        at[0] = (char)(len | 0x80);
        at[1] = (char)(len >> 7);
    } else {
        pb_varint(at, len);
    }
    return o;
}

/*
 * A KeyValue field whose AnyValue is any_len bytes, for span and event
 * attributes alike. pb_kv_size: the whole field's size, and in *kv its
 * content's (the KeyValue message's) length. pb_kv_head: its head at o (tag
 * field_tag, length kv, the key, the value's tag and length); the AnyValue
 * goes next. Keys and values are short, so the usual field has one-byte
 * lengths and is written without a call.
 */
static inline __attribute__((always_inline)) size_t
pb_kv_size(size_t key_len, size_t any_len, size_t *kv)
{
    *kv = key_len < 128 && any_len < 128 ? 2 + key_len + 2 + any_len
                                         : pb_field_size(key_len) + pb_field_size(any_len);
    return (*kv < 128 ? 2 : 1 + pb_varint_size(*kv)) + *kv;
}

static inline __attribute__((always_inline)) char *
pb_kv_head(char *o, char field_tag, const char *key, size_t key_len, size_t kv, size_t any_len)
{
    *o++ = field_tag;
    if (kv < 128) { /* so are both lengths inside */
        *o++ = (char)kv;
        *o++ = PB_TAG(1, 2);
        *o++ = (char)key_len;
        copy_small(o, key, key_len);
        o += key_len;
        *o++ = PB_TAG(2, 2);
        *o++ = (char)any_len;
        return o;
    }
    o = pb_varint(o, kv);
    o = pb_bytes(o, PB_TAG(1, 2), key, key_len);
    *o++ = PB_TAG(2, 2);
    return pb_varint(o, any_len);
}

/* ---- spans ---- */

/* Freed spans kept for reuse: a LIFO of at most TRACE_SPAN_POOL_MAX. */
static struct {
    pthread_mutex_t lock;
    struct trace_span *head;
    size_t count;
} span_pool = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};

/*
 * In front of the pool, each thread keeps up to TRACE_SPAN_CACHE_MAX freed
 * spans of its own: the loop thread makes a request's spans and frees them
 * when otlp_submit has encoded them, so under load it takes and gives back
 * without a lock. A thread's cache goes to the pool when the thread ends.
 */
struct span_cache {
    struct trace_span *head;
    unsigned count;
    bool registered; /* with span_cache_key, whose destructor empties it */
};

static __thread struct span_cache span_cache;
static pthread_key_t span_cache_key;
static pthread_once_t span_cache_once = PTHREAD_ONCE_INIT;

static void
span_pool_put(struct trace_span *span)
{
    pthread_mutex_lock(&span_pool.lock);
    if (span_pool.count < TRACE_SPAN_POOL_MAX) {
        span->pool_next = span_pool.head;
        span_pool.head = span;
        span_pool.count++;
        span = NULL;
    }
    pthread_mutex_unlock(&span_pool.lock);
    free(span);
}

/* At a thread's end: its cached spans go to the shared pool. */
static void
span_cache_release(void *arg)
{
    struct span_cache *c = arg;

    while (c->head != NULL) {
        struct trace_span *span = c->head;
        c->head = span->pool_next;
        span_pool_put(span);
    }
    c->count = 0;
    c->registered = false; /* a span freed later in the thread's exit registers again */
}

static void
span_cache_key_create(void)
{
    if (pthread_key_create(&span_cache_key, span_cache_release) != 0) {
        abort(); /* only without memory for one key, at the first span */
    }
}

struct trace_span *
trace_span_new(const struct trace_context *ctx, const uint8_t *parent_span_id,
               enum trace_span_kind kind, const char *name, uint64_t start_unix_ns)
{
    struct trace_span *span = span_cache.head;

    if (span != NULL) {
        span_cache.head = span->pool_next;
        span_cache.count--;
    } else {
        pthread_mutex_lock(&span_pool.lock);
        span = span_pool.head;
        if (span != NULL) {
            span_pool.head = span->pool_next;
            span_pool.count--;
        }
        pthread_mutex_unlock(&span_pool.lock);
        if (span == NULL) {
            span = xmalloc(sizeof(*span));
        }
    }
    /* Field by field: clearing the whole header would touch cache lines a span never uses. */
    memcpy(span->trace_id, ctx->trace_id, TRACE_ID_SIZE);
    memcpy(span->span_id, ctx->span_id, TRACE_SPAN_ID_SIZE);
    span->has_parent = parent_span_id != NULL;
    if (span->has_parent) {
        memcpy(span->parent_span_id, parent_span_id, TRACE_SPAN_ID_SIZE);
    }
    span->flags = ctx->flags;
    span->kind = (uint8_t)kind;
    span->status = TRACE_STATUS_UNSET;
    span->status_message_len = 0;
    span->nattrs = 0;
    span->dropped_attrs = 0;
    span->key_bits = 0;
    span->attrs_len = 0;
    span->pool_next = NULL;
    span->events = NULL;
    span->name_len =
        (uint8_t)copy_utf8(span->name, sizeof(span->name), name, strlen(name));
    span->start_unix_ns = start_unix_ns;
    span->end_unix_ns = 0;
    return span;
}

void
trace_span_free(struct trace_span *span)
{
    if (span == NULL) {
        return;
    }
    free(span->events);
    span->events = NULL;
    if (span_cache.count < TRACE_SPAN_CACHE_MAX) {
        if (!span_cache.registered) {
            pthread_once(&span_cache_once, span_cache_key_create);
            pthread_setspecific(span_cache_key, &span_cache);
            span_cache.registered = true;
        }
        span->pool_next = span_cache.head;
        span_cache.head = span;
        span_cache.count++;
        return;
    }
    span_pool_put(span);
}

size_t
trace_span_pool_count(void)
{
    size_t n;

    pthread_mutex_lock(&span_pool.lock);
    n = span_pool.count;
    pthread_mutex_unlock(&span_pool.lock);
    return n + span_cache.count;
}

/*
 * The span's attributes are Span.attributes fields (9): KeyValue {key 1,
 * value 2: AnyValue {string 1 | bool 2 | int 3 | double 4}}. Only this file
 * writes them, so reading them back trusts their shape.
 */
#define ATTR_FIELD PB_TAG(9, 2)

struct attr_field {
    const char *start; /* the field's tag */
    const char *key;
    size_t key_len;
    const char *any; /* the AnyValue's content */
    const char *end; /* just past the field */
};

static const char *
pb_read_varint(const char *p, size_t *v)
{
    size_t x = 0;

    for (int shift = 0;; shift += 7) {
        unsigned char c = (unsigned char)*p++;
        x |= (size_t)(c & 0x7f) << shift;
        if (c < 0x80) {
            break;
        }
    }
    *v = x;
    return p;
}

/* The field at p (one of span->attrs). */
static const char *
attr_field_read(const char *p, struct attr_field *f)
{
    size_t kv, any_len;

    f->start = p;
    p = pb_read_varint(p + 1, &kv); /* past ATTR_FIELD */
    f->end = p + kv;
    p = pb_read_varint(p + 1, &f->key_len); /* past key's tag */
    f->key = p;
    f->any = pb_read_varint(p + f->key_len + 1, &any_len); /* past value's tag */
    return f->end;
}

/*
 * key's bit in span->key_bits: a key whose bit is clear is not held, so
 * setting a new key skips the walk. Length and last two bytes tell apart
 * the keys one request's spans carry.
 */
static inline uint64_t
key_bit(const char *key, size_t key_len)
{
    size_t h = key_len;

    if (key_len >= 2) {
        h += 7 * (unsigned char)key[key_len - 1] + (unsigned char)key[key_len - 2];
    }
    return (uint64_t)1 << (h % 64);
}

/* key's field into *f; false when span holds no such key. */
static bool
attr_field_find(const struct trace_span *span, const char *key, size_t key_len,
                struct attr_field *f)
{
    const char *p = span->attrs, *stop = span->attrs + span->attrs_len;

    if (!(span->key_bits & key_bit(key, key_len))) {
        return false; /* not held: the usual case, no walk */
    }
    while (p < stop) {
        p = attr_field_read(p, f);
        if (f->key_len == key_len && memcmp(f->key, key, key_len) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * Start key's field with an AnyValue of any_len bytes: the old value of the
 * key goes first, then the field's head is written and the room where the
 * value goes is returned; NULL (counted as dropped) when the span has no
 * room or no slot left. The caller writes exactly any_len bytes there.
 */
static char *
attr_begin(struct trace_span *span, const char *key, size_t key_len, size_t any_len)
{
    size_t kv, need = pb_kv_size(key_len, any_len, &kv);
    struct attr_field old;
    char *o;

    if (attr_field_find(span, key, key_len, &old)) {
        size_t at = (size_t)(old.start - span->attrs), cut = (size_t)(old.end - old.start);
        memmove(span->attrs + at, old.end, span->attrs_len - at - cut);
        span->attrs_len = (uint16_t)(span->attrs_len - cut);
        span->nattrs--;
    }
    if (span->nattrs >= TRACE_MAX_ATTRS || need > sizeof(span->attrs) - span->attrs_len) {
        span->dropped_attrs++;
        return NULL;
    }
    o = pb_kv_head(span->attrs + span->attrs_len, ATTR_FIELD, key, key_len, kv, any_len);
    span->attrs_len = (uint16_t)(span->attrs_len + need);
    span->nattrs++;
    span->key_bits |= key_bit(key, key_len);
    return o;
}

/* Bytes of the longest value that fits the span's room beside key's field, at most want. */
static size_t
attr_str_room(const struct trace_span *span, size_t key_len, size_t want)
{
    size_t left = sizeof(span->attrs) - span->attrs_len;
    /* tags and lengths: field, key, AnyValue, string; each length at most 2 bytes here */
    size_t fixed = 1 + 2 + pb_field_size(key_len) + 1 + 2 + 1 + 2;

    return left > fixed ? MIN(want, left - fixed) : 0;
}

/* Any string attribute, by the rules of struct trace_span: cut, made valid UTF-8, replacing. */
static __attribute__((noinline)) void
put_str_general(struct trace_span *span, const char *key, size_t key_len, const char *value,
                size_t len)
{
    char clean[TRACE_ATTR_STR_MAX];
    size_t n, room;
    char *o;

    if (len < TRACE_ATTR_STR_MAX && all_ascii(value, len)) {
        n = len; /* as it is */
    } else {
        n = copy_utf8(clean, sizeof(clean), value, len);
        value = clean;
    }
    room = attr_str_room(span, key_len, n);
    if (room < n) {
        /* the span is nearly full: cut at a character boundary */
        while (room > 0 && ((unsigned char)value[room] & 0xc0) == 0x80) {
            room--;
        }
        n = room;
    }
    o = attr_begin(span, key, key_len, pb_field_size(n));
    if (o != NULL && n < 128) {
        *o++ = PB_TAG(1, 2);
        *o++ = (char)n;
        copy_small(o, value, n);
    } else if (o != NULL) {
        pb_bytes(o, PB_TAG(1, 2), value, n);
    }
}

void
trace_span_put_str(struct trace_span *span, const char *key, size_t key_len, const char *value,
                   size_t len)
{
    size_t kv = 2 + key_len + 2 + 2 + len; /* key, AnyValue, its string */
    uint64_t bit = key_bit(key, key_len);
    char *o;

    /*
     * The request path's case: a key not held yet, a short ASCII value and
     * room to spare. Every length fits one byte, so the field is written
     * straight, without the general path's sizing and lookup.
     */
    if (!(span->key_bits & bit) && len < TRACE_ATTR_STR_MAX && kv < 128 &&
        span->nattrs < TRACE_MAX_ATTRS && span->attrs_len + 2 + kv <= sizeof(span->attrs) &&
        all_ascii(value, len)) {
        o = pb_kv_head(span->attrs + span->attrs_len, ATTR_FIELD, key, key_len, kv, 2 + len);
        o[0] = PB_TAG(1, 2);
        o[1] = (char)len;
        copy_small(o + 2, value, len);
        span->attrs_len = (uint16_t)(span->attrs_len + 2 + kv);
        span->nattrs++;
        span->key_bits |= bit;
        return;
    }
    put_str_general(span, key, key_len, value, len); /* apart: its buffer costs this path a frame */
}

void
trace_span_put_int(struct trace_span *span, const char *key, size_t key_len, int64_t value)
{
    uint64_t bit = key_bit(key, key_len);
    char *o;

    /* As for strings: a new key, a value below 2^14 (status codes, counts, ports) */
    if (!(span->key_bits & bit) && value >= 0 && value < (1 << 14) && key_len < 100 &&
        span->nattrs < TRACE_MAX_ATTRS && span->attrs_len + 2 + key_len + 7 <= sizeof(span->attrs)) {
        size_t any = value < 128 ? 2 : 3, kv = 2 + key_len + 2 + any;
        o = pb_kv_head(span->attrs + span->attrs_len, ATTR_FIELD, key, key_len, kv, any);
        *o++ = PB_TAG(3, 0);
        pb_varint(o, (uint64_t)value);
        span->attrs_len = (uint16_t)(span->attrs_len + 2 + kv);
        span->nattrs++;
        span->key_bits |= bit;
        return;
    }
    o = attr_begin(span, key, key_len, 1 + pb_varint_size((uint64_t)value));

    if (o != NULL) {
        *o++ = PB_TAG(3, 0);
        pb_varint(o, (uint64_t)value);
    }
}

void
trace_span_put_double(struct trace_span *span, const char *key, size_t key_len, double value)
{
    char *o = attr_begin(span, key, key_len, 9);
    uint64_t bits;

    if (o != NULL) {
        memcpy(&bits, &value, sizeof(bits));
        *o++ = PB_TAG(4, 1);
        pb_fixed64(o, bits);
    }
}

void
trace_span_put_bool(struct trace_span *span, const char *key, size_t key_len, bool value)
{
    char *o = attr_begin(span, key, key_len, 2);

    if (o != NULL) {
        *o++ = PB_TAG(2, 0);
        *o = value ? 1 : 0;
    }
}

size_t
trace_attr_block_take(struct trace_attr_block *b, const struct trace_span *span)
{
    const char *p = span->attrs, *stop = span->attrs + span->attrs_len;
    struct attr_field f;

    b->key_bits = 0;
    b->len = 0;
    b->nattrs = 0;
    while (p < stop) {
        p = attr_field_read(p, &f);
        if ((size_t)(f.end - f.start) > sizeof(b->bytes) - b->len) {
            break;
        }
        memcpy(b->bytes + b->len, f.start, (size_t)(f.end - f.start));
        b->len = (uint16_t)(b->len + (f.end - f.start));
        b->key_bits |= key_bit(f.key, f.key_len);
        b->nattrs++;
    }
    return b->nattrs;
}

static void any_decode(const char *any, struct trace_value *out);

void
trace_span_put_block(struct trace_span *span, const struct trace_attr_block *b)
{
    const char *p = b->bytes, *stop = b->bytes + b->len;
    struct attr_field f;

    if (!(span->key_bits & b->key_bits) && span->nattrs + b->nattrs <= TRACE_MAX_ATTRS &&
        span->attrs_len + b->len <= sizeof(span->attrs)) {
        memcpy(span->attrs + span->attrs_len, b->bytes, b->len);
        span->attrs_len = (uint16_t)(span->attrs_len + b->len);
        span->nattrs = (uint8_t)(span->nattrs + b->nattrs);
        span->key_bits |= b->key_bits;
        return;
    }
    while (p < stop) { /* a key held already, or short of room: one by one */
        struct trace_value v;
        p = attr_field_read(p, &f);
        any_decode(f.any, &v);
        switch (v.type) {
        case TRACE_ATTR_STRING:
            trace_span_put_str(span, f.key, f.key_len, v.str, v.len);
            break;
        case TRACE_ATTR_INT:
            trace_span_put_int(span, f.key, f.key_len, v.i);
            break;
        case TRACE_ATTR_DOUBLE:
            trace_span_put_double(span, f.key, f.key_len, v.d);
            break;
        default:
            trace_span_put_bool(span, f.key, f.key_len, v.b);
            break;
        }
    }
}

/* An encoded AnyValue's content (one field) as a value. */
static void
any_decode(const char *any, struct trace_value *out)
{
    memset(out, 0, sizeof(*out));
    switch (any[0]) {
    case PB_TAG(1, 2):
        out->type = TRACE_ATTR_STRING;
        out->str = pb_read_varint(any + 1, &out->len);
        break;
    case PB_TAG(2, 0):
        out->type = TRACE_ATTR_BOOL;
        out->b = any[1] != 0;
        break;
    case PB_TAG(3, 0): {
        size_t v;
        pb_read_varint(any + 1, &v);
        out->type = TRACE_ATTR_INT;
        out->i = (int64_t)(uint64_t)v;
        break;
    }
    default: { /* PB_TAG(4, 1): fixed64, little-endian */
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++) {
            bits |= (uint64_t)(unsigned char)any[1 + i] << (8 * i);
        }
        out->type = TRACE_ATTR_DOUBLE;
        memcpy(&out->d, &bits, sizeof(out->d));
        break;
    }
    }
}

bool
trace_span_find(const struct trace_span *span, const char *key, size_t key_len,
                struct trace_value *out)
{
    struct attr_field f;

    if (!attr_field_find(span, key, key_len, &f)) {
        return false;
    }
    any_decode(f.any, out);
    return true;
}

struct trace_event *
trace_span_add_event(struct trace_span *span, const char *name, uint64_t time_unix_ns)
{
    struct trace_event *ev;

    if (span->events == NULL) {
        span->events = xmalloc(sizeof(*span->events));
        span->events->n = 0;
        span->events->dropped = 0;
    }
    if (span->events->n >= TRACE_MAX_EVENTS) {
        span->events->dropped++;
        return NULL;
    }
    ev = &span->events->ev[span->events->n++];
    ev->time_unix_ns = time_unix_ns;
    ev->name = name;
    ev->name_len = (uint8_t)MIN(strlen(name), (size_t)UINT8_MAX);
    ev->nattrs = 0;
    ev->dropped_attrs = 0;
    ev->text_used = 0;
    return ev;
}

static struct trace_attr *
event_attr_slot(struct trace_event *ev, const char *key, enum trace_attr_type type)
{
    struct trace_attr *a;

    if (ev == NULL) {
        return NULL;
    }
    if (ev->nattrs >= TRACE_EVENT_ATTRS) {
        ev->dropped_attrs++;
        return NULL;
    }
    a = &ev->attrs[ev->nattrs++];
    a->key = key;
    a->key_len = (uint32_t)strlen(key);
    a->type = (uint8_t)type;
    return a;
}

void
trace_event_attr_str(struct trace_event *ev, const char *key, const char *value)
{
    struct trace_attr *a = event_attr_slot(ev, key, TRACE_ATTR_STRING);
    size_t room;

    if (a == NULL) {
        return;
    }
    room = sizeof(ev->text) - ev->text_used;
    if (value == NULL) {
        value = "";
    }
    if (room == 0) {
        a->v.off = sizeof(ev->text) - 1; /* the last value's NUL: an empty string */
        a->len = 0;
        return;
    }
    a->v.off = ev->text_used;
    a->len = (uint8_t)copy_utf8(ev->text + ev->text_used, MIN(room, TRACE_ATTR_STR_MAX), value,
                                strlen(value));
    ev->text_used = (uint16_t)(ev->text_used + a->len + 1);
}

void
trace_event_attr_int(struct trace_event *ev, const char *key, int64_t value)
{
    struct trace_attr *a = event_attr_slot(ev, key, TRACE_ATTR_INT);

    if (a != NULL) {
        a->v.i = value;
    }
}

void
trace_span_set_status(struct trace_span *span, enum trace_status_code code, const char *message)
{
    span->status = (uint8_t)code;
    span->status_message_len = 0;
    if (code == TRACE_STATUS_ERROR && message != NULL) {
        span->status_message_len = (uint8_t)copy_utf8(
            span->status_message, sizeof(span->status_message), message, strlen(message));
    }
}

void
trace_span_set_http_status(struct trace_span *span, int status)
{
    bool error;

    if (status > 0) {
        trace_span_attr_int(span, "http.response.status_code", status);
    }
    error = status >= 500 || (status >= 400 && span->kind == TRACE_KIND_CLIENT);
    if (!error) {
        return;
    }
    trace_span_set_status(span, TRACE_STATUS_ERROR, NULL);
    if (!trace_span_attr_get(span, "error.type", &(struct trace_value){0})) {
        char code[16];
        snprintf(code, sizeof(code), "%d", status);
        trace_span_attr_str(span, "error.type", code);
    }
}

void
trace_span_end(struct trace_span *span, uint64_t end_unix_ns)
{
    /* A clock step must not make a negative duration. */
    span->end_unix_ns = MAX(end_unix_ns, span->start_unix_ns);
}

/* ---- OTLP JSON ---- */

/*
 * The span encoder writes through a cursor into room reserved up front, the
 * way a span's size is bounded: the fixed fields, then each string at its
 * worst case (six bytes per byte escaped). Strings known plain are copied as
 * they are; the rest go through buf_json_string.
 */
#define PUT_LIT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) + sizeof(lit) - 1)

static char *
put_hex(char *o, const uint8_t *bytes, size_t n)
{
    *o++ = '"';
    trace_hex(bytes, n, o); /* its NUL is overwritten by the closing quote */
    o += 2 * n;
    *o++ = '"';
    return o;
}

static char *
put_quoted(char *o, const char *s, size_t len)
{
    *o++ = '"';
    memcpy(o, s, len);
    o += len;
    *o++ = '"';
    return o;
}

/* A string that may need escaping: through buf_json_string, then back to the cursor. */
static char *
put_json_string(struct buf *out, char *o, const char *s, size_t len)
{
    out->len = (size_t)(o - out->data);
    buf_json_string(out, s, len);
    return out->data + out->len;
}

/* A string as it is when it needs no escaping (the usual case), else escaped. */
static char *
put_string(struct buf *out, char *o, const char *s, size_t len)
{
    return util_json_plain_run(s, len) == len ? put_quoted(o, s, len)
                                               : put_json_string(out, o, s, len);
}

/* text: where a string value's offset points (a span's or an event's text). */
static char *
put_attr_value(struct buf *out, char *o, const char *text, const struct trace_attr *a)
{
    switch (a->type) {
    case TRACE_ATTR_STRING:
        o = PUT_LIT(o, "{\"stringValue\":");
        o = put_string(out, o, text + a->v.off, a->len);
        break;
    case TRACE_ATTR_INT:
        /* Protobuf JSON writes 64-bit integers as strings. */
        o = PUT_LIT(o, "{\"intValue\":\"");
        o = util_put_i64(o, a->v.i);
        *o++ = '"';
        break;
    case TRACE_ATTR_DOUBLE:
        if (isnan(a->v.d)) {
            o = PUT_LIT(o, "{\"doubleValue\":\"NaN\"");
        } else if (isinf(a->v.d)) {
            o = a->v.d > 0 ? PUT_LIT(o, "{\"doubleValue\":\"Infinity\"")
                           : PUT_LIT(o, "{\"doubleValue\":\"-Infinity\"");
        } else {
            o += snprintf(o, 48, "{\"doubleValue\":%.17g", a->v.d);
        }
        break;
    case TRACE_ATTR_BOOL:
        o = a->v.b ? PUT_LIT(o, "{\"boolValue\":true") : PUT_LIT(o, "{\"boolValue\":false");
        break;
    }
    *o++ = '}';
    return o;
}

/* Room for everything but the strings: ids, times, punctuation, field names. */
#define SPAN_JSON_FIXED 512
/* Per attribute besides its key and string: {"key":"","value":{"doubleValue":-1.5e+308}}, */
#define ATTR_JSON_FIXED 96
/* Per event besides its name and attributes: time, field names, punctuation, dropped count. */
#define EVENT_JSON_FIXED 128

/* The attributes as an OTLP JSON array's members, at o (room reserved by the caller). */
static char *
put_attrs(struct buf *out, char *o, const char *text, const struct trace_attr *attrs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        const struct trace_attr *a = &attrs[i];
        if (i > 0) {
            *o++ = ',';
        }
        /* Keys are the code's own literals: plain ASCII (struct trace_attr). */
        o = PUT_LIT(o, "{\"key\":");
        o = put_quoted(o, a->key, a->key_len);
        o = PUT_LIT(o, ",\"value\":");
        o = put_attr_value(out, o, text, a);
        *o++ = '}';
    }
    return o;
}

/* A span's encoded attributes as OTLP JSON array members, at o (room reserved by the caller). */
static char *
put_span_attrs(struct buf *out, char *o, const struct trace_span *span)
{
    const char *p = span->attrs, *end = span->attrs + span->attrs_len;

    while (p < end) {
        struct attr_field f;
        struct trace_value v;
        struct trace_attr a = {.key = NULL};

        if (p > span->attrs) {
            *o++ = ',';
        }
        p = attr_field_read(p, &f);
        any_decode(f.any, &v);
        o = PUT_LIT(o, "{\"key\":");
        o = put_string(out, o, f.key, f.key_len);
        o = PUT_LIT(o, ",\"value\":");
        a.type = (uint8_t)v.type;
        switch (v.type) {
        case TRACE_ATTR_STRING:
            /* put_attr_value reads a string at text + off: here text is the value itself */
            a.len = (uint8_t)MIN(v.len, (size_t)UINT8_MAX);
            a.v.off = 0;
            break;
        case TRACE_ATTR_INT:
            a.v.i = v.i;
            break;
        case TRACE_ATTR_DOUBLE:
            a.v.d = v.d;
            break;
        case TRACE_ATTR_BOOL:
            a.v.b = v.b;
            break;
        }
        o = put_attr_value(out, o, v.str, &a);
        *o++ = '}';
    }
    return o;
}

static size_t
attrs_json_room(const struct trace_attr *attrs, unsigned n)
{
    size_t room = 0;

    for (unsigned i = 0; i < n; i++) {
        room += ATTR_JSON_FIXED + attrs[i].key_len;
        if (attrs[i].type == TRACE_ATTR_STRING) {
            room += 6 * (size_t)attrs[i].len;
        }
    }
    return room;
}

/* Span.events in OTLP JSON: ,"events":[{"timeUnixNano":"..","name":"..","attributes":[..]}] */
static char *
put_events(struct buf *out, char *o, const struct trace_events *evs)
{
    o = PUT_LIT(o, ",\"events\":[");
    for (uint32_t i = 0; i < evs->n; i++) {
        const struct trace_event *ev = &evs->ev[i];
        if (i > 0) {
            *o++ = ',';
        }
        o = PUT_LIT(o, "{\"timeUnixNano\":\"");
        o = util_put_i64(o, (int64_t)ev->time_unix_ns);
        o = PUT_LIT(o, "\",\"name\":");
        o = put_quoted(o, ev->name, ev->name_len);
        o = PUT_LIT(o, ",\"attributes\":[");
        o = put_attrs(out, o, ev->text, ev->attrs, ev->nattrs);
        *o++ = ']';
        if (ev->dropped_attrs > 0) {
            o = PUT_LIT(o, ",\"droppedAttributesCount\":");
            o = util_put_i64(o, ev->dropped_attrs);
        }
        *o++ = '}';
    }
    *o++ = ']';
    if (evs->dropped > 0) {
        o = PUT_LIT(o, ",\"droppedEventsCount\":");
        o = util_put_i64(o, evs->dropped);
    }
    return o;
}

void
trace_span_json(struct buf *out, const struct trace_span *span)
{
    size_t room = SPAN_JSON_FIXED + 6 * (size_t)(span->name_len + span->status_message_len);
    char *o;

    /* every byte of the encoded attributes escaped, and each one's JSON frame */
    room += 6 * (size_t)span->attrs_len + ATTR_JSON_FIXED * (size_t)span->nattrs;
    if (span->events != NULL) {
        for (uint32_t i = 0; i < span->events->n; i++) {
            const struct trace_event *ev = &span->events->ev[i];
            room += EVENT_JSON_FIXED + ev->name_len + attrs_json_room(ev->attrs, ev->nattrs);
        }
    }
    buf_reserve(out, room);
    o = out->data + out->len;
    o = PUT_LIT(o, "{\"traceId\":");
    o = put_hex(o, span->trace_id, TRACE_ID_SIZE);
    o = PUT_LIT(o, ",\"spanId\":");
    o = put_hex(o, span->span_id, TRACE_SPAN_ID_SIZE);
    if (span->has_parent) {
        o = PUT_LIT(o, ",\"parentSpanId\":");
        o = put_hex(o, span->parent_span_id, TRACE_SPAN_ID_SIZE);
    }
    o = PUT_LIT(o, ",\"name\":");
    o = put_string(out, o, span->name, span->name_len);
    o = PUT_LIT(o, ",\"kind\":");
    o = util_put_i64(o, (int)span->kind);
    o = PUT_LIT(o, ",\"startTimeUnixNano\":\"");
    o = util_put_i64(o, (int64_t)span->start_unix_ns);
    o = PUT_LIT(o, "\",\"endTimeUnixNano\":\"");
    o = util_put_i64(o, (int64_t)(span->end_unix_ns ? span->end_unix_ns : span->start_unix_ns));
    o = PUT_LIT(o, "\",\"attributes\":[");
    o = put_span_attrs(out, o, span);
    *o++ = ']';
    if (span->dropped_attrs > 0) {
        o = PUT_LIT(o, ",\"droppedAttributesCount\":");
        o = util_put_i64(o, span->dropped_attrs);
    }
    if (span->events != NULL) {
        o = put_events(out, o, span->events);
    }
    o = PUT_LIT(o, ",\"status\":{\"code\":");
    o = util_put_i64(o, (int)span->status);
    if (span->status_message_len > 0) {
        o = PUT_LIT(o, ",\"message\":");
        o = put_json_string(out, o, span->status_message, span->status_message_len);
    }
    o = PUT_LIT(o, "}}");
    out->len = (size_t)(o - out->data);
    out->data[out->len] = '\0';
}

void
trace_otlp_json_open(struct buf *out, const char *resource_json, const char *scope_version)
{
    buf_puts(out, "{\"resourceSpans\":[{\"resource\":");
    buf_puts(out, resource_json);
    buf_puts(out, ",\"scopeSpans\":[{\"scope\":{\"name\":\"akosha\",\"version\":");
    buf_json_string(out, scope_version, strlen(scope_version));
    buf_puts(out, "},\"spans\":[");
}

void
trace_otlp_json_close(struct buf *out)
{
    buf_puts(out, "]}]}]}");
}

void
trace_encode_otlp_json(struct buf *out, const char *resource_json, const char *scope_version,
                       struct trace_span *const *spans, size_t n)
{
    trace_otlp_json_open(out, resource_json, scope_version);
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            buf_putc(out, ',');
        }
        trace_span_json(out, spans[i]);
    }
    trace_otlp_json_close(out);
}

/* ---- OTLP protobuf ---- */

/* AnyValue: string_value 1, bool_value 2, int_value 3, double_value 4. */
static inline __attribute__((always_inline)) char *
pb_any(char *o, const char *text, const struct trace_attr *a)
{
    switch (a->type) {
    case TRACE_ATTR_STRING:
        return pb_bytes(o, PB_TAG(1, 2), text + a->v.off, a->len);
    case TRACE_ATTR_INT:
        *o++ = PB_TAG(3, 0);
        return pb_varint(o, (uint64_t)a->v.i);
    case TRACE_ATTR_DOUBLE: {
        uint64_t bits;
        memcpy(&bits, &a->v.d, sizeof(bits));
        *o++ = PB_TAG(4, 1);
        return pb_fixed64(o, bits);
    }
    case TRACE_ATTR_BOOL:
        *o++ = PB_TAG(2, 0);
        *o++ = a->v.b ? 1 : 0;
        return o;
    }
    return o;
}

/* Room a span's encoding may take at most: fixed fields, then each string. */
static size_t
pb_span_room(const struct trace_span *span)
{
    /* tags, ids, times, kind, status code, dropped count, length bytes */
    size_t n = 96 + span->name_len + span->status_message_len;

    n += span->attrs_len; /* encoded already */
    if (span->events != NULL) {
        n += 8; /* dropped_events_count */
        for (uint32_t e = 0; e < span->events->n; e++) {
            const struct trace_event *ev = &span->events->ev[e];
            /* tag and length, time, name, dropped count; then the attributes */
            n += 32 + ev->name_len;
            for (unsigned i = 0; i < ev->nattrs; i++) {
                n += 24 + ev->attrs[i].key_len + ev->attrs[i].len;
            }
        }
    }
    return n;
}

/* AnyValue's size for a: its one field, tag and value. */
static inline __attribute__((always_inline)) size_t
pb_any_size(const struct trace_attr *a)
{
    switch (a->type) {
    case TRACE_ATTR_STRING:
        return pb_field_size(a->len);
    case TRACE_ATTR_INT:
        return 1 + pb_varint_size((uint64_t)a->v.i);
    case TRACE_ATTR_DOUBLE:
        return 9;
    case TRACE_ATTR_BOOL:
        return 2;
    }
    return 0;
}

/* An event's attributes as KeyValue fields (tag field), at o (room reserved by the caller). */
static char *
pb_attrs(char *o, char field_tag, const char *text, const struct trace_attr *attrs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        const struct trace_attr *a = &attrs[i];
        size_t any = pb_any_size(a), kv;

        pb_kv_size(a->key_len, any, &kv);
        o = pb_kv_head(o, field_tag, a->key, a->key_len, kv, any);
        o = pb_any(o, text, a);
    }
    return o;
}

void
trace_span_proto(struct buf *out, const struct trace_span *span)
{
    char *o, *sp;

    buf_reserve(out, pb_span_room(span));
    o = out->data + out->len;
    /* ScopeSpans.spans = 2 */
    sp = o = pb_open(o, PB_TAG(2, 2), 2);
    o = pb_bytes(o, PB_TAG(1, 2), span->trace_id, TRACE_ID_SIZE);
    o = pb_bytes(o, PB_TAG(2, 2), span->span_id, TRACE_SPAN_ID_SIZE);
    if (span->has_parent) {
        o = pb_bytes(o, PB_TAG(4, 2), span->parent_span_id, TRACE_SPAN_ID_SIZE);
    }
    o = pb_bytes(o, PB_TAG(5, 2), span->name, span->name_len);
    *o++ = PB_TAG(6, 0);
    *o++ = (char)span->kind;
    *o++ = PB_TAG(7, 1);
    o = pb_fixed64(o, span->start_unix_ns);
    *o++ = PB_TAG(8, 1);
    o = pb_fixed64(o, span->end_unix_ns ? span->end_unix_ns : span->start_unix_ns);
    /* Span.attributes = 9 */
    memcpy(o, span->attrs, span->attrs_len);
    o += span->attrs_len;
    if (span->dropped_attrs > 0) {
        *o++ = PB_TAG(10, 0);
        o = pb_varint(o, span->dropped_attrs);
    }
    for (uint32_t e = 0; span->events != NULL && e < span->events->n; e++) {
        const struct trace_event *ev = &span->events->ev[e];
        /* Span.events = 11: Event {time_unix_nano 1, name 2, attributes 3, dropped 4} */
        char *evo = o = pb_open(o, PB_TAG(11, 2), 2);
        *o++ = PB_TAG(1, 1);
        o = pb_fixed64(o, ev->time_unix_ns);
        o = pb_bytes(o, PB_TAG(2, 2), ev->name, ev->name_len);
        o = pb_attrs(o, PB_TAG(3, 2), ev->text, ev->attrs, ev->nattrs);
        if (ev->dropped_attrs > 0) {
            *o++ = PB_TAG(4, 0);
            o = pb_varint(o, ev->dropped_attrs);
        }
        o = pb_close(evo, o, 2);
    }
    if (span->events != NULL && span->events->dropped > 0) {
        /* Span.dropped_events_count = 12 */
        *o++ = PB_TAG(12, 0);
        o = pb_varint(o, span->events->dropped);
    }
    if (span->status != TRACE_STATUS_UNSET || span->status_message_len > 0) {
        /* Status: message 2, code 3 (left out when UNSET, the default) */
        char *st = o = pb_open(o, PB_TAG(15, 2), 1);
        if (span->status_message_len > 0) {
            o = pb_bytes(o, PB_TAG(2, 2), span->status_message, span->status_message_len);
        }
        if (span->status != TRACE_STATUS_UNSET) {
            *o++ = PB_TAG(3, 0);
            *o++ = (char)span->status;
        }
        o = pb_close(st, o, 1);
    }
    o = pb_close(sp, o, 2);
    out->len = (size_t)(o - out->data);
}

void
trace_otlp_proto_open(struct buf *out, const struct buf *resource, const char *scope_version,
                      size_t spans_len)
{
    size_t vlen = strlen(scope_version);
    /* InstrumentationScope: name 1, version 2 */
    size_t scope = pb_field_size(6) + pb_field_size(vlen);
    /* ScopeSpans: scope 1, spans 2 (already fields, spans_len bytes) */
    size_t scope_spans = pb_field_size(scope) + spans_len;
    /* ResourceSpans: resource 1, scope_spans 2 */
    size_t resource_spans = pb_field_size(resource->len) + pb_field_size(scope_spans);
    char *o;

    buf_reserve(out, pb_field_size(resource_spans) - spans_len);
    o = out->data + out->len;
    /* ExportTraceServiceRequest.resource_spans = 1 */
    *o++ = PB_TAG(1, 2);
    o = pb_varint(o, resource_spans);
    o = pb_bytes(o, PB_TAG(1, 2), resource->data, resource->len);
    *o++ = PB_TAG(2, 2);
    o = pb_varint(o, scope_spans);
    *o++ = PB_TAG(1, 2);
    o = pb_varint(o, scope);
    o = pb_bytes(o, PB_TAG(1, 2), "akosha", 6);
    o = pb_bytes(o, PB_TAG(2, 2), scope_version, vlen);
    out->len = (size_t)(o - out->data);
}

void
trace_encode_otlp_proto(struct buf *out, const struct buf *resource, const char *scope_version,
                        struct trace_span *const *spans, size_t n)
{
    struct buf body;

    buf_init(&body);
    for (size_t i = 0; i < n; i++) {
        trace_span_proto(&body, spans[i]);
    }
    trace_otlp_proto_open(out, resource, scope_version, body.len);
    buf_append(out, body.data, body.len);
    buf_free(&body);
}

/* ---- k=v lists ---- */

/* Percent-encoding, unlike traceparent, allows either case. */
static int
any_hex_value(char c)
{
    return lower_hex_value(c >= 'A' && c <= 'F' ? (char)(c - 'A' + 'a') : c);
}

static char *
percent_decode(const char *s, size_t len)
{
    char *out = xmalloc(len + 1);
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = any_hex_value(s[i + 1])) >= 0 &&
            (lo = any_hex_value(s[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            /* A stray '%' is kept as written rather than losing the value. */
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

struct kv_member {
    const char *key, *value;
    size_t key_len, value_len;
};

int
trace_kv_list_parse(const char *list, void (*fn)(void *arg, const char *key, const char *value),
                    void *arg, const char **cause)
{
    struct kv_member *members = NULL;
    size_t n = 0, cap = 0;
    const char *p = list, *end = list + strlen(list);

    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *m = p, *eq;
        size_t mlen = (size_t)((comma ? comma : end) - p);
        struct kv_member kv;

        p = comma ? comma + 1 : end;
        trim(&m, &mlen);
        if (mlen == 0) {
            continue;
        }
        eq = memchr(m, '=', mlen);
        if (eq == NULL) {
            free(members);
            *cause = "a list member has no '='";
            return -1;
        }
        kv.key = m;
        kv.key_len = (size_t)(eq - m);
        kv.value = eq + 1;
        kv.value_len = mlen - kv.key_len - 1;
        trim(&kv.key, &kv.key_len);
        trim(&kv.value, &kv.value_len);
        if (kv.key_len == 0) {
            free(members);
            *cause = "a list member has an empty key";
            return -1;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            members = xrealloc(members, cap * sizeof(*members));
        }
        members[n++] = kv;
    }
    for (size_t i = 0; i < n; i++) {
        char *key = percent_decode(members[i].key, members[i].key_len);
        char *value = percent_decode(members[i].value, members[i].value_len);
        fn(arg, key, value);
        free(key);
        free(value);
    }
    free(members);
    return 0;
}

/* ---- settings ---- */

void
telemetry_settings_init(struct telemetry_settings *t)
{
    memset(t, 0, sizeof(*t));
    t->service_name = xstrdup("akosha");
    t->environment = xstrdup("development");
    t->otlp_endpoint = xstrdup("");
    t->otlp_traces_endpoint = xstrdup("");
    t->otlp_headers = xstrdup("");
    t->resource_attributes = xstrdup("");
    t->sample_rate = -1.0;
    t->sampler_kind = -1;
    t->sampler_arg = -1.0;
    t->protocol = -1;
    t->max_queue_size = 2048;
    t->max_export_batch = 512;
    t->schedule_delay_ms = 5000;
    t->export_timeout_ms = 30000;
    t->request_timeout_ms = 10000;
    t->retry_base_ms = 1000;
    t->retry_max_ms = 5000;
}

void
telemetry_settings_free(struct telemetry_settings *t)
{
    free(t->service_name);
    free(t->environment);
    free(t->otlp_endpoint);
    free(t->otlp_traces_endpoint);
    free(t->otlp_headers);
    free(t->resource_attributes);
    memset(t, 0, sizeof(*t));
}

void
telemetry_settings_set(char **field, const char *value)
{
    char *copy = xstrdup(value ? value : "");

    free(*field);
    *field = copy;
}

static const char *
default_getenv(const char *name)
{
    return getenv(name);
}

/* OTel: an empty variable counts as unset. */
static const char *
env_get(const char *(*getenv_fn)(const char *), const char *name)
{
    const char *v = getenv_fn(name);
    return (v != NULL && v[0] != '\0') ? v : NULL;
}

static const char *
env_first(const char *(*getenv_fn)(const char *), const char *a, const char *b)
{
    const char *v = env_get(getenv_fn, a);
    return v ? v : env_get(getenv_fn, b);
}

static bool
parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    while (is_ows(*s)) {
        s++;
    }
    if (*s < '0' || *s > '9') {
        return false;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    while (is_ows(*end)) {
        end++;
    }
    if (errno != 0 || *end != '\0') {
        return false;
    }
    *out = v;
    return true;
}

static void
env_u64(const char *(*getenv_fn)(const char *), const char *name, uint64_t min, uint64_t *field)
{
    const char *v = env_get(getenv_fn, name);
    uint64_t x;

    if (v == NULL) {
        return;
    }
    if (!parse_u64(v, &x) || x < min) {
        log_warn("telemetry: %s: not an integer >= %llu, ignored", name, (unsigned long long)min);
        return;
    }
    *field = x;
}

struct resource_scan {
    const char *service_name;
    const char *environment;
    char *found_service;
    char *found_environment;
};

static void
scan_resource_attr(void *arg, const char *key, const char *value)
{
    struct resource_scan *rs = arg;

    if (strcmp(key, "service.name") == 0) {
        free(rs->found_service);
        rs->found_service = xstrdup(value);
    } else if (strcmp(key, "deployment.environment") == 0 ||
               strcmp(key, "deployment.environment.name") == 0) {
        free(rs->found_environment);
        rs->found_environment = xstrdup(value);
    }
}

static void
count_member(void *arg, const char *key, const char *value)
{
    (void)key;
    (void)value;
    (*(size_t *)arg)++;
}

int
trace_protocol_parse(const char *name)
{
    if (strcmp(name, "http/protobuf") == 0) {
        return 0;
    }
    if (strcmp(name, "http/json") == 0) {
        return 1;
    }
    if (strcmp(name, "grpc") == 0) {
        return 2;
    }
    return -1;
}

void
telemetry_apply_env(struct telemetry_settings *t, const char *(*getenv_fn)(const char *))
{
    const char *v, *cause;

    if (getenv_fn == NULL) {
        getenv_fn = default_getenv;
    }

    /* Environment before the service name: both may come from the resource list. */
    if ((v = env_get(getenv_fn, "ENVIRONMENT")) != NULL) {
        telemetry_settings_set(&t->environment, v);
    }
    if ((v = env_get(getenv_fn, "OTEL_RESOURCE_ATTRIBUTES")) != NULL) {
        struct resource_scan rs = {0};
        if (trace_kv_list_parse(v, scan_resource_attr, &rs, &cause) < 0) {
            log_warn("telemetry: OTEL_RESOURCE_ATTRIBUTES: %s, ignored", cause);
        } else {
            telemetry_settings_set(&t->resource_attributes, v);
            if (rs.found_service != NULL && rs.found_service[0] != '\0') {
                telemetry_settings_set(&t->service_name, rs.found_service);
            }
            if (rs.found_environment != NULL && rs.found_environment[0] != '\0') {
                telemetry_settings_set(&t->environment, rs.found_environment);
            }
        }
        free(rs.found_service);
        free(rs.found_environment);
    }
    if ((v = env_get(getenv_fn, "OTEL_SERVICE_NAME")) != NULL) {
        telemetry_settings_set(&t->service_name, v);
    }

    if ((v = env_get(getenv_fn, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) != NULL) {
        telemetry_settings_set(&t->otlp_traces_endpoint, v);
    }
    if ((v = env_first(getenv_fn, "OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP_ENDPOINT")) != NULL) {
        telemetry_settings_set(&t->otlp_endpoint, v);
    }

    v = env_first(getenv_fn, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS");
    if (v != NULL) {
        size_t count = 0;
        if (trace_kv_list_parse(v, count_member, &count, &cause) < 0) {
            log_warn("telemetry: OTLP headers variable: %s, ignored", cause);
        } else {
            telemetry_settings_set(&t->otlp_headers, v);
        }
    }

    v = env_first(getenv_fn, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                  "OTEL_EXPORTER_OTLP_COMPRESSION");
    if (v != NULL) {
        if (strcasecmp(v, "gzip") == 0) {
            t->gzip = true;
        } else if (strcasecmp(v, "none") == 0) {
            t->gzip = false;
        } else {
            log_warn("telemetry: OTLP compression must be gzip or none, ignored");
        }
    }

    v = env_first(getenv_fn, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL");
    if (v != NULL) {
        int protocol = trace_protocol_parse(v);
        if (protocol < 0) {
            log_warn("telemetry: OTLP protocol must be http/protobuf, http/json or grpc, ignored");
        } else {
            t->protocol = protocol;
        }
    }

    if (env_get(getenv_fn, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") != NULL) {
        env_u64(getenv_fn, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 1, &t->request_timeout_ms);
    } else {
        env_u64(getenv_fn, "OTEL_EXPORTER_OTLP_TIMEOUT", 1, &t->request_timeout_ms);
    }

    if ((v = env_get(getenv_fn, "OTEL_TRACES_SAMPLER")) != NULL) {
        int kind = trace_sampler_kind_parse(v);
        if (kind < 0) {
            log_warn("telemetry: OTEL_TRACES_SAMPLER: unknown sampler \"%s\", ignored", v);
        } else {
            t->sampler_kind = kind;
        }
    }
    if ((v = env_get(getenv_fn, "OTEL_TRACES_SAMPLER_ARG")) != NULL) {
        char *end;
        double arg;
        errno = 0;
        arg = strtod(v, &end);
        if (errno != 0 || end == v || *end != '\0' || !(arg >= 0.0 && arg <= 1.0)) {
            log_warn("telemetry: OTEL_TRACES_SAMPLER_ARG: not a ratio in [0, 1], ignored");
        } else {
            t->sampler_arg = arg;
        }
    }

    env_u64(getenv_fn, "OTEL_BSP_MAX_QUEUE_SIZE", 1, &t->max_queue_size);
    env_u64(getenv_fn, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1, &t->max_export_batch);
    /* 0 would make the exporter thread spin; 1 ms is as eager as it gets. */
    env_u64(getenv_fn, "OTEL_BSP_SCHEDULE_DELAY", 1, &t->schedule_delay_ms);
    env_u64(getenv_fn, "OTEL_BSP_EXPORT_TIMEOUT", 1, &t->export_timeout_ms);
    if (t->max_export_batch > t->max_queue_size) {
        log_warn("telemetry: OTEL_BSP_MAX_EXPORT_BATCH_SIZE above the queue size, using %llu",
                 (unsigned long long)t->max_queue_size);
        t->max_export_batch = t->max_queue_size;
    }

    if ((v = env_get(getenv_fn, "OTEL_SDK_DISABLED")) != NULL) {
        t->disabled = strcasecmp(v, "true") == 0;
    }

    if (t->protocol < 0) {
        /* Port 4317 is OTLP/gRPC's: HTTP bodies sent there could only fail. */
        const char *endpoint = t->otlp_traces_endpoint != NULL && t->otlp_traces_endpoint[0]
                                   ? t->otlp_traces_endpoint
                                   : t->otlp_endpoint;
        if (endpoint != NULL && telemetry_url_port(endpoint) == TELEMETRY_GRPC_PORT) {
            log_info("telemetry: the OTLP endpoint's port is %d and no protocol is given: "
                     "exporting with OTLP/gRPC",
                     TELEMETRY_GRPC_PORT);
            t->protocol = TELEMETRY_GRPC;
        } else {
            t->protocol = TELEMETRY_HTTP_PROTOBUF;
        }
    }
}

/* Where url's authority starts (past "scheme://") and its length (up to '/', '?' or '#'). */
static const char *
url_authority(const char *url, size_t *len)
{
    const char *p = strstr(url, "://");

    p = p != NULL ? p + 3 : url;
    *len = strcspn(p, "/?#");
    return p;
}

int
telemetry_url_port(const char *url)
{
    size_t len, host_start = 0;
    const char *auth = url_authority(url, &len), *colon = NULL;
    long port = 0;

    for (size_t i = 0; i < len; i++) {
        if (auth[i] == '@') {
            host_start = i + 1; /* user:password@ */
        }
    }
    for (size_t i = host_start; i < len; i++) {
        if (auth[i] == ']') {
            colon = NULL; /* an IPv6 literal's colons are not the port's */
        } else if (auth[i] == ':') {
            colon = auth + i;
        }
    }
    if (colon == NULL || colon + 1 == auth + len) {
        if (strncasecmp(url, "https://", 8) == 0) {
            return 443;
        }
        return strstr(url, "://") == NULL || strncasecmp(url, "http://", 7) == 0 ? 80 : -1;
    }
    for (const char *p = colon + 1; p < auth + len; p++) {
        if (*p < '0' || *p > '9' || port > 65535) {
            return -1;
        }
        port = port * 10 + (*p - '0');
    }
    return port <= 65535 ? (int)port : -1;
}

char *
telemetry_traces_url(const struct telemetry_settings *t)
{
    size_t len;

    if (t->disabled) {
        return NULL;
    }
    if (t->protocol == TELEMETRY_GRPC) {
        const char *endpoint = t->otlp_traces_endpoint != NULL && t->otlp_traces_endpoint[0]
                                   ? t->otlp_traces_endpoint
                                   : t->otlp_endpoint;
        const char *auth;
        if (endpoint == NULL || endpoint[0] == '\0') {
            return NULL;
        }
        auth = url_authority(endpoint, &len);
        if (auth == endpoint) {
            return xasprintf("http://%.*s%s", (int)len, auth, TELEMETRY_GRPC_PATH);
        }
        return xasprintf("%.*s%s", (int)(auth + len - endpoint), endpoint, TELEMETRY_GRPC_PATH);
    }
    if (t->otlp_traces_endpoint != NULL && t->otlp_traces_endpoint[0] != '\0') {
        return xstrdup(t->otlp_traces_endpoint);
    }
    if (t->otlp_endpoint == NULL || t->otlp_endpoint[0] == '\0') {
        return NULL;
    }
    len = strlen(t->otlp_endpoint);
    while (len > 0 && t->otlp_endpoint[len - 1] == '/') {
        len--;
    }
    return xasprintf("%.*s/v1/traces", (int)len, t->otlp_endpoint);
}

void
telemetry_sampler(const struct telemetry_settings *t, struct trace_sampler *out)
{
    double ratio;

    if (t->sample_rate >= 0.0) {
        ratio = t->sample_rate;
    } else if (t->environment != NULL && strcmp(t->environment, "development") == 0) {
        ratio = 1.0;
    } else {
        ratio = 0.1;
    }
    if (t->disabled) {
        trace_sampler_init(out, TRACE_SAMPLER_ALWAYS_OFF, 0.0);
    } else if (t->sampler_kind >= 0) {
        trace_sampler_init(out, (enum trace_sampler_kind)t->sampler_kind,
                           t->sampler_arg >= 0.0 ? t->sampler_arg : ratio);
    } else {
        trace_sampler_init(out, TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO, ratio);
    }
}

/* ---- resource ---- */

struct resource_attr {
    char *key;
    char *value;
    bool is_int;
    int64_t i;
};

struct resource_list {
    struct resource_attr *attrs;
    size_t n, cap;
};

static void
resource_put(struct resource_list *rl, const char *key, const char *value, bool is_int, int64_t i)
{
    struct resource_attr *a = NULL;

    for (size_t k = 0; k < rl->n; k++) {
        if (strcmp(rl->attrs[k].key, key) == 0) {
            a = &rl->attrs[k];
            free(a->value);
            break;
        }
    }
    if (a == NULL) {
        if (rl->n == rl->cap) {
            rl->cap = rl->cap ? rl->cap * 2 : 16;
            rl->attrs = xrealloc(rl->attrs, rl->cap * sizeof(*rl->attrs));
        }
        a = &rl->attrs[rl->n++];
        a->key = xstrdup(key);
    }
    a->value = value ? xstrdup(value) : NULL;
    a->is_int = is_int;
    a->i = i;
}

static void
resource_from_env(void *arg, const char *key, const char *value)
{
    /* The settings already resolved these two with their own precedence. */
    if (strcmp(key, "service.name") == 0 || strcmp(key, "deployment.environment") == 0) {
        return;
    }
    resource_put(arg, key, value, false, 0);
}

static void
resource_collect(struct resource_list *rl, const struct telemetry_settings *t,
                 const char *service_version, const char *host_name, int64_t pid)
{
    const char *cause;

    resource_put(rl, "service.name", t->service_name, false, 0);
    resource_put(rl, "service.namespace", "akosha", false, 0);
    resource_put(rl, "service.version", service_version, false, 0);
    resource_put(rl, "deployment.environment", t->environment, false, 0);
    if (host_name != NULL && host_name[0] != '\0') {
        resource_put(rl, "host.name", host_name, false, 0);
    }
    resource_put(rl, "process.pid", NULL, true, pid);
    if (t->resource_attributes != NULL && t->resource_attributes[0] != '\0') {
        /* Validated by telemetry_apply_env; a bad list simply adds nothing. */
        (void)trace_kv_list_parse(t->resource_attributes, resource_from_env, rl, &cause);
    }
    /* Both encodings carry valid UTF-8 only: keys and values are cleaned here once. */
    for (size_t k = 0; k < rl->n; k++) {
        struct resource_attr *a = &rl->attrs[k];
        size_t len = strlen(a->key);
        char *clean = xmalloc(len + 1);
        clean[copy_utf8(clean, len + 1, a->key, len)] = '\0';
        free(a->key);
        a->key = clean;
        if (!a->is_int) {
            len = strlen(a->value);
            clean = xmalloc(len + 1);
            clean[copy_utf8(clean, len + 1, a->value, len)] = '\0';
            free(a->value);
            a->value = clean;
        }
    }
}

static void
resource_list_free(struct resource_list *rl)
{
    for (size_t k = 0; k < rl->n; k++) {
        free(rl->attrs[k].key);
        free(rl->attrs[k].value);
    }
    free(rl->attrs);
}

void
trace_resource_json(struct buf *out, const struct telemetry_settings *t,
                    const char *service_version, const char *host_name, int64_t pid)
{
    struct resource_list rl = {0};

    resource_collect(&rl, t, service_version, host_name, pid);
    buf_puts(out, "{\"attributes\":[");
    for (size_t k = 0; k < rl.n; k++) {
        struct resource_attr *a = &rl.attrs[k];
        if (k > 0) {
            buf_putc(out, ',');
        }
        buf_puts(out, "{\"key\":");
        buf_json_string(out, a->key, strlen(a->key));
        if (a->is_int) {
            buf_printf(out, ",\"value\":{\"intValue\":\"%lld\"}}", (long long)a->i);
        } else {
            buf_puts(out, ",\"value\":{\"stringValue\":");
            buf_json_string(out, a->value, strlen(a->value));
            buf_puts(out, "}}");
        }
    }
    buf_puts(out, "]}");
    resource_list_free(&rl);
}

void
trace_resource_proto(struct buf *out, const struct telemetry_settings *t,
                     const char *service_version, const char *host_name, int64_t pid)
{
    struct resource_list rl = {0};

    resource_collect(&rl, t, service_version, host_name, pid);
    for (size_t k = 0; k < rl.n; k++) {
        struct resource_attr *a = &rl.attrs[k];
        size_t klen = strlen(a->key), vlen = a->is_int ? 0 : strlen(a->value);
        size_t any = a->is_int ? 1 + pb_varint_size((uint64_t)a->i) : pb_field_size(vlen);
        size_t kv = pb_field_size(klen) + pb_field_size(any);
        char *o;

        buf_reserve(out, pb_field_size(kv));
        o = out->data + out->len;
        /* Resource.attributes = 1, each a KeyValue */
        *o++ = PB_TAG(1, 2);
        o = pb_varint(o, kv);
        o = pb_bytes(o, PB_TAG(1, 2), a->key, klen);
        *o++ = PB_TAG(2, 2);
        o = pb_varint(o, any);
        if (a->is_int) {
            *o++ = PB_TAG(3, 0);
            o = pb_varint(o, (uint64_t)a->i);
        } else {
            o = pb_bytes(o, PB_TAG(1, 2), a->value, vlen);
        }
        out->len = (size_t)(o - out->data);
    }
    resource_list_free(&rl);
}
