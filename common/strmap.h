#ifndef HW_COMMON_STRMAP_H
#define HW_COMMON_STRMAP_H

/* String -> pointer hash map (open addressing, linear probing). Keys are copied.
 * Used for the server's in-memory indexes (node key, machine key, registration id). */

#include <stdbool.h>
#include <stddef.h>

struct hw_strmap_slot {
    char *key;          /* NULL = empty; HW_STRMAP_TOMBSTONE = deleted */
    void *value;
};

struct hw_strmap {
    struct hw_strmap_slot *slots;
    size_t cap;         /* power of two */
    size_t used;        /* live + tombstones */
    size_t live;
};

void hw_strmap_init(struct hw_strmap *m);
void hw_strmap_free(struct hw_strmap *m);
void *hw_strmap_get(const struct hw_strmap *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *hw_strmap_put(struct hw_strmap *m, const char *key, void *value);
/* Returns the removed value or NULL. */
void *hw_strmap_del(struct hw_strmap *m, const char *key);
size_t hw_strmap_len(const struct hw_strmap *m);

#endif
