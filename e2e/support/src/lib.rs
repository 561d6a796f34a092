//! The harness the e2e tests (`e2e/tests`), the real-node tests (`e2e/node`) and the
//! benches (`e2e/bench`) share: the test world and its control plane, stand-ins for what it
//! lacks, and real Postfix and Exim instances with their agents.

pub mod admission_webhook;
pub mod control_plane;
pub mod exim;
pub mod fakes;
pub mod mta;
pub mod postfix;
pub mod support;
pub mod world;
