//! End-to-end tests against a real Kubernetes API server. Run with `make e2e`. The harness
//! they share with the real-node tests and the benches is the `mail-incident-e2e-support`
//! crate (`e2e/support`).

mod agent_drift;
mod bounce;
mod chaos;
mod convergence;
mod delivery;
mod exim;
mod fault_proxy;
mod foundation;
mod generic;
mod gitops;
mod operations;
mod ownership;
mod plugin;
mod plugin_look;
mod plugin_writes;
mod postfix;
mod schedule;
mod stories;
mod terminal;
mod webhook_tls;
