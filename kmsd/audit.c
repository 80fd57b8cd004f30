/* The audit log: record building, the group-commit writer thread, rotation, recovery and
 * checkpoints. */
#include "audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>
#include <openssl/params.h>

#include "kms_auditlog.h"
#include "kms_err.h"
#include "kms_merkle.h"
#include "kms_note.h"
#include "kms_secret.h"
#include "log.h"

#define PATH_CAP 600
#define MAX_BATCH 4096      /* records per write: bounds the buffer and the latency */
#define AUDIT_FIELD_MAX 512 /* bytes of one string field kept in a record */
#define CONTEXT_HMAC_LEN 16 /* bytes of HMAC kept per context value: enough to match */
#define HMAC_LABEL "tenantkms audit context v1"
#define CHECKPOINTS_NAME "checkpoints"
#define VKEY_NAME "verifier-key"

struct audit {
  char dir[PATH_CAP];
  char node[KMS_NOTE_NAME_MAX + 1];
  char origin[KMS_NOTE_NAME_MAX + 1];
  uint64_t rotate_bytes;
  unsigned checkpoint_ms;

  struct hsm_signing_key sk;
  struct kms_note_vkey vk;
  hsm_session *hs;  /* the writer's own session, for signing */
  kms_secret *hmac; /* context-value HMAC key, derived from an HSM key */
  EVP_MAC_CTX *hmac_ctx; /* keyed with it; duplicated per value under hmac_mu */
  pthread_mutex_t hmac_mu;

  /* Writer-thread state (and audit_open's before the thread starts). */
  int fd;
  unsigned file_no;
  uint64_t file_off; /* bytes of durable records in the current file */
  bool dirty;        /* a failed write may have left bytes past file_off */
  int cp_fd;
  uint64_t cp_off;
  struct kms_merkle_frontier tree;
  uint64_t cp_size; /* tree size of the last checkpoint signed (or found) */
  bool cp_any;
  struct timespec cp_last;

  /* Queue from the loop to the writer. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct audit_item *q_head, *q_tail;
  size_t queued, writing;
  bool stopping;

  /* Completions from the writer back to the loop. */
  pthread_mutex_t done_mu;
  struct audit_item *d_head, *d_tail;
  size_t done_n;
  struct event *done_ev;

  /* Health, read by the loop. */
  pthread_mutex_t st_mu;
  bool failing;
  char why[256];
  _Atomic uint64_t size_pub;

  pthread_t thread;
  bool started, mu_init;
  size_t replayed_files; /* files read at start-up (the rest were covered by a frontier) */
};

/* ---- Small helpers ---------------------------------------------------------- */

struct sbuf {
  char *p;
  size_t len, cap;
  bool oom;
};

static void
sb_put(struct sbuf *b, const char *s, size_t n)
{
  if (b->oom) {
    return;
  }
  if (b->len + n + 1 > b->cap) {
    size_t ncap = b->cap ? b->cap : 512; /* one allocation for a typical record */
    while (ncap < b->len + n + 1) {
      ncap *= 2;
    }
    char *p = realloc(b->p, ncap);
    if (p == NULL) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = ncap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void
sb_str(struct sbuf *b, const char *s)
{
  sb_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void
sb_fmt(struct sbuf *b, const char *fmt, ...)
{
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof(tmp)) {
    b->oom = true;
    return;
  }
  sb_put(b, tmp, (size_t)n);
}

/*
 * sb_json_str writes a JSON string. Bytes outside printable ASCII are escaped
 * one by one as \u00XX: principals come from certificates and need not be
 * UTF-8, and a record must stay one valid JSON line whatever they hold.
 */
static void
sb_json_str(struct sbuf *b, const char *s)
{
  if (s == NULL) {
    sb_str(b, "null");
    return;
  }
  sb_put(b, "\"", 1);
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++, n++) {
    if (n == AUDIT_FIELD_MAX) {
      /* A hostile request may carry a huge field: the record keeps a bounded prefix. */
      sb_str(b, "...(truncated)");
      break;
    }
    if (*p == '"' || *p == '\\') {
      char e[2] = {'\\', (char)*p};
      sb_put(b, e, 2);
    } else if (*p < 0x20 || *p >= 0x7f) {
      sb_fmt(b, "\\u%04x", *p);
    } else {
      sb_put(b, (const char *)p, 1);
    }
  }
  sb_put(b, "\"", 1);
}

static void
set_failing(audit *a, bool failing, const char *what, int err_no)
{
  pthread_mutex_lock(&a->st_mu);
  bool was = a->failing;
  a->failing = failing;
  if (failing) {
    snprintf(a->why, sizeof(a->why), "%s: %s", what, strerror(err_no));
  } else {
    a->why[0] = '\0';
  }
  pthread_mutex_unlock(&a->st_mu);
  if (failing && !was) {
    log_msg(LOG_ERROR,
            "event=audit_failing what=%s errno=%d reason=\"%s\" "
            "note=\"key operations answer UNAVAILABLE until the log can be written\"",
            what, err_no, strerror(err_no));
  } else if (!failing && was) {
    log_msg(LOG_INFO, "event=audit_recovered size=%" PRIu64, a->tree.size);
  }
}

static int
fsync_dir(const char *dir)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int r = KMS_OK;
  if (fd < 0 || fsync(fd) != 0) {
    r = KMS_ERR_IO;
  }
  if (fd >= 0) {
    close(fd);
  }
  return r;
}

