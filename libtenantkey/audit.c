/* Audit export through kmsd (ExportAudit): one page per call, for kmsctl's auditor commands. */
#include <stddef.h>

#include "kms_err.h"
#include "tk_internal.h"

int
tk_audit_export_page(tk_client *client, Tkms__ExportAuditRequest *m, Tkms__Response **out_resp)
{
  Tkms__Request req;

  *out_resp = NULL;
  if (client == NULL || m == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tkms__request__init(&req);
  req.op_case = TKMS__REQUEST__OP_EXPORT_AUDIT;
  req.export_audit = m;
  return tk_client_call(client, &req, out_resp);
}
