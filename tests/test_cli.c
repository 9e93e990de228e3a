/* test_cli.c - the nla command line on the golden NLA trio: every output of
   extract, verbalize, reconstruct, score, explain, forward, generate,
   tokenize and detokenize is read back (the .npy files' shapes from the
   files themselves) and equals what the API gives for the same inputs (and
   the golden data); refused commands exit 1 with the expected message on
   stderr; eval --shard auto reads a Slurm array's or a Kubernetes indexed
   job's environment; the README shows tests/slurm/study.sbatch verbatim.
   Runs ./nla (make builds it first). */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include "../nla.h"
#include "test.h"
#include "util.h"

#define G "tests/data/nla/"
#define TOKJSON "weights/tokenizer.json"
#define TOK " --tokenizer " TOKJSON
#define D 16
#define ERR " 2> tests/tmp/err.txt"
#define EVAL "./nla eval " G "target " G "av " G "ar --docs x.jsonl --out tests/tmp/ev"

/* Runs a shell command; returns its exit status. */
static int run(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* The command is refused: exit status 1 and `msg` in its stderr. */
static void refused(const char *cmd, const char *msg) {
    char full[2048];
    snprintf(full, sizeof full, "%s" ERR, cmd);
    const int rc = run(full);
    char *er = slurp("tests/tmp/err.txt", NULL);
    CHECK_MSG(rc == 1 && er && strstr(er, msg), "'%s': exit %d, stderr '%s' (expected '%s')", cmd,
              rc, er ? er : "", msg);
    free(er);
}

/* stderr (tests/tmp/err.txt) holds every one of the strings (NULL-ended). */
static int err_has(const char *first, ...) {
    char *er = slurp("tests/tmp/err.txt", NULL);
    int ok = er != NULL;
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s && ok; s = va_arg(ap, const char *)) ok = strstr(er, s) != NULL;
    va_end(ap);
    if (!ok) fprintf(stderr, "  stderr: %s\n", er ? er : "(none)");
    free(er);
    return ok;
}

/* A .npy the CLI wrote: float32 [rows, cols] as its header says (checked
   against the expected shape), or NULL. */
static float *npy_2d(const char *path, long long rows, long long cols) {
    int nd = 0;
    long long sh[4] = {0, 0, 0, 0};
    float *x = npy_load(path, &nd, sh);
    CHECK_MSG(x && nd == 2 && sh[0] == rows && sh[1] == cols,
              "%s: %d-D [%lld, %lld], expected [%lld, %lld]", path, nd, sh[0], sh[1], rows, cols);
    if (!(nd == 2 && sh[0] == rows && sh[1] == cols)) {
        free(x);
        return NULL;
    }
    return x;
}

/* The number after "key": in a JSON line; NAN when missing or not a number. */
static double num_of(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = line ? strstr(line, pat) : NULL;
    if (!p) return NAN;
    char *end;
    double v = strtod(p + strlen(pat), &end);
    return end == p + strlen(pat) ? NAN : v;
}

/* a printed %.9g value equals x */
static int same(double printed, double x) { return fabs(printed - x) <= 1e-8 * fabs(x) + 1e-12; }

static nla_model *open_api(const char *dir) {
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.tokenizer = TOKJSON;
    nla_model *m = NULL;
    char err[512];
    CHECK_MSG(nla_model_open(dir, &mp, &m, err, sizeof err) == NLA_OK, "open %s: %s", dir, err);
    return m;
}

/* The API's explanation of v: greedy, max_new ids, the text without the
   final stop id, parsed. *raw gets the whole text (heap), *n_ids (unless
   NULL) the ids the AV wrote, a stop id included. */
static char *api_explain(nla_model *av, const float *v, int max_new, char **raw, int *parsed,
                         int *n_ids) {
    nla_session *s;
    nla_session_new(av, NULL, &s);
    nla_verbalize_params vp;
    memset(&vp, 0, sizeof vp);
    vp.max_new = max_new;
    int32_t ids[256];
    int n = 0;
    CHECK_EQ(nla_verbalize(s, v, &vp, ids, 256, &n), NLA_OK);
    nla_session_free(s);
    if (n_ids) *n_ids = n;
    if (n > 0 && (ids[n - 1] == 1 || ids[n - 1] == 106)) n--;
    size_t len = 0, st = 0, el = 0;
    nla_detokenize(nla_model_tokenizer(av), ids, n, NULL, 0, &len);
    *raw = (char *)malloc(len + 1);
    nla_detokenize(nla_model_tokenizer(av), ids, n, *raw, len + 1, &len);
    *parsed = nla_parse_explanation(*raw, len, &st, &el);
    char *ex = (char *)malloc(el + 1);
    memcpy(ex, *raw + st, el);
    ex[el] = 0;
    return ex;
}

/* extract, verbalize, reconstruct and score, each against the API */
static void test_nla_steps(nla_model *target, nla_model *av, nla_model *ar) {
    const char *text = "The quick brown fox jumps over the lazy dog because it was bored.";
    int nd;
    long long sh[4];
    char *golden = slurp(G "golden.json", NULL);
    /* extract: the three golden positions, [3, 16] as the file says */
    CHECK_EQ(run("./nla extract " G
                 "target --text 'The quick brown fox jumps over the lazy dog because it was "
                 "bored.' --positions 1,7,14 --out tests/tmp/v.npy" TOK ERR),
             0);
    float *v = npy_2d("tests/tmp/v.npy", 3, D), *gk = npy_load(G "target_blockK.npy", &nd, sh);
    nla_meta am;
    nla_model_get_meta(av, &am);
    int32_t ids[64], pos[3] = {1, 7, 14};
    int T = 0;
    nla_tokenize(nla_model_tokenizer(target), text, strlen(text), NLA_TOKENIZE_BOS, ids, 64, &T);
    float api_v[3 * D];
    nla_session *s;
    nla_session_new(target, NULL, &s);
    CHECK_EQ(nla_extract(s, ids, T, am.layer, pos, 3, api_v), NLA_OK);
    nla_session_free(s);
    CHECK(v && gk);
    if (v && gk) {
        float want[3 * D];
        for (int k = 0; k < 3; k++) memcpy(want + k * D, gk + pos[k] * D, D * 4);
        CHECK_MSG(rel_err(v, want, 3 * D) <= 1e-4, "CLI extract differs from the golden");
        CHECK_MSG(!memcmp(v, api_v, sizeof api_v), "CLI extract differs from nla_extract");
    }
    char *er = slurp("tests/tmp/err.txt", NULL);
    CHECK_MSG(er && strstr(er, "wrote 3 vectors") && strstr(er, "of 15 tokens"), "extract says: %s",
              er);
    free(er);
    /* verbalize: per row the golden greedy ids, and the API's explanation */
    CHECK_EQ(run("./nla verbalize " G "av tests/tmp/v.npy --max-new 10" TOK
                 " > tests/tmp/expl.jsonl" ERR),
             0);
    char *ex = slurp("tests/tmp/expl.jsonl", NULL), *api_ex[3] = {NULL, NULL, NULL};
    const char *gav = strstr(golden, "\"av\": [");
    CHECK(ex && !line_of(ex, 3));
    for (int k = 0; ex && v && k < 3; k++) {
        char *line = line_of(ex, k), *raw, *got_ex, *got_raw;
        double got[16], g[16];
        gav = strstr(gav + 1, "\"greedy\"");
        int n = line ? json_nums_after(line, "\"ids\"", got, 16) : 0, parsed;
        json_nums_after(gav, "\"greedy\"", g, 16);
        CHECK_MSG(n == 10 && !memcmp(got, g, sizeof(double) * 10),
                  "CLI verbalize row %d ids differ", k);
        api_ex[k] = api_explain(av, v + k * D, 10, &raw, &parsed, NULL);
        got_ex = line ? json_string_after(line, "explanation", NULL) : NULL;
        got_raw = line ? json_string_after(line, "raw", NULL) : NULL;
        CHECK_MSG(line && num_of(line, "row") == k, "verbalize line %d: %s", k, line);
        CHECK_MSG(got_ex && !strcmp(got_ex, api_ex[k]),
                  "verbalize row %d: explanation '%s', API '%s'", k, got_ex, api_ex[k]);
        CHECK_MSG(got_raw && !strcmp(got_raw, raw),
                  "verbalize row %d: raw text differs from the API's", k);
        CHECK(line && strstr(line, parsed ? "\"parsed\": true" : "\"parsed\": false"));
        free(line);
        free(raw);
        free(got_ex);
        free(got_raw);
    }
    free(ex);
    /* sampled: each row from its own stream, so the texts do not depend on --batch */
    CHECK_EQ(run("./nla verbalize " G "av tests/tmp/v.npy --max-new 10 --temp 1 --seed 5 --batch 1"
                 TOK " > tests/tmp/expl1.jsonl" ERR), 0);
    CHECK_EQ(run("./nla verbalize " G "av tests/tmp/v.npy --max-new 10 --temp 1 --seed 5 --batch 3"
                 TOK " > tests/tmp/expl3.jsonl" ERR), 0);
    CHECK_EQ(run("./nla verbalize " G "av tests/tmp/v.npy --max-new 10 --temp 1 --seed 6 --batch 3"
                 TOK " > tests/tmp/expl6.jsonl" ERR), 0);
    CHECK_MSG(same_bytes("tests/tmp/expl1.jsonl", "tests/tmp/expl3.jsonl"),
              "sampled verbalize differs between --batch 1 and 3");
    CHECK_MSG(!same_bytes("tests/tmp/expl3.jsonl", "tests/tmp/expl6.jsonl"),
              "sampled verbalize: --seed 5 and 6 gave the same texts");
    /* reconstruct: the golden explanations, as JSONL objects and a string */
    FILE *f = fopen("tests/tmp/golden_expl.jsonl", "wb");
    const char *gx[3] = {
        ("Literary narrative pattern: formal English countryside setting, with a medieval tavern "
         "scene establishing a pastoral, humorous tone.\n\nFinal token \"dog\" ends the clause."),
        "Structured list format with bullet points establishes a game/narrative summary.",
        "A short fable about animals."};
    fputs("{\"row\": 0, \"explanation\": \"Literary narrative pattern: formal English countryside "
          "setting, with a "
          "medieval tavern scene establishing a pastoral, humorous tone.\\n\\nFinal token "
          "\\\"dog\\\" ends the "
          "clause.\"}\n"
          "\"Structured list format with bullet points establishes a game/narrative summary.\"\n"
          "{\"explanation\": \"A short fable about animals.\", \"parsed\": true}\n",
          f);
    fclose(f);
    CHECK_EQ(run("./nla reconstruct " G
                 "ar --jsonl tests/tmp/golden_expl.jsonl --out tests/tmp/r.npy" TOK ERR),
             0);
    float *r = npy_2d("tests/tmp/r.npy", 3, D), *gr = npy_load(G "ar_recon.npy", &nd, sh),
          api_r[3 * D];
    nla_session_new(ar, NULL, &s);
    CHECK_EQ(nla_reconstruct(s, gx, 3, api_r), NLA_OK);
    nla_session_free(s);
    if (r && gr) {
        CHECK_MSG(rel_err(r, gr, 3 * D) <= 1e-4, "CLI reconstruct differs from the golden");
        CHECK_MSG(!memcmp(r, api_r, sizeof api_r), "CLI reconstruct differs from nla_reconstruct");
    }
    /* score: each row and the summary equal nla_score's, and the golden
       metrics of (position 1, text 0), (7, 1), (14, 2) */
    const char *base[2] = {"", " --baseline own"};
    for (int own = 0; own < 2 && v && r; own++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd,
                 "./nla score tests/tmp/v.npy tests/tmp/r.npy%s > tests/tmp/score.jsonl",
                 base[own]);
        CHECK_EQ(run(cmd), 0);
        char *sc = slurp("tests/tmp/score.jsonl", NULL), *sum = line_of(sc, 3);
        double B = 0.0302, mse = 0, cs = 0;
        if (own) CHECK_EQ(nla_baseline(v, 3, D, 4.0, &B), NLA_OK);
        const char *gm = strstr(golden, "\"metrics\"");
        for (int k = 0; k < 3; k++) {
            char *line = line_of(sc, k);
            nla_scores want;
            nla_score(v + k * D, r + k * D, D, 4.0, B, &want);
            mse += want.mse_nrm;
            cs += want.cos;
            gm = strstr(gm + 1, "\"mse_nrm\": ");
            const double gmse = strtod(gm + 11, NULL);
            CHECK_MSG(num_of(line, "row") == k && same(num_of(line, "mse_nrm"), want.mse_nrm) &&
                          same(num_of(line, "cos"), want.cos) &&
                          same(num_of(line, "fve_nrm"), want.fve_nrm),
                      "score%s row %d: '%s' vs API mse_nrm %.9g cos %.9g fve_nrm %.9g", base[own],
                      k, line, want.mse_nrm, want.cos, want.fve_nrm);
            CHECK_MSG(fabs(num_of(line, "mse_nrm") - gmse) <= 1e-4 * gmse,
                      "score row %d: mse_nrm vs golden %.7f", k, gmse);
            free(line);
        }
        CHECK_MSG(
            sum && strstr(sum, "\"summary\": true") && num_of(sum, "n") == 3 &&
                same(num_of(sum, "mse_nrm"), mse / 3) && same(num_of(sum, "cos"), cs / 3) &&
                same(num_of(sum, "fve_nrm"), 1 - mse / 3 / B) && same(num_of(sum, "baseline"), B) &&
                strstr(sum, own ? "\"baseline_kind\": \"own\"" : "\"baseline_kind\": \"training\""),
            "score%s summary '%s' (API: baseline %.9g)", base[own], sum, B);
        CHECK(!line_of(sc, 4));
        free(sum);
        free(sc);
    }
    for (int k = 0; k < 3; k++) free(api_ex[k]);
    free(v);
    free(gk);
    free(r);
    free(gr);
    free(golden);
}