static void
file_path(const audit *a, char *out, size_t cap, unsigned no)
{
  snprintf(out, cap, "%s/audit-%08u.jsonl", a->dir, no);
}

static int
pwrite_all(int fd, const char *p, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t n = pwrite(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      if (n == 0) {
        errno = EIO;
      }
      return -1;
    }
    p += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

/* ---- Records ---------------------------------------------------------------- */

struct evp_mac_ctx_st *
audit_hmac_prepare(const uint8_t *k, size_t k_len)
{
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = NULL;
  OSSL_PARAM params[2];

  if (mac == NULL) {
    goto out;
  }
  ctx = EVP_MAC_CTX_new(mac);
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
  params[1] = OSSL_PARAM_construct_end();
  if (ctx != NULL && EVP_MAC_init(ctx, k, k_len, params) != 1) {
    EVP_MAC_CTX_free(ctx);
    ctx = NULL;
  }
out:
  EVP_MAC_free(mac);
  return ctx;
}

void
audit_hmac_release(struct evp_mac_ctx_st *ctx)
{
  EVP_MAC_CTX_free(ctx);
}

/* hmac_hex computes the context-value HMAC with |ctx| (a keyed copy), which it frees. */
static int
hmac_hex(EVP_MAC_CTX *ctx, const char *key, const char *value, char *out)
{
  static const uint8_t zero = 0;
  uint8_t mac[EVP_MAX_MD_SIZE];
  size_t mac_len = 0;
  int r = KMS_ERR_INTERNAL;

  if (ctx == NULL) {
    goto out;
  }
  /* key || 0x00 || value: the NUL keeps ("ab","c") and ("a","bc") apart. */
  if (EVP_MAC_update(ctx, (const uint8_t *)key, strlen(key)) != 1 ||
      EVP_MAC_update(ctx, &zero, 1) != 1 ||
      EVP_MAC_update(ctx, (const uint8_t *)value, strlen(value)) != 1 ||
      EVP_MAC_final(ctx, mac, &mac_len, sizeof(mac)) != 1 || mac_len < CONTEXT_HMAC_LEN) {
    goto out;
  }
  for (size_t i = 0; i < CONTEXT_HMAC_LEN; i++) {
    snprintf(out + 2 * i, 3, "%02x", mac[i]);
  }
  r = KMS_OK;
out:
  OPENSSL_cleanse(mac, sizeof(mac));
  EVP_MAC_CTX_free(ctx);
  return r;
}

int
audit_hmac_compute(struct evp_mac_ctx_st *prepared, const char *key, const char *value, char *out)
{
  return hmac_hex(prepared != NULL ? EVP_MAC_CTX_dup(prepared) : NULL, key, value, out);
}

/*
 * context_hmac runs on any thread that submits records: the prepared context
 * is shared, so only its duplication (a read of it) is serialised.
 */
static void
context_hmac(audit *a, struct sbuf *b, const char *key, const char *value)
{
  char hex[2 * CONTEXT_HMAC_LEN + 1];

  pthread_mutex_lock(&a->hmac_mu);
  EVP_MAC_CTX *own = a->hmac_ctx != NULL ? EVP_MAC_CTX_dup(a->hmac_ctx) : NULL;
  pthread_mutex_unlock(&a->hmac_mu);
  if (hmac_hex(own, key, value, hex) != KMS_OK) {
    b->oom = true;
    return;
  }
  sb_json_str(b, hex);
}

/* entries_hmac writes {"key":"hmac",...}: keys in clear, values as keyed HMACs. */
static void
entries_hmac(audit *a, struct sbuf *b, Tkms__ContextEntry *const *e, size_t n)
{
  sb_put(b, "{", 1);
  for (size_t i = 0; i < n; i++) {
    if (i > 0) {
      sb_put(b, ",", 1);
    }
    sb_json_str(b, e[i]->key != NULL ? e[i]->key : "");
    sb_put(b, ":", 1);
    context_hmac(a, b, e[i]->key != NULL ? e[i]->key : "", e[i]->value != NULL ? e[i]->value : "");
  }
  sb_put(b, "}", 1);
}

/* hand_back queues finished items for their done() calls on the loop, and wakes it. */
static void
hand_back(audit *a, struct audit_item *head, struct audit_item *tail, size_t n)
{
  pthread_mutex_lock(&a->done_mu);
  if (a->d_tail != NULL) {
    a->d_tail->next = head;
  } else {
    a->d_head = head;
  }
  a->d_tail = tail;
  a->done_n += n;
  pthread_mutex_unlock(&a->done_mu);
  event_active(a->done_ev, EV_READ, 0);
}

int
audit_submit(audit *a, struct audit_item *item, const struct audit_fields *f)
{
  struct sbuf b = {NULL, 0, 0, false};
  struct timespec now;
  struct tm tm;
  char day[32], ts[48];

  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  if (strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
    day[0] = '\0';
  }
  snprintf(ts, sizeof(ts), "%s.%03uZ", day, (unsigned)((now.tv_nsec / 1000000) % 1000));
  /* The writer prefixes {"seq":N, : the sequence number is the leaf index, known only there. */
  sb_str(&b, "\"v\":1,\"time\":");
  sb_json_str(&b, ts);
  sb_str(&b, ",\"node\":");
  sb_json_str(&b, a->node);
  sb_fmt(&b, ",\"request_id\":%" PRIu64 ",\"principal\":", f->request_id);
  sb_json_str(&b, f->principal);
  sb_str(&b, ",\"peer\":");
  sb_json_str(&b, f->peer);
  sb_str(&b, ",\"op\":");
  sb_json_str(&b, f->op);
  sb_str(&b, ",\"tenant\":");
  sb_json_str(&b, f->tenant);
  if (f->kek_version != 0) {
    sb_fmt(&b, ",\"kek_version\":%" PRIu32, f->kek_version);
  } else {
    sb_str(&b, ",\"kek_version\":null");
  }
  sb_str(&b, ",\"session\":");
  if (f->session != NULL) {
    /* Keyed like a context value of session_id, so both match the same session. */
    context_hmac(a, &b, "session_id", f->session);
  } else {
    sb_str(&b, "null");
  }
  sb_str(&b, ",\"context\":");
  entries_hmac(a, &b, f->context, f->n_context);
  sb_str(&b, ",\"attributes\":");
  entries_hmac(a, &b, f->attributes, f->n_attributes);
  sb_fmt(&b, ",\"outcome\":\"%s\",\"status\":\"%s\",\"code\":%d}",
         f->status == 0                        ? "ok"
         : (f->status == 7 || f->status == 16) ? "denied"
                                               : "error",
         kms_status_name(f->status) != NULL ? kms_status_name(f->status) : "UNKNOWN", f->status);
  if (b.oom || b.len > KMS_AUDIT_LINE_MAX - 32) {
    free(b.p);
    item->body = NULL;
    item->next = NULL;
    item->status = KMS_ERR_UNAVAILABLE;
    hand_back(a, item, item, 1);
    return KMS_ERR_ALLOC;
  }
  item->body = b.p;
  item->body_len = b.len;
  item->next = NULL;
  item->seq = 0;
  item->status = KMS_ERR_INTERNAL;
  pthread_mutex_lock(&a->mu);
  if (a->q_tail != NULL) {
    a->q_tail->next = item;
  } else {
    a->q_head = item;
  }
  a->q_tail = item;
  a->queued++;
  pthread_cond_signal(&a->cv);
  pthread_mutex_unlock(&a->mu);
  return KMS_OK;
}

/* ---- Writer thread ---------------------------------------------------------- */

static int
open_log_file(audit *a, unsigned no, bool create)
{
  char path[PATH_CAP + 32];
  struct stat st;
  int fd;

  file_path(a, path, sizeof(path), no);
  /* Not O_APPEND: records go at file_off with pwrite so a failed batch can be cut off exactly. */
  fd = open(path, O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0600);
  if (fd < 0) {
    return -1;
  }
  if (fstat(fd, &st) != 0) {
    close(fd);
    return -1;
  }
  if (create && fsync_dir(a->dir) != KMS_OK) {
    close(fd);
    return -1;
  }
  if (a->fd >= 0) {
    close(a->fd);
  }
  a->fd = fd;
  a->file_no = no;
  a->file_off = (uint64_t)st.st_size;
  a->dirty = false;
  return 0;
}

/*
 * checkpoint signs the current tree head in the HSM and appends the note to
 * the checkpoints file. A failure costs no record (they are durable
 * already): it is logged and tried again at the next occasion. Returns
 * true if the note is durable.
 */
static bool
checkpoint(audit *a)
{
  struct kms_checkpoint cp;
  char text[512], note[1024];
  size_t text_len = 0, note_len = 0, sig_len = 0;
  uint8_t sig[HSM_SIG_MAX];
  int r;

  memset(&cp, 0, sizeof(cp));
  memcpy(cp.origin, a->origin, strlen(a->origin) + 1);
  cp.size = a->tree.size;
  kms_merkle_frontier_root(&a->tree, cp.root);
  if ((r = kms_checkpoint_format(text, sizeof(text), &text_len, &cp)) != KMS_OK ||
      (r = hsm_sign(a->hs, &a->sk, (const uint8_t *)text, text_len, sig, &sig_len)) != KMS_OK ||
      (r = kms_note_format(note, sizeof(note) - 1, &note_len, text, text_len, &a->vk, sig,
                           sig_len)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=audit_checkpoint_failed size=%" PRIu64 " reason=\"%s\"", cp.size,
            kms_strerror(r));
    return false;
  }
  note[note_len++] = '\n'; /* blank line between notes */
  if (pwrite_all(a->cp_fd, note, note_len, a->cp_off) != 0 || fdatasync(a->cp_fd) != 0) {
    int e = errno;
    if (ftruncate(a->cp_fd, (off_t)a->cp_off) != 0) {
      /* The torn note is cut at the next start-up (kms_note_next finds it incomplete). */
    }
    log_msg(LOG_ERROR, "event=audit_checkpoint_failed size=%" PRIu64 " errno=%d reason=\"%s\"",
            cp.size, e, strerror(e));
    return false;
  }
  a->cp_off += note_len;
  a->cp_size = cp.size;
  a->cp_any = true;
  clock_gettime(CLOCK_MONOTONIC, &a->cp_last);
  log_msg(LOG_DEBUG, "event=audit_checkpoint size=%" PRIu64, cp.size);
  return true;
}

static void
frontier_path(const audit *a, char *out, size_t cap, unsigned no)
{
  snprintf(out, cap, "%s/frontier-%08u", a->dir, no);
}

/*
 * write_frontier saves the tree after closed file |no| (temp file, fsync,
 * rename, fsync of the directory), next to the checkpoint just signed at that
 * size, which start-up checks it against.
 */
static int
write_frontier(audit *a, unsigned no)
{
  char text[KMS_AUDIT_FRONTIER_MAX], path[PATH_CAP + 32], tmp[PATH_CAP + 48];
  size_t len = 0;
  int fd = -1, r = KMS_ERR_IO;

  if (kms_auditlog_frontier_format(&a->tree, text, sizeof(text), &len) != KMS_OK) {
    return KMS_ERR_INTERNAL;
  }
  frontier_path(a, path, sizeof(path), no);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0 && pwrite_all(fd, text, len, 0) == 0 && fsync(fd) == 0 && close(fd) == 0) {
    fd = -1;
    if (rename(tmp, path) == 0 && fsync_dir(a->dir) == KMS_OK) {
      r = KMS_OK;
    }
  }
  if (fd >= 0) {
    close(fd);
  }
  if (r != KMS_OK) {
    log_msg(LOG_WARN, "event=audit_frontier_failed file=%u errno=%d reason=\"%s\"", no, errno,
            strerror(errno));
    (void)unlink(tmp);
  }
  return r;
}

