/*
 * test_embed_api.c - routing, request parsing (accepted forms and every 400),
 * rendering in each API's shape, the float formatter and dimension sniffing.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed_api.h"
#include "util.h"

static uint32_t
float_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    return b;
}

static int
parse(enum embed_api api, const char *body, struct embed_request *r, char *err, size_t errlen,
      const char **param)
{
    return embed_request_parse(api, body, strlen(body), r, err, errlen, param);
}

static void
parse_ok(enum embed_api api, const char *body, struct embed_request *r)
{
    char err[256];
    const char *param;

    cr_assert_eq(parse(api, body, r, err, sizeof(err), &param), 0, "%s -> %s", body, err);
}

/* Asserts body is refused, that the message contains want and names param. */
static void
parse_fails(enum embed_api api, const char *body, const char *want, const char *want_param)
{
    struct embed_request r;
    char err[256] = "";
    const char *param = "unset";

    cr_assert_eq(parse(api, body, &r, err, sizeof(err), &param), -1, "accepted: %s", body);
    cr_expect(strstr(err, want) != NULL, "body %s: message '%s' lacks '%s'", body, err, want);
    if (want_param == NULL) {
        cr_expect_null(param, "body %s: param %s", body, param ? param : "");
    } else {
        cr_expect(param != NULL && strcmp(param, want_param) == 0, "body %s: param %s", body,
                  param ? param : "(null)");
    }
}

/* ---------------------------------------------------------------- routing */

Test(embed_api, routes_map_exact_paths_to_apis)
{
    cr_expect_eq(embed_api_route("/v1/embeddings", 14), EMBED_API_OPENAI);
    cr_expect_eq(embed_api_route("/embeddings", 11), EMBED_API_OPENAI);
    cr_expect_eq(embed_api_route("/embed", 6), EMBED_API_TEI);
    cr_expect_eq(embed_api_route("/api/embed", 10), EMBED_API_OLLAMA);
    cr_expect_eq(embed_api_route("/api/embeddings", 15), EMBED_API_OLLAMA_LEGACY);
    cr_expect_eq(embed_api_route("/v1/embeddings/", 15), EMBED_API_NONE);
    cr_expect_eq(embed_api_route("/v1/embedding", 13), EMBED_API_NONE);
    cr_expect_eq(embed_api_route("/embedx", 7), EMBED_API_NONE);
    cr_expect_eq(embed_api_route("/", 1), EMBED_API_NONE);
    cr_expect_eq(embed_api_route("", 0), EMBED_API_NONE);
    /* the length, not the NUL, bounds the path: a query string after it is not part of it */
    cr_expect_eq(embed_api_route("/embed?x=1", 6), EMBED_API_TEI);
    cr_expect_eq(embed_api_route("/embed?x=1", 10), EMBED_API_NONE);
}

Test(embed_api, route_labels_are_bounded)
{
    cr_expect_str_eq(embed_api_route_label(EMBED_API_OPENAI, "/embeddings", 11), "embeddings");
    cr_expect_str_eq(embed_api_route_label(EMBED_API_TEI, "/embed", 6), "embed");
    cr_expect_str_eq(embed_api_route_label(EMBED_API_OLLAMA, "/api/embed", 10), "api_embed");
    cr_expect_str_eq(embed_api_route_label(EMBED_API_OLLAMA_LEGACY, "/api/embeddings", 15),
                     "api_embeddings");
    cr_expect_str_eq(embed_api_route_label(EMBED_API_NONE, "/secret/path", 12), "other");
    cr_expect_str_eq(embed_api_route_label(EMBED_API_NONE, "/v1/embeddings", 14), "embeddings");
    cr_expect_str_eq(embed_api_route_label(EMBED_API_NONE, NULL, 0), "other");
}

/* ---------------------------------------------------------- parse: OpenAI */

Test(embed_api, openai_accepts_single_string)
{
    struct embed_request r;

    parse_ok(EMBED_API_OPENAI, "{\"input\":\"hello world\",\"model\":\"text-embedding-3-small\"}",
             &r);
    cr_expect_eq(r.api, EMBED_API_OPENAI);
    cr_expect_str_eq(r.model, "text-embedding-3-small");
    cr_assert_eq(r.ninputs, 1);
    cr_expect(r.single);
    cr_expect_str_eq(r.inputs[0].text, "hello world");
    cr_expect_eq(r.inputs[0].len, 11);
    cr_expect_null(r.inputs[0].tokens);
    cr_expect_not(r.base64);
    cr_expect_eq(r.dimensions, 0);
    embed_request_free(&r);
}

Test(embed_api, openai_accepts_array_of_strings_with_options)
{
    struct embed_request r;

    parse_ok(EMBED_API_OPENAI,
             "{\"input\":[\"a\",\"b c\",\"caf\\u00e9\"],\"encoding_format\":\"base64\","
             "\"dimensions\":256,\"user\":\"u-1\",\"unknown\":{\"x\":1}}",
             &r);
    cr_assert_eq(r.ninputs, 3);
    cr_expect_not(r.single);
    cr_expect_str_eq(r.inputs[1].text, "b c");
    cr_expect_str_eq(r.inputs[2].text, "caf\xc3\xa9");
    cr_expect_eq(r.inputs[2].len, 5);
    cr_expect(r.base64);
    cr_expect_eq(r.dimensions, 256);
    cr_expect_str_eq(r.model, "");
    embed_request_free(&r);
}

Test(embed_api, openai_accepts_token_ids_and_lists_of_token_ids)
{
    struct embed_request r;

    parse_ok(EMBED_API_OPENAI, "{\"input\":[101,0,2147483647],\"encoding_format\":\"float\"}", &r);
    cr_assert_eq(r.ninputs, 1);
    cr_expect(r.single);
    cr_expect_null(r.inputs[0].text);
    cr_assert_eq(r.inputs[0].ntokens, 3);
    cr_expect_eq(r.inputs[0].tokens[0], 101);
    cr_expect_eq(r.inputs[0].tokens[1], 0);
    cr_expect_eq(r.inputs[0].tokens[2], 2147483647);
    embed_request_free(&r);

    parse_ok(EMBED_API_OPENAI, "{\"input\":[[1,2],[3],[4,5,6]],\"model\":null}", &r);
    cr_assert_eq(r.ninputs, 3);
    cr_expect_not(r.single);
    cr_expect_eq(r.inputs[0].ntokens, 2);
    cr_expect_eq(r.inputs[1].ntokens, 1);
    cr_expect_eq(r.inputs[1].tokens[0], 3);
    cr_expect_eq(r.inputs[2].ntokens, 3);
    cr_expect_eq(r.inputs[2].tokens[2], 6);
    cr_expect_str_eq(r.model, "");
    embed_request_free(&r);
}

Test(embed_api, openai_accepts_the_maximum_number_of_inputs)
{
    struct buf body;
    struct embed_request r;
    char err[256];
    const char *param;

    buf_init(&body);
    buf_puts(&body, "{\"input\":[");
    for (int i = 0; i < EMBED_MAX_INPUTS; i++) {
        buf_printf(&body, "%s\"text %d\"", i ? "," : "", i);
    }
    buf_puts(&body, "]}");
    cr_assert_eq(
        embed_request_parse(EMBED_API_OPENAI, body.data, body.len, &r, err, sizeof(err), &param), 0,
        "%s", err);
    cr_expect_eq(r.ninputs, EMBED_MAX_INPUTS);
    cr_expect_str_eq(r.inputs[EMBED_MAX_INPUTS - 1].text, "text 2047");
    embed_request_free(&r);

    /* one more is refused */
    body.len -= 2;
    buf_puts(&body, ",\"x\"]}");
    cr_expect_eq(
        embed_request_parse(EMBED_API_OPENAI, body.data, body.len, &r, err, sizeof(err), &param),
        -1);
    cr_expect(strstr(err, "at most 2048") != NULL, "%s", err);
    cr_expect_str_eq(param, "input");
    buf_free(&body);
}

