/*
 * bert.c - load a sentence-transformers BERT model and run it (see bert.h).
 *
 * The batch is packed, not padded: the tokens of all texts of a chunk sit one
 * after another in one [tokens x hidden] matrix, the dense layers run once
 * over all of them, and attention runs per text over that text's own tokens.
 * This is what the padded batch with an attention mask computes for the real
 * tokens, without the work on padding.
 */
#include "bert.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "gemm.h"
#include "safetensors.h"
#include "util.h"
#include "wordpiece.h"

/* Tokens run through the layers at once: bounds the scratch (about 16 KiB a token at 384). */
#define CHUNK_TOKENS 1024

/*
 * The four products' weights are held only in the kernels' packed layout
 * (gemm.h): packed once here at load, the originals freed.
 */
struct bert_layer {
    struct gemm_packed qkv_w; /* [3H x H]: query, key, value rows fused into one product */
    float *qkv_b;             /* [3H] */
    struct gemm_packed attn_out_w;
    float *attn_out_b;
    float *ln1_w, *ln1_b;
    struct gemm_packed inter_w; /* [I x H] */
    float *inter_b;             /* [I] */
    struct gemm_packed out_w;   /* [H x I] */
    float *out_b;               /* [H] */
    float *ln2_w, *ln2_b;
};

struct bert {
    struct bert_info info;
    struct wordpiece *tok;
    float eps;
    size_t max_positions;
    size_t type_vocab;
    float *word, *position, *token_type;
    float *emb_ln_w, *emb_ln_b;
    struct bert_layer *layer;
    struct gemm_arena arena; /* every layer's packed weights, on huge pages where possible */
};

struct bert_scratch {
    size_t tokens; /* capacity in tokens */
    size_t attn;   /* capacity of scores, in floats */
    float *x, *qkv, *ctx, *tmp, *inter, *scores;
    int32_t *ids;
    size_t *lens;
    size_t ids_cap, lens_cap;
    const struct bert_helper *helper; /* the caller's, or NULL */
};

/* ---- loading -------------------------------------------------------------- */

static json_t *
read_json(const char *dir, const char *name, bool optional, char **cause)
{
    char *path = xasprintf("%s/%s", dir, name);
    json_error_t jerr;
    json_t *v;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        if (!(optional && errno == ENOENT)) {
            *cause = xasprintf("%s: %s", path, strerror(errno));
        }
        free(path);
        return NULL;
    }
    v = json_loadf(f, 0, &jerr);
    fclose(f);
    if (v == NULL) {
        *cause = xasprintf("%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
    } else if (!json_is_object(v)) {
        *cause = xasprintf("%s: not a JSON object", path);
        json_decref(v);
        v = NULL;
    }
    free(path);
    return v;
}

static int
get_size(const json_t *cfg, const char *key, size_t *out, char **cause)
{
    const json_t *v = json_object_get(cfg, key);

    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 24)) {
        *cause = xasprintf("config.json: \"%s\" is missing or not a positive integer", key);
        return -1;
    }
    *out = (size_t)json_integer_value(v);
    return 0;
}

/* A string key that must be absent or one of the supported values. */
static int
check_string(const json_t *cfg, const char *key, const char *want, bool required, char **cause)
{
    const json_t *v = json_object_get(cfg, key);

    if (v == NULL && !required) {
        return 0;
    }
    if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0) {
        *cause = xasprintf("config.json: %s \"%s\" is not supported (only \"%s\")", key,
                           json_is_string(v) ? json_string_value(v) : "(missing)", want);
        return -1;
    }
    return 0;
}

