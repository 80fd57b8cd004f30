/* Writes seed inputs for fuzz_request and fuzz_frame: one plausible message per request operation. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms.pb-c.h"
#include "kms_frame.h"

/*
 * Usage: seeds REQUEST_DIR FRAME_DIR. Every operation of tkms.Request gets a
 * message whose string fields say "acme", numbers 1 and bytes a 65-byte
 * blob, so the fuzzer starts past the parts of validation that check
 * presence and reaches each operation's own rules.
 */
static uint8_t blob[65] = {1};

static ProtobufCMessage *
plausible(const ProtobufCMessageDescriptor *d)
{
  ProtobufCMessage *m = calloc(1, d->sizeof_message);
  if (m == NULL) {
    exit(1);
  }
  d->message_init(m);
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    void *at = (uint8_t *)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0) {
      continue;
    }
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
      *(const char **)at = "acme";
      break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_ENUM:
      *(uint32_t *)at = 1;
      break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_INT64:
      *(uint64_t *)at = 1;
      break;
    case PROTOBUF_C_TYPE_BYTES:
      ((ProtobufCBinaryData *)at)->data = blob;
      ((ProtobufCBinaryData *)at)->len = sizeof(blob);
      break;
    default:
      break;
    }
  }
  return m;
}

static void
write_file(const char *dir, const char *name, const char *kind, const uint8_t *p, size_t n)
{
  char path[1024];
  snprintf(path, sizeof(path), "%s/seed-%s-%s", dir, kind, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "seeds: cannot write %s\n", path);
    exit(1);
  }
}

int
main(int argc, char **argv)
{
  if (argc != 3) {
    fprintf(stderr, "usage: seeds REQUEST_DIR FRAME_DIR\n");
    return 2;
  }
  const ProtobufCMessageDescriptor *d = &tkms__request__descriptor;
  unsigned op = 0;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0) {
      continue;
    }
    ProtobufCMessage *sub = plausible(f->descriptor);
    Tkms__Request req;
    tkms__request__init(&req);
    req.request_id = 1;
    *(uint32_t *)((uint8_t *)&req + f->quantifier_offset) = f->id;
    *(ProtobufCMessage **)((uint8_t *)&req + f->offset) = sub;
    size_t n = tkms__request__get_packed_size(&req);
    size_t sn = protobuf_c_message_get_packed_size(sub);
    uint8_t *buf = malloc(n + sn + 8);
    if (buf == NULL) {
      return 1;
    }
    /* fuzz_request: whole request (byte 0 even), then the operation alone (odd, index). */
    buf[0] = 0;
    tkms__request__pack(&req, buf + 1);
    write_file(argv[1], f->name, "whole", buf, n + 1);
    buf[0] = 1;
    buf[1] = (uint8_t)op;
    protobuf_c_message_pack(sub, buf + 2);
    write_file(argv[1], f->name, "op", buf, sn + 2);
    /* fuzz_frame: a 64 KiB cap, then the frame. */
    buf[0] = 0xff;
    buf[1] = 0xff;
    kms_frame_put_header(buf + 2, (uint32_t)n);
    tkms__request__pack(&req, buf + 2 + KMS_FRAME_HDR_LEN);
    write_file(argv[2], f->name, "frame", buf, n + 2 + KMS_FRAME_HDR_LEN);
    free(buf);
    free(sub);
    op++;
  }
  return 0;
}
