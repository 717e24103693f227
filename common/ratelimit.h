#ifndef HW_COMMON_RATELIMIT_H
#define HW_COMMON_RATELIMIT_H

/* A token bucket with the semantics of Go's golang.org/x/time/rate, which derper uses
 * for its limits: it starts full, refills at `rate` tokens per second up to `burst`,
 * an infinite rate allows everything and a rate of 0 allows only the first `burst`.
 * Two words per bucket; rate and burst live with the caller so one setting serves
 * many buckets. Times are monotonic milliseconds. */

#include <stdbool.h>
#include <stdint.h>

struct hw_bucket {
    double tokens;
    int64_t at_ms;     /* when tokens was last brought up to date; INT64_MIN = never (full) */
};

/* A full bucket. */
void hw_bucket_init(struct hw_bucket *b);

/* Takes n tokens if the bucket holds them now (rate.Limiter.AllowN). */
bool hw_bucket_allow(struct hw_bucket *b, double rate, double burst, double n, int64_t now_ms);

/* Takes n tokens now even if that leaves the bucket in debt (rate.Limiter.ReserveN)
 * and returns how many milliseconds must pass before the caller may act: 0 when the
 * tokens were there, -1 when they never will be (n > burst, or rate 0 and too few
 * left; nothing is taken then). */
int64_t hw_bucket_reserve(struct hw_bucket *b, double rate, double burst, double n, int64_t now_ms);

/* The tokens the bucket would hold at now_ms (may be negative while in debt). */
double hw_bucket_level(const struct hw_bucket *b, double rate, double burst, int64_t now_ms);

#endif
