#include "server/hujson.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/strmap.h"
#include "common/util.h"

/* Paths longer than this, values nested deeper than INDEX_DEPTH and values past the
 * first INDEX_MAX are not indexed: errors there report the line of the nearest indexed
 * ancestor, still the right neighbourhood, and a 1 MiB file of tiny values cannot make
 * the index cost tens of megabytes. Policy errors are at most 5 levels deep. */
#define PATH_INDEX_MAX 1024
#define INDEX_DEPTH 8
#define INDEX_MAX 65536

struct hw_hujson_pos {
    struct hw_strmap lines;   /* path -> (void *)(intptr_t)line */
};

static bool ident_key(const char *key)
{
    if (!*key)
        return false;
    for (const char *p = key; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

char *hw_hujson_path_key(char *out, size_t out_len, const char *parent, const char *key)
{
    size_t n = (size_t)snprintf(out, out_len, "%s", parent);
    if (n >= out_len)
        return out;
    if (ident_key(key)) {
        snprintf(out + n, out_len - n, "%s%s", *parent ? "." : "", key);
        return out;
    }
    /* The key as a JSON string, so a reader can copy it back into the file. */
    char *w = out + n, *end = out + out_len - 1;
    const char *open = "[\"";
    while (*open && w < end)
        *w++ = *open++;
    for (const unsigned char *k = (const unsigned char *)key; *k && w < end; k++) {
        if (*k == '"' || *k == '\\') {
            if (w + 2 > end)
                break;
            *w++ = '\\';
            *w++ = (char)*k;
        } else if (*k < 0x20) {
            if (w + 6 > end)
                break;
            w += snprintf(w, (size_t)(end - w) + 1, "\\u%04x", *k);
        } else {
            *w++ = (char)*k;
        }
    }
    const char *close = "\"]";
    while (*close && w < end)
        *w++ = *close++;
    *w = '\0';
    return out;
}

char *hw_hujson_path_index(char *out, size_t out_len, const char *parent, size_t index)
{
    snprintf(out, out_len, "%s[%zu]", parent, index);
    return out;
}

/* ---- pass 1: comments and trailing commas become spaces ---- */

static int strip(char *t, size_t len, char *err, size_t err_len)
{
    int line = 1;
    size_t pending_comma = SIZE_MAX;
    char last_sig = 0;        /* last significant character outside strings and comments */
    char before_comma = 0;    /* ... as it was when the pending comma was seen */
    if (len >= 3 && (unsigned char)t[0] == 0xef && (unsigned char)t[1] == 0xbb && (unsigned char)t[2] == 0xbf)
        memset(t, ' ', 3);
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (c == '\n') {
            line++;
            continue;
        }
        if (c == '"') {
            pending_comma = SIZE_MAX;
            last_sig = '"';
            for (i++; i < len; i++) {
                if (t[i] == '\\' && i + 1 < len && t[i + 1] != '\n') {
                    i++;
                } else if (t[i] == '"') {
                    break;
                } else if (t[i] == '\n') {
                    /* A raw newline ends no JSON string; jansson reports it on this line.
                     * Leaving string mode keeps the rest of the file in step. */
                    line++;
                    break;
                }
            }
            continue;
        }
        if (c == '/' && i + 1 < len && t[i + 1] == '/') {
            while (i < len && t[i] != '\n')
                t[i++] = ' ';
            i--;
            continue;
        }
        if (c == '/' && i + 1 < len && t[i + 1] == '*') {
            int start = line;
            t[i] = t[i + 1] = ' ';
            for (i += 2;; i++) {
                if (i + 1 >= len) {
                    snprintf(err, err_len, "%d: unterminated /* comment", start);
                    return -1;
                }
                if (t[i] == '*' && t[i + 1] == '/') {
                    t[i] = t[i + 1] = ' ';
                    i++;
                    break;
                }
                if (t[i] == '\n')
                    line++;
                else
                    t[i] = ' ';
            }
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r')
            continue;
        if (c == ',') {
            pending_comma = i;
            before_comma = last_sig;
        } else if ((c == '}' || c == ']') && pending_comma != SIZE_MAX && before_comma != '[' &&
                   before_comma != '{' && before_comma != ',') {
            /* Only a comma that follows a value is "trailing"; "[,]" stays an error. */
            t[pending_comma] = ' ';
            pending_comma = SIZE_MAX;
        } else {
            pending_comma = SIZE_MAX;
        }
        last_sig = c;
    }
    return 0;
}

/* ---- pass 2: where each value starts ---- */

struct frame {
    bool is_object;
    bool expect_key;
    size_t index;
    size_t base_len;      /* length of this container's own path */
    char *key;            /* the member being read (objects) */
};

struct pathbuf {
    char *p;
    size_t len, cap;
};

static void pb_truncate(struct pathbuf *b, size_t len)
{
    b->len = len;
    if (b->p)
        b->p[len] = '\0';
}

static void pb_set(struct pathbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < n + 1)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown)
            abort();
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p, s, n + 1);
    b->len = n;
}

static char *decode_key(const char *start, size_t n)
{
    if (!memchr(start, '\\', n)) {
        char *k = hw_malloc(n + 1);
        memcpy(k, start, n);
        k[n] = '\0';
        return k;
    }
    /* Escapes are jansson's business: decode the quoted token with it. */
    json_t *s = json_loadb(start - 1, n + 2, JSON_DECODE_ANY, NULL);
    char *k = json_is_string(s) ? hw_strdup(json_string_value(s)) : NULL;
    json_decref(s);
    if (!k) {
        k = hw_malloc(n + 1);
        memcpy(k, start, n);
        k[n] = '\0';
    }
    return k;
}

