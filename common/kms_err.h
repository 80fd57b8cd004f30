/* The one error space of tenantkms: 0 is success, failures are negative codes. */
#ifndef KMS_ERR_H
#define KMS_ERR_H

#include <stddef.h>

/*
 * Every function that can fail returns int: KMS_OK or one of the codes below.
 * The public library re-exports the same values as TK_E* (tenantkey.h); a
 * static assertion in libtenantkey keeps the two in step.
 */
#define KMS_OK 0
#define KMS_ERR_INTERNAL -1            /* a bug or an unexpected library failure */
#define KMS_ERR_ALLOC -2               /* out of memory */
#define KMS_ERR_INVALID_ARGUMENT -3    /* malformed or out-of-range input */
#define KMS_ERR_NOT_FOUND -4
#define KMS_ERR_ALREADY_EXISTS -5
#define KMS_ERR_PERMISSION_DENIED -6
#define KMS_ERR_UNAUTHENTICATED -7
#define KMS_ERR_FAILED_PRECONDITION -8 /* object in the wrong state */
#define KMS_ERR_RESOURCE_EXHAUSTED -9
#define KMS_ERR_UNAVAILABLE -10        /* try again later (HSM, keystore, peer) */
#define KMS_ERR_DECRYPT -11            /* authentication failed; no reason given */
#define KMS_ERR_UNIMPLEMENTED -12      /* unknown method */
#define KMS_ERR_FRAME_TOO_LARGE -13
#define KMS_ERR_TRUNCATED -14          /* more bytes needed / input cut short */
#define KMS_ERR_PROTOCOL -15           /* peer broke the wire protocol */
#define KMS_ERR_IO -16                 /* system call or file failure */
#define KMS_ERR_TIMEOUT -17
#define KMS_ERR_HSM -18                /* PKCS#11 module failed */
#define KMS_ERR_CONFIG -19             /* configuration file rejected */
#define KMS_ERR_KEY_LIMIT -20          /* a key reached its usage limit */
#define KMS_ERR_TLS -21                /* TLS handshake or certificate failure */
#define KMS_ERR_MIN_ -21

/* kms_strerror returns a static, human-readable description of |err|. */
const char *kms_strerror(int err);

/* kms_err_to_status maps an error code to the wire status (tkms.StatusCode number). */
int kms_err_to_status(int err);

/* kms_status_to_err maps a wire status number back to an error code. */
int kms_status_to_err(int status);

/*
 * kms_status_name returns the name of a wire status ("OK", "NOT_FOUND", ...)
 * or NULL for a number tkms.StatusCode does not define.
 */
const char *kms_status_name(int status);

/*
 * kms_set_err formats a human-readable reason into the caller's buffer |err|
 * (|err_len| bytes, always terminated, truncated if longer). A NULL |err| or
 * a zero |err_len| means the caller does not want one: nothing is written.
 */
void kms_set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
