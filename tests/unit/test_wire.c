/* Check suite for kms_wire: tenant ids, encryption contexts, and request/response validation. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_err.h"
#include "kms_wire.h"

/* ---- tenant ids ---- */

START_TEST(test_tenant_id_accepts_allowed_characters)
{
  ck_assert_int_eq(kms_wire_tenant_id_ok("a"), 1);
  ck_assert_int_eq(kms_wire_tenant_id_ok("7"), 1);
  ck_assert_int_eq(kms_wire_tenant_id_ok("Acme.corp_eu-1"), 1);
  ck_assert_int_eq(kms_wire_tenant_id_ok("a-"), 1);
  ck_assert_int_eq(kms_wire_tenant_id_ok("Z._-9"), 1);
}
END_TEST

START_TEST(test_tenant_id_accepts_64_and_refuses_65_characters)
{
  char id[66];
  memset(id, 'a', sizeof(id));
  id[64] = '\0';
  ck_assert_int_eq(kms_wire_tenant_id_ok(id), 1);
  id[64] = 'a';
  id[65] = '\0';
  ck_assert_int_eq(kms_wire_tenant_id_ok(id), 0);
}
END_TEST

START_TEST(test_tenant_id_refuses_empty_and_null)
{
  ck_assert_int_eq(kms_wire_tenant_id_ok(""), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok(NULL), 0);
}
END_TEST

START_TEST(test_tenant_id_refuses_first_character_not_alnum)
{
  ck_assert_int_eq(kms_wire_tenant_id_ok("-x"), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok(".x"), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok("_x"), 0);
}
END_TEST

START_TEST(test_tenant_id_refuses_characters_outside_set)
{
  ck_assert_int_eq(kms_wire_tenant_id_ok("a b"), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok("\xc3\xa9"), 0); /* "é" */
  ck_assert_int_eq(kms_wire_tenant_id_ok("a\xc3\xa9"), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok("a/b"), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok("a\n"), 0);
  ck_assert_int_eq(kms_wire_tenant_id_ok("a%"), 0);
}
END_TEST

/* ---- contexts ---- */

#define CTX_CAP 20

struct ctx {
  Tkms__ContextEntry e[CTX_CAP];
  Tkms__ContextEntry *p[CTX_CAP];
  char keys[CTX_CAP][8];
  size_t n;
};

static void
ctx_add(struct ctx *c, const char *key, const char *value)
{
  ck_assert_uint_lt(c->n, CTX_CAP);
  tkms__context_entry__init(&c->e[c->n]);
  c->e[c->n].key = (char *)key;
  c->e[c->n].value = (char *)value;
  c->p[c->n] = &c->e[c->n];
  c->n++;
}

/* Adds |n| entries with distinct keys k0, k1, ... */
static void
ctx_fill(struct ctx *c, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    snprintf(c->keys[c->n], sizeof(c->keys[0]), "k%u", (unsigned)(i % 100000));
    ctx_add(c, c->keys[c->n], "v");
  }
}

START_TEST(test_context_accepts_empty)
{
  const char *why = NULL;
  ck_assert_int_eq(kms_wire_context_ok(0, NULL, &why), 1);
}
END_TEST

START_TEST(test_context_accepts_16_entries_and_refuses_17)
{
  struct ctx c = {0};
  const char *why = NULL;
  ctx_fill(&c, 16);
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 1);
  struct ctx d = {0};
  ctx_fill(&d, 17);
  ck_assert_int_eq(kms_wire_context_ok(d.n, d.p, &why), 0);
  ck_assert_str_eq(why, "context: too many entries");
}
END_TEST

START_TEST(test_context_refuses_duplicate_key)
{
  struct ctx c = {0};
  const char *why = NULL;
  ctx_add(&c, "purpose", "a");
  ctx_add(&c, "other", "b");
  ctx_add(&c, "purpose", "c");
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 0);
  ck_assert_str_eq(why, "context: duplicate key");
}
END_TEST

START_TEST(test_context_key_allows_64_and_refuses_65_characters)
{
  char key[66];
  const char *why = NULL;
  memset(key, 'k', sizeof(key));
  key[64] = '\0';
  struct ctx c = {0};
  ctx_add(&c, key, "v");
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 1);
  key[64] = 'k';
  key[65] = '\0';
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 0);
  ck_assert_str_eq(why, "context: invalid key");
}
END_TEST

