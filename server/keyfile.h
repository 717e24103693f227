#ifndef HW_SERVER_KEYFILE_H
#define HW_SERVER_KEYFILE_H

/* The server's Noise static key on disk, in the format Headscale uses for
 * noise_private.key ("privkey:" + 64 lowercase hex + newline, mode 0600), so a key file
 * moved over from a Headscale install keeps every client's trust in the server. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads the key at path, or creates one (random, clamped) when no file exists.
 * *created tells which happened. A file that exists but does not hold a key is an
 * error, never overwritten: clients pinned to the old public key would stop trusting
 * the server. Returns 0, or -1 with a message naming the file in err. */
int hw_keyfile_load_or_create(const char *path, uint8_t priv[32], uint8_t pub[32],
                              bool *created, char *err, size_t err_len);

/* Parses the text form ("privkey:<64 hex>", surrounding whitespace allowed, hex in either
 * case). Returns 0, or -1 with the reason (without the file name) in err. */
int hw_keyfile_parse(const char *text, uint8_t priv[32], char *err, size_t err_len);

#endif
