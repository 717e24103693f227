#ifndef HW_CLIENT_STATE_H
#define HW_CLIENT_STATE_H

/* hwclient's state directory, like tailscaled's /var/lib/tailscale: the machine key
 * (kept for the life of the install), the node key (kept while logged in), the local
 * control socket and a lock that keeps two daemons off one directory. Directory 0700,
 * files 0600. The disco key is not here: upstream makes a new one per process. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HWC_PATH_MAX 4096
/* sockaddr_un.sun_path is 108 bytes, NUL included. */
#define HWC_SOCK_PATH_MAX 108

struct hwc_state {
    char dir[HWC_PATH_MAX];
    char machine_key[HWC_PATH_MAX + 16];
    char node_key[HWC_PATH_MAX + 16];
    char sock[HWC_PATH_MAX + 16];
    char lock[HWC_PATH_MAX + 16];
    int lock_fd;
};

/* The directory from --statedir, else $HWCLIENT_STATEDIR, else /var/lib/hwclient for
 * root and ~/.local/state/hwclient for others. Only computes paths. */
int hwc_state_paths(struct hwc_state *s, const char *statedir, char *err, size_t errlen);
/* Creates the directory (0700) and takes the lock. Fails with a message naming the pid
 * of the daemon holding it. */
int hwc_state_lock(struct hwc_state *s, char *err, size_t errlen);
void hwc_state_unlock(struct hwc_state *s);

/* 0 loaded, 1 created, -1 error. */
int hwc_state_machine_key(struct hwc_state *s, uint8_t priv[32], char *err, size_t errlen);
/* 0 loaded, 1 absent (not logged in), -1 error (a corrupt file is an error, not absent:
 * silently making a new node would orphan the old one on the server). */
int hwc_state_load_node_key(struct hwc_state *s, uint8_t priv[32], char *err, size_t errlen);
int hwc_state_save_node_key(struct hwc_state *s, const uint8_t priv[32], char *err, size_t errlen);
int hwc_state_forget_node_key(struct hwc_state *s, char *err, size_t errlen);

#endif
