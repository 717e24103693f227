#ifndef HW_SERVER_POLICY_SOURCE_H
#define HW_SERVER_POLICY_SOURCE_H

/* Where the access policy comes from (policy.mode "file": policy.path, re-read on
 * SIGHUP and when the file changes; "database": the store, written by `hwctl policy
 * set`), and the validation every new text passes before it is put in force. */

#include <stdbool.h>
#include <stddef.h>

#include "server/server.h"

struct hw_policy;

bool hw_policy_mode_database(const struct hw_config *cfg);
/* Parses (running the policy's tests) and checks the namespace names it uses against
 * the store. NULL with err naming source:line and the problem. */
struct hw_policy *hw_policy_source_validate(struct hw_db *db, const char *text, size_t len,
                                            const char *source, char *err, size_t err_len);
/* At start, after the control layer exists: puts the configured policy in force (none
 * is fine). -1 with err when it is broken: the server must not start. */
int hw_policy_source_load(struct hw_server *s, char *err, size_t err_len);
/* File mode: read the file again; a broken file is logged and the old policy stays.
 * Loop thread, lock not held. */
void hw_policy_source_reload(struct hw_server *s, const char *why);
/* File mode: reload when the file changes (inotify on its directory). */
int hw_policy_source_watch(struct hw_server *s, char *err, size_t err_len);
void hw_policy_source_unwatch(struct hw_server *s);

#endif
