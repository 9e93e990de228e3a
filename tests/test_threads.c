/* test_threads.c - models and tokenizers are shared read-only between
   threads: four threads, each with its own sessions, run the same work on
   the same handles at once, and every result must equal the serial run bit
   for bit. The work: a bf16 forward over 40 tokens and a sampled
   generation, the same on a Q8_0 model, tokenization, and the NLA round
   trip (extract, batched verbalize, reconstruct) on the golden trio.
   With OpenMP, the same work on sessions of 3 threads must give the same
   bits too, also where OpenMP gives each session's loops a team of one
   thread (sessions inside the caller's own parallel region). `make tsan`
   runs this program under ThreadSanitizer. */
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../nla.h"
#include "test.h"
#include "util.h"

#define N_THREADS 4
#define GQA "tests/data/forward/gqa-bf16/model"
#define TOK "tests/fuzz/sidecar_tokenizer.json" /* the real one cut down: loads in 10 ms */
#define NLA_DIR "tests/data/nla/"
#define D 16 /* the trio's d_model */

static const int32_t ids40[] = {2,   107, 461, 409, 554,  430, 352, 1006, 444, 1010,
                                87,  530, 299, 34,  679,  379, 942, 502,  710, 688,
                                872, 5,   912, 867, 523,  256, 764, 159,  268, 521,
                                978, 621, 935, 14,  1001, 750, 360, 143,  87,  628};

typedef struct {
    const nla_model *gqa[2]; /* bf16, Q8_0 */
    const nla_model *target, *av, *ar;
} shared;

typedef struct {
    const shared *sh;
    int n_threads; /* of each session; 0: 1 */
    nla_status rc;
    float logits[2][40 * 1024];
    int32_t gen[2][16];
    int32_t tok[64];
    int n_tok;
    float v[2 * D], rec[2 * D];
    int32_t expl[2 * 8];
    int n_expl[2];
} job;

static nla_session *session(const nla_model *m, int n_seq, const job *j, nla_status *rc) {
    nla_session_params sp;
    nla_session *s = NULL;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = j->n_threads ? j->n_threads : 1;
    sp.n_ctx = 160;
    sp.n_seq = n_seq;
    if (!*rc) *rc = nla_session_new(m, &sp, &s);
    return s;
}

static void *work(void *arg) {
    job *j = (job *)arg;
    const shared *sh = j->sh;
    for (int q = 0; q < 2; q++) { /* forward, then a seeded sampled generation */
        nla_session *s = session(sh->gqa[q], 1, j, &j->rc);
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = 40;
        b.ids = ids40;
        b.logits = j->logits[q];
        b.all_logits = 1;
        if (!j->rc) j->rc = nla_forward(s, &b);
        nla_session_reset(s);
        nla_session_seed(s, 7);
        nla_generate_params g;
        memset(&g, 0, sizeof g);
        g.max_new = 16;
        g.temperature = 0.8f;
        g.no_stop = 1;
        int n = 0;
        if (!j->rc) j->rc = nla_generate(s, ids40, 10, &g, j->gen[q], &n);
        nla_session_free(s);
    }
    const char *text = "Threads share the model; each has its own session.";
    if (!j->rc)
        j->rc = nla_tokenize(nla_model_tokenizer(sh->target), text, strlen(text), NLA_TOKENIZE_BOS,
                             j->tok, 64, &j->n_tok);
    const int32_t pos[2] = {j->n_tok - 2, j->n_tok - 1};
    nla_session *s = session(sh->target, 1, j, &j->rc);
    if (!j->rc) j->rc = nla_extract(s, j->tok, j->n_tok, 2, pos, 2, j->v);
    nla_session_free(s);
    s = session(sh->av, 2, j, &j->rc);
    nla_verbalize_params vp;
    memset(&vp, 0, sizeof vp);
    vp.max_new = 8;
    if (!j->rc) j->rc = nla_verbalize_batch(s, j->v, 2, &vp, j->expl, 8, j->n_expl);
    nla_session_free(s);
    const char *ex[2] = {"a fox in a sentence about threads",
                         "<explanation>sessions</explanation>"};
    s = session(sh->ar, 1, j, &j->rc);
    if (!j->rc) j->rc = nla_reconstruct(s, ex, 2, j->rec);
    nla_session_free(s);
    return NULL;
}

static nla_model *open_model(const char *dir, nla_quant q, const char *tok) {
    nla_model_params mp;
    nla_model *m = NULL;
    char err[512];
    memset(&mp, 0, sizeof mp);
    mp.quant = q;
    mp.tokenizer = tok;
    nla_status rc = nla_model_open(dir, &mp, &m, err, sizeof err);
    CHECK_MSG(rc == NLA_OK, "open %s: %s", dir, err);
    return m;
}

int main(void) {
    nla_model *m[5] = {open_model(GQA, NLA_QUANT_NONE, NULL), open_model(GQA, NLA_QUANT_Q8_0, NULL),
                       open_model(NLA_DIR "target", NLA_QUANT_NONE, TOK),
                       open_model(NLA_DIR "av", NLA_QUANT_NONE, TOK),
                       open_model(NLA_DIR "ar", NLA_QUANT_NONE, TOK)};
    if (!m[0] || !m[1] || !m[2] || !m[3] || !m[4]) return test_report();
    shared sh = {{m[0], m[1]}, m[2], m[3], m[4]};
    job *serial = (job *)calloc(1, sizeof *serial), *par = (job *)calloc(N_THREADS, sizeof *par);
    serial->sh = &sh;
    work(serial);
    CHECK_EQ(serial->rc, NLA_OK);
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        par[i].sh = &sh;
        CHECK_EQ(pthread_create(&th[i], NULL, work, &par[i]), 0);
    }
    int same = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(par[i].rc, NLA_OK);
        par[i].sh = serial->sh;
        same += !memcmp(&par[i], serial, sizeof *serial); /* every output field, bit for bit */
    }
    CHECK_EQ(same, N_THREADS);
    printf("  %d threads sharing 5 models (bf16, Q8_0, NLA trio) and a tokenizer: results "
           "identical to the serial run\n",
           N_THREADS);
    /* sessions of 3 threads: alone, then two at once inside a parallel
       region, where OpenMP (nesting off) runs their loops on one thread */
    memset(par, 0, N_THREADS * sizeof *par); /* padding too: whole jobs are compared */
    par[0].sh = &sh;
    par[0].n_threads = 3;
    work(&par[0]);
    CHECK_EQ(par[0].rc, NLA_OK);
    par[0].n_threads = 0;
    CHECK(!memcmp(&par[0], serial, sizeof *serial));
#ifdef _OPENMP
    int team = 0;
    omp_set_max_active_levels(1); /* whatever OMP_MAX_ACTIVE_LEVELS says */
#pragma omp parallel num_threads(2) reduction(+ : team)
    {
        job *j = &par[1 + omp_get_thread_num()];
        j->sh = &sh;
        j->n_threads = 3;
        work(j);
        team += 1;
    }
    for (int i = 1; i <= team; i++) {
        CHECK_EQ(par[i].rc, NLA_OK);
        par[i].n_threads = 0;
        CHECK(!memcmp(&par[i], serial, sizeof *serial));
    }
    printf("  sessions of 3 threads, alone and in %d threads of a parallel region: identical too\n",
           team);
#endif
    free(serial);
    free(par);
    for (int i = 0; i < 5; i++) CHECK_EQ(nla_model_close(m[i]), NLA_OK);
    return test_report();
}
