/* tk: seal and open files and pipes as tenantkms envelopes, and the raw data-key operations. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "tenantkey.h"

/* Exit codes (documented in usage() and docs/CLIENT.md). */
enum {
  EXIT_OK = 0,
  EXIT_USAGE = 1,
  EXIT_CONFIG = 2,
  EXIT_UNAVAILABLE = 3, /* kmsd unreachable, timed out, or the TLS handshake failed */
  EXIT_DENIED = 4,      /* kmsd refused this principal */
  EXIT_AUTH = 5,        /* authentication failed: corrupt, truncated or foreign input */
  EXIT_IO = 6,          /* reading the input or writing the output failed */
  EXIT_OTHER = 7,       /* any other error from kmsd (unknown tenant, key disabled, ...) */
};

#define IO_CHUNK (64 * 1024)

static void
usage(FILE *f)
{
  fprintf(f,
          "usage: tk [--config FILE] COMMAND ...\n"
          "\n"
          "commands:\n"
          "  seal --tenant T [--context K=V]... [--attr K=V]... IN OUT\n"
          "        encrypt IN into the envelope OUT under a fresh data key of tenant T\n"
          "  seal --session S --tenant T [--context K=V]... [--purpose P] IN OUT\n"
          "        encrypt IN under the key of session S of tenant T: opens the session if\n"
          "        it is new, else fetches its key (for purpose P, default recording);\n"
          "        refused if the session is closed\n"
          "  open [--purpose P] [--attr K=V]... IN OUT\n"
          "        authenticate and decrypt the envelope IN into OUT (tenant, context or\n"
          "        session come from the envelope); P and K=V are access attributes for\n"
          "        kmsd's policy (purpose=P), not part of the envelope\n"
          "  rewrap [--to-version N] [--purpose P] [--attr K=V]... FILE...\n"
          "        move each envelope FILE to its tenant's newest KEK version (or check it\n"
          "        is N). Format 2 envelopes (what seal writes) are rewrapped IN PLACE: kmsd\n"
          "        re-wraps the header's data key (ReEncrypt: no plaintext key leaves it)\n"
          "        and the new header overwrites the old one; the body is not touched.\n"
          "        Crash-safe: the old and new headers go to FILE.tk-rewrap-journal first,\n"
          "        and a later run on FILE completes or undoes an interrupted rewrite.\n"
          "        Format 1 envelopes bind the body to the wrapped key, so they are\n"
          "        RE-ENCRYPTED into format 2 under a fresh data key (same tenant and\n"
          "        context) in a temporary file that replaces FILE when complete (fsync +\n"
          "        rename; mode kept, owner and hard links are not); that needs Decrypt,\n"
          "        GenerateDataKey and GenerateDataKeyWithoutPlaintext, in place only\n"
          "        ReEncrypt. Files already current and session envelopes (their keys are\n"
          "        re-wrapped inside kmsd) are skipped; a failed file is left unchanged.\n"
          "        Prints the counts; exit code that of the first failure, if any\n"
          "  session close --tenant T S\n"
          "        close session S: no new encryption under its key, opening still works\n"
          "  datakey generate --tenant T [--context K=V]... [--no-plaintext] [--base64]\n"
          "        print a new data key: kek_version, wrapped, and (unless --no-plaintext)\n"
          "        plaintext, in hex (or base64)\n"
          "  datakey decrypt --tenant T [--context K=V]... [--base64] WRAPPED\n"
          "        print the plaintext of a wrapped data key (WRAPPED in hex or base64,\n"
          "        or - to read it from stdin)\n"
          "\n"
          "IN and OUT may be - for stdin and stdout; both are streamed in constant memory.\n"
          "A file OUT is written to a temporary file in the same directory and renamed\n"
          "into place only on success, so a failed open leaves no partial plaintext.\n"
          "With OUT = -, open writes each 16 KiB chunk once it is authenticated; that\n"
          "the input was complete is known only at its end: a truncated envelope then\n"
          "fails with exit code 5 after part of the plaintext was written.\n"
          "WARNING: datakey prints key material; keep it out of logs and shells' history.\n"
          "\n"
          "FILE is a client configuration (endpoint, ca, cert, key, ...); default\n"
          "$TKMS_CONFIG.\n"
          "\n"
          "exit codes: 0 ok, 1 usage, 2 configuration, 3 kmsd unavailable (or TLS failure),\n"
          "  4 permission denied, 5 authentication failed or corrupt input, 6 I/O error,\n"
          "  7 other kmsd error (e.g. unknown tenant, key disabled, session closed,\n"
          "  session shredded or unknown)\n");
}

static int
exit_code(int r)
{
  switch (r) {
  case TK_OK:
    return EXIT_OK;
  case TK_ECONFIG:
    return EXIT_CONFIG;
  case TK_EUNAVAILABLE:
  case TK_ETIMEOUT:
  case TK_ETLS:
    return EXIT_UNAVAILABLE;
  case TK_EPERM:
  case TK_EUNAUTHENTICATED:
    return EXIT_DENIED;
  case TK_EDECRYPT:
  case TK_ETRUNCATED:
    return EXIT_AUTH;
  case TK_EIO:
    return EXIT_IO;
  default:
    return EXIT_OTHER;
  }
}

static int
fail(tk_client *c, const char *what, int r)
{
  char msg[256] = "";
  if (c != NULL && r != TK_EDECRYPT && r != TK_ETRUNCATED && r != TK_EIO) {
    tk_client_last_message(c, msg, sizeof(msg));
  }
  const char *hint = "";
  if (r == TK_EDECRYPT) {
    hint = " (the input is corrupt, was altered, or is not an envelope)";
  } else if (r == TK_ETRUNCATED) {
    hint = " (the input ended early)";
  }
  fprintf(stderr, "tk: %s: %s%s%s%s\n", what, tk_strerror(r), hint, msg[0] != '\0' ? ": " : "",
          msg);
  return exit_code(r);
}

static int
io_fail(const char *what, const char *path)
{
  fprintf(stderr, "tk: %s %s: %s\n", what, path, strerror(errno));
  return EXIT_IO;
}

