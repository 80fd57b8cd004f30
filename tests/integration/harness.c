/* Builds a dev environment with the project's own scripts and runs kmsd as a child process. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

static char dir[256];
static pid_t kmsd_pid = -1;
static int kmsd_port;

static void
die(const char *what)
{
  fprintf(stderr, "harness: %s\n", what);
  exit(99);
}

static const char *
srcdir(void)
{
  const char *s = getenv("SRCDIR");
  return s != NULL ? s : ".";
}

void
harness_setup(const char *extra_conf)
{
  snprintf(dir, sizeof(dir), "%s/tkms-it.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(dir) == NULL) {
    die("mkdtemp");
  }
  if (extra_conf != NULL) {
    setenv("KMSD_EXTRA_CONF", extra_conf, 1);
  }
  /* ASan builds: kmsd's checkpoint signing hits a SoftHSM leak we cannot fix (tests/lsan.supp);
   * set before devenv.sh, whose key ceremony runs kmsctl. */
  char supp[600];
  snprintf(supp, sizeof(supp), "suppressions=%s/tests/lsan.supp:fast_unwind_on_malloc=0",
           srcdir());
  setenv("LSAN_OPTIONS", supp, 0);
  /* ASan reads fast_unwind_on_malloc from ASAN_OPTIONS only; without it the stacks stop
   * in libcrypto (no frame pointers) and the suppression cannot match. */
  const char *asan = getenv("ASAN_OPTIONS");
  if (asan == NULL || strstr(asan, "fast_unwind_on_malloc") == NULL) {
    char opts[600];
    snprintf(opts, sizeof(opts), "%s%sfast_unwind_on_malloc=0", asan != NULL ? asan : "",
             asan != NULL && asan[0] != '\0' ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
  }
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "'%s/scripts/lib/devenv.sh' '%s' 0 2>/dev/null && "
           "'%s/tests/integration/mkfixtures.sh' '%s' 2>/dev/null",
           srcdir(), dir, srcdir(), dir);
  if (system(cmd) != 0) {
    die("devenv.sh or mkfixtures.sh failed");
  }
  char conf[512];
  snprintf(conf, sizeof(conf), "%s/hsm/softhsm2.conf", dir);
  setenv("SOFTHSM2_CONF", conf, 1);
}

const char *
harness_dir(void)
{
  return dir;
}

