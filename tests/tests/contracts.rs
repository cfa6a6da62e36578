//! Every port's contract, against the embedded adapters and against the AWS adapters on the
//! emulator (moto). The tests themselves are in `easel_tests::contract`.
#![allow(clippy::unwrap_used)]

macro_rules! contracts {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let ports = easel_tests::contract::Ports::embedded().await;
                    easel_tests::contract::$name(&ports).await;
                    ports.cleanup().await;
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let ports = easel_tests::contract::Ports::aws().await;
                    easel_tests::contract::$name(&ports).await;
                    ports.cleanup().await;
                }
            )*
        }
    };
}

contracts!(
    a_task_reads_back_exactly_as_inserted,
    the_same_idempotency_key_of_the_same_api_key_returns_the_first_task,
    of_two_concurrent_claims_exactly_one_wins,
    a_running_task_is_claimed_again_only_after_its_lease_expires,
    a_task_completes_once_and_only_while_running,
    a_queued_or_running_task_is_canceled_but_a_finished_one_stays_as_it_is,
    a_key_is_charged_once_per_succeeded_task_by_day_and_never_for_a_failure,
    progress_and_heartbeats_apply_only_to_running_tasks,
    callback_attempts_are_appended_in_order,
    an_unacknowledged_job_comes_back_after_its_visibility_timeout,
    extending_a_job_keeps_it_hidden_and_zero_hands_it_back,
    a_job_received_too_often_goes_to_the_dead_letter_queue,
    a_stored_image_reads_back_and_its_url_serves_it_over_http,
    an_image_url_stops_working_when_it_expires,
    keys_are_found_by_secret_hash_listed_and_revoked,
    a_rotated_callback_secret_signs_beside_the_new_one_until_its_grace_period_ends,
);
