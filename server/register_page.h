#ifndef HW_SERVER_REGISTER_PAGE_H
#define HW_SERVER_REGISTER_PAGE_H

/* GET /register/<id>: the page an interactive login's AuthURL opens. It tells the admin
 * the exact command that admits the machine (there is no web login in headwater). */

struct MHD_Connection;
struct hw_server;

/* Returns an MHD_Result. */
int hw_register_page(struct hw_server *s, struct MHD_Connection *conn, const char *reg_id);

#endif
