/* The two halves of a decoder block, fused for a few rows of one decode step (B <= 4):
 *
 *   ffn_part:    out = x + r * ffn(RMSNorm(x)),  ffn a SwiGLU MLP, down(silu(gate(h)) * up(h)),
 *                or a mixture of SwiGLU experts: p = softmax(router h), the top-k experts of p
 *                (weights renormalised over the k when asked), y = sum_k w_k expert_k(h)
 *   mamba_part:  out = x + r * out_proj(step(in_proj(RMSNorm(x))))
 *                with step the fused Mamba-1 step of step_cpu.c (conv, x_proj, dt, scan, gate)
 *
 * x, out: (M, d_model); weights as the model holds them (float32 or bfloat16, row-major
 * (out, in)), the products through gemv_cpu.c; arithmetic in float32. Each intermediate is
 * rounded to the activations' dtype where the eager PyTorch ops round it (after each linear,
 * the norm, the SiLU, the products and the residual), so bfloat16 follows the eager path.
 */
#include "cpu_math.h"

/* gemv_cpu.c and step_cpu.c, linked into the same library */
void gemv_f32(const float *x, const float *w, const float *bias, float *y,
              int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1);
void gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
               int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1);
void mamba_step(const void *step_args, int64_t b0, int64_t b1);

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
    void *work;                    /* M d + 2 M H + 2 n_experts + 2 d + top_k float32 slots */
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

static inline void *at(const void *p, int64_t i, int32_t dtype) {
    return (char *)p + i * (dtype == F32 ? 4 : 2);
}

static void linear(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K,
                   int32_t dtype) {
    if (dtype == F32) gemv_f32(x, w, b, y, M, N, K, 0, N);
    else gemv_bf16(x, w, b, y, M, N, K, 0, N);
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

/* y (M, d) = down(silu(gate(h)) * up(h)); g, u: (M, H) scratch. */
static void swiglu(const SwiGLUWeights *e, const void *h, void *y, void *g, void *u, int64_t M, int64_t d,
                   int64_t H, int32_t dtype) {
    linear(h, e->gate, e->gate_b, g, M, H, d, dtype);
    linear(h, e->up, e->up_b, u, M, H, d, dtype);
    for (int64_t i = 0; i < M * H; i++)
        store(g, i, round_to(silu(load(g, i, dtype)), dtype) * load(u, i, dtype), dtype);
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

/* One row through the MoE: y = sum_k round(w_k) * expert_k(h), summed in float32, rounded once. */
static void moe_row(const FFNArgs *a, const void *h, void *y, float *scratch) {
    const int64_t d = a->d, H = a->H, E = a->n_experts;
    const int32_t dt = a->dtype;
    float *p = scratch, *acc = p + E, *weight = acc + d;
    void *g = weight + a->top_k, *u = at(g, H, dt), *ye = at(u, H, dt), *logits = at(ye, d, dt);
    int64_t chosen[a->top_k];
    linear(h, a->router, NULL, logits, 1, E, d, dt);
    route(a, logits, p, chosen, weight);
    for (int64_t i = 0; i < d; i++) acc[i] = 0.0f;
    for (int64_t k = 0; k < a->top_k; k++) {
        swiglu(&a->experts[chosen[k]], h, ye, g, u, 1, d, H, dt);
        const float w = round_to(weight[k], dt);
        for (int64_t i = 0; i < d; i++) acc[i] += round_to(load(ye, i, dt) * w, dt);
    }
    for (int64_t i = 0; i < d; i++) store(y, i, acc[i], dt);
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
        for (int64_t m = 0; m < M; m++) moe_row(a, at(h, m * d, dt), at(a->out, m * d, dt), rest);
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
