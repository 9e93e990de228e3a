/* bench.c - `make bench`: speed and memory, never a pass/fail test.
   Prints, in one run on this machine: a streaming-read bandwidth probe and
   the compute peak, measured; the tokenizer's load time
   and encode/decode throughput on 8 MB of text (skipped when
   NLA_BENCH_NO_TOKENIZER is set); for each model folder given on the
   command line: load time, prefill tokens/s (512 tokens) and GFLOP/s
   against the peak, decode tokens/s (64 tokens) and decode as a share of
   the bandwidth bound (weight bytes read per token x tokens/s over a
   probe's GB/s, the probe read again between the decode's 4 quarters, so
   that each quarter meets the host's memory speed of its own minute)
   twice: against 1 GiB of the process's memory read as one stream a
   thread, and, for mapped weights, against the weights' own pages read as
   four streams a thread (the same memory at the rate the kernels' streams
   can reach, where another buffer may be faster or slower memory),
   at 1 and 2 threads (or NLA_BENCH_THREADS="1 2 4 ..."), then how much of
   the mapped weights is in 2 MB pages (Linux); and with
   --nla DIR (a trio: DIR/target, DIR/av, DIR/ar) the NLA round trip at the
   most threads: B vectors extracted from a 64-token text, verbalized
   together (NLA_BENCH_AV_TOKENS new tokens each, default 150) and
   reconstructed together, for B in NLA_BENCH_B (default "1 4 16"); and
   with --search DIR nla search's speed on a 40000-row study of d = 3840
   (random, written under DIR the first time). One model is open at a
   time. */
#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#define NLA_EXPERIMENTAL /* nla_kernel_simd, nla_kernel_dp_rounds: the measured compute peak */
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

/* The streaming-read probe: regions of 64-bit integers summed with nt
   threads. (Integer adds vectorize; a float sum would be bound by its add
   latency.) */
typedef struct {
    const uint64_t *a;
    size_t bytes; /* its length (a mapped file's whole); bytes / 8 integers are read */
} region;

/* The probe of the machine: 1 GiB of the process's own memory, in 2 MB
   pages where Linux gives them, as the weights are mapped (in 4 KB pages
   the same loop reads 5-15 % slower). */
enum { PROBE_N = 1 << 27 };

static region probe_new(void) {
    region r = {NULL, 0};
    void *p = NULL;
    if (posix_memalign(&p, (size_t)1 << 21, PROBE_N * sizeof(uint64_t))) return r;
    uint64_t *a = (uint64_t *)p;
#ifdef MADV_HUGEPAGE
    madvise(p, PROBE_N * sizeof(uint64_t), MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < PROBE_N; i++) a[i] = i & 1023;
    r.a = a;
    r.bytes = PROBE_N * sizeof(uint64_t);
    return r;
}

/* Sums the n integers at a with nt threads, each its own range, read as
   one stream or as four (the range's quarters, in step, as the decoding
   kernels read on AMD's CPUs: on a Zen 5 four streams read 15-20 % more
   than one). */
static uint64_t probe_sum(const uint64_t *a, size_t n, int nt, int four) {
    uint64_t s = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(+ : s)
#endif
    {
#ifdef _OPENMP
        const size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads();
#else
        const size_t t = 0, T = 1;
#endif
        const uint64_t *b = a + n * t / T;
        const size_t m = n * (t + 1) / T - n * t / T, q = four ? m / 4 : 0;
        for (size_t i = 0; i < q; i++) s += b[i] + b[q + i] + b[2 * q + i] + b[3 * q + i];
        for (size_t i = 4 * q; i < m; i++) s += b[i];
    }
    (void)nt;
    return s;
}

/* The best of reps reads of the k regions: GB/s (0 without any). */
static double probe_read(const region *r, int k, int nt, int reps, int four) {
    double best = 0;
    size_t bytes = 0;
    for (int j = 0; j < k; j++) bytes += r[j].bytes;
    for (int rep = 0; bytes && rep < reps; rep++) {
        double t0 = now();
        uint64_t s = 0;
        for (int j = 0; j < k; j++) s += probe_sum(r[j].a, r[j].bytes / sizeof(uint64_t), nt, four);
        double gbs = bytes / (now() - t0) / 1e9;
        if (gbs > best && s > 0) best = gbs;
    }
    return best;
}

