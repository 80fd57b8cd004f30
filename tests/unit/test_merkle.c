/* Unit tests of the RFC 6962 Merkle tree: golden roots, frontier vs recursion, proofs. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_err.h"
#include "kms_merkle.h"

typedef uint8_t hash_t[KMS_MERKLE_HASH_LEN];

static void
unhex32(uint8_t out[32], const char *hex)
{
  for (size_t i = 0; i < 32; i++) {
    unsigned v;
    ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
}

/* The RFC 6962 reference leaves used by Certificate Transparency's test data. */
static const struct {
  const char *data;
  size_t len;
} ct_leaves[8] = {
    {"", 0},
    {"\x00", 1},
    {"\x10", 1},
    {"\x20\x21", 2},
    {"\x30\x31", 2},
    {"\x40\x41\x42\x43", 4},
    {"\x50\x51\x52\x53\x54\x55\x56\x57", 8},
    {"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f", 16},
};
static const char *ct_roots[8] = {
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

START_TEST(test_empty_tree_root_is_sha256_of_nothing)
{
  struct kms_merkle_frontier f;
  uint8_t root[32], want[32];
  kms_merkle_frontier_init(&f);
  kms_merkle_frontier_root(&f, root);
  unhex32(want, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  ck_assert_mem_eq(root, want, 32);
}
END_TEST

START_TEST(test_frontier_roots_match_rfc6962_reference_vectors)
{
  struct kms_merkle_frontier f;
  kms_merkle_frontier_init(&f);
  for (int i = 0; i < 8; i++) {
    uint8_t lh[32], root[32], want[32];
    kms_merkle_leaf_hash(lh, (const uint8_t *)ct_leaves[i].data, ct_leaves[i].len);
    ck_assert_int_eq(kms_merkle_frontier_append(&f, lh), KMS_OK);
    kms_merkle_frontier_root(&f, root);
    unhex32(want, ct_roots[i]);
    ck_assert_msg(memcmp(root, want, 32) == 0, "root of %d leaves", i + 1);
  }
}
END_TEST

/* mth is the RFC's recursive definition, independent of the frontier. */
static void
mth(uint8_t out[32], hash_t *leaves, uint64_t n)
{
  if (n == 1) {
    memcpy(out, leaves[0], 32);
    return;
  }
  uint64_t k = 1;
  while (k * 2 < n) {
    k *= 2;
  }
  uint8_t l[32], r[32];
  mth(l, leaves, k);
  mth(r, leaves + k, n - k);
  kms_merkle_node_hash(out, l, r);
}

static hash_t *
make_leaves(uint64_t n)
{
  hash_t *leaves = calloc(n, sizeof(hash_t));
  ck_assert_ptr_nonnull(leaves);
  for (uint64_t i = 0; i < n; i++) {
    char rec[32];
    int len = snprintf(rec, sizeof(rec), "{\"seq\":%llu}", (unsigned long long)i);
    kms_merkle_leaf_hash(leaves[i], (const uint8_t *)rec, (size_t)len);
  }
  return leaves;
}

START_TEST(test_frontier_equals_recursive_definition_for_every_size)
{
  const uint64_t max = 300;
  hash_t *leaves = make_leaves(max);
  struct kms_merkle_frontier f;
  kms_merkle_frontier_init(&f);
  for (uint64_t n = 1; n <= max; n++) {
    uint8_t a[32], b[32], c[32];
    ck_assert_int_eq(kms_merkle_frontier_append(&f, leaves[n - 1]), KMS_OK);
    kms_merkle_frontier_root(&f, a);
    mth(b, leaves, n);
    kms_merkle_root(c, (const uint8_t(*)[32])leaves, n);
    ck_assert_msg(memcmp(a, b, 32) == 0 && memcmp(a, c, 32) == 0, "size %llu",
                  (unsigned long long)n);
  }
  free(leaves);
}
END_TEST

START_TEST(test_inclusion_proofs_verify_and_tampering_fails)
{
  const uint64_t max = 70;
  hash_t *leaves = make_leaves(max);
  for (uint64_t n = 1; n <= max; n++) {
    uint8_t root[32];
    kms_merkle_root(root, (const uint8_t(*)[32])leaves, n);
    for (uint64_t i = 0; i < n; i++) {
      uint8_t path[KMS_MERKLE_MAX_PROOF][32];
      size_t len = 0;
      ck_assert_int_eq(kms_merkle_inclusion_proof(path, &len, (const uint8_t(*)[32])leaves, n, i),
                       KMS_OK);
      ck_assert_int_eq(
          kms_merkle_inclusion_verify(i, n, leaves[i], (const uint8_t(*)[32])path, len, root),
          KMS_OK);
      /* Another leaf, another index, a flipped bit, or a shortened path: all refused. */
      if (n > 1) {
        ck_assert_int_ne(kms_merkle_inclusion_verify(i, n, leaves[(i + 1) % n],
                                                     (const uint8_t(*)[32])path, len, root),
                         KMS_OK);
        ck_assert_int_ne(kms_merkle_inclusion_verify((i + 1) % n, n, leaves[i],
                                                     (const uint8_t(*)[32])path, len, root),
                         KMS_OK);
        path[len - 1][5] ^= 1;
        ck_assert_int_ne(
            kms_merkle_inclusion_verify(i, n, leaves[i], (const uint8_t(*)[32])path, len, root),
            KMS_OK);
        path[len - 1][5] ^= 1;
        ck_assert_int_ne(
            kms_merkle_inclusion_verify(i, n, leaves[i], (const uint8_t(*)[32])path, len - 1, root),
            KMS_OK);
      }
    }
  }
  uint8_t root[32];
  ck_assert_int_eq(kms_merkle_inclusion_verify(3, 3, leaves[0], NULL, 0, root),
                   KMS_ERR_INVALID_ARGUMENT);
  free(leaves);
}
END_TEST

START_TEST(test_consistency_proofs_verify_and_tampering_fails)
{
  const uint64_t max = 40;
  hash_t *leaves = make_leaves(max);
  for (uint64_t n = 1; n <= max; n++) {
    uint8_t root2[32];
    kms_merkle_root(root2, (const uint8_t(*)[32])leaves, n);
    for (uint64_t m = 1; m <= n; m++) {
      uint8_t root1[32], other[32];
      uint8_t path[KMS_MERKLE_MAX_PROOF][32];
      size_t len = 0;
      kms_merkle_root(root1, (const uint8_t(*)[32])leaves, m);
      ck_assert_int_eq(kms_merkle_consistency_proof(path, &len, (const uint8_t(*)[32])leaves, m, n),
                       KMS_OK);
      ck_assert_msg(kms_merkle_consistency_verify(m, n, root1, root2, (const uint8_t(*)[32])path,
                                                  len) == KMS_OK,
                    "m=%llu n=%llu", (unsigned long long)m, (unsigned long long)n);
      memcpy(other, root1, 32);
      other[0] ^= 0x80;
      ck_assert_int_ne(
          kms_merkle_consistency_verify(m, n, other, root2, (const uint8_t(*)[32])path, len),
          KMS_OK);
      ck_assert_int_ne(
          kms_merkle_consistency_verify(m, n, root1, other, (const uint8_t(*)[32])path, len),
          KMS_OK);
      if (len > 0) {
        path[0][0] ^= 1;
        ck_assert_int_ne(
            kms_merkle_consistency_verify(m, n, root1, root2, (const uint8_t(*)[32])path, len),
            KMS_OK);
      }
    }
  }
  free(leaves);
}
END_TEST

START_TEST(test_a_changed_earlier_leaf_changes_every_later_root)
{
  hash_t *a = make_leaves(20), *b = make_leaves(20);
  b[7][0] ^= 1;
  for (uint64_t n = 1; n <= 20; n++) {
    uint8_t ra[32], rb[32];
    kms_merkle_root(ra, (const uint8_t(*)[32])a, n);
    kms_merkle_root(rb, (const uint8_t(*)[32])b, n);
    ck_assert_int_eq(memcmp(ra, rb, 32) == 0, n <= 7);
  }
  free(a);
  free(b);
}
END_TEST

static Suite *
merkle_suite(void)
{
  Suite *s = suite_create("merkle");
  TCase *tc = tcase_create("merkle");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_empty_tree_root_is_sha256_of_nothing);
  tcase_add_test(tc, test_frontier_roots_match_rfc6962_reference_vectors);
  tcase_add_test(tc, test_frontier_equals_recursive_definition_for_every_size);
  tcase_add_test(tc, test_inclusion_proofs_verify_and_tampering_fails);
  tcase_add_test(tc, test_consistency_proofs_verify_and_tampering_fails);
  tcase_add_test(tc, test_a_changed_earlier_leaf_changes_every_later_root);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(merkle_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
