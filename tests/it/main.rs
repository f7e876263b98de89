//! Black-box tests, one binary: the examples' timelines, the validator's messages, the
//! command line, engine properties, and tidiness checks on the repository itself.

mod api;
mod app;
mod broadcasts;
mod cli;
mod clock_jumps;
mod controls;
mod crash;
mod delivery_faults;
mod dispatch;
mod engine;
mod engine_props;
mod faults;
mod fuzz;
mod helpers;
mod hostile;
mod import;
mod inbound;
mod kannel;
mod lifecycle;
mod parity;
mod promises;
mod runners;
mod runtime;
mod segments;
mod simulate;
mod store_conformance;
mod store_copy;
mod tidy;
mod traits;
