/*
 * gemm.c - c += a . w^T with w packed in panels, per CPU (see gemm.h).
 *
 * A kernel takes a block of rows of a and one panel of w and walks k,
 * keeping the block's sums in vector registers: each step loads the panel's
 * next 32 floats once and multiplies them by every row's a value
 * (broadcast), so w, the large operand, is read once per block of rows, front
 * to back, prefetching ahead.
 */
#include "gemm.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "util.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GEMM_X86 1
#endif

/*
 * Blocking. Rows go in blocks of up to 14 (AVX-512) or 6 (AVX2); a block's
 * KC steps of k (14 x 1 KiB, in L1) are multiplied with every panel of a
 * chunk of CHUNK_PANELS panels before the next KC steps. The kernels read
 * a's rows where they are: copying each block into a k-major buffer first,
 * once per chunk, was 10 % of a 12-token forward pass (perf), and dropping
 * it made that pass 10 % faster. The chunk (CHUNK_PANELS * GEMM_PANEL
 * columns * k floats, 1 MiB for k = 1024) stays in L2 while every row block
 * passes over it.
 */
#define KC 256
/*
 * Panel rows (128 bytes each) ahead of the one in use that the kernels
 * prefetch: the hardware prefetchers alone left the 12-row product waiting
 * on memory (m = 12, the six layers' products: 9.1-9.7 ms without, 5.1-5.9
 * ms with 8 ahead, 2.8-5.7 with 16-64 on this shared VM). Prefetches past a
 * panel's end only touch other weights (or nothing: they never fault).
 */
#define PREFETCH_AHEAD 32
#define CHUNK_PANELS 8
/* Rows per block of the portable kernel. */
#define PORTABLE_ROWS 12
/*
 * Rows per block of the AVX-512 kernel: 14 rows x 32 columns is 28 zmm of
 * sums, plus the panel's two vectors and a broadcast, of 32 registers. One
 * block covers a text of up to 14 tokens, so its products stream each
 * weight matrix once. Measured against 12 x 32 (the same at 12 rows and in
 * the batch), and against 16 and 24 rows x 16 columns over half a panel at a
 * time (1.5-2x slower for 12 rows): see doc/BENCHMARK.md.
 */
#define AVX512_ROWS 14
#define AVX2_ROWS 6

static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;
static enum gemm_path chosen = GEMM_PORTABLE;

/*
 * A kernel: c[rows x cols] += a[rows x kc] . panel[kc x GEMM_PANEL] (its first cols
 * columns), a's rows lda floats apart.
 */
typedef void (*kernel_fn)(size_t rows, size_t kc, const float *a, size_t lda, const float *panel,
                          float *c, size_t ldc, size_t cols);

/* ---- packing -------------------------------------------------------------- */

#define HUGE_PAGE ((size_t)2 << 20)

/* Panels of GEMM_PANEL output columns for n outputs, the last zero-padded. */
static size_t
panels_of(size_t n)
{
    return (n + GEMM_PANEL - 1) / GEMM_PANEL;
}

size_t
gemm_packed_bytes(size_t n, size_t k)
{
    /* a multiple of 128 bytes (GEMM_PANEL floats): each matrix in an arena stays 64-byte aligned */
    return panels_of(n) * GEMM_PANEL * k * sizeof(float);
}

void
gemm_arena_init(struct gemm_arena *a, size_t bytes)
{
    a->size = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    a->used = 0;
    a->base = xaligned_alloc(HUGE_PAGE, a->size ? a->size : HUGE_PAGE);
#ifdef MADV_HUGEPAGE
    /* Only advice: without THP (or with none free) the pages are small and all still works. */
    (void)madvise(a->base, a->size, MADV_HUGEPAGE);
#endif
}

void
gemm_arena_free(struct gemm_arena *a)
{
    free(a->base);
    a->base = NULL;
    a->size = a->used = 0;
}

