//! mail-incident-operator: switches a fleet of MTAs among mail incident modes from one
//! `MailIncident` resource.
//!
//! Reading order: [`api`] (what a user writes), [`plan`] (what we decide, pure),
//! [`controller`] (how we make it so).

pub mod agent;
pub mod api;
pub mod controller;
mod error;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod plugin;
mod retry;
mod shutdown;
pub mod telemetry;
pub mod webhook;

pub use error::{Error, Result};
