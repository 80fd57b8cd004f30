/* Tests for kmsd/log.c: JSON-line logs carry every key=value pair, escaped. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static char line[2048];

START_TEST(test_json_line_has_time_level_and_every_pair)
{
  log_json_line(line, sizeof(line), "2026-11-26T08:00:00.000Z", "INFO",
                "event=ready listen=127.0.0.1:7443 workers=2");
  ck_assert_str_eq(line, "{\"time\":\"2026-11-26T08:00:00.000Z\",\"level\":\"INFO\","
                         "\"event\":\"ready\",\"listen\":\"127.0.0.1:7443\",\"workers\":\"2\"}");
}
END_TEST

START_TEST(test_json_line_keeps_quoted_values_with_spaces)
{
  log_json_line(line, sizeof(line), "t", "WARN",
                "event=start_failed stage=hsm reason=\"no token labelled x\"");
  ck_assert_str_eq(line, "{\"time\":\"t\",\"level\":\"WARN\",\"event\":\"start_failed\","
                         "\"stage\":\"hsm\",\"reason\":\"no token labelled x\"}");
}
END_TEST

START_TEST(test_json_line_escapes_quotes_backslashes_and_controls)
{
  log_json_line(line, sizeof(line), "t", "INFO", "event=x path=a\\b\"c tab=\t");
  ck_assert_str_eq(line, "{\"time\":\"t\",\"level\":\"INFO\",\"event\":\"x\","
                         "\"path\":\"a\\\\b\\\"c\",\"tab\":\"\\u0009\"}");
}
END_TEST

START_TEST(test_json_line_collects_free_text_into_msg)
{
  log_json_line(line, sizeof(line), "t", "INFO", "hello event=y world");
  ck_assert_str_eq(line, "{\"time\":\"t\",\"level\":\"INFO\",\"event\":\"y\","
                         "\"msg\":\"hello world\"}");
}
END_TEST

START_TEST(test_json_line_truncates_within_the_buffer)
{
  char small[24];
  memset(small, 'Z', sizeof(small));
  size_t n = log_json_line(small, sizeof(small), "2026-11-26T08:00:00.000Z", "INFO",
                           "event=long");
  ck_assert_uint_lt(n, sizeof(small));
  ck_assert_uint_eq(strlen(small), n);
}
END_TEST

START_TEST(test_parse_format)
{
  ck_assert_int_eq(log_parse_format("text"), LOG_FORMAT_TEXT);
  ck_assert_int_eq(log_parse_format("json"), LOG_FORMAT_JSON);
  ck_assert_int_eq(log_parse_format("JSON"), -1);
  ck_assert_int_eq(log_parse_format(""), -1);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("log");
  TCase *t = tcase_create("json");
  tcase_add_test(t, test_json_line_has_time_level_and_every_pair);
  tcase_add_test(t, test_json_line_keeps_quoted_values_with_spaces);
  tcase_add_test(t, test_json_line_escapes_quotes_backslashes_and_controls);
  tcase_add_test(t, test_json_line_collects_free_text_into_msg);
  tcase_add_test(t, test_json_line_truncates_within_the_buffer);
  tcase_add_test(t, test_parse_format);
  suite_add_tcase(s, t);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
