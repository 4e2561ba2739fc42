/*
 * embed_api.h - the four embedding APIs Akosha speaks: route a path, parse a
 * request body, render an answer or an error in the caller's own format, and
 * sniff an upstream answer's dimension. Pure: no sockets, no clock, no libevent.
 *
 *   OpenAI         POST /v1/embeddings, /embeddings
 *   TEI            POST /embed
 *   Ollama         POST /api/embed
 *   Ollama legacy  POST /api/embeddings
 */
#ifndef AKOSHA_EMBED_API_H
#define AKOSHA_EMBED_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum embed_api {
    EMBED_API_NONE,
    EMBED_API_OPENAI,
    EMBED_API_TEI,
    EMBED_API_OLLAMA,
    EMBED_API_OLLAMA_LEGACY,
};

/*
 * Where an answer's vectors come from, as X-Akosha-Mode, metrics, spans and
 * logs name it: the upstream (real), the model's own weights run here
 * (local: same model, same space) or the hash embedder (fallback: another
 * space). NONE: no vectors (an error, a relayed non-embedding answer).
 */
enum embed_mode {
    EMBED_MODE_NONE,
    EMBED_MODE_REAL,
    EMBED_MODE_LOCAL,
    EMBED_MODE_FALLBACK,
};
#define EMBED_MODES 4
/* "real", "local", "fallback"; "none" for EMBED_MODE_NONE. Static string. */
const char *embed_mode_name(enum embed_mode mode);

#define EMBED_MAX_INPUTS 2048
#define EMBED_MAX_DIMENSIONS 4096

/* Which API a path (without query string) belongs to; EMBED_API_NONE for any other path. */
enum embed_api embed_api_route(const char *path, size_t path_len);

/*
 * Bounded metrics label for a route: "embeddings", "embed", "api_embed",
 * "api_embeddings", or "other" (never the raw path). Static string.
 */
const char *embed_api_route_label(enum embed_api api, const char *path, size_t len);

/* One input: exactly one of text (len bytes, NUL-terminated) or tokens (ntokens ids) is set. */
struct embed_input {
    const char *text;
    size_t len;
    const int64_t *tokens;
    size_t ntokens;
};

/* A parsed request. Owns model, inputs and everything they point to. */
struct embed_request {
    enum embed_api api;
    char *model;                /* "" when not given */
    struct embed_input *inputs; /* ninputs >= 1 after a successful parse */
    size_t ninputs;
    bool base64;         /* OpenAI encoding_format "base64" */
    unsigned dimensions; /* OpenAI/Ollama "dimensions"; 0 = not given */
    bool normalize;      /* TEI "normalize"; true unless the caller said false */
    bool truncate;       /* TEI/Ollama "truncate" */
    bool single;         /* input was a scalar (a string or one flat token list), not a list */
    char *storage;       /* texts and token ids, one allocation */
    size_t usage_tokens; /* the usage reported when set (a model's own tokens); 0: counted */
    bool usage_known;    /* usage_tokens is the figure to report even when 0 (cached answers) */
};

/*
 * Parses body for api (not EMBED_API_NONE). Returns 0 and fills out, which the
 * caller releases with embed_request_free. Returns -1 with a message in err and
 * *param naming the offending field (static string, or NULL for the body as a
 * whole) when the request is invalid: the caller answers 400. out needs no
 * freeing after -1.
 */
int embed_request_parse(enum embed_api api, const char *body, size_t len, struct embed_request *out,
                        char *err, size_t errlen, const char **param)
    __attribute__((warn_unused_result));

/* Releases what r owns; r itself belongs to the caller. Safe on a zeroed request. */
void embed_request_free(struct embed_request *r);

/*
 * Error body in the API's own shape. OpenAI (and EMBED_API_NONE):
 * {"error":{"message","type","param","code"}} with NULL param/code as null;
 * TEI: {"error","error_type"} with error_type = type; Ollama (both routes):
 * {"error"}. Returns a malloc'd NUL-terminated string the caller frees;
 * *len_out (if not NULL) gets its length.
 */
char *embed_render_error(enum embed_api api, const char *message, const char *type,
                         const char *param, const char *code, size_t *len_out);

/*
 * Success body in r->api's shape for r->ninputs vectors of dim floats
 * (row-major). model_name is reported where the API has a model field (NULL:
 * r->model). OpenAI honours r->base64 (little-endian float32). Usage counts
 * whitespace-separated words, or token ids. Returns a malloc'd NUL-terminated
 * string the caller frees; *len_out (if not NULL) gets its length.
 */
char *embed_render_response(const struct embed_request *r, const float *vectors, size_t dim,
                            const char *model_name, size_t *len_out);

/*
 * The same answer in pieces, appended to b: open, then each vector in index
 * order (any number per call), then close. Concatenated they are byte for byte
 * what embed_render_response gives, so an answer can go out while the rest is
 * still being computed, and only the vectors of one piece are ever held.
 */
struct buf;
void embed_render_open(const struct embed_request *r, const char *model_name, struct buf *b);
void embed_render_vector(const struct embed_request *r, size_t index, const float *v, size_t dim,
                         struct buf *b);
void embed_render_close(const struct embed_request *r, const char *model_name, struct buf *b);
/*
 * embed_render_vector with the vector already rendered in the answer's
 * encoding (text: embed_render_float_array's, or embed_render_base64_floats'
 * for a base64 OpenAI answer), copied as it is; text NULL renders v.
 */
void embed_render_vector_text(const struct embed_request *r, size_t index, const float *v,
                              size_t dim, const char *text, size_t text_len, struct buf *b);
