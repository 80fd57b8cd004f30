/* Unit tests of the audit log: durability, group commit, recovery, rotation, disk errors,
 * tampering. */
#include <check.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "hsm.h"
#include "kms_auditlog.h"
#include "kms_err.h"
#include "kms_note.h"

#define TOKEN_LABEL "tenantkms-audit-unit"
#define USER_PIN "audit-pin-4711"

static char g_dir[256];
static char g_pin_file[512];
static char g_log_dir[512];
static const char *g_module;

/* Per test (in the forked child): PKCS#11 sessions do not survive fork. */
static hsm *g_h;
static struct event_base *g_base;

static int
run_quiet(char *const argv[])
{
  pid_t pid = fork();
  int status = 0;
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execvp(argv[0], argv);
    _exit(127);
  }
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* put_file writes |text| (mode 0600); plain C, since suite_setup runs outside any test. */
static int
put_file(const char *path, const char *text)
{
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    return -1;
  }
  int ok = fputs(text, f) >= 0;
  ok = fclose(f) == 0 && ok;
  return ok && chmod(path, 0600) == 0 ? 0 : -1;
}

static void
suite_setup(void)
{
  char path[512], conf[1024];
  const char *tmp = getenv("TMPDIR");
  g_module = getenv("PKCS11_MODULE");
  if (g_module == NULL || g_module[0] == '\0') {
    g_module = "/usr/lib/softhsm/libsofthsm2.so";
  }
  snprintf(g_dir, sizeof(g_dir), "%s/test_audit.XXXXXX", tmp != NULL ? tmp : "/tmp");
  if (mkdtemp(g_dir) == NULL) {
    abort();
  }
  snprintf(path, sizeof(path), "%s/tokens", g_dir);
  mkdir(path, 0700);
  snprintf(conf, sizeof(conf),
           "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", path);
  snprintf(path, sizeof(path), "%s/softhsm2.conf", g_dir);
  if (put_file(path, conf) != 0) {
    abort();
  }
  setenv("SOFTHSM2_CONF", path, 1);
  char *argv[] = {"softhsm2-util", "--init-token", "--free",   "--label", TOKEN_LABEL,
                  "--pin",         USER_PIN,       "--so-pin", "so-0815", NULL};
  if (run_quiet(argv) != 0) {
    abort();
  }
  snprintf(g_pin_file, sizeof(g_pin_file), "%s/user.pin", g_dir);
  if (put_file(g_pin_file, USER_PIN "\n") != 0) {
    abort();
  }
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove(path);
}

