/* Cobblestone-256 (c2sp.org/chunked-encryption): key derivation, chunking, streaming and random access. */
#include "cobblestone.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "aead.h"
#include "kms_err.h"
#include "kms_secret.h"

#define COB_PREFIX "c2sp.org/chunked-encryption@v1+"
#define COB_AEAD_NAME "AEAD_AES_256_GCM"
#define COB_PREFIX_LEN (sizeof(COB_PREFIX) - 1)
#define COB_AEAD_NAME_LEN (sizeof(COB_AEAD_NAME) - 1)
#define COB_INFO_FIXED_LEN \
  (COB_PREFIX_LEN + COB_AEAD_NAME_LEN + 1 + TK_COB_SALT_LEN)
#define COB_NONCE_LEN TK_AEAD_IV_LEN
#define COB_OKM_LEN (TK_AEAD_KEY_LEN + COB_NONCE_LEN + TK_COB_COMMIT_LEN)

_Static_assert(TK_COB_TAG_LEN == TK_AEAD_TAG_LEN, "tag sizes");
_Static_assert(TK_COB_KEY_LEN == TK_AEAD_KEY_LEN, "key sizes");
_Static_assert(COB_INFO_FIXED_LEN == 72, "info layout");

/* ---- Key derivation ----------------------------------------------------- */

static pthread_once_t kdf_once = PTHREAD_ONCE_INIT;
static EVP_MAC_CTX *hmac512; /* HMAC-SHA-512 with no key yet: copied per derivation */
static pthread_mutex_t hmac512_mu = PTHREAD_MUTEX_INITIALIZER;

/*
 * fetch_kdf prepares HMAC-SHA-512 once per process. HKDF-Expand is written
 * out over it (RFC 5869, two blocks) instead of EVP_KDF "HKDF": that looked
 * the digest up by name on every message, a fixed cost as large as sealing
 * 4 KiB (docs/PERFORMANCE.md).
 */
static void fetch_kdf(void) {
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                               (char *)"SHA512", 0);
  params[1] = OSSL_PARAM_construct_end();
  hmac512 = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
  if (hmac512 != NULL && EVP_MAC_CTX_set_params(hmac512, params) != 1) {
    EVP_MAC_CTX_free(hmac512);
    hmac512 = NULL;
  }
  EVP_MAC_free(mac);
}

/*
 * cob_keys holds what HKDF-Expand derives for one message: the AEAD context
 * keyed with the message key (the key bytes themselves are wiped at once),
 * the base nonce and the commitment.
 */
struct cob_keys {
  tk_aead *aead;
  uint8_t base_nonce[COB_NONCE_LEN];
  uint8_t commitment[TK_COB_COMMIT_LEN];
};

static void cob_keys_clear(struct cob_keys *k) {
  tk_aead_free(k->aead);
  k->aead = NULL;
  OPENSSL_cleanse(k->base_nonce, sizeof(k->base_nonce));
  OPENSSL_cleanse(k->commitment, sizeof(k->commitment));
}

