/* Banded LSH attention of sorted items, forward and backward: the native kernel of
 * longrange.attention.lsh_native (what it computes is documented there and in lsh_sorted.py).
 *
 * Shape legend: rows b * H + h (batch x heads), Tp padded tokens, H heads, E head width, R hash rounds,
 * S = R * Tp sorted items per row, QB queries per block, L keys of a block's union band (Lp: rounded up
 * to whole vectors of VL lanes). Token tensors (queries q, unit-norm keys k, values v, output y and their
 * gradients) are (batch, Tp, H, E) contiguous: the vector of (b, p, h) starts at ((b * Tp + p) * H + h) * E.
 * order (rows, S): unsorted index r * Tp + p of each sorted item; lo / hi (rows, S): the first and last sorted
 * item each query sees (its band, inclusive); buckets (rows, Tp, R) or NULL: every round's bucket of each
 * position, for the duplicate-pair correction.
 *
 * Why a hand-written loop: a query sees a few tens of keys on average, but any block layout for a dense
 * kernel scores C + C / 2 keys per query and gathers / scatters every item's rows around it. Here the
 * keys (and values) of a block of QB consecutive queries are transposed once into (E, Lp) so the scores
 * of 4 queries x VL keys come from E vector multiply-adds without horizontal sums; softmax and the row
 * updates then visit exactly each query's band, and gradients are accumulated in place.
 *
 * Compiled once per scalar type with -DREAL=float or -DREAL=double (tgmath picks expf / exp). Each call
 * handles rows [row_begin, row_end); the caller runs disjoint row ranges in parallel threads (a row's
 * gradient vectors belong to it alone, so there are no races). Returns 0, or -1 when memory ran out.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#ifndef REAL
#define REAL float
#endif

#define VBYTES 32
typedef REAL vec_t __attribute__((vector_size(VBYTES)));
#define VL ((int64_t)(VBYTES / sizeof(REAL)))
#define QB 32   /* queries per block */
#define AHEAD 4 /* items: rows prefetched this far ahead in sorted order */

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static inline REAL dot(const REAL *a, const REAL *b, int64_t e) {
    REAL acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t x = 0; x < e; x++) acc += a[x] * b[x];
    return acc;
}

static inline void axpy(REAL *y, REAL alpha, const REAL *x, int64_t e) {
#pragma omp simd
    for (int64_t i = 0; i < e; i++) y[i] += alpha * x[i];
}

/* the rows of sorted items sit at random positions of tensors far larger than the caches */
static inline void prefetch_row(const REAL *x, int64_t e) {
    for (int64_t off = 0; off < e * (int64_t)sizeof(REAL); off += 64) __builtin_prefetch((const char *)x + off);
}

static void *aligned(int64_t n) { return aligned_alloc(64, round_up(n * (int64_t)sizeof(REAL), 64)); }

/* One (batch, head) row and the block of queries [i0, i1) being processed. */
typedef struct {
    const int64_t *ord, *lo, *hi, *bk;
    int64_t heads, tp, e, rounds, s, base, h;
    REAL scale, self_score;
    const REAL *log_count;
    /* the block: union band [a0, a0 + L), its positions and vector offsets, its transposed keys / values */
    int64_t i0, i1, a0, L, lp;
    int64_t *pos, *off;
} row_t;

static inline int64_t offset(const row_t *r, int64_t item) { return ((r->base + r->ord[item] % r->tp) * r->heads + r->h) * r->e; }

/* bias of the pair (query item i at position pi, key at position pj of item j): -log(number of rounds sharing
 * a bucket) with the correction, and the self score on the query's own item */
static inline REAL pair_bias(const row_t *r, int64_t pi, int64_t pj, int self) {
    REAL bias = self ? r->self_score : 0;
    if (r->bk) {
        int count = 0;
        for (int64_t k = 0; k < r->rounds; k++) count += r->bk[pi * r->rounds + k] == r->bk[pj * r->rounds + k];
        bias -= r->log_count[count];
    }
    return bias;
}

/* Largest union band of a block of QB queries in rows [row_begin, row_end), for the scratch sizes. */
static int64_t widest_block(const int64_t *lo, const int64_t *hi, int64_t s, int64_t row_begin, int64_t row_end) {
    int64_t widest = 1;
    for (int64_t row = row_begin; row < row_end; row++)
        for (int64_t i0 = row * s; i0 < (row + 1) * s; i0 += QB) {
            int64_t a = lo[i0], b = hi[i0];
            for (int64_t i = i0; i < min64(i0 + QB, (row + 1) * s); i++) a = min64(a, lo[i]), b = max64(b, hi[i]);
            widest = max64(widest, b - a + 1);
        }
    return widest;
}