static int
load_config(struct bert *m, const char *dir, char **cause)
{
    json_t *cfg = read_json(dir, "config.json", false, cause);
    const json_t *eps;
    int rc = -1;

    if (cfg == NULL) {
        return -1;
    }
    if (check_string(cfg, "model_type", "bert", true, cause) != 0 ||
        check_string(cfg, "hidden_act", "gelu", true, cause) != 0 ||
        check_string(cfg, "position_embedding_type", "absolute", false, cause) != 0) {
        goto out;
    }
    if (get_size(cfg, "hidden_size", &m->info.hidden, cause) != 0 ||
        get_size(cfg, "num_hidden_layers", &m->info.layers, cause) != 0 ||
        get_size(cfg, "num_attention_heads", &m->info.heads, cause) != 0 ||
        get_size(cfg, "intermediate_size", &m->info.intermediate, cause) != 0 ||
        get_size(cfg, "vocab_size", &m->info.vocab, cause) != 0 ||
        get_size(cfg, "max_position_embeddings", &m->max_positions, cause) != 0 ||
        get_size(cfg, "type_vocab_size", &m->type_vocab, cause) != 0) {
        goto out;
    }
    if (m->info.hidden % m->info.heads != 0) {
        *cause = xasprintf("config.json: hidden_size %zu is not a multiple of "
                           "num_attention_heads %zu",
                           m->info.hidden, m->info.heads);
        goto out;
    }
    m->eps = 1e-12f;
    eps = json_object_get(cfg, "layer_norm_eps");
    if (eps != NULL) {
        if (!json_is_number(eps) || json_number_value(eps) <= 0) {
            *cause = xstrdup("config.json: \"layer_norm_eps\" is not a positive number");
            goto out;
        }
        m->eps = (float)json_number_value(eps);
    }
    m->info.max_seq_length = m->max_positions;
    rc = 0;
out:
    json_decref(cfg);
    return rc;
}

/* The sentence-transformers modules: Transformer, Pooling, optional Normalize. */
static int
load_modules(struct bert *m, const char *dir, char **cause)
{
    json_t *mods = NULL, *pool = NULL, *sb;
    char *pool_dir = NULL;
    const char *mode = NULL;
    int rc = -1, modes = 0;
    static const char *unsupported[] = {"pooling_mode_mean_sqrt_len_tokens",
                                        "pooling_mode_weightedmean_tokens",
                                        "pooling_mode_lasttoken"};

    m->info.pooling = BERT_POOL_MEAN;
    sb = read_json(dir, "sentence_bert_config.json", true, cause);
    if (sb == NULL && *cause != NULL) {
        return -1;
    }
    if (sb != NULL) {
        const json_t *msl = json_object_get(sb, "max_seq_length");
        if (msl != NULL && (!json_is_integer(msl) || json_integer_value(msl) < 3)) {
            *cause = xstrdup("sentence_bert_config.json: \"max_seq_length\" is not an integer "
                             "of at least 3");
            goto out;
        }
        if (msl != NULL && (size_t)json_integer_value(msl) < m->max_positions) {
            m->info.max_seq_length = (size_t)json_integer_value(msl);
        }
        if (json_is_true(json_object_get(sb, "do_lower_case"))) {
            *cause = xstrdup("sentence_bert_config.json: \"do_lower_case\": true is not "
                             "supported (lowercasing belongs in the tokenizer)");
            goto out;
        }
    }

    {
        FILE *f;
        char *path = xasprintf("%s/modules.json", dir);
        json_error_t jerr;
        f = fopen(path, "rb");
        if (f == NULL) {
            free(path);
            /* A plain Hugging Face model: sentence-transformers mean-pools it. */
            rc = 0;
            goto out;
        }
        mods = json_loadf(f, 0, &jerr);
        fclose(f);
        if (!json_is_array(mods)) {
            *cause = xasprintf("%s: not a JSON array of modules", path);
            free(path);
            goto out;
        }
        free(path);
    }
    for (size_t i = 0; i < json_array_size(mods); i++) {
        const json_t *mod = json_array_get(mods, i);
        const char *type = json_string_value(json_object_get(mod, "type"));
        const char *sub = json_string_value(json_object_get(mod, "path"));
        if (type == NULL) {
            *cause = xasprintf("modules.json: module %zu has no type", i);
            goto out;
        }
        if (strcmp(type, "sentence_transformers.models.Transformer") == 0) {
            continue;
        } else if (strcmp(type, "sentence_transformers.models.Normalize") == 0) {
            m->info.normalize = true;
        } else if (strcmp(type, "sentence_transformers.models.Pooling") == 0 && sub != NULL &&
                   pool_dir == NULL) {
            pool_dir = xasprintf("%s/%s", dir, sub);
        } else {
            *cause = xasprintf("modules.json: module \"%s\" is not supported (only Transformer, "
                               "one Pooling, Normalize)",
                               type);
            goto out;
        }
    }
    if (pool_dir != NULL) {
        pool = read_json(pool_dir, "config.json", false, cause);
        if (pool == NULL) {
            goto out;
        }
        if (json_is_true(json_object_get(pool, "pooling_mode_mean_tokens"))) {
            m->info.pooling = BERT_POOL_MEAN;
            modes++;
        }
        if (json_is_true(json_object_get(pool, "pooling_mode_cls_token"))) {
            m->info.pooling = BERT_POOL_CLS;
            modes++;
        }
        if (json_is_true(json_object_get(pool, "pooling_mode_max_tokens"))) {
            m->info.pooling = BERT_POOL_MAX;
            modes++;
        }
        for (size_t i = 0; i < ARRAY_SIZE(unsupported); i++) {
            if (json_is_true(json_object_get(pool, unsupported[i]))) {
                mode = unsupported[i];
            }
        }
        if (mode != NULL) {
            *cause = xasprintf("%s/config.json: %s is not supported (only mean, cls, max)",
                               pool_dir, mode);
            goto out;
        }
        if (modes != 1) {
            *cause = xasprintf("%s/config.json: exactly one of pooling_mode_mean_tokens, "
                               "pooling_mode_cls_token, pooling_mode_max_tokens must be true",
                               pool_dir);
            goto out;
        }
        const json_t *dim = json_object_get(pool, "word_embedding_dimension");
        if (dim != NULL && (!json_is_integer(dim) ||
                            (size_t)json_integer_value(dim) != m->info.hidden)) {
            *cause = xasprintf("%s/config.json: word_embedding_dimension is not the hidden size "
                               "%zu",
                               pool_dir, m->info.hidden);
            goto out;
        }
    }
    rc = 0;
out:
    free(pool_dir);
    json_decref(pool);
    json_decref(mods);
    json_decref(sb);
    return rc;
}

