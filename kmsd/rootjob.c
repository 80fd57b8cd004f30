/* Root key rotation: the RPCs and the background job that moves every key token to the new root. */
#include "rootjob.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "keystore.h"
#include "kms_err.h"
#include "kms_time.h"
#include "log.h"

#define BATCH_MAX 32           /* tokens per transaction */
#define FAILED_MAX 64          /* tokens that would not re-wrap, skipped until restart */
#define IDLE_WAIT_MS 1000      /* nothing to do: look again this often (or when kicked) */
#define FAIL_WAIT_MS 5000      /* after a failure: HSM or keystore unavailable */
#define PROGRESS_LOG_MS 5000   /* a progress line at most this often */
/*
 * A KEK generated just before a rotation may be recorded just after the job
 * found no token under the old root: the old root is destroyed only once the
 * rotation is this old (far beyond any request, whose HSM calls time out in
 * seconds).
 */
#define DESTROY_GRACE_MS 10000

enum job_state { JOB_IDLE, JOB_RUNNING, JOB_FAILING };
static const char *const job_state_names[] = {"idle", "running", "failing"};

struct failed_token {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version;
};

struct rootjob {
  hsm *h;
  hsm_session *hs; /* the job thread's own */
  keystore *ks;    /* the job thread's own */
  struct rootjob_config cfg;
  pthread_t thread;
  bool started;
  pthread_mutex_t mu; /* guards everything below */
  pthread_cond_t cv;
  bool stop, kicked;
  enum job_state state;
  char message[192];
  int64_t run_started_ms; /* monotonic start of the current run of re-wraps */
  uint64_t run_moved;     /* tokens moved in that run */
  double rate;            /* run_moved over the run's time */
  struct failed_token failed[FAILED_MAX];
  size_t n_failed;
};

static void set_state(rootjob *j, enum job_state st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_state(rootjob *j, enum job_state st, const char *fmt, ...) {
  va_list ap;

  pthread_mutex_lock(&j->mu);
  j->state = st;
  va_start(ap, fmt);
  vsnprintf(j->message, sizeof(j->message), fmt, ap);
  va_end(ap);
  pthread_mutex_unlock(&j->mu);
}

/* wait_ms waits |ms| or until kicked or stopped; returns false once stopping. */
static bool wait_ms(rootjob *j, int64_t ms) {
  struct timespec until;
  bool go;

  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += (time_t)(ms / 1000);
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&j->mu);
  while (!j->stop && !j->kicked) {
    if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT) {
      break;
    }
  }
  j->kicked = false;
  go = !j->stop;
  pthread_mutex_unlock(&j->mu);
  return go;
}

static bool stopping(rootjob *j) {
  bool s;

  pthread_mutex_lock(&j->mu);
  s = j->stop;
  pthread_mutex_unlock(&j->mu);
  return s;
}

/* throttle sleeps so that |moved| tokens since |t0_ms| stay within per_second; false: stop. */
static bool throttle(rootjob *j, int64_t t0_ms, uint64_t moved) {
  int64_t due, now;

  if (j->cfg.per_second == 0) {
    return !stopping(j);
  }
  due = t0_ms + (int64_t)(moved * 1000 / j->cfg.per_second);
  while ((now = kms_mono_ms()) < due) {
    struct timespec d = {(time_t)((due - now) / 1000), (long)((due - now) % 1000) * 1000000L};
    if (stopping(j)) {
      return false;
    }
    nanosleep(&d, NULL);
  }
  return !stopping(j);
}

static bool is_failed(const rootjob *j, const struct ks_token_move *m) {
  for (size_t i = 0; i < j->n_failed; i++) {
    if (j->failed[i].version == m->version && strcmp(j->failed[i].tenant_id, m->tenant_id) == 0) {
      return true;
    }
  }
  return false;
}

static void note_failed(rootjob *j, const struct ks_token_move *m, int r) {
  log_msg(LOG_ERROR,
          "event=root_rewrap_failed tenant=%s version=%u root_version=%u code=%d "
          "note=\"the token does not open under its root; skipped until restart\"",
          m->tenant_id, m->version, m->old_root, r);
  pthread_mutex_lock(&j->mu);
  if (j->n_failed < FAILED_MAX) {
    snprintf(j->failed[j->n_failed].tenant_id, sizeof(j->failed[0].tenant_id), "%s",
             m->tenant_id);
    j->failed[j->n_failed].version = m->version;
    j->n_failed++;
  }
  snprintf(j->message, sizeof(j->message),
           "tenant %s version %u does not re-wrap (code %d); skipped", m->tenant_id, m->version,
           r);
  pthread_mutex_unlock(&j->mu);
}

