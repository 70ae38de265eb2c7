/* conform_ckpt.c - the checkpoint and memory-bound part of the conformance
 * checks (conform.h): save/load/max_bytes of one method spec through its
 * kv_method_ops, on generated data.
 *
 * For each of two data layouts (one rank; rank 1 of 3 emulated with
 * chunk-cyclic shards, so held indices have gaps) a fixed schedule of ingest
 * blocks and partial() calls is run:
 *   - uninterrupted (instance A), recording every partial state and bytes()
 *     (a method with a feedback hook gets each call's own (m, l) back);
 *   - interrupted at 0, 1 or 2 points (save, free, create, load, go on):
 *     every later partial state and bytes() must equal A's bitwise, load
 *     must consume the whole buffer, and saving the loaded state again must
 *     give the same bytes; every other interruption goes through the
 *     replay's bounded path, saved and loaded in pieces of 7 bytes (odd, so
 *     no field is aligned to a piece);
 *   - max_bytes (ctx.shard_tokens = the rank's tokens) >= every bytes() seen,
 *     and the same before and after the run.
 * On a small saved state (in a child process, so a crash is reported as a
 * failure of that method): every prefix (or a dense sample) must be rejected
 * with KV_EINPUT "checkpoint: ..."; overwriting 8 bytes anywhere with a set
 * of bad values (all bits flipped, one high bit flipped, -1, INT64_MAX, ...)
 * must give KV_OK or that error (and an accepted state must survive further
 * use, for ASan to watch); and every length, count or index field (any 8
 * bytes that read as an int64 in [0, bytes + n]: keys, values, scores and
 * generator words never do) must be rejected when overwritten with -1, its
 * complement or INT64_MAX. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <omp.h>
#include "conform.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "testutil.h"

/* ---- data and a schedule of operations for one rank ---- */
enum { OP_INGEST, OP_PARTIAL };
typedef struct {
    int kind;
    int64_t first; /* ingest: tokens first..first+n-1 */
    size_t n;
    int64_t p;     /* partial: prefix length, nq queries from Q + qoff */
    int nq;
    size_t qoff;
    size_t soff;   /* partial: offset of its states in a record */
} op;

typedef struct {
    const char *name;
    int d, dv, P, rank;
    int64_t n, C, shard;
    float *K, *V, *Q;
    op *ops;
    int nops;
    size_t nstates; /* doubles of all partial states */
    int small_end;  /* ops [0, small_end): the small state for corruption tests */
} world;

static int owned(const world *w, int64_t g) { return (g / w->C) % w->P == w->rank; }

/* first token >= g owned by the rank (n if none) */
static int64_t next_owned(const world *w, int64_t g)
{
    while (g < w->n && !owned(w, g)) g = (g / w->C + 1) * w->C;
    return g < w->n ? g : w->n;
}

static void world_make(world *w, const char *name, int d, int dv, int64_t n, int P, int rank, int64_t C, uint64_t seed)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 3, 4);
    memset(w, 0, sizeof *w);
    w->name = name;
    w->d = d; w->dv = dv; w->n = n; w->P = P; w->rank = rank; w->C = C;
    w->K = malloc(sizeof(float) * (size_t)(n * d));
    w->V = malloc(sizeof(float) * (size_t)(n * dv));
    for (int64_t i = 0; i < n * d; i++) w->K[i] = (float)(1.5 * kv_rng_normal(&r));
    for (int64_t i = 0; i < n * dv; i++) w->V[i] = (float)(0.3 + kv_rng_normal(&r));
    for (int64_t g = 0; g < n; g++) w->shard += owned(w, g);
    size_t cap = 64, qcap = 0, qlen = 0;
    w->ops = malloc(sizeof(op) * cap);
    int64_t g = next_owned(w, 0), fed = 0;
    while (g < n) {
        int64_t chunk_end = (g / C + 1) * C < n ? (g / C + 1) * C : n;
        int64_t len = kv_rng_below(&r, 8) == 0 ? 1 + (int64_t)kv_rng_below(&r, 400) : 1 + (int64_t)kv_rng_below(&r, 60);
        if (len > chunk_end - g) len = chunk_end - g;
        if (w->nops + 2 > (int)cap) w->ops = realloc(w->ops, sizeof(op) * (cap *= 2));
        fed += len;
        w->ops[w->nops++] = (op){ .kind = OP_INGEST, .first = g, .n = (size_t)len };
        g = next_owned(w, g + len);
        if (kv_rng_below(&r, 2) == 0 || g >= n) {
            /* the rank holds exactly its tokens < p for any p up to its next token */
            int64_t e = w->ops[w->nops - 1].first + len;
            int64_t p = e + (int64_t)kv_rng_below(&r, (uint64_t)(g - e + 1));
            int nq = 1 + (int)kv_rng_below(&r, 5);
            if (qlen + (size_t)(nq * d) > qcap) {
                qcap = qcap ? 2 * qcap : 4096;
                while (qlen + (size_t)(nq * d) > qcap) qcap *= 2;
                w->Q = realloc(w->Q, sizeof(float) * qcap);
            }
            for (int i = 0; i < nq * d; i++) w->Q[qlen + i] = (float)kv_rng_normal(&r);
            w->ops[w->nops++] = (op){ .kind = OP_PARTIAL, .p = p, .nq = nq, .qoff = qlen, .soff = w->nstates };
            qlen += (size_t)(nq * d);
            w->nstates += (size_t)nq * KV_PSTATE_LEN(dv);
            if (!w->small_end && fed >= 100) w->small_end = w->nops;
        }
    }
    if (!w->small_end) w->small_end = w->nops;
}

