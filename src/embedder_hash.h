/*
 * embedder_hash.h - the embedded fallback embedder: deterministic feature
 * hashing of words and character 3-grams (or token ids) into signed buckets,
 * L2-normalised. Pure: no clock, no sockets, no global state, thread-safe.
 *
 * The hash seeds are fixed constants, so a text maps to the bit-identical
 * vector on every run and every IEEE-754 machine. Changing the tokenizer,
 * the seeds or the weights changes every vector: bump EMBEDDER_HASH_VERSION
 * and the golden values in tests/unit/test_embedder_hash.c together.
 */
#ifndef AKOSHA_EMBEDDER_HASH_H
#define AKOSHA_EMBEDDER_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EMBEDDER_HASH_VERSION 1
#define EMBEDDER_HASH_MAX_DIM 4096

/*
 * Embed len bytes of text (UTF-8 or anything else; need not be NUL-terminated)
 * into out[0..dim-1], L2-normalised. Words are runs of ASCII letters/digits and
 * bytes >= 0x80 (ASCII lowercased); each other printable ASCII byte is a
 * one-character punctuation token. Returns 0, or -1 when the text has no token
 * (empty or blank, see embedder_hash_is_blank) or dim is 0 or above
 * EMBEDDER_HASH_MAX_DIM (a blank text leaves out zeroed). The caller owns out.
 */
int embedder_hash_text(const char *text, size_t len, float *out, size_t dim)
    __attribute__((warn_unused_result));

/*
 * Embed n token ids (unigrams and adjacent-id bigrams) into out[0..dim-1],
 * L2-normalised. Returns -1 when n == 0 or dim is out of range.
 */
int embedder_hash_tokens(const int64_t *ids, size_t n, float *out, size_t dim)
    __attribute__((warn_unused_result));

/*
 * True when text holds no token: only bytes <= 0x20 and 0x7f (ASCII
 * whitespace and control characters). embed_api uses this so a request the
 * embedder would refuse is rejected with 400 at parse time.
 */
bool embedder_hash_is_blank(const char *text, size_t len);

/* Writes "akosha-hash-<dim>" into buf and returns buf (truncated to buflen). */
const char *embedder_hash_model_name(size_t dim, char *buf, size_t buflen);

#endif
