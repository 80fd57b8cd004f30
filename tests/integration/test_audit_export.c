/* Integration tests of the audit export: tenant scoping, inclusion proofs, summary, tampering. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"
#include "tenantkey.h"

static char g_out[65536];

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


/* write_file writes |text| to |path| (a tampered copy of an export). */
static void
write_file(const char *path, const char *text)
{
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

/* replace_first replaces the first |from| in |s| (in place; same length) or fails the test. */
static void
replace_first(char *s, const char *from, const char *to)
{
  char *p = strstr(s, from);
  ck_assert_msg(p != NULL, "no %s to tamper with", from);
  ck_assert_uint_eq(strlen(from), strlen(to));
  memcpy(p, to, strlen(to));
}

/*
 * expect_tamper_caught changes the first |from| of export |exp| into |to|,
 * writes it to |name| and checks that verify-export fails saying |expect|.
 */
static void
expect_tamper_caught(const char *exp, const char *from, const char *to, const char *name,
                     const char *vkey, const char *expect)
{
  char path[760], args[2048];
  char *bad = strdup(exp);
  ck_assert_ptr_nonnull(bad);
  replace_first(bad, from, to);
  snprintf(path, sizeof(path), "%s/%s", harness_dir(), name);
  write_file(path, bad);
  free(bad);
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", path, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 1, "%s: %s", name, g_out);
  ck_assert_msg(strstr(g_out, expect) != NULL, "%s: %s", name, g_out);
}

/* change_of finds the summary's state change of |tenant| |version| |event| (the |nth|, 0-based). */
static json_t *
change_of(json_t *sum, const char *tenant, int version, const char *event, int nth)
{
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(sum, "state_changes"), i, c)
  {
    if (strcmp(json_string_value(json_object_get(c, "tenant")), tenant) == 0 &&
        json_integer_value(json_object_get(c, "version")) == version &&
        strcmp(json_string_value(json_object_get(c, "event")), event) == 0 && nth-- == 0) {
      return c;
    }
  }
  return NULL;
}

/* summary_of parses the last line of a jsonl export. */
static json_t *
summary_of(const char *exp)
{
  const char *last = exp + strlen(exp) - 1;
  while (last > exp && last[-1] != '\n') {
    last--;
  }
  json_t *sum = json_loads(last, 0, NULL);
  ck_assert_ptr_nonnull(sum);
  ck_assert_str_eq(json_string_value(json_object_get(sum, "type")), "summary");
  return sum;
}

#define OFF "spiffe://tenantkms.dev/officer"
#define OFF2 "spiffe://tenantkms.dev/officer2"

static void
expect_change(json_t *sum, const char *tenant, int version, const char *event, int nth,
              const char *old_state, const char *new_state, const char *actor,
              const char *approver, const char *audit_op)
{
  json_t *c = change_of(sum, tenant, version, event, nth);
  ck_assert_msg(c != NULL, "no %s of %s version %d", event, tenant, version);
  ck_assert_str_eq(json_string_value(json_object_get(c, "old_state")), old_state);
  ck_assert_str_eq(json_string_value(json_object_get(c, "new_state")), new_state);
  ck_assert_str_eq(json_string_value(json_object_get(c, "actor")), actor);
  ck_assert_str_eq(json_string_value(json_object_get(c, "source")), "keystore");
  json_t *appr = json_object_get(c, "approvers");
  if (approver != NULL) {
    ck_assert_uint_eq(json_array_size(appr), 1);
    ck_assert_str_eq(json_string_value(json_array_get(appr, 0)), approver);
    ck_assert_int_ne(json_integer_value(json_object_get(c, "request_id")), 0);
  } else {
    ck_assert_uint_eq(json_array_size(appr), 0);
  }
  ck_assert_str_eq(json_string_value(json_object_get(c, "audit_op")), audit_op);
  if (audit_op[0] != '\0') {
    /* Cross-checked: the proven record of the call that made or requested the change. */
    ck_assert_msg(json_is_integer(json_object_get(c, "audit_index")), "%s of %s: %s", event,
                  tenant, json_string_value(json_object_get(c, "audit_check")));
  }
}

