/* The method table and the life of one request, from frame to response. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "audit.h"
#include "audit_export.h"
#include "authz.h"
#include "backup.h"
#include "lifecycle.h"
#include "kms_auditsum.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "kms_wire.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "rootjob.h"
#include "sessions.h"

#define KMSD_VERSION "0.1.0"

struct rpc_job {
  struct work_item item; /* first: the pool hands us back this pointer */
  struct rpc *rpc;
  conn *c;
  Tkms__Request *req;
  const struct rpc_method *method;
  int err;
  struct keyops_result res;
  ProtobufCMessage *lc_msg; /* key lifecycle answers (kmsd/lifecycle.c), owned */
  struct sessions_key_info sk; /* OpenSession, GetSessionKey: besides the key in res */
  char audit_why[256];      /* Health: why the audit log is not written */
  const char *audit_tenant; /* the record's tenant when the request names none (Approve) */
  int64_t t0_us;            /* the frame's arrival (metrics_now_us) */
};

/* Runs on a worker; fills job->err and job->res. */
typedef int (*run_fn)(struct rpc_job *job, struct worker_ctx *w);
/* Runs on the loop; sets the response's result from job->res (status OK only). */
typedef void (*fill_fn)(struct rpc_job *job, Tkms__Response *resp, void *storage);

/*
 * What the policy sees of a request (docs/POLICY.md): the operation name
 * (policy_ops[0], or policy_ops[1] when |variant| says so), the tenant and the
 * context. Every method must name its operations: kmsd refuses to start if one
 * is missing from the policy vocabulary (rpc_check_policy_vocabulary).
 */
typedef int (*variant_fn)(const Tkms__Request *req);
typedef const char *(*tenant_fn)(const Tkms__Request *req);
typedef size_t (*context_fn)(const Tkms__Request *req, Tkms__ContextEntry *const **out);

struct rpc_method {
  Tkms__Request__OpCase op;
  const char *name;
  const char *policy_ops[2];
  variant_fn variant; /* NULL: always policy_ops[0] */
  tenant_fn tenant;   /* NULL: the operation names no tenant */
  context_fn context; /* NULL: no context */
  /*
   * Access attributes (not in any AAD), the session a request names and
   * GetSessionKey's purpose: the policy sees them as context entries beside
   * the encryption context, and the audit record keeps them (docs/POLICY.md).
   */
  context_fn attributes; /* NULL: none */
  tenant_fn session;     /* NULL: no session */
  tenant_fn purpose;     /* NULL or "": no purpose parameter */
  run_fn run;
  fill_fn fill;
};

/* ---- Health --------------------------------------------------------------- */

static int
run_health(struct rpc_job *job, struct worker_ctx *w)
{
  return keyops_health(&job->rpc->ops, w, &job->res);
}

static void
fill_health(struct rpc_job *job, Tkms__Response *resp, void *storage)
{
  Tkms__HealthResponse *h = storage;
  tkms__health_response__init(h);
  bool audit_ok = job->rpc->audit == NULL ||
                  audit_healthy(job->rpc->audit, job->audit_why, sizeof(job->audit_why));
  int serving = job->res.hsm_ok && job->res.keystore_ok && audit_ok && !job->rpc->draining;
  h->status = serving ? "serving" : "not_serving";
  h->version = KMSD_VERSION;
  h->hsm_ok = job->res.hsm_ok;
  h->keystore_ok = job->res.keystore_ok;
  h->audit_ok = audit_ok;
  h->audit_reason = audit_ok ? "" : job->audit_why;
  resp->result_case = TKMS__RESPONSE__RESULT_HEALTH;
  resp->health = h;
}

/* ---- CreateTenant ---------------------------------------------------------- */

static int
run_create_tenant(struct rpc_job *job, struct worker_ctx *w)
{
  int r = keyops_create_tenant(&job->rpc->ops, w, &job->res,
                               job->req->create_tenant->tenant_id);
  if (r == KMS_OK) {
    /* The tenant's history starts with who created it (docs/LIFECYCLE.md). */
    (void)keystore_event_add(w->ks, job->req->create_tenant->tenant_id, 1, "created",
                             conn_principal(job->c), NULL);
  }
  return r;
}

static void
fill_create_tenant(struct rpc_job *job, Tkms__Response *resp, void *storage)
{
  Tkms__CreateTenantResponse *t = storage;
  tkms__create_tenant_response__init(t);
  t->tenant_id = job->req->create_tenant->tenant_id;
  t->kek_version = job->res.kek_version;
  resp->result_case = TKMS__RESPONSE__RESULT_CREATE_TENANT;
  resp->create_tenant = t;
}

/* ---- GenerateDataKey ------------------------------------------------------- */

static int
run_generate(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__GenerateDataKeyRequest *g = job->req->generate_data_key;
  return keyops_generate(&job->rpc->ops, w, &job->res, g->tenant_id, g->n_context,
                         g->context, !g->without_plaintext);
}

static void
fill_generate(struct rpc_job *job, Tkms__Response *resp, void *storage)
{
  Tkms__GenerateDataKeyResponse *g = storage;
  tkms__generate_data_key_response__init(g);
  g->kek_version = job->res.kek_version;
  g->wrapped_key.data = job->res.blob;
  g->wrapped_key.len = job->res.blob_len;
  if (job->res.plaintext != NULL) {
    g->plaintext.data = kms_secret_data(job->res.plaintext);
    g->plaintext.len = kms_secret_len(job->res.plaintext);
  }
  resp->result_case = TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY;
  resp->generate_data_key = g;
}

/* ---- Decrypt ------------------------------------------------------------- */

static int
run_decrypt(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__DecryptRequest *d = job->req->decrypt;
  return keyops_decrypt(&job->rpc->ops, w, &job->res, d->tenant_id, d->n_context,
                        d->context, d->wrapped_key.data, d->wrapped_key.len);
}

static void
fill_decrypt(struct rpc_job *job, Tkms__Response *resp, void *storage)
{
  Tkms__DecryptResponse *d = storage;
  tkms__decrypt_response__init(d);
  d->kek_version = job->res.kek_version;
  d->plaintext.data = kms_secret_data(job->res.plaintext);
  d->plaintext.len = kms_secret_len(job->res.plaintext);
  resp->result_case = TKMS__RESPONSE__RESULT_DECRYPT;
  resp->decrypt = d;
}

/* ---- Policy accessors ------------------------------------------------------ */

