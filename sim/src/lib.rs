//! A simulated K3s fleet on one machine: the simulated Kubernetes cluster, a
//! coordinator and real agents on stand-in hosts, for the demo, tests and
//! benchmarks.

pub mod lab;
pub mod load;
pub mod netns;
pub mod process;
