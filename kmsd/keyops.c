/* The key hierarchy at work: KEK versions from the keystore, loaded and used in the HSM. */
#include "keyops.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kms_err.h"
#include "kms_time.h"
#include "log.h"

static const char *const state_names[] = {"unknown", "active", "decrypt-only", "disabled",
                                          "pending destruction", "destroyed"};

static const char *
state_name(int state)
{
  return state >= 1 && state <= 5 ? state_names[state] : state_names[0];
}

static const char *const tenant_state_names[] = {"unknown", "active", "disabled",
                                                 "pending destruction", "destroyed"};

/*
 * tenant_refuses: a tenant that is not active (disabled, pending destruction,
 * destroyed) refuses every key operation, for every principal (docs/LIFECYCLE.md).
 */
static int
tenant_refuses(const struct ks_kek *kek, struct keyops_result *res)
{
  if (kek->tenant_state == KS_TENANT_ACTIVE) {
    return 0;
  }
  snprintf(res->message, sizeof(res->message), "tenant %s is %s", kek->tenant_id,
           kek->tenant_state >= 1 && kek->tenant_state <= 4
               ? tenant_state_names[kek->tenant_state]
               : tenant_state_names[0]);
  return 1;
}

static void
unload_all(struct worker_ctx *w, const hsm_key *keys, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    hsm_kek_unload(w->hs, keys[i]);
  }
}

/*
 * The hsm_latency_us knob (benchmarks only): a network HSM answers in
 * milliseconds, SoftHSM2 in microseconds. Sleeping before the HSM calls of
 * data-key work shows whether the worker pool hides that latency.
 */
