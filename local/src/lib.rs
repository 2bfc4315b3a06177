//! Running tem locally: the emulator (MiniStack), the SAM template deployed
//! into it, a database, demo data. Used by `local-run` (the README's first
//! command) and by the emulator integration tests.

pub mod demo;
pub mod deployment;
pub mod emulator;
pub mod stack;
