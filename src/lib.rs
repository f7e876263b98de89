//! Trellis: a marketing automation workflow runner.
//!
//! Journeys are YAML files ([`workflow`]); a pure [`engine`] moves one customer's
//! enrollment through a workflow's nodes given an input and a `now`; [`template`] renders
//! messages; [`simulate`] drives the engine on a virtual clock. [`cli`] is the shell that
//! reads files and prints. See ARCHITECTURE.md for the map.

pub mod api;
pub mod channels;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crash_point;
pub mod engine;
pub mod journey;
pub mod model;
pub mod scheduler;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod traits;
pub mod unsubscribe;
pub mod workflow;
