/* Unit tests of signed notes and checkpoints: spec vectors, Wycheproof ECDSA P-256, tampering. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kms_err.h"
#include "kms_note.h"

static uint8_t *
unhex(const char *hex, size_t *out_len)
{
  size_t n = strlen(hex);
  ck_assert_msg(n % 2 == 0, "odd hex length");
  uint8_t *b = malloc(n / 2 + 1);
  ck_assert_ptr_nonnull(b);
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
    b[i] = (uint8_t)v;
  }
  *out_len = n / 2;
  return b;
}

/* The example of c2sp.org/signed-note: a vkey and the note it verifies. */
static const char spec_vkey[] =
    "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
static const char spec_note[] = "This is an example message.\n"
                                "\n"
                                "\xe2\x80\x94 example.com/foo "
                                "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOB"
                                "H3mFXmRKuwHjG1Yu72IneyaQM=\n";

START_TEST(test_spec_example_note_verifies_with_spec_vkey)
{
  struct kms_note_vkey k;
  size_t text_len = 0;
  ck_assert_int_eq(kms_note_vkey_parse(&k, spec_vkey, strlen(spec_vkey)), KMS_OK);
  ck_assert_str_eq(k.name, "example.com/foo");
  ck_assert_uint_eq(k.id, 0x530d903a);
  ck_assert_uint_eq(k.type, KMS_NOTE_SIG_ED25519);
  ck_assert_int_eq(kms_note_verify(spec_note, strlen(spec_note), &k, &text_len), KMS_OK);
  ck_assert_uint_eq(text_len, strlen("This is an example message.\n"));
  char again[KMS_NOTE_VKEY_MAX];
  ck_assert_int_eq(kms_note_vkey_format(again, sizeof(again), &k), KMS_OK);
  ck_assert_str_eq(again, spec_vkey);
}
END_TEST

START_TEST(test_spec_example_fails_when_text_changes)
{
  struct kms_note_vkey k;
  size_t text_len = 0;
  char note[sizeof(spec_note)];
  memcpy(note, spec_note, sizeof(note));
  note[5] = 'I';
  ck_assert_int_eq(kms_note_vkey_parse(&k, spec_vkey, strlen(spec_vkey)), KMS_OK);
  ck_assert_int_eq(kms_note_verify(note, strlen(note), &k, &text_len), KMS_ERR_DECRYPT);
}
END_TEST

START_TEST(test_vkey_with_wrong_id_or_name_is_refused)
{
  struct kms_note_vkey k;
  const char *bad[] = {
      "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
      "example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
      "example.com/foo+530d903a+BekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
      "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
      "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
      "+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
      "example.com/foo+530d903a",
      "",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(kms_note_vkey_parse(&k, bad[i], strlen(bad[i])) != KMS_OK, "accepted %s", bad[i]);
  }
}
END_TEST

/* A fresh software key standing in for the HSM's, for sign/verify round trips. */
static EVP_PKEY *
gen_key(int ed25519)
{
  EVP_PKEY *pk = ed25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
                         : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  ck_assert_ptr_nonnull(pk);
  return pk;
}

static void
vkey_of(struct kms_note_vkey *k, EVP_PKEY *pk, int ed25519, const char *name)
{
  uint8_t pub[KMS_NOTE_PUB_MAX];
  size_t pub_len = sizeof(pub);
  if (ed25519) {
    ck_assert_int_eq(EVP_PKEY_get_raw_public_key(pk, pub, &pub_len), 1);
    ck_assert_int_eq(kms_note_vkey_make(k, name, KMS_NOTE_SIG_ED25519, pub, pub_len), KMS_OK);
  } else {
    uint8_t *p = pub;
    int n = i2d_PUBKEY(pk, &p);
    ck_assert_int_gt(n, 0);
    ck_assert_int_eq(kms_note_vkey_make(k, name, KMS_NOTE_SIG_ECDSA, pub, (size_t)n), KMS_OK);
  }
}

