/* libtenantkey internals shared between its source files. Not installed. */
#ifndef TK_INTERNAL_H
#define TK_INTERNAL_H

#include "kms.pb-c.h"
#include "tenantkey.h"

/*
 * tk_client_call sends |req| (request_id is assigned here) and waits for its
 * response, which it validates against the request's operation. On success
 * *out_resp is the unpacked response (free with tk_client_response_free). A
 * non-OK status is returned as an error code, with kmsd's message kept for
 * tk_client_last_message.
 */
int tk_client_call(tk_client *client, Tkms__Request *req, Tkms__Response **out_resp);

/* tk_client_response_free wipes the plaintext fields of |resp| and frees it. */
void tk_client_response_free(Tkms__Response *resp);

/* tk_context_entries exposes a context's entries for packing (NULL ctx: none). */
size_t tk_context_entries(const tk_context *ctx, Tkms__ContextEntry ***out_entries);

/*
 * tk_data_key_decrypt_entries is tk_data_key_decrypt with the context given
 * as entries (the envelope header's), not as a tk_context.
 */
int tk_data_key_decrypt_entries(tk_client *client, tk_data_key **out_key, const char *tenant_id,
                                Tkms__ContextEntry **entries, size_t n_entries,
                                const uint8_t *wrapped, size_t wrapped_len);

/*
 * tk_client_attributes_clash returns 1 (and sets the client's message) if the
 * client's access attributes share a key with the |n_ctx| context entries:
 * kmsd would refuse such a request (docs/POLICY.md). 0 otherwise.
 */
int tk_client_attributes_clash(tk_client *c, Tkms__ContextEntry **ctx, size_t n_ctx);

/* tk_data_key_new_from returns a data key holding copies of the bytes (NULL: out of memory). */
tk_data_key *tk_data_key_new_from(const uint8_t *pt, size_t pt_len, const uint8_t *wrapped,
                                  size_t wrapped_len, uint32_t version);

struct tk_env_header;

/*
 * tk_seal_format and tk_stream_seal_new_format are tk_seal and
 * tk_stream_seal_new writing envelope format |format| (1 or 2; the public
 * functions write the newest, 2). For tests and test vectors: format 1 is
 * read forever but no longer written by default. KMS_ERR_INVALID_ARGUMENT
 * for any other format.
 */
int tk_seal_format(tk_client *client, uint8_t format, uint8_t *out, size_t out_cap, size_t *out_len,
                   const char *tenant_id, const tk_context *ctx, const uint8_t *pt, size_t pt_len);
int tk_stream_seal_new_format(tk_client *client, uint8_t format, tk_stream **out_st,
                              const char *tenant_id, const tk_context *ctx);

/*
 * tk_session_header_key fetches the session key named by a session
 * envelope's header (GetSessionKey, with the client's attributes) as a data
 * key. Errors as kmsd answered them.
 */
int tk_session_header_key(tk_client *client, tk_data_key **out_key,
                          const struct tk_env_header *h, const char *session_id);

/*
 * tk_session_seal_header builds the header of a session envelope for |s|
 * and |ctx| (the session_id entry added) and returns the session key as a
 * data key. KMS_ERR_FAILED_PRECONDITION unless |s| is open.
 */
int tk_session_seal_header(const tk_session *s, const tk_context *ctx, tk_data_key **out_key,
                           uint8_t *hdr, size_t *hdr_len);

/*
 * tk_audit_export_page asks kmsd for one page of an audit export
 * (libtenantkey/audit.c; docs/AUDIT.md). *out_resp as tk_client_call.
 */
int tk_audit_export_page(tk_client *client, Tkms__ExportAuditRequest *m, Tkms__Response **out_resp);

#endif
