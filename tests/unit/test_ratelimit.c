/* The token bucket behind the relay's per-client and accept limits (common/ratelimit.h),
 * checked against the numbers Go's x/time/rate gives for the same calls. */
#include <math.h>

#include "common/ratelimit.h"
#include "testlib.h"

static void starts_full_then_refills_at_rate(void)
{
    struct hw_bucket b;
    hw_bucket_init(&b);
    /* 1000 tokens/s, burst 5000: five 1000-token takes at once, the sixth waits. */
    for (int i = 0; i < 5; i++)
        CHECK(hw_bucket_allow(&b, 1000, 5000, 1000, 100), "take %d of the burst", i);
    CHECK(!hw_bucket_allow(&b, 1000, 5000, 1000, 100), "burst spent");
    CHECK(!hw_bucket_allow(&b, 1000, 5000, 1000, 1099), "999 ms refill 999 tokens");
    CHECK(hw_bucket_allow(&b, 1000, 5000, 1000, 1100), "1000 ms later one more");
    /* A long idle spell fills it only up to the burst. */
    CHECK(fabs(hw_bucket_level(&b, 1000, 5000, 1000000) - 5000) < 1e-9, "capped at burst");
}

static void reserve_goes_into_debt_and_says_how_long(void)
{
    struct hw_bucket b;
    hw_bucket_init(&b);
    CHECK_INT(hw_bucket_reserve(&b, 1000, 2000, 2000, 0), 0);
    /* Empty: 500 tokens are 500 ms away. */
    CHECK_INT(hw_bucket_reserve(&b, 1000, 2000, 500, 0), 500);
    /* The debt stacks: another 500 behind it is 1000 ms away. */
    CHECK_INT(hw_bucket_reserve(&b, 1000, 2000, 500, 0), 1000);
    CHECK(fabs(hw_bucket_level(&b, 1000, 2000, 0) + 1000) < 1e-9, "in debt by 1000");
    /* Paid off after a second: one more token is a millisecond away. */
    CHECK_INT(hw_bucket_reserve(&b, 1000, 2000, 1, 1000), 1);
    /* A fraction of a millisecond rounds up. */
    struct hw_bucket c;
    hw_bucket_init(&c);
    CHECK_INT(hw_bucket_reserve(&c, 3000, 2000, 2000, 0), 0);
    CHECK_INT(hw_bucket_reserve(&c, 3000, 2000, 1, 0), 1);
    /* More than the burst can never be had, and nothing is taken. */
    hw_bucket_init(&c);
    CHECK_INT(hw_bucket_reserve(&c, 1000, 2000, 2001, 0), -1);
    CHECK(hw_bucket_allow(&c, 1000, 2000, 2000, 0), "still full after the refusal");
}

static void infinite_and_zero_rates(void)
{
    struct hw_bucket b;
    hw_bucket_init(&b);
    for (int i = 0; i < 1000; i++)
        CHECK(hw_bucket_allow(&b, INFINITY, 0, 1, 0), "infinite rate allows everything");
    CHECK_INT(hw_bucket_reserve(&b, INFINITY, 0, 1e9, 0), 0);
    /* Rate 0: the burst, once, then nothing ever again. */
    hw_bucket_init(&b);
    CHECK(hw_bucket_allow(&b, 0, 2, 1, 0), "first");
    CHECK(hw_bucket_allow(&b, 0, 2, 1, 5), "second");
    CHECK(!hw_bucket_allow(&b, 0, 2, 1, 1000000), "no refill at rate 0");
    CHECK_INT(hw_bucket_reserve(&b, 0, 2, 1, 1000000), -1);
    /* Burst 0 with a finite rate allows nothing. */
    hw_bucket_init(&b);
    CHECK(!hw_bucket_allow(&b, 10, 0, 1, 0), "burst 0");
}

static void clock_going_backwards_is_harmless(void)
{
    struct hw_bucket b;
    hw_bucket_init(&b);
    CHECK(hw_bucket_allow(&b, 10, 10, 10, 5000), "spend all");
    CHECK(!hw_bucket_allow(&b, 10, 10, 1, 4000), "earlier time adds nothing");
    CHECK(hw_bucket_allow(&b, 10, 10, 1, 5100), "100 ms at 10/s is one token");
}

int main(void)
{
    RUN(starts_full_then_refills_at_rate);
    RUN(reserve_goes_into_debt_and_says_how_long);
    RUN(infinite_and_zero_rates);
    RUN(clock_going_backwards_is_harmless);
    return TEST_MAIN_END();
}
