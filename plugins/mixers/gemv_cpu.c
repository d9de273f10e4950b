/* y = x W^T (+ bias) for a few rows of x: the linear layers of a decode step.
 *
 * gemv_bf16: x: (M, K) bf16, W: (N, K) bf16 row-major, bias: (N) bf16 or NULL -> y: (M, N)
 * bf16, accumulated in float32 and rounded to nearest even once. AVX512-BF16's dot-product
 * instruction takes 32 pairs per step. gemv_f32: the same in float32 with AVX512F FMAs,
 * 16 pairs per step. With few rows the product is bound by reading W; eight rows of W at a
 * time share each load of x. Threads take disjoint ranges of N. Without the instructions a
 * scalar loop computes the same (the Python side checks which one was built and declines it).
 */
#include "cpu_math.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

int gemv_bf16_vectorized(void) { return 1; }

/* Dot products of one x row with 8 (or fewer: `rows`) W rows, each row's cache lines prefetched
 * PREFETCH_BF16 elements ahead: twice the read rate of the hardware prefetcher alone on one core
 * of this Xeon (20 against 10 GB/s for a 4096 x 1024 W). A prefetch past the end cannot fault. */
#define PREFETCH_BF16 512
static inline void dot8(const uint16_t *x, const uint16_t *w, int64_t K, int rows, float *out) {
    __m512 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
        for (int r = 0; r < rows; r++) {
            _mm_prefetch((const char *)(w + r * K + k + PREFETCH_BF16), _MM_HINT_T0);
            acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_loadu_si512(w + r * K + k));
        }
    }
    if (k < K) {
        const __mmask32 m = (__mmask32)((1ULL << (K - k)) - 1);
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + k);
        for (int r = 0; r < rows; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_maskz_loadu_epi16(m, w + r * K + k));
    }
    for (int r = 0; r < rows; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}
#else
int gemv_bf16_vectorized(void) { return 0; }

static inline void dot8(const uint16_t *x, const uint16_t *w, int64_t K, int rows, float *out) {
    for (int r = 0; r < rows; r++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++) acc += bf16_load(x[k]) * bf16_load(w[r * K + k]);
        out[r] = acc;
    }
}
#endif

/* Output columns n0 .. n1 - 1 of every row (n0 a multiple of 8). */
void gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
               int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
    float out[8];
    for (int64_t n = n0; n < n1; n += 8) {
        const int rows = (int)(n1 - n < 8 ? n1 - n : 8);
        for (int64_t m = 0; m < M; m++) {
            dot8(x + m * K, w + n * K, K, rows, out);
            for (int r = 0; r < rows; r++) {
                const float b = bias ? bf16_load(bias[n + r]) : 0.0f;
                y[m * N + n + r] = bf16_store(out[r] + b);
            }
        }
    }
}

#if defined(__AVX512F__)
#include <immintrin.h>

int gemv_f32_vectorized(void) { return 1; }

/* Dot products of one float32 x row with 8 (or fewer: `rows`) W rows: eight independent
 * accumulators and eight streams of W in flight. */
static inline void dot8_f32(const float *x, const float *w, int64_t K, int rows, float *out) {
    __m512 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k);
        for (int r = 0; r < rows; r++) acc[r] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + r * K + k), acc[r]);
    }
    if (k < K) {
        const __mmask16 m = (__mmask16)((1U << (K - k)) - 1);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
        for (int r = 0; r < rows; r++) acc[r] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, w + r * K + k), acc[r]);
    }
    for (int r = 0; r < rows; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}
#else
int gemv_f32_vectorized(void) { return 0; }

static inline void dot8_f32(const float *x, const float *w, int64_t K, int rows, float *out) {
    for (int r = 0; r < rows; r++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++) acc += x[k] * w[r * K + k];
        out[r] = acc;
    }
}
#endif

/* Output columns n0 .. n1 - 1 of every row, float32 (n0 a multiple of 8). */
void gemv_f32(const float *x, const float *w, const float *bias, float *y,
              int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
    float out[8];
    for (int64_t n = n0; n < n1; n += 8) {
        const int rows = (int)(n1 - n < 8 ? n1 - n : 8);
        for (int64_t m = 0; m < M; m++) {
            dot8_f32(x + m * K, w + n * K, K, rows, out);
            for (int r = 0; r < rows; r++) y[m * N + n + r] = out[r] + (bias ? bias[n + r] : 0.0f);
        }
    }
}
