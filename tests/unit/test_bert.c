/*
 * test_bert.c - the local BERT model against a float64 reference.
 *
 * tests/bert_model.py writes a tiny random-weight model (hidden 32, 2 layers,
 * 4 heads, the real 30,522-token vocabulary) in the sentence-transformers
 * layout and its numpy reference: hidden states after the embeddings and
 * each layer, and the pooled vectors of a padded, masked batch mixing short
 * texts with one longer than max_seq_length. Every element must be within
 * 1e-5 and every vector's cosine at least 0.99999, for F32, F16 and BF16
 * weights and mean, CLS and max pooling. Then each kind of model directory
 * the loader must refuse, with the error naming what is wrong.
 *
 * Needs /usr/bin/python3 with numpy (AKOSHA_PYTHON overrides); the tests
 * skip, saying so, without it.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bert.h"
#include "util.h"
#include "wordpiece.h"

#define TOLERANCE 1e-5
#define MIN_COSINE 0.99999

static const char *
python(void)
{
    const char *p = getenv("AKOSHA_PYTHON");

    return p != NULL ? p : "/usr/bin/python3";
}

/* A new model directory from tests/bert_model.py with args; the caller removes it. */
static char *
make_model(const char *args)
{
    const char *src = getenv("AKOSHA_SRCDIR");
    char *dir = xstrdup("/tmp/akosha-bert-XXXXXX");
    char *cmd;
    int rc;

    cmd = xasprintf("%s -c 'import numpy' 2>/dev/null", python());
    if (system(cmd) != 0) {
        free(cmd);
        free(dir);
        cr_skip_test("%s with numpy is needed to generate the models (python3-numpy)", python());
    }
    free(cmd);
    cr_assert_not_null(mkdtemp(dir));
    cmd = xasprintf("%s %s/tests/bert_model.py --out %s %s", python(), src ? src : ".", dir, args);
    rc = system(cmd);
    cr_assert_eq(rc, 0, "%s failed", cmd);
    free(cmd);
    return dir;
}

static void
remove_model(char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);

    cr_assert_eq(system(cmd), 0);
    free(cmd);
    free(dir);
}

static json_t *
load_json(const char *dir, const char *name)
{
    char *path = xasprintf("%s/%s", dir, name);
    json_error_t jerr;
    json_t *v = json_load_file(path, 0, &jerr);

    cr_assert_not_null(v, "%s: %s", path, jerr.text);
    free(path);
    return v;
}

static void
save_json(const char *dir, const char *name, json_t *v)
{
    char *path = xasprintf("%s/%s", dir, name);

    cr_assert_eq(json_dump_file(v, path, 0), 0);
    free(path);
}

static double
cosine(const float *a, const json_t *b, size_t n)
{
    double dot = 0, na = 0, nb = 0;

    for (size_t i = 0; i < n; i++) {
        double y = json_real_value(json_array_get(b, i));
        dot += a[i] * y;
        na += (double)a[i] * a[i];
        nb += y * y;
    }
    return dot / sqrt(na * nb);
}