static const char *
tenant_create(const Tkms__Request *req)
{
  return req->create_tenant->tenant_id;
}

static const char *
tenant_generate(const Tkms__Request *req)
{
  return req->generate_data_key->tenant_id;
}

/* Asking for no plaintext is a distinct, lesser grant (storage services). */
static int
variant_generate(const Tkms__Request *req)
{
  return req->generate_data_key->without_plaintext;
}

static size_t
context_generate(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->generate_data_key->context;
  return req->generate_data_key->n_context;
}

static const char *
tenant_decrypt(const Tkms__Request *req)
{
  return req->decrypt->tenant_id;
}

static size_t
context_decrypt(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->decrypt->context;
  return req->decrypt->n_context;
}

static size_t
attributes_generate(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->generate_data_key->attributes;
  return req->generate_data_key->n_attributes;
}

static size_t
attributes_decrypt(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->decrypt->attributes;
  return req->decrypt->n_attributes;
}

/* ---- Key lifecycle (kmsd/lifecycle.c; docs/LIFECYCLE.md) -------------------- */

/*
 * The worker builds the whole answer (job->lc_msg); fill only attaches it. The
 * officer's principal is the "who" of every state change and approval.
 */
#define LC_ARGS(job) &(struct lifecycle){(job)->rpc->cfg, (job)->rpc->ops.cache}, w
#define LC_WHY(job) (job)->res.message, sizeof((job)->res.message)
#define LC_KEEP(job, out) ((job)->lc_msg = (out) != NULL ? &(out)->base : NULL)
/* The KEK version the audit record names (0: none in particular). */
#define LC_AUDIT_VERSION(job, v) ((job)->res.kek_version = (v))

#define LC_FILL(fn, result, member, type)                                     \
  static void fn(struct rpc_job *job, Tkms__Response *resp, void *storage)     \
  {                                                                            \
    resp->result_case = (result);                                              \
    resp->member = (type *)job->lc_msg;                                        \
  }

static int
run_rotate_key(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__RotateKeyResponse *out = NULL;
  int r = lifecycle_rotate(LC_ARGS(job), conn_principal(job->c),
                           job->req->rotate_key->tenant_id, LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, out != NULL ? out->kek_version : 0);
  return r;
}
LC_FILL(fill_rotate_key, TKMS__RESPONSE__RESULT_ROTATE_KEY, rotate_key, Tkms__RotateKeyResponse)