Test(embed_api, openai_refuses_invalid_requests)
{
    const enum embed_api o = EMBED_API_OPENAI;

    parse_fails(o, "", "empty", NULL);
    parse_fails(o, "{\"input\":", "not valid JSON", NULL);
    parse_fails(o, "input=hello", "not valid JSON", NULL);
    parse_fails(o, "[\"hello\"]", "must be a JSON object", NULL);
    parse_fails(o, "\"hello\"", "must be a JSON object", NULL);
    parse_fails(o, "{}", "'input' is required", "input");
    parse_fails(o, "{\"input\":null}", "'input' is required", "input");
    parse_fails(o, "{\"input\":\"\"}", "'input' is empty or whitespace-only", "input");
    parse_fails(o, "{\"input\":\" \\n\\t \"}", "'input' is empty or whitespace-only", "input");
    parse_fails(o, "{\"input\":[]}", "must not be an empty array", "input");
    parse_fails(o, "{\"input\":[\"ok\",\"\"]}", "'input[1]' is empty or whitespace-only", "input");
    parse_fails(o, "{\"input\":[\"ok\",\"fine\",\"  \"]}", "'input[2]' is empty", "input");
    parse_fails(o, "{\"input\":42}", "'input' must be a string, an array of strings", "input");
    parse_fails(o, "{\"input\":{\"text\":\"x\"}}", "'input' must be a string", "input");
    parse_fails(o, "{\"input\":[true]}", "'input' must be a string", "input");
    parse_fails(o, "{\"input\":[\"a\",1]}", "mixes strings with other values (at index 1)",
                "input");
    parse_fails(o, "{\"input\":[1,\"a\"]}", "mixes token ids with other values (at index 1)",
                "input");
    parse_fails(o, "{\"input\":[1,2.5]}", "mixes token ids", "input");
    parse_fails(o, "{\"input\":[[1],2]}", "mixes token lists with other values (at index 1)",
                "input");
    parse_fails(o, "{\"input\":[[1],[\"a\"]]}", "'input[1][0]' is not a token id", "input");
    parse_fails(o, "{\"input\":[[1],[]]}", "'input[1]' is an empty token list", "input");
    parse_fails(o, "{\"input\":[-1]}", "'input[0]' is not a token id", "input");
    parse_fails(o, "{\"input\":[5,2147483648]}", "'input[1]' is not a token id", "input");
    parse_fails(o, "{\"input\":[[1,2,-7]]}", "'input[0][2]' is not a token id", "input");
    parse_fails(o, "{\"input\":[99999999999999999999999]}", "number out of range", NULL);
    parse_fails(o, "{\"input\":\"x\",\"model\":5}", "'model' must be a string", "model");
    parse_fails(o, "{\"input\":\"x\",\"encoding_format\":\"int8\"}",
                "'encoding_format' must be \"float\" or \"base64\"", "encoding_format");
    parse_fails(o, "{\"input\":\"x\",\"encoding_format\":1}", "'encoding_format' must be",
                "encoding_format");
    parse_fails(o, "{\"input\":\"x\",\"dimensions\":0}",
                "'dimensions' must be an integer between 1 and 4096", "dimensions");
    parse_fails(o, "{\"input\":\"x\",\"dimensions\":-3}", "'dimensions' must be", "dimensions");
    parse_fails(o, "{\"input\":\"x\",\"dimensions\":4097}", "'dimensions' must be", "dimensions");
    parse_fails(o, "{\"input\":\"x\",\"dimensions\":\"256\"}", "'dimensions' must be",
                "dimensions");
    parse_fails(o, "{\"input\":\"x\",\"dimensions\":12.5}", "'dimensions' must be", "dimensions");
}

Test(embed_api, openai_refuses_too_many_token_lists)
{
    struct buf body;
    struct embed_request r;
    char err[256];
    const char *param;

    buf_init(&body);
    buf_puts(&body, "{\"input\":[");
    for (int i = 0; i <= EMBED_MAX_INPUTS; i++) {
        buf_printf(&body, "%s[%d]", i ? "," : "", i);
    }
    buf_puts(&body, "]}");
    cr_expect_eq(
        embed_request_parse(EMBED_API_OPENAI, body.data, body.len, &r, err, sizeof(err), &param),
        -1);
    cr_expect(strstr(err, "has 2049 items; at most 2048") != NULL, "%s", err);
    buf_free(&body);
}

Test(embed_api, error_message_is_truncated_to_buffer)
{
    struct embed_request r;
    char err[8];
    const char *param;

    cr_assert_eq(parse(EMBED_API_OPENAI, "{}", &r, err, sizeof(err), &param), -1);
    cr_expect_eq(strlen(err), sizeof(err) - 1);
}

/* ------------------------------------------------------------- parse: TEI */

Test(embed_api, tei_accepts_string_and_array_with_options)
{
    struct embed_request r;

    parse_ok(EMBED_API_TEI, "{\"inputs\":\"What is Deep Learning?\"}", &r);
    cr_assert_eq(r.ninputs, 1);
    cr_expect(r.single);
    cr_expect(r.normalize);
    cr_expect_not(r.truncate);
    cr_expect_str_eq(r.inputs[0].text, "What is Deep Learning?");
    cr_expect_str_eq(r.model, "");
    embed_request_free(&r);

    parse_ok(EMBED_API_TEI,
             "{\"inputs\":[\"a\",\"b\"],\"normalize\":false,\"truncate\":true,"
             "\"truncation_direction\":\"Left\",\"prompt_name\":\"query\"}",
             &r);
    cr_assert_eq(r.ninputs, 2);
    cr_expect_not(r.single);
    cr_expect_not(r.normalize);
    cr_expect(r.truncate);
    cr_expect_str_eq(r.inputs[1].text, "b");
    embed_request_free(&r);
}

Test(embed_api, tei_refuses_invalid_requests)
{
    const enum embed_api t = EMBED_API_TEI;

    parse_fails(t, "{\"input\":\"x\"}", "'inputs' is required", "inputs");
    parse_fails(t, "{\"inputs\":\"\"}", "'inputs' is empty or whitespace-only", "inputs");
    parse_fails(t, "{\"inputs\":[\"a\",\"\\r\\n\"]}", "'inputs[1]' is empty", "inputs");
    parse_fails(t, "{\"inputs\":[]}", "must not be an empty array", "inputs");
    parse_fails(t, "{\"inputs\":[1,2]}", "'inputs' must be a string or an array of strings",
                "inputs");
    parse_fails(t, "{\"inputs\":[[1,2]]}", "'inputs' must be a string or an array of strings",
                "inputs");
    parse_fails(t, "{\"inputs\":[\"a\",null]}", "mixes strings", "inputs");
    parse_fails(t, "{\"inputs\":\"x\",\"normalize\":\"yes\"}", "'normalize' must be true or false",
                "normalize");
    parse_fails(t, "{\"inputs\":\"x\",\"truncate\":1}", "'truncate' must be true or false",
                "truncate");
    parse_fails(t, "[1]", "must be a JSON object", NULL);
    parse_fails(t, "{\"inputs\":\"x\"", "not valid JSON", NULL);
}

