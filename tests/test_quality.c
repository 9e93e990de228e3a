/* test_quality.c - best of N, per-part scores and trust flags, on the
   golden NLA trio (tests/data/nla) and the embedded tiny trio: the chosen
   explanation is the candidate of lowest mse_nrm and every candidate's
   scores are what `nla reconstruct --text` and `nla score` give for its
   text; best of 1 at temperature 0 is the greedy path; per-part scores are
   those of each part reconstructed alone; each flag is set on a crafted row
   and on no clean one; the texts do not depend on the batch, and a killed
   run resumes, and shards merge, to the same bytes with --best-of 4 --parts;
   a run compared with itself gives zeros, with its --quant q8_0 twin not.
   Runs ./nla (make builds it first). */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include "../nla.h"
#include "test.h"
#include "util.h"

#ifdef NLA_NO_EVAL
/* Built with -DNLA_NO_EVAL: every check here runs nla eval or reads its results. */
int main(void) {
    printf("built with NLA_NO_EVAL: the quality tests use nla eval and are not built\n");
    return test_report();
}
#else
#define G      "tests/data/nla/"
#define GOLDEN G "target", G "av", G "ar"
#define TINY   "weights/tiny/target", "weights/tiny/av", "weights/tiny/ar"
#define TOK    "--tokenizer", "weights/tokenizer.json"
#define SAMPLE "--docs", "tests/data/eval/docs.jsonl", "--chats", "tests/data/eval/chats.jsonl"
#define OPTS   "--min-position", "10", "--max-new", "8", "--chunk", "3", "--threads", "1", "--quiet"
#define D      16

static const char *const files[] = {"params.json", "tokens.jsonl", "results.jsonl",
                                    "activations.npy", "reconstructions.npy"};

/* Starts ./nla with args (NULL-terminated), stdout to out_path, stderr to
   tests/tmp/q_err.txt. */
static pid_t spawn(const char *const *args, const char *out_path) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("tests/tmp/q_err.txt", "wb", stderr) || !freopen(out_path, "wb", stdout))
            _exit(127);
        execv("./nla", (char *const *)(uintptr_t)args);
        _exit(127);
    }
    return pid;
}