/* Start the block [i0, i1): its union band, positions and offsets, and the transposed (E, Lp) copies of
 * the given token tensors (keys, and values in the backward pass). */
static void begin_block(row_t *r, int64_t i0, int64_t i1, const REAL *const *tensors, REAL *const *transposed, int n) {
    int64_t a = r->lo[i0], b = r->hi[i0];
    for (int64_t i = i0; i < i1; i++) a = min64(a, r->lo[i]), b = max64(b, r->hi[i]);
    r->i0 = i0, r->i1 = i1, r->a0 = a, r->L = b - a + 1, r->lp = round_up(r->L, VL);
    for (int64_t j = 0; j < r->L; j++) r->pos[j] = r->ord[a + j] % r->tp, r->off[j] = offset(r, a + j);
    for (int t = 0; t < n; t++) {
        REAL *dst = transposed[t];
        for (int64_t j = 0; j < r->L; j++) {
            const REAL *src = tensors[t] + r->off[j];
            for (int64_t x = 0; x < r->e; x++) dst[x * r->lp + j] = src[x];
        }
        for (int64_t x = 0; x < r->e; x++)
            for (int64_t j = r->L; j < r->lp; j++) dst[x * r->lp + j] = 0;
    }
}

/* out[t][j] = rows[t] . T[:, j] for the block's queries t and, per group of 4 queries, the vectors of keys
 * covering the group's bands (4 independent accumulators, no horizontal sums). out is (QB, Lp). */
static void block_products(const row_t *r, const REAL *const *rows, const REAL *T, REAL *out) {
    const int64_t n = r->i1 - r->i0, lp = r->lp, e = r->e;
    for (int64_t t0 = 0; t0 < n; t0 += 4) {
        const int64_t m = min64(4, n - t0);
        int64_t a = r->lo[r->i0 + t0], b = r->hi[r->i0 + t0];
        for (int64_t t = t0; t < t0 + m; t++) a = min64(a, r->lo[r->i0 + t]), b = max64(b, r->hi[r->i0 + t]);
        const REAL *q0 = rows[t0], *q1 = rows[t0 + (m > 1)], *q2 = rows[t0 + 2 * (m > 2)], *q3 = rows[t0 + 3 * (m > 3)];
        for (int64_t ch = (a - r->a0) / VL; ch <= (b - r->a0) / VL; ch++) {
            vec_t s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            const REAL *col = T + ch * VL;
            for (int64_t x = 0; x < e; x++) {
                const vec_t kx = *(const vec_t *)(col + x * lp);
                s0 += q0[x] * kx, s1 += q1[x] * kx, s2 += q2[x] * kx, s3 += q3[x] * kx;
            }
            const vec_t sums[4] = {s0, s1, s2, s3};
            for (int64_t t = 0; t < m; t++) *(vec_t *)(out + (t0 + t) * lp + ch * VL) = sums[t];
        }
    }
}

/* scores of block query t (item i) over its band, with bias, into score[0 .. hi - lo]; returns their maximum */
static inline REAL band_scores(const row_t *r, const REAL *products, int64_t t, REAL *score) {
    const int64_t i = r->i0 + t, la = r->lo[i] - r->a0, lb = r->hi[i] - r->a0, pi = r->ord[i] % r->tp;
    REAL m = -INFINITY;
    for (int64_t j = la; j <= lb; j++) {
        const REAL s = products[t * r->lp + j] * r->scale + pair_bias(r, pi, r->pos[j], r->a0 + j == i);
        score[j - la] = s;
        m = s > m ? s : m;
    }
    return m;
}

static REAL *log_counts(int64_t rounds) {
    REAL *table = malloc((rounds + 1) * sizeof(REAL));
    if (!table) return NULL;
    table[0] = 0; /* never read: a visible pair shares its own round's bucket */
    for (int64_t c = 1; c <= rounds; c++) table[c] = log((REAL)c);
    return table;
}

static row_t start_row(const int64_t *order, const int64_t *lo, const int64_t *hi, const int64_t *buckets,
                       int64_t row, int64_t heads, int64_t tp, int64_t e, int64_t rounds, double scale,
                       double self_score, const REAL *log_count, int64_t *pos, int64_t *off) {
    const int64_t s = rounds * tp;
    row_t r = {order + row * s, lo + row * s, hi + row * s, buckets ? buckets + row * tp * rounds : NULL,
               heads, tp, e, rounds, s, (row / heads) * tp, row % heads, (REAL)scale, (REAL)self_score,
               log_count, 0, 0, 0, 0, 0, pos, off};
    return r;
}