/* ---------------------------------------------------------- parse: Ollama */

Test(embed_api, ollama_accepts_string_and_array_with_options)
{
    struct embed_request r;

    parse_ok(EMBED_API_OLLAMA,
             "{\"model\":\"all-minilm\",\"input\":\"Why is the sky blue?\",\"truncate\":false,"
             "\"keep_alive\":\"5m\",\"options\":{\"temperature\":0}}",
             &r);
    cr_expect_str_eq(r.model, "all-minilm");
    cr_assert_eq(r.ninputs, 1);
    cr_expect(r.single);
    cr_expect_not(r.truncate);
    cr_expect_str_eq(r.inputs[0].text, "Why is the sky blue?");
    embed_request_free(&r);

    parse_ok(EMBED_API_OLLAMA,
             "{\"model\":\"all-minilm\",\"input\":[\"a\",\"b\"],\"dimensions\":64,"
             "\"truncate\":true}",
             &r);
    cr_assert_eq(r.ninputs, 2);
    cr_expect_eq(r.dimensions, 64);
    cr_expect(r.truncate);
    embed_request_free(&r);
}

Test(embed_api, ollama_refuses_invalid_requests)
{
    const enum embed_api l = EMBED_API_OLLAMA;

    parse_fails(l, "{\"model\":\"m\"}", "'input' is required", "input");
    parse_fails(l, "{\"input\":\"  \"}", "'input' is empty", "input");
    parse_fails(l, "{\"input\":[\"x\",\"\"]}", "'input[1]' is empty", "input");
    parse_fails(l, "{\"input\":[]}", "empty array", "input");
    parse_fails(l, "{\"input\":[1,2,3]}", "'input' must be a string or an array of strings",
                "input");
    parse_fails(l, "{\"input\":\"x\",\"model\":[\"m\"]}", "'model' must be a string", "model");
    parse_fails(l, "{\"input\":\"x\",\"dimensions\":0}", "'dimensions' must be", "dimensions");
    parse_fails(l, "{\"input\":\"x\",\"truncate\":\"no\"}", "'truncate' must be", "truncate");
    parse_fails(l, "nope", "not valid JSON", NULL);
}

Test(embed_api, ollama_legacy_accepts_prompt)
{
    struct embed_request r;

    parse_ok(EMBED_API_OLLAMA_LEGACY,
             "{\"model\":\"nomic-embed-text\",\"prompt\":\"The sky is blue\",\"options\":{}}", &r);
    cr_expect_str_eq(r.model, "nomic-embed-text");
    cr_assert_eq(r.ninputs, 1);
    cr_expect(r.single);
    cr_expect_str_eq(r.inputs[0].text, "The sky is blue");
    embed_request_free(&r);
}

Test(embed_api, ollama_legacy_refuses_invalid_requests)
{
    const enum embed_api l = EMBED_API_OLLAMA_LEGACY;

    parse_fails(l, "{\"model\":\"m\",\"input\":\"x\"}", "'prompt' is required", "prompt");
    parse_fails(l, "{\"prompt\":\"\"}", "'prompt' is empty or whitespace-only", "prompt");
    parse_fails(l, "{\"prompt\":[\"a\"]}", "'prompt' must be a string", "prompt");
    parse_fails(l, "{\"prompt\":7}", "'prompt' must be a string", "prompt");
    parse_fails(l, "{\"prompt\":\"x\",\"model\":true}", "'model' must be a string", "model");
    parse_fails(l, "[]", "must be a JSON object", NULL);
}

Test(embed_api, parse_refuses_non_embedding_route)
{
    parse_fails(EMBED_API_NONE, "{\"input\":\"x\"}", "not an embedding route", NULL);
}

Test(embed_api, request_free_is_safe_twice)
{
    struct embed_request r;

    parse_ok(EMBED_API_OPENAI, "{\"input\":\"x\"}", &r);
    embed_request_free(&r);
    embed_request_free(&r);
    cr_expect_null(r.inputs);
    cr_expect_eq(r.ninputs, 0);
}

/* ----------------------------------------------------------------- errors */

Test(embed_api, openai_error_has_message_type_param_code)
{
    size_t len;
    char *body = embed_render_error(EMBED_API_OPENAI, "bad \"input\"", "invalid_request_error",
                                    "input", NULL, &len);
    json_t *root = json_loads(body, 0, NULL);
    json_t *err;

    cr_assert_not_null(root, "%s", body);
    cr_expect_eq(len, strlen(body));
    err = json_object_get(root, "error");
    cr_assert(json_is_object(err));
    cr_expect_str_eq(json_string_value(json_object_get(err, "message")), "bad \"input\"");
    cr_expect_str_eq(json_string_value(json_object_get(err, "type")), "invalid_request_error");
    cr_expect_str_eq(json_string_value(json_object_get(err, "param")), "input");
    cr_expect(json_is_null(json_object_get(err, "code")));
    json_decref(root);
    free(body);

    body = embed_render_error(EMBED_API_NONE, "no such route", "invalid_request_error", NULL,
                              "not_found", NULL);
    root = json_loads(body, 0, NULL);
    err = json_object_get(root, "error");
    cr_expect(json_is_null(json_object_get(err, "param")));
    cr_expect_str_eq(json_string_value(json_object_get(err, "code")), "not_found");
    json_decref(root);
    free(body);
}

Test(embed_api, tei_error_has_error_and_error_type)
{
    char *body = embed_render_error(EMBED_API_TEI, "inputs is empty", "Validation", "inputs",
                                    "invalid_input", NULL);
    json_t *root = json_loads(body, 0, NULL);

    cr_assert_not_null(root, "%s", body);
    cr_expect_eq(json_object_size(root), 2);
    cr_expect_str_eq(json_string_value(json_object_get(root, "error")), "inputs is empty");
    cr_expect_str_eq(json_string_value(json_object_get(root, "error_type")), "Validation");
    json_decref(root);
    free(body);
}

Test(embed_api, ollama_errors_have_only_error)
{
    enum embed_api apis[] = {EMBED_API_OLLAMA, EMBED_API_OLLAMA_LEGACY};

    for (size_t i = 0; i < 2; i++) {
        char *body = embed_render_error(apis[i], "line1\nline2", "invalid_request_error", "input",
                                        "x", NULL);
        json_t *root = json_loads(body, 0, NULL);

        cr_assert_not_null(root, "%s", body);
        cr_expect_eq(json_object_size(root), 1);
        cr_expect_str_eq(json_string_value(json_object_get(root, "error")), "line1\nline2");
        json_decref(root);
        free(body);
    }
}

/* ------------------------------------------------------------- responses */

/* A deterministic test vector with awkward values: negatives, tiny, exact zeros. */
static float *
make_vectors(size_t n, size_t dim)
{
    float *v = malloc(n * dim * sizeof(float));
    uint32_t state = 12345;

    for (size_t i = 0; i < n * dim; i++) {
        state = state * 1664525u + 1013904223u;
        v[i] = ((float)(state >> 8) / 16777216.0f - 0.5f) * (i % 7 == 0 ? 1e-7f : 1.0f);
        if (i % 11 == 0) {
            v[i] = 0.0f;
        }
    }
    return v;
}

static void
expect_float_array(json_t *arr, const float *want, size_t dim)
{
    cr_assert(json_is_array(arr));
    cr_assert_eq(json_array_size(arr), dim);
    for (size_t i = 0; i < dim; i++) {
        json_t *v = json_array_get(arr, i);
        cr_assert(json_is_real(v), "element %zu is not a float", i);
        cr_assert_eq(float_bits((float)json_real_value(v)), float_bits(want[i]), "element %zu", i);
    }
}

