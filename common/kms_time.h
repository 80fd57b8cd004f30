/* Millisecond clocks shared by kmsd and libtenantkey. */
#ifndef KMS_TIME_H
#define KMS_TIME_H

#include <stdint.h>

/* kms_now_ms returns wall-clock time in ms since the Unix epoch (timestamps); 0 on failure. */
int64_t kms_now_ms(void);

/* kms_mono_ms returns a monotonic time in ms (deadlines, durations); 0 on failure. */
int64_t kms_mono_ms(void);

#endif
