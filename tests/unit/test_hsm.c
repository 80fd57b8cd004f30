/* Unit tests of the HSM layer against a throwaway SoftHSM2 token made for each run. */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "hsm.h"
#include "../integration/p11_probe.h"
#include "kms_err.h"

#define TOKEN_LABEL "tenantkms-unit"
#define USER_PIN "unit-pin-4711"
#define SO_PIN "unit-so-pin-0815"
/* PKCS#11 mechanism numbers, spelled out: only hsm.c includes pkcs11.h. */
#define MECH_AES_KEY_WRAP 0x2109u
#define MECH_AES_KEY_WRAP_PAD 0x210Au
#define MECH_AES_KEY_WRAP_KWP 0x210Bu

static char g_dir[256];
static char g_pin_file[512];
static const char *g_module;

/* Opened by the checked fixture, i.e. in the forked child: PKCS#11 sessions do not survive fork. */
static hsm *g_h;
static hsm_session *g_s1;
static hsm_session *g_s2;

static int run(char *const argv[]) {
  pid_t pid = fork();
  int status = 0;

  if (pid < 0) {
    return -1;
  }
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      dup2(devnull, STDOUT_FILENO);
      dup2(devnull, STDERR_FILENO);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  if (waitpid(pid, &status, 0) != pid) {
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void write_file(const char *path, const char *text, mode_t mode) {
  FILE *f;

  unlink(path);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_ge(fputs(text, f), 0);
  ck_assert_int_eq(fclose(f), 0);
  /* chmod after writing: fopen's mode is filtered by the umask. */
  ck_assert_int_eq(chmod(path, mode), 0);
}

static void path_in_dir(char *out, size_t out_len, const char *name) {
  int n = snprintf(out, out_len, "%s/%s", g_dir, name);
  ck_assert(n > 0 && (size_t)n < out_len);
}

/* import_aes_key puts a raw AES key with CKA_ID |id| on the token behind kmsd's back. */
static void import_aes_key(const char *id) {
  char key_path[512];
  char id_hex[128];
  uint8_t key[32];
  FILE *f;
  size_t i;

  path_in_dir(key_path, sizeof(key_path), "raw.key");
  for (i = 0; i < sizeof(key); i++) {
    key[i] = (uint8_t)(i * 7 + 1);
  }
  f = fopen(key_path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(key, 1, sizeof(key), f), sizeof(key));
  ck_assert_int_eq(fclose(f), 0);
  for (i = 0; id[i] != '\0' && i * 2 + 2 < sizeof(id_hex); i++) {
    snprintf(id_hex + i * 2, 3, "%02x", (unsigned char)id[i]);
  }
  char *argv[] = {"softhsm2-util", "--import", key_path, "--aes", "--token", TOKEN_LABEL,
                  "--pin", USER_PIN, "--label", "intruder", "--id", id_hex, NULL};
  ck_assert_int_eq(run(argv), 0);
}

static bool put_file(const char *path, const char *text, mode_t mode) {
  FILE *f = fopen(path, "w");
  bool ok;

  if (f == NULL) {
    return false;
  }
  ok = fputs(text, f) >= 0;
  ok = fclose(f) == 0 && ok;
  return ok && chmod(path, mode) == 0;
}

/*
 * suite_setup runs once in the parent, before Check forks per test: it makes
 * the token with softhsm2-util but never loads the module itself.
 */
static bool suite_setup(void) {
  char path[512];
  char conf[1024];
  const char *tmp = getenv("TMPDIR");

  g_module = getenv("PKCS11_MODULE");
  if (g_module == NULL || g_module[0] == '\0') {
    g_module = "/usr/lib/softhsm/libsofthsm2.so";
  }
  snprintf(g_dir, sizeof(g_dir), "%s/test_hsm.XXXXXX", tmp != NULL ? tmp : "/tmp");
  if (mkdtemp(g_dir) == NULL) {
    g_dir[0] = '\0';
    return false;
  }
  snprintf(path, sizeof(path), "%s/tokens", g_dir);
  if (mkdir(path, 0700) != 0) {
    return false;
  }
  snprintf(conf, sizeof(conf),
           "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", path);
  snprintf(path, sizeof(path), "%s/softhsm2.conf", g_dir);
  if (!put_file(path, conf, 0600)) {
    return false;
  }
  /* Before any C_Initialize, ours or softhsm2-util's. */
  if (setenv("SOFTHSM2_CONF", path, 1) != 0) {
    return false;
  }
  char *argv[] = {"softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL,
                  "--pin", USER_PIN, "--so-pin", SO_PIN, NULL};
  if (run(argv) != 0) {
    return false;
  }
  snprintf(g_pin_file, sizeof(g_pin_file), "%s/user.pin", g_dir);
  return put_file(g_pin_file, USER_PIN "\n", 0600);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void suite_teardown(void) {
  if (g_dir[0] != '\0') {
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
}

static struct hsm_config config(uint32_t root_version) {
  struct hsm_config cfg = {
      .module_path = g_module,
      .token_label = TOKEN_LABEL,
      .pin_file = g_pin_file,
      .root_version = root_version,
  };
  return cfg;
}

static hsm *open_ok(uint32_t root_version) {
  struct hsm_config cfg = config(root_version);
  char err[256] = "";
  hsm *h = NULL;
  int r = hsm_open(&h, &cfg, err, sizeof(err));

  ck_assert_msg(r == KMS_OK, "hsm_open: %d %s", r, err);
  ck_assert_ptr_nonnull(h);
  return h;
}

static void fixture_open(void) {
  g_h = open_ok(0);
  ck_assert_int_eq(hsm_session_open(g_h, &g_s1), KMS_OK);
  ck_assert_int_eq(hsm_session_open(g_h, &g_s2), KMS_OK);
}

static void fixture_close(void) {
  hsm_session_close(g_s1);
  hsm_session_close(g_s2);
  hsm_close(g_h);
  g_s1 = g_s2 = NULL;
  g_h = NULL;
}

static bool all_zero(const uint8_t *p, size_t len) {
  size_t i;
  uint8_t acc = 0;

  for (i = 0; i < len; i++) {
    acc |= p[i];
  }
  return acc == 0;
}

/* A fresh KEK: its key token and a loaded handle. */
struct kek {
  uint8_t token[HSM_KEY_TOKEN_MAX];
  size_t token_len;
  uint32_t mech;
  hsm_key key;
};

static void new_kek(hsm_session *s, struct kek *k) {
  memset(k, 0, sizeof(*k));
  ck_assert_int_eq(hsm_kek_generate(s, k->token, &k->token_len, &k->mech, NULL), KMS_OK);
  ck_assert_int_eq(hsm_kek_load(s, k->token, k->token_len, k->mech, 0, &k->key), KMS_OK);
  ck_assert_uint_ne(k->key, 0);
}

static const uint8_t k_iv[HSM_GCM_IV_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static const uint8_t k_aad[] = "tenant=acme;kek=1";
static const uint8_t k_pt[37] = "a data key of thirty-two bytes!!....";

/* ---- lifecycle: each test opens and closes the module itself ---- */

START_TEST(test_open_creates_root_once_and_reopen_finds_it) {
  hsm *h;
  hsm_session *s;
  struct kek k;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];
  uint8_t pt[sizeof(k_pt)];
  hsm_key key = 0;
  bool sens = false, extr = true;

  /* A root version no other test uses: this open must create the key. */
  h = open_ok(7);
  ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
  ck_assert_int_eq(hsm_root_attributes(s, &sens, &extr), KMS_OK);
  ck_assert(sens);
  ck_assert(!extr);
  new_kek(s, &k);
  ck_assert_int_eq(hsm_gcm_encrypt(s, k.key, k_iv, k_aad, sizeof(k_aad), k_pt, sizeof(k_pt), ct),
                   KMS_OK);
  hsm_session_close(s);
  hsm_close(h);

  /* Reopen: the token wrapped before still unwraps, so the same root key was found. */
  h = open_ok(7);
  ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
  ck_assert_int_eq(hsm_kek_load(s, k.token, k.token_len, k.mech, 0, &key), KMS_OK);
  ck_assert_int_eq(hsm_gcm_decrypt(s, key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_OK);
  ck_assert_mem_eq(pt, k_pt, sizeof(k_pt));
  hsm_session_close(s);
  hsm_close(h);

  /* A third open succeeds: had the second created a duplicate, the lookup would be ambiguous. */
  h = open_ok(7);
  hsm_close(h);

  /* Another version is another key: the load above proved something. */
  h = open_ok(8);
  ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
  key = 99;
  ck_assert_int_eq(hsm_kek_load(s, k.token, k.token_len, k.mech, 0, &key), KMS_ERR_DECRYPT);
  ck_assert_uint_eq(key, 0);
  hsm_session_close(s);
  hsm_close(h);
}
END_TEST

START_TEST(test_key_tokens_survive_close_and_reopen) {
  hsm *h;
  hsm_session *s;
  struct kek k;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];
  uint8_t pt[sizeof(k_pt)];
  hsm_key key = 0;

  h = open_ok(1);
  ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
  new_kek(s, &k);
  ck_assert_int_eq(hsm_gcm_encrypt(s, k.key, k_iv, k_aad, sizeof(k_aad), k_pt, sizeof(k_pt), ct),
                   KMS_OK);
  hsm_session_close(s);
  hsm_close(h);

  h = open_ok(1);
  ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
  ck_assert_int_eq(hsm_kek_load(s, k.token, k.token_len, k.mech, 0, &key), KMS_OK);
  memset(pt, 0, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(s, key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_OK);
  ck_assert_mem_eq(pt, k_pt, sizeof(k_pt));
  hsm_session_close(s);
  hsm_close(h);
}
END_TEST

START_TEST(test_pin_file_readable_by_others_is_refused) {
  struct hsm_config cfg = config(1);
  char path[512];
  char err[256] = "";
  hsm *h = (hsm *)1;

  path_in_dir(path, sizeof(path), "open.pin");
  write_file(path, USER_PIN "\n", 0644);
  cfg.pin_file = path;
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "must not be accessible by group or others") != NULL, "err: %s", err);
  ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
  ck_assert_msg(strstr(err, USER_PIN) == NULL, "err leaks the PIN: %s", err);

  write_file(path, USER_PIN "\n", 0620); /* group-writable is refused too */
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
}
END_TEST

START_TEST(test_wrong_pin_is_an_error_without_the_pin) {
  struct hsm_config cfg = config(1);
  char path[512];
  char err[256] = "";
  hsm *h = NULL;

  path_in_dir(path, sizeof(path), "wrong.pin");
  write_file(path, "not-the-pin-9999\n", 0600);
  cfg.pin_file = path;
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "C_Login") != NULL && strstr(err, "CKR_PIN_INCORRECT") != NULL,
                "err: %s", err);
  ck_assert_msg(strstr(err, "not-the-pin") == NULL, "err leaks the PIN: %s", err);

  /* The right PIN still works afterwards (no lockout, no state left behind). */
  h = open_ok(1);
  hsm_close(h);
}
END_TEST

START_TEST(test_pin_file_first_line_only_and_crlf) {
  struct hsm_config cfg = config(1);
  char path[512];
  char err[256] = "";
  hsm *h = NULL;

  path_in_dir(path, sizeof(path), "crlf.pin");
  write_file(path, USER_PIN "\r\nsecond line is ignored\n", 0600);
  cfg.pin_file = path;
  ck_assert_msg(hsm_open(&h, &cfg, err, sizeof(err)) == KMS_OK, "err: %s", err);
  hsm_close(h);
  h = NULL;

  write_file(path, "\n" USER_PIN "\n", 0600);
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "empty") != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_missing_pin_file_is_an_error) {
  struct hsm_config cfg = config(1);
  char path[512];
  char err[256] = "";
  hsm *h = NULL;

  path_in_dir(path, sizeof(path), "absent.pin");
  cfg.pin_file = path;
  ck_assert_int_eq(hsm_open(&h, &cfg, err, sizeof(err)), KMS_ERR_IO);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_unknown_token_label_is_named_in_the_error) {
  struct hsm_config cfg = config(1);
  char err[256] = "";
  hsm *h = NULL;

  cfg.token_label = "no-such-token";
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "no-such-token") != NULL, "err: %s", err);

  /* A label is matched in full, not as a prefix of the 32-byte padded field. */
  cfg.token_label = "tenantkms";
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);

  cfg.token_label = "a-label-longer-than-thirty-two-bytes";
  ck_assert_int_eq(hsm_open(&h, &cfg, err, sizeof(err)), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(h);
}
END_TEST

