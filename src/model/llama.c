/* llama.c - llama2.c checkpoint loader and forward pass (see llama.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "kernels/attn.h"
#include "model/llama.h"

/* Below these many multiply-adds a parallel region costs more than it saves
 * (stories260K's matrices are 64 x 64). */
#define PAR_MIN_WORK 32768L

struct kv_llama {
    kv_llama_config c;
    float *data; /* every float after the header, one allocation */
    const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
};

struct kv_llama_state {
    int64_t len;      /* positions in the cache */
    int64_t cap;      /* positions the cache can hold */
    int n_layers, dim, kvd, n_caches; /* copied from the model: sizes of the buffers below */
    float *x, *xb, *xb2, *hb, *hb2, *logits;
    float *q, *out;   /* [n_layers][dim]: per-layer query and attention output of the last step */
    float *k, *v;     /* [n_layers][kv_dim]: per-layer key and value of the last step */
    float **kc, **vc; /* per (layer, kv head) [head_dim][cap], transposed so the
                         loops over positions are unit-stride and vectorise */
    double *scores;   /* [n_heads][cap] */
    float *w;         /* [n_heads][cap] softmax weights */
    double *acc;      /* [n_heads][head_dim] */
    double *rope_cos, *rope_sin; /* [head_dim/2] for the current position */
};

/* ------------------------------------------------------------------ loading */

/* Largest values accepted from a header; far beyond any real llama2.c model,
 * small enough that size arithmetic cannot overflow int64. */
enum { MAX_DIM = 1 << 16, MAX_HIDDEN = 1 << 18, MAX_LAYERS = 1024, MAX_VOCAB = 1 << 22, MAX_SEQ = 1 << 24 };

static int check_range(const char *path, const char *name, int v, int hi, kv_err *err)
{
    if (v < 1 || v > hi)
        return kv_seterr(err, KV_EINPUT, "%s: bad llama2.c header: %s = %d (must be in 1..%d)", path, name, v, hi);
    return KV_OK;
}

static int parse_header(const char *path, const int32_t h[7], kv_llama_config *c, kv_err *err)
{
    c->dim = h[0]; c->hidden_dim = h[1]; c->n_layers = h[2]; c->n_heads = h[3]; c->n_kv_heads = h[4];
    c->seq_len = h[6];
    if (h[5] < -MAX_VOCAB || h[5] == 0 || h[5] > MAX_VOCAB)
        return kv_seterr(err, KV_EINPUT, "%s: bad llama2.c header: vocab_size = %d (must be in 1..%d, negative for an unshared classifier)",
                         path, h[5], MAX_VOCAB);
    c->vocab_size = h[5] < 0 ? -h[5] : h[5];
    c->shared_classifier = h[5] > 0;
    if (check_range(path, "dim", c->dim, MAX_DIM, err) || check_range(path, "hidden_dim", c->hidden_dim, MAX_HIDDEN, err) ||
        check_range(path, "n_layers", c->n_layers, MAX_LAYERS, err) || check_range(path, "n_heads", c->n_heads, c->dim, err) ||
        check_range(path, "seq_len", c->seq_len, MAX_SEQ, err))
        return err->code;
    if (c->dim % c->n_heads)
        return kv_seterr(err, KV_EINPUT, "%s: bad llama2.c header: dim %d is not divisible by n_heads %d", path, c->dim, c->n_heads);
    if (check_range(path, "n_kv_heads", c->n_kv_heads, c->n_heads, err)) return err->code;
    if (c->n_heads % c->n_kv_heads)
        return kv_seterr(err, KV_EINPUT, "%s: bad llama2.c header: n_heads %d is not divisible by n_kv_heads %d", path,
                         c->n_heads, c->n_kv_heads);
    c->head_dim = c->dim / c->n_heads;
    if (c->head_dim % 2) /* RoPE rotates pairs */
        return kv_seterr(err, KV_EINPUT, "%s: bad llama2.c header: head_dim %d (dim / n_heads) must be even", path, c->head_dim);
    return KV_OK;
}

