/* test_safetensors.c - the safetensors loader and model binding on valid and
   hostile files: every rule of the format, truncation at every length, shards,
   the name layouts and dtypes real checkpoints use, and config/tensor
   mismatches. Every failure must be an error code with a message naming the
   file; `make sanitize` runs this under ASan + UBSan. */
#include "../nla.h"
#include "test.h"
#include "util.h"

static char err[512];

/* Opens path with nla_st_open; returns the status and closes on success. */
static nla_status st_try(const char *path, int no_mmap) {
    nla_st *st = NULL;
    nla_status rc = nla_st_open(path, no_mmap, &st, err, sizeof err);
    if (rc == NLA_OK) {
        /* touch every byte of every tensor so a bad pointer shows under ASan */
        unsigned sum = 0;
        for (int i = 0; i < nla_st_count(st); i++) {
            nla_tensor t;
            nla_st_get(st, i, &t);
            for (uint64_t k = 0; k < t.nbytes; k++) sum += ((const unsigned char *)t.data)[k];
        }
        (void)sum;
        nla_st_close(st);
    } else {
        CHECK_MSG(st == NULL, "failed open must leave *out NULL");
    }
    return rc;
}

/* Writes raw bytes: u64 header length, header text, then `data` bytes. */
static void write_raw(const char *path, const char *header, uint64_t hlen, size_t data_len) {
    size_t hl = strlen(header);
    unsigned char *b = (unsigned char *)calloc(1, 8 + hl + data_len + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (unsigned char)i;
    spit(path, b, 8 + hl + data_len);
    free(b);
}

/* A header with its true length, expecting `want` (and the file named). */
static void expect_header(const char *header, size_t data_len, nla_status want, const char *what) {
    const char *path = "tests/tmp/h.safetensors";
    write_raw(path, header, strlen(header), data_len);
    nla_status rc = st_try(path, 0);
    CHECK_MSG(rc == want, "%s: got %s (%s), want %s", what, nla_strerror(rc), err,
              nla_strerror(want));
    if (want != NLA_OK)
        CHECK_MSG(strstr(err, "h.safetensors") != NULL, "%s: message must name the file: %s", what,
                  err);
}

static void test_valid_and_rules(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[4] = {0x3f80, 0x4000, 0xbf80, 0};
    wtensor t[2] = {{"a", "F32", 2, {2, 3}, a, sizeof a}, {"b", "BF16", 1, {4}, b, sizeof b}};
    st_write("tests/tmp/ok.safetensors", t, 2, "{\"format\":\"pt\"}");
    for (int no_mmap = 0; no_mmap < 2; no_mmap++) {
        nla_st *st;
        CHECK_EQ(nla_st_open("tests/tmp/ok.safetensors", no_mmap, &st, err, sizeof err), NLA_OK);
        CHECK_EQ(nla_st_count(st), 2);
        int ia = nla_st_find(st, "a");
        nla_tensor ta;
        CHECK_EQ(nla_st_get(st, ia, &ta), NLA_OK);
        CHECK(!strcmp(ta.dtype, "F32") && ta.ndim == 2 && ta.shape[0] == 2 && ta.shape[1] == 3 &&
              ta.nbytes == 24);
        CHECK(memcmp(ta.data, a, 24) == 0);
        CHECK_EQ(nla_st_find(st, "nope"), -1);
        CHECK(nla_st_metadata(st, "format") && !strcmp(nla_st_metadata(st, "format"), "pt"));
        CHECK(nla_st_metadata(st, "other") == NULL);
        CHECK_EQ(nla_st_get(st, 2, &ta), NLA_ERR_ARG);
        nla_st_close(st);
    }
    nla_st_close(NULL);
    /* the writer refuses a tensor that is not what it says */
    nla_tensor bad;
    memset(&bad, 0, sizeof bad);
    bad.name = "x"; bad.dtype = "F32"; bad.ndim = 2; bad.shape[0] = -1; bad.shape[1] = 4;
    CHECK_EQ(
        nla_st_write("tests/tmp/bad.safetensors", &bad, 1, NULL, 0, NULL, NULL, err, sizeof err),
        NLA_ERR_ARG);
    bad.shape[0] = (int64_t)1 << 62;
    CHECK_EQ(
        nla_st_write("tests/tmp/bad.safetensors", &bad, 1, NULL, 0, NULL, NULL, err, sizeof err),
        NLA_ERR_ARG);
    /* a size whose bits wrap around to the shape's (2^61 + 3 bytes: 24 bits of U8 [3]) */
    bad.dtype = "U8"; bad.ndim = 1; bad.shape[0] = 3; bad.data = a;
    bad.nbytes = ((uint64_t)1 << 61) + 3;
    CHECK_EQ(
        nla_st_write("tests/tmp/bad.safetensors", &bad, 1, NULL, 0, NULL, NULL, err, sizeof err),
        NLA_ERR_ARG);
    bad.dtype = "F32"; bad.ndim = 2;
    bad.shape[0] = 2; bad.shape[1] = 3; bad.data = a; bad.nbytes = 24;
    /* a tensor named as the header's metadata, a metadata pair with a NULL: refused, no file */
    unlink("tests/tmp/bad2.safetensors");
    bad.name = "__metadata__";
    CHECK_EQ(
        nla_st_write("tests/tmp/bad2.safetensors", &bad, 1, NULL, 0, NULL, NULL, err, sizeof err),
        NLA_ERR_ARG);
    bad.name = "x";
    const char *nul_meta[2] = {"key", NULL};
    CHECK_EQ(nla_st_write("tests/tmp/bad2.safetensors", &bad, 1, nul_meta, 1, NULL, NULL, err,
                          sizeof err),
             NLA_ERR_ARG);
    CHECK_MSG(strstr(err, "metadata pair 0 has a NULL value"), "%s", err);
    CHECK(access("tests/tmp/bad2.safetensors", F_OK) != 0);
    CHECK_EQ(
        nla_st_write("tests/tmp/bad.safetensors", &bad, 1, NULL, 0, NULL, NULL, err, sizeof err),
        NLA_OK);
    CHECK_EQ(st_try("tests/tmp/bad.safetensors", 0), NLA_OK);

    /* truncation at every length: all fail, cleanly */
    size_t n;
    char *full = slurp("tests/tmp/ok.safetensors", &n);
    int all_failed = 1;
    for (size_t len = 0; len < n; len++) {
        spit("tests/tmp/trunc.safetensors", full, len);
        nla_status rc = st_try("tests/tmp/trunc.safetensors", (int)(len & 1));
        if (rc == NLA_OK || !strstr(err, "trunc.safetensors")) {
            all_failed = 0;
            fprintf(stderr, "truncated to %zu: %s\n", len, err);
        }
    }
    CHECK_MSG(all_failed, "every truncation must fail with the file named");
    /* trailing bytes: not covered by any tensor */
    full = (char *)realloc(full, n + 4);
    memcpy(full + n, "xxxx", 4);
    spit("tests/tmp/trail.safetensors", full, n + 4);
    CHECK_EQ(st_try("tests/tmp/trail.safetensors", 0), NLA_ERR_FORMAT);
    free(full);

    const char *F = "\"dtype\":\"F32\"";
    char h[512];
    expect_header("{}", 0, NLA_OK, "empty header");
    snprintf(h, sizeof h, "{\"s\":{%s,\"shape\":[],\"data_offsets\":[0,4]}}", F);
    expect_header(h, 4, NLA_OK, "0-rank tensor");
    snprintf(h, sizeof h, "{\"z\":{%s,\"shape\":[0,5],\"data_offsets\":[0,0]}}", F);
    expect_header(h, 0, NLA_OK, "zero-size tensor");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}      ", 8,
                  NLA_OK, "space padding");
    expect_header("[1,2]", 0, NLA_ERR_FORMAT, "not an object");
    expect_header(" {}", 0, NLA_ERR_FORMAT, "leading space");
    expect_header("{\"a\":", 0, NLA_ERR_FORMAT, "invalid JSON");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8,
                  NLA_ERR_FORMAT, "trailing junk");
    expect_header("{\"a\":{\"dtype\":\"Q9\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  NLA_ERR_FORMAT, "unknown dtype");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                  NLA_ERR_FORMAT, "negative dim");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
                  NLA_ERR_FORMAT, "fractional dim");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                  NLA_ERR_FORMAT, "string dim");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
                  NLA_ERR_FORMAT, "one offset");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                  NLA_ERR_FORMAT, "end < begin");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  NLA_ERR_FORMAT, "shape x dtype != bytes");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                  NLA_ERR_FORMAT, "offset past the end");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{"
                  "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, NLA_ERR_FORMAT, "overlap");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{"
                  "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  8, NLA_ERR_FORMAT, "same range twice");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  NLA_ERR_FORMAT, "gap at the start");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{"
                  "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, NLA_ERR_FORMAT, "duplicate name");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_"
                  "offsets\":[0,8]}}",
                  8, NLA_ERR_FORMAT, "shape product overflows");
    expect_header(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8,
        NLA_ERR_FORMAT, "bits overflow");
    expect_header(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", 8,
        NLA_ERR_FORMAT, "dim too large for u64");
    expect_header("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1,
                  NLA_ERR_FORMAT, "sub-byte size");
    expect_header("{\"__metadata__\":{\"k\":1}}", 0, NLA_ERR_FORMAT, "metadata value not a string");
    expect_header("{\"__metadata__\":[]}", 0, NLA_ERR_FORMAT, "metadata not an object");
    expect_header(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
        NLA_ERR_FORMAT, "rank 9");
    expect_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                  NLA_ERR_FORMAT, "extra field");
    expect_header("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  NLA_ERR_FORMAT, "invalid UTF-8");
    expect_header("{\"a\":\"\\x\"}", 0, NLA_ERR_FORMAT, "bad escape");
    char deep[300];
    memset(deep, '[', 200);
    deep[0] = '{';
    snprintf(deep + 1, sizeof deep - 1, "\"a\":");
    memset(deep + 5, '[', 200);
    deep[205] = 0;
    expect_header(deep, 0, NLA_ERR_FORMAT, "nesting bomb");

    /* header longer than NLA_MAX_HEADER (100 MB) */
    write_raw("tests/tmp/h.safetensors", "{}", 100000001, 0);
    CHECK_EQ(st_try("tests/tmp/h.safetensors", 0), NLA_ERR_FORMAT);
    CHECK(strstr(err, "exceeds the 100000000-byte limit") != NULL);

    /* header length lies */
    write_raw("tests/tmp/h.safetensors", "{}", 1000, 0);
    CHECK_EQ(st_try("tests/tmp/h.safetensors", 0), NLA_ERR_FORMAT);
    CHECK(strstr(err, "past the end") != NULL);
    write_raw("tests/tmp/h.safetensors", "{}", (uint64_t)1 << 62, 0);
    CHECK_EQ(st_try("tests/tmp/h.safetensors", 0), NLA_ERR_FORMAT);
    write_raw("tests/tmp/h.safetensors", "{}", UINT64_MAX, 0);
    CHECK_EQ(st_try("tests/tmp/h.safetensors", 0), NLA_ERR_FORMAT);
    CHECK_EQ(st_try("tests/tmp/does-not-exist.safetensors", 0), NLA_ERR_IO);
    CHECK(strstr(err, "does-not-exist") != NULL);
    CHECK_EQ(st_try("tests/tmp/does-not-exist.safetensors", 1), NLA_ERR_IO);
    CHECK_EQ(st_try("tests/tmp", 0), NLA_ERR_IO); /* a folder without model files */
}

