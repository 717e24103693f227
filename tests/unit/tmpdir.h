#ifndef HW_TESTS_TMPDIR_H
#define HW_TESTS_TMPDIR_H

/* A fresh directory per test under $TMPDIR (or /tmp), removed with everything in it. */

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tmpdir {
    char path[256];
};

static inline int tmpdir_make(struct tmpdir *t, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(t->path, sizeof t->path, "%s/hw-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    return mkdtemp(t->path) ? 0 : -1;
}

/* dir/name into out. */
static inline const char *tmpdir_file(const struct tmpdir *t, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", t->path, name);
    return out;
}

static inline int tmpdir_unlink_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void tmpdir_remove(struct tmpdir *t)
{
    if (t->path[0])
        nftw(t->path, tmpdir_unlink_one, 16, FTW_DEPTH | FTW_PHYS);
    t->path[0] = '\0';
}

#endif
