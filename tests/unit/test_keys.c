#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "proto/keys.h"
#include "tests/unit/fixture.h"

static json_t *fx_noise, *fx_map, *fx_derp, *fx_disco;
static char fx_noise_path[512], fx_map_path[512], fx_derp_path[512], fx_disco_path[512];

static const char *sample_hex = "d92ecf3f87b5062f34b12d315edc38299d4b055768cc29ea86fd4f0f91567d6b";

static void text_forms_round_trip(void)
{
    static const struct { enum hw_key_kind kind; const char *prefix; } kinds[] = {
        {HW_KEY_MACHINE, "mkey:"}, {HW_KEY_NODE, "nodekey:"}, {HW_KEY_DISCO, "discokey:"},
        {HW_KEY_PRIVATE, "privkey:"}, {HW_KEY_CHALLENGE, "chalpub:"},
    };
    uint8_t key[32], back[32];
    CHECK(hw_hex_decode(sample_hex, key, 32) == 32, "sample");
    for (size_t i = 0; i < HW_ARRAY_LEN(kinds); i++) {
        char text[HW_KEY_TEXT_MAX], want[HW_KEY_TEXT_MAX];
        CHECK_STR(hw_key_prefix(kinds[i].kind), kinds[i].prefix);
        snprintf(want, sizeof want, "%s%s", kinds[i].prefix, sample_hex);
        CHECK_STR(hw_key_format(kinds[i].kind, key, text), want);
        memset(back, 0xaa, sizeof back);
        CHECK(hw_key_parse(kinds[i].kind, text, back, NULL) == 0, "parse %s", text);
        CHECK_MEM(back, key, 32);
    }
}

static void text_forms_accept_uppercase(void)
{
    uint8_t key[32], upper_key[32];
    char text[HW_KEY_TEXT_MAX];
    snprintf(text, sizeof text, "nodekey:%s", sample_hex);
    CHECK(hw_key_parse(HW_KEY_NODE, text, key, NULL) == 0, "lower");
    for (char *p = text + 8; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    CHECK(hw_key_parse(HW_KEY_NODE, text, upper_key, NULL) == 0, "upper %s", text);
    CHECK_MEM(upper_key, key, 32);
    /* Output is always lowercase, whatever came in. */
    char again[HW_KEY_TEXT_MAX];
    snprintf(text, sizeof text, "nodekey:%s", sample_hex);
    CHECK_STR(hw_key_format(HW_KEY_NODE, upper_key, again), text);
}

static void text_forms_reject_malformed(void)
{
    uint8_t key[32];
    const char *why = NULL;
    char text[200];

    snprintf(text, sizeof text, "nodekey:%s", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, &why) < 0, "wrong prefix accepted");
    CHECK(why && strstr(why, "\"mkey:\""), "reason names the prefix: %s", why ? why : "(null)");

    /* The prefix must match exactly: no case folding, no missing colon, nothing before it. */
    snprintf(text, sizeof text, "MKEY:%s", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, NULL) < 0, "uppercase prefix");
    snprintf(text, sizeof text, "mkey%s", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, NULL) < 0, "no colon");
    snprintf(text, sizeof text, " mkey:%s", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, NULL) < 0, "leading space");
    snprintf(text, sizeof text, "%s", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, NULL) < 0, "bare hex");

    snprintf(text, sizeof text, "mkey:%.63s", sample_hex);
    why = NULL;
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, &why) < 0, "63 digits accepted");
    CHECK(why && strstr(why, "64"), "reason: %s", why ? why : "(null)");
    snprintf(text, sizeof text, "mkey:%s0", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, NULL) < 0, "65 digits accepted");
    snprintf(text, sizeof text, "mkey:%s\n", sample_hex);
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, NULL) < 0, "trailing newline accepted");

    snprintf(text, sizeof text, "mkey:%s", sample_hex);
    text[20] = 'g';
    why = NULL;
    CHECK(hw_key_parse(HW_KEY_MACHINE, text, key, &why) < 0, "non-hex accepted");
    CHECK(why && strstr(why, "hex digit"), "reason: %s", why ? why : "(null)");

    CHECK(hw_key_parse(HW_KEY_MACHINE, "", key, NULL) < 0, "empty");
    CHECK(hw_key_parse(HW_KEY_MACHINE, "mkey:", key, NULL) < 0, "prefix only");
    CHECK(hw_key_parse(HW_KEY_MACHINE, NULL, key, NULL) < 0, "NULL");

    /* A failed parse leaves the output alone and never echoes the input. */
    memset(key, 0x5a, sizeof key);
    snprintf(text, sizeof text, "privkey:%.60szzzz", sample_hex);
    CHECK(hw_key_parse(HW_KEY_PRIVATE, text, key, &why) < 0, "bad private");
    CHECK(strstr(why, sample_hex + 10) == NULL, "reason echoes the key");
    for (int i = 0; i < 32; i++)
        CHECK(key[i] == 0x5a, "output touched at %d", i);

    /* The length-delimited form stops where it is told. */
    snprintf(text, sizeof text, "mkey:%sXYZ", sample_hex);
    CHECK(hw_key_parse_n(HW_KEY_MACHINE, text, 5 + 64, key, NULL) == 0, "parse_n");
}

