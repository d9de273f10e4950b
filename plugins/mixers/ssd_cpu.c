/* Fused SSD scan (Mamba-2) for CPUs: forward and exact backward.
 *
 *     h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (per head: h is headdim x d_state)
 *     y_t = h_t C_t + D x_t
 *
 * Built by ssd_cpu.py with the system C compiler (the build machinery of scan_cpu.py) and
 * loaded with ctypes. Python threads call it on disjoint units of work, so there is no
 * threading here. Inputs arrive as contiguous float32; headdim is padded to a multiple of
 * LANES by Python. A unit of the forward is one (batch, head, group of up to GROUP_V vectors
 * of headdim). Its state is kept transposed, h[n][p], so that the work per state entry n is
 * a few vector multiply-adds over p with the scalars B_t[n], C_t[n]: the outputs y_t[p]
 * accumulate in registers and no horizontal sum is needed.
 *
 * The backward recomputes instead of storing: a first forward pass keeps the state at the
 * start of every BLOCK steps, then blocks are taken last to first, each one's states
 * recomputed from its checkpoint into a buffer and swept backwards with the adjoint
 * g_t = dL/dh_t. Every sum is taken in a fixed order, so gradients are deterministic.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec_math.h"  /* vf, LANES, vload / vstore, vsum, sum_rows */

#define GROUP_V 4          /* vectors of headdim a unit walks together (64 floats) */
#define BLOCK 32           /* time steps per checkpoint of the backward, a multiple of TSTEP */
#ifndef TSTEP
#define TSTEP 2            /* time steps of the forward per pass over the state */
#endif

typedef struct {
    const float *x;            /* (batch, L, H, P) */
    const float *dt;           /* (batch, L, H) */
    const float *A;            /* (H,) */
    const float *B, *C;        /* (batch, L, G, N) */
    const float *D;            /* (H,) or NULL */
    const float *state;        /* (batch, H, N, P) state before the first step (transposed), or NULL */
    float *y;                  /* (batch, L, H, P) out; unused by the backward */
    float *last_state;         /* (batch, H, N, P) out; unused by the backward */
    int64_t batch, len, nheads, headdim, ngroups, nstate;
} ssd_args;

typedef struct {
    ssd_args fwd;
    const float *dy;           /* (batch, L, H, P) */
    const float *dlast_state;  /* (batch, H, N, P) or NULL */
    float *dx;                 /* (batch, L, H, P) */
    float *ddt;                /* (batch, L, H), zeroed by the caller */
    float *dA, *dD;            /* (batch, H), zeroed by the caller */
    float *dstate;             /* (batch, H, N, P) */
    float *dB, *dC;            /* (batch, parts, L, G, N), zeroed: part k sums its heads */
    int64_t parts;             /* head ranges per (batch, group) */
} ssd_grad_args;

int ssd_lanes(void) { return LANES; }

typedef struct { int64_t b, h, p0; } unit_t;

/* Offsets of token t of unit u. */
#define XOFF(a, u, t) ((((u).b * (a)->len + (t)) * (a)->nheads + (u).h) * (a)->headdim + (u).p0)
#define TOFF(a, u, t) (((u).b * (a)->len + (t)) * (a)->nheads + (u).h)
#define BOFF(a, u, t) ((((u).b * (a)->len + (t)) * (a)->ngroups + (u).h / ((a)->nheads / (a)->ngroups)) * (a)->nstate)
#define SOFF(a, u) (((u).b * (a)->nheads + (u).h) * (a)->nstate * (a)->headdim + (u).p0)

/* Steps t .. t + T - 1 of the recurrence on unit u's state: from `from` to h (N rows of nv
 * vectors, row stride hs; `from` may be h). The state is read and written once per T steps;
 * the states in between stay in registers. With write_y, y_t = h_t C_t + D x_t of each step
 * goes to a->y. */
