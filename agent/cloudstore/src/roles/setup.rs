//! Set-up shared by the roles that confine the whole agent (storage, transfer): their
//! directories, and handing them to the sandbox user when started as root.

use std::path::Path;

use anyhow::Context;
use cloudstore_sandbox::Policy;

pub fn ensure_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

pub type Owner = (nix::unistd::Uid, nix::unistd::Gid);

/// The sandbox user's ids, when we run as root and must hand our directories over to it (as
/// systemd's `StateDirectory=` does for `User=`).
pub fn sandbox_owner(policy: &Policy) -> anyhow::Result<Option<Owner>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let Some(cloudstore_sandbox::Id::Name(name)) = policy.user() else {
        return Ok(None);
    };
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up the sandbox user {name:?}"))?
        .with_context(|| {
            format!(
                "the sandbox user {name:?} does not exist (the package creates it with sysusers.d)"
            )
        })?;
    Ok(Some((user.uid, user.gid)))
}

/// Gives `path` and everything beneath it to `owner`, leaving alone what it already owns;
/// symlinks are changed themselves, never followed.
pub fn hand_over(path: &Path, owner: Owner) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.uid() != owner.0.as_raw() || meta.gid() != owner.1.as_raw() {
        nix::unistd::fchownat(
            None,
            path,
            Some(owner.0),
            Some(owner.1),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("chown {}", path.display()))?;
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            let e = e.with_context(|| format!("listing {}", path.display()))?;
            hand_over(&e.path(), owner)?;
        }
    }
    Ok(())
}
