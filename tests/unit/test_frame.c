/* Check suite for kms_frame: the 4-byte length header and the size check before allocation. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "kms_err.h"
#include "kms_frame.h"

START_TEST(test_peek_reports_truncated_until_four_header_bytes_arrive)
{
  const uint8_t buf[4] = {0, 0, 0, 5};
  for (size_t avail = 0; avail < KMS_FRAME_HDR_LEN; avail++) {
    size_t len = 99;
    ck_assert_int_eq(kms_frame_peek(buf, avail, KMS_FRAME_MAX_DEFAULT, &len),
                     KMS_ERR_TRUNCATED);
    ck_assert_uint_eq(len, 0);
  }
}
END_TEST

START_TEST(test_peek_returns_length_without_needing_the_payload)
{
  const uint8_t buf[4] = {0x00, 0x00, 0x01, 0x02};
  size_t len = 0;
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), KMS_FRAME_MAX_DEFAULT, &len), KMS_OK);
  ck_assert_uint_eq(len, 0x0102);
}
END_TEST

START_TEST(test_peek_decodes_big_endian)
{
  const uint8_t buf[4] = {0x00, 0x01, 0x02, 0x03};
  size_t len = 0;
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), KMS_FRAME_MAX_HARD, &len), KMS_OK);
  ck_assert_uint_eq(len, 0x010203);
}
END_TEST

START_TEST(test_peek_rejects_length_over_cap_before_payload_arrives)
{
  uint8_t buf[4];
  size_t len = 99;
  kms_frame_put_header(buf, 101);
  /* Only the header is present: the check must not wait for the payload. */
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), 100, &len), KMS_ERR_FRAME_TOO_LARGE);
  ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(test_peek_accepts_length_exactly_at_cap)
{
  uint8_t buf[4];
  size_t len = 0;
  kms_frame_put_header(buf, KMS_FRAME_MAX_DEFAULT);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), KMS_FRAME_MAX_DEFAULT, &len), KMS_OK);
  ck_assert_uint_eq(len, KMS_FRAME_MAX_DEFAULT);
}
END_TEST

START_TEST(test_peek_rejects_one_over_default_cap)
{
  uint8_t buf[4];
  size_t len = 0;
  kms_frame_put_header(buf, KMS_FRAME_MAX_DEFAULT + 1);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), KMS_FRAME_MAX_DEFAULT, &len),
                   KMS_ERR_FRAME_TOO_LARGE);
}
END_TEST

START_TEST(test_peek_enforces_hard_cap_even_when_configured_cap_is_larger)
{
  uint8_t buf[4];
  size_t len = 0;
  kms_frame_put_header(buf, KMS_FRAME_MAX_HARD + 1);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), (size_t)KMS_FRAME_MAX_HARD * 4, &len),
                   KMS_ERR_FRAME_TOO_LARGE);
  ck_assert_uint_eq(len, 0);
  kms_frame_put_header(buf, 0xFFFFFFFFu);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), SIZE_MAX, &len), KMS_ERR_FRAME_TOO_LARGE);
  /* The hard cap itself is still allowed. */
  kms_frame_put_header(buf, KMS_FRAME_MAX_HARD);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), SIZE_MAX, &len), KMS_OK);
  ck_assert_uint_eq(len, KMS_FRAME_MAX_HARD);
}
END_TEST

START_TEST(test_peek_accepts_zero_length_payload)
{
  const uint8_t buf[4] = {0, 0, 0, 0};
  size_t len = 99;
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), KMS_FRAME_MAX_DEFAULT, &len), KMS_OK);
  ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(test_put_header_writes_big_endian)
{
  uint8_t buf[4];
  kms_frame_put_header(buf, 0x0A0B0C0Du);
  ck_assert_uint_eq(buf[0], 0x0A);
  ck_assert_uint_eq(buf[1], 0x0B);
  ck_assert_uint_eq(buf[2], 0x0C);
  ck_assert_uint_eq(buf[3], 0x0D);
}
END_TEST

static const uint32_t roundtrip_lens[] = {0, 1, 0xFFFFFF, KMS_FRAME_MAX_DEFAULT};

START_TEST(test_header_round_trips_through_peek)
{
  uint8_t buf[4];
  size_t len = 12345;
  uint32_t want = roundtrip_lens[_i];
  kms_frame_put_header(buf, want);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), KMS_FRAME_MAX_HARD, &len), KMS_OK);
  ck_assert_uint_eq(len, want);
}
END_TEST

START_TEST(test_header_round_trips_at_configured_cap)
{
  uint8_t buf[4];
  size_t len = 0;
  size_t cap = 4096;
  kms_frame_put_header(buf, (uint32_t)cap);
  ck_assert_int_eq(kms_frame_peek(buf, sizeof(buf), cap, &len), KMS_OK);
  ck_assert_uint_eq(len, cap);
}
END_TEST

static Suite *
frame_suite(void)
{
  Suite *s = suite_create("frame");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_peek_reports_truncated_until_four_header_bytes_arrive);
  tcase_add_test(tc, test_peek_returns_length_without_needing_the_payload);
  tcase_add_test(tc, test_peek_decodes_big_endian);
  tcase_add_test(tc, test_peek_rejects_length_over_cap_before_payload_arrives);
  tcase_add_test(tc, test_peek_accepts_length_exactly_at_cap);
  tcase_add_test(tc, test_peek_rejects_one_over_default_cap);
  tcase_add_test(tc, test_peek_enforces_hard_cap_even_when_configured_cap_is_larger);
  tcase_add_test(tc, test_peek_accepts_zero_length_payload);
  tcase_add_test(tc, test_put_header_writes_big_endian);
  tcase_add_loop_test(tc, test_header_round_trips_through_peek, 0,
                      (int)(sizeof(roundtrip_lens) / sizeof(roundtrip_lens[0])));
  tcase_add_test(tc, test_header_round_trips_at_configured_cap);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(frame_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
