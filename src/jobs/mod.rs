//! Jobs built on the runtime. The first: real-time card fraud detection ([`fraud`]).

pub mod fraud;
