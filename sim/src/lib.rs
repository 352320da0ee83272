//! Simulated fleet: stand-in K3s hosts, the demo and the load generator
