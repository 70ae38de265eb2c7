/* attn_rows.h - the row source of the exact kernels (private to
 * kernels/attn.c and kernels/attn_par.c).
 *
 * Keys and values as held (kvsrc: contiguous float32 or half rows, or
 * float32 rows in pages laid end to end), the row pointers of the tile a
 * kernel works on (rowwin: a window moved on a tile at a time, spanning
 * page boundaries, reaching past the tile to the rows the prefetch asks
 * for), the prefetch runs over them (pfrun), and the serial tile fold
 * (kv_attn_fold_core, kernels/attn.c) that the entry points in attn_par.c
 * drive over slices.  Static inline: the prefetch steps run inside the
 * tile kernels' loops. */
#ifndef KVSTREAM_ATTN_ROWS_H
#define KVSTREAM_ATTN_ROWS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/kverr.h"
#include "kernels/half.h"

#define TILE 64  /* tokens per tile: K and V tiles of d=128 are 32 KiB each */
#ifndef KV_TILE_ONE
#define KV_TILE_ONE 64 /* tile of the few-query path */
#endif
_Static_assert(KV_TILE_ONE <= TILE, "the few-query path keeps its logits in rows of TILE floats");
#ifndef KV_PF_LOCALITY
#define KV_PF_LOCALITY 2 /* into L2: the next tiles do not fit in L1 with the current one */
#endif
#ifndef KV_PF_TOKENS
#define KV_PF_TOKENS 128 /* software prefetch distance in tokens (0: off); 128 measured best here */
#endif
/* The few-query path's prefetch: the rows KV_PF1_TOKENS ahead of the tile
 * (0: off), spread over the whole tile's work (see pfrun) */
#ifndef KV_PF1_TOKENS
#define KV_PF1_TOKENS 32 /* 16-64 measured alike on Zen 5, 32 a little ahead; 0: none (half the rate) */
#endif
#ifndef KV_PF1_LOCALITY
#define KV_PF1_LOCALITY 3
#endif


/* Rows to prefetch a few lines at a time, spread over a tile's compute: in
 * one burst the requests stall on the miss buffers and the memory idles
 * while the tile's arithmetic runs (Zen 5: the hardware prefetchers alone
 * get about half a plain stream's read rate out of a kernel that alternates
 * loads and arithmetic).  Every line: one per 256 or 1024 bytes (left to
 * the hardware to fill in) measured slower.  Step s of `steps` asks for its
 * share of the bytes: plain locals, no state kept in memory between steps. */
typedef struct {
    const char *p;            /* contiguous bytes from p, or (p NULL) */
    const float *const *rows; /* rows of rowb bytes each (paged sources); both NULL: no prefetch */
    size_t bytes, rowb;
    size_t rps;               /* rows: whole rows per step (pf_per), 0 if a step ends inside a row */
} pfrun;

/* bytes per step (whole lines) for `steps` steps over the run */
static inline size_t pf_per(pfrun *r, size_t steps)
{
    size_t per = (r->bytes / 64 + steps - 1) / steps * 64;
    r->rps = r->rows && per % r->rowb == 0 ? per / r->rowb : 0;
    return per;
}

static inline void pf_step(pfrun r, size_t per, size_t s)
{
    size_t o = s * per, e = (s + 1) * per < r.bytes ? (s + 1) * per : r.bytes;
    if (r.p) {
        for (; o < e; o += 64) __builtin_prefetch(r.p + o, 0, KV_PF1_LOCALITY);
    } else if (r.rows && o < e) { /* row by row from o's row on (a division only when rows straddle steps) */
        size_t i = r.rps ? s * r.rps : o / r.rowb, b = o - i * r.rowb;
        for (; o < e; o += 64, b += 64) {
            if (b >= r.rowb) { i++; b = 0; }
            __builtin_prefetch((const char *)r.rows[i] + b, 0, KV_PF1_LOCALITY);
        }
    }
}

/* Keys and values as held: float32 (esz 4) or half (esz 2) rows at K, V;
 * or (np > 0) float32 rows in np pages laid end to end, page i holding
 * pn[i] rows at pk[i], pv[i]. */
typedef struct {
    const char *K, *V;
    size_t esz;
    const float *const *pk, *const *pv;
    const size_t *pn;
    size_t np;
} kvsrc;

static inline kvsrc src_at(kvsrc s, size_t a, int d, int dv)
{
    s.K += a * (size_t)d * s.esz;
    s.V += a * (size_t)dv * s.esz;
    return s;
}

/* rows [t0, t0 + nt) of A (w wide) as floats: A itself, or converted into buf */
static inline const float *tile_f32(const char *A, size_t esz, size_t t0, int nt, int w, float *buf)
{
    if (esz == sizeof(float)) return (const float *)A + t0 * (size_t)w;
    kv_half_to_f32((const uint16_t *)A + t0 * (size_t)w, (size_t)nt * w, buf);
    return buf;
}

/* Scratch for one converted tile of keys and values (half sources only). */
static inline int tile_bufs(size_t esz, int rows, int d, int dv, float **kb, float **vb)
{
    *kb = *vb = NULL;
    if (esz == sizeof(float)) return KV_OK;
    *kb = malloc(sizeof(float) * (size_t)rows * d);
    *vb = malloc(sizeof(float) * (size_t)rows * dv);
    if (*kb && *vb) return KV_OK;
    free(*kb);
    free(*vb);
    return KV_EINTERNAL;
}