static void zero_key(void)
{
    uint8_t key[32], zero[32] = {0};
    char text[HW_KEY_TEXT_MAX];
    /* The zero key is how "no key" is written on the wire; it parses and is detectable. */
    CHECK_STR(hw_key_format(HW_KEY_NODE, zero, text),
              "nodekey:0000000000000000000000000000000000000000000000000000000000000000");
    memset(key, 1, sizeof key);
    CHECK(hw_key_parse(HW_KEY_NODE, text, key, NULL) == 0, "zero parses");
    CHECK(hw_key_is_zero(key), "zero detected");
    key[31] = 1;
    CHECK(!hw_key_is_zero(key), "last byte counts");
    key[31] = 0;
    key[0] = 0x80;
    CHECK(!hw_key_is_zero(key), "first byte counts");
}

static void generate_clamps_and_differs(void)
{
    uint8_t a[32], b[32], pa[32], pb[32];
    hw_key_generate(a);
    hw_key_generate(b);
    CHECK((a[0] & 7) == 0 && (a[31] & 0x80) == 0 && (a[31] & 0x40) != 0, "not clamped");
    CHECK(memcmp(a, b, 32) != 0, "two keys equal");
    hw_key_public(a, pa);
    hw_key_public(b, pb);
    CHECK(!hw_key_is_zero(pa), "zero public");
    uint8_t s1[32], s2[32];
    CHECK(hw_key_dh(a, pb, s1) == 0 && hw_key_dh(b, pa, s2) == 0, "dh");
    CHECK_MEM(s1, s2, 32);
}

static void dh_refuses_low_order_points(void)
{
    /* Points whose multiples give the all-zero secret: 0, 1, and the two of order 8. */
    static const char *low_order[] = {
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    };
    uint8_t priv[32], pub[32], shared[32];
    hw_key_generate(priv);
    for (size_t i = 0; i < HW_ARRAY_LEN(low_order); i++) {
        CHECK(hw_hex_decode(low_order[i], pub, 32) == 32, "hex");
        memset(shared, 0x77, sizeof shared);
        CHECK(hw_key_dh(priv, pub, shared) < 0, "low-order point %zu accepted", i);
        CHECK(hw_key_is_zero(shared), "output not cleared");
        CHECK(hw_box_shared(shared, pub, priv) < 0, "box accepted low-order point %zu", i);
    }
}

