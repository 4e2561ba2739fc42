/*
 * cache.h - the embedding cache's memory tier: key derivation, a byte-bounded
 * store with SIEVE eviction, and the value encoding the Redis tier will use.
 *
 * Pure logic: time comes in as milliseconds, nothing here reads a clock, logs
 * or touches libevent, so the module links alone into unit tests. The store is
 * not thread-safe: the loop thread owns it (no locking). The key functions
 * fetch OpenSSL's SHA-256 once, on first use, into a static: call them from
 * the loop thread too (or once before other threads start).
 *
 * Keys. A request's prefix digest is computed once per request:
 *
 *   prefix = SHA-256("akosha-cache-key/1" || str(model) || str(revision)
 *                    || u8(caller present) [|| caller[32]]
 *                    || u32(nparams) || param digests sorted bytewise)
 *   param  = SHA-256("param" || str(name) || str(value))
 *   key    = SHA-256(prefix || u8(kind) || u64(len) || bytes)
 *
 * where str(s) is u64(length) then the bytes and every integer is
 * little-endian. Every field is length-prefixed, so ("ab","c") and ("a","bc")
 * never frame the same bytes; parameters are sorted by their digests, so the
 * order callers pass them in does not matter. kind is 't' for text (its bytes
 * after JSON unescaping) and 'i' for token ids (each a u64 LE), so a text and
 * a token list never share a key.
 *
 * Memory. Each entry is one allocation (key, metadata, float32 vector inline)
 * counted by malloc_usable_size(); the open-addressing table of entry
 * pointers is counted whole. Their sum never exceeds the budget after any
 * cache_put.
 */
#ifndef AKOSHA_CACHE_H
#define AKOSHA_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_KEY_LEN 32 /* SHA-256 */
#define CACHE_KEYER_MAX_PARAMS 16
#define CACHE_MAX_DIM 65536 /* larger vectors are refused by put and decode */

struct cache_key {
    unsigned char b[CACHE_KEY_LEN];
};

/*
 * Key derivation state; a stack struct, no allocation, nothing to free. Its
 * fields are private to cache.c. begin, then param for each vector-changing
 * parameter in any order, then end; after end, cache_key_text/tokens derive
 * any number of keys from it (deriving one before end is a bug: fatal).
 */
struct cache_keyer {
    unsigned char prefix[CACHE_KEY_LEN]; /* valid after cache_keyer_end */
    unsigned char base[CACHE_KEY_LEN];   /* model, revision, caller */
    unsigned char params[CACHE_KEYER_MAX_PARAMS][CACHE_KEY_LEN];
    uint32_t nparams;
    bool ended;
};

/* model: the canonical name; revision: "" when none; caller: SHA-256 of the
 * caller's Authorization (32 bytes), or NULL when the cache is shared. */
void cache_keyer_begin(struct cache_keyer *k, const char *model, const char *revision,
                       const unsigned char *caller);
/* One vector-changing parameter, value as its raw JSON text (len bytes). -1 with
 * *cause (static) beyond CACHE_KEYER_MAX_PARAMS: the request must not be cached. */
int cache_keyer_param(struct cache_keyer *k, const char *name, const char *value, size_t len,
                      const char **cause) __attribute__((warn_unused_result));
void cache_keyer_end(struct cache_keyer *k);
/* An input sent as text: its bytes after JSON unescaping. */
void cache_key_text(const struct cache_keyer *k, const char *text, size_t len,
                    struct cache_key *out);
/*
 * An input sent as token ids, as embed_api parsed them: hashing the numbers
 * rather than the JSON text normalises spacing and number spelling, so
 * "[1, 2]" and "[1,2]" share a key.
 */
void cache_key_tokens(const struct cache_keyer *k, const int64_t *ids, size_t n,
                      struct cache_key *out);

/* ---- the memory store ---------------------------------------------------- */

struct cache;

enum cache_result { CACHE_MISS, CACHE_HIT, CACHE_STALE };

struct cache_stats {
    uint64_t entries;
    uint64_t bytes; /* entries' usable sizes plus the table; <= budget */
    uint64_t budget;
    uint64_t hits;
    uint64_t misses;
    uint64_t stale_hits;
    uint64_t evictions; /* removed to make room, not by purge or replace */
    uint64_t inserts;
};

/*
 * budget_bytes 0: off, every get misses and put does nothing. Caller owns the
 * result (cache_free); aborts on out-of-memory like xmalloc.
 *
 * Threads: every function below takes the cache's lock, so the loop and the
 * worker threads may share one cache. cache_get's pointer is the exception:
 * it is only safe while no other thread can put or purge (tests, benchmarks);
 * shared users call cache_get_copy.
 */
