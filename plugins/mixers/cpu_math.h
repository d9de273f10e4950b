/* Scalar helpers shared by the decode kernels (step_cpu.c, gemv_cpu.c, block_cpu.c):
 * bfloat16 <-> float32 (round to nearest even, as torch does) and SiLU. */
#ifndef HYBRID_MLLM_CPU_MATH_H
#define HYBRID_MLLM_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { F32 = 0, BF16 = 1 };  /* dtype codes (scan_cpu.KERNEL_DTYPES) */

static inline float bf16_load(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t bf16_store(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7FFFFFFF) > 0x7F800000) return 0x7FC0;  /* NaN */
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static inline float load(const void *p, int64_t i, int32_t dtype) {
    return dtype == F32 ? ((const float *)p)[i] : bf16_load(((const uint16_t *)p)[i]);
}

static inline void store(void *p, int64_t i, float v, int32_t dtype) {
    if (dtype == F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = bf16_store(v);
}

/* v as `dtype` holds it: what torch's op in that dtype returns. */
static inline float round_to(float v, int32_t dtype) {
    return dtype == F32 ? v : bf16_load(bf16_store(v));
}

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

#endif