/* A copy of a golden model folder, so tests can edit config and files. */
static void copy_model(const char *from, const char *to_name, char *to, size_t cap) {
    static const char *const files[] = {"config.json",
                                        "generation_config.json",
                                        "model.safetensors",
                                        "model.safetensors.index.json",
                                        "model-00001-of-00002.safetensors",
                                        "model-00002-of-00002.safetensors"};
    tmp_dir(to, cap, to_name);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/%s", from, files[i]);
        snprintf(b, sizeof b, "%s/%s", to, files[i]);
        remove(b);
        copy_file(a, b);
    }
}

/* Rewrites dir/config.json with `find` replaced by `repl` (first match). */
static void edit_config(const char *dir, const char *find, const char *repl) {
    char p[1024];
    snprintf(p, sizeof p, "%s/config.json", dir);
    char *txt = slurp(p, NULL), *at = strstr(txt, find);
    CHECK_MSG(at != NULL, "config has no '%s'", find);
    if (!at) { free(txt); return; }
    size_t pre = (size_t)(at - txt), n = strlen(txt) - pre - strlen(find);
    char *out = (char *)malloc(pre + strlen(repl) + n + 1);
    memcpy(out, txt, pre);
    strcpy(out + pre, repl);
    strcat(out, at + strlen(find));
    spit(p, out, strlen(out));
    free(txt);
    free(out);
}