static int
run_list_keys(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ListKeysResponse *out = NULL;
  int r = lifecycle_list_keys(LC_ARGS(job), job->req->list_keys->tenant_id, LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_list_keys, TKMS__RESPONSE__RESULT_LIST_KEYS, list_keys, Tkms__ListKeysResponse)

static int
run_disable_key(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__DisableKeyRequest *d = job->req->disable_key;
  Tkms__KeyChangeResponse *out = NULL;
  int r = lifecycle_disable(LC_ARGS(job), conn_principal(job->c), d->tenant_id, d->version,
                            LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, d->version);
  return r;
}
LC_FILL(fill_disable_key, TKMS__RESPONSE__RESULT_DISABLE_KEY, disable_key,
        Tkms__KeyChangeResponse)

static int
run_enable_key(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__EnableKeyRequest *e = job->req->enable_key;
  Tkms__KeyChangeResponse *out = NULL;
  int r = lifecycle_enable(LC_ARGS(job), conn_principal(job->c), e->tenant_id, e->version,
                           LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, e->version);
  return r;
}
LC_FILL(fill_enable_key, TKMS__RESPONSE__RESULT_ENABLE_KEY, enable_key, Tkms__KeyChangeResponse)

static int
run_schedule_destruction(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__ScheduleDestructionRequest *d = job->req->schedule_destruction;
  Tkms__KeyChangeResponse *out = NULL;
  int r = lifecycle_schedule_destruction(LC_ARGS(job), conn_principal(job->c), d->tenant_id,
                                         d->version, d->waiting_days, d->no_waiting,
                                         LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, d->version);
  return r;
}
LC_FILL(fill_schedule_destruction, TKMS__RESPONSE__RESULT_SCHEDULE_DESTRUCTION,
        schedule_destruction, Tkms__KeyChangeResponse)

static int
run_cancel_destruction(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__CancelDestructionRequest *d = job->req->cancel_destruction;
  Tkms__KeyChangeResponse *out = NULL;
  int r = lifecycle_cancel_destruction(LC_ARGS(job), conn_principal(job->c), d->tenant_id,
                                       d->version, LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, d->version);
  return r;
}
LC_FILL(fill_cancel_destruction, TKMS__RESPONSE__RESULT_CANCEL_DESTRUCTION, cancel_destruction,
        Tkms__KeyChangeResponse)

static int
run_approve(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ApproveResponse *out = NULL;
  int r = lifecycle_approve(LC_ARGS(job), conn_principal(job->c), job->req->approve->request_id,
                            LC_WHY(job), &out);
  LC_KEEP(job, out);
  /* The request names only an approval id: the record names the tenant it was for, so a
   * tenant-bound auditor sees who approved changes to its keys (docs/AUDIT.md). */
  if (out != NULL && out->request != NULL && out->request->tenant_id != NULL &&
      out->request->tenant_id[0] != '\0') {
    job->audit_tenant = out->request->tenant_id;
  }
  return r;
}
LC_FILL(fill_approve, TKMS__RESPONSE__RESULT_APPROVE, approve, Tkms__ApproveResponse)

static int
run_list_requests(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__ListRequestsRequest *l = job->req->list_requests;
  Tkms__ListRequestsResponse *out = NULL;
  int r = lifecycle_list_requests(LC_ARGS(job), l->tenant_id, l->include_closed, LC_WHY(job),
                                  &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_list_requests, TKMS__RESPONSE__RESULT_LIST_REQUESTS, list_requests,
        Tkms__ListRequestsResponse)

static int
run_re_encrypt(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ReEncryptResponse *out = NULL;
  struct lifecycle lc = {job->rpc->cfg, job->rpc->ops.cache};
  int r = lifecycle_re_encrypt(&lc, &job->rpc->ops, w, job->req->re_encrypt, LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, out != NULL ? out->kek_version : 0);
  return r;
}
LC_FILL(fill_re_encrypt, TKMS__RESPONSE__RESULT_RE_ENCRYPT, re_encrypt, Tkms__ReEncryptResponse)

static int
run_re_encrypt_batch(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ReEncryptBatchResponse *out = NULL;
  struct lifecycle lc = {job->rpc->cfg, job->rpc->ops.cache};
  int r = lifecycle_re_encrypt_batch(&lc, &job->rpc->ops, w, job->req->re_encrypt_batch,
                                     LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_re_encrypt_batch, TKMS__RESPONSE__RESULT_RE_ENCRYPT_BATCH, re_encrypt_batch,
        Tkms__ReEncryptBatchResponse)

static int
run_list_tenants(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__ListTenantsRequest *l = job->req->list_tenants;
  Tkms__ListTenantsResponse *out = NULL;
  int r = lifecycle_list_tenants(LC_ARGS(job), l->after, l->limit, LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_list_tenants, TKMS__RESPONSE__RESULT_LIST_TENANTS, list_tenants,
        Tkms__ListTenantsResponse)

static int
run_list_receipts(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ListReceiptsResponse *out = NULL;
  int r = lifecycle_list_receipts(LC_ARGS(job), job->req->list_receipts->tenant_id, LC_WHY(job),
                                  &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_list_receipts, TKMS__RESPONSE__RESULT_LIST_RECEIPTS, list_receipts,
        Tkms__ListReceiptsResponse)

static int
run_set_rotation_period(struct rpc_job *job, struct worker_ctx *w)
{
  const Tkms__SetRotationPeriodRequest *s = job->req->set_rotation_period;
  Tkms__SetRotationPeriodResponse *out = NULL;
  int r = lifecycle_set_rotation(LC_ARGS(job), conn_principal(job->c), s->tenant_id,
                                 s->rotation_period_days, LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_set_rotation_period, TKMS__RESPONSE__RESULT_SET_ROTATION_PERIOD,
        set_rotation_period, Tkms__SetRotationPeriodResponse)

/* ---- Backup (docs/RUNBOOK.md, "Backup and restore") ------------------------ */

static int
run_backup(struct rpc_job *job, struct worker_ctx *w)
{
  char path[CONFIG_PATH_MAX + 64], hex[BACKUP_SHA256_HEX_LEN + 1];
  uint64_t size = 0;
  int r = backup_snapshot(w->ks, job->rpc->cfg->backup_dir, path, sizeof(path), &size, hex,
                          LC_WHY(job));
  if (r != KMS_OK) {
    return r;
  }
  Tkms__BackupResponse *b = malloc(sizeof(*b));
  char *p = strdup(path), *h = strdup(hex);
  if (b == NULL || p == NULL || h == NULL) {
    free(b);
    free(p);
    free(h);
    return KMS_ERR_ALLOC;
  }
  tkms__backup_response__init(b);
  b->path = p;
  b->size = size;
  b->sha256 = h;
  job->lc_msg = &b->base;
  log_msg(LOG_INFO, "event=backup_written path=%s size=%llu sha256=%s by=%s", path,
          (unsigned long long)size, hex, conn_principal(job->c));
  return KMS_OK;
}
LC_FILL(fill_backup, TKMS__RESPONSE__RESULT_BACKUP, backup, Tkms__BackupResponse)

/* ---- Root key rotation (kmsd/rootjob.c; docs/LIFECYCLE.md) ----------------- */

/* rootjob_of: the root job, or NULL with FAILED_PRECONDITION said (kmsd without one). */
static struct rootjob *
rootjob_of(struct rpc_job *job)
{
  if (job->rpc->rootjob == NULL) {
    snprintf(job->res.message, sizeof(job->res.message), "root rotation is not running");
  }
  return job->rpc->rootjob;
}

static int
run_root_rotate(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__RootRotateResponse *out = NULL;
  struct rootjob *j = rootjob_of(job);
  int r = j == NULL ? KMS_ERR_FAILED_PRECONDITION
                    : rootjob_rotate(j, w, conn_principal(job->c), LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_root_rotate, TKMS__RESPONSE__RESULT_ROOT_ROTATE, root_rotate,
        Tkms__RootRotateResponse)

static int
run_root_status(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__RootStatusResponse *out = NULL;
  struct rootjob *j = rootjob_of(job);
  int r = j == NULL ? KMS_ERR_FAILED_PRECONDITION : rootjob_status(j, w, LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_root_status, TKMS__RESPONSE__RESULT_ROOT_STATUS, root_status,
        Tkms__RootStatusResponse)

/* What the policy sees of lifecycle requests. */
static const char *
tenant_rotate_key(const Tkms__Request *req)
{
  return req->rotate_key->tenant_id;
}

static const char *
tenant_list_keys(const Tkms__Request *req)
{
  return req->list_keys->tenant_id;
}

static const char *
tenant_disable_key(const Tkms__Request *req)
{
  return req->disable_key->tenant_id;
}

static const char *
tenant_enable_key(const Tkms__Request *req)
{
  return req->enable_key->tenant_id;
}

static const char *
tenant_schedule_destruction(const Tkms__Request *req)
{
  return req->schedule_destruction->tenant_id;
}

static const char *
tenant_cancel_destruction(const Tkms__Request *req)
{
  return req->cancel_destruction->tenant_id;
}

/* A list filter: empty means every tenant (NULL to the policy). */
static const char *
tenant_or_all(const char *t)
{
  return t != NULL && t[0] != '\0' ? t : NULL;
}

static const char *
tenant_list_requests(const Tkms__Request *req)
{
  return tenant_or_all(req->list_requests->tenant_id);
}

static const char *
tenant_list_receipts(const Tkms__Request *req)
{
  return tenant_or_all(req->list_receipts->tenant_id);
}

static const char *
tenant_re_encrypt(const Tkms__Request *req)
{
  return req->re_encrypt->tenant_id;
}

static size_t
context_re_encrypt(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->re_encrypt->context;
  return req->re_encrypt->n_context;
}

/*
 * A batch carries one context per item, and the policy decides on one
 * request: it sees none, so a rule that requires context never grants a
 * batch (fail closed); rules without context requirements do.
 */
static const char *
tenant_re_encrypt_batch(const Tkms__Request *req)
{
  return req->re_encrypt_batch->tenant_id;
}

static const char *
tenant_set_rotation_period(const Tkms__Request *req)
{
  return req->set_rotation_period->tenant_id;
}

static size_t
attributes_re_encrypt(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->re_encrypt->attributes;
  return req->re_encrypt->n_attributes;
}

static size_t
attributes_re_encrypt_batch(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->re_encrypt_batch->attributes;
  return req->re_encrypt_batch->n_attributes;
}

/* ---- Session keys (kmsd/sessions.c; docs/SESSIONS.md) ------------------------------- */

static int
run_open_session(struct rpc_job *job, struct worker_ctx *w)
{
  return sessions_open(&job->rpc->ops, w, conn_principal(job->c), job->req->open_session,
                       &job->res, &job->sk);
}

static void
fill_open_session(struct rpc_job *job, Tkms__Response *resp, void *storage)
{
  Tkms__OpenSessionResponse *o = storage;
  tkms__open_session_response__init(o);
  o->kek_version = job->res.kek_version;
  o->plaintext.data = kms_secret_data(job->res.plaintext);
  o->plaintext.len = kms_secret_len(job->res.plaintext);
  o->state = (uint32_t)job->sk.state;
  o->created_ms = job->sk.created_ms;
  resp->result_case = TKMS__RESPONSE__RESULT_OPEN_SESSION;
  resp->open_session = o;
}

static int
run_get_session_key(struct rpc_job *job, struct worker_ctx *w)
{
  return sessions_get_key(&job->rpc->ops, w, job->req->get_session_key, &job->res, &job->sk);
}

static void
fill_get_session_key(struct rpc_job *job, Tkms__Response *resp, void *storage)
{
  Tkms__GetSessionKeyResponse *g = storage;
  tkms__get_session_key_response__init(g);
  g->kek_version = job->res.kek_version;
  g->plaintext.data = kms_secret_data(job->res.plaintext);
  g->plaintext.len = kms_secret_len(job->res.plaintext);
  g->state = (uint32_t)job->sk.state;
  g->created_ms = job->sk.created_ms;
  g->closed_ms = job->sk.closed_ms;
  resp->result_case = TKMS__RESPONSE__RESULT_GET_SESSION_KEY;
  resp->get_session_key = g;
}

static int
run_close_session(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__CloseSessionResponse *out = NULL;
  int r = sessions_close(w, conn_principal(job->c), job->req->close_session, LC_WHY(job), &out);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, out != NULL && out->session != NULL ? out->session->kek_version : 0);
  return r;
}
LC_FILL(fill_close_session, TKMS__RESPONSE__RESULT_CLOSE_SESSION, close_session,
        Tkms__CloseSessionResponse)

static int
run_shred_session(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ShredSessionResponse *out = NULL;
  uint32_t v = 0;
  int r = sessions_shred(w, conn_principal(job->c), job->req->shred_session, LC_WHY(job), &out,
                         &v);
  LC_KEEP(job, out);
  LC_AUDIT_VERSION(job, v);
  return r;
}
LC_FILL(fill_shred_session, TKMS__RESPONSE__RESULT_SHRED_SESSION, shred_session,
        Tkms__ShredSessionResponse)

static int
run_list_sessions(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ListSessionsResponse *out = NULL;
  int r = sessions_list(w, job->req->list_sessions, LC_WHY(job), &out);
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_list_sessions, TKMS__RESPONSE__RESULT_LIST_SESSIONS, list_sessions,
        Tkms__ListSessionsResponse)

static const char *
tenant_open_session(const Tkms__Request *req)
{
  return req->open_session->tenant_id;
}

static const char *
session_open_session(const Tkms__Request *req)
{
  return req->open_session->session_id;
}

static size_t
attributes_open_session(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->open_session->attributes;
  return req->open_session->n_attributes;
}

static const char *
tenant_get_session_key(const Tkms__Request *req)
{
  return req->get_session_key->tenant_id;
}

static const char *
session_get_session_key(const Tkms__Request *req)
{
  return req->get_session_key->session_id;
}

static const char *
purpose_get_session_key(const Tkms__Request *req)
{
  return req->get_session_key->purpose;
}

static size_t
attributes_get_session_key(const Tkms__Request *req, Tkms__ContextEntry *const **out)
{
  *out = req->get_session_key->attributes;
  return req->get_session_key->n_attributes;
}

static const char *
tenant_close_session(const Tkms__Request *req)
{
  return req->close_session->tenant_id;
}

static const char *
session_close_session(const Tkms__Request *req)
{
  return req->close_session->session_id;
}

static const char *
tenant_shred_session(const Tkms__Request *req)
{
  return req->shred_session->tenant_id;
}

static const char *
session_shred_session(const Tkms__Request *req)
{
  return req->shred_session->session_id;
}

static const char *
tenant_list_sessions(const Tkms__Request *req)
{
  return req->list_sessions->tenant_id;
}

/* ---- Audit export (kmsd/audit_export.c; docs/AUDIT.md) --------------------------------- */

static int
run_export_audit(struct rpc_job *job, struct worker_ctx *w)
{
  Tkms__ExportAuditResponse *out = NULL;
  const Tkms__ExportAuditRequest *x = job->req->export_audit;
  if (job->rpc->audit == NULL) {
    snprintf(job->res.message, sizeof(job->res.message), "no audit log");
    return KMS_ERR_FAILED_PRECONDITION;
  }
  /* Pages stay well under a frame kmsd itself would accept. */
  int r = audit_export_page(job->rpc->audit, x, job->rpc->cfg->max_frame / 2, LC_WHY(job), &out);
  if (r == KMS_OK && (x->page_token == NULL || x->page_token[0] == '\0')) {
    /* The first page also carries the period's key state changes (the summary's). */
    r = audit_export_state_changes(w->ks, x, job->rpc->cfg->max_frame / 4, out);
    if (r != KMS_OK) {
      snprintf(job->res.message, sizeof(job->res.message), "key history unreadable");
      protobuf_c_message_free_unpacked(&out->base, NULL);
      out = NULL;
    }
  }
  LC_KEEP(job, out);
  return r;
}
LC_FILL(fill_export_audit, TKMS__RESPONSE__RESULT_EXPORT_AUDIT, export_audit,
        Tkms__ExportAuditResponse)

/* The tenant filter is the policy's tenant: a tenant-bound auditor must name its own. */
static const char *
tenant_export_audit(const Tkms__Request *req)
{
  return tenant_or_all(req->export_audit->tenant_id);
}

/* A session filter is recorded (as its HMAC) in the export's own audit record. */
static const char *
session_export_audit(const Tkms__Request *req)
{
  const char *s = req->export_audit->session_id;
  return s != NULL && s[0] != '\0' ? s : NULL;
}

/*
 * Every callable operation. An op_case not listed here cannot be called, and
 * an entry without a policy operation stops kmsd at start.
 */
static const struct rpc_method methods[] = {
  {.op = TKMS__REQUEST__OP_HEALTH, .name = "Health", .policy_ops = {"Health"},
   .run = run_health, .fill = fill_health},
  {.op = TKMS__REQUEST__OP_CREATE_TENANT, .name = "CreateTenant",
   .policy_ops = {"CreateTenant"}, .tenant = tenant_create, .run = run_create_tenant,
   .fill = fill_create_tenant},
  {.op = TKMS__REQUEST__OP_GENERATE_DATA_KEY, .name = "GenerateDataKey",
   .policy_ops = {"GenerateDataKey", "GenerateDataKeyWithoutPlaintext"},
   .variant = variant_generate, .tenant = tenant_generate, .context = context_generate,
   .attributes = attributes_generate, .run = run_generate, .fill = fill_generate},
  {.op = TKMS__REQUEST__OP_DECRYPT, .name = "Decrypt", .policy_ops = {"Decrypt"},
   .tenant = tenant_decrypt, .context = context_decrypt, .attributes = attributes_decrypt,
   .run = run_decrypt, .fill = fill_decrypt},
  /* Key lifecycle. Listings and the rotation period map to the nearest vocabulary name. */
  {.op = TKMS__REQUEST__OP_ROTATE_KEY, .name = "RotateKey", .policy_ops = {"RotateKey"},
   .tenant = tenant_rotate_key, .run = run_rotate_key, .fill = fill_rotate_key},
  {.op = TKMS__REQUEST__OP_LIST_KEYS, .name = "ListKeys", .policy_ops = {"ListKeys"},
   .tenant = tenant_list_keys, .run = run_list_keys, .fill = fill_list_keys},
  {.op = TKMS__REQUEST__OP_DISABLE_KEY, .name = "DisableKey", .policy_ops = {"DisableKey"},
   .tenant = tenant_disable_key, .run = run_disable_key, .fill = fill_disable_key},
  {.op = TKMS__REQUEST__OP_ENABLE_KEY, .name = "EnableKey", .policy_ops = {"EnableKey"},
   .tenant = tenant_enable_key, .run = run_enable_key, .fill = fill_enable_key},
  {.op = TKMS__REQUEST__OP_SCHEDULE_DESTRUCTION, .name = "ScheduleDestruction",
   .policy_ops = {"ScheduleDestruction"}, .tenant = tenant_schedule_destruction,
   .run = run_schedule_destruction, .fill = fill_schedule_destruction},
  {.op = TKMS__REQUEST__OP_CANCEL_DESTRUCTION, .name = "CancelDestruction",
   .policy_ops = {"CancelDestruction"}, .tenant = tenant_cancel_destruction,
   .run = run_cancel_destruction, .fill = fill_cancel_destruction},
  /* The request names no tenant until the keystore is read: needs an all-tenants grant. */
  {.op = TKMS__REQUEST__OP_APPROVE, .name = "Approve", .policy_ops = {"Approve"},
   .run = run_approve, .fill = fill_approve},
  {.op = TKMS__REQUEST__OP_LIST_REQUESTS, .name = "ListRequests", .policy_ops = {"ListKeys"},
   .tenant = tenant_list_requests, .run = run_list_requests, .fill = fill_list_requests},
  {.op = TKMS__REQUEST__OP_RE_ENCRYPT, .name = "ReEncrypt", .policy_ops = {"ReEncrypt"},
   .tenant = tenant_re_encrypt, .context = context_re_encrypt,
   .attributes = attributes_re_encrypt, .run = run_re_encrypt, .fill = fill_re_encrypt},
  {.op = TKMS__REQUEST__OP_RE_ENCRYPT_BATCH, .name = "ReEncryptBatch",
   .policy_ops = {"ReEncrypt"}, .tenant = tenant_re_encrypt_batch,
   .attributes = attributes_re_encrypt_batch, .run = run_re_encrypt_batch,
   .fill = fill_re_encrypt_batch},
  {.op = TKMS__REQUEST__OP_LIST_TENANTS, .name = "ListTenants", .policy_ops = {"ListKeys"},
   .run = run_list_tenants, .fill = fill_list_tenants},
  {.op = TKMS__REQUEST__OP_LIST_RECEIPTS, .name = "ListReceipts", .policy_ops = {"ListKeys"},
   .tenant = tenant_list_receipts, .run = run_list_receipts, .fill = fill_list_receipts},
  {.op = TKMS__REQUEST__OP_SET_ROTATION_PERIOD, .name = "SetRotationPeriod",
   .policy_ops = {"RotateKey"}, .tenant = tenant_set_rotation_period,
   .run = run_set_rotation_period, .fill = fill_set_rotation_period},
  /* Session keys: the policy sees the session id as the context entry session_id. */
  {.op = TKMS__REQUEST__OP_OPEN_SESSION, .name = "OpenSession", .policy_ops = {"OpenSession"},
   .tenant = tenant_open_session, .session = session_open_session,
   .attributes = attributes_open_session, .run = run_open_session, .fill = fill_open_session},
  {.op = TKMS__REQUEST__OP_GET_SESSION_KEY, .name = "GetSessionKey",
   .policy_ops = {"GetSessionKey"}, .tenant = tenant_get_session_key,
   .session = session_get_session_key, .purpose = purpose_get_session_key,
   .attributes = attributes_get_session_key, .run = run_get_session_key,
   .fill = fill_get_session_key},
  {.op = TKMS__REQUEST__OP_CLOSE_SESSION, .name = "CloseSession",
   .policy_ops = {"CloseSession"}, .tenant = tenant_close_session,
   .session = session_close_session, .run = run_close_session, .fill = fill_close_session},
  {.op = TKMS__REQUEST__OP_SHRED_SESSION, .name = "ShredSession",
   .policy_ops = {"ShredSession"}, .tenant = tenant_shred_session,
   .session = session_shred_session, .run = run_shred_session, .fill = fill_shred_session},
  {.op = TKMS__REQUEST__OP_LIST_SESSIONS, .name = "ListSessions",
   .policy_ops = {"ListSessions"}, .tenant = tenant_list_sessions, .run = run_list_sessions,
   .fill = fill_list_sessions},
  /* Root key rotation: no tenant (every tenant's key tokens move). */
  {.op = TKMS__REQUEST__OP_ROOT_ROTATE, .name = "RootRotate", .policy_ops = {"RootRotate"},
   .run = run_root_rotate, .fill = fill_root_rotate},
  {.op = TKMS__REQUEST__OP_ROOT_STATUS, .name = "RootStatus", .policy_ops = {"RootStatus"},
   .run = run_root_status, .fill = fill_root_status},
  /* Diagnostics: a keystore snapshot in backup_dir (no tenant: the whole keystore). */
  {.op = TKMS__REQUEST__OP_BACKUP, .name = "Backup", .policy_ops = {"Backup"},
   .run = run_backup, .fill = fill_backup},
  {.op = TKMS__REQUEST__OP_EXPORT_AUDIT, .name = "ExportAudit", .policy_ops = {"ExportAudit"},
   .tenant = tenant_export_audit, .session = session_export_audit, .run = run_export_audit,
   .fill = fill_export_audit},
};

/*
 * What the policy and the audit record see of a request besides its tenant:
 * the encryption context, then the session id and purpose the request names
 * as context entries, then its access attributes. kms_wire has refused a key
 * that appears twice; the counts are capped here too, because a request that
 * failed validation is still audited.
 */
struct request_view {
  Tkms__ContextEntry named[2]; /* session_id, purpose */
  Tkms__ContextEntry *policy[AUTHZ_VIEW_MAX];
  size_t n_policy;
  Tkms__ContextEntry *const *context;
  size_t n_context;
  Tkms__ContextEntry *attrs[KMS_CONTEXT_MAX_ENTRIES + 1]; /* purpose, then attributes */
  size_t n_attrs;
  const char *session;
};

static void
view_build(struct request_view *v, const struct rpc_method *m, const Tkms__Request *req)
{
  Tkms__ContextEntry *const *a = NULL;
  size_t n_a = 0;

  memset(v, 0, sizeof(*v));
  if (m == NULL || req == NULL) {
    return;
  }
  if (m->context != NULL) {
    v->n_context = m->context(req, &v->context);
    if (v->n_context > KMS_CONTEXT_MAX_ENTRIES) {
      v->n_context = KMS_CONTEXT_MAX_ENTRIES;
    }
  }
  for (size_t i = 0; i < v->n_context; i++) {
    v->policy[v->n_policy++] = v->context[i];
  }
  if (m->session != NULL && (v->session = m->session(req)) != NULL) {
    tkms__context_entry__init(&v->named[0]);
    v->named[0].key = KMS_SESSION_KEY;
    v->named[0].value = (char *)v->session;
    v->policy[v->n_policy++] = &v->named[0];
  }
  const char *purpose = m->purpose != NULL ? m->purpose(req) : NULL;
  if (purpose != NULL && purpose[0] != '\0') {
    tkms__context_entry__init(&v->named[1]);
    v->named[1].key = KMS_PURPOSE_KEY;
    v->named[1].value = (char *)purpose;
    v->policy[v->n_policy++] = &v->named[1];
    v->attrs[v->n_attrs++] = &v->named[1];
  }
  if (m->attributes != NULL) {
    n_a = m->attributes(req, &a);
  }
  for (size_t i = 0; i < n_a && i < KMS_CONTEXT_MAX_ENTRIES; i++) {
    v->policy[v->n_policy++] = a[i];
    v->attrs[v->n_attrs++] = a[i];
  }
}

int
rpc_check_policy_vocabulary(char *err, size_t err_len)
{
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    const struct rpc_method *m = &methods[i];
    if (!kms_auditsum_known_op(m->name)) {
      /* kmsctl audit export --op refuses names it does not know. */
      snprintf(err, err_len, "method %s: not in kms_auditsum_known_op (common/kms_auditsum.c)",
               m->name);
      return KMS_ERR_INTERNAL;
    }
    for (size_t k = 0; k < 2; k++) {
      const char *op = m->policy_ops[k];
      /* The variant needs a second name; without a variant there is none. */
      if ((k == 0 || m->variant != NULL) && !authz_op_known(op)) {
        snprintf(err, err_len, "method %s: policy operation '%s' is not in the vocabulary",
                 m->name, op != NULL ? op : "(none)");
        return KMS_ERR_INTERNAL;
      }
    }
  }
  return KMS_OK;
}

static const char *
policy_op_of(const struct rpc_method *m, const Tkms__Request *req)
{
  return m->variant != NULL && m->variant(req) ? m->policy_ops[1] : m->policy_ops[0];
}

static const struct rpc_method *
find_method(Tkms__Request__OpCase op)
{
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    if (methods[i].op == op) {
      return &methods[i];
    }
  }
  return NULL;
}

/* ---- Responses ------------------------------------------------------------- */

static void
send_response(conn *c, const Tkms__Response *resp)
{
  size_t n = protobuf_c_message_get_packed_size(&resp->base);
  uint8_t *frame = malloc(KMS_FRAME_HDR_LEN + n);
  if (frame == NULL) {
    conn_close_after_send(c);
    return;
  }
  kms_frame_put_header(frame, (uint32_t)n);
  protobuf_c_message_pack(&resp->base, frame + KMS_FRAME_HDR_LEN);
  conn_send(c, frame, KMS_FRAME_HDR_LEN + n);
}

void
rpc_send_error(conn *c, uint64_t request_id, int err, const char *message)
{
  Tkms__Response resp;
  tkms__response__init(&resp);
  resp.request_id = request_id;
  resp.status = (Tkms__StatusCode)kms_err_to_status(err);
  resp.message = (char *)(message != NULL && message[0] != '\0' ? message : kms_strerror(err));
  send_response(c, &resp);
}

/* ---- Audit: every answer waits for its record (docs/AUDIT.md) ---------------- */

/* An answer held back until the audit writer says its record is on disk. */
struct held {
  struct audit_item item; /* first: the writer hands us back this pointer */
  conn *c;
  uint8_t *frame;
  size_t len;
  uint64_t id;
  bool must_log;    /* an OK answer acknowledges work: without its record it is not sent */
  bool close_after; /* a connection-level error: close once the answer is out */
  const char *op;   /* metrics: operation name (static), status, times */
  int status;
  int64_t t0_us, submitted_us;
};

static void
held_done(struct audit_item *item, int status)
{
  struct held *h = (struct held *)item;
  int64_t now = metrics_now_us();

  metrics_audit_commit(now - h->submitted_us);
  metrics_request_done(h->op, status != KMS_OK && h->must_log ? TKMS__STATUS_CODE__UNAVAILABLE
                                                              : h->status,
                       now - h->t0_us);
  if (status != KMS_OK && h->must_log) {
    /* Not logged means not acknowledged: the answer (it may hold a data key) is wiped. */
    OPENSSL_cleanse(h->frame, h->len);
    free(h->frame);
    log_msg(LOG_WARN, "event=answer_withheld id=%llu reason=audit_unavailable",
            (unsigned long long)h->id);
    rpc_send_error(h->c, h->id, KMS_ERR_UNAVAILABLE, "audit log unavailable");
  } else {
    /* Error answers acknowledge nothing: they go out even if their record could not. */
    conn_send(h->c, h->frame, h->len);
  }
  if (h->close_after) {
    conn_close_after_send(h->c);
  }
  conn_inflight_end(h->c);
  free(h);
}

/*
 * hold_answer packs |resp| into a held answer and hands it with the request's
 * audit record to the audit writer; held_done sends it on the loop once the
 * record is durable. The held answer takes over one in-flight reference on
 * |c| (held_done ends it). It touches nothing of the loop's, so a worker may
 * call it. Returns false, having done nothing, if memory ran out. |req| and
 * |m| may be NULL (undecodable frame); |req| is not kept.
 */
static bool
hold_answer(struct rpc *rpc, conn *c, const Tkms__Request *req, const struct rpc_method *m,
            uint32_t kek_version, const char *tenant, const Tkms__Response *resp, bool close_after,
            int64_t t0_us)
{
  size_t n = protobuf_c_message_get_packed_size(&resp->base);
  uint8_t *frame = malloc(KMS_FRAME_HDR_LEN + n);
  struct held *h = calloc(1, sizeof(*h));
  struct audit_fields f;

  if (frame == NULL || h == NULL) {
    free(frame);
    free(h);
    return false;
  }
  kms_frame_put_header(frame, (uint32_t)n);
  protobuf_c_message_pack(&resp->base, frame + KMS_FRAME_HDR_LEN);
  memset(&f, 0, sizeof(f));
  f.request_id = resp->request_id;
  f.principal = conn_principal(c);
  f.peer = conn_peer(c);
  f.op = m != NULL ? m->name : "unknown";
  f.tenant = m != NULL && m->tenant != NULL && req != NULL ? m->tenant(req) : NULL;
  if (f.tenant == NULL) {
    f.tenant = tenant; /* found by the work itself (Approve), or NULL */
  }
  struct request_view v;
  view_build(&v, m, req);
  f.context = v.context;
  f.n_context = v.n_context;
  f.attributes = v.attrs;
  f.n_attributes = v.n_attrs;
  f.session = v.session;
  f.kek_version = kek_version;
  f.status = (int)resp->status;
  h->item.done = held_done;
  h->c = c;
  h->frame = frame;
  h->len = KMS_FRAME_HDR_LEN + n;
  h->id = resp->request_id;
  h->must_log = resp->status == TKMS__STATUS_CODE__OK &&
                (m == NULL || m->op != TKMS__REQUEST__OP_HEALTH);
  h->close_after = close_after;
  h->op = m != NULL ? m->name : "unknown";
  h->status = (int)resp->status;
  h->t0_us = t0_us;
  h->submitted_us = metrics_now_us();
  /* On failure held_done still runs, on the loop, and answers UNAVAILABLE. */
  (void)audit_submit(rpc->audit, &h->item, &f);
  return true;
}

/*
 * respond answers on the loop thread: through the audit log (hold_answer), or
 * at once when kmsd runs without one (unit set-ups).
 */
static void
respond(struct rpc *rpc, conn *c, const Tkms__Request *req, const struct rpc_method *m,
        uint32_t kek_version, const char *tenant, const Tkms__Response *resp, bool close_after,
        int64_t t0_us)
{
  if (rpc->audit == NULL) {
    metrics_request_done(m != NULL ? m->name : "unknown", (int)resp->status,
                         metrics_now_us() - t0_us);
    send_response(c, resp);
    if (close_after) {
      conn_close_after_send(c);
    }
    return;
  }
  conn_inflight_begin(c); /* the connection outlives a close until the answer is settled */
  if (!hold_answer(rpc, c, req, m, kek_version, tenant, resp, close_after, t0_us)) {
    conn_inflight_end(c);
    conn_close_after_send(c);
  }
}

static void
respond_error(struct rpc *rpc, conn *c, const Tkms__Request *req, const struct rpc_method *m,
              uint64_t request_id, int err, const char *message, bool close_after,
              int64_t t0_us)
{
  Tkms__Response resp;
  tkms__response__init(&resp);
  resp.request_id = request_id;
  resp.status = (Tkms__StatusCode)kms_err_to_status(err);
  resp.message = (char *)(message != NULL && message[0] != '\0' ? message : kms_strerror(err));
  respond(rpc, c, req, m, 0, NULL, &resp, close_after, t0_us);
}

static void
job_free(struct rpc_job *job)
{
  if (job->lc_msg != NULL) {
    protobuf_c_message_free_unpacked(job->lc_msg, NULL);
  }
  keyops_result_clear(&job->res);
  tkms__request__free_unpacked(job->req, NULL);
  free(job);
}

/* The result messages an answer may carry (fill_fn's |storage|). */
union answer_storage {
  Tkms__HealthResponse h;
  Tkms__CreateTenantResponse t;
  Tkms__GenerateDataKeyResponse g;
  Tkms__DecryptResponse d;
  Tkms__OpenSessionResponse o;
  Tkms__GetSessionKeyResponse s;
};

/* job_answer fills |resp| for a finished |job|: its result, or the error it ended with. */
static void
job_answer(struct rpc_job *job, Tkms__Response *resp, union answer_storage *storage)
{
  tkms__response__init(resp);
  resp->request_id = job->req->request_id;
  if (job->err != KMS_OK) {
    resp->status = (Tkms__StatusCode)kms_err_to_status(job->err);
    resp->message = (char *)(job->res.message[0] != '\0'
                                 ? job->res.message
                                 : kms_strerror(job->err));
  } else {
    resp->status = TKMS__STATUS_CODE__OK;
    job->method->fill(job, resp, storage);
  }
}

/*
 * job_work runs on a worker. Once the method has run, the worker also packs
 * the answer and hands it with its audit record to the writer, so the loop
 * is woken once per request (to send the answer), not twice. Health (it reads
 * the loop's draining flag), a kmsd without an audit log, and an allocation
 * failure finish on the loop instead (job_done): returns true for those.
 */
static bool
job_work(struct work_item *item, struct worker_ctx *w)
{
  struct rpc_job *job = (struct rpc_job *)item;
  job->err = job->method->run(job, w);
  /* Cached KEK state (kekcache.h) must not outlive a change made here: any
   * method but these four may change key state, so it forgets all of it. */
  Tkms__Request__OpCase op = job->req->op_case;
  /* Session operations change no key state (a forced rotation forgets it itself). */
  int session_op = op >= TKMS__REQUEST__OP_OPEN_SESSION && op <= TKMS__REQUEST__OP_LIST_SESSIONS;
  if (op != TKMS__REQUEST__OP_HEALTH && op != TKMS__REQUEST__OP_CREATE_TENANT &&
      op != TKMS__REQUEST__OP_GENERATE_DATA_KEY && op != TKMS__REQUEST__OP_DECRYPT &&
      !session_op && op != TKMS__REQUEST__OP_EXPORT_AUDIT) {
    keyops_forget_state(&job->rpc->ops);
  }
  if (job->err != KMS_OK) {
    int level = job->err == KMS_ERR_INTERNAL || job->err == KMS_ERR_HSM ? LOG_WARN : LOG_DEBUG;
    log_msg(level, "event=request_failed id=%llu method=%s principal=%s code=%d reason=\"%s\"",
            (unsigned long long)job->req->request_id, job->method->name, conn_principal(job->c),
            job->err, kms_strerror(job->err));
  }
  if (job->rpc->audit == NULL || op == TKMS__REQUEST__OP_HEALTH) {
    return true;
  }
  union answer_storage storage;
  Tkms__Response resp;
  job_answer(job, &resp, &storage);
  /* The job's in-flight reference on its connection passes to the held answer. */
  bool held = hold_answer(job->rpc, job->c, job->req, job->method, job->res.kek_version,
                          job->audit_tenant, &resp, false, job->t0_us);
  OPENSSL_cleanse(&storage, sizeof(storage));
  if (!held) {
    return true;
  }
  job_free(job);
  return false;
}

/* job_done finishes, on the loop, a job job_work did not answer itself. */
static void
job_done(struct work_item *item)
{
  struct rpc_job *job = (struct rpc_job *)item;
  conn *c = job->c;
  union answer_storage storage;
  Tkms__Response resp;

  job_answer(job, &resp, &storage);
  respond(job->rpc, c, job->req, job->method, job->res.kek_version, job->audit_tenant, &resp,
          false, job->t0_us);
  OPENSSL_cleanse(&storage, sizeof(storage));
  job_free(job);
  conn_inflight_end(c);
}

void
rpc_on_frame(struct rpc *rpc, conn *c, const uint8_t *payload, size_t len)
{
  const char *why = "";
  int64_t t0 = metrics_now_us();
  Tkms__Request *req = tkms__request__unpack(NULL, len, payload);
  if (req == NULL) {
    log_msg(LOG_INFO, "event=bad_frame peer=%s principal=%s reason=undecodable",
            conn_peer(c), conn_principal(c));
    respond_error(rpc, c, NULL, NULL, 0, KMS_ERR_PROTOCOL, "malformed request", true, t0);
    return;
  }
  int r = kms_wire_request_check(req, &why);
  const struct rpc_method *m = r == KMS_OK ? find_method(req->op_case) : NULL;
  if (r == KMS_OK && m == NULL) {
    r = KMS_ERR_UNIMPLEMENTED;
    why = "unknown method";
  }
  if (r != KMS_OK) {
    respond_error(rpc, c, req, find_method(req->op_case), req->request_id, r, why, false, t0);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  /* Per-principal rate (token bucket) before any policy, keystore or HSM work. */
  if (!limits_rate_allow_now(rpc->limits, conn_principal(c))) {
    log_msg(LOG_DEBUG, "event=rate_limited id=%llu principal=%s peer=%s",
            (unsigned long long)req->request_id, conn_principal(c), conn_peer(c));
    respond_error(rpc, c, req, m, req->request_id, KMS_ERR_RESOURCE_EXHAUSTED,
                  "rate limit exceeded", false, t0);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  struct request_view v;
  view_build(&v, m, req);
  struct authz_request az = {conn_principal(c), policy_op_of(m, req),
                             m->tenant != NULL ? m->tenant(req) : NULL, v.policy, v.n_policy};
  const char *rule = "-";
  r = authz_check(&az, &rule);
  if (r != KMS_OK) {
    log_msg(LOG_INFO,
            "event=denied id=%llu method=%s operation=%s tenant=%s principal=%s peer=%s rule=%s",
            (unsigned long long)req->request_id, m->name, az.operation,
            az.tenant != NULL ? az.tenant : "-", conn_principal(c), conn_peer(c), rule);
    respond_error(rpc, c, req, m, req->request_id, r, "permission denied", false, t0);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  if (rpc->draining) {
    respond_error(rpc, c, req, m, req->request_id, KMS_ERR_UNAVAILABLE, "kmsd is shutting down",
                  false, t0);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  /* Fail closed: no key operation while its record could not be written (Health still works). */
  if (rpc->audit != NULL && m->op != TKMS__REQUEST__OP_HEALTH &&
      !audit_healthy(rpc->audit, NULL, 0)) {
    respond_error(rpc, c, req, m, req->request_id, KMS_ERR_UNAVAILABLE, "audit log unavailable",
                  false, t0);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  struct rpc_job *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    respond_error(rpc, c, req, m, req->request_id, KMS_ERR_ALLOC, NULL, false, t0);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  job->item.work = job_work;
  job->item.done = job_done;
  job->rpc = rpc;
  job->c = c;
  job->req = req;
  job->method = m;
  job->t0_us = t0;
  r = workers_submit(rpc->pool, &job->item);
  if (r != KMS_OK) {
    respond_error(rpc, c, req, m, req->request_id, r,
                  r == KMS_ERR_RESOURCE_EXHAUSTED ? "server busy" : NULL, false, t0);
    job->c = NULL;
    job_free(job);
    return;
  }
  conn_inflight_begin(c);
}
