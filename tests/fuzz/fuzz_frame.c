/* libFuzzer target: a byte stream cut into frames as kmsd's transport does (common/kms_frame.c), each decoded as a request. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kms.pb-c.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "kms_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The first two bytes pick the frame cap (1 KiB to 64 KiB, as max_frame
 * may); the rest is what a peer sent. Frames are taken off the front while
 * complete, the announced length is checked before anything else, and every
 * payload goes through unpack and kms_wire_request_check like rpc_on_frame.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2) {
    return 0;
  }
  size_t cap = 1024 + (((size_t)data[0] << 8 | data[1]) % (63u * 1024u + 1));
  const uint8_t *p = data + 2;
  size_t left = size - 2;
  for (;;) {
    size_t plen = 0;
    int r = kms_frame_peek(p, left, cap, &plen);
    if (r == KMS_ERR_TRUNCATED) {
      if (left >= KMS_FRAME_HDR_LEN) {
        __builtin_trap(); /* a whole header is never "truncated" */
      }
      return 0;
    }
    if (r == KMS_ERR_FRAME_TOO_LARGE) {
      if (left < KMS_FRAME_HDR_LEN) {
        __builtin_trap();
      }
      return 0; /* kmsd answers and closes */
    }
    if (r != KMS_OK || plen > cap) {
      __builtin_trap();
    }
    if (left - KMS_FRAME_HDR_LEN < plen) {
      return 0; /* waits for the rest */
    }
    uint8_t hdr[KMS_FRAME_HDR_LEN];
    kms_frame_put_header(hdr, (uint32_t)plen);
    if (memcmp(hdr, p, sizeof(hdr)) != 0) {
      __builtin_trap(); /* the header says what peek read */
    }
    Tkms__Request *req = tkms__request__unpack(NULL, plen, p + KMS_FRAME_HDR_LEN);
    if (req != NULL) {
      const char *why = "";
      r = kms_wire_request_check(req, &why);
      if (r != KMS_OK && (why == NULL || why[0] == '\0')) {
        __builtin_trap(); /* every refusal names its reason */
      }
      tkms__request__free_unpacked(req, NULL);
    }
    p += KMS_FRAME_HDR_LEN + plen;
    left -= KMS_FRAME_HDR_LEN + plen;
  }
}
