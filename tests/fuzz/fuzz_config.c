/* libFuzzer target: the key = value parser (common/kms_conf.c) and kmsd's config on top of it (kmsd/config.c). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "kms_err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * An operator's file, maybe a careless one: it loads or is refused with a
 * message that names the file, and a loaded config is within its ranges.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static struct kmsd_config c;
  char err[512];

  err[0] = '\0';
  int r = config_load_buf(&c, "fuzz.conf", (const char *)data, size, err, sizeof(err));
  if (r != KMS_OK) {
    if (r != KMS_ERR_CONFIG || strncmp(err, "fuzz.conf", 9) != 0 ||
        memchr(err, '\0', sizeof(err)) == NULL) {
      __builtin_trap();
    }
    return 0;
  }
  if (c.workers < 1 || c.workers > 64 || c.max_inflight < 1 || c.max_connections < 1 ||
      c.max_conns_per_peer > c.max_connections || c.max_handshakes > c.max_connections ||
      c.kek_max_uses > CONFIG_KEK_MAX_USES_CEILING || c.tls_cert[0] == '\0' ||
      c.pin_file[0] == '\0' || (c.rate_limit > 0 && c.rate_burst == 0)) {
    __builtin_trap();
  }
  return 0;
}
