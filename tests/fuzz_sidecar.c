/* fuzz_sidecar: the input is nla_meta.yaml, in a scratch folder beside links
   to tests/data/nla/av's other files (and the AR's value head); opened as a
   model with a tokenizer, then one verbalize (AV) or reconstruct (AR). */
#include "fuzz.h"

/* The real tokenizer cut down to what the seeds need (same ids for them, see
   tests/fuzz/sidecar_tokenizer.py): it loads in 10 ms, the real one in a
   second. NLA_FUZZ_TOKENIZER=weights/tokenizer.json uses the real one. */
static const char *tokenizer = FUZZ_ROOT "/tests/fuzz/sidecar_tokenizer.json";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (getenv("NLA_FUZZ_TOKENIZER")) tokenizer = getenv("NLA_FUZZ_TOKENIZER");
    fz_tmpdir("sidecar");
    fz_link("tests/data/nla/av/config.json", "config.json");
    fz_link("tests/data/nla/av/generation_config.json", "generation_config.json");
    fz_link("tests/data/nla/av/model.safetensors", "model.safetensors");
    fz_link("tests/data/nla/ar/value_head.safetensors",
            "value_head.safetensors"); /* read for role: ar */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(fz_path(0, "nla_meta.yaml"), data, size);
    nla_model_params p;
    memset(&p, 0, sizeof p);
    p.tokenizer = tokenizer;
    nla_model *m = NULL;
    char err[256];
    nla_status rc = nla_model_open(fz_dir, &p, &m, err, sizeof err);
    FZ_CHECK((rc == NLA_OK) == (m != NULL));
    if (!m) return 0;
    nla_meta meta;
    nla_model_get_meta(m, &meta);
    FZ_CHECK(meta.present && meta.n_critic_suffix >= 0 && meta.n_critic_suffix <= 8);
    nla_session *s = NULL;
    FZ_CHECK(nla_session_new(m, NULL, &s) == NLA_OK);
    float v[16] = {1, -2, 3}, r[16];
    if (!strcmp(meta.role, "av")) {
        FZ_CHECK(meta.av_prompt && meta.av_marker_index > 0 &&
                 meta.av_marker_index + 1 < meta.av_prompt_len);
        FZ_CHECK(meta.av_prompt[meta.av_marker_index] == meta.marker_id);
        nla_verbalize_params vp;
        memset(&vp, 0, sizeof vp);
        vp.max_new = 1; /* the logits over 262144 rows dominate: one row */
        int32_t ids[1];
        int n = 0;
        rc = nla_verbalize(s, v, &vp, ids, 1, &n);
        FZ_CHECK(rc == NLA_OK || rc == NLA_ERR_RANGE);
    } else {
        FZ_CHECK(!strcmp(meta.role, "ar") && meta.has_value_head);
        const char *expl = "a fox";
        rc = nla_reconstruct(s, &expl, 1, r);
        FZ_CHECK(rc == NLA_OK || rc == NLA_ERR_RANGE || rc == NLA_ERR_FORMAT);
    }
    nla_session_free(s);
    FZ_CHECK(nla_model_close(m) == NLA_OK);
    return 0;
}
