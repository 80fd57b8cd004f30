/* Start-up known-answer tests: published vectors through OpenSSL and through the HSM, before kmsd serves. */
#include "selftest.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/x509.h>

#include "kms_err.h"

/*
 * Vectors are compiled in, so nothing on disk can change what "right" means.
 * GCM: "The Galois/Counter Mode of Operation" (McGrew, Viega), test case 16,
 * AES-256 with AAD, as in NIST SP 800-38D's validation set.
 */
static const uint8_t gcm_key[32] = {
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30, 0x83, 0x08,
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30, 0x83, 0x08};
static const uint8_t gcm_iv[12] = {0xca, 0xfe, 0xba, 0xbe, 0xfa, 0xce,
                                   0xdb, 0xad, 0xde, 0xca, 0xf8, 0x88};
static const uint8_t gcm_aad[20] = {0xfe, 0xed, 0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed,
                                    0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xab, 0xad, 0xda, 0xd2};
static const uint8_t gcm_pt[60] = {
    0xd9, 0x31, 0x32, 0x25, 0xf8, 0x84, 0x06, 0xe5, 0xa5, 0x59, 0x09, 0xc5, 0xaf, 0xf5, 0x26,
    0x9a, 0x86, 0xa7, 0xa9, 0x53, 0x15, 0x34, 0xf7, 0xda, 0x2e, 0x4c, 0x30, 0x3d, 0x8a, 0x31,
    0x8a, 0x72, 0x1c, 0x3c, 0x0c, 0x95, 0x95, 0x68, 0x09, 0x53, 0x2f, 0xcf, 0x0e, 0x24, 0x49,
    0xa6, 0xb5, 0x25, 0xb1, 0x6a, 0xed, 0xf5, 0xaa, 0x0d, 0xe6, 0x57, 0xba, 0x63, 0x7b, 0x39};
/* Ciphertext followed by the 16-byte tag, as PKCS#11 returns it. */
static const uint8_t gcm_ct_tag[76] = {
    0x52, 0x2d, 0xc1, 0xf0, 0x99, 0x56, 0x7d, 0x07, 0xf4, 0x7f, 0x37, 0xa3, 0x2a, 0x84, 0x42,
    0x7d, 0x64, 0x3a, 0x8c, 0xdc, 0xbf, 0xe5, 0xc0, 0xc9, 0x75, 0x98, 0xa2, 0xbd, 0x25, 0x55,
    0xd1, 0xaa, 0x8c, 0xb0, 0x8e, 0x48, 0x59, 0x0d, 0xbb, 0x3d, 0xa7, 0xb0, 0x8b, 0x10, 0x56,
    0x82, 0x88, 0x38, 0xc5, 0xf6, 0x1e, 0x63, 0x93, 0xba, 0x7a, 0x0a, 0xbc, 0xc9, 0xf6, 0x62,
    0x76, 0xfc, 0x6e, 0xce, 0x0f, 0x4e, 0x17, 0x68, 0xcd, 0xdf, 0x88, 0x53, 0xbb, 0x2d, 0x55, 0x1b};

/* RFC 5649 section 6: both examples use a 192-bit KEK (the RFC has no 256-bit one). */
static const uint8_t kwp_kek[24] = {0x58, 0x40, 0xdf, 0x6e, 0x29, 0xb0, 0x2a, 0xf1,
                                    0xab, 0x49, 0x3b, 0x70, 0x5b, 0xf1, 0x6e, 0xa1,
                                    0xae, 0x83, 0x38, 0xf4, 0xdc, 0xc1, 0x76, 0xa8};
static const uint8_t kwp_key20[20] = {0xc3, 0x7b, 0x7e, 0x64, 0x92, 0x58, 0x43, 0x40, 0xbe, 0xd1,
                                      0x22, 0x07, 0x80, 0x89, 0x41, 0x15, 0x50, 0x68, 0xf7, 0x38};
static const uint8_t kwp_wrapped20[32] = {
    0x13, 0x8b, 0xde, 0xaa, 0x9b, 0x8f, 0xa7, 0xfc, 0x61, 0xf9, 0x77, 0x42, 0xe7, 0x22, 0x48, 0xee,
    0x5a, 0xe6, 0xae, 0x53, 0x60, 0xd1, 0xae, 0x6a, 0x5f, 0x54, 0xf3, 0x73, 0xfa, 0x54, 0x3b, 0x6a};
static const uint8_t kwp_key7[7] = {0x46, 0x6f, 0x72, 0x50, 0x61, 0x73, 0x69};
static const uint8_t kwp_wrapped7[16] = {0xaf, 0xbe, 0xb0, 0xf0, 0x7d, 0xfb, 0xf5, 0x41,
                                         0x92, 0x00, 0xf2, 0xcc, 0xb5, 0x0b, 0xb2, 0x4f};

