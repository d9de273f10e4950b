/* y = x W^T (+ bias) for a few rows of x: the linear layers of a decode step.
 *
 * gemv_bf16: x: (M, K) bf16, W: (N, K) bf16 row-major, bias: (N) bf16 or NULL -> y: (M, N)
 * bf16, accumulated in float32 and rounded to nearest even once. AVX512-BF16's dot-product
 * instruction takes 32 pairs per step; with AVX2 and FMA, bf16's even and odd elements become
 * float32 by a shift and a mask, 16 pairs per step. gemv_f32: the same in float32 with
 * AVX512F FMAs (16 pairs) or AVX2's (8). With few rows the product is bound by reading W, so
 * W is read once, in order: one row after another, each row's vectors shared by up to XROWS
 * rows of x (their products with it in two or more accumulators each). A single sequential
 * stream is what the hardware prefetcher streams fastest; on the AMD EPYC of RESULTS.md it
 * read W from memory at 1.7-2.4x the rate of eight rows read side by side at the small decode
 * model's shapes, 1.0-2.0x at the large one's (benchmarks/probe_gemv_order.py). Threads take
 * disjoint ranges of N. Without the instructions a scalar loop computes the same (the Python
 * side checks which one was built and declines it); `gemv_*_vectorized` says which: 0 scalar,
 * 1 AVX512, 2 AVX2.
 */
#include "cpu_math.h"

#if defined(__AVX2__)
#include <immintrin.h>
/* The sum of v's 8 lanes. */
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

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
#elif defined(__AVX2__) && defined(__FMA__)
int gemv_bf16_vectorized(void) { return 2; }

/* bfloat16 is float32's top half: of 8 bf16 pairs held as 32-bit lanes, the even elements
 * as float32 are lane << 16, the odd ones lane & 0xFFFF0000. x and w split alike, so x's
 * even elements meet w's even ones: sum_k x_k w_k = sum(even products) + sum(odd products). */
static inline __m256 bf16_even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
static inline __m256 bf16_odd(__m256i v) {
    return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* As the AVX512 kernel, 16 pairs per step; one row keeps four sums (32 pairs a step) so that
 * the FMAs' latency does not bound it, more rows two each. */
static inline __attribute__((always_inline))
void dot_rows_bf16(const uint16_t *x, const uint16_t *w, int64_t K, int rows, float *out) {
    __m256 a[XROWS][4];
    for (int m = 0; m < rows; m++) a[m][0] = a[m][1] = a[m][2] = a[m][3] = _mm256_setzero_ps();
    int64_t k = 0;
    if (rows == 1)
        for (; k + 32 <= K; k += 32) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k + 16));
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + k));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + k + 16));
            a[0][0] = _mm256_fmadd_ps(bf16_even(x0), bf16_even(w0), a[0][0]);
            a[0][1] = _mm256_fmadd_ps(bf16_odd(x0), bf16_odd(w0), a[0][1]);
            a[0][2] = _mm256_fmadd_ps(bf16_even(x1), bf16_even(w1), a[0][2]);
            a[0][3] = _mm256_fmadd_ps(bf16_odd(x1), bf16_odd(w1), a[0][3]);
        }
    for (; k + 16 <= K; k += 16) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k));
        const __m256 we = bf16_even(wv), wo = bf16_odd(wv);
        for (int m = 0; m < rows; m++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + m * K + k));
            a[m][0] = _mm256_fmadd_ps(bf16_even(xv), we, a[m][0]);
            a[m][1] = _mm256_fmadd_ps(bf16_odd(xv), wo, a[m][1]);
        }
    }
    for (int m = 0; m < rows; m++) {
        float acc = hsum256(_mm256_add_ps(_mm256_add_ps(a[m][0], a[m][1]), _mm256_add_ps(a[m][2], a[m][3])));
        for (int64_t j = k; j < K; j++) acc += bf16_load(x[m * K + j]) * bf16_load(w[j]);
        out[m] = acc;
    }
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
#elif defined(__AVX2__) && defined(__FMA__)
int gemv_f32_vectorized(void) { return 2; }

/* 8 pairs per FMA; one row keeps four sums (32 pairs a step), more rows two each (16). */
static inline __attribute__((always_inline))
void dot_rows_f32(const float *x, const float *w, int64_t K, int rows, float *out) {
    __m256 a[XROWS][4];
    for (int m = 0; m < rows; m++) a[m][0] = a[m][1] = a[m][2] = a[m][3] = _mm256_setzero_ps();
    int64_t k = 0;
    if (rows == 1)
        for (; k + 32 <= K; k += 32)
            for (int i = 0; i < 4; i++)
                a[0][i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * i), _mm256_loadu_ps(w + k + 8 * i), a[0][i]);
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
        for (int m = 0; m < rows; m++) {
            a[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), w0, a[m][0]);
            a[m][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k + 8), w1, a[m][1]);
        }
    }
    for (int m = 0; m < rows; m++) {
        float acc = hsum256(_mm256_add_ps(_mm256_add_ps(a[m][0], a[m][1]), _mm256_add_ps(a[m][2], a[m][3])));
        for (int64_t j = k; j < K; j++) acc += x[m * K + j] * w[j];
        out[m] = acc;
    }
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
