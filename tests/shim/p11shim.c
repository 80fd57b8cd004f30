/* p11shim: a PKCS#11 module for tests that forwards to a real one and injects HSM faults on command. */

/*
 * kmsd loads this .so as its pkcs11_module. It dlopens the real module named
 * by $P11SHIM_MODULE (SoftHSM2 in tests) and hands out a copy of the real
 * function list in which the calls kmsd makes go through a wrapper first.
 * The wrapper reads the control file $P11SHIM_CONTROL (at most every 50 ms;
 * missing file: no faults), key = value lines:
 *
 *   fault = none | device_error | session_invalid | device_removed | corrupt_encrypt
 *   latency_ms = N        sleep N ms before every wrapped call
 *
 * device_error     every wrapped call fails with CKR_DEVICE_ERROR; sessions
 *                  stay valid in the real module (a transient fault).
 * session_invalid  the real module's sessions are closed (which also logs the
 *                  token out), and calls on a session fail with
 *                  CKR_SESSION_HANDLE_INVALID while the fault is set. Opening
 *                  new sessions works, but they fail too until it clears.
 * device_removed   the real sessions are closed and every wrapped call fails
 *                  with CKR_DEVICE_REMOVED (C_OpenSession and slot queries with
 *                  CKR_TOKEN_NOT_PRESENT) until the fault clears.
 * corrupt_encrypt  C_Encrypt succeeds but one bit of its output is flipped: a
 *                  module computing wrong answers (kmsd's self-tests catch it).
 *
 * So after session_invalid or device_removed kmsd must open new sessions, log
 * in again and reload its session objects: the old ones really are gone.
 * C_Initialize, C_Finalize, C_CloseSession and calls kmsd never makes go
 * straight to the real module.
 */

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <softhsm/pkcs11.h>

#define SHIM_EXPORT __attribute__((visibility("default")))
#define RELOAD_NS (50L * 1000 * 1000)
#define MAX_SLOTS 16

enum fault { F_NONE, F_DEVICE_ERROR, F_SESSION_INVALID, F_DEVICE_REMOVED, F_CORRUPT_ENCRYPT };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *real_dl;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST shim;
static int shim_ready;
static struct timespec last_read;
static enum fault cur_fault = F_NONE;
static unsigned long cur_latency_ms;
static CK_SLOT_ID slots[MAX_SLOTS];
static size_t n_slots;

static long
elapsed_ns(const struct timespec *a, const struct timespec *b)
{
  return (b->tv_sec - a->tv_sec) * 1000000000L + (b->tv_nsec - a->tv_nsec);
}

static enum fault
parse_fault(const char *v)
{
  if (strcmp(v, "device_error") == 0) {
    return F_DEVICE_ERROR;
  }
  if (strcmp(v, "session_invalid") == 0) {
    return F_SESSION_INVALID;
  }
  if (strcmp(v, "device_removed") == 0) {
    return F_DEVICE_REMOVED;
  }
  if (strcmp(v, "corrupt_encrypt") == 0) {
    return F_CORRUPT_ENCRYPT;
  }
  return F_NONE;
}

/* Reads the control file; called with |mu| held. A missing file means no faults. */
static void
read_control(enum fault *out_fault, unsigned long *out_latency)
{
  const char *path = getenv("P11SHIM_CONTROL");
  char line[256];
  FILE *f = NULL;

  *out_fault = F_NONE;
  *out_latency = 0;
  if (path == NULL || (f = fopen(path, "r")) == NULL) {
    return;
  }
  while (fgets(line, sizeof(line), f) != NULL) {
    char key[64], val[64];
    if (sscanf(line, " %63[a-z_] = %63s", key, val) != 2) {
      continue;
    }
    if (strcmp(key, "fault") == 0) {
      *out_fault = parse_fault(val);
    } else if (strcmp(key, "latency_ms") == 0) {
      *out_latency = strtoul(val, NULL, 10);
    }
  }
  fclose(f);
}

/*
 * The fault in force now, and the latency to apply. Entering session_invalid
 * or device_removed closes every real session, as a token reset would.
 */
static enum fault
current(unsigned long *out_latency)
{
  struct timespec now;
  enum fault f;
  int reset = 0;

  clock_gettime(CLOCK_MONOTONIC, &now);
  pthread_mutex_lock(&mu);
  if ((last_read.tv_sec == 0 && last_read.tv_nsec == 0) ||
      elapsed_ns(&last_read, &now) >= RELOAD_NS) {
    enum fault nf;
    unsigned long nl;
    read_control(&nf, &nl);
    reset = nf != cur_fault && (nf == F_SESSION_INVALID || nf == F_DEVICE_REMOVED);
    cur_fault = nf;
    cur_latency_ms = nl;
    last_read = now;
  }
  if (reset) {
    for (size_t i = 0; i < n_slots; i++) {
      (void)real->C_CloseAllSessions(slots[i]);
    }
  }
  f = cur_fault;
  *out_latency = cur_latency_ms;
  pthread_mutex_unlock(&mu);
  return f;
}