static kv_method_ctx world_ctx(const world *w, kv_semantics sem)
{
    kv_method_ctx c = conform_ctx(w->d, w->dv, w->n, sem);
    c.rank = w->rank;
    c.nranks = w->P;
    c.shard_tokens = w->shard;
    return c;
}

/* ---- running a method ---- */
typedef struct {
    const kv_method_ops *ops;
    const char *spec;
    kv_method_ctx ctx;
} method;

static void *make(const method *m)
{
    kv_spec *sp = NULL;
    int count = 0;
    void *st = NULL;
    kv_err err;
    kv_err_clear(&err);
    if (kv_spec_parse_list(m->spec, &sp, &count, &err) || m->ops->create(&sp[0], &m->ctx, &st, &err)) {
        CHECK(0, "%s: create failed: %s", m->spec, err.msg);
        st = NULL;
    }
    free(sp);
    return st;
}

typedef struct {
    double *st;    /* every partial state, in schedule order */
    size_t *bytes; /* bytes() after each op */
} record;

/* ops [from, to) on st; into rec, or compared with ref (mismatches counted) */
static int run(const world *w, const method *m, void *st, int from, int to, record *rec, const record *ref,
               size_t *peak, const float *zeroq)
{
    size_t sl = KV_PSTATE_LEN(w->dv);
    double *tmp = malloc(sizeof(double) * sl * 8);
    int bad = 0;
    kv_err err;
    for (int i = from; i < to; i++) {
        const op *o = &w->ops[i];
        if (o->kind == OP_INGEST) {
            kv_err_clear(&err);
            int rc = m->ops->ingest(st, w->K + o->first * w->d, w->V + o->first * w->dv, o->first, o->n, &err);
            CHECK(rc == KV_OK, "%s/%s: ingest: %s", m->spec, w->name, err.msg);
            /* a deciding method decides after each block, alone (testutil.h) */
            CHECK(kv_test_decide(m->ops, st, o->first + (int64_t)o->n, 1) == KV_OK, "%s/%s: decide", m->spec, w->name);
        } else {
            CHECK(kv_test_decide(m->ops, st, o->p, 1) == KV_OK, "%s/%s: decide", m->spec, w->name);
            double *out = rec ? rec->st + o->soff : tmp;
            const float *Q = zeroq ? zeroq : w->Q + o->qoff;
            m->ops->partial(st, Q, o->nq, o->p, out);
            if (ref) bad += memcmp(out, ref->st + o->soff, sizeof(double) * sl * (size_t)o->nq) != 0;
            if (m->ops->feedback) { /* this rank's own (m, l) stand for the merged ones */
                double ml[16];
                for (int q = 0; q < o->nq; q++) {
                    ml[2 * q] = out[q * sl + KV_PS_M];
                    ml[2 * q + 1] = out[q * sl + KV_PS_L];
                }
                CHECK(m->ops->feedback(st, Q, o->nq, o->p, ml) == KV_OK, "%s/%s: feedback", m->spec, w->name);
            }
        }
        size_t b = m->ops->bytes(st);
        if (rec) rec->bytes[i] = b;
        if (ref) bad += b != ref->bytes[i];
        if (peak && b > *peak) *peak = b;
    }
    free(tmp);
    return bad;
}

