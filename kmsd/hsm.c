/* The HSM layer: loads the PKCS#11 module and does every key operation kmsd asks of the HSM. */

#include "hsm.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "kms_err.h"
#include "kms_time.h"
#include "log.h"

/*
 * pkcs11.h in compat mode #defines common words (value, count, params, ...):
 * it is included here and nowhere else, and last, so it cannot rename members
 * of the structures declared by the headers above.
 */
#include <softhsm/pkcs11.h>

/* PKCS#11 3.0 names RFC 5649 CKM_AES_KEY_WRAP_KWP; the 2.40 header lacks it. */
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210BUL
#endif

_Static_assert(sizeof(CK_OBJECT_HANDLE) <= sizeof(hsm_key), "hsm_key must hold a handle");
_Static_assert(sizeof(CK_ULONG) >= sizeof(size_t), "CK_ULONG must hold a size_t");

#define KEK_LEN 32
#define PIN_MAX 256
#define ROOT_ID_MAX 32
#define TOKEN_LABEL_LEN 32
#define CALL_TIMEOUT_MS_DEFAULT 2000u
#define RETRY_MS 250 /* at most one recovery probe this often while down */
/* hsm_key: generation in the top 16 bits, the module's handle below. */
#define KEY_GEN_SHIFT 48
#define KEY_HANDLE_MASK ((UINT64_C(1) << KEY_GEN_SHIFT) - 1)

#define ROOTS_MAX HSM_ROOTS_MAX

struct root_key {
  uint32_t version;
  CK_OBJECT_HANDLE obj;
  bool trusted; /* CKA_TRUSTED: made by the key ceremony, its KEKs can be re-wrapped */
};

struct hsm {
  void *dl;
  CK_FUNCTION_LIST_PTR p11;
  bool finalize;  /* our C_Initialize returned CKR_OK: only then do we C_Finalize */
  bool logged_in; /* our C_Login returned CKR_OK: only then do we C_Logout */
  CK_SLOT_ID slot;
  CK_MECHANISM_TYPE wrap_mech;
  /*
   * Root keys found on the token, sorted by version; found at open, after a
   * reset and on hsm_root_rescan (C_FindObjects is linear in the token). The
   * table changes only with reset_lock held exclusively and owner_mu held, so
   * an operation (reset_lock shared) sees one table throughout.
   */
  struct root_key roots[ROOTS_MAX];
  size_t n_roots;
  atomic_uint root_cur; /* version new KEKs are wrapped under */
  /*
   * Session objects die with the session that created them, and worker
   * sessions come and go: loaded KEKs are created on this long-lived session so
   * that every session of the process can use them until hsm_close.
   */
  pthread_mutex_t owner_mu;
  bool owner_mu_init;
  bool owner_open;
  CK_SESSION_HANDLE owner; /* used only under owner_mu once hsm_open returned */

  /* Recovery (hsm.h). Kept so that a reset can log in again: the path, never the PIN. */
  char token_label[TOKEN_LABEL_LEN + 1];
  char pin_file[PATH_MAX];
  unsigned call_timeout_ms;
  /*
   * Held shared by every operation (from session check to last call), and
   * exclusively by a reset, so no call runs while sessions and handles are
   * replaced and no handle of one generation is used in the next.
   * Lock order: reset_lock, then owner_mu.
   */
  pthread_rwlock_t reset_lock;
  bool reset_lock_init;
  pthread_mutex_t recover_mu; /* one prober at a time */
  bool recover_mu_init;
  pthread_mutex_t why_mu; /* guards down_why; never held across a PKCS#11 call */
  bool why_mu_init;
  atomic_uint gen;            /* starts at 1; a successful reset moves it on */
  atomic_int down;            /* operations fail fast while set */
  atomic_int need_reset;      /* the failure lost sessions or the login: reset, don't probe */
  atomic_llong next_try_ms;   /* monotonic ms before which nobody probes */
  atomic_ullong errors, recoveries;
  char down_why[128];
  /* The audit signing key's handle in the current generation (hsm_sign), under owner_mu. */
  CK_OBJECT_HANDLE sig_handle;
  unsigned sig_gen;
  char sig_id[64];
};

struct hsm_session {
  hsm *h;
  CK_SESSION_HANDLE sh;
  unsigned gen; /* the generation |sh| was opened in; another one means reopen */
  /*
   * An operation failed after its Init: a module that (against the standard)
   * keeps it active would answer CKR_OPERATION_ACTIVE to every later Init on
   * this session. A fresh session is the only portable way out.
   */
  bool stale;
};

/* mark_stale: after a C_Encrypt/C_Decrypt/C_Sign that failed other than by a bad tag. */
static void mark_stale(hsm_session *s) {
  s->stale = true;
}

static const char *ckr_name(CK_RV rv) {
  switch (rv) {
  case CKR_OK: return "CKR_OK";
  case CKR_HOST_MEMORY: return "CKR_HOST_MEMORY";
  case CKR_SLOT_ID_INVALID: return "CKR_SLOT_ID_INVALID";
  case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
  case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
  case CKR_ARGUMENTS_BAD: return "CKR_ARGUMENTS_BAD";
  case CKR_ACTION_PROHIBITED: return "CKR_ACTION_PROHIBITED";
  case CKR_ATTRIBUTE_READ_ONLY: return "CKR_ATTRIBUTE_READ_ONLY";
  case CKR_ATTRIBUTE_SENSITIVE: return "CKR_ATTRIBUTE_SENSITIVE";
  case CKR_ATTRIBUTE_TYPE_INVALID: return "CKR_ATTRIBUTE_TYPE_INVALID";
  case CKR_ATTRIBUTE_VALUE_INVALID: return "CKR_ATTRIBUTE_VALUE_INVALID";
  case CKR_DATA_INVALID: return "CKR_DATA_INVALID";
  case CKR_DATA_LEN_RANGE: return "CKR_DATA_LEN_RANGE";
  case CKR_DEVICE_ERROR: return "CKR_DEVICE_ERROR";
  case CKR_DEVICE_MEMORY: return "CKR_DEVICE_MEMORY";
  case CKR_DEVICE_REMOVED: return "CKR_DEVICE_REMOVED";
  case CKR_ENCRYPTED_DATA_INVALID: return "CKR_ENCRYPTED_DATA_INVALID";
  case CKR_ENCRYPTED_DATA_LEN_RANGE: return "CKR_ENCRYPTED_DATA_LEN_RANGE";
  case CKR_FUNCTION_NOT_SUPPORTED: return "CKR_FUNCTION_NOT_SUPPORTED";
  case CKR_KEY_HANDLE_INVALID: return "CKR_KEY_HANDLE_INVALID";
  case CKR_KEY_SIZE_RANGE: return "CKR_KEY_SIZE_RANGE";
  case CKR_KEY_TYPE_INCONSISTENT: return "CKR_KEY_TYPE_INCONSISTENT";
  case CKR_KEY_FUNCTION_NOT_PERMITTED: return "CKR_KEY_FUNCTION_NOT_PERMITTED";
  case CKR_KEY_NOT_WRAPPABLE: return "CKR_KEY_NOT_WRAPPABLE";
  case CKR_KEY_UNEXTRACTABLE: return "CKR_KEY_UNEXTRACTABLE";
  case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
  case CKR_MECHANISM_PARAM_INVALID: return "CKR_MECHANISM_PARAM_INVALID";
  case CKR_OBJECT_HANDLE_INVALID: return "CKR_OBJECT_HANDLE_INVALID";
  case CKR_OPERATION_ACTIVE: return "CKR_OPERATION_ACTIVE";
  case CKR_OPERATION_NOT_INITIALIZED: return "CKR_OPERATION_NOT_INITIALIZED";
  case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
  case CKR_PIN_INVALID: return "CKR_PIN_INVALID";
  case CKR_PIN_LEN_RANGE: return "CKR_PIN_LEN_RANGE";
  case CKR_PIN_EXPIRED: return "CKR_PIN_EXPIRED";
  case CKR_PIN_LOCKED: return "CKR_PIN_LOCKED";
  case CKR_SESSION_CLOSED: return "CKR_SESSION_CLOSED";
  case CKR_SESSION_COUNT: return "CKR_SESSION_COUNT";
  case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
  case CKR_SESSION_READ_ONLY: return "CKR_SESSION_READ_ONLY";
  case CKR_TEMPLATE_INCOMPLETE: return "CKR_TEMPLATE_INCOMPLETE";
  case CKR_TEMPLATE_INCONSISTENT: return "CKR_TEMPLATE_INCONSISTENT";
  case CKR_TOKEN_NOT_PRESENT: return "CKR_TOKEN_NOT_PRESENT";
  case CKR_TOKEN_NOT_RECOGNIZED: return "CKR_TOKEN_NOT_RECOGNIZED";
  case CKR_TOKEN_WRITE_PROTECTED: return "CKR_TOKEN_WRITE_PROTECTED";
  case CKR_UNWRAPPING_KEY_HANDLE_INVALID: return "CKR_UNWRAPPING_KEY_HANDLE_INVALID";
  case CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT: return "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT";
  case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
  case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
  case CKR_USER_PIN_NOT_INITIALIZED: return "CKR_USER_PIN_NOT_INITIALIZED";
  case CKR_USER_TYPE_INVALID: return "CKR_USER_TYPE_INVALID";
  case CKR_WRAPPED_KEY_INVALID: return "CKR_WRAPPED_KEY_INVALID";
  case CKR_WRAPPED_KEY_LEN_RANGE: return "CKR_WRAPPED_KEY_LEN_RANGE";
  case CKR_WRAPPING_KEY_HANDLE_INVALID: return "CKR_WRAPPING_KEY_HANDLE_INVALID";
  case CKR_WRAPPING_KEY_TYPE_INCONSISTENT: return "CKR_WRAPPING_KEY_TYPE_INCONSISTENT";
  case CKR_RANDOM_NO_RNG: return "CKR_RANDOM_NO_RNG";
  case CKR_BUFFER_TOO_SMALL: return "CKR_BUFFER_TOO_SMALL";
  case CKR_CRYPTOKI_NOT_INITIALIZED: return "CKR_CRYPTOKI_NOT_INITIALIZED";
  case CKR_CRYPTOKI_ALREADY_INITIALIZED: return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
  case CKR_FUNCTION_REJECTED: return "CKR_FUNCTION_REJECTED";
  default: return "CKR_?";
  }
}

/*
 * ckr_to_err maps a PKCS#11 failure to our error space. Anything that means
 * "the HSM, its token or our login went away" is KMS_ERR_HSM, which kmsd
 * answers as UNAVAILABLE so clients retry; template and mechanism complaints
 * are our own bugs. A stale key handle is KMS_ERR_HSM too: handles we gave
 * out only go bad when the owner session or the token did.
 */
static int ckr_to_err(CK_RV rv) {
  switch (rv) {
  case CKR_OK:
    return KMS_OK;
  case CKR_HOST_MEMORY:
    return KMS_ERR_ALLOC;
  case CKR_ARGUMENTS_BAD:
  case CKR_DATA_INVALID:
  case CKR_DATA_LEN_RANGE:
    return KMS_ERR_INVALID_ARGUMENT;
  case CKR_ATTRIBUTE_READ_ONLY:
  case CKR_ATTRIBUTE_TYPE_INVALID:
  case CKR_ATTRIBUTE_VALUE_INVALID:
  case CKR_TEMPLATE_INCOMPLETE:
  case CKR_TEMPLATE_INCONSISTENT:
  case CKR_MECHANISM_PARAM_INVALID:
  case CKR_KEY_FUNCTION_NOT_PERMITTED:
  case CKR_KEY_TYPE_INCONSISTENT:
  case CKR_KEY_SIZE_RANGE:
  case CKR_OPERATION_ACTIVE:
  case CKR_OPERATION_NOT_INITIALIZED:
  case CKR_BUFFER_TOO_SMALL:
    return KMS_ERR_INTERNAL;
  case CKR_DEVICE_ERROR:
  case CKR_DEVICE_MEMORY:
  case CKR_DEVICE_REMOVED:
  case CKR_SESSION_HANDLE_INVALID:
  case CKR_SESSION_CLOSED:
  case CKR_SESSION_COUNT:
  case CKR_TOKEN_NOT_PRESENT:
  case CKR_TOKEN_NOT_RECOGNIZED:
  case CKR_USER_NOT_LOGGED_IN:
  case CKR_CRYPTOKI_NOT_INITIALIZED:
  case CKR_KEY_HANDLE_INVALID:
  case CKR_OBJECT_HANDLE_INVALID:
  default:
    return KMS_ERR_HSM;
  }
}

