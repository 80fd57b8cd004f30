/* Check suite for kms_conf: the "key = value" parser, its FILE:LINE errors and kms_conf_uint. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms_conf.h"
#include "kms_err.h"

#define MAX_SEEN 8

struct seen {
  size_t n;
  char key[MAX_SEEN][64];
  char value[MAX_SEEN][KMS_CONF_LINE_MAX + 1];
  const char *fail_key; /* the handler refuses this key */
  const char *fail_reason; /* written into |why| when refusing; NULL writes nothing */
};

static int
record(void *arg, const char *key, const char *value, char *why, size_t why_len)
{
  struct seen *s = arg;
  if (s->fail_key != NULL && strcmp(key, s->fail_key) == 0) {
    if (s->fail_reason != NULL) {
      snprintf(why, why_len, "%s", s->fail_reason);
    }
    return KMS_ERR_INVALID_ARGUMENT;
  }
  ck_assert_uint_lt(s->n, MAX_SEEN);
  snprintf(s->key[s->n], sizeof(s->key[0]), "%s", key);
  snprintf(s->value[s->n], sizeof(s->value[0]), "%s", value);
  s->n++;
  return KMS_OK;
}

static int
parse_str(const char *text, struct seen *s, char *err, size_t err_len)
{
  return kms_conf_parse_buf("t.conf", text, strlen(text), record, s, err, err_len);
}

START_TEST(test_parses_key_value_pairs_in_order)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("alpha = 1\nbeta_2 = two\n", &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 2);
  ck_assert_str_eq(s.key[0], "alpha");
  ck_assert_str_eq(s.value[0], "1");
  ck_assert_str_eq(s.key[1], "beta_2");
  ck_assert_str_eq(s.value[1], "two");
  ck_assert_str_eq(err, "");
}
END_TEST

START_TEST(test_skips_comments_and_blank_lines)
{
  struct seen s = {0};
  char err[256];
  const char *text = "# a comment\n\n   \n\t# indented comment\nk = v\n\n";
  ck_assert_int_eq(parse_str(text, &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 1);
  ck_assert_str_eq(s.key[0], "k");
  ck_assert_str_eq(s.value[0], "v");
}
END_TEST

START_TEST(test_strips_crlf_line_endings)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("a = 1\r\nb = 2\r\n", &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 2);
  ck_assert_str_eq(s.value[0], "1");
  ck_assert_str_eq(s.value[1], "2");
}
END_TEST

START_TEST(test_trims_blanks_around_equals_and_value_but_keeps_inner_blanks)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("  key\t=\t x  y \t\nnospace=v\nempty =   \n", &s, err,
                             sizeof(err)),
                   KMS_OK);
  ck_assert_uint_eq(s.n, 3);
  ck_assert_str_eq(s.key[0], "key");
  ck_assert_str_eq(s.value[0], "x  y");
  ck_assert_str_eq(s.key[1], "nospace");
  ck_assert_str_eq(s.value[1], "v");
  ck_assert_str_eq(s.key[2], "empty");
  ck_assert_str_eq(s.value[2], "");
}
END_TEST

START_TEST(test_hash_after_value_is_part_of_the_value)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("k = a # b\n", &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 1);
  ck_assert_str_eq(s.value[0], "a # b");
}
END_TEST

START_TEST(test_last_line_without_newline_is_parsed)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("a = 1\nb = 2", &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 2);
  ck_assert_str_eq(s.key[1], "b");
  ck_assert_str_eq(s.value[1], "2");
}
END_TEST

START_TEST(test_repeated_keys_are_each_passed_to_handler)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("peer = a\npeer = b\npeer = c\n", &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 3);
  ck_assert_str_eq(s.value[0], "a");
  ck_assert_str_eq(s.value[1], "b");
  ck_assert_str_eq(s.value[2], "c");
}
END_TEST