static void
check_model(const char *args)
{
    char *dir = make_model(args), *cause = NULL;
    json_t *ref = load_json(dir, "reference.json");
    json_t *texts = json_object_get(ref, "texts"), *ids = json_object_get(ref, "ids");
    json_t *states = json_object_get(ref, "states"), *embs = json_object_get(ref, "embeddings");
    size_t n = json_array_size(texts), total = 0;
    struct bert *m = NULL;
    struct wordpiece *wp = NULL;
    struct bert_scratch *s = bert_scratch_new();
    const char **tv = xcalloc(n, sizeof(*tv));
    size_t *lens = xcalloc(n, sizeof(*lens));
    uint64_t usage = 0;
    double worst = 0, worst_cos = 1;

    cr_assert_eq(bert_load(dir, &m, &cause), 0, "%s", cause);
    cr_assert_eq(wordpiece_load(dir, &wp, &cause), 0, "%s", cause);
    const struct bert_info *info = bert_info(m);
    size_t h = info->hidden;
    cr_assert_eq(h, 32);
    cr_assert_eq(info->max_seq_length, 24);

    /* Token ids, then every layer's hidden states, text by text. */
    for (size_t t = 0; t < n; t++) {
        const json_t *want = json_array_get(ids, t);
        size_t len = json_array_size(want);
        int32_t got[64];
        tv[t] = json_string_value(json_array_get(texts, t));
        lens[t] = json_string_length(json_array_get(texts, t));
        cr_assert_eq(wordpiece_encode(wp, tv[t], lens[t], got, info->max_seq_length), len,
                     "text %zu: token count", t);
        for (size_t k = 0; k < len; k++) {
            cr_assert_eq(got[k], json_integer_value(json_array_get(want, k)), "text %zu id %zu", t,
                         k);
        }
        total += len;
        float *hs = xmalloc(len * h * sizeof(float));
        for (size_t l = 0; l < json_array_size(states); l++) {
            const json_t *rows = json_array_get(json_array_get(states, l), t);
            cr_assert_eq(bert_hidden_states(m, got, len, l, hs, s), 0);
            for (size_t r = 0; r < len; r++) {
                for (size_t j = 0; j < h; j++) {
                    double want_v = json_real_value(json_array_get(json_array_get(rows, r), j));
                    double d = fabs(hs[r * h + j] - want_v);
                    cr_assert_leq(d, TOLERANCE, "layer %zu text %zu token %zu [%zu]: %g vs %g", l,
                                  t, r, j, hs[r * h + j], want_v);
                }
            }
        }
        free(hs);
    }

    /* The whole batch at once, short and long texts mixed. */
    float *out = xmalloc(n * h * sizeof(float));
    cr_assert_eq(bert_embed(m, tv, lens, n, out, h, &usage, s, &cause), 0, "%s", cause);
    cr_assert_eq(usage, total);
    for (size_t t = 0; t < n; t++) {
        const json_t *want = json_array_get(embs, t);
        for (size_t j = 0; j < h; j++) {
            double d = fabs(out[t * h + j] - json_real_value(json_array_get(want, j)));
            worst = d > worst ? d : worst;
            cr_assert_leq(d, TOLERANCE, "text %zu [%zu]: %g vs %g", t, j, out[t * h + j],
                          json_real_value(json_array_get(want, j)));
        }
        double c = cosine(out + t * h, want, h);
        worst_cos = c < worst_cos ? c : worst_cos;
        cr_assert_geq(c, MIN_COSINE, "text %zu: cosine %.9f", t, c);
    }

    /* One text at a time gives the batch's vectors. */
    float one[32];
    for (size_t t = 0; t < n; t++) {
        cr_assert_eq(bert_embed(m, &tv[t], &lens[t], 1, one, h, &usage, s, &cause), 0);
        for (size_t j = 0; j < h; j++) {
            cr_assert_float_eq(one[j], out[t * h + j], TOLERANCE);
        }
    }
    fprintf(stderr, "bert_model.py %s: worst element error %.2e, worst cosine %.9f\n", args,
            worst, worst_cos);

    free(out);
    free(tv);
    free(lens);
    bert_scratch_free(s);
    wordpiece_free(wp);
    bert_free(m);
    json_decref(ref);
    remove_model(dir);
}

Test(bert, f32_mean_pooling_matches_reference)
{
    check_model("--dtype F32 --pooling mean");
}

Test(bert, f32_cls_pooling_matches_reference)
{
    check_model("--dtype F32 --pooling cls --prefix");
}

Test(bert, f16_mean_pooling_matches_reference)
{
    check_model("--dtype F16 --pooling mean --prefix");
}

Test(bert, f16_cls_pooling_matches_reference)
{
    check_model("--dtype F16 --pooling cls --vocab-txt");
}

Test(bert, bf16_mean_pooling_matches_reference)
{
    check_model("--dtype BF16 --pooling mean --vocab-txt");
}

