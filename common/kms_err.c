/* Descriptions of the error codes and their mapping to wire status codes. */
#include "kms_err.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Wire status numbers; the same as tkms.StatusCode in proto/kms.proto. */
enum {
  ST_OK = 0,
  ST_INVALID_ARGUMENT = 3,
  ST_NOT_FOUND = 5,
  ST_ALREADY_EXISTS = 6,
  ST_PERMISSION_DENIED = 7,
  ST_RESOURCE_EXHAUSTED = 8,
  ST_FAILED_PRECONDITION = 9,
  ST_UNIMPLEMENTED = 12,
  ST_INTERNAL = 13,
  ST_UNAVAILABLE = 14,
  ST_UNAUTHENTICATED = 16,
};

static const struct {
  int err;
  int status;
  const char *text;
} errs[] = {
  {KMS_OK, ST_OK, "success"},
  {KMS_ERR_INTERNAL, ST_INTERNAL, "internal error"},
  {KMS_ERR_ALLOC, ST_RESOURCE_EXHAUSTED, "out of memory"},
  {KMS_ERR_INVALID_ARGUMENT, ST_INVALID_ARGUMENT, "invalid argument"},
  {KMS_ERR_NOT_FOUND, ST_NOT_FOUND, "not found"},
  {KMS_ERR_ALREADY_EXISTS, ST_ALREADY_EXISTS, "already exists"},
  {KMS_ERR_PERMISSION_DENIED, ST_PERMISSION_DENIED, "permission denied"},
  {KMS_ERR_UNAUTHENTICATED, ST_UNAUTHENTICATED, "unauthenticated"},
  {KMS_ERR_FAILED_PRECONDITION, ST_FAILED_PRECONDITION, "failed precondition"},
  {KMS_ERR_RESOURCE_EXHAUSTED, ST_RESOURCE_EXHAUSTED, "resource exhausted"},
  {KMS_ERR_UNAVAILABLE, ST_UNAVAILABLE, "service unavailable"},
  {KMS_ERR_DECRYPT, ST_INVALID_ARGUMENT, "decryption failed"},
  {KMS_ERR_UNIMPLEMENTED, ST_UNIMPLEMENTED, "unknown method"},
  {KMS_ERR_FRAME_TOO_LARGE, ST_RESOURCE_EXHAUSTED, "frame exceeds size limit"},
  {KMS_ERR_TRUNCATED, ST_INVALID_ARGUMENT, "truncated input"},
  {KMS_ERR_PROTOCOL, ST_INVALID_ARGUMENT, "protocol violation"},
  {KMS_ERR_IO, ST_UNAVAILABLE, "I/O error"},
  {KMS_ERR_TIMEOUT, ST_UNAVAILABLE, "timed out"},
  {KMS_ERR_HSM, ST_UNAVAILABLE, "HSM unavailable"},
  {KMS_ERR_CONFIG, ST_INVALID_ARGUMENT, "invalid configuration"},
  {KMS_ERR_KEY_LIMIT, ST_FAILED_PRECONDITION, "key usage limit reached"},
  {KMS_ERR_TLS, ST_UNAUTHENTICATED, "TLS failure"},
};

const char *
kms_strerror(int err)
{
  for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
    if (errs[i].err == err) {
      return errs[i].text;
    }
  }
  return "unknown error";
}

int
kms_err_to_status(int err)
{
  for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
    if (errs[i].err == err) {
      return errs[i].status;
    }
  }
  return ST_INTERNAL;
}

int
kms_status_to_err(int status)
{
  switch (status) {
  case ST_OK:
    return KMS_OK;
  case ST_INVALID_ARGUMENT:
    return KMS_ERR_INVALID_ARGUMENT;
  case ST_NOT_FOUND:
    return KMS_ERR_NOT_FOUND;
  case ST_ALREADY_EXISTS:
    return KMS_ERR_ALREADY_EXISTS;
  case ST_PERMISSION_DENIED:
    return KMS_ERR_PERMISSION_DENIED;
  case ST_RESOURCE_EXHAUSTED:
    return KMS_ERR_RESOURCE_EXHAUSTED;
  case ST_FAILED_PRECONDITION:
    return KMS_ERR_FAILED_PRECONDITION;
  case ST_UNIMPLEMENTED:
    return KMS_ERR_UNIMPLEMENTED;
  case ST_UNAVAILABLE:
    return KMS_ERR_UNAVAILABLE;
  case ST_UNAUTHENTICATED:
    return KMS_ERR_UNAUTHENTICATED;
  default:
    return KMS_ERR_INTERNAL;
  }
}

const char *
kms_status_name(int status)
{
  switch (status) {
  case ST_OK:
    return "OK";
  case ST_INVALID_ARGUMENT:
    return "INVALID_ARGUMENT";
  case ST_NOT_FOUND:
    return "NOT_FOUND";
  case ST_ALREADY_EXISTS:
    return "ALREADY_EXISTS";
  case ST_PERMISSION_DENIED:
    return "PERMISSION_DENIED";
  case ST_RESOURCE_EXHAUSTED:
    return "RESOURCE_EXHAUSTED";
  case ST_FAILED_PRECONDITION:
    return "FAILED_PRECONDITION";
  case ST_UNIMPLEMENTED:
    return "UNIMPLEMENTED";
  case ST_INTERNAL:
    return "INTERNAL";
  case ST_UNAVAILABLE:
    return "UNAVAILABLE";
  case ST_UNAUTHENTICATED:
    return "UNAUTHENTICATED";
  default:
    return NULL;
  }
}

void
kms_set_err(char *err, size_t err_len, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL || err_len == 0) {
    return;
  }
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}