static nla_status model_try(const char *dir) {
    nla_model *m = NULL;
    nla_status rc = nla_model_open(dir, NULL, &m, err, sizeof err);
    nla_model_close(m);
    return rc;
}

static void expect_config(const char *find, const char *repl, nla_status want,
                          const char *mention) {
    char dir[512];
    copy_model("tests/data/forward/gqa-bf16/model", "cfg", dir, sizeof dir);
    edit_config(dir, find, repl);
    nla_status rc = model_try(dir);
    CHECK_MSG(rc == want, "config '%s' -> '%s': got %s (%s)", find, repl, nla_strerror(rc), err);
    CHECK_MSG(strstr(err, mention) != NULL, "message should mention '%s': %s", mention, err);
}

static void test_config_and_binding(void) {
    expect_config("\"hidden_size\": 64", "\"hidden_size\": 65", NLA_ERR_FORMAT,
                  "model.safetensors");
    expect_config("\"hidden_size\": 64", "\"hidden_size\": 65", NLA_ERR_FORMAT, "[1024, 64]");
    expect_config("\"num_attention_heads\": 4", "\"num_attention_heads\": 2", NLA_ERR_FORMAT,
                  "q_proj");
    expect_config("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", NLA_ERR_FORMAT,
                  "num_key_value_heads");
    expect_config("\"head_dim\": 32", "\"head_dim\": 16", NLA_ERR_FORMAT, "q_proj");
    expect_config("\"intermediate_size\": 128", "\"intermediate_size\": 100", NLA_ERR_FORMAT,
                  "gate_proj");
    expect_config("\"vocab_size\": 1024", "\"vocab_size\": 1000", NLA_ERR_FORMAT, "embed_tokens");
    expect_config("\"num_hidden_layers\": 7", "\"num_hidden_layers\": 6", NLA_ERR_FORMAT,
                  "layer_types");
    expect_config("\"num_hidden_layers\": 7", "\"num_hidden_layers\": 8", NLA_ERR_FORMAT,
                  "layer_types");
    expect_config("\"rope_type\": \"linear\"", "\"rope_type\": \"yarn\"", NLA_ERR_UNSUPPORTED,
                  "yarn");
    expect_config("\"Gemma3ForCausalLM\"", "\"LlamaForCausalLM\"", NLA_ERR_UNSUPPORTED,
                  "LlamaForCausalLM");
    expect_config("\"hidden_size\": 64,", "\"hidden_size\": 64", NLA_ERR_FORMAT,
                  "config.json: invalid JSON at line");
    expect_config("\"hidden_size\": 64", "\"hidden_size\": \"64\"", NLA_ERR_FORMAT, "hidden_size");
    expect_config("\"final_logit_softcapping\": null", "\"final_logit_softcapping\": 1e400",
                  NLA_ERR_RANGE, "final_logit_softcapping inf out of range");
    expect_config("    1,\n    106\n", "    1,\n    1024\n", NLA_ERR_RANGE,
                  "config.json: eos_token_id 1024 is not a token id");
    /* finite as doubles but past a float's range (an Inf once read) */
    expect_config("\"final_logit_softcapping\": null", "\"final_logit_softcapping\": 3e40",
                  NLA_ERR_RANGE, "final_logit_softcapping 3e+40 out of range");
    expect_config("\"attn_logit_softcapping\": null", "\"attn_logit_softcapping\": 1e39",
                  NLA_ERR_RANGE, "attn_logit_softcapping 1e+39 out of range");
    expect_config("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 1e-50", NLA_ERR_RANGE,
                  "rms_norm_eps 1e-50 out of range: must be in [FLT_MIN, 1)");
    expect_config("\"rope_theta\": 1000000.0", "\"rope_theta\": 1e39", NLA_ERR_RANGE,
                  "rope_theta 1e+39");
    expect_config("\"factor\": 8.0", "\"factor\": 1e39", NLA_ERR_RANGE, "factor");
    expect_config("\"factor\": 8.0", "\"factor\": 1e999", NLA_ERR_RANGE, "factor");
    expect_config("\"rope_theta\": 1000000.0", "\"rope_theta\": 1e309", NLA_ERR_RANGE, "rope");
    expect_config("\"rope_local_base_freq\": 10000.0", "\"rope_local_base_freq\": 1", NLA_ERR_RANGE,
                  "rope_local_base_freq 1 out of range: must be in (1, FLT_MAX]");
    expect_config("\"query_pre_attn_scalar\": 32", "\"query_pre_attn_scalar\": 0", NLA_ERR_RANGE,
                  "query_pre_attn_scalar 0 out of range");
    expect_config("\"hidden_activation\": \"gelu_pytorch_tanh\"", "\"hidden_activation\": \"silu\"",
                  NLA_ERR_UNSUPPORTED, "silu");
    expect_config("\"use_bidirectional_attention\": false", "\"use_bidirectional_attention\": true",
                  NLA_ERR_UNSUPPORTED, "bidirectional");
    expect_config("\"full_attention\",", "\"chunked_attention\",", NLA_ERR_UNSUPPORTED,
                  "layer_types[5]");
    /* a flag given as a string or a number is refused, not read as true or false */
    expect_config("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": \"false\"",
                  NLA_ERR_FORMAT, "'tie_word_embeddings' must be true or false");
    expect_config("\"attention_bias\": false", "\"attention_bias\": 1", NLA_ERR_FORMAT,
                  "'attention_bias' must be true or false");
    expect_config("\"use_bidirectional_attention\": false",
                  "\"use_bidirectional_attention\": \"yes\"", NLA_ERR_FORMAT,
                  "'use_bidirectional_attention' must be true or false");
    /* the input limits (nla.c section 1) */
    expect_config("\"num_hidden_layers\": 7", "\"num_hidden_layers\": 513", NLA_ERR_RANGE,
                  "'num_hidden_layers' = 513 is outside 1..512");
    expect_config("\"vocab_size\": 1024", "\"vocab_size\": 16777217", NLA_ERR_RANGE,
                  "'vocab_size' = 16777217 is outside");
    {
        size_t big = ((size_t)1 << 24) + 1; /* NLA_MAX_JSON_FILE + 1 */
        char *pad = (char *)malloc(big + 32);
        memset(pad, ' ', big + 32);
        memcpy(pad, "{\"hidden_size\": 64", 18);
        pad[big + 31] = 0;
        expect_config("{", pad, NLA_ERR_FORMAT, "config.json: larger than");
        free(pad);
    }

    char dir[512], p[1024];
    /* missing config.json, missing weights */
    copy_model("tests/data/forward/gqa-bf16/model", "nocfg", dir, sizeof dir);
    snprintf(p, sizeof p, "%s/config.json", dir);
    remove(p);
    CHECK_EQ(model_try(dir), NLA_ERR_IO);
    CHECK(strstr(err, "config.json") != NULL);
    CHECK_EQ(model_try("tests/tmp/no-such-model"), NLA_ERR_IO);

    /* an unsupported dtype is named with its tensor; a missing tensor is named */
    size_t n;
    char *raw = slurp("tests/data/forward/mqa-f32/model/model.safetensors", &n);
    copy_model("tests/data/forward/mqa-f32/model", "dt", dir, sizeof dir);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    char *at = strstr(raw + 8, "\"model.norm.weight\":{\"dtype\":\"F32\"");
    if (!at) at = strstr(raw + 8, "\"model.norm.weight\": {\"dtype\": \"F32\"");
    CHECK(at != NULL);
    if (at) {
        char *dt = strstr(at, "F32");
        memcpy(dt, "I32", 3);
        spit(p, raw, n);
        CHECK_EQ(model_try(dir), NLA_ERR_UNSUPPORTED);
        CHECK(strstr(err, "model.norm.weight") && strstr(err, "I32"));
        memcpy(dt, "F32", 3);
        memcpy(at + 7, "xorm", 4); /* "model.xorm.weight": unknown name under the prefix */
        spit(p, raw, n);
        CHECK_EQ(model_try(dir), NLA_ERR_FORMAT);
        CHECK(strstr(err, "model.xorm.weight") != NULL);
    }
    free(raw);

    /* shards: a bad shard name, a tensor mapped to the wrong shard */
    copy_model("tests/data/forward/multimodal-sharded-bf16/model", "shard", dir, sizeof dir);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    char *idx = slurp(p, NULL);
    CHECK_EQ(model_try(dir), NLA_OK);
    char *q =
        strstr(idx, "\"language_model.model.norm.weight\": \"model-00002-of-00002.safetensors\"");
    CHECK(q != NULL);
    if (q) {
        char *f = strstr(q, "00002-of");
        f[4] = '1';
        spit(p, idx, strlen(idx));
        CHECK_EQ(model_try(dir), NLA_ERR_FORMAT);
        CHECK(strstr(err, "language_model.model.norm.weight") != NULL);
        memcpy(f - 6, "../../", 6);
        spit(p, idx, strlen(idx));
        CHECK_EQ(model_try(dir), NLA_ERR_FORMAT);
        CHECK(strstr(err, "plain file name") != NULL);
    }
    free(idx);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    remove(p);
    copy_file("tests/data/forward/multimodal-sharded-bf16/model/model.safetensors.index.json",
              "tests/tmp/shard/model.safetensors.index.json");
    CHECK_EQ(model_try(dir), NLA_ERR_IO);
    CHECK(strstr(err, "model-00002-of-00002.safetensors") != NULL);
}