void
gemm_pack(struct gemm_packed *out, const float *w, size_t n, size_t k, struct gemm_arena *arena)
{
    size_t panels = panels_of(n);
    size_t bytes = gemm_packed_bytes(n, k);
    float *p;

    if (arena != NULL) {
        if (arena->size - arena->used < bytes) {
            fatal("gemm: arena of %zu bytes too small for %zu more", arena->size, bytes);
        }
        p = (float *)(arena->base + arena->used);
        arena->used += bytes;
    } else {
        p = xaligned_alloc(64, bytes ? bytes : 64);
    }

    for (size_t pn = 0; pn < panels; pn++) {
        float *panel = p + pn * GEMM_PANEL * k;
        for (size_t j = 0; j < GEMM_PANEL; j++) {
            size_t col = pn * GEMM_PANEL + j;
            for (size_t kk = 0; kk < k; kk++) {
                panel[kk * GEMM_PANEL + j] = col < n ? w[col * k + kk] : 0.0f;
            }
        }
    }
    out->n = n;
    out->k = k;
    out->panels = p;
    out->in_arena = arena != NULL;
}

void
gemm_packed_free(struct gemm_packed *p)
{
    if (!p->in_arena) {
        free(p->panels);
    }
    p->panels = NULL;
}

/* ---- portable ------------------------------------------------------------- */

static void
kernel_portable(size_t rows, size_t kc, const float *a, size_t lda, const float *panel,
                float *c, size_t ldc, size_t cols)
{
    float sum[GEMM_PANEL];

    for (size_t r = 0; r < rows; r++) {
        memset(sum, 0, sizeof(sum));
        for (size_t kk = 0; kk < kc; kk++) {
            float av = a[r * lda + kk];
            for (size_t j = 0; j < GEMM_PANEL; j++) {
                sum[j] += av * panel[kk * GEMM_PANEL + j];
            }
        }
        for (size_t j = 0; j < cols; j++) {
            c[r * ldc + j] += sum[j];
        }
    }
}

#ifdef GEMM_X86

/*
 * The row count is a compile-time constant in each kernel instance (the
 * switches below), so the loops over rows unroll and the sums stay in
 * registers.
 */
#define ROW_SWITCH6(rows, call)                                                                    \
    switch (rows) {                                                                                \
    case 1: call(1); break;                                                                        \
    case 2: call(2); break;                                                                        \
    case 3: call(3); break;                                                                        \
    case 4: call(4); break;                                                                        \
    case 5: call(5); break;                                                                        \
    default: call(6); break;                                                                       \
    }
#define ROW_SWITCH14(rows, call)                                                                   \
    switch (rows) {                                                                                \
    case 1: call(1); break;                                                                        \
    case 2: call(2); break;                                                                        \
    case 3: call(3); break;                                                                        \
    case 4: call(4); break;                                                                        \
    case 5: call(5); break;                                                                        \
    case 6: call(6); break;                                                                        \
    case 7: call(7); break;                                                                        \
    case 8: call(8); break;                                                                        \
    case 9: call(9); break;                                                                        \
    case 10: call(10); break;                                                                      \
    case 11: call(11); break;                                                                      \
    case 12: call(12); break;                                                                      \
    case 13: call(13); break;                                                                      \
    default: call(14); break;                                                                      \
    }

/* ---- AVX-512 --------------------------------------------------------------- */

#define AVX512 __attribute__((target("avx512f,avx2,fma")))

/*
 * rows x (16 * vecs) columns of sums in rows * vecs zmm: each step of k loads
 * vecs vectors of the panel and broadcasts each row's a value straight from
 * a (no copy of a: it stays in L1 across a chunk's panels).
 */