/* A weight by name (with or without "bert."), shape [d0] or [d0, d1], as float32. */
static float *
weight(struct safetensors *st, const char *name, size_t d0, size_t d1, char **cause)
{
    const struct safetensors_tensor *t = safetensors_find(st, name);
    char *prefixed;
    int ndim = d1 == 0 ? 1 : 2;

    if (t == NULL) {
        prefixed = xasprintf("bert.%s", name);
        t = safetensors_find(st, prefixed);
        free(prefixed);
    }
    if (t == NULL) {
        *cause = xasprintf("model.safetensors: tensor \"%s\" is missing", name);
        return NULL;
    }
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char got[128] = "";
        size_t off = 0;
        for (int i = 0; i < t->ndim && off < sizeof(got) - 24; i++) {
            off += (size_t)snprintf(got + off, sizeof(got) - off, "%s%llu", i ? ", " : "",
                                    (unsigned long long)t->shape[i]);
        }
        if (ndim == 1) {
            *cause = xasprintf("model.safetensors: tensor \"%s\" has shape [%s], config.json "
                               "gives [%zu]",
                               t->name, got, d0);
        } else {
            *cause = xasprintf("model.safetensors: tensor \"%s\" has shape [%s], config.json "
                               "gives [%zu, %zu]",
                               t->name, got, d0, d1);
        }
        return NULL;
    }
    return safetensors_to_f32(st, t, cause);
}

static void
free_layer(struct bert_layer *l)
{
    gemm_packed_free(&l->qkv_w);
    free(l->qkv_b);
    gemm_packed_free(&l->attn_out_w);
    free(l->attn_out_b);
    free(l->ln1_w);
    free(l->ln1_b);
    gemm_packed_free(&l->inter_w);
    free(l->inter_b);
    gemm_packed_free(&l->out_w);
    free(l->out_b);
    free(l->ln2_w);
    free(l->ln2_b);
}

void
bert_free(struct bert *m)
{
    if (m == NULL) {
        return;
    }
    wordpiece_free(m->tok);
    free(m->word);
    free(m->position);
    free(m->token_type);
    free(m->emb_ln_w);
    free(m->emb_ln_b);
    if (m->layer != NULL) {
        for (size_t i = 0; i < m->info.layers; i++) {
            free_layer(&m->layer[i]);
        }
    }
    free(m->layer);
    gemm_arena_free(&m->arena);
    free(m);
}

