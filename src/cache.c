/*
 * cache.c - the embedding cache's memory tier (see cache.h for the key
 * framing and the value format).
 *
 * Store: an open-addressing table (linear probing, backward-shift deletion,
 * load at most 4/5) of pointers to entries, and SIEVE eviction over a doubly
 * linked list of the same entries in insertion order. SIEVE was chosen over
 * LRU by measurement (doc/BENCHMARK.md, "Cache"): on Zipf traces it keeps more
 * hits, and a hit only sets a bit instead of moving the entry in a list.
 *
 *   insert: at the head (newest), visited = 0
 *   hit:    visited = 1
 *   evict:  the hand walks from the tail (oldest) towards the head, clearing
 *           visited marks, and removes the first entry it finds unmarked; it
 *           stays where it stopped and wraps from the head back to the tail.
 *
 * Entries that survive keep their place, so new entries that are never hit
 * again (a scan) leave soon, while entries hit since the hand last passed stay.
 */
#include "cache.h"

#include <malloc.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"
#include "util.h"

/* ---- keys ----------------------------------------------------------------- */

static const char key_domain[] = "akosha-cache-key/1";

/*
 * OpenSSL 3 looks the algorithm up in its provider store on every init given
 * EVP_sha256() (about 1 us each); fetched once, an init costs a copy. The
 * fetched method stays referenced from here for the life of the process.
 */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
/* Each thread's digest context, reused: no allocation per key (freed with the thread). */
static pthread_key_t ctx_key;

