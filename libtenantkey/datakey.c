/* Encryption contexts, tenant creation and data keys through kmsd. */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_err.h"
#include "kms_secret.h"
#include "kms_wire.h"
#include "tk_internal.h"

struct tk_context {
  Tkms__ContextEntry entries[KMS_CONTEXT_MAX_ENTRIES];
  Tkms__ContextEntry *ptrs[KMS_CONTEXT_MAX_ENTRIES];
  size_t n;
};

struct tk_data_key {
  kms_secret *plaintext; /* NULL when generated without plaintext */
  uint8_t wrapped[KMS_WRAPPED_KEY_MAX];
  size_t wrapped_len;
  uint32_t kek_version;
};

TK_EXPORT tk_context *
tk_context_new(void)
{
  return calloc(1, sizeof(tk_context));
}

TK_EXPORT void
tk_context_free(tk_context *ctx)
{
  if (ctx == NULL) {
    return;
  }
  for (size_t i = 0; i < ctx->n; i++) {
    free(ctx->entries[i].key);
    free(ctx->entries[i].value);
  }
  free(ctx);
}

TK_EXPORT int
tk_context_add(tk_context *ctx, const char *key, const char *value)
{
  if (ctx == NULL || key == NULL || value == NULL || ctx->n >= KMS_CONTEXT_MAX_ENTRIES) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  Tkms__ContextEntry *e = &ctx->entries[ctx->n];
  tkms__context_entry__init(e);
  e->key = strdup(key);
  e->value = strdup(value);
  if (e->key == NULL || e->value == NULL) {
    free(e->key);
    free(e->value);
    return KMS_ERR_ALLOC;
  }
  ctx->ptrs[ctx->n] = e;
  const char *why;
  if (!kms_wire_context_ok(ctx->n + 1, ctx->ptrs, &why)) {
    free(e->key);
    free(e->value);
    return KMS_ERR_INVALID_ARGUMENT;
  }
  ctx->n++;
  return KMS_OK;
}

size_t
tk_context_entries(const tk_context *ctx, Tkms__ContextEntry ***out_entries)
{
  if (ctx == NULL || ctx->n == 0) {
    *out_entries = NULL;
    return 0;
  }
  *out_entries = (Tkms__ContextEntry **)ctx->ptrs;
  return ctx->n;
}

TK_EXPORT int
tk_tenant_create(tk_client *client, uint32_t *out_kek_version, const char *tenant_id)
{
  *out_kek_version = 0;
  Tkms__Request req;
  Tkms__CreateTenantRequest t;
  tkms__request__init(&req);
  tkms__create_tenant_request__init(&t);
  t.tenant_id = (char *)tenant_id;
  req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
  req.create_tenant = &t;
  Tkms__Response *resp = NULL;
  int r = tk_client_call(client, &req, &resp);
  if (r == KMS_OK) {
    *out_kek_version = resp->create_tenant->kek_version;
  }
  tk_client_response_free(resp);
  return r;
}

tk_data_key *
tk_data_key_new_from(const uint8_t *pt, size_t pt_len, const uint8_t *wrapped,
                     size_t wrapped_len, uint32_t version)
{
  tk_data_key *k = calloc(1, sizeof(*k));
  if (k == NULL || wrapped_len > sizeof(k->wrapped)) {
    free(k);
    return NULL;
  }
  if (pt_len > 0) {
    k->plaintext = kms_secret_from(pt, pt_len);
    if (k->plaintext == NULL) {
      free(k);
      return NULL;
    }
  }
  memcpy(k->wrapped, wrapped, wrapped_len);
  k->wrapped_len = wrapped_len;
  k->kek_version = version;
  return k;
}