static void
sleep_ms(unsigned long ms)
{
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Returns CKR_OK to go on to the real call, or the error to inject. */
static CK_RV
gate_session(void)
{
  unsigned long lat = 0;
  enum fault f = current(&lat);
  sleep_ms(lat);
  switch (f) {
  case F_DEVICE_ERROR:
    return CKR_DEVICE_ERROR;
  case F_SESSION_INVALID:
    return CKR_SESSION_HANDLE_INVALID;
  case F_DEVICE_REMOVED:
    return CKR_DEVICE_REMOVED;
  default:
    return CKR_OK;
  }
}

/* Slot-level calls: no session to be invalid, but a removed token is not present. */
static CK_RV
gate_slot(void)
{
  unsigned long lat = 0;
  enum fault f = current(&lat);
  sleep_ms(lat);
  switch (f) {
  case F_DEVICE_ERROR:
    return CKR_DEVICE_ERROR;
  case F_DEVICE_REMOVED:
    return CKR_TOKEN_NOT_PRESENT;
  default:
    return CKR_OK;
  }
}

static void
remember_slot(CK_SLOT_ID slot)
{
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n_slots; i++) {
    if (slots[i] == slot) {
      pthread_mutex_unlock(&mu);
      return;
    }
  }
  if (n_slots < MAX_SLOTS) {
    slots[n_slots++] = slot;
  }
  pthread_mutex_unlock(&mu);
}

#define GATE(g)             \
  do {                      \
    CK_RV gate_rv_ = g();   \
    if (gate_rv_ != CKR_OK) { \
      return gate_rv_;      \
    }                       \
  } while (0)

static CK_RV
w_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
  GATE(gate_slot);
  return real->C_GetTokenInfo(slot, info);
}

static CK_RV
w_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE *list, CK_ULONG *count)
{
  GATE(gate_slot);
  return real->C_GetMechanismList(slot, list, count);
}

static CK_RV
w_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *info)
{
  GATE(gate_slot);
  return real->C_GetMechanismInfo(slot, type, info);
}

static CK_RV
w_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify,
              CK_SESSION_HANDLE *out)
{
  GATE(gate_slot);
  remember_slot(slot);
  return real->C_OpenSession(slot, flags, app, notify, out);
}

static CK_RV
w_GetSessionInfo(CK_SESSION_HANDLE s, CK_SESSION_INFO *info)
{
  GATE(gate_session);
  return real->C_GetSessionInfo(s, info);
}

static CK_RV
w_Login(CK_SESSION_HANDLE s, CK_USER_TYPE ut, unsigned char *pin, CK_ULONG pin_len)
{
  GATE(gate_session);
  return real->C_Login(s, ut, pin, pin_len);
}

static CK_RV
w_Logout(CK_SESSION_HANDLE s)
{
  GATE(gate_session);
  return real->C_Logout(s);
}

static CK_RV
w_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *t, CK_ULONG n)
{
  GATE(gate_session);
  return real->C_GetAttributeValue(s, o, t, n);
}

static CK_RV
w_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n)
{
  GATE(gate_session);
  return real->C_FindObjectsInit(s, t, n);
}

static CK_RV
w_FindObjects(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *o, CK_ULONG max, CK_ULONG *n)
{
  GATE(gate_session);
  return real->C_FindObjects(s, o, max, n);
}

/* Always forwarded: a find left active would make the next C_FindObjectsInit fail. */
static CK_RV
w_FindObjectsFinal(CK_SESSION_HANDLE s)
{
  return real->C_FindObjectsFinal(s);
}

static CK_RV
w_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
  GATE(gate_session);
  return real->C_DestroyObject(s, o);
}

static CK_RV
w_EncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k)
{
  GATE(gate_session);
  return real->C_EncryptInit(s, m, k);
}

static CK_RV
w_Encrypt(CK_SESSION_HANDLE s, unsigned char *in, CK_ULONG in_len, unsigned char *out,
          CK_ULONG *out_len)
{
  unsigned long lat = 0;
  GATE(gate_session);
  CK_RV rv = real->C_Encrypt(s, in, in_len, out, out_len);
  if (rv == CKR_OK && out != NULL && *out_len > 0 && current(&lat) == F_CORRUPT_ENCRYPT) {
    out[0] ^= 1;
  }
  return rv;
}