/* ---- Output: atomic for files, streamed for stdout ----------------------------- */

struct output {
  int fd;
  const char *path; /* NULL: stdout */
  char tmp[4096];
};

static int
output_open(struct output *o, const char *path)
{
  memset(o, 0, sizeof(*o));
  o->fd = -1;
  if (strcmp(path, "-") == 0) {
    o->fd = STDOUT_FILENO;
    return EXIT_OK;
  }
  o->path = path;
  char copy[4096];
  if (strlen(path) >= sizeof(copy) - 32) {
    errno = ENAMETOOLONG;
    return io_fail("cannot create", path);
  }
  memcpy(copy, path, strlen(path) + 1);
  int n = snprintf(o->tmp, sizeof(o->tmp), "%s/.tk-XXXXXX", dirname(copy));
  if (n < 0 || (size_t)n >= sizeof(o->tmp)) {
    errno = ENAMETOOLONG;
    return io_fail("cannot create", path);
  }
  o->fd = mkostemp(o->tmp, O_CLOEXEC); /* mode 0600 */
  if (o->fd < 0) {
    return io_fail("cannot create a temporary file next to", path);
  }
  return EXIT_OK;
}

static int
output_write(struct output *o, const uint8_t *p, size_t n)
{
  while (n > 0) {
    ssize_t w = write(o->fd, p, n);
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      return io_fail("cannot write", o->path != NULL ? o->path : "stdout");
    }
    p += w;
    n -= (size_t)w;
  }
  return EXIT_OK;
}

/* Commits (rename into place) on success, else removes the temporary file. */
static int
output_close(struct output *o, int ok)
{
  if (o->path == NULL) {
    return EXIT_OK;
  }
  int rc = EXIT_OK;
  if (ok && fsync(o->fd) != 0) {
    rc = io_fail("cannot write", o->path);
    ok = 0;
  }
  if (close(o->fd) != 0 && ok) {
    rc = io_fail("cannot write", o->path);
    ok = 0;
  }
  o->fd = -1;
  if (ok && rename(o->tmp, o->path) != 0) {
    rc = io_fail("cannot rename into", o->path);
    ok = 0;
  }
  if (!ok) {
    unlink(o->tmp);
  }
  return rc;
}

static int
input_open(const char *path, int *out_fd)
{
  if (strcmp(path, "-") == 0) {
    *out_fd = STDIN_FILENO;
    return EXIT_OK;
  }
  *out_fd = open(path, O_RDONLY | O_CLOEXEC);
  if (*out_fd < 0) {
    return io_fail("cannot open", path);
  }
  return EXIT_OK;
}

/* Reads up to |cap| bytes (fewer only at end of input). */
static int
read_some(int fd, uint8_t *buf, size_t cap, size_t *out_n, const char *path)
{
  size_t got = 0;
  *out_n = 0;
  while (got < cap) {
    ssize_t n = read(fd, buf + got, cap - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return io_fail("cannot read", strcmp(path, "-") == 0 ? "stdin" : path);
    }
    if (n == 0) {
      break;
    }
    got += (size_t)n;
  }
  *out_n = got;
  return EXIT_OK;
}

/* ---- seal / open ------------------------------------------------------------------ */

static int
run_stream(tk_client *c, tk_stream *st, const char *what, const char *in_path,
           const char *out_path)
{
  int rc = EXIT_OK, r = TK_OK, in_fd = -1, opened = 0;
  struct output o;
  size_t out_cap = tk_stream_update_max(IO_CHUNK);
  if (out_cap < TK_STREAM_FINAL_MAX) {
    out_cap = TK_STREAM_FINAL_MAX;
  }
  uint8_t *in = malloc(IO_CHUNK), *out = malloc(out_cap);
  if (in == NULL || out == NULL) {
    fprintf(stderr, "tk: out of memory\n");
    rc = EXIT_OTHER;
    goto out;
  }
  rc = input_open(in_path, &in_fd);
  if (rc != EXIT_OK) {
    goto out;
  }
  rc = output_open(&o, out_path);
  if (rc != EXIT_OK) {
    goto out;
  }
  opened = 1;
  for (;;) {
    size_t n = 0, w = 0;
    rc = read_some(in_fd, in, IO_CHUNK, &n, in_path);
    if (rc != EXIT_OK) {
      goto out;
    }
    if (n == 0) {
      break;
    }
    r = tk_stream_update(st, out, out_cap, &w, in, n);
    if (r != TK_OK) {
      rc = fail(c, what, r);
      goto out;
    }
    rc = output_write(&o, out, w);
    if (rc != EXIT_OK) {
      goto out;
    }
  }
  size_t w = 0;
  r = tk_stream_final(st, out, out_cap, &w);
  if (r != TK_OK) {
    rc = fail(c, what, r);
    goto out;
  }
  rc = output_write(&o, out, w);
out:
  if (opened) {
    int crc = output_close(&o, rc == EXIT_OK);
    rc = rc != EXIT_OK ? rc : crc;
  }
  if (in_fd > STDIN_FILENO) {
    close(in_fd);
  }
  if (out != NULL) {
    OPENSSL_cleanse(out, out_cap);
  }
  if (in != NULL) {
    OPENSSL_cleanse(in, IO_CHUNK);
  }
  free(in);
  free(out);
  return rc;
}

/* Parses repeated --context K=V into |ctx|. */
static int
add_context(tk_context *ctx, const char *kv)
{
  const char *eq = strchr(kv, '=');
  if (eq == NULL || eq == kv || (size_t)(eq - kv) > 64) {
    fprintf(stderr, "tk: --context expects KEY=VALUE\n");
    return EXIT_USAGE;
  }
  char key[65];
  memcpy(key, kv, (size_t)(eq - kv));
  key[eq - kv] = '\0';
  if (tk_context_add(ctx, key, eq + 1) != TK_OK) {
    fprintf(stderr,
            "tk: --context %s: invalid (keys are 1-64 characters of [A-Za-z0-9._-], unique; "
            "values at most 256 bytes; at most 16 entries)\n",
            key);
    return EXIT_USAGE;
  }
  return EXIT_OK;
}

