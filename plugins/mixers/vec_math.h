/* float32 vectors (GCC vector extensions, also understood by clang) and the vector math of
 * the CPU kernels: exp2, log on [1, 2], exp(-|x|), softplus and sigmoid written out (range
 * reduction + polynomial, bit tricks on the float representation), because libm's scalar
 * calls do not vectorise. Shared by scan_cpu.c, step_cpu.c, ssd_cpu.c and block_cpu.c. */
#ifndef HYBRID_MLLM_VEC_MATH_H
#define HYBRID_MLLM_VEC_MATH_H

#include <stdint.h>
#include <string.h>

#ifdef __AVX512F__
#define LANES 16           /* floats per vector: one AVX512 register */
#else
#define LANES 8            /* one AVX2 register (or two SSE / NEON ones) */
#endif
#define LOG2E 1.44269504088896341f

/* ---- vectors ----------------------------------------------------------------------------- */

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef uint32_t vu __attribute__((vector_size(4 * LANES)));

#ifdef __clang__
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vsplat(float s) { return (vf){0} + s; }
static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vu)mask & (vu)a) | (~(vu)mask & (vu)b)); }

/* The sum of v's elements. */
static inline float vsum(vf v)
{
#if LANES == 16
    v += SHUFFLE(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    v += SHUFFLE(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    v += SHUFFLE(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
#else
    v += SHUFFLE(v, v, 4, 5, 6, 7, 4, 5, 6, 7);
    v += SHUFFLE(v, v, 2, 3, 2, 3, 2, 3, 2, 3);
#endif
    return v[0] + v[1];
}

/* Element i is the sum of p[i]'s elements: a transpose-and-add tree, 45 vector operations
 * for 16 sums (21 for 8) where one vsum each would take ~8 (~6) operations per sum. */
static inline vf sum_rows(const vf p[LANES])
{
#if LANES == 16
    vf q[8], r[4], s[2];
    for (int i = 0; i < 8; i++)
        q[i] = SHUFFLE(p[2 * i], p[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
             + SHUFFLE(p[2 * i], p[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        r[i] = SHUFFLE(q[2 * i], q[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
             + SHUFFLE(q[2 * i], q[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        s[i] = SHUFFLE(r[2 * i], r[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
             + SHUFFLE(r[2 * i], r[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return SHUFFLE(s[0], s[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + SHUFFLE(s[0], s[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#else
    vf q[4], r[2];
    for (int i = 0; i < 4; i++)
        q[i] = SHUFFLE(p[2 * i], p[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11)
             + SHUFFLE(p[2 * i], p[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int i = 0; i < 2; i++)
        r[i] = SHUFFLE(q[2 * i], q[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13)
             + SHUFFLE(q[2 * i], q[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    return SHUFFLE(r[0], r[1], 0, 2, 4, 6, 8, 10, 12, 14) + SHUFFLE(r[0], r[1], 1, 3, 5, 7, 9, 11, 13, 15);
#endif
}

/* ---- float32 math -------------------------------------------------------------------------- */

/* 2^t to about 1 ulp: t = k + f, |f| <= 1/2, 2^f by a degree-6 polynomial (fitted for
 * relative error, 2e-9 before rounding), 2^k through the exponent bits. t is clamped to
 * [-125, 127] so the exponent stays normal: below, the result is 2^-125 instead of tinier
 * (or denormal) values; above, it saturates at 2^127 instead of inf. NaN propagates: it
 * fails both comparisons of the clamps. */
static inline vf exp2_v(vf t)
{
    const float magic = 12582912.0f;     /* 1.5 * 2^23: adding it rounds to an integer */
    t = vselect(t < -125.0f, vsplat(-125.0f), t);
    t = vselect(t > 127.0f, vsplat(127.0f), t);
    const vf shifted = t + magic;
    const vf f = t - (shifted - magic);
    const vu scale_bits = ((vu)shifted - (vu)vsplat(magic) + 127u) << 23;
    vf p = vsplat(1.5353360504377633e-4f);
    p = p * f + 1.3398875016719103e-3f;
    p = p * f + 9.6184369176626205e-3f;
    p = p * f + 5.5503323674201965e-2f;
    p = p * f + 2.4022647738456726e-1f;
    p = p * f + 6.9314718246459961e-1f;
    p = p * f + 1.0f;
    return p * (vf)scale_bits;
}

/* log(v) for v in [1, 2] (Cephes logf): v = m 2^e with m in [sqrt(1/2), sqrt(2)). */
static inline vf log_1_2(vf v)
{
    const vi big = v > 1.41421356237f;
    const vf e = vselect(big, vsplat(1.0f), vsplat(0.0f));
    const vf x = vselect(big, 0.5f * v, v) - 1.0f;
    const vf z = x * x;
    vf p = vsplat(7.0376836292e-2f);
    p = p * x - 1.1514610310e-1f;
    p = p * x + 1.1676998740e-1f;
    p = p * x - 1.2420140846e-1f;
    p = p * x + 1.4249322787e-1f;
    p = p * x - 1.6668057665e-1f;
    p = p * x + 2.0000714765e-1f;
    p = p * x - 2.4999993993e-1f;
    p = p * x + 3.3333331174e-1f;
    return x + (p * x * z + e * -2.12194440e-4f - 0.5f * z) + e * 0.693359375f;
}

/* exp(-|x|), in (0, 1]: never overflows. */
static inline vf exp_minus_abs(vf x) { return exp2_v((vf)((vu)x | 0x80000000u) * LOG2E); }

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(w) = log(1 + w) * w / ((1 + w) - 1)
 * keeps full precision for tiny w (Goldberg), because (1 + w) - 1 is exact. */
static inline vf softplus_v(vf x)
{
    const vf w = exp_minus_abs(x);
    const vf v = 1.0f + w;
    const vf dv = v - 1.0f;
    const vf log1p_w = vselect(dv == 0.0f, w, log_1_2(v) * (w / dv));
    return vselect(x > 0.0f, x, vsplat(0.0f)) + log1p_w;
}

static inline vf sigmoid_v(vf x)
{
    const vf w = exp_minus_abs(x);
    const vf s = 1.0f / (1.0f + w);
    return vselect(x >= 0.0f, s, w * s);
}

#endif
