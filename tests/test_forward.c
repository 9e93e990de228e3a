/* test_forward.c - the Gemma 3 forward pass against golden data from an
   independent PyTorch implementation of HF modeling_gemma3 (f32 compute,
   bf16-rounded embedding scale): every block output and every logit within
   1e-4 x max|value| of that tensor, greedy continuations, KV-cache
   consistency across chunking and decode steps, the residual hook, and the
   stored-dtype layouts (f16, renamed prefixes, rope_parameters, untied head). */
#include "../nla.h"
#include "test.h"
#include "util.h"

#define TOL 1e-4
#define DATA "tests/data/forward/"

static const char *const cases[] = {"gqa-bf16", "mqa-f32", "multimodal-sharded-bf16"};

typedef struct {
    char name[16];
    int T;
    int32_t ids[64];
} prompt;

static int load_prompts(const char *cs, prompt *p) {
    char path[2048];
    snprintf(path, sizeof path, DATA "%s/prompts.json", cs);
    char *txt = slurp(path, NULL), *at = txt;
    int n = 0;
    while (at && (at = strstr(at, "\"name\": \"")) && n < 4) {
        at += 9;
        sscanf(at, "%15[^\"]", p[n].name);
        double ids[64];
        p[n].T = json_nums_after(at, "\"ids\"", ids, 64);
        for (int i = 0; i < p[n].T; i++) p[n].ids[i] = (int32_t)ids[i];
        n++;
    }
    free(txt);
    return n;
}

static nla_model *open_or_fail(const char *path) {
    char err[512];
    nla_model *m = NULL;
    nla_status rc = nla_model_open(path, NULL, &m, err, sizeof err);
    CHECK_MSG(rc == NLA_OK, "open %s: %s", path, err);
    return m;
}

/* The model of golden case cs, its prompts into p and its vocabulary size into *V. */
static nla_model *open_case(const char *cs, prompt *p, int *V) {
    char path[2048];
    snprintf(path, sizeof path, DATA "%s/model", cs);
    nla_model *m = open_or_fail(path);
    if (m) {
        nla_model_info in;
        nla_model_get_info(m, &in);
        *V = in.vocab_size;
    }
    load_prompts(cs, p);
    return m;
}

/* Full forward of one prompt; returns logits [T, V] and hidden [L, T, d]. */
static int run(nla_model *m, const nla_session_params *sp, const int32_t *ids, int T, float *logits,
               float *hidden) {
    nla_session *s;
    if (nla_session_new(m, sp, &s)) return -1;
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = T;
    b.ids = ids;
    b.logits = logits;
    b.all_logits = 1;
    b.hidden = hidden;
    nla_status rc = nla_forward(s, &b);
    if (rc) fprintf(stderr, "forward: %s\n", nla_session_errmsg(s));
    nla_session_free(s);
    return rc;
}

