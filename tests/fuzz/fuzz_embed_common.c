/*
 * fuzz_embed_common.c - the body of the four embedding request harnesses:
 * parse a request for one API, and when it parses, embed every input with the
 * fallback embedder and render the answer in that API's shape; when it does
 * not, render the error. The answer must be JSON of the right shape, and
 * embed_sniff_dimension must read the dimension back from it (and from no
 * prefix read anything else), since the proxy sniffs real upstream answers
 * that look exactly like these.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "embed_api.h"
#include "embedder_hash.h"
#include "fuzz_common.h"
#include "util.h"

/* Small enough that 2048 inputs render quickly, large enough to exercise every float path. */
#define DEFAULT_DIM 8
#define MAX_DIM 16

static void
check_request(const struct embed_request *r)
{
    FUZZ_CHECK(r->ninputs >= 1 && r->ninputs <= EMBED_MAX_INPUTS, "ninputs %zu", r->ninputs);
    FUZZ_CHECK(r->model != NULL, "model is NULL");
    FUZZ_CHECK(r->dimensions <= EMBED_MAX_DIMENSIONS, "dimensions %u", r->dimensions);
    for (size_t i = 0; i < r->ninputs; i++) {
        const struct embed_input *in = &r->inputs[i];
        FUZZ_CHECK((in->text != NULL) != (in->tokens != NULL), "input %zu is not text xor tokens",
                   i);
        if (in->text != NULL) {
            FUZZ_CHECK(in->text[in->len] == '\0', "input %zu text not NUL-terminated", i);
            FUZZ_CHECK(!embedder_hash_is_blank(in->text, in->len), "blank input %zu accepted", i);
        } else {
            FUZZ_CHECK(in->ntokens > 0, "empty token list %zu accepted", i);
        }
    }
}

static void
check_shape(enum embed_api api, const char *body, size_t len, size_t ninputs, size_t dim)
{
    json_error_t error;
    json_t *root = json_loadb(body, len, 0, &error);
    json_t *list = NULL;

    FUZZ_CHECK(root != NULL, "response is not JSON (%s): %.*s", error.text, (int)len, body);
    switch (api) {
    case EMBED_API_OPENAI:
        list = json_object_get(root, "data");
        break;
    case EMBED_API_TEI:
        list = root;
        break;
    case EMBED_API_OLLAMA:
        list = json_object_get(root, "embeddings");
        break;
    case EMBED_API_OLLAMA_LEGACY:
        list = json_object_get(root, "embedding");
        FUZZ_CHECK(json_is_array(list), "legacy response without an embedding array");
        if (ninputs == 1) {
            FUZZ_CHECK(json_array_size(list) == dim, "legacy vector has %zu of %zu values",
                       json_array_size(list), dim);
        }
        json_decref(root);
        return;
    case EMBED_API_NONE:
        fuzz_fail("no API");
    }
    FUZZ_CHECK(json_is_array(list), "response without its list of embeddings");
    FUZZ_CHECK(json_array_size(list) == ninputs, "response holds %zu of %zu embeddings",
               json_array_size(list), ninputs);
    json_decref(root);
}

static void
check_sniff(enum embed_api api, const char *body, size_t len, size_t dim)
{
    unsigned whole = embed_sniff_dimension(api, body, len);
    size_t cuts[] = {len / 2, len > 0 ? len - 1 : 0, len / 3};

    FUZZ_CHECK(whole == dim, "sniffed dimension %u from our own answer of %zu", whole, dim);
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        char *prefix = fuzz_copy((const uint8_t *)body, cuts[i]);
        unsigned part = embed_sniff_dimension(api, prefix, cuts[i]);
        FUZZ_CHECK(part == 0 || part == dim, "prefix of %zu bytes sniffed as %u, whole as %zu",
                   cuts[i], part, dim);
        free(prefix);
    }
}