/* Number of floats after the header that the config implies. */
static int64_t weight_floats(const kv_llama_config *c)
{
    int64_t D = c->dim, H = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    int64_t kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t n = V * D                          /* token embedding */
              + L * D                          /* rms_att */
              + L * D * D + 2 * L * D * kv     /* wq, wk, wv */
              + L * D * D                      /* wo */
              + L * D                          /* rms_ffn */
              + 3 * L * H * D                  /* w1, w2, w3 */
              + D                              /* rms_final */
              + (int64_t)c->seq_len * c->head_dim; /* two legacy RoPE tables of seq_len*head_dim/2 */
    if (!c->shared_classifier) n += V * D;
    return n;
}

static void map_weights(kv_llama *m)
{
    const kv_llama_config *c = &m->c;
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, L = (size_t)c->n_layers, V = (size_t)c->vocab_size;
    size_t kv = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    const float *p = m->data;
    m->emb = p;       p += V * D;
    m->rms_att = p;   p += L * D;
    m->wq = p;        p += L * D * D;
    m->wk = p;        p += L * D * kv;
    m->wv = p;        p += L * D * kv;
    m->wo = p;        p += L * D * D;
    m->rms_ffn = p;   p += L * D;
    m->w1 = p;        p += L * H * D;
    m->w2 = p;        p += L * D * H;
    m->w3 = p;        p += L * H * D;
    m->rms_final = p; p += D;
    p += (size_t)c->seq_len * (size_t)c->head_dim; /* legacy RoPE tables */
    m->wcls = c->shared_classifier ? m->emb : p;
}

kv_llama *kv_llama_load(const char *path, kv_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        kv_seterr(err, KV_EINPUT, "%s: cannot open model checkpoint: %s", path, strerror(errno));
        return NULL;
    }
    kv_llama *m = NULL;
    struct stat sb;
    int32_t h[7];
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        kv_seterr(err, KV_EINPUT, "%s: model checkpoint is not a regular file", path);
        goto fail;
    }
    if (sb.st_size < (off_t)sizeof h) {
        kv_seterr(err, KV_EINPUT, "%s: file is %lld bytes, too short for the 28-byte llama2.c header", path, (long long)sb.st_size);
        goto fail;
    }
    if (fread(h, sizeof h, 1, f) != 1) {
        kv_seterr(err, KV_EINPUT, "%s: cannot read the llama2.c header: %s", path, strerror(errno));
        goto fail;
    }
    m = kv_calloc(1, sizeof *m, err);
    if (!m) goto fail;
    if (parse_header(path, h, &m->c, err)) goto fail;

    const kv_llama_config *c = &m->c;
    int64_t nf = weight_floats(c), want = (int64_t)sizeof h + 4 * nf;
    if ((int64_t)sb.st_size != want) {
        kv_seterr(err, KV_EINPUT,
                  "%s: file is %lld bytes but its header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, "
                  "vocab %d %s, seq_len %d) implies %lld bytes: %s",
                  path, (long long)sb.st_size, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                  c->vocab_size, c->shared_classifier ? "shared" : "unshared", c->seq_len, (long long)want,
                  (int64_t)sb.st_size < want ? "truncated or header corrupt" : "trailing data or header corrupt");
        goto fail;
    }
    m->data = kv_malloc((size_t)nf * sizeof(float), err);
    if (!m->data) goto fail;
    if (fread(m->data, sizeof(float), (size_t)nf, f) != (size_t)nf) {
        kv_seterr(err, KV_EINPUT, "%s: reading %lld weights failed: %s", path, (long long)nf,
                  ferror(f) ? strerror(errno) : "unexpected end of file");
        goto fail;
    }
    for (int64_t i = 0; i < nf; i++)
        if (!isfinite(m->data[i])) {
            kv_seterr(err, KV_EINPUT, "%s: weight %lld (byte offset %lld) is not finite: corrupt checkpoint", path,
                      (long long)i, (long long)(sizeof h + 4 * i));
            goto fail;
        }
    fclose(f);
    map_weights(m);
    return m;
fail:
    fclose(f);
    kv_llama_free(m);
    return NULL;
}

void kv_llama_free(kv_llama *m)
{
    if (!m) return;
    free(m->data);
    free(m);
}

const kv_llama_config *kv_llama_get_config(const kv_llama *m) { return &m->c; }

/* ------------------------------------------------------------------ run state */

