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

#endif
