/* libFuzzer target: the envelope header parser (libtenantkey/envelope.h), formats 1 and 2, strict and canonical, and the body's context. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "kms_err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * A header comes from a file or a stream an attacker may have written. It is
 * either refused with the one opaque code, or it parses and re-encodes to
 * exactly the same bytes (the parser accepts only the canonical form).
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static struct tk_env_header h; /* ~90 KiB: not on the stack */
  static uint8_t again[TK_ENV_HEADER_MAX];
  static uint8_t body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t declared = 0, n = 0;
  const char *why = NULL;

  int r = tk_env_header_peek_len(&declared, data, size);
  if (r != KMS_OK && r != KMS_ERR_TRUNCATED && r != KMS_ERR_DECRYPT) {
    __builtin_trap();
  }
  if (r == KMS_OK && (declared < TK_ENV_HEADER_MIN || declared > TK_ENV_HEADER_MAX)) {
    __builtin_trap();
  }
  r = tk_env_header_parse(&h, data, size, &why);
  if (r != KMS_OK) {
    if (r != KMS_ERR_DECRYPT) {
      __builtin_trap(); /* one code for every defect: no oracle */
    }
    return 0;
  }
  if (tk_env_header_encode(again, sizeof(again), &n, &h) != KMS_OK || n != size ||
      memcmp(again, data, n) != 0) {
    __builtin_trap();
  }
  /* Format 1: the body's context is the header; format 2: the header minus H, KEK version, W,
   * wrapped key. */
  size_t cl = 0;
  if (tk_env_body_context(body_ctx, sizeof(body_ctx), &cl, &h) != KMS_OK) {
    __builtin_trap();
  }
  if (h.format == TK_ENV_FORMAT_1
          ? (cl != size || memcmp(body_ctx, data, size) != 0)
          : (cl != size - 2 - 4 - 2 - h.wrapped_len || memcmp(body_ctx, data, 4) != 0)) {
    __builtin_trap();
  }
  const char *session = NULL;
  if (tk_env_header_is_session(&h, &session) && h.format != TK_ENV_FORMAT_1) {
    __builtin_trap(); /* session envelopes are format 1 only */
  }
  return 0;
}
