//! pgbk: a PostgreSQL backup manager.
//!
//! Data flows one way: PostgreSQL → [`pg`] client → method → [`repo`] (compressed,
//! checksummed files) → [`catalog`] (SQLite index), and back for recovery.
//! The binary in `src/main.rs` only parses the command line and calls [`commands`].

pub mod backup;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connect;
pub mod drill;
pub mod error;
pub mod lock;
pub mod maintenance;
pub mod output;
pub mod peer;
pub mod pg;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod ssh;
pub mod types;
pub mod units;
pub mod verify;
pub mod wal;
