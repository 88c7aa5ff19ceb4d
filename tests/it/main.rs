//! The one integration-test binary: each module drives the real `bearerd` binary or library
//! against real files, real HTTP and real processes.

// Fixtures (configs, secrets, stale files) are written plainly; the atomic writer is what is
// under test, not how a test sets the stage.
#![allow(clippy::disallowed_methods)]

mod camunda;
mod cli;
mod configs;
mod crash;
mod daemon;
mod demo;
mod examples;
mod faults;
mod hardening;
mod harness;
mod hygiene;
mod interop;
mod load;
mod manifests;
mod oidc;
mod ops;
mod properties;
mod rate;
mod secretless;
mod token;
