/* Session keys on a worker: open, fetch, close, shred and list them; re-wrap them after rotation. */
#include "sessions.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <protobuf-c/protobuf-c.h>

#include "dekwrap.h"
#include "keystore.h"
#include "kms_err.h"
#include "kms_time.h"
#include "kms_wire.h"
#include "lifecycle.h"
#include "log.h"

#define LIST_DEFAULT 500
#define REWRAP_BATCH 256 /* sessions per transaction (one fsync) */
#define REWRAP_JOBS 16   /* tenants looked at per tick */

_Static_assert(DEKWRAP_BLOB_LEN <= KS_SESSION_WRAPPED_MAX, "a wrapped session key must fit");
_Static_assert(KMS_SESSION_ID_MAX == KS_SESSION_ID_MAX, "one limit for session ids");
_Static_assert(SESSIONS_AAD_MAX == sizeof(SESSIONS_AAD_LABEL) - 1 + 1 + KMS_TENANT_ID_MAX + 1 +
                                       KMS_SESSION_ID_MAX + 4,
               "SESSIONS_AAD_MAX");

int
sessions_aad(uint8_t *out, size_t cap, size_t *out_len, const char *tenant_id,
             const char *session_id, uint32_t kek_version)
{
  size_t ll = sizeof(SESSIONS_AAD_LABEL) - 1;
  size_t tl = strnlen(tenant_id, KMS_TENANT_ID_MAX + 1);
  size_t sl = strnlen(session_id, KMS_SESSION_ID_MAX + 1);
  size_t n = ll + 1 + tl + 1 + sl + 4;
  *out_len = 0;
  if (tl == 0 || tl > KMS_TENANT_ID_MAX || sl == 0 || sl > KMS_SESSION_ID_MAX || n > cap) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  uint8_t *p = out;
  memcpy(p, SESSIONS_AAD_LABEL, ll);
  p += ll;
  *p++ = (uint8_t)tl;
  memcpy(p, tenant_id, tl);
  p += tl;
  *p++ = (uint8_t)sl;
  memcpy(p, session_id, sl);
  p += sl;
  *p++ = (uint8_t)(kek_version >> 24);
  *p++ = (uint8_t)(kek_version >> 16);
  *p++ = (uint8_t)(kek_version >> 8);
  *p++ = (uint8_t)kek_version;
  *out_len = n;
  return KMS_OK;
}

/* ---- KEKs: states ------------------------------------------------------------------ */

/*
 * Loading, the use budget and forced rotation are keyops' (keyops.h): a session
 * wrap shares the data keys' cache and counts against the same NIST limit.
 */

/* Says why a tenant or KEK version refuses service (the words of docs/LIFECYCLE.md). */
static int
refuse_state(const struct ks_kek *kek, int need_active, char *why, size_t why_len)
{
  if (kek->tenant_state != KS_TENANT_ACTIVE) {
    snprintf(why, why_len, "tenant %s is %s", kek->tenant_id,
             lifecycle_tenant_state_name(kek->tenant_state));
    return KMS_ERR_FAILED_PRECONDITION;
  }
  if (kek->state != KS_KEK_ACTIVE && (need_active || kek->state != KS_KEK_DECRYPT_ONLY)) {
    snprintf(why, why_len, "key version %u is %s", kek->version,
             lifecycle_version_state_name(kek->state));
    return KMS_ERR_FAILED_PRECONDITION;
  }
  return KMS_OK;
}

/* wrap encrypts |key| under loaded KEK |e| (version |version|) into a format-1 blob. */
static int
wrap(struct worker_ctx *w, kekcache_entry *e, const char *tenant_id, const char *session_id,
     uint32_t version, const uint8_t *key, uint8_t out[DEKWRAP_BLOB_LEN])
{
  uint8_t aad[SESSIONS_AAD_MAX];
  size_t aad_len = 0;
  struct dek_blob blob;
  int r = sessions_aad(aad, sizeof(aad), &aad_len, tenant_id, session_id, version);
  if (r != KMS_OK) {
    return r;
  }
  memset(&blob, 0, sizeof(blob));
  blob.kek_version = version;
  if (keyops_take_iv(w, blob.iv) != KMS_OK) {
    return KMS_ERR_INTERNAL;
  }
  r = hsm_gcm_encrypt(w->hs, kekcache_entry_key(e), blob.iv, aad, aad_len, key, DEKWRAP_KEY_LEN,
                      blob.ct_tag);
  if (r != KMS_OK) {
    return r;
  }
  dekwrap_blob_encode(out, &blob);
  return KMS_OK;
}