/*
 * batch moves up to BATCH_MAX tokens to the current root in one transaction.
 * Returns the number of tokens it found to move (0: nothing left), or a
 * negative error code.
 */
static int batch(rootjob *j, struct ks_token_move *m, size_t cap) {
  uint32_t cur = hsm_root_current(j->h);
  size_t n = 0, kept = 0, moved = 0;
  int r;

  r = keystore_root_pending(j->ks, cur, m, cap, &n);
  if (r != KMS_OK) {
    set_state(j, JOB_FAILING, "keystore: %s", kms_strerror(r));
    return r;
  }
  for (size_t i = 0; i < n; i++) {
    if (!is_failed(j, &m[i])) {
      m[kept++] = m[i];
    }
  }
  if (kept == 0) {
    return 0;
  }
  pthread_mutex_lock(&j->mu);
  if (j->state != JOB_RUNNING) {
    j->state = JOB_RUNNING;
    j->message[0] = '\0';
    j->run_started_ms = kms_mono_ms();
    j->run_moved = 0;
    j->rate = 0;
  }
  int64_t t0 = j->run_started_ms;
  uint64_t so_far = j->run_moved;
  pthread_mutex_unlock(&j->mu);

  n = 0;
  for (size_t i = 0; i < kept; i++) {
    if (!throttle(j, t0, so_far + n + 1)) {
      break;
    }
    r = hsm_kek_rewrap(j->hs, m[i].old_token, m[i].old_len, m[i].old_mech, m[i].old_root,
                       m[i].token, &m[i].token_len, &m[i].mech, &m[i].root);
    if (r == KMS_ERR_DECRYPT || r == KMS_ERR_NOT_FOUND || r == KMS_ERR_FAILED_PRECONDITION) {
      note_failed(j, &m[i], r);
      continue;
    }
    if (r != KMS_OK) {
      set_state(j, JOB_FAILING, "HSM: %s", kms_strerror(r));
      break;
    }
    if (n != i) {
      m[n] = m[i];
    }
    n++;
  }
  if (n > 0) {
    r = keystore_root_move_tokens(j->ks, m, n, &moved);
    if (r != KMS_OK) {
      set_state(j, JOB_FAILING, "keystore: %s", kms_strerror(r));
    }
  }
  for (size_t i = 0; i < cap; i++) {
    OPENSSL_cleanse(m[i].token, sizeof(m[i].token)); /* wrapped, but no need to keep them */
  }
  pthread_mutex_lock(&j->mu);
  j->run_moved += moved;
  int64_t took = kms_mono_ms() - j->run_started_ms;
  j->rate = took > 0 ? (double)j->run_moved * 1000.0 / (double)took : 0;
  bool failing = j->state == JOB_FAILING;
  pthread_mutex_unlock(&j->mu);
  return failing ? KMS_ERR_UNAVAILABLE : (int)kept;
}

static const struct ks_root *find_ks_root(const struct ks_root *v, size_t n, uint32_t version) {
  for (size_t i = 0; i < n; i++) {
    if (v[i].version == version) {
      return &v[i];
    }
  }
  return NULL;
}

/*
 * retire destroys every root older than the current one that no key token
 * names any more, once the rotation is DESTROY_GRACE_MS plus root_retain_days
 * old: first recorded in the keystore (which checks, in its transaction, that
 * no token names it), then in the HSM. A root recorded destroyed but still on
 * the token (kmsd died in between) is destroyed in the HSM.
 */
