/* Integration tests: HSM faults injected by tests/shim (p11shim), recovery without restart, and crash hygiene. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "tenantkey.h"

/*
 * kmsd loads the shim as its PKCS#11 module; the shim forwards to SoftHSM2
 * and fails calls as the control file says (tests/shim/p11shim.c). The HSM
 * call timeout is short so that injected latency trips it quickly.
 */
#define POLICY                                                                               \
  "{\"version\": 1, \"rules\": ["                                                            \
  "{\"id\": \"svc\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/recording\", " \
  "\"operations\": [\"GenerateDataKey\", \"Decrypt\", \"Health\"], \"tenants\": \"all\"}, "   \
  "{\"id\": \"officer\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/officer\", " \
  "\"operations\": [\"CreateTenant\", \"Health\"], \"tenants\": \"all\"}]}\n"

/* Bounded waits for liveness: many short tries, never a timed assertion. */
#define TRIES 400
#define TRY_PAUSE_MS 25

static tk_client *officer, *svc;
static char control[600];

/* The shim rereads its control file (DIR/p11shim.control), replaced whole by rename. */
static void
set_fault(const char *content)
{
  harness_write_file("p11shim.control", content);
}

static char *
read_log(void)
{
  char path[512];
  snprintf(path, sizeof(path), "%s/kmsd.log", harness_dir());
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = calloc(1, (size_t)n + 1);
  ck_assert_ptr_nonnull(buf);
  buf[fread(buf, 1, (size_t)n, f)] = '\0';
  fclose(f);
  return buf;
}

static int
count_in_log(const char *needle)
{
  char *log = read_log();
  int n = 0;
  for (const char *p = log; (p = strstr(p, needle)) != NULL; p += strlen(needle)) {
    n++;
  }
  free(log);
  return n;
}

/* A generate that must succeed, with its plaintext and wrapped key copied out. */
static void
generate_ok(const char *tenant, uint8_t pt[32], uint8_t wrapped[65])
{
  tk_data_key *k = NULL;
  size_t l = 0;
  int r = tk_data_key_generate(svc, &k, tenant, NULL, 1);
  ck_assert_msg(r == TK_OK, "generate: %s", tk_strerror(r));
  memcpy(pt, tk_data_key_plaintext(k, &l), 32);
  ck_assert_uint_eq(l, 32);
  memcpy(wrapped, tk_data_key_wrapped(k, &l), 65);
  ck_assert_uint_eq(l, 65);
  tk_data_key_free(k);
}

/*
 * Sends data-key requests until kmsd answers UNAVAILABLE. Every answer on the
 * way must be OK or UNAVAILABLE: anything else (an INTERNAL error, a wrong
 * key, a hang that the client's deadline turns into a timeout) fails.
 */
static void
until_unavailable(const char *tenant, const uint8_t old_wrapped[65])
{
  for (int i = 0; i < TRIES; i++) {
    tk_data_key *k = NULL;
    int r = tk_data_key_generate(svc, &k, tenant, NULL, 1);
    tk_data_key_free(k);
    ck_assert_msg(r == TK_OK || r == TK_EUNAVAILABLE, "generate during a fault: %s",
                  tk_strerror(r));
    if (r == TK_EUNAVAILABLE) {
      /* Decrypt too is refused, not answered from somewhere weaker. */
      r = tk_data_key_decrypt(svc, &k, tenant, NULL, old_wrapped, 65);
      tk_data_key_free(k);
      ck_assert_msg(r == TK_EUNAVAILABLE, "decrypt during a fault: %s", tk_strerror(r));
      int serving = 1;
      ck_assert_int_eq(tk_health(svc, &serving), TK_OK);
      ck_assert_msg(serving == 0, "health says serving while the HSM is down");
      return;
    }
    harness_pause_ms(TRY_PAUSE_MS);
  }
  ck_abort_msg("kmsd never answered UNAVAILABLE while the HSM was failing");
}

