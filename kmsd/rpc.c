/* The method table and the life of one request, from frame to response. */
#include "rpc.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "authz.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "kms_wire.h"
#include "log.h"

#define KMSD_VERSION "0.1.0"

struct rpc_job {
  struct work_item item; /* first: the pool hands us back this pointer */
  struct rpc *rpc;
  conn *c;
  Tkms__Request *req;
  const struct rpc_method *method;
  int err;
  struct keyops_result res;
};

/* Runs on a worker; fills job->err and job->res. */
typedef int (*run_fn)(struct rpc_job *job, struct worker_ctx *w);
/* Runs on the loop; sets the response's result from job->res (status OK only). */
typedef void (*fill_fn)(struct rpc_job *job, Tkms__Response *resp, void *storage);

struct rpc_method {
  Tkms__Request__OpCase op;
  const char *name;
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
  int serving = job->res.hsm_ok && job->res.keystore_ok && !job->rpc->draining;
  h->status = serving ? "serving" : "not_serving";
  h->version = KMSD_VERSION;
  h->hsm_ok = job->res.hsm_ok;
  h->keystore_ok = job->res.keystore_ok;
  resp->result_case = TKMS__RESPONSE__RESULT_HEALTH;
  resp->health = h;
}

/* ---- CreateTenant ---------------------------------------------------------- */

static int
run_create_tenant(struct rpc_job *job, struct worker_ctx *w)
{
  return keyops_create_tenant(&job->rpc->ops, w, &job->res,
                              job->req->create_tenant->tenant_id);
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

/* Every callable operation. An op_case not listed here cannot be called. */
static const struct rpc_method methods[] = {
  {TKMS__REQUEST__OP_HEALTH, "Health", run_health, fill_health},
  {TKMS__REQUEST__OP_CREATE_TENANT, "CreateTenant", run_create_tenant, fill_create_tenant},
  {TKMS__REQUEST__OP_GENERATE_DATA_KEY, "GenerateDataKey", run_generate, fill_generate},
  {TKMS__REQUEST__OP_DECRYPT, "Decrypt", run_decrypt, fill_decrypt},
};

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

static void
job_free(struct rpc_job *job)
{
  keyops_result_clear(&job->res);
  tkms__request__free_unpacked(job->req, NULL);
  free(job);
}

static void
job_work(struct work_item *item, struct worker_ctx *w)
{
  struct rpc_job *job = (struct rpc_job *)item;
  job->err = job->method->run(job, w);
}

static void
job_done(struct work_item *item)
{
  struct rpc_job *job = (struct rpc_job *)item;
  conn *c = job->c;
  uint64_t id = job->req->request_id;

  if (job->err != KMS_OK) {
    int level = job->err == KMS_ERR_INTERNAL || job->err == KMS_ERR_HSM ? LOG_WARN : LOG_DEBUG;
    log_msg(level, "event=request_failed id=%llu method=%s principal=%s code=%d reason=\"%s\"",
            (unsigned long long)id, job->method->name, conn_principal(c), job->err,
            kms_strerror(job->err));
    rpc_send_error(c, id, job->err, job->res.message);
  } else {
    union {
      Tkms__HealthResponse h;
      Tkms__CreateTenantResponse t;
      Tkms__GenerateDataKeyResponse g;
      Tkms__DecryptResponse d;
    } storage;
    Tkms__Response resp;
    tkms__response__init(&resp);
    resp.request_id = id;
    resp.status = TKMS__STATUS_CODE__OK;
    job->method->fill(job, &resp, &storage);
    send_response(c, &resp);
    OPENSSL_cleanse(&storage, sizeof(storage));
  }
  job_free(job);
  conn_inflight_end(c);
}

void
rpc_on_frame(struct rpc *rpc, conn *c, const uint8_t *payload, size_t len)
{
  const char *why = "";
  Tkms__Request *req = tkms__request__unpack(NULL, len, payload);
  if (req == NULL) {
    log_msg(LOG_INFO, "event=bad_frame peer=%s principal=%s reason=undecodable",
            conn_peer(c), conn_principal(c));
    rpc_send_error(c, 0, KMS_ERR_PROTOCOL, "malformed request");
    conn_close_after_send(c);
    return;
  }
  int r = kms_wire_request_check(req, &why);
  const struct rpc_method *m = r == KMS_OK ? find_method(req->op_case) : NULL;
  if (r == KMS_OK && m == NULL) {
    r = KMS_ERR_UNIMPLEMENTED;
    why = "unknown method";
  }
  if (r != KMS_OK) {
    rpc_send_error(c, req->request_id, r, why);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  r = authz_check(rpc->cfg, conn_principal(c), req);
  if (r != KMS_OK) {
    log_msg(LOG_INFO, "event=denied id=%llu method=%s principal=%s peer=%s",
            (unsigned long long)req->request_id, m->name, conn_principal(c), conn_peer(c));
    rpc_send_error(c, req->request_id, r, "permission denied");
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  if (rpc->draining) {
    rpc_send_error(c, req->request_id, KMS_ERR_UNAVAILABLE, "kmsd is shutting down");
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  struct rpc_job *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    rpc_send_error(c, req->request_id, KMS_ERR_ALLOC, NULL);
    tkms__request__free_unpacked(req, NULL);
    return;
  }
  job->item.work = job_work;
  job->item.done = job_done;
  job->rpc = rpc;
  job->c = c;
  job->req = req;
  job->method = m;
  r = workers_submit(rpc->pool, &job->item);
  if (r != KMS_OK) {
    rpc_send_error(c, req->request_id, r, r == KMS_ERR_RESOURCE_EXHAUSTED ? "server busy" : NULL);
    job->c = NULL;
    job_free(job);
    return;
  }
  conn_inflight_begin(c);
}
