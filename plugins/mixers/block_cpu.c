/* The halves of a decoder block, and a stack of blocks, fused for a few rows of one decode
 * step (B <= 4):
 *
 *   ffn_part:    out = x + r * ffn(RMSNorm(x)),  ffn a SwiGLU MLP, down(silu(gate(h)) * up(h)),
 *                or a mixture of SwiGLU experts: p = softmax(router h), the top-k experts of p
 *                (weights renormalised over the k when asked), y = sum_k w_k expert_k(h)
 *   mamba_part:  out = x + r * out_proj(step(in_proj(RMSNorm(x))))
 *                with step the fused Mamba-1 step of step_cpu.c (conv, x_proj, dt, scan, gate)
 *   attention_part: out = x + r * o_proj(attend(q, K, V)), q, k, v = projections of RMSNorm(x),
 *                RoPE (half-split) on q and k at the row's position (its real tokens so far),
 *                k and v written into the cache's last position (kmask's set: a real token),
 *                each query head over its KV head's cache (GQA):
 *                softmax(q . k_s / sqrt(hd), masked by kmask) . v_s
 *   stack_step:  the layers of a model in order, each half one of the above
 *   model_step:  a model's decode step: the token's embedding, stack_step, the final RMSNorm and
 *                the LM head's logits
 *
 * x, out: (M, d_model); weights as the model holds them (float32 or bfloat16, row-major
 * (out, in)), the products through gemv_cpu.c; arithmetic in float32. Each intermediate is
 * rounded to the activations' dtype where the eager PyTorch ops round it (after each linear,
 * the norm, the SiLU, the products and the residual), so bfloat16 follows the eager path.
 */
#include "cpu_math.h"
#include "pool_cpu.h"  /* pool_cpu.c (which calls gemv_cpu.c), linked into the same library */
#include "vec_math.h"

void mamba_step(const void *step_args, int64_t b0, int64_t b1);  /* step_cpu.c, linked in too */

typedef struct {
    const void *gate, *up, *down;        /* (H, d), (H, d), (d, H) */
    const void *gate_b, *up_b, *down_b;  /* (H), (H), (d) or NULL */
} SwiGLUWeights;

typedef struct {
    const void *x;                 /* (M, d) the block's input */
    void *out;                     /* (M, d) x + r * ffn(norm(x)) */
    const void *norm_w;            /* (d) */
    const SwiGLUWeights *experts;  /* (n_experts); one for a dense MLP */
    const void *router;            /* (n_experts, d), or NULL: a dense MLP */
    void *work;                    /* M (4 d + 2 H + n_experts + top_k) + n_experts float32 slots */
    int64_t M, d, H, n_experts, top_k;
    float eps, r;
    int32_t normalize, dtype;      /* renormalise the top-k weights; dtype of x, out, weights */
} FFNArgs;

typedef struct {
    const void *x;                 /* (M, d) the block's input */
    void *out;                     /* (M, d) x + r * mamba(norm(x)) */
    const void *norm_w;            /* (d) */
    const void *in_w, *in_b;       /* (2 d_inner, d), (2 d_inner) or NULL */
    const void *out_w, *out_b;     /* (d, d_inner), (d) or NULL */
    const void *step;              /* step_cpu.c's StepArgs, its xz and y pointing at xz and y here */
    void *h;                       /* (M, d) scratch: the normed input */
    void *xz;                      /* (M, 2 d_inner): in_proj's output, the step's input */
    const void *y;                 /* (M, d_inner): the step's output */
    int64_t M, d, d_inner;
    float eps, r;
    int32_t dtype;
} MambaPartArgs;

