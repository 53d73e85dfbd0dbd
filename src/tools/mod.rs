//! Commands for people and scripts that drive orderflow from outside: send a request, read an
//! order, follow outcomes, inspect and replay dead letters, generate load, and the demo.

pub mod capacity;
pub mod check;
pub mod demo;
pub mod dlq;
pub mod get;
pub mod loadgen;
pub mod send;
pub mod tail;
