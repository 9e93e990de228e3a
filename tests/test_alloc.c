/* test_alloc.c - allocation failure: each scenario below (tokenizer, chat,
   safetensors and .npy files, model open as stored and quantized, forward and
   generate, the NLA round trip, the eval's readers, merging eval shards)
   first runs once to count
   its allocations, N;
   then it runs again N times, the k-th allocation failing on run k. Every
   such run must end in NLA_ERR_NOMEM (never a success that swallowed the
   failure, never another error), with no crash and no block left live.
   Syncs to the disk are swept the same way where files are written: a
   failing one must end in NLA_ERR_IO (the files: no temporary file left;
   the eval run: a rerun equals the undisturbed run), and every file made
   has its folder synced too (its name). nla.c is compiled with tests/failalloc.h for this
   program (see the Makefile); under `make sanitize` ASan checks the same
   runs for leaks and bad accesses. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../nla.h"
#include "failalloc.h"
#include "test.h"
#include "util.h"

/* ---- the allocator: counts, fails the k-th, tracks live blocks ---- */

static long fa_count, fa_fail_at, fa_live; /* fa_fail_at 0: never fail */

static int fa_should_fail(void) { return ++fa_count == fa_fail_at; }

void *fa_malloc(size_t n) {
    void *p = fa_should_fail() ? NULL : malloc(n);
    fa_live += p != NULL;
    return p;
}

void *fa_calloc(size_t n, size_t size) {
    void *p = fa_should_fail() ? NULL : calloc(n, size);
    fa_live += p != NULL;
    return p;
}

void *fa_realloc(void *p, size_t n) {
    void *q = fa_should_fail() ? NULL : realloc(p, n);
    fa_live += !p && q; /* a failed realloc leaves p live */
    return q;
}

void fa_free(void *p) {
    fa_live -= p != NULL;
    free(p);
}

/* ---- the sync: counts (folders apart), fails the k-th with EIO ---- */

static long fs_count, fs_fail_at, fs_dirs; /* fs_fail_at 0: never fail */

int fa_fsync(int fd) {
    struct stat st;
    fs_dirs += !fstat(fd, &st) && S_ISDIR(st.st_mode);
    if (++fs_count == fs_fail_at) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

/* ---- scenarios: each frees everything it made and returns the first
   failure (NLA_OK when all went well) ---- */

static char tmp[256]; /* tests/tmp/alloc */

#define TOK "tests/fuzz/sidecar_tokenizer.json" /* the real one cut down: 10 ms to load */
#define GQA "tests/data/forward/gqa-bf16/model"
static int fail_line; /* the TRY that failed last */
#define TRY(x) do { if ((rc = (x)) != NLA_OK) { fail_line = __LINE__; goto out; } } while (0)

static nla_status sc_tokenizer(void) {
    nla_tokenizer *t = NULL;
    int32_t ids[64];
    int n = 0;
    char text[256], err[256];
    size_t len = 0;
    nla_chat_message msgs[2] = {{"user", "Explain a fox."}, {"assistant", "A fox is quick."}};
    nla_detok_state st;
    const char *json = "[{\"role\": \"user\", \"content\": \"hi\"}]";
    nla_status rc;
    TRY(nla_tokenizer_open(TOK, &t, err, sizeof err));
    TRY(nla_tokenize(t, "The quick brown fox", 19, NLA_TOKENIZE_BOS, ids, 64, &n));
    TRY(nla_detokenize(t, ids, n, text, sizeof text, &len));
    memset(&st, 0, sizeof st);
    TRY(nla_detokenize_next(t, &st, ids[1], text, sizeof text, &len));
    TRY(nla_chat_render(msgs, 2, 1, text, sizeof text, &len, err, sizeof err));
    TRY(nla_chat_render_json(json, strlen(json), 1, text, sizeof text, &len, err, sizeof err));
out:
    nla_tokenizer_close(t);
    return rc;
}

static nla_status sc_files(void) {
    char err[256], path[512];
    float v[6] = {1, 2, 3, 4, 5, 6}, r[6];
    int64_t sh[2] = {2, 3};
    int nd = 0;
    nla_st *st = NULL;
    nla_tensor t;
    nla_status rc;
    snprintf(path, sizeof path, "%s/alloc.npy", tmp);
    TRY(nla_npy_write(path, v, 2, sh, err, sizeof err));
    TRY(nla_npy_read(path, r, 6, sh, &nd, err, sizeof err));
    memset(&t, 0, sizeof t);
    t.name = "w";
    t.dtype = "F32";
    t.ndim = 2;
    t.shape[0] = 2;
    t.shape[1] = 3;
    t.data = v;
    t.nbytes = sizeof v;
    snprintf(path, sizeof path, "%s/alloc.safetensors", tmp);
    TRY(nla_st_write(path, &t, 1, NULL, 0, NULL, NULL, err, sizeof err));
    TRY(nla_st_open(path, 0, &st, err, sizeof err));
    nla_st_close(st);
    st = NULL;
    TRY(nla_st_open("tests/data/forward/multimodal-sharded-bf16/model", 1, &st, err,
                    sizeof err)); /* sharded, read */
out:
    nla_st_close(st);
    return rc;
}

/* sc_files left no temporary file (a failed write removes its own) */
static int files_no_tmp(void) {
    char p[300];
    struct stat st;
    int left = 0;
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/alloc.%s.tmp", tmp, i ? "safetensors" : "npy");
        left += stat(p, &st) == 0;
    }
    return !left;
}

