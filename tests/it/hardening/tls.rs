//! Hardening: tls.
