#include "common/strmap.h"
#include "common/util.h"
#include "tests/unit/testlib.h"

static void durations_parse_go_forms(void)
{
    int64_t ms;
    CHECK(hw_parse_duration_ms("30m", &ms) == 0, "30m");
    CHECK_INT(ms, 30 * 60 * 1000);
    CHECK(hw_parse_duration_ms("1h30m", &ms) == 0, "1h30m");
    CHECK_INT(ms, 90 * 60 * 1000);
    CHECK(hw_parse_duration_ms("500ms", &ms) == 0, "500ms");
    CHECK_INT(ms, 500);
    CHECK(hw_parse_duration_ms("90d", &ms) == 0, "90d");
    CHECK_INT(ms, 90LL * 86400 * 1000);
    CHECK(hw_parse_duration_ms("0", &ms) == 0, "0");
    CHECK_INT(ms, 0);
}

static void durations_reject_garbage(void)
{
    int64_t ms;
    CHECK(hw_parse_duration_ms("", &ms) < 0, "empty");
    CHECK(hw_parse_duration_ms("10", &ms) < 0, "no unit");
    CHECK(hw_parse_duration_ms("h", &ms) < 0, "no number");
    CHECK(hw_parse_duration_ms("5x", &ms) < 0, "bad unit");
    CHECK(hw_parse_duration_ms("-5m", &ms) < 0, "negative");
    CHECK(hw_parse_duration_ms("99999999999999999999h", &ms) < 0, "overflow");
}

static void durations_format_round_trip(void)
{
    char buf[64];
    hw_format_duration_ms(90 * 60 * 1000, buf, sizeof buf);
    CHECK_STR(buf, "1h30m");
    hw_format_duration_ms(0, buf, sizeof buf);
    CHECK_STR(buf, "0s");
    hw_format_duration_ms(86400 * 1000LL + 1500, buf, sizeof buf);
    CHECK_STR(buf, "1d1s500ms");
}

static void dns_labels(void)
{
    CHECK(hw_dns_label_problem("default") == NULL, "default is valid");
    CHECK(hw_dns_label_problem("a-1") == NULL, "a-1 is valid");
    CHECK(hw_dns_label_problem("") != NULL, "empty");
    CHECK(hw_dns_label_problem("-a") != NULL, "leading dash");
    CHECK(hw_dns_label_problem("Upper") != NULL, "uppercase");
    CHECK(hw_dns_label_problem("a_b") != NULL, "underscore");
    char long_name[70];
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    CHECK(hw_dns_label_problem(long_name) != NULL, "64 chars");
}

static void hex_round_trip(void)
{
    uint8_t in[4] = {0x00, 0xab, 0x10, 0xff}, out[4];
    char hex[9];
    hw_hex_encode(in, 4, hex);
    CHECK_STR(hex, "00ab10ff");
    CHECK_INT(hw_hex_decode("00AB10ff", out, sizeof out), 4);
    CHECK(memcmp(in, out, 4) == 0, "bytes differ");
    CHECK(hw_hex_decode("abc", out, sizeof out) < 0, "odd length");
    CHECK(hw_hex_decode("zz", out, sizeof out) < 0, "bad digit");
    CHECK(hw_hex_decode("0011223344", out, sizeof out) < 0, "too long");
}

static void strmap_put_get_delete_many(void)
{
    struct hw_strmap m;
    hw_strmap_init(&m);
    char key[32];
    for (long i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "nodekey:%ld", i);
        CHECK(hw_strmap_put(&m, key, (void *)(i + 1)) == NULL, "fresh put %ld", i);
    }
    for (long i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "nodekey:%ld", i);
        CHECK(hw_strmap_del(&m, key) == (void *)(i + 1), "delete %ld", i);
    }
    CHECK_INT(hw_strmap_len(&m), 2500);
    for (long i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "nodekey:%ld", i);
        void *want = (i % 2) ? (void *)(i + 1) : NULL;
        CHECK(hw_strmap_get(&m, key) == want, "get %ld", i);
    }
    /* Re-inserting over tombstones keeps lookups right. */
    for (long i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "nodekey:%ld", i);
        hw_strmap_put(&m, key, (void *)(i + 7));
    }
    snprintf(key, sizeof key, "nodekey:%d", 42);
    CHECK(hw_strmap_get(&m, key) == (void *)49, "re-put");
    CHECK(hw_strmap_put(&m, key, (void *)1) == (void *)49, "replace returns previous");
    hw_strmap_free(&m);
}

int main(void)
{
    RUN(strmap_put_get_delete_many);
    RUN(durations_parse_go_forms);
    RUN(durations_reject_garbage);
    RUN(durations_format_round_trip);
    RUN(dns_labels);
    RUN(hex_round_trip);
    return TEST_MAIN_END();
}