static CK_RV
w_DecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k)
{
  GATE(gate_session);
  return real->C_DecryptInit(s, m, k);
}

static CK_RV
w_Decrypt(CK_SESSION_HANDLE s, unsigned char *in, CK_ULONG in_len, unsigned char *out,
          CK_ULONG *out_len)
{
  GATE(gate_session);
  return real->C_Decrypt(s, in, in_len, out, out_len);
}

static CK_RV
w_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k)
{
  GATE(gate_session);
  return real->C_SignInit(s, m, k);
}

static CK_RV
w_Sign(CK_SESSION_HANDLE s, unsigned char *in, CK_ULONG in_len, unsigned char *sig,
       CK_ULONG *sig_len)
{
  GATE(gate_session);
  return real->C_Sign(s, in, in_len, sig, sig_len);
}

static CK_RV
w_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_ATTRIBUTE *t, CK_ULONG n,
              CK_OBJECT_HANDLE *k)
{
  GATE(gate_session);
  return real->C_GenerateKey(s, m, t, n, k);
}

static CK_RV
w_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_ATTRIBUTE *pt, CK_ULONG pn,
                  CK_ATTRIBUTE *vt, CK_ULONG vn, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
  GATE(gate_session);
  return real->C_GenerateKeyPair(s, m, pt, pn, vt, vn, pub, priv);
}

static CK_RV
w_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k,
          unsigned char *out, CK_ULONG *out_len)
{
  GATE(gate_session);
  return real->C_WrapKey(s, m, wk, k, out, out_len);
}

static CK_RV
w_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE uk, unsigned char *in,
            CK_ULONG in_len, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *k)
{
  GATE(gate_session);
  return real->C_UnwrapKey(s, m, uk, in, in_len, t, n, k);
}

static CK_RV
w_GenerateRandom(CK_SESSION_HANDLE s, unsigned char *out, CK_ULONG len)
{
  GATE(gate_session);
  return real->C_GenerateRandom(s, out, len);
}

static CK_RV
load_real(void)
{
  const char *path = getenv("P11SHIM_MODULE");
  CK_C_GetFunctionList get = NULL;
  CK_FUNCTION_LIST *list = NULL;

  if (path == NULL || path[0] == '\0') {
    fprintf(stderr, "p11shim: P11SHIM_MODULE is not set\n");
    return CKR_GENERAL_ERROR;
  }
  real_dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (real_dl == NULL) {
    fprintf(stderr, "p11shim: cannot load %s: %s\n", path, dlerror());
    return CKR_GENERAL_ERROR;
  }
  *(void **)&get = dlsym(real_dl, "C_GetFunctionList");
  if (get == NULL || get(&list) != CKR_OK || list == NULL) {
    return CKR_GENERAL_ERROR;
  }
  real = list;
  shim = *list; /* everything not wrapped below goes straight to the real module */
  shim.C_GetTokenInfo = w_GetTokenInfo;
  shim.C_GetMechanismList = w_GetMechanismList;
  shim.C_GetMechanismInfo = w_GetMechanismInfo;
  shim.C_OpenSession = w_OpenSession;
  shim.C_GetSessionInfo = w_GetSessionInfo;
  shim.C_Login = w_Login;
  shim.C_Logout = w_Logout;
  shim.C_GetAttributeValue = w_GetAttributeValue;
  shim.C_FindObjectsInit = w_FindObjectsInit;
  shim.C_FindObjects = w_FindObjects;
  shim.C_FindObjectsFinal = w_FindObjectsFinal;
  shim.C_DestroyObject = w_DestroyObject;
  shim.C_EncryptInit = w_EncryptInit;
  shim.C_Encrypt = w_Encrypt;
  shim.C_DecryptInit = w_DecryptInit;
  shim.C_Decrypt = w_Decrypt;
  shim.C_SignInit = w_SignInit;
  shim.C_Sign = w_Sign;
  shim.C_GenerateKey = w_GenerateKey;
  shim.C_GenerateKeyPair = w_GenerateKeyPair;
  shim.C_WrapKey = w_WrapKey;
  shim.C_UnwrapKey = w_UnwrapKey;
  shim.C_GenerateRandom = w_GenerateRandom;
  return CKR_OK;
}

SHIM_EXPORT CK_RV
C_GetFunctionList(CK_FUNCTION_LIST **out)
{
  CK_RV rv = CKR_OK;

  if (out == NULL) {
    return CKR_ARGUMENTS_BAD;
  }
  pthread_mutex_lock(&mu);
  if (!shim_ready) {
    rv = load_real();
    shim_ready = rv == CKR_OK;
  }
  pthread_mutex_unlock(&mu);
  if (rv != CKR_OK) {
    return rv;
  }
  *out = &shim;
  return CKR_OK;
}
