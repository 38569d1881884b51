//! The wait for the previous transaction's markers (`settle_window_ms`) under transactions
//! version 2; `txn_version_1` runs the same check under version 1.

use crate::back_to_back::back_to_back_transactions;
use crate::common::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_transactions_wait_for_markers_and_commit_exactly() {
    let client = client().await;
    back_to_back_transactions(&client, "settle").await;
}