START_TEST(test_missing_module_is_an_error) {
  struct hsm_config cfg = config(1);
  char err[256] = "";
  hsm *h = NULL;

  cfg.module_path = "/nonexistent/libpkcs11-missing.so";
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "/nonexistent/libpkcs11-missing.so") != NULL, "err: %s", err);

  /* A shared library that is not a PKCS#11 module. */
  cfg.module_path = "libc.so.6";
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "C_GetFunctionList") != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_weak_root_key_is_refused) {
  char err[256] = "";
  hsm *h = NULL;
  struct hsm_config cfg = config(9);

  /* softhsm2-util imports a raw AES key that can encrypt and decrypt: not a root key. */
  import_aes_key("tenantkms-root-v9");
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "tenantkms-root-v9") != NULL, "err: %s", err);
}
END_TEST

/* The unwrap template is all that keeps unwrapped KEKs in the HSM: what it says is checked. */
START_TEST(test_root_with_a_weak_unwrap_template_is_refused) {
  for (int extractable = 0; extractable <= 1; extractable++) {
    char err[256] = "";
    hsm *h = NULL;
    uint32_t v = 11 + (uint32_t)extractable;
    struct hsm_config cfg = config(v);
    ck_assert_int_eq(p11_probe_make_root(g_module, TOKEN_LABEL, g_pin_file, v, extractable), 0);
    ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
    ck_assert_ptr_null(h);
    ck_assert_msg(strstr(err, "unwrap template") != NULL, "err: %s", err);
  }
}
END_TEST

