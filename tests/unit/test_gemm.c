/*
 * test_gemm.c - the packed-weight kernels against a float64 product, on
 * shapes that are not multiples of the vector width or the row blocks, on
 * every kernel set this CPU runs (gemm_use forces each in turn). Row counts
 * cover each block size (6 for AVX2, 12 portable, 14 AVX-512), one more, and
 * splits into uneven blocks.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "gemm.h"

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static float
rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

/* c += a . w^T on path; every element within 1e-5 of the float64 result (relative to its scale). */
static void
check_shape(enum gemm_path path, size_t m, size_t n, size_t k)
{
    size_t lda = k + 3, ldc = n + 5; /* leading dimensions wider than the rows */
    float *a = malloc(m * lda * sizeof(float)), *w = malloc(n * k * sizeof(float));
    float *c = malloc(m * ldc * sizeof(float)), *c0 = malloc(m * ldc * sizeof(float));
    struct gemm_packed p;

    for (size_t i = 0; i < m * lda; i++) {
        a[i] = rnd();
    }
    for (size_t i = 0; i < n * k; i++) {
        w[i] = rnd();
    }
    for (size_t i = 0; i < m * ldc; i++) {
        c0[i] = c[i] = rnd();
    }
    gemm_pack(&p, w, n, k, NULL);
    cr_assert(gemm_use(path));
    gemm_acc(m, a, lda, &p, c, ldc);
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < ldc; j++) {
            double want = c0[i * ldc + j], scale = fabs(want);
            if (j < n) {
                for (size_t kk = 0; kk < k; kk++) {
                    want += (double)a[i * lda + kk] * w[j * k + kk];
                    scale += fabs((double)a[i * lda + kk] * w[j * k + kk]);
                }
            }
            /* Columns past n (the padding of c's rows) must be left alone. */
            cr_assert(fabs(c[i * ldc + j] - want) <= 1e-5 * (1 + scale),
                      "%s m=%zu n=%zu k=%zu: c[%zu][%zu] = %.9g, want %.9g",
                      gemm_path_name(path), m, n, k, i, j, c[i * ldc + j], want);
        }
    }
    gemm_packed_free(&p);
    free(a);
    free(w);
    free(c);
    free(c0);
}

static void
check_path(enum gemm_path path)
{
    static const size_t ms[] = {1, 2, 3, 5, 6, 7, 12, 13, 14, 15, 29, 33};
    static const size_t ns[] = {1, 7, 16, 31, 33, 50, 97};
    static const size_t ks[] = {1, 5, 17, 255, 257, 300};

    if (!gemm_supported(path)) {
        cr_log_info("this CPU does not run the %s kernels: not tested", gemm_path_name(path));
        return;
    }
    for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
        for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
            for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
                check_shape(path, ms[mi], ns[ni], ks[ki]);
            }
        }
    }
}

Test(gemm, portable_kernels_match_float64_on_odd_shapes)
{
    check_path(GEMM_PORTABLE);
}

Test(gemm, avx2_kernels_match_float64_on_odd_shapes)
{
    check_path(GEMM_AVX2);
}

Test(gemm, avx512_kernels_match_float64_on_odd_shapes)
{
    check_path(GEMM_AVX512);
}

Test(gemm, many_rows_cross_the_row_blocks_and_panel_chunks)
{
    /* 300 columns: 10 panels, more than one chunk of 8. */
    for (enum gemm_path path = GEMM_PORTABLE; path <= GEMM_AVX512; path++) {
        if (gemm_supported(path)) {
            check_shape(path, 100, 300, 40);
        }
    }
}

Test(gemm, portable_is_always_supported_and_can_be_forced)
{
    cr_assert(gemm_supported(GEMM_PORTABLE));
    cr_assert(gemm_use(GEMM_PORTABLE));
    cr_assert_eq(gemm_path(), GEMM_PORTABLE);
}

Test(gemm, panel_ranges_and_arena_packing_give_the_whole_product)
{
    /* 5 panels of 32 (the last one part), k across a KC block: two ranges make the product. */
    size_t m = 12, n = 150, k = 300;
    float *a = malloc(m * k * sizeof(float)), *w = malloc(n * k * sizeof(float));
    float *whole = calloc(m * n, sizeof(float)), *parts = calloc(m * n, sizeof(float));
    struct gemm_packed own, in_arena;
    struct gemm_arena arena;

    for (size_t i = 0; i < m * k; i++) {
        a[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    }
    for (size_t i = 0; i < n * k; i++) {
        w[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
    }
    gemm_arena_init(&arena, gemm_packed_bytes(n, k) + gemm_packed_bytes(1, 1));
    cr_assert_eq((uintptr_t)arena.base % (2u << 20), 0, "the arena is 2 MiB aligned");
    cr_assert_eq(arena.size % (2u << 20), 0);
    gemm_pack(&own, w, n, k, NULL);
    gemm_pack(&in_arena, w, n, k, &arena);
    cr_assert_eq(arena.used, gemm_packed_bytes(n, k));
    cr_assert_eq(gemm_panels(&own), 5);
    for (enum gemm_path path = GEMM_PORTABLE; path <= GEMM_AVX512; path++) {
        if (!gemm_supported(path)) {
            continue;
        }
        cr_assert(gemm_use(path));
        memset(whole, 0, m * n * sizeof(float));
        memset(parts, 0, m * n * sizeof(float));
        gemm_acc(m, a, k, &own, whole, n);
        gemm_acc_panels(m, a, k, &in_arena, 0, 2, parts, n);
        gemm_acc_panels(m, a, k, &in_arena, 2, 99, parts, n);
        cr_assert_arr_eq(parts, whole, m * n * sizeof(float), "%s", gemm_path_name(path));
    }
    gemm_packed_free(&own);
    gemm_packed_free(&in_arena); /* leaves the arena's memory alone */
    gemm_arena_free(&arena);
    free(a);
    free(w);
    free(whole);
    free(parts);
}
