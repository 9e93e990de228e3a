/* nla.h - Natural Language Autoencoders on Gemma 3, on the CPU, in one C file.

   An NLA is a pair of fine-tuned Gemma 3 models: the AV (activation verbalizer)
   reads a residual-stream vector of a target model and writes an explanation;
   the AR (activation reconstructor) reads the explanation and predicts the
   vector back. nla.c loads Hugging Face Gemma 3 checkpoints as downloaded
   (safetensors, config.json) and runs the exact forward pass on the CPU.

   Usage (error checks and frees elided; t, av, ar opened with
   nla_model_open and a session made for each with nla_session_new):

       int32_t ids[64], out[200]; int n, n_out; float v[3840], r[3840];
       char raw[4096]; nla_explanation ex; nla_meta mt; nla_scores sc;
       nla_model_get_meta(ar, &mt);                    // K, mse_scale, baseline
       nla_tokenize(nla_model_tokenizer(t), text, len, NLA_TOKENIZE_BOS, ids, 64, &n);
       nla_extract(st, ids, n, mt.layer, &pos, 1, v);  // block K at `pos`
       nla_verbalize(sav, v, NULL, out, 200, &n_out);  // AV: ids of the text
       nla_explanation_decode(av, out, n_out, raw, sizeof raw, &ex);
       raw[ex.start + ex.len] = 0;                     // the explanation alone
       const char *expl = raw + ex.start;
       nla_reconstruct(sar, &expl, 1, r);              // AR: back to a vector
       nla_score(v, r, mt.d_model, mt.mse_scale, mt.fve_baseline, &sc);

   Rules.
   - Ownership: anything made by nla_X_open/new is released by nla_X_close/
     free; every close/free accepts NULL. Free all sessions before closing
     their model. The library never frees caller memory and returns no heap
     memory: outputs go to caller buffers.
   - Errors: every fallible call returns nla_status (NLA_OK = 0).
     nla_strerror() names the code; nla_session_errmsg() (or the errbuf of
     nla_model_open) says what exactly was wrong: file, tensor, line.
     The library never exits, aborts or prints.
   - Threads: an nla_model is immutable after open and may be shared by any
     number of threads; an nla_session belongs to one thread at a time.
     No global mutable state.
   - Params structs: zero means default; pass NULL for all defaults.

   Version 0.3.0. MIT licence (see LICENSE). */
#ifndef NLA_H
#define NLA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version's one home: these three numbers (the comment at the top of
   this file and README.md repeat them; tests/test_api.c checks both). */
#define NLA_VERSION_MAJOR 0 /* bumped on breaking API changes */
#define NLA_VERSION_MINOR 3 /* bumped on compatible additions */
#define NLA_VERSION_PATCH 0 /* bumped on fixes */
#define NLA_VERSION_NUMBER (NLA_VERSION_MAJOR * 10000 + NLA_VERSION_MINOR * 100 + NLA_VERSION_PATCH)
#define NLA_VERSION_STR_(x) #x
#define NLA_VERSION_STR(x) NLA_VERSION_STR_(x)
/* The version as a string literal: "0.3.0". */
#define NLA_VERSION                                                                   \
    NLA_VERSION_STR(NLA_VERSION_MAJOR) "." NLA_VERSION_STR(NLA_VERSION_MINOR) "." \
        NLA_VERSION_STR(NLA_VERSION_PATCH)

/* Runtime version string (NLA_VERSION of the build): lets a caller catch a
   mismatched build. */
const char *nla_version(void);

/* ---- Errors ------------------------------------------------------------- */

typedef enum {
    NLA_OK = 0,
    NLA_ERR_IO = 1,               /* a file could not be opened or read */
    NLA_ERR_NOMEM = 2,            /* an allocation failed */
    NLA_ERR_FORMAT = 3,           /* malformed file: safetensors, JSON, shapes */
    NLA_ERR_UNSUPPORTED = 4,      /* well-formed but not supported (dtype, rope type) */
    NLA_ERR_ARG = 5,              /* invalid argument from the caller */
    NLA_ERR_RANGE = 6,            /* a value is out of range (token id, context) */
    NLA_ERR_BUFFER_TOO_SMALL = 7, /* caller buffer too small; required size written */
    NLA_ERR_BUSY = 8,             /* in use: a model with live sessions, a locked results folder
                                     or output file */
    NLA_ERR_CANCELLED = 9,        /* a callback asked to stop */
    NLA_ERR_NONFINITE = 10        /* a NaN or Inf in an input vector, or produced by
                                     the forward pass (the message names the row or block) */
} nla_status;

/* Static text for a status code; never NULL. */
const char *nla_strerror(nla_status status);

/* ---- Safetensors -------------------------------------------------------- */

/* A read-only view of a safetensors checkpoint: one file, an index file
   (*.index.json) naming its shards, or a folder holding
   model.safetensors.index.json or model.safetensors. Every header is validated as the format
   demands (lengths, offsets, overlaps, shapes, dtypes) before anything is used. */
typedef struct nla_st nla_st;

typedef struct {
    const char *name;   /* tensor name, borrowed from the nla_st */
    const char *dtype;  /* "BF16", "F32", ... as written in the header */
    int ndim;
    int64_t shape[8];
    const void *data;   /* nbytes bytes, not necessarily aligned */
    uint64_t nbytes;
    const char *file;   /* file name (without folder) holding it */
} nla_tensor;

nla_status nla_st_open(const char *path, int no_mmap, nla_st **out, char *errbuf,
                       size_t errbuf_size);
void nla_st_close(nla_st *st);
int nla_st_count(const nla_st *st);
/* Tensor i (0 <= i < count), in name order. */
nla_status nla_st_get(const nla_st *st, int i, nla_tensor *out);
/* Index of the tensor with this exact name, or -1. */
int nla_st_find(const nla_st *st, const char *name);
/* Value of a __metadata__ key of the first file holding one, or NULL. */
const char *nla_st_metadata(const nla_st *st, const char *key);

/* Fills n bytes of tensor `index` starting at byte `offset`; nonzero
   return aborts the write. */
typedef int (*nla_fill_fn)(void *user, int index, uint64_t offset, void *buf, size_t n);

/* Writes tensors t[0..n) (name, dtype, ndim, shape, data, nbytes; file is
   ignored) as one safetensors file, laid out in the order given, with
   __metadata__ from n_meta (key, value) string pairs in meta. A tensor with
   data NULL is produced in chunks by fill (for files larger than memory).
   The file appears whole or not at all (as nla_file_write writes).
   NLA_ERR_ARG for a tensor named "__metadata__" or a NULL key or value. */
