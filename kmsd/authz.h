/* Authorisation: the one place that decides whether a principal may call an operation. */
#ifndef KMSD_AUTHZ_H
#define KMSD_AUTHZ_H

#include "config.h"
#include "kms.pb-c.h"

/*
 * Interim rules until the policy engine (issue 4) replaces this module:
 * Health is open to every authenticated principal; CreateTenant to the
 * configured officers; GenerateDataKey and Decrypt to the configured services.
 * Everything else is denied (default deny).
 */

/*
 * authz_check returns KMS_OK or KMS_ERR_PERMISSION_DENIED. It runs before any
 * keystore or HSM work and its answer does not depend on whether the tenant
 * exists (no oracle).
 */
int authz_check(const struct kmsd_config *cfg, const char *principal,
                const Tkms__Request *req);

#endif