START_TEST(test_context_key_charset)
{
  static const char *const bad[] = {"", "a b", "a=b", "\xc3\xa9", "a\tb", "k:1"};
  static const char *const good[] = {"a", "A.b_c-d", "-x", "0", "session_id"};
  const char *why = NULL;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct ctx c = {0};
    ctx_add(&c, bad[i], "v");
    ck_assert_msg(kms_wire_context_ok(c.n, c.p, &why) == 0, "key #%zu accepted", i);
    ck_assert_str_eq(why, "context: invalid key");
  }
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    struct ctx c = {0};
    ctx_add(&c, good[i], "v");
    ck_assert_msg(kms_wire_context_ok(c.n, c.p, &why) == 1, "key %s refused", good[i]);
  }
}
END_TEST

START_TEST(test_context_refuses_null_key_or_entry)
{
  const char *why = NULL;
  struct ctx c = {0};
  ctx_add(&c, NULL, "v");
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 0);
  Tkms__ContextEntry *nul[1] = {NULL};
  ck_assert_int_eq(kms_wire_context_ok(1, nul, &why), 0);
}
END_TEST

START_TEST(test_context_value_allows_256_and_refuses_257_bytes)
{
  char val[258];
  const char *why = NULL;
  memset(val, 'v', sizeof(val));
  val[256] = '\0';
  struct ctx c = {0};
  ctx_add(&c, "k", val);
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 1);
  val[256] = 'v';
  val[257] = '\0';
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 0);
  ck_assert_str_eq(why, "context: value too long");
}
END_TEST

START_TEST(test_context_value_refuses_control_characters)
{
  static const char *const bad[] = {"a\nb", "\t", "x\x7f", "\x1f", "a\rb"};
  const char *why = NULL;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct ctx c = {0};
    ctx_add(&c, "k", bad[i]);
    ck_assert_msg(kms_wire_context_ok(c.n, c.p, &why) == 0, "value #%zu accepted", i);
    ck_assert_str_eq(why, "context: control character in value");
  }
}
END_TEST

START_TEST(test_context_value_allows_empty_spaces_and_utf8)
{
  const char *why = NULL;
  struct ctx c = {0};
  ctx_add(&c, "a", "");
  ctx_add(&c, "b", "quarterly report 2024");
  ctx_add(&c, "c", "caf\xc3\xa9");
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 1);
}
END_TEST

START_TEST(test_context_null_value_is_treated_as_empty)
{
  const char *why = NULL;
  struct ctx c = {0};
  ctx_add(&c, "k", NULL);
  ck_assert_int_eq(kms_wire_context_ok(c.n, c.p, &why), 1);
}
END_TEST

/* ---- requests ---- */

START_TEST(test_request_id_zero_is_refused)
{
  Tkms__Request req;
  Tkms__HealthRequest h;
  const char *why = NULL;
  tkms__request__init(&req);
  tkms__health_request__init(&h);
  req.op_case = TKMS__REQUEST__OP_HEALTH;
  req.health = &h;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(why, "request_id: must be nonzero");
  req.request_id = 1;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_OK);
}
END_TEST

START_TEST(test_request_without_op_is_unimplemented)
{
  Tkms__Request req;
  const char *why = NULL;
  tkms__request__init(&req);
  req.request_id = 9;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_UNIMPLEMENTED);
  req.op_case = (Tkms__Request__OpCase)99; /* a field number we don't know */
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_UNIMPLEMENTED);
}
END_TEST

START_TEST(test_create_tenant_checks_tenant_id)
{
  Tkms__Request req;
  Tkms__CreateTenantRequest ct;
  const char *why = NULL;
  tkms__request__init(&req);
  tkms__create_tenant_request__init(&ct);
  req.request_id = 1;
  req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
  req.create_tenant = &ct;
  ct.tenant_id = "acme";
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_OK);
  ct.tenant_id = "bad tenant";
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(why, "tenant_id"));
  ck_assert_ptr_null(strstr(why, "bad tenant")); /* names the field, not the value */
  ct.tenant_id = ""; /* protobuf-c's default for an absent string */
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(test_generate_checks_tenant_id_and_context)
{
  Tkms__Request req;
  Tkms__GenerateDataKeyRequest g;
  struct ctx c = {0};
  const char *why = NULL;
  tkms__request__init(&req);
  tkms__generate_data_key_request__init(&g);
  req.request_id = 1;
  req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
  req.generate_data_key = &g;
  g.tenant_id = "acme";
  ctx_add(&c, "purpose", "report");
  g.n_context = c.n;
  g.context = c.p;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_OK);
  g.tenant_id = "-acme";
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(why, "tenant_id"));
  g.tenant_id = "acme";
  ctx_add(&c, "purpose", "again");
  g.n_context = c.n;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(why, "context: duplicate key");
}
END_TEST

