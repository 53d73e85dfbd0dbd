//! Commands for people and scripts that drive orderflow from outside: send a request, read an
//! order, follow outcomes, inspect and replay dead letters, generate load, rebuild the state topic
//! from the event log, and the demo.

pub mod capacity;
pub mod check;
pub mod demo;
pub mod dlq;
pub mod get;
pub mod loadgen;
pub mod rebuild;
pub mod send;
pub mod tail;