static inline __attribute__((always_inline)) void steps(const ssd_args *a, unit_t u, int64_t t, const float *from,
                                                        float *h, int64_t hs, const int T, const int write_y,
                                                        const int nv)
{
    vf cx[TSTEP][GROUP_V], acc[TSTEP][GROUP_V];
    float decay[TSTEP];
    const float *Bt[TSTEP], *Ct[TSTEP];
    for (int k = 0; k < T; k++) {
        const float dtt = a->dt[TOFF(a, u, t + k)];
        const float *xt = a->x + XOFF(a, u, t + k);
        decay[k] = expf(dtt * a->A[u.h]);
        Bt[k] = a->B + BOFF(a, u, t + k);
        Ct[k] = a->C + BOFF(a, u, t + k);
        for (int i = 0; i < nv; i++) {
            cx[k][i] = vload(xt + i * LANES) * dtt;
            acc[k][i] = (vf){0};
        }
    }
    for (int64_t n = 0; n < a->nstate; n++) {
        float *hn = h + n * hs;
        for (int i = 0; i < nv; i++) {
            vf hv = vload(from + n * hs + i * LANES);
            for (int k = 0; k < T; k++) {
                hv = hv * decay[k] + cx[k][i] * Bt[k][n];
                if (write_y)
                    acc[k][i] += hv * Ct[k][n];
            }
            vstore(hn + i * LANES, hv);
        }
    }
    if (!write_y)
        return;
    const float D = a->D ? a->D[u.h] : 0.0f;
    for (int k = 0; k < T; k++) {
        const float *xt = a->x + XOFF(a, u, t + k);
        float *yt = a->y + XOFF(a, u, t + k);
        for (int i = 0; i < nv; i++)
            vstore(yt + i * LANES, acc[k][i] + vload(xt + i * LANES) * D);
    }
}

static inline __attribute__((always_inline)) void forward_unit(const ssd_args *a, unit_t u, const int nv)
{
    const int64_t P = a->headdim, N = a->nstate, width = nv * LANES;
    float *h = a->last_state + SOFF(a, u);
    for (int64_t n = 0; n < N; n++) {
        if (a->state)
            memcpy(h + n * P, a->state + SOFF(a, u) + n * P, width * sizeof(float));
        else
            memset(h + n * P, 0, width * sizeof(float));
    }
    int64_t t = 0;
    for (; t + TSTEP <= a->len; t += TSTEP)
        steps(a, u, t, h, h, P, TSTEP, 1, nv);
    for (; t < a->len; t++)
        steps(a, u, t, h, h, P, 1, 1, nv);
}

static unit_t unit_of(const ssd_args *a, int64_t index, int *nv)
{
    const int64_t groups = (a->headdim + GROUP_V * LANES - 1) / (GROUP_V * LANES);
    unit_t u = {index / (a->nheads * groups), index / groups % a->nheads, index % groups * GROUP_V * LANES};
    const int64_t left = (a->headdim - u.p0) / LANES;
    *nv = left < GROUP_V ? (int)left : GROUP_V;
    return u;
}

/* Units start .. stop of batch * nheads * ceil(headdim / (GROUP_V * LANES)). */
void ssd_forward(const ssd_args *a, int64_t start, int64_t stop)
{
    for (int64_t index = start; index < stop; index++) {
        int nv;
        const unit_t u = unit_of(a, index, &nv);
        switch (nv) {  /* a constant nv per call: the loops over vectors unroll into registers */
        case 4: forward_unit(a, u, 4); break;
        case 3: forward_unit(a, u, 3); break;
        case 2: forward_unit(a, u, 2); break;
        default: forward_unit(a, u, 1); break;
        }
    }
}

/* Workspace of one backward unit: checkpoints, a block of states, the adjoint. */
typedef struct { float *ckpt, *states, *g; } work_t;

/* The adjoint's sweep over token t: g (dL/dh_t minus the y_t term) becomes dL/dh_{t-1};
 * hcur = h_t, hprev = h_{t-1}. Writes dx_t and adds to dB_t, dC_t, ddt_t; returns the
 * dA contribution and adds dD's to *dD. */
