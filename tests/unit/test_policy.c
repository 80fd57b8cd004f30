/* Unit tests for kmsd/policy.c: the policy file parser, its messages, and the evaluator. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms_err.h"
#include "kms_wire.h"
#include "policy.h"
#include "rpc.h"

#define P_REC "spiffe://tenantkms.dev/recording"
#define P_STORAGE "spiffe://tenantkms.dev/storage"
#define P_AI "spiffe://tenantkms.dev/ai"
#define P_OFFICER "spiffe://tenantkms.dev/officer"
#define P_AUDITOR "spiffe://tenantkms.dev/auditor"
#define P_ACME "spiffe://tenantkms.dev/tenant/acme/integration"
#define P_GLOBEX "spiffe://tenantkms.dev/tenant/globex/integration"
#define P_UNLISTED "spiffe://tenantkms.dev/unlisted"

/* A one-rule policy with |fields| spliced into the rule object. */
#define RULE(fields) "{\"version\": 1, \"rules\": [{" fields "}]}"
#define BASE "\"id\": \"r1\", \"effect\": \"allow\", "

static char err[512];

static policy *
parse_ok(const char *json)
{
  policy *p = NULL;
  int r = policy_parse_buf(&p, "t.json", (const uint8_t *)json, strlen(json), err, sizeof(err));
  ck_assert_msg(r == KMS_OK, "expected to parse, got: %s", err);
  ck_assert_ptr_nonnull(p);
  return p;
}

/* The message must contain every given fragment (NULL-terminated list). */
static void
assert_err_has(const char *first, va_list ap)
{
  for (const char *s = first; s != NULL; s = va_arg(ap, const char *)) {
    ck_assert_msg(strstr(err, s) != NULL, "message '%s' lacks '%s'", err, s);
  }
  ck_assert_msg(strchr(err, '"') == NULL, "message has a double quote: %s", err);
}

static void
parse_fails(const char *json, ...)
{
  policy *p = (policy *)1;
  int r = policy_parse_buf(&p, "t.json", (const uint8_t *)json, strlen(json), err, sizeof(err));
  ck_assert_msg(r == KMS_ERR_CONFIG, "expected a refusal for %s", json);
  ck_assert_ptr_null(p);
  va_list ap;
  va_start(ap, json);
  assert_err_has(va_arg(ap, const char *), ap);
  va_end(ap);
}

/* |kv|: key, value, key, value, ..., NULL. */
static int
decide(const policy *p, const char *principal, const char *op, const char *tenant, ...)
{
  struct policy_kv ctx[8];
  size_t n = 0;
  va_list ap;
  va_start(ap, tenant);
  for (const char *k = va_arg(ap, const char *); k != NULL && n < 8; k = va_arg(ap, const char *)) {
    ctx[n].key = k;
    ctx[n].value = va_arg(ap, const char *);
    n++;
  }
  va_end(ap);
  struct policy_request req = {principal, op, tenant, ctx, n};
  struct policy_decision d;
  policy_evaluate(p, &req, &d);
  ck_assert(d.allowed == 0 || d.rule_id != NULL);
  return d.allowed;
}

static policy *
examples(void)
{
  char path[1024];
  const char *src = getenv("SRCDIR");
  snprintf(path, sizeof(path), "%s/policies", src != NULL ? src : ".");
  policy *p = NULL;
  ck_assert_msg(policy_load(&p, path, err, sizeof(err)) == KMS_OK, "%s", err);
  return p;
}

/* ---- Vocabulary ------------------------------------------------------------------ */

START_TEST(test_vocabulary_has_every_operation_of_the_design)
{
  static const char *const design[] = {"GenerateDataKey",   "GenerateDataKeyWithoutPlaintext",
                                       "Decrypt",           "ReEncrypt",
                                       "Encrypt",           "OpenSession",
                                       "GetSessionKey",     "CloseSession",
                                       "ShredSession",      "ListSessions",
                                       "CreateTenant",      "RotateKey",
                                       "ListKeys",          "DisableKey",
                                       "EnableKey",         "ScheduleDestruction",
                                       "CancelDestruction", "Approve",
                                       "ExportAudit",       "Health"};
  for (size_t i = 0; i < sizeof(design) / sizeof(design[0]); i++) {
    ck_assert_msg(policy_op_known(design[i]), "%s missing", design[i]);
  }
  ck_assert(!policy_op_known("decrypt"));
  ck_assert(!policy_op_known(""));
  ck_assert(!policy_op_known(NULL));
  ck_assert_uint_ge(policy_op_count(), 20);
  ck_assert_ptr_null(policy_op_name(policy_op_count()));
}
END_TEST