/* Opens GQA (quantized or not), prefills, generates 3 tokens on 2
   sequences; a quantized model is also saved and opened again. */
static nla_status model_run(nla_quant q) {
    nla_model_params mp;
    nla_session_params sp;
    nla_generate_params gp;
    nla_model *m = NULL;
    nla_session *s = NULL;
    const int32_t ids[6] = {2, 107, 461, 409, 554, 430};
    int32_t out[3];
    int n_out = 0;
    char err[256];
    nla_status rc;
    memset(&mp, 0, sizeof mp);
    mp.quant = q;
    TRY(nla_model_open(GQA, &mp, &m, err, sizeof err));
    memset(&sp, 0, sizeof sp);
    sp.n_ctx = 16;
    sp.n_batch = 4;
    sp.n_threads = 1;
    sp.n_seq = 2;
    TRY(nla_session_new(m, &sp, &s));
    memset(&gp, 0, sizeof gp);
    gp.max_new = 3;
    gp.temperature = 0.8f;
    gp.top_k = 5;
    gp.no_stop = 1;
    TRY(nla_generate(s, ids, 6, &gp, out, &n_out));
    if (q != NLA_QUANT_NONE) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/q", tmp);
        empty_dir(dir);
        TRY(nla_model_save(m, dir, err, sizeof err));
        nla_session_free(s);
        nla_model_close(m);
        s = NULL;
        m = NULL;
        TRY(nla_model_open(dir, NULL, &m, err, sizeof err));
    }
out:
    nla_session_free(s);
    nla_model_close(m);
    return rc;
}

static nla_status sc_model(void) { return model_run(NLA_QUANT_NONE); }
static nla_status sc_model_q8(void) { return model_run(NLA_QUANT_Q8_0); }

static nla_status nla_open(const char *dir, nla_model **m, nla_session **s, int n_seq) {
    nla_model_params mp;
    nla_session_params sp;
    char err[256];
    nla_status rc;
    memset(&mp, 0, sizeof mp);
    mp.tokenizer = TOK;
    if ((rc = nla_model_open(dir, &mp, m, err, sizeof err))) return rc;
    memset(&sp, 0, sizeof sp);
    sp.n_ctx = 160;
    sp.n_threads = 1;
    sp.n_seq = n_seq;
    return nla_session_new(*m, &sp, s);
}

