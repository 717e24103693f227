/* What hwctl prints: aligned tables, JSON (jansson) and YAML (libyaml's emitter). */
#include "api/hwctl.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "common/util.h"

struct hwctl_table {
    size_t n_cols, n_rows, cap_rows;
    char **headers;
    char **cells;                      /* row-major, n_rows * n_cols */
};

struct hwctl_table *hwctl_table_new(size_t n_cols, const char *const *headers)
{
    struct hwctl_table *t = hw_calloc(1, sizeof(*t));
    t->n_cols = n_cols;
    t->headers = hw_calloc(n_cols, sizeof(char *));
    for (size_t i = 0; i < n_cols; i++)
        t->headers[i] = hw_strdup(headers[i]);
    return t;
}

void hwctl_table_add(struct hwctl_table *t, const char *const *cells)
{
    if (t->n_rows == t->cap_rows) {
        t->cap_rows = t->cap_rows ? t->cap_rows * 2 : 16;
        char **p = realloc(t->cells, t->cap_rows * t->n_cols * sizeof(char *));
        if (!p)
            abort();
        t->cells = p;
    }
    for (size_t i = 0; i < t->n_cols; i++)
        t->cells[t->n_rows * t->n_cols + i] = hw_strdup(cells[i] ? cells[i] : "");
    t->n_rows++;
}

/* Columns on a terminal: UTF-8 code points (hostnames may be non-ASCII). */
static size_t display_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

static void print_row(FILE *out, char *const *cells, const size_t *widths, size_t n)
{
    char *line = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&line, &len);
    if (!m)
        abort();
    for (size_t i = 0; i < n; i++) {
        fputs(cells[i], m);
        if (i + 1 < n) {
            for (size_t w = display_width(cells[i]); w < widths[i]; w++)
                fputc(' ', m);
            fputs(" | ", m);
        }
    }
    if (fclose(m) != 0)
        abort();
    while (len > 0 && line[len - 1] == ' ')   /* an empty last cell leaves no blanks */
        line[--len] = '\0';
    fprintf(out, "%s\n", line);
    free(line);
}

void hwctl_table_print(const struct hwctl_table *t, FILE *out)
{
    size_t *widths = hw_calloc(t->n_cols, sizeof(size_t));
    for (size_t c = 0; c < t->n_cols; c++) {
        widths[c] = display_width(t->headers[c]);
        for (size_t r = 0; r < t->n_rows; r++) {
            size_t w = display_width(t->cells[r * t->n_cols + c]);
            if (w > widths[c])
                widths[c] = w;
        }
    }
    print_row(out, t->headers, widths, t->n_cols);
    for (size_t r = 0; r < t->n_rows; r++)
        print_row(out, t->cells + r * t->n_cols, widths, t->n_cols);
    free(widths);
}

void hwctl_table_free(struct hwctl_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_cols; i++)
        free(t->headers[i]);
    for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
        free(t->cells[i]);
    free(t->headers);
    free(t->cells);
    free(t);
}

/* ---- YAML ---- */

/* A string that a YAML reader would take for something else (a number, a bool, null,
 * a date) or that is empty is quoted; everything else is written plain when libyaml
 * allows it. Starting with a digit or sign covers numbers, dates and IP addresses. */
static bool needs_quotes(const char *s)
{
    static const char *const words[] = {
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
        ".inf", "-.inf", "+.inf", ".nan",
    };
    if (!*s)
        return true;
    if (isdigit((unsigned char)s[0]) || s[0] == '-' || s[0] == '+' || s[0] == '.')
        return true;
    for (size_t i = 0; i < HW_ARRAY_LEN(words); i++)
        if (strcasecmp(s, words[i]) == 0)
            return true;
    return false;
}

static int emit(yaml_emitter_t *em, yaml_event_t *ev)
{
    return yaml_emitter_emit(em, ev) ? 0 : -1;
}

static int emit_scalar(yaml_emitter_t *em, const char *text, bool is_string)
{
    yaml_event_t ev;
    yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;
    if (is_string && needs_quotes(text))
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)text, (int)strlen(text),
                                      1, 1, style))
        return -1;
    return emit(em, &ev);
}

static int emit_value(yaml_emitter_t *em, json_t *v)
{
    yaml_event_t ev;
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *item;
        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_ANY_MAPPING_STYLE) ||
            emit(em, &ev) < 0)
            return -1;
        json_object_foreach(v, k, item) {
            if (emit_scalar(em, k, true) < 0 || emit_value(em, item) < 0)
                return -1;
        }
        if (!yaml_mapping_end_event_initialize(&ev))
            return -1;
        return emit(em, &ev);
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *item;
        if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                                  YAML_ANY_SEQUENCE_STYLE) ||
            emit(em, &ev) < 0)
            return -1;
        json_array_foreach(v, i, item) {
            if (emit_value(em, item) < 0)
                return -1;
        }
        if (!yaml_sequence_end_event_initialize(&ev))
            return -1;
        return emit(em, &ev);
    }
    case JSON_STRING:
        return emit_scalar(em, json_string_value(v), true);
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return emit_scalar(em, num, false);
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        return emit_scalar(em, num, false);
    case JSON_TRUE:
        return emit_scalar(em, "true", false);
    case JSON_FALSE:
        return emit_scalar(em, "false", false);
    case JSON_NULL:
        return emit_scalar(em, "null", false);
    }
    return -1;
}

