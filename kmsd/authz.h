/* Authorisation: the one place that decides whether a principal may call an operation. */
#ifndef KMSD_AUTHZ_H
#define KMSD_AUTHZ_H

#include <stddef.h>

#include "kms.pb-c.h"
#include "kms_wire.h"

/*
 * authz holds the policy in force (kmsd/policy.h, docs/POLICY.md). Only the
 * event-loop thread calls these functions: requests are authorised on the
 * loop before they become jobs, and SIGHUP arrives there as a libevent signal
 * event. So swapping the policy needs no lock and no reference count; a
 * worker that wanted a decision would need one.
 */

/*
 * The most entries the policy sees of one request: its encryption context and
 * its access attributes (16 each), plus what a session request names itself
 * (session_id, and GetSessionKey's purpose). kms_wire has checked that no key
 * appears twice among them (docs/POLICY.md).
 */
#define AUTHZ_VIEW_MAX (2 * KMS_CONTEXT_MAX_ENTRIES + 2)

/* What rpc.c extracts from a request through its method table. */
struct authz_request {
  const char *principal; /* the connection's certificate identity */
  const char *operation; /* the method's policy operation name */
  const char *tenant;    /* NULL if the operation names no tenant */
  Tkms__ContextEntry *const *context; /* the union above: context, session, attributes */
  size_t n_context;
};

/*
 * authz_load loads the policy at |path| (file or directory) and, only if all
 * of it is valid, makes it the policy in force and logs event=policy_loaded
 * with its file and rule counts and digest. On failure the policy in force
 * (if any) stays, and |err| names the file, position and reason.
 */
int authz_load(const char *path, char *err, size_t err_len);

/* authz_op_known returns 1 if |operation| is in the policy vocabulary. */
int authz_op_known(const char *operation);

/*
 * authz_check returns KMS_OK or KMS_ERR_PERMISSION_DENIED, and the id of the
 * deciding rule in |*out_rule| ("-" for the default deny). It runs before any
 * keystore or HSM work and decides from the request alone, never from whether
 * a tenant, key or session exists (no oracle). No policy loaded: deny.
 */
int authz_check(const struct authz_request *req, const char **out_rule);

/* authz_shutdown frees the policy in force. */
void authz_shutdown(void);

#endif