nla_status nla_st_write(const char *path, const nla_tensor *t, int n, const char *const *meta,
                        int n_meta, nla_fill_fn fill, void *user, char *errbuf, size_t errbuf_size);

/* Writes n bytes as the file path atomically, as every file this library
   writes: into path.tmp beside it, synced to the disk, then renamed over
   it, and its folder synced (POSIX), so that a failure (a full disk, a
   kill) leaves the old file as it was, and the new name outlives a power
   cut. The message names the file and the system's reason. path.tmp is
   locked while it is written (POSIX fcntl): NLA_ERR_BUSY while another
   writer has it, another process or, on Linux (open-file locks), another
   thread of this one. An existing path that is not a regular file (a
   folder, a device, a FIFO; POSIX) is refused with NLA_ERR_IO, never
   replaced; a symbolic link at path is replaced, not what it points to. */
nla_status nla_file_write(const char *path, const void *data, size_t n, char *errbuf,
                          size_t errbuf_size);

/* ---- Model -------------------------------------------------------------- */

typedef struct nla_model nla_model;
typedef struct nla_session nla_session;
typedef struct nla_tokenizer nla_tokenizer;

/* Weight formats: as stored (f32, f16, bf16), or quantized in blocks of 32
   (Q8_0: int8 + f16 scale, 8.5 bits; Q4_0: 4-bit + f16 scale, 4.5 bits). */
typedef enum {
    NLA_DTYPE_F32 = 0, NLA_DTYPE_F16 = 1, NLA_DTYPE_BF16 = 2, NLA_DTYPE_Q8_0 = 3, NLA_DTYPE_Q4_0 = 4
} nla_dtype;

/* Quantization of the matrices at load time. */
typedef enum { NLA_QUANT_NONE = 0, NLA_QUANT_Q8_0 = 1, NLA_QUANT_Q4_0 = 2 } nla_quant;

/* How the embedding scale sqrt(hidden_size) is rounded before it multiplies
   the embedding rows. */
typedef enum {
    NLA_EMBED_SCALE_BF16 = 0,   /* default: rounded to bf16 (Google's reference,
                                   HF on bf16 weights, what the NLAs trained with) */
    NLA_EMBED_SCALE_STORED = 1, /* rounded to the stored dtype (HF's rule) */
    NLA_EMBED_SCALE_EXACT = 2   /* unrounded float */
} nla_embed_scale;

typedef struct {
    nla_embed_scale embed_scale; /* default NLA_EMBED_SCALE_BF16 */
    int no_mmap;                 /* nonzero: read() the weights into memory
                                    instead of mapping them. Default 0. */
    nla_quant quant;             /* quantize the matrices at load (those
                                    whose width is a multiple of 32);
                                    default NLA_QUANT_NONE: run as stored */
    const char *tokenizer;       /* tokenizer.json (or a folder holding one) to
                                    load with the model; default NULL: the
                                    model folder's tokenizer.json if there is
                                    one, else the model has no tokenizer */
    const nla_tokenizer *shared_tokenizer; /* an open tokenizer to use instead
                                    (borrowed: it must outlive the model), so
                                    that an NLA trio parses tokenizer.json once */
} nla_model_params;

/* Opens a Gemma 3 checkpoint: a folder as downloaded from Hugging Face
   (config.json and model.safetensors, or model.safetensors.index.json and its
   shards), or the path of a .safetensors or index file with config.json
   beside it.
   Weights stay in their stored dtype (f32, f16 or bf16) and are mapped, not
   copied. On failure *out is NULL and errbuf (may be NULL) holds a message
   naming the file and the problem. */
nla_status nla_model_open(const char *path, const nla_model_params *params,
                          nla_model **out, char *errbuf, size_t errbuf_size);

/* Releases the model. Returns NLA_ERR_BUSY (and frees nothing) while sessions
   made from it are alive. NULL is a no-op returning NLA_OK. */
nla_status nla_model_close(nla_model *model);

/* Writes the model as it is held into folder dir (which must exist):
   model.safetensors with the matrices in their current form (quantized
   groups of 16 rows as U8 tensors, the format in __metadata__ "nla.quant":
   "q8_0x16" or "q4_0x16"; nla.c section 6 has the layout), the other
   tensors as stored, and copies of config.json, generation_config.json,
   the tokenizer files, nla_meta.yaml and value_head.safetensors. A
   quantized save loads by mapping, with no conversion, and computes
   exactly what quantizing on load computes. A folder that already holds a
   model (config.json, model.safetensors, its .index.json, nla_meta.yaml or
   value_head.safetensors) is refused: NLA_ERR_ARG, nothing written. */
nla_status nla_model_save(const nla_model *model, const char *dir, char *errbuf,
                          size_t errbuf_size);

/* What nla_model_get_info copies out. */
typedef struct {
    char architecture[64];      /* "Gemma3ForCausalLM", ... */
    int n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff;
    int vocab_size;             /* embedding rows */
    int sliding_window;
    int max_position_embeddings;
    int n_global_layers;        /* full-attention layers */
    float query_pre_attn_scalar;
    float rope_theta_local, rope_theta_global;
    float rope_factor_global;   /* linear scaling factor, 1 = none */
    float rms_norm_eps;
    float embed_scale;          /* the value in use, after rounding */
    float final_logit_softcap;  /* 0 = none */
    int tied_embeddings;        /* 1: logits use the embedding matrix */
    int has_final_norm;         /* 0 for an NLA AR backbone: no logits */
    int bos_id;
    int n_eos;  int eos_ids[8]; /* generation stop ids */
    nla_dtype dtype;            /* dtype of the matrices (after quantization) */
    uint64_t n_params;          /* parameters of the text model */
    uint64_t weight_bytes;      /* bytes of those parameters as stored */
    uint64_t quant_bytes;       /* bytes of the matrices quantized at load (0: none) */
    uint64_t read_bytes;        /* bytes one decoded token reads: every matrix and
                                   the LM head as held (the bandwidth bound) */
    int n_files;                /* safetensors files */
} nla_model_info;

void nla_model_get_info(const nla_model *model, nla_model_info *info);

/* 1 if layer i uses full (global) attention, 0 if sliding-window, -1 if i is
   out of range. */
int nla_model_layer_is_global(const nla_model *model, int layer);