static void retire(rootjob *j) {
  struct hsm_root_info on[HSM_ROOTS_MAX];
  struct ks_root *roots = NULL;
  size_t n_on = 0, n = 0;
  uint32_t cur = hsm_root_current(j->h);
  const struct ks_root *c;
  int64_t now = kms_now_ms();
  char err[192];

  if (hsm_root_list(j->hs, on, HSM_ROOTS_MAX, &n_on) != KMS_OK ||
      keystore_root_list(j->ks, &roots, &n) != KMS_OK) {
    free(roots);
    return;
  }
  c = find_ks_root(roots, n, cur);
  int64_t since = c != NULL ? c->current_since_ms : now;
  if (now - since < DESTROY_GRACE_MS + (int64_t)j->cfg.retain_days * 86400000LL) {
    free(roots);
    return;
  }
  for (size_t i = 0; i < n_on; i++) {
    const struct ks_root *k = find_ks_root(roots, n, on[i].version);
    int r;

    if (on[i].version >= cur || k == NULL || k->key_tokens > 0) {
      continue;
    }
    if (k->state == KS_ROOT_RETIRED) {
      r = keystore_root_destroyed(j->ks, k->version, now);
      if (r != KMS_OK) {
        continue; /* a token appeared meanwhile, or the keystore is busy: next round */
      }
    } else if (k->state != KS_ROOT_DESTROYED) {
      continue;
    }
    r = hsm_root_destroy(j->hs, on[i].version, err, sizeof(err));
    if (r == KMS_OK) {
      log_msg(LOG_WARN,
              "event=root_destroyed version=%u trusted=%d current=%u note=\"no key token "
              "names it; keystore backups taken before the rotation can no longer be opened\"",
              on[i].version, on[i].trusted, cur);
    } else if (r != KMS_ERR_NOT_FOUND) {
      log_msg(LOG_WARN, "event=root_destroy_failed version=%u reason=\"%s\"", on[i].version,
              err);
    }
  }
  free(roots);
}

static void *job_main(void *arg) {
  rootjob *j = arg;
  struct ks_token_move *m = calloc(BATCH_MAX + FAILED_MAX, sizeof(*m));
  int64_t last_log = 0;

  if (m == NULL) {
    set_state(j, JOB_FAILING, "out of memory");
    return NULL;
  }
  /* Throttled: about four commits a second, so progress shows and a crash loses little. */
  size_t per_batch = BATCH_MAX;
  if (j->cfg.per_second > 0 && j->cfg.per_second / 4 < BATCH_MAX) {
    per_batch = j->cfg.per_second / 4 > 0 ? j->cfg.per_second / 4 : 1;
  }
  for (;;) {
    int found = batch(j, m, per_batch + j->n_failed);
    if (found < 0) {
      if (!wait_ms(j, FAIL_WAIT_MS)) {
        break;
      }
      continue;
    }
    pthread_mutex_lock(&j->mu);
    uint64_t moved = j->run_moved;
    double rate = j->rate;
    bool was_running = j->state == JOB_RUNNING;
    if (found == 0) {
      j->state = JOB_IDLE;
    }
    pthread_mutex_unlock(&j->mu);
    if (found > 0 && kms_mono_ms() - last_log >= PROGRESS_LOG_MS) {
      last_log = kms_mono_ms();
      log_msg(LOG_INFO, "event=root_rewrap_progress root_version=%u moved=%llu rate=%.1f",
              hsm_root_current(j->h), (unsigned long long)moved, rate);
    }
    if (found > 0) {
      if (stopping(j)) {
        break;
      }
      continue;
    }
    if (was_running) {
      log_msg(LOG_INFO, "event=root_rewrap_done root_version=%u moved=%llu rate=%.1f",
              hsm_root_current(j->h), (unsigned long long)moved, rate);
    }
    retire(j);
    if (!wait_ms(j, IDLE_WAIT_MS)) {
      break;
    }
  }
  OPENSSL_cleanse(m, (BATCH_MAX + FAILED_MAX) * sizeof(*m));
  free(m);
  return NULL;
}

/* record_roots notes every root on the token and, the first time, the current one. */
static int record_roots(rootjob *j, char *err, size_t err_len) {
  struct hsm_root_info on[HSM_ROOTS_MAX];
  size_t n_on = 0;
  uint32_t cur = hsm_root_current(j->h);
  bool cur_trusted = false;
  int64_t now = kms_now_ms();
  int r;

  if ((r = hsm_root_list(j->hs, on, HSM_ROOTS_MAX, &n_on)) != KMS_OK) {
    snprintf(err, err_len, "listing root keys: %s", kms_strerror(r));
    return r;
  }
  for (size_t i = 0; i < n_on; i++) {
    if (on[i].version == cur) {
      cur_trusted = on[i].trusted;
    }
    if ((r = keystore_root_note(j->ks, on[i].version, on[i].trusted, now)) != KMS_OK) {
      snprintf(err, err_len, "recording root keys: %s", kms_strerror(r));
      return r;
    }
  }
  if ((r = keystore_root_set_current(j->ks, cur, cur_trusted, "kmsd", now, NULL)) != KMS_OK) {
    snprintf(err, err_len, "recording the current root key v%u: %s", cur, kms_strerror(r));
    return r;
  }
  if (!cur_trusted) {
    log_msg(LOG_WARN, "event=root_legacy version=%u note=\"the current root key is a legacy one: "
                      "its key tokens cannot be re-wrapped under a new root; rotate the tenants' "
                      "KEKs after a root rotation (docs/LIFECYCLE.md)\"", cur);
  }
  return KMS_OK;
}