typedef struct {
    const void *x;                 /* (M, d) the block's input */
    void *out;                     /* (M, d) x + r * attention(norm(x)) */
    const void *norm_w;            /* (d) */
    const void *q_w, *k_w, *v_w, *o_w;  /* (H hd, d), (Hkv hd, d), (Hkv hd, d), (d, H hd) */
    const void *q_b, *k_b, *v_b, *o_b;  /* biases or NULL */
    void *k_cache, *v_cache;       /* (M, Hkv, S, hd), strides cache_b, cache_h, hd, 1; [:, :, S-1] written */
    uint8_t *kmask;                /* (M, S) bool, row stride kmask_b: which positions are real tokens; [:, S-1] set */
    const float *inv_freq;         /* (rotary_dim / 2) RoPE frequencies, or NULL: no RoPE */
    void *work;                    /* M (d + (H + 2 Hkv) hd) + M H hd + M H S + LANES float32 slots */
    int64_t M, d, n_head, n_kv_head, head_dim, rotary_dim, S, cache_b, cache_h, kmask_b;
    float eps, r;
    int32_t dtype;
} AttentionPartArgs;

static inline void *at(const void *p, int64_t i, int32_t dtype) {
    return (char *)p + i * (dtype == F32 ? 4 : 2);
}

static void linear(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K,
                   int32_t dtype) {
    pooled_gemv(x, w, b, y, M, N, K, dtype);  /* gemv_cpu.c's kernels, on a second thread when set */
}

/* h = w * rms_norm(x) per row, as core.norm.RMSNorm: normalised in float32, rounded, scaled. */
static void rms_norm_rows(const void *x, const void *w, void *h, int64_t M, int64_t d, float eps, int32_t dtype) {
    for (int64_t m = 0; m < M; m++) {
        float ss = 0.0f;
        for (int64_t i = 0; i < d; i++) {
            const float v = load(x, m * d + i, dtype);
            ss += v * v;
        }
        const float scale = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; i++)
            store(h, m * d + i, load(w, i, dtype) * round_to(load(x, m * d + i, dtype) * scale, dtype), dtype);
    }
}

/* out = x + r * y elementwise (n values); out may be y. */
static void residual(const void *x, const void *y, void *out, int64_t n, float r, int32_t dtype) {
    for (int64_t i = 0; i < n; i++) {
        const float v = load(y, i, dtype);
        store(out, i, load(x, i, dtype) + (r == 1.0f ? v : round_to(v * r, dtype)), dtype);
    }
}

typedef uint16_t vh __attribute__((vector_size(2 * LANES)));  /* LANES bfloat16 values */

/* LANES values of p from i as float32 (bfloat16 is float32's top half). */
static inline vf load_lanes(const void *p, int64_t i, int32_t dtype) {
    if (dtype == F32) return vload((const float *)p + i);
    vh raw;
    memcpy(&raw, (const uint16_t *)p + i, sizeof raw);
    return (vf)(__builtin_convertvector(raw, vu) << 16);
}

/* v as `dtype` holds it, lane by lane as round_to: nearest even, NaN the quiet NaN. */
static inline vf round_lanes(vf v, int32_t dtype) {
    if (dtype == F32) return v;
    const vu bits = (vu)v;
    const vu nan = (vu)((bits & 0x7FFFFFFFu) > 0x7F800000u);
    const vu rounded = ((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16) << 16;
    return (vf)((nan & 0x7FC00000u) | (~nan & rounded));
}

static inline void store_lanes(void *p, int64_t i, vf v, int32_t dtype) {
    if (dtype == F32) {
        vstore((float *)p + i, v);
        return;
    }
    const vh out = __builtin_convertvector((vu)round_lanes(v, dtype) >> 16, vh);
    memcpy((uint16_t *)p + i, &out, sizeof out);
}

/* g = silu(g) * u over n values, each rounded where the eager ops round it; LANES at a time
 * (libm's expf does not vectorise). */
static void silu_mul(void *g, const void *u, int64_t n, int32_t dtype) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        const vf x = load_lanes(g, i, dtype);
        store_lanes(g, i, round_lanes(x * sigmoid_v(x), dtype) * load_lanes(u, i, dtype), dtype);
    }
    for (; i < n; i++) store(g, i, round_to(silu(load(g, i, dtype)), dtype) * load(u, i, dtype), dtype);
}