/* explain, JSONL and table, against the API's pipeline on the same text */
static void test_explain(nla_model *target, nla_model *av, nla_model *ar) {
    CHECK_EQ(run("./nla explain " G "target " G "av " G
                 "ar --text 'The quick brown fox' --positions 1,3 --max-new 12 "
                 "--jsonl" TOK " > tests/tmp/explain.jsonl" ERR),
             0);
    CHECK_EQ(run("./nla explain " G "target " G "av " G
                 "ar --text 'The quick brown fox' --positions 1,3 --max-new 12" TOK
                 " > tests/tmp/explain.txt" ERR),
             0);
    char *xp = slurp("tests/tmp/explain.jsonl", NULL), *tab = slurp("tests/tmp/explain.txt", NULL);
    nla_meta am, rm;
    nla_model_get_meta(av, &am);
    nla_model_get_meta(ar, &rm);
    int32_t ids[16], pos[2] = {1, 3};
    int T = 0;
    nla_tokenize(nla_model_tokenizer(target), "The quick brown fox", 19, NLA_TOKENIZE_BOS, ids, 16,
                 &T);
    float v[2 * D], rec[2 * D];
    nla_session *s;
    nla_session_new(target, NULL, &s);
    CHECK_EQ(nla_extract(s, ids, T, am.layer, pos, 2, v), NLA_OK);
    nla_session_free(s);
    char *ex[2], *raw[2];
    int parsed[2], n_ids[2];
    for (int k = 0; k < 2; k++)
        ex[k] = api_explain(av, v + k * D, 12, &raw[k], &parsed[k], &n_ids[k]);
    nla_session_new(ar, NULL, &s);
    CHECK_EQ(nla_reconstruct(s, (const char *const *)ex, 2, rec), NLA_OK);
    nla_session_free(s);
    CHECK(xp && tab && !line_of(xp, 2));
    for (int k = 0; xp && tab && k < 2; k++) {
        char *line = line_of(xp, k),
             *got = line ? json_string_after(line, "explanation", NULL) : NULL;
        nla_scores want;
        nla_score(v + k * D, rec + k * D, D, rm.mse_scale, am.fve_baseline, &want);
        double nv = 0;
        for (int i = 0; i < D; i++) nv += (double)v[k * D + i] * v[k * D + i];
        CHECK_MSG(line && json_whole(line) && num_of(line, "position") == pos[k] &&
                      num_of(line, "token_id") == ids[pos[k]],
                  "explain line %d: %s", k, line);
        CHECK_MSG(got && !strcmp(got, ex[k]), "explain position %d: explanation '%s', API '%s'",
                  pos[k], got, ex[k]);
        CHECK_MSG(same(num_of(line, "mse_nrm"), want.mse_nrm) &&
                      same(num_of(line, "cos"), want.cos) &&
                      same(num_of(line, "fve_nrm"), want.fve_nrm) &&
                      same(num_of(line, "vec_norm"), sqrt(nv)),
                  "explain position %d: '%s' vs API mse_nrm %.9g cos %.9g", pos[k], line,
                  want.mse_nrm, want.cos);
        CHECK(line && strstr(line, parsed[k] ? "\"parsed\": true" : "\"parsed\": false"));
        /* the table: one row per position with the same numbers, rounded */
        char *row = line_of(tab, k + 1), want_row[128];
        snprintf(want_row, sizeof want_row, "%8.4f  %8.4f  %8.3f  ", want.mse_nrm, want.cos,
                 want.fve_nrm);
        CHECK_MSG(row && atoi(row) == pos[k] && strstr(row, want_row),
                  "explain table row %d: '%s' lacks '%s'", k, row, want_row);
        free(line);
        free(got);
        free(row);
        free(ex[k]);
        free(raw[k]);
    }
    char *row3 = tab ? line_of(tab, 3) : NULL;
    CHECK_MSG(row3 && strstr(tab, "fve_nrm against the training-set baseline"), "table: %s", tab);
    free(row3);
    /* each phase's time on stderr, with the work done: the AV's ids counted as the API's */
    char av_line[96];
    snprintf(av_line, sizeof av_line, "nla: AV: 2 texts, %d tokens in ", n_ids[0] + n_ids[1]);
    CHECK(err_has("nla: target: 5 tokens in ", av_line, "2 at a time", "nla: AR: 2 texts in ",
                  "(model opened in ", (const char *)NULL));
    free(xp);
    free(tab);
    /* a token that is one byte of no UTF-8 character: U+FFFD in the JSON, which stays valid */
    CHECK_EQ(run("./nla explain " G "target " G "av " G "ar --text \"$(printf 'x\\377y')\" "
                 "--positions 2 --max-new 2 --jsonl" TOK " > tests/tmp/explain_byte.jsonl" ERR),
             0);
    char *xb = slurp("tests/tmp/explain_byte.jsonl", NULL);
    CHECK_MSG(xb && json_whole(xb) && strstr(xb, "\"token\": \"\xef\xbf\xbd\", "),
              "explain of byte 0xff: %s", xb);
    free(xb);
}

