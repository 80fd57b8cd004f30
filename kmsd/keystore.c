/* Keystore front end: picks a backend by URL scheme and checks arguments before dispatching. */
#include "keystore.h"

#include <stdio.h>
#include <string.h>

#include "kms_err.h"

/*
 * Backends, looked up by URL scheme. A PostgreSQL backend joins this table;
 * nothing else in kmsd needs to change.
 */
static const struct keystore_ops *const backends[] = {
    &keystore_sqlite_ops,
};

/* Longest scheme we echo back in an error message. */
#define SCHEME_ECHO_MAX 32

/* A tenant id is 1..KS_TENANT_ID_MAX bytes; the wire layer has checked its characters. */
static int valid_tenant_id(const char *tenant_id) {
  size_t n;

  if (tenant_id == NULL) {
    return 0;
  }
  n = strnlen(tenant_id, KS_TENANT_ID_MAX + 1);
  return n >= 1 && n <= KS_TENANT_ID_MAX;
}

/*
 * valid_new_kek checks a KEK about to be recorded. Its state must be active (or
 * left zero): the keystore records new versions as active, and anything else
 * means the caller is confused. Its use counter is ignored: a new version has
 * reserved nothing, and callers may build it from a copy of the previous one.
 */
static int valid_new_kek(const struct ks_kek *kek) {
  if (kek == NULL) {
    return 0;
  }
  /* The id lives in a fixed array: it must be terminated inside it. */
  if (memchr(kek->tenant_id, '\0', sizeof(kek->tenant_id)) == NULL ||
      !valid_tenant_id(kek->tenant_id)) {
    return 0;
  }
  if (kek->version == 0) {
    return 0;
  }
  if (kek->state != 0 && kek->state != KS_KEK_ACTIVE) {
    return 0;
  }
  if (kek->token_len == 0 || kek->token_len > HSM_KEY_TOKEN_MAX) {
    return 0;
  }
  if (kek->created_ms < 0) {
    return 0;
  }
  return 1;
}

