/* test_nla.c - the NLA pipeline against ../shared/golden/nla (a tiny random
   target/AV/AR trio, d_model 16, K = 2, injection_scale 17, mse_scale 4, with
   the real tokenizer): extracted vectors, the AV's first logits after the
   injection and its greedy continuation, the AR's reconstructions, the
   metrics and the own-set baseline; the sidecar reader; and the failure
   smells of the NLA recipe, each shown to be caught. */
#define _POSIX_C_SOURCE 200809L
#include "../nla.h"
#include "test.h"
#include "util.h"

#define G "tests/data/nla/"
#define TOKJSON "weights/tokenizer.json"
#define D 16
#define V 262144

static char err[512];
static char *golden;

static nla_model *open_nla(const char *dir) {
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.tokenizer = TOKJSON;
    nla_model *m = NULL;
    nla_status rc = nla_model_open(dir, &mp, &m, err, sizeof err);
    CHECK_MSG(rc == NLA_OK, "open %s: %s", dir, err);
    return m;
}

static float *load(const char *path, long long *rows) {
    int nd;
    long long sh[4] = {0, 0, 0, 0};
    float *x = npy_load(path, &nd, sh);
    if (rows) *rows = sh[0];
    CHECK_MSG(x != NULL, "cannot read %s", path);
    return x;
}

/* ---- sidecar ----------------------------------------------------------- */

static void test_meta(nla_model *av, nla_model *ar) {
    nla_meta m;
    nla_model_get_meta(av, &m);
    CHECK(m.present && !strcmp(m.role, "av") && m.d_model == D && m.layer == 2);
    CHECK(m.injection_scale == 17.0 && m.mse_scale == 4.0);
    CHECK(m.marker_id == 246566 && m.marker_left_id == 236813 && m.marker_right_id == 954);
    CHECK(m.injection_char && !strcmp(m.injection_char, "\xe3\x88\x9c"));
    CHECK(m.av_template &&
          strstr(m.av_template,
                 "<concept>{injection_char}</concept>\n\nPlease provide an explanation.") &&
          m.av_template[strlen(m.av_template) - 1] == '.'); /* |- strips the final newline */
    CHECK(m.ar_template &&
          !strcmp(m.ar_template,
                  "Summary of the following text: <text>{explanation}</text> <summary>"));
    CHECK_EQ(m.n_critic_suffix, 0); /* null in the AV sidecar */
    double want[128];
    int nw = json_nums_after(golden, "\"av_prompt_ids\"", want, 128);
    CHECK(nw == 108 && m.av_prompt_len == 108 && m.av_marker_index == 93);
    int same = m.av_prompt != NULL;
    for (int i = 0; same && i < nw; i++) same = m.av_prompt[i] == (int32_t)want[i];
    CHECK_MSG(same, "the AV prompt ids differ from the golden 108");
    CHECK(strstr(m.defaulted, "fve_baseline") != NULL &&
          strstr(m.defaulted, "injection_scale") == NULL);
    nla_model_get_meta(ar, &m);
    CHECK(m.present && !strcmp(m.role, "ar") && m.layer == 2 && m.mse_scale == 4.0 &&
          m.has_value_head);
    static const int32_t suffix[5] = {1005, 236813, 655, 6011, 236813};
    CHECK(m.n_critic_suffix == 5 && !memcmp(m.critic_suffix_ids, suffix, sizeof suffix));
    nla_model_info in;
    nla_model_get_info(ar, &in);
    CHECK(in.n_layers == 3 && !in.has_final_norm);
}

/* A copy of the AV folder (weights linked) with its sidecar rewritten:
   `find` replaced by `repl`. Returns the open status. */
static nla_status av_variant(const char *find, const char *repl) {
    char dir[256] = "tests/tmp/avx", p[512];
    mkdir("tests/tmp", 0755);
    mkdir(dir, 0755);
    static const char *const files[] = {"config.json", "generation_config.json",
                                        "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char src[512];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        snprintf(src, sizeof src, "../../data/nla/av/%s", files[i]);
        remove(p);
        CHECK(symlink(src, p) == 0);
    }
    size_t n;
    char *y = slurp(G "av/nla_meta.yaml", &n), *at = strstr(y, find);
    CHECK_MSG(at != NULL, "sidecar has no '%s'", find);
    snprintf(p, sizeof p, "%s/nla_meta.yaml", dir);
    FILE *f = fopen(p, "wb");
    if (at) {
        fwrite(y, 1, (size_t)(at - y), f);
        fputs(repl, f);
        fputs(at + strlen(find), f);
    }
    fclose(f);
    free(y);
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.tokenizer = TOKJSON;
    nla_model *m = NULL;
    nla_status rc = nla_model_open(dir, &mp, &m, err, sizeof err);
    nla_model_close(m);
    return rc;
}

static void expect_variant(const char *find, const char *repl, const char *mention) {
    nla_status rc = av_variant(find, repl);
    CHECK_MSG(rc != NLA_OK && strstr(err, mention), "sidecar '%s' -> '%s': %s (%s)", find, repl,
              nla_strerror(rc), err);
}

