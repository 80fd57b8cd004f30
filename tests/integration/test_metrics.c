/* Integration tests: the metrics/health HTTP port, and keystore backup under load restored on a second kmsd. */
#include <check.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "tenantkey.h"
#include "tk_internal.h"

/*
 * kmsd runs on the fault shim (tests/shim/p11shim.c) so /readyz can be seen
 * turning 503 while the HSM fails. Tenant names carry a marker that must
 * never appear in the metrics text.
 */
#define POLICY                                                                               \
  "{\"version\": 1, \"rules\": ["                                                            \
  "{\"id\": \"svc\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/recording\", " \
  "\"operations\": [\"GenerateDataKey\", \"Decrypt\", \"Health\"], \"tenants\": \"all\"}, "   \
  "{\"id\": \"officer\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/officer\", " \
  "\"operations\": [\"CreateTenant\", \"Health\", \"Backup\"], \"tenants\": \"all\"}]}\n"

#define MARKER "zqxsecrettenant"
#define TRIES 400
#define TRY_PAUSE_MS 25
#define N_TENANTS 4
#define BLOBS_PER_TENANT 5

static tk_client *officer, *svc;
static char control[600];
static int metrics_port;

/* The shim rereads its control file (DIR/p11shim.control), replaced whole by rename. */
static void
set_fault(const char *content)
{
  harness_write_file("p11shim.control", content);
}

/* The metrics port from kmsd's "event=metrics_ready listen=127.0.0.1:PORT" line. */
static int
find_metrics_port(void)
{
  char path[512], line[1024];
  int port = 0;
  snprintf(path, sizeof(path), "%s/kmsd.log", harness_dir());
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    return 0;
  }
  while (fgets(line, sizeof(line), f) != NULL) {
    const char *p = strstr(line, "event=metrics_ready listen=127.0.0.1:");
    if (p != NULL) {
      port = atoi(p + strlen("event=metrics_ready listen=127.0.0.1:"));
    }
  }
  fclose(f);
  return port;
}

/* http sends one request; returns the status code and the body (malloc) in *body. */
static int
http(const char *method, const char *path, char **body)
{
  struct sockaddr_in sa;
  char req[256];
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  int code = -1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  ck_assert_ptr_nonnull(buf);
  ck_assert_int_ge(fd, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)metrics_port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n", method, path);
  ck_assert_int_eq(write(fd, req, (size_t)n), n);
  for (;;) {
    if (len + 1 >= cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      ck_assert_ptr_nonnull(buf);
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      break;
    }
    len += (size_t)r;
  }
  close(fd);
  buf[len] = '\0';
  if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1) {
    code = -1;
  }
  char *b = strstr(buf, "\r\n\r\n");
  *body = strdup(b != NULL ? b + 4 : "");
  free(buf);
  return code;
}

/* metric_value: the value of the sample whose line starts with |prefix| (-1: absent). */
static double
metric_value(const char *text, const char *prefix)
{
  for (const char *p = text; p != NULL && *p != '\0';) {
    if (strncmp(p, prefix, strlen(prefix)) == 0 && p[strlen(prefix)] == ' ') {
      return strtod(p + strlen(prefix) + 1, NULL);
    }
    p = strchr(p, '\n');
    p = p != NULL ? p + 1 : NULL;
  }
  return -1;
}

static char *
scrape(void)
{
  char *body = NULL;
  ck_assert_int_eq(http("GET", "/metrics", &body), 200);
  return body;
}

static void
generate_ok(tk_client *c, const char *tenant, uint8_t pt[32], uint8_t wrapped[65])
{
  tk_data_key *k = NULL;
  size_t l = 0;
  int r = tk_data_key_generate(c, &k, tenant, NULL, 1);
  ck_assert_msg(r == TK_OK, "generate: %s", tk_strerror(r));
  memcpy(pt, tk_data_key_plaintext(k, &l), 32);
  ck_assert_uint_eq(l, 32);
  memcpy(wrapped, tk_data_key_wrapped(k, &l), 65);
  ck_assert_uint_eq(l, 65);
  tk_data_key_free(k);
}

