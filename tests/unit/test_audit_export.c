/* Unit tests of kmsd/audit_export.c: the state-change replay and the proofs from tree levels. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "audit_export.h"
#include "kms_err.h"
#include "kms_merkle.h"

static struct ks_event_row
ev(const char *tenant, int64_t at, uint32_t version, const char *event, const char *by,
   const char *detail)
{
  struct ks_event_row r;
  memset(&r, 0, sizeof(r));
  snprintf(r.tenant_id, sizeof(r.tenant_id), "%s", tenant);
  r.e.at_ms = at;
  r.e.version = version;
  snprintf(r.e.event, sizeof(r.e.event), "%s", event);
  snprintf(r.e.by, sizeof(r.e.by), "%s", by);
  snprintf(r.e.detail, sizeof(r.e.detail), "%s", detail);
  return r;
}

static void
expect(const struct audit_change *c, uint32_t version, const char *event, const char *old_state,
       const char *new_state)
{
  ck_assert_uint_eq(c->row->e.version, version);
  ck_assert_str_eq(c->row->e.event, event);
  ck_assert_str_eq(c->old_state, old_state);
  ck_assert_str_eq(c->new_state, new_state);
}

START_TEST(test_replay_follows_the_lifecycle_state_machine)
{
  struct ks_event_row rows[] = {
      ev("a", 10, 1, "created", "off", ""),
      ev("a", 20, 2, "rotated", "off", "on demand"),
      ev("a", 30, 1, "disabled", "off", ""),
      ev("a", 40, 1, "enabled", "off", ""),
      ev("a", 50, 0, "approval_requested", "off", "request 7: disable_tenant, 1 of 2 approvals"),
      ev("a", 51, 0, "approved", "off2", "request 7: disable_tenant, 2 of 2 approvals"),
      ev("a", 51, 0, "disabled", "off2", "request 7 by off"),
      ev("a", 60, 0, "enabled", "off", ""),
      ev("a", 70, 2, "destruction_scheduled", "off2", "request 8 by off"),
      ev("a", 80, 2, "destruction_cancelled", "off", ""),
      ev("a", 85, 3, "rotated", "kmsd", "rotation period"),
      ev("a", 90, 2, "disabled", "off", ""),
      ev("a", 95, 0, "destruction_scheduled", "off2", "request 9 by off"),
      ev("a", 99, 0, "destroyed", "kmsd", "receipt 4, versions 1,2,3"),
      ev("b", 5, 1, "created", "off", ""),
      ev("b", 55, 1, "destruction_scheduled", "off2", "request 10 by off"),
  };
  struct audit_change *c = NULL;
  size_t n = 0;

  ck_assert_int_eq(audit_export_replay(rows, sizeof(rows) / sizeof(rows[0]), 0, 0, &c, &n), KMS_OK);
  ck_assert_uint_eq(n, 14); /* every event but the request and the approval */
  expect(&c[0], 1, "created", "", "active");
  expect(&c[1], 2, "rotated", "", "active");
  expect(&c[2], 1, "disabled", "decrypt-only", "disabled"); /* demoted by the rotation */
  expect(&c[3], 1, "enabled", "disabled", "decrypt-only");  /* not the newest */
  expect(&c[4], 0, "disabled", "active", "disabled");
  ck_assert_uint_eq(c[4].request_id, 7);
  expect(&c[5], 0, "enabled", "disabled", "active");
  expect(&c[6], 2, "destruction_scheduled", "active", "pending destruction");
  ck_assert_uint_eq(c[6].request_id, 8);
  expect(&c[7], 2, "destruction_cancelled", "pending destruction", "active");
  expect(&c[8], 3, "rotated", "", "active");
  expect(&c[9], 2, "disabled", "decrypt-only", "disabled"); /* demoted by v3 */
  expect(&c[10], 0, "destruction_scheduled", "active", "pending destruction");
  expect(&c[11], 0, "destroyed", "pending destruction", "destroyed");
  ck_assert_uint_eq(c[11].receipt_id, 4);
  ck_assert_uint_eq(c[11].request_id, 0);
  /* The next tenant starts from nothing. */
  expect(&c[12], 1, "created", "", "active");
  expect(&c[13], 1, "destruction_scheduled", "active", "pending destruction");
  free(c);
}
END_TEST