static void test_sidecar_errors(void) {
    CHECK_EQ(av_variant("role: av", "role: av"), NLA_OK); /* the unchanged copy opens */
    expect_variant("d_model: 16", "d_model: 32", "d_model 32");
    expect_variant("d_model: 16", "\td_model: 16", "line 4: tab");                 /* tab */
    expect_variant("d_model: 16", "d_model 16", "line 4: expected 'key: value'");
    { /* 17 nested maps: one past NLA_YAML_MAX_DEPTH */
        char deep[1024] = "d_model: 16\n";
        for (int i = 0; i < 17; i++)
            snprintf(deep + strlen(deep), sizeof deep - strlen(deep), "%*sk%d:\n", 2 * i, "", i);
        snprintf(deep + strlen(deep), sizeof deep - strlen(deep), "%*sv: 1", 34, "");
        expect_variant("d_model: 16", deep, "nesting deeper than 16");
    }
    expect_variant("  injection_scale: 17.0", "  injection_scale: seventeen",
                   "injection_scale must be a number");
    expect_variant("  injection_scale: 17.0", "  injection_scale: 1e39",
                   "injection_scale must be a positive number a float");
    expect_variant("injection_char: \xe3\x88\x9c", "injection_char: \xe3\x88\x9c!",
                   "tokenizes to 2 ids");
    expect_variant("injection_token_id: 246566", "injection_token_id: 246567",
                   "injection_token_id is 246567");
    expect_variant("injection_left_neighbor_id: 236813", "injection_left_neighbor_id: 5",
                   "exactly one marker");
    expect_variant("<concept>{injection_char}</concept>",
                   "<concept>{injection_char}</concept> <concept>{injection_char}</concept>",
                   "exactly one marker");
    expect_variant("<concept>{injection_char}</concept>", "<concept></concept>",
                   "no {injection_char}");
    expect_variant("  av: |-\n    You are", "  avx: |-\n    You are",
                   "prompt_templates.av is missing");
    expect_variant("You are a meticulous", "<bos>You are a meticulous", "exactly one <bos>");
    expect_variant("role: av", "role: judge", "role must be av or ar");
    expect_variant("role: av", "role: av\nrole: ar", "duplicate key");
    expect_variant("kind: nla_model", "kind: [nla_model", "unterminated flow list");
    expect_variant("kind: nla_model", "kind: &a nla_model", "anchors");
    expect_variant("kind: nla_model", "- kind", "block lists");
    expect_variant("  ar: \"Summary", "  ar: \"Summary\\u00", "bad escape");
    expect_variant("<summary>\"", "<summary>", "unterminated quoted string");
    /* regressions from review: ids past the embedding rows, a zero mse_scale,
       a sidecar far larger than any real one */
    expect_variant("Please provide an explanation.",
                   "Please provide an explanation.<image_soft_token>", "outside the model's");
    expect_variant("  mse_scale: 4.0", "  mse_scale: 0",
                   "mse_scale must be a positive number up to 1e150");
    expect_variant("  mse_scale: 4.0", "  mse_scale: 1e300",
                   "mse_scale must be a positive number up to 1e150");
    CHECK_EQ(av_variant("  mse_scale: 4.0", "  mse_scale: 1e150"), NLA_OK);
    char *big = (char *)malloc(200000);
    strcpy(big, "kind: nla_model\n");
    for (int i = 0; i < 10000; i++) sprintf(big + strlen(big), "k%d: 1\n", i);
    expect_variant("kind: nla_model\n", big, "larger than");
    free(big);
}

/* ---- the pipeline ------------------------------------------------------- */

/* An on_token callback that records the tokens and stops after stop_after
   of them (0: never). */
typedef struct {
    int32_t ids[256];
    int n, stop_after;
} token_log;

static int log_token(void *user, int32_t token) {
    token_log *lg = (token_log *)user;
    if (lg->n < 256) lg->ids[lg->n] = token;
    lg->n++;
    return lg->stop_after && lg->n >= lg->stop_after;
}

/* An on_seq_token callback: each sequence's tokens and where `last` came;
   stops sequence stop_seq after stop_after tokens. */
typedef struct {
    int32_t ids[3][200];
    int n[3], lasts[3], last_at[3], stop_seq, stop_after;
} seq_log;

static int log_seq_token(void *user, int seq, int32_t token, int last) {
    seq_log *sl = (seq_log *)user;
    if (seq < 0 || seq > 2 || sl->n[seq] >= 200) return 1;
    if (last) { sl->lasts[seq]++; sl->last_at[seq] = sl->n[seq]; }
    sl->ids[seq][sl->n[seq]++] = token;
    return seq == sl->stop_seq && sl->n[seq] >= sl->stop_after;
}

/* Verbalizing the 3 vectors v3 together in sbat (n_seq >= 3), twice (the
   second time from the cached prefix), gives each one's ids (into ids[k *
   200], n[k]) and first logits as verbalizing it alone in one does. */
static void batched_as_alone(nla_session *sbat, nla_session *one, const float *v3, int32_t *ids,
                             int *n, const char *what) {
    static int32_t alone[200];
    static float blog[3 * V], again[V];
    int n1;
    for (int rep = 0; rep < 2; rep++) {
        nla_verbalize_params vp;
        memset(&vp, 0, sizeof vp);
        vp.first_logits = blog;
        CHECK_EQ(nla_verbalize_batch(sbat, v3, 3, &vp, ids, 200, n), NLA_OK);
        for (int k = 0; k < 3; k++) {
            vp.first_logits = again;
            nla_session_reset(one);
            CHECK_EQ(nla_verbalize(one, v3 + k * D, &vp, alone, 200, &n1), NLA_OK);
            CHECK_MSG(n[k] == n1 && !memcmp(ids + k * 200, alone, sizeof(int32_t) * (size_t)n1),
                      "%s: batched vector %d differs (%d vs %d ids)", what, k, n[k], n1);
            CHECK_MSG(!memcmp(blog + (size_t)k * V, again, sizeof(float) * V),
                      "%s: batched first logits of vector %d differ", what, k);
        }
    }
}

/* The tiny AV with two KV heads instead of one: its k and v projections
   stacked over their negation, so that the heads differ (written under
   tests/tmp into dir); NULL with err set on failure. */
