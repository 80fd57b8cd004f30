/* Key lifecycle on a worker: rotation, states, dual control, crypto-shredding, the timer's work. */
#include "lifecycle.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "keystore.h"
#include "kms_err.h"
#include "kms_time.h"
#include "log.h"
#include "sessions.h"

#define DAY_MS INT64_C(86400000)
#define EVENTS_SHOWN 100    /* ListKeys: newest events returned */
#define TICK_DESTROY_MAX 64 /* destructions per tick; the rest on the next */
#define TICK_ROTATE_MAX 16  /* automatic rotations per tick (each is an HSM keygen) */
#define LIST_TENANTS_DEFAULT 500
#define TICK_REWRAP_MS 200 /* time a tick may spend re-wrapping session keys (kmsd/sessions.c) */

/* Set when a WAL checkpoint after a shred could not finish: the next tick retries. */
static atomic_int shred_sync_owed;
/* One tick at a time: a slow tick must not pile up behind itself. */
static atomic_int tick_queued;

static const char *const version_states[] = {
    "unknown", "active", "decrypt-only", "disabled", "pending destruction", "destroyed"};
static const char *const tenant_states[] = {"unknown", "active", "disabled", "pending destruction",
                                            "destroyed"};
static const char *const request_states[] = {"unknown", "pending", "executed", "expired",
                                             "cancelled"};
static const char *const actions[] = {"unknown", "disable_tenant", "destroy_tenant",
                                      "destroy_version"};

const char *
lifecycle_version_state_name(int state)
{
  return state >= 1 && state <= 5 ? version_states[state] : version_states[0];
}

const char *
lifecycle_tenant_state_name(int state)
{
  return state >= 1 && state <= 4 ? tenant_states[state] : tenant_states[0];
}

/* xstrdup: strings of response messages are malloc'd so free_unpacked can free them. */
static char *
xstrdup(const char *s)
{
  return strdup(s != NULL ? s : "");
}

static void
msg_free(void *msg)
{
  if (msg != NULL) {
    protobuf_c_message_free_unpacked((ProtobufCMessage *)msg, NULL);
  }
}

/* Says what state a target is in, for FAILED_PRECONDITION answers. */
static void
why_state(char *why, size_t why_len, const char *tenant_id, uint32_t version, int state)
{
  if (version == 0) {
    snprintf(why, why_len, "tenant %s is %s", tenant_id, lifecycle_tenant_state_name(state));
  } else {
    snprintf(why, why_len, "key version %u of tenant %s is %s", version, tenant_id,
             lifecycle_version_state_name(state));
  }
}

/* not_found names what is missing: the tenant, or a version it never had. */
static int
not_found(struct worker_ctx *w, char *why, size_t why_len, const char *tenant_id, uint32_t version)
{
  struct ks_tenant t;
  if (version != 0 && keystore_tenant_get(w->ks, tenant_id, &t) == KMS_OK) {
    snprintf(why, why_len, "tenant %s has no key version %u", tenant_id, version);
  } else {
    snprintf(why, why_len, "no tenant %s", tenant_id);
  }
  return KMS_ERR_NOT_FOUND;
}

/*
 * drop_loaded removes a version's loaded KEK from the cache and the HSM, so a
 * key leaving service is gone from the HSM at once (a request holding it
 * finishes first; its object then stays until kmsd stops, see LIFECYCLE.md).
 * version 0: every version of the tenant. It runs after every state change,
 * so whatever the cache keeps about a KEK is never older than the keystore.
 */
static void
drop_loaded(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
            uint32_t version)
{
  uint32_t first = version, last = version;
  /* Cached states (kekcache.h) of this process must not outlive the change. */
  kekcache_forget_state(lc->cache);
  if (version == 0) {
    struct ks_tenant t;
    if (keystore_tenant_get(w->ks, tenant_id, &t) != KMS_OK) {
      return;
    }
    first = 1;
    last = t.current_version;
  }
  for (uint32_t v = first; v >= 1 && v <= last; v++) {
    hsm_key key;
    if (kekcache_remove(lc->cache, tenant_id, v, &key)) {
      hsm_kek_unload(w->hs, key);
    }
  }
}

/* ---- Conversions to wire messages ------------------------------------------ */

static uint32_t
effective_period(const struct lifecycle *lc, const struct ks_tenant *t)
{
  return t->rotation_period_days != 0 ? t->rotation_period_days : lc->cfg->rotation_period_days;
}