START_TEST(test_metrics_count_requests_without_tenant_names)
{
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, MARKER "-a");
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
  char *before = scrape();
  double gen0 = metric_value(before, "kmsd_requests_total{operation=\"GenerateDataKey\","
                                     "status=\"OK\"}");
  double cnt0 = metric_value(before, "kmsd_request_duration_seconds_count{operation="
                                     "\"GenerateDataKey\"}");
  free(before);
  uint8_t pt[32], w[65];
  for (int i = 0; i < 5; i++) {
    generate_ok(svc, MARKER "-a", pt, w);
  }
  tk_data_key *d = NULL;
  ck_assert_int_eq(tk_data_key_decrypt(svc, &d, MARKER "-a", NULL, w, 65), TK_OK);
  tk_data_key_free(d);
  /* Refused: the service may not create tenants. */
  ck_assert_int_eq(tk_tenant_create(svc, &v, MARKER "-denied"), TK_EPERM);
  /* No such tenant. */
  r = tk_data_key_generate(svc, &d, MARKER "-missing", NULL, 1);
  ck_assert_int_ne(r, TK_OK);
  tk_data_key_free(d);

  char *text = scrape();
  double gen1 = metric_value(text, "kmsd_requests_total{operation=\"GenerateDataKey\","
                                   "status=\"OK\"}");
  ck_assert_msg(gen1 >= (gen0 < 0 ? 0 : gen0) + 5, "GenerateDataKey OK: %f -> %f", gen0, gen1);
  ck_assert_double_ge(metric_value(text, "kmsd_requests_total{operation=\"Decrypt\","
                                         "status=\"OK\"}"), 1);
  ck_assert_double_ge(metric_value(text, "kmsd_requests_total{operation=\"CreateTenant\","
                                         "status=\"PERMISSION_DENIED\"}"), 1);
  double cnt1 = metric_value(text, "kmsd_request_duration_seconds_count{operation="
                                   "\"GenerateDataKey\"}");
  ck_assert_double_ge(cnt1, (cnt0 < 0 ? 0 : cnt0) + 5);
  ck_assert_double_eq(metric_value(text, "kmsd_request_duration_seconds_bucket{operation="
                                         "\"GenerateDataKey\",le=\"+Inf\"}"), cnt1);
  ck_assert_double_ge(metric_value(text, "kmsd_audit_commit_duration_seconds_count"), 6);
  ck_assert_double_eq(metric_value(text, "kmsd_hsm_up"), 1);
  ck_assert_double_ge(metric_value(text, "kmsd_hsm_errors_total"), 0);
  ck_assert_double_ge(metric_value(text, "kmsd_worker_queue_depth"), 0);
  ck_assert_double_eq(metric_value(text, "kmsd_audit_up"), 1);
  ck_assert_double_ge(metric_value(text, "kmsd_open_connections"), 1);
  ck_assert_msg(strstr(text, "# TYPE kmsd_requests_total counter") != NULL, "no TYPE line");
  /* Labels name operations and statuses only: no tenant, principal or session. */
  ck_assert_msg(strstr(text, MARKER) == NULL, "a tenant name leaked into /metrics");
  ck_assert_msg(strstr(text, "spiffe") == NULL, "a principal leaked into /metrics");
  free(text);
}
END_TEST

START_TEST(test_health_endpoints_and_methods)
{
  char *body = NULL;
  ck_assert_int_eq(http("GET", "/healthz", &body), 200);
  free(body);
  ck_assert_int_eq(http("GET", "/readyz", &body), 200);
  ck_assert_str_eq(body, "ready\n");
  free(body);
  ck_assert_int_eq(http("GET", "/readyz?x=1", &body), 200);
  free(body);
  ck_assert_int_eq(http("GET", "/nope", &body), 404);
  free(body);
  ck_assert_int_eq(http("GET", "/metrics/../x", &body), 404);
  free(body);
  ck_assert_int_eq(http("POST", "/metrics", &body), 405);
  free(body);
  ck_assert_int_eq(http("DELETE", "/readyz", &body), 405);
  free(body);
}
END_TEST

