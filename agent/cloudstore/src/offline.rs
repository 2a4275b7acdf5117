//! Offline volume commands for recovery and migration, usable without Qubes:
//! `init`, `encrypt`, `decrypt`, `passwd` on a volume directory.
//!
//! All I/O of the gocryptfs format happens here; `cloudstore-format` turns bytes into bytes.
//! The on-disk layout follows gocryptfs: `gocryptfs.conf` (0400, written via a temp file and
//! rename, internal/configfile/config_file.go `WriteFile`), a `gocryptfs.diriv` (0444) in
//! every directory (nametransform/diriv.go), `.name` files (0444) beside long names, modes
//! and mtimes on the ciphertext entries, hard links as hard links between ciphertext files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use cloudstore_format::content::{CIPHER_BS, PLAIN_BS};
use cloudstore_format::file::{CipherStore, CryptFile};
use cloudstore_format::names::{classify, CONFIG_NAME, DIRIV_NAME, LONGNAME_SUFFIX};
use cloudstore_format::{
    Config, ContentCipher, CreateOptions, DirIv, EncryptedName, FileHeader, NameKind, Volume,
};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::passphrase;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of the new volume (created if missing; must be empty).
    pub dir: PathBuf,
    /// Read the passphrase from the first line of this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// scrypt cost as log2(N), like gocryptfs -scryptn (10 is fast and weak; 16 is the default).
    #[arg(long, default_value_t = cloudstore_format::SCRYPT_DEFAULT_LOG_N,
          value_parser = clap::value_parser!(u8).range(10..=20))]
    pub scryptn: u8,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Plaintext tree to copy in.
    pub src: PathBuf,
    /// Encrypted volume directory.
    pub dir: PathBuf,
    /// Read the passphrase from the first line of this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Encrypted volume directory.
    pub dir: PathBuf,
    /// Destination for the plaintext tree (must not exist or be empty).
    pub dest: PathBuf,
    /// Read the passphrase from the first line of this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Encrypted volume directory.
    pub dir: PathBuf,
    /// Read the current passphrase from this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Read the new passphrase from this file instead of the terminal.
    #[arg(long)]
    pub new_passphrase_file: Option<PathBuf>,
}

/// diriv.go `dirivPerms`, perms.go `namePerms`: written once, never changed.
const DIRIV_MODE: u32 = 0o444;
/// config_file.go `WriteFile`: "gocryptfs.conf should be kept secret and never be written to".
const CONFIG_MODE: u32 = 0o400;

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none())
}