static void test_golden_case(const char *cs) {
    char path[2048];
    snprintf(path, sizeof path, DATA "%s/model", cs);
    nla_model *m = open_or_fail(path);
    if (!m) return;
    nla_model_info in;
    nla_model_get_info(m, &in);
    prompt p[4];
    int np = load_prompts(cs, p);
    CHECK_EQ(np, 3);
    for (int i = 0; i < np; i++) {
        int nd;
        long long shl[4], shh[4];
        snprintf(path, sizeof path, DATA "%s/%s.logits.npy", cs, p[i].name);
        float *gl = npy_load(path, &nd, shl);
        snprintf(path, sizeof path, DATA "%s/%s.hidden.npy", cs, p[i].name);
        float *gh = npy_load(path, &nd, shh);
        CHECK(gl && gh);
        if (!gl || !gh) continue;
        const int T = p[i].T, V = in.vocab_size, d = in.d_model, L = in.n_layers;
        CHECK_EQ(shl[0], T);
        CHECK_EQ(shh[0], L);
        float *lg = (float *)malloc(sizeof(float) * (size_t)T * V),
              *hd = (float *)malloc(sizeof(float) * (size_t)L * T * d);
        CHECK_EQ(run(m, NULL, p[i].ids, T, lg, hd), NLA_OK);
        double worst_block = 0, el = rel_err(lg, gl, (size_t)T * V);
        for (int l = 0; l < L; l++) {
            double e = rel_err(hd + (size_t)l * T * d, gh + (size_t)l * T * d, (size_t)T * d);
            CHECK_MSG(e <= TOL, "%s %s block %d: rel err %.3g", cs, p[i].name, l, e);
            if (e > worst_block) worst_block = e;
        }
        CHECK_MSG(el <= TOL, "%s %s logits: rel err %.3g", cs, p[i].name, el);
        if (i == 0) { /* the weights read into memory instead of mapped: the same bits */
            nla_model_params mp;
            nla_model *mr = NULL;
            char err[512];
            memset(&mp, 0, sizeof mp);
            mp.no_mmap = 1;
            snprintf(path, sizeof path, DATA "%s/model", cs);
            CHECK_MSG(nla_model_open(path, &mp, &mr, err, sizeof err) == NLA_OK, "%s", err);
            float *lr = (float *)malloc(sizeof(float) * (size_t)T * V);
            CHECK(mr && run(mr, NULL, p[i].ids, T, lr, NULL) == NLA_OK &&
                  !memcmp(lr, lg, sizeof(float) * (size_t)T * V));
            free(lr);
            nla_model_close(mr);
        }
        printf("  %-24s %-4s T=%-3d max rel err: blocks %.2e, logits %.2e\n", cs, p[i].name, T,
               worst_block, el);

        /* the same prompt in chunks of 3 rows (ring buffers wrap inside a prefill) */
        nla_session_params sp;
        memset(&sp, 0, sizeof sp);
        sp.n_batch = 3;
        float *lg3 = (float *)malloc(sizeof(float) * (size_t)T * V);
        CHECK_EQ(run(m, &sp, p[i].ids, T, lg3, NULL), NLA_OK);
        double e3 = rel_err(lg3, gl, (size_t)T * V);
        CHECK_MSG(e3 <= TOL, "%s %s n_batch=3 logits: rel err %.3g", cs, p[i].name, e3);

        /* greedy continuation with the KV cache vs the golden full recomputes */
        snprintf(path, sizeof path, DATA "%s/%s.greedy.json", cs, p[i].name);
        char *gj = slurp(path, NULL);
        double want[8], margin[8];
        int nw = json_nums_after(gj, "\"greedy\"", want, 8),
            nm = json_nums_after(gj, "\"top1_top2_margin\"", margin, 8);
        CHECK(nw == 8 && nm == 8);
        nla_session *s;
        int32_t got[8];
        int n_got = 0;
        CHECK_EQ(nla_session_new(m, NULL, &s), NLA_OK);
        nla_generate_params gp;
        memset(&gp, 0, sizeof gp);
        gp.max_new = 8;
        gp.no_stop = 1;
        CHECK_EQ(nla_generate(s, p[i].ids, T, &gp, got, &n_got), NLA_OK);
        CHECK_EQ(n_got, 8);
        for (int k = 0; k < 8 && k < n_got; k++) {
            if (got[k] != want[k] && margin[k] <= 1e-3)
                break; /* a near-tie: either pick is right */
            CHECK_MSG(got[k] == want[k], "%s %s greedy step %d: %d vs golden %.0f", cs, p[i].name,
                      k, got[k], want[k]);
            if (got[k] != want[k]) break;
        }
        nla_session_free(s);
        free(gj); free(lg3); free(lg); free(hd); free(gl); free(gh);
    }
    CHECK_EQ(nla_model_close(m), NLA_OK);
}

/* Prefill the first P tokens, then decode the rest one at a time: the logits
   must equal one prefill of all T (same arithmetic, so to float rounding). */
