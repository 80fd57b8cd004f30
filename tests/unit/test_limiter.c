/* Check suite for limiter: per-principal token buckets and per-peer connection counts. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "limiter.h"

START_TEST(test_no_rate_means_no_limit)
{
  limits *l = limits_new(0, 0);
  ck_assert_ptr_nonnull(l);
  for (int i = 0; i < 100000; i++) {
    ck_assert(limits_rate_allow(l, "spiffe://d/a", 0));
  }
  ck_assert(limits_rate_allow(NULL, "x", 0));
  limits_free(l);
  limits_free(NULL);
}
END_TEST

START_TEST(test_burst_then_refused_then_refilled_at_the_rate)
{
  limits *l = limits_new(10, 20); /* 10 per second, bursts of 20 */
  int64_t t = 1000;
  for (int i = 0; i < 20; i++) {
    ck_assert_msg(limits_rate_allow(l, "a", t), "burst request %d", i);
  }
  ck_assert(!limits_rate_allow(l, "a", t));
  /* 10 per second is one per 100 ms: 99 ms is not enough, 100 ms is. */
  ck_assert(!limits_rate_allow(l, "a", t + 99));
  ck_assert(limits_rate_allow(l, "a", t + 100));
  ck_assert(!limits_rate_allow(l, "a", t + 100));
  /* A long quiet spell refills to the burst, never beyond it. */
  t += 1000000;
  for (int i = 0; i < 20; i++) {
    ck_assert(limits_rate_allow(l, "a", t));
  }
  ck_assert(!limits_rate_allow(l, "a", t));
  /* Time going backwards (it should not, monotonic) grants nothing. */
  ck_assert(!limits_rate_allow(l, "a", t - 5000));
  limits_free(l);
}
END_TEST

START_TEST(test_one_principal_does_not_spend_another_s_tokens)
{
  limits *l = limits_new(1, 3);
  for (int i = 0; i < 3; i++) {
    ck_assert(limits_rate_allow(l, "flood", 0));
  }
  ck_assert(!limits_rate_allow(l, "flood", 0));
  ck_assert(limits_rate_allow(l, "good", 0));
  ck_assert(limits_rate_allow(l, "good", 0));
  limits_free(l);
}
END_TEST

/* Many principals: the table is bounded and forgets only buckets that refilled. */
START_TEST(test_many_principals_stay_bounded)
{
  limits *l = limits_new(1, 1);
  char name[32];
  for (int i = 0; i < 70000; i++) {
    snprintf(name, sizeof(name), "p%d", i);
    ck_assert(limits_rate_allow(l, name, 0) || i >= 65536);
  }
  /* Full of principals that just spent their token: a new one is refused (fail closed). */
  ck_assert(!limits_rate_allow(l, "newcomer", 0));
  /* A second later every bucket has refilled and may be forgotten: room again. */
  ck_assert(limits_rate_allow(l, "newcomer", 1000));
  ck_assert(limits_rate_allow(l, "p1", 1000));
  limits_free(l);
}
END_TEST

START_TEST(test_peer_counts_up_to_the_maximum_and_back)
{
  limits *l = limits_new(0, 0);
  for (int i = 0; i < 3; i++) {
    ck_assert(limits_peer_acquire(l, "10.0.0.1", 3));
  }
  ck_assert(!limits_peer_acquire(l, "10.0.0.1", 3));
  ck_assert_uint_eq(limits_peer_count(l, "10.0.0.1"), 3);
  ck_assert(limits_peer_acquire(l, "10.0.0.2", 3));
  limits_peer_release(l, "10.0.0.1");
  ck_assert(limits_peer_acquire(l, "10.0.0.1", 3));
  for (int i = 0; i < 3; i++) {
    limits_peer_release(l, "10.0.0.1");
  }
  ck_assert_uint_eq(limits_peer_count(l, "10.0.0.1"), 0);
  limits_peer_release(l, "10.0.0.1"); /* one too many: harmless */
  limits_peer_release(l, "never-seen");
  ck_assert(!limits_peer_acquire(l, "10.0.0.3", 0));
  ck_assert_uint_eq(limits_peer_count(l, "10.0.0.3"), 0);
  limits_free(l);
}
END_TEST

static Suite *
limiter_suite(void)
{
  Suite *s = suite_create("limiter");
  TCase *t = tcase_create("limits");
  tcase_add_test(t, test_no_rate_means_no_limit);
  tcase_add_test(t, test_burst_then_refused_then_refilled_at_the_rate);
  tcase_add_test(t, test_one_principal_does_not_spend_another_s_tokens);
  tcase_add_test(t, test_many_principals_stay_bounded);
  tcase_add_test(t, test_peer_counts_up_to_the_maximum_and_back);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(limiter_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
