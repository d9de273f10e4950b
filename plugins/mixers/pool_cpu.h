/* pool_cpu.c's entry points, for the files linked beside it (block_cpu.c, step_cpu.c). */
#ifndef POOL_CPU_H
#define POOL_CPU_H

#include <stdint.h>

typedef void (*RangeFn)(const void *args, int64_t i0, int64_t i1);

/* y (M, N) = x (M, K) W^T (+ b) through gemv_cpu.c, W's rows shared with the worker thread. */
void pooled_gemv(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K,
                 int32_t dtype);
/* fn(args, i0, i1) over [0, n) in claims of `chunk` indices, shared with the worker thread. */
void pooled_for(RangeFn fn, const void *args, int64_t n, int64_t chunk);

#endif
