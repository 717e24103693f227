#include "common/sbuf.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct hw_sbuf *hw_sbuf_new(size_t len)
{
    struct hw_sbuf *b = hw_malloc(sizeof *b + len);
    atomic_init(&b->refs, 1);
    b->len = len;
    return b;
}

struct hw_sbuf *hw_sbuf_copy(const void *data, size_t len)
{
    struct hw_sbuf *b = hw_sbuf_new(len);
    if (len)
        memcpy(b->data, data, len);
    return b;
}

struct hw_sbuf *hw_sbuf_ref(struct hw_sbuf *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void hw_sbuf_unref(struct hw_sbuf *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}