/* ---- sessions ---------------------------------------------------------------------- */

/*
 * seal_session: a new session is opened here (the recording service starts
 * it); an existing one is fetched with GetSessionKey, and the library refuses
 * to seal under it once closed.
 */
static int
seal_session(tk_client *c, const char *tenant, const char *session_id, const char *purpose,
             const tk_context *ctx, const char *in_path, const char *out_path)
{
  tk_session *s = NULL;
  tk_stream *st = NULL;
  int rc = EXIT_OK;
  int r = tk_session_open(c, &s, tenant, session_id, NULL);
  if (r == TK_EEXIST) {
    r = tk_session_get(c, &s, tenant, session_id, purpose != NULL ? purpose : "recording");
  }
  if (r != TK_OK) {
    rc = fail(c, "seal: session", r);
    goto out;
  }
  r = tk_stream_seal_session_new(&st, s, ctx);
  if (r == TK_EPRECONDITION) {
    fprintf(stderr, "tk: seal: session %s of tenant %s is closed: no new encryption under it\n",
            session_id, tenant);
    rc = exit_code(r);
    goto out;
  }
  if (r != TK_OK) {
    rc = fail(NULL, "seal", r);
    goto out;
  }
  rc = run_stream(c, st, "seal", in_path, out_path);
out:
  tk_stream_free(st);
  tk_session_free(s);
  return rc;
}

/* ---- datakey ----------------------------------------------------------------------- */

static void
print_bytes(const char *label, const uint8_t *p, size_t n, int b64)
{
  printf("%s: ", label);
  if (b64) {
    unsigned char enc[4 * 512 / 3 + 4];
    if (n <= 512) {
      EVP_EncodeBlock(enc, p, (int)n);
      printf("%s", enc);
      OPENSSL_cleanse(enc, sizeof(enc));
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      printf("%02x", p[i]);
    }
  }
  printf("\n");
}

/* Decodes hex or base64 |s| into |out| (capacity 512). */
static int
decode_bytes(uint8_t *out, size_t *out_len, const char *s, int b64)
{
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) {
    n--;
  }
  *out_len = 0;
  if (b64) {
    if (n == 0 || n % 4 != 0 || n > 684) {
      return -1;
    }
    int d = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (d < 0) {
      return -1;
    }
    size_t pad = (s[n - 1] == '=') + (s[n - 2] == '=');
    *out_len = (size_t)d - pad;
    return 0;
  }
  if (n == 0 || n % 2 != 0 || n / 2 > 512) {
    return -1;
  }
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", s[2 * i]) ||
        !strchr("0123456789abcdefABCDEF", s[2 * i + 1])) {
      return -1;
    }
    out[i] = (uint8_t)v;
  }
  *out_len = n / 2;
  return 0;
}

static int
datakey_generate(tk_client *c, const char *tenant, const tk_context *ctx, int with_pt, int b64)
{
  tk_data_key *k = NULL;
  int r = tk_data_key_generate(c, &k, tenant, ctx, with_pt);
  if (r != TK_OK) {
    return fail(c, "datakey generate", r);
  }
  size_t wl = 0, pl = 0;
  const uint8_t *w = tk_data_key_wrapped(k, &wl);
  printf("kek_version: %u\n", tk_data_key_kek_version(k));
  print_bytes("wrapped", w, wl, b64);
  const uint8_t *p = tk_data_key_plaintext(k, &pl);
  if (p != NULL) {
    print_bytes("plaintext", p, pl, b64);
  }
  tk_data_key_free(k);
  return fflush(stdout) == 0 ? EXIT_OK : EXIT_IO;
}

static int
datakey_decrypt(tk_client *c, const char *tenant, const tk_context *ctx, const char *arg,
                int b64)
{
  char line[1024];
  const char *text = arg;
  if (strcmp(arg, "-") == 0) {
    if (fgets(line, sizeof(line), stdin) == NULL) {
      fprintf(stderr, "tk: datakey decrypt: no wrapped key on stdin\n");
      return EXIT_USAGE;
    }
    text = line;
  }
  uint8_t wrapped[512];
  size_t wl = 0;
  if (decode_bytes(wrapped, &wl, text, b64) != 0) {
    fprintf(stderr, "tk: datakey decrypt: WRAPPED is not valid %s\n", b64 ? "base64" : "hex");
    return EXIT_USAGE;
  }
  tk_data_key *k = NULL;
  int r = tk_data_key_decrypt(c, &k, tenant, ctx, wrapped, wl);
  if (r != TK_OK) {
    return fail(c, "datakey decrypt", r);
  }
  size_t pl = 0;
  const uint8_t *p = tk_data_key_plaintext(k, &pl);
  printf("kek_version: %u\n", tk_data_key_kek_version(k));
  print_bytes("plaintext", p, pl, b64);
  tk_data_key_free(k);
  return fflush(stdout) == 0 ? EXIT_OK : EXIT_IO;
}

/* ---- rewrap ------------------------------------------------------------------------ */

/*
 * tk rewrap moves envelope files to their tenant's newest KEK version
 * (docs/CLIENT.md). Format 2 (docs/ENVELOPE.md) leaves the wrapped key and
 * KEK version out of the body's context, so its header is rewrapped IN PLACE:
 * ReEncrypt of the header's wrapped key (tk_envelope_rewrap_header; the
 * plaintext key never leaves kmsd), then the new header, same length,
 * overwrites the old one; the body is not touched. Crash safety: the old and
 * new headers are first written to FILE.tk-rewrap-journal and fsync'ed; a
 * later run finds the journal and restores consistency (journal_recover).
 * Format 1 binds the whole header into the body, so such a file (and a format
 * 2 file whose new header would change length) is RE-ENCRYPTED into format 2
 * instead: opened as a stream and sealed again under a fresh data key into a
 * temporary file that replaces it when complete.
 */
struct rewrap_stats {
  unsigned in_place, reencrypted, current, session, failed, recovered;
  int first_rc;
};