static nla_model *make_gqa_av(char *dir, size_t cap) {
    nla_st *st = NULL;
    char path[128];
    size_t cl = 0;
    if (nla_st_open(G "av/model.safetensors", 0, &st, err, sizeof err)) return NULL;
    const int nt = nla_st_count(st);
    wtensor *w = (wtensor *)calloc((size_t)nt, sizeof *w);
    unsigned char *kv = (unsigned char *)malloc((size_t)nt * 2 * 8 * D * 2); /* [2 * hd, D] bf16 */
    char *config = slurp(G "av/config.json", &cl),
         *one = config ? strstr(config, "\"num_key_value_heads\": 1") : NULL;
    nla_model *m = NULL;
    for (int i = 0; w && kv && i < nt; i++) {
        nla_tensor t;
        nla_st_get(st, i, &t);
        w[i] =
            (wtensor){t.name, t.dtype, t.ndim, {t.shape[0], t.shape[1]}, t.data, (size_t)t.nbytes};
        if (strstr(t.name, "k_proj.weight") || strstr(t.name, "v_proj.weight")) {
            unsigned char *two = kv + (size_t)i * 2 * t.nbytes;
            memcpy(two, t.data, t.nbytes);
            memcpy(two + t.nbytes, t.data, t.nbytes);
            for (size_t b = 1; b < t.nbytes; b += 2) two[t.nbytes + b] ^= 0x80; /* bf16 sign bits */
            w[i].shape[0] *= 2;
            w[i].data = two;
            w[i].nbytes *= 2;
        }
    }
    tmp_dir(dir, cap, "gqa_av");
    if (one) one[sizeof "\"num_key_value_heads\": " - 1] = '2';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int bad = !w || !kv || !one || st_write(path, w, nt, NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    bad = bad || spit(path, config, cl);
    snprintf(path, sizeof path, "%s/nla_meta.yaml", dir);
    bad = bad || copy_file(G "av/nla_meta.yaml", path);
    if (bad) snprintf(err, sizeof err, "cannot write it under %s", dir);
    else m = open_nla(dir);
    free(w);
    free(kv);
    free(config);
    nla_st_close(st);
    return m;
}

static void test_pipeline(nla_model *target, nla_model *av, nla_model *ar) {
    /* tokenize the target text (BOS added) */
    size_t tl = 0;
    char *text = json_string_after(golden, "target_text", &tl);
    double want[64];
    int nt = json_nums_after(golden, "\"target_ids\"", want, 64), n = 0;
    int32_t ids[64];
    CHECK_EQ(nla_tokenize(nla_model_tokenizer(target), text, tl, NLA_TOKENIZE_BOS, ids, 64, &n),
             NLA_OK);
    int same = n == nt;
    for (int i = 0; same && i < n; i++) same = ids[i] == (int32_t)want[i];
    CHECK_MSG(same, "target ids differ");
    free(text);

    /* extract: block K at every position */
    long long rows;
    float *gk = load(G "target_blockK.npy", &rows), vk[64 * D];
    CHECK_EQ(rows, n);
    nla_session *s;
    CHECK_EQ(nla_session_new(target, NULL, &s), NLA_OK);
    CHECK_EQ(nla_extract(s, ids, n, 2, NULL, 0, vk), NLA_OK);
    double e_ext = rel_err(vk, gk, (size_t)n * D);
    CHECK_MSG(e_ext <= 1e-4, "extract: rel err %.3g", e_ext);
    int32_t pos[3] = {1, 7, 14};
    float v3[3 * D];
    CHECK_EQ(nla_extract(s, ids, n, 2, pos, 3, v3), NLA_OK);
    CHECK(!memcmp(v3, vk + 1 * D, D * sizeof(float)) &&
          !memcmp(v3 + 2 * D, vk + 14 * D, D * sizeof(float)));
    /* smell: an off-by-one layer is caught by the same comparison */
    float off[64 * D];
    CHECK_EQ(nla_extract(s, ids, n, 1, NULL, 0, off), NLA_OK);
    CHECK_MSG(rel_err(off, gk, (size_t)n * D) > 1e-2, "block K-1 must not pass for block K");
    CHECK_EQ(nla_extract(s, ids, n, 3, NULL, 0, off), NLA_OK);
    CHECK_MSG(rel_err(off, gk, (size_t)n * D) > 1e-2, "block K+1 must not pass for block K");
    int32_t bad_pos = 15;
    CHECK_EQ(nla_extract(s, ids, n, 2, &bad_pos, 1, off), NLA_ERR_RANGE);
    nla_session_free(s);
    printf("  extract: block K at %d positions, max rel err %.2e\n", n, e_ext);

    /* verbalize: first logits after the injection + greedy continuation */
    nla_session *sa, *sb;
    CHECK_EQ(nla_session_new(av, NULL, &sa), NLA_OK);
    CHECK_EQ(nla_session_new(av, NULL, &sb), NLA_OK);
    float *logits = (float *)malloc(sizeof(float) * V), *again = (float *)malloc(sizeof(float) * V);
    const char *gav = strstr(golden, "\"av\": [");
    double worst = 0;
    for (int k = 0; k < 3; k++) {
        char path[128];
        snprintf(path, sizeof path, G "av_first_logits_pos%d.npy", pos[k]);
        float *gl = load(path, NULL);
        nla_verbalize_params vp;
        memset(&vp, 0, sizeof vp);
        vp.max_new = 10;
        vp.first_logits = logits;
        int32_t out[10], out2[10];
        int n_out = 0, n_out2 = 0;
        CHECK_EQ(nla_verbalize(sa, vk + (size_t)pos[k] * D, &vp, out, 10, &n_out), NLA_OK);
        double el = rel_err(logits, gl, V);
        if (el > worst) worst = el;
        CHECK_MSG(el <= 1e-4, "AV first logits at position %d: rel err %.3g", pos[k], el);
        /* the golden greedy ids and margins for this position */
        const char *blk = gav;
        for (int j = 0; j <= k; j++) blk = strstr(blk + 1, "\"greedy\"");
        double g[10], mg[10];
        json_nums_after(blk, "\"greedy\"", g, 10);
        json_nums_after(blk, "\"top1_top2_margin\"", mg, 10);
        CHECK_EQ(n_out, 10);
        for (int i = 0; i < n_out; i++) {
            if (out[i] != (int32_t)g[i] && mg[i] <= 1e-3) break;
            CHECK_MSG(out[i] == (int32_t)g[i], "AV greedy pos %d step %d: %d vs %.0f", pos[k], i,
                      out[i], g[i]);
            if (out[i] != (int32_t)g[i]) break;
        }
        /* a fresh session (no cached prefix) gives the same */
        vp.first_logits = again;
        nla_session_reset(sb);
        CHECK_EQ(nla_verbalize(sb, vk + (size_t)pos[k] * D, &vp, out2, 10, &n_out2), NLA_OK);
        CHECK(n_out2 == n_out && !memcmp(out, out2, sizeof(int32_t) * (size_t)n_out) &&
              !memcmp(logits, again, sizeof(float) * V));

        if (k == 0) { /* smells, each caught by the golden logits check */
            nla_meta m;
            nla_model_get_meta(av, &m);
            float *e = (float *)malloc(sizeof(float) * 109 * D);
            nla_model_info in;
            nla_model_get_info(av, &in);
            const float *v = vk + (size_t)pos[k] * D;
            double nv = 0;
            for (int i = 0; i < D; i++) nv += (double)v[i] * v[i];
            nv = sqrt(nv);
            for (int variant = 0; variant < 3; variant++) {
                int32_t pr[109];
                int T = m.av_prompt_len, mk = m.av_marker_index;
                if (variant == 2) {
                    pr[0] = 2;
                    memcpy(pr + 1, m.av_prompt, sizeof(int32_t) * (size_t)T);
                    T++;
                    mk++;
                } /* second BOS */
                else
                    memcpy(pr, m.av_prompt, sizeof(int32_t) * (size_t)T);
                nla_embed_tokens(av, pr, T, e);
                if (variant == 1) /* sqrt(d) not applied to the token rows */
                    for (int i = 0; i < T * D; i++) e[i] /= in.embed_scale;
                for (int i = 0; i < D; i++)
                    e[(size_t)mk * D + i] =
                        (float)(v[i] * m.injection_scale / nv) *
                        (variant == 0 ? in.embed_scale : 1.0f); /* 0: sqrt(d) twice */
                nla_session *w;
                nla_session_new(av, NULL, &w);
                nla_batch b;
                memset(&b, 0, sizeof b);
                b.n_tokens = T;
                b.embeds = e;
                b.logits = again;
                CHECK_EQ(nla_forward(w, &b), NLA_OK);
                CHECK_MSG(rel_err(again, gl, V) > 1e-2, "smell %d would pass the golden check",
                          variant);
                nla_session_free(w);
            }
            free(e);
        }
        free(gl);
    }
    printf("  verbalize: 3 vectors, first logits max rel err %.2e, greedy ids identical\n", worst);

    /* batched: the three vectors decoded together give what one at a time gives */
    {
        nla_session_params bp;
        memset(&bp, 0, sizeof bp);
        bp.n_seq = 3;
        bp.n_ctx = 320;
        nla_session *sbat;
        CHECK_EQ(nla_session_new(av, &bp, &sbat), NLA_OK);
        float v3r[3 * D];
        for (int k = 0; k < 3; k++) memcpy(v3r + k * D, vk + (size_t)pos[k] * D, D * sizeof(float));
        static int32_t bids[3 * 200];
        int bn[3];
        batched_as_alone(sbat, sb, v3r, bids, bn, "the AV");
        /* the same with a copy of the AV that has two KV heads: the cached
           prefix is copied head by head to each vector's sequence */
        char gdir[64];
        nla_model *gav2 = make_gqa_av(gdir, sizeof gdir);
        nla_session *gbat = NULL, *gone = NULL;
        if (gav2 && nla_session_new(gav2, &bp, &gbat) == NLA_OK &&
            nla_session_new(gav2, NULL, &gone) == NLA_OK) {
            static int32_t gids[3 * 200];
            int gn[3];
            batched_as_alone(gbat, gone, v3r, gids, gn, "the AV with two KV heads");
        } else
            CHECK_MSG(0, "the AV with two KV heads: %s", err);
        nla_session_free(gbat);
        nla_session_free(gone);
        nla_model_close(gav2);
        /* on_seq_token streams each vector of the batch: its tokens in order,
           `last` on the final one (not on one the callback stops); stopping
           one vector leaves the others */
        for (int stop = 0; stop < 2; stop++) {
            static seq_log sl;
            static int32_t sids[3 * 200];
            int sn[3];
            nla_verbalize_params vp;
            memset(&vp, 0, sizeof vp);
            memset(&sl, 0, sizeof sl);
            sl.stop_seq = stop ? 1 : -1;
            sl.stop_after = 2;
            vp.on_seq_token = log_seq_token;
            vp.user = &sl;
            CHECK_EQ(nla_verbalize_batch(sbat, v3r, 3, &vp, sids, 200, sn), NLA_OK);
            for (int k = 0; k < 3; k++) {
                const int cut = stop && k == 1, nw = cut ? 2 : bn[k];
                CHECK_MSG(sn[k] == nw && sl.n[k] == nw &&
                              !memcmp(sl.ids[k], bids + k * 200, sizeof(int32_t) * (size_t)nw) &&
                              !memcmp(sids + k * 200, bids + k * 200,
                                      sizeof(int32_t) * (size_t)nw) &&
                              sl.lasts[k] == !cut && (cut || sl.last_at[k] == nw - 1),
                          "on_seq_token, vector %d (stop %d): %d ids, saw %d, last %d times at %d",
                          k, stop, sn[k], sl.n[k], sl.lasts[k], sl.last_at[k]);
            }
        }
        CHECK_EQ(nla_verbalize_batch(sbat, v3r, 4, NULL, bids, 200, bn),
                 NLA_ERR_ARG); /* more vectors than sequences */
        nla_session_free(sbat);
    }
    /* the streaming callback sees each token in order and stops the decode */
    nla_verbalize_params vp;
    memset(&vp, 0, sizeof vp);
    int32_t out[200], full[200];
    int n_out, n_full = 0;
    vp.max_new = 10;
    CHECK_EQ(nla_verbalize(sa, vk + D, &vp, full, 10, &n_full), NLA_OK);
    CHECK_EQ(n_full, 10);
    token_log lg;
    memset(&lg, 0, sizeof lg);
    vp.on_token = log_token;
    vp.user = &lg;
    lg.stop_after = 0; /* never stops: sees all 10, as they are written */
    CHECK_EQ(nla_verbalize(sa, vk + D, &vp, out, 10, &n_out), NLA_OK);
    CHECK(lg.n == n_full && n_out == n_full &&
          !memcmp(lg.ids, full, sizeof(int32_t) * (size_t)n_full));
    for (int k = 1; k <= 3; k++) {
        memset(&lg, 0, sizeof lg);
        lg.stop_after = k;
        CHECK_EQ(nla_verbalize(sa, vk + D, &vp, out, 10, &n_out), NLA_OK);
        CHECK_MSG(n_out == k && lg.n == k && !memcmp(out, full, sizeof(int32_t) * (size_t)k),
                  "stop after %d tokens: %d ids written, callback saw %d", k, n_out, lg.n);
    }
    memset(&vp, 0, sizeof vp);
    CHECK_EQ(nla_verbalize(sa, vk + D, &vp, out, 200, &n_out), NLA_OK); /* default max_new 200 */
    CHECK(n_out >= 1 && n_out <= 200);
    CHECK_EQ(nla_verbalize(sa, vk + D, &vp, out, 10, &n_out), NLA_ERR_ARG); /* cap < max_new */
    CHECK_EQ(nla_verbalize(sa, NULL, &vp, out, 200, &n_out), NLA_ERR_ARG);
    nla_session_free(sa);
    nla_session_free(sb);
    free(logits); free(again);

    /* reconstruct the three golden AR texts */
    float *gr = load(G "ar_recon.npy", NULL), rec[3 * D], rec2[3 * D];
    char *ar_text[3], *ex[3], *padded[3];
    size_t al[3];
    CHECK_EQ(json_strings_after(golden, "\"ar_texts\"", ar_text, al, 3), 3);
    const char *ar_ids_at = strchr(strstr(golden, "\"ar_ids\""), '['); /* the outer list */
    for (int i = 0; i < 3; i++) {
        char *a = strstr(ar_text[i], "<text>") + 6, *b = strstr(a, "</text>");
        ex[i] = (char *)malloc((size_t)(b - a) + 1);
        memcpy(ex[i], a, (size_t)(b - a));
        ex[i][b - a] = 0;
        padded[i] = (char *)malloc(strlen(ex[i]) + 8);
        sprintf(padded[i], " \n %s\n ", ex[i]);
        /* the AR input tokenizes to the golden ids */
        double w[128];
        ar_ids_at = strchr(ar_ids_at + 1, '['); /* the i-th inner list */
        int nw = json_nums_after(ar_ids_at, "[", w, 128), nx = 0;
        int32_t x[128];
        CHECK_EQ(
            nla_tokenize(nla_model_tokenizer(ar), ar_text[i], al[i], NLA_TOKENIZE_BOS, x, 128, &nx),
            NLA_OK);
        int ok = nx == nw;
        for (int j = 0; ok && j < nx; j++) ok = x[j] == (int32_t)w[j];
        CHECK_MSG(ok, "AR text %d tokenizes differently (%d vs %d ids)", i, nx, nw);
    }
    nla_session *sr;
    CHECK_EQ(nla_session_new(ar, NULL, &sr), NLA_OK);
    CHECK_EQ(nla_reconstruct(sr, (const char *const *)ex, 3, rec), NLA_OK);
    double er = rel_err(rec, gr, 3 * D);
    CHECK_MSG(er <= 1e-4, "reconstruct: rel err %.3g", er);
    CHECK_EQ(nla_reconstruct(sr, (const char *const *)padded, 3, rec2),
             NLA_OK); /* trimmed like training */
    CHECK(!memcmp(rec, rec2, sizeof rec));
    /* batched: explanations in one forward (sequences of 3, 2 + 1, and
       chunks of 5 rows that cut through them) give the bits of one at a
       time, as do groups made of explanations of different lengths */
    float one[3 * D];
    for (int i = 0; i < 3; i++)
        CHECK_EQ(nla_reconstruct(sr, (const char *const *)ex + i, 1, one + i * D), NLA_OK);
    CHECK(!memcmp(rec, one, sizeof rec));
    const int seqs[3] = {3, 2, 3}, batches[3] = {0, 0, 5};
    for (int k = 0; k < 3; k++) {
        nla_session_params bp;
        memset(&bp, 0, sizeof bp);
        bp.n_seq = seqs[k];
        bp.n_batch = batches[k];
        nla_session *sbat;
        CHECK_EQ(nla_session_new(ar, &bp, &sbat), NLA_OK);
        memset(rec2, 0, sizeof rec2);
        CHECK_EQ(nla_reconstruct(sbat, (const char *const *)ex, 3, rec2), NLA_OK);
        CHECK_MSG(!memcmp(rec2, one, sizeof rec2),
                  "batched reconstruct (n_seq %d, n_batch %d) differs", seqs[k], batches[k]);
        const char *bad[3] = {ex[0], NULL, ex[2]};
        CHECK_EQ(nla_reconstruct(sbat, bad, 3, rec2), NLA_ERR_ARG);
        CHECK(strstr(nla_session_errmsg(sbat), "explanation 1 is NULL") != NULL);
        nla_session_free(sbat);
    }
    nla_session *st;
    CHECK_EQ(nla_session_new(target, NULL, &st), NLA_OK);
    CHECK_EQ(nla_reconstruct(st, (const char *const *)ex, 1, rec2), NLA_ERR_ARG); /* not an AR */
    CHECK(strstr(nla_session_errmsg(st), "not an AR") != NULL);
    nla_session_free(st);
    nla_session_free(sr);
    printf("  reconstruct: 3 explanations, max rel err %.2e; batched (n_seq 2, 3) bit-identical\n",
           er);

    /* metrics against the golden, and the identity mse_nrm = 2 (1 - cos) */
    const char *mt = strstr(golden, "\"metrics\"");
    double worst_m = 0;
    for (int k = 0; k < 3; k++) {
        double p_, i_, mse, cs, fve;
        mt = strstr(mt, "\"position\": ");
        p_ = strtod(mt + 12, NULL);
        i_ = strtod(strstr(mt, "\"explanation_index\": ") + 21, NULL);
        mse = strtod(strstr(mt, "\"mse_nrm\": ") + 11, NULL);
        cs = strtod(strstr(mt, "\"cos\": ") + 7, NULL);
        fve = strtod(strstr(mt, "\"fve_nrm_B0.0302\": ") + 19, NULL);
        mt++;
        nla_scores sc;
        CHECK_EQ(nla_score(vk + (size_t)p_ * D, rec + (size_t)i_ * D, D, 4.0, 0.0302, &sc), NLA_OK);
        double e1 = fabs(sc.mse_nrm - mse) / fabs(mse), e2 = fabs(sc.cos - cs) / fabs(cs),
               e3 = fabs(sc.fve_nrm - fve) / fabs(fve);
        double e = e1 > e2 ? e1 : e2;
        e = e > e3 ? e : e3;
        if (e > worst_m) worst_m = e;
        CHECK_MSG(e <= 1e-4, "metrics %d: mse %.6f/%.6f cos %.6f/%.6f fve %.4f/%.4f", k, sc.mse_nrm,
                  mse, sc.cos, cs, sc.fve_nrm, fve);
        CHECK_NEAR(sc.mse_nrm, 2 * (1 - sc.cos), 1e-9);
    }
    double B, gB = strtod(strstr(golden, "\"own_set_baseline_B_over_all_target_positions\": ") + 48,
                          NULL);
    CHECK_EQ(nla_baseline(vk, n, D, 4.0, &B), NLA_OK);
    CHECK_MSG(fabs(B - gB) / gB <= 1e-4, "own-set baseline %.7f vs %.7f", B, gB);
    nla_scores sc;
    CHECK_EQ(nla_score(vk, vk, D, 4.0, 0, &sc), NLA_OK);
    CHECK(sc.mse_nrm < 1e-12 && fabs(sc.cos - 1) < 1e-9 && isnan(sc.fve_nrm));
    CHECK_EQ(nla_score(vk, vk, D, 0, 0, &sc), NLA_ERR_ARG);
    printf("  metrics: 3 pairs, max rel err %.2e; own-set baseline %.7f (golden %.7f)\n", worst_m,
           B, gB);
    for (int i = 0; i < 3; i++) { free(ar_text[i]); free(ex[i]); free(padded[i]); }
    free(gr);
    free(gk);
}

/* .npy reading: a shape whose element count overflows is refused; the header
   dict is read whole. */
static void test_npy(void) {
    const char hdr[] =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (549755813888, 33554432), }";
    char buf[128] = "\x93NUMPY\x01\x00";
    size_t hl = sizeof hdr - 1;
    buf[8] = (char)(hl + 1);
    buf[9] = 0;
    memcpy(buf + 10, hdr, hl);
    buf[10 + hl] = '\n';
    spit("tests/tmp/ovf.npy", buf, 11 + hl);
    int64_t sh[2];
    int nd;
    CHECK_EQ(nla_npy_read("tests/tmp/ovf.npy", NULL, 0, sh, &nd, err, sizeof err), NLA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "the shape (549755813888, 33554432) is larger than any file"), "%s", err);
    strcpy(err, "untouched");
    CHECK_EQ(nla_npy_read(NULL, NULL, 0, sh, &nd, err, sizeof err), NLA_ERR_ARG);
    CHECK(strcmp(err, "untouched") != 0);
    float v[6] = {1, 2, 3, 4, 5, 6}, r[6];
    int64_t s2[2] = {2, 3};
    CHECK_EQ(nla_npy_write("tests/tmp/v23.npy", v, 2, s2, err, sizeof err), NLA_OK);
    CHECK_EQ(nla_npy_read("tests/tmp/v23.npy", r, 6, sh, &nd, err, sizeof err), NLA_OK);
    CHECK(nd == 2 && sh[0] == 2 && sh[1] == 3 && !memcmp(v, r, sizeof v));
    CHECK_EQ(nla_npy_read("tests/tmp/v23.npy", r, 5, sh, &nd, err, sizeof err),
             NLA_ERR_BUFFER_TOO_SMALL);
    /* the header dict, whole: how numpy and others spell it is read; anything
       else (bytes after the dict, other or missing keys) is refused */
    static const struct { const char *h; int rows, ok; const char *msg; } hs[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 2, 1, NULL},
        {"{\"shape\": (3,2),\"descr\": \"<f4\", \"fortran_order\": False}", 3, 1, NULL},
        {"{'descr':'<f4','fortran_order':False,'shape':(6,)}", 6, 1, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }garbage", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} }", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'descr': '<f4'}", 2, 0, NULL},
        {"{'descr': '<f4', 'shape': (2, 3)}", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", 2, 0, NULL},
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", 2, 0, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3)}", 0, 0,
         "a shape dimension is not a number >= 0"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 1)}", 0, 0,
         "shape must be 1-D or 2-D"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,)}", 0, 0,
         "a shape dimension is 2^40 or more"},
    };
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
        char f[256] = "\x93NUMPY\x01\x00";
        const size_t n = strlen(hs[i].h);
        f[8] = (char)(n + 1);
        f[9] = 0;
        memcpy(f + 10, hs[i].h, n);
        f[10 + n] = '\n';
        memcpy(f + 11 + n, v, sizeof v);
        spit("tests/tmp/hdr.npy", f, 11 + n + sizeof v);
        memset(r, 0, sizeof r);
        const nla_status rc = nla_npy_read("tests/tmp/hdr.npy", r, 6, sh, &nd, err, sizeof err);
        CHECK_MSG(hs[i].ok ? rc == NLA_OK && sh[0] == hs[i].rows && !memcmp(v, r, sizeof v)
                           : rc != NLA_OK && strstr(err, "tests/tmp/hdr.npy") &&
                                 (!hs[i].msg || strstr(err, hs[i].msg)),
                  "header %s: %s (%s)", hs[i].h, nla_strerror(rc), err);
    }
}

