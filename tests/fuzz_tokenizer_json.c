/* fuzz_tokenizer_json: the input is a (small, hostile) tokenizer.json, and
   after a line "#TEXT#" an optional text; nla_tokenizer_open, then every
   piece looked up, the text (or fixed ones) tokenized and detokenized. */
#include "fuzz.h"

static void run_text(const nla_tokenizer *t, const char *text, size_t len) {
    int cap = (int)nla_tokenize_bound(len), n;
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
    for (int flags = 0; flags < 4; flags++) {
        FZ_CHECK(nla_tokenize(t, text, len, flags, ids, cap, &n) == NLA_OK && n >= 0 && n <= cap);
        size_t need = 0, got = 0, l;
        nla_status rc = nla_detokenize(t, ids, n, NULL, 0, &need);
        FZ_CHECK(rc == NLA_OK || rc == NLA_ERR_BUFFER_TOO_SMALL);
        char *out = (char *)malloc(need + 1), piece[1100];
        FZ_CHECK(nla_detokenize(t, ids, n, out, need + 1, &got) == NLA_OK && got == need &&
                 out[got] == 0);
        nla_detok_state st = {{0}, 0};
        for (int i = 0; i <= n; i++) /* pieces are at most 1024 bytes */
            FZ_CHECK(nla_detokenize_next(t, &st, i < n ? ids[i] : -1, piece, sizeof piece, &l) ==
                     NLA_OK);
        free(out);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t n_json, n_text;
    const uint8_t *text;
    fz_split(data, size, "\n#TEXT#\n", &n_json, &text, &n_text);
    fz_tmpdir("tokenizer_json");
    fz_write(fz_path(0, "tokenizer.json"), data, n_json);
    nla_tokenizer *t = NULL;
    char err[256];
    nla_status rc = nla_tokenizer_open(fz_dir, &t, err, sizeof err);
    FZ_CHECK((rc == NLA_OK) == (t != NULL));
    if (!t) return 0;
    for (int32_t id = -1, n = nla_tokenizer_n_ids(t); id <= n; id++) {
        size_t len = 0;
        const char *p = nla_tokenizer_piece(t, id, &len);
        FZ_CHECK(!p || (id >= 0 && id < n));
        if (p && len < 1100 && !memchr(p, 0, len)) { /* every stored piece can be found */
            char buf[1100];
            memcpy(buf, p, len);
            buf[len] = 0;
            FZ_CHECK(nla_tokenizer_find(t, buf) >= 0);
        }
    }
    static const char *const fixed[] = {"",
                                        "Hello world",
                                        "  a  b\n\n",
                                        "<bos><start_of_turn>user\nhi<end_of_turn>",
                                        "\xff\xfe\xc3(\xe2\x96\x81\xf0\x9f\x98\x80",
                                        "ab ab abab"};
    for (size_t i = 0; i < (text ? 1 : sizeof fixed / sizeof *fixed); i++) {
        size_t len = text ? n_text : strlen(fixed[i]);
        char *copy = fz_copy(text ? text : (const uint8_t *)fixed[i], len);
        run_text(t, copy, len);
        free(copy);
    }
    nla_tokenizer_close(t);
    return 0;
}