/* y (M, d) = down(silu(gate(h)) * up(h)); g, u: (M, H) scratch. */
static void swiglu(const SwiGLUWeights *e, const void *h, void *y, void *g, void *u, int64_t M, int64_t d,
                   int64_t H, int32_t dtype) {
    linear(h, e->gate, e->gate_b, g, M, H, d, dtype);
    linear(h, e->up, e->up_b, u, M, H, d, dtype);
    silu_mul(g, u, M * H, dtype);
    linear(g, e->down, e->down_b, y, M, d, H, dtype);
}

/* Router probabilities of one row (softmax in float32) -> its top-k experts and weights. */
static void route(const FFNArgs *a, const void *logits, float *p, int64_t *chosen, float *weight) {
    const int64_t E = a->n_experts;
    float top = -INFINITY, sum = 0.0f;
    for (int64_t e = 0; e < E; e++) top = fmaxf(top, p[e] = load(logits, e, a->dtype));
    for (int64_t e = 0; e < E; e++) sum += p[e] = expf(p[e] - top);
    for (int64_t e = 0; e < E; e++) p[e] /= sum;
    float kept = 0.0f;
    for (int64_t k = 0; k < a->top_k; k++) {  /* k passes of argmax: k and E are small */
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (p[e] >= 0.0f && (best < 0 || p[e] > p[best])) best = e;
        chosen[k] = best;
        kept += weight[k] = p[best];
        p[best] = -1.0f;  /* taken */
    }
    if (a->normalize)
        for (int64_t k = 0; k < a->top_k; k++) weight[k] /= kept;
}

/* The rows through the MoE, each expert once for all the rows routed to it (its weights read
 * once, not once per row): y[m] = sum_k round(w_mk) * expert_mk(h[m]), summed in float32 in
 * expert order (the same sums as slot order for k <= 2), rounded once. `scratch`: float slots. */
static void moe_rows(const FFNArgs *a, const void *h, void *y, float *scratch) {
    const int64_t M = a->M, d = a->d, H = a->H, E = a->n_experts, K = a->top_k;
    const int32_t dt = a->dtype;
    float *acc = scratch, *p = acc + M * d, *weight = p + E;      /* (M, d), (E), (M, K) */
    void *logits = weight + M * K, *hb = (float *)logits + M * E;  /* (M, E), (M, d) of the dtype */
    void *yb = (float *)hb + M * d, *g = (float *)yb + M * d, *u = (float *)g + M * H;
    int64_t chosen[M * K], rows[M];
    float slot_w[M];
    linear(h, a->router, NULL, logits, M, E, d, dt);
    for (int64_t m = 0; m < M; m++) route(a, at(logits, m * E, dt), p, chosen + m * K, weight + m * K);
    for (int64_t i = 0; i < M * d; i++) acc[i] = 0.0f;
    for (int64_t e = 0; e < E; e++) {
        int64_t n = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++)
                if (chosen[m * K + k] == e) {
                    rows[n] = m, slot_w[n] = round_to(weight[m * K + k], dt);
                    memcpy(at(hb, n * d, dt), at(h, m * d, dt), (size_t)d * (dt == F32 ? 4 : 2));
                    n++;
                }
        if (n == 0) continue;
        swiglu(&a->experts[e], hb, yb, g, u, n, d, H, dt);
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < d; i++)
                acc[rows[j] * d + i] += round_to(load(yb, j * d + i, dt) * slot_w[j], dt);
    }
    for (int64_t i = 0; i < M * d; i++) store(y, i, acc[i], dt);
}

void ffn_part(const FFNArgs *a) {
    const int64_t M = a->M, d = a->d;
    const int32_t dt = a->dtype;
    void *h = a->work;
    float *rest = (float *)a->work + M * d;  /* float32 slots: h takes M d of them in either dtype */
    rms_norm_rows(a->x, a->norm_w, h, M, d, a->eps, dt);
    if (a->router == NULL) {
        void *u = at(rest, M * a->H, dt);
        swiglu(&a->experts[0], h, a->out, rest, u, M, d, a->H, dt);
    } else {
        moe_rows(a, h, a->out, rest);
    }
    residual(a->x, a->out, a->out, M * d, a->r, dt);
}