/* Explanation parsing: the first <explanation>...</explanation>, trimmed. */
static void test_parse(void) {
    size_t a, n;
    const char *r1 = "<explanation>\nTopic: x.\n\nFinal token.\n</explanation><end_of_turn>";
    CHECK_EQ(nla_parse_explanation(r1, strlen(r1), &a, &n), 1);
    CHECK(n == 23 && !memcmp(r1 + a, "Topic: x.\n\nFinal token.", 23));
    const char *r2 = "  no tags here \n";
    CHECK_EQ(nla_parse_explanation(r2, strlen(r2), &a, &n), 0);
    CHECK(n == 12 && !memcmp(r2 + a, "no tags here", 12));
    const char *r3 = "<explanation> truncated";
    CHECK_EQ(nla_parse_explanation(r3, strlen(r3), &a, &n), 0);
    const char *r4 = "x<explanation>a</explanation><explanation>b</explanation>";
    CHECK_EQ(nla_parse_explanation(r4, strlen(r4), &a, &n), 1);
    CHECK(n == 1 && r4[a] == 'a');
    a = n = 7; /* NULL: nothing found, no crash */
    CHECK_EQ(nla_parse_explanation(NULL, 5, &a, &n), 0);
    CHECK(a == 0 && n == 0);
    CHECK_EQ(nla_parse_explanation(r1, strlen(r1), NULL, NULL), 0);
}