/* Every private/public pair the fixtures hold must match our derivation. */
static int check_pair(const char *priv_hex, const char *pub_text, enum hw_key_kind kind)
{
    uint8_t priv[32], pub[32], want[32];
    if (fx_key(priv_hex, priv) < 0)
        return -1;
    if (strchr(pub_text, ':')) {
        if (hw_key_parse(kind, pub_text, want, NULL) < 0)
            return -1;
    } else if (fx_key(pub_text, want) < 0) {
        return -1;
    }
    hw_key_public(priv, pub);
    return memcmp(pub, want, 32) == 0 ? 0 : -1;
}

static void fixture_key_pairs(void)
{
    if (!fx_noise)
        SKIP("fixture %s not found", fx_noise_path);
    if (!fx_map)
        SKIP("fixture %s not found", fx_map_path);
    int pairs = 0;
    size_t i;
    json_t *session;
    json_array_foreach(json_object_get(fx_noise, "sessions"), i, session) {
        json_t *k = json_object_get(session, "keys");
        static const char *roles[] = {"client_ephemeral", "client_machine", "server_ephemeral",
                                      "server_static"};
        for (size_t r = 0; r < HW_ARRAY_LEN(roles); r++) {
            char priv[64], pub[64];
            snprintf(priv, sizeof priv, "%s_private", roles[r]);
            snprintf(pub, sizeof pub, "%s_public", roles[r]);
            CHECK(check_pair(fx_str(k, priv), fx_str(k, pub), HW_KEY_MACHINE) == 0,
                  "session %zu %s", i, roles[r]);
            pairs++;
        }
    }
    const char *name;
    json_t *node;
    json_object_foreach(json_object_get(fx_map, "keys"), name, node) {
        if (!json_is_object(node))
            continue;
        CHECK(check_pair(fx_str(node, "machine_private"), fx_str(node, "machine_public"),
                         HW_KEY_MACHINE) == 0, "%s machine", name);
        CHECK(check_pair(fx_str(node, "node_private"), fx_str(node, "node_public"),
                         HW_KEY_NODE) == 0, "%s node", name);
        CHECK(check_pair(fx_str(node, "disco_private"), fx_str(node, "disco_public"),
                         HW_KEY_DISCO) == 0, "%s disco", name);
        pairs += 3;
    }
    CHECK(pairs == 8 + 12, "checked %d pairs", pairs);
}

/* ---- private key files ---- */

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hw-test-keys-XXXXXX");
    if (!mkdtemp(tmpdir))
        tmpdir[0] = '\0';
}