/* forward, generate, tokenize and detokenize against the API */
static void test_model_commands(nla_model *target) {
    nla_model_info in;
    nla_model_get_info(target, &in);
    const int32_t ids[3] = {2, 818, 5279};
    CHECK_EQ(run("./nla forward " G
                 "target --ids 2,818,5279 --logits tests/tmp/l.npy --hidden tests/tmp/h.npy" ERR),
             0);
    float *lg = npy_2d("tests/tmp/l.npy", 3, in.vocab_size);
    int nd = 0;
    long long sh[4] = {0, 0, 0, 0};
    float *hd = npy_load("tests/tmp/h.npy", &nd, sh);
    CHECK_MSG(hd && nd == 3 && sh[0] == in.n_layers && sh[1] == 3 && sh[2] == D,
              "h.npy: %d-D [%lld, %lld, %lld]", nd, sh[0], sh[1], sh[2]);
    float *want_l = (float *)malloc(sizeof(float) * 3 * (size_t)in.vocab_size);
    float *want_h = (float *)malloc(sizeof(float) * 3 * (size_t)in.n_layers * D);
    nla_session *s;
    nla_session_new(target, NULL, &s);
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = 3;
    b.ids = ids;
    b.logits = want_l;
    b.all_logits = 1;
    b.hidden = want_h;
    CHECK_EQ(nla_forward(s, &b), NLA_OK);
    CHECK_MSG(lg && !memcmp(lg, want_l, sizeof(float) * 3 * (size_t)in.vocab_size),
              "forward --logits differ");
    CHECK_MSG(hd && nd == 3 && sh[0] == in.n_layers &&
                  !memcmp(hd, want_h, sizeof(float) * 3 * (size_t)in.n_layers * D),
              "forward --hidden differs");
    /* without outputs: the top 5 of the last row, the best first */
    CHECK_EQ(run("./nla forward " G "target --ids 2,818,5279 > tests/tmp/top.txt" ERR), 0);
    char *top = slurp("tests/tmp/top.txt", NULL), *l1 = line_of(top, 1);
    int best = 0;
    for (int i = 1; i < in.vocab_size; i++)
        best = want_l[2 * (size_t)in.vocab_size + i] > want_l[2 * (size_t)in.vocab_size + best]
            ? i
            : best;
    CHECK_MSG(top && strstr(top, "top 5 after position 2") && l1 && atoi(l1) == best,
              "forward top 5: %s (best %d)", top, best);
    free(top);
    free(l1);
    /* generate: greedy ids, then as text */
    nla_generate_params gp;
    memset(&gp, 0, sizeof gp);
    gp.max_new = 6;
    int32_t out[6];
    int n_out = 0;
    nla_session_reset(s);
    CHECK_EQ(nla_generate(s, ids, 3, &gp, out, &n_out), NLA_OK);
    char want[128] = "";
    for (int i = 0; i < n_out; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", i ? "," : "", out[i]);
    strcat(want, "\n");
    CHECK_EQ(run("./nla generate " G "target --ids 2,818,5279 -n 6 > tests/tmp/gen.txt" ERR), 0);
    char *gen = slurp("tests/tmp/gen.txt", NULL);
    CHECK_MSG(gen && !strcmp(gen, want), "generate printed '%s', the API gives '%s'", gen, want);
    free(gen);
    /* tokenize and detokenize */
    int32_t tk[32];
    int n_tk = 0;
    nla_tokenize(nla_model_tokenizer(target), "The quick brown fox", 19, NLA_TOKENIZE_BOS, tk, 32,
                 &n_tk);
    want[0] = 0;
    for (int i = 0; i < n_tk; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", i ? "," : "", tk[i]);
    CHECK_EQ(run("./nla tokenize " TOKJSON " --bos 'The quick brown fox' > tests/tmp/tok.txt" ERR),
             0);
    char *got = slurp("tests/tmp/tok.txt", NULL), cmd[256];
    strcat(want, "\n");
    CHECK_MSG(got && !strcmp(got, want), "tokenize printed '%s', the API gives '%s'", got, want);
    free(got);
    want[strlen(want) - 1] = 0;
    snprintf(cmd, sizeof cmd, "./nla detokenize " TOKJSON " %s > tests/tmp/detok.txt" ERR, want);
    CHECK_EQ(run(cmd), 0);
    got = slurp("tests/tmp/detok.txt", NULL);
    CHECK_MSG(got && !strcmp(got, "<bos>The quick brown fox\n"), "detokenize printed '%s'", got);
    free(got);
    /* --pieces: "id<TAB>piece" lines; --jsonl: a JSON array per line, of [id,"piece"] pairs
       with --pieces (a piece with a quote escaped) */
    char pieces[1024] = "", pairs[1024] = "[", ids_json[256] = "[";
    for (int i = 0; i < n_tk; i++) {
        size_t pl = 0;
        const char *pc = nla_tokenizer_piece(nla_model_tokenizer(target), tk[i], &pl);
        snprintf(pieces + strlen(pieces), sizeof pieces - strlen(pieces), "%d\t%.*s\n", tk[i],
                 (int)pl, pc);
        snprintf(pairs + strlen(pairs), sizeof pairs - strlen(pairs), "%s[%d,\"%.*s\"]",
                 i ? "," : "", tk[i], (int)pl, pc);
        snprintf(ids_json + strlen(ids_json), sizeof ids_json - strlen(ids_json), "%s%d",
                 i ? "," : "", tk[i]);
    }
    CHECK_EQ(run("./nla tokenize " TOKJSON
                 " --bos --pieces 'The quick brown fox' > tests/tmp/tok.txt" ERR),
             0);
    got = slurp("tests/tmp/tok.txt", NULL);
    CHECK_MSG(got && !strcmp(got, pieces), "tokenize --pieces printed '%s', want '%s'", got,
              pieces);
    free(got);
    const char *lines = "\"The quick brown fox\"\n\"\\\"\"\n"; /* the second: a quote */
    spit("tests/tmp/tok.jsonl", lines, strlen(lines));
    CHECK_EQ(run("./nla tokenize " TOKJSON
                 " --bos --jsonl < tests/tmp/tok.jsonl > tests/tmp/tok.txt" ERR),
             0);
    got = slurp("tests/tmp/tok.txt", NULL);
    strcat(ids_json, "]\n[2,");
    snprintf(ids_json + strlen(ids_json), sizeof ids_json - strlen(ids_json), "%d]\n",
             nla_tokenizer_find(nla_model_tokenizer(target), "\""));
    CHECK_MSG(got && !strcmp(got, ids_json), "tokenize --jsonl printed '%s', want '%s'", got,
              ids_json);
    free(got);
    CHECK_EQ(run("./nla tokenize " TOKJSON " --bos --jsonl --pieces < tests/tmp/tok.jsonl"
                 " > tests/tmp/tok.txt" ERR), 0);
    got = slurp("tests/tmp/tok.txt", NULL);
    snprintf(pairs + strlen(pairs), sizeof pairs - strlen(pairs),
             "]\n[[2,\"<bos>\"],[%d,\"\\\"\"]]\n",
             nla_tokenizer_find(nla_model_tokenizer(target), "\""));
    CHECK_MSG(got && !strcmp(got, pairs), "tokenize --jsonl --pieces printed '%s', want '%s'", got,
              pairs);
    free(got);
    nla_session_free(s);
    free(lg);
    free(hd);
    free(want_l);
    free(want_h);
}

/* A hook that writes a NaN into row 1 of the residual after block 1. */
static int nan_hook(void *user, int layer, int pos0, int n_rows, int d_model, float *resid) {
    (void)user; (void)pos0;
    if (layer == 1 && n_rows > 1) resid[d_model + 3] = NAN;
    return 0;
}

/* Non-finite values: input vectors with a NaN or Inf are refused naming the
   row (API and CLI), a model whose forward produces one names the block,
   and no JSON output holds nan or inf. */
static void test_nonfinite(nla_model *target, nla_model *av) {
    float v[2 * D], r[2 * D];
    for (int i = 0; i < 2 * D; i++) v[i] = r[i] = (float)(i % 5) - 2;
    nla_scores sc;
    double B;
    CHECK_EQ(nla_score(v, r, D, 4.0, 0.0302, &sc), NLA_OK);
    CHECK_EQ(nla_score(v, r, D, 4.0, INFINITY, &sc), NLA_ERR_ARG);
    r[D + 3] = NAN;
    CHECK_EQ(nla_score(v + D, r + D, D, 4.0, 0.0302, &sc), NLA_ERR_NONFINITE);
    CHECK_EQ(nla_baseline(r, 2, D, 4.0, &B), NLA_ERR_NONFINITE);
    r[D + 3] = INFINITY;
    CHECK_EQ(nla_score(r + D, v + D, D, 4.0, 0.0302, &sc), NLA_ERR_NONFINITE);
    /* a vector of zeros has no direction: no score (not mse_nrm 1 at cos 0), no baseline */
    {
        float z[2 * D] = {0};
        nla_cross_scores cs;
        memcpy(z, v, D * sizeof(float));
        CHECK_EQ(nla_score(z + D, v, D, 4.0, 0.0302, &sc), NLA_ERR_ARG);
        CHECK_EQ(nla_score(v, z + D, D, 4.0, 0.0302, &sc), NLA_ERR_ARG);
        CHECK_EQ(nla_baseline(z, 2, D, 4.0, &B), NLA_ERR_ARG);
        CHECK_EQ(nla_score_cross(z, v, 2, D, 4.0, NULL, NULL, &cs), NLA_ERR_ARG);
        CHECK_EQ(nla_score_cross(v, z, 2, D, 4.0, NULL, NULL, &cs), NLA_ERR_ARG);
        CHECK_EQ(nla_score_cross(v, v, 2, D, 4.0, NULL, NULL, &cs), NLA_OK);
        /* a score beyond a double's range (an mse_scale whose square overflows, a tiny
           baseline) is refused, out left as it is */
        sc.mse_nrm = -7;
        CHECK_EQ(nla_score(v, z + D - 1, D, 1e300, 0.0302, &sc), NLA_ERR_NONFINITE);
        CHECK_EQ(nla_score(v, z + D - 1, D, 4.0, 1e-320, &sc), NLA_ERR_NONFINITE);
        CHECK(sc.mse_nrm == -7);
        CHECK_EQ(nla_score(v, z + D - 1, D, 1e150, 0.0302, &sc), NLA_OK);
        CHECK(isfinite(sc.mse_nrm) && isfinite(sc.fve_nrm));
        CHECK_EQ(nla_score_cross(v, z + D - 1, 1, D, 1e300, NULL, NULL, &cs), NLA_ERR_NONFINITE);
        float w[2 * D];
        for (int i = 0; i < 2 * D; i++) w[i] = i < D ? 1.0f : -1.0f;
        CHECK_EQ(nla_baseline(w, 2, D, 1e300, &B), NLA_ERR_NONFINITE);
    }
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_seq = 2;
    nla_session *s;
    nla_session_new(av, &sp, &s);
    int32_t ids[2 * 8];
    int n_ids[2];
    nla_verbalize_params vp;
    memset(&vp, 0, sizeof vp);
    vp.max_new = 8;
    CHECK_EQ(nla_verbalize_batch(s, r, 2, &vp, ids, 8, n_ids), NLA_ERR_NONFINITE);
    CHECK_MSG(strstr(nla_session_errmsg(s), "vector 1 holds a non-finite value (inf at element 3)"),
              "%s", nla_session_errmsg(s));
    nla_session_free(s);
    /* the forward: NaN input rows, and a NaN that appears after block 1 in
       a row that is not the last */
    nla_session_new(target, NULL, &s);
    float e[3 * D];
    const int32_t tk[3] = {2, 818, 5279};
    nla_embed_tokens(target, tk, 3, e);
    e[D + 7] = NAN;
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = 3;
    b.embeds = e;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_NONFINITE);
    CHECK_MSG(strstr(nla_session_errmsg(s), "embeds row 1"), "%s", nla_session_errmsg(s));
    b.embeds = NULL;
    b.ids = tk;
    b.hook = nan_hook;
    CHECK_EQ(nla_forward(s, &b), NLA_ERR_NONFINITE);
    CHECK_MSG(
        strstr(nla_session_errmsg(s), "block 1 produced a non-finite value (nan) at position 1"),
        "%s", nla_session_errmsg(s));
    CHECK_EQ(nla_session_n_past(s), 0);
    nla_session_free(s);
    /* a checkpoint with a NaN weight in block 1 (the first value of its
       down_proj): every command that runs it names the block */
    mkdir("tests/tmp/nan-target", 0755);
    copy_file(G "target/config.json", "tests/tmp/nan-target/config.json");
    copy_file(G "target/generation_config.json", "tests/tmp/nan-target/generation_config.json");
    size_t n;
    char *st = slurp(G "target/model.safetensors", &n);
    const char *t = st ? strstr(st + 8, "\"model.layers.1.mlp.down_proj.weight\"") : NULL;
    const char *off = t ? strstr(t, "\"data_offsets\":") : NULL;
    CHECK(off != NULL);
    if (off) {
        uint64_t hl = 0;
        for (int i = 0; i < 8; i++) hl |= (uint64_t)(unsigned char)st[i] << (8 * i);
        size_t at = 8 + (size_t)hl + (size_t)strtoull(strchr(off, '[') + 1, NULL, 10);
        st[at] = (char)0xc0; /* bf16 0x7fc0: NaN */
        st[at + 1] = 0x7f;
        spit("tests/tmp/nan-target/model.safetensors", st, n);
    }
    free(st);
    refused("./nla forward tests/tmp/nan-target --ids 2,818,5279",
            "block 1 produced a non-finite value (nan) at position 0");
    unlink("tests/tmp/x.npy");
    refused("./nla extract tests/tmp/nan-target --text 'The quick brown fox' --layer 3 --out "
            "tests/tmp/x.npy" TOK,
            "block 1 produced a non-finite value");
    refused("./nla explain tests/tmp/nan-target " G "av " G "ar --text 'The quick brown fox'" TOK,
            "block 1 produced a non-finite value");
    CHECK_MSG(access("tests/tmp/x.npy", F_OK) != 0, "a failed extract wrote tests/tmp/x.npy");
    /* vectors files with a NaN or Inf: refused naming the row */
    float *gv = npy_2d("tests/tmp/v.npy", 3, D);
    if (gv) {
        FILE *f = fopen("tests/tmp/v.npy", "rb");
        char hdr[128];
        CHECK(f && fread(hdr, 1, 128, f) == 128);
        if (f) fclose(f);
        gv[2 * D + 5] = NAN;
        char buf[128 + 3 * D * 4];
        memcpy(buf, hdr, 128);
        memcpy(buf + 128, gv, 3 * D * 4);
        spit("tests/tmp/nan.npy", buf, sizeof buf);
        refused("./nla score tests/tmp/nan.npy tests/tmp/r.npy",
                "nan.npy: row 2 holds a non-finite value (nan at column 5)");
        refused("./nla verbalize " G "av tests/tmp/nan.npy" TOK,
                "nan.npy: row 2 holds a non-finite value");
        gv[2 * D + 5] = -INFINITY;
        memcpy(buf + 128, gv, 3 * D * 4);
        spit("tests/tmp/nan.npy", buf, sizeof buf);
        refused("./nla score tests/tmp/r.npy tests/tmp/nan.npy --baseline own",
                "row 2 holds a non-finite value (-inf");
        /* a row of zeros (one a shard has not written) is no vector: not scored,
           still verbalized */
        memset(gv + 2 * D, 0, D * sizeof(float));
        memcpy(buf + 128, gv, 3 * D * 4);
        spit("tests/tmp/zero.npy", buf, sizeof buf);
        refused("./nla score tests/tmp/zero.npy tests/tmp/r.npy",
                "zero.npy: row 2 is all zeros: no vector there to score");
        refused("./nla score tests/tmp/r.npy tests/tmp/zero.npy --baseline own",
                "zero.npy: row 2 is all zeros");
        refused("./nla score --cross tests/tmp/zero.npy tests/tmp/r.npy",
                "zero.npy: row 2 is all zeros");
        CHECK_EQ(
            run("./nla verbalize " G "av tests/tmp/zero.npy --max-new 2" TOK " > /dev/null 2>&1"),
            0);
        free(gv);
    }
    refused("./nla score tests/tmp/v.npy tests/tmp/r.npy --baseline inf",
            "a positive number or 'own'");
    refused("./nla generate " G "target --ids 2,818 -n 3 --temp inf", "bad value 'inf' for --temp");
    refused("./nla generate " G "target --ids 2,818 -n 3 --temp 0x10",
            "bad value '0x10' for --temp");
    refused("./nla generate " G "target --ids 2,818 -n 3 --stop 999999999",
            "stop id 999999999 is not in the vocabulary");
#ifndef NLA_NO_EVAL
    refused("./nla eval " G "target " G "av " G "ar --docs tests/data/eval/docs.jsonl --out "
            "tests/tmp/evseed --seed 99999999999999999999",
            "bad value '99999999999999999999' for --seed"); /* not 2^63 - 1 */
#endif
    refused(
        "./nla generate " G "target --ids 2,818 -n 2147483647",
        "-n 2147483647: the prompt's 2 tokens and the new ones exceed the model's 32768 positions");
    /* no prompt, or two: one error, nothing on stdout */
    for (int two = 0; two < 2; two++) {
        CHECK_EQ(run(two ? "./nla generate " G
                           "target --ids 2 --prompt x -n 2 > tests/tmp/gen0.txt" ERR
                         : "./nla generate " G "target -n 2 > tests/tmp/gen0.txt" ERR),
                 1);
        char *o = slurp("tests/tmp/gen0.txt", NULL), *er = slurp("tests/tmp/err.txt", NULL);
        CHECK_MSG(o && !o[0] && er && strstr(er, "give exactly one of --ids") &&
                      !strstr(er, "empty"),
                  "stdout '%s', stderr '%s'", o ? o : "", er ? er : "");
        free(o);
        free(er);
    }
    refused("./nla explain " G "target " G "av " G "ar --text hi --temp nan" TOK,
            "bad value 'nan' for --temp");
}

/* Runs cmd with files limited to `limit` bytes (RLIMIT_FSIZE, SIGXFSZ
   ignored: a write past it fails with EFBIG, as on a full disk), stderr to
   tests/tmp/err.txt; returns its exit status. */
static int run_limited(const char *cmd, long limit) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = (rlim_t)limit;
        signal(SIGXFSZ, SIG_IGN);
        if (!freopen("tests/tmp/err.txt", "wb", stderr) || setrlimit(RLIMIT_FSIZE, &rl)) _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}


