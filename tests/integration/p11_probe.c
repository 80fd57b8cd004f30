/* Raw PKCS#11 for tests only: tries what an attacker with the token and its PIN would try. */
#include "p11_probe.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <softhsm/pkcs11.h>

/* open_user loads the module, finds the token by label and logs in as the user. */
static int
open_user(const char *module, const char *label, const char *pin_file, CK_FUNCTION_LIST_PTR *out_f,
          CK_SESSION_HANDLE *out_s)
{
  void *lib = dlopen(module, RTLD_NOW);
  if (lib == NULL) {
    return -1;
  }
  CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR f = NULL;
  if (gfl == NULL || gfl(&f) != CKR_OK) {
    return -1;
  }
  CK_C_INITIALIZE_ARGS ia;
  memset(&ia, 0, sizeof(ia));
  ia.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = f->C_Initialize(&ia);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    return -1;
  }
  CK_SLOT_ID slots[64];
  CK_ULONG ns = 64;
  CK_SLOT_ID slot = 0;
  int found = 0;
  f->C_GetSlotList(CK_TRUE, slots, &ns);
  for (CK_ULONG i = 0; i < ns && !found; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK) {
      char lab[33];
      memcpy(lab, ti.label, 32);
      lab[32] = '\0';
      for (int k = 31; k >= 0 && lab[k] == ' '; k--) {
        lab[k] = '\0';
      }
      if (strcmp(lab, label) == 0) {
        slot = slots[i];
        found = 1;
      }
    }
  }
  char pin[128] = "";
  FILE *pf = fopen(pin_file, "r");
  if (!found || pf == NULL || fgets(pin, sizeof(pin), pf) == NULL) {
    if (pf != NULL) {
      fclose(pf);
    }
    return -1;
  }
  fclose(pf);
  pin[strcspn(pin, "\r\n")] = '\0';
  if (f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, out_s) != CKR_OK) {
    return -1;
  }
  rv = f->C_Login(*out_s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    return -1;
  }
  *out_f = f;
  return 0; /* the process exits soon; no C_Finalize so the hsm module in-process is unaffected */
}

static int
find_root(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, uint32_t version, CK_OBJECT_HANDLE *out,
          CK_ULONG cap, CK_ULONG *out_n)
{
  char id[32];
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  snprintf(id, sizeof(id), "tenantkms-root-v%u", (unsigned)version);
  CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id, strlen(id)}};
  *out_n = 0;
  if (f->C_FindObjectsInit(s, find, 2) != CKR_OK) {
    return -1;
  }
  f->C_FindObjects(s, out, cap, out_n);
  f->C_FindObjectsFinal(s);
  return 0;
}

/* unwrap unwraps |token| under root |version|: as kmsd does, or as an extractable plain key. */
static CK_RV
unwrap(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, uint32_t version, const uint8_t *token,
       size_t token_len, uint32_t mech, int extractable, CK_OBJECT_HANDLE *kek)
{
  CK_OBJECT_HANDLE root;
  CK_ULONG n = 0;
  if (find_root(f, s, version, &root, 1, &n) != 0 || n != 1) {
    return CKR_KEY_HANDLE_INVALID;
  }
  CK_BBOOL trusted = CK_FALSE;
  CK_ATTRIBUTE ta = {CKA_TRUSTED, &trusted, sizeof(trusted)};
  (void)f->C_GetAttributeValue(s, root, &ta, 1);
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL t = CK_TRUE, fa = CK_FALSE;
  CK_BBOOL sensitive = extractable ? CK_FALSE : CK_TRUE;
  CK_BBOOL extract = extractable || trusted ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE tmpl[12] = {
      {CKA_CLASS, &cls, sizeof(cls)},  {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_TOKEN, &fa, sizeof(fa)},    {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
      {CKA_EXTRACTABLE, &extract, sizeof(extract)}, {CKA_DECRYPT, &t, sizeof(t)},
      {CKA_WRAP, &fa, sizeof(fa)},     {CKA_UNWRAP, &fa, sizeof(fa)},
  };
  CK_ULONG nt = 8;
  if (trusted && !extractable) {
    /* Exactly the root's unwrap template: the module refuses anything else. */
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_PRIVATE, &t, sizeof(t)};
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_WRAP_WITH_TRUSTED, &t, sizeof(t)};
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &t, sizeof(t)};
  }
  CK_MECHANISM m = {mech, NULL, 0};
  return f->C_UnwrapKey(s, &m, root, (CK_BYTE_PTR)token, token_len, tmpl, nt, kek);
}

