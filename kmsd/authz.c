/* Interim role check: officers create tenants, services use data keys, default deny. */
#include "authz.h"

#include <string.h>

#include "kms_err.h"

static int
listed(const char list[][CONFIG_PRINCIPAL_LEN], size_t n, const char *principal)
{
  for (size_t i = 0; i < n; i++) {
    if (strcmp(list[i], principal) == 0) {
      return 1;
    }
  }
  return 0;
}

int
authz_check(const struct kmsd_config *cfg, const char *principal,
            const Tkms__Request *req)
{
  if (principal == NULL || principal[0] == '\0') {
    return KMS_ERR_PERMISSION_DENIED;
  }
  switch (req->op_case) {
  case TKMS__REQUEST__OP_HEALTH:
    return KMS_OK;
  case TKMS__REQUEST__OP_CREATE_TENANT:
    return listed(cfg->officers, cfg->n_officers, principal) ? KMS_OK
                                                            : KMS_ERR_PERMISSION_DENIED;
  case TKMS__REQUEST__OP_GENERATE_DATA_KEY:
  case TKMS__REQUEST__OP_DECRYPT:
    return listed(cfg->services, cfg->n_services, principal) ? KMS_OK
                                                            : KMS_ERR_PERMISSION_DENIED;
  default:
    return KMS_ERR_PERMISSION_DENIED;
  }
}
