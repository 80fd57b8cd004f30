/* Integration tests of root key rotation: the key ceremony, RootRotate, kill -9 mid-way, legacy roots. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "keystore.h"
#include "kms.pb-c.h"
#include "kms_err.h"
#include "p11_probe.h"
#include "tenantkey.h"
#include "tk_internal.h"

/*
 * Two programs from this file (tests/integration/meson.build): "root" runs on
 * the dev setup, whose token got a trusted root v1 from the key ceremony
 * (scripts/lib/devenv.sh); "root_legacy" runs with TKMS_NO_ROOT_CEREMONY=1,
 * so kmsd makes a legacy root v1 at first start, as before root rotation.
 * The re-wrap job is throttled so that a kill -9 lands in the middle of it.
 */
#define PER_SECOND 8
#define STR_(x) #x
#define STR(x) STR_(x)
#define ROOT_CONF "log_level = debug\nroot_rewrap_per_second = " STR(PER_SECOND) "\n"

#define RULE(id, ops)                                                                        \
  "{\"id\": \"" id "\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/" id  \
  "\", \"operations\": " ops ", \"tenants\": \"all\"}"
#define ROOT_POLICY                                                                          \
  "{\"version\": 1, \"rules\": ["                                                           \
  RULE("officer", "[\"CreateTenant\", \"RotateKey\", \"ListKeys\", \"RootRotate\", "       \
                  "\"RootStatus\", \"Health\"]") ", "                                         \
  RULE("recording", "[\"GenerateDataKey\", \"Decrypt\", \"Health\"]") "]}\n"

#define N_TENANTS 6
#define N_VERSIONS 3 /* KEK versions per tenant: every one a key token to re-wrap */
#define N_BLOBS 2    /* data keys per KEK version */

static tk_client *officer, *recording;
static tk_data_key *blobs[N_TENANTS][N_VERSIONS][N_BLOBS];
static int legacy_mode;

static void
clients_free(void)
{
  tk_client_free(officer);
  tk_client_free(recording);
  officer = recording = NULL;
}

static void
clients_new(void)
{
  officer = harness_client("officer");
  recording = harness_client("recording");
  if (officer == NULL || recording == NULL) {
    fprintf(stderr, "test_root: cannot make the clients\n");
    exit(99);
  }
}

static const char *
last_msg(tk_client *c)
{
  static char buf[256];
  tk_client_last_message(c, buf, sizeof(buf));
  return buf;
}

