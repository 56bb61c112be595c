/* Banded LSH attention of sorted items, forward and backward: the native kernel of
 * longrange.attention.lsh_native (what it computes is documented there and in lsh_sorted.py).
 *
 * Shape legend: rows b * H + h (batch x heads), Tp padded tokens, H heads, E head width, R hash rounds,
 * S = R * Tp sorted items per row, QB queries per block, L keys of a block's union band (Lp: rounded up
 * to whole vectors of VL lanes). Token tensors (queries q, values v, output y and their gradients) are
 * (batch, Tp, H, E) contiguous: the vector of (b, p, h) starts at ((b * Tp + p) * H + h) * E; norm (batch,
 * Tp, H) holds the queries' norms (the keys are the queries divided by them, clamped to eps, made here).
 * The bands must satisfy 0 <= lo_i <= i <= hi_i < S and grow along a row (checked by the Python caller).
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
/* -DHEAD_DIM=E compiles for one head width: every loop over E then has a known trip count (unrolled, and
 * the accumulators of a query's output and gradient stay in registers); 0: any width, given at run time */
#ifndef HEAD_DIM
#define HEAD_DIM 0
#endif
#define DIM(e) (HEAD_DIM > 0 ? (int64_t)HEAD_DIM : (e))

#define VBYTES 32
typedef REAL vec_t __attribute__((vector_size(VBYTES)));
typedef REAL uvec_t __attribute__((vector_size(VBYTES), aligned(sizeof(REAL)))); /* unaligned loads */
#define VL ((int64_t)(VBYTES / sizeof(REAL)))
#define QB 32   /* queries per block */
#define AHEAD 4 /* items: rows prefetched this far ahead in sorted order */

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static inline REAL dot(const REAL *a, const REAL *b, int64_t e) {
    REAL acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t x = 0; x < DIM(e); x++) acc += a[x] * b[x];
    return acc;
}

static inline void axpy(REAL *y, REAL alpha, const REAL *x, int64_t e) {
#pragma omp simd
    for (int64_t i = 0; i < DIM(e); i++) y[i] += alpha * x[i];
}

/* out = sum over the band's items j of weight[j] * rows[off[j]] (E each): the accumulators stay in registers
 * when the head width is known at compile time */
static inline void weighted_sum(REAL *out, const REAL *weight, const int64_t *off, int64_t n, const REAL *rows, int64_t e) {
#if HEAD_DIM > 0 && HEAD_DIM % 8 == 0 && HEAD_DIM <= 128
    (void)e;
    vec_t acc[HEAD_DIM / VL] = {0};
    for (int64_t j = 0; j < n; j++) {
        const REAL *x = rows + off[j];
        for (int64_t u = 0; u < HEAD_DIM / VL; u++) acc[u] += weight[j] * *(const uvec_t *)(x + u * VL);
    }
    for (int64_t u = 0; u < HEAD_DIM / VL; u++) *(uvec_t *)(out + u * VL) = acc[u];
#else
    memset(out, 0, e * sizeof(REAL));
    for (int64_t j = 0; j < n; j++) axpy(out, weight[j], rows + off[j], e);
#endif
}

/* the rows of sorted items sit at random positions of tensors far larger than the caches */
static inline void prefetch_row(const REAL *x, int64_t e) {
    for (int64_t off = 0; off < DIM(e) * (int64_t)sizeof(REAL); off += 64) __builtin_prefetch((const char *)x + off);
}

static void *aligned(int64_t n) { return aligned_alloc(64, round_up(n * (int64_t)sizeof(REAL), 64)); }


/* One (batch, head) row, the block of queries [i0, i1) being processed and the window of keys around it.
 *
 * The window is a ring of columns: sorted item j sits at column j % ring and again at j % ring + ring (the
 * ring is stored twice over), so every run of up to `ring` consecutive items is
 * contiguous from column c0 = a0 % ring. Each item is transposed into it once, when the windows (which only
 * move forward: lo and hi grow with the query) first reach it. Per column: the item's position, the offset
 * of its vectors, its R buckets, 1 / its key's norm, and its unit key (and, backward, value) as a column of an
 * (E, 2 ring) array. Keys are the queries divided by their norms (clamped to eps, as F.normalize does). */
