/* Check suite for dekwrap: the wrapped-key blob format and the canonical AAD, pinned by a golden vector. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dekwrap.h"
#include "kms_err.h"
#include "kms_wire.h"

static void
sample_blob(struct dek_blob *b, uint32_t version)
{
  memset(b, 0, sizeof(*b));
  b->kek_version = version;
  for (size_t i = 0; i < sizeof(b->iv); i++) {
    b->iv[i] = (uint8_t)(0xA0 + i);
  }
  for (size_t i = 0; i < sizeof(b->ct_tag); i++) {
    b->ct_tag[i] = (uint8_t)(i * 3 + 1);
  }
}

static int
all_zero(const void *p, size_t n)
{
  const uint8_t *b = p;
  uint8_t acc = 0;
  for (size_t i = 0; i < n; i++) {
    acc |= b[i];
  }
  return acc == 0;
}

/* ---- blob ---- */

START_TEST(test_blob_is_65_bytes)
{
  ck_assert_uint_eq(DEKWRAP_BLOB_LEN, 65);
}
END_TEST

START_TEST(test_blob_encode_lays_out_fields_at_documented_offsets)
{
  struct dek_blob b;
  uint8_t out[DEKWRAP_BLOB_LEN];
  sample_blob(&b, 0x01020304u);
  dekwrap_blob_encode(out, &b);
  ck_assert_uint_eq(out[0], 0x01);
  ck_assert_uint_eq(out[1], 0x01);
  ck_assert_uint_eq(out[2], 0x02);
  ck_assert_uint_eq(out[3], 0x03);
  ck_assert_uint_eq(out[4], 0x04);
  ck_assert_mem_eq(out + 5, b.iv, 12);
  ck_assert_mem_eq(out + 17, b.ct_tag, 32);      /* ciphertext */
  ck_assert_mem_eq(out + 49, b.ct_tag + 32, 16); /* tag */
}
END_TEST

START_TEST(test_blob_encode_parse_round_trip)
{
  static const uint32_t versions[] = {1, 7, 0x01020304u, 0xFFFFFFFFu};
  struct dek_blob b, p;
  uint8_t out[DEKWRAP_BLOB_LEN];
  sample_blob(&b, versions[_i]);
  dekwrap_blob_encode(out, &b);
  ck_assert_int_eq(dekwrap_blob_parse(&p, out, sizeof(out)), KMS_OK);
  ck_assert_uint_eq(p.kek_version, versions[_i]);
  ck_assert_mem_eq(p.iv, b.iv, sizeof(b.iv));
  ck_assert_mem_eq(p.ct_tag, b.ct_tag, sizeof(b.ct_tag));
}
END_TEST

START_TEST(test_blob_parse_rejects_wrong_length)
{
  static const size_t lens[] = {0, 1, 64, 66, 130};
  struct dek_blob b, p;
  uint8_t buf[2 * DEKWRAP_BLOB_LEN];
  sample_blob(&b, 7);
  memset(buf, 0, sizeof(buf));
  dekwrap_blob_encode(buf, &b);
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    memset(&p, 0xEE, sizeof(p));
    ck_assert_int_eq(dekwrap_blob_parse(&p, buf, lens[i]), KMS_ERR_DECRYPT);
    ck_assert(all_zero(&p, sizeof(p))); /* nothing half-parsed left behind */
  }
}
END_TEST

START_TEST(test_blob_parse_rejects_wrong_format_byte)
{
  static const uint8_t formats[] = {0x00, 0x02, 0x81, 0xFF};
  struct dek_blob b, p;
  uint8_t buf[DEKWRAP_BLOB_LEN];
  sample_blob(&b, 7);
  for (size_t i = 0; i < sizeof(formats); i++) {
    dekwrap_blob_encode(buf, &b);
    buf[0] = formats[i];
    ck_assert_int_eq(dekwrap_blob_parse(&p, buf, sizeof(buf)), KMS_ERR_DECRYPT);
  }
}
END_TEST

START_TEST(test_blob_parse_rejects_version_zero)
{
  struct dek_blob b, p;
  uint8_t buf[DEKWRAP_BLOB_LEN];
  sample_blob(&b, 0);
  dekwrap_blob_encode(buf, &b);
  ck_assert_int_eq(dekwrap_blob_parse(&p, buf, sizeof(buf)), KMS_ERR_DECRYPT);
  ck_assert_uint_eq(p.kek_version, 0);
}
END_TEST

START_TEST(test_blob_parse_rejects_null_input)
{
  struct dek_blob p;
  ck_assert_int_eq(dekwrap_blob_parse(&p, NULL, DEKWRAP_BLOB_LEN), KMS_ERR_DECRYPT);
  ck_assert_int_eq(dekwrap_blob_parse(&p, NULL, 0), KMS_ERR_DECRYPT);
}
END_TEST

