/* Key operations: tenants, data-key generation and decryption, on a worker thread. */
#ifndef KMSD_KEYOPS_H
#define KMSD_KEYOPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dekwrap.h"
#include "kekcache.h"
#include "kms.pb-c.h"
#include "kms_secret.h"
#include "workers.h"

struct keyops {
  kekcache *cache;
  uint64_t max_uses;      /* encryptions per KEK version before forced rotation */
  uint64_t reserve_block; /* uses reserved in the keystore per round trip */
  int64_t state_ttl_ms;   /* cached KEK state lifetime (kekcache.h); 0: always read */
  unsigned hsm_latency_us; /* benchmark knob: sleep before data-key HSM calls */
};

struct keyops_result {
  uint32_t kek_version;
  uint8_t blob[DEKWRAP_BLOB_LEN];
  size_t blob_len;
  kms_secret *plaintext; /* owned; kms_secret_free */
  char message[160];     /* for the caller; never key material */
  bool hsm_ok, keystore_ok;
};

/*
 * Each function runs on a worker (it blocks on the HSM and the keystore) and
 * returns KMS_OK or an error code, with a human-readable reason in
 * res->message when there is more to say than the code.
 */
int keyops_create_tenant(const struct keyops *k, struct worker_ctx *w,
                         struct keyops_result *res, const char *tenant_id);

int keyops_generate(const struct keyops *k, struct worker_ctx *w,
                    struct keyops_result *res, const char *tenant_id,
                    size_t n_ctx, Tkms__ContextEntry *const *ctx, bool with_plaintext);

int keyops_decrypt(const struct keyops *k, struct worker_ctx *w,
                   struct keyops_result *res, const char *tenant_id, size_t n_ctx,
                   Tkms__ContextEntry *const *ctx, const uint8_t *blob, size_t blob_len);

/*
 * keyops_reencrypt moves a wrapped data key to KEK version |target| (0: the
 * current one) of the same tenant; the plaintext key never leaves kmsd. The
 * new blob is in res->blob, its version in res->kek_version, the old version
 * in *out_source; res->plaintext stays NULL.
 */
int keyops_reencrypt(const struct keyops *k, struct worker_ctx *w, struct keyops_result *res,
                     const char *tenant_id, size_t n_ctx, Tkms__ContextEntry *const *ctx,
                     const uint8_t *blob, size_t blob_len, uint32_t target,
                     uint32_t *out_source);

int keyops_health(const struct keyops *k, struct worker_ctx *w, struct keyops_result *res);

/*
 * keyops_forget_state makes every cached KEK state stale, so the next request
 * of any tenant reads the keystore. Call it once this process has changed
 * the state of any key or tenant (rotation, disable, enable, destruction).
 */
void keyops_forget_state(const struct keyops *k);

/*
 * The KEK helpers below are shared with sessions.c, so a session key counts
 * against the same cache and the same NIST use budget as a data key.
 *
 * keyops_kek_acquire returns in |*out| the pinned cache entry for |kek|
 * (kekcache_release it), loading its key token into the HSM on a miss or when
 * the cached handle died in an HSM reset. A token that no longer unwraps is
 * logged and answered KMS_ERR_INTERNAL.
 */
int keyops_kek_acquire(const struct keyops *k, struct worker_ctx *w, const struct ks_kek *kek,
                       kekcache_entry **out);

/*
 * keyops_spend_use spends one use of |kek| (loaded as |e|), reserving a block
 * in the keystore when this process has none left. Returns KMS_OK, or
 * KMS_ERR_KEY_LIMIT once the version's budget is exhausted (the caller
 * rotates with keyops_rotate_for_limit and retries).
 */
int keyops_spend_use(const struct keyops *k, struct worker_ctx *w, const struct ks_kek *kek,
                     kekcache_entry *e);

/*
 * keyops_rotate_for_limit is the forced rotation when |old|'s use budget is
 * spent: a new KEK version, generated in the HSM, recorded in one
 * transaction. Returns KMS_OK also when another worker (or replica) rotated
 * first; the caller reads the current version again.
 */
int keyops_rotate_for_limit(struct worker_ctx *w, const struct ks_kek *old);

/*
 * keyops_take_iv writes a fresh random 12-byte GCM IV for a wrap under a KEK.
 * IVs are public, so they come from the worker's buffer of RAND_bytes output,
 * 64 at a time (one RAND_bytes call costs about a microsecond); taken bytes
 * are wiped from the buffer so no IV is handed out twice.
 */
int keyops_take_iv(struct worker_ctx *w, uint8_t iv[DEKWRAP_IV_LEN]);

/* keyops_result_clear wipes and frees what |res| holds. */
void keyops_result_clear(struct keyops_result *res);

#endif