static void test_kv_consistency(const char *cs, int P, int n_batch) {
    prompt p[4];
    int V = 0;
    nla_model *m = open_case(cs, p, &V);
    if (!m) return;
    const prompt *lp = &p[2]; /* the long prompt: past the sliding window */
    const int T = lp->T;
    float *full = (float *)malloc(sizeof(float) * (size_t)T * V),
          *step = (float *)malloc(sizeof(float) * (size_t)T * V);
    CHECK_EQ(run(m, NULL, lp->ids, T, full, NULL), NLA_OK);
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_batch = n_batch;
    sp.n_ctx = T;
    nla_session *s;
    CHECK_EQ(nla_session_new(m, &sp, &s), NLA_OK);
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = P;
    b.ids = lp->ids;
    b.logits = step;
    b.all_logits = 1;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    for (int t = P; t < T; t++) {
        memset(&b, 0, sizeof b);
        b.n_tokens = 1;
        b.ids = lp->ids + t;
        b.logits = step + (size_t)t * V;
        CHECK_EQ(nla_forward(s, &b), NLA_OK);
    }
    CHECK_EQ(nla_session_n_past(s), T);
    double e = rel_err(step, full, (size_t)T * V);
    CHECK_MSG(e <= 1e-6, "%s prefill %d + decode %d (n_batch %d): rel err %.3g", cs, P, T - P,
              n_batch, e);
    /* the context is full now: one more token is a range error, not a crash */
    memset(&b, 0, sizeof b);
    b.n_tokens = 1;
    b.ids = lp->ids;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_RANGE);
    nla_session_free(s);
    free(full); free(step);
    nla_model_close(m);
}

/* Rewinding the cache: allowed while the sliding-window rings still hold
   the keys the next position needs; then recomputing gives the same logits. */
static void test_rewind(void) {
    nla_model *m = open_or_fail(DATA "gqa-bf16/model"); /* W = 8 */
    if (!m) return;
    prompt p[4];
    load_prompts("gqa-bf16", p);
    const int32_t *ids = p[2].ids;
    float full[40 * 1024], part[1024];
    CHECK_EQ(run(m, NULL, ids, 40, full, NULL), NLA_OK);
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    for (int variant = 0; variant < 2; variant++) {
        /* 0: context 7 < W, the ring never wraps; 1: chunks of 3, ring of W + 2 = 10 */
        sp.n_ctx = variant ? 40 : 7;
        sp.n_batch = variant ? 3 : 0;
        const int T = variant ? 40 : 7, back = variant ? 39 : 3;
        nla_session *s;
        CHECK_EQ(nla_session_new(m, &sp, &s), NLA_OK);
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = T;
        b.ids = ids;
        CHECK_EQ(nla_forward(s, &b), NLA_OK);
        CHECK_EQ(nla_session_rewind(s, back), NLA_OK);
        CHECK_EQ(nla_session_n_past(s), back);
        b.n_tokens = T - back;
        b.ids = ids + back;
        b.logits = part;
        CHECK_EQ(nla_forward(s, &b), NLA_OK);
        CHECK_MSG(!memcmp(part, full + (size_t)(T - 1) * 1024, sizeof part),
                  "rewind variant %d: logits differ", variant);
        if (variant) { /* position 30 needs key 23, long gone from a ring of 10 */
            CHECK_EQ(nla_session_rewind(s, 30), NLA_ERR_RANGE);
            CHECK_EQ(nla_session_n_past(s), 40);
            /* position 0 needs no key: back to the start, as after a reset */
            CHECK_EQ(nla_session_rewind(s, 0), NLA_OK);
            CHECK_EQ(nla_session_n_past(s), 0);
            b.n_tokens = T;
            b.ids = ids;
            CHECK_EQ(nla_forward(s, &b), NLA_OK);
            CHECK_MSG(!memcmp(part, full + (size_t)(T - 1) * 1024, sizeof part),
                      "after a rewind to 0: logits differ");
        }
        CHECK_EQ(nla_session_rewind(s, 41), NLA_ERR_RANGE);
        nla_session_free(s);
    }
    nla_model_close(m);
}

/* Hook test state: overwrite the block-K residual with golden + delta. */
typedef struct {
    int K, T, d, calls;
    const float *golden_k; /* [T, d] */
    float delta;
    float *seen;           /* [T, d] what the overwritten residual became */
} hook_state;