/* A wrong key, tag, AAD, IV or key token: one opaque answer whatever the module said. */
static bool ckr_is_auth_failure(CK_RV rv) {
  return rv == CKR_GENERAL_ERROR || rv == CKR_ENCRYPTED_DATA_INVALID ||
         rv == CKR_ENCRYPTED_DATA_LEN_RANGE || rv == CKR_WRAPPED_KEY_INVALID ||
         rv == CKR_WRAPPED_KEY_LEN_RANGE;
}

static int ckr_fail(char *err, size_t err_len, const char *fn, CK_RV rv) {
  kms_set_err(err, err_len, "PKCS#11 %s: %s (0x%lx)", fn, ckr_name(rv), (unsigned long)rv);
  return ckr_to_err(rv);
}

/*
 * read_pin reads the first line of |path| into |pin| (capacity PIN_MAX) with
 * read(2) rather than stdio, so that no library buffer we cannot wipe ever
 * holds the PIN. The caller wipes |pin| whatever the result.
 */
static int read_pin(const char *path, char *pin, size_t *out_len, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  int fd = -1;
  struct stat st;
  size_t got = 0;
  char *nl = NULL;

  *out_len = 0;
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    kms_set_err(err, err_len, "pin file %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  /* fstat the open file, not the path, so the file checked is the file read. */
  if (fstat(fd, &st) != 0) {
    kms_set_err(err, err_len, "pin file %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    kms_set_err(err, err_len, "pin file %s is not a regular file", path);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  if ((st.st_mode & 077) != 0) {
    kms_set_err(err, err_len,
            "pin file %s must not be accessible by group or others (mode %04o)", path,
            (unsigned)(st.st_mode & 07777));
    r = KMS_ERR_CONFIG;
    goto out;
  }
  while (got < PIN_MAX - 1) {
    ssize_t n = read(fd, pin + got, PIN_MAX - 1 - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      kms_set_err(err, err_len, "pin file %s: %s", path, strerror(errno));
      r = KMS_ERR_IO;
      goto out;
    }
    if (n == 0) {
      break;
    }
    got += (size_t)n;
    if (memchr(pin, '\n', got) != NULL) {
      break;
    }
  }
  nl = memchr(pin, '\n', got);
  if (nl == NULL && got == PIN_MAX - 1) {
    kms_set_err(err, err_len, "pin file %s: first line longer than %d bytes", path, PIN_MAX - 2);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  if (nl != NULL) {
    got = (size_t)(nl - pin);
  }
  if (got > 0 && pin[got - 1] == '\r') {
    got--;
  }
  if (got == 0) {
    kms_set_err(err, err_len, "pin file %s: first line is empty", path);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  *out_len = got;
  r = KMS_OK;
out:
  if (fd >= 0) {
    close(fd);
  }
  return r;
}

static int find_slot(hsm *h, const char *label, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_SLOT_ID *slots = NULL;
  CK_ULONG n_slots = 0;
  CK_ULONG i;
  unsigned char want[TOKEN_LABEL_LEN];
  size_t label_len = strlen(label);
  int matches = 0;

  memset(want, ' ', sizeof(want));
  memcpy(want, label, label_len);
  /* The slot count can change between the two calls (hotplug): retry on BUFFER_TOO_SMALL. */
  for (;;) {
    rv = h->p11->C_GetSlotList(CK_TRUE, NULL, &n_slots);
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_GetSlotList", rv);
      goto out;
    }
    if (n_slots == 0) {
      kms_set_err(err, err_len, "no PKCS#11 token present (looking for label \"%s\")", label);
      r = KMS_ERR_HSM;
      goto out;
    }
    free(slots);
    slots = calloc(n_slots, sizeof(*slots));
    if (slots == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    rv = h->p11->C_GetSlotList(CK_TRUE, slots, &n_slots);
    if (rv == CKR_BUFFER_TOO_SMALL) {
      continue;
    }
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_GetSlotList", rv);
      goto out;
    }
    break;
  }
  for (i = 0; i < n_slots; i++) {
    CK_TOKEN_INFO ti;

    memset(&ti, 0, sizeof(ti));
    rv = h->p11->C_GetTokenInfo(slots[i], &ti);
    if (rv != CKR_OK) {
      continue; /* removed since the list was taken, or unreadable: not ours */
    }
    if (memcmp(ti.label, want, sizeof(want)) == 0) {
      matches++;
      h->slot = slots[i];
    }
  }
  if (matches == 0) {
    kms_set_err(err, err_len, "no PKCS#11 token labelled \"%s\"", label);
    r = KMS_ERR_HSM;
    goto out;
  }
  if (matches > 1) {
    kms_set_err(err, err_len, "%d PKCS#11 tokens are labelled \"%s\": ambiguous", matches, label);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  r = KMS_OK;
out:
  free(slots);
  return r;
}

static int check_mech(hsm *h, CK_MECHANISM_TYPE mech, CK_FLAGS need, const char *name,
                      char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_MECHANISM_INFO info;

  /* SoftHSM2 ORs into flags instead of setting them. */
  memset(&info, 0, sizeof(info));
  rv = h->p11->C_GetMechanismInfo(h->slot, mech, &info);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_GetMechanismInfo", rv);
    goto out;
  }
  if ((info.flags & need) != need) {
    kms_set_err(err, err_len, "PKCS#11 token does not allow %s for the operations kmsd needs",
                name);
    r = KMS_ERR_HSM;
    goto out;
  }
  r = KMS_OK;
out:
  return r;
}

static int pick_mechanisms(hsm *h, const char *label, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_MECHANISM_TYPE *mechs = NULL;
  CK_ULONG n_mechs = 0;
  CK_ULONG i;
  bool kwp = false, pad = false, gcm = false, keygen = false;

  rv = h->p11->C_GetMechanismList(h->slot, NULL, &n_mechs);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_GetMechanismList", rv);
    goto out;
  }
  mechs = calloc(n_mechs + 1, sizeof(*mechs));
  if (mechs == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  rv = h->p11->C_GetMechanismList(h->slot, mechs, &n_mechs);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_GetMechanismList", rv);
    goto out;
  }
  for (i = 0; i < n_mechs; i++) {
    kwp = kwp || mechs[i] == CKM_AES_KEY_WRAP_KWP;
    pad = pad || mechs[i] == CKM_AES_KEY_WRAP_PAD;
    gcm = gcm || mechs[i] == CKM_AES_GCM;
    keygen = keygen || mechs[i] == CKM_AES_KEY_GEN;
  }
  /*
   * CKM_AES_KEY_WRAP_PAD is RFC 5649 in SoftHSM2 but RFC 3394 over PKCS#7
   * padding in NSS: the PKCS#11 3.0 name wins when offered, and the chosen
   * mechanism is stored beside every key token.
   */
  if (kwp) {
    h->wrap_mech = CKM_AES_KEY_WRAP_KWP;
  } else if (pad) {
    h->wrap_mech = CKM_AES_KEY_WRAP_PAD;
  } else {
    kms_set_err(err, err_len,
            "PKCS#11 token \"%s\" offers no RFC 5649 key wrap "
            "(CKM_AES_KEY_WRAP_KWP or CKM_AES_KEY_WRAP_PAD)",
            label);
    r = KMS_ERR_HSM;
    goto out;
  }
  if (!gcm) {
    kms_set_err(err, err_len, "PKCS#11 token \"%s\" does not offer CKM_AES_GCM", label);
    r = KMS_ERR_HSM;
    goto out;
  }
  if (!keygen) {
    kms_set_err(err, err_len, "PKCS#11 token \"%s\" does not offer CKM_AES_KEY_GEN", label);
    r = KMS_ERR_HSM;
    goto out;
  }
  if ((r = check_mech(h, h->wrap_mech, CKF_WRAP | CKF_UNWRAP,
                      kwp ? "CKM_AES_KEY_WRAP_KWP" : "CKM_AES_KEY_WRAP_PAD", err,
                      err_len)) != KMS_OK ||
      (r = check_mech(h, CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, "CKM_AES_GCM", err,
                      err_len)) != KMS_OK ||
      (r = check_mech(h, CKM_AES_KEY_GEN, CKF_GENERATE, "CKM_AES_KEY_GEN", err, err_len)) !=
          KMS_OK) {
    goto out;
  }
  r = KMS_OK;
out:
  free(mechs);
  return r;
}

static int login_as(hsm *h, CK_USER_TYPE who, const char *pin_file, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  char pin[PIN_MAX];
  size_t pin_len = 0;

  memset(pin, 0, sizeof(pin));
  if ((r = read_pin(pin_file, pin, &pin_len, err, err_len)) != KMS_OK) {
    goto out;
  }
  rv = h->p11->C_Login(h->owner, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
  OPENSSL_cleanse(pin, sizeof(pin));
  if (rv == CKR_USER_ALREADY_LOGGED_IN && who == CKU_USER) {
    /* Login is per application: someone else in this process (libp11) did it and owns it. */
    r = KMS_OK;
    goto out;
  }
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_Login", rv);
    goto out;
  }
  h->logged_in = true;
  r = KMS_OK;
out:
  OPENSSL_cleanse(pin, sizeof(pin));
  return r;
}

static int login(hsm *h, const char *pin_file, char *err, size_t err_len) {
  return login_as(h, CKU_USER, pin_file, err, err_len);
}

/* ---- Root keys (docs/LIFECYCLE.md, "Root key rotation") ----------------------- */

#define ROOT_ID_PREFIX "tenantkms-root-v"

/* parse_root_id reads the version out of a CKA_ID "tenantkms-root-v<N>" (N >= 1, no leading 0). */
static bool parse_root_id(const uint8_t *id, size_t len, uint32_t *out) {
  size_t plen = sizeof(ROOT_ID_PREFIX) - 1;
  uint64_t v = 0;

  if (len <= plen || len > plen + 10 || memcmp(id, ROOT_ID_PREFIX, plen) != 0 ||
      id[plen] == '0') {
    return false;
  }
  for (size_t i = plen; i < len; i++) {
    if (id[i] < '0' || id[i] > '9') {
      return false;
    }
    v = v * 10 + (uint64_t)(id[i] - '0');
  }
  if (v == 0 || v > UINT32_MAX) {
    return false;
  }
  *out = (uint32_t)v;
  return true;
}

/*
 * scan_roots lists every secret-key token object on session |sh| whose CKA_ID
 * names a root version, unchecked and unsorted. What the session sees depends
 * on its login: private (legacy) roots only with the user logged in.
 */
static int scan_roots(hsm *h, CK_SESSION_HANDLE sh, struct root_key *out, size_t cap,
                      size_t *out_n, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_TOKEN, &yes, sizeof(yes)},
  };
  CK_OBJECT_HANDLE objs[64];
  CK_ULONG got = 0;
  bool active = false;

  *out_n = 0;
  rv = h->p11->C_FindObjectsInit(sh, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_FindObjectsInit", rv);
    goto out;
  }
  active = true;
  do {
    rv = h->p11->C_FindObjects(sh, objs, sizeof(objs) / sizeof(objs[0]), &got);
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_FindObjects", rv);
      goto out;
    }
    for (CK_ULONG i = 0; i < got; i++) {
      uint8_t id[64];
      CK_ATTRIBUTE a = {CKA_ID, id, sizeof(id)};
      uint32_t v;

      /* Too long for our ids, or no id at all: not one of ours. */
      if (h->p11->C_GetAttributeValue(sh, objs[i], &a, 1) != CKR_OK ||
          a.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
          !parse_root_id(id, a.ulValueLen, &v)) {
        continue;
      }
      if (*out_n == cap) {
        kms_set_err(err, err_len, "more than %zu root keys on the token", cap);
        r = KMS_ERR_FAILED_PRECONDITION;
        goto out;
      }
      out[*out_n].version = v;
      out[*out_n].obj = objs[i];
      out[*out_n].trusted = false;
      (*out_n)++;
    }
  } while (got > 0);
  r = KMS_OK;
