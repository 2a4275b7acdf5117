//! Key material: kept out of swap and core dumps, handed from the parent to a worker over
//! an inherited socket (never argv or the environment, which other users can read in
//! /proc), wiped on drop; and the optional keyfiles for automatic unlock at start.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cloudstore_format::{MasterKey, KEY_LEN};
use zeroize::Zeroizing;

/// Largest gocryptfs.conf accepted from storage or a parent: the real file is about 500
/// bytes (gocryptfs internal/configfile), so 64 KiB is generous and still bounds memory.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;

/// Environment variable that moves the keyfile directory (tests).
pub const KEYFILE_DIR_ENV: &str = "CLOUDSTORE_KEYFILE_DIR";
/// Where keyfiles live in a qube: /rw/config persists across reboots of an AppVM (the root
/// file system does not), and is root's.
pub const DEFAULT_KEYFILE_DIR: &str = "/rw/config/cloudstore/keys";

/// The keyfile directory: `$CLOUDSTORE_KEYFILE_DIR`, else [`DEFAULT_KEYFILE_DIR`].
pub fn keyfile_dir() -> PathBuf {
    match std::env::var_os(KEYFILE_DIR_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_KEYFILE_DIR),
    }
}

/// The keyfile of `volume`.
pub fn keyfile_path(volume: &str) -> PathBuf {
    keyfile_dir().join(volume)
}

/// Locks every page of this process in RAM, now and later (keys, plaintext buffers never
/// reach swap), and makes it non-dumpable (no core file, no ptrace by the same uid).
///
/// Needs CAP_IPC_LOCK, which the parent has as root and the worker keeps in its sandbox:
/// with `MCL_FUTURE` every later allocation would otherwise count against
/// `RLIMIT_MEMLOCK` (8 MiB by default) and fail beyond it.
pub fn lock_process_memory() -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE, 0)");
    }
    // SAFETY: mlockall takes flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        return Err(io::Error::last_os_error())
            .context("mlockall: keeping keys and plaintext out of swap");
    }
    Ok(())
}

/// What a worker needs to open a volume: its config file and master key. Both wiped on drop.
pub struct KeyMaterial {
    pub config: Zeroizing<Vec<u8>>,
    pub key: MasterKey,
}

impl KeyMaterial {
    /// Writes `u32 LE config length, config, 32-byte key` to the worker.
    pub fn send(&self, out: &mut impl Write) -> io::Result<()> {
        let len = u32::try_from(self.config.len())
            .map_err(|_| io::Error::other("gocryptfs.conf too large"))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(4 + self.config.len() + KEY_LEN));
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&self.config);
        buf.extend_from_slice(self.key.as_bytes());
        out.write_all(&buf)?;
        out.flush()
    }

    /// Reads what [`KeyMaterial::send`] wrote.
    pub fn receive(input: &mut impl Read) -> anyhow::Result<KeyMaterial> {
        let mut len = [0u8; 4];
        input
            .read_exact(&mut len)
            .context("reading the key material from the parent")?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > MAX_CONFIG_LEN {
            bail!("the parent sent a gocryptfs.conf of {len} bytes (limit {MAX_CONFIG_LEN})");
        }
        let mut config = Zeroizing::new(vec![0u8; len]);
        input
            .read_exact(&mut config)
            .context("reading gocryptfs.conf from the parent")?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        input
            .read_exact(&mut key[..])
            .context("reading the master key from the parent")?;
        Ok(KeyMaterial {
            config,
            key: MasterKey::from_bytes(&key[..])?,
        })
    }
}

/// Stores `passphrase` as the keyfile of `volume`: a 0600 root file in a 0700 root
/// directory, written through a temporary file and renamed into place.
pub fn save_keyfile(volume: &str, passphrase: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = keyfile_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the keyfile directory {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to root", dir.display()))?;
    let path = keyfile_path(volume);
    let tmp = dir.join(format!(".{volume}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(passphrase)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// Removes the keyfile of `volume`; `Ok(false)` if there was none.
pub fn remove_keyfile(volume: &str) -> anyhow::Result<bool> {
    let path = keyfile_path(volume);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The passphrase in the keyfile of `volume`, if there is one. A keyfile that others could
/// read or replace is refused: it would hand the volume to them.
pub fn read_keyfile(volume: &str) -> anyhow::Result<Option<crate::passphrase::Passphrase>> {
    let path = keyfile_path(volume);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    check_private(&path, &meta)?;
    if let Some(dir) = path.parent() {
        let dm = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if dm.uid() != 0 || dm.mode() & 0o022 != 0 {
            bail!(
                "refusing the keyfile directory {}: it must be root's and writable by root only",
                dir.display()
            );
        }
    }
    crate::passphrase::from_file(Path::new(&path)).map(Some)
}

fn check_private(path: &Path, meta: &fs::Metadata) -> anyhow::Result<()> {
    if !meta.is_file() {
        bail!(
            "refusing the keyfile {}: not a regular file",
            path.display()
        );
    }
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        bail!(
            "refusing the keyfile {}: it must be owned by root with mode 0600 (it is uid {} mode {:o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_material_round_trips_and_refuses_bad_lengths() {
        let km = KeyMaterial {
            config: Zeroizing::new(b"{\"Version\":2}".to_vec()),
            key: MasterKey::from_bytes(&[7u8; KEY_LEN]).unwrap(),
        };
        let mut buf = Vec::new();
        km.send(&mut buf).unwrap();
        let back = KeyMaterial::receive(&mut buf.as_slice()).unwrap();
        assert_eq!(&back.config[..], &km.config[..]);
        assert_eq!(back.key.as_bytes(), km.key.as_bytes());

        let e = KeyMaterial::receive(&mut &buf[..buf.len() - 1])
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("master key"), "{e:#}");
        let huge = (MAX_CONFIG_LEN as u32 + 1).to_le_bytes();
        let e = KeyMaterial::receive(&mut &huge[..]).err().unwrap();
        assert!(format!("{e:#}").contains("limit"), "{e:#}");
        let e = KeyMaterial::receive(&mut &[0u8; 4][..]).err().unwrap();
        assert!(format!("{e:#}").contains("0 bytes"), "{e:#}");
    }
}