static int save(const method *m, const void *st, kv_buf *b)
{
    kv_buf_init(b);
    m->ops->save(st, b);
    return !b->failed;
}

static int load(const method *m, void *st, const uint8_t *data, size_t len, size_t *pos, kv_err *err)
{
    kv_rd rd = { .data = data, .len = len, .pos = 0, .what = m->ops->name };
    kv_err_clear(err);
    int rc = m->ops->load(st, &rd, err);
    if (pos) *pos = rd.pos;
    return rc;
}

/* a bounded buffer's sink: the pieces appended to a growable buffer, each
 * where the bytes before it end */
static int collect(void *ctx, const void *p, size_t n, size_t at)
{
    kv_buf *all = ctx;
    if (at != all->len) return 1;
    kv_buf_put(all, p, n);
    return all->failed;
}

static int mem_fill(void *ctx, void *dst, size_t n, size_t at, kv_err *err)
{
    (void)err;
    memcpy(dst, (const uint8_t *)ctx + at, n);
    return KV_OK;
}

/* the replay's checkpoint path with a 7-byte piece: save counted, then
 * through a bounded buffer (the same bytes as b1, never more than 7 held),
 * and load from a reader refilling a 7-byte window from b1 */
#define PIECE 7
static int load_pieces(const method *m, void *st, const kv_buf *b1, size_t *pos, kv_err *err)
{
    kv_rd_src src;
    kv_err_clear(err);
    if (kv_rd_src_init(&src, b1->len, PIECE, mem_fill, b1->data, err)) return err->code;
    kv_rd rd = kv_rd_of_src(&src, m->ops->name);
    int rc = m->ops->load(st, &rd, err);
    *pos = rd.pos;
    CHECK(src.peak <= PIECE, "%s: the reader's window held %zu bytes", m->spec, src.peak);
    kv_rd_src_free(&src);
    return rc;
}

static void save_pieces(const method *m, const void *st, const kv_buf *b1)
{
    kv_buf cnt, all, bb;
    kv_buf_init_count(&cnt);
    m->ops->save(st, &cnt);
    CHECK(!cnt.failed && cnt.total == b1->len && !cnt.data, "%s: counted %zu bytes, saved %zu", m->spec, cnt.total,
          b1->len);
    kv_buf_init(&all);
    kv_buf_init_bounded(&bb, PIECE, collect, &all);
    m->ops->save(st, &bb);
    kv_buf_flush(&bb);
    CHECK(!bb.failed && bb.peak <= PIECE && bb.cap <= PIECE && bb.total == b1->len && all.len == b1->len &&
              (!all.len || !memcmp(all.data, b1->data, all.len)),
          "%s: saved in %d-byte pieces: %zu bytes (held at most %zu), %zu saved whole", m->spec, PIECE, all.len,
          bb.peak, b1->len);
    kv_buf_free(&bb);
    kv_buf_free(&all);
}

/* Run with interruptions at cuts[0..ncut): every state after the first cut
 * must match ref.  Odd cuts go through the bounded path (load_pieces). */
