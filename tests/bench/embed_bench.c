/*
 * embed_bench.c - throughput of the fallback path: hash embedding of 200-char
 * texts, rendering a 64-input OpenAI response, parsing a typical request.
 * Not a test: prints numbers. Build with -O2:
 *   gcc -std=gnu11 -O2 -Isrc src/util.c src/log.c src/embedder_hash.c src/embed_api.c \
 *       tests/bench/embed_bench.c $(pkg-config --cflags --libs jansson) -lm -o embed_bench
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed_api.h"
#include "embedder_hash.h"
#include "util.h"

#define NTEXTS 256
#define TEXT_LEN 200
#define DIM 384
#define MIN_RUN_US 1000000u

static const char *words[] = {
    "the",       "quick",   "brown",   "fox",       "jumps",    "over",    "lazy",    "dog",
    "embedding", "vector",  "search",  "retrieval", "model",    "service", "latency", "request",
    "upstream",  "circuit", "breaker", "retry",     "fallback", "sidecar", "proxy",   "answer",
    "quarterly", "revenue", "grew",    "percent",   "customer", "support", "ticket",  "resolved",
    "and",       "of",      "to",      "in",        "is",       "for",     "with",    "on",
};

/* Deterministic English-like texts of exactly TEXT_LEN bytes. */
static void
make_texts(char texts[NTEXTS][TEXT_LEN + 1])
{
    uint32_t state = 42;

    for (int t = 0; t < NTEXTS; t++) {
        size_t len = 0;
        while (len < TEXT_LEN) {
            const char *w;
            size_t wl;
            state = state * 1664525u + 1013904223u;
            w = words[(state >> 16) % ARRAY_SIZE(words)];
            wl = strlen(w);
            if (len > 0) {
                texts[t][len++] = (state & 0x700) == 0 ? ',' : ' ';
                if (len == TEXT_LEN) {
                    break;
                }
            }
            for (size_t i = 0; i < wl && len < TEXT_LEN; i++) {
                texts[t][len++] = w[i];
            }
        }
        texts[t][TEXT_LEN] = '\0';
        texts[t][0] = 'T';
    }
}

static void
bench_embed(char texts[NTEXTS][TEXT_LEN + 1])
{
    float v[DIM];
    uint64_t start = util_mono_us(), elapsed;
    size_t n = 0;
    volatile float sink = 0;

    do {
        for (int t = 0; t < NTEXTS; t++) {
            if (embedder_hash_text(texts[t], TEXT_LEN, v, DIM) != 0) {
                abort();
            }
            sink += v[t % DIM];
        }
        n += NTEXTS;
        elapsed = util_mono_us() - start;
    } while (elapsed < MIN_RUN_US);
    (void)sink;
    printf("hash embed   dim %d, %d-byte texts: %8.1f MB/s per thread, %7.0f ns per text\n", DIM,
           TEXT_LEN, (double)n * TEXT_LEN / (double)elapsed, (double)elapsed * 1000.0 / (double)n);
}

static void
bench_render(char texts[NTEXTS][TEXT_LEN + 1], bool base64, bool dense)
{
    enum { INPUTS = 64 };
    struct buf body;
    struct embed_request r;
    char err[256];
    const char *param;
    float *vectors = malloc(INPUTS * DIM * sizeof(float));
    uint64_t start, elapsed;
    size_t n = 0, bytes = 0;

    buf_init(&body);
    buf_printf(&body, "{\"model\":\"m\",\"encoding_format\":\"%s\",\"input\":[",
               base64 ? "base64" : "float");
    for (int i = 0; i < INPUTS; i++) {
        buf_printf(&body, "%s\"%s\"", i ? "," : "", texts[i]);
        if (embedder_hash_text(texts[i], TEXT_LEN, vectors + i * DIM, DIM) != 0) {
            abort();
        }
    }
    buf_puts(&body, "]}");
    if (dense) {
        /* hash vectors are mostly exact zeros; dense values are the formatter's worst case */
        uint32_t state = 7;
        for (int i = 0; i < INPUTS * DIM; i++) {
            state = state * 1664525u + 1013904223u;
            vectors[i] = ((float)(state >> 8) / 8388608.0f - 1.0f) * 0.1f;
        }
    }
    if (embed_request_parse(EMBED_API_OPENAI, body.data, body.len, &r, err, sizeof(err), &param) !=
        0) {
        fprintf(stderr, "parse: %s\n", err);
        abort();
    }
    start = util_mono_us();
    do {
        size_t len;
        char *out = embed_render_response(&r, vectors, DIM, "akosha-hash-384", &len);
        bytes += len;
        free(out);
        n++;
        elapsed = util_mono_us() - start;
    } while (elapsed < MIN_RUN_US);
    printf("render       OpenAI %-6s 64 x %d %-6s: %7.1f MB/s, %7.1f us per response (%zu bytes)\n",
           base64 ? "base64" : "float", DIM, dense ? "dense" : "hash",
           (double)bytes / (double)elapsed, (double)elapsed / (double)n, bytes / n);
    embed_request_free(&r);
    buf_free(&body);
    free(vectors);
}

static void
bench_parse(char texts[NTEXTS][TEXT_LEN + 1], int inputs)
{
    struct buf body;
    char err[256];
    const char *param;
    uint64_t start, elapsed;
    size_t n = 0;

    buf_init(&body);
    buf_puts(&body, "{\"model\":\"text-embedding-3-small\",\"input\":[");
    for (int i = 0; i < inputs; i++) {
        buf_printf(&body, "%s\"%s\"", i ? "," : "", texts[i % NTEXTS]);
    }
    buf_puts(&body, "],\"encoding_format\":\"float\"}");
    start = util_mono_us();
    do {
        struct embed_request r;
        if (embed_request_parse(EMBED_API_OPENAI, body.data, body.len, &r, err, sizeof(err),
                                &param) != 0) {
            abort();
        }
        embed_request_free(&r);
        n++;
        elapsed = util_mono_us() - start;
    } while (elapsed < MIN_RUN_US);
    printf("parse        OpenAI request, %2d x %d-byte inputs: %7.1f us per request (%zu bytes)\n",
           inputs, TEXT_LEN, (double)elapsed / (double)n, body.len);
    buf_free(&body);
}

int
main(void)
{
    static char texts[NTEXTS][TEXT_LEN + 1];

    make_texts(texts);
    bench_embed(texts);
    bench_render(texts, false, false);
    bench_render(texts, false, true);
    bench_render(texts, true, true);
    bench_parse(texts, 1);
    bench_parse(texts, 16);
    return 0;
}