Test(embed_api, openai_float_response_round_trips)
{
    struct embed_request r;
    float *v = make_vectors(2, 16);
    size_t len;
    char *body;
    json_t *root, *data;

    parse_ok(EMBED_API_OPENAI, "{\"input\":[\"one two\",\"three\"],\"model\":\"m\"}", &r);
    body = embed_render_response(&r, v, 16, "akosha-hash-16", &len);
    cr_expect_eq(len, strlen(body));
    root = json_loads(body, 0, NULL);
    cr_assert_not_null(root, "%s", body);
    cr_expect_str_eq(json_string_value(json_object_get(root, "object")), "list");
    cr_expect_str_eq(json_string_value(json_object_get(root, "model")), "akosha-hash-16");
    data = json_object_get(root, "data");
    cr_assert_eq(json_array_size(data), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *item = json_array_get(data, i);
        cr_expect_str_eq(json_string_value(json_object_get(item, "object")), "embedding");
        cr_expect_eq(json_integer_value(json_object_get(item, "index")), (json_int_t)i);
        expect_float_array(json_object_get(item, "embedding"), v + i * 16, 16);
    }
    cr_expect_eq(
        json_integer_value(json_object_get(json_object_get(root, "usage"), "prompt_tokens")), 3);
    cr_expect_eq(
        json_integer_value(json_object_get(json_object_get(root, "usage"), "total_tokens")), 3);
    json_decref(root);
    free(body);
    embed_request_free(&r);
    free(v);
}

static size_t
base64_decode(const char *s, unsigned char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;

    for (; *s && *s != '='; s++) {
        const char *p = strchr(alphabet, *s);
        cr_assert_not_null(p, "bad base64 character %c", *s);
        acc = (acc << 6) | (uint32_t)(p - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return n;
}

Test(embed_api, openai_base64_response_holds_little_endian_float32)
{
    struct embed_request r;
    /* dims 5, 6, 7 exercise each base64 padding case */
    for (size_t dim = 5; dim <= 7; dim++) {
        float *v = make_vectors(3, dim);
        char *body;
        json_t *root, *data;

        parse_ok(EMBED_API_OPENAI,
                 "{\"input\":[[1,2],[3],[4,5,6]],\"encoding_format\":\"base64\",\"model\":\"m\"}",
                 &r);
        body = embed_render_response(&r, v, dim, NULL, NULL);
        root = json_loads(body, 0, NULL);
        cr_assert_not_null(root, "%s", body);
        cr_expect_str_eq(json_string_value(json_object_get(root, "model")), "m");
        cr_expect_eq(
            json_integer_value(json_object_get(json_object_get(root, "usage"), "prompt_tokens")),
            6);
        data = json_object_get(root, "data");
        cr_assert_eq(json_array_size(data), 3);
        for (size_t i = 0; i < 3; i++) {
            const char *b64 =
                json_string_value(json_object_get(json_array_get(data, i), "embedding"));
            unsigned char bytes[64];
            cr_assert_not_null(b64);
            cr_expect_eq(strlen(b64) % 4, 0);
            cr_assert_eq(base64_decode(b64, bytes), dim * 4);
            for (size_t k = 0; k < dim; k++) {
                const unsigned char *b = bytes + 4 * k;
                uint32_t bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                                (uint32_t)b[3] << 24;
                cr_expect_eq(bits, float_bits(v[i * dim + k]), "dim %zu row %zu col %zu", dim, i,
                             k);
            }
        }
        json_decref(root);
        free(body);
        embed_request_free(&r);
        free(v);
    }
}

Test(embed_api, tei_response_is_array_of_arrays_even_for_one_input)
{
    struct embed_request r;
    float *v = make_vectors(1, 8);
    char *body;
    json_t *root;

    parse_ok(EMBED_API_TEI, "{\"inputs\":\"single\"}", &r);
    body = embed_render_response(&r, v, 8, "ignored", NULL);
    root = json_loads(body, 0, NULL);
    cr_assert_not_null(root, "%s", body);
    cr_assert(json_is_array(root));
    cr_assert_eq(json_array_size(root), 1);
    expect_float_array(json_array_get(root, 0), v, 8);
    json_decref(root);
    free(body);
    embed_request_free(&r);
    free(v);
}

Test(embed_api, ollama_response_has_model_and_embeddings)
{
    struct embed_request r;
    float *v = make_vectors(2, 4);
    char *body;
    json_t *root, *emb;

    parse_ok(EMBED_API_OLLAMA, "{\"model\":\"all-minilm\",\"input\":[\"a b c\",\"d\"]}", &r);
    body = embed_render_response(&r, v, 4, NULL, NULL);
    root = json_loads(body, 0, NULL);
    cr_assert_not_null(root, "%s", body);
    cr_expect_str_eq(json_string_value(json_object_get(root, "model")), "all-minilm");
    cr_expect_eq(json_integer_value(json_object_get(root, "prompt_eval_count")), 4);
    emb = json_object_get(root, "embeddings");
    cr_assert_eq(json_array_size(emb), 2);
    expect_float_array(json_array_get(emb, 0), v, 4);
    expect_float_array(json_array_get(emb, 1), v + 4, 4);
    json_decref(root);
    free(body);
    embed_request_free(&r);
    free(v);
}

Test(embed_api, ollama_legacy_response_has_one_embedding)
{
    struct embed_request r;
    float *v = make_vectors(1, 12);
    char *body;
    json_t *root;

    parse_ok(EMBED_API_OLLAMA_LEGACY, "{\"model\":\"m\",\"prompt\":\"hi\"}", &r);
    body = embed_render_response(&r, v, 12, NULL, NULL);
    root = json_loads(body, 0, NULL);
    cr_assert_not_null(root, "%s", body);
    cr_expect_eq(json_object_size(root), 1);
    expect_float_array(json_object_get(root, "embedding"), v, 12);
    json_decref(root);
    free(body);
    embed_request_free(&r);
    free(v);
}

Test(embed_api, response_escapes_model_name)
{
    struct embed_request r;
    float v[1] = {1.0f};
    char *body;
    json_t *root;

    parse_ok(EMBED_API_OPENAI, "{\"input\":\"x\",\"model\":\"we\\\"ird\\\\name\"}", &r);
    body = embed_render_response(&r, v, 1, NULL, NULL);
    root = json_loads(body, 0, NULL);
    cr_assert_not_null(root, "%s", body);
    cr_expect_str_eq(json_string_value(json_object_get(root, "model")), "we\"ird\\name");
    json_decref(root);
    free(body);
    embed_request_free(&r);
}

/* ------------------------------------------------------- float formatter */

static void
expect_round_trip(float f)
{
    char out[EMBED_FLOAT_MAX_CHARS + 1];
    size_t n = embed_format_float(f, out);
    float back;

    cr_assert_leq(n, EMBED_FLOAT_MAX_CHARS);
    out[n] = '\0';
    back = strtof(out, NULL);
    cr_assert_eq(float_bits(back), float_bits(f), "%.9g printed as %s", (double)f, out);
    cr_assert(strchr(out, '.') != NULL || strchr(out, 'e') != NULL, "%s looks like an int", out);
}

static const char *
fmt(float f, char *out)
{
    out[embed_format_float(f, out)] = '\0';
    return out;
}

Test(embed_api, float_formatter_round_trips_edge_values)
{
    static const float edges[] = {
        0.0f,    -0.0f,         1e-45f,         -1e-45f,      1.1754942e-38f, 1.17549435e-38f,
        3.4e38f, 3.4028235e38f, -3.4028235e38f, 1.0f,         -1.0f,          0.1f,
        0.2f,    0.3f,          1.0f / 3.0f,    16777216.0f,  16777217.0f,    8388608.5f,
        1e9f,    1e-5f,         1e-4f,          9.999999e-5f, 123456.7f,      2.0f / 3.0f,
        7e22f,   5e-7f,         3.8e-6f,        0.05123457f,  1e10f,          4294967296.0f,
    };
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
        expect_round_trip(edges[i]);
    }
}

Test(embed_api, float_formatter_prints_shortest_digits)
{
    char out[EMBED_FLOAT_MAX_CHARS + 1];

    cr_expect_str_eq(fmt(0.0f, out), "0.0");
    cr_expect_str_eq(fmt(-0.0f, out), "-0.0");
    cr_expect_str_eq(fmt(1.0f, out), "1.0");
    cr_expect_str_eq(fmt(0.1f, out), "0.1");
    cr_expect_str_eq(fmt(-0.3f, out), "-0.3");
    cr_expect_str_eq(fmt(1e-45f, out), "1e-45");
    cr_expect_str_eq(fmt(3.4e38f, out), "3.4e38");
    cr_expect_str_eq(fmt(0.001f, out), "0.001");
    cr_expect_str_eq(fmt(1e-5f, out), "0.00001");
    cr_expect_str_eq(fmt(1e-6f, out), "1e-6");
    cr_expect_str_eq(fmt(16777216.0f, out), "16777216.0");
    cr_expect_str_eq(fmt(1e10f, out), "1e10");
    cr_expect_str_eq(fmt(123456.7f, out), "123456.7");
    cr_expect_str_eq(fmt(-0.05123457f, out), "-0.05123457");
}

Test(embed_api, float_formatter_round_trips_a_million_random_floats)
{
    uint32_t state = 0x2545f491;
    size_t checked = 0;

    while (checked < 1000000) {
        float f;
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        memcpy(&f, &state, sizeof(f));
        if (!isfinite(f)) {
            continue;
        }
        expect_round_trip(f);
        checked++;
    }
}

Test(embed_api, float_formatter_round_trips_embedding_range_floats)
{
    uint32_t state = 99;

    /* typical embedding components: uniform in [-1, 1), including many small ones */
    for (int i = 0; i < 200000; i++) {
        state = state * 1664525u + 1013904223u;
        expect_round_trip(((float)(state >> 8) / 8388608.0f - 1.0f) / (float)(1 + i % 1000));
    }
}

/*
 * Below 2^24 the formatter scales by shifts instead of dividing; the digits
 * must be the division's for every float it takes that path for. A stride
 * through all 2^31 positive bit patterns (every exponent, mantissas spread
 * over each binade) and both signs.
 */
Test(embed_api, float_formatter_fast_path_matches_the_division_reference)
{
    char a[EMBED_FLOAT_MAX_CHARS + 1], b[EMBED_FLOAT_MAX_CHARS + 1];
    size_t checked = 0;

    for (uint64_t bits = 0; bits < 0x7f800000u; bits += 4093) {
        for (int sign = 0; sign < 2; sign++) {
            uint32_t u = (uint32_t)bits | (sign ? 0x80000000u : 0);
            float f;
            size_t na, nb;

            memcpy(&f, &u, sizeof(f));
            na = embed_format_float(f, a);
            nb = embed_format_float_reference(f, b);
            a[na] = b[nb] = '\0';
            cr_assert_str_eq(a, b, "bits 0x%08x", u);
            checked++;
        }
    }
    cr_assert_gt(checked, 1000000);
}

/* ------------------------------------------------------------- sniffing */

Test(embed_api, sniff_finds_dimension_in_each_api)
{
    static const char openai[] =
        "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,"
        "\"embedding\":[0.1, -0.2,3e-4 ,0.5]},{\"object\":\"embedding\",\"index\":1,"
        "\"embedding\":[1,2]}],\"model\":\"embedding\",\"usage\":{}}";
    static const char tei[] = " [[0.1,0.2,0.3],[0.4,0.5,0.6]]";
    static const char ollama[] =
        "{\"model\":\"embeddings\",\"embeddings\":[ [0.1,0.2,0.3,0.4,0.5,0.6] ],"
        "\"total_duration\":14143917}";
    static const char legacy[] = "{\n  \"embedding\" : [0.5, 0.25]\n}";

    cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, openai, strlen(openai)), 4);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_TEI, tei, strlen(tei)), 3);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OLLAMA, ollama, strlen(ollama)), 6);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OLLAMA_LEGACY, legacy, strlen(legacy)), 2);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_NONE, openai, strlen(openai)), 0);
}

