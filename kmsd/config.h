/* kmsd's configuration file: what it holds and how it is checked. */
#ifndef KMSD_CONFIG_H
#define KMSD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_PATH_MAX 512
#define CONFIG_PRINCIPALS_MAX 32
#define CONFIG_PRINCIPAL_LEN 256

struct kmsd_config {
  char listen_host[64];
  uint16_t listen_port; /* 0: let the kernel pick; the ready line says which */
  char tls_cert[CONFIG_PATH_MAX];
  char tls_key[CONFIG_PATH_MAX];
  char tls_ca[CONFIG_PATH_MAX];
  char pkcs11_module[CONFIG_PATH_MAX];
  char token_label[33];
  char pin_file[CONFIG_PATH_MAX];
  char keystore[CONFIG_PATH_MAX + 16];
  unsigned workers;             /* HSM worker threads, each with its own session */
  size_t kek_cache_size;        /* loaded KEKs kept in the HSM */
  uint64_t kek_max_uses;        /* GCM encryptions per KEK version before rotation */
  size_t max_frame;             /* bytes of one frame's payload */
  unsigned max_connections;
  unsigned max_inflight;        /* requests in flight per connection */
  unsigned handshake_timeout_ms;
  unsigned idle_timeout_ms;
  int log_level;
  /* Interim authorisation (until the policy engine): who may do what. */
  char officers[CONFIG_PRINCIPALS_MAX][CONFIG_PRINCIPAL_LEN];
  size_t n_officers;
  char services[CONFIG_PRINCIPALS_MAX][CONFIG_PRINCIPAL_LEN];
  size_t n_services;
};

/* Defaults and limits, documented in docs/OPERATIONS.md. */
#define CONFIG_KEK_MAX_USES_DEFAULT (1ULL << 30)
#define CONFIG_KEK_MAX_USES_CEILING (1ULL << 31) /* NIST SP 800-38D: < 2^32 random IVs */

/*
 * config_load reads |path| into |out| (defaults first, then the file), and
 * checks that required keys are present and values in range. On failure
 * returns KMS_ERR_CONFIG or KMS_ERR_IO with "FILE:LINE: key: reason" in |err|.
 */
int config_load(struct kmsd_config *out, const char *path, char *err, size_t err_len);

#endif