kv_llama_state *kv_llama_state_new(const kv_llama *m, kv_err *err)
{
    const kv_llama_config *c = &m->c;
    size_t D = (size_t)c->dim, L = (size_t)c->n_layers, hd = (size_t)c->head_dim;
    kv_llama_state *st = kv_calloc(1, sizeof *st, err);
    if (!st) return NULL;
    st->n_layers = c->n_layers;
    st->dim = c->dim;
    st->kvd = c->n_kv_heads * c->head_dim;
    st->n_caches = c->n_layers * c->n_kv_heads;
    st->x = kv_malloc(D * sizeof(float), err);
    st->xb = kv_malloc(D * sizeof(float), err);
    st->xb2 = kv_malloc(D * sizeof(float), err);
    st->hb = kv_malloc((size_t)c->hidden_dim * sizeof(float), err);
    st->hb2 = kv_malloc((size_t)c->hidden_dim * sizeof(float), err);
    st->logits = kv_malloc((size_t)c->vocab_size * sizeof(float), err);
    st->q = kv_calloc(L * D, sizeof(float), err);
    st->out = kv_calloc(L * D, sizeof(float), err);
    st->k = kv_calloc(L * (size_t)st->kvd, sizeof(float), err);
    st->v = kv_calloc(L * (size_t)st->kvd, sizeof(float), err);
    st->kc = kv_calloc((size_t)st->n_caches, sizeof(float *), err);
    st->vc = kv_calloc((size_t)st->n_caches, sizeof(float *), err);
    st->acc = kv_malloc((size_t)c->n_heads * hd * sizeof(double), err);
    st->rope_cos = kv_malloc(hd / 2 * sizeof(double), err);
    st->rope_sin = kv_malloc(hd / 2 * sizeof(double), err);
    if (!st->x || !st->xb || !st->xb2 || !st->hb || !st->hb2 || !st->logits || !st->q || !st->out || !st->k ||
        !st->v || !st->kc || !st->vc || !st->acc || !st->rope_cos || !st->rope_sin) {
        kv_llama_state_free(st);
        return NULL;
    }
    return st;
}

void kv_llama_state_free(kv_llama_state *st)
{
    if (!st) return;
    free(st->x); free(st->xb); free(st->xb2); free(st->hb); free(st->hb2); free(st->logits);
    free(st->q); free(st->out); free(st->acc); free(st->rope_cos); free(st->rope_sin); free(st->scores);
    free(st->w); free(st->k); free(st->v);
    for (int i = 0; i < st->n_caches; i++) {
        if (st->kc) free(st->kc[i]);
        if (st->vc) free(st->vc[i]);
    }
    free(st->kc); free(st->vc);
    free(st);
}

/* Make room for at least `need` positions.  The caches are transposed,
 * [head_dim][cap], so growing re-lays them out; doubling keeps that O(1)
 * per position.  Everything is allocated before anything is replaced, so a
 * failure leaves the state as it was. */
static int grow(const kv_llama *m, kv_llama_state *st, int64_t need, kv_err *err)
{
    if (need <= st->cap) return KV_OK;
    const kv_llama_config *c = &m->c;
    int64_t cap = st->cap ? st->cap : 256;
    while (cap < need) cap *= 2;
    int nc = st->n_caches, hd = c->head_dim;
    size_t bytes = (size_t)cap * (size_t)hd * sizeof(float);
    float **fresh = kv_calloc(2 * (size_t)nc, sizeof(float *), err);
    double *s = malloc((size_t)cap * (size_t)c->n_heads * sizeof(double));
    float *w = malloc((size_t)cap * (size_t)c->n_heads * sizeof(float));
    int ok = fresh && s && w;
    for (int i = 0; ok && i < 2 * nc; i++) ok = (fresh[i] = malloc(bytes)) != NULL;
    if (!ok) {
        for (int i = 0; fresh && i < 2 * nc; i++) free(fresh[i]);
        free(fresh); free(s); free(w);
        return kv_seterr(err, KV_EINTERNAL, "out of memory growing the KV cache to %lld positions", (long long)cap);
    }
    for (int i = 0; i < nc; i++) {
        for (int r = 0; st->len && r < hd; r++) {
            memcpy(fresh[i] + (size_t)r * cap, st->kc[i] + (size_t)r * st->cap, (size_t)st->len * sizeof(float));
            memcpy(fresh[nc + i] + (size_t)r * cap, st->vc[i] + (size_t)r * st->cap, (size_t)st->len * sizeof(float));
        }
        free(st->kc[i]);
        free(st->vc[i]);
        st->kc[i] = fresh[i];
        st->vc[i] = fresh[nc + i];
    }
    free(fresh);
    free(st->scores);
    free(st->w);
    st->scores = s;
    st->w = w;
    st->cap = cap;
    return KV_OK;
}