static void
sign_note(char *out, size_t cap, size_t *out_len, EVP_PKEY *pk, int ed25519,
          const struct kms_note_vkey *k, const char *text)
{
  uint8_t sig[KMS_NOTE_SIG_MAX];
  size_t sig_len = sizeof(sig);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  ck_assert_int_eq(EVP_DigestSignInit(ctx, NULL, ed25519 ? NULL : EVP_sha256(), NULL, pk), 1);
  ck_assert_int_eq(EVP_DigestSign(ctx, sig, &sig_len, (const uint8_t *)text, strlen(text)), 1);
  EVP_MD_CTX_free(ctx);
  ck_assert_int_eq(kms_note_format(out, cap, out_len, text, strlen(text), k, sig, sig_len), KMS_OK);
}

static void
round_trip(int ed25519)
{
  EVP_PKEY *pk = gen_key(ed25519), *other = gen_key(ed25519);
  struct kms_note_vkey k, ko, kparsed;
  char vk[KMS_NOTE_VKEY_MAX], note[1024], text[256];
  size_t note_len = 0, text_len = 0;
  struct kms_checkpoint cp, back;

  vkey_of(&k, pk, ed25519, "tenantkms/node-1/audit");
  vkey_of(&ko, other, ed25519, "tenantkms/node-1/audit");
  ck_assert_int_eq(kms_note_vkey_format(vk, sizeof(vk), &k), KMS_OK);
  ck_assert_int_eq(kms_note_vkey_parse(&kparsed, vk, strlen(vk)), KMS_OK);
  ck_assert_uint_eq(kparsed.id, k.id);

  memset(&cp, 0, sizeof(cp));
  strcpy(cp.origin, "tenantkms/node-1/audit");
  cp.size = 12345;
  memset(cp.root, 0xab, sizeof(cp.root));
  ck_assert_int_eq(kms_checkpoint_format(text, sizeof(text), &text_len, &cp), KMS_OK);
  sign_note(note, sizeof(note), &note_len, pk, ed25519, &k, text);

  ck_assert_int_eq(kms_note_verify(note, note_len, &kparsed, &text_len), KMS_OK);
  ck_assert_int_eq(kms_checkpoint_parse(&back, note, text_len), KMS_OK);
  ck_assert_str_eq(back.origin, cp.origin);
  ck_assert_uint_eq(back.size, 12345);
  ck_assert_mem_eq(back.root, cp.root, 32);

  /* Another key with the same name: its ID differs, so this note has no signature by it. */
  ck_assert_int_eq(kms_note_verify(note, note_len, &ko, &text_len), KMS_ERR_DECRYPT);
  /* A changed size: the signature no longer covers the text. */
  char *digit = strstr(note, "12345");
  *digit = '9';
  ck_assert_int_eq(kms_note_verify(note, note_len, &k, &text_len), KMS_ERR_DECRYPT);
  *digit = '1';
  /* A forged signature under our name and ID: the whole note is refused. */
  char forged[1024];
  size_t forged_len = 0;
  struct kms_note_vkey lie = ko;
  lie.id = k.id;
  sign_note(forged, sizeof(forged), &forged_len, other, ed25519, &lie, text);
  ck_assert_int_eq(kms_note_verify(forged, forged_len, &k, &text_len), KMS_ERR_DECRYPT);
  EVP_PKEY_free(pk);
  EVP_PKEY_free(other);
}

START_TEST(test_ed25519_checkpoint_round_trip_and_forgeries)
{
  round_trip(1);
}
END_TEST

START_TEST(test_ecdsa_p256_checkpoint_round_trip_and_forgeries)
{
  round_trip(0);
}
END_TEST

START_TEST(test_unknown_signatures_are_ignored_but_one_known_is_needed)
{
  struct kms_note_vkey k;
  ck_assert_int_eq(kms_note_vkey_parse(&k, spec_vkey, strlen(spec_vkey)), KMS_OK);
  char note[1024];
  size_t text_len;
  /* A witness cosignature after ours, and one before: both ignored. */
  snprintf(note, sizeof(note),
           "This is an example message.\n\n\xe2\x80\x94 witness.example/w AAAAAAAAAA==\n%s"
           "\xe2\x80\x94 witness.example/w AAAAAAAAAA==\n",
           spec_note + strlen("This is an example message.\n\n"));
  ck_assert_int_eq(kms_note_verify(note, strlen(note), &k, &text_len), KMS_OK);
  /* Only someone else's signature: refused. */
  snprintf(note, sizeof(note),
           "This is an example message.\n\n\xe2\x80\x94 witness.example/w AAAAAAAAAA==\n");
  ck_assert_int_eq(kms_note_verify(note, strlen(note), &k, &text_len), KMS_ERR_DECRYPT);
}
END_TEST