/* A full disk (a 200-byte file-size limit): every output command fails,
   saying why and naming the file, and leaves the old file as it was;
   outputs that are inputs are refused; random-model keeps a checkpoint. */
static void full_disk(void) {
#ifdef NLA_NO_EVAL
    const int has_eval = 0; /* built without nla eval: its commands are skipped */
#else
    const int has_eval = 1;
#endif
    static const struct {
        const char *cmd, *file;
    } out[] = {
        {"./nla extract " G
         "target --text 'The quick brown fox' --positions 1,3 --out tests/tmp/fd/keep.npy" TOK,
         "tests/tmp/fd/keep.npy"},
        {"./nla forward " G "target --ids 2,818 --logits tests/tmp/fd/keep.npy",
         "tests/tmp/fd/keep.npy"},
        {"./nla forward " G "target --ids 2,818 --hidden tests/tmp/fd/keep.npy",
         "tests/tmp/fd/keep.npy"},
        {"./nla reconstruct " G
         "ar --jsonl tests/tmp/golden_expl.jsonl --out tests/tmp/fd/keep.npy" TOK,
         "tests/tmp/fd/keep.npy"},
        {"./nla eval --html tests/tmp/fd/keep.html tests/tmp/fd/ev", "tests/tmp/fd/keep.html"},
        {"./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/fd/q --type q8_0",
         "tests/tmp/fd/q/model.safetensors"},
        {"./nla eval " G "target " G "av " G
         "ar --docs tests/tmp/fd/docs.jsonl --out tests/tmp/fd/ev --max-new 4 --quiet" TOK,
         "tests/tmp/fd/ev/tokens.jsonl"}};
    mkdir("tests/tmp/fd", 0755);
    mkdir("tests/tmp/fd/q", 0755);
    mkdir("tests/tmp/fd/ev", 0755);
    for (int i = 0; i < 6; i++) { /* a fresh results folder */
        static const char *const f[6] = {"params",      "tokens",          "results",
                                         "activations", "reconstructions", "eval"};
        char p[128];
        snprintf(p, sizeof p, "tests/tmp/fd/ev/%s.%s", f[i],
                 i < 3   ? (i ? "jsonl" : "json")
                 : i < 5 ? "npy"
                         : "lock");
        unlink(p);
    }
    const char *doc = "{\"id\": 1, \"text\": \"The quick brown fox jumps over the lazy dog because "
                      "it was bored. The quick brown "
                      "fox jumps over the lazy dog because it was bored.\", \"positions\": [2]}\n";
    spit("tests/tmp/fd/docs.jsonl", doc, strlen(doc));
    /* a finished results folder: its rerun rewrites tokens.jsonl, over the limit */
    if (has_eval) CHECK_EQ(run(out[6].cmd), 0);
    for (size_t i = 0; i < sizeof out / sizeof *out; i++) {
        if (!has_eval && strstr(out[i].cmd, "nla eval")) continue;
        const int fresh = strstr(out[i].cmd, "quantize") != NULL; /* saves into a new folder */
        if (fresh) empty_dir("tests/tmp/fd/q");
        else if (i < 6) spit(out[i].file, "the old file", 12);
        copy_file(out[i].file, "tests/tmp/fd/before");
        CHECK_MSG(run_limited(out[i].cmd, 200) == 1, "%s: not exit 1 on a full disk", out[i].cmd);
        CHECK_MSG(err_has(out[i].file, "File too large", NULL),
                  "%s: no file and reason in the message", out[i].cmd);
        CHECK_MSG(fresh ? access(out[i].file, F_OK) != 0
                        : same_bytes(out[i].file, "tests/tmp/fd/before"),
                  "%s: the old %s was changed", out[i].cmd, out[i].file);
    }
    /* an output that is an input, or a model's file */
    if (has_eval) {
        CHECK_EQ(run("./nla eval --html tests/tmp/fd/ev/results.jsonl tests/tmp/fd/ev"
                     " 2> tests/tmp/err.txt"),
                 1);
        CHECK(err_has("the report tests/tmp/fd/ev/results.jsonl is results.jsonl of", NULL));
        /* nor any other file of the folder, there or not yet (the lock of a run) */
        remove("tests/tmp/fd/ev/eval.lock");
        const char *study[2] = {"reconstructions.npy", "eval.lock"};
        for (int k = 0; k < 2; k++) {
            char cmd[160], msg[96];
            snprintf(cmd, sizeof cmd, "./nla eval --html tests/tmp/fd/ev/%s tests/tmp/fd/ev"
                     " 2> tests/tmp/err.txt", study[k]);
            snprintf(msg, sizeof msg, "is %s of tests/tmp/fd/ev", study[k]);
            CHECK_MSG(run(cmd) == 1 && err_has(msg, NULL), "--html over %s", study[k]);
        }
        CHECK(access("tests/tmp/fd/ev/eval.lock", F_OK) != 0);
        /* nor a file of the folder of RESULTS given as its results.jsonl */
        CHECK_EQ(run("./nla eval --html tests/tmp/fd/ev/activations.npy "
                     "tests/tmp/fd/ev/results.jsonl 2> tests/tmp/err.txt"),
                 1);
        CHECK(err_has("is activations.npy of tests/tmp/fd/ev", NULL));
    }
    CHECK_EQ(run("./nla reconstruct " G
                 "ar --jsonl tests/tmp/fd/docs.jsonl --out tests/tmp/fd/docs.jsonl" TOK
                 " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/docs.jsonl: the output would overwrite the input", NULL));
    mkdir("tests/tmp/fd/target", 0755); /* a copy: a build without the check would overwrite it */
    copy_file(G "target/config.json", "tests/tmp/fd/target/config.json");
    copy_file(G "target/model.safetensors", "tests/tmp/fd/target/model.safetensors");
    CHECK_EQ(run("./nla extract tests/tmp/fd/target --text hi --positions 1 --out "
                 "tests/tmp/fd/target/config.json" TOK " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/target/config.json: the output would overwrite the input", NULL));
    /* a model named by its .safetensors file: the files of its folder are inputs too */
    CHECK_EQ(run("./nla extract tests/tmp/fd/target/model.safetensors --text hi --positions 1 "
                 "--out tests/tmp/fd/target/config.json" TOK " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/target/config.json: the output would overwrite the input "
                  "tests/tmp/fd/target/model.safetensors", NULL));
    CHECK_EQ(run("./nla forward tests/tmp/fd/target/model.safetensors --ids 2,5 --layer 1 "
                 "--hidden tests/tmp/fd/target/config.json 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/target/config.json: the output would overwrite the input", NULL));
    CHECK(same_bytes("tests/tmp/fd/target/config.json", G "target/config.json"));
    /* the text or chat read is an input too */
    spit("tests/tmp/fd/t.txt", "some text", 9);
    CHECK_EQ(run("./nla extract " G "target --text-file tests/tmp/fd/t.txt --out tests/tmp/fd/t.txt"
                 TOK " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/t.txt: the output would overwrite the input", NULL));
    CHECK_EQ(run("./nla extract " G "target --chat tests/tmp/fd/t.txt --out tests/tmp/fd/t.txt"
                 TOK " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/t.txt: the output would overwrite the input", NULL));
    /* an input where the output's temporary file goes: refused, never removed */
    remove("tests/tmp/fd/w");
    spit("tests/tmp/fd/w.tmp", "more text", 9);
    CHECK_EQ(run("./nla extract " G "target --text-file tests/tmp/fd/w.tmp --out tests/tmp/fd/w"
                 TOK " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/w: the output would remove the input tests/tmp/fd/w.tmp (its "
                  "temporary file while it is written)", NULL));
    CHECK(access("tests/tmp/fd/w.tmp", F_OK) == 0 && access("tests/tmp/fd/w", F_OK) != 0);
    /* one writer per output: a second process is refused while the first
       holds the temporary file, and takes it over once the first has ended */
    remove("tests/tmp/fd/v2.npy");
    remove("tests/tmp/fd/v3.npy.tmp");
    int held = hold_lock("tests/tmp/fd/v2.npy.tmp");
    CHECK(held >= 0);
    CHECK_EQ(run("./nla extract " G "target --text hi --positions 1 --out tests/tmp/fd/v2.npy"
                 TOK " 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/v2.npy: another writer has it open "
                  "(tests/tmp/fd/v2.npy.tmp is locked)", NULL));
    CHECK(access("tests/tmp/fd/v2.npy", F_OK) != 0);
#ifdef __linux__
    /* in this process too (the held lock is this process's): open-file locks.
       Closing its descriptor after the refusal drops this process's classic
       lock, so this check comes last while it is held */
    char why[512];
    CHECK_EQ(nla_file_write("tests/tmp/fd/v2.npy", "x", 1, why, sizeof why), NLA_ERR_BUSY);
    CHECK_MSG(strstr(why, "another writer has it open"), "nla_file_write: %s", why);
    CHECK(access("tests/tmp/fd/v2.npy", F_OK) != 0);
#endif
    if (held >= 0) close(held);
    CHECK_EQ(run("./nla extract " G "target --text hi --positions 1 --out tests/tmp/fd/v2.npy"
                 TOK " 2> tests/tmp/err.txt"),
             0);
    CHECK(access("tests/tmp/fd/v2.npy", F_OK) == 0 && access("tests/tmp/fd/v2.npy.tmp", F_OK) != 0);
    /* a hard link left where the temporary file goes: its name goes, the file it shares stays */
    CHECK_EQ(link("tests/tmp/fd/t.txt", "tests/tmp/fd/v3.npy.tmp"), 0);
    CHECK_EQ(run("./nla extract " G "target --text hi --positions 1 --out tests/tmp/fd/v3.npy" TOK
                 " 2> tests/tmp/err.txt"),
             0);
    char *shared = slurp("tests/tmp/fd/t.txt", NULL);
    CHECK_MSG(shared && !strcmp(shared, "some text"), "the file linked as v3.npy.tmp: '%s'",
              shared);
    free(shared);
    /* a link left where the temporary file goes: replaced, what it points to untouched */
    CHECK_EQ(symlink("t.txt", "tests/tmp/fd/v.npy.tmp"), 0);
    CHECK_EQ(run("./nla extract " G "target --text hi --positions 1 --out tests/tmp/fd/v.npy" TOK
                 " 2> tests/tmp/err.txt"),
             0);
    char *kept = slurp("tests/tmp/fd/t.txt", NULL);
    CHECK_MSG(kept && !strcmp(kept, "some text"), "the file behind v.npy.tmp: '%s'", kept);
    free(kept);
    /* an output that is not a regular file (a FIFO) is refused, before any
       work (the position past the text is not reached), and stays */
    struct stat sb;
    remove("tests/tmp/fd/pipe");
    CHECK_EQ(mkfifo("tests/tmp/fd/pipe", 0644), 0);
    CHECK_EQ(run("./nla extract " G "target --text hi --positions 99 --out tests/tmp/fd/pipe" TOK
                 ERR),
             1);
    CHECK(err_has("tests/tmp/fd/pipe: not a regular file", NULL));
    CHECK_EQ(run("./nla forward " G "target --ids 2,5 --logits tests/tmp/fd/pipe" ERR), 1);
    CHECK(err_has("tests/tmp/fd/pipe: not a regular file", NULL));
    char why_not[512];
    CHECK_EQ(nla_file_write("tests/tmp/fd/pipe", "x", 1, why_not, sizeof why_not), NLA_ERR_IO);
    CHECK_MSG(strstr(why_not, "tests/tmp/fd/pipe: not a regular file"), "nla_file_write: %s",
              why_not);
    if (has_eval) { /* timeout: a run that opened the FIFO would wait for a writer */
        CHECK_EQ(run("timeout 60 ./nla eval --html tests/tmp/fd/pipe tests/tmp/fd/ev" ERR), 1);
        CHECK(err_has("tests/tmp/fd/pipe: not a regular file", NULL));
        CHECK_EQ(run("rm -rf tests/tmp/fd/evp && mkdir tests/tmp/fd/evp"), 0);
        CHECK_EQ(mkfifo("tests/tmp/fd/evp/params.json", 0644), 0);
        CHECK_EQ(run("timeout 60 ./nla eval " G "target " G "av " G
                     "ar --docs tests/tmp/fd/docs.jsonl --out tests/tmp/fd/evp --max-new 4 --quiet"
                     TOK ERR),
                 1);
        CHECK(err_has("tests/tmp/fd/evp/params.json: not a regular file", NULL));
        CHECK(!lstat("tests/tmp/fd/evp/params.json", &sb) && S_ISFIFO(sb.st_mode));
    }
#ifndef NLA_NO_EVAL
    /* a merge into a folder with a FIFO results.jsonl: refused before it reads a shard */
    const char *shards[1] = {"tests/tmp/fd/ev"};
    CHECK_EQ(run("rm -rf tests/tmp/fd/evm && mkdir tests/tmp/fd/evm"), 0);
    CHECK_EQ(mkfifo("tests/tmp/fd/evm/results.jsonl", 0644), 0);
    CHECK_EQ(nla_eval_merge("tests/tmp/fd/evm", shards, 1, why_not, sizeof why_not), NLA_ERR_IO);
    CHECK_MSG(strstr(why_not, "tests/tmp/fd/evm/results.jsonl: not a regular file"),
              "nla_eval_merge: %s", why_not);
    CHECK(!lstat("tests/tmp/fd/evm/results.jsonl", &sb) && S_ISFIFO(sb.st_mode));
#endif
    CHECK(!lstat("tests/tmp/fd/pipe", &sb) && S_ISFIFO(sb.st_mode));
    CHECK(access("tests/tmp/fd/pipe.tmp", F_OK) != 0);
    if (has_eval) {
        CHECK_EQ(run("./nla eval " G "target " G "av " G
                     "ar --docs tests/tmp/fd/ev/tokens.jsonl --out tests/tmp/fd/ev" TOK
                     " 2> tests/tmp/err.txt"),
                 1);
        CHECK(
            err_has("the input tests/tmp/fd/ev/tokens.jsonl is the output tokens.jsonl of", NULL));
        /* nor the temporary file of one (in a new folder): refused, never removed */
        CHECK_EQ(run("rm -rf tests/tmp/fd/evt && mkdir tests/tmp/fd/evt"), 0);
        copy_file("tests/tmp/fd/docs.jsonl", "tests/tmp/fd/evt/params.json.tmp");
        CHECK_EQ(run("./nla eval " G "target " G "av " G
                     "ar --docs tests/tmp/fd/evt/params.json.tmp --out tests/tmp/fd/evt"
                     " --max-new 4 --quiet" TOK ERR),
                 1);
        CHECK(err_has("the input tests/tmp/fd/evt/params.json.tmp is the output params.json.tmp "
                      "of tests/tmp/fd/evt (a temporary file while it is written)", NULL));
        CHECK(same_bytes("tests/tmp/fd/evt/params.json.tmp", "tests/tmp/fd/docs.jsonl"));
        remove("tests/tmp/fd/r");
        copy_file("tests/tmp/fd/ev/results.jsonl", "tests/tmp/fd/r.tmp");
        CHECK_EQ(run("./nla eval --html tests/tmp/fd/r tests/tmp/fd/r.tmp" ERR), 1);
        CHECK(err_has("the report tests/tmp/fd/r would remove the input tests/tmp/fd/r.tmp", NULL));
        CHECK(same_bytes("tests/tmp/fd/r.tmp", "tests/tmp/fd/ev/results.jsonl"));
        CHECK(access("tests/tmp/fd/r", F_OK) != 0);
    }
    /* random-model over a checkpoint: refused unless --force */
    CHECK_EQ(run("./nla random-model tests/tmp/fd/rm --role target --force 2> /dev/null"), 0);
    copy_file("tests/tmp/fd/rm/model.safetensors", "tests/tmp/fd/before");
    CHECK_EQ(run("./nla random-model tests/tmp/fd/rm --role target --seed 5 2> tests/tmp/err.txt"),
             1);
    CHECK(err_has("tests/tmp/fd/rm already holds a model (config.json): give --force", NULL));
    CHECK(same_bytes("tests/tmp/fd/rm/model.safetensors", "tests/tmp/fd/before"));
    CHECK_EQ(run("./nla random-model tests/tmp/fd/rm --role target --seed 5 --force 2> /dev/null"),
             0);
    CHECK(!same_bytes("tests/tmp/fd/rm/model.safetensors", "tests/tmp/fd/before"));
    /* quantize into a folder that holds a model: refused, the model (here sharded, its index
       read before model.safetensors) left whole */
    spit("tests/tmp/fd/rm/model.safetensors.index.json", "{}", 2);
    copy_file("tests/tmp/fd/rm/model.safetensors", "tests/tmp/fd/before");
    refused(
        "./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/fd/rm --type q8_0",
        "tests/tmp/fd/rm already holds a model (config.json): save into an empty or new folder");
    CHECK(same_bytes("tests/tmp/fd/rm/model.safetensors", "tests/tmp/fd/before"));
    /* random-model --force replaces such a model whole: the index and an AV's sidecar go */
    copy_file(G "av/nla_meta.yaml", "tests/tmp/fd/rm/nla_meta.yaml");
    CHECK_EQ(run("./nla random-model tests/tmp/fd/rm --role target --seed 6 --force 2> /dev/null"),
             0);
    CHECK(access("tests/tmp/fd/rm/model.safetensors.index.json", F_OK) != 0 &&
          access("tests/tmp/fd/rm/nla_meta.yaml", F_OK) != 0);
    CHECK_EQ(run("./nla info tests/tmp/fd/rm > tests/tmp/info.txt 2>&1"), 0);
    /* a tokenizer that does not open is refused before any folder is written */
    CHECK_EQ(run("rm -rf tests/tmp/fd/rmbad"), 0);
    refused("./nla random-model tests/tmp/fd/rmbad --tokenizer tests/no/such.json",
            "--tokenizer tests/no/such.json: cannot open");
    refused("./nla random-model tests/tmp/fd/rmbad --tokenizer " G "target/config.json",
            "--tokenizer " G "target/config.json: no \"model\" object");
    CHECK(access("tests/tmp/fd/rmbad", F_OK) != 0);
    /* a folder that cannot be made is named with the system's reason */
    refused("./nla random-model tests/tmp/fd/t.txt/rm --role target",
            "tests/tmp/fd/t.txt/rm: cannot create the folder (Not a directory)");
    refused("./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/fd/t.txt/q --type q8_0",
            "tests/tmp/fd/t.txt/q: cannot create the folder (Not a directory)");
    /* the tokenizer to copy in is already the folder's: kept as it is */
    CHECK_EQ(run("rm -rf tests/tmp/fd/rmt && mkdir tests/tmp/fd/rmt"), 0);
    copy_file(TOKJSON, "tests/tmp/fd/rmt/tokenizer.json");
    CHECK_EQ(run("./nla random-model tests/tmp/fd/rmt --role target --tokenizer "
                 "tests/tmp/fd/rmt/tokenizer.json 2> tests/tmp/err.txt"),
             0);
    CHECK(same_bytes("tests/tmp/fd/rmt/tokenizer.json", TOKJSON));
}