static int run_nla(const char *const *args, const char *out_path) {
    int st = 0;
    waitpid(spawn(args, out_path), &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void rm_dir(const char *dir) {
    char p[256];
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* A fresh results folder made by `nla eval` with args after "eval" (the
   folder is added as --out); 0 on success. */
static int eval_into(const char *dir, const char *const *args) {
    const char *argv[40] = {"./nla", "eval"};
    int n = 2;
    while (*args && n < 36) argv[n++] = *args++;
    argv[n++] = "--out";
    argv[n++] = dir;
    argv[n] = NULL;
    rm_dir(dir);
    mkdir(dir, 0755);
    return run_nla(argv, "/dev/null");
}

/* The number after "key": at or after p (NAN if absent before the line's end). */
static double num_after(const char *p, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *f = p ? strstr(p, pat) : NULL, *nl = p ? strchr(p, '\n') : NULL;
    return f && (!nl || f < nl) ? strtod(f + strlen(pat), NULL) : NAN;
}

/* Line i (0-based) of text, or NULL. */
static const char *line_at(const char *text, int i) {
    for (; text && i > 0; i--) text = (text = strchr(text, '\n')) ? text + 1 : NULL;
    return text && *text ? text : NULL;
}

/* One candidate of a row: its text and scores. */
typedef struct {
    char *ex;
    double mse, cos;
} cand;

/* The objects {"explanation", "mse_nrm", "cos"} between key and end on
   the row at p; returns their count. */
static int row_cands(const char *p, const char *key, const char *end, cand *out, int cap) {
    const char *q = strstr(p, key), *nl = q ? strstr(q, end) : NULL;
    int n = 0;
    if (!q || (nl && q > nl)) return 0;
    while (n < cap && (q = strstr(q, "{\"explanation\": ")) != NULL && (!nl || q < nl)) {
        const char *after = q;
        out[n].ex = json_decode_string(q + 16, NULL, &after);
        out[n].mse = num_after(after, "mse_nrm");
        out[n].cos = num_after(after, "cos");
        n++;
        q = after;
    }
    return n;
}

/* Writes row i of dir's activations.npy as tests/tmp/q_v.npy [1, D]. */
static void activation_row(const char *dir, int i) {
    char path[256];
    int nd;
    long long sh[4];
    snprintf(path, sizeof path, "%s/activations.npy", dir);
    float *v = npy_load(path, &nd, sh);
    const int64_t shape[2] = {1, D};
    CHECK(v && nd == 2 && sh[1] == D && i < sh[0]);
    if (v)
        CHECK_EQ(nla_npy_write("tests/tmp/q_v.npy", v + (size_t)i * D, 2, shape, NULL, 0), NLA_OK);
    free(v);
}

/* The scores `nla reconstruct AR --text text` and `nla score` give against
   tests/tmp/q_v.npy. */
static void cli_scores(const char *ar, const char *text, double *mse, double *cos) {
    const char *rec[] = {"./nla", "reconstruct",       ar,  "--text", text,
                         "--out", "tests/tmp/q_r.npy", TOK, NULL};
    const char *score[] = {"./nla", "score", "tests/tmp/q_v.npy", "tests/tmp/q_r.npy", NULL};
    *mse = *cos = NAN;
    CHECK_EQ(run_nla(rec, "/dev/null"), 0);
    CHECK_EQ(run_nla(score, "tests/tmp/q_score.jsonl"), 0);
    char *s = slurp("tests/tmp/q_score.jsonl", NULL);
    *mse = num_after(s, "mse_nrm");
    *cos = num_after(s, "cos");
    free(s);
}

static int count_lines_text(const char *t) {
    int k = 0;
    for (; t && *t; t++) k += *t == '\n';
    return k;
}

/* Does the row at p have flag name? */
static int has_flag(const char *p, const char *name) {
    char key[64];
    const char *f = strstr(p, "\"flags\": ["), *e = f ? strchr(f, ']') : NULL;
    snprintf(key, sizeof key, "\"%s\"", name);
    f = f ? strstr(f, key) : NULL;
    return f && f < e;
}

/* Same number as printed with %.9g by both sides. */
static int same_num(double a, double b) { return fabs(a - b) <= 1e-8 * (1 + fabs(b)); }

static void test_best_of(void) {
    const char *bo = "tests/tmp/q_best", *gr = "tests/tmp/q_greedy", *b1 = "tests/tmp/q_best1";
    const char *bo_args[] = {GOLDEN, SAMPLE, OPTS, TOK, "--best-of", "4", "--with-greedy", NULL};
    const char *gr_args[] = {GOLDEN, SAMPLE, OPTS, TOK, NULL};
    const char *b1_args[] = {GOLDEN, SAMPLE, OPTS, TOK, "--best-of", "1", "--temp", "0", NULL};
    CHECK_EQ(eval_into(bo, bo_args), 0);
    CHECK_EQ(eval_into(gr, gr_args), 0);
    CHECK_EQ(eval_into(b1, b1_args), 0);
    char *res = slurp("tests/tmp/q_best/results.jsonl", NULL),
         *gres = slurp("tests/tmp/q_greedy/results.jsonl", NULL);
    char *res1 = slurp("tests/tmp/q_best1/results.jsonl", NULL);
    int rows = 0, checked = 0, differ = 0;
    for (const char *l = res; (l = line_at(res, rows)) != NULL; rows++) {
        cand c[8], g[1], one[2] = {{NULL, 0, 0}, {NULL, 0, 0}};
        const int n = row_cands(l, "\"candidates\": [", "\"chosen\": ", c, 8),
                  ng = row_cands(l, "\"greedy\": ", "\"flags\": ", g, 1);
        const char *gl = line_at(gres, rows), *l1 = line_at(res1, rows);
        char *ex = json_string_after(l, "explanation", NULL),
             *gex = gl ? json_string_after(gl, "explanation", NULL) : NULL;
        int best = 0;
        CHECK_EQ(n, 4);
        CHECK_EQ(ng, 1);
        for (int k = 1; k < n; k++)
            if (c[k].mse < c[best].mse) best = k;
        /* the chosen one is the minimum of the candidates */
        CHECK_MSG(n == 4 && num_after(l, "mse_nrm") == c[best].mse &&
                      num_after(l, "chosen") == best && ex && !strcmp(ex, c[best].ex),
                  "row %d: mse_nrm %g, chosen %g, not the minimum %g (candidate %d)", rows,
                  num_after(l, "mse_nrm"), num_after(l, "chosen"), n ? c[best].mse : NAN, best);
        for (int k = 0; k < n; k++) differ += strcmp(c[k].ex, c[0].ex) != 0;
        CHECK_MSG(has_flag(l, "low_score") == (num_after(l, "cos") < 0.5),
                  "row %d: low_score and cos %g", rows, num_after(l, "cos"));
        /* the greedy text decoded beside sampled ones is the greedy run's */
        CHECK_MSG(ng == 1 && gex && !strcmp(g[0].ex, gex) && g[0].mse == num_after(gl, "mse_nrm") &&
                      g[0].cos == num_after(gl, "cos"),
                  "row %d: the greedy candidate differs from the greedy run", rows);
        /* best of 1 at temperature 0: the greedy run's explanation and scores */
        CHECK_MSG(l1 && gl && row_cands(l1, "\"candidates\": [", "\"chosen\": ", one, 2) == 1 &&
                      !strcmp(one[0].ex, gex) &&
                      num_after(l1, "mse_nrm") == num_after(gl, "mse_nrm") &&
                      num_after(l1, "cos") == num_after(gl, "cos"),
                  "row %d: best of 1 at temperature 0 is not the greedy path", rows);
        free(one[0].ex);
        /* every candidate (and the greedy text) of a row: reconstruct --text + score */
        if (rows == 1) {
            activation_row(bo, rows);
            for (int k = 0; k <= n; k++) {
                const cand *x = k < n ? &c[k] : &g[0];
                double m, cs;
                cli_scores(G "ar", x->ex, &m, &cs);
                CHECK_MSG(same_num(m, x->mse) && same_num(cs, x->cos),
                          "row %d candidate %d: mse_nrm %.9g cos %.9g, the CLI gives %.9g %.9g",
                          rows, k, x->mse, x->cos, m, cs);
                checked++;
            }
        }
        for (int k = 0; k < n; k++) free(c[k].ex);
        if (ng) free(g[0].ex);
        free(ex);
        free(gex);
    }
    CHECK_EQ(rows, 7);
    CHECK_MSG(differ > 0, "the sampled candidates are all the same text");
    CHECK_EQ(checked, 5);
    CHECK_MSG(same_files(b1, gr, files + 3, 2),
              "best of 1 at temperature 0: other vectors than the greedy run");
    /* truncated: as the AV's own ids say (nla verbalize of row 0's vector) */
    {
        const char *vb[] = {"./nla",     "verbalize", G "av", "tests/tmp/q_v.npy",
                            "--max-new", "8",         TOK,    NULL};
        double ids[16];
        activation_row(gr, 0);
        CHECK_EQ(run_nla(vb, "tests/tmp/q_verb.jsonl"), 0);
        char *vj = slurp("tests/tmp/q_verb.jsonl", NULL);
        const int n = vj ? json_nums_after(vj, "\"ids\"", ids, 16) : 0,
                  cut = n == 8 && ids[7] != 1 && ids[7] != 106;
        CHECK_MSG(gres && n > 0 && has_flag(gres, "truncated") == cut,
                  "row 0: truncated flag %d, the AV wrote %d ids",
                  gres ? has_flag(gres, "truncated") : -1, n);
        free(vj);
    }
    printf("  best of 4: %d rows, the chosen one the minimum; %d candidates scored by the CLI\n",
           rows, checked);
    free(res);
    free(gres);
    free(res1);
    rm_dir(b1);
}

/* The summary of results as JSON (free it). */
static char *summary_json(const char *results) {
    nla_eval_report_params rp;
    text_buf t = {NULL, 0};
    char err[512];
    memset(&rp, 0, sizeof rp);
    rp.json = 1;
    CHECK_MSG(nla_eval_summary(results, &rp, collect, &t, err, sizeof err) == NLA_OK,
              "summary of %s: %s", results, err);
    return t.p;
}

/* The count of flag name in a JSON summary. */
static double flag_count(const char *json, const char *name) {
    char key[64];
    const char *f = json ? strstr(json, "\"flags\": {") : NULL;
    snprintf(key, sizeof key, "\"%s\": {\"n\": ", name);
    f = f ? strstr(f, key) : NULL;
    return f ? strtod(f + strlen(key), NULL) : NAN;
}

/* Each flag set on a crafted row and on none of ten clean ones. */
static void test_flags(void) {
    static const char *const names[8] = {"unparsed",     "truncated",  "template",
                                         "cjk",          "repetition", "special_token",
                                         "norm_outlier", "low_score"};
    const char *clean_ex = "Narrative prose: a ferry crossing\\n\\nThe text describes passengers "
                           "on a ferry deck.\\n\\n"
                           "The final token \\\"the\\\" begins a noun phrase.";
    const char *bad_ex[8] = {"",
                             "",
                             "Fragmented, incoherent academic text pattern about research",
                             "\\u8fd9\\u662f\\u4e00\\u4e2a\\u732b",
                             "the cat sat down; the cat sat down; the cat sat down; again",
                             "",
                             "",
                             ""};
    FILE *f = fopen("tests/tmp/q_flags.jsonl", "wb"), *g = fopen("tests/tmp/q_clean.jsonl", "wb");
    for (int i = 0; f && g && i < 18; i++) {
        const int bad = i < 10 ? -1 : i - 10; /* rows 10..17: flag bad */
        const char *ex = bad >= 0 && *bad_ex[bad] ? bad_ex[bad] : clean_ex;
        char row[1024];
        snprintf(row, sizeof row,
                 "{\"sample_idx\": %d, \"source\": \"s\", \"role\": null, \"token_str\": \"%s\", "
                 "\"vec_norm\": %g, "
                 "\"explanation\": \"%s\", \"raw_av_text\": \"<explanation>%s</explanation>\", "
                 "\"av_parsed\": %s, "
                 "\"mse_nrm\": %g, \"cos\": %g%s}\n",
                 i, bad == 5 ? "<start_of_turn>" : " the", bad == 6 ? 1000.0 : 10 + 0.1 * (i % 10),
                 ex, ex, bad == 0 ? "false" : "true", bad == 7 ? 1.4 : 0.2, bad == 7 ? 0.3 : 0.9,
                 bad == 1 ? ", \"flags\": [\"truncated\"]"
                 : i == 3 ? ", \"flags\": []"
                          : "");
        fputs(row, f);
        if (bad < 0) fputs(row, g);
    }
    if (f) fclose(f);
    if (g) fclose(g);
    char *all = summary_json("tests/tmp/q_flags.jsonl"),
         *clean = summary_json("tests/tmp/q_clean.jsonl");
    for (int k = 0; k < 8; k++) {
        CHECK_MSG(flag_count(all, names[k]) == 1, "%s: %g rows flagged, want the crafted one",
                  names[k], flag_count(all, names[k]));
        CHECK_MSG(flag_count(clean, names[k]) == 0, "%s: %g clean rows flagged", names[k],
                  flag_count(clean, names[k]));
    }
    free(all);
    free(clean);
}

/* nla_score_parts: each part and prefix as nla_reconstruct of its text
   alone (one at a time) and nla_score; more than 16 paragraphs fold into
   the 16th. */
static void test_parts(void) {
    nla_model_params mp;
    nla_session_params sp;
    nla_model *ar = NULL, *av = NULL;
    nla_session *s = NULL, *one = NULL, *s_av = NULL;
    nla_part_scores ps;
    char err[512];
    int nd;
    long long sh[4];
    float *v = npy_load(G "target_blockK.npy", &nd, sh), r[D];
    memset(&mp, 0, sizeof mp);
    mp.tokenizer = "weights/tokenizer.json";
    memset(&sp, 0, sizeof sp);
    CHECK_MSG(nla_model_open(G "ar", &mp, &ar, err, sizeof err) == NLA_OK, "%s", err);
    CHECK_MSG(nla_model_open(G "av", &mp, &av, err, sizeof err) == NLA_OK, "%s", err);
    if (!ar || !av || !v) return;
    sp.n_seq = 4; /* the parts read together */
    CHECK_EQ(nla_session_new(ar, &sp, &s), NLA_OK);
    sp.n_seq = 1;
    CHECK_EQ(nla_session_new(ar, &sp, &one), NLA_OK);
    CHECK_EQ(nla_session_new(av, &sp, &s_av), NLA_OK);
    const char *ex =
        "Narrative prose: a ferry crossing\n\nThe text describes passengers on a deck.\n  \n"
        "The final token \"the\" begins a noun phrase.";
    const char *want_part[3] = {"Narrative prose: a ferry crossing",
                                "The text describes passengers on a deck.",
                                "The final token \"the\" begins a noun phrase."};
    const char *want_prefix[3] = {
        "Narrative prose: a ferry crossing",
        "Narrative prose: a ferry crossing\n\nThe text describes passengers on a deck.", ex};
    CHECK_EQ(nla_score_parts(s, v, ex, 0.0302, &ps), NLA_OK);
    CHECK_EQ(ps.n, 3);
    double worst = 0;
    for (int j = 0; j < 3 && ps.n == 3; j++)
        for (int k = 0; k < 2; k++) {
            nla_scores sc;
            const char *t = k ? want_prefix[j] : want_part[j];
            const nla_scores *got = k ? &ps.prefix[j] : &ps.part[j];
            CHECK_EQ(nla_reconstruct(one, &t, 1, r), NLA_OK);
            CHECK_EQ(nla_score(v, r, D, 4.0, 0.0302, &sc), NLA_OK);
            CHECK_MSG(got->mse_nrm == sc.mse_nrm && got->cos == sc.cos &&
                          got->fve_nrm == sc.fve_nrm,
                      "%s %d: mse_nrm %.9g cos %.9g, alone %.9g %.9g", k ? "prefix" : "part", j + 1,
                      got->mse_nrm, got->cos, sc.mse_nrm, sc.cos);
            worst = fmax(worst, fabs(got->mse_nrm - sc.mse_nrm));
        }
    CHECK_MSG(ps.part[0].mse_nrm != ps.part[1].mse_nrm && ps.part[1].mse_nrm != ps.part[2].mse_nrm,
              "the parts scored the same text");
    /* 20 paragraphs: 16 parts, the last from paragraph 16 to the end */
    char many[1024] = "";
    for (int j = 0; j < 20; j++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%sPart %d.", j ? "\n\n" : "",
                 j + 1);
    CHECK_EQ(nla_score_parts(s, v, many, 0.0302, &ps), NLA_OK);
    CHECK_EQ(ps.n, NLA_MAX_PARTS);
    {
        nla_scores sc;
        const char *t = strstr(many, "Part 16.");
        CHECK_EQ(nla_reconstruct(one, &t, 1, r), NLA_OK);
        CHECK_EQ(nla_score(v, r, D, 4.0, 0.0302, &sc), NLA_OK);
        CHECK_MSG(ps.part[15].mse_nrm == sc.mse_nrm, "the 16th part is not paragraphs 16-20");
    }
    CHECK_EQ(nla_score_parts(s, v, ex, NAN, &ps), NLA_ERR_ARG); /* a baseline nla_score refuses */
    CHECK(strstr(nla_session_errmsg(s), "cannot be scored") != NULL);
    CHECK_EQ(nla_score_parts(s_av, v, ex, 0.0302, &ps), NLA_ERR_ARG);
    CHECK(strstr(nla_session_errmsg(s_av), "not an AR") != NULL);
    printf("  parts: 3 parts and 3 prefixes equal to reconstructing them alone (max |diff| %g)\n",
           worst);
    nla_session_free(s);
    nla_session_free(one);
    nla_session_free(s_av);
    nla_model_close(ar);
    nla_model_close(av);
    free(v);
}

/* The rows' parts of an eval --parts run: the last prefix (and the part
   of a one-paragraph text) is the whole explanation's score. */
static void check_row_parts(const char *results) {
    char *res = slurp(results, NULL);
    int rows = 0;
    for (const char *l = res; (l = line_at(res, rows)) != NULL; rows++) {
        const char *pa = strstr(l, "\"parts\": ["), *nl = strchr(l, '\n'), *last = pa;
        int n = 0;
        for (const char *q = pa; q && (q = strstr(q, "{\"part\": ")) != NULL && q < nl; q++, n++)
            last = q;
        CHECK_MSG(pa && n >= 1 && num_after(last, "prefix_mse_nrm") == num_after(l, "mse_nrm") &&
                      (n > 1 || num_after(last, "mse_nrm") == num_after(l, "mse_nrm")),
                  "row %d: %d parts, the last prefix is not the whole", rows, n);
    }
    free(res);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int count_lines(const char *path) {
    char *b = slurp(path, NULL);
    int k = 0;
    for (const char *p = b; p && *p; p++) k += *p == '\n';
    free(b);
    return k;
}

/* --best-of 4 --parts: the same bytes in batches of 1, after kills, from shards */
static void test_reproducible(void) {
    const char *ref = "tests/tmp/q_ref", *b1 = "tests/tmp/q_b1", *kd = "tests/tmp/q_kill",
               *md = "tests/tmp/q_merged";
    const char *sd[2] = {"tests/tmp/q_s1", "tests/tmp/q_s2"};
    const char *ref_args[] = {TINY,        SAMPLE, OPTS,      "--positions-per-record", "2",
                              "--best-of", "4",    "--parts", "--with-greedy",          NULL};
    const char *b1_args[] = {TINY,        SAMPLE, OPTS,      "--positions-per-record", "2",
                             "--best-of", "4",    "--parts", "--with-greedy",          "--batch",
                             "1",         NULL};
    CHECK_EQ(eval_into(ref, ref_args), 0);
    CHECK_EQ(count_lines("tests/tmp/q_ref/results.jsonl"), 14);
    check_row_parts("tests/tmp/q_ref/results.jsonl");
    { /* the summary's means by part, the greedy means; the report's flag filter and parts */
        char *sj = summary_json(ref), *h;
        nla_eval_report_params rp;
        char err[512];
        CHECK_MSG(sj && strstr(sj, "\"parts\": [{\"part\": 1, \"n\": 14, ") &&
                      strstr(sj, "\"greedy\": {\"n\": 14, "),
                  "summary: no parts or greedy means");
        free(sj);
        memset(&rp, 0, sizeof rp);
        CHECK_EQ(nla_eval_report_html(ref, "tests/tmp/q_report.html", &rp, err, sizeof err),
                 NLA_OK);
        h = slurp("tests/tmp/q_report.html", NULL);
        CHECK(h && strstr(h, "<select id=\"flag\">") &&
              strstr(h, "<option>norm_outlier</option>") && strstr(h, "data-f=\"") &&
              strstr(h, "data-x=\"part 1 alone: mse_nrm "));
        free(h);
        unlink("tests/tmp/q_report.html");
    }
    CHECK_EQ(eval_into(b1, b1_args), 0);
    CHECK_MSG(same_files(b1, ref, files + 2, 3), "the texts depend on the batch");
    /* killed after 2, 6 and 10 rows, then finished */
    const char *kill_args[] = {"./nla",
                               "eval",
                               TINY,
                               SAMPLE,
                               OPTS,
                               "--positions-per-record",
                               "2",
                               "--best-of",
                               "4",
                               "--parts",
                               "--with-greedy",
                               "--out",
                               kd,
                               NULL};
    rm_dir(kd);
    mkdir(kd, 0755);
    const int at_rows[] = {2, 6, 10};
    for (int i = 0; i < 3; i++) {
        pid_t pid = spawn(kill_args, "/dev/null");
        for (int t = 0; t < 30000 && count_lines("tests/tmp/q_kill/results.jsonl") < at_rows[i] &&
                        waitpid(pid, NULL, WNOHANG) == 0;
             t++)
            sleep_ms(2);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        const int n = count_lines("tests/tmp/q_kill/results.jsonl");
        CHECK_MSG(n >= at_rows[i] && n < 14, "kill %d: %d rows committed, wanted %d..13", i, n,
                  at_rows[i]);
    }
    CHECK_EQ(run_nla(kill_args, "/dev/null"), 0);
    CHECK_MSG(same_files(kd, ref, files, 5), "killed and resumed --best-of 4 --parts run differs");
    /* shards 1/2 and 2/2, merged */
    for (int i = 0; i < 2; i++) {
        const char *args[] = {
            TINY,      SAMPLE,          OPTS,      "--positions-per-record", "2", "--best-of", "4",
            "--parts", "--with-greedy", "--shard", i ? "2/2" : "1/2",        NULL};
        CHECK_EQ(eval_into(sd[i], args), 0);
    }
    const char *merge[] = {"./nla", "eval", "--merge", md, sd[1], sd[0], NULL};
    rm_dir(md);
    mkdir(md, 0755);
    CHECK_EQ(run_nla(merge, "/dev/null"), 0);
    CHECK_MSG(same_files(md, ref, files, 5),
              "merged --best-of 4 --parts shards differ from the unsharded run");
    rm_dir(b1);
    rm_dir(kd);
    rm_dir(md);
    rm_dir(sd[0]);
    rm_dir(sd[1]);
}

/* nla_eval_compare: a run against itself is all zeros (and cos 1), an f32
   run against a --quant q8_0 run of the golden trio is not; two studies
   with other records or positions are refused, naming the record. */
static void test_compare(void) {
    const char *a = "tests/tmp/q_greedy", *q8 = "tests/tmp/q_q8", *c = "tests/tmp/q_other";
    const char *q8_args[] = {GOLDEN, SAMPLE, OPTS, TOK, "--quant", "q8_0", NULL};
    nla_eval_report_params rp;
    text_buf self = {NULL, 0}, quant = {NULL, 0}, tab = {NULL, 0};
    char err[512], pa[256], pc[256];
    memset(&rp, 0, sizeof rp);
    rp.json = 1;
    CHECK_EQ(eval_into(q8, q8_args), 0);
    CHECK_MSG(nla_eval_compare(a, a, &rp, collect, &self, err, sizeof err) == NLA_OK, "%s", err);
    CHECK_MSG(nla_eval_compare(a, q8, &rp, collect, &quant, err, sizeof err) == NLA_OK, "%s", err);
    static const char *const zero[] = {"dmse_mean", "abs_dmse_mean", "abs_dmse_max", "dcos_mean",
                                       "abs_dcos_mean"};
    for (int k = 0; k < 5; k++)
        CHECK_MSG(num_after(self.p, zero[k]) == 0, "self: %s %g", zero[k],
                  num_after(self.p, zero[k]));
    CHECK_MSG(json_whole(self.p) && json_whole(quant.p), "compare's JSON: %s",
              quant.p ? quant.p : "");
    CHECK(num_after(self.p, "rows") == 7 && num_after(self.p, "unmatched") == 0 &&
          num_after(self.p, "same_explanation") == 1);
    CHECK(num_after(self.p, "act_cos_min") == 1 && num_after(self.p, "rec_cos_min") == 1);
    CHECK_MSG(num_after(quant.p, "abs_dmse_max") > 0 && num_after(quant.p, "abs_dcos_mean") > 0,
              "q8_0: no change of the scores");
    CHECK_MSG(num_after(quant.p, "act_cos_min") < 1 && num_after(quant.p, "act_cos_min") > 0.99,
              "q8_0: activation cos %g", num_after(quant.p, "act_cos_min"));
    CHECK(num_after(quant.p, "rec_cos_min") < 1);
    CHECK(quant.p && strstr(quant.p, "\"changed_most\": [") &&
          count_lines_text(quant.p) == 8); /* a line per row */
    printf("  compare f32 / q8_0: max |dmse_nrm| %.3g, min activation cos %.6f, min reconstruction "
           "cos %.6f\n",
           num_after(quant.p, "abs_dmse_max"), num_after(quant.p, "act_cos_min"),
           num_after(quant.p, "rec_cos_min"));
    rp.json = 0;
    CHECK_EQ(nla_eval_compare(a, q8, &rp, collect, &tab, err, sizeof err), NLA_OK);
    CHECK(tab.p && strstr(tab.p, "7 rows in both") &&
          strstr(tab.p, "the 7 rows that changed most"));
    /* other positions, then fewer records: refused */
    rm_dir(c);
    mkdir(c, 0755);
    for (int i = 0; i < 5; i++) {
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pc, sizeof pc, "%s/%s", c, files[i]);
        copy_file(pa, pc);
    }
    snprintf(pc, sizeof pc, "%s/tokens.jsonl", c);
    char *tk = slurp(pc, NULL), *at = tk ? strstr(tk, "\"positions\": [") : NULL,
         *nl = tk ? strchr(tk, '\n') : NULL;
    FILE *f = fopen(pc, "wb");
    if (f && at && nl) {
        fwrite(tk, 1, (size_t)(at - tk) + 14, f);
        fputs("1, ", f);
        fputs(at + 14, f);
        fclose(f);
        CHECK_EQ(nla_eval_compare(a, c, &rp, collect, &tab, err, sizeof err), NLA_ERR_ARG);
        CHECK_MSG(strstr(err, "not runs of one study: record 1 is \"prose-1\" [") &&
                      strstr(err, "[1, "),
                  "refused: %s", err);
        spit(pc, tk, (size_t)(nl - tk) + 1);
        CHECK_EQ(nla_eval_compare(a, c, &rp, collect, &tab, err, sizeof err), NLA_ERR_ARG);
        CHECK_MSG(strstr(err, "tests/tmp/q_greedy has more than 1 records"), "refused: %s", err);
        /* a line that is not JSON, named by its file and line */
        if ((f = fopen(pc, "ab")) != NULL) {
            fputs("[1, \"no\"\n", f);
            fclose(f);
        }
        CHECK_EQ(nla_eval_compare(a, c, &rp, collect, &tab, err, sizeof err), NLA_ERR_FORMAT);
        CHECK_MSG(strstr(err, c) && strstr(err, "/tokens.jsonl: line 2 is not JSON"), "refused: %s",
                  err);
    } else {
        CHECK_MSG(0, "cannot rewrite %s", pc);
        if (f) fclose(f);
    }
    free(tk);
    free(self.p);
    free(quant.p);
    free(tab.p);
    rm_dir(a);
    rm_dir(q8);
    rm_dir(c);
}

int main(void) {
    mkdir("tests/tmp", 0755);
    test_flags();
    test_parts();
    test_best_of();
    test_compare();
    test_reproducible();
    return test_report();
}
#endif /* NLA_NO_EVAL */
