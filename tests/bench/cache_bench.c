/*
 * cache_bench.c - the memory cache: bytes per entry measured by RSS, ns per
 * get and put, key derivation cost, and hit ratios of SIEVE (the real
 * cache.c) against reference simulators of LRU and CLOCK on Zipf traces.
 * Not a test: prints numbers. make check builds it (-O2 by default CFLAGS):
 *   tests/bench/cache_bench                  # full run
 *   CACHE_BENCH_REQUESTS=2000000 tests/bench/cache_bench   # shorter traces
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "util.h"

#define MEM_ENTRIES 100000
#define MEM_DIM 384
#define TRACE_KEYS 1000000u

static uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Resident set size in bytes, from /proc/self/statm. */
static size_t
rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;

    if (f == NULL || fscanf(f, "%lu %lu", &size, &resident) != 2) {
        fprintf(stderr, "cache_bench: cannot read /proc/self/statm\n");
        exit(1);
    }
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static uint64_t
splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A digest-like key for an integer, as SHA-256 output would look. */
static struct cache_key
key_for(uint64_t n)
{
    struct cache_key k;
    uint64_t s = n * 0x2545f4914f6cdd1dull + 1;

    for (int i = 0; i < CACHE_KEY_LEN; i += 8) {
        uint64_t w = splitmix(&s);
        memcpy(k.b + i, &w, 8);
    }
    return k;
}

static void
bench_memory_and_speed(void)
{
    static float vec[MEM_DIM];
    struct cache_key *keys = xmalloc(MEM_ENTRIES * sizeof(*keys));
    struct cache *c;
    struct cache_stats st;
    const char *cause = NULL;
    size_t before, after;
    uint64_t t0, t1, rng = 7, hits = 0;
    const size_t gets = 2000000;

    for (int i = 0; i < MEM_DIM; i++) {
        vec[i] = (float)i / MEM_DIM;
    }
    for (size_t i = 0; i < MEM_ENTRIES; i++) {
        keys[i] = key_for(i);
    }
    before = rss_bytes();
    c = cache_new((size_t)1 << 30);
    t0 = now_ns();
    for (size_t i = 0; i < MEM_ENTRIES; i++) {
        if (cache_put(c, &keys[i], 1, vec, MEM_DIM, 0, &cause) < 0) {
            fprintf(stderr, "cache_bench: put: %s\n", cause);
            exit(1);
        }
    }
    t1 = now_ns();
    after = rss_bytes();
    cache_stats(c, &st);
    printf("## Memory: %d entries of %d floats\n\n", MEM_ENTRIES, MEM_DIM);
    printf("RSS before %zu KiB, after %zu KiB: %.0f bytes per entry (RSS delta / entries)\n",
           before / 1024, after / 1024, (double)(after - before) / MEM_ENTRIES);
    printf("accounted by the cache: %.0f bytes per entry (%llu bytes, payload %d)\n\n",
           (double)st.bytes / (double)st.entries, (unsigned long long)st.bytes,
           MEM_DIM * 4);
    printf("## Speed (%d entries of %d floats, 32-byte keys)\n\n", MEM_ENTRIES, MEM_DIM);
    printf("put (new key, copies 1536 bytes): %.0f ns/op\n",
           (double)(t1 - t0) / MEM_ENTRIES);
    t0 = now_ns();
    for (size_t i = 0; i < gets; i++) {
        const float *v;
        uint32_t dim;
        size_t k = splitmix(&rng) % MEM_ENTRIES;
        hits += cache_get(c, &keys[k], 1, 1000, 1000, &v, &dim) == CACHE_HIT;
    }
    t1 = now_ns();
    printf("get (hit, random key): %.0f ns/op (%llu hits)\n", (double)(t1 - t0) / gets,
           (unsigned long long)hits);
    t0 = now_ns();
    for (size_t i = 0; i < gets; i++) {
        const float *v;
        uint32_t dim;
        struct cache_key miss = keys[splitmix(&rng) % MEM_ENTRIES];
        miss.b[31] ^= 0xff;
        hits += cache_get(c, &miss, 1, 1000, 1000, &v, &dim) == CACHE_HIT;
    }
    t1 = now_ns();
    printf("get (miss): %.0f ns/op\n", (double)(t1 - t0) / gets);
    /* Replacing keeps the count and exercises delete + insert at load. */
    t0 = now_ns();
    for (size_t i = 0; i < MEM_ENTRIES; i++) {
        (void)cache_put(c, &keys[splitmix(&rng) % MEM_ENTRIES], 1, vec, MEM_DIM, 1, &cause);
    }
    t1 = now_ns();
    printf("put (replace): %.0f ns/op\n", (double)(t1 - t0) / MEM_ENTRIES);
    cache_free(c);

    {
        char text[201];
        struct cache_keyer k;
        struct cache_key out;
        const char *pc;
        const size_t n = 200000;
        memset(text, 'a', 200);
        text[200] = '\0';
        t0 = now_ns();
        for (size_t i = 0; i < n / 100; i++) {
            cache_keyer_begin(&k, "BAAI/bge-small-en-v1.5", "", NULL);
            if (cache_keyer_param(&k, "dimensions", "384", 3, &pc) < 0) {
                exit(1);
            }
            cache_keyer_end(&k);
        }
        t1 = now_ns();
        printf("key prefix (begin, one param, end): %.0f ns/request\n",
               (double)(t1 - t0) / (n / 100));
        t0 = now_ns();
        for (size_t i = 0; i < n; i++) {
            text[i % 200] = (char)('a' + i % 26);
            cache_key_text(&k, text, 200, &out);
        }
        t1 = now_ns();
        printf("key of a 200-byte text: %.0f ns/input\n\n", (double)(t1 - t0) / n);
    }
    free(keys);
}

