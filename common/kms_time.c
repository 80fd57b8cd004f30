/* Millisecond clocks: one implementation instead of a copy per module. */
#include "kms_time.h"

#include <stdlib.h>
#include <string.h>
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

int
kms_time_parse(const char *s, int64_t *out_ms)
{
  struct tm tm, back;
  const char *end = NULL;

  if (s == NULL || s[0] == '\0') {
    return -1;
  }
  if (strspn(s, "0123456789") == strlen(s) && strlen(s) <= 15) {
    *out_ms = (int64_t)strtoll(s, NULL, 10);
    return 0;
  }
  memset(&tm, 0, sizeof(tm));
  end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == NULL || *end != '\0') {
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%d", &tm);
  }
  if (end == NULL || *end != '\0') {
    return -1;
  }
  time_t t = timegm(&tm);
  /* timegm normalises 02-31 to 03-03: a date that does not come back is not a date. */
  if (t < 0 || gmtime_r(&t, &back) == NULL || back.tm_mday != tm.tm_mday ||
      back.tm_mon != tm.tm_mon || back.tm_year != tm.tm_year) {
    return -1;
  }
  *out_ms = (int64_t)t * 1000;
  return 0;
}
