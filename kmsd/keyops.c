/* The key hierarchy at work: KEK versions from the keystore, loaded and used in the HSM. */
#include "keyops.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kms_err.h"
#include "log.h"

static const char *const state_names[] = {"unknown", "active", "decrypt-only", "disabled",
                                          "pending destruction", "destroyed"};

static const char *
state_name(int state)
{
  return state >= 1 && state <= 5 ? state_names[state] : state_names[0];
}

static int64_t
now_ms(void)
{
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void
unload_all(struct worker_ctx *w, const hsm_key *keys, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    hsm_kek_unload(w->hs, keys[i]);
  }
}

/* Returns the pinned cache entry for |kek|, loading its token into the HSM on a miss. */
static int
kek_acquire(const struct keyops *k, struct worker_ctx *w, const struct ks_kek *kek,
            kekcache_entry **out)
{
  *out = kekcache_get(k->cache, kek->tenant_id, kek->version);
  if (*out != NULL) {
    return KMS_OK;
  }
  hsm_key key;
  int r = hsm_kek_load(w->hs, kek->token, kek->token_len, kek->wrap_mech, &key);
  if (r != KMS_OK) {
    if (r == KMS_ERR_DECRYPT) {
      /* A stored token that no longer unwraps: wrong root key or tampering. */
      log_msg(LOG_ERROR, "event=kek_load_failed tenant=%s version=%u reason=token_rejected",
              kek->tenant_id, kek->version);
      return KMS_ERR_INTERNAL;
    }
    return r;
  }
  hsm_key unload[2];
  size_t n_unload = 0;
  *out = kekcache_put(k->cache, kek->tenant_id, kek->version, key, unload, &n_unload);
  unload_all(w, unload, n_unload);
  return *out != NULL ? KMS_OK : KMS_ERR_ALLOC;
}

int
keyops_create_tenant(const struct keyops *k, struct worker_ctx *w,
                     struct keyops_result *res, const char *tenant_id)
{
  struct ks_kek kek;
  memset(&kek, 0, sizeof(kek));
  snprintf(kek.tenant_id, sizeof(kek.tenant_id), "%s", tenant_id);
  kek.version = 1;
  kek.state = KS_KEK_ACTIVE;
  kek.root_version = 1;
  kek.created_ms = now_ms();
  int r = hsm_kek_generate(w->hs, kek.token, &kek.token_len, &kek.wrap_mech);
  if (r != KMS_OK) {
    return r;
  }
  r = keystore_tenant_create(w->ks, &kek);
  if (r == KMS_ERR_ALREADY_EXISTS) {
    snprintf(res->message, sizeof(res->message), "tenant already exists");
    return r;
  }
  if (r != KMS_OK) {
    return r;
  }
  res->kek_version = 1;
  log_msg(LOG_INFO, "event=tenant_created tenant=%s kek_version=1", tenant_id);
  return KMS_OK;
}

/*
 * Forced rotation when the current version's use budget is spent: a new KEK
 * version, generated in the HSM, recorded in one transaction. If another
 * worker (or replica) rotated first, its version is used.
 */
static int
rotate_for_limit(struct worker_ctx *w, const struct ks_kek *old)
{
  struct ks_kek kek;
  memset(&kek, 0, sizeof(kek));
  memcpy(kek.tenant_id, old->tenant_id, sizeof(kek.tenant_id));
  kek.version = old->version + 1;
  kek.state = KS_KEK_ACTIVE;
  kek.root_version = old->root_version;
  kek.created_ms = now_ms();
  int r = hsm_kek_generate(w->hs, kek.token, &kek.token_len, &kek.wrap_mech);
  if (r != KMS_OK) {
    return r;
  }
  r = keystore_kek_add_version(w->ks, &kek);
  if (r == KMS_ERR_ALREADY_EXISTS) {
    return KMS_OK;
  }
  if (r == KMS_OK) {
    log_msg(LOG_INFO, "event=kek_rotated tenant=%s version=%u reason=use_limit",
            kek.tenant_id, kek.version);
  }
  return r;
}

/*
 * Spends one use of |kek|. Returns KMS_OK, or KMS_ERR_KEY_LIMIT once the
 * version's budget is exhausted (the caller rotates and retries).
 */
static int
spend_use(const struct keyops *k, struct worker_ctx *w, const struct ks_kek *kek,
          kekcache_entry *e)
{
  if (kekcache_take_use(k->cache, e)) {
    return KMS_OK;
  }
  uint64_t total = 0;
  uint64_t block = k->reserve_block;
  int r = keystore_kek_reserve_uses(w->ks, kek->tenant_id, kek->version, block,
                                    k->max_uses, &total);
  if (r == KMS_ERR_KEY_LIMIT) {
    /* Take what remains of the budget, if anything. */
    struct ks_kek now;
    r = keystore_kek_get(w->ks, kek->tenant_id, kek->version, &now);
    if (r != KMS_OK) {
      return r;
    }
    if (now.uses >= k->max_uses) {
      return KMS_ERR_KEY_LIMIT;
    }
    block = k->max_uses - now.uses;
    r = keystore_kek_reserve_uses(w->ks, kek->tenant_id, kek->version, block,
                                  k->max_uses, &total);
  }
  if (r != KMS_OK) {
    return r;
  }
  kekcache_grant_uses(k->cache, e, block - 1);
  return KMS_OK;
}

