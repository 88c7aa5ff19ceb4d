//! Hardening: hooks.