static int print_yaml(json_t *v, FILE *out)
{
    yaml_emitter_t em;
    yaml_event_t ev;
    int rc = -1;
    if (!yaml_emitter_initialize(&em))
        return -1;
    yaml_emitter_set_output_file(&em, out);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    yaml_emitter_set_indent(&em, 2);
    if (!yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) || emit(&em, &ev) < 0)
        goto out;
    if (!yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) || emit(&em, &ev) < 0)
        goto out;
    if (emit_value(&em, v) < 0)
        goto out;
    if (!yaml_document_end_event_initialize(&ev, 1) || emit(&em, &ev) < 0)
        goto out;
    if (!yaml_stream_end_event_initialize(&ev) || emit(&em, &ev) < 0)
        goto out;
    if (!yaml_emitter_flush(&em))
        goto out;
    rc = 0;
out:
    if (rc < 0)
        hwctl_err("cannot write YAML: %s", em.problem ? em.problem : "emitter failed");
    yaml_emitter_delete(&em);
    return rc;
}

int hwctl_print_value(const struct hwctl_ctx *ctx, json_t *v)
{
    if (ctx->output == HWCTL_OUT_YAML)
        return print_yaml(v, stdout);
    size_t flags = JSON_ENCODE_ANY | JSON_PRESERVE_ORDER;
    flags |= ctx->output == HWCTL_OUT_JSON_LINE ? JSON_COMPACT : JSON_INDENT(2);
    if (json_dumpf(v, stdout, flags) < 0) {
        hwctl_err("cannot write JSON to stdout");
        return -1;
    }
    fputc('\n', stdout);
    return 0;
}

/* ---- field readers ---- */

const char *hwctl_jstr(json_t *obj, const char *field)
{
    const char *s = json_string_value(json_object_get(obj, field));
    return s ? s : "";
}

long long hwctl_jint(json_t *obj, const char *field)
{
    return (long long)json_integer_value(json_object_get(obj, field));
}

bool hwctl_jbool(json_t *obj, const char *field)
{
    return json_is_true(json_object_get(obj, field));
}

void hwctl_jtime(json_t *obj, const char *field, char *out, size_t out_len)
{
    const char *s = json_string_value(json_object_get(obj, field));
    if (!s || !*s) {
        snprintf(out, out_len, "-");
        return;
    }
    /* "2026-11-25T19:45:00Z" -> "2026-11-25 19:45:00", the table form Headscale prints. */
    snprintf(out, out_len, "%s", s);
    char *t = strchr(out, 'T');
    if (t && t - out == 10)
        *t = ' ';
    size_t n = strlen(out);
    if (n > 0 && (out[n - 1] == 'Z' || out[n - 1] == 'z'))
        out[n - 1] = '\0';
}

char *hwctl_jjoin(json_t *obj, const char *field, const char *sep)
{
    json_t *arr = json_object_get(obj, field);
    size_t i, len = 1, seplen = strlen(sep);
    json_t *item;
    json_array_foreach(arr, i, item) {
        if (json_is_string(item))
            len += json_string_length(item) + seplen;
    }
    char *out = hw_malloc(len);
    out[0] = '\0';
    size_t used = 0;
    json_array_foreach(arr, i, item) {
        if (!json_is_string(item))
            continue;
        if (used) {
            memcpy(out + used, sep, seplen);
            used += seplen;
        }
        memcpy(out + used, json_string_value(item), json_string_length(item));
        used += json_string_length(item);
        out[used] = '\0';
    }
    return out;
}

/* ---- command endings ---- */

int hwctl_done(const struct hwctl_ctx *ctx, json_t *answer, const char *fmt, ...)
{
    int rc = HWCTL_OK;
    if (ctx->output != HWCTL_OUT_TABLE) {
        if (hwctl_print_value(ctx, answer) < 0)
            rc = HWCTL_FAIL;
    } else {
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
    }
    json_decref(answer);
    return rc;
}

json_t *hwctl_list(json_t *answer, const char *field)
{
    json_t *arr = json_object_get(answer, field);
    if (!json_is_array(arr)) {
        hwctl_err("headwater's answer has no \"%s\" list: is hwctl the same version as the "
                  "server?", field);
        return NULL;
    }
    return arr;
}

int hwctl_show_list(const struct hwctl_ctx *ctx, json_t *answer, const char *field,
                    size_t n_cols, const char *const *headers,
                    void (*row)(json_t *item, char **cells))
{
    json_t *arr = hwctl_list(answer, field);
    int rc = HWCTL_OK;
    if (!arr) {
        rc = HWCTL_FAIL;
    } else if (ctx->output != HWCTL_OUT_TABLE) {
        if (hwctl_print_value(ctx, arr) < 0)
            rc = HWCTL_FAIL;
    } else {
        struct hwctl_table *t = hwctl_table_new(n_cols, headers);
        char **cells = hw_calloc(n_cols, sizeof(char *));
        size_t i;
        json_t *item;
        json_array_foreach(arr, i, item) {
            row(item, cells);
            hwctl_table_add(t, (const char *const *)cells);
            for (size_t c = 0; c < n_cols; c++) {
                free(cells[c]);
                cells[c] = NULL;
            }
        }
        free(cells);
        hwctl_table_print(t, stdout);
        hwctl_table_free(t);
    }
    json_decref(answer);
    return rc;
}