/* ---- AAD ---- */

#define CTX_CAP 20

struct ctx {
  Tkms__ContextEntry e[CTX_CAP];
  Tkms__ContextEntry *p[CTX_CAP];
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

static size_t
aad_of(uint8_t *out, const char *tenant, uint32_t version, const struct ctx *c)
{
  size_t len = 0;
  ck_assert_int_eq(dekwrap_aad(out, DEKWRAP_AAD_MAX, &len, tenant, version, c->n, c->p),
                   KMS_OK);
  ck_assert_uint_gt(len, 0);
  return len;
}

static int
aads_equal(const char *t1, uint32_t v1, const struct ctx *c1, const char *t2, uint32_t v2,
           const struct ctx *c2)
{
  uint8_t a[DEKWRAP_AAD_MAX], b[DEKWRAP_AAD_MAX];
  size_t la = aad_of(a, t1, v1, c1);
  size_t lb = aad_of(b, t2, v2, c2);
  return la == lb && memcmp(a, b, la) == 0;
}

/*
 * Hand-computed from the format in dekwrap.h. Stored blobs are authenticated
 * against these bytes: if this test fails, every existing wrapped key stops
 * decrypting. Do not "fix" the vector; fix the code.
 */
static const uint8_t golden_aad[] = {
  /* "tenantkms/dek/v1" */
  0x74, 0x65, 0x6e, 0x61, 0x6e, 0x74, 0x6b, 0x6d, 0x73, 0x2f, 0x64, 0x65, 0x6b, 0x2f, 0x76, 0x31,
  /* u8 len 4, "acme" */
  0x04, 0x61, 0x63, 0x6d, 0x65,
  /* u32 BE version 7 */
  0x00, 0x00, 0x00, 0x07,
  /* u8 n = 2 */
  0x02,
  /* "purpose" (7) = "report" (u16 6) -- sorts before "session_id" */
  0x07, 0x70, 0x75, 0x72, 0x70, 0x6f, 0x73, 0x65, 0x00, 0x06, 0x72, 0x65, 0x70, 0x6f, 0x72, 0x74,
  /* "session_id" (10) = "s-1" (u16 3) */
  0x0a, 0x73, 0x65, 0x73, 0x73, 0x69, 0x6f, 0x6e, 0x5f, 0x69, 0x64, 0x00, 0x03, 0x73, 0x2d, 0x31,
};

START_TEST(test_aad_matches_golden_vector)
{
  struct ctx c = {0};
  uint8_t out[DEKWRAP_AAD_MAX];
  size_t len = 0;
  /* Given out of order on purpose: the encoding sorts. */
  ctx_add(&c, "session_id", "s-1");
  ctx_add(&c, "purpose", "report");
  ck_assert_int_eq(dekwrap_aad(out, sizeof(out), &len, "acme", 7, c.n, c.p), KMS_OK);
  ck_assert_uint_eq(len, sizeof(golden_aad));
  ck_assert_mem_eq(out, golden_aad, sizeof(golden_aad));
}
END_TEST

START_TEST(test_aad_without_context_ends_with_zero_count)
{
  static const uint8_t want[] = {
    0x74, 0x65, 0x6e, 0x61, 0x6e, 0x74, 0x6b, 0x6d, 0x73, 0x2f, 0x64, 0x65, 0x6b, 0x2f, 0x76, 0x31,
    0x01, 0x78, 0x01, 0x02, 0x03, 0x04, 0x00,
  };
  struct ctx c = {0};
  uint8_t out[DEKWRAP_AAD_MAX];
  size_t len = aad_of(out, "x", 0x01020304u, &c);
  ck_assert_uint_eq(len, sizeof(want));
  ck_assert_mem_eq(out, want, sizeof(want));
}
END_TEST

START_TEST(test_aad_does_not_depend_on_context_order)
{
  struct ctx a = {0}, b = {0}, d = {0};
  ctx_add(&a, "a", "1");
  ctx_add(&a, "B", "2");
  ctx_add(&a, "c.d", "3");
  ctx_add(&a, "_", "4");
  ctx_add(&b, "_", "4");
  ctx_add(&b, "c.d", "3");
  ctx_add(&b, "a", "1");
  ctx_add(&b, "B", "2");
  ctx_add(&d, "c.d", "3");
  ctx_add(&d, "B", "2");
  ctx_add(&d, "_", "4");
  ctx_add(&d, "a", "1");
  ck_assert(aads_equal("t", 1, &a, "t", 1, &b));
  ck_assert(aads_equal("t", 1, &a, "t", 1, &d));
}
END_TEST

START_TEST(test_aad_differs_when_tenant_differs)
{
  struct ctx c = {0};
  ctx_add(&c, "k", "v");
  ck_assert(!aads_equal("acme", 1, &c, "acmf", 1, &c));
  ck_assert(!aads_equal("acme", 1, &c, "Acme", 1, &c));
}
END_TEST

START_TEST(test_aad_differs_when_version_differs)
{
  struct ctx c = {0};
  ctx_add(&c, "k", "v");
  ck_assert(!aads_equal("acme", 1, &c, "acme", 2, &c));
  ck_assert(!aads_equal("acme", 1, &c, "acme", 0x01000000u, &c));
}
END_TEST

START_TEST(test_aad_differs_when_any_key_or_value_differs)
{
  struct ctx base = {0}, k = {0}, v = {0}, more = {0}, none = {0}, empty = {0};
  ctx_add(&base, "purpose", "report");
  ctx_add(&base, "session_id", "s-1");
  ctx_add(&k, "purpose", "report");
  ctx_add(&k, "session_ie", "s-1");
  ctx_add(&v, "purpose", "report");
  ctx_add(&v, "session_id", "s-2");
  ctx_add(&more, "purpose", "report");
  ctx_add(&more, "session_id", "s-1");
  ctx_add(&more, "z", "");
  ctx_add(&empty, "purpose", "");
  ctx_add(&empty, "session_id", "s-1");
  ck_assert(!aads_equal("acme", 7, &base, "acme", 7, &k));
  ck_assert(!aads_equal("acme", 7, &base, "acme", 7, &v));
  ck_assert(!aads_equal("acme", 7, &base, "acme", 7, &more));
  ck_assert(!aads_equal("acme", 7, &base, "acme", 7, &none));
  ck_assert(!aads_equal("acme", 7, &base, "acme", 7, &empty));
}
END_TEST

START_TEST(test_aad_null_value_encodes_like_empty_value)
{
  struct ctx a = {0}, b = {0};
  ctx_add(&a, "k", NULL);
  ctx_add(&b, "k", "");
  ck_assert(aads_equal("t", 1, &a, "t", 1, &b));
}
END_TEST

START_TEST(test_aad_tenant_boundary_is_unambiguous)
{
  /*
   * Without the tenant's length byte, tenant "ab" with version 0 and tenant
   * "a" with version 0x62000000 would both start "a" "b" 00 00 00. The length
   * prefix must keep such pairs apart.
   */
  struct ctx c1 = {0}, c2 = {0};
  ctx_add(&c1, "k", "v");
  ctx_add(&c2, "k", "v");
  ck_assert(!aads_equal("ab", 0, &c1, "a", 0x62000000u, &c2));
  uint8_t a[DEKWRAP_AAD_MAX], b[DEKWRAP_AAD_MAX];
  size_t la = aad_of(a, "ab", 1, &c1);
  size_t lb = aad_of(b, "a", 1, &c1);
  ck_assert_uint_eq(a[16], 2);
  ck_assert_uint_eq(b[16], 1);
  /* Neither is a prefix of the other. */
  size_t m = la < lb ? la : lb;
  ck_assert_int_ne(memcmp(a, b, m), 0);
}
END_TEST

START_TEST(test_aad_key_value_boundary_is_unambiguous)
{
  /* key||value would be "abc" in all three: lengths must separate them. */
  struct ctx a = {0}, b = {0}, d = {0};
  ctx_add(&a, "ab", "c");
  ctx_add(&b, "a", "bc");
  ctx_add(&d, "abc", "");
  ck_assert(!aads_equal("t", 1, &a, "t", 1, &b));
  ck_assert(!aads_equal("t", 1, &a, "t", 1, &d));
  ck_assert(!aads_equal("t", 1, &b, "t", 1, &d));
}
END_TEST

START_TEST(test_aad_refuses_too_small_buffer)
{
  struct ctx c = {0};
  uint8_t out[sizeof(golden_aad)];
  size_t len = 123;
  ctx_add(&c, "purpose", "report");
  ctx_add(&c, "session_id", "s-1");
  ck_assert_int_eq(dekwrap_aad(out, sizeof(golden_aad) - 1, &len, "acme", 7, c.n, c.p),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(len, 0);
  ck_assert_int_eq(dekwrap_aad(out, 16, &len, "acme", 7, c.n, c.p), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(len, 0);
  /* Exactly enough is enough. */
  ck_assert_int_eq(dekwrap_aad(out, sizeof(golden_aad), &len, "acme", 7, c.n, c.p), KMS_OK);
  ck_assert_uint_eq(len, sizeof(golden_aad));
}
END_TEST

START_TEST(test_aad_largest_valid_input_fits_aad_max)
{
  /* 64-byte tenant, 16 entries of 64-byte keys and 256-byte values. */
  static char keys[KMS_CONTEXT_MAX_ENTRIES][KMS_CONTEXT_KEY_MAX + 1];
  static char value[KMS_CONTEXT_VALUE_MAX + 1];
  char tenant[KMS_TENANT_ID_MAX + 1];
  struct ctx c = {0};
  memset(tenant, 't', KMS_TENANT_ID_MAX);
  tenant[KMS_TENANT_ID_MAX] = '\0';
  memset(value, 'v', KMS_CONTEXT_VALUE_MAX);
  value[KMS_CONTEXT_VALUE_MAX] = '\0';
  for (size_t i = 0; i < KMS_CONTEXT_MAX_ENTRIES; i++) {
    memset(keys[i], 'k', KMS_CONTEXT_KEY_MAX);
    keys[i][0] = (char)('a' + i);
    keys[i][KMS_CONTEXT_KEY_MAX] = '\0';
    ctx_add(&c, keys[i], value);
  }
  uint8_t out[DEKWRAP_AAD_MAX];
  size_t len = 0;
  ck_assert_int_eq(dekwrap_aad(out, sizeof(out), &len, tenant, 1, c.n, c.p), KMS_OK);
  ck_assert_uint_eq(len, 16 + 1 + 64 + 4 + 1 + 16 * (1 + 64 + 2 + 256));
}
END_TEST

START_TEST(test_aad_refuses_inputs_over_wire_limits)
{
  char tenant[KMS_TENANT_ID_MAX + 2];
  char value[KMS_CONTEXT_VALUE_MAX + 2];
  char key[KMS_CONTEXT_KEY_MAX + 2];
  uint8_t out[DEKWRAP_AAD_MAX];
  size_t len = 0;
  struct ctx none = {0};
  memset(tenant, 't', sizeof(tenant) - 1);
  tenant[sizeof(tenant) - 1] = '\0';
  ck_assert_int_eq(dekwrap_aad(out, sizeof(out), &len, tenant, 1, 0, none.p),
                   KMS_ERR_INVALID_ARGUMENT);

  struct ctx big = {0};
  memset(value, 'v', sizeof(value) - 1);
  value[sizeof(value) - 1] = '\0';
  ctx_add(&big, "k", value);
  ck_assert_int_eq(dekwrap_aad(out, sizeof(out), &len, "t", 1, big.n, big.p),
                   KMS_ERR_INVALID_ARGUMENT);

  struct ctx longkey = {0};
  memset(key, 'k', sizeof(key) - 1);
  key[sizeof(key) - 1] = '\0';
  ctx_add(&longkey, key, "v");
  ck_assert_int_eq(dekwrap_aad(out, sizeof(out), &len, "t", 1, longkey.n, longkey.p),
                   KMS_ERR_INVALID_ARGUMENT);

  struct ctx many = {0};
  static const char *const k17[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i",
                                    "j", "k", "l", "m", "n", "o", "p", "q"};
  for (size_t i = 0; i < 17; i++) {
    ctx_add(&many, k17[i], "");
  }
  ck_assert_int_eq(dekwrap_aad(out, sizeof(out), &len, "t", 1, many.n, many.p),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(len, 0);
}
END_TEST

static Suite *
dekwrap_suite(void)
{
  Suite *s = suite_create("dekwrap");
  TCase *tb = tcase_create("blob");
  tcase_add_test(tb, test_blob_is_65_bytes);
  tcase_add_test(tb, test_blob_encode_lays_out_fields_at_documented_offsets);
  tcase_add_loop_test(tb, test_blob_encode_parse_round_trip, 0, 4);
  tcase_add_test(tb, test_blob_parse_rejects_wrong_length);
  tcase_add_test(tb, test_blob_parse_rejects_wrong_format_byte);
  tcase_add_test(tb, test_blob_parse_rejects_version_zero);
  tcase_add_test(tb, test_blob_parse_rejects_null_input);
  suite_add_tcase(s, tb);

  TCase *ta = tcase_create("aad");
  tcase_add_test(ta, test_aad_matches_golden_vector);
  tcase_add_test(ta, test_aad_without_context_ends_with_zero_count);
  tcase_add_test(ta, test_aad_does_not_depend_on_context_order);
  tcase_add_test(ta, test_aad_differs_when_tenant_differs);
  tcase_add_test(ta, test_aad_differs_when_version_differs);
  tcase_add_test(ta, test_aad_differs_when_any_key_or_value_differs);
  tcase_add_test(ta, test_aad_null_value_encodes_like_empty_value);
  tcase_add_test(ta, test_aad_tenant_boundary_is_unambiguous);
  tcase_add_test(ta, test_aad_key_value_boundary_is_unambiguous);
  tcase_add_test(ta, test_aad_refuses_too_small_buffer);
  tcase_add_test(ta, test_aad_largest_valid_input_fits_aad_max);
  tcase_add_test(ta, test_aad_refuses_inputs_over_wire_limits);
  suite_add_tcase(s, ta);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(dekwrap_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
