//! End-to-end tests against a real Kubernetes API server. Run with `make e2e`.

mod admission_webhook;
mod agent_drift;
mod bounce;
mod chaos;
mod convergence;
mod delivery;
mod exim;
mod fakes;
mod fault_proxy;
mod foundation;
mod generic;
mod gitops;
mod mta;
mod operations;
mod ownership;
mod plugin;
mod plugin_look;
mod plugin_writes;
mod postfix;
mod schedule;
mod support;
mod terminal;
mod webhook_tls;
mod world;
