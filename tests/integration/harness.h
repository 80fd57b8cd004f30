/* Test harness: a throwaway dev environment and a real kmsd process. */
#ifndef TKMS_HARNESS_H
#define TKMS_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "tenantkey.h"

/* harness_setup builds DIR (PKI, token, configs, bad-certificate fixtures). */
void harness_setup(const char *extra_conf);

/* harness_dir returns the environment's directory. */
const char *harness_dir(void);

/* harness_start_kmsd starts kmsd and waits for its ready line; returns the port. */
int harness_start_kmsd(void);

/* harness_stop_kmsd sends SIGTERM and returns kmsd's exit status (-1 if it had to be killed). */
int harness_stop_kmsd(void);

/* harness_kmsd_alive: 1 if the kmsd process still runs. */
int harness_kmsd_alive(void);

/*
 * harness_client_conf writes a client configuration for the current port
 * using DIR/pki/<certdir>/<name>.{crt,key} and returns its path (static).
 */
const char *harness_client_conf(const char *certdir, const char *name);

/* harness_client returns a new client for principal |name| (certdir "clients"). */
tk_client *harness_client(const char *name);

/*
 * harness_raw_connect opens a TLS connection as |name| (NULL: no client
 * certificate) without the library, for hostile-input tests. NULL on failure.
 */
SSL *harness_raw_connect(const char *certdir, const char *name);
void harness_raw_close(SSL *ssl);

/* harness_raw_read_frame reads one frame's payload (malloc) or returns NULL at EOF/error. */
uint8_t *harness_raw_read_frame(SSL *ssl, size_t *out_len);

/* harness_file_contains: 1 if |needle| occurs in file |path|. */
int harness_file_contains(const char *path, const uint8_t *needle, size_t needle_len);

#endif
