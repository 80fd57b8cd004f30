/* Validation of decoded RPC messages: one place, used by kmsd and the client. */
#ifndef KMS_WIRE_H
#define KMS_WIRE_H

#include <stddef.h>

#include "kms.pb-c.h"

/* Limits on what a request may carry (docs/PROTOCOL.md). */
#define KMS_TENANT_ID_MAX 64
#define KMS_CONTEXT_MAX_ENTRIES 16
#define KMS_CONTEXT_KEY_MAX 64
#define KMS_CONTEXT_VALUE_MAX 256
#define KMS_WRAPPED_KEY_MAX 256
#define KMS_DATA_KEY_LEN 32
/* Key lifecycle (docs/LIFECYCLE.md). */
#define KMS_REENCRYPT_BATCH_MAX 1024 /* items in one ReEncryptBatch */
#define KMS_LIFECYCLE_DAYS_MAX 3650  /* waiting and rotation periods, in days */
#define KMS_LIST_TENANTS_MAX 1000    /* tenants in one ListTenants page */
/* Session keys (docs/SESSIONS.md). */
#define KMS_SESSION_ID_MAX 128       /* bytes of a session id */
#define KMS_LIST_SESSIONS_MAX 1000   /* sessions in one ListSessions page */
#define KMS_PAGE_TOKEN_MAX 192       /* bytes of a ListSessions page token */
/* Context keys a session request names itself (the policy's view, docs/POLICY.md). */
#define KMS_SESSION_KEY "session_id"
#define KMS_PURPOSE_KEY "purpose"

/*
 * kms_wire_tenant_id_ok: 1 if |s| is a valid tenant id: 1-64 bytes of
 * [A-Za-z0-9._-], starting with a letter or digit. 0 otherwise.
 */
int kms_wire_tenant_id_ok(const char *s);

/*
 * kms_wire_context_ok: 1 if the entries form a valid encryption context (keys
 * 1-64 bytes of [A-Za-z0-9._-], unique; values at most 256 bytes without
 * control characters; at most 16 entries). 0 otherwise; |*why| says which rule.
 */
int kms_wire_context_ok(size_t n, Tkms__ContextEntry *const *entries, const char **why);

/*
 * kms_wire_session_id_ok: 1 if |s| is a valid session id: 1-128 bytes of
 * [A-Za-z0-9._-], starting with a letter or digit. 0 otherwise.
 */
int kms_wire_session_id_ok(const char *s);

/*
 * kms_wire_attributes_ok: 1 if the access attributes follow the context rules
 * (kms_wire_context_ok, with "attributes:" in |*why|) and share no key with
 * the |n_ctx| context entries or with the keys named in |reserved| (a
 * NULL-terminated list, may be NULL): the policy sees their union, so a key in
 * two places could smuggle a condition (docs/POLICY.md). 0 otherwise.
 */
int kms_wire_attributes_ok(size_t n, Tkms__ContextEntry *const *attrs, size_t n_ctx,
                           Tkms__ContextEntry *const *ctx, const char *const *reserved,
                           const char **why);

/*
 * kms_wire_request_check validates every field of a decoded request. Returns
 * KMS_OK, KMS_ERR_UNIMPLEMENTED (no known operation set) or
 * KMS_ERR_INVALID_ARGUMENT with |*why| naming the field (never its value).
 */
int kms_wire_request_check(const Tkms__Request *req, const char **why);

/*
 * kms_wire_response_check validates a decoded response against the operation
 * that was asked (|op| is the request's op_case). Returns KMS_OK or
 * KMS_ERR_PROTOCOL.
 */
int kms_wire_response_check(const Tkms__Response *resp, Tkms__Request__OpCase op);

#endif
