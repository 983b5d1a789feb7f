//! Keeps Tessera's datastore in step with a Kubernetes cluster.
