/* The bridge from the control layer's in-memory tailnet to the policy engine. */

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "server/policy.h"
#include "server/tailnet.h"

void hw_policy_node_from_tn(const struct tn_node *n, struct hw_policy_node *out)
{
    memset(out, 0, sizeof *out);
    out->id = n->row.id;
    out->ns = n->ns ? n->ns->name : n->row.namespace_name;
    out->ipv4 = n->row.ipv4;
    out->ipv6 = n->row.ipv6;
    out->routes = (const char *const *)n->routes;
    out->n_routes = n->n_routes;
    /* tags_json is what the store holds: a JSON array of "tag:x" (or NULL). */
    json_t *tags = n->row.tags_json && *n->row.tags_json ? json_loads(n->row.tags_json, 0, NULL) : NULL;
    size_t count = json_is_array(tags) ? json_array_size(tags) : 0;
    if (count) {
        const char **v = hw_calloc(count, sizeof *v);
        size_t k = 0;
        for (size_t i = 0; i < count; i++) {
            const char *t = json_string_value(json_array_get(tags, i));
            if (t && *t)
                v[k++] = hw_strdup(t);
        }
        out->tags = v;
        out->n_tags = k;
    }
    json_decref(tags);
}

void hw_policy_node_release(struct hw_policy_node *out)
{
    for (size_t i = 0; i < out->n_tags; i++)
        free((char *)out->tags[i]);
    free((void *)out->tags);
    out->tags = NULL;
    out->n_tags = 0;
}