static void
rewrap_failed(struct rewrap_stats *stats, int rc)
{
  stats->failed++;
  if (stats->first_rc == EXIT_OK) {
    stats->first_rc = rc != EXIT_OK ? rc : EXIT_OTHER;
  }
}

/*
 * Test hook (tests/integration/test_library.c): TK_REWRAP_TEST_CRASH names a
 * point of the in-place write at which tk exits at once (status 99), as a
 * crash would stop it: "journal" (journal durable, file untouched), "torn"
 * (half of the new header written), "header" (new header durable, journal
 * not yet removed). TK_REWRAP_TEST_LENGTH_CHANGE=1 makes tk treat every new
 * header as having another length (the re-encryption fallback).
 */
static int
test_hook_is(const char *var, const char *value)
{
  const char *v = getenv(var);
  return v != NULL && strcmp(v, value) == 0;
}

static void
crash_point(const char *point)
{
  if (test_hook_is("TK_REWRAP_TEST_CRASH", point)) {
    _exit(99);
  }
}

/* Re-encrypts the open envelope |in_fd| into |o|. Returns an exit code. */
static int
reencrypt(tk_client *c, const char *what, int in_fd, const char *path, const char *tenant,
          const tk_context *ctx, struct output *o)
{
  int rc = EXIT_OK, r = TK_OK;
  tk_stream *dec = NULL, *enc = NULL;
  size_t pt_cap = tk_stream_update_max(IO_CHUNK);
  if (pt_cap < TK_STREAM_FINAL_MAX) {
    pt_cap = TK_STREAM_FINAL_MAX;
  }
  size_t out_cap = tk_stream_update_max(pt_cap);
  uint8_t *in = malloc(IO_CHUNK), *pt = malloc(pt_cap), *out = malloc(out_cap);
  if (in == NULL || pt == NULL || out == NULL) {
    fprintf(stderr, "tk: %s: out of memory\n", what);
    rc = EXIT_OTHER;
    goto out;
  }
  r = tk_stream_open_new(c, &dec);
  if (r == TK_OK) {
    r = tk_stream_seal_new(c, &enc, tenant, ctx);
  }
  if (r != TK_OK) {
    rc = fail(c, what, r);
    goto out;
  }
  for (int last = 0; !last;) {
    size_t n = 0, p = 0, w = 0;
    rc = read_some(in_fd, in, IO_CHUNK, &n, path);
    if (rc != EXIT_OK) {
      goto out;
    }
    if (n > 0) {
      r = tk_stream_update(dec, pt, pt_cap, &p, in, n);
    } else {
      last = 1;
      r = tk_stream_final(dec, pt, pt_cap, &p);
    }
    if (r == TK_OK && p > 0) {
      r = tk_stream_update(enc, out, out_cap, &w, pt, p);
    }
    if (r == TK_OK && last) {
      rc = output_write(o, out, w);
      if (rc != EXIT_OK) {
        goto out;
      }
      r = tk_stream_final(enc, out, out_cap, &w);
    }
    if (r != TK_OK) {
      rc = fail(c, what, r);
      goto out;
    }
    rc = output_write(o, out, w);
    if (rc != EXIT_OK) {
      goto out;
    }
  }
out:
  tk_stream_free(dec);
  tk_stream_free(enc);
  if (pt != NULL) {
    OPENSSL_cleanse(pt, pt_cap);
  }
  free(in);
  free(pt);
  free(out);
  return rc;
}

/* fsync the directory holding |path|, so that a rename or unlink survives a crash. */
static int
sync_dir_of(const char *path)
{
  char copy[4096];
  if (strlen(path) >= sizeof(copy)) {
    return -1;
  }
  memcpy(copy, path, strlen(path) + 1);
  int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    return -1;
  }
  int r = fsync(dfd);
  close(dfd);
  return r;
}

/*
 * Re-encrypts the envelope file |path| (open as |in_fd|, described by |meta|,
 * stat |sb|) into format 2 under the tenant's newest KEK version: temporary
 * file, fsync, rename, fsync of the directory. |target| is the version the
 * new envelope must have at least (exactly, if |exact|). Returns an exit code.
 */
static int
rewrap_reencrypt(tk_client *c, const char *what, const char *path, int in_fd, const struct stat *sb,
                 tk_envelope_meta *meta, const tk_context *ctx, uint32_t target, int exact)
{
  int rc = EXIT_OK;
  struct output o;
  uint8_t *hdr = malloc(TK_ENVELOPE_HEADER_MAX);
  if (hdr == NULL) {
    fprintf(stderr, "tk: %s: out of memory\n", what);
    return EXIT_OTHER;
  }
  if (lseek(in_fd, 0, SEEK_SET) != 0) {
    free(hdr);
    return io_fail("rewrap: cannot read", path);
  }
  char tenant[sizeof(meta->tenant)];
  memcpy(tenant, meta->tenant, sizeof(tenant));
  rc = output_open(&o, path);
  if (rc != EXIT_OK) {
    free(hdr);
    return rc;
  }
  if (fchmod(o.fd, sb->st_mode & 07777) != 0) {
    rc = io_fail("rewrap: cannot set the mode of the temporary file for", path);
    goto out;
  }
  rc = reencrypt(c, what, in_fd, path, tenant, ctx, &o);
  if (rc != EXIT_OK) {
    goto out;
  }
  /* A rotation meanwhile gives a newer version: fine unless --to-version. */
  ssize_t got = pread(o.fd, hdr, TK_ENVELOPE_HEADER_MAX, 0);
  if (got < 0 || tk_envelope_info(meta, hdr, (size_t)got) != TK_OK ||
      (exact && meta->kek_version != target) || meta->kek_version < target) {
    fprintf(stderr, "tk: %s: the new envelope is not under KEK version %u (rotated meanwhile?)\n",
            what, target);
    rc = EXIT_OTHER;
    goto out;
  }
out:
  if (rc != EXIT_OK) {
    (void)output_close(&o, 0); /* removes the temporary file */
  } else {
    rc = output_close(&o, 1);
  }
  if (rc == EXIT_OK && sync_dir_of(path) != 0) {
    rc = io_fail("rewrap: cannot sync the directory of", path);
  }
  free(hdr);
  return rc;
}

