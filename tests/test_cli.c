/* test_cli.c - the nla command line on the golden NLA trio: extract,
   verbalize, reconstruct, score and explain give what the API gives (and
   the golden data), and bad input exits non-zero with a message. Runs
   ./nla (make builds it first). */
#define _POSIX_C_SOURCE 200809L
#include "../nla.h"
#include "test.h"
#include "util.h"

#define G "tests/data/nla/"
#define TOK " --tokenizer weights/tokenizer.json"
#define D 16

/* Runs a shell command; returns its exit status. */
static int run(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

int main(void) {
    mkdir("tests/tmp", 0755);
    char *golden = slurp(G "golden.json", NULL);
    int nd;
    long long sh[4] = {0, 0, 0, 0};
    /* extract: the three golden positions */
    CHECK_EQ(run("./nla extract " G "target --text 'The quick brown fox jumps over the lazy dog because it was bored.' "
                 "--positions 1,7,14 --out tests/tmp/v.npy" TOK " 2> tests/tmp/err.txt"), 0);
    float *v = npy_load("tests/tmp/v.npy", &nd, sh), *gk = npy_load(G "target_blockK.npy", &nd, sh);
    CHECK(v && gk);
    if (v && gk) {
        float want[3 * D];
        memcpy(want, gk + 1 * D, D * 4);
        memcpy(want + D, gk + 7 * D, D * 4);
        memcpy(want + 2 * D, gk + 14 * D, D * 4);
        CHECK_MSG(rel_err(v, want, 3 * D) <= 1e-4, "CLI extract differs from the golden");
    }
    /* verbalize: the golden greedy ids */
    CHECK_EQ(run("./nla verbalize " G "av tests/tmp/v.npy --max-new 10" TOK " > tests/tmp/expl.jsonl"), 0);
    char *ex = slurp("tests/tmp/expl.jsonl", NULL);
    CHECK(ex != NULL);
    const char *row = ex, *gav = strstr(golden, "\"av\": [");
    for (int k = 0; ex && k < 3; k++) {
        double got[16], g[16];
        row = strstr(row, "\"ids\": [");
        gav = strstr(gav + 1, "\"greedy\"");
        int n = row ? json_nums_after(row, "\"ids\"", got, 16) : 0;
        json_nums_after(gav, "\"greedy\"", g, 16);
        CHECK_MSG(n == 10 && !memcmp(got, g, sizeof(double) * 10), "CLI verbalize row %d ids differ", k);
        CHECK(strstr(ex, "\"parsed\": false") != NULL);
        if (row) row++;
    }
    free(ex);
    /* reconstruct the golden explanations, as JSONL objects */
    FILE *f = fopen("tests/tmp/golden_expl.jsonl", "wb");
    fputs("{\"row\": 0, \"explanation\": \"Literary narrative pattern: formal English countryside setting, with a medieval tavern scene "
          "establishing a pastoral, humorous tone.\\n\\nFinal token \\\"dog\\\" ends the clause.\"}\n"
          "\"Structured list format with bullet points establishes a game/narrative summary.\"\n"
          "{\"explanation\": \"A short fable about animals.\", \"parsed\": true}\n", f);
    fclose(f);
    CHECK_EQ(run("./nla reconstruct " G "ar --jsonl tests/tmp/golden_expl.jsonl --out tests/tmp/r.npy" TOK " 2> tests/tmp/err.txt"), 0);
    float *r = npy_load("tests/tmp/r.npy", &nd, sh), *gr = npy_load(G "ar_recon.npy", &nd, sh);
    CHECK(r && gr && sh[0] == 3);
    if (r && gr) CHECK_MSG(rel_err(r, gr, 3 * D) <= 1e-4, "CLI reconstruct differs from the golden");
    /* score: the golden metrics of (position 1, text 0), (7, 1), (14, 2) */
    CHECK_EQ(run("./nla score tests/tmp/v.npy tests/tmp/r.npy > tests/tmp/score.jsonl"), 0);
    char *sc = slurp("tests/tmp/score.jsonl", NULL);
    const char *gm = strstr(golden, "\"metrics\"");
    for (int k = 0; sc && k < 3; k++) {
        char key[32];
        snprintf(key, sizeof key, "{\"row\": %d,", k);
        const char *line = strstr(sc, key);
        gm = strstr(gm + 1, "\"mse_nrm\": ");
        double got = line ? strtod(strstr(line, "\"mse_nrm\": ") + 11, NULL) : -1, want = strtod(gm + 11, NULL);
        CHECK_MSG(fabs(got - want) <= 1e-4 * want, "CLI score row %d: mse_nrm %.7f vs golden %.7f", k, got, want);
    }
    CHECK(sc && strstr(sc, "\"summary\": true") && strstr(sc, "\"baseline_kind\": \"training\""));
    free(sc);
    CHECK_EQ(run("./nla score tests/tmp/v.npy tests/tmp/r.npy --baseline own > tests/tmp/score.jsonl"), 0);
    /* explain end to end, JSONL */
    CHECK_EQ(run("./nla explain " G "target " G "av " G "ar --text 'The quick brown fox' --positions 1,3 --max-new 12 --jsonl" TOK
                 " > tests/tmp/explain.jsonl 2> tests/tmp/err.txt"), 0);
    char *xp = slurp("tests/tmp/explain.jsonl", NULL);
    CHECK(xp && strstr(xp, "\"position\": 1, \"token_id\": 818, \"token\": \"The\"") && strstr(xp, "\"position\": 3"));
    free(xp);
    /* errors: exit status 1 and a message naming the problem */
    CHECK_EQ(run("./nla verbalize " G "target tests/tmp/v.npy" TOK " 2> tests/tmp/err.txt"), 1);
    char *er = slurp("tests/tmp/err.txt", NULL);
    CHECK(er && strstr(er, "not an AV"));
    free(er);
    spit("tests/tmp/bad.npy", "\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'}", 26);
    CHECK_EQ(run("./nla score tests/tmp/bad.npy tests/tmp/r.npy 2> tests/tmp/err.txt"), 1);
    er = slurp("tests/tmp/err.txt", NULL);
    CHECK(er && strstr(er, "bad.npy"));
    free(er);
    CHECK_EQ(run("./nla extract " G "target --text hi --positions 9 --out tests/tmp/x.npy" TOK " 2> /dev/null"), 1);
    CHECK_EQ(run("./nla explain " G "target " G "av 2> /dev/null"), 1);
    CHECK_EQ(run("./nla nonsense 2> /dev/null"), 1);
    /* nla quantize --type, and the saved folder opens */
    CHECK_EQ(run("./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/gqa-q8 --type q8_0 2> /dev/null"), 0);
    CHECK_EQ(run("./nla info tests/tmp/gqa-q8 > tests/tmp/info.txt"), 0);
    er = slurp("tests/tmp/info.txt", NULL);
    CHECK(er && strstr(er, "q8_0"));
    free(er);
    CHECK_EQ(run("./nla quantize tests/data/forward/gqa-bf16/model tests/tmp/gqa-q8 2> /dev/null"), 1); /* no --type */
    CHECK_EQ(run("./nla explain --help > /dev/null"), 0);
    free(v); free(gk); free(r); free(gr); free(golden);
    return test_report();
}
