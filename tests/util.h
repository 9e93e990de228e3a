/* util.h - test-side helpers: read .npy and small text files, write
   safetensors files and model folders. Not part of the library. */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

/* Whole file into a NUL-terminated heap buffer (NULL if missing). */
static inline char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = (char *)malloc((size_t)len + 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
    fclose(f);
    if (b) b[len] = 0;
    if (n) *n = (size_t)len;
    return b;
}

/* Text handed over in pieces (nla_eval_summary's and nla_eval_compare's
   writer), gathered NUL-terminated in p (free it). */
typedef struct {
    char *p;
    size_t n;
} text_buf;

static inline void collect(void *user, const char *s, size_t n) {
    text_buf *t = (text_buf *)user;
    char *g = (char *)realloc(t->p, t->n + n + 1);
    if (!g) abort();
    t->p = g;
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

static inline int spit(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* float32 .npy (format 1.0, C order): data and up to 4 dims. */
static inline float *npy_load(const char *path, int *ndim, long long shape[4]) {
    size_t n;
    char *b = slurp(path, &n);
    if (!b || n < 10 || memcmp(b, "\x93NUMPY", 6)) { free(b); return NULL; }
    size_t hl = (size_t)(unsigned char)b[8] | (size_t)(unsigned char)b[9] << 8;
    char *sh = strstr(b + 10, "'shape': (");
    if (!sh || !strstr(b + 10, "'<f4'")) { free(b); return NULL; }
    sh += 10;
    *ndim = 0;
    while (*sh != ')' && *ndim < 4) {
        shape[(*ndim)++] = strtoll(sh, &sh, 10);
        while (*sh == ',' || *sh == ' ') sh++;
    }
    size_t count = 1;
    for (int i = 0; i < *ndim; i++) count *= (size_t)shape[i];
    float *out = (float *)malloc(count * sizeof(float));
    if (out) memcpy(out, b + 10 + hl, count * sizeof(float));
    free(b);
    return out;
}

/* The numbers of the JSON array that follows `key` in text (a tiny reader
   for the golden prompts.json / greedy.json files). Returns the count. */
static inline int json_nums_after(const char *text, const char *key, double *out, int cap) {
    const char *p = strstr(text, key);
    if (!p || !(p = strchr(p, '['))) return 0;
    int n = 0;
    p++;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
        if (*p == ']' || n == cap) break;
        char *end;
        double v = strtod(p, &end);
        if (end == p) break;
        out[n++] = v;
        p = end;
    }
    return n;
}

/* Decodes the JSON string whose opening quote is at p (escapes, \u with
   surrogate pairs) into a heap buffer; *len gets its length and *after (if
   not NULL) the position past the closing quote. */
static inline char *json_decode_string(const char *p, size_t *len, const char **after) {
    if (*p++ != '"') return NULL;
    char *out = (char *)malloc(strlen(p) + 1);
    size_t o = 0;
    for (; *p && *p != '"'; p++) {
        if (*p != '\\') { out[o++] = *p; continue; }
        char c = *++p;
        if (c == 'u') {
            unsigned cp = (unsigned)strtoul((char[]){p[1], p[2], p[3], p[4], 0}, NULL, 16);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p[1] == '\\' && p[2] == 'u') {
                unsigned lo = (unsigned)strtoul((char[]){p[3], p[4], p[5], p[6], 0}, NULL, 16);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            if (cp < 0x80) out[o++] = (char)cp;
            else if (cp < 0x800) {
                out[o++] = (char)(0xc0 | cp >> 6);
                out[o++] = (char)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                out[o++] = (char)(0xe0 | cp >> 12);
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[o++] = (char)(0x80 | (cp & 0x3f));
            } else {
                out[o++] = (char)(0xf0 | cp >> 18); out[o++] = (char)(0x80 | ((cp >> 12) & 0x3f));
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[o++] = (char)(0x80 | (cp & 0x3f));
            }
        } else {
            out[o++] = c == 'n'   ? '\n'
                       : c == 't' ? '\t'
                       : c == 'r' ? '\r'
                       : c == 'b' ? '\b'
                       : c == 'f' ? '\f'
                                  : c;
        }
    }
    out[o] = 0;
    if (len) *len = o;
    if (after) *after = *p ? p + 1 : p;
    return out;
}

/* The JSON string value that follows `"key":` in text, decoded. */
static inline char *json_string_after(const char *text, const char *key, size_t *len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(text, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    return json_decode_string(p, len, NULL);
}

/* The strings of the JSON list that follows `key` in text. Returns the count. */
static inline int json_strings_after(const char *text, const char *key, char **out, size_t *lens,
                                     int cap) {
    const char *p = strstr(text, key);
    if (!p || !(p = strchr(p, '['))) return 0;
    int n = 0;
    for (p++; n < cap;) {
        while (*p == ' ' || *p == ',' || *p == '\n') p++;
        if (*p != '"') break;
        out[n] = json_decode_string(p, &lens[n], &p);
        n++;
    }
    return n;
}

/* max |a - b| / max |b| over n values */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = a[i] > b[i] ? (double)a[i] - b[i] : (double)b[i] - a[i],
               g = b[i] < 0 ? -(double)b[i] : b[i];
        if (d > e) e = d;
        if (g > m) m = g;
    }
    return m > 0 ? e / m : e;
}

