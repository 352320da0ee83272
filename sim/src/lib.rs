//! A simulated K3s fleet on one machine: real coordinator and agent processes,
//! each agent with its own sandboxed host root, for the demo and for
//! benchmarks.

pub mod launcher;