/* Writes the input-embedding rows of n token ids into out [n, d_model]:
   embedding row * embed scale, in float. These are the rows nla_forward starts
   from; a caller may overwrite any of them (NLA injection) and pass them back
   in nla_batch.embeds. */
nla_status nla_embed_tokens(const nla_model *model, const int32_t *ids, int n, float *out);

/* ---- Session ------------------------------------------------------------ */

typedef struct {
    int n_ctx;     /* context length in tokens; default min(4096,
                      max_position_embeddings) */
    int n_batch;   /* rows per internal forward chunk; default 256 */
    int n_threads; /* threads for matmuls and attention (OpenMP builds);
                      default: OpenMP's default, 1 without OpenMP */
    uint64_t seed; /* sampling RNG seed; default 0 is a fixed seed */
    int n_seq;     /* independent sequences the cache holds (each n_ctx
                      long), for batched decoding; default 1 */
} nla_session_params;

/* A session holds the KV cache, scratch buffers, the RNG and the last error.
   Its memory is allocated here, once. */
nla_status nla_session_new(const nla_model *model, const nla_session_params *params,
                           nla_session **out);
void nla_session_free(nla_session *s);

/* Empties the KV cache (n_past = 0). The RNG is not touched. */
void nla_session_reset(nla_session *s);

/* Reseeds the sampling RNG. */
void nla_session_seed(nla_session *s, uint64_t seed);

/* Tokens held in the KV cache (of sequence 0). */
int nla_session_n_past(const nla_session *s);

/* Forgets the cached positions n.. of sequence 0, so the next forward
   continues from position n (to try another continuation of a prompt).
   NLA_ERR_RANGE when a sliding-window layer's ring has already dropped keys
   that position n needs (then reset and prefill again). */
nla_status nla_session_rewind(nla_session *s, int n);

/* The detailed message of the last failed call on s ("" if none). Borrowed;
   valid until the next call on s. */
const char *nla_session_errmsg(const nla_session *s);

/* ---- Forward pass ------------------------------------------------------- */

/* Called after block `layer` (0-based) with the residual stream of the rows
   being processed: resid [n_rows, d_model], rows at absolute positions
   pos0 .. pos0+n_rows-1. It may read or overwrite resid; what it leaves there
   is what the next block reads. Long batches are processed in chunks of
   n_batch rows, so the hook may be called several times per layer (in order
   of position). A nonzero return cancels the forward: nla_forward returns
   NLA_ERR_CANCELLED and the session is reset (its cache emptied), since a
   partly run batch may have overwritten sliding-window cache slots. */
typedef int (*nla_residual_fn)(void *user, int layer, int pos0, int n_rows, int d_model,
                               float *resid);

typedef struct {
    int n_tokens;          /* rows to append after the n_past cached ones */
    const int32_t *ids;    /* [n_tokens] token ids, or NULL if embeds is set */
    const float *embeds;   /* [n_tokens, d_model] input rows (already scaled,
                              see nla_embed_tokens); overrides ids */
    int n_blocks;          /* run blocks 0..n_blocks-1 only (stop after
                              block n_blocks-1); default 0 = all. With fewer
                              than all blocks no logits can be asked for, and
                              later calls may not run more blocks than this
                              until nla_session_reset. */
    float *logits;         /* out [n_logit_rows, vocab] or NULL */
    const int32_t *logit_rows; /* rows (0..n_tokens-1) that get logits (and
                              residual rows); NULL = the last row only */
    int n_logit_rows;      /* entries in logit_rows */
    int all_logits;        /* nonzero: logits for every row ([n_tokens, vocab]) */
    float *hidden;         /* out [n_blocks, n_tokens, d_model] or NULL: the
                              residual after each block, before the final norm
                              (block i = HF hidden_states[i+1]) */
    nla_residual_fn hook;  /* optional, see above */
    void *hook_user;
    const int32_t *seq;    /* [n_tokens] sequence of each row (0..n_seq-1),
                              or NULL: all sequence 0. Each row goes after
                              what its sequence holds, rows of one sequence
                              in order; several sequences share every weight
                              read (batched decoding and prefill). With seq
                              there is no hook (whose pos0 assumes one
                              sequence). */
    float *residual;       /* out [selected rows, d_model] or NULL: the
                              residual after the last block run, before the
                              final norm, of the rows that logit_rows or
                              all_logits select (also with n_blocks < all,
                              where there are no logits) */
} nla_batch;

/* Runs the batch through the model, appending its keys and values to the
   session's KV cache. Batched prefill and one-token decode are the same call.
   NLA_ERR_NONFINITE when embeds hold a NaN or Inf (the message names the
   row), or when the residual stream after a block or the logits do (it names
   the block and the position; the session is reset). */
nla_status nla_forward(nla_session *s, const nla_batch *batch);

/* ---- Tokenizer ---------------------------------------------------------- */

/* The Gemma 3 tokenizer, read from the tokenizer.json that ships with every
   checkpoint: BPE over the merge list with byte fallback, spaces as U+2581,
   added tokens matched on the raw text first (longest match wins). Immutable
   after open; share it freely between threads and models
   (nla_model_params.shared_tokenizer). path: a tokenizer.json file or a
   folder holding one. */
nla_status nla_tokenizer_open(const char *path, nla_tokenizer **out, char *errbuf,
                              size_t errbuf_size);
void nla_tokenizer_close(nla_tokenizer *t);

/* The tokenizer loaded with a model, or NULL when its folder had none.
   Borrowed: valid until the model is closed. */
const nla_tokenizer *nla_model_tokenizer(const nla_model *model);

/* Number of ids (262145 for Gemma 3: 262144 + <image_soft_token>). */
int nla_tokenizer_n_ids(const nla_tokenizer *t);

/* Id of an exact piece or added token ("<end_of_turn>", "\u2581the"), or -1. */
int32_t nla_tokenizer_find(const nla_tokenizer *t, const char *piece);

/* The stored piece of an id (U+2581 for spaces, "<0x0A>" for byte tokens),
   borrowed, not NUL-terminated: *len bytes. NULL for an unknown id. */
const char *nla_tokenizer_piece(const nla_tokenizer *t, int32_t id, size_t *len);

#define NLA_TOKENIZE_BOS 1        /* prepend <bos> (2), as HF's post-processor */
#define NLA_TOKENIZE_NO_SPECIAL 2 /* added tokens in the text stay text: "<bos>"
                                     is 3 ordinary tokens, not id 2 */

