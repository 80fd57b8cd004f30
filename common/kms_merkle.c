/* RFC 6962 Merkle hash trees: leaf/node hashes, the append frontier, inclusion and consistency
 * proofs. */
#include "kms_merkle.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kms_err.h"

void
kms_merkle_leaf_hash(uint8_t out[KMS_MERKLE_HASH_LEN], const uint8_t *data, size_t len)
{
  static const uint8_t prefix = 0x00;
  EVP_MD_CTX *c = EVP_MD_CTX_new();

  /* Only allocation can fail here; a zero hash then matches nothing, which fails closed. */
  if (c == NULL || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 ||
      EVP_DigestUpdate(c, &prefix, 1) != 1 || EVP_DigestUpdate(c, data, len) != 1 ||
      EVP_DigestFinal_ex(c, out, NULL) != 1) {
    memset(out, 0, KMS_MERKLE_HASH_LEN);
  }
  EVP_MD_CTX_free(c);
}

void
kms_merkle_node_hash(uint8_t out[KMS_MERKLE_HASH_LEN], const uint8_t left[KMS_MERKLE_HASH_LEN],
                     const uint8_t right[KMS_MERKLE_HASH_LEN])
{
  uint8_t buf[1 + 2 * KMS_MERKLE_HASH_LEN];

  /* Copy first: |out| may alias an input. */
  buf[0] = 0x01;
  memcpy(buf + 1, left, KMS_MERKLE_HASH_LEN);
  memcpy(buf + 1 + KMS_MERKLE_HASH_LEN, right, KMS_MERKLE_HASH_LEN);
  if (EVP_Digest(buf, sizeof(buf), out, NULL, EVP_sha256(), NULL) != 1) {
    memset(out, 0, KMS_MERKLE_HASH_LEN);
  }
}

void
kms_merkle_frontier_init(struct kms_merkle_frontier *f)
{
  memset(f, 0, sizeof(*f));
}

int
kms_merkle_frontier_append(struct kms_merkle_frontier *f,
                           const uint8_t leaf_hash[KMS_MERKLE_HASH_LEN])
{
  uint8_t h[KMS_MERKLE_HASH_LEN];
  unsigned i = 0;

  if (f->size >= (UINT64_C(1) << 63)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Binary increment: every set low bit is a perfect subtree the new leaf completes. */
  memcpy(h, leaf_hash, sizeof(h));
  while ((f->size >> i) & 1) {
    kms_merkle_node_hash(h, f->nodes[i], h);
    memset(f->nodes[i], 0, KMS_MERKLE_HASH_LEN);
    i++;
  }
  memcpy(f->nodes[i], h, sizeof(h));
  f->size++;
  return KMS_OK;
}

void
kms_merkle_frontier_root(const struct kms_merkle_frontier *f, uint8_t out[KMS_MERKLE_HASH_LEN])
{
  uint8_t h[KMS_MERKLE_HASH_LEN];
  bool have = false;

  if (f->size == 0) {
    if (EVP_Digest("", 0, out, NULL, EVP_sha256(), NULL) != 1) {
      memset(out, 0, KMS_MERKLE_HASH_LEN);
    }
    return;
  }
  /* RFC 6962 trees lean left: the smallest subtree is the deepest right child. */
  for (unsigned i = 0; i < 64; i++) {
    if (((f->size >> i) & 1) == 0) {
      continue;
    }
    if (!have) {
      memcpy(h, f->nodes[i], sizeof(h));
      have = true;
    } else {
      kms_merkle_node_hash(h, f->nodes[i], h);
    }
  }
  memcpy(out, h, sizeof(h));
}

/* largest_pow2_below returns the largest power of two strictly less than n (n >= 2). */
static uint64_t
largest_pow2_below(uint64_t n)
{
  uint64_t k = 1;
  while (k << 1 < n) {
    k <<= 1;
  }
  return k;
}

void
kms_merkle_root(uint8_t out[KMS_MERKLE_HASH_LEN], const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN],
                uint64_t n)
{
  struct kms_merkle_frontier f;

  /* The frontier computes MTH exactly; one code path for the root keeps them in step. */
  kms_merkle_frontier_init(&f);
  for (uint64_t i = 0; i < n; i++) {
    (void)kms_merkle_frontier_append(&f, leaves[i]);
  }
  kms_merkle_frontier_root(&f, out);
}

static int
path_push(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *len,
          const uint8_t h[KMS_MERKLE_HASH_LEN])
{
  if (*len >= KMS_MERKLE_MAX_PROOF) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memcpy(out_path[*len], h, KMS_MERKLE_HASH_LEN);
  (*len)++;
  return KMS_OK;
}

static int
inclusion_path(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *len,
               const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t n, uint64_t m)
{
  uint8_t h[KMS_MERKLE_HASH_LEN];
  uint64_t k;
  int r;

  if (n <= 1) {
    return KMS_OK;
  }
  k = largest_pow2_below(n);
  if (m < k) {
    if ((r = inclusion_path(out_path, len, leaves, k, m)) != KMS_OK) {
      return r;
    }
    kms_merkle_root(h, leaves + k, n - k);
  } else {
    if ((r = inclusion_path(out_path, len, leaves + k, n - k, m - k)) != KMS_OK) {
      return r;
    }
    kms_merkle_root(h, leaves, k);
  }
  return path_push(out_path, len, h);
}