/* ---- rewrap in place: the journal ----------------------------------------------------- */

/*
 * FILE.tk-rewrap-journal, written before a header is overwritten in place:
 *
 *   "TKRWJ01\n" | u16 L | old header (L bytes) | new header (L bytes)
 *   | SHA-256 of everything before it (32 bytes)
 *
 * Both headers are format 2 with the same body context, so either one opens
 * the body; the hash tells a complete journal from one torn by a crash.
 */
#define JOURNAL_SUFFIX ".tk-rewrap-journal"
#define JOURNAL_MAGIC "TKRWJ01\n"
#define JOURNAL_MAGIC_LEN 8
#define JOURNAL_MAX (JOURNAL_MAGIC_LEN + 2 + 2 * TK_ENVELOPE_HEADER_MAX + 32)

static int
journal_path(char *out, size_t cap, const char *path)
{
  int n = snprintf(out, cap, "%s%s", path, JOURNAL_SUFFIX);
  return n >= 0 && (size_t)n < cap ? 0 : -1;
}

static int
write_all_at(int fd, const uint8_t *p, size_t n, off_t off)
{
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, off);
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      return -1;
    }
    p += w;
    n -= (size_t)w;
    off += w;
  }
  return 0;
}

/* Reads up to |cap| bytes from offset |off| (fewer only at end of file). */
static int
read_all_at(int fd, uint8_t *p, size_t cap, off_t off, size_t *out_n)
{
  size_t got = 0;
  *out_n = 0;
  while (got < cap) {
    ssize_t n = pread(fd, p + got, cap - got, off + (off_t)got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return -1;
    }
    if (n == 0) {
      break;
    }
    got += (size_t)n;
  }
  *out_n = got;
  return 0;
}

static int
sha256(uint8_t out[32], const uint8_t *p, size_t n)
{
  unsigned int len = 0;
  return EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == 32 ? 0 : -1;
}

/* Writes the journal for |path| and makes it durable. Returns an exit code. */
static int
journal_write(const char *jpath, const char *path, const uint8_t *old_hdr, const uint8_t *new_hdr,
              size_t len)
{
  static uint8_t j[JOURNAL_MAX];
  size_t n = 0;
  memcpy(j, JOURNAL_MAGIC, JOURNAL_MAGIC_LEN);
  n = JOURNAL_MAGIC_LEN;
  j[n++] = (uint8_t)(len >> 8);
  j[n++] = (uint8_t)len;
  memcpy(j + n, old_hdr, len);
  n += len;
  memcpy(j + n, new_hdr, len);
  n += len;
  if (sha256(j + n, j, n) != 0) {
    fprintf(stderr, "tk: rewrap %s: SHA-256 failed\n", path);
    return EXIT_OTHER;
  }
  n += 32;
  int fd = open(jpath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    return io_fail("rewrap: cannot create the journal", jpath);
  }
  int ok = write_all_at(fd, j, n, 0) == 0 && fsync(fd) == 0;
  ok = close(fd) == 0 && ok;
  if (!ok || sync_dir_of(jpath) != 0) {
    int rc = io_fail("rewrap: cannot write the journal", jpath);
    unlink(jpath);
    return rc;
  }
  return EXIT_OK;
}

/* Parses a journal; returns 1 and the headers if it is complete and consistent, else 0. */
static int
journal_parse(const uint8_t *j, size_t n, const uint8_t **out_old, const uint8_t **out_new,
              size_t *out_len)
{
  uint8_t digest[32];
  if (n < JOURNAL_MAGIC_LEN + 2 + 32 || memcmp(j, JOURNAL_MAGIC, JOURNAL_MAGIC_LEN) != 0) {
    return 0;
  }
  size_t len = ((size_t)j[JOURNAL_MAGIC_LEN] << 8) | j[JOURNAL_MAGIC_LEN + 1];
  if (len == 0 || len > TK_ENVELOPE_HEADER_MAX || n != JOURNAL_MAGIC_LEN + 2 + 2 * len + 32 ||
      sha256(digest, j, n - 32) != 0 || CRYPTO_memcmp(digest, j + n - 32, 32) != 0) {
    return 0;
  }
  const uint8_t *old_hdr = j + JOURNAL_MAGIC_LEN + 2, *new_hdr = old_hdr + len;
  /* Both must be complete format 2 headers of one tenant and context (the same body). */
  static tk_envelope_meta a, b;
  if (tk_envelope_info(&a, old_hdr, len) != TK_OK || tk_envelope_info(&b, new_hdr, len) != TK_OK ||
      a.header_len != len || b.header_len != len || a.format != 2 || b.format != 2 ||
      a.is_session || b.is_session || strcmp(a.tenant, b.tenant) != 0 ||
      a.n_context != b.n_context) {
    return 0;
  }
  for (size_t i = 0; i < a.n_context; i++) {
    if (strcmp(a.context_keys[i], b.context_keys[i]) != 0 ||
        strcmp(a.context_values[i], b.context_values[i]) != 0) {
      return 0;
    }
  }
  *out_old = old_hdr;
  *out_new = new_hdr;
  *out_len = len;
  return 1;
}

/*
 * journal_recover: FILE.tk-rewrap-journal exists, so a run stopped during an
 * in-place rewrap of |path| (open read-write as |fd|, locked). The file is
 * made consistent and the journal removed:
 *
 * - the journal is incomplete (torn while being written, so before the file
 *   was touched) and the file's header parses: the journal is dropped;
 * - the file starts with the new header: the rewrap completed, drop it;
 * - the file starts with the old header: it never started, drop it;
 * - every header byte is the old or the new one (a torn header write): the
 *   new header is written again (either opens the body) and synced;
 * - anything else (the file changed meanwhile): fail, leave both alone.
 *
 * Sets |*out_recovered| to 1 if the file was written or a completed rewrap
 * confirmed. Returns an exit code.
 */
