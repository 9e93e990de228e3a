/* test.h - the whole test framework: CHECK macros, a pass/fail tally, and
   the closing line "N passed, N failed" (", K skipped" added when a check
   could not run here, counted by SKIP). Include once per test program. */
#ifndef TEST_H
#define TEST_H
#undef NDEBUG
#include <math.h>
#include <stdio.h>

static int test_passed, test_failed, test_skipped;

/* A check that cannot run on this machine: said, and counted apart. */
#define SKIP(why)                                  \
    do {                                           \
        test_skipped++;                            \
        printf("skipped: %s\n", why);              \
    } while (0)

#define CHECK(cond) CHECK_MSG(cond, "%s", #cond)
#define CHECK_MSG(cond, ...)                                          \
    do {                                                              \
        if (cond) test_passed++;                                      \
        else {                                                        \
            test_failed++;                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
        }                                                             \
    } while (0)
/* a and b (integers, enums) are evaluated once, also when the check fails;
   a floating-point one does not compile (CHECK_NEAR compares those) */
#define CHECK_INT(a) \
    _Generic((a), float: (void)0, double: (void)0, long double: (void)0, default: (a))
#define CHECK_EQ(a, b)                                                                       \
    do {                                                                                     \
        const long long check_a_ = (long long)CHECK_INT(a), check_b_ = (long long)CHECK_INT(b); \
        CHECK_MSG(check_a_ == check_b_, "%s == %s (%lld vs %lld)", #a, #b, check_a_,         \
                  check_b_);                                                                 \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                                      \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%s ~ %s (%g vs %g, tol %g)", #a, #b,      \
              (double)(a), (double)(b), (double)(tol))

static int test_report(void) {
    if (test_skipped)
        printf("%d passed, %d failed, %d skipped\n", test_passed, test_failed, test_skipped);
    else printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed != 0;
}
#endif
