//! Storage role: serves the ciphertext of each configured volume over qrexec.
//!
//! Not serving yet: today this entry point only starts, reports itself and follows
//! configuration changes until it is stopped. The volume service arrives with issue 5.

use tracing::info;

use super::RoleContext;

/// The storage role's entry point (see `roles` for the contract).
pub fn run(ctx: RoleContext) -> anyhow::Result<()> {
    let volumes = ctx.config.volumes_text();
    info!(
        volumes = %volumes,
        "storage role started; NOT serving any volume yet (the qrexec volume service is not implemented)"
    );
    ctx.ready(&format!(
        "storage role up, not serving yet; configured volumes: {volumes}"
    ));
    // The channel closes when the agent stops us.
    for update in ctx.updates.iter() {
        info!(
            volumes = %update.config.volumes_text(),
            "storage role: new configuration received (nothing to apply it to yet)"
        );
    }
    Ok(())
}