/* logsumexp over each position's rounds of the items' logsumexps lse_u (unsorted, r * Tp + p) */
static inline REAL rounds_lse(const REAL *lse_u, int64_t p, int64_t tp, int64_t rounds, REAL *max_out) {
    REAL m = -INFINITY, total = 0;
    for (int64_t k = 0; k < rounds; k++) m = fmax(m, lse_u[k * tp + p]);
    for (int64_t k = 0; k < rounds; k++) total += exp(lse_u[k * tp + p] - m);
    *max_out = m;
    return total;
}

int lsh_band_forward(const REAL *q, const REAL *k, const REAL *v, const int64_t *order, const int64_t *lo,
                     const int64_t *hi, const int64_t *buckets, REAL *y, REAL *lse, int64_t heads, int64_t tp,
                     int64_t e, int64_t rounds, int64_t row_begin, int64_t row_end, double scale,
                     double self_score) {
    const int64_t s = rounds * tp, width = round_up(widest_block(lo, hi, s, row_begin, row_end), VL);
    REAL *out = malloc(s * e * sizeof(REAL)); /* each item's round output, unsorted (r * Tp + p) order */
    REAL *lse_u = malloc(s * sizeof(REAL)), *score = malloc(width * sizeof(REAL));
    REAL *kt = aligned(e * width), *products = aligned(QB * width), *log_count = log_counts(rounds);
    int64_t *pos = malloc(width * sizeof(int64_t)), *off = malloc(width * sizeof(int64_t));
    int status = (out && lse_u && score && kt && products && log_count && pos && off) ? 0 : -1;
    for (int64_t row = row_begin; row < row_end && status == 0; row++) {
        row_t r = start_row(order, lo, hi, buckets, row, heads, tp, e, rounds, scale, self_score, log_count, pos, off);
        for (int64_t i0 = 0; i0 < s; i0 += QB) {
            const int64_t i1 = min64(i0 + QB, s);
            const REAL *queries[QB];
            for (int64_t i = i0; i < i1; i++) queries[i - i0] = q + offset(&r, i);
            begin_block(&r, i0, i1, (const REAL *const[]){k}, (REAL *const[]){kt}, 1);
            block_products(&r, queries, kt, products);
            for (int64_t i = i0; i < i1; i++) {
                if (i + QB < s) prefetch_row(k + offset(&r, i + QB), e); /* the next block's keys */
                if (i + AHEAD < s) prefetch_row(v + offset(&r, i + AHEAD), e), prefetch_row(out + r.ord[i + AHEAD] * e, e);
                const int64_t la = r.lo[i] - r.a0, lb = r.hi[i] - r.a0;
                const REAL m = band_scores(&r, products, i - i0, score);
                REAL *o = out + r.ord[i] * e, sum = 0;
                memset(o, 0, e * sizeof(REAL));
                for (int64_t j = la; j <= lb; j++) {
                    const REAL p = exp(score[j - la] - m);
                    sum += p;
                    axpy(o, p, v + off[j], e);
                }
                for (int64_t x = 0; x < e; x++) o[x] /= sum;
                lse[row * s + i] = lse_u[r.ord[i]] = m + log(sum);
            }
        }
        for (int64_t p = 0; p < tp; p++) { /* merge the rounds: weights softmax(lse) over each position's rounds */
            REAL m, total = rounds_lse(lse_u, p, tp, rounds, &m);
            REAL *yp = y + ((r.base + p) * heads + r.h) * e;
            memset(yp, 0, e * sizeof(REAL));
            for (int64_t j = 0; j < rounds; j++) axpy(yp, exp(lse_u[j * tp + p] - m) / total, out + (j * tp + p) * e, e);
        }
    }
    free(out), free(lse_u), free(score), free(kt), free(products), free(log_count), free(pos), free(off);
    return status;
}

/* Gradients, accumulated into gq (query role), gk (unit-norm keys) and gv, zeroed by the caller.
 * With G = w_r dL/dy (the round's share of the output gradient) and y the merged output,
 * dL/dscore_ij = P_ij (G . v_j - G . y): the round merge's logsumexp path included (lsh_sorted.py). */