START_TEST(test_export_names_state_changes_actor_approver_and_session_access)
{
  char args[2048], path[700], csvpath[700], vkey[700], from[32];
  const char *d = harness_dir();
  uint64_t req = 0;
  uint32_t v = 0;
  int executed = 0;

  snprintf(from, sizeof(from), "%lld", (long long)time(NULL) * 1000 - 1000);
  snprintf(vkey, sizeof(vkey), "%s/audit/verifier-key", d);
  tk_client *off = harness_client("officer"), *off2 = harness_client("officer2");
  tk_client *rec = harness_client("recording"), *ai = harness_client("ai");
  ck_assert(off != NULL && off2 != NULL && rec != NULL && ai != NULL);
  ck_assert_int_eq(tk_tenant_create(off, &v, "initech"), TK_OK);
  /* acme (made by the first test) goes through every kind of change. */
  ck_assert_int_eq(tk_key_rotate(off, &v, "acme"), TK_OK);
  ck_assert_uint_eq(v, 2);
  ck_assert_int_eq(tk_key_disable(off, &req, "acme", 1), TK_OK);
  ck_assert_int_eq(tk_key_enable(off, "acme", 1), TK_OK);
  ck_assert_int_eq(tk_key_disable(off, &req, "acme", 0), TK_OK);
  ck_assert_uint_ne(req, 0);
  ck_assert_int_eq(tk_request_approve(off2, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_int_eq(tk_key_enable(off, "acme", 0), TK_OK);
  ck_assert_int_eq(tk_key_schedule_destruction(off, &req, "acme", 1, 7), TK_OK);
  ck_assert_int_eq(tk_request_approve(off2, &executed, req), TK_OK);
  ck_assert_int_eq(tk_key_cancel_destruction(off, "acme", 1), TK_OK);
  ck_assert_int_eq(tk_key_schedule_destruction(off, &req, "acme", 1, TK_WAIT_NONE), TK_OK);
  ck_assert_int_eq(tk_request_approve(off2, &executed, req), TK_OK);
  /* Another tenant's change, and sessions of both. */
  ck_assert_int_eq(tk_key_rotate(off, &v, "initech"), TK_OK);
  tk_session *s = NULL;
  ck_assert_int_eq(tk_session_open(rec, &s, "acme", "s-audit-1", NULL), TK_OK);
  tk_session_free(s);
  ck_assert_int_eq(tk_session_get(ai, &s, "acme", "s-audit-1", "report"), TK_OK);
  tk_session_free(s);
  ck_assert_int_eq(tk_session_get(ai, &s, "acme", "s-audit-1", "report"), TK_OK);
  tk_session_free(s);
  ck_assert_int_eq(tk_session_get(ai, &s, "acme", "s-audit-1", NULL), TK_EPERM);
  ck_assert_int_eq(tk_session_close(rec, "acme", "s-audit-1"), TK_OK);
  ck_assert_int_eq(tk_session_open(rec, &s, "initech", "s-other-1", NULL), TK_OK);
  tk_session_free(s);
  tk_client_free(off);
  tk_client_free(off2);
  tk_client_free(rec);
  tk_client_free(ai);
  sleep(3); /* the destruction's tick, and a checkpoint over all of it */

  /* The all-tenant auditor: every change, with actor, approver, receipt and its record. */
  snprintf(path, sizeof(path), "%s/changes.jsonl", d);
  snprintf(args, sizeof(args), "audit export --from %s --to 2100-01-01 --out '%s'", from, path);
  ck_assert_msg(kmsctl("auditor", args) == 0, "%s", g_out);
  /* --out: the summary as tables on stdout too. */
  ck_assert_msg(strstr(g_out, "Key state changes") != NULL, "%s", g_out);
  ck_assert_msg(strstr(g_out, "decrypt-only -> disabled") != NULL, "%s", g_out);
  ck_assert_msg(strstr(g_out, "active -> disabled") != NULL, "%s", g_out);
  char *exp = slurp(path);
  json_t *sum = summary_of(exp);
  expect_change(sum, "acme", 2, "rotated", 0, "", "active", OFF, NULL, "RotateKey");
  expect_change(sum, "acme", 1, "disabled", 0, "decrypt-only", "disabled", OFF, NULL,
                "DisableKey");
  expect_change(sum, "acme", 1, "enabled", 0, "disabled", "decrypt-only", OFF, NULL, "EnableKey");
  expect_change(sum, "acme", 0, "disabled", 0, "active", "disabled", OFF, OFF2, "DisableKey");
  expect_change(sum, "acme", 0, "enabled", 0, "disabled", "active", OFF, NULL, "EnableKey");
  expect_change(sum, "acme", 1, "destruction_scheduled", 0, "decrypt-only",
                "pending destruction", OFF, OFF2, "ScheduleDestruction");
  expect_change(sum, "acme", 1, "destruction_cancelled", 0, "pending destruction",
                "decrypt-only", OFF, NULL, "CancelDestruction");
  expect_change(sum, "acme", 1, "destruction_scheduled", 1, "decrypt-only",
                "pending destruction", OFF, OFF2, "ScheduleDestruction");
  /* kmsd shreds on its own tick: no call of its own, the receipt and the request instead. */
  expect_change(sum, "acme", 1, "destroyed", 0, "pending destruction", "destroyed", OFF, OFF2, "");
  ck_assert_int_ne(json_integer_value(json_object_get(change_of(sum, "acme", 1, "destroyed", 0),
                                                      "receipt_id")),
                   0);
  expect_change(sum, "initech", 1, "created", 0, "", "active", OFF, NULL, "CreateTenant");
  expect_change(sum, "initech", 2, "rotated", 0, "", "active", OFF, NULL, "RotateKey");
  /* Before the period: not listed. */
  ck_assert_ptr_null(change_of(sum, "acme", 1, "created", 0));
  ck_assert_ptr_null(strstr(exp, "MISSING"));
  /* Who accessed which session's key: the principals, per session, with outcomes. */
  ck_assert_ptr_nonnull(strstr(exp, "\"tenant\":\"acme\",\"principal\":\"spiffe://tenantkms.dev/ai\","
                                    "\"op\":\"GetSessionKey\",\"outcome\":\"ok\",\"count\":2}"));
  ck_assert_ptr_nonnull(strstr(exp, "\"tenant\":\"acme\",\"principal\":\"spiffe://tenantkms.dev/ai\","
                                    "\"op\":\"GetSessionKey\",\"outcome\":\"denied\",\"count\":1}"));
  ck_assert_ptr_nonnull(strstr(exp, "\"principal\":\"spiffe://tenantkms.dev/recording\","
                                    "\"op\":\"CloseSession\",\"outcome\":\"ok\",\"count\":1}"));
  ck_assert_ptr_nonnull(strstr(exp, "\"tenant\":\"initech\",\"principal\":"
                                    "\"spiffe://tenantkms.dev/recording\",\"op\":\"OpenSession\""));
  ck_assert_ptr_null(strstr(exp, "s-audit-1")); /* session ids only as keyed HMACs */
  json_decref(sum);
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", path, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 0, "%s", g_out);
  /* 11 changes; the destruction is kmsd's own: 10 have the record of their call. */
  ck_assert_msg(strstr(g_out, "summary counts checked against them; 10 of 11 state change(s)") !=
                    NULL,
                "%s", g_out);
  /* The tables again, from the file. */
  snprintf(args, sizeof(args), "audit summary '%s'", path);
  ck_assert_msg(kmsctl(NULL, args) == 0, "%s", g_out);
  ck_assert_msg(strstr(g_out, OFF2) != NULL && strstr(g_out, "APPROVERS") != NULL, "%s", g_out);

  /* A count changed: verify-export recomputes it from the proven records. */
  expect_tamper_caught(exp, "\"op\":\"GetSessionKey\",\"outcome\":\"ok\",\"count\":2}",
                       "\"op\":\"GetSessionKey\",\"outcome\":\"ok\",\"count\":3}",
                       "tampered-count.jsonl", vkey, "FAILED: the summary's counts");
  free(exp);

  /* The tenant-bound auditor: its tenant's changes and sessions, nobody else's. */
  snprintf(path, sizeof(path), "%s/changes-acme.jsonl", d);
  snprintf(args, sizeof(args), "audit export --from %s --to 2100-01-01 --tenant acme --out '%s'",
           from, path);
  ck_assert_msg(kmsctl("integration-acme", args) == 0, "%s", g_out);
  exp = slurp(path);
  sum = summary_of(exp);
  expect_change(sum, "acme", 0, "disabled", 0, "active", "disabled", OFF, OFF2, "DisableKey");
  expect_change(sum, "acme", 1, "destroyed", 0, "pending destruction", "destroyed", OFF, OFF2, "");
  ck_assert_ptr_null(strstr(exp, "initech"));
  ck_assert_ptr_null(strstr(exp, "globex"));
  /* The approvals of acme's changes are acme's records too (the request names only an id). */
  ck_assert_ptr_nonnull(strstr(exp, "\"principal\":\"" OFF2 "\""));
  ck_assert_ptr_nonnull(strstr(exp, "\"op\":\"Approve\",\"tenant\":\"acme\""));
  ck_assert_ptr_nonnull(strstr(exp, "\"principal\":\"spiffe://tenantkms.dev/ai\","
                                    "\"op\":\"GetSessionKey\",\"outcome\":\"ok\",\"count\":2}"));
  json_decref(sum);
  free(exp);
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", path, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 0, "%s", g_out);

  /* One session, by its id: the summary names it in clear for who asked. */
  snprintf(args, sizeof(args),
           "audit export --from %s --to 2100-01-01 --tenant acme --session s-audit-1", from);
  ck_assert_msg(kmsctl("integration-acme", args) == 0, "%s", g_out);
  ck_assert_ptr_nonnull(strstr(g_out, "\"session\":\"s-audit-1\",\"tenant\":\"acme\","
                                      "\"principal\":\"spiffe://tenantkms.dev/ai\""));

  /* csv: verified too, summary sections included; a changed record or column fails. */
  snprintf(csvpath, sizeof(csvpath), "%s/changes.csv", d);
  snprintf(args, sizeof(args),
           "audit export --from %s --to 2100-01-01 --format csv --out '%s' --quiet", from,
           csvpath);
  ck_assert_msg(kmsctl("auditor", args) == 0, "%s", g_out);
  ck_assert_ptr_null(strstr(g_out, "Key state changes")); /* --quiet */
  exp = slurp(csvpath);
  ck_assert_ptr_nonnull(strstr(exp, "\ncheckpoint,tree_size,note\n"));
  ck_assert_ptr_nonnull(strstr(exp, "\nstate_change,time,tenant,version,event"));
  ck_assert_ptr_nonnull(strstr(exp, "\"disabled\",\"active\",\"disabled\",\"" OFF "\",\"" OFF2 "\""));
  ck_assert_ptr_nonnull(strstr(exp, "\nsession_access,"));
  snprintf(args, sizeof(args), "audit verify-export '%s' --key '%s'", csvpath, vkey);
  ck_assert_msg(kmsctl(NULL, args) == 0, "%s", g_out);
  ck_assert_msg(strstr(g_out, "OK: ") != NULL && strstr(g_out, "10 of 11 state change(s)"),
                "%s", g_out);
  /* A byte of a record inside its csv field. */
  expect_tamper_caught(exp, "\"\"outcome\"\":\"\"ok\"\"", "\"\"outcome\"\":\"\"no\"\"",
                       "tampered-record.csv", vkey, "FAILED at row");
  /* Only a column a spreadsheet shows: the proven record says otherwise. */
  expect_tamper_caught(exp, ",\"spiffe://tenantkms.dev/ai\",", ",\"spiffe://tenantkms.dev/xx\",",
                       "tampered-column.csv", vkey, "FAILED at row");
  /* A state change's call: no longer what the record it names did. */
  expect_tamper_caught(exp, "\"keystore\",\"RotateKey\",", "\"keystore\",\"EnableKey\",",
                       "tampered-change.csv", vkey, "not a verified");
  /* A count in the csv summary section. */
  expect_tamper_caught(exp, "\"GetSessionKey\",\"ok\",2\n", "\"GetSessionKey\",\"ok\",3\n",
                       "tampered-count.csv", vkey, "FAILED: the summary");
  free(exp);

  /* Bad input: a clear message and a non-zero exit, before anything is sent. */
  ck_assert_int_eq(kmsctl("auditor", "audit export --from yesterday --to 2100-01-01"), 2);
  ck_assert_msg(strstr(g_out, "not a time") != NULL, "%s", g_out);
  ck_assert_int_eq(kmsctl("auditor", "audit export --from 2026-13-45 --to 2100-01-01"), 2);
  ck_assert_int_eq(kmsctl("auditor", "audit export --from 2100-01-01 --to 2020-01-01"), 2);
  ck_assert_msg(strstr(g_out, "after --from") != NULL, "%s", g_out);
  ck_assert_int_eq(
      kmsctl("auditor", "audit export --from 2020-01-01 --to 2100-01-01 --op GetSecretKey"), 2);
  ck_assert_msg(strstr(g_out, "not an operation") != NULL, "%s", g_out);
  ck_assert_int_eq(
      kmsctl("auditor", "audit export --from 2020-01-01 --to 2100-01-01 --format xml"), 2);
  ck_assert_int_eq(kmsctl("integration-acme",
                          "audit export --from 2020-01-01 --to 2100-01-01 --tenant initech"),
                   1);
  ck_assert_msg(strstr(g_out, "ermission") != NULL, "%s", g_out);
}
END_TEST

int
main(void)
{
  /* Zero-day destruction and a lifecycle tick every second: a shredding within the test. */
  harness_setup("audit_checkpoint_seconds = 1\nallow_short_waiting_periods = true\n"
                "lifecycle_interval_s = 1");
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
  /* A second officer for dual control, issued by the dev CA like the others. */
  const char *src = getenv("SRCDIR") != NULL ? getenv("SRCDIR") : ".";
  char script[2048];
  snprintf(script, sizeof(script),
           "set -e\n. '%s/scripts/lib/devenv.sh'\ntkms_tmpdir\n"
           "tkms_client_ext \"$TKMS_TMP/client.ext\" officer2\n"
           "tkms_ensure_leaf '%s'/pki/clients/officer2.crt '%s'/pki/clients/officer2.key officer2 "
           "\"$TKMS_TMP/client.ext\" '%s'/pki/ca.crt '%s'/pki/ca.key\n",
           src, harness_dir(), harness_dir(), harness_dir(), harness_dir());
  harness_write_file("officer2.sh", script);
  snprintf(cmd, sizeof(cmd), "bash '%s/officer2.sh' 2>/dev/null", harness_dir());
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot issue the officer2 certificate\n");
    return 99;
  }
  harness_write_file("pol/zz-officer2.json",
                     "{\"version\":1,\"rules\":[{\"id\":\"officer2\",\"effect\":\"allow\","
                     "\"principal\":\"spiffe://tenantkms.dev/officer2\",\"operations\":"
                     "[\"Approve\",\"Health\"],\"tenants\":\"all\"}]}\n");
  snprintf(conf, sizeof(conf), "policy = %s/pol", harness_dir());
  harness_append_conf(conf);
  harness_start_kmsd();
  Suite *s = suite_create("audit_export");
  TCase *tc = tcase_create("export");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_export_scoped_verified_summarised_and_tamper_evident);
  tcase_add_test(tc, test_export_names_state_changes_actor_approver_and_session_access);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  if (harness_kmsd_alive()) {
    harness_stop_kmsd();
  }
  return harness_cleanup(failed);
}