/* RFC 5869 A.1; the SHA-512 answer for the same inputs is the widely published one. */
static const uint8_t hkdf_salt[13] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                                      0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c};
static const uint8_t hkdf_info[10] = {0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9};
static const uint8_t hkdf_okm256[42] = {
    0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
    0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
    0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65};
static const uint8_t hkdf_okm512[42] = {
    0x83, 0x23, 0x90, 0x08, 0x6c, 0xda, 0x71, 0xfb, 0x47, 0x62, 0x5b, 0xb5, 0xce, 0xb1,
    0x68, 0xe4, 0xc8, 0xe2, 0x6a, 0x1a, 0x16, 0xed, 0x34, 0xd9, 0xfc, 0x7f, 0xe9, 0x2c,
    0x14, 0x81, 0x57, 0x93, 0x38, 0xda, 0x36, 0x2c, 0xb8, 0xd9, 0xf9, 0x25, 0xd7, 0xcb};

static int
fail(char *err, size_t err_len, const char *what)
{
  snprintf(err, err_len, "self-test failed: %s", what);
  return KMS_ERR_INTERNAL;
}

/* One AES-256-GCM pass in software; |enc| 1 encrypts |in| into |out|||tag, 0 checks |tag|. */
static int
sw_gcm(int enc, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
  int r = KMS_ERR_INTERNAL;
  int n = 0, fin = 0;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

  if (ctx == NULL ||
      EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, gcm_key, gcm_iv, enc) != 1 ||
      EVP_CipherUpdate(ctx, NULL, &n, gcm_aad, (int)sizeof(gcm_aad)) != 1 ||
      EVP_CipherUpdate(ctx, out, &n, in, (int)len) != 1) {
    goto out;
  }
  if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1) {
    goto out;
  }
  if (EVP_CipherFinal_ex(ctx, out + n, &fin) != 1) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1) {
    goto out;
  }
  r = KMS_OK;
out:
  EVP_CIPHER_CTX_free(ctx);
  return r;
}

static int
kat_gcm(char *err, size_t err_len)
{
  uint8_t out[sizeof(gcm_pt)], tag[16];

  if (sw_gcm(1, gcm_pt, sizeof(gcm_pt), out, tag) != KMS_OK ||
      CRYPTO_memcmp(out, gcm_ct_tag, sizeof(gcm_pt)) != 0 ||
      CRYPTO_memcmp(tag, gcm_ct_tag + sizeof(gcm_pt), 16) != 0) {
    return fail(err, err_len, "AES-256-GCM encrypt (software) does not give the known answer");
  }
  memcpy(tag, gcm_ct_tag + sizeof(gcm_pt), 16);
  if (sw_gcm(0, gcm_ct_tag, sizeof(gcm_pt), out, tag) != KMS_OK ||
      CRYPTO_memcmp(out, gcm_pt, sizeof(gcm_pt)) != 0) {
    return fail(err, err_len, "AES-256-GCM decrypt (software) does not give the known answer");
  }
  tag[0] ^= 1;
  if (sw_gcm(0, gcm_ct_tag, sizeof(gcm_pt), out, tag) != KMS_ERR_DECRYPT) {
    return fail(err, err_len, "AES-256-GCM (software) accepts a wrong tag");
  }
  return KMS_OK;
}

/* RFC 5649 wrap (|enc| 1) or unwrap of |in|; the answer's length goes to |*out_len|. */
static int
sw_kwp(int enc, const uint8_t *in, size_t len, uint8_t *out, size_t *out_len)
{
  int r = KMS_ERR_INTERNAL;
  int n = 0, fin = 0;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

  *out_len = 0;
  if (ctx == NULL) {
    goto out;
  }
  EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_CipherInit_ex(ctx, EVP_aes_192_wrap_pad(), NULL, kwp_kek, NULL, enc) != 1 ||
      EVP_CipherUpdate(ctx, out, &n, in, (int)len) != 1 ||
      EVP_CipherFinal_ex(ctx, out + n, &fin) != 1) {
    goto out;
  }
  *out_len = (size_t)(n + fin);
  r = KMS_OK;
out:
  EVP_CIPHER_CTX_free(ctx);
  return r;
}