static inline __attribute__((always_inline)) AVX512 void
rows_avx512(const int rows, const int vecs, size_t kc, const float *a, size_t lda,
            const float *panel, float *c, size_t ldc, size_t cols)
{
    __m512 sum[AVX512_ROWS][2];
    __mmask16 mask[2];

    for (int v = 0; v < vecs; v++) {
        size_t left = cols > (size_t)v * 16 ? cols - (size_t)v * 16 : 0;
        mask[v] = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
    }
#pragma GCC unroll 16
    for (int r = 0; r < rows; r++) {
#pragma GCC unroll 2
        for (int v = 0; v < vecs; v++) {
            sum[r][v] = _mm512_setzero_ps();
        }
    }
    for (size_t kk = 0; kk < kc; kk++, panel += GEMM_PANEL) {
        __m512 b[2];
        _mm_prefetch((const char *)(panel + PREFETCH_AHEAD * GEMM_PANEL), _MM_HINT_T0);
        _mm_prefetch((const char *)(panel + PREFETCH_AHEAD * GEMM_PANEL + 16), _MM_HINT_T0);
#pragma GCC unroll 2
        for (int v = 0; v < vecs; v++) {
            b[v] = _mm512_load_ps(panel + 16 * v);
        }
#pragma GCC unroll 16
        for (int r = 0; r < rows; r++) {
            __m512 av = _mm512_set1_ps(a[(size_t)r * lda + kk]);
#pragma GCC unroll 2
            for (int v = 0; v < vecs; v++) {
                sum[r][v] = _mm512_fmadd_ps(av, b[v], sum[r][v]);
            }
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < rows; r++) {
        float *crow = c + (size_t)r * ldc;
#pragma GCC unroll 2
        for (int v = 0; v < vecs; v++) {
            __m512 old = _mm512_maskz_loadu_ps(mask[v], crow + 16 * v);
            _mm512_mask_storeu_ps(crow + 16 * v, mask[v], _mm512_add_ps(old, sum[r][v]));
        }
    }
}

AVX512 static void
kernel_avx512(size_t rows, size_t kc, const float *a, size_t lda, const float *panel, float *c,
              size_t ldc, size_t cols)
{
#define CALL(R) rows_avx512(R, 2, kc, a, lda, panel, c, ldc, cols)
    ROW_SWITCH14(rows, CALL)
#undef CALL
}

/* ---- AVX2 and FMA: up to 6 rows x 16 columns (half a panel), 12 ymm of sums */

#define AVX2 __attribute__((target("avx2,fma")))

/* Masks for the last columns: mask_table + 8 - count has count lanes set. */
static const int32_t mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

static inline __attribute__((always_inline)) AVX2 void
rows_avx2(const int rows, size_t kc, const float *a, size_t lda, const float *panel, float *c,
          size_t ldc, size_t cols)
{
    __m256i m0 = _mm256_loadu_si256((const __m256i *)(mask_table + 8 - (cols >= 8 ? 8 : cols)));
    __m256i m1 = _mm256_loadu_si256(
        (const __m256i *)(mask_table + 8 - (cols >= 16 ? 8 : cols <= 8 ? 0 : cols - 8)));
    __m256 s0[AVX2_ROWS], s1[AVX2_ROWS];

#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) {
        s0[r] = _mm256_setzero_ps();
        s1[r] = _mm256_setzero_ps();
    }
    for (size_t kk = 0; kk < kc; kk++, panel += GEMM_PANEL) {
        _mm_prefetch((const char *)(panel + PREFETCH_AHEAD * GEMM_PANEL), _MM_HINT_T0);
        __m256 b0 = _mm256_load_ps(panel);
        __m256 b1 = _mm256_load_ps(panel + 8);
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) {
            __m256 av = _mm256_broadcast_ss(a + (size_t)r * lda + kk);
            s0[r] = _mm256_fmadd_ps(av, b0, s0[r]);
            s1[r] = _mm256_fmadd_ps(av, b1, s1[r]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) {
        float *crow = c + (size_t)r * ldc;
        _mm256_maskstore_ps(crow, m0, _mm256_add_ps(_mm256_maskload_ps(crow, m0), s0[r]));
        _mm256_maskstore_ps(crow + 8, m1, _mm256_add_ps(_mm256_maskload_ps(crow + 8, m1), s1[r]));
    }
}

AVX2 static void
kernel_avx2(size_t rows, size_t kc, const float *a, size_t lda, const float *panel, float *c,
            size_t ldc, size_t cols)
{
    /* Two halves of the panel, each up to 6 rows (the driver gives at most 6 with AVX2). */
    for (size_t half = 0; half < 2 && half * 16 < cols; half++) {
        size_t left = cols - half * 16;
        size_t hcols = left > 16 ? 16 : left;
        const float *p = panel + half * 16;
        float *ch = c + half * 16;
#define CALL(R) rows_avx2(R, kc, a, lda, p, ch, ldc, hcols)
        ROW_SWITCH6(rows, CALL)
#undef CALL
    }
}

#endif /* GEMM_X86 */

/* ---- driver --------------------------------------------------------------- */

/* Split m rows into blocks of at most max_rows, as even as possible (13 -> 7 + 6, not 12 + 1). */
static size_t
block_rows(size_t m, size_t done, size_t max_rows)
{
    size_t left = m - done, blocks = (left + max_rows - 1) / max_rows;

    return (left + blocks - 1) / blocks;
}

static void
drive(kernel_fn kernel, size_t max_rows, size_t m, const float *a, size_t lda,
      const struct gemm_packed *b, size_t first, size_t panels, float *c, size_t ldc)
{
    size_t n = b->n, k = b->k;

    /*
     * One block of rows (a short text): panel after panel, each front to back,
     * so the weights stream through memory in the order they are stored and
     * the kernel's prefetch runs on into the next panel (the chunked order
     * below starts each panel's k-block cold). a (at most 14 x k floats) stays
     * in L1/L2 anyway. 12 tokens, one thread: 2.14-2.18 ms a text at best
     * against 2.21-2.26 in chunks (alternating runs, this shared VM).
     */
    if (m <= max_rows) {
        for (size_t p = first; p < panels; p++) {
            size_t col = p * GEMM_PANEL;
            size_t cols = n - col < GEMM_PANEL ? n - col : GEMM_PANEL;
            for (size_t k0 = 0; k0 < k; k0 += KC) {
                size_t kc = k - k0 < KC ? k - k0 : KC;
                kernel(m, kc, a + k0, lda, b->panels + (p * k + k0) * GEMM_PANEL, c + col, ldc,
                       cols);
            }
        }
        return;
    }
    for (size_t p0 = first; p0 < panels; p0 += CHUNK_PANELS) {
        size_t p1 = p0 + CHUNK_PANELS < panels ? p0 + CHUNK_PANELS : panels;
        for (size_t i = 0, rows; i < m; i += rows) {
            rows = block_rows(m, i, max_rows);
            for (size_t k0 = 0; k0 < k; k0 += KC) {
                size_t kc = k - k0 < KC ? k - k0 : KC;
                for (size_t p = p0; p < p1; p++) {
                    size_t col = p * GEMM_PANEL;
                    size_t cols = n - col < GEMM_PANEL ? n - col : GEMM_PANEL;
                    kernel(rows, kc, a + i * lda + k0, lda, b->panels + (p * k + k0) * GEMM_PANEL,
                           c + i * ldc + col, ldc, cols);
                }
            }
        }
    }
}

/* ---- dispatch ------------------------------------------------------------- */

bool
gemm_supported(enum gemm_path path)
{
    switch (path) {
    case GEMM_PORTABLE:
        return true;
#ifdef GEMM_X86
    case GEMM_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case GEMM_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f");
#endif
    default:
        return false;
    }
}

const char *
gemm_path_name(enum gemm_path path)
{
    switch (path) {
    case GEMM_AVX2:
        return "avx2";
    case GEMM_AVX512:
        return "avx512";
    default:
        return "portable";
    }
}

static void
choose(void)
{
    const char *want = getenv("AKOSHA_GEMM");

    if (want != NULL) {
        for (enum gemm_path p = GEMM_PORTABLE; p <= GEMM_AVX512; p++) {
            if (strcmp(want, gemm_path_name(p)) == 0 && gemm_supported(p)) {
                chosen = p;
                return;
            }
        }
    }
    chosen = gemm_supported(GEMM_AVX512) ? GEMM_AVX512
             : gemm_supported(GEMM_AVX2) ? GEMM_AVX2
                                         : GEMM_PORTABLE;
}

enum gemm_path
gemm_path(void)
{
    pthread_once(&chosen_once, choose);
    return chosen;
}

bool
gemm_use(enum gemm_path path)
{
    pthread_once(&chosen_once, choose);
    if (!gemm_supported(path)) {
        return false;
    }
    chosen = path;
    return true;
}

size_t
gemm_panels(const struct gemm_packed *b)
{
    return panels_of(b->n);
}

void
gemm_acc_panels(size_t m, const float *a, size_t lda, const struct gemm_packed *b, size_t first,
                size_t end, float *c, size_t ldc)
{
    end = MIN(end, gemm_panels(b));
    if (m == 0 || first >= end) {
        return;
    }
    switch (gemm_path()) {
#ifdef GEMM_X86
    case GEMM_AVX512:
        drive(kernel_avx512, AVX512_ROWS, m, a, lda, b, first, end, c, ldc);
        break;
    case GEMM_AVX2:
        drive(kernel_avx2, AVX2_ROWS, m, a, lda, b, first, end, c, ldc);
        break;
#endif
    default:
        drive(kernel_portable, PORTABLE_ROWS, m, a, lda, b, first, end, c, ldc);
        break;
    }
}

void
gemm_acc(size_t m, const float *a, size_t lda, const struct gemm_packed *b, float *c, size_t ldc)
{
    gemm_acc_panels(m, a, lda, b, 0, gemm_panels(b), c, ldc);
}