static void pages_unmap(region *r, int k) {
#ifdef __linux__
    for (int j = 0; j < k; j++) munmap((void *)r[j].a, r[j].bytes);
#else
    (void)r;
    (void)k;
#endif
}

/* The weights' own pages: the files model*.safetensors of folder dir (the
   one file or the shards of a Hugging Face checkpoint) mapped again, which
   maps the page cache's pages that the model's mapping reads: how many (0
   where none, or more than cap). Not all of a host's memory is equally
   fast to a guest: eight 512 MB buffers of one process streamed at 27-41
   GB/s from one thread (AMD Zen 5, 2-vCPU guest, each the best of 6 reads
   in turn), so a probe of other memory moves a decode's share of the bound
   by as much. */
static int pages_map(const char *dir, region *r, int cap) {
    int k = 0;
#ifdef __linux__
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const size_t n = strlen(e->d_name);
        if (n < 17 || strncmp(e->d_name, "model", 5) || strcmp(e->d_name + n - 12, ".safetensors"))
            continue;
        if (k == cap) { /* too many to probe whole */
            pages_unmap(r, k);
            k = -1;
            break;
        }
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        const int fd = open(path, O_RDONLY);
        struct stat sb;
        if (fd < 0) continue;
        void *p = fstat(fd, &sb) || sb.st_size < 8
                      ? MAP_FAILED
                      : mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (p == MAP_FAILED) continue;
#ifdef MADV_HUGEPAGE
        madvise(p, (size_t)sb.st_size, MADV_HUGEPAGE); /* the cached 2 MB pages as such */
#endif
        r[k].a = (const uint64_t *)p;
        r[k++].bytes = (size_t)sb.st_size;
    }
    if (d) closedir(d);
#else
    (void)dir;
    (void)r;
    (void)cap;
#endif
    return k > 0 ? k : 0;
}

static void bench_tokenizer(void) {
    nla_tokenizer *t;
    char err[512];
    double t0 = now();
    if (nla_tokenizer_open("weights/tokenizer.json", &t, err, sizeof err)) {
        printf("tokenizer: %s\n", err);
        return;
    }
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
    printf("tokenizer: load %.0f ms; encode %.1f MB/s (%d ids from 8 MB of mixed text); decode "
           "%.0f MB/s\n",
           load * 1e3, n / enc / 1e6, n_ids, n / dec / 1e6);
    free(cases); free(text); free(back); free(ids);
    nla_tokenizer_close(t);
}

/* The CPU's model name from /proc/cpuinfo ("unknown" where there is none). */
static void cpu_model(char *out, size_t n) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    snprintf(out, n, "unknown");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            const char *v = strchr(line, ':') + 1;
            while (*v == ' ') v++;
            snprintf(out, n, "%.*s", (int)strcspn(v, "\n"), v);
            break;
        }
    if (f) fclose(f);
}

/* Model options: NLA_READ_WEIGHTS=1 reads the weights into memory instead
   of mapping the file (on hosts that reclaim mapped file pages proactively
   the two decode at different speeds). */
static nla_model_params bench_model_params(void) {
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    const char *rw = getenv("NLA_READ_WEIGHTS");
    mp.no_mmap = rw && *rw && strcmp(rw, "0") != 0;
    return mp;
}

/* GB of this process's file mappings resident (*file) and of those in 2 MB
   pages (*huge), from Linux's /proc/self/smaps_rollup (Pss_File,
   FilePmdMapped); 0 where that is not known. */
static int mapped_gb(double *file, double *huge) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    int got = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Pss_File:", 9)) { *file = atof(line + 9) * 1024 / 1e9; got |= 1; }
        if (!strncmp(line, "FilePmdMapped:", 14)) {
            *huge = atof(line + 14) * 1024 / 1e9;
            got |= 2;
        }
    }
    if (f) fclose(f);
    return got == 3;
}

/* The compute peak at nt threads, measured: every thread runs the
   kernel's int8 dot-product step at once (nla_kernel_dp_rounds: 12
   independent sums), rounds doubled until a run takes 0.2 s; ops per
   second, 2 per multiply-add (0 for the scalar build). The clock a core
   keeps under such a load is rarely the nominal one /proc/cpuinfo shows. */
