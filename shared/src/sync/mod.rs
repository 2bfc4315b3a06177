//! The master sync path: sync-manager's run and provider-sync's drivers.

pub mod drivers;
pub mod manager;
pub mod profile;
pub mod provider;
pub mod trigger;