/* unwrap authenticates a stored blob under loaded KEK |e| into |key| (32 bytes). */
static int
unwrap(struct worker_ctx *w, kekcache_entry *e, const char *tenant_id, const char *session_id,
       const uint8_t *wrapped, size_t wrapped_len, uint8_t *key)
{
  uint8_t aad[SESSIONS_AAD_MAX];
  size_t aad_len = 0;
  struct dek_blob blob;
  int r = dekwrap_blob_parse(&blob, wrapped, wrapped_len);
  if (r == KMS_OK) {
    r = sessions_aad(aad, sizeof(aad), &aad_len, tenant_id, session_id, blob.kek_version);
  }
  if (r == KMS_OK) {
    r = hsm_gcm_decrypt(w->hs, kekcache_entry_key(e), blob.iv, aad, aad_len, blob.ct_tag,
                        sizeof(blob.ct_tag), key);
  }
  if (r == KMS_ERR_DECRYPT || r == KMS_ERR_INVALID_ARGUMENT) {
    /* Our own stored row does not authenticate: a damaged or tampered keystore. */
    log_msg(LOG_ERROR, "event=session_unwrap_failed tenant=%s reason=stored_key_rejected",
            tenant_id);
    return KMS_ERR_INTERNAL;
  }
  return r;
}

/* ---- Metadata: canonical bytes in the keystore ---------------------------------------- */

/*
 * Metadata is stored as u8 n || n x (u8 klen || key || u16 BE vlen || value),
 * entries in request order (kms_wire checked them like a context).
 */
static int
metadata_encode(uint8_t *out, size_t cap, size_t *out_len, size_t n,
                Tkms__ContextEntry *const *m)
{
  size_t off = 0;
  *out_len = 0;
  if (cap < 1 || n > KMS_CONTEXT_MAX_ENTRIES) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  out[off++] = (uint8_t)n;
  for (size_t i = 0; i < n; i++) {
    const char *v = m[i]->value != NULL ? m[i]->value : "";
    size_t kl = strlen(m[i]->key), vl = strlen(v);
    if (kl > 255 || vl > 65535 || cap - off < 1 + kl + 2 + vl) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    out[off++] = (uint8_t)kl;
    memcpy(out + off, m[i]->key, kl);
    off += kl;
    out[off++] = (uint8_t)(vl >> 8);
    out[off++] = (uint8_t)vl;
    memcpy(out + off, v, vl);
    off += vl;
  }
  *out_len = off;
  return KMS_OK;
}

static void
entries_free(Tkms__ContextEntry **e, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (e[i] != NULL) {
      free(e[i]->key);
      free(e[i]->value);
      free(e[i]);
    }
  }
  free(e);
}

/* metadata_decode turns stored bytes back into entries (malloc'd); an empty blob gives none. */
static int
metadata_decode(const uint8_t *p, size_t len, Tkms__ContextEntry ***out, size_t *out_n)
{
  Tkms__ContextEntry **e = NULL;
  size_t n = 0, off = 1, i = 0;
  *out = NULL;
  *out_n = 0;
  if (len == 0) {
    return KMS_OK;
  }
  n = p[0];
  if (n == 0) {
    return len == 1 ? KMS_OK : KMS_ERR_INTERNAL;
  }
  if (n > KMS_CONTEXT_MAX_ENTRIES || (e = calloc(n, sizeof(*e))) == NULL) {
    return n > KMS_CONTEXT_MAX_ENTRIES ? KMS_ERR_INTERNAL : KMS_ERR_ALLOC;
  }
  for (i = 0; i < n; i++) {
    size_t kl, vl;
    if (off + 1 > len || (kl = p[off]) == 0 || off + 1 + kl + 2 > len) {
      goto bad;
    }
    vl = (size_t)p[off + 1 + kl] << 8 | p[off + 2 + kl];
    if (off + 3 + kl + vl > len || (e[i] = malloc(sizeof(**e))) == NULL) {
      goto bad;
    }
    tkms__context_entry__init(e[i]);
    e[i]->key = strndup((const char *)p + off + 1, kl);
    e[i]->value = strndup((const char *)p + off + 3 + kl, vl);
    if (e[i]->key == NULL || e[i]->value == NULL) {
      goto bad;
    }
    off += 3 + kl + vl;
  }
  if (off != len) {
    goto bad;
  }
  *out = e;
  *out_n = n;
  return KMS_OK;
bad:
  entries_free(e, n);
  return KMS_ERR_INTERNAL;
}