Test(embed_api, sniff_reads_openai_base64_length)
{
    /* 7 floats = 28 bytes -> 40 base64 chars with one '=' of padding */
    static const char body[] = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                               "\"embedding\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\","
                               "\"index\":0}]}";
    static const char body8[] = "{\"data\":[{\"embedding\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                                "AAAAAAAAAAA=\"}]}";

    cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, body, strlen(body)), 7);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, body8, strlen(body8)), 8);
}

Test(embed_api, sniff_agrees_with_our_own_renderer)
{
    enum embed_api apis[] = {EMBED_API_OPENAI, EMBED_API_TEI, EMBED_API_OLLAMA,
                             EMBED_API_OLLAMA_LEGACY};
    const char *bodies[] = {"{\"input\":[\"a\",\"b\"],\"model\":\"embedding\"}",
                            "{\"inputs\":[\"a\",\"b\"]}", "{\"input\":[\"a\",\"b\"]}",
                            "{\"prompt\":\"a\"}"};
    float *v = make_vectors(2, 384);

    for (size_t i = 0; i < 4; i++) {
        struct embed_request r;
        size_t len;
        char *body;

        parse_ok(apis[i], bodies[i], &r);
        body = embed_render_response(&r, v, 384, NULL, &len);
        cr_expect_eq(embed_sniff_dimension(apis[i], body, len), 384, "api %zu", i);
        free(body);
        r.base64 = true;
        if (apis[i] == EMBED_API_OPENAI) {
            body = embed_render_response(&r, v, 384, NULL, &len);
            cr_expect_eq(embed_sniff_dimension(apis[i], body, len), 384, "base64");
            free(body);
        }
        embed_request_free(&r);
    }
    free(v);
}

Test(embed_api, sniff_returns_zero_for_truncated_or_foreign_bodies)
{
    static const char openai[] = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                                 "\"index\":0,\"embedding\":[0.1,0.2,0.3]}]}";
    static const char b64[] = "{\"data\":[{\"embedding\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}";
    const char *close = strchr(openai, ']');
    const char *quote = strrchr(b64, '"');

    /* every prefix that stops before the first vector's closing ']' */
    for (size_t n = 0; n < (size_t)(close - openai); n++) {
        cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, openai, n), 0, "prefix %zu", n);
    }
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, openai, (size_t)(close - openai) + 1), 3);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, b64, (size_t)(quote - b64)), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_TEI, "[[0.1,0.2", 9), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_TEI, "{\"error\":\"x\"}", 13), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_TEI, "[[]]", 4), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OLLAMA, "{\"embeddings\":[[1,2", 19), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OLLAMA, "{\"error\":\"model not found\"}", 27), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OLLAMA_LEGACY, "{\"embedding\":[]}", 16), 0);
    cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, NULL, 0), 0);
    /* a key inside a string value is not a key */
    {
        static const char tricky[] = "{\"model\":\"x\\\"embedding\\\":[1,2]\"}";
        cr_expect_eq(embed_sniff_dimension(EMBED_API_OPENAI, tricky, strlen(tricky)), 0);
    }
}

