/* test_tokenizer.c - the Gemma 3 tokenizer against Hugging Face's own
   tokenizers library: 448 texts (ids without and with BOS, decoded text),
   14 chat conversations (rendered text and ids, the NLA AV prompt among
   them), the AR prompt example, and the hard inputs: invalid UTF-8, empty
   text, long runs, a 1 MB text, streaming decode. Needs weights/tokenizer.json
   (make fetches it). */
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include "../nla.h"
#include "test.h"
#include "util.h"

#define TOKJSON "weights/tokenizer.json"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int ids_equal(const int32_t *a, int na, const double *b, int nb) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != (int32_t)b[i]) return 0;
    return 1;
}

/* Each line of cases.jsonl: text, ids, ids_bos, decoded. */
static void test_cases(const nla_tokenizer *t) {
    char *all = slurp("tests/data/tokenizer/cases.jsonl", NULL);
    CHECK(all != NULL);
    if (!all) return;
    int n_case = 0, ok_ids = 0, ok_bos = 0, ok_dec = 0;
    static int32_t ids[70000];
    static double want[70000];
    for (char *line = all, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t tl = 0, dl = 0;
        char *text = json_string_after(line, "text", &tl),
             *dec = json_string_after(line, "decoded", &dl);
        if (!text || !dec) { free(text); free(dec); continue; }
        n_case++;
        int n, nw = json_nums_after(line, "\"ids\"", want, 70000);
        nla_status rc = nla_tokenize(t, text, tl, 0, ids, 70000, &n);
        int good = rc == NLA_OK && ids_equal(ids, n, want, nw);
        ok_ids += good;
        CHECK_MSG(good, "case %d ids differ (%d vs %d ids): %.60s", n_case, n, nw, text);
        nw = json_nums_after(line, "\"ids_bos\"", want, 70000);
        rc = nla_tokenize(t, text, tl, NLA_TOKENIZE_BOS, ids, 70000, &n);
        good = rc == NLA_OK && ids_equal(ids, n, want, nw);
        ok_bos += good;
        CHECK_MSG(good, "case %d ids_bos differ: %.60s", n_case, text);
        /* decode the golden ids */
        nw = json_nums_after(line, "\"ids\"", want, 70000);
        for (int i = 0; i < nw; i++) ids[i] = (int32_t)want[i];
        size_t cap = dl + 64, got;
        char *out = (char *)malloc(cap);
        rc = nla_detokenize(t, ids, nw, out, cap, &got);
        good = rc == NLA_OK && got == dl && !memcmp(out, dec, dl);
        ok_dec += good;
        CHECK_MSG(good, "case %d decoded differs: %.60s", n_case, text);
        /* streaming decode gives the same bytes, in whole characters */
        nla_detok_state st = {{0}, 0};
        size_t o = 0, k;
        char piece[128];
        int whole = 1;
        for (int i = 0; i <= nw; i++) {
            if (nla_detokenize_next(t, &st, i < nw ? ids[i] : -1, piece, sizeof piece, &k)) {
                whole = 0;
                break;
            }
            if (i < nw && k && ((unsigned char)piece[k - 1] >= 0xc0))
                whole = 0; /* never ends on a lead byte */
            memcpy(out + o, piece, k);
            o += k;
        }
        CHECK_MSG(whole && o == dl && !memcmp(out, dec, dl), "case %d streaming decode differs",
                  n_case);
        free(out); free(text); free(dec);
    }
    free(all);
    CHECK_EQ(n_case, 448);
    printf("  cases.jsonl: %d texts; ids %d/%d, ids_bos %d/%d, decoded %d/%d identical\n", n_case,
           ok_ids, n_case, ok_bos, n_case, ok_dec, n_case);
}

/* The raw JSON array after "messages": (bracket-matched, strings skipped). */
static char *messages_json(const char *line, size_t *len) {
    const char *p = strstr(line, "\"messages\": ");
    if (!p) return NULL;
    p = strchr(p, '[');
    const char *q = p;
    int depth = 0, in_str = 0;
    for (; *q; q++) {
        if (in_str) { if (*q == '\\') q++; else if (*q == '"') in_str = 0; continue; }
        if (*q == '"') in_str = 1;
        else if (*q == '[' || *q == '{') depth++;
        else if ((*q == ']' || *q == '}') && --depth == 0) break;
    }
    *len = (size_t)(q - p + 1);
    char *s = (char *)malloc(*len + 1);
    memcpy(s, p, *len);
    s[*len] = 0;
    return s;
}

