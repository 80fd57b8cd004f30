/* Field-by-field validation of RPC messages after protobuf_c unpacking. */
#include "kms_wire.h"

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

static int
check_tenant(const char *tenant_id, const char **why)
{
  if (!kms_wire_tenant_id_ok(tenant_id)) {
    *why = "tenant_id: 1-64 characters of [A-Za-z0-9._-] required";
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
    return KMS_OK;
  case TKMS__REQUEST__OP_CREATE_TENANT:
    return check_tenant(req->create_tenant->tenant_id, why);
  case TKMS__REQUEST__OP_GENERATE_DATA_KEY: {
    const Tkms__GenerateDataKeyRequest *g = req->generate_data_key;
    if (check_tenant(g->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (!kms_wire_context_ok(g->n_context, g->context, why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
  case TKMS__REQUEST__OP_DECRYPT: {
    const Tkms__DecryptRequest *d = req->decrypt;
    if (check_tenant(d->tenant_id, why) != KMS_OK) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (!kms_wire_context_ok(d->n_context, d->context, why)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (d->wrapped_key.len == 0 || d->wrapped_key.len > KMS_WRAPPED_KEY_MAX) {
      *why = "wrapped_key: missing or too long";
      return KMS_ERR_INVALID_ARGUMENT;
    }
    return KMS_OK;
  }
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
  default:
    return KMS_ERR_PROTOCOL;
  }
}
