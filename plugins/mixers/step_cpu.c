/* One Mamba-1 decode step for one token, fused: everything between in_proj and out_proj.
 *
 * Per batch row b, with x, z = xz[b, :d_inner], xz[b, d_inner:]:
 *   conv:   xc[d] = silu(bias[d] + sum_k<K-1 conv_state[b,d,k] w[d,k] + x[d] w[d,K-1]);
 *           new_conv_state[b,d] = (conv_state[b,d,1:], x[d])
 *   x_proj: (dt_in, B, C) = W_x xc            (R + 2N outputs; optional RMSNorms on each)
 *   dt:     dt[d] = softplus(W_dt[d] . dt_in + dt_bias[d])
 *   scan:   h[d,n] = exp(dt[d] A[d,n]) h[d,n] + dt[d] B[n] xc[d];  y[d] = C . h[d] + D[d] xc[d]
 *   gate:   y[d] *= silu(z[d])
 * as selective_state_update does in mamba-ssm, with the conv and the projections' epilogue
 * folded in. Activations (xz, conv state, y) are float32 or bfloat16; weights arrive as
 * float32 copies; the SSM state and all arithmetic are float32.
 */
#include "cpu_math.h"
#include "pool_cpu.h"
#include "vec_math.h"

/* pool_cpu.c's parallel for and product, where it is linked into the same library
 * (block_cpu's); absent (NULL) in this file's own library, whose caller splits the batch over
 * threads instead. */
#pragma weak pooled_for
#pragma weak pooled_gemv
#define SCAN_CHUNK 256  /* channels per claim of pooled_for (a multiple of LANES): two claims at d_inner 512 */

typedef struct {
    const void *xz;            /* (batch, 2 * d_inner), row stride xz_stride */
    const void *conv_state;    /* (batch, d_inner, d_conv - 1), contiguous */
    void *new_conv_state;      /* same shape */
    const float *ssm_state;    /* (batch, d_inner, d_state), contiguous */
    float *new_ssm_state;      /* same shape */
    void *y;                   /* (batch, d_inner), contiguous */
    const float *conv_w;       /* (d_inner, d_conv) */
    const float *conv_b;       /* (d_inner) or NULL */
    const float *x_proj_w;     /* (dt_rank + 2 d_state, d_inner) */
    const float *dt_norm_w;    /* (dt_rank) or NULL: no inner norms */
    const float *B_norm_w;     /* (d_state) */
    const float *C_norm_w;     /* (d_state) */
    const float *dt_proj_w;    /* (d_inner, dt_rank) */
    const float *dt_bias;      /* (d_inner) */
    const float *A;            /* (d_inner, d_state), A = -exp(A_log) */
    const float *D;            /* (d_inner) */
    float *work;               /* (batch, d_inner + dt_rank + 2 d_state) scratch */
    int64_t xz_stride, batch, d_inner, d_conv, dt_rank, d_state;
    float norm_eps;
    int32_t dtype;             /* of xz, the conv state and y */
} StepArgs;

static inline float softplus(float v) { return fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v))); }

static void rms_norm(float *v, const float *w, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += v[i] * v[i];
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) v[i] = v[i] * scale * w[i];
}

/* v = v sigmoid(v) over n floats, LANES at a time (libm's expf does not vectorise). */
static void silu_inplace(float *v, int64_t n) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        const vf x = vload(v + i);
        vstore(v + i, x * sigmoid_v(x));
    }
    for (; i < n; i++) v[i] = silu(v[i]);
}

/* conv + SiLU of one row into xc (d_inner floats); shifts the conv state. */
static void conv_row(const StepArgs *a, int64_t b, float *xc) {
    const int64_t K = a->d_conv, S = K - 1, D = a->d_inner;
    for (int64_t d = 0; d < D; d++) {
        const float x = load(a->xz, b * a->xz_stride + d, a->dtype);
        const float *w = a->conv_w + d * K;
        const int64_t base = (b * D + d) * S;
        float acc = a->conv_b ? a->conv_b[d] : 0.0f;
        for (int64_t k = 0; k < S; k++) {
            const float past = load(a->conv_state, base + k, a->dtype);
            acc += past * w[k];
            if (k > 0) store(a->new_conv_state, base + k - 1, past, a->dtype);
        }
        acc += x * w[S];
        if (S > 0) store(a->new_conv_state, base + S - 1, x, a->dtype);
        xc[d] = acc;
    }
    silu_inplace(xc, D);
}