TK_EXPORT int
tk_data_key_generate(tk_client *client, tk_data_key **out_key, const char *tenant_id,
                     const tk_context *ctx, int with_plaintext)
{
  *out_key = NULL;
  Tkms__Request req;
  Tkms__GenerateDataKeyRequest g;
  tkms__request__init(&req);
  tkms__generate_data_key_request__init(&g);
  g.tenant_id = (char *)tenant_id;
  g.n_context = tk_context_entries(ctx, &g.context);
  g.without_plaintext = !with_plaintext;
  req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
  req.generate_data_key = &g;
  Tkms__Response *resp = NULL;
  int r = tk_client_call(client, &req, &resp);
  if (r != KMS_OK) {
    return r;
  }
  const Tkms__GenerateDataKeyResponse *gr = resp->generate_data_key;
  if (with_plaintext && gr->plaintext.len != KMS_DATA_KEY_LEN) {
    r = KMS_ERR_PROTOCOL;
  } else if (!with_plaintext && gr->plaintext.len != 0) {
    r = KMS_ERR_PROTOCOL; /* kmsd sent what we declined to receive */
  } else {
    *out_key = tk_data_key_new_from(gr->plaintext.data, gr->plaintext.len, gr->wrapped_key.data,
                            gr->wrapped_key.len, gr->kek_version);
    r = *out_key != NULL ? KMS_OK : KMS_ERR_ALLOC;
  }
  tk_client_response_free(resp);
  return r;
}

int
tk_data_key_decrypt_entries(tk_client *client, tk_data_key **out_key, const char *tenant_id,
                            Tkms__ContextEntry **entries, size_t n_entries,
                            const uint8_t *wrapped, size_t wrapped_len)
{
  *out_key = NULL;
  if (wrapped == NULL || wrapped_len == 0 || wrapped_len > KMS_WRAPPED_KEY_MAX) {
    return KMS_ERR_DECRYPT;
  }
  Tkms__Request req;
  Tkms__DecryptRequest d;
  tkms__request__init(&req);
  tkms__decrypt_request__init(&d);
  d.tenant_id = (char *)tenant_id;
  d.n_context = n_entries;
  d.context = n_entries > 0 ? entries : NULL;
  d.wrapped_key.data = (uint8_t *)wrapped;
  d.wrapped_key.len = wrapped_len;
  req.op_case = TKMS__REQUEST__OP_DECRYPT;
  req.decrypt = &d;
  Tkms__Response *resp = NULL;
  int r = tk_client_call(client, &req, &resp);
  if (r == KMS_ERR_INVALID_ARGUMENT) {
    /* The request passed our own validation, so kmsd rejected the blob. */
    return KMS_ERR_DECRYPT;
  }
  if (r != KMS_OK) {
    return r;
  }
  const Tkms__DecryptResponse *dr = resp->decrypt;
  *out_key = tk_data_key_new_from(dr->plaintext.data, dr->plaintext.len, wrapped, wrapped_len,
                          dr->kek_version);
  r = *out_key != NULL ? KMS_OK : KMS_ERR_ALLOC;
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_data_key_decrypt(tk_client *client, tk_data_key **out_key, const char *tenant_id,
                    const tk_context *ctx, const uint8_t *wrapped, size_t wrapped_len)
{
  Tkms__ContextEntry **entries = NULL;
  size_t n = tk_context_entries(ctx, &entries);
  return tk_data_key_decrypt_entries(client, out_key, tenant_id, entries, n, wrapped,
                                     wrapped_len);
}

TK_EXPORT const uint8_t *
tk_data_key_plaintext(const tk_data_key *key, size_t *out_len)
{
  *out_len = 0;
  if (key == NULL || key->plaintext == NULL) {
    return NULL;
  }
  *out_len = kms_secret_len(key->plaintext);
  return kms_secret_cdata(key->plaintext);
}

TK_EXPORT const uint8_t *
tk_data_key_wrapped(const tk_data_key *key, size_t *out_len)
{
  *out_len = key->wrapped_len;
  return key->wrapped;
}

TK_EXPORT uint32_t
tk_data_key_kek_version(const tk_data_key *key)
{
  return key->kek_version;
}

TK_EXPORT void
tk_data_key_free(tk_data_key *key)
{
  if (key == NULL) {
    return;
  }
  kms_secret_free(key->plaintext);
  OPENSSL_cleanse(key, sizeof(*key));
  free(key);
}
