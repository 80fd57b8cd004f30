/* RFC 6962 Merkle hash trees for the audit log: hashes, an O(log n) frontier, proofs. */
#ifndef KMS_MERKLE_H
#define KMS_MERKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KMS_MERKLE_HASH_LEN 32
/* A tree of up to 2^63 leaves has at most 63 levels under the root. */
#define KMS_MERKLE_MAX_PROOF 64

/* kms_merkle_leaf_hash writes SHA-256(0x00 || data) (RFC 6962 section 2.1). */
void kms_merkle_leaf_hash(uint8_t out[KMS_MERKLE_HASH_LEN], const uint8_t *data, size_t len);

/* kms_merkle_node_hash writes SHA-256(0x01 || left || right). |out| may alias an input. */
void kms_merkle_node_hash(uint8_t out[KMS_MERKLE_HASH_LEN], const uint8_t left[KMS_MERKLE_HASH_LEN],
                          const uint8_t right[KMS_MERKLE_HASH_LEN]);

/*
 * The right frontier ("compact range" [0, size)) of a tree: for every bit i
 * set in |size|, |nodes[i]| is the root of the perfect subtree of 2^i leaves
 * that bit stands for. That is all an append-only log needs to keep: appending
 * touches at most log2(size) nodes and the root folds the frontier.
 */
struct kms_merkle_frontier {
  uint64_t size;
  uint8_t nodes[64][KMS_MERKLE_HASH_LEN];
};

/* kms_merkle_frontier_init makes |f| the empty tree. */
void kms_merkle_frontier_init(struct kms_merkle_frontier *f);

/* kms_merkle_frontier_append adds one leaf hash. Returns KMS_ERR_INVALID_ARGUMENT when full. */
int kms_merkle_frontier_append(struct kms_merkle_frontier *f,
                               const uint8_t leaf_hash[KMS_MERKLE_HASH_LEN]);

/* kms_merkle_frontier_root writes the tree head: SHA-256("") for the empty tree. */
void kms_merkle_frontier_root(const struct kms_merkle_frontier *f,
                              uint8_t out[KMS_MERKLE_HASH_LEN]);

/*
 * Proofs over a tree whose leaf hashes are all in memory (|leaves|, |n| of
 * them): what an exporter holding the log can produce. Paths are written to
 * |out_path| (capacity KMS_MERKLE_MAX_PROOF hashes), their length to |*out_len|.
 */

/* kms_merkle_root computes MTH(D[0:n]) from leaf hashes. */
void kms_merkle_root(uint8_t out[KMS_MERKLE_HASH_LEN], const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN],
                     uint64_t n);

/* kms_merkle_inclusion_proof: PATH(index, D[0:n]) (RFC 6962 section 2.1.1). */
int kms_merkle_inclusion_proof(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *out_len,
                               const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t n,
                               uint64_t index);

/* kms_merkle_consistency_proof: PROOF(m, D[0:n]) (RFC 6962 section 2.1.2), 0 < m <= n. */
int kms_merkle_consistency_proof(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *out_len,
                                 const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t m,
                                 uint64_t n);

/*
 * kms_merkle_inclusion_verify checks that |leaf_hash| is leaf |index| of the
 * tree of |size| leaves with head |root| (RFC 9162 section 2.1.3.2). Returns
 * KMS_OK or KMS_ERR_DECRYPT (does not verify) / KMS_ERR_INVALID_ARGUMENT.
 */
int kms_merkle_inclusion_verify(uint64_t index, uint64_t size,
                                const uint8_t leaf_hash[KMS_MERKLE_HASH_LEN],
                                const uint8_t (*path)[KMS_MERKLE_HASH_LEN], size_t path_len,
                                const uint8_t root[KMS_MERKLE_HASH_LEN]);

/*
 * kms_merkle_consistency_verify checks that the tree of |size2| leaves with
 * head |root2| extends the tree of |size1| leaves with head |root1| (RFC 9162
 * section 2.1.4.2). Same returns as kms_merkle_inclusion_verify.
 */
int kms_merkle_consistency_verify(uint64_t size1, uint64_t size2,
                                  const uint8_t root1[KMS_MERKLE_HASH_LEN],
                                  const uint8_t root2[KMS_MERKLE_HASH_LEN],
                                  const uint8_t (*path)[KMS_MERKLE_HASH_LEN], size_t path_len);

#endif
