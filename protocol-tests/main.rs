//! Protocol tests against a real Apache Kafka broker.
//!
//! The broker address comes from `EXACTLY_TEST_BROKERS` when set; otherwise the tests start the
//! project's own broker once per run with `scripts/kafka up`. No broker means a loud failure
//! with instructions, never a skip.

mod common;

mod admin;
mod back_to_back;
mod compacted;
mod fault_proxy;
mod faults;
mod interop;
mod ops_cli;
mod prepared_outcome;
mod produce_fetch;
mod producer_limits;
mod product_cli;
mod product_demo;
mod reader;
mod runtime_sink;
mod runtime_source;
mod transactions;
mod transactions_java;
mod txn_lifecycle;
mod txn_settle;
mod versions;
// TLS and SASL against the secured listeners (issue 10).
mod security;