/* After the fault clears: requests succeed again, old blobs still open, without a restart. */
static void
until_served_again(const char *tenant, const uint8_t old_pt[32], const uint8_t old_wrapped[65])
{
  int r = TK_EUNAVAILABLE;
  for (int i = 0; i < TRIES && r != TK_OK; i++) {
    tk_data_key *k = NULL;
    r = tk_data_key_generate(svc, &k, tenant, NULL, 1);
    tk_data_key_free(k);
    ck_assert_msg(r == TK_OK || r == TK_EUNAVAILABLE, "generate after the fault: %s",
                  tk_strerror(r));
    if (r != TK_OK) {
      harness_pause_ms(TRY_PAUSE_MS);
    }
  }
  ck_assert_msg(r == TK_OK, "kmsd did not serve again after the HSM came back");
  tk_data_key *d = NULL;
  size_t l = 0;
  r = tk_data_key_decrypt(svc, &d, tenant, NULL, old_wrapped, 65);
  ck_assert_msg(r == TK_OK, "old blob after recovery: %s", tk_strerror(r));
  ck_assert_mem_eq(tk_data_key_plaintext(d, &l), old_pt, 32);
  tk_data_key_free(d);
  uint8_t pt[32], w[65];
  generate_ok(tenant, pt, w);
  r = tk_data_key_decrypt(svc, &d, tenant, NULL, w, 65);
  ck_assert_msg(r == TK_OK, "new blob after recovery: %s", tk_strerror(r));
  ck_assert_mem_eq(tk_data_key_plaintext(d, &l), pt, 32);
  tk_data_key_free(d);
  int serving = 0;
  ck_assert_int_eq(tk_health(svc, &serving), TK_OK);
  ck_assert_int_eq(serving, 1);
  ck_assert_msg(harness_kmsd_alive(), "kmsd died");
}

static void
fault_then_recovery(const char *tenant, const char *fault)
{
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, tenant);
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
  uint8_t pt[32], w[65];
  generate_ok(tenant, pt, w); /* its KEK is loaded and cached now */
  set_fault(fault);
  until_unavailable(tenant, w);
  /* A tenant created during the outage is refused too: no KEK is made anywhere else. */
  r = tk_tenant_create(officer, &v, "made-during-outage");
  ck_assert_msg(r == TK_EUNAVAILABLE, "create during a fault: %s", tk_strerror(r));
  set_fault("fault = none\n");
  until_served_again(tenant, pt, w);
}

START_TEST(test_device_error_gives_unavailable_then_recovers)
{
  fault_then_recovery("f-deverr", "fault = device_error\n");
}
END_TEST

/* The module's sessions really are gone: kmsd reopens them and logs in with the PIN file again. */
START_TEST(test_lost_sessions_give_unavailable_then_relogin_and_reload)
{
  int resets = count_in_log("event=hsm_recovered how=reset");
  fault_then_recovery("f-session", "fault = session_invalid\n");
  ck_assert_int_gt(count_in_log("event=hsm_recovered how=reset"), resets);
  /* The audit writer's session and signing key handle came back too: checkpoints are signed. */
  int signed_before = count_in_log("event=audit_checkpoint size");
  for (int i = 0; i < TRIES && count_in_log("event=audit_checkpoint size") == signed_before; i++) {
    uint8_t pt[32], w[65];
    generate_ok("f-session", pt, w);
    harness_pause_ms(TRY_PAUSE_MS);
  }
  ck_assert_int_gt(count_in_log("event=audit_checkpoint size"), signed_before);
}
END_TEST

START_TEST(test_removed_device_gives_unavailable_then_recovers)
{
  int resets = count_in_log("event=hsm_recovered how=reset");
  fault_then_recovery("f-removed", "fault = device_removed\n");
  ck_assert_int_gt(count_in_log("event=hsm_recovered how=reset"), resets);
}
END_TEST

/* A stalled HSM: requests are answered (slowly, or UNAVAILABLE at once), never queued forever. */
START_TEST(test_slow_hsm_gives_unavailable_then_recovers)
{
  fault_then_recovery("f-slow", "latency_ms = 700\n");
  ck_assert_int_gt(count_in_log("reason=\"call took"), 0);
}
END_TEST

