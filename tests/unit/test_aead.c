/* Tests for the AES-256-GCM layer (aead.c): every Wycheproof aes_gcm_test.json vector, plus misuse. */
#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aead.h"
#include "kms_err.h"

/* ---- helpers ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

/* unhex decodes |hex| into a new buffer (at least 1 byte allocated). */
static uint8_t *unhex(const char *hex, size_t *out_len) {
  size_t n = strlen(hex);
  uint8_t *b;

  ck_assert_msg(n % 2 == 0, "odd hex length");
  b = malloc(n / 2 + 1);
  ck_assert_ptr_nonnull(b);
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    ck_assert_msg(hi >= 0 && lo >= 0, "bad hex");
    b[i] = (uint8_t)(hi << 4 | lo);
  }
  *out_len = n / 2;
  return b;
}

static const char *jstr(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  ck_assert_msg(s != NULL, "missing string %s", k);
  return s;
}

static json_t *load_vectors(const char *name) {
  const char *srcdir = getenv("SRCDIR");
  char path[4096];
  json_error_t jerr;
  json_t *root;

  snprintf(path, sizeof(path), "%s/../shared/testvectors/wycheproof/%s",
           srcdir != NULL ? srcdir : ".", name);
  root = json_load_file(path, 0, &jerr);
  ck_assert_msg(root != NULL, "cannot load %s: %s", path, jerr.text);
  return root;
}

static int all_zero(const uint8_t *b, size_t n) {
  uint8_t acc = 0;
  for (size_t i = 0; i < n; i++) {
    acc |= b[i];
  }
  return acc == 0;
}

/* ---- Wycheproof ---- */

