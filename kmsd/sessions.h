/* Session keys on a worker: open, fetch, close, shred and list them; re-wrap them after rotation. */
#ifndef KMSD_SESSIONS_H
#define KMSD_SESSIONS_H

#include <stddef.h>
#include <stdint.h>

#include "keyops.h"
#include "kms.pb-c.h"
#include "workers.h"

/*
 * A session key (docs/SESSIONS.md) is a data key that kmsd keeps, wrapped
 * under the tenant's KEK, one per (tenant, session id): the recording service
 * gets it in plaintext from OpenSession, allowed principals from
 * GetSessionKey, and one officer command (ShredSession) destroys the only
 * wrapped copy, so every envelope sealed under it becomes unreadable.
 *
 * The wrapped form is kmsd's wrapped-data-key format 1 (dekwrap.h), but its
 * AAD has its own label, so no Decrypt or ReEncrypt request can ever unwrap a
 * session key, whatever blob and context a caller sends:
 *
 *   "tenantkms/session/v1" || u8 len || tenant || u8 len || session id
 *   || u32 BE KEK version
 *
 * Like keyops, each function runs on a worker, returns KMS_OK or an error
 * code with a reason in |why| (never key material) and, where it builds a
 * response, hands back a message allocated with the system allocator
 * (protobuf_c_message_free_unpacked(msg, NULL)). Key bytes never go into such
 * a message: they come back in |res->plaintext| (a wiped kms_secret).
 */

#define SESSIONS_AAD_LABEL "tenantkms/session/v1"
#define SESSIONS_AAD_MAX (20 + 1 + 64 + 1 + 128 + 4)

/* What OpenSession and GetSessionKey return besides the key (in res->plaintext). */
struct sessions_key_info {
  int state; /* enum ks_session_state */
  int64_t created_ms;
  int64_t closed_ms;
};

/*
 * sessions_aad writes the AAD of a wrapped session key. Returns KMS_OK or
 * KMS_ERR_INVALID_ARGUMENT (a name over its limit, or |cap| too small).
 */
int sessions_aad(uint8_t *out, size_t cap, size_t *out_len, const char *tenant_id,
                 const char *session_id, uint32_t kek_version);

/*
 * OpenSession: a fresh key from the HSM's RNG, wrapped under the tenant's
 * current KEK (one use of its budget), stored with |metadata|; the plaintext
 * in res->plaintext. KMS_ERR_ALREADY_EXISTS if the id was ever used.
 */
int sessions_open(const struct keyops *k, struct worker_ctx *w, const char *by,
                  const Tkms__OpenSessionRequest *req, struct keyops_result *res,
                  struct sessions_key_info *info);

/* GetSessionKey: the stored key unwrapped; NOT_FOUND for a shredded session too. */
int sessions_get_key(const struct keyops *k, struct worker_ctx *w,
                     const Tkms__GetSessionKeyRequest *req, struct keyops_result *res,
                     struct sessions_key_info *info);

/* CloseSession: no new encryption under the key; GetSessionKey keeps answering. Idempotent. */
int sessions_close(struct worker_ctx *w, const char *by, const Tkms__CloseSessionRequest *req,
                   char *why, size_t why_len, Tkms__CloseSessionResponse **out);

/*
 * ShredSession: deletes the wrapped key and metadata, checkpoints the WAL,
 * and returns the receipt. |*out_kek_version| names the version of the key
 * destroyed (for the audit record).
 */
int sessions_shred(struct worker_ctx *w, const char *by, const Tkms__ShredSessionRequest *req,
                   char *why, size_t why_len, Tkms__ShredSessionResponse **out,
                   uint32_t *out_kek_version);

/* ListSessions: one page by tenant, creation time and state, oldest first. */
int sessions_list(struct worker_ctx *w, const Tkms__ListSessionsRequest *req, char *why,
                  size_t why_len, Tkms__ListSessionsResponse **out);

/*
 * sessions_rewrap_tick moves stored session keys to their tenant's newest KEK
 * version after a rotation (the job the rotation recorded in the keystore),
 * in batches of one transaction each, until |budget_ms| has passed; the rest
 * waits for the next tick. Resumable: the cursor is in the keystore.
 * Returns the number of keys moved.
 */
size_t sessions_rewrap_tick(const struct keyops *k, struct worker_ctx *w, int64_t budget_ms);

#endif