Test(bert, bf16_cls_pooling_matches_reference)
{
    check_model("--dtype BF16 --pooling cls");
}

Test(bert, max_pooling_without_normalize_matches_reference)
{
    check_model("--dtype F32 --pooling max --no-normalize --seed 5");
}

Test(bert, matryoshka_dimensions_truncate_and_renormalise)
{
    char *dir = make_model("--no-reference"), *cause = NULL;
    struct bert *m = NULL;
    struct bert_scratch *s = bert_scratch_new();
    const char *text = "fallback vectors in the same space";
    size_t len = strlen(text);
    float full[32], part[12];
    uint64_t usage;
    double norm = 0;

    cr_assert_eq(bert_load(dir, &m, &cause), 0, "%s", cause);
    cr_assert_eq(bert_embed(m, &text, &len, 1, full, 32, &usage, s, &cause), 0);
    cr_assert_eq(bert_embed(m, &text, &len, 1, part, 12, &usage, s, &cause), 0);
    bert_matryoshka(full, full, 12);
    for (size_t j = 0; j < 12; j++) {
        cr_assert_float_eq(part[j], full[j], 1e-7);
        norm += (double)part[j] * part[j];
    }
    cr_assert_float_eq(norm, 1.0, 1e-6);
    cr_assert_eq(bert_embed(m, &text, &len, 1, full, 33, &usage, s, &cause), -1);
    cr_assert_not_null(strstr(cause, "dimensions 33"), "%s", cause);
    free(cause);
    cr_assert_eq(bert_embed(m, &text, &len, 1, full, 0, &usage, s, &cause), -1);
    free(cause);
    bert_scratch_free(s);
    bert_free(m);
    remove_model(dir);
}

struct worker_arg {
    const struct bert *m;
    const char **texts;
    size_t *lens;
    size_t n;
    float *out;
};

static void *
embed_repeatedly(void *p)
{
    struct worker_arg *w = p;
    struct bert_scratch *s = bert_scratch_new();
    uint64_t usage;
    char *cause = NULL;

    for (int round = 0; round < 20; round++) {
        if (bert_embed(w->m, w->texts, w->lens, w->n, w->out, 32, &usage, s, &cause) != 0) {
            free(cause);
            bert_scratch_free(s);
            return (void *)1;
        }
    }
    bert_scratch_free(s);
    return NULL;
}

Test(bert, threads_share_one_model_with_their_own_scratch)
{
    char *dir = make_model("--no-reference"), *cause = NULL;
    static const char *texts[] = {"one short text", "another, somewhat longer text to embed here",
                                  "x", ""};
    size_t lens[4];
    struct bert *m = NULL;
    struct bert_scratch *s = bert_scratch_new();
    float want[4 * 32], got[4][4 * 32];
    struct worker_arg args[4];
    pthread_t tid[4];
    uint64_t usage;

    for (size_t i = 0; i < 4; i++) {
        lens[i] = strlen(texts[i]);
    }
    cr_assert_eq(bert_load(dir, &m, &cause), 0, "%s", cause);
    cr_assert_eq(bert_embed(m, texts, lens, 4, want, 32, &usage, s, &cause), 0);
    for (size_t t = 0; t < 4; t++) {
        args[t] = (struct worker_arg){m, texts, lens, 4, got[t]};
        cr_assert_eq(pthread_create(&tid[t], NULL, embed_repeatedly, &args[t]), 0);
    }
    for (size_t t = 0; t < 4; t++) {
        void *rc;
        cr_assert_eq(pthread_join(tid[t], &rc), 0);
        cr_assert_null(rc);
        cr_assert_arr_eq(got[t], want, sizeof(want), "thread %zu differs", t);
    }
    bert_scratch_free(s);
    bert_free(m);
    remove_model(dir);
}

/* A helper that runs each posted half on a thread of its own (or refuses, when refuse is set). */
struct thread_helper {
    pthread_t tid;
    void (*fn)(void *arg);
    void *arg;
    bool refuse;
    int posts;
};

