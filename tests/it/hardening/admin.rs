//! Hardening: admin.