static double peak_measured(int nt) {
    for (long n = 1 << 14;; n *= 2) {
        double macs = 0, t0 = now();
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) reduction(+ : macs)
#endif
        for (int i = 0; i < nt; i++) {
            int32_t sink;
            macs += nla_kernel_dp_rounds(n, &sink);
        }
        const double t = now() - t0;
        if (macs == 0 || t > 0.2) return macs > 0 ? 2 * macs / t : 0;
    }
}

/* The median of v[0..3] (sorted in place). */
static double median4(double *v) {
    for (int i = 1; i < 4; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            const double x = v[j];
            v[j] = v[j - 1];
            v[j - 1] = x;
        }
    return (v[1] + v[2]) / 2;
}

static void bench_model(const char *dir, const int *threads, int n_threads, const region *pr,
                        const double *peak) {
    nla_model *m;
    char err[512];
    double t0 = now();
    const nla_model_params mp = bench_model_params();
    if (nla_model_open(dir, &mp, &m, err, sizeof err)) { printf("%s: %s\n", dir, err); return; }
    double load = now() - t0;
    nla_model_info in;
    nla_model_get_info(m, &in);
    /* bytes read per decoded token: every matrix and the head; the stored
       embedding table is only gathered from */
    const double gb = (double)in.read_bytes / 1e9;
    /* prefill work per token: 2 flops per weight of the blocks' matrices
       (q, k, v, o; gate, up, down); the embedding is a lookup, the head runs
       for the last row only, attention is left out */
    const double qkvo = 2.0 * in.d_model * ((double)in.n_heads + in.n_kv_heads) * in.head_dim,
                 mlp = 3.0 * in.d_model * in.d_ff;
    const double flops = 2.0 * in.n_layers * (qkvo + mlp);
    printf("%s: %d layers, d %d, %s, %.3f GB read per token, %.2f GFLOP per prefill token; load "
           "%.2f s\n",
           dir, in.n_layers, in.d_model,
           in.dtype == NLA_DTYPE_Q8_0   ? "q8_0"
           : in.dtype == NLA_DTYPE_Q4_0 ? "q4_0"
                                        : "as stored",
           gb, flops / 1e9, load);
    enum { PP = 512, TG = 64 };
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * PP);
    for (int i = 0; i < PP; i++) ids[i] = i ? 1000 + (i * 7919) % 200000 : 2;
    /* the bound twice: against the 1 GiB probe, and against a read of the
       weights' own pages (mapped weights only: a copy read into memory
       lies elsewhere) */
    region pg[64];
    const int npg = mp.no_mmap ? 0 : pages_map(dir, pg, 64);
    printf("  threads  prefill tok/s  prefill GFLOP/s  of peak  decode tok/s  decode GB/s  decode "
           "/ bound  / own pages' bound\n");
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
        /* a warm-up prefill first, as llama-bench does: its first touch of
           the session's memory and of the mapped weights is not timed */
        nla_forward(s, &b);
        nla_session_reset(s);
        t0 = now();
        nla_forward(s, &b);
        double pp = PP / (now() - t0);
        nla_session_reset(s);
        b.n_tokens = 8;
        nla_forward(s, &b);
        /* decode in quarters, each between two reads of each probe: the
           quarter's share of a bound is against the mean of its two; the
           median of the four is printed */
        double t_all = 0, share[4], own[4], bw0 = probe_read(pr, 1, threads[k], 2, 0),
               pw0 = probe_read(pg, npg, threads[k], 2, 1);
        for (int qr = 0; qr < 4; qr++) {
            t0 = now();
            for (int i = qr * TG / 4; i < (qr + 1) * TG / 4; i++) {
                b.n_tokens = 1;
                b.ids = ids + 8 + i;
                nla_forward(s, &b);
            }
            const double t = now() - t0, bw1 = probe_read(pr, 1, threads[k], 2, 0),
                         pw1 = probe_read(pg, npg, threads[k], 2, 1);
            t_all += t;
            share[qr] = bw0 + bw1 > 0 ? (TG / 4) / t * gb / ((bw0 + bw1) / 2) : 0;
            own[qr] = pw0 + pw1 > 0 ? (TG / 4) / t * gb / ((pw0 + pw1) / 2) : 0;
            bw0 = bw1;
            pw0 = pw1;
        }
        const double tg = TG / t_all;
        printf("  %7d  %13.1f  %15.1f  %5.0f %%  %12.2f  %11.1f  %12.0f %%", threads[k], pp,
               pp * flops / 1e9, peak[k] > 0 ? 100 * pp * flops / peak[k] : 0.0, tg, tg * gb,
               100 * median4(share));
        if (npg) printf("  %16.0f %%\n", 100 * median4(own));
        else printf("  %18s\n", "-");
        free(logits);
        nla_session_free(s);
    }
    pages_unmap(pg, npg); /* before the count below, which counts each mapping */
    /* the weights' stream needs huge pages: a file cached in 4 KB pages decodes far slower */
    double file = 0, huge = 0;
    if (!mp.no_mmap && mapped_gb(&file, &huge))
        printf("  file mappings: %.2f GB resident, %.2f GB in 2 MB pages\n", file, huge);
    free(ids);
    nla_model_close(m);
}