void mamba_part(const MambaPartArgs *a) {
    const int64_t M = a->M, d = a->d;
    rms_norm_rows(a->x, a->norm_w, a->h, M, d, a->eps, a->dtype);
    linear(a->h, a->in_w, a->in_b, a->xz, M, 2 * a->d_inner, d, a->dtype);
    mamba_step(a->step, 0, M);
    linear(a->y, a->out_w, a->out_b, a->out, M, d, a->d_inner, a->dtype);
    residual(a->x, a->out, a->out, M * d, a->r, a->dtype);
}

/* Rotate the first rotary_dim dims of one head (half-split pairs (i, i + half)) by pos * inv_freq[i]. */
static void rope_head(void *v, int64_t off, const float *inv_freq, int64_t rotary_dim, float pos, int32_t dt) {
    const int64_t half = rotary_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float angle = pos * inv_freq[i], c = cosf(angle), s = sinf(angle);
        const float x1 = load(v, off + i, dt), x2 = load(v, off + half + i, dt);
        store(v, off + i, x1 * c - x2 * s, dt);
        store(v, off + half + i, x2 * c + x1 * s, dt);
    }
}

/* p[s] = exp(p[s] - max) / sum over s < S, masked entries (-inf) 0. */
static void softmax(float *p, int64_t S) {
    float top = -INFINITY, sum = 0.0f;
    vf tops = vsplat(-INFINITY);
    int64_t s = 0;
    for (; s + LANES <= S; s += LANES) {  /* vectors: fmaxf is a libm call here */
        const vf v = vload(p + s);
        tops = vselect(v > tops, v, tops);
    }
    for (int j = 0; j < LANES; j++) top = tops[j] > top ? tops[j] : top;
    for (; s < S; s++) top = p[s] > top ? p[s] : top;
    s = 0;
    for (; s + LANES <= S; s += LANES) {  /* vectors: libm's expf does not vectorise */
        vf e = exp2_v((vload(p + s) - top) * LOG2E);
        e = vselect(vload(p + s) == -INFINITY, vsplat(0.0f), e);
        vstore(p + s, e);
        sum += vsum(e);
    }
    for (; s < S; s++) sum += p[s] = expf(p[s] - top);
    const float inv = 1.0f / sum;
    for (s = 0; s < S; s++) p[s] *= inv;
}

/* n (<= LANES) values of a KV row as float32 lanes, the rest 0 (the cache's room past the
 * filled positions is uninitialised: never read it, even to multiply by 0). */
static inline vf kv_lanes(const void *p, int64_t i, int64_t n, int32_t dtype) {
    if (n == LANES) return load_lanes(p, i, dtype);
    float f[LANES] = {0};
    if (dtype == F32) memcpy(f, (const float *)p + i, (size_t)n * 4);
    else for (int64_t j = 0; j < n; j++) f[j] = bf16_load(((const uint16_t *)p)[i + j]);
    return vload(f);
}

/* Values of a head's slice from dim i: LANES, fewer in a partial last one (`full`: hd a
 * multiple of LANES, none partial; a constant where it is inlined). */
static inline int64_t slice_lanes(int64_t hd, int64_t i, const int full) {
    return full || hd - i >= LANES ? LANES : hd - i;
}

#define VBLOCK 64  /* positions per block of the value pass: 16 KiB of float32 values at head size 64,
                      read from L1 by every sweep after the first */

/* Vector registers the loops below fill: AVX512 has 32, AVX2 16. VALUE_REGS: value sums
 * (heads x LANES-wide slices of hd) kept in registers in one sweep of V; SCORE_HEADS: query
 * heads whose scores of LANES positions are summed side by side (LANES vectors each) per
 * read of those positions' keys (with fewer registers one head at a time, the keys read
 * again from L1 for the next head). */
