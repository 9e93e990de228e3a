/* test_ask.c - the NLA questions on the embedded tiny trio and the sample
   data of tests/data/eval/: nla_steer's arithmetic; nla steer with r = 0
   gives what nla explain gives for v, --patch what it gives for the other
   vector; the cross-score matrix's diagonal equals nla score's rows and its
   ranks and figures, recomputed here, equal the library's; nla search ranks
   a study as the cosines computed here from activations.npy and the query's
   reconstruction (nla reconstruct --text); bad arguments exit 1 with a
   message naming the problem. Runs ./nla (make builds it first). */
#define _POSIX_C_SOURCE 200809L
#include <regex.h>
#include <sys/wait.h>
#include "../nla.h"
#include "test.h"
#include "util.h"

#define TRIO "weights/tiny/target weights/tiny/av weights/tiny/ar"
#define STUDY "tests/tmp/ask_study"
#define TEXT1 "'The quick brown fox jumps over the lazy dog'"
#define TEXT2 "'A cat sat on the mat'"
#define OPTS " --max-new 12 --threads 1"

/* Runs a shell command; returns its exit status. */
static int run(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* The number after `"key": ` in line (NAN if absent). */
static double num_after(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = line ? strstr(line, pat) : NULL;
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* Exit status 1 and stderr holding `want`. */
static void fails_with(const char *cmd, const char *want) {
    char full[1024];
    snprintf(full, sizeof full, "%s > /dev/null 2> tests/tmp/ask_err.txt", cmd);
    CHECK_MSG(run(full) == 1, "expected exit 1: %s", cmd);
    char *er = slurp("tests/tmp/ask_err.txt", NULL);
    CHECK_MSG(er && strstr(er, want), "stderr of '%s' lacks '%s': %s", cmd, want,
              er ? er : "(none)");
    free(er);
}

/* mse_nrm of r against v after both are rescaled to L2 = sqrt(d), and cos. */
static double mse_nrm(const float *v, const float *r, int d) {
    double nv = 0, nr = 0, m = 0;
    for (int k = 0; k < d; k++) { nv += (double)v[k] * v[k]; nr += (double)r[k] * r[k]; }
    for (int k = 0; k < d; k++) {
        const double x = r[k] * sqrt(d / nr) - v[k] * sqrt(d / nv);
        m += x * x;
    }
    return m / d;
}

static void test_steer_math(void) {
    const int d = 5;
    float v[5] = {1, -2, 3, 0.5f, 4}, dir[5] = {0, 1, 0, 2, -1}, out[5], zero[5] = {0};
    double vv = 0, dd = 0, od = 0, diff = 0;
    CHECK_EQ(nla_steer(v, dir, d, NLA_STEER_ADD, 0, out), NLA_OK);
    CHECK(!memcmp(out, v, sizeof v));
    CHECK_EQ(nla_steer(v, dir, d, NLA_STEER_ADD, 0.5, out), NLA_OK);
    for (int k = 0; k < d; k++) {
        vv += v[k] * v[k];
        dd += dir[k] * dir[k];
        diff += (out[k] - v[k]) * (out[k] - v[k]);
    }
    CHECK_NEAR(sqrt(diff), 0.5 * sqrt(vv), 1e-5);
    CHECK_EQ(nla_steer(v, dir, d, NLA_STEER_PATCH, 0, out), NLA_OK);
    CHECK(!memcmp(out, dir, sizeof dir));
    { /* a patch that is not finite: refused, out unchanged */
        float nan_dir[5] = {0, 1, NAN, 2, -1}, kept[5];
        memcpy(kept, out, sizeof kept);
        CHECK_EQ(nla_steer(v, nan_dir, d, NLA_STEER_PATCH, 0, out), NLA_ERR_NONFINITE);
        CHECK(!memcmp(out, kept, sizeof kept));
    }
    CHECK_EQ(nla_steer(v, dir, d, NLA_STEER_SUBTRACT, 0, out), NLA_OK);
    for (int k = 0; k < d; k++) od += out[k] * dir[k];
    CHECK_NEAR(od, 0, 1e-5);
    for (int k = 0; k < d; k++)
        CHECK_NEAR(out[k] - v[k], dir[k] * (-(1.0 * -2 + 0.5 * 2 - 4) / dd), 1e-5);
    CHECK_EQ(nla_steer(v, zero, d, NLA_STEER_ADD, 1, out), NLA_ERR_ARG);
    CHECK_EQ(nla_steer(v, zero, d, NLA_STEER_SUBTRACT, 0, out), NLA_ERR_ARG);
    CHECK_EQ(nla_steer(v, dir, d, NLA_STEER_ADD, NAN, out), NLA_ERR_ARG);
    CHECK_EQ(nla_steer(v, dir, 0, NLA_STEER_ADD, 1, out), NLA_ERR_ARG);
    CHECK_EQ(nla_steer(v, dir, d, (nla_steer_mode)3, 1, out), NLA_ERR_ARG);
    /* a result past float's range: refused, v (here also out) unchanged */
    float w[5];
    memcpy(w, v, sizeof v);
    CHECK_EQ(nla_steer(w, dir, d, NLA_STEER_ADD, 1e38, w), NLA_ERR_NONFINITE);
    CHECK(!memcmp(w, v, sizeof v));
}

/* The library's matrix, ranks and figures against the ones computed here
   (ranks: 1 + other vectors at most as far); identical vectors tie. */
static void test_cross_math(void) {
    enum { N = 6, D = 16 };
    float v[N * D], r[N * D], m[N * N];
    int rank[N];
    nla_cross_scores cs;
    uint32_t s = 12345;
    for (int i = 0; i < N * D; i++) {
        s = s * 1664525u + 1013904223u;
        v[i] = (float)((s >> 8) % 2000) / 1000.0f - 1;
        s = s * 1664525u + 1013904223u;
        r[i] = v[i] + ((float)((s >> 8) % 2000) / 1000.0f - 1) / 4; /* near its own vector */
    }
    memcpy(r + 2 * D, v + 3 * D, D * sizeof(float)); /* reconstruction 2 is vector 3's */
    CHECK_EQ(nla_score_cross(v, r, N, D, 4, m, rank, &cs), NLA_OK);
    int closest = 0;
    double ranks = 0;
    for (int i = 0; i < N; i++) {
        int k = 1;
        for (int j = 0; j < N; j++) {
            nla_scores sc;
            nla_score(v + j * D, r + i * D, D, 4, 0.03, &sc);
            CHECK_MSG(m[i * N + j] == (float)sc.mse_nrm, "matrix (%d, %d) %g is not nla_score's %g",
                      i, j, m[i * N + j], sc.mse_nrm);
            CHECK_NEAR(m[i * N + j], mse_nrm(v + j * D, r + i * D, D), 1e-6);
            k += j != i && mse_nrm(v + j * D, r + i * D, D) <= mse_nrm(v + i * D, r + i * D, D);
        }
        CHECK_EQ(rank[i], k);
        closest += k == 1;
        ranks += k;
    }
    CHECK(closest > 0 && closest < N); /* the data tells some apart, not all */
    CHECK_NEAR(cs.own_closest, (double)closest / N, 1e-12);
    CHECK_NEAR(cs.mean_rank, ranks / N, 1e-12);
    for (int i = 1; i < N; i++) memcpy(v + i * D, v, D * sizeof(float));
    CHECK_EQ(nla_score_cross(v, r, N, D, 4, NULL, NULL, &cs), NLA_OK);
    CHECK_NEAR(cs.own_closest, 0, 0);
    CHECK_NEAR(cs.mean_rank, N, 0);
    CHECK_EQ(nla_score_cross(v, r, 0, D, 4, NULL, NULL, &cs), NLA_ERR_ARG);
    r[3] = NAN; /* refused like nla_score, not ranked */
    CHECK_EQ(nla_score_cross(v, r, N, D, 4, NULL, NULL, &cs), NLA_ERR_NONFINITE);
}

/* nla steer against nla explain, and its errors. */
static void test_steer_cli(void) {
    CHECK_EQ(run("./nla steer " TRIO " --text " TEXT1 " --position 4 --toward " TEXT2
                 " --toward-position 2 --scales 0,1"
                 " --patch --subtract --jsonl" OPTS " > tests/tmp/ask_steer.jsonl 2> /dev/null"),
             0);
    CHECK_EQ(run("./nla explain " TRIO " --text " TEXT1 " --positions 4 --jsonl" OPTS
                 " > tests/tmp/ask_ex1.jsonl 2> /dev/null"),
             0);
    CHECK_EQ(run("./nla explain " TRIO " --text " TEXT2 " --positions 2 --jsonl" OPTS
                 " > tests/tmp/ask_ex2.jsonl 2> /dev/null"),
             0);
    char *st = slurp("tests/tmp/ask_steer.jsonl", NULL),
         *e1 = slurp("tests/tmp/ask_ex1.jsonl", NULL);
    char *e2 = slurp("tests/tmp/ask_ex2.jsonl", NULL);
    char *r0 = line_of(st, 0), *r1 = line_of(st, 1), *patch = line_of(st, 2), *sub = line_of(st, 3);
    CHECK(r0 && r1 && patch && sub && !line_of(st, 4) && e1 && e2);
    if (r0 && r1 && patch && sub && e1 && e2) {
        char *x0 = json_string_after(r0, "explanation", NULL),
             *w1 = json_string_after(e1, "explanation", NULL);
        char *xp = json_string_after(patch, "explanation", NULL),
             *w2 = json_string_after(e2, "explanation", NULL);
        CHECK(strstr(r0, "\"steer\": \"add\", \"scale\": 0,") &&
              strstr(patch, "\"steer\": \"patch\"") && strstr(sub, "\"steer\": \"subtract\""));
        CHECK_MSG(!strcmp(x0, w1), "r = 0 explains '%s', explain says '%s'", x0, w1);
        CHECK_MSG(!strcmp(xp, w2), "--patch explains '%s', explain of the other says '%s'", xp, w2);
        CHECK_NEAR(num_after(r0, "mse_nrm"), num_after(e1, "mse_nrm"), 0);
        CHECK_NEAR(num_after(r0, "mse_nrm_v"), num_after(e1, "mse_nrm"), 0);
        CHECK_NEAR(num_after(r0, "cos_to_v"), 1, 1e-6);
        CHECK_NEAR(num_after(r0, "vec_norm"), num_after(e1, "vec_norm"), 1e-5);
        CHECK_NEAR(num_after(patch, "mse_nrm"), num_after(e2, "mse_nrm"), 0);
        CHECK_NEAR(num_after(patch, "vec_norm"), num_after(e2, "vec_norm"), 1e-5);
        CHECK(strstr(r1, "\"steer\": \"add\", \"scale\": 1,") && num_after(r1, "cos_to_v") < 1);
        CHECK(!isnan(num_after(sub, "cos_to_v")) && num_after(sub, "cos_to_v") < 1);
        free(x0); free(w1); free(xp); free(w2);
    }
    free(r0); free(r1); free(patch); free(sub); free(st); free(e1); free(e2);
    /* the direction from a file: row 1 of [v1, v2] patches in as --toward did */
    CHECK_EQ(run("./nla extract weights/tiny/target --text " TEXT2
                 " --positions 0,2 --layer 2 --out tests/tmp/ask_dir.npy"
                 " 2> /dev/null"),
             0);
    CHECK_EQ(run("./nla steer " TRIO " --text " TEXT1
                 " --position 4 --toward-npy tests/tmp/ask_dir.npy --row 1 --scales 0"
                 " --patch --jsonl" OPTS " > tests/tmp/ask_steer2.jsonl 2> tests/tmp/ask_err.txt"),
             0);
    char *log = slurp("tests/tmp/ask_err.txt", NULL);
    CHECK_MSG(log && strstr(log, "toward row 1 of tests/tmp/ask_dir.npy"), "steer's log: %s",
              log ? log : "(none)");
    free(log);
    st = slurp("tests/tmp/ask_steer2.jsonl", NULL);
    e2 = slurp("tests/tmp/ask_ex2.jsonl", NULL);
    patch = line_of(st, 1);
    CHECK(patch && e2 && num_after(patch, "mse_nrm") == num_after(e2, "mse_nrm"));
    free(patch); free(st); free(e2);
    /* v moved by -1 times itself, or v minus itself, is all zeros: its own scores are null,
       those against v numbers */
    CHECK_EQ(run("./nla steer " TRIO " --text " TEXT1 " --position 4 --toward " TEXT1
                 " --toward-position 4 --scales -1"
                 " --subtract --jsonl" OPTS " > tests/tmp/ask_steer3.jsonl 2> /dev/null"),
             0);
    st = slurp("tests/tmp/ask_steer3.jsonl", NULL);
    for (int i = 0; i < 2; i++) {
        char *z = st ? line_of(st, i) : NULL;
        CHECK_MSG(z && strstr(z, "\"vec_norm\": 0,") && strstr(z, "\"cos_to_v\": null") &&
                      strstr(z, "\"mse_nrm\": null") && strstr(z, "\"cos\": null") &&
                      strstr(z, "\"fve_nrm\": null") && num_after(z, "mse_nrm_v") > 0,
                  "a v' of zeros: %s", z ? z : "(no line)");
        free(z);
    }
    free(st);
    fails_with("./nla steer " TRIO " --text " TEXT1 " --position 40 --toward " TEXT2 OPTS,
               "--position 40 is past the last token (9)");
    fails_with("./nla steer weights/tiny/target weights/tiny/av weights/tiny/av --text " TEXT1
               " --toward " TEXT2 OPTS, "weights/tiny/av is not the AR of weights/tiny/av");
    fails_with("./nla steer " TRIO " --text " TEXT1
               " --toward-npy tests/tmp/ask_dir.npy --row 2" OPTS,
               "--row 2: tests/tmp/ask_dir.npy has rows 0..1");
    fails_with("./nla steer " TRIO " --text " TEXT1 OPTS,
               "give one direction: --toward TEXT2 or --toward-npy FILE");
    fails_with("./nla steer " TRIO " --text " TEXT1 " --toward hi --scales 1,x" OPTS,
               "--scales: expected comma-separated");
    fails_with("./nla steer " TRIO " --text " TEXT1 " --toward hi --scales 1,0x2" OPTS,
               "--scales: expected comma-separated");
    fails_with("./nla steer " TRIO " --text " TEXT1 " --toward hi --scales 0,1e38" OPTS,
               "--scales 1e+38: v' does not fit a float");
    fails_with(
        "./nla steer weights/tiny/target weights/tiny/ar weights/tiny/ar --text hi --toward hi",
        "is not an AV");
}

#ifndef NLA_NO_EVAL /* the study these read is nla eval's */
static double cosine(const float *a, const float *b, int d) {
    double ab = 0, aa = 0, bb = 0;
    for (int k = 0; k < d; k++) {
        ab += (double)a[k] * b[k];
        aa += (double)a[k] * a[k];
        bb += (double)b[k] * b[k];
    }
    return ab / sqrt(aa * bb);
}

/* nla score --cross on the study's vectors against nla score. */
static void test_cross_cli(const float *v, const float *r, int S, int d) {
    CHECK_EQ(run("./nla score " STUDY "/activations.npy " STUDY
                 "/reconstructions.npy > tests/tmp/ask_score.jsonl"),
             0);
    CHECK_EQ(run("./nla score --cross " STUDY "/activations.npy " STUDY
                 "/reconstructions.npy --out tests/tmp/ask_m.npy --jsonl"
                 " > tests/tmp/ask_cross.jsonl"),
             0);
    int nd;
    long long sh[4];
    float *m = npy_load("tests/tmp/ask_m.npy", &nd, sh);
    char *sc = slurp("tests/tmp/ask_score.jsonl", NULL),
         *cr = slurp("tests/tmp/ask_cross.jsonl", NULL);
    CHECK(m && nd == 2 && sh[0] == S && sh[1] == S && sc && cr);
    if (!m || !sc || !cr) { free(m); free(sc); free(cr); return; }
    int closest = 0;
    double ranks = 0;
    for (int i = 0; i < S; i++) {
        char *ls = line_of(sc, i), *lc = line_of(cr, i);
        const double own = num_after(ls, "mse_nrm");
        CHECK_MSG(fabs(m[i * S + i] - own) <= 1e-6 * own, "diagonal %d: %.9g vs nla score %.9g", i,
                  m[i * S + i], own);
        CHECK_NEAR(num_after(lc, "mse_nrm_own"), own, 1e-6 * own);
        int k = 1, best = 0;
        for (int j = 0; j < S; j++) {
            const double x = mse_nrm(v + (size_t)j * d, r + (size_t)i * d, d);
            CHECK_NEAR(m[i * S + j], x, 1e-5 * x);
            k += j != i && x <= mse_nrm(v + (size_t)i * d, r + (size_t)i * d, d);
            if (x < mse_nrm(v + (size_t)best * d, r + (size_t)i * d, d)) best = j;
        }
        CHECK_MSG(num_after(lc, "rank") == k, "row %d: rank %g, recomputed %d", i,
                  num_after(lc, "rank"), k);
        CHECK_MSG(num_after(lc, "closest") == best, "row %d: closest %g, recomputed %d", i,
                  num_after(lc, "closest"), best);
        closest += k == 1;
        ranks += k;
        free(ls); free(lc);
    }
    char *sum = line_of(cr, S);
    CHECK(sum && strstr(sum, "\"summary\": true"));
    CHECK_NEAR(num_after(sum, "own_closest"), (double)closest / S, 1e-8);
    CHECK_NEAR(num_after(sum, "mean_rank"), ranks / S, 1e-8);
    CHECK_NEAR(num_after(sum, "chance_rank"), (S + 1) / 2.0, 0);
    free(sum); free(m); free(sc); free(cr);
    /* a sample larger than the study takes all its rows (memory for those, not for N) */
    CHECK_EQ(run("./nla eval --summary " STUDY
                 " --cross-sample 2147483647 --json > tests/tmp/ask_sum.json"),
             0);
    char *jall = slurp("tests/tmp/ask_sum.json", NULL);
    CHECK(jall && strstr(jall, "{\"group\": \"\", \"name\": \"all\", \"n\": 14,"));
    free(jall);
    /* nla eval --summary --cross-sample 4: "all" samples rows 0, 3, 7, 10 (t 14 / 4) */
    CHECK_EQ(run("./nla eval --summary " STUDY " --cross-sample 4 --json > tests/tmp/ask_sum.json"),
             0);
    char *js = slurp("tests/tmp/ask_sum.json", NULL);
    CHECK_MSG(json_whole(js), "--summary --cross-sample 4 --json: not one JSON object: %s",
              js ? js : "");
    const char *all =
        js ? strstr(
                 js,
                 "\"cross\": {\"sample\": 4, \"groups\": [\n  {\"group\": \"\", \"name\": \"all\"")
           : NULL;
    CHECK(all != NULL);
    if (all) {
        const int pick[4] = {0, 3, 7, 10};
        int own = 0;
        double rk = 0;
        for (int a = 0; a < 4; a++) {
            int k = 1;
            for (int b = 0; b < 4; b++)
                k += b != a && mse_nrm(v + (size_t)pick[b] * d, r + (size_t)pick[a] * d, d) <=
                                   mse_nrm(v + (size_t)pick[a] * d, r + (size_t)pick[a] * d, d);
            own += k == 1;
            rk += k;
        }
        CHECK_NEAR(num_after(all, "n"), 4, 0);
        CHECK_NEAR(num_after(all, "own_closest"), own / 4.0, 1e-9);
        CHECK_NEAR(num_after(all, "mean_rank"), rk / 4, 1e-9);
        CHECK(strstr(all, "{\"group\": \"source\", \"name\": \"prose\", \"n\": 2, ") != NULL);
    }
    free(js);
    fails_with("./nla eval --summary tests/data/eval/fixed_results.jsonl --cross-sample 4",
               "needs a results folder");
    /* the table for small n */
    CHECK_EQ(run("./nla extract weights/tiny/target --text " TEXT2
                 " --positions 1,2,3 --layer 2 --out tests/tmp/ask_v3.npy"
                 " 2> /dev/null && ./nla score --cross tests/tmp/ask_v3.npy tests/tmp/ask_v3.npy > "
                 "tests/tmp/ask_table.txt"),
             0);
    char *tb = slurp("tests/tmp/ask_table.txt", NULL);
    CHECK(tb && strstr(tb, "r0") && strstr(tb, "0.0000*") &&
          strstr(tb, "own vector the closest: 3 of 3 (1.000)") &&
          strstr(tb, "mean rank of the own vector: 1.000 (chance: 2.0)"));
    free(tb);
    fails_with("./nla score --cross " STUDY "/activations.npy tests/tmp/ask_v3.npy",
               "is [14, 16] but tests/tmp/ask_v3.npy is [3, 16]");
}

static int cmp_desc(const void *a, const void *b) {
    const double x = ((const double *)a)[0], y = ((const double *)b)[0];
    return x < y ? 1 : x > y ? -1 : 0;
}

/* nla search's order against the cosines computed here. */
static void test_search_cli(const float *v, int S, int d) {
    CHECK_EQ(run("./nla search " STUDY
                 " --query 'A ferry leaves the harbour.' --ar weights/tiny/ar --top 100 --jsonl"
                 " > tests/tmp/ask_q.jsonl 2> tests/tmp/ask_err.txt"),
             0);
    CHECK_EQ(run("./nla reconstruct weights/tiny/ar --text 'A ferry leaves the harbour.' --out "
                 "tests/tmp/ask_q.npy 2> /dev/null"),
             0);
    int nd;
    long long sh[4];
    float *q = npy_load("tests/tmp/ask_q.npy", &nd, sh);
    char *out = slurp("tests/tmp/ask_q.jsonl", NULL), *er = slurp("tests/tmp/ask_err.txt", NULL);
    CHECK(q && out && er && strstr(er, "14 of 14 rows match"));
    for (int pass = 0; q && out && pass < 2; pass++) {
        /* pass 0: the query; pass 1: --near 5, the activation of row 5 */
        const float *want = pass ? v + 5 * (size_t)d : q;
        double c[14][2];
        for (int i = 0; i < S; i++) {
            c[i][0] = cosine(v + (size_t)i * d, want, d);
            c[i][1] = i; /* row i of results.jsonl is sample_idx i here */
        }
        qsort(c, (size_t)S, sizeof c[0], cmp_desc);
        for (int k = 0; k < S; k++) {
            char *l = line_of(out, k);
            CHECK_MSG(l && num_after(l, "rank") == k + 1 && num_after(l, "sample_idx") == c[k][1],
                      "pass %d rank %d: sample_idx %g, want %g", pass, k + 1,
                      num_after(l, "sample_idx"), c[k][1]);
            CHECK_NEAR(num_after(l, "cos"), c[k][0], 1e-7);
            free(l);
        }
        CHECK(!line_of(out, S));
        free(out);
        CHECK_EQ(run("./nla search " STUDY
                     " --near 5 --top 20 --jsonl > tests/tmp/ask_q.jsonl 2> /dev/null"),
                 0);
        out = slurp("tests/tmp/ask_q.jsonl", NULL);
    }
    free(out); free(q); free(er);
    /* a --top past the rows lists them all, as --top 20 does here (not "out of memory") */
    CHECK_EQ(run("./nla search " STUDY
                 " --near 5 --top 2147483647 --jsonl > tests/tmp/ask_q2.jsonl 2> /dev/null"),
             0);
    CHECK(same_bytes("tests/tmp/ask_q.jsonl", "tests/tmp/ask_q2.jsonl"));
    /* --grep: the rows whose explanation matches, in study order, top K */
    CHECK_EQ(run("./nla search " STUDY " --grep '(Darkness|大于)$' --top 3 --jsonl"
                 " > tests/tmp/ask_g.jsonl 2> /dev/null"),
             0);
    char *res = slurp(STUDY "/results.jsonl", NULL);
    out = slurp("tests/tmp/ask_g.jsonl", NULL);
    regex_t re;
    regcomp(&re, "(Darkness|大于)$", REG_EXTENDED | REG_NOSUB);
    int k = 0;
    for (int i = 0; res && out && i < S && k < 3; i++) {
        char *l = line_of(res, i), *ex = json_string_after(l, "explanation", NULL);
        if (!regexec(&re, ex, 0, NULL, 0)) {
            char *o = line_of(out, k++);
            CHECK_MSG(o && num_after(o, "sample_idx") == i && !strstr(o, "\"cos\""),
                      "grep rank %d is not row %d", k, i);
            free(o);
        }
        free(l); free(ex);
    }
    CHECK(k == 3 && !line_of(out, 3));
    regfree(&re);
    free(res); free(out);
    /* the table */
    CHECK_EQ(run("./nla search " STUDY " --near 2 --top 2 > tests/tmp/ask_t.txt 2> /dev/null"), 0);
    out = slurp("tests/tmp/ask_t.txt", NULL);
    CHECK(out && strstr(out, "rank    row  token") && strstr(out, "   1      2  ") &&
          strstr(out, " 1.0000  ") && strstr(out, "| def moving_average"));
    free(out);
    /* errors */
    fails_with("./nla search " STUDY " --near 14",
               "--near 14: " STUDY " has no row with that sample_idx (14 rows)");
    fails_with("./nla search " STUDY " --query 'a ferry'", "--query needs --ar AR");
    fails_with("./nla search tests/data/eval --near 1",
               "tests/data/eval is not a study: it has no results.jsonl");
    fails_with("./nla search " STUDY, "give --query TEXT --ar AR, --near ROW or --grep REGEX");
    fails_with("./nla search " STUDY " --grep 'a(b'", "bad regular expression 'a(b'");
    fails_with("./nla search " STUDY " --query hi --ar weights/tiny/av", "is not an AR");
}

/* The API: a folder that is not a study, rows, ranges, a bad query. */
static void test_study_api(int S, int d) {
    nla_study *st = (nla_study *)1;
    char err[512];
    CHECK_EQ(nla_study_open("tests/data/eval", NULL, NULL, &st, err, sizeof err), NLA_ERR_IO);
    CHECK(st == NULL && strstr(err, "not a study"));
    mkdir("tests/tmp/ask_bad", 0755);
    spit("tests/tmp/ask_bad/results.jsonl", "{\"sample_idx\": 0, \"cos\": 0.5}\n", 30);
    CHECK_EQ(nla_study_open("tests/tmp/ask_bad", NULL, NULL, &st, err, sizeof err), NLA_ERR_IO);
    CHECK(strstr(err, "ask_bad/activations.npy"));
    CHECK_EQ(nla_study_open(STUDY, NULL, NULL, &st, err, sizeof err), NLA_OK);
    if (!st) return;
    CHECK_EQ(nla_study_count(st), S);
    CHECK_EQ(nla_study_dim(st), d);
    nla_study_row row;
    float x[16], zero[16] = {0};
    CHECK_EQ(nla_study_get(st, S, &row), NLA_ERR_RANGE);
    CHECK_EQ(nla_study_vector(st, -1, x), NLA_ERR_RANGE);
    CHECK_EQ(nla_study_find(st, 99), -1);
    CHECK_EQ(nla_study_get(st, nla_study_find(st, 13), &row), NLA_OK);
    CHECK(row.sample_idx == 13 && row.token && row.explanation && row.preview);
    nla_search_params sp = {zero, NULL, 0};
    nla_search_hit hits[20];
    int n = -1, m = -1;
    CHECK_EQ(nla_study_search(st, &sp, hits, 20, &n, &m, err, sizeof err), NLA_ERR_ARG);
    CHECK(strstr(err, "query vector is zero"));
    sp.query = NULL;
    sp.regex = "LADIES";
    sp.icase = 1;
    CHECK_EQ(nla_study_search(st, &sp, hits, 2, &n, &m, err, sizeof err), NLA_OK);
    CHECK(n == 2 && m == S - 2 && hits[0].row == 0 &&
          hits[1].row == 1); /* rows 2 and 7 have no "Ladies" */
    sp.icase = 0;
    CHECK_EQ(nla_study_search(st, &sp, hits, 2, &n, &m, err, sizeof err), NLA_OK);
    CHECK(n == 0 && m == 0);
    nla_study_close(st);
    nla_study_close(NULL);
    /* rows without checksums whose vectors hold a NaN or an Inf never match a query (a NaN
       row once came back as cos 0) */
    const char rows[] = "{\"sample_idx\": 0, \"cos\": 0.5, \"explanation\": \"a\"}\n"
                        "{\"sample_idx\": 1, \"cos\": 0.5, \"explanation\": \"b\"}\n"
                        "{\"sample_idx\": 2, \"cos\": 0.5, \"explanation\": \"c\"}\n";
    const float act[3][4] = {{1, 2, 3, 4}, {NAN, 1, 1, 1}, {INFINITY, 1, 1, 1}};
    const int64_t shape[2] = {3, 4};
    const float q[4] = {1, 0, 0, 0};
    mkdir("tests/tmp/ask_nan", 0755);
    spit("tests/tmp/ask_nan/results.jsonl", rows, sizeof rows - 1);
    CHECK_EQ(nla_npy_write("tests/tmp/ask_nan/activations.npy", &act[0][0], 2, shape, err,
                           sizeof err),
             NLA_OK);
    CHECK_EQ(nla_study_open("tests/tmp/ask_nan", NULL, NULL, &st, err, sizeof err), NLA_OK);
    nla_search_params qp = {q, NULL, 0};
    CHECK_EQ(nla_study_search(st, &qp, hits, 4, &n, &m, err, sizeof err), NLA_OK);
    CHECK_MSG(n == 1 && m == 1 && hits[0].row == 0, "%d hits, %d matches, first row %d", n, m,
              n > 0 ? hits[0].row : -1);
    nla_study_close(st);
}

#endif

#ifndef NLA_NO_EVAL
/* Zeroes row `row` of the float32 [S, d] .npy at path (a version 1 header). */
static void zero_npy_row(const char *path, int row, int d) {
    FILE *f = fopen(path, "r+b");
    unsigned char h[10];
    const float zero[64] = {0};
    if (f && fread(h, 1, 10, f) == 10 && d <= 64 &&
        !fseek(f, 10 + (h[8] | h[9] << 8) + (long)row * d * 4, SEEK_SET))
        CHECK_EQ(fwrite(zero, sizeof(float), (size_t)d, f), (size_t)d);
    else
        CHECK_MSG(0, "%s: cannot zero row %d", path, row);
    if (f) fclose(f);
}

/* A vector changed after the run (here: zeroed, as a row never written
   reads) is refused wherever it is read, never scored as cos 0. */
static void test_changed_vectors(int d) {
    CHECK_EQ(run("rm -rf tests/tmp/ask_za tests/tmp/ask_zr && cp -r " STUDY " tests/tmp/ask_za && "
                 "cp -r " STUDY " tests/tmp/ask_zr"),
             0);
    zero_npy_row("tests/tmp/ask_za/activations.npy", 3, d);
    zero_npy_row("tests/tmp/ask_zr/reconstructions.npy", 3, d);
    const char *bad = "the vector of sample 3 differs from its checksum in results.jsonl";
    fails_with("./nla search tests/tmp/ask_za --near 0", bad);
    fails_with("./nla search tests/tmp/ask_za --near 3",
               "the vector of row 3 differs from its checksum in results.jsonl");
    fails_with("./nla eval --summary tests/tmp/ask_za", bad);
    fails_with("./nla eval --summary tests/tmp/ask_zr --cross-sample 14", bad);
    fails_with("./nla eval --compare " STUDY " tests/tmp/ask_zr", bad);
    fails_with("./nla eval --compare tests/tmp/ask_zr " STUDY, bad);
    CHECK_EQ(run("./nla search tests/tmp/ask_za --grep . > /dev/null 2>&1"),
             0); /* no vectors read */
    /* activations.npy cut short: refused, not read as a study without vectors */
    CHECK_EQ(truncate("tests/tmp/ask_za/activations.npy", 500), 0);
    fails_with("./nla eval --summary tests/tmp/ask_za",
               "the shape needs 896 (the study's activations)");
}
#endif

int main(void) {
    mkdir("tests/tmp", 0755);
    test_steer_math();
    test_cross_math();
    test_steer_cli();
#ifndef NLA_NO_EVAL
    /* a study of the tiny trio on the sample data: 14 rows of d = 16 */
    CHECK_EQ(run("rm -rf " STUDY " && ./nla eval " TRIO
                 " --docs tests/data/eval/docs.jsonl --chats tests/data/eval/chats.jsonl"
                 " --out " STUDY " --min-position 10 --positions-per-record 2 --max-new 8 "
                                 "--threads 1 --quiet 2> /dev/null"),
             0);
    int nd;
    long long sh[4] = {0, 0, 0, 0};
    float *v = npy_load(STUDY "/activations.npy", &nd, sh),
          *r = npy_load(STUDY "/reconstructions.npy", &nd, sh);
    CHECK(v && r && sh[0] == 14 && sh[1] == 16);
    if (v && r) {
        test_cross_cli(v, r, 14, 16);
        test_search_cli(v, 14, 16);
        test_study_api(14, 16);
        test_changed_vectors(16);
    }
    free(v); free(r);
#else
    printf("built with NLA_NO_EVAL: no study, so no --cross, search or study API checks\n");
#endif
    return test_report();
}