/* Feed body in pieces of piece bytes (piece 0: growing uneven pieces); the size or 0. */
static unsigned
dim_in_pieces(enum embed_api api, const char *body, size_t len, size_t piece)
{
    struct embed_dim_scan s;
    unsigned dim = 0;
    size_t step = piece ? piece : 1;

    embed_dim_scan_init(&s, api);
    for (size_t off = 0; off < len;) {
        size_t n = MIN(step, len - off);
        int rc = embed_dim_scan_feed(&s, body + off, n, &dim);
        if (rc != 0) {
            return rc == 1 ? dim : 0;
        }
        off += n;
        if (piece == 0) {
            step = step * 7 % 1021 + 1;
        }
    }
    return 0;
}

Test(embed_api, dim_scan_counts_a_large_first_vector_in_any_pieces)
{
    enum embed_api apis[] = {EMBED_API_OPENAI, EMBED_API_TEI, EMBED_API_OLLAMA,
                             EMBED_API_OLLAMA_LEGACY};
    const char *requests[] = {"{\"input\":[\"a\",\"b\"],\"model\":\"m\"}",
                              "{\"inputs\":[\"a\",\"b\"]}", "{\"input\":[\"a\",\"b\"]}",
                              "{\"prompt\":\"a\"}"};
    static const size_t pieces[] = {0, 1, 2, 3, 7, 64, 1000, 4096, 1 << 20};
    float *v = calloc(2 * 1536, sizeof(float));

    for (size_t k = 0; k < 2 * 1536; k++) {
        v[k] = (float)k * -1.2345678e-3f; /* many digits: the vector runs past 16 KB */
    }
    for (size_t i = 0; i < ARRAY_SIZE(apis); i++) {
        struct embed_request r;
        size_t len;
        char *body;

        parse_ok(apis[i], requests[i], &r);
        body = embed_render_response(&r, v, 1536, NULL, &len);
        cr_assert(len > 16384, "%zu", len);
        for (size_t p = 0; p < ARRAY_SIZE(pieces); p++) {
            cr_expect_eq(dim_in_pieces(apis[i], body, len, pieces[p]), 1536, "api %zu piece %zu",
                         i, pieces[p]);
        }
        free(body);
        if (apis[i] == EMBED_API_OPENAI) {
            r.base64 = true;
            body = embed_render_response(&r, v, 1536, NULL, &len);
            for (size_t p = 0; p < ARRAY_SIZE(pieces); p++) {
                cr_expect_eq(dim_in_pieces(apis[i], body, len, pieces[p]), 1536, "b64 %zu",
                             pieces[p]);
            }
            free(body);
        }
        embed_request_free(&r);
    }
    free(v);
}

Test(embed_api, dim_scan_reads_base64_padding_split_across_pieces)
{
    /* 1, 2 and 3 floats: 8 characters ("==" padded), 12 ("=" padded) and 16 */
    static const char *bodies[] = {"{\"data\":[{\"embedding\":\"AAAAAA==\"}]}",
                                   "{\"data\":[{\"embedding\":\"AAAAAAAAAAA=\"}]}",
                                   "{\"data\":[{\"embedding\":\"AAAAAAAAAAAAAAAA\"}]}"};

    for (size_t b = 0; b < ARRAY_SIZE(bodies); b++) {
        for (size_t piece = 1; piece < 8; piece++) {
            cr_expect_eq(dim_in_pieces(EMBED_API_OPENAI, bodies[b], strlen(bodies[b]), piece),
                         b + 1, "body %zu piece %zu", b, piece);
        }
    }
}

Test(embed_api, dim_scan_gives_up_on_a_body_without_a_vector_near_its_start)
{
    struct embed_dim_scan s;
    char pad[EMBED_DIM_PREFIX_MAX + 64];
    unsigned dim;

    memset(pad, ' ', sizeof(pad));
    embed_dim_scan_init(&s, EMBED_API_OPENAI);
    cr_expect_eq(embed_dim_scan_feed(&s, "{\"object\":\"list\",\"x\":\"", 22, &dim), 0);
    cr_expect_eq(embed_dim_scan_feed(&s, pad, sizeof(pad), &dim), -1);
    cr_expect_eq(embed_dim_scan_feed(&s, "\"embedding\":[1]", 16, &dim), -1, "stays given up");
    embed_dim_scan_init(&s, EMBED_API_TEI);
    cr_expect_eq(embed_dim_scan_feed(&s, "{\"error\":\"x\"}", 13, &dim), -1);
    embed_dim_scan_init(&s, EMBED_API_OPENAI);
    cr_expect_eq(embed_dim_scan_feed(&s, "{\"data\":[{\"embedding\":  [  ]", 28, &dim), -1);
}

/* ---- the quick scan agrees with the full parse ------------------------- */

static size_t
utf8_len(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    }
    return c;
}

static void
scan_agrees(enum embed_api api, const char *body)
{
    struct embed_request r;
    static struct embed_scan sc;
    char err[256];
    const char *param = NULL;

    cr_assert_eq(embed_request_parse(api, body, strlen(body), &r, err, sizeof(err), &param), 0,
                 "parse failed on %s: %s", body, err);
    cr_assert_eq(embed_request_scan(api, body, strlen(body), &sc), 0, "scan failed on %s", body);
    cr_assert_eq(sc.ninputs, r.ninputs, "%s", body);
    cr_assert_str_eq(sc.model, r.model, "%s", body);
    for (size_t i = 0; i < r.ninputs; i++) {
        size_t want = r.inputs[i].text ? utf8_len(r.inputs[i].text, r.inputs[i].len)
                                       : r.inputs[i].ntokens;
        cr_assert_eq(sc.chars[i], want, "input %zu of %s", i, body);
    }
    embed_request_free(&r);
}

Test(embed_scan, agrees_with_parse_on_every_accepted_form)
{
    scan_agrees(EMBED_API_OPENAI, "{\"input\":\"hello world\",\"model\":\"m1\"}");
    scan_agrees(EMBED_API_OPENAI, " { \"model\" : \"x\" , \"input\" : [ \"a\" , \"bé\" ] } ");
    scan_agrees(EMBED_API_OPENAI, "{\"input\":[1,2,3],\"model\":\"t\"}");
    scan_agrees(EMBED_API_OPENAI, "{\"input\":[[1,2],[3,4,5]],\"encoding_format\":\"base64\"}");
    scan_agrees(EMBED_API_OPENAI,
                "{\"input\":\"tab\\there \\u00e9\",\"user\":{\"a\":[1,{\"b\":null}]}}");
    scan_agrees(EMBED_API_TEI, "{\"inputs\":[\"x\",\"y\",\"z\"],\"normalize\":true}");
    scan_agrees(EMBED_API_TEI, "{\"inputs\":\"one\"}");
    scan_agrees(EMBED_API_OLLAMA, "{\"model\":\"nomic\",\"input\":[\"p q\",\"r\"]}");
    scan_agrees(EMBED_API_OLLAMA_LEGACY, "{\"model\":\"nomic\",\"prompt\":\"legacy\"}");
}