/* ---- OpenSession / GetSessionKey ------------------------------------------------------- */

int
sessions_open(const struct keyops *k, struct worker_ctx *w, const char *by,
              const Tkms__OpenSessionRequest *req, struct keyops_result *res,
              struct sessions_key_info *info)
{
  struct ks_session *s = NULL;
  struct ks_kek kek;
  kekcache_entry *e = NULL;
  kms_secret *key = NULL;
  int existing = 0, r = KMS_ERR_ALLOC;

  if ((s = calloc(1, sizeof(*s))) == NULL) {
    goto out;
  }
  r = metadata_encode(s->metadata, sizeof(s->metadata), &s->metadata_len, req->n_metadata,
                      req->metadata);
  if (r != KMS_OK) {
    goto out;
  }
  for (int attempt = 0;; attempt++) {
    r = keystore_kek_current(w->ks, req->tenant_id, &kek);
    if (r != KMS_OK) {
      goto out;
    }
    if ((r = refuse_state(&kek, 1, res->message, sizeof(res->message))) != KMS_OK) {
      goto out;
    }
    if ((r = keyops_kek_acquire(k, w, &kek, &e)) != KMS_OK) {
      goto out;
    }
    r = keyops_spend_use(k, w, &kek, e);
    if (r != KMS_ERR_KEY_LIMIT || attempt >= 2) {
      break;
    }
    kekcache_release(k->cache, e);
    e = NULL;
    r = keyops_rotate_for_limit(w, &kek);
    keyops_forget_state(k); /* the newest version changed */
    if (r != KMS_OK) {
      goto out;
    }
  }
  if (r != KMS_OK) {
    goto out;
  }
  if ((key = kms_secret_new(DEKWRAP_KEY_LEN)) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  /* The key comes from the HSM's RNG, like every data key. */
  if ((r = hsm_random(w->hs, kms_secret_data(key), DEKWRAP_KEY_LEN)) != KMS_OK) {
    goto out;
  }
  r = wrap(w, e, req->tenant_id, req->session_id, kek.version, kms_secret_cdata(key),
           s->wrapped);
  if (r != KMS_OK) {
    goto out;
  }
  s->wrapped_len = DEKWRAP_BLOB_LEN;
  snprintf(s->tenant_id, sizeof(s->tenant_id), "%s", req->tenant_id);
  snprintf(s->session_id, sizeof(s->session_id), "%s", req->session_id);
  snprintf(s->created_by, sizeof(s->created_by), "%s", by);
  s->kek_version = kek.version;
  s->created_ms = kms_now_ms();
  r = keystore_session_create(w->ks, s, &existing);
  if (r == KMS_ERR_ALREADY_EXISTS) {
    snprintf(res->message, sizeof(res->message), "session %s of tenant %s already exists (%s)",
             req->session_id, req->tenant_id,
             existing == KS_SESSION_OPEN     ? "open"
             : existing == KS_SESSION_CLOSED ? "closed"
                                             : "shredded: an id is never reused");
    goto out;
  }
  if (r != KMS_OK) {
    goto out;
  }
  res->kek_version = kek.version;
  res->plaintext = key;
  key = NULL;
  info->state = KS_SESSION_OPEN;
  info->created_ms = s->created_ms;
  info->closed_ms = 0;
  r = KMS_OK;
out:
  kekcache_release(k->cache, e);
  kms_secret_free(key);
  free(s);
  return r;
}

int
sessions_get_key(const struct keyops *k, struct worker_ctx *w,
                 const Tkms__GetSessionKeyRequest *req, struct keyops_result *res,
                 struct sessions_key_info *info)
{
  struct ks_session *s = NULL;
  struct ks_kek kek;
  kekcache_entry *e = NULL;
  kms_secret *key = NULL;
  int r = KMS_ERR_ALLOC;