static int
kat_kwp(char *err, size_t err_len)
{
  const struct {
    const uint8_t *key, *wrapped;
    size_t key_len, wrapped_len;
  } v[] = {
      {kwp_key20, kwp_wrapped20, sizeof(kwp_key20), sizeof(kwp_wrapped20)},
      {kwp_key7, kwp_wrapped7, sizeof(kwp_key7), sizeof(kwp_wrapped7)},
  };
  uint8_t out[64];
  size_t n = 0;

  for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    if (sw_kwp(1, v[i].key, v[i].key_len, out, &n) != KMS_OK || n != v[i].wrapped_len ||
        CRYPTO_memcmp(out, v[i].wrapped, n) != 0) {
      return fail(err, err_len, "RFC 5649 key wrap (software) does not give the known answer");
    }
    if (sw_kwp(0, v[i].wrapped, v[i].wrapped_len, out, &n) != KMS_OK || n != v[i].key_len ||
        CRYPTO_memcmp(out, v[i].key, n) != 0) {
      return fail(err, err_len, "RFC 5649 key unwrap (software) does not give the known answer");
    }
  }
  memcpy(out, kwp_wrapped20, sizeof(kwp_wrapped20));
  out[5] ^= 0x10;
  if (sw_kwp(0, out, sizeof(kwp_wrapped20), out + 32, &n) == KMS_OK) {
    return fail(err, err_len, "RFC 5649 key unwrap (software) accepts a changed token");
  }
  return KMS_OK;
}

static int
sw_hkdf(const char *digest, uint8_t *out, size_t len)
{
  int r = KMS_ERR_INTERNAL;
  uint8_t ikm[22];
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
  EVP_KDF_CTX *kctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
  OSSL_PARAM params[5];

  memset(ikm, 0x0b, sizeof(ikm));
  if (kctx == NULL) {
    goto out;
  }
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0);
  params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ikm, sizeof(ikm));
  params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)hkdf_salt,
                                                sizeof(hkdf_salt));
  params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)hkdf_info,
                                                sizeof(hkdf_info));
  params[4] = OSSL_PARAM_construct_end();
  if (EVP_KDF_derive(kctx, out, len, params) != 1) {
    goto out;
  }
  r = KMS_OK;
out:
  EVP_KDF_CTX_free(kctx);
  EVP_KDF_free(kdf);
  return r;
}

static int
kat_hkdf(char *err, size_t err_len)
{
  uint8_t out[42];

  if (sw_hkdf("SHA256", out, sizeof(out)) != KMS_OK ||
      CRYPTO_memcmp(out, hkdf_okm256, sizeof(out)) != 0) {
    return fail(err, err_len, "HKDF-SHA-256 does not give the RFC 5869 answer");
  }
  if (sw_hkdf("SHA512", out, sizeof(out)) != KMS_OK ||
      CRYPTO_memcmp(out, hkdf_okm512, sizeof(out)) != 0) {
    return fail(err, err_len, "HKDF-SHA-512 does not give the known answer");
  }
  return KMS_OK;
}

int
selftest_software(char *err, size_t err_len)
{
  int r;

  if ((r = kat_gcm(err, err_len)) != KMS_OK || (r = kat_kwp(err, err_len)) != KMS_OK ||
      (r = kat_hkdf(err, err_len)) != KMS_OK) {
    return r;
  }
  return KMS_OK;
}

/* ---- Through the HSM ------------------------------------------------------------- */

static int
hsm_gcm_kat(hsm_session *s, char *err, size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  hsm_key key = 0;
  uint8_t ct[sizeof(gcm_ct_tag)], pt[sizeof(gcm_pt)], bad[sizeof(gcm_ct_tag)];

  if (hsm_selftest_key_import(s, gcm_key, sizeof(gcm_key), &key) != KMS_OK) {
    r = fail(err, err_len, "cannot import the AES-GCM test key into the HSM");
    goto out;
  }
  if (hsm_gcm_encrypt(s, key, gcm_iv, gcm_aad, sizeof(gcm_aad), gcm_pt, sizeof(gcm_pt), ct) !=
          KMS_OK ||
      CRYPTO_memcmp(ct, gcm_ct_tag, sizeof(ct)) != 0) {
    r = fail(err, err_len, "AES-256-GCM encrypt in the HSM does not give the known answer");
    goto out;
  }
  if (hsm_gcm_decrypt(s, key, gcm_iv, gcm_aad, sizeof(gcm_aad), gcm_ct_tag, sizeof(gcm_ct_tag),
                      pt) != KMS_OK ||
      CRYPTO_memcmp(pt, gcm_pt, sizeof(pt)) != 0) {
    r = fail(err, err_len, "AES-256-GCM decrypt in the HSM does not give the known answer");
    goto out;
  }
  memcpy(bad, gcm_ct_tag, sizeof(bad));
  bad[sizeof(bad) - 1] ^= 1;
  if (hsm_gcm_decrypt(s, key, gcm_iv, gcm_aad, sizeof(gcm_aad), bad, sizeof(bad), pt) !=
      KMS_ERR_DECRYPT) {
    r = fail(err, err_len, "AES-256-GCM in the HSM accepts a wrong tag");
    goto out;
  }
  r = KMS_OK;
out:
  hsm_kek_unload(s, key);
  return r;
}

