/* test_hooks.c - the collectives behind the method hooks (mpi/merge.h):
 * feedback's (m, l) merge and select's top-L list merge.  Run under mpiexec
 * with 1..4 ranks.  Every rank can make every rank's input (a hash of rank
 * and index), so each checks the merged result against a serial one. */
#include <float.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "mpi/merge.h"
#include "testutil.h"

#define NML 1000

/* rank r's pair i: every 7th empty, m in [-20, 20), l in [0.5, 1.5) */
static void ml_input(int r, int i, double *m, double *l)
{
    uint64_t h = kv_hash4(11, (uint64_t)r, (uint64_t)i, 0);
    if (i % 7 == (r % 7)) {
        *m = -INFINITY;
        *l = 0;
        return;
    }
    *m = -20 + 40 * (double)(h >> 11) / 9007199254740992.0;
    *l = 0.5 + (double)(kv_hash4(12, (uint64_t)r, (uint64_t)i, 0) >> 11) / 9007199254740992.0;
}

/* bitwise the same on every rank: max and min over ranks of the bits agree */
static int same_everywhere(const double *x, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        int64_t b, lo, hi;
        memcpy(&b, &x[i], sizeof b);
        MPI_Allreduce(&b, &lo, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&b, &hi, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
        ok &= lo == hi;
    }
    return ok;
}

static void ml_tests(int rank, int P)
{
    double *ml = malloc(sizeof(double) * 2 * (NML + 1));
    for (int i = 0; i < NML; i++) ml_input(rank, i, &ml[2 * i], &ml[2 * i + 1]);
    ml[2 * NML] = rank == P - 1; /* the error flag's pair: the last rank raises it */
    ml[2 * NML + 1] = 0;
    CHECK(kv_ml_allreduce(ml, NML + 1, MPI_COMM_WORLD) == MPI_SUCCESS, "ml allreduce");
    /* each pairwise merge rounds two exps, a product and a sum per term:
     * <= 4 eps per level, at most P - 1 levels */
    double tol = 4.0 * P * DBL_EPSILON, worst = 0;
    int mbad = 0, empties = 0;
    for (int i = 0; i < NML; i++) {
        double M = -INFINITY, L = 0, m, l;
        for (int r = 0; r < P; r++) {
            ml_input(r, i, &m, &l);
            if (m > M) M = m;
        }
        for (int r = 0; r < P; r++) {
            ml_input(r, i, &m, &l);
            if (m > -INFINITY) L += l * exp(m - M);
        }
        mbad += ml[2 * i] != M; /* a max is exact */
        if (M == -INFINITY) {
            empties++;
            mbad += ml[2 * i + 1] != 0; /* empty stays empty, no NaN */
        } else {
            double e = fabs(ml[2 * i + 1] - L) / L;
            if (!(e <= worst)) worst = e; /* NaN counts as worst */
        }
    }
    CHECK(mbad == 0, "%d merged pairs with a wrong m (or an empty one not empty)", mbad);
    CHECK(worst <= tol, "l off by %.3g relative (tolerance %.3g)", worst, tol);
    CHECK(P > 1 || empties > 0, "the one-rank case has empty pairs to check");
    CHECK(ml[2 * NML] == 1 && ml[2 * NML + 1] == 0, "error flag pair (%g, %g), expected (1, 0)", ml[2 * NML],
          ml[2 * NML + 1]);
    CHECK(same_everywhere(ml, 2 * (NML + 1)), "merged pairs differ between ranks");
    /* no flag raised: (0, 0) */
    double f[2] = { 0, 0 };
    CHECK(kv_ml_allreduce(f, 1, MPI_COMM_WORLD) == MPI_SUCCESS && f[0] == 0 && f[1] == 0, "no flag: (%g, %g)", f[0],
          f[1]);
    free(ml);
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* rank r's list c of length L: 0..L values (some repeated across ranks), descending, -inf padded */
static void list_input(int r, int c, int L, double *x)
{
    int k = (int)(kv_hash4(21, (uint64_t)r, (uint64_t)c, 0) % (uint64_t)(L + 1));
    for (int i = 0; i < L; i++)
        x[i] = i < k ? (double)(kv_hash4(22, (uint64_t)(r & 1), (uint64_t)c, (uint64_t)i) % 1000) - 500 : -INFINITY;
    qsort(x, (size_t)L, sizeof(double), cmp_desc);
}

static void topk_tests(int rank, int P, int L, int count)
{
    double *x = malloc(sizeof(double) * (size_t)count * L), *all = malloc(sizeof(double) * (size_t)P * L);
    for (int c = 0; c < count; c++) list_input(rank, c, L, x + (size_t)c * L);
    CHECK(kv_topk_allreduce(x, (size_t)count, L, MPI_COMM_WORLD) == MPI_SUCCESS, "topk allreduce L=%d", L);
    int bad = 0;
    for (int c = 0; c < count; c++) {
        for (int r = 0; r < P; r++) list_input(r, c, L, all + (size_t)r * L);
        qsort(all, (size_t)P * L, sizeof(double), cmp_desc); /* the L largest of the union, with multiplicity */
        bad += memcmp(all, x + (size_t)c * L, sizeof(double) * (size_t)L) != 0;
    }
    CHECK(bad == 0, "L=%d: %d of %d merged lists are not the L largest of the union", L, bad, count);
    CHECK(same_everywhere(x, (size_t)count * L), "L=%d: merged lists differ between ranks", L);
    free(x);
    free(all);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    ml_tests(rank, P);
    topk_tests(rank, P, 1, 50);
    topk_tests(rank, P, 16, 200);
    topk_tests(rank, P, 300, 20); /* past kv_topk_merge's 256-entry stack buffer */
    int rc = kv_test_result("test_hooks");
    int any = 0;
    MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}
