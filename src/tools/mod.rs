//! Tools for people and upstream services that drive orderflow from outside.

pub mod demo;
