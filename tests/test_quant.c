/* test_quant.c - Q8_0 and Q4_0: the SIMD kernel against the scalar
   reference on random and adversarial blocks, and whole models quantized on
   load against the golden f32 results: top-1 agreement of the logits and
   the mse_nrm of block-K vectors. */
#define NLA_EXPERIMENTAL
#include "../nla.h"
#include "test.h"
#include "util.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* The model's matmul against the scalar reference for w [rows, n] and x
   [n_x, n]: each |simd - ref| relative to the sum of |w_i x_i| (the scale of
   rounding); the integer sums are exact in both, only the float
   accumulation order differs. */
static void check_matmul(const float *w, const float *x, int rows, int n_x, int n, const char *what) {
    static float ref[64 * 64], simd[64 * 64]; /* rows * n_x */
    for (int dt = NLA_DTYPE_Q8_0; dt <= NLA_DTYPE_Q4_0; dt++) {
        CHECK_EQ(nla_kernel_matmul((nla_dtype)dt, w, x, rows, n_x, n, 0, ref), NLA_OK);
        CHECK_EQ(nla_kernel_matmul((nla_dtype)dt, w, x, rows, n_x, n, 1, simd), NLA_OK);
        int bad = 0;
        for (int t = 0; t < n_x; t++)
            for (int r = 0; r < rows; r++) {
                double mag = 0, a = simd[t * rows + r], b = ref[t * rows + r];
                for (int i = 0; i < n; i++) mag += fabs((double)w[(size_t)r * n + i] * x[(size_t)t * n + i]);
                if (!(isfinite(a) && isfinite(b) && fabs(a - b) <= 1e-5 * mag + 1e-30) && !bad++)
                    fprintf(stderr, "%s %s [%d x %d x %d]: row %d of input %d: simd %g vs ref %g\n", what,
                            dt == NLA_DTYPE_Q8_0 ? "q8_0" : "q4_0", rows, n_x, n, r, t, a, b);
            }
        CHECK_MSG(!bad, "%s: %d of %d outputs differ", what, bad, rows * n_x);
        /* batch invariance: each input alone gives the same bits (decode and
           batched decode, one sequence or many, agree exactly) */
        static float one[64]; /* rows */
        int differ = 0;
        for (int t = 0; t < n_x; t++) {
            CHECK_EQ(nla_kernel_matmul((nla_dtype)dt, w, x + (size_t)t * n, rows, 1, n, 1, one), NLA_OK);
            differ += memcmp(one, simd + (size_t)t * rows, (size_t)rows * sizeof(float)) != 0;
        }
        CHECK_MSG(!differ, "%s [%d x %d x %d]: %d inputs give other bits alone than in the batch", what, rows, n_x, n, differ);
    }
}

/* The same data as one long row and one input, and as a whole group of
   16 rows met by 8 inputs at once (the widest kernel step). */
static void check_kernels(const float *w, const float *x, int n, const char *what) {
    check_matmul(w, x, 1, 1, n, what);
    check_matmul(w, x, 16, 8, n / 16, what);
}