#if LANES == 16
#define VALUE_REGS 16
#define SCORE_HEADS G
#else
#define VALUE_REGS 8
#define SCORE_HEADS 1
#endif

/* n values of a cache (float32 or bfloat16) from i into dst as float32: a block that several
 * sweeps read, converted once. */
static void cache_to_f32(const void *src, int64_t i, int64_t n, int32_t dtype, float *dst) {
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) vstore(dst + j, load_lanes(src, i + j, dtype));
    for (; j < n; j++) dst[j] = load(src, i + j, dtype);
}

/* acc's slices c0 .. c0 + nc - 1 of heads h0 .. h0 + nh - 1 of a group (the layout of
 * attend_group_n) += the sum over positions s0 .. s1 - 1 of p[h, s] v_s (acc 0 before s0 = 0),
 * nh x nc vectors in registers (out[h * width + c]); v_s at v + vbase + s hd, of vdt. */
static inline __attribute__((always_inline))
void value_sums(const AttentionPartArgs *a, const void *v, int64_t vbase, int32_t vdt, const float *p, int64_t s0,
                int64_t s1, int64_t h0, int64_t c0, const int64_t nh, const int64_t nc, const int64_t width,
                int64_t qpad, float *acc, const int full) {
    const int64_t hd = a->head_dim, S = a->S;
    vf out[VALUE_REGS];
    for (int64_t h = 0; h < nh; h++)
        for (int64_t c = 0; c < nc; c++)
            out[h * width + c] = s0 ? vload(acc + (h0 + h) * qpad + (c0 + c) * LANES) : vsplat(0.0f);
    for (int64_t s = s0; s < s1; s++)
        for (int64_t c = 0; c < nc; c++) {
            const int64_t i = (c0 + c) * LANES;
            const vf vs = kv_lanes(v, vbase + s * hd + i, slice_lanes(hd, i, full), vdt);
            for (int64_t h = 0; h < nh; h++) out[h * width + c] += p[(h0 + h) * S + s] * vs;
        }
    for (int64_t h = 0; h < nh; h++)
        for (int64_t c = 0; c < nc; c++) vstore(acc + (h0 + h) * qpad + (c0 + c) * LANES, out[h * width + c]);
}

/* The G query heads sharing one KV head (GQA), row b, over its S cached positions: each
 * k_s and v_s is read once for all G heads (the cache is the traffic at long contexts).
 * Scores: LANES positions at a time, their lane-wise products transposed and summed together
 * (sum_rows) instead of one horizontal sum per position, SCORE_HEADS heads per read of the
 * keys. q: (G, qpad) float32, zero-padded past hd; p: (G, S) scratch; acc: (G, qpad)
 * float32 out (the heads' outputs); chunks: the LANES-wide slices of a head; full: hd a
 * multiple of LANES. G, chunks and full are constants where `attend_group` inlines it. */
