/* clock.h - the broker's one monotonic clock (uptimes, connection ages, slow-log
 * durations, shutdown deadlines, persistence retry timers). CLOCK_MONOTONIC, because
 * none of these may jump when the wall clock is set. */
#ifndef MPB_CLOCK_H
#define MPB_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Seconds since an arbitrary fixed point. */
static inline double mpb_mono_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Microseconds since the same point. */
static inline uint64_t mpb_mono_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

#endif
