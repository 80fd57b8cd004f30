/* Integration smoke test of kms-bench: every --mix operation against a real kmsd, zero errors (no timing asserted). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

/* scripts/bench's bench policy (recording: data keys, re-wraps, sessions) and the officer. */
#define POLICY                                                                                 \
  "{\"version\": 1, \"rules\": ["                                                              \
  "{\"id\": \"bench-data-keys\", \"effect\": \"allow\", "                                     \
  "\"principal\": \"spiffe://tenantkms.dev/recording\", "                                      \
  "\"operations\": [\"GenerateDataKey\", \"Decrypt\", \"ReEncrypt\", \"OpenSession\", "       \
  "\"Health\"], \"tenants\": \"all\", \"context\": {\"required\": [\"session_id\"]}}, "         \
  "{\"id\": \"bench-session-keys\", \"effect\": \"allow\", "                                  \
  "\"principal\": \"spiffe://tenantkms.dev/recording\", \"operations\": [\"GetSessionKey\"], " \
  "\"tenants\": \"all\", \"context\": {\"values\": {\"purpose\": [\"recording\"]}}}, "          \
  "{\"id\": \"officer\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/officer\", " \
  "\"operations\": [\"CreateTenant\", \"Health\"], \"tenants\": \"all\"}]}\n"

static char rec_conf[600], off_conf[600];

/* Runs kms-bench with |args| (--json) and returns its exit status; stdout in |out|. */
static int
run_bench(const char *args, char *out, size_t out_cap)
{
  const char *bin = getenv("KMS_BENCH");
  char cmd[2048];
  ck_assert_ptr_nonnull(bin);
  snprintf(cmd, sizeof(cmd), "'%s' --config '%s' --json %s 2>'%s/kms-bench.err'", bin, rec_conf,
           args, harness_dir());
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(out, 1, out_cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The "ok" count of |op| inside the JSON object of |phase|, or -1 if absent. */
static long
op_ok(const char *json, const char *phase, const char *op)
{
  char key[80];
  snprintf(key, sizeof(key), "\"%s\":{", phase);
  const char *p = strstr(json, key);
  if (p == NULL) {
    return -1;
  }
  snprintf(key, sizeof(key), "\"%s\":{\"ok\":", op);
  p = strstr(p, key);
  return p != NULL ? strtol(p + strlen(key), NULL, 10) : -1;
}

START_TEST(test_every_mix_operation_runs_against_kmsd_without_errors)
{
  static char out[65536];
  char args[1024];
  snprintf(args, sizeof(args),
           "--officer-config '%s' --create-tenants --tenants 4 -c 2 -m 4 -d 1 --warmup 0.2 "
           "--mix generate=4,decrypt=4,re-encrypt=1,session-get=1 "
           "--context session_id=bench-session-0001 --label it-mix",
           off_conf);
  int rc = run_bench(args, out, sizeof(out));
  ck_assert_msg(rc == 0, "kms-bench exited %d (3: errors); see %s/kms-bench.err: %s", rc,
                harness_dir(), out);
  ck_assert_ptr_nonnull(strstr(out, "\"kmsd\":{"));
  ck_assert_msg(strstr(out, "\"kmsd\":{\"ops_per_s\":") != NULL &&
                    strstr(strstr(out, "\"kmsd\":{"), "\"errors\":0,\"mismatches\":0,") != NULL,
                "errors in %s", out);
  const char *ops[] = {"generate", "decrypt", "re-encrypt", "session-get"};
  for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
    ck_assert_msg(op_ok(out, "kmsd", ops[i]) > 0, "no %s answered: %s", ops[i], out);
  }
}
END_TEST

START_TEST(test_rounds_report_each_round_and_keep_the_old_json_fields)
{
  static char out[65536];
  int rc = run_bench("--tenants 4 -c 2 -m 2 -d 0.5 --warmup 0.1 --rounds 2 --mix session-get",
                     out, sizeof(out));
  ck_assert_msg(rc == 0, "kms-bench exited %d: %s", rc, out);
  ck_assert_ptr_nonnull(strstr(out, "\"ratios\":{\"kmsd_over_tls\":"));
  ck_assert_ptr_nonnull(strstr(out, "\"rounds\":{\"n\":2,\"ops_per_s\":["));
  ck_assert_msg(op_ok(out, "kmsd", "session-get") > 0, "%s", out);
}
END_TEST

START_TEST(test_a_denied_operation_is_counted_as_errors_and_fails_the_run)
{
  static char out[65536];
  /* The bench policy lets the recording identity fetch session keys for "recording" only. */
  int rc = run_bench("--tenants 2 -c 1 -m 1 -d 0.3 --warmup 0 --mix session-get --purpose report",
                     out, sizeof(out));
  ck_assert_int_eq(rc, 3);
  ck_assert_ptr_nonnull(strstr(out, "PERMISSION_DENIED"));
}
END_TEST

static Suite *
bench_suite(void)
{
  Suite *s = suite_create("kms-bench");
  TCase *t = tcase_create("smoke");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_every_mix_operation_runs_against_kmsd_without_errors);
  tcase_add_test(t, test_rounds_report_each_round_and_keep_the_old_json_fields);
  tcase_add_test(t, test_a_denied_operation_is_counted_as_errors_and_fails_the_run);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  if (getenv("KMS_BENCH") == NULL) {
    fprintf(stderr, "KMS_BENCH must name the kms-bench binary\n");
    return 99;
  }
  harness_setup(NULL);
  harness_write_file("bench-policy/bench.json", POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/bench-policy", harness_dir());
  harness_append_conf(line);
  harness_start_kmsd();
  snprintf(rec_conf, sizeof(rec_conf), "%s", harness_client_conf("clients", "recording"));
  snprintf(off_conf, sizeof(off_conf), "%s", harness_client_conf("clients", "officer"));
  SRunner *sr = srunner_create(bench_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* the tests share the one kmsd process */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return harness_finish(failed); /* stops kmsd (its exit status counts) and cleans up */
}