START_TEST(test_decrypt_checks_tenant_context_and_wrapped_key)
{
  Tkms__Request req;
  Tkms__DecryptRequest d;
  struct ctx c = {0};
  uint8_t blob[KMS_WRAPPED_KEY_MAX + 1];
  const char *why = NULL;
  memset(blob, 1, sizeof(blob));
  tkms__request__init(&req);
  tkms__decrypt_request__init(&d);
  req.request_id = 1;
  req.op_case = TKMS__REQUEST__OP_DECRYPT;
  req.decrypt = &d;
  d.tenant_id = "acme";
  d.wrapped_key.data = blob;
  d.wrapped_key.len = 65;
  ctx_add(&c, "k", "v");
  d.n_context = c.n;
  d.context = c.p;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_OK);

  d.wrapped_key.len = KMS_WRAPPED_KEY_MAX;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_OK);
  d.wrapped_key.len = KMS_WRAPPED_KEY_MAX + 1;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(why, "wrapped_key: missing or too long");
  d.wrapped_key.len = 0;
  d.wrapped_key.data = NULL;
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(why, "wrapped_key: missing or too long");

  d.wrapped_key.data = blob;
  d.wrapped_key.len = 65;
  d.tenant_id = "a b";
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(why, "tenant_id"));

  d.tenant_id = "acme";
  c.e[0].value = "line\nbreak";
  ck_assert_int_eq(kms_wire_request_check(&req, &why), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(why, "context: control character in value");
}
END_TEST

START_TEST(test_unpacked_request_with_absent_tenant_is_refused)
{
  /* A real decode: proto3 leaves an absent string as "", which must not pass. */
  Tkms__Request req;
  Tkms__CreateTenantRequest ct;
  tkms__request__init(&req);
  tkms__create_tenant_request__init(&ct);
  req.request_id = 5;
  req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
  req.create_tenant = &ct;
  uint8_t buf[64];
  size_t n = tkms__request__pack(&req, buf);
  ck_assert_uint_le(n, sizeof(buf));
  Tkms__Request *u = tkms__request__unpack(NULL, n, buf);
  ck_assert_ptr_nonnull(u);
  const char *why = NULL;
  ck_assert_int_eq(u->op_case, TKMS__REQUEST__OP_CREATE_TENANT);
  ck_assert_int_eq(kms_wire_request_check(u, &why), KMS_ERR_INVALID_ARGUMENT);
  tkms__request__free_unpacked(u, NULL);
}
END_TEST

/* ---- responses ---- */

START_TEST(test_error_response_without_result_is_ok)
{
  Tkms__Response r;
  tkms__response__init(&r);
  r.status = TKMS__STATUS_CODE__PERMISSION_DENIED;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_DECRYPT), KMS_OK);
}
END_TEST

START_TEST(test_error_response_with_result_is_protocol_error)
{
  Tkms__Response r;
  Tkms__HealthResponse h;
  tkms__response__init(&r);
  tkms__health_response__init(&h);
  r.status = TKMS__STATUS_CODE__INTERNAL;
  r.result_case = TKMS__RESPONSE__RESULT_HEALTH;
  r.health = &h;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_HEALTH), KMS_ERR_PROTOCOL);
  r.status = TKMS__STATUS_CODE__OK;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_HEALTH), KMS_OK);
}
END_TEST

START_TEST(test_ok_response_with_mismatched_result_is_protocol_error)
{
  Tkms__Response r;
  Tkms__CreateTenantResponse ct;
  tkms__response__init(&r);
  tkms__create_tenant_response__init(&ct);
  r.result_case = TKMS__RESPONSE__RESULT_CREATE_TENANT;
  r.create_tenant = &ct;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_CREATE_TENANT), KMS_OK);
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_HEALTH), KMS_ERR_PROTOCOL);
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_DECRYPT), KMS_ERR_PROTOCOL);
}
END_TEST

START_TEST(test_ok_response_without_result_is_protocol_error)
{
  Tkms__Response r;
  tkms__response__init(&r);
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_HEALTH), KMS_ERR_PROTOCOL);
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP__NOT_SET), KMS_ERR_PROTOCOL);
}
END_TEST

START_TEST(test_generate_response_plaintext_must_be_absent_or_32_bytes)
{
  Tkms__Response r;
  Tkms__GenerateDataKeyResponse g;
  uint8_t wrapped[KMS_WRAPPED_KEY_MAX + 1] = {0};
  uint8_t pt[33] = {0};
  tkms__response__init(&r);
  tkms__generate_data_key_response__init(&g);
  r.result_case = TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY;
  r.generate_data_key = &g;
  g.wrapped_key.data = wrapped;
  g.wrapped_key.len = 65;
  g.plaintext.data = pt;
  g.plaintext.len = 32;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY), KMS_OK);
  g.plaintext.len = 0; /* without_plaintext */
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY), KMS_OK);
  g.plaintext.len = 31;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY),
                   KMS_ERR_PROTOCOL);
  g.plaintext.len = 33;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY),
                   KMS_ERR_PROTOCOL);
}
END_TEST