static void
answer(const struct embed_request *r)
{
    size_t dim = r->dimensions >= 1 && r->dimensions <= MAX_DIM ? r->dimensions : DEFAULT_DIM;
    float *vectors = xcalloc(r->ninputs * dim, sizeof(float));
    size_t len = 0;
    char *body;

    for (size_t i = 0; i < r->ninputs; i++) {
        const struct embed_input *in = &r->inputs[i];
        int rc = in->text != NULL ? embedder_hash_text(in->text, in->len, vectors + i * dim, dim)
                                  : embedder_hash_tokens(in->tokens, in->ntokens,
                                                         vectors + i * dim, dim);
        FUZZ_CHECK(rc == 0, "fallback embedder refused parsed input %zu", i);
    }
    body = embed_render_response(r, vectors, dim, NULL, &len);
    FUZZ_CHECK(body != NULL && strlen(body) == len, "response length %zu is wrong", len);
    check_shape(r->api, body, len, r->ninputs, dim);
    check_sniff(r->api, body, len, dim);
    {
        /* The cache reads answers back: what we render, it must parse, vector for vector. */
        float *back = NULL;
        unsigned bdim = 0;
        size_t usage;
        bool known;
        char err[160];
        int rc = embed_answer_parse(r->api, body, len, r->ninputs, &back, &bdim, &usage, &known,
                                    err, sizeof(err));
        FUZZ_CHECK(rc == 0, "a rendered answer did not parse back: %s", err);
        FUZZ_CHECK(bdim == dim, "parsed %u elements of %zu", bdim, dim);
        if (r->base64) {
            FUZZ_CHECK(memcmp(back, vectors, r->ninputs * dim * sizeof(float)) == 0,
                       "base64 vectors changed on the way back");
        }
        free(back);
    }
    free(body);
    free(vectors);
}

static void
param_seen(void *arg, const char *name, const char *json, size_t n)
{
    (void)arg;
    FUZZ_CHECK(name[0] != '\0' && n > 0 && strlen(json) == n, "a parameter without a value");
}

/* The cache's view of a parsed request: its parameters, and each one-input subset. */
static void
check_cache_view(const struct embed_request *r, const char *body, size_t size)
{
    struct buf b;

    FUZZ_CHECK(embed_request_vector_params(r->api, body, size, param_seen, NULL) == 0,
               "a parsed request has no parameters to key");
    if (r->single || r->api == EMBED_API_OLLAMA_LEGACY) {
        return;
    }
    buf_init(&b);
    for (size_t i = 0; i < r->ninputs && i < 4; i++) {
        struct embed_request sub;
        char err[256];
        const char *param = NULL;
        b.len = 0;
        FUZZ_CHECK(embed_request_subset(r->api, body, size, &i, 1, &b) == 0,
                   "no subset of input %zu", i);
        FUZZ_CHECK(embed_request_parse(r->api, b.data, b.len, &sub, err, sizeof(err), &param) == 0,
                   "the subset of input %zu does not parse: %s", i, err);
        FUZZ_CHECK(sub.ninputs == 1, "the subset has %zu inputs", sub.ninputs);
        embed_request_free(&sub);
    }
    buf_free(&b);
}

int
fuzz_embed_one(enum embed_api api, const uint8_t *data, size_t size)
{
    char *body = fuzz_copy(data, size);
    struct embed_request r;
    char err[256];
    const char *param = NULL;
    int rc;

    memset(err, 0, sizeof(err));
    rc = embed_request_parse(api, body, size, &r, err, sizeof(err), &param);
    FUZZ_CHECK(rc == 0 || rc == -1, "parse returned %d", rc);
    if (rc == 0) {
        FUZZ_CHECK(r.api == api, "parsed api %d for %d", r.api, api);
        check_request(&r);
        answer(&r);
        check_cache_view(&r, body, size);
        embed_request_free(&r);
    } else {
        size_t len = 0;
        char *e;

        FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL,
                   "rejected without a message");
        e = embed_render_error(api, err, "invalid_request_error", param, NULL, &len);
        FUZZ_CHECK(e != NULL && strlen(e) == len, "error length %zu is wrong", len);
        FUZZ_CHECK(fuzz_is_json(e, len), "error body is not JSON: %s", e);
        free(e);
    }
    /* The proxy also sniffs untrusted upstream bodies; any bytes must be safe to scan. */
    (void)embed_sniff_dimension(api, body, size);
    {
        float *v = NULL;
        unsigned dim;
        size_t usage;
        bool known;
        char err[160];
        if (embed_answer_parse(api, body, size, 1 + size % 3, &v, &dim, &usage, &known, err,
                               sizeof(err)) == 0) {
            FUZZ_CHECK(dim > 0 && v != NULL, "an answer parsed to nothing");
        }
        free(v);
    }
    free(body);
    return 0;
}
