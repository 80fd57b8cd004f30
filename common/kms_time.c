/* Millisecond clocks: one implementation instead of a copy per module. */
#include "kms_time.h"

#include <time.h>

static int64_t
clock_ms(clockid_t id)
{
  struct timespec ts;
  if (clock_gettime(id, &ts) != 0) {
    return 0;
  }
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
kms_now_ms(void)
{
  return clock_ms(CLOCK_REALTIME);
}

int64_t
kms_mono_ms(void)
{
  return clock_ms(CLOCK_MONOTONIC);
}