/* ---- Zipf traces and the policies compared -------------------------------- */

/* requests ranks in [0, nkeys) with P(rank i) proportional to 1/(i+1)^alpha. */
static uint32_t *
zipf_trace(double alpha, uint32_t nkeys, size_t requests, uint64_t seed)
{
    double *cdf = xmalloc(nkeys * sizeof(double));
    uint32_t *trace = xmalloc(requests * sizeof(uint32_t));
    double sum = 0;

    for (uint32_t i = 0; i < nkeys; i++) {
        sum += pow((double)i + 1, -alpha);
        cdf[i] = sum;
    }
    for (size_t r = 0; r < requests; r++) {
        double u = (double)(splitmix(&seed) >> 11) / 9007199254740992.0 * sum;
        uint32_t lo = 0, hi = nkeys - 1;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] < u) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        /* Scatter popular ranks over the key space, as real inputs are. */
        trace[r] = (uint32_t)((lo * 2654435761ull) % nkeys);
    }
    free(cdf);
    return trace;
}

/* SIEVE as shipped: the real cache, read-through. Returns hits; *capacity: entries held. */
static uint64_t
run_cache(const uint32_t *trace, size_t requests, size_t budget, size_t *capacity)
{
    struct cache *c = cache_new(budget);
    struct cache_stats st;
    float v[1] = {1};
    const char *cause;
    uint64_t hits = 0;

    for (size_t r = 0; r < requests; r++) {
        struct cache_key k = key_for(trace[r]);
        const float *got;
        uint32_t dim;
        if (cache_get(c, &k, 0, 1, 1, &got, &dim) == CACHE_HIT) {
            hits++;
        } else if (cache_put(c, &k, 0, v, 1, 0, &cause) < 0) {
            fprintf(stderr, "cache_bench: put: %s\n", cause);
            exit(1);
        }
    }
    cache_stats(c, &st);
    *capacity = st.entries;
    cache_free(c);
    return hits;
}

