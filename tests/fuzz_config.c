/* fuzz_config: the input is config.json (and, after a line "#GEN#", an
   optional generation_config.json) beside a link to gqa-bf16's
   model.safetensors; nla_model_open, then a 3-token forward on success. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_tmpdir("config");
    fz_link("tests/data/forward/gqa-bf16/model/model.safetensors", "model.safetensors");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t n_cfg, n_gen;
    const uint8_t *gen;
    fz_split(data, size, "\n#GEN#\n", &n_cfg, &gen, &n_gen);
    fz_write(fz_path(0, "config.json"), data, n_cfg);
    if (gen) fz_write(fz_path(1, "generation_config.json"), gen, n_gen);
    else unlink(fz_path(1, "generation_config.json"));

    nla_model *m = NULL;
    char err[256];
    nla_status rc = nla_model_open(fz_dir, NULL, &m, err, sizeof err);
    FZ_CHECK((rc == NLA_OK) == (m != NULL));
    if (!m) return 0;
    nla_model_info info;
    nla_model_get_info(m, &info);
    FZ_CHECK(info.vocab_size > 0 && info.n_layers > 0 && info.n_eos >= 0 && info.n_eos <= 8);
    for (int l = -1; l <= info.n_layers; l++) {
        int g = nla_model_layer_is_global(m, l);
        FZ_CHECK(l < 0 || l == info.n_layers ? g == -1 : g == 0 || g == 1);
    }
    nla_session *s = NULL;
    if (nla_session_new(m, NULL, &s) == NLA_OK) {
        float *logits = (float *)malloc((size_t)info.vocab_size * sizeof(float));
        int32_t ids[3] = {2, 5, info.vocab_size - 1};
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = 3;
        b.ids = ids;
        b.logits = info.has_final_norm ? logits : NULL;
        rc = nla_forward(s, &b);
        FZ_CHECK(rc == NLA_OK || rc == NLA_ERR_RANGE);
        free(logits);
        nla_session_free(s);
    }
    FZ_CHECK(nla_model_close(m) == NLA_OK);
    return 0;
}
