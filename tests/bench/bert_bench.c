/*
 * bert_bench.c - throughput of the local BERT model (src/bert.c) in the
 * all-MiniLM-L6-v2 shape (hidden 384, 6 layers, 12 heads, intermediate 1536,
 * vocabulary 30,522, max_seq_length 128) with random weights, one thread:
 * one 12-token text, and a batch of 32 texts of 128 tokens. Not a test:
 * prints numbers. make check builds it; run from the source tree:
 *
 *   tests/bench/bert_bench [seconds per figure, default 3] [one|batch]
 *
 * It writes the model (F32 safetensors, about 90 MB) into a temporary
 * directory and removes it afterwards, or into $BERT_BENCH_DIR, which it
 * keeps (tests/bench/bert_vs_ort runs ONNX Runtime on those same weights).
 * The vocabulary is tests/data/bert-base-uncased-vocab.txt (under
 * $AKOSHA_SRCDIR if set).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bert.h"
#include "gemm.h"
#include "util.h"
#include "wordpiece.h"

#define HIDDEN 384
#define LAYERS 6
#define HEADS 12
#define INTER 1536
#define VOCAB 30522
#define POSITIONS 512
#define MAX_SEQ 128

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static float
rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((float)(rng >> 40) / (float)(1 << 24) - 0.5f) * 0.08f;
}

struct tensor {
    char name[128];
    size_t rows, cols; /* cols 0: one dimension */
    float base;
};

static void
write_file(const char *dir, const char *name, const char *text)
{
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");

    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    free(path);
}

static void
write_model(const char *dir, const char *vocab_path)
{
    struct tensor t[8 + LAYERS * 16];
    size_t n = 0, offset = 0;
    struct buf header;
    char *path, *cmd;
    FILE *f;

#define T(nm, r, c, b)                                                                             \
    do {                                                                                           \
        snprintf(t[n].name, sizeof(t[n].name), "%s", nm);                                          \
        t[n].rows = (r);                                                                           \
        t[n].cols = (c);                                                                           \
        t[n].base = (b);                                                                           \
        n++;                                                                                       \
    } while (0)
    T("embeddings.word_embeddings.weight", VOCAB, HIDDEN, 0);
    T("embeddings.position_embeddings.weight", POSITIONS, HIDDEN, 0);
    T("embeddings.token_type_embeddings.weight", 2, HIDDEN, 0);
    T("embeddings.LayerNorm.weight", HIDDEN, 0, 1);
    T("embeddings.LayerNorm.bias", HIDDEN, 0, 0);
    for (int l = 0; l < LAYERS; l++) {
        char p[24];
        char nm[96];
        snprintf(p, sizeof(p), "encoder.layer.%d.", l);
#define L(suffix, r, c, b)                                                                         \
    do {                                                                                           \
        snprintf(nm, sizeof(nm), "%s%s", p, suffix);                                               \
        T(nm, r, c, b);                                                                            \
    } while (0)
        L("attention.self.query.weight", HIDDEN, HIDDEN, 0);
        L("attention.self.query.bias", HIDDEN, 0, 0);
        L("attention.self.key.weight", HIDDEN, HIDDEN, 0);
        L("attention.self.key.bias", HIDDEN, 0, 0);
        L("attention.self.value.weight", HIDDEN, HIDDEN, 0);
        L("attention.self.value.bias", HIDDEN, 0, 0);
        L("attention.output.dense.weight", HIDDEN, HIDDEN, 0);
        L("attention.output.dense.bias", HIDDEN, 0, 0);
        L("attention.output.LayerNorm.weight", HIDDEN, 0, 1);
        L("attention.output.LayerNorm.bias", HIDDEN, 0, 0);
        L("intermediate.dense.weight", INTER, HIDDEN, 0);
        L("intermediate.dense.bias", INTER, 0, 0);
        L("output.dense.weight", HIDDEN, INTER, 0);
        L("output.dense.bias", HIDDEN, 0, 0);
        L("output.LayerNorm.weight", HIDDEN, 0, 1);
        L("output.LayerNorm.bias", HIDDEN, 0, 0);
#undef L
    }
#undef T
    buf_init(&header);
    buf_putc(&header, '{');
    for (size_t i = 0; i < n; i++) {
        size_t count = t[i].rows * (t[i].cols ? t[i].cols : 1);
        char *e;
        if (t[i].cols) {
            e = xasprintf("%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}",
                          i ? "," : "", t[i].name, t[i].rows, t[i].cols, offset,
                          offset + count * 4);
        } else {
            e = xasprintf("%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
                          i ? "," : "", t[i].name, t[i].rows, offset, offset + count * 4);
        }
        buf_puts(&header, e);
        free(e);
        offset += count * 4;
    }
    buf_putc(&header, '}');
    path = xasprintf("%s/model.safetensors", dir);
    f = fopen(path, "wb");
    uint64_t hl = header.len;
    fwrite(&hl, 8, 1, f);
    fwrite(header.data, 1, header.len, f);
    for (size_t i = 0; i < n; i++) {
        size_t count = t[i].rows * (t[i].cols ? t[i].cols : 1);
        float chunk[4096];
        for (size_t k = 0; k < count; k += ARRAY_SIZE(chunk)) {
            size_t m = MIN(ARRAY_SIZE(chunk), count - k);
            for (size_t j = 0; j < m; j++) {
                chunk[j] = t[i].base + rnd();
            }
            fwrite(chunk, sizeof(float), m, f);
        }
    }
    fclose(f);
    free(path);
    buf_free(&header);

    char *cfg = xasprintf(
        "{\"model_type\":\"bert\",\"hidden_act\":\"gelu\",\"hidden_size\":%d,"
        "\"num_hidden_layers\":%d,\"num_attention_heads\":%d,\"intermediate_size\":%d,"
        "\"vocab_size\":%d,\"max_position_embeddings\":%d,\"type_vocab_size\":2,"
        "\"layer_norm_eps\":1e-12,\"position_embedding_type\":\"absolute\"}",
        HIDDEN, LAYERS, HEADS, INTER, VOCAB, POSITIONS);
    write_file(dir, "config.json", cfg);
    free(cfg);
    write_file(dir, "modules.json",
               "[{\"idx\":0,\"name\":\"0\",\"path\":\"\",\"type\":"
               "\"sentence_transformers.models.Transformer\"},{\"idx\":1,\"name\":\"1\",\"path\":"
               "\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"},{\"idx\":2,"
               "\"name\":\"2\",\"path\":\"2_Normalize\",\"type\":"
               "\"sentence_transformers.models.Normalize\"}]");
    path = xasprintf("%s/1_Pooling", dir);
    mkdir(path, 0700);
    free(path);
    write_file(dir, "1_Pooling/config.json",
               "{\"word_embedding_dimension\":384,\"pooling_mode_mean_tokens\":true}");
    write_file(dir, "sentence_bert_config.json", "{\"max_seq_length\":128}");
    cmd = xasprintf("cp '%s' '%s/vocab.txt'", vocab_path, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot copy %s\n", vocab_path);
        exit(1);
    }
    free(cmd);
}

