/* tk_strerror, and the check that the public codes equal the internal ones. */
#include "kms_err.h"
#include "tenantkey.h"

_Static_assert(TK_OK == KMS_OK && TK_EINTERNAL == KMS_ERR_INTERNAL &&
                   TK_ENOMEM == KMS_ERR_ALLOC && TK_EINVAL == KMS_ERR_INVALID_ARGUMENT &&
                   TK_ENOTFOUND == KMS_ERR_NOT_FOUND && TK_EEXIST == KMS_ERR_ALREADY_EXISTS &&
                   TK_EPERM == KMS_ERR_PERMISSION_DENIED &&
                   TK_EUNAUTHENTICATED == KMS_ERR_UNAUTHENTICATED &&
                   TK_EPRECONDITION == KMS_ERR_FAILED_PRECONDITION &&
                   TK_EEXHAUSTED == KMS_ERR_RESOURCE_EXHAUSTED &&
                   TK_EUNAVAILABLE == KMS_ERR_UNAVAILABLE && TK_EDECRYPT == KMS_ERR_DECRYPT &&
                   TK_EUNIMPLEMENTED == KMS_ERR_UNIMPLEMENTED &&
                   TK_ETOOLARGE == KMS_ERR_FRAME_TOO_LARGE && TK_ETRUNCATED == KMS_ERR_TRUNCATED &&
                   TK_EPROTOCOL == KMS_ERR_PROTOCOL && TK_EIO == KMS_ERR_IO &&
                   TK_ETIMEOUT == KMS_ERR_TIMEOUT && TK_EHSM == KMS_ERR_HSM &&
                   TK_ECONFIG == KMS_ERR_CONFIG && TK_EKEYLIMIT == KMS_ERR_KEY_LIMIT &&
                   TK_ETLS == KMS_ERR_TLS,
               "tenantkey.h error codes must equal common/kms_err.h");

TK_EXPORT const char *
tk_strerror(int err)
{
  return kms_strerror(err);
}