static Tkms__TenantInfo *
tenant_info(const struct lifecycle *lc, const struct ks_tenant *t)
{
  Tkms__TenantInfo *m = malloc(sizeof(*m));
  if (m == NULL) {
    return NULL;
  }
  tkms__tenant_info__init(m);
  m->tenant_id = xstrdup(t->tenant_id);
  m->state_changed_by = xstrdup(t->state_changed_by);
  if (m->tenant_id == NULL || m->state_changed_by == NULL) {
    msg_free(m);
    return NULL;
  }
  m->state = (uint32_t)t->state;
  m->current_version = t->current_version;
  m->created_ms = t->created_ms;
  m->state_changed_ms = t->state_changed_ms;
  m->rotation_period_days = effective_period(lc, t);
  m->rotation_period_own = t->rotation_period_days != 0;
  if (m->rotation_period_days != 0 && t->state == KS_TENANT_ACTIVE) {
    m->next_rotation_ms = t->current_created_ms + (int64_t)m->rotation_period_days * DAY_MS;
  }
  m->destroy_after_ms = t->destroy_after_ms;
  return m;
}

static Tkms__ApprovalRequestInfo *
request_info(const struct ks_request *q)
{
  Tkms__ApprovalRequestInfo *m = malloc(sizeof(*m));
  if (m == NULL) {
    return NULL;
  }
  tkms__approval_request_info__init(m);
  m->id = q->id;
  m->action = xstrdup(actions[q->action >= 1 && q->action <= 3 ? q->action : 0]);
  m->tenant_id = xstrdup(q->tenant_id);
  m->requested_by = xstrdup(q->requested_by);
  m->state = xstrdup(request_states[q->state >= 1 && q->state <= 4 ? q->state : 0]);
  m->approved_by = calloc(q->n_approved > 0 ? q->n_approved : 1, sizeof(char *));
  if (m->action == NULL || m->tenant_id == NULL || m->requested_by == NULL || m->state == NULL ||
      m->approved_by == NULL) {
    msg_free(m);
    return NULL;
  }
  for (size_t i = 0; i < q->n_approved; i++) {
    m->approved_by[i] = xstrdup(q->approved_by[i]);
    if (m->approved_by[i] == NULL) {
      msg_free(m);
      return NULL;
    }
    m->n_approved_by = i + 1;
  }
  m->version = q->version;
  m->waiting_days = q->waiting_days;
  m->requested_ms = q->requested_ms;
  m->expires_ms = q->expires_ms;
  m->approvals_required = q->approvals_required;
  m->closed_ms = q->closed_ms;
  return m;
}

static Tkms__DestructionReceipt *
receipt_info(const struct ks_receipt *r)
{
  Tkms__DestructionReceipt *m = malloc(sizeof(*m));
  size_t nv = 1;
  if (m == NULL) {
    return NULL;
  }
  tkms__destruction_receipt__init(m);
  for (const char *p = r->versions; *p != '\0'; p++) {
    nv += *p == ',';
  }
  m->tenant_id = xstrdup(r->tenant_id);
  m->requested_by = xstrdup(r->requested_by);
  m->versions = calloc(nv, sizeof(uint32_t));
  m->approved_by = calloc(r->n_approved > 0 ? r->n_approved : 1, sizeof(char *));
  if (m->tenant_id == NULL || m->requested_by == NULL || m->versions == NULL ||
      m->approved_by == NULL) {
    msg_free(m);
    return NULL;
  }
  for (const char *p = r->versions; *p != '\0' && m->n_versions < nv;) {
    char *end = NULL;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p) {
      break; /* "..." of a truncated list */
    }
    m->versions[m->n_versions++] = (uint32_t)v;
    p = *end == ',' ? end + 1 : end;
  }
  for (size_t i = 0; i < r->n_approved; i++) {
    m->approved_by[i] = xstrdup(r->approved_by[i]);
    if (m->approved_by[i] == NULL) {
      msg_free(m);
      return NULL;
    }
    m->n_approved_by = i + 1;
  }
  m->id = r->id;
  m->version = r->version;
  m->request_id = r->request_id;
  m->requested_ms = r->requested_ms;
  m->approved_ms = r->approved_ms;
  m->destroyed_ms = r->destroyed_ms;
  return m;
}

/* ---- Rotation -------------------------------------------------------------- */

