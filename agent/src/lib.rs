//! The k3sfleet host agent
