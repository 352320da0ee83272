//! A simulated K3s fleet on one machine: a Kubernetes cluster (kubesim, or
//! the real tier's upstream control plane), a coordinator and real agents on
//! stand-in hosts, for the demo, tests and benchmarks; and the auditor that
//! judges what k3sfleet did to a real cluster.

pub mod audit;
pub mod lab;
pub mod load;
pub mod netns;
pub mod process;
pub mod skip;
pub mod tailnet;
pub mod testbed;
