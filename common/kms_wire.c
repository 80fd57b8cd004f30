/* Field-by-field validation of RPC messages after protobuf_c unpacking. */
#include "kms_auditsum.h"
#include "kms_wire.h"

#include <stdint.h>
#include <string.h>

#include "kms_err.h"

static int
is_id_char(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static int
id_ok(const char *s, size_t max)
{
  if (s == NULL) {
    return 0;
  }
  size_t n = strnlen(s, max + 1);
  if (n == 0 || n > max) {
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    if (!is_id_char((unsigned char)s[i])) {
      return 0;
    }
  }
  return 1;
}

int
kms_wire_tenant_id_ok(const char *s)
{
  if (!id_ok(s, KMS_TENANT_ID_MAX)) {
    return 0;
  }
  unsigned char c = (unsigned char)s[0];
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int
kms_wire_context_ok(size_t n, Tkms__ContextEntry *const *entries, const char **why)
{
  if (n > KMS_CONTEXT_MAX_ENTRIES) {
    *why = "context: too many entries";
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    const Tkms__ContextEntry *e = entries[i];
    if (e == NULL || !id_ok(e->key, KMS_CONTEXT_KEY_MAX)) {
      *why = "context: invalid key";
      return 0;
    }
    const char *v = e->value != NULL ? e->value : "";
    size_t vl = strnlen(v, KMS_CONTEXT_VALUE_MAX + 1);
    if (vl > KMS_CONTEXT_VALUE_MAX) {
      *why = "context: value too long";
      return 0;
    }
    for (size_t k = 0; k < vl; k++) {
      unsigned char c = (unsigned char)v[k];
      if (c < 0x20 || c == 0x7f) {
        *why = "context: control character in value";
        return 0;
      }
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(entries[j]->key, e->key) == 0) {
        *why = "context: duplicate key";
        return 0;
      }
    }
  }
  return 1;
}

int
kms_wire_session_id_ok(const char *s)
{
  if (!id_ok(s, KMS_SESSION_ID_MAX)) {
    return 0;
  }
  unsigned char c = (unsigned char)s[0];
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int
kms_wire_attributes_ok(size_t n, Tkms__ContextEntry *const *attrs, size_t n_ctx,
                       Tkms__ContextEntry *const *ctx, const char *const *reserved,
                       const char **why)
{
  if (!kms_wire_context_ok(n, attrs, why)) {
    /* The same rule, reported under the field that broke it. */
    if (strcmp(*why, "context: too many entries") == 0) {
      *why = "attributes: too many entries";
    } else if (strcmp(*why, "context: invalid key") == 0) {
      *why = "attributes: invalid key";
    } else if (strcmp(*why, "context: value too long") == 0) {
      *why = "attributes: value too long";
    } else if (strcmp(*why, "context: duplicate key") == 0) {
      *why = "attributes: duplicate key";
    } else {
      *why = "attributes: control character in value";
    }
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < n_ctx; j++) {
      if (ctx[j] != NULL && ctx[j]->key != NULL && strcmp(ctx[j]->key, attrs[i]->key) == 0) {
        *why = "attributes: key also in the context";
        return 0;
      }
    }
    for (size_t j = 0; reserved != NULL && reserved[j] != NULL; j++) {
      if (strcmp(reserved[j], attrs[i]->key) == 0) {
        *why = "attributes: key named by the request itself (session_id, purpose)";
        return 0;
      }
    }
  }
  return 1;
}

static int
check_tenant(const char *tenant_id, const char **why)
{
  if (!kms_wire_tenant_id_ok(tenant_id)) {
    *why = "tenant_id: 1-64 characters of [A-Za-z0-9._-] required";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

/* An optional tenant id (empty: every tenant) in list filters. */
static int
check_tenant_filter(const char *tenant_id, const char **why)
{
  if (tenant_id == NULL || tenant_id[0] == '\0') {
    return KMS_OK;
  }
  return check_tenant(tenant_id, why);
}

static int
check_wrapped(const ProtobufCBinaryData *w, const char **why)
{
  if (w->len == 0 || w->len > KMS_WRAPPED_KEY_MAX) {
    *why = "wrapped_key: missing or too long";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

/* Key lifecycle requests (field numbers 20-39). */
static int
lifecycle_request_check(const Tkms__Request *req, const char **why)
{
  switch (req->op_case) {
  case TKMS__REQUEST__OP_ROTATE_KEY:
    return check_tenant(req->rotate_key->tenant_id, why);
  case TKMS__REQUEST__OP_LIST_KEYS:
    return check_tenant(req->list_keys->tenant_id, why);
  case TKMS__REQUEST__OP_DISABLE_KEY:
    return check_tenant(req->disable_key->tenant_id, why);
  case TKMS__REQUEST__OP_ENABLE_KEY:
    return check_tenant(req->enable_key->tenant_id, why);
  case TKMS__REQUEST__OP_SCHEDULE_DESTRUCTION: {
    const Tkms__ScheduleDestructionRequest *d = req->schedule_destruction;
    if (check_tenant(d->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (d->waiting_days > KMS_LIFECYCLE_DAYS_MAX || (d->no_waiting && d->waiting_days != 0)) {
      *why = "waiting_days: out of range, or given together with no_waiting";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_CANCEL_DESTRUCTION:
    return check_tenant(req->cancel_destruction->tenant_id, why);
  case TKMS__REQUEST__OP_APPROVE:
    if (req->approve->request_id == 0 || req->approve->request_id > INT64_MAX) {
      *why = "request_id of the approval request: must be 1..2^63-1";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  case TKMS__REQUEST__OP_LIST_REQUESTS:
    return check_tenant_filter(req->list_requests->tenant_id, why);
  case TKMS__REQUEST__OP_RE_ENCRYPT: {
    const Tkms__ReEncryptRequest *e = req->re_encrypt;
    if (check_tenant(e->tenant_id, why) != KMS_OK ||
        !kms_wire_context_ok(e->n_context, e->context, why) ||
        !kms_wire_attributes_ok(e->n_attributes, e->attributes, e->n_context, e->context, NULL,
                                why) ||
        check_wrapped(&e->wrapped_key, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_RE_ENCRYPT_BATCH: {
    const Tkms__ReEncryptBatchRequest *b = req->re_encrypt_batch;
    if (check_tenant(b->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (b->n_items == 0 || b->n_items > KMS_REENCRYPT_BATCH_MAX) {
      *why = "items: 1-1024 required";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    /* The policy sees the batch's attributes alone (no item's context). */
    if (!kms_wire_attributes_ok(b->n_attributes, b->attributes, 0, NULL, NULL, why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < b->n_items; i++) {
      const Tkms__ReEncryptItem *it = b->items[i];
      if (it == NULL || !kms_wire_context_ok(it->n_context, it->context, why) ||
          check_wrapped(&it->wrapped_key, why) != KMS_OK) {
        if (it == NULL) {
          *why = "items: empty item";
        }
        return KMS_ERR_INVALID_ARGUMENT;
      }
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_LIST_TENANTS: {
    const Tkms__ListTenantsRequest *l = req->list_tenants;
    if (l->limit > KMS_LIST_TENANTS_MAX) {
      *why = "limit: at most 1000";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (l->after != NULL && l->after[0] != '\0' && !kms_wire_tenant_id_ok(l->after)) {
      *why = "after: not a tenant id";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_LIST_RECEIPTS:
    return check_tenant_filter(req->list_receipts->tenant_id, why);
  case TKMS__REQUEST__OP_SET_ROTATION_PERIOD:
    if (check_tenant(req->set_rotation_period->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (req->set_rotation_period->rotation_period_days > KMS_LIFECYCLE_DAYS_MAX) {
      *why = "rotation_period_days: at most 3650";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  default:
    *why = "unknown method";
    return KMS_ERR_UNIMPLEMENTED;
  }
}

static int
check_session(const char *tenant_id, const char *session_id, const char **why)
{
  if (check_tenant(tenant_id, why) != KMS_OK) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (!kms_wire_session_id_ok(session_id)) {
    *why = "session_id: 1-128 characters of [A-Za-z0-9._-] required, the first a letter or digit";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

/* Session key requests (field numbers 40-49; docs/SESSIONS.md). */
static int
session_request_check(const Tkms__Request *req, const char **why)
{
  /* The policy sees session_id (and GetSessionKey's purpose) as context entries. */
  static const char *const session_only[] = {KMS_SESSION_KEY, NULL};
  static const char *const session_purpose[] = {KMS_SESSION_KEY, KMS_PURPOSE_KEY, NULL};

  switch (req->op_case) {
  case TKMS__REQUEST__OP_OPEN_SESSION: {
    const Tkms__OpenSessionRequest *o = req->open_session;
    if (check_session(o->tenant_id, o->session_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (!kms_wire_context_ok(o->n_metadata, o->metadata, why)) {
      *why = "metadata: at most 16 entries, keys 1-64 of [A-Za-z0-9._-] unique, values at most "
             "256 bytes without control characters";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (!kms_wire_attributes_ok(o->n_attributes, o->attributes, 0, NULL, session_only, why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_GET_SESSION_KEY: {
    const Tkms__GetSessionKeyRequest *g = req->get_session_key;
    if (check_session(g->tenant_id, g->session_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    /* purpose is checked as a context value would be. */
    Tkms__ContextEntry p = TKMS__CONTEXT_ENTRY__INIT;
    Tkms__ContextEntry *pp = &p;
    p.key = KMS_PURPOSE_KEY;
    p.value = g->purpose != NULL ? g->purpose : "";
    if (!kms_wire_context_ok(1, &pp, why)) {
      *why = "purpose: at most 256 bytes without control characters";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    int has_purpose = g->purpose != NULL && g->purpose[0] != '\0';
    if (!kms_wire_attributes_ok(g->n_attributes, g->attributes, 0, NULL,
                                has_purpose ? session_purpose : session_only, why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_CLOSE_SESSION:
    return check_session(req->close_session->tenant_id, req->close_session->session_id, why);
  case TKMS__REQUEST__OP_SHRED_SESSION:
    return check_session(req->shred_session->tenant_id, req->shred_session->session_id, why);
  case TKMS__REQUEST__OP_LIST_SESSIONS: {
    const Tkms__ListSessionsRequest *l = req->list_sessions;
    if (check_tenant(l->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (l->limit > KMS_LIST_SESSIONS_MAX) {
      *why = "limit: at most 1000";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (l->state > 3) {
      *why = "state: 0 (any), 1 open, 2 closed or 3 shredded";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (l->created_from_ms < 0 || l->created_to_ms < 0 ||
        (l->created_to_ms != 0 && l->created_to_ms < l->created_from_ms)) {
      *why = "created_from_ms, created_to_ms: not a time range";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (l->page_token != NULL && strnlen(l->page_token, KMS_PAGE_TOKEN_MAX + 1) >
                                     KMS_PAGE_TOKEN_MAX) {
      *why = "page_token: too long";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  default:
    *why = "unknown method";
    return KMS_ERR_UNIMPLEMENTED;
  }
}

/* Audit export (field number 50; docs/AUDIT.md). */
static int
export_audit_check(const Tkms__ExportAuditRequest *x, const char **why)
{
  if (check_tenant_filter(x->tenant_id, why) != KMS_OK) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (x->session_id != NULL && x->session_id[0] != '\0' &&
      !kms_wire_session_id_ok(x->session_id)) {
    *why = "session_id: 1-128 characters of [A-Za-z0-9._-], the first a letter or digit";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (x->operation != NULL && x->operation[0] != '\0' && !kms_auditsum_known_op(x->operation)) {
    *why = "operation: not an operation name (e.g. GetSessionKey, RotateKey)";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (x->from_ms < 0 || x->to_ms < 0 || (x->to_ms > 0 && x->to_ms <= x->from_ms)) {
    *why = "from_ms, to_ms: 0 or more, and to_ms after from_ms";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (x->limit > KMS_LIST_SESSIONS_MAX) {
    *why = "limit: at most 1000";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (x->from_ms < 0 || x->to_ms < 0 || (x->to_ms != 0 && x->to_ms < x->from_ms)) {
    *why = "from_ms, to_ms: not a time range";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (x->page_token != NULL &&
      strnlen(x->page_token, KMS_PAGE_TOKEN_MAX + 1) > KMS_PAGE_TOKEN_MAX) {
    *why = "page_token: too long";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

int
kms_wire_request_check(const Tkms__Request *req, const char **why)
{
  *why = "";
  if (req->request_id == 0) {
    *why = "request_id: must be nonzero";
    return KMS_ERR_INVALID_ARGUMENT;
  }
  switch (req->op_case) {
  case TKMS__REQUEST__OP_HEALTH:
  case TKMS__REQUEST__OP_BACKUP:
  case TKMS__REQUEST__OP_ROOT_ROTATE:
  case TKMS__REQUEST__OP_ROOT_STATUS:
    return KMS_OK;
  case TKMS__REQUEST__OP_CREATE_TENANT:
    return check_tenant(req->create_tenant->tenant_id, why);
  case TKMS__REQUEST__OP_GENERATE_DATA_KEY: {
    const Tkms__GenerateDataKeyRequest *g = req->generate_data_key;
    if (check_tenant(g->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (!kms_wire_context_ok(g->n_context, g->context, why) ||
        !kms_wire_attributes_ok(g->n_attributes, g->attributes, g->n_context, g->context, NULL,
                                why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_DECRYPT: {
    const Tkms__DecryptRequest *d = req->decrypt;
    if (check_tenant(d->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (!kms_wire_context_ok(d->n_context, d->context, why) ||
        !kms_wire_attributes_ok(d->n_attributes, d->attributes, d->n_context, d->context, NULL,
                                why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (d->wrapped_key.len == 0 || d->wrapped_key.len > KMS_WRAPPED_KEY_MAX) {
      *why = "wrapped_key: missing or too long";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_ROTATE_KEY:
  case TKMS__REQUEST__OP_LIST_KEYS:
  case TKMS__REQUEST__OP_DISABLE_KEY:
  case TKMS__REQUEST__OP_ENABLE_KEY:
  case TKMS__REQUEST__OP_SCHEDULE_DESTRUCTION:
  case TKMS__REQUEST__OP_CANCEL_DESTRUCTION:
  case TKMS__REQUEST__OP_APPROVE:
  case TKMS__REQUEST__OP_LIST_REQUESTS:
  case TKMS__REQUEST__OP_RE_ENCRYPT:
  case TKMS__REQUEST__OP_RE_ENCRYPT_BATCH:
  case TKMS__REQUEST__OP_LIST_TENANTS:
  case TKMS__REQUEST__OP_LIST_RECEIPTS:
  case TKMS__REQUEST__OP_SET_ROTATION_PERIOD:
    return lifecycle_request_check(req, why);
  case TKMS__REQUEST__OP_OPEN_SESSION:
  case TKMS__REQUEST__OP_GET_SESSION_KEY:
  case TKMS__REQUEST__OP_CLOSE_SESSION:
  case TKMS__REQUEST__OP_SHRED_SESSION:
  case TKMS__REQUEST__OP_LIST_SESSIONS:
    return session_request_check(req, why);
  case TKMS__REQUEST__OP_EXPORT_AUDIT:
    return export_audit_check(req->export_audit, why);
  default:
    *why = "unknown method";
    return KMS_ERR_UNIMPLEMENTED;
  }
}

int
kms_wire_response_check(const Tkms__Response *resp, Tkms__Request__OpCase op)
{
  if (resp->status != TKMS__STATUS_CODE__OK) {
    /* An error carries no result. */
    return resp->result_case == TKMS__RESPONSE__RESULT__NOT_SET ? KMS_OK
                                                                : KMS_ERR_PROTOCOL;
  }
  /* The result field numbers mirror the request's op field numbers. */
  if ((int)resp->result_case != (int)op) {
    return KMS_ERR_PROTOCOL;
  }
  switch (resp->result_case) {
  case TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY: {
    const Tkms__GenerateDataKeyResponse *g = resp->generate_data_key;
    if (g->wrapped_key.len == 0 || g->wrapped_key.len > KMS_WRAPPED_KEY_MAX ||
        (g->plaintext.len != 0 && g->plaintext.len != KMS_DATA_KEY_LEN)) {
      return KMS_ERR_PROTOCOL;
    }
    return KMS_OK;
  }
  case TKMS__RESPONSE__RESULT_DECRYPT:
    return resp->decrypt->plaintext.len == KMS_DATA_KEY_LEN ? KMS_OK : KMS_ERR_PROTOCOL;
  case TKMS__RESPONSE__RESULT_CREATE_TENANT:
  case TKMS__RESPONSE__RESULT_HEALTH:
    return KMS_OK;
  case TKMS__RESPONSE__RESULT_RE_ENCRYPT: {
    const Tkms__ReEncryptResponse *e = resp->re_encrypt;
    return e->wrapped_key.len != 0 && e->wrapped_key.len <= KMS_WRAPPED_KEY_MAX
               ? KMS_OK
               : KMS_ERR_PROTOCOL;
  }
  case TKMS__RESPONSE__RESULT_RE_ENCRYPT_BATCH: {
    const Tkms__ReEncryptBatchResponse *b = resp->re_encrypt_batch;
    for (size_t i = 0; i < b->n_results; i++) {
      if (b->results[i] == NULL || b->results[i]->wrapped_key.len > KMS_WRAPPED_KEY_MAX) {
        return KMS_ERR_PROTOCOL;
      }
    }
    return KMS_OK;
  }
  case TKMS__RESPONSE__RESULT_OPEN_SESSION:
    return resp->open_session->plaintext.len == KMS_DATA_KEY_LEN ? KMS_OK : KMS_ERR_PROTOCOL;
  case TKMS__RESPONSE__RESULT_GET_SESSION_KEY:
    return resp->get_session_key->plaintext.len == KMS_DATA_KEY_LEN ? KMS_OK
                                                                     : KMS_ERR_PROTOCOL;
  case TKMS__RESPONSE__RESULT_CLOSE_SESSION:
    return resp->close_session->session != NULL ? KMS_OK : KMS_ERR_PROTOCOL;
  case TKMS__RESPONSE__RESULT_SHRED_SESSION:
    return resp->shred_session->receipt != NULL ? KMS_OK : KMS_ERR_PROTOCOL;
  case TKMS__RESPONSE__RESULT_LIST_SESSIONS:
    for (size_t i = 0; i < resp->list_sessions->n_sessions; i++) {
      if (resp->list_sessions->sessions[i] == NULL) {
        return KMS_ERR_PROTOCOL;
      }
    }
    return KMS_OK;
  case TKMS__RESPONSE__RESULT_ROTATE_KEY:
  case TKMS__RESPONSE__RESULT_LIST_KEYS:
  case TKMS__RESPONSE__RESULT_DISABLE_KEY:
  case TKMS__RESPONSE__RESULT_ENABLE_KEY:
  case TKMS__RESPONSE__RESULT_SCHEDULE_DESTRUCTION:
  case TKMS__RESPONSE__RESULT_CANCEL_DESTRUCTION:
  case TKMS__RESPONSE__RESULT_APPROVE:
  case TKMS__RESPONSE__RESULT_LIST_REQUESTS:
  case TKMS__RESPONSE__RESULT_LIST_TENANTS:
  case TKMS__RESPONSE__RESULT_LIST_RECEIPTS:
  case TKMS__RESPONSE__RESULT_SET_ROTATION_PERIOD:
  case TKMS__RESPONSE__RESULT_ROOT_ROTATE:
    return KMS_OK;
  case TKMS__RESPONSE__RESULT_ROOT_STATUS:
    for (size_t i = 0; i < resp->root_status->n_roots; i++) {
      if (resp->root_status->roots[i] == NULL) {
        return KMS_ERR_PROTOCOL;
      }
    }
    return KMS_OK;
  case TKMS__RESPONSE__RESULT_EXPORT_AUDIT:
    for (size_t i = 0; i < resp->export_audit->n_records; i++) {
      if (resp->export_audit->records[i] == NULL) {
        return KMS_ERR_PROTOCOL;
      }
    }
    for (size_t i = 0; i < resp->export_audit->n_state_changes; i++) {
      if (resp->export_audit->state_changes[i] == NULL) {
        return KMS_ERR_PROTOCOL;
      }
    }
    return resp->export_audit->checkpoint != NULL ? KMS_OK : KMS_ERR_PROTOCOL;
  case TKMS__RESPONSE__RESULT_BACKUP:
    return resp->backup->path != NULL && resp->backup->path[0] != '\0' ? KMS_OK
                                                                       : KMS_ERR_PROTOCOL;
  default:
    return KMS_ERR_PROTOCOL;
  }
}