/* refused commands: exit status 1 and the message naming the problem */
static void test_refusals(void) {
    refused("./nla verbalize " G "target tests/tmp/v.npy" TOK, "not an AV");
    spit("tests/tmp/bad.npy", "\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'}", 26);
    refused("./nla score tests/tmp/bad.npy tests/tmp/r.npy", "bad.npy");
    refused("./nla score tests/tmp/v.npy tests/tmp/l.npy",
            "is [3, 16] but tests/tmp/l.npy is [3, ");
    refused("./nla extract " G "target --text hi --positions 9 --out tests/tmp/x.npy" TOK,
            "9 is past the last token (1)");
    refused("./nla explain " G "target " G "av", "give three folders");
    refused("./nla explain " G "target " G "av " G "av --text hi" TOK,
            "tests/data/nla/av is not the AR of tests/data/nla/av");
    refused("./nla nonsense", "unknown command 'nonsense'");
    refused("./nla detokenize " TOKJSON " 2,818,262145,5",
            "id 262145 (number 3 of 4) is outside the vocabulary");
    spit("tests/tmp/nul.jsonl", "\"a\\u0000zzzz\"\n", 14); /* not cut to "a" */
    refused("./nla reconstruct " G "ar --jsonl tests/tmp/nul.jsonl --out tests/tmp/nul.npy" TOK,
            "tests/tmp/nul.jsonl: line 1: the explanation holds a NUL character");
    /* option values out of range say what the option takes */
    refused("./nla explain " G "target " G "av " G "ar --text hi --threads 100000" TOK,
            "bad value '100000' for --threads: an integer in 0..1024");
    refused("./nla verbalize " G "av tests/tmp/v.npy --max-new 2147483647" TOK,
            "bad value '2147483647' for --max-new: an integer in 1..4096");
#ifndef NLA_NO_EVAL
    refused(EVAL " --shard 1/2/3",
            "bad value '1/2/3' for --shard: I/N with 1 <= I <= N");
    refused(EVAL " --threads 100000",
            "for --threads: an integer in 0..1024");
    refused(EVAL " --temp inf",
            "bad value 'inf' for --temp: a finite number >= 0");
#endif
    refused("./nla reconstruct " G "ar --text hi" TOK, "--out FILE is required");
    refused("./nla reconstruct " G "ar --jsonl /dev/null --out tests/tmp/x.npy" TOK,
            "/dev/null: no explanations (one per line");
    refused("printf '\"a\"\\n{\"x\": 1}\\n' | ./nla reconstruct " G
            "ar --jsonl - --out tests/tmp/x.npy" TOK,
            "standard input: line 2 has no \"explanation\" string");
#ifndef NLA_NO_EVAL
    /* --summary of what is not a study; a record's positions named by value */
    spit("tests/tmp/notres.jsonl", "{\"a\": 1}\n", 9);
    refused("./nla eval --summary tests/tmp/notres.jsonl",
            "tests/tmp/notres.jsonl: no rows of results");
    refused("./nla eval --summary tests", "tests is not a study: no results.jsonl in it");
    refused("./nla eval --html tests/tmp/x.html tests/tmp/notres.jsonl", "no rows of results");
    {
        /* a \u0000 is a character of a document as of a chat message: the
           positions past it exist in both */
        const char docs[] = "{\"id\": 1, \"text\": \"one two\\u0000 three four five six\", "
                            "\"positions\": [6]}\n"
                            "{\"id\": 2, \"text\": \"one two\", \"positions\": [99999]}\n",
                   chats[] = "{\"id\": 3, \"messages\": [{\"role\": \"user\", \"content\": "
                             "\"one two\\u0000 three four five six\"}], \"positions\": [10]}\n";
        spit("tests/tmp/nul_docs.jsonl", docs, sizeof docs - 1);
        spit("tests/tmp/nul_chats.jsonl", chats, sizeof chats - 1);
        CHECK_EQ(run("./nla eval " G "target " G "av " G "ar --docs tests/tmp/nul_docs.jsonl "
                     "--chats tests/tmp/nul_chats.jsonl --plan > tests/tmp/plan.txt" TOK ERR),
                 0);
        char *plan = slurp("tests/tmp/plan.txt", NULL), *er = slurp("tests/tmp/err.txt", NULL);
        CHECK_MSG(plan && strstr(plan, "records 2, bad records 1, rows 2"), "plan: %s", plan);
        CHECK_MSG(er && strstr(er, "nul_docs.jsonl:2: skipped: position 99999 "
                                   "(\"positions\"[0]) is not one of the record's 3 tokens"),
                  "stderr: %s", er);
        free(plan);
        free(er);
    }
#endif
    refused("./nla score tests/tmp/v.npy tests/tmp/r.npy --baseline -1",
            "a positive number or 'own'");
    refused("./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/gqa-q8",
            "--type q8_0|q4 is required");
    /* options of score that belong to the other form */
    refused("./nla score tests/tmp/v.npy tests/tmp/r.npy --jsonl", "go with --cross");
    refused("./nla score tests/tmp/v.npy tests/tmp/r.npy --out tests/tmp/m.npy", "go with --cross");
    refused("./nla score --cross tests/tmp/v.npy tests/tmp/r.npy --baseline own",
            "--baseline does not go with --cross");
}