static void test_kernels(void) {
    enum { N = 4096 };
    static float w[N], x[N];
    printf("  SIMD kernel: %s\n", nla_kernel_simd());
    for (int rep = 0; rep < 20; rep++) {
        for (int i = 0; i < N; i++) { w[i] = (float)(urand() * 2 - 1); x[i] = (float)((urand() * 2 - 1) * 50); }
        check_kernels(w, x, N, "random");
    }
    memset(w, 0, sizeof w);
    check_kernels(w, x, N, "all-zero weights");
    memset(x, 0, sizeof x);
    check_kernels(w, x, N, "all-zero");
    for (int i = 0; i < N; i++) { w[i] = (i % 7 ? 1e-40f : -3e-39f); x[i] = (float)(urand() - 0.5); } /* denormals */
    check_kernels(w, x, N, "denormals");
    for (int i = 0; i < N; i++) { w[i] = (float)(urand() - 0.5) * 6e4f; x[i] = (float)(urand() - 0.5) * 1e30f; } /* f16 range edge, huge x */
    check_kernels(w, x, N, "huge values");
    for (int i = 0; i < N; i++) { w[i] = i % 32 == 5 ? 100.0f : 0.01f; x[i] = i % 32 == 9 ? -1e4f : 1.0f; } /* outliers */
    check_kernels(w, x, N, "outliers");
    float out;
    CHECK_EQ(nla_kernel_matmul(NLA_DTYPE_Q8_0, w, x, 1, 1, 33, 0, &out), NLA_ERR_ARG);
    CHECK_EQ(nla_kernel_matmul(NLA_DTYPE_BF16, w, x, 1, 1, 32, 0, &out), NLA_ERR_ARG);
    /* groups of 16 rows, whole and padded (rows % 16), and inputs met 8, 4,
       2 and 1 at a time (n_x = 15 = 8 + 4 + 2 + 1) */
    static const int shape[][3] = {{1, 1, 32}, {4, 4, 64}, {5, 3, 96}, {3, 5, 32}, {9, 9, 160}, {8, 17, 64}, {16, 2, 256},
                                   {2, 40, 96}, {16, 8, 32}, {17, 15, 64}, {33, 6, 96}, {48, 13, 32}}; /* rows n_x n; n_x n <= N */
    for (size_t k = 0; k < sizeof shape / sizeof *shape; k++) {
        const int rows = shape[k][0], nx = shape[k][1], n = shape[k][2];
        for (int i = 0; i < rows * n; i++) w[i] = (float)(urand() * 2 - 1);
        for (int i = 0; i < nx * n; i++) x[i] = (float)((urand() * 2 - 1) * 3);
        check_matmul(w, x, rows, nx, n, "tile shapes");
    }
    /* exactness of the integer core: a block of small integers */
    for (int i = 0; i < 32; i++) { w[i] = (float)(i % 15 - 7); x[i] = (float)(127 - i); }
    double exact = 0;
    for (int i = 0; i < 32; i++) exact += (double)w[i] * x[i];
    float q8;
    CHECK_EQ(nla_kernel_matmul(NLA_DTYPE_Q8_0, w, x, 1, 1, 32, 1, &q8), NLA_OK);
    CHECK_NEAR(q8, exact, 1e-3 * fabs(exact) + 1);
}

