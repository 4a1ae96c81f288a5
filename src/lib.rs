//! ddlab: a terminal lab for data-parallel distributed deep learning.
//!
//! Layers, each using only the ones below it (see DESIGN.md):
//! `nn` and `data` (numbers) → `comm` (transport) → `train` (engines) → `session` (the
//! one door for front ends) → `cli` (headless front ends: run, compare, bench, check),
//! `lesson` (the course and its checks) and `tui` (the lab).

pub mod bench;
pub mod check;
pub mod cli;
pub mod comm;
pub mod config;
pub mod data;
pub mod gpu;
pub mod lesson;
pub mod memory;
pub mod nn;
pub mod session;
pub mod train;
pub mod tui;
pub mod units;