int
keyops_generate(const struct keyops *k, struct worker_ctx *w, struct keyops_result *res,
                const char *tenant_id, size_t n_ctx, Tkms__ContextEntry *const *ctx,
                bool with_plaintext)
{
  int r = KMS_ERR_INTERNAL;
  struct ks_kek kek;
  struct dek_blob blob;
  kekcache_entry *e = NULL;
  kms_secret *dek = NULL;
  uint8_t aad[DEKWRAP_AAD_MAX];
  size_t aad_len = 0;

  for (int attempt = 0;; attempt++) {
    r = keystore_kek_current(w->ks, tenant_id, &kek);
    if (r != KMS_OK) {
      goto out;
    }
    if (kek.state != KS_KEK_ACTIVE) {
      snprintf(res->message, sizeof(res->message), "key version %u is %s", kek.version,
               state_name(kek.state));
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
    r = kek_acquire(k, w, &kek, &e);
    if (r != KMS_OK) {
      goto out;
    }
    r = spend_use(k, w, &kek, e);
    if (r != KMS_ERR_KEY_LIMIT || attempt >= 2) {
      break;
    }
    kekcache_release(k->cache, e);
    e = NULL;
    r = rotate_for_limit(w, &kek);
    if (r != KMS_OK) {
      goto out;
    }
  }
  if (r != KMS_OK) {
    goto out;
  }

  r = dekwrap_aad(aad, sizeof(aad), &aad_len, tenant_id, kek.version, n_ctx, ctx);
  if (r != KMS_OK) {
    goto out;
  }
  dek = kms_secret_new(DEKWRAP_KEY_LEN);
  if (dek == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  r = hsm_random(w->hs, kms_secret_data(dek), DEKWRAP_KEY_LEN);
  if (r != KMS_OK) {
    goto out;
  }
  memset(&blob, 0, sizeof(blob));
  blob.kek_version = kek.version;
  if (RAND_bytes(blob.iv, sizeof(blob.iv)) != 1) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  r = hsm_gcm_encrypt(w->hs, kekcache_entry_key(e), blob.iv, aad, aad_len,
                      kms_secret_cdata(dek), DEKWRAP_KEY_LEN, blob.ct_tag);
  if (r != KMS_OK) {
    goto out;
  }
  dekwrap_blob_encode(res->blob, &blob);
  res->blob_len = DEKWRAP_BLOB_LEN;
  res->kek_version = kek.version;
  if (with_plaintext) {
    res->plaintext = dek;
    dek = NULL;
  }
  r = KMS_OK;
out:
  kekcache_release(k->cache, e);
  kms_secret_free(dek);
  return r;
}

int
keyops_decrypt(const struct keyops *k, struct worker_ctx *w, struct keyops_result *res,
               const char *tenant_id, size_t n_ctx, Tkms__ContextEntry *const *ctx,
               const uint8_t *blob_bytes, size_t blob_len)
{
  int r = KMS_ERR_INTERNAL;
  struct ks_kek kek;
  struct dek_blob blob;
  kekcache_entry *e = NULL;
  kms_secret *dek = NULL;
  uint8_t aad[DEKWRAP_AAD_MAX];
  size_t aad_len = 0;

  r = dekwrap_blob_parse(&blob, blob_bytes, blob_len);
  if (r != KMS_OK) {
    goto out;
  }
  r = keystore_kek_get(w->ks, tenant_id, blob.kek_version, &kek);
  if (r == KMS_ERR_NOT_FOUND) {
    /* Unknown tenant is NOT_FOUND; a version the tenant never had is just a bad blob. */
    struct ks_tenant t;
    r = keystore_tenant_get(w->ks, tenant_id, &t);
    if (r == KMS_OK) {
      r = KMS_ERR_DECRYPT;
    }
    goto out;
  }
  if (r != KMS_OK) {
    goto out;
  }
  if (kek.state != KS_KEK_ACTIVE && kek.state != KS_KEK_DECRYPT_ONLY) {
    snprintf(res->message, sizeof(res->message), "key version %u is %s", kek.version,
             state_name(kek.state));
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  r = kek_acquire(k, w, &kek, &e);
  if (r != KMS_OK) {
    goto out;
  }
  r = dekwrap_aad(aad, sizeof(aad), &aad_len, tenant_id, kek.version, n_ctx, ctx);
  if (r != KMS_OK) {
    goto out;
  }
  dek = kms_secret_new(DEKWRAP_KEY_LEN);
  if (dek == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  r = hsm_gcm_decrypt(w->hs, kekcache_entry_key(e), blob.iv, aad, aad_len, blob.ct_tag,
                      sizeof(blob.ct_tag), kms_secret_data(dek));
  if (r != KMS_OK) {
    goto out;
  }
  res->kek_version = kek.version;
  res->plaintext = dek;
  dek = NULL;
  r = KMS_OK;
out:
  kekcache_release(k->cache, e);
  kms_secret_free(dek);
  return r;
}

int
keyops_health(const struct keyops *k, struct worker_ctx *w, struct keyops_result *res)
{
  int v = 0;
  res->hsm_ok = hsm_ping(w->hs) == KMS_OK;
  res->keystore_ok = keystore_schema_version(w->ks, &v) == KMS_OK;
  return KMS_OK;
}

void
keyops_result_clear(struct keyops_result *res)
{
  kms_secret_free(res->plaintext);
  OPENSSL_cleanse(res, sizeof(*res));
}
