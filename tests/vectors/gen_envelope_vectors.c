/* Generates tests/vectors/envelope_v1.json and envelope_v2.json: envelope formats 1 and 2 with fixed data keys and salts (run by scripts/gen-envelope-vectors). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cobblestone.h"
#include "envelope.h"
#include "kms_err.h"

static void
hex(const uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    printf("%02x", p[i]);
  }
}

static void
json_str(const char *s)
{
  putchar('"');
  for (; *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      printf("\\%c", ch);
    } else if (ch < 0x20 || ch >= 0x7f) {
      printf("\\u%04x", ch);
    } else {
      putchar(ch);
    }
  }
  putchar('"');
}

struct vec {
  const char *name;
  const char *tenant;
  uint32_t kek_version;
  uint8_t wrapped[KMS_WRAPPED_KEY_MAX];
  size_t wrapped_len;
  size_t n;
  char keys[KMS_CONTEXT_MAX_ENTRIES][KMS_CONTEXT_KEY_MAX + 1];
  char values[KMS_CONTEXT_MAX_ENTRIES][KMS_CONTEXT_VALUE_MAX + 1];
  uint8_t data_key[32];
  uint8_t salt[TK_COB_SALT_LEN];
  uint8_t *pt;
  size_t pt_len;
};

static int first_vector = 1;
static uint8_t format = TK_ENV_FORMAT_1; /* argv[1] */

/* Encodes and prints one valid vector; returns the header in |hdr| for the invalid cases. */
static void
emit(const struct vec *v, uint8_t *hdr, size_t *hdr_len)
{
  struct tk_env_header h;
  Tkms__ContextEntry e[KMS_CONTEXT_MAX_ENTRIES], *ep[KMS_CONTEXT_MAX_ENTRIES];
  for (size_t i = 0; i < v->n; i++) {
    tkms__context_entry__init(&e[i]);
    e[i].key = (char *)v->keys[i];
    e[i].value = (char *)v->values[i];
    ep[i] = &e[i];
  }
  static uint8_t body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t body_ctx_len = 0;
  if (tk_env_header_set(&h, format, v->tenant, v->kek_version, v->wrapped, v->wrapped_len, ep,
                        v->n) != KMS_OK ||
      tk_env_header_encode(hdr, TK_ENV_HEADER_MAX, hdr_len, &h) != KMS_OK ||
      tk_env_body_context(body_ctx, sizeof(body_ctx), &body_ctx_len, &h) != KMS_OK) {
    fprintf(stderr, "gen: %s: header refused\n", v->name);
    exit(1);
  }
  size_t ct_cap = (size_t)tk_cob_ciphertext_len(v->pt_len), ct_len = 0;
  uint8_t *ct = malloc(ct_cap);
  if (ct == NULL || tk_cob_encrypt_with_salt(ct, ct_cap, &ct_len, v->data_key, 32, v->salt,
                                             body_ctx, body_ctx_len, v->pt, v->pt_len) != KMS_OK) {
    fprintf(stderr, "gen: %s: encryption failed\n", v->name);
    exit(1);
  }
  printf("%s    {\n      \"name\": ", first_vector ? "" : ",\n");
  first_vector = 0;
  json_str(v->name);
  printf(",\n      \"tenant\": ");
  json_str(v->tenant);
  printf(",\n      \"kek_version\": %u,\n      \"wrapped_key\": \"", v->kek_version);
  hex(v->wrapped, v->wrapped_len);
  printf("\",\n      \"context\": [");
  for (size_t i = 0; i < v->n; i++) { /* in the order given: the header sorts them */
    printf("%s{\"key\": ", i > 0 ? ", " : "");
    json_str(v->keys[i]);
    printf(", \"value\": ");
    json_str(v->values[i]);
    printf("}");
  }
  printf("],\n      \"data_key\": \"");
  hex(v->data_key, 32);
  printf("\",\n      \"salt\": \"");
  hex(v->salt, sizeof(v->salt));
  printf("\",\n      \"plaintext\": \"");
  hex(v->pt, v->pt_len);
  printf("\",\n      \"header_len\": %zu,\n      \"header\": \"", *hdr_len);
  hex(hdr, *hdr_len);
  if (format != TK_ENV_FORMAT_1) { /* format 1: the header itself (its file predates this field) */
    printf("\",\n      \"body_context\": \"");
    hex(body_ctx, body_ctx_len);
  }
  printf("\",\n      \"envelope\": \"");
  hex(hdr, *hdr_len);
  hex(ct, ct_len);
  printf("\"\n    }");
  free(ct);
}

static int first_invalid = 1;