/* A safetensors writer for hand-made files: tensors laid out in order. */
typedef struct {
    const char *name, *dtype;
    int ndim;
    long long shape[4];
    const void *data;
    size_t nbytes;
} wtensor;

static inline int st_write(const char *path, const wtensor *t, int n, const char *metadata_json) {
    size_t cap = 4096 + (size_t)n * 256, len = 0, off = 0, total = 0;
    char *h = (char *)malloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{");
    if (metadata_json)
        len += (size_t)snprintf(h + len, cap - len, "\"__metadata__\":%s%s", metadata_json,
                                n ? "," : "");
    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                i ? "," : "", t[i].name, t[i].dtype);
        for (int k = 0; k < t[i].ndim; k++)
            len += (size_t)snprintf(h + len, cap - len, "%s%lld", k ? "," : "", t[i].shape[k]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", off,
                                off + t[i].nbytes);
        off += t[i].nbytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    total = 8 + len + off;
    unsigned char *buf = (unsigned char *)malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)len >> (8 * i));
    memcpy(buf + 8, h, len);
    off = 8 + len;
    for (int i = 0; i < n; i++) { memcpy(buf + off, t[i].data, t[i].nbytes); off += t[i].nbytes; }
    int rc = spit(path, buf, total);
    free(h);
    free(buf);
    return rc;
}

/* Opens path (created if missing) and takes this process's classic fcntl
   write lock on it, as another writer would hold it: the descriptor, or -1. */
static inline int hold_lock(const char *path) {
    struct flock fl;
    int fd = open(path, O_RDWR | O_CREAT, 0666);
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fd >= 0 && fcntl(fd, F_SETLK, &fl)) { close(fd); fd = -1; }
    return fd;
}

/* A fresh empty folder under tests/tmp/. */
/* Removes the files of folder dir (not its subfolders), so that a model can be saved there. */
static inline void empty_dir(const char *dir) {
    DIR *d = opendir(dir);
    char p[1024];
    for (struct dirent *en; d && (en = readdir(d)) != NULL;) {
        snprintf(p, sizeof p, "%s/%s", dir, en->d_name);
        struct stat st;
        if (!stat(p, &st) && !S_ISDIR(st.st_mode)) unlink(p);
    }
    if (d) closedir(d);
}

static inline void tmp_dir(char *out, size_t cap, const char *name) {
    mkdir("tests/tmp", 0755);
    snprintf(out, cap, "tests/tmp/%s", name);
    mkdir(out, 0755);
}

