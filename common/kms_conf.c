/* Line-oriented configuration parser with file:line error messages. */
#include "kms_conf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_err.h"

#define CONF_FILE_MAX (1024 * 1024)

static int
is_blank(char c)
{
  return c == ' ' || c == '\t';
}

static int
parse_line(char *line, size_t len, const char **out_key, const char **out_value,
           const char **why)
{
  *out_key = NULL;
  *out_value = NULL;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)line[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      *why = "control character in line";
      return KMS_ERR_CONFIG;
    }
  }
  size_t i = 0;
  while (i < len && is_blank(line[i])) {
    i++;
  }
  if (i == len || line[i] == '#') {
    return KMS_OK; /* blank or comment */
  }
  size_t key_start = i;
  while (i < len && ((line[i] >= 'a' && line[i] <= 'z') ||
                     (line[i] >= '0' && line[i] <= '9') || line[i] == '_')) {
    i++;
  }
  size_t key_end = i;
  if (key_end == key_start) {
    *why = "expected a key ([a-z0-9_]+)";
    return KMS_ERR_CONFIG;
  }
  while (i < len && is_blank(line[i])) {
    i++;
  }
  if (i == len || line[i] != '=') {
    *why = "expected '=' after the key";
    return KMS_ERR_CONFIG;
  }
  i++;
  while (i < len && is_blank(line[i])) {
    i++;
  }
  size_t val_end = len;
  while (val_end > i && is_blank(line[val_end - 1])) {
    val_end--;
  }
  line[key_end] = '\0';
  line[val_end] = '\0';
  *out_key = line + key_start;
  *out_value = line + i;
  return KMS_OK;
}

int
kms_conf_parse_buf(const char *name, const char *buf, size_t len,
                   kms_conf_handler handler, void *arg, char *err,
                   size_t err_len)
{
  char line[KMS_CONF_LINE_MAX + 1];
  size_t pos = 0;
  unsigned lineno = 0;
  if (err_len > 0) {
    err[0] = '\0';
  }
  while (pos < len) {
    lineno++;
    const char *nl = memchr(buf + pos, '\n', len - pos);
    size_t l = nl != NULL ? (size_t)(nl - (buf + pos)) : len - pos;
    size_t next = pos + l + (nl != NULL ? 1 : 0);
    if (l > 0 && buf[pos + l - 1] == '\r') {
      l--;
    }
    if (l > KMS_CONF_LINE_MAX) {
      snprintf(err, err_len, "%s:%u: line longer than %d bytes", name, lineno,
               KMS_CONF_LINE_MAX);
      return KMS_ERR_CONFIG;
    }
    memcpy(line, buf + pos, l);
    line[l] = '\0';
    pos = next;
    const char *key, *value, *why = NULL;
    if (parse_line(line, l, &key, &value, &why) != KMS_OK) {
      snprintf(err, err_len, "%s:%u: %s", name, lineno, why);
      return KMS_ERR_CONFIG;
    }
    if (key == NULL) {
      continue;
    }
    char reason[256] = "";
    int r = handler(arg, key, value, reason, sizeof(reason));
    if (r != KMS_OK) {
      snprintf(err, err_len, "%s:%u: %s: %s", name, lineno, key,
               reason[0] != '\0' ? reason : kms_strerror(r));
      return KMS_ERR_CONFIG;
    }
  }
  return KMS_OK;
}

int
kms_conf_parse(const char *path, kms_conf_handler handler, void *arg, char *err,
               size_t err_len)
{
  int r = KMS_ERR_IO;
  char *buf = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, err_len, "%s: %s", path, strerror(errno));
    return KMS_ERR_IO;
  }
  buf = malloc(CONF_FILE_MAX + 1);
  if (buf == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  size_t n = fread(buf, 1, CONF_FILE_MAX + 1, f);
  if (ferror(f)) {
    snprintf(err, err_len, "%s: read error", path);
    goto out;
  }
  if (n > CONF_FILE_MAX) {
    snprintf(err, err_len, "%s: file larger than %d bytes", path, CONF_FILE_MAX);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  if (memchr(buf, '\0', n) != NULL) {
    snprintf(err, err_len, "%s: NUL byte in file", path);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  r = kms_conf_parse_buf(path, buf, n, handler, arg, err, err_len);
out:
  free(buf);
  fclose(f);
  return r;
}

int
kms_conf_uint(const char *value, unsigned long long min, unsigned long long max,
              unsigned long long *out)
{
  if (value[0] < '0' || value[0] > '9') {
    return KMS_ERR_CONFIG;
  }
  errno = 0;
  char *end = NULL;
  unsigned long long v = strtoull(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0' || v < min || v > max) {
    return KMS_ERR_CONFIG;
  }
  *out = v;
  return KMS_OK;
}