/* Texts from a file or standard input, longer than the default context of
   4096: the target runs to the last position asked for, in a context sized to
   it, up to max_position_embeddings (32768 here). */
static void test_long_text(nla_model *target) {
    FILE *f = fopen("tests/tmp/long.txt", "wb");
    for (int i = 0; f && i < 4200; i++) fputs(" hello", f);
    if (f) fclose(f);
    char *text = slurp("tests/tmp/long.txt", NULL);
    int32_t *ids = malloc(sizeof(int32_t) * 8192), pos[2] = {5, 4200};
    int T = 0;
    nla_meta am;
    nla_model_get_meta(target, &am);
    CHECK(text && ids && nla_tokenize(nla_model_tokenizer(target), text, strlen(text),
                                      NLA_TOKENIZE_BOS, ids, 8192, &T) == NLA_OK && T == 4201);
    float api[2 * D];
    nla_session_params sp = {0};
    sp.n_ctx = 4201;
    nla_session *s = NULL;
    CHECK_EQ(nla_session_new(target, &sp, &s), NLA_OK);
    CHECK_EQ(nla_extract(s, ids, T, 2, pos, 2, api), NLA_OK);
    nla_session_free(s);
    /* the library runs only to the last position: 6 tokens fit a context of 6 */
    float first[D];
    sp.n_ctx = 6;
    CHECK_EQ(nla_session_new(target, &sp, &s), NLA_OK);
    CHECK_EQ(nla_extract(s, ids, T, 2, pos, 1, first), NLA_OK);
    nla_session_free(s);
    CHECK(!memcmp(first, api, sizeof first));
    CHECK_EQ(run("./nla extract " G "target --text-file tests/tmp/long.txt --positions 5,4200 "
                 "--layer 2 --out tests/tmp/long.npy" TOK ERR),
             0);
    float *v = npy_2d("tests/tmp/long.npy", 2, D);
    CHECK_MSG(v && !memcmp(v, api, sizeof api), "extract --text-file differs from nla_extract");
    free(v);
    char *er = slurp("tests/tmp/err.txt", NULL);
    CHECK_MSG(er && strstr(er, "of 4201 tokens"), "extract says: %s", er);
    free(er);
    CHECK_EQ(run("./nla extract " G "target --text-file - --positions 5,4200 --layer 2 "
                 "--out tests/tmp/long2.npy < tests/tmp/long.txt" TOK ERR),
             0);
    v = npy_2d("tests/tmp/long2.npy", 2, D);
    CHECK_MSG(v && !memcmp(v, api, sizeof api), "extract --text-file - differs from nla_extract");
    free(v);
    /* explain at position 4200 of the same text */
    CHECK_EQ(run("./nla explain " G "target " G "av " G "ar --text-file tests/tmp/long.txt "
                 "--positions 4200 --max-new 4 --jsonl > tests/tmp/long.jsonl" TOK ERR),
             0);
    er = slurp("tests/tmp/long.jsonl", NULL);
    CHECK_MSG(er && strstr(er, "\"position\": 4200"), "explain at 4200: %s", er);
    free(er);
    /* past max_position_embeddings: the real count in the message */
    f = fopen("tests/tmp/long.txt", "wb");
    for (int i = 0; f && i < 33000; i++) fputs(" hello", f);
    if (f) fclose(f);
    refused("./nla extract " G "target --text-file tests/tmp/long.txt --out tests/tmp/x.npy" TOK,
            "position 33000 of the text's 33001 tokens is past the model's context of 32768");
    refused("./nla extract " G "target --text-file tests/tmp/none.txt --out tests/tmp/x.npy" TOK,
            "tests/tmp/none.txt: cannot open (No such file or directory)");
    refused("./nla extract " G "target --text hi --text-file tests/tmp/long.txt "
            "--out tests/tmp/x.npy" TOK,
            "give one of --text TEXT, --text-file FILE, --chat FILE");
    free(ids);
    free(text);
}