/* rotate_now makes the next KEK version inside the HSM and records it in one transaction. */
static int
rotate_now(const struct lifecycle *lc, struct worker_ctx *w, const char *by, const char *reason,
           const char *tenant_id, uint32_t *out_new, uint32_t *out_old, char *why, size_t why_len)
{
  struct ks_kek cur, kek;
  int r = keystore_kek_current(w->ks, tenant_id, &cur);
  if (r == KMS_ERR_NOT_FOUND) {
    return not_found(w, why, why_len, tenant_id, 0);
  }
  if (r != KMS_OK) {
    return r;
  }
  if (cur.tenant_state != KS_TENANT_ACTIVE) {
    why_state(why, why_len, tenant_id, 0, cur.tenant_state);
    return KMS_ERR_FAILED_PRECONDITION;
  }
  memset(&kek, 0, sizeof(kek));
  memcpy(kek.tenant_id, cur.tenant_id, sizeof(kek.tenant_id));
  kek.version = cur.version + 1;
  kek.state = KS_KEK_ACTIVE;
  kek.root_version = cur.root_version;
  kek.created_ms = kms_now_ms();
  r = hsm_kek_generate(w->hs, kek.token, &kek.token_len, &kek.wrap_mech, &kek.root_version);
  if (r != KMS_OK) {
    return r;
  }
  r = keystore_kek_rotate(w->ks, &kek, by, reason);
  if (r == KMS_ERR_ALREADY_EXISTS) {
    snprintf(why, why_len, "another rotation of tenant %s won; try again", tenant_id);
    return KMS_ERR_UNAVAILABLE;
  }
  if (r == KMS_ERR_FAILED_PRECONDITION) {
    struct ks_tenant t;
    if (keystore_tenant_get(w->ks, tenant_id, &t) == KMS_OK && t.state == KS_TENANT_ACTIVE) {
      /* The keystore refused a token under a root destroyed meanwhile (schema 5): the next
       * attempt wraps under the current root. */
      snprintf(why, why_len, "root key v%u was retired during the rotation; try again",
               (unsigned)kek.root_version);
      return KMS_ERR_UNAVAILABLE;
    }
    snprintf(why, why_len, "tenant %s is not active", tenant_id);
    return r;
  }
  if (r != KMS_OK) {
    return r;
  }
  /* The cached "newest version" of this tenant is stale now. */
  kekcache_forget_state(lc->cache);
  *out_new = kek.version;
  *out_old = cur.version;
  log_msg(LOG_INFO, "event=kek_rotated tenant=%s version=%u by=%s reason=\"%s\"", tenant_id,
          kek.version, by, reason);
  return KMS_OK;
}

int
lifecycle_rotate(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                 const char *tenant_id, char *why, size_t why_len, Tkms__RotateKeyResponse **out)
{
  uint32_t v_new = 0, v_old = 0;
  *out = NULL;
  int r = rotate_now(lc, w, by, "requested by an officer", tenant_id, &v_new, &v_old, why, why_len);
  if (r != KMS_OK) {
    return r;
  }
  Tkms__RotateKeyResponse *m = malloc(sizeof(*m));
  if (m == NULL) {
    return KMS_ERR_ALLOC;
  }
  tkms__rotate_key_response__init(m);
  m->kek_version = v_new;
  m->previous_version = v_old;
  *out = m;
  return KMS_OK;
}

int
lifecycle_set_rotation(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                       const char *tenant_id, uint32_t days, char *why, size_t why_len,
                       Tkms__SetRotationPeriodResponse **out)
{
  struct ks_tenant t;
  *out = NULL;
  int r = keystore_tenant_set_rotation(w->ks, tenant_id, days, by);
  if (r == KMS_ERR_NOT_FOUND) {
    return not_found(w, why, why_len, tenant_id, 0);
  }
  if (r != KMS_OK || (r = keystore_tenant_get(w->ks, tenant_id, &t)) != KMS_OK) {
    return r;
  }
  Tkms__SetRotationPeriodResponse *m = malloc(sizeof(*m));
  if (m == NULL) {
    return KMS_ERR_ALLOC;
  }
  tkms__set_rotation_period_response__init(m);
  m->tenant = tenant_info(lc, &t);
  if (m->tenant == NULL) {
    msg_free(m);
    return KMS_ERR_ALLOC;
  }
  *out = m;
  return KMS_OK;
}

/* ---- Listings ---------------------------------------------------------------- */