/* run runs |cmd| through the shell; returns its exit status, output (with stderr) in |out|. */
static int
run(const char *cmd, char *out, size_t out_len)
{
  char full[4096];
  snprintf(full, sizeof(full), "%s 2>&1", cmd);
  FILE *p = popen(full, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(out, 1, out_len - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* kmsctl runs kmsctl as the officer with |args|. */
static int
kmsctl(const char *args, char *out, size_t out_len)
{
  char cmd[2048];
  snprintf(cmd, sizeof(cmd), "'%s' --config '%s' %s", getenv("KMSCTL"),
           harness_client_conf("clients", "officer"), args);
  return run(cmd, out, out_len);
}

/* ceremony runs the key ceremony with kmsd's configuration and the SO PIN; returns its status. */
static int
ceremony(char *out, size_t out_len)
{
  char cmd[2048];
  snprintf(cmd, sizeof(cmd), "'%s' root create --config '%s/kmsd.conf' --so-pin-file '%s/hsm/so-pin'",
           getenv("KMSCTL"), harness_dir(), harness_dir());
  return run(cmd, out, out_len);
}

static Tkms__Response *
root_call(Tkms__Request__OpCase op, int *out_r)
{
  Tkms__Request req;
  Tkms__RootRotateRequest rr;
  Tkms__RootStatusRequest rs;
  Tkms__Response *resp = NULL;
  tkms__request__init(&req);
  tkms__root_rotate_request__init(&rr);
  tkms__root_status_request__init(&rs);
  req.op_case = op;
  if (op == TKMS__REQUEST__OP_ROOT_ROTATE) {
    req.root_rotate = &rr;
  } else {
    req.root_status = &rs;
  }
  *out_r = tk_client_call(officer, &req, &resp);
  return resp;
}

/* status returns RootStatus (free with tk_client_response_free). */
static Tkms__Response *
status(void)
{
  int r;
  Tkms__Response *resp = root_call(TKMS__REQUEST__OP_ROOT_STATUS, &r);
  ck_assert_msg(r == TK_OK, "RootStatus: %s (%s)", tk_strerror(r), last_msg(officer));
  return resp;
}

static const Tkms__RootVersionInfo *
root_info(const Tkms__RootStatusResponse *s, uint32_t version)
{
  for (size_t i = 0; i < s->n_roots; i++) {
    if (s->roots[i]->version == version) {
      return s->roots[i];
    }
  }
  return NULL;
}

/* The figures of a status answer add up. */
static void
assert_adds_up(const Tkms__RootStatusResponse *s)
{
  uint64_t sum = 0, cur = 0;
  for (size_t i = 0; i < s->n_roots; i++) {
    sum += s->roots[i]->key_tokens;
    if (s->roots[i]->version == s->current_version) {
      cur = s->roots[i]->key_tokens;
    }
  }
  ck_assert_uint_eq(sum, s->total);
  ck_assert_uint_eq(cur, s->done);
  ck_assert_uint_le(s->done + s->legacy, s->total);
}

static keystore *
ks_open(void)
{
  char url[600], err[256] = "";
  keystore *ks = NULL;
  snprintf(url, sizeof(url), "sqlite:%s/keystore.db", harness_dir());
  ck_assert_msg(keystore_open(&ks, url, err, sizeof(err)) == KMS_OK, "%s", err);
  return ks;
}

/* tokens_under counts key tokens under root |version|, read from the keystore directly. */
static uint64_t
tokens_under(uint32_t version)
{
  keystore *ks = ks_open();
  struct ks_root *roots = NULL;
  size_t n = 0;
  uint64_t c = 0;
  ck_assert_int_eq(keystore_root_list(ks, &roots, &n), KMS_OK);
  for (size_t i = 0; i < n; i++) {
    if (roots[i].version == version) {
      c = roots[i].key_tokens;
    }
  }
  free(roots);
  keystore_close(ks);
  return c;
}

static uint32_t
kek_root(const char *tenant, uint32_t version)
{
  keystore *ks = ks_open();
  struct ks_kek k;
  ck_assert_int_eq(keystore_kek_get(ks, tenant, version, &k), KMS_OK);
  keystore_close(ks);
  return k.root_version;
}

static int
root_on_token(uint32_t version)
{
  char pin[600];
  snprintf(pin, sizeof(pin), "%s/hsm/pin", harness_dir());
  return p11_probe_count_root(getenv("PKCS11_MODULE"), "tenantkms", pin, version);
}

static void
make_tenants_and_blobs(const char *prefix)
{
  for (int t = 0; t < N_TENANTS; t++) {
    char name[32];
    uint32_t v = 0;
    snprintf(name, sizeof(name), "%s%d", prefix, t);
    ck_assert_int_eq(tk_tenant_create(officer, &v, name), TK_OK);
    for (int k = 0; k < N_VERSIONS; k++) {
      if (k > 0) {
        ck_assert_int_eq(tk_key_rotate(officer, &v, name), TK_OK);
      }
      for (int b = 0; b < N_BLOBS; b++) {
        int r = tk_data_key_generate(recording, &blobs[t][k][b], name, NULL, 1);
        ck_assert_msg(r == TK_OK, "generate: %s", tk_strerror(r));
        ck_assert_uint_eq(tk_data_key_kek_version(blobs[t][k][b]), (uint32_t)k + 1);
      }
    }
  }
}

/* every_blob_opens: each data key made before decrypts to the same bytes. */
static void
every_blob_opens(const char *prefix)
{
  for (int t = 0; t < N_TENANTS; t++) {
    char name[32];
    snprintf(name, sizeof(name), "%s%d", prefix, t);
    for (int k = 0; k < N_VERSIONS; k++) {
      for (int b = 0; b < N_BLOBS; b++) {
        size_t wl, l1, l2;
        const uint8_t *w = tk_data_key_wrapped(blobs[t][k][b], &wl);
        tk_data_key *d = NULL;
        int r = tk_data_key_decrypt(recording, &d, name, NULL, w, wl);
        ck_assert_msg(r == TK_OK, "decrypt %s v%d: %s (%s)", name, k + 1, tk_strerror(r),
                      last_msg(recording));
        ck_assert_mem_eq(tk_data_key_plaintext(d, &l1), tk_data_key_plaintext(blobs[t][k][b], &l2),
                         32);
        tk_data_key_free(d);
      }
    }
  }
}

static void
blobs_free(void)
{
  for (int t = 0; t < N_TENANTS; t++) {
    for (int k = 0; k < N_VERSIONS; k++) {
      for (int b = 0; b < N_BLOBS; b++) {
        tk_data_key_free(blobs[t][k][b]);
        blobs[t][k][b] = NULL;
      }
    }
  }
}

/* wait_for polls |cond| every 100 ms for up to |secs| seconds. */
#define wait_for(cond, secs)                                                                  \
  do {                                                                                        \
    for (int i_ = 0; i_ < (secs) * 10 && !(cond); i_++) {                                     \
      harness_pause_ms(100);                                                                  \
    }                                                                                         \
  } while (0)

static int
log_has(const char *needle)
{
  char path[600];
  snprintf(path, sizeof(path), "%s/kmsd.log", harness_dir());
  return harness_file_contains(path, (const uint8_t *)needle, strlen(needle));
}

/* ---- Trusted roots (the dev setup) ---------------------------------------------------- */

START_TEST(test_ceremony_made_a_trusted_root_v1_before_the_first_start)
{
  Tkms__Response *resp = status();
  const Tkms__RootStatusResponse *s = resp->root_status;
  ck_assert_uint_eq(s->current_version, 1);
  const Tkms__RootVersionInfo *v1 = root_info(s, 1);
  ck_assert_ptr_nonnull(v1);
  ck_assert(v1->trusted);
  ck_assert(v1->on_token);
  ck_assert_str_eq(v1->state, "current");
  ck_assert_str_eq(s->job_state, "idle");
  tk_client_response_free(resp);
}
END_TEST

START_TEST(test_rotate_without_a_newer_root_is_failed_precondition_and_changes_nothing)
{
  int r;
  Tkms__Response *resp = root_call(TKMS__REQUEST__OP_ROOT_ROTATE, &r);
  ck_assert_ptr_null(resp);
  ck_assert_int_eq(r, TK_EPRECONDITION);
  ck_assert_msg(strstr(last_msg(officer), "kmsctl root create") != NULL, "message: %s",
                last_msg(officer));
  resp = status();
  ck_assert_uint_eq(resp->root_status->current_version, 1);
  tk_client_response_free(resp);
  /* kmsctl says so too, with the wrong-state exit code. */
  char out[4096];
  ck_assert_int_eq(kmsctl("root rotate", out, sizeof(out)), 4);
  ck_assert_msg(strstr(out, "no root key newer") != NULL, "%s", out);
}
END_TEST

START_TEST(test_kmsctl_root_bad_arguments_fail_clearly_and_change_nothing)
{
  static const struct {
    const char *args;
    const char *says;
  } bad[] = {
      {"root", "missing subcommand"},
      {"root spin", "unknown subcommand"},
      {"root rotate now", "too many arguments"},
      {"root status --verbose", "unknown option"},
      {"root rotate --version 2", "unknown option"},
      {"root create", "--so-pin-file FILE is required"},
      {"root create --so-pin-file", "needs a file"},
      {"root create --so-pin-file /nonexistent/so-pin --bogus", "unknown option"},
      {"root create --so-pin-file /nonexistent/so-pin extra", "unexpected argument"},
      {"root create --config /nonexistent/kmsd.conf --so-pin-file /nonexistent/so-pin",
       "/nonexistent/kmsd.conf"},
  };
  char out[4096];
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int st = kmsctl(bad[i].args, out, sizeof(out));
    ck_assert_msg(st == 2, "kmsctl %s: exit %d, want 2: %s", bad[i].args, st, out);
    ck_assert_msg(strstr(out, bad[i].says) != NULL, "kmsctl %s said: %s", bad[i].args, out);
  }
  /* A wrong SO PIN is refused by the token (not a usage error) and makes nothing. */
  char cmd[2048];
  harness_write_file("hsm/wrong-so-pin", "00000000\n");
  snprintf(cmd, sizeof(cmd), "chmod 600 '%s/hsm/wrong-so-pin' && '%s' root create --config "
           "'%s/kmsd.conf' --so-pin-file '%s/hsm/wrong-so-pin'",
           harness_dir(), getenv("KMSCTL"), harness_dir(), harness_dir());
  ck_assert_int_ne(run(cmd, out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "CKR_PIN_INCORRECT") != NULL, "%s", out);
  ck_assert_int_eq(root_on_token(2), 0);
  Tkms__Response *resp = status();
  ck_assert_uint_eq(resp->root_status->current_version, 1);
  ck_assert_uint_eq(resp->root_status->n_roots, 1);
  tk_client_response_free(resp);
  ck_assert_int_eq(kmsctl("root --help", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "root status") != NULL, "%s", out);
}
END_TEST

START_TEST(test_loaded_kek_cannot_be_wrapped_by_a_key_of_the_attacker)
{
  uint32_t v = 0;
  ck_assert_int_eq(tk_tenant_create(officer, &v, "probe"), TK_OK);
  keystore *ks = ks_open();
  struct ks_kek k;
  ck_assert_int_eq(keystore_kek_current(ks, "probe", &k), KMS_OK);
  keystore_close(ks);
  char pin[600];
  snprintf(pin, sizeof(pin), "%s/hsm/pin", harness_dir());
  unsigned long wrap_rv = 0, read_rv = 0;
  /* With the user PIN, unwrapped as kmsd does: extractable, but only to trusted keys. */
  ck_assert_int_eq(p11_probe_wrap_loaded_kek(getenv("PKCS11_MODULE"), "tenantkms", pin,
                                             k.root_version, k.token, k.token_len, k.wrap_mech,
                                             &wrap_rv, &read_rv),
                   0);
  ck_assert_msg(wrap_rv == 0x69 /* CKR_KEY_NOT_WRAPPABLE */, "C_WrapKey answered 0x%lx",
                wrap_rv);
  ck_assert_msg(read_rv == 0x11 /* CKR_ATTRIBUTE_SENSITIVE */, "CKA_VALUE read answered 0x%lx",
                read_rv);
  /* Nor can it be unwrapped as a plain readable key. */
  uint8_t out[32];
  ck_assert_int_eq(p11_probe_unwrap_kek(getenv("PKCS11_MODULE"), "tenantkms", pin,
                                        k.root_version, k.token, k.token_len, k.wrap_mech, 1,
                                        out),
                   1);
}
END_TEST

START_TEST(test_kill9_mid_rotation_resumes_and_every_blob_still_opens)
{
  char out[8192];
  make_tenants_and_blobs("rot");
  uint64_t before = tokens_under(1);
  ck_assert_uint_ge(before, N_TENANTS * N_VERSIONS);

  /* The key ceremony, while kmsd runs: v2 appears on the token. */
  ck_assert_msg(ceremony(out, sizeof(out)) == 0, "%s", out);
  ck_assert_msg(strstr(out, "root key v2") != NULL, "%s", out);
  ck_assert_int_eq(root_on_token(2), 1);

  ck_assert_msg(kmsctl("root rotate --json", out, sizeof(out)) == 0, "%s", out);
  ck_assert_msg(strstr(out, "\"root_version\":2") != NULL, "%s", out);

  /* Kill -9 once the job is under way but not done (it moves PER_SECOND tokens a second). */
  Tkms__Response *resp = NULL;
  uint64_t done = 0, total = 0;
  for (int i = 0; i < 300; i++) {
    resp = status();
    done = resp->root_status->done;
    total = resp->root_status->total;
    assert_adds_up(resp->root_status);
    tk_client_response_free(resp);
    if (done >= 3) {
      break;
    }
    harness_pause_ms(50);
  }
  int pid = harness_kmsd_pid();
  kill(pid, SIGKILL);
  harness_stop_kmsd(); /* reaps it */
  clients_free();
  uint64_t moved = tokens_under(2), left = tokens_under(1);
  ck_assert_msg(moved > 0 && left > 0, "kill -9 not mid-way: %llu moved, %llu left (done %llu/%llu)",
                (unsigned long long)moved, (unsigned long long)left, (unsigned long long)done,
                (unsigned long long)total);

  /* Restart: the job resumes by itself and finishes. */
  ck_assert_int_gt(harness_start_kmsd(), 0);
  clients_new();
  resp = status();
  ck_assert_uint_eq(resp->root_status->current_version, 2);
  tk_client_response_free(resp);
  int finished = 0;
  for (int i = 0; i < 600 && !finished; i++) {
    resp = status();
    assert_adds_up(resp->root_status);
    finished = resp->root_status->done == resp->root_status->total &&
               strcmp(resp->root_status->job_state, "idle") == 0;
    if (finished) {
      ck_assert_int_eq(resp->root_status->eta_s, 0);
      ck_assert_uint_eq(resp->root_status->legacy, 0);
    }
    tk_client_response_free(resp);
    if (!finished) {
      harness_pause_ms(100);
    }
  }
  ck_assert_msg(finished, "the job did not finish after the restart");
  ck_assert_uint_eq(tokens_under(1), 0);

  /* Every data key made before the rotation still decrypts. */
  every_blob_opens("rot");
  /* New KEKs name root 2. */
  uint32_t v = 0;
  ck_assert_int_eq(tk_tenant_create(officer, &v, "after-rotation"), TK_OK);
  ck_assert_uint_eq(kek_root("after-rotation", 1), 2);
  ck_assert_int_eq(tk_key_rotate(officer, &v, "rot0"), TK_OK);
  ck_assert_uint_eq(kek_root("rot0", v), 2);

  /* Nothing refers to root 1 any more: it goes from the token, and the keystore says when. */
  wait_for(root_on_token(1) == 0, 30);
  ck_assert_int_eq(root_on_token(1), 0);
  resp = status();
  const Tkms__RootVersionInfo *v1 = root_info(resp->root_status, 1);
  ck_assert_ptr_nonnull(v1);
  ck_assert_str_eq(v1->state, "destroyed");
  ck_assert(!v1->on_token);
  ck_assert_int_gt(v1->destroyed_ms, 0);
  ck_assert_int_eq(root_on_token(2), 1);
  tk_client_response_free(resp);
  every_blob_opens("rot");

  /* The job's progress and the destruction are in kmsd's log; the RPCs in the audit log. */
  ck_assert(log_has("event=root_rotated version=2"));
  ck_assert(log_has("event=root_rewrap_progress"));
  ck_assert(log_has("event=root_destroyed version=1"));
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "cat '%s'/audit/*.jsonl 2>/dev/null | grep -c RootRotate",
           harness_dir());
  ck_assert_int_eq(run(cmd, out, sizeof(out)), 0);

  /* The table and --json of kmsctl root status. */
  ck_assert_int_eq(kmsctl("root status", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "current root v2") != NULL && strstr(out, "destroyed") != NULL, "%s",
                out);
  ck_assert_int_eq(kmsctl("root status --json", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "\"current_version\":2") != NULL, "%s", out);
  blobs_free();
}
END_TEST

/* ---- A legacy root (TKMS_NO_ROOT_CEREMONY) -------------------------------------------- */

START_TEST(test_legacy_root_tokens_are_reported_not_failed)
{
  char out[8192];
  Tkms__Response *resp = status();
  const Tkms__RootVersionInfo *v1 = root_info(resp->root_status, 1);
  ck_assert_ptr_nonnull(v1);
  ck_assert(!v1->trusted);
  tk_client_response_free(resp);
  make_tenants_and_blobs("leg");

  /* The ceremony sees kmsd's private legacy v1 (with the user PIN) and makes v2. */
  ck_assert_msg(ceremony(out, sizeof(out)) == 0, "%s", out);
  ck_assert_msg(strstr(out, "root key v2") != NULL, "%s", out);
  ck_assert_msg(kmsctl("root rotate", out, sizeof(out)) == 0, "%s", out);
  ck_assert_msg(strstr(out, "cannot be re-wrapped (legacy root)") != NULL, "%s", out);

  /* New keys go under v2; the legacy tokens stay, counted, and the job does not fail. */
  uint32_t v = 0;
  ck_assert_int_eq(tk_tenant_create(officer, &v, "fresh"), TK_OK);
  ck_assert_uint_eq(kek_root("fresh", 1), 2);
  harness_pause_ms(1500);
  resp = status();
  const Tkms__RootStatusResponse *s = resp->root_status;
  assert_adds_up(s);
  ck_assert_uint_eq(s->current_version, 2);
  ck_assert_uint_eq(s->legacy, (uint64_t)N_TENANTS * N_VERSIONS);
  ck_assert_uint_eq(s->done, 1);
  ck_assert_uint_eq(s->done + s->legacy, s->total);
  ck_assert_str_ne(s->job_state, "failing");
  ck_assert_int_eq(s->eta_s, 0);
  tk_client_response_free(resp);
  ck_assert_int_eq(kmsctl("root status", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "cannot be re-wrapped (legacy root): rotate the tenant's key") != NULL,
                "%s", out);

  /* The legacy root still holds tokens: it stays, and its blobs open. */
  ck_assert_int_eq(root_on_token(1), 1);
  every_blob_opens("leg");
  /* Rotating a tenant's key moves its new version under v2. */
  ck_assert_int_eq(tk_key_rotate(officer, &v, "leg0"), TK_OK);
  ck_assert_uint_eq(kek_root("leg0", v), 2);
  ck_assert(!log_has("event=root_rewrap_failed"));
  blobs_free();
}
END_TEST

static Suite *
root_suite(void)
{
  Suite *s = suite_create("root");
  TCase *t = tcase_create("rotation");
  tcase_set_timeout(t, 240);
  if (legacy_mode) {
    tcase_add_test(t, test_legacy_root_tokens_are_reported_not_failed);
  } else {
    tcase_add_test(t, test_ceremony_made_a_trusted_root_v1_before_the_first_start);
    tcase_add_test(t, test_rotate_without_a_newer_root_is_failed_precondition_and_changes_nothing);
    tcase_add_test(t, test_kmsctl_root_bad_arguments_fail_clearly_and_change_nothing);
    tcase_add_test(t, test_loaded_kek_cannot_be_wrapped_by_a_key_of_the_attacker);
    tcase_add_test(t, test_kill9_mid_rotation_resumes_and_every_blob_still_opens);
  }
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  legacy_mode = getenv("TKMS_NO_ROOT_CEREMONY") != NULL;
  harness_setup(ROOT_CONF);
  harness_write_file("root-policy/root-tests.json", ROOT_POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/root-policy", harness_dir());
  harness_append_conf(line);
  harness_start_kmsd();
  clients_new();
  SRunner *sr = srunner_create(root_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* tests share the one kmsd process, in order */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  clients_free();
  return harness_finish(failed);
}
