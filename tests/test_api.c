/* test_api.c - the API contract: NULL-tolerant frees, status strings,
   model/session lifetime, and decoding (greedy, seeded sampling,
   top-k/top-p, stop ids, the streaming callback). Threads: test_threads.c. */
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS and MAP_NORESERVE */
#include <limits.h>
#include <sys/mman.h>
#include "../nla.h"
#include "test.h"
#include "util.h"

#define MODEL "tests/data/forward/gqa-bf16/model"
static const int32_t ids40[] = {2,   107, 461, 409, 554,  430, 352, 1006, 444, 1010,
                                87,  530, 299, 34,  679,  379, 942, 502,  710, 688,
                                872, 5,   912, 867, 523,  256, 764, 159,  268, 521,
                                978, 621, 935, 14,  1001, 750, 360, 143,  87,  628};

/* The version: the build's string is the macros' numbers, and the two texts
   that repeat it (nla.h's opening comment, README.md) say the same. */
static void test_version(void) {
    char want[32], *h = slurp("nla.h", NULL), *readme = slurp("README.md", NULL);
    snprintf(want, sizeof want, "%d.%d.%d", NLA_VERSION_MAJOR, NLA_VERSION_MINOR,
             NLA_VERSION_PATCH);
    CHECK_MSG(!strcmp(nla_version(), want) && !strcmp(NLA_VERSION, want),
              "nla_version() %s, NLA_VERSION %s, macros %s", nla_version(), NLA_VERSION, want);
    CHECK_EQ(NLA_VERSION_NUMBER,
             NLA_VERSION_MAJOR * 10000 + NLA_VERSION_MINOR * 100 + NLA_VERSION_PATCH);
    CHECK_MSG(h && strstr(h, "   Version " NLA_VERSION ". "),
              "nla.h's comment does not say Version %s", NLA_VERSION);
    CHECK_MSG(readme && strstr(readme, "**Version** " NLA_VERSION " "),
              "README.md does not say **Version** %s", NLA_VERSION);
    free(h);
    free(readme);
}

/* s (freed) with its first a replaced by b, or NULL where s is NULL or holds no a. */
static char *replaced(char *s, const char *a, const char *b) {
    char *at = s ? strstr(s, a) : NULL, *r = at ? malloc(strlen(s) + strlen(b) + 1) : NULL;
    if (r) sprintf(r, "%.*s%s%s", (int)(at - s), s, b, at + strlen(a));
    free(s);
    return r;
}

static void test_contract(void) {
    CHECK_EQ(nla_model_close(NULL), NLA_OK);
    nla_session_free(NULL);
    nla_session_reset(NULL);
    nla_st_close(NULL);
    CHECK_EQ(nla_session_n_past(NULL), 0);
    CHECK(nla_session_errmsg(NULL) != NULL);
    for (int st = 0; st <= 10; st++)
        CHECK(nla_strerror((nla_status)st) != NULL && nla_strerror((nla_status)st)[0]);
    test_version();

    char err[512] = "junk";
    nla_model *m = (nla_model *)&err; /* must be overwritten with NULL */
    CHECK_EQ(nla_model_open(NULL, NULL, &m, err, sizeof err), NLA_ERR_ARG);
    CHECK(m == NULL);
    CHECK_EQ(nla_model_open(MODEL, NULL, NULL, err, sizeof err), NLA_ERR_ARG);
    CHECK_EQ(nla_model_open("tests/no/such/dir", NULL, &m, NULL, 0),
             NLA_ERR_IO); /* errbuf optional */
    char tiny[8];
    CHECK_EQ(nla_model_open("tests/no/such/dir", NULL, &m, tiny, sizeof tiny), NLA_ERR_IO);
    CHECK_EQ(strlen(tiny), 7u); /* truncated, terminated */

    CHECK_EQ(nla_model_open(MODEL, NULL, &m, err, sizeof err), NLA_OK);
    CHECK_EQ(err[0], 0);
    nla_session *s = NULL, *s2 = NULL;
    CHECK_EQ(nla_session_new(NULL, NULL, &s), NLA_ERR_ARG);
    nla_session_params bad;
    memset(&bad, 0, sizeof bad);
    bad.n_ctx = -1;
    CHECK_EQ(nla_session_new(m, &bad, &s), NLA_ERR_ARG);
    bad.n_ctx = 0;
    bad.n_threads = 200000; /* bounded, not a crash inside OpenMP */
    CHECK_EQ(nla_session_new(m, &bad, &s), NLA_ERR_ARG);
    CHECK_EQ(nla_session_new(m, NULL, &s), NLA_OK);
    CHECK_EQ(nla_session_new(m, NULL, &s2), NLA_OK);
    CHECK_EQ(nla_model_close(m), NLA_ERR_BUSY); /* sessions alive: refuse, free nothing */
    nla_session_free(s2);

    /* argument errors carry a message on the session */
    nla_batch b;
    memset(&b, 0, sizeof b);
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_ARG);
    CHECK(strstr(nla_session_errmsg(s), "n_tokens") != NULL);
    CHECK_EQ(nla_forward(s, NULL), NLA_ERR_ARG);
    int32_t bad_id = 5000;
    b.n_tokens = 1;
    b.ids = &bad_id;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_RANGE);
    CHECK(strstr(nla_session_errmsg(s), "5000") != NULL);
    b.ids = ids40;
    b.n_blocks = 8;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_ARG);
    b.n_blocks = 0;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    CHECK_EQ(nla_session_errmsg(s)[0], 0);
    CHECK_EQ(nla_session_n_past(s), 1);