/* A vector as the JSON array the answers carry ("[0.5,-1.25]"), appended to b. */
void embed_render_float_array(const float *v, uint32_t dim, struct buf *b);
/* A vector as OpenAI's base64 string (quoted, little-endian float32), appended to b. */
void embed_render_base64_floats(const float *v, uint32_t dim, struct buf *b);

/*
 * Dimension of the first embedding in a successful upstream response body (or
 * a prefix of it) for api, or 0 when these bytes do not hold a whole first
 * vector. Scans without building a JSON tree.
 */
unsigned embed_sniff_dimension(enum embed_api api, const char *body, size_t len);

/*
 * The size of an answer's first vector, counted as its body streams past in
 * pieces of any size: no copy of the body and no second pass over it. The
 * first vector must start within EMBED_DIM_PREFIX_MAX bytes (the answer's
 * head: object, model, index); the vector itself may be of any length.
 */
#define EMBED_DIM_PREFIX_MAX 4096
struct embed_dim_scan {
    enum embed_api api;
    uint8_t phase;
    uint8_t pad;       /* base64: trailing '=' seen so far */
    bool any;          /* numbers: something but blanks inside the brackets */
    uint64_t elements; /* numbers: commas; base64: characters */
    size_t plen;
    char prefix[EMBED_DIM_PREFIX_MAX]; /* the answer's head, until the vector starts */
};
void embed_dim_scan_init(struct embed_dim_scan *s, enum embed_api api);

/*
 * The "model" an answer names, from its first and last bytes (the field
 * comes before the vectors in Ollama's and vLLM's answers, after them in
 * OpenAI's). The tail's last "model" key is looked for first, from the end
 * (cheap: an OpenAI answer's is a few keys from it), then the head's first,
 * walking every string. Decoded into out (cap bytes, NUL-terminated); 0 when
 * neither piece holds it whole.
 */
size_t embed_answer_model(const char *head, size_t hlen, const char *tail, size_t tlen, char *out,
                          size_t cap);
/* Feed the next bytes: 1 with *dim when known, 0 when more are needed, -1 when none will come. */
int embed_dim_scan_feed(struct embed_dim_scan *s, const char *p, size_t n, unsigned *dim);

/*
 * What the metrics need from a request that went upstream (inputs, their
 * lengths, the model), found by one pass over the bytes without building a
 * JSON tree: the loop thread runs this for every relayed 2xx answer.
 */
struct embed_scan {
    size_t ninputs;
    uint32_t chars[EMBED_MAX_INPUTS]; /* characters (token ids for token input) per input */
    char model[128];                  /* decoded; "" when absent or longer than 127 bytes */
    size_t model_at, model_len;       /* the model string's raw bytes in the body; 0: absent */
    bool sized;                       /* asks for a size ("dimensions"): not the model's own */
};
/* 0, or -1 when the body is not a well-formed request of that API (no metrics then). */
int embed_request_scan(enum embed_api api, const char *body, size_t len, struct embed_scan *out)
    __attribute__((warn_unused_result));

/* ---- the cache's view of requests and answers (worker threads) ------------ */

/*
 * The request parameters that change its vectors, each given to fn as its
 * name and its value as compact JSON with sorted keys (so equal values are
 * equal bytes): OpenAI dimensions; TEI normalize, truncate,
 * truncation_direction, prompt_name; Ollama truncate, dimensions, options.
 * encoding_format is not one: vectors are the same, only rendered otherwise.
 * -1 when body is not a JSON object.
 */
int embed_request_vector_params(enum embed_api api, const char *body, size_t len,
                                void (*fn)(void *arg, const char *name, const char *json,
                                           size_t n),
                                void *arg) __attribute__((warn_unused_result));

/*
 * embed_request_parse, giving fn the vector parameters too (as
 * embed_request_vector_params does) when the request parses: one JSON
 * parse for both.
 */
int embed_request_parse_keyed(enum embed_api api, const char *body, size_t len,
                              struct embed_request *out, char *err, size_t errlen,
                              const char **param,
                              void (*fn)(void *arg, const char *name, const char *json, size_t n),
                              void *arg) __attribute__((warn_unused_result));

/*
 * body with its input list cut to the inputs at idx[0..n) (ascending,
 * n >= 1), every other field as it was, into out (appended). -1 when body is
 * not a request of api with a list of inputs.
 */
struct buf;
int embed_request_subset(enum embed_api api, const char *body, size_t len, const size_t *idx,
                         size_t n, struct buf *out) __attribute__((warn_unused_result));

/*
 * An upstream's 2xx answer of api to a request of n inputs: n vectors of
 * *dim floats, row-major in input order, in a malloc'd *vecs the caller
 * frees; *usage gets the tokens it reports (prompt_tokens,
 * prompt_eval_count) and *usage_known whether it reported any. Floats and
 * OpenAI's base64 are both read. -1 with a cause in err when the answer is
 * not that: not JSON, another count, mixed sizes, a value that is not a
 * finite float32.
 */
int embed_answer_parse(enum embed_api api, const char *body, size_t len, size_t n, float **vecs,
                       unsigned *dim, size_t *usage, bool *usage_known, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * Writes the shortest decimal that strtof() reads back as exactly f into out
 * (at least EMBED_FLOAT_MAX_CHARS bytes, not NUL-terminated) and returns its
 * length. Always contains '.' or 'e' so JSON readers see a float. f must be
 * finite. Exposed for tests and benchmarks.
 */
#define EMBED_FLOAT_MAX_CHARS 24
size_t embed_format_float(float f, char *out);
/* The same digits computed by 128-bit division throughout: what tests hold the fast path to. */
size_t embed_format_float_reference(float f, char *out);

#endif