/* extract 2 vectors, verbalize them as a batch, reconstruct two texts, score */
static nla_status sc_nla(void) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    float v[2 * 16], r[2 * 16];
    int32_t ids[32], out[2 * 4], pos[2];
    int n = 0, n_out[2];
    const char *ex[2] = {"a fox", "<explanation>a dog</explanation>"}; /* the cut-down tokenizer
                                   cannot detokenize what the random AV writes */
    nla_scores sc;
    nla_verbalize_params vp;
    nla_status rc;
    TRY(nla_open("tests/data/nla/target", &m, &s, 1));
    TRY(nla_tokenize(nla_model_tokenizer(m), "The quick brown fox jumps", 25, NLA_TOKENIZE_BOS, ids,
                     32, &n));
    pos[0] = n - 2;
    pos[1] = n - 1;
    TRY(nla_extract(s, ids, n, 2, pos, 2, v));
    nla_session_free(s);
    nla_model_close(m);
    s = NULL;
    m = NULL;
    TRY(nla_open("tests/data/nla/av", &m, &s, 2));
    memset(&vp, 0, sizeof vp);
    vp.max_new = 4;
    TRY(nla_verbalize_batch(s, v, 2, &vp, out, 4, n_out));
    nla_session_free(s);
    nla_model_close(m);
    s = NULL;
    m = NULL;
    TRY(nla_open("tests/data/nla/ar", &m, &s, 1));
    TRY(nla_reconstruct(s, ex, 2, r));
    TRY(nla_score(v, r, 16, 4.0, 0.03, &sc));
out:
    nla_session_free(s);
    nla_model_close(m);
    return rc;
}

#ifndef NLA_NO_EVAL /* built without section 14: no eval scenarios */
static void drop(void *user, const char *text, size_t len) { (void)user, (void)text, (void)len; }

/* the eval's readers: input records (plan), results (summary, report) */
static nla_status sc_eval(void) {
    nla_tokenizer *t = NULL;
    nla_eval_params ep;
    nla_eval_counts ec;
    nla_eval_report_params rp;
    char err[256], html[512];
    nla_status rc;
    TRY(nla_tokenizer_open(TOK, &t, err, sizeof err));
    memset(&ep, 0, sizeof ep);
    ep.docs = "tests/data/eval/docs.jsonl";
    ep.chats = "tests/data/eval/chats.jsonl";
    ep.out_dir = tmp;
    ep.min_position = 10;
    ep.positions_per_record = 2;
    TRY(nla_eval_plan(&ep, t, &ec, err, sizeof err));
    memset(&rp, 0, sizeof rp);
    TRY(nla_eval_summary("tests/data/eval/fixed_results.jsonl", &rp, drop, NULL, err, sizeof err));
    snprintf(html, sizeof html, "%s/report.html", tmp);
    TRY(nla_eval_report_html("tests/data/eval/fixed_results.jsonl", html, &rp, err, sizeof err));
out:
    nla_tokenizer_close(t);
    return rc;
}

/* two shards of a 2-row study of d = 4, made with the real allocator */
static char shard[2][300], merged[300]; /* under tmp (256) */
static void make_shards(void) {
    static const int64_t shape[2] = {2, 4};
    const float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    char p[700], err[256];
    snprintf(merged, sizeof merged, "%s/merged", tmp);
    mkdir(merged, 0755);
    for (int k = 0; k < 2; k++) {
        snprintf(shard[k], sizeof shard[k], "%s/shard%d", tmp, k + 1);
        mkdir(shard[k], 0755);
        snprintf(p, sizeof p, "%s/params.json", shard[k]);
        char params[128];
        snprintf(params, sizeof params,
                 "{\"nla_eval\": 1,\n\"samples\": 2,\n\"d_model\": 4,\n\"shard\": \"%d/2\"}\n",
                 k + 1);
        spit(p, params, strlen(params));
        snprintf(p, sizeof p, "%s/tokens.jsonl", shard[k]);
        const char *tok = "{\"record_id\": \"a\", \"source\": \"s\", \"first_sample\": 0, "
                          "\"positions\": [0], \"tokens\": [\"x\"]}\n"
                          "{\"record_id\": \"b\", \"source\": \"s\", \"first_sample\": 1, "
                          "\"positions\": [1], \"tokens\": [\"y\", \"z\"]}\n";
        spit(p, tok, strlen(tok));
        snprintf(p, sizeof p, "%s/results.jsonl", shard[k]);
        char row[300];
        uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of row k's floats: both files hold v */
        for (int i = 0; i < 16; i++)
            h = (h ^ ((const unsigned char *)(v + 4 * k))[i]) * 0x100000001b3ull;
        snprintf(
            row, sizeof row,
            "{\"sample_idx\": %d, \"source\": \"s\", \"token_str\": \"x\", \"explanation\": \"e\", "
            "\"mse_nrm\": 0.0%d, \"vectors_fnv1a64\": [\"%016llx\", \"%016llx\"]}\n",
            k, k + 1, (unsigned long long)h, (unsigned long long)h);
        spit(p, row, strlen(row));
        snprintf(p, sizeof p, "%s/activations.npy", shard[k]);
        CHECK(nla_npy_write(p, v, 2, shape, err, sizeof err) == NLA_OK);
        snprintf(p, sizeof p, "%s/reconstructions.npy", shard[k]);
        CHECK(nla_npy_write(p, v, 2, shape, err, sizeof err) == NLA_OK);
    }
}

