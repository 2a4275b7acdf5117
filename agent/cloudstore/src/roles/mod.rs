//! The three roles. Each is one module with one entry function, and its sandbox policy
//! lives beside it as data.

use std::process::ExitCode;

use anyhow::bail;

use crate::cli::{AgentArgs, StatusArgs};

pub mod consumer;
pub mod storage;
pub mod transfer;

pub fn agent_main(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    bail!("`cloudstore agent` is not implemented yet")
}

pub fn status_main(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    bail!("`cloudstore status` is not implemented yet")
}