static void
maybe_rotate(audit *a)
{
  /* Never close a file a failed write may have left bytes in (they are cut off first). */
  if (a->dirty || a->file_off < a->rotate_bytes) {
    return;
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  /* The checkpoint closes file N: an auditor holding it can check that file alone. */
  if (checkpoint(a)) {
    /* Start-up will read only the files after N (a failure here only makes it slower). */
    (void)write_frontier(a, a->file_no);
  }
  if (open_log_file(a, a->file_no + 1, true) != 0) {
    log_msg(LOG_ERROR, "event=audit_rotate_failed next=%u errno=%d reason=\"%s\"", a->file_no + 1,
            errno, strerror(errno));
    return;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  /* Answers wait while the log rotates: how long it took is worth seeing. */
  log_msg(LOG_INFO, "event=audit_rotated file=%u size=%" PRIu64 " took_us=%lld", a->file_no,
          a->tree.size,
          (long long)((t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000));
}

/*
 * slow_commit_note logs a commit step that held every answer waiting on it
 * for longer than SLOW_COMMIT_MS (a slow or busy disk shows here first).
 */
#define SLOW_COMMIT_MS 20
static void
slow_commit_note(const audit *a, const char *what, const struct timespec *t0,
                 const struct timespec *t1, const struct timespec *t2, size_t bytes)
{
  int64_t us1 = (int64_t)(t1->tv_sec - t0->tv_sec) * 1000000 + (t1->tv_nsec - t0->tv_nsec) / 1000;
  int64_t us2 = (int64_t)(t2->tv_sec - t1->tv_sec) * 1000000 + (t2->tv_nsec - t1->tv_nsec) / 1000;
  if (us1 + us2 >= SLOW_COMMIT_MS * 1000) {
    log_msg(LOG_WARN,
            "event=audit_slow_commit step=%s file=%u bytes=%zu write_us=%lld sync_us=%lld", what,
            a->file_no, bytes, (long long)us1, (long long)us2);
  }
}

static void
write_batch(audit *a, struct audit_item *batch)
{
  struct sbuf b = {NULL, 0, 0, false};
  struct kms_merkle_frontier next = a->tree;
  const char *what = "write";
  int e = 0;

  if (a->dirty) {
    /* Cut off what a failed batch may have left before anything follows it. */
    if (ftruncate(a->fd, (off_t)a->file_off) != 0 || fdatasync(a->fd) != 0) {
      e = errno;
      what = "truncate";
      goto fail;
    }
    a->dirty = false;
  }
  for (struct audit_item *it = batch; it != NULL; it = it->next) {
    uint8_t lh[KMS_MERKLE_HASH_LEN];
    size_t start = b.len;
    sb_fmt(&b, "{\"seq\":%" PRIu64 ",", next.size);
    sb_put(&b, it->body, it->body_len);
    if (b.oom) {
      e = ENOMEM;
      goto fail;
    }
    kms_merkle_leaf_hash(lh, (const uint8_t *)b.p + start, b.len - start);
    it->seq = next.size;
    (void)kms_merkle_frontier_append(&next, lh);
    sb_put(&b, "\n", 1);
  }
  if (b.oom) {
    e = ENOMEM;
    goto fail;
  }
  struct timespec t0, t1, t2;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (pwrite_all(a->fd, b.p, b.len, a->file_off) != 0) {
    e = errno;
    a->dirty = true;
    goto fail;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  int synced = fdatasync(a->fd);
  clock_gettime(CLOCK_MONOTONIC, &t2);
  slow_commit_note(a, "batch", &t0, &t1, &t2, b.len);
  if (synced != 0) {
    /* After a failed fdatasync the page cache state is unknown: treat the batch as lost. */
    e = errno;
    what = "fdatasync";
    a->dirty = true;
    goto fail;
  }
  a->file_off += b.len;
  a->tree = next;
  atomic_store(&a->size_pub, a->tree.size);
  for (struct audit_item *it = batch; it != NULL; it = it->next) {
    it->status = KMS_OK;
  }
  set_failing(a, false, NULL, 0);
  free(b.p);
  return;
fail:
  if (a->dirty && ftruncate(a->fd, (off_t)a->file_off) == 0) {
    a->dirty = false;
  }
  set_failing(a, true, what, e);
  for (struct audit_item *it = batch; it != NULL; it = it->next) {
    it->status = KMS_ERR_UNAVAILABLE;
  }
  free(b.p);
}

static uint64_t
ms_since(const struct timespec *t)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  int64_t ms = (int64_t)(now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
  return ms > 0 ? (uint64_t)ms : 0;
}

static void *
writer_main(void *arg)
{
  audit *a = arg;

  for (;;) {
    struct audit_item *batch = NULL, *tail = NULL;
    size_t n = 0;
    bool stop;

    pthread_mutex_lock(&a->mu);
    while (a->q_head == NULL && !a->stopping) {
      if (a->tree.size != a->cp_size) {
        /* Records since the last checkpoint: wake when the next one is due. */
        uint64_t since = ms_since(&a->cp_last);
        if (since >= a->checkpoint_ms) {
          break;
        }
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        uint64_t wait_ms = a->checkpoint_ms - since;
        dl.tv_sec += (time_t)(wait_ms / 1000);
        dl.tv_nsec += (long)(wait_ms % 1000) * 1000000;
        if (dl.tv_nsec >= 1000000000) {
          dl.tv_sec++;
          dl.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&a->cv, &a->mu, &dl);
      } else {
        pthread_cond_wait(&a->cv, &a->mu);
      }
    }
    while (a->q_head != NULL && n < MAX_BATCH) {
      struct audit_item *it = a->q_head;
      a->q_head = it->next;
      it->next = NULL;
      if (tail != NULL) {
        tail->next = it;
      } else {
        batch = it;
      }
      tail = it;
      n++;
    }
    if (a->q_head == NULL) {
      a->q_tail = NULL;
    }
    a->queued -= n;
    a->writing = n;
    stop = a->stopping && a->q_head == NULL;
    pthread_mutex_unlock(&a->mu);

    if (batch != NULL) {
      write_batch(a, batch);
    }
    if (batch != NULL) {
      for (struct audit_item *it = batch; it != NULL; it = it->next) {
        free(it->body);
        it->body = NULL;
      }
      /* Counted as done before it stops counting as being written: audit_pending never
       * reads zero while an answer still waits. */
      hand_back(a, batch, tail, n);
      pthread_mutex_lock(&a->mu);
      a->writing = 0;
      pthread_mutex_unlock(&a->mu);
    }
    /* Rotation and checkpoints after the answers are released: they hold up only the records
     * that arrive meanwhile, not a batch already durable. */
    maybe_rotate(a);
    if (a->tree.size != a->cp_size && ms_since(&a->cp_last) >= a->checkpoint_ms) {
      checkpoint(a);
    }
    if (stop) {
      if (a->tree.size != a->cp_size || !a->cp_any) {
        checkpoint(a);
      }
      return NULL;
    }
  }
}

static void
drain_done(evutil_socket_t fd, short what, void *arg)
{
  audit *a = arg;
  pthread_mutex_lock(&a->done_mu);
  struct audit_item *it = a->d_head;
  a->d_head = a->d_tail = NULL;
  a->done_n = 0;
  pthread_mutex_unlock(&a->done_mu);
  while (it != NULL) {
    struct audit_item *next = it->next;
    it->next = NULL;
    it->done(it, it->status);
    it = next;
  }
}

/* ---- Start-up: recovery ----------------------------------------------------- */

static int
cmp_uint(const void *x, const void *y)
{
  unsigned a = *(const unsigned *)x, b = *(const unsigned *)y;
  return a < b ? -1 : a > b ? 1 : 0;
}

/* list_files finds audit-NNNNNNNN.jsonl in the directory, sorted, and checks none is missing. */
static int
list_files(audit *a, unsigned **out, size_t *out_n, char *err, size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  DIR *d = opendir(a->dir);
  struct dirent *de;
  unsigned *nos = NULL;
  size_t n = 0, cap = 0;

  *out = NULL;
  *out_n = 0;
  if (d == NULL) {
    snprintf(err, err_len, "audit: %s: %s", a->dir, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  while ((de = readdir(d)) != NULL) {
    unsigned no;
    char tail[8];
    if (strlen(de->d_name) != strlen("audit-00000000.jsonl") ||
        sscanf(de->d_name, "audit-%8u.%7s", &no, tail) != 2 || strcmp(tail, "jsonl") != 0 ||
        no == 0) {
      continue;
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      unsigned *p = realloc(nos, ncap * sizeof(*nos));
      if (p == NULL) {
        r = KMS_ERR_ALLOC;
        goto out;
      }
      nos = p;
      cap = ncap;
    }
    nos[n++] = no;
  }
  if (n > 0) {
    qsort(nos, n, sizeof(*nos), cmp_uint);
  }
  for (size_t i = 0; i < n; i++) {
    if (nos[i] != (unsigned)(i + 1)) {
      snprintf(err, err_len,
               "audit: %s: log file %u is missing (found %u next): the log is incomplete; "
               "see docs/AUDIT.md, recovery",
               a->dir, (unsigned)(i + 1), nos[i]);
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
  }
  *out = nos;
  *out_n = n;
  nos = NULL;
  r = KMS_OK;
out:
  if (d != NULL) {
    closedir(d);
  }
  free(nos);
  return r;
}

static int
write_vkey_file(audit *a, char *err, size_t err_len)
{
  char vk[KMS_NOTE_VKEY_MAX], path[PATH_CAP + 32], tmp[PATH_CAP + 40];
  FILE *f;
  int r = KMS_ERR_IO;

  if (kms_note_vkey_format(vk, sizeof(vk), &a->vk) != KMS_OK) {
    return KMS_ERR_INTERNAL;
  }
  snprintf(path, sizeof(path), "%s/%s", a->dir, VKEY_NAME);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  f = fopen(tmp, "w");
  if (f == NULL) {
    snprintf(err, err_len, "audit: %s: %s", tmp, strerror(errno));
    return r;
  }
  /* Public, and meant to be copied: 0644. */
  if (fprintf(f, "%s\n", vk) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
    snprintf(err, err_len, "audit: %s: %s", tmp, strerror(errno));
    fclose(f);
    return r;
  }
  fclose(f);
  if (chmod(tmp, 0644) != 0 || rename(tmp, path) != 0) {
    snprintf(err, err_len, "audit: %s: %s", path, strerror(errno));
    return r;
  }
  return KMS_OK;
}

/* read_frontier loads the tree saved after closed file |no|; KMS_ERR_NOT_FOUND if there is none. */
static int
read_frontier(audit *a, unsigned no, struct kms_merkle_frontier *out)
{
  char path[PATH_CAP + 32], text[KMS_AUDIT_FRONTIER_MAX + 1];
  frontier_path(a, path, sizeof(path), no);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return KMS_ERR_NOT_FOUND;
  }
  ssize_t n = read(fd, text, sizeof(text));
  close(fd);
  if (n <= 0 || (size_t)n > KMS_AUDIT_FRONTIER_MAX ||
      kms_auditlog_frontier_parse(text, (size_t)n, out) != KMS_OK) {
    log_msg(LOG_WARN, "event=audit_frontier_unreadable file=%u action=full_replay", no);
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

static int
recover(audit *a, char *err, size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  unsigned *nos = NULL;
  size_t n_files = 0, n_cps = 0;
  char **paths = NULL;
  struct kms_auditlog_cp *cps = NULL;
  struct kms_auditlog_result *res = NULL;
  char cp_path[PATH_CAP + 32], why[512];
  uint64_t cp_good = 0;
  struct stat st;

  snprintf(cp_path, sizeof(cp_path), "%s/%s", a->dir, CHECKPOINTS_NAME);
  r = kms_auditlog_load_checkpoints(cp_path, &a->vk, &cps, &n_cps, &cp_good, why, sizeof(why));
  if (r != KMS_OK && r != KMS_ERR_NOT_FOUND) {
    snprintf(err, err_len, "audit: %s", why);
    goto out;
  }
  a->cp_fd = open(cp_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (a->cp_fd < 0 || fstat(a->cp_fd, &st) != 0) {
    snprintf(err, err_len, "audit: %s: %s", cp_path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  if ((uint64_t)st.st_size > cp_good) {
    log_msg(LOG_WARN, "event=audit_torn_checkpoint_truncated bytes=%" PRIu64,
            (uint64_t)st.st_size - cp_good);
    if (ftruncate(a->cp_fd, (off_t)cp_good) != 0 || fsync(a->cp_fd) != 0) {
      snprintf(err, err_len, "audit: %s: %s", cp_path, strerror(errno));
      r = KMS_ERR_IO;
      goto out;
    }
  }
  a->cp_off = cp_good;
  if ((r = list_files(a, &nos, &n_files, err, err_len)) != KMS_OK) {
    goto out;
  }
  paths = calloc(n_files + 1, sizeof(*paths));
  res = calloc(1, sizeof(*res));
  if (paths == NULL || res == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  for (size_t i = 0; i < n_files; i++) {
    paths[i] = malloc(PATH_CAP + 32);
    if (paths[i] == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    file_path(a, paths[i], PATH_CAP + 32, nos[i]);
  }
  /* Start from the tree saved after the newest closed file, if it agrees with the checkpoint
   * signed at its size: only the files after it are read (docs/AUDIT.md, "Start-up"). */
  size_t skip = 0;
  struct kms_merkle_frontier start;
  if (n_files >= 2 && read_frontier(a, nos[n_files - 2], &start) == KMS_OK) {
    skip = n_files - 1;
    r = kms_auditlog_replay_from(&start, (const char *const *)paths + skip, n_files - skip, cps,
                                 n_cps, res);
    if (r != KMS_OK) {
      log_msg(LOG_WARN, "event=audit_frontier_rejected file=%u reason=\"%s\" action=full_replay",
              nos[n_files - 2], res->why);
      skip = 0;
    }
  }
  if (skip == 0) {
    r = kms_auditlog_replay((const char *const *)paths, n_files, cps, n_cps, res);
  }
  a->replayed_files = n_files - skip;
  if (r != KMS_OK) {
    /* Signing on would cover up whatever happened: refuse, and say where. */
    snprintf(err, err_len, "audit: the log does not match its signed checkpoints: %s", res->why);
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  a->tree = res->tree;
  atomic_store(&a->size_pub, a->tree.size);
  if (n_cps > 0) {
    a->cp_size = cps[n_cps - 1].size;
    a->cp_any = true;
  }
  if (n_files == 0) {
    if (open_log_file(a, 1, true) != 0) {
      snprintf(err, err_len, "audit: creating %s/audit-00000001.jsonl: %s", a->dir,
               strerror(errno));
      r = KMS_ERR_IO;
      goto out;
    }
  } else {
    if (open_log_file(a, nos[n_files - 1], false) != 0) {
      snprintf(err, err_len, "audit: opening %s: %s", paths[n_files - 1], strerror(errno));
      r = KMS_ERR_IO;
      goto out;
    }
    if (res->torn_bytes > 0) {
      /* A line cut by a crash was never acknowledged: its record never counted. */
      log_msg(LOG_WARN, "event=audit_torn_record_truncated file=%u bytes=%" PRIu64, a->file_no,
              res->torn_bytes);
      if (ftruncate(a->fd, (off_t)res->last_file_good_len) != 0 || fsync(a->fd) != 0) {
        snprintf(err, err_len, "audit: truncating %s: %s", paths[n_files - 1], strerror(errno));
        r = KMS_ERR_IO;
        goto out;
      }
    }
    a->file_off = res->last_file_good_len;
  }
  r = KMS_OK;
out:
  if (paths != NULL) {
    for (size_t i = 0; i < n_files; i++) {
      free(paths[i]);
    }
  }
  free(paths);
  free(nos);
  free(cps);
  free(res);
  return r;
}

/* ---- Public ----------------------------------------------------------------- */

int
audit_open(audit **out, const struct audit_config *cfg, hsm *h, struct event_base *base, char *err,
           size_t err_len)
{
  int r = KMS_ERR_INTERNAL;
  audit *a = NULL;
  uint8_t key[32];
  struct stat st;

  *out = NULL;
  err[0] = '\0';
  if (cfg == NULL || cfg->dir == NULL || cfg->node == NULL || h == NULL || base == NULL ||
      strlen(cfg->dir) >= PATH_CAP ||
      strlen(cfg->node) + strlen("/tenantkms-audit") > KMS_NOTE_NAME_MAX ||
      !kms_note_name_ok(cfg->node, strlen(cfg->node))) {
    snprintf(err, err_len,
             "audit: audit_dir and node_name are required; node_name must be "
             "printable ASCII without spaces or '+'");
    return KMS_ERR_INVALID_ARGUMENT;
  }
  a = calloc(1, sizeof(*a));
  if (a == NULL) {
    return KMS_ERR_ALLOC;
  }
  a->fd = a->cp_fd = -1;
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->cv, NULL);
  pthread_mutex_init(&a->done_mu, NULL);
  pthread_mutex_init(&a->st_mu, NULL);
  pthread_mutex_init(&a->hmac_mu, NULL);
  a->mu_init = true;
  memcpy(a->dir, cfg->dir, strlen(cfg->dir) + 1);
  memcpy(a->node, cfg->node, strlen(cfg->node) + 1);
  snprintf(a->origin, sizeof(a->origin), "%s/tenantkms-audit", cfg->node);
  a->rotate_bytes = cfg->rotate_bytes != 0 ? cfg->rotate_bytes : AUDIT_ROTATE_DEFAULT;
  a->checkpoint_ms = cfg->checkpoint_ms != 0 ? cfg->checkpoint_ms : AUDIT_CHECKPOINT_MS_DEFAULT;
  kms_merkle_frontier_init(&a->tree);
  clock_gettime(CLOCK_MONOTONIC, &a->cp_last);

  /* A file-size limit must be an error we answer (EFBIG), not a signal that kills kmsd. */
  signal(SIGXFSZ, SIG_IGN);

  if (mkdir(a->dir, 0700) != 0 && errno != EEXIST) {
    snprintf(err, err_len, "audit: creating %s: %s", a->dir, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  if (stat(a->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, err_len, "audit: %s is not a directory", a->dir);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  if ((r = hsm_signing_key_open(h, cfg->sign_key_id != NULL ? cfg->sign_key_id : AUDIT_SIGN_KEY_ID,
                                cfg->sign_prefer, &a->sk, err, err_len)) != KMS_OK) {
    goto out;
  }
  if ((r = kms_note_vkey_make(&a->vk, a->origin,
                              a->sk.type == HSM_SIG_ED25519 ? KMS_NOTE_SIG_ED25519
                                                            : KMS_NOTE_SIG_ECDSA,
                              a->sk.pub, a->sk.pub_len)) != KMS_OK) {
    snprintf(err, err_len, "audit: the HSM's signing key is not usable as a note key");
    goto out;
  }
  r = hsm_hmac_derive(h, AUDIT_HMAC_KEY_ID, HMAC_LABEL, key, err, err_len);
  if (r == KMS_OK) {
    a->hmac = kms_secret_from(key, sizeof(key));
    a->hmac_ctx = audit_hmac_prepare(key, sizeof(key));
    r = a->hmac != NULL && a->hmac_ctx != NULL ? KMS_OK : KMS_ERR_ALLOC;
  }
  OPENSSL_cleanse(key, sizeof(key));
  if (r != KMS_OK) {
    goto out;
  }
  if ((r = hsm_session_open(h, &a->hs)) != KMS_OK) {
    snprintf(err, err_len, "audit: opening an HSM session: %s", kms_strerror(r));
    goto out;
  }
  if ((r = write_vkey_file(a, err, err_len)) != KMS_OK ||
      (r = recover(a, err, err_len)) != KMS_OK) {
    goto out;
  }
  a->done_ev = event_new(base, -1, 0, drain_done, a);
  if (a->done_ev == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
    snprintf(err, err_len, "audit: pthread_create failed");
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  a->started = true;
  log_msg(LOG_INFO,
          "event=audit_open dir=%s origin=%s size=%" PRIu64 " file=%u files_read=%zu sig=%s",
          a->dir, a->origin, a->tree.size, a->file_no, a->replayed_files,
          a->sk.type == HSM_SIG_ED25519 ? "ed25519" : "ecdsa-p256");
  *out = a;
  a = NULL;
  r = KMS_OK;
out:
  audit_close(a);
  return r;
}

void
audit_close(audit *a)
{
  if (a == NULL) {
    return;
  }
  if (a->started) {
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    drain_done(-1, 0, a);
    log_msg(LOG_INFO, "event=audit_closed size=%" PRIu64, a->tree.size);
  }
  if (a->done_ev != NULL) {
    event_free(a->done_ev);
  }
  if (a->fd >= 0) {
    close(a->fd);
  }
  if (a->cp_fd >= 0) {
    close(a->cp_fd);
  }
  hsm_session_close(a->hs);
  kms_secret_free(a->hmac);
  audit_hmac_release(a->hmac_ctx);
  if (a->mu_init) {
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->done_mu);
    pthread_mutex_destroy(&a->st_mu);
    pthread_mutex_destroy(&a->hmac_mu);
  }
  free(a);
}

size_t
audit_pending(audit *a)
{
  size_t n;
  pthread_mutex_lock(&a->mu);
  n = a->queued + a->writing;
  pthread_mutex_unlock(&a->mu);
  pthread_mutex_lock(&a->done_mu);
  n += a->done_n;
  pthread_mutex_unlock(&a->done_mu);
  return n;
}

bool
audit_healthy(audit *a, char *why, size_t why_len)
{
  bool ok;
  pthread_mutex_lock(&a->st_mu);
  ok = !a->failing;
  if (why != NULL && why_len > 0) {
    snprintf(why, why_len, "%s", ok ? "" : a->why);
  }
  pthread_mutex_unlock(&a->st_mu);
  return ok;
}

int
audit_verifier_key(audit *a, char *out, size_t cap)
{
  return kms_note_vkey_format(out, cap, &a->vk);
}

uint64_t
audit_size(audit *a)
{
  return atomic_load(&a->size_pub);
}

const char *
audit_dir(const audit *a)
{
  return a->dir;
}

const struct kms_note_vkey *
audit_vkey(const audit *a)
{
  return &a->vk;
}

int
audit_hmac_hex(audit *a, const char *key, const char *value, char *out)
{
  /* Not the loop's prepared context: this runs on a worker. */
  EVP_MAC_CTX *ctx = audit_hmac_prepare(kms_secret_cdata(a->hmac), kms_secret_len(a->hmac));
  int r = audit_hmac_compute(ctx, key, value, out);
  audit_hmac_release(ctx);
  return r;
}
