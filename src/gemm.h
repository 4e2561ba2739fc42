/*
 * gemm.h - the local model's dense layers: c += a . w^T with the weights w
 * packed once, at load, into the layout the kernels read.
 *
 * Why not OpenBLAS for these: sgemm copies ("packs") the whole weight matrix
 * into its own layout on every call. With 12 rows (one short text) that copy
 * was 63 % of a forward pass (perf, OpenBLAS 0.3.21 SkylakeX kernels); the
 * arithmetic was 23 %. These kernels read the weights packed once, once per
 * block of rows (14 with AVX-512, 6 with AVX2), and keep the block's sums in
 * registers. OpenBLAS is faster by 4-16 % at hundreds of rows, but only on
 * the original layout, a second copy of the weights (see dense() in bert.c
 * and doc/BENCHMARK.md for the measurements).
 *
 * The kernel set is chosen once from the CPU (AVX-512F, AVX2 with FMA, or
 * portable C); AKOSHA_GEMM=portable|avx2|avx512 in the environment, or
 * gemm_use() from a test, chooses another one the CPU supports.
 */
#ifndef AKOSHA_GEMM_H
#define AKOSHA_GEMM_H

#include <stdbool.h>
#include <stddef.h>

enum gemm_path {
    GEMM_PORTABLE,
    GEMM_AVX2,   /* AVX2 and FMA */
    GEMM_AVX512, /* AVX-512F */
};

/* Columns per panel of a packed matrix. */
#define GEMM_PANEL 32

/*
 * A weight matrix in the kernels' layout: panels of GEMM_PANEL output
 * columns, each [k x GEMM_PANEL] row-major, so that a kernel reads one panel
 * front to back; the last panel is padded with zeros.
 */
struct gemm_packed {
    size_t n, k;
    float *panels; /* ceil(n / GEMM_PANEL) * GEMM_PANEL * k floats, 64-byte aligned */
    bool in_arena; /* panels belong to a gemm_arena, not to this matrix */
};

/*
 * One block of memory for many packed matrices (a model's), on transparent
 * huge pages where the kernel gives them: 2 MiB aligned, its size rounded up
 * to 2 MiB, madvise(MADV_HUGEPAGE). Streaming tens of MiB of weights a text
 * through 4 KiB pages costs a TLB miss every 4 KiB; one huge page covers
 * 512 of them. One block for all, not one per matrix: rounding each matrix
 * up to 2 MiB would waste up to 2 MiB a matrix.
 */
struct gemm_arena {
    char *base; /* owned: free with gemm_arena_free */
    size_t size, used;
};

/* Bytes gemm_pack takes from an arena for an [n x k] matrix. */
size_t gemm_packed_bytes(size_t n, size_t k);

/* An arena of at least bytes (aborts when out of memory, like xmalloc). */
void gemm_arena_init(struct gemm_arena *a, size_t bytes);

void gemm_arena_free(struct gemm_arena *a);

/*
 * Pack w[n x k] (row-major: n outputs of k inputs each, as a Linear layer
 * stores its weight) into *out, in arena (which must have
 * gemm_packed_bytes(n, k) left) or, with arena NULL, in memory owned by
 * *out. Free with gemm_packed_free either way (it leaves an arena's memory
 * to gemm_arena_free).
 */
void gemm_pack(struct gemm_packed *out, const float *w, size_t n, size_t k,
               struct gemm_arena *arena);

void gemm_packed_free(struct gemm_packed *p);

/*
 * c[m x n] += a[m x k] . w^T, with w packed in b: a and c row-major with
 * leading dimensions lda and ldc (in floats). Thread-safe.
 */
void gemm_acc(size_t m, const float *a, size_t lda, const struct gemm_packed *b, float *c,
              size_t ldc);

/* Panels of b: ceil(n / GEMM_PANEL). */
size_t gemm_panels(const struct gemm_packed *b);

/*
 * gemm_acc for output columns [first * GEMM_PANEL, min(end * GEMM_PANEL, n))
 * alone, panels first to end of b; c still points at column 0. Two threads
 * may run disjoint ranges of one product at once.
 */
void gemm_acc_panels(size_t m, const float *a, size_t lda, const struct gemm_packed *b,
                     size_t first, size_t end, float *c, size_t ldc);

/* The kernel set gemm_acc runs now. */
enum gemm_path gemm_path(void);

const char *gemm_path_name(enum gemm_path path);

/* Whether this CPU (and build) can run path. */
bool gemm_supported(enum gemm_path path);

/*
 * Run path from now on (for tests and benchmarks; not while another thread
 * is inside gemm_acc). Returns false, changing nothing, when unsupported.
 */
bool gemm_use(enum gemm_path path);

#endif