out:
  if (active) {
    rv = h->p11->C_FindObjectsFinal(sh);
    if (rv != CKR_OK && r == KMS_OK) {
      r = ckr_fail(err, err_len, "C_FindObjectsFinal", rv);
    }
  }
  return r;
}

/*
 * create_legacy_root makes root v1 the way kmsd always has, on the owner
 * session: private, with an unwrap template that makes every KEK it unwraps
 * non-extractable. Such a root can never be rotated away from (no PKCS#11 call
 * can wrap its KEKs under another key); only the key ceremony makes roots that
 * can (hsm_root_ceremony).
 */
static int create_legacy_root(hsm *h, uint32_t version, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  char id[ROOT_ID_MAX];
  CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_ULONG len = KEK_LEN;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  /*
   * Without an unwrap template anyone holding the PIN and a key token could
   * unwrap it as a non-sensitive, extractable key and read the KEK (seen on
   * SoftHSM2 2.6.1, which enforces CKA_UNWRAP_TEMPLATE). Not modifiable and
   * not copyable so that nobody can later add CKA_DECRYPT (ECB-decrypting a
   * key token is the same leak) or drop the template.
   */
  CK_ATTRIBUTE unwrap_tmpl[] = {
      {CKA_SENSITIVE, &yes, sizeof(yes)},
      {CKA_EXTRACTABLE, &no, sizeof(no)},
      {CKA_WRAP, &no, sizeof(no)},
      {CKA_UNWRAP, &no, sizeof(no)},
  };
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_VALUE_LEN, &len, sizeof(len)},
      {CKA_MODIFIABLE, &no, sizeof(no)},
      {CKA_COPYABLE, &no, sizeof(no)},
      {CKA_UNWRAP_TEMPLATE, unwrap_tmpl, sizeof(unwrap_tmpl)},
      {CKA_ID, id, 0},
      {CKA_LABEL, id, 0},
      {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_PRIVATE, &yes, sizeof(yes)},
      {CKA_SENSITIVE, &yes, sizeof(yes)},
      {CKA_EXTRACTABLE, &no, sizeof(no)},
      {CKA_WRAP, &yes, sizeof(yes)},
      {CKA_UNWRAP, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &no, sizeof(no)},
      {CKA_DECRYPT, &no, sizeof(no)},
  };
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;

  snprintf(id, sizeof(id), ROOT_ID_PREFIX "%u", (unsigned)version);
  tmpl[6].ulValueLen = tmpl[7].ulValueLen = strlen(id);
  rv = h->p11->C_GenerateKey(h->owner, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &obj);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_GenerateKey", rv);
    goto out;
  }
  log_msg(LOG_WARN, "event=root_created version=%u kind=legacy note=\"made by kmsd with the user "
                    "PIN: it cannot be rotated; run the key ceremony (kmsctl root create) before "
                    "the first start for a rotatable root\"", (unsigned)version);
  r = KMS_OK;
out:
  return r;
}

/*
 * template_is_safe reads |obj|'s CKA_UNWRAP_TEMPLATE and returns true if
 * every key it unwraps is forced sensitive and, unless |trusted|, not
 * extractable; under a trusted root an extractable key must also be
 * CKA_WRAP_WITH_TRUSTED (it may leave the HSM only wrapped by a trusted key).
 * A template that is missing, unreadable or says anything weaker is false.
 */
static bool template_is_safe(hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE obj, bool trusted) {
  CK_ATTRIBUTE ut = {CKA_UNWRAP_TEMPLATE, NULL, 0};
  CK_ATTRIBUTE *a = NULL;
  uint8_t vals[16][16]; /* every value of the template; ours are booleans and small ints */
  size_t n = 0;
  int sens = -1, extr = -1, wwt = -1; /* -1: not in the template */
  bool ok = false;

  if (h->p11->C_GetAttributeValue(sh, obj, &ut, 1) != CKR_OK ||
      ut.ulValueLen == CK_UNAVAILABLE_INFORMATION || ut.ulValueLen == 0 ||
      ut.ulValueLen % sizeof(CK_ATTRIBUTE) != 0) {
    return false;
  }
  n = ut.ulValueLen / sizeof(CK_ATTRIBUTE);
  if (n > sizeof(vals) / sizeof(vals[0]) || (a = calloc(n, sizeof(*a))) == NULL) {
    return false;
  }
  /* Second call: each entry's type and value length; third: the values. */
  ut.pValue = a;
  if (h->p11->C_GetAttributeValue(sh, obj, &ut, 1) != CKR_OK) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if (a[i].ulValueLen == CK_UNAVAILABLE_INFORMATION || a[i].ulValueLen > sizeof(vals[i])) {
      goto out;
    }
    a[i].pValue = vals[i];
  }
  if (h->p11->C_GetAttributeValue(sh, obj, &ut, 1) != CKR_OK) {
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if (a[i].ulValueLen != sizeof(CK_BBOOL)) {
      continue;
    }
    int v = vals[i][0] != CK_FALSE;
    if (a[i].type == CKA_SENSITIVE) {
      sens = v;
    } else if (a[i].type == CKA_EXTRACTABLE) {
      extr = v;
    } else if (a[i].type == CKA_WRAP_WITH_TRUSTED) {
      wwt = v;
    }
  }
  ok = sens == 1 && (extr == 0 || (trusted && extr == 1 && wwt == 1));
out:
  free(a);
  return ok;
}

/*
 * check_root refuses a root key that could leak what it wraps: a key able to
 * C_Decrypt (e.g. with CKM_AES_ECB) would turn every key token into a KEK in
 * the clear, and one that is extractable or not sensitive could itself leave.
 * A trusted root (CKA_TRUSTED, set by the security officer) must carry an
 * unwrap template, since the KEKs it unwraps are extractable (to trusted keys
 * only, CKA_WRAP_WITH_TRUSTED) and only the template keeps them sensitive.
 */
