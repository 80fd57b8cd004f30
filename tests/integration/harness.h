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

/* harness_kmsd_pid returns the running kmsd's process id, or -1 (for kill -9, prlimit). */
int harness_kmsd_pid(void);

/*
 * harness_client_conf writes a client configuration for the current port
 * using DIR/pki/<certdir>/<name>.{crt,key} and returns its path (static).
 */
const char *harness_client_conf(const char *certdir, const char *name);

/* harness_client returns a new client for principal |name| (certdir "clients"). */
tk_client *harness_client(const char *name);

/*
 * harness_client_no_retry is harness_client with `retries = 0`: each call
 * shows what kmsd answered, without the library's retries. NULL on failure.
 */
tk_client *harness_client_no_retry(const char *name);

/* harness_pause_ms sleeps |ms| milliseconds (bounded liveness waits, never timed asserts). */
void harness_pause_ms(long ms);

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

/* harness_append_conf appends |line| to DIR/kmsd.conf (a later key overrides an earlier one). */
void harness_append_conf(const char *line);

/*
 * harness_write_file replaces DIR/|rel| with |content| (mode 0644) by rename,
 * so kmsd never reads half a file; creates the parent directory if needed.
 */
void harness_write_file(const char *rel, const char *content);

/* harness_copy_file replaces DIR/|to_rel| with a copy of DIR/|from_rel|, by rename. */
void harness_copy_file(const char *from_rel, const char *to_rel);

/*
 * harness_sighup sends SIGHUP to kmsd and waits until it has logged the end
 * of the reload (event=tls_reloaded or tls_reload_failed). Returns what kmsd
 * logged meanwhile (malloc'd, the caller frees it).
 */
char *harness_sighup(void);

/*
 * harness_run_kmsd_once runs kmsd with DIR/|conf_rel| expecting it to exit
 * (a start-up failure), puts its stderr in |out| and returns its exit status,
 * or -1 if it was still running after 30 s (then it is killed).
 */
int harness_run_kmsd_once(const char *conf_rel, char *out, size_t out_len);

/*
 * harness_finish ends a test program: stops kmsd (a nonzero exit status counts
 * as one more failure, with the log's path on stderr), removes the directory
 * if nothing failed and TKMS_KEEP_DIR is unset, and returns the program's exit
 * status for |failed| failed tests.
 */
int harness_finish(int failed);

/*
 * harness_cleanup removes the test directory if nothing failed (unless
 * TKMS_KEEP_DIR is set) and returns the program's exit code (0 or 1).
 */
int harness_cleanup(int failed);

#endif