static inline int copy_file(const char *from, const char *to) {
    size_t n;
    char *b = slurp(from, &n);
    int rc = b ? spit(to, b, n) : -1;
    free(b);
    return rc;
}
/* Does file a hold exactly the bytes of file b (both readable)? */
static inline int same_bytes(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* Files names[0..n) of folder a equal b's, byte for byte; each one that
   differs is named on stderr. */
static inline int same_files(const char *a, const char *b, const char *const *names, int n) {
    int same = 1;
    for (int i = 0; i < n; i++) {
        char pa[512], pb[512];
        snprintf(pa, sizeof pa, "%s/%s", a, names[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, names[i]);
        if (!same_bytes(pa, pb)) {
            fprintf(stderr, "  %s differs from %s\n", pa, pb);
            same = 0;
        }
    }
    return same;
}

/* The digits at *p, *p moved past them: how many. */
static inline int json_digits(const char **p) {
    const char *s = *p;
    while (*s >= '0' && *s <= '9') s++;
    const int n = (int)(s - *p);
    *p = s;
    return n;
}

/* A JSON value at *p (RFC 8259: objects, arrays, strings, numbers, true,
   false, null; nothing else, so no NaN or Infinity), *p moved past it and
   the white space after; 0 if there is none. depth: nesting so far. */
static inline int json_value_at(const char **p, int depth) {
    const char *s = *p;
    int ok = 1;
    if (depth > 64) return 0;
    if (*s == '{' || *s == '[') {
        const char close = *s == '{' ? '}' : ']';
        for (s++; *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t';) s++;
        for (int first = 1; ok && *s != close; first = 0) {
            if (!first && *s++ != ',') return 0;
            for (; *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t';) s++;
            if (close == '}') {
                ok = *s == '"' && json_value_at(&s, depth + 1) && *s++ == ':';
                for (; *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t';) s++;
            }
            ok = ok && json_value_at(&s, depth + 1);
        }
        if (!ok) return 0;
        s++;
    } else if (*s == '"') {
        for (s++; *s != '"'; s++) {
            if ((unsigned char)*s < 0x20) return 0;
            if (*s == '\\') { /* an escape: \u takes 4 hex digits */
                if (!*++s || !strchr("\"\\/bfnrtu", *s)) return 0;
                for (int k = 1; *s == 'u' && k <= 4; k++)
                    if (!s[k] || !strchr("0123456789abcdefABCDEF", s[k])) return 0;
            }
        }
        s++;
    } else if (!strncmp(s, "true", 4) || !strncmp(s, "null", 4)) {
        s += 4;
    } else if (!strncmp(s, "false", 5)) {
        s += 5;
    } else {
        if (*s == '-') s++;
        if (*s == '0' && s[1] >= '0' && s[1] <= '9') return 0;
        ok = json_digits(&s);
        if (*s == '.') {
            s++;
            ok = ok && json_digits(&s);
        }
        if (*s == 'e' || *s == 'E') {
            if (*++s == '+' || *s == '-') s++;
            ok = ok && json_digits(&s);
        }
        if (!ok) return 0;
    }
    for (; *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t';) s++;
    *p = s;
    return 1;
}

/* 1 if text is exactly one JSON value (with white space around it). */
static inline int json_whole(const char *text) {
    if (!text) return 0;
    for (; *text == ' ' || *text == '\n' || *text == '\r' || *text == '\t';) text++;
    return json_value_at(&text, 0) && !*text;
}

/* Line k (0-based) of text, as a heap copy; NULL past the end. */
static inline char *line_of(const char *text, int k) {
    for (; text && k > 0; k--) text = (text = strchr(text, '\n')) ? text + 1 : NULL;
    if (!text || !*text) return NULL;
    const char *nl = strchr(text, '\n');
    size_t n = nl ? (size_t)(nl - text) : strlen(text);
    char *out = (char *)malloc(n + 1);
    if (out) {
        memcpy(out, text, n);
        out[n] = 0;
    }
    return out;
}

#endif