static int
journal_recover(const char *what, const char *path, const char *jpath, int fd, int *out_recovered)
{
  static uint8_t j[JOURNAL_MAX + 1], cur[TK_ENVELOPE_HEADER_MAX];
  static tk_envelope_meta m;
  const uint8_t *old_hdr = NULL, *new_hdr = NULL;
  size_t jn = 0, len = 0, got = 0;
  int rc = EXIT_OK;
  *out_recovered = 0;

  int jfd = open(jpath, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (jfd < 0) {
    return io_fail("rewrap: cannot open the journal", jpath);
  }
  int rr = read_all_at(jfd, j, sizeof(j), 0, &jn);
  close(jfd);
  if (rr != 0) {
    return io_fail("rewrap: cannot read the journal", jpath);
  }
  if (read_all_at(fd, cur, sizeof(cur), 0, &got) != 0) {
    return io_fail("rewrap: cannot read", path);
  }
  if (!journal_parse(j, jn, &old_hdr, &new_hdr, &len)) {
    if (tk_envelope_info(&m, cur, got) != TK_OK) {
      fprintf(stderr,
              "tk: %s: an incomplete journal %s and no valid header: both left for "
              "inspection\n",
              what, jpath);
      return EXIT_AUTH;
    }
    /* Torn while being written: the file was never touched. */
  } else if (got >= len && memcmp(cur, new_hdr, len) == 0) {
    if (fsync(fd) != 0) {
      return io_fail("rewrap: cannot sync", path);
    }
    *out_recovered = 1;
  } else if (got >= len && memcmp(cur, old_hdr, len) == 0) {
    /* Stopped before the header was written: nothing to repair. */
  } else {
    int torn = got >= len;
    for (size_t i = 0; torn && i < len; i++) {
      torn = cur[i] == old_hdr[i] || cur[i] == new_hdr[i];
    }
    if (!torn) {
      fprintf(stderr,
              "tk: %s: the journal %s does not match the file (changed since?): both left for "
              "inspection\n",
              what, jpath);
      return EXIT_AUTH;
    }
    if (write_all_at(fd, new_hdr, len, 0) != 0 || fsync(fd) != 0) {
      return io_fail("rewrap: cannot write", path);
    }
    *out_recovered = 1;
  }
  if (unlink(jpath) != 0 || sync_dir_of(jpath) != 0) {
    rc = io_fail("rewrap: cannot remove the journal", jpath);
  }
  if (rc == EXIT_OK && *out_recovered) {
    fprintf(stderr, "tk: %s: completed an interrupted in-place rewrap (journal %s)\n", what, jpath);
  }
  return rc;
}

/*
 * Overwrites the first |len| bytes of |path| (open read-write as |fd|) with
 * |new_hdr|, journaled: journal durable, header written and synced, journal
 * removed and the removal synced. Returns an exit code.
 */
static int
rewrite_header(const char *path, const char *jpath, int fd, const uint8_t *old_hdr,
               const uint8_t *new_hdr, size_t len)
{
  int rc = journal_write(jpath, path, old_hdr, new_hdr, len);
  if (rc != EXIT_OK) {
    return rc;
  }
  crash_point("journal");
  if (test_hook_is("TK_REWRAP_TEST_CRASH", "torn")) {
    (void)write_all_at(fd, new_hdr, len / 2, 0);
    (void)fsync(fd);
    crash_point("torn");
  }
  if (write_all_at(fd, new_hdr, len, 0) != 0 || fsync(fd) != 0) {
    /* The journal stays: the next run repairs whatever reached the disk. */
    return io_fail("rewrap: cannot write the new header of", path);
  }
  crash_point("header");
  if (unlink(jpath) != 0 || sync_dir_of(jpath) != 0) {
    return io_fail("rewrap: cannot remove the journal", jpath);
  }
  return EXIT_OK;
}

/* ---- rewrap: one file ------------------------------------------------------------------ */

/* The newest KEK version of |meta|'s tenant: the one a new data key gets (no plaintext). */
static int
newest_version(tk_client *c, const char *what, const tk_envelope_meta *meta, const tk_context *ctx,
               uint32_t *out_version)
{
  tk_data_key *probe = NULL;
  *out_version = 0;
  int r = tk_data_key_generate(c, &probe, meta->tenant, ctx, 0);
  if (r != TK_OK) {
    return fail(c, what, r);
  }
  *out_version = tk_data_key_kek_version(probe);
  tk_data_key_free(probe);
  return EXIT_OK;
}

static void
rewrap_file(tk_client *c, const char *path, uint32_t to_version, struct rewrap_stats *stats)
{
  char what[4200], jpath[4200];
  int rc = EXIT_OK, fd = -1, r;
  tk_context *ctx = NULL;
  struct stat sb;
  enum { NONE, IN_PLACE, REENCRYPTED, CURRENT, SESSION } outcome = NONE;
  uint8_t *hdr = malloc(TK_ENVELOPE_HEADER_MAX), *nhdr = malloc(TK_ENVELOPE_HEADER_MAX);
  tk_envelope_meta *meta = malloc(sizeof(*meta));
  snprintf(what, sizeof(what), "rewrap %s", path);
  if (hdr == NULL || nhdr == NULL || meta == NULL) {
    fprintf(stderr, "tk: %s: out of memory\n", what);
    rc = EXIT_OTHER;
    goto out;
  }
  if (journal_path(jpath, sizeof(jpath), path) != 0) {
    errno = ENAMETOOLONG;
    rc = io_fail("rewrap: cannot open", path);
    goto out;
  }
  if (lstat(path, &sb) != 0) {
    rc = io_fail("rewrap: cannot open", path);
    goto out;
  }
  if (!S_ISREG(sb.st_mode)) {
    fprintf(stderr, "tk: %s: not a regular file\n", what);
    rc = EXIT_IO;
    goto out;
  }
  /*
   * Read-write for an in-place rewrap (read-only suffices to re-encrypt, which
   * replaces the file); a lock keeps two tk rewrap runs off one file.
   */
  int writable = 1;
  fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && (errno == EACCES || errno == EROFS)) {
    writable = 0;
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  }
  if (fd < 0) {
    rc = io_fail("rewrap: cannot open", path);
    goto out;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    rc = io_fail("rewrap: cannot lock (another tk rewrap on it?)", path);
    goto out;
  }
  struct stat jsb;
  if (lstat(jpath, &jsb) == 0) {
    int recovered = 0;
    if (!writable) {
      errno = EACCES;
      rc = io_fail("rewrap: an interrupted rewrap left a journal, but cannot write", path);
      goto out;
    }
    rc = journal_recover(what, path, jpath, fd, &recovered);
    if (rc != EXIT_OK) {
      goto out;
    }
    stats->recovered += (unsigned)recovered;
  } else if (errno != ENOENT) {
    rc = io_fail("rewrap: cannot look for the journal", jpath);
    goto out;
  }
  size_t n = 0;
  rc = read_some(fd, hdr, TK_ENVELOPE_HEADER_MAX, &n, path);
  if (rc != EXIT_OK) {
    goto out;
  }
  r = tk_envelope_info(meta, hdr, n);
  if (r != TK_OK) {
    rc = fail(NULL, what, r == TK_ETRUNCATED ? TK_EDECRYPT : r);
    goto out;
  }
  if (meta->is_session) {
    outcome = SESSION;
    goto out;
  }
  if (to_version != 0 && meta->kek_version == to_version) {
    outcome = CURRENT;
    goto out;
  }
  ctx = tk_context_new();
  if (ctx == NULL) {
    fprintf(stderr, "tk: %s: out of memory\n", what);
    rc = EXIT_OTHER;
    goto out;
  }
  for (size_t i = 0; i < meta->n_context; i++) {
    if (tk_context_add(ctx, meta->context_keys[i], meta->context_values[i]) != TK_OK) {
      rc = fail(NULL, what, TK_EDECRYPT);
      goto out;
    }
  }
  uint32_t target = to_version;
  if (meta->format == 2) {
    /* ReEncrypt the header's wrapped key: no plaintext, no Decrypt grant needed. */
    size_t nl = 0;
    uint32_t nv = 0;
    r = tk_envelope_rewrap_header(c, nhdr, TK_ENVELOPE_HEADER_MAX, &nl, &nv, hdr, n, to_version);
    if (r != TK_OK) {
      rc = fail(c, what, r);
      goto out;
    }
    if (nv == meta->kek_version) {
      outcome = CURRENT; /* kmsd gave the key back unchanged */
      goto out;
    }
    if (nl == meta->header_len && !test_hook_is("TK_REWRAP_TEST_LENGTH_CHANGE", "1")) {
      if (!writable) {
        errno = EACCES;
        rc = io_fail("rewrap: cannot rewrite the header in place of", path);
        goto out;
      }
      rc = rewrite_header(path, jpath, fd, hdr, nhdr, nl);
      outcome = rc == EXIT_OK ? IN_PLACE : NONE;
      goto out;
    }
    target = nv; /* another length: the body must be written anew */
  } else {
    uint32_t newest = 0;
    rc = newest_version(c, what, meta, ctx, &newest);
    if (rc != EXIT_OK) {
      goto out;
    }
    if (to_version != 0 && to_version != newest) {
      fprintf(stderr,
              "tk: %s: KEK version %u of tenant %s is not its newest version (%u): only the "
              "newest version wraps new data keys\n",
              what, to_version, meta->tenant, newest);
      rc = EXIT_OTHER;
      goto out;
    }
    if (meta->kek_version == newest) {
      outcome = CURRENT;
      goto out;
    }
    target = newest;
  }
  rc = rewrap_reencrypt(c, what, path, fd, &sb, meta, ctx, target, to_version != 0);
  outcome = rc == EXIT_OK ? REENCRYPTED : NONE;
out:
  switch (outcome) {
  case IN_PLACE:
    stats->in_place++;
    break;
  case REENCRYPTED:
    stats->reencrypted++;
    break;
  case CURRENT:
    stats->current++;
    break;
  case SESSION:
    stats->session++;
    break;
  case NONE:
    break;
  }
  if (rc != EXIT_OK) {
    rewrap_failed(stats, rc);
  }
  if (fd >= 0) {
    close(fd); /* releases the lock */
  }
  tk_context_free(ctx);
  free(hdr);
  free(nhdr);
  free(meta);
}