START_TEST(test_every_rpc_method_has_a_known_policy_operation)
{
  char e[256] = "";
  ck_assert_msg(rpc_check_policy_vocabulary(e, sizeof(e)) == KMS_OK, "%s", e);
}
END_TEST

/* ---- Refused files ------------------------------------------------------------------ */

START_TEST(test_syntax_error_names_file_line_and_column)
{
  parse_fails("{\n  \"version\": 1,\n  \"rules\": [ ,\n]}", "t.json:3:", "syntax error", NULL);
  parse_fails("", "t.json:", "syntax error", NULL);
  parse_fails("{\"version\": 1} trailing", "t.json:1:", "syntax error", NULL);
}
END_TEST

START_TEST(test_duplicate_json_key_is_a_syntax_error)
{
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"principal\": \"cn:b\", "
                        "\"operations\": [\"Health\"], \"tenants\": \"all\""),
              "t.json:1:", "duplicate object key", NULL);
}
END_TEST

START_TEST(test_unknown_operation_is_refused_with_its_path)
{
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Health\", \"Decrytp\"], "
                        "\"tenants\": \"all\""),
              "t.json: rules[0].operations[1]: unknown operation 'Decrytp'", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"*\"], \"tenants\": \"all\""),
              "rules[0].operations[0]: unknown operation '*'", NULL);
}
END_TEST

START_TEST(test_unknown_fields_are_refused)
{
  parse_fails("{\"version\": 1, \"rule\": []}", "t.json: rule: unknown field", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\", \"tenant\": \"acme\""),
              "rules[0].tenant: unknown field", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"require\": [\"x\"]}"),
              "rules[0].context.require: unknown field", NULL);
}
END_TEST

START_TEST(test_wrong_types_are_refused)
{
  parse_fails("[]", "t.json: expected an object", NULL);
  parse_fails("{\"version\": \"1\", \"rules\": []}", "version: expected 1", NULL);
  parse_fails("{\"version\": 2, \"rules\": []}", "version: expected 1", NULL);
  parse_fails("{\"rules\": []}", "version: missing", NULL);
  parse_fails("{\"version\": 1, \"rules\": {}}", "rules: expected a non-empty array", NULL);
  parse_fails("{\"version\": 1, \"rules\": []}", "rules: expected a non-empty array", NULL);
  parse_fails("{\"version\": 1, \"rules\": [7]}", "rules[0]: expected an object", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": \"Health\", "
                        "\"tenants\": \"all\""),
              "rules[0].operations: expected a non-empty array", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [1], \"tenants\": \"all\""),
              "rules[0].operations[0]: expected a string", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Health\"], \"tenants\": 3"),
              "rules[0].tenants: expected 'all', 'bound' or an array", NULL);
  parse_fails(RULE("\"id\": \"r1\", \"effect\": true, \"principal\": \"cn:a\", "
                   "\"operations\": [\"Health\"], \"tenants\": \"all\""),
              "rules[0].effect: expected 'allow' or 'deny'", NULL);
  parse_fails(RULE(BASE "\"principal\": [\"cn:a\"], \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\""),
              "rules[0].principal: expected a string", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"values\": {\"purpose\": \"x\"}}"),
              "rules[0].context.values.purpose: expected a non-empty array", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\", \"description\": 5"),
              "rules[0].description: expected a string", NULL);
}
END_TEST

START_TEST(test_missing_rule_fields_are_refused)
{
  parse_fails(RULE("\"id\": \"r1\", \"principal\": \"cn:a\", \"operations\": [\"Health\"], "
                   "\"tenants\": \"all\""),
              "rules[0].effect: missing", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Health\"]"),
              "rules[0].tenants: missing", NULL);
  parse_fails(RULE("\"effect\": \"allow\", \"principal\": \"cn:a\", \"operations\": [\"Health\"], "
                   "\"tenants\": \"all\""),
              "rules[0].id: missing", NULL);
}
END_TEST