int rootjob_start(rootjob **out, hsm *h, const char *ks_url, const struct rootjob_config *cfg,
                  char *err, size_t err_len) {
  rootjob *j = NULL;
  int r = KMS_ERR_INTERNAL;

  *out = NULL;
  if ((j = calloc(1, sizeof(*j))) == NULL) {
    return KMS_ERR_ALLOC;
  }
  j->h = h;
  j->cfg = *cfg;
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->cv, NULL);
  if ((r = hsm_session_open(h, &j->hs)) != KMS_OK) {
    snprintf(err, err_len, "root job: HSM session: %s", kms_strerror(r));
    goto out;
  }
  if ((r = keystore_open(&j->ks, ks_url, err, err_len)) != KMS_OK ||
      (r = record_roots(j, err, err_len)) != KMS_OK) {
    goto out;
  }
  if (pthread_create(&j->thread, NULL, job_main, j) != 0) {
    snprintf(err, err_len, "root job: cannot start its thread");
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  j->started = true;
  *out = j;
  j = NULL;
  r = KMS_OK;
out:
  rootjob_stop(j);
  return r;
}

void rootjob_stop(rootjob *j) {
  if (j == NULL) {
    return;
  }
  if (j->started) {
    pthread_mutex_lock(&j->mu);
    j->stop = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->thread, NULL);
  }
  keystore_close(j->ks);
  hsm_session_close(j->hs);
  pthread_cond_destroy(&j->cv);
  pthread_mutex_destroy(&j->mu);
  free(j);
}

static void kick(rootjob *j) {
  pthread_mutex_lock(&j->mu);
  j->kicked = true;
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&j->mu);
}

/* Token counts of a root listing against the current root |cur|. */
struct counts {
  uint64_t total, done, legacy;
};

static struct counts count(const struct ks_root *v, size_t n, uint32_t cur) {
  struct counts c = {0, 0, 0};

  for (size_t i = 0; i < n; i++) {
    c.total += v[i].key_tokens;
    if (v[i].version == cur) {
      c.done += v[i].key_tokens;
    } else if (v[i].trusted != 1) {
      c.legacy += v[i].key_tokens; /* legacy, or a root never seen on this token */
    }
  }
  return c;
}

