//! Regression tests for the holes found by trying bearerd as an attacker or a careless
//! operator would (issue "Hardening"); each one failed before its fix. `docs/reliability.md`
//! lists each hole beside the test that proves it closed.

mod admin;
mod hooks;
mod input;
mod state;
mod tls;
