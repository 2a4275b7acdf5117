//! `cloudstore versions PATH` / `restore PATH`: the plaintext path is encrypted component by
//! component (each directory's gocryptfs.diriv read from storage, as gocryptfs
//! internal/nametransform does), the storage's version list is asked for that ciphertext
//! path, and the paths it reports are decrypted back for the user.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{anyhow, bail, Context};
use cloudstore_format::names::{classify, DIRIV_NAME, LONGNAME_SUFFIX};
use cloudstore_format::{DirIv, NameKind, Volume};
use cloudstore_protocol::{Client, Request, Response, VersionInfo, VersionReason};

use super::control::VersionLine;

/// Largest small file fetched here (a diriv is 16 bytes, a `.name` file at most 344).
const MAX_SMALL_FILE: u64 = 4096;

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The whole content of a small ciphertext file.
pub fn get_small(client: &Client, path: &str) -> anyhow::Result<Vec<u8>> {
    let dl = client
        .get(path, None)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("fetching {path:?} from storage"))?;
    let mut data = Vec::new();
    let mut limited = dl.take(MAX_SMALL_FILE + 1);
    limited
        .read_to_end(&mut data)
        .with_context(|| format!("fetching {path:?} from storage"))?;
    if data.len() as u64 > MAX_SMALL_FILE {
        bail!("{path:?} on storage is larger than {MAX_SMALL_FILE} bytes");
    }
    limited
        .into_inner()
        .finish()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("fetching {path:?} from storage"))?;
    Ok(data)
}

fn dir_iv(client: &Client, vol: &Volume, cdir: &str) -> anyhow::Result<DirIv> {
    if !vol.names().uses_dir_iv() {
        return Ok(DirIv::ZERO);
    }
    let p = join(cdir, DIRIV_NAME);
    let data = get_small(client, &p)?;
    DirIv::parse(&data).with_context(|| format!("{p:?} on storage"))
}

/// The ciphertext path (relative to the volume root) of the plaintext path `rel`.
pub fn encrypt_path(client: &Client, vol: &Volume, rel: &Path) -> anyhow::Result<String> {
    let mut cdir = String::new();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            bail!("{}: only plain names below the volume root", rel.display());
        };
        let iv = dir_iv(client, vol, &cdir)?;
        let enc = vol
            .names()
            .encrypt_name(&iv, name.as_bytes())
            .with_context(|| format!("encrypting the name {:?}", name))?;
        let entry = std::str::from_utf8(enc.entry())
            .map_err(|_| anyhow!("the encrypted name of {name:?} is not UTF-8"))?
            .to_owned();
        cdir = join(&cdir, &entry);
    }
    if cdir.is_empty() {
        bail!("the volume root itself has no versions; name a file in it");
    }
    Ok(cdir)
}

/// The plaintext form of ciphertext path `cpath`; a component that cannot be decrypted
/// (its directory is gone, the name is damaged) is shown as `?CIPHERTEXT`.
pub fn decrypt_path(client: &Client, vol: &Volume, cpath: &str) -> String {
    let mut cdir = String::new();
    let mut plain: Vec<String> = Vec::new();
    for comp in cpath.split('/').filter(|c| !c.is_empty()) {
        let name = (|| -> anyhow::Result<Vec<u8>> {
            let iv = dir_iv(client, vol, &cdir)?;
            match classify(comp.as_bytes()) {
                NameKind::LongContent => {
                    let full =
                        get_small(client, &join(&cdir, &format!("{comp}{LONGNAME_SUFFIX}")))?;
                    Ok(vol.names().decrypt_long_name(&iv, comp.as_bytes(), &full)?)
                }
                _ => Ok(vol.names().decrypt_name(&iv, comp.as_bytes())?),
            }
        })();
        plain.push(match name {
            Ok(n) => OsStr::from_bytes(&n).to_string_lossy().into_owned(),
            Err(_) => format!("?{comp}"),
        });
        cdir = join(&cdir, comp);
    }
    plain.join("/")
}

fn reason(r: VersionReason) -> &'static str {
    match r {
        VersionReason::Overwrite => "overwritten",
        VersionReason::Delete => "deleted",
        VersionReason::Modify => "modified",
        VersionReason::Conflict => "conflict",
    }
}

/// A version list: the ciphertext path, each version (as storage sent it, and decrypted),
/// newest first, and whether older ones were left out.
pub type Listing = (String, Vec<(VersionInfo, VersionLine)>, bool);

/// The versions storage keeps of plaintext `rel`, newest first.
pub fn list(client: &Client, vol: &Volume, rel: &Path) -> anyhow::Result<Listing> {
    let cpath = encrypt_path(client, vol, rel)?;
    let resp = client
        .call(Request::ListVersions {
            path: cpath.clone(),
        })
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("listing the versions of {}", rel.display()))?;
    let Response::Versions(list) = resp else {
        bail!("storage answered {} to ListVersions", resp.name());
    };
    let mut out: Vec<(VersionInfo, VersionLine)> = list
        .versions
        .into_iter()
        .map(|v| {
            let line = VersionLine {
                id: v.id,
                time: (v.time.secs, v.time.nanos),
                size: v.size,
                reason: reason(v.reason).to_owned(),
                path: decrypt_path(client, vol, &v.path),
                mtime: (v.mtime.secs, v.mtime.nanos),
            };
            (v, line)
        })
        .collect();
    out.sort_by(|a, b| b.0.time.cmp(&a.0.time).then(b.0.id.cmp(&a.0.id)));
    Ok((cpath, out, list.truncated))
}

/// Restores plaintext `rel`: version `id`, else the newest kept at or before `at`, else the
/// newest. Returns the version restored.
pub fn restore(
    client: &Client,
    vol: &Volume,
    rel: &Path,
    id: Option<u64>,
    at: Option<i64>,
) -> anyhow::Result<VersionLine> {
    let (cpath, versions, _) = list(client, vol, rel)?;
    let chosen = match (id, at) {
        (Some(id), _) => versions
            .into_iter()
            .find(|(v, _)| v.id == id)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no version {id} (see `cloudstore versions`)",
                    rel.display()
                )
            })?,
        (None, Some(at)) => versions
            .into_iter()
            .find(|(v, _)| v.time.secs <= at)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no version kept at or before {}",
                    rel.display(),
                    crate::time::format_utc(at, 0)
                )
            })?,
        (None, None) => versions
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("storage keeps no version of {}", rel.display()))?,
    };
    client
        .call(Request::Restore {
            path: cpath,
            id: chosen.0.id,
        })
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("restoring version {} of {}", chosen.0.id, rel.display()))?;
    Ok(chosen.1)
}