static void test_chat(const nla_tokenizer *t) {
    char *all = slurp("tests/data/tokenizer/chat.jsonl", NULL);
    CHECK(all != NULL);
    if (!all) return;
    int n_conv = 0, ok = 0;
    static int32_t ids[4096];
    static double want[4096];
    for (char *line = all, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t ml = 0, tl = 0, got = 0;
        char *msgs = messages_json(line, &ml), *text = json_string_after(line, "text", &tl);
        int add_gen = strstr(line, "\"add_generation_prompt\": true") != NULL;
        if (!msgs || !text) { free(msgs); free(text); continue; }
        n_conv++;
        char out[8192], err[256];
        nla_status rc =
            nla_chat_render_json(msgs, ml, add_gen, out, sizeof out, &got, err, sizeof err);
        int good = rc == NLA_OK && got == tl && !memcmp(out, text, tl);
        CHECK_MSG(good, "conversation %d renders differently: %s", n_conv, rc ? err : out);
        int n, nw = json_nums_after(line, "\"ids\"", want, 4096);
        rc = nla_tokenize(t, out, got, 0, ids, 4096, &n); /* the template wrote <bos> */
        good = good && rc == NLA_OK && ids_equal(ids, n, want, nw);
        CHECK_MSG(good, "conversation %d ids differ", n_conv);
        ok += good;
        if (n_conv == 1) { /* the NLA AV prompt: 108 ids, the marker at 93 */
            CHECK_EQ(n, 108);
            CHECK_EQ(ids[93], 246566);
            CHECK_EQ(nla_tokenizer_find(t, "\xe3\x88\x9c"), 246566); /* U+321C */
        }
        free(msgs); free(text);
    }
    free(all);
    CHECK_EQ(n_conv, 14);
    printf("  chat.jsonl: %d/%d conversations render and tokenize identically\n", ok, n_conv);

    /* the struct API, errors */
    nla_chat_message m[3] = {{"system", "Be brief."}, {"user", " Hi \n"}, {"assistant", "Hello."}};
    char out[512], err[256];
    size_t len;
    CHECK_EQ(nla_chat_render(m, 3, 1, out, sizeof out, &len, err, sizeof err), NLA_OK);
    CHECK(!strcmp(out, "<bos><start_of_turn>user\nBe "
                       "brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                       "<start_of_turn>model\n"));
    nla_chat_message bad[2] = {{"user", "a"}, {"user", "b"}};
    CHECK_EQ(nla_chat_render(bad, 2, 1, out, sizeof out, &len, err, sizeof err), NLA_ERR_ARG);
    CHECK(strstr(err, "alternate") != NULL);
    nla_chat_message asst_first[1] = {{"assistant", "a"}};
    CHECK_EQ(nla_chat_render(asst_first, 1, 1, out, sizeof out, &len, err, sizeof err),
             NLA_ERR_ARG);
    CHECK_EQ(nla_chat_render(m, 3, 1, out, 10, &len, err, sizeof err), NLA_ERR_BUFFER_TOO_SMALL);
    CHECK(len > 10);
    const char *badjson[] = {"[{\"role\": \"user\"}]", "{\"role\": \"user\", \"content\": \"x\"}",
                             "[{\"role\": \"user\", \"content\": 5}]",
                             "[{\"role\": \"user\", \"content\": \"x\"", "[\"x\"]"};
    for (size_t i = 0; i < sizeof badjson / sizeof *badjson; i++) {
        nla_status rc = nla_chat_render_json(badjson[i], strlen(badjson[i]), 1, out, sizeof out,
                                             &len, err, sizeof err);
        CHECK_MSG(rc == NLA_ERR_FORMAT && strstr(err, "chat"), "bad chat JSON %zu: %s (%s)", i,
                  nla_strerror(rc), err);
    }
    CHECK_EQ(nla_chat_render_json("[]", 2, 0, out, sizeof out, &len, err, sizeof err), NLA_OK);
    CHECK(!strcmp(out, "<bos>"));
}

static void test_edges(const nla_tokenizer *t) {
    int32_t ids[64];
    int n;
    /* AR prompt example: BOS + template around an explanation */
    const char *ar = "Summary of the following text: <text>Hello world.</text> <summary>";
    static const int32_t ar_ids[] = {2,      24355, 529,  506,  2269, 1816,   236787, 655,  1005,
                                     236813, 9259,  1902, 9047, 1005, 236813, 655,    6011, 236813};
    CHECK_EQ(nla_tokenize(t, ar, strlen(ar), NLA_TOKENIZE_BOS, ids, 64, &n), NLA_OK);
    CHECK(n == 18 && !memcmp(ids, ar_ids, sizeof ar_ids));
    /* specials parsed by default, kept as text on request */
    CHECK_EQ(nla_tokenize(t, "<bos>", 5, 0, ids, 64, &n), NLA_OK);
    CHECK(n == 1 && ids[0] == 2);
    CHECK_EQ(nla_tokenize(t, "<bos>", 5, NLA_TOKENIZE_NO_SPECIAL, ids, 64, &n), NLA_OK);
    CHECK(n == 3 && ids[0] == 236820 && ids[1] == 46757 && ids[2] == 236813);
    CHECK_EQ(nla_tokenize(t, "<bos>", 5, 4, ids, 64, &n), NLA_ERR_ARG); /* no such flag */
    /* empty text; buffer too small reports the count */
    CHECK_EQ(nla_tokenize(t, "", 0, NLA_TOKENIZE_BOS, ids, 64, &n), NLA_OK);
    CHECK(n == 1 && ids[0] == 2);
    CHECK_EQ(nla_tokenize(t, "", 0, 0, NULL, 0, &n), NLA_OK);
    CHECK_EQ(n, 0);
    CHECK_EQ(nla_tokenize(t, ar, strlen(ar), NLA_TOKENIZE_BOS, ids, 5, &n),
             NLA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ(n, 18);
    CHECK_EQ(nla_tokenize(t, ar, strlen(ar), 0, NULL, 0, &n), NLA_OK + NLA_ERR_BUFFER_TOO_SMALL);
    /* invalid UTF-8 becomes byte tokens and decodes back byte for byte */
    const char bad[] = "ok \xff\xfe caf\xc3 \xe2\x82 end\xf0\x9f";
    size_t bl = sizeof bad - 1, got;
    CHECK_EQ(nla_tokenize(t, bad, bl, 0, ids, 64, &n), NLA_OK);
    char back[128];
    CHECK_EQ(nla_detokenize(t, ids, n, back, sizeof back, &got), NLA_OK);
    CHECK(got == bl && !memcmp(back, bad, bl));
    CHECK_EQ(ids[2], 238 + 0xff);
    /* decode errors */
    int32_t oob = 300000;
    CHECK_EQ(nla_detokenize(t, &oob, 1, back, sizeof back, &got), NLA_ERR_RANGE);
    CHECK_EQ(nla_detokenize(t, ids, n, back, 4, &got), NLA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ(got, bl);
    size_t pl;
    const char *pc = nla_tokenizer_piece(t, 26352, &pl);
    CHECK(pc && pl == 8 && !memcmp(pc, "\xe2\x96\x81Hello", 8));
    CHECK(nla_tokenizer_piece(t, -1, &pl) == NULL);
    CHECK_EQ(nla_tokenizer_n_ids(t), 262145);

    /* long inputs: runs of 10,000 spaces / newlines and a 1 MB text */
    const size_t big = 1 << 20;
    char *s = (char *)malloc(big + 1);
    int32_t *bid = (int32_t *)malloc(sizeof(int32_t) * (big + 1));
    char *dec = (char *)malloc(big + 1);
    const char run_chars[3] = {' ', '\n', 'a'};
    for (int r = 0; r < 3; r++) {
        memset(s, run_chars[r], 10000);
        double t0 = now();
        CHECK_EQ(nla_tokenize(t, s, 10000, 0, bid, (int)big, &n), NLA_OK);
        CHECK_EQ(nla_detokenize(t, bid, n, dec, big, &got), NLA_OK);
        CHECK(got == 10000 && !memcmp(dec, s, 10000));
        printf("  10,000 x %-4s -> %5d ids in %.1f ms\n",
               r == 0   ? "' '"
               : r == 1 ? "\\n"
                        : "'a'",
               n, (now() - t0) * 1e3);
    }
    /* 1 MB of mixed text: the golden texts repeated */
    char *cases = slurp("tests/data/tokenizer/cases.jsonl", NULL);
    size_t cl = strlen(cases);
    for (size_t i = 0; i < big; i++) s[i] = cases[i % cl];
    for (size_t i = 0; i + 2 < big; i++) /* a typed U+2581 decodes as a space (HF does the same) */
        if (!memcmp(s + i, "\xe2\x96\x81", 3)) s[i + 1] = '\x80';
    double t0 = now();
    CHECK_EQ(nla_tokenize(t, s, big, 0, bid, (int)big + 1, &n), NLA_OK);
    double dt = now() - t0;
    CHECK_EQ(nla_detokenize(t, bid, n, dec, big + 1, &got), NLA_OK);
    CHECK(got == big && !memcmp(dec, s, big));
    printf("  1 MB mixed text -> %d ids in %.0f ms (%.1f MB/s)\n", n, dt * 1e3, 1.0 / dt);
    /* the same text without a single added token: one 1 MB BPE word */
    for (size_t i = 0; i < big; i++)
        if (s[i] == '\n' || s[i] == '\t' || s[i] == '<' || s[i] == '[') s[i] = ' ';
    t0 = now();
    CHECK_EQ(nla_tokenize(t, s, big, NLA_TOKENIZE_NO_SPECIAL, bid, (int)big + 1, &n), NLA_OK);
    dt = now() - t0;
    CHECK_EQ(nla_detokenize(t, bid, n, dec, big + 1, &got), NLA_OK);
    CHECK(got == big && !memcmp(dec, s, big));
    printf("  1 MB as one word -> %d ids in %.0f ms (%.1f MB/s)\n", n, dt * 1e3, 1.0 / dt);
    free(cases); free(s); free(bid); free(dec);
}

static void test_open_errors(void) {
    nla_tokenizer *t = NULL;
    char err[512];
    CHECK_EQ(nla_tokenizer_open("tests/tmp/none.json", &t, err, sizeof err), NLA_ERR_IO);
    CHECK(t == NULL && strstr(err, "none.json"));
    mkdir("tests/tmp", 0755);
    const char *bad[] = {
        "{",
        "{\"model\": 1}",
        "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}, \"merges\": []}}",
        "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}", /* no byte tokens */
        ("{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"vocab\": {\"a\": 0}, \"merges\": "
         "[]}}"),
        "{\"model\": {\"vocab\": {\"a\": -1}, \"merges\": []}}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        spit("tests/tmp/tok.json", bad[i], strlen(bad[i]));
        nla_status rc = nla_tokenizer_open("tests/tmp/tok.json", &t, err, sizeof err);
        CHECK_MSG(rc != NLA_OK && t == NULL && strstr(err, "tok.json"), "bad tokenizer %zu: %s", i,
                  err);
    }
    nla_tokenizer_close(NULL);
}

int main(void) {
    FILE *f = fopen(TOKJSON, "rb");
    if (!f) {
        printf("%s is missing: run 'make weights/tokenizer.json' (needs npm)\n", TOKJSON);
        printf("0 passed, 1 failed\n");
        return 1;
    }
    fclose(f);
    nla_tokenizer *t;
    char err[512];
    double t0 = now();
    nla_status rc = nla_tokenizer_open(TOKJSON, &t, err, sizeof err);
    double dt = now() - t0;
    CHECK_MSG(rc == NLA_OK, "%s", err);
    if (rc) return test_report();
    printf("  load %s: %.0f ms\n", TOKJSON, dt * 1e3);
    test_cases(t);
    test_chat(t);
    test_edges(t);
    test_open_errors();
    nla_tokenizer_close(t);
    return test_report();
}