START_TEST(test_duplicate_root_key_is_refused) {
  char err[256] = "";
  hsm *h = NULL;
  struct hsm_config cfg = config(10);

  import_aes_key("tenantkms-root-v10");
  import_aes_key("tenantkms-root-v10");
  ck_assert_int_ne(hsm_open(&h, &cfg, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "ambiguous") != NULL, "err: %s", err);
}
END_TEST

/* ---- operations: the checked fixture holds g_h, g_s1, g_s2 ---- */

START_TEST(test_root_key_is_sensitive_and_not_extractable) {
  bool sens = false, extr = true;

  ck_assert_int_eq(hsm_root_attributes(g_s1, &sens, &extr), KMS_OK);
  ck_assert(sens);
  ck_assert(!extr);
}
END_TEST

START_TEST(test_key_token_is_rfc5649_of_a_fresh_key) {
  struct kek a, b;

  new_kek(g_s1, &a);
  new_kek(g_s1, &b);
  /* SoftHSM2 2.6.1 offers only the 2.40 name; RFC 5649 of 32 bytes is 40 bytes. */
  ck_assert(a.mech == MECH_AES_KEY_WRAP_PAD || a.mech == MECH_AES_KEY_WRAP_KWP);
  ck_assert_uint_eq(a.token_len, 40);
  ck_assert_uint_eq(b.token_len, 40);
  ck_assert_mem_ne(a.token, b.token, a.token_len);
  ck_assert_uint_ne(a.key, b.key);
}
END_TEST

