//! Consumer role: mounts each configured volume as a decrypted folder.
//!
//! Not implemented yet (issue 6): the entry point refuses to start, saying so.

use super::RoleContext;

/// The consumer role's entry point (see `roles` for the contract).
pub fn run(ctx: RoleContext) -> anyhow::Result<()> {
    anyhow::bail!(
        "the consumer role is not implemented yet; nothing is mounted (configured volumes: {})",
        ctx.config.volumes_text()
    )
}