/* LRU reference: a doubly linked list over key ids, capacity entries. */
static uint64_t
run_lru(const uint32_t *trace, size_t requests, uint32_t nkeys, size_t capacity)
{
    int32_t *prev = xmalloc(nkeys * sizeof(int32_t));
    int32_t *next = xmalloc(nkeys * sizeof(int32_t));
    unsigned char *in = xcalloc(nkeys, 1);
    int32_t head = -1, tail = -1;
    size_t count = 0;
    uint64_t hits = 0;

    for (size_t r = 0; r < requests; r++) {
        int32_t k = (int32_t)trace[r];
        if (in[k]) {
            hits++;
            if (head == k) {
                continue;
            }
            next[prev[k]] = next[k];
            if (next[k] >= 0) {
                prev[next[k]] = prev[k];
            } else {
                tail = prev[k];
            }
        } else {
            if (count == capacity) {
                int32_t victim = tail;
                tail = prev[victim];
                next[tail] = -1;
                in[victim] = 0;
                count--;
            }
            in[k] = 1;
            count++;
        }
        prev[k] = -1;
        next[k] = head;
        if (head >= 0) {
            prev[head] = k;
        }
        head = k;
        if (tail < 0) {
            tail = k;
        }
    }
    free(prev);
    free(next);
    free(in);
    return hits;
}

/* CLOCK reference: a ring of capacity slots, one reference bit per key. */
static uint64_t
run_clock(const uint32_t *trace, size_t requests, uint32_t nkeys, size_t capacity)
{
    int32_t *ring = xmalloc(capacity * sizeof(int32_t));
    unsigned char *in = xcalloc(nkeys, 1), *ref = xcalloc(nkeys, 1);
    size_t count = 0, hand = 0;
    uint64_t hits = 0;

    for (size_t r = 0; r < requests; r++) {
        int32_t k = (int32_t)trace[r];
        if (in[k]) {
            hits++;
            ref[k] = 1;
            continue;
        }
        if (count < capacity) {
            ring[count++] = k;
        } else {
            while (ref[ring[hand]]) {
                ref[ring[hand]] = 0;
                hand = (hand + 1) % capacity;
            }
            in[ring[hand]] = 0;
            ring[hand] = k;
            hand = (hand + 1) % capacity;
        }
        in[k] = 1;
        ref[k] = 0;
    }
    free(ring);
    free(in);
    free(ref);
    return hits;
}

static void
bench_hit_ratios(size_t requests)
{
    const double alphas[] = {0.8, 1.0};
    /* One-float entries: the hit ratio depends on the count, not the payload. */
    struct cache_key probe_key = key_for(1);
    float one = 1;
    const char *cause;
    struct cache *probe = cache_new(1 << 20);
    struct cache_stats st;
    size_t entry_bytes, budget;

    (void)cache_put(probe, &probe_key, 0, &one, 1, 0, &cause);
    cache_stats(probe, &st);
    cache_free(probe);
    /* Table at most 4/5 full: about 8 * 5/4 + 8 bytes of slot per entry; aim at 10% of keys. */
    entry_bytes = (size_t)(st.bytes - 16 * sizeof(void *));
    budget = (TRACE_KEYS / 10) * entry_bytes + (size_t)262144 * sizeof(void *);
    printf("## Hit ratio: %zu requests over %u keys, Zipf, capacity ~10%% of keys\n\n",
           requests, TRACE_KEYS);
    printf("| alpha | capacity (entries) | SIEVE (cache.c) | LRU | CLOCK |\n");
    printf("|---|---|---|---|---|\n");
    for (size_t a = 0; a < ARRAY_SIZE(alphas); a++) {
        uint32_t *trace = zipf_trace(alphas[a], TRACE_KEYS, requests, 42 + a);
        size_t capacity;
        uint64_t t0 = now_ns();
        uint64_t sieve = run_cache(trace, requests, budget, &capacity);
        uint64_t t1 = now_ns();
        uint64_t lru = run_lru(trace, requests, TRACE_KEYS, capacity);
        uint64_t clock = run_clock(trace, requests, TRACE_KEYS, capacity);
        printf("| %.1f | %zu | %.4f | %.4f | %.4f |\n", alphas[a], capacity,
               (double)sieve / requests, (double)lru / requests, (double)clock / requests);
        fprintf(stderr, "alpha %.1f: cache.c read-through %.0f ns/request\n", alphas[a],
                (double)(t1 - t0) / requests);
        free(trace);
    }
    printf("\n");
}

int
main(void)
{
    const char *env = getenv("CACHE_BENCH_REQUESTS");
    size_t requests = env != NULL ? strtoull(env, NULL, 10) : 10000000;

    bench_memory_and_speed();
    bench_hit_ratios(requests > 0 ? requests : 10000000);
    return 0;
}