static void *
helper_thread(void *p)
{
    struct thread_helper *h = p;

    h->fn(h->arg);
    return NULL;
}

static bool
helper_post(void *ctx, void (*fn)(void *arg), void *arg)
{
    struct thread_helper *h = ctx;

    if (h->refuse) {
        return false;
    }
    h->fn = fn;
    h->arg = arg;
    h->posts++;
    cr_assert_eq(pthread_create(&h->tid, NULL, helper_thread, h), 0);
    return true;
}

static void
helper_wait(void *ctx)
{
    struct thread_helper *h = ctx;

    cr_assert_eq(pthread_join(h->tid, NULL), 0);
}

Test(bert, a_helper_splitting_the_dense_layers_gives_the_same_vectors)
{
    char *dir = make_model("--no-reference"), *cause = NULL;
    static const char *texts[] = {"one short text", "another, somewhat longer text to embed here",
                                  "x"};
    size_t lens[3];
    struct bert *m = NULL;
    struct bert_scratch *s = bert_scratch_new();
    float want[3 * 32], got[3 * 32], refused[3 * 32];
    struct thread_helper th = {0};
    struct bert_helper helper = {helper_post, helper_wait, &th};
    uint64_t usage;

    for (size_t i = 0; i < 3; i++) {
        lens[i] = strlen(texts[i]);
    }
    cr_assert_eq(bert_load(dir, &m, &cause), 0, "%s", cause);
    cr_assert_eq(bert_embed(m, texts, lens, 3, want, 32, &usage, s, &cause), 0);
    bert_scratch_set_helper(s, &helper);
    cr_assert_eq(bert_embed(m, texts, lens, 3, got, 32, &usage, s, &cause), 0);
    /* Every product of more than one panel (query-key-value, intermediate) is split. */
    cr_assert_gt(th.posts, 0);
    th.refuse = true;
    cr_assert_eq(bert_embed(m, texts, lens, 3, refused, 32, &usage, s, &cause), 0);
    bert_scratch_set_helper(s, NULL);
    /* The same kernel on the same panels: the same floats, bit for bit. */
    cr_assert_arr_eq(got, want, sizeof(want));
    cr_assert_arr_eq(refused, want, sizeof(want));
    bert_scratch_free(s);
    bert_free(m);
    remove_model(dir);
}

/* Change one key of a JSON file in dir (value NULL: remove it). */
static void
set_key(const char *dir, const char *file, const char *key, json_t *value)
{
    json_t *v = load_json(dir, file);

    if (value != NULL) {
        json_object_set_new(v, key, value);
    } else {
        json_object_del(v, key);
    }
    save_json(dir, file, v);
    json_decref(v);
}

static void
expect_refused(const char *dir, const char *needle)
{
    struct bert *m = NULL;
    char *cause = NULL;

    cr_assert_eq(bert_load(dir, &m, &cause), -1, "loaded, expected \"%s\"", needle);
    cr_assert_null(m);
    cr_assert_not_null(cause);
    cr_assert_not_null(strstr(cause, needle), "cause \"%s\" lacks \"%s\"", cause, needle);
    free(cause);
}

