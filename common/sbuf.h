#ifndef HW_COMMON_SBUF_H
#define HW_COMMON_SBUF_H

/* An immutable, reference-counted byte buffer. One encoded map message (or keep-alive)
 * is built once and queued on every session that must receive it. */

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct hw_sbuf {
    atomic_int refs;
    size_t len;
    uint8_t data[];
};

struct hw_sbuf *hw_sbuf_new(size_t len);                 /* refs = 1, data uninitialised */
struct hw_sbuf *hw_sbuf_copy(const void *data, size_t len);
struct hw_sbuf *hw_sbuf_ref(struct hw_sbuf *b);
void hw_sbuf_unref(struct hw_sbuf *b);

#endif