/* Recovery does not depend on the PIN kmsd read at start: it reads the file again. */
START_TEST(test_relogin_reads_the_pin_file_again)
{
  char pin_path[512], saved[256];
  snprintf(pin_path, sizeof(pin_path), "%s/hsm/pin", harness_dir());
  FILE *f = fopen(pin_path, "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(fgets(saved, sizeof(saved), f));
  fclose(f);
  /* A wrong PIN in the file: the reset fails to log in, and kmsd stays unavailable. */
  f = fopen(pin_path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("000000-wrong\n", f);
  fclose(f);
  uint8_t pt[32], w[65];
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, "f-pin");
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
  generate_ok("f-pin", pt, w);
  set_fault("fault = session_invalid\n");
  until_unavailable("f-pin", w);
  set_fault("fault = none\n");
  int failed_before = count_in_log("event=hsm_recovery_failed");
  for (int i = 0; i < TRIES && count_in_log("event=hsm_recovery_failed") == failed_before; i++) {
    tk_data_key *k = NULL;
    r = tk_data_key_generate(svc, &k, "f-pin", NULL, 1);
    tk_data_key_free(k);
    ck_assert_msg(r == TK_EUNAVAILABLE, "generate with a wrong PIN on file: %s", tk_strerror(r));
    harness_pause_ms(TRY_PAUSE_MS);
  }
  ck_assert_int_gt(count_in_log("event=hsm_recovery_failed"), failed_before);
  ck_assert_int_eq(count_in_log("000000-wrong"), 0); /* never logged */
  /* The right PIN back in the file: served again without a restart. */
  f = fopen(pin_path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(saved, f);
  fclose(f);
  until_served_again("f-pin", pt, w);
}
END_TEST

/* ---- Crash hygiene (runs last: it kills kmsd) ---------------------------------- */

/*
 * Where a core file of kmsd would land, from /proc/sys/kernel/core_pattern:
 * the directory (kmsd's working directory for a relative pattern) and the
 * file name prefix before the first %. Returns 0 if cores go to a pipe.
 */
static int
core_location(const char *cwd, char *dir_out, size_t dir_cap, char *prefix, size_t prefix_cap)
{
  char pat[256] = "core";
  FILE *f = fopen("/proc/sys/kernel/core_pattern", "r");
  if (f != NULL) {
    if (fgets(pat, sizeof(pat), f) == NULL) {
      snprintf(pat, sizeof(pat), "core");
    }
    fclose(f);
  }
  pat[strcspn(pat, "\n")] = '\0';
  if (pat[0] == '|') {
    return 0;
  }
  char *pct = strchr(pat, '%');
  if (pct != NULL) {
    *pct = '\0';
  }
  char *slash = strrchr(pat, '/');
  if (slash != NULL) {
    *slash = '\0';
    snprintf(dir_out, dir_cap, "%s", pat[0] != '\0' ? pat : "/");
    snprintf(prefix, prefix_cap, "%s", slash + 1);
  } else {
    snprintf(dir_out, dir_cap, "%s", cwd);
    snprintf(prefix, prefix_cap, "%s", pat);
  }
  if (prefix[0] == '\0') {
    snprintf(prefix, prefix_cap, "core");
  }
  return 1;
}

static int
count_cores(const char *dir, const char *prefix)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  if (d == NULL) {
    return 0;
  }
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
      n++;
    }
  }
  closedir(d);
  return n;
}

static void
hex(const uint8_t *p, size_t n, char *out)
{
  for (size_t i = 0; i < n; i++) {
    snprintf(out + 2 * i, 3, "%02x", p[i]);
  }
}

/* Every regular file under |path| (recursively) is searched for |needle|. */
static int
tree_contains(const char *path, const uint8_t *needle, size_t len)
{
  DIR *d = opendir(path);
  struct dirent *e;
  int found = 0;
  if (d == NULL) {
    return harness_file_contains(path, needle, len);
  }
  while (!found && (e = readdir(d)) != NULL) {
    char sub[1024];
    struct stat st;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
      continue;
    }
    snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
    if (lstat(sub, &st) != 0) {
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      found = tree_contains(sub, needle, len);
    } else if (S_ISREG(st.st_mode)) {
      found = harness_file_contains(sub, needle, len);
    }
  }
  closedir(d);
  return found;
}

