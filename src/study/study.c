/* study.c - see study.h */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "study/study.h"

int kv_study_add(kv_study *s, const char *spec, kv_err *err)
{
    size_t need = s->len + strlen(spec) + 2;
    if (need > s->cap) {
        size_t cap = need > 2 * s->cap ? need : 2 * s->cap;
        char *p = realloc(s->list, cap);
        if (!p) return kv_seterr(err, KV_EINTERNAL, "study: out of memory");
        s->list = p;
        s->cap = cap;
    }
    s->len += (size_t)snprintf(s->list + s->len, s->cap - s->len, "%s%s", s->n ? "," : "", spec);
    s->n++;
    return KV_OK;
}

int kv_study_run(const kv_study *s, kv_replay_opts *ro, MPI_Comm comm, kv_replay_result *res, kv_err *err)
{
    if (!s->n) return kv_seterr(err, KV_EINTERNAL, "study: no instances to replay");
    ro->methods = s->list;
    if (kv_replay_run(ro, comm, res, err)) return err->code;
    if (res->n_methods < s->n) {
        kv_replay_result_free(res);
        return kv_seterr(err, KV_EINTERNAL, "study: the replay measured %d of %d instances", res->n_methods, s->n);
    }
    return KV_OK;
}

void kv_study_free(kv_study *s)
{
    free(s->list);
    *s = (kv_study){ 0 };
}
