/*
 * blas.h - the matrix product the local model needs, from OpenBLAS loaded
 * with dlopen() on first use.
 *
 * Why not linked: OpenBLAS picks its kernels and starts its thread pool in a
 * library constructor, before main() runs, from the environment. Debian 12's
 * OpenBLAS (0.3.21) does not recognise the CPU models of many cloud VMs and
 * falls back to its "Prescott" (SSE3) kernels, three times slower than the
 * AVX-512 ones on the same machine; and its pthread build starts a spinning
 * thread per core in every process, model or not. Loaded here, it gets
 * OPENBLAS_NUM_THREADS=1 (the worker pool is the parallelism) and, unless the
 * environment already names one, OPENBLAS_CORETYPE from the CPU's features
 * (SkylakeX with AVX-512, Haswell with AVX2 and FMA), and a process without
 * a local model never loads it.
 */
#ifndef AKOSHA_BLAS_H
#define AKOSHA_BLAS_H

#include <stddef.h>

/*
 * Load OpenBLAS once (thread-safe; later calls return the first result).
 * Sets OPENBLAS_NUM_THREADS and OPENBLAS_CORETYPE in the environment when
 * unset, so call it before other threads read the environment: at start-up
 * from main, or from the load thread. Returns 0, or -1 with *cause set
 * (static string).
 */
int blas_init(const char **cause) __attribute__((warn_unused_result));

/* The kernel set OpenBLAS runs ("SkylakeX", "Haswell", ...); "" before blas_init. */
const char *blas_core(void);

/*
 * c[m x n] = alpha * a[m x k] . b[n x k]^T + beta * c, all row-major with
 * leading dimensions lda, ldb, ldc. blas_init must have succeeded.
 */
void blas_gemm_nt(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                  const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* c[m x n] = alpha * a[m x k] . b[k x n] + beta * c, row-major. */
void blas_gemm_nn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                  const float *b, size_t ldb, float beta, float *c, size_t ldc);

#endif
