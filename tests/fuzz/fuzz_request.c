/* libFuzzer target: every request message's decode and validation (kms_wire_request_check), as kmsd runs them. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms.pb-c.h"
#include "kms_err.h"
#include "kms_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(const Tkms__Request *req)
{
  const char *why = "";
  int r = kms_wire_request_check(req, &why);
  if (r != KMS_OK && (why == NULL || why[0] == '\0')) {
    __builtin_trap();
  }
  /*
   * What passed validation packs and, if protobuf-c takes its own output back
   * (it keeps unknown fields, even a field number 0 it then refuses to read:
   * a library quirk kmsd never meets, as it does not re-encode requests),
   * unpacks to a request that passes again.
   */
  if (r == KMS_OK) {
    size_t n = tkms__request__get_packed_size(req);
    uint8_t *buf = malloc(n > 0 ? n : 1);
    if (buf == NULL) {
      return;
    }
    if (tkms__request__pack(req, buf) != n) {
      __builtin_trap();
    }
    Tkms__Request *again = tkms__request__unpack(NULL, n, buf);
    if (again != NULL &&
        (kms_wire_request_check(again, &why) != KMS_OK || again->op_case != req->op_case ||
         again->request_id != req->request_id)) {
      __builtin_trap();
    }
    tkms__request__free_unpacked(again, NULL);
    free(buf);
  }
}

/*
 * Byte 0 even: the rest is a whole Request, as on the wire. Byte 0 odd: byte
 * 1 picks one of the Request's operations and the rest is that operation's
 * message alone, so every request type is reached without the fuzzer having
 * to discover the envelope first.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2) {
    return 0;
  }
  if ((data[0] & 1) == 0) {
    Tkms__Request *req = tkms__request__unpack(NULL, size - 1, data + 1);
    if (req != NULL) {
      check(req);
      tkms__request__free_unpacked(req, NULL);
    }
    return 0;
  }
  const ProtobufCMessageDescriptor *d = &tkms__request__descriptor;
  const ProtobufCFieldDescriptor *ops[128];
  size_t n_ops = 0;
  for (unsigned i = 0; i < d->n_fields && n_ops < 128; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0) {
      ops[n_ops++] = f;
    }
  }
  if (n_ops == 0) {
    return 0;
  }
  const ProtobufCFieldDescriptor *f = ops[data[1] % n_ops];
  ProtobufCMessage *sub = protobuf_c_message_unpack(f->descriptor, NULL, size - 2, data + 2);
  if (sub == NULL) {
    return 0;
  }
  Tkms__Request req;
  tkms__request__init(&req);
  req.request_id = 1 + (data[0] >> 1);
  *(uint32_t *)((uint8_t *)&req + f->quantifier_offset) = f->id;
  *(ProtobufCMessage **)((uint8_t *)&req + f->offset) = sub;
  check(&req);
  protobuf_c_message_free_unpacked(sub, NULL);
  return 0;
}
