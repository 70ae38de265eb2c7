/* streamref.c - the streamed exact reference (see streamref.h). */
#include <omp.h>
#include <stdlib.h>
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "replay/instances.h"
#include "replay/streamref.h"

int replay_streamref_answer(replay_batch *b, replay *r, replay_shard *sh, int mi, const int64_t *p, kv_err *err)
{
    replay_instance *x = &r->inst[mi];
    int64_t S = r->S, cnt = b->cnt, d = r->d, dv = r->dv, plast = p[cnt - 1];
    size_t sl = KV_PSTATE_LEN(dv);
    double t0 = omp_get_wtime();
    size_t *len = kv_malloc(sizeof(size_t) * (size_t)(S * cnt), err);
    if (!len) return err->code;
    for (int64_t i = 0; i < S * cnt; i++) kv_partial_clear(b->send + ((size_t)mi * S * cnt + (size_t)i) * sl, (int)dv);
    sh->loaded = -1; /* the staging buffers are ours until the walk reads again */
    int bad = 0;
    for (int64_t c = r->rank; c * r->C < plast && !bad; c += r->P) {
        int64_t c0 = c * r->C, n = replay_min64(r->C, r->n - c0);
        if (kv_trace_read_kv(r->tr, c0, n, sh->K, sh->V, err)) break;
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (r->par_streams)
        for (int64_t s = 0; s < S; s++) {
            size_t *ls = len + s * cnt;
            for (int64_t q = 0; q < cnt; q++) /* tokens of this chunk query q sees: non-decreasing in q */
                ls[q] = (size_t)(p[q] <= c0 ? 0 : replay_min64(p[q] - c0, n));
            bad |= kv_attn_fold_multi(b->Q + s * cnt * d, (int)cnt, ls, sh->K + s * n * d, sh->V + s * n * dv,
                                      (int)d, (int)dv, (float)r->in->scale,
                                      b->send + ((size_t)mi * S + s) * cnt * sl) != KV_OK;
        }
    }
    free(len);
    x->t_query += omp_get_wtime() - t0;
    if (bad && !err->code)
        kv_seterr(err, KV_EINTERNAL, "--reference stream: out of memory answering queries at prefixes %lld..%lld",
                  (long long)p[0], (long long)plast);
    return err->code;
}