static void
free_ctx(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void
fetch_sha256(void)
{
    if ((sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL) {
        fatal("cache: SHA-256 is not available from OpenSSL");
    }
    if (pthread_key_create(&ctx_key, free_ctx) != 0) {
        fatal("cache: cannot create the digest's per-thread key");
    }
}

static EVP_MD_CTX *
digest_start(void)
{
    EVP_MD_CTX *ctx;

    pthread_once(&sha256_once, fetch_sha256);
    ctx = pthread_getspecific(ctx_key);
    if (ctx == NULL) {
        ctx = EVP_MD_CTX_new();
        if (ctx == NULL || pthread_setspecific(ctx_key, ctx) != 0) {
            fatal("cache: out of memory for a digest context");
        }
    }
    if (EVP_DigestInit_ex(ctx, sha256_md, NULL) != 1) {
        fatal("cache: SHA-256 initialisation failed");
    }
    return ctx;
}

static void
digest_bytes(EVP_MD_CTX *ctx, const void *p, size_t n)
{
    if (n > 0 && EVP_DigestUpdate(ctx, p, n) != 1) {
        fatal("cache: SHA-256 update failed");
    }
}

static void
digest_u64(EVP_MD_CTX *ctx, uint64_t v)
{
    unsigned char le[8];

    for (int i = 0; i < 8; i++) {
        le[i] = (unsigned char)(v >> (8 * i));
    }
    digest_bytes(ctx, le, sizeof(le));
}

/* A length-prefixed field: u64 LE length, then the bytes (one update when short). */
static void
digest_str(EVP_MD_CTX *ctx, const void *p, size_t n)
{
    unsigned char field[8 + 248];

    if (n > sizeof(field) - 8) {
        digest_u64(ctx, n);
        digest_bytes(ctx, p, n);
        return;
    }
    for (int i = 0; i < 8; i++) {
        field[i] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    memcpy(field + 8, p, n);
    digest_bytes(ctx, field, 8 + n);
}

static void
digest_finish(EVP_MD_CTX *ctx, unsigned char out[CACHE_KEY_LEN])
{
    unsigned int n = 0;

    if (EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != CACHE_KEY_LEN) {
        fatal("cache: SHA-256 final failed");
    }
}

void
cache_keyer_begin(struct cache_keyer *k, const char *model, const char *revision,
                  const unsigned char *caller)
{
    EVP_MD_CTX *ctx = digest_start();
    unsigned char present = caller != NULL;

    memset(k, 0, sizeof(*k));
    digest_str(ctx, key_domain, sizeof(key_domain) - 1);
    digest_str(ctx, model, strlen(model));
    digest_str(ctx, revision, strlen(revision));
    digest_bytes(ctx, &present, 1);
    if (caller != NULL) {
        digest_bytes(ctx, caller, CACHE_KEY_LEN);
    }
    digest_finish(ctx, k->base);
}

int
cache_keyer_param(struct cache_keyer *k, const char *name, const char *value, size_t len,
                  const char **cause)
{
    EVP_MD_CTX *ctx;

    if (k->nparams >= CACHE_KEYER_MAX_PARAMS) {
        *cause = "too many vector-changing parameters to key";
        return -1;
    }
    ctx = digest_start();
    digest_str(ctx, "param", 5);
    digest_str(ctx, name, strlen(name));
    digest_str(ctx, value, len);
    digest_finish(ctx, k->params[k->nparams++]);
    return 0;
}

static int
compare_digest(const void *a, const void *b)
{
    return memcmp(a, b, CACHE_KEY_LEN);
}

void
cache_keyer_end(struct cache_keyer *k)
{
    EVP_MD_CTX *ctx = digest_start();

    /* Sorted digests make the prefix independent of the order params came in. */
    qsort(k->params, k->nparams, CACHE_KEY_LEN, compare_digest);
    digest_bytes(ctx, k->base, CACHE_KEY_LEN);
    digest_u64(ctx, k->nparams);
    for (uint32_t i = 0; i < k->nparams; i++) {
        digest_bytes(ctx, k->params[i], CACHE_KEY_LEN);
    }
    digest_finish(ctx, k->prefix);
    k->ended = true;
}

/* A key from a prefix not yet finished would silently differ from the real one. */
static void
require_ended(const struct cache_keyer *k)
{
    if (!k->ended) {
        fatal("cache: key derived before cache_keyer_end");
    }
}

void
cache_key_text(const struct cache_keyer *k, const char *text, size_t len, struct cache_key *out)
{
    EVP_MD_CTX *ctx;
    unsigned char kind = 't';

    require_ended(k);
    ctx = digest_start();
    digest_bytes(ctx, k->prefix, CACHE_KEY_LEN);
    digest_bytes(ctx, &kind, 1);
    digest_str(ctx, text, len);
    digest_finish(ctx, out->b);
}

void
cache_key_tokens(const struct cache_keyer *k, const int64_t *ids, size_t n, struct cache_key *out)
{
    EVP_MD_CTX *ctx;
    unsigned char kind = 'i';

    require_ended(k);
    ctx = digest_start();
    digest_bytes(ctx, k->prefix, CACHE_KEY_LEN);
    digest_bytes(ctx, &kind, 1);
    digest_u64(ctx, n);
    for (size_t i = 0; i < n; i++) {
        digest_u64(ctx, (uint64_t)ids[i]);
    }
    digest_finish(ctx, out->b);
}

uint32_t
cache_model_tag(const char *canonical_model)
{
    uint32_t h = 2166136261u;

    for (const unsigned char *p = (const unsigned char *)canonical_model; *p != '\0'; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

/* ---- the store ------------------------------------------------------------ */

/* One allocation per entry: 64 bytes of header, then the vector. */
struct entry {
    struct cache_key key;
    struct entry *newer; /* towards the head; NULL at the head */
    struct entry *older; /* towards the tail; NULL at the tail */
    uint64_t created_ms;
    uint32_t model_tag;
    uint32_t dim : 31;
    uint32_t visited : 1;
    char *text; /* the vector as a JSON array, rendered on a hit and kept, or NULL */
    float vec[];
};

#define MIN_SLOTS 16

struct cache {
    pthread_mutex_t lock; /* every public function holds it */
    size_t budget;
    struct entry **slots; /* cap entries, NULL when empty */
    size_t cap;           /* a power of two */
    size_t count;
    size_t entry_bytes;   /* sum of malloc_usable_size over entries */
    uint64_t seed;        /* keeps slot positions unpredictable to callers */
    struct entry *head, *tail, *hand;
    struct cache_stats st;
};

static size_t
table_bytes(size_t cap)
{
    return cap * sizeof(struct entry *);
}

static bool
over_load(size_t count, size_t cap)
{
    return count * 5 > cap * 4;
}

static uint64_t
mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static size_t
home_slot(const struct cache *c, const struct cache_key *key)
{
    uint64_t first;

    memcpy(&first, key->b, sizeof(first));
    return (size_t)mix64(first ^ c->seed) & (c->cap - 1);
}

/* Slot holding key, or (size_t)-1. */
static size_t
find_slot(const struct cache *c, const struct cache_key *key)
{
    size_t mask = c->cap - 1;

    for (size_t i = home_slot(c, key);; i = (i + 1) & mask) {
        const struct entry *e = c->slots[i];
        if (e == NULL) {
            return (size_t)-1;
        }
        if (memcmp(e->key.b, key->b, CACHE_KEY_LEN) == 0) {
            return i;
        }
    }
}

static void
table_insert(struct cache *c, struct entry *e)
{
    size_t mask = c->cap - 1;
    size_t i = home_slot(c, &e->key);

    while (c->slots[i] != NULL) {
        i = (i + 1) & mask;
    }
    c->slots[i] = e;
}

/* Backward-shift deletion: later entries of the run move up, no tombstones. */
static void
table_remove_at(struct cache *c, size_t i)
{
    size_t mask = c->cap - 1;
    size_t j = i;

    c->slots[i] = NULL;
    for (;;) {
        size_t home;
        j = (j + 1) & mask;
        if (c->slots[j] == NULL) {
            return;
        }
        home = home_slot(c, &c->slots[j]->key);
        /* The entry at j may stay when its home lies cyclically in (i, j]. */
        if (i <= j ? (i < home && home <= j) : (i < home || home <= j)) {
            continue;
        }
        c->slots[i] = c->slots[j];
        c->slots[j] = NULL;
        i = j;
    }
}

/* Rebuild the table with new_cap slots; -1 (table unchanged) without memory. */
static int
table_resize(struct cache *c, size_t new_cap)
{
    struct entry **old = c->slots;

    c->slots = calloc(new_cap, sizeof(*c->slots));
    if (c->slots == NULL) {
        c->slots = old;
        return -1;
    }
    c->cap = new_cap;
    for (struct entry *e = c->head; e != NULL; e = e->older) {
        table_insert(c, e);
    }
    free(old);
    return 0;
}

static void
list_unlink(struct cache *c, struct entry *e)
{
    if (c->hand == e) {
        c->hand = e->newer;
    }
    if (e->newer != NULL) {
        e->newer->older = e->older;
    } else {
        c->head = e->older;
    }
    if (e->older != NULL) {
        e->older->newer = e->newer;
    } else {
        c->tail = e->newer;
    }
}

static void
list_push_head(struct cache *c, struct entry *e)
{
    e->newer = NULL;
    e->older = c->head;
    if (c->head != NULL) {
        c->head->newer = e;
    } else {
        c->tail = e;
    }
    c->head = e;
}

static void
remove_entry(struct cache *c, struct entry *e)
{
    size_t i = find_slot(c, &e->key);

    table_remove_at(c, i);
    list_unlink(c, e);
    c->entry_bytes -= malloc_usable_size(e);
    if (e->text != NULL) {
        c->entry_bytes -= malloc_usable_size(e->text);
        free(e->text);
    }
    c->count--;
    free(e);
}

/* SIEVE: the first unvisited entry from the hand towards the head, wrapping. */
static void
evict_one(struct cache *c)
{
    struct entry *e = c->hand != NULL ? c->hand : c->tail;

    while (e->visited) {
        e->visited = 0;
        e = e->newer != NULL ? e->newer : c->tail;
    }
    c->hand = e->newer;
    remove_entry(c, e);
    c->st.evictions++;
}

struct cache *
cache_new(size_t budget_bytes)
{
    struct cache *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        fatal("cache: out of memory");
    }
    pthread_mutex_init(&c->lock, NULL);
    c->budget = budget_bytes;
    if (budget_bytes == 0) {
        return c;
    }
    c->cap = MIN_SLOTS;
    c->slots = calloc(c->cap, sizeof(*c->slots));
    if (c->slots == NULL) {
        fatal("cache: out of memory");
    }
    if (getrandom(&c->seed, sizeof(c->seed), 0) != (ssize_t)sizeof(c->seed)) {
        /* Only slot placement depends on it; a fixed seed still works. */
        c->seed = 0x9e3779b97f4a7c15ull;
    }
    return c;
}

void
cache_free(struct cache *c)
{
    if (c == NULL) {
        return;
    }
    for (struct entry *e = c->head, *next; e != NULL; e = next) {
        next = e->older;
        free(e->text);
        free(e);
    }
    free(c->slots);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static enum cache_result get_locked(struct cache *c, const struct cache_key *key, uint64_t now_ms,
                                    uint64_t ttl_ms, uint64_t stale_ms, const float **vec,
                                    uint32_t *dim);

enum cache_result
cache_get(struct cache *c, const struct cache_key *key, uint64_t now_ms, uint64_t ttl_ms,
          uint64_t stale_ms, const float **vec, uint32_t *dim)
{
    enum cache_result r;

    pthread_mutex_lock(&c->lock);
    r = get_locked(c, key, now_ms, ttl_ms, stale_ms, vec, dim);
    pthread_mutex_unlock(&c->lock);
    return r;
}

enum cache_result
cache_get_copy(struct cache *c, const struct cache_key *key, uint64_t now_ms, uint64_t ttl_ms,
               uint64_t stale_ms, float **vec, uint32_t *dim)
{
    const float *v = NULL;
    enum cache_result r;

    *vec = NULL;
    pthread_mutex_lock(&c->lock);
    r = get_locked(c, key, now_ms, ttl_ms, stale_ms, &v, dim);
    if (r != CACHE_MISS) {
        *vec = malloc((size_t)*dim * sizeof(float));
        if (*vec == NULL) {
            pthread_mutex_unlock(&c->lock);
            fatal("cache: out of memory");
        }
        memcpy(*vec, v, (size_t)*dim * sizeof(float));
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* Under the lock: key's entry, or NULL. */
static struct entry *
find_entry(struct cache *c, const struct cache_key *key)
{
    size_t i;

    if (c->count == 0 || (i = find_slot(c, key)) == (size_t)-1) {
        return NULL;
    }
    return c->slots[i];
}

/* A clock that went backwards counts as age 0. */
static uint64_t
entry_age(const struct entry *e, uint64_t now_ms)
{
    return now_ms >= e->created_ms ? now_ms - e->created_ms : 0;
}

void
cache_note_hits(struct cache *c, uint64_t n)
{
    pthread_mutex_lock(&c->lock);
    c->st.hits += n;
    pthread_mutex_unlock(&c->lock);
}

enum cache_result
cache_get_text(struct cache *c, const struct cache_key *key, uint64_t now_ms, uint64_t ttl_ms,
               void (*render)(const float *v, uint32_t dim, struct buf *out), bool keep,
               struct buf *out, uint32_t *dim)
{
    struct entry *e;
    size_t at = out->len;

    pthread_mutex_lock(&c->lock);
    /* Not counted: the caller counts hits once all have hit, or its full lookup follows. */
    e = find_entry(c, key);
    if (e == NULL || entry_age(e, now_ms) > ttl_ms) {
        pthread_mutex_unlock(&c->lock);
        return CACHE_MISS;
    }
    e->visited = 1;
    *dim = e->dim;
    if (keep && e->text != NULL) {
        buf_puts(out, e->text);
        pthread_mutex_unlock(&c->lock);
        return CACHE_HIT;
    }
    render(e->vec, e->dim, out);
    if (!keep || e->text != NULL) {
        pthread_mutex_unlock(&c->lock);
        return CACHE_HIT;
    }
    /* Kept only where the budget has room as it is: nothing is evicted for it. */
    e->text = malloc(out->len - at + 1);
    if (e->text != NULL) {
        size_t extra = malloc_usable_size(e->text);
        if (c->entry_bytes + extra + table_bytes(c->cap) <= c->budget) {
            memcpy(e->text, out->data + at, out->len - at);
            e->text[out->len - at] = '\0';
            c->entry_bytes += extra;
        } else {
            free(e->text);
            e->text = NULL;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return CACHE_HIT;
}

static enum cache_result
get_locked(struct cache *c, const struct cache_key *key, uint64_t now_ms, uint64_t ttl_ms,
           uint64_t stale_ms, const float **vec, uint32_t *dim)
{
    struct entry *e = find_entry(c, key);
    uint64_t age;

    if (e == NULL) {
        c->st.misses++;
        return CACHE_MISS;
    }
    age = entry_age(e, now_ms);
    if (age <= ttl_ms || age <= stale_ms) {
        e->visited = 1;
        *vec = e->vec;
        *dim = e->dim;
        if (age <= ttl_ms) {
            c->st.hits++;
            return CACHE_HIT;
        }
        c->st.stale_hits++;
        return CACHE_STALE;
    }
    /* Too old to serve even in an outage: unmarked, the hand takes it next time it passes. */
    e->visited = 0;
    c->st.misses++;
    return CACHE_MISS;
}

/* Evict (and grow or shrink the table) until an entry of need bytes fits. */
static void
make_room(struct cache *c, size_t need)
{
    while (over_load(c->count + 1, c->cap)) {
        size_t grown = table_bytes(c->cap * 2);
        if (need + grown <= c->budget) {
            while (c->count > 0 && c->entry_bytes + need + grown > c->budget) {
                evict_one(c);
            }
            if (table_resize(c, c->cap * 2) == 0) {
                continue;
            }
        }
        evict_one(c);
    }
    while (c->count > 0 && c->entry_bytes + need + table_bytes(c->cap) > c->budget) {
        evict_one(c);
    }
    if (c->count == 0 && need + table_bytes(c->cap) > c->budget) {
        /* A table grown for many small entries would not leave room for this one. */
        table_resize(c, MIN_SLOTS);
    }
}

static int put_locked(struct cache *c, const struct cache_key *key, uint32_t model_tag,
                      const float *vec, uint32_t dim, uint64_t now_ms, const char **cause);

int
cache_put(struct cache *c, const struct cache_key *key, uint32_t model_tag, const float *vec,
          uint32_t dim, uint64_t now_ms, const char **cause)
{
    int rc;

    pthread_mutex_lock(&c->lock);
    rc = put_locked(c, key, model_tag, vec, dim, now_ms, cause);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int
put_locked(struct cache *c, const struct cache_key *key, uint32_t model_tag, const float *vec,
           uint32_t dim, uint64_t now_ms, const char **cause)
{
    struct entry *e;
    size_t need;

    if (c->budget == 0) {
        return 0;
    }
    if (dim == 0 || dim > CACHE_MAX_DIM) {
        *cause = "vector size out of range";
        return -1;
    }
    if (sizeof(struct entry) + (size_t)dim * sizeof(float) + table_bytes(MIN_SLOTS) > c->budget) {
        *cause = "entry larger than the cache budget";
        return -1;
    }
    if ((e = find_entry(c, key)) != NULL) {
        remove_entry(c, e);
    }
    e = malloc(sizeof(struct entry) + (size_t)dim * sizeof(float));
    if (e == NULL) {
        *cause = "out of memory";
        return -1;
    }
    need = malloc_usable_size(e);
    if (need + table_bytes(MIN_SLOTS) > c->budget) {
        free(e);
        *cause = "entry larger than the cache budget";
        return -1;
    }
    e->key = *key;
    e->created_ms = now_ms;
    e->model_tag = model_tag;
    e->dim = dim;
    e->visited = 0;
    e->text = NULL;
    memcpy(e->vec, vec, (size_t)dim * sizeof(float));
    make_room(c, need);
    table_insert(c, e);
    list_push_head(c, e);
    c->entry_bytes += need;
    c->count++;
    c->st.inserts++;
    return 0;
}

size_t
cache_purge(struct cache *c, bool all, uint32_t model_tag)
{
    size_t removed = 0;

    pthread_mutex_lock(&c->lock);
    for (struct entry *e = c->head, *next; e != NULL; e = next) {
        next = e->older;
        if (all || e->model_tag == model_tag) {
            remove_entry(c, e);
            removed++;
        }
    }
    if (c->count == 0 && c->cap > MIN_SLOTS) {
        table_resize(c, MIN_SLOTS);
    }
    pthread_mutex_unlock(&c->lock);
    return removed;
}

void
cache_stats(struct cache *c, struct cache_stats *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->st;
    out->entries = c->count;
    out->bytes = c->budget == 0 ? 0 : c->entry_bytes + table_bytes(c->cap);
    out->budget = c->budget;
    pthread_mutex_unlock(&c->lock);
}

/* ---- value encoding ------------------------------------------------------- */

static void
put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint32_t
get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t
cache_value_size(uint32_t dim)
{
    return CACHE_VALUE_HEADER + (size_t)dim * 4;
}

size_t
cache_value_encode(const float *vec, uint32_t dim, uint64_t created_ms, unsigned char *out,
                   size_t cap)
{
    if (dim == 0 || dim > CACHE_MAX_DIM || cap < cache_value_size(dim)) {
        return 0;
    }
    memcpy(out, CACHE_VALUE_MAGIC, 4);
    out[4] = CACHE_VALUE_VERSION;
    out[5] = out[6] = out[7] = 0;
    put_le32(out + 8, dim);
    put_le32(out + 12, (uint32_t)created_ms);
    put_le32(out + 16, (uint32_t)(created_ms >> 32));
    for (uint32_t i = 0; i < dim; i++) {
        uint32_t bits;
        memcpy(&bits, &vec[i], 4);
        put_le32(out + CACHE_VALUE_HEADER + 4 * (size_t)i, bits);
    }
    return cache_value_size(dim);
}

int
cache_value_decode(const unsigned char *in, size_t len, float *out, uint32_t out_cap,
                   uint32_t *dim, uint64_t *created_ms, const char **cause)
{
    uint32_t d;

    if (len < CACHE_VALUE_HEADER) {
        *cause = "cached value shorter than its header";
        return -1;
    }
    if (memcmp(in, CACHE_VALUE_MAGIC, 4) != 0) {
        *cause = "cached value has a wrong magic";
        return -1;
    }
    if (in[4] != CACHE_VALUE_VERSION) {
        *cause = "cached value has an unknown version";
        return -1;
    }
    if (in[5] != 0 || in[6] != 0 || in[7] != 0) {
        *cause = "cached value has non-zero reserved bytes";
        return -1;
    }
    d = get_le32(in + 8);
    if (d == 0 || d > CACHE_MAX_DIM) {
        *cause = "cached value's dimension out of range";
        return -1;
    }
    if (len != cache_value_size(d)) {
        *cause = "cached value's length does not match its dimension";
        return -1;
    }
    if (d > out_cap) {
        *cause = "cached value larger than the buffer";
        return -1;
    }
    for (uint32_t i = 0; i < d; i++) {
        uint32_t bits = get_le32(in + CACHE_VALUE_HEADER + 4 * (size_t)i);
        memcpy(&out[i], &bits, 4);
    }
    *dim = d;
    *created_ms = (uint64_t)get_le32(in + 12) | (uint64_t)get_le32(in + 16) << 32;
    return 0;
}