/* A copy of the AV folder (weights linked) whose generation_config.json
   names other stop ids: eos, as JSON. Returns the open status. */
static nla_status av_eos_open(const char *eos, nla_model **m) {
    const char *dir = "tests/tmp/av_eos";
    char p[512], src[512];
    mkdir("tests/tmp", 0755);
    mkdir(dir, 0755);
    static const char *const files[] = {"config.json", "model.safetensors", "nla_meta.yaml"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        snprintf(src, sizeof src, "../../data/nla/av/%s", files[i]);
        remove(p);
        CHECK(symlink(src, p) == 0);
    }
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    snprintf(src, sizeof src, "{\"bos_token_id\": 2, \"eos_token_id\": %s}\n", eos);
    CHECK(spit(p, src, strlen(src)) == 0);
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.tokenizer = TOKJSON;
    *m = NULL;
    return nla_model_open(dir, &mp, m, err, sizeof err);
}

static nla_model *av_with_eos(const char *eos) {
    nla_model *m = NULL;
    nla_status rc = av_eos_open(eos, &m);
    CHECK_MSG(rc == NLA_OK, "open with eos %s: %s", eos, err);
    return m;
}

/* Stop ids that are no token ids, or more than nla_model_info holds: refused,
   naming the file, never dropped or cut. */