Test(embed_scan, refuses_what_is_not_a_request)
{
    static struct embed_scan sc;
    const char *bad[] = {
        "",
        "not json",
        "[\"input\"]",
        "{\"input\":\"x\"",
        "{\"input\":\"x\"} trailing",
        "{\"model\":\"m\"}",
        "{\"input\":[]}",
        "{\"input\":[\"a\",5]}",
        "{\"input\":\"unterminated}",
        "{\"input\":{\"a\":1}}",
        "{\"input\":\"ctl\x01\"}",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(embed_request_scan(EMBED_API_OPENAI, bad[i], strlen(bad[i]), &sc), -1, "%s",
                     bad[i]);
    }
    cr_assert_eq(embed_request_scan(EMBED_API_NONE, "{\"input\":\"x\"}", 13, &sc), -1);
}

Test(embed_scan, bounds_deep_nesting)
{
    static struct embed_scan sc;
    char body[1024];
    size_t n = 0;

    n += (size_t)sprintf(body, "{\"input\":\"x\",\"deep\":");
    for (int i = 0; i < 200; i++) {
        body[n++] = '[';
    }
    for (int i = 0; i < 200; i++) {
        body[n++] = ']';
    }
    body[n++] = '}';
    cr_assert_eq(embed_request_scan(EMBED_API_OPENAI, body, n, &sc), -1);
}

Test(embed_scan, long_strings_with_specials_at_every_offset)
{
    const char *specials[] = {"\\\"", "\\\\", "\\n", "\\u00e9", "\xc3\xa9", "\xe2\x82\xac"};
    char text[128], body[512];

    for (size_t s = 0; s < sizeof(specials) / sizeof(specials[0]); s++) {
        for (size_t at = 0; at < 70; at++) {
            size_t n = 0;
            for (size_t i = 0; i < 70; i++) {
                if (i == at) {
                    n += (size_t)sprintf(text + n, "%s", specials[s]);
                } else {
                    text[n++] = (char)('a' + i % 26);
                }
            }
            text[n] = '\0';
            snprintf(body, sizeof(body), "{\"input\":[\"%s\",\"x%s%s\"],\"model\":\"m\"}", text,
                     text, text);
            scan_agrees(EMBED_API_OPENAI, body);
        }
    }
}

Test(embed_scan, counts_long_token_arrays)
{
    char body[8192];
    size_t n = (size_t)sprintf(body, "{\"input\":[[");

    for (int i = 0; i < 1000; i++) {
        n += (size_t)sprintf(body + n, "%s%d", i ? "," : "", i);
    }
    n += (size_t)sprintf(body + n, "],[7]]}");
    scan_agrees(EMBED_API_OPENAI, body);
}

/* Open, one vector per call, close: what embed_render_response gives, byte for byte. */
static void
expect_pieces_match_whole(enum embed_api api, const char *request, size_t n, size_t dim)
{
    struct embed_request r;
    float *v = make_vectors(n, dim);
    size_t len;
    char *whole;
    struct buf b;

    parse_ok(api, request, &r);
    whole = embed_render_response(&r, v, dim, "akosha-hash-x", &len);
    buf_init(&b);
    embed_render_open(&r, "akosha-hash-x", &b);
    for (size_t i = 0; i < r.ninputs; i++) {
        struct buf piece;
        buf_init(&piece);
        embed_render_vector(&r, i, v + i * dim, dim, &piece);
        buf_append(&b, piece.data, piece.len);
        buf_free(&piece);
    }
    embed_render_close(&r, "akosha-hash-x", &b);
    cr_assert_eq(b.len, len, "%s: pieces give %zu bytes, whole %zu", request, b.len, len);
    cr_expect_eq(memcmp(b.data, whole, len), 0, "%s", request);
    buf_free(&b);
    free(whole);
    embed_request_free(&r);
    free(v);
}

Test(embed_api, answer_rendered_in_pieces_equals_the_whole_answer)
{
    expect_pieces_match_whole(EMBED_API_OPENAI, "{\"input\":[\"a b\",\"c\",\"d\"]}", 3, 9);
    expect_pieces_match_whole(EMBED_API_OPENAI,
                              "{\"input\":[\"a\",\"b\"],\"encoding_format\":\"base64\"}", 2, 7);
    expect_pieces_match_whole(EMBED_API_TEI, "{\"inputs\":[\"a\",\"b c\"]}", 2, 5);
    expect_pieces_match_whole(EMBED_API_OLLAMA, "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}", 2, 4);
    expect_pieces_match_whole(EMBED_API_OLLAMA_LEGACY, "{\"model\":\"m\",\"prompt\":\"hi\"}", 1, 6);
}

Test(embed_api, openai_answer_bytes_are_stable)
{
    struct embed_request r;
    float v[4] = {0.5f, -0.25f, 0.0f, 1.0f};
    char *body;

    parse_ok(EMBED_API_OPENAI, "{\"input\":[\"one\",\"two three\"],\"model\":\"m\"}", &r);
    body = embed_render_response(&r, v, 2, NULL, NULL);
    cr_expect_str_eq(body, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,"
                           "\"embedding\":[0.5,-0.25]},{\"object\":\"embedding\",\"index\":1,"
                           "\"embedding\":[0.0,1.0]}],\"model\":\"m\",\"usage\":{\"prompt_tokens\":"
                           "3,\"total_tokens\":3}}");
    free(body);
    embed_request_free(&r);
}

/* ---- the cache's view: vector parameters, subsets, upstream answers ---- */

struct params_seen {
    char text[512];
};

static void
collect_param(void *arg, const char *name, const char *json, size_t n)
{
    struct params_seen *p = arg;
    size_t len = strlen(p->text);

    snprintf(p->text + len, sizeof(p->text) - len, "%s=%.*s;", name, (int)n, json);
}

Test(cache_view, vector_params_name_what_changes_vectors_in_a_canonical_form)
{
    struct params_seen a = {{0}}, b = {{0}};
    const char *o1 = "{\"model\":\"m\",\"input\":\"x\",\"options\":{\"b\":2,\"a\":1},\"truncate\":true}";
    const char *o2 = "{\"truncate\":true,\"input\":\"y\",\"options\":{\"a\":1,\"b\":2}}";
    const char *oa = "{\"input\":\"x\",\"dimensions\":256,\"encoding_format\":\"base64\","
                     "\"user\":\"u\"}";

    cr_assert_eq(embed_request_vector_params(EMBED_API_OLLAMA, o1, strlen(o1), collect_param, &a),
                 0);
    cr_assert_eq(embed_request_vector_params(EMBED_API_OLLAMA, o2, strlen(o2), collect_param, &b),
                 0);
    cr_assert_str_eq(a.text, "truncate=true;options={\"a\":1,\"b\":2};");
    cr_assert_str_eq(a.text, b.text, "key order inside options does not matter");
    memset(&a, 0, sizeof(a));
    cr_assert_eq(embed_request_vector_params(EMBED_API_OPENAI, oa, strlen(oa), collect_param, &a),
                 0);
    cr_assert_str_eq(a.text, "dimensions=256;", "encoding_format and user change no vector");
    cr_assert_eq(embed_request_vector_params(EMBED_API_TEI, "[1]", 3, collect_param, &a), -1);
}

