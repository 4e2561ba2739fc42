/*
 * test_health.c - the health verdict's thresholds (health_status_record).
 * The checker's connections are exercised by tests/integration/test_health.py.
 */
#include <criterion/criterion.h>

#include "health.h"

Test(health, new_status_is_healthy_and_unchecked)
{
    struct health_status st;

    health_status_init(&st);
    cr_assert(st.healthy);
    cr_assert_not(st.checked);
    cr_assert_not(st.have_last);
    cr_assert_eq(st.passes + st.failures, 0);
}

Test(health, unhealthy_after_threshold_consecutive_failures_only)
{
    struct health_status st;

    health_status_init(&st);
    cr_assert_not(health_status_record(&st, false, 2, 3));
    cr_assert_not(health_status_record(&st, false, 2, 3));
    cr_assert_not(health_status_record(&st, true, 2, 3), "a pass restarts the count");
    cr_assert_eq(st.consecutive_failures, 0);
    cr_assert_not(health_status_record(&st, false, 2, 3));
    cr_assert_not(health_status_record(&st, false, 2, 3));
    cr_assert(st.healthy);
    cr_assert(health_status_record(&st, false, 2, 3), "the third in a row flips it");
    cr_assert_not(st.healthy);
    cr_assert_not(health_status_record(&st, false, 2, 3), "already unhealthy: no change");
    cr_assert_eq(st.failures, 6);
    cr_assert_eq(st.passes, 1);
    cr_assert_eq(st.consecutive_failures, 4);
}

Test(health, healthy_again_after_threshold_consecutive_passes)
{
    struct health_status st;

    health_status_init(&st);
    cr_assert(health_status_record(&st, false, 2, 1));
    cr_assert_not(st.healthy);
    cr_assert_not(health_status_record(&st, true, 2, 1));
    cr_assert_not(st.healthy, "one pass of two");
    cr_assert(health_status_record(&st, true, 2, 1));
    cr_assert(st.healthy);
    cr_assert_eq(st.consecutive_passes, 2);
    cr_assert_eq(st.consecutive_failures, 0);
}

Test(health, zero_thresholds_act_as_one)
{
    struct health_status st;

    health_status_init(&st);
    cr_assert(health_status_record(&st, false, 0, 0));
    cr_assert(health_status_record(&st, true, 0, 0));
}