static inline __attribute__((always_inline))
void attend_group_n(const AttentionPartArgs *a, int64_t b, int64_t base, const int64_t G, const float *q,
                    int64_t qpad, float *p, float *acc, const int64_t chunks, const int full) {
    const int64_t hd = a->head_dim, S = a->S;
    const float scale = 1.0f / sqrtf((float)hd);
    /* bfloat16 keys and values that several sweeps read: each block converted once, into buf */
    const int kdirect = a->dtype == F32 || SCORE_HEADS >= G;
    float buf[(VBLOCK > LANES ? VBLOCK : LANES) * hd];
    vf kv[chunks];
    int64_t s0 = 0;
    for (; s0 + LANES <= S; s0 += LANES) {
        if (!kdirect) cache_to_f32(a->k_cache, base + s0 * hd, LANES * hd, a->dtype, buf);
        const void *k = kdirect ? a->k_cache : buf;
        const int64_t kbase = kdirect ? base + s0 * hd : 0;
        for (int64_t h0 = 0; h0 < G; h0 += SCORE_HEADS) {
            vf part[SCORE_HEADS][LANES];
            for (int j = 0; j < LANES; j++) {
                for (int64_t c = 0; c < chunks; c++) {
                    const int64_t i = c * LANES;
                    kv[c] = kv_lanes(k, kbase + j * hd + i, slice_lanes(hd, i, full), kdirect ? a->dtype : F32);
                }
                for (int64_t h = 0; h < SCORE_HEADS; h++) {
                    vf sum = vsplat(0.0f);
                    for (int64_t c = 0; c < chunks; c++) sum += vload(q + (h0 + h) * qpad + c * LANES) * kv[c];
                    part[h][j] = sum;
                }
            }
            for (int64_t h = 0; h < SCORE_HEADS; h++) vstore(p + (h0 + h) * S + s0, sum_rows(part[h]) * scale);
        }
    }
    for (; s0 < S; s0++)
        for (int64_t h = 0; h < G; h++) {
            float dot = 0.0f;
            for (int64_t i = 0; i < hd; i++) dot += q[h * qpad + i] * load(a->k_cache, base + s0 * hd + i, a->dtype);
            p[h * S + s0] = dot * scale;
        }
    for (int64_t h = 0; h < G; h++) {
        for (int64_t s = 0; s < S; s++)
            if (!a->kmask[b * a->kmask_b + s]) p[h * S + s] = -INFINITY;
        softmax(p + h * S, S);
    }
    /* Values: `per` heads' sums over `width` slices at once in registers (with 32 registers
     * every slice of the group's heads for the usual sizes), VBLOCK positions at a time so
     * that the block's values are read from cache by every sweep after the first; each sum
     * over the positions in order, as one head and slice at a time would sum it. Full blocks
     * with constant sizes, so that the sums stay in registers. */
    const int64_t width = chunks < VALUE_REGS ? chunks : VALUE_REGS;
    const int64_t per = VALUE_REGS / width < G ? VALUE_REGS / width : G;  /* heads per sweep */
    const int vdirect = a->dtype == F32 || (per >= G && width >= chunks);  /* one sweep: read V as it is */
    for (int64_t s0 = 0; s0 < S; s0 += VBLOCK) {
        const int64_t s1 = S - s0 < VBLOCK ? S : s0 + VBLOCK;
        if (!vdirect) cache_to_f32(a->v_cache, base + s0 * hd, (s1 - s0) * hd, a->dtype, buf);
        const void *v = vdirect ? a->v_cache : buf;
        const int64_t vbase = vdirect ? base : -s0 * hd;
        const int32_t vdt = vdirect ? a->dtype : F32;
        for (int64_t h0 = 0; h0 < G; h0 += per)
            for (int64_t c0 = 0; c0 < chunks; c0 += width) {
                if (G - h0 >= per && chunks - c0 >= width)
                    value_sums(a, v, vbase, vdt, p, s0, s1, h0, c0, per, width, width, qpad, acc, full);
                else value_sums(a, v, vbase, vdt, p, s0, s1, h0, c0, G - h0 < per ? G - h0 : per,
                                chunks - c0 < width ? chunks - c0 : width, width, qpad, acc, full);
            }
    }
}

/* attend_group_n with the group's heads and a head's LANES-wide slices constants for the
 * usual sizes (1-8 heads, head sizes 16-128 with 16 lanes, 8-128 with 8), so that the loops
 * over them unroll and the sums stay in registers. */
#define ATTEND_SLICES(G)                                                                     \
    switch (qpad / LANES) {                                                                  \
        case 1: attend_group_n(a, b, base, G, q, qpad, p, acc, 1, 1); return;               \
        case 2: attend_group_n(a, b, base, G, q, qpad, p, acc, 2, 1); return;               \
        case 4: attend_group_n(a, b, base, G, q, qpad, p, acc, 4, 1); return;               \
        case 8: attend_group_n(a, b, base, G, q, qpad, p, acc, 8, 1); return;               \
        case 16: attend_group_n(a, b, base, G, q, qpad, p, acc, 16, 1); return;             \
        default: attend_group_n(a, b, base, G, q, qpad, p, acc, qpad / LANES, 1); return;   \
    }