/* Largest number of ids nla_tokenize can write for len bytes of text. */
#define nla_tokenize_bound(len) ((len) + 1)

/* Encodes len bytes of UTF-8 text into ids (capacity cap) and writes the
   count to *n_ids. Bytes that are not valid UTF-8 become their byte tokens
   <0xNN>, so any input decodes back byte for byte, except a typed U+2581,
   which decodes as a space (as in Hugging Face). Returns
   NLA_ERR_BUFFER_TOO_SMALL (with the needed count in *n_ids) if cap is too
   small. flags: NLA_TOKENIZE_* (another bit: NLA_ERR_ARG). */
nla_status nla_tokenize(const nla_tokenizer *t, const char *text, size_t len, int flags,
                        int32_t *ids, int cap, int *n_ids);

/* Decodes ids into text: U+2581 -> space, byte tokens -> their bytes, added
   and special tokens as written. Writes *len bytes and a NUL when it fits;
   NLA_ERR_BUFFER_TOO_SMALL (with the needed length in *len) otherwise.
   NLA_ERR_RANGE for an id outside the vocabulary. */
nla_status nla_detokenize(const nla_tokenizer *t, const int32_t *ids, int n, char *out, size_t cap,
                          size_t *len);

/* Streaming decode, one token at a time: holds back the bytes of a UTF-8
   character that later tokens complete, so every call outputs whole
   characters. Zero-initialise the state; call with id -1 to flush what is
   held back at the end. out needs 3 bytes more than the longest decoded
   piece: 100 bytes for Gemma 3's vocabulary. */
typedef struct {
    unsigned char held[4];
    int n_held;
} nla_detok_state;

nla_status nla_detokenize_next(const nla_tokenizer *t, nla_detok_state *st, int32_t id, char *out,
                               size_t cap, size_t *len);

/* ---- Chat template ------------------------------------------------------ */

typedef struct {
    const char *role;    /* "system" (first only), "user", "assistant" */
    const char *content;
} nla_chat_message;

/* Renders a conversation exactly as Gemma 3's chat template does:
   "<bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n...",
   a leading system message folded into the first user turn, contents
   trimmed, assistant renamed model. As the template checks, every
   even-numbered message (after the system one) must be "user" and no odd
   one may be (NLA_ERR_ARG otherwise, explained in errbuf); other roles at
   odd positions are written as given. add_generation_prompt
   appends "<start_of_turn>model\n". Output as nla_detokenize's. Tokenize the
   result without NLA_TOKENIZE_BOS: it already starts with <bos>. */
nla_status nla_chat_render(const nla_chat_message *msgs, int n, int add_generation_prompt,
                           char *out, size_t cap, size_t *len, char *errbuf, size_t errbuf_size);

/* The same from JSON text: a list of {"role": ..., "content": ...}. */
nla_status nla_chat_render_json(const char *json, size_t json_len, int add_generation_prompt,
                                char *out, size_t cap, size_t *len, char *errbuf,
                                size_t errbuf_size);

/* ---- Decoding ----------------------------------------------------------- */

/* Called with each generated token; nonzero stops generation (the token is
   kept in the output). */
typedef int (*nla_token_fn)(void *user, int32_t token);

/* The same for sequence `seq` of a batch: `last` is 1 when the token ends
   that sequence (a stop id, or max_new reached); nonzero stops it alone. */
typedef int (*nla_seq_token_fn)(void *user, int seq, int32_t token, int last);

typedef struct {
    int max_new;           /* tokens to generate at most; required (> 0) */
    float temperature;     /* 0 (default) = greedy */
    int top_k;             /* 0 = no top-k cut */
    float top_p;           /* 0 or 1 = no nucleus cut */
    const int32_t *stop_ids; /* generation stops after one of these (ids of
                              the vocabulary, else NLA_ERR_RANGE); NULL =
                              the model's eos ids (generation_config.json) */
    int n_stop_ids;
    int no_stop;           /* nonzero: ignore every stop id */
    const float *prompt_embeds; /* optional [n_prompt, d_model] rows used
                              instead of the prompt ids' embeddings */
    nla_token_fn on_token; /* optional streaming callback */
    void *user;
} nla_generate_params;

/* Appends the prompt (n_prompt >= 1 ids; the session's cache may already hold
   earlier tokens) and generates up to max_new tokens into out (capacity
   max_new), writing the count to *n_out. The stop token, when reached, is the
   last token written. Sampling draws from the session RNG. Vocabulary rows at
   or past 262144 (image/padding rows of multimodal checkpoints) are never
   chosen. */
nla_status nla_generate(nla_session *s, const int32_t *prompt, int n_prompt,
                        const nla_generate_params *params, int32_t *out, int *n_out);

/* ---- NLA: extract, verbalize, reconstruct, score ---------------------- */

/* The NLA constants of an AV or AR model, from its nla_meta.yaml sidecar
   (built-in values of the released 12B/27B pairs fill what is missing; the
   names of those fields are listed in `defaulted`). */
typedef struct {
    int present;               /* 1: the folder had nla_meta.yaml */
    char role[8];              /* "av" or "ar" */
    int d_model;
    int layer;                 /* extraction layer K: the target's block K output */
    double injection_scale;    /* AV: L2 norm given to the injected vector */
    double mse_scale;          /* L2 norm both vectors get before the MSE (sqrt(d)) */
    double fve_baseline;       /* training-set Var(v_nrm): 0.0302 (12B), 0.0579 (27B) */
    int32_t marker_id, marker_left_id, marker_right_id; /* 246566 between 236813 and 954 */
    int n_critic_suffix;
    int32_t critic_suffix_ids[8]; /* AR: ids every AR input ends with */
    const char *injection_char, *av_template, *ar_template; /* borrowed; NULL if absent */
    const char *base_checkpoint; /* borrowed; NULL if absent */
    const int32_t *av_prompt;  /* AV: the prompt ids (borrowed), NULL without tokenizer */
    int av_prompt_len, av_marker_index;
    int has_value_head;        /* AR: value_head.safetensors loaded */
    char defaulted[192];       /* comma-separated fields taken from built-in defaults */
} nla_meta;

/* Copies the model's NLA constants out (all zero when it has no sidecar). */
void nla_model_get_meta(const nla_model *model, nla_meta *meta);