/* merging the two shards, then the report of the merged folder (its texts) */
static nla_status sc_merge(void) {
    const char *dirs[2] = {shard[1], shard[0]};
    char err[256], html[700];
    nla_eval_report_params rp;
    nla_status rc;
    memset(&rp, 0, sizeof rp);
    TRY(nla_eval_merge(merged, dirs, 2, err, sizeof err));
    snprintf(html, sizeof html, "%s/report.html", merged);
    TRY(nla_eval_report_html(merged, html, &rp, err, sizeof err));
out:
    return rc;
}

/* nla_eval_run on a 2-row study of the golden trio (one document, two
   positions, 3 new tokens), into dir */
static const char *const ev_files[6] = {"params.json",     "tokens.jsonl",        "results.jsonl",
                                        "activations.npy", "reconstructions.npy", "eval.lock"};
static char ev_dir[300], ev_ref[300], ev_docs[300];
static nla_status eval_run_in(const char *dir) {
    nla_eval_params ep;
    char err[256];
    memset(&ep, 0, sizeof ep);
    ep.target = "tests/data/nla/target";
    ep.av = "tests/data/nla/av";
    ep.ar = "tests/data/nla/ar";
    ep.tokenizer = "weights/tokenizer.json"; /* the AV writes ids anywhere in the vocabulary */
    ep.docs = ev_docs;
    ep.out_dir = dir;
    ep.max_new = 3;
    ep.chunk = 1; /* two chunks: a failure can land between committed rows */
    ep.n_threads = 1;
    return nla_eval_run(&ep, NULL, err, sizeof err);
}

static void clear_dir(const char *dir) {
    char p[400];
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, ev_files[i]);
        unlink(p);
    }
}

/* The files of dir equal those of the undisturbed run (ev_ref). */
static int same_as_ref(const char *dir) { return same_files(dir, ev_ref, ev_files, 5); }

/* A fresh run whose k-th allocation fails, then a plain rerun (a resume)
   of what it left: NLA_ERR_NOMEM with nothing live, then the files of an
   undisturbed run. */
static nla_status sc_eval_run(void) {
    clear_dir(ev_dir);
    return eval_run_in(ev_dir);
}

static int eval_rerun_same(void) {
    const long at = fa_fail_at, sat = fs_fail_at;
    fa_fail_at = fs_fail_at = 0;
    const int ok = eval_run_in(ev_dir) == NLA_OK && same_as_ref(ev_dir);
    fa_fail_at = at;
    fs_fail_at = sat;
    return ok;
}
#endif

/* ---- the sweep ---- */

/* A fault to inject: its counters, and the status a run it breaks must end in. */
typedef struct {
    const char *what;
    long *count, *fail_at;
    nla_status want;
} fault;
static const fault ALLOC = {"allocation", &fa_count, &fa_fail_at, NLA_ERR_NOMEM};
static const fault SYNC = {"sync", &fs_count, &fs_fail_at, NLA_ERR_IO};

/* Makes the f's 1st, 1 + stride-th, 1 + 2 stride-th, ... fail (stride 1:
   every one); after, where given, checks what a plain rerun then gives. */