START_TEST(test_readyz_503_while_the_hsm_fails)
{
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, MARKER "-f");
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
  uint8_t pt[32], w[65];
  generate_ok(svc, MARKER "-f", pt, w);
  set_fault("fault = device_error\n");
  r = TK_OK;
  for (int i = 0; i < TRIES && r != TK_EUNAVAILABLE; i++) {
    tk_data_key *k = NULL;
    r = tk_data_key_generate(svc, &k, MARKER "-f", NULL, 1);
    tk_data_key_free(k);
    if (r != TK_EUNAVAILABLE) {
      harness_pause_ms(TRY_PAUSE_MS);
    }
  }
  ck_assert_int_eq(r, TK_EUNAVAILABLE);
  char *body = NULL;
  ck_assert_int_eq(http("GET", "/readyz", &body), 503);
  ck_assert_msg(strncmp(body, "not ready: hsm", 14) == 0, "reason: %s", body);
  ck_assert_msg(strchr(body, '\n') == body + strlen(body) - 1, "not one line: %s", body);
  free(body);
  char *text = scrape();
  ck_assert_double_eq(metric_value(text, "kmsd_hsm_up"), 0);
  ck_assert_double_ge(metric_value(text, "kmsd_hsm_errors_total"), 1);
  ck_assert_double_ge(metric_value(text, "kmsd_requests_total{operation=\"GenerateDataKey\","
                                         "status=\"UNAVAILABLE\"}"), 1);
  free(text);
  /* Liveness is not readiness: the process runs. */
  ck_assert_int_eq(http("GET", "/healthz", &body), 200);
  free(body);
  set_fault("fault = none\n");
  r = TK_EUNAVAILABLE;
  for (int i = 0; i < TRIES && r != TK_OK; i++) {
    tk_data_key *k = NULL;
    r = tk_data_key_generate(svc, &k, MARKER "-f", NULL, 1);
    tk_data_key_free(k);
    if (r != TK_OK) {
      harness_pause_ms(TRY_PAUSE_MS);
    }
  }
  ck_assert_int_eq(r, TK_OK);
  ck_assert_int_eq(http("GET", "/readyz", &body), 200);
  free(body);
  text = scrape();
  ck_assert_double_ge(metric_value(text, "kmsd_hsm_recoveries_total"), 1);
  free(text);
}
END_TEST

/* The metrics port is loopback only: any other address stops kmsd at start, naming the key. */
START_TEST(test_non_loopback_metrics_listen_is_refused)
{
  char cmd[1024], out[4096] = "";
  snprintf(cmd, sizeof(cmd),
           "cp '%s/kmsd.conf' '%s/bad-metrics.conf' && "
           "echo 'metrics_listen = 0.0.0.0:0' >> '%s/bad-metrics.conf'",
           harness_dir(), harness_dir(), harness_dir());
  ck_assert_int_eq(system(cmd), 0);
  int st = harness_run_kmsd_once("bad-metrics.conf", out, sizeof(out));
  ck_assert_int_ne(st, 0);
  ck_assert_msg(strstr(out, "metrics_listen") != NULL && strstr(out, "loopback") != NULL,
                "kmsd said: %s", out);
}
END_TEST

/* ---- Backup ------------------------------------------------------------------------------- */

struct load {
  tk_client *c;
  volatile int stop;
  int generated, failed;
};

static void *
load_main(void *arg)
{
  struct load *l = arg;
  while (!l->stop) {
    tk_data_key *k = NULL;
    char tenant[64];
    snprintf(tenant, sizeof(tenant), MARKER "-b%d", l->generated % N_TENANTS);
    if (tk_data_key_generate(l->c, &k, tenant, NULL, 1) == TK_OK) {
      l->generated++;
    } else {
      l->failed++;
    }
    tk_data_key_free(k);
  }
  return NULL;
}

