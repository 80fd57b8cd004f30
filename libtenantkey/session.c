/* Session keys through kmsd: open, fetch, close, shred and list sessions; session envelopes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "envelope.h"
#include "kms_err.h"
#include "kms_secret.h"
#include "kms_wire.h"
#include "tk_internal.h"

_Static_assert(TK_SESSION_ID_MAX == KMS_SESSION_ID_MAX, "one limit for session ids");
_Static_assert(TK_ENV_SESSION_MARKER_LEN == sizeof(TK_ENV_SESSION_MARKER) - 1, "marker length");

struct tk_session {
  char tenant_id[KMS_TENANT_ID_MAX + 1];
  char session_id[KMS_SESSION_ID_MAX + 1];
  kms_secret *key; /* 32 bytes, locked and wiped */
  uint32_t kek_version;
  int state;
  int64_t created_ms, closed_ms;
};

/* Arguments are checked here too, so a bad one never costs a round trip. */
static int
names_ok(const char *tenant_id, const char *session_id)
{
  return kms_wire_tenant_id_ok(tenant_id) && kms_wire_session_id_ok(session_id);
}

static int
session_new(tk_session **out, const char *tenant_id, const char *session_id,
            const ProtobufCBinaryData *key, uint32_t kek_version, uint32_t state,
            int64_t created_ms, int64_t closed_ms)
{
  tk_session *s = NULL;
  *out = NULL;
  if (key->len != KMS_DATA_KEY_LEN || (state != TK_SESSION_OPEN && state != TK_SESSION_CLOSED)) {
    return KMS_ERR_PROTOCOL;
  }
  if ((s = calloc(1, sizeof(*s))) == NULL || (s->key = kms_secret_from(key->data, key->len)) ==
                                                 NULL) {
    free(s);
    return KMS_ERR_ALLOC;
  }
  snprintf(s->tenant_id, sizeof(s->tenant_id), "%s", tenant_id);
  snprintf(s->session_id, sizeof(s->session_id), "%s", session_id);
  s->kek_version = kek_version;
  s->state = (int)state;
  s->created_ms = created_ms;
  s->closed_ms = closed_ms;
  *out = s;
  return KMS_OK;
}

