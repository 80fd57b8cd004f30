/* The wrapped-data-key format and the canonical AAD that binds it (docs/PROTOCOL.md). */
#ifndef KMSD_DEKWRAP_H
#define KMSD_DEKWRAP_H

#include <stddef.h>
#include <stdint.h>

#include "kms.pb-c.h"

/*
 * Wrapped data key, format 1 (65 bytes):
 *   offset 0  u8      format = 0x01
 *   offset 1  u32 BE  KEK version
 *   offset 5  12      GCM IV (random)
 *   offset 17 32      ciphertext of the data key
 *   offset 49 16      GCM tag
 * The tenant is not in the blob: it is bound through the AAD.
 */
#define DEKWRAP_FORMAT_V1 0x01
#define DEKWRAP_IV_LEN 12
#define DEKWRAP_KEY_LEN 32
#define DEKWRAP_TAG_LEN 16
#define DEKWRAP_BLOB_LEN (1 + 4 + DEKWRAP_IV_LEN + DEKWRAP_KEY_LEN + DEKWRAP_TAG_LEN)
#define DEKWRAP_AAD_MAX 6144

struct dek_blob {
  uint32_t kek_version;
  uint8_t iv[DEKWRAP_IV_LEN];
  uint8_t ct_tag[DEKWRAP_KEY_LEN + DEKWRAP_TAG_LEN];
};

/* dekwrap_blob_encode writes the DEKWRAP_BLOB_LEN bytes of |b| to |out|. */
void dekwrap_blob_encode(uint8_t out[DEKWRAP_BLOB_LEN], const struct dek_blob *b);

/*
 * dekwrap_blob_parse reads a blob. Any malformation is KMS_ERR_DECRYPT, the
 * same answer as a failed authentication (no oracle).
 */
int dekwrap_blob_parse(struct dek_blob *out, const uint8_t *in, size_t in_len);

/*
 * dekwrap_aad writes the canonical AAD for (tenant, KEK version, context):
 *   "tenantkms/dek/v1" || u8 len || tenant || u32 BE version || u8 n ||
 *   n x (u8 klen || key || u16 BE vlen || value), entries sorted by key bytes.
 * The context must have passed kms_wire_context_ok. Returns KMS_OK or
 * KMS_ERR_INVALID_ARGUMENT if it would not fit |cap|.
 */
int dekwrap_aad(uint8_t *out, size_t cap, size_t *out_len, const char *tenant_id,
                uint32_t kek_version, size_t n_ctx, Tkms__ContextEntry *const *ctx);

#endif
