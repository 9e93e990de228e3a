/* fuzz_index: the input is model.safetensors.index.json, in a scratch folder
   beside links to the two shards and config.json of multimodal-sharded-bf16;
   opened as a checkpoint (nla_st_open, both modes) and as a model. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    static const char *const files[] = {"config.json", "model-00001-of-00002.safetensors",
                                        "model-00002-of-00002.safetensors"};
    char src[256];
    fz_tmpdir("index");
    for (int i = 0; i < 3; i++) {
        snprintf(src, sizeof src, "tests/data/forward/multimodal-sharded-bf16/model/%s", files[i]);
        fz_link(src, files[i]);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(fz_path(0, "model.safetensors.index.json"), data, size);
    char err[256];
    for (int no_mmap = 0; no_mmap < 2; no_mmap++) {
        nla_st *st = NULL;
        nla_status rc = nla_st_open(fz_dir, no_mmap, &st, err, sizeof err);
        FZ_CHECK((rc == NLA_OK) == (st != NULL));
        if (st) fz_walk_st(st);
        nla_st_close(st);
    }
    nla_model *m = NULL;
    nla_status rc = nla_model_open(fz_dir, NULL, &m, err, sizeof err);
    FZ_CHECK((rc == NLA_OK) == (m != NULL));
    FZ_CHECK(nla_model_close(m) == NLA_OK);
    return 0;
}
