/* Key lifecycle on a worker: rotation, key states, dual control, crypto-shredding, the timer's
 * work. */
#ifndef KMSD_LIFECYCLE_H
#define KMSD_LIFECYCLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "kekcache.h"
#include "keyops.h"
#include "kms.pb-c.h"
#include "workers.h"

/*
 * States and transitions follow NIST SP 800-57 (docs/LIFECYCLE.md):
 *
 *   version: active -> decrypt-only (rotation) ; active|decrypt-only <-> disabled
 *            active|decrypt-only|disabled -> pending destruction (dual control)
 *            pending destruction -> previous state (cancel) | destroyed (when due)
 *   tenant:  active <-> disabled (disabling needs dual control)
 *            active|disabled -> pending destruction (dual control) -> destroyed
 *
 * Every change is one keystore transaction that also records when, by whom
 * (the officer's principal) and why. A call against a key in the wrong state
 * is KMS_ERR_FAILED_PRECONDITION with a message naming the state.
 *
 * Like keyops, each function runs on a worker (HSM and keystore calls block),
 * returns KMS_OK or an error code with a reason in |why| (never key
 * material), and on success hands back a response message allocated with the
 * system allocator, freed with protobuf_c_message_free_unpacked(msg, NULL).
 */
struct lifecycle {
  const struct kmsd_config *cfg; /* approvals, windows, waiting and rotation periods */
  kekcache *cache;               /* loaded KEKs to drop when a key leaves service */
};

int lifecycle_rotate(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                     const char *tenant_id, char *why, size_t why_len,
                     Tkms__RotateKeyResponse **out);

int lifecycle_list_keys(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
                        char *why, size_t why_len, Tkms__ListKeysResponse **out);

int lifecycle_list_tenants(const struct lifecycle *lc, struct worker_ctx *w, const char *after,
                           uint32_t limit, char *why, size_t why_len,
                           Tkms__ListTenantsResponse **out);

int lifecycle_set_rotation(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                           const char *tenant_id, uint32_t days, char *why, size_t why_len,
                           Tkms__SetRotationPeriodResponse **out);

/* DisableKey: a version at once; a whole tenant (version 0) after approval. */
int lifecycle_disable(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                      const char *tenant_id, uint32_t version, char *why, size_t why_len,
                      Tkms__KeyChangeResponse **out);

/* EnableKey: back to service (a version becomes active only if it is the newest). */
int lifecycle_enable(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                     const char *tenant_id, uint32_t version, char *why, size_t why_len,
                     Tkms__KeyChangeResponse **out);

/* ScheduleDestruction: always opens an approval request (dual control). */
int lifecycle_schedule_destruction(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                                   const char *tenant_id, uint32_t version, uint32_t waiting_days,
                                   bool no_waiting, char *why, size_t why_len,
                                   Tkms__KeyChangeResponse **out);

/* CancelDestruction: cancels the pending request and restores a key pending destruction. */
int lifecycle_cancel_destruction(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                                 const char *tenant_id, uint32_t version, char *why, size_t why_len,
                                 Tkms__KeyChangeResponse **out);

/* Approve: one more officer's approval; executes the action when enough. */
int lifecycle_approve(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                      uint64_t request_id, char *why, size_t why_len, Tkms__ApproveResponse **out);

int lifecycle_list_requests(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
                            bool include_closed, char *why, size_t why_len,
                            Tkms__ListRequestsResponse **out);

int lifecycle_list_receipts(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
                            char *why, size_t why_len, Tkms__ListReceiptsResponse **out);

/* ReEncrypt: the data key moves to |target_version| (0: newest) inside kmsd. */
int lifecycle_re_encrypt(const struct lifecycle *lc, const struct keyops *k, struct worker_ctx *w,
                         const Tkms__ReEncryptRequest *req, char *why, size_t why_len,
                         Tkms__ReEncryptResponse **out);

/* ReEncryptBatch: every item gets its own status; the call fails only as a whole. */
int lifecycle_re_encrypt_batch(const struct lifecycle *lc, const struct keyops *k,
                               struct worker_ctx *w, const Tkms__ReEncryptBatchRequest *req,
                               char *why, size_t why_len, Tkms__ReEncryptBatchResponse **out);

/*
 * lifecycle_tick is the timer's work (kmsd/main.c, every lifecycle_interval_s):
 * expires approval requests past their window, crypto-shreds what fell due,
 * rotates tenants whose rotation period passed, and retries a WAL checkpoint
 * that could not complete.
 */
void lifecycle_tick(const struct lifecycle *lc, struct worker_ctx *w);

/*
 * lifecycle_tick_submit queues one lifecycle_tick on |pool| unless one is
 * still queued or running. Call from the loop thread.
 */
void lifecycle_tick_submit(workers *pool, const struct kmsd_config *cfg, kekcache *cache);

/*
 * lifecycle_shred_sync makes deletions final in the keystore files (a
 * truncating WAL checkpoint); if readers keep it from completing, the next
 * tick retries. Called after every crypto-shred, sessions' included.
 */
void lifecycle_shred_sync(struct worker_ctx *w);

/* Names of states and actions, for messages and listings. */
const char *lifecycle_version_state_name(int state);
const char *lifecycle_tenant_state_name(int state);

#endif