static void test_eos_errors(void) {
    static const struct { const char *eos, *msg; nla_status rc;
    } bad[] = {{"[-5, \"106\", 99999999]", "eos_token_id -5 is not a token id", NLA_ERR_RANGE},
               {"[1, \"106\"]", "eos_token_id \"106\" is not a token id", NLA_ERR_FORMAT},
               {"[1, 262144]",
                "eos_token_id 262144 is not a token id: eos ids are integers in [0, 262144)",
                NLA_ERR_RANGE},
               {"1.5", "eos_token_id 1.5 is not", NLA_ERR_FORMAT},
               {"[1, [106]]", "eos_token_id (a list) is not", NLA_ERR_FORMAT},
               {"[1, 2, 3, 4, 5, 6, 7, 8, 9]", "eos_token_id lists 9 ids; at most 8 are supported",
                NLA_ERR_RANGE}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        nla_model *m = NULL;
        nla_status rc = av_eos_open(bad[i].eos, &m);
        CHECK_MSG(rc == bad[i].rc && strstr(err, "av_eos/generation_config.json: ") &&
                      strstr(err, bad[i].msg),
                  "eos %s: %s (%s)", bad[i].eos, nla_strerror(rc), err);
        nla_model_close(m);
    }
    nla_model *m =
        NULL; /* eight ids, the last of the vocabulary among them; null keeps config.json's */
    nla_model_info in;
    CHECK_EQ(av_eos_open("[1, 2, 3, 4, 5, 6, 7, 262143]", &m), NLA_OK);
    nla_model_get_info(m, &in);
    CHECK(in.n_eos == 8 && in.eos_ids[7] == 262143);
    nla_model_close(m);
    CHECK_EQ(av_eos_open("null", &m), NLA_OK);
    nla_model_get_info(m, &in);
    CHECK(in.n_eos == 2 && in.eos_ids[0] == 1 && in.eos_ids[1] == 106);
    nla_model_close(m);
}