static float *logits_of(const char *dir, nla_quant q, const int32_t *ids, int T, int V, float *hidden) {
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.quant = q;
    nla_model *m;
    char err[512];
    if (nla_model_open(dir, &mp, &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return NULL; }
    nla_model_info in;
    nla_model_get_info(m, &in);
    CHECK_EQ(in.dtype, q == NLA_QUANT_Q8_0 ? NLA_DTYPE_Q8_0 : q == NLA_QUANT_Q4_0 ? NLA_DTYPE_Q4_0 : NLA_DTYPE_BF16);
    CHECK(q == NLA_QUANT_NONE ? in.quant_bytes == 0 : in.quant_bytes > 0);
    nla_session *s;
    nla_session_new(m, NULL, &s);
    float *lg = (float *)malloc(sizeof(float) * (size_t)T * V);
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = T;
    b.ids = ids;
    b.logits = lg;
    b.all_logits = 1;
    b.hidden = hidden;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    nla_session_free(s);
    nla_model_close(m);
    return lg;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* mean over rows of mse_nrm(a_row, b_row) */
static double mean_mse_nrm(const float *a, const float *b, int rows, int d) {
    double tot = 0;
    for (int r = 0; r < rows; r++) {
        double na = 0, nb = 0, dt = 0;
        for (int i = 0; i < d; i++) { na += (double)a[r * d + i] * a[r * d + i]; nb += (double)b[r * d + i] * b[r * d + i]; dt += (double)a[r * d + i] * b[r * d + i]; }
        tot += 2 * (1 - dt / sqrt(na * nb));
    }
    return tot / rows;
}

/* gqa-bf16: every matrix width is a multiple of 32, so everything quantizes. */
static void test_models(void) {
    static const char *const names[3] = {"t3", "t8", "t40"};
    const char *dir = "tests/data/forward/gqa-bf16/model";
    const int V = 1024, L = 7, d = 64, K = 2;
    for (int q = NLA_QUANT_Q8_0; q <= NLA_QUANT_Q4_0; q++) {
        int agree = 0, total = 0;
        double worst_mse = 0, worst_logit = 0;
        for (int p = 0; p < 3; p++) {
            char path[256];
            snprintf(path, sizeof path, "tests/data/forward/gqa-bf16/%s.logits.npy", names[p]);
            int nd;
            long long sh[4];
            float *gl = npy_load(path, &nd, sh);
            snprintf(path, sizeof path, "tests/data/forward/gqa-bf16/%s.hidden.npy", names[p]);
            float *gh = npy_load(path, &nd, sh);
            const int T = (int)sh[1];
            char *pj = slurp("tests/data/forward/gqa-bf16/prompts.json", NULL);
            char key[16];
            snprintf(key, sizeof key, "\"%s\"", names[p]);
            double idd[64];
            int nt = json_nums_after(strstr(pj, key), "\"ids\"", idd, 64);
            int32_t ids[64];
            for (int i = 0; i < nt; i++) ids[i] = (int32_t)idd[i];
            float *hid = (float *)malloc(sizeof(float) * (size_t)L * T * d);
            float *lg = logits_of(dir, (nla_quant)q, ids, T, V, hid);
            CHECK(lg != NULL && nt == T);
            if (!lg) { free(gl); free(gh); free(pj); free(hid); continue; }
            double mx = 0, e = 0;
            for (int t = 0; t < T; t++) {
                agree += argmax(lg + (size_t)t * V, V) == argmax(gl + (size_t)t * V, V);
                total++;
            }
            for (int i = 0; i < T * V; i++) { if (fabs(gl[i]) > mx) mx = fabs(gl[i]); if (fabs(lg[i] - gl[i]) > e) e = fabs(lg[i] - gl[i]); }
            if (e / mx > worst_logit) worst_logit = e / mx;
            double mse = mean_mse_nrm(hid + (size_t)K * T * d, gh + (size_t)K * T * d, T, d);
            if (mse > worst_mse) worst_mse = mse;
            free(gl); free(gh); free(pj); free(hid); free(lg);
        }
        printf("  %s on gqa-bf16: top-1 agreement %d/%d (%.1f %%), block-%d mse_nrm vs f32 %.2e, max logit err %.2e of max |logit|\n",
               q == NLA_QUANT_Q8_0 ? "Q8_0" : "Q4_0", agree, total, 100.0 * agree / total, K, worst_mse, worst_logit);
        /* Bounds measured on this model (random weights, rms 0.13 in 64-wide
           rows: every block moves the residual a lot, so errors compound):
           Q8_0 48/51 and 4.0e-4 (its weights alone, with float activations,
           give 50/51 and 1.9e-4; the per-weight error is 0.54 %, as expected
           for 8-bit blocks). They guard against regressions; they are not
           the accuracy a trained Gemma 3 gets. */
        if (q == NLA_QUANT_Q8_0) {
            CHECK_MSG(agree * 100 >= 90 * total, "Q8_0 top-1 agreement %d/%d below 90 %%", agree, total);
            CHECK_MSG(worst_mse <= 6e-4, "Q8_0 block-K mse_nrm %.3g above 6e-4", worst_mse);
        } else {
            CHECK_MSG(agree * 100 >= 65 * total, "Q4_0 top-1 agreement %d/%d below 65 %%", agree, total);
            CHECK_MSG(worst_mse <= 6e-2, "Q4_0 block-K mse_nrm %.3g above 6e-2", worst_mse);
        }
    }
    /* a model whose widths are not multiples of 32 (h = 48) still loads: those
       matrices stay as stored */
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.quant = NLA_QUANT_Q8_0;
    nla_model *m;
    char err[512];
    CHECK_EQ(nla_model_open("tests/data/forward/mqa-f32/model", &mp, &m, err, sizeof err), NLA_OK);
    nla_model_close(m);
    mp.quant = (nla_quant)9;
    CHECK_EQ(nla_model_open(dir, &mp, &m, err, sizeof err), NLA_ERR_ARG);
}

/* quantize on load -> nla_model_save -> open the saved folder: the same
   bits, so the same logits, with no conversion at load. */
static void test_save(void) {
    static const int32_t ids[8] = {2, 84, 578, 476, 220, 642, 86, 284};
    const char *srcs[2] = {"tests/data/forward/gqa-bf16/model", "tests/data/forward/multimodal-sharded-bf16/model"};
    char err[512];
    mkdir("tests/tmp", 0755);
    for (int k = 0; k < 2; k++)
        for (int q = NLA_QUANT_Q8_0; q <= NLA_QUANT_Q4_0; q++) {
            nla_model_params mp;
            memset(&mp, 0, sizeof mp);
            mp.quant = (nla_quant)q;
            nla_model *a, *b;
            CHECK_EQ(nla_model_open(srcs[k], &mp, &a, err, sizeof err), NLA_OK);
            mkdir("tests/tmp/saved", 0755);
            CHECK_EQ(nla_model_save(a, "tests/tmp/saved", err, sizeof err), NLA_OK);
            CHECK_EQ(nla_model_open("tests/tmp/saved", NULL, &b, err, sizeof err), NLA_OK);
            if (!b) { nla_model_close(a); continue; }
            nla_model_info ia, ib;
            nla_model_get_info(a, &ia);
            nla_model_get_info(b, &ib);
            CHECK(ib.dtype == ia.dtype && ib.quant_bytes == 0 && ib.n_layers == ia.n_layers);
            float la[8 * 1024], lb[8 * 1024];
            nla_session *sa, *sb;
            nla_session_new(a, NULL, &sa);
            nla_session_new(b, NULL, &sb);
            nla_batch bt;
            memset(&bt, 0, sizeof bt);
            bt.n_tokens = 8;
            bt.ids = ids;
            bt.all_logits = 1;
            bt.logits = la;
            CHECK_EQ(nla_forward(sa, &bt), NLA_OK);
            bt.logits = lb;
            CHECK_EQ(nla_forward(sb, &bt), NLA_OK);
            CHECK_MSG(!memcmp(la, lb, sizeof la), "%s %s: saved model differs from quantize-on-load", srcs[k], q == 1 ? "q8_0" : "q4_0");
            nla_session_free(sa); nla_session_free(sb);
            nla_model_close(a); nla_model_close(b);
        }
    /* the saved matrices are groups: U8 [rows / 16, blocks x 16 x 18] */
    nla_st *st;
    nla_tensor t;
    CHECK_EQ(nla_st_open("tests/tmp/saved/model.safetensors", 0, &st, err, sizeof err), NLA_OK);
    CHECK_EQ(nla_st_get(st, nla_st_find(st, "model.layers.0.mlp.down_proj.weight"), &t), NLA_OK);
    CHECK(!strcmp(t.dtype, "U8") && t.ndim == 2 && t.shape[0] == 80 / 16 && t.shape[1] == 160 / 32 * 16 * 18);
    nla_st_close(st);
    /* a format the loader does not know is refused, naming it; the
       row-by-row layout of earlier versions is named as such */
    size_t n;
    char *raw = slurp("tests/tmp/saved/model.safetensors", &n), *at = raw ? strstr(raw + 8, "\"q4_0x16\"") : NULL;
    CHECK(at != NULL);
    if (at) {
        nla_model *m;
        memcpy(at, "\"q4_0\"   ", 9); /* JSON allows the spaces */
        spit("tests/tmp/saved/model.safetensors", raw, n);
        CHECK_EQ(nla_model_open("tests/tmp/saved", NULL, &m, err, sizeof err), NLA_ERR_UNSUPPORTED);
        CHECK(strstr(err, "'q4_0'") && strstr(err, "nla quantize again"));
        memcpy(at, "\"q5_1x16\"", 9);
        spit("tests/tmp/saved/model.safetensors", raw, n);
        CHECK_EQ(nla_model_open("tests/tmp/saved", NULL, &m, err, sizeof err), NLA_ERR_UNSUPPORTED);
        CHECK(strstr(err, "q5_1") != NULL);
    }
    free(raw);
}

/* An embedding stored as quantized groups is refused: its rows are read by
   lookup, one at a time. The checkpoint is the gqa-bf16 one with its
   embedding replaced by zeros in Q8_0 groups. */
static void test_quantized_embedding(void) {
    char err[512], dir[64];
    nla_st *st;
    CHECK_EQ(nla_st_open("tests/data/forward/gqa-bf16/model/model.safetensors", 0, &st, err, sizeof err), NLA_OK);
    if (!st) return;
    const int n = nla_st_count(st);
    wtensor *w = (wtensor *)calloc((size_t)n, sizeof *w);
    static unsigned char zeros[1024 / 16 * 2 * 16 * 34];
    for (int i = 0; i < n; i++) {
        nla_tensor t;
        nla_st_get(st, i, &t);
        w[i].name = t.name;
        w[i].dtype = t.dtype;
        w[i].ndim = t.ndim;
        for (int k = 0; k < t.ndim; k++) w[i].shape[k] = t.shape[k];
        w[i].data = t.data;
        w[i].nbytes = (size_t)t.nbytes;
        if (!strcmp(t.name, "model.embed_tokens.weight")) {
            w[i].dtype = "U8";
            w[i].shape[0] = 1024 / 16;
            w[i].shape[1] = 64 / 32 * 16 * 34;
            w[i].data = zeros;
            w[i].nbytes = sizeof zeros;
        }
    }
    tmp_dir(dir, sizeof dir, "qembed");
    CHECK_EQ(st_write("tests/tmp/qembed/model.safetensors", w, n, "{\"nla.quant\":\"q8_0x16\"}"), 0);
    CHECK_EQ(copy_file("tests/data/forward/gqa-bf16/model/config.json", "tests/tmp/qembed/config.json"), 0);
    nla_model *m;
    CHECK_EQ(nla_model_open(dir, NULL, &m, err, sizeof err), NLA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "embed_tokens") && strstr(err, "quantized"), "error: %s", err);
    free(w);
    nla_st_close(st);
}

int main(void) {
    test_kernels();
    test_models();
    test_save();
    test_quantized_embedding();
    return test_report();
}
