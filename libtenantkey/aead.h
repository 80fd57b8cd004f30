/* AES-256-GCM (96-bit IV, 128-bit tag) over OpenSSL EVP: the AEAD under every envelope. */
#ifndef TK_AEAD_H
#define TK_AEAD_H

#include <stddef.h>
#include <stdint.h>

/*
 * Internal to libtenantkey (hidden visibility): not part of tenantkey.h.
 *
 * Only one parameter set is accepted: a 32-byte key, a 12-byte IV and a
 * 16-byte tag. The IV and tag lengths are nevertheless passed explicitly so
 * that a caller (or a test vector) with any other size is refused with
 * KMS_ERR_INVALID_ARGUMENT instead of being silently truncated or padded.
 *
 * All functions return KMS_OK or a negative KMS_ERR_* code (common/kms_err.h).
 * A failed tag check is KMS_ERR_DECRYPT, whatever the cause, and the
 * plaintext output is wiped. Lengths are limited to TK_AEAD_MAX_PT_LEN
 * (the GCM limit, 2^36 - 32 bytes); AAD to TK_AEAD_MAX_AAD_LEN.
 *
 * In-place operation (out == in, exactly) is supported; any other overlap
 * of input and output is not.
 */

#define TK_AEAD_KEY_LEN 32
#define TK_AEAD_IV_LEN 12
#define TK_AEAD_TAG_LEN 16
#define TK_AEAD_MAX_PT_LEN ((UINT64_C(1) << 36) - 32)
#define TK_AEAD_MAX_AAD_LEN ((UINT64_C(1) << 32) - 1)

/*
 * tk_aead is a keyed AES-256-GCM context: the key schedule and the
 * EVP_CIPHER_CTX are set up once by tk_aead_new; each message then only sets
 * its IV. Use it when sealing or opening many messages under one key (the
 * Cobblestone chunks). Not safe for concurrent use from several threads: one
 * tk_aead per thread.
 */
typedef struct tk_aead tk_aead;

/*
 * tk_aead_new returns, in |*out|, a context keyed with the 32-byte |key|.
 * |key_len| must be TK_AEAD_KEY_LEN (else KMS_ERR_INVALID_ARGUMENT).
 * Returns KMS_OK, KMS_ERR_ALLOC or KMS_ERR_INTERNAL. The caller frees the
 * context with tk_aead_free. The key bytes are not retained outside the
 * OpenSSL key schedule.
 */
int tk_aead_new(tk_aead **out, const uint8_t *key, size_t key_len);

/* tk_aead_free wipes the key schedule and frees |a|. NULL is a no-op. */
void tk_aead_free(tk_aead *a);

/*
 * tk_aead_ctx_seal encrypts |pt_len| bytes of |pt| under |a| with the IV
 * |iv| and additional data |aad|, writing |pt_len| bytes of ciphertext to
 * |out_ct| and the tag to |out_tag|. |iv_len| must be 12 and |tag_len| 16.
 * WARNING: an IV must never repeat under one key; GCM loses both
 * confidentiality and authenticity if it does.
 * On failure |out_ct| and |out_tag| are wiped.
 */
int tk_aead_ctx_seal(tk_aead *a, const uint8_t *iv, size_t iv_len,
                     const uint8_t *aad, size_t aad_len,
                     const uint8_t *pt, size_t pt_len,
                     uint8_t *out_ct, uint8_t *out_tag, size_t tag_len);

/*
 * tk_aead_ctx_open decrypts |ct_len| bytes of |ct| under |a| into |out_pt|
 * (|ct_len| bytes) and checks |tag| (constant time, inside OpenSSL).
 * Returns KMS_OK, KMS_ERR_DECRYPT if the tag does not verify (|out_pt| is
 * then wiped), KMS_ERR_INVALID_ARGUMENT for a bad size.
 */
__attribute__((warn_unused_result))
int tk_aead_ctx_open(tk_aead *a, const uint8_t *iv, size_t iv_len,
                     const uint8_t *aad, size_t aad_len,
                     const uint8_t *ct, size_t ct_len,
                     const uint8_t *tag, size_t tag_len, uint8_t *out_pt);

/*
 * tk_aead_seal is the one-shot tk_aead_ctx_seal with a 32-byte |key|.
 * (It builds and frees a context per call: prefer tk_aead_new for many
 * messages under one key.)
 */
int tk_aead_seal(const uint8_t key[TK_AEAD_KEY_LEN], const uint8_t *iv,
                 size_t iv_len, const uint8_t *aad, size_t aad_len,
                 const uint8_t *pt, size_t pt_len, uint8_t *out_ct,
                 uint8_t *out_tag, size_t tag_len);

/*
 * tk_aead_open is the one-shot tk_aead_ctx_open with a 32-byte |key|.
 * Returns KMS_ERR_DECRYPT (and wipes |out_pt|) if authentication fails.
 */
__attribute__((warn_unused_result))
int tk_aead_open(const uint8_t key[TK_AEAD_KEY_LEN], const uint8_t *iv,
                 size_t iv_len, const uint8_t *aad, size_t aad_len,
                 const uint8_t *ct, size_t ct_len, const uint8_t *tag,
                 size_t tag_len, uint8_t *out_pt);

#endif
