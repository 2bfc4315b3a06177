//! Support for the integration tests: per-test PostgreSQL databases, the
//! emulator stack, and the template rules.

pub mod cluster;
pub mod db;
pub mod permissions;
pub mod stack;
pub mod template;