/* The terminal's output from `at` on holds head, then text k (`want`) on
   the same line; returns where text k + 1 is to be looked for. */
static const char *tty_next(const char *at, const char *head, const char *want, int k) {
    const char *h = at ? strstr(at, head) : NULL, *t = h ? strstr(h, want ? want : "") : NULL;
    CHECK_MSG(h && want && t && !memchr(h, '\n', (size_t)(t - h)),
              "text %d ('%s' then '%s') not next on the terminal", k, head, want);
    return h ? h + 1 : at;
}

/* nla explain on a terminal (script(1) gives it one) shows each text as
   the AV writes it, in order, texts of one batch held for the one before;
   to a file, no such lines. nla eval's progress gives an ETA from the first
   phase on. */
static void test_stream(void) {
    if (run("command -v script > /dev/null")) {
        SKIP("no script(1): nla explain's terminal output not checked");
        return;
    }
    CHECK_EQ(run("script -qec \"./nla explain " G "target " G "av " G "ar --text 'The quick brown "
                 "fox jumps' --max-new 9 --batch 2 --best-of 2 --with-greedy --jsonl" TOK
                 " > tests/tmp/st.jsonl\" /dev/null > tests/tmp/tty.txt"),
             0);
    char *tty = slurp("tests/tmp/tty.txt", NULL), *js = slurp("tests/tmp/st.jsonl", NULL);
    const char *at = tty;
    /* the order the AV takes them: the greedy texts, then each position's candidates */
    for (int k = 0; tty && js && k < 15; k++) {
        const int i = k < 5 ? k : (k - 5) / 2, c = k < 5 ? -1 : (k - 5) % 2;
        char *line = line_of(js, i), head[64], *want = NULL;
        if (c < 0) {
            snprintf(head, sizeof head, "nla: position %d ", i + 1);
            want = line ? json_string_after(strstr(line, "\"greedy\""), "explanation", NULL)
                        : NULL;
        } else {
            snprintf(head, sizeof head, "(candidate %d of 2): ", c + 1);
            const char *cands = line ? strstr(line, "\"candidates\"") : NULL;
            for (int j = 0; cands && j <= c; j++) cands = strstr(cands + 1, "\"explanation\"");
            want = cands ? json_string_after(cands - 1, "explanation", NULL) : NULL;
        }
        at = tty_next(at, head, want, k);
        free(line);
        free(want);
    }
    CHECK_MSG(tty && strstr(tty, "nla: AV: 15 texts, ") && strstr(tty, " tokens/s, 2 at a time"),
              "the AV's line counts every candidate: %s", tty);
    free(tty);
    free(js);
    /* steer the same way, each text under its v' */
    CHECK_EQ(run("script -qec \"./nla steer " G "target " G "av " G "ar --text 'The quick brown "
                 "fox jumps' --toward 'a lazy dog' --scales 0,1 --patch --max-new 9 --batch 2 "
                 "--jsonl" TOK " > tests/tmp/st.jsonl\" /dev/null > tests/tmp/tty.txt"),
             0);
    tty = slurp("tests/tmp/tty.txt", NULL);
    js = slurp("tests/tmp/st.jsonl", NULL);
    at = tty;
    for (int k = 0; tty && js && k < 3; k++) {
        const char *head = k == 0 ? "nla: r=0: " : k == 1 ? "nla: r=1: " : "nla: patch: ";
        char *line = line_of(js, k), *want = line ? json_string_after(line, "explanation", NULL)
                                                  : NULL;
        at = tty_next(at, head, want, k);
        free(line);
        free(want);
    }
    free(tty);
    free(js);
    CHECK_EQ(run("./nla explain " G "target " G "av " G "ar --text 'The quick' --max-new 4" TOK
                 " > /dev/null" ERR),
             0);
    char *er = slurp("tests/tmp/err.txt", NULL);
    CHECK_MSG(er && !strstr(er, "nla: position 1 "), "to a file, no streamed texts: %s", er);
    free(er);
#ifndef NLA_NO_EVAL
    CHECK_EQ(run("rm -rf tests/tmp/evs && ./nla eval " G "target " G "av " G "ar --docs "
                 "tests/data/eval/docs.jsonl --min-position 10 --max-new 6 --chunk 2 "
                 "--out tests/tmp/evs" TOK ERR),
             0);
    er = slurp("tests/tmp/err.txt", NULL);
    CHECK_MSG(er && strstr(er, "nla: extract 2/2; rows 0/4, 0.00 rows/s, ETA >= ") &&
                  strstr(er, "nla: reconstruct 2/2; rows 2/4, ") && !strstr(er, "ETA ?"),
              "eval's progress: %s", er);
    free(er);
#endif
}

/* Terminal columns of the UTF-8 text p[0..n): 2 for a character of the
   East Asian wide ranges, else 1. */
static int text_columns(const char *p, size_t n) {
    static const unsigned wide[][2] = {{0x1100, 0x115f}, {0x2e80, 0xa4cf},   {0xac00, 0xd7a3},
                                       {0xf900, 0xfaff}, {0xfe30, 0xfe4f},   {0xff00, 0xff60},
                                       {0xffe0, 0xffe6}, {0x1f300, 0x1faff}, {0x20000, 0x3fffd}};
    int cols = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char c = (unsigned char)p[i];
        const int k = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        unsigned cp = k == 1 ? c : c & (0x7f >> k);
        for (int j = 1; j < k && i + j < n; j++) cp = cp << 6 | ((unsigned char)p[i + j] & 0x3f);
        int w = 1;
        for (size_t r = 0; r < sizeof wide / sizeof *wide; r++)
            if (cp >= wide[r][0] && cp <= wide[r][1]) w = 2;
        cols += w;
        i += (size_t)k;
    }
    return cols;
}

/* The lines of a table in text: how many, the most columns in one, how
   many hold tail after a cut (an ellipsis) and end in ']'. */
static void table_shape(char *text, const char *tail, int *rows, int *widest, int *cut) {
    char mark[64];
    snprintf(mark, sizeof mark, "\xe2\x80\xa6%s", tail);
    *rows = *widest = *cut = 0;
    for (char *line = text; line && *line; ++*rows) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        const int cols = text_columns(line, (size_t)(nl - line));
        if (cols > *widest) *widest = cols;
        *nl = 0;
        *cut += strstr(line, mark) != NULL && nl[-1] == ']';
        line = nl + 1;
    }
}