/* --- the NLA round trip */

enum { NLA_TEXT = 64, NLA_MAX_B = 64 };

typedef struct {
    int B, av_tokens, ar_tokens;    /* vectors, AV tokens written, AR input tokens, in all */
    double extract, verbalize, reconstruct; /* seconds */
} rt_row;

/* Opens DIR/sub (as stored) unless *m is open, and a session of n_seq
   sequences, n_ctx long (none for n_seq 0). Nonzero on failure, printed. */
static int rt_open(const char *dir, const char *sub, nla_model **m, int nt, int n_seq, int n_ctx,
                   nla_session **s) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    *s = NULL;
    const nla_model_params mp = bench_model_params();
    if (!*m && nla_model_open(path, &mp, m, err, sizeof err)) {
        printf("  %s: %s\n", path, err);
        return 1;
    }
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = nt;
    sp.n_seq = n_seq;
    sp.n_ctx = n_ctx;
    if (n_seq && nla_session_new(*m, &sp, s)) { printf("  %s: no session\n", path); return 1; }
    return 0;
}

/* Tokens of the AR input for explanation ex: <bos> + template around it. */
static int ar_len(const nla_model *m, const char *tmpl, const char *ex) {
    const char *at = strstr(tmpl, "{explanation}");
    const size_t n = strlen(tmpl) + strlen(ex);
    char *text = (char *)malloc(n + 1);
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * nla_tokenize_bound(n));
    int n_ids = 0;
    snprintf(text, n + 1, "%.*s%s%s", (int)(at - tmpl), tmpl, ex, at + 13);
    nla_tokenize(nla_model_tokenizer(m), text, strlen(text), NLA_TOKENIZE_BOS, ids,
                 (int)nla_tokenize_bound(n), &n_ids);
    free(text);
    free(ids);
    return n_ids;
}

/* Target, then AV, then AR, one model at a time: the B rows of each phase
   run in one session of B sequences (B = 1 is one vector at a time). */