START_TEST(test_gcm_round_trip_and_tamper_detection) {
  struct kek k;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];
  uint8_t bad[sizeof(ct)];
  uint8_t pt[sizeof(k_pt)];
  uint8_t iv2[HSM_GCM_IV_LEN];
  uint8_t aad2[sizeof(k_aad)];

  new_kek(g_s1, &k);
  ck_assert_int_eq(hsm_gcm_encrypt(g_s1, k.key, k_iv, k_aad, sizeof(k_aad), k_pt, sizeof(k_pt), ct),
                   KMS_OK);
  ck_assert_mem_ne(ct, k_pt, sizeof(k_pt));
  memset(pt, 0, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_OK);
  ck_assert_mem_eq(pt, k_pt, sizeof(k_pt));

  /* Wrong AAD. */
  memcpy(aad2, k_aad, sizeof(aad2));
  aad2[0] ^= 1;
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, aad2, sizeof(aad2), ct, sizeof(ct), pt),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt)));
  /* Missing AAD. */
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, NULL, 0, ct, sizeof(ct), pt),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt)));
  /* A flipped ciphertext bit. */
  memcpy(bad, ct, sizeof(ct));
  bad[3] ^= 0x10;
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, k_aad, sizeof(k_aad), bad, sizeof(bad), pt),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt)));
  /* A flipped tag bit. */
  memcpy(bad, ct, sizeof(ct));
  bad[sizeof(bad) - 1] ^= 0x01;
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, k_aad, sizeof(k_aad), bad, sizeof(bad), pt),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt)));
  /* Wrong IV. */
  memcpy(iv2, k_iv, sizeof(iv2));
  iv2[11] ^= 0x80;
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, iv2, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt)));
  /* Truncated (tag cut short). */
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(
      hsm_gcm_decrypt(g_s1, k.key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct) - 1, pt),
      KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt) - 1));

  /* The session is still fine after failures: no operation left active. */
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_OK);
  ck_assert_mem_eq(pt, k_pt, sizeof(k_pt));
}
END_TEST