static void sweep(const fault *f, const char *name, nla_status (*fn)(void), int (*after)(void),
                  long stride) {
    *f->fail_at = 0;
    *f->count = 0;
    fa_live = 0;
    nla_status rc = fn();
    long n = *f->count, runs = 0;
    CHECK_MSG(rc == NLA_OK, "%s: %s without failures (line %d)", name, nla_strerror(rc), fail_line);
    CHECK_MSG(fa_live == 0, "%s: %ld blocks live after a clean run", name, fa_live);
    int want = 0, leaks = 0, redone = 0;
    for (long k = 1; k <= n; k += stride, runs++) {
        *f->fail_at = k;
        *f->count = 0;
        fa_live = 0;
        rc = fn();
        if (rc != f->want && want == runs) /* the first such run */
            fprintf(stderr, "%s: %s %ld failing gives %s (line %d)\n", name, f->what, k,
                    nla_strerror(rc), fail_line);
        want += rc == f->want;
        if (fa_live && !leaks++)
            fprintf(stderr, "%s: %s %ld failing leaves %ld blocks live\n", name, f->what, k,
                    fa_live);
        if (after && !after() && !redone++)
            fprintf(stderr, "%s: after %s %ld failed, a rerun differs\n", name, f->what, k);
    }
    *f->fail_at = 0;
    CHECK_MSG(want == runs, "%s: %ld of %ld failing %ss were not reported as %s", name,
              runs - want, runs, f->what, nla_strerror(f->want));
    CHECK_MSG(leaks == 0, "%s: %d of %ld runs leak", name, leaks, runs);
    CHECK_MSG(redone == 0, "%s: %d of %ld reruns after a failure differ from the undisturbed run",
              name, redone, runs);
    printf("  %-10s %4ld %ss; failing %ld of them (every %ld%s) gives %s %d "
           "times, leaks %d times%s\n", name, n, f->what, runs, stride,
           stride == 1 ? "" : ", NLA_ALLOC_FULL=1 for all", nla_strerror(f->want), want, leaks,
           !after ? "" : redone ? "; a rerun differs" : "; each rerun equals the undisturbed run");
}

int main(void) {
    char q[300];
    tmp_dir(tmp, sizeof tmp, "alloc");
    snprintf(q, sizeof q, "%s/q", tmp);
    mkdir(q, 0755); /* where model-q8 saves */
    sweep(&ALLOC, "tokenizer", sc_tokenizer, NULL, 1);
    sweep(&ALLOC, "files", sc_files, files_no_tmp, 1);
    fs_dirs = 0;
    CHECK_EQ(sc_files(), NLA_OK);
    CHECK_MSG(fs_dirs == 2, "files: %ld folder syncs for 2 files written", fs_dirs);
    sweep(&SYNC, "files", sc_files, files_no_tmp, 1);
    sweep(&ALLOC, "model", sc_model, NULL, 1);
    sweep(&ALLOC, "model-q8", sc_model_q8, NULL, 1);
    sweep(&ALLOC, "nla", sc_nla, NULL, 1);
#ifndef NLA_NO_EVAL
    sweep(&ALLOC, "eval", sc_eval, NULL, 1);
    make_shards();
    sweep(&ALLOC, "merge", sc_merge, NULL, 1);
    sweep(&SYNC, "merge", sc_merge, NULL, 1);
    snprintf(ev_dir, sizeof ev_dir, "%s/run", tmp);
    snprintf(ev_ref, sizeof ev_ref, "%s/run_ref", tmp);
    snprintf(ev_docs, sizeof ev_docs, "%s/doc.jsonl", tmp);
    mkdir(ev_dir, 0755);
    mkdir(ev_ref, 0755);
    const char *doc = "{\"id\": \"d\", \"text\": \"The quick brown fox jumps over the lazy dog.\", "
                      "\"positions\": [2, 5]}\n";
    spit(ev_docs, doc, strlen(doc));
    clear_dir(ev_ref);
    CHECK_EQ(eval_run_in(ev_ref), NLA_OK); /* the undisturbed run */
    /* about 1 s of CPU a run (the real tokenizer's 33 MB): the suite fails
       every 40th allocation, NLA_ALLOC_FULL=1 every one */
    sweep(&ALLOC, "eval-run", sc_eval_run, eval_rerun_same, getenv("NLA_ALLOC_FULL") ? 1 : 40);
    fs_dirs = 0; /* the names of params.json, tokens.jsonl, the two .npy files, results.jsonl */
    CHECK_EQ(sc_eval_run(), NLA_OK);
    CHECK_MSG(fs_dirs == 5, "eval-run: %ld folder syncs for 5 files made", fs_dirs);
    sweep(&SYNC, "eval-run", sc_eval_run, eval_rerun_same, 1);
#endif
    return test_report();
}
