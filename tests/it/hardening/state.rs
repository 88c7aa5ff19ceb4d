//! Hardening: state.