static void bench_nla(const char *dir, int nt, const int *Bs, int nB, int av_tokens) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    int Bmax = 1;
    for (int k = 0; k < nB; k++) Bmax = Bs[k] > Bmax ? Bs[k] : Bmax;
    rt_row row[16];
    memset(row, 0, sizeof row);
    printf("NLA round trip %s: %d threads, %d-token text, %d AV tokens per vector (fewer on a stop "
           "token)\n",
           dir, nt, NLA_TEXT, av_tokens);
    /* the AV's sidecar: block K and the prompt length */
    if (rt_open(dir, "av", &m, nt, 0, 0, &s)) return;
    nla_meta meta;
    nla_model_get_meta(m, &meta);
    const int d = meta.d_model, K = meta.layer, T_av = meta.av_prompt_len;
    nla_model_close(m);
    m = NULL;
    /* 1. target: Bmax vectors at the text's last positions, one forward */
    static const char text[] =
        "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps "
        "as his father had, and lit the lamp that guided fishing boats home through the fog "
        "that rolled in from the cold northern sea. On the night of the great storm the "
        "lamp failed, and he carried a lantern to the gallery, shielding the flame with his "
        "coat until the first grey light showed the harbour and every boat safely moored.";
    int32_t ids[512], pos[NLA_MAX_B];
    int n_ids = 0;
    float *v = (float *)malloc(sizeof(float) * (size_t)Bmax * d),
          *rec = (float *)malloc(sizeof(float) * (size_t)Bmax * d);
    int32_t *out = (int32_t *)malloc(sizeof(int32_t) * (size_t)Bmax * av_tokens);
    int *n_out = (int *)malloc(sizeof(int) * (size_t)Bmax);
    char **ex = (char **)calloc((size_t)Bmax, sizeof(char *));
    double t0 = now();
    if (rt_open(dir, "target", &m, nt, 1, NLA_TEXT, &s)) goto out;
    printf("  load target %.2f s", now() - t0);
    nla_tokenize(nla_model_tokenizer(m), text, strlen(text), NLA_TOKENIZE_BOS, ids, 512, &n_ids);
    if (n_ids < NLA_TEXT) { printf("\n  the text is only %d tokens\n", n_ids); goto out; }
    for (int q = 0; q < Bmax; q++) pos[q] = NLA_TEXT - 1 - q % (NLA_TEXT - 1);
    t0 = now();
    if (nla_extract(s, ids, NLA_TEXT, K, pos, Bmax, v)) {
        printf("\n  extract: %s\n", nla_session_errmsg(s));
        goto out;
    }
    const double t_extract = now() - t0;
    printf("; extract (%d tokens, blocks 0..%d) %.2f s\n", NLA_TEXT, K, t_extract);
    nla_session_free(s); s = NULL;
    nla_model_close(m); m = NULL;
    /* 2. AV: B vectors decoded together */
    t0 = now();
    for (int k = 0; k < nB; k++) {
        nla_verbalize_params vp;
        memset(&vp, 0, sizeof vp);
        vp.max_new = av_tokens;
        if (rt_open(dir, "av", &m, nt, Bs[k], T_av + av_tokens, &s)) goto out;
        if (!k) printf("  load AV %.2f s", now() - t0);
        row[k].B = Bs[k];
        row[k].extract = t_extract;
        t0 = now();
        if (nla_verbalize_batch(s, v, Bs[k], &vp, out, av_tokens, n_out)) {
            printf("\n  verbalize: %s\n", nla_session_errmsg(s));
            goto out;
        }
        row[k].verbalize = now() - t0;
        for (int q = 0; q < Bs[k]; q++) {
            size_t len = 0, a, n;
            row[k].av_tokens += n_out[q];
            nla_detokenize(nla_model_tokenizer(m), out + (size_t)q * av_tokens, n_out[q], NULL, 0,
                           &len);
            char *raw = (char *)malloc(len + 1);
            nla_detokenize(nla_model_tokenizer(m), out + (size_t)q * av_tokens, n_out[q], raw,
                           len + 1, &len);
            nla_parse_explanation(raw, len, &a, &n); /* random weights: no tags, the whole text */
            memmove(raw, raw + a, n);
            raw[n] = 0;
            free(ex[q]);
            ex[q] = raw;
        }
        nla_session_free(s); s = NULL;
    }
    nla_model_close(m); m = NULL;
    /* 3. AR: B explanations read together (an AR input is at most about
       twice the AV's tokens plus the template) */
    t0 = now();
    for (int k = 0; k < nB; k++) {
        if (rt_open(dir, "ar", &m, nt, Bs[k], 2 * av_tokens + 64, &s)) goto out;
        if (!k) printf("; load AR %.2f s\n", now() - t0);
        nla_model_get_meta(m, &meta); /* the AR's template */
        t0 = now();
        if (nla_reconstruct(s, (const char *const *)ex, Bs[k], rec)) {
            printf("  reconstruct: %s\n", nla_session_errmsg(s));
            goto out;
        }
        row[k].reconstruct = now() - t0;
        for (int q = 0; q < Bs[k]; q++) row[k].ar_tokens += ar_len(m, meta.ar_template, ex[q]);
        nla_session_free(s); s = NULL;
    }
    printf("     B  AV tokens  verbalize s  AV tok/s  AR tokens  reconstruct s  AR tok/s  round "
           "trip s  s per explained token  explained tok/s  vs B=1\n");
    for (int k = 0; k < nB; k++) {
        const rt_row *r = &row[k];
        const double total = r->extract + r->verbalize + r->reconstruct, tps = r->B / total,
                     tps1 = row[0].B / (row[0].extract + row[0].verbalize + row[0].reconstruct);
        printf("  %4d  %9d  %11.2f  %8.2f  %9d  %13.2f  %8.2f  %12.2f  %21.3f  %15.3f  %5.2fx\n",
               r->B, r->av_tokens, r->verbalize, r->av_tokens / r->verbalize, r->ar_tokens,
               r->reconstruct, r->ar_tokens / r->reconstruct, total, total / r->B, tps, tps / tps1);
    }
