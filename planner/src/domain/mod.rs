//! Pure planner logic, without I/O: the job state machine, label normalisation, flavor matching,
//! webhook classification and name validation. Everything here is unit-tested in place.

pub mod job;
pub mod labels;
pub mod matching;
pub mod names;
pub mod webhook;
