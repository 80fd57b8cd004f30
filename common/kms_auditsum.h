/* Audit export summaries: matching key state changes to audit records, reading CSV exports. */
#ifndef KMS_AUDITSUM_H
#define KMS_AUDITSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Shared by kmsctl's export (which names the record of each state change) and
 * verify-export (which checks that naming offline); pure, for the unit test.
 */

/* kms_auditsum_parse_time reads a record time "YYYY-MM-DDTHH:MM:SS.mmmZ" as ms; -1 if malformed. */
int64_t kms_auditsum_parse_time(const char *s);

/* A candidate audit record: an OK lifecycle call (the strings are borrowed). */
struct kms_auditsum_rec {
  uint64_t index;
  int64_t at_ms;
  const char *principal, *op, *tenant;
  bool used;
};

/* How far after the keystore's time the record may be (its time is when the answer was ready). */
#define KMS_AUDITSUM_SLACK_BEFORE_MS 1000
#define KMS_AUDITSUM_SLACK_AFTER_MS 10000

/*
 * kms_auditsum_match finds the record that stands for a state change: the
 * unused one of |op| by |principal| for |tenant| closest to |at_ms| within
 * [at_ms - KMS_AUDITSUM_SLACK_BEFORE_MS, at_ms + KMS_AUDITSUM_SLACK_AFTER_MS],
 * marks it used and returns its position in |recs|; -1 if there is none. Each
 * record stands for one change at most.
 */
long kms_auditsum_match(struct kms_auditsum_rec *recs, size_t n, const char *op,
                        const char *principal, const char *tenant, int64_t at_ms);

/*
 * kms_auditsum_known_op: is |op| a record's op (an RPC method name, or
 * "unknown")? kmsd refuses to start when one of its methods is missing here
 * (rpc_check_policy_vocabulary), so a new RPC is added here with it.
 */
bool kms_auditsum_known_op(const char *op);

/* One CSV record (RFC 4180): its fields, NUL-terminated, unquoted. */
struct kms_csv_row {
  char **f;
  size_t n;
};

/*
 * kms_csv_next reads one record of |buf| from *|pos| (quoted fields may hold
 * commas, "" and line breaks; a record ends at LF or CRLF) and advances *|pos|.
 * A blank line is a record of one empty field. Returns 0 and fills |out|
 * (kms_csv_row_free), 1 at the end of |buf|, -1 if malformed (a quote that is
 * not closed, or text after a closing quote).
 */
int kms_csv_next(const char *buf, size_t len, size_t *pos, struct kms_csv_row *out);
void kms_csv_row_free(struct kms_csv_row *row);

#endif