START_TEST(test_gcm_empty_plaintext_and_aad) {
  struct kek k;
  uint8_t ct[HSM_GCM_TAG_LEN];
  uint8_t pt[1];

  new_kek(g_s1, &k);
  ck_assert_int_eq(hsm_gcm_encrypt(g_s1, k.key, k_iv, NULL, 0, NULL, 0, ct), KMS_OK);
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, NULL, 0, ct, sizeof(ct), pt), KMS_OK);
  ct[0] ^= 1;
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, NULL, 0, ct, sizeof(ct), pt),
                   KMS_ERR_DECRYPT);
  /* Shorter than a tag is malformed input, not a failed authentication. */
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, k.key, k_iv, NULL, 0, ct, HSM_GCM_TAG_LEN - 1, pt),
                   KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(test_ciphertext_under_one_kek_fails_under_another) {
  struct kek a, b;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];
  uint8_t pt[sizeof(k_pt)];

  new_kek(g_s1, &a);
  new_kek(g_s1, &b);
  ck_assert_int_eq(hsm_gcm_encrypt(g_s1, a.key, k_iv, k_aad, sizeof(k_aad), k_pt, sizeof(k_pt), ct),
                   KMS_OK);
  memset(pt, 0xAA, sizeof(pt));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, b.key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_ERR_DECRYPT);
  ck_assert(all_zero(pt, sizeof(pt)));
  ck_assert_int_eq(hsm_gcm_decrypt(g_s1, a.key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_OK);
  ck_assert_mem_eq(pt, k_pt, sizeof(k_pt));
}
END_TEST