START_TEST(test_bad_principals_are_refused)
{
  parse_fails(RULE(BASE "\"principal\": \"\", \"operations\": [\"Health\"], \"tenants\": \"all\""),
              "rules[0].principal: empty principal", NULL);
  parse_fails(RULE(BASE "\"principal\": \"recording\", \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\""),
              "rules[0].principal: 'recording': expected 'cn:NAME' or a URI", NULL);
  parse_fails(
      RULE(BASE "\"principal\": \"cn:\", \"operations\": [\"Health\"], \"tenants\": \"all\""),
      "expected 'cn:NAME' or a URI", NULL);
  parse_fails(RULE(BASE "\"principal\": \"spiffe://x/a b\", \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\""),
              "rules[0].principal:", "spaces", NULL);
  parse_fails(RULE(BASE "\"principal\": \"spiffe://x/\\\"q\\n\", \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\""),
              "rules[0].principal:", NULL);
}
END_TEST

START_TEST(test_wildcards_are_not_principals)
{
  /* '*' is a literal character of a URI: the rule parses but matches only that exact name. */
  policy *p = parse_ok(RULE(BASE "\"principal\": \"spiffe://x/*\", \"operations\": [\"Health\"], "
                                 "\"tenants\": \"all\""));
  ck_assert(!decide(p, "spiffe://x/anything", "Health", NULL, NULL));
  ck_assert(decide(p, "spiffe://x/*", "Health", NULL, NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_placeholder_misuse_is_refused)
{
  const char *ops = "\"operations\": [\"Decrypt\"], \"tenants\": \"bound\"";
  char buf[512];
  static const struct {
    const char *principal;
    const char *msg;
  } cases[] = {
      {"cn:{tenant}", "allowed in URI principals only"},
      {"spiffe://d/tenant/{tenant}/x/{tenant}", "may only form one '{tenant}'"},
      {"spiffe://d/tenant-{tenant}/x", "whole path segment"},
      {"spiffe://d/{tenant}x", "whole path segment"},
      {"spiffe://{tenant}/x", "whole path segment"},
      {"spiffe://d/{tenants}/x", "may only form one '{tenant}'"},
      {"spiffe://d/{x}/y", "may only form one '{tenant}'"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    snprintf(buf, sizeof(buf), RULE(BASE "\"principal\": \"%s\", %s"), cases[i].principal, ops);
    parse_fails(buf, "rules[0].principal:", cases[i].msg, NULL);
  }
  parse_fails(RULE(BASE "\"principal\": \"spiffe://d/t/{tenant}\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\""),
              "rules[0].principal: a principal with '{tenant}' needs", NULL);
  parse_fails(RULE(BASE "\"principal\": \"spiffe://d/t\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"bound\""),
              "rules[0].tenants: 'bound' needs a principal with a '{tenant}' placeholder", NULL);
}
END_TEST

START_TEST(test_bad_tenants_are_refused)
{
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"acme\""),
              "rules[0].tenants: expected 'all', 'bound' or an array", "['acme']", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], \"tenants\": []"),
              "rules[0].tenants: expected a non-empty array", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": [\"acme\", \"-bad\"]"),
              "rules[0].tenants[1]: '-bad' is not a valid tenant id", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": [\"acme\", \"b\", \"acme\"]"),
              "rules[0].tenants[2]: duplicate tenant id 'acme'", NULL);
}
END_TEST

START_TEST(test_duplicates_are_refused)
{
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\", \"Decrypt\"], "
                        "\"tenants\": \"all\""),
              "rules[0].operations[1]: duplicate operation 'Decrypt'", NULL);
  parse_fails("{\"version\": 1, \"rules\": ["
              "{\"id\": \"same\", \"effect\": \"allow\", \"principal\": \"cn:a\", "
              "\"operations\": [\"Health\"], \"tenants\": \"all\"},"
              "{\"id\": \"same\", \"effect\": \"deny\", \"principal\": \"cn:a\", "
              "\"operations\": [\"Health\"], \"tenants\": \"all\"}]}",
              "rules[1].id: duplicate rule id 'same'", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"required\": [\"s\", \"s\"]}"),
              "rules[0].context.required[1]: duplicate context key 's'", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", "
                        "\"context\": {\"values\": {\"purpose\": [\"report\", \"report\"]}}"),
              "rules[0].context.values.purpose[1]: duplicate context value 'report'", NULL);
}
END_TEST

START_TEST(test_bad_context_conditions_are_refused)
{
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"required\": [\"has space\"]}"),
              "rules[0].context.required[0]: 'has space' is not a valid context key", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"values\": {\"a/b\": [\"x\"]}}"),
              "rules[0].context.values.a/b: not a valid context key", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"values\": {}}"),
              "rules[0].context.values: expected a non-empty object", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": {\"values\": {\"p\": [\"a\\tb\"]}}"),
              "rules[0].context.values.p[0]:", "not a valid context value", NULL);
  parse_fails(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                        "\"tenants\": \"all\", \"context\": []"),
              "rules[0].context: expected an object", NULL);
}
END_TEST