/*
 * DIR/check.json: the short text's token ids and its vector, so that
 * ort_bench.mjs can show that ONNX Runtime computes the same embedding.
 */
static void
write_check(const struct bert *m, const char *dir, const char *text, size_t len)
{
    struct wordpiece *wp = NULL;
    struct bert_scratch *s = bert_scratch_new();
    int32_t ids[MAX_SEQ];
    float v[HIDDEN];
    uint64_t usage;
    char *cause = NULL, *path = xasprintf("%s/check.json", dir);
    FILE *f = fopen(path, "w");
    size_t n;

    if (f == NULL || wordpiece_load(dir, &wp, &cause) != 0 ||
        bert_embed(m, &text, &len, 1, v, HIDDEN, &usage, s, &cause) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, cause ? cause : "open failed");
        exit(1);
    }
    n = wordpiece_encode(wp, text, len, ids, MAX_SEQ);
    fputs("{\"ids\":[", f);
    for (size_t i = 0; i < n; i++) {
        fprintf(f, "%s%d", i ? "," : "", ids[i]);
    }
    fputs("],\"embedding\":[", f);
    for (size_t i = 0; i < HIDDEN; i++) {
        fprintf(f, "%s%.9g", i ? "," : "", v[i]);
    }
    fputs("]}\n", f);
    fclose(f);
    free(path);
    wordpiece_free(wp);
    bert_scratch_free(s);
}

static const char *words[] = {"the",     "quick",   "brown",    "fox",     "jumps",   "over",
                              "lazy",    "dog",     "embedding", "vector", "search",  "model",
                              "service", "latency", "request",  "circuit", "breaker", "answer"};

/* VmRSS of this process in MiB, from /proc/self/status. */
static double
rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = 0;

    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %lf kB", &kib) == 1) {
            break;
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return kib / 1024;
}

static double
cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/*
 * Run embed on texts for about `seconds`; returns texts per second of wall
 * time and fills ms per call. *cpu_ms gets the CPU time per call: on a
 * machine shared with other work the two differ, and CPU time is the figure
 * that compares across runs.
 */