/* Runs the target model on ids (BOS included; see nla_tokenize and
   nla_chat_render) and writes the raw residual after block `layer` (HF
   hidden_states[layer+1]) at each of n_pos positions into out [n_pos,
   d_model]; positions NULL means every row (out [n, d_model]). The forward
   runs the tokens up to the last position only (later ones cannot change the
   earlier rows), so the session's n_ctx need only reach that position + 1,
   and stops after that block. The session's cache is emptied before and
   after. */
nla_status nla_extract(nla_session *s, const int32_t *ids, int n, int layer,
                       const int32_t *positions, int n_pos, float *out);

typedef struct {
    int max_new;         /* default 200 */
    float temperature;   /* default 0: greedy */
    int top_k;           /* default 0: no cut */
    float top_p;         /* default 0: no cut */
    float *first_logits; /* optional out [vocab]: the logits after the prompt */
    nla_token_fn on_token; /* optional streaming callback (B = 1 only) */
    void *user;            /* passed to on_token and on_seq_token */
    const uint64_t *seeds; /* optional [B]: vector q samples from its own stream,
                              seeded with seeds[q] (as nla_session_seed), so its
                              explanation is the same in any batch; NULL: every
                              vector draws from the session's stream */
    nla_seq_token_fn on_seq_token; /* optional: each vector q's tokens, in
                              order, for any B (streaming a batch) */
} nla_verbalize_params;

/* AV: the explanation of vector v [d_model] as token ids (capacity cap >=
   max_new), stopping on one of the AV's eos ids (<eos> or <end_of_turn>
   for the released AVs; kept as the last id). The session must belong to an
   AV model with a tokenizer. The prompt rows before the marker are computed
   once per session and reused. nla_explanation_decode turns the ids into
   the explanation. A vector holding a NaN or Inf is refused
   (NLA_ERR_NONFINITE; the message names it). */
nla_status nla_verbalize(nla_session *s, const float *v, const nla_verbalize_params *params,
                         int32_t *ids, int cap, int *n_ids);

/* The same for B vectors v [B, d_model] decoded together (the session needs
   n_seq >= B): each decode step reads the weights once for all B, so B
   explanations cost little more than one while decoding is bound by memory
   bandwidth. Vector q's ids go to ids[q * cap ...], their count to n_ids[q];
   first_logits, if set, receives [B, vocab]; on_token is called only when
   B is 1, on_seq_token for every B (seq = q). Greedy results are identical
   to B calls of nla_verbalize, and so are sampled ones with seeds. */
nla_status nla_verbalize_batch(nla_session *s, const float *v, int B,
                               const nla_verbalize_params *params, int32_t *ids, int cap,
                               int *n_ids);

/* Finds <explanation>...</explanation> in raw[0..len): *start and *n give
   the trimmed text inside. Returns 1 if both tags were found; otherwise 0,
   and *start / *n give the whole raw text, trimmed (0 and 0 where raw is
   NULL; start and n may not be NULL, or it returns 0 and writes nothing
   through them). */
int nla_parse_explanation(const char *raw, size_t len, size_t *start, size_t *n);

/* The text of one explanation, as nla_explanation_decode finds it. */
typedef struct {
    size_t raw_len;    /* bytes of the AV's text (a NUL follows it in raw) */
    size_t start, len; /* the explanation: raw[start .. start + len) */
    int parsed;        /* 1: found inside <explanation>...</explanation>; 0: the
                          whole text, trimmed (the output is unparsed) */
} nla_explanation;

/* The explanation step: the ids nla_verbalize wrote for one vector -> text.
   Drops the last id when it is one of the AV's stop ids (its eos ids, from
   config.json / generation_config.json), detokenizes the rest into raw
   (capacity cap, NUL-terminated) with the AV's tokenizer, and finds the
   explanation in it (nla_parse_explanation). NLA_ERR_BUFFER_TOO_SMALL, with
   out->raw_len set, when cap <= raw_len: call with raw NULL and cap 0 to
   size the buffer. NLA_ERR_RANGE for an id outside the vocabulary. */
nla_status nla_explanation_decode(const nla_model *av, const int32_t *ids, int n_ids, char *raw,
                                  size_t cap, nla_explanation *out);

/* AR: reconstructs n vectors (out [n, d_model]) from n NUL-terminated
   explanations: <bos> + the AR template around the trimmed explanation,
   the AR's blocks without a final norm, the last row, times the value head.
   A session with n_seq > 1 reads min(n_seq, n_batch) explanations in one
   forward, one sequence each (each needs at most n_ctx tokens), so each
   weight read serves all of them; results are bit-identical to one
   explanation at a time (n_seq 1). */
nla_status nla_reconstruct(nla_session *s, const char *const *explanations, int n, float *out);

typedef struct {
    double mse_nrm;  /* mean squared difference after rescaling both to L2 = mse_scale */
    double cos;      /* cosine of the raw vectors; mse_nrm = 2 (1 - cos) when mse_scale = sqrt(d) */
    double fve_nrm;  /* 1 - mse_nrm / baseline; NaN when baseline <= 0 */
} nla_scores;

/* Per-part scores of an explanation: its paragraphs (runs of lines that
   are not blank; the released NLAs write 2-3: a "kind: topic" line, a
   context paragraph, a final-token paragraph), at most NLA_MAX_PARTS (the
   last then holds the rest). */
#define NLA_MAX_PARTS 16
typedef struct {
    int n;                            /* parts */
    nla_scores part[NLA_MAX_PARTS];   /* part j reconstructed alone */
    nla_scores prefix[NLA_MAX_PARTS]; /* parts 1..j+1: the text from the start
                                         through part j; the last is the whole */
} nla_part_scores;

/* AR: reconstructs each part of the explanation alone and each prefix, and
   scores them against v [d_model] (nla_score with the AR's mse_scale and
   baseline). Each equals nla_reconstruct of that text, then nla_score. */
nla_status nla_score_parts(nla_session *s, const float *v, const char *explanation, double baseline,
                           nla_part_scores *out);

/* Vectors on disk: float32 little-endian C-order NumPy .npy, shape [n] or
   [n, d]. nla_npy_read writes the shape and, when cap (floats) suffices,
   the data; NLA_ERR_BUFFER_TOO_SMALL otherwise (call again with a bigger
   buffer). Other dtypes, Fortran order or other ranks are refused.
   nla_npy_write also writes 3-D arrays (hidden states [L, T, d]), and
   atomically, as nla_file_write does. */
nla_status nla_npy_read(const char *path, float *out, size_t cap, int64_t shape[2], int *ndim,
                        char *errbuf, size_t errbuf_size);
