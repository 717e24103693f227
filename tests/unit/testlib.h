#ifndef HW_TESTS_TESTLIB_H
#define HW_TESTS_TESTLIB_H

/* A unit test binary is a list of test functions. Each prints one line that
 * tests/run.py counts: "ok NAME", "FAIL NAME: file:line: what", or "skip NAME: why".
 * CHECK stops the current test at its first failure. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tl_passed, tl_failed, tl_current_failed, tl_current_skipped;
static const char *tl_current;

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            printf("FAIL %s: %s:%d: %s: ", tl_current, __FILE__, __LINE__, #cond);    \
            printf(__VA_ARGS__);                                                      \
            printf("\n");                                                             \
            fflush(stdout);                                                           \
            tl_current_failed = 1;                                                    \
            return;                                                                   \
        }                                                                             \
    } while (0)

#define CHECK_STR(got, want)                                                          \
    do {                                                                              \
        const char *tl_got = (got);                                                   \
        CHECK(tl_got != NULL && strcmp(tl_got, (want)) == 0, "got \"%s\", want \"%s\"", \
              tl_got ? tl_got : "(null)", (want));                                    \
    } while (0)

#define CHECK_INT(got, want)                                                          \
    CHECK((long long)(got) == (long long)(want), "got %lld, want %lld",               \
          (long long)(got), (long long)(want))

#define SKIP(...)                                                                     \
    do {                                                                              \
        printf("skip %s: ", tl_current);                                              \
        printf(__VA_ARGS__);                                                          \
        printf("\n");                                                                 \
        tl_current_skipped = 1;                                                       \
        return;                                                                       \
    } while (0)

#define RUN(fn)                                                                       \
    do {                                                                              \
        tl_current = #fn;                                                             \
        tl_current_failed = tl_current_skipped = 0;                                   \
        fn();                                                                         \
        if (tl_current_failed)                                                        \
            tl_failed++;                                                              \
        else if (!tl_current_skipped) {                                               \
            tl_passed++;                                                              \
            printf("ok %s\n", #fn);                                                   \
        }                                                                             \
        fflush(stdout);                                                               \
    } while (0)

#define TEST_MAIN_END() (printf("# %d passed, %d failed\n", tl_passed, tl_failed), tl_failed ? 1 : 0)

/* Where shared/fixtures lives: $HW_FIXTURES, else ../shared/fixtures from the repo root. */
static inline const char *tl_fixtures_dir(void)
{
    const char *d = getenv("HW_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

#endif
