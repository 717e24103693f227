#ifndef HW_SERVER_HUJSON_H
#define HW_SERVER_HUJSON_H

/* HuJSON (JSON with // and block comments and trailing commas), the format of Tailscale
 * policy files. A small pre-pass blanks comments and trailing commas with spaces
 * (newlines stay, so jansson's line numbers are the file's), and notes on which line
 * each value starts, keyed by its path in the document: "acls[2].dst[0]",
 * "hosts.db", "autoApprovers.routes[\"10.0.0.0/8\"][1]". jansson does the parsing;
 * the pre-pass only knows strings, comments and brackets. */

#include <stddef.h>

#include <jansson.h>

struct hw_hujson_pos;

/* Parses at most max_len bytes nested at most max_depth deep. Duplicate object keys
 * are refused. On failure returns NULL with err = "LINE: what" (the caller adds the
 * file name). *pos_out receives the line index (free with hw_hujson_pos_free). */
json_t *hw_hujson_load(const char *text, size_t len, size_t max_len, int max_depth,
                       struct hw_hujson_pos **pos_out, char *err, size_t err_len);

/* Line on which the value at path starts; for a path the index does not hold, the
 * line of its nearest recorded ancestor; 0 when none. */
int hw_hujson_line(const struct hw_hujson_pos *pos, const char *path);
void hw_hujson_pos_free(struct hw_hujson_pos *pos);

/* Path building, in the index's notation: identifier-like keys as ".key", others as
 * ["key"] with JSON escapes. Both return out. */
char *hw_hujson_path_key(char *out, size_t out_len, const char *parent, const char *key);
char *hw_hujson_path_index(char *out, size_t out_len, const char *parent, size_t index);

#endif