#define W(dst, name, d0, d1)                                                                       \
    do {                                                                                           \
        if (((dst) = weight(st, (name), (d0), (d1), cause)) == NULL) {                             \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

static int
load_layer(struct bert *m, struct safetensors *st, size_t i, char **cause)
{
    struct bert_layer *l = &m->layer[i];
    size_t h = m->info.hidden, in = m->info.intermediate;
    float *q = NULL, *k = NULL, *v = NULL, *qb = NULL, *kb = NULL, *vb = NULL;
    float *attn_out = NULL, *inter = NULL, *out = NULL, *qkv;
    char name[128];
    int rc = -1;

#define LNAME(suffix) (snprintf(name, sizeof(name), "encoder.layer.%zu.%s", i, suffix), name)
    W(q, LNAME("attention.self.query.weight"), h, h);
    W(k, LNAME("attention.self.key.weight"), h, h);
    W(v, LNAME("attention.self.value.weight"), h, h);
    W(qb, LNAME("attention.self.query.bias"), h, 0);
    W(kb, LNAME("attention.self.key.bias"), h, 0);
    W(vb, LNAME("attention.self.value.bias"), h, 0);
    W(attn_out, LNAME("attention.output.dense.weight"), h, h);
    W(l->attn_out_b, LNAME("attention.output.dense.bias"), h, 0);
    W(l->ln1_w, LNAME("attention.output.LayerNorm.weight"), h, 0);
    W(l->ln1_b, LNAME("attention.output.LayerNorm.bias"), h, 0);
    W(inter, LNAME("intermediate.dense.weight"), in, h);
    W(l->inter_b, LNAME("intermediate.dense.bias"), in, 0);
    W(out, LNAME("output.dense.weight"), h, in);
    W(l->out_b, LNAME("output.dense.bias"), h, 0);
    W(l->ln2_w, LNAME("output.LayerNorm.weight"), h, 0);
    W(l->ln2_b, LNAME("output.LayerNorm.bias"), h, 0);
#undef LNAME
    qkv = xmalloc(3 * h * h * sizeof(float));
    memcpy(qkv, q, h * h * sizeof(float));
    memcpy(qkv + h * h, k, h * h * sizeof(float));
    memcpy(qkv + 2 * h * h, v, h * h * sizeof(float));
    gemm_pack(&l->qkv_w, qkv, 3 * h, h, &m->arena);
    free(qkv);
    gemm_pack(&l->attn_out_w, attn_out, h, h, &m->arena);
    gemm_pack(&l->inter_w, inter, in, h, &m->arena);
    gemm_pack(&l->out_w, out, h, in, &m->arena);
    l->qkv_b = xmalloc(3 * h * sizeof(float));
    memcpy(l->qkv_b, qb, h * sizeof(float));
    memcpy(l->qkv_b + h, kb, h * sizeof(float));
    memcpy(l->qkv_b + 2 * h, vb, h * sizeof(float));
    rc = 0;
fail:
    free(q);
    free(k);
    free(v);
    free(attn_out);
    free(inter);
    free(out);
    free(qb);
    free(kb);
    free(vb);
    return rc;
}

int
bert_load(const char *dir, struct bert **out, char **cause)
{
    struct bert *m = xcalloc(1, sizeof(*m));
    struct safetensors *st = NULL;
    char *path = NULL;
    size_t h, layer_floats;

    const char *blas_error;

    *cause = NULL;
    if (blas_init(&blas_error) != 0) {
        *cause = xstrdup(blas_error);
        bert_free(m);
        return -1;
    }
    m->info.blas_core = blas_core();
    if (load_config(m, dir, cause) != 0 || load_modules(m, dir, cause) != 0) {
        goto fail;
    }
    if (wordpiece_load(dir, &m->tok, cause) != 0) {
        goto fail;
    }
    if (wordpiece_vocab_size(m->tok) > m->info.vocab) {
        *cause = xasprintf("the tokenizer has ids up to %zu, config.json vocab_size is %zu",
                           wordpiece_vocab_size(m->tok) - 1, m->info.vocab);
        goto fail;
    }
    path = xasprintf("%s/model.safetensors", dir);
    if (safetensors_open(path, &st, cause) != 0) {
        goto fail;
    }
    h = m->info.hidden;
    W(m->word, "embeddings.word_embeddings.weight", m->info.vocab, h);
    W(m->position, "embeddings.position_embeddings.weight", m->max_positions, h);
    /* Only row 0 is used (one segment), but the shape is still checked. */
    W(m->token_type, "embeddings.token_type_embeddings.weight", m->type_vocab, h);
    W(m->emb_ln_w, "embeddings.LayerNorm.weight", h, 0);
    W(m->emb_ln_b, "embeddings.LayerNorm.bias", h, 0);
    m->layer = xcalloc(m->info.layers, sizeof(*m->layer));
    gemm_arena_init(&m->arena,
                    m->info.layers * (gemm_packed_bytes(3 * h, h) + gemm_packed_bytes(h, h) +
                                      gemm_packed_bytes(m->info.intermediate, h) +
                                      gemm_packed_bytes(h, m->info.intermediate)));
    for (size_t i = 0; i < m->info.layers; i++) {
        if (load_layer(m, st, i, cause) != 0) {
            goto fail;
        }
    }
    layer_floats = 4 * h * h + 9 * h + 2 * h * m->info.intermediate + m->info.intermediate;
    m->info.weight_bytes =
        sizeof(float) * ((m->info.vocab + m->max_positions + m->type_vocab + 2) * h +
                         m->info.layers * layer_floats);
    safetensors_free(st);
    free(path);
    *out = m;
    return 0;
fail:
    safetensors_free(st);
    free(path);
    bert_free(m);
    return -1;
}

const struct bert_info *
bert_info(const struct bert *m)
{
    return &m->info;
}

/* ---- scratch -------------------------------------------------------------- */

struct bert_scratch *
bert_scratch_new(void)
{
    return xcalloc(1, sizeof(struct bert_scratch));
}

void
bert_scratch_free(struct bert_scratch *s)
{
    if (s == NULL) {
        return;
    }
    free(s->x);
    free(s->qkv);
    free(s->ctx);
    free(s->tmp);
    free(s->inter);
    free(s->scores);
    free(s->ids);
    free(s->lens);
    free(s);
}

void
bert_scratch_set_helper(struct bert_scratch *s, const struct bert_helper *helper)
{
    s->helper = helper;
}

static void
scratch_reserve(const struct bert *m, struct bert_scratch *s, size_t tokens, size_t longest)
{
    size_t h = m->info.hidden;

    if (tokens > s->tokens) {
        s->x = xrealloc(s->x, tokens * h * sizeof(float));
        s->ctx = xrealloc(s->ctx, tokens * h * sizeof(float));
        s->tmp = xrealloc(s->tmp, tokens * h * sizeof(float));
        s->qkv = xrealloc(s->qkv, tokens * 3 * h * sizeof(float));
        s->inter = xrealloc(s->inter, tokens * m->info.intermediate * sizeof(float));
        s->tokens = tokens;
    }
    if (longest * longest > s->attn) {
        s->scores = xrealloc(s->scores, longest * longest * sizeof(float));
        s->attn = longest * longest;
    }
}

/* ---- forward pass --------------------------------------------------------- */

/* One range of panels of one dense layer, for either thread. */
struct dense_part {
    const float *in;
    size_t rows;
    const struct gemm_packed *w;
    const float *bias, *residual;
    float *out;
    size_t first, end; /* panels of w */
};

static void
dense_part_run(void *arg)
{
    const struct dense_part *d = arg;
    size_t n = d->w->n, c0 = d->first * GEMM_PANEL, c1 = MIN(d->end * GEMM_PANEL, n);

    for (size_t r = 0; r < d->rows; r++) {
        float *o = d->out + r * n;
        if (d->residual != NULL) {
            const float *res = d->residual + r * n;
            for (size_t i = c0; i < c1; i++) {
                o[i] = d->bias[i] + res[i];
            }
        } else {
            memcpy(o + c0, d->bias + c0, (c1 - c0) * sizeof(float));
        }
    }
    gemm_acc_panels(d->rows, d->in, d->w->k, d->w, d->first, d->end, d->out, n);
}

/*
 * out[rows x n] = in[rows x k] . w^T + bias (each row) + residual (when given).
 *
 * Always gemm.c's kernels, not OpenBLAS. Measured (2026-11, this VM's Xeon
 * with AVX-512, one thread, the six layers' four products of
 * all-MiniLM-L6-v2, CPU time): for 12 rows the kernels take 6.0 ms, OpenBLAS
 * on the original layout 10.2 ms (it copies all of w on every call); they
 * tie around 48 rows; at 256-1024 rows OpenBLAS is 4-16 % faster. Keeping
 * OpenBLAS for many rows would mean keeping the original layout as well
 * (another 36 MiB at this size), and OpenBLAS on the packed panels, one call
 * per panel, is slower than the kernels at every row count.
 *
 * With a helper, the helper takes the first half of the panels (output
 * columns) and this thread the second: each reads half the weights.
 */
static void
dense(const float *in, size_t rows, const struct gemm_packed *w, const float *bias, float *out,
      const float *residual, const struct bert_helper *helper)
{
    size_t panels = gemm_panels(w);
    struct dense_part all = {in, rows, w, bias, residual, out, 0, panels}, theirs, mine;

    if (helper == NULL || panels < 2) {
        dense_part_run(&all);
        return;
    }
    theirs = all;
    theirs.end = panels / 2;
    mine = all;
    mine.first = panels / 2;
    if (!helper->post(helper->ctx, dense_part_run, &theirs)) {
        dense_part_run(&all);
        return;
    }
    dense_part_run(&mine);
    helper->wait(helper->ctx);
}

/*
 * GELU and softmax spend their time in erf and exp: about a fifth of a batch
 * with libm's scalar erff and expf. These are branch-free versions GCC turns
 * into AVX-512 or AVX2 code (target_clones picks one at load time). Accuracy:
 * exp within 2 ulp for the arguments used here (x <= 0); erf within 1.5e-7
 * (Abramowitz and Stegun 7.1.26), below float32 rounding of GELU's output.
 */
#if defined(__clang__)
/* clang has no optimize attribute and vectorises these loops at -O2 anyway */
#define VECTORIZE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTORIZE                                                                                  \
    __attribute__((target_clones("avx512f", "avx2", "default"),                                    \
                   optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif

/* e^x for x <= 0: x = n ln 2 + r, |r| <= ln 2 / 2; e^r by its Taylor series to r^7. */
static inline float
exp_nonpositive(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t, n, r, p;
    int32_t bits;
    uint32_t scale_bits;
    float scale;

    x = x < -87.0f ? -87.0f : x;
    t = x * 1.44269504f + magic;
    n = t - magic;
    memcpy(&bits, &t, sizeof(bits));
    bits -= 0x4b400000; /* the integer n from t's mantissa */
    r = x - n * 0.693145752f;
    r = r - n * 1.42860677e-6f;
    p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    scale_bits = (uint32_t)(bits + 127) << 23;
    memcpy(&scale, &scale_bits, sizeof(scale));
    return p * scale;
}

VECTORIZE static void
gelu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i], z = v * (float)M_SQRT1_2;
        float a = z < 0 ? -z : z;
        float t = 1.0f / (1.0f + 0.3275911f * a);
        float poly =
            t * (0.254829592f +
                 t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        float erf_a = 1.0f - poly * exp_nonpositive(-a * a);
        float erf_z = z < 0 ? -erf_a : erf_a;
        x[i] = 0.5f * v * (1.0f + erf_z);
    }
}

/*
 * Sums and maxima over a row in LANES independent lanes, combined at the end:
 * GCC vectorises these loops without reordering any one lane's additions
 * (a single running sum it must keep scalar). At the model's sizes (rows of
 * 12-384 floats) the float lanes round no worse than the float64 sum they
 * replace needs (test_bert's 1e-5 reference checks).
 */
#define LANES 16

VECTORIZE static void
layer_norm(const float *in, float *out, size_t rows, size_t h, const float *w, const float *b,
           float eps)
{
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * h;
        float *y = out + r * h;
        float lane[LANES] = {0}, mean = 0, var = 0;
        size_t i = 0;
        for (; i + LANES <= h; i += LANES) {
            for (size_t l = 0; l < LANES; l++) {
                lane[l] += x[i + l];
            }
        }
        for (; i < h; i++) {
            lane[0] += x[i];
        }
        for (size_t l = 0; l < LANES; l++) {
            mean += lane[l];
            lane[l] = 0;
        }
        mean /= (float)h;
        for (i = 0; i + LANES <= h; i += LANES) {
            for (size_t l = 0; l < LANES; l++) {
                float d = x[i + l] - mean;
                lane[l] += d * d;
            }
        }
        for (; i < h; i++) {
            lane[0] += (x[i] - mean) * (x[i] - mean);
        }
        for (size_t l = 0; l < LANES; l++) {
            var += lane[l];
        }
        var /= (float)h;
        float inv = 1.0f / sqrtf(var + eps);
        for (i = 0; i < h; i++) {
            y[i] = (x[i] - mean) * inv * w[i] + b[i];
        }
    }
}

/* row[0..n) = softmax(row) */
VECTORIZE static void
softmax(float *row, size_t n)
{
    float lane[LANES], max = row[0], sum = 0, inv;
    size_t i = 0;

    for (size_t l = 0; l < LANES; l++) {
        lane[l] = row[0];
    }
    for (; i + LANES <= n; i += LANES) {
        for (size_t l = 0; l < LANES; l++) {
            lane[l] = row[i + l] > lane[l] ? row[i + l] : lane[l];
        }
    }
    for (; i < n; i++) {
        max = row[i] > max ? row[i] : max;
    }
    for (size_t l = 0; l < LANES; l++) {
        max = lane[l] > max ? lane[l] : max;
        lane[l] = 0;
    }
    for (i = 0; i < n; i++) {
        row[i] = exp_nonpositive(row[i] - max);
    }
    for (i = 0; i + LANES <= n; i += LANES) {
        for (size_t l = 0; l < LANES; l++) {
            lane[l] += row[i + l];
        }
    }
    for (; i < n; i++) {
        sum += row[i];
    }
    for (size_t l = 0; l < LANES; l++) {
        sum += lane[l];
    }
    inv = 1.0f / sum;
    for (i = 0; i < n; i++) {
        row[i] *= inv;
    }
}

/* Self-attention of one text: its rows of qkv [len x 3H] into ctx [len x H]. */
static void
attention(const struct bert *m, const float *qkv, float *ctx, size_t len, float *scores)
{
    size_t h = m->info.hidden, heads = m->info.heads, d = h / heads;
    float scale = 1.0f / sqrtf((float)d);

    for (size_t hd = 0; hd < heads; hd++) {
        const float *q = qkv + hd * d, *k = qkv + h + hd * d, *v = qkv + 2 * h + hd * d;
        blas_gemm_nt(len, len, d, scale, q, 3 * h, k, 3 * h, 0.0f, scores, len);
        for (size_t r = 0; r < len; r++) {
            softmax(scores + r * len, len);
        }
        blas_gemm_nn(len, d, len, 1.0f, scores, len, v, 3 * h, 0.0f, ctx + hd * d, h);
    }
}

/*
 * Run nseq packed sequences (lens[i] tokens each, ids one after another)
 * through the embeddings and the first `layers` layers; the result is s->x.
 */
static void
forward(const struct bert *m, const int32_t *ids, const size_t *lens, size_t nseq, size_t layers,
        struct bert_scratch *s)
{
    size_t h = m->info.hidden, in = m->info.intermediate, total = 0, longest = 0, row = 0;

    for (size_t i = 0; i < nseq; i++) {
        total += lens[i];
        longest = MAX(longest, lens[i]);
    }
    if (total == 0) {
        return;
    }
    scratch_reserve(m, s, total, longest);
    for (size_t i = 0; i < nseq; i++) {
        for (size_t p = 0; p < lens[i]; p++, row++) {
            const float *w = m->word + (size_t)ids[row] * h, *pos = m->position + p * h;
            float *x = s->tmp + row * h;
            for (size_t j = 0; j < h; j++) {
                x[j] = w[j] + pos[j] + m->token_type[j];
            }
        }
    }
    layer_norm(s->tmp, s->x, total, h, m->emb_ln_w, m->emb_ln_b, m->eps);

    for (size_t l = 0; l < layers; l++) {
        const struct bert_layer *ly = &m->layer[l];
        size_t off = 0;
        dense(s->x, total, &ly->qkv_w, ly->qkv_b, s->qkv, NULL, s->helper);
        for (size_t i = 0; i < nseq; i++) {
            attention(m, s->qkv + off * 3 * h, s->ctx + off * h, lens[i], s->scores);
            off += lens[i];
        }
        dense(s->ctx, total, &ly->attn_out_w, ly->attn_out_b, s->tmp, s->x, s->helper);
        layer_norm(s->tmp, s->x, total, h, ly->ln1_w, ly->ln1_b, m->eps);
        dense(s->x, total, &ly->inter_w, ly->inter_b, s->inter, NULL, s->helper);
        gelu(s->inter, total * in);
        dense(s->inter, total, &ly->out_w, ly->out_b, s->tmp, s->x, s->helper);
        layer_norm(s->tmp, s->x, total, h, ly->ln2_w, ly->ln2_b, m->eps);
    }
}

static void
l2_normalize(float *v, size_t n)
{
    double sum = 0;

    for (size_t i = 0; i < n; i++) {
        sum += (double)v[i] * v[i];
    }
    if (sum > 0) {
        float inv = (float)(1.0 / sqrt(sum));
        for (size_t i = 0; i < n; i++) {
            v[i] *= inv;
        }
    }
}

void
bert_matryoshka(const float *in, float *out, size_t dim)
{
    memmove(out, in, dim * sizeof(float));
    l2_normalize(out, dim);
}

/* Pool the hidden states x [len x H] of one text into out[0..dim). */
static void
pool(const struct bert *m, const float *x, size_t len, float *out, size_t dim, float *tmp)
{
    size_t h = m->info.hidden;

    if (len == 0) {
        /* Only with a tokenizer that adds no special tokens, on an empty text. */
        memset(out, 0, dim * sizeof(float));
        return;
    }
    switch (m->info.pooling) {
    case BERT_POOL_CLS:
        memcpy(tmp, x, h * sizeof(float));
        break;
    case BERT_POOL_MAX:
        memcpy(tmp, x, h * sizeof(float));
        for (size_t r = 1; r < len; r++) {
            for (size_t j = 0; j < h; j++) {
                tmp[j] = x[r * h + j] > tmp[j] ? x[r * h + j] : tmp[j];
            }
        }
        break;
    default:
        for (size_t j = 0; j < h; j++) {
            double sum = 0;
            for (size_t r = 0; r < len; r++) {
                sum += x[r * h + j];
            }
            tmp[j] = (float)(sum / (double)len);
        }
        break;
    }
    if (m->info.normalize) {
        l2_normalize(tmp, h);
    }
    if (dim < h) {
        bert_matryoshka(tmp, out, dim);
    } else {
        memcpy(out, tmp, h * sizeof(float));
    }
}

int
bert_embed(const struct bert *m, const char *const *texts, const size_t *lens, size_t n,
           float *out, size_t dim, uint64_t *usage_tokens, struct bert_scratch *s, char **cause)
{
    size_t maxlen = m->info.max_seq_length, budget = MAX(CHUNK_TOKENS, maxlen);
    size_t first = 0, h = m->info.hidden;
    uint64_t usage = 0;
    float *pooled;

    if (dim == 0 || dim > h) {
        *cause = xasprintf("dimensions %zu is not between 1 and the model's %zu", dim, h);
        return -1;
    }
    if (s->ids_cap < budget) {
        s->ids = xrealloc(s->ids, budget * sizeof(*s->ids));
        s->ids_cap = budget;
    }
    if (s->lens_cap < budget) {
        s->lens = xrealloc(s->lens, budget * sizeof(*s->lens));
        s->lens_cap = budget;
    }
    pooled = xmalloc(h * sizeof(float));
    while (first < n) {
        /* Tokenize texts into the chunk while their tokens fit the budget. */
        size_t used = 0, count = 0, row = 0;
        while (first + count < n && budget - used >= maxlen) {
            size_t k = wordpiece_encode(m->tok, texts[first + count], lens[first + count],
                                        s->ids + used, maxlen);
            s->lens[count++] = k;
            used += k;
        }
        forward(m, s->ids, s->lens, count, m->info.layers, s);
        for (size_t i = 0; i < count; i++) {
            pool(m, s->x + row * h, s->lens[i], out + (first + i) * dim, dim, pooled);
            row += s->lens[i];
        }
        usage += used;
        first += count;
    }
    free(pooled);
    *usage_tokens = usage;
    return 0;
}

int
bert_hidden_states(const struct bert *m, const int32_t *ids, size_t n, size_t layers, float *out,
                   struct bert_scratch *s)
{
    if (n == 0 || n > m->info.max_seq_length || layers > m->info.layers) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= m->info.vocab) {
            return -1;
        }
    }
    forward(m, ids, &n, 1, layers, s);
    memcpy(out, s->x, n * m->info.hidden * sizeof(float));
    return 0;
}
