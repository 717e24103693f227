#include "client/status.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

bool hwc_node_expired(const struct tc_node *n, int64_t now)
{
    return n->expired || (n->key_expiry.set && n->key_expiry.sec <= now);
}

static void set_time(json_t *o, const char *key, const struct tc_time *t)
{
    char text[TC_TIME_TEXT_MAX];
    tc_time_format(t, text);
    json_object_set_new(o, key, json_string(text));
}

static json_t *ips_of(const struct tc_strv *prefixes)
{
    json_t *a = json_array();
    for (size_t i = 0; i < prefixes->n; i++) {
        const char *p = prefixes->v[i];
        const char *slash = strchr(p, '/');
        json_array_append_new(a, slash ? json_stringn(p, (size_t)(slash - p)) : json_string(p));
    }
    return a;
}

static json_t *strv_json(const struct tc_strv *v)
{
    json_t *a = json_array();
    for (size_t i = 0; i < v->n; i++)
        json_array_append_new(a, json_string(v->v[i]));
    return a;
}

static bool has_str(const struct tc_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->v[i], s) == 0)
            return true;
    return false;
}

static const char *hostinfo_str(const struct tc_node *n, const char *key)
{
    const char *s = n->hostinfo ? json_string_value(json_object_get(n->hostinfo, key)) : NULL;
    return s ? s : "";
}

static json_t *peer_status(const struct tc_node *n, bool online, int64_t now)
{
    json_t *o = json_object();
    char id[32], key[TC_KEY_TEXT_MAX];
    snprintf(id, sizeof id, "%lld", (long long)n->id);
    json_object_set_new(o, "ID", json_string(n->stable_id ? n->stable_id : id));
    json_object_set_new(o, "NodeID", json_integer(n->id));
    tc_key_format("nodekey", n->key, key);
    json_object_set_new(o, "PublicKey", json_string(key));
    json_object_set_new(o, "HostName", json_string(hostinfo_str(n, "Hostname")));
    json_object_set_new(o, "DNSName", json_string(n->name ? n->name : ""));
    json_object_set_new(o, "OS", json_string(hostinfo_str(n, "OS")));
    json_object_set_new(o, "UserID", json_integer(n->user));
    json_object_set_new(o, "TailscaleIPs", ips_of(&n->addresses));
    const struct tc_strv *allowed = n->allowed_ips_null ? &n->addresses : &n->allowed_ips;
    json_object_set_new(o, "AllowedIPs", strv_json(allowed));
    if (n->tags.n)
        json_object_set_new(o, "Tags", strv_json(&n->tags));
    if (n->primary_routes.n)
        json_object_set_new(o, "PrimaryRoutes", strv_json(&n->primary_routes));
    json_object_set_new(o, "Online", json_boolean(online));
    json_object_set_new(o, "Active", json_false());
    json_object_set_new(o, "ExitNode", json_false());
    json_object_set_new(o, "ExitNodeOption",
                        json_boolean(has_str(allowed, "0.0.0.0/0") && has_str(allowed, "::/0")));
    set_time(o, "Created", &n->created);
    if (n->last_seen.set)
        set_time(o, "LastSeen", &n->last_seen);
    if (n->key_expiry.set)
        set_time(o, "KeyExpiry", &n->key_expiry);
    json_object_set_new(o, "Expired", json_boolean(hwc_node_expired(n, now)));
    json_object_set_new(o, "InNetworkMap", json_true());
    json_object_set_new(o, "HomeDERP", json_integer(n->home_derp));
    return o;
}

/* "box1.example.com." -> "example.com", as upstream derives MagicDNSSuffix. */
static char *suffix_of(const char *name)
{
    const char *dot = name ? strchr(name, '.') : NULL;
    if (!dot || !dot[1])
        return hw_strdup("");
    char *s = hw_strdup(dot + 1);
    size_t n = strlen(s);
    if (n && s[n - 1] == '.')
        s[n - 1] = '\0';
    return s;
}