START_TEST(test_error_names_file_and_line_of_missing_equals)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("# c\na = 1\n\njustakey\n", &s, err, sizeof(err)),
                   KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:4: expected '=' after the key");
  ck_assert_uint_eq(s.n, 1);
}
END_TEST

START_TEST(test_line_numbers_count_crlf_lines)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("a = 1\r\n\r\nb 2\r\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:3: expected '=' after the key");
}
END_TEST

START_TEST(test_rejects_uppercase_key)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("ok = 1\nKey = 1\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:2: expected a key ([a-z0-9_]+)");
}
END_TEST

START_TEST(test_rejects_key_with_dash)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("max-frame = 1\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:1: expected '=' after the key");
  ck_assert_uint_eq(s.n, 0);
}
END_TEST

START_TEST(test_rejects_line_starting_with_equals)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str(" = v\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:1: expected a key ([a-z0-9_]+)");
}
END_TEST

START_TEST(test_accepts_line_of_exactly_line_max_bytes)
{
  struct seen s = {0};
  char err[256];
  char text[KMS_CONF_LINE_MAX + 3];
  memset(text, 'v', sizeof(text));
  memcpy(text, "k = ", 4);
  memcpy(text + KMS_CONF_LINE_MAX, "\r\n", 2); /* the CR doesn't count */
  text[KMS_CONF_LINE_MAX + 2] = '\0';
  ck_assert_int_eq(parse_str(text, &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 1);
  ck_assert_uint_eq(strlen(s.value[0]), KMS_CONF_LINE_MAX - 4);
}
END_TEST

START_TEST(test_rejects_line_longer_than_line_max)
{
  struct seen s = {0};
  char err[256];
  char text[6 + KMS_CONF_LINE_MAX + 2];
  memcpy(text, "a = 1\n", 6);
  memset(text + 6, 'v', KMS_CONF_LINE_MAX + 1);
  memcpy(text + 6, "k = ", 4);
  text[sizeof(text) - 1] = '\0';
  ck_assert_int_eq(parse_str(text, &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:2: line longer than 1024 bytes");
}
END_TEST

START_TEST(test_rejects_control_character_without_echoing_the_value)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("a = 1\npin = s3cr3t\x01\n", &s, err, sizeof(err)),
                   KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:2: control character in line");
  ck_assert_ptr_null(strstr(err, "s3cr3t"));
}
END_TEST

START_TEST(test_rejects_del_and_bare_cr_but_allows_tab)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(parse_str("a = x\x7f\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:1: control character in line");
  ck_assert_int_eq(parse_str("a = x\ry\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_int_eq(parse_str("a = x\ty\n", &s, err, sizeof(err)), KMS_OK);
  ck_assert_str_eq(s.value[0], "x\ty");
}
END_TEST

START_TEST(test_buffer_with_nul_byte_is_rejected)
{
  struct seen s = {0};
  char err[256];
  const char text[] = "a = 1\nb = x\0y\n";
  ck_assert_int_eq(kms_conf_parse_buf("t.conf", text, sizeof(text) - 1, record, &s, err,
                                      sizeof(err)),
                   KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:2: control character in line");
}
END_TEST

START_TEST(test_handler_error_text_is_included)
{
  struct seen s = {0};
  char err[256];
  s.fail_key = "threads";
  s.fail_reason = "must be 1-64";
  ck_assert_int_eq(parse_str("a = 1\n\nthreads = 999\nz = 1\n", &s, err, sizeof(err)),
                   KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:3: threads: must be 1-64");
  /* Parsing stops at the first refused entry. */
  ck_assert_uint_eq(s.n, 1);
}
END_TEST

START_TEST(test_handler_error_without_reason_uses_strerror)
{
  struct seen s = {0};
  char err[256];
  char want[256];
  s.fail_key = "x";
  ck_assert_int_eq(parse_str("x = 1\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  snprintf(want, sizeof(want), "t.conf:1: x: %s", kms_strerror(KMS_ERR_INVALID_ARGUMENT));
  ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_error_message_is_truncated_and_nul_terminated)
{
  struct seen s = {0};
  char err[9];
  memset(err, 'Z', sizeof(err));
  ck_assert_int_eq(parse_str("nokey\n", &s, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_str_eq(err, "t.conf:1");
}
END_TEST

START_TEST(test_empty_input_calls_no_handler)
{
  struct seen s = {0};
  char err[256];
  ck_assert_int_eq(kms_conf_parse_buf("t.conf", "", 0, record, &s, err, sizeof(err)), KMS_OK);
  ck_assert_uint_eq(s.n, 0);
}
END_TEST

/* Writes |len| bytes to a fresh temporary file; returns its path (static buffer). */
static const char *
write_temp(const char *data, size_t len)
{
  static char path[256];
  const char *dir = getenv("TMPDIR");
  snprintf(path, sizeof(path), "%s/test_conf.XXXXXX", dir != NULL ? dir : "/tmp");
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
  close(fd);
  return path;
}

START_TEST(test_parse_file_reads_entries)
{
  struct seen s = {0};
  char err[256];
  const char text[] = "# kmsd\nlisten = 127.0.0.1:7000\r\n";
  const char *path = write_temp(text, sizeof(text) - 1);
  int r = kms_conf_parse(path, record, &s, err, sizeof(err));
  unlink(path);
  ck_assert_int_eq(r, KMS_OK);
  ck_assert_uint_eq(s.n, 1);
  ck_assert_str_eq(s.key[0], "listen");
  ck_assert_str_eq(s.value[0], "127.0.0.1:7000");
}
END_TEST

START_TEST(test_parse_file_error_names_the_path_and_line)
{
  struct seen s = {0};
  char err[512];
  char want[512];
  const char text[] = "a = 1\nb = 2\nbroken\n";
  const char *path = write_temp(text, sizeof(text) - 1);
  int r = kms_conf_parse(path, record, &s, err, sizeof(err));
  snprintf(want, sizeof(want), "%s:3: expected '=' after the key", path);
  unlink(path);
  ck_assert_int_eq(r, KMS_ERR_CONFIG);
  ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_parse_file_rejects_nul_byte)
{
  struct seen s = {0};
  char err[512];
  char want[512];
  const char text[] = "a = 1\n# \0 hidden\nb = 2\n";
  const char *path = write_temp(text, sizeof(text) - 1);
  int r = kms_conf_parse(path, record, &s, err, sizeof(err));
  snprintf(want, sizeof(want), "%s: NUL byte in file", path);
  unlink(path);
  ck_assert_int_eq(r, KMS_ERR_CONFIG);
  ck_assert_str_eq(err, want);
  /* Refused before any entry is handed out. */
  ck_assert_uint_eq(s.n, 0);
}
END_TEST

START_TEST(test_parse_nonexistent_file_is_io_error)
{
  struct seen s = {0};
  char err[512];
  const char *path = "/nonexistent-dir-tenantkms/kmsd.conf";
  ck_assert_int_eq(kms_conf_parse(path, record, &s, err, sizeof(err)), KMS_ERR_IO);
  ck_assert_ptr_eq(strstr(err, path), err);
  ck_assert_uint_eq(s.n, 0);
}
END_TEST

START_TEST(test_uint_accepts_values_in_range)
{
  unsigned long long v = 0;
  ck_assert_int_eq(kms_conf_uint("0", 0, 10, &v), KMS_OK);
  ck_assert_uint_eq(v, 0);
  ck_assert_int_eq(kms_conf_uint("1", 1, 10, &v), KMS_OK);
  ck_assert_uint_eq(v, 1);
  ck_assert_int_eq(kms_conf_uint("10", 1, 10, &v), KMS_OK);
  ck_assert_uint_eq(v, 10);
  ck_assert_int_eq(kms_conf_uint("007", 0, 10, &v), KMS_OK);
  ck_assert_uint_eq(v, 7);
  ck_assert_int_eq(kms_conf_uint("18446744073709551615", 0, ULLONG_MAX, &v), KMS_OK);
  ck_assert(v == ULLONG_MAX);
}
END_TEST

START_TEST(test_uint_rejects_out_of_range)
{
  unsigned long long v = 42;
  ck_assert_int_eq(kms_conf_uint("0", 1, 10, &v), KMS_ERR_CONFIG);
  ck_assert_int_eq(kms_conf_uint("11", 1, 10, &v), KMS_ERR_CONFIG);
  ck_assert_uint_eq(v, 42);
}
END_TEST

static const char *const uint_garbage[] = {
  "", "-1", "+1", " 1", "1 ", "1x", "0x10", "1.5", "abc", "1e3",
  "18446744073709551616",             /* ULLONG_MAX + 1 */
  "99999999999999999999999999999999", /* far past it */
};

START_TEST(test_uint_rejects_garbage_and_overflow)
{
  unsigned long long v = 42;
  ck_assert_int_eq(kms_conf_uint(uint_garbage[_i], 0, ULLONG_MAX, &v), KMS_ERR_CONFIG);
  ck_assert_uint_eq(v, 42);
}
END_TEST

static Suite *
conf_suite(void)
{
  Suite *s = suite_create("conf");
  TCase *tc = tcase_create("parse");
  tcase_add_test(tc, test_parses_key_value_pairs_in_order);
  tcase_add_test(tc, test_skips_comments_and_blank_lines);
  tcase_add_test(tc, test_strips_crlf_line_endings);
  tcase_add_test(tc, test_trims_blanks_around_equals_and_value_but_keeps_inner_blanks);
  tcase_add_test(tc, test_hash_after_value_is_part_of_the_value);
  tcase_add_test(tc, test_last_line_without_newline_is_parsed);
  tcase_add_test(tc, test_repeated_keys_are_each_passed_to_handler);
  tcase_add_test(tc, test_error_names_file_and_line_of_missing_equals);
  tcase_add_test(tc, test_line_numbers_count_crlf_lines);
  tcase_add_test(tc, test_rejects_uppercase_key);
  tcase_add_test(tc, test_rejects_key_with_dash);
  tcase_add_test(tc, test_rejects_line_starting_with_equals);
  tcase_add_test(tc, test_accepts_line_of_exactly_line_max_bytes);
  tcase_add_test(tc, test_rejects_line_longer_than_line_max);
  tcase_add_test(tc, test_rejects_control_character_without_echoing_the_value);
  tcase_add_test(tc, test_rejects_del_and_bare_cr_but_allows_tab);
  tcase_add_test(tc, test_buffer_with_nul_byte_is_rejected);
  tcase_add_test(tc, test_handler_error_text_is_included);
  tcase_add_test(tc, test_handler_error_without_reason_uses_strerror);
  tcase_add_test(tc, test_error_message_is_truncated_and_nul_terminated);
  tcase_add_test(tc, test_empty_input_calls_no_handler);
  suite_add_tcase(s, tc);

  TCase *tf = tcase_create("file");
  tcase_add_test(tf, test_parse_file_reads_entries);
  tcase_add_test(tf, test_parse_file_error_names_the_path_and_line);
  tcase_add_test(tf, test_parse_file_rejects_nul_byte);
  tcase_add_test(tf, test_parse_nonexistent_file_is_io_error);
  suite_add_tcase(s, tf);

  TCase *tu = tcase_create("uint");
  tcase_add_test(tu, test_uint_accepts_values_in_range);
  tcase_add_test(tu, test_uint_rejects_out_of_range);
  tcase_add_loop_test(tu, test_uint_rejects_garbage_and_overflow, 0,
                      (int)(sizeof(uint_garbage) / sizeof(uint_garbage[0])));
  suite_add_tcase(s, tu);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(conf_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