START_TEST(test_corrupted_key_token_is_a_decrypt_error) {
  struct kek k;
  uint8_t bad[HSM_KEY_TOKEN_MAX];
  size_t positions[3];
  size_t i;
  hsm_key key;

  new_kek(g_s1, &k);
  positions[0] = 0;
  positions[1] = k.token_len / 2;
  positions[2] = k.token_len - 1;
  for (i = 0; i < 3; i++) {
    memcpy(bad, k.token, k.token_len);
    bad[positions[i]] ^= 0x01;
    key = 99;
    ck_assert_int_eq(hsm_kek_load(g_s1, bad, k.token_len, k.mech, 0, &key), KMS_ERR_DECRYPT);
    ck_assert_uint_eq(key, 0);
  }
  /* Cut short by one AES block, and by one byte. */
  ck_assert_int_eq(hsm_kek_load(g_s1, k.token, k.token_len - 8, k.mech, 0, &key), KMS_ERR_DECRYPT);
  ck_assert_int_eq(hsm_kek_load(g_s1, k.token, k.token_len - 1, k.mech, 0, &key), KMS_ERR_DECRYPT);
  /* Malformed requests. */
  ck_assert_int_eq(hsm_kek_load(g_s1, k.token, 0, k.mech, 0, &key), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(hsm_kek_load(g_s1, k.token, HSM_KEY_TOKEN_MAX + 1, k.mech, 0, &key),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(hsm_kek_load(g_s1, k.token, k.token_len, MECH_AES_KEY_WRAP, 0, &key),
                   KMS_ERR_INVALID_ARGUMENT);
  /* The intact token still loads. */
  ck_assert_int_eq(hsm_kek_load(g_s1, k.token, k.token_len, k.mech, 0, &key), KMS_OK);
}
END_TEST

START_TEST(test_unloaded_kek_can_no_longer_be_used) {
  struct kek k;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];

  new_kek(g_s1, &k);
  ck_assert_int_eq(hsm_gcm_encrypt(g_s1, k.key, k_iv, NULL, 0, k_pt, sizeof(k_pt), ct), KMS_OK);
  hsm_kek_unload(g_s2, k.key);
  ck_assert_int_ne(hsm_gcm_encrypt(g_s1, k.key, k_iv, NULL, 0, k_pt, sizeof(k_pt), ct), KMS_OK);
  ck_assert(all_zero(ct, sizeof(ct)));
  /* Invalid handle 0 is refused up front. */
  ck_assert_int_eq(hsm_gcm_encrypt(g_s1, 0, k_iv, NULL, 0, k_pt, sizeof(k_pt), ct),
                   KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(test_kek_loaded_in_one_session_outlives_it) {
  hsm_session *s3 = NULL;
  uint8_t token[HSM_KEY_TOKEN_MAX];
  size_t token_len = 0;
  uint32_t mech = 0;
  hsm_key key = 0;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];
  uint8_t pt[sizeof(k_pt)];

  ck_assert_int_eq(hsm_session_open(g_h, &s3), KMS_OK);
  ck_assert_int_eq(hsm_kek_generate(s3, token, &token_len, &mech, NULL), KMS_OK);
  ck_assert_int_eq(hsm_kek_load(s3, token, token_len, mech, 0, &key), KMS_OK);
  /* Session objects die with the session that created them, unless that is the owner session. */
  hsm_session_close(s3);
  ck_assert_int_eq(hsm_gcm_encrypt(g_s1, key, k_iv, k_aad, sizeof(k_aad), k_pt, sizeof(k_pt), ct),
                   KMS_OK);
  ck_assert_int_eq(hsm_gcm_decrypt(g_s2, key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt),
                   KMS_OK);
  ck_assert_mem_eq(pt, k_pt, sizeof(k_pt));
}
END_TEST

START_TEST(test_random_and_ping) {
  uint8_t a[32], b[32];

  memset(a, 0, sizeof(a));
  memset(b, 0, sizeof(b));
  ck_assert_int_eq(hsm_random(g_s1, a, sizeof(a)), KMS_OK);
  ck_assert_int_eq(hsm_random(g_s2, b, sizeof(b)), KMS_OK);
  ck_assert(!all_zero(a, sizeof(a)));
  ck_assert_mem_ne(a, b, sizeof(a));
  ck_assert_int_eq(hsm_random(g_s1, a, 0), KMS_OK);
  ck_assert_int_eq(hsm_ping(g_s1), KMS_OK);
  ck_assert_int_eq(hsm_ping(g_s2), KMS_OK);
}
END_TEST

struct worker_arg {
  const struct kek *k;
  int failures;
};

static void *worker(void *p) {
  struct worker_arg *w = p;
  hsm_session *s = NULL;
  uint8_t ct[sizeof(k_pt) + HSM_GCM_TAG_LEN];
  uint8_t pt[sizeof(k_pt)];
  int i;

  if (hsm_session_open(g_h, &s) != KMS_OK) {
    w->failures++;
    return NULL;
  }
  for (i = 0; i < 200; i++) {
    hsm_key key = 0;
    if (hsm_kek_load(s, w->k->token, w->k->token_len, w->k->mech, 0, &key) != KMS_OK ||
        hsm_gcm_encrypt(s, key, k_iv, k_aad, sizeof(k_aad), k_pt, sizeof(k_pt), ct) != KMS_OK ||
        hsm_gcm_decrypt(s, w->k->key, k_iv, k_aad, sizeof(k_aad), ct, sizeof(ct), pt) !=
            KMS_OK ||
        memcmp(pt, k_pt, sizeof(pt)) != 0) {
      w->failures++;
    }
    hsm_kek_unload(s, key);
  }
  hsm_session_close(s);
  return NULL;
}

START_TEST(test_concurrent_sessions_share_loaded_keks) {
  struct kek k;
  pthread_t t[4];
  struct worker_arg w[4];
  int i;

  new_kek(g_s1, &k);
  for (i = 0; i < 4; i++) {
    w[i].k = &k;
    w[i].failures = 0;
    ck_assert_int_eq(pthread_create(&t[i], NULL, worker, &w[i]), 0);
  }
  for (i = 0; i < 4; i++) {
    ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    ck_assert_int_eq(w[i].failures, 0);
  }
}
END_TEST

/* ---- Audit signing key and HMAC key (issue 6) ------------------------------ */

/* verify_sw checks an HSM signature with OpenSSL alone: what an offline auditor does. */
static int verify_sw(const struct hsm_signing_key *k, const uint8_t *msg, size_t len,
                     const uint8_t *sig, size_t sig_len) {
  EVP_PKEY *pk = NULL;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  const uint8_t *p = k->pub;
  int ok;

  if (k->type == HSM_SIG_ED25519) {
    pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, k->pub, k->pub_len);
  } else {
    pk = d2i_PUBKEY(NULL, &p, (long)k->pub_len);
  }
  ck_assert_ptr_nonnull(pk);
  ck_assert_int_eq(
      EVP_DigestVerifyInit(ctx, NULL, k->type == HSM_SIG_ED25519 ? NULL : EVP_sha256(), NULL, pk),
      1);
  ok = EVP_DigestVerify(ctx, sig, sig_len, msg, len) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pk);
  return ok;
}

