#ifndef HW_SERVER_DERPMAP_H
#define HW_SERVER_DERPMAP_H

/* The DERP map headwater gives its clients (PROTOCOL.md §5.5, §12).
 *
 * Sources, merged in Headscale's order (hscontrol/derp/derp.go GetDERPMap, app.go):
 *   1. derp.urls, each a JSON DERPMap fetched over HTTP(S) (Tailscale's own map is one);
 *   2. derp.paths, each a YAML file in Headscale's lower-case format (derp-example.yaml);
 *   3. the embedded relay's region, when derp.server.enabled and
 *      automatically_add_embedded_derp_region.
 * A region replaces a region of the same id from an earlier source; a region set to
 * null (`1: null`) removes it, as Headscale's documentation describes. Only regions are
 * merged: HomeParams and omitDefaultRegions of a source are ignored, as in Headscale.
 * Node names must be unique across the merged map; where two sources use the same
 * name, the later source keeps it and the earlier source's node is dropped, with a
 * warning. Unlike Headscale, nodes are not shuffled: the order an admin writes is the
 * order clients try them in.
 *
 * Limits: a file or a URL body of at most HW_DERPMAP_MAX_BODY bytes; a fetch takes at
 * most HW_DERPMAP_FETCH_TIMEOUT_MS, redirects included. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "proto/tailcfg.h"

struct hw_config;
struct hw_loop;

#define HW_DERPMAP_MAX_BODY (4u << 20)
#define HW_DERPMAP_FETCH_TIMEOUT_MS 10000

/* ---- diagnostics ---------------------------------------------------------------------- */

/* One problem in one source: "SOURCE:LINE: message". line is 0 for a problem with the
 * whole source (unreadable, HTTP error) or for a source without lines (a URL body). */
struct hw_derpmap_diag {
    char *source;  /* file path or URL */
    int line;
    bool is_error; /* false: a warning, the source is still used */
    char *message; /* "regions.900.nodes[0].derpport: expected a port number ..." */
};

struct hw_derpmap_diags {
    struct hw_derpmap_diag *items;
    size_t n;
    size_t n_errors;
    size_t cap; /* allocated items; zero-initialise the struct and leave this alone */
};

/* Prints "SOURCE:LINE: error: message" (or "SOURCE: warning: message" without a line),
 * the form `headwater configtest` uses for config.yaml. */
void hw_derpmap_diags_print(const struct hw_derpmap_diags *d, FILE *out);
void hw_derpmap_diags_free(struct hw_derpmap_diags *d);

/* ---- one source ----------------------------------------------------------------------- */

/* What one source says. The map owns its strings (release with
 * hw_derpmap_source_clear). Regions appear in the order the source lists them. */
struct hw_derpmap_source {
    struct tc_derp_map map;
    int *removed;        /* region ids the source sets to null */
    size_t n_removed;
    /* Where each region and node was written (1-based; 0 for a URL body): region_lines[i]
     * is map.regions[i]'s key, node_lines[i][j] the start of map.regions[i].nodes[j]. */
    int *region_lines;
    int **node_lines;
};

void hw_derpmap_source_clear(struct hw_derpmap_source *s);

/* Parses a DERP map YAML text in Headscale's format, validating every field. source
 * names the text in diagnostics. Returns 0 and fills out when there is no error
 * (warnings may be added to diags), -1 otherwise with every error found in diags and
 * out empty. */
int hw_derpmap_parse_yaml(const char *source, const char *text, size_t len,
                          struct hw_derpmap_source *out, struct hw_derpmap_diags *diags);
/* hw_derpmap_parse_yaml on a file's contents; the file may hold at most
 * HW_DERPMAP_MAX_BODY bytes. */
int hw_derpmap_load_file(const char *path, struct hw_derpmap_source *out,
                         struct hw_derpmap_diags *diags);
/* Parses the upstream JSON form (a tailcfg.DERPMap, as a derp.urls address serves it)
 * with the same checks as the YAML form. */