static void attend_group(const AttentionPartArgs *a, int64_t b, int64_t base, int64_t G, const float *q,
                         int64_t qpad, float *p, float *acc) {
    if (a->head_dim % LANES) {  /* a partial last slice: read lane by lane */
        attend_group_n(a, b, base, G, q, qpad, p, acc, qpad / LANES, 0);
        return;
    }
    switch (G) {
        case 1: ATTEND_SLICES(1)
        case 2: ATTEND_SLICES(2)
        case 4: ATTEND_SLICES(4)
        case 8: ATTEND_SLICES(8)
        default: attend_group_n(a, b, base, G, q, qpad, p, acc, qpad / LANES, 1);
    }
}

typedef struct {
    const AttentionPartArgs *a;
    const void *q;                 /* (M, H hd) the queries, RoPE applied */
    void *y;                       /* (M, H hd) the heads' outputs */
    float *p;                      /* (M G, H / G, S) scores: each unit its own */
} AttendJob;

/* Units u0 .. u1 - 1 of the M G (row, KV head) pairs, each the query heads of its KV head over
 * the row's cache; the units are independent, so pool_cpu.c shares them between two threads. */
static void attend_units(const void *job, int64_t u0, int64_t u1) {
    const AttendJob *j = job;
    const AttentionPartArgs *a = j->a;
    const int64_t G = a->n_kv_head, hd = a->head_dim, group = a->n_head / G, qn = a->n_head * hd;
    const int64_t qpad = (hd + LANES - 1) / LANES * LANES;
    const int32_t dt = a->dtype;
    float qf[group * qpad], acc[group * qpad];
    for (int64_t u = u0; u < u1; u++) {
        const int64_t b = u / G, g = u % G, first = b * qn + g * group * hd;  /* query heads g group .. */
        for (int64_t h = 0; h < group; h++)
            for (int64_t i = 0; i < qpad; i++) qf[h * qpad + i] = i < hd ? load(j->q, first + h * hd + i, dt) : 0.0f;
        attend_group(a, b, b * a->cache_b + g * a->cache_h, group, qf, qpad, j->p + u * group * a->S, acc);
        for (int64_t h = 0; h < group; h++)
            for (int64_t i = 0; i < hd; i++) store(j->y, first + h * hd + i, acc[h * qpad + i], dt);
    }
}

void attention_part(const AttentionPartArgs *a) {
    const int64_t M = a->M, d = a->d, H = a->n_head, G = a->n_kv_head, hd = a->head_dim, S = a->S;
    const int32_t dt = a->dtype;
    const int64_t qn = H * hd, kn = G * hd;
    float *slots = a->work;
    void *h = slots, *q = slots + M * d, *k = slots + M * (d + qn), *v = slots + M * (d + qn + kn);
    void *y = slots + M * (d + qn + 2 * kn);
    float *p = slots + M * (d + qn + 2 * kn) + M * qn;
    rms_norm_rows(a->x, a->norm_w, h, M, d, a->eps, dt);
    linear(h, a->q_w, a->q_b, q, M, qn, d, dt);
    linear(h, a->k_w, a->k_b, k, M, kn, d, dt);
    linear(h, a->v_w, a->v_b, v, M, kn, d, dt);
    for (int64_t b = 0; b < M; b++) {
        if (a->inv_freq) {
            int64_t pos = 0;  /* real tokens before this one: left padding does not shift positions */
            for (int64_t s = 0; s < S - 1; s++) pos += a->kmask[b * a->kmask_b + s] != 0;
            for (int64_t i = 0; i < H; i++) rope_head(q, b * qn + i * hd, a->inv_freq, a->rotary_dim, (float)pos, dt);
            for (int64_t i = 0; i < G; i++) rope_head(k, b * kn + i * hd, a->inv_freq, a->rotary_dim, (float)pos, dt);
        }
        a->kmask[b * a->kmask_b + S - 1] = 1;
        for (int64_t g = 0; g < G; g++)
            for (int64_t i = 0; i < hd; i++) {
                const int64_t cell = b * a->cache_b + g * a->cache_h + (S - 1) * hd + i;
                store(a->k_cache, cell, load(k, b * kn + g * hd + i, dt), dt);
                store(a->v_cache, cell, load(v, b * kn + g * hd + i, dt), dt);
            }
    }
    const AttendJob job = {a, q, y, p};
    pooled_for(attend_units, &job, M * G, 1);
    linear(y, a->o_w, a->o_b, a->out, M, d, qn, dt);
    residual(a->x, a->out, a->out, M * d, a->r, dt);
}