/* ---- layouts real checkpoints use: must give the golden logits ---------- */

/* Loads every tensor of a golden model, lets `edit` rename/convert them, and
   writes the result as dir/model.safetensors. */
typedef struct {
    char name[160];
    char dtype[8];
    int ndim;
    long long shape[4];
    unsigned char *data;
    size_t nbytes;
} mtensor;

static int load_tensors(const char *path, mtensor *out, int cap) {
    nla_st *st;
    if (nla_st_open(path, 0, &st, err, sizeof err)) return -1;
    int n = nla_st_count(st);
    for (int i = 0; i < n && i < cap; i++) {
        nla_tensor t;
        nla_st_get(st, i, &t);
        snprintf(out[i].name, sizeof out[i].name, "%s", t.name);
        snprintf(out[i].dtype, sizeof out[i].dtype, "%s", t.dtype);
        out[i].ndim = t.ndim;
        for (int k = 0; k < t.ndim; k++) out[i].shape[k] = t.shape[k];
        out[i].nbytes = t.nbytes;
        out[i].data = (unsigned char *)malloc(t.nbytes + 1);
        memcpy(out[i].data, t.data, t.nbytes);
    }
    nla_st_close(st);
    return n;
}

static void save_tensors(const char *path, mtensor *t, int n) {
    wtensor *w = (wtensor *)calloc((size_t)n, sizeof *w);
    for (int i = 0; i < n; i++) {
        w[i].name = t[i].name; w[i].dtype = t[i].dtype; w[i].ndim = t[i].ndim;
        memcpy(w[i].shape, t[i].shape, sizeof t[i].shape);
        w[i].data = t[i].data; w[i].nbytes = t[i].nbytes;
    }
    st_write(path, w, n, NULL);
    free(w);
}

