//! Passphrases from the terminal (no echo) or a file, held in zeroizing memory.

use std::path::Path;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

pub type Passphrase = Zeroizing<Vec<u8>>;

/// The first line of `path`, without its line ending, as `gocryptfs -passfile` reads it
/// (gocryptfs internal/readpassword/passfile.go: first line only, empty refused).
pub fn from_file(path: &Path) -> anyhow::Result<Passphrase> {
    let data = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("reading passphrase file {}", path.display()))?,
    );
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!(
            "passphrase file {}: the first line is empty",
            path.display()
        );
    }
    Ok(Zeroizing::new(line.to_vec()))
}

fn prompt(text: &str) -> anyhow::Result<Passphrase> {
    let pw = Zeroizing::new(
        rpassword::prompt_password(text).context("reading the passphrase from the terminal")?,
    );
    if pw.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(Zeroizing::new(pw.as_bytes().to_vec()))
}

/// The passphrase of an existing volume: from `file`, or asked once on the terminal.
pub fn existing(file: Option<&Path>, what: &str) -> anyhow::Result<Passphrase> {
    match file {
        Some(p) => from_file(p),
        None => prompt(&format!("Passphrase for {what}: ")),
    }
}

/// A new passphrase: from `file`, or asked twice on the terminal and compared.
pub fn new(file: Option<&Path>) -> anyhow::Result<Passphrase> {
    if let Some(p) = file {
        return from_file(p);
    }
    let a = prompt("New passphrase: ")?;
    let b = prompt("Repeat new passphrase: ")?;
    if a != b {
        bail!("the two passphrases differ; nothing was changed");
    }
    Ok(a)
}