TK_EXPORT int
tk_session_open(tk_client *client, tk_session **out_session, const char *tenant_id,
                const char *session_id, const tk_context *metadata)
{
  Tkms__Request req;
  Tkms__OpenSessionRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_session == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_session = NULL;
  if (client == NULL || !names_ok(tenant_id, session_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__open_session_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.session_id = (char *)session_id;
  m.n_metadata = tk_context_entries(metadata, &m.metadata);
  req.op_case = TKMS__REQUEST__OP_OPEN_SESSION;
  req.open_session = &m;
  r = tk_client_call(client, &req, &resp);
  if (r == KMS_OK) {
    const Tkms__OpenSessionResponse *o = resp->open_session;
    r = session_new(out_session, tenant_id, session_id, &o->plaintext, o->kek_version, o->state,
                    o->created_ms, 0);
  }
  tk_client_response_free(resp);
  return r;
}

/* get_key is GetSessionKey; |purpose| NULL or "" sends none. */
static int
get_key(tk_client *client, tk_session **out, const char *tenant_id, const char *session_id,
        const char *purpose)
{
  Tkms__Request req;
  Tkms__GetSessionKeyRequest m;
  Tkms__Response *resp = NULL;
  int r;

  tkms__request__init(&req);
  tkms__get_session_key_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.session_id = (char *)session_id;
  m.purpose = (char *)(purpose != NULL ? purpose : "");
  req.op_case = TKMS__REQUEST__OP_GET_SESSION_KEY;
  req.get_session_key = &m;
  r = tk_client_call(client, &req, &resp);
  if (r == KMS_OK) {
    const Tkms__GetSessionKeyResponse *g = resp->get_session_key;
    r = session_new(out, tenant_id, session_id, &g->plaintext, g->kek_version, g->state,
                    g->created_ms, g->closed_ms);
  }
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_session_get(tk_client *client, tk_session **out_session, const char *tenant_id,
               const char *session_id, const char *purpose)
{
  if (out_session == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_session = NULL;
  if (client == NULL || !names_ok(tenant_id, session_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return get_key(client, out_session, tenant_id, session_id, purpose);
}

TK_EXPORT int
tk_session_close(tk_client *client, const char *tenant_id, const char *session_id)
{
  Tkms__Request req;
  Tkms__CloseSessionRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (client == NULL || !names_ok(tenant_id, session_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__close_session_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.session_id = (char *)session_id;
  req.op_case = TKMS__REQUEST__OP_CLOSE_SESSION;
  req.close_session = &m;
  r = tk_client_call(client, &req, &resp);
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_session_shred(tk_client *client, tk_session_receipt *out_receipt, const char *tenant_id,
                 const char *session_id)
{
  Tkms__Request req;
  Tkms__ShredSessionRequest m;
  Tkms__Response *resp = NULL;
  int r;

  if (out_receipt == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out_receipt, 0, sizeof(*out_receipt));
  if (client == NULL || !names_ok(tenant_id, session_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__shred_session_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.session_id = (char *)session_id;
  req.op_case = TKMS__REQUEST__OP_SHRED_SESSION;
  req.shred_session = &m;
  r = tk_client_call(client, &req, &resp);
  if (r == KMS_OK) {
    const Tkms__SessionReceipt *x = resp->shred_session->receipt;
    out_receipt->id = x->id;
    out_receipt->kek_version = x->kek_version;
    out_receipt->created_ms = x->created_ms;
    out_receipt->shredded_ms = x->shredded_ms;
    snprintf(out_receipt->shredded_by, sizeof(out_receipt->shredded_by), "%s",
             x->shredded_by != NULL ? x->shredded_by : "");
  }
  tk_client_response_free(resp);
  return r;
}

static void
copy_str(char *dst, size_t cap, const char *src)
{
  snprintf(dst, cap, "%s", src != NULL ? src : "");
}

TK_EXPORT int
tk_session_list(tk_client *client, tk_session_info **out, size_t *out_n, char *next_token,
                size_t next_cap, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                int state, const char *page_token)
{
  Tkms__Request req;
  Tkms__ListSessionsRequest m;
  Tkms__Response *resp = NULL;
  tk_session_info *list = NULL;
  int r;

  if (out == NULL || out_n == NULL || next_token == NULL || next_cap == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  *out_n = 0;
  next_token[0] = '\0';
  if (client == NULL || !kms_wire_tenant_id_ok(tenant_id) || state < 0 || state > 3) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  tkms__list_sessions_request__init(&m);
  m.tenant_id = (char *)tenant_id;
  m.created_from_ms = from_ms;
  m.created_to_ms = to_ms;
  m.state = (uint32_t)state;
  m.page_token = (char *)(page_token != NULL ? page_token : "");
  req.op_case = TKMS__REQUEST__OP_LIST_SESSIONS;
  req.list_sessions = &m;
  r = tk_client_call(client, &req, &resp);
  if (r != KMS_OK) {
    goto out;
  }
  const Tkms__ListSessionsResponse *l = resp->list_sessions;
  const char *next = l->next_page_token != NULL ? l->next_page_token : "";
  if (strlen(next) >= next_cap) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  if (l->n_sessions > 0 && (list = calloc(l->n_sessions, sizeof(*list))) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  for (size_t i = 0; i < l->n_sessions; i++) {
    const Tkms__SessionInfo *x = l->sessions[i];
    copy_str(list[i].session_id, sizeof(list[i].session_id), x->session_id);
    copy_str(list[i].created_by, sizeof(list[i].created_by), x->created_by);
    copy_str(list[i].closed_by, sizeof(list[i].closed_by), x->closed_by);
    copy_str(list[i].shredded_by, sizeof(list[i].shredded_by), x->shredded_by);
    list[i].state = (int)x->state;
    list[i].kek_version = x->kek_version;
    list[i].created_ms = x->created_ms;
    list[i].closed_ms = x->closed_ms;
    list[i].shredded_ms = x->shredded_ms;
  }
  snprintf(next_token, next_cap, "%s", next);
  *out = list;
  *out_n = l->n_sessions;
  list = NULL;
out:
  free(list);
  tk_client_response_free(resp);
  return r;
}

TK_EXPORT int
tk_session_state(const tk_session *session)
{
  return session != NULL ? session->state : 0;
}

TK_EXPORT uint32_t
tk_session_kek_version(const tk_session *session)
{
  return session != NULL ? session->kek_version : 0;
}

TK_EXPORT void
tk_session_free(tk_session *session)
{
  if (session == NULL) {
    return;
  }
  kms_secret_free(session->key);
  OPENSSL_cleanse(session, sizeof(*session));
  free(session);
}

/* ---- Session envelopes (docs/ENVELOPE.md) ------------------------------------------------ */

int
tk_session_header_key(tk_client *client, tk_data_key **out_key, const struct tk_env_header *h,
                      const char *session_id)
{
  tk_session *s = NULL;
  *out_key = NULL;
  int r = get_key(client, &s, h->tenant, session_id, NULL);
  if (r != KMS_OK) {
    return r;
  }
  /* The wrapped-key field of a session envelope is the marker, not a key. */
  *out_key = tk_data_key_new_from(kms_secret_cdata(s->key), kms_secret_len(s->key),
                                  (const uint8_t *)TK_ENV_SESSION_MARKER,
                                  TK_ENV_SESSION_MARKER_LEN, s->kek_version);
  tk_session_free(s);
  return *out_key != NULL ? KMS_OK : KMS_ERR_ALLOC;
}

int
tk_session_seal_header(const tk_session *s, const tk_context *ctx, tk_data_key **out_key,
                       uint8_t *hdr, size_t *hdr_len)
{
  Tkms__ContextEntry **entries = NULL;
  Tkms__ContextEntry *all[KMS_CONTEXT_MAX_ENTRIES];
  Tkms__ContextEntry sid = TKMS__CONTEXT_ENTRY__INIT;
  struct tk_env_header *h = NULL;
  size_t n = tk_context_entries(ctx, &entries), m = 0;
  int have_sid = 0, r;

  *out_key = NULL;
  *hdr_len = 0;
  if (s == NULL || s->key == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Closed means no new encryption under it (docs/SESSIONS.md). */
  if (s->state != TK_SESSION_OPEN) {
    return KMS_ERR_FAILED_PRECONDITION;
  }
  for (size_t i = 0; i < n; i++) {
    if (strcmp(entries[i]->key, TK_ENV_SESSION_KEY) == 0) {
      if (strcmp(entries[i]->value, s->session_id) != 0) {
        return KMS_ERR_INVALID_ARGUMENT; /* would name another session than the key's */
      }
      have_sid = 1;
    }
    all[m++] = entries[i];
  }
  if (!have_sid) {
    if (m >= KMS_CONTEXT_MAX_ENTRIES) {
      return KMS_ERR_INVALID_ARGUMENT; /* no room for the session_id entry */
    }
    sid.key = TK_ENV_SESSION_KEY;
    sid.value = (char *)s->session_id;
    all[m++] = &sid;
  }
  if ((h = malloc(sizeof(*h))) == NULL) {
    return KMS_ERR_ALLOC;
  }
  r = tk_env_header_set(h, TK_ENV_FORMAT_1, s->tenant_id, s->kek_version,
                        (const uint8_t *)TK_ENV_SESSION_MARKER, TK_ENV_SESSION_MARKER_LEN, all, m);
  if (r == KMS_OK) {
    r = tk_env_header_encode(hdr, TK_ENV_HEADER_MAX, hdr_len, h);
  }
  if (r == KMS_OK) {
    *out_key = tk_data_key_new_from(kms_secret_cdata(s->key), kms_secret_len(s->key),
                                    (const uint8_t *)TK_ENV_SESSION_MARKER,
                                    TK_ENV_SESSION_MARKER_LEN, s->kek_version);
    r = *out_key != NULL ? KMS_OK : KMS_ERR_ALLOC;
  }
  free(h);
  return r;
}