int keystore_open(keystore **out, const char *url, char *err, size_t err_len) {
  const struct keystore_ops *ops = NULL;
  const char *colon;
  size_t scheme_len, i;
  int r = KMS_ERR_INTERNAL;

  if (err != NULL && err_len > 0) {
    err[0] = '\0';
  }
  if (out == NULL) {
    kms_set_err(err, err_len, "keystore_open: no output handle");
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (url == NULL) {
    kms_set_err(err, err_len, "no keystore URL configured");
    r = KMS_ERR_CONFIG;
    goto out;
  }
  colon = strchr(url, ':');
  if (colon == NULL || colon == url) {
    kms_set_err(err, err_len, "keystore URL has no scheme (expected e.g. sqlite:/path/to/kms.db)");
    r = KMS_ERR_CONFIG;
    goto out;
  }
  scheme_len = (size_t)(colon - url);
  for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
    if (strlen(backends[i]->scheme) == scheme_len &&
        strncmp(backends[i]->scheme, url, scheme_len) == 0) {
      ops = backends[i];
      break;
    }
  }
  if (ops == NULL) {
    /*
     * Echo only the scheme: the rest of a URL (a PostgreSQL one, say) may carry
     * a password, and this message goes to the log.
     */
    kms_set_err(err, err_len, "unknown keystore URL scheme \"%.*s\" (supported: sqlite)",
            (int)(scheme_len < SCHEME_ECHO_MAX ? scheme_len : SCHEME_ECHO_MAX), url);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  /* The backend parses the rest: each has its own location syntax. */
  r = ops->open(out, colon + 1, err, err_len);
  if (r == KMS_OK && (*out == NULL || (*out)->ops != ops)) {
    keystore_close(*out);
    *out = NULL;
    r = KMS_ERR_INTERNAL;
  }
out:
  return r;
}

void keystore_close(keystore *ks) {
  if (ks == NULL) {
    return;
  }
  ks->ops->close(ks);
}

int keystore_schema_version(keystore *ks, int *out_version) {
  int r;

  if (out_version == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_version = 0;
  if (ks == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->schema_version(ks, out_version);
  if (r != KMS_OK) {
    *out_version = 0;
  }
  return r;
}

int keystore_tenant_create(keystore *ks, const struct ks_kek *kek) {
  if (ks == NULL || !valid_new_kek(kek) || kek->version != 1) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->tenant_create(ks, kek);
}

int keystore_tenant_get(keystore *ks, const char *tenant_id, struct ks_tenant *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Outputs are zeroed on entry and filled only on success. */
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->tenant_get(ks, tenant_id, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_kek_get(keystore *ks, const char *tenant_id, uint32_t version,
                     struct ks_kek *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Versions start at 1; 0 names nothing, like any other unknown version. */
  if (version == 0) {
    return KMS_ERR_NOT_FOUND;
  }
  r = ks->ops->kek_get(ks, tenant_id, version, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_kek_current(keystore *ks, const char *tenant_id, struct ks_kek *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->kek_current(ks, tenant_id, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_kek_add_version(keystore *ks, const struct ks_kek *kek) {
  /* The backend checks the number against the current version, under its lock. */
  if (ks == NULL || !valid_new_kek(kek)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->kek_add_version(ks, kek);
}

int keystore_kek_reserve_uses(keystore *ks, const char *tenant_id, uint32_t version,
                              uint64_t n, uint64_t limit, uint64_t *out_total) {
  int r;

  if (out_total != NULL) {
    *out_total = 0;
  }
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (version == 0) {
    return KMS_ERR_NOT_FOUND;
  }
  r = ks->ops->kek_reserve_uses(ks, tenant_id, version, n, limit, out_total);
  if (r != KMS_OK && out_total != NULL) {
    *out_total = 0;
  }
  return r;
}

/* ---- Key lifecycle -------------------------------------------------------------- */

/* A principal is 1..KS_PRINCIPAL_MAX bytes; identity.c has checked its characters. */
static int valid_principal(const char *by) {
  size_t n;

  if (by == NULL) {
    return 0;
  }
  n = strnlen(by, KS_PRINCIPAL_MAX + 1);
  return n >= 1 && n <= KS_PRINCIPAL_MAX;
}

/* An optional tenant filter: NULL or "" means every tenant. */
static int valid_tenant_filter(const char *tenant_id) {
  return tenant_id == NULL || tenant_id[0] == '\0' || valid_tenant_id(tenant_id);
}

/* LIST_OUT_INIT zeroes list outputs on entry (so a failure leaves nothing to free); 0 if NULL. */
#define LIST_OUT_INIT(out, out_n)                                                       \
  ((out) != NULL && (out_n) != NULL ? (*(out) = NULL, *(out_n) = 0, 1) : 0)

int keystore_tenant_list(keystore *ks, const char *after, size_t limit,
                         struct ks_tenant **out, size_t *out_n) {
  if (!LIST_OUT_INIT(out, out_n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks == NULL || limit == 0 || !valid_tenant_filter(after)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->tenant_list(ks, after != NULL ? after : "", limit, out, out_n);
}

int keystore_kek_list(keystore *ks, const char *tenant_id, struct ks_version_info **out,
                      size_t *out_n) {
  if (!LIST_OUT_INIT(out, out_n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->kek_list(ks, tenant_id, out, out_n);
}

int keystore_event_list(keystore *ks, const char *tenant_id, size_t limit,
                        struct ks_event **out, size_t *out_n) {
  if (!LIST_OUT_INIT(out, out_n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks == NULL || !valid_tenant_id(tenant_id) || limit == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->event_list(ks, tenant_id, limit, out, out_n);
}

int keystore_event_range(keystore *ks, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                         size_t limit, struct ks_event_row **out, size_t *out_n, int *out_more) {
  if (out_more == NULL || !LIST_OUT_INIT(out, out_n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_more = 0;
  if (ks == NULL || limit == 0 || from_ms < 0 || to_ms < from_ms ||
      (tenant_id != NULL && tenant_id[0] != '\0' && !valid_tenant_id(tenant_id))) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks->ops->event_range == NULL) {
    return KMS_ERR_UNIMPLEMENTED;
  }
  return ks->ops->event_range(ks, tenant_id != NULL ? tenant_id : "", from_ms, to_ms, limit, out,
                              out_n, out_more);
}

int keystore_event_add(keystore *ks, const char *tenant_id, uint32_t version,
                       const char *event, const char *by, const char *detail) {
  if (ks == NULL || !valid_tenant_id(tenant_id) || event == NULL || event[0] == '\0' ||
      !valid_principal(by)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->event_add(ks, tenant_id, version, event, by, detail != NULL ? detail : "");
}

int keystore_kek_rotate(keystore *ks, const struct ks_kek *kek, const char *by,
                        const char *reason) {
  if (ks == NULL || !valid_new_kek(kek) || !valid_principal(by)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->kek_rotate(ks, kek, by, reason != NULL ? reason : "");
}

int keystore_change_state(keystore *ks, const struct ks_change *c, int *out_state) {
  int dummy = 0;

  if (out_state == NULL) {
    out_state = &dummy;
  }
  *out_state = 0;
  if (ks == NULL || c == NULL || !valid_tenant_id(c->tenant_id) || c->from_states == 0 ||
      c->to_state < 0 || c->to_state > KS_KEK_DESTROYED || !valid_principal(c->by) ||
      c->event == NULL || c->event[0] == '\0') {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Destruction has its own path (keystore_destroy): it must delete the tokens. */
  if ((c->version != 0 && c->to_state == KS_KEK_DESTROYED) ||
      (c->version == 0 && c->to_state == KS_TENANT_DESTROYED)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->change_state(ks, c, out_state);
}

int keystore_tenant_set_rotation(keystore *ks, const char *tenant_id, uint32_t days,
                                 const char *by) {
  if (ks == NULL || !valid_tenant_id(tenant_id) || !valid_principal(by)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->tenant_set_rotation(ks, tenant_id, days, by);
}

int keystore_rotation_due(keystore *ks, int64_t now_ms, uint32_t default_days,
                          struct ks_kek *out, size_t cap, size_t *out_n) {
  if (out_n == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_n = 0;
  if (ks == NULL || out == NULL || cap == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->rotation_due(ks, now_ms, default_days, out, cap, out_n);
}

int keystore_request_create(keystore *ks, struct ks_request *req) {
  if (ks == NULL || req == NULL || !valid_tenant_id(req->tenant_id) ||
      !valid_principal(req->requested_by) || req->action < KS_ACTION_DISABLE_TENANT ||
      req->action > KS_ACTION_DESTROY_VERSION ||
      (req->action == KS_ACTION_DESTROY_VERSION) != (req->version != 0) ||
      req->approvals_required < 2 || req->approvals_required > KS_APPROVERS_MAX ||
      req->expires_ms <= req->requested_ms) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->request_create(ks, req);
}

int keystore_request_get(keystore *ks, uint64_t id, struct ks_request *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (id == 0 || id > INT64_MAX) {
    return KMS_ERR_NOT_FOUND;
  }
  r = ks->ops->request_get(ks, id, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_request_list(keystore *ks, const char *tenant_id, int include_closed,
                          struct ks_request **out, size_t *out_n) {
  if (!LIST_OUT_INIT(out, out_n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks == NULL || !valid_tenant_filter(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->request_list(ks, tenant_id != NULL ? tenant_id : "", include_closed, out,
                               out_n);
}

int keystore_request_approve(keystore *ks, uint64_t id, const char *approver, int64_t now_ms,
                             struct ks_request *out, int *out_executed, int *out_refusal) {
  if (out == NULL || out_executed == NULL || out_refusal == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  *out_executed = 0;
  *out_refusal = KS_APPROVE_OK;
  if (ks == NULL || !valid_principal(approver)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (id == 0 || id > INT64_MAX) {
    return KMS_ERR_NOT_FOUND;
  }
  return ks->ops->request_approve(ks, id, approver, now_ms, out, out_executed, out_refusal);
}

int keystore_request_cancel(keystore *ks, const char *tenant_id, uint32_t version,
                            int action, const char *by, size_t *out_n) {
  size_t dummy = 0;

  if (out_n == NULL) {
    out_n = &dummy;
  }
  *out_n = 0;
  if (ks == NULL || !valid_tenant_id(tenant_id) || !valid_principal(by) ||
      action < KS_ACTION_DISABLE_TENANT || action > KS_ACTION_DESTROY_VERSION) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->request_cancel(ks, tenant_id, version, action, by, out_n);
}

int keystore_requests_expire(keystore *ks, int64_t now_ms, size_t *out_n) {
  size_t dummy = 0;

  if (out_n == NULL) {
    out_n = &dummy;
  }
  *out_n = 0;
  if (ks == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->requests_expire(ks, now_ms, out_n);
}

int keystore_destruction_due(keystore *ks, int64_t now_ms, struct ks_due *out, size_t cap,
                             size_t *out_n) {
  if (out_n == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_n = 0;
  if (ks == NULL || out == NULL || cap == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->destruction_due(ks, now_ms, out, cap, out_n);
}

int keystore_destroy(keystore *ks, const char *tenant_id, uint32_t version, int64_t now_ms,
                     struct ks_receipt *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->destroy(ks, tenant_id, version, now_ms, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_shred_sync(keystore *ks) {
  if (ks == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->shred_sync(ks);
}

int keystore_receipt_list(keystore *ks, const char *tenant_id, struct ks_receipt **out,
                          size_t *out_n) {
  if (!LIST_OUT_INIT(out, out_n)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks == NULL || !valid_tenant_filter(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->receipt_list(ks, tenant_id != NULL ? tenant_id : "", out, out_n);
}

/* ---- Session keys (schema 3) -------------------------------------------------- */

/* A session id is 1..KS_SESSION_ID_MAX bytes; the wire layer has checked its characters. */
static int valid_session_id(const char *session_id) {
  size_t n;

  if (session_id == NULL) {
    return 0;
  }
  n = strnlen(session_id, KS_SESSION_ID_MAX + 1);
  return n >= 1 && n <= KS_SESSION_ID_MAX;
}

static int valid_by(const char *by) {
  return by != NULL && strnlen(by, KS_PRINCIPAL_MAX + 1) <= KS_PRINCIPAL_MAX;
}

int keystore_session_create(keystore *ks, const struct ks_session *s, int *out_state) {
  int dummy = 0;

  if (out_state == NULL) {
    out_state = &dummy;
  }
  *out_state = 0;
  if (ks == NULL || s == NULL || memchr(s->tenant_id, '\0', sizeof(s->tenant_id)) == NULL ||
      memchr(s->session_id, '\0', sizeof(s->session_id)) == NULL ||
      !valid_tenant_id(s->tenant_id) || !valid_session_id(s->session_id) ||
      s->kek_version == 0 || s->wrapped_len == 0 || s->wrapped_len > sizeof(s->wrapped) ||
      s->metadata_len > sizeof(s->metadata) ||
      memchr(s->created_by, '\0', sizeof(s->created_by)) == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->session_create(ks, s, out_state);
}

int keystore_session_get(keystore *ks, const char *tenant_id, const char *session_id,
                         struct ks_session *out, struct ks_kek *out_kek) {
  if (out == NULL || out_kek == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks == NULL || !valid_tenant_id(tenant_id) || !valid_session_id(session_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->session_get(ks, tenant_id, session_id, out, out_kek);
}

int keystore_session_close(keystore *ks, const char *tenant_id, const char *session_id,
                           const char *by, int64_t now_ms, struct ks_session *out) {
  if (out == NULL || ks == NULL || !valid_tenant_id(tenant_id) ||
      !valid_session_id(session_id) || !valid_by(by)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->session_close(ks, tenant_id, session_id, by, now_ms, out);
}

int keystore_session_shred(keystore *ks, const char *tenant_id, const char *session_id,
                           const char *by, int64_t now_ms, struct ks_session_receipt *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id) || !valid_session_id(session_id) ||
      !valid_by(by)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->session_shred(ks, tenant_id, session_id, by, now_ms, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_session_list(keystore *ks, const struct ks_session_filter *f,
                          struct ks_session **out, size_t *out_n, int *out_more) {
  if (!LIST_OUT_INIT(out, out_n) || out_more == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_more = 0;
  if (ks == NULL || f == NULL || !valid_tenant_id(f->tenant_id) || f->limit == 0 ||
      (f->after_session != NULL && f->after_session[0] != '\0' &&
       !valid_session_id(f->after_session))) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->session_list(ks, f, out, out_n, out_more);
}

int keystore_rewrap_jobs(keystore *ks, struct ks_rewrap_job *out, size_t cap, size_t *out_n) {
  if (out_n == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_n = 0;
  if (ks == NULL || out == NULL || cap == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->rewrap_jobs(ks, out, cap, out_n);
}

int keystore_rewrap_batch(keystore *ks, const struct ks_rewrap_job *job, size_t limit,
                          struct ks_session *out, size_t *out_n) {
  if (out_n == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_n = 0;
  if (ks == NULL || job == NULL || out == NULL || limit == 0 ||
      !valid_tenant_id(job->tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->rewrap_batch(ks, job, limit, out, out_n);
}

int keystore_rewrap_commit(keystore *ks, const struct ks_rewrap_job *job,
                           const struct ks_rewrap_update *u, size_t n, const char *after,
                           int done, size_t *out_moved, int *out_stale) {
  if (out_moved == NULL || out_stale == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_moved = 0;
  *out_stale = 0;
  if (ks == NULL || job == NULL || (n > 0 && u == NULL) || after == NULL ||
      !valid_tenant_id(job->tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->rewrap_commit(ks, job, u, n, after, done, out_moved, out_stale);
}

int
keystore_backup(keystore *ks, const char *path)
{
  if (ks == NULL || path == NULL || path[0] == '\0') {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (ks->ops->backup == NULL) {
    return KMS_ERR_UNIMPLEMENTED;
  }
  return ks->ops->backup(ks, path);
}

/* ---- Root key rotation ------------------------------------------------------------ */

int keystore_root_note(keystore *ks, uint32_t version, int trusted, int64_t now_ms) {
  if (ks == NULL || version == 0 || now_ms < 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->root_note(ks, version, trusted, now_ms);
}

int keystore_root_set_current(keystore *ks, uint32_t version, int trusted, const char *by,
                              int64_t now_ms, uint32_t *out_previous) {
  if (out_previous != NULL) {
    *out_previous = 0;
  }
  if (ks == NULL || version == 0 || by == NULL || strlen(by) > KS_PRINCIPAL_MAX || now_ms < 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->root_set_current(ks, version, trusted, by, now_ms, out_previous);
}

int keystore_state_gen(keystore *ks, uint64_t *out) {
  if (ks == NULL || out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->state_gen(ks, out);
}

int keystore_root_list(keystore *ks, struct ks_root **out, size_t *out_n) {
  if (out == NULL || out_n == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  *out_n = 0;
  if (ks == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->root_list(ks, out, out_n);
}

int keystore_root_pending(keystore *ks, uint32_t current, struct ks_token_move *out, size_t cap,
                          size_t *out_n) {
  if (out_n == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_n = 0;
  if (ks == NULL || current == 0 || out == NULL || cap == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->root_pending(ks, current, out, cap, out_n);
}

int keystore_root_move_tokens(keystore *ks, const struct ks_token_move *m, size_t n,
                              size_t *out_moved) {
  if (out_moved == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_moved = 0;
  if (ks == NULL || (n > 0 && m == NULL)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  for (size_t i = 0; i < n; i++) {
    if (memchr(m[i].tenant_id, '\0', sizeof(m[i].tenant_id)) == NULL ||
        !valid_tenant_id(m[i].tenant_id) || m[i].version == 0 || m[i].root == 0 ||
        m[i].token_len == 0 || m[i].token_len > HSM_KEY_TOKEN_MAX ||
        m[i].old_len == 0 || m[i].old_len > HSM_KEY_TOKEN_MAX) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
  }
  return ks->ops->root_move_tokens(ks, m, n, out_moved);
}

int keystore_root_destroyed(keystore *ks, uint32_t version, int64_t now_ms) {
  if (ks == NULL || version == 0 || now_ms < 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->root_destroyed(ks, version, now_ms);
}