struct cache *cache_new(size_t budget_bytes);
void cache_free(struct cache *c);

/*
 * Look key up at now_ms. HIT when age <= ttl_ms; STALE when ttl_ms < age <=
 * stale_ms (the caller serves it only during an outage); otherwise MISS. On
 * HIT and STALE, *vec points into the cache (owned by it, valid until the
 * next cache_put, cache_purge or cache_free; get itself never frees) and
 * *dim is its length. An entry older than stale_ms loses its visited mark,
 * so the eviction hand takes it when it next passes. A clock that went
 * backwards counts as age 0.
 */
enum cache_result cache_get(struct cache *c, const struct cache_key *key, uint64_t now_ms,
                            uint64_t ttl_ms, uint64_t stale_ms, const float **vec, uint32_t *dim);
/*
 * A hit within ttl appends the vector as render writes it to out. With
 * keep (one rendering only ever: the float JSON array), the text is kept
 * with the entry on the first hit (its bytes counted) when the budget has
 * room for it as it is, and later hits of a hot entry copy bytes instead of
 * formatting floats. A miss (or an entry past ttl) appends nothing.
 * Nothing is counted in the stats: the caller counts its hits
 * (cache_note_hits) once every input has hit; on a miss its full lookup
 * (cache_get_copy) follows and counts every input.
 */
struct buf;
void cache_note_hits(struct cache *c, uint64_t n);
enum cache_result cache_get_text(struct cache *c, const struct cache_key *key, uint64_t now_ms,
                                 uint64_t ttl_ms,
                                 void (*render)(const float *v, uint32_t dim, struct buf *out),
                                 bool keep, struct buf *out, uint32_t *dim);
/*
 * cache_get, copying the vector into a malloc'd *vec (the caller frees it)
 * under the lock. *vec is NULL on MISS.
 */
enum cache_result cache_get_copy(struct cache *c, const struct cache_key *key, uint64_t now_ms,
                                 uint64_t ttl_ms, uint64_t stale_ms, float **vec, uint32_t *dim);

/*
 * Store a copy of vec (dim floats, 1..CACHE_MAX_DIM) created at now_ms,
 * replacing an entry with the same key and evicting to stay within the
 * budget. 0 on success (and when the cache is off); -1 with *cause (static)
 * when the entry alone would not fit the budget or memory ran out, and the
 * cache is left as it was except that a replaced entry is gone.
 */
int cache_put(struct cache *c, const struct cache_key *key, uint32_t model_tag, const float *vec,
              uint32_t dim, uint64_t now_ms, const char **cause);

/* Remove every entry (all) or those stored with model_tag; returns how many. */
size_t cache_purge(struct cache *c, bool all, uint32_t model_tag);

/* A stable 32-bit hash (FNV-1a) of the canonical model name, for purge by model. */
uint32_t cache_model_tag(const char *canonical_model);

void cache_stats(struct cache *c, struct cache_stats *out);

/* ---- value encoding (the Redis tier) -------------------------------------- */

/*
 * Version 1, all integers little-endian, exactly CACHE_VALUE_HEADER + 4 * dim
 * bytes:
 *   0  4  magic "AKCV"
 *   4  1  version, 1
 *   5  3  reserved, zero
 *   8  4  dim (1..CACHE_MAX_DIM)
 *   12 8  created_ms
 *   20    dim float32 (IEEE 754 binary32)
 */
#define CACHE_VALUE_MAGIC "AKCV"
#define CACHE_VALUE_VERSION 1
#define CACHE_VALUE_HEADER 20

/* Bytes cache_value_encode writes for dim floats. */
size_t cache_value_size(uint32_t dim);
/* Encode into out (cap bytes); returns the length written, 0 when cap is too
 * small or dim is out of range. */
size_t cache_value_encode(const float *vec, uint32_t dim, uint64_t created_ms, unsigned char *out,
                          size_t cap);
/*
 * Decode len bytes at in (any alignment) into out (out_cap floats, owned by
 * the caller). 0 with *dim and *created_ms set; -1 with *cause (static) for a
 * wrong magic, version or reserved bytes, a dim out of range or above out_cap,
 * or a length that is not exactly the header plus 4 * dim.
 */
int cache_value_decode(const unsigned char *in, size_t len, float *out, uint32_t out_cap,
                       uint32_t *dim, uint64_t *created_ms, const char **cause)
    __attribute__((warn_unused_result));

#endif
