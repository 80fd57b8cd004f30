/* The enforcement point: holds the policy in force and asks it about each request. */
#include "authz.h"

#include "kms_err.h"
#include "kms_wire.h"
#include "log.h"
#include "policy.h"

static policy *current; /* loop thread only (authz.h) */

int
authz_load(const char *path, char *err, size_t err_len)
{
  policy *p = NULL;
  int r = policy_load(&p, path, err, err_len);
  if (r != KMS_OK) {
    return r;
  }
  policy_free(current);
  current = p;
  log_msg(LOG_INFO, "event=policy_loaded path=%s files=%zu rules=%zu sha256=%s", path,
          policy_file_count(p), policy_rule_count(p), policy_digest(p));
  return KMS_OK;
}

int
authz_op_known(const char *operation)
{
  return policy_op_known(operation);
}

int
authz_check(const struct authz_request *req, const char **out_rule)
{
  struct policy_kv kv[AUTHZ_VIEW_MAX];
  struct policy_decision d;
  *out_rule = "-";
  /* kms_wire already capped context and attributes; more entries would be a bug: deny. */
  if (req->n_context > AUTHZ_VIEW_MAX) {
    return KMS_ERR_PERMISSION_DENIED;
  }
  for (size_t i = 0; i < req->n_context; i++) {
    kv[i].key = req->context[i]->key;
    kv[i].value = req->context[i]->value;
  }
  struct policy_request pr = {req->principal, req->operation, req->tenant, kv, req->n_context};
  policy_evaluate(current, &pr, &d);
  if (d.rule_id != NULL) {
    *out_rule = d.rule_id;
  }
  return d.allowed ? KMS_OK : KMS_ERR_PERMISSION_DENIED;
}

void
authz_shutdown(void)
{
  policy_free(current);
  current = NULL;
}
