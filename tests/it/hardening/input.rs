//! Hardening: input.
