/* failalloc.h - the allocator and the sync that tests/test_alloc.c gives nla.c: the
   Makefile compiles nla.c with -include tests/failalloc.h into
   tests/nla_failalloc.o. The functions live in test_alloc.c; they count
   allocations, fail the k-th, and count blocks still live; and count the
   syncs to the disk (folders apart) and fail the k-th. */
#ifndef FAILALLOC_H
#define FAILALLOC_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" { /* make cxx compiles nla.c as C++ against the C test */
#endif
void *fa_malloc(size_t n);
void *fa_calloc(size_t n, size_t size);
void *fa_realloc(void *p, size_t n);
void fa_free(void *p);
int fa_fsync(int fd);
#ifdef __cplusplus
}
#endif
#define NLA_MALLOC(n) fa_malloc(n)
#define NLA_CALLOC(n, size) fa_calloc(n, size)
#define NLA_REALLOC(p, n) fa_realloc(p, n)
#define NLA_FREE(p) fa_free(p)
#define NLA_FSYNC(fd) fa_fsync(fd)
#endif
