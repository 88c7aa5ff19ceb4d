pub mod config;
pub mod oauth;
pub mod output;
pub mod secret;
