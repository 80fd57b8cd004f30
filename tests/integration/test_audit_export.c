/* Integration tests of the audit export: tenant scoping, inclusion proofs, summary, tampering. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "tenantkey.h"

static char g_out[8192];

/* kmsctl runs kmsctl with |conf_name|'s client configuration (NULL: none); output in g_out. */
static int
kmsctl(const char *conf_name, const char *args)
{
  char cmd[4096];
  if (conf_name != NULL) {
    snprintf(cmd, sizeof(cmd), "'%s' --config '%s' %s 2>&1", getenv("KMSCTL"),
             harness_client_conf("clients", conf_name), args);
  } else {
    snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1", getenv("KMSCTL"), args);
  }
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(g_out, 1, sizeof(g_out) - 1, p);
  g_out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *
slurp(const char *path)
{
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
  b[n] = '\0';
  fclose(f);
  return b;
}

static void
generate(const char *who, const char *tenant, int n)
{
  tk_client *c = harness_client(who);
  ck_assert_ptr_nonnull(c);
  for (int i = 0; i < n; i++) {
    tk_data_key *k = NULL;
    ck_assert_int_eq(tk_data_key_generate(c, &k, tenant, NULL, 1), TK_OK);
    tk_data_key_free(k);
  }
  tk_client_free(c);
}

START_TEST(test_export_scoped_verified_summarised_and_tamper_evident)
{
  char args[2048], path[700], vkey[700];
  const char *d = harness_dir();

  tk_client *off = harness_client("officer");
  ck_assert_ptr_nonnull(off);
  uint32_t v = 0;
  ck_assert_int_eq(tk_tenant_create(off, &v, "acme"), TK_OK);
  ck_assert_int_eq(tk_tenant_create(off, &v, "globex"), TK_OK);
  tk_client_free(off);
  generate("integration-acme", "acme", 3);
  generate("integration-globex", "globex", 2);
  sleep(3); /* audit_checkpoint_seconds = 1: the records above are under a signed checkpoint */
  snprintf(vkey, sizeof(vkey), "%s/audit/verifier-key", d);

  /* A tenant-bound auditor: its own tenant only, every record proven. */
  snprintf(path, sizeof(path), "%s/acme.jsonl", d);
  snprintf(args, sizeof(args),
           "audit export --from 2020-01-01 --to 2100-01-01 --tenant acme --format jsonl "
           "--out '%s'",
           path);
  ck_assert_msg(kmsctl("integration-acme", args) == 0, "%s", g_out);
  char *exp = slurp(path);
  ck_assert_ptr_nonnull(strstr(exp, "\"tenant\":\"acme\""));
  ck_assert_ptr_null(strstr(exp, "globex"));
  ck_assert_ptr_nonnull(
      strstr(exp, "{\"tenant\":\"acme\",\"kek_version\":1,\"op\":\"GenerateDataKey\","
                  "\"outcome\":\"ok\",\"count\":3}"));
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", path, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 0, "%s", g_out);
  /* Three data keys and the tenant's creation. */
  ck_assert_msg(strstr(g_out, "OK: 4 records verified") != NULL, "%s", g_out);

  /* One byte of a record changed: its proof no longer leads to the signed root. */
  char *rec = strstr(exp, "\"outcome\":\"ok\"");
  ck_assert_ptr_nonnull(rec);
  rec[11] = 'n';
  char tampered[760];
  snprintf(tampered, sizeof(tampered), "%s/tampered.jsonl", d);
  FILE *f = fopen(tampered, "wb");
  ck_assert_ptr_nonnull(f);
  fputs(exp, f);
  fclose(f);
  free(exp);
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", tampered, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 1, "%s", g_out);
  ck_assert_ptr_nonnull(strstr(g_out, "FAILED"));

  /* Without --tenant a bound auditor asks for every tenant: denied. */
  ck_assert_int_eq(
      kmsctl("integration-acme", "audit export --from 2020-01-01 --to 2100-01-01"), 1);
  ck_assert_msg(strstr(g_out, "ermission") != NULL, "%s", g_out);
  /* Nor another tenant. */
  ck_assert_int_eq(kmsctl("integration-acme",
                          "audit export --from 2020-01-01 --to 2100-01-01 --tenant globex"),
                   1);

  /* The all-tenant auditor: the summary counts what this test did. */
  snprintf(path, sizeof(path), "%s/all.jsonl", d);
  snprintf(args, sizeof(args), "audit export --from 2020-01-01 --to 2100-01-01 --out '%s'", path);
  ck_assert_msg(kmsctl("auditor", args) == 0, "%s", g_out);
  exp = slurp(path);
  ck_assert_ptr_nonnull(
      strstr(exp, "{\"tenant\":\"acme\",\"kek_version\":1,\"op\":\"GenerateDataKey\","
                  "\"outcome\":\"ok\",\"count\":3}"));
  ck_assert_ptr_nonnull(
      strstr(exp, "{\"tenant\":\"globex\",\"kek_version\":1,\"op\":\"GenerateDataKey\","
                  "\"outcome\":\"ok\",\"count\":2}"));
  ck_assert_ptr_nonnull(strstr(exp, "{\"tenant\":\"acme\",\"kek_version\":1,\"op\":\"CreateTenant\","
                                    "\"outcome\":\"ok\",\"count\":1}"));
  free(exp);
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", path, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 0, "%s", g_out);

  /* CSV and an operation filter. */
  snprintf(args, sizeof(args),
           "audit export --from 2020-01-01 --to 2100-01-01 --op CreateTenant --format csv");
  ck_assert_msg(kmsctl("auditor", args) == 0, "%s", g_out);
  ck_assert_ptr_nonnull(strstr(g_out, "index,time,principal"));
  ck_assert_ptr_null(strstr(g_out, "\"GenerateDataKey\""));

  /* A principal that is no auditor. */
  ck_assert_int_eq(kmsctl("recording", "audit export --from 2020-01-01 --to 2100-01-01"), 1);
  ck_assert_msg(strstr(g_out, "ermission") != NULL, "%s", g_out);
}
END_TEST

int
main(void)
{
  harness_setup("audit_checkpoint_seconds = 1");
  /* The example policies plus: each integration principal may export its own tenant's audit. */
  char cmd[2048], conf[800];
  snprintf(cmd, sizeof(cmd), "mkdir -m 0755 '%s/pol' && cp '%s'/policies/*.json '%s/pol/'",
           harness_dir(), getenv("SRCDIR"), harness_dir());
  if (system(cmd) != 0) {
    return 1;
  }
  harness_write_file("pol/zz-export.json",
                     "{\"version\":1,\"rules\":[{\"id\":\"export-own-tenant\",\"effect\":\"allow\","
                     "\"principal\":\"spiffe://tenantkms.dev/tenant/{tenant}/integration\","
                     "\"operations\":[\"ExportAudit\"],\"tenants\":\"bound\"}]}\n");
  snprintf(conf, sizeof(conf), "policy = %s/pol", harness_dir());
  harness_append_conf(conf);
  harness_start_kmsd();
  Suite *s = suite_create("audit_export");
  TCase *tc = tcase_create("export");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_export_scoped_verified_summarised_and_tamper_evident);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  if (harness_kmsd_alive()) {
    harness_stop_kmsd();
  }
  if (failed == 0 && getenv("TKMS_KEEP_DIR") == NULL) {
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", harness_dir());
    if (system(cmd) != 0) {
      fprintf(stderr, "could not remove %s\n", harness_dir());
    }
  }
  return failed == 0 ? 0 : 1;
}
