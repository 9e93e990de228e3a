/* fuzz_encode: the input is text, encoded by the real Gemma 3 tokenizer
   (weights/tokenizer.json, loaded once) with each flag combination, then
   decoded whole and streamed; both must give the text back (U+2581 -> ' '). */
#include "fuzz.h"

static nla_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char err[256];
    if (nla_tokenizer_open(FUZZ_ROOT "/weights/tokenizer.json", &tok, err, sizeof err)) {
        fprintf(stderr, "fuzz_encode: %s (run make weights/tokenizer.json)\n", err);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fz_copy(data, size), *want = (char *)malloc(size + 6),
         *got = (char *)malloc(size * 4 + 16);
    int cap = (int)nla_tokenize_bound(size), n, n2;
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
    for (int flags = 0; flags < 4; flags++) {
        size_t nw = 0, len = 0, total = 0, l;
        if (flags & NLA_TOKENIZE_BOS) memcpy(want, "<bos>", 5), nw = 5;
        for (size_t i = 0; i < size; i++) /* the expected decode: a typed U+2581 becomes a space */
            if (i + 2 < size && !memcmp(text + i, "\xe2\x96\x81", 3)) want[nw++] = ' ', i += 2;
            else want[nw++] = text[i];
        FZ_CHECK(nla_tokenize(tok, text, size, flags, ids, cap, &n) == NLA_OK && n >= 0 &&
                 n <= cap);
        if (n > 0)
            FZ_CHECK(nla_tokenize(tok, text, size, flags, ids, n - 1, &n2) ==
                         NLA_ERR_BUFFER_TOO_SMALL &&
                     n2 == n);
        for (int i = 0; i < n; i++) FZ_CHECK(ids[i] >= 0 && ids[i] < nla_tokenizer_n_ids(tok));
        FZ_CHECK(nla_detokenize(tok, ids, n, got, size * 4 + 16, &len) == NLA_OK);
        FZ_CHECK(len == nw && !memcmp(got, want, nw));
        nla_detok_state st = {{0}, 0};
        for (int i = 0; i <= n; i++) { /* streamed: 100 bytes suffice for Gemma 3 (nla.h) */
            char *piece = (char *)malloc(100);
            FZ_CHECK(nla_detokenize_next(tok, &st, i < n ? ids[i] : -1, piece, 100, &l) == NLA_OK);
            FZ_CHECK(total + l <= len && !memcmp(got + total, piece, l));
            total += l;
            free(piece);
        }
        FZ_CHECK(total == len);
    }
    free(ids), free(got), free(want), free(text);
    return 0;
}