nla_status nla_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                         char *errbuf, size_t errbuf_size);

/* Scores reconstruction r against the original v, both [d]. NLA_ERR_NONFINITE
   when v or r holds a NaN or Inf, or when a score is not finite (an
   mse_scale whose square overflows, a tiny baseline): out is then left as
   it is; NLA_ERR_ARG for a non-finite baseline or when v or r is all zeros
   (no direction: a row never written, not a vector to score). */
nla_status nla_score(const float *v, const float *r, int d, double mse_scale, double baseline,
                     nla_scores *out);

/* The variance baseline of a set of n vectors [n, d]: each rescaled to L2 =
   mse_scale, B = sum |v_n - mean|^2 / (n d). NLA_ERR_NONFINITE when a vector
   holds a NaN or Inf or B is not finite, NLA_ERR_ARG when one is all zeros (none to rescale). */
nla_status nla_baseline(const float *v, int n, int d, double mse_scale, double *out);

/* ---- NLA questions: steer a vector, cross-score explanations ----------- */

/* How nla_steer changes v along the direction dir. */
typedef enum {
    NLA_STEER_ADD = 0,      /* v + r |v| dir / |dir|: r = 0 leaves v as it is */
    NLA_STEER_PATCH = 1,    /* dir itself (v replaced by the other vector; r unused) */
    NLA_STEER_SUBTRACT = 2  /* v minus its component along dir (r unused) */
} nla_steer_mode;

/* Writes the steered vector out [d] (which may be v itself). Pure
   arithmetic in double, rounded once to float: any thread, no allocation.
   NLA_ERR_ARG for NULL pointers, d < 1, an unknown mode, a non-finite r, or
   (add, subtract) a direction of zero or non-finite length; NLA_ERR_NONFINITE
   (out unchanged) where an element of the result does not fit a float (patch:
   where dir holds a NaN or an Inf). */
nla_status nla_steer(const float *v, const float *dir, int d, nla_steer_mode mode, double r,
                     float *out);

/* Do the explanations tell tokens apart? */
typedef struct {
    double own_closest; /* share of reconstructions whose own vector is the
                           strictly closest of all n (rank 1) */
    double mean_rank;   /* mean rank of the own vector among the n, 1 = the
                           closest; (n + 1) / 2 is what chance gives */
} nla_cross_scores;

/* Scores every reconstruction r_i against every vector v_j (v, r: [n, d]):
   matrix (optional, out [n, n], row i = r_i) gets mse_nrm(v_j, r_i), each
   computed as nla_score computes it (the diagonal is nla_score's mse_nrm of
   row i). The rank of v_i for r_i is 1 + the number of other v_j at most as
   far (ties count against it, so identical reconstructions rank last);
   rank (optional, out [n]) gets them. O(n^2 d) time; allocates n d
   doubles (NLA_ERR_NOMEM). Any thread; NLA_ERR_ARG for bad sizes, a
   non-finite mse_scale or a vector of v or r all zeros (as nla_score),
   NLA_ERR_NONFINITE for a NaN or Inf in v or r or an mse_nrm that is not
   finite. */
nla_status nla_score_cross(const float *v, const float *r, int n, int d, double mse_scale,
                           float *matrix, int *rank, nla_cross_scores *out);

/* ---- Evaluation: the pretraining-vs-chat study (nla eval) -------------- */

#ifndef NLA_NO_EVAL /* -DNLA_NO_EVAL (when building nla.c and its users) leaves it out,
                      with the study search below */

/* Explanations and reconstruction errors of tokens drawn from documents and
   chat conversations (the study of the blog post "Some observations about
   NLA explanations"), written as a results folder that a
   rerun resumes and that shards merge into:
     params.json          the arguments that decide the results
     tokens.jsonl         each record's tokens, roles and sampled positions
     results.jsonl        one row per sampled token, in sample_idx order:
                          sample_idx, record_id, source, role, token_id,
                          token_str, position, seq_len, vec_norm,
                          text_preview, explanation, raw_av_text, av_parsed,
                          mse_nrm, cos, fve_nrm, then candidates and chosen
                          (best_of), greedy (with_greedy), parts (parts),
                          flags (the row's trust flags but norm_outlier)
     activations.npy      float32 [S, d]: row sample_idx = the target's vector
     reconstructions.npy  float32 [S, d]: the AR's reconstruction of it
   Chat roles: bos, user_content, asst_content, role_marker (<start_of_turn>,
   user/model and the newlines), end_of_turn; documents have role null. */

#define NLA_EVAL_FROM_BOS (-1) /* min_position: sample from position 0 on */

typedef struct {
    const char *phase;  /* "plan", "extract", "verbalize" or "reconstruct" */
    int done, total;    /* items of this phase in the current chunk (plan:
                           records read so far, total 0) */
    long rows_done;     /* rows of this shard committed, earlier runs included */
    long rows_total;    /* rows of this shard */
    long rows_resumed;  /* rows found done when the run started */
    int chunk_rows;     /* rows of the current chunk (0 in plan) */
    long tokens;        /* verbalize: AV tokens of the chunk decoded so far; its
                           callback comes with every token */
    long tokens_max;    /* verbalize: the most the chunk's texts can take
                           (texts x max_new; a text ends sooner at a stop id) */
} nla_eval_progress;

/* Progress callback: a nonzero return stops the run (NLA_ERR_CANCELLED);
   committed rows stay and a rerun resumes after them. */
typedef int (*nla_eval_progress_fn)(void *user, const nla_eval_progress *progress);
/* Warning callback: a skipped input record, named by file and line. */
typedef void (*nla_eval_warn_fn)(void *user, const char *message);

