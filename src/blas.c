/*
 * blas.c - OpenBLAS through dlopen() (see blas.h for why).
 */
#include "blas.h"

#include <cblas.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint,
                         blasint, blasint, float, const float *, blasint, const float *, blasint,
                         float, float *, blasint);

static struct {
    pthread_once_t once;
    const char *error;
    void *lib;
    sgemm_fn sgemm;
    void (*set_num_threads)(int);
    char *(*get_corename)(void);
} blas = {.once = PTHREAD_ONCE_INIT};

/* The kernel set for this CPU, or NULL to let OpenBLAS choose. */
static const char *
coretype(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        return "SkylakeX";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return "Haswell";
    }
#endif
    return NULL;
}

static void
load(void)
{
    static const char *names[] = {"libopenblas.so.0", "libopenblas.so"};
    const char *core = coretype();

    /* Read by OpenBLAS's constructor when dlopen() runs it. */
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    if (core != NULL) {
        setenv("OPENBLAS_CORETYPE", core, 0);
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && blas.lib == NULL; i++) {
        blas.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    }
    if (blas.lib == NULL) {
        blas.error = "cannot load libopenblas.so.0 (apt-get install libopenblas0)";
        return;
    }
    *(void **)&blas.sgemm = dlsym(blas.lib, "cblas_sgemm");
    *(void **)&blas.set_num_threads = dlsym(blas.lib, "openblas_set_num_threads");
    *(void **)&blas.get_corename = dlsym(blas.lib, "openblas_get_corename");
    if (blas.sgemm == NULL || blas.set_num_threads == NULL || blas.get_corename == NULL) {
        blas.error = "libopenblas.so.0 lacks cblas_sgemm or openblas_set_num_threads";
        blas.sgemm = NULL;
        return;
    }
    blas.set_num_threads(1);
}

int
blas_init(const char **cause)
{
    pthread_once(&blas.once, load);
    if (blas.sgemm == NULL) {
        *cause = blas.error;
        return -1;
    }
    return 0;
}

const char *
blas_core(void)
{
    return blas.get_corename != NULL && blas.sgemm != NULL ? blas.get_corename() : "";
}

void
blas_gemm_nt(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
             const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)m, (blasint)n, (blasint)k, alpha,
               a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

void
blas_gemm_nn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
             const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n, (blasint)k,
               alpha, a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}