Test(bert, unsupported_configs_are_refused_by_name)
{
    char *dir = make_model("--no-reference");
    json_t *cfg = load_json(dir, "config.json");

    set_key(dir, "config.json", "model_type", json_string("roberta"));
    expect_refused(dir, "model_type \"roberta\" is not supported");
    save_json(dir, "config.json", cfg);
    set_key(dir, "config.json", "hidden_act", json_string("gelu_new"));
    expect_refused(dir, "hidden_act \"gelu_new\" is not supported");
    save_json(dir, "config.json", cfg);
    set_key(dir, "config.json", "position_embedding_type", json_string("relative_key"));
    expect_refused(dir, "position_embedding_type \"relative_key\"");
    save_json(dir, "config.json", cfg);
    set_key(dir, "config.json", "num_attention_heads", json_integer(5));
    expect_refused(dir, "not a multiple of num_attention_heads 5");
    save_json(dir, "config.json", cfg);
    set_key(dir, "config.json", "hidden_size", NULL);
    expect_refused(dir, "\"hidden_size\" is missing");
    save_json(dir, "config.json", cfg);
    /* Shapes are checked against config.json, every one of them. */
    set_key(dir, "config.json", "intermediate_size", json_integer(65));
    expect_refused(dir, "\"encoder.layer.0.intermediate.dense.weight\" has shape [64, 32], "
                        "config.json gives [65, 32]");
    save_json(dir, "config.json", cfg);
    set_key(dir, "config.json", "vocab_size", json_integer(100));
    expect_refused(dir, "vocab_size is 100");
    save_json(dir, "config.json", cfg);
    set_key(dir, "config.json", "max_position_embeddings", json_integer(64));
    expect_refused(dir, "\"embeddings.position_embeddings.weight\" has shape [40, 32]");
    save_json(dir, "config.json", cfg);

    set_key(dir, "1_Pooling/config.json", "pooling_mode_weightedmean_tokens", json_true());
    expect_refused(dir, "pooling_mode_weightedmean_tokens is not supported");
    set_key(dir, "1_Pooling/config.json", "pooling_mode_weightedmean_tokens", json_false());
    set_key(dir, "1_Pooling/config.json", "pooling_mode_cls_token", json_true());
    expect_refused(dir, "exactly one of");
    set_key(dir, "1_Pooling/config.json", "pooling_mode_cls_token", json_false());

    json_t *mods = load_json(dir, "modules.json");
    json_t *dense = json_pack("{s:i,s:s,s:s,s:s}", "idx", 3, "name", "3", "path", "3_Dense",
                              "type", "sentence_transformers.models.Dense");
    json_array_append_new(mods, dense);
    save_json(dir, "modules.json", mods);
    expect_refused(dir, "module \"sentence_transformers.models.Dense\" is not supported");
    json_array_remove(mods, json_array_size(mods) - 1);
    save_json(dir, "modules.json", mods);
    json_decref(mods);

    set_key(dir, "sentence_bert_config.json", "do_lower_case", json_true());
    expect_refused(dir, "do_lower_case");
    set_key(dir, "sentence_bert_config.json", "do_lower_case", json_false());

    /* A tokenizer.json of another kind, named with its file. */
    char *path = xasprintf("%s/tokenizer.json", dir);
    json_t *tok = load_json(dir, "tokenizer.json");
    json_object_set_new(json_object_get(tok, "model"), "type", json_string("Unigram"));
    save_json(dir, "tokenizer.json", tok);
    expect_refused(dir, "tokenizer.json: model \"Unigram\" is not supported");
    json_decref(tok);
    free(path);

    json_decref(cfg);
    remove_model(dir);
}

Test(bert, missing_files_and_tensors_and_truncated_weights_are_refused)
{
    char *dir = make_model("--no-reference --drop encoder.layer.1.output.LayerNorm.bias");
    char *path;
    struct bert *m = NULL;
    char *cause = NULL;

    expect_refused(dir, "tensor \"encoder.layer.1.output.LayerNorm.bias\" is missing");
    remove_model(dir);

    dir = make_model("--no-reference --vocab-txt");
    cr_assert_eq(bert_load(dir, &m, &cause), 0, "%s", cause);
    bert_free(m);
    path = xasprintf("%s/model.safetensors", dir);
    cr_assert_eq(truncate(path, 4000), 0);
    expect_refused(dir, "model.safetensors: header length");
    cr_assert_eq(unlink(path), 0);
    expect_refused(dir, "model.safetensors: No such file");
    free(path);
    path = xasprintf("%s/vocab.txt", dir);
    cr_assert_eq(unlink(path), 0);
    expect_refused(dir, "vocab.txt: No such file");
    free(path);
    path = xasprintf("%s/config.json", dir);
    cr_assert_eq(unlink(path), 0);
    expect_refused(dir, "config.json: No such file");
    free(path);
    remove_model(dir);
}
