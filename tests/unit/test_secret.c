/* Check suite for kms_secret, on both allocation paths: private locked pages and OpenSSL's secure heap. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_secret.h"

static int
all_zero(const uint8_t *p, size_t n)
{
  uint8_t acc = 0;
  for (size_t i = 0; i < n; i++) {
    acc |= p[i];
  }
  return acc == 0;
}

/* Each test in the "secure_heap" case runs in its own forked child, so the
 * heap it initialises does not leak into the "pages" case. */
static void
init_secure_heap(void)
{
  ck_assert_int_eq(CRYPTO_secure_malloc_init(65536, 16), 1);
  ck_assert_int_eq(CRYPTO_secure_malloc_initialized(), 1);
}

static void
check_new_is_zero_filled_and_writable(size_t len)
{
  kms_secret *s = kms_secret_new(len);
  ck_assert_ptr_nonnull(s);
  ck_assert_uint_eq(kms_secret_len(s), len);
  ck_assert_ptr_nonnull(kms_secret_data(s));
  ck_assert_ptr_eq(kms_secret_cdata(s), kms_secret_data(s));
  ck_assert(all_zero(kms_secret_cdata(s), len));
  memset(kms_secret_data(s), 0xA5, len); /* the whole length is ours to write */
  ck_assert_uint_eq(kms_secret_cdata(s)[len - 1], 0xA5);
  kms_secret_free(s);
}

static void
check_from_copies(void)
{
  uint8_t src[32];
  for (size_t i = 0; i < sizeof(src); i++) {
    src[i] = (uint8_t)(i * 7 + 1);
  }
  kms_secret *s = kms_secret_from(src, sizeof(src));
  ck_assert_ptr_nonnull(s);
  ck_assert_uint_eq(kms_secret_len(s), sizeof(src));
  ck_assert_mem_eq(kms_secret_cdata(s), src, sizeof(src));
  /* A copy, not an alias: changing the source leaves the secret alone. */
  ck_assert_ptr_ne(kms_secret_cdata(s), src);
  src[0] ^= 0xFF;
  ck_assert_uint_eq(kms_secret_cdata(s)[0], 1);
  kms_secret_free(s);
}

START_TEST(test_new_is_zero_filled_for_each_size)
{
  static const size_t lens[] = {1, 32, 4095, 4096};
  check_new_is_zero_filled_and_writable(lens[_i]);
}
END_TEST

START_TEST(test_new_rejects_zero_length)
{
  ck_assert_ptr_null(kms_secret_new(0));
}
END_TEST

START_TEST(test_new_rejects_length_over_4096)
{
  ck_assert_ptr_null(kms_secret_new(4097));
  ck_assert_ptr_null(kms_secret_new(SIZE_MAX));
}
END_TEST

START_TEST(test_from_copies_source_bytes)
{
  check_from_copies();
}
END_TEST

START_TEST(test_from_rejects_out_of_range_length)
{
  uint8_t src[1] = {1};
  ck_assert_ptr_null(kms_secret_from(src, 0));
  ck_assert_ptr_null(kms_secret_from(src, 4097));
}
END_TEST

START_TEST(test_free_null_is_noop)
{
  kms_secret_free(NULL);
  ck_assert(1); /* reaching here is the assertion: no crash */
}
END_TEST

START_TEST(test_without_secure_heap_data_is_not_from_secure_heap)
{
  ck_assert_int_eq(CRYPTO_secure_malloc_initialized(), 0);
  kms_secret *s = kms_secret_new(32);
  ck_assert_ptr_nonnull(s);
  ck_assert_int_eq(CRYPTO_secure_allocated(kms_secret_data(s)), 0);
  kms_secret_free(s);
}
END_TEST

/* Small secrets share locked slots (kms_secret.c): a freed one is wiped, a reused one is zero. */
START_TEST(test_small_secret_slots_are_wiped_and_reused_zeroed)
{
  ck_assert_int_eq(CRYPTO_secure_malloc_initialized(), 0);
  kms_secret *a = kms_secret_new(32);
  ck_assert_ptr_nonnull(a);
  uint8_t *p = kms_secret_data(a);
  memset(p, 0xAA, 32);
  kms_secret_free(a);
  /* The slot stays mapped: past the free-list link, nothing of the key is left. */
  for (size_t i = sizeof(void *); i < 64; i++) {
    ck_assert_uint_eq(p[i], 0);
  }
  kms_secret *b = kms_secret_new(32);
  ck_assert_ptr_nonnull(b);
  for (size_t i = 0; i < 32; i++) {
    ck_assert_uint_eq(kms_secret_cdata(b)[i], 0);
  }
  kms_secret_free(b);
}
END_TEST

