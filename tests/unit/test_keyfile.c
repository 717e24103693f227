#include <ftw.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "proto/keys.h"
#include "tests/unit/testlib.h"

static char dir[256];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fresh_dir(void)
{
    if (dir[0])
        nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/hw-keyfile-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* The server's use of the key file: load, or create on first start. */
static int hw_keyfile_load_or_create(const char *path, uint8_t priv[32], uint8_t pub[32],
                                     bool *created, char *err, size_t err_len)
{
    int rc = hw_key_load_or_create_private(path, priv, err, err_len);
    if (rc < 0)
        return -1;
    *created = rc == 1;
    hw_key_public(priv, pub);
    return 0;
}

static void path_in_dir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static void creates_key_0600_in_headscale_format(void)
{
    fresh_dir();
    char path[300];
    path_in_dir(path, sizeof path, "noise_private.key");
    uint8_t priv[32], pub[32], want_pub[32];
    bool created = false;
    char err[512];
    CHECK(hw_keyfile_load_or_create(path, priv, pub, &created, err, sizeof err) == 0, "%s", err);
    CHECK(created, "a new key should have been created");

    struct stat st;
    CHECK(stat(path, &st) == 0, "file missing");
    CHECK_INT(st.st_mode & 07777, 0600);

    size_t len;
    char *text = hw_read_file(path, &len);
    CHECK(text != NULL, "unreadable");
    char hex[65];
    hw_hex_encode(priv, 32, hex);
    char *want = hw_sprintf("privkey:%s\n", hex);
    bool same = strcmp(text, want) == 0;
    free(text);
    free(want);
    CHECK(same, "file text is not \"privkey:<hex of the key>\\n\"");

    CHECK((priv[0] & 7) == 0 && (priv[31] & 128) == 0 && (priv[31] & 64) != 0, "not clamped");
    CHECK(crypto_scalarmult_base(want_pub, priv) == 0, "scalarmult");
    CHECK(memcmp(pub, want_pub, 32) == 0, "public key does not match the private key");
}

static void reuses_existing_key(void)
{
    fresh_dir();
    char path[300];
    path_in_dir(path, sizeof path, "k");
    uint8_t priv1[32], pub1[32], priv2[32], pub2[32];
    bool created;
    char err[512];
    CHECK(hw_keyfile_load_or_create(path, priv1, pub1, &created, err, sizeof err) == 0, "%s", err);
    CHECK(hw_keyfile_load_or_create(path, priv2, pub2, &created, err, sizeof err) == 0, "%s", err);
    CHECK(!created, "second call must load, not create");
    CHECK(memcmp(priv1, priv2, 32) == 0 && memcmp(pub1, pub2, 32) == 0, "key changed on reload");
}

static void loads_a_headscale_key_file(void)
{
    /* Headscale writes the key without a trailing newline; hex case must not matter. */
    fresh_dir();
    char path[300];
    path_in_dir(path, sizeof path, "k");
    const char *text = "privkey:A8B0C1D2E3F405162738495A6B7C8D9EAFB0C1D2E3F405162738495A6B7C8D4F";
    CHECK(hw_write_file_atomic(path, text, strlen(text), 0600) == 0, "write");
    uint8_t priv[32], pub[32], want_pub[32];
    bool created = true;
    char err[512];
    CHECK(hw_keyfile_load_or_create(path, priv, pub, &created, err, sizeof err) == 0, "%s", err);
    CHECK(!created, "must load");
    CHECK_INT(priv[0], 0xa8);
    CHECK_INT(priv[31], 0x4f);
    crypto_scalarmult_base(want_pub, priv);
    CHECK(memcmp(pub, want_pub, 32) == 0, "public key");
}

static void corrupt_file_is_an_error_and_left_alone(void)
{
    static const char *bad[] = {
        "",
        "\n",
        "garbage\n",
        "privkey:1234\n",
        "nodekey:a8b0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d4f\n",
        "privkey:zzb0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d4f\n",
        "privkey:0000000000000000000000000000000000000000000000000000000000000000\n",
        "privkey:a8b0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d4f00\n",
    };
    fresh_dir();
    char path[300];
    path_in_dir(path, sizeof path, "noise_private.key");
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++) {
        CHECK(hw_write_file_atomic(path, bad[i], strlen(bad[i]), 0600) == 0, "write");
        uint8_t priv[32], pub[32];
        bool created = false;
        char err[512] = "";
        CHECK(hw_keyfile_load_or_create(path, priv, pub, &created, err, sizeof err) < 0,
              "accepted \"%s\"", bad[i]);
        CHECK(strstr(err, path) != NULL, "error does not name the file: %s", err);
        size_t len;
        char *now = hw_read_file(path, &len);
        CHECK(now != NULL, "file vanished");
        bool same = strcmp(now, bad[i]) == 0;
        free(now);
        CHECK(same, "a bad key file was overwritten (case %zu)", i);
    }
}

static void unwritable_location_is_an_error(void)
{
    fresh_dir();
    char path[300];
    /* A directory that cannot be made: one of its parents is a plain file. */
    path_in_dir(path, sizeof path, "afile");
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "create afile");
    fclose(f);
    path_in_dir(path, sizeof path, "afile/key");
    uint8_t priv[32], pub[32];
    bool created;
    char err[512] = "";
    CHECK(hw_keyfile_load_or_create(path, priv, pub, &created, err, sizeof err) < 0, "succeeded");
    CHECK(strstr(err, path) != NULL, "error does not name the file: %s", err);

    path_in_dir(path, sizeof path, "adir");
    CHECK(mkdir(path, 0700) == 0, "mkdir");
    CHECK(hw_keyfile_load_or_create(path, priv, pub, &created, err, sizeof err) < 0,
          "a directory was taken for a key");
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(creates_key_0600_in_headscale_format);
    RUN(reuses_existing_key);
    RUN(loads_a_headscale_key_file);
    RUN(corrupt_file_is_an_error_and_left_alone);
    RUN(unwritable_location_is_an_error);
    if (dir[0])
        nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    return TEST_MAIN_END();
}