static void check_resume(const world *w, const method *m, const record *ref, const int *cuts, int ncut)
{
    void *st = make(m);
    if (!st) return;
    int at = 0, bad = 0;
    for (int c = 0; c < ncut; c++) {
        bad += run(w, m, st, at, cuts[c], NULL, c ? ref : NULL, NULL, NULL);
        at = cuts[c];
        size_t before = m->ops->bytes(st);
        kv_buf b1, b2;
        CHECK(save(m, st, &b1), "%s/%s: save failed at op %d", m->spec, w->name, at);
        if (c % 2 == ncut % 2) save_pieces(m, st, &b1);
        m->ops->free(st);
        st = make(m);
        if (!st) { kv_buf_free(&b1); return; }
        size_t pos = 0;
        kv_err err;
        int rc = c % 2 == ncut % 2 ? load_pieces(m, st, &b1, &pos, &err) : load(m, st, b1.data, b1.len, &pos, &err);
        CHECK(rc == KV_OK, "%s/%s: load at op %d: %s", m->spec, w->name, at, err.msg);
        if (rc) { kv_buf_free(&b1); m->ops->free(st); return; }
        CHECK(pos == b1.len, "%s/%s: load read %zu of %zu bytes", m->spec, w->name, pos, b1.len);
        CHECK(m->ops->bytes(st) == before, "%s/%s: bytes() %zu after load, %zu before", m->spec, w->name,
              m->ops->bytes(st), before);
        CHECK(save(m, st, &b2) && b2.len == b1.len && !memcmp(b1.data, b2.data, b1.len),
              "%s/%s: saving the loaded state gives different bytes (%zu vs %zu)", m->spec, w->name, b2.len, b1.len);
        kv_buf_free(&b1);
        kv_buf_free(&b2);
    }
    bad += run(w, m, st, at, w->nops, NULL, ref, NULL, NULL);
    CHECK(bad == 0, "%s/%s: %d partial states or bytes() differ after resuming at %d point(s) (first %d)", m->spec,
          w->name, bad, ncut, ncut ? cuts[0] : -1);
    m->ops->free(st);
}

/* ---- malformed input ---- */

/* Load a corrupted copy; an accepted state is used further, for ASan to
 * watch its indices and counts.  Zero queries: a corrupted but finite key
 * can make logits overflow, which is the kernels' business, not load's. */
static int load_bad(const world *w, const method *m, const uint8_t *data, size_t len, kv_err *err)
{
    static const float zeroq[5 * 64]; /* nq <= 5, d <= 64 */
    void *st = make(m);
    if (!st) return -1;
    int rc = load(m, st, data, len, NULL, err);
    if (rc == KV_OK) {
        int to = w->small_end + 3 < w->nops ? w->small_end + 3 : w->nops; /* an ingest and a partial or two */
        run(w, m, st, w->small_end, to, NULL, NULL, NULL, zeroq);
    }
    m->ops->free(st);
    return rc;
}

static int64_t get64(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }

static void check_malformed(const world *w, const method *m)
{
    void *st = make(m);
    if (!st) return;
    run(w, m, st, 0, w->small_end, NULL, NULL, NULL, NULL);
    kv_buf b;
    int ok = save(m, st, &b);
    m->ops->free(st);
    CHECK(ok, "%s/%s: save failed", m->spec, w->name);
    if (!ok) { kv_buf_free(&b); return; }
    size_t len = b.len;
    /* every byte of a small state; else dense near the ends, where headers
     * and the last fields are, and about 400 offsets in between (odd
     * stride: every alignment of an 8-byte field is reached) */
    size_t stride = len <= 2048 ? 1 : len / 400 | 1;
#define SAMPLED(i) ((i) < 256 || (i) + 256 > len || (i) % stride == 0)
    kv_err err;
    int trunc_bad = 0, first_bad = -1;
    for (size_t cut = 0; cut < len; cut++) {
        if (!SAMPLED(cut)) continue;
        int rc = load_bad(w, m, b.data, cut, &err);
        if (rc != KV_EINPUT || strncmp(err.msg, "checkpoint: ", 12)) {
            if (!trunc_bad++) first_bad = (int)cut;
        }
    }
    CHECK(trunc_bad == 0, "%s/%s: %d truncated states (of %zu bytes) not rejected with KV_EINPUT, first at %d bytes",
          m->spec, w->name, trunc_bad, len, first_bad);

    uint8_t *c = malloc(len);
    int other = 0, missed = 0, tried = 0;
    size_t first_miss = 0;
    for (size_t i = 0; i + 8 <= len; i++) {
        if (!SAMPLED(i)) continue;
        int64_t v = get64(b.data + i);
        int lengthlike = v >= 0 && v <= (int64_t)len + w->n; /* floats and doubles never read so small */
        /* the first three make the field negative or huge even when i is
         * not where it starts (the field's high bytes become 0xff); the
         * others may leave a valid state (a ring's head, say) */
        const int64_t evil[] = { -1, ~v, INT64_MAX, v ^ (INT64_C(1) << 62), INT64_MIN,
                                 (int64_t)((uint64_t)v + 1), (int64_t)((uint64_t)v - 8), (int64_t)len };
        for (size_t e = 0; e < sizeof evil / sizeof evil[0]; e++) {
            if (evil[e] == v) continue;
            memcpy(c, b.data, len);
            memcpy(c + i, &evil[e], 8);
            int rc = load_bad(w, m, c, len, &err);
            if (rc != KV_OK && (rc != KV_EINPUT || strncmp(err.msg, "checkpoint: ", 12))) other++;
            /* a length, count or index made negative or huge must be caught */
            if (lengthlike && e < 3) {
                tried++;
                if (rc != KV_EINPUT && !missed++) first_miss = i;
            }
        }
    }
    CHECK(other == 0, "%s/%s: %d corrupted states gave an error other than KV_EINPUT \"checkpoint: ...\"", m->spec,
          w->name, other);
    CHECK(missed == 0, "%s/%s: %d of %d negated/huge integer fields accepted (first at byte %zu of %zu)", m->spec,
          w->name, missed, tried, first_miss, len);
#undef SAMPLED
    free(c);
    kv_buf_free(&b);
}

