/* Token buckets (ratelimit.h). */
#include "common/ratelimit.h"

#include <math.h>

void hw_bucket_init(struct hw_bucket *b)
{
    b->tokens = 0;
    b->at_ms = INT64_MIN;
}

double hw_bucket_level(const struct hw_bucket *b, double rate, double burst, int64_t now_ms)
{
    if (b->at_ms == INT64_MIN)
        return burst;
    double t = b->tokens;
    if (now_ms > b->at_ms)
        t += (double)(now_ms - b->at_ms) * rate / 1000.0;
    return t > burst ? burst : t;
}

static void advance(struct hw_bucket *b, double rate, double burst, int64_t now_ms)
{
    b->tokens = hw_bucket_level(b, rate, burst, now_ms);
    if (b->at_ms == INT64_MIN || now_ms > b->at_ms)
        b->at_ms = now_ms;
}

bool hw_bucket_allow(struct hw_bucket *b, double rate, double burst, double n, int64_t now_ms)
{
    if (isinf(rate) && rate > 0)
        return true;
    advance(b, rate, burst, now_ms);
    if (b->tokens < n)
        return false;
    b->tokens -= n;
    return true;
}

int64_t hw_bucket_reserve(struct hw_bucket *b, double rate, double burst, double n, int64_t now_ms)
{
    if (isinf(rate) && rate > 0)
        return 0;
    if (n > burst)
        return -1;
    advance(b, rate, burst, now_ms);
    if (b->tokens >= n) {
        b->tokens -= n;
        return 0;
    }
    if (rate <= 0)
        return -1;
    b->tokens -= n;
    /* Round up: acting a millisecond early would overdraw the bucket. */
    return (int64_t)ceil(-b->tokens * 1000.0 / rate);
}
