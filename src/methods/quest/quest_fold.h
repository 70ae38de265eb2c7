/* quest_fold.h - Quest's state, shared by quest.c (ingest, bounds, page
 * selection, save/load) and quest_fold.c (the fold over the selected
 * pages' rows).  See quest.c's header for the method. */
#ifndef KVSTREAM_QUEST_FOLD_H
#define KVSTREAM_QUEST_FOLD_H

#include <stddef.h>
#include <stdint.h>
#include "methods/method.h"

#define TIE_BITS 21
#define NEWEST ((double)(INT64_C(1) << 54)) /* key of the newest page: above every bound's */

typedef struct { int64_t g, first, row, cnt; } qpage; /* page g: global tokens first.., local rows row.. */
typedef struct { double key; int64_t j; } pcand;       /* a page (table index j) and its key */

/* Bounds are held a tile of PT pages at a time, channel-major (page j's
 * channel c minimum at BD_LO(j, c), maximum at BD_HI(j, c)), so one query's
 * bounds of a tile's pages are one vector expression per channel. */
#define PT 16
#define BD_TILE(s, j) ((s)->bd + ((j) / PT) * 2 * (size_t)(s)->ctx.d * PT)
#define BD_LO(s, j, c) (BD_TILE(s, j)[(size_t)(c) * PT + (j) % PT])
#define BD_HI(s, j, c) (BD_TILE(s, j)[((size_t)(s)->ctx.d + (c)) * PT + (j) % PT])

typedef struct {
    kv_method_ctx ctx;
    int64_t page, pages;
    float *K, *V;
    size_t n, cap;       /* rows held, allocated */
    qpage *pt;           /* pages in stream order */
    float *bd;           /* bounds: per tile of PT pages, d minima then d maxima per page, channel-major */
    size_t np, pcap;
    kv_query_cost cost;
    /* select's lists kept for the partial_select of the same batch (as
     * topk's): per query its candidate pages and keys, their count, the
     * largest key left out; transient per-batch scratch */
    float *cq;
    int64_t *cp, *cn;
    pcand *cl;
    double *cout;
    int cnq;
} quest_state;

/* pages with a token < p: a prefix of the table */
static inline size_t quest_pages_below(const quest_state *s, int64_t p)
{
    size_t lo = 0, hi = s->np;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->pt[mid].first < p) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* rows of page j with global index < p */
static inline int64_t quest_rows_below(const quest_state *s, size_t j, int64_t p)
{
    int64_t r = p - s->pt[j].first;
    return r < s->pt[j].cnt ? r : s->pt[j].cnt;
}

/* per query, where each channel's bound term is read within a tile */
void kv_quest_bound_offsets(int d, const float *q, size_t *off);

/* the keys of the pages of tile t below table index n for query q at prefix p into key[0..PT) */
void kv_quest_tile_keys(const quest_state *s, size_t t, size_t n, const float *q, const size_t *off, int64_t p,
                        double *key);

/* a thread's scratch for kv_quest_fold_one, grown as needed (not per query) */
typedef struct {
    pcand *pg;
    double *a;
    uint64_t *bit; /* a bit per page below p */
    size_t npg, na, nbit;
} kv_quest_scratch;

/* One query: fold this rank's pages with key >= thr (select's list cl of
 * cn pages when it holds them all: out, the largest key it left out, is
 * below thr), their rows < p, into st; c gets what it read.  0 or
 * KV_EINTERNAL. */
int kv_quest_fold_one(const quest_state *s, const float *q, int64_t p, double thr, const pcand *cl, int64_t cn,
                      double out, double *st, kv_query_cost *c, kv_quest_scratch *w);

#endif