/* The malformed-input checks in a child process, so that a method whose load
 * accepts a state it then crashes on is reported, not the end of the test.
 * The child's FAIL lines go to stderr; its exit status says how it went. */
static void check_malformed_isolated(const world *w, const method *m)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        omp_set_num_threads(1); /* the parent's OpenMP threads do not exist here */
        int before = kv_test_found();
        check_malformed(w, m);
        fflush(stdout);
        fflush(stderr);
        _exit(kv_test_found() == before ? 0 : 10);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "%s/%s: fork failed", m->spec, w->name);
    if (pid <= 0) return;
    CHECK(!WIFSIGNALED(status), "%s/%s: malformed-input test crashed with signal %d (a corrupted state was accepted "
          "and then used)", m->spec, w->name, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    CHECK(!WIFEXITED(status) || WEXITSTATUS(status) == 0, "%s/%s: malformed-input test %s", m->spec, w->name,
          WIFEXITED(status) && WEXITSTATUS(status) == 10 ? "failed (see above)" : "hit a sanitizer error (see above)");
}

/* ---- one method on one data layout ---- */
static void check_world(const world *w, const kv_method_ops *ops, const char *spec, kv_semantics sem)
{
    method m = { ops, spec, world_ctx(w, sem) };
    record ref = { malloc(sizeof(double) * (w->nstates ? w->nstates : 1)), malloc(sizeof(size_t) * (size_t)w->nops) };
    void *a = make(&m);
    if (!a) { free(ref.st); free(ref.bytes); return; }
    size_t peak = m.ops->bytes(a);
    int64_t mb0 = m.ops->max_bytes(a); /* from spec and ctx alone: the same before and after */
    run(w, &m, a, 0, w->nops, &ref, NULL, &peak, NULL);
    int64_t mb = m.ops->max_bytes(a);
    CHECK(mb == mb0, "%s/%s: max_bytes changed from %lld to %lld", spec, w->name, (long long)mb0, (long long)mb);
    CHECK(mb >= (int64_t)peak, "%s/%s: max_bytes %lld < peak bytes() %zu", spec, w->name, (long long)mb, peak);
    m.ops->free(a);
    int n = w->nops;
    int one[] = { 0 }, mid[] = { n / 2 }, two[] = { n / 3, 2 * n / 3 }, end[] = { n }, odd[] = { 1, n - 1 };
    check_resume(w, &m, &ref, one, 1);
    check_resume(w, &m, &ref, mid, 1);
    check_resume(w, &m, &ref, two, 2);
    check_resume(w, &m, &ref, end, 1);
    check_resume(w, &m, &ref, odd, 2);
    free(ref.st);
    free(ref.bytes);
    check_malformed_isolated(w, &m);
}

void conform_checkpoints(const kv_method_ops *ops, const char *spec, kv_semantics sem)
{
    static world ws[2];
    static int made;
    if (!made) {
        world_make(&ws[0], "1 rank, d=32 dv=16", 32, 16, 3000, 1, 0, 3000, 11);
        world_make(&ws[1], "rank 1 of 3, d=5 dv=3", 5, 3, 1800, 3, 1, 37, 12);
        made = 1; /* kept for the process: the worlds are the same for every method */
    }
    for (int i = 0; i < 2; i++) check_world(&ws[i], ops, spec, sem);
}
