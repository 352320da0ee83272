//! Simulated Kubernetes API server (placeholder).
