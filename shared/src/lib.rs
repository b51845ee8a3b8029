//! The shared crate under the three functions: configuration, the HighLevel
//! client, the installs store, the app secret, crypto, and the flows built
//! from them (install, refresh, sweep, mint). Handlers stay thin; everything
//! here is testable without Lambda.

pub mod admin;
pub mod app_secret;
pub mod aws;
pub mod callers;
pub mod config;
pub mod crypto;
pub mod events;
pub mod ghl;
pub mod handoff;
pub mod html;
pub mod iam;
pub mod install;
pub mod metrics;
pub mod mint;
pub mod model;
pub mod reconcile;
pub mod redact;
pub mod refresh;
pub mod rekey;
pub mod schema;
pub mod services;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod webhook;