/* ------------------------------------------------------------------ forward pass */

static void rmsnorm(float *o, const float *x, const float *w, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + 1e-5));
    for (int i = 0; i < n; i++) o[i] = w[i] * (r * x[i]);
}

/* y = W x with W [n_out][n_in].  Each row is summed by one thread (in SIMD
 * lanes fixed at compile time), so the result does not depend on the thread
 * count. */
static void matvec(float *y, const float *W, const float *x, int n_in, int n_out)
{
#pragma omp parallel for schedule(static) if ((long)n_in * n_out >= PAR_MIN_WORK)
    for (int i = 0; i < n_out; i++) {
        const float *w = W + (size_t)i * (size_t)n_in;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < n_in; j++) s += w[j] * x[j];
        y[i] = s;
    }
}

/* Rotate consecutive pairs of each head by the current position's angles. */
static void rope(float *v, int n_heads, int hd, const double *cs, const double *sn)
{
    for (int h = 0; h < n_heads; h++) {
        float *p = v + (size_t)h * hd;
        for (int j = 0; j < hd / 2; j++) {
            double a = p[2 * j], b = p[2 * j + 1];
            p[2 * j] = (float)(a * cs[j] - b * sn[j]);
            p[2 * j + 1] = (float)(a * sn[j] + b * cs[j]);
        }
    }
}

/* Attention of every query head of layer l over cached positions 0..pos:
 * logits and softmax sums in double, max-shifted; the exponentials of the
 * shifted logits (all <= 0) in float with the vectorised kv_expf_neg
 * (relative error ~1e-7, below float32 output precision).  Parallel over
 * query heads, each head on one thread, so the result does not depend on the
 * thread count. */
static void attention(const kv_llama *m, kv_llama_state *st, int l, int64_t pos)
{
    const kv_llama_config *c = &m->c;
    int hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    int64_t np = pos + 1;
    double scale = 1.0 / sqrt((double)hd);
#pragma omp parallel for schedule(static) if ((long)c->n_heads * np * hd >= PAR_MIN_WORK)
    for (int h = 0; h < c->n_heads; h++) {
        const float *q = st->q + (size_t)l * c->dim + (size_t)h * hd;
        int cache = l * c->n_kv_heads + h / group;
        const float *K = st->kc[cache], *V = st->vc[cache];
        double *s = st->scores + (size_t)h * (size_t)st->cap, *acc = st->acc + (size_t)h * hd;
        float *w = st->w + (size_t)h * (size_t)st->cap;
        size_t cap = (size_t)st->cap;
        /* s[t] = sum_i q[i] k[i][t], each summed in order i = 0, 1, ... */
        for (int64_t t = 0; t < np; t++) s[t] = 0;
        for (int i = 0; i < hd; i++) {
            const float *k = K + (size_t)i * cap;
            double qi = q[i];
#pragma omp simd
            for (int64_t t = 0; t < np; t++) s[t] += qi * k[t];
        }
        double mx = -INFINITY;
        for (int64_t t = 0; t < np; t++) {
            s[t] *= scale;
            mx = s[t] > mx ? s[t] : mx;
        }
        for (int64_t t = 0; t < np; t++) w[t] = (float)(s[t] - mx);
        kv_expf_neg(w, (size_t)np);
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < np; t++) sum += w[t];
        for (int i = 0; i < hd; i++) {
            const float *v = V + (size_t)i * cap;
            double a = 0;
#pragma omp simd reduction(+ : a)
            for (int64_t t = 0; t < np; t++) a += (double)w[t] * v[t];
            acc[i] = a;
        }
        float *o = st->out + (size_t)l * c->dim + (size_t)h * hd;
        for (int i = 0; i < hd; i++) o[i] = (float)(acc[i] / sum);
    }
}