static void remove_tmpdir(void)
{
    if (!tmpdir[0])
        return;
    char *cmd = hw_sprintf("rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    free(cmd);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void private_key_file_round_trip(void)
{
    CHECK(tmpdir[0], "mkdtemp failed");
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/noise_private.key", tmpdir);
    uint8_t priv[32], back[32];
    hw_key_generate(priv);
    CHECK(hw_key_save_private(path, priv, err, sizeof err) == 0, "save: %s", err);

    struct stat st;
    CHECK(stat(path, &st) == 0, "stat");
    CHECK_INT(st.st_mode & 0777, 0600);
    size_t len = 0;
    char *text = hw_read_file(path, &len);
    CHECK(text != NULL, "read");
    char want[HW_KEY_TEXT_MAX + 1];
    hw_key_format(HW_KEY_PRIVATE, priv, want);
    strcat(want, "\n");
    int same = strcmp(text, want) == 0;
    free(text);
    CHECK(same, "file is not \"privkey:<hex>\\n\"");

    CHECK(hw_key_load_private(path, back, err, sizeof err) == 0, "load: %s", err);
    CHECK_MEM(back, priv, 32);

    /* Headscale writes no newline; editors may add CRLF or spaces. */
    char body[HW_KEY_TEXT_MAX + 8];
    hw_key_format(HW_KEY_PRIVATE, priv, body);
    write_text(path, body);
    memset(back, 0, sizeof back);
    CHECK(hw_key_load_private(path, back, err, sizeof err) == 0, "no newline: %s", err);
    CHECK_MEM(back, priv, 32);
    strcat(body, " \r\n\t\n");
    write_text(path, body);
    memset(back, 0, sizeof back);
    CHECK(hw_key_load_private(path, back, err, sizeof err) == 0, "trailing blanks: %s", err);
    CHECK_MEM(back, priv, 32);
}

static void private_key_file_errors(void)
{
    CHECK(tmpdir[0], "mkdtemp failed");
    char path[512], err[512];
    uint8_t priv[32];

    snprintf(path, sizeof path, "%s/missing.key", tmpdir);
    CHECK(hw_key_load_private(path, priv, err, sizeof err) < 0, "missing file loaded");
    CHECK(strstr(err, path) && strstr(err, strerror(ENOENT)), "error: %s", err);

    snprintf(path, sizeof path, "%s/public.key", tmpdir);
    write_text(path, "mkey:d92ecf3f87b5062f34b12d315edc38299d4b055768cc29ea86fd4f0f91567d6b\n");
    CHECK(hw_key_load_private(path, priv, err, sizeof err) < 0, "public key loaded");
    CHECK(strstr(err, path) && strstr(err, "privkey:"), "error: %s", err);

    snprintf(path, sizeof path, "%s/short.key", tmpdir);
    write_text(path, "privkey:d92ecf3f87b5062f34b12d315edc38299d4b055768cc29ea86fd4f0f91567d6\n");
    CHECK(hw_key_load_private(path, priv, err, sizeof err) < 0, "short key loaded");
    CHECK(strstr(err, "64 hex digits"), "error: %s", err);

    snprintf(path, sizeof path, "%s/zero.key", tmpdir);
    write_text(path, "privkey:0000000000000000000000000000000000000000000000000000000000000000\n");
    CHECK(hw_key_load_private(path, priv, err, sizeof err) < 0, "zero key loaded");
    CHECK(strstr(err, "zero"), "error: %s", err);

    snprintf(path, sizeof path, "%s/no/such/dir/x.key", tmpdir);
    hw_key_generate(priv);
    CHECK(hw_key_save_private(path, priv, err, sizeof err) < 0, "save into missing dir");
    CHECK(strstr(err, path), "error: %s", err);
}

static void private_key_load_or_create(void)
{
    CHECK(tmpdir[0], "mkdtemp failed");
    char path[512], err[512];
    uint8_t first[32], second[32];
    snprintf(path, sizeof path, "%s/state/sub/noise_private.key", tmpdir);
    CHECK_INT(hw_key_load_or_create_private(path, first, err, sizeof err), 1);
    CHECK(!hw_key_is_zero(first), "created zero key");
    CHECK_INT(hw_key_load_or_create_private(path, second, err, sizeof err), 0);
    CHECK_MEM(second, first, 32);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "mode");

    /* An unreadable or broken file is an error, never silently replaced. */
    write_text(path, "garbage\n");
    CHECK_INT(hw_key_load_or_create_private(path, second, err, sizeof err), -1);
    CHECK(strstr(err, path), "error: %s", err);
}

/* ---- NaCl box against real DERP and disco bytes ---- */

static void box_derp_client_and_server_info(void)
{
    if (!fx_derp)
        SKIP("fixture %s not found", fx_derp_path);
    json_t *keys = json_object_get(fx_derp, "keys");
    uint8_t derper_priv[32], derper_pub[32];
    CHECK(fx_key(fx_str(keys, "derper_private"), derper_priv) == 0, "derper key");
    CHECK(fx_key(fx_str(keys, "derper_public"), derper_pub) == 0, "derper pub");
    int boxes = 0;
    size_t i, j;
    json_t *conn, *frame;
    json_array_foreach(json_object_get(fx_derp, "connections"), i, conn) {
        uint8_t client_priv[32], client_pub[32];
        CHECK(fx_key(fx_str(conn, "client_private"), client_priv) == 0, "client key %zu", i);
        CHECK(fx_key(fx_str(conn, "client_public"), client_pub) == 0, "client pub %zu", i);
        json_array_foreach(json_object_get(conn, "frames"), j, frame) {
            const char *box_hex = fx_str(frame, "box_hex");
            if (!*box_hex)
                continue;
            /* The frame carries nonce || tag || ciphertext: exactly our sealed layout. */
            uint8_t sealed[512], opened[512], again[512];
            long nlen = fx_hex(fx_str(frame, "nonce_hex"), sealed, 24);
            long blen = fx_hex(box_hex, sealed + 24, sizeof sealed - 24);
            CHECK(nlen == 24 && blen > 16, "hex in frame %zu/%zu", i, j);
            size_t slen = 24 + (size_t)blen;
            const char *plaintext = fx_str(frame, "plaintext");
            size_t plen = slen - HW_BOX_OVERHEAD;
            CHECK_INT(plen, strlen(plaintext));
            bool c2s = strcmp(fx_str(frame, "dir"), "c2s") == 0;

            /* The receiver opens with its private key and the sender's public key. */
            const uint8_t *rx_priv = c2s ? derper_priv : client_priv;
            const uint8_t *tx_pub = c2s ? client_pub : derper_pub;
            CHECK(hw_box_open(opened, sealed, slen, tx_pub, rx_priv) == 0, "open %zu/%zu", i, j);
            CHECK_MEM(opened, plaintext, plen);

            /* And the sender, given the same nonce, produces the same bytes. */
            const uint8_t *tx_priv = c2s ? client_priv : derper_priv;
            const uint8_t *rx_pub = c2s ? derper_pub : client_pub;
            CHECK(hw_box_seal(again, (const uint8_t *)plaintext, plen, sealed, rx_pub, tx_priv) == 0,
                  "seal");
            CHECK_MEM(again, sealed, slen);

            /* Any flipped bit is refused. */
            sealed[slen - 1] ^= 1;
            CHECK(hw_box_open(opened, sealed, slen, tx_pub, rx_priv) < 0, "tampered box opened");
            boxes++;
        }
    }
    CHECK(boxes == 8, "checked %d boxes", boxes);
}

static void box_disco_packets(void)
{
    if (!fx_disco)
        SKIP("fixture %s not found", fx_disco_path);
    json_t *keys = json_object_get(fx_disco, "keys");
    size_t i;
    json_t *msg;
    int opened_count = 0;
    json_array_foreach(json_object_get(fx_disco, "messages"), i, msg) {
        char name[32];
        snprintf(name, sizeof name, "fx-node%s", fx_str(msg, "receiver") + 1);
        uint8_t rx_priv[32], rx_pub[32];
        json_t *rx = json_object_get(keys, name);
        CHECK(rx && fx_key(fx_str(rx, "disco_private"), rx_priv) == 0, "receiver %s", name);
        CHECK(fx_key(fx_str(rx, "disco_public"), rx_pub) == 0, "receiver pub");

        uint8_t packet[2048], plain[2048], want[2048], again[2048];
        long plen = fx_hex(fx_str(msg, "packet_hex"), packet, sizeof packet);
        long wlen = fx_hex(fx_str(msg, "plaintext_hex"), want, sizeof want);
        CHECK(plen >= 62 + 16 && wlen >= 0, "packet %zu", i);
        CHECK(memcmp(packet, "TS\xf0\x9f\x92\xac", 6) == 0, "disco magic %zu", i);

        /* The sender's disco key travels in the clear right after the magic. */
        const uint8_t *sender = packet + 6;
        uint8_t sender_want[32];
        CHECK(fx_key(fx_str(msg, "sender_disco_public"), sender_want) == 0, "sender");
        CHECK_MEM(sender, sender_want, 32);

        uint8_t shared[32];
        CHECK(hw_box_shared(shared, sender, rx_priv) == 0, "shared %zu", i);
        size_t slen = (size_t)plen - 38;
        CHECK_INT(slen - HW_BOX_OVERHEAD, wlen);
        CHECK(hw_box_open_shared(plain, packet + 38, slen, shared) == 0, "open packet %zu", i);
        CHECK_MEM(plain, want, (size_t)wlen);
        CHECK(hw_box_open(plain, packet + 38, slen, sender, rx_priv) == 0, "unshared open %zu", i);

        /* Sealing it again with the packet's nonce gives the packet back. */
        char sname[32];
        snprintf(sname, sizeof sname, "fx-node%s", fx_str(msg, "sender") + 1);
        uint8_t tx_priv[32], tx_shared[32];
        CHECK(fx_key(fx_str(json_object_get(keys, sname), "disco_private"), tx_priv) == 0, "sender key");
        CHECK(hw_box_shared(tx_shared, rx_pub, tx_priv) == 0, "tx shared");
        CHECK_MEM(tx_shared, shared, 32);
        CHECK(hw_box_seal_shared(again, want, (size_t)wlen, packet + 38, tx_shared) == 0, "seal");
        CHECK_MEM(again, packet + 38, slen);
        sodium_memzero(shared, sizeof shared);
        opened_count++;
    }
    CHECK(opened_count == 140, "opened %d disco packets", opened_count);
}

static void box_round_trip_and_garbage(void)
{
    uint8_t a[32], b[32], pa[32], pb[32];
    hw_key_generate(a);
    hw_key_generate(b);
    hw_key_public(a, pa);
    hw_key_public(b, pb);
    const uint8_t msg[] = "{\"version\":2}";
    uint8_t sealed[sizeof msg + HW_BOX_OVERHEAD], sealed2[sizeof msg + HW_BOX_OVERHEAD],
        out[sizeof msg];
    CHECK(hw_box_seal(sealed, msg, sizeof msg, NULL, pb, a) == 0, "seal");
    CHECK(hw_box_seal(sealed2, msg, sizeof msg, NULL, pb, a) == 0, "seal 2");
    CHECK(memcmp(sealed, sealed2, 24) != 0, "random nonces repeat");
    CHECK(hw_box_open(out, sealed, sizeof sealed, pa, b) == 0, "open");
    CHECK_MEM(out, msg, sizeof msg);
    /* Wrong key, short input, a box of only nonce+tag (empty message). */
    CHECK(hw_box_open(out, sealed, sizeof sealed, pb, b) < 0, "wrong key opened");
    CHECK(hw_box_open(out, sealed, HW_BOX_OVERHEAD - 1, pa, b) < 0, "short opened");
    CHECK(hw_box_open_shared(out, sealed, 10, pa) < 0, "short shared opened");
    uint8_t empty_box[HW_BOX_OVERHEAD];
    CHECK(hw_box_seal(empty_box, NULL, 0, NULL, pb, a) == 0, "seal empty");
    CHECK(hw_box_open(out, empty_box, sizeof empty_box, pa, b) == 0, "open empty");
}

int main(void)
{
    fx_noise = fx_load("noise-handshake.json", fx_noise_path, sizeof fx_noise_path);
    fx_map = fx_load("real-client-map.json", fx_map_path, sizeof fx_map_path);
    fx_derp = fx_load("derp-session.json", fx_derp_path, sizeof fx_derp_path);
    fx_disco = fx_load("disco.json", fx_disco_path, sizeof fx_disco_path);
    make_tmpdir();

    RUN(text_forms_round_trip);
    RUN(text_forms_accept_uppercase);
    RUN(text_forms_reject_malformed);
    RUN(zero_key);
    RUN(generate_clamps_and_differs);
    RUN(dh_refuses_low_order_points);
    RUN(fixture_key_pairs);
    RUN(private_key_file_round_trip);
    RUN(private_key_file_errors);
    RUN(private_key_load_or_create);
    RUN(box_derp_client_and_server_info);
    RUN(box_disco_packets);
    RUN(box_round_trip_and_garbage);

    remove_tmpdir();
    json_decref(fx_noise);
    json_decref(fx_map);
    json_decref(fx_derp);
    json_decref(fx_disco);
    return TEST_MAIN_END();
}
