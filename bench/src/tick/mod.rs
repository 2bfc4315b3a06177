//! `tick-bench`: a day's exports through the deployed stack in the
//! emulator, from the schedule's event to the last draft invoice that bills
//! them (issue 17). See bench/README.md.

pub mod run;
pub mod seed;
pub mod verify;
