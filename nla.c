/* nla.c - Natural Language Autoencoders on Gemma 3, on the CPU, in one C file.

   Build as a library:  cc -O2 -c nla.c
   Build the CLI:       cc -O2 -DNLA_MAIN -o nla nla.c -lm   (add -fopenmp for threads)
   The public contract is nla.h; everything here that nla.h does not declare is
   static.

   Contents (grep -n '^/\* ====' nla.c prints this map with line numbers)
     1  Portability and compile-time options
     2  Utilities: errors, allocation, float formats
     3  JSON reader
     4  Safetensors: files, headers, validation, shards
     5  Gemma 3 config: config.json, defaults, layer pattern, RoPE
     6  Quantization: Q8_0 and Q4_0 blocks
     7  Kernels: conversion, matmul, RMSNorm, RoPE, attention, GELU
     8  Model: binding tensors, open/close, quantize, save
     9  Session: KV cache and scratch
    10  Forward pass
    11  Tokenizer: tokenizer.json BPE, added tokens, chat template
    12  Decoding: sampling and the generate loop
    13  NLA: sidecar, extract, verbalize, reconstruct, score
    14  Evaluation: the pretraining-vs-chat study (not with -DNLA_NO_EVAL)
    15  CLI (only with -DNLA_MAIN)

   Conventions. Matrices are row-major; a weight W of shape [out, in] (as HF
   stores nn.Linear) maps x [in] to y [out] = W x. Shapes in comments are
   [rows, cols]. Symbols: h = hidden size (d_model), H = query heads, KV =
   key/value heads, hd = head dim, I = MLP width, L = layers, V = vocabulary
   rows, W = sliding window, T = tokens in a batch. Compute is float32; weights
   stay in their stored dtype (f32, f16, bf16) and are converted in the
   kernels. The source of truth for every formula is Hugging Face
   transformers' modeling_gemma3.py. */

/* ==== 1 Portability and compile-time options ============================ */

/* NLA_NO_MMAP: read weights with stdio instead of mmap (non-POSIX systems).
   NLA_NO_SIMD: the scalar kernels only.
   NLA_NO_AMX: never the AMX tiles, even on a CPU that has them.
   NLA_NO_EVAL: leaves out section 14 (nla eval, the study search) and its
   nla.h block, for programs that want the engine and the NLA only. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise */
#endif

/* Input limits. Everything read from outside is bounded; past a bound the
   call fails with a message naming the file and the limit. Each bound is
   far above what the real Gemma 3 and NLA files need (in brackets), and
   each may be set at compile time.
     NLA_MAX_HEADER      safetensors JSON header, bytes [~70 KB]; 100 MB is
                         the reference implementation's limit
     NLA_MAX_JSON_FILE   config.json, generation_config.json, the shard
                         index, bytes [< 100 KB]
     NLA_MAX_TOKENIZER   tokenizer.json, bytes [33 MB]
     NLA_MAX_SIDECAR     nla_meta.yaml, bytes [3 KB]
     NLA_JSON_MAX_DEPTH  nesting of every JSON document [4]; bounds the
                         parser's recursion, so hostile input cannot exhaust
                         the stack
     NLA_YAML_MAX_DEPTH  nesting of nla_meta.yaml [3]
     NLA_MAX_LAYERS      num_hidden_layers [62]
     NLA_MAX_VOCAB       vocab_size, and every token id in tokenizer.json
                         [262208]
   The config's other sizes have fixed sanity bounds (cfg_from_json). */
#ifndef NLA_MAX_HEADER
#define NLA_MAX_HEADER 100000000u
#endif
#ifndef NLA_MAX_JSON_FILE
#define NLA_MAX_JSON_FILE ((size_t)1 << 24)
#endif
#ifndef NLA_MAX_TOKENIZER
#define NLA_MAX_TOKENIZER ((size_t)1 << 28)
#endif
#ifndef NLA_MAX_SIDECAR
#define NLA_MAX_SIDECAR ((size_t)1 << 16)
#endif
#ifndef NLA_JSON_MAX_DEPTH
#define NLA_JSON_MAX_DEPTH 64
#endif
#if NLA_JSON_MAX_DEPTH < 4 || NLA_JSON_MAX_DEPTH > 1000
#error "NLA_JSON_MAX_DEPTH must be in 4..1000"
#endif
#ifndef NLA_YAML_MAX_DEPTH
#define NLA_YAML_MAX_DEPTH 16
#endif
#ifndef NLA_MAX_LAYERS
#define NLA_MAX_LAYERS 512
#endif
#ifndef NLA_MAX_VOCAB
#define NLA_MAX_VOCAB (1 << 24)
#endif
#if defined(_WIN32) && !defined(NLA_NO_MMAP)
#define NLA_NO_MMAP
#endif
/* NLA_MALLOC, NLA_CALLOC, NLA_REALLOC, NLA_FREE: every allocation goes
   through these. Define all four before compiling nla.c to use another
   allocator (the allocation-failure test fails the k-th one). */
#ifndef NLA_MALLOC
#define NLA_MALLOC(n) malloc(n)
#define NLA_CALLOC(n, size) calloc(n, size)
#define NLA_REALLOC(p, n) realloc(p, n)
#define NLA_FREE(p) free(p)
#endif
/* NLA_FSYNC(fd): every sync to the disk goes through it (the test of
   failing syncs fails the k-th one). */
#ifndef NLA_FSYNC
#define NLA_FSYNC(fd) fsync(fd)
#endif

#define NLA_EXPERIMENTAL /* the kernel-check declarations of nla.h */
#include "nla.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#ifndef NLA_NO_MMAP
#include <sys/mman.h>
#endif
#ifndef _WIN32
#include <fcntl.h>    /* open, fcntl: mapping, the results folder's lock */
#include <sys/stat.h> /* fstat, stat: file sizes, same-file checks */
#include <unistd.h>   /* fsync: atomic writes, nla eval's commit records */
#endif
/* NLA_NO_REGEX: no POSIX regular expressions (nla_study_search's regex). */
#if defined(_WIN32) && !defined(NLA_NO_REGEX)
#define NLA_NO_REGEX
#endif
#ifndef NLA_NO_REGEX
#include <regex.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && !defined(NLA_NO_SIMD)
/* g++ 12 reads the AVX-512 headers' `__Y = __Y` (an undefined register
   value) as maybe-uninitialized; the warning's location is the header. */
#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#elif defined(__ARM_NEON) && defined(__aarch64__) && !defined(NLA_NO_SIMD)
#include <arm_neon.h>
#endif
/* An AVX-512 VNNI build for x86-64 by GCC or clang asks the CPU who made
   it (section 7: how many groups a decoding step streams); one for Linux
   by GCC 11 or clang 12 on has the AMX tiles (section 7), whether the CPU
   has them asked at run time. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NLA_NO_SIMD)
#define NLA_CPUID
#include <cpuid.h> /* __get_cpuid, __get_cpuid_count */
#if defined(__linux__) && !defined(NLA_NO_AMX) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define NLA_AMX
#include <sys/syscall.h> /* SYS_arch_prctl */
#endif
#endif

/* Lets the compiler check the format strings of printf-like helpers;
   PREFETCH asks for the cache line at p ahead of its use (a hint: any
   address, never a fault), into every cache level; PREFETCH_FAR into the
   outer ones only (x86: L2 and L3). */
#if defined(__GNUC__) || defined(__clang__)
#define PRINTF_LIKE(fmt, first) __attribute__((format(printf, fmt, first)))
#define PREFETCH(p) __builtin_prefetch(p)
#define PREFETCH_FAR(p) __builtin_prefetch(p, 0, 1)
#else
#define PRINTF_LIKE(fmt, first)
#define PREFETCH(p) ((void)(p))
#define PREFETCH_FAR(p) ((void)(p))
#endif

/* Session counting on a shared model is the one thing that changes on an
   nla_model after open; it uses atomic increments where the compiler has
   them. */
#if defined(__GNUC__) || defined(__clang__)
#define ATOMIC_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define ATOMIC_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#elif defined(_MSC_VER)
#include <intrin.h>
#define ATOMIC_ADD(p, v) (_InterlockedExchangeAdd((long volatile *)(p), (v)) + (v))
#define ATOMIC_LOAD(p) _InterlockedOr((long volatile *)(p), 0)
#else
#define ATOMIC_ADD(p, v) (*(p) += (v))
#define ATOMIC_LOAD(p) (*(p))
#endif

/* ==== 2 Utilities: errors, allocation, float formats ==================== */

const char *nla_version(void) { return NLA_VERSION; }

const char *nla_strerror(nla_status st) {
    switch (st) {
    case NLA_OK: return "ok";
    case NLA_ERR_IO: return "i/o error";
    case NLA_ERR_NOMEM: return "out of memory";
    case NLA_ERR_FORMAT: return "malformed input";
    case NLA_ERR_UNSUPPORTED: return "unsupported";
    case NLA_ERR_ARG: return "invalid argument";
    case NLA_ERR_RANGE: return "value out of range";
    case NLA_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case NLA_ERR_BUSY: return "busy";
    case NLA_ERR_CANCELLED: return "cancelled by a callback";
    case NLA_ERR_NONFINITE: return "non-finite value (NaN or Inf)";
    }
    return "unknown status";
}

/* Every detailed error message is written into a fixed buffer owned by the
   handle (or by the caller for constructors) through this one helper, which
   returns the status so that `return fail(...)` reads naturally. */
#define ERR_CAP 512
typedef struct {
    char msg[ERR_CAP];
} errbuf;

static nla_status fail(errbuf *e, nla_status st, const char *fmt, ...) PRINTF_LIKE(3, 4);
static nla_status fail(errbuf *e, nla_status st, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

static void copy_err(char *dst, size_t cap, const char *msg) {
    if (dst && cap) {
        size_t n = strlen(msg);
        if (n >= cap) n = cap - 1;
        memcpy(dst, msg, n);
        dst[n] = 0;
    }
}

/* Allocation with overflow-checked sizes; everything large goes through
   here so a hostile shape cannot wrap a size_t. */
static void *xcalloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    return NLA_CALLOC(n ? n : 1, size ? size : 1);
}

static void *xmalloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    return NLA_MALLOC(n && size ? n * size : 1);
}

static char *xstrndup(const char *s, size_t n) {
    char *d = (char *)NLA_MALLOC(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Multiplication of u64 with overflow detection: returns 0 on overflow. */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* bf16 -> f32 is the upper half of the float's bits. */
static float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* f32 -> bf16 with round-to-nearest-even (NaN kept a NaN). */
static uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* IEEE half -> f32, including subnormals, infinities and NaN. */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return f32_from_bits(u);
}

/* f32 -> IEEE half, round-to-nearest-even (used only to round a scalar). */
static uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    int exp = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - exp;
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1), q = man >> shift;
        if (rest > half || (rest == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = (uint32_t)(exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

static uint16_t rd_u16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* A byte buffer that counts what did not fit: write into out[0..cap), and
   len says how much was (or would have been) written. With out NULL and
   cap 0 it measures. */
typedef struct {
    char *out;
    size_t cap, len;
} sbuf;

static void sb_put(sbuf *s, const char *p, size_t n) {
    if (s->len + n < s->cap) memcpy(s->out + s->len, p, n);
    s->len += n;
}

static void sb_str(sbuf *s, const char *p) { sb_put(s, p, strlen(p)); }

/* True if s[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= k) return 0; /* truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Length of the UTF-8 character at s[0..n) if it is well formed, else 0. */
static int utf8_char_len(const unsigned char *s, size_t n) {
    int k = s[0] < 0x80                    ? 1
            : s[0] >= 0xc2 && s[0] <= 0xdf ? 2
            : s[0] >= 0xe0 && s[0] <= 0xef ? 3
            : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4
                                           : 0;
    if (!k || (size_t)k > n) return 0;
    return utf8_valid(s, (size_t)k) ? k : 0;
}

#if !defined(NLA_NO_EVAL) || defined(NLA_MAIN) /* nla eval and the CLI */
/* The JSON text of number v with `digits` significant digits into out:
   every JSON number the library and the CLI write goes through here. JSON
   has no NaN or Inf: those are written as null. */
static void json_put_num(char *out, size_t cap, double v, int digits) {
    if (isfinite(v)) snprintf(out, cap, "%.*g", digits, v);
    else snprintf(out, cap, "null");
}
#endif

/* Index of the first NaN or Inf among x[0..n), or -1. The first pass only
   ORs a test of each value's exponent bits (all ones: not finite), which
   vectorizes: about one instruction per 8 or 16 floats. */
static ptrdiff_t first_nonfinite(const float *x, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    for (size_t i = 0; bad && i < n; i++)
        if (!isfinite(x[i])) return (ptrdiff_t)i;
    return -1;
}

/* ==== 3 JSON reader ===================================================== */

/* A strict RFC 8259 reader into a flat array of nodes, enough for
   safetensors headers, config.json and index files. Strings and numbers stay
   as spans of the source text and are decoded on demand. Each node knows
   where its subtree ends, so children are walked with `i = node[i].end`.
   Object children alternate key, value. Depth is capped by
   NLA_JSON_MAX_DEPTH; the source must outlive the document. */

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct {
    unsigned char type;
    unsigned char escaped; /* string holds a backslash escape */
    uint32_t n;            /* children (array) or members (object) */
    size_t off, len;       /* source span: string content or number text */
    uint32_t end;          /* index of the first node after this subtree */
} jnode;

typedef struct {
    const char *src;
    size_t len, pos;
    jnode *node;
    uint32_t n_node, cap_node;
} jdoc;

static void json_free(jdoc *d) {
    NLA_FREE(d->node);
    d->node = NULL;
    d->n_node = d->cap_node = 0;
}

/* Line and column (1-based) of a byte offset, for error messages. */
static void json_where(const jdoc *d, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < d->len; i++) {
        if (d->src[i] == '\n') { l++; c = 1; } else c++;
    }
    *line = l;
    *col = c;
}

static void json_ws(jdoc *d) {
    while (d->pos < d->len) {
        char c = d->src[d->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        d->pos++;
    }
}

static int json_new(jdoc *d, int type) {
    if (d->n_node == d->cap_node) {
        uint32_t cap = d->cap_node ? d->cap_node * 2 : 64;
        if (cap < d->cap_node || cap > (uint32_t)INT_MAX) return -1;
        jnode *nn = (jnode *)NLA_REALLOC(d->node, (size_t)cap * sizeof(jnode));
        if (!nn) return -1;
        d->node = nn;
        d->cap_node = cap;
    }
    jnode *n = &d->node[d->n_node];
    memset(n, 0, sizeof *n);
    n->type = (unsigned char)type;
    n->off = d->pos;
    return (int)d->n_node++;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses one value at d->pos. Returns 0 or a message (static text). */
static const char *json_value(jdoc *d, int depth) {
    json_ws(d);
    if (d->pos >= d->len) return "unexpected end of input";
    if (depth > NLA_JSON_MAX_DEPTH) return "nesting too deep";
    char c = d->src[d->pos];
    int idx;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        if ((idx = json_new(d, obj ? J_OBJ : J_ARR)) < 0) return "out of memory";
        d->pos++;
        json_ws(d);
        if (d->pos < d->len && d->src[d->pos] == (obj ? '}' : ']')) {
            d->pos++;
        } else {
            for (;;) {
                if (obj) {
                    json_ws(d);
                    if (d->pos >= d->len || d->src[d->pos] != '"') return "expected a string key";
                    const char *m = json_value(d, depth + 1);
                    if (m) return m;
                    json_ws(d);
                    if (d->pos >= d->len || d->src[d->pos] != ':') return "expected ':'";
                    d->pos++;
                }
                const char *m = json_value(d, depth + 1);
                if (m) return m;
                d->node[idx].n++;
                json_ws(d);
                if (d->pos >= d->len) return "unexpected end of input";
                if (d->src[d->pos] == ',') { d->pos++; continue; }
                if (d->src[d->pos] == (obj ? '}' : ']')) { d->pos++; break; }
                return obj ? "expected ',' or '}'" : "expected ',' or ']'";
            }
        }
    } else if (c == '"') {
        if ((idx = json_new(d, J_STR)) < 0) return "out of memory";
        size_t start = ++d->pos;
        for (;;) {
            if (d->pos >= d->len) return "unterminated string";
            unsigned char ch = (unsigned char)d->src[d->pos];
            if (ch == '"') break;
            if (ch < 0x20) return "control character in string";
            if (ch == '\\') {
                d->node[idx].escaped = 1;
                if (++d->pos >= d->len) return "unterminated string";
                ch = (unsigned char)d->src[d->pos];
                if (ch == 'u') {
                    for (int k = 1; k <= 4; k++)
                        if (d->pos + k >= d->len || hexval(d->src[d->pos + k]) < 0)
                            return "bad \\u escape";
                    d->pos += 4;
                } else if (!strchr("\"\\/bfnrt", ch)) {
                    return "bad escape";
                }
            }
            d->pos++;
        }
        d->node[idx].off = start;
        d->node[idx].len = d->pos - start;
        d->pos++;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        if ((idx = json_new(d, J_NUM)) < 0) return "out of memory";
        size_t p = d->pos;
        const char *s = d->src;
#define DIG(i) ((i) < d->len && s[i] >= '0' && s[i] <= '9')
        if (s[p] == '-') p++;
        if (!DIG(p)) return "bad number";
        if (s[p] == '0') p++;
        else while (DIG(p)) p++;
        if (p < d->len && s[p] == '.') {
            p++;
            if (!DIG(p)) return "bad number";
            while (DIG(p)) p++;
        }
        if (p < d->len && (s[p] == 'e' || s[p] == 'E')) {
            p++;
            if (p < d->len && (s[p] == '+' || s[p] == '-')) p++;
            if (!DIG(p)) return "bad number";
            while (DIG(p)) p++;
        }
#undef DIG
        d->node[idx].len = p - d->pos;
        d->pos = p;
    } else {
        static const char *const lit[] = {"null", "false", "true"};
        int t;
        for (t = 0; t < 3; t++) {
            size_t n = strlen(lit[t]);
            if (d->len - d->pos >= n && !memcmp(d->src + d->pos, lit[t], n)) break;
        }
        if (t == 3) return "unexpected character";
        if ((idx = json_new(d, J_NULL + t)) < 0) return "out of memory";
        d->pos += strlen(lit[t]);
    }
    d->node[idx].end = d->n_node;
    return NULL;
}

/* Parses src[0..len) as one JSON value followed only by whitespace. `what`
   names the source in the error message (a file name). */
static nla_status json_parse(jdoc *d, const char *src, size_t len, errbuf *e, const char *what) {
    memset(d, 0, sizeof *d);
    d->src = src;
    d->len = len;
    const char *m = json_value(d, 0);
    if (!m) {
        json_ws(d);
        if (d->pos != d->len) m = "trailing characters after the JSON value";
    }
    if (m) {
        int line, col;
        json_where(d, d->pos, &line, &col);
        nla_status st = strcmp(m, "out of memory") ? NLA_ERR_FORMAT : NLA_ERR_NOMEM;
        json_free(d);
        return fail(e, st, "%s: invalid JSON at line %d, column %d: %s", what, line, col, m);
    }
    return NLA_OK;
}

/* Decodes string node i into dst (capacity cap, always NUL-terminated when
   cap > 0). Returns the decoded length, which may exceed cap - 1 (then dst is
   truncated). \u escapes, including surrogate pairs, become UTF-8. */
static size_t json_str(const jdoc *d, int i, char *dst, size_t cap) {
    const char *s = d->src + d->node[i].off;
    size_t n = d->node[i].len, o = 0;
#define PUT(ch) do { if (o + 1 < cap) dst[o] = (char)(ch); o++; } while (0)
    for (size_t k = 0; k < n; k++) {
        if (s[k] != '\\') { PUT(s[k]); continue; }
        char c = s[++k];
        if (c == 'u') {
            uint32_t cp = 0;
            for (int j = 1; j <= 4; j++) cp = cp * 16 + (uint32_t)hexval(s[k + j]);
            k += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && k + 6 < n && s[k + 1] == '\\' && s[k + 2] == 'u') {
                uint32_t lo = 0;
                for (int j = 3; j <= 6; j++) lo = lo * 16 + (uint32_t)hexval(s[k + j]);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    k += 6;
                }
            }
            if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd; /* lone surrogate */
            if (cp < 0x80) PUT(cp);
            else if (cp < 0x800) { PUT(0xc0 | (cp >> 6)); PUT(0x80 | (cp & 0x3f)); }
            else if (cp < 0x10000) {
                PUT(0xe0 | (cp >> 12)); PUT(0x80 | ((cp >> 6) & 0x3f)); PUT(0x80 | (cp & 0x3f));
            } else {
                PUT(0xf0 | (cp >> 18)); PUT(0x80 | ((cp >> 12) & 0x3f));
                PUT(0x80 | ((cp >> 6) & 0x3f)); PUT(0x80 | (cp & 0x3f));
            }
        } else {
            PUT(c == 'b'   ? '\b'
                : c == 'f' ? '\f'
                : c == 'n' ? '\n'
                : c == 'r' ? '\r'
                : c == 't' ? '\t'
                           : c);
        }
    }
#undef PUT
    if (cap) dst[o < cap ? o : cap - 1] = 0;
    return o;
}

/* Appends s[0..n) as a JSON string literal: quotes, escapes for '"', '\\'
   and control characters; bytes that are not valid UTF-8 become U+FFFD so
   the output is always valid JSON. */
static void json_put_string(sbuf *b, const char *s, size_t n) {
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        const unsigned char c = (unsigned char)s[i];
        const int k = utf8_char_len((const unsigned char *)s + i, n - i);
        if (!k) {
            sb_str(b, "\xef\xbf\xbd"); /* one byte that is not UTF-8 */
        } else if (k > 1) {
            sb_put(b, s + i, (size_t)k);
        } else if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc,
                     c == '\n'   ? "\\n"
                     : c == '\t' ? "\\t"
                     : c == '\r' ? "\\r"
                                 : "\\u%04x",
                     c);
            sb_str(b, esc);
        } else {
            sb_put(b, s + i, 1);
        }
        i += k ? (size_t)k : 1;
    }
    sb_put(b, "\"", 1);
}

/* Decoded string node i as a fresh heap string (NULL when out of memory). */
static char *json_strdup(const jdoc *d, int i) {
    size_t n = json_str(d, i, NULL, 0);
    char *s = (char *)NLA_MALLOC(n + 1);
    if (s) json_str(d, i, s, n + 1);
    return s;
}

/* Does string node i decode to exactly `lit`? */
static int json_eq(const jdoc *d, int i, const char *lit) {
    size_t n = strlen(lit);
    if (d->node[i].type != J_STR) return 0;
    if (!d->node[i].escaped) return d->node[i].len == n && !memcmp(d->src + d->node[i].off, lit, n);
    char buf[256];
    if (n >= sizeof buf) return 0;
    size_t m = json_str(d, i, buf, sizeof buf);
    return m == n && !memcmp(buf, lit, n);
}

/* Value node of `key` in object node obj, or -1 (also when obj is not an
   object or obj < 0). The last occurrence wins, as in Python's json. */
static int json_get(const jdoc *d, int obj, const char *key) {
    if (obj < 0 || d->node[obj].type != J_OBJ) return -1;
    int found = -1;
    uint32_t i = (uint32_t)obj + 1;
    for (uint32_t m = 0; m < d->node[obj].n; m++) {
        if (json_eq(d, (int)i, key)) found = (int)i + 1;
        i = d->node[i + 1].end;
    }
    return found;
}

/* s[0..n) as a double if it is exactly a JSON number (also the number
   syntax of the sidecar reader), parsed without the C locale: digits are
   gathered into an integer and scaled by an exact power of ten when both
   fit (the common case, exact), else by powl. Returns 0 on bad syntax. */
static int dec_parse(const char *s, size_t n, double *out) {
    static const double p10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *end = s + n;
    int neg = s < end && *s == '-';
    s += neg;
    if (s == end || *s < '0' || *s > '9' ||
        (*s == '0' && s + 1 < end && s[1] >= '0' && s[1] <= '9'))
        return 0;
    uint64_t m = 0;
    long e10 = 0;
    int digits = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        if (digits < 19) { m = m * 10 + (uint64_t)(*s - '0'); if (m) digits++; }
        else e10++;
    }
    if (s < end && *s == '.') {
        if (++s == end || *s < '0' || *s > '9') return 0;
        for (; s < end && *s >= '0' && *s <= '9'; s++)
            if (digits < 19) { m = m * 10 + (uint64_t)(*s - '0'); e10--; if (m) digits++; }
    }
    if (s < end && (*s == 'e' || *s == 'E')) {
        int eneg = ++s < end && *s == '-';
        if (s < end && (*s == '+' || *s == '-')) s++;
        if (s == end || *s < '0' || *s > '9') return 0;
        long x = 0;
        for (; s < end && *s >= '0' && *s <= '9'; s++) if (x < 100000) x = x * 10 + (*s - '0');
        e10 += eneg ? -x : x;
    }
    if (s != end) return 0;
    double v;
    if (m < (1ull << 53) && e10 >= -22 && e10 <= 22)
        v = e10 < 0 ? (double)m / p10[-e10] : (double)m * p10[e10];
    else if (m == 0)
        v = 0;
    else
        v = (double)((long double)m * powl(10.0L, (long double)e10));
    *out = neg ? -v : v;
    return 1;
}

/* Number node as a double; 0 if i is not a number. */
static int json_num(const jdoc *d, int i, double *out) {
    return i >= 0 && d->node[i].type == J_NUM &&
           dec_parse(d->src + d->node[i].off, d->node[i].len, out);
}

/* Number node as a non-negative integer: digits only (no sign, fraction or
   exponent) and no overflow. Returns 0 otherwise. */
static int json_u64(const jdoc *d, int i, uint64_t *out) {
    if (i < 0 || d->node[i].type != J_NUM) return 0;
    const char *s = d->src + d->node[i].off;
    size_t n = d->node[i].len;
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++) {
        if (s[k] < '0' || s[k] > '9') return 0;
        uint64_t dgt = (uint64_t)(s[k] - '0');
        if (v > (UINT64_MAX - dgt) / 10) return 0;
        v = v * 10 + dgt;
    }
    *out = v;
    return 1;
}

/* Integer-valued number node (e.g. 6 or 6.0) that fits an int. */
static int json_int(const jdoc *d, int i, int *out) {
    double v;
    if (!json_num(d, i, &v) || v != floor(v) || v < INT_MIN || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

/* ==== 4 Safetensors: files, headers, validation, shards ================= */

/* Format (huggingface/safetensors): u64 little-endian header length N, N
   bytes of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]},
   "__metadata__": {str: str}}, then the byte buffer; offsets are relative to
   the buffer, which the tensors must cover exactly with no gap or overlap.
   Files are mapped read-only (or read whole with NLA_NO_MMAP / no_mmap) and
   never written. A folder with model.safetensors.index.json is a sharded
   checkpoint: its weight_map names a shard per tensor. */

typedef struct {
    const char *name;
    int bits; /* bits per element */
} st_dtype_info;

/* Every dtype of the format, so that any valid file parses; which dtypes a
   model accepts is decided at binding (section 8). */
static const st_dtype_info st_dtypes[] = {
    {"F32", 32},     {"F16", 16},         {"BF16", 16},        {"F64", 64},      {"I8", 8},
    {"U8", 8},       {"I16", 16},         {"U16", 16},         {"I32", 32},      {"U32", 32},
    {"I64", 64},     {"U64", 64},         {"BOOL", 8},         {"C64", 64},      {"F8_E5M2", 8},
    {"F8_E4M3", 8},  {"F8_E8M0", 8},      {"F8_E4M3FNUZ", 8},  {"F8_E5M2FNUZ", 8}, {"F4", 4},
    {"F6_E2M3", 6},  {"F6_E3M2", 6},
};
#define ST_N_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))
#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    int dtype; /* index into st_dtypes */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* relative to the file's byte buffer */
    const unsigned char *data;
    int file; /* index into nla_st.files */
} st_tensor;

typedef struct {
    char *path;       /* full path */
    const char *base; /* file name within path */
    unsigned char *map;
    size_t size;
    int mapped;       /* 1: munmap, 0: free */
    char **meta;      /* __metadata__ as key, value, key, value, ... */
    int n_meta;
} st_file;

struct nla_st {
    st_file *files;
    int n_files;
    st_tensor *t; /* sorted by name */
    int n;
};

static const char *path_base(const char *p) {
    const char *b = strrchr(p, '/');
#ifdef _WIN32
    const char *b2 = strrchr(p, '\\');
    if (b2 > b) b = b2;
#endif
    return b ? b + 1 : p;
}

/* The folder part of a file path ("." when there is none). */
static char *dir_of(const char *path) {
    const char *base = path_base(path);
    if (base == path) return xstrndup(".", 1);
    if (base == path + 1) return xstrndup("/", 1);
    return xstrndup(path, (size_t)(base - path - 1));
}

/* Reads stream f (named `path` in messages) to its end into a NUL-terminated
   heap buffer, at most max bytes. */
static nla_status read_stream(FILE *f, const char *path, char **out, size_t *n_out, size_t max,
                              errbuf *e) {
    size_t cap = 4096, n = 0;
    char *buf = (char *)NLA_MALLOC(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        if (cap >= max) {
            NLA_FREE(buf);
            return fail(e, NLA_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
        }
        char *nb = (char *)NLA_REALLOC(buf, cap * 2 + 1);
        if (!nb) { NLA_FREE(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    const int bad = ferror(f) ? (errno ? errno : EIO) : 0;
    if (!buf) return fail(e, NLA_ERR_NOMEM, "%s: out of memory reading it", path);
    if (bad) {
        NLA_FREE(buf);
        return fail(e, NLA_ERR_IO, "%s: cannot read (%s)", path, strerror(bad));
    }
    buf[n] = 0;
    *out = buf;
    if (n_out) *n_out = n;
    return NLA_OK;
}

/* Reads a whole small file (config.json, index files) into a NUL-terminated
   heap buffer. */
static nla_status read_file(const char *path, char **out, size_t *n_out, size_t max, errbuf *e) {
    *out = NULL;
    errno = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return fail(e, NLA_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    errno = 0;
    const nla_status rc = read_stream(f, path, out, n_out, max, e);
    fclose(f);
    return rc;
}

/* Every file is written atomically: into path.tmp beside it, synced to the
   disk, then renamed over it, so that a full disk, a kill or a crash leaves
   the old file whole (or none). One writer per path: the temporary file is
   locked (an fcntl lock, which the kernel drops when its holder ends,
   however it ends) from its opening until it has its name, and a second
   writer is refused (lock_file). A failure names the file and
   gives the system's reason. Use: out_open, out_write (or fprintf to o.f),
   then out_commit, which also cleans up after a failure. */
typedef struct {
    FILE *f;
    char *tmp;
    const char *path;
    int err; /* errno of the first failure; 0 none */
} out_file;

/* The temporary file path is written as (malloc'd; NULL when memory runs out). */
static char *tmp_path(const char *path) {
    char *t = (char *)NLA_MALLOC(strlen(path) + 5);
    if (t) sprintf(t, "%s.tmp", path);
    return t;
}

#ifndef _WIN32
#if defined(__linux__) && !defined(F_OFD_SETLK)
#define F_OFD_SETLK 37 /* Linux 3.15 on; <fcntl.h> names it only with _GNU_SOURCE */
#endif

/* An exclusive lock on the whole of fd's file, not waiting: 0, or -1 with
   errno (EAGAIN or EACCES: another writer holds it). The lock belongs to
   the open file (an OFD lock), so that two writers in one process exclude
   each other too; where the kernel or the file system refuses those (an
   old kernel, some NFS, FUSE), it is fcntl's classic lock, the process's.
   An OFD lock is dropped when the last descriptor of the open file closes
   (a child forked meanwhile holds one; exec closes it: O_CLOEXEC), a
   classic one when the process closes any descriptor of the file; both
   when the process ends, however it ends. */
static int lock_file(int fd) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
#ifdef F_OFD_SETLK
    if (!fcntl(fd, F_OFD_SETLK, &fl)) return 0;
    if (errno == EAGAIN || errno == EACCES) return -1;
#endif
    return fcntl(fd, F_SETLK, &fl);
}

/* Opens o->tmp, locked and empty, into o->f; 1 when another writer holds
   it. A file left there by a writer that ended is taken over; a link left
   there (to another file) loses its name, never what it holds; a file that
   gets its final name between the opening and the lock is let go. */
static int out_open_locked(out_file *o) {
    for (int tries = 0; tries < 8 && !o->f && !o->err; tries++) {
        const int fd = open(o->tmp, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0666);
        struct stat at, named;
        if (fd < 0) {
            if (errno == ELOOP) remove(o->tmp); /* a symbolic link */
            else o->err = errno;
            continue;
        }
        if (lock_file(fd) && (errno == EACCES || errno == EAGAIN)) {
            close(fd);
            return 1;
        } /* (a file system without locks: written unlocked) */
        const int moved = fstat(fd, &at) || lstat(o->tmp, &named) ||
                          at.st_dev != named.st_dev || at.st_ino != named.st_ino;
        if (moved || at.st_nlink > 1) {
            if (!moved) remove(o->tmp); /* a hard link to another file: its name goes */
            close(fd);
            continue;
        }
        if (ftruncate(fd, 0) || (o->f = fdopen(fd, "wb")) == NULL) {
            o->err = errno;
            remove(o->tmp);
            close(fd);
        }
    }
    if (!o->f && !o->err) o->err = EAGAIN;
    return 0;
}
#endif

/* An output replaces a regular file, or a symbolic link (never what it
   points to), or is new: an existing folder, device, FIFO or socket at path
   is refused, never replaced. */
static nla_status out_check(const char *path, errbuf *e) {
#ifndef _WIN32
    struct stat sb;
    if (!lstat(path, &sb) && !S_ISREG(sb.st_mode) && !S_ISLNK(sb.st_mode))
        return fail(e, NLA_ERR_IO, "%s: not a regular file: give the path of a file to write",
                    path);
#else
    (void)path;
    (void)e;
#endif
    return NLA_OK;
}

static nla_status out_open(out_file *o, const char *path, errbuf *e) {
    memset(o, 0, sizeof *o);
    o->path = path;
    const nla_status kind = out_check(path, e);
    if (kind) return kind;
    if (!(o->tmp = tmp_path(path))) return fail(e, NLA_ERR_NOMEM, "%s: out of memory", path);
#ifndef _WIN32
    if (out_open_locked(o)) {
        nla_status rc = fail(e, NLA_ERR_BUSY, "%s: another writer has it open (%s is locked)",
                             path, o->tmp);
        NLA_FREE(o->tmp);
        o->tmp = NULL;
        return rc;
    }
#else
    remove(o->tmp);
    o->f = fopen(o->tmp, "wb");
    if (!o->f) o->err = errno;
#endif
    if (o->f) return NLA_OK;
    NLA_FREE(o->tmp);
    o->tmp = NULL;
    return fail(e, NLA_ERR_IO, "%s: cannot write (%s)", path, strerror(o->err));
}

/* n bytes at the end; a failure is kept for out_commit. */
static void out_write(out_file *o, const void *p, size_t n) {
    errno = 0;
    if (!o->err && n && fwrite(p, 1, n, o->f) != n) o->err = errno ? errno : EIO;
}

/* Syncs the folder that holds path, so that a name just given there (a
   rename, a new file or folder) survives a crash as the file's bytes do:
   0, or an errno. A folder this process may not read, a file system that
   cannot sync folders (EINVAL), or a system without fsync leaves nothing
   more to do: 0. */
static int sync_dir_of(const char *path) {
#ifndef _WIN32
    char *d = dir_of(path);
    if (!d) return ENOMEM;
    const int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    NLA_FREE(d);
    if (fd < 0) return errno == EACCES ? 0 : errno;
    const int err = NLA_FSYNC(fd) && errno != EINVAL ? errno : 0;
    close(fd);
    return err;
#else
    (void)path;
    return 0;
#endif
}

/* Syncs the file, renames it over path and syncs the folder, then closes
   it (where the system allows renaming an open file: its lock holds until
   it has its name); after a failure (o->err, which a caller may set too)
   removes it and says why. */
static nla_status out_commit(out_file *o, errbuf *e) {
    if (!o->f) return NLA_OK;
    errno = 0;
    if (!o->err && (fflush(o->f) || ferror(o->f))) o->err = errno ? errno : EIO;
#ifndef _WIN32
    if (!o->err && NLA_FSYNC(fileno(o->f))) o->err = errno;
    if (!o->err && rename(o->tmp, o->path)) o->err = errno;
    if (o->err) remove(o->tmp);
    else o->err = sync_dir_of(o->path);
    if (fclose(o->f) && !o->err) o->err = errno ? errno : EIO;
#else
    if (fclose(o->f) && !o->err) o->err = errno ? errno : EIO;
    if (!o->err && rename(o->tmp, o->path)) o->err = errno;
    if (o->err) remove(o->tmp);
#endif
    o->f = NULL;
    NLA_FREE(o->tmp);
    o->tmp = NULL;
    return o->err ? fail(e, o->err == ENOMEM ? NLA_ERR_NOMEM : NLA_ERR_IO, "%s: cannot write (%s)",
                         o->path, strerror(o->err))
                  : NLA_OK;
}

/* Writes n bytes as path, atomically. */
static nla_status write_file(const char *path, const void *data, size_t n, errbuf *e) {
    out_file o;
    nla_status rc = out_open(&o, path, e);
    if (!rc) out_write(&o, data, n);
    return rc ? rc : out_commit(&o, e);
}

/* Are a and b the same existing file or folder (device and inode; the same
   name where there is no stat)? Outputs are checked against inputs with it. */
static int same_file(const char *a, const char *b) {
#ifndef _WIN32
    struct stat x, y;
    return a && b && !stat(a, &x) && !stat(b, &y) && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
#else
    return a && b && !strcmp(a, b);
#endif
}

nla_status nla_file_write(const char *path, const void *data, size_t n, char *errbuf_out,
                          size_t errbuf_size) {
    errbuf e;
    nla_status rc;
    e.msg[0] = 0;
    rc = path && (data || !n) ? write_file(path, data, n, &e)
                              : fail(&e, NLA_ERR_ARG, "nla_file_write: path and data are required");
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

static void st_file_free(st_file *f) {
    if (f->map) {
#ifndef NLA_NO_MMAP
        if (f->mapped) munmap(f->map, f->size);
        else
#endif
            NLA_FREE(f->map);
    }
    for (int i = 0; i < f->n_meta * 2; i++) NLA_FREE(f->meta[i]);
    NLA_FREE(f->meta);
    NLA_FREE(f->path);
    memset(f, 0, sizeof *f);
}

/* Asks the kernel to back the n bytes at p with huge pages where it can
   (Linux's transparent huge pages): weights streamed once per token then
   take far fewer TLB misses, and the hardware prefetcher is not stopped at
   every 4 KB page. For a mapped file this holds for the pages read from the
   disk from then on (a file already cached keeps the pages it has). fill:
   the memory is the process's own and not touched yet; it is faulted in at
   once, while free memory is in one piece (filled later by read(), it would
   compete with the page cache for free blocks and get small pages where no
   2 MB block is left); a kernel before 5.14 refuses that advice, which
   changes nothing. */
static void advise_huge(void *p, size_t n, int fill) {
#if !defined(NLA_NO_MMAP) && defined(MADV_HUGEPAGE)
    const uintptr_t hp = (uintptr_t)2 << 20, a = ((uintptr_t)p + hp - 1) & ~(hp - 1),
                    b = ((uintptr_t)p + n) & ~(hp - 1);
    if (b > a) madvise((void *)a, (size_t)(b - a), MADV_HUGEPAGE);
#ifdef MADV_POPULATE_WRITE
    if (fill && b > a) madvise((void *)a, (size_t)(b - a), MADV_POPULATE_WRITE);
#else
    (void)fill;
#endif
#else
    (void)p;
    (void)n;
    (void)fill;
#endif
}

/* Maps (or reads) the whole file. */
static nla_status st_map(st_file *f, int no_mmap, errbuf *e) {
#ifndef NLA_NO_MMAP
    int fd = open(f->path, O_RDONLY);
    if (fd < 0) return fail(e, NLA_ERR_IO, "%s: cannot open (%s)", f->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return fail(e, NLA_ERR_IO, "%s: not a regular file", f->path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX / 2) {
        close(fd);
        return fail(e, NLA_ERR_IO, "%s: too large for this platform's memory", f->path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size == 0) {
        close(fd);
        return fail(e, NLA_ERR_FORMAT, "%s: empty file, not safetensors", f->path);
    }
    if (!no_mmap) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (p == MAP_FAILED) return fail(e, NLA_ERR_IO, "%s: mmap failed", f->path);
        f->map = (unsigned char *)p;
        f->mapped = 1;
        advise_huge(p, f->size, 0);
        return NLA_OK;
    }
    /* read whole, into memory advised for huge pages before it is filled */
    unsigned char *buf = (unsigned char *)NLA_MALLOC(f->size);
    size_t got = 0;
    int err = 0; /* errno of a failed read; -1: the file ended early */
    if (!buf) {
        close(fd);
        return fail(e, NLA_ERR_NOMEM, "%s: out of memory for its %zu bytes", f->path, f->size);
    }
    advise_huge(buf, f->size, 1);
    while (got < f->size && !err) {
        const size_t want = f->size - got < ((size_t)1 << 30) ? f->size - got : (size_t)1 << 30;
        const ssize_t r = read(fd, buf + got, want);
        if (r > 0) got += (size_t)r;
        else if (r == 0) err = -1;
        else if (errno != EINTR) err = errno;
    }
    close(fd);
    if (err) {
        NLA_FREE(buf);
        return fail(e, NLA_ERR_IO, "%s: cannot read (%s)", f->path,
                    err < 0 ? "shorter than when opened" : strerror(err));
    }
    f->map = buf;
    f->mapped = 0;
    return NLA_OK;
#else
    (void)no_mmap;
    char *buf;
    size_t n;
    nla_status st = read_file(f->path, &buf, &n, SIZE_MAX / 4, e);
    if (st) return st;
    f->map = (unsigned char *)buf;
    f->size = n;
    f->mapped = 0;
    return NLA_OK;
#endif
}

static int st_cmp_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin   ? -1
           : x->begin > y->begin ? 1
                                 : (x->end > y->end) - (x->end < y->end);
}

static int st_cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Parses and validates the header of file `fi`, appending its tensors to
   t[*n] (grown as needed). Every rule of the format is checked here. */
static nla_status st_parse(nla_st *st, int fi, errbuf *e) {
    st_file *f = &st->files[fi];
    const char *fn = f->path;
    if (f->size < 8)
        return fail(e, NLA_ERR_FORMAT, "%s: %zu bytes, too short for a safetensors header", fn,
                    f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->map[i];
    if (hlen > NLA_MAX_HEADER)
        return fail(e, NLA_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", fn,
                    (unsigned long long)hlen, NLA_MAX_HEADER);
    if (hlen > f->size - 8)
        return fail(e, NLA_ERR_FORMAT,
                    "%s: header length %llu runs past the end of the %zu-byte file", fn,
                    (unsigned long long)hlen, f->size);
    const char *h = (const char *)f->map + 8;
    if (hlen == 0 || h[0] != '{')
        return fail(e, NLA_ERR_FORMAT, "%s: header does not start with '{'", fn);
    if (!utf8_valid((const unsigned char *)h, (size_t)hlen))
        return fail(e, NLA_ERR_FORMAT, "%s: header is not valid UTF-8", fn);
    jdoc d;
    nla_status rc = json_parse(&d, h, (size_t)hlen, e, fn);
    if (rc) return rc;
    if (d.node[0].type != J_OBJ) {
        json_free(&d);
        return fail(e, NLA_ERR_FORMAT, "%s: header is not a JSON object", fn);
    }
    const uint64_t data_len = f->size - 8 - hlen;
    const unsigned char *data = f->map + 8 + hlen;
    int first = st->n;
    st_tensor *nt = (st_tensor *)NLA_REALLOC(st->t, ((size_t)st->n + d.node[0].n + 1) * sizeof *nt);
    if (!nt) {
        json_free(&d);
        return fail(e, NLA_ERR_NOMEM, "%s: out of memory for the tensor table", fn);
    }
    st->t = nt;
    uint32_t k = 1;
    char key[160];
    for (uint32_t m = 0; m < d.node[0].n; m++, k = d.node[k + 1].end) {
        int v = (int)k + 1;
        json_str(&d, (int)k, key, sizeof key);
        if (json_eq(&d, (int)k, "__metadata__")) {
            if (d.node[v].type != J_OBJ) {
                rc = fail(e, NLA_ERR_FORMAT, "%s: __metadata__ is not an object", fn);
                goto out;
            }
            if (f->meta) {
                rc = fail(e, NLA_ERR_FORMAT, "%s: duplicate __metadata__", fn);
                goto out;
            }
            f->meta = (char **)xcalloc((size_t)d.node[v].n * 2 + 1, sizeof(char *));
            if (!f->meta) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn); goto out; }
            uint32_t q = (uint32_t)v + 1;
            for (uint32_t j = 0; j < d.node[v].n; j++, q = d.node[q + 1].end) {
                if (d.node[q + 1].type != J_STR) {
                    rc = fail(e, NLA_ERR_FORMAT, "%s: __metadata__ value is not a string", fn);
                    goto out;
                }
                f->meta[2 * j] = json_strdup(&d, (int)q);
                f->meta[2 * j + 1] = json_strdup(&d, (int)q + 1);
                f->n_meta++;
                if (!f->meta[2 * j] || !f->meta[2 * j + 1]) {
                    rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn);
                    goto out;
                }
            }
            continue;
        }
        if (d.node[v].type != J_OBJ) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s' is not an object", fn, key);
            goto out;
        }
        int jd = json_get(&d, v, "dtype"), js = json_get(&d, v, "shape"),
            jo = json_get(&d, v, "data_offsets");
        if (jd < 0 || js < 0 || jo < 0 || d.node[jd].type != J_STR || d.node[js].type != J_ARR ||
            d.node[jo].type != J_ARR) {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: tensor '%s' needs string dtype, array shape and array data_offsets", fn,
                      key);
            goto out;
        }
        if (d.node[v].n != 3) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s' has unexpected fields", fn, key);
            goto out;
        }
        st_tensor *t = &st->t[st->n];
        memset(t, 0, sizeof *t);
        t->file = fi;
        t->dtype = -1;
        for (int q = 0; q < ST_N_DTYPES; q++)
            if (json_eq(&d, jd, st_dtypes[q].name)) t->dtype = q;
        if (t->dtype < 0) {
            char dt[32];
            json_str(&d, jd, dt, sizeof dt);
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", fn, key, dt);
            goto out;
        }
        if (d.node[js].n > ST_MAX_DIMS) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (at most %d)", fn, key,
                      d.node[js].n, ST_MAX_DIMS);
            goto out;
        }
        uint64_t count = 1, bits;
        uint32_t q = (uint32_t)js + 1;
        for (uint32_t j = 0; j < d.node[js].n; j++, q = d.node[q].end) {
            uint64_t dim;
            if (!json_u64(&d, (int)q, &dim) || dim > (uint64_t)INT64_MAX) {
                rc = fail(e, NLA_ERR_FORMAT,
                          "%s: tensor '%s': shape entries must be non-negative integers", fn, key);
                goto out;
            }
            t->shape[j] = (int64_t)dim;
            if (!mul_u64(count, dim, &count)) {
                rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s': shape overflows", fn, key);
                goto out;
            }
        }
        t->ndim = (int)d.node[js].n;
        if (d.node[jo].n != 2 || !json_u64(&d, jo + 1, &t->begin) ||
            !json_u64(&d, jo + 2, &t->end)) {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: tensor '%s': data_offsets must be two non-negative integers", fn, key);
            goto out;
        }
        if (!mul_u64(count, (uint64_t)st_dtypes[t->dtype].bits, &bits)) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s': shape overflows", fn, key);
            goto out;
        }
        if (bits % 8) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s': size is not a whole number of bytes", fn,
                      key);
            goto out;
        }
        if (t->end < t->begin || t->end - t->begin != bits / 8) {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: tensor '%s': data_offsets [%llu, %llu] do not hold %llu bytes "
                      "(%s, %llu elements)",
                      fn, key, (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)(bits / 8), st_dtypes[t->dtype].name,
                      (unsigned long long)count);
            goto out;
        }
        if (t->end > data_len) {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: tensor '%s': data_offsets end %llu is past the end of the data "
                      "(%llu bytes)",
                      fn, key, (unsigned long long)t->end, (unsigned long long)data_len);
            goto out;
        }
        t->data = data + t->begin;
        if (!(t->name = json_strdup(&d, (int)k))) {
            rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn);
            goto out;
        }
        st->n++;
    }
    /* coverage: sorted by offset, the tensors must tile [0, data_len) */
    {
        int nt_file = st->n - first;
        const st_tensor **ord = (const st_tensor **)xmalloc((size_t)nt_file + 1, sizeof *ord);
        if (!ord) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn); goto out; }
        for (int i = 0; i < nt_file; i++) ord[i] = &st->t[first + i];
        qsort(ord, (size_t)nt_file, sizeof *ord, st_cmp_begin);
        uint64_t at = 0;
        for (int i = 0; i < nt_file && !rc; i++) {
            if (ord[i]->begin != at)
                rc = fail(e, NLA_ERR_FORMAT,
                          "%s: tensor '%s' starts at %llu but the previous data ends at %llu (%s)",
                          fn, ord[i]->name, (unsigned long long)ord[i]->begin,
                          (unsigned long long)at, ord[i]->begin < at ? "overlap" : "gap");
            at = ord[i]->end;
        }
        NLA_FREE(ord);
        if (!rc && at != data_len)
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: tensors cover %llu bytes of the %llu-byte data section", fn,
                      (unsigned long long)at, (unsigned long long)data_len);
    }
out:
    json_free(&d);
    return rc;
}

static nla_status st_add_file(nla_st *st, const char *path, int no_mmap, errbuf *e) {
    st_file *nf = (st_file *)NLA_REALLOC(st->files, ((size_t)st->n_files + 1) * sizeof *nf);
    if (!nf) return fail(e, NLA_ERR_NOMEM, "%s: out of memory", path);
    st->files = nf;
    st_file *f = &st->files[st->n_files++];
    memset(f, 0, sizeof *f);
    if (!(f->path = xstrndup(path, strlen(path))))
        return fail(e, NLA_ERR_NOMEM, "%s: out of memory", path);
    f->base = path_base(f->path);
    nla_status rc = st_map(f, no_mmap, e);
    return rc ? rc : st_parse(st, st->n_files - 1, e);
}

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

#ifndef NLA_NO_EVAL /* used by nla eval only (section 14) */
/* Is there something at path, a file this process may not read included? */
static int path_present(const char *path) {
    errno = 0;
    FILE *f = fopen(path, "rb");
    const int present = f != NULL || errno != ENOENT;
    if (f) fclose(f);
    return present;
}
#endif

/* dir + "/" + name into a fresh string. */
static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = (char *)NLA_MALLOC(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        if (a && dir[a - 1] != '/') p[a++] = '/';
        memcpy(p + a, name, b + 1);
    }
    return p;
}

/* A shard name from an index file must be a plain file name. */
static int plain_file_name(const char *s) {
    return *s && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/') && !strchr(s, '\\') &&
           !strchr(s, ':');
}

/* Opens the shards named by an index file and checks that each tensor in
   its weight_map sits in the shard named for it. */
static nla_status st_open_index(nla_st *st, const char *dir, const char *index, int no_mmap,
                                errbuf *e) {
    char *txt;
    size_t n;
    nla_status rc = read_file(index, &txt, &n, NLA_MAX_JSON_FILE, e);
    if (rc) return rc;
    jdoc d;
    char **shards = NULL;
    int n_shards = 0;
    uint32_t k;
    if ((rc = json_parse(&d, txt, n, e, index))) { NLA_FREE(txt); return rc; }
    int wm = json_get(&d, 0, "weight_map");
    if (wm < 0 || d.node[wm].type != J_OBJ || d.node[wm].n == 0) {
        rc = fail(e, NLA_ERR_FORMAT, "%s: no weight_map object", index);
        goto out;
    }
    shards = (char **)xcalloc(d.node[wm].n, sizeof(char *));
    if (!shards) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", index); goto out; }
    k = (uint32_t)wm + 1;
    for (uint32_t m = 0; m < d.node[wm].n; m++, k = d.node[k + 1].end) {
        if (d.node[k + 1].type != J_STR) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: weight_map values must be file names", index);
            goto out;
        }
        char name[256];
        if (json_str(&d, (int)k + 1, name, sizeof name) >= sizeof name || !plain_file_name(name)) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: shard '%s' is not a plain file name", index, name);
            goto out;
        }
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++) seen = !strcmp(shards[i], name);
        if (!seen) {
            if (!(shards[n_shards] = xstrndup(name, strlen(name)))) {
                rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", index);
                goto out;
            }
            n_shards++;
            char *p = path_join(dir, name);
            if (!p) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", index); goto out; }
            rc = st_add_file(st, p, no_mmap, e);
            NLA_FREE(p);
            if (rc) goto out;
        }
    }
    qsort(st->t, (size_t)st->n, sizeof *st->t, st_cmp_name);
    k = (uint32_t)wm + 1;
    for (uint32_t m = 0; m < d.node[wm].n; m++, k = d.node[k + 1].end) {
        char name[256], shard[256];
        json_str(&d, (int)k, name, sizeof name);
        json_str(&d, (int)k + 1, shard, sizeof shard);
        st_tensor key;
        key.name = name;
        st_tensor *t = (st_tensor *)bsearch(&key, st->t, (size_t)st->n, sizeof *st->t, st_cmp_name);
        if (!t || strcmp(st->files[t->file].base, shard)) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s' is mapped to %s but is not in that file",
                      index, name, shard);
            goto out;
        }
    }
out:
    if (shards)
        for (int i = 0; i < n_shards; i++) NLA_FREE(shards[i]);
    NLA_FREE(shards);
    json_free(&d);
    NLA_FREE(txt);
    return rc;
}

void nla_st_close(nla_st *st) {
    if (!st) return;
    for (int i = 0; i < st->n_files; i++) st_file_free(&st->files[i]);
    for (int i = 0; i < st->n; i++) NLA_FREE(st->t[i].name);
    NLA_FREE(st->files);
    NLA_FREE(st->t);
    NLA_FREE(st);
}

/* Whether path is a folder. Without POSIX: whether it holds config.json or
   tokenizer.json (checked without allocating; longer paths than 4 KB are
   not folders there). */
static int is_dir(const char *path) {
#ifndef NLA_NO_MMAP
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
#else
    char p[4096];
    return (snprintf(p, sizeof p, "%s/config.json", path) < (int)sizeof p && file_exists(p)) ||
           (snprintf(p, sizeof p, "%s/tokenizer.json", path) < (int)sizeof p && file_exists(p));
#endif
}

/* Whether path names a sharded checkpoint's index (NAME.index.json). */
static int is_index_json(const char *path) {
    const size_t n = strlen(path);
    return n > 11 && !strcmp(path + n - 11, ".index.json");
}

static nla_status st_open(const char *path, int no_mmap, nla_st **out, errbuf *e) {
    *out = NULL;
    nla_st *st = (nla_st *)NLA_CALLOC(1, sizeof *st);
    if (!st) return fail(e, NLA_ERR_NOMEM, "out of memory");
    nla_status rc;
    if (is_dir(path)) {
        char *idx = path_join(path, "model.safetensors.index.json"),
             *one = path_join(path, "model.safetensors");
        if (!idx || !one) rc = fail(e, NLA_ERR_NOMEM, "out of memory");
        else if (file_exists(idx)) rc = st_open_index(st, path, idx, no_mmap, e);
        else if (file_exists(one)) rc = st_add_file(st, one, no_mmap, e);
        else
            rc = fail(e, NLA_ERR_IO,
                      "%s: no model.safetensors or model.safetensors.index.json in this folder",
                      path);
        NLA_FREE(idx);
        NLA_FREE(one);
    } else if (is_index_json(path)) {
        char *dir = dir_of(path);
        rc = dir ? st_open_index(st, dir, path, no_mmap, e)
                 : fail(e, NLA_ERR_NOMEM, "out of memory");
        NLA_FREE(dir);
    } else {
        rc = st_add_file(st, path, no_mmap, e);
    }
    if (!rc) {
        qsort(st->t, (size_t)st->n, sizeof *st->t, st_cmp_name);
        for (int i = 1; i < st->n && !rc; i++)
            if (!strcmp(st->t[i].name, st->t[i - 1].name))
                rc = fail(e, NLA_ERR_FORMAT, "%s: tensor '%s' is defined twice (%s and %s)", path,
                          st->t[i].name, st->files[st->t[i - 1].file].base,
                          st->files[st->t[i].file].base);
    }
    if (rc) {
        nla_st_close(st);
        return rc;
    }
    *out = st;
    return NLA_OK;
}

nla_status nla_st_open(const char *path, int no_mmap, nla_st **out, char *errbuf_out,
                       size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    if (!out) return NLA_ERR_ARG;
    if (!path) {
        *out = NULL;
        copy_err(errbuf_out, errbuf_size, "path is NULL");
        return NLA_ERR_ARG;
    }
    nla_status rc = st_open(path, no_mmap, out, &e);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

int nla_st_count(const nla_st *st) { return st ? st->n : 0; }

int nla_st_find(const nla_st *st, const char *name) {
    if (!st || !name) return -1;
    st_tensor key;
    key.name = (char *)(uintptr_t)name;
    const st_tensor *t =
        (const st_tensor *)bsearch(&key, st->t, (size_t)st->n, sizeof *st->t, st_cmp_name);
    return t ? (int)(t - st->t) : -1;
}

nla_status nla_st_get(const nla_st *st, int i, nla_tensor *out) {
    if (!st || !out || i < 0 || i >= st->n) return NLA_ERR_ARG;
    const st_tensor *t = &st->t[i];
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->dtype = st_dtypes[t->dtype].name;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof t->shape);
    out->data = t->data;
    out->nbytes = t->end - t->begin;
    out->file = st->files[t->file].base;
    return NLA_OK;
}

const char *nla_st_metadata(const nla_st *st, const char *key) {
    if (!st || !key) return NULL;
    for (int f = 0; f < st->n_files; f++)
        for (int i = 0; i < st->files[f].n_meta; i++)
            if (!strcmp(st->files[f].meta[2 * i], key)) return st->files[f].meta[2 * i + 1];
    return NULL;
}

/* The JSON header of a file holding tensors t[0..n) laid out back to back
   in that order, padded with spaces to a multiple of 8 bytes. */
static void st_header(sbuf *b, const nla_tensor *t, int n, const char *const *meta, int n_meta) {
    uint64_t off = 0;
    char num[64];
    sb_str(b, "{");
    if (n_meta) {
        sb_str(b, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_str(b, ",");
            json_put_string(b, meta[2 * i], strlen(meta[2 * i]));
            sb_str(b, ":");
            json_put_string(b, meta[2 * i + 1], strlen(meta[2 * i + 1]));
        }
        sb_str(b, n ? "}," : "}");
    }
    for (int i = 0; i < n; i++) {
        if (i) sb_str(b, ",");
        json_put_string(b, t[i].name, strlen(t[i].name));
        sb_str(b, ":{\"dtype\":\"");
        sb_str(b, t[i].dtype);
        sb_str(b, "\",\"shape\":[");
        for (int k = 0; k < t[i].ndim; k++) {
            snprintf(num, sizeof num, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
            sb_str(b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + t[i].nbytes));
        sb_str(b, num);
        off += t[i].nbytes;
    }
    sb_str(b, "}");
    while (b->len % 8) sb_put(b, " ", 1);
}

/* Tensor i's bytes, from t->data or from fill in chunks: NLA_ERR_NOMEM, or
   NLA_ERR_CANCELLED when fill stops it (write errors stay in o). */
static nla_status st_write_data(out_file *o, const nla_tensor *t, int i, nla_fill_fn fill,
                                void *user) {
    if (t->data || !t->nbytes) {
        out_write(o, t->data, (size_t)t->nbytes);
        return NLA_OK;
    }
    const size_t chunk = (size_t)1 << 26;
    unsigned char *buf = (unsigned char *)NLA_MALLOC(t->nbytes < chunk ? (size_t)t->nbytes : chunk);
    nla_status rc = buf ? NLA_OK : NLA_ERR_NOMEM;
    for (uint64_t off = 0; !rc && !o->err && off < t->nbytes; off += chunk) {
        size_t len = t->nbytes - off < chunk ? (size_t)(t->nbytes - off) : chunk;
        if (fill(user, i, off, buf, len)) rc = NLA_ERR_CANCELLED;
        else out_write(o, buf, len);
    }
    NLA_FREE(buf);
    return rc;
}

nla_status nla_st_write(const char *path, const nla_tensor *t, int n, const char *const *meta,
                        int n_meta, nla_fill_fn fill, void *user, char *errbuf_out,
                        size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    nla_status rc = NLA_OK;
    if (!path || n < 0 || (n && !t) || n_meta < 0 || (n_meta && !meta)) {
        copy_err(errbuf_out, errbuf_size,
                 "nla_st_write: path, tensors and metadata pairs are required");
        return NLA_ERR_ARG;
    }
    for (int i = 0; i < n && !rc; i++) { /* each tensor must be what it says */
        int dt = -1;
        uint64_t count = 1, bits;
        for (int q = 0; q < ST_N_DTYPES && t[i].dtype; q++)
            if (!strcmp(t[i].dtype, st_dtypes[q].name)) dt = q;
        int shape_ok = 1;
        for (int k = 0; k < t[i].ndim && k < ST_MAX_DIMS; k++)
            shape_ok &= t[i].shape[k] >= 0 && mul_u64(count, (uint64_t)t[i].shape[k], &count);
        if (!t[i].name || !t[i].name[0] || !strcmp(t[i].name, "__metadata__") || dt < 0 ||
            t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS ||
            !shape_ok || !mul_u64(count, (uint64_t)st_dtypes[dt < 0 ? 0 : dt].bits, &bits) ||
            bits % 8 || bits / 8 != t[i].nbytes || (t[i].nbytes && !t[i].data && !fill))
            rc = fail(&e, NLA_ERR_ARG, "%s: tensor %d ('%s') has a bad name, dtype, shape or size",
                      path, i, t[i].name ? t[i].name : "");
        for (int j = 0; j < i && !rc; j++)
            if (!strcmp(t[i].name, t[j].name))
                rc = fail(&e, NLA_ERR_ARG, "%s: tensor '%s' given twice", path, t[i].name);
    }
    for (int i = 0; i < 2 * n_meta && !rc; i++)
        if (!meta[i])
            rc = fail(&e, NLA_ERR_ARG, "%s: metadata pair %d has a NULL %s", path, i / 2,
                      i % 2 ? "value" : "key");
    sbuf h = {NULL, 0, 0};
    if (!rc) {
        st_header(&h, t, n, meta, n_meta); /* measure */
        h.cap = h.len + 1;
        h.len = 0;
        if (!(h.out = (char *)NLA_MALLOC(h.cap))) rc = fail(&e, NLA_ERR_NOMEM, "out of memory");
        else st_header(&h, t, n, meta, n_meta);
    }
    out_file o;
    if (!rc && !(rc = out_open(&o, path, &e))) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
        out_write(&o, len8, 8);
        out_write(&o, h.out, h.len);
        for (int i = 0; i < n && !o.err && !rc; i++)
            if ((rc = st_write_data(&o, &t[i], i, fill, user)) != NLA_OK) {
                rc = rc == NLA_ERR_NOMEM
                         ? fail(&e, rc, "%s: out of memory", path)
                         : fail(&e, NLA_ERR_IO, "%s: the fill callback failed at tensor '%s'", path,
                                t[i].name);
                o.err = ECANCELED; /* no file */
            }
        const nla_status committed = out_commit(&o, rc ? NULL : &e);
        if (!rc) rc = committed;
    }
    NLA_FREE(h.out);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* ==== 5 Gemma 3 config: config.json, defaults, layer pattern, RoPE ====== */

/* config.json is flat for Gemma3ForCausalLM (model_type gemma3_text) and
   nests the language model under text_config for
   Gemma3ForConditionalGeneration (model_type gemma3). Omitted keys take
   Gemma3TextConfig's defaults (HF configuration_gemma3.py); every dimension
   is later cross-checked against the tensor shapes (section 8). Layer i is
   global (full attention) per `layer_types`, else iff (i + 1) % pattern == 0.
   RoPE comes in two spellings: rope_theta + rope_local_base_freq +
   rope_scaling (linear factor for global layers only), or rope_parameters,
   per layer type or flat. */

#define NLA_TOKENIZER_VOCAB 262144 /* ids at or past this are image/padding rows */

typedef struct {
    char arch[64];
    int n_layers, d, n_heads, n_kv, hd, d_ff, vocab, window, max_pos;
    float qpas;              /* query_pre_attn_scalar */
    float eps;
    float theta[2], factor[2]; /* [0] local (sliding), [1] global (full) */
    float final_softcap, attn_softcap; /* 0 = none */
    int tie;
    int bos, n_eos, eos[8];
    unsigned char is_global[NLA_MAX_LAYERS];
} gemma_cfg;

/* Whether v is a number a float holds (finite there: not NaN, |v| <= FLT_MAX). */
static int is_float(double v) { return fabs(v) <= FLT_MAX; }

/* Reads key from object o (or the fallback object o2 when absent there):
   absent or null leaves *out at its default; anything but a number is an
   error naming the key. */
static nla_status cfg_num(const jdoc *d, int o, int o2, const char *key, double *out, errbuf *e,
                          const char *fn) {
    int v = json_get(d, o, key);
    if (v < 0 && o2 >= 0 && o2 != o) v = json_get(d, o2, key);
    if (v < 0 || d->node[v].type == J_NULL) return NLA_OK;
    if (!json_num(d, v, out)) return fail(e, NLA_ERR_FORMAT, "%s: '%s' must be a number", fn, key);
    return NLA_OK;
}

static nla_status cfg_int(const jdoc *d, int o, const char *key, int *out, int lo, int hi,
                          errbuf *e, const char *fn) {
    int v = json_get(d, o, key);
    if (v < 0 || d->node[v].type == J_NULL) return NLA_OK;
    if (!json_int(d, v, out))
        return fail(e, NLA_ERR_FORMAT, "%s: '%s' must be an integer", fn, key);
    if (*out < lo || *out > hi)
        return fail(e, NLA_ERR_RANGE, "%s: '%s' = %d is outside %d..%d", fn, key, *out, lo, hi);
    return NLA_OK;
}

/* One RoPE parameter object {rope_type|type, rope_theta, factor}: only
   "default" and "linear" exist in Gemma 3; anything else is refused rather
   than silently run wrong. */
static nla_status cfg_rope(const jdoc *d, int o, float *theta, float *factor, errbuf *e,
                           const char *fn, const char *what) {
    if (o < 0 || d->node[o].type == J_NULL) return NLA_OK;
    if (d->node[o].type != J_OBJ)
        return fail(e, NLA_ERR_FORMAT, "%s: '%s' must be an object or null", fn, what);
    int t = json_get(d, o, "rope_type");
    if (t < 0) t = json_get(d, o, "type");
    char type[32] = "default";
    if (t >= 0 && d->node[t].type == J_STR) json_str(d, t, type, sizeof type);
    double v = *theta, f = 1.0;
    nla_status rc;
    if ((rc = cfg_num(d, o, -1, "rope_theta", &v, e, fn))) return rc;
    if (!(v > 1 && is_float(v)))
        return fail(e, NLA_ERR_RANGE, "%s: %s rope_theta must be a float above 1", fn,
                    what);
    *theta = (float)v;
    if (!strcmp(type, "linear")) {
        if ((rc = cfg_num(d, o, -1, "factor", &f, e, fn))) return rc;
        if (!(f > 0 && is_float(f)))
            return fail(e, NLA_ERR_RANGE, "%s: %s factor must be a positive float", fn,
                        what);
        *factor = (float)f;
    } else if (strcmp(type, "default")) {
        return fail(e, NLA_ERR_UNSUPPORTED,
                    "%s: %s rope_type '%s' is not supported (Gemma 3 uses default and linear)", fn,
                    what, type);
    }
    return NLA_OK;
}

/* Reads eos_token_id (node v of fn) into c->eos: an id or a list of at
   most 8 (nla_model_info's eos_ids), each an integer in [0, vocab_size);
   absent or null keeps the ids there are. Anything else is refused. */
static nla_status cfg_eos(const jdoc *d, int v, gemma_cfg *c, const char *fn, errbuf *e) {
    const int arr = v >= 0 && d->node[v].type == J_ARR;
    const int n = arr ? (int)d->node[v].n : 1;
    int eos[8];
    if (v < 0 || d->node[v].type == J_NULL) return NLA_OK;
    if (n > 8)
        return fail(e, NLA_ERR_RANGE, "%s: eos_token_id lists %d ids; at most 8 are supported",
                    fn, n);
    for (int k = 0, i = arr ? v + 1 : v; k < n; k++, i = (int)d->node[i].end) {
        const jnode *x = &d->node[i];
        const int is_int = json_int(d, i, &eos[k]);
        char what[64];
        if (is_int && eos[k] >= 0 && eos[k] < c->vocab) continue;
        if (x->type == J_NUM || x->type == J_STR)
            snprintf(what, sizeof what, x->type == J_STR ? "\"%.*s\"" : "%.*s",
                     (int)(x->len < 40 ? x->len : 40), d->src + x->off);
        else
            snprintf(what, sizeof what, "%s",
                     x->type == J_ARR   ? "(a list)"
                     : x->type == J_OBJ ? "(an object)"
                                        : x->type == J_TRUE ? "true" : x->type == J_FALSE ? "false"
                                                                                          : "null");
        return fail(e, is_int ? NLA_ERR_RANGE : NLA_ERR_FORMAT,
                    "%s: eos_token_id %s is not a token id: eos ids are integers in [0, %d) "
                    "(config.json's vocab_size)",
                    fn, what, c->vocab);
    }
    memcpy(c->eos, eos, sizeof(int) * (size_t)n);
    c->n_eos = n;
    return NLA_OK;
}

/* 1 if id is one of the model's stop ids (eos_token_id). */
static int cfg_is_eos(const gemma_cfg *c, int32_t id) {
    for (int k = 0; k < c->n_eos; k++)
        if (id == c->eos[k]) return 1;
    return 0;
}

/* The fields of a parsed config.json (HF defaults for those absent),
   checked against each other. */
static nla_status cfg_from_json(const jdoc *d, const char *fn, gemma_cfg *c, errbuf *e) {
    nla_status rc;
    /* Gemma3TextConfig defaults */
    memset(c, 0, sizeof *c);
    c->vocab = 262208; c->d = 2304; c->d_ff = 9216; c->n_layers = 26; c->n_heads = 8; c->n_kv = 4;
    c->hd = 256; c->max_pos = 131072; c->window = 4096; c->tie = 1; c->bos = 2;
    c->n_eos = 1; c->eos[0] = 1;
    double eps = 1e-6, qpas = 256, th_g = 1e6, th_l = 1e4, fcap = 0, acap = 0;

    int root = 0, tc = json_get(d, root, "text_config");
    if (tc >= 0 && d->node[tc].type != J_OBJ)
        return fail(e, NLA_ERR_FORMAT, "%s: text_config is not an object", fn);
    if (tc < 0) tc = root;
    int ar = json_get(d, root, "architectures"), mt = json_get(d, root, "model_type");
    if (ar >= 0 && d->node[ar].type == J_ARR && d->node[ar].n > 0 && d->node[ar + 1].type == J_STR)
        json_str(d, ar + 1, c->arch, sizeof c->arch);
    char mtype[64] = "";
    if (mt >= 0 && d->node[mt].type == J_STR) json_str(d, mt, mtype, sizeof mtype);
    int ok = !strcmp(c->arch, "Gemma3ForCausalLM") ||
             !strcmp(c->arch, "Gemma3ForConditionalGeneration") ||
             (!c->arch[0] && (!strcmp(mtype, "gemma3") || !strcmp(mtype, "gemma3_text")));
    if (!ok) {
        return fail(e, NLA_ERR_UNSUPPORTED,
                    "%s: architecture '%s' (model_type '%s') is not Gemma 3", fn, c->arch, mtype);
    }
    if (!c->arch[0])
        snprintf(c->arch, sizeof c->arch, "%s",
                 strcmp(mtype, "gemma3") ? "Gemma3ForCausalLM" : "Gemma3ForConditionalGeneration");

    if ((rc = cfg_int(d, tc, "vocab_size", &c->vocab, 1, NLA_MAX_VOCAB, e, fn)) ||
        (rc = cfg_int(d, tc, "hidden_size", &c->d, 1, 1 << 16, e, fn)) ||
        (rc = cfg_int(d, tc, "intermediate_size", &c->d_ff, 1, 1 << 20, e, fn)) ||
        (rc = cfg_int(d, tc, "num_hidden_layers", &c->n_layers, 1, NLA_MAX_LAYERS, e, fn)) ||
        (rc = cfg_int(d, tc, "num_attention_heads", &c->n_heads, 1, 1024, e, fn)) ||
        (rc = cfg_int(d, tc, "num_key_value_heads", &c->n_kv, 1, 1024, e, fn)) ||
        (rc = cfg_int(d, tc, "head_dim", &c->hd, 2, 4096, e, fn)) ||
        (rc = cfg_int(d, tc, "max_position_embeddings", &c->max_pos, 1, 1 << 24, e, fn)) ||
        (rc = cfg_int(d, tc, "sliding_window", &c->window, 1, 1 << 24, e, fn)) ||
        (rc = cfg_int(d, tc, "bos_token_id", &c->bos, 0, NLA_MAX_VOCAB - 1, e, fn)) ||
        (rc = cfg_num(d, tc, -1, "rms_norm_eps", &eps, e, fn)) ||
        (rc = cfg_num(d, tc, -1, "query_pre_attn_scalar", &qpas, e, fn)) ||
        (rc = cfg_num(d, tc, -1, "rope_theta", &th_g, e, fn)) ||
        (rc = cfg_num(d, tc, -1, "rope_local_base_freq", &th_l, e, fn)) ||
        (rc = cfg_num(d, tc, root, "final_logit_softcapping", &fcap, e, fn)) ||
        (rc = cfg_num(d, tc, root, "attn_logit_softcapping", &acap, e, fn)))
        return rc;
    if (c->n_heads % c->n_kv) {
        return fail(e, NLA_ERR_FORMAT,
                    "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", fn,
                    c->n_heads, c->n_kv);
    }
    if (c->hd % 2)
        return fail(e, NLA_ERR_FORMAT, "%s: head_dim %d must be even for RoPE", fn, c->hd);
    /* each a float once read (a double beyond FLT_MAX would become Inf) */
    const struct { const char *name, *want; double v; int ok; } num[] = {
        {"rms_norm_eps", "in [FLT_MIN, 1)", eps, eps >= FLT_MIN && eps < 1},
        {"query_pre_attn_scalar", "in (0, FLT_MAX]", qpas, qpas > 0 && is_float(qpas)},
        {"rope_theta", "in (1, FLT_MAX]", th_g, th_g > 1 && is_float(th_g)},
        {"rope_local_base_freq", "in (1, FLT_MAX]", th_l, th_l > 1 && is_float(th_l)},
        {"final_logit_softcapping", "in [0, FLT_MAX] (0: none)", fcap,
         fcap >= 0 && is_float(fcap)},
        {"attn_logit_softcapping", "in [0, FLT_MAX] (0: none)", acap,
         acap >= 0 && is_float(acap)}};
    for (size_t i = 0; i < sizeof num / sizeof *num; i++)
        if (!num[i].ok)
            return fail(e, NLA_ERR_RANGE, "%s: %s %g out of range: must be %s", fn,
                        num[i].name, num[i].v, num[i].want);
    c->eps = (float)eps; c->qpas = (float)qpas; c->final_softcap = (float)fcap;
    c->attn_softcap = (float)acap;
    c->theta[0] = (float)th_l; c->theta[1] = (float)th_g; c->factor[0] = c->factor[1] = 1;

    int v;
    /* a flag is true, false or null: "false" or 0 would read as neither */
    static const char *const flags[] = {"use_bidirectional_attention", "attention_bias",
                                        "tie_word_embeddings"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        for (int o = 0; o < 2; o++)
            if ((v = json_get(d, o ? root : tc, flags[i])) >= 0 && d->node[v].type != J_TRUE &&
                d->node[v].type != J_FALSE && d->node[v].type != J_NULL)
                return fail(e, NLA_ERR_FORMAT, "%s: '%s' must be true or false", fn, flags[i]);
    if ((v = json_get(d, tc, "use_bidirectional_attention")) >= 0 && d->node[v].type == J_TRUE) {
        return fail(e, NLA_ERR_UNSUPPORTED,
                    "%s: use_bidirectional_attention (EmbeddingGemma) is not supported", fn);
    }
    if ((v = json_get(d, tc, "attention_bias")) >= 0 && d->node[v].type == J_TRUE) {
        return fail(e, NLA_ERR_UNSUPPORTED, "%s: attention_bias true is not Gemma 3", fn);
    }
    if ((v = json_get(d, tc, "tie_word_embeddings")) < 0)
        v = json_get(d, root, "tie_word_embeddings");
    if (v >= 0 && d->node[v].type == J_FALSE) c->tie = 0;
    if ((v = json_get(d, tc, "hidden_activation")) < 0) v = json_get(d, tc, "hidden_act");
    if (v >= 0 && d->node[v].type != J_NULL && !json_eq(d, v, "gelu_pytorch_tanh") &&
        !json_eq(d, v, "gelu_new") && !json_eq(d, v, "gelu_tanh")) {
        char act[64] = "?";
        if (d->node[v].type == J_STR) json_str(d, v, act, sizeof act);
        return fail(e, NLA_ERR_UNSUPPORTED,
                    "%s: hidden_activation '%s' is not supported (Gemma 3 uses gelu_pytorch_tanh)",
                    fn, act);
    }
    if ((rc = cfg_eos(d, json_get(d, root, "eos_token_id"), c, fn, e)) ||
        (tc != root && (rc = cfg_eos(d, json_get(d, tc, "eos_token_id"), c, fn, e))))
        return rc;

    /* RoPE: old spelling first, then rope_parameters overrides */
    if ((rc = cfg_rope(d, json_get(d, tc, "rope_scaling"), &c->theta[1], &c->factor[1], e, fn,
                       "rope_scaling")))
        return rc;
    int rp = json_get(d, tc, "rope_parameters");
    if (rp >= 0 && d->node[rp].type == J_OBJ) {
        int fa = json_get(d, rp, "full_attention"), sa = json_get(d, rp, "sliding_attention");
        if (fa >= 0 || sa >= 0) {
            if ((rc = cfg_rope(d, fa, &c->theta[1], &c->factor[1], e, fn,
                               "rope_parameters.full_attention")) ||
                (rc = cfg_rope(d, sa, &c->theta[0], &c->factor[0], e, fn,
                               "rope_parameters.sliding_attention")))
                return rc;
        } else if ((rc = cfg_rope(d, rp, &c->theta[1], &c->factor[1], e, fn, "rope_parameters"))) {
            return rc;
        }
    } else if (rp >= 0 && d->node[rp].type != J_NULL) {
        return fail(e, NLA_ERR_FORMAT, "%s: rope_parameters must be an object", fn);
    }

    /* layer pattern */
    int lt = json_get(d, tc, "layer_types");
    if (lt >= 0 && d->node[lt].type != J_NULL) {
        if (d->node[lt].type != J_ARR || (int)d->node[lt].n != c->n_layers) {
            return fail(e, NLA_ERR_FORMAT,
                        "%s: layer_types must list %d entries (num_hidden_layers)", fn,
                        c->n_layers);
        }
        uint32_t i = (uint32_t)lt + 1;
        for (int l = 0; l < c->n_layers; l++, i = d->node[i].end) {
            if (json_eq(d, (int)i, "full_attention")) c->is_global[l] = 1;
            else if (json_eq(d, (int)i, "sliding_attention")) c->is_global[l] = 0;
            else {
                return fail(e, NLA_ERR_UNSUPPORTED,
                            "%s: layer_types[%d] is neither sliding_attention nor full_attention",
                            fn, l);
            }
        }
    } else {
        int pat = 6;
        if ((rc = cfg_int(d, tc, "sliding_window_pattern", &pat, 1, NLA_MAX_LAYERS, e, fn)) ||
            (rc = cfg_int(d, tc, "_sliding_window_pattern", &pat, 1, NLA_MAX_LAYERS, e, fn)))
            return rc;
        for (int l = 0; l < c->n_layers; l++) c->is_global[l] = (l + 1) % pat == 0;
    }
    return NLA_OK;
}

static nla_status cfg_parse(const char *dir, gemma_cfg *c, errbuf *e) {
    char *fn = path_join(dir, "config.json"), *txt = NULL;
    size_t n;
    jdoc d;
    memset(&d, 0, sizeof d);
    if (!fn) return fail(e, NLA_ERR_NOMEM, "out of memory");
    nla_status rc = read_file(fn, &txt, &n, NLA_MAX_JSON_FILE, e);
    if (rc || (rc = json_parse(&d, txt, n, e, fn))) goto out;
    if (d.node[0].type != J_OBJ) {
        rc = fail(e, NLA_ERR_FORMAT, "%s: not a JSON object", fn);
        goto out;
    }

    if ((rc = cfg_from_json(&d, fn, c, e))) goto out;

    /* generation_config.json, when present, names the stop ids */
    {
        char *gfn = path_join(dir, "generation_config.json"), *gtxt;
        size_t gn;
        if (!gfn) rc = fail(e, NLA_ERR_NOMEM, "out of memory");
        else if (file_exists(gfn) &&
                 (rc = read_file(gfn, &gtxt, &gn, NLA_MAX_JSON_FILE, e)) == NLA_OK) {
            jdoc g;
            if ((rc = json_parse(&g, gtxt, gn, e, gfn)) == NLA_OK) {
                rc = cfg_eos(&g, json_get(&g, 0, "eos_token_id"), c, gfn, e);
                json_free(&g);
            }
            NLA_FREE(gtxt);
        }
        NLA_FREE(gfn);
    }
out:
    json_free(&d);
    NLA_FREE(txt);
    NLA_FREE(fn);
    return rc;
}

/* ==== 6 Quantization: Q8_0 and Q4_0 blocks ============================== */

/* Two block formats for matrix weights, with llama.cpp's numbers (so sizes
   and errors compare): a row of `cols` weights (cols % 32 == 0) is cols/32
   blocks of 32, each one f16 scale d and 32 codes u stored unsigned:
     Q8_0  8-bit codes, w = d (u - 128), d = max|w| / 127     (34 bytes)
     Q4_0  4-bit codes, w = d (u - 8), d = m / -8 for the value m of largest
           magnitude                                          (18 bytes)
   The byte layout is nla.c's own. Rows are stored in groups of QG = 16
   (the last group padded with rows of zeros), and a group block by block:
   its block b is the 16 rows' scales (row r at byte 2r), then the codes in
   4-byte chunks, row after row within a chunk:
     Q8_0  chunk c = 0..7 of row r at 32 + 64c + 4r: elements 4c..4c+3
     Q4_0  chunk c = 0..3 of row r at 32 + 64c + 4r: elements 4c..4c+3 in
           the low nibbles, 16+4c..16+4c+3 in the high ones
   So one 64-byte load holds a chunk of all 16 rows, and one dot-product
   instruction (unsigned codes x an input's 4 signed bytes, broadcast)
   advances 16 rows at once, each in its own lane: no horizontal sums, and
   a group streams from memory in one straight line. A matrix [rows, cols]
   is stored as a U8 tensor [ceil(rows / 16), cols / 32 * 16 * block bytes].
   Activations are quantized on the fly to A8 blocks (f32 scale, 32 int8 and
   their sum), once per matmul input row, so every weight block meets an
   int8 x int8 dot with an exact int32 sum. Norms, the embedding rows read
   by lookup and the NLA value head stay in their stored precision. Scalar
   code is the reference; the SIMD kernels (section 7) must agree with it. */

#define QK 32 /* weights per block */
#define QG 16 /* rows per group */
#define Q8_0_BYTES 34
#define Q4_0_BYTES 18

/* The formats' names in a checkpoint's __metadata__ "nla.quant". */
static const char *const quant_names[2] = {"q8_0x16", "q4_0x16"};

/* Byte offset, in a group's block, of chunk c of row r (after the scales). */
#define Q_CHUNK(c, r) (2 * QG + 4 * QG * (c) + 4 * (r))

/* Rounds |v| <= 127.5 to the nearest integer, halves away from zero (as
   roundf, without its libm call in the innermost loop). */
static int8_t round_i8(float v) { return (int8_t)(int)(v + (v >= 0 ? 0.5f : -0.5f)); }

typedef struct {
    float d;
    int32_t sum; /* sum of q */
    int8_t q[QK];
} blk_a8;

static int is_quant(nla_dtype dt) { return dt == NLA_DTYPE_Q8_0 || dt == NLA_DTYPE_Q4_0; }

/* Bytes of one block of one row. */
static size_t blk_bytes(nla_dtype dt) { return dt == NLA_DTYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES; }

/* Bytes of one row of a float matrix. */
static size_t row_bytes(nla_dtype dt, int cols) {
    return (size_t)cols * (dt == NLA_DTYPE_F32 ? 4 : 2);
}

/* Bytes of one group of 16 rows of a quantized matrix. */
static size_t group_bytes(nla_dtype dt, int cols) { return (size_t)cols / QK * QG * blk_bytes(dt); }

/* Bytes of a whole matrix [rows, cols] in format dt. */
static uint64_t mat_bytes(nla_dtype dt, int64_t rows, int64_t cols) {
    if (!is_quant(dt)) return (uint64_t)rows * row_bytes(dt, (int)cols);
    return (uint64_t)((rows + QG - 1) / QG) * group_bytes(dt, (int)cols);
}

/* The n floats at x (n % 32 == 0) quantized into row r of the group at g. */
static void q_put_row(const float *x, unsigned char *g, int r, nla_dtype dt, int n) {
    const size_t bs = QG * blk_bytes(dt);
    for (int b = 0; b < n / QK; b++, x += QK, g += bs) {
        float amax = 0, m = 0;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); m = x[j]; }
        const float d = dt == NLA_DTYPE_Q8_0 ? amax / 127 : m / -8;
        const uint16_t h = f32_to_f16(d);
        /* a step that f16 flushes to 0 gets codes 0 (1 / d may overflow) */
        const float id = h & 0x7fff ? 1 / d : 0;
        memcpy(g + 2 * r, &h, 2);
        for (int j = 0; j < QK; j++) {
            if (dt == NLA_DTYPE_Q8_0) {
                g[Q_CHUNK(j / 4, r) + j % 4] = (unsigned char)(round_i8(x[j] * id) + 128);
            } else {
                int u = (int)(x[j] * id + 8.5f);
                u = u < 0 ? 0 : u > 15 ? 15 : u;
                unsigned char *c = &g[Q_CHUNK(j % 16 / 4, r) + j % 4];
                *c = (unsigned char)(j < 16 ? u : *c | u << 4);
            }
        }
    }
}

/* Element j of row r in the group block at g, as u - zero point. */
static int q_weight(const unsigned char *g, nla_dtype dt, int r, int j) {
    if (dt == NLA_DTYPE_Q8_0) return g[Q_CHUNK(j / 4, r) + j % 4] - 128;
    const unsigned char c = g[Q_CHUNK(j % 16 / 4, r) + j % 4];
    return (j < 16 ? c & 15 : c >> 4) - 8;
}

/* Activations: per block d = max|x| / 127 in f32, q = round(x / d). A
   block so small (max|x| < 3.7e-37) that 1 / d overflows divides. */
static void a8_quantize(const float *x, blk_a8 *y, int n) {
    for (int b = 0; b < n / QK; b++, x += QK) {
        /* max |x| as the largest bit pattern with the sign cleared (the
           order of non-negative floats), an integer maximum that the
           compiler vectorizes */
        uint32_t m = 0;
        for (int j = 0; j < QK; j++) {
            const uint32_t u = f32_bits(x[j]) & 0x7fffffffu;
            m = u > m ? u : m;
        }
        const float d = f32_from_bits(m) / 127;
        y[b].d = d;
        y[b].sum = 0;
        if (!isfinite(d)) { /* an Inf or NaN (above every number): codes 0, results NaN */
            memset(y[b].q, 0, QK);
            continue;
        }
        const float id = d ? 1 / d : 0;
        for (int j = 0; j < QK; j++)
            y[b].sum += y[b].q[j] = round_i8(isinf(id) ? x[j] / d : x[j] * id);
    }
}

/* Scalar reference: row r of the group at g (nb blocks) . x, the sum over
   blocks of d_w d_x (sum of w x). GCC 12 compiles signed int8 loops like
   this one for AVX512-VNNI into vpdpbusd, which multiplies unsigned by
   signed bytes, and returns wrong sums (seen with -O2 -march=native on Zen
   5); so GCC does not vectorize it. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
static float q_dot_ref(const unsigned char *g, nla_dtype dt, int r, const blk_a8 *x, int nb) {
    const size_t bs = QG * blk_bytes(dt);
    float s = 0;
    for (int b = 0; b < nb; b++, g += bs) {
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += q_weight(g, dt, r, j) * x[b].q[j];
        s += f16_to_f32(rd_u16(g + 2 * r)) * x[b].d * (float)isum;
    }
    return s;
}

/* ==== 7 Kernels: conversion, matmul, RMSNorm, RoPE, attention, GELU ===== */

/* The kernels know nothing of Gemma. Every weight matrix is a wmat viewing
   the stored bytes; a row is converted to float32 in a per-thread buffer and
   then reused for all T tokens of the batch, so a weight is read once per
   batch, not once per token. Loops over output rows are split across threads
   with OpenMP when the build has it. */

typedef struct {
    const unsigned char *p; /* stored bytes: row-major [rows, cols], or groups (section 6) */
    nla_dtype dt;
    int rows, cols;
} wmat;

/* dst[0..n) = elements [0..n) of a stored array of any dtype (any alignment). */
static void to_f32(float *dst, const unsigned char *src, nla_dtype dt, int n) {
    switch (dt) {
    case NLA_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case NLA_DTYPE_BF16:
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(rd_u16(src + 2 * (size_t)i));
        break;
    case NLA_DTYPE_F16:
        for (int i = 0; i < n; i++) dst[i] = f16_to_f32(rd_u16(src + 2 * (size_t)i));
        break;
    /* not rows: matmul reads them (bind_model refuses a quantized embedding) */
    case NLA_DTYPE_Q8_0: case NLA_DTYPE_Q4_0: break;
    }
}

static void wmat_row(const wmat *w, int r, float *dst) {
    to_f32(dst, w->p + (size_t)r * row_bytes(w->dt, w->cols), w->dt, w->cols);
}

/* out[d] = a_d . b_d for d < m, where a_d = a + d as and b_d = b + d bs
   (a stride of 0 reuses one vector): each sum in 32 independent partial
   sums that the compiler keeps in vector registers (no -ffast-math needed),
   added pairwise at the end. The m sums are interleaved, so the adds run at
   the vector units' rate, not at one chain's latency; a sum's value does
   not depend on m or on which sums run beside it. */
#define DOT_LANES 32
#define DOTS_MAX 4 /* sums interleaved at once, at most */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
dots_m(float *out, const float *a, size_t as, const float *b, size_t bs, int n, const int m) {
    float s[DOTS_MAX][DOT_LANES] = {{0}}, r[DOTS_MAX] = {0};
    int i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES)
        for (int d = 0; d < m; d++)
            for (int k = 0; k < DOT_LANES; k++) s[d][k] += a[d * as + i + k] * b[d * bs + i + k];
    for (; i < n; i++)
        for (int d = 0; d < m; d++) r[d] += a[d * as + i] * b[d * bs + i];
    for (int d = 0; d < m; d++) {
#if __GNUC__ >= 8 /* unrolled, GCC keeps the tree in vector registers: 1.4-1.6x faster dots */
#pragma GCC unroll 8
#endif
        for (int w = DOT_LANES / 2; w > 0; w /= 2)
            for (int k = 0; k < w; k++) s[d][k] += s[d][k + w];
        out[d] = s[d][0] + r[d];
    }
}

static void dots(float *out, const float *a, size_t as, const float *b, size_t bs, int m, int n) {
    for (int d = 0; d < m;) {
        const int c = m - d >= 4 ? 4 : m - d >= 2 ? 2 : 1;
        const float *ad = a + d * as, *bd = b + d * bs;
        switch (c) {
        case 4: dots_m(out + d, ad, as, bd, bs, n, 4); break;
        case 2: dots_m(out + d, ad, as, bd, bs, n, 2); break;
        default: dots_m(out + d, ad, as, bd, bs, n, 1); break;
        }
        d += c;
    }
}

static float dot(const float *a, const float *b, int n) {
    float r;
    dots(&r, a, 0, b, 0, 1, n);
    return r;
}

/* o[i] += w[d] v_d[i] for d < m in order (v_d = v + d n): each o[i] is held
   while the m terms are added to it, as m passes of one would add them. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void axpys_m(float *o, const float *w, const float *v, int n, const int m) {
    for (int i = 0; i < n; i++) {
        float t = o[i];
        for (int d = 0; d < m; d++) t += w[d] * v[(size_t)d * n + i];
        o[i] = t;
    }
}

static void axpys(float *o, const float *w, const float *v, int m, int n) {
    for (int d = 0; d < m;) {
        const int c = m - d >= 8 ? 8 : m - d >= 4 ? 4 : m - d >= 2 ? 2 : 1;
        switch (c) {
        case 8: axpys_m(o, w + d, v + (size_t)d * n, n, 8); break;
        case 4: axpys_m(o, w + d, v + (size_t)d * n, n, 4); break;
        case 2: axpys_m(o, w + d, v + (size_t)d * n, n, 2); break;
        default: axpys_m(o, w + d, v + (size_t)d * n, n, 1); break;
        }
        d += c;
    }
}

/* The quantized matmul kernel. Two bodies serve every SIMD target, one for
   one input (q_one) and one for a batch (q_lanes), through a few
   primitives on vectors of VL 32-bit lanes, one lane per weight row of a
   group (section 6), and where 32 registers hold a group per vector, more
   than QC inputs meet two groups at once (q_wide):
     vi_load    VL chunks of 4 codes, one per row
     vi_dp      s + per lane the sum of 4 byte products, codes x input
     vf_scales  VL f16 scales as floats
     vf_step    acc + (float)s * d_w d_x, lane by lane
   A group block's codes are loaded once (Q4_0: 4 loads split into low and
   high nibbles) and met by up to 8 inputs; each input's 4-byte chunk is
   broadcast to every lane. The int32 sums start at -z (sum of x) for the
   zero point z the codes carry, so they end as q_dot_ref's exact sums
   (targets that multiply signed bytes only, Q8_SIGNED, take Q8_0's codes
   as w = u - 128 and start at 0). A target's float steps are the same per
   lane for every batch width: acc = fma((float)sum, d_w d_x, acc), block
   after block (two roundings without FMA); so a row's result for an input
   does not depend on the batch or on how many inputs the kernel met at
   once. Where a vector holds fewer than 16 rows (VL < QG), a pass over the
   group's blocks for 1 or 2 inputs (decode) serves QH slices of VL rows,
   so each 64-byte chunk is read whole in one pass. One input (decoding)
   meets up to QS groups in one pass (adjacent, or apart: mm_task), each
   group with its own loads: a load instruction that steps through one
   group finds its stride in the core's prefetcher, and QS streams keep
   more lines in flight than one (Intel Xeon with AMX, 2 threads, 12B Q4_0
   decode from weights read into memory, alternating: 4 groups 4.48-4.59
   tok/s, 1 group 4.26-4.38; with no software prefetch, 4 groups
   4.45-4.66, and 3.54-3.65 in a loop where one load instruction served
   all 4). */
#if (defined(__AVX2__) || (defined(__ARM_NEON) && defined(__aarch64__))) && !defined(NLA_NO_SIMD)
/* 4 bytes at p as one int32 (any alignment). */
static inline int32_t ld_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    !defined(NLA_NO_SIMD)
#define NLA_SIMD_NAME "avx512-vnni"
#define VL 16
#define QH 1
#define QS 4 /* groups one input meets at once, at most */
#define QC 8 /* inputs met at once, at most */
#define QW 2 /* groups a pass of several inputs meets at once (q_wide) */
#define Q8_SIGNED 0
#define Q_ONE_L1(dt) ((dt) == NLA_DTYPE_Q8_0) /* see q_prefetch */
typedef __m512i vi;
typedef __m512 vf;
static inline vi vi_load(const unsigned char *p) { return _mm512_loadu_si512((const void *)p); }
static inline vi vi_set1(int32_t v) { return _mm512_set1_epi32(v); }
static inline vi vi_nibbles(vi v, int hi) {
    return _mm512_and_si512(hi ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(15));
}
static inline vi vi_flip(vi v) { return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)); }
static inline vi vi_dp(vi s, vi u, vi x) { return _mm512_dpbusd_epi32(s, u, x); }
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_scales(const unsigned char *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
}
static inline vf vf_step(vf acc, vi s, vf dw, float dx) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc);
}
static inline void vf_store(float *y, vf v, int n) {
    if (n == VL) _mm512_storeu_ps(y, v);
    else _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1), v);
}
#elif defined(__AVX2__) && !defined(NLA_NO_SIMD)
#define VL 8
#define QH 2
#define QS 4
#define Q_ADJACENT 0 /* QS groups set apart only (AMD): adjacent ones, 2 at a time, made
                        the x86-64-v3 build's 1B Q4_0 decode 10 % slower (Intel Xeon) */
#define QC 4
typedef __m256i vi;
typedef __m256 vf;
static inline vi vi_load(const unsigned char *p) {
    return _mm256_loadu_si256((const __m256i *)(const void *)p);
}
static inline vi vi_set1(int32_t v) { return _mm256_set1_epi32(v); }
static inline vi vi_nibbles(vi v, int hi) {
    return _mm256_and_si256(hi ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(15));
}
static inline vi vi_flip(vi v) { return _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)); }
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define NLA_SIMD_NAME "avx2-vnni"
#define Q8_SIGNED 0
#define Q_ONE_L1(dt) ((dt) == NLA_DTYPE_Q8_0)
static inline vi vi_dp(vi s, vi u, vi x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(s, u, x);
#else
    return _mm256_dpbusd_avx_epi32(s, u, x);
#endif
}
#else
/* Without VNNI: |w| (unsigned) times x with w's sign, pairs to int16 (at
   most 2 x 128 x 127, no saturation), then pairs to int32. */
#define NLA_SIMD_NAME "avx2"
#define Q8_SIGNED 1
#define Q_ONE_L1(dt) 0
static inline vi vi_dp(vi s, vi w, vi x) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(s, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
/* Q4_0's codes (below 16) need no sign trick: unsigned codes times x pair
   to int16 directly, and a block's 8 chunks add up in int16 (at most
   16 x 15 x 127 = 30480) before one widening to int32. */
#define VI_BLOCK_SMALL
static inline vi vi_block_small(vi s, const vi *u, const int8_t *q) {
    __m256i p = _mm256_maddubs_epi16(u[0], _mm256_set1_epi32(ld_i32(q)));
    for (int k = 1; k < 8; k++)
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(u[k], _mm256_set1_epi32(ld_i32(q + 4 * k))));
    return _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
#endif
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_scales(const unsigned char *p) {
#ifdef __F16C__
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
#else
    float d[VL];
    for (int i = 0; i < VL; i++) d[i] = f16_to_f32(rd_u16(p + 2 * i));
    return _mm256_loadu_ps(d);
#endif
}
static inline vf vf_step(vf acc, vi s, vf dw, float dx) {
#ifdef __FMA__
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc);
#else /* without FMA the step rounds twice, the same for every input */
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s),
                                            _mm256_mul_ps(dw, _mm256_set1_ps(dx))));
#endif
}
static inline void vf_store(float *y, vf v, int n) {
    float t[VL];
    _mm256_storeu_ps(t, v);
    memcpy(y, t, (size_t)n * sizeof(float));
}
#elif defined(__ARM_NEON) && defined(__aarch64__) && !defined(NLA_NO_SIMD)
#define VL 4
#define QH 1
#define QS 1
#define QC 8
#define Q8_SIGNED 1
typedef int32x4_t vi;
typedef float32x4_t vf;
static inline vi vi_load(const unsigned char *p) { return vreinterpretq_s32_u8(vld1q_u8(p)); }
static inline vi vi_set1(int32_t v) { return vdupq_n_s32(v); }
static inline vi vi_nibbles(vi v, int hi) {
    const uint8x16_t b = vreinterpretq_u8_s32(v);
    return vreinterpretq_s32_u8(hi ? vshrq_n_u8(b, 4) : vandq_u8(b, vdupq_n_u8(15)));
}
static inline vi vi_flip(vi v) {
    return vreinterpretq_s32_u8(veorq_u8(vreinterpretq_u8_s32(v), vdupq_n_u8(0x80)));
}
#ifdef __ARM_FEATURE_DOTPROD
#define NLA_SIMD_NAME "neon-dotprod"
static inline vi vi_dp(vi s, vi w, vi x) {
    return vdotq_s32(s, vreinterpretq_s8_s32(w), vreinterpretq_s8_s32(x));
}
#else
/* Without the dot-product extension: widening multiplies (int8 x int8 fits
   int16), then adjacent pairs twice, to the sums of 4. */
#define NLA_SIMD_NAME "neon"
static inline vi vi_dp(vi s, vi w, vi x) {
    const int8x16_t a = vreinterpretq_s8_s32(w), b = vreinterpretq_s8_s32(x);
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    const int32x4_t hi = vpaddlq_s16(vmull_s8(vget_high_s8(a), vget_high_s8(b)));
    return vaddq_s32(s, vpaddq_s32(lo, hi));
}
#endif
static inline vf vf_zero(void) { return vdupq_n_f32(0); }
static inline vf vf_scales(const unsigned char *p) {
    return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
}
static inline vf vf_step(vf acc, vi s, vf dw, float dx) {
    return vfmaq_f32(acc, vcvtq_f32_s32(s), vmulq_n_f32(dw, dx));
}
static inline void vf_store(float *y, vf v, int n) {
    float t[VL];
    vst1q_f32(t, v);
    memcpy(y, t, (size_t)n * sizeof(float));
}
#endif

#ifndef QS
#define QS 1 /* the scalar reference: one group at a time */
#endif
#ifndef QW
#define QW 1
#endif
#ifndef Q_ADJACENT
#define Q_ADJACENT 1 /* one input may meet QS adjacent groups at once (mm_scratch_init) */
#endif
#ifndef Q_ONE_L1
#define Q_ONE_L1(dt) 1 /* NEON: not measured */
#endif

#ifdef VL
/* Adds to s[c] the sums of a block's 8 chunks, codes u[k] x the bytes
   4k..4k+3 of input c's block x[c * nb], for c < C: chunk by chunk, the
   inputs interleaved, so that no dot product waits on the one before.
   small: the codes are below 16 (Q4_0), which a target may sum another
   way, input by input (VI_BLOCK_SMALL), with the same exact result. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
vi_blocks(vi *s, const vi *u, const blk_a8 *x, int nb, int C, int small) {
#ifdef VI_BLOCK_SMALL
    if (small) {
        for (int c = 0; c < C; c++) s[c] = vi_block_small(s[c], u, x[(size_t)c * nb].q);
        return;
    }
#endif
    (void)small;
    for (int k = 0; k < 8; k++)
        for (int c = 0; c < C; c++)
            s[c] = vi_dp(s[c], u[k], vi_set1(ld_i32(x[(size_t)c * nb].q + 4 * k)));
}

#define Q_AHEAD 4096 /* bytes of the weights the kernels ask for ahead, into L1 */
#define Q_APART 2048 /* the same in a pass over QS groups set apart */
#define Q_FAR 8192   /* and into L2 */

/* Asks for the weights `ahead` bytes past the n at p into L1 (none when
   0), and Q_FAR bytes past them into L2 when l2, once per 64-byte line:
   the lines that start in [p, p + n). (AMD Zen 5, 2 threads, one group at a time,
   distances alternating in one process: 12B Q4_0 decode with the
   hardware's own prefetch alone is 7 % slower, with the L1 request alone 2
   %, the L2 request 8 KB on 2-3 % faster than 16 KB on; 1B within 1 %.
   Intel Xeon with AMX: once per line, not once per 64 bytes from p, 1.04x;
   with QS groups streaming at once, the L2 requests made it 4-5 % slower;
   on Zen 5 12 % slower, 12B Q4_0 decode.) A pass over one group asks into
   L2, and into L1 as well only where Q_ONE_L1(dt): Q8_0 on a target with a
   byte dot product, whose loop spends the fewest instructions per byte
   read; elsewhere the L1 requests cost the loop more than they save (AMD
   Zen 5, 1B decode from weights read into memory, one process
   alternating, 12 pairs each: without them the avx2 kernel's Q4_0 1.15x
   faster at 1 thread and at 2, its Q8_0 1.04x; avx2-vnni Q4_0 1.09x, Q8_0
   0.99x; avx512-vnni Q4_0 1.06x / 1.02x, Q8_0 0.95x; prefill within 3 %).
   A pass over QS groups set apart asks 2 KB ahead into L1, 8 KB for the
   four streams together (AMD Zen 5, weights read into memory, one process
   alternating, 6-10 pairs: against 4 KB, 4B Q4_0 decode 1.07-1.13x at 1
   thread and 1.09-1.13x at 2, 12B Q4_0 1.10x at 2, 12B Q8_0 mapped 1.07x,
   1B Q8_0 1.04x / 1.05x, 1B Q4_0, whose down projection alone streams
   apart, 1.07x / 1.03x;
   1 KB 0.97x and 3 KB 0.95-1.01x of 2 KB in 4B; 8 KB 0.98x of 4 KB; an
   L2 request as well 0.89x, the L2 request alone 0.95-0.98x). */
static inline void q_prefetch(const unsigned char *p, size_t n, size_t ahead, int l2) {
    const size_t first = (64 - (uintptr_t)p % 64) % 64;
    for (size_t o = first; o < n; o += 64) {
        if (ahead) PREFETCH(p + o + ahead);
        if (l2) PREFETCH_FAR(p + o + Q_FAR);
    }
}

/* The zero point the codes of dt carry in the kernel: the sums start at -z
   (sum of x). */
static inline int q_zero(nla_dtype dt) {
    return dt == NLA_DTYPE_Q4_0 ? 8 : Q8_SIGNED ? 0 : 128;
}

/* The codes of rows lg.. of the block at p that meet an input's bytes 4k..4k+3
   (*lo) and 4k+16..4k+19 (*hi), k < 4: Q8_0's chunks k and k + 4, Q4_0's
   chunk k split into low and high nibbles. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void q_codes(vi *lo, vi *hi, const unsigned char *p, const nla_dtype dt, int k,
                           int lg) {
    if (dt == NLA_DTYPE_Q8_0) {
        *lo = vi_load(p + Q_CHUNK(k, lg));
        *hi = vi_load(p + Q_CHUNK(k + 4, lg));
        if (Q8_SIGNED) { *lo = vi_flip(*lo); *hi = vi_flip(*hi); }
    } else {
        const vi raw = vi_load(p + Q_CHUNK(k, lg));
        *lo = vi_nibbles(raw, 0);
        *hi = vi_nibbles(raw, 1);
    }
}

/* y[r] = row r of the G groups at g, ss groups apart (gb bytes each) .
   the one input x (nb blocks), for rows r < nr (in groups 0, ss, ..,
   (G - 1) ss): decoding, where a matmul's task is QS groups (G = QS, all
   full) or one (G = 1). Each group is a stream of its own load
   instructions, whose stride the core's prefetcher finds, and QS streams
   keep more lines in flight than one; a block's 8 input chunks are
   broadcast once for all the groups. One loop without the batch's cases
   (AMD Zen 5, weights mapped, one process alternating, 16 rounds: against
   the batched loop of q_lanes with one input, 12B Q4_0 decode 1.06-1.08x
   faster at 1 thread, 1.10-1.11x at 2; 4B Q4_0 1.12x; 1B Q4_0 1.12x /
   1.09x, Q8_0 1.03x / 1.05x; the x86-64-v3 build's 1B Q4_0 1.07x, Q8_0
   1.03x). ask: the input's first pass (always, for one input alone),
   which asks for the weights ahead (q_prefetch): four streams apart 2 KB
   ahead into L1; four adjacent ones 4 KB ahead, a group's last 4 KB
   asking for the group QS on, the thread's next task as a rule (Intel
   Xeon with AMX, 1B Q4_0 decode, whose groups are 10 KB, weights read into
   memory, alternating: 1.04-1.08x at 2 threads, 1.01-1.03x at 1; 12B
   within noise); one group into L2, and into L1 only where Q_ONE_L1. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void q_one(float *y, const unsigned char *g, size_t gb, int ss, const nla_dtype dt,
                         int nr, const blk_a8 *x, int nb, const int G, int ask) {
    const size_t bs = QG * blk_bytes(dt);
    const int z = q_zero(dt);
    enum { SV = QG / VL }; /* vectors of a group */
    vf acc[QS * SV]; /* acc[j * SV + i]: rows i VL .. (i + 1) VL of group j */
    for (int h = 0; h < G * SV; h++) acc[h] = vf_zero();
    for (int b = 0; b < nb; b++) {
#if __GNUC__ >= 8
#pragma GCC unroll 8
#endif
        for (int j = 0; j < G; j++) {
            const unsigned char *p = g + (size_t)j * ss * gb + (size_t)b * bs;
            const size_t on = (size_t)b * bs + Q_AHEAD >= gb ? (QS - 1) * gb : 0;
            if (ask && G == 1) q_prefetch(p, bs, Q_ONE_L1(dt) ? Q_AHEAD : 0, 1);
            else if (ask && ss > 1) q_prefetch(p, bs, Q_APART, 0);
            else if (ask) q_prefetch(p + on, bs, Q_AHEAD, 0);
            for (int i = 0; i < SV; i++) {
                vi u[8]; /* u[k] meets the input's bytes 4k..4k+3 */
                for (int k = 0; k < 4; k++) q_codes(&u[k], &u[k + 4], p, dt, k, i * VL);
                vi s = vi_set1(-z * x[b].sum);
                vi_blocks(&s, u, x + b, nb, 1, dt == NLA_DTYPE_Q4_0);
                acc[j * SV + i] = vf_step(acc[j * SV + i], s, vf_scales(p + 2 * i * VL), x[b].d);
            }
        }
    }
    for (int h = 0; h < G * SV; h++) {
        const int r = h / SV * ss * QG + h % SV * VL;
        if (r < nr) vf_store(y + r, acc[h], nr - r < VL ? nr - r : VL);
    }
}

/* y[t * ys + r] = row r < nr <= QG of the group at g . input t of the C
   (2 or more) at x (nb blocks apart); dt and C are constants where it is
   inlined, so each format and width gets its own loop. ask: this is the
   first of the passes that meet the group, so it asks for the weights
   ahead (q_prefetch, as q_one does for one group: whole blocks) in the
   pass over the group's first slice of rows; later passes find the lines
   in the caches, where asking again only spends instructions (AMD Zen 5,
   2 threads, prefill of 512 tokens from weights read into memory,
   alternating in one process: 1B Q8_0 1.11x faster, Q4_0 1.05x, the same
   in -march=x86-64-v3 builds; 12B Q4_0 of 256 tokens 1.04x). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void q_lanes(float *y, size_t ys, const unsigned char *g, const nla_dtype dt, int nr,
                           const blk_a8 *x, int nb, const int C, int ask) {
    const size_t bs = QG * blk_bytes(dt);
    const int z = q_zero(dt);
    const int H = C == 2 ? QH : 1; /* slices of VL rows per pass */
    for (int l0 = 0; l0 < nr; l0 += VL * H) {
        vf acc[QH][8];
        for (int h = 0; h < H; h++)
            for (int c = 0; c < C; c++) acc[h][c] = vf_zero();
        for (int b = 0; b < nb; b++) {
            const unsigned char *p = g + (size_t)b * bs;
            if (ask && l0 == 0) q_prefetch(p, bs, Q_ONE_L1(dt) ? Q_AHEAD : 0, 1);
            for (int h = 0; h < H && l0 + h * VL < nr; h++) {
                vi u[8]; /* u[k] meets the input's bytes 4k..4k+3 */
                for (int k = 0; k < 4; k++) q_codes(&u[k], &u[k + 4], p, dt, k, l0 + h * VL);
                const vf dw = vf_scales(p + 2 * (l0 + h * VL));
                vi s[8];
                for (int c = 0; c < C; c++) s[c] = vi_set1(-z * x[(size_t)c * nb + b].sum);
                vi_blocks(s, u, x + b, nb, C, dt == NLA_DTYPE_Q4_0);
                for (int c = 0; c < C; c++)
                    acc[h][c] = vf_step(acc[h][c], s[c], dw, x[(size_t)c * nb + b].d);
            }
        }
        for (int h = 0; h < H && l0 + h * VL < nr; h++)
            for (int c = 0; c < C; c++) {
                const int l = l0 + h * VL;
                vf_store(y + (size_t)c * ys + l, acc[h][c], nr - l < VL ? nr - l : VL);
            }
    }
}

#if QW > 1
/* Rows r < nr of the QW groups at g (gb bytes apart, (QW - 1) QG < nr) .
   the C <= 4 inputs at x, where a vector holds a group's 16 rows: chunk by
   chunk, each input's 4 bytes broadcast once for every group, where
   q_lanes broadcasts them once per group. More than QC inputs are bound by
   the work per block, not by reading the weights: 8 inputs against one
   group issue a broadcast per dot product, 4 against two groups one per
   two (AMD Zen 5, 2 threads, weights read into memory, alternating in one
   process: prefill of 512 tokens 1B Q4_0 1.14x faster, Q8_0 1.14x, at 1
   thread 1.15x, 12B Q4_0 of 256 1.16x; batched decoding of 16 sequences
   1.0x, of 32 1.09x; of 4 or 8, whose one pass of q_lanes reads the
   weights while it works, 0.85-0.92x, so they stay there). The sums and
   float steps are q_lanes', block after block, so the results are its
   bits. ask: the first pass, which asks for both groups ahead, into L1
   only (L2 requests too made batched decoding 4-8 % slower). The passes
   after it ask for the next task's groups (where they hold at most Q_NEXT
   bytes) into L2, a share [pf, pf + npf) each, spread over their blocks,
   so that the next task's first pass finds them there instead of waiting
   on memory (AMD Zen 5, 2 threads, decoding 16 sequences, alternating in
   one process: 1B Q4_0 1.14-1.18x faster, Q8_0 1.12-1.17x, at 1 thread
   1.16x; 4B Q4_0 1.08-1.14x; 12B Q4_0 1.08x, where the down projection's
   270 KiB tasks do not ask: asking too, 0.98x of that; 12B Q8_0, whose
   q, k, v, gate and up tasks of 127.5 KiB ask and its output and down
   projection's of 136 and 510 KiB do not, 1.00x, all asking 0.97x; 32
   sequences of 1B Q4_0 1.09x; prefill of 512 tokens 1B Q4_0 1.01x, of 256
   12B Q4_0 1.01x; asked for in the first pass as well, 1B 1.11-1.14x, 12B
   0.95-0.98x). Larger next tasks would crowd the task's own groups and
   inputs out of L2. */
#define Q_NEXT 131072 /* bytes (128 KiB): the largest next task the passes ask for */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
q_wide(float *y, size_t ys, const unsigned char *g, size_t gb, const nla_dtype dt, int nr,
       const blk_a8 *x, int nb, const int C, int ask, const unsigned char *pf, size_t npf) {
    const size_t bs = QG * blk_bytes(dt);
    const size_t step = (npf / (size_t)nb + 64) / 64 * 64; /* of [pf, pf + npf) per block */
    const int z = q_zero(dt);
    vf acc[QW][4];
    for (int j = 0; j < QW; j++)
        for (int c = 0; c < C; c++) acc[j][c] = vf_zero();
    for (int b = 0; b < nb; b++) {
        const unsigned char *p = g + (size_t)b * bs; /* group j's block b: p + j gb */
        for (int j = 0; ask && j < QW; j++) q_prefetch(p + j * gb, bs, Q_AHEAD, 0);
        for (size_t o = b * step; o < (b + 1) * step && o < npf; o += 64) PREFETCH_FAR(pf + o);
        vi s[QW][4];
        for (int c = 0; c < C; c++) {
            const vi s0 = vi_set1(-z * x[(size_t)c * nb + b].sum);
            for (int j = 0; j < QW; j++) s[j][c] = s0;
        }
#if __GNUC__ >= 8
#pragma GCC unroll 4
#endif
        for (int k = 0; k < 4; k++) {
            vi lo[QW], hi[QW];
            for (int j = 0; j < QW; j++) q_codes(&lo[j], &hi[j], p + j * gb, dt, k, 0);
            for (int c = 0; c < C; c++) {
                const int8_t *q = x[(size_t)c * nb + b].q + 4 * k;
                const vi xa = vi_set1(ld_i32(q)), xb = vi_set1(ld_i32(q + 16));
                for (int j = 0; j < QW; j++) s[j][c] = vi_dp(s[j][c], lo[j], xa);
                for (int j = 0; j < QW; j++) s[j][c] = vi_dp(s[j][c], hi[j], xb);
            }
        }
        for (int j = 0; j < QW; j++) {
            const vf dw = vf_scales(p + j * gb);
            for (int c = 0; c < C; c++)
                acc[j][c] = vf_step(acc[j][c], s[j][c], dw, x[(size_t)c * nb + b].d);
        }
    }
    for (int j = 0; j < QW; j++)
        for (int c = 0; c < C; c++)
            vf_store(y + (size_t)c * ys + j * QG, acc[j][c], nr - j * QG < QG ? nr - j * QG : QG);
}
#endif

/* The groups at g (gb bytes apart) against n inputs: up to QC at a time,
   then 4, 2, 1, or for more than QC inputs QW groups at once (q_wide) 4,
   2, 1 at a time; the first pass asks for the weights ahead. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
q_group_fmt(float *y, size_t ys, const unsigned char *g, size_t gb, int ss, const nla_dtype dt,
            int nr, const blk_a8 *x, int n, int nb) {
    const int wide = QW > 1 && n > QC && nr > (QW - 1) * QG;
    for (int t = 0; t < n;) {
        const int c = n - t >= 8 && QC >= 8 && !wide ? 8 : n - t >= 4 ? 4 : n - t >= 2 ? 2 : 1;
        float *yt = y + (size_t)t * ys;
        const blk_a8 *xt = x + (size_t)t * nb;
#if QW > 1
        if (wide) { /* pass i > 0 of np asks for share i - 1 of the next task's groups */
            const int i = t / 4, np = (n + 3) / 4;
            const size_t next = QW * gb, a = i ? next * (i - 1) / (np - 1) : 0;
            const unsigned char *pf = g + next + a;
            const size_t npf = i && next <= Q_NEXT ? next * i / (np - 1) - a : 0;
            if (c == 4) q_wide(yt, ys, g, gb, dt, nr, xt, nb, 4, t == 0, pf, npf);
            else if (c == 2) q_wide(yt, ys, g, gb, dt, nr, xt, nb, 2, t == 0, pf, npf);
            else q_wide(yt, ys, g, gb, dt, nr, xt, nb, 1, t == 0, pf, npf);
            t += c;
            continue;
        }
#endif
        switch (c) {
        case 8: q_lanes(yt, ys, g, dt, nr, xt, nb, 8, t == 0); break;
        case 4: q_lanes(yt, ys, g, dt, nr, xt, nb, 4, t == 0); break;
        case 2: q_lanes(yt, ys, g, dt, nr, xt, nb, 2, t == 0); break;
        default:
            if (nr == ((QS - 1) * ss + 1) * QG) q_one(yt, g, gb, ss, dt, nr, xt, nb, QS, t == 0);
            else /* a group, or the last task of a matrix that ends part way */
                for (int j = 0; j * ss * QG < nr; j++)
                    q_one(yt + j * ss * QG, g + (size_t)j * ss * gb, gb, 1, dt, nr - j * ss * QG,
                          xt, nb, 1, t == 0);
        }
        t += c;
    }
}
#endif

#ifdef NLA_AMX
/* AMX, Intel's tile unit (Sapphire Rapids on): one instruction multiplies
   A [16 inputs, 32 signed bytes] by B [8 chunks, 64 signed bytes] into C
   [16 inputs, 16 rows] of int32 sums, where B's row k holds 4 bytes of each
   of 16 columns: the layout of a group block's chunks (section 6). So B is
   a group block with its codes made signed, w = u - z (Q4_0's 4 chunks
   split into 8 of whole bytes, low nibbles then high), into the thread's
   buffer, 8 blocks ahead of the tiles that read them while the first 16
   inputs go through (so the weights stream in while the tiles and the
   float steps work: a pass of its own first made 16 inputs 8-12 % slower
   than the VNNI kernel); A is 16 inputs' codes of one block, packed side
   by side once per matmul (amx_pack). Each sum is the VNNI kernel's
   exactly and meets the same float step block after block, so a result
   is bit-identical to the VNNI kernel's at any batch width.
   Linux hands the tile state to a process that asks (arch_prctl
   ARCH_REQ_XCOMP_PERM); each thread sets the tiles' shapes before a matmul
   and releases them after. */
#define AMX_MIN 16 /* inputs from which a matmul meets them in tiles: fewer fill a tile partly */
/* (Intel Xeon with AMX-INT8, 2 threads, against the VNNI kernel: 12B Q4_0
   forward pass of 16 tokens 1.2-1.3x faster, of 256 1.3x; 1B Q4_0 batched
   AV decoding of 16 sequences 1.13-1.28x.) */

/* 1 when the CPU has AMX-INT8 and Linux lets this process use the tiles
   (asked once per session, when its scratch is set up: mm_scratch_init). */
static int amx_usable(void) {
    unsigned a, b, c, d; /* leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8 */
    const int cpu = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 3) == 3;
    /* ARCH_REQ_XCOMP_PERM for XTILEDATA, state component 18 */
    return cpu && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

/* Tiles 0-3: C [16, 64 bytes] of 4 blocks; 4, 5: A [16, 32 bytes]; 6, 7: B [8, 64 bytes]. */
__attribute__((target("amx-tile"))) static void amx_begin(void) {
    unsigned char cfg[64] = {1}; /* palette 1 */
    for (int t = 0; t < 8; t++) {
        cfg[16 + 2 * t] = (unsigned char)(t == 4 || t == 5 ? QK : 64);
        cfg[48 + t] = (unsigned char)(t < 6 ? QG : 8);
    }
    _tile_loadconfig(cfg);
}

__attribute__((target("amx-tile"))) static void amx_end(void) { _tile_release(); }

/* Inputs t0 .. t0+15 of the n quantized at xq (nb blocks each) for the
   tiles: xa [nb, 16, 32] their codes, block by block, and xd [nb, 16] their
   scales; inputs past n get codes and scales 0. */
static void amx_pack(int8_t *xa, float *xd, const blk_a8 *xq, int t0, int n, int nb) {
    for (int i = 0; i < QG; i++)
        for (int b = 0; b < nb; b++) {
            const blk_a8 *x = t0 + i < n ? xq + (size_t)(t0 + i) * nb + b : NULL;
            if (x) memcpy(xa + ((size_t)b * QG + i) * QK, x->q, QK);
            else memset(xa + ((size_t)b * QG + i) * QK, 0, QK);
            xd[(size_t)b * QG + i] = x ? x->d : 0;
        }
}

/* The sums of block b + j into c[j], for j < nj, through tiles C, A and B
   (their numbers must be constants). */
#define AMX_SUMS(j, C, A, B)                                                   \
    do {                                                                       \
        if ((j) < nj) {                                                        \
            _tile_loadd(B, w[b + (j)], 64);                                    \
            _tile_loadd(A, xa + (size_t)(b + (j)) * QG * QK, QK);              \
            _tile_zero(C);                                                     \
            _tile_dpbssd(C, A, B);                                             \
            _tile_stored(C, c[j], 64);                                         \
        }                                                                      \
    } while (0)

/* Blocks b .. b + nj - 1 (nj <= 4): their sums into c. */
__attribute__((target("amx-tile,amx-int8"))) static inline void
amx_sums(int32_t (*c)[QG][QG], const int8_t (*w)[8][64], const int8_t *xa, int b, int nj) {
    AMX_SUMS(0, 0, 4, 6);
    AMX_SUMS(1, 1, 5, 7);
    AMX_SUMS(2, 2, 4, 6);
    AMX_SUMS(3, 3, 5, 7);
}

/* Blocks b0 .. b1 - 1 of the group at g into w, their codes as signed bytes. */
static inline void amx_codes(int8_t (*w)[8][64], const unsigned char *g, nla_dtype dt, int b0,
                             int b1) {
    const size_t bs = QG * blk_bytes(dt);
    for (int b = b0; b < b1; b++) {
        const unsigned char *p = g + b * bs;
        q_prefetch(p, bs, Q_AHEAD, 1);
        for (int k = 0; k < 4; k++) {
            vi lo, hi;
            if (dt == NLA_DTYPE_Q8_0) {
                lo = vi_flip(vi_load(p + Q_CHUNK(k, 0)));
                hi = vi_flip(vi_load(p + Q_CHUNK(k + 4, 0)));
            } else {
                const vi raw = vi_load(p + Q_CHUNK(k, 0)), z = _mm512_set1_epi8(8);
                lo = _mm512_sub_epi8(vi_nibbles(raw, 0), z);
                hi = _mm512_sub_epi8(vi_nibbles(raw, 1), z);
            }
            _mm512_storeu_si512((void *)w[b][k], lo);
            _mm512_storeu_si512((void *)w[b][k + 4], hi);
        }
    }
}

/* y[t * ys + r] = row r < nr of the group at g . input t < n, for the
   inputs packed 16 at a time (amx_pack: chunk i's codes at xa + i nb 512,
   its scales at xd + i nb 16); w: the thread's buffer, [nb][8][64]. Four
   blocks' sums go into one half of c while the float steps of the four
   before read the other. */
__attribute__((target("amx-tile,amx-int8"))) static void
q_group_amx(float *y, size_t ys, const unsigned char *g, nla_dtype dt, int nr, const int8_t *xa,
            const float *xd, int n, int nb, int8_t (*w)[8][64]) {
    const size_t bs = QG * blk_bytes(dt);
    int32_t c[2][4][QG][QG] __attribute__((aligned(64))); /* C: [half][block][input][row] */
    const int8_t(*wc)[8][64] = (const int8_t(*)[8][64])w;
    amx_codes(w, g, dt, 0, nb < 8 ? nb : 8);
    for (int t0 = 0; t0 < n; t0 += QG) {
        const int m = n - t0 < QG ? n - t0 : QG;
        const int8_t *xat = xa + (size_t)t0 * nb * QK;
        const float *xdt = xd + (size_t)t0 * nb;
        /* the output rows' lines, asked for now: a store that misses holds
           back every store after it, the tiles' included, which the float
           steps wait for (1B Q4_0 prefill of 512 tokens, alternating: 1.09x
           faster at 1 thread, 1.10x at 2) */
        for (int i = 0; i < m; i++) PREFETCH(y + (size_t)(t0 + i) * ys);
        vf acc[QG];
        for (int i = 0; i < QG; i++) acc[i] = vf_zero();
        amx_sums(c[0], wc, xat, 0, nb < 4 ? nb : 4);
        for (int b = 0, h = 0; b < nb; b += 4, h ^= 1) {
            const int nj = nb - b < 4 ? nb - b : 4;
            if (t0 == 0 && b + 8 < nb) amx_codes(w, g, dt, b + 8, nb - b - 8 < 4 ? nb : b + 12);
            if (b + 4 < nb) amx_sums(c[h ^ 1], wc, xat, b + 4, nb - b - 4 < 4 ? nb - b - 4 : 4);
            for (int j = 0; j < nj; j++) {
                const vf dw = vf_scales(g + (b + j) * bs);
                const float *dx = xdt + (size_t)(b + j) * QG;
#if __GNUC__ >= 8
#pragma GCC unroll 16
#endif
                for (int i = 0; i < QG; i++) /* past n: codes and scales 0, acc stays 0 */
                    acc[i] = vf_step(acc[i], _mm512_load_si512((const void *)c[h][j][i]), dw,
                                     dx[i]);
            }
        }
        for (int i = 0; i < m; i++) vf_store(y + (size_t)(t0 + i) * ys, acc[i], nr);
    }
}
#endif

const char *nla_kernel_simd(void) {
#ifdef NLA_AMX
    if (amx_usable()) return NLA_SIMD_NAME "+amx";
#endif
#ifdef NLA_SIMD_NAME
    return NLA_SIMD_NAME;
#else
    return "none";
#endif
}

/* The peak loop of nla.h: QP sums, each round's codes the sums of the round
   before, so that the compiler can hoist nothing and the QP dot products
   of a round are independent (12 cover the latency of a dot product where
   two issue per cycle: 4-5 cycles on AMD Zen 5 and Intel's AVX-512 cores;
   with 16 vector registers, the avx2 targets', some sums spill, so that
   there the rate is a floor). *sink: a value of the sums, so that the loop
   is not left out. */
#define QP 12
double nla_kernel_dp_rounds(long n, int32_t *sink) {
    int32_t v = 0;
    double macs = 0;
    n = n > 0 ? n : 0;
#ifdef VL
    vi s[QP];
    const vi x = vi_set1(0x7f01fe80);
    for (int i = 0; i < QP; i++) s[i] = vi_set1(i);
    for (long r = 0; r < n; r++) {
        const vi s0 = s[0];
        for (int i = 0; i < QP - 1; i++) s[i] = vi_dp(s[i], s[i + 1], x);
        s[QP - 1] = vi_dp(s[QP - 1], s0, x);
    }
    for (int i = 0; i < QP; i++) {
        int32_t t[VL];
        memcpy(t, &s[i], sizeof t);
        v ^= t[i % VL];
    }
    macs = (double)n * QP * VL * 4;
#endif
    if (sink) *sink = v;
    return macs;
}

/* y[t * ys + r] = row r < nr of the groups at g (gb bytes apart) . input t
   of the n at x (nb blocks apart): the SIMD kernel, or the scalar
   reference; for one input, the rows of QS groups ss groups apart (ss is
   1 where QS is). */
static void q_group(float *y, size_t ys, const unsigned char *g, size_t gb, int ss, nla_dtype dt,
                    int nr, const blk_a8 *x, int n, int nb) {
#ifdef VL
    if (dt == NLA_DTYPE_Q8_0) q_group_fmt(y, ys, g, gb, ss, NLA_DTYPE_Q8_0, nr, x, n, nb);
    else q_group_fmt(y, ys, g, gb, ss, NLA_DTYPE_Q4_0, nr, x, n, nb);
#else
    (void)ss;
    for (int t = 0; t < n; t++)
        for (int r = 0; r < nr; r++)
            y[(size_t)t * ys + r] =
                q_dot_ref(g + (size_t)(r / QG) * gb, dt, r % QG, x + (size_t)t * nb, nb);
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* The for loop that follows, split across nt threads in equal ranges when
   cond holds (with OpenMP; else it runs as written); PARALLEL_FOR_CYCLIC
   deals its iterations out in turn instead, for loops whose iterations
   grow. Every iteration must be independent: then the results do not
   depend on the thread count. */
#ifdef _OPENMP
#define OMP_PRAGMA(x) _Pragma(#x)
#define PARALLEL_FOR(nt, cond) \
    OMP_PRAGMA(omp parallel for num_threads(nt) schedule(static) if (cond))
#define PARALLEL_FOR_CYCLIC(nt) OMP_PRAGMA(omp parallel for num_threads(nt) schedule(static, 1))
#else
#define PARALLEL_FOR(nt, cond)
#define PARALLEL_FOR_CYCLIC(nt)
#endif

#define CLAIM_STRIDE 32 /* ints: each claim counter on its own cache line (up to 128 bytes) */

/* Scratch of a matmul: a buffer per thread, quantized activations (also
   packed for the AMX kernel where it runs), and the counters of the
   threads' claims on tasks. A thread's buffer holds a float weight row, or
   a group's codes as signed bytes (16 per column) for the AMX kernel. */
#define BUF_FLOATS 4 /* floats per column in a thread's buffer */
typedef struct {
    float *rowbuf; /* [nt, BUF_FLOATS max cols + 16] (+ 16: room to align to 64 bytes) */
    blk_a8 *xq;    /* [max rows, max cols / 32] */
    void *amx;     /* where xa and xd lie (room to align them), or NULL */
    int8_t *xa;    /* AMX: [ceil(max rows / 16), max cols / 32, 16, 32] */
    float *xd;     /* AMX: [ceil(max rows / 16), max cols / 32, 16] */
    int *claimed;  /* [nt * CLAIM_STRIDE] */
    int nt;
    size_t qs_min; /* one input meets QS groups at once where a group has this many bytes */
    int apart;     /* and then groups a quarter of the matrix apart, not adjacent ones */
} mm_scratch;

/* p rounded up to a multiple of 64 bytes, a cache line, so that rows of 64
   bytes from there each lie in one line (the AMX kernel's buffers, the
   session's activations and caches) */
static void *align64(void *p) { return (char *)p + (64 - (uintptr_t)p % 64) % 64; }

/* Frees the buffers and zeroes sc (also one that was never set up). */
static void mm_scratch_free(mm_scratch *sc) {
    NLA_FREE(sc->rowbuf);
    NLA_FREE(sc->xq);
    NLA_FREE(sc->amx);
    NLA_FREE(sc->claimed);
    memset(sc, 0, sizeof *sc);
}

/* 1 on AMD's CPUs, whose decoding streams are set apart (mm_scratch_init). */
static int cpu_is_amd(void) {
#ifdef NLA_CPUID
    unsigned a = 0, b = 0, c = 0, d = 0; /* leaf 0: the maker in EBX EDX ECX, "AuthenticAMD" */
    return __get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541 && d == 0x69746e65 &&
           c == 0x444d4163;
#else
    return 0;
#endif
}

/* For matmuls of up to n_rows inputs of up to max_cols; 0 when memory runs out. */
static int mm_scratch_init(mm_scratch *sc, int nt, size_t n_rows, size_t max_cols) {
    memset(sc, 0, sizeof *sc);
    sc->nt = nt;
    /* How one input (decoding) meets the groups. On AMD's CPUs QS groups a
       quarter of the matrix apart (mm_task), so that each of the QS streams
       runs on from one task into the next, from groups of 16 KB: four
       adjacent groups, whose streams start afresh at each task, gained
       nothing over one group at a time in a 4B model (Q4_0, 23 KB groups),
       four apart 1.11-1.22x (AMD Zen 5, weights read into memory, one
       process alternating every 24-32 steps, 8-10 pairs: four apart against
       four adjacent, 4B Q4_0 1.15x / 1.12x at 1 / 2 threads, 12B Q4_0 1.18x
       at 2, 1B Q8_0 1.06x / 1.06x, 12B Q8_0 mapped 1.04x; four apart against
       one, 1B Q8_0 1.20x / 1.18x, 4B Q4_0 1.22x / 1.11x), while 1B's Q4_0
       groups (10 KB, the down projection's apart) stay one at a time (its
       glu pair in four streams apart 0.79x at 1 thread); the avx2 kernel
       the same (AMD Zen 3, one process alternating two sessions every
       16-32 steps, 8 rounds: four apart against one, 12B Q4_0 1.24x at 2
       threads, 1B Q8_0 1.22x / 1.12x at 1 / 2; separate processes, 1B
       Q4_0 0.90-1.11x). On Zen 5, where the avx2 kernel runs only in a
       -march=x86-64-v3 build, four apart against one: 12B Q4_0 1.04-1.06x
       at 2 threads, 1B Q8_0 0.95-0.96x at 1 and 2; the same 16 KB rule
       kept there (the 12B being the model that matters).
       Elsewhere four adjacent groups at every size, the next task's asked
       for ahead (the Intel Xeon with AMX: 1B decoding 1-8 % faster than one
       group; four apart not measured there), but in the avx2 kernel one
       group at a time (Q_ADJACENT). */
    sc->apart = cpu_is_amd();
    sc->qs_min = sc->apart ? 16384 : Q_ADJACENT ? 0 : SIZE_MAX;
    sc->rowbuf = (float *)xmalloc((size_t)nt * (BUF_FLOATS * max_cols + 16), sizeof(float));
    sc->xq = (blk_a8 *)xmalloc(n_rows * (max_cols / QK + 1), sizeof(blk_a8));
    sc->claimed = (int *)xmalloc((size_t)nt * CLAIM_STRIDE, sizeof(int));
    if (!sc->rowbuf || !sc->xq || !sc->claimed) { mm_scratch_free(sc); return 0; }
#ifdef NLA_AMX
    if (n_rows >= AMX_MIN && amx_usable()) {
        const size_t padded = (n_rows + QG - 1) / QG * QG; /* + 2 rows: room to align */
        sc->amx = xmalloc(padded + 2, max_cols + max_cols / QK * sizeof(float));
        if (!sc->amx) { mm_scratch_free(sc); return 0; }
        sc->xa = (int8_t *)align64(sc->amx);
        sc->xd = (float *)(void *)(sc->xa + padded * max_cols);
    }
#endif
    return 1;
}

#ifdef NLA_AMX
/* 1 when a matmul of n inputs with the scratch sc runs in AMX tiles: the
   CPU has them (sc holds their inputs) and n is at least AMX_MIN. */
static int use_amx(const mm_scratch *sc, int n) { return sc->xa && n >= AMX_MIN; }
#endif

/* e^t within 1.5 ulp (0 below -87, e^88 above 88, NaN for NaN), in
   arithmetic that the compiler vectorizes (a call to expf in a loop is one
   element at a time): t = n ln 2 + r with n = round(t / ln 2), |r| <= ln 2
   / 2 (ln 2 in two parts so that n ln2_hi is exact), e^r by its series to
   r^7 (truncation below 6e-9), times 2^n made from its exponent bits.
   Every float in [-87, 88] was checked against exp in double: 1.22 ulp at
   most. n comes from the bits of big = t / ln 2 + 1.5 * 2^23, a float
   whose units are its last bits, so that storing the sum rounds it to an
   integer: k = n as an int from its low 23 bits, and n as a float from
   those bits put back under big's exponent, which no reassociation
   (-ffast-math) can fold into t / ln 2 (the forms GCC vectorizes; a NaN
   gives some k, not an undefined conversion). The clamps to [-87, 88] and
   the 0 below take bit masks, not branches: from t < -87 ? -87 : ... GCC
   makes the clamped ends constants and leaves the formula in a branch,
   where a float multiply might trap, and vectorizes such loops only with
   AVX-512's masked operations (an x86-64-v3 build would run the gated
   feed-forward's gelu, 9 % of its 1B Q8_0 prefill, one element at a
   time); both forms give the same bits for every 32-bit input (NaN for
   NaN). */
static inline float exp_f(float t) {
    const uint32_t lo = 0u - (uint32_t)(t < -87.0f), hi = 0u - (uint32_t)(t > 88.0f);
    const float tc = f32_from_bits((f32_bits(t) & ~(lo | hi)) | (f32_bits(-87.0f) & lo) |
                                   (f32_bits(88.0f) & hi));
    const uint32_t low = f32_bits(tc * 1.44269504f + 12582912.0f) & 0x7fffffu;
    const int32_t k = (int32_t)low - 0x400000;
    const float n = f32_from_bits(low | 0x4b000000u) - 12582912.0f;
    const float r = (tc - n * 0.693145752f) - n * 1.42860677e-6f;
    const float e =
        1 + r * (1 + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
        r * (1.0f / 720 + r * (1.0f / 5040)))))));
    return f32_from_bits(f32_bits(e * f32_from_bits((uint32_t)(k + 127) << 23)) & ~lo);
}

/* The exponential check of nla.h. */
void nla_kernel_exp(const float *x, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = exp_f(x[i]);
}

/* gelu_pytorch_tanh: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715
   x^3), written as x / (1 + exp(-2u)) (the same function: one exponential
   instead of tanhf's expm1f, and no cancellation in 1 + tanh(u) for
   negative x). Below x = -10.03, where -2u passes 88, the result is
   x / (1 + e^88), about x / 1.65e38, where the exact one is -0 or
   subnormal: below 1e-30 for |x| < 1.6e8. */
static float gelu(float x) {
    return x / (1.0f + exp_f(-1.5957691216057308f * (x + 0.044715f * x * x * x)));
}

/* g[i] = gelu(g[i]) u[i] for i < n (Gemma's gated feed-forward), in a loop
   that the compiler vectorizes, with the bits of the element-by-element
   one (checked on 16 M random floats). The same loop written inside the
   matmul's task loop runs one element at a time, 10 % of a 12B model's
   batched decoding; against it (AMD Zen 5, one process alternating)
   prefill of 512 tokens 1B Q4_0 1.36x faster at 2 threads, Q8_0 1.39x at
   1, 12B Q4_0 of 256 1.12x; decoding 16 sequences 1B Q4_0 1.24x, 12B
   1.09x; one sequence 1.02-1.03x. */
static void glu_rows(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) g[i] = gelu(g[i]) * u[i];
}

/* Rows r0 .. r0+nr of y [n, w.rows] = x [n, w.cols] . W^T: groups of a
   quantized matrix (one, or up to QS for one input, ss groups apart: then
   only their rows) against the n inputs quantized in sc (in AMX tiles or
   not), or float rows converted one at a time into the thread's buffer f
   and met by all n. */
static void mm_rows(float *y, const wmat *w, int r0, int nr, int ss, const float *x,
                    const mm_scratch *sc, int n, float *f) {
    const int rows = w->rows, cols = w->cols;
    if (is_quant(w->dt)) {
        const size_t gb = group_bytes(w->dt, cols);
        const unsigned char *g = w->p + (size_t)(r0 / QG) * gb;
#ifdef NLA_AMX
        if (use_amx(sc, n)) {
            q_group_amx(y + r0, (size_t)rows, g, w->dt, nr, sc->xa, sc->xd, n, cols / QK,
                        (int8_t(*)[8][64])align64(f));
            return;
        }
#endif
        q_group(y + r0, (size_t)rows, g, gb, ss, w->dt, nr, sc->xq, n, cols / QK);
        return;
    }
    for (int r = r0; r < r0 + nr; r++) {
        wmat_row(w, r, f);
        for (int t = 0; t < n; t++) y[(size_t)t * rows + r] = dot(x + (size_t)t * cols, f, cols);
    }
}

/* Rows of a matmul's task of the matrices w[0..]: QS groups for one input
   (decoding) where w[0]'s are sc->qs_min bytes or more, else one group;
   for more than QC inputs QW groups (q_wide), one in AMX tiles. */
static int task_rows(int n, const wmat *const *w, const mm_scratch *sc) {
    if (n > 1) {
#ifdef NLA_AMX
        if (use_amx(sc, n)) return QG;
#endif
#if QW > 1
        if (n > QC) return QW * QG;
#endif
        return QG;
    }
    const int many = !is_quant(w[0]->dt) || group_bytes(w[0]->dt, w[0]->cols) >= sc->qs_min;
    return many ? QS * QG : QG;
}

/* Task `task` of matmuls below, of tr rows of matrix j (and of the
   matrices after it when glu), into f the thread's row buffer: rows t tr
   .. (t + 1) tr for the matrix's task t, or where one input meets QS
   quantized groups set apart (sc->apart), the matrix's groups t, t + m,
   .., t + (QS - 1) m for m its tasks, so that each of the QS streams runs
   on in a straight line from one task to the next. */
static void mm_task(float *const *y, const float *x, int n, const wmat *const *w, int k, int glu,
                    const int *first, int tr, int task, const mm_scratch *sc, float *f) {
    int j = 0;
    while (task >= first[j + 1]) j++;
    const int rows = w[j]->rows, t = task - first[j], m = first[j + 1] - first[j];
    const int ss = sc->apart && n == 1 && tr > QG && is_quant(w[j]->dt) ? m : 1;
    const int r0 = ss > 1 ? t * QG : t * tr, span = ss > 1 ? ((QS - 1) * ss + 1) * QG : tr;
    const int nr = rows - r0 < span ? rows - r0 : span; /* rows r0 .. r0 + nr hold the task's */
    for (int i = j; i < (glu ? k : j + 1); i++) mm_rows(y[i], w[i], r0, nr, ss, x, sc, n, f);
    if (glu) /* the task's rows, QG at a time, ss groups apart */
        for (int l = r0; l < r0 + nr; l += ss * QG)
            for (int c = 0; c < n; c++) {
                const size_t o = (size_t)c * rows + (size_t)l;
                glu_rows(y[0] + o, y[1] + o, r0 + nr - l < QG ? r0 + nr - l : QG);
            }
}

/* y[j] [n, w[j].rows] = x [n, cols] . W_j^T for the k <= 3 matrices that
   read the same input: the input is quantized once, and the threads split
   the matrices' rows among them in one loop, in tasks of task_rows, so
   that they meet once, not k times. glu (k = 2, two matrices of equal
   rows): task t of both is one task, which then sets y[0] = gelu(y[0]) *
   y[1] on its rows (Gemma's gated feed-forward).
   Schedule: thread i owns the i-th of nt equal ranges of tasks and claims
   them in order, ch at a time (about 128 K weights of each matrix, at least
   one task: a claim costs an atomic add); when its range is done it claims
   from the others' ranges, so a thread the host slows for a while no
   longer holds the others at the join (12B Q4_0 decode on 2 threads of a
   shared AMD Zen 5: 3-5 % faster than equal static halves; OpenMP's dynamic
   schedule, which deals chunks from one counter, was 6-14 % slower: the
   threads no longer stream through memory in long runs; the last claim of
   each range split into single groups, so that the threads meet within
   one group's time, left 12B Q4_0 decode as it was). A team smaller
   than nt (a session run inside the caller's own parallel region) still
   does every task. Which thread computes a task never changes its result. */
static void matmuls(float *const *y, const float *x, int n, const wmat *const *w, int k, int glu,
                    const mm_scratch *sc) {
    const int cols = w[0]->cols, nt = sc->nt;
    const int tr = task_rows(n, w, sc);
    const long long gw = (long long)tr * cols; /* weights in a task of one matrix */
    const int ch = gw < (1 << 17) ? (int)((1 << 17) / gw) : 1;
    int first[4] = {0}, quant = 0; /* first[j]: the task of matrix j's group 0 */
    for (int j = 0; j < k; j++) {
        first[j + 1] = first[j] + (glu && j ? 0 : (w[j]->rows + tr - 1) / tr);
        quant |= is_quant(w[j]->dt);
    }
    if (quant) {
        PARALLEL_FOR(nt, n > 1)
        for (int t = 0; t < n; t++)
            a8_quantize(x + (size_t)t * cols, sc->xq + (size_t)t * (cols / QK), cols);
#ifdef NLA_AMX
        if (use_amx(sc, n)) {
            PARALLEL_FOR(nt, n > QG)
            for (int t0 = 0; t0 < n; t0 += QG)
                amx_pack(sc->xa + (size_t)t0 * cols, sc->xd + (size_t)t0 * (cols / QK), sc->xq,
                         t0, n, cols / QK);
        }
#endif
    }
    const long long ntask = first[k];
    int *claimed = sc->claimed; /* claimed[i * CLAIM_STRIDE]: chunks of range i taken */
    for (int i = 0; i < nt; i++) claimed[i * CLAIM_STRIDE] = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        const int me = thread_id();
        float *f = sc->rowbuf + (size_t)me * (BUF_FLOATS * (size_t)cols + 16);
#ifdef NLA_AMX
        if (quant && use_amx(sc, n)) amx_begin();
#endif
        for (int v = 0; v < nt; v++) { /* its own range, then the others' */
            const int i = (me + v) % nt, lo = (int)(ntask * i / nt);
            const int hi = (int)(ntask * (i + 1) / nt);
            for (;;) {
                int c;
#ifdef _OPENMP
#pragma omp atomic capture
#endif
                c = claimed[i * CLAIM_STRIDE]++;
                if (c >= (hi - lo + ch - 1) / ch) break;
                for (int t = lo + c * ch; t < hi && t < lo + (c + 1) * ch; t++)
                    mm_task(y, x, n, w, k, glu, first, tr, t, sc, f);
            }
        }
#ifdef NLA_AMX
        if (quant && use_amx(sc, n)) amx_end();
#endif
    }
}

/* y [n, w.rows] = x [n, w.cols] . W^T: the one-matrix case. */
static void matmul(float *y, const float *x, int n, const wmat *w, const mm_scratch *sc) {
    matmuls(&y, x, n, &w, 1, 0, sc);
}

/* The kernel check of nla.h: the model's matmul, or the scalar reference row by row. */
nla_status nla_kernel_matmul(nla_dtype dt, const float *w, const float *x, int rows, int n_x, int n,
                             int simd, float *out) {
    if (!is_quant(dt) || !w || !x || !out || rows < 1 || n_x < 1 || n < QK || n % QK)
        return NLA_ERR_ARG;
    const size_t gb = group_bytes(dt, n);
    /* padding rows: zeros */
    unsigned char *qw = (unsigned char *)xcalloc((size_t)mat_bytes(dt, rows, n), 1);
    mm_scratch sc;
    if (!qw || !mm_scratch_init(&sc, 1, (size_t)n_x, (size_t)n)) {
        NLA_FREE(qw);
        return NLA_ERR_NOMEM;
    }
    sc.qs_min = 0; /* one input meets QS groups apart whatever the CPU: the check covers */
    sc.apart = 1;  /* that path, and adjacent ones in a matrix of one task */
    for (int r = 0; r < rows; r++)
        q_put_row(w + (size_t)r * n, qw + (size_t)(r / QG) * gb, r % QG, dt, n);
    const wmat wm = {qw, dt, rows, n};
    if (simd) matmul(out, x, n_x, &wm, &sc);
    else
        for (int t = 0; t < n_x; t++) {
            a8_quantize(x + (size_t)t * n, sc.xq, n);
            for (int r = 0; r < rows; r++)
                out[(size_t)t * rows + r] =
                    q_dot_ref(qw + (size_t)(r / QG) * gb, dt, r % QG, sc.xq, n / QK);
        }
    NLA_FREE(qw);
    mm_scratch_free(&sc);
    return NLA_OK;
}

/* out = x / sqrt(mean(x^2) + eps) * g, where g = 1 + w was precomputed in
   float32 (Gemma stores the gain zero-centred). Sum of squares in double. */
static void rmsnorm(float *out, const float *x, const float *g, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * r * g[i];
}

/* Rotate-half RoPE on one head: pairs (i, i + hd/2) by angle i, with
   cs = [cos 0..hd/2-1, sin 0..hd/2-1] for this position. */
static void rope(float *x, const float *cs, int hd) {
    const int h2 = hd / 2;
    for (int i = 0; i < h2; i++) {
        float c = cs[i], s = cs[h2 + i], a = x[i], b = x[i + h2];
        x[i] = a * c - b * s;
        x[i + h2] = b * c + a * s;
    }
}

#define ATT_ROWS 8   /* rows of one sequence that attend together, at most */
#define ATT_AHEAD 8  /* keys on that attention asks for from memory (a key: hd floats) */
#define ATT_VALUES 8 /* keys the values' pass takes at a time (the scores': DOTS_MAX) */

/* Softmax attention of R rows of one sequence, G query heads each that
   share one KV head: row r's heads q_r [G, hd] at q + r qs attend to keys
   lo[r]..p[r] of that head's cache, laid out [cap, hd] (position j in slot
   j % cap), into out + r qs [G, hd]. The keys are taken DOTS_MAX
   positions at a time, the values ATT_VALUES (fewer where the ring wraps),
   and each is met by every row and head that sees it while it is in cache;
   the softmax runs once over each row's scores, scaling them and finding
   their maximum in one pass, their sum in a register (AMD Zen 5, 2
   threads, one process alternating, against the values 4 at a time and
   the scores scaled as they came: prefill of 512 tokens 1B Q4_0 1.03x
   faster, of 2048 1.04x, 12B Q4_0 of 256 1.02x; decoding the same; the
   values 16 at a time 0.62x, the maximum in 16 chains 1.00-1.01x). A
   head's sums run in the same order whatever R and G and however the keys
   are taken, so a row's result is the same alone or beside others. sc
   holds R G (nk + 1) floats, nk = p[R-1] - lo[0] + 1 (rows in increasing
   position). */
static void attend(float *out, const float *q, size_t qs, int R, const int *lo, const int *p,
                   int G, const float *kc, const float *vc, int cap, int hd, float scale,
                   float softcap, float *sc) {
    const int j0 = lo[0], nk = p[R - 1] - j0 + 1;
    float *sum = sc + (size_t)R * G * nk;
    for (int pass = 0; pass < 2; pass++) { /* the scores; then the softmax and the values */
        for (int r = 0; pass && r < R; r++)
            for (int g = 0; g < G; g++) {
                float *sg = sc + ((size_t)r * G + g) * nk + (lo[r] - j0);
                float *o = out + r * qs + (size_t)g * hd, mx = -INFINITY, sm = 0;
                const int n = p[r] - lo[r] + 1; /* the row's scores, sg[0 .. n) */
                for (int j = 0; j < n; j++) {
                    sg[j] *= scale;
                    if (softcap > 0) sg[j] = softcap * tanhf(sg[j] / softcap);
                    mx = sg[j] > mx ? sg[j] : mx;
                }
                for (int j = 0; j < n; j++) sg[j] = exp_f(sg[j] - mx);
                for (int j = 0; j < n; j++) sm += sg[j];
                sum[r * G + g] = sm;
                for (int i = 0; i < hd; i++) o[i] = 0;
            }
        for (int j = j0, m; j <= p[R - 1]; j += m) {
            const int run = pass ? ATT_VALUES : DOTS_MAX;
            m = p[R - 1] - j + 1 < run ? p[R - 1] - j + 1 : run;
            m = cap - j % cap < m ? cap - j % cap : m;
            /* the slots ATT_AHEAD keys on, asked for now (in the ring: up to its end) */
            const int ja = (j + ATT_AHEAD) % cap, ma = cap - ja < m ? cap - ja : m;
            for (size_t o = 0; o < (size_t)ma * hd; o += 16)
                PREFETCH((pass ? vc : kc) + (size_t)ja * hd + o);
            for (int r = 0; r < R; r++) {
                /* the keys a..b of this run that row r sees, in slots a % cap .. */
                const int a = j > lo[r] ? j : lo[r], b = j + m - 1 < p[r] ? j + m - 1 : p[r];
                for (int g = 0; a <= b && g < G; g++) {
                    float *sg = sc + ((size_t)r * G + g) * nk + (a - j0), w[ATT_VALUES];
                    const size_t row = (size_t)(a % cap) * hd;
                    if (pass) {
                        for (int d = 0; d <= b - a; d++) w[d] = sg[d] / sum[r * G + g];
                        axpys(out + r * qs + (size_t)g * hd, w, vc + row, b - a + 1, hd);
                        continue;
                    }
                    dots(sg, q + r * qs + (size_t)g * hd, 0, kc + row, (size_t)hd, b - a + 1, hd);
                }
            }
        }
    }
}

/* The attention check of nla.h: attend on the caller's cache. */
nla_status nla_kernel_attention(const float *q, const float *k, const float *v, int cap, int R,
                                const int *lo, const int *p, int G, int hd, float scale,
                                float softcap, float *out) {
    if (!q || !k || !v || !lo || !p || !out || cap < 1 || R < 1 || G < 1 || hd < 1)
        return NLA_ERR_ARG;
    for (int r = 0; r < R; r++)
        if (lo[r] < 0 || p[r] < lo[r] || p[r] - lo[r] >= cap ||
            (r && (lo[r] < lo[r - 1] || p[r] < p[r - 1])))
            return NLA_ERR_ARG;
    const size_t nk = (size_t)(p[R - 1] - lo[0] + 1);
    float *sc = (float *)xmalloc((size_t)R * G * (nk + 1), sizeof(float));
    if (!sc) return NLA_ERR_NOMEM;
    attend(out, q, (size_t)G * hd, R, lo, p, G, k, v, cap, hd, scale, softcap, sc);
    NLA_FREE(sc);
    return NLA_OK;
}

/* ==== 8 Model: binding tensors, open/close, quantize, save ============== */

/* Tensor names: the language model sits under one of three prefixes
   (model., language_model.model., model.language_model.); vision-tower and
   projector tensors are ignored; lm_head.weight is used only when the
   embeddings are untied. Every expected tensor must exist exactly once with
   the shape the config implies; norms are small and are converted to float32
   gains (1 + w) here, the matrices stay mapped in their stored dtype. */

enum {
    W_IN_NORM, W_Q, W_K, W_V, W_O, W_QN, W_KN, W_POST_ATTN, W_PRE_FFW, W_GATE, W_UP, W_DOWN,
    W_POST_FFW, W_PER_LAYER
};

static const char *const layer_tensor_names[W_PER_LAYER] = {
    "input_layernorm.weight",           "self_attn.q_proj.weight",  "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",          "self_attn.o_proj.weight",  "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",          "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight", "mlp.gate_proj.weight",     "mlp.up_proj.weight",
    "mlp.down_proj.weight",             "post_feedforward_layernorm.weight",
};

typedef struct {
    wmat q, k, v, o, gate, up, down;
    const float *in_norm, *post_attn, *pre_ffw, *post_ffw, *q_norm, *k_norm; /* 1 + w */
} layer_w;

struct nla_model {
    gemma_cfg cfg;
    nla_st *st;
    char *dir;
    layer_w *layer;           /* [L] */
    wmat embed, head;         /* head == embed when tied */
    const float *final_norm;  /* [h] 1 + w, or NULL (NLA AR backbone) */
    float *gains;             /* storage of all 1 + w vectors */
    float *inv_freq;          /* [2][hd/2]: local, global (factor applied) */
    float embed_scale;
    uint64_t n_params, weight_bytes;
    const st_tensor **src;    /* [L * W_PER_LAYER + 3] the stored tensor of each role
                                 (layer slots, then embedding, final norm, head) */
    int file_quant;           /* the files' block format (nla.quant metadata), or -1 */
    int no_mmap;              /* nla_model_params.no_mmap, for files opened later */
    unsigned char *qmem;      /* quantized copies of the matrices (quantize on load) */
    uint64_t quant_bytes;
    const nla_tokenizer *tok; /* NULL when the folder has no tokenizer.json */
    nla_tokenizer *own_tok;   /* tok when the model loaded it (else borrowed) */
    struct nla_sidecar *nla;  /* NULL when the folder has no nla_meta.yaml */
    int live_sessions;        /* atomic; the only field written after open */
};

/* The NLA sidecar (nla_meta.yaml + value head) is read at open; its code is
   in section 13. */
struct nla_sidecar;
static nla_status sidecar_load(nla_model *m, errbuf *e);
static void sidecar_free(struct nla_sidecar *sc);

static const char *const lm_prefixes[] = {"model.language_model.", "language_model.model.",
                                          "model."};
static const char *const ignored_prefixes[] = {"vision_tower.", "multi_modal_projector.",
                                               "model.vision_tower.",
                                               "model.multi_modal_projector."};

static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

static nla_status bind_dtype(const nla_st *st, const st_tensor *t, nla_dtype *dt, errbuf *e) {
    const char *n = st_dtypes[t->dtype].name;
    if (!strcmp(n, "F32")) *dt = NLA_DTYPE_F32;
    else if (!strcmp(n, "F16")) *dt = NLA_DTYPE_F16;
    else if (!strcmp(n, "BF16")) *dt = NLA_DTYPE_BF16;
    else
        return fail(e, NLA_ERR_UNSUPPORTED,
                    "%s: tensor '%s' has dtype %s; only F32, F16 and BF16 are supported%s",
                    st->files[t->file].path, t->name, n,
                    strcmp(n, "U8") ? "" : " (U8 only in files nla quantize wrote)");
    return NLA_OK;
}

/* The matrix of a layer slot, or NULL for a norm slot. */
static wmat *layer_mat(layer_w *lw, int k) {
    switch (k) {
    case W_Q: return &lw->q;
    case W_K: return &lw->k;
    case W_V: return &lw->v;
    case W_O: return &lw->o;
    case W_GATE: return &lw->gate;
    case W_UP: return &lw->up;
    case W_DOWN: return &lw->down;
    }
    return NULL;
}

/* Checks tensor t has shape [rows, cols] (cols = 0: a vector of rows). */
static nla_status bind_shape(const nla_st *st, const st_tensor *t, int64_t rows, int64_t cols,
                             const char *why, errbuf *e) {
    int ok = cols ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                  : (t->ndim == 1 && t->shape[0] == rows);
    if (ok) return NLA_OK;
    char got[96] = "[", *p = got + 1;
    for (int i = 0; i < t->ndim && p < got + sizeof got - 24; i++)
        p += snprintf(p, (size_t)(got + sizeof got - p), "%s%lld", i ? ", " : "",
                      (long long)t->shape[i]);
    snprintf(p, (size_t)(got + sizeof got - p), "]");
    if (cols)
        return fail(e, NLA_ERR_FORMAT,
                    "%s: tensor '%s' has shape %s but config.json implies [%lld, %lld] (%s)",
                    st->files[t->file].path, t->name, got, (long long)rows, (long long)cols, why);
    return fail(e, NLA_ERR_FORMAT,
                "%s: tensor '%s' has shape %s but config.json implies [%lld] (%s)",
                st->files[t->file].path, t->name, got, (long long)rows, why);
}

static nla_status bind_mat(nla_model *m, const st_tensor *t, wmat *w, int64_t rows, int64_t cols,
                           const char *why, errbuf *e) {
    nla_status rc;
    /* blocks written by nla quantize */
    if (m->file_quant >= 0 && !strcmp(st_dtypes[t->dtype].name, "U8")) {
        w->dt = (nla_dtype)m->file_quant;
        rc = cols % QK ? fail(e, NLA_ERR_FORMAT,
                              "%s: tensor '%s' is quantized but %lld columns are not whole blocks",
                              m->st->files[t->file].path, t->name, (long long)cols)
                       : bind_shape(m->st, t, (rows + QG - 1) / QG,
                                    (int64_t)group_bytes(w->dt, (int)cols), why, e);
    } else {
        rc = bind_shape(m->st, t, rows, cols, why, e);
        if (!rc) rc = bind_dtype(m->st, t, &w->dt, e);
    }
    if (rc) return rc;
    w->p = t->data;
    w->rows = (int)rows;
    w->cols = (int)cols;
    m->n_params += (uint64_t)rows * (uint64_t)cols;
    m->weight_bytes += t->end - t->begin;
    return NLA_OK;
}

/* gain[i] = 1 + w[i] in float32, as HF's Gemma3RMSNorm computes it. */
static nla_status bind_gain(nla_model *m, const st_tensor *t, float *gain, int64_t n,
                            const char *why, errbuf *e) {
    nla_dtype dt = NLA_DTYPE_F32;
    nla_status rc = bind_shape(m->st, t, n, 0, why, e);
    if (!rc) rc = bind_dtype(m->st, t, &dt, e);
    if (rc) return rc;
    to_f32(gain, t->data, dt, (int)n);
    for (int64_t i = 0; i < n; i++) gain[i] = 1.0f + gain[i];
    m->n_params += (uint64_t)n;
    m->weight_bytes += t->end - t->begin;
    return NLA_OK;
}

/* Finds each tensor's role by name; see the section comment. */
static nla_status bind_model(nla_model *m, errbuf *e) {
    const gemma_cfg *c = &m->cfg;
    const int L = c->n_layers, h = c->d, qw = c->n_heads * c->hd, kvw = c->n_kv * c->hd;
    const nla_st *st = m->st;
    const st_tensor **slot = (const st_tensor **)xcalloc((size_t)L * W_PER_LAYER + 3, sizeof *slot);
    const st_tensor **emb = slot + (size_t)L * W_PER_LAYER, **norm = emb + 1, **head = emb + 2;
    nla_status rc = NLA_OK;
    if (!slot) return fail(e, NLA_ERR_NOMEM, "out of memory");
    m->src = slot;
    const char *fq = nla_st_metadata(st, "nla.quant");
    m->file_quant = !fq                           ? -1
                    : !strcmp(fq, quant_names[0]) ? NLA_DTYPE_Q8_0
                    : !strcmp(fq, quant_names[1]) ? NLA_DTYPE_Q4_0
                                                  : -2;
    if (m->file_quant == -2 && (!strcmp(fq, "q8_0") || !strcmp(fq, "q4_0")))
        return fail(e, NLA_ERR_UNSUPPORTED,
                    "%s: nla.quant '%s' is the row-by-row layout of an earlier nla.c; "
                    "run nla quantize again",
                    m->dir, fq);
    if (m->file_quant == -2)
        return fail(e, NLA_ERR_UNSUPPORTED, "%s: unknown nla.quant format '%s'", m->dir, fq);
    for (int i = 0; i < st->n && !rc; i++) {
        const st_tensor *t = &st->t[i];
        const char *rest = NULL, *where = st->files[t->file].path;
        const st_tensor **dst = NULL;
        int skip = 0;
        for (size_t k = 0; k < sizeof ignored_prefixes / sizeof *ignored_prefixes; k++)
            skip |= starts_with(t->name, ignored_prefixes[k]);
        if (skip) continue;
        if (!strcmp(t->name, "lm_head.weight") ||
            !strcmp(t->name, "language_model.lm_head.weight")) {
            dst = head;
        } else {
            for (size_t k = 0; k < sizeof lm_prefixes / sizeof *lm_prefixes && !rest; k++)
                if (starts_with(t->name, lm_prefixes[k])) rest = t->name + strlen(lm_prefixes[k]);
            if (!rest) continue; /* not part of the language model */
            if (!strcmp(rest, "embed_tokens.weight")) dst = emb;
            else if (!strcmp(rest, "norm.weight")) dst = norm;
            else if (starts_with(rest, "layers.") && rest[7] >= '0' && rest[7] <= '9') {
                char *endp;
                long li = strtol(rest + 7, &endp, 10);
                if (*endp != '.' || li >= L || endp - (rest + 7) > 6) {
                    rc = fail(e, NLA_ERR_FORMAT,
                              "%s: tensor '%s': layer index out of range "
                              "(num_hidden_layers = %d in config.json)",
                              where, t->name, L);
                    break;
                }
                for (int k = 0; k < W_PER_LAYER; k++)
                    if (!strcmp(endp + 1, layer_tensor_names[k])) dst = &slot[li * W_PER_LAYER + k];
            }
            if (!dst) {
                rc = fail(e, NLA_ERR_FORMAT, "%s: unexpected tensor '%s' in a Gemma 3 checkpoint",
                          where, t->name);
                break;
            }
        }
        if (*dst) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: tensors '%s' and '%s' both claim the same role",
                      where, (*dst)->name, t->name);
            break;
        }
        *dst = t;
    }
    /* every expected tensor present */
    if (!rc && !*emb)
        rc = fail(e, NLA_ERR_FORMAT, "%s: no embedding tensor (model.embed_tokens.weight)", m->dir);
    if (!rc && !c->tie && !*head)
        rc = fail(e, NLA_ERR_FORMAT,
                  "%s: tie_word_embeddings is false but there is no lm_head.weight", m->dir);
    for (int i = 0; i < L * W_PER_LAYER && !rc; i++)
        if (!slot[i])
            rc = fail(e, NLA_ERR_FORMAT, "%s: missing tensor model.layers.%d.%s", m->dir,
                      i / W_PER_LAYER, layer_tensor_names[i % W_PER_LAYER]);
    /* shapes against config.json; gains converted */
    size_t n_gain = (size_t)L * (4 * (size_t)h + 2 * (size_t)c->hd) + (size_t)h;
    if (!rc && !(m->gains = (float *)xmalloc(n_gain, sizeof(float))))
        rc = fail(e, NLA_ERR_NOMEM, "out of memory");
    if (!rc && !(m->layer = (layer_w *)xcalloc((size_t)L, sizeof *m->layer)))
        rc = fail(e, NLA_ERR_NOMEM, "out of memory");
    if (!rc) rc = bind_mat(m, *emb, &m->embed, c->vocab, h, "vocab_size x hidden_size", e);
    if (!rc && is_quant(m->embed.dt))
        rc = fail(e, NLA_ERR_FORMAT,
                  "%s: the embedding '%s' is stored quantized; "
                  "its rows are read by lookup, so it must be F32, F16 or BF16",
                  st->files[(*emb)->file].path, (*emb)->name);
    m->head = m->embed;
    const int q_head = *head && m->file_quant >= 0 && !strcmp(st_dtypes[(*head)->dtype].name, "U8");
    if (!rc && (!c->tie || q_head))
        rc = bind_mat(m, *head, &m->head, c->vocab, h, "vocab_size x hidden_size", e);
    float *g = m->gains;
    for (int l = 0; l < L && !rc; l++) {
        const st_tensor **s = &slot[l * W_PER_LAYER];
        layer_w *lw = &m->layer[l];
        float *gi = g, *gpa = gi + h, *gpf = gpa + h, *gpo = gpf + h, *gq = gpo + h,
              *gk = gq + c->hd;
        g = gk + c->hd;
        if ((rc = bind_gain(m, s[W_IN_NORM], gi, h, "hidden_size", e)) ||
            (rc = bind_mat(m, s[W_Q], &lw->q, qw, h, "num_attention_heads*head_dim x hidden_size",
                           e)) ||
            (rc = bind_mat(m, s[W_K], &lw->k, kvw, h, "num_key_value_heads*head_dim x hidden_size",
                           e)) ||
            (rc = bind_mat(m, s[W_V], &lw->v, kvw, h, "num_key_value_heads*head_dim x hidden_size",
                           e)) ||
            (rc = bind_mat(m, s[W_O], &lw->o, h, qw, "hidden_size x num_attention_heads*head_dim",
                           e)) ||
            (rc = bind_gain(m, s[W_QN], gq, c->hd, "head_dim", e)) ||
            (rc = bind_gain(m, s[W_KN], gk, c->hd, "head_dim", e)) ||
            (rc = bind_gain(m, s[W_POST_ATTN], gpa, h, "hidden_size", e)) ||
            (rc = bind_gain(m, s[W_PRE_FFW], gpf, h, "hidden_size", e)) ||
            (rc = bind_mat(m, s[W_GATE], &lw->gate, c->d_ff, h, "intermediate_size x hidden_size",
                           e)) ||
            (rc = bind_mat(m, s[W_UP], &lw->up, c->d_ff, h, "intermediate_size x hidden_size",
                           e)) ||
            (rc = bind_mat(m, s[W_DOWN], &lw->down, h, c->d_ff, "hidden_size x intermediate_size",
                           e)) ||
            (rc = bind_gain(m, s[W_POST_FFW], gpo, h, "hidden_size", e)))
            break;
        lw->in_norm = gi; lw->post_attn = gpa; lw->pre_ffw = gpf; lw->post_ffw = gpo;
        lw->q_norm = gq; lw->k_norm = gk;
    }
    if (!rc && *norm) {
        rc = bind_gain(m, *norm, g, h, "hidden_size", e);
        m->final_norm = g;
    }
    return rc;
}

/* Drops the pages of a mapped range from memory (they are re-read from the
   file if touched again): after a matrix is quantized its stored copy is
   not needed, and should not count against the machine's RAM. */
static void release_pages(const void *p, size_t n) {
#if !defined(NLA_NO_MMAP) && defined(MADV_DONTNEED)
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + pg - 1) & ~(pg - 1),
                    b = ((uintptr_t)p + n) & ~(pg - 1);
    if (pg && b > a) madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
#else
    (void)p;
    (void)n;
#endif
}

/* Quantizes every matrix whose rows split into 32-blocks (the layers' seven
   and the LM head) into one allocation. The embedding rows read by lookup
   keep their stored form. Rows are converted in parallel. */
static nla_status quantize_model(nla_model *m, nla_dtype dt, int mapped, errbuf *e) {
    const int L = m->cfg.n_layers, n_mats = 7 * L + 1;
    wmat **mats = (wmat **)xmalloc((size_t)n_mats, sizeof *mats);
    if (!mats) return fail(e, NLA_ERR_NOMEM, "out of memory");
    int maxcols = 0;
    for (int l = 0, i = 0; l < L; l++)
        for (int k = 0; k < W_PER_LAYER; k++)
            if (layer_mat(&m->layer[l], k)) mats[i++] = layer_mat(&m->layer[l], k);
    mats[n_mats - 1] = &m->head;
    uint64_t total = 0;
    for (int i = 0; i < n_mats; i++)
        if (mats[i]->cols % QK == 0 && !is_quant(mats[i]->dt)) {
            total += mat_bytes(dt, mats[i]->rows, mats[i]->cols);
            if (mats[i]->cols > maxcols) maxcols = mats[i]->cols;
        }
#ifdef _OPENMP
    const int nt = omp_get_max_threads();
#else
    const int nt = 1;
#endif
    float *buf = (float *)xmalloc((size_t)nt * (size_t)maxcols + 1, sizeof(float));
    if (total > SIZE_MAX || !buf ||
        !(m->qmem = (unsigned char *)NLA_MALLOC(total ? (size_t)total : 1))) {
        NLA_FREE(mats);
        NLA_FREE(buf);
        return fail(e, NLA_ERR_NOMEM, "out of memory for %.2f GB of quantized weights",
                    (double)total / 1e9);
    }
    advise_huge(m->qmem, (size_t)total, 1);
    unsigned char *dst = m->qmem;
    for (int i = 0; i < n_mats; i++) {
        wmat *w = mats[i];
        if (w->cols % QK || is_quant(w->dt)) continue;
        const size_t in_rb = row_bytes(w->dt, w->cols), gb = group_bytes(dt, w->cols);
        const int groups = (w->rows + QG - 1) / QG;
        PARALLEL_FOR(nt, 1)
        for (int g = 0; g < groups; g++) {
            float *f = buf + (size_t)thread_id() * (size_t)maxcols;
            for (int r = 0; r < QG; r++) { /* rows past the end: zeros */
                if (g * QG + r < w->rows)
                    to_f32(f, w->p + (size_t)(g * QG + r) * in_rb, w->dt, w->cols);
                else memset(f, 0, (size_t)w->cols * sizeof(float));
                q_put_row(f, dst + (size_t)g * gb, r, dt, w->cols);
            }
        }
        if (mapped) release_pages(w->p, (size_t)w->rows * in_rb);
        w->p = dst;
        w->dt = dt;
        dst += (size_t)groups * gb;
    }
    m->quant_bytes = total;
    NLA_FREE(mats);
    NLA_FREE(buf);
    return NLA_OK;
}

/* One tensor to save: a matrix as the model holds it (quantized groups are
   U8 [groups, group bytes]) or a stored tensor as it is. */
static void save_tensor(nla_tensor *o, const char *name, const wmat *w, const st_tensor *t) {
    memset(o, 0, sizeof *o);
    o->name = name;
    if (w && is_quant(w->dt)) {
        o->dtype = "U8";
        o->ndim = 2;
        o->shape[0] = (w->rows + QG - 1) / QG;
        o->shape[1] = (int64_t)group_bytes(w->dt, w->cols);
        o->data = w->p;
        o->nbytes = mat_bytes(w->dt, w->rows, w->cols);
    } else {
        o->dtype = st_dtypes[t->dtype].name;
        o->ndim = t->ndim;
        memcpy(o->shape, t->shape, sizeof t->shape);
        o->data = t->data;
        o->nbytes = t->end - t->begin;
    }
}

/* Copies file `from` to `to` (whole, through memory). */
static nla_status copy_file(const char *from, const char *to, errbuf *e) {
    char *buf = NULL;
    size_t n = 0;
    nla_status rc = read_file(from, &buf, &n, SIZE_MAX / 2, e);
    if (!rc) rc = write_file(to, buf, n, e);
    NLA_FREE(buf);
    return rc;
}

/* from_dir/name to to_dir/name, if it exists. */
static nla_status copy_side_file(const char *from_dir, const char *to_dir, const char *name,
                                 errbuf *e) {
    char *a = path_join(from_dir, name), *b = path_join(to_dir, name);
    nla_status rc = !a || !b         ? fail(e, NLA_ERR_NOMEM, "out of memory")
                    : file_exists(a) ? copy_file(a, b, e)
                                     : NLA_OK;
    NLA_FREE(a);
    NLA_FREE(b);
    return rc;
}

/* The files of a model that saving or writing one into a folder replaces or
   leaves to be read beside it (an index is read before model.safetensors,
   a sidecar makes the folder an AV or AR); from the third on, files a new
   model may not write, which random-model removes. */
static const char *const model_files[] = {"config.json", "model.safetensors",
                                          "model.safetensors.index.json", "nla_meta.yaml",
                                          "value_head.safetensors"};
#define N_MODEL_FILES (sizeof model_files / sizeof *model_files)

/* The first of model_files that dir holds, or NULL (also where out of memory: *nomem). */
static const char *model_file_in(const char *dir, int *nomem) {
    *nomem = 0;
    for (size_t i = 0; i < N_MODEL_FILES; i++) {
        char *p = path_join(dir, model_files[i]);
        const int there = p && file_exists(p);
        *nomem |= !p;
        NLA_FREE(p);
        if (there) return model_files[i];
    }
    return NULL;
}

nla_status nla_model_save(const nla_model *m, const char *dir, char *errbuf_out,
                          size_t errbuf_size) {
    static const char *const side[] =
        {"config.json",           "generation_config.json",  "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
         "chat_template.jinja",   "nla_meta.yaml",           "value_head.safetensors"};
    errbuf e;
    e.msg[0] = 0;
    if (!m || !dir || !strcmp(dir, m->dir) || same_file(dir, m->dir)) {
        copy_err(errbuf_out, errbuf_size,
                 "nla_model_save: a model and a folder other than its own are required");
        return NLA_ERR_ARG;
    }
    /* a model there would be replaced in part (model_files) */
    int nomem;
    const char *held = model_file_in(dir, &nomem);
    if (held || nomem) {
        const nla_status rc =
            held ? fail(&e, NLA_ERR_ARG,
                        "nla_model_save: %s already holds a model (%s): save into an empty or "
                        "new folder",
                        dir, held)
                 : fail(&e, NLA_ERR_NOMEM, "out of memory");
        copy_err(errbuf_out, errbuf_size, e.msg);
        return rc;
    }
    const int L = m->cfg.n_layers, n_max = L * W_PER_LAYER + 3;
    nla_tensor *t = (nla_tensor *)xcalloc((size_t)n_max, sizeof *t);
    char (*names)[96] = (char (*)[96])xcalloc((size_t)n_max, 96);
    char *path = path_join(dir, "model.safetensors");
    nla_status rc = t && names && path ? NLA_OK : fail(&e, NLA_ERR_NOMEM, "out of memory");
    int n = 0;
    for (int l = 0; l < L && !rc; l++)
        for (int k = 0; k < W_PER_LAYER; k++, n++) {
            snprintf(names[n], 96, "model.layers.%d.%s", l, layer_tensor_names[k]);
            save_tensor(&t[n], names[n], layer_mat(&m->layer[l], k), m->src[l * W_PER_LAYER + k]);
        }
    /* embedding, final norm, head */
    const st_tensor *const *extra = m->src + (size_t)L * W_PER_LAYER;
    if (!rc) save_tensor(&t[n++], "model.embed_tokens.weight", NULL, extra[0]);
    if (!rc && extra[1]) save_tensor(&t[n++], "model.norm.weight", NULL, extra[1]);
    if (!rc && m->head.p != m->embed.p) save_tensor(&t[n++], "lm_head.weight", &m->head, extra[2]);
    nla_dtype qdt = is_quant(m->head.dt) ? m->head.dt : NLA_DTYPE_F32;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < W_PER_LAYER; k++)
            if (layer_mat(&m->layer[l], k) && is_quant(layer_mat(&m->layer[l], k)->dt))
                qdt = layer_mat(&m->layer[l], k)->dt;
    const char *meta[4] = {"format", "pt", "nla.quant", quant_names[qdt == NLA_DTYPE_Q4_0]};
    const int quantized = is_quant(qdt);
    if (!rc)
        rc = nla_st_write(path, t, n, meta, quantized ? 2 : 1, NULL, NULL, e.msg, sizeof e.msg);
    for (size_t i = 0; i < sizeof side / sizeof *side && !rc; i++)
        rc = copy_side_file(m->dir, dir, side[i], &e);
    NLA_FREE(t); NLA_FREE(names); NLA_FREE(path);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

void nla_model_get_info(const nla_model *m, nla_model_info *info) {
    if (!m || !info) return;
    const gemma_cfg *c = &m->cfg;
    memset(info, 0, sizeof *info);
    snprintf(info->architecture, sizeof info->architecture, "%s", c->arch);
    info->n_layers = c->n_layers; info->d_model = c->d; info->n_heads = c->n_heads;
    info->n_kv_heads = c->n_kv;
    info->head_dim = c->hd; info->d_ff = c->d_ff; info->vocab_size = c->vocab;
    info->sliding_window = c->window;
    info->max_position_embeddings = c->max_pos;
    for (int l = 0; l < c->n_layers; l++) info->n_global_layers += c->is_global[l];
    info->query_pre_attn_scalar = c->qpas;
    info->rope_theta_local = c->theta[0]; info->rope_theta_global = c->theta[1];
    info->rope_factor_global = c->factor[1];
    info->rms_norm_eps = c->eps; info->embed_scale = m->embed_scale;
    info->final_logit_softcap = c->final_softcap;
    info->tied_embeddings = c->tie; info->has_final_norm = m->final_norm != NULL;
    info->bos_id = c->bos; info->n_eos = c->n_eos;
    memcpy(info->eos_ids, c->eos, sizeof c->eos);
    info->dtype = m->layer[0].q.dt; info->n_params = m->n_params;
    info->weight_bytes = m->weight_bytes;
    info->quant_bytes = m->quant_bytes;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < W_PER_LAYER; k++) {
            const wmat *w = layer_mat((layer_w *)(uintptr_t)&m->layer[l], k);
            if (w) info->read_bytes += mat_bytes(w->dt, w->rows, w->cols);
        }
    info->read_bytes += mat_bytes(m->head.dt, m->head.rows, m->head.cols);
    info->n_files = m->st->n_files;
}

const nla_tokenizer *nla_model_tokenizer(const nla_model *m) { return m ? m->tok : NULL; }

int nla_model_layer_is_global(const nla_model *m, int layer) {
    if (!m || layer < 0 || layer >= m->cfg.n_layers) return -1;
    return m->cfg.is_global[layer];
}

nla_status nla_model_close(nla_model *m) {
    if (!m) return NLA_OK;
    if (ATOMIC_LOAD(&m->live_sessions) > 0) return NLA_ERR_BUSY;
    nla_st_close(m->st);
    nla_tokenizer_close(m->own_tok);
    sidecar_free(m->nla);
    NLA_FREE(m->qmem);
    NLA_FREE((void *)(uintptr_t)m->src);
    NLA_FREE(m->layer);
    NLA_FREE(m->gains);
    NLA_FREE(m->inv_freq);
    NLA_FREE(m->dir);
    NLA_FREE(m);
    return NLA_OK;
}

nla_status nla_model_open(const char *path, const nla_model_params *params, nla_model **out,
                          char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    nla_model_params p;
    memset(&p, 0, sizeof p);
    if (params) p = *params;
    e.msg[0] = 0;
    if (!out) return NLA_ERR_ARG;
    *out = NULL;
    if (!path) {
        copy_err(errbuf_out, errbuf_size, "path is NULL");
        return NLA_ERR_ARG;
    }
    if ((unsigned)p.quant > NLA_QUANT_Q4_0) {
        copy_err(errbuf_out, errbuf_size, "nla_model_params.quant is not an nla_quant value");
        return NLA_ERR_ARG;
    }
    if ((unsigned)p.embed_scale > NLA_EMBED_SCALE_EXACT) {
        copy_err(errbuf_out, errbuf_size,
                 "nla_model_params.embed_scale is not an nla_embed_scale value");
        return NLA_ERR_ARG;
    }
    nla_model *m = (nla_model *)NLA_CALLOC(1, sizeof *m);
    nla_status rc = NLA_OK;
    if (!m) { copy_err(errbuf_out, errbuf_size, "out of memory"); return NLA_ERR_NOMEM; }
    /* the folder holding config.json: path itself, or the folder of the file named */
    if (!is_dir(path) && !file_exists(path)) {
        snprintf(e.msg, sizeof e.msg, "%s: no such file or folder", path);
        copy_err(errbuf_out, errbuf_size, e.msg);
        NLA_FREE(m);
        return NLA_ERR_IO;
    }
    m->dir = is_dir(path) ? xstrndup(path, strlen(path)) : dir_of(path);
    if (!m->dir) rc = fail(&e, NLA_ERR_NOMEM, "out of memory");
    m->no_mmap = p.no_mmap;
    if (!rc) rc = cfg_parse(m->dir, &m->cfg, &e);
    if (!rc) rc = st_open(path, p.no_mmap, &m->st, &e);
    if (!rc) rc = bind_model(m, &e);
    if (!rc && p.quant) {
#ifdef NLA_NO_MMAP
        const int mapped = 0;
#else
        const int mapped = !p.no_mmap;
#endif
        rc = quantize_model(m, p.quant == NLA_QUANT_Q8_0 ? NLA_DTYPE_Q8_0 : NLA_DTYPE_Q4_0, mapped,
                            &e);
    }
    if (!rc) {
        const gemma_cfg *c = &m->cfg;
        float s = (float)sqrt((double)c->d);
        nla_dtype dt = m->embed.dt;
        if (p.embed_scale == NLA_EMBED_SCALE_BF16 ||
            (p.embed_scale == NLA_EMBED_SCALE_STORED && dt == NLA_DTYPE_BF16))
            s = bf16_to_f32(f32_to_bf16(s));
        else if (p.embed_scale == NLA_EMBED_SCALE_STORED && dt == NLA_DTYPE_F16)
            s = f16_to_f32(f32_to_f16(s));
        m->embed_scale = s;
        /* HF: inv_freq[i] = 1 / theta^(2i/hd) in float32, divided by the linear factor */
        int h2 = c->hd / 2;
        if (!(m->inv_freq = (float *)xmalloc(2 * (size_t)h2, sizeof(float))))
            rc = fail(&e, NLA_ERR_NOMEM, "out of memory");
        for (int t = 0; t < 2 && !rc; t++)
            for (int i = 0; i < h2; i++)
                m->inv_freq[t * h2 + i] =
                    (1.0f / powf(c->theta[t], (float)(2 * i) / (float)c->hd)) / c->factor[t];
    }
    if (!rc && p.shared_tokenizer) m->tok = p.shared_tokenizer;
    else if (!rc) { /* the tokenizer named in params, else the folder's, if any */
        char *tp = p.tokenizer ? xstrndup(p.tokenizer, strlen(p.tokenizer))
                               : path_join(m->dir, "tokenizer.json");
        if (!tp) rc = fail(&e, NLA_ERR_NOMEM, "out of memory");
        else if (p.tokenizer || file_exists(tp))
            rc = nla_tokenizer_open(tp, &m->own_tok, e.msg, sizeof e.msg);
        m->tok = m->own_tok;
        NLA_FREE(tp);
    }
    if (!rc) rc = sidecar_load(m, &e);
    if (rc) {
        copy_err(errbuf_out, errbuf_size, e.msg);
        nla_model_close(m);
        return rc;
    }
    *out = m;
    copy_err(errbuf_out, errbuf_size, "");
    return NLA_OK;
}

nla_status nla_embed_tokens(const nla_model *m, const int32_t *ids, int n, float *out) {
    if (!m || (!ids && n) || (!out && n) || n < 0) return NLA_ERR_ARG;
    const int h = m->cfg.d;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab) return NLA_ERR_RANGE;
        float *row = out + (size_t)i * h;
        wmat_row(&m->embed, ids[i], row);
        for (int k = 0; k < h; k++) row[k] *= m->embed_scale;
    }
    return NLA_OK;
}

/* ==== 9 Session: KV cache and scratch =================================== */

/* A session owns everything a forward pass writes: the KV cache and the
   activations. Global layers keep n_ctx positions; sliding-window layers
   keep a ring of min(n_ctx, W + n_batch - 1) positions (position j in slot
   j % cap), which is exactly enough for a chunk of n_batch queries whose
   first still needs the W - 1 keys before it. All memory is allocated here. */

#define NLA_DEFAULT_CTX 4096
#define NLA_DEFAULT_BATCH 256

typedef struct {
    float logit; /* logit / temperature, then its softmax weight */
    int32_t id;
} smp_cand;

#define SMP_CHUNK 16 /* weights per partial sum of a sampled draw (section 12) */

struct nla_session {
    nla_model *m;
    int n_ctx, n_batch, nt, n_seq;
    int *past;            /* [n_seq] positions each sequence holds in the cache */
    int *hi;              /* [n_seq] highest position written since the reset, or -1 */
    int kv_layers;        /* layers whose cache holds all past positions */
    const void *prefix;   /* names what sequence 0's cache starts with, for the caller
                             that put it there and wants it again (section 13: the AV
                             prompt); NULL after every reset, rewind and forward */
    int *cap;             /* [L] ring capacity per layer */
    float **kc, **vc;     /* [L] -> [n_seq, KV, cap, hd] keys (normed, rotated) and values */
    float *kv;            /* the block that holds every layer's kc and vc (64 bytes to spare) */
    int *pos, *seq;       /* [B] position and sequence of each row of the chunk */
    int *tile;            /* [B + 1] first row of each attention tile of the chunk, then B */
    int *next;            /* [n_seq] next position of each sequence in a batch */
    /* activations for one chunk of B = n_batch rows, each array on a cache
       line of its own block act: a matmul's outputs, 64 bytes per group
       row, then never straddle two lines (with the KV block aligned too, 1B
       Q4_0 prefill in AMX tiles 1.23-1.27x faster, Intel Xeon, 1 thread) */
    float *act;           /* the block (64 bytes to spare) */
    float *x;             /* [B, h] residual stream */
    float *xb;            /* [B, max(h, H*hd)] normed input / attention output */
    float *y;             /* [B, h] block branch output */
    float *q, *k, *v;     /* [B, H*hd], [B, KV*hd], [B, KV*hd] */
    float *g, *u;         /* [B, I] MLP gate and up */
    float *cs;            /* [B, 2, hd] cos/sin for local and global RoPE */
    mm_scratch mm;        /* converted weight rows, quantized activations, claims */
    float *sc;            /* [nt, scores_per_thread] attention scores */
    float *logits;        /* [n_seq, V] the last logits */
    int ns;               /* sequences that sample at once: min(nt, n_seq) */
    smp_cand *cand;       /* [ns, 2 V] each one's sampling candidates and their sort's */
    double *part;         /* [ns, V / SMP_CHUNK + 1] and its weights' sums */
    uint64_t rng;
    errbuf err;
};

static void session_free_bufs(nla_session *s) {
    NLA_FREE(s->kv); NLA_FREE(s->kc); NLA_FREE(s->vc);
    NLA_FREE(s->cap); NLA_FREE(s->past); NLA_FREE(s->hi);
    NLA_FREE(s->pos); NLA_FREE(s->seq); NLA_FREE(s->tile); NLA_FREE(s->next);
    NLA_FREE(s->act); mm_scratch_free(&s->mm); NLA_FREE(s->sc);
    NLA_FREE(s->cand); NLA_FREE(s->part);
}

void nla_session_free(nla_session *s) {
    if (!s) return;
    session_free_bufs(s);
    ATOMIC_ADD(&s->m->live_sessions, -1);
    NLA_FREE(s);
}

/* splitmix64 scrambles any seed (0 included) into a non-zero xorshift state */
static uint64_t rng_seed(uint64_t seed) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 1;
}

void nla_session_seed(nla_session *s, uint64_t seed) {
    if (s) s->rng = rng_seed(seed);
}

void nla_session_reset(nla_session *s) {
    if (!s) return;
    for (int q = 0; q < s->n_seq; q++) {
        s->past[q] = 0;
        s->hi[q] = -1;
    }
    s->prefix = NULL;
    s->kv_layers = s->m->cfg.n_layers;
}

/* Drops sequence q's cached positions >= n, keeping the rest. A sliding
   layer's ring still holds position p iff p > hi - cap, and the next query
   (at n) needs p >= max(0, n - W + 1), so the cut is possible iff hi - cap
   is below that on every layer. Returns 1 if cut, 0 if not possible
   (nothing changes). */
static int session_truncate(nla_session *s, int q, int n) {
    const gemma_cfg *c = &s->m->cfg;
    /* oldest key the next query sees */
    const int lo = n - c->window + 1 > 0 ? n - c->window + 1 : 0;
    if (n < 0 || n > s->past[q]) return 0;
    for (int l = 0; l < c->n_layers && n > 0; l++) /* (position 0 needs no keys) */
        if (!c->is_global[l] && s->hi[q] - s->cap[l] >= lo) return 0;
    s->past[q] = n;
    return 1;
}

/* Makes sequence dst a copy of sequence src (its cache rows and length). */
static void session_copy_seq(nla_session *s, int src, int dst) {
    const size_t KV = (size_t)s->m->cfg.n_kv, hd = (size_t)s->m->cfg.hd;
    for (int l = 0; l < s->m->cfg.n_layers; l++) {
        const size_t cap = (size_t)s->cap[l],
                     used = (size_t)(s->hi[src] + 1) < cap ? (size_t)(s->hi[src] + 1) : cap;
        for (size_t hh = 0; hh < KV; hh++) { /* the rows in use of each KV head */
            const size_t to = ((size_t)dst * KV + hh) * cap * hd,
                         from = ((size_t)src * KV + hh) * cap * hd;
            memcpy(s->kc[l] + to, s->kc[l] + from, used * hd * sizeof(float));
            memcpy(s->vc[l] + to, s->vc[l] + from, used * hd * sizeof(float));
        }
    }
    s->past[dst] = s->past[src];
    s->hi[dst] = s->hi[src];
}

int nla_session_n_past(const nla_session *s) { return s ? s->past[0] : 0; }

nla_status nla_session_rewind(nla_session *s, int n) {
    if (!s) return NLA_ERR_ARG;
    if (n < 0 || n > s->past[0])
        return fail(&s->err, NLA_ERR_RANGE,
                    "nla_session_rewind: %d is not a position of the cache (0..%d)", n, s->past[0]);
    if (!session_truncate(s, 0, n))
        return fail(&s->err, NLA_ERR_RANGE,
                    "nla_session_rewind: cannot go back to %d of %d positions "
                    "(the sliding-window ring no longer holds the keys before it)",
                    n, s->past[0]);
    s->prefix = NULL;
    return NLA_OK;
}

const char *nla_session_errmsg(const nla_session *s) { return s ? s->err.msg : "session is NULL"; }

/* Floats of attention scratch per thread: the scores of the query heads
   that share a KV head, for a tile of ATT_ROWS rows, over n_ctx keys, and
   their sums (attend). */
static size_t scores_per_thread(const gemma_cfg *c, int n_ctx) {
    return (size_t)(c->n_heads / c->n_kv) * ATT_ROWS * ((size_t)n_ctx + 1);
}

nla_status nla_session_new(const nla_model *model, const nla_session_params *params,
                           nla_session **out) {
    nla_session_params p;
    memset(&p, 0, sizeof p);
    if (params) p = *params;
    if (!out) return NLA_ERR_ARG;
    *out = NULL;
    if (!model || p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0 || p.n_threads > 1024 ||
        p.n_seq < 0 || p.n_seq > 256)
        return NLA_ERR_ARG;
    nla_model *m = (nla_model *)(uintptr_t)model; /* only live_sessions is written */
    const gemma_cfg *c = &m->cfg;
    nla_session *s = (nla_session *)NLA_CALLOC(1, sizeof *s);
    if (!s) return NLA_ERR_NOMEM;
    s->m = m;
    ATOMIC_ADD(&m->live_sessions, 1);
    s->n_ctx = p.n_ctx ? p.n_ctx : (c->max_pos < NLA_DEFAULT_CTX ? c->max_pos : NLA_DEFAULT_CTX);
    if (s->n_ctx > c->max_pos) s->n_ctx = c->max_pos;
    s->n_seq = p.n_seq ? p.n_seq : 1;
    s->n_batch = p.n_batch ? p.n_batch : NLA_DEFAULT_BATCH;
    if ((int64_t)s->n_batch > (int64_t)s->n_ctx * s->n_seq) s->n_batch = s->n_ctx * s->n_seq;
#ifdef _OPENMP
    s->nt = p.n_threads ? p.n_threads : omp_get_max_threads();
#else
    s->nt = 1;
#endif
    s->ns = s->nt < s->n_seq ? s->nt : s->n_seq;
    nla_session_seed(s, p.seed);
    if (!(s->past = (int *)xcalloc((size_t)s->n_seq, sizeof(int))) ||
        !(s->hi = (int *)xcalloc((size_t)s->n_seq, sizeof(int))) ||
        !(s->next = (int *)xcalloc((size_t)s->n_seq, sizeof(int)))) {
        nla_session_free(s);
        return NLA_ERR_NOMEM;
    }
    nla_session_reset(s);
    const size_t B = (size_t)s->n_batch, h = (size_t)c->d, qw = (size_t)c->n_heads * c->hd,
                 kvw = (size_t)c->n_kv * c->hd, I = (size_t)c->d_ff, V = (size_t)c->vocab;
    size_t maxcols = h > qw ? h : qw;
    if (I > maxcols) maxcols = I;
    int ok = (s->cap = (int *)xcalloc((size_t)c->n_layers, sizeof(int))) &&
             (s->kc = (float **)xcalloc((size_t)c->n_layers, sizeof(float *))) &&
             (s->vc = (float **)xcalloc((size_t)c->n_layers, sizeof(float *)));
    /* the caches, one block for all layers, in huge pages where the system
       gives them: a decoding row reads each head's keys and values as a run
       of cap hd floats, which in 4 KB pages streams at a fraction of the
       memory's speed (12B at 2 threads, 300 cached positions, AMD Zen 5: a
       token's attention 18-29 ms in 4 KB pages, 12 ms in 2 MB pages, 8 ms
       with the keys also asked for ahead). Pages are taken as rows are first
       written. */
    size_t kv_floats = 0; /* sum over layers of 2 n_seq cap kvw, refused where it overflows */
    for (int l = 0; ok && l < c->n_layers; l++) {
        int cap = s->n_ctx;
        if (!c->is_global[l] && (int64_t)c->window + s->n_batch - 1 < cap)
            cap = c->window + s->n_batch - 1;
        s->cap[l] = cap;
        const size_t rows = (size_t)s->n_seq * (size_t)cap;
        ok = rows <= SIZE_MAX / sizeof(float) / 2 / kvw &&
             2 * rows * kvw <= SIZE_MAX / sizeof(float) - kv_floats;
        if (ok) kv_floats += 2 * rows * kvw;
    }
    ok = ok && kv_floats < SIZE_MAX / sizeof(float) - 16 &&
         (s->kv = (float *)xmalloc(kv_floats + 16, sizeof(float)));
    /* layer l's keys, then its values, then layer l + 1's, from a cache line on */
    float *next_kv = ok ? (float *)align64(s->kv) : NULL;
    for (int l = 0; ok && l < c->n_layers; l++) {
        const size_t per = (size_t)s->n_seq * (size_t)s->cap[l] * kvw;
        s->kc[l] = next_kv;
        s->vc[l] = next_kv + per;
        next_kv += 2 * per;
    }
    if (ok) advise_huge(s->kv, kv_floats * sizeof(float), 0);
    float **arr[10] = {&s->x, &s->xb, &s->y, &s->q, &s->k, &s->v, &s->g, &s->u, &s->cs,
                       &s->logits};
    const size_t len[10] = {B * h, B * (h > qw ? h : qw), B * h, B * qw, B * kvw, B * kvw,
                            B * I, B * I, B * 2 * (size_t)c->hd, V * (size_t)s->n_seq};
    size_t act = 16; /* floats, each array rounded up to 16 (64 bytes) */
    for (int i = 0; i < 10; i++) {
        ok = ok && len[i] < SIZE_MAX / 8 - act;
        act += ok ? (len[i] + 15) / 16 * 16 : 0;
    }
    ok = ok && (s->act = (float *)xmalloc(act, sizeof(float)));
    float *next_act = ok ? (float *)align64(s->act) : NULL;
    for (int i = 0; ok && i < 10; i++) {
        *arr[i] = next_act;
        next_act += (len[i] + 15) / 16 * 16;
    }
    ok = ok && mm_scratch_init(&s->mm, s->nt, B, maxcols) &&
        (s->sc = (float *)xmalloc((size_t)s->nt * scores_per_thread(c, s->n_ctx), sizeof(float))) &&
        (s->cand = (smp_cand *)xmalloc((size_t)s->ns * 2 * V, sizeof(smp_cand))) &&
        (s->part = (double *)xmalloc((size_t)s->ns * (V / SMP_CHUNK + 1), sizeof(double))) &&
        (s->pos = (int *)xmalloc(B, sizeof(int))) && (s->seq = (int *)xmalloc(B, sizeof(int))) &&
        (s->tile = (int *)xmalloc(B + 1, sizeof(int)));
    if (!ok) {
        nla_session_free(s);
        return NLA_ERR_NOMEM;
    }
    *out = s;
    return NLA_OK;
}

/* ==== 10 Forward pass =================================================== */

/* One Gemma 3 decoder block on a chunk of n rows at positions pos0.. (HF
   Gemma3DecoderLayer):
     a = RMSNorm_in(x); q,k,v = a Wq^T, a Wk^T, a Wv^T; q,k per head
     RMSNorm'd then RoPE'd (local or global table); k,v appended to the cache;
     o = softmax(q k^T / sqrt(query_pre_attn_scalar)) v over the visible keys
     (causal; on sliding layers only q - k < W); x += RMSNorm_post_attn(o Wo^T)
     b = RMSNorm_pre_ffw(x); x += RMSNorm_post_ffw((gelu(b Wg^T) * b Wu^T) Wd^T) */
static void block_forward(nla_session *s, int l, int n) {
    const nla_model *m = s->m;
    const gemma_cfg *c = &m->cfg;
    const layer_w *w = &m->layer[l];
    const int h = c->d, hd = c->hd, H = c->n_heads, KV = c->n_kv, qw = H * hd, kvw = KV * hd;
    const int glob = c->is_global[l], cap = s->cap[l];
    const float scale = (float)(1.0 / sqrt((double)c->qpas));

    /* the rows' own steps (norms, RoPE, the cache) run in parallel over
       rows when there are several; the GELU runs in the gate/up loop */
    PARALLEL_FOR(s->nt, n > 1)
    for (int t = 0; t < n; t++)
        rmsnorm(s->xb + (size_t)t * h, s->x + (size_t)t * h, w->in_norm, h, c->eps);
    float *const qkv[3] = {s->q, s->k, s->v}, *const gu[2] = {s->g, s->u};
    const wmat *const w_qkv[3] = {&w->q, &w->k, &w->v}, *const w_gu[2] = {&w->gate, &w->up};
    matmuls(qkv, s->xb, n, w_qkv, 3, 0, &s->mm);
    PARALLEL_FOR(s->nt, n > 1) /* cap >= n: a chunk's rows have their own ring slots */
    for (int t = 0; t < n; t++) {
        const float *cs = s->cs + ((size_t)t * 2 + glob) * hd;
        for (int hh = 0; hh < H; hh++) {
            float *q = s->q + (size_t)t * qw + (size_t)hh * hd;
            rmsnorm(q, q, w->q_norm, hd, c->eps);
            rope(q, cs, hd);
        }
        for (int hh = 0; hh < KV; hh++) {
            float *k = s->k + (size_t)t * kvw + (size_t)hh * hd;
            rmsnorm(k, k, w->k_norm, hd, c->eps);
            rope(k, cs, hd);
            /* the head's key and value into its ring slot, in the row's sequence */
            const size_t at = (((size_t)s->seq[t] * KV + hh) * cap + (size_t)(s->pos[t] % cap)) *
                              (size_t)hd;
            memcpy(s->kc[l] + at, k, (size_t)hd * sizeof(float));
            memcpy(s->vc[l] + at, s->v + (k - s->k), (size_t)hd * sizeof(float));
        }
    }
    /* attention: every (row, KV head) pair is independent, and with several
       rows one task serves the G query heads that share a KV head for a tile
       of up to ATT_ROWS rows of one sequence, which share the keys they
       read; xb receives [n, H*hd]. One row alone takes the largest G that
       still leaves a task per thread (12B at 2 threads: the 2 heads of a KV
       head in one task, which reads the keys once instead of twice: 33-86 ms
       -> 18-29 ms per token at 300 cached positions; 1B: its 4 heads in 2
       tasks). Later rows see more keys, so the tasks are dealt out in turn. */
    int G = H / KV;
    while (n == 1 && G > 1 && (H / G < s->nt || H / KV % G)) G--;
    const int tasks = H / G;
    int ntile = 0; /* tile i: rows tile[i] .. tile[i+1]-1 */
    for (int t = 0; t < n; t++)
        if (!t || s->seq[t] != s->seq[t - 1] || t - s->tile[ntile - 1] == ATT_ROWS)
            s->tile[ntile++] = t;
    s->tile[ntile] = n;
    PARALLEL_FOR_CYCLIC(s->nt)
    for (int th = 0; th < ntile * tasks; th++) {
        const int t = s->tile[th / tasks], R = s->tile[th / tasks + 1] - t, h0 = th % tasks * G;
        int lo[ATT_ROWS], p[ATT_ROWS];
        for (int r = 0; r < R; r++) {
            p[r] = s->pos[t + r];
            lo[r] = glob || p[r] - c->window + 1 < 0 ? 0 : p[r] - c->window + 1;
        }
        const size_t base = ((size_t)s->seq[t] * KV + (size_t)(h0 / (H / KV))) * cap * hd,
                     at = (size_t)t * qw + (size_t)h0 * hd;
        attend(s->xb + at, s->q + at, (size_t)qw, R, lo, p, G, s->kc[l] + base, s->vc[l] + base,
               cap, hd, scale, c->attn_softcap,
               s->sc + (size_t)thread_id() * scores_per_thread(c, s->n_ctx));
    }
    matmul(s->y, s->xb, n, &w->o, &s->mm);
    PARALLEL_FOR(s->nt, n > 1)
    for (int t = 0; t < n; t++) {
        float *x = s->x + (size_t)t * h, *y = s->y + (size_t)t * h;
        rmsnorm(y, y, w->post_attn, h, c->eps);
        for (int i = 0; i < h; i++) x[i] += y[i];
        rmsnorm(s->xb + (size_t)t * h, x, w->pre_ffw, h, c->eps);
    }
    matmuls(gu, s->xb, n, w_gu, 2, 1, &s->mm); /* g = gelu(g) * u */
    matmul(s->y, s->g, n, &w->down, &s->mm);
    PARALLEL_FOR(s->nt, n > 1)
    for (int t = 0; t < n; t++) {
        float *x = s->x + (size_t)t * h, *y = s->y + (size_t)t * h;
        rmsnorm(y, y, w->post_ffw, h, c->eps);
        for (int i = 0; i < h; i++) x[i] += y[i];
    }
}

/* RoPE tables for the rows of a chunk: cos and sin of position * inv_freq,
   the angle computed in float32 as HF does. */
static void rope_tables(nla_session *s, int n) {
    const int hd = s->m->cfg.hd, h2 = hd / 2;
    for (int t = 0; t < n; t++)
        for (int g = 0; g < 2; g++) {
            float *cs = s->cs + ((size_t)t * 2 + g) * hd;
            for (int i = 0; i < h2; i++) {
                float a = (float)s->pos[t] * s->m->inv_freq[g * h2 + i];
                cs[i] = cosf(a);
                cs[h2 + i] = sinf(a);
            }
        }
}

/* Residual rows and logits for chunk rows [r0, r0+n) that the batch
   selects (selected rows are increasing, so they form one run of the
   output). */
static void chunk_outputs(nla_session *s, const nla_batch *b, int r0, int n, int *next_sel) {
    const nla_model *m = s->m;
    const int h = m->cfg.d, V = m->cfg.vocab;
    int first = *next_sel, cnt = 0;
    for (;;) {
        int want = *next_sel;
        int row = b->all_logits   ? want
                  : b->logit_rows ? (want < b->n_logit_rows ? b->logit_rows[want] : INT_MAX)
                                  : (want == 0 ? b->n_tokens - 1 : INT_MAX);
        if (b->all_logits && want >= b->n_tokens) row = INT_MAX;
        if (row >= r0 + n) break;
        const float *x = s->x + (size_t)(row - r0) * h;
        if (b->residual) memcpy(b->residual + (size_t)want * h, x, (size_t)h * sizeof(float));
        if (b->logits) rmsnorm(s->xb + (size_t)cnt * h, x, m->final_norm, h, m->cfg.eps);
        cnt++;
        (*next_sel)++;
    }
    if (!cnt || !b->logits) return;
    float *out = b->logits + (size_t)first * V;
    matmul(out, s->xb, cnt, &m->head, &s->mm);
    if (m->cfg.final_softcap > 0) {
        const float cap = m->cfg.final_softcap;
        for (size_t i = 0; i < (size_t)cnt * V; i++) out[i] = cap * tanhf(out[i] / cap);
    }
}

nla_status nla_forward(nla_session *s, const nla_batch *b) {
    if (!s) return NLA_ERR_ARG;
    const nla_model *m = s->m;
    const gemma_cfg *c = &m->cfg;
    const int h = c->d, T = b ? b->n_tokens : 0;
    if (!b) return fail(&s->err, NLA_ERR_ARG, "nla_forward: batch is NULL");
    const int nb = b->n_blocks ? b->n_blocks : c->n_layers;
    const int want_logits = b->logits != NULL;
    if (T < 1) return fail(&s->err, NLA_ERR_ARG, "nla_forward: n_tokens must be at least 1");
    if (!b->ids && !b->embeds)
        return fail(&s->err, NLA_ERR_ARG, "nla_forward: neither ids nor embeds given");
    if (nb < 1 || nb > c->n_layers)
        return fail(&s->err, NLA_ERR_ARG, "nla_forward: n_blocks %d is outside 1..%d", b->n_blocks,
                    c->n_layers);
    /* each row's sequence and position: after what its sequence holds, in order
       (more rows than all the sequences hold would overflow the counts) */
    if ((int64_t)T > (int64_t)s->n_seq * s->n_ctx)
        return fail(&s->err, NLA_ERR_RANGE,
                    "nla_forward: %d new tokens exceed the session's %d sequence(s) of %d", T,
                    s->n_seq, s->n_ctx);
    int cached = 0;
    for (int q = 0; q < s->n_seq; q++) {
        s->next[q] = s->past[q];
        cached |= s->past[q] > 0;
    }
    for (int i = 0; i < T; i++) {
        const int q = b->seq ? b->seq[i] : 0;
        if (q < 0 || q >= s->n_seq)
            return fail(&s->err, NLA_ERR_ARG,
                        "nla_forward: row %d names sequence %d; the session has %d", i, q,
                        s->n_seq);
        s->next[q]++;
    }
    for (int q = 0; q < s->n_seq; q++)
        if (s->next[q] > s->n_ctx)
            return fail(&s->err, NLA_ERR_RANGE,
                        "nla_forward: %d cached + %d new tokens of sequence %d "
                        "exceed the session's context of %d",
                        s->past[q], s->next[q] - s->past[q], q, s->n_ctx);
    if (b->seq && b->hook)
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_forward: rows of several sequences run without a hook");
    if (cached && nb > s->kv_layers)
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_forward: the cache holds only %d blocks (an earlier call stopped early); "
                    "reset the session",
                    s->kv_layers);
    if (want_logits && nb < c->n_layers)
        return fail(&s->err, NLA_ERR_ARG, "nla_forward: logits need all %d blocks", c->n_layers);
    if (want_logits && !m->final_norm)
        return fail(&s->err, NLA_ERR_UNSUPPORTED,
                    "nla_forward: this model has no final norm (norm.weight), so no logits");
    if (b->logit_rows) {
        if (b->n_logit_rows < 1)
            return fail(&s->err, NLA_ERR_ARG, "nla_forward: n_logit_rows must be at least 1");
        for (int i = 0; i < b->n_logit_rows; i++)
            if (b->logit_rows[i] < 0 || b->logit_rows[i] >= T ||
                (i && b->logit_rows[i] <= b->logit_rows[i - 1]))
                return fail(&s->err, NLA_ERR_ARG,
                            "nla_forward: logit_rows must be increasing rows in 0..%d", T - 1);
    }
    if (!b->embeds)
        for (int i = 0; i < T; i++)
            if (b->ids[i] < 0 || b->ids[i] >= c->vocab)
                return fail(&s->err, NLA_ERR_RANGE,
                            "nla_forward: token id %d at row %d is outside 0..%d", b->ids[i], i,
                            c->vocab - 1);
    const ptrdiff_t bad_in = b->embeds ? first_nonfinite(b->embeds, (size_t)T * h) : -1;
    if (bad_in >= 0)
        return fail(&s->err, NLA_ERR_NONFINITE,
                    "nla_forward: embeds row %td holds a non-finite value (%g at column %td)",
                    bad_in / h, (double)b->embeds[bad_in], bad_in % h);

    int next_sel = 0;
    s->prefix = NULL; /* the cache now holds what the caller put there */
    for (int q = 0; q < s->n_seq; q++) s->next[q] = s->past[q];
    for (int r0 = 0; r0 < T; r0 += s->n_batch) {
        const int n = T - r0 < s->n_batch ? T - r0 : s->n_batch;
        for (int t = 0; t < n; t++) {
            s->seq[t] = b->seq ? b->seq[r0 + t] : 0;
            s->pos[t] = s->next[s->seq[t]]++;
        }
        if (b->embeds) memcpy(s->x, b->embeds + (size_t)r0 * h, (size_t)n * h * sizeof(float));
        else nla_embed_tokens(m, b->ids + r0, n, s->x);
        rope_tables(s, n);
        for (int l = 0; l < nb; l++) {
            block_forward(s, l, n);
            if (b->hook && b->hook(b->hook_user, l, s->pos[0], n, h, s->x)) {
                nla_session_reset(s); /* ring slots of earlier positions may be overwritten */
                return fail(&s->err, NLA_ERR_CANCELLED,
                            "nla_forward: the residual hook stopped the pass at block %d; "
                            "the session was reset",
                            l);
            }
            /* every row of the residual stream after every block: n d
               exponent tests, next to the block's n d (4 d + 3 d_ff) and more
               multiply-adds */
            const ptrdiff_t bad = first_nonfinite(s->x, (size_t)n * h);
            if (bad >= 0) {
                const int t = (int)(bad / h);
                nla_session_reset(s);
                return fail(&s->err, NLA_ERR_NONFINITE,
                            "nla_forward: block %d produced a non-finite value (%g) at position "
                            "%d of sequence %d; the session was reset",
                            l, (double)s->x[bad], s->pos[t], s->seq[t]);
            }
            if (b->hidden)
                for (int t = 0; t < n; t++)
                    memcpy(b->hidden + ((size_t)l * T + r0 + t) * h, s->x + (size_t)t * h,
                           (size_t)h * sizeof(float));
        }
        const int sel0 = next_sel;
        if (want_logits || b->residual) chunk_outputs(s, b, r0, n, &next_sel);
        const ptrdiff_t bad = want_logits ? first_nonfinite(b->logits + (size_t)sel0 * c->vocab,
                                                       (size_t)(next_sel - sel0) * c->vocab) : -1;
        if (bad >= 0) {
            nla_session_reset(s);
            return fail(&s->err, NLA_ERR_NONFINITE,
                        "nla_forward: the logits of output row %td are not finite (%g); the "
                        "session was reset",
                        sel0 + bad / c->vocab, (double)b->logits[(size_t)sel0 * c->vocab + bad]);
        }
    }
    if (!cached || nb < s->kv_layers) s->kv_layers = nb;
    for (int q = 0; q < s->n_seq; q++) {
        s->past[q] = s->next[q];
        if (s->past[q] - 1 > s->hi[q]) s->hi[q] = s->past[q] - 1;
    }
    s->err.msg[0] = 0;
    return NLA_OK;
}

/* ==== 11 Tokenizer: tokenizer.json BPE, added tokens, chat template ===== */

/* Gemma 3's tokenizer.json declares: normalizer Replace(" " -> U+2581), a
   pre-tokenizer that never splits (spaces are gone by then), BPE with byte
   fallback, the post-processor "<bos> $A" and the decoder Replace(U+2581 ->
   " ") + ByteFallback + Fuse. Encoding: (1) added tokens (6,415, all
   unnormalized) are found on the raw text, leftmost-longest, with a byte
   trie; (2) each stretch between them is one BPE word: its characters become
   vocabulary ids (a space is U+2581; a character outside the vocabulary, or
   a byte that is not valid UTF-8, becomes its <0xNN> byte tokens); (3) the
   adjacent pair with the lowest rank in the merge list merges first (ties:
   leftmost), found with a min-heap and a linked list of symbols: O(n log n)
   per word, like HF's Word::merge_all. Priority is the merge-list position,
   never the token id. */

typedef struct {
    uint32_t off, len; /* piece bytes in the arena */
} tok_piece;

typedef struct {
    uint64_t key;          /* (left id << 32 | right id) + 1; 0 = empty slot */
    uint32_t rank, result;
} tok_merge;

typedef struct {
    int32_t child, sibling; /* first child, next sibling (trie node indices) */
    int32_t id;             /* added token ending here, or -1 */
    unsigned char byte;
} tok_trie;

#define TOK_BYTE 1    /* flags: a <0xNN> byte-fallback token */
#define TOK_ADDED 2   /* an added token */

struct nla_tokenizer {
    char *arena;            /* all pieces, back to back */
    tok_piece *piece;       /* [n_ids] */
    unsigned char *flags;   /* [n_ids] TOK_* */
    int n_ids;
    int32_t *hash;          /* piece -> id, open addressing, -1 empty */
    uint32_t hash_mask;
    tok_merge *merge;
    uint32_t merge_mask;
    tok_trie *trie;         /* node 0 is the root */
    int n_trie;
    int32_t byte_id[256];   /* byte -> <0xNN> id */
    int32_t space_id;       /* U+2581 */
    int32_t bos;
};

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finaliser */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int32_t tok_lookup(const nla_tokenizer *t, const char *s, size_t n) {
    for (uint32_t h = (uint32_t)hash_bytes(s, n) & t->hash_mask;; h = (h + 1) & t->hash_mask) {
        int32_t id = t->hash[h];
        if (id < 0) return -1;
        if (t->piece[id].len == n && !memcmp(t->arena + t->piece[id].off, s, n)) return id;
    }
}

/* The merge of (a, b), or NULL. */
static const tok_merge *tok_merge_find(const nla_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    for (uint32_t h = (uint32_t)hash_u64(key) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
        if (t->merge[h].key == key) return &t->merge[h];
        if (!t->merge[h].key) return NULL;
    }
}

void nla_tokenizer_close(nla_tokenizer *t) {
    if (!t) return;
    NLA_FREE(t->arena); NLA_FREE(t->piece); NLA_FREE(t->flags); NLA_FREE(t->hash);
    NLA_FREE(t->merge); NLA_FREE(t->trie);
    NLA_FREE(t);
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t p = 1024;
    while (p < n && p < (1u << 31)) p *= 2;
    return p;
}

/* Adds an added token's bytes to the trie. */
static int tok_trie_add(nla_tokenizer *t, const char *s, size_t n, int32_t id, int *cap) {
    int node = 0;
    for (size_t i = 0; i < n; i++) {
        int c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != (unsigned char)s[i]) c = t->trie[c].sibling;
        if (c < 0) {
            if (t->n_trie == *cap) {
                tok_trie *nt = (tok_trie *)NLA_REALLOC(t->trie, (size_t)*cap * 2 * sizeof *nt);
                if (!nt) return -1;
                t->trie = nt;
                *cap *= 2;
            }
            c = t->n_trie++;
            t->trie[c].child = -1;
            t->trie[c].id = -1;
            t->trie[c].byte = (unsigned char)s[i];
            t->trie[c].sibling = t->trie[node].child;
            t->trie[node].child = c;
        }
        node = c;
    }
    t->trie[node].id = id;
    return 0;
}

/* Checks that a tokenizer.json stage is absent or exactly what Gemma 3 uses;
   anything else would silently tokenize differently. */
static nla_status tok_check_stage(const jdoc *d, int root, const char *key, const char *type,
                                  const char *fn, errbuf *e) {
    int v = json_get(d, root, key);
    if (v < 0 || d->node[v].type == J_NULL) return NLA_OK;
    int ty = json_get(d, v, "type");
    if (ty >= 0 && json_eq(d, ty, type)) return NLA_OK;
    char got[64] = "?";
    if (ty >= 0 && d->node[ty].type == J_STR) json_str(d, ty, got, sizeof got);
    return fail(e, NLA_ERR_UNSUPPORTED, "%s: %s of type '%s' is not supported (Gemma 3 uses %s)",
                fn, key, got, type);
}

/* Registers piece text s (decoded) for id; duplicates keep the first id. */
static nla_status tok_set_piece(nla_tokenizer *t, int32_t id, const jdoc *d, int node,
                                size_t *arena_len, const char *fn, errbuf *e) {
    size_t n = json_str(d, node, NULL, 0);
    if (id < 0 || id >= t->n_ids)
        return fail(e, NLA_ERR_FORMAT, "%s: token id %d out of range", fn, id);
    if (n > 1024)
        return fail(e, NLA_ERR_FORMAT, "%s: a piece of token %d is longer than 1024 bytes", fn, id);
    json_str(d, node, t->arena + *arena_len, n + 1);
    if (t->piece[id].len &&
        (t->piece[id].len != n || memcmp(t->arena + t->piece[id].off, t->arena + *arena_len, n)))
        return fail(e, NLA_ERR_FORMAT, "%s: token id %d is given two different pieces", fn, id);
    t->piece[id].off = (uint32_t)*arena_len;
    t->piece[id].len = (uint32_t)n;
    *arena_len += n;
    if (n == 0) return fail(e, NLA_ERR_FORMAT, "%s: token %d has an empty piece", fn, id);
    return NLA_OK;
}

/* The tokenizer of a parsed tokenizer.json: ids, pieces, added tokens, the
   byte fallback and the merge ranks. */
static nla_status tok_from_json(nla_tokenizer *t, const jdoc *d, const char *fn, errbuf *e) {
    nla_status rc = NLA_OK;
    int model = json_get(d, 0, "model"), vocab = json_get(d, model, "vocab"),
        merges = json_get(d, model, "merges");
    int added = json_get(d, 0, "added_tokens"), v;
    if (model < 0 || d->node[model].type != J_OBJ)
        return fail(e, NLA_ERR_FORMAT, "%s: no \"model\" object", fn);
    if ((v = json_get(d, model, "type")) >= 0 && !json_eq(d, v, "BPE")) {
        return fail(e, NLA_ERR_UNSUPPORTED, "%s: model type is not BPE", fn);
    }
    if (vocab < 0 || d->node[vocab].type != J_OBJ || merges < 0 || d->node[merges].type != J_ARR) {
        return fail(e, NLA_ERR_FORMAT, "%s: model.vocab must be an object and model.merges a list",
                    fn);
    }
    if ((v = json_get(d, model, "byte_fallback")) >= 0 && d->node[v].type != J_TRUE) {
        return fail(e, NLA_ERR_UNSUPPORTED, "%s: BPE without byte_fallback is not supported", fn);
    }
    if ((rc = tok_check_stage(d, 0, "normalizer", "Replace", fn, e)) ||
        (rc = tok_check_stage(d, 0, "pre_tokenizer", "Split", fn, e)))
        return rc;
    if (added >= 0 && d->node[added].type != J_ARR)
        return fail(e, NLA_ERR_FORMAT, "%s: added_tokens is not a list", fn);

    /* ids: the largest in vocab or added_tokens, plus one */
    int64_t max_id = -1;
    size_t arena_cap = 0;
    uint32_t k = (uint32_t)vocab + 1;
    for (uint32_t m = 0; m < d->node[vocab].n; m++, k = d->node[k + 1].end) {
        int id;
        if (!json_int(d, (int)k + 1, &id) || id < 0 || id >= NLA_MAX_VOCAB) {
            return fail(e, NLA_ERR_FORMAT, "%s: vocab values must be token ids in 0..%d", fn,
                        NLA_MAX_VOCAB - 1);
        }
        if (id > max_id) max_id = id;
        arena_cap += json_str(d, (int)k, NULL, 0);
    }
    int n_added = added >= 0 ? (int)d->node[added].n : 0;
    k = (uint32_t)added + 1;
    for (int a = 0; a < n_added; a++, k = d->node[k].end) {
        int id, c = json_get(d, (int)k, "content");
        if (!json_int(d, json_get(d, (int)k, "id"), &id) || id < 0 || id >= NLA_MAX_VOCAB ||
            c < 0 || d->node[c].type != J_STR) {
            return fail(e, NLA_ERR_FORMAT, "%s: added_tokens[%d] needs an id and a content string",
                        fn, a);
        }
        static const char *const flags_false[] = {"lstrip", "rstrip", "single_word", "normalized"};
        for (int f = 0; f < 4; f++)
            if ((v = json_get(d, (int)k, flags_false[f])) >= 0 && d->node[v].type == J_TRUE) {
                return fail(e, NLA_ERR_UNSUPPORTED,
                            "%s: added_tokens[%d] sets %s, which Gemma 3 never does", fn, a,
                            flags_false[f]);
            }
        if (id > max_id) max_id = id;
        arena_cap += json_str(d, c, NULL, 0);
    }
    if (max_id < 0) return fail(e, NLA_ERR_FORMAT, "%s: empty vocabulary", fn);
    t->n_ids = (int)max_id + 1;
    t->hash_mask = pow2_at_least(2 * (uint64_t)t->n_ids) - 1;
    t->merge_mask = pow2_at_least(2 * (uint64_t)d->node[merges].n) - 1;
    int trie_cap = 1024;
    if (!(t->arena = (char *)NLA_MALLOC(arena_cap + 1)) ||
        !(t->piece = (tok_piece *)xcalloc((size_t)t->n_ids, sizeof *t->piece)) ||
        !(t->flags = (unsigned char *)xcalloc((size_t)t->n_ids, 1)) ||
        !(t->hash = (int32_t *)xmalloc((size_t)t->hash_mask + 1, sizeof *t->hash)) ||
        !(t->merge = (tok_merge *)xcalloc((size_t)t->merge_mask + 1, sizeof *t->merge)) ||
        !(t->trie = (tok_trie *)xmalloc((size_t)trie_cap, sizeof *t->trie))) {
        return fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn);
    }
    memset(t->hash, 0xff, ((size_t)t->hash_mask + 1) * sizeof *t->hash);
    t->trie[0].child = t->trie[0].sibling = t->trie[0].id = -1;
    t->n_trie = 1;

    size_t arena_len = 0;
    k = (uint32_t)vocab + 1;
    for (uint32_t m = 0; m < d->node[vocab].n && !rc; m++, k = d->node[k + 1].end) {
        int id;
        json_int(d, (int)k + 1, &id);
        rc = tok_set_piece(t, id, d, (int)k, &arena_len, fn, e);
    }
    k = (uint32_t)added + 1;
    for (int a = 0; a < n_added && !rc; a++, k = d->node[k].end) {
        int id, c = json_get(d, (int)k, "content");
        json_int(d, json_get(d, (int)k, "id"), &id);
        if (!(rc = tok_set_piece(t, id, d, c, &arena_len, fn, e))) {
            t->flags[id] |= TOK_ADDED;
            if (tok_trie_add(t, t->arena + t->piece[id].off, t->piece[id].len, id, &trie_cap))
                rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn);
        }
    }
    /* piece -> id; the first id of a duplicated piece wins */
    for (int32_t id = 0; id < t->n_ids && !rc; id++) {
        const tok_piece *p = &t->piece[id];
        if (!p->len || tok_lookup(t, t->arena + p->off, p->len) >= 0) continue;
        uint32_t h = (uint32_t)hash_bytes(t->arena + p->off, p->len) & t->hash_mask;
        while (t->hash[h] >= 0) h = (h + 1) & t->hash_mask;
        t->hash[h] = id;
    }
    for (int b = 0; b < 256 && !rc; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        if ((t->byte_id[b] = tok_lookup(t, name, 6)) < 0)
            rc = fail(e, NLA_ERR_FORMAT, "%s: no byte-fallback token %s", fn, name);
        else t->flags[t->byte_id[b]] |= TOK_BYTE;
    }
    if (!rc && (t->space_id = tok_lookup(t, "\xe2\x96\x81", 3)) < 0)
        rc = fail(e, NLA_ERR_FORMAT, "%s: no U+2581 token", fn);
    t->bos = rc ? -1 : tok_lookup(t, "<bos>", 5);
    if (!rc && t->bos < 0) rc = fail(e, NLA_ERR_FORMAT, "%s: no <bos> token", fn);
    /* merges: [["a", "b"], ...] or ["a b", ...]; rank = position */
    k = (uint32_t)merges + 1;
    for (uint32_t r = 0; r < d->node[merges].n && !rc; r++, k = d->node[k].end) {
        char buf[2 * 1024 + 2];
        int32_t a = -1, b = -1;
        if (d->node[k].type == J_ARR && d->node[k].n == 2 && d->node[k + 1].type == J_STR &&
            d->node[k + 2].type == J_STR) {
            size_t la = json_str(d, (int)k + 1, buf, sizeof buf),
                   lb = la < sizeof buf ? json_str(d, (int)k + 2, buf + la, sizeof buf - la) : 0;
            if (la + lb < sizeof buf - 1) {
                a = tok_lookup(t, buf, la);
                b = tok_lookup(t, buf + la, lb);
            }
        } else if (d->node[k].type == J_STR) {
            size_t l = json_str(d, (int)k, buf, sizeof buf);
            char *sp = l < sizeof buf - 1 ? (char *)memchr(buf, ' ', l) : NULL;
            if (sp) {
                a = tok_lookup(t, buf, (size_t)(sp - buf));
                b = tok_lookup(t, sp + 1, l - (size_t)(sp - buf) - 1);
            }
        }
        if (a < 0 || b < 0) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: merges[%u] is not a pair of known pieces", fn, r);
            break;
        }
        size_t la = t->piece[a].len, lb = t->piece[b].len;
        memcpy(buf, t->arena + t->piece[a].off, la);
        memcpy(buf + la, t->arena + t->piece[b].off, lb);
        int32_t res = tok_lookup(t, buf, la + lb);
        if (res < 0) {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: merges[%u] makes a piece that is not in the vocabulary", fn, r);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
        uint32_t h = (uint32_t)hash_u64(key) & t->merge_mask;
        while (t->merge[h].key && t->merge[h].key != key) h = (h + 1) & t->merge_mask;
        if (!t->merge[h].key) { /* a repeated pair keeps its first (lowest) rank */
            t->merge[h].key = key;
            t->merge[h].rank = r;
            t->merge[h].result = (uint32_t)res;
        }
    }
    return rc;
}

static nla_status tok_load(nla_tokenizer *t, const char *fn, errbuf *e) {
    char *txt = NULL;
    size_t n;
    jdoc d;
    memset(&d, 0, sizeof d);
    nla_status rc = read_file(fn, &txt, &n, NLA_MAX_TOKENIZER, e);
    if (!rc && !(rc = json_parse(&d, txt, n, e, fn))) rc = tok_from_json(t, &d, fn, e);
    json_free(&d);
    NLA_FREE(txt);
    return rc;
}

nla_status nla_tokenizer_open(const char *path, nla_tokenizer **out, char *errbuf_out,
                              size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    if (!out) return NLA_ERR_ARG;
    *out = NULL;
    if (!path) { copy_err(errbuf_out, errbuf_size, "path is NULL"); return NLA_ERR_ARG; }
    nla_tokenizer *t = (nla_tokenizer *)NLA_CALLOC(1, sizeof *t);
    char *fn = is_dir(path) ? path_join(path, "tokenizer.json") : xstrndup(path, strlen(path));
    nla_status rc = !t || !fn ? fail(&e, NLA_ERR_NOMEM, "out of memory") : tok_load(t, fn, &e);
    NLA_FREE(fn);
    copy_err(errbuf_out, errbuf_size, e.msg);
    if (rc) { nla_tokenizer_close(t); return rc; }
    *out = t;
    return NLA_OK;
}

int nla_tokenizer_n_ids(const nla_tokenizer *t) { return t ? t->n_ids : 0; }

int32_t nla_tokenizer_find(const nla_tokenizer *t, const char *piece) {
    return t && piece ? tok_lookup(t, piece, strlen(piece)) : -1;
}

const char *nla_tokenizer_piece(const nla_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_ids || !t->piece[id].len) return NULL;
    if (len) *len = t->piece[id].len;
    return t->arena + t->piece[id].off;
}

/* BPE scratch for one encode call: symbols in a linked list, a min-heap of
   candidate merges ordered by (rank, position). */
typedef struct {
    uint32_t rank, pos, result;
} tok_cand;

typedef struct {
    int32_t *id, *prev, *next;
    tok_cand *heap;
    int n_heap;
} tok_work;

static int cand_less(const tok_cand *a, const tok_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tok_work *w, const tok_merge *m, int pos) {
    int i = w->n_heap++;
    tok_cand c = {m->rank, (uint32_t)pos, m->result};
    while (i > 0 && cand_less(&c, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = c;
}

static tok_cand heap_pop(tok_work *w) {
    tok_cand top = w->heap[0], last = w->heap[--w->n_heap];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= w->n_heap) break;
        if (c + 1 < w->n_heap && cand_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!cand_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (w->n_heap) w->heap[i] = last;
    return top;
}

/* BPE on one word s[0..n); appends ids through *count (written when < cap). */
static void tok_bpe(const nla_tokenizer *t, tok_work *w, const char *s, size_t n, int32_t *ids,
                    int cap, int *count) {
    int ns = 0;
    for (size_t i = 0; i < n;) {
        int k = utf8_char_len((const unsigned char *)s + i, n - i);
        int32_t id = s[i] == ' ' ? t->space_id : k ? tok_lookup(t, s + i, (size_t)k) : -1;
        if (id >= 0) {
            w->id[ns++] = id;
        } else {
            for (int j = 0; j < (k ? k : 1); j++) w->id[ns++] = t->byte_id[(unsigned char)s[i + j]];
        }
        i += k ? (size_t)k : 1;
    }
    w->n_heap = 0;
    for (int i = 0; i < ns; i++) {
        w->prev[i] = i - 1;
        w->next[i] = i + 1 < ns ? i + 1 : -1;
        const tok_merge *m = i + 1 < ns ? tok_merge_find(t, w->id[i], w->id[i + 1]) : NULL;
        if (m) heap_push(w, m, i);
    }
    while (w->n_heap) {
        tok_cand c = heap_pop(w);
        int p = (int)c.pos, nx = w->next[p];
        if (w->id[p] < 0 || nx < 0) continue;
        const tok_merge *m = tok_merge_find(t, w->id[p], w->id[nx]);
        if (!m || m->result != c.result) continue; /* stale: the pair changed */
        w->id[p] = (int32_t)c.result;
        w->id[nx] = -1;
        w->next[p] = w->next[nx];
        if (w->next[p] >= 0) w->prev[w->next[p]] = p;
        if (w->prev[p] >= 0 && (m = tok_merge_find(t, w->id[w->prev[p]], w->id[p])))
            heap_push(w, m, w->prev[p]);
        if (w->next[p] >= 0 && (m = tok_merge_find(t, w->id[p], w->id[w->next[p]])))
            heap_push(w, m, p);
    }
    for (int i = 0; i < ns; i++)
        if (w->id[i] >= 0) {
            if (*count < cap) ids[*count] = w->id[i];
            (*count)++;
        }
}

/* Longest added token starting at s[0..n): its id and length, or -1. */
static int32_t tok_added_match(const nla_tokenizer *t, const char *s, size_t n, size_t *len) {
    int node = 0;
    int32_t best = -1;
    for (size_t i = 0; i < n; i++) {
        int c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != (unsigned char)s[i]) c = t->trie[c].sibling;
        if (c < 0) break;
        node = c;
        if (t->trie[node].id >= 0) { best = t->trie[node].id; *len = i + 1; }
    }
    return best;
}

nla_status nla_tokenize(const nla_tokenizer *t, const char *text, size_t len, int flags,
                        int32_t *ids, int cap, int *n_ids) {
    if (n_ids) *n_ids = 0;
    if (!t || (!text && len) || !n_ids || cap < 0 || (cap && !ids) || len > (size_t)INT_MAX - 1 ||
        (flags & ~(NLA_TOKENIZE_BOS | NLA_TOKENIZE_NO_SPECIAL)))
        return NLA_ERR_ARG;
    int count = 0;
    if (flags & NLA_TOKENIZE_BOS) {
        if (count < cap) ids[count] = t->bos;
        count++;
    }
    /* scratch sized for the whole text: a word has at most one symbol per byte
       and its heap at most three entries per symbol */
    tok_work w;
    size_t ns = len + 1;
    w.id = (int32_t *)xmalloc(ns, 3 * sizeof(int32_t));
    w.heap = (tok_cand *)xmalloc(ns, 3 * sizeof(tok_cand));
    if (!w.id || !w.heap) { NLA_FREE(w.id); NLA_FREE(w.heap); return NLA_ERR_NOMEM; }
    w.prev = w.id + ns;
    w.next = w.prev + ns;
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        size_t mlen = 0;
        int32_t id =
            (flags & NLA_TOKENIZE_NO_SPECIAL) ? -1 : tok_added_match(t, text + i, len - i, &mlen);
        if (id < 0) { i++; continue; }
        tok_bpe(t, &w, text + start, i - start, ids, cap, &count);
        if (count < cap) ids[count] = id;
        count++;
        i += mlen;
        start = i;
    }
    tok_bpe(t, &w, text + start, len - start, ids, cap, &count);
    NLA_FREE(w.id);
    NLA_FREE(w.heap);
    *n_ids = count;
    return count > cap ? NLA_ERR_BUFFER_TOO_SMALL : NLA_OK;
}

/* Decoded bytes of one id into out (room for the piece length): U+2581 ->
   space, <0xNN> -> the byte. Returns the length, or -1 for an unknown id. */
static int tok_decode_one(const nla_tokenizer *t, int32_t id, char *out) {
    if (id < 0 || id >= t->n_ids || !t->piece[id].len) return -1;
    const char *p = t->arena + t->piece[id].off;
    const size_t n = t->piece[id].len;
    if (t->flags[id] & TOK_BYTE) {
        out[0] = (char)(hexval(p[3]) * 16 + hexval(p[4]));
        return 1;
    }
    int o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 2 < n && !memcmp(p + i, "\xe2\x96\x81", 3)) { out[o++] = ' '; i += 2; }
        else out[o++] = p[i];
    }
    return o;
}

nla_status nla_detokenize(const nla_tokenizer *t, const int32_t *ids, int n, char *out, size_t cap,
                          size_t *len) {
    if (len) *len = 0;
    if (!t || !len || n < 0 || (n && !ids) || (cap && !out)) return NLA_ERR_ARG;
    char buf[1024 + 8];
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        int k = tok_decode_one(t, ids[i], buf);
        if (k < 0) return NLA_ERR_RANGE;
        if (o + (size_t)k < cap) memcpy(out + o, buf, (size_t)k);
        o += (size_t)k;
    }
    *len = o;
    if (o < cap) { out[o] = 0; return NLA_OK; }
    return NLA_ERR_BUFFER_TOO_SMALL;
}

nla_status nla_detokenize_next(const nla_tokenizer *t, nla_detok_state *st, int32_t id, char *out,
                               size_t cap, size_t *len) {
    if (len) *len = 0;
    if (!t || !st || !len || !out || st->n_held < 0 || st->n_held > 3) return NLA_ERR_ARG;
    unsigned char buf[1024 + 8];
    int n = st->n_held;
    memcpy(buf, st->held, (size_t)n);
    if (id >= 0) {
        int k = tok_decode_one(t, id, (char *)buf + n);
        if (k < 0) return NLA_ERR_RANGE;
        n += k;
    }
    /* hold back a trailing lead byte (plus continuations) still short of its
       full length, unless flushing */
    int keep = 0;
    for (int back = 1; id >= 0 && back <= 3 && back <= n; back++) {
        unsigned char c = buf[n - back];
        if ((c & 0xc0) == 0x80) continue;
        int need = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 1;
        if (c < 0xc2 || c > 0xf4) need = 1;
        if (need > back) keep = back;
        break;
    }
    if ((size_t)(n - keep) + 1 > cap) {
        *len = (size_t)(n - keep);
        return NLA_ERR_BUFFER_TOO_SMALL;
    }
    memcpy(out, buf, (size_t)(n - keep));
    out[n - keep] = 0;
    memcpy(st->held, buf + n - keep, (size_t)keep);
    st->n_held = keep;
    *len = (size_t)(n - keep);
    return NLA_OK;
}

/* Python's str.isspace() for one code point, as Jinja's trim uses it. */
static int py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Code point of the valid UTF-8 character at s (k bytes). */
static uint32_t utf8_cp(const unsigned char *s, int k) {
    uint32_t c = k == 1 ? s[0] : k == 2 ? s[0] & 0x1fu : k == 3 ? s[0] & 0x0fu : s[0] & 0x07u;
    for (int i = 1; i < k; i++) c = c << 6 | (s[i] & 0x3fu);
    return c;
}

/* [*b, *e) trimmed of leading and trailing whitespace. */
static void py_trim(const char **b, const char **e) {
    while (*b < *e) {
        int k = utf8_char_len((const unsigned char *)*b, (size_t)(*e - *b));
        if (!k || !py_space(utf8_cp((const unsigned char *)*b, k))) break;
        *b += k;
    }
    while (*e > *b) {
        const char *p = *e - 1;
        while (p > *b && ((unsigned char)*p & 0xc0) == 0x80 && *e - p < 4) p--;
        int k = utf8_char_len((const unsigned char *)p, (size_t)(*e - p));
        if (k != *e - p || !py_space(utf8_cp((const unsigned char *)p, k))) break;
        *e = p;
    }
}

/* Renders messages given as (role, content) spans: the shared core of
   nla_chat_render and nla_chat_render_json. With parts non-NULL (room for
   4 n + 2) it also records where each part of the text starts, so that nla
   eval can label every token with its chat role as the blog study did. */
typedef struct {
    const char *role, *content;
    size_t role_len, content_len;
} chat_span;

/* what a part of a rendered chat is */
enum { CHAT_BOS, CHAT_MARKER, CHAT_USER, CHAT_ASST, CHAT_EOT };

typedef struct {
    size_t off; /* the part starts at this byte; it ends where the next starts */
    int kind;   /* CHAT_* */
} chat_part;

static void chat_mark(chat_part *parts, int *n_parts, size_t off, int kind) {
    if (!parts) return;
    parts[*n_parts].off = off;
    parts[(*n_parts)++].kind = kind;
}

static nla_status chat_render(const chat_span *m, int n, int add_gen, char *out, size_t cap,
                              size_t *len, chat_part *parts, int *n_parts, errbuf *e) {
    sbuf s = {out, cap, 0};
    int first = n > 0 && m[0].role_len == 6 && !memcmp(m[0].role, "system", 6), np = 0;
    chat_mark(parts, &np, 0, CHAT_BOS);
    sb_str(&s, "<bos>");
    for (int i = first; i < n; i++) {
        const int k = i - first, is_user = m[i].role_len == 4 && !memcmp(m[i].role, "user", 4);
        if (is_user != (k % 2 == 0))
            return fail(e, NLA_ERR_ARG,
                        "chat: roles must alternate user/assistant starting with user; "
                        "message %d has role '%.*s'",
                        i, (int)(m[i].role_len > 32 ? 32 : m[i].role_len), m[i].role);
        const int is_asst = m[i].role_len == 9 && !memcmp(m[i].role, "assistant", 9);
        chat_mark(parts, &np, s.len, CHAT_MARKER);
        sb_str(&s, "<start_of_turn>");
        if (is_asst) sb_str(&s, "model");
        else sb_put(&s, m[i].role, m[i].role_len);
        sb_str(&s, "\n");
        chat_mark(parts, &np, s.len, is_user ? CHAT_USER : CHAT_ASST);
        if (k == 0 && first) {
            sb_put(&s, m[0].content, m[0].content_len);
            sb_str(&s, "\n\n");
        }
        const char *b = m[i].content, *en = m[i].content + m[i].content_len;
        py_trim(&b, &en);
        sb_put(&s, b, (size_t)(en - b));
        chat_mark(parts, &np, s.len, CHAT_EOT);
        sb_str(&s, "<end_of_turn>");
        chat_mark(parts, &np, s.len, CHAT_MARKER);
        sb_str(&s, "\n");
    }
    if (add_gen) {
        chat_mark(parts, &np, s.len, CHAT_MARKER);
        sb_str(&s, "<start_of_turn>model\n");
    }
    if (n_parts) *n_parts = np;
    if (len) *len = s.len;
    if (s.len < cap) { out[s.len] = 0; return NLA_OK; }
    return fail(e, NLA_ERR_BUFFER_TOO_SMALL, "chat: the rendered text needs %zu bytes", s.len + 1);
}

nla_status nla_chat_render(const nla_chat_message *msgs, int n, int add_generation_prompt,
                           char *out, size_t cap, size_t *len, char *errbuf_out,
                           size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    if (len) *len = 0;
    if (n < 0 || (n && !msgs) || (cap && !out)) return NLA_ERR_ARG;
    chat_span *sp = (chat_span *)xcalloc((size_t)n, sizeof *sp);
    if (!sp) return NLA_ERR_NOMEM;
    nla_status rc = NLA_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (!msgs[i].role || !msgs[i].content)
            rc = fail(&e, NLA_ERR_ARG, "chat: message %d has a NULL role or content", i);
        else {
            sp[i].role = msgs[i].role; sp[i].role_len = strlen(msgs[i].role);
            sp[i].content = msgs[i].content; sp[i].content_len = strlen(msgs[i].content);
        }
    }
    if (!rc) rc = chat_render(sp, n, add_generation_prompt, out, cap, len, NULL, NULL, &e);
    NLA_FREE(sp);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

static void chat_spans_free(chat_span *sp, int n) {
    for (int i = 0; i < n; i++) {
        NLA_FREE((char *)(uintptr_t)sp[i].role);
        NLA_FREE((char *)(uintptr_t)sp[i].content);
    }
    NLA_FREE(sp);
}

/* JSON conversation -> heap strings; freed with chat_spans_free. */
static nla_status chat_from_json(const jdoc *d, int list, chat_span **out, int *n_out, errbuf *e) {
    *out = NULL;
    *n_out = 0;
    if (list < 0 || d->node[list].type != J_ARR)
        return fail(e, NLA_ERR_FORMAT, "chat: expected a JSON list of messages");
    int n = (int)d->node[list].n;
    chat_span *sp = (chat_span *)xcalloc((size_t)n, sizeof *sp);
    if (!sp) return fail(e, NLA_ERR_NOMEM, "chat: out of memory");
    uint32_t k = (uint32_t)list + 1;
    for (int i = 0; i < n; i++, k = d->node[k].end) {
        int r = json_get(d, (int)k, "role"), c = json_get(d, (int)k, "content");
        if (r < 0 || c < 0 || d->node[r].type != J_STR || d->node[c].type != J_STR) {
            chat_spans_free(sp, i);
            return fail(e, NLA_ERR_FORMAT, "chat: message %d needs string \"role\" and \"content\"",
                        i);
        }
        sp[i].role_len = json_str(d, r, NULL, 0);
        sp[i].content_len = json_str(d, c, NULL, 0);
        sp[i].role = json_strdup(d, r);
        sp[i].content = json_strdup(d, c);
        if (!sp[i].role || !sp[i].content) {
            chat_spans_free(sp, i + 1);
            return fail(e, NLA_ERR_NOMEM, "chat: out of memory");
        }
    }
    *out = sp;
    *n_out = n;
    return NLA_OK;
}

nla_status nla_chat_render_json(const char *json, size_t json_len, int add_generation_prompt,
                                char *out, size_t cap, size_t *len, char *errbuf_out,
                                size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    if (len) *len = 0;
    if (!json || (cap && !out)) return NLA_ERR_ARG;
    jdoc d;
    chat_span *sp = NULL;
    int n = 0;
    nla_status rc = json_parse(&d, json, json_len, &e, "chat");
    if (!rc) {
        rc = chat_from_json(&d, 0, &sp, &n, &e);
        if (!rc) rc = chat_render(sp, n, add_generation_prompt, out, cap, len, NULL, NULL, &e);
        chat_spans_free(sp, n);
        json_free(&d);
    }
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* ==== 12 Decoding: sampling and the generate loop ======================= */

/* Greedy is the argmax (lowest id on ties, like torch.argmax). Sampling:
   logits / temperature, optional top-k, then optional top-p (the smallest
   prefix of the sorted distribution whose mass reaches p), then one draw
   from the session's xorshift64* stream. Rows >= 262144 (image and padding
   rows of multimodal checkpoints) are never candidates. */

static uint64_t rng_next(uint64_t *st) {
    uint64_t x = *st;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return x * 0x2545f4914f6cdd1dull;
}

static double rng_uniform(uint64_t *st) {
    return (double)(rng_next(st) >> 11) * (1.0 / 9007199254740992.0);
}

#define SMP_LANES 16 /* lanes of the argmax */
/* A nucleus's candidates: the logits / T within D of the largest, for D
   the first of these whose candidates hold the nucleus (88: every weight
   above 0, as exp_f is 0 below -87). */
static const float smp_within[] = {4, 8, 16, 88};

/* The index of the largest of x[0..n), n >= 1: the lowest on ties, never
   a NaN (but 0 where x[0] is one), as `if (x[i] > x[best]) best = i`
   finds it, in SMP_LANES lanes that each keep their largest and where it
   was, a loop the compiler vectorizes. */
static int argmax_f(const float *x, int n) {
    if (isnan(x[0])) return 0;
    float mv[SMP_LANES];
    int32_t mi[SMP_LANES];
    for (int l = 0; l < SMP_LANES; l++) { mv[l] = x[0]; mi[l] = 0; }
    int i = 0;
    for (; i + SMP_LANES <= n; i += SMP_LANES)
        for (int l = 0; l < SMP_LANES; l++) {
            const int gt = x[i + l] > mv[l];
            mv[l] = gt ? x[i + l] : mv[l];
            mi[l] = gt ? i + l : mi[l];
        }
    int best = 0;
    for (int l = 0; l < SMP_LANES; l++)
        if (mv[l] > x[best] || (mv[l] == x[best] && mi[l] < best)) best = mi[l];
    for (; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Descending logit, then ascending id; NaN sorts last. */
static int cand_cmp(const void *a, const void *b) {
    const smp_cand *x = (const smp_cand *)a, *y = (const smp_cand *)b;
    const int xn = isnan(x->logit), yn = isnan(y->logit);
    if (xn != yn) return xn - yn;
    if (!xn && x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* A nucleus candidate's logit / T (finite) as a key whose ascending
   unsigned order is cand_cmp's: the largest logit first, -0 as +0. */
static inline uint32_t cand_key(float z) {
    uint32_t u;
    if (z == 0) z = 0;
    memcpy(&u, &z, sizeof u);
    return u >> 31 ? u : ~(u | 0x80000000u);
}

/* Sorts cd[0..n), collected in ascending id order, into cand_cmp's order
   through tmp [n]: a stable radix sort of cand_key in passes of 11 bits,
   skipping a pass where every key has the same digit; ties keep their id
   order. */
static void cand_sort(smp_cand *cd, smp_cand *tmp, int n) {
    static const int shift[] = {0, 11, 22};
    uint32_t cnt[3][2048] = {{0}};
    for (int i = 0; i < n; i++) {
        const uint32_t k = cand_key(cd[i].logit);
        for (int d = 0; d < 3; d++) cnt[d][k >> shift[d] & 2047]++;
    }
    smp_cand *src = cd, *dst = tmp;
    for (int d = 0; d < 3 && n > 0; d++) {
        uint32_t *c = cnt[d], at = 0;
        if (c[cand_key(src[0].logit) >> shift[d] & 2047] == (uint32_t)n) continue;
        for (int b = 0; b < 2048; b++) {
            const uint32_t m = c[b];
            c[b] = at;
            at += m;
        }
        for (int i = 0; i < n; i++) dst[c[cand_key(src[i].logit) >> shift[d] & 2047]++] = src[i];
        smp_cand *t = src;
        src = dst;
        dst = t;
    }
    if (src != cd) memcpy(cd, src, (size_t)n * sizeof *cd);
}

/* Restores the heap order below i in h[0..n): every parent ranks after
   (is worse than) its children, so h[0] is the worst of the kept. */
static void cand_sift(smp_cand *h, int n, int i) {
    for (;;) {
        int w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && cand_cmp(&h[l], &h[w]) > 0) w = l;
        if (r < n && cand_cmp(&h[r], &h[w]) > 0) w = r;
        if (w == i) return;
        smp_cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* The weights e^(x[j] / T - mx) of x[0..m), m <= SMP_CHUNK, into w (a loop
   the compiler vectorizes), and their sum in order, in double. */
static inline double smp_chunk(float *w, const float *x, int m, float T, float mx) {
    double s = 0;
    for (int j = 0; j < m; j++) w[j] = exp_f(x[j] / T - mx);
    for (int j = 0; j < m; j++) s += w[j];
    return s;
}

/* A sampled token of logits [V] without top-k or top-p: the weights are
   summed SMP_CHUNK at a time into part [V / SMP_CHUNK + 1] (sum: the
   total, chunk after chunk), then r = u sum picks the chunk where the
   running sum of the chunks passes r, and in it the token where the
   running sum of its weights does (where rounding leaves r past them all,
   its last token with a weight). */
static int32_t draw_all(const float *logits, int V, float T, float mx, const double *part,
                        double sum, uint64_t *rng) {
    const int nc = (V + SMP_CHUNK - 1) / SMP_CHUNK;
    const double r = rng_uniform(rng) * sum;
    double acc = 0;
    int c = 0;
    while (c < nc - 1 && !(r < acc + part[c])) acc += part[c++];
    float w[SMP_CHUNK];
    const int j0 = c * SMP_CHUNK, m = V - j0 < SMP_CHUNK ? V - j0 : SMP_CHUNK;
    smp_chunk(w, logits + j0, m, T, mx);
    int last = 0;
    for (int j = 0; j < m; j++) {
        if (w[j] > 0) last = j;
        if (r < (acc += w[j])) return j0 + j;
    }
    return j0 + last;
}

/* One token from logits [V], drawing from the stream *rng when sampling;
   cd [2 V] and part [V / SMP_CHUNK + 1]: the draw's scratch. A nucleus
   (top-p without top-k) sorts only the candidates within D of the
   largest logit / T (smp_within), the first D whose candidates hold p of
   the total, so that every token of the nucleus is among them, and sorts
   them by radix. AMD Zen 5, 262144 logits, against qsort of every one and
   libm's expf one element at a time: top-p 0.95 at T 0.7 of a sharp
   distribution 0.61 ms against 53; top-p 0.9 where nearly all lie within 4
   of the largest 3.9-4.3 against 43-62; plain T 1 0.41 against 1.33; top-k
   64 0.30 against 0.52; greedy 0.053 against 0.116. */
static int32_t sample(const float *logits, int V, const nla_generate_params *p, uint64_t *rng,
                      smp_cand *cd, double *part) {
    const int best = argmax_f(logits, V);
    const float T = p->temperature;
    /* T -> 0 is greedy */
    if (T <= 0 || !isfinite(logits[best] / T)) return best;
    const float mx = logits[best] / T;
    const int k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    const float top_p = p->top_p > 0 && p->top_p < 1 ? p->top_p : 1;
    double sum = 0;
    int n = 0;
    if (k < V) { /* the k best in one pass (a heap whose root is the worst kept), then sorted */
        for (int i = 0; i < V; i++) {
            const smp_cand c = {logits[i] / T, i};
            if (i < k) cd[n++] = c;
            if (i == k - 1)
                for (int j = k / 2 - 1; j >= 0; j--) cand_sift(cd, k, j);
            if (i >= k && !(c.logit <= cd[0].logit) && cand_cmp(&c, &cd[0]) < 0) {
                cd[0] = c;
                cand_sift(cd, k, 0);
            }
        }
        qsort(cd, (size_t)k, sizeof *cd, cand_cmp);
        for (int i = 0; i < k; i++) sum += cd[i].logit = exp_f(cd[i].logit - mx); /* a weight */
    } else { /* every weight, summed chunk by chunk */
        float w[SMP_CHUNK];
        for (int j0 = 0; j0 < V; j0 += SMP_CHUNK)
            sum += part[j0 / SMP_CHUNK] =
                smp_chunk(w, logits + j0, V - j0 < SMP_CHUNK ? V - j0 : SMP_CHUNK, T, mx);
        if (!(sum > 0) || !isfinite(sum)) return best;
        if (top_p == 1) return draw_all(logits, V, T, mx, part, sum, rng);
        const int last = (int)(sizeof smp_within / sizeof *smp_within) - 1;
        for (int l = 0; n == 0; l++) {
            double mass = 0; /* of the candidates */
            for (int j0 = 0; j0 < V; j0 += SMP_CHUNK) {
                const int m = V - j0 < SMP_CHUNK ? V - j0 : SMP_CHUNK;
                smp_chunk(w, logits + j0, m, T, mx);
                for (int j = 0; j < m; j++) {
                    const float z = logits[j0 + j] / T;
                    if (z - mx >= -smp_within[l]) {
                        cd[n].logit = z;
                        cd[n++].id = j0 + j;
                        mass += w[j];
                    }
                }
            }
            if (mass < top_p * sum && l < last) { n = 0; continue; }
            cand_sort(cd, cd + V, n);
            for (int i = 0; i < n; i++) cd[i].logit = exp_f(cd[i].logit - mx);
        }
    }
    if (top_p < 1) { /* the smallest prefix whose mass reaches p of the sum */
        double acc = 0;
        int cut = 0;
        while (cut < n && acc < top_p * sum) acc += cd[cut++].logit;
        n = cut;
        sum = acc;
    }
    if (!(sum > 0) || !isfinite(sum)) return best;
    double r = rng_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += cd[i].logit;
        if (r < acc) return cd[i].id;
    }
    return cd[n - 1].id;
}

/* The sampler check of nla.h. */
int32_t nla_kernel_sample(const float *logits, int n, const nla_generate_params *p,
                          uint64_t seed) {
    if (!logits || !p || n < 1 || n > NLA_TOKENIZER_VOCAB) return -1;
    smp_cand *cd = (smp_cand *)xmalloc((size_t)n * 2, sizeof(smp_cand));
    double *part = (double *)xmalloc((size_t)n / SMP_CHUNK + 1, sizeof(double));
    uint64_t rng = rng_seed(seed);
    const int32_t t = cd && part ? sample(logits, n, p, &rng, cd, part) : -1;
    NLA_FREE(cd);
    NLA_FREE(part);
    return t;
}

/* sample() on one of the session's rows of logits, with the scratch of
   sampler t < s->ns. */
static int32_t session_sample(nla_session *s, const float *logits, const nla_generate_params *p,
                              uint64_t *rng, int t) {
    const int V = s->m->cfg.vocab;
    return sample(logits, V < NLA_TOKENIZER_VOCAB ? V : NLA_TOKENIZER_VOCAB, p, rng,
                  s->cand + (size_t)t * 2 * V, s->part + (size_t)t * (V / SMP_CHUNK + 1));
}

static nla_status check_generate_params(nla_session *s, const nla_generate_params *p, int32_t *out,
                                        int *n_out) {
    if (!p || !out || !n_out)
        return fail(&s->err, NLA_ERR_ARG, "generate: params, out and n_out are required");
    if (p->max_new < 1) return fail(&s->err, NLA_ERR_ARG, "generate: max_new must be at least 1");
    if (!(p->temperature >= 0) || !isfinite(p->temperature) || !(p->top_p >= 0 && p->top_p <= 1) ||
        p->top_k < 0 || p->n_stop_ids < 0 || (p->n_stop_ids && !p->stop_ids))
        return fail(&s->err, NLA_ERR_ARG,
                    "generate: temperature >= 0, top_p in [0, 1], top_k >= 0 "
                    "and stop ids required");
    for (int k = 0; k < p->n_stop_ids; k++)
        if (p->stop_ids[k] < 0 || p->stop_ids[k] >= s->m->cfg.vocab)
            return fail(&s->err, NLA_ERR_RANGE,
                        "generate: stop id %d is not in the vocabulary (%d)", (int)p->stop_ids[k],
                        s->m->cfg.vocab);
    return NLA_OK;
}

/* The decode loop after a forward left the next-token logits in s->logits:
   sample, stream, stop, feed the token back. */
static nla_status generate_from_logits(nla_session *s, const nla_generate_params *p, int32_t *out,
                                       int *n_out) {
    const int32_t *stop = p->stop_ids ? p->stop_ids : s->m->cfg.eos;
    const int n_stop = p->no_stop ? 0 : p->stop_ids ? p->n_stop_ids : s->m->cfg.n_eos;
    nla_status rc = check_generate_params(s, p, out, n_out);
    *n_out = 0;
    for (int i = 0; !rc; i++) {
        int32_t tok = session_sample(s, s->logits, p, &s->rng, 0);
        out[(*n_out)++] = tok;
        int stop_now = (p->on_token && p->on_token(p->user, tok)) || *n_out == p->max_new;
        for (int k = 0; k < n_stop; k++) stop_now |= tok == stop[k];
        if (stop_now) break;
        nla_batch b;
        memset(&b, 0, sizeof b);
        b.n_tokens = 1;
        b.ids = &tok;
        b.logits = s->logits;
        rc = nla_forward(s, &b);
    }
    return rc;
}

nla_status nla_generate(nla_session *s, const int32_t *prompt, int n_prompt,
                        const nla_generate_params *p, int32_t *out, int *n_out) {
    if (!s) return NLA_ERR_ARG;
    if (n_out) *n_out = 0;
    nla_status rc = check_generate_params(s, p, out, n_out);
    if (rc) return rc;
    if (n_prompt < 1 || (!prompt && !p->prompt_embeds))
        return fail(&s->err, NLA_ERR_ARG, "nla_generate: the prompt is empty");
    if ((int64_t)s->past[0] + n_prompt + p->max_new - 1 > s->n_ctx)
        return fail(&s->err, NLA_ERR_RANGE,
                    "nla_generate: %d cached + %d prompt + %d new tokens exceed the context of %d",
                    s->past[0], n_prompt, p->max_new, s->n_ctx);
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = n_prompt;
    b.ids = prompt;
    b.embeds = p->prompt_embeds;
    b.logits = s->logits;
    rc = nla_forward(s, &b);
    return rc ? rc : generate_from_logits(s, p, out, n_out);
}

/* ==== 13 NLA: sidecar, extract, verbalize, reconstruct, score =========== */

/* The recipe of the released NLAs (Fraser-Taliente et al. 2026), as the
   reference client runs it:
     extract     the target's residual after block K (HF hidden_states[K+1]),
                 raw float32, at chosen positions; the forward stops at K;
     verbalize   the AV reads a fixed chat prompt whose marker row (the one
                 token 246566 between 236813 and 954) is replaced by
                 v * injection_scale / |v| (no sqrt(d): it replaces a row that
                 is already scaled), then decodes (greedy by default, at most
                 200 tokens, stop on the AV's eos ids: <eos> and <end_of_turn>
                 in the released generation_config.json); the explanation is
                 the text inside <explanation>...</explanation>, trimmed;
     reconstruct the AR reads <bos> + "Summary of the following text:
                 <text>{explanation}</text> <summary>", runs its K+1 blocks
                 without a final norm, and maps the last row through the d x d
                 value head (y = W h, no bias);
     score       both vectors rescaled to L2 = mse_scale (sqrt(d)): mse_nrm =
                 mean squared difference = 2 (1 - cos); fve_nrm = 1 - mse_nrm/B
                 with B the variance of normalised vectors (the training
                 set's, in nla_releases below; or a set of the user's).
   Every constant comes from the model's nla_meta.yaml sidecar, read here by
   a small YAML reader (the subset the released sidecars use); missing
   values fall back to the released 12B/27B pairs when the width matches. */

/* --- vectors on disk: NumPy .npy, float32, 1-D or 2-D, C order */

/* The .npy (version 1.0) header of a float32 C-order array: magic, length,
   dict, padding to a multiple of 64 bytes. Writes it into hdr (room for
   256 bytes) and returns its length. ndim 1..3. */
static size_t npy_header(char *hdr, int ndim, const int64_t *shape) {
    char dims[96] = "";
    for (int i = 0; i < ndim; i++)
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%lld%s", (long long)shape[i],
                 ndim == 1      ? ","
                 : i + 1 < ndim ? ", "
                                : "");
    int n =
        snprintf(hdr + 10, 160, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
    int pad = (64 - (10 + n + 1) % 64) % 64;
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (char)((n + pad + 1) & 0xff);
    hdr[9] = (char)((n + pad + 1) >> 8);
    memset(hdr + 10 + n, ' ', (size_t)pad);
    hdr[10 + n + pad] = '\n';
    return (size_t)(10 + n + pad + 1);
}

nla_status nla_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                         char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    uint64_t count = 1;
    int ok_shape = path && data && shape && ndim >= 1 && ndim <= 3;
    for (int i = 0; ok_shape && i < ndim; i++)
        ok_shape = shape[i] >= 0 && mul_u64(count, (uint64_t)shape[i], &count);
    if (!ok_shape || count > SIZE_MAX / sizeof(float)) {
        copy_err(errbuf_out, errbuf_size,
                 "nla_npy_write: path, data and a 1-D to 3-D shape are required");
        return NLA_ERR_ARG;
    }
    char hdr[256];
    size_t hl = npy_header(hdr, ndim, shape);
    out_file o;
    nla_status rc = out_open(&o, path, &e);
    if (!rc) {
        out_write(&o, hdr, hl);
        out_write(&o, data, (size_t)count * sizeof(float));
        rc = out_commit(&o, &e);
    }
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

static const char *npy_ws(const char *p, const char *end) {
    while (p < end && *p == ' ') p++;
    return p;
}

/* A .npy header h[0..n): a Python dict literal of exactly 'descr' ('<f4'),
   'fortran_order' (False) and 'shape' (a tuple of one or two sizes), in any
   order, then spaces and a newline. Anything else is refused. */
static nla_status npy_dict(const char *path, const char *h, size_t n, int64_t shape[2], int *ndim,
                           errbuf *e) {
    static const char *const key[3] = {"descr", "fortran_order", "shape"};
    const char *p = npy_ws(h, h + n), *end = h + n;
    unsigned seen = 0;
    if (p == end || *p++ != '{')
        return fail(e, NLA_ERR_FORMAT, "%s: the header is not a dict", path);
    for (p = npy_ws(p, end); p < end && *p != '}';) {
        const char q = *p, *k = ++p;
        if (q != '\'' && q != '"')
            return fail(e, NLA_ERR_FORMAT, "%s: a header key is not a string", path);
        while (p < end && *p != q) p++;
        const int kl = (int)(p - k);
        int i = 0;
        while (i < 3 && ((size_t)kl != strlen(key[i]) || memcmp(k, key[i], (size_t)kl))) i++;
        if (p == end || i == 3 || seen >> i & 1)
            return fail(e, NLA_ERR_FORMAT, "%s: header key '%.*s' is %s", path, kl, k,
                        p == end ? "not closed" : i == 3 ? "not one of a .npy's" : "given twice");
        seen |= 1u << i;
        p = npy_ws(p + 1, end);
        if (p == end || *p++ != ':')
            return fail(e, NLA_ERR_FORMAT, "%s: no ':' after header key '%s'", path, key[i]);
        p = npy_ws(p, end);
        if (i == 0) {
            if (end - p < 5 || (memcmp(p, "'<f4'", 5) && memcmp(p, "\"<f4\"", 5)))
                return fail(e, NLA_ERR_UNSUPPORTED,
                            "%s: dtype must be little-endian float32 ('<f4')", path);
            p += 5;
        } else if (i == 1) {
            if (end - p < 5 || memcmp(p, "False", 5))
                return fail(e, NLA_ERR_UNSUPPORTED, "%s: Fortran order is not supported", path);
            p += 5;
        } else {
            if (p == end || *p++ != '(')
                return fail(e, NLA_ERR_FORMAT, "%s: the shape is not a tuple", path);
            for (p = npy_ws(p, end); p < end && *p != ')'; p = npy_ws(p, end)) {
                uint64_t v = 0;
                const char *d = p;
                while (p < end && *p >= '0' && *p <= '9' && v < ((uint64_t)1 << 40))
                    v = v * 10 + (uint64_t)(*p++ - '0');
                if (p == d)
                    return fail(e, NLA_ERR_FORMAT, "%s: a shape dimension is not a number >= 0",
                                path);
                if (*ndim == 2)
                    return fail(e, NLA_ERR_UNSUPPORTED, "%s: shape must be 1-D or 2-D", path);
                if (v >= ((uint64_t)1 << 40))
                    return fail(e, NLA_ERR_UNSUPPORTED, "%s: a shape dimension is 2^40 or more",
                                path);
                shape[(*ndim)++] = (int64_t)v;
                p = npy_ws(p, end);
                if (p < end && *p == ',') p++;
                else if (p < end && *p != ')') break;
            }
            if (p == end || *p++ != ')')
                return fail(e, NLA_ERR_FORMAT, "%s: the shape tuple is not closed", path);
        }
        p = npy_ws(p, end);
        if (p < end && *p == ',') p = npy_ws(p + 1, end);
        else if (p < end && *p != '}') break;
    }
    if (p == end || *p++ != '}')
        return fail(e, NLA_ERR_FORMAT, "%s: the header dict is not closed", path);
    if (seen != 7)
        return fail(e, NLA_ERR_FORMAT, "%s: the header has no '%s'", path,
                    key[!(seen & 1) ? 0 : !(seen & 2) ? 1 : 2]);
    p = npy_ws(p, end);
    if (p < end && *p == '\n') p++;
    if (p != end)
        return fail(e, NLA_ERR_FORMAT, "%s: the header has bytes after its dict", path);
    return NLA_OK;
}

/* The array in a .npy file's bytes buf[0..n) (float32, C order, 1-D or
   2-D) into out[0..cap). */
static nla_status npy_parse(const char *path, const char *buf, size_t n, float *out, size_t cap,
                            int64_t shape[2], int *ndim, errbuf *e) {
    if (n < 10 || memcmp(buf, "\x93NUMPY", 6) || (buf[6] != 1 && buf[6] != 2))
        return fail(e, NLA_ERR_FORMAT, "%s: not a .npy file (version 1 or 2)", path);
    size_t hl = (unsigned char)buf[8] | (size_t)(unsigned char)buf[9] << 8, off = 10;
    if (buf[6] == 2) {
        if (n < 12) return fail(e, NLA_ERR_FORMAT, "%s: truncated header", path);
        hl |= (size_t)(unsigned char)buf[10] << 16 | (size_t)(unsigned char)buf[11] << 24;
        off = 12;
    }
    if (hl > n - off)
        return fail(e, NLA_ERR_FORMAT, "%s: header runs past the end of the file", path);
    nla_status rc = npy_dict(path, buf + off, hl, shape, ndim, e);
    if (rc) return rc;
    if (*ndim == 0) return fail(e, NLA_ERR_UNSUPPORTED, "%s: a 0-D array is not a vector", path);
    uint64_t count = 0;
    if (!mul_u64((uint64_t)shape[0], (uint64_t)(*ndim == 2 ? shape[1] : 1), &count) ||
        count > UINT64_MAX / 4)
        return fail(e, NLA_ERR_FORMAT, "%s: the shape (%lld, %lld) is larger than any file", path,
                    (long long)shape[0], (long long)(*ndim == 2 ? shape[1] : 1));
    if (count > (n - off - hl) / 4 || (n - off - hl) != count * 4) {
        return fail(e, NLA_ERR_FORMAT, "%s: %zu data bytes, the shape needs %llu", path,
                    n - off - hl, (unsigned long long)count * 4);
    }
    if (count > cap) return NLA_ERR_BUFFER_TOO_SMALL;
    if (count) memcpy(out, buf + off + hl, (size_t)count * 4);
    return NLA_OK;
}

nla_status nla_npy_read(const char *path, float *out, size_t cap, int64_t shape[2], int *ndim,
                        char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    e.msg[0] = 0;
    if (!path || !shape || !ndim || (cap && !out)) {
        copy_err(errbuf_out, errbuf_size, "nla_npy_read: path, shape and ndim are required");
        return NLA_ERR_ARG;
    }
    shape[0] = shape[1] = 0;
    *ndim = 0;
    char *buf = NULL;
    size_t n = 0;
    nla_status rc = read_file(path, &buf, &n, SIZE_MAX / 2, &e);
    if (!rc) rc = npy_parse(path, buf, n, out, cap, shape, ndim, &e);
    NLA_FREE(buf);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- the sidecar's YAML subset: nested maps, plain and quoted scalars,
   |- block scalars, flow lists, null. Entries are flattened to dotted
   paths ("extraction.injection_scale"). */

enum { Y_MAP, Y_SCALAR, Y_NULL, Y_LIST };

typedef struct {
    char *path, *val;
    int kind, line;
} yaml_ent;

typedef struct {
    yaml_ent *e;
    int n;
} yaml_doc;

static void yaml_free(yaml_doc *y) {
    for (int i = 0; i < y->n; i++) { NLA_FREE(y->e[i].path); NLA_FREE(y->e[i].val); }
    NLA_FREE(y->e);
    y->e = NULL;
    y->n = 0;
}

static const yaml_ent *yaml_find(const yaml_doc *y, const char *path) {
    for (int i = 0; i < y->n; i++)
        if (!strcmp(y->e[i].path, path)) return &y->e[i];
    return NULL;
}

/* One line of src: [*b, *e) without the newline (and a trailing \r). */
static const char *next_line(const char *p, const char *end, const char **b, const char **e) {
    *b = p;
    while (p < end && *p != '\n') p++;
    *e = p;
    if (*e > *b && (*e)[-1] == '\r') (*e)--;
    return p < end ? p + 1 : p;
}

static int blank_or_comment(const char *b, const char *e) {
    while (b < e && *b == ' ') b++;
    return b == e || *b == '#';
}

/* Decodes a quoted scalar starting at *p (the quote) into a fresh string
   and advances *p past the closing quote. Double quotes know the escapes
   \n \t \" \\ \/ and \uXXXX; single quotes double a quote (''). NULL on
   an unknown escape (*p then points at it), a missing quote (*p = e) or
   when memory runs out (*p unchanged). */
static char *yaml_quoted(const char **p, const char *e) {
    const char q = **p, *s = *p + 1;
    char *out = (char *)NLA_MALLOC((size_t)(e - s) + 1);
    size_t o = 0;
    for (; out && s < e; s++) {
        if (*s == q && q == '\'' && s + 1 < e && s[1] == '\'') { out[o++] = q; s++; continue; }
        if (*s == q) { out[o] = 0; *p = s + 1; return out; }
        if (q == '"' && *s == '\\') {
            const char c = s + 1 < e ? s[1] : 0;
            uint32_t cp = 0;
            int k = 2;
            if (c == 'u')
                for (; k < 6 && s + k < e && hexval(s[k]) >= 0; k++)
                    cp = cp << 4 | (uint32_t)hexval(s[k]);
            if (c == 'u' ? k != 6 || cp == 0 || (cp >= 0xd800 && cp < 0xe000)
                         : !c || !strchr("nt\"\\/", c)) {
                *p = s;
                break;
            }
            if (c != 'u') { out[o++] = c == 'n' ? '\n' : c == 't' ? '\t' : c; s++; continue; }
            if (cp < 0x80) out[o++] = (char)cp;
            else if (cp < 0x800) {
                out[o++] = (char)(0xc0 | cp >> 6);
                out[o++] = (char)(0x80 | (cp & 0x3f));
            } else {
                out[o++] = (char)(0xe0 | cp >> 12);
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[o++] = (char)(0x80 | (cp & 0x3f));
            }
            s += 5;
            continue;
        }
        out[o++] = *s;
    }
    if (out && s == e) *p = e;
    NLA_FREE(out);
    return NULL;
}

static nla_status yaml_parse(const char *src, size_t n, const char *fn, yaml_doc *y, errbuf *e) {
    enum { MAXD = NLA_YAML_MAX_DEPTH };
    /* ind[i]: indent of the keys at depth i, -1 until seen */
    int ind[MAXD + 1] = {-1}, depth = 0, line = 0;
    char *key[MAXD];
    const char *p = src, *end = src + n, *b, *le;
    nla_status rc = NLA_OK;
    int cap = 0;
    memset(y, 0, sizeof *y);
    if (!utf8_valid((const unsigned char *)src, n))
        return fail(e, NLA_ERR_FORMAT, "%s: not valid UTF-8", fn);
    while (p < end && !rc) {
        p = next_line(p, end, &b, &le);
        line++;
        if (blank_or_comment(b, le)) continue;
        int in = 0;
        while (b + in < le && b[in] == ' ') in++;
        const char *c = b + in;
        if (*c == '\t') {
            rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: tab in indentation", fn, line);
            break;
        }
        if (line == 1 && le - b == 3 && !memcmp(b, "---", 3)) continue;
        if (*c == '-' && (c + 1 == le || c[1] == ' ')) {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: line %d: block lists are not supported (write [a, b])", fn, line);
            break;
        }
        /* maps that ended */
        while (depth > 0 && (ind[depth] >= 0 ? in < ind[depth] : in <= ind[depth - 1]))
            NLA_FREE(key[--depth]);
        if (ind[depth] < 0) ind[depth] = in; /* the first key of this map sets its indent */
        if (in != ind[depth]) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: unexpected indentation", fn, line);
            break;
        }
        const char *colon = c;
        while (colon < le && *colon != ':' && *colon != ' ' && *colon != '#' && *colon != '"' &&
               *colon != '\'')
            colon++;
        if (colon == c || colon >= le || *colon != ':' || (colon + 1 < le && colon[1] != ' ')) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: expected 'key: value'", fn, line);
            break;
        }
        if (cap == y->n) {
            cap = cap ? cap * 2 : 32;
            yaml_ent *ne = (yaml_ent *)NLA_REALLOC(y->e, (size_t)cap * sizeof *ne);
            if (!ne) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn); break; }
            y->e = ne;
        }
        /* dotted path */
        size_t plen = (size_t)(colon - c) + 1;
        for (int i = 0; i < depth; i++) plen += strlen(key[i]) + 1;
        char *path = (char *)NLA_MALLOC(plen + 1);
        if (!path) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn); break; }
        path[0] = 0;
        for (int i = 0; i < depth; i++) { strcat(path, key[i]); strcat(path, "."); }
        strncat(path, c, (size_t)(colon - c));
        if (yaml_find(y, path)) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: duplicate key '%s'", fn, line, path);
            NLA_FREE(path);
            break;
        }
        yaml_ent *ent = &y->e[y->n];
        ent->path = path;
        ent->val = NULL;
        ent->line = line;
        const char *v = colon + 1;
        while (v < le && *v == ' ') v++;
        if (v == le || *v == '#') { /* a map opens: its keys come more indented */
            ent->kind = Y_MAP;
            y->n++;
            if (depth == MAXD) {
                rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: nesting deeper than %d", fn, line, MAXD);
                break;
            }
            if (!(key[depth] = xstrndup(c, (size_t)(colon - c)))) {
                rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn);
                break;
            }
            ind[++depth] = -1;
            continue;
        }
        y->n++;
        if (*v == '|') { /* block scalar: the more-indented lines that follow */
            const char *mod = v + 1;
            int chomp = mod < le && *mod == '-' ? -1 : mod < le && *mod == '+' ? 1 : 0;
            if (chomp) mod++;
            while (mod < le && *mod == ' ') mod++;
            if (mod < le && *mod != '#') {
                rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: unsupported block scalar header", fn,
                          line);
                break;
            }
            sbuf sb = {NULL, 0, 0};
            int bind = -1, pass;
            const char *start = p;
            for (pass = 0; pass < 2; pass++) { /* measure, then copy */
                const char *q = start, *qb, *qe;
                int blank_run = 0, ln = line;
                sb.len = 0;
                while (q < end) {
                    const char *nq = next_line(q, end, &qb, &qe);
                    int qi = 0;
                    while (qb + qi < qe && qb[qi] == ' ') qi++;
                    if (qb + qi == qe) { blank_run++; q = nq; ln++; continue; }
                    if (qi <= in) break;
                    if (bind < 0) bind = qi;
                    if (qi < bind) break;
                    for (; blank_run; blank_run--) sb_put(&sb, "\n", 1);
                    if (sb.len) sb_put(&sb, "\n", 1);
                    sb_put(&sb, qb + bind, (size_t)(qe - qb - bind));
                    q = nq;
                    ln++;
                    if (pass == 1) { p = q; line = ln; }
                }
                if (pass == 1 && chomp >= 0) sb_put(&sb, "\n", 1);
                if (pass == 1 && chomp > 0) for (; blank_run; blank_run--) sb_put(&sb, "\n", 1);
                if (pass == 0) {
                    sb.cap = sb.len + 2 + (size_t)blank_run;
                    if (!(sb.out = (char *)NLA_MALLOC(sb.cap))) break;
                }
            }
            if (!sb.out) { rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn); break; }
            sb.out[sb.len] = 0;
            ent->val = sb.out;
            ent->kind = Y_SCALAR;
            continue;
        }
        if (*v == '"' || *v == '\'') {
            const char *q = v;
            if (!(ent->val = yaml_quoted(&q, le))) {
                rc = q == v ? fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn)
                            : fail(e, NLA_ERR_FORMAT, "%s: line %d: %s", fn, line,
                                   q < le ? "bad escape in a quoted string"
                                          : "unterminated quoted string");
                break;
            }
            while (q < le && *q == ' ') q++;
            if (q < le && *q != '#') {
                rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: text after a quoted string", fn, line);
                break;
            }
            ent->kind = Y_SCALAR;
            continue;
        }
        if (*v == '{' || *v == '&' || *v == '*' || *v == '!' || *v == '>') {
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: line %d: flow maps, anchors, aliases, tags and folded scalars "
                      "are not supported",
                      fn, line);
            break;
        }
        const char *ve = le;
        for (const char *h = v; h < le; h++)
            if (*h == '#' && h[-1] == ' ') { ve = h; break; }
        while (ve > v && ve[-1] == ' ') ve--;
        if (!(ent->val = xstrndup(v, (size_t)(ve - v)))) {
            rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", fn);
            break;
        }
        if (*v == '[') {
            if (ve[-1] != ']') {
                rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: unterminated flow list", fn, line);
                break;
            }
            ent->kind = Y_LIST;
        } else {
            ent->kind = !strcmp(ent->val, "null") || !strcmp(ent->val, "~") ||
                                !strcmp(ent->val, "Null") || !strcmp(ent->val, "NULL")
                            ? Y_NULL
                            : Y_SCALAR;
        }
    }
    while (depth > 0) NLA_FREE(key[--depth]);
    if (rc) yaml_free(y);
    return rc;
}

/* A flow list of ints "[1, 2, 3]" into out (capacity cap): the count, or -1. */
static int yaml_int_list(const char *s, int32_t *out, int cap) {
    int n = 0;
    s++;
    for (;;) {
        while (*s == ' ') s++;
        if (*s == ']' && n == 0) return s[1] ? -1 : 0;
        const char *b = s;
        while (*s && *s != ',' && *s != ']') s++;
        const char *e = s;
        while (e > b && e[-1] == ' ') e--;
        double v;
        if (n == cap || !dec_parse(b, (size_t)(e - b), &v) || v != floor(v) || v < 0 ||
            v > INT32_MAX)
            return -1;
        out[n++] = (int32_t)v;
        if (*s == ']') return s[1] ? -1 : n;
        if (*s != ',') return -1;
        s++;
    }
}

/* --- the sidecar's meaning, with the released pairs' defaults */

static const char nla_default_av_template[] =
    "You are a meticulous AI researcher conducting an important investigation into activation "
    "vectors from a language model. Your overall task is to describe the semantic content of "
    "that activation vector.\n\n"
    "We will pass the vector enclosed in <concept> tags into your context. You must then produce "
    "an explanation for the vector, enclosed within <explanation> tags. The explanation consists "
    "of 2-3 text snippets describing that vector.\n\n"
    "Here is the vector:\n\n<concept>{injection_char}</concept>\n\nPlease provide an explanation.";
static const char nla_default_ar_template[] =
    "Summary of the following text: <text>{explanation}</text> <summary>";

typedef struct {
    int d, layer;
    double injection_scale, mse_scale, baseline;
} nla_release;

/* The released pairs' constants: the one home of the training-set baselines
   (Var of the normalised training vectors) that fve_nrm is measured against. */
static const nla_release nla_releases[] = {
    {3840, 32, 80000.0, 61.96773353931867, 0.0302}, /* kitft/nla-gemma3-12b-L32-{av,ar} */
    {5376, 41, 60000.0, 73.32121111929344, 0.0579}, /* kitft/nla-gemma3-27b-L41-{av,ar} */
};

/* The released pair of width d, or NULL. */
static const nla_release *release_of(int d) {
    for (size_t i = 0; i < sizeof nla_releases / sizeof *nla_releases; i++)
        if (nla_releases[i].d == d) return &nla_releases[i];
    return NULL;
}

/* The training-set baseline of fve_nrm for d-wide vectors: the released
   pair's of that width, else the 12B pair's. */
static double release_baseline(int d) {
    const nla_release *r = release_of(d);
    return r ? r->baseline : nla_releases[0].baseline;
}

struct nla_sidecar {
    nla_meta pub;        /* what nla_model_get_meta copies out */
    char *injection_char, *av_template, *ar_template, *base_checkpoint;
    int32_t *av_prompt;  /* [av_prompt_len] AV prompt ids */
    wmat value_head;     /* AR: [d, d] */
    nla_st *vh_st;
};

static void sidecar_free(struct nla_sidecar *sc) {
    if (!sc) return;
    NLA_FREE(sc->injection_char); NLA_FREE(sc->av_template); NLA_FREE(sc->ar_template);
    NLA_FREE(sc->base_checkpoint); NLA_FREE(sc->av_prompt);
    nla_st_close(sc->vh_st);
    NLA_FREE(sc);
}

static void note_default(nla_meta *m, const char *what) {
    size_t n = strlen(m->defaulted);
    snprintf(m->defaulted + n, sizeof m->defaulted - n, "%s%s", n ? "," : "", what);
}

/* A numeric field (absent or null: *out untouched, returns 0; 1 if set). */
static nla_status meta_num(const yaml_doc *y, const char *path, double *out, int *set,
                           const char *fn, errbuf *e) {
    const yaml_ent *v = yaml_find(y, path);
    *set = 0;
    if (!v || v->kind == Y_NULL) return NLA_OK;
    if (v->kind != Y_SCALAR || !dec_parse(v->val, strlen(v->val), out))
        return fail(e, NLA_ERR_FORMAT, "%s: line %d: %s must be a number", fn, v->line, path);
    *set = 1;
    return NLA_OK;
}

static nla_status meta_int(const yaml_doc *y, const char *path, int32_t *out, int *set,
                           const char *fn, errbuf *e) {
    double v = 0;
    nla_status rc = meta_num(y, path, &v, set, fn, e);
    if (!rc && *set && (v != floor(v) || v < 0 || v > INT32_MAX)) {
        return fail(e, NLA_ERR_FORMAT, "%s: line %d: %s must be a non-negative integer", fn,
                    yaml_find(y, path)->line, path);
    }
    if (*set) *out = (int32_t)v;
    return rc;
}

/* The string at path (or at alt) as a fresh copy in *out, NULL if absent;
   0 when memory runs out. */
static int meta_str(const yaml_doc *y, const char *path, const char *alt, char **out) {
    const yaml_ent *v = yaml_find(y, path);
    if ((!v || v->kind != Y_SCALAR) && alt) v = yaml_find(y, alt);
    *out = v && v->kind == Y_SCALAR ? xstrndup(v->val, strlen(v->val)) : NULL;
    return !v || v->kind != Y_SCALAR || *out;
}

/* tmpl with every "{name}" replaced by val[0..val_len), as Python's
   str.replace does, in a fresh string; NULL if the placeholder is missing
   (*missing set) or memory runs out. */
static char *fill_template(const char *tmpl, const char *name, const char *val, size_t val_len,
                           int *missing) {
    const size_t nl = strlen(name);
    size_t count = 0;
    for (const char *at = strstr(tmpl, name); at; at = strstr(at + nl, name)) count++;
    *missing = !count;
    if (!count) return NULL;
    char *out = (char *)NLA_MALLOC(strlen(tmpl) + count * val_len + 1), *o = out;
    if (!out) return NULL;
    for (const char *p = tmpl, *at; p; p = at ? at + nl : NULL) {
        at = strstr(p, name);
        size_t keep = at ? (size_t)(at - p) : strlen(p);
        memcpy(o, p, keep);
        o += keep;
        if (at) { memcpy(o, val, val_len); o += val_len; }
    }
    *o = 0;
    return out;
}

/* Builds and checks the AV prompt: the chat template around the AV template
   with the marker character, tokenized without an extra BOS; exactly one
   BOS, and exactly one marker with the pinned neighbours. */
static nla_status sidecar_av_prompt(struct nla_sidecar *sc, const nla_tokenizer *tok, int vocab,
                                    const char *fn, errbuf *e) {
    nla_meta *m = &sc->pub;
    int missing, n_ids = 0;
    int32_t one[4];
    size_t cl = strlen(sc->injection_char), len = 0;
    nla_status rc = nla_tokenize(tok, sc->injection_char, cl, 0, one, 4, &n_ids);
    if (rc == NLA_ERR_NOMEM) return fail(e, rc, "out of memory");
    if (rc || n_ids != 1)
        return fail(e, NLA_ERR_FORMAT, "%s: injection_char '%s' tokenizes to %d ids, not one", fn,
                    sc->injection_char, n_ids);
    if (one[0] != m->marker_id)
        return fail(e, NLA_ERR_FORMAT,
                    "%s: injection_char '%s' is token %d, but injection_token_id is %d", fn,
                    sc->injection_char, one[0], m->marker_id);
    char *content =
        fill_template(sc->av_template, "{injection_char}", sc->injection_char, cl, &missing);
    if (!content)
        return missing
                   ? fail(e, NLA_ERR_FORMAT, "%s: prompt_templates.av has no {injection_char}", fn)
                   : fail(e, NLA_ERR_NOMEM, "out of memory");
    nla_chat_message msg = {"user", content};
    rc = nla_chat_render(&msg, 1, 1, NULL, 0, &len, NULL, 0);
    char *text = rc == NLA_ERR_BUFFER_TOO_SMALL ? (char *)NLA_MALLOC(len + 1) : NULL;
    if (text) rc = nla_chat_render(&msg, 1, 1, text, len + 1, &len, NULL, 0);
    NLA_FREE(content);
    if (!text || rc) { NLA_FREE(text); return fail(e, NLA_ERR_NOMEM, "out of memory"); }
    sc->av_prompt = (int32_t *)xmalloc(nla_tokenize_bound(len), sizeof(int32_t));
    if (!sc->av_prompt ||
        nla_tokenize(tok, text, len, 0, sc->av_prompt, (int)nla_tokenize_bound(len), &n_ids)) {
        NLA_FREE(text);
        return fail(e, NLA_ERR_NOMEM, "out of memory");
    }
    NLA_FREE(text);
    int n_bos = 0, site = -1, n_sites = 0;
    for (int i = 0; i < n_ids; i++) {
        if (sc->av_prompt[i] >= vocab)
            return fail(e, NLA_ERR_FORMAT,
                        "%s: the AV prompt holds token %d, outside the model's %d embedding rows",
                        fn, sc->av_prompt[i], vocab);
        n_bos += sc->av_prompt[i] == tok->bos;
        if (sc->av_prompt[i] == m->marker_id && i > 0 && i + 1 < n_ids &&
            sc->av_prompt[i - 1] == m->marker_left_id &&
            sc->av_prompt[i + 1] == m->marker_right_id) {
            site = i;
            n_sites++;
        }
    }
    if (n_bos != 1 || sc->av_prompt[0] != tok->bos)
        return fail(e, NLA_ERR_FORMAT,
                    "%s: the AV prompt must hold exactly one <bos>, first (it has %d)", fn, n_bos);
    if (n_sites != 1)
        return fail(e, NLA_ERR_FORMAT,
                    "%s: the AV prompt must hold exactly one marker %d between %d and %d "
                    "(it has %d)",
                    fn, m->marker_id, m->marker_left_id, m->marker_right_id, n_sites);
    m->av_prompt_len = n_ids;
    m->av_marker_index = site;
    return NLA_OK;
}

/* Reads dir/nla_meta.yaml (and for an AR dir/value_head.safetensors) into
   m->nla; a folder without a sidecar is a plain model (m->nla == NULL). */
/* The fields of a parsed nla_meta.yaml into sc, with the release defaults
   for those absent, checked against the model; an AR's value head is
   opened here. */
static nla_status sidecar_fields(nla_model *mdl, struct nla_sidecar *sc, const yaml_doc *yd,
                                 const char *fn, errbuf *e) {
    nla_status rc = NLA_OK;
    nla_meta *m = &sc->pub;
    const int d = mdl->cfg.d;
    const nla_release *rel = release_of(d);
    m->present = 1;
    char *role;
    if (!meta_str(yd, "role", NULL, &role)) return fail(e, NLA_ERR_NOMEM, "out of memory");
    if (role && (!strcmp(role, "av") || !strcmp(role, "actor")))
        snprintf(m->role, sizeof m->role, "av");
    else if (role && (!strcmp(role, "ar") || !strcmp(role, "critic")))
        snprintf(m->role, sizeof m->role, "ar");
    else
        rc = fail(e, NLA_ERR_FORMAT, "%s: role must be av or ar (found '%s')", fn,
                  role ? role : "none");
    NLA_FREE(role);
    int set;
    m->d_model = d;
    if (!rc && !(rc = meta_int(yd, "d_model", &m->d_model, &set, fn, e)) && m->d_model != d)
        rc = fail(e, NLA_ERR_FORMAT, "%s: d_model %d, but the model's hidden_size is %d", fn,
                  m->d_model, d);
    if (!rc && !(rc = meta_int(yd, "extraction_layer_index", &m->layer, &set, fn, e)) && !set) {
        rc = meta_int(yd, "critic.extraction_layer_index", &m->layer, &set, fn, e);
        if (!rc && !set) {
            if (rel) { m->layer = rel->layer; note_default(m, "extraction_layer_index"); }
            else if (!strcmp(m->role, "ar")) {
                m->layer = mdl->cfg.n_layers - 1;
                note_default(m, "extraction_layer_index");
            } else rc = fail(e, NLA_ERR_FORMAT, "%s: extraction_layer_index is missing", fn);
        }
    }
    if (!rc &&
        !(rc = meta_num(yd, "extraction.injection_scale", &m->injection_scale, &set, fn, e)) &&
        !set && rel) {
        m->injection_scale = rel->injection_scale;
        note_default(m, "injection_scale");
    }
    if (!rc && !(m->injection_scale >= 0 && is_float(m->injection_scale)))
        rc = fail(e, NLA_ERR_FORMAT,
                  "%s: extraction.injection_scale must be a positive number a float holds", fn);
    if (!rc && !(rc = meta_num(yd, "extraction.mse_scale", &m->mse_scale, &set, fn, e)) && set &&
        !(m->mse_scale > 0 && m->mse_scale <= 1e150))
        rc = fail(e, NLA_ERR_FORMAT,
                  "%s: extraction.mse_scale must be a positive number up to 1e150 (so that the "
                  "scores' squares stay finite)",
                  fn);
    else if (!rc && !set) {
        if (rel) { m->mse_scale = rel->mse_scale; note_default(m, "mse_scale"); }
        else if (!strcmp(m->role, "ar"))
            rc = fail(e, NLA_ERR_FORMAT, "%s: extraction.mse_scale must be a number for an AR", fn);
    }
    m->fve_baseline = release_baseline(d);
    note_default(m, "fve_baseline");
    m->marker_id = 246566; m->marker_left_id = 236813; m->marker_right_id = 954;
    static const char *const tok_keys[3] = {"tokens.injection_token_id",
                                            "tokens.injection_left_neighbor_id",
                                            "tokens.injection_right_neighbor_id"};
    int32_t *tok_dst[3] = {&m->marker_id, &m->marker_left_id, &m->marker_right_id};
    for (int i = 0; i < 3 && !rc; i++)
        if (!(rc = meta_int(yd, tok_keys[i], tok_dst[i], &set, fn, e)) && !set)
            note_default(m, tok_keys[i] + 7);
    const yaml_ent *suf = yaml_find(yd, "tokens.critic_suffix_ids");
    static const int32_t default_suffix[5] = {1005, 236813, 655, 6011, 236813};
    if (!rc && suf && suf->kind == Y_LIST) {
        if ((m->n_critic_suffix = yaml_int_list(suf->val, m->critic_suffix_ids, 8)) < 0)
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: line %d: critic_suffix_ids must be a list of at most 8 ids", fn,
                      suf->line);
    } else if (!rc && suf && suf->kind != Y_NULL) {
        rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: critic_suffix_ids must be a list or null", fn,
                  suf->line);
    } else if (!rc && !strcmp(m->role, "ar")) {
        memcpy(m->critic_suffix_ids, default_suffix, sizeof default_suffix);
        m->n_critic_suffix = 5;
        note_default(m, "critic_suffix_ids");
    }
    if (!rc && (!meta_str(yd, "tokens.injection_char", NULL, &sc->injection_char) ||
                !meta_str(yd, "base_checkpoint", NULL, &sc->base_checkpoint) ||
                !meta_str(yd, "prompt_templates.av", "prompt_templates.actor", &sc->av_template) ||
                !meta_str(yd, "prompt_templates.ar", "prompt_templates.critic", &sc->ar_template)))
        rc = fail(e, NLA_ERR_NOMEM, "out of memory");
    if (!rc) {
        if (!sc->injection_char) {
            sc->injection_char = xstrndup("\xe3\x88\x9c", 3);
            note_default(m, "injection_char");
        }
        if (!sc->av_template && rel) {
            sc->av_template = xstrndup(nla_default_av_template, sizeof nla_default_av_template - 1);
            note_default(m, "prompt_templates.av");
        }
        if (!sc->ar_template && rel) {
            sc->ar_template = xstrndup(nla_default_ar_template, sizeof nla_default_ar_template - 1);
            note_default(m, "prompt_templates.ar");
        }
        const int av = !strcmp(m->role, "av");
        if (!sc->injection_char || (rel && (!sc->av_template || !sc->ar_template)))
            rc = fail(e, NLA_ERR_NOMEM, "out of memory");
        else if (av && !sc->av_template)
            rc = fail(e, NLA_ERR_FORMAT, "%s: prompt_templates.av is missing", fn);
        else if (!av && !sc->ar_template)
            rc = fail(e, NLA_ERR_FORMAT, "%s: prompt_templates.ar is missing", fn);
        else if (!av && !strstr(sc->ar_template, "{explanation}"))
            rc = fail(e, NLA_ERR_FORMAT, "%s: prompt_templates.ar has no {explanation}", fn);
        else if (av && !(m->injection_scale > 0))
            rc = fail(e, NLA_ERR_FORMAT,
                      "%s: extraction.injection_scale must be a positive number for an AV", fn);
    }
    if (!rc && m->layer >= mdl->cfg.n_layers && !strcmp(m->role, "ar"))
        rc = fail(e, NLA_ERR_FORMAT, "%s: extraction layer %d needs %d AR blocks, the model has %d",
                  fn, m->layer, m->layer + 1, mdl->cfg.n_layers);
    if (!rc && !strcmp(m->role, "av") && mdl->tok)
        rc = sidecar_av_prompt(sc, mdl->tok, mdl->cfg.vocab, fn, e);
    if (!rc && !strcmp(m->role, "ar")) { /* the value head: tensor "weight" [d, d] */
        char *vh = path_join(mdl->dir, "value_head.safetensors");
        if (!vh) rc = fail(e, NLA_ERR_NOMEM, "out of memory");
        else if (!file_exists(vh))
            rc = fail(e, NLA_ERR_IO, "%s: missing (an AR needs its value head)", vh);
        else if (!(rc = st_open(vh, mdl->no_mmap, &sc->vh_st, e))) {
            int i = nla_st_find(sc->vh_st, "weight");
            if (i < 0) rc = fail(e, NLA_ERR_FORMAT, "%s: no tensor 'weight'", vh);
            else if (!(rc = bind_shape(sc->vh_st, &sc->vh_st->t[i], d, d,
                                       "hidden_size x hidden_size", e)) &&
                     !(rc = bind_dtype(sc->vh_st, &sc->vh_st->t[i], &sc->value_head.dt, e))) {
                sc->value_head.p = sc->vh_st->t[i].data;
                sc->value_head.rows = sc->value_head.cols = d;
                m->has_value_head = 1;
            }
        }
        NLA_FREE(vh);
    }
    return rc;
}

static nla_status sidecar_load(nla_model *mdl, errbuf *e) {
    char *fn = path_join(mdl->dir, "nla_meta.yaml"), *txt = NULL;
    size_t n;
    yaml_doc y;
    memset(&y, 0, sizeof y);
    if (!fn) return fail(e, NLA_ERR_NOMEM, "out of memory");
    if (!file_exists(fn)) { NLA_FREE(fn); return NLA_OK; }
    struct nla_sidecar *sc = (struct nla_sidecar *)NLA_CALLOC(1, sizeof *sc);
    nla_status rc =
        sc ? read_file(fn, &txt, &n, NLA_MAX_SIDECAR, e) : fail(e, NLA_ERR_NOMEM, "out of memory");
    if (!rc) rc = yaml_parse(txt, n, fn, &y, e);
    if (!rc) rc = sidecar_fields(mdl, sc, &y, fn, e);
    yaml_free(&y);
    NLA_FREE(txt);
    NLA_FREE(fn);
    if (rc) sidecar_free(sc);
    else mdl->nla = sc;
    return rc;
}

void nla_model_get_meta(const nla_model *mdl, nla_meta *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!mdl || !mdl->nla) return;
    *out = mdl->nla->pub;
    out->injection_char = mdl->nla->injection_char;
    out->av_template = mdl->nla->av_template;
    out->ar_template = mdl->nla->ar_template;
    out->base_checkpoint = mdl->nla->base_checkpoint;
    out->av_prompt = mdl->nla->av_prompt;
}

/* --- extract */

typedef struct {
    int layer, n_pos, d;
    const int32_t *pos; /* NULL: every row */
    float *out;
} extract_ctx;

static int extract_hook(void *user, int layer, int pos0, int n_rows, int d, float *resid) {
    extract_ctx *x = (extract_ctx *)user;
    if (layer != x->layer) return 0;
    for (int i = 0; i < x->n_pos; i++) {
        int p = x->pos ? x->pos[i] : i;
        if (p >= pos0 && p < pos0 + n_rows)
            memcpy(x->out + (size_t)i * d, resid + (size_t)(p - pos0) * d,
                   (size_t)d * sizeof(float));
    }
    return 0;
}

nla_status nla_extract(nla_session *s, const int32_t *ids, int n, int layer,
                       const int32_t *positions, int n_pos, float *out) {
    if (!s) return NLA_ERR_ARG;
    const gemma_cfg *c = &s->m->cfg;
    if (layer < 0 || layer >= c->n_layers)
        return fail(&s->err, NLA_ERR_ARG, "nla_extract: layer %d is outside 0..%d", layer,
                    c->n_layers - 1);
    if (!ids || n < 1 || !out || (positions && n_pos < 1))
        return fail(&s->err, NLA_ERR_ARG, "nla_extract: ids, positions and out are required");
    int run = positions ? 0 : n; /* tokens to run: the rows after the last position wait */
    for (int i = 0; positions && i < n_pos; i++) {
        if (positions[i] < 0 || positions[i] >= n)
            return fail(&s->err, NLA_ERR_RANGE, "nla_extract: position %d is outside 0..%d",
                        positions[i], n - 1);
        if (positions[i] >= run) run = positions[i] + 1;
    }
    extract_ctx x = {layer, positions ? n_pos : n, c->d, positions, out};
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = run;
    b.ids = ids;
    b.n_blocks = layer + 1; /* nothing after block K is computed */
    b.hook = extract_hook;
    b.hook_user = &x;
    nla_session_reset(s);
    nla_status rc = nla_forward(s, &b);
    nla_session_reset(s);
    return rc;
}

/* --- verbalize */

/* The AV prompt cache: the prompt's rows before the marker (0..P-1) are the
   same for every vector, so a session computes them once. Its sequence 0
   keeps them between calls, named by the session's prefix tag (the sidecar's
   AV prompt), which anything else that writes the cache clears. Leaves
   sequence 0 holding exactly those P rows: cut back to them when they are
   there, prefilled again when not. */
static nla_status av_prefix_fill(nla_session *s, const struct nla_sidecar *sc) {
    const int P = sc->pub.av_marker_index;
    if (s->prefix == sc->av_prompt && session_truncate(s, 0, P)) return NLA_OK;
    nla_session_reset(s);
    nla_batch bt;
    memset(&bt, 0, sizeof bt);
    bt.n_tokens = P;
    bt.ids = sc->av_prompt;
    return P ? nla_forward(s, &bt) : NLA_OK;
}

nla_status nla_verbalize_batch(nla_session *s, const float *v, int B,
                               const nla_verbalize_params *params, int32_t *ids, int cap,
                               int *n_ids) {
    nla_verbalize_params p;
    memset(&p, 0, sizeof p);
    if (params) p = *params;
    if (!s) return NLA_ERR_ARG;
    const nla_model *m = s->m;
    const struct nla_sidecar *sc = m->nla;
    if (!sc || strcmp(sc->pub.role, "av"))
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_verbalize: %s is not an AV (no nla_meta.yaml with role av)", m->dir);
    if (!sc->av_prompt)
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_verbalize: %s has no tokenizer.json to build the AV prompt", m->dir);
    if (!p.max_new) p.max_new = 200;
    if (!v || !ids || !n_ids || cap < p.max_new || p.max_new < 0)
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_verbalize: v, ids (capacity >= max_new) and n_ids are required");
    if (B < 1 || B > s->n_seq)
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_verbalize: %d vectors, but the session holds %d sequences (n_seq)", B,
                    s->n_seq);
    const int d = m->cfg.d, P = sc->pub.av_marker_index, T = sc->pub.av_prompt_len, R = T - P,
              V = m->cfg.vocab;
    if ((int64_t)T + p.max_new - 1 > s->n_ctx)
        return fail(&s->err, NLA_ERR_RANGE,
                    "nla_verbalize: %d prompt + %d new tokens exceed the context of %d", T,
                    p.max_new, s->n_ctx);
    nla_generate_params g;
    memset(&g, 0, sizeof g);
    g.max_new = p.max_new;
    g.temperature = p.temperature;
    g.top_k = p.top_k;
    g.top_p = p.top_p;
    nla_status rc = check_generate_params(s, &g, ids, n_ids);
    if (rc) return rc;
    for (int q = 0; q < B; q++) n_ids[q] = 0;
    /* the rows from the marker on, per vector: the injected row v * injection_scale / |v|
       (norm in double; zero stays zero), then the prompt's last rows */
    float *rows = (float *)xmalloc((size_t)B * R, (size_t)d * sizeof(float));
    uint64_t *rng = (uint64_t *)xmalloc((size_t)B, sizeof(uint64_t)); /* [B] each vector's stream */
    int32_t *seq = (int32_t *)xmalloc((size_t)B * R + (size_t)B, sizeof(int32_t)),
            *sel = seq ? seq + (size_t)B * R : NULL;
    if (!rows || !seq || !rng) rc = fail(&s->err, NLA_ERR_NOMEM, "nla_verbalize: out of memory");
    for (int q = 0; q < B && !rc && p.seeds; q++) rng[q] = rng_seed(p.seeds[q]);
    for (int q = 0; q < B && !rc; q++) {
        float *r = rows + (size_t)q * R * d;
        const float *vq = v + (size_t)q * d;
        const ptrdiff_t bad = first_nonfinite(vq, (size_t)d);
        if (bad >= 0) {
            rc = fail(&s->err, NLA_ERR_NONFINITE,
                      "nla_verbalize: vector %d holds a non-finite value (%g at element %td)", q,
                      (double)vq[bad], bad);
            break;
        }
        double nrm = 0;
        for (int i = 0; i < d; i++) nrm += (double)vq[i] * vq[i];
        nrm = sqrt(nrm);
        /* the norm clamped at 1e-12, as the reference normalizes: a smaller vector stays small */
        const double k = sc->pub.injection_scale / (nrm > 1e-12 ? nrm : 1e-12);
        if (nla_embed_tokens(m, sc->av_prompt + P, R, r))
            rc = fail(&s->err, NLA_ERR_RANGE,
                      "nla_verbalize: the AV prompt holds ids outside the model's vocabulary");
        for (int i = 0; i < d; i++) r[i] = (float)(vq[i] * k);
        for (int i = 0; i < R; i++) seq[(size_t)q * R + i] = q;
        sel[q] = (q + 1) * R - 1; /* logits at each vector's last prompt row */
    }
    if (!rc) rc = av_prefix_fill(s, sc);
    for (int q = 1; q < B && !rc; q++) session_copy_seq(s, 0, q);
    if (!rc) {
        nla_batch bt;
        memset(&bt, 0, sizeof bt);
        bt.n_tokens = B * R;
        bt.embeds = rows;
        bt.seq = seq;
        bt.logits = s->logits;
        bt.logit_rows = sel;
        bt.n_logit_rows = B;
        rc = nla_forward(s, &bt);
    }
    if (!rc && p.first_logits) memcpy(p.first_logits, s->logits, (size_t)B * V * sizeof(float));
    /* decode every vector together: one row per unfinished sequence, so each
       weight read serves all of them; s->logits holds sequence q's at q * V */
    for (int live = B; !rc && live > 0;) {
        /* every unfinished sequence's next token (finished ones are marked
           negative), the sequences in parallel where each has a stream of
           its own or none (greedy) */
        PARALLEL_FOR(s->ns, (g.temperature <= 0 || p.seeds) && live > 1)
        for (int q = 0; q < B; q++)
            if (n_ids[q] >= 0)
                ids[(size_t)q * cap + n_ids[q]] = session_sample(
                    s, s->logits + (size_t)q * V, &g, p.seeds ? &rng[q] : &s->rng, thread_id());
        int n = 0;
        for (int q = 0; q < B; q++) {
            if (n_ids[q] < 0) continue;
            const int32_t tok = ids[(size_t)q * cap + n_ids[q]++];
            /* the callbacks see every token, the last one too */
            int stop = (B == 1 && p.on_token && p.on_token(p.user, tok)) ||
                       cfg_is_eos(&m->cfg, tok) || n_ids[q] == p.max_new;
            if (p.on_seq_token && p.on_seq_token(p.user, q, tok, stop)) stop = 1;
            if (stop) { n_ids[q] = -n_ids[q]; live--; continue; }
            seq[n] = q; /* the next batch: one row per unfinished vector */
            sel[n++] = tok;
        }
        if (!n) break;
        nla_batch bt;
        memset(&bt, 0, sizeof bt);
        bt.n_tokens = n;
        bt.ids = sel;
        bt.seq = B > 1 ? seq : NULL;
        bt.logits = s->logits;
        bt.all_logits = 1;
        rc = nla_forward(s, &bt);
        for (int i = n - 1; i >= 0 && !rc; i--) /* compact rows -> each sequence's place */
            if (seq[i] != i)
                memmove(s->logits + (size_t)seq[i] * V, s->logits + (size_t)i * V,
                        (size_t)V * sizeof(float));
    }
    for (int q = 0; q < B; q++) n_ids[q] = n_ids[q] < 0 ? -n_ids[q] : n_ids[q];
    NLA_FREE(rows);
    NLA_FREE(rng);
    NLA_FREE(seq);
    /* nla_forward cleared the tag; sequence 0 still starts with the prefix */
    s->prefix = rc ? NULL : sc->av_prompt;
    return rc;
}

nla_status nla_verbalize(nla_session *s, const float *v, const nla_verbalize_params *params,
                         int32_t *ids, int cap, int *n_ids) {
    return nla_verbalize_batch(s, v, 1, params, ids, cap, n_ids);
}

int nla_parse_explanation(const char *raw, size_t len, size_t *start, size_t *n) {
    static const char open[] = "<explanation>", close[] = "</explanation>";
    if (!raw || !start || !n) {
        if (start) *start = 0;
        if (n) *n = 0;
        return 0;
    }
    const char *end = raw + len, *a = NULL, *b = NULL;
    for (const char *p = raw; p + sizeof open - 1 <= end && !a; p++)
        if (!memcmp(p, open, sizeof open - 1)) a = p + sizeof open - 1;
    for (const char *p = a; p && p + sizeof close - 1 <= end && !b; p++)
        if (!memcmp(p, close, sizeof close - 1)) b = p;
    const int parsed = a && b;
    if (!parsed) { a = raw; b = end; } /* unparsed: the whole text, trimmed */
    py_trim(&a, &b);
    *start = (size_t)(a - raw);
    *n = (size_t)(b - a);
    return parsed;
}

nla_status nla_explanation_decode(const nla_model *av, const int32_t *ids, int n_ids, char *raw,
                                  size_t cap, nla_explanation *out) {
    if (out) memset(out, 0, sizeof *out);
    if (!av || !av->tok || !out || n_ids < 0 || (n_ids && !ids) || (cap && !raw))
        return NLA_ERR_ARG;
    if (n_ids > 0 && cfg_is_eos(&av->cfg, ids[n_ids - 1])) n_ids--; /* the text without it */
    nla_status rc = nla_detokenize(av->tok, ids, n_ids, raw, cap, &out->raw_len);
    if (!rc) out->parsed = nla_parse_explanation(raw, out->raw_len, &out->start, &out->len);
    return rc;
}

/* --- reconstruct */

/* The AR's input for explanation i: <bos> + the AR template around the
   trimmed text, as ids in a new array *ids (the caller frees it), *n of
   them, ending in the critic suffix. */
static nla_status ar_tokens(const nla_model *m, const char *expl, int i, int32_t **ids, int *n,
                            errbuf *e) {
    const struct nla_sidecar *sc = m->nla;
    *ids = NULL;
    *n = 0;
    if (!expl) return fail(e, NLA_ERR_ARG, "nla_reconstruct: explanation %d is NULL", i);
    const char *b = expl, *end = b + strlen(b);
    py_trim(&b, &end); /* as training did: <text>foo</text>, never <text> foo </text> */
    int missing;
    char *text = fill_template(sc->ar_template, "{explanation}", b, (size_t)(end - b), &missing);
    size_t tl = text ? strlen(text) : 0;
    nla_status rc = NLA_OK;
    if (!text || !(*ids = (int32_t *)xmalloc(nla_tokenize_bound(tl), sizeof(int32_t))) ||
        nla_tokenize(m->tok, text, tl, NLA_TOKENIZE_BOS, *ids, (int)nla_tokenize_bound(tl), n))
        rc = fail(e, NLA_ERR_NOMEM, "nla_reconstruct: out of memory");
    else if (*n < sc->pub.n_critic_suffix ||
             memcmp(*ids + *n - sc->pub.n_critic_suffix, sc->pub.critic_suffix_ids,
                    sizeof(int32_t) * (size_t)sc->pub.n_critic_suffix))
        rc = fail(e, NLA_ERR_FORMAT,
                  "nla_reconstruct: explanation %d does not end in the critic suffix ids "
                  "after tokenizing",
                  i);
    NLA_FREE(text);
    if (rc) { NLA_FREE(*ids); *ids = NULL; }
    return rc;
}

/* Explanations go through the AR G = min(n_seq, n_batch) at a time, one
   sequence each, in one forward: rows [G explanations' ids, concatenated],
   each at its own positions, so every weight read serves all G. The last
   row of each, after block K, times the value head is its vector. G = 1 is
   the one-at-a-time pass; rows do not meet, so any G gives the same bits. */
nla_status nla_reconstruct(nla_session *s, const char *const *explanations, int n, float *out) {
    if (!s) return NLA_ERR_ARG;
    const nla_model *m = s->m;
    const struct nla_sidecar *sc = m->nla;
    if (!sc || strcmp(sc->pub.role, "ar") || !sc->pub.has_value_head)
        return fail(&s->err, NLA_ERR_ARG,
                    "nla_reconstruct: %s is not an AR "
                    "(nla_meta.yaml with role ar and value_head.safetensors)",
                    m->dir);
    if (!m->tok)
        return fail(&s->err, NLA_ERR_ARG, "nla_reconstruct: %s has no tokenizer.json", m->dir);
    if (n < 1 || !explanations || !out)
        return fail(&s->err, NLA_ERR_ARG, "nla_reconstruct: explanations and out are required");
    const int d = m->cfg.d, G = s->n_seq < s->n_batch ? s->n_seq : s->n_batch;
    /* [G] each explanation's ids */
    int32_t **part = (int32_t **)xcalloc((size_t)G, sizeof(int32_t *));
    /* [G] its last row in the batch */
    int32_t *last = (int32_t *)xmalloc((size_t)G, sizeof(int32_t));
    /* [G, d] those rows after block K */
    float *h = (float *)xmalloc((size_t)G * d, sizeof(float));
    nla_status rc =
        part && last && h ? NLA_OK : fail(&s->err, NLA_ERR_NOMEM, "nla_reconstruct: out of memory");
    for (int i0 = 0; i0 < n && !rc; i0 += G) {
        const int g = n - i0 < G ? n - i0 : G;
        int rows = 0, len = 0;
        for (int q = 0; q < g && !rc; q++) {
            if (!(rc = ar_tokens(m, explanations[i0 + q], i0 + q, &part[q], &len, &s->err)) &&
                len > s->n_ctx)
                rc = fail(&s->err, NLA_ERR_RANGE,
                          "nla_reconstruct: explanation %d is %d tokens, the context is %d", i0 + q,
                          len, s->n_ctx);
            last[q] = (rows += len) - 1;
        }
        /* [rows] each */
        int32_t *ids = rc ? NULL : (int32_t *)xmalloc((size_t)rows * 2, sizeof(int32_t)),
                *seq = ids ? ids + rows : NULL;
        if (!rc && !ids) rc = fail(&s->err, NLA_ERR_NOMEM, "nla_reconstruct: out of memory");
        for (int q = 0, r = 0; q < g && !rc; q++)
            for (int j = 0; r <= last[q]; j++, r++) {
                ids[r] = part[q][j];
                seq[r] = q;
            }
        if (!rc) {
            nla_batch bt;
            memset(&bt, 0, sizeof bt);
            bt.n_tokens = rows;
            bt.ids = ids;
            bt.seq = seq;
            bt.n_blocks = sc->pub.layer + 1; /* no final norm: the raw residual after block K */
            bt.logit_rows = last;
            bt.n_logit_rows = g;
            bt.residual = h;
            nla_session_reset(s);
            if (!(rc = nla_forward(s, &bt)))
                matmul(out + (size_t)i0 * d, h, g, &sc->value_head, &s->mm);
            nla_session_reset(s);
        }
        for (int q = 0; q < g; q++) { NLA_FREE(part[q]); part[q] = NULL; }
        NLA_FREE(ids);
    }
    NLA_FREE(part);
    NLA_FREE(last);
    NLA_FREE(h);
    return rc;
}

#ifndef NLA_NO_EVAL /* used by the study search only (section 14) */
/* The shape of the .npy file at path and the offset of its data, from its
   header alone (for arrays too large to read whole). */
static nla_status npy_probe(const char *path, int64_t shape[2], int *ndim, long *data_off,
                            errbuf *e) {
    enum { MAX_HDR = 10 + 65535 }; /* version 1: a 16-bit header length */
    char *buf = (char *)NLA_MALLOC(MAX_HDR);
    FILE *f = fopen(path, "rb");
    size_t got = buf && f ? fread(buf, 1, MAX_HDR, f) : 0;
    long size = f && !fseek(f, 0, SEEK_END) ? ftell(f) : -1;
    nla_status rc;
    *ndim = 0;
    if (!buf) rc = fail(e, NLA_ERR_NOMEM, "%s: out of memory", path);
    else if (!f || size < 0)
        rc = fail(e, NLA_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    else if (got >= 10 && buf[6] == 1 &&
             10 + ((unsigned char)buf[8] | (size_t)(unsigned char)buf[9] << 8) > got)
        rc = fail(e, NLA_ERR_FORMAT, "%s: header runs past the end of the file", path);
    else if (got >= 10 && buf[6] != 1)
        rc = fail(e, NLA_ERR_UNSUPPORTED, "%s: only .npy version 1 is read in parts", path);
    else /* the header lies within buf; npy_parse checks the sizes against the whole file's */
        rc = npy_parse(path, buf, (size_t)size, NULL, 0, shape, ndim, e);
    if (rc == NLA_ERR_BUFFER_TOO_SMALL || rc == NLA_OK) {
        *data_off = 10 + (long)((unsigned char)buf[8] | (size_t)(unsigned char)buf[9] << 8);
        rc = NLA_OK;
    }
    if (f) fclose(f);
    NLA_FREE(buf);
    return rc;
}
#endif

/* --- score */

/* x / |x| * scale into y (double); 0 when x is all zeros: it has no
   direction to rescale (a row never written), so it cannot be scored. */
static int normalise(const float *x, int d, double scale, double *y) {
    double n = 0;
    for (int i = 0; i < d; i++) n += (double)x[i] * x[i];
    if (!(n > 0)) return 0;
    const double k = scale / sqrt(n);
    for (int i = 0; i < d; i++) y[i] = x[i] * k;
    return 1;
}

nla_status nla_score(const float *v, const float *r, int d, double mse_scale, double baseline,
                     nla_scores *out) {
    if (!v || !r || !out || d < 1 || !(mse_scale > 0) || !isfinite(mse_scale) ||
        !isfinite(baseline))
        return NLA_ERR_ARG;
    if (first_nonfinite(v, (size_t)d) >= 0 || first_nonfinite(r, (size_t)d) >= 0)
        return NLA_ERR_NONFINITE;
    double *a = (double *)xmalloc((size_t)d, 2 * sizeof(double));
    if (!a) return NLA_ERR_NOMEM;
    double *b = a + d, mse = 0, dot = 0, na = 0, nb = 0;
    if (!normalise(r, d, mse_scale, a) || !normalise(v, d, mse_scale, b)) {
        NLA_FREE(a);
        return NLA_ERR_ARG;
    }
    for (int i = 0; i < d; i++) {
        mse += (a[i] - b[i]) * (a[i] - b[i]);
        dot += (double)v[i] * r[i];
        na += (double)r[i] * r[i];
        nb += (double)v[i] * v[i];
    }
    NLA_FREE(a);
    const double fve = baseline > 0 ? 1 - mse / d / baseline : 0;
    if (!isfinite(mse) || !isfinite(fve)) return NLA_ERR_NONFINITE; /* a huge mse_scale */
    out->mse_nrm = mse / d;
    out->cos = dot / sqrt(na * nb);
    out->fve_nrm = baseline > 0 ? fve : NAN;
    return NLA_OK;
}

nla_status nla_baseline(const float *v, int n, int d, double mse_scale, double *out) {
    if (!v || !out || n < 1 || d < 1 || !(mse_scale > 0) || !isfinite(mse_scale))
        return NLA_ERR_ARG;
    if (first_nonfinite(v, (size_t)n * d) >= 0) return NLA_ERR_NONFINITE;
    double *mu = (double *)xcalloc((size_t)d, 2 * sizeof(double));
    if (!mu) return NLA_ERR_NOMEM;
    double *x = mu + d, acc = 0;
    for (int k = 0; k < n; k++) {
        if (!normalise(v + (size_t)k * d, d, mse_scale, x)) {
            NLA_FREE(mu);
            return NLA_ERR_ARG;
        }
        for (int i = 0; i < d; i++) mu[i] += x[i] / n;
    }
    for (int k = 0; k < n; k++) {
        normalise(v + (size_t)k * d, d, mse_scale, x);
        for (int i = 0; i < d; i++) acc += (x[i] - mu[i]) * (x[i] - mu[i]);
    }
    NLA_FREE(mu);
    if (!isfinite(acc)) return NLA_ERR_NONFINITE; /* a huge mse_scale */
    *out = acc / ((double)n * d);
    return NLA_OK;
}

/* --- steer and cross-score */

nla_status nla_steer(const float *v, const float *dir, int d, nla_steer_mode mode, double r,
                     float *out) {
    if (!v || !dir || !out || d < 1 || (unsigned)mode > NLA_STEER_SUBTRACT || !isfinite(r))
        return NLA_ERR_ARG;
    if (mode == NLA_STEER_PATCH) {
        if (first_nonfinite(dir, (size_t)d) >= 0) return NLA_ERR_NONFINITE;
        memmove(out, dir, sizeof(float) * (size_t)d);
        return NLA_OK;
    }
    double vv = 0, dd = 0, vd = 0;
    for (int i = 0; i < d; i++) {
        vv += (double)v[i] * v[i];
        dd += (double)dir[i] * dir[i];
        vd += (double)v[i] * dir[i];
    }
    if (!(dd > 0) || !isfinite(dd)) return NLA_ERR_ARG;
    /* out = v + k dir: add k = r |v| / |dir|; subtract k = -(v . dir) / |dir|^2 */
    const double k = mode == NLA_STEER_ADD ? r * sqrt(vv) / sqrt(dd) : -vd / dd;
    for (int i = 0; i < d; i++) /* first: out may be v */
        if (!isfinite((float)(v[i] + k * dir[i]))) return NLA_ERR_NONFINITE;
    for (int i = 0; i < d; i++) out[i] = (float)(v[i] + k * dir[i]);
    return NLA_OK;
}

nla_status nla_score_cross(const float *v, const float *r, int n, int d, double mse_scale,
                           float *matrix, int *rank, nla_cross_scores *out) {
    if (!v || !r || !out || n < 1 || d < 1 || !(mse_scale > 0) || !isfinite(mse_scale))
        return NLA_ERR_ARG;
    if (first_nonfinite(v, (size_t)n * d) >= 0 || first_nonfinite(r, (size_t)n * d) >= 0)
        return NLA_ERR_NONFINITE;
    /* every vector normalised once [n, d], one reconstruction at a time [d] */
    double *b = (double *)xmalloc((size_t)n + 1, sizeof(double) * (size_t)d),
           *a = b + (size_t)n * d;
    long closest = 0, ranks = 0;
    if (!b) return NLA_ERR_NOMEM;
    for (int j = 0; j < n; j++)
        if (!normalise(v + (size_t)j * d, d, mse_scale, b + (size_t)j * d) ||
            !normalise(r + (size_t)j * d, d, mse_scale, a)) {
            NLA_FREE(b);
            return NLA_ERR_ARG;
        }
    for (int i = 0; i < n; i++) {
        double own = 0;
        int k = 1;
        normalise(r + (size_t)i * d, d, mse_scale, a);
        for (int t = 0; t < d; t++)
            own += (a[t] - b[(size_t)i * d + t]) * (a[t] - b[(size_t)i * d + t]);
        for (int j = 0; j < n; j++) {
            const double *bj = b + (size_t)j * d;
            double m = 0; /* the sum in nla_score's order: the diagonal is its mse_nrm */
            for (int t = 0; t < d; t++) m += (a[t] - bj[t]) * (a[t] - bj[t]);
            if (!isfinite(m)) { /* a huge mse_scale */
                NLA_FREE(b);
                return NLA_ERR_NONFINITE;
            }
            if (matrix) matrix[(size_t)i * n + j] = (float)(m / d);
            k += j != i && !(m > own);
        }
        if (rank) rank[i] = k;
        closest += k == 1;
        ranks += k;
    }
    NLA_FREE(b);
    out->own_closest = (double)closest / n;
    out->mean_rank = (double)ranks / n;
    return NLA_OK;
}

/* --- explanations: best of N, per-part scores, trust flags (nla explain and nla eval)

   Best of N: N sampled explanations per vector, each reconstructed by the
   AR; the one of lowest mse_nrm is kept. The AR that picks is the AR that
   scores, so the chosen score is optimistic against an independent judge.
   Each text is decoded from its own stream (ex_seed: the run's seed, the
   sample and the candidate), so batches, resumes and shards agree. */

/* The next paragraph of [*p, end) (a run of lines that are not blank) as
   [b, *e); NULL when there is none. Moves *p past it. */
static const char *ev_paragraph(const char **p, const char *end, const char **e) {
    const char *b = *p, *q;
    while (b < end && (*b == ' ' || *b == '\t' || *b == '\r' || *b == '\n')) b++;
    if (b == end) return NULL;
    for (*e = b; *e < end; (*e)++) {
        if (**e != '\n') continue;
        for (q = *e + 1; q < end && (*q == ' ' || *q == '\t' || *q == '\r'); q++) {}
        if (q == end || *q == '\n') break;
    }
    *p = *e;
    return b;
}

/* One AV text of a vector: the raw decoded text (without the stop token),
   the explanation in it (trimmed) and its scores. */
typedef struct {
    char *raw, *ex;
    size_t raw_len;
    int32_t *ids;  /* [n_ids] the ids the AV wrote (a stop token included) */
    int n_ids;
    int parsed;    /* <explanation>...</explanation> found */
    int truncated; /* max_new ids without a stop token */
    nla_scores sc;
} ex_cand;

/* Reconstructs texts ex[0..n) with the AR session s, G = n_seq at a time
   into rec [G, d], and scores text t against vector v[of[t]] into *sc[t];
   after each group, keep(user, t0, g, rec) (optional) sees the group. */
typedef void (*ex_keep_fn)(void *user, int t0, int g, const float *rec);
static nla_status ex_score_texts(nla_session *s, const char *const *ex, int n, const float *v,
                                 const int *of, nla_scores *const *sc, double mse_scale,
                                 double baseline, ex_keep_fn keep, void *user, errbuf *e) {
    const int d = s->m->cfg.d, G = s->n_seq;
    float *rec = (float *)xmalloc((size_t)G, (size_t)d * sizeof(float));
    nla_status rc = rec ? NLA_OK : fail(e, NLA_ERR_NOMEM, "out of memory");
    for (int t0 = 0; t0 < n && !rc; t0 += G) {
        const int g = n - t0 < G ? n - t0 : G;
        if ((rc = nla_reconstruct(s, ex + t0, g, rec)) != NLA_OK)
            rc = fail(e, rc, "%s", nla_session_errmsg(s));
        for (int q = 0; q < g && !rc; q++)
            if ((rc = nla_score(v + (size_t)of[t0 + q] * d, rec + (size_t)q * d, d, mse_scale,
                                baseline, sc[t0 + q])) != NLA_OK)
                rc = fail(e, rc, "text %d: cannot be scored (%s: %s)", t0 + q, nla_strerror(rc),
                          rc == NLA_ERR_NONFINITE
                              ? "a NaN or Inf in the vector or its reconstruction, or a score "
                                "beyond a double's range"
                              : "the vector or its reconstruction is all zeros, or the "
                                "baseline is not finite");
        if (!rc && keep) keep(user, t0, g, rec);
    }
    NLA_FREE(rec);
    return rc;
}

/* Per-part scores (nla_part_scores): an explanation's paragraphs
   (ev_paragraph), each reconstructed alone, and each prefix. The whole
   text (the last prefix; the part of a one-paragraph text) keeps the score
   it has. */
#define EX_MAX_PARTS NLA_MAX_PARTS
typedef nla_part_scores ex_parts;

/* The spans [b[j], e[j]) of the parts of ex; returns their number. */
static int ex_split(const char *ex, const char **b, const char **e) {
    const char *p = ex, *end = ex + strlen(ex), *pb, *pe = NULL;
    int n = 0;
    while ((pb = ev_paragraph(&p, end, &pe)) != NULL) {
        if (n == EX_MAX_PARTS) e[n - 1] = pe;
        else { b[n] = pb; e[n++] = pe; }
    }
    return n;
}

/* The parts of the chosen explanation of each of n vectors v [n, d]
   (cand[i * M + best[i]]) into out[i], reconstructed by the AR session s. */
static nla_status ex_score_parts(nla_session *s, const float *v, int n, const ex_cand *cand, int M,
                                 const int *best, double mse_scale, double baseline, ex_parts *out,
                                 errbuf *e) {
    const size_t cap = (size_t)n * (2 * EX_MAX_PARTS - 1);
    char **txt = (char **)xcalloc(cap + 1, sizeof(char *));
    nla_scores **sc = (nla_scores **)xmalloc(cap + 1, sizeof(nla_scores *));
    int *of = (int *)xmalloc(cap + 1, sizeof(int)), T = 0;
    nla_status rc = txt && sc && of ? NLA_OK : fail(e, NLA_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !rc; i++) {
        const char *b[EX_MAX_PARTS], *en[EX_MAX_PARTS];
        const ex_cand *c = &cand[i * M + best[i]];
        ex_parts *p = &out[i];
        p->n = ex_split(c->ex, b, en);
        for (int j = 0; j < p->n && !rc; j++) {
            p->part[j] = p->prefix[j] = c->sc;
            for (int k = 0; k < 2 && p->n > 1; k++) { /* part j alone; the prefix through j */
                const char *from = k ? b[0] : b[j];
                if (k && j == p->n - 1) continue; /* the last prefix is the whole */
                if (!(txt[T] = xstrndup(from, (size_t)(en[j] - from)))) {
                    rc = fail(e, NLA_ERR_NOMEM, "out of memory");
                    break;
                }
                sc[T] = k ? &p->prefix[j] : &p->part[j];
                of[T++] = i;
            }
        }
    }
    if (!rc && T)
        rc = ex_score_texts(s, (const char *const *)txt, T, v, of, sc, mse_scale, baseline, NULL,
                            NULL, e);
    for (size_t t = 0; txt && t < cap; t++) NLA_FREE(txt[t]);
    NLA_FREE(txt);
    NLA_FREE(sc);
    NLA_FREE(of);
    return rc;
}

nla_status nla_score_parts(nla_session *s, const float *v, const char *explanation, double baseline,
                           nla_part_scores *out) {
    ex_cand c;
    nla_scores *sc = &c.sc;
    const int of = 0, best = 0;
    const struct nla_sidecar *sc_ar = s ? s->m->nla : NULL;
    if (!s) return NLA_ERR_ARG;
    if (!v || !explanation || !out)
        return fail(&s->err, NLA_ERR_ARG, "nla_score_parts: v, explanation and out are required");
    if (!sc_ar || strcmp(sc_ar->pub.role, "ar"))
        return fail(&s->err, NLA_ERR_ARG, "nla_score_parts: %s is not an AR", s->m->dir);
    errbuf e; /* the session's message is read while composing this one */
    memset(&c, 0, sizeof c);
    c.ex = (char *)(uintptr_t)explanation;
    nla_status rc = ex_score_texts(s, &explanation, 1, v, &of, &sc, sc_ar->pub.mse_scale, baseline,
                                   NULL, NULL, &e);
    if (!rc) rc = ex_score_parts(s, v, 1, &c, 1, &best, sc_ar->pub.mse_scale, baseline, out, &e);
    return rc ? fail(&s->err, rc, "nla_score_parts: %s", e.msg) : NLA_OK;
}

#if !defined(NLA_NO_EVAL) || defined(NLA_MAIN) /* the rest: nla explain and nla eval */

/* v in a field of `width` with `prec` decimals (as a percentage where pct),
   or "-" where it does not apply (not finite): a share of no rows, a mean
   of none, a score of a vector of all zeros. */
static const char *fixed_or_dash(char *buf, size_t cap, int width, int prec, double v, int pct) {
    if (!isfinite(v)) snprintf(buf, cap, "%*s", width + pct, "-");
    else if (pct) snprintf(buf, cap, "%*.*f%%", width, prec, 100 * v);
    else snprintf(buf, cap, "%*.*f", width, prec, v);
    return buf;
}

/* A copy of a model's sidecar that outlives the model: its borrowed
   pointers (templates, prompt ids, base checkpoint) go with the model, so
   they are cleared; *random (when not NULL) becomes 1 where the base
   checkpoint names a random one. */
static void meta_detach(nla_meta *m, int *random) {
    if (random) *random |= m->base_checkpoint && strstr(m->base_checkpoint, "random");
    m->injection_char = m->av_template = m->ar_template = m->base_checkpoint = NULL;
    m->av_prompt = NULL;
}

/* Text made by render(b, ctx) into an sbuf, as a heap string: rendered once
   to measure, once to write. *len (when not NULL) gets its length; NULL
   when out of memory. */
typedef void (*ev_render_fn)(sbuf *b, const void *ctx);
static char *ev_render(ev_render_fn render, const void *ctx, size_t *len) {
    sbuf b = {NULL, 0, 0};
    render(&b, ctx);
    b.cap = b.len + 1;
    if (!(b.out = (char *)NLA_MALLOC(b.cap))) return NULL;
    b.len = 0;
    render(&b, ctx);
    b.out[b.len] = 0;
    if (len) *len = b.len;
    return b.out;
}

typedef struct {
    const char *s;
    size_t n;
} str_span;

static void render_json_literal(sbuf *b, const void *ctx) {
    const str_span *x = (const str_span *)ctx;
    json_put_string(b, x->s, x->n);
}

/* s[0..n) as a heap JSON string literal, its length in *len (when not
   NULL); NULL when out of memory. */
static char *json_literal(const char *s, size_t n, size_t *len) {
    const str_span x = {s, n};
    return ev_render(render_json_literal, &x, len);
}

/* Special tokens (never sampled with skip_special): added tokens written
   <...> (<bos>, <start_of_turn>, <unused0>), not the added newline runs. */
static int ev_special(const nla_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_ids || !(t->flags[id] & TOK_ADDED)) return 0;
    const char *p = t->arena + t->piece[id].off;
    const uint32_t n = t->piece[id].len;
    return n >= 3 && p[0] == '<' && p[n - 1] == '>';
}

/* The degenerate templates and failures the released AVs are known for
   (README.md, nla eval, describes them). */
enum { T_SINK, T_FALLBACK, T_CJK, T_NEWLINES, T_UNPARSED, T_COUNT };
static int ev_is_cjk(uint32_t c) {
    return (c >= 0x2e80 && c <= 0x9fff) || (c >= 0xac00 && c <= 0xd7af) ||
           (c >= 0xf900 && c <= 0xfaff) || (c >= 0xff00 && c <= 0xffef);
}

static void ev_templates(const char *ex, const char *raw, int parsed, int *flag) {
    const char *t = *ex ? ex : raw;
    size_t n = strlen(t);
    int cjk = 0, other = 0;
    for (size_t i = 0; i < n;) {
        int k = utf8_char_len((const unsigned char *)t + i, n - i);
        if (k < 1) { i++; other++; continue; }
        if (ev_is_cjk(utf8_cp((const unsigned char *)t + i, k))) cjk++;
        else if (!py_space(utf8_cp((const unsigned char *)t + i, k))) other++;
        i += (size_t)k;
    }
    flag[T_SINK] = strstr(ex, "Fragmented, incoherent academic text") != NULL;
    flag[T_FALLBACK] =
        strstr(ex, "research paper") || strstr(ex, "Fibonacci") || strstr(ex, "Kalman");
    flag[T_CJK] = cjk > 0 && cjk >= other;
    flag[T_NEWLINES] = strstr(raw, "\n\n\n") != NULL;
    flag[T_UNPARSED] = !parsed;
}


static void ex_cand_free(ex_cand *c) {
    NLA_FREE(c->raw);
    NLA_FREE(c->ex);
    NLA_FREE(c->ids);
    c->raw = c->ex = NULL;
    c->ids = NULL;
}

/* What is decoded for each vector: n_cand sampled candidates (c = 0 ..
   n_cand-1), then, when `greedy`, the greedy explanation (c = n_cand):
   M = n_cand + greedy texts, at cand[i * M + c]. */
typedef struct {
    int n_cand, greedy, batch, max_new, top_k;
    float temperature, top_p;
    uint64_t seed;
} ex_spec;

/* The stream of candidate c of sample idx in a run seeded with seed
   (candidate 0: the one stream per sample of a run without best-of). */
static uint64_t ex_seed(uint64_t seed, long idx, int c) {
    return (seed + 1) * 0x9e3779b97f4a7c15ull + (uint64_t)idx + (uint64_t)c * 0xbf58476d1ce4e5b9ull;
}

/* c from n ids of the AV av (max_new at most): the ids, the explanation
   step (nla_explanation_decode), the explanation copied out of the text. */
static nla_status ex_from_ids(const nla_model *av, const int32_t *id, int n, int max_new,
                              ex_cand *c, errbuf *e) {
    nla_explanation x;
    ex_cand_free(c);
    c->truncated = n >= max_new && !cfg_is_eos(&av->cfg, id[n - 1]);
    nla_explanation_decode(av, id, n, NULL, 0, &x);
    if (!(c->raw = (char *)NLA_MALLOC(x.raw_len + 1)) ||
        !(c->ids = (int32_t *)xmalloc((size_t)n + 1, sizeof(int32_t))))
        return fail(e, NLA_ERR_NOMEM, "out of memory");
    memcpy(c->ids, id, (size_t)n * sizeof(int32_t));
    if (nla_explanation_decode(av, id, n, c->raw, x.raw_len + 1, &x))
        return fail(e, NLA_ERR_RANGE, "the AV wrote an id outside the vocabulary");
    c->raw_len = x.raw_len;
    c->n_ids = n;
    c->parsed = x.parsed;
    return (c->ex = xstrndup(c->raw + x.start, x.len)) != NULL
               ? NLA_OK
               : fail(e, NLA_ERR_NOMEM, "out of memory");
}

/* Called with each token of text `item` (its place in cand) as it is
   decoded, `last` on its final one; nonzero cancels (NLA_ERR_CANCELLED). */
typedef int (*ex_token_fn)(void *user, int item, int32_t token, int last);

typedef struct {
    ex_token_fn fn;
    void *user;
    const int *item; /* [B] the batch's texts */
    int cancel;      /* fn asked to stop: every sequence stops at its next token */
} ex_relay;

static int ex_relay_token(void *user, int q, int32_t token, int last) {
    ex_relay *r = (ex_relay *)user;
    if (!r->cancel && r->fn(r->user, r->item[q], token, last)) r->cancel = 1;
    return r->cancel;
}

/* The M texts of each of n vectors v [n, d] (sample numbers idx[n]) into
   cand [n * M], decoded by the AV session s up to sp->batch at a time:
   the greedy texts first, then the sampled ones (a batch shares one
   temperature), each sampled one from its own stream. */
static nla_status ex_verbalize(nla_session *s, const float *v, const long *idx, int n,
                               const ex_spec *sp, ex_cand *cand, ex_token_fn on_token,
                               void *user, errbuf *e) {
    const int d = s->m->cfg.d, M = sp->n_cand + sp->greedy, B = sp->batch, W = sp->max_new;
    /* [B, d] the batch's vectors */
    float *vb = (float *)xmalloc((size_t)B, (size_t)d * sizeof(float));
    uint64_t *seeds = (uint64_t *)xmalloc((size_t)B, sizeof(uint64_t));
    int32_t *ids = (int32_t *)xmalloc((size_t)B, (size_t)W * sizeof(int32_t)); /* [B, W] */
    int *n_ids = (int *)xmalloc((size_t)B, 2 * sizeof(int)), *item = n_ids ? n_ids + B : NULL;
    nla_verbalize_params vp;
    nla_status rc = vb && seeds && ids && n_ids ? NLA_OK : fail(e, NLA_ERR_NOMEM, "out of memory");
    memset(&vp, 0, sizeof vp);
    vp.max_new = W;
    vp.top_k = sp->top_k;
    vp.top_p = sp->top_p;
    vp.seeds = seeds;
    ex_relay relay = {on_token, user, item, 0};
    if (on_token) {
        vp.on_seq_token = ex_relay_token;
        vp.user = &relay;
    }
    for (int pass = !sp->greedy; pass < 2 && !rc; pass++) {
        const int per = pass ? sp->n_cand : 1; /* texts per vector in this pass */
        vp.temperature = pass ? sp->temperature : 0;
        for (int k0 = 0; k0 < n * per && !rc; k0 += B) {
            const int nb = n * per - k0 < B ? n * per - k0 : B;
            for (int q = 0; q < nb; q++) {
                const int i = (k0 + q) / per, c = pass ? (k0 + q) % per : sp->n_cand;
                item[q] = i * M + c;
                seeds[q] = ex_seed(sp->seed, idx[i], c);
                memcpy(vb + (size_t)q * d, v + (size_t)i * d, (size_t)d * sizeof(float));
            }
            if ((rc = nla_verbalize_batch(s, vb, nb, &vp, ids, W, n_ids)) != NLA_OK)
                rc = fail(e, rc, "%s", nla_session_errmsg(s));
            if (!rc && relay.cancel) rc = fail(e, NLA_ERR_CANCELLED, "cancelled");
            for (int q = 0; q < nb && !rc; q++)
                rc = ex_from_ids(s->m, ids + (size_t)q * W, n_ids[q], W, &cand[item[q]], e);
        }
    }
    NLA_FREE(vb);
    NLA_FREE(seeds);
    NLA_FREE(ids);
    NLA_FREE(n_ids);
    return rc;
}

/* The choice of each vector's candidate as its texts' scores arrive. */
typedef struct {
    ex_cand *cand;
    int n_cand, M, d;
    int *best;  /* [n] the chosen candidate */
    float *rec; /* [n, d] its reconstruction */
} ex_choice;

static void ex_keep_best(void *user, int t0, int g, const float *rec) {
    ex_choice *x = (ex_choice *)user;
    for (int q = 0; q < g; q++) {
        const int t = t0 + q, i = t / x->M, c = t % x->M;
        if (c >= x->n_cand ||
            (c && !(x->cand[t].sc.mse_nrm < x->cand[i * x->M + x->best[i]].sc.mse_nrm)))
            continue;
        x->best[i] = c;
        memcpy(x->rec + (size_t)i * x->d, rec + (size_t)q * x->d, (size_t)x->d * sizeof(float));
    }
}

/* Reconstructs and scores the M texts of each of n vectors v [n, d] with
   the AR session s, and picks per vector the sampled candidate of lowest
   mse_nrm (the first of equals): best[i], its reconstruction in rec [n, d]. */
static nla_status ex_choose(nla_session *s, const float *v, int n, const ex_spec *sp, ex_cand *cand,
                            double mse_scale, double baseline, int *best, float *rec, errbuf *e) {
    const int M = sp->n_cand + sp->greedy;
    const char **ex = (const char **)xmalloc((size_t)n * M, sizeof(char *));
    nla_scores **sc = (nla_scores **)xmalloc((size_t)n * M, sizeof(nla_scores *));
    int *of = (int *)xmalloc((size_t)n * M, sizeof(int));
    ex_choice x = {cand, sp->n_cand, M, s->m->cfg.d, best, rec};
    nla_status rc = ex && sc && of ? NLA_OK : fail(e, NLA_ERR_NOMEM, "out of memory");
    for (int t = 0; t < n * M && !rc; t++) {
        ex[t] = cand[t].ex;
        sc[t] = &cand[t].sc;
        of[t] = t / M;
    }
    for (int i = 0; i < n; i++) best[i] = 0;
    if (!rc) rc = ex_score_texts(s, ex, n * M, v, of, sc, mse_scale, baseline, ex_keep_best, &x, e);
    NLA_FREE(ex);
    NLA_FREE(sc);
    NLA_FREE(of);
    return rc;
}

/* The longest AR input of the texts cand[0..n) and, with parts, of their
   parts and prefixes, in tokens: the AR session's n_ctx. m: the AR. */
static nla_status ex_ar_ctx(const nla_model *m, const ex_cand *cand, int n, int parts, int *n_ctx,
                            errbuf *e) {
    nla_status rc = NLA_OK;
    *n_ctx = 1;
    for (int t = 0; t < n && !rc; t++) {
        const char *b[EX_MAX_PARTS], *en[EX_MAX_PARTS];
        const int np = parts ? ex_split(cand[t].ex, b, en) : 0;
        for (int j = -1; j < 2 * np && !rc; j++) { /* the whole, then part and prefix j / 2 */
            const char *from = j < 0 ? cand[t].ex : j & 1 ? b[0] : b[j / 2];
            char *txt = j < 0 ? NULL : xstrndup(from, (size_t)(en[j / 2] - from));
            int32_t *ids = NULL;
            int k = 0;
            if (j >= 0 && !txt) rc = fail(e, NLA_ERR_NOMEM, "out of memory");
            else if ((rc = ar_tokens(m, txt ? txt : from, t, &ids, &k, e)) == NLA_OK && k > *n_ctx)
                *n_ctx = k;
            NLA_FREE(ids);
            NLA_FREE(txt);
        }
    }
    return rc;
}

/* Trust flags of a row (README, "Trust flags"). */
enum {
    F_UNPARSED,
    F_TRUNCATED,
    F_TEMPLATE,
    F_CJK,
    F_REPETITION,
    F_SPECIAL,
    F_NORM,
    F_LOW,
    F_COUNT
};
static const char *const ex_flag_name[F_COUNT] = {"unparsed",     "truncated",  "template",
                                                  "cjk",          "repetition", "special_token",
                                                  "norm_outlier", "low_score"};
#define EX_LOW_COS 0.5       /* low_score: cos below this */
#define EX_NORM_Z 3.5        /* norm_outlier: |robust z| above this (Iglewicz and Hoaglin) */
#define EX_NORM_MIN_ROWS 8   /* norm_outlier: only among at least this many norms */
#define EX_REPEAT_WORDS 4    /* repetition: a run of this many words ... */
#define EX_REPEAT_TIMES 3    /* ... occurring this many times */

/* Does a run of EX_REPEAT_WORDS words (split at spaces) occur
   EX_REPEAT_TIMES times or more in s? The first 1024 words are read. */
static int ex_repeats(const char *s) {
    enum { MAXW = 1024 };
    const char *w[MAXW];
    size_t len[MAXW];
    int n = 0;
    for (const char *p = s; *p && n < MAXW;) {
        while (*p && py_space((unsigned char)*p)) p++;
        if (!*p) break;
        w[n] = p;
        while (*p && !py_space((unsigned char)*p)) p++;
        len[n] = (size_t)(p - w[n]);
        n++;
    }
    for (int i = 0; i + EX_REPEAT_WORDS <= n; i++) {
        int times = 1;
        for (int j = i + 1; j + EX_REPEAT_WORDS <= n && times < EX_REPEAT_TIMES; j++) {
            int k = 0;
            while (k < EX_REPEAT_WORDS && len[i + k] == len[j + k] &&
                   !memcmp(w[i + k], w[j + k], len[i + k]))
                k++;
            times += k == EX_REPEAT_WORDS;
        }
        if (times >= EX_REPEAT_TIMES) return 1;
    }
    return 0;
}

/* The flags (bits F_*) of a row but norm_outlier, which needs the others. */
static unsigned ex_flags(const char *ex, const char *raw, int parsed, int truncated, int special,
                         double cos) {
    int t[T_COUNT];
    ev_templates(ex, raw, parsed, t);
    return (unsigned)!parsed << F_UNPARSED | (unsigned)!!truncated << F_TRUNCATED |
           (unsigned)(t[T_SINK] || t[T_FALLBACK]) << F_TEMPLATE | (unsigned)t[T_CJK] << F_CJK |
           (unsigned)(t[T_NEWLINES] || ex_repeats(ex)) << F_REPETITION |
           (unsigned)!!special << F_SPECIAL | (unsigned)(cos < EX_LOW_COS) << F_LOW;
}

/* A row's fields after its scores: "candidates" and "chosen" (best of N),
   "greedy", "parts", "flags". */
typedef struct {
    const ex_cand *cand; /* the vector's M texts */
    int best_of, n_cand, greedy, best;
    const ex_parts *parts; /* NULL: no parts */
    unsigned flags;
} ex_extra;

static void ev_put_num(sbuf *b, const char *key, double v) {
    char t[96], num[32];
    json_put_num(num, sizeof num, v, 9);
    snprintf(t, sizeof t, ", \"%s\": %s", key, num);
    sb_str(b, t);
}

static void ex_put_scored(sbuf *b, const ex_cand *c) {
    sb_str(b, "{\"explanation\": ");
    json_put_string(b, c->ex, strlen(c->ex));
    ev_put_num(b, "mse_nrm", c->sc.mse_nrm);
    ev_put_num(b, "cos", c->sc.cos);
    sb_str(b, "}");
}

static void ex_extra_render(sbuf *b, const void *ctx) {
    const ex_extra *x = (const ex_extra *)ctx;
    char t[64];
    if (x->best_of) {
        sb_str(b, ", \"candidates\": [");
        for (int c = 0; c < x->n_cand; c++) {
            if (c) sb_str(b, ", ");
            ex_put_scored(b, &x->cand[c]);
        }
        snprintf(t, sizeof t, "], \"chosen\": %d", x->best);
        sb_str(b, t);
    }
    if (x->greedy) {
        sb_str(b, ", \"greedy\": ");
        ex_put_scored(b, &x->cand[x->n_cand]);
    }
    if (x->parts) {
        sb_str(b, ", \"parts\": [");
        for (int j = 0; j < x->parts->n; j++) {
            snprintf(t, sizeof t, "%s{\"part\": %d", j ? ", " : "", j + 1);
            sb_str(b, t);
            ev_put_num(b, "mse_nrm", x->parts->part[j].mse_nrm);
            ev_put_num(b, "cos", x->parts->part[j].cos);
            ev_put_num(b, "prefix_mse_nrm", x->parts->prefix[j].mse_nrm);
            ev_put_num(b, "prefix_cos", x->parts->prefix[j].cos);
            sb_str(b, "}");
        }
        sb_str(b, "]");
    }
    sb_str(b, ", \"flags\": [");
    for (int f = 0, k = 0; f < F_COUNT; f++)
        if (x->flags >> f & 1) {
            snprintf(t, sizeof t, "%s\"%s\"", k++ ? ", " : "", ex_flag_name[f]);
            sb_str(b, t);
        }
    sb_str(b, "]");
}

static int ev_cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy's default percentile: linear interpolation between the order
   statistics around q (n-1), computed as numpy's _lerp does (from the upper
   neighbour when the fraction is >= 1/2), so that results agree to the bit. */
static double ev_quantile(const double *sorted, int n, double q) {
    const double at = q * (n - 1);
    const int i = (int)floor(at);
    const double t = at - i;
    double a, b;
    if (i + 1 >= n) return sorted[n - 1];
    a = sorted[i];
    b = sorted[i + 1];
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

/* Sets F_NORM in flags[i] for the norms far from the others': robust z =
   0.6745 (norm - median) / MAD over the n finite norms (NaN: none). */
static nla_status ex_norm_outliers(const double *norm, int n, unsigned *flags) {
    double *x = (double *)xmalloc((size_t)n + 1, 2 * sizeof(double)), *dev = x ? x + n + 1 : NULL,
           med, mad;
    int m = 0;
    if (!x) return NLA_ERR_NOMEM;
    for (int i = 0; i < n; i++)
        if (isfinite(norm[i])) x[m++] = norm[i];
    qsort(x, (size_t)m, sizeof(double), ev_cmp_dbl);
    med = m ? ev_quantile(x, m, 0.5) : 0;
    for (int i = 0; i < m; i++) dev[i] = fabs(x[i] - med);
    qsort(dev, (size_t)m, sizeof(double), ev_cmp_dbl);
    mad = m ? ev_quantile(dev, m, 0.5) : 0;
    for (int i = 0; i < n && m >= EX_NORM_MIN_ROWS && mad > 0; i++)
        if (isfinite(norm[i]) && fabs(0.6745 * (norm[i] - med) / mad) > EX_NORM_Z)
            flags[i] |= 1u << F_NORM;
    NLA_FREE(x);
    return NLA_OK;
}
#endif

/* ==== 14 Evaluation: the pretraining-vs-chat study ====================== */

#ifndef NLA_NO_EVAL /* left out by -DNLA_NO_EVAL (section 1) */

/* nla eval: explanations and reconstruction errors of
   tokens drawn from documents and chat conversations, then summaries of the
   errors by source, chat role and token kind, of the explanations'
   three-part structure, and of the known degenerate templates (README.md,
   nla eval, describes them).
   The plan is a pure function of the inputs and the parameters: records in
   file order (documents, then chats), each tokenized (chats through the
   chat template, every token labelled with its role), cut to max_tokens,
   and up to N positions drawn from the seed and the record's number.
   Samples are numbered 0..S-1 in that order (sample_idx), whatever the
   shard and wherever a run was stopped. The results folder holds
     params.json          what decides the results; a rerun must match it
     tokens.jsonl         each record's tokens and sampled positions (report)
     results.jsonl        one row per sample, in sample_idx order
     activations.npy      float32 [S, d]: row sample_idx = the target's vector
     reconstructions.npy  float32 [S, d]: the AR's reconstruction of it
   A row's vectors are written and flushed before its JSONL line, and that
   line, flushed and synced, is the commit record: on resume a torn last
   line is cut off, and vectors without a line count as absent. Shard i/n
   takes the records whose number is i-1 modulo n; its .npy files have all
   S rows (others stay zero), so merging shards is copying rows. */

#define EV_PREVIEW 200 /* characters of text_preview, as the published data */

/* A warning to the caller's callback (a skipped record, named by file and line). */
static void ev_warn(const nla_eval_params *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void ev_warn(const nla_eval_params *p, const char *fmt, ...) {
    char msg[ERR_CAP];
    va_list ap;
    if (!p->warn) return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->warn(p->user, msg);
}

/* s as a heap JSON string literal (NULL when out of memory). */
static char *ev_json_string(const char *s) { return json_literal(s, strlen(s), NULL); }

#define FNV_OFFSET 0xcbf29ce484222325ull /* FNV-1a 64: the start, and the prime */
#define FNV_PRIME 0x100000001b3ull

/* 64-bit FNV-1a of a buffer, continued from h: the fingerprint of an
   input in params.json and of a row's vectors. */
static uint64_t ev_fnv_more(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * FNV_PRIME;
    return h;
}

static uint64_t ev_fnv(const char *s, size_t n) { return ev_fnv_more(FNV_OFFSET, s, n); }

/* --- the plan: records, tokens, sampled positions */

typedef struct {
    char *id;            /* the record's "id" as JSON text: a string literal or a number */
    char *source;        /* "source"; default "document" or "chat" */
    char *preview;       /* the first EV_PREVIEW characters of its text (chats rendered) */
    int chat, line;      /* chat: from the chats file; line: 1-based line there */
    int32_t *ids;        /* [n_ids] tokens, cut to max_tokens */
    unsigned char *role; /* [n_ids] CHAT_* of each token (chats), else NULL */
    int n_ids;
    int32_t *pos;        /* [n_pos] sampled positions, ascending */
    int n_pos;
    long first;          /* sample_idx of pos[0] */
} ev_record;

typedef struct {
    ev_record *rec;
    int n_rec, n_bad;
    long n_samples;
    int *sample_rec; /* [n_samples] record of each sample */
} ev_plan;

static void ev_record_free(ev_record *r) {
    NLA_FREE(r->id); NLA_FREE(r->source); NLA_FREE(r->preview); NLA_FREE(r->ids); NLA_FREE(r->role);
    NLA_FREE(r->pos);
    memset(r, 0, sizeof *r);
}

static void ev_plan_free(ev_plan *pl) {
    for (int i = 0; i < pl->n_rec; i++) ev_record_free(&pl->rec[i]);
    NLA_FREE(pl->rec);
    NLA_FREE(pl->sample_rec);
    memset(pl, 0, sizeof *pl);
}

static const char *const ev_role_name[] = {"bos", "role_marker", "user_content", "asst_content",
                                           "end_of_turn"};

static int ev_cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Labels each token of a rendered chat with the part its first byte is in;
   token offsets are the running sum of decoded lengths. */
static void ev_label_roles(const nla_tokenizer *t, const int32_t *ids, int n,
                           const chat_part *parts, int n_parts, unsigned char *role) {
    size_t off = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        while (k + 1 < n_parts && parts[k + 1].off <= off) k++;
        role[i] = (unsigned char)parts[k].kind;
        nla_detokenize(t, &ids[i], 1, NULL, 0, &len);
        off += len;
    }
}

/* Parses one input line into r (record number r_no seeds its sampling).
   NLA_ERR_FORMAT: a bad record, why says what is wrong; NLA_ERR_NOMEM is
   fatal. */
static nla_status ev_parse_record(const char *line, size_t len, int chat, int r_no,
                                  const nla_tokenizer *tok, const nla_eval_params *p, ev_record *r,
                                  errbuf *why) {
    jdoc d;
    chat_span *sp = NULL;
    chat_part *parts = NULL;
    char *text = NULL;
    size_t tl = 0;
    int n_msg = 0, n_parts = 0, n_all = 0, node;
    nla_status rc;
    memset(r, 0, sizeof *r);
    r->chat = chat;
    /* say where on the line, not "line 1" */
    if ((rc = json_parse(&d, line, len, why, "record")) != NLA_OK) {
        const char *m = strstr(why->msg, ", column ");
        char what[128];
        snprintf(what, sizeof what, "%s", m && (m = strstr(m, ": ")) ? m + 2 : "");
        return rc == NLA_ERR_NOMEM
                   ? rc
                   : fail(why, NLA_ERR_FORMAT, "invalid JSON at column %zu: %s", d.pos + 1, what);
    }
    if (d.node[0].type != J_OBJ) rc = fail(why, NLA_ERR_FORMAT, "not a JSON object");
    node = json_get(&d, 0, "id");
    double num;
    if (!rc && (node < 0 || (d.node[node].type != J_STR && d.node[node].type != J_NUM)))
        rc = fail(why, NLA_ERR_FORMAT, "missing \"id\" (a string or a number)");
    else if (!rc && d.node[node].type == J_NUM && !(json_num(&d, node, &num) && isfinite(num)))
        rc = fail(why, NLA_ERR_FORMAT, "\"id\" %.*s is not a finite number", (int)d.node[node].len,
                  d.src + d.node[node].off);
    if (!rc) {
        if (d.node[node].type == J_NUM)
            r->id = xstrndup(d.src + d.node[node].off, d.node[node].len);
        else {
            char *s = json_strdup(&d, node);
            r->id = s ? ev_json_string(s) : NULL;
            NLA_FREE(s);
        }
        node = json_get(&d, 0, "source");
        if (node >= 0 && d.node[node].type != J_STR)
            rc = fail(why, NLA_ERR_FORMAT, "\"source\" must be a string");
        else
            r->source = node >= 0 ? json_strdup(&d, node)
                                  : xstrndup(chat ? "chat" : "document", chat ? 4 : 8);
        if (!rc && (!r->id || !r->source)) rc = NLA_ERR_NOMEM;
    }
    if (!rc && !chat) { /* a document: {"id", "text", "source"} */
        node = json_get(&d, 0, "text");
        if (node < 0 || d.node[node].type != J_STR)
            rc = fail(why, NLA_ERR_FORMAT, "missing \"text\" (a string)");
        else if (!(text = json_strdup(&d, node))) rc = NLA_ERR_NOMEM;
        else if (!(tl = json_str(&d, node, NULL, 0))) /* a \u0000 is kept, as in chats */
            rc = fail(why, NLA_ERR_FORMAT, "empty \"text\"");
    } else if (!rc) { /* a conversation: {"id", "messages": [{"role", "content"}...]} */
        node = json_get(&d, 0, "messages");
        if (node < 0)
            rc = fail(why, NLA_ERR_FORMAT,
                      "missing \"messages\" (a list of {\"role\", \"content\"})");
        else if ((rc = chat_from_json(&d, node, &sp, &n_msg, why)) == NLA_OK && !n_msg)
            rc = fail(why, NLA_ERR_FORMAT, "\"messages\" is empty");
        if (!rc && !(parts = (chat_part *)xmalloc((size_t)n_msg * 4 + 2, sizeof *parts)))
            rc = NLA_ERR_NOMEM;
        if (!rc && (rc = chat_render(sp, n_msg, 0, NULL, 0, &tl, NULL, NULL, why)) ==
                       NLA_ERR_BUFFER_TOO_SMALL) {
            text = (char *)NLA_MALLOC(tl + 1);
            rc = text ? chat_render(sp, n_msg, 0, text, tl + 1, &tl, parts, &n_parts, why)
                      : NLA_ERR_NOMEM;
        }
        if (rc && rc != NLA_ERR_NOMEM) rc = NLA_ERR_FORMAT;
    }
    if (!rc) { /* tokens (documents get <bos>; a rendered chat starts with it) */
        r->ids = (int32_t *)xmalloc(nla_tokenize_bound(tl), sizeof(int32_t));
        if (!r->ids || nla_tokenize(tok, text, tl, chat ? 0 : NLA_TOKENIZE_BOS, r->ids,
                                    (int)nla_tokenize_bound(tl), &n_all))
            rc = NLA_ERR_NOMEM;
        r->n_ids = n_all < p->max_tokens ? n_all : p->max_tokens;
    }
    if (!rc && chat) {
        if (!(r->role = (unsigned char *)NLA_MALLOC((size_t)r->n_ids))) rc = NLA_ERR_NOMEM;
        else ev_label_roles(tok, r->ids, r->n_ids, parts, n_parts, r->role);
    }
    if (!rc) { /* the preview: the first EV_PREVIEW characters */
        size_t b = 0;
        for (int c = 0; b < tl && c < EV_PREVIEW; c++) {
            int k = utf8_char_len((const unsigned char *)text + b, tl - b);
            b += k > 0 ? (size_t)k : 1;
        }
        if (!(r->preview = xstrndup(text, b))) rc = NLA_ERR_NOMEM;
    }
    node = rc ? -1 : json_get(&d, 0, "positions");
    if (!rc && node >= 0) { /* explicit positions */
        int n = d.node[node].type == J_ARR ? (int)d.node[node].n : -1, k = node + 1;
        if (n < 1)
            rc = fail(why, NLA_ERR_FORMAT,
                      "\"positions\" must be a non-empty list of token positions");
        else if (!(r->pos = (int32_t *)xmalloc((size_t)n, sizeof(int32_t)))) rc = NLA_ERR_NOMEM;
        for (int i = 0; !rc && i < n; i++, k = (int)d.node[k].end) {
            int v;
            if (!json_int(&d, k, &v))
                rc = fail(why, NLA_ERR_FORMAT, "\"positions\"[%d] is not an integer", i);
            else if (v < 0 || v >= r->n_ids)
                rc = fail(why, NLA_ERR_FORMAT,
                          "position %d (\"positions\"[%d]) is not one of the record's %d "
                          "tokens (0..%d%s)",
                          v, i, r->n_ids, r->n_ids - 1,
                          n_all > r->n_ids ? ", cut to max_tokens" : "");
            else r->pos[i] = v;
        }
        if (!rc) {
            qsort(r->pos, (size_t)n, sizeof(int32_t), ev_cmp_i32);
            for (int i = 0; i < n; i++)
                if (!r->n_pos || r->pos[r->n_pos - 1] != r->pos[i]) r->pos[r->n_pos++] = r->pos[i];
        }
    } else if (!rc) { /* up to N positions >= min_position, drawn without replacement */
        const int lo = p->min_position < 0 ? 0 : p->min_position;
        int n = 0;
        uint64_t st =
            (p->seed + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)r_no + 1) * 0xbf58476d1ce4e5b9ull;
        if (!(r->pos = (int32_t *)xmalloc((size_t)r->n_ids, sizeof(int32_t)))) rc = NLA_ERR_NOMEM;
        for (int i = lo; !rc && i < r->n_ids; i++)
            if (!p->skip_special || !ev_special(tok, r->ids[i])) r->pos[n++] = i;
        if (!rc && !n)
            rc = fail(why, NLA_ERR_FORMAT,
                      "too short: %d tokens%s, none to sample at position >= %d%s", n_all,
                      n_all > r->n_ids ? " (cut to max_tokens)" : "", lo,
                      p->skip_special ? " that is not special" : "");
        if (!st) st = 1;
        /* partial Fisher-Yates */
        for (int i = 0; !rc && i < n && i < p->positions_per_record; i++) {
            int j = i + (int)(rng_next(&st) % (uint64_t)(n - i));
            int32_t t = r->pos[i];
            r->pos[i] = r->pos[j];
            r->pos[j] = t;
        }
        if (!rc) {
            r->n_pos = n < p->positions_per_record ? n : p->positions_per_record;
            qsort(r->pos, (size_t)r->n_pos, sizeof(int32_t), ev_cmp_i32);
        }
    }
    if (rc) ev_record_free(r);
    json_free(&d);
    chat_spans_free(sp, n_msg);
    NLA_FREE(parts);
    NLA_FREE(text);
    return rc;
}

/* The ids seen so far: an open-addressing set of record numbers + 1 (0 is
   an empty slot), kept at most half full. Returns the record that already
   holds record i's id, -1 after adding record i, -2 when out of memory. */
static int ev_id_seen(const ev_plan *pl, int **set, int *cap, int i) {
    const char *id = pl->rec[i].id;
    if (2 * (i + 1) > *cap) {
        int nc = *cap ? 2 * *cap : 256, *g = (int *)xcalloc((size_t)nc, sizeof(int));
        if (!g) return -2;
        for (int k = 0; k < *cap; k++)
            if ((*set)[k]) {
                const char *o = pl->rec[(*set)[k] - 1].id;
                size_t h = (size_t)ev_fnv(o, strlen(o)) & (size_t)(nc - 1);
                while (g[h]) h = (h + 1) & (size_t)(nc - 1);
                g[h] = (*set)[k];
            }
        NLA_FREE(*set);
        *set = g;
        *cap = nc;
    }
    size_t h = (size_t)ev_fnv(id, strlen(id)) & (size_t)(*cap - 1);
    for (; (*set)[h]; h = (h + 1) & (size_t)(*cap - 1))
        if (!strcmp(pl->rec[(*set)[h] - 1].id, id)) return (*set)[h] - 1;
    (*set)[h] = i + 1;
    return -1;
}

/* Reads both inputs into the plan; bad records (and repeated ids, which
   would make record_id ambiguous) are reported and skipped. */
static nla_status ev_plan_build(const nla_eval_params *p, const nla_tokenizer *tok, ev_plan *pl,
                                uint64_t fnv[2], errbuf *e) {
    const char *files[2] = {p->docs, p->chats};
    nla_status rc = NLA_OK;
    int cap = 0, *ids = NULL, ids_cap = 0;
    memset(pl, 0, sizeof *pl);
    for (int f = 0; f < 2 && !rc; f++) {
        char *buf = NULL;
        size_t n = 0;
        int line = 0;
        fnv[f] = 0;
        if (!files[f]) continue;
        if ((rc = read_file(files[f], &buf, &n, SIZE_MAX / 2, e)) != NLA_OK) break;
        fnv[f] = ev_fnv(buf, n);
        for (size_t at = 0; at < n && !rc;) {
            const char *s = buf + at, *nl = (const char *)memchr(s, '\n', n - at);
            size_t len = nl ? (size_t)(nl - s) : n - at, k;
            errbuf why;
            at += len + 1;
            line++;
            for (k = 0; k < len && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'); k++) {}
            if (k == len) continue; /* a blank line is no record */
            if (pl->n_rec == cap) {
                ev_record *g =
                    (ev_record *)NLA_REALLOC(pl->rec, sizeof(ev_record) *
                                                          (size_t)(cap = cap ? 2 * cap : 64));
                if (!g) {
                    rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory reading %s", files[f]);
                    break;
                }
                pl->rec = g;
            }
            ev_record *r = &pl->rec[pl->n_rec];
            why.msg[0] = 0;
            rc = ev_parse_record(s, len, f, pl->n_rec, tok, p, r, &why);
            if (rc == NLA_ERR_FORMAT) {
                ev_warn(p, "%s:%d: skipped: %s", files[f], line, why.msg);
                pl->n_bad++;
                rc = NLA_OK;
                continue;
            }
            if (rc) { rc = fail(e, rc, "eval: out of memory reading %s", files[f]); break; }
            r->line = line;
            const int first = ev_id_seen(pl, &ids, &ids_cap, pl->n_rec);
            if (first == -2) {
                ev_record_free(r);
                rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory reading %s", files[f]);
                break;
            }
            if (first >= 0) {
                ev_warn(p, "%s:%d: skipped: id %s is already the id of %s:%d", files[f], line,
                        r->id, files[pl->rec[first].chat], pl->rec[first].line);
                ev_record_free(r);
                pl->n_bad++;
                continue;
            }
            r->first = pl->n_samples;
            pl->n_samples += r->n_pos;
            pl->n_rec++;
            if (p->progress) {
                nla_eval_progress pr;
                memset(&pr, 0, sizeof pr);
                pr.phase = "plan";
                pr.done = pl->n_rec;
                if (p->progress(p->user, &pr)) rc = fail(e, NLA_ERR_CANCELLED, "eval: cancelled");
            }
        }
        NLA_FREE(buf);
    }
    NLA_FREE(ids);
    if (!rc && !(pl->sample_rec = (int *)xmalloc((size_t)pl->n_samples, sizeof(int))))
        rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    for (int i = 0; !rc && i < pl->n_rec; i++)
        for (int j = 0; j < pl->rec[i].n_pos; j++) pl->sample_rec[pl->rec[i].first + j] = i;
    if (rc) ev_plan_free(pl);
    return rc;
}

/* The parameters with defaults filled in, checked. */
static nla_status ev_defaults(const nla_eval_params *in, nla_eval_params *p, errbuf *e) {
    memset(p, 0, sizeof *p);
    if (in) *p = *in;
    if (!p->docs && !p->chats) return fail(e, NLA_ERR_ARG, "eval: give documents, chats or both");
    if (!p->positions_per_record) p->positions_per_record = 1;
    if (!p->min_position) p->min_position = 50;
    if (!p->max_tokens) p->max_tokens = 512;
    if (!p->max_new) p->max_new = 200;
    if (!p->batch) p->batch = 8;
    if (!p->chunk) p->chunk = 256;
    if (!p->shard_count) p->shard_count = 1;
    if (!p->shard_index) p->shard_index = 1;
    if (p->positions_per_record < 1 || p->max_tokens < 1 || p->max_new < 1 || p->batch < 1 ||
        p->chunk < 1 || !(p->temperature >= 0) || !isfinite(p->temperature))
        return fail(
            e, NLA_ERR_ARG,
            "eval: positions_per_record, max_tokens, max_new, batch and chunk must be positive");
    if (p->min_position < NLA_EVAL_FROM_BOS)
        return fail(e, NLA_ERR_ARG, "eval: min_position %d: >= 0, or NLA_EVAL_FROM_BOS (-1)",
                    p->min_position);
    if (p->best_of < 0)
        return fail(e, NLA_ERR_ARG, "eval: best_of must be 0 (off) or a number of candidates");
    if (p->best_of > 1 && p->temperature == 0)
        p->temperature = 1; /* N greedy texts would be one text */
    if (p->shard_count < 1 || p->shard_index < 1 || p->shard_index > p->shard_count)
        return fail(e, NLA_ERR_ARG, "eval: shard %d/%d: the index must be in 1..%d", p->shard_index,
                    p->shard_count, p->shard_count);
    if (p->n_threads < 0 || p->n_threads > 1024)
        return fail(e, NLA_ERR_ARG, "eval: n_threads %d: 0 (OpenMP's default) to 1024",
                    p->n_threads);
    return NLA_OK;
}

/* Does shard i/n (1-based) own record r? */
static int ev_owns(const nla_eval_params *p, int r) {
    return r % p->shard_count == p->shard_index - 1;
}

static long ev_shard_samples(const nla_eval_params *p, const ev_plan *pl) {
    long n = 0;
    for (int r = 0; r < pl->n_rec; r++) n += ev_owns(p, r) ? pl->rec[r].n_pos : 0;
    return n;
}

nla_status nla_eval_plan(const nla_eval_params *params, const nla_tokenizer *tok,
                         nla_eval_counts *out, char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    nla_eval_params p;
    ev_plan pl;
    uint64_t fnv[2];
    nla_status rc;
    e.msg[0] = 0;
    if (out) memset(out, 0, sizeof *out);
    rc = tok && out ? ev_defaults(params, &p, &e)
                    : fail(&e, NLA_ERR_ARG, "nla_eval_plan: a tokenizer and out are required");
    if (!rc) rc = ev_plan_build(&p, tok, &pl, fnv, &e);
    if (!rc) {
        out->records = pl.n_rec;
        out->bad_records = pl.n_bad;
        out->samples = pl.n_samples;
        out->shard_samples = ev_shard_samples(&p, &pl);
        ev_plan_free(&pl);
    }
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- the results folder */

/* The files of a results folder (see the top of this section). */
#define EV_N_FILES 6
static const char *const ev_files[EV_N_FILES] = {
    "params.json", "tokens.jsonl", "results.jsonl", "activations.npy", "reconstructions.npy",
    "eval.lock"};

/* Is path the folder dir's file `name` (with tmp: the temporary file
   name.tmp it is written as, see out_open): that file, or (not there yet)
   that name in that folder? 1 yes, 0 no, -1 out of memory. */
static int ev_is_file(const char *dir, const char *name, int tmp, const char *path) {
    char *f = path_join(dir, name), *p = f && tmp ? tmp_path(f) : f, *pd = dir_of(path);
    const int is = !p || !pd ? -1
                   : same_file(p, path) ||
                         (!strcmp(path_base(path), path_base(p)) && same_file(pd, dir));
    if (p != f) NLA_FREE(p);
    NLA_FREE(f);
    NLA_FREE(pd);
    return is;
}

/* A file updated in place (a results folder's) must be its own: neither a
   symbolic link, which would be followed to another file, nor a file with
   other names (hard links), which updating it would change under those
   names too. NLA_OK where path is such a file or missing. */
static nla_status own_check(const char *path, errbuf *e) {
#ifndef _WIN32
    struct stat sb;
    if (lstat(path, &sb)) return NLA_OK;
    if (S_ISLNK(sb.st_mode))
        return fail(e, NLA_ERR_IO,
                    "%s: a symbolic link, refused: this file is updated in place, never through a "
                    "link (remove the link)",
                    path);
    if (!S_ISREG(sb.st_mode)) return out_check(path, e);
    if (sb.st_nlink > 1)
        return fail(e, NLA_ERR_IO,
                    "%s: has %lu other name(s) (hard links), refused: updating it in place would "
                    "change them too (remove them, or this one)",
                    path, (unsigned long)sb.st_nlink - 1);
#else
    (void)path;
    (void)e;
#endif
    return NLA_OK;
}

#ifndef _WIN32
/* Opens path to update it in place (flags: O_RDWR, or O_WRONLY | O_APPEND,
   with O_CREAT to make it when missing), only where it is its own file
   (own_check: never through a symbolic link): a descriptor, or -1 with the
   reason in e and in errno (ENOENT: missing). */
static int open_own(const char *path, int flags, errbuf *e) {
    const int fd = open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0666);
    struct stat sb;
    const int err = fd < 0 ? errno : fstat(fd, &sb) ? errno : sb.st_nlink > 1 ? EMLINK : 0;
    if (!err) return fd;
    if (fd >= 0) close(fd);
    if (!own_check(path, e)) /* (else it said why) */
        fail(e, NLA_ERR_IO, "%s: cannot open (%s)", path, strerror(err));
    errno = err;
    return -1;
}
#endif

/* open_own as a stream ("r+b", or "ab": appends, made when missing). */
static FILE *fopen_own(const char *path, const char *mode, errbuf *e) {
#ifndef _WIN32
    const int fd = open_own(path, mode[0] == 'a' ? O_WRONLY | O_APPEND | O_CREAT : O_RDWR, e);
    FILE *f = fd < 0 ? NULL : fdopen(fd, mode);
    if (fd >= 0 && !f) {
        const int err = errno;
        close(fd);
        fail(e, NLA_ERR_IO, "%s: cannot open (%s)", path, strerror(err));
        errno = err;
    }
    return f;
#else
    FILE *f = fopen(path, mode);
    const int err = errno;
    if (!f) fail(e, NLA_ERR_IO, "%s: cannot open (%s)", path, strerror(err));
    errno = err;
    return f;
#endif
}

/* Each of the folder's files is its own regular file, or new (own_check). */
static nla_status ev_out_check(const char *dir, errbuf *e) {
    nla_status rc = NLA_OK;
    for (int i = 0; i < EV_N_FILES && !rc; i++) {
        char *f = path_join(dir, ev_files[i]);
        rc = f ? own_check(f, e) : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
        NLA_FREE(f);
    }
    return rc;
}

/* Flushes f and syncs it to the disk (fsync, where there is one); 0 on failure. */
static int ev_sync(FILE *f) {
#ifndef _WIN32
    return !fflush(f) && !NLA_FSYNC(fileno(f));
#else
    return !fflush(f);
#endif
}

/* One writer per results folder: an exclusive fcntl lock on dir/eval.lock,
   which the kernel drops when the holder ends, however it ends (kill -9
   included); the file holds the holder's PID and host for the refusal.
   Two runs in one process exclude each other where the kernel has
   open-file locks (lock_file); without fcntl (Windows) there is none.
   *fd: the lock's descriptor, or -1; ev_unlock releases it. */
static nla_status ev_lock(const char *dir, int *fd, errbuf *e) {
    *fd = -1;
#ifndef _WIN32
    char *path = path_join(dir, "eval.lock"), who[300];
    nla_status rc = NLA_OK;
    if (!path) return fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    if ((*fd = open_own(path, O_RDWR | O_CREAT, e)) < 0) rc = NLA_ERR_IO;
    else if (lock_file(*fd)) {
        const int busy = errno == EACCES || errno == EAGAIN, err = errno;
        long pid = 0;
        char host[256] = "?";
        ssize_t n = busy ? pread(*fd, who, sizeof who - 1, 0) : 0;
        who[n > 0 ? n : 0] = 0;
        if (sscanf(who, "%ld %255s", &pid, host) < 1) pid = 0;
        if (!busy) rc = fail(e, NLA_ERR_IO, "eval: %s: cannot lock (%s)", path, strerror(err));
        else if (pid > 0)
            rc = fail(e, NLA_ERR_BUSY,
                      "eval: %s is held by PID %ld on host %s: another nla eval is writing %s",
                      path, pid, host, dir);
        else
            rc = fail(e, NLA_ERR_BUSY,
                      "eval: %s is held by another process: another nla eval is writing %s", path,
                      dir);
    } else {
        char host[256];
        int n;
        if (gethostname(host, sizeof host)) strcpy(host, "?");
        host[sizeof host - 1] = 0;
        n = snprintf(who, sizeof who, "%ld %s\n", (long)getpid(), host);
        if (ftruncate(*fd, 0) || pwrite(*fd, who, (size_t)n, 0) != n)
            rc = fail(e, NLA_ERR_IO, "eval: %s: cannot write (%s)", path, strerror(errno));
    }
    if (rc && *fd >= 0) close(*fd);
    if (rc) *fd = -1;
    NLA_FREE(path);
    return rc;
#else
    (void)dir;
    (void)e;
    return NLA_OK;
#endif
}

static void ev_unlock(int fd) {
#ifndef _WIN32
    if (fd >= 0) close(fd); /* the lock goes with the descriptor */
#else
    (void)fd;
#endif
}

/* What decides the results, one key per line with "shard" last, so that a
   rerun, a resume and the shards of one study can be compared line by line. */
typedef struct {
    const nla_eval_params *p;
    const ev_plan *pl;
    const uint64_t *fnv, *fp; /* the inputs'; the models' and tokenizer's (ev_run.fp) */
    int d, layer;
    double mse_scale, baseline;
} ev_params_ctx;

static void ev_put_path(sbuf *b, const char *key, const char *v) {
    sb_str(b, key);
    if (v) json_put_string(b, v, strlen(v));
    else sb_str(b, "null");
}

static void ev_params_render(sbuf *b, const void *ctx) {
    static const char *const quant[] = {"none", "q8_0", "q4_0"};
    const ev_params_ctx *x = (const ev_params_ctx *)ctx;
    const nla_eval_params *p = x->p;
    char t[1024];
    sb_str(b, "{\"nla_eval\": 1,\n");
    /* the paths as given: information only (ev_params_cmp) */
    ev_put_path(b, "\"paths\": {\"target\": ", p->target);
    ev_put_path(b, ", \"av\": ", p->av);
    ev_put_path(b, ", \"ar\": ", p->ar);
    ev_put_path(b, ", \"tokenizer\": ", p->tokenizer);
    ev_put_path(b, ", \"docs\": ", p->docs);
    ev_put_path(b, ", \"chats\": ", p->chats);
    snprintf(t, sizeof t,
             "},\n\"models_fnv1a64\": {\"target\": \"%016llx\", \"av\": \"%016llx\", \"ar\": "
             "\"%016llx\", "
             "\"tokenizer\": \"%016llx\"},\n",
             (unsigned long long)x->fp[0], (unsigned long long)x->fp[1],
             (unsigned long long)x->fp[2], (unsigned long long)x->fp[3]);
    sb_str(b, t);
    snprintf(t, sizeof t,
             "\"inputs_fnv1a64\": [\"%016llx\", \"%016llx\"],\n\"records\": %d,\n\"bad_records\": "
             "%d,\n\"samples\": %ld,\n"
             "\"positions_per_record\": %d,\n\"min_position\": %d,\n\"max_tokens\": "
             "%d,\n\"skip_special\": %s,\n\"seed\": %llu,\n"
             "\"max_new\": %d,\n\"temperature\": %.9g,\n\"top_k\": %d,\n\"top_p\": "
             "%.9g,\n\"quant\": \"%s\",\n"
             "\"best_of\": %d,\n\"with_greedy\": %s,\n\"parts\": %s,\n\"d_model\": %d,\n\"layer\": "
             "%d,\n\"mse_scale\": %.17g,\n\"fve_baseline\": %.17g,\n\"shard\": \"%d/%d\"}\n",
             (unsigned long long)x->fnv[0], (unsigned long long)x->fnv[1], x->pl->n_rec,
             x->pl->n_bad, x->pl->n_samples, p->positions_per_record,
             p->min_position < 0 ? 0 : p->min_position, p->max_tokens,
             p->skip_special ? "true" : "false", (unsigned long long)p->seed, p->max_new,
             (double)p->temperature, p->top_k, (double)p->top_p,
             (unsigned)p->quant < 3 ? quant[p->quant] : "?", p->best_of,
             p->with_greedy ? "true" : "false", p->parts ? "true" : "false", x->d, x->layer,
             x->mse_scale, x->baseline, p->shard_index, p->shard_count);
    sb_str(b, t);
}

/* Do params.json texts have and want differ, leaving out the "paths"
   line (information only) and, with `shards`, the "shard" line? Then a
   message in e names the first differing lines, with what to do (hint). */
static int ev_params_cmp(const char *path, const char *have, const char *want, int shards,
                         const char *hint, errbuf *e) {
    for (;;) {
        const char *ln[2] = {have, want};
        for (int k = 0; k < 2; k++)
            while (!strncmp(ln[k], "\"paths\": ", 9) ||
                   (shards && !strncmp(ln[k], "\"shard\": ", 9)))
                ln[k] += strcspn(ln[k], "\n") + (ln[k][strcspn(ln[k], "\n")] == '\n');
        const int nh = (int)strcspn(ln[0], "\n"), nw = (int)strcspn(ln[1], "\n");
        if (!*ln[0] && !*ln[1]) return 0;
        if (nh != nw || memcmp(ln[0], ln[1], (size_t)nh) ||
            !ln[0][nh] != !ln[1][nw]) { /* each line shown without its comma */
            fail(e, NLA_ERR_ARG, "%s: made with other arguments (it has %.*s, not %.*s): %s", path,
                 nh - (nh && ln[0][nh - 1] == ','), ln[0], nw - (nw && ln[1][nw - 1] == ','), ln[1],
                 hint);
            return 1;
        }
        have = ln[0] + nh + (ln[0][nh] == '\n');
        want = ln[1] + nw + (ln[1][nw] == '\n');
    }
}

/* Is the study of a results folder (pp its params.json, rp its
   results.jsonl) the one whose params.json is `want` (up to the shard line
   where `shards`)? NLA_OK, *none where the folder holds no study yet;
   another study is refused with `hint` (what to do), and so are rows
   without a params.json, since nothing says what made them. */
static nla_status ev_study_is(const char *pp, const char *rp, const char *want, int shards,
                              const char *hint, int *none, errbuf *e) {
    char *have = NULL;
    struct stat rs;
    nla_status rc = NLA_OK;
    *none = !file_exists(pp);
    if (*none && stat(rp, &rs) == 0 && rs.st_size > 0)
        rc = fail(e, NLA_ERR_ARG,
                  "%s holds rows but no params.json, so nothing says what made them: restore "
                  "params.json, or use another folder",
                  rp);
    else if (!*none && (rc = read_file(pp, &have, NULL, 1 << 20, e)) == NLA_OK &&
             ev_params_cmp(pp, have, want, shards, hint, e))
        rc = NLA_ERR_ARG;
    NLA_FREE(have);
    return rc;
}

/* tokens.jsonl: one line per record, for the report. */
typedef struct {
    const ev_plan *pl;
    const nla_tokenizer *tok;
} ev_tokens_ctx;

/* A token's text, NUL-terminated, into piece[EV_PIECE] (the tokenizer
   refuses pieces over 1024 bytes, so it always fits); "" for an id outside
   the vocabulary. Returns its length. */
#define EV_PIECE (1024 + 8)
static size_t ev_piece(const nla_tokenizer *tok, int32_t id, char *piece) {
    size_t len = 0;
    if (nla_detokenize(tok, &id, 1, piece, EV_PIECE, &len) != NLA_OK) len = 0;
    piece[len] = 0;
    return len;
}

static void ev_tokens_render(sbuf *b, const void *ctx) {
    const ev_tokens_ctx *x = (const ev_tokens_ctx *)ctx;
    for (int i = 0; i < x->pl->n_rec; i++) {
        const ev_record *r = &x->pl->rec[i];
        char t[64];
        sb_str(b, "{\"record_id\": ");
        sb_str(b, r->id);
        sb_str(b, ", \"source\": ");
        json_put_string(b, r->source, strlen(r->source));
        snprintf(t, sizeof t, ", \"chat\": %s, \"first_sample\": %ld, \"positions\": [",
                 r->chat ? "true" : "false", r->first);
        sb_str(b, t);
        for (int j = 0; j < r->n_pos; j++) {
            snprintf(t, sizeof t, "%s%d", j ? ", " : "", r->pos[j]);
            sb_str(b, t);
        }
        sb_str(b, "], \"tokens\": [");
        for (int j = 0; j < r->n_ids; j++) {
            char piece[EV_PIECE];
            const size_t len = ev_piece(x->tok, r->ids[j], piece);
            if (j) sb_str(b, ", ");
            json_put_string(b, piece, len);
        }
        sb_str(b, "]");
        if (r->role) {
            sb_str(b, ", \"roles\": [");
            for (int j = 0; j < r->n_ids; j++) {
                snprintf(t, sizeof t, "%s\"%s\"", j ? ", " : "", ev_role_name[r->role[j]]);
                sb_str(b, t);
            }
            sb_str(b, "]");
        }
        sb_str(b, "}\n");
    }
}

static nla_status ev_write_tokens(const char *path, const ev_plan *pl, const nla_tokenizer *tok,
                                  errbuf *e) {
    ev_tokens_ctx x;
    size_t n = 0;
    char *text;
    nla_status rc;
    x.pl = pl;
    x.tok = tok;
    if (!(text = ev_render(ev_tokens_render, &x, &n)))
        return fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    rc = write_file(path, text, n, e);
    NLA_FREE(text);
    return rc;
}

/* A float32 [S, d] .npy written a row at a time: the header is fixed, so
   row i lives at hdr + i d 4 whatever was written before. */
typedef struct {
    FILE *f;
    long hdr;
    int d;
} ev_npy;

/* Opens the [S, d] array at path: with `update`, for reading and writing
   (its own file: open_own), made (zeros) where it is missing; else for
   reading. */
static nla_status ev_npy_open(ev_npy *v, const char *path, long S, int d, int update, errbuf *e) {
    char want[256], have[256];
    const int64_t shape[2] = {S, d};
    size_t hl = npy_header(want, 2, shape);
    long end;
    v->d = d;
    v->hdr = (long)hl;
    if ((double)S * d * 4 + (double)hl > (double)LONG_MAX)
        return fail(e, NLA_ERR_RANGE, "%s: too large for this platform's file offsets", path);
    end = (long)hl + S * d * 4;
    if (!update && !(v->f = fopen(path, "rb")))
        return fail(e, NLA_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    if (update && !(v->f = fopen_own(path, "r+b", e)) && errno != ENOENT) return NLA_ERR_IO;
    if (!v->f) { /* made whole under another name, then renamed: a kill leaves no half file */
        out_file o;
        nla_status rc = out_open(&o, path, e);
        if (rc) return rc;
        out_write(&o, want, hl);
        if (S && !o.err && fseek(o.f, end - 1, SEEK_SET)) o.err = errno;
        out_write(&o, "", S ? 1 : 0);
        if ((rc = out_commit(&o, e)) != NLA_OK) return rc;
        if (!(v->f = fopen_own(path, "r+b", e))) return NLA_ERR_IO;
    }
    if (fread(have, 1, hl, v->f) != hl || memcmp(have, want, hl))
        return fail(e, NLA_ERR_FORMAT, "%s: not the float32 [%ld, %d] array of this run", path, S,
                    d);
    if (fseek(v->f, 0, SEEK_END) || ftell(v->f) != end)
        return fail(e, NLA_ERR_FORMAT, "%s: not %ld bytes long", path, end);
    return NLA_OK;
}

/* Writes row `row` (d floats), and syncs it to the disk if `sync`; 0 on failure. */
static int ev_npy_put(ev_npy *v, long row, const float *x, int sync) {
    return !fseek(v->f, v->hdr + row * v->d * 4, SEEK_SET) &&
           fwrite(x, sizeof(float), (size_t)v->d, v->f) == (size_t)v->d && (!sync || ev_sync(v->f));
}

/* Reads row `row` into x; 0 on failure. */
static int ev_npy_get(ev_npy *v, long row, float *x) {
    return !fseek(v->f, v->hdr + row * v->d * 4, SEEK_SET) &&
           fread(x, sizeof(float), (size_t)v->d, v->f) == (size_t)v->d;
}

/* A row's vectors' checksum: 64-bit FNV-1a of its float32 bytes. */
static uint64_t ev_vec_sum(const float *v, int d) {
    return ev_fnv((const char *)v, (size_t)d * sizeof(float));
}

/* ev_vec_sum of each of the n vectors x [n, d] into sum [n]: eight at a
   time, their chains interleaved (each is one long chain of multiplies). */
static void ev_vec_sums(const float *x, long n, int d, uint64_t *sum) {
    const size_t nb = (size_t)d * sizeof(float);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const unsigned char *b = (const unsigned char *)(x + (size_t)i * d);
        uint64_t h[8];
        for (int j = 0; j < 8; j++) h[j] = FNV_OFFSET;
        for (size_t k = 0; k < nb; k++)
            for (int j = 0; j < 8; j++) h[j] = (h[j] ^ b[j * nb + k]) * FNV_PRIME;
        memcpy(sum + i, h, sizeof h);
    }
    for (; i < n; i++) sum[i] = ev_vec_sum(x + (size_t)i * d, d);
}

/* A row's "vectors_fnv1a64": [activation, reconstruction] checksums, as
   16 hex digits each; 0 when absent or malformed. */
static int ev_row_sums(const jdoc *d, uint64_t sum[2]) {
    int k = json_get(d, 0, "vectors_fnv1a64");
    if (k < 0 || d->node[k].type != J_ARR || d->node[k].n != 2) return 0;
    k++;
    for (int f = 0; f < 2; f++, k = (int)d->node[k].end) {
        const jnode *n = &d->node[k];
        if (n->type != J_STR || n->len != 16) return 0;
        sum[f] = 0;
        for (size_t i = 0; i < 16; i++) {
            const char c = d->src[n->off + i];
            const int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (h < 0) return 0;
            sum[f] = sum[f] << 4 | (uint64_t)h;
        }
    }
    return 1;
}

/* Is x [d] the vector whose checksum (k: 0 activation, 1 reconstruction)
   a row of results.jsonl holds in sum (has_sum: it has them)? Where the
   row has none, yes unless x is all zeros (a row never written). */
static int ev_vec_ok(int has_sum, const uint64_t sum[2], int k, const float *x, int d) {
    if (has_sum) return ev_vec_sum(x, d) == sum[k];
    for (int i = 0; i < d; i++)
        if (x[i] != 0) return 1;
    return 0;
}

/* The refusal of a vector that fails ev_vec_ok. */
static nla_status ev_vec_fail(errbuf *e, const char *path, long idx, int has_sum) {
    return fail(e, NLA_ERR_FORMAT,
                "%s: the vector of sample %ld %s (the file was changed, or the row never "
                "written): rerun nla eval to redo it",
                path, idx,
                has_sum ? "differs from its checksum in results.jsonl" : "is all zeros");
}

/* One row of results.jsonl (the published field names, then ours). */
typedef struct {
    long sample_idx;
    const ev_record *r;
    int pos;
    const char *token_str;
    const ex_cand *c; /* the chosen explanation */
    double vec_norm;
    ex_extra extra;
    uint64_t sum[2]; /* ev_vec_sum of the activation and of the reconstruction */
} ev_row_out;

static void ev_row_render(sbuf *b, const void *ctx) {
    const ev_row_out *x = (const ev_row_out *)ctx;
    const ev_record *r = x->r;
    char t[160];
    snprintf(t, sizeof t, "{\"sample_idx\": %ld, \"record_id\": ", x->sample_idx);
    sb_str(b, t);
    sb_str(b, r->id);
    sb_str(b, ", \"source\": ");
    json_put_string(b, r->source, strlen(r->source));
    snprintf(t, sizeof t,
             ", \"role\": %s%s%s, \"token_id\": %d, \"token_str\": ", r->role ? "\"" : "",
             r->role ? ev_role_name[r->role[x->pos]] : "null", r->role ? "\"" : "", r->ids[x->pos]);
    sb_str(b, t);
    json_put_string(b, x->token_str, strlen(x->token_str));
    snprintf(t, sizeof t, ", \"position\": %d, \"seq_len\": %d", x->pos, r->n_ids);
    sb_str(b, t);
    ev_put_num(b, "vec_norm", x->vec_norm);
    sb_str(b, ", \"text_preview\": ");
    json_put_string(b, r->preview, strlen(r->preview));
    sb_str(b, ", \"explanation\": ");
    json_put_string(b, x->c->ex, strlen(x->c->ex));
    sb_str(b, ", \"raw_av_text\": ");
    json_put_string(b, x->c->raw, x->c->raw_len);
    sb_str(b, x->c->parsed ? ", \"av_parsed\": true" : ", \"av_parsed\": false");
    ev_put_num(b, "mse_nrm", x->c->sc.mse_nrm);
    ev_put_num(b, "cos", x->c->sc.cos);
    ev_put_num(b, "fve_nrm", x->c->sc.fve_nrm);
    ex_extra_render(b, &x->extra);
    snprintf(t, sizeof t, ", \"vectors_fnv1a64\": [\"%016llx\", \"%016llx\"]}\n",
             (unsigned long long)x->sum[0], (unsigned long long)x->sum[1]);
    sb_str(b, t);
}

/* A session of n_seq sequences of n_ctx positions (0: the default) on m. */
static nla_status ev_session(nla_model *m, const nla_eval_params *p, int n_seq, int n_ctx,
                             nla_session **s, errbuf *e) {
    nla_session_params sp;
    nla_status rc;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = p->n_threads;
    sp.n_seq = n_seq;
    sp.n_ctx = n_ctx;
    if ((rc = nla_session_new(m, &sp, s)) != NLA_OK)
        rc = fail(e, rc, "%s: cannot make a session (%s)", m->dir, nla_strerror(rc));
    return rc;
}

/* Opens a model with the eval's tokenizer, and a session unless n_seq is 0. */
static nla_status ev_open(const char *dir, const nla_eval_params *p, const nla_tokenizer *tok,
                          nla_quant q, int n_seq, int n_ctx, nla_model **m, nla_session **s,
                          errbuf *e) {
    nla_model_params mp;
    nla_status rc;
    memset(&mp, 0, sizeof mp);
    mp.quant = q;
    mp.shared_tokenizer = tok;
    *s = NULL;
    if ((rc = nla_model_open(dir, &mp, m, e->msg, sizeof e->msg)) != NLA_OK || !n_seq) return rc;
    return ev_session(*m, p, n_seq, n_ctx, s, e);
}

static void ev_close(nla_model **m, nla_session **s) {
    nla_session_free(*s);
    nla_model_close(*m);
    *s = NULL;
    *m = NULL;
}

/* The run's state between phases. */
typedef struct {
    nla_eval_params p;
    ev_plan pl;
    nla_meta av, ar;
    double baseline;
    unsigned char *done; /* [S] 1 = committed */
    long *todo, n_todo, n_shard, n_done, resumed;
    float *v, *rec;      /* [chunk, d] activations; [batch, d] one group's chosen reconstructions */
    ex_spec sp;          /* the texts of each vector: M = sp.n_cand + sp.greedy */
    ex_cand *cand;       /* [chunk, M] each vector's texts */
    ex_parts *parts;     /* [batch] one group's per-part scores */
    int *best;           /* [batch] one group's chosen candidates */
    int32_t *pos;        /* [chunk] positions */
    ev_npy act, recon;
    FILE *res;
    int lock;            /* ev_lock's descriptor */
    uint64_t fp[4];      /* fingerprints of the target, AV, AR and tokenizer (ev_model_fp) */
    long last;           /* the last sample_idx resumed; -1 none */
    const nla_tokenizer *tok;
    int chunk;           /* rows of the chunk under way */
    int texts_done;      /* verbalize: texts of the chunk decoded */
    long tokens;         /* verbalize: AV tokens of the chunk decoded */
} ev_run;

/* Reports progress; nonzero when the caller asks to stop. */
static int ev_progress(const ev_run *x, const char *phase, int done, int total) {
    nla_eval_progress pr;
    if (!x->p.progress) return 0;
    memset(&pr, 0, sizeof pr);
    pr.phase = phase;
    pr.done = done;
    pr.total = total;
    pr.rows_done = x->n_done;
    pr.rows_total = x->n_shard;
    pr.rows_resumed = x->resumed;
    pr.chunk_rows = x->chunk;
    if (!strcmp(phase, "verbalize")) {
        pr.tokens = x->tokens;
        pr.tokens_max = (long)total * x->sp.max_new;
    }
    return x->p.progress(x->p.user, &pr);
}

/* A line of results.jsonl: its sample and its bytes. */
typedef struct {
    long idx;
    size_t off, len;
} ev_line;

static int ev_cmp_line(const void *a, const void *b) {
    const long x = ((const ev_line *)a)->idx, y = ((const ev_line *)b)->idx;
    return (x > y) - (x < y);
}

/* Reads results.jsonl and refuses rows that cannot be there. With
   `resume`, marks the rows done whose vectors in the .npy files match
   their checksums; the others are redone (and reported). The file is
   rewritten (atomically) in sample_idx order, without a torn last line (a
   kill mid-write) or the rows to redo, when it has any of these. */
static nla_status ev_load_done(ev_run *x, const char *path, int resume, errbuf *e) {
    char *buf = NULL, *text = NULL;
    size_t n = 0, at = 0, n_text = 0;
    ev_line *ln = NULL;
    long n_ln = 0, n_nl = 0, bad = 0, first_bad = -1;
    int line = 0, sorted = 1;
    unsigned char *seen = NULL;
    float *row = NULL;
    const int d = x->av.d_model;
    nla_status rc = NLA_OK;
    if (!file_exists(path)) return NLA_OK; /* a fresh run */
    if ((rc = read_file(path, &buf, &n, SIZE_MAX / 2, e)) != NLA_OK) return rc;
    for (size_t i = 0; i < n; i++) n_nl += buf[i] == '\n';
    if (!(ln = (ev_line *)xmalloc((size_t)n_nl + 1, sizeof *ln)) ||
        !(seen = (unsigned char *)xcalloc((size_t)x->pl.n_samples + 1, 1)) ||
        !(row = (float *)xmalloc((size_t)d, sizeof(float))))
        rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    while (!rc && at < n) {
        const char *s = buf + at, *nl = (const char *)memchr(s, '\n', n - at);
        jdoc dd;
        uint64_t idx = 0, sum[2];
        int ok = 0;
        if (!nl) break; /* torn: cut below */
        line++;
        if (json_parse(&dd, s, (size_t)(nl - s), e, path) != NLA_OK)
            rc = fail(e, NLA_ERR_FORMAT, "%s: line %d is not JSON (the file was changed by hand?)",
                      path, line);
        else {
            if (!json_u64(&dd, json_get(&dd, 0, "sample_idx"), &idx) ||
                idx >= (uint64_t)x->pl.n_samples)
                rc = fail(e, NLA_ERR_FORMAT, "%s: line %d has no sample_idx below %ld", path, line,
                          x->pl.n_samples);
            else if (!ev_owns(&x->p, x->pl.sample_rec[idx]))
                rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: sample %ld is not of shard %d/%d", path,
                          line, (long)idx, x->p.shard_index, x->p.shard_count);
            else if (seen[idx])
                rc = fail(
                    e, NLA_ERR_FORMAT,
                    "%s: line %d: sample %ld is there twice (two runs wrote the folder at once?)",
                    path, line, (long)idx);
            else {
                const ev_record *r = &x->pl.rec[x->pl.sample_rec[idx]];
                int pos = -1; /* a row at another position than the plan's: redone */
                ok = ev_row_sums(&dd, sum) &&
                     json_int(&dd, json_get(&dd, 0, "position"), &pos) &&
                     pos == r->pos[(long)idx - r->first];
            }
            json_free(&dd);
        }
        if (!rc && resume) /* the vectors the line vouches for are there */
            ok = ok && ev_npy_get(&x->act, (long)idx, row) && ev_vec_sum(row, d) == sum[0] &&
                 ev_npy_get(&x->recon, (long)idx, row) && ev_vec_sum(row, d) == sum[1];
        if (!rc && resume && !ok) {
            bad++;
            if (first_bad < 0 || (long)idx < first_bad) first_bad = (long)idx;
        } else if (!rc) {
            seen[idx] = 1;
            sorted &= !n_ln || ln[n_ln - 1].idx < (long)idx;
            ln[n_ln].idx = (long)idx;
            ln[n_ln].off = (size_t)(s - buf);
            ln[n_ln++].len = (size_t)(nl - s) + 1;
            if (resume) {
                x->done[idx] = 1;
                x->resumed++;
                if ((long)idx > x->last) x->last = (long)idx;
            }
        }
        if (!rc) at = (size_t)(nl - buf) + 1;
    }
    if (!rc && (at < n || bad || !sorted)) {
        qsort(ln, (size_t)n_ln, sizeof *ln, ev_cmp_line);
        if (!(text = (char *)NLA_MALLOC(at + 1)))
            rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
        for (long i = 0; !rc && i < n_ln; i++) {
            memcpy(text + n_text, buf + ln[i].off, ln[i].len);
            n_text += ln[i].len;
        }
        if (!rc) rc = write_file(path, text, n_text, e);
    }
    if (!rc && bad)
        ev_warn(&x->p,
                "%s: %ld committed rows (the first: sample %ld) are at another position than "
                "the plan's, or have vectors in activations.npy or reconstructions.npy that are "
                "missing or differ from their checksums: they are redone",
                path, bad, first_bad);
    NLA_FREE(buf);
    NLA_FREE(text);
    NLA_FREE(ln);
    NLA_FREE(seen);
    NLA_FREE(row);
    return rc;
}

/* Extracts the target's vectors of todo[0..nc), record by record. */
static nla_status ev_phase_extract(ev_run *x, const long *todo, int nc, errbuf *e) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    const int d = x->av.d_model;
    nla_status rc = ev_open(x->p.target, &x->p, x->tok, x->p.quant, 1, x->p.max_tokens, &m, &s, e);
    for (int i = 0, j; i < nc && !rc; i = j) {
        const ev_record *r = &x->pl.rec[x->pl.sample_rec[todo[i]]];
        for (j = i; j < nc && &x->pl.rec[x->pl.sample_rec[todo[j]]] == r; j++)
            x->pos[j - i] = r->pos[todo[j] - r->first];
        if ((rc = nla_extract(s, r->ids, r->n_ids, x->av.layer, x->pos, j - i,
                              x->v + (size_t)i * d)) != NLA_OK)
            rc = fail(e, rc, "eval: record %s: %s", r->id, nla_session_errmsg(s));
        else if (ev_progress(x, "extract", j, nc))
            rc = fail(e, NLA_ERR_CANCELLED, "eval: cancelled");
    }
    ev_close(&m, &s);
    return rc;
}

/* Each AV token of the chunk's texts: counted, and reported. */
static int ev_verbalize_token(void *user, int item, int32_t token, int last) {
    ev_run *x = (ev_run *)user;
    (void)item;
    (void)token;
    x->tokens++;
    x->texts_done += last;
    return ev_progress(x, "verbalize", x->texts_done, x->chunk * (x->sp.n_cand + x->sp.greedy));
}

/* Explains the vectors: each one's texts (x->sp), --batch decoded together,
   each sampled text from its own stream (resumes and shards agree). */
static nla_status ev_phase_verbalize(ev_run *x, const long *todo, int nc, errbuf *e) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    ex_spec sp = x->sp;
    errbuf why;
    const int n_texts = nc * (sp.n_cand + sp.greedy);
    nla_status rc;
    sp.batch = sp.batch < n_texts ? sp.batch : n_texts;
    rc = ev_open(x->p.av, &x->p, x->tok, x->p.quant, sp.batch, x->av.av_prompt_len + x->p.max_new,
                 &m, &s, e);
    x->tokens = x->texts_done = 0;
    if (!rc && (rc = ex_verbalize(s, x->v, todo, nc, &sp, x->cand, ev_verbalize_token, x,
                                  &why)) != NLA_OK)
        rc = fail(e, rc, "eval: %s", why.msg);
    ev_close(&m, &s);
    return rc;
}

/* Reconstructs, scores and commits the rows, --batch at a time: the AR
   reads their texts --batch at a time (one forward per group, in a session
   as long as the longest input; any group size gives the same bits), the
   best candidate is chosen and its parts scored; then each row's vectors,
   then its JSONL line, flushed and synced. */
static nla_status ev_phase_reconstruct(ev_run *x, const long *todo, int nc, errbuf *e) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    const int d = x->av.d_model, M = x->sp.n_cand + x->sp.greedy, G = x->p.batch;
    int n_ctx = 1;
    errbuf why;
    nla_status rc = ev_open(x->p.ar, &x->p, x->tok, x->p.quant, 0, 0, &m, &s, e);
    if (!rc && (rc = ex_ar_ctx(m, x->cand, nc * M, x->p.parts, &n_ctx, &why)) != NLA_OK)
        rc = fail(e, rc, "eval: %s", why.msg);
    if (!rc) rc = ev_session(m, &x->p, nc * M < G ? nc * M : G, n_ctx, &s, e);
    for (int i0 = 0; i0 < nc && !rc; i0 += G) {
        const int g = nc - i0 < G ? nc - i0 : G;
        const float *v0 = x->v + (size_t)i0 * d;
        ex_cand *c0 = x->cand + (size_t)i0 * M;
        rc = ex_choose(s, v0, g, &x->sp, c0, x->ar.mse_scale, x->baseline, x->best, x->rec, &why);
        if (!rc && x->p.parts)
            rc = ex_score_parts(s, v0, g, c0, M, x->best, x->ar.mse_scale, x->baseline, x->parts,
                                &why);
        if (rc) rc = fail(e, rc, "eval: %s", why.msg);
        for (int q = 0; q < g && !rc; q++) {
            const int i = i0 + q;
            const ev_record *r = &x->pl.rec[x->pl.sample_rec[todo[i]]];
            const float *v = x->v + (size_t)i * d, *rec = x->rec + (size_t)q * d;
            char tok_str[EV_PIECE], *line;
            ev_row_out row;
            size_t n_line = 0;
            double nv = 0;
            int special;
            memset(&row, 0, sizeof row);
            row.sample_idx = todo[i];
            row.r = r;
            row.pos = r->pos[todo[i] - r->first];
            for (int k = 0; k < d; k++) nv += (double)v[k] * v[k];
            ev_piece(x->tok, r->ids[row.pos], tok_str);
            row.token_str = tok_str;
            row.c = &c0[q * M + x->best[q]];
            row.vec_norm = sqrt(nv);
            row.extra.cand = c0 + (size_t)q * M;
            row.extra.best_of = x->p.best_of;
            row.extra.n_cand = x->sp.n_cand;
            row.extra.greedy = x->sp.greedy;
            row.extra.best = x->best[q];
            row.extra.parts = x->p.parts ? &x->parts[q] : NULL;
            special = ev_special(x->tok, r->ids[row.pos]) ||
                      (r->role && r->role[row.pos] != CHAT_USER && r->role[row.pos] != CHAT_ASST);
            row.extra.flags = ex_flags(row.c->ex, row.c->raw, row.c->parsed, row.c->truncated,
                                       special, row.c->sc.cos);
            row.sum[0] = ev_vec_sum(v, d);
            row.sum[1] = ev_vec_sum(rec, d);
            if (!(line = ev_render(ev_row_render, &row, &n_line))) {
                rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
                break;
            }
            /* the commit: both vectors on the disk before the line that says they are there */
            if (!ev_npy_put(&x->act, todo[i], v, 1) || !ev_npy_put(&x->recon, todo[i], rec, 1) ||
                (errno = 0, fwrite(line, 1, n_line, x->res) != n_line) || !ev_sync(x->res))
                rc = fail(e, NLA_ERR_IO, "%s: cannot write the results (%s)", x->p.out_dir,
                          strerror(errno ? errno : EIO));
            NLA_FREE(line);
            if (!rc) x->n_done++;
            if (!rc &&
                ev_progress(x, "reconstruct", i + 1, nc))
                rc = fail(e, NLA_ERR_CANCELLED, "eval: cancelled");
        }
    }
    ev_close(&m, &s);
    return rc;
}

/* FNV-1a of file dir/name (name NULL: dir is the file) continued from *h;
   a missing file adds nothing. */
static nla_status ev_fp_file(const char *dir, const char *name, uint64_t *h, errbuf *e) {
    char *p = name ? path_join(dir, name) : xstrndup(dir, strlen(dir)), *buf = NULL;
    size_t n = 0;
    nla_status rc = !p               ? fail(e, NLA_ERR_NOMEM, "eval: out of memory")
                    : file_exists(p) ? read_file(p, &buf, &n, SIZE_MAX / 2, e)
                                     : NLA_OK;
    if (!rc) *h = ev_fnv_more(*h, buf, n);
    NLA_FREE(p);
    NLA_FREE(buf);
    return rc;
}

/* A model's identity in params.json, whatever path names it: FNV-1a of
   its config.json, nla_meta.yaml and value_head.safetensors, and of each
   weights file's size and safetensors header (the weights are not read). */
static nla_status ev_model_fp(const nla_model *m, uint64_t *h, errbuf *e) {
    static const char *const side[3] = {"config.json", "nla_meta.yaml", "value_head.safetensors"};
    nla_status rc = NLA_OK;
    *h = FNV_OFFSET;
    for (int i = 0; i < 3 && !rc; i++) rc = ev_fp_file(m->dir, side[i], h, e);
    for (int i = 0; i < m->st->n_files && !rc; i++) {
        const st_file *f = &m->st->files[i];
        uint64_t hl = 0, size = f->size;
        for (int k = 0; k < 8; k++) hl |= (uint64_t)f->map[k] << (8 * k);
        *h = ev_fnv_more(ev_fnv_more(*h, &size, sizeof size), f->map,
                         (size_t)(8 + hl)); /* st_parse checked 8 + hl <= size */
    }
    return rc;
}

/* Reads the AV's and AR's sidecars and fingerprints the models and the
   tokenizer (models opened as stored: mapping is cheap). */
static nla_status ev_metas(ev_run *x, errbuf *e) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    nla_model_info in, ai;
    const char *tp = x->p.tokenizer ? x->p.tokenizer : x->p.target;
    char *tf = is_dir(tp) ? path_join(tp, "tokenizer.json") : xstrndup(tp, strlen(tp));
    nla_status rc = ev_open(x->p.av, &x->p, x->tok, NLA_QUANT_NONE, 0, 0, &m, &s, e);
    if (!rc && !(rc = ev_model_fp(m, &x->fp[1], e))) {
        nla_model_get_meta(m, &x->av);
        nla_model_get_info(m, &ai);
    }
    meta_detach(&x->av, NULL);
    ev_close(&m, &s);
    if (!rc && !(rc = ev_open(x->p.ar, &x->p, x->tok, NLA_QUANT_NONE, 0, 0, &m, &s, e)) &&
        !(rc = ev_model_fp(m, &x->fp[2], e)))
        nla_model_get_meta(m, &x->ar);
    meta_detach(&x->ar, NULL);
    ev_close(&m, &s);
    if (!rc && !(rc = ev_open(x->p.target, &x->p, x->tok, NLA_QUANT_NONE, 0, 0, &m, &s, e)) &&
        !(rc = ev_model_fp(m, &x->fp[0], e)))
        nla_model_get_info(m, &in);
    ev_close(&m, &s);
    x->fp[3] = FNV_OFFSET;
    if (!rc)
        rc =
            tf ? ev_fp_file(tf, NULL, &x->fp[3], e) : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    NLA_FREE(tf);
    if (rc) return rc;
    if (strcmp(x->av.role, "av") || x->av.av_prompt_len < 1)
        return fail(e, NLA_ERR_ARG,
                    "eval: %s is not an AV with a tokenizer (nla_meta.yaml role: av)", x->p.av);
    if ((int64_t)x->av.av_prompt_len + x->p.max_new - 1 > ai.max_position_embeddings)
        return fail(e, NLA_ERR_RANGE,
                    "eval: max_new %d: the AV's prompt of %d tokens and the new ones exceed "
                    "its %d positions",
                    x->p.max_new, x->av.av_prompt_len, ai.max_position_embeddings);
    if (strcmp(x->ar.role, "ar") || x->ar.d_model != x->av.d_model || x->ar.layer != x->av.layer)
        return fail(e, NLA_ERR_ARG, "eval: %s is not the AR of %s (role ar, d %d, layer %d)",
                    x->p.ar, x->p.av, x->av.d_model, x->av.layer);
    if (in.d_model != x->av.d_model || x->av.layer >= in.n_layers)
        return fail(e, NLA_ERR_ARG,
                    "eval: the target %s (d %d, %d blocks) does not fit the AV (d %d, layer %d)",
                    x->p.target, in.d_model, in.n_layers, x->av.d_model, x->av.layer);
    x->baseline = x->av.fve_baseline;
    return NLA_OK;
}

/* params.json, tokens.jsonl, the rows done, the .npy files, the work list. */
static nla_status ev_prepare(ev_run *x, const uint64_t fnv[2], errbuf *e) {
    const char *dir = x->p.out_dir;
    char *pp = path_join(dir, "params.json"), *tp = path_join(dir, "tokens.jsonl"),
         *rp = path_join(dir, "results.jsonl");
    char *ap = path_join(dir, "activations.npy"), *cp = path_join(dir, "reconstructions.npy"),
         *want = NULL;
    size_t n_want = 0;
    ev_params_ctx pc;
    nla_status rc =
        pp && tp && rp && ap && cp ? NLA_OK : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    pc.p = &x->p;
    pc.pl = &x->pl;
    pc.fnv = fnv;
    pc.fp = x->fp;
    pc.d = x->av.d_model;
    pc.layer = x->av.layer;
    pc.mse_scale = x->ar.mse_scale;
    pc.baseline = x->baseline;
    if (!rc && !(want = ev_render(ev_params_render, &pc, &n_want)))
        rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    int none = 0;
    if (!rc)
        rc = ev_study_is(pp, rp, want, 0,
                         "use the same arguments and models to resume, or another folder", &none,
                         e);
    if (!rc && none) rc = write_file(pp, want, n_want, e);
    if (!rc) rc = ev_write_tokens(tp, &x->pl, x->tok, e);
    if (!rc && !(x->done = (unsigned char *)xcalloc((size_t)x->pl.n_samples, 1)))
        rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    if (!rc) rc = ev_npy_open(&x->act, ap, x->pl.n_samples, x->av.d_model, 1, e);
    if (!rc) rc = ev_npy_open(&x->recon, cp, x->pl.n_samples, x->av.d_model, 1, e);
    if (!rc) rc = ev_load_done(x, rp, 1, e);
    if (!rc && !(x->res = fopen_own(rp, "ab", e))) rc = NLA_ERR_IO;
    const int serr = rc ? 0 : sync_dir_of(rp); /* its name, when it was made just now */
    if (serr)
        rc = fail(e, serr == ENOMEM ? NLA_ERR_NOMEM : NLA_ERR_IO, "%s: cannot write (%s)", rp,
                  strerror(serr));
    if (!rc && !(x->todo = (long *)xmalloc((size_t)x->pl.n_samples, sizeof(long))))
        rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    for (long i = 0; !rc && i < x->pl.n_samples; i++) {
        if (!ev_owns(&x->p, x->pl.sample_rec[i])) continue;
        x->n_shard++;
        if (!x->done[i]) x->todo[x->n_todo++] = i;
    }
    x->n_done = x->resumed;
    NLA_FREE(pp); NLA_FREE(tp); NLA_FREE(rp); NLA_FREE(ap); NLA_FREE(cp);
    NLA_FREE(want);
    return rc;
}

nla_status nla_eval_run(const nla_eval_params *params, nla_eval_counts *counts, char *errbuf_out,
                        size_t errbuf_size) {
    errbuf e;
    ev_run x;
    nla_tokenizer *tok = NULL;
    uint64_t fnv[2] = {0, 0};
    int C = 0, d = 0;
    nla_status rc;
    e.msg[0] = 0;
    memset(&x, 0, sizeof x);
    x.lock = -1;
    x.last = -1;
    if (counts) memset(counts, 0, sizeof *counts);
    rc = ev_defaults(params, &x.p, &e);
    x.sp.n_cand = x.p.best_of ? x.p.best_of : 1;
    x.sp.greedy = !!x.p.with_greedy;
    x.sp.batch = x.p.batch;
    x.sp.max_new = x.p.max_new;
    x.sp.top_k = x.p.top_k;
    x.sp.temperature = x.p.temperature;
    x.sp.top_p = x.p.top_p;
    x.sp.seed = x.p.seed;
    if (!rc && (!x.p.target || !x.p.av || !x.p.ar || !x.p.out_dir))
        rc = fail(&e, NLA_ERR_ARG, "eval: target, av, ar and out_dir are required");
    /* no input is one of the folder's files, nor the temporary file of one */
    for (int i = 0; i < 2 * EV_N_FILES && !rc; i++) {
        const char *in[3] = {x.p.docs, x.p.chats, x.p.tokenizer};
        const int tmp = i >= EV_N_FILES;
        const char *name = ev_files[i % EV_N_FILES];
        for (int k = 0; k < 3 && !rc; k++) {
            const int is = in[k] ? ev_is_file(x.p.out_dir, name, tmp, in[k]) : 0;
            if (is)
                rc = is < 0 ? fail(&e, NLA_ERR_NOMEM, "eval: out of memory")
                            : fail(&e, NLA_ERR_ARG,
                                   "eval: the input %s is the output %s%s of %s%s: give "
                                   "another folder",
                                   in[k], name, tmp ? ".tmp" : "", x.p.out_dir,
                                   tmp ? " (a temporary file while it is written)" : "");
        }
    }
    if (!rc) rc = ev_out_check(x.p.out_dir, &e);
    if (!rc)
        rc = nla_tokenizer_open(x.p.tokenizer ? x.p.tokenizer : x.p.target, &tok, e.msg,
                                sizeof e.msg);
    x.tok = tok;
    if (!rc) rc = ev_metas(&x, &e);
    if (!rc) rc = ev_plan_build(&x.p, tok, &x.pl, fnv, &e);
    if (!rc && !x.pl.n_samples)
        rc = fail(&e, NLA_ERR_FORMAT,
                  "eval: no position to explain: %d records, %d skipped (the warnings say why)",
                  x.pl.n_rec, x.pl.n_bad);
    /* the inputs read: the folder is locked, then read and written */
    if (!rc) rc = ev_lock(x.p.out_dir, &x.lock, &e);
    if (!rc) rc = ev_prepare(&x, fnv, &e);
    if (!rc) {
        d = x.av.d_model;
        C = x.n_todo < x.p.chunk ? (int)x.n_todo : x.p.chunk;
        x.v = (float *)xmalloc((size_t)C + 1, (size_t)d * sizeof(float));
        x.rec = (float *)xmalloc((size_t)x.p.batch, (size_t)d * sizeof(float));
        x.cand = (ex_cand *)xcalloc(((size_t)C + 1) * (size_t)(x.sp.n_cand + x.sp.greedy),
                                    sizeof(ex_cand));
        x.parts = (ex_parts *)xcalloc((size_t)x.p.batch, sizeof(ex_parts));
        x.best = (int *)xcalloc((size_t)x.p.batch, sizeof(int));
        x.pos = (int32_t *)xcalloc((size_t)C + 1, sizeof(int32_t));
        if (!x.v || !x.rec || !x.cand || !x.parts || !x.best || !x.pos)
            rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
    }
    /* chunk by chunk, one model in memory at a time */
    for (long c0 = 0; !rc && c0 < x.n_todo; c0 += C) {
        const int nc = x.n_todo - c0 < C ? (int)(x.n_todo - c0) : C;
        x.chunk = nc;
        rc = ev_phase_extract(&x, x.todo + c0, nc, &e);
        if (!rc) rc = ev_phase_verbalize(&x, x.todo + c0, nc, &e);
        if (!rc) rc = ev_phase_reconstruct(&x, x.todo + c0, nc, &e);
    }
    if (!rc && x.n_todo &&
        x.todo[0] < x.last) { /* rows redone before the last resumed one: back in order */
        char *rp = path_join(x.p.out_dir, "results.jsonl");
        if (fclose(x.res))
            rc = fail(&e, NLA_ERR_IO, "%s: cannot close results.jsonl (%s)", x.p.out_dir,
                      strerror(errno));
        x.res = NULL;
        if (!rc)
            rc = rp ? ev_load_done(&x, rp, 0, &e) : fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
        NLA_FREE(rp);
    }
    if (counts) {
        counts->records = x.pl.n_rec;
        counts->bad_records = x.pl.n_bad;
        counts->samples = x.pl.n_samples;
        counts->shard_samples = x.n_shard;
        counts->resumed = x.resumed;
        counts->done = x.n_done;
    }
    for (int t = 0; x.cand && t < C * (x.sp.n_cand + x.sp.greedy); t++) ex_cand_free(&x.cand[t]);
    if (x.act.f) fclose(x.act.f);
    if (x.recon.f) fclose(x.recon.f);
    if (x.res && fclose(x.res) && !rc)
        rc = fail(&e, NLA_ERR_IO, "%s: cannot close results.jsonl", x.p.out_dir);
    NLA_FREE(x.v);
    NLA_FREE(x.rec);
    NLA_FREE(x.cand);
    NLA_FREE(x.parts);
    NLA_FREE(x.best);
    NLA_FREE(x.pos);
    NLA_FREE(x.done); NLA_FREE(x.todo);
    ev_plan_free(&x.pl);
    nla_tokenizer_close(tok);
    ev_unlock(x.lock);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- merging shards */

/* The text of params.json before its "shard" line, and the shard i/n. */
static const char *ev_shard_line(const char *params, int *i, int *n) {
    const char *s = strstr(params, "\n\"shard\": \"");
    return s && sscanf(s, "\n\"shard\": \"%d/%d\"", i, n) == 2 ? s : NULL;
}

/* Writes n bytes as dir/name (atomically). */
static nla_status ev_write_in(const char *dir, const char *name, const char *data, size_t n,
                              errbuf *e) {
    char *path = path_join(dir, name);
    nla_status rc =
        path ? write_file(path, data, n, e) : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    NLA_FREE(path);
    return rc;
}

/* A folder's file, read whole (NUL-terminated). */
static nla_status ev_read(const char *dir, const char *name, char **buf, size_t *n, errbuf *e) {
    char *path = path_join(dir, name);
    nla_status rc = path ? read_file(path, buf, n, SIZE_MAX / 2, e)
                         : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    NLA_FREE(path);
    return rc;
}

nla_status nla_eval_merge(const char *out_dir, const char *const *dirs, int n, char *errbuf_out,
                          size_t errbuf_size) {
    errbuf e;
    char **params = NULL, **res = NULL, *tokens = NULL, *other = NULL, *path = NULL,
         *mpath[2] = {NULL, NULL};
    const char **line = NULL, *cut0 = NULL;
    size_t *len = NULL, tn = 0, on = 0;
    int *owner = NULL, d = 0, si, sn, lock = -1;
    long S = 0;
    float *row = NULL;
    uint64_t *sum = NULL;           /* [S, 2] each row's checksums */
    unsigned char *has_sum = NULL; /* [S] */
    ev_npy in[2];      /* one shard's activations and reconstructions at a time */
    out_file out[2];   /* the merged ones */
    jdoc doc;
    nla_status rc = NLA_OK;
    e.msg[0] = 0;
    if (!out_dir || !dirs || n < 1)
        rc = fail(&e, NLA_ERR_ARG, "eval merge: an output folder and shard folders are required");
    for (int k = 0; k < n && !rc; k++)
        if (!dirs[k]) rc = fail(&e, NLA_ERR_ARG, "eval merge: shard folder %d is NULL", k);
        else if (same_file(out_dir, dirs[k]))
            rc = fail(&e, NLA_ERR_ARG, "eval merge: the output folder %s is the shard folder %s",
                      out_dir, dirs[k]);
    if (!rc) rc = ev_out_check(out_dir, &e);
    if (!rc && (!(params = (char **)xcalloc((size_t)n, sizeof(char *))) ||
                !(res = (char **)xcalloc((size_t)n, sizeof(char *)))))
        rc = fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
    /* the same study: params.json equal up to the shard line, shards 1..n once each */
    for (int k = 0; k < n && !rc; k++) {
        const char *cut;
        if ((rc = ev_read(dirs[k], "params.json", &params[k], NULL, &e)) != NLA_OK) break;
        if (!(cut = ev_shard_line(params[k], &si, &sn)))
            rc = fail(&e, NLA_ERR_FORMAT, "%s/params.json: no shard line", dirs[k]);
        else if (sn != n)
            rc = fail(&e, NLA_ERR_ARG, "%s is shard %d/%d, but %d folders were given", dirs[k], si,
                      sn, n);
        else if (!k) cut0 = cut;
        else if (ev_params_cmp(dirs[k], params[k], params[0], 1,
                               "these are not shards of one study", &e))
            rc = NLA_ERR_ARG;
        for (int j = 0; j < k && !rc; j++) {
            int sj, nj;
            ev_shard_line(params[j], &sj, &nj);
            if (sj == si)
                rc = fail(&e, NLA_ERR_ARG, "%s and %s are both shard %d/%d", dirs[j], dirs[k], si,
                          n);
        }
    }
    if (!rc) rc = ev_lock(out_dir, &lock, &e); /* the shards checked: nothing written before */
    if (!rc) { /* the folder merged into: no study, or this one (merged again, or unsharded) */
        char *pp = path_join(out_dir, "params.json"), *rp = path_join(out_dir, "results.jsonl");
        int none;
        rc = pp && rp ? ev_study_is(pp, rp, params[0], 1,
                                    "it holds another study: merge into an empty or new folder",
                                    &none, &e)
                      : fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
        NLA_FREE(pp);
        NLA_FREE(rp);
    }
    /* S rows of d floats */
    if (!rc && (rc = json_parse(&doc, params[0], strlen(params[0]), &e, dirs[0])) == NLA_OK) {
        uint64_t us = 0;
        if (!json_u64(&doc, json_get(&doc, 0, "samples"), &us) ||
            !json_int(&doc, json_get(&doc, 0, "d_model"), &d) || d < 1 ||
            us > (uint64_t)LONG_MAX / 4 / (uint64_t)d || us > SIZE_MAX / 4 / (size_t)d)
            rc = fail(&e, NLA_ERR_FORMAT,
                      "%s/params.json: no samples and d_model that fit this platform", dirs[0]);
        json_free(&doc);
        S = (long)us;
    }
    memset(out, 0, sizeof out);
    memset(in, 0, sizeof in);
    if (!rc && (!(line = (const char **)xcalloc((size_t)S + 1, sizeof(char *))) ||
                !(len = (size_t *)xcalloc((size_t)S + 1, sizeof(size_t))) ||
                !(owner = (int *)xcalloc((size_t)S + 1, sizeof(int))) ||
                !(row = (float *)xmalloc((size_t)d, sizeof(float))) ||
                !(sum = (uint64_t *)xcalloc((size_t)S + 1, 2 * sizeof(uint64_t))) ||
                !(has_sum = (unsigned char *)xcalloc((size_t)S + 1, 1))))
        rc = fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
    /* rows: each sample exactly once; tokens.jsonl the same in every shard */
    for (int k = 0; k < n && !rc; k++) {
        size_t rn = 0;
        int ln = 0;
        if ((rc = ev_read(dirs[k], "tokens.jsonl", k ? &other : &tokens, k ? &on : &tn, &e)) !=
            NLA_OK)
            break;
        if (k && (on != tn || memcmp(other, tokens, tn)))
            rc = fail(&e, NLA_ERR_FORMAT, "%s/tokens.jsonl differs from %s's", dirs[k], dirs[0]);
        NLA_FREE(other);
        other = NULL;
        if (rc || (rc = ev_read(dirs[k], "results.jsonl", &res[k], &rn, &e)) != NLA_OK) break;
        for (const char *s = res[k]; s < res[k] + rn && !rc;) {
            const char *nl = (const char *)memchr(s, '\n', (size_t)(res[k] + rn - s));
            uint64_t idx = 0;
            if (!nl) {
                rc = fail(&e, NLA_ERR_FORMAT,
                          "%s: the last row is torn: rerun the shard to finish it", dirs[k]);
                break;
            }
            ln++;
            if ((rc = json_parse(&doc, s, (size_t)(nl - s), &e, dirs[k])) != NLA_OK) {
                if (rc == NLA_ERR_FORMAT)
                    fail(&e, rc, "%s/results.jsonl: line %d is not JSON", dirs[k], ln);
                break;
            }
            if (!json_u64(&doc, json_get(&doc, 0, "sample_idx"), &idx) || idx >= (uint64_t)S ||
                line[idx])
                rc = fail(&e, NLA_ERR_FORMAT,
                          "%s/results.jsonl: line %d: a row without a new sample_idx below %ld",
                          dirs[k], ln, S);
            else {
                line[idx] = s;
                len[idx] = (size_t)(nl - s) + 1;
                owner[idx] = k;
                has_sum[idx] = (unsigned char)ev_row_sums(&doc, sum + 2 * idx);
            }
            json_free(&doc);
            s = nl + 1;
        }
    }
    for (long i = 0; !rc && i < S; i++)
        if (!line[i])
            rc = fail(&e, NLA_ERR_ARG,
                      "eval merge: sample %ld is in no shard's results: finish every shard first",
                      i);
    /* the vectors into new files, renamed over the old ones at the end: one
       shard at a time (two of its files open, memory one row), each row it
       owns written at its place */
    char hdr[256];
    const int64_t shape[2] = {S, d};
    const size_t hl = npy_header(hdr, 2, shape);
    for (int f = 0; f < 2 && !rc; f++) {
        if (!(mpath[f] = path_join(out_dir, f ? "reconstructions.npy" : "activations.npy")))
            rc = fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
        else if ((rc = out_open(&out[f], mpath[f], &e)) == NLA_OK) out_write(&out[f], hdr, hl);
    }
    for (int k = 0; k < n && !rc; k++) {
        for (int f = 0; f < 2 && !rc; f++) {
            if (!(path = path_join(dirs[k], f ? "reconstructions.npy" : "activations.npy")))
                rc = fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
            else rc = ev_npy_open(&in[f], path, S, d, 0, &e);
            NLA_FREE(path);
            path = NULL;
        }
        for (long i = 0; i < S && !rc; i++)
            for (int f = 0; f < 2 && !rc && owner[i] == k; f++) {
                if (!ev_npy_get(&in[f], i, row))
                    rc = fail(&e, NLA_ERR_IO, "eval merge: cannot read row %ld of %s's %s", i,
                              dirs[k], f ? "reconstructions" : "activations");
                else if (!has_sum[i] || ev_vec_sum(row, d) != sum[2 * i + f])
                    rc = fail(&e, NLA_ERR_FORMAT,
                              "eval merge: %s: the %s of sample %ld %s: rerun nla eval on that "
                              "folder to redo it",
                              dirs[k], f ? "reconstruction" : "activation", i,
                              has_sum[i] ? "differs from its checksum in results.jsonl"
                                         : "has no checksum in results.jsonl");
                else if (!out[f].err && fseek(out[f].f, (long)hl + i * d * 4, SEEK_SET))
                    out[f].err = errno ? errno : EIO;
                else out_write(&out[f], row, (size_t)d * sizeof(float));
            }
        for (int f = 0; f < 2; f++) {
            if (in[f].f) fclose(in[f].f);
            in[f].f = NULL;
        }
    }
    /* results.jsonl, which every reader needs, goes before the first file
       is replaced and comes back last: a merge stopped in between leaves a
       folder without results, never one whose files are of two merges */
    if (!rc && !(path = path_join(out_dir, "results.jsonl")))
        rc = fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
    if (!rc && remove(path) && errno != ENOENT)
        rc = fail(&e, NLA_ERR_IO, "eval merge: %s: cannot remove (%s)", path, strerror(errno));
    NLA_FREE(path);
    path = NULL;
    for (int f = 0; f < 2; f++) {
        if (rc && out[f].f) out[f].err = ECANCELED; /* no file */
        const nla_status committed = out_commit(&out[f], rc ? NULL : &e);
        if (!rc) rc = committed;
        NLA_FREE(mpath[f]);
    }
    /* the merged folder: as one unsharded run writes it */
    if (!rc) rc = ev_write_in(out_dir, "tokens.jsonl", tokens, tn, &e);
    if (!rc) {
        const size_t k = (size_t)(cut0 - params[0]);
        size_t total = 0;
        char *text;
        for (long i = 0; i < S; i++) total += len[i];
        if (!(text = (char *)NLA_MALLOC(total + k + 32)))
            rc = fail(&e, NLA_ERR_NOMEM, "eval merge: out of memory");
        else { /* params.json: the shards' with the shard line of an unsharded run */
            memcpy(text, params[0], k);
            rc = ev_write_in(out_dir, "params.json", text,
                             k + (size_t)sprintf(text + k, "\n\"shard\": \"1/1\"}\n"), &e);
        }
        if (!rc) { /* results.jsonl: the rows in sample_idx order */
            total = 0;
            for (long i = 0; i < S; i++) {
                memcpy(text + total, line[i], len[i]);
                total += len[i];
            }
            rc = ev_write_in(out_dir, "results.jsonl", text, total, &e);
        }
        NLA_FREE(text);
    }
    for (int k = 0; k < n; k++) {
        if (params) NLA_FREE(params[k]);
        if (res) NLA_FREE(res[k]);
    }
    for (int f = 0; f < 2; f++)
        if (in[f].f) fclose(in[f].f);
    NLA_FREE(params); NLA_FREE(res); NLA_FREE(tokens); NLA_FREE(line); NLA_FREE(len);
    NLA_FREE(owner); NLA_FREE(row);
    NLA_FREE(sum); NLA_FREE(has_sum);
    ev_unlock(lock);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- summary: statistics, token kinds, structure, degenerate templates */

/* The degenerate templates (T_*, section 13) by name and what they look like. */
static const char *const ev_tmpl_name[T_COUNT] = {"sink_fragmented_academic",
                                                  "fallback_research_paper", "cjk_output",
                                                  "newline_repetition", "unparsed"};
static const char *const ev_tmpl_what[T_COUNT] = {
    "\"Fragmented, incoherent academic text pattern\" (high-norm sink)",
    "\"research paper\" / Fibonacci / Kalman fallback (low-norm title repeat)",
    "mostly CJK text (injection missed or wrong scale)",
    "\\n\\n\\n repetition (injected rows dropped)",
    "no <explanation>...</explanation> (truncated or drifted)"};

/* Token kinds of the blog's analysis, from the token's text. */
enum {
    K_CAP_NO_SPACE, K_WHITESPACE, K_DIGITS, K_SINGLE, K_PUNCT, K_SUBWORD, K_CAP_WORD, K_LOWER_WORD,
    K_SPECIAL, K_OTHER, K_COUNT
};
static const char *const ev_kind_name[K_COUNT] = {"cap_no_space",  "whitespace",  "digits",
                                                  "single_letter", "punctuation", "subword",
                                                  "cap_word",      "lower_word",  "special",
                                                  "other"};

static int ev_token_kind(const char *s) {
    const size_t n = strlen(s);
    size_t i, m;
    int lead;
    if (n >= 3 && s[0] == '<' && s[n - 1] == '>' && !strpbrk(s, " \n")) return K_SPECIAL;
    for (i = 0; i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'); i++) {}
    if (!n) return K_OTHER;
    if (i == n) return K_WHITESPACE;
    lead = s[0] == ' ';
    s += lead;
    m = n - (size_t)lead;
    for (i = 0; i < m && s[i] >= '0' && s[i] <= '9'; i++) {}
    if (i == m) return K_DIGITS;
    for (i = 0; i < m && s[i] > ' ' && s[i] < 0x7f &&
                !((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') && !(s[i] >= '0' && s[i] <= '9');
         i++) {}
    if (i == m) return K_PUNCT;
    if (m == 1 && (s[0] | 0x20) >= 'a' && (s[0] | 0x20) <= 'z') return K_SINGLE;
    if (s[0] >= 'A' && s[0] <= 'Z') return lead ? K_CAP_WORD : K_CAP_NO_SPACE;
    if (s[0] >= 'a' && s[0] <= 'z') return lead ? K_LOWER_WORD : K_SUBWORD;
    return K_OTHER;
}

/* The three-part shape of an explanation (README.md, nla eval). */
typedef struct {
    int paras;      /* paragraphs (separated by blank lines) */
    int kind_topic; /* the first is "kind: topic" */
    int structured; /* its first word is "Structured" */
    int quoted;     /* a paragraph other than the final-token one quotes context */
    int final_tok;  /* the last is about the final token */
} ev_shape;

/* Does [b, e) quote something: "..." or \u201c...\u201d with at least one
   character inside (eval_fixed.py's regex)? One pass: a pair of straight
   quotes is two in a row; a curly closer matches the earliest opener since
   the last closer. */
static int ev_has_quote(const char *b, const char *e) {
    const char *straight = NULL, *open = NULL; /* the last '"'; the earliest unclosed opener */
    for (const char *p = b; p < e; p++) {
        if (*p == '"') {
            if (straight && p > straight + 1) return 1;
            straight = p;
        } else if (e - p >= 3 && !memcmp(p, "\xe2\x80\x9c", 3)) {
            if (!open) open = p;
            p += 2;
        } else if (e - p >= 3 && !memcmp(p, "\xe2\x80\x9d", 3)) {
            if (open && p > open + 3) return 1;
            open = NULL;
            p += 2;
        }
    }
    return 0;
}

/* Is [b, e) a "kind: topic" line: a colon within 80 bytes after at most 8
   words with no '.', '"' or newline, then a space and more text? */
static int ev_kind_topic(const char *b, const char *e) {
    const char *c = (const char *)memchr(b, ':', (size_t)(e - b)), *q;
    int words = 1;
    if (!c || c - b >= 80 || c + 2 >= e || c[1] != ' ') return 0;
    for (q = b; q < c; q++) {
        if (*q == '.' || *q == '"' || *q == '\n') return 0;
        words += *q == ' ';
    }
    return words <= 8;
}

/* Is c an ASCII letter? */
static int ev_letter(char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }

/* Does [s, e) start with lit (lower-case ASCII letters and spaces), in any case? */
static int ev_starts_nocase(const char *s, const char *e, const char *lit) {
    for (; *lit; s++, lit++)
        if (s == e || (*s | 0x20) != *lit) return 0;
    return 1;
}

/* The shape of explanation ex: paragraphs, and what the first and the last are. */
static void ev_structure(const char *ex, ev_shape *sh) {
    const char *p = ex, *end = ex + strlen(ex), *b, *e = NULL, *first_b = NULL, *first_e = NULL,
               *last_b = NULL, *last_e = NULL;
    int quoted_before_last = 0;
    memset(sh, 0, sizeof *sh);
    while ((b = ev_paragraph(&p, end, &e)) != NULL) {
        if (!sh->paras++) {
            first_b = b;
            first_e = e;
        } else if (!quoted_before_last) {
            quoted_before_last = ev_has_quote(last_b, last_e);
        }
        last_b = b;
        last_e = e;
    }
    if (!sh->paras) return;
    sh->kind_topic = ev_kind_topic(first_b, first_e);
    sh->structured = first_e - first_b >= 10 && !memcmp(first_b, "Structured", 10) &&
                     (first_e - first_b == 10 || !ev_letter(first_b[10]));
    if (ev_starts_nocase(last_b, last_e, "the ")) last_b += 4;
    sh->final_tok = sh->paras > 1 && ev_starts_nocase(last_b, last_e, "final token");
    sh->quoted = quoted_before_last || (!sh->final_tok && ev_has_quote(last_b, last_e));
}

/* One results row, as the summary reads it. */
typedef struct {
    long sample_idx; /* -1: absent (then no vector) */
    int line;        /* of results.jsonl (or the results file) */
    double mse, cos;
    char *source, *role, *expl, *raw, *token, *preview;
    int parsed, position, kind, has_sum;
    uint64_t sum[2];     /* "vectors_fnv1a64", where has_sum */
    unsigned flags;      /* F_* bits */
    double norm;         /* vec_norm, NaN when absent */
    double greedy[2];    /* the greedy text's mse_nrm and cos, NaN when absent */
    int n_parts;
    double *parts;       /* [n_parts, 4]: mse_nrm and cos alone, then of the prefix */
} ev_srow;

typedef struct {
    ev_srow *row;
    int n;
    float *act;      /* [S, d] activations, or NULL */
    long n_act;
    int d;
    double baseline;
    const char *baseline_kind;
    char *dir;       /* the results folder, or NULL for a bare JSONL file */
} ev_set;

static void ev_set_free(ev_set *s) {
    for (int i = 0; i < s->n; i++) {
        ev_srow *r = &s->row[i];
        NLA_FREE(r->source);
        NLA_FREE(r->role);
        NLA_FREE(r->expl);
        NLA_FREE(r->raw);
        NLA_FREE(r->token);
        NLA_FREE(r->preview);
        NLA_FREE(r->parts);
    }
    NLA_FREE(s->row);
    NLA_FREE(s->act);
    NLA_FREE(s->dir);
    memset(s, 0, sizeof *s);
}

/* A string field as a heap copy (def when absent or not a string). */
static char *ev_field(const jdoc *d, const char *key, const char *def) {
    int k = json_get(d, 0, key);
    if (k >= 0 && d->node[k].type == J_STR) return json_strdup(d, k);
    return def ? xstrndup(def, strlen(def)) : NULL;
}

/* Number field k into *v, NaN when absent or no number; 0 when it is a
   number beyond a double's range (1e999: not finite data). */
static int ev_num(const jdoc *d, int k, double *v) {
    if (!json_num(d, k, v)) *v = NAN;
    else if (!isfinite(*v)) return 0;
    return 1;
}

/* A row's flags, greedy scores and parts from its fields; the flags of a
   row without "flags" (a published file) from its texts, its token (a
   special one by its text) and role, its cos. 0 when out of memory; -1
   when a score is not finite, or a part lacks one, said in bad. */
static int ev_row_extras(const jdoc *d, ev_srow *r, char *bad, size_t cap) {
    static const char *const special_roles[3] = {"bos", "role_marker", "end_of_turn"};
    const int fl = json_get(d, 0, "flags"), g = json_get(d, 0, "greedy"),
              pa = json_get(d, 0, "parts");
    int special = r->kind == K_SPECIAL;
    for (int k = 0; k < 3 && r->role; k++) special |= !strcmp(r->role, special_roles[k]);
    r->flags = ex_flags(r->expl, r->raw, r->parsed, 0, special, r->cos);
    if (fl >= 0 && d->node[fl].type == J_ARR) { /* as the run wrote them */
        r->flags = 0;
        for (uint32_t i = 0, k = (uint32_t)fl + 1; i < d->node[fl].n; i++, k = d->node[k].end)
            for (int f = 0; f < F_COUNT; f++)
                r->flags |= (unsigned)json_eq(d, (int)k, ex_flag_name[f]) << f;
    }
    r->flags &= ~(1u << F_NORM); /* decided against the other rows */
    if (!ev_num(d, json_get(d, 0, "vec_norm"), &r->norm)) {
        snprintf(bad, cap, "vec_norm is not a finite number");
        return -1;
    }
    for (int j = 0; j < 2; j++)
        if (!ev_num(d, json_get(d, g, j ? "cos" : "mse_nrm"), &r->greedy[j])) {
            snprintf(bad, cap, "greedy.%s is not a finite number", j ? "cos" : "mse_nrm");
            return -1;
        }
    if (isnan(r->greedy[0]) || isnan(r->greedy[1])) r->greedy[0] = r->greedy[1] = NAN;
    if (pa < 0 || d->node[pa].type != J_ARR || !d->node[pa].n) return 1;
    if (d->node[pa].n > EX_MAX_PARTS) { /* nla eval writes at most that many */
        snprintf(bad, cap, "parts has %u entries, more than %d", d->node[pa].n, EX_MAX_PARTS);
        return -1;
    }
    if (!(r->parts = (double *)xmalloc(d->node[pa].n, 4 * sizeof(double)))) return 0;
    r->n_parts = (int)d->node[pa].n;
    for (uint32_t i = 0, k = (uint32_t)pa + 1; i < d->node[pa].n; i++, k = d->node[k].end) {
        static const char *const key[4] = {"mse_nrm", "cos", "prefix_mse_nrm", "prefix_cos"};
        for (int j = 0; j < 4; j++) {
            double *v = &r->parts[4 * i + (uint32_t)j];
            if (!ev_num(d, json_get(d, (int)k, key[j]), v) || isnan(*v)) {
                snprintf(bad, cap, "parts[%u].%s %s", i, key[j],
                         isnan(*v) ? "is missing" : "is not a finite number");
                return -1;
            }
        }
    }
    return 1;
}

/* A study's rows name each sample once (a file joined twice would count
   its rows twice). */
static nla_status ev_rows_once(const ev_set *s, const char *path, errbuf *e) {
    ev_line *ln = (ev_line *)xmalloc((size_t)s->n + 1, sizeof *ln);
    nla_status rc = ln ? NLA_OK : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    int n = 0;
    for (int i = 0; ln && i < s->n; i++) /* off: the row's line */
        if (s->row[i].sample_idx >= 0) {
            ln[n].idx = s->row[i].sample_idx;
            ln[n++].off = (size_t)s->row[i].line;
        }
    if (ln) qsort(ln, (size_t)n, sizeof *ln, ev_cmp_line);
    for (int i = 1; !rc && i < n; i++)
        if (ln[i].idx == ln[i - 1].idx)
            rc = fail(e, NLA_ERR_FORMAT, "%s: lines %zu and %zu are both sample %ld", path,
                      ln[i - 1].off < ln[i].off ? ln[i - 1].off : ln[i].off,
                      ln[i - 1].off < ln[i].off ? ln[i].off : ln[i - 1].off, ln[i].idx);
    NLA_FREE(ln);
    return rc;
}

/* Reads a results folder or JSONL file, with its activations.npy if `vectors`. */
static nla_status ev_set_load(const char *results, const nla_eval_report_params *p, int vectors,
                              ev_set *s, errbuf *e) {
    char *path = path_join(results, "results.jsonl"), *buf = NULL, *pj = NULL;
    errbuf ign;
    FILE *f = path ? fopen(path, "rb") : NULL;
    size_t n = 0;
    int line = 0, cap = 0;
    nla_status rc;
    memset(s, 0, sizeof *s);
    if (f) fclose(f);
    if (!path || (f && !(s->dir = xstrndup(results, strlen(results)))))
        rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    else if ((rc = read_file(f ? path : results, &buf, &n, SIZE_MAX / 2, e)) == NLA_ERR_IO &&
             !f) { /* a folder (or anything) without results.jsonl that is no readable file */
        char why[sizeof e->msg];
        snprintf(why, sizeof why, "%s", e->msg);
        rc = fail(e, NLA_ERR_IO,
                  "%s is not a study: no results.jsonl in it (nla eval --out writes one), and "
                  "not a results file (%s)",
                  results, why);
    }
    for (size_t at = 0; !rc && at < n;) {
        const char *b = buf + at, *nl = (const char *)memchr(b, '\n', n - at);
        size_t len = nl ? (size_t)(nl - b) : n - at;
        jdoc d;
        double mse, cos;
        uint64_t u;
        int has_mse, has_cos, k, oom, ext;
        char bad[80];
        nla_status pr;
        at += len + 1;
        line++;
        if (!len) continue;
        if ((pr = json_parse(&d, b, len, NULL, "row")) == NLA_ERR_NOMEM) {
            rc = fail(e, pr, "eval: out of memory");
            break;
        }
        if (pr) {
            if (p->warn) {
                char m[ERR_CAP];
                snprintf(m, sizeof m, "%s: line %d is not JSON; skipped", f ? path : results,
                         line);
                p->warn(p->user, m);
            }
            continue;
        }
        has_mse = json_num(&d, json_get(&d, 0, "mse_nrm"), &mse);
        has_cos = json_num(&d, json_get(&d, 0, "cos"), &cos);
        if (d.node[0].type != J_OBJ || (!has_mse && !has_cos)) {
            if (p->warn) {
                char m[ERR_CAP];
                snprintf(m, sizeof m, "%s: line %d has no mse_nrm or cos; skipped",
                         f ? path : results, line);
                p->warn(p->user, m);
            }
            json_free(&d);
            continue;
        }
        if (s->n == cap) {
            ev_srow *g = (ev_srow *)NLA_REALLOC(s->row, sizeof(ev_srow) *
                                                            (size_t)(cap = cap ? 2 * cap : 256));
            if (!g) { json_free(&d); rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory"); break; }
            s->row = g;
        }
        ev_srow *r = &s->row[s->n++];
        memset(r, 0, sizeof *r);
        r->line = line;
        /* the chat parquet has no mse_nrm: mse_nrm = 2 (1 - cos) */
        r->mse = has_mse ? mse : 2 * (1 - cos);
        r->cos = has_cos ? cos : 1 - mse / 2;
        if (!isfinite(r->mse) || !isfinite(r->cos)) {
            const char *field = has_mse && !isfinite(mse)   ? "mse_nrm"
                                : has_cos && !isfinite(cos) ? "cos"
                                                            : NULL;
            json_free(&d);
            rc = field ? fail(e, NLA_ERR_FORMAT, "%s: line %d: %s is not a finite number",
                              f ? path : results, line, field)
                       : fail(e, NLA_ERR_FORMAT,
                              "%s: line %d: cos %g gives mse_nrm = 2 (1 - cos) beyond a "
                              "double's range",
                              f ? path : results, line, cos);
            break;
        }
        if ((has_mse && mse < 0) || (has_cos && !(fabs(cos) <= 1 + 1e-6))) {
            json_free(&d);
            rc = has_mse && mse < 0
                     ? fail(e, NLA_ERR_FORMAT, "%s: line %d: mse_nrm %g is negative",
                            f ? path : results, line, mse)
                     : fail(e, NLA_ERR_FORMAT, "%s: line %d: cos %g is outside [-1, 1]",
                            f ? path : results, line, cos);
            break;
        }
        r->sample_idx = json_u64(&d, json_get(&d, 0, "sample_idx"), &u) && u <= (uint64_t)LONG_MAX
                            ? (long)u
                            : -1;
        r->position = json_int(&d, json_get(&d, 0, "position"), &r->position) ? r->position : -1;
        r->has_sum = ev_row_sums(&d, r->sum);
        k = json_get(&d, 0, "av_parsed");
        r->parsed = k < 0 || d.node[k].type != J_FALSE;
        k = json_get(&d, 0, "role");
        /* NULL: a document (or out of memory, told apart below) */
        r->role = ev_field(&d, "role", NULL);
        oom = k >= 0 && d.node[k].type == J_STR && !r->role;
        r->source = ev_field(&d, "source", "(none)");
        r->expl = ev_field(&d, "explanation", "");
        r->raw = ev_field(&d, "raw_av_text", "");
        r->token = ev_field(&d, "token_str", "");
        r->preview = ev_field(&d, "text_preview", "");
        oom |= !r->source || !r->expl || !r->raw || !r->token || !r->preview;
        if (!oom) r->kind = ev_token_kind(r->token);
        ext = oom ? 1 : ev_row_extras(&d, r, bad, sizeof bad);
        json_free(&d);
        if (oom || !ext) { rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory"); break; }
        if (ext < 0) {
            rc = fail(e, NLA_ERR_FORMAT, "%s: line %d: %s", f ? path : results, line, bad);
            break;
        }
    }
    if (!rc && !s->n)
        rc = fail(e, NLA_ERR_FORMAT,
                  "%s: no rows of results (JSON lines with mse_nrm or cos, as nla eval writes)",
                  f ? path : results);
    if (!rc) { /* norm_outlier: each row's norm against all rows' */
        double *norm = (double *)xmalloc((size_t)s->n + 1, sizeof(double));
        unsigned *flags = (unsigned *)xcalloc((size_t)s->n + 1, sizeof(unsigned));
        for (int i = 0; norm && i < s->n; i++) norm[i] = s->row[i].norm;
        if (!norm || !flags || ex_norm_outliers(norm, s->n, flags))
            rc = fail(e, NLA_ERR_NOMEM, "eval: out of memory");
        for (int i = 0; !rc && i < s->n; i++) s->row[i].flags |= flags[i];
        NLA_FREE(norm);
        NLA_FREE(flags);
    }
    if (!rc && s->dir) rc = ev_rows_once(s, path, e);
    s->baseline = p->baseline;
    s->baseline_kind = "given";
    if (!rc && s->dir) { /* params.json's baseline (none readable: the default below), samples */
        jdoc d;
        double b = 0, planned = 0;
        nla_status pr = ev_read(s->dir, "params.json", &pj, NULL, &ign);
        if (!pr && !(pr = json_parse(&d, pj, strlen(pj), NULL, "params"))) {
            if (!(p->baseline > 0) && json_num(&d, json_get(&d, 0, "fve_baseline"), &b)) {
                s->baseline = b;
                s->baseline_kind = "training set (params.json)";
            }
            if (json_num(&d, json_get(&d, 0, "samples"), &planned) && planned > s->n &&
                p->warn) {
                char m[ERR_CAP];
                snprintf(m, sizeof m,
                         "%s: %d of the %.0f planned rows (a run not finished, or one shard: "
                         "nla eval --merge joins the shards)",
                         path, s->n, planned);
                p->warn(p->user, m);
            }
            json_free(&d);
        }
        if (pr == NLA_ERR_NOMEM) rc = fail(e, pr, "eval: out of memory");
        else if (pr == NLA_ERR_FORMAT && p->warn) {
            char m[ERR_CAP];
            snprintf(m, sizeof m, "%s/params.json is not JSON: its baseline is not used",
                     s->dir);
            p->warn(p->user, m);
        }
    }
    if (!(s->baseline > 0) || !isfinite(s->baseline)) {
        s->baseline = release_baseline(0);
        s->baseline_kind = "training set (12B default)";
    }
    if (!rc && s->dir && vectors) { /* the vectors, for fve against each group's own mean */
        char *ap = path_join(s->dir, "activations.npy");
        int64_t sh[2];
        int nd = 0;
        char why[ERR_CAP] = "";
        nla_status ar = ap ? nla_npy_read(ap, NULL, 0, sh, &nd, why, sizeof why) : NLA_ERR_NOMEM;
        if (ar == NLA_ERR_BUFFER_TOO_SMALL && nd == 2) {
            s->act = (float *)xmalloc((size_t)(sh[0] * sh[1]), sizeof(float));
            ar = s->act ? nla_npy_read(ap, s->act, (size_t)(sh[0] * sh[1]), sh, &nd, why,
                                       sizeof why)
                        : NLA_ERR_NOMEM;
            s->n_act = ar ? 0 : (long)sh[0];
            s->d = ar ? 0 : (int)sh[1];
        } else if (ar == NLA_ERR_BUFFER_TOO_SMALL) {
            ar = fail(e, NLA_ERR_FORMAT, "%s: vectors [S, d] expected", ap);
            snprintf(why, sizeof why, "%s", e->msg);
        }
        /* absent: no fve against own means; there but unreadable: refused */
        if (ar) { NLA_FREE(s->act); s->act = NULL; }
        if (ar == NLA_ERR_NOMEM) rc = fail(e, ar, "eval: out of memory");
        else if (ar && path_present(ap)) rc = fail(e, ar, "%s (the study's activations)", why);
        for (int i = 0; !rc && s->act && i < s->n;
             i++) { /* each row's vector is the one it was scored with */
            const ev_srow *r = &s->row[i];
            if (r->sample_idx < 0 || r->sample_idx >= s->n_act)
                rc = fail(e, NLA_ERR_FORMAT,
                          "%s: line %d has no sample_idx below %ld (the rows of %s)", path,
                          r->line, s->n_act, ap);
            else if (!ev_vec_ok(r->has_sum, r->sum, 0, s->act + (size_t)r->sample_idx * s->d,
                                s->d))
                rc = ev_vec_fail(e, ap, r->sample_idx, r->has_sum);
        }
        NLA_FREE(ap);
    }
    NLA_FREE(path); NLA_FREE(buf); NLA_FREE(pj);
    if (rc) ev_set_free(s);
    return rc;
}

typedef struct {
    int n;
    double mean, median, p10, p90, p99, cos, fve, fve_own, cata;
} ev_stats;

/* Statistics of the rows sel[0..n) (NaN when n is 0). */
static nla_status ev_stats_of(const ev_set *s, const int *sel, int n, ev_stats *st) {
    double *m = NULL;
    float *v = NULL;
    int nv = 0;
    nla_status rc = NLA_OK;
    memset(st, 0, sizeof *st);
    st->n = n;
    st->fve_own = NAN;
    if (!n) {
        st->mean = st->median = st->p10 = st->p90 = st->p99 = st->cos = st->fve = st->cata = NAN;
        return NLA_OK;
    }
    m = (double *)xmalloc((size_t)n, sizeof(double));
    if (s->act) v = (float *)xmalloc((size_t)n, (size_t)s->d * sizeof(float));
    if (!m || (s->act && !v)) { NLA_FREE(m); NLA_FREE(v); return NLA_ERR_NOMEM; }
    for (int i = 0; i < n; i++) {
        const ev_srow *r = &s->row[sel[i]];
        m[i] = r->mse;
        st->mean += r->mse / n;
        st->cos += r->cos / n;
        st->cata += (r->cos < 0.5) / (double)n;
        if (v && r->sample_idx >= 0 && r->sample_idx < s->n_act)
            memcpy(v + (size_t)nv++ * s->d, s->act + (size_t)r->sample_idx * s->d,
                   sizeof(float) * (size_t)s->d);
    }
    qsort(m, (size_t)n, sizeof(double), ev_cmp_dbl);
    st->median = ev_quantile(m, n, 0.5);
    st->p10 = ev_quantile(m, n, 0.1);
    st->p90 = ev_quantile(m, n, 0.9);
    st->p99 = ev_quantile(m, n, 0.99);
    st->fve = 1 - st->mean / s->baseline;
    if (v && nv == n) { /* every row has its vector: fve against the group's own mean */
        double B = 0;
        rc = nla_baseline(v, n, s->d, sqrt((double)s->d), &B);
        if (!rc && B > 0) st->fve_own = 1 - st->mean / B;
    }
    NLA_FREE(m);
    NLA_FREE(v);
    return rc == NLA_ERR_NOMEM ? rc : NLA_OK;
}

/* Output through the caller's write function; oom: a piece was lost. */
typedef struct {
    nla_write_fn write;
    void *user;
    int oom;
} ev_out;

static void ev_printf(ev_out *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void ev_printf(ev_out *o, const char *fmt, ...) {
    char buf[1024], *big = NULL;
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof buf) { /* a long name: format again into the heap */
        if (!(big = (char *)NLA_MALLOC((size_t)n + 1))) { o->oom = 1; return; }
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    if (n > 0) o->write(o->user, big ? big : buf, (size_t)n);
    NLA_FREE(big);
}

static void ev_json_num(ev_out *o, const char *key, double v, int last) {
    char num[32];
    json_put_num(num, sizeof num, v, 9);
    ev_printf(o, "\"%s\": %s%s", key, num, last ? "" : ", ");
}

static void ev_put_stats(ev_out *o, int json, const char *group, const char *name,
                         const ev_stats *st, int first) {
    if (json) {
        char *q = ev_json_string(name);
        if (!q) { o->oom = 1; return; }
        ev_printf(o, "%s\n  {\"group\": \"%s\", \"name\": %s, \"n\": %d, ", first ? "" : ",", group,
                  q, st->n);
        NLA_FREE(q);
        ev_json_num(o, "mse_mean", st->mean, 0);
        ev_json_num(o, "mse_median", st->median, 0);
        ev_json_num(o, "mse_p10", st->p10, 0);
        ev_json_num(o, "mse_p90", st->p90, 0);
        ev_json_num(o, "mse_p99", st->p99, 0);
        ev_json_num(o, "cos_mean", st->cos, 0);
        ev_json_num(o, "fve_nrm", st->fve, 0);
        ev_json_num(o, "fve_own_mean", st->fve_own, 0);
        ev_json_num(o, "catastrophic", st->cata, 1);
        ev_printf(o, "}");
    } else {
        char label[40], fve[16], own[16];
        snprintf(label, sizeof label, "%s%s%.*s", group, *group ? "=" : "", 30, name);
        ev_printf(o, "%-32s %6d %9.5f %9.5f %9.5f %9.5f %9.5f %8.5f %s %s %6.2f%%\n", label,
                  st->n, st->mean, st->median, st->p10, st->p90, st->p99, st->cos,
                  fixed_or_dash(fve, sizeof fve, 9, 4, st->fve, 0),
                  fixed_or_dash(own, sizeof own, 9, 4, st->fve_own, 0), 100 * st->cata);
    }
}

/* A row's place in the groups of one kind: by rank, then value, then row. */
typedef struct {
    int rank;      /* roles: the blog's order (others after); kinds: K_* */
    const char *v; /* the group's name */
    int row;
} ev_key;

static int ev_cmp_key(const void *a, const void *b) {
    const ev_key *x = (const ev_key *)a, *y = (const ev_key *)b;
    int c = (x->rank > y->rank) - (x->rank < y->rank);
    if (!c) c = strcmp(x->v, y->v);
    return c ? c : (x->row > y->row) - (x->row < y->row);
}

/* The rows of the groups of kind g (0 source, 1 role, 2 token kind) as keys
   sorted by group (documents have no role); returns their number. */
static int ev_group_keys(const ev_set *s, int g, ev_key *key) {
    int n = 0;
    for (int i = 0; i < s->n; i++) {
        const ev_srow *r = &s->row[i];
        ev_key *k = &key[n];
        k->row = i;
        k->rank = 0;
        k->v = g == 0 ? r->source : g == 1 ? r->role : ev_kind_name[r->kind];
        if (g == 1)
            for (k->rank = 0; k->rank < 5 && k->v && strcmp(k->v, ev_role_name[k->rank]);
                 k->rank++) {}
        if (g == 2) k->rank = r->kind;
        n += k->v != NULL; /* documents have no role */
    }
    qsort(key, (size_t)n, sizeof *key, ev_cmp_key);
    return n;
}

/* Statistics of every group of kind g (0 source, 1 role, 2 token kind): the
   rows sorted by group, then each run of one group. O(n log n). */
static nla_status ev_groups_write(const ev_set *s, int g, int json, ev_out *o, ev_key *key,
                                  int *sel) {
    static const char *const group[3] = {"source", "role", "token_kind"};
    ev_stats st;
    const int n = ev_group_keys(s, g, key);
    for (int i = 0, j; i < n; i = j) {
        for (j = i; j < n && key[j].rank == key[i].rank && !strcmp(key[j].v, key[i].v); j++)
            sel[j - i] = key[j].row;
        if (ev_stats_of(s, sel, j - i, &st)) return NLA_ERR_NOMEM;
        ev_put_stats(o, json, group[g], key[i].v, &st, 0);
    }
    return NLA_OK;
}

/* The trust flags (count, share, mean cos), the per-part scores (means by
   part index and by prefix) and, where the rows have it, the greedy text's
   mean scores beside the chosen one's; closes the JSON. 1: out of memory. */
static int ev_quality_write(const ev_set *s, int json, ev_out *o) {
    int nf[F_COUNT] = {0}, np[EX_MAX_PARTS] = {0}, n_gr = 0, max_parts = 0;
    double cf[F_COUNT] = {0}, sp[EX_MAX_PARTS][4], gr[4] = {0, 0, 0, 0};
    memset(sp, 0, sizeof sp);
    for (int i = 0; i < s->n; i++) {
        const ev_srow *r = &s->row[i];
        for (int f = 0; f < F_COUNT; f++)
            if (r->flags >> f & 1) { nf[f]++; cf[f] += r->cos; }
        for (int j = 0; j < r->n_parts && j < EX_MAX_PARTS; j++) {
            np[j]++;
            for (int k = 0; k < 4; k++) sp[j][k] += r->parts[4 * j + k];
        }
        max_parts = r->n_parts > max_parts ? (r->n_parts < EX_MAX_PARTS ? r->n_parts : EX_MAX_PARTS)
                                           : max_parts;
        if (!isnan(r->greedy[0])) {
            n_gr++;
            gr[0] += r->mse;
            gr[1] += r->cos;
            gr[2] += r->greedy[0];
            gr[3] += r->greedy[1];
        }
    }
#define MEAN(a, b) ((b) ? (a) / (b) : NAN)
    if (json) {
        ev_printf(o, ",\n \"flags\": {");
        for (int f = 0; f < F_COUNT; f++) {
            ev_printf(o, "%s\"%s\": {\"n\": %d, ", f ? ", " : "", ex_flag_name[f], nf[f]);
            ev_json_num(o, "share", MEAN((double)nf[f], s->n), 0);
            ev_json_num(o, "cos_mean", MEAN(cf[f], nf[f]), 1);
            ev_printf(o, "}");
        }
        ev_printf(o, "},\n \"parts\": [");
        for (int j = 0; j < max_parts; j++) {
            ev_printf(o, "%s{\"part\": %d, \"n\": %d, ", j ? ", " : "", j + 1, np[j]);
            ev_json_num(o, "mse_mean", MEAN(sp[j][0], np[j]), 0);
            ev_json_num(o, "cos_mean", MEAN(sp[j][1], np[j]), 0);
            ev_json_num(o, "prefix_mse_mean", MEAN(sp[j][2], np[j]), 0);
            ev_json_num(o, "prefix_cos_mean", MEAN(sp[j][3], np[j]), 1);
            ev_printf(o, "}");
        }
        ev_printf(o, "],\n \"greedy\": {\"n\": %d, ", n_gr);
        ev_json_num(o, "mse_mean_chosen", MEAN(gr[0], n_gr), 0);
        ev_json_num(o, "cos_mean_chosen", MEAN(gr[1], n_gr), 0);
        ev_json_num(o, "mse_mean_greedy", MEAN(gr[2], n_gr), 0);
        ev_json_num(o, "cos_mean_greedy", MEAN(gr[3], n_gr), 1);
        ev_printf(o, "}");
    } else {
        char mc[32];
        ev_printf(o, "\ntrust flags (a row may have several):\n");
        for (int f = 0; f < F_COUNT; f++)
            ev_printf(o, "  %-14s %6d  %6.2f%%  mean cos %s\n", ex_flag_name[f], nf[f],
                      100 * MEAN((double)nf[f], s->n),
                      fixed_or_dash(mc, sizeof mc, 0, 4, MEAN(cf[f], nf[f]), 0));
        if (max_parts)
            ev_printf(o, "\nper-part scores: %-6s %6s %10s %9s   %-10s %10s %9s\n", "part", "n",
                      "mse_mean", "cos", "prefix", "mse_mean", "cos");
        for (int j = 0; j < max_parts; j++)
            ev_printf(o, "%17s %-6d %6d %10.5f %9.5f   1-%-8d %10.5f %9.5f\n", "", j + 1, np[j],
                      sp[j][0] / np[j], sp[j][1] / np[j], j + 1, sp[j][2] / np[j],
                      sp[j][3] / np[j]);
        if (n_gr)
            ev_printf(o,
                      "\nchosen vs greedy explanation (%d rows; chosen by the same AR): mse_nrm "
                      "%.5f vs %.5f, cos %.5f vs %.5f\n",
                      n_gr, gr[0] / n_gr, gr[2] / n_gr, gr[1] / n_gr, gr[3] / n_gr);
    }
#undef MEAN
    return o->oom;
}

/* The summary: statistics overall and by group, the explanations'
   structure, the degenerate templates, the trust flags, the per-part
   scores; as tables or as JSON. */
static nla_status ev_summary_write(const ev_set *s, int json, ev_out *o, errbuf *e) {
    int *sel = (int *)xmalloc((size_t)s->n + 1, sizeof(int)), n_ex = 0, n_chat = 0, n_non = 0;
    ev_key *key = (ev_key *)xmalloc((size_t)s->n + 1, sizeof(ev_key));
    int sh_count[5] = {0, 0, 0, 0, 0}, str_chat = 0, str_non = 0, tmpl[T_COUNT] = {0, 0, 0, 0, 0};
    double tmpl_cos[T_COUNT] = {0, 0, 0, 0, 0};
    ev_stats st;
    nla_status rc = sel && key ? NLA_OK : NLA_ERR_NOMEM;
    if (!rc && json) {
        ev_printf(o, "{\"rows\": %d, ", s->n);
        ev_json_num(o, "baseline", s->baseline, 0);
        ev_printf(o, "\"baseline_kind\": \"%s\", \"vectors\": %s, \"groups\": [", s->baseline_kind,
                  s->act ? "true" : "false");
    } else if (!rc) {
        ev_printf(o, "nla eval summary: %d rows; fve_nrm against the %s baseline %.4g%s\n\n", s->n,
                  s->baseline_kind, s->baseline,
                  s->act ? ", fve_own against each group's own mean"
                         : " (no activations.npy: no fve_own)");
        ev_printf(o, "%-32s %6s %9s %9s %9s %9s %9s %8s %9s %9s %7s\n", "group", "n", "mse_mean",
                  "median", "p10", "p90", "p99", "cos", "fve_nrm", "fve_own", "cos<0.5");
    }
    for (int i = 0; !rc && i < s->n; i++) sel[i] = i;
    if (!rc && !(rc = ev_stats_of(s, sel, s->n, &st))) ev_put_stats(o, json, "", "all", &st, 1);
    for (int g = 0; g < 3 && !rc; g++) rc = ev_groups_write(s, g, json, o, key, sel);
    NLA_FREE(sel);
    NLA_FREE(key);
    if (rc) return fail(e, rc, "eval: out of memory");
    for (int i = 0; i < s->n; i++) {
        const ev_srow *r = &s->row[i];
        ev_shape sh;
        int flag[T_COUNT];
        ev_templates(r->expl, r->raw, r->parsed, flag);
        for (int t = 0; t < T_COUNT; t++) {
            tmpl[t] += flag[t];
            tmpl_cos[t] += flag[t] ? r->cos : 0;
        }
        if (!*r->expl) continue;
        ev_structure(r->expl, &sh);
        n_ex++;
        sh_count[0] += sh.paras >= 2 && sh.paras <= 3;
        sh_count[1] += sh.kind_topic;
        sh_count[2] += sh.structured;
        sh_count[3] += sh.quoted;
        sh_count[4] += sh.final_tok;
        if (r->role) { n_chat++; str_chat += sh.structured; }
        else { n_non++; str_non += sh.structured; }
    }
    {
        static const char *const shape_key[5] = {"two_or_three_paragraphs",
                                                 "first_kind_colon_topic", "first_word_structured",
                                                 "quoted_context", "final_token_paragraph"};
        static const char *const shape_what[5] = {"2-3 paragraphs",
                                                  "first paragraph \"kind: topic\"",
                                                  "first word \"Structured\"",
                                                  "a quoted context span",
                                                  "a final-token paragraph"};
#define SHARE(a, b) ((b) ? (double)(a) / (b) : NAN)
        if (json) {
            ev_printf(o, "],\n \"structure\": {\"explanations\": %d, ", n_ex);
            for (int k = 0; k < 5; k++) ev_json_num(o, shape_key[k], SHARE(sh_count[k], n_ex), 0);
            ev_printf(o, "\"chat_explanations\": %d, \"nonchat_explanations\": %d, ", n_chat,
                      n_non);
            ev_json_num(o, "structured_chat", SHARE(str_chat, n_chat), 0);
            ev_json_num(o, "structured_nonchat", SHARE(str_non, n_non), 1);
            ev_printf(o, "},\n \"templates\": {");
            for (int t = 0; t < T_COUNT; t++) {
                ev_printf(o, "\"%s\": {\"n\": %d, ", ev_tmpl_name[t], tmpl[t]);
                ev_json_num(o, "share", SHARE(tmpl[t], s->n), 0);
                ev_json_num(o, "cos_mean", SHARE(tmpl_cos[t], tmpl[t]), 1);
                ev_printf(o, "}%s", t + 1 < T_COUNT ? ", " : "");
            }
            ev_printf(o, "}");
        } else {
            char pc[2][32];
            ev_printf(o, "\nstructure of the %d non-empty explanations:\n",
                      n_ex);
            for (int k = 0; k < 5; k++)
                ev_printf(o, "  %-34s %6d  %s\n", shape_what[k], sh_count[k],
                          fixed_or_dash(pc[0], sizeof pc[0], 6, 1, SHARE(sh_count[k], n_ex), 1));
            ev_printf(o, "  %-34s %s of %d chat, %s of %d non-chat (blog: 80%% vs 7%%)\n",
                      "\"Structured\" by kind",
                      fixed_or_dash(pc[0], sizeof pc[0], 6, 1, SHARE(str_chat, n_chat), 1), n_chat,
                      fixed_or_dash(pc[1], sizeof pc[1], 0, 1, SHARE(str_non, n_non), 1), n_non);
            ev_printf(o, "\ndegenerate templates and failures:\n");
            for (int t = 0; t < T_COUNT; t++)
                ev_printf(o, "  %-72s %6d  %6.2f%%  mean cos %s\n", ev_tmpl_what[t], tmpl[t],
                          100 * SHARE(tmpl[t], s->n),
                          fixed_or_dash(pc[0], sizeof pc[0], 0, 4, SHARE(tmpl_cos[t], tmpl[t]), 0));
        }
#undef SHARE
    }
    return ev_quality_write(s, json, o) ? fail(e, NLA_ERR_NOMEM, "eval: out of memory") : NLA_OK;
}

/* nla eval --summary --cross-sample N: for all rows, each source, chat role
   and token kind, up to N rows spread evenly over the group (in results
   order), every reconstruction scored against every vector of the sample
   (nla_score_cross): do the explanations tell these tokens apart? */
static nla_status ev_cross_write(const ev_set *s, int N, int json, ev_out *o, errbuf *e) {
    static const char *const group[4] = {"", "source", "role", "token_kind"};
    const int d = s->d;
    ev_npy rec = {NULL, 0, 0};
    char *path = s->dir ? path_join(s->dir, "reconstructions.npy") : NULL;
    ev_key *key = (ev_key *)xmalloc((size_t)s->n + 1, sizeof(ev_key));
    const int M = N < s->n ? N : s->n; /* rows of a sample, at most */
    float *v = (float *)xmalloc((size_t)M * 2 * (size_t)d + 1, sizeof(float)),
          *r = v ? v + (size_t)M * d : NULL;
    int first = 1;
    nla_status rc = !s->dir || !s->act
                        ? fail(e, NLA_ERR_ARG,
                               "eval: --cross-sample needs a results folder with activations.npy")
                    : path && key && v ? ev_npy_open(&rec, path, s->n_act, d, 0, e)
                                       : fail(e, NLA_ERR_NOMEM, "eval: out of memory");
    if (!rc && json) ev_printf(o, ",\n \"cross\": {\"sample\": %d, \"groups\": [", N);
    else if (!rc)
        ev_printf(o,
                  "\ncross-scoring: up to %d rows per group, each reconstruction against every "
                  "vector of them\n"
                  "%-32s %6s %12s %10s %8s\n",
                  N, "group", "n", "own_closest", "mean_rank", "chance");
    for (int g = 0; !rc && g < 4; g++) {
        const int n = g ? ev_group_keys(s, g - 1, key) : s->n;
        for (int i = 0; !g && i < n; i++) {
            key[i].row = i;
            key[i].rank = 0;
            key[i].v = "all";
        }
        for (int i = 0, j; !rc && i < n; i = j) {
            for (j = i; j < n && key[j].rank == key[i].rank && !strcmp(key[j].v, key[i].v); j++) {}
            const int m = j - i, k = m < N ? m : N;
            nla_cross_scores cs;
            char label[40];
            for (int t = 0; !rc && t < k; t++) { /* row t of the sample: the group's row t m / k */
                const ev_srow *w = &s->row[key[i + (int)((long)t * m / k)].row];
                const long idx = w->sample_idx;
                if (idx < 0 || idx >= s->n_act)
                    rc = fail(e, NLA_ERR_FORMAT, "%s: a row has no sample_idx below %ld", s->dir,
                              s->n_act);
                else if (!ev_npy_get(&rec, idx, r + (size_t)t * d))
                    rc = fail(e, NLA_ERR_IO, "%s: cannot read row %ld", path, idx);
                else if (!ev_vec_ok(w->has_sum, w->sum, 1, r + (size_t)t * d, d))
                    rc = ev_vec_fail(e, path, idx, w->has_sum);
                else memcpy(v + (size_t)t * d, s->act + (size_t)idx * d, sizeof(float) * (size_t)d);
            }
            if (!rc && (rc = nla_score_cross(v, r, k, d, sqrt((double)d), NULL, NULL, &cs)))
                rc = rc == NLA_ERR_NOMEM ? fail(e, rc, "eval: out of memory")
                                         : fail(e, rc, "%s: a sampled vector or reconstruction "
                                                       "is all zeros", s->dir);
            if (rc) break;
            snprintf(label, sizeof label, "%s%s%.*s", group[g], *group[g] ? "=" : "", 30, key[i].v);
            if (json) {
                char *q = ev_json_string(key[i].v);
                if (!q) { o->oom = 1; break; }
                ev_printf(o, "%s\n  {\"group\": \"%s\", \"name\": %s, \"n\": %d, ",
                          first ? "" : ",", group[g], q, k);
                NLA_FREE(q);
                ev_json_num(o, "own_closest", cs.own_closest, 0);
                ev_json_num(o, "mean_rank", cs.mean_rank, 0);
                ev_json_num(o, "chance_rank", (k + 1) / 2.0, 1);
                ev_printf(o, "}");
            } else {
                ev_printf(o, "%-32s %6d %12.4f %10.3f %8.1f\n", label, k, cs.own_closest,
                          cs.mean_rank, (k + 1) / 2.0);
            }
            first = 0;
        }
    }
    if (!rc && json) ev_printf(o, "]}");
    if (rec.f) fclose(rec.f);
    NLA_FREE(path); NLA_FREE(key); NLA_FREE(v);
    return rc ? rc : o->oom ? fail(e, NLA_ERR_NOMEM, "eval: out of memory") : NLA_OK;
}

nla_status nla_eval_summary(const char *results, const nla_eval_report_params *params,
                            nla_write_fn write, void *user, char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    ev_set s;
    nla_eval_report_params p;
    ev_out o;
    nla_status rc;
    e.msg[0] = 0;
    memset(&p, 0, sizeof p);
    if (params) p = *params;
    o.write = write;
    o.user = user;
    o.oom = 0;
    rc = results && write
             ? ev_set_load(results, &p, 1, &s, &e)
             : fail(&e, NLA_ERR_ARG, "nla_eval_summary: results and write are required");
    if (!rc) {
        rc = ev_summary_write(&s, p.json, &o, &e);
        if (!rc && p.cross_sample > 0) rc = ev_cross_write(&s, p.cross_sample, p.json, &o, &e);
        if (!rc && p.json) ev_printf(&o, "}\n");
        ev_set_free(&s);
    }
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- the HTML report: one file, inline style and script, no network */

/* Collects written text in a growing heap buffer (the summary tables). */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} ev_text;

static void ev_text_write(void *user, const char *s, size_t n) {
    ev_text *t = (ev_text *)user;
    if (t->oom) return;
    if (t->n + n + 1 > t->cap) {
        size_t cap = (t->n + n + 1) * 2;
        char *g = (char *)NLA_REALLOC(t->p, cap);
        if (!g) { t->oom = 1; return; }
        t->p = g;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

/* Text escaped for HTML content and attribute values. */
static void ev_html(FILE *f, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char c = s[i];
        if (c == '&') fputs("&amp;", f);
        else if (c == '<') fputs("&lt;", f);
        else if (c == '>') fputs("&gt;", f);
        else if (c == '"') fputs("&quot;", f);
        else if (c == '\'') fputs("&#39;", f);
        else fputc(c, f);
    }
}

/* log10 of an error, clamped to [-12, 12] (a hostile row may hold 1e400). */
static double ev_log_mse(double mse) {
    return log10(mse < 1e-12 ? 1e-12 : mse > 1e12 ? 1e12 : mse);
}

/* Colour of an error: green (low) to red (high) on a log scale [lo, hi]. */
static void ev_colour(char *out, size_t cap, double mse, double lo, double hi) {
    double t = hi > lo ? (ev_log_mse(mse) - lo) / (hi - lo) : 0.5;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    snprintf(out, cap, "hsl(%d,75%%,72%%)", (int)(120 * (1 - t)));
}

/* A sampled token: coloured, the explanation in its title, its flags in
   data-f (the filter), its per-part and greedy scores in data-x (shown on
   click with the details). */
static void ev_html_token(FILE *f, const ev_srow *r, const char *text, size_t n, double lo,
                          double hi) {
    char col[32];
    ev_colour(col, sizeof col, r->mse, lo, hi);
    fprintf(f,
            "<span class=\"s\" style=\"background:%s\" data-m=\"%.6g\" data-c=\"%.6f\" "
            "data-p=\"%d\" data-f=\"",
            col, r->mse, r->cos, r->position);
    for (int k = 0, fl = 0; fl < F_COUNT; fl++)
        if (r->flags >> fl & 1) fprintf(f, "%s%s", k++ ? " " : "", ex_flag_name[fl]);
    fputs("\" data-x=\"", f);
    for (int j = 0; j < r->n_parts; j++)
        fprintf(f, "part %d alone: mse_nrm %.4g cos %.4g; parts 1-%d: mse_nrm %.4g cos %.4g&#10;",
                j + 1, r->parts[4 * j], r->parts[4 * j + 1], j + 1, r->parts[4 * j + 2],
                r->parts[4 * j + 3]);
    if (!isnan(r->greedy[0]))
        fprintf(f, "greedy explanation: mse_nrm %.4g cos %.4g&#10;", r->greedy[0], r->greedy[1]);
    fputs("\" title=\"", f);
    ev_html(f, r->expl, strlen(r->expl));
    fputs("\">", f);
    ev_html(f, text, n);
    fputs("</span>", f);
}

/* Histogram of log10 mse_nrm of the rows of one group, as inline SVG. */
static void ev_html_hist(FILE *f, const ev_set *s, int g, const char *name) {
    enum { NB = 24 };
    const double lo = -4, hi = 0.7; /* log10 mse_nrm: 1e-4 .. 5 */
    int bin[NB] = {0}, n = 0, mx = 1;
    for (int i = 0; i < s->n; i++) {
        const ev_srow *r = &s->row[i];
        const char *v = g ? r->role : r->source;
        int b;
        if (!v || strcmp(v, name)) continue;
        b = (int)((ev_log_mse(r->mse) - lo) / (hi - lo) * NB);
        bin[b < 0 ? 0 : b >= NB ? NB - 1 : b]++;
        n++;
    }
    for (int b = 0; b < NB; b++) mx = bin[b] > mx ? bin[b] : mx;
    fputs("<figure><svg width=\"260\" height=\"110\" viewBox=\"0 0 260 110\">", f);
    for (int b = 0; b < NB; b++)
        fprintf(f,
                "<rect x=\"%d\" y=\"%d\" width=\"9\" height=\"%d\" "
                "fill=\"#4a7ab8\"><title>%d</title></rect>",
                10 + b * 10, 90 - 80 * bin[b] / mx, 80 * bin[b] / mx, bin[b]);
    fputs("<line x1=\"10\" y1=\"90\" x2=\"250\" y2=\"90\" stroke=\"#333\"/>"
          "<text x=\"10\" y=\"105\">1e-4</text>"
          "<text x=\"120\" y=\"105\">0.01</text>"
          "<text x=\"225\" y=\"105\">5</text></svg><figcaption>",
          f);
    fputs(g ? "role " : "source ", f);
    ev_html(f, name, strlen(name));
    fprintf(f, " (n %d)</figcaption></figure>\n", n);
}

static int ev_cmp_idx(const void *a, const void *b) {
    const long x = ((const ev_key *)a)->rank, y = ((const ev_key *)b)->rank;
    return (x > y) - (x < y);
}

/* The rows that have a sample_idx, sorted by it (key.rank: the sample_idx;
   key.row: the row), for ev_row_of; NULL when out of memory. */
static ev_key *ev_rows_by_idx(const ev_set *s, int *n) {
    ev_key *k = (ev_key *)xmalloc((size_t)s->n + 1, sizeof(ev_key));
    *n = 0;
    if (!k) return NULL;
    for (int i = 0; i < s->n; i++)
        if (s->row[i].sample_idx >= 0 && s->row[i].sample_idx <= INT_MAX) {
            k[*n].rank = (int)s->row[i].sample_idx;
            k[*n].v = NULL;
            k[(*n)++].row = i;
        }
    qsort(k, (size_t)*n, sizeof *k, ev_cmp_idx);
    return k;
}

/* The row of sample idx (the first of duplicates), or -1. */
static int ev_row_of(const ev_key *order, int n, uint64_t idx) {
    int lo = 0, hi = n; /* the first key >= idx is in [lo, hi] */
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if ((uint64_t)order[mid].rank < idx) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && (uint64_t)order[lo].rank == idx ? order[lo].row : -1;
}

/* The texts of tokens.jsonl (up to max of them), each sampled token
   coloured and holding its row's explanation; *shown counts them. */
static nla_status ev_html_texts(FILE *f, const ev_set *s, const ev_key *order, int n_order,
                                const char *tokens, size_t tn, int max, double lo, double hi,
                                int *shown, errbuf *e) {
    for (size_t at = 0; at < tn && *shown < max;) {
        const char *b = tokens + at, *nl = (const char *)memchr(b, '\n', tn - at);
        const size_t len = nl ? (size_t)(nl - b) : tn - at;
        jdoc d;
        int tk, ps, k, pk, j = 0, pos = -1;
        uint64_t first = 0;
        char *src;
        const nla_status pr = json_parse(&d, b, len, NULL, "tokens.jsonl");
        at += len + 1;
        if (pr == NLA_ERR_NOMEM) return fail(e, pr, "eval: out of memory");
        if (pr) continue; /* a line changed by hand: not shown */
        tk = json_get(&d, 0, "tokens");
        ps = json_get(&d, 0, "positions");
        if (tk < 0 || ps < 0 || d.node[tk].type != J_ARR || d.node[ps].type != J_ARR ||
            !json_u64(&d, json_get(&d, 0, "first_sample"), &first)) {
            json_free(&d);
            continue;
        }
        if (!(src = ev_field(&d, "source", ""))) {
            json_free(&d);
            return fail(e, NLA_ERR_NOMEM, "eval: out of memory");
        }
        fputs("<div class=\"text\"><div class=\"meta\">", f);
        ev_html(f, src, strlen(src));
        NLA_FREE(src);
        fputs(" &middot; ", f);
        if ((k = json_get(&d, 0, "record_id")) >= 0)
            ev_html(f, d.src + d.node[k].off, d.node[k].len);
        fputs("</div>", f);
        pk = ps + 1;
        if (d.node[ps].n > 0) json_int(&d, pk, &pos);
        k = tk + 1;
        for (uint32_t t = 0; t < d.node[tk].n; t++, k = (int)d.node[k].end) {
            char piece[EV_PIECE];
            const size_t pl = json_str(&d, k, piece, sizeof piece);
            const int row = (int)t == pos ? ev_row_of(order, n_order, first + (uint64_t)j) : -1;
            if (row >= 0)
                ev_html_token(f, &s->row[row], piece, pl < sizeof piece ? pl : sizeof piece - 1, lo,
                              hi);
            else ev_html(f, piece, pl < sizeof piece ? pl : sizeof piece - 1);
            if ((int)t == pos && (uint32_t)++j < d.node[ps].n) {
                pk = (int)d.node[pk].end;
                json_int(&d, pk, &pos);
            }
        }
        fputs("</div>\n", f);
        (*shown)++;
        json_free(&d);
    }
    return NLA_OK;
}

nla_status nla_eval_report_html(const char *results, const char *html_path,
                                const nla_eval_report_params *params, char *errbuf_out,
                                size_t errbuf_size) {
    errbuf e;
    ev_set s;
    ev_text sum;
    nla_eval_report_params p;
    ev_out o;
    out_file of;
    FILE *f = NULL; /* of.f */
    char *tokens = NULL;
    size_t tn = 0;
    double lo = 0, hi = 0;
    int shown = 0, n_order = 0;
    ev_key *order = NULL;
    nla_status rc;
    e.msg[0] = 0;
    memset(&p, 0, sizeof p);
    memset(&sum, 0, sizeof sum);
    if (params) p = *params;
    if (!p.max_texts) p.max_texts = 200;
    o.write = ev_text_write;
    o.user = &sum;
    o.oom = 0;
    rc = results && html_path
             ? NLA_OK
             : fail(&e, NLA_ERR_ARG, "nla_eval_report_html: results and html_path are required");
    if (!rc && same_file(html_path, results))
        rc = fail(&e, NLA_ERR_ARG, "eval: the report %s is the input %s: give another file",
                  html_path, results);
    if (!rc) rc = out_check(html_path, &e);
    if (!rc) { /* nor is its temporary file */
        char *tmp = tmp_path(html_path);
        if (!tmp) rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
        else if (!strcmp(tmp, results) || same_file(tmp, results))
            rc = fail(&e, NLA_ERR_ARG,
                      "eval: the report %s would remove the input %s (its temporary file while "
                      "it is written): give another file",
                      html_path, results);
        NLA_FREE(tmp);
    }
    /* nor one of the results folder's files: RESULTS, or the folder of a results file */
    char *rj = rc ? NULL : path_join(results, "results.jsonl");
    char *dir = !rj ? NULL : file_exists(rj) ? xstrndup(results, strlen(results)) : dir_of(results);
    if (!rc && !dir) rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
    for (int i = 0; i < EV_N_FILES && !rc; i++) {
        const int is = ev_is_file(dir, ev_files[i], 0, html_path);
        if (is)
            rc = is < 0 ? fail(&e, NLA_ERR_NOMEM, "eval: out of memory")
                        : fail(&e, NLA_ERR_ARG,
                               "eval: the report %s is %s of %s: give another file", html_path,
                               ev_files[i], dir);
    }
    NLA_FREE(rj);
    NLA_FREE(dir);
    if (!rc) rc = ev_set_load(results, &p, 1, &s, &e);
    if (rc) { copy_err(errbuf_out, errbuf_size, e.msg); return rc; }
    rc = ev_summary_write(&s, 0, &o, &e);
    if (!rc && sum.oom) rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
    for (int i = 0; i < s.n; i++) {
        const double l = ev_log_mse(s.row[i].mse);
        if (!i || l < lo) lo = l;
        if (!i || l > hi) hi = l;
    }
    if (!rc && !(order = ev_rows_by_idx(&s, &n_order)))
        rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
    of.f = NULL;
    if (!rc && (rc = out_open(&of, html_path, &e)) == NLA_OK) f = of.f;
    if (!rc) {
        fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
              "<title>nla eval report</title>\n<style>\n"
              "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222}"
              "pre{font-size:12px;background:#f6f6f6;padding:.8em;overflow-x:auto}\n"
              "figure{display:inline-block;margin:.3em}figcaption{font-size:12px;text-align:center}"
              "svg text{font-size:9px}\n"
              ".text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;"
              "border:1px solid #ddd;padding:.5em;margin:.4em 0}\n"
              ".s{cursor:pointer;border-radius:2px;outline:1px solid #888}"
              ".meta{font-size:12px;color:#555}\n"
              "#detail{position:sticky;top:0;background:#fffbe6;border:1px solid #e0c96b;"
              "padding:.5em;white-space:pre-wrap;min-height:1.5em}\n"
              "</style></head><body>\n<h1>nla eval report</h1>\n"
              "<p id=\"status\">(the script did not run)</p>\n<h2>Summary</h2>\n<pre>",
              f);
        ev_html(f, sum.p ? sum.p : "", sum.n);
        fputs("</pre>\n<h2>mse_nrm by source</h2>\n", f);
        for (int g = 0; g < 2; g++) {
            const char *seen[64];
            int n_seen = 0;
            if (g) fputs("<h2>mse_nrm by chat role</h2>\n", f);
            for (int i = 0; i < s.n && n_seen < 64; i++) {
                const char *v = g ? s.row[i].role : s.row[i].source;
                int k;
                if (!v) continue;
                for (k = 0; k < n_seen && strcmp(seen[k], v); k++) {}
                if (k == n_seen) { seen[n_seen++] = v; ev_html_hist(f, &s, g, v); }
            }
        }
        fputs("<h2>Texts</h2>\n<p class=\"meta\">Sampled tokens are outlined and coloured by "
              "mse_nrm (green low, red high, log scale); "
              "hover for the explanation, click for details (per-part scores when the run has "
              "them).</p>\n"
              "<p class=\"meta\">Show only the tokens flagged <select id=\"flag\"><option "
              "value=\"\">(all tokens)</option>",
              f);
        for (int fl = 0; fl < F_COUNT; fl++) fprintf(f, "<option>%s</option>", ex_flag_name[fl]);
        fputs("</select> <span id=\"nflag\"></span></p>\n<div id=\"detail\">click a coloured "
              "token</div>\n",
              f);
    }
    if (!rc && s.dir) { /* whole texts, token by token, where tokens.jsonl is there */
        nla_status tr = ev_read(s.dir, "tokens.jsonl", &tokens, &tn, &e);
        if (tr == NLA_ERR_NOMEM) rc = tr;
        else if (tr == NLA_OK)
            rc = ev_html_texts(f, &s, order, n_order, tokens, tn, p.max_texts, lo, hi, &shown, &e);
        else if (p.warn) {
            char m[ERR_CAP + 64];
            snprintf(m, sizeof m, "%s; the report shows each row's preview instead", e.msg);
            p.warn(p.user, m);
        }
    }
    if (!rc && !tokens) { /* a bare JSONL file: each row's preview and token */
        for (int i = 0; i < s.n && shown < p.max_texts; i++, shown++) {
            const ev_srow *r = &s.row[i];
            fputs("<div class=\"text\"><div class=\"meta\">", f);
            ev_html(f, r->source, strlen(r->source));
            fputs("</div>", f);
            ev_html(f, r->preview, strlen(r->preview));
            fputs(" &rarr; ", f);
            ev_html_token(f, r, r->token, strlen(r->token), lo, hi);
            fputs("</div>\n", f);
        }
    }
    if (f) {
        fprintf(
            f,
            "<script>\n(function(){\n"
            "var sp=document.querySelectorAll('span.s'),d=document.getElementById('detail');\n"
            "document.getElementById('status').textContent='report ready: %d rows, '+sp.length+' "
            "tokens shown in %d texts';\n"
            "for(var i=0;i<sp.length;i++)sp[i].addEventListener('click',function(){var s=this;\n"
            "d.textContent='token '+JSON.stringify(s.textContent)+' at position '+s.dataset.p+': "
            "mse_nrm '+s.dataset.m+', cos '+s.dataset.c+"
            "(s.dataset.f?'\\nflags: '+s.dataset.f:'')+'\\n'+s.dataset.x+'\\n'+s.title;});\n"
            "var fs=document.getElementById('flag');fs.addEventListener('change',function(){var "
            "k=0,t=document.querySelectorAll('div.text');\n"
            "for(var i=0;i<sp.length;i++){var on=!fs.value||(' '+sp[i].dataset.f+' ').indexOf(' "
            "'+fs.value+' ')>=0;k+=on;sp[i].style.opacity=on?'':'0.15';}\n"
            "for(var j=0;j<t.length;j++){var a=t[j].querySelectorAll('span.s'),show=!fs.value;\n"
            "for(var "
            "q=0;q<a.length;q++)show=show||a[q].style.opacity==='';t[j].style.display=show?'':'"
            "none';}\n"
            "document.getElementById('nflag').textContent=fs.value?k+' tokens':'';});\n"
            "})();\n</script>\n</body></html>\n",
            s.n, shown);
        if (rc) of.err = ECANCELED; /* no file */
        const nla_status committed = out_commit(&of, rc ? NULL : &e);
        if (!rc) rc = committed;
    }
    NLA_FREE(tokens);
    NLA_FREE(order);
    NLA_FREE(sum.p);
    ev_set_free(&s);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- comparing two runs of one study (a quantization audit) */

/* A record's id and positions in tokens.jsonl, as text: "id [p, q, ...]". */
static void ev_record_key(const jdoc *d, char *out, size_t cap) {
    const int id = json_get(d, 0, "record_id"), ps = json_get(d, 0, "positions");
    const char *q = id >= 0 && d->node[id].type == J_STR ? "\"" : ""; /* a string id as written */
    size_t n = (size_t)snprintf(out, cap, "%s%.*s%s [", q,
                                id >= 0 ? (int)(d->node[id].len < 200 ? d->node[id].len : 200) : 1,
                                id >= 0 ? d->src + d->node[id].off : "?", q);
    for (uint32_t i = 0, k = (uint32_t)ps + 1;
         ps >= 0 && d->node[ps].type == J_ARR && i < d->node[ps].n && n < cap;
         i++, k = d->node[k].end) {
        int v = -1;
        json_int(d, (int)k, &v);
        n += (size_t)snprintf(out + n, cap - n, "%s%d", i ? ", " : "", v);
    }
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* The same records and positions in a's and b's tokens.jsonl, or
   NLA_ERR_ARG naming the first difference. */
static nla_status ev_same_study(const char *a, const char *b, errbuf *e) {
    char *ta = NULL, *tb = NULL;
    size_t na = 0, nb = 0, ia = 0, ib = 0;
    int rec = 0;
    nla_status rc = ev_read(a, "tokens.jsonl", &ta, &na, e);
    if (!rc) rc = ev_read(b, "tokens.jsonl", &tb, &nb, e);
    while (!rc && (ia < na || ib < nb)) {
        const char *la = ta + ia, *lb = tb + ib, *ea = (const char *)memchr(la, '\n', na - ia), *eb;
        char ka[512], kb[512];
        jdoc da, db;
        if (ia >= na || ib >= nb) {
            rc = fail(e, NLA_ERR_ARG,
                      "%s and %s are not runs of one study: %s has more than %d records", a, b,
                      ia < na ? a : b, rec);
            break;
        }
        eb = (const char *)memchr(lb, '\n', nb - ib);
        ia = ea ? (size_t)(ea - ta) + 1 : na;
        ib = eb ? (size_t)(eb - tb) + 1 : nb;
        const char *bad = NULL; /* the folder whose line is not JSON */
        if ((rc = json_parse(&da, la, ea ? (size_t)(ea - la) : na - (size_t)(la - ta), e, a)))
            bad = a;
        else if ((rc = json_parse(&db, lb, eb ? (size_t)(eb - lb) : nb - (size_t)(lb - tb), e, b)))
            bad = b, json_free(&da);
        if (bad) {
            if (rc == NLA_ERR_FORMAT)
                fail(e, rc, "%s/tokens.jsonl: line %d is not JSON", bad, rec + 1);
            break;
        }
        ev_record_key(&da, ka, sizeof ka);
        ev_record_key(&db, kb, sizeof kb);
        if (strcmp(ka, kb))
            rc = fail(e, NLA_ERR_ARG,
                      "%s and %s are not runs of one study: record %d is %s in the first, %s in "
                      "the second",
                      a, b, rec + 1, ka, kb);
        json_free(&da);
        json_free(&db);
        rec++;
    }
    NLA_FREE(ta);
    NLA_FREE(tb);
    return rc;
}

/* A folder's reconstructions.npy [S, d] into a heap array, each row of s
   checked against its checksum (NULL: failed, said in e). */
static float *ev_recons(const ev_set *s, errbuf *e) {
    const long S = s->n_act;
    const int d = s->d;
    char *path = path_join(s->dir, "reconstructions.npy");
    int64_t sh[2];
    int nd = 0;
    float *r = (float *)xmalloc((size_t)S + 1, (size_t)d * sizeof(float));
    nla_status rc = path && r ? nla_npy_read(path, r, (size_t)S * d, sh, &nd, e->msg, sizeof e->msg)
                              : fail(e, NLA_ERR_NOMEM, "out of memory");
    if (!rc && (nd != 2 || sh[0] != S || sh[1] != d))
        rc = fail(e, NLA_ERR_FORMAT, "%s: not [%ld, %d] like its activations.npy", path, S, d);
    for (int i = 0; !rc && i < s->n; i++) { /* each row's is the one it was scored with */
        const ev_srow *w = &s->row[i];
        if (w->sample_idx >= 0 && w->sample_idx < S &&
            !ev_vec_ok(w->has_sum, w->sum, 1, r + (size_t)w->sample_idx * d, d))
            rc = ev_vec_fail(e, path, w->sample_idx, w->has_sum);
    }
    NLA_FREE(path);
    if (rc) NLA_FREE(r);
    return rc ? NULL : r;
}

/* cos between x and y [d] (1 for two equal vectors, 0 when one is zero). */
static double ev_cos(const float *x, const float *y, int d) {
    double dot = 0, nx = 0, ny = 0;
    for (int i = 0; i < d; i++) {
        dot += (double)x[i] * y[i];
        nx += (double)x[i] * x[i];
        ny += (double)y[i] * y[i];
    }
    return nx > 0 && ny > 0 ? dot / sqrt(nx * ny) : 0;
}

/* One row of both runs. */
typedef struct {
    int a, b;                     /* the row in each set */
    double dmse, dcos, act, rec;  /* B - A; cos of the activations, of the reconstructions */
} ev_pair;

static int ev_cmp_change(const void *x, const void *y) {
    const ev_pair *p = (const ev_pair *)x, *q = (const ev_pair *)y;
    const double a = fabs(p->dmse), b = fabs(q->dmse);
    return a != b ? (a < b) - (a > b) : (p->a > q->a) - (p->a < q->a);
}

/* The summary of the pairs and the 20 that changed most. */
static void ev_compare_write(const ev_set *A, const ev_set *B, ev_pair *pr, int n, int only,
                             int json, ev_out *o) {
    double m[10] = {
        0, 0, 0, 0, 0, 0,
        1, 0, 1, 0}; /* dmse, |dmse|, max |dmse|, dcos, |dcos|, same, min act, act, min rec, rec */
    int same = 0;
    for (int i = 0; i < n; i++) {
        const ev_pair *p = &pr[i];
        m[0] += p->dmse / n;
        m[1] += fabs(p->dmse) / n;
        m[2] = fmax(m[2], fabs(p->dmse));
        m[3] += p->dcos / n;
        m[4] += fabs(p->dcos) / n;
        same += !strcmp(A->row[p->a].expl, B->row[p->b].expl);
        m[6] = fmin(m[6], p->act);
        m[7] += p->act / n;
        m[8] = fmin(m[8], p->rec);
        m[9] += p->rec / n;
    }
    m[5] = n ? (double)same / n : NAN;
    qsort(pr, (size_t)n, sizeof *pr, ev_cmp_change);
    if (json) {
        static const char *const key[10] = {
            "dmse_mean",        "abs_dmse_mean", "abs_dmse_max", "dcos_mean",   "abs_dcos_mean",
            "same_explanation", "act_cos_min",   "act_cos_mean", "rec_cos_min", "rec_cos_mean"};
        ev_printf(o, "{\"rows\": %d, \"unmatched\": %d, ", n, only);
        for (int k = 0; k < 10; k++) ev_json_num(o, key[k], n ? m[k] : NAN, 0);
        ev_printf(o, "\"changed_most\": [");
        for (int i = 0; i < n && i < 20; i++) {
            const ev_pair *p = &pr[i];
            ev_printf(o, "%s\n  {\"sample_idx\": %ld, \"position\": %d, ", i ? "," : "",
                      A->row[p->a].sample_idx, A->row[p->a].position);
            ev_json_num(o, "mse_nrm_a", A->row[p->a].mse, 0);
            ev_json_num(o, "mse_nrm_b", B->row[p->b].mse, 0);
            ev_json_num(o, "dmse", p->dmse, 0);
            ev_json_num(o, "dcos", p->dcos, 0);
            ev_printf(o, "\"same_explanation\": %s, ",
                      strcmp(A->row[p->a].expl, B->row[p->b].expl) ? "false" : "true");
            ev_json_num(o, "act_cos", p->act, 0);
            ev_json_num(o, "rec_cos", p->rec, 1);
            ev_printf(o, "}");
        }
        ev_printf(o, "]}\n");
        return;
    }
    ev_printf(o, "nla eval compare: %d rows in both (%d in only one); B - A\n\n", n, only);
    ev_printf(o, "  mean dmse_nrm %.6g, mean |dmse_nrm| %.6g, max |dmse_nrm| %.6g\n", m[0], m[1],
              m[2]);
    ev_printf(o, "  mean dcos %.6g, mean |dcos| %.6g\n", m[3], m[4]);
    ev_printf(o, "  identical explanations %d of %d (%.2f%%)\n", same, n, 100 * m[5]);
    ev_printf(o, "  cos of the activations: mean %.9g, min %.9g\n", m[7], m[6]);
    ev_printf(o, "  cos of the reconstructions: mean %.9g, min %.9g\n", m[9], m[8]);
    ev_printf(o,
              "\nthe %d rows that changed most (|dmse_nrm|):\n%10s %8s %-14s %10s %10s %10s %10s "
              "%5s %12s %12s\n",
              n < 20 ? n : 20, "sample_idx", "position", "token", "mse_nrm A", "mse_nrm B",
              "dmse_nrm", "dcos", "same", "act cos", "rec cos");
    for (int i = 0; i < n && i < 20; i++) {
        const ev_pair *p = &pr[i];
        char shown[16];
        size_t k = 0;
        for (const char *c = A->row[p->a].token; *c && k < 14; c++)
            shown[k++] = *c == '\n' ? ' ' : *c;
        shown[k] = 0;
        ev_printf(o, "%10ld %8d %-14s %10.5f %10.5f %10.5f %10.5f %5s %12.9f %12.9f\n",
                  A->row[p->a].sample_idx, A->row[p->a].position, shown, A->row[p->a].mse,
                  B->row[p->b].mse, p->dmse, p->dcos,
                  strcmp(A->row[p->a].expl, B->row[p->b].expl) ? "no" : "yes", p->act, p->rec);
    }
}

nla_status nla_eval_compare(const char *results_a, const char *results_b,
                            const nla_eval_report_params *params, nla_write_fn write, void *user,
                            char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    ev_set A, B;
    nla_eval_report_params p;
    ev_out o;
    ev_pair *pr = NULL;
    float *ra = NULL, *rb = NULL;
    int n = 0, only = 0, n_order = 0;
    ev_key *order = NULL;
    nla_status rc;
    e.msg[0] = 0;
    memset(&p, 0, sizeof p);
    memset(&A, 0, sizeof A);
    memset(&B, 0, sizeof B);
    if (params) p = *params;
    o.write = write;
    o.user = user;
    o.oom = 0;
    rc =
        results_a && results_b && write
            ? ev_same_study(results_a, results_b, &e)
            : fail(&e, NLA_ERR_ARG, "nla_eval_compare: two results folders and write are required");
    if (!rc) rc = ev_set_load(results_a, &p, 1, &A, &e);
    if (!rc) rc = ev_set_load(results_b, &p, 1, &B, &e);
    if (!rc && (!A.act || !B.act || A.n_act != B.n_act || A.d != B.d))
        rc = fail(&e, NLA_ERR_ARG, "%s and %s: both need activations.npy of one shape", results_a,
                  results_b);
    if (!rc && (!(ra = ev_recons(&A, &e)) || !(rb = ev_recons(&B, &e))))
        rc = NLA_ERR_FORMAT;
    if (!rc && (!(order = ev_rows_by_idx(&B, &n_order)) ||
                !(pr = (ev_pair *)xmalloc((size_t)A.n + 1, sizeof *pr))))
        rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
    for (int i = 0; !rc && i < A.n; i++) { /* the rows of A's samples that B has too */
        const long idx = A.row[i].sample_idx;
        const int j = idx >= 0 && idx < A.n_act ? ev_row_of(order, n_order, (uint64_t)idx) : -1;
        if (j < 0) { only++; continue; }
        pr[n].a = i;
        pr[n].b = j;
        pr[n].dmse = B.row[j].mse - A.row[i].mse;
        pr[n].dcos = B.row[j].cos - A.row[i].cos;
        pr[n].act = ev_cos(A.act + (size_t)idx * A.d, B.act + (size_t)idx * A.d, A.d);
        pr[n++].rec = ev_cos(ra + (size_t)idx * A.d, rb + (size_t)idx * A.d, A.d);
    }
    if (!rc) {
        ev_compare_write(&A, &B, pr, n, only + (B.n - n), p.json, &o);
        if (o.oom) rc = fail(&e, NLA_ERR_NOMEM, "eval: out of memory");
    }
    NLA_FREE(pr); NLA_FREE(ra); NLA_FREE(rb); NLA_FREE(order);
    ev_set_free(&A);
    ev_set_free(&B);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

/* --- searching a study: nla search */

/* The rows are held in memory; the vectors stay in activations.npy (615 MB
   for 40000 rows of d = 3840) and each search streams them through a
   buffer of SEARCH_ROWS rows. */
#define SEARCH_ROWS 256

struct nla_study {
    ev_set s;      /* the rows (no vectors) */
    ev_key *order; /* rows by sample_idx: the order of activations.npy */
    int n_order;
    char *npy;     /* activations.npy: [n_act, d] float32 from byte data_off */
    long data_off, n_act;
    int d;
};

nla_status nla_study_open(const char *dir, nla_eval_warn_fn warn, void *user, nla_study **out,
                          char *errbuf_out, size_t errbuf_size) {
    errbuf e;
    nla_eval_report_params p;
    nla_study *st = NULL;
    char *rp = dir ? path_join(dir, "results.jsonl") : NULL;
    FILE *f = rp ? fopen(rp, "rb") : NULL;
    int64_t sh[2];
    int nd = 0;
    nla_status rc = NLA_OK;
    e.msg[0] = 0;
    memset(&p, 0, sizeof p);
    p.warn = warn;
    p.user = user;
    if (f) fclose(f);
    if (out) *out = NULL;
    if (!dir || !out) rc = fail(&e, NLA_ERR_ARG, "nla_study_open: dir and out are required");
    else if (!rp || !(st = (nla_study *)NLA_CALLOC(1, sizeof *st)) ||
             !(st->npy = path_join(dir, "activations.npy")))
        rc = fail(&e, NLA_ERR_NOMEM, "search: out of memory");
    else if (!f)
        rc = fail(&e, NLA_ERR_IO,
                  "%s is not a study: it has no results.jsonl (nla eval --out writes one)", dir);
    else if (!(rc = npy_probe(st->npy, sh, &nd, &st->data_off, &e)) &&
             (nd != 2 || sh[1] < 1 || sh[1] > INT_MAX))
        rc = fail(&e, NLA_ERR_FORMAT, "%s: vectors [S, d] expected", st->npy);
    if (!rc) {
        st->n_act = (long)sh[0];
        st->d = (int)sh[1];
        rc = ev_set_load(dir, &p, 0, &st->s, &e);
    }
    for (int i = 0; !rc && i < st->s.n; i++)
        if (st->s.row[i].sample_idx < 0 || st->s.row[i].sample_idx >= st->n_act)
            rc = fail(&e, NLA_ERR_FORMAT,
                      "%s: row %d: sample_idx missing or not below the %ld rows of activations.npy",
                      rp, i + 1, st->n_act);
    if (!rc && !(st->order = ev_rows_by_idx(&st->s, &st->n_order)))
        rc = fail(&e, NLA_ERR_NOMEM, "search: out of memory");
    NLA_FREE(rp);
    copy_err(errbuf_out, errbuf_size, e.msg);
    if (rc) nla_study_close(st);
    else *out = st;
    return rc;
}

void nla_study_close(nla_study *st) {
    if (!st) return;
    ev_set_free(&st->s);
    NLA_FREE(st->order);
    NLA_FREE(st->npy);
    NLA_FREE(st);
}

int nla_study_count(const nla_study *st) { return st ? st->s.n : 0; }
int nla_study_dim(const nla_study *st) { return st ? st->d : 0; }

nla_status nla_study_get(const nla_study *st, int i, nla_study_row *out) {
    if (!st || !out) return NLA_ERR_ARG;
    if (i < 0 || i >= st->s.n) return NLA_ERR_RANGE;
    const ev_srow *r = &st->s.row[i];
    out->sample_idx = r->sample_idx;
    out->token = r->token;
    out->preview = r->preview;
    out->explanation = r->expl;
    out->mse_nrm = r->mse;
    out->cos = r->cos;
    return NLA_OK;
}

int nla_study_find(const nla_study *st, long idx) {
    return st && idx >= 0 ? ev_row_of(st->order, st->n_order, (uint64_t)idx) : -1;
}

/* Reads n rows of activations.npy from sample_idx `first` into x [n, d]
   through f (each caller its own FILE, so that threads share the study). */
static int st_read_rows(const nla_study *st, FILE *f, long first, long n, float *x) {
    if ((double)st->data_off + (double)first * st->d * 4 > (double)LONG_MAX) return 0;
    return !fseek(f, st->data_off + first * st->d * 4, SEEK_SET) &&
           fread(x, sizeof(float) * (size_t)st->d, (size_t)n, f) == (size_t)n;
}

nla_status nla_study_vector(const nla_study *st, int i, float *out) {
    if (!st || !out) return NLA_ERR_ARG;
    if (i < 0 || i >= st->s.n) return NLA_ERR_RANGE;
    FILE *f = fopen(st->npy, "rb");
    const int ok = f && st_read_rows(st, f, st->s.row[i].sample_idx, 1, out);
    if (f) fclose(f);
    const ev_srow *r = &st->s.row[i]; /* the vector it was scored with, or refused */
    return !ok                                        ? NLA_ERR_IO
           : ev_vec_ok(r->has_sum, r->sum, 0, out, st->d) ? NLA_OK
                                                          : NLA_ERR_FORMAT;
}

/* Highest cosine first, then row order. */
static int st_cmp_hit(const void *a, const void *b) {
    const nla_search_hit *x = (const nla_search_hit *)a, *y = (const nla_search_hit *)b;
    if (x->cos != y->cos) return x->cos < y->cos ? 1 : -1;
    return (x->row > y->row) - (x->row < y->row);
}

/* x . q and x . x in double, four partial sums each (independent adds). */
static void st_dots(const float *x, const float *q, int d, double *xq, double *xx) {
    double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
    int k = 0;
    for (; k + 4 <= d; k += 4)
        for (int j = 0; j < 4; j++) {
            a[j] += (double)x[k + j] * q[k + j];
            b[j] += (double)x[k + j] * x[k + j];
        }
    for (; k < d; k++) {
        a[0] += (double)x[k] * q[k];
        b[0] += (double)x[k] * x[k];
    }
    *xq = (a[0] + a[1]) + (a[2] + a[3]);
    *xx = (b[0] + b[1]) + (b[2] + b[3]);
}

nla_status nla_study_search(const nla_study *st, const nla_search_params *params,
                            nla_search_hit *hits, int cap, int *n_hits, int *n_match,
                            char *errbuf_out, size_t errbuf_size) {
    nla_search_params none;
    memset(&none, 0, sizeof none);
    const nla_search_params *p = params ? params : &none;
    errbuf e;
    nla_search_hit *all = NULL;
    unsigned char *keep = NULL;
    float *buf = NULL;
    FILE *f = NULL;
    uint64_t sum[SEARCH_ROWS]; /* the checksums of the rows read */
    double qq = 0, ign;
    int n = 0, d = st ? st->d : 0;
    nla_status rc = NLA_OK;
    e.msg[0] = 0;
    if (!st || !n_hits || cap < 0 || (cap && !hits))
        rc = fail(&e, NLA_ERR_ARG, "nla_study_search: study, hits and n_hits are required");
    if (!rc && p->query) st_dots(p->query, p->query, d, &qq, &ign);
    if (!rc && p->query && !(qq > 0 && isfinite(qq)))
        rc = fail(&e, NLA_ERR_ARG, "search: the query vector is zero or not finite");
    if (!rc && (!(all = (nla_search_hit *)xmalloc((size_t)st->s.n + 1, sizeof *all)) ||
                !(keep = (unsigned char *)xmalloc((size_t)st->s.n + 1, 1))))
        rc = fail(&e, NLA_ERR_NOMEM, "search: out of memory");
    /* 1. the rows whose explanation matches */
    for (int i = 0; !rc && i < st->s.n; i++) keep[i] = 1;
#ifdef NLA_NO_REGEX
    if (!rc && p->regex)
        rc = fail(&e, NLA_ERR_UNSUPPORTED,
                  "search: this build has no regular expressions (no regex.h)");
#else
    if (!rc && p->regex) {
        regex_t re;
        const int err =
            regcomp(&re, p->regex, REG_EXTENDED | REG_NOSUB | (p->icase ? REG_ICASE : 0));
        if (err) {
            char why[128];
            regerror(err, &re, why, sizeof why);
            rc = fail(&e, NLA_ERR_ARG, "search: bad regular expression '%s': %s", p->regex, why);
        }
        for (int i = 0; !err && i < st->s.n; i++)
            keep[i] = !regexec(&re, st->s.row[i].expl, 0, NULL, 0);
        if (!err) regfree(&re);
    }
#endif
    /* 2. without a query, study order; with one, each row's cosine, the
       file read in order of sample_idx, SEARCH_ROWS rows at a time */
    for (int i = 0; !rc && !p->query && i < st->s.n; i++)
        if (keep[i]) { all[n].row = i; all[n++].cos = 0; }
    if (!rc && p->query) {
        if (!(buf = (float *)xmalloc(SEARCH_ROWS, sizeof(float) * (size_t)d)))
            rc = fail(&e, NLA_ERR_NOMEM, "search: out of memory");
        else if (!(f = fopen(st->npy, "rb")))
            rc = fail(&e, NLA_ERR_IO, "%s: cannot open (%s)", st->npy, strerror(errno));
    }
    for (int k = 0; !rc && p->query && k < st->n_order;) {
        const long first = st->order[k].rank,
                   rows = st->n_act - first < SEARCH_ROWS ? st->n_act - first : SEARCH_ROWS;
        if (!st_read_rows(st, f, first, rows, buf)) {
            rc = fail(&e, NLA_ERR_IO, "%s: read error", st->npy);
            break;
        }
        ev_vec_sums(buf, rows, d, sum);
        for (; k < st->n_order && st->order[k].rank < first + rows; k++) {
            const int i = st->order[k].row;
            const ev_srow *r = &st->s.row[i];
            const float *x = buf + (size_t)(st->order[k].rank - first) * d;
            double xq, xx;
            if (!keep[i]) continue;
            if (r->has_sum ? sum[st->order[k].rank - first] != r->sum[0]
                           : !ev_vec_ok(0, r->sum, 0, x, d)) {
                rc = ev_vec_fail(&e, st->npy, r->sample_idx, r->has_sum);
                break;
            }
            st_dots(x, p->query, d, &xq, &xx);
            if (!isfinite(xx)) continue; /* a vector with a NaN or Inf never matches */
            const double c =
                xx > 0 ? xq / sqrt(xx * qq) : 0; /* as nla_score: a zero vector has cos 0 */
            all[n].row = i;
            all[n++].cos = c;
        }
    }
    if (!rc) {
        if (p->query) qsort(all, (size_t)n, sizeof *all, st_cmp_hit);
        *n_hits = n < cap ? n : cap;
        if (*n_hits) memcpy(hits, all, sizeof *all * (size_t)*n_hits);
        if (n_match) *n_match = n;
    }
    if (f) fclose(f);
    NLA_FREE(all); NLA_FREE(keep); NLA_FREE(buf);
    copy_err(errbuf_out, errbuf_size, e.msg);
    return rc;
}

#endif /* NLA_NO_EVAL */

/* ==== 15 CLI (only with -DNLA_MAIN) ===================================== */

/* The command-line tool. It drives the library through nla.h, so it doubles
   as the worked example of the API, except for these internals, each used so
   that the tool has no second copy of code the library already holds:
     - the allocator macros NLA_MALLOC ... (section 1) and PRINTF_LIKE;
     - strings, files and errors: sbuf, sb_put, sb_str, xstrndup, errbuf (2),
       read_file, path_join (4), copy_file (8);
     - the JSON reader and string writer (3): jdoc, json_parse, json_get,
       json_str, json_strdup, json_free, json_put_string: --chat files,
       --jsonl input and the JSON it prints (nla.h has no JSON API);
     - ar_tokens (13): the AR inputs' lengths, to size the AR session for
       the longest one;
     - release_baseline (13): nla score's default baseline, for vectors that
       come without a model;
     - random-model only: the float formats (f32_to_bf16, f32_to_f16, 2), the
       random generator (rng_next, rng_uniform, 12) and the quantized layout
       (QK, QG, blk_bytes, group_bytes, mat_bytes, 6), to write checkpoints
       larger than memory group by group.
   Output that other tools parse (ids, .npy files) goes to stdout or files;
   messages go to stderr. */
#ifdef NLA_MAIN
#ifndef _WIN32
#include <sys/stat.h> /* mkdir */
#include <unistd.h>   /* link, isatty */
#include <sys/ioctl.h> /* the terminal's width */
#endif
#include <errno.h>

/* A command of parse_opts: its name, its usage (--help), and the options
   it takes, each of them named in the usage (test_cli checks the two
   against each other, so that no option is silently ignored). */
typedef struct {
    const char *name, *usage, *opts;
} cli_spec;

/* The options of every command that loads a model, in its usage. */
#define USAGE_LOAD                                                                      \
    "  --quant q8_0|q4   quantize the matrices at load (8.5 or 4.5 bits per weight)\n" \
    "  --embed-scale bf16|stored|exact   rounding of sqrt(hidden) (default bf16)\n"
#define OPTS_LOAD " --quant --embed-scale"

static const char *const usage_main =
    "usage: nla <command> [options]\n"
    "\n"
    "commands:\n"
    "  info DIR                      architecture, layer pattern, dims, dtypes, sizes\n"
    "  forward DIR --ids I,J,...     run the model on token ids, write logits / hidden states\n"
    "  generate DIR (--ids I,J,... | --prompt TEXT | --chat FILE) -n N\n"
    "                                generate up to N tokens (greedy or sampled)\n"
    "  tokenize DIR|tokenizer.json [--bos] [--pieces] TEXT   text -> token ids\n"
    "  tokenize DIR|tokenizer.json --jsonl [--bos]   one JSON string per stdin line -> ids\n"
    "  detokenize DIR|tokenizer.json I,J,...          token ids -> text\n"
    "\n"
    "NLA commands (vectors are float32 .npy [n, d]; records are JSONL):\n"
    "  explain TARGET AV AR (--text TEXT | --text-file F | --chat FILE) [--positions I,J]\n"
    "                                explain the target's activations: AV -> text -> AR -> score\n"
    "  extract TARGET (--text TEXT | --text-file F | --chat FILE) [--positions I,J | --all]\n"
    "                                --out v.npy\n"
    "  verbalize AV v.npy            one explanation per vector\n"
    "  reconstruct AR (--text E | --jsonl FILE) --out r.npy\n"
    "  score v.npy r.npy [--baseline B | --baseline own]\n"
    "  score --cross v.npy r.npy     every reconstruction against every vector: are they told "
    "apart?\n"
    "  steer TARGET AV AR (--text TEXT | --text-file F | --chat FILE)\n"
    "                                (--toward TEXT2 | --toward-npy F)\n"
    "                                move an activation along another's direction, explain each\n"
#ifndef NLA_NO_EVAL
    "  search RESULTS_DIR (--query TEXT --ar AR | --near ROW | --grep REGEX)\n"
    "                                the tokens of a study closest in meaning\n"
    "  eval TARGET AV AR [--docs FILE] [--chats FILE] --out DIR   the pretraining-vs-chat study,\n"
    "                                resumable and shardable; eval --merge / --summary / --html\n"
#endif
    "  random-model DIR              a tiny NLA trio with random weights, for trying it out\n"
    "  quantize IN_DIR OUT_DIR --quant q8_0|q4   save a quantized copy that loads by mapping\n"
    "\n"
    "DIR is a Hugging Face Gemma 3 folder (config.json + safetensors), as downloaded.\n"
    "Run 'nla <command> --help' for the options of a command.\n";

static const char *const usage_forward =
    "usage: nla forward DIR --ids 2,818,5279 [--logits L.npy] [--hidden H.npy] [--layer K]\n"
    "\n"
    "  --ids I,J,...   token ids (include the BOS id 2 yourself)\n"
    "  --logits FILE   write float32 [T, vocab] logits at every position (.npy)\n"
    "  --hidden FILE   write float32 [L, T, d] block outputs before the final norm (.npy);\n"
    "                  with --layer K: [T, d], the output of block K alone\n"
    "  --layer K       stop after block K (0-based; = HF hidden_states[K+1])\n"
    "  --threads N     threads (default: all)\n" USAGE_LOAD
    "Without --logits or --hidden, prints the top 5 next tokens after the last position.\n";
static const cli_spec spec_forward = {"forward", usage_forward,
                                      "--ids --logits --hidden --layer --threads" OPTS_LOAD};

static const char *const usage_generate =
    "usage: nla generate DIR (--ids 2,818,5279 | --prompt TEXT | --text-file F | --chat FILE)\n"
    "                    -n N [options]\n"
    "\n"
    "  --ids I,J,...   prompt token ids (include the BOS id 2 yourself); prints ids\n"
    "  --prompt TEXT   prompt text, tokenized with BOS; prints text\n"
    "  --text-file F   the prompt text of file F (-: standard input); prints text\n"
    "  --chat FILE     a JSON list of {\"role\", \"content\"} rendered with the Gemma 3 chat\n"
    "                  template and a generation prompt; prints text\n"
    "  -n N            tokens to generate at most\n"
    "  --temp T        temperature; 0 (default) is greedy\n"
    "  --top-k K       keep the K most likely tokens (default: all)\n"
    "  --top-p P       nucleus sampling mass (default 1: off)\n"
    "  --seed S        RNG seed (default 0)\n"
    "  --stop I,J,...  stop ids (default: eos ids of generation_config.json)\n"
    "  --tokenizer F   tokenizer.json to use (default: DIR/tokenizer.json)\n"
    "  --threads N     threads (default: all)\n" USAGE_LOAD
    "Output is streamed as it is produced: ids comma-separated, or text.\n";
static const cli_spec spec_generate = {
    "generate", usage_generate,
    "--ids --prompt --text-file --chat -n --temp --top-k --top-p --seed --stop --tokenizer "
    "--threads" OPTS_LOAD};

static const char *const usage_tokenize =
    "usage: nla tokenize DIR|tokenizer.json [--bos] [--pieces] [--no-special] TEXT\n"
    "       nla tokenize DIR|tokenizer.json --jsonl [--bos] [--pieces] [--no-special] < lines\n"
    "\n"
    "  --bos          prepend <bos> (2), as Hugging Face does with add_special_tokens\n"
    "  --pieces       print one 'id piece' line per token instead of the id list\n"
    "  --no-special   treat added tokens written in the text (<bos>, <start_of_turn>) as text\n"
    "  --jsonl        read one JSON string per line on stdin, write one JSON array of ids per\n"
    "                 line (null, with a message on stderr, for a line that is not a string);\n"
    "                 with --pieces, of [id,\"piece\"] pairs\n"
    "Prints the ids comma-separated, ready for nla forward and nla generate.\n";
static const cli_spec spec_tokenize = {"tokenize", usage_tokenize,
                                       "--bos --pieces --no-special --jsonl"};

static const char *const usage_detokenize =
    "usage: nla detokenize DIR|tokenizer.json 2,818,5279\n\nPrints the text of the ids.\n";
static const cli_spec spec_detokenize = {"detokenize", usage_detokenize, ""};

static const char *const usage_info = "usage: nla info DIR\n\nPrints the architecture, layer "
                                      "pattern, dimensions, dtype, parameter count and bytes.\n";

static int cli_error(const char *fmt, ...) PRINTF_LIKE(1, 2);
static int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("nla: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* Creates the folder dir unless it exists (its name synced to the disk);
   *made: whether it was made now. */
static int cli_mkdir(const char *dir, int *made) {
    *made = 0;
#ifndef _WIN32
    if (!mkdir(dir, 0777)) *made = 1;
    if (*made ? (errno = sync_dir_of(dir)) != 0 : errno != EEXIST)
        return cli_error("%s: cannot create the folder (%s)", dir, strerror(errno));
#endif
    return 0;
}

/* Removes the folder dir that cli_mkdir made (*made) for a run that failed,
   where the run wrote nothing in it (else it stays, with what it holds). */
static void cli_unmake(const char *dir, int made) {
#ifndef _WIN32
    if (made) rmdir(dir);
#else
    (void)dir;
    (void)made;
#endif
}

/* "2,818,5279" -> ids (malloc'd). Returns the count, or -1. */
static int parse_ids(const char *s, int32_t **out) {
    int n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    int32_t *ids = (int32_t *)NLA_MALLOC((size_t)n * sizeof *ids);
    if (!ids) return -1;
    for (int i = 0; i < n; i++) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX || (*end != ',' && *end != 0)) {
            NLA_FREE(ids);
            return -1;
        }
        ids[i] = (int32_t)v;
        s = end + (*end == ',');
    }
    *out = ids;
    return n;
}

static int parse_int(const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < INT_MIN || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

/* The CLI's bounds: explanation tokens and threads (a session's limit). */
#define CLI_MAX_NEW 4096
#define CLI_MAX_THREADS 1024

/* "bad value" for an option, with what the option takes. */
static int cli_bad_value(const char *v, const char *opt) {
    static const char *const want[][2] = {
        {"--max-new", "an integer in 1..4096"}, {"--threads", "an integer in 0..1024 (0: all)"},
        {"--batch", "an integer in 1..256"}, {"--shard", "I/N with 1 <= I <= N"},
        {"--temp", "a finite number >= 0"}, {"--top-p", "a number in 0..1"},
        {"--top-k", "an integer >= 0"}, {"-n", "a positive integer"},
        {"--baseline", "a finite number > 0"}, {"--best-of", "an integer in 1..256"}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        if (!strcmp(opt, want[i][0]))
            return cli_error("bad value '%s' for %s: %s", v, opt, want[i][1]);
    return cli_error("bad value '%s' for %s", v, opt);
}

/* A decimal number ("1", "-0.5", "2e-3"): strtod also reads hex ("0x10"
   is 16), inf, nan and leading spaces, which the CLI refuses. The number
   at s runs to the first byte of `stop` (or the end). */
static int is_decimal(const char *s, const char *stop) {
    const size_t n = strcspn(s, stop);
    return n && strspn(s, "0123456789+-.eE") == n;
}

/* A finite decimal number (values past float's range are refused too). */
static int parse_float(const char *s, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (!is_decimal(s, "") || end == s || *end || !is_float(v)) return 0;
    *out = (float)v;
    return 1;
}

static int cli_npy_write(const char *path, const float *data, int ndim, const int64_t *shape) {
    char err[512];
    return nla_npy_write(path, data, ndim, shape, err, sizeof err) ? cli_error("%s", err) : 0;
}

/* Opens dir; its tokenizer is `shared` where given, else the file `tokenizer`
   or dir's own. */
static int open_model(const char *dir, nla_embed_scale es, nla_quant quant, const char *tokenizer,
                      const nla_tokenizer *shared, nla_model **m) {
    char err[512];
    nla_model_params mp;
    memset(&mp, 0, sizeof mp);
    mp.embed_scale = es;
    mp.quant = quant;
    mp.tokenizer = shared ? NULL : tokenizer;
    mp.shared_tokenizer = shared;
    /* NLA_READ_WEIGHTS=1: read the weights into memory instead of mapping
       the files (README, Performance: on hosts that reclaim mapped file
       pages proactively, 12B decodes about twice as fast) */
    const char *rw = getenv("NLA_READ_WEIGHTS");
    mp.no_mmap = rw && *rw && strcmp(rw, "0") != 0;
    nla_status rc = nla_model_open(dir, &mp, m, err, sizeof err);
    if (rc) return cli_error("%s (%s)", err, nla_strerror(rc));
    return 0;
}

static const char *dtype_name(nla_dtype dt) {
    static const char *const names[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
    return (unsigned)dt < 5 ? names[dt] : "?";
}

static int cmd_info(int argc, char **argv) {
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(usage_info, argc < 1 ? stderr : stdout);
        return argc < 1;
    }
    nla_model *m;
    if (open_model(argv[0], NLA_EMBED_SCALE_BF16, NLA_QUANT_NONE, NULL, NULL, &m)) return 1;
    nla_model_info in;
    nla_model_get_info(m, &in);
    printf("architecture     %s\n", in.architecture);
    printf("layers           %d (%d global)\n", in.n_layers, in.n_global_layers);
    printf("layer pattern    ");
    for (int l = 0; l < in.n_layers; l++) putchar(nla_model_layer_is_global(m, l) ? 'G' : 's');
    printf("   (s = sliding window %d, G = global)\n", in.sliding_window);
    printf("hidden           %d\nintermediate     %d\n", in.d_model, in.d_ff);
    printf("heads            %d query, %d key/value, head_dim %d\n", in.n_heads, in.n_kv_heads,
           in.head_dim);
    printf("query scale      1/sqrt(%g)\n", (double)in.query_pre_attn_scalar);
    printf("rope             local theta %g; global theta %g, linear factor %g\n",
           (double)in.rope_theta_local, (double)in.rope_theta_global,
           (double)in.rope_factor_global);
    printf("vocab            %d rows%s\n", in.vocab_size,
           in.tied_embeddings ? " (tied LM head)" : " (separate lm_head)");
    printf("embed scale      %.6g\n", (double)in.embed_scale);
    printf("final norm       %s\n", in.has_final_norm ? "yes" : "no (hidden states only)");
    printf("max positions    %d\n", in.max_position_embeddings);
    printf("eos ids          ");
    for (int i = 0; i < in.n_eos; i++) printf("%s%d", i ? "," : "", in.eos_ids[i]);
    printf("\ndtype            %s%s\n", dtype_name(in.dtype),
           in.quant_bytes ? " (quantized at load)" : "");
    printf("parameters       %llu\n", (unsigned long long)in.n_params);
    printf("weight bytes     %llu (%.3f GB) in %d file%s\n", (unsigned long long)in.weight_bytes,
           (double)in.weight_bytes / 1e9, in.n_files, in.n_files == 1 ? "" : "s");
    const nla_tokenizer *tok = nla_model_tokenizer(m);
    if (tok) printf("tokenizer        %d ids\n", nla_tokenizer_n_ids(tok));
    else printf("tokenizer        none (no tokenizer.json: token ids only)\n");
    nla_meta meta;
    nla_model_get_meta(m, &meta);
    if (meta.present) {
        printf("NLA role         %s (nla_meta.yaml)\n", meta.role);
        printf("NLA layer K      %d (the target's block %d output = HF hidden_states[%d])\n",
               meta.layer, meta.layer, meta.layer + 1);
        if (!strcmp(meta.role, "av")) {
            printf("injection scale  %.9g\n", meta.injection_scale);
            printf("marker           %d between %d and %d", meta.marker_id, meta.marker_left_id,
                   meta.marker_right_id);
            if (meta.av_prompt)
                printf("; AV prompt %d ids, marker at %d", meta.av_prompt_len,
                       meta.av_marker_index);
            printf("\n");
        } else {
            printf("value head       %s\n",
                   meta.has_value_head ? "value_head.safetensors" : "missing");
            printf("suffix ids       ");
            for (int i = 0; i < meta.n_critic_suffix; i++)
                printf("%s%d", i ? "," : "", meta.critic_suffix_ids[i]);
            printf("\n");
        }
        printf("mse scale        %.17g\nfve baseline     %.4g\n", meta.mse_scale,
               meta.fve_baseline);
        if (meta.base_checkpoint) printf("base checkpoint  %s\n", meta.base_checkpoint);
        if (meta.defaulted[0]) printf("from defaults    %s\n", meta.defaulted);
    }
    nla_model_close(m);
    return 0;
}

typedef struct {
    const char *dir, *logits, *hidden, *ids_arg, *stop_arg, *prompt, *chat, *tokenizer, *text;
    const char *arg[3];      /* positional arguments (dir = arg[0], text = arg[1]) */
    int n_arg;
    const char *out, *positions, *text_opt, *text_file, *baseline, *role, *shape;
    int all, max_new, batch, best_of, with_greedy, parts, force;
    int layer, n, top_k, threads, seed, bos, pieces, jsonl, no_special;
    float temp, top_p;
    nla_embed_scale es;
    nla_quant quant;
    const nla_tokenizer *shared_tok; /* set by explain: one tokenizer for the three models */
} cli_opts;

/* The folder of a model given as its .safetensors or .index.json file
   (malloc'd), or NULL for any other path. */
static char *model_file_dir(const char *path) {
    const char *dot = strrchr(path_base(path), '.');
    return (dot && !strcmp(dot, ".safetensors")) || is_index_json(path) ? dir_of(path) : NULL;
}

/* An output file that is one of the command's inputs (a file, or a model's
   .json, .yaml or .safetensors file in a model folder given, or in the
   folder of a model given as its .safetensors or .index.json file) or the
   other output would destroy it, and so would an output whose temporary
   file (tmp_path) is an input: refused, and so is an output that is not a
   regular file (out_check), before any work. */
static int cli_out_clash(const cli_opts *o) {
    const char *out[3] = {o->out, o->logits, o->hidden},
               *in[8] = {o->arg[0],  o->arg[1], o->arg[2],    o->tokenizer,
                         o->logits,  o->hidden, o->text_file, o->chat};
    for (int i = 0; i < 3; i++) {
        errbuf e;
        if (out[i] && out_check(out[i], &e)) return cli_error("%s", e.msg);
        char *od = out[i] ? dir_of(out[i]) : NULL;
        const char *base = out[i] ? path_base(out[i]) : "", *dot = strrchr(base, '.');
        const int model_file =
            dot && (!strcmp(dot, ".json") || !strcmp(dot, ".yaml") || !strcmp(dot, ".safetensors"));
        char *tmp = out[i] ? tmp_path(out[i]) : NULL;
        int clash = -1, via_tmp = 0;
        for (int k = 0; k < 8 && out[i] && clash < 0; k++) {
            if (!in[k] || in[k] == out[i]) continue;
            char *md = model_file ? model_file_dir(in[k]) : NULL;
            via_tmp = tmp && (!strcmp(tmp, in[k]) || same_file(tmp, in[k]));
            if (via_tmp || !strcmp(out[i], in[k]) || same_file(out[i], in[k]) ||
                (model_file && same_file(od, md ? md : in[k])))
                clash = k;
            NLA_FREE(md);
        }
        NLA_FREE(od);
        NLA_FREE(tmp);
        if (clash >= 0)
            return cli_error("%s: the output would %s the input %s%s: give another path", out[i],
                             via_tmp ? "remove" : "overwrite", in[clash],
                             via_tmp ? " (its temporary file while it is written)" : "");
    }
    return 0;
}

/* A --quant value: q8_0 (q8), q4_0 (q4) or none; 0 for anything else. */
static int parse_quant(const char *v, nla_quant *q) {
    if (!strcmp(v, "q8_0") || !strcmp(v, "q8")) *q = NLA_QUANT_Q8_0;
    else if (!strcmp(v, "q4_0") || !strcmp(v, "q4")) *q = NLA_QUANT_Q4_0;
    else if (!strcmp(v, "none")) *q = NLA_QUANT_NONE;
    else return 0;
    return 1;
}

/* Whether the space-separated list names option a. */
static int opt_listed(const char *list, const char *a) {
    const size_t n = strlen(a);
    for (const char *p = list; (p = strstr(p, a)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || !p[n])) return 1;
    return 0;
}

/* The refusal of an option that command c does not take. */
static int cli_no_option(const cli_spec *c, const char *a) {
    return cli_error("%s has no option '%s' (see nla %s --help)", c->name, a, c->name);
}

/* The option parser of the commands but eval: the options of c only;
   returns 0, or 1 after printing an error, or 2 after printing help. */
static int parse_opts(int argc, char **argv, const cli_spec *c, cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->layer = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(c->usage, stdout); return 2; }
        if (a[0] == '-' && a[1] && !opt_listed(c->opts, a)) return cli_no_option(c, a);
        if (!strcmp(a, "--bos")) { o->bos = 1; continue; }
        if (!strcmp(a, "--pieces")) { o->pieces = 1; continue; }
        if (!strcmp(a, "--jsonl")) { o->jsonl = 1; continue; }
        if (!strcmp(a, "--no-special")) { o->no_special = 1; continue; }
        if (!strcmp(a, "--all")) { o->all = 1; continue; }
        if (!strcmp(a, "--with-greedy")) { o->with_greedy = 1; continue; }
        if (!strcmp(a, "--parts")) { o->parts = 1; continue; }
        if (!strcmp(a, "--force")) { o->force = 1; continue; }
        if (a[0] != '-' || !a[1]) {
            if (o->n_arg == 3) return cli_error("unexpected argument '%s'", a);
            o->arg[o->n_arg++] = a;
            o->dir = o->arg[0];
            o->text = o->n_arg > 1 ? o->arg[1] : NULL;
            continue;
        }
        if (!v) return cli_error("%s needs a value", a);
        i++;
        int ok = 1;
        if (!strcmp(a, "--ids")) o->ids_arg = v;
        else if (!strcmp(a, "--logits")) o->logits = v;
        else if (!strcmp(a, "--hidden")) o->hidden = v;
        else if (!strcmp(a, "--stop")) o->stop_arg = v;
        else if (!strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--chat")) o->chat = v;
        else if (!strcmp(a, "--tokenizer")) o->tokenizer = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--positions")) o->positions = v;
        else if (!strcmp(a, "--text")) o->text_opt = v;
        else if (!strcmp(a, "--text-file")) o->text_file = v;
        else if (!strcmp(a, "--baseline")) o->baseline = v;
        else if (!strcmp(a, "--role")) o->role = v;
        else if (!strcmp(a, "--shape")) o->shape = v;
        else if (!strcmp(a, "--max-new"))
            ok = parse_int(v, &o->max_new) && o->max_new > 0 && o->max_new <= CLI_MAX_NEW;
        else if (!strcmp(a, "--batch"))
            ok = parse_int(v, &o->batch) && o->batch > 0 && o->batch <= 256;
        else if (!strcmp(a, "--best-of"))
            ok = parse_int(v, &o->best_of) && o->best_of > 0 && o->best_of <= 256;
        else if (!strcmp(a, "--layer")) ok = parse_int(v, &o->layer) && o->layer >= 0;
        else if (!strcmp(a, "-n")) ok = parse_int(v, &o->n) && o->n > 0;
        else if (!strcmp(a, "--top-k")) ok = parse_int(v, &o->top_k) && o->top_k >= 0;
        else if (!strcmp(a, "--threads"))
            ok = parse_int(v, &o->threads) && o->threads >= 0 && o->threads <= CLI_MAX_THREADS;
        else if (!strcmp(a, "--seed")) ok = parse_int(v, &o->seed);
        else if (!strcmp(a, "--temp")) ok = parse_float(v, &o->temp) && o->temp >= 0;
        else if (!strcmp(a, "--top-p"))
            ok = parse_float(v, &o->top_p) && o->top_p >= 0 && o->top_p <= 1;
        else if (!strcmp(a, "--quant") || !strcmp(a, "--type")) /* --type: quantize's word */
            ok = parse_quant(v, &o->quant);
        else if (!strcmp(a, "--embed-scale")) {
            if (!strcmp(v, "bf16")) o->es = NLA_EMBED_SCALE_BF16;
            else if (!strcmp(v, "stored")) o->es = NLA_EMBED_SCALE_STORED;
            else if (!strcmp(v, "exact")) o->es = NLA_EMBED_SCALE_EXACT;
            else ok = 0;
        } else return cli_error("unknown option '%s' (see nla %s --help)", a, c->name);
        if (!ok) return cli_bad_value(v, a);
    }
    if (!o->dir) { fputs(c->usage, stderr); return 1; }
    return cli_out_clash(o);
}

static int cmd_forward(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_forward, &o);
    if (r) return r == 2 ? 0 : 1;
    if (o.text) return cli_error("unexpected argument '%s'", o.text);
    if (!o.ids_arg) return cli_error("--ids is required");
    int32_t *ids;
    int T = parse_ids(o.ids_arg, &ids);
    if (T < 1) return cli_error("--ids: expected comma-separated non-negative integers");
    nla_model *m = NULL;
    nla_session *s = NULL;
    float *logits = NULL, *hidden = NULL;
    int ret = 1, nb, show_top = !o.logits && !o.hidden;
    size_t V, d;
    nla_status rc;
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = o.threads;
    sp.n_ctx = T;
    if (open_model(o.dir, o.es, o.quant, NULL, NULL, &m)) goto out;
    nla_model_info in;
    nla_model_get_info(m, &in);
    if (o.layer >= in.n_layers) {
        cli_error("--layer %d: the model has blocks 0..%d", o.layer, in.n_layers - 1);
        goto out;
    }
    if (o.layer >= 0 && o.logits) {
        cli_error("--layer stops before the last block, so --logits is not available");
        goto out;
    }
    if (T > in.max_position_embeddings) {
        cli_error("%d ids exceed max_position_embeddings %d", T, in.max_position_embeddings);
        goto out;
    }
    rc = nla_session_new(m, &sp, &s);
    if (rc) { cli_error("cannot create a session: %s", nla_strerror(rc)); goto out; }
    nb = o.layer >= 0 ? o.layer + 1 : in.n_layers;
    V = (size_t)in.vocab_size;
    d = (size_t)in.d_model;
    logits = (float *)NLA_MALLOC((o.logits ? (size_t)T : 1) * V * sizeof(float));
    hidden = o.hidden ? (float *)NLA_MALLOC((size_t)nb * (size_t)T * d * sizeof(float)) : NULL;
    if (!logits || (o.hidden && !hidden)) { cli_error("out of memory"); goto out; }
    nla_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = T;
    b.ids = ids;
    b.n_blocks = nb;
    b.logits = (o.logits || (show_top && o.layer < 0)) ? logits : NULL;
    b.all_logits = o.logits != NULL;
    b.hidden = hidden;
    if ((rc = nla_forward(s, &b))) {
        cli_error("%s (%s)", nla_session_errmsg(s), nla_strerror(rc));
        goto out;
    }
    if (o.logits) {
        int64_t sh[2] = {T, (int64_t)V};
        if (cli_npy_write(o.logits, logits, 2, sh)) goto out;
    }
    if (o.hidden) {
        int64_t sh3[3] = {nb, T, (int64_t)d};
        if (o.layer >= 0) {
            if (cli_npy_write(o.hidden, hidden + (size_t)o.layer * T * d, 2, sh3 + 1)) goto out;
        } else if (cli_npy_write(o.hidden, hidden, 3, sh3)) goto out;
    }
    if (show_top && o.layer < 0) {
        printf("top 5 after position %d:\n", T - 1);
        for (int k = 0; k < 5 && k < (int)V; k++) {
            size_t best = 0;
            for (size_t i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
            printf("  %zu  %.6f\n", best, (double)logits[best]);
            logits[best] = -INFINITY;
        }
    } else if (show_top) {
        printf("ran blocks 0..%d on %d tokens (use --hidden to save them)\n", o.layer, T);
    }
    ret = 0;
out:
    NLA_FREE(ids); NLA_FREE(logits); NLA_FREE(hidden);
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

/* Streaming output of nla generate: ids, or text when a tokenizer is given. */
typedef struct {
    const nla_tokenizer *tok;
    nla_detok_state st;
    int count;
} gen_out;

static int print_token(void *user, int32_t tok) {
    gen_out *g = (gen_out *)user;
    if (g->tok) {
        char buf[256];
        size_t n;
        if (nla_detokenize_next(g->tok, &g->st, tok, buf, sizeof buf, &n) == NLA_OK)
            fwrite(buf, 1, n, stdout);
    } else {
        printf("%s%d", g->count ? "," : "", tok);
    }
    g->count++;
    fflush(stdout);
    return 0;
}

/* A whole file into a NUL-terminated heap buffer ("-": standard input), or
   NULL after printing why. */
static char *cli_slurp(const char *path, size_t *n) {
    char *buf = NULL;
    errbuf e;
    errno = 0;
    if (strcmp(path, "-") ? read_file(path, &buf, n, SIZE_MAX / 2, &e)
                          : read_stream(stdin, "standard input", &buf, n, SIZE_MAX / 2, &e)) {
        cli_error("%s", e.msg);
        return NULL;
    }
    return buf;
}

/* The prompt of nla generate as ids: --ids as given, --prompt (or the text
   of --text-file) tokenized with BOS, --chat rendered with the chat template. */
static int prompt_ids(const cli_opts *o, const nla_tokenizer *tok, int32_t **ids) {
    if (!!o->ids_arg + !!o->prompt + !!o->text_file + !!o->chat != 1)
        return cli_error("give exactly one of --ids, --prompt, --text-file, --chat"), -1;
    if (o->ids_arg) {
        int n = parse_ids(o->ids_arg, ids);
        return n < 1 ? cli_error("--ids: expected comma-separated non-negative integers"), -1 : n;
    }
    if (!tok)
        return cli_error("%s has no tokenizer.json: pass --tokenizer FILE or use --ids", o->dir),
               -1;
    char *text = NULL, err[512];
    size_t len = 0;
    if (o->chat) {
        size_t jl;
        char *json = cli_slurp(o->chat, &jl);
        if (!json) return -1;
        nla_status rc = nla_chat_render_json(json, jl, 1, NULL, 0, &len, err, sizeof err);
        if (rc == NLA_ERR_BUFFER_TOO_SMALL && (text = (char *)NLA_MALLOC(len + 1)))
            rc = nla_chat_render_json(json, jl, 1, text, len + 1, &len, err, sizeof err);
        NLA_FREE(json);
        if (rc) { NLA_FREE(text); return cli_error("%s: %s", o->chat, err), -1; }
    } else if (o->text_file) {
        if (!(text = cli_slurp(o->text_file, &len))) return -1;
    } else {
        len = strlen(o->prompt);
        text = (char *)NLA_MALLOC(len + 1);
        if (text) memcpy(text, o->prompt, len + 1);
    }
    int n = 0;
    *ids = text ? (int32_t *)NLA_MALLOC(sizeof(int32_t) * nla_tokenize_bound(len)) : NULL;
    if (!*ids || nla_tokenize(tok, text, len, o->chat ? 0 : NLA_TOKENIZE_BOS, *ids,
                              (int)nla_tokenize_bound(len), &n))
        n = -1;
    NLA_FREE(text);
    return n < 0 ? cli_error("cannot tokenize the prompt"), -1 : n;
}

static int cmd_generate(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_generate, &o);
    if (r) return r == 2 ? 0 : 1;
    if (o.text) return cli_error("unexpected argument '%s'", o.text);
    if (o.n < 1) return cli_error("-n N is required");
    int32_t *ids = NULL, *stop = NULL, *out = NULL;
    int T = 0, n_stop = 0, ret = 1, n_out = 0;
    nla_model *m = NULL;
    nla_session *s = NULL;
    nla_status rc;
    if (o.stop_arg && (n_stop = parse_ids(o.stop_arg, &stop)) < 1)
        return cli_error("--stop: expected comma-separated ids");
    if (open_model(o.dir, o.es, o.quant, o.tokenizer, NULL, &m)) goto out;
    if ((T = prompt_ids(&o, nla_model_tokenizer(m), &ids)) < 1) goto out;
    nla_model_info in;
    nla_model_get_info(m, &in);
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = o.threads;
    sp.seed = (uint64_t)(int64_t)o.seed;
    if ((int64_t)T + o.n - 1 > in.max_position_embeddings) {
        cli_error("-n %d: the prompt's %d tokens and the new ones exceed the model's %d positions",
                  o.n, T, in.max_position_embeddings);
        goto out;
    }
    sp.n_ctx = T + o.n > in.max_position_embeddings ? in.max_position_embeddings : T + o.n;
    rc = nla_session_new(m, &sp, &s);
    if (rc) { cli_error("cannot create a session: %s", nla_strerror(rc)); goto out; }
    if (!(out = (int32_t *)NLA_MALLOC((size_t)o.n * sizeof *out))) {
        cli_error("out of memory");
        goto out;
    }
    gen_out go;
    memset(&go, 0, sizeof go);
    go.tok = o.ids_arg ? NULL : nla_model_tokenizer(m);
    nla_generate_params gp;
    memset(&gp, 0, sizeof gp);
    gp.max_new = o.n;
    gp.temperature = o.temp;
    gp.top_k = o.top_k;
    gp.top_p = o.top_p;
    gp.stop_ids = stop;
    gp.n_stop_ids = n_stop;
    gp.on_token = print_token;
    gp.user = &go;
    rc = nla_generate(s, ids, T, &gp, out, &n_out);
    if (go.tok) print_token(&go, -1); /* flush a held-back partial character */
    putchar('\n');
    if (rc) { cli_error("%s (%s)", nla_session_errmsg(s), nla_strerror(rc)); goto out; }
    ret = 0;
out:
    NLA_FREE(ids); NLA_FREE(stop); NLA_FREE(out);
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

static int open_tokenizer(const char *path, nla_tokenizer **t) {
    char err[512];
    nla_status rc = nla_tokenizer_open(path, t, err, sizeof err);
    return rc ? cli_error("%s (%s)", err, nla_strerror(rc)) : 0;
}

/* Prints s[0..n) as a JSON string literal on stdout. */
static void cli_json(const char *s, size_t n) {
    size_t len;
    char *t = json_literal(s, n, &len);
    if (t) fwrite(t, 1, len, stdout);
    NLA_FREE(t);
}

/* Prints ids as "2,818,5279" or as a JSON array; with t (--pieces), each
   id with its piece: "id<TAB>piece" lines, or [id,"piece"] in the array. */
static void print_ids(const nla_tokenizer *t, const int32_t *ids, int n, int json) {
    if (json) putchar('[');
    for (int i = 0; i < n; i++) {
        size_t pl = 0;
        const char *p = t ? nla_tokenizer_piece(t, ids[i], &pl) : NULL;
        if (!t) printf("%s%d", i ? "," : "", ids[i]);
        else if (!json) printf("%d\t%.*s\n", ids[i], (int)pl, p);
        else {
            printf("%s[%d,", i ? "," : "", ids[i]);
            cli_json(p, pl);
            putchar(']');
        }
    }
    if (json) puts("]");
    else if (!t) putchar('\n');
}

/* One --jsonl line: a JSON string -> its ids, or null. The JSON reader is
   the library's own (this file), not part of the public API. */
static int tokenize_json_line(const nla_tokenizer *t, const char *line, size_t len, int flags,
                              int pieces, long lineno) {
    jdoc d;
    errbuf e;
    if (json_parse(&d, line, len, &e, "stdin") || d.node[0].type != J_STR) {
        if (d.node) json_free(&d);
        puts("null");
        return cli_error("stdin line %ld: not a JSON string", lineno), 1;
    }
    size_t n = json_str(&d, 0, NULL, 0);
    char *text = (char *)NLA_MALLOC(n + 1);
    int32_t *ids = (int32_t *)NLA_MALLOC(sizeof(int32_t) * nla_tokenize_bound(n));
    int n_ids = 0, bad = !text || !ids;
    if (!bad) {
        json_str(&d, 0, text, n + 1);
        bad = nla_tokenize(t, text, n, flags, ids, (int)nla_tokenize_bound(n), &n_ids) != NLA_OK;
    }
    if (bad) puts("null");
    else print_ids(pieces ? t : NULL, ids, n_ids, 1);
    NLA_FREE(text); NLA_FREE(ids);
    json_free(&d);
    return bad;
}

static int cmd_tokenize(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_tokenize, &o);
    if (r) return r == 2 ? 0 : 1;
    if (!o.jsonl && !o.text) return cli_error("nothing to tokenize (give TEXT or --jsonl)");
    if (o.jsonl && o.text) return cli_error("--jsonl reads stdin; drop '%s'", o.text);
    nla_tokenizer *t;
    if (open_tokenizer(o.dir, &t)) return 1;
    const int flags = (o.bos ? NLA_TOKENIZE_BOS : 0) | (o.no_special ? NLA_TOKENIZE_NO_SPECIAL : 0);
    int ret = 0;
    if (o.jsonl) {
        size_t cap = 1 << 16, len = 0;
        char *line = (char *)NLA_MALLOC(cap);
        long lineno = 0;
        int c;
        while (line) {
            c = getchar();
            if (c == EOF || c == '\n') {
                if (len || c == '\n')
                    ret |= tokenize_json_line(t, line, len, flags, o.pieces, ++lineno);
                fflush(stdout);
                len = 0;
                if (c == EOF) break;
                continue;
            }
            if (len + 1 == cap) {
                char *nl = (char *)NLA_REALLOC(line, cap * 2);
                if (!nl) { NLA_FREE(line); line = NULL; ret = cli_error("out of memory"); break; }
                line = nl;
                cap *= 2;
            }
            line[len++] = (char)c;
        }
        NLA_FREE(line);
    } else {
        size_t n = strlen(o.text);
        int32_t *ids = (int32_t *)NLA_MALLOC(sizeof(int32_t) * nla_tokenize_bound(n));
        int n_ids = 0;
        if (!ids || nla_tokenize(t, o.text, n, flags, ids, (int)nla_tokenize_bound(n), &n_ids))
            ret = cli_error("cannot tokenize");
        else print_ids(o.pieces ? t : NULL, ids, n_ids, 0);
        NLA_FREE(ids);
    }
    nla_tokenizer_close(t);
    return ret;
}

static int cmd_detokenize(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_detokenize, &o);
    if (r) return r == 2 ? 0 : 1;
    int32_t *ids;
    int n = o.text ? parse_ids(o.text, &ids) : -1;
    if (n < 1) return cli_error("expected comma-separated token ids");
    nla_tokenizer *t;
    if (open_tokenizer(o.dir, &t)) { NLA_FREE(ids); return 1; }
    size_t len = 0;
    char *text = NULL;
    nla_status rc = nla_detokenize(t, ids, n, NULL, 0, &len);
    if (rc == NLA_ERR_BUFFER_TOO_SMALL && (text = (char *)NLA_MALLOC(len + 1)))
        rc = nla_detokenize(t, ids, n, text, len + 1, &len);
    int bad = 0; /* the first id the tokenizer does not hold (the last, if none before) */
    size_t one;
    while (rc == NLA_ERR_RANGE && bad < n - 1 &&
           nla_detokenize(t, ids + bad, 1, NULL, 0, &one) != NLA_ERR_RANGE)
        bad++;
    if (!rc) fwrite(text, 1, len, stdout), putchar('\n');
    else if (rc == NLA_ERR_RANGE)
        cli_error("id %d (number %d of %d) is outside the vocabulary", ids[bad], bad + 1, n);
    else
        cli_error("%s", nla_strerror(rc));
    NLA_FREE(text); NLA_FREE(ids);
    nla_tokenizer_close(t);
    return rc != NLA_OK;
}

/* ---- the NLA commands ---- */

static const char *const usage_extract =
    "usage: nla extract TARGET (--text TEXT | --text-file F | --chat FILE) "
    "[--positions 1,7,14 | --all] --out v.npy\n"
    "\n"
    "  --text TEXT       plain text, tokenized with BOS\n"
    "  --text-file F     the text of file F (-: standard input)\n"
    "  --chat FILE       a JSON list of {\"role\", \"content\"}, rendered with the chat template\n"
    "  --positions I,J   token positions to take (0 is <bos>); default --all: every position\n"
    "  --layer K         block whose output is taken (default: 2/3 of the depth, as the NLAs)\n"
    "  --out FILE        float32 .npy [n, d]: the raw residual after block K\n"
    "  --tokenizer F     tokenizer.json (default: TARGET/tokenizer.json)\n"
    "  --threads N       threads (default: all)\n" USAGE_LOAD;
static const cli_spec spec_extract = {
    "extract", usage_extract,
    "--text --text-file --chat --positions --all --layer --out --tokenizer --threads" OPTS_LOAD};

static const char *const usage_verbalize =
    "usage: nla verbalize AV v.npy [--max-new N] [--temp T] [--top-k K] [--top-p P] [--seed S]\n"
    "\n"
    "Explains every row of v.npy ([n, d] float32) with the AV model. Greedy by default.\n"
    "Writes one JSON object per row: {\"row\", \"explanation\", \"raw\", \"parsed\", \"ids\"}.\n"
    "  --max-new N     tokens per explanation at most (default 200)\n"
    "  --batch B       vectors decoded together, sharing each weight read (default 8)\n"
    "  --temp T --top-k K --top-p P --seed S   sampling (default greedy); each row draws\n"
    "                  from its own stream (--seed and the row's number), whatever --batch\n"
    "  --tokenizer F   tokenizer.json (default: AV/tokenizer.json)\n"
    "  --threads N     threads (default: all)\n" USAGE_LOAD;
static const cli_spec spec_verbalize = {
    "verbalize", usage_verbalize,
    "--max-new --temp --top-k --top-p --seed --batch --tokenizer --threads" OPTS_LOAD};

static const char *const usage_reconstruct =
    "usage: nla reconstruct AR (--text EXPLANATION | --jsonl FILE) --out r.npy\n"
    "\n"
    "  --text TEXT     one explanation\n"
    "  --jsonl FILE    one JSON object per line with an \"explanation\" field (what nla verbalize\n"
    "                  writes), or a JSON string per line; row i of --out is line i (blank\n"
    "                  lines skipped, any other line an error); FILE - is standard input\n"
    "  --out FILE      float32 .npy [n, d]: the AR's reconstructions\n"
    "  --batch B       explanations read together, sharing each weight read (default 8)\n"
    "  --tokenizer F   tokenizer.json (default: AR/tokenizer.json)\n"
    "  --threads N     threads (default: all)\n" USAGE_LOAD;
static const cli_spec spec_reconstruct = {
    "reconstruct", usage_reconstruct,
    "--text --jsonl --out --batch --tokenizer --threads" OPTS_LOAD};

static const char *const usage_score =
    "usage: nla score v.npy r.npy [--baseline B | --baseline own]\n"
    "       nla score --cross v.npy r.npy [--out M.npy] [--jsonl]\n"
    "\n"
    "Scores each reconstruction (row of r.npy) against its original (row of v.npy): one JSON\n"
    "object per row {\"row\", \"mse_nrm\", \"cos\", \"fve_nrm\"}, then a summary object.\n"
    "  --baseline B    the variance baseline of fve_nrm; default the training set's of the\n"
    "                  released NLA of that width (27B: d = 5376; else 12B's); 'own' computes\n"
    "                  it from v.npy\n"
    "--cross scores every reconstruction i against every vector j: the share of reconstructions\n"
    "whose own vector is the closest, the mean rank of the own vector (1 = closest; ties count\n"
    "against it), and for n <= 12 the matrix of mse_nrm as a table.\n"
    "  --out M.npy     the matrix, float32 [n, n] (row i: reconstruction i)\n"
    "  --jsonl         per row {\"row\", \"rank\", \"closest\", \"mse_nrm_own\", "
    "\"mse_nrm_closest\"},\n"
    "                  then {\"summary\": true, \"n\", \"own_closest\", \"mean_rank\", "
    "\"chance_rank\"}\n";
static const cli_spec spec_score = {"score", usage_score, "--baseline --cross --out --jsonl"};

static const char *const usage_explain =
    "usage: nla explain TARGET AV AR (--text TEXT | --text-file F | --chat FILE)\n"
    "                   [--positions I,J,...] [--jsonl]\n"
    "\n"
    "Extracts the target's activations at block K (from the AV's sidecar), explains each with the\n"
    "AV, reconstructs it from the explanation with the AR, and scores the reconstruction.\n"
    "One model is in memory at a time. On a terminal (or with COLUMNS set) the table cuts each\n"
    "explanation to the width; written to a file or a pipe, or with --jsonl, the text is whole.\n"
    "A terminal on stderr shows each explanation as the AV writes it.\n"
    "  --positions I,J   token positions (default: every position after <bos>)\n"
    "  --jsonl           one JSON object per position instead of the table\n"
    "  --max-new N       tokens per explanation at most (default 200)\n"
    "  --batch B         vectors the AV decodes together, explanations the AR reads together\n"
    "                    (default 8)\n"
    "  --temp T --top-k K --top-p P --seed S   sampling (default greedy; each position and\n"
    "                    candidate from its own stream)\n"
    "  --best-of N       N sampled explanations per position (temperature 1 unless --temp),\n"
    "                    each reconstructed; the lowest mse_nrm is kept, all are listed\n"
    "  --with-greedy     also the greedy explanation's scores\n"
    "  --parts           scores of each paragraph alone and of each prefix of paragraphs\n"
    "  --tokenizer F     tokenizer.json for all three (default: each folder's)\n"
    "  --threads N       threads (default: all)\n" USAGE_LOAD;
static const cli_spec spec_explain = {
    "explain", usage_explain,
    "--text --text-file --chat --positions --jsonl --max-new --batch --temp --top-k --top-p "
    "--seed --best-of --with-greedy --parts --tokenizer --threads" OPTS_LOAD};


/* A .npy of vectors [n, d] (a 1-D file is one vector) into a heap buffer;
   with `scored`, a row of all zeros (one never written) is refused. */
static float *cli_vectors(const char *path, int *n, int *d, int scored) {
    int64_t sh[2];
    int nd;
    char err[512];
    nla_status rc = nla_npy_read(path, NULL, 0, sh, &nd, err, sizeof err);
    if (rc != NLA_ERR_BUFFER_TOO_SMALL && rc != NLA_OK) { cli_error("%s", err); return NULL; }
    *n = nd == 2 ? (int)sh[0] : 1;
    *d = (int)sh[nd - 1];
    float *v = (float *)NLA_MALLOC(sizeof(float) * ((size_t)*n * (size_t)*d + 1));
    if (!v || nla_npy_read(path, v, (size_t)*n * (size_t)*d, sh, &nd, err, sizeof err)) {
        NLA_FREE(v);
        cli_error("%s", v ? err : "out of memory");
        return NULL;
    }
    if (*n < 1 || *d < 1) { NLA_FREE(v); cli_error("%s: no vectors", path); return NULL; }
    const ptrdiff_t bad = first_nonfinite(v, (size_t)*n * (size_t)*d);
    if (bad >= 0) {
        cli_error("%s: row %td holds a non-finite value (%g at column %td)", path, bad / *d,
                  (double)v[bad], bad % *d);
        NLA_FREE(v);
        return NULL;
    }
    for (int i = 0; scored && i < *n; i++) {
        const float *x = v + (size_t)i * *d;
        int j = 0;
        while (j < *d && x[j] == 0) j++;
        if (j == *d) {
            cli_error("%s: row %d is all zeros: no vector there to score", path, i);
            NLA_FREE(v);
            return NULL;
        }
    }
    return v;
}

/* The target's activations at block K of ids[0..T) at pos[0..n_pos) into v,
   in a session of m sized to the tokens up to the last position (nla_extract
   runs no further), up to the model's max_position_embeddings. */
static int cli_extract(const nla_model *m, const cli_opts *o, const int32_t *ids, int T, int K,
                       const int32_t *pos, int n_pos, float *v) {
    nla_model_info in;
    nla_model_get_info(m, &in);
    int need = 0;
    for (int i = 0; i < n_pos; i++)
        if (pos[i] >= need) need = pos[i] + 1;
    if (need > in.max_position_embeddings)
        return cli_error("position %d of the text's %d tokens is past the model's context of %d "
                         "(max_position_embeddings)",
                         need - 1, T, in.max_position_embeddings);
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = o->threads;
    sp.n_ctx = need;
    nla_session *s = NULL;
    nla_status rc = nla_session_new(m, &sp, &s);
    if (rc) return cli_error("cannot create a session of %d tokens: %s", need, nla_strerror(rc));
    if ((rc = nla_extract(s, ids, T, K, pos, n_pos, v)) != NLA_OK)
        cli_error("%s (%s)", nla_session_errmsg(s), nla_strerror(rc));
    nla_session_free(s);
    return rc != NLA_OK;
}

/* The target's input ids from --text (with BOS) or --chat. */
static int cli_target_ids(const cli_opts *o, const nla_tokenizer *tok, int32_t **ids) {
    cli_opts p = *o;
    p.ids_arg = NULL;
    p.prompt = o->text_opt;
    if (!!o->text_opt + !!o->text_file + !!o->chat != 1)
        return cli_error("give one of --text TEXT, --text-file FILE, --chat FILE"), -1;
    return prompt_ids(&p, tok, ids);
}

/* Positions from --positions, or every position from `first` (--all). */
static int cli_positions(const cli_opts *o, int T, int first, int32_t **pos) {
    int n;
    if (o->positions) {
        if ((n = parse_ids(o->positions, pos)) < 1)
            return cli_error("--positions: expected comma-separated positions"), -1;
        for (int i = 0; i < n; i++)
            if ((*pos)[i] >= T) {
                cli_error("--positions: %d is past the last token (%d)", (*pos)[i], T - 1);
                NLA_FREE(*pos);
                *pos = NULL;
                return -1;
            }
        return n;
    }
    n = T - first;
    if (n < 1 || !(*pos = (int32_t *)NLA_MALLOC(sizeof(int32_t) * (size_t)n)))
        return cli_error("no positions to take"), -1;
    for (int i = 0; i < n; i++) (*pos)[i] = first + i;
    return n;
}

static int cmd_extract(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_extract, &o), ret = 1, n_pos = 0;
    if (r) return r == 2 ? 0 : 1;
    if (o.text) return cli_error("unexpected argument '%s'", o.text);
    if (!o.out) return cli_error("--out FILE is required");
    if (o.positions && o.all) return cli_error("--positions and --all exclude each other");
    nla_model *m = NULL;
    int32_t *ids = NULL, *pos = NULL;
    float *v = NULL;
    int T, K;
    int64_t sh[2];
    if (open_model(o.dir, o.es, o.quant, o.tokenizer, NULL, &m)) goto out;
    nla_model_info in;
    nla_model_get_info(m, &in);
    T = cli_target_ids(&o, nla_model_tokenizer(m), &ids);
    K = o.layer >= 0 ? o.layer : 2 * in.n_layers / 3;
    if (T < 1) goto out;
    if (K >= in.n_layers) {
        cli_error("--layer %d: the model has blocks 0..%d", K, in.n_layers - 1);
        goto out;
    }
    if ((n_pos = cli_positions(&o, T, 0, &pos)) < 1) goto out;
    if (!(v = (float *)NLA_MALLOC(sizeof(float) * (size_t)n_pos * (size_t)in.d_model))) {
        cli_error("out of memory");
        goto out;
    }
    if (cli_extract(m, &o, ids, T, K, pos, n_pos, v)) goto out;
    sh[0] = n_pos;
    sh[1] = in.d_model;
    if (cli_npy_write(o.out, v, 2, sh)) goto out;
    fprintf(stderr, "nla: wrote %d vectors (block %d output, d = %d) of %d tokens to %s\n", n_pos,
            K, in.d_model, T, o.out);
    ret = 0;
out:
    NLA_FREE(ids); NLA_FREE(pos); NLA_FREE(v);
    nla_model_close(m);
    return ret;
}

/* What the AV writes per vector, from the options: --best-of sampled
   texts (1 without it: greedy unless --temp) and --with-greedy's. */
static ex_spec cli_ex_spec(const cli_opts *o) {
    ex_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.n_cand = o->best_of ? o->best_of : 1;
    sp.greedy = o->with_greedy;
    sp.batch = o->batch ? o->batch : 8;
    sp.max_new = o->max_new ? o->max_new : 200;
    sp.top_k = o->top_k;
    sp.temperature =
        o->best_of > 1 && o->temp == 0 ? 1 : o->temp; /* N greedy texts would be one text */
    sp.top_p = o->top_p;
    sp.seed = (uint64_t)(int64_t)o->seed;
    return sp;
}

/* An AV session for batches of up to B vectors: B sequences, each as long
   as the AV prompt plus the tokens to generate. */
static int cli_av_session(nla_model *m, const cli_opts *o, int B, nla_session **s) {
    nla_meta meta;
    nla_model_get_meta(m, &meta);
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = o->threads;
    sp.seed = (uint64_t)(int64_t)o->seed;
    sp.n_seq = B;
    sp.n_ctx = meta.av_prompt_len + (o->max_new ? o->max_new : 200);
    nla_status rc = nla_session_new(m, &sp, s);
    return rc ? cli_error("cannot create a session: %s", nla_strerror(rc)) : 0;
}

/* An AR session (model m, from folder dir) for the n texts cand[0..n)
   (with --parts, their parts too): up to --batch of them (default 8) read
   together, one sequence each, as long as the longest AR input. */
static int cli_ar_session(nla_model *m, const char *dir, const cli_opts *o, const ex_cand *cand,
                          int n, nla_session **s) {
    nla_meta meta;
    nla_model_get_meta(m, &meta);
    if (strcmp(meta.role, "ar") || !meta.has_value_head || !nla_model_tokenizer(m))
        return cli_error("%s is not an AR with a tokenizer (nla_meta.yaml with role: ar, "
                         "value_head.safetensors, tokenizer.json)",
                         dir);
    const int B = o->batch ? o->batch : 8;
    nla_session_params sp;
    memset(&sp, 0, sizeof sp);
    sp.n_threads = o->threads;
    sp.n_seq = n < B ? n : B;
    errbuf e;
    if (ex_ar_ctx(m, cand, n, o->parts, &sp.n_ctx, &e)) return cli_error("%s", e.msg);
    nla_status rc = nla_session_new(m, &sp, s);
    return rc ? cli_error("cannot create a session: %s", nla_strerror(rc)) : 0;
}

/* cli_ar_session for the n plain texts ex[0..n). */
static int cli_ar_session_texts(nla_model *m, const char *dir, const cli_opts *o, char **ex, int n,
                                nla_session **s) {
    ex_cand *cand = (ex_cand *)NLA_CALLOC((size_t)n, sizeof *cand);
    if (!cand) return cli_error("out of memory");
    for (int t = 0; t < n; t++) cand[t].ex = ex[t];
    const int ret = cli_ar_session(m, dir, o, cand, n, s);
    NLA_FREE(cand);
    return ret;
}

static int cmd_verbalize(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_verbalize, &o), ret = 1, n = 0, d = 0;
    if (r) return r == 2 ? 0 : 1;
    if (!o.text) return cli_error("give the vectors: nla verbalize AV v.npy");
    nla_model *m = NULL;
    nla_session *s = NULL;
    const ex_spec sp = cli_ex_spec(&o);
    const int B = sp.batch;
    ex_cand *cand = (ex_cand *)NLA_CALLOC((size_t)B, sizeof *cand);
    long *idx = (long *)NLA_CALLOC((size_t)B, sizeof *idx);
    errbuf e;
    float *v = cli_vectors(o.text, &n, &d, 0);
    if (!v || !cand || !idx || open_model(o.dir, o.es, o.quant, o.tokenizer, NULL, &m)) {
        if (v && (!cand || !idx)) cli_error("out of memory");
        goto out;
    }
    nla_meta meta;
    nla_model_get_meta(m, &meta);
    if (strcmp(meta.role, "av")) {
        cli_error("%s is not an AV (its nla_meta.yaml must say role: av)", o.dir);
        goto out;
    }
    if (d != meta.d_model) {
        cli_error("%s holds %d-wide vectors, the AV reads %d", o.text, d, meta.d_model);
        goto out;
    }
    if (cli_av_session(m, &o, n < B ? n : B, &s)) goto out;
    for (int i = 0; i < n; i += B) { /* B rows at a time, each row's text from its own stream */
        const int nb = n - i < B ? n - i : B;
        for (int q = 0; q < nb; q++) idx[q] = i + q;
        if (ex_verbalize(s, v + (size_t)i * d, idx, nb, &sp, cand, NULL, NULL, &e)) {
            cli_error("%s", e.msg);
            goto out;
        }
        for (int q = 0; q < nb; q++) {
            printf("{\"row\": %d, \"explanation\": ", i + q);
            cli_json(cand[q].ex, strlen(cand[q].ex));
            printf(", \"raw\": ");
            cli_json(cand[q].raw, cand[q].raw_len);
            printf(", \"parsed\": %s, \"ids\": [", cand[q].parsed ? "true" : "false");
            for (int k = 0; k < cand[q].n_ids; k++) printf("%s%d", k ? "," : "", cand[q].ids[k]);
            printf("]}\n");
        }
        fflush(stdout);
    }
    ret = 0;
out:
    for (int q = 0; cand && q < B; q++) ex_cand_free(&cand[q]);
    NLA_FREE(cand); NLA_FREE(idx); NLA_FREE(v);
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

/* Explanations from --text, or from --jsonl: each line an object with an
   "explanation" string, or a string (blank lines skipped; any other line is
   an error). Heap strings, count in *n. */
static char **cli_explanations(const cli_opts *o, int *n) {
    *n = 0;
    if (!!o->text_opt + !!o->jsonl != 1) {
        cli_error("give --text EXPLANATION or --jsonl FILE");
        return NULL;
    }
    char **out = (char **)NLA_CALLOC(1, sizeof(char *));
    if (o->text_opt) {
        if (out && (out[0] = xstrndup(o->text_opt, strlen(o->text_opt)))) *n = 1;
        return out;
    }
    if (!o->text) { NLA_FREE(out); cli_error("--jsonl needs a file"); return NULL; }
    size_t len;
    char *all = cli_slurp(o->text, &len), *line = all;
    const char *name = strcmp(o->text, "-") ? o->text : "standard input";
    long lineno = 0;
    if (!all || !out) {
        if (all) cli_error("out of memory");
        NLA_FREE(all); NLA_FREE(out);
        return NULL;
    }
    int oom = 0, bad = 0;
    while (!oom && !bad && line < all + len) {
        char *nl = (char *)memchr(line, '\n', (size_t)(all + len - line));
        size_t ll = nl ? (size_t)(nl - line) : (size_t)(all + len - line);
        lineno++;
        jdoc d;
        errbuf e;
        int ok = ll && json_parse(&d, line, ll, &e, name) == NLA_OK;
        int node = !ok ? -1 : d.node[0].type == J_STR ? 0 : json_get(&d, 0, "explanation");
        if (ok && node >= 0 && d.node[node].type == J_STR) {
            char **grown = (char **)NLA_REALLOC(out, sizeof(char *) * (size_t)(*n + 1));
            if (grown) out = grown;
            if (!grown || !(out[*n] = json_strdup(&d, node))) oom = 1;
            else if (strlen(out[*n]) != json_str(&d, node, NULL, 0)) { /* cut at the first */
                cli_error("%s: line %ld: the explanation holds a NUL character (\\u0000)", name,
                          lineno);
                NLA_FREE(out[*n]);
                bad = 1;
            } else
                ++*n;
        } else if (ll) { /* a row skipped would shift every later one */
            cli_error("%s: line %ld has no \"explanation\" string", name, lineno);
            bad = 1;
        }
        if (ok) json_free(&d);
        line += ll + 1;
    }
    NLA_FREE(all);
    if (oom || bad || !*n) {
        if (oom) cli_error("out of memory");
        else if (!bad)
            cli_error("%s: no explanations (one per line: a JSON string, or an object with an "
                      "\"explanation\" string)", name);
        while (*n) NLA_FREE(out[--*n]);
        NLA_FREE(out);
        out = NULL;
    }
    return out;
}

static int cmd_reconstruct(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_reconstruct, &o), ret = 1, n = 0;
    if (r) return r == 2 ? 0 : 1;
    if (!o.out) return cli_error("--out FILE is required");
    char **ex = cli_explanations(&o, &n);
    nla_model *m = NULL;
    nla_session *s = NULL;
    float *rec = NULL;
    nla_status rc;
    int64_t sh[2];
    if (!ex || n < 1 || open_model(o.dir, o.es, o.quant, o.tokenizer, NULL, &m) ||
        cli_ar_session_texts(m, o.dir, &o, ex, n, &s))
        goto out;
    nla_model_info in;
    nla_model_get_info(m, &in);
    if (!(rec = (float *)NLA_MALLOC(sizeof(float) * (size_t)n * (size_t)in.d_model))) {
        cli_error("out of memory");
        goto out;
    }
    rc = nla_reconstruct(s, (const char *const *)ex, n, rec);
    if (rc) { cli_error("%s (%s)", nla_session_errmsg(s), nla_strerror(rc)); goto out; }
    sh[0] = n;
    sh[1] = in.d_model;
    if (cli_npy_write(o.out, rec, 2, sh)) goto out;
    fprintf(stderr, "nla: wrote %d reconstructions (d = %d) to %s\n", n, in.d_model, o.out);
    ret = 0;
out:
    for (int i = 0; ex && i < n; i++) NLA_FREE(ex[i]);
    NLA_FREE(ex); NLA_FREE(rec);
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

/* The baseline for d-wide vectors: --baseline B, 'own' (from v), or the
   training set's. */
static int cli_baseline(const char *arg, const float *v, int n, int d, double *B,
                        const char **kind) {
    if (arg && !strcmp(arg, "own")) {
        *kind = "own";
        return nla_baseline(v, n, d, sqrt((double)d), B) ? cli_error("cannot compute the baseline")
                                                         : 0;
    }
    if (arg) {
        float f;
        *kind = "given";
        if (!parse_float(arg, &f) || !(f > 0))
            return cli_error("--baseline: a positive number or 'own'");
        *B = f;
        return 0;
    }
    *kind = "training";
    *B = release_baseline(d);
    return 0;
}

static void print_num(const char *key, double v) {
    char num[32];
    json_put_num(num, sizeof num, v, 9);
    printf("\"%s\": %s", key, num);
}

/* Takes option `name` out of argv (with the value after it, or "1" for a
   flag), so that parse_opts sees only the options it knows; the last one
   given wins. Returns 0, or 1 after printing an error. */
static int cli_take(int *argc, char **argv, const char *name, int flag, const char **val) {
    for (int i = 0; i < *argc;) {
        if (strcmp(argv[i], name)) { i++; continue; }
        const int k = flag ? 1 : 2;
        if (i + k > *argc) return cli_error("%s needs a value", name);
        *val = flag ? "1" : argv[i + 1];
        memmove(argv + i, argv + i + k, sizeof(char *) * (size_t)(*argc - i - k));
        *argc -= k;
    }
    return 0;
}

/* nla score --cross: every reconstruction against every vector. */
static int cli_score_cross(const cli_opts *o, const float *v, const float *rv, int n, int d) {
    float *M = (float *)xmalloc((size_t)n * n, sizeof(float));
    int *rank = (int *)xmalloc((size_t)n, sizeof(int)), ret = 1;
    int64_t sh[2] = {n, n};
    nla_cross_scores cs;
    if (!M || !rank) { cli_error("out of memory: the matrix is %d x %d", n, n); goto out; }
    if (nla_score_cross(v, rv, n, d, sqrt((double)d), M, rank, &cs)) {
        cli_error("cannot cross-score");
        goto out;
    }
    if (o->out && cli_npy_write(o->out, M, 2, sh)) goto out;
    if (!o->jsonl && n <= 12) {
        printf("mse_nrm of reconstruction i (rows) against vector j (columns); * the closest\n%5s",
               "");
        for (int j = 0; j < n; j++) printf("  %7s%-2d", "v", j);
        printf("\n");
    }
    for (int i = 0; i < n; i++) {
        const float *row = M + (size_t)i * n;
        int best = 0;
        for (int j = 1; j < n; j++) best = row[j] < row[best] ? j : best;
        if (o->jsonl) {
            printf("{\"row\": %d, \"rank\": %d, \"closest\": %d, ", i, rank[i], best);
            print_num("mse_nrm_own", row[i]); printf(", ");
            print_num("mse_nrm_closest", row[best]);
            printf("}\n");
        } else if (n <= 12) {
            printf("r%-4d", i);
            for (int j = 0; j < n; j++) printf("  %8.4f%c", row[j], j == best ? '*' : ' ');
            printf("\n");
        }
    }
    if (o->jsonl) {
        printf("{\"summary\": true, \"n\": %d, ", n);
        print_num("own_closest", cs.own_closest); printf(", ");
        print_num("mean_rank", cs.mean_rank); printf(", ");
        print_num("chance_rank", (n + 1) / 2.0);
        printf("}\n");
    } else {
        printf("own vector the closest: %.0f of %d (%.3f)\nmean rank of the own vector: %.3f "
               "(chance: %.1f)\n",
               cs.own_closest * n, n, cs.own_closest, cs.mean_rank, (n + 1) / 2.0);
    }
    ret = 0;
out:
    NLA_FREE(M); NLA_FREE(rank);
    return ret;
}

static int cmd_score(int argc, char **argv) {
    cli_opts o;
    const char *cross = NULL;
    if (cli_take(&argc, argv, "--cross", 1, &cross)) return 1;
    int r = parse_opts(argc, argv, &spec_score, &o), n = 0, d = 0, n2 = 0, d2 = 0, ret = 1;
    if (r) return r == 2 ? 0 : 1;
    if (!o.text) return cli_error("give two files: nla score v.npy r.npy");
    if (!cross && (o.out || o.jsonl)) return cli_error("--out and --jsonl go with --cross");
    if (cross && o.baseline) return cli_error("--baseline does not go with --cross");
    float *v = cli_vectors(o.dir, &n, &d, 1), *rv = v ? cli_vectors(o.text, &n2, &d2, 1) : NULL;
    double B, sum_mse = 0, sum_cos = 0;
    const char *kind;
    if (!v || !rv) goto out;
    if (n != n2 || d != d2) {
        cli_error("%s is [%d, %d] but %s is [%d, %d]", o.dir, n, d, o.text, n2, d2);
        goto out;
    }
    if (cross) {
        ret = cli_score_cross(&o, v, rv, n, d);
        goto out;
    }
    if (cli_baseline(o.baseline, v, n, d, &B, &kind)) goto out;
    for (int i = 0; i < n; i++) {
        nla_scores sc;
        const nla_status sr = nla_score(v + (size_t)i * d, rv + (size_t)i * d, d,
                                        sqrt((double)d), B, &sc);
        if (sr) {
            cli_error("row %d cannot be scored (%s)", i, nla_strerror(sr));
            goto out;
        }
        sum_mse += sc.mse_nrm;
        sum_cos += sc.cos;
        printf("{\"row\": %d, ", i);
        print_num("mse_nrm", sc.mse_nrm);
        printf(", ");
        print_num("cos", sc.cos);
        printf(", ");
        print_num("fve_nrm", sc.fve_nrm);
        printf("}\n");
    }
    printf("{\"summary\": true, \"n\": %d, ", n);
    print_num("mse_nrm", sum_mse / n);
    printf(", ");
    print_num("cos", sum_cos / n);
    printf(", ");
    print_num("fve_nrm", 1 - sum_mse / n / B);
    printf(", ");
    print_num("baseline", B);
    printf(", \"baseline_kind\": \"%s\"}\n", kind);
    ret = 0;
out:
    NLA_FREE(v); NLA_FREE(rv);
    return ret;
}

/* The width the explain table is cut to: $COLUMNS when it is set, else the
   terminal's when stdout is one, else 0: no cut (a file or a pipe gets every
   explanation whole). */
static int cli_columns(void) {
    const char *env = getenv("COLUMNS");
    int n;
    if (env && parse_int(env, &n) && n > 0) return n;
#ifndef _WIN32
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
#endif
    return 0;
}

/* Terminal columns of the UTF-8 character at s (its byte count in *len):
   2 for the East Asian wide ranges, else 1 (combining marks counted as 1
   too, so a line is never wider than counted). */
static int cli_char_cols(const char *s, int *len) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[0];
    *len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    for (int i = 1; i < *len; i++) {
        if ((u[i] & 0xc0) != 0x80) { *len = 1; return 1; } /* not UTF-8: one byte, one column */
        c = c << 6 | (u[i] & 0x3f);
    }
    c &= *len == 2 ? 0x7ff : *len == 3 ? 0xffff : 0x1fffff;
    static const uint32_t wide[9][2] = {{0x1100, 0x115f}, {0x2e80, 0xa4cf},   {0xac00, 0xd7a3},
                                        {0xf900, 0xfaff}, {0xfe30, 0xfe4f},   {0xff00, 0xff60},
                                        {0xffe0, 0xffe6}, {0x1f300, 0x1faff}, {0x20000, 0x3fffd}};
    for (int i = 0; i < 9; i++)
        if (c >= wide[i][0] && c <= wide[i][1]) return 2;
    return 1;
}

/* Columns of the text s. */
static int cli_text_cols(const char *s) {
    int cols = 0, len;
    for (; *s; s += len) cols += cli_char_cols(s, &len);
    return cols;
}

/* Writes s[0..n) to f, each byte that is not part of a valid UTF-8
   character as U+FFFD (as the JSON output has it). */
static void cli_put_valid(FILE *f, const char *s, size_t n) {
    for (size_t i = 0, k; i < n; i += k ? k : 1) {
        k = (size_t)utf8_char_len((const unsigned char *)s + i, n - i);
        if (k) fwrite(s + i, 1, k, f);
        else fputs("\xef\xbf\xbd", f);
    }
}

/* Prints s on one line (newlines as spaces); with max > 0, cut to max
   columns, the cut marked with an ellipsis. */
static void cli_put_line(const char *s, int max) {
    int cols = 0, len, c;
    const int cut = max > 0 && cli_text_cols(s) > max;
    for (; *s && (!cut || cols + (c = cli_char_cols(s, &len)) <= max - 1); s += len) {
        if (!cut) cli_char_cols(s, &len);
        else cols += c;
        if (*s == '\n') putchar(' ');
        else cli_put_valid(stdout, s, (size_t)len);
    }
    if (cut) fputs("\xe2\x80\xa6", stdout); /* U+2026 */
}

/* A table row: row, then text on one line in what is left of width
   columns (6 at least; width 0: whole), then tail and a newline. */
static void cli_table_row(const char *row, const char *text, const char *tail, int width) {
    const int room = width - cli_text_cols(row) - cli_text_cols(tail);
    fputs(row, stdout);
    cli_put_line(text, width > 0 ? (room > 6 ? room : 6) : 0);
    printf("%s\n", tail);
}

/* The sidecar of the model in folder dir, read from a mapped open of the
   model as stored (cheap at any size, whatever NLA_READ_WEIGHTS says) and
   detached from it (meta_detach). */
static int cli_meta(const char *dir, const nla_tokenizer *tok, nla_meta *meta, int *random) {
    nla_model *m = NULL;
    nla_model_params mp;
    char err[512];
    memset(&mp, 0, sizeof mp);
    mp.shared_tokenizer = tok;
    if (nla_model_open(dir, &mp, &m, err, sizeof err))
        return cli_error("%s", err);
    nla_model_get_meta(m, meta);
    meta_detach(meta, random);
    nla_model_close(m);
    return 0;
}

/* The start of explain and steer, whose three folders are TARGET AV AR:
   one tokenizer for the three (an NLA's AV and AR keep their base model's),
   parsed once from --tokenizer, else the target's, into *tok and
   o->shared_tok (the caller frees it); the AV's and the AR's sidecars,
   checked to be a pair before any work is done. *random becomes 1 when a
   base checkpoint is a random one. */
static int cli_trio_start(cli_opts *o, nla_tokenizer **tok, nla_meta *av_meta, nla_meta *ar_meta,
                          int *random) {
    char terr[512];
    if (nla_tokenizer_open(o->tokenizer ? o->tokenizer : o->arg[0], tok, terr, sizeof terr))
        return cli_error("%s", terr);
    o->shared_tok = *tok;
    if (cli_meta(o->arg[1], *tok, av_meta, random) || cli_meta(o->arg[2], *tok, ar_meta, random))
        return 1;
    if (strcmp(av_meta->role, "av"))
        return cli_error("%s is not an AV (its nla_meta.yaml must say role: av)", o->arg[1]);
    if (strcmp(ar_meta->role, "ar") || ar_meta->d_model != av_meta->d_model ||
        ar_meta->layer != av_meta->layer)
        return cli_error("%s is not the AR of %s (role ar, d %d, layer %d; it has %s, d %d, "
                         "layer %d)",
                         o->arg[2], o->arg[1], av_meta->d_model, av_meta->layer, ar_meta->role,
                         ar_meta->d_model, ar_meta->layer);
    return 0;
}

/* The names of the flags set, comma-separated, into out ("-" when none). */
static void cli_flags(unsigned flags, char *out, size_t cap) {
    size_t n = 0;
    out[0] = 0;
    for (int f = 0; f < F_COUNT; f++)
        if (flags >> f & 1)
            n += (size_t)snprintf(out + n, n < cap ? cap - n : 0, "%s%s", n ? "," : "",
                                  ex_flag_name[f]);
    if (!n) snprintf(out, cap, "-");
}

/* nla explain and steer on a terminal: each text on stderr as the AV
   writes it, under its vector's label, in the order the AV takes them (the
   greedy texts, then each vector's candidates); a text decoded beside the
   one shown waits for it, held. */
typedef struct {
    const nla_tokenizer *tok;
    char **label;          /* [n] each vector's ("position 3 'fox'", "r=0.5") */
    int n, n_cand, greedy, max_new;
    int live;              /* the text shown now (by order); those before it are done */
    int head;              /* its header is out */
    char **held;           /* [n M] the text of each one after `live`, so far */
    size_t *n_held;        /* [n M] its bytes */
    int *count;            /* [n M] its tokens */
    unsigned char *done;   /* [n M] its last token came */
    nla_detok_state *st;   /* [n M] */
    int off;               /* out of memory: nothing more is shown */
} cli_stream;

/* A stream for the texts of n vectors (sp's candidates each), labels to be
   set by the caller; nonzero when out of memory. */
static int cli_stream_new(cli_stream *c, const nla_tokenizer *tok, int n, const ex_spec *sp) {
    const size_t nt = (size_t)n * (size_t)(sp->n_cand + sp->greedy);
    memset(c, 0, sizeof *c);
    c->tok = tok;
    c->n = n;
    c->n_cand = sp->n_cand;
    c->greedy = sp->greedy;
    c->max_new = sp->max_new;
    return !(c->label = (char **)NLA_CALLOC((size_t)n, sizeof *c->label)) ||
           !(c->held = (char **)NLA_CALLOC(nt, sizeof *c->held)) ||
           !(c->n_held = (size_t *)NLA_CALLOC(nt, sizeof *c->n_held)) ||
           !(c->count = (int *)NLA_CALLOC(nt, sizeof *c->count)) ||
           !(c->done = (unsigned char *)NLA_CALLOC(nt, 1)) ||
           !(c->st = (nla_detok_state *)NLA_CALLOC(nt, sizeof *c->st));
}

static void cli_stream_free(cli_stream *c) {
    const int nt = c->n * (c->n_cand + c->greedy);
    for (int i = 0; c->label && i < c->n; i++) NLA_FREE(c->label[i]);
    for (int t = 0; c->held && t < nt; t++) NLA_FREE(c->held[t]);
    NLA_FREE(c->label); NLA_FREE(c->held); NLA_FREE(c->n_held); NLA_FREE(c->count);
    NLA_FREE(c->done); NLA_FREE(c->st);
    memset(c, 0, sizeof *c);
}

/* A heap string as printf writes it (NULL when out of memory). */
static char *cli_strf(const char *fmt, ...) PRINTF_LIKE(1, 2);
static char *cli_strf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *t = n >= 0 ? (char *)NLA_MALLOC((size_t)n + 1) : NULL;
    if (t) {
        va_start(ap, fmt);
        vsnprintf(t, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return t;
}

static void cli_stream_head(const cli_stream *c, int ord) {
    const int i = ord < c->greedy * c->n ? ord : (ord - c->greedy * c->n) / c->n_cand,
              k = ord < c->greedy * c->n ? -1 : (ord - c->greedy * c->n) % c->n_cand;
    fprintf(stderr, "nla: %s", c->label[i] ? c->label[i] : "");
    if (k < 0 && c->n_cand > 0 && c->greedy) fputs(" (greedy)", stderr);
    else if (c->n_cand > 1) fprintf(stderr, " (candidate %d of %d)", k + 1, c->n_cand);
    fputs(": ", stderr);
}

static int cli_stream_token(void *user, int item, int32_t token, int last) {
    cli_stream *c = (cli_stream *)user;
    const int M = c->n_cand + c->greedy, i = item / M, k = item % M, all = c->n * M;
    const int ord = k == c->n_cand ? i : c->greedy * c->n + i * c->n_cand + k;
    char piece[128];
    size_t len = 0, more = 0;
    if (c->off) return 0;
    /* a stop token ends the text without being part of it */
    if ((!last || c->count[ord] + 1 == c->max_new) &&
        nla_detokenize_next(c->tok, &c->st[ord], token, piece, sizeof piece, &len) != NLA_OK)
        len = 0;
    if (last && nla_detokenize_next(c->tok, &c->st[ord], -1, piece + len, sizeof piece - len,
                                    &more) == NLA_OK) /* what the state held back */
        len += more;
    c->count[ord]++;
    c->done[ord] = (unsigned char)last;
    if (ord == c->live) {
        if (!c->head) cli_stream_head(c, ord);
        c->head = 1;
        cli_put_valid(stderr, piece, len);
    } else if (len) {
        char *g = (char *)NLA_REALLOC(c->held[ord], c->n_held[ord] + len);
        if (g) {
            memcpy(g + c->n_held[ord], piece, len);
            c->held[ord] = g;
            c->n_held[ord] += len;
        } else { /* out of memory: the display stops, the decoding goes on */
            fputs("\nnla: (out of memory: the texts are no longer shown as they are written)\n",
                  stderr);
            c->off = 1;
            return 0;
        }
    }
    while (c->live < all && c->done[c->live]) { /* the next text: what it holds, then live */
        fputc('\n', stderr);
        c->head = 0;
        if (++c->live < all && c->count[c->live] > 0) {
            cli_stream_head(c, c->live);
            c->head = 1;
            cli_put_valid(stderr, c->held[c->live], c->n_held[c->live]);
            NLA_FREE(c->held[c->live]);
            c->held[c->live] = NULL;
            c->n_held[c->live] = 0;
        }
    }
    fflush(stderr);
    return 0;
}

#include <time.h>
/* Seconds of wall time (on Windows clock() counts them since the start). */
static double cli_now(void) {
#ifndef _WIN32
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

/* The AV step of explain and steer: the AV (folder o->arg[1]) writes the
   texts of the n vectors v [n, d] into cand (sp's texts each; vector i
   samples from stream idx[i]), --batch texts at a time; on a terminal
   each text as it is written (when cs is set up); then says on stderr what
   it did and in how long. The model is closed before it returns. */
static int cli_av_step(const cli_opts *o, nla_tokenizer *tok, const float *v, const long *idx,
                       int n, const ex_spec *sp, ex_cand *cand, cli_stream *cs) {
    const int M = sp->n_cand + sp->greedy, B = n * M < sp->batch ? n * M : sp->batch;
    nla_model *m = NULL;
    nla_session *s = NULL;
    errbuf e;
    int tty = 0, ret = 1;
    long n_ids = 0;
    double t0 = cli_now(), t1, t2;
#ifndef _WIN32
    tty = isatty(2);
#endif
    if (open_model(o->arg[1], o->es, o->quant, o->tokenizer, tok, &m) ||
        cli_av_session(m, o, B, &s))
        goto out;
    t1 = cli_now();
    if (ex_verbalize(s, v, idx, n, sp, cand, tty && cs->st ? cli_stream_token : NULL, cs, &e)) {
        cli_error("%s", e.msg);
        goto out;
    }
    t2 = cli_now();
    for (int t = 0; t < n * M; t++) n_ids += cand[t].n_ids;
    fprintf(stderr,
            "nla: AV: %d text%s, %ld tokens in %.1f s = %.2f tokens/s, %d at a time "
            "(model opened in %.1f s)\n",
            n * M, n * M == 1 ? "" : "s", n_ids, t2 - t1, t2 > t1 ? n_ids / (t2 - t1) : 0, B,
            t1 - t0);
    ret = 0;
out:
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

static int cmd_explain(int argc, char **argv) {
    int width = 0; /* the table's columns; 0: no cut */
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_explain, &o), ret = 1, n_pos = 0, T = 0;
    if (r) return r == 2 ? 0 : 1;
    if (o.n_arg != 3) return cli_error("give three folders: nla explain TARGET AV AR");
    nla_model *m = NULL;
    nla_session *s = NULL;
    int32_t *ids = NULL, *pos = NULL;
    float *v = NULL, *rec = NULL;
    char **tok_str = NULL;
    nla_meta av_meta, ar_meta;
    int d = 0, K = 0, random_weights = 0, *best = NULL;
    double B, *norm = NULL, t0, t1, t2;
    const ex_spec sp = cli_ex_spec(&o);
    ex_cand *cand = NULL;
    ex_parts *parts = NULL;
    long *idx = NULL;
    unsigned *flags = NULL;
    errbuf e;
    const int M = sp.n_cand + sp.greedy;
    cli_stream cs;
    memset(&cs, 0, sizeof cs);
    /* 1. one tokenizer for the three; the AV's sidecar says which layer */
    nla_tokenizer *tok = NULL;
    if (cli_trio_start(&o, &tok, &av_meta, &ar_meta, &random_weights)) goto out;
    d = av_meta.d_model;
    K = av_meta.layer;
    /* 2. target: extract block K at the chosen positions */
    t0 = cli_now();
    if (open_model(o.arg[0], o.es, o.quant, o.tokenizer, tok, &m)) goto out;
    t1 = cli_now();
    if ((T = cli_target_ids(&o, nla_model_tokenizer(m), &ids)) < 1 ||
        (n_pos = cli_positions(&o, T, T > 1 ? 1 : 0, &pos)) < 1)
        goto out;
    nla_model_info in;
    nla_model_get_info(m, &in);
    if (in.d_model != d || K >= in.n_layers) {
        cli_error("the target (d %d, %d blocks) does not fit the AV (d %d, layer %d)", in.d_model,
                  in.n_layers, d, K);
        goto out;
    }
    if (!(v = (float *)NLA_MALLOC(sizeof(float) * (size_t)n_pos * d)) ||
        !(rec = (float *)NLA_MALLOC(sizeof(float) * (size_t)n_pos * d)) ||
        !(tok_str = (char **)NLA_CALLOC((size_t)n_pos, sizeof *tok_str)) ||
        !(cand = (ex_cand *)NLA_CALLOC((size_t)n_pos * M, sizeof *cand)) ||
        !(parts = (ex_parts *)NLA_CALLOC((size_t)n_pos, sizeof *parts)) ||
        !(idx = (long *)NLA_CALLOC((size_t)n_pos, sizeof *idx)) ||
        !(best = (int *)NLA_CALLOC((size_t)n_pos, sizeof *best)) ||
        !(norm = (double *)NLA_CALLOC((size_t)n_pos, sizeof *norm)) ||
        !(flags = (unsigned *)NLA_CALLOC((size_t)n_pos, sizeof *flags))) {
        cli_error("out of memory");
        goto out;
    }
    if (cli_extract(m, &o, ids, T, K, pos, n_pos, v)) goto out;
    for (int i = 0; i < n_pos; i++) {
        size_t len = 0;
        int32_t id = ids[pos[i]];
        nla_detokenize(nla_model_tokenizer(m), &id, 1, NULL, 0, &len);
        if ((tok_str[i] = (char *)NLA_MALLOC(len + 1)))
            nla_detokenize(nla_model_tokenizer(m), &id, 1, tok_str[i], len + 1, &len);
        idx[i] = pos[i]; /* the position numbers its texts' streams */
    }
    t2 = cli_now();
    nla_session_free(s); s = NULL;
    nla_model_close(m); m = NULL;
    fprintf(stderr, "nla: explaining %d position%s of %d tokens (block %d)\n", n_pos,
            n_pos == 1 ? "" : "s", T, K);
    fprintf(stderr, "nla: target: %d tokens in %.1f s (model opened in %.1f s)\n", T, t2 - t1,
            t1 - t0);
    /* 3. AV: each vector's texts, --batch decoded together */
#ifndef _WIN32
    if (isatty(2)) { /* on a terminal, each text as it is written */
        int oom = cli_stream_new(&cs, tok, n_pos, &sp);
        for (int i = 0; i < n_pos && !oom; i++)
            oom = !(cs.label[i] =
                        cli_strf("position %d '%s'", pos[i], tok_str[i] ? tok_str[i] : ""));
        if (oom) { cli_error("out of memory"); goto out; }
    }
#endif
    if (cli_av_step(&o, tok, v, idx, n_pos, &sp, cand, &cs)) goto out;
    /* 4. AR: reconstruct every text, keep each vector's best candidate, score its parts */
    t0 = cli_now();
    if (open_model(o.arg[2], o.es, o.quant, o.tokenizer, tok, &m) ||
        cli_ar_session(m, o.arg[2], &o, cand, n_pos * M, &s))
        goto out;
    t1 = cli_now();
    B = av_meta.fve_baseline;
    if (ex_choose(s, v, n_pos, &sp, cand, ar_meta.mse_scale, B, best, rec, &e) ||
        (o.parts && ex_score_parts(s, v, n_pos, cand, M, best, ar_meta.mse_scale, B, parts, &e))) {
        cli_error("%s", e.msg);
        goto out;
    }
    fprintf(stderr, "nla: AR: %d text%s in %.1f s (model opened in %.1f s)\n", n_pos * M,
            n_pos * M == 1 ? "" : "s", cli_now() - t1, t1 - t0);
    /* 5. flags (norm_outlier among the explained positions), then the report */
    for (int i = 0; i < n_pos; i++) {
        const ex_cand *c = &cand[i * M + best[i]];
        double nv = 0;
        for (int k = 0; k < d; k++) nv += (double)v[(size_t)i * d + k] * v[(size_t)i * d + k];
        norm[i] = sqrt(nv);
        flags[i] = ex_flags(c->ex, c->raw, c->parsed, c->truncated, ev_special(tok, ids[pos[i]]),
                            c->sc.cos);
    }
    if (ex_norm_outliers(norm, n_pos, flags)) { cli_error("out of memory"); goto out; }
    if (random_weights)
        fprintf(stderr, "nla: note: these models have RANDOM weights (test data): the explanations "
                        "are meaningless\n");
    width = o.jsonl ? 0 : cli_columns();
    if (!o.jsonl)
        printf("%5s  %-14s %10s  %8s  %8s  %8s  %s\n", "pos", "token", "|v|", "mse_nrm", "cos",
               "fve_nrm", "explanation  [flags]");
    for (int i = 0; i < n_pos; i++) {
        const ex_cand *c = &cand[i * M + best[i]];
        const char *tk = tok_str[i] ? tok_str[i] : "";
        ex_extra x = {&cand[i * M], o.best_of, sp.n_cand,
                      sp.greedy,    best[i],   o.parts ? &parts[i] : NULL,
                      flags[i]};
        if (o.jsonl) {
            size_t n_extra = 0;
            char *extra = ev_render(ex_extra_render, &x, &n_extra);
            if (!extra) { cli_error("out of memory"); goto out; }
            printf("{\"position\": %d, \"token_id\": %d, \"token\": ", pos[i], ids[pos[i]]);
            cli_json(tk, strlen(tk));
            printf(", ");
            print_num("vec_norm", norm[i]);
            printf(", \"explanation\": ");
            cli_json(c->ex, strlen(c->ex));
            printf(", \"parsed\": %s, ", c->parsed ? "true" : "false");
            print_num("mse_nrm", c->sc.mse_nrm);
            printf(", ");
            print_num("cos", c->sc.cos);
            printf(", ");
            print_num("fve_nrm", c->sc.fve_nrm);
            printf("%s}\n", extra);
            NLA_FREE(extra);
        } else {
            char shown[15], fl[128], row[160], tail[136];
            size_t k = 0;
            for (const char *p = tk; *p && k < 12; p++) shown[k++] = *p == '\n' ? ' ' : *p;
            shown[k] = 0;
            cli_flags(flags[i], fl, sizeof fl);
            snprintf(row, sizeof row, "%5d  %-14s %10.4g  %8.4f  %8.4f  %8.3f  ", pos[i], shown,
                     norm[i], c->sc.mse_nrm, c->sc.cos, c->sc.fve_nrm);
            snprintf(tail, sizeof tail, "  [%s]", fl);
            cli_table_row(row, c->ex, tail, width);
            for (int j = 0; o.parts && j < parts[i].n; j++)
                printf("%5s  part %d alone: mse_nrm %.4f cos %.4f; parts 1-%d: mse_nrm %.4f cos "
                       "%.4f\n",
                       "", j + 1, parts[i].part[j].mse_nrm, parts[i].part[j].cos, j + 1,
                       parts[i].prefix[j].mse_nrm, parts[i].prefix[j].cos);
            if (sp.greedy)
                printf("%5s  greedy: mse_nrm %.4f cos %.4f\n", "",
                       cand[i * M + sp.n_cand].sc.mse_nrm, cand[i * M + sp.n_cand].sc.cos);
        }
    }
    if (!o.jsonl) {
        printf("fve_nrm against the training-set baseline %.4g; mse_nrm = 2 (1 - cos)\n", B);
        if (o.best_of)
            printf("each the best of %d sampled explanations by the same AR's mse_nrm\n",
                   o.best_of);
    }
    ret = 0;
out:
    for (int i = 0; tok_str && i < n_pos; i++) NLA_FREE(tok_str[i]);
    for (int t = 0; cand && t < n_pos * M; t++) ex_cand_free(&cand[t]);
    NLA_FREE(cand); NLA_FREE(parts); NLA_FREE(idx); NLA_FREE(best); NLA_FREE(norm); NLA_FREE(flags);
    NLA_FREE(tok_str); NLA_FREE(ids); NLA_FREE(pos); NLA_FREE(v); NLA_FREE(rec);
    cli_stream_free(&cs);
    nla_session_free(s);
    nla_model_close(m);
    nla_tokenizer_close(tok);
    return ret;
}

#ifndef NLA_NO_EVAL
static const char *const usage_eval =
    "usage: nla eval TARGET AV AR [--docs FILE] [--chats FILE] --out DIR [options]\n"
    "       nla eval --merge OUT_DIR SHARD_DIR...\n"
    "       nla eval --summary RESULTS [--json] [--baseline B] [--cross-sample N]\n"
    "       nla eval --html report.html RESULTS [--max-texts N]\n"
    "       nla eval --compare RES_A RES_B [--json]\n"
    "\n"
    "The pretraining-vs-chat reconstruction study as one resumable,\n"
    "shardable command. Inputs are JSONL: documents {\"id\", \"text\", \"source\"} and chats\n"
    "{\"id\", \"messages\": [{\"role\", \"content\"}, ...]} (Gemma 3 chat template); "
    "either may add\n"
    "\"positions\": [...] to choose the tokens. Bad records are reported and skipped.\n"
    "OUT_DIR gets results.jsonl (a row per token), activations.npy and reconstructions.npy\n"
    "(float32 [S, d], row = sample_idx), tokens.jsonl and params.json. Rerun the same command to\n"
    "resume after a kill; other arguments on the same folder are refused.\n"
    "  --docs FILE            documents, one JSON object per line\n"
    "  --chats FILE           conversations, one JSON object per line\n"
    "  --out DIR              the results folder (created if missing)\n"
    "  --positions-per-record N   tokens drawn per record (default 1)\n"
    "  --min-position P       draw positions >= P (default 50, as in training; the blog used 10)\n"
    "  --max-tokens N         cut records to N tokens (default 512)\n"
    "  --skip-special         never draw special tokens (<bos>, <start_of_turn>, ...)\n"
    "  --seed S               drawing seed (default 0)\n"
    "  --shard I/N            take part I of N (1-based) of the records, for N machines\n"
    "  --shard auto           I/N from a Slurm job array (SLURM_ARRAY_TASK_ID, _MIN, _COUNT)\n"
    "                         or a Kubernetes indexed job (JOB_COMPLETION_INDEX, with --shards N)\n"
    "  --chunk C              samples per extract/verbalize/reconstruct round (default 256)\n"
    "  --max-new N            AV tokens per explanation (default 200)\n"
    "  --batch B              vectors the AV decodes together (default 8)\n"
    "  --temp T --top-k K --top-p P   AV sampling (default greedy; seeded per sample)\n"
    "  --best-of N            N sampled explanations per token (temperature 1 unless --temp),\n"
    "                         each reconstructed; the lowest mse_nrm is kept, all are listed\n"
    "  --with-greedy          also the greedy explanation's scores\n"
    "  --parts                scores of each paragraph alone and of each prefix of paragraphs\n"
    "  --tokenizer F          tokenizer.json for all three (default: each folder's)\n"
    "  --threads N            threads (default: all)\n"
    "  --quant q8_0|q4        quantize the models at load\n"
    "  --plan                 only read the inputs and count records and rows\n"
    "  --quiet                no progress on stderr\n"
    "--merge combines complete shard folders into OUT_DIR, identical to an unsharded run.\n"
    "--summary prints error statistics by source, chat role and token kind, the explanations'\n"
    "structure and degenerate templates, for a results folder or a JSONL file with the\n"
    "published field names; --json for JSON; --baseline B sets the training-set baseline.\n"
    "--cross-sample N adds, per group, the share of N sampled rows whose reconstruction is\n"
    "closest to its own vector and the own vector's mean rank (as nla score's cross-scoring).\n"
    "--html writes a self-contained report (tables, histograms, coloured texts).\n"
    "--compare sets two runs of one study side by side (e.g. without and with --quant): per row\n"
    "the change of mse_nrm and cos, identical explanations, the cos between the runs'\n"
    "activations and reconstructions; the means and the 20 rows that changed most.\n";
static const cli_spec spec_eval = {
    "eval", usage_eval,
    "--docs --chats --out --merge --summary --html --compare --json --baseline --cross-sample "
    "--max-texts --positions-per-record --min-position --max-tokens --skip-special --seed "
    "--shard --shards --chunk --max-new --batch --temp --top-k --top-p --best-of --with-greedy "
    "--parts --tokenizer --threads --quant --plan --quiet"};

/* A duration as people read it: 42 s, 7 min 05 s, 3 h 20 min. */
static void cli_duration(double sec, char *out, size_t cap) {
    const long t = sec > 0 ? (long)(sec + 0.5) : 0;
    if (t >= 3600) snprintf(out, cap, "%ld h %02ld min", t / 3600, t % 3600 / 60);
    else if (t >= 60) snprintf(out, cap, "%ld min %02ld s", t / 60, t % 60);
    else snprintf(out, cap, "%ld s", t);
}

/* Progress on stderr: a bar redrawn in place on a terminal (at most 10 times
   a second), else a line per finished phase and at most one every 10 s.
   The ETA comes from each phase's own pace: the seconds it has spent per
   row of work (extract: vectors, verbalize: AV tokens, reconstruct: rows),
   times the rows it still has to do, summed over the phases; until every
   phase has been timed once it is a lower bound (">="). */
typedef struct {
    int quiet, tty;
    double t0, last, t_cb;  /* start, last line drawn, last callback */
    double spent[3], rows[3]; /* per phase: seconds, rows of work done */
    int phase;              /* the phase of the last callback (-1: none) */
    double frac;            /* its share of the chunk done */
} cli_eval_ui;

static int cli_eval_progress(void *user, const nla_eval_progress *p) {
    static const char *const names[3] = {"extract", "verbalize", "reconstruct"};
    cli_eval_ui *u = (cli_eval_ui *)user;
    const double t = cli_now(), el = t - u->t0;
    const long fresh = p->rows_done - p->rows_resumed;
    const int end = p->total && p->done == p->total;
    int ph = 0;
    while (ph < 3 && strcmp(p->phase, names[ph])) ph++;
    if (ph < 3 && p->total) { /* the time since the last callback was this phase's */
        double frac = (double)p->done / p->total;
        if (ph == 1 && p->tokens_max > 0) { /* tokens of those expected: texts so far */
            const double per = p->done ? (double)p->tokens / p->done : 0;
            const double want = p->done && per * p->total < (double)p->tokens_max
                                    ? per * p->total
                                    : (double)p->tokens_max;
            frac = want > 0 ? (double)p->tokens / want : 0;
        }
        if (ph != u->phase) u->frac = 0;
        if (frac > u->frac) {
            u->rows[ph] += (frac - u->frac) * p->chunk_rows;
            u->frac = frac;
        }
        u->spent[ph] += t - u->t_cb;
        u->phase = ph;
    }
    u->t_cb = t;
    if (u->quiet || !p->total || ph == 3) return 0;
    if (!end && t - u->last < (u->tty ? 0.1 : 10)) return 0;
    u->last = t;
    /* rows each phase still has to do: the shard's uncommitted rows, less
       the part of the chunk under way that it has done */
    const double left = (double)(p->rows_total - p->rows_done);
    double eta = 0;
    int bound = 0;
    for (int k = 0; k < 3; k++) {
        const double todo = k < ph ? left - p->chunk_rows
                            : k == ph ? left - u->frac * p->chunk_rows
                                      : left;
        if (u->rows[k] > 0) eta += u->spent[k] / u->rows[k] * (todo > 0 ? todo : 0);
        else bound |= todo > 0;
    }
    char dur[32], eta_s[40];
    cli_duration(eta, dur, sizeof dur);
    snprintf(eta_s, sizeof eta_s, "%s%s", bound ? ">= " : "", dur);
    if (u->tty) {
        char bar[21];
        const int k = (int)(20 * u->frac);
        for (int i = 0; i < 20; i++) bar[i] = i < k ? '#' : '.';
        bar[20] = 0;
        fprintf(stderr, "\r%-11s [%s] %d/%d | rows %ld/%ld, %.2f rows/s, ETA %s   ", p->phase, bar,
                p->done, p->total, p->rows_done, p->rows_total, el > 0 ? (double)fresh / el : 0.0,
                eta_s);
        if (end && ph == 2) fputc('\n', stderr);
    } else {
        fprintf(stderr, "nla: %s %d/%d; rows %ld/%ld, %.2f rows/s, ETA %s\n", p->phase, p->done,
                p->total, p->rows_done, p->rows_total, el > 0 ? (double)fresh / el : 0.0, eta_s);
    }
    return 0;
}

static void cli_eval_warn(void *user, const char *msg) {
    (void)user;
    fprintf(stderr, "nla: %s\n", msg);
}

static void cli_write(void *user, const char *s, size_t n) { fwrite(s, 1, n, (FILE *)user); }

/* An eval error as "nla eval: ..." (the library's say "eval: ..." or
   "eval merge: ..." themselves). */
static int cli_eval_error(const char *err, nla_status rc) {
    fprintf(stderr, "nla %s%s (%s)\n", strncmp(err, "eval", 4) ? "eval: " : "", err,
            nla_strerror(rc));
    return 1;
}

/* An integer from the environment: 1 when name is set to one. */
static int env_int(const char *name, int *v) {
    const char *s = getenv(name);
    return s && parse_int(s, v);
}

/* --shard auto: this task's part I/N from the scheduler's environment. A
   Slurm job array (--array=A-B or A-B:S) sets the task's id, the first id,
   the count and the step; a Kubernetes indexed job sets the 0-based
   JOB_COMPLETION_INDEX, and N comes from --shards. shards is 0 when not given. */
static int cli_shard_auto(int shards, int *i, int *n) {
    int t, lo, count, step = 1;
    if (getenv("SLURM_ARRAY_TASK_ID")) {
        if (!env_int("SLURM_ARRAY_TASK_ID", &t) || !env_int("SLURM_ARRAY_TASK_MIN", &lo) ||
            !env_int("SLURM_ARRAY_TASK_COUNT", &count) || count < 1 ||
            (getenv("SLURM_ARRAY_TASK_STEP") &&
             (!env_int("SLURM_ARRAY_TASK_STEP", &step) || step < 1)))
            return cli_error("--shard auto: SLURM_ARRAY_TASK_ID is set, but SLURM_ARRAY_TASK_MIN, "
                             "_COUNT or _STEP is missing or not a number");
        if (t < lo || (t - lo) % step || (t - lo) / step >= count)
            return cli_error("--shard auto: array task %d is not one of %d evenly spaced tasks "
                             "from %d (submit with --array=A-B or A-B:S)", t, count, lo);
        if (shards && shards != count)
            return cli_error("--shard auto: the job array has %d tasks, but --shards says %d",
                             count, shards);
        *i = (t - lo) / step + 1;
        *n = count;
        return 0;
    }
    if (getenv("JOB_COMPLETION_INDEX")) {
        if (!shards)
            return cli_error("--shard auto: JOB_COMPLETION_INDEX is set; "
                             "give the number of shards with --shards N");
        if (!env_int("JOB_COMPLETION_INDEX", &t) || t < 0 || t >= shards)
            return cli_error("--shard auto: JOB_COMPLETION_INDEX=%s is not an index in 0..%d",
                             getenv("JOB_COMPLETION_INDEX"), shards - 1);
        *i = t + 1;
        *n = shards;
        return 0;
    }
    return cli_error("--shard auto: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor "
                     "JOB_COMPLETION_INDEX (a Kubernetes indexed job) is set; give --shard I/N");
}

static int cmd_eval(int argc, char **argv) {
    nla_eval_params p;
    nla_eval_report_params rp;
    nla_eval_counts c;
    cli_eval_ui ui;
    const char *arg[3] = {NULL, NULL, NULL}, *merge = NULL, *summary = NULL, *html = NULL,
               *compare = NULL;
    int n_arg = 0, plan = 0, first_dir = -1, shard_auto = 0, shards = 0, made = 0;
    char err[512];
    nla_status rc;
    memset(&p, 0, sizeof p);
    memset(&rp, 0, sizeof rp);
    memset(&ui, 0, sizeof ui);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage_eval, stdout); return 0; }
        if (!strcmp(a, "--skip-special")) { p.skip_special = 1; continue; }
        if (!strcmp(a, "--quiet")) { ui.quiet = 1; continue; }
        if (!strcmp(a, "--plan")) { plan = 1; continue; }
        if (!strcmp(a, "--json")) { rp.json = 1; continue; }
        if (!strcmp(a, "--with-greedy")) { p.with_greedy = 1; continue; }
        if (!strcmp(a, "--parts")) { p.parts = 1; continue; }
        if (merge) { if (first_dir < 0) first_dir = i; continue; } /* the shard folders */
        if (a[0] != '-' || !a[1]) {
            if (n_arg == 3) return cli_error("unexpected argument '%s'", a);
            arg[n_arg++] = a;
            continue;
        }
        if (!opt_listed(spec_eval.opts, a)) return cli_no_option(&spec_eval, a);
        if (!v) return cli_error("%s needs a value", a);
        i++;
        if (!strcmp(a, "--docs")) p.docs = v;
        else if (!strcmp(a, "--chats")) p.chats = v;
        else if (!strcmp(a, "--out")) p.out_dir = v;
        else if (!strcmp(a, "--merge")) merge = v;
        else if (!strcmp(a, "--summary")) summary = v;
        else if (!strcmp(a, "--html")) html = v;
        else if (!strcmp(a, "--compare")) compare = v;
        else if (!strcmp(a, "--tokenizer")) p.tokenizer = v;
        else if (!strcmp(a, "--positions-per-record"))
            ok = parse_int(v, &p.positions_per_record) && p.positions_per_record > 0;
        else if (!strcmp(a, "--min-position"))
            ok = parse_int(v, &p.min_position) && p.min_position >= 0 &&
                 ((p.min_position = p.min_position ? p.min_position : NLA_EVAL_FROM_BOS), 1);
        else if (!strcmp(a, "--max-tokens")) ok = parse_int(v, &p.max_tokens) && p.max_tokens > 0;
        else if (!strcmp(a, "--seed")) {
            long long s;
            char *end;
            errno = 0;
            s = strtoll(v, &end, 10);
            ok = end != v && !*end && s >= 0 && errno != ERANGE;
            p.seed = (uint64_t)s;
        } else if (!strcmp(a, "--chunk")) ok = parse_int(v, &p.chunk) && p.chunk > 0;
        else if (!strcmp(a, "--max-new"))
            ok = parse_int(v, &p.max_new) && p.max_new > 0 && p.max_new <= CLI_MAX_NEW;
        else if (!strcmp(a, "--best-of"))
            ok = parse_int(v, &p.best_of) && p.best_of > 0 && p.best_of <= 256;
        else if (!strcmp(a, "--batch"))
            ok = parse_int(v, &p.batch) && p.batch > 0 && p.batch <= 256;
        else if (!strcmp(a, "--threads"))
            ok = parse_int(v, &p.n_threads) && p.n_threads >= 0 && p.n_threads <= CLI_MAX_THREADS;
        else if (!strcmp(a, "--temp")) ok = parse_float(v, &p.temperature) && p.temperature >= 0;
        else if (!strcmp(a, "--top-k")) ok = parse_int(v, &p.top_k) && p.top_k >= 0;
        else if (!strcmp(a, "--top-p"))
            ok = parse_float(v, &p.top_p) && p.top_p >= 0 && p.top_p <= 1;
        else if (!strcmp(a, "--max-texts")) ok = parse_int(v, &rp.max_texts) && rp.max_texts > 0;
        else if (!strcmp(a, "--cross-sample"))
            ok = parse_int(v, &rp.cross_sample) && rp.cross_sample > 0;
        else if (!strcmp(a, "--baseline")) {
            float b;
            ok = parse_float(v, &b) && b > 0;
            rp.baseline = b;
        } else if (!strcmp(a, "--shard")) { /* the last --shard wins */
            int end = 0; /* I/N and nothing after it: 1/2/3 is refused */
            ok = (shard_auto = !strcmp(v, "auto")) ||
                 (sscanf(v, "%d/%d%n", &p.shard_index, &p.shard_count, &end) == 2 && !v[end] &&
                  p.shard_count > 0 && p.shard_index >= 1 && p.shard_index <= p.shard_count);
        } else if (!strcmp(a, "--shards")) ok = parse_int(v, &shards) && shards > 0;
        else if (!strcmp(a, "--quant")) ok = parse_quant(v, &p.quant);
        else return cli_error("unknown option '%s' (see nla eval --help)", a);
        if (!ok) return cli_bad_value(v, a);
    }
    if (shards && !shard_auto) return cli_error("--shards N goes with --shard auto");
    if (shard_auto && cli_shard_auto(shards, &p.shard_index, &p.shard_count)) return 1;
    rp.warn = cli_eval_warn;
    if (merge) {
        if (first_dir < 0) return cli_error("--merge OUT_DIR needs the shard folders after it");
        if (cli_mkdir(merge, &made)) return 1;
        if ((rc = nla_eval_merge(merge, (const char *const *)(argv + first_dir), argc - first_dir,
                                 err, sizeof err)) != NLA_OK) {
            cli_unmake(merge, made);
            return cli_eval_error(err, rc);
        }
        fprintf(stderr, "nla: merged %d shards into %s\n", argc - first_dir, merge);
        return 0;
    }
    if (summary) {
        rc = nla_eval_summary(summary, &rp, cli_write, stdout, err, sizeof err);
        return rc ? cli_eval_error(err, rc) : 0;
    }
    if (compare) {
        if (n_arg != 1)
            return cli_error("give two results folders: nla eval --compare RES_A RES_B");
        rc = nla_eval_compare(compare, arg[0], &rp, cli_write, stdout, err, sizeof err);
        return rc ? cli_error("%s (%s)", err, nla_strerror(rc)) : 0;
    }
    if (html) {
        if (n_arg != 1) return cli_error("give the results: nla eval --html report.html RESULTS");
        rc = nla_eval_report_html(arg[0], html, &rp, err, sizeof err);
        if (rc) return cli_eval_error(err, rc);
        fprintf(stderr, "nla: wrote %s\n", html);
        return 0;
    }
    if (n_arg != 3) { fputs(usage_eval, stderr); return 1; }
    p.target = arg[0];
    p.av = arg[1];
    p.ar = arg[2];
    p.warn = cli_eval_warn;
    p.progress = cli_eval_progress;
    p.user = &ui;
#ifndef _WIN32
    ui.tty = isatty(2);
#endif
    ui.t0 = ui.last = ui.t_cb = cli_now();
    ui.phase = -1;
    if (plan) {
        nla_tokenizer *tok = NULL;
        if (open_tokenizer(p.tokenizer ? p.tokenizer : p.target, &tok)) return 1;
        rc = nla_eval_plan(&p, tok, &c, err, sizeof err);
        nla_tokenizer_close(tok);
        if (rc) return cli_eval_error(err, rc);
        printf("records %d, bad records %d, rows %ld, rows of shard %d/%d: %ld\n", c.records,
               c.bad_records, c.samples, p.shard_index ? p.shard_index : 1,
               p.shard_count ? p.shard_count : 1, c.shard_samples);
        return 0;
    }
    if (!p.out_dir) return cli_error("--out DIR is required");
    if (cli_mkdir(p.out_dir, &made)) return 1;
    rc = nla_eval_run(&p, &c, err, sizeof err);
    if (rc) cli_unmake(p.out_dir, made);
    if (rc) return cli_eval_error(err, rc);
    if (!ui.quiet)
        fprintf(stderr,
                "nla: %ld rows in %s (%ld resumed, %ld new in %.1f s); %d records, %d skipped\n",
                c.done, p.out_dir, c.resumed, c.done - c.resumed, cli_now() - ui.t0, c.records,
                c.bad_records);
    return 0;
}

#endif /* NLA_NO_EVAL */

static const char *const usage_quantize =
    "usage: nla quantize IN_DIR OUT_DIR --type q8_0|q4     (--quant is the same)\n"
    "\n"
    "Writes a copy of the checkpoint with its matrices quantized (Q8_0: 8.5 bits per weight,\n"
    "Q4_0: 4.5; widths that are not a multiple of 32 stay as stored) as a safetensors file,\n"
    "with config, tokenizer and NLA files copied. It loads by mapping, with no conversion.\n";
static const cli_spec spec_quantize = {"quantize", usage_quantize, "--type --quant"};

static int cmd_quantize(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_quantize, &o);
    if (r) return r == 2 ? 0 : 1;
    if (!o.text)
        return cli_error("give the output folder: nla quantize IN_DIR OUT_DIR --type q8_0|q4");
    if (!o.quant) return cli_error("--type q8_0|q4 is required");
    nla_model *m;
    char err[512];
    if (open_model(o.dir, o.es, o.quant, NULL, NULL, &m)) return 1;
    int made;
    if (cli_mkdir(o.text, &made)) {
        nla_model_close(m);
        return 1;
    }
    nla_status rc = nla_model_save(m, o.text, err, sizeof err);
    nla_model_info in;
    nla_model_get_info(m, &in);
    nla_model_close(m);
    if (rc) {
        cli_unmake(o.text, made);
        return cli_error("%s (%s)", err, nla_strerror(rc));
    }
    fprintf(stderr, "nla: wrote %s: %.3f GB of quantized matrices (from %.3f GB stored)\n", o.text,
            (double)in.quant_bytes / 1e9, (double)in.weight_bytes / 1e9);
    return 0;
}

/* ---- nla random-model: checkpoints with random weights ---- */

/* The stop ids a written checkpoint declares (config.json and
   generation_config.json), as Gemma 3's instruction-tuned checkpoints do:
   <eos> and <end_of_turn>. nla_verbalize stops on them. */
#define RT_EOS_IDS "[1, 106]"

static const char *const usage_random =
    "usage: nla random-model DIR [--role trio|target|av|ar] [--shape tiny|1b|4b|12b|27b]\n"
    "                        [--quant q8_0|q4] [--seed S] [--tokenizer FILE] [--force]\n"
    "\n"
    "Writes Gemma 3 checkpoints with RANDOM weights, for trying the pipeline and for benchmarks:\n"
    "their outputs are meaningless. --shape tiny (default: d_model 16, 4 layers) or the real\n"
    "shapes of Gemma 3 1B, 4B, 12B, 27B, all with the real 262k vocabulary. --quant writes the\n"
    "matrices as quantized blocks directly (a 12B-shaped bf16 trio would not fit most disks).\n"
    "--role trio (default) writes DIR/target, DIR/av and DIR/ar: an NLA trio with sidecars and\n"
    "the AR's value head. --tokenizer links that tokenizer.json into each folder. A folder that\n"
    "already holds a model (config.json, model.safetensors, its index, nla_meta.yaml or\n"
    "value_head.safetensors) is refused unless --force, which replaces that model whole.\n";
static const cli_spec spec_random = {"random-model", usage_random,
                                     "--role --shape --quant --seed --tokenizer --force"};

typedef struct {
    const char *name;
    int d, ff, layers, heads, kv, hd, vocab, window, qpas, pattern, K;
    float rope_factor;
    double injection_scale;
} rshape;

static const rshape rshapes[] = {
    {"tiny", 16, 32, 4, 2, 1, 8, 262144, 32, 8, 2, 2, 8.0f, 40.0},
    {"1b", 1152, 6912, 26, 4, 1, 256, 262144, 512, 256, 6, 17, 1.0f, 1000.0},
    {"4b", 2560, 10240, 34, 8, 4, 256, 262208, 1024, 256, 6, 22, 8.0f, 80000.0},
    {"12b", 3840, 15360, 48, 16, 8, 256, 262208, 1024, 256, 6, 32, 8.0f, 80000.0},
    {"27b", 5376, 21504, 62, 32, 16, 128, 262208, 1024, 168, 6, 41, 8.0f, 60000.0},
};

/* One tensor to invent: bf16 values uniform with standard deviation sd (an
   identity added when eye), or quantized blocks with random codes. */
typedef struct {
    float sd;
    int eye, cols;     /* eye: rows == cols, add 1 on the diagonal */
    nla_dtype dt;      /* BF16, Q8_0 or Q4_0 */
    uint64_t seed;
} rtensor;

static int random_fill(void *user, int index, uint64_t offset, void *buf, size_t n) {
    const rtensor *rt = (const rtensor *)user + index;
    unsigned char *p = (unsigned char *)buf;
    uint64_t st = rt->seed ^ (offset * 0x9e3779b97f4a7c15ull);
    st = st ? st : 1;
    if (rt->dt == NLA_DTYPE_BF16) {
        for (size_t i = 0; i < n / 2; i++) {
            uint64_t idx = offset / 2 + i;
            float v = (float)((rng_uniform(&st) * 2 - 1) * 1.7320508 * rt->sd);
            if (rt->eye && idx / (uint64_t)rt->cols == idx % (uint64_t)rt->cols) v += 1.0f;
            uint16_t h = f32_to_bf16(v);
            memcpy(p + 2 * i, &h, 2);
        }
        return 0;
    }
    /* group blocks (section 6): scales giving values of about sd, then random codes */
    const size_t bs = QG * blk_bytes(rt->dt);
    const uint16_t d = f32_to_f16(rt->sd * 1.7320508f / (rt->dt == NLA_DTYPE_Q8_0 ? 127.0f : 8.0f));
    uint64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = (size_t)((offset + i) % bs);
        if (k < 2 * QG) { p[i] = (unsigned char)(d >> (8 * (k & 1))); continue; }
        if ((i & 7) == 0 || !r) r = rng_next(&st);
        unsigned char c = (unsigned char)r;
        r >>= 8;
        p[i] = rt->dt == NLA_DTYPE_Q8_0 && c == 0 ? 1 : c; /* Q8_0 codes in -127..127 */
    }
    return 0;
}

static int write_text(const char *dir, const char *name, const char *text) {
    char *p = path_join(dir, name), err[512];
    nla_status rc = p ? nla_file_write(p, text, strlen(text), err, sizeof err) : NLA_ERR_NOMEM;
    if (rc) cli_error("%s", p ? err : "out of memory");
    NLA_FREE(p);
    return rc != NLA_OK;
}

/* A tensor of the checkpoint being invented. */
static void rt_add(nla_tensor *t, rtensor *rt, char (*nm)[64], int *n, const char *name,
                   int64_t rows, int64_t cols, float sd, nla_dtype q, uint64_t seed) {
    const int quant = q != NLA_DTYPE_BF16 && cols && cols % QK == 0;
    snprintf(nm[*n], 64, "%s", name);
    memset(&t[*n], 0, sizeof t[*n]);
    t[*n].name = nm[*n];
    t[*n].dtype = quant ? "U8" : "BF16";
    t[*n].ndim = cols ? 2 : 1;
    t[*n].shape[0] = quant ? (rows + QG - 1) / QG : rows;
    t[*n].shape[1] = quant ? (int64_t)group_bytes(q, (int)cols) : cols;
    t[*n].nbytes =
        quant ? mat_bytes(q, rows, cols) : (uint64_t)rows * (uint64_t)(cols ? cols : 1) * 2;
    rt[*n].sd = sd;
    rt[*n].eye = 0;
    rt[*n].cols = (int)cols;
    rt[*n].dt = quant ? q : NLA_DTYPE_BF16;
    rt[*n].seed = seed * 1000003u + (uint64_t)*n + 1;
    (*n)++;
}

/* One random model: `layers` blocks, a final norm unless it is an AR;
   role "av"/"ar" adds the sidecar (and the AR's value head). */
static int write_random_model(const char *dir, const rshape *sh, int layers, const char *role,
                              nla_dtype q, uint64_t seed, const char *tokenizer) {
    const int is_ar = role && !strcmp(role, "ar"), n_t = 2 + layers * W_PER_LAYER, h = sh->d;
    const int64_t shapes[W_PER_LAYER][2] = {
        {h, 0}, {sh->heads * sh->hd, h}, {sh->kv * sh->hd, h}, {sh->kv * sh->hd, h},
        {h, sh->heads * sh->hd}, {sh->hd, 0}, {sh->hd, 0}, {h, 0}, {h, 0}, {sh->ff, h}, {sh->ff, h},
        {h, sh->ff}, {h, 0}};
    nla_tensor *t = (nla_tensor *)NLA_CALLOC((size_t)n_t + 1, sizeof *t);
    rtensor *rt = (rtensor *)NLA_CALLOC((size_t)n_t + 1, sizeof *rt);
    char (*nm)[64] = (char (*)[64])NLA_CALLOC((size_t)n_t + 1, 64), err[512], name[64];
    int ret = 1, n = 0;
    /* matrices: larger in the tiny model, so that it is not flat */
    const float msd = sh->d == 16 ? 0.25f : 0.02f;
    char *path, cfg[8192], types[4096] = "", rope[96] = "null";
    const char *meta[4] = {"format", "pt", "nla.quant", quant_names[q == NLA_DTYPE_Q4_0]};
    nla_status rc;
    if (!t || !rt || !nm) { cli_error("out of memory"); goto out; }
    int made;
    if (cli_mkdir(dir, &made)) goto out;
    for (size_t i = 2; i < N_MODEL_FILES; i++) { /* a model replaced (--force): see model_files */
        char *p = path_join(dir, model_files[i]);
        if (p) remove(p);
        NLA_FREE(p);
    }
    rt_add(t, rt, nm, &n, "model.embed_tokens.weight", sh->vocab, h, sh->d == 16 ? 0.5f : 0.05f,
           NLA_DTYPE_BF16, seed);
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < W_PER_LAYER; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, layer_tensor_names[k]);
            rt_add(t, rt, nm, &n, name, shapes[k][0], shapes[k][1], shapes[k][1] ? msd : 0.1f, q,
                   seed);
        }
    if (!is_ar) rt_add(t, rt, nm, &n, "model.norm.weight", h, 0, 0.1f, NLA_DTYPE_BF16, seed);
    /* the tied head, quantized */
    if (q != NLA_DTYPE_BF16) rt_add(t, rt, nm, &n, "lm_head.weight", sh->vocab, h, 0.05f, q, seed);
    path = path_join(dir, "model.safetensors");
    rc = path ? nla_st_write(path, t, n, meta, q != NLA_DTYPE_BF16 ? 2 : 1, random_fill, rt, err,
                             sizeof err)
              : NLA_ERR_NOMEM;
    NLA_FREE(path);
    if (rc) { cli_error("%s", rc == NLA_ERR_NOMEM ? "out of memory" : err); goto out; }
    for (int l = 0; l < layers; l++)
        snprintf(types + strlen(types), sizeof types - strlen(types), "%s\"%s\"", l ? ", " : "",
                 (l + 1) % sh->pattern ? "sliding_attention" : "full_attention");
    if (sh->rope_factor != 1.0f)
        snprintf(rope, sizeof rope, "{\"rope_type\": \"linear\", \"factor\": %.1f}",
                 (double)sh->rope_factor);
    snprintf(cfg, sizeof cfg,
             "{\n  \"architectures\": [\"Gemma3ForCausalLM\"],\n"
             "  \"model_type\": \"gemma3_text\",\n  \"hidden_size\": %d,\n"
             "  \"intermediate_size\": %d,\n  \"num_attention_heads\": %d,\n"
             "  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
             "  \"num_hidden_layers\": %d,\n  \"layer_types\": [%s],\n  \"vocab_size\": %d,\n"
             "  \"sliding_window\": %d,\n"
             "  \"query_pre_attn_scalar\": %d,\n  \"rope_theta\": 1000000.0,\n"
             "  \"rope_local_base_freq\": 10000.0,\n"
             "  \"rope_scaling\": %s,\n  \"rms_norm_eps\": 1e-06,\n"
             "  \"max_position_embeddings\": 32768,\n"
             "  \"hidden_activation\": \"gelu_pytorch_tanh\",\n  \"bos_token_id\": 2,\n"
             "  \"eos_token_id\": " RT_EOS_IDS ",\n"
             "  \"pad_token_id\": 0,\n  \"tie_word_embeddings\": true,\n"
             "  \"torch_dtype\": \"bfloat16\"\n}\n",
             h, sh->ff, sh->heads, sh->kv, sh->hd, layers, types, sh->vocab, sh->window, sh->qpas,
             rope);
    if (write_text(dir, "config.json", cfg) ||
        write_text(dir, "generation_config.json",
                   "{\n  \"bos_token_id\": 2,\n  \"eos_token_id\": " RT_EOS_IDS ",\n"
                   "  \"pad_token_id\": 0\n}\n"))
        goto out;
    if (role) { /* the sidecar, in the released format */
        sbuf y = {NULL, 0, 0};
        for (int pass = 0; pass < 2; pass++) {
            char head[1024];
            snprintf(head, sizeof head,
                     "kind: nla_model\nschema_version: 2\nrole: %s\nd_model: %d\n"
                     "extraction_layer_index: %d\n"
                     "base_checkpoint: nla random-model %s (random weights, meaningless output)\n"
                     "extraction:\n"
                     "  injection_scale: %.1f\n  mse_scale: %.17g\n"
                     "tokens:\n  injection_char: \xe3\x88\x9c\n"
                     "  injection_token_id: 246566\n  injection_left_neighbor_id: 236813\n"
                     "  injection_right_neighbor_id: 954\n"
                     "  critic_suffix_ids: %s\nprompt_templates:\n  av: |-\n",
                     role, h, sh->K, sh->name, sh->injection_scale, sqrt((double)h),
                     is_ar ? "[1005, 236813, 655, 6011, 236813]" : "null");
            y.len = 0;
            sb_str(&y, head);
            /* block scalar lines, indented 4 */
            for (const char *p = nla_default_av_template; *p;) {
                const char *e = strchr(p, '\n');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                if (len) sb_str(&y, "    ");
                sb_put(&y, p, len);
                sb_str(&y, "\n");
                p += len + (e != NULL);
            }
            sb_str(&y, "  ar: \"Summary of the following text: <text>{explanation}</text> "
                       "<summary>\"\n");
            if (is_ar) {
                snprintf(head, sizeof head, "critic:\n  extraction_layer_index: %d\n", sh->K);
                sb_str(&y, head);
            }
            if (pass == 0 && !(y.out = (char *)NLA_MALLOC(y.cap = y.len + 1))) break;
        }
        if (y.out) y.out[y.len] = 0;
        int bad = !y.out || write_text(dir, "nla_meta.yaml", y.out);
        NLA_FREE(y.out);
        if (bad) goto out;
    }
    if (is_ar) { /* value head: identity plus noise, bf16 */
        int m = 0;
        rt_add(t, rt, nm, &m, "weight", h, h, 0.02f, NLA_DTYPE_BF16, seed + 7);
        rt[0].eye = 1;
        path = path_join(dir, "value_head.safetensors");
        rc = path ? nla_st_write(path, t, 1, meta, 1, random_fill, rt, err, sizeof err)
                  : NLA_ERR_NOMEM;
        NLA_FREE(path);
        if (rc) { cli_error("%s", rc == NLA_ERR_NOMEM ? "out of memory" : err); goto out; }
    }
    if (tokenizer) { /* a copy of the tokenizer (none when it is the folder's own) */
        char *p = path_join(dir, "tokenizer.json"), *tmp = p ? tmp_path(p) : NULL;
        int ok = tmp && same_file(tokenizer, p);
#ifndef _WIN32
        if (tmp && !ok) { /* hard-linked where the system allows, renamed into place */
            remove(tmp);
            ok = link(tokenizer, tmp) == 0 && rename(tmp, p) == 0 && !sync_dir_of(p);
            if (!ok) remove(tmp);
        }
#endif
        errbuf e;
        e.msg[0] = 0;
        ok = ok || (tmp && copy_file(tokenizer, p, &e) == NLA_OK);
        NLA_FREE(p);
        NLA_FREE(tmp);
        if (!ok) {
            cli_error("%s: cannot copy it into %s%s%s", tokenizer, dir, e.msg[0] ? ": " : "",
                      e.msg);
            goto out;
        }
    }
    ret = 0;
out:
    NLA_FREE(t); NLA_FREE(rt); NLA_FREE(nm);
    return ret;
}

static int cmd_random_model(int argc, char **argv) {
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_random, &o);
    if (r) return r == 2 ? 0 : 1;
    if (o.text) return cli_error("unexpected argument '%s'", o.text);
    const char *role = o.role ? o.role : "trio", *shape = o.shape ? o.shape : "tiny";
    const rshape *sh = NULL;
    for (size_t i = 0; i < sizeof rshapes / sizeof *rshapes; i++)
        if (!strcmp(shape, rshapes[i].name)) sh = &rshapes[i];
    if (!sh) return cli_error("--shape: tiny, 1b, 4b, 12b or 27b");
    const nla_dtype q = o.quant == NLA_QUANT_Q8_0   ? NLA_DTYPE_Q8_0
                        : o.quant == NLA_QUANT_Q4_0 ? NLA_DTYPE_Q4_0
                                                    : NLA_DTYPE_BF16;
    const uint64_t seed = (uint64_t)(int64_t)o.seed;
    const int trio = !strcmp(role, "trio");
    if (o.tokenizer) { /* one that opens, before any folder is written */
        nla_tokenizer *tk = NULL;
        char err[512];
        const nla_status rc = nla_tokenizer_open(o.tokenizer, &tk, err, sizeof err);
        nla_tokenizer_close(tk);
        if (rc) return cli_error("--tokenizer %s (%s)", err, nla_strerror(rc));
    }
    for (int i = 0; i < (trio ? 3 : 1) && !o.force;
         i++) { /* random weights over a checkpoint would destroy it */
        static const char *const sub[3] = {"target", "av", "ar"};
        char *dir = trio ? path_join(o.dir, sub[i]) : NULL;
        const char *where = dir ? dir : o.dir;
        int nomem;
        const char *held = model_file_in(where, &nomem);
        if (held)
            cli_error(
                "%s already holds a model (%s): give --force to replace it with random weights",
                where, held);
        else if (nomem)
            cli_error("out of memory");
        NLA_FREE(dir);
        if (held || nomem) return 1;
    }
    if (!strcmp(role, "target"))
        return write_random_model(o.dir, sh, sh->layers, NULL, q, seed, o.tokenizer);
    if (!strcmp(role, "av"))
        return write_random_model(o.dir, sh, sh->layers, "av", q, seed + 1, o.tokenizer);
    if (!strcmp(role, "ar"))
        return write_random_model(o.dir, sh, sh->K + 1, "ar", q, seed + 2, o.tokenizer);
    if (strcmp(role, "trio")) return cli_error("--role: trio, target, av or ar");
    char *sub[3] = {path_join(o.dir, "target"), path_join(o.dir, "av"), path_join(o.dir, "ar")};
    int made;
    int ret = !sub[0] || !sub[1] || !sub[2] || cli_mkdir(o.dir, &made) ||
              write_random_model(sub[0], sh, sh->layers, NULL, q, seed, o.tokenizer) ||
              write_random_model(sub[1], sh, sh->layers, "av", q, seed + 1, o.tokenizer) ||
              write_random_model(sub[2], sh, sh->K + 1, "ar", q, seed + 2, o.tokenizer);
    if (!ret)
        fprintf(stderr,
                "nla: wrote a random-weight %s NLA trio (target, av, ar) under %s: "
                "for trying the pipeline, meaningless output\n",
                sh->name, o.dir);
    for (int i = 0; i < 3; i++) NLA_FREE(sub[i]);
    return ret;
}

/* --- the NLA questions: steer, cross-score, search */

/* "0,0.5,-1" -> finite decimal numbers (malloc'd). Returns the count, or -1. */
static int parse_floats(const char *s, double **out) {
    int n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    double *x = (double *)NLA_MALLOC((size_t)n * sizeof *x);
    if (!x) return -1;
    for (int i = 0; i < n; i++) {
        char *end;
        x[i] = strtod(s, &end);
        if (!is_decimal(s, ",") || end == s || !isfinite(x[i]) || (*end != ',' && *end != 0)) {
            NLA_FREE(x);
            return -1;
        }
        s = end + (*end == ',');
    }
    *out = x;
    return n;
}

/* The AR of folder dir (checked by cli_trio_start) reconstructs n
   explanations into rec [n, d]. */
static int cli_reconstruct_all(const char *dir, const cli_opts *o, char **ex, int n, float *rec) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    nla_status rc;
    int ret = open_model(dir, o->es, o->quant, o->tokenizer, o->shared_tok, &m) ||
              cli_ar_session_texts(m, dir, o, ex, n, &s);
    if (!ret && (rc = nla_reconstruct(s, (const char *const *)ex, n, rec)))
        ret = cli_error("%s (%s)", nla_session_errmsg(s), nla_strerror(rc));
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

static const char *const usage_steer =
    "usage: nla steer TARGET AV AR (--text TEXT | --text-file F | --chat FILE) [--position P]\n"
    "                 (--toward TEXT2 [--toward-position Q] | --toward-npy F [--row R])\n"
    "                 [--scales R1,R2,...] [--patch] [--subtract] [--jsonl]\n"
    "\n"
    "Moves the target's activation v at position P (block K, from the AV's sidecar) along the\n"
    "direction d of another activation, and asks the NLA about each result v': the AV's\n"
    "explanation of v', and its reconstruction's scores against v' and against v. The table\n"
    "cuts each explanation to the terminal's width (COLUMNS) as explain's does.\n"
    "  --position P        the token of TEXT (default: the last)\n"
    "  --toward TEXT2      d = the target's activation in TEXT2 at --toward-position Q\n"
    "                      (default: its last token)\n"
    "  --toward-npy F      d = row R (--row, default 0) of the float32 vectors in F (.npy)\n"
    "  --scales R1,R2,...  v' = v + r |v| d / |d| for each r (default 0,0.5,1,2; r = 0 is v)\n"
    "  --patch             also v' = d: v replaced by the other vector\n"
    "  --subtract          also v' = v minus its component along d\n"
    "  --jsonl             one JSON object per v' instead of the table\n"
    "  --max-new N --batch B --temp T --top-k K --top-p P --seed S --tokenizer F --threads N\n"
    "                      as for nla explain\n" USAGE_LOAD;
/* (the options of steer's own are taken out before parse_opts) */
static const cli_spec spec_steer = {
    "steer", usage_steer,
    "--text --text-file --chat --jsonl --max-new --batch --temp --top-k --top-p --seed "
    "--tokenizer --threads" OPTS_LOAD};

/* The target m's activation at block K of the text in o (--text, --text-file
   or --chat) at position *pos (-1: the last token; what was taken is written
   back); the option's name is for messages. */
static int cli_activation(const nla_model *m, const cli_opts *o, const nla_tokenizer *tok, int K,
                          const char *opt, int *pos, float *v) {
    int32_t *ids = NULL;
    const int T = cli_target_ids(o, tok, &ids);
    int ret = 1;
    if (T < 1) return 1;
    if (*pos < 0) *pos = T - 1;
    if (*pos >= T) cli_error("%s %d is past the last token (%d)", opt, *pos, T - 1);
    else ret = cli_extract(m, o, ids, T, K, pos, 1, v);
    NLA_FREE(ids);
    return ret;
}

/* v' number i of nla steer: the n_sc scales, then --patch's, then --subtract's. */
static nla_steer_mode cli_steer_mode(int i, int n_sc, int patch) {
    return i < n_sc ? NLA_STEER_ADD : i == n_sc && patch ? NLA_STEER_PATCH : NLA_STEER_SUBTRACT;
}
static const char *const steer_name[] = {"add", "patch", "subtract"}; /* by nla_steer_mode */

static int cmd_steer(int argc, char **argv) {
    const char *pos_a = NULL, *toward = NULL, *tpos_a = NULL, *npy = NULL, *row_a = NULL,
               *scales_a = "0,0.5,1,2";
    const char *patch = NULL, *sub = NULL;
    if (cli_take(&argc, argv, "--position", 0, &pos_a) ||
        cli_take(&argc, argv, "--toward", 0, &toward) ||
        cli_take(&argc, argv, "--toward-position", 0, &tpos_a) ||
        cli_take(&argc, argv, "--toward-npy", 0, &npy) ||
        cli_take(&argc, argv, "--row", 0, &row_a) ||
        cli_take(&argc, argv, "--scales", 0, &scales_a) ||
        cli_take(&argc, argv, "--patch", 1, &patch) || cli_take(&argc, argv, "--subtract", 1, &sub))
        return 1;
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_steer, &o), ret = 1, P = -1, Q = -1, R = 0, n_sc, n,
        nv = 0, dv = 0, rnd = 0, width;
    double B;       /* the fve baseline, set in step 5 */
    if (r) return r == 2 ? 0 : 1;
    if (o.n_arg != 3) return cli_error("give three folders: nla steer TARGET AV AR");
    if (!!toward + !!npy != 1)
        return cli_error("give one direction: --toward TEXT2 or --toward-npy FILE");
    if ((tpos_a && !toward) || (row_a && !npy))
        return cli_error("--toward-position goes with --toward, --row with --toward-npy");
    if ((pos_a && (!parse_int(pos_a, &P) || P < 0)) ||
        (tpos_a && (!parse_int(tpos_a, &Q) || Q < 0)) ||
        (row_a && (!parse_int(row_a, &R) || R < 0)))
        return cli_error(
            "--position, --toward-position and --row take a token or row number (0, 1, ...)");
    double *sc = NULL;
    if ((n_sc = parse_floats(scales_a, &sc)) < 1)
        return cli_error("--scales: expected comma-separated numbers");
    n = n_sc + !!patch + !!sub;
    nla_tokenizer *tok = NULL;
    nla_model *m = NULL;
    nla_meta av_meta, ar_meta;
    float *v = NULL, *dir = NULL, *vs = NULL, *rec = NULL, *file = NULL;
    const ex_spec sp = cli_ex_spec(&o);
    ex_cand *cand = (ex_cand *)NLA_CALLOC((size_t)n, sizeof *cand);
    char **ex = (char **)NLA_CALLOC((size_t)n, sizeof *ex);
    long *idx = (long *)NLA_CALLOC((size_t)n, sizeof *idx);
    int d;
    cli_stream cs;
    memset(&cs, 0, sizeof cs);
    if (!cand || !ex || !idx) { cli_error("out of memory"); goto out; }
    /* 1. one tokenizer for the three; the AV's sidecar says which block */
    if (cli_trio_start(&o, &tok, &av_meta, &ar_meta, &rnd)) goto out;
    d = av_meta.d_model;
    if (!(v = (float *)xmalloc(2 * (size_t)n + 2, sizeof(float) * (size_t)d))) {
        cli_error("out of memory");
        goto out;
    }
    dir = v + d;
    vs = dir + d;
    rec = vs + (size_t)n * d;
    /* 2. the target's v and, with --toward, the direction */
    if (open_model(o.arg[0], o.es, o.quant, o.tokenizer, tok, &m)) goto out;
    nla_model_info in;
    nla_model_get_info(m, &in);
    if (in.d_model != d || av_meta.layer >= in.n_layers) {
        cli_error("the target (d %d, %d blocks) does not fit the AV (d %d, layer %d)", in.d_model,
                  in.n_layers, d, av_meta.layer);
        goto out;
    }
    if (cli_activation(m, &o, tok, av_meta.layer, "--position", &P, v)) goto out;
    if (toward) {
        cli_opts o2 = o;
        o2.text_opt = toward;
        o2.text_file = o2.chat = NULL;
        if (cli_activation(m, &o2, tok, av_meta.layer, "--toward-position", &Q, dir)) goto out;
    }
    nla_model_close(m); m = NULL;
    if (npy) {
        if (!(file = cli_vectors(npy, &nv, &dv, 0))) goto out;
        if (dv != d) {
            cli_error("%s holds %d-wide vectors, the AV reads %d", npy, dv, d);
            goto out;
        }
        if (R >= nv) { cli_error("--row %d: %s has rows 0..%d", R, npy, nv - 1); goto out; }
        memcpy(dir, file + (size_t)R * d, sizeof(float) * (size_t)d);
    }
    /* 3. v' for each scale, then the patch and the subtraction, each with its
       label (on the terminal and in the table) */
    if (cli_stream_new(&cs, tok, n, &sp)) { cli_error("out of memory"); goto out; }
    for (int i = 0; i < n; i++) {
        const nla_steer_mode mode = cli_steer_mode(i, n_sc, patch != NULL);
        const nla_status st = nla_steer(v, dir, d, mode, i < n_sc ? sc[i] : 0, vs + (size_t)i * d);
        if (st == NLA_ERR_NONFINITE) {
            if (i < n_sc) cli_error("--scales %g: v' does not fit a float", sc[i]);
            else cli_error("--%s: v' does not fit a float", steer_name[mode]);
            goto out;
        }
        if (st) {
            cli_error("the direction is zero or not finite: nothing to steer along");
            goto out;
        }
        idx[i] = i; /* v' number i samples from its own stream */
        if (!(cs.label[i] = mode == NLA_STEER_ADD ? cli_strf("r=%g", sc[i])
                                                  : cli_strf("%s", steer_name[mode]))) {
            cli_error("out of memory");
            goto out;
        }
    }
    /* 4. the AV explains each v' (on a terminal, as it writes), the AR reconstructs it */
    if (toward)
        fprintf(stderr, "nla: steering position %d (block %d) toward position %d\n", P,
                av_meta.layer, Q);
    else
        fprintf(stderr, "nla: steering position %d (block %d) toward row %d of %s\n", P,
                av_meta.layer, R, npy);
    if (cli_av_step(&o, tok, vs, idx, n, &sp, cand, &cs)) goto out;
    for (int i = 0; i < n; i++) ex[i] = cand[i].ex;
    if (cli_reconstruct_all(o.arg[2], &o, ex, n, rec)) goto out;
    if (rnd)
        fprintf(stderr, "nla: note: these models have RANDOM weights (test data): the explanations "
                        "are meaningless\n");
    /* 5. scores against v' and against v */
    B = av_meta.fve_baseline;
    width = o.jsonl ? 0 : cli_columns();
    if (!o.jsonl)
        printf("%-10s %9s %9s  %8s %8s  %8s %8s  %s\n", "v'", "|v'|", "cos(v',v)", "mse_nrm", "cos",
               "mse(v)", "cos(v)", "explanation");
    for (int i = 0; i < n; i++) {
        const float *x = vs + (size_t)i * d, *y = rec + (size_t)i * d;
        const char *mode = steer_name[cli_steer_mode(i, n_sc, patch != NULL)];
        double norm = 0;
        for (int k = 0; k < d; k++) norm += (double)x[k] * x[k];
        /* a v' of all zeros (r = -1; v along d, subtracted) has no scores of its own: null */
        nla_scores own = {NAN, NAN, NAN}, orig, moved = own;
        if (nla_score(v, y, d, ar_meta.mse_scale, B, &orig) ||
            (norm > 0 && (nla_score(x, y, d, ar_meta.mse_scale, B, &own) ||
                          nla_score(v, x, d, ar_meta.mse_scale, B, &moved)))) {
            cli_error("cannot score row %d", i);
            goto out;
        }
        if (o.jsonl) {
            printf("{\"steer\": \"%s\", ", mode);
            if (i < n_sc) { print_num("scale", sc[i]); printf(", "); }
            print_num("vec_norm", sqrt(norm)); printf(", ");
            print_num("cos_to_v", moved.cos);
            printf(", \"explanation\": ");
            cli_json(ex[i], strlen(ex[i]));
            printf(", \"parsed\": %s, ", cand[i].parsed ? "true" : "false");
            print_num("mse_nrm", own.mse_nrm); printf(", ");
            print_num("cos", own.cos); printf(", ");
            print_num("fve_nrm", own.fve_nrm); printf(", ");
            print_num("mse_nrm_v", orig.mse_nrm); printf(", ");
            print_num("cos_v", orig.cos);
            printf("}\n");
        } else {
            char row[128], f[3][16];
            snprintf(row, sizeof row, "%-10s %9.4g %s  %s %s  %8.4f %8.4f  ", cs.label[i],
                     sqrt(norm), fixed_or_dash(f[0], sizeof f[0], 9, 4, moved.cos, 0),
                     fixed_or_dash(f[1], sizeof f[1], 8, 4, own.mse_nrm, 0),
                     fixed_or_dash(f[2], sizeof f[2], 8, 4, own.cos, 0), orig.mse_nrm, orig.cos);
            cli_table_row(row, ex[i], cand[i].parsed ? "" : "  [no <explanation> tags]", width);
        }
    }
    if (!o.jsonl)
        printf("mse_nrm, cos: the reconstruction against v'; mse(v), cos(v): against v\n");
    ret = 0;
out:
    for (int i = 0; cand && i < n; i++) ex_cand_free(&cand[i]);
    NLA_FREE(cand); NLA_FREE(ex); NLA_FREE(idx); NLA_FREE(sc); NLA_FREE(v); NLA_FREE(file);
    cli_stream_free(&cs);
    nla_model_close(m);
    nla_tokenizer_close(tok);
    return ret;
}

#ifndef NLA_NO_EVAL
static const char *const usage_search =
    "usage: nla search RESULTS_DIR (--query TEXT --ar AR | --near ROW | --grep REGEX) [options]\n"
    "\n"
    "Finds the tokens of a study (a results folder of nla eval) by meaning: ranks their\n"
    "activations by cosine to the AR's reconstruction of a sentence (--query) or to another\n"
    "row's activation (--near), and keeps the rows whose explanation matches a POSIX extended\n"
    "regular expression (--grep; alone it keeps the study's order).\n"
    "  --query TEXT    a sentence, written like an explanation; needs --ar\n"
    "  --ar AR         the AR folder that reconstructs it (of the study's width d)\n"
    "  --near ROW      the activation of row ROW (its sample_idx)\n"
    "  --grep REGEX    only rows whose explanation matches; --ignore-case to ignore case\n"
    "  --top K         rows shown (default 10)\n"
    "  --jsonl         one JSON object per row: rank, sample_idx, token, cos (to the query),\n"
    "                  mse_nrm (the study's), explanation, text_preview\n"
    "  --tokenizer F --threads N   for the AR, and\n" USAGE_LOAD
    "Prints rank, row, token, cos and explanation, and under each the opening of its text.\n";
static const cli_spec spec_search = {"search", usage_search,
                                     "--jsonl --tokenizer --threads" OPTS_LOAD};

/* s as one line: newlines and tabs as spaces, at most max bytes (then "..."). */
static void cli_line(const char *s, size_t max) {
    size_t k = 0;
    for (; s[k] && k < max; k++) putchar(s[k] == '\n' || s[k] == '\t' ? ' ' : s[k]);
    if (s[k]) printf("...");
}

/* The query vector of nla search: the AR's reconstruction of TEXT. */
static int cli_query_vector(const char *ar, const cli_opts *o, const char *text, int d, float *q) {
    nla_model *m = NULL;
    nla_session *s = NULL;
    nla_meta meta;
    nla_status rc;
    char *ex[1] = {(char *)(uintptr_t)text};
    int ret = open_model(ar, o->es, o->quant, o->tokenizer, NULL, &m) ||
              cli_ar_session_texts(m, ar, o, ex, 1, &s);
    if (!ret) {
        nla_model_get_meta(m, &meta);
        if (meta.d_model != d)
            ret = cli_error("the AR %s writes %d-wide vectors, the study holds %d-wide ones", ar,
                            meta.d_model, d);
        else if ((rc = nla_reconstruct(s, (const char *const *)ex, 1, q)))
            ret = cli_error("%s (%s)", nla_session_errmsg(s), nla_strerror(rc));
    }
    nla_session_free(s);
    nla_model_close(m);
    return ret;
}

static int cmd_search(int argc, char **argv) {
    const char *query = NULL, *ar = NULL, *near_a = NULL, *grep = NULL, *top_a = NULL,
               *icase = NULL;
    if (cli_take(&argc, argv, "--query", 0, &query) || cli_take(&argc, argv, "--ar", 0, &ar) ||
        cli_take(&argc, argv, "--near", 0, &near_a) || cli_take(&argc, argv, "--grep", 0, &grep) ||
        cli_take(&argc, argv, "--top", 0, &top_a) ||
        cli_take(&argc, argv, "--ignore-case", 1, &icase))
        return 1;
    cli_opts o;
    int r = parse_opts(argc, argv, &spec_search, &o), ret = 1, top = 10, near = -1, n_hits = 0,
        n_match = 0;
    if (r) return r == 2 ? 0 : 1;
    if (o.text) return cli_error("unexpected argument '%s'", o.text);
    if (!query && !near_a && !grep)
        return cli_error("give --query TEXT --ar AR, --near ROW or --grep REGEX");
    if (query && near_a) return cli_error("--query and --near exclude each other");
    if (query && !ar)
        return cli_error(
            "--query needs --ar AR: the AR turns the sentence into a vector to compare");
    if (ar && !query) return cli_error("--ar goes with --query");
    if (top_a && (!parse_int(top_a, &top) || top < 1))
        return cli_error("bad value '%s' for --top", top_a);
    if (near_a && (!parse_int(near_a, &near) || near < 0))
        return cli_error("bad value '%s' for --near", near_a);
    nla_study *st = NULL;
    nla_search_hit *hits = NULL;
    nla_search_params sp;
    float *q = NULL;
    char err[512];
    int d = 0, n = 0, row = -1; /* the study's width and rows, --near's row */
    double t1 = 0, t2 = 0;      /* when the study was open, the search done */
    const double t0 = cli_now();
    nla_status rc = nla_study_open(o.dir, cli_eval_warn, NULL, &st, err, sizeof err);
    if (rc) { cli_error("%s (%s)", err, nla_strerror(rc)); goto out; }
    d = nla_study_dim(st);
    n = nla_study_count(st);
    row = near_a ? nla_study_find(st, near) : -1;
    t1 = cli_now();
    memset(&sp, 0, sizeof sp);
    if (top > n && n > 0) top = n; /* no more hits than rows */
    hits = (nla_search_hit *)xmalloc((size_t)top, sizeof *hits);
    if (!hits || !(q = (float *)xmalloc((size_t)d, sizeof(float)))) {
        cli_error("out of memory");
        goto out;
    }
    if (near_a && row < 0) {
        cli_error("--near %d: %s has no row with that sample_idx (%d rows)", near, o.dir, n);
        goto out;
    }
    if (near_a && (rc = nla_study_vector(st, row, q)) != NLA_OK) {
        if (rc == NLA_ERR_FORMAT)
            cli_error("%s: the vector of row %d differs from its checksum in results.jsonl: "
                      "rerun nla eval to redo it",
                      o.dir, near);
        else cli_error("%s: cannot read the vector of row %d (%s)", o.dir, near, nla_strerror(rc));
        goto out;
    }
    if (query && cli_query_vector(ar, &o, query, d, q)) goto out;
    sp.query = query || near_a ? q : NULL;
    sp.regex = grep;
    sp.icase = !!icase;
    t2 = cli_now();
    if ((rc = nla_study_search(st, &sp, hits, top, &n_hits, &n_match, err, sizeof err))) {
        cli_error("%s", err);
        goto out;
    }
    for (int k = 0; k < n_hits; k++) {
        nla_study_row sr;
        nla_study_get(st, hits[k].row, &sr);
        if (o.jsonl) {
            printf("{\"rank\": %d, \"sample_idx\": %ld, \"token\": ", k + 1, sr.sample_idx);
            cli_json(sr.token, strlen(sr.token));
            if (sp.query) { printf(", "); print_num("cos", hits[k].cos); }
            printf(", ");
            print_num("mse_nrm", sr.mse_nrm);
            printf(", \"explanation\": ");
            cli_json(sr.explanation, strlen(sr.explanation));
            printf(", \"text_preview\": ");
            cli_json(sr.preview, strlen(sr.preview));
            printf("}\n");
        } else {
            if (!k)
                printf("%4s %6s  %-14s %7s  %s\n", "rank", "row", "token", "cos", "explanation");
            char tk[15];
            size_t t = 0;
            for (const char *p = sr.token; *p && t < 12; p++) tk[t++] = *p == '\n' ? ' ' : *p;
            tk[t] = 0;
            printf("%4d %6ld  %-14s ", k + 1, sr.sample_idx, tk);
            if (sp.query) printf("%7.4f  ", hits[k].cos);
            else printf("%7s  ", "-");
            cli_line(sr.explanation, 200);
            printf("\n%29s", "| ");
            cli_line(sr.preview, 72);
            printf("\n");
        }
    }
    fprintf(stderr, "nla: %d of %d rows match; study read in %.3f s, searched in %.3f s\n", n_match,
            n, t1 - t0, cli_now() - t2);
    ret = 0;
out:
    NLA_FREE(hits); NLA_FREE(q);
    nla_study_close(st);
    return ret;
}

#endif /* NLA_NO_EVAL */

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2;
    }
    if (!strcmp(argv[1], "--version")) { printf("nla %s\n", nla_version()); return 0; }
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "forward")) return cmd_forward(argc - 2, argv + 2);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(argv[1], "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "detokenize")) return cmd_detokenize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "extract")) return cmd_extract(argc - 2, argv + 2);
    if (!strcmp(argv[1], "verbalize")) return cmd_verbalize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "reconstruct")) return cmd_reconstruct(argc - 2, argv + 2);
    if (!strcmp(argv[1], "score")) return cmd_score(argc - 2, argv + 2);
    if (!strcmp(argv[1], "explain")) return cmd_explain(argc - 2, argv + 2);
    if (!strcmp(argv[1], "steer")) return cmd_steer(argc - 2, argv + 2);
#ifndef NLA_NO_EVAL
    if (!strcmp(argv[1], "search")) return cmd_search(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 2, argv + 2);
#endif
    if (!strcmp(argv[1], "random-model")) return cmd_random_model(argc - 2, argv + 2);
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(argc - 2, argv + 2);
    return cli_error("unknown command '%s' (try nla --help)", argv[1]);
}
#endif /* NLA_MAIN */