static int
backup_call(Tkms__Response **resp)
{
  Tkms__Request req;
  Tkms__BackupRequest b;
  tkms__request__init(&req);
  tkms__backup_request__init(&b);
  req.op_case = TKMS__REQUEST__OP_BACKUP;
  req.backup = &b;
  return tk_client_call(officer, &req, resp);
}

static void
run(const char *cmd)
{
  ck_assert_msg(system(cmd) == 0, "failed: %s", cmd);
}

START_TEST(test_backup_under_load_restores_on_a_second_kmsd)
{
  static uint8_t pts[N_TENANTS][BLOBS_PER_TENANT][32], blobs[N_TENANTS][BLOBS_PER_TENANT][65];
  char tenant[64], cmd[2048], path[1024];
  uint32_t v = 0;
  Tkms__Response *resp = NULL;

  /* Without permission: the service identity may not take snapshots. */
  {
    Tkms__Request req;
    Tkms__BackupRequest b;
    tkms__request__init(&req);
    tkms__backup_request__init(&b);
    req.op_case = TKMS__REQUEST__OP_BACKUP;
    req.backup = &b;
    Tkms__Response *denied = NULL;
    ck_assert_int_eq(tk_client_call(svc, &req, &denied), TK_EPERM);
  }
  for (int t = 0; t < N_TENANTS; t++) {
    snprintf(tenant, sizeof(tenant), MARKER "-b%d", t);
    int r = tk_tenant_create(officer, &v, tenant);
    ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
    for (int i = 0; i < BLOBS_PER_TENANT; i++) {
      generate_ok(svc, tenant, pts[t][i], blobs[t][i]);
    }
  }
  struct load l = {harness_client_no_retry("recording"), 0, 0, 0};
  ck_assert_ptr_nonnull(l.c);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, load_main, &l), 0);
  harness_pause_ms(200);
  int r = backup_call(&resp);
  ck_assert_msg(r == TK_OK, "backup: %s", tk_strerror(r));
  /* kmsctl too, copying the snapshot and checking its SHA-256. */
  const char *kmsctl = getenv("KMSCTL");
  if (kmsctl != NULL) {
    snprintf(cmd, sizeof(cmd), "'%s' --config '%s' backup '%s/copy.db' > '%s/kmsctl.out'",
             kmsctl, harness_client_conf("clients", "officer"), harness_dir(), harness_dir());
    run(cmd);
    snprintf(path, sizeof(path), "%s/kmsctl.out", harness_dir());
    ck_assert(harness_file_contains(path, (const uint8_t *)"sha256 verified", 15));
  }
  harness_pause_ms(200);
  l.stop = 1;
  pthread_join(th, NULL);
  tk_client_free(l.c);
  ck_assert_int_gt(l.generated, 0);
  ck_assert_int_eq(l.failed, 0);
  ck_assert_ptr_nonnull(resp->backup);
  ck_assert_uint_gt(resp->backup->size, 0);
  ck_assert_uint_eq(strlen(resp->backup->sha256), 64);
  struct stat st;
  ck_assert_int_eq(stat(resp->backup->path, &st), 0);
  ck_assert_uint_eq((uint64_t)st.st_size, resp->backup->size);
  ck_assert_uint_eq(st.st_mode & 077, 0);
  snprintf(cmd, sizeof(cmd), "test \"$(sha256sum '%s' | cut -d' ' -f1)\" = '%s'",
           resp->backup->path, resp->backup->sha256);
  run(cmd);
  /* A tenant made after the snapshot is not in it. */
  ck_assert_int_eq(tk_tenant_create(officer, &v, MARKER "-after"), TK_OK);

  /* Restore (docs/RUNBOOK.md) on a second kmsd: a copy of the token, the snapshot. */
  ck_assert_int_eq(harness_stop_kmsd(), 0);
  const char *d = harness_dir();
  snprintf(cmd, sizeof(cmd),
           "set -e; mkdir -p '%s/restore/audit'; cp -a '%s/hsm/tokens' '%s/restore/tokens'; "
           "sed 's#^directories.tokendir.*#directories.tokendir = %s/restore/tokens#' "
           "'%s/hsm/softhsm2.conf' > '%s/restore/softhsm2.conf'; "
           "cp '%s' '%s/restore/keystore.db'; rm -f '%s/restore/keystore.db-wal' "
           "'%s/restore/keystore.db-shm'",
           d, d, d, d, d, d, resp->backup->path, d, d, d);
  run(cmd);
  tk_client_response_free(resp);
  snprintf(path, sizeof(path), "%s/restore/softhsm2.conf", d);
  setenv("SOFTHSM2_CONF", path, 1);
  snprintf(cmd, sizeof(cmd), "keystore = sqlite:%s/restore/keystore.db", d);
  harness_append_conf(cmd);
  snprintf(cmd, sizeof(cmd), "audit_dir = %s/restore/audit", d);
  harness_append_conf(cmd);
  harness_start_kmsd();
  tk_client_free(svc);
  tk_client_free(officer);
  svc = harness_client_no_retry("recording");
  officer = harness_client_no_retry("officer");
  ck_assert_ptr_nonnull(svc);
  ck_assert_ptr_nonnull(officer);
  for (int t = 0; t < N_TENANTS; t++) {
    snprintf(tenant, sizeof(tenant), MARKER "-b%d", t);
    for (int i = 0; i < BLOBS_PER_TENANT; i++) {
      tk_data_key *k = NULL;
      size_t len = 0;
      r = tk_data_key_decrypt(svc, &k, tenant, NULL, blobs[t][i], 65);
      ck_assert_msg(r == TK_OK, "restored %s blob %d: %s", tenant, i, tk_strerror(r));
      ck_assert_mem_eq(tk_data_key_plaintext(k, &len), pts[t][i], 32);
      tk_data_key_free(k);
    }
  }
  tk_data_key *k = NULL;
  ck_assert_int_eq(tk_data_key_generate(svc, &k, MARKER "-after", NULL, 1), TK_ENOTFOUND);
  tk_data_key_free(k);
}
END_TEST