static int overwrite_hook(void *user, int layer, int pos0, int n_rows, int d_model, float *resid) {
    hook_state *h = (hook_state *)user;
    h->calls++;
    if (layer != h->K) return 0;
    for (int t = 0; t < n_rows; t++)
        for (int i = 0; i < d_model; i++) {
            float v = h->golden_k[(size_t)(pos0 + t) * d_model + i] +
                      h->delta * (float)((i * 7 + t * 3) % 11 - 5);
            resid[(size_t)t * d_model + i] = v;
            h->seen[(size_t)(pos0 + t) * d_model + i] = v;
        }
    return 0;
}

static int cancel_hook(void *user, int layer, int pos0, int n_rows, int d_model, float *resid) {
    (void)user; (void)pos0; (void)n_rows; (void)d_model; (void)resid;
    return layer == 1;
}

/* Overwriting the block-K residual of gqa-bf16 (K = 2) must give what the
   tail model (its blocks 3..6, made by tests/data/gen/make_tail.py) computes
   from the overwritten rows: blocks K+1.. and the logits. */
static void test_hook(void) {
    nla_model *m = open_or_fail(DATA "gqa-bf16/model"),
              *tail = open_or_fail(DATA "gqa-bf16-tail/model");
    if (!m || !tail) return;
    prompt p[4];
    load_prompts("gqa-bf16", p);
    const prompt *lp = &p[2];
    const int T = lp->T, K = 2, L = 7, d = 64, V = 1024;
    int nd;
    long long sh[4] = {0, 0, 0, 0};
    float *gh = npy_load(DATA "gqa-bf16/t40.hidden.npy", &nd, sh);
    float *hid = (float *)malloc(sizeof(float) * (size_t)L * T * d),
          *lg = (float *)malloc(sizeof(float) * (size_t)T * V);
    float *thid = (float *)malloc(sizeof(float) * 4 * (size_t)T * d),
          *tlg = (float *)malloc(sizeof(float) * (size_t)T * V);
    float *seen = (float *)malloc(sizeof(float) * (size_t)T * d);
    for (int pass = 0; pass < 2; pass++) {
        hook_state hs = {K, T, d, 0, gh + (size_t)K * T * d, pass ? 0.05f : 0.0f, seen};
        nla_session_params sp;
        memset(&sp, 0, sizeof sp);
        sp.n_batch = 16; /* hook called per chunk */
        nla_session *s, *ts;
        CHECK_EQ(nla_session_new(m, &sp, &s), NLA_OK);
        CHECK_EQ(nla_session_new(tail, NULL, &ts), NLA_OK);
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = T;
        b.ids = lp->ids;
        b.logits = lg;
        b.all_logits = 1;
        b.hidden = hid;
        b.hook = overwrite_hook;
        b.hook_user = &hs;
        CHECK_EQ(nla_forward(s, &b), NLA_OK);
        CHECK_EQ(hs.calls, L * 3); /* 40 rows in chunks of 16 */
        memset(&b, 0, sizeof b);
        b.n_tokens = T;
        b.embeds = seen; /* the tail starts from the overwritten residual */
        b.logits = tlg;
        b.all_logits = 1;
        b.hidden = thid;
        CHECK_EQ(nla_forward(ts, &b), NLA_OK);
        double eh = rel_err(hid + (size_t)(K + 1) * T * d, thid, (size_t)4 * T * d),
               el = rel_err(lg, tlg, (size_t)T * V);
        CHECK_MSG(eh <= 1e-6 && el <= 1e-6, "hook pass %d vs tail model: blocks %.3g logits %.3g",
                  pass, eh, el);
        double eb = rel_err(hid + (size_t)K * T * d, seen, (size_t)T * d);
        CHECK_MSG(eb == 0, "hidden[K] must be the overwritten residual (%.3g)", eb);
        if (pass == 1) { /* a real change: later blocks moved away from the golden */
            double moved =
                rel_err(hid + (size_t)(K + 1) * T * d, gh + (size_t)(K + 1) * T * d, (size_t)T * d);
            CHECK_MSG(moved > 1e-3, "the overwrite changed nothing downstream (%.3g)", moved);
        }
        nla_session_free(s);
        nla_session_free(ts);
    }
    /* stop after block K: the golden block-K output, and no logits allowed */
    nla_session *s;
    CHECK_EQ(nla_session_new(m, NULL, &s), NLA_OK);
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = T;
    b.ids = lp->ids;
    b.n_blocks = K + 1;
    b.hidden = hid;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    double ek = rel_err(hid + (size_t)K * T * d, gh + (size_t)K * T * d, (size_t)T * d);
    CHECK_MSG(ek <= TOL, "stop after block %d: rel err %.3g", K, ek);
    /* residual rows: the prompt twice, as two sequences in one batch, gives
       each copy's rows the bits of the one-sequence pass */
    {
        nla_session_params sp2;
        memset(&sp2, 0, sizeof sp2);
        sp2.n_seq = 2;
        sp2.n_batch = 16; /* chunks cut through both copies */
        nla_session *s2;
        CHECK_EQ(nla_session_new(m, &sp2, &s2), NLA_OK);
        int32_t *ids2 = (int32_t *)malloc(sizeof(int32_t) * 2 * (size_t)T),
                *seq2 = ids2 ? (int32_t *)malloc(sizeof(int32_t) * 2 * (size_t)T) : NULL;
        int32_t rows[3] = {3, T - 1, 2 * T - 1};
        float res[3 * 64];
        for (int i = 0; i < 2 * T; i++) { ids2[i] = lp->ids[i % T]; seq2[i] = i / T; }
        nla_batch b2;
        memset(&b2, 0, sizeof b2);
        b2.n_tokens = 2 * T;
        b2.ids = ids2;
        b2.seq = seq2;
        b2.n_blocks = K + 1;
        b2.logit_rows = rows;
        b2.n_logit_rows = 3;
        b2.residual = res;
        CHECK_EQ(nla_forward(s2, &b2), NLA_OK);
        CHECK(!memcmp(res, hid + ((size_t)K * T + 3) * d, sizeof(float) * d));
        CHECK(!memcmp(res + d, hid + ((size_t)K * T + T - 1) * d, sizeof(float) * d));
        CHECK(!memcmp(res + 2 * d, hid + ((size_t)K * T + T - 1) * d, sizeof(float) * d));
        b2.hook = cancel_hook; /* a hook's pos0 cannot describe two sequences */
        nla_session_reset(s2);
        CHECK_EQ(nla_forward(s2, &b2), NLA_ERR_ARG);
        free(ids2); free(seq2);
        nla_session_free(s2);
    }
    /* the cache now lacks blocks K+1..: a full pass must be refused */
    memset(&b, 0, sizeof b);
    b.n_tokens = 1;
    b.ids = lp->ids;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_ARG);
    CHECK(strstr(nla_session_errmsg(s), "reset") != NULL);
    b.n_blocks = K + 1; /* but more rows through the same blocks are fine */
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    memset(&b, 0, sizeof b);
    b.n_tokens = 2;
    b.ids = lp->ids;
    b.logits = lg;
    b.n_blocks = K + 1;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_ARG); /* logits need every block */
    nla_session_reset(s);
    b.n_blocks = 0;
    b.hook = cancel_hook;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_CANCELLED);
    CHECK_EQ(nla_session_n_past(s), 0);
    nla_session_free(s);
    free(gh); free(hid); free(lg); free(thid); free(tlg); free(seen);
    nla_model_close(m);
    nla_model_close(tail);
}

