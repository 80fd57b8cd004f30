/* Parser for the "key = value" files that configure kmsd and its clients. */
#ifndef KMS_CONF_H
#define KMS_CONF_H

#include <stddef.h>

/*
 * Format: one "key = value" per line; blank lines and lines starting with '#'
 * are ignored; keys are [a-z0-9_]+; values run to the end of the line with
 * surrounding blanks removed; a key may repeat (the handler decides whether
 * that is allowed). Lines are at most KMS_CONF_LINE_MAX bytes; NUL bytes and
 * control characters other than tab are refused.
 */
#define KMS_CONF_LINE_MAX 1024

/*
 * A handler is called once per entry. It returns KMS_OK, or an error code and
 * may write a reason (without the value, which could be secret) into |why|.
 */
typedef int (*kms_conf_handler)(void *arg, const char *key, const char *value,
                                char *why, size_t why_len);

/*
 * kms_conf_parse reads |path| and calls |handler| for each entry. On failure it
 * returns KMS_ERR_CONFIG (or KMS_ERR_IO if the file can't be read) and writes
 * "FILE:LINE: reason" into |err| (|err_len| bytes, always NUL-terminated).
 */
int kms_conf_parse(const char *path, kms_conf_handler handler, void *arg,
                   char *err, size_t err_len);

/* kms_conf_parse_buf is kms_conf_parse on a buffer; |name| is used in messages. */
int kms_conf_parse_buf(const char *name, const char *buf, size_t len,
                       kms_conf_handler handler, void *arg, char *err,
                       size_t err_len);

/* kms_conf_uint parses a decimal in [min, max]; returns KMS_OK or KMS_ERR_CONFIG. */
int kms_conf_uint(const char *value, unsigned long long min,
                  unsigned long long max, unsigned long long *out);

#endif
