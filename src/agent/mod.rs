//! The MTA side: how a mode document becomes MTA configuration. Rendering is pure, one
//! module per MTA; the sidecar process that watches the document and applies it builds
//! on these.

pub mod postfix;