/* Three prompts as three sequences in one batch, their rows in runs that
   alternate (runs longer and shorter than an attention tile, chunks that
   cut through them): every row's logits are the bits of its prompt run
   alone. */
static void test_interleaved(const char *cs) {
    prompt p[4];
    int V = 0;
    nla_model *m = open_case(cs, p, &V);
    if (!m) return;
    const int run_len[3] = {5, 11, 3};
    int n = 0, at[3] = {0, 0, 0};
    int32_t ids[3 * 64], seq[3 * 64], src[3 * 64]; /* src: row of its prompt */
    float *alone[3], *all = (float *)malloc(sizeof(float) * 3 * 64 * (size_t)V);
    for (int q = 0; q < 3; q++) {
        alone[q] = (float *)malloc(sizeof(float) * (size_t)p[q].T * V);
        CHECK_EQ(run(m, NULL, p[q].ids, p[q].T, alone[q], NULL), NLA_OK);
    }
    while (at[0] < p[0].T || at[1] < p[1].T || at[2] < p[2].T)
        for (int q = 0; q < 3; q++)
            for (int k = 0; k < run_len[q] && at[q] < p[q].T; k++, n++) {
                ids[n] = p[q].ids[at[q]];
                seq[n] = q;
                src[n] = at[q]++;
            }
    const int batches[2] = {0, 7};
    for (int v = 0; v < 2; v++) {
        nla_session_params sp;
        memset(&sp, 0, sizeof sp);
        sp.n_seq = 3;
        sp.n_batch = batches[v];
        nla_session *s;
        CHECK_EQ(nla_session_new(m, &sp, &s), NLA_OK);
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = n;
        b.ids = ids;
        b.seq = seq;
        b.logits = all;
        b.all_logits = 1;
        CHECK_EQ(nla_forward(s, &b), NLA_OK);
        int differ = 0;
        for (int t = 0; t < n; t++)
            differ += memcmp(all + (size_t)t * V, alone[seq[t]] + (size_t)src[t] * V,
                             sizeof(float) * V) != 0;
        CHECK_MSG(!differ,
                  "%s: %d of %d interleaved rows (n_batch %d) differ from their prompt alone", cs,
                  differ, n, batches[v]);
        nla_session_free(s);
    }
    for (int q = 0; q < 3; q++) free(alone[q]);
    free(all);
    nla_model_close(m);
}