/// Writes `name` in `dir` so that a crash leaves either the old or the new file:
/// temp file, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| {
            format!(
                "creating {} (left over from an interrupted run? remove it)",
                tmp.display()
            )
        })?;
    let res = f.write_all(data).and_then(|()| f.sync_all());
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    fs::rename(&tmp, &dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

fn write_dir_iv(dir: &Path) -> anyhow::Result<DirIv> {
    let iv = DirIv::new_random()?;
    write_new(&dir.join(DIRIV_NAME), &iv.0, DIRIV_MODE)?;
    Ok(iv)
}

fn read_dir_iv(vol: &Volume, dir: &Path) -> anyhow::Result<DirIv> {
    if !vol.names().uses_dir_iv() {
        return Ok(DirIv::ZERO);
    }
    let p = dir.join(DIRIV_NAME);
    let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    DirIv::parse(&data).with_context(|| format!("{}", p.display()))
}

fn open_volume(dir: &Path, pass_file: Option<&Path>) -> anyhow::Result<(Config, Volume)> {
    let conf_path = dir.join(CONFIG_NAME);
    let conf = fs::read(&conf_path).with_context(|| format!("reading {}", conf_path.display()))?;
    let config = Config::parse(&conf).with_context(|| format!("{}", conf_path.display()))?;
    let pw = passphrase::existing(pass_file, &dir.display().to_string())?;
    let key = config
        .unlock(&pw)
        .with_context(|| format!("unlocking {}", conf_path.display()))?;
    let vol = Volume::new(&config, &key)?;
    Ok((config, vol))
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", dir.display()),
        Ok(_) => {
            if !is_empty_dir(dir)? {
                bail!(
                    "{} is not empty; a new volume needs an empty directory",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("checking {}", dir.display())),
    }
    let pw = passphrase::new(args.passphrase_file.as_deref())?;
    let opts = CreateOptions {
        scrypt_log_n: args.scryptn,
        ..Default::default()
    };
    let (config, _key) = Config::create(&pw, &opts)?;
    write_atomic(dir, CONFIG_NAME, &config.to_bytes(), CONFIG_MODE)?;
    // init_dir.go: forward mode with encrypted names gets a gocryptfs.diriv in the root.
    write_dir_iv(dir)?;
    eprintln!(
        "created the volume {} (gocryptfs-compatible)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn passwd(args: PasswdArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let conf_path = dir.join(CONFIG_NAME);
    let conf = fs::read(&conf_path).with_context(|| format!("reading {}", conf_path.display()))?;
    let mut config = Config::parse(&conf).with_context(|| format!("{}", conf_path.display()))?;
    let old = passphrase::existing(args.passphrase_file.as_deref(), &dir.display().to_string())?;
    let key = config
        .unlock(&old)
        .with_context(|| format!("unlocking {}", conf_path.display()))?;
    let new = passphrase::new(args.new_passphrase_file.as_deref())?;
    config.change_passphrase(&key, &new, None)?;
    // No gocryptfs.conf.bak: gocryptfs keeps one only when resetting with -masterkey
    // (main.go `changePassword`), and a copy wrapped under the old passphrase would let
    // that passphrase keep working.
    write_atomic(dir, CONFIG_NAME, &config.to_bytes(), CONFIG_MODE)?;
    eprintln!("passphrase of {} changed", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// A ciphertext file on the local disk as a [`CipherStore`].
struct LocalStore(File);

impl CipherStore for LocalStore {
    fn cipher_len(&mut self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

fn set_times(path: &Path, m: &fs::Metadata) -> anyhow::Result<()> {
    let at = TimeSpec::new(m.atime(), m.atime_nsec());
    let mt = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(None, path, &at, &mt, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting the times of {}", path.display()))
}

struct Encryptor<'a> {
    vol: &'a Volume,
    cc: ContentCipher,
    /// (dev, ino) of a source file with several links → its first ciphertext path.
    links: HashMap<(u64, u64), PathBuf>,
    skipped: usize,
}

impl Encryptor<'_> {
    /// The ciphertext path for plaintext `name` in cipher directory `cdir`; writes the
    /// `.name` file of a long name.
    fn entry(&self, cdir: &Path, iv: &DirIv, name: &OsStr, src: &Path) -> anyhow::Result<PathBuf> {
        let enc = self
            .vol
            .names()
            .encrypt_name(iv, name.as_bytes())
            .with_context(|| format!("encrypting the name of {}", src.display()))?;
        let path = cdir.join(OsStr::from_bytes(enc.entry()));
        if fs::symlink_metadata(&path).is_ok() {
            bail!(
                "{} already exists in the volume (as {})",
                src.display(),
                path.display()
            );
        }
        if let EncryptedName::Long { hashed, full } = &enc {
            write_new(
                &cdir.join(format!("{hashed}{LONGNAME_SUFFIX}")),
                full.as_bytes(),
                DIRIV_MODE,
            )?;
        }
        Ok(path)
    }

    fn dir(&mut self, src: &Path, cdir: &Path, iv: &DirIv) -> anyhow::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let sp = e.path();
            let m =
                fs::symlink_metadata(&sp).with_context(|| format!("reading {}", sp.display()))?;
            let ft = m.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                eprintln!(
                    "cloudstore: skipping {} (not a file, directory or symlink)",
                    sp.display()
                );
                self.skipped += 1;
                continue;
            }
            let cp = self.entry(cdir, iv, &e.file_name(), &sp)?;
            if ft.is_dir() {
                fs::create_dir(&cp).with_context(|| format!("creating {}", cp.display()))?;
                let sub_iv = if self.vol.names().uses_dir_iv() {
                    write_dir_iv(&cp)?
                } else {
                    DirIv::ZERO
                };
                self.dir(&sp, &cp, &sub_iv)?;
                fs::set_permissions(&cp, Permissions::from_mode(m.mode() & 0o7777))
                    .with_context(|| format!("setting the mode of {}", cp.display()))?;
            } else if ft.is_symlink() {
                let t = fs::read_link(&sp)
                    .with_context(|| format!("reading the link {}", sp.display()))?;
                let ct = self
                    .vol
                    .names()
                    .encrypt_symlink_target(&mut self.cc, t.as_os_str().as_bytes())
                    .with_context(|| format!("encrypting the target of {}", sp.display()))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&ct), &cp)
                    .with_context(|| format!("creating {}", cp.display()))?;
            } else if let Some(first) = (m.nlink() > 1)
                .then(|| self.links.get(&(m.dev(), m.ino())))
                .flatten()
            {
                fs::hard_link(first, &cp)
                    .with_context(|| format!("linking {} to {}", cp.display(), first.display()))?;
                continue;
            } else {
                self.file(&sp, &cp, &m)?;
                if m.nlink() > 1 {
                    self.links.insert((m.dev(), m.ino()), cp.clone());
                }
                fs::set_permissions(&cp, Permissions::from_mode(m.mode() & 0o7777))
                    .with_context(|| format!("setting the mode of {}", cp.display()))?;
            }
            set_times(&cp, &m)?;
        }
        Ok(())
    }

    fn file(&mut self, src: &Path, dst: &Path, m: &fs::Metadata) -> anyhow::Result<()> {
        let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .with_context(|| format!("creating {}", dst.display()))?;
        let mut cf =
            CryptFile::open(LocalStore(out)).with_context(|| format!("{}", dst.display()))?;
        let size = m.len();
        let mut buf = vec![0u8; 64 * PLAIN_BS];
        let mut off = 0u64;
        while off < size {
            let want = buf.len().min((size - off) as usize);
            input
                .read_exact_at(&mut buf[..want], off)
                .with_context(|| format!("reading {} at {off}", src.display()))?;
            // Whole zero blocks become holes, as gocryptfs leaves them when a sparse file is
            // written through it (file_holes.go); a partial last block is always written.
            for (i, chunk) in buf[..want].chunks(PLAIN_BS).enumerate() {
                let at = off + (i * PLAIN_BS) as u64;
                if chunk.len() == PLAIN_BS && chunk.iter().all(|&b| b == 0) {
                    continue;
                }
                cf.write(&mut self.cc, at, chunk).with_context(|| {
                    format!("encrypting {} into {}", src.display(), dst.display())
                })?;
            }
            off += want as u64;
        }
        if cf.plain_size()? < size {
            cf.truncate(&mut self.cc, size)
                .with_context(|| format!("extending {} to {size} bytes", dst.display()))?;
        }
        cf.into_inner()
            .0
            .sync_all()
            .with_context(|| format!("syncing {}", dst.display()))?;
        Ok(())
    }
}

pub fn encrypt(args: EncryptArgs) -> anyhow::Result<ExitCode> {
    let src_meta =
        fs::metadata(&args.src).with_context(|| format!("reading {}", args.src.display()))?;
    if !src_meta.is_dir() {
        bail!("{} is not a directory", args.src.display());
    }
    let (_, vol) = open_volume(&args.dir, args.passphrase_file.as_deref())?;
    let iv = read_dir_iv(&vol, &args.dir)?;
    let mut e = Encryptor {
        cc: vol.content_cipher()?,
        vol: &vol,
        links: HashMap::new(),
        skipped: 0,
    };
    e.dir(&args.src, &args.dir, &iv)?;
    if e.skipped > 0 {
        eprintln!("cloudstore: {} special files were not copied", e.skipped);
    }
    Ok(ExitCode::SUCCESS)
}

struct Decryptor<'a> {
    vol: &'a Volume,
    cc: ContentCipher,
    links: HashMap<(u64, u64), PathBuf>,
}