int
kms_merkle_inclusion_proof(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *out_len,
                           const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t n, uint64_t index)
{
  *out_len = 0;
  if (index >= n) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return inclusion_path(out_path, out_len, leaves, n, index);
}

static int
subproof(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *len,
         const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t m, uint64_t n, bool b)
{
  uint8_t h[KMS_MERKLE_HASH_LEN];
  uint64_t k;
  int r;

  if (m == n) {
    if (b) {
      return KMS_OK;
    }
    kms_merkle_root(h, leaves, n);
    return path_push(out_path, len, h);
  }
  k = largest_pow2_below(n);
  if (m <= k) {
    if ((r = subproof(out_path, len, leaves, m, k, b)) != KMS_OK) {
      return r;
    }
    kms_merkle_root(h, leaves + k, n - k);
  } else {
    if ((r = subproof(out_path, len, leaves + k, m - k, n - k, false)) != KMS_OK) {
      return r;
    }
    kms_merkle_root(h, leaves, k);
  }
  return path_push(out_path, len, h);
}

int
kms_merkle_consistency_proof(uint8_t (*out_path)[KMS_MERKLE_HASH_LEN], size_t *out_len,
                             const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t m, uint64_t n)
{
  *out_len = 0;
  if (m == 0 || m > n) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return subproof(out_path, out_len, leaves, m, n, true);
}

int
kms_merkle_inclusion_verify(uint64_t index, uint64_t size,
                            const uint8_t leaf_hash[KMS_MERKLE_HASH_LEN],
                            const uint8_t (*path)[KMS_MERKLE_HASH_LEN], size_t path_len,
                            const uint8_t root[KMS_MERKLE_HASH_LEN])
{
  uint8_t r[KMS_MERKLE_HASH_LEN];
  uint64_t fn, sn;

  if (index >= size || path_len > KMS_MERKLE_MAX_PROOF) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  fn = index;
  sn = size - 1;
  memcpy(r, leaf_hash, sizeof(r));
  for (size_t i = 0; i < path_len; i++) {
    if (sn == 0) {
      return KMS_ERR_DECRYPT; /* path longer than the tree is deep */
    }
    if ((fn & 1) || fn == sn) {
      kms_merkle_node_hash(r, path[i], r);
      while ((fn & 1) == 0 && fn != 0) {
        fn >>= 1;
        sn >>= 1;
      }
    } else {
      kms_merkle_node_hash(r, r, path[i]);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0 || CRYPTO_memcmp(r, root, sizeof(r)) != 0) {
    return KMS_ERR_DECRYPT;
  }
  return KMS_OK;
}

static bool
is_pow2(uint64_t x)
{
  return x != 0 && (x & (x - 1)) == 0;
}

int
kms_merkle_consistency_verify(uint64_t size1, uint64_t size2,
                              const uint8_t root1[KMS_MERKLE_HASH_LEN],
                              const uint8_t root2[KMS_MERKLE_HASH_LEN],
                              const uint8_t (*path)[KMS_MERKLE_HASH_LEN], size_t path_len)
{
  uint8_t fr[KMS_MERKLE_HASH_LEN], sr[KMS_MERKLE_HASH_LEN];
  const uint8_t *c;
  uint64_t fn, sn;
  size_t i = 0;
  bool first_given;

  if (size1 == 0 || size1 > size2 || path_len > KMS_MERKLE_MAX_PROOF) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (size1 == size2) {
    if (path_len != 0 || CRYPTO_memcmp(root1, root2, KMS_MERKLE_HASH_LEN) != 0) {
      return KMS_ERR_DECRYPT;
    }
    return KMS_OK;
  }
  /* When size1 is a power of two its root is the first node of the path, implicitly. */
  first_given = !is_pow2(size1);
  if (path_len == 0) {
    return KMS_ERR_DECRYPT;
  }
  fn = size1 - 1;
  sn = size2 - 1;
  while (fn & 1) {
    fn >>= 1;
    sn >>= 1;
  }
  c = first_given ? path[0] : root1;
  i = first_given ? 1 : 0;
  memcpy(fr, c, sizeof(fr));
  memcpy(sr, c, sizeof(sr));
  for (; i < path_len; i++) {
    c = path[i];
    if (sn == 0) {
      return KMS_ERR_DECRYPT;
    }
    if ((fn & 1) || fn == sn) {
      kms_merkle_node_hash(fr, c, fr);
      kms_merkle_node_hash(sr, c, sr);
      while ((fn & 1) == 0 && fn != 0) {
        fn >>= 1;
        sn >>= 1;
      }
    } else {
      kms_merkle_node_hash(sr, sr, c);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0 || CRYPTO_memcmp(fr, root1, sizeof(fr)) != 0 ||
      CRYPTO_memcmp(sr, root2, sizeof(sr)) != 0) {
    return KMS_ERR_DECRYPT;
  }
  return KMS_OK;
}
