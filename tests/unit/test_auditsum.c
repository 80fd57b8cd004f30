/* Unit tests of common/kms_auditsum.c: record times, change-to-record matching, CSV reading. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kms_auditsum.h"

START_TEST(test_record_times_parse_to_ms_and_bad_ones_are_refused)
{
  ck_assert_int_eq(kms_auditsum_parse_time("1970-01-01T00:00:00.000Z"), 0);
  ck_assert_int_eq(kms_auditsum_parse_time("2026-11-26T07:34:47.160Z"), 1795678487160LL);
  ck_assert_int_eq(kms_auditsum_parse_time("2026-11-26T07:34:47Z"), -1);
  ck_assert_int_eq(kms_auditsum_parse_time("2026-11-26T07:34:47.16xZ"), -1);
  ck_assert_int_eq(kms_auditsum_parse_time("2026-11-26 07:34:47.160Z"), -1);
  ck_assert_int_eq(kms_auditsum_parse_time(""), -1);
  ck_assert_int_eq(kms_auditsum_parse_time(NULL), -1);
}
END_TEST

START_TEST(test_a_change_matches_the_nearest_unused_record_of_its_call)
{
  struct kms_auditsum_rec r[] = {
      {.index = 3, .at_ms = 1000, .principal = "off", .op = "RotateKey", .tenant = "a"},
      {.index = 4, .at_ms = 1005, .principal = "off", .op = "RotateKey", .tenant = "b"},
      {.index = 5, .at_ms = 1010, .principal = "off", .op = "RotateKey", .tenant = "a"},
      {.index = 6, .at_ms = 1010, .principal = "off2", .op = "RotateKey", .tenant = "a"},
      {.index = 7, .at_ms = 1010, .principal = "off", .op = "EnableKey", .tenant = "a"},
      {.index = 8, .at_ms = 1010, .principal = "off", .op = "DisableKey", .tenant = NULL},
  };
  size_t n = sizeof(r) / sizeof(r[0]);

  ck_assert_int_eq(kms_auditsum_match(r, n, "RotateKey", "off", "a", 1008), 2);
  /* Used once: the next rotation at about that time takes the other record. */
  ck_assert_int_eq(kms_auditsum_match(r, n, "RotateKey", "off", "a", 1008), 0);
  ck_assert_int_eq(kms_auditsum_match(r, n, "RotateKey", "off", "a", 1008), -1);
  /* Tenant, principal and op must all agree; a record without tenant never matches. */
  ck_assert_int_eq(kms_auditsum_match(r, n, "EnableKey", "off2", "a", 1010), -1);
  ck_assert_int_eq(kms_auditsum_match(r, n, "DisableKey", "off", "a", 1010), -1);
  /* Outside the window: a record long after, or well before, the change. */
  ck_assert_int_eq(kms_auditsum_match(r, n, "EnableKey", "off", "a",
                                      1010 - KMS_AUDITSUM_SLACK_AFTER_MS - 1),
                   -1);
  ck_assert_int_eq(kms_auditsum_match(r, n, "EnableKey", "off", "a",
                                      1010 + KMS_AUDITSUM_SLACK_BEFORE_MS + 1),
                   -1);
  ck_assert_int_eq(kms_auditsum_match(r, n, "EnableKey", "off", "a", 1000), 4);
}
END_TEST

START_TEST(test_csv_records_unquote_and_keep_commas_quotes_and_line_breaks)
{
  const char *buf = "index,\"a,b\",\"say \"\"hi\"\"\"\r\n"
                    "\n"
                    "checkpoint,2,\"line 1\nline 2\n\"\n"
                    "last,";
  size_t pos = 0, len = strlen(buf);
  struct kms_csv_row row;

  ck_assert_int_eq(kms_csv_next(buf, len, &pos, &row), 0);
  ck_assert_uint_eq(row.n, 3);
  ck_assert_str_eq(row.f[0], "index");
  ck_assert_str_eq(row.f[1], "a,b");
  ck_assert_str_eq(row.f[2], "say \"hi\"");
  kms_csv_row_free(&row);
  ck_assert_int_eq(kms_csv_next(buf, len, &pos, &row), 0);
  ck_assert_uint_eq(row.n, 1); /* a blank line */
  ck_assert_str_eq(row.f[0], "");
  kms_csv_row_free(&row);
  ck_assert_int_eq(kms_csv_next(buf, len, &pos, &row), 0);
  ck_assert_uint_eq(row.n, 3);
  ck_assert_str_eq(row.f[2], "line 1\nline 2\n");
  kms_csv_row_free(&row);
  ck_assert_int_eq(kms_csv_next(buf, len, &pos, &row), 0); /* no final line break */
  ck_assert_uint_eq(row.n, 2);
  ck_assert_str_eq(row.f[1], "");
  kms_csv_row_free(&row);
  ck_assert_int_eq(kms_csv_next(buf, len, &pos, &row), 1);
}
END_TEST

START_TEST(test_malformed_csv_is_refused)
{
  const char *bad[] = {"\"never closed,1\n", "\"closed\"then,1\n", "a\"b,1\n", "a,b\rc\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    size_t pos = 0;
    struct kms_csv_row row;
    ck_assert_msg(kms_csv_next(bad[i], strlen(bad[i]), &pos, &row) == -1, "%s", bad[i]);
    ck_assert_ptr_null(row.f);
  }
}
END_TEST

START_TEST(test_known_ops_are_the_rpc_names)
{
  ck_assert(kms_auditsum_known_op("GetSessionKey"));
  ck_assert(kms_auditsum_known_op("ExportAudit"));
  ck_assert(kms_auditsum_known_op("unknown"));
  ck_assert(!kms_auditsum_known_op("getsessionkey"));
  ck_assert(!kms_auditsum_known_op(""));
  ck_assert(!kms_auditsum_known_op(NULL));
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("auditsum");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_record_times_parse_to_ms_and_bad_ones_are_refused);
  tcase_add_test(tc, test_a_change_matches_the_nearest_unused_record_of_its_call);
  tcase_add_test(tc, test_csv_records_unquote_and_keep_commas_quotes_and_line_breaks);
  tcase_add_test(tc, test_malformed_csv_is_refused);
  tcase_add_test(tc, test_known_ops_are_the_rpc_names);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
