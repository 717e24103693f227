#include "common/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static char tombstone_marker;
#define TOMBSTONE (&tombstone_marker)

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h;
}

void hw_strmap_init(struct hw_strmap *m) { memset(m, 0, sizeof *m); }

void hw_strmap_free(struct hw_strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != TOMBSTONE)
            free(m->slots[i].key);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static struct hw_strmap_slot *find(const struct hw_strmap *m, const char *key)
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = hash_str(key) & mask;; i = (i + 1) & mask) {
        struct hw_strmap_slot *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMBSTONE && strcmp(s->key, key) == 0)
            return s;
    }
}

void *hw_strmap_get(const struct hw_strmap *m, const char *key)
{
    struct hw_strmap_slot *s = find(m, key);
    return s ? s->value : NULL;
}

static void grow(struct hw_strmap *m)
{
    size_t old_cap = m->cap;
    struct hw_strmap_slot *old = m->slots;
    /* Rehash into a table sized for the live entries, dropping tombstones. */
    size_t cap = 16;
    while (cap < (m->live + 1) * 2)
        cap *= 2;
    m->slots = hw_calloc(cap, sizeof *m->slots);
    m->cap = cap;
    m->used = m->live = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].key || old[i].key == TOMBSTONE)
            continue;
        size_t mask = cap - 1;
        size_t j = hash_str(old[i].key) & mask;
        while (m->slots[j].key)
            j = (j + 1) & mask;
        m->slots[j] = old[i];
        m->used++;
        m->live++;
    }
    free(old);
}

void *hw_strmap_put(struct hw_strmap *m, const char *key, void *value)
{
    struct hw_strmap_slot *s = find(m, key);
    if (s) {
        void *prev = s->value;
        s->value = value;
        return prev;
    }
    if ((m->used + 1) * 4 > m->cap * 3)
        grow(m);
    size_t mask = m->cap - 1;
    size_t i = hash_str(key) & mask;
    while (m->slots[i].key && m->slots[i].key != TOMBSTONE)
        i = (i + 1) & mask;
    if (!m->slots[i].key)
        m->used++;
    m->slots[i].key = hw_strdup(key);
    m->slots[i].value = value;
    m->live++;
    return NULL;
}

void *hw_strmap_del(struct hw_strmap *m, const char *key)
{
    struct hw_strmap_slot *s = find(m, key);
    if (!s)
        return NULL;
    void *prev = s->value;
    free(s->key);
    s->key = TOMBSTONE;
    s->value = NULL;
    m->live--;
    return prev;
}

size_t hw_strmap_len(const struct hw_strmap *m) { return m->live; }