START_TEST(test_bad_rule_ids_are_refused)
{
  parse_fails(RULE("\"id\": \"\", \"effect\": \"allow\", \"principal\": \"cn:a\", "
                   "\"operations\": [\"Health\"], \"tenants\": \"all\""),
              "rules[0].id: expected 1-64 characters", NULL);
  parse_fails(RULE("\"id\": \"a b\", \"effect\": \"allow\", \"principal\": \"cn:a\", "
                   "\"operations\": [\"Health\"], \"tenants\": \"all\""),
              "rules[0].id:", NULL);
}
END_TEST

START_TEST(test_nul_in_a_string_is_refused)
{
  parse_fails(RULE(BASE "\"principal\": \"cn:a\\u0000b\", \"operations\": [\"Health\"], "
                        "\"tenants\": \"all\""),
              "t.json:1:", NULL);
}
END_TEST

/* ---- Files and directories ----------------------------------------------------------- */

static char tmpdir[256];

static void
make_tmpdir(void)
{
  snprintf(tmpdir, sizeof(tmpdir), "%s/tkms-policy.XXXXXX",
           getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  chmod(tmpdir, 0755);
}

static void
remove_tmpdir(void)
{
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static void
write_file(const char *name, const char *content, mode_t mode)
{
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(content, f);
  fclose(f);
  ck_assert_int_eq(chmod(path, mode), 0);
}

#define SIMPLE(id, principal)                                                                      \
  "{\"version\": 1, \"rules\": [{\"id\": \"" id                                                    \
  "\", \"effect\": \"allow\", \"principal\": \"" principal                                         \
  "\", \"operations\": [\"Health\"], \"tenants\": \"all\"}]}"

START_TEST(test_directory_loads_every_json_file_in_sorted_order)
{
  make_tmpdir();
  write_file("b.json", SIMPLE("rb", "cn:b"), 0644);
  write_file("a.json", SIMPLE("ra", "cn:a"), 0644);
  write_file("notes.txt", "not a policy", 0644);
  write_file(".hidden.json", "{broken", 0644);
  policy *p = NULL;
  ck_assert_msg(policy_load(&p, tmpdir, err, sizeof(err)) == KMS_OK, "%s", err);
  ck_assert_uint_eq(policy_file_count(p), 2);
  ck_assert_uint_eq(policy_rule_count(p), 2);
  ck_assert_uint_eq(strlen(policy_digest(p)), 64);
  ck_assert(decide(p, "cn:a", "Health", NULL, NULL));
  ck_assert(decide(p, "cn:b", "Health", NULL, NULL));
  ck_assert(!decide(p, "cn:c", "Health", NULL, NULL));
  char first[POLICY_DIGEST_HEX];
  memcpy(first, policy_digest(p), sizeof(first));
  policy_free(p);
  /* A change to any file changes the digest kmsd logs. */
  write_file("b.json", SIMPLE("rb", "cn:B"), 0644);
  ck_assert_int_eq(policy_load(&p, tmpdir, err, sizeof(err)), KMS_OK);
  ck_assert_str_ne(first, policy_digest(p));
  policy_free(p);
  remove_tmpdir();
}
END_TEST

START_TEST(test_one_bad_file_refuses_the_whole_directory)
{
  make_tmpdir();
  write_file("a.json", SIMPLE("ra", "cn:a"), 0644);
  write_file("b.json", "{\"version\": 1,\n \"rules\": [ }", 0644);
  write_file("c.json", SIMPLE("rc", "cn:c"), 0644);
  policy *p = (policy *)1;
  ck_assert_int_eq(policy_load(&p, tmpdir, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_ptr_null(p);
  ck_assert_msg(strstr(err, "/b.json:2:") != NULL, "%s", err);
  remove_tmpdir();
}
END_TEST

START_TEST(test_rule_ids_are_unique_across_files)
{
  make_tmpdir();
  write_file("a.json", SIMPLE("same", "cn:a"), 0644);
  write_file("b.json", SIMPLE("same", "cn:b"), 0644);
  policy *p = NULL;
  ck_assert_int_eq(policy_load(&p, tmpdir, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_msg(strstr(err, "/b.json: rules[0].id: duplicate rule id 'same'") != NULL, "%s", err);
  remove_tmpdir();
}
END_TEST

START_TEST(test_files_writable_by_others_are_refused)
{
  make_tmpdir();
  write_file("a.json", SIMPLE("ra", "cn:a"), 0666);
  policy *p = NULL;
  ck_assert_int_eq(policy_load(&p, tmpdir, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_msg(strstr(err, "/a.json: writable by others") != NULL, "%s", err);
  write_file("a.json", SIMPLE("ra", "cn:a"), 0644);
  ck_assert_int_eq(chmod(tmpdir, 0777), 0);
  ck_assert_int_eq(policy_load(&p, tmpdir, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_msg(strstr(err, "directory writable by others") != NULL, "%s", err);
  ck_assert_int_eq(chmod(tmpdir, 0755), 0);
  remove_tmpdir();
}
END_TEST

START_TEST(test_empty_directory_and_missing_path_are_refused)
{
  make_tmpdir();
  policy *p = NULL;
  ck_assert_int_eq(policy_load(&p, tmpdir, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_msg(strstr(err, "no *.json policy files") != NULL, "%s", err);
  char missing[512];
  snprintf(missing, sizeof(missing), "%s/nope.json", tmpdir);
  ck_assert_int_eq(policy_load(&p, missing, err, sizeof(err)), KMS_ERR_IO);
  ck_assert_msg(strstr(err, "nope.json") != NULL, "%s", err);
  ck_assert_ptr_null(p);
  remove_tmpdir();
}
END_TEST

START_TEST(test_single_file_path_loads)
{
  make_tmpdir();
  write_file("only.json", SIMPLE("r", "cn:a"), 0600);
  char path[512];
  snprintf(path, sizeof(path), "%s/only.json", tmpdir);
  policy *p = NULL;
  ck_assert_msg(policy_load(&p, path, err, sizeof(err)) == KMS_OK, "%s", err);
  ck_assert_uint_eq(policy_file_count(p), 1);
  policy_free(p);
  remove_tmpdir();
}
END_TEST

START_TEST(test_oversized_file_is_refused)
{
  size_t n = POLICY_FILE_MAX + 2;
  uint8_t *big = malloc(n);
  ck_assert_ptr_nonnull(big);
  memset(big, ' ', n);
  policy *p = NULL;
  ck_assert_int_eq(policy_parse_buf(&p, "big.json", big, n, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_msg(strstr(err, "big.json: larger than") != NULL, "%s", err);
  free(big);
}
END_TEST

/* ---- Evaluation -------------------------------------------------------------------- */

START_TEST(test_nothing_is_allowed_without_a_rule)
{
  policy *p = parse_ok(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                                 "\"tenants\": \"all\""));
  ck_assert(decide(p, "cn:a", "Decrypt", "acme", NULL));
  ck_assert(!decide(p, "cn:b", "Decrypt", "acme", NULL));
  ck_assert(!decide(p, "cn:a", "Encrypt", "acme", NULL));
  ck_assert(!decide(p, "cn:a", "Health", NULL, NULL));
  ck_assert(!decide(p, "cn:a", "NoSuchOp", "acme", NULL));
  ck_assert(!decide(p, NULL, "Decrypt", "acme", NULL));
  /* A CN principal never matches the same text as a URI and vice versa. */
  ck_assert(!decide(p, "a", "Decrypt", "acme", NULL));
  ck_assert(!decide(NULL, "cn:a", "Decrypt", "acme", NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_deny_wins_over_allow_in_either_order)
{
  const char *allow = "{\"id\": \"a\", \"effect\": \"allow\", \"principal\": \"cn:x\", "
                      "\"operations\": [\"Decrypt\", \"Health\"], \"tenants\": \"all\"}";
  const char *deny = "{\"id\": \"d\", \"effect\": \"deny\", \"principal\": \"cn:x\", "
                     "\"operations\": [\"Decrypt\"], \"tenants\": [\"secret\"]}";
  char buf[1024];
  for (int order = 0; order < 2; order++) {
    snprintf(buf, sizeof(buf), "{\"version\": 1, \"rules\": [%s, %s]}", order ? allow : deny,
             order ? deny : allow);
    policy *p = parse_ok(buf);
    ck_assert(decide(p, "cn:x", "Decrypt", "acme", NULL));
    ck_assert(!decide(p, "cn:x", "Decrypt", "secret", NULL));
    /* A request naming no tenant (every tenant) meets the deny. */
    ck_assert(!decide(p, "cn:x", "Decrypt", NULL, NULL));
    ck_assert(decide(p, "cn:x", "Health", NULL, NULL));
    struct policy_request req = {"cn:x", "Decrypt", "secret", NULL, 0};
    struct policy_decision d;
    policy_evaluate(p, &req, &d);
    ck_assert_str_eq(d.rule_id, "d");
    policy_free(p);
  }
}
END_TEST

START_TEST(test_tenant_lists_cover_only_their_tenants)
{
  policy *p = parse_ok(RULE(BASE "\"principal\": \"cn:a\", \"operations\": [\"Decrypt\"], "
                                 "\"tenants\": [\"zeta\", \"acme\", \"mid\"]"));
  ck_assert(decide(p, "cn:a", "Decrypt", "acme", NULL));
  ck_assert(decide(p, "cn:a", "Decrypt", "mid", NULL));
  ck_assert(decide(p, "cn:a", "Decrypt", "zeta", NULL));
  ck_assert(!decide(p, "cn:a", "Decrypt", "Acme", NULL));
  ck_assert(!decide(p, "cn:a", "Decrypt", "acme2", NULL));
  ck_assert(!decide(p, "cn:a", "Decrypt", NULL, NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_bound_principal_reaches_only_its_own_tenant)
{
  policy *p = parse_ok(RULE(BASE "\"principal\": \"spiffe://d/tenant/{tenant}/int\", "
                                 "\"operations\": [\"Decrypt\", \"Health\"], "
                                 "\"tenants\": \"bound\""));
  ck_assert(decide(p, "spiffe://d/tenant/acme/int", "Decrypt", "acme", NULL));
  ck_assert(!decide(p, "spiffe://d/tenant/acme/int", "Decrypt", "globex", NULL));
  ck_assert(!decide(p, "spiffe://d/tenant/acme/int", "Decrypt", NULL, NULL));
  ck_assert(decide(p, "spiffe://d/tenant/globex/int", "Decrypt", "globex", NULL));
  ck_assert(decide(p, "spiffe://d/tenant/acme/int", "Health", NULL, NULL));
  /* The capture is one path segment that is a valid tenant id, nothing else. */
  static const char *const no[] = {
      "spiffe://d/tenant//int",         "spiffe://d/tenant/acme/x/int",
      "spiffe://d/tenant/a%2Fb/int",    "spiffe://d/tenant/-acme/int",
      "spiffe://d/tenant/acme/int/",    "spiffe://d/tenant/acme/intx",
      "spiffe://e/tenant/acme/int",     "spiffe://d/tenants/acme/int",
      "spiffe://d/tenant/{tenant}/int", "cn:spiffe://d/tenant/acme/int",
      "spiffe://d/tenant/../int",
  };
  for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
    ck_assert_msg(!decide(p, no[i], "Health", NULL, NULL), "%s matched", no[i]);
  }
  /* The longest tenant id fits; one more character does not. */
  char id[KMS_TENANT_ID_MAX + 2], principal[256];
  memset(id, 'a', sizeof(id));
  id[KMS_TENANT_ID_MAX] = '\0';
  snprintf(principal, sizeof(principal), "spiffe://d/tenant/%s/int", id);
  ck_assert(decide(p, principal, "Decrypt", id, NULL));
  id[KMS_TENANT_ID_MAX] = 'a';
  id[KMS_TENANT_ID_MAX + 1] = '\0';
  snprintf(principal, sizeof(principal), "spiffe://d/tenant/%s/int", id);
  ck_assert(!decide(p, principal, "Decrypt", id, NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_placeholder_at_the_end_of_the_uri)
{
  policy *p = parse_ok(RULE(BASE "\"principal\": \"spiffe://d/t/{tenant}\", "
                                 "\"operations\": [\"Decrypt\"], \"tenants\": \"bound\""));
  ck_assert(decide(p, "spiffe://d/t/acme", "Decrypt", "acme", NULL));
  ck_assert(!decide(p, "spiffe://d/t/acme/x", "Decrypt", "acme", NULL));
  ck_assert(!decide(p, "spiffe://d/t/", "Decrypt", "", NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_context_conditions)
{
  policy *p = parse_ok(RULE(BASE "\"principal\": \"cn:ai\", \"operations\": [\"Decrypt\"], "
                                 "\"tenants\": \"all\", \"context\": {\"required\": "
                                 "[\"session_id\"], \"values\": {\"purpose\": "
                                 "[\"transcription\", \"report\"]}}"));
  ck_assert(
      decide(p, "cn:ai", "Decrypt", "t", "session_id", "s1", "purpose", "transcription", NULL));
  ck_assert(
      decide(p, "cn:ai", "Decrypt", "t", "purpose", "report", "session_id", "s1", "x", "y", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", "session_id", "s1", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", "session_id", "s1", "purpose", "marketing", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", "session_id", "s1", "purpose", "Report", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", "session_id", "s1", "purpose", "", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", "purpose", "report", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", "session_id", "", "purpose", "report", NULL));
  ck_assert(!decide(p, "cn:ai", "Decrypt", "t", NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_deny_with_context_applies_only_when_it_matches)
{
  policy *p = parse_ok("{\"version\": 1, \"rules\": ["
                       "{\"id\": \"a\", \"effect\": \"allow\", \"principal\": \"cn:x\", "
                       "\"operations\": [\"Decrypt\"], \"tenants\": \"all\"},"
                       "{\"id\": \"d\", \"effect\": \"deny\", \"principal\": \"cn:x\", "
                       "\"operations\": [\"Decrypt\"], \"tenants\": \"all\", "
                       "\"context\": {\"values\": {\"purpose\": [\"training\"]}}}]}");
  ck_assert(decide(p, "cn:x", "Decrypt", "t", "purpose", "report", NULL));
  ck_assert(!decide(p, "cn:x", "Decrypt", "t", "purpose", "training", NULL));
  policy_free(p);
}
END_TEST

START_TEST(test_generate_with_and_without_plaintext_are_distinct_grants)
{
  policy *p = parse_ok(RULE(BASE "\"principal\": \"cn:s\", "
                                 "\"operations\": [\"GenerateDataKeyWithoutPlaintext\"], "
                                 "\"tenants\": \"all\""));
  ck_assert(decide(p, "cn:s", "GenerateDataKeyWithoutPlaintext", "t", NULL));
  ck_assert(!decide(p, "cn:s", "GenerateDataKey", "t", NULL));
  policy_free(p);
}
END_TEST

/* ---- The example policies ----------------------------------------------------------- */

START_TEST(test_example_policies_load)
{
  policy *p = examples();
  ck_assert_uint_eq(policy_file_count(p), 6);
  ck_assert_uint_ge(policy_rule_count(p), 6);
  policy_free(p);
}
END_TEST

START_TEST(test_example_policies_grant_each_role_only_its_job)
{
  policy *p = examples();
  /* recording: data keys and sessions, always for a session */
  ck_assert(decide(p, P_REC, "GenerateDataKey", "acme", "session_id", "s1", NULL));
  ck_assert(decide(p, P_REC, "OpenSession", "acme", "session_id", "s1", NULL));
  ck_assert(!decide(p, P_REC, "GenerateDataKey", "acme", NULL));
  ck_assert(!decide(p, P_REC, "Decrypt", "acme", "session_id", "s1", NULL));
  ck_assert(!decide(p, P_REC, "CreateTenant", "acme", NULL));
  /* storage: no plaintext, ever */
  ck_assert(decide(p, P_STORAGE, "GenerateDataKeyWithoutPlaintext", "acme", NULL));
  ck_assert(decide(p, P_STORAGE, "ReEncrypt", "acme", NULL));
  ck_assert(!decide(p, P_STORAGE, "GenerateDataKey", "acme", NULL));
  ck_assert(!decide(p, P_STORAGE, "Decrypt", "acme", NULL));
  /* ai: decrypt for an allowed purpose only */
  ck_assert(
      decide(p, P_AI, "Decrypt", "acme", "session_id", "s1", "purpose", "transcription", NULL));
  ck_assert(!decide(p, P_AI, "Decrypt", "acme", "session_id", "s1", NULL));
  ck_assert(!decide(p, P_AI, "Decrypt", "acme", "session_id", "s1", "purpose", "ads", NULL));
  ck_assert(!decide(p, P_AI, "GenerateDataKey", "acme", "session_id", "s1", NULL));
  /* officer: lifecycle, never key material */
  ck_assert(decide(p, P_OFFICER, "CreateTenant", "acme", NULL));
  ck_assert(decide(p, P_OFFICER, "ScheduleDestruction", "acme", NULL));
  ck_assert(!decide(p, P_OFFICER, "Decrypt", "acme", NULL));
  ck_assert(!decide(p, P_OFFICER, "GenerateDataKey", "acme", "session_id", "s", NULL));
  ck_assert(!decide(p, P_OFFICER, "ExportAudit", "acme", NULL));
  /* auditor: reads */
  ck_assert(decide(p, P_AUDITOR, "ExportAudit", "acme", NULL));
  ck_assert(decide(p, P_AUDITOR, "ExportAudit", NULL, NULL));
  ck_assert(decide(p, P_AUDITOR, "ListKeys", "acme", NULL));
  ck_assert(!decide(p, P_AUDITOR, "CreateTenant", "acme", NULL));
  /* integration: its own tenant only */
  ck_assert(decide(p, P_ACME, "Decrypt", "acme", NULL));
  ck_assert(decide(p, P_ACME, "GenerateDataKey", "acme", NULL));
  ck_assert(!decide(p, P_ACME, "Decrypt", "globex", NULL));
  ck_assert(!decide(p, P_ACME, "CreateTenant", "acme", NULL));
  ck_assert(decide(p, P_GLOBEX, "Decrypt", "globex", NULL));
  /* Health is granted explicitly to each role; an unlisted identity gets nothing. */
  const char *roles[] = {P_REC, P_STORAGE, P_AI, P_OFFICER, P_AUDITOR, P_ACME};
  for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
    ck_assert_msg(decide(p, roles[i], "Health", NULL, NULL), "%s", roles[i]);
  }
  for (size_t i = 0; i < policy_op_count(); i++) {
    ck_assert(!decide(p, P_UNLISTED, policy_op_name(i), "acme", "session_id", "s", "purpose",
                      "report", NULL));
  }
  policy_free(p);
}
END_TEST

static Suite *
policy_suite(void)
{
  Suite *s = suite_create("policy");
  TCase *t = tcase_create("vocabulary");
  tcase_add_test(t, test_vocabulary_has_every_operation_of_the_design);
  tcase_add_test(t, test_every_rpc_method_has_a_known_policy_operation);
  suite_add_tcase(s, t);

  t = tcase_create("refused");
  tcase_add_test(t, test_syntax_error_names_file_line_and_column);
  tcase_add_test(t, test_duplicate_json_key_is_a_syntax_error);
  tcase_add_test(t, test_unknown_operation_is_refused_with_its_path);
  tcase_add_test(t, test_unknown_fields_are_refused);
  tcase_add_test(t, test_wrong_types_are_refused);
  tcase_add_test(t, test_missing_rule_fields_are_refused);
  tcase_add_test(t, test_bad_principals_are_refused);
  tcase_add_test(t, test_wildcards_are_not_principals);
  tcase_add_test(t, test_placeholder_misuse_is_refused);
  tcase_add_test(t, test_bad_tenants_are_refused);
  tcase_add_test(t, test_duplicates_are_refused);
  tcase_add_test(t, test_bad_context_conditions_are_refused);
  tcase_add_test(t, test_bad_rule_ids_are_refused);
  tcase_add_test(t, test_nul_in_a_string_is_refused);
  suite_add_tcase(s, t);

  t = tcase_create("files");
  tcase_add_test(t, test_directory_loads_every_json_file_in_sorted_order);
  tcase_add_test(t, test_one_bad_file_refuses_the_whole_directory);
  tcase_add_test(t, test_rule_ids_are_unique_across_files);
  tcase_add_test(t, test_files_writable_by_others_are_refused);
  tcase_add_test(t, test_empty_directory_and_missing_path_are_refused);
  tcase_add_test(t, test_single_file_path_loads);
  tcase_add_test(t, test_oversized_file_is_refused);
  suite_add_tcase(s, t);

  t = tcase_create("evaluate");
  tcase_add_test(t, test_nothing_is_allowed_without_a_rule);
  tcase_add_test(t, test_deny_wins_over_allow_in_either_order);
  tcase_add_test(t, test_tenant_lists_cover_only_their_tenants);
  tcase_add_test(t, test_bound_principal_reaches_only_its_own_tenant);
  tcase_add_test(t, test_placeholder_at_the_end_of_the_uri);
  tcase_add_test(t, test_context_conditions);
  tcase_add_test(t, test_deny_with_context_applies_only_when_it_matches);
  tcase_add_test(t, test_generate_with_and_without_plaintext_are_distinct_grants);
  suite_add_tcase(s, t);

  t = tcase_create("examples");
  tcase_add_test(t, test_example_policies_load);
  tcase_add_test(t, test_example_policies_grant_each_role_only_its_job);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(policy_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