typedef struct {
    const char *target, *av, *ar; /* model folders (nla_eval_run) */
    const char *tokenizer;     /* tokenizer.json for all three (loaded once);
                                  default NULL: the target folder's */
    const char *docs;          /* JSONL of {"id", "text", "source"?, "positions"?} or NULL */
    const char *chats;         /* JSONL of {"id", "messages": [{"role", "content"}, ...],
                                  "source"?, "positions"?} or NULL; rendered with
                                  the Gemma 3 chat template */
    const char *out_dir;       /* the results folder; must exist */
    int positions_per_record;  /* positions drawn per record; default 1 */
    int min_position;          /* drawn positions are >= this; default 50 (as in
                                  training); NLA_EVAL_FROM_BOS for 0 (below it:
                                  NLA_ERR_ARG). A record's
                                  "positions" list overrides the drawing. */
    int max_tokens;            /* records are cut to this many tokens; default 512 */
    int skip_special;          /* nonzero: never draw special tokens (<bos>,
                                  <start_of_turn>, <end_of_turn>, ...) */
    uint64_t seed;             /* drawing (and AV sampling) seed; default 0 */
    int max_new;               /* AV tokens per explanation; default 200 */
    float temperature;         /* AV decoding: default 0, greedy. A sampled
                                  explanation draws from its own stream, seeded
                                  from seed, sample_idx and the candidate. */
    int top_k;
    float top_p;
    int best_of;               /* N > 0: N sampled explanations per vector, each
                                  reconstructed; the lowest mse_nrm is kept and
                                  all are listed ("candidates"); temperature 0
                                  means 1 when N > 1. Default 0: one, no list */
    int with_greedy;           /* nonzero: also the greedy explanation's
                                  scores ("greedy") */
    int parts;                 /* nonzero: the scores of each paragraph alone
                                  and of each prefix of paragraphs ("parts") */
    int batch;                 /* vectors the AV decodes together; default 8 */
    int chunk;                 /* samples per extract, verbalize, reconstruct
                                  round (one model in memory at a time);
                                  default 256 */
    int shard_index, shard_count; /* this run takes records r with r mod
                                  shard_count = shard_index - 1 (1-based);
                                  default 1 of 1 */
    int n_threads;             /* default: OpenMP's */
    nla_quant quant;           /* quantize the models at load; default none */
    nla_eval_progress_fn progress; /* optional */
    nla_eval_warn_fn warn;     /* optional */
    void *user;                /* passed to progress and warn */
} nla_eval_params;

typedef struct {
    int records, bad_records; /* records read, lines skipped as bad */
    long samples;             /* S: rows of the whole study, all shards */
    long shard_samples;       /* rows of this shard */
    long resumed;             /* rows found done when the run started */
    long done;                /* rows done when it returned */
} nla_eval_counts;

/* Reads and checks the inputs, draws the positions, and counts records and
   rows, without any model: what nla_eval_run would do. Bad records go to
   params->warn. */
nla_status nla_eval_plan(const nla_eval_params *params, const nla_tokenizer *tok,
                         nla_eval_counts *out, char *errbuf, size_t errbuf_size);

/* Runs (or resumes) the study into params->out_dir: for each chunk of rows
   not yet done, extracts the target's vectors, explains them with the AV
   and reconstructs them with the AR, appending one committed row at a time
   (vectors, then the JSONL line, flushed and synced). A kill at any point
   loses at most the rows not yet committed; a torn last line is cut off on
   resume. Each row carries checksums of its vectors: a resume redoes the
   rows whose vectors are missing or differ (reported to params->warn) and
   leaves results.jsonl in sample_idx order. A folder made with other
   arguments or models (known by content, not by path) is refused
   (NLA_ERR_ARG, naming the first difference); so is an input that is one
   of the folder's files, and a folder whose results.jsonl holds rows
   without its params.json. Bad input records (and repeated ids) are
   reported to params->warn and skipped; inputs that leave no position to
   explain are NLA_ERR_FORMAT. counts may be NULL. The run holds
   an exclusive lock on out_dir/eval.lock (fcntl; the kernel releases it
   when the process ends, however it ends): while another run holds it
   (another process, or on Linux another thread of this one), NLA_ERR_BUSY
   with the holder's PID and host. */
nla_status nla_eval_run(const nla_eval_params *params, nla_eval_counts *counts, char *errbuf,
                        size_t errbuf_size);

/* Merges the complete results folders of shards 1/n .. n/n (any order)
   into out_dir (which must exist): the same files, byte for byte, as one
   unsharded run. It holds out_dir's lock as nla_eval_run does. results.jsonl
   is removed before the first file is replaced and written last: a merge
   that fails or is killed after it has begun to replace files leaves
   out_dir without it (one refused by its checks leaves out_dir as it was). */
nla_status nla_eval_merge(const char *out_dir, const char *const *shard_dirs, int n, char *errbuf,
                          size_t errbuf_size);

/* Receives output text in pieces. */
typedef void (*nla_write_fn)(void *user, const char *text, size_t len);

typedef struct {
    int json;             /* summary: nonzero writes JSON instead of tables */
    double baseline;      /* the training-set baseline of fve_nrm; default:
                             params.json's fve_baseline, else 0.0302 */
    int max_texts;        /* report: texts shown; default 200 */
    int cross_sample;     /* summary: cross-score up to this many rows of each
                             group (nla_score_cross on activations.npy and
                             reconstructions.npy): the share whose own vector
                             is the closest, its mean rank. Default 0: none */
    nla_eval_warn_fn warn; /* optional: rows skipped as unreadable */
    void *user;
} nla_eval_report_params;

/* Summarises results: a results folder (results.jsonl, with the vectors of
   activations.npy for fve against each group's own mean when present) or
   a JSONL file with the published field names (mse_nrm or cos required).
   Count, mean, median, p10, p90, p99 of mse_nrm, mean cos, fve_nrm against
   the training baseline and the group's own mean, share with cos < 0.5;
   overall and by source, chat role and token kind; the explanations'
   three-part structure; the degenerate templates (README.md lists them).
   Output goes to write as text tables or JSON. A vector read (activations,
   and reconstructions for cross_sample) that differs from its row's
   checksum, or an activations.npy there but unreadable, is refused with
   NLA_ERR_FORMAT (or the read's error), never summarised. nla_eval_compare
   checks both folders' vectors the same way. */
nla_status nla_eval_summary(const char *results, const nla_eval_report_params *params,
                            nla_write_fn write, void *user, char *errbuf, size_t errbuf_size);

/* Writes a self-contained HTML report (no network, no external files):
   the summary, histograms of mse_nrm by source and role, and the texts
   with their sampled tokens coloured by mse_nrm, the explanation on hover
   and click. */
nla_status nla_eval_report_html(const char *results, const char *html_path,
                                const nla_eval_report_params *params, char *errbuf,
                                size_t errbuf_size);

/* Compares two runs of one study (results folders of the same records and
   positions, e.g. made with and without --quant): per row Δmse_nrm and Δcos
   (B - A), whether the explanations are identical, the cos between the
   runs' activations and between their reconstructions; the means, and the
   20 rows that changed most (largest |Δmse_nrm|). Output as tables or JSON
   (params->json). Two studies that differ are refused (NLA_ERR_ARG),
   naming the first record that differs. */
