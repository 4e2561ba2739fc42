/*
 * bert.h - a BERT sentence-embedding model (sentence-transformers layout) run
 * on the CPU: load and validate a model directory, then embed texts.
 *
 * The directory holds config.json (model_type "bert", hidden_act "gelu",
 * position_embedding_type "absolute"; anything else is refused by name),
 * model.safetensors (F32, F16 or BF16; names with or without "bert."; every
 * shape checked against config.json), tokenizer.json or vocab.txt (see
 * wordpiece.h), and optionally modules.json with its Pooling directory
 * (mean, cls or max) and Normalize module, and sentence_bert_config.json
 * (max_seq_length, capped by max_position_embeddings). Without modules.json
 * the model mean-pools and does not normalise, as sentence-transformers does.
 *
 * A loaded model is immutable: any number of threads may call bert_embed on
 * it at once, each with its own scratch. The dense layers run on gemm.c's
 * kernels, attention on OpenBLAS, single-threaded (the worker pool is the
 * parallelism; see blas.h and gemm.h). bert_load does
 * blocking file I/O: call it from a start-up or reload thread.
 */
#ifndef AKOSHA_BERT_H
#define AKOSHA_BERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bert;
struct bert_scratch;

enum bert_pooling {
    BERT_POOL_MEAN, /* over the real tokens, [CLS] and [SEP] included */
    BERT_POOL_CLS,
    BERT_POOL_MAX,
};

/* What a loaded model is, for logs, the admin dump and request checks. */
struct bert_info {
    size_t hidden;     /* the embedding's size */
    size_t layers;
    size_t heads;
    size_t intermediate;
    size_t vocab;
    size_t max_seq_length; /* tokens per text, [CLS] and [SEP] included */
    enum bert_pooling pooling;
    bool normalize;
    size_t weight_bytes; /* float32 weights held in memory */
    const char *blas_core; /* OpenBLAS's kernel set, for the start-up log */
};

/*
 * Load the model in dir. Returns 0 with *out set (free with bert_free), or -1
 * with *cause set (caller frees) naming the file and what is wrong or
 * unsupported in it.
 */
int bert_load(const char *dir, struct bert **out, char **cause) __attribute__((warn_unused_result));

void bert_free(struct bert *m);

const struct bert_info *bert_info(const struct bert *m);

/* Per-thread working memory; grows on demand. Free with bert_scratch_free (NULL is fine). */
struct bert_scratch *bert_scratch_new(void);
void bert_scratch_free(struct bert_scratch *s);

/*
 * A second thread for half of each dense layer (half the weights each): for
 * a short text, whose time goes to reading the weights, two threads reading
 * half each finish sooner than one. post starts fn(arg) on the other thread
 * and returns true, or returns false (there is none: the caller runs fn);
 * after true, wait returns once fn(arg) has returned.
 */
struct bert_helper {
    bool (*post)(void *ctx, void (*fn)(void *arg), void *arg);
    void (*wait)(void *ctx);
    void *ctx;
};

/* bert_embed on s uses helper (borrowed until the next call; NULL: one thread) from now on. */
void bert_scratch_set_helper(struct bert_scratch *s, const struct bert_helper *helper);

/*
 * Embed n texts (texts[i] of lens[i] bytes of UTF-8) into out[i * dim ..
 * i * dim + dim). dim is the model's hidden size, or smaller to truncate and
 * L2-renormalise (Matryoshka, see bert_matryoshka). Each text is truncated to
 * max_seq_length tokens. *usage_tokens gets the number of tokens embedded,
 * special tokens included. Returns 0, or -1 with *cause set (caller frees)
 * when dim is 0 or above the hidden size. Thread-safe given its own scratch.
 */
int bert_embed(const struct bert *m, const char *const *texts, const size_t *lens, size_t n,
               float *out, size_t dim, uint64_t *usage_tokens, struct bert_scratch *s, char **cause)
    __attribute__((warn_unused_result));

/*
 * The hidden states of one token sequence ids[0..n) (n <= max_seq_length, each
 * id below the vocabulary size) after the embeddings and the first `layers`
 * encoder layers (0: the embeddings alone): out[n * hidden]. For the tests,
 * which check each layer against a reference. Returns 0, or -1 on bad input.
 */
int bert_hidden_states(const struct bert *m, const int32_t *ids, size_t n, size_t layers, float *out,
                       struct bert_scratch *s);

/*
 * Matryoshka truncation: the first dim values of in into out, scaled to unit
 * L2 norm (left as they are when all zero). in and out may be the same array.
 */
void bert_matryoshka(const float *in, float *out, size_t dim);

#endif
