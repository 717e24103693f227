/* Mesh: relays of one region connect to each other as DERP clients. */
#include "common/log.h"
#include "relay/relay.h"

int mesh_init(struct relay *r)
{
    if (!r->cfg.mesh_with)
        return 0;
    log_error("hwrelay: -mesh-with is not supported by this build");
    return -1;
}

void mesh_free(struct relay *r) { (void)r; }

bool mesh_forward(struct relay *r, const uint8_t src[32], const uint8_t dst[32], const uint8_t *data,
                  size_t len)
{
    (void)r, (void)src, (void)dst, (void)data, (void)len;
    return false;
}