static Suite *
metrics_suite(void)
{
  Suite *s = suite_create("metrics");
  TCase *t = tcase_create("metrics");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_metrics_count_requests_without_tenant_names);
  tcase_add_test(t, test_health_endpoints_and_methods);
  tcase_add_test(t, test_readyz_503_while_the_hsm_fails);
  tcase_add_test(t, test_non_loopback_metrics_listen_is_refused);
  tcase_add_test(t, test_backup_under_load_restores_on_a_second_kmsd);
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
           "pkcs11_module = %s\nhsm_timeout_ms = 300\nmetrics_listen = 127.0.0.1:0\n", shim);
  /* devenv.sh's key ceremony already goes through the shim (kmsd.conf names it). */
  setenv("P11SHIM_MODULE", real, 1);
  harness_setup(extra);
  harness_write_file("it-policy/metrics.json", POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/it-policy", harness_dir());
  harness_append_conf(line);
  snprintf(line, sizeof(line), "%s/backups", harness_dir());
  if (mkdir(line, 0700) != 0) {
    return 99;
  }
  snprintf(line, sizeof(line), "backup_dir = %s/backups", harness_dir());
  harness_append_conf(line);
  snprintf(control, sizeof(control), "%s/p11shim.control", harness_dir());
  setenv("P11SHIM_CONTROL", control, 1);
  harness_start_kmsd();
  metrics_port = find_metrics_port();
  officer = harness_client_no_retry("officer");
  svc = harness_client_no_retry("recording");
  if (officer == NULL || svc == NULL || metrics_port == 0) {
    fprintf(stderr, "setup failed (metrics port %d)\n", metrics_port);
    harness_stop_kmsd();
    return 99;
  }
  SRunner *sr = srunner_create(metrics_suite());
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