START_TEST(test_wycheproof_aes_gcm) {
  json_t *root = load_vectors("aes_gcm_test.json");
  json_t *groups = json_object_get(root, "testGroups");
  size_t gi, ti;
  json_t *g, *t;
  long total = 0, valid_ok = 0, invalid_rejected = 0, size_rejected = 0;
  long mismatches = 0;
  long expected = json_integer_value(json_object_get(root, "numberOfTests"));

  ck_assert_ptr_nonnull(groups);
  json_array_foreach(groups, gi, g) {
    long key_bits = json_integer_value(json_object_get(g, "keySize"));
    long iv_bits = json_integer_value(json_object_get(g, "ivSize"));
    long tag_bits = json_integer_value(json_object_get(g, "tagSize"));
    int ours = key_bits == 256 && iv_bits == 96 && tag_bits == 128;
    tk_aead *ctx = NULL;

    json_array_foreach(json_object_get(g, "tests"), ti, t) {
      size_t key_len, iv_len, aad_len, msg_len, ct_len, tag_len;
      uint8_t *key = unhex(jstr(t, "key"), &key_len);
      uint8_t *iv = unhex(jstr(t, "iv"), &iv_len);
      uint8_t *aad = unhex(jstr(t, "aad"), &aad_len);
      uint8_t *msg = unhex(jstr(t, "msg"), &msg_len);
      uint8_t *ct = unhex(jstr(t, "ct"), &ct_len);
      uint8_t *tag = unhex(jstr(t, "tag"), &tag_len);
      const char *result = jstr(t, "result");
      long tc = json_integer_value(json_object_get(t, "tcId"));
      int valid = strcmp(result, "valid") == 0;
      size_t buf_len = msg_len > ct_len ? msg_len : ct_len;
      uint8_t *out = calloc(1, buf_len + 1);
      uint8_t out_tag[TK_AEAD_TAG_LEN + 64];
      int r;

      ck_assert_ptr_nonnull(out);
      total++;
      ck_assert_int_eq(key_len * 8, key_bits);
      ck_assert_int_eq(iv_len * 8, iv_bits);
      if (!ours) {
        /* Every other parameter set must be refused at our API. */
        int refused = 1;
        if (key_len != TK_AEAD_KEY_LEN) {
          tk_aead *a = NULL;
          refused &= tk_aead_new(&a, key, key_len) == KMS_ERR_INVALID_ARGUMENT;
          refused &= a == NULL;
        } else {
          refused &= tk_aead_seal(key, iv, iv_len, aad, aad_len, msg, msg_len,
                                  out, out_tag, tag_len) ==
                     KMS_ERR_INVALID_ARGUMENT;
          refused &= tk_aead_open(key, iv, iv_len, aad, aad_len, ct, ct_len,
                                  tag, tag_len, out) ==
                     KMS_ERR_INVALID_ARGUMENT;
        }
        if (refused) {
          size_rejected++;
        } else {
          mismatches++;
          fprintf(stderr, "tcId %ld: size not rejected\n", tc);
        }
      } else if (valid) {
        int ok = 1;
        /* One-shot seal gives exactly ct || tag. */
        r = tk_aead_seal(key, iv, iv_len, aad, aad_len, msg, msg_len, out,
                         out_tag, TK_AEAD_TAG_LEN);
        ok &= r == KMS_OK && ct_len == msg_len &&
              memcmp(out, ct, ct_len) == 0 &&
              memcmp(out_tag, tag, TK_AEAD_TAG_LEN) == 0;
        /* One-shot open gives msg. */
        memset(out, 0xAA, buf_len);
        r = tk_aead_open(key, iv, iv_len, aad, aad_len, ct, ct_len, tag,
                         tag_len, out);
        ok &= r == KMS_OK && memcmp(out, msg, msg_len) == 0;
        /* The reusable context (fresh per vector: keys differ) both ways,
         * twice, to exercise IV-only re-initialisation. */
        ck_assert_int_eq(tk_aead_new(&ctx, key, key_len), KMS_OK);
        for (int rep = 0; rep < 2; rep++) {
          r = tk_aead_ctx_seal(ctx, iv, iv_len, aad, aad_len, msg, msg_len,
                               out, out_tag, TK_AEAD_TAG_LEN);
          ok &= r == KMS_OK && memcmp(out, ct, ct_len) == 0 &&
                memcmp(out_tag, tag, TK_AEAD_TAG_LEN) == 0;
          r = tk_aead_ctx_open(ctx, iv, iv_len, aad, aad_len, ct, ct_len, tag,
                               tag_len, out);
          ok &= r == KMS_OK && memcmp(out, msg, msg_len) == 0;
        }
        tk_aead_free(ctx);
        ctx = NULL;
        if (ok) {
          valid_ok++;
        } else {
          mismatches++;
          fprintf(stderr, "tcId %ld: valid vector mismatch\n", tc);
        }
      } else {
        /* Invalid: must not open; output wiped; same via a context. */
        int ok = 1;
        memset(out, 0xAA, buf_len);
        r = tk_aead_open(key, iv, iv_len, aad, aad_len, ct, ct_len, tag,
                         tag_len, out);
        ok &= r == KMS_ERR_DECRYPT && all_zero(out, ct_len);
        ck_assert_int_eq(tk_aead_new(&ctx, key, key_len), KMS_OK);
        memset(out, 0xAA, buf_len);
        r = tk_aead_ctx_open(ctx, iv, iv_len, aad, aad_len, ct, ct_len, tag,
                             tag_len, out);
        ok &= r == KMS_ERR_DECRYPT && all_zero(out, ct_len);
        tk_aead_free(ctx);
        ctx = NULL;
        if (ok) {
          invalid_rejected++;
        } else {
          mismatches++;
          fprintf(stderr, "tcId %ld: invalid vector accepted\n", tc);
        }
      }
      free(key);
      free(iv);
      free(aad);
      free(msg);
      free(ct);
      free(tag);
      free(out);
    }
  }
  fprintf(stderr,
          "aes_gcm_test.json: %ld vectors: %ld valid passed, %ld invalid "
          "rejected, %ld rejected for size, %ld mismatches\n",
          total, valid_ok, invalid_rejected, size_rejected, mismatches);
  ck_assert_int_eq(total, expected);
  ck_assert_int_gt(valid_ok, 0);
  ck_assert_int_gt(invalid_rejected, 0);
  ck_assert_int_gt(size_rejected, 0);
  ck_assert_int_eq(mismatches, 0);
  ck_assert_int_eq(valid_ok + invalid_rejected + size_rejected, total);
  json_decref(root);
}
END_TEST

/* ---- unit tests ---- */

static const uint8_t k_key[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                  12, 13, 14, 15, 16, 17, 18, 19, 20};
static const uint8_t k_iv[12] = {0xca, 0xfe, 0xba, 0xbe};

START_TEST(test_wrong_tag_fails_and_wipes) {
  uint8_t pt[100], ct[100], tag[16], out[100];
  for (size_t i = 0; i < sizeof(pt); i++) {
    pt[i] = (uint8_t)(i + 1);
  }
  ck_assert_int_eq(tk_aead_seal(k_key, k_iv, 12, (const uint8_t *)"ad", 2, pt,
                                sizeof(pt), ct, tag, 16),
                   KMS_OK);
  for (int bit = 0; bit < 128; bit += 13) {
    tag[bit / 8] ^= (uint8_t)(1 << (bit % 8));
    memset(out, 0xAA, sizeof(out));
    ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, (const uint8_t *)"ad", 2,
                                  ct, sizeof(ct), tag, 16, out),
                     KMS_ERR_DECRYPT);
    ck_assert(all_zero(out, sizeof(out)));
    tag[bit / 8] ^= (uint8_t)(1 << (bit % 8));
  }
  /* Wrong AAD, flipped ciphertext: the same opaque error. */
  memset(out, 0xAA, sizeof(out));
  ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, (const uint8_t *)"aD", 2, ct,
                                sizeof(ct), tag, 16, out),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(out, sizeof(out)));
  ct[50] ^= 1;
  ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, (const uint8_t *)"ad", 2, ct,
                                sizeof(ct), tag, 16, out),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(out, sizeof(out)));
  ct[50] ^= 1;
  ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, (const uint8_t *)"ad", 2, ct,
                                sizeof(ct), tag, 16, out),
                   KMS_OK);
  ck_assert_mem_eq(out, pt, sizeof(pt));
}
END_TEST