/* The explanation step: the last id dropped when it is one of the AV's own
   stop ids (config / generation_config), detokenized, the tags parsed; and
   nla_verbalize stops on the same ids. */
static void test_explanation(nla_model *av) {
    const char *text = "<explanation>\nTopic: x.\n</explanation>";
    int32_t ids[64];
    int n = 0;
    CHECK_EQ(nla_tokenize(nla_model_tokenizer(av), text, strlen(text), 0, ids, 60, &n), NLA_OK);
    char raw[256];
    nla_explanation ex;
    for (int k = 0; k < 3; k++) { /* no stop id, then <eos> (1), then <end_of_turn> (106) */
        ids[n] = k == 1 ? 1 : 106;
        CHECK_EQ(nla_explanation_decode(av, ids, n + (k > 0), raw, sizeof raw, &ex), NLA_OK);
        CHECK_MSG(ex.raw_len == strlen(text) && !strcmp(raw, text), "stop id %d: raw '%s'",
                  k ? ids[n] : -1, raw);
        CHECK(ex.parsed == 1 && ex.len == 9 && !memcmp(raw + ex.start, "Topic: x.", 9));
    }
    /* sizing: the length without a buffer, then exactly enough room */
    CHECK_EQ(nla_explanation_decode(av, ids, n + 1, NULL, 0, &ex), NLA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ(ex.raw_len, strlen(text));
    CHECK_EQ(nla_explanation_decode(av, ids, n + 1, raw, strlen(text), &ex),
             NLA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ(nla_explanation_decode(av, ids, n + 1, raw, strlen(text) + 1, &ex), NLA_OK);
    /* a stop id inside the text stays; an id outside the vocabulary is an error */
    int32_t mid[3] = {106, ids[0], 106};
    CHECK_EQ(nla_explanation_decode(av, mid, 3, raw, sizeof raw, &ex), NLA_OK);
    CHECK_MSG(!strncmp(raw, "<end_of_turn>", 13) && ex.parsed == 0, "raw '%s'", raw);
    int32_t bad = 300000;
    CHECK_EQ(nla_explanation_decode(av, &bad, 1, raw, sizeof raw, &ex), NLA_ERR_RANGE);
    CHECK_EQ(nla_explanation_decode(NULL, ids, n, raw, sizeof raw, &ex), NLA_ERR_ARG);

    /* another model's stop ids: only <eos> stops, <end_of_turn> is text */
    nla_model *other = av_with_eos("[1]");
    if (!other) return;
    ids[n] = 106;
    CHECK_EQ(nla_explanation_decode(other, ids, n + 1, raw, sizeof raw, &ex), NLA_OK);
    CHECK_MSG(ex.raw_len == strlen(text) + 13 && !strcmp(raw + strlen(text), "<end_of_turn>"),
              "raw '%s'", raw);
    nla_model_close(other);

    /* nla_verbalize stops on the model's ids: make the 4th greedy token a stop id */
    long long rows = 0;
    float *vk = load(G "target_blockK.npy", &rows);
    nla_session *s = NULL;
    int32_t out[10], out2[10];
    int n_out = 0, n_out2 = 0;
    nla_verbalize_params vp;
    memset(&vp, 0, sizeof vp);
    vp.max_new = 10;
    CHECK_EQ(nla_session_new(av, NULL, &s), NLA_OK);
    CHECK_EQ(nla_verbalize(s, vk + D, &vp, out, 10, &n_out), NLA_OK);
    nla_session_free(s);
    char eos[32];
    snprintf(eos, sizeof eos, "[%d]", out[3]);
    other = av_with_eos(eos);
    CHECK_EQ(nla_session_new(other, NULL, &s), NLA_OK);
    CHECK_EQ(nla_verbalize(s, vk + D, &vp, out2, 10, &n_out2), NLA_OK);
    int first = 0;
    while (out[first] != out[3]) first++;
    CHECK_MSG(n_out == 10 && n_out2 == first + 1 &&
                  !memcmp(out, out2, sizeof(int32_t) * (size_t)n_out2),
              "stop id %d: %d ids, want %d", out[3], n_out2, first + 1);
    nla_session_free(s);
    nla_model_close(other);
    free(vk);
}

int main(void) {
    FILE *f = fopen(TOKJSON, "rb");
    if (!f) {
        printf("%s is missing: run 'make weights/tokenizer.json'\n0 passed, 1 failed\n", TOKJSON);
        return 1;
    }
    fclose(f);
    golden = slurp(G "golden.json", NULL);
    nla_model *target = open_nla(G "target"), *av = open_nla(G "av"), *ar = open_nla(G "ar");
    if (target && av && ar) {
        test_meta(av, ar);
        test_sidecar_errors();
        test_eos_errors();
        test_pipeline(target, av, ar);
        test_parse();
        test_explanation(av);
        test_npy();
    }
    nla_model_close(target); nla_model_close(av); nla_model_close(ar);
    free(golden);
    return test_report();
}