Test(cache_view, subset_keeps_the_chosen_inputs_and_every_other_field)
{
    const char *body = "{\"model\":\"m\",\"input\":[\"a\",\"b\\\"q\",\"c\"],\"user\":\"u\"}";
    const char *tei = "{\"inputs\":[\"x\",\"y\"],\"truncate\":true}";
    size_t idx[] = {0, 2}, one[] = {1}, bad[] = {2, 0}, out_of_range[] = {5};
    struct buf b;
    json_t *doc;

    buf_init(&b);
    cr_assert_eq(embed_request_subset(EMBED_API_OPENAI, body, strlen(body), idx, 2, &b), 0);
    doc = json_loads(b.data, 0, NULL);
    cr_assert_not_null(doc);
    cr_assert_eq(json_array_size(json_object_get(doc, "input")), 2);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(doc, "input"), 1)), "c");
    cr_assert_str_eq(json_string_value(json_object_get(doc, "user")), "u");
    cr_assert_str_eq(json_string_value(json_object_get(doc, "model")), "m");
    json_decref(doc);
    b.len = 0;
    cr_assert_eq(embed_request_subset(EMBED_API_TEI, tei, strlen(tei), one, 1, &b), 0);
    cr_assert_str_eq(b.data, "{\"inputs\":[\"y\"],\"truncate\":true}");
    b.len = 0;
    cr_assert_eq(embed_request_subset(EMBED_API_OPENAI, body, strlen(body), bad, 2, &b), -1,
                 "indexes must ascend");
    cr_assert_eq(embed_request_subset(EMBED_API_OPENAI, body, strlen(body), out_of_range, 1, &b),
                 -1);
    cr_assert_eq(embed_request_subset(EMBED_API_OLLAMA_LEGACY, "{\"prompt\":\"p\"}", 14, one, 1,
                                      &b),
                 -1, "one prompt has no subset");
    buf_free(&b);
}

Test(cache_view, answers_parse_in_every_shape_and_order)
{
    const char *openai = "{\"data\":[{\"index\":1,\"embedding\":[3,4]},{\"index\":0,\"embedding\":"
                         "[1.5,-2]}],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}";
    /* [0.25, -1] and [2, 8] as little-endian float32 */
    const char *b64 = "{\"data\":[{\"index\":0,\"embedding\":\"AACAPgAAgL8=\"},{\"index\":1,"
                      "\"embedding\":\"AAAAQAAAAEE=\"}]}";
    const char *tei = "[[1,2,3]]";
    const char *ollama = "{\"embeddings\":[[0.5],[0.25]],\"prompt_eval_count\":4}";
    const char *legacy = "{\"embedding\":[9,8]}";
    float *v;
    unsigned dim;
    size_t usage;
    bool known;
    char err[160];

    cr_assert_eq(embed_answer_parse(EMBED_API_OPENAI, openai, strlen(openai), 2, &v, &dim, &usage,
                                    &known, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(dim, 2);
    cr_assert(v[0] == 1.5f && v[1] == -2.0f && v[2] == 3.0f && v[3] == 4.0f, "by index");
    cr_assert(known && usage == 7);
    free(v);
    cr_assert_eq(embed_answer_parse(EMBED_API_OPENAI, b64, strlen(b64), 2, &v, &dim, &usage,
                                    &known, err, sizeof(err)),
                 0, "%s", err);
    cr_assert(dim == 2 && v[0] == 0.25f && v[1] == -1.0f && v[2] == 2.0f && v[3] == 8.0f);
    cr_assert(!known);
    free(v);
    cr_assert_eq(embed_answer_parse(EMBED_API_TEI, tei, strlen(tei), 1, &v, &dim, &usage, &known,
                                    err, sizeof(err)),
                 0);
    cr_assert(dim == 3 && v[2] == 3.0f);
    free(v);
    cr_assert_eq(embed_answer_parse(EMBED_API_OLLAMA, ollama, strlen(ollama), 2, &v, &dim, &usage,
                                    &known, err, sizeof(err)),
                 0);
    cr_assert(dim == 1 && v[1] == 0.25f && known && usage == 4);
    free(v);
    cr_assert_eq(embed_answer_parse(EMBED_API_OLLAMA_LEGACY, legacy, strlen(legacy), 1, &v, &dim,
                                    &usage, &known, err, sizeof(err)),
                 0);
    cr_assert(dim == 2 && v[0] == 9.0f);
    free(v);
}

Test(cache_view, answers_that_cannot_be_merged_are_refused_with_a_cause)
{
    const char *bad[] = {
        "not json",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2]}]}",                  /* one for two */
        "{\"data\":[{\"index\":0,\"embedding\":[1,2]},{\"index\":0,\"embedding\":[1,2]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2]},{\"index\":1,\"embedding\":[1]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2]},{\"index\":5,\"embedding\":[1,2]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,\"x\"]},{\"index\":1,\"embedding\":[1,2]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1e39,2]},{\"index\":1,\"embedding\":[1,2]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":\"AAA\"},{\"index\":1,\"embedding\":[1,2]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[]},{\"index\":1,\"embedding\":[]}]}",
    };
    float *v = (float *)1;
    unsigned dim = 9;
    size_t usage;
    bool known;
    char err[160];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(embed_answer_parse(EMBED_API_OPENAI, bad[i], strlen(bad[i]), 2, &v, &dim,
                                        &usage, &known, err, sizeof(err)),
                     -1, "accepted: %s", bad[i]);
        cr_assert(v == NULL && dim == 0, "nothing handed back for %s", bad[i]);
        cr_assert_neq(err[0], '\0', "no cause for %s", bad[i]);
    }
}

/* ---- the answer's model, from its first and last bytes ---- */

/* body's model as the proxy finds it: from its first 512 and last 256 bytes */
static size_t
edges_model(const char *body, char *out, size_t cap)
{
    size_t len = strlen(body), hlen = len < 512 ? len : 512, tlen = len < 256 ? len : 256;

    return embed_answer_model(body, hlen, body + len - tlen, tlen, out, cap);
}

Test(answer_model, found_at_either_edge_and_only_as_a_key)
{
    char model[64], body[8192];
    size_t n = 0;

    /* OpenAI: after the vectors, beyond the head */
    n += (size_t)snprintf(body + n, sizeof(body) - n,
                          "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,"
                          "\"embedding\":[");
    for (int i = 0; i < 384; i++) {
        n += (size_t)snprintf(body + n, sizeof(body) - n, "%s0.0123456", i ? "," : "");
    }
    snprintf(body + n, sizeof(body) - n,
             "]}],\"model\":\"text-embedding-3-small\",\"usage\":{\"prompt_tokens\":3,"
             "\"total_tokens\":3}}");
    cr_assert_eq(edges_model(body, model, sizeof(model)), strlen("text-embedding-3-small"));
    cr_assert_str_eq(model, "text-embedding-3-small");

    /* Ollama: first */
    cr_assert_gt(edges_model("{\"model\":\"all-minilm\",\"embeddings\":[[0.1,0.2]]}", model,
                             sizeof(model)),
                 0);
    cr_assert_str_eq(model, "all-minilm");

    /* escaped, blanks, and a value that merely says "model" */
    edges_model("{\"id\":\"\\\"model\\\":\\\"fake\\\"\", \"model\" : \"m\\u00e9\"}", model,
                sizeof(model));
    cr_assert_str_eq(model, "m\xc3\xa9");
    cr_assert_eq(edges_model("{\"object\":\"model\",\"data\":[]}", model, sizeof(model)), 0);
    cr_assert_str_eq(model, "");

    /* TEI: none; nor in a body too short for the key */
    cr_assert_eq(edges_model("[[0.1,0.2,0.3]]", model, sizeof(model)), 0);
    cr_assert_eq(edges_model("\"mod", model, sizeof(model)), 0);
    cr_assert_eq(edges_model("\"model\"", model, sizeof(model)), 0);
    cr_assert_eq(edges_model("\"model\":\"x\"", model, sizeof(model)), 1, "the key at offset 0");
    cr_assert_str_eq(model, "x");
}