impl Decryptor<'_> {
    fn dir(&mut self, cdir: &Path, dest: &Path, root: bool) -> anyhow::Result<()> {
        let names = self.vol.names();
        let iv = read_dir_iv(self.vol, cdir)?;
        let mut entries: Vec<_> = fs::read_dir(cdir)
            .with_context(|| format!("reading {}", cdir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", cdir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let cname = e.file_name();
            let cp = e.path();
            let kind = classify(cname.as_bytes());
            let plain = if names.is_plaintext() {
                if root && kind == NameKind::Config {
                    continue;
                }
                names.decrypt_name(&iv, cname.as_bytes())
            } else {
                match kind {
                    NameKind::Config if root => continue,
                    NameKind::DirIv | NameKind::LongNameFile => continue,
                    NameKind::LongContent => {
                        let np = cdir.join(format!("{}{LONGNAME_SUFFIX}", cname.to_string_lossy()));
                        let full =
                            fs::read(&np).with_context(|| format!("reading {}", np.display()))?;
                        names.decrypt_long_name(&iv, cname.as_bytes(), &full)
                    }
                    _ => names.decrypt_name(&iv, cname.as_bytes()),
                }
            }
            .with_context(|| format!("decrypting the name {}", cp.display()))?;
            let dp = dest.join(OsStr::from_bytes(&plain));
            let m =
                fs::symlink_metadata(&cp).with_context(|| format!("reading {}", cp.display()))?;
            let ft = m.file_type();
            if ft.is_dir() {
                fs::create_dir(&dp).with_context(|| format!("creating {}", dp.display()))?;
                self.dir(&cp, &dp, false)?;
                fs::set_permissions(&dp, Permissions::from_mode(m.mode() & 0o7777))
                    .with_context(|| format!("setting the mode of {}", dp.display()))?;
            } else if ft.is_symlink() {
                let ct = fs::read_link(&cp)
                    .with_context(|| format!("reading the link {}", cp.display()))?;
                let t = names
                    .decrypt_symlink_target(&mut self.cc, ct.as_os_str().as_bytes())
                    .with_context(|| format!("decrypting the target of {}", cp.display()))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &dp)
                    .with_context(|| format!("creating {}", dp.display()))?;
            } else if ft.is_file() {
                if let Some(first) = (m.nlink() > 1)
                    .then(|| self.links.get(&(m.dev(), m.ino())))
                    .flatten()
                {
                    fs::hard_link(first, &dp).with_context(|| {
                        format!("linking {} to {}", dp.display(), first.display())
                    })?;
                    continue;
                }
                self.file(&cp, &dp)
                    .with_context(|| format!("decrypting {} to {}", cp.display(), dp.display()))?;
                if m.nlink() > 1 {
                    self.links.insert((m.dev(), m.ino()), dp.clone());
                }
                fs::set_permissions(&dp, Permissions::from_mode(m.mode() & 0o7777))
                    .with_context(|| format!("setting the mode of {}", dp.display()))?;
            } else {
                eprintln!(
                    "cloudstore: skipping {} (not a file, directory or symlink)",
                    cp.display()
                );
                continue;
            }
            set_times(&dp, &m)?;
        }
        Ok(())
    }

    /// Streams one file block by block; hole blocks stay holes in the output.
    fn file(&mut self, cp: &Path, dp: &Path) -> anyhow::Result<()> {
        let input = File::open(cp)?;
        let csize = input.metadata()?.len();
        let psize = cloudstore_format::offsets::cipher_size_to_plain_size(csize)?;
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dp)?;
        if psize > 0 {
            let mut header = [0u8; cloudstore_format::HEADER_LEN];
            input.read_exact_at(&mut header, 0)?;
            let id = FileHeader::parse(&header)?.id;
            let mut sealed = vec![0u8; CIPHER_BS];
            let mut plain = zeroize::Zeroizing::new(vec![0u8; PLAIN_BS]);
            for block_no in 0..cloudstore_format::offsets::block_count(psize) {
                let (off, len) =
                    cloudstore_format::offsets::cipher_range_for_blocks(block_no, block_no, psize);
                let s = &mut sealed[..len as usize];
                input.read_exact_at(s, off)?;
                let poff = cloudstore_format::offsets::block_no_to_plain_off(block_no);
                if s.len() == CIPHER_BS && s.iter().all(|&b| b == 0) {
                    continue; // a hole: set_len below leaves it unallocated
                }
                let n = self.cc.decrypt_block(&id, block_no, s, &mut plain)?;
                out.write_all_at(&plain[..n], poff)?;
            }
            out.set_len(psize)?;
        }
        out.sync_all()?;
        Ok(())
    }
}

pub fn decrypt(args: DecryptArgs) -> anyhow::Result<ExitCode> {
    match fs::metadata(&args.dest) {
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", args.dest.display()),
        Ok(_) if !is_empty_dir(&args.dest)? => {
            bail!(
                "{} is not empty; decrypt exports into a new or empty directory",
                args.dest.display()
            )
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(&args.dest)
            .with_context(|| format!("creating {}", args.dest.display()))?,
        Err(e) => return Err(anyhow!(e).context(format!("checking {}", args.dest.display()))),
    }
    let (_, vol) = open_volume(&args.dir, args.passphrase_file.as_deref())?;
    let mut d = Decryptor {
        cc: vol.content_cipher()?,
        vol: &vol,
        links: HashMap::new(),
    };
    d.dir(&args.dir, &args.dest, true)?;
    Ok(ExitCode::SUCCESS)
}
