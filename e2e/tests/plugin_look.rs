//! `kubectl mail-incident` as a person sees it: status, history, completion, in a terminal.
