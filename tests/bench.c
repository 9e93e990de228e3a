/* bench.c - `make bench`: speed and memory, never a pass/fail test.
   Prints, in one run on this machine: a streaming-read bandwidth probe;
   the tokenizer's load time and encode/decode throughput on 8 MB of text;
   and for each model folder given on the command line: load time, prefill
   tokens/s (512 tokens), decode tokens/s (64 tokens) and decode as a share
   of the bandwidth bound (weight bytes read per token / measured bandwidth),
   at 1 and 2 threads (or NLA_BENCH_THREADS="1 2 4 ..."). */
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include "../nla.h"
#include "util.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of 3 sums over 1 GiB of 64-bit integers with nt threads: GB/s.
   (Integer adds vectorize; a float sum would be bound by its add latency.) */
static double bandwidth(int nt) {
    const size_t n = (size_t)1 << 27;
    uint64_t *a = (uint64_t *)malloc(n * sizeof(uint64_t));
    double best = 0;
    if (!a) return 0;
    for (size_t i = 0; i < n; i++) a[i] = i & 1023;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        uint64_t s = 0;
#ifdef _OPENMP
#pragma omp parallel for reduction(+ : s) num_threads(nt) schedule(static)
#endif
        for (size_t i = 0; i < n; i++) s += a[i];
        double gbs = n * sizeof(uint64_t) / (now() - t0) / 1e9;
        if (gbs > best && s > 0) best = gbs;
    }
    (void)nt;
    free(a);
    return best;
}

static void bench_tokenizer(void) {
    nla_tokenizer *t;
    char err[512];
    double t0 = now();
    if (nla_tokenizer_open("weights/tokenizer.json", &t, err, sizeof err)) { printf("tokenizer: %s\n", err); return; }
    double load = now() - t0;
    size_t cl = 1;
    char *cases = slurp("tests/data/tokenizer/cases.jsonl", &cl);
    const size_t n = (size_t)8 << 20;
    char *text = (char *)malloc(n), *back = (char *)malloc(n + 1);
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * nla_tokenize_bound(n));
    for (size_t i = 0; i < n; i++) text[i] = cases[i % cl];
    int n_ids = 0;
    size_t got;
    t0 = now();
    nla_tokenize(t, text, n, 0, ids, (int)nla_tokenize_bound(n), &n_ids);
    double enc = now() - t0;
    t0 = now();
    nla_detokenize(t, ids, n_ids, back, n + 1, &got);
    double dec = now() - t0;
    printf("tokenizer: load %.0f ms; encode %.1f MB/s (%d ids from 8 MB of mixed text); decode %.0f MB/s\n", load * 1e3, n / enc / 1e6,
           n_ids, n / dec / 1e6);
    free(cases); free(text); free(back); free(ids);
    nla_tokenizer_close(t);
}

static void bench_model(const char *dir, const int *threads, int n_threads, const double *bw) {
    nla_model *m;
    char err[512];
    double t0 = now();
    if (nla_model_open(dir, NULL, &m, err, sizeof err)) { printf("%s: %s\n", dir, err); return; }
    double load = now() - t0;
    nla_model_info in;
    nla_model_get_info(m, &in);
    /* bytes read per decoded token: every matrix and the head; the stored
       embedding table is only gathered from */
    const double gb = (double)in.read_bytes / 1e9;
    printf("%s: %d layers, d %d, %s, %.3f GB read per token; load %.2f s\n", dir, in.n_layers, in.d_model,
           in.dtype == NLA_DTYPE_Q8_0 ? "q8_0" : in.dtype == NLA_DTYPE_Q4_0 ? "q4_0" : "as stored", gb, load);
    enum { PP = 512, TG = 64 };
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * PP);
    for (int i = 0; i < PP; i++) ids[i] = i ? 1000 + (i * 7919) % 200000 : 2;
    printf("  threads  prefill tok/s  decode tok/s  decode GB/s  decode / bound\n");
    for (int k = 0; k < n_threads; k++) {
        nla_session_params sp;
        memset(&sp, 0, sizeof sp);
        sp.n_threads = threads[k];
        sp.n_ctx = PP + TG + 8;
        sp.n_batch = PP;
        nla_session *s;
        if (nla_session_new(m, &sp, &s)) { printf("  no session\n"); break; }
        float *logits = (float *)malloc(sizeof(float) * (size_t)in.vocab_size);
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = PP;
        b.ids = ids;
        b.logits = logits;
        t0 = now();
        nla_forward(s, &b);
        double pp = PP / (now() - t0);
        nla_session_reset(s);
        b.n_tokens = 8;
        nla_forward(s, &b);
        t0 = now();
        for (int i = 0; i < TG; i++) {
            b.n_tokens = 1;
            b.ids = ids + 8 + i;
            nla_forward(s, &b);
        }
        double tg = TG / (now() - t0);
        printf("  %7d  %13.1f  %12.2f  %11.1f  %13.0f %%\n", threads[k], pp, tg, tg * gb, 100 * tg * gb / bw[k]);
        free(logits);
        nla_session_free(s);
    }
    free(ids);
    nla_model_close(m);
}

int main(int argc, char **argv) {
    int threads[16] = {1, 2}, n_threads = 2;
    const char *env = getenv("NLA_BENCH_THREADS");
    if (env) {
        n_threads = 0;
        for (char *p = (char *)env, *e; *p && n_threads < 16; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            if (v > 0) threads[n_threads++] = (int)v;
        }
    }
    double bw[16];
    for (int k = 0; k < n_threads; k++) {
        bw[k] = bandwidth(threads[k]);
        printf("memory bandwidth (streaming read, %d thread%s): %.1f GB/s\n", threads[k], threads[k] > 1 ? "s" : "", bw[k]);
    }
    bench_tokenizer();
    for (int i = 1; i < argc; i++) bench_model(argv[i], threads, n_threads, bw);
    return 0;
}
