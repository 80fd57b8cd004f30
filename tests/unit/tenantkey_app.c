/* A tiny service built against the installed libtenantkey by check_install.sh: it must compile with only tenantkey.h and link through pkg-config. */
#include <stdio.h>
#include <string.h>

#include <tenantkey.h>

int
main(int argc, char **argv)
{
  /* Pure functions, the context type, and client set-up (which reaches into OpenSSL). */
  if (strcmp(tk_strerror(TK_EDECRYPT), tk_strerror(TK_OK)) == 0 || tk_seal_max_len(0) == 0 ||
      tk_stream_update_max(16384) < 16400) {
    return 1;
  }
  tk_context *ctx = tk_context_new();
  if (ctx == NULL || tk_context_add(ctx, "purpose", "report") != TK_OK ||
      tk_context_add(ctx, "purpose", "again") != TK_EINVAL) {
    return 2;
  }
  tk_context_free(ctx);
  tk_client *c = NULL;
  char err[256];
  int r = tk_client_new_from_file(&c, argc > 1 ? argv[1] : "/nonexistent/tk.conf", err,
                                  sizeof(err));
  if (r == TK_OK || c != NULL || err[0] == '\0') {
    return 3;
  }
  uint8_t junk[100] = {0};
  uint64_t len = 1;
  if (tk_envelope_plaintext_len(&len, junk, sizeof(junk)) != TK_EDECRYPT || len != 0) {
    return 4;
  }
  printf("tenantkey app ok: %s\n", err);
  return 0;
}