  if ((s = malloc(sizeof(*s))) == NULL) {
    goto out;
  }
  r = keystore_session_get(w->ks, req->tenant_id, req->session_id, s, &kek);
  if (r == KMS_OK && s->state == KS_SESSION_SHREDDED) {
    /* Shredded is gone: the same answer as never opened. */
    r = KMS_ERR_NOT_FOUND;
  }
  if (r == KMS_ERR_NOT_FOUND) {
    snprintf(res->message, sizeof(res->message), "session not found");
  }
  if (r != KMS_OK) {
    goto out;
  }
  if ((r = refuse_state(&kek, 0, res->message, sizeof(res->message))) != KMS_OK) {
    goto out;
  }
  if ((r = keyops_kek_acquire(k, w, &kek, &e)) != KMS_OK) {
    goto out;
  }
  if ((key = kms_secret_new(DEKWRAP_KEY_LEN)) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  r = unwrap(w, e, req->tenant_id, req->session_id, s->wrapped, s->wrapped_len,
             kms_secret_data(key));
  if (r != KMS_OK) {
    goto out;
  }
  res->kek_version = s->kek_version;
  res->plaintext = key;
  key = NULL;
  info->state = s->state;
  info->created_ms = s->created_ms;
  info->closed_ms = s->closed_ms;
  r = KMS_OK;
out:
  kekcache_release(k->cache, e);
  kms_secret_free(key);
  free(s);
  return r;
}

/* ---- Close / shred / list ---------------------------------------------------------------- */

static char *
xstrdup(const char *s)
{
  return strdup(s != NULL ? s : "");
}

static Tkms__SessionInfo *
session_info(const struct ks_session *s)
{
  Tkms__SessionInfo *m = malloc(sizeof(*m));
  if (m == NULL) {
    return NULL;
  }
  tkms__session_info__init(m);
  m->tenant_id = xstrdup(s->tenant_id);
  m->session_id = xstrdup(s->session_id);
  m->created_by = xstrdup(s->created_by);
  m->closed_by = xstrdup(s->closed_by);
  m->shredded_by = xstrdup(s->shredded_by);
  m->state = (uint32_t)s->state;
  m->kek_version = s->kek_version;
  m->created_ms = s->created_ms;
  m->closed_ms = s->closed_ms;
  m->shredded_ms = s->shredded_ms;
  if (m->tenant_id == NULL || m->session_id == NULL || m->created_by == NULL ||
      m->closed_by == NULL || m->shredded_by == NULL ||
      metadata_decode(s->metadata, s->metadata_len, &m->metadata, &m->n_metadata) != KMS_OK) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return NULL;
  }
  return m;
}

int
sessions_close(struct worker_ctx *w, const char *by, const Tkms__CloseSessionRequest *req,
               char *why, size_t why_len, Tkms__CloseSessionResponse **out)
{
  struct ks_session *s = NULL;
  Tkms__CloseSessionResponse *m = NULL;
  int r = KMS_ERR_ALLOC;

  *out = NULL;
  if ((s = calloc(1, sizeof(*s))) == NULL) {
    goto out;
  }
  r = keystore_session_close(w->ks, req->tenant_id, req->session_id, by, kms_now_ms(), s);
  if (r == KMS_ERR_NOT_FOUND) {
    snprintf(why, why_len, "session not found");
  } else if (r == KMS_ERR_FAILED_PRECONDITION) {
    snprintf(why, why_len, "session %s of tenant %s is shredded", req->session_id,
             req->tenant_id);
  }
  if (r != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__close_session_response__init(m);
  if ((m->session = session_info(s)) == NULL) {
    goto out;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  if (m != NULL) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
  }
  free(s);
  return r;
}

int
sessions_shred(struct worker_ctx *w, const char *by, const Tkms__ShredSessionRequest *req,
               char *why, size_t why_len, Tkms__ShredSessionResponse **out,
               uint32_t *out_kek_version)
{
  struct ks_session_receipt rc;
  Tkms__ShredSessionResponse *m = NULL;
  Tkms__SessionReceipt *x = NULL;
  int r;

  *out = NULL;
  *out_kek_version = 0;
  r = keystore_session_shred(w->ks, req->tenant_id, req->session_id, by, kms_now_ms(), &rc);
  if (r == KMS_ERR_NOT_FOUND) {
    snprintf(why, why_len, "session not found");
  } else if (r == KMS_ERR_FAILED_PRECONDITION) {
    snprintf(why, why_len, "session %s of tenant %s is already shredded", req->session_id,
             req->tenant_id);
  }
  if (r != KMS_OK) {
    return r;
  }
  *out_kek_version = rc.kek_version;
  /* Make it final in the files: no old WAL frame may still hold the wrapped key. */
  lifecycle_shred_sync(w);
  log_msg(LOG_INFO, "event=session_shredded receipt=%" PRIu64 " tenant=%s kek_version=%u by=%s",
          rc.id, rc.tenant_id, rc.kek_version, by);
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL || (x = malloc(sizeof(*x))) == NULL) {
    free(m);
    return r;
  }
  tkms__shred_session_response__init(m);
  tkms__session_receipt__init(x);
  m->receipt = x;
  x->id = rc.id;
  x->kek_version = rc.kek_version;
  x->created_ms = rc.created_ms;
  x->shredded_ms = rc.shredded_ms;
  x->tenant_id = xstrdup(rc.tenant_id);
  x->session_id = xstrdup(rc.session_id);
  x->shredded_by = xstrdup(rc.shredded_by);
  if (x->tenant_id == NULL || x->session_id == NULL || x->shredded_by == NULL) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return r;
  }
  *out = m;
  return KMS_OK;
}

