#ifndef HW_CLIENT_TUN_H
#define HW_CLIENT_TUN_H

/* The TUN device of `hwclient up --tun NAME` and `hwclient wg`: /dev/net/tun in
 * IFF_TUN|IFF_NO_PI mode (one read = one IP packet), configured over rtnetlink
 * (MTU, addresses, link up, routes; no `ip` shell-outs). Routes and addresses added here
 * are removed again by hwc_tun_close; the kernel drops the device when its fd closes. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HWC_TUN_DEFAULT_NAME "hw0"
#define HWC_TUN_MTU 1280   /* Tailscale's TUN MTU (net/tstun/mtu.go) */

struct hwc_prefix {
    int family;          /* AF_INET / AF_INET6 */
    uint8_t addr[16];    /* network byte order; 4 used for v4 */
    int bits;
};

/* "100.64.0.1/32", "fd7a::1/128", or a bare address (host prefix). 0 or -1. */
int hwc_prefix_parse(const char *text, struct hwc_prefix *out);
void hwc_prefix_format(const struct hwc_prefix *p, char *out, size_t len);
bool hwc_prefix_contains(const struct hwc_prefix *p, int family, const uint8_t *addr);
bool hwc_prefix_equal(const struct hwc_prefix *a, const struct hwc_prefix *b);

struct hwc_tun;

/* Creates (or attaches to) the TUN device name, non-blocking, sets the MTU and brings it
 * up. NULL with err (e.g. no /dev/net/tun, not root). */
struct hwc_tun *hwc_tun_open(const char *name, int mtu, char *err, size_t errlen);
/* Removes the routes and addresses added through it, then closes the device. */
void hwc_tun_close(struct hwc_tun *t);
int hwc_tun_fd(const struct hwc_tun *t);
const char *hwc_tun_name(const struct hwc_tun *t);

/* The device's own addresses (host prefixes or with a netmask, as wg-quick allows);
 * replaces the set added before. -1 with err naming the first that failed. */
int hwc_tun_set_addresses(struct hwc_tun *t, const struct hwc_prefix *p, size_t n, char *err, size_t errlen);
/* Routes through the device; replaces the set added before (only differences are
 * touched, so existing routes never flap). Default routes are refused with err. */
int hwc_tun_set_routes(struct hwc_tun *t, const struct hwc_prefix *p, size_t n, char *err, size_t errlen);

/* Exit node (`--exit-node`): everything goes through the device, as tailscaled does it:
 * 0.0.0.0/0 and ::/0 via the device in table HWC_EXIT_TABLE, and rules (v4 and v6) at
 * HWC_EXIT_RULE_PREF+10/30/50/70: packets carrying the bypass mark (hwclient's own
 * sockets) look up main, then default, else are unreachable; all others look up table
 * HWC_EXIT_TABLE first. allow_lan adds throw routes there for the networks of the host's
 * other interfaces (--exit-node-allow-lan-access). on=false removes all of it (so does
 * hwc_tun_close); rules left at those preferences by a crashed run are removed first. */
#define HWC_EXIT_TABLE 52
#define HWC_EXIT_RULE_PREF 5200
int hwc_tun_set_exit_routes(struct hwc_tun *t, bool on, bool allow_lan, char *err, size_t errlen);
/* The throw routes allow_lan added (for logs and status). */
size_t hwc_tun_lan_routes(const struct hwc_tun *t, const struct hwc_prefix **out);

#endif
