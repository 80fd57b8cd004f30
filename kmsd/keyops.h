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

/* keyops_result_clear wipes and frees what |res| holds. */
void keyops_result_clear(struct keyops_result *res);

#endif
