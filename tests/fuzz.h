/* fuzz.h - helpers shared by the libFuzzer targets tests/fuzz_*.c: a private
   scratch folder /tmp/nlafz_<name>_<pid> (removed at exit), file writing and
   symlinking, and checks that a harness found a bug (FZ_CHECK aborts, which
   libFuzzer reports as a crash). Built by `make fuzz`; see the Makefile. */
#ifndef FUZZ_H
#define FUZZ_H
#define _XOPEN_SOURCE 700 /* realpath, symlink */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../nla.h"

/* The repository root (the Makefile passes its own folder). */
#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CHECK(cond)                                                                 \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

static char fz_dir[64];

static inline void fz_cleanup(void) {
    DIR *d = opendir(fz_dir);
    struct dirent *ent;
    char p[512];
    while (d && (ent = readdir(d)))
        if (strcmp(ent->d_name, ".") && strcmp(ent->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", fz_dir, ent->d_name);
            unlink(p);
        }
    if (d) closedir(d);
    rmdir(fz_dir);
}

/* The scratch folder of this process, made on first use. */
static inline const char *fz_tmpdir(const char *name) {
    if (!fz_dir[0]) {
        snprintf(fz_dir, sizeof fz_dir, "/tmp/nlafz_%s_%d", name, (int)getpid());
        FZ_CHECK(mkdir(fz_dir, 0700) == 0);
        atexit(fz_cleanup);
    }
    return fz_dir;
}

/* fz_dir/file in a static buffer per slot (0..3). */
static inline const char *fz_path(int slot, const char *file) {
    static char buf[4][512];
    snprintf(buf[slot], sizeof buf[slot], "%s/%s", fz_dir, file);
    return buf[slot];
}

static inline void fz_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    FZ_CHECK(f && fwrite(data, 1, n, f) == n);
    FZ_CHECK(fclose(f) == 0);
}

/* fz_dir/file -> FUZZ_ROOT/src (a symlink: the fixtures are never copied). */
static inline void fz_link(const char *src, const char *file) {
    char from[1024], abs[4096];
    snprintf(from, sizeof from, "%s/%s", FUZZ_ROOT, src);
    FZ_CHECK(realpath(from, abs) != NULL);
    FZ_CHECK(symlink(abs, fz_path(3, file)) == 0);
}

/* The input as an exact-size heap copy without a NUL, so that ASan catches a
   read one past the end (libFuzzer's own buffer may have slack). */
static inline char *fz_copy(const uint8_t *data, size_t size) {
    char *p = (char *)malloc(size ? size : 1);
    FZ_CHECK(p);
    if (size) memcpy(p, data, size);
    return p;
}

/* Splits the input at the first `sep`: *n1 bytes before it, *rest after it
   (NULL when absent). Lets one input carry two files. */
static inline void fz_split(const uint8_t *data, size_t size, const char *sep, size_t *n1,
                            const uint8_t **rest, size_t *n2) {
    size_t ls = strlen(sep);
    *n1 = size; *rest = NULL; *n2 = 0;
    for (size_t i = 0; i + ls <= size; i++)
        if (!memcmp(data + i, sep, ls)) {
            *n1 = i;
            *rest = data + i + ls;
            *n2 = size - i - ls;
            return;
        }
}

/* Reads every byte of every tensor and checks the lookups agree. */
static volatile uint64_t fz_sink;
static inline void fz_walk_st(const nla_st *st) {
    uint64_t sum = 0;
    for (int i = 0, n = nla_st_count(st); i < n; i++) {
        nla_tensor t;
        FZ_CHECK(nla_st_get(st, i, &t) == NLA_OK);
        FZ_CHECK(t.ndim >= 0 && t.ndim <= 8 && t.name && t.dtype && t.file);
        for (uint64_t k = 0; k < t.nbytes; k++) sum += ((const unsigned char *)t.data)[k];
        sum += strlen(t.name) + strlen(t.dtype) + strlen(t.file);
        FZ_CHECK(nla_st_find(st, t.name) == i); /* names unique, in order */
    }
    const char *fmt = nla_st_metadata(st, "format");
    fz_sink += sum + (fmt ? strlen(fmt) : 0);
}
#endif
