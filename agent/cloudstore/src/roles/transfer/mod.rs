//! Transfer role: syncs storage with the cloud through rclone.
//!
//! Not implemented yet (issue 7): the entry point refuses to start, saying so.

use super::RoleContext;

/// The transfer role's entry point (see `roles` for the contract).
pub fn run(ctx: RoleContext) -> anyhow::Result<()> {
    anyhow::bail!(
        "the transfer role is not implemented yet; nothing is synced (configured remote: {})",
        ctx.config.remote.value
    )
}
