//! Adopting parked sync conflicts into the tree. Storage cannot encrypt a name, so it parks
//! the cloud's side of a conflict outside the gocryptfs tree (ARCHITECTURE.md, "Conflict
//! copies live outside the gocryptfs tree"); the consumer names it
//! `NAME (conflict YYYY-MM-DD HHMM).EXT` beside the original and moves it in.

use cloudstore_format::names::{classify, LONGNAME_SUFFIX};
use cloudstore_format::{DirIv, NameKind};
use cloudstore_protocol::{ErrorCode, Request, Response, VersionInfo};

use super::core::{join, Core};
use super::Fail;

/// Different conflict names tried when the first is taken (a second conflict in the same
/// minute); past that something is wrong and the copy stays parked, logged.
const MAX_SUFFIX: u32 = 20;

/// Adopts every parked conflict; failures are logged and leave the copy parked.
pub(crate) fn adopt_all(core: &Core) {
    let _one = core.adopting.lock().unwrap_or_else(|p| p.into_inner());
    let list = match core.st.call(Request::ListConflicts) {
        Ok(Response::Versions(v)) => v.versions,
        Ok(r) => {
            tracing::warn!(volume = %core.opts.volume_name, "listing conflicts: unexpected answer {}", r.name());
            return;
        }
        Err(f) => {
            tracing::warn!(volume = %core.opts.volume_name, "listing conflicts failed: {}", f.msg);
            return;
        }
    };
    for v in list {
        match adopt_one(core, &v) {
            Ok(shown) => tracing::info!(
                volume = %core.opts.volume_name,
                path = %shown,
                "a conflicting version from the cloud is now at {shown}"
            ),
            Err(f) => tracing::warn!(
                volume = %core.opts.volume_name,
                "the parked conflict {} of {} stays parked: {}", v.id, v.path, f.msg
            ),
        }
    }
}

fn adopt_one(core: &Core, v: &VersionInfo) -> Result<String, Fail> {
    let (dir, entry) = match v.path.rsplit_once('/') {
        Some((d, e)) => (d.to_owned(), e.to_owned()),
        None => (String::new(), v.path.clone()),
    };
    let names = core_names(core);
    let iv = if names.uses_dir_iv() {
        core.read_diriv(&dir)?
    } else {
        DirIv::ZERO
    };
    let plain = match classify(entry.as_bytes()) {
        NameKind::LongContent if !names.is_plaintext() => {
            let full = core.read_small(&join(&dir, &format!("{entry}{LONGNAME_SUFFIX}")))?;
            names.decrypt_long_name(&iv, entry.as_bytes(), &full)
        }
        NameKind::Regular | NameKind::LongContent => names.decrypt_name(&iv, entry.as_bytes()),
        _ => return Err(Fail::io("the conflict names a reserved file")),
    }
    .map_err(|e| Fail::io(format!("its name does not decrypt: {e}")))?;
    let stamp = utc_stamp(v.time.secs);
    // The conflict copy appears in `dir` as our own change, so no push will say so.
    core.entries_unknown_in(&dir);
    for n in 1..=MAX_SUFFIX {
        let name = conflict_name(&plain, &stamp, n);
        let en = core.encrypt_name(&iv, &name, "conflict name")?;
        let dest = join(&dir, &String::from_utf8_lossy(en.entry()));
        core.write_long_name(&en, &dest)?;
        match core.st.call(Request::AdoptConflict {
            id: v.id,
            dest: dest.clone(),
        }) {
            Ok(_) => return Ok(String::from_utf8_lossy(&name).into_owned()),
            Err(f) if f.is(ErrorCode::Exists) => continue,
            Err(f) => return Err(f),
        }
    }
    Err(Fail::io(format!(
        "{MAX_SUFFIX} conflict names are all taken"
    )))
}

fn core_names(core: &Core) -> &cloudstore_format::NameCipher {
    core.names()
}

/// `report.odt` → `report (conflict 2026-11-23 0355).odt`; the n-th of a minute gets
/// ` n` after the time. Dot files and names without a dot get the suffix at the end. The
/// stem is shortened (on a UTF-8 boundary) to keep the name within 255 bytes.
pub(crate) fn conflict_name(name: &[u8], stamp: &str, n: u32) -> Vec<u8> {
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &name[name.len()..]),
    };
    let tag = if n > 1 {
        format!(" (conflict {stamp} {n})")
    } else {
        format!(" (conflict {stamp})")
    };
    let room = 255usize.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while cut > 0 && cut < stem.len() && (stem[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    let mut out = stem[..cut].to_vec();
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(ext);
    out
}

/// `YYYY-MM-DD HHMM` in UTC from seconds since the epoch.
pub(crate) fn utc_stamp(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::time::civil_from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension() {
        assert_eq!(
            conflict_name(b"report.odt", "2026-11-23 0355", 1),
            b"report (conflict 2026-11-23 0355).odt"
        );
        assert_eq!(
            conflict_name(b".bashrc", "2026-11-23 0355", 2),
            b".bashrc (conflict 2026-11-23 0355 2)"
        );
        assert_eq!(
            conflict_name(b"Makefile", "2026-11-23 0355", 1),
            b"Makefile (conflict 2026-11-23 0355)"
        );
        let long = "é".repeat(127);
        let n = conflict_name(long.as_bytes(), "2026-11-23 0355", 1);
        assert!(n.len() <= 255);
        assert!(std::str::from_utf8(&n).is_ok());
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "1970-01-01 0000");
        // date -u -d @1795412100 → 2026-11-23 05:35 UTC
        assert_eq!(utc_stamp(1_795_412_100), "2026-11-23 0535");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29 0000");
        assert_eq!(utc_stamp(-1), "1969-12-31 2359");
    }
}