#ifdef MAP_NORESERVE
    { /* INT_MAX more tokens after one (valid ids: a mapping of zeros that takes no memory):
         their count overflowed an int and passed the context check */
        int32_t *zeros = (int32_t *)mmap(NULL, (size_t)INT_MAX * 4, PROT_READ,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        CHECK(zeros != MAP_FAILED);
        if (zeros != MAP_FAILED) {
            nla_batch big = b;
            big.n_tokens = INT_MAX;
            big.ids = zeros;
            CHECK_EQ(nla_forward(s, &big), NLA_ERR_RANGE);
            CHECK_MSG(strstr(nla_session_errmsg(s), "new tokens exceed"), "%s",
                      nla_session_errmsg(s));
            munmap(zeros, (size_t)INT_MAX * 4);
        }
        CHECK_EQ(nla_session_n_past(s), 1);
    }
#endif
    CHECK_EQ(nla_session_rewind(s, 5), NLA_ERR_RANGE); /* past the cache: not the ring's fault */
    CHECK_MSG(strstr(nla_session_errmsg(s), "5 is not a position of the cache (0..1)"), "%s",
              nla_session_errmsg(s));
    nla_session_reset(s);
    CHECK_EQ(nla_session_n_past(s), 0);
    nla_session_free(s);
    CHECK_EQ(nla_model_close(m), NLA_OK);

    /* n_ctx x n_seq past INT_MAX (2^23 x 256, every layer sliding so the cache stays
       small): the batch stays n_batch, and a forward pass ends */
    char *cfg = slurp(MODEL "/config.json", NULL);
    cfg =
        replaced(replaced(cfg, "\"full_attention\"", "\"sliding_attention\""), "32768", "8388608");
    CHECK(cfg && strstr(cfg, "8388608") && !strstr(cfg, "full_attention"));
    tmp_dir(err, sizeof err, "api_long");
    CHECK_EQ(copy_file(MODEL "/model.safetensors", "tests/tmp/api_long/model.safetensors"), 0);
    CHECK_EQ(spit("tests/tmp/api_long/config.json", cfg ? cfg : "", cfg ? strlen(cfg) : 0), 0);
    free(cfg);
    CHECK_EQ(nla_model_open("tests/tmp/api_long", NULL, &m, err, sizeof err), NLA_OK);
    nla_session_params lp;
    memset(&lp, 0, sizeof lp);
    lp.n_ctx = 1 << 23;
    lp.n_seq = 256;
    lp.n_threads = 1;
    s = NULL;
    CHECK_EQ(nla_session_new(m, &lp, &s), NLA_OK);
    b.ids = ids40;
    b.n_tokens = 3;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    CHECK_EQ(nla_session_n_past(s), 3);
    nla_session_free(s);
    CHECK_EQ(nla_model_close(m), NLA_OK);

    /* a shared tokenizer: borrowed by two models, still usable after they close */
    nla_tokenizer *tok = NULL;
    nla_model *m2 = NULL;
    nla_model_params mp;
    int32_t tid[8];
    int nt = 0;
    CHECK_EQ(nla_tokenizer_open("tests/fuzz/sidecar_tokenizer.json", &tok, err, sizeof err),
             NLA_OK);
    memset(&mp, 0, sizeof mp);
    mp.shared_tokenizer = tok;
    mp.tokenizer = "tests/no/such/tokenizer.json"; /* shared_tokenizer wins: this is not read */
    CHECK_EQ(nla_model_open(MODEL, &mp, &m, err, sizeof err), NLA_OK);
    CHECK_EQ(nla_model_open(MODEL, &mp, &m2, err, sizeof err), NLA_OK);
    CHECK(nla_model_tokenizer(m) == tok && nla_model_tokenizer(m2) == tok);
    CHECK_EQ(nla_model_close(m), NLA_OK);
    CHECK_EQ(nla_model_close(m2), NLA_OK);
    CHECK_EQ(nla_tokenize(tok, "a fox", 5, NLA_TOKENIZE_BOS, tid, 8, &nt), NLA_OK);
    CHECK(nt >= 2 && tid[0] == 2);
    nla_tokenizer_close(tok);
}