int lsh_band_backward(const REAL *q, const REAL *k, const REAL *v, const REAL *grad_y, const REAL *y,
                      const int64_t *order, const int64_t *lo, const int64_t *hi, const int64_t *buckets,
                      const REAL *lse, REAL *gq, REAL *gk, REAL *gv, int64_t heads, int64_t tp, int64_t e,
                      int64_t rounds, int64_t row_begin, int64_t row_end, double scale, double self_score) {
    const int64_t s = rounds * tp, width = round_up(widest_block(lo, hi, s, row_begin, row_end), VL);
    REAL *lse_u = malloc(s * sizeof(REAL)), *score = malloc(width * sizeof(REAL));
    /* per position: the largest of its rounds' lse and the sum of exp(lse - largest), the weights' denominator.
     * The weights are formed exactly as in the forward pass: near SELF_SCORE, m + log(total) would be rounded */
    REAL *lse_max = malloc(tp * sizeof(REAL)), *lse_sum = malloc(tp * sizeof(REAL));
    REAL *kt = aligned(e * width), *vt = aligned(e * width), *products = aligned(QB * width);
    REAL *g_dot_v = aligned(QB * width), *g = aligned(QB * e), *g_dot_y = malloc(QB * sizeof(REAL));
    REAL *gq_i = malloc(e * sizeof(REAL)), *log_count = log_counts(rounds);
    int64_t *pos = malloc(width * sizeof(int64_t)), *off = malloc(width * sizeof(int64_t));
    int status = (lse_u && lse_max && lse_sum && score && kt && vt && products && g_dot_v && g && g_dot_y && gq_i && log_count &&
                  pos && off)
                     ? 0
                     : -1;
    for (int64_t row = row_begin; row < row_end && status == 0; row++) {
        row_t r = start_row(order, lo, hi, buckets, row, heads, tp, e, rounds, scale, self_score, log_count, pos, off);
        const REAL *lse_row = lse + row * s;
        for (int64_t i = 0; i < s; i++) lse_u[r.ord[i]] = lse_row[i];
        for (int64_t p = 0; p < tp; p++) lse_sum[p] = rounds_lse(lse_u, p, tp, rounds, lse_max + p);
        for (int64_t i0 = 0; i0 < s; i0 += QB) {
            const int64_t i1 = min64(i0 + QB, s);
            const REAL *queries[QB], *gs[QB];
            for (int64_t i = i0; i < i1; i++) {
                const int64_t at = offset(&r, i), t = i - i0;
                const int64_t p = r.ord[i] % tp;
                const REAL w = exp(lse_row[i] - lse_max[p]) / lse_sum[p];
                for (int64_t x = 0; x < e; x++) g[t * e + x] = w * grad_y[at + x];
                g_dot_y[t] = dot(g + t * e, y + at, e);
                queries[t] = q + at, gs[t] = g + t * e;
            }
            begin_block(&r, i0, i1, (const REAL *const[]){k, v}, (REAL *const[]){kt, vt}, 2);
            block_products(&r, queries, kt, products);
            block_products(&r, gs, vt, g_dot_v);
            for (int64_t i = i0; i < i1; i++) {
                if (i + QB < s) {
                    const int64_t next = offset(&r, i + QB);
                    prefetch_row(k + next, e), prefetch_row(v + next, e), prefetch_row(q + next, e);
                    prefetch_row(grad_y + next, e), prefetch_row(y + next, e);
                }
                if (i + AHEAD < s) {
                    const int64_t ahead = offset(&r, i + AHEAD);
                    prefetch_row(gq + ahead, e), prefetch_row(gk + ahead, e), prefetch_row(gv + ahead, e);
                }
                const int64_t t = i - i0, la = r.lo[i] - r.a0, lb = r.hi[i] - r.a0, at = offset(&r, i);
                band_scores(&r, products, t, score);
                memset(gq_i, 0, e * sizeof(REAL));
                for (int64_t j = la; j <= lb; j++) {
                    /* a band of the query alone: weight 1 exactly (score and lse are near SELF_SCORE, where
                     * float32 steps are 0.008 apart, so their difference would be off by that much) */
                    const REAL p = la == lb ? 1 : exp(score[j - la] - lse_row[i]);
                    const REAL ds = p * (g_dot_v[t * r.lp + j] - g_dot_y[t]) * r.scale;
                    axpy(gq_i, ds, k + off[j], e);
                    axpy(gk + off[j], ds, q + at, e);
                    axpy(gv + off[j], p, g + t * e, e);
                }
                axpy(gq + at, 1, gq_i, e);
            }
        }
    }
    free(lse_u), free(lse_max), free(lse_sum), free(score), free(kt), free(vt), free(products), free(g_dot_v), free(g);
    free(g_dot_y), free(gq_i), free(log_count), free(pos), free(off);
    return status;
}