/* Rows given as embeddings (nla_embed_tokens) equal rows given as ids. */
static void test_embeds(void) {
    nla_model *m = open_or_fail(DATA "mqa-f32/model");
    if (!m) return;
    prompt p[4];
    load_prompts("mqa-f32", p);
    const int T = p[1].T, V = 1024, d = 48;
    float *e = (float *)malloc(sizeof(float) * (size_t)T * d),
          *a = (float *)malloc(sizeof(float) * (size_t)T * V);
    float *b2 = (float *)malloc(sizeof(float) * (size_t)T * V);
    CHECK_EQ(nla_embed_tokens(m, p[1].ids, T, e), NLA_OK);
    int32_t bad = 1024;
    CHECK_EQ(nla_embed_tokens(m, &bad, 1, e), NLA_ERR_RANGE);
    CHECK_EQ(nla_embed_tokens(m, p[1].ids, T, e), NLA_OK);
    CHECK_EQ(run(m, NULL, p[1].ids, T, a, NULL), NLA_OK);
    nla_session *s;
    CHECK_EQ(nla_session_new(m, NULL, &s), NLA_OK);
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = T;
    b.embeds = e;
    b.logits = b2;
    b.all_logits = 1;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    CHECK(memcmp(a, b2, sizeof(float) * (size_t)T * V) == 0);
    /* logits at chosen rows only */
    int32_t rows[2] = {1, 3};
    float two[2 * 1024];
    nla_session_reset(s);
    memset(&b, 0, sizeof b);
    b.n_tokens = T;
    b.ids = p[1].ids;
    b.logits = two;
    b.logit_rows = rows;
    b.n_logit_rows = 2;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    CHECK(memcmp(two, a + V, sizeof(float) * V) == 0 &&
          memcmp(two + V, a + 3 * V, sizeof(float) * V) == 0);
    int32_t unsorted[2] = {3, 1};
    nla_session_reset(s);
    b.logit_rows = unsorted;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_ARG);
    nla_session_free(s);
    free(e); free(a); free(b2);
    nla_model_close(m);
}

int main(void) {
    printf("golden forward cases (max |ours - golden| / max |golden| per tensor; bound %.0e):\n",
           TOL);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) test_golden_case(cases[i]);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        test_kv_consistency(cases[i], 10, 256);
        test_kv_consistency(cases[i], 1, 4);
        test_interleaved(cases[i]);
    }
    test_hook();
    test_embeds();
    test_rewind();
    return test_report();
}