int hw_derpmap_parse_json(const char *source, const char *body, size_t len,
                          struct hw_derpmap_source *out, struct hw_derpmap_diags *diags);

/* ---- merging -------------------------------------------------------------------------- */

/* The embedded relay's region as Headscale advertises it: id/code/name from
 * derp.server.*, one node named after the region id, HostName and DERPPort from
 * server_url (443 for https, 80 for http, when it has no port), IPv4/IPv6 from
 * derp.server.ipv4/ipv6, STUNPort from stun_listen_addr. Adds it to m and returns 0;
 * -1 with err set when server_url or stun_listen_addr cannot give a host and ports. */
int hw_derpmap_add_embedded_region(const struct hw_config *cfg, struct tc_derp_map *m, char *err,
                                   size_t err_len);

/* Merges sources[0..n) in order (NULL entries are skipped: a source with nothing good
 * yet), then adds the embedded region when cfg asks for it. Returns the DERPMap JSON
 * (new reference) the way clients expect it: Regions keyed by decimal id, in Go's key
 * order. Conflicts resolved by the rules at the top of this file are reported as
 * warnings in diags (when diags is not NULL), naming the sources via names[i]. */
json_t *hw_derpmap_merge(const struct hw_derpmap_source *const *sources, const char *const *names,
                         size_t n, const struct hw_config *cfg, struct hw_derpmap_diags *diags);

/* For `headwater configtest`: loads and validates every derp.paths file, then checks
 * them together — node names used in two files, or by the embedded region, are errors;
 * a file region the embedded region replaces is a warning. URLs are not fetched.
 * Returns the number of errors (also in diags->n_errors). */
size_t hw_derpmap_check_paths(const struct hw_config *cfg, struct hw_derpmap_diags *diags);

/* ---- the refresher -------------------------------------------------------------------- */

/* Called on the loop thread when the merged map changed. map is borrowed and must not
 * be modified; json_incref it to keep it past the call. */
typedef void (*hw_derpmap_change_cb)(json_t *map, void *arg);

struct hw_derpmap;

/* Loads every source now, on the calling thread (URLs are fetched, so this can take up
 * to the fetch timeout per URL): a broken source is logged as a warning and left out,
 * and no usable source at all gives an empty map and a warning. Then, when
 * derp.auto_update_enabled, a worker thread re-reads every source each
 * derp.update_frequency. A source that breaks keeps its last good contents (the reason
 * is logged, naming the source). When the merged map differs from the previous one,
 * on_change(map, arg) is run on the loop thread via hw_loop_post; several changes
 * before the loop gets to it are delivered once, as the newest map.
 * cfg is copied: the caller may free it after this returns. Returns NULL with err set
 * only when the worker thread cannot be started. */
struct hw_derpmap *hw_derpmap_start(const struct hw_config *cfg, struct hw_loop *loop,
                                    hw_derpmap_change_cb on_change, void *arg, char *err,
                                    size_t err_len);

/* The map clients get now (new reference; thread-safe). It moves to a new map at the
 * moment on_change is called with it, so a session started before the callback is
 * sure to receive the callback's push. */
json_t *hw_derpmap_current(struct hw_derpmap *d);

/* Asks the worker to re-read every source now (e.g. on SIGHUP) instead of waiting for
 * the next period. Returns at once; thread-safe. Works when auto-update is off too. */
void hw_derpmap_refresh(struct hw_derpmap *d);

/* Rounds the worker has completed (a round = every source read, merged, and a change
 * queued for the loop if there was one). For tests and status output; thread-safe. */
uint64_t hw_derpmap_rounds(struct hw_derpmap *d);

/* Call on the loop thread. Stops the worker (an ongoing fetch is abandoned) and frees
 * everything; on_change is not called again. A change notification still queued on
 * the loop is discarded when the loop runs it, which frees its last few bytes. */
void hw_derpmap_stop(struct hw_derpmap *d);

#endif