static void signing_key_round_trip(const char *id, int prefer, int want_type) {
  struct hsm_signing_key k, again;
  const uint8_t msg[] = "tenantkms/node-1/audit\n42\nAAAA\n";
  uint8_t sig[HSM_SIG_MAX];
  size_t sig_len = 0;
  char err[256];

  ck_assert_int_eq(hsm_signing_key_open(g_h, id, prefer, &k, err, sizeof(err)), KMS_OK);
  ck_assert_int_eq(k.type, want_type);
  ck_assert_uint_eq(k.pub_len, want_type == HSM_SIG_ED25519 ? 32 : 91);
  ck_assert_int_eq(hsm_sign(g_s1, &k, msg, sizeof(msg) - 1, sig, &sig_len), KMS_OK);
  ck_assert(verify_sw(&k, msg, sizeof(msg) - 1, sig, sig_len));
  /* One changed byte of the message: the signature no longer holds. */
  ck_assert(!verify_sw(&k, (const uint8_t *)"tenantkms/node-1/audit\n43\nAAAA\n",
                       sizeof(msg) - 1, sig, sig_len));
  /* Opening again finds the same key pair (token objects), whatever is preferred now. */
  ck_assert_int_eq(hsm_signing_key_open(g_h, id, HSM_SIG_AUTO, &again, err, sizeof(err)), KMS_OK);
  ck_assert_int_eq(again.type, k.type);
  ck_assert_mem_eq(again.pub, k.pub, k.pub_len);
  ck_assert_int_eq(hsm_sign(g_s2, &again, msg, sizeof(msg) - 1, sig, &sig_len), KMS_OK);
  ck_assert(verify_sw(&k, msg, sizeof(msg) - 1, sig, sig_len));
}

START_TEST(test_audit_signing_key_is_ed25519_when_offered) {
  signing_key_round_trip("tenantkms-audit-v1", HSM_SIG_AUTO, HSM_SIG_ED25519);
}
END_TEST

START_TEST(test_audit_signing_key_ecdsa_p256_signs_in_der) {
  signing_key_round_trip("test-audit-ecdsa", HSM_SIG_ECDSA_P256, HSM_SIG_ECDSA_P256);
}
END_TEST