/* More secrets alive than one region holds: all distinct, all usable. */
START_TEST(test_many_small_secrets_span_regions)
{
  enum { N = 2500 };
  static kms_secret *s[N];
  for (size_t i = 0; i < N; i++) {
    s[i] = kms_secret_new(32);
    ck_assert_ptr_nonnull(s[i]);
    memset(kms_secret_data(s[i]), (int)(i & 0xff), 32);
  }
  for (size_t i = 0; i < N; i++) {
    ck_assert_uint_eq(kms_secret_cdata(s[i])[31], i & 0xff);
    kms_secret_free(s[i]);
  }
}
END_TEST

START_TEST(test_many_secrets_are_distinct)
{
  kms_secret *s[8];
  for (size_t i = 0; i < 8; i++) {
    s[i] = kms_secret_new(64);
    ck_assert_ptr_nonnull(s[i]);
    memset(kms_secret_data(s[i]), (int)i + 1, 64);
  }
  for (size_t i = 0; i < 8; i++) {
    ck_assert_uint_eq(kms_secret_cdata(s[i])[0], i + 1);
    ck_assert_uint_eq(kms_secret_cdata(s[i])[63], i + 1);
    kms_secret_free(s[i]);
  }
}
END_TEST

START_TEST(test_secure_heap_new_uses_secure_heap)
{
  init_secure_heap();
  size_t before = CRYPTO_secure_used();
  kms_secret *s = kms_secret_new(32);
  ck_assert_ptr_nonnull(s);
  ck_assert_int_eq(CRYPTO_secure_allocated(kms_secret_data(s)), 1);
  ck_assert_uint_gt(CRYPTO_secure_used(), before);
  kms_secret_free(s);
  /* Freed back to the secure heap, not to malloc. */
  ck_assert_uint_eq(CRYPTO_secure_used(), before);
}
END_TEST

START_TEST(test_secure_heap_new_is_zero_filled_for_each_size)
{
  static const size_t lens[] = {1, 32, 4095, 4096};
  init_secure_heap();
  check_new_is_zero_filled_and_writable(lens[_i]);
}
END_TEST

START_TEST(test_secure_heap_from_copies_source_bytes)
{
  init_secure_heap();
  check_from_copies();
}
END_TEST

START_TEST(test_secure_heap_new_still_enforces_length_bounds)
{
  init_secure_heap();
  ck_assert_ptr_null(kms_secret_new(0));
  ck_assert_ptr_null(kms_secret_new(4097));
  kms_secret_free(NULL);
}
END_TEST

START_TEST(test_secure_heap_exhaustion_returns_null)
{
  /* 8 KiB heap: two 4 KiB secrets fill it (rounded to powers of two). */
  ck_assert_int_eq(CRYPTO_secure_malloc_init(8192, 16), 1);
  kms_secret *a = kms_secret_new(4096);
  kms_secret *b = kms_secret_new(4096);
  kms_secret *c = kms_secret_new(4096);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_ptr_null(c);
  kms_secret_free(a);
  kms_secret_free(b);
}
END_TEST

static Suite *
secret_suite(void)
{
  Suite *s = suite_create("secret");
  TCase *tp = tcase_create("pages");
  tcase_add_loop_test(tp, test_new_is_zero_filled_for_each_size, 0, 4);
  tcase_add_test(tp, test_new_rejects_zero_length);
  tcase_add_test(tp, test_new_rejects_length_over_4096);
  tcase_add_test(tp, test_from_copies_source_bytes);
  tcase_add_test(tp, test_from_rejects_out_of_range_length);
  tcase_add_test(tp, test_free_null_is_noop);
  tcase_add_test(tp, test_without_secure_heap_data_is_not_from_secure_heap);
  tcase_add_test(tp, test_many_secrets_are_distinct);
  tcase_add_test(tp, test_small_secret_slots_are_wiped_and_reused_zeroed);
  tcase_add_test(tp, test_many_small_secrets_span_regions);
  suite_add_tcase(s, tp);

  TCase *th = tcase_create("secure_heap");
  tcase_add_test(th, test_secure_heap_new_uses_secure_heap);
  tcase_add_loop_test(th, test_secure_heap_new_is_zero_filled_for_each_size, 0, 4);
  tcase_add_test(th, test_secure_heap_from_copies_source_bytes);
  tcase_add_test(th, test_secure_heap_new_still_enforces_length_bounds);
  tcase_add_test(th, test_secure_heap_exhaustion_returns_null);
  suite_add_tcase(s, th);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(secret_suite());
  /* The secure-heap tests rely on each test running in its own child. */
  srunner_set_fork_status(sr, CK_FORK);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
