//! `kubectl mail-incident` commands that write: declare, extend, escalate, resolve.