START_TEST(test_audit_signing_key_survives_reopen_of_the_hsm) {
  struct hsm_signing_key a, b;
  char err[256];

  ck_assert_int_eq(hsm_signing_key_open(g_h, "test-audit-reopen", HSM_SIG_AUTO, &a, err,
                                        sizeof(err)), KMS_OK);
  fixture_close();
  fixture_open();
  ck_assert_int_eq(hsm_signing_key_open(g_h, "test-audit-reopen", HSM_SIG_AUTO, &b, err,
                                        sizeof(err)), KMS_OK);
  ck_assert_mem_eq(a.pub, b.pub, a.pub_len);
}
END_TEST

START_TEST(test_hmac_derive_is_stable_and_label_bound) {
  uint8_t a[32], b[32], c[32], d[32];
  char err[256];

  ck_assert_int_eq(hsm_hmac_derive(g_h, "test-hmac-v1", "label-1", a, err, sizeof(err)), KMS_OK);
  ck_assert_int_eq(hsm_hmac_derive(g_h, "test-hmac-v1", "label-1", b, err, sizeof(err)), KMS_OK);
  ck_assert_int_eq(hsm_hmac_derive(g_h, "test-hmac-v1", "label-2", c, err, sizeof(err)), KMS_OK);
  ck_assert_int_eq(hsm_hmac_derive(g_h, "test-hmac-v2", "label-1", d, err, sizeof(err)), KMS_OK);
  ck_assert_mem_eq(a, b, 32);
  ck_assert_mem_ne(a, c, 32);
  ck_assert_mem_ne(a, d, 32);
  ck_assert(!all_zero(a, 32));
}
END_TEST

static Suite *hsm_suite(void) {
  Suite *s = suite_create("hsm");
  TCase *life = tcase_create("lifecycle");
  TCase *ops = tcase_create("operations");

  tcase_set_timeout(life, 60);
  tcase_add_test(life, test_open_creates_root_once_and_reopen_finds_it);
  tcase_add_test(life, test_key_tokens_survive_close_and_reopen);
  tcase_add_test(life, test_pin_file_readable_by_others_is_refused);
  tcase_add_test(life, test_wrong_pin_is_an_error_without_the_pin);
  tcase_add_test(life, test_pin_file_first_line_only_and_crlf);
  tcase_add_test(life, test_missing_pin_file_is_an_error);
  tcase_add_test(life, test_unknown_token_label_is_named_in_the_error);
  tcase_add_test(life, test_missing_module_is_an_error);
  tcase_add_test(life, test_weak_root_key_is_refused);
  tcase_add_test(life, test_duplicate_root_key_is_refused);
  tcase_add_test(life, test_root_with_a_weak_unwrap_template_is_refused);

  tcase_add_checked_fixture(ops, fixture_open, fixture_close);
  tcase_set_timeout(ops, 60);
  tcase_add_test(ops, test_root_key_is_sensitive_and_not_extractable);
  tcase_add_test(ops, test_key_token_is_rfc5649_of_a_fresh_key);
  tcase_add_test(ops, test_gcm_round_trip_and_tamper_detection);
  tcase_add_test(ops, test_gcm_empty_plaintext_and_aad);
  tcase_add_test(ops, test_ciphertext_under_one_kek_fails_under_another);
  tcase_add_test(ops, test_corrupted_key_token_is_a_decrypt_error);
  tcase_add_test(ops, test_unloaded_kek_can_no_longer_be_used);
  tcase_add_test(ops, test_kek_loaded_in_one_session_outlives_it);
  tcase_add_test(ops, test_random_and_ping);
  tcase_add_test(ops, test_concurrent_sessions_share_loaded_keks);
  tcase_add_test(ops, test_audit_signing_key_is_ed25519_when_offered);
  tcase_add_test(ops, test_audit_signing_key_ecdsa_p256_signs_in_der);
  tcase_add_test(ops, test_audit_signing_key_survives_reopen_of_the_hsm);
  tcase_add_test(ops, test_hmac_derive_is_stable_and_label_bound);
  suite_add_tcase(s, life);
  suite_add_tcase(s, ops);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  if (!suite_setup()) {
    printf("Bail out! cannot make a SoftHSM2 token in %s: %s\n", g_dir, strerror(errno));
    suite_teardown();
    return EXIT_FAILURE;
  }
  sr = srunner_create(hsm_suite());
  srunner_run_all(sr, CK_ENV);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  suite_teardown();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
