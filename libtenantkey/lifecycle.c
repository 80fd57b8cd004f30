/* Key lifecycle through kmsd: officer operations and re-wrapping data keys without plaintext. */
#include <stdlib.h>
#include <string.h>

#include "kms_err.h"
#include "kms_wire.h"
#include "tk_internal.h"

_Static_assert(TK_WRAPPED_KEY_MAX == KMS_WRAPPED_KEY_MAX, "one limit for wrapped keys");

/* call sends |req| with op |op| already set and returns the response (or an error). */
static int
call(tk_client *client, Tkms__Request *req, Tkms__Response **out)
{
  *out = NULL;
  if (client == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return tk_client_call(client, req, out);
}

/* Arguments are checked here too, so a bad one never costs a round trip. */
static int
tenant_ok(const char *tenant_id)
{
  return kms_wire_tenant_id_ok(tenant_id);
}

TK_EXPORT int
tk_key_rotate(tk_client *client, uint32_t *out_kek_version, const char *tenant_id)
{
  Tkms__Request req;
  Tkms__RotateKeyRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_kek_version == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_kek_version = 0;
  if (!tenant_ok(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__rotate_key_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  req.op_case = TKMS__REQUEST__OP_ROTATE_KEY;
  req.rotate_key = &m;
  r = call(client, &req, &resp);
  if (r == KMS_OK) {
    *out_kek_version = resp->rotate_key->kek_version;
  }
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_key_disable(tk_client *client, uint64_t *out_request_id, const char *tenant_id, uint32_t version)
{
  Tkms__Request req;
  Tkms__DisableKeyRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_request_id == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_request_id = 0;
  if (!tenant_ok(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__disable_key_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.version = version;
  req.op_case = TKMS__REQUEST__OP_DISABLE_KEY;
  req.disable_key = &m;
  r = call(client, &req, &resp);
  if (r == KMS_OK && resp->disable_key->pending_approval && resp->disable_key->request != NULL) {
    *out_request_id = resp->disable_key->request->id;
  }
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_key_enable(tk_client *client, const char *tenant_id, uint32_t version)
{
  Tkms__Request req;
  Tkms__EnableKeyRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (!tenant_ok(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__enable_key_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.version = version;
  req.op_case = TKMS__REQUEST__OP_ENABLE_KEY;
  req.enable_key = &m;
  r = call(client, &req, &resp);
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_key_schedule_destruction(tk_client *client, uint64_t *out_request_id, const char *tenant_id,
                            uint32_t version, uint32_t waiting_days)
{
  Tkms__Request req;
  Tkms__ScheduleDestructionRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_request_id == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_request_id = 0;
  if (!tenant_ok(tenant_id) ||
      (waiting_days != TK_WAIT_NONE && waiting_days > KMS_LIFECYCLE_DAYS_MAX)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__schedule_destruction_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.version = version;
  m.no_waiting = waiting_days == TK_WAIT_NONE;
  m.waiting_days = waiting_days == TK_WAIT_NONE ? 0 : waiting_days;
  req.op_case = TKMS__REQUEST__OP_SCHEDULE_DESTRUCTION;
  req.schedule_destruction = &m;
  r = call(client, &req, &resp);
  if (r == KMS_OK && resp->schedule_destruction->request != NULL) {
    *out_request_id = resp->schedule_destruction->request->id;
  }
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_key_cancel_destruction(tk_client *client, const char *tenant_id, uint32_t version)
{
  Tkms__Request req;
  Tkms__CancelDestructionRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (!tenant_ok(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__cancel_destruction_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.version = version;
  req.op_case = TKMS__REQUEST__OP_CANCEL_DESTRUCTION;
  req.cancel_destruction = &m;
  r = call(client, &req, &resp);
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_request_approve(tk_client *client, int *out_executed, uint64_t request_id)
{
  Tkms__Request req;
  Tkms__ApproveRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_executed == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_executed = 0;
  if (request_id == 0 || request_id > INT64_MAX) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__approve_request__init(&m);
  m.request_id = request_id;
  req.op_case = TKMS__REQUEST__OP_APPROVE;
  req.approve = &m;
  r = call(client, &req, &resp);
  if (r == KMS_OK) {
    *out_executed = resp->approve->executed ? 1 : 0;
  }
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_tenant_set_rotation_period(tk_client *client, const char *tenant_id, uint32_t days)
{
  Tkms__Request req;
  Tkms__SetRotationPeriodRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (!tenant_ok(tenant_id) || days > KMS_LIFECYCLE_DAYS_MAX) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__set_rotation_period_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.rotation_period_days = days;
  req.op_case = TKMS__REQUEST__OP_SET_ROTATION_PERIOD;
  req.set_rotation_period = &m;
  r = call(client, &req, &resp);
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_data_key_rewrap(tk_client *client, uint8_t *out_wrapped, size_t *out_wrapped_len,
                   uint32_t *out_kek_version, const char *tenant_id, const tk_context *ctx,
                   const uint8_t *wrapped, size_t wrapped_len, uint32_t target_version)
{
  Tkms__Request req;
  Tkms__ReEncryptRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_wrapped == NULL || out_wrapped_len == NULL || out_kek_version == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_wrapped_len = 0;
  *out_kek_version = 0;
  if (!tenant_ok(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (wrapped == NULL || wrapped_len == 0 || wrapped_len > KMS_WRAPPED_KEY_MAX) {
    return KMS_ERR_DECRYPT;
  }
  tkms__request__init(&req);
  tkms__re_encrypt_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.n_context = tk_context_entries(ctx, &m.context);
  m.wrapped_key.data = (uint8_t *)wrapped;
  m.wrapped_key.len = wrapped_len;
  m.target_version = target_version;
  req.op_case = TKMS__REQUEST__OP_RE_ENCRYPT;
  req.re_encrypt = &m;
  r = call(client, &req, &resp);
  if (r == KMS_ERR_INVALID_ARGUMENT) {
    /* Our own validation passed, so kmsd rejected the blob: no oracle. */
    return KMS_ERR_DECRYPT;
  }
  if (r == KMS_OK) {
    const Tkms__ReEncryptResponse *e = resp->re_encrypt;
    memcpy(out_wrapped, e->wrapped_key.data, e->wrapped_key.len);
    *out_wrapped_len = e->wrapped_key.len;
    *out_kek_version = e->kek_version;
  }
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_data_key_rewrap_batch(tk_client *client, tk_rewrap_item *items, size_t n_items,
                         const char *tenant_id, uint32_t target_version)
{
  Tkms__Request req;
  Tkms__ReEncryptBatchRequest m;
  Tkms__ReEncryptItem *it = NULL;
  Tkms__ReEncryptItem **ptrs = NULL;
  Tkms__Response *resp = NULL;
  int r = KMS_ERR_INVALID_ARGUMENT;

  if (items == NULL || n_items == 0 || n_items > KMS_REENCRYPT_BATCH_MAX || !tenant_ok(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Heap, not stack: a full batch of item headers is ~70 KiB. */
  it = calloc(n_items, sizeof(*it));
  ptrs = calloc(n_items, sizeof(*ptrs));
  if (it == NULL || ptrs == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  for (size_t i = 0; i < n_items; i++) {
    items[i].status = KMS_ERR_INTERNAL;
    items[i].kek_version = 0;
    items[i].out_wrapped_len = 0;
    if (items[i].wrapped == NULL || items[i].wrapped_len == 0 ||
        items[i].wrapped_len > KMS_WRAPPED_KEY_MAX) {
      r = KMS_ERR_INVALID_ARGUMENT;
      goto out;
    }
    tkms__re_encrypt_item__init(&it[i]);
    it[i].wrapped_key.data = (uint8_t *)items[i].wrapped;
    it[i].wrapped_key.len = items[i].wrapped_len;
    it[i].n_context = tk_context_entries(items[i].ctx, &it[i].context);
    ptrs[i] = &it[i];
  }
  tkms__request__init(&req);
  tkms__re_encrypt_batch_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.items = ptrs;
  m.n_items = n_items;
  m.target_version = target_version;
  req.op_case = TKMS__REQUEST__OP_RE_ENCRYPT_BATCH;
  req.re_encrypt_batch = &m;
  r = call(client, &req, &resp);
  if (r != KMS_OK) {
    goto out;
  }
  const Tkms__ReEncryptBatchResponse *b = resp->re_encrypt_batch;
  if (b->n_results != n_items) {
    r = KMS_ERR_PROTOCOL;
    goto out;
  }
  for (size_t i = 0; i < n_items; i++) {
    const Tkms__ReEncryptResult *x = b->results[i];
    int st = kms_status_to_err((int)x->status);
    /* Failed authentication stays one opaque answer, per item too. */
    items[i].status = st == KMS_ERR_INVALID_ARGUMENT ? KMS_ERR_DECRYPT : st;
    if (st == KMS_OK && x->wrapped_key.len > 0) {
      memcpy(items[i].out_wrapped, x->wrapped_key.data, x->wrapped_key.len);
      items[i].out_wrapped_len = x->wrapped_key.len;
      items[i].kek_version = x->kek_version;
    } else if (st == KMS_OK) {
      items[i].status = KMS_ERR_PROTOCOL;
    }
  }
  r = KMS_OK;
out:
  tk_client_response_free(resp);
  free(it);
  free(ptrs);
  return r;
}
