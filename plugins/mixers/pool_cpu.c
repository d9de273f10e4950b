/* A second thread for the few-row products of the fused decode steps (block_cpu.c).
 *
 * pooled_gemv(x, W, b, y, M, N, K, dtype) computes gemv_cpu.c's product with W's rows (y's
 * columns) cut into chunks that the calling thread and one worker thread claim from a shared
 * counter; pooled_for(fn, args, n, chunk) runs fn(args, i0, i1) over [0, n) the same way (the
 * Mamba step's channels, step_cpu.c). The caller never waits for the worker to start: if the
 * worker is asleep or descheduled (a loaded 2-core machine), the caller claims every chunk
 * itself; it waits only for chunks the worker has claimed and is computing. The worker spins
 * briefly for the next job, then yields, then sleeps on a condition variable: it never spins
 * for long.
 *
 * The counter `next` holds (job tag << 32 | next chunk); the caller opens a job by storing a
 * new tag with chunk 0 (after writing the job's arguments) and closes it with chunk CLOSED
 * once every chunk is done, so a late worker never claims a chunk of a job it did not read.
 * One job at a time: a caller that finds the pool busy (another thread's step) computes alone.
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include "cpu_math.h"
#include "pool_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

void gemv_f32(const float *x, const float *w, const float *bias, float *y,
              int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1);
void gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
               int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1);

#define CHUNK 64                      /* columns per claim, a multiple of both kernels' row blocks */
#define CLOSED 0xFFFFFFFFu
#define SPINS 1000                    /* pause loops before yielding (~10-40 us) */
#define YIELDS 50                     /* sched_yield calls before sleeping */
#define MIN_BYTES (64 << 10)          /* smaller weights: one thread (the hand-off costs more) */

typedef struct {
    RangeFn fn;                       /* NULL: a product (the fields below); else fn over [0, N) */
    const void *args;                 /* fn's */
    const void *x, *w, *b;
    void *y;
    int64_t M, N, K, chunk, chunks;   /* chunk: columns (or fn's indices) per claim */
    int32_t dtype;
} Job;

static struct {
    Job job;
    uint64_t next;                    /* atomic: tag << 32 | next chunk */
    int64_t done;                     /* atomic: chunks finished in the open job */
    int32_t busy;                     /* atomic: a caller owns the pool */
    int32_t sleeping;                 /* atomic: the worker waits on `wake` */
    int32_t threads, started;
    uint32_t tag;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .threads = 1};

static void columns(const Job *j, int64_t n0, int64_t n1) {
    if (j->dtype == F32) gemv_f32(j->x, j->w, j->b, j->y, j->M, j->N, j->K, n0, n1);
    else gemv_bf16(j->x, j->w, j->b, j->y, j->M, j->N, j->K, n0, n1);
}

static void run_chunk(const Job *j, int64_t c) {
    const int64_t n0 = c * j->chunk, n1 = n0 + j->chunk < j->N ? n0 + j->chunk : j->N;
    if (j->fn) j->fn(j->args, n0, n1);
    else columns(j, n0, n1);
}

/* Claim and compute chunks of the job tagged `tag` (arguments `j`) until none is left. */
static void claim(const Job *j, uint32_t tag) {
    for (;;) {
        uint64_t v = __atomic_load_n(&pool.next, __ATOMIC_ACQUIRE);
        if ((uint32_t)(v >> 32) != tag || (uint32_t)v >= (uint64_t)j->chunks) return;  /* another job, or none left */
        if (!__atomic_compare_exchange_n(&pool.next, &v, v + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
        run_chunk(j, (int64_t)(uint32_t)v);
        __atomic_fetch_add(&pool.done, 1, __ATOMIC_RELEASE);
    }
}

/* The worker: wait for a new tag (spin, then yield, then sleep), read its job, claim. */
static void *worker(void *unused) {
    (void)unused;
    uint32_t seen = 0;
    for (;;) {
        uint64_t v = __atomic_load_n(&pool.next, __ATOMIC_ACQUIRE);
        for (int i = 0; (uint32_t)(v >> 32) == seen; i++) {
            if (i < SPINS) PAUSE();
            else if (i < SPINS + YIELDS) sched_yield();
            else {
                pthread_mutex_lock(&pool.lock);
                __atomic_store_n(&pool.sleeping, 1, __ATOMIC_SEQ_CST);
                while ((uint32_t)(__atomic_load_n(&pool.next, __ATOMIC_SEQ_CST) >> 32) == seen)
                    pthread_cond_wait(&pool.wake, &pool.lock);
                __atomic_store_n(&pool.sleeping, 0, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&pool.lock);
                i = 0;
            }
            v = __atomic_load_n(&pool.next, __ATOMIC_ACQUIRE);
        }
        seen = (uint32_t)(v >> 32);
        Job j;
        memcpy(&j, &pool.job, sizeof j);  /* valid while the job is open: claim() checks the tag first */
        claim(&j, seen);
    }
    return NULL;
}

/* Threads the products may use (1 or 2): the caller's torch.get_num_threads(), per step. */
void pool_set_threads(int32_t threads) { pool.threads = threads > 1 ? 2 : 1; }

static int start_worker(void) {
    if (pool.started) return pool.started > 0;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pool.started = pthread_create(&t, &attr, worker, NULL) == 0 ? 1 : -1;
    pthread_attr_destroy(&attr);
    return pool.started > 0;
}

/* Run `job` (its chunks set) on the caller and the worker; alone when the pool is busy or
 * the worker cannot start. */
static void run_job(Job job) {
    int32_t free_ = 0;
    if (!__atomic_compare_exchange_n(&pool.busy, &free_, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        for (int64_t c = 0; c < job.chunks; c++) run_chunk(&job, c);  /* another thread's step owns it */
        return;
    }
    if (!start_worker()) {
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
        for (int64_t c = 0; c < job.chunks; c++) run_chunk(&job, c);
        return;
    }
    const uint32_t tag = ++pool.tag ? pool.tag : ++pool.tag;  /* never 0: the worker starts having seen 0 */
    pool.job = job;
    __atomic_store_n(&pool.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.next, (uint64_t)tag << 32, __ATOMIC_SEQ_CST);  /* open: arguments visible */
    if (__atomic_load_n(&pool.sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_signal(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    claim(&pool.job, tag);
    for (int i = 0; __atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) < pool.job.chunks; i++) {
        if (i < SPINS) PAUSE();  /* the worker is computing a chunk it claimed */
        else sched_yield();
    }
    __atomic_store_n(&pool.next, (uint64_t)tag << 32 | CLOSED, __ATOMIC_RELEASE);
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
}

void pooled_gemv(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K,
                 int32_t dtype) {
    const int64_t bytes = N * K * (dtype == F32 ? 4 : 2);
    if (pool.threads < 2 || bytes < MIN_BYTES || N <= CHUNK) {
        columns(&(Job){.x = x, .w = w, .b = b, .y = y, .M = M, .N = N, .K = K, .dtype = dtype}, 0, N);  /* alone */
        return;
    }
    run_job((Job){.x = x, .w = w, .b = b, .y = y, .M = M, .N = N, .K = K, .chunk = CHUNK,
                  .chunks = (N + CHUNK - 1) / CHUNK, .dtype = dtype});
}

void pooled_for(RangeFn fn, const void *args, int64_t n, int64_t chunk) {
    if (pool.threads < 2 || n <= chunk) {
        fn(args, 0, n);
        return;
    }
    run_job((Job){.fn = fn, .args = args, .N = n, .chunk = chunk, .chunks = (n + chunk - 1) / chunk});
}
