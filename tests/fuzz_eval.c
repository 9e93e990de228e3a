/* fuzz_eval: the JSONL record reader of nla eval. The input is split at the
   first "\n\x01\n" into a documents file and a chats file, and planned
   (parsed, rendered, tokenized with the small fixture tokenizer, positions
   drawn) with parameters taken from the first byte. Every count must add
   up; bad records only produce warnings. */
#include "fuzz.h"

static nla_tokenizer *tok;
static int warnings;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char err[256];
    (void)argc;
    (void)argv;
    FZ_CHECK(nla_tokenizer_open(FUZZ_ROOT "/tests/fuzz/sidecar_tokenizer.json", &tok, err,
                                sizeof err) == NLA_OK);
    fz_tmpdir("eval");
    return 0;
}

static void warn(void *user, const char *msg) {
    (void)user;
    FZ_CHECK(msg && strstr(msg, ": skipped: "));
    warnings++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *rest;
    size_t n1, n2;
    nla_eval_params p;
    nla_eval_counts c;
    char err[512];
    unsigned k = size ? data[0] : 0;
    fz_split(data, size, "\n\x01\n", &n1, &rest, &n2);
    fz_write(fz_path(0, "docs.jsonl"), data, n1);
    fz_write(fz_path(1, "chats.jsonl"), rest ? rest : data, rest ? n2 : 0);
    memset(&p, 0, sizeof p);
    p.docs = fz_path(0, "docs.jsonl");
    p.chats = fz_path(1, "chats.jsonl");
    p.positions_per_record = 1 + (int)(k & 3);
    p.min_position = (k & 4) ? NLA_EVAL_FROM_BOS : 1 + (int)((k >> 3) & 3);
    p.max_tokens = (k & 32) ? 8 : 0;
    p.skip_special = (k >> 6) & 1;
    p.seed = k;
    p.shard_index = 1 + (int)(k >> 7);
    p.shard_count = 2;
    p.warn = warn;
    warnings = 0;
    if (nla_eval_plan(&p, tok, &c, err, sizeof err) == NLA_OK) {
        FZ_CHECK(c.bad_records == warnings);
        FZ_CHECK(c.samples >= c.records); /* every good record has a position */
        FZ_CHECK(c.shard_samples >= 0 && c.shard_samples <= c.samples);
    }
    return 0;
}
