//! Benchmark commands (not tests), sharing the database set-up, the data
//! generator's random numbers and the goal reporting: `import-bench`
//! (src/main.rs), `totals-bench` (src/totals_main.rs), `apply-bench`
//! (src/apply_main.rs), `startup-bench` (src/startup_main.rs), `journal-bench`
//! (src/journal_main.rs), `fanout-bench` (src/fanout_main.rs), `tick-bench`
//! (src/tick_main.rs), `spec-bench` (src/spec_main.rs), `audit-bench`
//! (src/audit_main.rs) and `store-bench` (src/store_main.rs). See README.md.

pub mod apply;
pub mod audit;
pub mod bench;
pub mod child;
pub mod db;
pub mod fanout;
pub mod generate;
pub mod journal;
pub mod measure;
pub mod phases;
pub mod report;
pub mod spec;
pub mod startup;
pub mod store;
pub mod tick;
pub mod totals;