/*
 * A page token is "<created_ms>.<session_id>" of the last session returned:
 * opaque to clients, checked here like any input.
 */
static int
parse_page_token(const char *t, int64_t *out_ms, const char **out_session)
{
  char *end = NULL;
  *out_ms = 0;
  *out_session = "";
  if (t == NULL || t[0] == '\0') {
    return KMS_OK;
  }
  if (t[0] < '0' || t[0] > '9') {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  long long v = strtoll(t, &end, 10);
  if (end == NULL || *end != '.' || v < 0 || !kms_wire_session_id_ok(end + 1)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_ms = v;
  *out_session = end + 1;
  return KMS_OK;
}

int
sessions_list(struct worker_ctx *w, const Tkms__ListSessionsRequest *req, char *why,
              size_t why_len, Tkms__ListSessionsResponse **out)
{
  struct ks_session_filter f;
  struct ks_session *list = NULL;
  Tkms__ListSessionsResponse *m = NULL;
  size_t n = 0;
  int more = 0, r;

  *out = NULL;
  memset(&f, 0, sizeof(f));
  f.tenant_id = req->tenant_id;
  f.created_from_ms = req->created_from_ms;
  f.created_to_ms = req->created_to_ms;
  f.state = (int)req->state;
  f.limit = req->limit != 0 ? req->limit : LIST_DEFAULT;
  if (parse_page_token(req->page_token, &f.after_created_ms, &f.after_session) != KMS_OK) {
    snprintf(why, why_len, "page_token: not one this kmsd issued");
    return KMS_ERR_INVALID_ARGUMENT;
  }
  struct ks_tenant t;
  r = keystore_tenant_get(w->ks, req->tenant_id, &t);
  if (r == KMS_ERR_NOT_FOUND) {
    snprintf(why, why_len, "no tenant %s", req->tenant_id);
  }
  if (r != KMS_OK) {
    return r;
  }
  r = keystore_session_list(w->ks, &f, &list, &n, &more);
  if (r != KMS_OK) {
    return r;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__list_sessions_response__init(m);
  m->next_page_token = NULL;
  if (n > 0 && (m->sessions = calloc(n, sizeof(*m->sessions))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if ((m->sessions[i] = session_info(&list[i])) == NULL) {
      goto out;
    }
    m->n_sessions++;
  }
  char token[32 + KMS_SESSION_ID_MAX];
  token[0] = '\0';
  if (more && n > 0) {
    snprintf(token, sizeof(token), "%" PRId64 ".%s", list[n - 1].created_ms,
             list[n - 1].session_id);
  }
  if ((m->next_page_token = strdup(token)) == NULL) {
    goto out;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  if (m != NULL) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
  }
  free(list);
  return r;
}

/* ---- Background re-wrap after a rotation ---------------------------------------------------- */

/* rewrap_batch does one batch of |job|; returns 1 if the job has more, 0 if done or paused. */
static int
rewrap_batch(const struct keyops *k, struct worker_ctx *w, const struct ks_rewrap_job *job,
             struct ks_session *batch, struct ks_rewrap_update *u, uint8_t (*blobs)[DEKWRAP_BLOB_LEN],
             size_t *moved)
{
  struct ks_kek target, src;
  kekcache_entry *te = NULL, *se = NULL;
  kms_secret *key = NULL;
  size_t n = 0, nu = 0, m = 0;
  int stale = 0, more = 0, r;
  char scratch[160];

  r = keystore_kek_get(w->ks, job->tenant_id, job->target_version, &target);
  if (r != KMS_OK || refuse_state(&target, 1, scratch, sizeof(scratch)) != KMS_OK) {
    /* Target gone out of service (or tenant suspended): paused until that changes. */
    goto out;
  }
  r = keystore_rewrap_batch(w->ks, job, REWRAP_BATCH, batch, &n);
  if (r != KMS_OK) {
    goto out;
  }
  if ((r = keyops_kek_acquire(k, w, &target, &te)) != KMS_OK ||
      (key = kms_secret_new(DEKWRAP_KEY_LEN)) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    struct ks_session *s = &batch[i];
    if (s->kek_version == job->target_version) {
      continue;
    }
    if (se == NULL || kekcache_entry_version(se) != s->kek_version) {
      kekcache_release(k->cache, se);
      se = NULL;
      if (keystore_kek_get(w->ks, job->tenant_id, s->kek_version, &src) != KMS_OK ||
          refuse_state(&src, 0, scratch, sizeof(scratch)) != KMS_OK ||
          keyops_kek_acquire(k, w, &src, &se) != KMS_OK) {
        /* A disabled source version: this key stays where it is (docs/SESSIONS.md). */
        log_msg(LOG_WARN, "event=session_rewrap_skipped tenant=%s version=%u", job->tenant_id,
                s->kek_version);
        continue;
      }
    }
    if (unwrap(w, se, job->tenant_id, s->session_id, s->wrapped, s->wrapped_len,
               kms_secret_data(key)) != KMS_OK ||
        keyops_spend_use(k, w, &target, te) != KMS_OK ||
        wrap(w, te, job->tenant_id, s->session_id, target.version, kms_secret_cdata(key),
             blobs[nu]) != KMS_OK) {
      log_msg(LOG_WARN, "event=session_rewrap_failed tenant=%s", job->tenant_id);
      continue;
    }
    u[nu].session_id = s->session_id;
    u[nu].old_version = s->kek_version;
    u[nu].wrapped = blobs[nu];
    u[nu].wrapped_len = DEKWRAP_BLOB_LEN;
    nu++;
  }
  more = n == REWRAP_BATCH;
  r = keystore_rewrap_commit(w->ks, job, u, nu, n > 0 ? batch[n - 1].session_id : job->after,
                             !more, &m, &stale);
  if (r != KMS_OK || stale) {
    more = 0;
    goto out;
  }
  *moved += m;
  if (!more) {
    log_msg(LOG_INFO, "event=session_rewrap_done tenant=%s version=%u", job->tenant_id,
            job->target_version);
  }
out:
  kekcache_release(k->cache, te);
  kekcache_release(k->cache, se);
  kms_secret_free(key);
  for (size_t i = 0; i < n; i++) {
    OPENSSL_cleanse(batch[i].wrapped, sizeof(batch[i].wrapped));
  }
  return more;
}

size_t
sessions_rewrap_tick(const struct keyops *k, struct worker_ctx *w, int64_t budget_ms)
{
  struct ks_rewrap_job jobs[REWRAP_JOBS];
  struct ks_session *batch = calloc(REWRAP_BATCH, sizeof(*batch));
  struct ks_rewrap_update *u = calloc(REWRAP_BATCH, sizeof(*u));
  uint8_t (*blobs)[DEKWRAP_BLOB_LEN] = calloc(REWRAP_BATCH, DEKWRAP_BLOB_LEN);
  int64_t deadline = kms_mono_ms() + budget_ms;
  size_t n = 0, moved = 0;

  if (batch == NULL || u == NULL || blobs == NULL ||
      keystore_rewrap_jobs(w->ks, jobs, REWRAP_JOBS, &n) != KMS_OK) {
    n = 0;
  }
  for (size_t i = 0; i < n && kms_mono_ms() < deadline; i++) {
    struct ks_rewrap_job job = jobs[i];
    while (kms_mono_ms() < deadline) {
      if (!rewrap_batch(k, w, &job, batch, u, blobs, &moved)) {
        break;
      }
      /* A full batch was committed: its last id is the job's cursor now. */
      snprintf(job.after, sizeof(job.after), "%s", batch[REWRAP_BATCH - 1].session_id);
    }
  }
  if (moved > 0) {
    log_msg(LOG_INFO, "event=session_rewrap moved=%zu ms=%" PRId64, moved,
            kms_mono_ms() - (deadline - budget_ms));
  }
  free(batch);
  free(u);
  free(blobs);
  return moved;
}