static int
rewrap_files(tk_client *c, char **files, int n, uint32_t to_version)
{
  struct rewrap_stats stats;
  memset(&stats, 0, sizeof(stats));
  for (int i = 0; i < n; i++) {
    rewrap_file(c, files[i], to_version, &stats);
  }
  printf("rewrap: %u done (%u in place, %u re-encrypted), %u skipped (%u already current, "
         "%u session envelopes), %u failed, %u interrupted rewraps completed\n",
         stats.in_place + stats.reencrypted, stats.in_place, stats.reencrypted,
         stats.current + stats.session, stats.current, stats.session, stats.failed,
         stats.recovered);
  if (fflush(stdout) != 0 && stats.first_rc == EXIT_OK) {
    return EXIT_IO;
  }
  return stats.first_rc;
}

/* ---- main -------------------------------------------------------------------------- */

int
main(int argc, char **argv)
{
  static const struct option global_opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  static const struct option cmd_opts[] = {
      {"tenant", required_argument, NULL, 't'},
      {"context", required_argument, NULL, 'x'},
      {"no-plaintext", no_argument, NULL, 'n'},
      {"base64", no_argument, NULL, 'b'},
      {"session", required_argument, NULL, 's'},
      {"purpose", required_argument, NULL, 'p'},
      {"attr", required_argument, NULL, 'a'},
      {"to-version", required_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *config = getenv("TKMS_CONFIG");
  int opt, rc = EXIT_OK;
  tk_context *ctx = NULL, *attrs = NULL;
  tk_client *c = NULL;
  tk_stream *st = NULL;

  while ((opt = getopt_long(argc, argv, "+c:h", global_opts, NULL)) != -1) {
    switch (opt) {
    case 'c':
      config = optarg;
      break;
    case 'h':
      usage(stdout);
      return EXIT_OK;
    default:
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *cmd = argv[optind];
  const char *sub = NULL;
  int is_datakey = strcmp(cmd, "datakey") == 0 || strcmp(cmd, "session") == 0;
  if (is_datakey) {
    if (optind + 1 >= argc) {
      usage(stderr);
      return EXIT_USAGE;
    }
    sub = argv[optind + 1];
  }
  /* Parse the command's own options. */
  int first = optind + (is_datakey ? 2 : 1);
  int cargc = argc - first + 1;
  char **cargv = argv + first - 1;
  const char *tenant = NULL, *session = NULL, *purpose = NULL;
  int no_pt = 0, b64 = 0, n_ctx = 0;
  uint32_t to_version = 0;
  ctx = tk_context_new();
  attrs = tk_context_new();
  if (ctx == NULL || attrs == NULL) {
    fprintf(stderr, "tk: out of memory\n");
    return EXIT_OTHER;
  }
  optind = 0; /* glibc: 0 re-initialises getopt for the new argument vector */
  while ((opt = getopt_long(cargc, cargv, "t:x:nbs:p:a:h", cmd_opts, NULL)) != -1) {
    switch (opt) {
    case 't':
      tenant = optarg;
      break;
    case 'x':
      rc = add_context(ctx, optarg);
      if (rc != EXIT_OK) {
        goto out;
      }
      n_ctx++;
      break;
    case 'V': {
      char *end = NULL;
      errno = 0;
      unsigned long long v = strtoull(optarg, &end, 10);
      if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-' || v == 0 ||
          v > UINT32_MAX) {
        fprintf(stderr, "tk: --to-version expects a KEK version (1-4294967295)\n");
        rc = EXIT_USAGE;
        goto out;
      }
      to_version = (uint32_t)v;
      break;
    }
    case 'n':
      no_pt = 1;
      break;
    case 's':
      session = optarg;
      break;
    case 'p':
      purpose = optarg;
      break;
    case 'a':
      rc = add_context(attrs, optarg);
      if (rc != EXIT_OK) {
        goto out;
      }
      break;
    case 'b':
      b64 = 1;
      break;
    case 'h':
      usage(stdout);
      goto out;
    default:
      usage(stderr);
      rc = EXIT_USAGE;
      goto out;
    }
  }
  int nargs = cargc - optind;
  char **args = cargv + optind;
  int is_seal = strcmp(cmd, "seal") == 0, is_open = strcmp(cmd, "open") == 0;
  int is_session = strcmp(cmd, "session") == 0, is_rewrap = strcmp(cmd, "rewrap") == 0;
  int is_gen = !is_session && is_datakey && strcmp(sub, "generate") == 0;
  int is_dec = !is_session && is_datakey && strcmp(sub, "decrypt") == 0;
  int is_close = is_session && strcmp(sub, "close") == 0;
  /* --purpose names why a session key (or a data key) is fetched: seal --session and open. */
  int ok = (to_version == 0 || is_rewrap) &&
           ((is_rewrap && nargs >= 1 && tenant == NULL && session == NULL && n_ctx == 0 &&
             !no_pt && !b64) ||
            (is_seal && nargs == 2 && tenant != NULL && (session != NULL || purpose == NULL)) ||
           (is_open && nargs == 2 && tenant == NULL && session == NULL) ||
           (is_gen && nargs == 0 && tenant != NULL && session == NULL && purpose == NULL) ||
           (is_dec && nargs == 1 && tenant != NULL && !no_pt && session == NULL &&
            purpose == NULL) ||
            (is_close && nargs == 1 && tenant != NULL && session == NULL && purpose == NULL));
  if (ok && is_rewrap) {
    for (int i = 0; i < nargs; i++) {
      if (strcmp(args[i], "-") == 0) {
        ok = 0; /* rewrap rewrites files in place: no pipes */
      }
    }
  }
  if (ok && (is_open || is_rewrap) && purpose != NULL && tk_context_add(attrs, "purpose", purpose) != TK_OK) {
    fprintf(stderr, "tk: --purpose: invalid, or given with --attr purpose=...\n");
    rc = EXIT_USAGE;
    goto out;
  }
  if (!ok) {
    usage(stderr);
    rc = EXIT_USAGE;
    goto out;
  }
  if (config == NULL) {
    fprintf(stderr, "tk: no configuration: use --config FILE or set TKMS_CONFIG\n");
    rc = EXIT_CONFIG;
    goto out;
  }
  char err[512];
  int r = tk_client_new_from_file(&c, config, err, sizeof(err));
  if (r != TK_OK) {
    fprintf(stderr, "tk: %s\n", err[0] != '\0' ? err : tk_strerror(r));
    rc = r == TK_ENOMEM ? EXIT_OTHER : EXIT_CONFIG;
    goto out;
  }
  r = tk_client_set_attributes(c, attrs);
  if (r != TK_OK) {
    rc = fail(c, "attributes", r);
    goto out;
  }
  if (is_seal && session != NULL) {
    rc = seal_session(c, tenant, session, purpose, ctx, args[0], args[1]);
  } else if (is_rewrap) {
    rc = rewrap_files(c, args, nargs, to_version);
  } else if (is_close) {
    r = tk_session_close(c, tenant, args[0]);
    rc = r == TK_OK ? EXIT_OK : fail(c, "session close", r);
  } else if (is_seal) {
    r = tk_stream_seal_new(c, &st, tenant, ctx);
    if (r != TK_OK) {
      rc = fail(c, "seal", r);
      goto out;
    }
    rc = run_stream(c, st, "seal", args[0], args[1]);
  } else if (is_open) {
    r = tk_stream_open_new(c, &st);
    if (r != TK_OK) {
      rc = fail(c, "open", r);
      goto out;
    }
    rc = run_stream(c, st, "open", args[0], args[1]);
  } else if (is_gen) {
    rc = datakey_generate(c, tenant, ctx, !no_pt, b64);
  } else {
    rc = datakey_decrypt(c, tenant, ctx, args[0], b64);
  }
out:
  tk_stream_free(st);
  tk_client_free(c);
  tk_context_free(ctx);
  tk_context_free(attrs);
  return rc;
}