START_TEST(test_malformed_notes_are_refused)
{
  struct kms_note_vkey k;
  size_t text_len;
  ck_assert_int_eq(kms_note_vkey_parse(&k, spec_vkey, strlen(spec_vkey)), KMS_OK);
  const char *bad[] = {
      "",
      "no signatures\n",
      "text\n\n",
      "text\n\nnot a signature line\n",
      "text\n\n\xe2\x80\x94 example.com/foo Uw2QOkn8\n", /* too short to hold a key ID+sig */
      "te\x01xt\n\n\xe2\x80\x94 example.com/foo AAAAAAAA\n",
      "text\n\n\xe2\x80\x94 example.com/foo AAAA", /* no final newline */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(kms_note_verify(bad[i], strlen(bad[i]), &k, &text_len) != KMS_OK, "case %zu", i);
  }
}
END_TEST

START_TEST(test_checkpoint_parse_rules)
{
  struct kms_checkpoint cp;
  const char *root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
  char t[256];
  snprintf(t, sizeof(t), "example.com/behind-the-sofa\n20852163\n%s\n", root);
  ck_assert_int_eq(kms_checkpoint_parse(&cp, t, strlen(t)), KMS_OK);
  ck_assert_uint_eq(cp.size, 20852163);
  snprintf(t, sizeof(t), "o\n0\n%s\next\n", root);
  ck_assert_int_eq(kms_checkpoint_parse(&cp, t, strlen(t)), KMS_OK);
  ck_assert_uint_eq(cp.size, 0);
  const char *bad[] = {"o\n01\nROOT\n",
                       "o\n-1\nROOT\n",
                       "o\n1\nAAAA\n",
                       "\n1\nROOT\n",
                       "o\n1\nROOT",
                       "o\n1\nROOT\n\n",
                       "o\n18446744073709551616\nROOT\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char b[256];
    const char *at = strstr(bad[i], "ROOT");
    if (at != NULL) {
      snprintf(b, sizeof(b), "%.*s%s%s", (int)(at - bad[i]), bad[i], root, at + 4);
    } else {
      snprintf(b, sizeof(b), "%s", bad[i]);
    }
    ck_assert_msg(kms_checkpoint_parse(&cp, b, strlen(b)) != KMS_OK, "accepted case %zu", i);
  }
}
END_TEST

START_TEST(test_note_stream_finds_notes_and_a_torn_tail)
{
  char buf[2048];
  size_t n1 = strlen(spec_note);
  snprintf(buf, sizeof(buf), "%s\n%s\n", spec_note, spec_note);
  size_t len = strlen(buf), start, note_len, used, off = 0;
  ck_assert_int_eq(kms_note_next(buf, len, &start, &note_len, &used), KMS_OK);
  ck_assert_uint_eq(start, 0);
  ck_assert_uint_eq(note_len, n1);
  off += used;
  ck_assert_int_eq(kms_note_next(buf + off, len - off, &start, &note_len, &used), KMS_OK);
  ck_assert_uint_eq(note_len, n1);
  off += used;
  ck_assert_int_eq(kms_note_next(buf + off, len - off, &start, &note_len, &used),
                   KMS_ERR_NOT_FOUND);
  /* Every proper prefix of a note is a torn write. */
  for (size_t cut = 1; cut < n1; cut++) {
    ck_assert_msg(kms_note_next(spec_note, cut, &start, &note_len, &used) == KMS_ERR_TRUNCATED,
                  "cut at %zu", cut);
  }
}
END_TEST

START_TEST(test_base64_is_strict)
{
  uint8_t out[16];
  size_t n;
  ck_assert_int_eq(kms_b64_decode(out, sizeof(out), &n, "Zm9vYg==", 8), KMS_OK);
  ck_assert_uint_eq(n, 4);
  ck_assert_int_ne(kms_b64_decode(out, sizeof(out), &n, "Zm9vYh==", 8), KMS_OK);
  ck_assert_int_ne(kms_b64_decode(out, sizeof(out), &n, "Zm9vY===", 8), KMS_OK);
  ck_assert_int_ne(kms_b64_decode(out, sizeof(out), &n, "Zm9v\nYg==", 9), KMS_OK);
  ck_assert_int_ne(kms_b64_decode(out, sizeof(out), &n, "Zm=vYg==", 8), KMS_OK);
  ck_assert_int_ne(kms_b64_decode(out, 3, &n, "Zm9vYg==", 8), KMS_OK);
}
END_TEST

