#include "server/register_page.h"

#include <microhttpd.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "db/db.h"
#include "server/server.h"

/* Registration ids are generated from [a-z0-9]; anything outside [A-Za-z0-9_-] is not
 * one of ours, and refusing it here means nothing else needs HTML escaping. */
static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') ||
              (id[i] >= '0' && id[i] <= '9') || id[i] == '-' || id[i] == '_'))
            return false;
    return true;
}

static enum MHD_Result page(struct MHD_Connection *conn, unsigned status, char *html)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(html), html, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *head =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Headwater: register a machine</title>"
    "<style>body{font-family:sans-serif;max-width:44em;margin:3em auto;padding:0 1em}"
    "code{background:#eee;padding:.6em;display:block;white-space:pre-wrap}</style></head><body>\n";

int hw_register_page(struct hw_server *s, struct MHD_Connection *conn, const char *reg_id)
{
    if (!valid_id(reg_id))
        return page(conn, MHD_HTTP_BAD_REQUEST,
                    hw_sprintf("%s<h1>Not a registration id</h1><p>This link is malformed.</p></body></html>\n", head));
    struct hw_pending p = {0};
    pthread_mutex_lock(&s->lock);
    int rc = hw_db_pending_get(s->db, reg_id, &p);
    pthread_mutex_unlock(&s->lock);
    if (rc != HW_DB_OK || p.expires_at <= hw_now()) {
        hw_pending_clear(&p);
        return page(conn, MHD_HTTP_NOT_FOUND,
                    hw_sprintf("%s<h1>Registration not found</h1><p>The id <b>%s</b> is unknown or has "
                               "expired. Run <code>tailscale up --login-server ...</code> on the "
                               "machine again to get a new link.</p></body></html>\n",
                               head, reg_id));
    }
    hw_pending_clear(&p);
    return page(conn, MHD_HTTP_OK,
                hw_sprintf("%s<h1>Machine registration</h1>\n<p>Run this command on the Headwater "
                           "server to admit the machine, choosing its namespace:</p>\n"
                           "<code>hwctl nodes register -n NAMESPACE --key %s</code>\n"
                           "<p>The machine finishes logging in as soon as the command has run.</p>"
                           "</body></html>\n",
                           head, reg_id));
}