typedef struct {
    const int64_t *ord, *lo, *hi, *bk;
    int64_t heads, tp, e, rounds, base, h;
    REAL scale, self_score;
    const REAL *log_count;
    int64_t i0, i1, a0, L, lp, c0; /* the block, its union band [a0, a0 + L) (lp: L in whole vectors) */
    int64_t ring, filled;          /* ring width (columns), first item not yet in the ring */
    int64_t *pos, *off, *col_bk;   /* (2 ring), (2 ring), (2 ring, R) */
    REAL *inv;                     /* (2 ring) */
    const REAL *norm;              /* (batch, Tp, H) the queries' norms */
    REAL eps;
    const REAL *sources[2];        /* queries (made unit keys), values */
    REAL *columns[2];              /* (E, 2 ring) each */
    int n_sources;
} row_t;

static inline int64_t offset(const row_t *r, int64_t item) { return ((r->base + r->ord[item] % r->tp) * r->heads + r->h) * DIM(r->e); }

/* bias of a pair with buckets (R each) bq and bk: -log(number of rounds sharing a bucket) with the
 * correction (bq NULL: without), and the self score on the query's own item */
static inline REAL pair_bias(const row_t *r, const int64_t *bq, const int64_t *bk, int self) {
    REAL bias = self ? r->self_score : 0;
    if (bq) {
        int count = 0;
        for (int64_t k = 0; k < r->rounds; k++) count += bq[k] == bk[k];
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

/* Start the block [i0, i1): its union band, and the ring filled up to its last item. */
static void begin_block(row_t *r, int64_t i0, int64_t i1) {
    int64_t a = r->lo[i0], b = r->hi[i0];
    for (int64_t i = i0; i < i1; i++) a = min64(a, r->lo[i]), b = max64(b, r->hi[i]);
    r->i0 = i0, r->i1 = i1, r->a0 = a, r->L = b - a + 1, r->lp = round_up(r->L, VL), r->c0 = a % r->ring;
    const int64_t e = DIM(r->e), ld = 2 * r->ring, rounds = r->rounds;
    for (int64_t j = max64(r->filled, a); j <= b; j++) {
        const int64_t col = j % r->ring, at = offset(r, j), p = r->ord[j] % r->tp;
        const REAL norm = r->norm[at / e], inv = 1 / (norm > r->eps ? norm : r->eps);
        for (int64_t copy = col; copy < ld; copy += r->ring) { /* the column and its second copy */
            r->pos[copy] = p, r->off[copy] = at, r->inv[copy] = inv;
            if (r->bk)
                for (int64_t k = 0; k < rounds; k++) r->col_bk[copy * rounds + k] = r->bk[p * rounds + k];
            for (int t = 0; t < r->n_sources; t++) {
                const REAL *src = r->sources[t] + at, factor = t == 0 ? inv : 1;
                REAL *dst = r->columns[t] + copy;
                for (int64_t x = 0; x < e; x++) dst[x * ld] = src[x] * factor;
            }
        }
    }
    r->filled = max64(r->filled, b + 1);
}

/* out[t][j] = rows[t] . columns[:, c0 + j] for the block's queries t and, per group of 4 queries, the
 * vectors of keys covering the group's bands (4 independent accumulators, no horizontal sums). out is (QB, Lp). */
static void block_products(const row_t *r, const REAL *const *rows, const REAL *columns, REAL *out) {
    const int64_t n = r->i1 - r->i0, lp = r->lp, e = DIM(r->e), ld = 2 * r->ring;
    for (int64_t t0 = 0; t0 < n; t0 += 4) {
        const int64_t m = min64(4, n - t0);
        int64_t a = r->lo[r->i0 + t0], b = r->hi[r->i0 + t0];
        for (int64_t t = t0; t < t0 + m; t++) a = min64(a, r->lo[r->i0 + t]), b = max64(b, r->hi[r->i0 + t]);
        const REAL *q0 = rows[t0], *q1 = rows[t0 + (m > 1)], *q2 = rows[t0 + 2 * (m > 2)], *q3 = rows[t0 + 3 * (m > 3)];
        for (int64_t ch = (a - r->a0) / VL; ch <= (b - r->a0) / VL; ch++) {
            vec_t s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            const REAL *col = columns + r->c0 + ch * VL;
            for (int64_t x = 0; x < e; x++) {
                const vec_t kx = *(const uvec_t *)(col + x * ld);
                s0 += q0[x] * kx, s1 += q1[x] * kx, s2 += q2[x] * kx, s3 += q3[x] * kx;
            }
            const vec_t sums[4] = {s0, s1, s2, s3};
            for (int64_t t = 0; t < m; t++) *(vec_t *)(out + (t0 + t) * lp + ch * VL) = sums[t];
        }
    }
}

/* scores of block query t (item i) over its band, with bias, into score[0 .. hi - lo]; returns their maximum */
static inline REAL band_scores(const row_t *r, const REAL *products, int64_t t, REAL *score) {
    const int64_t i = r->i0 + t, la = r->lo[i] - r->a0, lb = r->hi[i] - r->a0;
    const int64_t *bq = r->bk ? r->bk + (r->ord[i] % r->tp) * r->rounds : NULL;
    REAL m = -INFINITY;
    for (int64_t j = la; j <= lb; j++) {
        const int64_t *bk = r->col_bk + (r->c0 + j) * r->rounds;
        const REAL s = products[t * r->lp + j] * r->scale + pair_bias(r, bq, bk, r->a0 + j == i);
        score[j - la] = s;
        m = s > m ? s : m;
    }
    return m;
}

/* The ring's storage for one thread, sized for the widest block of its rows. The vectors past a window's end
 * are read and never used (zero at first, stale items' values later: finite either way). */
typedef struct {
    int64_t width;
    int64_t *pos, *off, *bk;
    REAL *inv;
    const REAL *sources[2];
    REAL *columns[2];
    int n_sources;
} ring_t;

static int ring_alloc(ring_t *ring, int64_t widest, int64_t e, int64_t rounds, const REAL *queries, const REAL *values) {
    const int64_t w = round_up(widest, VL) + VL, n = 2 * w;
    *ring = (ring_t){w, calloc(n, sizeof(int64_t)), calloc(n, sizeof(int64_t)), calloc(n * rounds, sizeof(int64_t)),
                     calloc(n, sizeof(REAL)), {queries, values}, {NULL, NULL}, values ? 2 : 1};
    for (int t = 0; t < ring->n_sources; t++) {
        ring->columns[t] = aligned(e * n);
        if (ring->columns[t]) memset(ring->columns[t], 0, e * n * sizeof(REAL));
    }
    return ring->pos && ring->off && ring->bk && ring->inv && ring->columns[0] && (!values || ring->columns[1]) ? 0 : -1;
}

static void ring_free(ring_t *ring) {
    free(ring->pos), free(ring->off), free(ring->bk), free(ring->inv), free(ring->columns[0]), free(ring->columns[1]);
}

static REAL *log_counts(int64_t rounds) {
    REAL *table = malloc((rounds + 1) * sizeof(REAL));
    if (!table) return NULL;
    table[0] = 0; /* never read: a visible pair shares its own round's bucket */
    for (int64_t c = 1; c <= rounds; c++) table[c] = log((REAL)c);
    return table;
}

static row_t start_row(const int64_t *order, const int64_t *lo, const int64_t *hi, const int64_t *buckets,
                       const REAL *norm, double eps, int64_t row, int64_t heads, int64_t tp, int64_t e,
                       int64_t rounds, double scale, double self_score, const REAL *log_count, const ring_t *ring) {
    const int64_t s = rounds * tp;
    row_t r = {order + row * s, lo + row * s, hi + row * s, buckets ? buckets + row * tp * rounds : NULL,
               heads, tp, e, rounds, (row / heads) * tp, row % heads, (REAL)scale, (REAL)self_score,
               log_count, 0, 0, 0, 0, 0, 0, ring->width, 0, ring->pos, ring->off, ring->bk, ring->inv, norm, (REAL)eps,
               {ring->sources[0], ring->sources[1]}, {ring->columns[0], ring->columns[1]}, ring->n_sources};
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

int lsh_band_forward(const REAL *q, const REAL *norm, const REAL *v, const int64_t *order, const int64_t *lo,
                     const int64_t *hi, const int64_t *buckets, REAL *y, REAL *lse, int64_t heads, int64_t tp,
                     int64_t e, int64_t rounds, int64_t row_begin, int64_t row_end, double scale,
                     double self_score, double eps) {
    e = DIM(e);
    const int64_t s = rounds * tp, width = round_up(widest_block(lo, hi, s, row_begin, row_end), VL);
    REAL *out = malloc(s * e * sizeof(REAL)); /* each item's round output, unsorted (r * Tp + p) order */
    REAL *lse_u = malloc(s * sizeof(REAL)), *score = malloc(width * sizeof(REAL));
    REAL *products = aligned(QB * width), *log_count = log_counts(rounds);
    ring_t ring;
    int status = (ring_alloc(&ring, width, e, rounds, q, NULL) == 0 && out && lse_u && score && products && log_count) ? 0 : -1;
    const int64_t *off = ring.off;
    for (int64_t row = row_begin; row < row_end && status == 0; row++) {
        row_t r = start_row(order, lo, hi, buckets, norm, eps, row, heads, tp, e, rounds, scale, self_score, log_count, &ring);
        for (int64_t i0 = 0; i0 < s; i0 += QB) {
            const int64_t i1 = min64(i0 + QB, s);
            const REAL *queries[QB];
            for (int64_t i = i0; i < i1; i++) queries[i - i0] = q + offset(&r, i);
            begin_block(&r, i0, i1);
            block_products(&r, queries, ring.columns[0], products);
            for (int64_t i = i0; i < i1; i++) {
                if (i + QB < s) prefetch_row(q + offset(&r, i + QB), e); /* the next block's keys */
                if (i + AHEAD < s) prefetch_row(v + offset(&r, i + AHEAD), e), prefetch_row(out + r.ord[i + AHEAD] * e, e);
                const int64_t la = r.lo[i] - r.a0, lb = r.hi[i] - r.a0;
                const REAL m = band_scores(&r, products, i - i0, score);
                REAL *o = out + r.ord[i] * e, sum = 0;
                for (int64_t j = 0; j <= lb - la; j++) sum += score[j] = exp(score[j] - m);
                weighted_sum(o, score, off + r.c0 + la, lb - la + 1, v, e);
                for (int64_t x = 0; x < DIM(e); x++) o[x] /= sum;
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
    free(out), free(lse_u), free(score), free(products), free(log_count), ring_free(&ring);
    return status;
}

/* Gradients with respect to the queries (both roles: the keys are the queries made unit, so the key
 * gradients go through that normalisation, as F.normalize's backward does) and the values, written to gq
 * and gv (every vector once: the caller need not zero them).
 *
 * With G = w_r dL/dy (the round's share of the output gradient) and y the merged output,
 * dL/dscore_ij = P_ij (G . v_j - G . y): the round merge's logsumexp path included (lsh_sorted.py).
 * A row's gradients are summed in scratch of its own (Tp, E) (compact: the random updates stay in a
 * sixteenth of the memory of the (batch, Tp, H, E) layout) and written out once at the end of the row. */
int lsh_band_backward(const REAL *q, const REAL *norm, const REAL *v, const REAL *grad_y, const REAL *y,
                      const int64_t *order, const int64_t *lo, const int64_t *hi, const int64_t *buckets,
                      const REAL *lse, REAL *gq, REAL *gv, int64_t heads, int64_t tp, int64_t e, int64_t rounds,
                      int64_t row_begin, int64_t row_end, double scale, double self_score, double eps) {
    e = DIM(e);
    const int64_t s = rounds * tp, width = round_up(widest_block(lo, hi, s, row_begin, row_end), VL);
    REAL *lse_u = malloc(s * sizeof(REAL)), *score = malloc(width * sizeof(REAL));
    /* per position: the largest of its rounds' lse and the sum of exp(lse - largest), the weights' denominator.
     * The weights are formed exactly as in the forward pass: near SELF_SCORE, m + log(total) would be rounded */
    REAL *lse_max = malloc(tp * sizeof(REAL)), *lse_sum = malloc(tp * sizeof(REAL));
    REAL *products = aligned(QB * width);
    REAL *g_dot_v = aligned(QB * width), *g = aligned(QB * e), *g_dot_y = malloc(QB * sizeof(REAL));
    REAL *gq_i = malloc(e * sizeof(REAL)), *log_count = log_counts(rounds);
    REAL *gq_row = aligned(tp * e), *gk_row = aligned(tp * e), *gv_row = aligned(tp * e); /* (Tp, E) each */
    ring_t ring;
    int status = (ring_alloc(&ring, width, e, rounds, q, v) == 0 && lse_u && lse_max && lse_sum && score && products &&
                  g_dot_v && g && g_dot_y && gq_i && log_count && gq_row && gk_row && gv_row)
                     ? 0
                     : -1;
    const int64_t *off = ring.off, *pos = ring.pos;
    const REAL *inv = ring.inv;
    for (int64_t row = row_begin; row < row_end && status == 0; row++) {
        row_t r = start_row(order, lo, hi, buckets, norm, eps, row, heads, tp, e, rounds, scale, self_score, log_count, &ring);
        const REAL *lse_row = lse + row * s;
        for (int64_t i = 0; i < s; i++) lse_u[r.ord[i]] = lse_row[i];
        for (int64_t p = 0; p < tp; p++) lse_sum[p] = rounds_lse(lse_u, p, tp, rounds, lse_max + p);
        memset(gq_row, 0, tp * e * sizeof(REAL)), memset(gk_row, 0, tp * e * sizeof(REAL));
        memset(gv_row, 0, tp * e * sizeof(REAL));
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
            begin_block(&r, i0, i1);
            block_products(&r, queries, ring.columns[0], products);
            block_products(&r, gs, ring.columns[1], g_dot_v);
            for (int64_t i = i0; i < i1; i++) {
                if (i + QB < s) {
                    const int64_t next = offset(&r, i + QB);
                    prefetch_row(q + next, e), prefetch_row(v + next, e), prefetch_row(grad_y + next, e);
                    prefetch_row(y + next, e);
                }
                const int64_t t = i - i0, la = r.lo[i] - r.a0, lb = r.hi[i] - r.a0, at = offset(&r, i);
                band_scores(&r, products, t, score);
                const int64_t band = r.c0 + la; /* ring column of the band's first key */
                for (int64_t j = 0; j <= lb - la; j++) {
                    /* a band of the query alone: weight 1 exactly (score and lse are near SELF_SCORE, where
                     * float32 steps are 0.008 apart, so their difference would be off by that much) */
                    const REAL p = la == lb ? 1 : exp(score[j] - lse_row[i]);
                    const REAL ds = p * (g_dot_v[t * r.lp + la + j] - g_dot_y[t]) * r.scale;
                    axpy(gk_row + pos[band + j] * e, ds, q + at, e);
                    axpy(gv_row + pos[band + j] * e, p, g + t * e, e);
                    score[j] = ds * inv[band + j]; /* the query's gradient, over the key rows q_j / |q_j| */
                }
                weighted_sum(gq_i, score, off + band, lb - la + 1, q, e);
                axpy(gq_row + (r.ord[i] % tp) * e, 1, gq_i, e);
            }
        }
        for (int64_t p = 0; p < tp; p++) { /* write the row out; key gradients through the normalisation */
            const int64_t at = ((r.base + p) * heads + r.h) * e;
            const REAL n = norm[at / e], factor = 1 / (n > eps ? n : eps), *gk_p = gk_row + p * e;
            /* (g - k (k . g)) / |q| with k = q / |q|; where the norm was clamped to eps only g / eps */
            const REAL along = n < eps ? 0 : dot(q + at, gk_p, e) * factor * factor;
            for (int64_t x = 0; x < e; x++) {
                gq[at + x] = gq_row[p * e + x] + (gk_p[x] - q[at + x] * along) * factor;
                gv[at + x] = gv_row[p * e + x];
            }
        }
    }
    free(lse_u), free(lse_max), free(lse_sum), free(score), free(products), free(g_dot_v), free(g);
    free(g_dot_y), free(gq_i), free(log_count), free(gq_row), free(gk_row), free(gv_row), ring_free(&ring);
    return status;
}
