// FP32 FMA peak of one core and of N threads, for CPUs without AVX-512 (where
// ../shared/bench/peak.c, which runs AVX-512 code unconditionally, stops with SIGILL).
// Ten independent AVX2 FMA chains per thread (enough to cover the FMA latency on two
// pipes); prints the median and max of 7 repetitions in GFLOP/s.
//
//   gcc -O2 -mavx2 -mfma -pthread -o /tmp/peak_fma scripts/peak_fma.c && /tmp/peak_fma 2
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 100000000L
#define CHAINS 10

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *fma_loop(void *out) {
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f), acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long k = 0; k < ITERS; k++) {
#pragma GCC unroll 10
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    __m256 s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = _mm256_add_ps(s, acc[i]);
    _mm256_storeu_ps((float *)out, s);  // keeps the chains alive
    return NULL;
}

static int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(int argc, char **argv) {
    int max_threads = argc > 1 ? atoi(argv[1]) : 2;
    for (int t = 1; t <= max_threads; t++) {
        double g[7];
        for (int r = 0; r < 7; r++) {
            pthread_t th[64];
            float out[64][8];
            double t0 = now();
            for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, fma_loop, out[i]);
            for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
            g[r] = (double)ITERS * CHAINS * 16 * t / (now() - t0) / 1e9;
        }
        qsort(g, 7, sizeof g[0], cmp);
        printf("avx2 fma, %d thread(s): median %.1f GFLOP/s, max %.1f GFLOP/s (%.1f per core)\n", t,
               g[3], g[6], g[6] / t);
    }
    return 0;
}