/* (dt_in, B, C) = W_x xc, then the optional RMSNorms. */
static void x_proj_row(const StepArgs *a, const float *xc, float *dbc) {
    const int64_t D = a->d_inner, R = a->dt_rank, N = a->d_state;
    if (pooled_gemv) pooled_gemv(xc, a->x_proj_w, NULL, dbc, 1, R + 2 * N, D, F32);  /* both threads */
    else
        for (int64_t j = 0; j < R + 2 * N; j++) {
            const float *w = a->x_proj_w + j * D;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t d = 0; d < D; d++) acc += w[d] * xc[d];
            dbc[j] = acc;
        }
    if (a->dt_norm_w) {
        rms_norm(dbc, a->dt_norm_w, R, a->norm_eps);
        rms_norm(dbc + R, a->B_norm_w, N, a->norm_eps);
        rms_norm(dbc + R + N, a->C_norm_w, N, a->norm_eps);
    }
}

/* h = exp(dt A) h0 + dtx B over the N state entries of one channel -> C . h. */
static float update_channel(const float *h0, const float *A, const float *Bv, const float *Cv, float *h,
                            int64_t N, float dt, float dtx) {
    if (N % LANES == 0) {  /* vectors: libm's scalar expf was most of a step */
        vf acc = vsplat(0.0f);
        for (int64_t n = 0; n < N; n += LANES) {
            const vf hn = exp2_v(vload(A + n) * (dt * LOG2E)) * vload(h0 + n) + dtx * vload(Bv + n);
            vstore(h + n, hn);
            acc += vload(Cv + n) * hn;
        }
        return vsum(acc);
    }
    float y = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        const float hn = expf(dt * A[n]) * h0[n] + dtx * Bv[n];
        h[n] = hn;
        y += Cv[n] * hn;
    }
    return y;
}

/* dt_proj, softplus, the state update, D skip and the gate of channels c0 .. c1 - 1 of one row
 * (c0 a multiple of LANES), LANES channels at a time so that softplus and the gate's SiLU run in
 * vectors. */
static void scan_channels(const StepArgs *a, int64_t b, const float *xc, const float *dbc, int64_t c0, int64_t c1) {
    const int64_t D = a->d_inner, R = a->dt_rank, N = a->d_state;
    const float *Bv = dbc + R, *Cv = dbc + R + N;
    float dt[LANES], gate[LANES];
    for (int64_t d0 = c0; d0 < c1; d0 += LANES) {
        const int64_t n = c1 - d0 < LANES ? c1 - d0 : LANES;
        for (int64_t i = 0; i < n; i++) {
            const float *wd = a->dt_proj_w + (d0 + i) * R;
            float v = 0.0f;
#pragma omp simd reduction(+ : v)
            for (int64_t r = 0; r < R; r++) v += wd[r] * dbc[r];
            dt[i] = v + a->dt_bias[d0 + i];
            gate[i] = load(a->xz, b * a->xz_stride + D + d0 + i, a->dtype);
        }
        if (n == LANES) {
            vstore(dt, softplus_v(vload(dt)));
            const vf z = vload(gate);
            vstore(gate, z * sigmoid_v(z));
        } else {
            for (int64_t i = 0; i < n; i++) dt[i] = softplus(dt[i]), gate[i] = silu(gate[i]);
        }
        for (int64_t i = 0; i < n; i++) {
            const int64_t d = d0 + i, row = (b * D + d) * N;
            float y = update_channel(a->ssm_state + row, a->A + d * N, Bv, Cv, a->new_ssm_state + row, N, dt[i],
                                     dt[i] * xc[d]);
            y += a->D[d] * xc[d];
            store(a->y, b * D + d, y * gate[i], a->dtype);
        }
    }
}

typedef struct {
    const StepArgs *a;
    int64_t b;
    const float *xc, *dbc;
} ScanRow;

static void scan_range(const void *row, int64_t c0, int64_t c1) {
    const ScanRow *r = row;
    scan_channels(r->a, r->b, r->xc, r->dbc, c0, c1);
}

/* Rows b0 .. b1 - 1 of the batch (threads take disjoint ranges); in block_cpu's library each
 * row's channels are shared with pool_cpu.c's worker. */
void mamba_step(const StepArgs *a, int64_t b0, int64_t b1) {
    const int64_t width = a->d_inner + a->dt_rank + 2 * a->d_state;
    for (int64_t b = b0; b < b1; b++) {
        float *xc = a->work + b * width, *dbc = xc + a->d_inner;
        conv_row(a, b, xc);
        x_proj_row(a, xc, dbc);
        const ScanRow row = {a, b, xc, dbc};
        if (pooled_for) pooled_for(scan_range, &row, a->d_inner, SCAN_CHUNK);
        else scan_range(&row, 0, a->d_inner);
    }
}