int
lifecycle_list_keys(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
                    char *why, size_t why_len, Tkms__ListKeysResponse **out)
{
  struct ks_tenant t;
  struct ks_version_info *vs = NULL;
  struct ks_event *ev = NULL;
  size_t nv = 0, ne = 0;
  Tkms__ListKeysResponse *m = NULL;
  int r = KMS_ERR_INTERNAL;

  *out = NULL;
  r = keystore_tenant_get(w->ks, tenant_id, &t);
  if (r == KMS_ERR_NOT_FOUND) {
    r = not_found(w, why, why_len, tenant_id, 0);
    goto out;
  }
  if (r != KMS_OK || (r = keystore_kek_list(w->ks, tenant_id, &vs, &nv)) != KMS_OK ||
      (r = keystore_event_list(w->ks, tenant_id, EVENTS_SHOWN, &ev, &ne)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__list_keys_response__init(m);
  if ((m->tenant = tenant_info(lc, &t)) == NULL ||
      (m->versions = calloc(nv > 0 ? nv : 1, sizeof(*m->versions))) == NULL ||
      (m->events = calloc(ne > 0 ? ne : 1, sizeof(*m->events))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < nv; i++) {
    Tkms__KeyVersionInfo *v = malloc(sizeof(*v));
    if (v == NULL) {
      goto out;
    }
    tkms__key_version_info__init(v);
    m->versions[m->n_versions++] = v;
    if ((v->state_changed_by = xstrdup(vs[i].state_changed_by)) == NULL) {
      goto out;
    }
    v->version = vs[i].version;
    v->state = (uint32_t)vs[i].state;
    v->created_ms = vs[i].created_ms;
    v->state_changed_ms = vs[i].state_changed_ms;
    v->uses = vs[i].uses;
    v->root_version = vs[i].root_version;
    v->destroy_after_ms = vs[i].destroy_after_ms;
  }
  for (size_t i = 0; i < ne; i++) {
    Tkms__KeyEvent *e = malloc(sizeof(*e));
    if (e == NULL) {
      goto out;
    }
    tkms__key_event__init(e);
    m->events[m->n_events++] = e;
    if ((e->event = xstrdup(ev[i].event)) == NULL || (e->by = xstrdup(ev[i].by)) == NULL ||
        (e->detail = xstrdup(ev[i].detail)) == NULL) {
      goto out;
    }
    e->at_ms = ev[i].at_ms;
    e->version = ev[i].version;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  free(vs);
  free(ev);
  return r;
}

int
lifecycle_list_tenants(const struct lifecycle *lc, struct worker_ctx *w, const char *after,
                       uint32_t limit, char *why, size_t why_len, Tkms__ListTenantsResponse **out)
{
  struct ks_tenant *ts = NULL;
  size_t n = 0, want = limit != 0 ? limit : LIST_TENANTS_DEFAULT;
  Tkms__ListTenantsResponse *m = NULL;
  int r;

  *out = NULL;
  /* One more than asked tells whether another page follows. */
  r = keystore_tenant_list(w->ks, after, want + 1, &ts, &n);
  if (r != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__list_tenants_response__init(m);
  size_t shown = n > want ? want : n;
  if ((m->tenants = calloc(shown > 0 ? shown : 1, sizeof(*m->tenants))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < shown; i++) {
    if ((m->tenants[i] = tenant_info(lc, &ts[i])) == NULL) {
      goto out;
    }
    m->n_tenants = i + 1;
  }
  if (n > want && (m->next_after = xstrdup(ts[shown - 1].tenant_id)) == NULL) {
    goto out;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  free(ts);
  return r;
}

int
lifecycle_list_requests(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
                        bool include_closed, char *why, size_t why_len,
                        Tkms__ListRequestsResponse **out)
{
  struct ks_request *qs = NULL;
  size_t n = 0;
  Tkms__ListRequestsResponse *m = NULL;
  int r;

  *out = NULL;
  /* Mark what expired first, so the listing tells the truth without waiting for the timer. */
  (void)keystore_requests_expire(w->ks, kms_now_ms(), NULL);
  r = keystore_request_list(w->ks, tenant_id, include_closed, &qs, &n);
  if (r != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__list_requests_response__init(m);
  if ((m->requests = calloc(n > 0 ? n : 1, sizeof(*m->requests))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if ((m->requests[i] = request_info(&qs[i])) == NULL) {
      goto out;
    }
    m->n_requests = i + 1;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  free(qs);
  return r;
}

int
lifecycle_list_receipts(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
                        char *why, size_t why_len, Tkms__ListReceiptsResponse **out)
{
  struct ks_receipt *rs = NULL;
  size_t n = 0;
  Tkms__ListReceiptsResponse *m = NULL;
  int r;

  *out = NULL;
  r = keystore_receipt_list(w->ks, tenant_id, &rs, &n);
  if (r != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__list_receipts_response__init(m);
  if ((m->receipts = calloc(n > 0 ? n : 1, sizeof(*m->receipts))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if ((m->receipts[i] = receipt_info(&rs[i])) == NULL) {
      goto out;
    }
    m->n_receipts = i + 1;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  free(rs);
  return r;
}

/* ---- State changes --------------------------------------------------------------- */

static int
change_response(int pending, const struct ks_request *q, int state, Tkms__KeyChangeResponse **out)
{
  Tkms__KeyChangeResponse *m = malloc(sizeof(*m));
  if (m == NULL) {
    return KMS_ERR_ALLOC;
  }
  tkms__key_change_response__init(m);
  m->pending_approval = pending != 0;
  m->state = (uint32_t)state;
  if (q != NULL && (m->request = request_info(q)) == NULL) {
    msg_free(m);
    return KMS_ERR_ALLOC;
  }
  *out = m;
  return KMS_OK;
}

/* change applies one immediate state change and explains a refusal. */
static int
change(const struct lifecycle *lc, struct worker_ctx *w, const struct ks_change *c, char *why,
       size_t why_len, int *out_state)
{
  int r = keystore_change_state(w->ks, c, out_state);
  if (r == KMS_ERR_NOT_FOUND) {
    return not_found(w, why, why_len, c->tenant_id, c->version);
  }
  if (r == KMS_ERR_FAILED_PRECONDITION) {
    why_state(why, why_len, c->tenant_id, c->version, *out_state);
    return r;
  }
  if (r == KMS_OK) {
    drop_loaded(lc, w, c->tenant_id, c->version);
    log_msg(LOG_INFO, "event=key_state tenant=%s version=%u state=%d change=%s by=%s", c->tenant_id,
            c->version, *out_state, c->event, c->by);
  }
  return r;
}

/*
 * open_request opens a dual-control request after checking that the target
 * is in a state the action applies to (so a hopeless request is refused now,
 * not after a second officer's time).
 */
static int
open_request(const struct lifecycle *lc, struct worker_ctx *w, const char *by, int action,
             const char *tenant_id, uint32_t version, uint32_t days, char *why, size_t why_len,
             Tkms__KeyChangeResponse **out)
{
  struct ks_request q;
  int state = 0;
  unsigned allowed;
  int r;

  if (version == 0) {
    struct ks_tenant t;
    r = keystore_tenant_get(w->ks, tenant_id, &t);
    state = t.state;
    allowed = action == KS_ACTION_DISABLE_TENANT
                  ? KS_STATE_BIT(KS_TENANT_ACTIVE)
                  : KS_STATE_BIT(KS_TENANT_ACTIVE) | KS_STATE_BIT(KS_TENANT_DISABLED);
  } else {
    struct ks_kek k;
    r = keystore_kek_get(w->ks, tenant_id, version, &k);
    state = k.state;
    allowed = KS_STATE_BIT(KS_KEK_ACTIVE) | KS_STATE_BIT(KS_KEK_DECRYPT_ONLY) |
              KS_STATE_BIT(KS_KEK_DISABLED);
    if (r == KMS_OK && k.tenant_state != KS_TENANT_ACTIVE && k.tenant_state != KS_TENANT_DISABLED) {
      why_state(why, why_len, tenant_id, 0, k.tenant_state);
      return KMS_ERR_FAILED_PRECONDITION;
    }
  }
  if (r == KMS_ERR_NOT_FOUND) {
    return not_found(w, why, why_len, tenant_id, version);
  }
  if (r != KMS_OK) {
    return r;
  }
  if ((allowed & KS_STATE_BIT(state)) == 0) {
    why_state(why, why_len, tenant_id, version, state);
    return KMS_ERR_FAILED_PRECONDITION;
  }
  memset(&q, 0, sizeof(q));
  q.action = action;
  snprintf(q.tenant_id, sizeof(q.tenant_id), "%s", tenant_id);
  q.version = version;
  q.waiting_days = days;
  snprintf(q.requested_by, sizeof(q.requested_by), "%s", by);
  q.requested_ms = kms_now_ms();
  q.expires_ms = q.requested_ms + (int64_t)lc->cfg->approval_window_s * 1000;
  q.approvals_required = lc->cfg->approvals_required;
  r = keystore_request_create(w->ks, &q);
  if (r == KMS_ERR_ALREADY_EXISTS) {
    snprintf(why, why_len, "request %llu for this is already pending approval",
             (unsigned long long)q.id);
    return r;
  }
  if (r == KMS_ERR_NOT_FOUND) {
    return not_found(w, why, why_len, tenant_id, version);
  }
  if (r != KMS_OK) {
    return r;
  }
  log_msg(LOG_INFO, "event=approval_requested request=%llu action=%s tenant=%s version=%u by=%s",
          (unsigned long long)q.id, actions[action], tenant_id, version, by);
  return change_response(1, &q, state, out);
}

int
lifecycle_disable(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                  const char *tenant_id, uint32_t version, char *why, size_t why_len,
                  Tkms__KeyChangeResponse **out)
{
  *out = NULL;
  if (version == 0) {
    /* Suspending a whole tenant stops a clinic's service: a second officer must agree. */
    return open_request(lc, w, by, KS_ACTION_DISABLE_TENANT, tenant_id, 0, 0, why, why_len, out);
  }
  struct ks_change c = {
      .tenant_id = tenant_id,
      .version = version,
      .from_states = KS_STATE_BIT(KS_KEK_ACTIVE) | KS_STATE_BIT(KS_KEK_DECRYPT_ONLY),
      .to_state = KS_KEK_DISABLED,
      .by = by,
      .event = "disabled",
  };
  int state = 0;
  int r = change(lc, w, &c, why, why_len, &state);
  if (r != KMS_OK) {
    return r;
  }
  return change_response(0, NULL, state, out);
}

int
lifecycle_enable(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                 const char *tenant_id, uint32_t version, char *why, size_t why_len,
                 Tkms__KeyChangeResponse **out)
{
  struct ks_change c = {
      .tenant_id = tenant_id,
      .version = version,
      .from_states =
          version == 0 ? KS_STATE_BIT(KS_TENANT_DISABLED) : KS_STATE_BIT(KS_KEK_DISABLED),
      .to_state = version == 0 ? KS_TENANT_ACTIVE : KS_KEK_ACTIVE,
      .by = by,
      .event = "enabled",
  };
  int state = 0;
  *out = NULL;
  int r = change(lc, w, &c, why, why_len, &state);
  if (r != KMS_OK) {
    return r;
  }
  return change_response(0, NULL, state, out);
}

int
lifecycle_schedule_destruction(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                               const char *tenant_id, uint32_t version, uint32_t waiting_days,
                               bool no_waiting, char *why, size_t why_len,
                               Tkms__KeyChangeResponse **out)
{
  uint32_t lo = lc->cfg->allow_short_waiting_periods ? 0 : CONFIG_DESTRUCTION_WAIT_MIN_DAYS;
  uint32_t days = waiting_days != 0 ? waiting_days : lc->cfg->destruction_wait_days;
  *out = NULL;
  if (no_waiting) {
    if (!lc->cfg->allow_short_waiting_periods) {
      snprintf(why, why_len,
               "no_waiting needs allow_short_waiting_periods = true in kmsd.conf "
               "(a test knob)");
      return KMS_ERR_INVALID_ARGUMENT;
    }
    days = 0;
  }
  if (days < lo || days > CONFIG_DESTRUCTION_WAIT_MAX_DAYS) {
    snprintf(why, why_len, "waiting_days: %u-%u days", lo, CONFIG_DESTRUCTION_WAIT_MAX_DAYS);
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return open_request(lc, w, by,
                      version == 0 ? KS_ACTION_DESTROY_TENANT : KS_ACTION_DESTROY_VERSION,
                      tenant_id, version, days, why, why_len, out);
}

int
lifecycle_cancel_destruction(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                             const char *tenant_id, uint32_t version, char *why, size_t why_len,
                             Tkms__KeyChangeResponse **out)
{
  size_t cancelled = 0;
  int state = 0;
  *out = NULL;
  int r = keystore_request_cancel(
      w->ks, tenant_id, version,
      version == 0 ? KS_ACTION_DESTROY_TENANT : KS_ACTION_DESTROY_VERSION, by, &cancelled);
  if (r != KMS_OK) {
    return r;
  }
  struct ks_change c = {
      .tenant_id = tenant_id,
      .version = version,
      .from_states =
          KS_STATE_BIT(version == 0 ? KS_TENANT_PENDING_DESTRUCTION : KS_KEK_PENDING_DESTRUCTION),
      .to_state = 0, /* the state before */
      .by = by,
      .event = "destruction_cancelled",
  };
  r = change(lc, w, &c, why, why_len, &state);
  if (r == KMS_ERR_FAILED_PRECONDITION && cancelled > 0) {
    /* Only a request was pending: cancelling it is the whole job. */
    log_msg(LOG_INFO, "event=destruction_request_cancelled tenant=%s version=%u by=%s", tenant_id,
            version, by);
    return change_response(0, NULL, state, out);
  }
  if (r == KMS_ERR_FAILED_PRECONDITION) {
    size_t n = strlen(why);
    snprintf(why + n, why_len - n, ", not pending destruction");
  }
  if (r != KMS_OK) {
    return r;
  }
  return change_response(0, NULL, state, out);
}

/* ---- Crypto-shredding ------------------------------------------------------------ */

/* shred_sync makes the deletion final in the keystore files; owed for the next tick if busy. */
static void
shred_sync(struct worker_ctx *w)
{
  int r = keystore_shred_sync(w->ks);
  if (r != KMS_OK) {
    atomic_store(&shred_sync_owed, 1);
    log_msg(LOG_WARN, "event=shred_sync_incomplete code=%d note=\"retried on the next tick\"", r);
  } else {
    atomic_store(&shred_sync_owed, 0);
  }
}

void
lifecycle_shred_sync(struct worker_ctx *w)
{
  shred_sync(w);
}

/* destroy_one crypto-shreds one due target and returns its receipt. */
static int
destroy_one(const struct lifecycle *lc, struct worker_ctx *w, const char *tenant_id,
            uint32_t version, struct ks_receipt *rc)
{
  int r = keystore_destroy(w->ks, tenant_id, version, kms_now_ms(), rc);
  if (r != KMS_OK) {
    return r;
  }
  /* The tokens are gone from the keystore; now from the HSM's memory too. */
  drop_loaded(lc, w, tenant_id, version);
  shred_sync(w);
  log_msg(LOG_INFO,
          "event=crypto_shredded receipt=%llu tenant=%s version=%u versions=%s request=%llu "
          "requested_by=%s approvals=%zu",
          (unsigned long long)rc->id, tenant_id, version, rc->versions,
          (unsigned long long)rc->request_id, rc->requested_by, rc->n_approved);
  return KMS_OK;
}

int
lifecycle_approve(const struct lifecycle *lc, struct worker_ctx *w, const char *by,
                  uint64_t request_id, char *why, size_t why_len, Tkms__ApproveResponse **out)
{
  struct ks_request q;
  struct ks_receipt rc;
  int executed = 0, refusal = 0;
  Tkms__ApproveResponse *m = NULL;
  int r;

  *out = NULL;
  r = keystore_request_approve(w->ks, request_id, by, kms_now_ms(), &q, &executed, &refusal);
  if (r == KMS_ERR_NOT_FOUND) {
    snprintf(why, why_len, "no approval request %llu", (unsigned long long)request_id);
    goto out;
  }
  if (r == KMS_ERR_FAILED_PRECONDITION) {
    switch (refusal) {
    case KS_APPROVE_SELF:
      snprintf(why, why_len, "request %llu: the requester cannot approve their own request",
               (unsigned long long)request_id);
      break;
    case KS_APPROVE_TWICE:
      snprintf(why, why_len, "request %llu: already approved by %s", (unsigned long long)request_id,
               by);
      break;
    case KS_APPROVE_EXPIRED:
      snprintf(why, why_len, "request %llu expired: its approval window closed",
               (unsigned long long)request_id);
      break;
    case KS_APPROVE_CLOSED:
      snprintf(why, why_len, "request %llu is %s", (unsigned long long)request_id,
               request_states[q.state >= 1 && q.state <= 4 ? q.state : 0]);
      break;
    default: {
      int st = 0;
      if (q.version != 0) {
        struct ks_kek k;
        st = keystore_kek_get(w->ks, q.tenant_id, q.version, &k) == KMS_OK ? k.state : 0;
      } else {
        struct ks_tenant t;
        st = keystore_tenant_get(w->ks, q.tenant_id, &t) == KMS_OK ? t.state : 0;
      }
      why_state(why, why_len, q.tenant_id, q.version, st);
      break;
    }
    }
    /* A refused approval is a security event: keep it in the tenant's history. */
    if (q.tenant_id[0] != '\0') {
      (void)keystore_event_add(w->ks, q.tenant_id, q.version, "approval_refused", by, why);
    }
    log_msg(LOG_INFO, "event=approval_refused request=%llu by=%s reason=\"%s\"",
            (unsigned long long)request_id, by, why);
    goto out;
  }
  if (r != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__approve_response__init(m);
  m->executed = executed != 0;
  log_msg(LOG_INFO, "event=approved request=%llu by=%s executed=%d", (unsigned long long)q.id, by,
          executed);
  if (executed) {
    /* The key left service: drop its loaded KEKs from the HSM now. */
    drop_loaded(lc, w, q.tenant_id, q.action == KS_ACTION_DESTROY_VERSION ? q.version : 0);
    if (q.action != KS_ACTION_DISABLE_TENANT && q.waiting_days == 0) {
      /* A zero waiting period (test knob) is due at once: shred and return the receipt. */
      if ((m->receipts = calloc(1, sizeof(*m->receipts))) == NULL) {
        goto out;
      }
      r = destroy_one(lc, w, q.tenant_id, q.action == KS_ACTION_DESTROY_VERSION ? q.version : 0,
                      &rc);
      if (r == KMS_OK) {
        if ((m->receipts[0] = receipt_info(&rc)) == NULL) {
          r = KMS_ERR_ALLOC;
          goto out;
        }
        m->n_receipts = 1;
      } else {
        /* Approved and scheduled; the timer shreds it on its next tick. */
        log_msg(LOG_WARN, "event=shred_deferred request=%llu code=%d", (unsigned long long)q.id, r);
      }
      r = KMS_ERR_ALLOC;
    }
  }
  if ((m->request = request_info(&q)) == NULL) {
    goto out;
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  return r;
}

/* ---- ReEncrypt -------------------------------------------------------------------- */

int
lifecycle_re_encrypt(const struct lifecycle *lc, const struct keyops *k, struct worker_ctx *w,
                     const Tkms__ReEncryptRequest *req, char *why, size_t why_len,
                     Tkms__ReEncryptResponse **out)
{
  struct keyops_result res;
  uint32_t src = 0;
  Tkms__ReEncryptResponse *m = NULL;
  int r;

  *out = NULL;
  memset(&res, 0, sizeof(res));
  r = keyops_reencrypt(k, w, &res, req->tenant_id, req->n_context, req->context,
                       req->wrapped_key.data, req->wrapped_key.len, req->target_version, &src);
  if (r != KMS_OK) {
    snprintf(why, why_len, "%s", res.message);
    goto out;
  }
  r = KMS_ERR_ALLOC;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__re_encrypt_response__init(m);
  if ((m->wrapped_key.data = malloc(res.blob_len)) == NULL) {
    goto out;
  }
  memcpy(m->wrapped_key.data, res.blob, res.blob_len);
  m->wrapped_key.len = res.blob_len;
  m->kek_version = res.kek_version;
  m->source_version = src;
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  keyops_result_clear(&res);
  return r;
}

int
lifecycle_re_encrypt_batch(const struct lifecycle *lc, const struct keyops *k, struct worker_ctx *w,
                           const Tkms__ReEncryptBatchRequest *req, char *why, size_t why_len,
                           Tkms__ReEncryptBatchResponse **out)
{
  Tkms__ReEncryptBatchResponse *m = NULL;
  int r = KMS_ERR_ALLOC;

  *out = NULL;
  if ((m = malloc(sizeof(*m))) == NULL) {
    goto out;
  }
  tkms__re_encrypt_batch_response__init(m);
  if ((m->results = calloc(req->n_items, sizeof(*m->results))) == NULL) {
    goto out;
  }
  for (size_t i = 0; i < req->n_items; i++) {
    const Tkms__ReEncryptItem *it = req->items[i];
    struct keyops_result res;
    uint32_t src = 0;
    Tkms__ReEncryptResult *x = malloc(sizeof(*x));
    if (x == NULL) {
      goto out;
    }
    tkms__re_encrypt_result__init(x);
    m->results[m->n_results++] = x;
    memset(&res, 0, sizeof(res));
    int ir = keyops_reencrypt(k, w, &res, req->tenant_id, it->n_context, it->context,
                              it->wrapped_key.data, it->wrapped_key.len, req->target_version, &src);
    x->status = (Tkms__StatusCode)kms_err_to_status(ir);
    if (ir == KMS_OK) {
      x->wrapped_key.data = malloc(res.blob_len);
      if (x->wrapped_key.data == NULL) {
        keyops_result_clear(&res);
        goto out;
      }
      memcpy(x->wrapped_key.data, res.blob, res.blob_len);
      x->wrapped_key.len = res.blob_len;
      x->kek_version = res.kek_version;
      x->source_version = src;
    } else {
      x->message = xstrdup(res.message[0] != '\0' ? res.message : kms_strerror(ir));
      if (x->message == NULL) {
        keyops_result_clear(&res);
        goto out;
      }
    }
    keyops_result_clear(&res);
  }
  *out = m;
  m = NULL;
  r = KMS_OK;
out:
  msg_free(m);
  return r;
}

/* ---- The timer ------------------------------------------------------------------------ */

void
lifecycle_tick(const struct lifecycle *lc, struct worker_ctx *w)
{
  struct ks_due due[TICK_DESTROY_MAX];
  struct ks_kek *rot = NULL;
  size_t n = 0, expired = 0;
  int64_t now = kms_now_ms();
  char why[160];

  if (keystore_requests_expire(w->ks, now, &expired) == KMS_OK && expired > 0) {
    log_msg(LOG_INFO, "event=approval_requests_expired count=%zu", expired);
  }
  if (keystore_destruction_due(w->ks, now, due, TICK_DESTROY_MAX, &n) == KMS_OK) {
    for (size_t i = 0; i < n; i++) {
      struct ks_receipt rc;
      int r = destroy_one(lc, w, due[i].tenant_id, due[i].version, &rc);
      if (r != KMS_OK && r != KMS_ERR_FAILED_PRECONDITION) {
        log_msg(LOG_WARN, "event=shred_failed tenant=%s version=%u code=%d", due[i].tenant_id,
                due[i].version, r);
      }
    }
  }
  if (atomic_load(&shred_sync_owed)) {
    shred_sync(w);
  }
  rot = calloc(TICK_ROTATE_MAX, sizeof(*rot));
  if (rot != NULL && keystore_rotation_due(w->ks, now, lc->cfg->rotation_period_days, rot,
                                           TICK_ROTATE_MAX, &n) == KMS_OK) {
    for (size_t i = 0; i < n; i++) {
      uint32_t v_new = 0, v_old = 0;
      int r = rotate_now(lc, w, "kmsd", "automatic: rotation period reached", rot[i].tenant_id,
                         &v_new, &v_old, why, sizeof(why));
      if (r != KMS_OK) {
        log_msg(LOG_WARN, "event=auto_rotation_failed tenant=%s code=%d", rot[i].tenant_id, r);
      }
    }
  }
  free(rot);
  /*
   * Session keys follow their tenant's rotations in the background, within a
   * time budget per tick so a tenant with 10^6 sessions never holds a worker
   * for long. The use budget is the one keyops applies (main.c sets the same).
   */
  struct keyops k;
  memset(&k, 0, sizeof(k));
  k.cache = lc->cache;
  k.max_uses = lc->cfg->kek_max_uses;
  k.reserve_block = lc->cfg->kek_max_uses >= 1u << 20 ? 1024 : 1;
  (void)sessions_rewrap_tick(&k, w, TICK_REWRAP_MS);
}

struct tick_job {
  struct work_item item; /* first: the pool hands us back this pointer */
  struct lifecycle lc;
};

static bool
tick_work(struct work_item *item, struct worker_ctx *w)
{
  struct tick_job *j = (struct tick_job *)item;
  lifecycle_tick(&j->lc, w);
  return true;
}

static void
tick_done(struct work_item *item)
{
  free(item);
  atomic_store(&tick_queued, 0);
}

void
lifecycle_tick_submit(workers *pool, const struct kmsd_config *cfg, kekcache *cache)
{
  if (atomic_exchange(&tick_queued, 1)) {
    return;
  }
  struct tick_job *j = calloc(1, sizeof(*j));
  if (j == NULL) {
    atomic_store(&tick_queued, 0);
    return;
  }
  j->item.work = tick_work;
  j->item.done = tick_done;
  j->lc.cfg = cfg;
  j->lc.cache = cache;
  if (workers_submit(pool, &j->item) != KMS_OK) {
    /* Queue full or stopping: the next tick tries again. */
    free(j);
    atomic_store(&tick_queued, 0);
  }
}