START_TEST(test_replay_returns_only_the_period_but_replays_what_came_before)
{
  struct ks_event_row rows[] = {
      ev("a", 10, 1, "created", "off", ""),
      ev("a", 20, 1, "disabled", "off", ""),
      ev("a", 30, 1, "enabled", "off", ""),
      ev("a", 40, 2, "rotated", "off", ""),
  };
  struct audit_change *c = NULL;
  size_t n = 0;

  /* [30, 40): only the enable, and its old state comes from before the period. */
  ck_assert_int_eq(audit_export_replay(rows, 4, 30, 40, &c, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  expect(&c[0], 1, "enabled", "disabled", "active");
  free(c);
  ck_assert_int_eq(audit_export_replay(rows, 4, 100, 200, &c, &n), KMS_OK);
  ck_assert_uint_eq(n, 0);
  ck_assert_ptr_null(c);
  /* A history that starts after its beginning (older kmsd): old states unknown, not guessed. */
  ck_assert_int_eq(audit_export_replay(rows + 2, 2, 0, 0, &c, &n), KMS_OK);
  ck_assert_uint_eq(n, 2);
  expect(&c[0], 1, "enabled", "", "active");
  free(c);
}
END_TEST

START_TEST(test_replay_reads_request_and_receipt_ids_only_where_they_start_the_detail)
{
  struct ks_event_row rows[] = {
      ev("a", 1, 1, "disabled", "off", "request5 by x"),
      ev("a", 2, 1, "enabled", "off", "receipt9"),
      ev("a", 3, 1, "disabled", "off", "request 12 by x"),
  };
  struct audit_change *c = NULL;
  size_t n = 0;
  ck_assert_int_eq(audit_export_replay(rows, 3, 0, 0, &c, &n), KMS_OK);
  ck_assert_uint_eq(n, 3);
  ck_assert_uint_eq(c[0].request_id, 0);
  ck_assert_uint_eq(c[1].receipt_id, 0);
  ck_assert_uint_eq(c[2].request_id, 12);
  free(c);
}
END_TEST

START_TEST(test_proofs_from_levels_equal_rfc6962_paths)
{
  for (uint64_t n = 1; n <= 33; n++) {
    uint8_t(*leaves)[KMS_MERKLE_HASH_LEN] = calloc(n, KMS_MERKLE_HASH_LEN);
    uint8_t(*lv)[KMS_MERKLE_HASH_LEN] = NULL;
    uint64_t total = 0;
    ck_assert_ptr_nonnull(leaves);
    for (uint64_t i = 0; i < n; i++) {
      uint8_t b = (uint8_t)i;
      kms_merkle_leaf_hash(leaves[i], &b, 1);
    }
    ck_assert_int_eq(audit_export_levels((const uint8_t(*)[KMS_MERKLE_HASH_LEN])leaves, n, &lv,
                                         &total),
                     KMS_OK);
    for (uint64_t i = 0; i < n; i++) {
      uint8_t a[KMS_MERKLE_MAX_PROOF][KMS_MERKLE_HASH_LEN], b[KMS_MERKLE_MAX_PROOF][KMS_MERKLE_HASH_LEN];
      size_t al = 0, bl = 0;
      audit_export_proof((const uint8_t(*)[KMS_MERKLE_HASH_LEN])lv, n, i, a, &al);
      ck_assert_int_eq(kms_merkle_inclusion_proof(b, &bl, (const uint8_t(*)[KMS_MERKLE_HASH_LEN])leaves, n, i),
                       KMS_OK);
      ck_assert_uint_eq(al, bl);
      ck_assert_int_eq(memcmp(a, b, al * KMS_MERKLE_HASH_LEN), 0);
    }
    free(lv);
    free(leaves);
  }
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("audit_export");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_replay_follows_the_lifecycle_state_machine);
  tcase_add_test(tc, test_replay_returns_only_the_period_but_replays_what_came_before);
  tcase_add_test(tc, test_replay_reads_request_and_receipt_ids_only_where_they_start_the_detail);
  tcase_add_test(tc, test_proofs_from_levels_equal_rfc6962_paths);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
