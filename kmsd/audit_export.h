/* Audit export (ExportAudit): filtered records with inclusion proofs against a signed checkpoint. */
#ifndef KMSD_AUDIT_EXPORT_H
#define KMSD_AUDIT_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "audit.h"
#include "keystore.h"
#include "kms.pb-c.h"
#include "kms_merkle.h"

#define AUDIT_EXPORT_LIMIT_DEFAULT 500
/* State changes in one export at most (history rows read to find them). */
#define AUDIT_EXPORT_HISTORY_ROWS 20000

/*
 * audit_export_page answers one ExportAudit page (docs/AUDIT.md, "Export").
 * Runs on a worker: reads the log files read-only, only up to the checkpoint
 * it proves against (the latest, or the one of size |req->tree_size|), so the
 * writer thread is never in the way. Only records of |req->tenant_id| are
 * returned when it is set; rpc's policy check made it the caller's tenant.
 * At most |max_bytes| of records per page (at least one). On success *out is
 * a malloc'd response (protobuf_c_message_free_unpacked). |why| says what
 * was wrong otherwise.
 */
int audit_export_page(audit *a, const Tkms__ExportAuditRequest *req, size_t max_bytes,
                      char *why, size_t why_len, Tkms__ExportAuditResponse **out);

/*
 * Key state changes for the export's summary (docs/AUDIT.md, "State changes").
 * audit_export_replay walks |rows| (keystore_event_range: by tenant, oldest
 * first, each tenant's history from its start) through the state machine of
 * docs/LIFECYCLE.md and returns the changes made in [|from_ms|, |to_ms|)
 * (*out, free(); strings point into |rows|). Events that change no state
 * (approvals, refusals, expiries, rotation periods) are left out. Pure: for the
 * unit test.
 */
struct audit_change {
  const struct ks_event_row *row; /* tenant, when, version, event, who, detail */
  char old_state[24];             /* "" when the history does not say */
  char new_state[24];
  uint64_t request_id; /* from "request N ..." in the detail: dual control */
  uint64_t receipt_id; /* from "receipt N, ..." in the detail: destroyed */
};

int audit_export_replay(const struct ks_event_row *rows, size_t n, int64_t from_ms, int64_t to_ms,
                        struct audit_change **out, size_t *out_n);

/*
 * audit_export_state_changes fills |resp|'s state_changes for |req|'s period
 * and tenant (the first page of an export): the replayed changes, each with
 * its requester and approvers from the dual-control request or the
 * destruction receipt, and the audit operation that stands for it. At most
 * about |max_bytes| of them; state_changes_truncated says when more exist.
 */
int audit_export_state_changes(keystore *ks, const Tkms__ExportAuditRequest *req,
                               size_t max_bytes, Tkms__ExportAuditResponse *resp);

/*
 * Proofs from the tree's levels: |levels| holds level 0 (the |n| leaf hashes)
 * then each level above, a lone last node carried up unchanged; that is
 * RFC 6962's MTH. audit_export_levels builds them (malloc'd, *out_total
 * hashes); audit_export_proof writes PATH(index) like
 * kms_merkle_inclusion_proof, in O(log n). Exposed for the unit test.
 */
int audit_export_levels(const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t n,
                        uint8_t (**out)[KMS_MERKLE_HASH_LEN], uint64_t *out_total);
void audit_export_proof(const uint8_t (*levels)[KMS_MERKLE_HASH_LEN], uint64_t n, uint64_t index,
                        uint8_t (*path)[KMS_MERKLE_HASH_LEN], size_t *path_len);

#endif