/* Wycheproof ECDSA P-256/SHA-256: our verify function is what checks checkpoint signatures. */
START_TEST(test_wycheproof_ecdsa_p256_sha256)
{
  const char *srcdir = getenv("SRCDIR");
  char path[4096];
  json_error_t jerr;
  snprintf(path, sizeof(path),
           "%s/../shared/testvectors/wycheproof/ecdsa_secp256r1_sha256_test.json",
           srcdir != NULL ? srcdir : ".");
  json_t *root = json_load_file(path, 0, &jerr);
  ck_assert_msg(root != NULL, "cannot load %s: %s", path, jerr.text);
  size_t gi, ti, valid = 0, invalid = 0, acceptable = 0;
  json_t *g, *t;
  json_array_foreach(json_object_get(root, "testGroups"), gi, g)
  {
    size_t der_len;
    uint8_t *der = unhex(json_string_value(json_object_get(g, "publicKeyDer")), &der_len);
    struct kms_note_vkey k;
    ck_assert_int_eq(kms_note_vkey_make(&k, "wycheproof", KMS_NOTE_SIG_ECDSA, der, der_len),
                     KMS_OK);
    json_array_foreach(json_object_get(g, "tests"), ti, t)
    {
      size_t msg_len, sig_len;
      uint8_t *msg = unhex(json_string_value(json_object_get(t, "msg")), &msg_len);
      uint8_t *sig = unhex(json_string_value(json_object_get(t, "sig")), &sig_len);
      const char *result = json_string_value(json_object_get(t, "result"));
      int r = kms_note_sig_verify(&k, msg, msg_len, sig, sig_len);
      int id = (int)json_integer_value(json_object_get(t, "tcId"));
      if (strcmp(result, "valid") == 0) {
        ck_assert_msg(r == KMS_OK, "tcId %d: valid signature refused", id);
        valid++;
      } else if (strcmp(result, "invalid") == 0) {
        ck_assert_msg(r == KMS_ERR_DECRYPT, "tcId %d: invalid signature accepted", id);
        invalid++;
      } else {
        acceptable++;
      }
      free(msg);
      free(sig);
    }
    free(der);
  }
  fprintf(stderr, "# wycheproof ecdsa p256: %zu valid, %zu invalid, %zu acceptable\n", valid,
          invalid, acceptable);
  ck_assert_uint_gt(valid, 50);
  ck_assert_uint_gt(invalid, 200);
  json_decref(root);
}
END_TEST

START_TEST(test_ecdsa_vkey_refuses_other_curves)
{
  EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  uint8_t der[256], *p = der;
  int n = i2d_PUBKEY(pk, &p);
  struct kms_note_vkey k;
  ck_assert_int_gt(n, 0);
  ck_assert_int_eq(kms_note_vkey_make(&k, "x", KMS_NOTE_SIG_ECDSA, der, (size_t)n),
                   KMS_ERR_INVALID_ARGUMENT);
  EVP_PKEY_free(pk);
}
END_TEST

static Suite *
note_suite(void)
{
  Suite *s = suite_create("note");
  TCase *tc = tcase_create("note");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_spec_example_note_verifies_with_spec_vkey);
  tcase_add_test(tc, test_spec_example_fails_when_text_changes);
  tcase_add_test(tc, test_vkey_with_wrong_id_or_name_is_refused);
  tcase_add_test(tc, test_ed25519_checkpoint_round_trip_and_forgeries);
  tcase_add_test(tc, test_ecdsa_p256_checkpoint_round_trip_and_forgeries);
  tcase_add_test(tc, test_unknown_signatures_are_ignored_but_one_known_is_needed);
  tcase_add_test(tc, test_malformed_notes_are_refused);
  tcase_add_test(tc, test_checkpoint_parse_rules);
  tcase_add_test(tc, test_note_stream_finds_notes_and_a_torn_tail);
  tcase_add_test(tc, test_base64_is_strict);
  tcase_add_test(tc, test_wycheproof_ecdsa_p256_sha256);
  tcase_add_test(tc, test_ecdsa_vkey_refuses_other_curves);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(note_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