static int check_root(hsm *h, CK_SESSION_HANDLE sh, struct root_key *k, char *err,
                      size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_KEY_TYPE kt = 0;
  CK_ULONG len = 0;
  CK_BBOOL sens = CK_FALSE, extr = CK_TRUE, wrap = CK_FALSE, unwrap = CK_FALSE;
  CK_BBOOL enc = CK_TRUE, dec = CK_TRUE, trusted = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_KEY_TYPE, &kt, sizeof(kt)},       {CKA_VALUE_LEN, &len, sizeof(len)},
      {CKA_SENSITIVE, &sens, sizeof(sens)},  {CKA_EXTRACTABLE, &extr, sizeof(extr)},
      {CKA_WRAP, &wrap, sizeof(wrap)},       {CKA_UNWRAP, &unwrap, sizeof(unwrap)},
      {CKA_ENCRYPT, &enc, sizeof(enc)},      {CKA_DECRYPT, &dec, sizeof(dec)},
      {CKA_TRUSTED, &trusted, sizeof(trusted)},
  };

  rv = h->p11->C_GetAttributeValue(sh, k->obj, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_GetAttributeValue", rv);
    goto out;
  }
  if (kt != CKK_AES || len != KEK_LEN || !sens || extr || !wrap || !unwrap || enc || dec) {
    kms_set_err(err, err_len,
                "root key %s%u is not a sensitive, non-extractable AES-256 key for wrap/unwrap "
                "only; refusing to use it",
                ROOT_ID_PREFIX, (unsigned)k->version);
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  k->trusted = trusted != CK_FALSE;
  /* What the template says, not only that there is one: it is all that keeps unwrapped KEKs
   * inside the HSM. */
  if (!template_is_safe(h, sh, k->obj, k->trusted)) {
    kms_set_err(err, err_len,
                "root key %s%u has no unwrap template forcing sensitive KEKs that leave the HSM "
                "at most wrapped by a trusted key; refusing to use it",
                ROOT_ID_PREFIX, (unsigned)k->version);
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  r = KMS_OK;
out:
  return r;
}

static int cmp_root(const void *a, const void *b) {
  const struct root_key *x = a, *y = b;
  return x->version < y->version ? -1 : x->version > y->version;
}

/*
 * load_roots reads every root on the token into |out| (sorted by version) and
 * checks each. A weak key or a duplicate version with our id is left out and
 * logged; if it is version |need|, that is an error with the reason in |err|.
 * Otherwise, when the newest root on the token was left out, the reason is in
 * |err| all the same (the table is still good), so a rotation can say why.
 */
static int load_roots(hsm *h, struct root_key *out, size_t *out_n, uint32_t need, char *err,
                      size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  size_t n = 0, kept = 0;

  *out_n = 0;
  if ((r = scan_roots(h, h->owner, out, ROOTS_MAX, &n, err, err_len)) != KMS_OK) {
    goto out;
  }
  qsort(out, n, sizeof(out[0]), cmp_root);
  for (size_t i = 0; i < n; i++) {
    char why[192] = "";
    bool dup = (i > 0 && out[i].version == out[i - 1].version) ||
               (i + 1 < n && out[i].version == out[i + 1].version);

    if (dup) {
      kms_set_err(why, sizeof(why), "more than one root key with CKA_ID %s%u: ambiguous, refusing",
                  ROOT_ID_PREFIX, (unsigned)out[i].version);
      r = KMS_ERR_FAILED_PRECONDITION;
    } else {
      r = check_root(h, h->owner, &out[i], why, sizeof(why));
    }
    if (r != KMS_OK) {
      kms_set_err(err, err_len, "%s", why);
      if (out[i].version == need) {
        goto out;
      }
      if (i == 0 || out[i].version != out[i - 1].version) {
        log_msg(LOG_WARN, "event=root_refused version=%u reason=\"%s\"", (unsigned)out[i].version,
                why);
      }
      continue;
    }
    out[kept++] = out[i];
  }
  if (kept > 0 && n > 0 && out[kept - 1].version == out[n - 1].version) {
    kms_set_err(err, err_len, "%s", ""); /* the newest one is usable */
  }
  *out_n = kept;
  r = KMS_OK;
out:
  return r;
}

/* root_of returns the root of |version| (0: the current one), or NULL. Under reset_lock. */
static const struct root_key *root_of(const hsm *h, uint32_t version) {
  if (version == 0) {
    version = atomic_load(&h->root_cur);
  }
  for (size_t i = 0; i < h->n_roots; i++) {
    if (h->roots[i].version == version) {
      return &h->roots[i];
    }
  }
  return NULL;
}

static bool has_root(const struct root_key *k, size_t n, uint32_t version) {
  for (size_t i = 0; i < n; i++) {
    if (k[i].version == version) {
      return true;
    }
  }
  return false;
}

/*
 * ensure_root loads the roots and makes |version| current (0: the newest on
 * the token). With |allow_create| a missing one is made as a legacy root (v1
 * when the token has none at all).
 * Called on the owner session, before serving or under both locks.
 */
static int ensure_root(hsm *h, uint32_t version, bool allow_create, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  struct root_key found[ROOTS_MAX];
  size_t n = 0;

  if ((r = load_roots(h, found, &n, version, err, err_len)) != KMS_OK) {
    goto out;
  }
  if (version == 0 && n > 0) {
    version = found[n - 1].version;
  }
  if (allow_create && (version == 0 || !has_root(found, n, version))) {
    version = version == 0 ? 1 : version;
    if ((r = create_legacy_root(h, version, err, err_len)) != KMS_OK ||
        (r = load_roots(h, found, &n, version, err, err_len)) != KMS_OK) {
      goto out;
    }
  }
  memcpy(h->roots, found, n * sizeof(found[0]));
  h->n_roots = n;
  if (version == 0 || root_of(h, version) == NULL) {
    /* A token without our root is not ours; making a new one would orphan every key token. */
    kms_set_err(err, err_len,
                "root key %s%u not found on the token, but key tokens need it: wrong token?",
                ROOT_ID_PREFIX, (unsigned)(version != 0 ? version : 1));
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  atomic_store(&h->root_cur, version);
  r = KMS_OK;
out:
  return r;
}

/* ---- Fault detection and recovery (hsm.h) ------------------------------------ */

/* Failures after which sessions or the login are gone: only a reset helps. */
static bool ckr_lost_session(CK_RV rv) {
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
         rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_DEVICE_REMOVED ||
         rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_TOKEN_NOT_RECOGNIZED ||
         rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

/* Failures that may be transient: the owner session is probed before anything is reset. */
static bool ckr_device_fault(CK_RV rv) {
  return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_MEMORY || rv == CKR_FUNCTION_FAILED ||
         rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID;
}

static void mark_down(hsm *h, const char *why, bool reset) {
  atomic_fetch_add(&h->errors, 1);
  if (reset) {
    atomic_store(&h->need_reset, 1);
  }
  if (atomic_exchange(&h->down, 1) == 0) {
    /* The first caller to see it may probe at once: a lone glitch costs one request. */
    atomic_store(&h->next_try_ms, kms_mono_ms());
    if (pthread_mutex_lock(&h->why_mu) == 0) {
      snprintf(h->down_why, sizeof(h->down_why), "%s", why);
      pthread_mutex_unlock(&h->why_mu);
    }
    log_msg(LOG_ERROR, "event=hsm_down reason=\"%s\" note=\"requests get UNAVAILABLE until it "
                       "recovers\"", why);
  }
}

/* chk notes what a PKCS#11 result says about the HSM's health and returns it unchanged. */
static CK_RV chk(hsm *h, const char *fn, CK_RV rv) {
  char why[96];

  if (rv == CKR_OK || (!ckr_lost_session(rv) && !ckr_device_fault(rv))) {
    return rv;
  }
  snprintf(why, sizeof(why), "%s: %s", fn, ckr_name(rv));
  mark_down(h, why, ckr_lost_session(rv));
  return rv;
}

static hsm_key tag_key(unsigned gen, CK_OBJECT_HANDLE obj) {
  return ((hsm_key)(gen & 0xffffu) << KEY_GEN_SHIFT) | ((hsm_key)obj & KEY_HANDLE_MASK);
}

/* untag_key: the module's handle of |key| if it is of the current generation. */
static bool untag_key(hsm *h, hsm_key key, CK_OBJECT_HANDLE *out) {
  *out = CK_INVALID_HANDLE;
  if ((key >> KEY_GEN_SHIFT) != (atomic_load(&h->gen) & 0xffffu) ||
      (key & KEY_HANDLE_MASK) == 0) {
    return false;
  }
  *out = (CK_OBJECT_HANDLE)(key & KEY_HANDLE_MASK);
  return true;
}

/*
 * reset: every session closed, token found again, new owner session, login
 * with the PIN read again from the file, root key found again (never
 * created). Called with reset_lock held exclusively and owner_mu held.
 */
static int reset(hsm *h, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;

  /* Old handles may be dead, or alive and about to be reused: close them all by slot. */
  (void)h->p11->C_CloseAllSessions(h->slot);
  h->owner_open = false;
  h->logged_in = false;
  if ((r = find_slot(h, h->token_label, err, err_len)) != KMS_OK) {
    goto out;
  }
  rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                             &h->owner);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_OpenSession", rv);
    goto out;
  }
  h->owner_open = true;
  if ((r = login(h, h->pin_file, err, err_len)) != KMS_OK ||
      (r = ensure_root(h, atomic_load(&h->root_cur), false, err, err_len)) != KMS_OK) {
    goto out;
  }
  r = KMS_OK;
out:
  if (r != KMS_OK && h->owner_open) {
    (void)h->p11->C_CloseSession(h->owner);
    h->owner_open = false;
    h->logged_in = false;
  }
  return r;
}

/* recover: probe, and reset if the probe says so. Called with recover_mu held. */
static void recover(hsm *h) {
  char err[256] = "";
  CK_SESSION_INFO info;
  CK_RV rv = CKR_OK;
  int64_t t0, took;
  int r;

  if (!atomic_load(&h->need_reset)) {
    memset(&info, 0, sizeof(info));
    t0 = kms_mono_ms();
    if (pthread_mutex_lock(&h->owner_mu) != 0) {
      return;
    }
    rv = h->owner_open ? h->p11->C_GetSessionInfo(h->owner, &info) : CKR_SESSION_CLOSED;
    pthread_mutex_unlock(&h->owner_mu);
    took = kms_mono_ms() - t0;
    if (took > (int64_t)h->call_timeout_ms) {
      log_msg(LOG_WARN, "event=hsm_probe result=slow ms=%lld", (long long)took);
      return;
    }
    if (rv == CKR_OK && info.state == CKS_RW_USER_FUNCTIONS) {
      atomic_store(&h->down, 0);
      atomic_fetch_add(&h->recoveries, 1);
      log_msg(LOG_INFO, "event=hsm_recovered how=probe generation=%u", atomic_load(&h->gen));
      return;
    }
  }
  if (pthread_rwlock_wrlock(&h->reset_lock) != 0) {
    return;
  }
  if (pthread_mutex_lock(&h->owner_mu) != 0) {
    pthread_rwlock_unlock(&h->reset_lock);
    return;
  }
  t0 = kms_mono_ms();
  r = reset(h, err, sizeof(err));
  took = kms_mono_ms() - t0;
  if (r == KMS_OK) {
    /* Whatever was made in the old generation is gone or must not be touched. */
    atomic_fetch_add(&h->gen, 1);
    atomic_store(&h->need_reset, 0);
    atomic_store(&h->down, 0);
    atomic_fetch_add(&h->recoveries, 1);
  }
  pthread_mutex_unlock(&h->owner_mu);
  pthread_rwlock_unlock(&h->reset_lock);
  if (r == KMS_OK) {
    log_msg(LOG_INFO, "event=hsm_recovered how=reset generation=%u ms=%lld",
            atomic_load(&h->gen), (long long)took);
  } else {
    /* The reason may quote a token label: keep the log line's own quoting intact. */
    for (char *q = err; *q != '\0'; q++) {
      *q = *q == '"' ? '\'' : *q;
    }
    log_msg(LOG_WARN, "event=hsm_recovery_failed reason=\"%s\" retry_ms=%d", err, RETRY_MS);
  }
}

static void maybe_recover(hsm *h) {
  int64_t now;

  if (!atomic_load(&h->down)) {
    return;
  }
  now = kms_mono_ms();
  if (now < atomic_load(&h->next_try_ms) || pthread_mutex_trylock(&h->recover_mu) != 0) {
    return; /* not yet, or someone else is at it: fail fast */
  }
  if (atomic_load(&h->down) && now >= atomic_load(&h->next_try_ms)) {
    atomic_store(&h->next_try_ms, now + RETRY_MS);
    recover(h);
  }
  pthread_mutex_unlock(&h->recover_mu);
}

/* One operation on a session: from enter (ready to call) to leave. */
struct call {
  int64_t t0;
  bool locked;
};

/*
 * enter makes |s| usable: fails fast while the HSM is down (after giving
 * recovery its chance), reopens the session if the generation moved on, and
 * holds reset_lock shared until leave.
 */
static int enter(hsm_session *s, struct call *c) {
  hsm *h = s->h;
  CK_RV rv;
  unsigned gen;

  c->locked = false;
  maybe_recover(h);
  if (atomic_load(&h->down)) {
    return KMS_ERR_HSM;
  }
  if (pthread_rwlock_rdlock(&h->reset_lock) != 0) {
    return KMS_ERR_INTERNAL;
  }
  c->locked = true;
  gen = atomic_load(&h->gen);
  if (s->stale && s->gen == gen && s->sh != CK_INVALID_HANDLE) {
    (void)h->p11->C_CloseSession(s->sh); /* drops whatever operation it still holds */
    s->gen = gen - 1;                    /* reopen below */
  }
  s->stale = false;
  if (s->gen != gen) {
    /* The old handle died in the reset (C_CloseAllSessions), or was closed above. */
    s->sh = CK_INVALID_HANDLE;
    rv = chk(h, "C_OpenSession", h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                                       NULL, NULL, &s->sh));
    if (rv != CKR_OK) {
      s->sh = CK_INVALID_HANDLE;
      pthread_rwlock_unlock(&h->reset_lock);
      c->locked = false;
      return ckr_to_err(rv);
    }
    s->gen = gen;
  }
  c->t0 = kms_mono_ms();
  return KMS_OK;
}

static void leave(hsm_session *s, struct call *c) {
  hsm *h = s->h;
  int64_t took;
  char why[64];

  if (!c->locked) {
    return;
  }
  took = kms_mono_ms() - c->t0;
  pthread_rwlock_unlock(&h->reset_lock);
  c->locked = false;
  if (took > (int64_t)h->call_timeout_ms) {
    snprintf(why, sizeof(why), "call took %lld ms", (long long)took);
    mark_down(h, why, false);
  }
}

void hsm_set_call_timeout(hsm *h, unsigned ms) {
  if (h != NULL && ms > 0) {
    h->call_timeout_ms = ms;
  }
}

