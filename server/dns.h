#ifndef HW_SERVER_DNS_H
#define HW_SERVER_DNS_H

/* The DNSConfig every client gets, from the dns.* config keys, as Headscale builds it
 * (hscontrol/types/config.go, dnsToTailcfgDNS):
 * - Proxied = dns.magic_dns (with the reverse zones of the tailnet ranges as routes);
 * - nameservers.global go to Resolvers with override_local_dns, else FallbackResolvers;
 * - nameservers.split become Routes (domain -> resolvers);
 * - Domains = base_domain first, then search_domains;
 * - ExtraRecords = dns.extra_records, or the records of dns.extra_records_path.
 * The records file (a JSON array of {"name", "type", "value"}, keys in any case, as Go
 * reads them) is watched with inotify on the loop: on a change it is read again and a
 * changed config is handed to the callback. A file that does not parse is logged (file
 * and why) and the last good records stay; an empty file is ignored (a writer caught
 * halfway), as in Headscale. */

#include <jansson.h>
#include <stddef.h>

#include "common/config.h"

struct hw_loop;
struct hw_dns;

/* The records of a JSON text; 0, or -1 with err naming the record and what is wrong.
 * Types other than A/AAAA are skipped (Tailscale clients serve only those); a record
 * without a type gets A or AAAA from its value. Free with hw_dns_records_free. */
int hw_dns_records_parse(const char *text, size_t len, struct hw_dns_extra_record **out,
                         size_t *n_out, char *err, size_t err_len);
void hw_dns_records_free(struct hw_dns_extra_record *records, size_t n);

/* The DNSConfig JSON for cfg with these extra records (cfg's own are not used). */
json_t *hw_dns_config_json(const struct hw_config *cfg, const struct hw_dns_extra_record *records,
                           size_t n_records);

typedef void (*hw_dns_change_cb)(json_t *dns_config, void *arg);

/* Builds the config (reading extra_records_path, whose failure fails the start with err)
 * and, with a records file, starts watching it. */
struct hw_dns *hw_dns_start(const struct hw_config *cfg, struct hw_loop *loop,
                            hw_dns_change_cb on_change, void *arg, char *err, size_t err_len);
/* Borrowed; valid until the next change. */
json_t *hw_dns_current(struct hw_dns *d);
void hw_dns_stop(struct hw_dns *d);

#endif
