/* fuzz_safetensors: the input is a whole .safetensors file, written to the
   scratch folder and opened by nla_st_open twice: mapped, then read (no_mmap,
   a heap copy ASan guards); every tensor byte is read; both must agree. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_tmpdir("safetensors");
    const char *path = fz_path(0, "x.safetensors");
    fz_write(path, data, size);
    nla_status rc[2];
    for (int no_mmap = 0; no_mmap < 2; no_mmap++) {
        nla_st *st = NULL;
        char err[256];
        rc[no_mmap] = nla_st_open(path, no_mmap, &st, err, sizeof err);
        FZ_CHECK((rc[no_mmap] == NLA_OK) == (st != NULL)); /* *out is NULL on failure */
        if (st) fz_walk_st(st);
        nla_st_close(st);
    }
    FZ_CHECK(rc[0] == rc[1]);
    return 0;
}
