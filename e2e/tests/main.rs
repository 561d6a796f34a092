//! End-to-end tests against a real Kubernetes API server. Run with `make e2e`.

mod delivery;
mod exim;
mod fakes;
mod foundation;
mod generic;
mod mta;
mod operations;
mod postfix;
mod support;
mod world;