/* ---- decoding ----------------------------------------------------------- */

typedef struct {
    int seen, stop_at;
} cb_state;

static int on_tok(void *user, int32_t tok) {
    cb_state *c = (cb_state *)user;
    (void)tok;
    return ++c->seen == c->stop_at;
}

static int gen(nla_session *s, const nla_generate_params *g, int32_t *out) {
    int n = 0;
    nla_session_reset(s);
    nla_status rc = nla_generate(s, ids40, 8, g, out, &n);
    return rc ? -(int)rc : n;
}

static void test_decoding(void) {
    char err[512];
    nla_model *m;
    CHECK_EQ(nla_model_open(MODEL, NULL, &m, err, sizeof err), NLA_OK);
    nla_session *s;
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_ctx = 64;
    CHECK_EQ(nla_session_new(m, &sp, &s), NLA_OK);
    nla_generate_params g;
    memset(&g, 0, sizeof g);
    int32_t a[40], b[40];
    g.max_new = 20;
    g.no_stop = 1;
    CHECK_EQ(gen(s, &g, a), 20);
    CHECK_EQ(gen(s, &g, b), 20);
    CHECK(memcmp(a, b, sizeof(int32_t) * 20) == 0); /* greedy is deterministic */
    g.temperature = 1.0f;
    g.top_k = 1; /* top-1 sampling is greedy */
    CHECK_EQ(gen(s, &g, b), 20);
    CHECK(memcmp(a, b, sizeof(int32_t) * 20) == 0);
    g.top_k = 0;
    g.top_p = 1e-6f; /* a vanishing nucleus keeps only the top token */
    CHECK_EQ(gen(s, &g, b), 20);
    CHECK(memcmp(a, b, sizeof(int32_t) * 20) == 0);
    g.top_p = 0;
    g.temperature = 1e-38f; /* logits / T overflow: the limit T -> 0 is greedy */
    CHECK_EQ(gen(s, &g, b), 20);
    CHECK(memcmp(a, b, sizeof(int32_t) * 20) == 0);
    g.temperature = 5.0f; /* hot sampling: seeds decide */
    nla_session_seed(s, 1);
    CHECK_EQ(gen(s, &g, a), 20);
    nla_session_seed(s, 1);
    CHECK_EQ(gen(s, &g, b), 20);
    CHECK(memcmp(a, b, sizeof(int32_t) * 20) == 0);
    nla_session_seed(s, 2);
    CHECK_EQ(gen(s, &g, b), 20);
    CHECK(memcmp(a, b, sizeof(int32_t) * 20) != 0);
    for (int i = 0; i < 20; i++) CHECK(a[i] >= 0 && a[i] < 1024);
    g.top_k = 3;
    g.top_p = 0.9f;
    CHECK_EQ(gen(s, &g, b), 20);
    /* top-k draws only from the k most likely: sample one token many times */
    {
        float lg[1024];
        nla_batch fb;
        memset(&fb, 0, sizeof fb);
        fb.n_tokens = 8;
        fb.ids = ids40;
        fb.logits = lg;
        nla_session_reset(s);
        CHECK_EQ(nla_forward(s, &fb), NLA_OK);
        int top[2] = {0, 1};
        if (lg[1] > lg[0]) { top[0] = 1; top[1] = 0; }
        for (int i = 2; i < 1024; i++) {
            if (lg[i] > lg[top[0]]) { top[1] = top[0]; top[0] = i; }
            else if (lg[i] > lg[top[1]]) top[1] = i;
        }
        nla_generate_params one;
        memset(&one, 0, sizeof one);
        one.max_new = 1;
        one.temperature = 50.0f; /* nearly flat: without the cut, anything goes */
        one.top_k = 2;
        int in_top = 1, seen[2] = {0, 0};
        for (int rep = 0; rep < 200; rep++) {
            int32_t t1;
            int n1;
            nla_session_reset(s);
            nla_generate(s, ids40, 8, &one, &t1, &n1);
            in_top &= t1 == top[0] || t1 == top[1];
            seen[t1 == top[1]]++;
        }
        CHECK_MSG(in_top, "top-k 2 drew a token outside the two most likely");
        CHECK(seen[0] > 0 && seen[1] > 0);
    }

    /* stop ids: the stop token ends the output */
    memset(&g, 0, sizeof g);
    g.max_new = 20;
    g.no_stop = 1;
    CHECK_EQ(gen(s, &g, a), 20);
    int32_t stop = a[3];
    int first = 0;
    while (a[first] != stop) first++;
    g.no_stop = 0;
    g.stop_ids = &stop;
    g.n_stop_ids = 1;
    CHECK_EQ(gen(s, &g, b), first + 1);
    CHECK_EQ(b[first], stop);
    /* a stop id outside the vocabulary (a typo) is refused, not ignored */
    const int32_t outside[] = {stop, 999999999, -1};
    for (int k = 1; k < 3; k++) {
        g.stop_ids = outside;
        g.n_stop_ids = k + 1;
        CHECK_EQ(gen(s, &g, b), -NLA_ERR_RANGE);
    }
    /* the callback stops generation; its token is kept */
    cb_state cb = {0, 5};
    memset(&g, 0, sizeof g);
    g.max_new = 20;
    g.no_stop = 1;
    g.on_token = on_tok;
    g.user = &cb;
    CHECK_EQ(gen(s, &g, b), 5);
    CHECK_EQ(cb.seen, 5);
    /* bad parameters and a context overflow are errors, not crashes */
    g.on_token = NULL;
    g.max_new = 0;
    CHECK_EQ(gen(s, &g, b), -NLA_ERR_ARG);
    g.max_new = 20;
    g.temperature = -1;
    CHECK_EQ(gen(s, &g, b), -NLA_ERR_ARG);
    g.temperature = 0;
    g.top_p = 2;
    CHECK_EQ(gen(s, &g, b), -NLA_ERR_ARG);
    g.top_p = 0;
    g.max_new = 60; /* 8 + 60 - 1 > 64 */
    CHECK_EQ(gen(s, &g, b), -NLA_ERR_RANGE);
    CHECK(strstr(nla_session_errmsg(s), "context") != NULL);
    int n = 0;
    CHECK_EQ(nla_generate(s, NULL, 0, &g, b, &n), NLA_ERR_ARG);
    /* prompt rows as embeddings give the same continuation as the ids */
    float *e = (float *)malloc(8 * 64 * sizeof(float));
    CHECK_EQ(nla_embed_tokens(m, ids40, 8, e), NLA_OK);
    memset(&g, 0, sizeof g);
    g.max_new = 10;
    g.no_stop = 1;
    CHECK_EQ(gen(s, &g, a), 10);
    g.prompt_embeds = e;
    CHECK_EQ(gen(s, &g, b), 10);
    CHECK(memcmp(a, b, 10 * sizeof(int32_t)) == 0);
    free(e);
    nla_session_free(s);
    CHECK_EQ(nla_model_close(m), NLA_OK);
}

int main(void) {
    test_contract();
    test_decoding();
    return test_report();
}