out:
    for (int q = 0; q < Bmax; q++) free(ex[q]);
    free(ex); free(v); free(rec); free(out); free(n_out);
    nla_session_free(s);
    nla_model_close(m);
}

/* nla search's speed: a study of 40000 rows of d = 3840 (random vectors and
   explanations of about 300 characters, written in the results layout under
   dir on the first run: 615 MB; each row with its activation's FNV-1a
   checksum, as nla eval writes it, which the search checks), opened, then
   searched by cosine to a random vector and by a regular expression over
   the explanations. */
#define SEARCH_ROWS 40000
#define SEARCH_D 3840
static void bench_search(const char *dir) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    FILE *f = fopen(path, "rb");
    uint64_t x = 88172645463325252ull;
    if (f) fclose(f);
    else { /* the study: activations.npy, then results.jsonl (it is what marks the folder done) */
        const int64_t sh[2] = {SEARCH_ROWS, SEARCH_D};
        float *v = (float *)malloc(sizeof(float) * SEARCH_ROWS * SEARCH_D);
        uint64_t *sum = (uint64_t *)malloc(sizeof(uint64_t) * SEARCH_ROWS);
        static const char *const words[] = {"Narrative", "prose",   "about",  "a",      "ferry",
                                            "harbour",   "code",    "loop",   "list",   "token",
                                            "ends",      "the",     "clause", "formal", "English",
                                            "setting",   "question"};
        if (!v || !sum) { printf("search: out of memory\n"); free(v); free(sum); return; }
        mkdir(dir, 0755);
        for (size_t i = 0; i < (size_t)SEARCH_ROWS * SEARCH_D; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            v[i] = (float)((int64_t)(x >> 11) - (1ll << 52)) / (float)(1ll << 52);
        }
        for (int i = 0; i < SEARCH_ROWS; i++) { /* FNV-1a 64 of the row's bytes */
            const unsigned char *b = (const unsigned char *)(v + (size_t)i * SEARCH_D);
            sum[i] = 0xcbf29ce484222325ull;
            for (size_t k = 0; k < sizeof(float) * SEARCH_D; k++)
                sum[i] = (sum[i] ^ b[k]) * 0x100000001b3ull;
        }
        snprintf(path, sizeof path, "%s/activations.npy", dir);
        const nla_status wr = nla_npy_write(path, v, 2, sh, err, sizeof err);
        free(v);
        if (wr) { printf("search: %s\n", err); free(sum); return; }
        snprintf(path, sizeof path, "%s/results.jsonl", dir);
        if (!(f = fopen(path, "wb"))) {
            printf("search: cannot create %s\n", path);
            free(sum);
            return;
        }
        for (int i = 0; i < SEARCH_ROWS; i++) {
            fprintf(f,
                    "{\"sample_idx\": %d, \"token_str\": \" the\", \"text_preview\": \"The ferry "
                    "left the harbour an hour "
                    "late.\", \"explanation\": \"",
                    i);
            for (int w = 0; w < 50; w++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                fprintf(f, "%s%s", w ? " " : "", words[x % (sizeof words / sizeof *words)]);
            }
            fprintf(f, "\", \"mse_nrm\": 0.5, \"cos\": 0.75, \"vectors_fnv1a64\": [\"%016llx\", "
                       "\"0000000000000000\"]}\n", (unsigned long long)sum[i]);
        }
        free(sum);
        if (fclose(f)) { printf("search: cannot write %s\n", path); return; }
    }
    nla_study *st;
    nla_search_hit hits[10];
    float *q = (float *)malloc(sizeof(float) * SEARCH_D);
    int n_hits, n_match;
    for (int k = 0; k < SEARCH_D; k++) q[k] = (float)sin(k * 0.37);
    double t0 = now();
    if (nla_study_open(dir, NULL, NULL, &st, err, sizeof err)) {
        printf("search: %s\n", err);
        free(q);
        return;
    }
    const double t_open = now() - t0;
    nla_search_params sp = {q, NULL, 0};
    t0 = now();
    nla_status rc = nla_study_search(st, &sp, hits, 10, &n_hits, &n_match, err, sizeof err);
    const double t_cos = now() - t0;
    sp.query = NULL;
    sp.regex = "ferry (harbour|code)";
    t0 = now();
    rc = rc ? rc : nla_study_search(st, &sp, hits, 10, &n_hits, &n_match, err, sizeof err);
    const double t_re = now() - t0;
    if (rc) printf("search: %s\n", err);
    else
        printf("search %s: %d rows of d = %d; open (results.jsonl + activations.npy) %.3f s, "
               "search by cosine %.3f s, "
               "by regex %.3f s (%d rows match)\n",
               dir, nla_study_count(st), nla_study_dim(st), t_open, t_cos, t_re, n_match);
    nla_study_close(st);
    free(q);
}