static void
suite_teardown(void)
{
  nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int g_test_no;

static void
fixture_open(void)
{
  struct hsm_config cfg = {g_module, TOKEN_LABEL, g_pin_file, 1, false};
  char err[256];
  ck_assert_int_eq(evthread_use_pthreads(), 0);
  g_base = event_base_new();
  ck_assert_ptr_nonnull(g_base);
  ck_assert_msg(hsm_open(&g_h, &cfg, err, sizeof(err)) == KMS_OK, "hsm_open: %s", err);
  /* Each test gets its own log directory: tests run in forked children, maybe in parallel. */
  snprintf(g_log_dir, sizeof(g_log_dir), "%s/log-%d-%ld", g_dir, (int)getpid(), (long)++g_test_no);
}

static void
fixture_close(void)
{
  hsm_close(g_h);
  event_base_free(g_base);
  g_h = NULL;
  g_base = NULL;
}

static audit *
open_log(uint64_t rotate, unsigned cp_ms)
{
  struct audit_config cfg = {g_log_dir, "node-1", rotate, cp_ms, HSM_SIG_AUTO, NULL};
  char err[512] = "";
  audit *a = NULL;
  int r = audit_open(&a, &cfg, g_h, g_base, err, sizeof(err));
  ck_assert_msg(r == KMS_OK, "audit_open: %d %s", r, err);
  return a;
}

struct rec {
  struct audit_item item;
  int status;
  int done;
};

static size_t g_done;

static void
rec_done(struct audit_item *it, int status)
{
  struct rec *r = (struct rec *)it;
  r->status = status;
  r->done++;
  g_done++;
}

static void
submit(audit *a, struct rec *r, uint64_t id, Tkms__ContextEntry **ctx, size_t n_ctx)
{
  struct audit_fields f = {
      .request_id = id,
      .principal = "spiffe://tenantkms.dev/recording",
      .peer = "127.0.0.1:5555",
      .op = "GenerateDataKey",
      .tenant = "acme",
      .kek_version = 3,
      .context = ctx,
      .n_context = n_ctx,
      .status = 0,
  };
  memset(r, 0, sizeof(*r));
  r->item.done = rec_done;
  ck_assert_int_eq(audit_submit(a, &r->item, &f), KMS_OK);
}

/* wait_done runs the loop until |n| completions arrived (or 20 s). */
static void
wait_done(size_t n)
{
  for (int i = 0; i < 20000 && g_done < n; i++) {
    event_base_loop(g_base, EVLOOP_NONBLOCK);
    if (g_done < n) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  ck_assert_uint_ge(g_done, n);
}

static void
log_files(char paths[][600], size_t *n)
{
  *n = 0;
  for (unsigned i = 1; i < 100; i++) {
    snprintf(paths[*n], 600, "%s/audit-%08u.jsonl", g_log_dir, i);
    if (access(paths[*n], F_OK) != 0) {
      break;
    }
    (*n)++;
  }
}

/* verify_dir checks the log as kmsctl would: checkpoints signed, tree recomputed. */
static int
verify_dir(uint64_t *out_size, uint64_t *out_cps)
{
  char paths[100][600], path[600], why[512];
  const char *pp[100];
  size_t n = 0, n_cps = 0;
  struct kms_note_vkey k;
  struct kms_auditlog_cp *cps = NULL;
  struct kms_auditlog_result res;
  uint64_t good = 0;
  FILE *f;
  char vk[512];

  snprintf(path, sizeof(path), "%s/verifier-key", g_log_dir);
  f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(fgets(vk, sizeof(vk), f));
  fclose(f);
  ck_assert_int_eq(kms_note_vkey_parse(&k, vk, strlen(vk)), KMS_OK);
  snprintf(path, sizeof(path), "%s/checkpoints", g_log_dir);
  int r = kms_auditlog_load_checkpoints(path, &k, &cps, &n_cps, &good, why, sizeof(why));
  ck_assert_msg(r == KMS_OK, "checkpoints: %s", why);
  log_files(paths, &n);
  for (size_t i = 0; i < n; i++) {
    pp[i] = paths[i];
  }
  r = kms_auditlog_replay(pp, n, cps, n_cps, &res);
  free(cps);
  if (out_size != NULL) {
    *out_size = res.tree.size;
  }
  if (out_cps != NULL) {
    *out_cps = res.checkpoints_matched;
  }
  return r;
}

static char *
slurp(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
  b[n] = '\0';
  fclose(f);
  *len = (size_t)n;
  return b;
}

START_TEST(test_records_are_durable_in_order_and_verify)
{
  audit *a = open_log(0, 0);
  static struct rec recs[1000];
  g_done = 0;
  for (int i = 0; i < 1000; i++) {
    submit(a, &recs[i], (uint64_t)i + 1, NULL, 0);
  }
  wait_done(1000);
  for (int i = 0; i < 1000; i++) {
    ck_assert_int_eq(recs[i].done, 1);
    ck_assert_int_eq(recs[i].status, KMS_OK);
    ck_assert_uint_eq(recs[i].item.seq, (uint64_t)i);
  }
  ck_assert_uint_eq(audit_size(a), 1000);
  ck_assert(audit_healthy(a, NULL, 0));
  ck_assert_uint_eq(audit_pending(a), 0);
  audit_close(a); /* signs the final checkpoint */
  uint64_t size = 0, ncp = 0;
  ck_assert_int_eq(verify_dir(&size, &ncp), KMS_OK);
  ck_assert_uint_eq(size, 1000);
  ck_assert_uint_ge(ncp, 1);
}
END_TEST

START_TEST(test_record_format_and_context_values_hmacd)
{
  audit *a = open_log(0, 0);
  Tkms__ContextEntry e1 = TKMS__CONTEXT_ENTRY__INIT, e2 = TKMS__CONTEXT_ENTRY__INIT;
  Tkms__ContextEntry *ctx[2] = {&e1, &e2};
  struct rec r;
  e1.key = "session_id";
  e1.value = "s-very-secret-42";
  e2.key = "purpose";
  e2.value = "tran\"scription";
  g_done = 0;
  submit(a, &r, 77, ctx, 2);
  wait_done(1);
  audit_close(a);
  char path[600];
  size_t len;
  snprintf(path, sizeof(path), "%s/audit-00000001.jsonl", g_log_dir);
  char *b = slurp(path, &len);
  ck_assert_ptr_null(strstr(b, "s-very-secret-42"));
  ck_assert_ptr_null(strstr(b, "scription"));
  ck_assert_ptr_nonnull(strstr(b, "{\"seq\":0,\"v\":1,\"time\":\""));
  ck_assert_ptr_nonnull(strstr(b, "\"request_id\":77,\"principal\":\"spiffe://tenantkms.dev/"
                                  "recording\",\"peer\":\"127.0.0.1:5555\",\"op\":"
                                  "\"GenerateDataKey\",\"tenant\":\"acme\",\"kek_version\":3,"
                                  "\"session\":null,\"context\":{\"session_id\":\""));
  ck_assert_ptr_nonnull(strstr(b, "\"outcome\":\"ok\",\"status\":\"OK\",\"code\":0}\n"));
  ck_assert_int_eq(b[len - 1], '\n');
  ck_assert_ptr_eq(strchr(b, '\n'), b + len - 1); /* one line */
  /* The same value gives the same HMAC: an auditor holding the key can match records. */
  free(b);
}
END_TEST

START_TEST(test_restart_continues_the_tree_and_cuts_a_torn_line)
{
  audit *a = open_log(0, 0);
  static struct rec recs[15];
  g_done = 0;
  for (int i = 0; i < 10; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(10);
  audit_close(a);
  /* A crash in the middle of a write: half a record at the end, never acknowledged. */
  char path[600];
  snprintf(path, sizeof(path), "%s/audit-00000001.jsonl", g_log_dir);
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  FILE *f = fopen(path, "a");
  fputs("{\"seq\":10,\"v\":1,\"time\":\"2025-", f);
  fclose(f);
  a = open_log(0, 0);
  struct stat st2;
  ck_assert_int_eq(stat(path, &st2), 0);
  ck_assert_int_eq(st2.st_size, st.st_size);
  ck_assert_uint_eq(audit_size(a), 10);
  for (int i = 10; i < 15; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(15);
  ck_assert_uint_eq(recs[14].item.seq, 14);
  audit_close(a);
  uint64_t size = 0, ncp = 0;
  ck_assert_int_eq(verify_dir(&size, &ncp), KMS_OK);
  ck_assert_uint_eq(size, 15);
  ck_assert_uint_ge(ncp, 2);
}
END_TEST

START_TEST(test_rotation_continues_one_tree_across_files)
{
  audit *a = open_log(2000, 0);
  static struct rec recs[100];
  g_done = 0;
  for (int i = 0; i < 100; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
    wait_done((size_t)i + 1); /* one batch each, so rotation happens often */
  }
  audit_close(a);
  char paths[100][600];
  size_t n = 0;
  log_files(paths, &n);
  ck_assert_uint_ge(n, 5);
  uint64_t size = 0, ncp = 0;
  ck_assert_int_eq(verify_dir(&size, &ncp), KMS_OK);
  ck_assert_uint_eq(size, 100);
  ck_assert_uint_ge(ncp, n); /* one per rotation plus the final one */
  /* And a restart picks up the last file and the tree. */
  a = open_log(2000, 0);
  ck_assert_uint_eq(audit_size(a), 100);
  audit_close(a);
}
END_TEST

/* Writes 100 records, one batch each, into files of about 2000 bytes; returns the file count. */
static size_t
fill_rotated_log(void)
{
  audit *a = open_log(2000, 0);
  static struct rec recs[100];
  g_done = 0;
  for (int i = 0; i < 100; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
    wait_done((size_t)i + 1);
  }
  audit_close(a);
  char paths[100][600];
  size_t n = 0;
  log_files(paths, &n);
  ck_assert_uint_ge(n, 5);
  return n;
}

START_TEST(test_startup_reads_only_the_files_after_the_last_frontier)
{
  size_t n = fill_rotated_log();
  char path[600];
  struct stat st;
  /* Every closed file has its frontier; the open one has none. */
  for (size_t i = 1; i < n; i++) {
    snprintf(path, sizeof(path), "%s/frontier-%08zu", g_log_dir, i);
    ck_assert_int_eq(stat(path, &st), 0);
  }
  snprintf(path, sizeof(path), "%s/frontier-%08zu", g_log_dir, n);
  ck_assert_int_ne(stat(path, &st), 0);
  /* Alter the first file: offline verification finds it; start-up no longer reads it. */
  snprintf(path, sizeof(path), "%s/audit-00000001.jsonl", g_log_dir);
  size_t len;
  char *b = slurp(path, &len);
  char *t = strstr(b, "\"tenant\":\"acme\"");
  ck_assert_ptr_nonnull(t);
  t[11] = 'X';
  ck_assert_int_eq(put_file(path, b), 0);
  free(b);
  ck_assert_int_eq(verify_dir(NULL, NULL), KMS_ERR_DECRYPT);
  audit *a = open_log(2000, 0);
  ck_assert_uint_eq(audit_size(a), 100);
  audit_close(a);
}
END_TEST

START_TEST(test_altered_frontier_falls_back_to_reading_every_file)
{
  size_t n = fill_rotated_log();
  char path[600];
  size_t len;
  snprintf(path, sizeof(path), "%s/frontier-%08zu", g_log_dir, n - 1);
  char *b = slurp(path, &len);
  /* Change one hex digit of the last node: it no longer matches the signed checkpoint. */
  char *nl = strrchr(b, ' ');
  ck_assert_ptr_nonnull(nl);
  nl[1] = nl[1] == '0' ? '1' : '0';
  ck_assert_int_eq(put_file(path, b), 0);
  free(b);
  audit *a = open_log(2000, 0);
  ck_assert_uint_eq(audit_size(a), 100);
  audit_close(a);
  /* The tree went on from the right root: the whole log verifies. */
  uint64_t size = 0;
  ck_assert_int_eq(verify_dir(&size, NULL), KMS_OK);
  ck_assert_uint_eq(size, 100);
  /* And with an old file altered as well, the full replay refuses to start. */
  snprintf(path, sizeof(path), "%s/audit-00000001.jsonl", g_log_dir);
  b = slurp(path, &len);
  char *t = strstr(b, "\"tenant\":\"acme\"");
  t[11] = 'X';
  ck_assert_int_eq(put_file(path, b), 0);
  free(b);
  snprintf(path, sizeof(path), "%s/frontier-%08zu", g_log_dir, n - 1);
  ck_assert_int_eq(put_file(path, "tenantkms audit frontier v1\nsize 3\n"), 0);
  struct audit_config cfg = {g_log_dir, "node-1", 2000, 0, HSM_SIG_AUTO, NULL};
  char err[512] = "";
  audit *a2 = NULL;
  ck_assert_int_eq(audit_open(&a2, &cfg, g_h, g_base, err, sizeof(err)),
                   KMS_ERR_FAILED_PRECONDITION);
}
END_TEST

START_TEST(test_frontier_text_round_trips_and_parses_strictly)
{
  static const uint64_t sizes[] = {0, 1, 2, 5, 64, 1000003};
  for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
    struct kms_merkle_frontier f, g;
    kms_merkle_frontier_init(&f);
    for (uint64_t i = 0; i < sizes[k]; i++) {
      uint8_t leaf[KMS_MERKLE_HASH_LEN];
      memset(leaf, (int)(i & 0xff), sizeof(leaf));
      leaf[0] = (uint8_t)(i >> 8);
      kms_merkle_frontier_append(&f, leaf);
    }
    char text[KMS_AUDIT_FRONTIER_MAX];
    size_t len = 0;
    ck_assert_int_eq(kms_auditlog_frontier_format(&f, text, sizeof(text), &len), KMS_OK);
    ck_assert_int_eq(kms_auditlog_frontier_parse(text, len, &g), KMS_OK);
    uint8_t r1[KMS_MERKLE_HASH_LEN], r2[KMS_MERKLE_HASH_LEN];
    kms_merkle_frontier_root(&f, r1);
    kms_merkle_frontier_root(&g, r2);
    ck_assert_uint_eq(g.size, f.size);
    ck_assert_mem_eq(r1, r2, sizeof(r1));
    if (len > 40) {
      /* A missing node, a cut line, an extra line are all refused. */
      ck_assert_int_ne(kms_auditlog_frontier_parse(text, len - 1, &g), KMS_OK);
      char longer[KMS_AUDIT_FRONTIER_MAX + 8];
      memcpy(longer, text, len);
      memcpy(longer + len, "0 ab\n", 5);
      ck_assert_int_ne(kms_auditlog_frontier_parse(longer, len + 5, &g), KMS_OK);
    }
  }
  struct kms_merkle_frontier g;
  ck_assert_int_ne(kms_auditlog_frontier_parse("tenantkms audit frontier v1\nsize 1\n", 35, &g),
                   KMS_OK);
  ck_assert_int_ne(kms_auditlog_frontier_parse("other\nsize 0\n", 13, &g), KMS_OK);
  ck_assert_int_eq(kms_auditlog_frontier_parse("tenantkms audit frontier v1\nsize 0\n", 35, &g),
                   KMS_OK);
  ck_assert_uint_eq(g.size, 0);
}
END_TEST

START_TEST(test_disk_full_fails_the_batch_then_recovers_by_itself)
{
  audit *a = open_log(0, 0);
  static struct rec recs[30];
  char why[256];
  g_done = 0;
  for (int i = 0; i < 10; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(10);
  char path[600];
  struct stat st;
  snprintf(path, sizeof(path), "%s/audit-00000001.jsonl", g_log_dir);
  ck_assert_int_eq(stat(path, &st), 0);
  /* A file-size limit stands in for a full disk: the next write gets EFBIG. */
  struct rlimit small = {(rlim_t)st.st_size + 100, RLIM_INFINITY};
  ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
  for (int i = 10; i < 20; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(20);
  for (int i = 10; i < 20; i++) {
    ck_assert_int_eq(recs[i].status, KMS_ERR_UNAVAILABLE);
  }
  ck_assert(!audit_healthy(a, why, sizeof(why)));
  ck_assert_ptr_nonnull(strstr(why, "too large"));
  struct stat st2;
  ck_assert_int_eq(stat(path, &st2), 0);
  ck_assert_int_eq(st2.st_size, st.st_size); /* the partial batch was cut off */
  ck_assert_uint_eq(audit_size(a), 10);
  /* Space again: the next records are written, without a restart. */
  struct rlimit big = {RLIM_INFINITY, RLIM_INFINITY};
  ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &big), 0);
  for (int i = 20; i < 30; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(30);
  for (int i = 20; i < 30; i++) {
    ck_assert_int_eq(recs[i].status, KMS_OK);
    ck_assert_uint_eq(recs[i].item.seq, (uint64_t)i - 10);
  }
  ck_assert(audit_healthy(a, NULL, 0));
  audit_close(a);
  uint64_t size = 0;
  ck_assert_int_eq(verify_dir(&size, NULL), KMS_OK);
  ck_assert_uint_eq(size, 20);
}
END_TEST

START_TEST(test_altered_log_refuses_to_start)
{
  audit *a = open_log(0, 0);
  static struct rec recs[5];
  g_done = 0;
  for (int i = 0; i < 5; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(5);
  audit_close(a);
  char path[600];
  size_t len;
  snprintf(path, sizeof(path), "%s/audit-00000001.jsonl", g_log_dir);
  char *b = slurp(path, &len);
  char *t = strstr(b, "\"tenant\":\"acme\"");
  t[11] = 'X';
  ck_assert_int_eq(put_file(path, b), 0);
  free(b);
  ck_assert_int_eq(verify_dir(NULL, NULL), KMS_ERR_DECRYPT);
  struct audit_config cfg = {g_log_dir, "node-1", 0, 0, HSM_SIG_AUTO, NULL};
  char err[512] = "";
  audit *a2 = NULL;
  ck_assert_int_eq(audit_open(&a2, &cfg, g_h, g_base, err, sizeof(err)),
                   KMS_ERR_FAILED_PRECONDITION);
  ck_assert_ptr_nonnull(strstr(err, "do not hash to the root"));
}
END_TEST

START_TEST(test_ecdsa_checkpoints_verify_too)
{
  struct audit_config cfg = {g_log_dir, "node-ec", 0, 0, HSM_SIG_ECDSA_P256, "test-audit-ec-v1"};
  char err[512] = "";
  audit *a = NULL;
  int r = audit_open(&a, &cfg, g_h, g_base, err, sizeof(err));
  ck_assert_msg(r == KMS_OK, "%s", err);
  static struct rec recs[3];
  g_done = 0;
  for (int i = 0; i < 3; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(3);
  audit_close(a);
  uint64_t size = 0;
  ck_assert_int_eq(verify_dir(&size, NULL), KMS_OK);
  ck_assert_uint_eq(size, 3);
  char path[600], vk[512];
  snprintf(path, sizeof(path), "%s/verifier-key", g_log_dir);
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(fgets(vk, sizeof(vk), f));
  fclose(f);
  struct kms_note_vkey k;
  ck_assert_int_eq(kms_note_vkey_parse(&k, vk, strlen(vk)), KMS_OK);
  ck_assert_uint_eq(k.type, KMS_NOTE_SIG_ECDSA);
}
END_TEST

static double
now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Not a pass/fail bar: prints what group commit buys on this disk. */
START_TEST(test_group_commit_throughput)
{
  audit *a = open_log(0, 0);
  enum { SEQ = 200, BULK = 20000 };
  static struct rec recs[SEQ + BULK];
  g_done = 0;
  double t0 = now_s();
  for (int i = 0; i < SEQ; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
    wait_done((size_t)i + 1);
  }
  double t1 = now_s();
  for (int i = SEQ; i < SEQ + BULK; i++) {
    submit(a, &recs[i], (uint64_t)i, NULL, 0);
  }
  wait_done(SEQ + BULK);
  double t2 = now_s();
  audit_close(a);
  fprintf(stderr,
          "# audit: one record per fdatasync: %.0f records/s; group commit: %.0f records/s\n",
          SEQ / (t1 - t0), BULK / (t2 - t1));
  ck_assert_int_eq(verify_dir(NULL, NULL), KMS_OK);
}
END_TEST

/* The context-value HMAC, pinned: a prepared key must give what HMAC() always gave. */
START_TEST(test_context_hmac_output_is_pinned)
{
  uint8_t k[32];
  char hex[33];
  for (size_t i = 0; i < sizeof(k); i++) {
    k[i] = (uint8_t)i;
  }
  struct evp_mac_ctx_st *ctx = audit_hmac_prepare(k, sizeof(k));
  ck_assert_ptr_nonnull(ctx);
  /* HMAC-SHA256(00..1f, "session_id" 0x00 "s-42")[:16], computed independently (Python hmac). */
  ck_assert_int_eq(audit_hmac_compute(ctx, "session_id", "s-42", hex), KMS_OK);
  ck_assert_str_eq(hex, "1b19dd04aca99fe85479b248dc3706cb");
  /* The prepared context is reusable: same again, and an empty value. */
  ck_assert_int_eq(audit_hmac_compute(ctx, "session_id", "s-42", hex), KMS_OK);
  ck_assert_str_eq(hex, "1b19dd04aca99fe85479b248dc3706cb");
  ck_assert_int_eq(audit_hmac_compute(ctx, "purpose", "", hex), KMS_OK);
  ck_assert_str_eq(hex, "7e16bef0902f89be1d6a9e57046a26ed");
  audit_hmac_release(ctx);
}
END_TEST

static Suite *
audit_suite(void)
{
  Suite *s = suite_create("audit");
  TCase *tc = tcase_create("audit");
  tcase_add_checked_fixture(tc, fixture_open, fixture_close);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_records_are_durable_in_order_and_verify);
  tcase_add_test(tc, test_record_format_and_context_values_hmacd);
  tcase_add_test(tc, test_restart_continues_the_tree_and_cuts_a_torn_line);
  tcase_add_test(tc, test_rotation_continues_one_tree_across_files);
  tcase_add_test(tc, test_startup_reads_only_the_files_after_the_last_frontier);
  tcase_add_test(tc, test_altered_frontier_falls_back_to_reading_every_file);
  tcase_add_test(tc, test_frontier_text_round_trips_and_parses_strictly);
  tcase_add_test(tc, test_disk_full_fails_the_batch_then_recovers_by_itself);
  tcase_add_test(tc, test_altered_log_refuses_to_start);
  tcase_add_test(tc, test_ecdsa_checkpoints_verify_too);
  tcase_add_test(tc, test_group_commit_throughput);
  tcase_add_test(tc, test_context_hmac_output_is_pinned);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  suite_setup();
  SRunner *sr = srunner_create(audit_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  suite_teardown();
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