int rootjob_rotate(rootjob *j, struct worker_ctx *w, const char *by, char *why, size_t why_len,
                   Tkms__RootRotateResponse **out) {
  struct hsm_root_info on[HSM_ROOTS_MAX];
  struct ks_root *roots = NULL;
  size_t n_on = 0, n = 0;
  uint32_t cur, prev = 0;
  char refused[192] = "";
  int64_t now = kms_now_ms();
  int r;

  *out = NULL;
  /* The ceremony ran in another process: look at the token again. */
  if ((r = hsm_root_rescan(w->hs, refused, sizeof(refused))) != KMS_OK) {
    snprintf(why, why_len, "%s", refused);
    return r;
  }
  if ((r = hsm_root_list(w->hs, on, HSM_ROOTS_MAX, &n_on)) != KMS_OK) {
    return r;
  }
  cur = hsm_root_current(j->h);
  if (n_on == 0 || on[n_on - 1].version <= cur) {
    snprintf(why, why_len,
             "no root key newer than the current v%u on the HSM token: the security officer "
             "makes one first with the key ceremony (kmsctl root create)%s%s",
             cur, refused[0] != '\0' ? "; refused: " : "", refused);
    return KMS_ERR_FAILED_PRECONDITION;
  }
  const struct hsm_root_info *next = &on[n_on - 1];
  if (!next->trusted) {
    snprintf(why, why_len,
             "root key v%u is not CKA_TRUSTED (not made by the key ceremony): its key tokens "
             "could never be re-wrapped again; refusing",
             next->version);
    return KMS_ERR_FAILED_PRECONDITION;
  }
  for (size_t i = 0; i < n_on; i++) {
    if ((r = keystore_root_note(w->ks, on[i].version, on[i].trusted, now)) != KMS_OK) {
      return r;
    }
  }
  /* The keystore first: after a crash here kmsd starts with the new root current. */
  r = keystore_root_set_current(w->ks, next->version, 1, by, now, &prev);
  if (r == KMS_ERR_FAILED_PRECONDITION) {
    snprintf(why, why_len, "root key v%u was destroyed before", next->version);
    return r;
  }
  if (r != KMS_OK || (r = hsm_root_use(w->hs, next->version, why, why_len)) != KMS_OK) {
    return r;
  }
  if ((r = keystore_root_list(w->ks, &roots, &n)) != KMS_OK) {
    return r;
  }
  struct counts c = count(roots, n, next->version);
  free(roots);
  Tkms__RootRotateResponse *m = malloc(sizeof(*m));
  if (m == NULL) {
    return KMS_ERR_ALLOC;
  }
  tkms__root_rotate_response__init(m);
  m->root_version = next->version;
  m->previous_version = prev != 0 ? prev : cur;
  m->legacy = c.legacy;
  m->to_rewrap = c.total - c.done - c.legacy;
  log_msg(LOG_WARN, "event=root_rotated version=%u previous=%u by=%s to_rewrap=%llu legacy=%llu",
          m->root_version, m->previous_version, by, (unsigned long long)m->to_rewrap,
          (unsigned long long)m->legacy);
  kick(j);
  *out = m;
  return KMS_OK;
}

static const char *root_state_name(int state) {
  switch (state) {
  case KS_ROOT_CURRENT: return "current";
  case KS_ROOT_RETIRED: return "retired";
  case KS_ROOT_DESTROYED: return "destroyed";
  default: return "unknown";
  }
}

static void status_free(Tkms__RootStatusResponse *m) {
  if (m != NULL) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
  }
}

int rootjob_status(rootjob *j, struct worker_ctx *w, char *why, size_t why_len,
                   Tkms__RootStatusResponse **out) {
  struct hsm_root_info on[HSM_ROOTS_MAX];
  struct ks_root *roots = NULL;
  size_t n_on = 0, n = 0;
  uint32_t cur = hsm_root_current(j->h);
  Tkms__RootStatusResponse *m = NULL;
  int r;

  (void)why;
  (void)why_len;
  *out = NULL;
  if ((r = hsm_root_list(w->hs, on, HSM_ROOTS_MAX, &n_on)) != KMS_OK ||
      (r = keystore_root_list(w->ks, &roots, &n)) != KMS_OK) {
    return r;
  }
  r = KMS_ERR_ALLOC;
  if ((m = calloc(1, sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__root_status_response__init(m);
  if (n > 0 && (m->roots = calloc(n, sizeof(*m->roots))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    Tkms__RootVersionInfo *v = malloc(sizeof(*v));
    if (v == NULL) {
      goto out;
    }
    tkms__root_version_info__init(v);
    m->roots[m->n_roots++] = v;
    if ((v->current_by = strdup(roots[i].current_by)) == NULL ||
        (v->state = strdup(root_state_name(roots[i].state))) == NULL) {
      goto out;
    }
    v->version = roots[i].version;
    v->trusted = roots[i].trusted == 1;
    v->key_tokens = roots[i].key_tokens;
    v->current_since_ms = roots[i].current_since_ms;
    v->destroyed_ms = roots[i].destroyed_ms;
    for (size_t k = 0; k < n_on; k++) {
      v->on_token = v->on_token || on[k].version == roots[i].version;
    }
  }
  struct counts c = count(roots, n, cur);
  m->current_version = cur;
  m->total = c.total;
  m->done = c.done;
  m->legacy = c.legacy;
  pthread_mutex_lock(&j->mu);
  m->rate = j->rate;
  m->job_state = strdup(job_state_names[j->state]);
  m->job_message = strdup(j->message);
  pthread_mutex_unlock(&j->mu);
  if (m->job_state == NULL || m->job_message == NULL) {
    goto out;
  }
  uint64_t pending = c.total - c.done - c.legacy;
  m->eta_s = pending == 0 ? 0 : m->rate > 0 ? (int64_t)((double)pending / m->rate + 0.5) : -1;
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  status_free(m);
  free(roots);
  return r;
}