static double logits_err(const char *dir, nla_embed_scale es) {
    static const int32_t ids[8] = {2, 84, 578, 476, 220, 642, 86, 284}; /* gqa-bf16 t8 */
    nla_model *m;
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.embed_scale = es;
    if (nla_model_open(dir, &mp, &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1e9; }
    nla_session *s;
    nla_session_new(m, NULL, &s);
    float *lg = (float *)malloc(8 * 1024 * sizeof(float));
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = 8; b.ids = ids; b.logits = lg; b.all_logits = 1;
    nla_status rc = nla_forward(s, &b);
    int nd;
    long long sh[4] = {0, 0, 0, 0};
    float *g = npy_load("tests/data/forward/gqa-bf16/t8.logits.npy", &nd, sh);
    double e = 0, mx = 0;
    for (int i = 0; i < 8 * 1024; i++) {
        if (fabs(lg[i] - g[i]) > e) e = fabs(lg[i] - g[i]);
        if (fabs(g[i]) > mx) mx = fabs(g[i]);
    }
    free(g); free(lg);
    nla_session_free(s);
    nla_model_close(m);
    return rc ? 1e9 : e / mx;
}

static void test_layouts(void) {
    mtensor *t = (mtensor *)calloc(256, sizeof *t);
    int n = load_tensors("tests/data/forward/gqa-bf16/model/model.safetensors", t, 256);
    CHECK(n > 90);
    char dir[512], p[1024];
    /* 1. model.language_model.* names, rope_parameters, layer_types absent, explicit lm_head
     * (untied) */
    copy_model("tests/data/forward/gqa-bf16/model", "layout", dir, sizeof dir);
    int emb = -1;
    for (int i = 0; i < n; i++) {
        char tmp[160];
        snprintf(tmp, sizeof tmp, "model.language_model.%s", t[i].name + 6);
        snprintf(t[i].name, sizeof t[i].name, "%s", tmp);
        if (strstr(tmp, "embed_tokens")) emb = i;
    }
    mtensor *t2 = (mtensor *)calloc(257, sizeof *t2);
    memcpy(t2, t, (size_t)n * sizeof *t);
    t2[n] = t[emb];
    snprintf(t2[n].name, sizeof t2[n].name, "lm_head.weight");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    save_tensors(p, t2, n + 1);
    edit_config(dir,
                "\"rope_scaling\": {\n    \"factor\": 8.0,\n    \"rope_type\": \"linear\"\n  },",
                "\"rope_parameters\": {\"full_attention\": {\"rope_type\": \"linear\", \"factor\": "
                "8.0, \"rope_theta\": 1000000.0},"
                " \"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0}},");
    edit_config(dir, "\"rope_theta\": 1000000.0,", "\"rope_theta\": 5.0,"); /* must be overridden */
    edit_config(dir, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    char *cfg;
    snprintf(p, sizeof p, "%s/config.json", dir);
    cfg = slurp(p, NULL);
    char *lt = strstr(cfg, "\"layer_types\""), *end = lt ? strchr(lt, ']') : NULL;
    if (lt && end) {
        memmove(lt, end + 3, strlen(end + 3) + 1);
        spit(p, cfg, strlen(cfg));
    } /* pattern 6 gives the same */
    free(cfg);
    double e1 = logits_err(dir, NLA_EMBED_SCALE_BF16);
    CHECK_MSG(e1 <= 1e-4,
              "model.language_model.* + rope_parameters + lm_head + no layer_types: rel err %.3g",
              e1);
    nla_model *m;
    CHECK_EQ(nla_model_open(dir, NULL, &m, err, sizeof err), NLA_OK);
    nla_model_info in;
    nla_model_get_info(m, &in);
    CHECK_EQ(in.tied_embeddings, 0);
    CHECK_EQ(nla_model_layer_is_global(m, 5), 1);
    CHECK_EQ(nla_model_layer_is_global(m, 6), 0);
    CHECK_EQ(nla_model_layer_is_global(m, 7), -1);
    CHECK_NEAR(in.rope_theta_global, 1e6, 1);
    nla_model_close(m);
    free(t2);

    /* 2. f16 weights: bf16 values fit f16 exactly unless tiny; same logits */
    copy_model("tests/data/forward/gqa-bf16/model", "f16", dir, sizeof dir);
    for (int i = 0; i < n; i++) free(t[i].data);
    n = load_tensors("tests/data/forward/gqa-bf16/model/model.safetensors", t, 256);
    for (int i = 0; i < n; i++) {
        snprintf(t[i].dtype, sizeof t[i].dtype, "F16");
        for (size_t k = 0; k < t[i].nbytes / 2; k++) {
            uint16_t b, h;
            memcpy(&b, t[i].data + 2 * k, 2);
            uint32_t u = (uint32_t)b << 16;
            float f;
            memcpy(&f, &u, 4);
            /* f32 -> f16, round to nearest even (test-side, small values only) */
            uint32_t sign = (u >> 16) & 0x8000;
            int ex = (int)((u >> 23) & 0xff) - 112;
            uint32_t man = u & 0x7fffff;
            if (f == 0) h = (uint16_t)sign;
            else if (ex <= 0) {
                int sh = 14 - ex;
                uint32_t mm = man | 0x800000, q = sh < 32 ? mm >> sh : 0,
                         rest = sh < 32 ? mm & ((1u << sh) - 1) : mm,
                         half = sh < 33 ? 1u << (sh - 1) : 0;
                if (rest > half || (rest == half && (q & 1))) q++;
                h = (uint16_t)(sign | q);
            } else h = (uint16_t)(sign | (uint32_t)ex << 10 | man >> 13);
            memcpy(t[i].data + 2 * k, &h, 2);
        }
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    save_tensors(p, t, n);
    edit_config(dir, "\"torch_dtype\": \"bfloat16\"", "\"torch_dtype\": \"float16\"");
    double e2 = logits_err(dir, NLA_EMBED_SCALE_BF16);
    CHECK_MSG(e2 <= 1e-4, "f16 weights: rel err %.3g", e2);
    CHECK_EQ(nla_model_open(dir, NULL, &m, err, sizeof err), NLA_OK);
    nla_model_get_info(m, &in);
    CHECK_EQ(in.dtype, NLA_DTYPE_F16);
    nla_model_close(m);
    /* embed scale options: exact and stored give other (defined) values */
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.embed_scale = NLA_EMBED_SCALE_EXACT;
    CHECK_EQ(nla_model_open(dir, &mp, &m, err, sizeof err), NLA_OK);
    nla_model_get_info(m, &in);
    CHECK_NEAR(in.embed_scale, 8.0, 1e-6); /* sqrt(64) is exact anyway */
    nla_model_close(m);
    mp.embed_scale = (nla_embed_scale)7;
    CHECK_EQ(nla_model_open(dir, &mp, &m, err, sizeof err), NLA_ERR_ARG);
    for (int i = 0; i < 256; i++) free(t[i].data);
    free(t);

    /* 3. one .safetensors file path instead of the folder */
    CHECK_NEAR(
        logits_err("tests/data/forward/gqa-bf16/model/model.safetensors", NLA_EMBED_SCALE_BF16), 0,
        1e-4);
    CHECK_EQ(
        model_try("tests/data/forward/multimodal-sharded-bf16/model/model.safetensors.index.json"),
        NLA_OK);
    CHECK_EQ(
        st_try("tests/data/forward/multimodal-sharded-bf16/model/model.safetensors.index.json", 0),
        NLA_OK);
    /* 4. the embed scale of mqa-f32 (h = 48): bf16 6.9375 vs exact 6.9282 */
    memset(&mp, 0, sizeof mp);
    CHECK_EQ(nla_model_open("tests/data/forward/mqa-f32/model", &mp, &m, err, sizeof err), NLA_OK);
    nla_model_get_info(m, &in);
    CHECK_NEAR(in.embed_scale, 6.9375, 0);
    nla_model_close(m);
    mp.embed_scale = NLA_EMBED_SCALE_STORED; /* f32 weights: unrounded, as HF in f32 */
    CHECK_EQ(nla_model_open("tests/data/forward/mqa-f32/model", &mp, &m, err, sizeof err), NLA_OK);
    nla_model_get_info(m, &in);
    CHECK_NEAR(in.embed_scale, 6.92820323, 1e-6);
    nla_model_close(m);
}

int main(void) {
    mkdir("tests/tmp", 0755);
    test_valid_and_rules();
    test_config_and_binding();
    test_layouts();
    return test_report();
}