/* A list of positive integers from the environment ("1 2 4"), or the default. */
static int env_ints(const char *name, int *out, int cap, int n_default) {
    const char *env = getenv(name);
    if (!env) return n_default;
    int n = 0;
    for (char *p = (char *)env, *e; *p && n < cap; p = e) {
        long v = strtol(p, &e, 10);
        if (e == p) break;
        if (v > 0) out[n++] = (int)v;
    }
    return n;
}

int main(int argc, char **argv) {
    int threads[16] = {1, 2}, Bs[16] = {1, 4, 16}, av_tokens[1] = {150};
    const int n_threads = env_ints("NLA_BENCH_THREADS", threads, 16, 2),
              nB = env_ints("NLA_BENCH_B", Bs, 16, 3);
    env_ints("NLA_BENCH_AV_TOKENS", av_tokens, 1, 1);
    setvbuf(stdout, NULL, _IOLBF, 0); /* lines as they come, also into a file */
    char cpu[128];
    cpu_model(cpu, sizeof cpu);
    printf("cpu: %s, %d logical CPUs; kernel: %s; weights %s\n", cpu,
           (int)sysconf(_SC_NPROCESSORS_ONLN), nla_kernel_simd(),
           bench_model_params().no_mmap ? "read into memory" : "mapped");
    region pr = probe_new();
    for (int k = 0; k < n_threads; k++)
        printf("memory bandwidth (streaming read of 1 GiB, %d thread%s, best of 3): %.1f GB/s, "
               "in four streams a thread %.1f GB/s\n",
               threads[k], threads[k] > 1 ? "s" : "", probe_read(&pr, 1, threads[k], 3, 0),
               probe_read(&pr, 1, threads[k], 3, 1));
    double peak[16];
    for (int k = 0; k < n_threads; k++) {
        peak[k] = peak_measured(threads[k]);
        printf("compute peak (measured: the %s kernel's int8 dot-product step, 12 independent sums "
               "per thread), %d thread%s: %.0f Gop/s\n",
               nla_kernel_simd(), threads[k], threads[k] > 1 ? "s" : "", peak[k] / 1e9);
    }
    printf("  (prefill counts 2 flops per matrix weight)\n");
    if (!getenv("NLA_BENCH_NO_TOKENIZER")) bench_tokenizer();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--search") && i + 1 < argc) {
            bench_search(argv[++i]);
        } else if (!strcmp(argv[i], "--nla") && i + 1 < argc) {
            for (int k = 0; k < nB; k++) Bs[k] = Bs[k] < NLA_MAX_B ? Bs[k] : NLA_MAX_B;
            bench_nla(argv[++i], threads[n_threads - 1], Bs, nB, av_tokens[0]);
        } else {
            bench_model(argv[i], threads, n_threads, &pr, peak);
        }
    }
    free((void *)pr.a);
    return 0;
}