int
harness_start_kmsd(void)
{
  const char *kmsd = getenv("KMSD");
  if (kmsd == NULL) {
    die("KMSD not set");
  }
  int pfd[2];
  if (pipe(pfd) != 0) {
    die("pipe");
  }
  char conf[512], log[512];
  snprintf(conf, sizeof(conf), "%s/kmsd.conf", dir);
  snprintf(log, sizeof(log), "%s/kmsd.log", dir);
  pid_t pid = fork();
  if (pid < 0) {
    die("fork");
  }
  if (pid == 0) {
    dup2(pfd[1], 1);
    FILE *f = fopen(log, "a");
    if (f != NULL) {
      dup2(fileno(f), 2);
    }
    close(pfd[0]);
    execl(kmsd, kmsd, "--config", conf, (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  kmsd_pid = pid;
  FILE *out = fdopen(pfd[0], "r");
  char line[256];
  kmsd_port = 0;
  while (fgets(line, sizeof(line), out) != NULL) {
    if (sscanf(line, "kmsd ready on 127.0.0.1:%d", &kmsd_port) == 1) {
      break;
    }
  }
  fclose(out); /* kmsd writes nothing else to stdout */
  if (kmsd_port == 0) {
    fprintf(stderr, "harness: kmsd did not become ready; see %s\n", log);
    die("kmsd start");
  }
  return kmsd_port;
}

int
harness_stop_kmsd(void)
{
  if (kmsd_pid < 0) {
    return -1;
  }
  kill(kmsd_pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 300; i++) {
    pid_t r = waitpid(kmsd_pid, &status, WNOHANG);
    if (r == kmsd_pid) {
      kmsd_pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  kill(kmsd_pid, SIGKILL);
  waitpid(kmsd_pid, &status, 0);
  kmsd_pid = -1;
  return -1;
}

int
harness_kmsd_pid(void)
{
  return (int)kmsd_pid;
}

int
harness_kmsd_alive(void)
{
  int status;
  return kmsd_pid > 0 && waitpid(kmsd_pid, &status, WNOHANG) == 0;
}

const char *
harness_client_conf(const char *certdir, const char *name)
{
  static char path[512];
  snprintf(path, sizeof(path), "%s/it-%s-%s.conf", dir, certdir, name);
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    die("writing client conf");
  }
  fprintf(f,
          "endpoint = 127.0.0.1:%d\nca = %s/pki/ca.crt\ncert = %s/pki/%s/%s.crt\n"
          "key = %s/pki/%s/%s.key\nconnect_timeout_ms = 3000\nrequest_timeout_ms = 10000\n",
          kmsd_port, dir, dir, certdir, name, dir, certdir, name);
  fclose(f);
  return path;
}

tk_client *
harness_client(const char *name)
{
  tk_client *c = NULL;
  char err[512];
  if (tk_client_new_from_file(&c, harness_client_conf("clients", name), err, sizeof(err)) !=
      TK_OK) {
    fprintf(stderr, "harness: %s\n", err);
    return NULL;
  }
  return c;
}

tk_client *
harness_client_no_retry(const char *name)
{
  const char *path = harness_client_conf("clients", name);
  FILE *f = fopen(path, "a");
  tk_client *c = NULL;
  char err[256] = "cannot append to the client configuration";
  if (f == NULL || fprintf(f, "retries = 0\n") < 0 || fclose(f) != 0 ||
      tk_client_new_from_file(&c, path, err, sizeof(err)) != TK_OK) {
    fprintf(stderr, "harness: client %s: %s\n", name, err);
    return NULL;
  }
  return c;
}

void
harness_pause_ms(long ms)
{
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

SSL *
harness_raw_connect(const char *certdir, const char *name)
{
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  char path[512];
  snprintf(path, sizeof(path), "%s/pki/ca.crt", dir);
  SSL_CTX_load_verify_locations(ctx, path, NULL);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (name != NULL) {
    snprintf(path, sizeof(path), "%s/pki/%s/%s.crt", dir, certdir, name);
    SSL_CTX_use_certificate_chain_file(ctx, path);
    snprintf(path, sizeof(path), "%s/pki/%s/%s.key", dir, certdir, name);
    SSL_CTX_use_PrivateKey_file(ctx, path, SSL_FILETYPE_PEM);
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)kmsd_port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL *ssl = SSL_new(ctx);
  SSL_CTX_free(ctx); /* the SSL keeps a reference */
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) {
    ERR_clear_error();
    harness_raw_close(ssl);
    return NULL;
  }
  return ssl;
}

void
harness_raw_close(SSL *ssl)
{
  if (ssl == NULL) {
    return;
  }
  int fd = SSL_get_fd(ssl);
  SSL_free(ssl);
  close(fd);
}

static int
read_n(SSL *ssl, uint8_t *p, size_t n)
{
  while (n > 0) {
    int r = SSL_read(ssl, p, (int)n);
    if (r <= 0) {
      ERR_clear_error();
      return -1;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

uint8_t *
harness_raw_read_frame(SSL *ssl, size_t *out_len)
{
  uint8_t h[4];
  *out_len = 0;
  if (read_n(ssl, h, 4) != 0) {
    return NULL;
  }
  size_t n = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
  if (n > (1u << 20)) {
    return NULL;
  }
  uint8_t *p = malloc(n > 0 ? n : 1);
  if (read_n(ssl, p, n) != 0) {
    free(p);
    return NULL;
  }
  *out_len = n;
  return p;
}

int
harness_file_contains(const char *path, const uint8_t *needle, size_t needle_len)
{
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    return 0;
  }
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
  size_t n = fread(buf, 1, sz > 0 ? (size_t)sz : 0, f);
  fclose(f);
  int found = memmem(buf, n, needle, needle_len) != NULL;
  free(buf);
  return found;
}

void
harness_append_conf(const char *line)
{
  char path[512];
  snprintf(path, sizeof(path), "%s/kmsd.conf", dir);
  FILE *f = fopen(path, "a");
  if (f == NULL) {
    die("appending to kmsd.conf");
  }
  fprintf(f, "%s\n", line);
  fclose(f);
}

static void
replace_file(const char *rel, const void *content, size_t len)
{
  char path[768], tmp[800];
  snprintf(path, sizeof(path), "%s/%s", dir, rel);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  char *slash = strrchr(path, '/');
  *slash = '\0';
  mkdir(path, 0755); /* the parent; EEXIST is fine */
  *slash = '/';
  FILE *f = fopen(tmp, "w");
  if (f == NULL || fwrite(content, 1, len, f) != len || fclose(f) != 0 || chmod(tmp, 0644) != 0 ||
      rename(tmp, path) != 0) {
    die("writing a file");
  }
}

void
harness_write_file(const char *rel, const char *content)
{
  replace_file(rel, content, strlen(content));
}

void
harness_copy_file(const char *from_rel, const char *to_rel)
{
  char path[768];
  snprintf(path, sizeof(path), "%s/%s", dir, from_rel);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    die("copy: cannot open the source");
  }
  char *buf = malloc(1u << 20);
  size_t n = fread(buf, 1, 1u << 20, f);
  fclose(f);
  replace_file(to_rel, buf, n);
  free(buf);
}

static long
log_size(void)
{
  char path[512];
  struct stat st;
  snprintf(path, sizeof(path), "%s/kmsd.log", dir);
  return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* The log from byte |from| on (malloc'd, NUL-terminated). */
static char *
log_since(long from)
{
  char path[512];
  snprintf(path, sizeof(path), "%s/kmsd.log", dir);
  long to = log_size();
  size_t n = to > from ? (size_t)(to - from) : 0;
  char *buf = calloc(1, n + 1);
  FILE *f = fopen(path, "rb");
  if (buf == NULL || f == NULL || fseek(f, from, SEEK_SET) != 0) {
    die("reading kmsd.log");
  }
  buf[fread(buf, 1, n, f)] = '\0';
  fclose(f);
  return buf;
}

char *
harness_sighup(void)
{
  long from = log_size();
  if (kmsd_pid < 0 || kill(kmsd_pid, SIGHUP) != 0) {
    die("SIGHUP");
  }
  for (int i = 0; i < 400; i++) {
    char *got = log_since(from);
    if (strstr(got, "event=tls_reloaded") != NULL || strstr(got, "event=tls_reload_failed") != NULL) {
      return got;
    }
    free(got);
    struct timespec ts = {0, 25 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  die("kmsd did not finish reloading within 10 s");
  return NULL;
}

int
harness_run_kmsd_once(const char *conf_rel, char *out, size_t out_len)
{
  const char *kmsd = getenv("KMSD");
  char conf[512], errf[512];
  snprintf(conf, sizeof(conf), "%s/%s", dir, conf_rel);
  snprintf(errf, sizeof(errf), "%s/once.stderr", dir);
  if (kmsd == NULL) {
    die("KMSD not set");
  }
  pid_t pid = fork();
  if (pid < 0) {
    die("fork");
  }
  if (pid == 0) {
    FILE *f = fopen(errf, "w");
    if (f == NULL || freopen("/dev/null", "w", stdout) == NULL) {
      _exit(126);
    }
    dup2(fileno(f), 2);
    execl(kmsd, kmsd, "--config", conf, (char *)NULL);
    _exit(127);
  }
  int status = 0, rc = -1;
  for (int i = 0; i < 600; i++) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (rc == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  out[0] = '\0';
  FILE *f = fopen(errf, "r");
  if (f != NULL) {
    out[fread(out, 1, out_len - 1, f)] = '\0';
    fclose(f);
  }
  return rc;
}

int
harness_finish(int failed)
{
  int st = harness_stop_kmsd();
  if (st != 0) {
    fprintf(stderr, "kmsd exited with status %d; log in %s/kmsd.log\n", st, dir);
    failed++;
  }
  return harness_cleanup(failed);
}

int
harness_cleanup(int failed)
{
  if (failed == 0 && getenv("TKMS_KEEP_DIR") == NULL) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
      fprintf(stderr, "could not remove %s\n", dir);
    }
  }
  return failed == 0 ? 0 : 1;
}
