#ifndef HW_CLIENT_HOSTNET_H
#define HW_CLIENT_HOSTNET_H

/* What a subnet router or exit node changes on the host outside its TUN device (Linux,
 * root): IP forwarding sysctls and netfilter rules (forwarding and masquerade of traffic
 * from the tailnet), and the bypass mark on hwclient's own sockets so that they skip the
 * exit-node policy routing. tailscaled's marks and layout: util/linuxfw, tsconst. */

#include <stdbool.h>
#include <stddef.h>

#define HWC_FWMARK_MASK 0xff0000u        /* the mark bits that are ours */
#define HWC_SUBNET_ROUTE_MARK 0x40000u   /* forwarded from the TUN device: masquerade it */
#define HWC_BYPASS_MARK 0x80000u         /* hwclient's own sockets: not into the tunnel */

/* From now on hwc_bypass_mark() sets SO_MARK on the sockets it is given. */
void hwc_bypass_mark_enable(bool on);
/* Called on every socket hwclient makes to reach the control server, relays or peers. */
void hwc_bypass_mark(int fd);

struct hwc_router;

/* Forwarding on (IPv4, IPv6), the previous sysctl values written to saved_path (so a
 * crashed run's are restored by the next hwc_router_cleanup), chains hw-forward (filter)
 * and hw-postrouting (nat, masquerade unless !snat) for tun in iptables and ip6tables.
 * NULL with err when the IPv4 half cannot be set up (it is then removed again). */
struct hwc_router *hwc_router_start(const char *tun, bool snat, const char *saved_path, char *err,
                                    size_t errlen);
/* Removes the rules and chains and puts the sysctls back. */
void hwc_router_stop(struct hwc_router *r);
/* Leftovers of a run that did not stop cleanly: the hooks and chains above, and the
 * sysctls recorded in saved_path. */
void hwc_router_cleanup(const char *saved_path);

#endif