json_t *hwc_status_json(const struct hwc_status_in *in)
{
    json_t *o = json_object();
    json_object_set_new(o, "BackendState", json_string(in->backend_state));
    json_object_set_new(o, "AuthURL", json_string(in->auth_url ? in->auth_url : ""));
    json_object_set_new(o, "ControlURL", json_string(in->control_url ? in->control_url : ""));
    json_object_set_new(o, "ControlConnected", json_boolean(in->connected));
    const struct tc_netmap *nm = in->nm && in->nm->has_self ? in->nm : NULL;
    json_object_set_new(o, "TailscaleIPs", nm ? ips_of(&nm->self.addresses) : json_array());
    if (nm)
        json_object_set_new(o, "Self", peer_status(&nm->self, in->connected, in->now));
    else
        json_object_set_new(o, "Self", json_null());
    json_t *health = json_array();
    for (size_t i = 0; i < in->n_health; i++)
        json_array_append_new(health, json_string(in->health[i]));
    json_object_set_new(o, "Health", health);
    char *suffix = suffix_of(nm ? nm->self.name : NULL);
    json_object_set_new(o, "MagicDNSSuffix", json_string(suffix));
    if (nm) {
        json_t *t = json_object();
        json_object_set_new(t, "Name", json_string(nm->domain ? nm->domain : ""));
        json_object_set_new(t, "MagicDNSSuffix", json_string(suffix));
        json_object_set_new(t, "MagicDNSEnabled",
                            json_boolean(json_is_true(json_object_get(nm->dns_config, "Proxied"))));
        json_object_set_new(o, "CurrentTailnet", t);
    } else {
        json_object_set_new(o, "CurrentTailnet", json_null());
    }
    free(suffix);
    json_t *peers = json_object();
    for (size_t i = 0; nm && i < nm->n_peers; i++) {
        const struct tc_node *p = &nm->peers[i];
        char key[TC_KEY_TEXT_MAX];
        tc_key_format("nodekey", p->key, key);
        json_object_set_new(peers, key, peer_status(p, p->online == TC_TRUE, in->now));
    }
    json_object_set_new(o, "Peer", peers);
    json_object_set_new(o, "User", nm && nm->user_profiles ? json_deep_copy(nm->user_profiles)
                                                          : json_object());
    return o;
}

/* ---- printing ---- */

struct row {
    char *cell[5];
    char *sort_key;
};

