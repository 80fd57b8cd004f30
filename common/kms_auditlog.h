/* Reading an audit log back: replay into a Merkle tree, check sequence numbers and checkpoints. */
#ifndef KMS_AUDITLOG_H
#define KMS_AUDITLOG_H

#include <stddef.h>
#include <stdint.h>

#include "kms_merkle.h"
#include "kms_note.h"

/*
 * Shared by kmsd (recovery at start-up) and kmsctl (offline verification),
 * so that both read the log by the same rules (docs/AUDIT.md):
 *   - a log is files of JSON lines; line i (0-based, across files) starts
 *     with {"seq":i, and is leaf i of one RFC 6962 tree;
 *   - only the last file may end in an incomplete line (a crash during a
 *     write that was never acknowledged); it is not part of the tree.
 */

#define KMS_AUDIT_LINE_MAX 65536

struct kms_auditlog_cp {
  uint64_t size;
  uint8_t root[KMS_MERKLE_HASH_LEN];
  char source[64]; /* where it came from, for messages: "checkpoints #3", "trusted" */
};

struct kms_auditlog_result {
  struct kms_merkle_frontier tree; /* over every complete record read */
  uint64_t checkpoints_matched;
  uint64_t torn_bytes;         /* incomplete last line of the last file, not in the tree */
  uint64_t last_file_good_len; /* length of the last file without that line */
  uint64_t bad_seq;            /* first record found wrong (index), UINT64_MAX if none */
  char why[512];               /* what was found, for a human */
};

/*
 * kms_auditlog_replay reads |files| in order and rebuilds the tree, checking
 * every line's sequence number and, at every checkpoint size in |cps| (any
 * order), the root. Returns KMS_OK; KMS_ERR_DECRYPT when a record was edited,
 * inserted, removed or reordered (res->why and res->bad_seq locate it);
 * KMS_ERR_TRUNCATED when a checkpoint covers more records than the log holds
 * (the log was cut short); KMS_ERR_IO when a file cannot be read.
 */
int kms_auditlog_replay(const char *const *files, size_t n_files, const struct kms_auditlog_cp *cps,
                        size_t n_cps, struct kms_auditlog_result *res);

/*
 * kms_auditlog_replay_from is kms_auditlog_replay starting from |start|, the
 * tree over every record before |files[0]| (NULL: the empty tree, the same
 * as kms_auditlog_replay). A checkpoint of exactly start->size must be among
 * |cps| and match |start|, else KMS_ERR_DECRYPT; checkpoints below that size
 * are not looked at (their records are not read).
 */
int kms_auditlog_replay_from(const struct kms_merkle_frontier *start, const char *const *files,
                             size_t n_files, const struct kms_auditlog_cp *cps, size_t n_cps,
                             struct kms_auditlog_result *res);

/*
 * Frontier files: the tree after a closed log file, so that start-up reads
 * only the files after it (docs/AUDIT.md, "Start-up"). Text: a magic line,
 * "size N", then "LEVEL HEX" for every set bit of N in increasing order.
 * KMS_AUDIT_FRONTIER_MAX bytes hold any tree. Parsing is strict: any other
 * text is KMS_ERR_INVALID_ARGUMENT.
 */
#define KMS_AUDIT_FRONTIER_MAX 4608
int kms_auditlog_frontier_format(const struct kms_merkle_frontier *f, char *out, size_t cap,
                                 size_t *out_len);
int kms_auditlog_frontier_parse(const char *text, size_t len, struct kms_merkle_frontier *out);

/*
 * kms_auditlog_load_checkpoints reads a checkpoints file (signed notes
 * separated by blank lines), verifies every note with |k| and that its origin
 * is |k|'s name, and returns the checkpoints in file order (*out, free()).
 * A torn last note is not an error: |*out_good_len| is the length of the
 * file without it. A note that does not verify is KMS_ERR_DECRYPT (|why|
 * says which); a missing file is KMS_ERR_NOT_FOUND.
 */
int kms_auditlog_load_checkpoints(const char *path, const struct kms_note_vkey *k,
                                  struct kms_auditlog_cp **out, size_t *out_n,
                                  uint64_t *out_good_len, char *why, size_t why_len);

/*
 * kms_auditlog_read_file reads a whole file (a checkpoints file, an export)
 * into *out (malloc'd, NUL-terminated; free()) and its length. A missing file
 * is KMS_ERR_NOT_FOUND, other failures KMS_ERR_IO; |why| names the file.
 */
int kms_auditlog_read_file(const char *path, char **out, size_t *out_len, char *why,
                           size_t why_len);

/* kms_auditlog_parse_seq reads the N of a line starting {"seq":N, ; -1 if malformed. */
int kms_auditlog_parse_seq(const char *line, size_t len, uint64_t *out_seq);

#endif