static void
hsm_delay(const struct keyops *k)
{
  if (k->hsm_latency_us == 0) {
    return;
  }
  struct timespec ts = {(time_t)(k->hsm_latency_us / 1000000),
                        (long)(k->hsm_latency_us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

_Static_assert(sizeof(((struct worker_ctx *)0)->iv_pool) % DEKWRAP_IV_LEN == 0,
               "the IV buffer holds whole IVs");

int
keyops_take_iv(struct worker_ctx *w, uint8_t iv[DEKWRAP_IV_LEN])
{
  if (w->iv_pool_left < DEKWRAP_IV_LEN) {
    if (RAND_bytes(w->iv_pool, sizeof(w->iv_pool)) != 1) {
      w->iv_pool_left = 0;
      return KMS_ERR_INTERNAL;
    }
    w->iv_pool_left = sizeof(w->iv_pool);
  }
  uint8_t *p = w->iv_pool + (sizeof(w->iv_pool) - w->iv_pool_left);
  memcpy(iv, p, DEKWRAP_IV_LEN);
  OPENSSL_cleanse(p, DEKWRAP_IV_LEN);
  w->iv_pool_left -= DEKWRAP_IV_LEN;
  return KMS_OK;
}

/*
 * Data keys come from the HSM's RNG, DEK_POOL_KEYS keys' worth per call, into
 * the worker's pool in locked memory: one HSM round trip per 32 data keys
 * instead of one per key. Bytes are wiped from the pool as they are taken.
 */
#define DEK_POOL_KEYS 32

static int
take_dek(const struct keyops *k, struct worker_ctx *w, uint8_t *out)
{
  if (w->dek_pool == NULL) {
    w->dek_pool = kms_secret_new(DEK_POOL_KEYS * DEKWRAP_KEY_LEN);
    w->dek_pool_left = 0;
    if (w->dek_pool == NULL) {
      return KMS_ERR_ALLOC;
    }
  }
  uint8_t *pool = kms_secret_data(w->dek_pool);
  size_t cap = kms_secret_len(w->dek_pool);
  if (w->dek_pool_left < DEKWRAP_KEY_LEN) {
    hsm_delay(k);
    int r = hsm_random(w->hs, pool, cap);
    if (r != KMS_OK) {
      w->dek_pool_left = 0;
      return r;
    }
    w->dek_pool_left = cap;
  }
  uint8_t *p = pool + (cap - w->dek_pool_left);
  memcpy(out, p, DEKWRAP_KEY_LEN);
  OPENSSL_cleanse(p, DEKWRAP_KEY_LEN);
  w->dek_pool_left -= DEKWRAP_KEY_LEN;
  return KMS_OK;
}

/*
 * fresh: a cached handle loaded before an HSM reset died with the old owner
 * session (kmsd/hsm.h, recovery). Such an entry leaves the cache (it is freed
 * once its last user lets go) and |*e| becomes NULL, so the caller loads the
 * key token again.
 */
static void
fresh(const struct keyops *k, struct worker_ctx *w, const char *tenant_id, kekcache_entry **e)
{
  hsm_key gone;
  if (*e == NULL || hsm_key_current(w->hs, kekcache_entry_key(*e))) {
    return;
  }
  /* Another worker may have reloaded it already: a current key we pushed out is unloaded
   * (hsm_kek_unload ignores a stale one, whose object is gone anyway). */
  if (kekcache_remove(k->cache, tenant_id, kekcache_entry_version(*e), &gone)) {
    hsm_kek_unload(w->hs, gone);
  }
  kekcache_release(k->cache, *e);
  *e = NULL;
}

int
keyops_kek_acquire(const struct keyops *k, struct worker_ctx *w, const struct ks_kek *kek,
            kekcache_entry **out)
{
  *out = kekcache_get(k->cache, kek->tenant_id, kek->version);
  fresh(k, w, kek->tenant_id, out);
  if (*out != NULL) {
    return KMS_OK;
  }
  hsm_key key;
  hsm_delay(k);
  int r = hsm_kek_load(w->hs, kek->token, kek->token_len, kek->wrap_mech, kek->root_version, &key);
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
  kek.created_ms = kms_now_ms();
  hsm_delay(k);
  int r = hsm_kek_generate(w->hs, kek.token, &kek.token_len, &kek.wrap_mech, &kek.root_version);
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

int
keyops_rotate_for_limit(struct worker_ctx *w, const struct ks_kek *old)
{
  struct ks_kek kek;
  memset(&kek, 0, sizeof(kek));
  memcpy(kek.tenant_id, old->tenant_id, sizeof(kek.tenant_id));
  kek.version = old->version + 1;
  kek.state = KS_KEK_ACTIVE;
  kek.root_version = old->root_version;
  kek.created_ms = kms_now_ms();
  int r = hsm_kek_generate(w->hs, kek.token, &kek.token_len, &kek.wrap_mech, &kek.root_version);
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

int
keyops_spend_use(const struct keyops *k, struct worker_ctx *w, const struct ks_kek *kek,
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

/*
 * revalidate reads the keystore's change counter when the last read is half a
 * TTL old (one worker at a time): unchanged, it keeps every cached state fresh
 * for another TTL without a read per tenant; changed, they are all re-read as
 * they are next used (kekcache.h).
 */
static void
revalidate(const struct keyops *k, struct worker_ctx *w, int64_t now)
{
  if (k->state_ttl_ms > 0 && kekcache_validation_due(k->cache, now, k->state_ttl_ms)) {
    uint64_t gen = 0;
    int r = keystore_state_gen(w->ks, &gen);
    kekcache_validate(k->cache, r == KMS_OK, gen, now);
  }
}

/*
 * current_kek finds the tenant's newest KEK version and its and the tenant's
 * state. The cache answers while its state is fresh (kekcache.h); then |kek|
 * holds only the tenant id, version and states, and |*out| the pinned entry.
 * Otherwise the keystore is read into |kek| and, if both states allow use,
 * the version is loaded and pinned in |*out| (else *out is NULL).
 */
static int
current_kek(const struct keyops *k, struct worker_ctx *w, const char *tenant_id,
            struct ks_kek *kek, kekcache_entry **out)
{
  int64_t now = kms_mono_ms();
  *out = NULL;
  revalidate(k, w, now);
  if (k->state_ttl_ms > 0) {
    *out = kekcache_get_current(k->cache, tenant_id, now, k->state_ttl_ms, &kek->state,
                                &kek->tenant_state);
    fresh(k, w, tenant_id, out);
    if (*out != NULL) {
      snprintf(kek->tenant_id, sizeof(kek->tenant_id), "%s", tenant_id);
      kek->version = kekcache_entry_version(*out);
      return KMS_OK;
    }
  }
  uint64_t epoch = kekcache_epoch(k->cache);
  int r = keystore_kek_current(w->ks, tenant_id, kek);
  if (r != KMS_OK || kek->tenant_state != KS_TENANT_ACTIVE || kek->state != KS_KEK_ACTIVE) {
    return r;
  }
  r = keyops_kek_acquire(k, w, kek, out);
  if (r == KMS_OK) {
    kekcache_set_state(k->cache, *out, kek->state, kek->tenant_state, 1, now, epoch);
  }
  return r;
}

/*
 * version_kek is current_kek for a given version (Decrypt): states from the
 * cache while fresh, else from the keystore, then loaded if they allow
 * decryption. Returns the keystore's KMS_ERR_NOT_FOUND as it is.
 */
static int
version_kek(const struct keyops *k, struct worker_ctx *w, const char *tenant_id,
            uint32_t version, struct ks_kek *kek, kekcache_entry **out)
{
  int64_t now = kms_mono_ms();
  revalidate(k, w, now);
  *out = kekcache_get(k->cache, tenant_id, version);
  fresh(k, w, tenant_id, out);
  if (*out != NULL && k->state_ttl_ms > 0 &&
      kekcache_state(k->cache, *out, now, k->state_ttl_ms, &kek->state, &kek->tenant_state)) {
    snprintf(kek->tenant_id, sizeof(kek->tenant_id), "%s", tenant_id);
    kek->version = version;
    return KMS_OK;
  }
  uint64_t epoch = kekcache_epoch(k->cache);
  int r = keystore_kek_get(w->ks, tenant_id, version, kek);
  int usable = r == KMS_OK && kek->tenant_state == KS_TENANT_ACTIVE &&
               (kek->state == KS_KEK_ACTIVE || kek->state == KS_KEK_DECRYPT_ONLY);
  if (usable && *out == NULL) {
    r = keyops_kek_acquire(k, w, kek, out);
  }
  if (r == KMS_OK && *out != NULL) {
    kekcache_set_state(k->cache, *out, kek->state, kek->tenant_state, 0, now, epoch);
  }
  return r;
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

  /* Fail fast while the HSM is down; after a reset, cached handles are seen as stale. */
  r = hsm_ready(w->hs);
  if (r != KMS_OK) {
    goto out;
  }
  for (int attempt = 0;; attempt++) {
    r = current_kek(k, w, tenant_id, &kek, &e);
    if (r != KMS_OK) {
      goto out;
    }
    if (tenant_refuses(&kek, res)) {
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
    if (kek.state != KS_KEK_ACTIVE) {
      snprintf(res->message, sizeof(res->message), "key version %u is %s", kek.version,
               state_name(kek.state));
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
    r = e != NULL ? KMS_OK : keyops_kek_acquire(k, w, &kek, &e);
    if (r != KMS_OK) {
      goto out;
    }
    r = keyops_spend_use(k, w, &kek, e);
    if (r != KMS_ERR_KEY_LIMIT || attempt >= 2) {
      break;
    }
    kekcache_release(k->cache, e);
    e = NULL;
    /* A cached |kek| has no token fields: rotation reads the version in full. */
    r = keystore_kek_get(w->ks, tenant_id, kek.version, &kek);
    if (r == KMS_OK) {
      r = keyops_rotate_for_limit(w, &kek);
    }
    keyops_forget_state(k); /* the newest version changed, here or elsewhere */
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
  r = take_dek(k, w, kms_secret_data(dek));
  if (r != KMS_OK) {
    goto out;
  }
  memset(&blob, 0, sizeof(blob));
  blob.kek_version = kek.version;
  if (keyops_take_iv(w, blob.iv) != KMS_OK) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  hsm_delay(k);
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
  r = hsm_ready(w->hs);
  if (r != KMS_OK) {
    goto out;
  }
  r = version_kek(k, w, tenant_id, blob.kek_version, &kek, &e);
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
  if (tenant_refuses(&kek, res)) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  if (kek.state != KS_KEK_ACTIVE && kek.state != KS_KEK_DECRYPT_ONLY) {
    snprintf(res->message, sizeof(res->message), "key version %u is %s", kek.version,
             state_name(kek.state));
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  r = e != NULL ? KMS_OK : keyops_kek_acquire(k, w, &kek, &e);
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
  hsm_delay(k);
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

/*
 * keyops_reencrypt (key lifecycle, kmsd/lifecycle.c): the data key is
 * unwrapped under its version and wrapped again under |target| (0: the
 * current one) without leaving this function. Budget and forced rotation as
 * in keyops_generate. A blob already under the target comes back unchanged.
 */
int
keyops_reencrypt(const struct keyops *k, struct worker_ctx *w, struct keyops_result *res,
                 const char *tenant_id, size_t n_ctx, Tkms__ContextEntry *const *ctx,
                 const uint8_t *blob_bytes, size_t blob_len, uint32_t target,
                 uint32_t *out_source)
{
  int r = KMS_ERR_INTERNAL;
  struct ks_kek kek;
  struct dek_blob blob;
  kekcache_entry *e = NULL;
  kms_secret *dek = NULL;
  uint8_t aad[DEKWRAP_AAD_MAX];
  size_t aad_len = 0;

  *out_source = 0;
  r = keyops_decrypt(k, w, res, tenant_id, n_ctx, ctx, blob_bytes, blob_len);
  if (r != KMS_OK) {
    goto out;
  }
  dek = res->plaintext;
  res->plaintext = NULL;
  *out_source = res->kek_version;
  for (int attempt = 0;; attempt++) {
    r = target == 0 ? keystore_kek_current(w->ks, tenant_id, &kek)
                    : keystore_kek_get(w->ks, tenant_id, target, &kek);
    if (r == KMS_ERR_NOT_FOUND && target != 0) {
      snprintf(res->message, sizeof(res->message), "tenant %s has no key version %u",
               tenant_id, target);
    }
    if (r != KMS_OK) {
      goto out;
    }
    if (tenant_refuses(&kek, res)) {
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
    if (kek.state != KS_KEK_ACTIVE) {
      snprintf(res->message, sizeof(res->message), "target key version %u is %s", kek.version,
               state_name(kek.state));
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
    if (kek.version == *out_source && blob_len <= sizeof(res->blob)) {
      /* Already there: no new encryption, no budget spent. */
      memcpy(res->blob, blob_bytes, blob_len);
      res->blob_len = blob_len;
      res->kek_version = kek.version;
      r = KMS_OK;
      goto out;
    }
    r = keyops_kek_acquire(k, w, &kek, &e);
    if (r != KMS_OK) {
      goto out;
    }
    r = keyops_spend_use(k, w, &kek, e);
    if (r != KMS_ERR_KEY_LIMIT || attempt >= 2 || target != 0) {
      break;
    }
    kekcache_release(k->cache, e);
    e = NULL;
    r = keyops_rotate_for_limit(w, &kek);
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
  memset(&blob, 0, sizeof(blob));
  blob.kek_version = kek.version;
  if (keyops_take_iv(w, blob.iv) != KMS_OK) {
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
  hsm_delay(k);
  res->hsm_ok = hsm_ping(w->hs) == KMS_OK;
  res->keystore_ok = keystore_schema_version(w->ks, &v) == KMS_OK;
  return KMS_OK;
}

void
keyops_forget_state(const struct keyops *k)
{
  kekcache_forget_state(k->cache);
}

void
keyops_result_clear(struct keyops_result *res)
{
  kms_secret_free(res->plaintext);
  OPENSSL_cleanse(res, sizeof(*res));
}