static void
invalid(const char *name, const uint8_t *p, size_t n)
{
  struct tk_env_header h;
  const char *why = NULL;
  if (tk_env_header_parse(&h, p, n, &why) == KMS_OK) {
    fprintf(stderr, "gen: invalid case %s parses\n", name);
    exit(1);
  }
  printf("%s    {\"name\": ", first_invalid ? "" : ",\n");
  first_invalid = 0;
  json_str(name);
  printf(", \"header\": \"");
  hex(p, n);
  printf("\"}");
}

int
main(int argc, char **argv)
{
  static struct vec v[5];
  static uint8_t hdr[5][TK_ENV_HEADER_MAX];
  size_t hl[5];
  size_t n_vec = 4;

  if (argc != 2 || (strcmp(argv[1], "1") != 0 && strcmp(argv[1], "2") != 0)) {
    fprintf(stderr, "usage: gen_envelope_vectors 1|2   (the envelope format)\n");
    return 2;
  }
  format = argv[1][0] == '1' ? TK_ENV_FORMAT_1 : TK_ENV_FORMAT_2;

  /* 1: minimal header, empty message. */
  v[0].name = "empty context, empty message";
  v[0].tenant = "t1";
  v[0].kek_version = 1;
  v[0].wrapped[0] = 0x01;
  v[0].wrapped[4] = 0x01;
  for (size_t i = 5; i < 65; i++) {
    v[0].wrapped[i] = (uint8_t)(0x40 + i);
  }
  v[0].wrapped_len = 65;

  /* 2: the worked example of docs/PROTOCOL.md: that wrapped key really holds data key 20..3f. */
  static const uint8_t proto_wrapped[65] = {
      0x01, 0x00, 0x00, 0x00, 0x07, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
      0xa8, 0xa9, 0xaa, 0xab, 0xc6, 0x39, 0x5e, 0x0e, 0x61, 0xee, 0x24, 0x98, 0x4a,
      0x4c, 0xad, 0xf8, 0x2b, 0x57, 0xee, 0xf1, 0x40, 0x9d, 0x6b, 0x23, 0xa6, 0x82,
      0x74, 0x5b, 0xa4, 0x37, 0x1c, 0xbd, 0x43, 0x96, 0x4b, 0x3e, 0x83, 0x6a, 0x70,
      0x13, 0x97, 0xa7, 0x1a, 0x6e, 0x3f, 0xdc, 0x86, 0x3c, 0xd4, 0xd9, 0x4e, 0x31};
  v[1].name = "protocol worked example: acme, KEK 7, two context entries given unsorted";
  v[1].tenant = "acme";
  v[1].kek_version = 7;
  memcpy(v[1].wrapped, proto_wrapped, 65);
  v[1].wrapped_len = 65;
  v[1].n = 2;
  strcpy(v[1].keys[0], "session_id");
  strcpy(v[1].values[0], "s-1");
  strcpy(v[1].keys[1], "purpose");
  strcpy(v[1].values[1], "report");
  static uint8_t hello[] = "session audio, 16 bytes";
  v[1].pt = hello;
  v[1].pt_len = sizeof(hello) - 1;

  /* 3: same key and header, 16 KiB: one full chunk and one empty final chunk. */
  v[2] = v[1];
  v[2].name = "16 KiB message: a full chunk and an empty final chunk";
  static uint8_t big[16384];
  for (size_t i = 0; i < sizeof(big); i++) {
    big[i] = (uint8_t)(i % 251);
  }
  v[2].pt = big;
  v[2].pt_len = sizeof(big);

  /* 4: the largest header: 64-byte tenant, 256-byte wrapped key, 16 maximal entries. */
  v[3].name = "largest header (5502 bytes)";
  static char t64[65];
  memset(t64, 'T', 64);
  v[3].tenant = t64;
  v[3].kek_version = 0xfffffffe;
  for (size_t i = 0; i < 256; i++) {
    v[3].wrapped[i] = (uint8_t)i;
  }
  v[3].wrapped_len = 256;
  v[3].n = 16;
  for (size_t i = 0; i < 16; i++) {
    memset(v[3].keys[i], 'a' + (int)(15 - i), 64); /* given in reverse order */
    memset(v[3].values[i], 'v', 256);
  }
  static uint8_t one[1] = {0x2a};
  v[3].pt = one;
  v[3].pt_len = 1;

  for (size_t i = 0; i < 4; i++) {
    for (size_t j = 0; j < 32; j++) {
      v[i].data_key[j] = i == 1 || i == 2 ? (uint8_t)(0x20 + j) : (uint8_t)(0x80 + 16 * i + j);
    }
    for (size_t j = 0; j < TK_COB_SALT_LEN; j++) {
      v[i].salt[j] = (uint8_t)(0xc0 + 8 * i + j);
    }
  }

  if (format == TK_ENV_FORMAT_2) {
    /* 5: vector 2 after an in-place rewrap: KEK 8, another wrapped key, the same body. */
    v[4] = v[1];
    v[4].name = "vector 2 rewrapped in place to KEK 8: another header, the same body "
                "(illustrative wrapped key, not a real wrap)";
    v[4].kek_version = 8;
    v[4].wrapped[4] = 0x08;
    for (size_t i = 5; i < 65; i++) {
      v[4].wrapped[i] = (uint8_t)(0xb0 ^ i);
    }
    n_vec = 5;
  }

  if (format == TK_ENV_FORMAT_1) {
    printf("{\n  \"format\": \"tenantkms envelope, format 1 (docs/ENVELOPE.md)\",\n"
           "  \"generator\": \"scripts/gen-envelope-vectors "
           "(tests/vectors/gen_envelope_vectors.c)\",\n"
           "  \"body\": \"Cobblestone-256 (c2sp.org/chunked-encryption, SHA-512 + AES-256-GCM), "
           "input key = data_key, context = header, salt as given\",\n"
           "  \"vectors\": [\n");
  } else {
    printf("{\n  \"format\": \"tenantkms envelope, format 2 (docs/ENVELOPE.md)\",\n"
           "  \"generator\": \"scripts/gen-envelope-vectors "
           "(tests/vectors/gen_envelope_vectors.c)\",\n"
           "  \"body\": \"Cobblestone-256 (c2sp.org/chunked-encryption, SHA-512 + AES-256-GCM), "
           "input key = data_key, context = body_context (the header without header length, KEK "
           "version, wrapped key length and wrapped key), salt as given\",\n"
           "  \"vectors\": [\n");
  }
  for (size_t i = 0; i < n_vec; i++) {
    emit(&v[i], hdr[i], &hl[i]);
  }
  printf("\n  ],\n  \"invalid_headers\": [\n");

  /* Invalid headers derived from vector 2 (acme): offsets per docs/ENVELOPE.md. */
  uint8_t b[TK_ENV_HEADER_MAX + 1];
  const uint8_t *g = hdr[1];
  size_t n = hl[1];
  memcpy(b, g, n);
  b[0] = 'X';
  invalid("bad magic", b, n);
  memcpy(b, g, n);
  b[3] = 3;
  invalid("unknown version 3", b, n);
  memcpy(b, g, n);
  b[3] = 0;
  invalid("version 0", b, n);
  memcpy(b, g, n);
  b[5]++;
  invalid("declared header length one more than the bytes", b, n);
  memcpy(b, g, n);
  b[n] = 0;
  invalid("a trailing byte (declared length unchanged)", b, n + 1);
  memcpy(b, g, n);
  b[n] = 0;
  b[5]++;
  invalid("a trailing byte after the last entry (declared length includes it)", b, n + 1);
  invalid("truncated by one byte", g, n - 1);
  memcpy(b, g, n);
  b[6] = 0;
  invalid("tenant length 0", b, n);
  memcpy(b, g, n);
  b[7] = '/';
  invalid("tenant with a character outside [A-Za-z0-9._-]", b, n);
  memcpy(b, g, n);
  memset(b + 11, 0, 4);
  invalid("KEK version 0", b, n);
  memcpy(b, g, n);
  b[15] = 0x01;
  invalid("wrapped key length 321 (over 256 and over the bytes)", b, n);
  /* Entries start at 6 + 1 + 4 + 4 + 2 + 65 = 82: count, then "purpose" (7) ... */
  memcpy(b, g, n);
  b[82] = 17;
  invalid("17 context entries", b, n);
  /* Swap the two entries: the same set, not in canonical order. */
  {
    size_t e0 = 83, l0 = 1 + 7 + 2 + 6, l1 = 1 + 10 + 2 + 3;
    memcpy(b, g, 83);
    memcpy(b + 83, g + e0 + l0, l1);
    memcpy(b + 83 + l1, g + e0, l0);
    invalid("context entries not sorted by key", b, n);
  }
  memcpy(b, g, n);
  b[n - 1] = 0x07;
  invalid("control character in a context value", b, n);
  if (format == TK_ENV_FORMAT_2) {
    /* Session envelopes are format 1 only: the marker in a format 2 header is refused. */
    struct tk_env_header h;
    size_t sl = 0;
    if (tk_env_header_set(&h, TK_ENV_FORMAT_1, "acme", 7, (const uint8_t *)TK_ENV_SESSION_MARKER,
                          TK_ENV_SESSION_MARKER_LEN, NULL, 0) != KMS_OK ||
        tk_env_header_encode(b, sizeof(b), &sl, &h) != KMS_OK) {
      fprintf(stderr, "gen: session header refused\n");
      exit(1);
    }
    b[3] = TK_ENV_FORMAT_2;
    invalid("session marker as the wrapped key of a format 2 header", b, sl);
  }
  printf("\n  ]\n}\n");
  return 0;
}
