/* fuzz_npy: the input is a .npy file, read by nla_npy_read first with no
   buffer (shape only), then into a buffer of exactly the size it asked for;
   the two calls must agree on the shape. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_tmpdir("npy");
    const char *path = fz_path(0, "x.npy");
    fz_write(path, data, size);
    int64_t shape[2], shape2[2];
    int ndim, ndim2;
    char err[256];
    nla_status rc = nla_npy_read(path, NULL, 0, shape, &ndim, err, sizeof err);
    if (rc != NLA_OK && rc != NLA_ERR_BUFFER_TOO_SMALL) return 0;
    FZ_CHECK((ndim == 1 || ndim == 2) && shape[0] >= 0 && (ndim == 1 || shape[1] >= 0));
    size_t count = (size_t)shape[0] * (size_t)(ndim == 2 ? shape[1] : 1);
    FZ_CHECK(count * 4 <= size && (rc == NLA_OK) == (count == 0));
    float *out = (float *)malloc(count ? count * sizeof(float) : 1);
    FZ_CHECK(nla_npy_read(path, out, count, shape2, &ndim2, err, sizeof err) == NLA_OK);
    FZ_CHECK(ndim2 == ndim && shape2[0] == shape[0] && (ndim == 1 || shape2[1] == shape[1]));
    FZ_CHECK(count == 0 ||
             !memcmp(out, data + size - count * 4, count * 4)); /* the data is the file's tail */
    free(out);
    return 0;
}
