/* y = x W^T (+ bias) for a few rows of x: the linear layers of a decode step.
 *
 * gemv_bf16: x: (M, K) bf16, W: (N, K) bf16 row-major, bias: (N) bf16 or NULL -> y: (M, N)
 * bf16, accumulated in float32 and rounded to nearest even once. AVX512-BF16's dot-product
 * instruction takes 32 pairs per step. gemv_f32: the same in float32 with AVX512F FMAs,
 * 16 pairs per step. With few rows the product is bound by reading W, so W is read once, in
 * order: one row after another, each row's vectors shared by up to XROWS rows of x (their
 * products with it in two accumulators each). A single sequential stream is what the hardware
 * prefetcher streams fastest; on the AMD EPYC of RESULTS.md it read W from memory at 1.7-2.4x
 * the rate of eight rows read side by side at the small decode model's shapes, 1.0-2.0x at the
 * large one's (benchmarks/probe_gemv_order.py). Threads take
 * disjoint ranges of N. Without the instructions a scalar loop computes the same (the Python
 * side checks which one was built and declines it).
 */
#include "cpu_math.h"

#define XROWS 4  /* rows of x per pass over W */
#define WROWS 8  /* rows of W per block, reused from cache by every XROWS rows of x */

/* The body of both kernels: y's columns n0 .. n1 - 1 of every row, W's rows in blocks of WROWS,
 * each row's products with up to XROWS rows of x from DOT (inlined with the row count a
 * constant in each case); LOAD reads the bias, STORE rounds the result to y's dtype. */
#define GEMV_COLUMNS(T, DOT, LOAD, STORE)                                                          \
    float out[XROWS];                                                                              \
    for (int64_t nb = n0; nb < n1; nb += WROWS)                                                    \
        for (int64_t m0 = 0; m0 < M; m0 += XROWS) {                                                \
            const int64_t rows = M - m0 < XROWS ? M - m0 : XROWS, nend = nb + WROWS < n1 ? nb + WROWS : n1; \
            const T *xm = x + m0 * K;                                                              \
            for (int64_t n = nb; n < nend; n++) {                                                  \
                switch (rows) {                                                                    \
                    case 1: DOT(xm, w + n * K, K, 1, out); break;                                  \
                    case 2: DOT(xm, w + n * K, K, 2, out); break;                                  \
                    case 3: DOT(xm, w + n * K, K, 3, out); break;                                  \
                    default: DOT(xm, w + n * K, K, XROWS, out);                                    \
                }                                                                                  \
                const float b = bias ? LOAD(bias[n]) : 0.0f;                                       \
                for (int64_t m = 0; m < rows; m++) y[(m0 + m) * N + n] = STORE(out[m] + b);       \
            }                                                                                      \
        }
#define AS_IS(v) (v)

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

int gemv_bf16_vectorized(void) { return 1; }

/* out[m] = x[m] . w for m < rows (1..XROWS; a constant where it is inlined); x rows K apart. */
static inline __attribute__((always_inline))
void dot_rows_bf16(const uint16_t *x, const uint16_t *w, int64_t K, int rows, float *out) {
    __m512 a0[XROWS], a1[XROWS];
    for (int m = 0; m < rows; m++) a0[m] = a1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
        for (int m = 0; m < rows; m++) {
            a0[m] = _mm512_dpbf16_ps(a0[m], (__m512bh)_mm512_loadu_si512(x + m * K + k), w0);
            a1[m] = _mm512_dpbf16_ps(a1[m], (__m512bh)_mm512_loadu_si512(x + m * K + k + 32), w1);
        }
    }
    for (; k < K; k += 32) {  /* at most two more vectors, the last one masked */
        const __mmask32 mask = K - k >= 32 ? (__mmask32)~0u : (__mmask32)((1ULL << (K - k)) - 1);
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + k);
        for (int m = 0; m < rows; m++)
            a0[m] = _mm512_dpbf16_ps(a0[m], (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k), wv);
    }
    for (int m = 0; m < rows; m++) out[m] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m]));
}
#else
int gemv_bf16_vectorized(void) { return 0; }

static inline void dot_rows_bf16(const uint16_t *x, const uint16_t *w, int64_t K, int rows, float *out) {
    for (int m = 0; m < rows; m++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++) acc += bf16_load(x[m * K + k]) * bf16_load(w[k]);
        out[m] = acc;
    }
}
#endif

/* Output columns n0 .. n1 - 1 of every row. */
void gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
               int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
    GEMV_COLUMNS(uint16_t, dot_rows_bf16, bf16_load, bf16_store)
}

#if defined(__AVX512F__)
#include <immintrin.h>

int gemv_f32_vectorized(void) { return 1; }

static inline __attribute__((always_inline))
void dot_rows_f32(const float *x, const float *w, int64_t K, int rows, float *out) {
    __m512 a0[XROWS], a1[XROWS];
    for (int m = 0; m < rows; m++) a0[m] = a1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
        for (int m = 0; m < rows; m++) {
            a0[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k), w0, a0[m]);
            a1[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k + 16), w1, a1[m]);
        }
    }
    for (; k < K; k += 16) {
        const __mmask16 mask = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1U << (K - k)) - 1);
        const __m512 wv = _mm512_maskz_loadu_ps(mask, w + k);
        for (int m = 0; m < rows; m++) a0[m] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + m * K + k), wv, a0[m]);
    }
    for (int m = 0; m < rows; m++) out[m] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m]));
}
#else
int gemv_f32_vectorized(void) { return 0; }

static inline void dot_rows_f32(const float *x, const float *w, int64_t K, int rows, float *out) {
    for (int m = 0; m < rows; m++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++) acc += x[m * K + k] * w[k];
        out[m] = acc;
    }
}
#endif

/* Output columns n0 .. n1 - 1 of every row, float32. */
void gemv_f32(const float *x, const float *w, const float *bias, float *y,
              int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
    GEMV_COLUMNS(float, dot_rows_f32, AS_IS, AS_IS)
}
