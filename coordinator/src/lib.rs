//! The k3sfleet coordinator daemon and the k3sfleet CLI