static inline __attribute__((always_inline)) float adjoint_step(const ssd_grad_args *ga, unit_t u, int64_t t,
                                                                float *g, const float *hcur, const float *hprev,
                                                                float *dBt, float *dCt, float *dD, const int nv)
{
    const ssd_args *a = &ga->fwd;
    const int64_t N = a->nstate, W = nv * LANES;
    const float *xt = a->x + XOFF(a, u, t), *dyt = ga->dy + XOFF(a, u, t);
    const float *Bt = a->B + BOFF(a, u, t), *Ct = a->C + BOFF(a, u, t);
    const float dtt = a->dt[TOFF(a, u, t)], A = a->A[u.h], D = a->D ? a->D[u.h] : 0.0f;
    const float decay = expf(dtt * A);
    vf xv[GROUP_V], dyv[GROUP_V], dxv[GROUP_V], hg = (vf){0}, xdy = (vf){0};
    for (int i = 0; i < nv; i++) {
        xv[i] = vload(xt + i * LANES);
        dyv[i] = vload(dyt + i * LANES);
        dxv[i] = (vf){0};
        xdy += xv[i] * dyv[i];
    }
    float xgB = 0.0f;  /* sum over p, n of g x B */
    for (int64_t n0 = 0; n0 < N; n0 += LANES) {  /* LANES entries at a time: their sums over p in one sum_rows */
        const int count = N - n0 < LANES ? (int)(N - n0) : LANES;
        vf dc[LANES], gx[LANES];
        for (int j = 0; j < LANES; j++)
            dc[j] = gx[j] = (vf){0};
        for (int j = 0; j < count; j++) {
            const int64_t n = n0 + j;
            const float bn = Bt[n], cn = Ct[n];
            float *gn = g + n * W;
            for (int i = 0; i < nv; i++) {
                const vf gv = vload(gn + i * LANES) + dyv[i] * cn;  /* dL/dh_t */
                dc[j] += dyv[i] * vload(hcur + n * W + i * LANES);
                gx[j] += gv * xv[i];
                dxv[i] += gv * bn;
                hg += gv * vload(hprev + n * W + i * LANES);
                vstore(gn + i * LANES, gv * decay);
            }
        }
        const vf dcs = sum_rows(dc), q = sum_rows(gx);
        for (int j = 0; j < count; j++) {
            dCt[n0 + j] += dcs[j];
            dBt[n0 + j] += dtt * q[j];
            xgB += Bt[n0 + j] * q[j];
        }
    }
    float *dxt = ga->dx + XOFF(a, u, t);
    for (int i = 0; i < nv; i++)
        vstore(dxt + i * LANES, dxv[i] * dtt + dyv[i] * D);
    const float gh = vsum(hg);
    ga->ddt[TOFF(a, u, t)] += xgB + A * decay * gh;
    *dD += vsum(xdy);
    return dtt * decay * gh;
}

