/* kmsd's configuration file: what it holds and how it is checked. */
#ifndef KMSD_CONFIG_H
#define KMSD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_PATH_MAX 512

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
  int log_format; /* enum log_format: text (default) or json lines */
  /* Audit log (docs/AUDIT.md): directory (required), this node's name (the log's origin). */
  char audit_dir[CONFIG_PATH_MAX];
  char node_name[64];
  uint64_t audit_rotate_bytes;  /* next log file past this size */
  unsigned audit_checkpoint_s;  /* signed checkpoint at least this often while records arrive */
  /* Benchmarking only: sleep this long before every HSM call a worker makes, to
   * emulate a network HSM (docs/PERFORMANCE.md). 0 in production. */
  unsigned hsm_latency_us;
  /* How long cached KEK state (current version, key state) may be used before
   * the keystore is read again; changes made by this process apply at once. */
  unsigned kek_state_ttl_ms;
  /* Access policy: a JSON file or a directory of them (docs/POLICY.md); required. */
  char policy[CONFIG_PATH_MAX];
  /* CRL(s) of the client CA, PEM; empty: no revocation check. Reloaded on SIGHUP. */
  char tls_crl[CONFIG_PATH_MAX];
  /* Key lifecycle (docs/LIFECYCLE.md). */
  unsigned approvals_required;      /* distinct officers for dual control, requester included */
  unsigned approval_window_s;       /* a request not approved within this expires */
  unsigned destruction_wait_days;   /* default waiting period before crypto-shredding */
  int allow_short_waiting_periods;  /* TEST KNOB: waiting periods below 7 days, down to 0 */
  unsigned rotation_period_days;    /* default automatic rotation period; 0: off */
  unsigned lifecycle_interval_s;    /* timer: expiries, due destructions, rotations */
  /* Root key rotation (docs/LIFECYCLE.md). */
  unsigned root_rewrap_per_second;  /* key tokens re-wrapped a second; 0: no limit */
  unsigned root_retain_days;        /* keep an unreferenced old root this long; 0: destroy */
  /* Running it like a trusted service (docs/HARDENING.md, docs/OPERATIONS.md). */
  unsigned hsm_timeout_ms;          /* an HSM call slower than this marks the HSM down */
  unsigned max_conns_per_peer;      /* open connections from one IP address */
  unsigned max_handshakes;          /* connections still in the TLS handshake, all peers */
  unsigned frame_timeout_ms;        /* a frame once begun must arrive whole within this */
  unsigned rate_limit;              /* requests per second per principal; 0: no limit */
  unsigned rate_burst;              /* token bucket size; 0: 2 * rate_limit */
  char user[64];                    /* started as root: drop to this user; empty: stay */
  /* Metrics and health over HTTP (kmsd/metrics.h): loopback only; port 0 picks one. */
  int metrics_enabled;              /* metrics_listen was set */
  char metrics_host[64];            /* 127.0.0.1, ::1 or localhost */
  uint16_t metrics_port;
  /* Keystore snapshots (Backup, docs/RUNBOOK.md); empty: Backup is refused. */
  char backup_dir[CONFIG_PATH_MAX];
};

/* Defaults and limits, documented in docs/CONFIG.md. */
#define CONFIG_DESTRUCTION_WAIT_MIN_DAYS 7 /* NIST-style waiting period, unless the test knob */
#define CONFIG_DESTRUCTION_WAIT_MAX_DAYS 30
#define CONFIG_KEK_MAX_USES_DEFAULT (1ULL << 30)
#define CONFIG_KEK_MAX_USES_CEILING (1ULL << 31) /* NIST SP 800-38D: < 2^32 random IVs */

/*
 * config_load reads |path| into |out| (defaults first, then the file), and
 * checks that required keys are present and values in range. On failure
 * returns KMS_ERR_CONFIG or KMS_ERR_IO with "FILE:LINE: key: reason" in |err|.
 */
int config_load(struct kmsd_config *out, const char *path, char *err, size_t err_len);

/* config_load_buf is config_load on |len| bytes at |buf| (|name| in messages; fuzzing). */
int config_load_buf(struct kmsd_config *out, const char *name, const char *buf, size_t len,
                    char *err, size_t err_len);

#endif