int hsm_ready(hsm_session *s) {
  struct call c = {0, false};
  int r;

  if (s == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = enter(s, &c);
  leave(s, &c);
  return r;
}

bool hsm_key_current(const hsm_session *s, hsm_key key) {
  CK_OBJECT_HANDLE obj;

  return s != NULL && untag_key(s->h, key, &obj);
}

bool hsm_status(hsm *h, char *why, size_t why_len, uint64_t *out_errors,
                uint64_t *out_recoveries) {
  bool up;

  if (out_errors != NULL) {
    *out_errors = atomic_load(&h->errors);
  }
  if (out_recoveries != NULL) {
    *out_recoveries = atomic_load(&h->recoveries);
  }
  up = !atomic_load(&h->down);
  if (why != NULL && why_len > 0) {
    why[0] = '\0';
    if (!up && pthread_mutex_lock(&h->why_mu) == 0) {
      snprintf(why, why_len, "%s", h->down_why);
      pthread_mutex_unlock(&h->why_mu);
    }
  }
  return up;
}

int hsm_open(hsm **out, const struct hsm_config *cfg, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  hsm *h = NULL;
  CK_RV rv;
  CK_C_GetFunctionList get_list = NULL;
  CK_C_INITIALIZE_ARGS init_args;
  size_t label_len;

  kms_set_err(err, err_len, "%s", "");
  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (cfg == NULL || cfg->module_path == NULL || cfg->token_label == NULL ||
      cfg->pin_file == NULL) {
    kms_set_err(err, err_len, "hsm: module path, token label and pin file are all required");
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  label_len = strlen(cfg->token_label);
  if (label_len == 0 || label_len > TOKEN_LABEL_LEN) {
    kms_set_err(err, err_len, "hsm: token label \"%s\" must be 1 to %d bytes", cfg->token_label,
            TOKEN_LABEL_LEN);
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  h = calloc(1, sizeof(*h));
  if (h == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if (pthread_mutex_init(&h->owner_mu, NULL) != 0) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  h->owner_mu_init = true;
  {
    /* Writer preference: a reset must not wait behind an endless stream of operations. */
    pthread_rwlockattr_t ra;
    if (pthread_rwlockattr_init(&ra) != 0) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int e = pthread_rwlock_init(&h->reset_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    if (e != 0) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    h->reset_lock_init = true;
  }
  if (pthread_mutex_init(&h->recover_mu, NULL) != 0) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  h->recover_mu_init = true;
  if (pthread_mutex_init(&h->why_mu, NULL) != 0) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  h->why_mu_init = true;
  atomic_init(&h->gen, 1);
  memcpy(h->token_label, cfg->token_label, label_len + 1);
  if (strlen(cfg->pin_file) >= sizeof(h->pin_file)) {
    kms_set_err(err, err_len, "hsm: pin file path too long");
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  snprintf(h->pin_file, sizeof(h->pin_file), "%s", cfg->pin_file);
  h->call_timeout_ms = CALL_TIMEOUT_MS_DEFAULT;

  h->dl = dlopen(cfg->module_path, RTLD_NOW | RTLD_LOCAL);
  if (h->dl == NULL) {
    kms_set_err(err, err_len, "cannot load PKCS#11 module %s: %s", cfg->module_path, dlerror());
    r = KMS_ERR_HSM;
    goto out;
  }
  *(void **)&get_list = dlsym(h->dl, "C_GetFunctionList");
  if (get_list == NULL) {
    kms_set_err(err, err_len, "%s is not a PKCS#11 module (no C_GetFunctionList)",
            cfg->module_path);
    r = KMS_ERR_HSM;
    goto out;
  }
  rv = get_list(&h->p11);
  if (rv != CKR_OK || h->p11 == NULL) {
    r = ckr_fail(err, err_len, "C_GetFunctionList", rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
    goto out;
  }
  /* Native OS locks: worker threads call the module concurrently. */
  memset(&init_args, 0, sizeof(init_args));
  init_args.flags = CKF_OS_LOCKING_OK;
  rv = h->p11->C_Initialize(&init_args);
  if (rv == CKR_OK) {
    h->finalize = true;
  } else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    /* ALREADY_INITIALIZED: libp11 in this process got there first and will finalize. */
    r = ckr_fail(err, err_len, "C_Initialize", rv);
    goto out;
  }
  if ((r = find_slot(h, cfg->token_label, err, err_len)) != KMS_OK ||
      (r = pick_mechanisms(h, cfg->token_label, err, err_len)) != KMS_OK) {
    goto out;
  }
  rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                             &h->owner);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_OpenSession", rv);
    goto out;
  }
  h->owner_open = true;
  if ((r = login(h, cfg->pin_file, err, err_len)) != KMS_OK ||
      (r = ensure_root(h, cfg->root_version, !cfg->require_root, err, err_len)) != KMS_OK) {
    goto out;
  }
  *out = h;
  h = NULL;
  r = KMS_OK;
out:
  hsm_close(h);
  return r;
}

void hsm_close(hsm *h) {
  if (h == NULL) {
    return;
  }
  if (h->p11 != NULL && h->owner_open) {
    if (h->logged_in) {
      (void)h->p11->C_Logout(h->owner);
    }
    /* Closing the owner session destroys the loaded KEKs; token objects stay. */
    (void)h->p11->C_CloseSession(h->owner);
  }
  if (h->p11 != NULL && h->finalize) {
    (void)h->p11->C_Finalize(NULL);
  }
  if (h->dl != NULL) {
    dlclose(h->dl);
  }
  if (h->owner_mu_init) {
    pthread_mutex_destroy(&h->owner_mu);
  }
  if (h->reset_lock_init) {
    pthread_rwlock_destroy(&h->reset_lock);
  }
  if (h->recover_mu_init) {
    pthread_mutex_destroy(&h->recover_mu);
  }
  if (h->why_mu_init) {
    pthread_mutex_destroy(&h->why_mu);
  }
  free(h);
}

int hsm_session_open(hsm *h, hsm_session **out) {
  int r = KMS_ERR_INTERNAL;
  hsm_session *s = NULL;
  CK_RV rv;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (h == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  s->h = h;
  /* No login here: login state belongs to the application, not the session. */
  if (pthread_rwlock_rdlock(&h->reset_lock) != 0) {
    goto out;
  }
  s->gen = atomic_load(&h->gen);
  rv = chk(h, "C_OpenSession", h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                                     NULL, NULL, &s->sh));
  pthread_rwlock_unlock(&h->reset_lock);
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  *out = s;
  s = NULL;
  r = KMS_OK;
out:
  free(s);
  return r;
}

void hsm_session_close(hsm_session *s) {
  if (s == NULL) {
    return;
  }
  /* A session of an older generation died in the reset; its number may be reused. */
  if (pthread_rwlock_rdlock(&s->h->reset_lock) == 0) {
    if (s->gen == atomic_load(&s->h->gen) && s->sh != CK_INVALID_HANDLE) {
      (void)s->h->p11->C_CloseSession(s->sh);
    }
    pthread_rwlock_unlock(&s->h->reset_lock);
  }
  free(s);
}

/*
 * kek_template fills |t| (capacity 12) with the attributes of a KEK as a
 * session object: generated for, or unwrapped under, a root of kind
 * |trusted|. Under a trusted root the KEK is extractable but
 * CKA_WRAP_WITH_TRUSTED, so only a trusted key (a root) can ever wrap it, and
 * the template equals the root's unwrap template (the module refuses any
 * other). Under a legacy root it is not extractable once loaded; at
 * generation it must be extractable so that the root may wrap it.
 */
static CK_ULONG kek_template(CK_ATTRIBUTE *t, bool trusted, bool generate, CK_OBJECT_CLASS *cls,
                             CK_KEY_TYPE *kt, CK_ULONG *len) {
  static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG n = 0;

  *cls = CKO_SECRET_KEY;
  *kt = CKK_AES;
  *len = KEK_LEN;
  t[n++] = (CK_ATTRIBUTE){CKA_CLASS, cls, sizeof(*cls)};
  t[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, kt, sizeof(*kt)};
  if (generate) {
    t[n++] = (CK_ATTRIBUTE){CKA_VALUE_LEN, len, sizeof(*len)};
  }
  t[n++] = (CK_ATTRIBUTE){CKA_TOKEN, &no, sizeof(no)};
  t[n++] = (CK_ATTRIBUTE){CKA_PRIVATE, &yes, sizeof(yes)};
  t[n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, sizeof(yes)};
  t[n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, trusted || generate ? &yes : &no, sizeof(yes)};
  if (trusted) {
    t[n++] = (CK_ATTRIBUTE){CKA_WRAP_WITH_TRUSTED, &yes, sizeof(yes)};
  }
  t[n++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &yes, sizeof(yes)};
  t[n++] = (CK_ATTRIBUTE){CKA_DECRYPT, &yes, sizeof(yes)};
  t[n++] = (CK_ATTRIBUTE){CKA_WRAP, &no, sizeof(no)};
  t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP, &no, sizeof(no)};
  return n;
}

/* wrap_under wraps |kek| under |root| on |sh| into |out_token|; the caller holds a call. */
static int wrap_under(hsm *h, CK_SESSION_HANDLE sh, const struct root_key *root,
                      CK_OBJECT_HANDLE kek, uint8_t *out_token, size_t *out_token_len,
                      uint32_t *out_mech, uint32_t *out_root) {
  CK_MECHANISM wrap = {h->wrap_mech, NULL, 0};
  uint8_t buf[HSM_KEY_TOKEN_MAX];
  CK_ULONG buf_len = sizeof(buf);
  CK_RV rv;

  rv = chk(h, "C_WrapKey", h->p11->C_WrapKey(sh, &wrap, root->obj, kek, buf, &buf_len));
  if (rv != CKR_OK) {
    /* BUFFER_TOO_SMALL here means HSM_KEY_TOKEN_MAX is wrong for this module: a bug. */
    return ckr_to_err(rv);
  }
  if (buf_len == 0 || buf_len > sizeof(buf)) {
    return KMS_ERR_INTERNAL;
  }
  memcpy(out_token, buf, buf_len);
  *out_token_len = buf_len;
  *out_mech = (uint32_t)h->wrap_mech;
  if (out_root != NULL) {
    *out_root = root->version;
  }
  return KMS_OK;
}

int hsm_kek_generate(hsm_session *s, uint8_t *out_token, size_t *out_token_len,
                     uint32_t *out_mech, uint32_t *out_root) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  hsm *h;
  CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
  CK_OBJECT_CLASS cls;
  CK_KEY_TYPE kt;
  CK_ULONG len;
  CK_ATTRIBUTE tmpl[12];
  CK_ULONG n_tmpl;
  CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
  const struct root_key *root;
  struct call c = {0, false};

  if (out_token_len != NULL) {
    *out_token_len = 0;
  }
  if (out_mech != NULL) {
    *out_mech = 0;
  }
  if (out_root != NULL) {
    *out_root = 0;
  }
  if (s == NULL || out_token == NULL || out_token_len == NULL || out_mech == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  h = s->h;
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  if ((root = root_of(h, 0)) == NULL) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  /* The object lives for this call only. */
  n_tmpl = kek_template(tmpl, root->trusted, true, &cls, &kt, &len);
  rv = chk(h, "C_GenerateKey", h->p11->C_GenerateKey(s->sh, &gen, tmpl, n_tmpl, &kek));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  r = wrap_under(h, s->sh, root, kek, out_token, out_token_len, out_mech, out_root);
out:
  if (kek != CK_INVALID_HANDLE) {
    (void)s->h->p11->C_DestroyObject(s->sh, kek);
  }
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

static bool valid_token(const uint8_t *token, size_t token_len, uint32_t mech) {
  return token != NULL && token_len > 0 && token_len <= HSM_KEY_TOKEN_MAX &&
         (mech == CKM_AES_KEY_WRAP_KWP || mech == CKM_AES_KEY_WRAP_PAD);
}

/* unwrap_under unwraps a key token under |root| into a session object on |sh|. */
static int unwrap_under(hsm *h, CK_SESSION_HANDLE sh, const struct root_key *root,
                        const uint8_t *token, size_t token_len, uint32_t mech,
                        CK_OBJECT_HANDLE *out) {
  CK_MECHANISM unwrap = {mech, NULL, 0};
  CK_OBJECT_CLASS cls;
  CK_KEY_TYPE kt;
  CK_ULONG len;
  CK_ATTRIBUTE tmpl[12];
  CK_ULONG n_tmpl = kek_template(tmpl, root->trusted, false, &cls, &kt, &len);
  CK_RV rv;

  rv = chk(h, "C_UnwrapKey", h->p11->C_UnwrapKey(sh, &unwrap, root->obj, (CK_BYTE_PTR)token,
                                                 token_len, tmpl, n_tmpl, out));
  if (rv != CKR_OK) {
    *out = CK_INVALID_HANDLE;
    return ckr_is_auth_failure(rv) ? KMS_ERR_DECRYPT : ckr_to_err(rv);
  }
  return KMS_OK;
}

int hsm_kek_load(hsm_session *s, const uint8_t *token, size_t token_len, uint32_t mech,
                 uint32_t root_version, hsm_key *out_key) {
  int r = KMS_ERR_INTERNAL;
  hsm *h;
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  const struct root_key *root;
  bool locked = false;
  struct call c = {0, false};

  if (out_key != NULL) {
    *out_key = 0;
  }
  if (s == NULL || !valid_token(token, token_len, mech) || out_key == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  h = s->h;
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  if ((root = root_of(h, root_version)) == NULL) {
    /* Its root is not on the token (destroyed, or another token): it cannot open. */
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  if (pthread_mutex_lock(&h->owner_mu) != 0) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  locked = true;
  if ((r = unwrap_under(h, h->owner, root, token, token_len, mech, &obj)) != KMS_OK) {
    goto out;
  }
  if (((hsm_key)obj & ~KEY_HANDLE_MASK) != 0) {
    /* No room for the generation tag: a module with 64-bit handles needs another scheme. */
    log_msg(LOG_ERROR, "event=hsm_handle_too_large note=\"object handles above 2^48\"");
    r = KMS_ERR_HSM;
    goto out;
  }
  *out_key = tag_key(atomic_load(&h->gen), obj);
  obj = CK_INVALID_HANDLE;
  r = KMS_OK;
out:
  if (obj != CK_INVALID_HANDLE) {
    (void)s->h->p11->C_DestroyObject(s->h->owner, obj);
  }
  if (locked) {
    pthread_mutex_unlock(&s->h->owner_mu);
  }
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

int hsm_kek_rewrap(hsm_session *s, const uint8_t *token, size_t token_len, uint32_t mech,
                   uint32_t root_version, uint8_t *out_token, size_t *out_token_len,
                   uint32_t *out_mech, uint32_t *out_root) {
  int r = KMS_ERR_INTERNAL;
  hsm *h;
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  const struct root_key *from, *to;
  struct call c = {0, false};

  if (out_token_len != NULL) {
    *out_token_len = 0;
  }
  if (s == NULL || !valid_token(token, token_len, mech) || root_version == 0 ||
      out_token == NULL || out_token_len == NULL || out_mech == NULL || out_root == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  h = s->h;
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  from = root_of(h, root_version);
  to = root_of(h, 0);
  if (from == NULL || to == NULL) {
    r = KMS_ERR_NOT_FOUND;
    goto out;
  }
  if (!from->trusted || !to->trusted) {
    r = KMS_ERR_FAILED_PRECONDITION; /* a legacy root's KEKs cannot be wrapped again */
    goto out;
  }
  /* On this worker's session: the object is ours alone and dies with the call. */
  if ((r = unwrap_under(h, s->sh, from, token, token_len, mech, &obj)) != KMS_OK) {
    goto out;
  }
  r = wrap_under(h, s->sh, to, obj, out_token, out_token_len, out_mech, out_root);
out:
  if (obj != CK_INVALID_HANDLE) {
    (void)s->h->p11->C_DestroyObject(s->sh, obj);
  }
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

int hsm_selftest_key_import(hsm_session *s, const uint8_t *key, size_t len, hsm_key *out_key) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_TOKEN, &no, sizeof(no)},       {CKA_PRIVATE, &yes, sizeof(yes)},
      {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
      {CKA_ENCRYPT, &yes, sizeof(yes)},   {CKA_DECRYPT, &yes, sizeof(yes)},
      {CKA_WRAP, &no, sizeof(no)},        {CKA_UNWRAP, &no, sizeof(no)},
      {CKA_VALUE, (void *)key, len},
  };
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  struct call c = {0, false};
  bool locked = false;

  if (out_key != NULL) {
    *out_key = 0;
  }
  if (s == NULL || key == NULL || (len != 16 && len != 24 && len != 32) || out_key == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  /* On the owner session, like loaded KEKs, so that hsm_kek_unload frees it. */
  if (pthread_mutex_lock(&s->h->owner_mu) != 0) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  locked = true;
  rv = chk(s->h, "C_CreateObject",
           s->h->p11->C_CreateObject(s->h->owner, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &obj));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  if (((hsm_key)obj & ~KEY_HANDLE_MASK) != 0) {
    (void)s->h->p11->C_DestroyObject(s->h->owner, obj);
    r = KMS_ERR_HSM;
    goto out;
  }
  *out_key = tag_key(atomic_load(&s->h->gen), obj);
  r = KMS_OK;
out:
  if (locked) {
    pthread_mutex_unlock(&s->h->owner_mu);
  }
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

void hsm_kek_unload(hsm_session *s, hsm_key key) {
  struct call c = {0, false};
  CK_OBJECT_HANDLE obj;

  if (s == NULL || key == 0) {
    return;
  }
  if (enter(s, &c) != KMS_OK) {
    return; /* down: the object goes with the old owner session at the reset */
  }
  /* A handle of an older generation died with its owner session; its number may be reused. */
  if (untag_key(s->h, key, &obj) && pthread_mutex_lock(&s->h->owner_mu) == 0) {
    (void)chk(s->h, "C_DestroyObject", s->h->p11->C_DestroyObject(s->h->owner, obj));
    pthread_mutex_unlock(&s->h->owner_mu);
  }
  leave(s, &c);
}

int hsm_random(hsm_session *s, uint8_t *out, size_t len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  struct call c = {0, false};

  if (s == NULL || (out == NULL && len > 0)) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  if (len == 0) {
    r = KMS_OK;
    goto out;
  }
  if ((r = enter(s, &c)) != KMS_OK) {
    OPENSSL_cleanse(out, len);
    goto out;
  }
  rv = chk(s->h, "C_GenerateRandom", s->h->p11->C_GenerateRandom(s->sh, out, len));
  if (rv != CKR_OK) {
    OPENSSL_cleanse(out, len);
    r = ckr_to_err(rv);
    goto out;
  }
  r = KMS_OK;
out:
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

static void gcm_mech(CK_MECHANISM *m, CK_GCM_PARAMS *p, const uint8_t iv[HSM_GCM_IV_LEN],
                     const uint8_t *aad, size_t aad_len) {
  /* The PKCS#11 2.40 errata layout with ulIvBits: SoftHSM2 rejects the older one. */
  memset(p, 0, sizeof(*p));
  p->pIv = (CK_BYTE_PTR)iv;
  p->ulIvLen = HSM_GCM_IV_LEN;
  p->ulIvBits = HSM_GCM_IV_LEN * 8;
  p->pAAD = aad_len > 0 ? (CK_BYTE_PTR)aad : NULL;
  p->ulAADLen = aad_len;
  p->ulTagBits = HSM_GCM_TAG_LEN * 8;
  m->mechanism = CKM_AES_GCM;
  m->pParameter = p;
  m->ulParameterLen = sizeof(*p);
}

int hsm_gcm_encrypt(hsm_session *s, hsm_key key, const uint8_t iv[HSM_GCM_IV_LEN],
                    const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                    uint8_t *out) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_MECHANISM m;
  CK_GCM_PARAMS p;
  uint8_t empty = 0;
  CK_ULONG out_len;
  struct call c = {0, false};
  CK_OBJECT_HANDLE obj;

  if (s == NULL || key == 0 || iv == NULL || (aad == NULL && aad_len > 0) ||
      (pt == NULL && pt_len > 0) || out == NULL || pt_len > SIZE_MAX - HSM_GCM_TAG_LEN) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  out_len = pt_len + HSM_GCM_TAG_LEN;
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  if (!untag_key(s->h, key, &obj)) {
    r = KMS_ERR_HSM; /* loaded before a reset: the caller drops it and loads it again */
    goto out;
  }
  gcm_mech(&m, &p, iv, aad, aad_len);
  rv = chk(s->h, "C_EncryptInit", s->h->p11->C_EncryptInit(s->sh, &m, obj));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  /* SoftHSM2 refuses a NULL input even when it is empty. */
  rv = chk(s->h, "C_Encrypt",
           s->h->p11->C_Encrypt(s->sh, pt_len > 0 ? (CK_BYTE_PTR)pt : &empty, pt_len, out,
                                &out_len));
  if (rv != CKR_OK) {
    mark_stale(s);
    r = ckr_to_err(rv);
    goto out;
  }
  if (out_len != pt_len + HSM_GCM_TAG_LEN) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  r = KMS_OK;
out:
  if (s != NULL) {
    leave(s, &c);
  }
  if (r != KMS_OK && out != NULL && pt_len <= SIZE_MAX - HSM_GCM_TAG_LEN) {
    OPENSSL_cleanse(out, pt_len + HSM_GCM_TAG_LEN);
  }
  return r;
}

int hsm_gcm_decrypt(hsm_session *s, hsm_key key, const uint8_t iv[HSM_GCM_IV_LEN],
                    const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len,
                    uint8_t *out) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_MECHANISM m;
  CK_GCM_PARAMS p;
  uint8_t *tmp = NULL;
  size_t tmp_cap = 0;
  CK_ULONG tmp_len = 0;
  bool have_out = out != NULL && ct_len >= HSM_GCM_TAG_LEN;
  struct call c = {0, false};
  CK_OBJECT_HANDLE obj;

  if (s == NULL || key == 0 || iv == NULL || (aad == NULL && aad_len > 0) || ct == NULL ||
      ct_len < HSM_GCM_TAG_LEN || out == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  /*
   * Modules ask for room for ciphertext||tag even though only the plaintext
   * comes back (SoftHSM2 does): decrypt into a scratch buffer of that size,
   * allocated before C_DecryptInit so no failure leaves an operation active.
   */
  tmp_cap = ct_len;
  tmp = malloc(tmp_cap);
  if (tmp == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  if (!untag_key(s->h, key, &obj)) {
    r = KMS_ERR_HSM; /* loaded before a reset: the caller drops it and loads it again */
    goto out;
  }
  gcm_mech(&m, &p, iv, aad, aad_len);
  rv = chk(s->h, "C_DecryptInit", s->h->p11->C_DecryptInit(s->sh, &m, obj));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  tmp_len = tmp_cap;
  rv = chk(s->h, "C_Decrypt", s->h->p11->C_Decrypt(s->sh, (CK_BYTE_PTR)ct, ct_len, tmp, &tmp_len));
  if (rv == CKR_BUFFER_TOO_SMALL && tmp_len > tmp_cap && tmp_len <= ct_len + 64) {
    /* The operation is still active: finish it with the size the module asked for. */
    OPENSSL_cleanse(tmp, tmp_cap);
    free(tmp);
    tmp_cap = tmp_len;
    tmp = malloc(tmp_cap);
    if (tmp == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    rv = chk(s->h, "C_Decrypt",
             s->h->p11->C_Decrypt(s->sh, (CK_BYTE_PTR)ct, ct_len, tmp, &tmp_len));
  }
  if (rv != CKR_OK) {
    if (!ckr_is_auth_failure(rv)) {
      mark_stale(s); /* a bad tag ends the operation; anything else may not have */
    }
    r = ckr_is_auth_failure(rv) ? KMS_ERR_DECRYPT : ckr_to_err(rv);
    goto out;
  }
  if (tmp_len != ct_len - HSM_GCM_TAG_LEN) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  memcpy(out, tmp, tmp_len);
  r = KMS_OK;
out:
  if (s != NULL) {
    leave(s, &c);
  }
  if (tmp != NULL) {
    OPENSSL_cleanse(tmp, tmp_cap);
    free(tmp);
  }
  if (r != KMS_OK && have_out) {
    OPENSSL_cleanse(out, ct_len - HSM_GCM_TAG_LEN);
  }
  return r;
}

int hsm_root_attributes(hsm_session *s, bool *out_sensitive, bool *out_extractable) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_SENSITIVE, &sens, sizeof(sens)},
      {CKA_EXTRACTABLE, &extr, sizeof(extr)},
  };
  const struct root_key *root;
  struct call c = {0, false};

  if (s == NULL || out_sensitive == NULL || out_extractable == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  if ((root = root_of(s->h, 0)) == NULL) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  rv = chk(s->h, "C_GetAttributeValue",
           s->h->p11->C_GetAttributeValue(s->sh, root->obj, tmpl, sizeof(tmpl) / sizeof(tmpl[0])));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  *out_sensitive = sens != CK_FALSE;
  *out_extractable = extr != CK_FALSE;
  r = KMS_OK;
out:
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

int hsm_ping(hsm_session *s) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_SESSION_INFO info;
  struct call c = {0, false};

  if (s == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  /* Health asks here: while down this is also what probes the HSM (enter). */
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  memset(&info, 0, sizeof(info));
  rv = chk(s->h, "C_GetSessionInfo", s->h->p11->C_GetSessionInfo(s->sh, &info));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  /* A token that reset answers but has forgotten our login: not usable either. */
  if (info.state != CKS_RW_USER_FUNCTIONS) {
    mark_down(s->h, "session lost its login", true);
    r = KMS_ERR_HSM;
    goto out;
  }
  r = KMS_OK;
out:
  if (s != NULL) {
    leave(s, &c);
  }
  return r;
}

/* ---- Audit: checkpoint signing key and the context HMAC key ----------------- */

/* DER OIDs for CKA_EC_PARAMS: prime256v1, and id-Ed25519 (RFC 8410). */
static const uint8_t oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
/* PKCS#11 3.0 also names the curve by PrintableString "edwards25519"; older modules want that. */
static const uint8_t str_ed25519[] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's',
                                      '2',  '5',  '5', '1', '9'};
/* DER SPKI header of an uncompressed P-256 point. */
static const uint8_t p256_spki_prefix[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

static int find_class_id(hsm *h, CK_OBJECT_CLASS cls, const char *id, CK_OBJECT_HANDLE found[2],
                         CK_ULONG *out_n, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_ID, (void *)id, strlen(id)},
  };
  bool active = false;

  *out_n = 0;
  rv = h->p11->C_FindObjectsInit(h->owner, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_FindObjectsInit", rv);
    goto out;
  }
  active = true;
  rv = h->p11->C_FindObjects(h->owner, found, 2, out_n);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_FindObjects", rv);
    goto out;
  }
  r = KMS_OK;
out:
  if (active) {
    rv = h->p11->C_FindObjectsFinal(h->owner);
    if (rv != CKR_OK && r == KMS_OK) {
      r = ckr_fail(err, err_len, "C_FindObjectsFinal", rv);
    }
  }
  return r;
}

/* find_one: 0 or 1 object of |cls| with |id|; two is an error (ambiguous, maybe planted). */
static int find_one(hsm *h, CK_OBJECT_CLASS cls, const char *id, CK_OBJECT_HANDLE *out,
                    char *err, size_t err_len) {
  int r;
  CK_OBJECT_HANDLE found[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
  CK_ULONG n = 0;

  *out = CK_INVALID_HANDLE;
  if ((r = find_class_id(h, cls, id, found, &n, err, err_len)) != KMS_OK) {
    return r;
  }
  if (n > 1) {
    kms_set_err(err, err_len, "more than one object with CKA_ID %s: ambiguous, refusing", id);
    return KMS_ERR_FAILED_PRECONDITION;
  }
  *out = n == 1 ? found[0] : CK_INVALID_HANDLE;
  return KMS_OK;
}

static bool has_mech(hsm *h, CK_MECHANISM_TYPE mech, CK_FLAGS need) {
  CK_MECHANISM_INFO info;

  memset(&info, 0, sizeof(info));
  return h->p11->C_GetMechanismInfo(h->slot, mech, &info) == CKR_OK &&
         (info.flags & need) == need;
}

static int gen_signing_pair(hsm *h, const char *id, int type, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv = CKR_OK;
  CK_MECHANISM mech = {type == HSM_SIG_ED25519 ? CKM_EC_EDWARDS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN,
                       NULL, 0};
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
  const uint8_t *params[2];
  size_t params_len[2];
  int n_params;

  if (type == HSM_SIG_ED25519) {
    params[0] = oid_ed25519;
    params_len[0] = sizeof(oid_ed25519);
    params[1] = str_ed25519;
    params_len[1] = sizeof(str_ed25519);
    n_params = 2;
  } else {
    params[0] = oid_p256;
    params_len[0] = sizeof(oid_p256);
    n_params = 1;
  }
  for (int i = 0; i < n_params; i++) {
    CK_ATTRIBUTE pub_tmpl[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},
        {CKA_EC_PARAMS, (void *)params[i], params_len[i]},
        {CKA_ID, (void *)id, strlen(id)},
        {CKA_LABEL, (void *)id, strlen(id)},
    };
    /* Sign only, never leaves the HSM, and nobody may later relax that. */
    CK_ATTRIBUTE priv_tmpl[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
        {CKA_MODIFIABLE, &no, sizeof(no)},
        {CKA_ID, (void *)id, strlen(id)},
        {CKA_LABEL, (void *)id, strlen(id)},
    };
    rv = h->p11->C_GenerateKeyPair(h->owner, &mech, pub_tmpl, sizeof(pub_tmpl) / sizeof(pub_tmpl[0]),
                                   priv_tmpl, sizeof(priv_tmpl) / sizeof(priv_tmpl[0]), &pub, &priv);
    if (rv == CKR_OK) {
      break;
    }
  }
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_GenerateKeyPair", rv);
    goto out;
  }
  r = KMS_OK;
out:
  return r;
}

/* ec_point_raw strips the DER OCTET STRING some modules wrap CKA_EC_POINT in. */
static int ec_point_raw(const uint8_t *p, size_t len, size_t want, const uint8_t **out) {
  if (len == want) {
    *out = p;
    return KMS_OK;
  }
  if (len == want + 2 && p[0] == 0x04 && p[1] == want) {
    *out = p + 2;
    return KMS_OK;
  }
  return KMS_ERR_HSM;
}

int hsm_signing_key_open(hsm *h, const char *id, int prefer, struct hsm_signing_key *out,
                         char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
  CK_KEY_TYPE kt = 0;
  CK_BBOOL sens = CK_FALSE, extr = CK_TRUE, sign = CK_FALSE;
  uint8_t point[2 + 65 + 8];
  const uint8_t *raw = NULL;
  bool locked = false;
  int type;

  kms_set_err(err, err_len, "%s", "");
  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (h == NULL || id == NULL || id[0] == '\0') {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  if (pthread_mutex_lock(&h->owner_mu) != 0) {
    goto out;
  }
  locked = true;
  if ((r = find_one(h, CKO_PRIVATE_KEY, id, &priv, err, err_len)) != KMS_OK) {
    goto out;
  }
  if (priv == CK_INVALID_HANDLE) {
    bool ed = has_mech(h, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) &&
              has_mech(h, CKM_EDDSA, CKF_SIGN);
    bool ec = has_mech(h, CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) &&
              has_mech(h, CKM_ECDSA, CKF_SIGN);
    type = prefer != HSM_SIG_AUTO ? prefer : ed ? HSM_SIG_ED25519 : HSM_SIG_ECDSA_P256;
    if ((type == HSM_SIG_ED25519 && !ed) || (type == HSM_SIG_ECDSA_P256 && !ec)) {
      kms_set_err(err, err_len, "PKCS#11 token offers neither Ed25519 (CKM_EDDSA) nor ECDSA P-256 "
                            "for the audit signing key");
      r = KMS_ERR_HSM;
      goto out;
    }
    if ((r = gen_signing_pair(h, id, type, err, err_len)) != KMS_OK ||
        (r = find_one(h, CKO_PRIVATE_KEY, id, &priv, err, err_len)) != KMS_OK) {
      goto out;
    }
  }
  if ((r = find_one(h, CKO_PUBLIC_KEY, id, &pub, err, err_len)) != KMS_OK) {
    goto out;
  }
  if (priv == CK_INVALID_HANDLE || pub == CK_INVALID_HANDLE) {
    kms_set_err(err, err_len, "audit signing key %s: private or public half missing", id);
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  {
    CK_ATTRIBUTE tmpl[] = {
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_SIGN, &sign, sizeof(sign)},
    };
    rv = h->p11->C_GetAttributeValue(h->owner, priv, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_GetAttributeValue", rv);
      goto out;
    }
  }
  if ((kt != CKK_EC_EDWARDS && kt != CKK_EC) || !sens || extr || !sign) {
    kms_set_err(err, err_len, "audit signing key %s is not a sensitive, non-extractable EC signing "
                          "key; refusing to use it", id);
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  type = kt == CKK_EC_EDWARDS ? HSM_SIG_ED25519 : HSM_SIG_ECDSA_P256;
  {
    CK_ATTRIBUTE a = {CKA_EC_POINT, point, sizeof(point)};
    rv = h->p11->C_GetAttributeValue(h->owner, pub, &a, 1);
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_GetAttributeValue(CKA_EC_POINT)", rv);
      goto out;
    }
    if (ec_point_raw(point, a.ulValueLen, type == HSM_SIG_ED25519 ? 32 : 65, &raw) != KMS_OK ||
        (type == HSM_SIG_ECDSA_P256 && raw[0] != 0x04)) {
      kms_set_err(err, err_len, "audit signing key %s: unexpected public key encoding", id);
      r = KMS_ERR_HSM;
      goto out;
    }
  }
  if (type == HSM_SIG_ED25519) {
    memcpy(out->pub, raw, 32);
    out->pub_len = 32;
  } else {
    memcpy(out->pub, p256_spki_prefix, sizeof(p256_spki_prefix));
    memcpy(out->pub + sizeof(p256_spki_prefix), raw, 65);
    out->pub_len = sizeof(p256_spki_prefix) + 65;
  }
  if (strlen(id) >= sizeof(out->id)) {
    kms_set_err(err, err_len, "signing key id %s too long", id);
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  out->priv = tag_key(atomic_load(&h->gen), priv);
  snprintf(out->id, sizeof(out->id), "%s", id);
  out->type = type;
  r = KMS_OK;
out:
  if (locked) {
    pthread_mutex_unlock(&h->owner_mu);
  }
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

/*
 * signing_handle: the private key's handle in the current generation. Token
 * object handles need not survive a reset (all sessions closed), so after one
 * the key is found again by its CKA_ID, once per generation. Called inside
 * enter/leave.
 */
static int signing_handle(hsm *h, const struct hsm_signing_key *k, CK_OBJECT_HANDLE *out) {
  int r = KMS_ERR_INTERNAL;
  unsigned gen = atomic_load(&h->gen);
  char err[128];

  if (untag_key(h, k->priv, out)) {
    return KMS_OK;
  }
  if (k->id[0] == '\0' || pthread_mutex_lock(&h->owner_mu) != 0) {
    return KMS_ERR_HSM;
  }
  if (h->sig_gen == gen && strcmp(h->sig_id, k->id) == 0 && h->sig_handle != CK_INVALID_HANDLE) {
    *out = h->sig_handle;
    r = KMS_OK;
    goto out;
  }
  r = find_one(h, CKO_PRIVATE_KEY, k->id, out, err, sizeof(err));
  if (r == KMS_OK && *out == CK_INVALID_HANDLE) {
    log_msg(LOG_ERROR, "event=signing_key_missing id=%s", k->id);
    r = KMS_ERR_HSM;
  }
  if (r == KMS_OK) {
    h->sig_handle = *out;
    h->sig_gen = gen;
    snprintf(h->sig_id, sizeof(h->sig_id), "%s", k->id);
  }
out:
  pthread_mutex_unlock(&h->owner_mu);
  return r;
}

int hsm_sign(hsm_session *s, const struct hsm_signing_key *k, const uint8_t *msg, size_t len,
             uint8_t *sig, size_t *sig_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
  uint8_t digest[32], rs[64];
  CK_ULONG rs_len = sizeof(rs);
  ECDSA_SIG *es = NULL;
  BIGNUM *br = NULL, *bs = NULL;
  uint8_t *p = sig;
  int der_len;
  struct call c = {0, false};
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;

  if (sig_len != NULL) {
    *sig_len = 0;
  }
  if (s == NULL || k == NULL || (msg == NULL && len > 0) || sig == NULL || sig_len == NULL ||
      (k->type != HSM_SIG_ED25519 && k->type != HSM_SIG_ECDSA_P256)) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  if ((r = enter(s, &c)) != KMS_OK) {
    goto out;
  }
  if ((r = signing_handle(s->h, k, &priv)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_INTERNAL;
  if (k->type == HSM_SIG_ED25519) {
    rv = chk(s->h, "C_SignInit", s->h->p11->C_SignInit(s->sh, &m, priv));
    if (rv != CKR_OK) {
      r = ckr_to_err(rv);
      goto out;
    }
    rs_len = sizeof(rs);
    rv = chk(s->h, "C_Sign", s->h->p11->C_Sign(s->sh, (CK_BYTE_PTR)msg, len, rs, &rs_len));
    if (rv != CKR_OK || rs_len != 64) {
      mark_stale(s);
      r = rv != CKR_OK ? ckr_to_err(rv) : KMS_ERR_HSM;
      goto out;
    }
    memcpy(sig, rs, 64);
    *sig_len = 64;
    r = KMS_OK;
    goto out;
  }
  /* CKM_ECDSA signs a digest we compute; it answers r||s, verifiers want DER. */
  if (EVP_Digest(msg, len, digest, NULL, EVP_sha256(), NULL) != 1) {
    goto out;
  }
  m.mechanism = CKM_ECDSA;
  rv = chk(s->h, "C_SignInit", s->h->p11->C_SignInit(s->sh, &m, priv));
  if (rv != CKR_OK) {
    r = ckr_to_err(rv);
    goto out;
  }
  rv = chk(s->h, "C_Sign", s->h->p11->C_Sign(s->sh, digest, sizeof(digest), rs, &rs_len));
  if (rv != CKR_OK || rs_len != 64) {
    mark_stale(s);
    r = rv != CKR_OK ? ckr_to_err(rv) : KMS_ERR_HSM;
    goto out;
  }
  if ((es = ECDSA_SIG_new()) == NULL || (br = BN_bin2bn(rs, 32, NULL)) == NULL ||
      (bs = BN_bin2bn(rs + 32, 32, NULL)) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  if (ECDSA_SIG_set0(es, br, bs) != 1) {
    goto out;
  }
  br = bs = NULL; /* owned by |es| now */
  der_len = i2d_ECDSA_SIG(es, NULL);
  if (der_len <= 0 || der_len > HSM_SIG_MAX || i2d_ECDSA_SIG(es, &p) != der_len) {
    goto out;
  }
  *sig_len = (size_t)der_len;
  r = KMS_OK;
out:
  if (s != NULL) {
    leave(s, &c);
  }
  ECDSA_SIG_free(es);
  BN_free(br);
  BN_free(bs);
  return r;
}

int hsm_hmac_derive(hsm *h, const char *id, const char *label, uint8_t out[32], char *err,
                    size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  CK_RV rv;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
  CK_MECHANISM mac = {CKM_SHA256_HMAC, NULL, 0};
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
  CK_ULONG len = 32, out_len = 32;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
  bool locked = false;

  kms_set_err(err, err_len, "%s", "");
  if (h == NULL || id == NULL || id[0] == '\0' || label == NULL || out == NULL) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  memset(out, 0, 32);
  if (pthread_mutex_lock(&h->owner_mu) != 0) {
    goto out;
  }
  locked = true;
  if ((r = find_one(h, CKO_SECRET_KEY, id, &key, err, err_len)) != KMS_OK) {
    goto out;
  }
  if (key == CK_INVALID_HANDLE) {
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},   {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)}, {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_VERIFY, &no, sizeof(no)},      {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_DECRYPT, &no, sizeof(no)},     {CKA_WRAP, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},      {CKA_DERIVE, &no, sizeof(no)},
        {CKA_MODIFIABLE, &no, sizeof(no)},  {CKA_ID, (void *)id, strlen(id)},
        {CKA_LABEL, (void *)id, strlen(id)},
    };
    rv = h->p11->C_GenerateKey(h->owner, &gen, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &key);
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_GenerateKey(generic secret)", rv);
      goto out;
    }
  }
  {
    CK_ATTRIBUTE tmpl[] = {
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
    };
    rv = h->p11->C_GetAttributeValue(h->owner, key, tmpl, 2);
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_GetAttributeValue", rv);
      goto out;
    }
    if (!sens || extr) {
      kms_set_err(err, err_len, "HMAC key %s is readable (not sensitive or extractable); refusing",
                  id);
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
  }
  rv = h->p11->C_SignInit(h->owner, &mac, key);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_SignInit(CKM_SHA256_HMAC)", rv);
    goto out;
  }
  rv = h->p11->C_Sign(h->owner, (CK_BYTE_PTR)label, strlen(label), out, &out_len);
  if (rv != CKR_OK || out_len != 32) {
    r = rv != CKR_OK ? ckr_fail(err, err_len, "C_Sign(CKM_SHA256_HMAC)", rv) : KMS_ERR_HSM;
    goto out;
  }
  r = KMS_OK;
out:
  if (locked) {
    pthread_mutex_unlock(&h->owner_mu);
  }
  if (r != KMS_OK && out != NULL) {
    OPENSSL_cleanse(out, 32);
  }
  return r;
}

/* ---- Root rotation (docs/LIFECYCLE.md, "Root key rotation") ----------------------- */

uint32_t hsm_root_current(hsm *h) {
  return h != NULL ? atomic_load(&h->root_cur) : 0;
}

/*
 * exclusive takes what a change of the root table needs: no operation in
 * flight (reset_lock exclusively) and the owner session (owner_mu). Fails fast
 * while the HSM is down.
 */
static int exclusive(hsm *h) {
  maybe_recover(h);
  if (atomic_load(&h->down)) {
    return KMS_ERR_HSM;
  }
  if (pthread_rwlock_wrlock(&h->reset_lock) != 0) {
    return KMS_ERR_INTERNAL;
  }
  if (pthread_mutex_lock(&h->owner_mu) != 0) {
    pthread_rwlock_unlock(&h->reset_lock);
    return KMS_ERR_INTERNAL;
  }
  return KMS_OK;
}

static void exclusive_end(hsm *h) {
  pthread_mutex_unlock(&h->owner_mu);
  pthread_rwlock_unlock(&h->reset_lock);
}

int hsm_root_list(hsm_session *s, struct hsm_root_info *out, size_t cap, size_t *out_n) {
  struct call c = {0, false};
  int r;

  *out_n = 0;
  if ((r = enter(s, &c)) != KMS_OK) {
    return r;
  }
  for (size_t i = 0; i < s->h->n_roots && i < cap; i++) {
    out[i].version = s->h->roots[i].version;
    out[i].trusted = s->h->roots[i].trusted;
    (*out_n)++;
  }
  leave(s, &c);
  return KMS_OK;
}

int hsm_root_rescan(hsm_session *s, char *err, size_t err_len) {
  struct root_key found[ROOTS_MAX];
  size_t n = 0;
  hsm *h = s->h;
  int r;

  if ((r = exclusive(h)) != KMS_OK) {
    kms_set_err(err, err_len, "the HSM is unavailable");
    return r;
  }
  r = load_roots(h, found, &n, atomic_load(&h->root_cur), err, err_len);
  if (r == KMS_OK && !has_root(found, n, atomic_load(&h->root_cur))) {
    /* Keep the table that works rather than lose the current root's handle. */
    kms_set_err(err, err_len, "the current root key %s%u is no longer on the token",
                ROOT_ID_PREFIX, (unsigned)atomic_load(&h->root_cur));
    r = KMS_ERR_FAILED_PRECONDITION;
  } else if (r == KMS_OK) {
    memcpy(h->roots, found, n * sizeof(found[0]));
    h->n_roots = n;
  }
  exclusive_end(h);
  return r;
}

int hsm_root_use(hsm_session *s, uint32_t version, char *err, size_t err_len) {
  const struct root_key *k;
  hsm *h = s->h;
  int r;

  if ((r = exclusive(h)) != KMS_OK) {
    kms_set_err(err, err_len, "the HSM is unavailable");
    return r;
  }
  k = root_of(h, version);
  if (version == 0 || k == NULL) {
    kms_set_err(err, err_len, "root key %s%u is not on the token", ROOT_ID_PREFIX,
                (unsigned)version);
    r = KMS_ERR_FAILED_PRECONDITION;
  } else if (!k->trusted) {
    kms_set_err(err, err_len,
                "root key %s%u is not CKA_TRUSTED: only a root made by the key ceremony "
                "(kmsctl root create) can take over",
                ROOT_ID_PREFIX, (unsigned)version);
    r = KMS_ERR_FAILED_PRECONDITION;
  } else {
    atomic_store(&h->root_cur, version);
    r = KMS_OK;
  }
  exclusive_end(h);
  return r;
}

int hsm_root_destroy(hsm_session *s, uint32_t version, char *err, size_t err_len) {
  hsm *h = s->h;
  size_t i;
  CK_RV rv;
  int r;

  if ((r = exclusive(h)) != KMS_OK) {
    kms_set_err(err, err_len, "the HSM is unavailable");
    return r;
  }
  for (i = 0; i < h->n_roots && h->roots[i].version != version; i++) {
  }
  if (version == 0 || version == atomic_load(&h->root_cur)) {
    kms_set_err(err, err_len, "refusing to destroy the current root key");
    r = KMS_ERR_FAILED_PRECONDITION;
  } else if (i == h->n_roots) {
    r = KMS_ERR_NOT_FOUND; /* gone already (another kmsd, or by hand) */
  } else {
    rv = chk(h, "C_DestroyObject", h->p11->C_DestroyObject(h->owner, h->roots[i].obj));
    if (rv != CKR_OK) {
      r = ckr_fail(err, err_len, "C_DestroyObject", rv);
    } else {
      memmove(&h->roots[i], &h->roots[i + 1], (h->n_roots - i - 1) * sizeof(h->roots[0]));
      h->n_roots--;
      r = KMS_OK;
    }
  }
  exclusive_end(h);
  return r;
}

/*
 * create_trusted_root makes root |version| as the security officer: a public
 * token object (an SO session can create no other), CKA_TRUSTED, with the
 * unwrap template of every KEK under it (kek_template, trusted).
 */
static int create_trusted_root(hsm *h, uint32_t version, char *err, size_t err_len) {
  char id[ROOT_ID_MAX];
  CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_ULONG len = KEK_LEN;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE unwrap_tmpl[] = {
      {CKA_TOKEN, &no, sizeof(no)},         {CKA_PRIVATE, &yes, sizeof(yes)},
      {CKA_SENSITIVE, &yes, sizeof(yes)},   {CKA_EXTRACTABLE, &yes, sizeof(yes)},
      {CKA_WRAP_WITH_TRUSTED, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &yes, sizeof(yes)},     {CKA_DECRYPT, &yes, sizeof(yes)},
      {CKA_WRAP, &no, sizeof(no)},          {CKA_UNWRAP, &no, sizeof(no)},
  };
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_VALUE_LEN, &len, sizeof(len)},
      {CKA_ID, id, 0},
      {CKA_LABEL, id, 0},
      {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_PRIVATE, &no, sizeof(no)},
      {CKA_TRUSTED, &yes, sizeof(yes)},
      {CKA_SENSITIVE, &yes, sizeof(yes)},
      {CKA_EXTRACTABLE, &no, sizeof(no)},
      {CKA_WRAP, &yes, sizeof(yes)},
      {CKA_UNWRAP, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &no, sizeof(no)},
      {CKA_DECRYPT, &no, sizeof(no)},
      {CKA_MODIFIABLE, &no, sizeof(no)},
      {CKA_COPYABLE, &no, sizeof(no)},
      {CKA_UNWRAP_TEMPLATE, unwrap_tmpl, sizeof(unwrap_tmpl)},
  };
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  struct root_key k;
  CK_RV rv;
  int r;

  snprintf(id, sizeof(id), ROOT_ID_PREFIX "%u", (unsigned)version);
  tmpl[3].ulValueLen = tmpl[4].ulValueLen = strlen(id);
  rv = h->p11->C_GenerateKey(h->owner, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &obj);
  if (rv != CKR_OK) {
    return ckr_fail(err, err_len, "C_GenerateKey", rv);
  }
  k.version = version;
  k.obj = obj;
  k.trusted = false;
  if ((r = check_root(h, h->owner, &k, err, err_len)) == KMS_OK && !k.trusted) {
    kms_set_err(err, err_len, "the token did not keep CKA_TRUSTED on %s", id);
    r = KMS_ERR_HSM;
  }
  if (r != KMS_OK) {
    (void)h->p11->C_DestroyObject(h->owner, obj);
  }
  return r;
}

/* newest_root: the highest root version |h->owner| sees, 0 if none. */
static int newest_root(hsm *h, uint32_t *out, char *err, size_t err_len) {
  struct root_key found[ROOTS_MAX];
  size_t n = 0;
  int r = scan_roots(h, h->owner, found, ROOTS_MAX, &n, err, err_len);

  for (size_t i = 0; r == KMS_OK && i < n; i++) {
    *out = found[i].version > *out ? found[i].version : *out;
  }
  return r;
}

int hsm_root_ceremony(const char *module_path, const char *token_label,
                      const char *user_pin_file, const char *so_pin_file,
                      uint32_t *out_version, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;
  hsm *h = NULL;
  CK_RV rv;
  CK_C_GetFunctionList get_list = NULL;
  uint32_t newest = 0;

  kms_set_err(err, err_len, "%s", "");
  *out_version = 0;
  if (module_path == NULL || token_label == NULL || so_pin_file == NULL ||
      strlen(token_label) == 0 || strlen(token_label) > TOKEN_LABEL_LEN) {
    kms_set_err(err, err_len, "module path, token label (1-32 bytes) and SO PIN file needed");
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if ((h = calloc(1, sizeof(*h))) == NULL) {
    return KMS_ERR_ALLOC;
  }
  h->dl = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
  if (h->dl == NULL) {
    kms_set_err(err, err_len, "cannot load PKCS#11 module %s: %s", module_path, dlerror());
    r = KMS_ERR_HSM;
    goto out;
  }
  *(void **)&get_list = dlsym(h->dl, "C_GetFunctionList");
  if (get_list == NULL || get_list(&h->p11) != CKR_OK || h->p11 == NULL) {
    kms_set_err(err, err_len, "%s is not a PKCS#11 module", module_path);
    r = KMS_ERR_HSM;
    goto out;
  }
  rv = h->p11->C_Initialize(NULL);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_Initialize", rv);
    goto out;
  }
  h->finalize = true;
  if ((r = find_slot(h, token_label, err, err_len)) != KMS_OK ||
      (r = pick_mechanisms(h, token_label, err, err_len)) != KMS_OK) {
    goto out;
  }
  rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                             &h->owner);
  if (rv != CKR_OK) {
    r = ckr_fail(err, err_len, "C_OpenSession", rv);
    goto out;
  }
  h->owner_open = true;
  /*
   * The security officer sees public objects only; a legacy root v1 (made by
   * kmsd) is private. With the user PIN the ceremony looks at those too, only
   * to number the new root after them; it makes nothing as the user.
   */
  if (user_pin_file != NULL) {
    if ((r = login(h, user_pin_file, err, err_len)) != KMS_OK ||
        (r = newest_root(h, &newest, err, err_len)) != KMS_OK) {
      goto out;
    }
    (void)h->p11->C_Logout(h->owner);
    h->logged_in = false;
  }
  if ((r = login_as(h, CKU_SO, so_pin_file, err, err_len)) != KMS_OK) {
    goto out;
  }
  if ((r = newest_root(h, &newest, err, err_len)) != KMS_OK) {
    goto out;
  }
  if (newest == UINT32_MAX) {
    kms_set_err(err, err_len, "no root version left");
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  if ((r = create_trusted_root(h, newest + 1, err, err_len)) != KMS_OK) {
    goto out;
  }
  *out_version = newest + 1;
  r = KMS_OK;
out:
  hsm_close(h);
  return r;
}
