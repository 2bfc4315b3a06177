//! tem's shared library: everything the functions have in common.
//!
//! - [`envelope`], [`routing`], [`runtime`], [`retry`]: the chain runtime
//!   every queue-driven function runs messages through; [`command`]: the
//!   typed payload of each of its steps, shared by senders and handlers.
//! - [`tasks`], [`sync`]: the master-sync domain.
//! - [`ports`]: the narrow traits domain code uses to reach the outside;
//!   [`adapters`]: their AWS and PostgreSQL implementations.
//! - [`config`], [`telemetry`], [`lambda`]: what each function's `main` wires
//!   up; [`lambda`] also has the typed inputs a queue-driven function takes.
//! - [`cdr`]: the CDR vocabulary (kinds, zones, customer cycles, change
//!   marks) that import, billing and the catalog share.
//! - [`ops`]: the ops function's console commands (migrations).
//! - [`costs`]: cost centres and chargeback; [`budgets`]: budget
//!   thresholds, bill shock and anomalies; [`audit`]: the carrier bill
//!   audit (the TEM core of issue 19).
//! - [`maintenance`]: the daily work that keeps the CDR store fast for
//!   years (monthly partitions; issue 20).

pub mod adapters;
pub mod audit;
pub mod billing;
pub mod bootstrap;
pub mod budgets;
pub mod catalog;
pub mod cdr;
pub mod command;
pub mod config;
pub mod costs;
pub mod envelope;
pub mod import;
pub mod lambda;
pub mod maintenance;
pub mod metrics;
pub mod ops;
pub mod ports;
pub mod retry;
pub mod routing;
pub mod runtime;
pub mod sync;
pub mod tasks;
pub mod telemetry;

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
pub(crate) mod proptest_config;
#[cfg(test)]
mod runtime_tests;