static const char *str_of(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* MagicDNS name minus the tailnet suffix; the quoted host name when there is none. */
static char *display_name(const json_t *ps, const char *suffix)
{
    const char *dns = str_of(ps, "DNSName");
    size_t n = strlen(dns);
    if (n && dns[n - 1] == '.')
        n--;
    size_t sl = strlen(suffix);
    if (sl && n > sl + 1 && strncmp(dns + n - sl, suffix, sl) == 0 && dns[n - sl - 1] == '.')
        n -= sl + 1;
    if (n)
        return strndup(dns, n);
    return hw_sprintf("(\"%s\")", str_of(ps, "HostName"));
}

static char *owner_login(const json_t *status, const json_t *ps)
{
    json_int_t uid = json_integer_value(json_object_get(ps, "UserID"));
    if (uid == 0)
        return hw_strdup("-");
    char key[32];
    snprintf(key, sizeof key, "%lld", (long long)uid);
    const json_t *u = json_object_get(json_object_get(status, "User"), key);
    if (!u)
        return hw_strdup(key);
    const char *login = str_of(u, "LoginName");
    const char *at = strchr(login, '@');
    return at ? strndup(login, (size_t)(at - login) + 1) : hw_strdup(login);
}

static char *last_seen(const json_t *ps, int64_t now)
{
    const char *t = str_of(ps, "LastSeen");
    struct tc_time tt;
    if (!*t || tc_time_parse(t, &tt) < 0 || !tt.set)
        return hw_strdup("");
    int64_t d = now - tt.sec;
    if (d < 60)
        d = 60;
    if (d < 3600)
        return hw_sprintf(", last seen %lldm ago", (long long)(d / 60));
    if (d < 86400)
        return hw_sprintf(", last seen %lldh ago", (long long)(d / 3600));
    return hw_sprintf(", last seen %lldd ago", (long long)(d / 86400));
}

/* upstream's printPS: "-", "idle", "offline, ...", or "active; relay \"code\"" /
 * "active; direct ip:port", then ", tx N rx N" once bytes moved */
static char *status_cell(const json_t *ps, int64_t now)
{
    bool online = json_is_true(json_object_get(ps, "Online"));
    bool active = json_is_true(json_object_get(ps, "Active"));
    bool exit_node = json_is_true(json_object_get(ps, "ExitNode"));
    bool exit_option = json_is_true(json_object_get(ps, "ExitNodeOption"));
    bool expired = json_is_true(json_object_get(ps, "Expired"));
    json_int_t tx = json_integer_value(json_object_get(ps, "TxBytes"));
    json_int_t rx = json_integer_value(json_object_get(ps, "RxBytes"));
    bool traffic = tx != 0 || rx != 0;
    const char *relay = str_of(ps, "Relay"), *cur = str_of(ps, "CurAddr");
    char *seen = last_seen(ps, now);
    char offline[128] = "";
    if (!online)
        snprintf(offline, sizeof offline, "; offline%s", seen);
    char *s;
    if (!active) {
        if (exit_node)
            s = hw_sprintf("idle; exit node%s", offline);
        else if (exit_option)
            s = hw_sprintf("idle; offers exit node%s", offline);
        else if (traffic)
            s = hw_sprintf("idle%s", offline);
        else if (!online)
            s = hw_sprintf("offline%s", seen);
        else
            s = hw_strdup("-");
    } else {
        char path[128] = "";
        if (*relay && !*cur)
            snprintf(path, sizeof path, "relay \"%s\"", relay);
        else if (*cur)
            snprintf(path, sizeof path, "direct %s", cur);
        s = hw_sprintf("active; %s%s%s", exit_node ? "exit node; " : exit_option ? "offers exit node; " : "", path,
                       online ? "" : offline);
    }
    if (traffic) {
        char *t = hw_sprintf("%s, tx %lld rx %lld", s, (long long)tx, (long long)rx);
        free(s);
        s = t;
    }
    if (expired) {
        char *t = strcmp(s, "-") == 0 ? hw_strdup("expired") : hw_sprintf("%s; expired", s);
        free(s);
        s = t;
    }
    free(seen);
    return s;
}

static void fill_row(struct row *r, const json_t *status, const json_t *ps, const char *suffix,
                     int64_t now)
{
    const json_t *ips = json_object_get(ps, "TailscaleIPs");
    r->cell[0] = hw_strdup(json_array_size(ips) ? json_string_value(json_array_get(ips, 0)) : "");
    r->cell[1] = display_name(ps, suffix);
    r->cell[2] = owner_login(status, ps);
    r->cell[3] = hw_strdup(str_of(ps, "OS"));
    r->cell[4] = status_cell(ps, now);
    const char *dns = str_of(ps, "DNSName");
    r->sort_key = hw_strdup(*dns ? dns : *str_of(ps, "HostName") ? str_of(ps, "HostName") : r->cell[0]);
}

static int row_cmp(const void *a, const void *b)
{
    return strcmp(((const struct row *)a)->sort_key, ((const struct row *)b)->sort_key);
}

int hwc_status_print(FILE *out, const json_t *status, int64_t now)
{
    const char *state = str_of(status, "BackendState");
    const char *auth = str_of(status, "AuthURL");
    const json_t *health = json_object_get(status, "Health");
    const json_t *self = json_object_get(status, "Self");
    if (strcmp(state, "Running") != 0 && strcmp(state, "Starting") != 0) {
        if (strcmp(state, "NeedsLogin") == 0) {
            fprintf(out, "Logged out.\n");
            if (*auth)
                fprintf(out, "Log in at: %s\n", auth);
            else if (json_is_object(self) && json_is_true(json_object_get(self, "Expired")))
                fprintf(out, "The node key expired at %s: log in again with `hwclient up`.\n",
                        str_of(self, "KeyExpiry"));
        } else if (strcmp(state, "NeedsMachineAuth") == 0) {
            fprintf(out, "Machine is not yet approved by tailnet admin.\n");
        } else if (strcmp(state, "Stopped") == 0) {
            fprintf(out, "hwclient is stopped.\n");
        } else {
            fprintf(out, "unexpected state: %s\n", state);
        }
        return 1;
    }
    size_t n_peers = json_object_size(json_object_get(status, "Peer"));
    struct row *rows = hw_calloc(n_peers + 1, sizeof *rows);
    size_t n = 0;
    const char *suffix = str_of(status, "MagicDNSSuffix");
    if (json_is_object(self))
        fill_row(&rows[n++], status, self, suffix, now);
    size_t first_peer = n;
    const char *key;
    json_t *ps;
    json_object_foreach((json_t *)json_object_get(status, "Peer"), key, ps)
        fill_row(&rows[n++], status, ps, suffix, now);
    qsort(rows + first_peer, n - first_peer, sizeof *rows, row_cmp);
    size_t width[5] = {0};
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 5; c++)
            if (strlen(rows[i].cell[c]) > width[c])
                width[c] = strlen(rows[i].cell[c]);
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < 4; c++)
            fprintf(out, "%-*s  ", (int)width[c], rows[i].cell[c]);
        fprintf(out, "%s\n", rows[i].cell[4]);
        for (int c = 0; c < 5; c++)
            free(rows[i].cell[c]);
        free(rows[i].sort_key);
    }
    free(rows);
    if (n == 0)
        fprintf(out, "%s: no network map yet.\n", state);
    const json_t *us = json_object_get(status, "Userspace");
    if (json_is_object(us)) {
        const char *http = json_string_value(json_object_get(us, "HTTPProxy"));
        fprintf(out, "\n# Userspace networking (no TUN device): SOCKS5 on %s%s%s\n",
                json_string_value(json_object_get(us, "SOCKS5")) ? json_string_value(json_object_get(us, "SOCKS5")) : "?",
                http ? ", HTTP CONNECT on " : "", http ? http : "");
    }
    if (json_array_size(health) > 0) {
        fprintf(out, "\n# Health check:\n");
        size_t i;
        json_t *m;
        json_array_foreach(health, i, m)
            fprintf(out, "#     - %s\n", json_string_value(m) ? json_string_value(m) : "");
    }
    return 0;
}