/* Row pointers of the tokens a tile works on, k[0..nt) and v[0..nt).
 * Contiguous sources: the tile's rows, set per tile.  Paged: a window of
 * rows [t0, t0 + have) entered from the page cursor (page p, row r),
 * reaching past the tile to the rows the prefetch asks for, and moved on
 * a tile at a time: a tile spans page boundaries like any other rows. */
#define PF_MAX (KV_PF_TOKENS > KV_PF1_TOKENS ? KV_PF_TOKENS : KV_PF1_TOKENS)
#define WIN (TILE + (PF_MAX > TILE ? PF_MAX : TILE))
typedef struct {
    kvsrc s;
    int d, dv;
    size_t n, t0, have, p, r;
    const float *k[WIN], *v[WIN];
} rowwin;

static inline void rows_init(rowwin *w, kvsrc s, size_t n, int d, int dv)
{
    w->s = s;
    w->d = d;
    w->dv = dv;
    w->n = n;
    w->t0 = w->have = w->p = w->r = 0;
}

/* The tile [t0, t0 + nt)'s key rows (half: converted into kb); paged, the
 * window moved on to t0 and filled to t0 + reach (capped at n, reach in
 * [nt, WIN]), values too. */
static inline void rows_keys(rowwin *w, size_t t0, int nt, size_t reach, float *kb)
{
    if (!w->s.np) {
        const float *K = tile_f32(w->s.K, w->s.esz, t0, nt, w->d, kb);
        for (int i = 0; i < nt; i++) w->k[i] = K + (size_t)i * w->d;
        return;
    }
    size_t drop = t0 - w->t0; /* the last tile's rows: fewer than held */
    if (drop) {
        w->have -= drop;
        memmove(w->k, w->k + drop, sizeof w->k[0] * w->have);
        memmove(w->v, w->v + drop, sizeof w->v[0] * w->have);
        w->t0 = t0;
    }
    size_t end = w->n - t0 < reach ? w->n : t0 + reach;
    while (w->t0 + w->have < end) {
        if (w->r == w->s.pn[w->p]) { /* page done (or empty) */
            w->p++;
            w->r = 0;
            continue;
        }
        const float *K = w->s.pk[w->p] + w->r * (size_t)w->d, *V = w->s.pv[w->p] + w->r * (size_t)w->dv;
        size_t c = w->s.pn[w->p] - w->r, want = end - w->t0 - w->have;
        if (c > want) c = want;
        for (size_t i = 0; i < c; i++) {
            w->k[w->have + i] = K + i * (size_t)w->d;
            w->v[w->have + i] = V + i * (size_t)w->dv;
        }
        w->have += c;
        w->r += c;
    }
}

/* The tile's value rows (half: converted into vb; paged: already there). */
static inline void rows_vals(rowwin *w, size_t t0, int nt, float *vb)
{
    if (w->s.np) return;
    const float *V = tile_f32(w->s.V, w->s.esz, t0, nt, w->dv, vb);
    for (int i = 0; i < nt; i++) w->v[i] = V + (size_t)i * w->dv;
}

/* Prefetch run of cnt key (or value) rows from row a, as held, capped at n
 * (paged: within the window rows_keys filled) */
static inline pfrun rows_pf(const rowwin *w, size_t a, size_t cnt, int vals)
{
    pfrun r = { NULL, NULL, 0, 0, 0 };
    if (a >= w->n || !cnt) return r;
    if (cnt > w->n - a) cnt = w->n - a;
    r.rowb = (size_t)(vals ? w->dv : w->d) * w->s.esz;
    r.bytes = cnt * r.rowb;
    if (w->s.np) r.rows = (vals ? w->v : w->k) + (a - w->t0);
    else r.p = (vals ? w->s.V : w->s.K) + a * r.rowb;
    return r;
}

static inline kvsrc src_f32(const float *K, const float *V) { return (kvsrc){ .K = (const char *)K, .V = (const char *)V, .esz = sizeof(float) }; }
static inline kvsrc src_f16(const uint16_t *K, const uint16_t *V) { return (kvsrc){ .K = (const char *)K, .V = (const char *)V, .esz = 2 }; }

/* The serial fold behind every entry point.  Query q sees tokens
 * [0, len[q] - off) of src's n rows (capped at n; len NULL: all n), with
 * len non-decreasing.  Each tile is streamed once: queries whose prefix
 * covers it take it whole, the ones whose prefix ends inside it get a
 * masked tail (their P is zero past the end, so the P.V sums are those of
 * the shorter tile), and those whose prefix ends before it stop.  A
 * query's arithmetic is that of kv_attn_fold on its own prefix with the
 * same path (batched: the caller decides, from the whole call, so every
 * slice of one call takes the same).  Merges into st (nq states). */
int kv_attn_fold_core(const float *Q, int nq, const size_t *len, size_t off, kvsrc src,
                      size_t n, int d, int dv, float scale, double *st, int batched);

/* Its batched tiles (kernels/attn_lanes.c): the same arguments, folding
 * into run (nq running states, already cleared) instead of merging. */
int kv_attn_fold_lanes(const float *Q, int nq, const size_t *len, size_t off, kvsrc src,
                       size_t n, int d, int dv, float scale, double *run);

/* Prefix length of query q within this call's n tokens at offset off
 * (len NULL: all n). */
static inline size_t qlen(const size_t *len, int q, size_t off, size_t n)
{
    return len ? (len[q] <= off ? 0 : len[q] - off < n ? len[q] - off : n) : n;
}

#endif