START_TEST(test_generate_response_wrapped_key_must_be_present_and_bounded)
{
  Tkms__Response r;
  Tkms__GenerateDataKeyResponse g;
  uint8_t wrapped[KMS_WRAPPED_KEY_MAX + 1] = {0};
  tkms__response__init(&r);
  tkms__generate_data_key_response__init(&g);
  r.result_case = TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY;
  r.generate_data_key = &g;
  g.wrapped_key.data = wrapped;
  g.wrapped_key.len = KMS_WRAPPED_KEY_MAX;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY), KMS_OK);
  g.wrapped_key.len = KMS_WRAPPED_KEY_MAX + 1;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY),
                   KMS_ERR_PROTOCOL);
  g.wrapped_key.len = 0;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_GENERATE_DATA_KEY),
                   KMS_ERR_PROTOCOL);
}
END_TEST

START_TEST(test_decrypt_response_plaintext_must_be_32_bytes)
{
  Tkms__Response r;
  Tkms__DecryptResponse d;
  uint8_t pt[33] = {0};
  tkms__response__init(&r);
  tkms__decrypt_response__init(&d);
  r.result_case = TKMS__RESPONSE__RESULT_DECRYPT;
  r.decrypt = &d;
  d.plaintext.data = pt;
  d.plaintext.len = 32;
  ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_DECRYPT), KMS_OK);
  static const size_t bad[] = {0, 1, 31, 33};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    d.plaintext.len = bad[i];
    ck_assert_int_eq(kms_wire_response_check(&r, TKMS__REQUEST__OP_DECRYPT), KMS_ERR_PROTOCOL);
  }
}
END_TEST

static Suite *
wire_suite(void)
{
  Suite *s = suite_create("wire");
  TCase *tt = tcase_create("tenant_id");
  tcase_add_test(tt, test_tenant_id_accepts_allowed_characters);
  tcase_add_test(tt, test_tenant_id_accepts_64_and_refuses_65_characters);
  tcase_add_test(tt, test_tenant_id_refuses_empty_and_null);
  tcase_add_test(tt, test_tenant_id_refuses_first_character_not_alnum);
  tcase_add_test(tt, test_tenant_id_refuses_characters_outside_set);
  suite_add_tcase(s, tt);

  TCase *tc = tcase_create("context");
  tcase_add_test(tc, test_context_accepts_empty);
  tcase_add_test(tc, test_context_accepts_16_entries_and_refuses_17);
  tcase_add_test(tc, test_context_refuses_duplicate_key);
  tcase_add_test(tc, test_context_key_allows_64_and_refuses_65_characters);
  tcase_add_test(tc, test_context_key_charset);
  tcase_add_test(tc, test_context_refuses_null_key_or_entry);
  tcase_add_test(tc, test_context_value_allows_256_and_refuses_257_bytes);
  tcase_add_test(tc, test_context_value_refuses_control_characters);
  tcase_add_test(tc, test_context_value_allows_empty_spaces_and_utf8);
  tcase_add_test(tc, test_context_null_value_is_treated_as_empty);
  suite_add_tcase(s, tc);

  TCase *tr = tcase_create("request");
  tcase_add_test(tr, test_request_id_zero_is_refused);
  tcase_add_test(tr, test_request_without_op_is_unimplemented);
  tcase_add_test(tr, test_create_tenant_checks_tenant_id);
  tcase_add_test(tr, test_generate_checks_tenant_id_and_context);
  tcase_add_test(tr, test_decrypt_checks_tenant_context_and_wrapped_key);
  tcase_add_test(tr, test_unpacked_request_with_absent_tenant_is_refused);
  suite_add_tcase(s, tr);

  TCase *tp = tcase_create("response");
  tcase_add_test(tp, test_error_response_without_result_is_ok);
  tcase_add_test(tp, test_error_response_with_result_is_protocol_error);
  tcase_add_test(tp, test_ok_response_with_mismatched_result_is_protocol_error);
  tcase_add_test(tp, test_ok_response_without_result_is_protocol_error);
  tcase_add_test(tp, test_generate_response_plaintext_must_be_absent_or_32_bytes);
  tcase_add_test(tp, test_generate_response_wrapped_key_must_be_present_and_bounded);
  tcase_add_test(tp, test_decrypt_response_plaintext_must_be_32_bytes);
  suite_add_tcase(s, tp);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(wire_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