enum { NO_MIXER = 0, MAMBA = 1, ATTENTION = 2 };

typedef struct {
    int32_t mixer;                 /* NO_MIXER, MAMBA (MambaPartArgs) or ATTENTION (AttentionPartArgs) */
    int32_t ffn;                   /* 0 or 1 (FFNArgs) */
    const void *mixer_args, *ffn_args;
} LayerArgs;

/* The layers in order, each half's output the next one's input (the caller chains the pointers). */
void stack_step(const LayerArgs *layers, int64_t n_layers) {
    for (int64_t i = 0; i < n_layers; i++) {
        const LayerArgs *l = &layers[i];
        if (l->mixer == MAMBA) mamba_part(l->mixer_args);
        else if (l->mixer == ATTENTION) attention_part(l->mixer_args);
        if (l->ffn) ffn_part(l->ffn_args);
    }
}

typedef struct {
    const int64_t *ids;            /* (M) the tokens */
    const void *embed;             /* (n_embed, d) the embedding table */
    void *x;                       /* (M, d) their embeddings: the first half's input */
    const LayerArgs *layers;       /* n_layers, chained from x to `last` */
    const void *last;              /* (M, d) the last half's output */
    const void *norm_w;            /* (d) the final norm's */
    void *h;                       /* (M, d) scratch: the normed output */
    const void *head;              /* (vocab, d) the LM head */
    void *logits;                  /* (M, vocab) */
    int64_t n_layers, M, d, n_embed, vocab;
    float embed_scale, eps, logits_scale;  /* ScaledEmbedding's multiplier, the norm's eps, HybridLM's */
    int32_t dtype;
} ModelArgs;

/* x * scale per value (n of them), rounded as the eager `tensor * multiplier`; in place. */
static void scale_values(void *x, int64_t n, float scale, int32_t dtype) {
    if (scale != 1.0f)
        for (int64_t i = 0; i < n; i++) store(x, i, round_to(load(x, i, dtype) * scale, dtype), dtype);
}

/* One decode step of a HybridLM: logits = head(norm(stack(embed[ids] * embed_scale))) *
 * logits_scale, as its forward computes them. Returns -1, or the first row whose id is not in
 * [0, n_embed) (then nothing ran). */
int64_t model_step(const ModelArgs *a) {
    const int64_t d = a->d, size = a->dtype == F32 ? 4 : 2;
    for (int64_t m = 0; m < a->M; m++)
        if (a->ids[m] < 0 || a->ids[m] >= a->n_embed) return m;
    for (int64_t m = 0; m < a->M; m++)
        memcpy((char *)a->x + m * d * size, (const char *)a->embed + a->ids[m] * d * size, d * size);
    scale_values(a->x, a->M * d, a->embed_scale, a->dtype);
    stack_step(a->layers, a->n_layers);
    rms_norm_rows(a->last, a->norm_w, a->h, a->M, d, a->eps, a->dtype);
    linear(a->h, a->head, NULL, a->logits, a->M, a->vocab, d, a->dtype);
    scale_values(a->logits, a->M * a->vocab, a->logits_scale, a->dtype);
    return -1;
}