static double
measure(const struct bert *m, struct bert_scratch *s, const char **texts, size_t *lens, size_t n,
        double seconds, double *ms_per_call, double *cpu_ms, uint64_t *tokens)
{
    double cpu0;
    float *out = xmalloc(n * HIDDEN * sizeof(float));
    uint64_t start, now, calls = 0;
    char *cause = NULL;

    /* One warm-up call: scratch allocation and page faults are not throughput. */
    if (bert_embed(m, texts, lens, n, out, HIDDEN, tokens, s, &cause) != 0) {
        fprintf(stderr, "%s\n", cause);
        exit(1);
    }
    start = util_mono_us();
    cpu0 = cpu_seconds();
    do {
        if (bert_embed(m, texts, lens, n, out, HIDDEN, tokens, s, &cause) != 0) {
            exit(1);
        }
        calls++;
        now = util_mono_us();
    } while ((double)(now - start) < seconds * 1e6);
    free(out);
    *cpu_ms = (cpu_seconds() - cpu0) * 1e3 / (double)calls;
    *ms_per_call = (double)(now - start) / 1e3 / (double)calls;
    return (double)(calls * n) / ((double)(now - start) / 1e6);
}

int
main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 3.0, ms, cpu_ms;
    const char *only = argc > 2 ? argv[2] : "";
    const char *src = getenv("AKOSHA_SRCDIR");
    char *vocab = xasprintf("%s/tests/data/bert-base-uncased-vocab.txt", src ? src : ".");
    char tmpdir[] = "/tmp/akosha-bert-bench-XXXXXX";
    const char *keep = getenv("BERT_BENCH_DIR");
    const char *dir = keep;
    struct bert *m = NULL;
    struct bert_scratch *s = bert_scratch_new();
    char *cause = NULL, *cmd;
    uint64_t tokens, t0;
    const char *batch[32];
    size_t lens[32];
    struct buf long_text;

    if (keep != NULL) {
        mkdir(keep, 0755);
    } else if ((dir = mkdtemp(tmpdir)) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    write_model(dir, vocab);
    t0 = util_mono_us();
    if (bert_load(dir, &m, &cause) != 0) {
        fprintf(stderr, "bert_load: %s\n", cause);
        return 1;
    }
    printf("model: all-MiniLM-L6-v2 shape, random F32 weights (%.1f MiB as float32), "
           "loaded in %.0f ms; 1 thread, dense layers on gemm.c's %s kernels, attention on "
           "OpenBLAS %s\n",
           (double)bert_info(m)->weight_bytes / (1 << 20), (double)(util_mono_us() - t0) / 1e3,
           gemm_path_name(gemm_path()), bert_info(m)->blas_core);
    if (keep == NULL) {
        cmd = xasprintf("rm -rf '%s'", dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "cannot remove %s\n", dir);
        }
        free(cmd);
    }

    /* 10 words, 12 tokens with [CLS] and [SEP]. */
    const char *short_text = "the quick brown fox jumps over the lazy dog today";
    size_t short_len = strlen(short_text);
    if (keep != NULL) {
        write_check(m, dir, short_text, short_len);
    }
    double rate;
    if (strcmp(only, "batch") != 0) {
        rate = measure(m, s, &short_text, &short_len, 1, seconds, &ms, &cpu_ms, &tokens);
        printf("one text of %llu tokens:        %8.1f texts/s  %8.3f ms/text   (CPU %.3f ms)\n",
               (unsigned long long)tokens, rate, ms, cpu_ms);
    }

    buf_init(&long_text);
    for (size_t i = 0; i < 200; i++) {
        buf_puts(&long_text, words[(i * 7 + i / 5) % ARRAY_SIZE(words)]);
        buf_putc(&long_text, ' ');
    }
    for (size_t i = 0; i < 32; i++) {
        batch[i] = long_text.data;
        lens[i] = long_text.len;
    }
    if (strcmp(only, "one") != 0) {
        rate = measure(m, s, batch, lens, 32, seconds, &ms, &cpu_ms, &tokens);
        printf("batch of 32 texts, %llu tokens: %8.1f texts/s  %8.1f ms/batch  (CPU %.1f ms), "
               "%.0f tokens/s\n",
               (unsigned long long)tokens, rate, ms, cpu_ms, rate * (double)tokens / 32);
    }

    printf("RSS %.1f MiB (weights as float32: %.1f MiB)\n", rss_mib(),
           (double)bert_info(m)->weight_bytes / (1 << 20));
    buf_free(&long_text);
    bert_scratch_free(s);
    bert_free(m);
    free(vocab);
    return 0;
}
