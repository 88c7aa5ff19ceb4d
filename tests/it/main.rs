//! The one integration-test binary: each module drives the real `bearerd` binary or library
//! against real files, real HTTP and real processes.

mod cli;
mod configs;
mod daemon;
mod examples;
mod harness;
mod interop;
mod manifests;
mod oidc;
mod ops;