START_TEST(test_sizes_rejected) {
  uint8_t pt[16] = {0}, ct[16], tag[32], out[16];
  tk_aead *a = NULL;
  size_t bad_iv[] = {0, 1, 8, 11, 13, 16, 128};
  size_t bad_tag[] = {0, 4, 8, 12, 15, 17, 32};

  for (size_t i = 0; i < sizeof(bad_iv) / sizeof(bad_iv[0]); i++) {
    uint8_t iv[128] = {0};
    ck_assert_int_eq(tk_aead_seal(k_key, iv, bad_iv[i], NULL, 0, pt, 16, ct,
                                  tag, 16),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(tk_aead_open(k_key, iv, bad_iv[i], NULL, 0, ct, 16, tag,
                                  16, out),
                     KMS_ERR_INVALID_ARGUMENT);
  }
  for (size_t i = 0; i < sizeof(bad_tag) / sizeof(bad_tag[0]); i++) {
    ck_assert_int_eq(tk_aead_seal(k_key, k_iv, 12, NULL, 0, pt, 16, ct, tag,
                                  bad_tag[i]),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, NULL, 0, ct, 16, tag,
                                  bad_tag[i], out),
                     KMS_ERR_INVALID_ARGUMENT);
  }
  ck_assert_int_eq(tk_aead_new(&a, k_key, 16), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_aead_new(&a, k_key, 24), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_aead_new(&a, k_key, 33), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(a);
  ck_assert_int_eq(tk_aead_new(&a, NULL, 32), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_aead_ctx_seal(NULL, k_iv, 12, NULL, 0, pt, 16, ct, tag,
                                    16),
                   KMS_ERR_INVALID_ARGUMENT);
  tk_aead_free(NULL);
}
END_TEST

START_TEST(test_context_reuse_and_in_place) {
  tk_aead *a = NULL;
  uint8_t buf[3000], ref[3000], tag[16], reftag[16], iv[12];

  ck_assert_int_eq(tk_aead_new(&a, k_key, 32), KMS_OK);
  for (int m = 0; m < 50; m++) {
    size_t n = (size_t)(m * 61) % sizeof(buf);
    memcpy(iv, k_iv, 12);
    iv[11] = (uint8_t)m;
    for (size_t i = 0; i < n; i++) {
      buf[i] = (uint8_t)(i * 7 + m);
    }
    memcpy(ref, buf, n);
    /* In place under the context; cross-check with the one-shot. */
    ck_assert_int_eq(tk_aead_ctx_seal(a, iv, 12, NULL, 0, buf, n, buf, tag,
                                      16),
                     KMS_OK);
    {
      uint8_t ct2[3000];
      ck_assert_int_eq(tk_aead_seal(k_key, iv, 12, NULL, 0, ref, n, ct2,
                                    reftag, 16),
                       KMS_OK);
      ck_assert_mem_eq(ct2, buf, n);
      ck_assert_mem_eq(reftag, tag, 16);
    }
    ck_assert_int_eq(tk_aead_ctx_open(a, iv, 12, NULL, 0, buf, n, tag, 16,
                                      buf),
                     KMS_OK);
    ck_assert_mem_eq(buf, ref, n);
  }
  tk_aead_free(a);
}
END_TEST

START_TEST(test_empty_message) {
  uint8_t tag[16];
  ck_assert_int_eq(tk_aead_seal(k_key, k_iv, 12, NULL, 0, NULL, 0, NULL, tag,
                                16),
                   KMS_OK);
  ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, NULL, 0, NULL, 0, tag, 16,
                                NULL),
                   KMS_OK);
  tag[0] ^= 0x80;
  ck_assert_int_eq(tk_aead_open(k_key, k_iv, 12, NULL, 0, NULL, 0, tag, 16,
                                NULL),
                   KMS_ERR_DECRYPT);
}
END_TEST

static Suite *aead_suite(void) {
  Suite *s = suite_create("aead");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_wycheproof_aes_gcm);
  tcase_add_test(tc, test_wrong_tag_fails_and_wipes);
  tcase_add_test(tc, test_sizes_rejected);
  tcase_add_test(tc, test_context_reuse_and_in_place);
  tcase_add_test(tc, test_empty_message);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(aead_suite());
  int failed;
  srunner_run_all(sr, CK_ENV);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