/* nla explain's and nla steer's tables cut to $COLUMNS; whole without it */
static void test_table_width(void) {
    /* the table: cut to $COLUMNS (each row at most 110 columns, the cut ending in an
       ellipsis before the flags); to a file without it, whole */
    CHECK_EQ(run("COLUMNS=110 ./nla explain " G "target " G "av " G
                 "ar --text 'The quick brown fox' --max-new 12" TOK
                 " > tests/tmp/explain_cut.txt 2> /dev/null"),
             0);
    CHECK_EQ(run("env -u COLUMNS ./nla explain " G "target " G "av " G
                 "ar --text 'The quick brown fox' --max-new 12" TOK
                 " > tests/tmp/explain_whole.txt 2> /dev/null"),
             0);
    char *cut = slurp("tests/tmp/explain_cut.txt", NULL),
         *whole = slurp("tests/tmp/explain_whole.txt", NULL);
    const size_t n_cut = cut ? strlen(cut) : 0;
    int rows, widest, marked;
    table_shape(cut, "  [unparsed,", &rows, &widest, &marked);
    CHECK_MSG(rows == 6 && widest == 110 && marked == 4,
              "cut table: %d lines, widest %d characters, %d cut rows", rows, widest, marked);
    CHECK_MSG(whole && !strstr(whole, "\xe2\x80\xa6") && strstr(whole, "  [unparsed,") &&
                  strlen(whole) > n_cut + 100,
              "the table without COLUMNS is not whole");
    free(cut);
    free(whole);
    /* steer's table the same way (its four v' explained: the AV says so on stderr) */
    CHECK_EQ(run("COLUMNS=110 ./nla steer " G "target " G "av " G "ar --text 'The quick brown fox' "
                 "--toward 'a lazy dog' --max-new 12" TOK " > tests/tmp/steer_cut.txt" ERR),
             0);
    CHECK(err_has("nla: AV: 4 texts, ", " tokens in ", "4 at a time", (const char *)NULL));
    CHECK_EQ(run("env -u COLUMNS ./nla steer " G "target " G "av " G "ar --text 'The quick brown "
                 "fox' --toward 'a lazy dog' --max-new 12" TOK
                 " > tests/tmp/steer_whole.txt 2> /dev/null"),
             0);
    cut = slurp("tests/tmp/steer_cut.txt", NULL);
    whole = slurp("tests/tmp/steer_whole.txt", NULL);
    table_shape(cut, "  [no <explanation> tags]", &rows, &widest, &marked);
    CHECK_MSG(rows == 6 && widest >= 109 && widest <= 110 && marked == 4,
              "steer's cut table: %d lines, widest %d, %d cut", rows, widest, marked);
    CHECK_MSG(whole && !strstr(whole, "\xe2\x80\xa6") &&
                  strlen(whole) > (cut ? strlen(cut) : 0) + 100,
              "steer's table without COLUMNS is not whole");
    free(cut);
    free(whole);
}

/* Every command takes exactly the options its --help names: each option
   named in any command's help is given to every command (alone, without a
   value or a folder, so nothing runs) and refused with "has no option" iff
   that command's help does not name it. */
static void test_options(void) {
    static const char *const cmds[] = {"forward", "generate", "tokenize", "detokenize", "extract",
                                       "verbalize", "reconstruct", "score", "explain", "steer",
                                       "quantize", "random-model",
#ifndef NLA_NO_EVAL
                                       "search", "eval",
#endif
    };
    enum { NC = sizeof cmds / sizeof *cmds, MAXO = 128 };
    char *help[NC], *opt[MAXO], cmd[256];
    unsigned char named[NC][MAXO]; /* the help of command c names option k */
    int n_opt = 0;
    memset(named, 0, sizeof named);
    for (int c = 0; c < NC; c++) {
        snprintf(cmd, sizeof cmd, "./nla %s --help > tests/tmp/help.txt", cmds[c]);
        CHECK_EQ(run(cmd), 0);
        help[c] = slurp("tests/tmp/help.txt", NULL);
        /* an option: -x or --word at the start of a word */
        for (const char *p = help[c] ? help[c] : ""; *p; p++) {
            if (*p != '-' || (p > help[c] && !strchr(" ([|\n", p[-1]))) continue;
            const char *e = p + 1 + (p[1] == '-');
            if (*e < 'a' || *e > 'z') continue;
            while ((*e >= 'a' && *e <= 'z') || *e == '-') e++;
            const size_t len = (size_t)(e - p);
            int k = 0;
            while (k < n_opt && !(strlen(opt[k]) == len && !strncmp(opt[k], p, len))) k++;
            if (k == n_opt && n_opt < MAXO) opt[n_opt++] = strndup(p, len);
            if (k < n_opt) named[c][k] = 1;
            p = e - 1;
        }
    }
    CHECK(n_opt > 40);
    for (int c = 0; c < NC; c++)
        for (int k = 0; k < n_opt; k++) {
            snprintf(cmd, sizeof cmd, "./nla %s %s < /dev/null > /dev/null" ERR, cmds[c], opt[k]);
            run(cmd);
            char *er = slurp("tests/tmp/err.txt", NULL);
            const int listed = named[c][k], refused_it = er && strstr(er, "has no option");
            CHECK_MSG(listed != !!refused_it, "nla %s %s: its help %s it, and it is %s (%s)",
                      cmds[c], opt[k], listed ? "names" : "does not name",
                      refused_it ? "refused" : "taken", er ? er : "");
            free(er);
        }
    for (int c = 0; c < NC; c++) free(help[c]);
    for (int k = 0; k < n_opt; k++) free(opt[k]);
}

int main(void) {
    mkdir("tests/tmp", 0755);
    nla_model *target = open_api(G "target"), *av = open_api(G "av"), *ar = open_api(G "ar");
    if (!target || !av || !ar) return test_report();
    test_nla_steps(target, av, ar);
    test_explain(target, av, ar);
    test_table_width();
    test_model_commands(target);
    test_refusals();
    test_options();
    test_long_text(target);
    test_stream();
    test_nonfinite(target, av);
    full_disk();
    /* nla quantize --type, and the saved folder opens */
    CHECK_EQ(run("rm -rf tests/tmp/gqa-q8"), 0);
    CHECK_EQ(run("./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/gqa-q8 --type q8_0 2> "
                 "/dev/null"),
             0);
    CHECK_EQ(run("./nla info tests/tmp/gqa-q8 > tests/tmp/info.txt"), 0);
    char *er = slurp("tests/tmp/info.txt", NULL);
    CHECK(er && strstr(er, "q8_0"));
    free(er);
    CHECK_EQ(run("./nla explain --help > /dev/null"), 0);
#ifndef NLA_NO_EVAL
    /* eval --shard auto: I/N from a Slurm job array's environment or a
       Kubernetes indexed job's (--plan prints the shard and its rows), and
       a clear refusal when the environment does not give one */
    {
#define NO_ENV "env -u SLURM_ARRAY_TASK_ID -u SLURM_ARRAY_TASK_MIN -u SLURM_ARRAY_TASK_COUNT " \
               "-u SLURM_ARRAY_TASK_STEP -u JOB_COMPLETION_INDEX "
#define PLAN "./nla eval " G "target " G "av " G "ar --docs tests/data/eval/docs.jsonl " \
             "--chats tests/data/eval/chats.jsonl --min-position 10 --positions-per-record 2 " \
             "--plan" TOK
#define ERRF "tests/tmp/err.txt"
#define ARRAY "SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_COUNT=3 SLURM_ARRAY_TASK_ID="
        static const struct { const char *env, *args, *want; int rc; } sa[] = {
            {ARRAY "2", "", "rows of shard 2/3: 4", 0},
            {"SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_COUNT=3", "--shards 3",
             "rows of shard 1/3: 6", 0},
            {"SLURM_ARRAY_TASK_STEP=2 " ARRAY "5", "", "rows of shard 3/3: 4", 0},
            {"JOB_COMPLETION_INDEX=3", "--shards 4", "rows of shard 4/4: 2", 0},
            {"", "", "neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX", 1},
            {"SLURM_ARRAY_TASK_ID=2", "", "SLURM_ARRAY_TASK_MIN, _COUNT or _STEP is missing", 1},
            {ARRAY "4", "", "array task 4 is not one of 3 evenly spaced tasks from 1", 1},
            {ARRAY "2", "--shards 4", "the job array has 3 tasks, but --shards says 4", 1},
            {"JOB_COMPLETION_INDEX=0", "", "give the number of shards with --shards N", 1},
            {"JOB_COMPLETION_INDEX=4", "--shards 4", "=4 is not an index in 0..3",
             1},
            {"", "--shard 2/3 --shards 3", "--shards N goes with --shard auto", 1},
            {"", "--shard auto --shard 2/3", "rows of shard 2/3: 4", 0}}; /* the last one */
        for (size_t k = 0; k < sizeof sa / sizeof *sa; k++) {
            char cmd[1024];
            snprintf(cmd, sizeof cmd, NO_ENV "%s " PLAN " %s%s > tests/tmp/plan.txt 2> " ERRF,
                     sa[k].env, strstr(sa[k].args, "--shard ") ? "" : "--shard auto ", sa[k].args);
            CHECK_EQ(run(cmd), sa[k].rc);
            er = slurp(sa[k].rc ? ERRF : "tests/tmp/plan.txt", NULL);
            CHECK_MSG(er && strstr(er, sa[k].want), "--shard auto with '%s %s': %s", sa[k].env,
                      sa[k].args, er ? er : "(no output)");
            free(er);
        }
#undef NO_ENV
#undef PLAN
#undef ARRAY
#undef ERRF
    }
#endif
    /* the README shows tests/slurm/study.sbatch (which make slurm-test runs) verbatim */
    {
        char *readme = slurp("README.md", NULL), *script = slurp("tests/slurm/study.sbatch", NULL);
        char *block = script ? malloc(strlen(script) + 9) : NULL;
        if (block) sprintf(block, "```\n%s```\n", script);
        CHECK_MSG(readme && block && strstr(readme, block), "README.md does not show %s verbatim",
                  "tests/slurm/study.sbatch");
        free(readme); free(script); free(block);
    }
    nla_model_close(target);
    nla_model_close(av);
    nla_model_close(ar);
    return test_report();
}
