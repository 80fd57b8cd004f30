/* Audit export (ExportAudit): filtered records with inclusion proofs against a signed checkpoint. */
#ifndef KMSD_AUDIT_EXPORT_H
#define KMSD_AUDIT_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "audit.h"
#include "kms.pb-c.h"
#include "kms_merkle.h"

#define AUDIT_EXPORT_LIMIT_DEFAULT 500

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
