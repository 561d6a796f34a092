//! End-to-end tests on a real node: the operator and the example MTAs with their agents run
//! as real pods (kubelet 1.20, containerd, runc) from the images the repository's
//! Dockerfiles build. `make e2e-node` (`e2e/run-node-tests.sh`) starts the world (`e2e/cluster.sh up --with-node`),
//! builds the images (`e2e/images.sh build`) and imports them into the node.
//!
//! The tests share one node and one operator installation, so they run one at a time.
//!
//! Networking: every pod here has a network of its own on the node's bridge (as on a real
//! cluster), rather than `hostNetwork`: the operator's two replicas and the MTAs' agents
//! all listen on fixed ports, which pods sharing the node's network could not. The tests
//! reach pods at their pod IPs from the host; pods reach the API server through the
//! bridge's gateway (`E2E_NODE_API_HOST`).
//!
//! The harness they share with the e2e tests is the `mail-incident-e2e-support` crate
//! (`e2e/support`).

mod chart;
mod dashboard;
mod mtas;
mod node;
mod operator;
mod restarts;