nla_status nla_eval_compare(const char *results_a, const char *results_b,
                            const nla_eval_report_params *params, nla_write_fn write, void *user,
                            char *errbuf, size_t errbuf_size);

/* ---- Searching a study -------------------------------------------------- */

/* A results folder of nla_eval_run (or nla_eval_merge): results.jsonl's
   rows held in memory; the vectors stay in activations.npy, read in one
   pass by each search (each call opens the file itself). Immutable after
   open: any number of threads may read and search it. */
typedef struct nla_study nla_study;

/* One row of a study; the strings are borrowed from the study. */
typedef struct {
    long sample_idx;          /* its row of activations.npy */
    const char *token;        /* token_str */
    const char *preview;      /* text_preview: the opening of its text */
    const char *explanation;  /* the AV's explanation */
    double mse_nrm, cos;      /* its reconstruction's scores */
} nla_study_row;

/* Opens the results folder dir. A folder without results.jsonl, an
   activations.npy that is not float32 [S, d], or a row whose sample_idx is
   missing or not below S is refused with a message naming the file;
   unreadable lines are skipped (warn, when given, is told each). */
nla_status nla_study_open(const char *dir, nla_eval_warn_fn warn, void *user, nla_study **out,
                          char *errbuf, size_t errbuf_size);
void nla_study_close(nla_study *study);
int nla_study_count(const nla_study *study); /* rows */
int nla_study_dim(const nla_study *study);   /* d */
/* Row i (0 <= i < count, in results.jsonl's order); NLA_ERR_RANGE otherwise. */
nla_status nla_study_get(const nla_study *study, int i, nla_study_row *out);
/* The row whose sample_idx is idx, or -1. */
int nla_study_find(const nla_study *study, long idx);
/* Row i's activation into out [d] (read from activations.npy);
   NLA_ERR_RANGE for a row out of range, NLA_ERR_IO when it cannot be read,
   NLA_ERR_FORMAT when it is not the vector the row was scored with (its
   checksum in results.jsonl). nla_study_search refuses such a row too. */
nla_status nla_study_vector(const nla_study *study, int i, float *out);

typedef struct {
    const float *query; /* [d]: rank by cosine to it (highest first, then row
                           order); NULL: keep row order */
    const char *regex;  /* POSIX extended regular expression the explanation
                           must match, or NULL. Not on systems without
                           regex.h (NLA_ERR_UNSUPPORTED) */
    int icase;          /* nonzero: the regex ignores case */
} nla_search_params;

typedef struct {
    int row;    /* for nla_study_get */
    double cos; /* cosine of its activation to the query; 0 without a query
                   or when either vector is zero */
} nla_search_hit;

/* The best cap rows (or fewer) into hits, their number to *n_hits, and the
   number of rows that match (the regex) to *n_match (may be NULL). A row
   whose activation is not finite never matches a query. NLA_ERR_ARG for
   a zero or non-finite query or a regex that does not compile (errbuf
   says why); with a query, NLA_ERR_FORMAT for a row whose activation
   differs from its checksum in results.jsonl. Any thread. */
nla_status nla_study_search(const nla_study *study, const nla_search_params *params,
                            nla_search_hit *hits, int cap, int *n_hits, int *n_match, char *errbuf,
                            size_t errbuf_size);

#endif /* NLA_NO_EVAL */

/* ---- Kernel checks (NLA_EXPERIMENTAL) ---------------------------------- */

#ifdef NLA_EXPERIMENTAL
/* Quantizes w [rows, n] to dt (NLA_DTYPE_Q8_0 or Q4_0) and x [n_x, n] to the
   int8 activation blocks, and writes out [n_x, rows] = x . w^T computed by
   the scalar reference (simd 0) or by the matmul the model runs (simd 1:
   this build's SIMD kernels, the reference when there are none). n a
   multiple of 32. For tests of the kernels. */
nla_status nla_kernel_matmul(nla_dtype dt, const float *w, const float *x, int rows, int n_x, int n,
                             int simd, float *out);

/* out[i] = e^x[i] for i < n as the model's softmax and GELU compute it:
   within 1.5 ulp of the exact value for -87 <= x <= 88, 0 below -87, e^88
   above 88, NaN for NaN. For tests of the kernels. */
void nla_kernel_exp(const float *x, int n, float *out);

/* out [R, G, hd] = the model's softmax attention for R query rows of G
   heads each, q [R, G, hd], that share one key-value head: row r attends to
   positions lo[r]..p[r], at most cap of them, with lo and p non-decreasing
   over the rows; position j's key and value are rows j % cap of k [cap, hd]
   and v [cap, hd] (the cache's ring). A score is q . k scale, then softcap
   tanh(score / softcap) where softcap > 0. NLA_ERR_ARG for a NULL, a size
   below 1 or rows out of order. For tests of the kernels. */
nla_status nla_kernel_attention(const float *q, const float *k, const float *v, int cap, int R,
                                const int *lo, const int *p, int G, int hd, float scale,
                                float softcap, float *out);

/* The token that decoding takes from logits [n], n <= 262144, with p's
   temperature, top_k and top_p as nla_generate applies them (temperature 0:
   the largest logit, the lowest index on ties), drawing from the stream
   that nla_session_seed(seed) starts. -1 for a NULL, n out of range, or
   memory running out. For tests of the sampler. */
int32_t nla_kernel_sample(const float *logits, int n, const nla_generate_params *p,
                          uint64_t seed);

/* Runs n rounds (none for n <= 0) of this build's int8 dot-product step
   (the quantized kernel's inner operation: each round 12 independent
   vector sums of 4-byte products) and returns the multiply-adds done, 0
   for the scalar reference; *sink (may be NULL) gets a value of the sums.
   For the benchmark's measured compute peak: the caller times it. */
double nla_kernel_dp_rounds(long n, int32_t *sink);

/* The SIMD kernel this build uses: "avx512-vnni", "avx2-vnni", "avx2",
   "neon-dotprod", "neon" or "none" (the scalar reference); "avx512-vnni+amx"
   where the CPU's AMX tiles also run the matmuls of 16 inputs or more
   (x86-64 Linux; not with -DNLA_NO_AMX). */
const char *nla_kernel_simd(void);
#endif

#ifdef __cplusplus
}
#endif
#endif /* NLA_H */