/* A throwaway KEK: generated, wrapped under the root (RFC 5649), unwrapped, used, dropped. */
static int
hsm_wrap_round_trip(hsm_session *s, char *err, size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  uint8_t token[HSM_KEY_TOKEN_MAX], ct[sizeof(gcm_ct_tag)], pt[sizeof(gcm_pt)];
  size_t token_len = 0;
  uint32_t mech = 0;
  hsm_key key = 0;

  if (hsm_kek_generate(s, token, &token_len, &mech, NULL) != KMS_OK) {
    r = fail(err, err_len, "generating and wrapping a test KEK in the HSM");
    goto out;
  }
  /* RFC 5649: a 32-byte key wraps to 40 bytes. */
  if (token_len != 40) {
    r = fail(err, err_len, "the HSM's RFC 5649 wrap of a 256-bit key is not 40 bytes");
    goto out;
  }
  if (hsm_kek_load(s, token, token_len, mech, 0, &key) != KMS_OK) {
    r = fail(err, err_len, "unwrapping the test KEK under the root key");
    goto out;
  }
  if (hsm_gcm_encrypt(s, key, gcm_iv, gcm_aad, sizeof(gcm_aad), gcm_pt, sizeof(gcm_pt), ct) !=
          KMS_OK ||
      hsm_gcm_decrypt(s, key, gcm_iv, gcm_aad, sizeof(gcm_aad), ct, sizeof(ct), pt) != KMS_OK ||
      CRYPTO_memcmp(pt, gcm_pt, sizeof(pt)) != 0) {
    r = fail(err, err_len, "AES-GCM round trip under an unwrapped test KEK");
    goto out;
  }
  token[token_len - 1] ^= 1;
  if (hsm_kek_load(s, token, token_len, mech, 0, &key) == KMS_OK) {
    r = fail(err, err_len, "the HSM unwraps a changed key token");
    goto out;
  }
  r = KMS_OK;
out:
  hsm_kek_unload(s, key);
  OPENSSL_cleanse(token, sizeof(token));
  return r;
}

static EVP_PKEY *
public_key(const struct hsm_signing_key *k)
{
  const unsigned char *p = k->pub;

  if (k->type == HSM_SIG_ED25519) {
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, k->pub, k->pub_len);
  }
  return d2i_PUBKEY(NULL, &p, (long)k->pub_len);
}

static bool
verifies(EVP_PKEY *pk, int type, const uint8_t *msg, size_t len, const uint8_t *sig,
         size_t sig_len)
{
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  bool ok = md != NULL &&
            EVP_DigestVerifyInit(md, NULL, type == HSM_SIG_ED25519 ? NULL : EVP_sha256(), NULL,
                                 pk) == 1 &&
            EVP_DigestVerify(md, sig, sig_len, msg, len) == 1;
  EVP_MD_CTX_free(md);
  return ok;
}

static int
hsm_signature(hsm *h, hsm_session *s, const char *id, char *err, size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  struct hsm_signing_key k;
  static const uint8_t msg[] = "tenantkms self-test\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
  uint8_t sig[HSM_SIG_MAX], changed[sizeof(msg)];
  size_t sig_len = 0;
  EVP_PKEY *pk = NULL;
  char why[256] = "";

  if (hsm_signing_key_open(h, id, HSM_SIG_AUTO, &k, why, sizeof(why)) != KMS_OK) {
    snprintf(err, err_len, "self-test failed: checkpoint signing key: %s", why);
    goto out;
  }
  if (hsm_sign(s, &k, msg, sizeof(msg) - 1, sig, &sig_len) != KMS_OK) {
    r = fail(err, err_len, "signing a checkpoint with the HSM key");
    goto out;
  }
  if ((pk = public_key(&k)) == NULL ||
      !verifies(pk, k.type, msg, sizeof(msg) - 1, sig, sig_len)) {
    r = fail(err, err_len, "the HSM's checkpoint signature does not verify with its public key");
    goto out;
  }
  memcpy(changed, msg, sizeof(msg));
  changed[0] ^= 1;
  if (verifies(pk, k.type, changed, sizeof(msg) - 1, sig, sig_len)) {
    r = fail(err, err_len, "a checkpoint signature verifies for a changed checkpoint");
    goto out;
  }
  r = KMS_OK;
out:
  EVP_PKEY_free(pk);
  return r;
}

int
selftest_hsm(hsm *h, const char *sign_key_id, char *err, size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  hsm_session *s = NULL;

  if (hsm_session_open(h, &s) != KMS_OK) {
    r = fail(err, err_len, "cannot open an HSM session");
    goto out;
  }
  if ((r = hsm_gcm_kat(s, err, err_len)) != KMS_OK ||
      (r = hsm_wrap_round_trip(s, err, err_len)) != KMS_OK ||
      (r = hsm_signature(h, s, sign_key_id, err, err_len)) != KMS_OK) {
    goto out;
  }
  r = KMS_OK;
out:
  hsm_session_close(s);
  return r;
}
