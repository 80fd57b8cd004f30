/* AES-256-GCM with a 96-bit IV and a 128-bit tag, over OpenSSL EVP, with a reusable keyed context. */
#include "aead.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kms_err.h"

/* EVP's update functions take an int length: feed long inputs in pieces. */
#define AEAD_PIECE ((size_t)1 << 30)

struct tk_aead {
  EVP_CIPHER_CTX *ctx;
};

static pthread_once_t cipher_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *cipher_aes256gcm;

/* fetch_cipher fetches AES-256-GCM once per process (an implicit fetch per init costs a lock). */
static void fetch_cipher(void) {
  cipher_aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static const EVP_CIPHER *aead_cipher(void) {
  if (pthread_once(&cipher_once, fetch_cipher) != 0) {
    return NULL;
  }
  return cipher_aes256gcm;
}

/* check_args validates the sizes and pointers shared by seal and open. */
static int check_args(const tk_aead *a, const uint8_t *iv, size_t iv_len,
                      const uint8_t *aad, size_t aad_len, const uint8_t *in,
                      size_t in_len, const uint8_t *out, const uint8_t *tag,
                      size_t tag_len) {
  if (a == NULL || a->ctx == NULL || iv == NULL || tag == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (iv_len != TK_AEAD_IV_LEN || tag_len != TK_AEAD_TAG_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((uint64_t)in_len > TK_AEAD_MAX_PT_LEN ||
      (uint64_t)aad_len > TK_AEAD_MAX_AAD_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((aad_len > 0 && aad == NULL) ||
      (in_len > 0 && (in == NULL || out == NULL))) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

/* feed runs |len| bytes through EVP_CipherUpdate (|out| NULL for AAD). */
static int feed(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in,
                size_t len) {
  while (len > 0) {
    size_t n = len < AEAD_PIECE ? len : AEAD_PIECE;
    int outl = 0;
    if (EVP_CipherUpdate(ctx, out, &outl, in, (int)n) != 1) {
      return KMS_ERR_INTERNAL;
    }
    if (out != NULL && (size_t)outl != n) {
      return KMS_ERR_INTERNAL;
    }
    in += n;
    if (out != NULL) {
      out += n;
    }
    len -= n;
  }
  return KMS_OK;
}

int tk_aead_new(tk_aead **out, const uint8_t *key, size_t key_len) {
  int r = KMS_ERR_INTERNAL;
  tk_aead *a = NULL;
  const EVP_CIPHER *cipher;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (key == NULL || key_len != TK_AEAD_KEY_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((cipher = aead_cipher()) == NULL) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  if ((a = calloc(1, sizeof(*a))) == NULL ||
      (a->ctx = EVP_CIPHER_CTX_new()) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if (EVP_CipherInit_ex(a->ctx, cipher, NULL, key, NULL, 1) != 1) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  *out = a;
  a = NULL;
  r = KMS_OK;
out:
  tk_aead_free(a);
  return r;
}

void tk_aead_free(tk_aead *a) {
  if (a == NULL) {
    return;
  }
  /* EVP_CIPHER_CTX_free cleanses the provider context (key schedule). */
  EVP_CIPHER_CTX_free(a->ctx);
  free(a);
}

int tk_aead_ctx_seal(tk_aead *a, const uint8_t *iv, size_t iv_len,
                     const uint8_t *aad, size_t aad_len,
                     const uint8_t *pt, size_t pt_len,
                     uint8_t *out_ct, uint8_t *out_tag, size_t tag_len) {
  int r;
  int outl = 0;
  uint8_t fin[EVP_MAX_BLOCK_LENGTH];

  if ((r = check_args(a, iv, iv_len, aad, aad_len, pt, pt_len, out_ct,
                      out_tag, tag_len)) != KMS_OK) {
    return r;
  }
  r = KMS_ERR_INTERNAL;
  if (EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, iv, 1) != 1) {
    goto out;
  }
  if ((r = feed(a->ctx, NULL, aad, aad_len)) != KMS_OK ||
      (r = feed(a->ctx, out_ct, pt, pt_len)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_INTERNAL;
  if (EVP_CipherFinal_ex(a->ctx, fin, &outl) != 1 || outl != 0) {
    goto out;
  }
  if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, TK_AEAD_TAG_LEN,
                          out_tag) != 1) {
    goto out;
  }
  r = KMS_OK;
out:
  if (r != KMS_OK) {
    if (pt_len > 0) {
      OPENSSL_cleanse(out_ct, pt_len);
    }
    OPENSSL_cleanse(out_tag, TK_AEAD_TAG_LEN);
  }
  return r;
}

int tk_aead_ctx_open(tk_aead *a, const uint8_t *iv, size_t iv_len,
                     const uint8_t *aad, size_t aad_len,
                     const uint8_t *ct, size_t ct_len,
                     const uint8_t *tag, size_t tag_len, uint8_t *out_pt) {
  int r;
  int outl = 0;
  uint8_t fin[EVP_MAX_BLOCK_LENGTH];
  uint8_t tagbuf[TK_AEAD_TAG_LEN];

  if ((r = check_args(a, iv, iv_len, aad, aad_len, ct, ct_len, out_pt, tag,
                      tag_len)) != KMS_OK) {
    return r;
  }
  /* Copy the tag first: |tag| may sit in the buffer being decrypted in place. */
  memcpy(tagbuf, tag, TK_AEAD_TAG_LEN);
  r = KMS_ERR_INTERNAL;
  if (EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, iv, 0) != 1) {
    goto out;
  }
  if ((r = feed(a->ctx, NULL, aad, aad_len)) != KMS_OK ||
      (r = feed(a->ctx, out_pt, ct, ct_len)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_INTERNAL;
  if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_TAG, TK_AEAD_TAG_LEN,
                          tagbuf) != 1) {
    goto out;
  }
  /* OpenSSL compares the tag in constant time (CRYPTO_memcmp). */
  if (EVP_CipherFinal_ex(a->ctx, fin, &outl) != 1) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  r = KMS_OK;
out:
  if (r != KMS_OK && ct_len > 0) {
    OPENSSL_cleanse(out_pt, ct_len);
  }
  return r;
}

int tk_aead_seal(const uint8_t key[TK_AEAD_KEY_LEN], const uint8_t *iv,
                 size_t iv_len, const uint8_t *aad, size_t aad_len,
                 const uint8_t *pt, size_t pt_len, uint8_t *out_ct,
                 uint8_t *out_tag, size_t tag_len) {
  int r;
  tk_aead *a = NULL;

  /* Refuse bad sizes before keying anything. */
  if (iv_len != TK_AEAD_IV_LEN || tag_len != TK_AEAD_TAG_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = tk_aead_new(&a, key, TK_AEAD_KEY_LEN)) != KMS_OK) {
    goto out;
  }
  r = tk_aead_ctx_seal(a, iv, iv_len, aad, aad_len, pt, pt_len, out_ct,
                       out_tag, tag_len);
out:
  tk_aead_free(a);
  return r;
}

int tk_aead_open(const uint8_t key[TK_AEAD_KEY_LEN], const uint8_t *iv,
                 size_t iv_len, const uint8_t *aad, size_t aad_len,
                 const uint8_t *ct, size_t ct_len, const uint8_t *tag,
                 size_t tag_len, uint8_t *out_pt) {
  int r;
  tk_aead *a = NULL;

  if (iv_len != TK_AEAD_IV_LEN || tag_len != TK_AEAD_TAG_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = tk_aead_new(&a, key, TK_AEAD_KEY_LEN)) != KMS_OK) {
    goto out;
  }
  r = tk_aead_ctx_open(a, iv, iv_len, aad, aad_len, ct, ct_len, tag, tag_len,
                       out_pt);
out:
  tk_aead_free(a);
  return r;
}
