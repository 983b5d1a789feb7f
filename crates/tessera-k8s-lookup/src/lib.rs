//! Reads objects from a Kubernetes API server.
