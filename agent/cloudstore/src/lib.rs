//! The cloudstore agent and command line: configuration from qubesdb, logging, the three
//! roles (storage, transfer, consumer) and the offline volume commands.

pub mod cli;
pub mod config;
pub mod logging;
pub mod notify;
pub mod offline;
pub mod passphrase;
pub mod qrexec;
pub mod roles;
pub mod sandbox_probe;
pub mod time;
