/* Millisecond clocks shared by kmsd and libtenantkey. */
#ifndef KMS_TIME_H
#define KMS_TIME_H

#include <stdint.h>

/* kms_now_ms returns wall-clock time in ms since the Unix epoch (timestamps); 0 on failure. */
int64_t kms_now_ms(void);

/* kms_mono_ms returns a monotonic time in ms (deadlines, durations); 0 on failure. */
int64_t kms_mono_ms(void);

/*
 * kms_time_parse reads a time given by a person: milliseconds since the epoch,
 * or UTC as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (what kmsctl prints). Dates
 * that do not exist (2026-02-31) are refused. Returns 0 and *out_ms, or -1.
 */
int kms_time_parse(const char *s, int64_t *out_ms);

#endif
