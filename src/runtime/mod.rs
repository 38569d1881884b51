//! The operator runtime: sources, keyed operators, event-time windows, aligned checkpoint
//! barriers, keyed state snapshots and the two-phase-commit Kafka sink.
//!
//! Not built yet: it stands on the transactional producer (see the issues). The module exists
//! so that the layering is visible in the tree from the start.