int
p11_probe_unwrap_kek(const char *module, const char *label, const char *pin_file,
                     uint32_t root_version, const uint8_t *token, size_t token_len, uint32_t mech,
                     int extractable, uint8_t out[32])
{
  CK_FUNCTION_LIST_PTR f;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE kek;
  if (open_user(module, label, pin_file, &f, &s) != 0) {
    return -1;
  }
  if (unwrap(f, s, root_version, token, token_len, mech, extractable, &kek) != CKR_OK) {
    return 1;
  }
  int rc = 1;
  if (!extractable) {
    rc = 0;
  } else {
    CK_ATTRIBUTE val = {CKA_VALUE, out, 32};
    if (f->C_GetAttributeValue(s, kek, &val, 1) == CKR_OK && val.ulValueLen == 32) {
      rc = 0;
    }
  }
  f->C_DestroyObject(s, kek);
  return rc;
}

int
p11_probe_wrap_loaded_kek(const char *module, const char *label, const char *pin_file,
                          uint32_t root_version, const uint8_t *token, size_t token_len,
                          uint32_t mech, unsigned long *out_rv, unsigned long *out_read_rv)
{
  CK_FUNCTION_LIST_PTR f;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE kek, mine;
  if (open_user(module, label, pin_file, &f, &s) != 0 ||
      unwrap(f, s, root_version, token, token_len, mech, 0, &kek) != CKR_OK) {
    return -1;
  }
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_ULONG len = 32;
  CK_BBOOL t = CK_TRUE, fa = CK_FALSE;
  CK_ATTRIBUTE mt[] = {
      {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &fa, sizeof(fa)},
      {CKA_WRAP, &t, sizeof(t)},        {CKA_UNWRAP, &t, sizeof(t)},
      {CKA_EXTRACTABLE, &t, sizeof(t)}, {CKA_SENSITIVE, &fa, sizeof(fa)},
  };
  CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
  if (f->C_GenerateKey(s, &gen, mt, sizeof(mt) / sizeof(mt[0]), &mine) != CKR_OK) {
    f->C_DestroyObject(s, kek);
    return -1;
  }
  uint8_t buf[128], val[32];
  CK_ULONG buf_len = sizeof(buf);
  CK_MECHANISM m = {mech, NULL, 0};
  *out_rv = f->C_WrapKey(s, &m, mine, kek, buf, &buf_len);
  CK_ATTRIBUTE va = {CKA_VALUE, val, sizeof(val)};
  *out_read_rv = f->C_GetAttributeValue(s, kek, &va, 1);
  f->C_DestroyObject(s, mine);
  f->C_DestroyObject(s, kek);
  return 0;
}

int
p11_probe_count_root(const char *module, const char *label, const char *pin_file, uint32_t version)
{
  CK_FUNCTION_LIST_PTR f;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE found[4];
  CK_ULONG n = 0;
  if (open_user(module, label, pin_file, &f, &s) != 0 || find_root(f, s, version, found, 4, &n)) {
    return -1;
  }
  return (int)n;
}

int
p11_probe_make_root(const char *module, const char *label, const char *pin_file, uint32_t version,
                    int extractable_kek)
{
  CK_FUNCTION_LIST_PTR f;
  CK_SESSION_HANDLE s;
  if (open_user(module, label, pin_file, &f, &s) != 0) {
    return -1;
  }
  char id[32];
  snprintf(id, sizeof(id), "tenantkms-root-v%u", (unsigned)version);
  CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
  CK_ULONG len = 32;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  /* Everything a root must be, except what its template lets unwrapped KEKs become. */
  CK_ATTRIBUTE weak_tmpl[] = {
      {CKA_SENSITIVE, &yes, sizeof(yes)},
      {CKA_EXTRACTABLE, &yes, sizeof(yes)}, /* and no CKA_WRAP_WITH_TRUSTED */
  };
  CK_ATTRIBUTE tmpl[] = {
      {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ID, id, strlen(id)},
      {CKA_TOKEN, &yes, sizeof(yes)},     {CKA_PRIVATE, &yes, sizeof(yes)},
      {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
      {CKA_WRAP, &yes, sizeof(yes)},      {CKA_UNWRAP, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &no, sizeof(no)},     {CKA_DECRYPT, &no, sizeof(no)},
      {CKA_UNWRAP_TEMPLATE, weak_tmpl, sizeof(weak_tmpl)},
  };
  CK_ULONG n = sizeof(tmpl) / sizeof(tmpl[0]);
  CK_OBJECT_HANDLE obj;
  /* Without |extractable_kek|: no template at all (the last attribute left out). */
  return f->C_GenerateKey(s, &mech, tmpl, extractable_kek ? n : n - 1, &obj) == CKR_OK ? 0 : -1;
}