int kv_llama_step(const kv_llama *m, kv_llama_state *st, int token, int64_t pos, const float **logits, kv_err *err)
{
    const kv_llama_config *c = &m->c;
    if (token < 0 || token >= c->vocab_size)
        return kv_seterr(err, KV_EINPUT, "token id %d is outside the vocabulary [0, %d)", token, c->vocab_size);
    if (pos < 0 || pos > st->len)
        return kv_seterr(err, KV_EINPUT, "position %lld is not in [0, %lld] (positions must be run in order)",
                         (long long)pos, (long long)st->len);
    if (grow(m, st, pos + 1, err)) return err->code;

    int D = c->dim, H = c->hidden_dim, hd = c->head_dim;
    int kvd = c->n_kv_heads * hd;
    /* RoPE angles in double: pos * freq loses digits in float at large pos */
    for (int j = 0; j < hd / 2; j++) {
        double freq = pow(10000.0, -(double)(2 * j) / hd);
        double a = (double)pos * freq;
        st->rope_cos[j] = cos(a);
        st->rope_sin[j] = sin(a);
    }
    memcpy(st->x, m->emb + (size_t)token * D, (size_t)D * sizeof(float));

    for (int l = 0; l < c->n_layers; l++) {
        size_t lD = (size_t)l * D;
        float *q = st->q + lD;
        float *k = st->k + (size_t)l * kvd, *v = st->v + (size_t)l * kvd;
        rmsnorm(st->xb, st->x, m->rms_att + lD, D);
        matvec(q, m->wq + lD * D, st->xb, D, D);
        matvec(k, m->wk + lD * kvd, st->xb, D, kvd);
        matvec(v, m->wv + lD * kvd, st->xb, D, kvd);
        rope(q, c->n_heads, hd, st->rope_cos, st->rope_sin);
        rope(k, c->n_kv_heads, hd, st->rope_cos, st->rope_sin);
        for (int h = 0; h < c->n_kv_heads; h++) {
            int cache = l * c->n_kv_heads + h;
            for (int i = 0; i < hd; i++) {
                st->kc[cache][(size_t)i * st->cap + pos] = k[h * hd + i];
                st->vc[cache][(size_t)i * st->cap + pos] = v[h * hd + i];
            }
        }
        attention(m, st, l, pos);
        matvec(st->xb2, m->wo + lD * D, st->out + lD, D, D);
        for (int i = 0; i < D; i++) st->x[i] += st->xb2[i];

        /* SwiGLU feed-forward */
        size_t lHD = (size_t)l * H * D;
        rmsnorm(st->xb, st->x, m->rms_ffn + lD, D);
        matvec(st->hb, m->w1 + lHD, st->xb, D, H);
        matvec(st->hb2, m->w3 + lHD, st->xb, D, H);
        for (int i = 0; i < H; i++) {
            float g = st->hb[i];
            st->hb[i] = g / (1.0f + expf(-g)) * st->hb2[i];
        }
        matvec(st->xb, m->w2 + lHD, st->hb, H, D);
        for (int i = 0; i < D; i++) st->x[i] += st->xb[i];
    }
    rmsnorm(st->xb, st->x, m->rms_final, D);
    matvec(st->logits, m->wcls, st->xb, D, c->vocab_size);
    st->len = pos + 1;
    if (logits) *logits = st->logits;
    return KV_OK;
}

void kv_llama_layer(const kv_llama_state *st, int layer, kv_llama_layer_io *io)
{
    size_t lD = (size_t)layer * (size_t)st->dim, lK = (size_t)layer * (size_t)st->kvd;
    io->q = st->q + lD;
    io->out = st->out + lD;
    io->k = st->k + lK;
    io->v = st->v + lK;
}

int kv_llama_argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* Two passes over the logits instead of a probability buffer: the sum, then
 * the walk to the sampled mass. */
int kv_llama_sample(const float *logits, int n, double temperature, kv_rng *rng)
{
    double mx = logits[0], sum = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    for (int i = 0; i < n; i++) sum += exp((logits[i] - mx) / temperature);
    double r = kv_rng_uniform(rng) * sum, c = 0;
    for (int i = 0; i < n; i++) {
        c += exp((logits[i] - mx) / temperature);
        if (r < c) return i;
    }
    return kv_llama_argmax(logits, n); /* rounding left r just above the total */
}
