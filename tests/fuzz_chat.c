/* fuzz_chat: the input is the JSON message list of nla_chat_render_json
   (an exact-size copy, no NUL), rendered once to learn the size and again
   into a buffer of exactly that size; add_generation_prompt = size & 1. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = fz_copy(data, size), err[256];
    size_t need = 0, got = 0;
    nla_status rc =
        nla_chat_render_json(json, size, (int)(size & 1), NULL, 0, &need, err, sizeof err);
    if (rc == NLA_OK || rc == NLA_ERR_BUFFER_TOO_SMALL) {
        char *out = (char *)malloc(need + 1);
        rc =
            nla_chat_render_json(json, size, (int)(size & 1), out, need + 1, &got, err, sizeof err);
        FZ_CHECK(rc == NLA_OK && got == need && out[got] == 0);
        free(out);
    }
    free(json);
    return 0;
}