static int check_key_ctx(const uint8_t *key, size_t key_len,
                         const uint8_t *context, size_t context_len) {
  if (key == NULL || key_len != TK_COB_KEY_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (context_len > TK_COB_MAX_CONTEXT_LEN ||
      (context_len > 0 && context == NULL)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

#define COB_SHA512_LEN 64
_Static_assert(COB_OKM_LEN > COB_SHA512_LEN && COB_OKM_LEN <= 2 * COB_SHA512_LEN,
               "HKDF-Expand runs exactly two blocks");

/*
 * hkdf_expand2 is HKDF-Expand-SHA-512 (RFC 5869 2.3) of |prk| for COB_OKM_LEN
 * bytes: T(1) = HMAC(prk, info || 1), T(2) = HMAC(prk, T(1) || info || 2).
 */
static int hkdf_expand2(uint8_t okm[COB_OKM_LEN], const uint8_t *prk,
                        const uint8_t *info, size_t info_len) {
  static const uint8_t one = 1, two = 2;
  uint8_t t1[COB_SHA512_LEN], t2[COB_SHA512_LEN];
  size_t n1 = 0, n2 = 0;
  int r = KMS_ERR_INTERNAL;

  pthread_mutex_lock(&hmac512_mu);
  EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(hmac512);
  pthread_mutex_unlock(&hmac512_mu);
  if (ctx == NULL) {
    return KMS_ERR_ALLOC;
  }
  /* A second init with no key starts over with the same key. */
  if (EVP_MAC_init(ctx, prk, TK_COB_KEY_LEN, NULL) == 1 &&
      EVP_MAC_update(ctx, info, info_len) == 1 && EVP_MAC_update(ctx, &one, 1) == 1 &&
      EVP_MAC_final(ctx, t1, &n1, sizeof(t1)) == 1 && n1 == sizeof(t1) &&
      EVP_MAC_init(ctx, NULL, 0, NULL) == 1 && EVP_MAC_update(ctx, t1, sizeof(t1)) == 1 &&
      EVP_MAC_update(ctx, info, info_len) == 1 && EVP_MAC_update(ctx, &two, 1) == 1 &&
      EVP_MAC_final(ctx, t2, &n2, sizeof(t2)) == 1 && n2 == sizeof(t2)) {
    memcpy(okm, t1, COB_SHA512_LEN);
    memcpy(okm + COB_SHA512_LEN, t2, COB_OKM_LEN - COB_SHA512_LEN);
    r = KMS_OK;
  }
  EVP_MAC_CTX_free(ctx); /* cleanses its keyed state */
  OPENSSL_cleanse(t1, sizeof(t1));
  OPENSSL_cleanse(t2, sizeof(t2));
  return r;
}

/*
 * Salts come from a per-thread buffer of RAND_bytes output, refilled 32 salts
 * at a time: one RAND_bytes call costs about as much as sealing 1 KiB. Salts
 * are public (each header carries its own), so the buffer holds nothing
 * secret; but a salt must never repeat under one key, so a buffer inherited
 * through fork() is thrown away (the pid it was filled in is kept with it).
 */
#define COB_SALT_POOL (32 * TK_COB_SALT_LEN)
static _Thread_local struct {
  uint8_t bytes[COB_SALT_POOL];
  size_t left;
  pid_t pid;
} salt_pool;

static int cob_new_salt(uint8_t salt[TK_COB_SALT_LEN]) {
  pid_t pid = getpid();
  if (salt_pool.left < TK_COB_SALT_LEN || salt_pool.pid != pid) {
    if (RAND_bytes(salt_pool.bytes, sizeof(salt_pool.bytes)) != 1) {
      salt_pool.left = 0;
      return KMS_ERR_INTERNAL;
    }
    salt_pool.left = sizeof(salt_pool.bytes);
    salt_pool.pid = pid;
  }
  memcpy(salt, salt_pool.bytes + sizeof(salt_pool.bytes) - salt_pool.left,
         TK_COB_SALT_LEN);
  /* Taken bytes are not left behind for a later reader of the buffer. */
  OPENSSL_cleanse(salt_pool.bytes + sizeof(salt_pool.bytes) - salt_pool.left,
                  TK_COB_SALT_LEN);
  salt_pool.left -= TK_COB_SALT_LEN;
  return KMS_OK;
}

/* cob_derive runs HKDF-Expand-SHA-512 for (key, salt, context) into |out|. */
static int cob_derive(struct cob_keys *out, const uint8_t *key,
                      const uint8_t salt[TK_COB_SALT_LEN],
                      const uint8_t *context, size_t context_len) {
  int r = KMS_ERR_INTERNAL;
  uint8_t info[COB_INFO_FIXED_LEN + TK_COB_MAX_CONTEXT_LEN];
  size_t info_len = 0;
  uint8_t okm[COB_OKM_LEN];

  memset(out, 0, sizeof(*out));
  if (context_len > TK_COB_MAX_CONTEXT_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (pthread_once(&kdf_once, fetch_kdf) != 0 || hmac512 == NULL) {
    return KMS_ERR_INTERNAL;
  }
  memcpy(info, COB_PREFIX, COB_PREFIX_LEN);
  info_len += COB_PREFIX_LEN;
  memcpy(info + info_len, COB_AEAD_NAME, COB_AEAD_NAME_LEN);
  info_len += COB_AEAD_NAME_LEN;
  info[info_len++] = 0x00;
  memcpy(info + info_len, salt, TK_COB_SALT_LEN);
  info_len += TK_COB_SALT_LEN;
  if (context_len > 0) {
    memcpy(info + info_len, context, context_len);
    info_len += context_len;
  }

  if ((r = hkdf_expand2(okm, key, info, info_len)) != KMS_OK) {
    goto out;
  }
  if ((r = tk_aead_new(&out->aead, okm, TK_AEAD_KEY_LEN)) != KMS_OK) {
    goto out;
  }
  memcpy(out->base_nonce, okm + TK_AEAD_KEY_LEN, COB_NONCE_LEN);
  memcpy(out->commitment, okm + TK_AEAD_KEY_LEN + COB_NONCE_LEN,
         TK_COB_COMMIT_LEN);
  r = KMS_OK;
out:
  OPENSSL_cleanse(okm, sizeof(okm));
  OPENSSL_cleanse(info, info_len);
  if (r != KMS_OK) {
    cob_keys_clear(out);
  }
  return r;
}

/*
 * cob_check_header derives the keys for the header's salt and compares the
 * commitment in constant time. KMS_ERR_DECRYPT on mismatch.
 */
static int cob_check_header(struct cob_keys *out, const uint8_t *key,
                            const uint8_t header[TK_COB_HEADER_LEN],
                            const uint8_t *context, size_t context_len) {
  int r;

  if ((r = cob_derive(out, key, header, context, context_len)) != KMS_OK) {
    return r;
  }
  if (CRYPTO_memcmp(out->commitment, header + TK_COB_SALT_LEN,
                    TK_COB_COMMIT_LEN) != 0) {
    cob_keys_clear(out);
    return KMS_ERR_DECRYPT;
  }
  return KMS_OK;
}

/* ---- Chunks ------------------------------------------------------------- */

/* chunk_nonce sets |nonce| to base XOR big-endian(|counter|) over 12 bytes. */
static void chunk_nonce(uint8_t nonce[COB_NONCE_LEN],
                        const uint8_t base[COB_NONCE_LEN], uint64_t counter) {
  memcpy(nonce, base, COB_NONCE_LEN);
  for (int i = 0; i < 8; i++) {
    nonce[COB_NONCE_LEN - 1 - i] ^= (uint8_t)(counter >> (8 * i));
  }
}

/*
 * seal_chunk encrypts |len| bytes (<= 16384) as chunk |counter|, writing
 * |len| + 16 bytes to |out|. The caller enforces the 2^38 limit; checked here
 * again as a last line.
 */
static int seal_chunk(const struct cob_keys *k, uint64_t counter, uint8_t *out,
                      const uint8_t *in, size_t len) {
  uint8_t nonce[COB_NONCE_LEN];
  int r;

  if (counter >= TK_COB_MAX_CHUNKS || len > TK_COB_CHUNK_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  chunk_nonce(nonce, k->base_nonce, counter);
  r = tk_aead_ctx_seal(k->aead, nonce, sizeof(nonce), NULL, 0, in, len, out,
                       out + len, TK_COB_TAG_LEN);
  OPENSSL_cleanse(nonce, sizeof(nonce));
  return r;
}

/*
 * open_chunk decrypts the |ct_len|-byte chunk |counter| (16 <= ct_len <=
 * 16400) into |out| (ct_len - 16 bytes; |out| may equal |ct|).
 * KMS_ERR_DECRYPT on any failure, |out| wiped.
 */
static int open_chunk(const struct cob_keys *k, uint64_t counter, uint8_t *out,
                      const uint8_t *ct, size_t ct_len) {
  uint8_t nonce[COB_NONCE_LEN];
  int r;

  if (counter >= TK_COB_MAX_CHUNKS || ct_len < TK_COB_TAG_LEN ||
      ct_len > TK_COB_CT_CHUNK_LEN) {
    return KMS_ERR_DECRYPT;
  }
  chunk_nonce(nonce, k->base_nonce, counter);
  r = tk_aead_ctx_open(k->aead, nonce, sizeof(nonce), NULL, 0, ct,
                       ct_len - TK_COB_TAG_LEN, ct + ct_len - TK_COB_TAG_LEN,
                       TK_COB_TAG_LEN, out);
  OPENSSL_cleanse(nonce, sizeof(nonce));
  if (r != KMS_OK) {
    return KMS_ERR_DECRYPT;
  }
  return KMS_OK;
}

/* ---- Lengths ------------------------------------------------------------ */

uint64_t tk_cob_ciphertext_len(uint64_t pt_len) {
  if (pt_len > TK_COB_MAX_PT_LEN) {
    return 0;
  }
  return TK_COB_HEADER_LEN + (pt_len / TK_COB_CHUNK_LEN) * TK_COB_CT_CHUNK_LEN +
         pt_len % TK_COB_CHUNK_LEN + TK_COB_TAG_LEN;
}

int tk_cob_plaintext_len(uint64_t *out_pt_len, uint64_t ct_len) {
  uint64_t body, full, rem;

  if (out_pt_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_pt_len = 0;
  if (ct_len < TK_COB_HEADER_LEN + TK_COB_TAG_LEN) {
    return KMS_ERR_TRUNCATED;
  }
  body = ct_len - TK_COB_HEADER_LEN;
  full = body / TK_COB_CT_CHUNK_LEN;
  rem = body % TK_COB_CT_CHUNK_LEN;
  /* rem == 0: ends on a chunk boundary; rem < 16: final chunk lacks a tag. */
  if (rem < TK_COB_TAG_LEN) {
    return KMS_ERR_TRUNCATED;
  }
  if (full >= TK_COB_MAX_CHUNKS) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_pt_len = full * TK_COB_CHUNK_LEN + (rem - TK_COB_TAG_LEN);
  return KMS_OK;
}

/* ---- One-shot ----------------------------------------------------------- */

int tk_cob_encrypt_with_salt(uint8_t *out_ct, size_t out_cap,
                             size_t *out_ct_len, const uint8_t *key,
                             size_t key_len,
                             const uint8_t salt[TK_COB_SALT_LEN],
                             const uint8_t *context, size_t context_len,
                             const uint8_t *pt, size_t pt_len) {
  int r;
  struct cob_keys k = {0};
  uint64_t ct_len = 0;
  uint64_t counter = 0;
  size_t in_off = 0, out_off;

  if (out_ct_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_ct_len = 0;
  if ((r = check_key_ctx(key, key_len, context, context_len)) != KMS_OK) {
    return r;
  }
  if (salt == NULL || out_ct == NULL || (pt_len > 0 && pt == NULL)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((ct_len = tk_cob_ciphertext_len(pt_len)) == 0 || ct_len > out_cap) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = cob_derive(&k, key, salt, context, context_len)) != KMS_OK) {
    goto out;
  }
  memcpy(out_ct, salt, TK_COB_SALT_LEN);
  memcpy(out_ct + TK_COB_SALT_LEN, k.commitment, TK_COB_COMMIT_LEN);
  out_off = TK_COB_HEADER_LEN;
  /* Full chunks, then always one short final chunk (maybe empty). */
  for (;;) {
    size_t n = pt_len - in_off;
    if (n > TK_COB_CHUNK_LEN) {
      n = TK_COB_CHUNK_LEN;
    }
    if ((r = seal_chunk(&k, counter, out_ct + out_off,
                        n > 0 ? pt + in_off : NULL, n)) != KMS_OK) {
      goto out;
    }
    in_off += n;
    out_off += n + TK_COB_TAG_LEN;
    counter++;
    if (n < TK_COB_CHUNK_LEN) {
      break;
    }
  }
  if (out_off != ct_len) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  *out_ct_len = (size_t)ct_len;
  r = KMS_OK;
out:
  cob_keys_clear(&k);
  if (r != KMS_OK) {
    OPENSSL_cleanse(out_ct, (size_t)ct_len);
  }
  return r;
}

int tk_cob_encrypt(uint8_t *out_ct, size_t out_cap, size_t *out_ct_len,
                   const uint8_t *key, size_t key_len,
                   const uint8_t *context, size_t context_len,
                   const uint8_t *pt, size_t pt_len) {
  uint8_t salt[TK_COB_SALT_LEN];
  int r;

  if (out_ct_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_ct_len = 0;
  if (cob_new_salt(salt) != KMS_OK) {
    return KMS_ERR_INTERNAL;
  }
  r = tk_cob_encrypt_with_salt(out_ct, out_cap, out_ct_len, key, key_len,
                               salt, context, context_len, pt, pt_len);
  OPENSSL_cleanse(salt, sizeof(salt));
  return r;
}

int tk_cob_decrypt(uint8_t *out_pt, size_t out_cap, size_t *out_pt_len,
                   const uint8_t *key, size_t key_len,
                   const uint8_t *context, size_t context_len,
                   const uint8_t *ct, size_t ct_len) {
  int r;
  struct cob_keys k = {0};
  uint64_t pt_len64 = 0;
  size_t pt_len = 0, pt_off = 0, ct_off = TK_COB_HEADER_LEN;
  uint64_t counter = 0;

  if (out_pt_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_pt_len = 0;
  if ((r = check_key_ctx(key, key_len, context, context_len)) != KMS_OK) {
    return r;
  }
  if (ct == NULL && ct_len > 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = tk_cob_plaintext_len(&pt_len64, ct_len)) != KMS_OK) {
    return r;
  }
  pt_len = (size_t)pt_len64; /* < ct_len, so it fits */
  if (pt_len > out_cap || (out_pt == NULL && pt_len > 0)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = cob_check_header(&k, key, ct, context, context_len)) != KMS_OK) {
    goto out;
  }
  for (;;) {
    size_t n = pt_len - pt_off;
    if (n > TK_COB_CHUNK_LEN) {
      n = TK_COB_CHUNK_LEN;
    }
    /* The final chunk is the one shorter than 16 KiB (the length check made
     * sure it exists); every earlier chunk is full. */
    if ((r = open_chunk(&k, counter, n > 0 ? out_pt + pt_off : NULL,
                        ct + ct_off, n + TK_COB_TAG_LEN)) != KMS_OK) {
      goto out;
    }
    pt_off += n;
    ct_off += n + TK_COB_TAG_LEN;
    counter++;
    if (n < TK_COB_CHUNK_LEN) {
      break;
    }
  }
  if (ct_off != ct_len || pt_off != pt_len) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  *out_pt_len = pt_len;
  r = KMS_OK;
out:
  cob_keys_clear(&k);
  if (r != KMS_OK && pt_len > 0) {
    OPENSSL_cleanse(out_pt, pt_len);
  }
  return r;
}

/* ---- Streaming encryption ---------------------------------------------- */

struct tk_cob_enc {
  struct cob_keys k;
  uint64_t counter;      /* index of the chunk being filled */
  int err;               /* sticky error, KMS_OK while usable */
  int done;              /* final emitted */
  size_t buf_len;        /* 0..16383 between calls */
  uint8_t buf[TK_COB_CHUNK_LEN];
};

int tk_cob_enc_init(tk_cob_enc **out_st,
                    uint8_t out_header[TK_COB_HEADER_LEN],
                    const uint8_t *key, size_t key_len, const uint8_t *salt,
                    const uint8_t *context, size_t context_len) {
  int r;
  tk_cob_enc *st = NULL;
  uint8_t rsalt[TK_COB_SALT_LEN];

  if (out_st == NULL || out_header == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_st = NULL;
  memset(out_header, 0, TK_COB_HEADER_LEN);
  if ((r = check_key_ctx(key, key_len, context, context_len)) != KMS_OK) {
    return r;
  }
  if (salt == NULL) {
    if (cob_new_salt(rsalt) != KMS_OK) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    salt = rsalt;
  }
  if ((st = calloc(1, sizeof(*st))) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if ((r = cob_derive(&st->k, key, salt, context, context_len)) != KMS_OK) {
    goto out;
  }
  memcpy(out_header, salt, TK_COB_SALT_LEN);
  memcpy(out_header + TK_COB_SALT_LEN, st->k.commitment, TK_COB_COMMIT_LEN);
  *out_st = st;
  st = NULL;
  r = KMS_OK;
out:
  OPENSSL_cleanse(rsalt, sizeof(rsalt));
  tk_cob_enc_free(st);
  return r;
}

size_t tk_cob_enc_update_max(size_t in_len) {
  size_t chunks = in_len / TK_COB_CHUNK_LEN + (in_len % TK_COB_CHUNK_LEN != 0);

  if (chunks > SIZE_MAX / TK_COB_CT_CHUNK_LEN) {
    return SIZE_MAX;
  }
  return chunks * TK_COB_CT_CHUNK_LEN;
}

int tk_cob_enc_update(tk_cob_enc *st, uint8_t *out, size_t out_cap,
                      size_t *out_len, const uint8_t *in, size_t in_len) {
  int r;
  size_t chunks, o = 0;
  uint64_t total;

  if (out_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = 0;
  if (st == NULL || (in == NULL && in_len > 0)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != KMS_OK) {
    return st->err;
  }
  if (st->done) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Exact output: every chunk this call fills. No overflow: buf_len < 16384. */
  chunks = in_len / TK_COB_CHUNK_LEN +
           (st->buf_len + in_len % TK_COB_CHUNK_LEN) / TK_COB_CHUNK_LEN;
  if (chunks > 0 && (out == NULL || chunks > out_cap / TK_COB_CT_CHUNK_LEN)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Message length limit: the final chunk index must stay below 2^38. */
  total = st->counter * TK_COB_CHUNK_LEN + st->buf_len;
  if ((uint64_t)in_len > TK_COB_MAX_PT_LEN - total) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  while (in_len > 0) {
    if (st->buf_len == 0 && in_len >= TK_COB_CHUNK_LEN) {
      /* Aligned: encrypt straight from the input. */
      if ((r = seal_chunk(&st->k, st->counter, out + o, in,
                          TK_COB_CHUNK_LEN)) != KMS_OK) {
        goto fail;
      }
      in += TK_COB_CHUNK_LEN;
      in_len -= TK_COB_CHUNK_LEN;
    } else {
      size_t take = TK_COB_CHUNK_LEN - st->buf_len;
      if (take > in_len) {
        take = in_len;
      }
      memcpy(st->buf + st->buf_len, in, take);
      st->buf_len += take;
      in += take;
      in_len -= take;
      if (st->buf_len < TK_COB_CHUNK_LEN) {
        continue;
      }
      if ((r = seal_chunk(&st->k, st->counter, out + o, st->buf,
                          TK_COB_CHUNK_LEN)) != KMS_OK) {
        goto fail;
      }
      st->buf_len = 0;
    }
    o += TK_COB_CT_CHUNK_LEN;
    st->counter++;
  }
  *out_len = o;
  return KMS_OK;
fail:
  st->err = r == KMS_ERR_INVALID_ARGUMENT ? KMS_ERR_INTERNAL : r;
  OPENSSL_cleanse(st->buf, sizeof(st->buf));
  if (o > 0) {
    OPENSSL_cleanse(out, o);
  }
  cob_keys_clear(&st->k);
  return st->err;
}

int tk_cob_enc_final(tk_cob_enc *st, uint8_t *out, size_t out_cap,
                     size_t *out_len) {
  int r;
  size_t n;

  if (out_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = 0;
  if (st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != KMS_OK) {
    return st->err;
  }
  if (st->done) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  n = st->buf_len + TK_COB_TAG_LEN;
  if (out == NULL || out_cap < n) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = seal_chunk(&st->k, st->counter, out, st->buf_len > 0 ? st->buf : NULL,
                 st->buf_len);
  OPENSSL_cleanse(st->buf, sizeof(st->buf));
  st->buf_len = 0;
  cob_keys_clear(&st->k);
  if (r != KMS_OK) {
    st->err = KMS_ERR_INTERNAL;
    OPENSSL_cleanse(out, n);
    return st->err;
  }
  st->done = 1;
  *out_len = n;
  return KMS_OK;
}

void tk_cob_enc_free(tk_cob_enc *st) {
  if (st == NULL) {
    return;
  }
  cob_keys_clear(&st->k);
  OPENSSL_cleanse(st, sizeof(*st));
  free(st);
}

/* ---- Streaming decryption ---------------------------------------------- */

struct tk_cob_dec {
  kms_secret *ikm;       /* input key, until the header is verified */
  uint8_t *context;
  size_t context_len;
  struct cob_keys k;     /* valid once hdr_len == 56 and err == KMS_OK */
  uint64_t counter;      /* index of the chunk in buf */
  int err;               /* sticky */
  int done;
  size_t hdr_len;
  uint8_t hdr[TK_COB_HEADER_LEN];
  size_t buf_len;        /* 0..16400 ciphertext bytes held back */
  uint8_t buf[TK_COB_CT_CHUNK_LEN];
};

/* dec_fail makes |err| sticky and wipes everything secret in |st|. */
static int dec_fail(tk_cob_dec *st, int err) {
  st->err = err;
  cob_keys_clear(&st->k);
  kms_secret_free(st->ikm);
  st->ikm = NULL;
  OPENSSL_cleanse(st->buf, sizeof(st->buf));
  st->buf_len = 0;
  return err;
}

int tk_cob_dec_init(tk_cob_dec **out_st, const uint8_t *key, size_t key_len,
                    const uint8_t *context, size_t context_len) {
  int r;
  tk_cob_dec *st = NULL;

  if (out_st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_st = NULL;
  if ((r = check_key_ctx(key, key_len, context, context_len)) != KMS_OK) {
    return r;
  }
  if ((st = calloc(1, sizeof(*st))) == NULL ||
      (st->ikm = kms_secret_from(key, key_len)) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if (context_len > 0) {
    if ((st->context = malloc(context_len)) == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    memcpy(st->context, context, context_len);
    st->context_len = context_len;
  }
  *out_st = st;
  st = NULL;
  r = KMS_OK;
out:
  tk_cob_dec_free(st);
  return r;
}

/* dec_header_done verifies the complete header held in st->hdr. */
static int dec_header_done(tk_cob_dec *st) {
  int r = cob_check_header(&st->k, kms_secret_cdata(st->ikm), st->hdr,
                           st->context, st->context_len);
  kms_secret_free(st->ikm);
  st->ikm = NULL;
  if (r != KMS_OK) {
    return dec_fail(st, r == KMS_ERR_DECRYPT ? KMS_ERR_DECRYPT : r);
  }
  return KMS_OK;
}

int tk_cob_dec_header(tk_cob_dec *st, const uint8_t *header,
                      size_t header_len) {
  if (st == NULL || header == NULL || header_len != TK_COB_HEADER_LEN) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != KMS_OK) {
    return st->err;
  }
  if (st->hdr_len != 0 || st->done) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memcpy(st->hdr, header, TK_COB_HEADER_LEN);
  st->hdr_len = TK_COB_HEADER_LEN;
  return dec_header_done(st);
}

size_t tk_cob_dec_update_max(size_t in_len) {
  size_t chunks = in_len / TK_COB_CT_CHUNK_LEN + 1;

  if (chunks > SIZE_MAX / TK_COB_CHUNK_LEN) {
    return SIZE_MAX;
  }
  return chunks * TK_COB_CHUNK_LEN;
}

int tk_cob_dec_update(tk_cob_dec *st, uint8_t *out, size_t out_cap,
                      size_t *out_len, const uint8_t *in, size_t in_len) {
  int r;
  size_t hdr_take, rest, held, chunks, o = 0;

  if (out_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = 0;
  if (st == NULL || (in == NULL && in_len > 0)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != KMS_OK) {
    return st->err;
  }
  if (st->done) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /*
   * Exact output, before touching the state: the body bytes after this call
   * are held + rest; every full chunk followed by at least one more byte is
   * released, i.e. (held + rest - 1) / 16400 chunks. held <= 16400.
   */
  hdr_take = TK_COB_HEADER_LEN - st->hdr_len;
  if (hdr_take > in_len) {
    hdr_take = in_len;
  }
  rest = in_len - hdr_take;
  held = st->buf_len;
  chunks = 0;
  if (rest > 0) {
    chunks = (rest - 1) / TK_COB_CT_CHUNK_LEN +
             (held + (rest - 1) % TK_COB_CT_CHUNK_LEN) / TK_COB_CT_CHUNK_LEN;
  }
  if (chunks > 0 && (out == NULL || chunks > out_cap / TK_COB_CHUNK_LEN)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }

  if (hdr_take > 0) {
    memcpy(st->hdr + st->hdr_len, in, hdr_take);
    st->hdr_len += hdr_take;
    in += hdr_take;
    if (st->hdr_len == TK_COB_HEADER_LEN &&
        (r = dec_header_done(st)) != KMS_OK) {
      return r;
    }
  }
  while (rest > 0) {
    if (st->buf_len == TK_COB_CT_CHUNK_LEN) {
      /* A full chunk followed by more bytes: not the final chunk. */
      if (st->counter + 1 >= TK_COB_MAX_CHUNKS) {
        r = KMS_ERR_DECRYPT;
        goto fail;
      }
      if ((r = open_chunk(&st->k, st->counter, out + o, st->buf,
                          TK_COB_CT_CHUNK_LEN)) != KMS_OK) {
        goto fail;
      }
      st->buf_len = 0;
      st->counter++;
      o += TK_COB_CHUNK_LEN;
      continue;
    }
    if (st->buf_len == 0 && rest > TK_COB_CT_CHUNK_LEN) {
      /* Aligned, and more follows: decrypt straight from the input. */
      if (st->counter + 1 >= TK_COB_MAX_CHUNKS) {
        r = KMS_ERR_DECRYPT;
        goto fail;
      }
      if ((r = open_chunk(&st->k, st->counter, out + o, in,
                          TK_COB_CT_CHUNK_LEN)) != KMS_OK) {
        goto fail;
      }
      in += TK_COB_CT_CHUNK_LEN;
      rest -= TK_COB_CT_CHUNK_LEN;
      st->counter++;
      o += TK_COB_CHUNK_LEN;
      continue;
    }
    {
      size_t take = TK_COB_CT_CHUNK_LEN - st->buf_len;
      if (take > rest) {
        take = rest;
      }
      memcpy(st->buf + st->buf_len, in, take);
      st->buf_len += take;
      in += take;
      rest -= take;
    }
  }
  if (o != chunks * TK_COB_CHUNK_LEN) {
    r = KMS_ERR_INTERNAL;
    goto fail;
  }
  *out_len = o;
  return KMS_OK;
fail:
  if (o > 0) {
    OPENSSL_cleanse(out, o);
  }
  return dec_fail(st, r);
}

int tk_cob_dec_final(tk_cob_dec *st, uint8_t *out, size_t out_cap,
                     size_t *out_len) {
  int r;
  size_t n;

  if (out_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = 0;
  if (st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != KMS_OK) {
    return st->err;
  }
  if (st->done) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Missing header bytes, no final chunk, a final chunk shorter than a tag,
   * or a stream ending on a full chunk: all truncation. */
  if (st->hdr_len < TK_COB_HEADER_LEN || st->buf_len < TK_COB_TAG_LEN ||
      st->buf_len == TK_COB_CT_CHUNK_LEN) {
    return dec_fail(st, KMS_ERR_TRUNCATED);
  }
  n = st->buf_len - TK_COB_TAG_LEN;
  if (n > 0 && (out == NULL || out_cap < n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = open_chunk(&st->k, st->counter, n > 0 ? out : NULL, st->buf,
                      st->buf_len)) != KMS_OK) {
    return dec_fail(st, r);
  }
  st->done = 1;
  OPENSSL_cleanse(st->buf, sizeof(st->buf));
  st->buf_len = 0;
  cob_keys_clear(&st->k);
  *out_len = n;
  return KMS_OK;
}

void tk_cob_dec_free(tk_cob_dec *st) {
  if (st == NULL) {
    return;
  }
  cob_keys_clear(&st->k);
  kms_secret_free(st->ikm);
  free(st->context);
  OPENSSL_cleanse(st, sizeof(*st));
  free(st);
}

/* ---- Random access ------------------------------------------------------ */

struct tk_cob_reader {
  struct cob_keys k;
  tk_cob_read_fn read;
  void *arg;
  uint64_t ct_len;
  uint64_t pt_len;       /* authenticated at open */
  uint64_t final_index;  /* index of the final (short) chunk */
  uint8_t buf[TK_COB_CT_CHUNK_LEN];
};

static int reader_fetch(tk_cob_reader *rd, uint64_t off, uint8_t *buf,
                        size_t len) {
  int r = rd->read(rd->arg, off, buf, len);

  if (r == 0) {
    return KMS_OK;
  }
  return r < 0 && r >= KMS_ERR_MIN_ ? r : KMS_ERR_IO;
}

/*
 * reader_chunk reads and decrypts chunk |i| into |out| (which may be rd->buf)
 * and returns its plaintext length in |*out_n|.
 */
static int reader_chunk(tk_cob_reader *rd, uint64_t i, uint8_t *out,
                        size_t *out_n) {
  int r;
  uint64_t off = TK_COB_HEADER_LEN + i * TK_COB_CT_CHUNK_LEN;
  size_t ct_n = i == rd->final_index ? (size_t)(rd->ct_len - off)
                                     : TK_COB_CT_CHUNK_LEN;

  *out_n = 0;
  if ((r = reader_fetch(rd, off, rd->buf, ct_n)) != KMS_OK) {
    return r;
  }
  if ((r = open_chunk(&rd->k, i, ct_n > TK_COB_TAG_LEN ? out : NULL, rd->buf,
                      ct_n)) != KMS_OK) {
    OPENSSL_cleanse(rd->buf, sizeof(rd->buf));
    return r;
  }
  *out_n = ct_n - TK_COB_TAG_LEN;
  return KMS_OK;
}

int tk_cob_reader_open(tk_cob_reader **out_rd, const uint8_t *key,
                       size_t key_len, const uint8_t *context,
                       size_t context_len, tk_cob_read_fn read_fn, void *arg,
                       uint64_t ct_len) {
  int r;
  tk_cob_reader *rd = NULL;
  uint8_t hdr[TK_COB_HEADER_LEN];
  size_t n;

  if (out_rd == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_rd = NULL;
  if ((r = check_key_ctx(key, key_len, context, context_len)) != KMS_OK) {
    return r;
  }
  if (read_fn == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((rd = calloc(1, sizeof(*rd))) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  rd->read = read_fn;
  rd->arg = arg;
  rd->ct_len = ct_len;
  if ((r = tk_cob_plaintext_len(&rd->pt_len, ct_len)) != KMS_OK) {
    goto out;
  }
  rd->final_index = rd->pt_len / TK_COB_CHUNK_LEN;
  if ((r = reader_fetch(rd, 0, hdr, sizeof(hdr))) != KMS_OK) {
    goto out;
  }
  if ((r = cob_check_header(&rd->k, key, hdr, context, context_len)) !=
      KMS_OK) {
    goto out;
  }
  /* Authenticate the length: the final chunk must decrypt at its index. */
  if ((r = reader_chunk(rd, rd->final_index, rd->buf, &n)) != KMS_OK) {
    goto out;
  }
  OPENSSL_cleanse(rd->buf, sizeof(rd->buf));
  *out_rd = rd;
  rd = NULL;
  r = KMS_OK;
out:
  tk_cob_reader_free(rd);
  return r;
}

uint64_t tk_cob_reader_plaintext_len(const tk_cob_reader *rd) {
  return rd == NULL ? 0 : rd->pt_len;
}

int tk_cob_reader_read(tk_cob_reader *rd, uint8_t *out, uint64_t offset,
                       size_t len) {
  int r = KMS_OK;
  uint64_t i, last;
  size_t o = 0;

  if (rd == NULL || (out == NULL && len > 0)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (offset > rd->pt_len || (uint64_t)len > rd->pt_len - offset) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (len == 0) {
    return KMS_OK;
  }
  last = (offset + len - 1) / TK_COB_CHUNK_LEN;
  for (i = offset / TK_COB_CHUNK_LEN; i <= last; i++) {
    uint64_t chunk_start = i * TK_COB_CHUNK_LEN;
    size_t skip = offset + o > chunk_start ? (size_t)(offset + o - chunk_start)
                                           : 0;
    size_t want = len - o, n;
    if (skip == 0 && want >= TK_COB_CHUNK_LEN && i != rd->final_index) {
      /* The whole chunk is wanted: decrypt straight into |out|. */
      if ((r = reader_chunk(rd, i, out + o, &n)) != KMS_OK) {
        goto out;
      }
      o += n;
      continue;
    }
    if ((r = reader_chunk(rd, i, rd->buf, &n)) != KMS_OK) {
      goto out;
    }
    if (skip > n) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    if (want > n - skip) {
      want = n - skip;
    }
    memcpy(out + o, rd->buf + skip, want);
    o += want;
  }
  r = o == len ? KMS_OK : KMS_ERR_INTERNAL;
out:
  OPENSSL_cleanse(rd->buf, sizeof(rd->buf));
  if (r != KMS_OK) {
    OPENSSL_cleanse(out, len);
  }
  return r;
}

void tk_cob_reader_free(tk_cob_reader *rd) {
  if (rd == NULL) {
    return;
  }
  cob_keys_clear(&rd->k);
  OPENSSL_cleanse(rd, sizeof(*rd));
  free(rd);
}

int tk_cob_read_at(uint8_t *out, const uint8_t *key, size_t key_len,
                   const uint8_t *context, size_t context_len,
                   tk_cob_read_fn read_fn, void *arg, uint64_t ct_len,
                   uint64_t offset, size_t len) {
  int r;
  tk_cob_reader *rd = NULL;

  if (out == NULL && len > 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = tk_cob_reader_open(&rd, key, key_len, context, context_len, read_fn,
                              arg, ct_len)) != KMS_OK) {
    goto out;
  }
  r = tk_cob_reader_read(rd, out, offset, len);
out:
  tk_cob_reader_free(rd);
  if (r != KMS_OK && len > 0) {
    OPENSSL_cleanse(out, len);
  }
  return r;
}