static int index_values(const char *t, size_t len, int max_depth, struct hw_hujson_pos *pos, char *err,
                        size_t err_len)
{
    struct frame *stack = hw_calloc((size_t)max_depth + 1, sizeof *stack);
    int depth = 0;
    int line = 1;
    int rc = 0;
    struct pathbuf path = {0};
    pb_set(&path, "");
    char comp[PATH_INDEX_MAX + 64];
    bool root_seen = false;

    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (c == '\n') {
            line++;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r')
            continue;
        struct frame *f = depth ? &stack[depth - 1] : NULL;
        if (c == '}' || c == ']') {
            if (!f)
                break;   /* unbalanced: jansson will say where */
            free(f->key);
            f->key = NULL;
            depth--;
            pb_truncate(&path, depth ? stack[depth - 1].base_len : 0);
            continue;
        }
        if (c == ',') {
            if (f && f->is_object)
                f->expect_key = true;
            else if (f)
                f->index++;
            continue;
        }
        if (c == ':') {
            if (f)
                f->expect_key = false;
            continue;
        }
        if (c == '"' && f && f->is_object && f->expect_key) {
            size_t s = ++i;
            while (i < len && t[i] != '"' && t[i] != '\n')
                i += (t[i] == '\\' && i + 1 < len) ? 2 : 1;
            if (i >= len || t[i] != '"')
                break;
            free(f->key);
            f->key = decode_key(t + s, i - s);
            continue;
        }
        /* A value starts here: name it, note its line. */
        const char *parent = f ? path.p : "";
        if (!f) {
            if (root_seen)
                break;
            root_seen = true;
            comp[0] = '\0';
        } else if (f->is_object) {
            hw_hujson_path_key(comp, sizeof comp, parent, f->key ? f->key : "");
        } else {
            hw_hujson_path_index(comp, sizeof comp, parent, f->index);
        }
        if (depth <= INDEX_DEPTH && hw_strmap_len(&pos->lines) < INDEX_MAX && strlen(comp) <= PATH_INDEX_MAX &&
            !hw_strmap_get(&pos->lines, comp))
            hw_strmap_put(&pos->lines, comp, (void *)(intptr_t)line);
        if (c == '{' || c == '[') {
            if (depth >= max_depth) {
                snprintf(err, err_len, "%d: nested deeper than %d levels", line, max_depth);
                rc = -1;
                break;
            }
            pb_set(&path, comp);
            stack[depth++] = (struct frame){.is_object = c == '{', .expect_key = c == '{',
                                            .base_len = path.len};
            continue;
        }
        if (c == '"') {
            for (i++; i < len && t[i] != '"' && t[i] != '\n'; i++)
                if (t[i] == '\\' && i + 1 < len)
                    i++;
            if (i < len && t[i] == '\n')
                line++;
            continue;
        }
        /* number, true, false, null (or garbage jansson will name) */
        while (i + 1 < len && !strchr(",:{}[]\" \t\r\n", t[i + 1]))
            i++;
    }
    for (int d = 0; d < depth; d++)
        free(stack[d].key);
    free(stack);
    free(path.p);
    return rc;
}

json_t *hw_hujson_load(const char *text, size_t len, size_t max_len, int max_depth,
                       struct hw_hujson_pos **pos_out, char *err, size_t err_len)
{
    *pos_out = NULL;
    if (len > max_len) {
        snprintf(err, err_len, "1: %zu bytes; the limit is %zu", len, max_len);
        return NULL;
    }
    char *t = hw_malloc(len + 1);
    memcpy(t, text, len);
    t[len] = '\0';
    struct hw_hujson_pos *pos = hw_calloc(1, sizeof *pos);
    hw_strmap_init(&pos->lines);
    if (strip(t, len, err, err_len) < 0 || index_values(t, len, max_depth, pos, err, err_len) < 0) {
        free(t);
        hw_hujson_pos_free(pos);
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(t, len, JSON_REJECT_DUPLICATES, &jerr);
    free(t);
    if (!root) {
        snprintf(err, err_len, "%d: %s", jerr.line > 0 ? jerr.line : 1, jerr.text);
        hw_hujson_pos_free(pos);
        return NULL;
    }
    *pos_out = pos;
    return root;
}

int hw_hujson_line(const struct hw_hujson_pos *pos, const char *path)
{
    if (!pos || !path)
        return 0;
    char buf[PATH_INDEX_MAX + 64];
    snprintf(buf, sizeof buf, "%s", path);
    for (;;) {
        void *v = hw_strmap_get(&pos->lines, buf);
        if (v)
            return (int)(intptr_t)v;
        if (!buf[0])
            return 0;
        /* Drop the last component: "[n]", "[\"key\"]" or ".key". */
        size_t n = strlen(buf);
        char *cut = NULL;
        if (buf[n - 1] == ']') {
            /* find the matching '[' outside a quoted key */
            bool quoted = n >= 2 && buf[n - 2] == '"';
            for (size_t k = n - 1; k-- > 0;) {
                if (buf[k] == '[' && (!quoted || (buf[k + 1] == '"' && (k == 0 || buf[k - 1] != '\\')))) {
                    cut = buf + k;
                    break;
                }
            }
        } else {
            cut = strrchr(buf, '.');
            if (!cut)
                cut = buf;
        }
        if (!cut)
            return 0;
        *cut = '\0';
    }
}

void hw_hujson_pos_free(struct hw_hujson_pos *pos)
{
    if (!pos)
        return;
    hw_strmap_free(&pos->lines);
    free(pos);
}