static inline __attribute__((always_inline)) void backward_unit(const ssd_grad_args *ga, unit_t u, int64_t part,
                                                                work_t w, const int nv)
{
    const ssd_args *a = &ga->fwd;
    const int64_t P = a->headdim, N = a->nstate, W = nv * LANES, L = a->len, S = N * W;
    /* pass 1: the state at the start of every block (compact rows of W floats) */
    float *h = w.states;
    for (int64_t n = 0; n < N; n++) {
        if (a->state)
            memcpy(h + n * W, a->state + SOFF(a, u) + n * P, W * sizeof(float));
        else
            memset(h + n * W, 0, W * sizeof(float));
    }
    for (int64_t t = 0; t < L; ) {  /* TSTEP steps at a time where they fit: BLOCK is a multiple of TSTEP */
        if (t % BLOCK == 0)
            memcpy(w.ckpt + t / BLOCK * S, h, S * sizeof(float));
        if (t + TSTEP <= L) {
            steps(a, u, t, h, h, W, TSTEP, 0, nv);
            t += TSTEP;
        } else {
            steps(a, u, t, h, h, W, 1, 0, nv);
            t++;
        }
    }
    /* pass 2: blocks last to first */
    for (int64_t n = 0; n < N; n++) {
        if (ga->dlast_state)
            memcpy(w.g + n * W, ga->dlast_state + SOFF(a, u) + n * P, W * sizeof(float));
        else
            memset(w.g + n * W, 0, W * sizeof(float));
    }
    const int64_t G = a->ngroups, gi = u.h / (a->nheads / G);
    float *dB = ga->dB + (u.b * ga->parts + part) * L * G * N, *dC = ga->dC + (u.b * ga->parts + part) * L * G * N;
    float dA = 0.0f, dD = 0.0f;
    for (int64_t k = (L + BLOCK - 1) / BLOCK - 1; k >= 0; k--) {
        const int64_t t0 = k * BLOCK, count = (L - t0) < BLOCK ? (L - t0) : BLOCK;
        memcpy(w.states, w.ckpt + k * S, S * sizeof(float));
        for (int64_t j = 0; j < count; j++) {  /* states[j + 1] = h_{t0 + j} */
            steps(a, u, t0 + j, w.states + j * S, w.states + (j + 1) * S, W, 1, 0, nv);
        }
        for (int64_t j = count - 1; j >= 0; j--) {
            const int64_t t = t0 + j, row = (t * G + gi) * N;
            dA += adjoint_step(ga, u, t, w.g, w.states + (j + 1) * S, w.states + j * S, dB + row, dC + row, &dD, nv);
        }
    }
    for (int64_t n = 0; n < N; n++)
        memcpy(ga->dstate + SOFF(a, u) + n * P, w.g + n * W, W * sizeof(float));
    ga->dA[u.b * a->nheads + u.h] += dA;
    ga->dD[u.b * a->nheads + u.h] += dD;
}

/* Units start .. stop of batch * ngroups * parts: unit (b, group, part) takes the part-th
 * range of the group's heads, all of their headdim. Returns nonzero when out of memory. */
int ssd_backward(const ssd_grad_args *ga, int64_t start, int64_t stop)
{
    const ssd_args *a = &ga->fwd;
    const int64_t S = a->nstate * GROUP_V * LANES, blocks = (a->len + BLOCK - 1) / BLOCK;
    work_t w = {malloc((size_t)(blocks > 0 ? blocks : 1) * S * sizeof(float)),
                malloc((size_t)(BLOCK + 1) * S * sizeof(float)), malloc((size_t)S * sizeof(float))};
    if (!w.ckpt || !w.states || !w.g) {
        free(w.ckpt); free(w.states); free(w.g);
        return 1;
    }
    const int64_t per_group = a->nheads / a->ngroups, groups = (a->headdim + GROUP_V * LANES - 1) / (GROUP_V * LANES);
    for (int64_t index = start; index < stop; index++) {
        const int64_t part = index % ga->parts, gi = index / ga->parts % a->ngroups, b = index / (ga->parts * a->ngroups);
        const int64_t h0 = gi * per_group + per_group * part / ga->parts, h1 = gi * per_group + per_group * (part + 1) / ga->parts;
        for (int64_t h = h0; h < h1; h++)
            for (int64_t pg = 0; pg < groups; pg++) {
                int nv;
                const unit_t u = unit_of(a, (b * a->nheads + h) * groups + pg, &nv);
                switch (nv) {
                case 4: backward_unit(ga, u, part, w, 4); break;
                case 3: backward_unit(ga, u, part, w, 3); break;
                case 2: backward_unit(ga, u, part, w, 2); break;
                default: backward_unit(ga, u, part, w, 1); break;
                }
            }
    }
    free(w.ckpt); free(w.states); free(w.g);
    return 0;
}
