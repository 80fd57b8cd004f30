/* Frame header encoding and the size check that precedes any allocation. */
#include "kms_frame.h"

#include "kms_err.h"

int
kms_frame_peek(const uint8_t *buf, size_t avail, size_t max_payload,
               size_t *out_payload_len)
{
  *out_payload_len = 0;
  if (avail < KMS_FRAME_HDR_LEN) {
    return KMS_ERR_TRUNCATED;
  }
  uint32_t len = ((uint32_t)buf[0] << 24) | ((uint32_t)buf[1] << 16) |
                 ((uint32_t)buf[2] << 8) | (uint32_t)buf[3];
  if (len > max_payload || len > KMS_FRAME_MAX_HARD) {
    return KMS_ERR_FRAME_TOO_LARGE;
  }
  *out_payload_len = len;
  return KMS_OK;
}

void
kms_frame_put_header(uint8_t out[KMS_FRAME_HDR_LEN], uint32_t len)
{
  out[0] = (uint8_t)(len >> 24);
  out[1] = (uint8_t)(len >> 16);
  out[2] = (uint8_t)(len >> 8);
  out[3] = (uint8_t)len;
}