START_TEST(test_sigabrt_leaves_no_core_and_no_data_key_on_disk)
{
  uint8_t pt[32], w[65];
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, "f-crash");
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
  generate_ok("f-crash", pt, w);
  int pid = harness_kmsd_pid();
  ck_assert_int_gt(pid, 0);
  /* The limit kmsd set on itself, as the kernel sees it. */
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/limits", pid);
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  int core_zero = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, "Max core file size", 18) == 0) {
      unsigned long soft = 1, hard = 1;
      core_zero = sscanf(line + 18, " %lu %lu", &soft, &hard) == 2 && soft == 0 && hard == 0;
    }
  }
  fclose(f);
  ck_assert_msg(core_zero, "kmsd's core file size limit is not 0");
  /* kmsd runs in the test's working directory (harness_start_kmsd forks from here). */
  char cwd[512], core_dir[600], prefix[128];
  ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
  int to_file = core_location(cwd, core_dir, sizeof(core_dir), prefix, sizeof(prefix));
  int cores_before = to_file ? count_cores(core_dir, prefix) : 0;
  ck_assert_int_eq(kill(pid, SIGABRT), 0);
  for (int i = 0; i < TRIES * 4 && harness_kmsd_alive(); i++) {
    harness_pause_ms(TRY_PAUSE_MS);
  }
  ck_assert_msg(!harness_kmsd_alive(), "kmsd survived SIGABRT");
  if (to_file) {
    ck_assert_msg(count_cores(core_dir, prefix) == cores_before,
                  "a core file appeared in %s after SIGABRT", core_dir);
  }
  ck_assert_int_eq(count_cores(harness_dir(), "core"), 0);
  /* Nothing kmsd wrote holds the data key, in binary or in hex. */
  char hx[65];
  hex(pt, 32, hx);
  ck_assert_msg(!tree_contains(harness_dir(), pt, 32), "a data key was found on disk");
  ck_assert_msg(!tree_contains(harness_dir(), (const uint8_t *)hx, 64),
                "a data key (hex) was found on disk");
}
END_TEST

/* An HSM that computes wrong answers: kmsd's start-up self-tests refuse to serve with it. */
START_TEST(test_wrong_hsm_answers_stop_kmsd_at_start)
{
  char out[8192];
  if (harness_kmsd_alive()) {
    harness_stop_kmsd();
  }
  set_fault("fault = corrupt_encrypt\n");
  int rc = harness_run_kmsd_once("kmsd.conf", out, sizeof(out));
  set_fault("fault = none\n");
  ck_assert_msg(rc != 0 && rc != -1, "kmsd started with a corrupting HSM (status %d)", rc);
  ck_assert_msg(strstr(out, "stage=selftest") != NULL &&
                    strstr(out, "AES-256-GCM encrypt in the HSM does not give the known answer") !=
                        NULL,
                "no clear self-test message: %s", out);
  ck_assert_ptr_null(strstr(out, "event=ready"));
  /* With the HSM answering right, the start of this suite's kmsd said so. */
  ck_assert_int_ge(count_in_log("event=selftest result=passed"), 1);
}
END_TEST

static Suite *
faults_suite(void)
{
  Suite *s = suite_create("faults");
  TCase *t = tcase_create("hsm");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_device_error_gives_unavailable_then_recovers);
  tcase_add_test(t, test_lost_sessions_give_unavailable_then_relogin_and_reload);
  tcase_add_test(t, test_removed_device_gives_unavailable_then_recovers);
  tcase_add_test(t, test_slow_hsm_gives_unavailable_then_recovers);
  tcase_add_test(t, test_relogin_reads_the_pin_file_again);
  suite_add_tcase(s, t);
  t = tcase_create("crash");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_sigabrt_leaves_no_core_and_no_data_key_on_disk);
  tcase_add_test(t, test_wrong_hsm_answers_stop_kmsd_at_start);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  const char *shim = getenv("P11SHIM");
  const char *real = getenv("PKCS11_MODULE");
  if (shim == NULL || real == NULL) {
    fprintf(stderr, "P11SHIM and PKCS11_MODULE must be set\n");
    return 99;
  }
  char extra[1024];
  snprintf(extra, sizeof(extra),
           "log_level = debug\npkcs11_module = %s\nhsm_timeout_ms = 300\n"
           "audit_checkpoint_seconds = 1\n", shim);
  /* devenv.sh's key ceremony already goes through the shim (kmsd.conf names it). */
  setenv("P11SHIM_MODULE", real, 1);
  harness_setup(extra);
  harness_write_file("it-policy/faults.json", POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/it-policy", harness_dir());
  harness_append_conf(line);
  snprintf(control, sizeof(control), "%s/p11shim.control", harness_dir());
  setenv("P11SHIM_CONTROL", control, 1);
  harness_start_kmsd();
  officer = harness_client_no_retry("officer");
  svc = harness_client_no_retry("recording");
  if (officer == NULL || svc == NULL) {
    harness_stop_kmsd();
    return 99;
  }
  SRunner *sr = srunner_create(faults_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* the tests share the one kmsd process */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  tk_client_free(officer);
  tk_client_free(svc);
  if (harness_kmsd_alive()) {
    harness_stop_kmsd();
  }
  return harness_cleanup(failed);
}
