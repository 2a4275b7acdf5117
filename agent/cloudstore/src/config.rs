//! The qube's cloudstore configuration, read from qubesdb (`/cloudstore/<key>`, falling back
//! to `/vm-config/cloudstore.<key>` on a stock dom0).
//!
//! Who writes which path (dom0 side):
//! - `/cloudstore/<key>`: the `cloudstore-dom0` core-admin extension (`dom0/cloudstore_dom0`,
//!   `extension.py` with the mapping in `mapping.py`), from `qvm-features QUBE
//!   cloudstore.<key> VALUE`, at qube start and whenever the feature changes.
//! - `/vm-config/cloudstore.<key>`: stock Qubes 4.2, from `qvm-features QUBE
//!   vm-config.cloudstore.<key> VALUE` (QubesOS/qubes-core-admin `qubes/ext/vm_config.py`
//!   writes every `vm-config.*` feature to `/vm-config/<name>`, live).
//!
//! Each key is looked up under `/cloudstore/` first. Only if it is absent there is the
//! `/vm-config/` path read: a value dom0's extension wrote wins even when it is invalid,
//! and the error then names that path, so the user fixes the value that is actually used.
//!
//! Values are checked with the same rules as dom0's `mapping.py` (`ROLES`,
//! `VOLUME_NAME_RE`, `parse_volumes`), so what dom0 accepts the agent accepts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use cloudstore_qubesdb::QubesDb;

/// Environment variable that points the agent at another qubesdb socket. A test and demo
/// knob: in a qube the daemon is always at [`cloudstore_qubesdb::DEFAULT_SOCKET`].
pub const QUBESDB_SOCKET_ENV: &str = "CLOUDSTORE_QUBESDB_SOCKET";

/// qubesdb directory written by the cloudstore-dom0 extension.
pub const PRIMARY_PREFIX: &str = "/cloudstore/";

/// Key prefix written by core-admin's vm_config extension on a stock dom0.
pub const FALLBACK_PREFIX: &str = "/vm-config/cloudstore.";

/// The rclone remote the transfer role syncs with when none is configured.
pub const DEFAULT_REMOTE: &str = "onedrive:CloudStore";

/// Longest volume name: it is a qrexec service argument (`cloudstore.Volume+NAME`), a
/// directory name in the cloud and a path component in every qube; 32 keeps all of those
/// comfortable and matches dom0's `VOLUME_NAME_RE`.
pub const MAX_VOLUME_NAME: usize = 32;

/// The qubesdb socket to use: `$CLOUDSTORE_QUBESDB_SOCKET`, else the real daemon's.
pub fn qubesdb_socket() -> PathBuf {
    dir_from_env(QUBESDB_SOCKET_ENV, cloudstore_qubesdb::DEFAULT_SOCKET)
}

/// Where a role keeps its persistent data (`StateDirectory=cloudstore` of the units;
/// `/var/lib` is persisted across qube restarts by the package's bind-dirs snippet).
pub const DATA_DIR_ENV: &str = "CLOUDSTORE_DATA_DIR";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cloudstore";
/// Where a role puts its sockets (`RuntimeDirectory=cloudstore` of the units).
pub const RUNTIME_DIR_ENV: &str = "CLOUDSTORE_RUNTIME_DIR";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/cloudstore";

fn dir_from_env(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(default),
    }
}

/// `$CLOUDSTORE_DATA_DIR`, else `/var/lib/cloudstore`. The variable exists for tests and the
/// Qubes stand-in, which run several qubes on one machine.
pub fn data_dir() -> PathBuf {
    dir_from_env(DATA_DIR_ENV, DEFAULT_DATA_DIR)
}

/// `$CLOUDSTORE_RUNTIME_DIR`, else `/run/cloudstore`.
pub fn runtime_dir() -> PathBuf {
    dir_from_env(RUNTIME_DIR_ENV, DEFAULT_RUNTIME_DIR)
}

/// Connects to qubesdb at [`qubesdb_socket`].
pub fn open_qubesdb() -> Result<QubesDb, ConfigError> {
    QubesDb::open(qubesdb_socket()).map_err(|source| ConfigError::Qubesdb {
        key_path: String::from(PRIMARY_PREFIX),
        source,
    })
}

/// Which part of the system this qube plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Storage,
    Transfer,
    Consumer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Storage, Role::Transfer, Role::Consumer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Transfer => "transfer",
            Role::Consumer => "consumer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Role, ()> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

/// The configuration keys, each read as `/cloudstore/<name>` then
/// `/vm-config/cloudstore.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `storage`, `transfer` or `consumer`; required.
    Role,
    /// Volume names separated by spaces or commas; default none.
    Volumes,
    /// Transfer: the rclone remote (`remote:path`, or a local directory in tests).
    Remote,
    /// Consumer: the account whose session sees the mounts; default `user` (Qubes' default).
    User,
    /// Consumer: the directory the volumes are mounted under; default `~USER/CloudStore`.
    Mountpoint,
}

impl Key {
    pub const ALL: [Key; 5] = [
        Key::Role,
        Key::Volumes,
        Key::Remote,
        Key::User,
        Key::Mountpoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Key::Role => "role",
            Key::Volumes => "volumes",
            Key::Remote => "remote",
            Key::User => "user",
            Key::Mountpoint => "mountpoint",
        }
    }

    pub fn primary_path(self) -> String {
        format!("{PRIMARY_PREFIX}{}", self.name())
    }

    pub fn fallback_path(self) -> String {
        format!("{FALLBACK_PREFIX}{}", self.name())
    }

    /// The key a qubesdb path configures, if any.
    pub fn from_path(path: &str) -> Option<Key> {
        let name = path
            .strip_prefix(PRIMARY_PREFIX)
            .or_else(|| path.strip_prefix(FALLBACK_PREFIX))?;
        Key::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The qubesdb path it was read from.
    Qubesdb(String),
    /// Not configured; the built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Qubesdb(p) => write!(f, "qubesdb {p}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A configured value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

/// A validated volume name (see [`validate_volume_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VolumeName {
    type Err = VolumeNameError;
    fn from_str(s: &str) -> Result<VolumeName, VolumeNameError> {
        validate_volume_name(s)
    }
}

/// Why a volume name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume name {name:?} is invalid: it must be 1 to 32 characters of lowercase letters, digits, '_' and '-', starting with a letter or digit")]
pub struct VolumeNameError {
    pub name: String,
}

/// Checks a volume name: `[a-z0-9][a-z0-9_-]{0,31}`, the rule of dom0's `VOLUME_NAME_RE`.
/// The storage role checks a peer's qrexec argument with this, the consumer its mounts.
pub fn validate_volume_name(name: &str) -> Result<VolumeName, VolumeNameError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_VOLUME_NAME
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if ok {
        Ok(VolumeName(name.to_owned()))
    } else {
        Err(VolumeNameError {
            name: name.to_owned(),
        })
    }
}

/// The volume names in a `volumes` value: separated by whitespace or commas, each kept
/// once in order (as dom0's `parse_volumes`).
pub fn parse_volumes(value: &str) -> Result<Vec<VolumeName>, VolumeNameError> {
    let mut out: Vec<VolumeName> = Vec::new();
    for word in value.split(|c: char| c.is_whitespace() || c == ',') {
        if word.is_empty() {
            continue;
        }
        let v = validate_volume_name(word)?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Configuration failures. Each names the qubesdb path involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither path of the role key exists.
    #[error("no role configured: qubesdb has neither {primary} nor {fallback}; in dom0 run `qvm-features QUBE cloudstore.role storage|transfer|consumer`")]
    MissingRole { primary: String, fallback: String },
    /// A key holds a value the agent cannot use.
    #[error("invalid value {value:?} in qubesdb key {key_path}: {reason}")]
    Invalid {
        key_path: String,
        value: String,
        reason: String,
    },
    /// A key's value is not UTF-8.
    #[error("qubesdb key {key_path} holds bytes that are not UTF-8 text")]
    NotUtf8 { key_path: String },
    /// qubesdb itself failed (not a configuration mistake: retrying may help).
    #[error("reading {key_path} from qubesdb: {source}")]
    Qubesdb {
        key_path: String,
        #[source]
        source: cloudstore_qubesdb::Error,
    },
}

impl ConfigError {
    /// Whether the user's configuration is at fault (as opposed to qubesdb being
    /// unreachable): such errors must not be retried by systemd.
    pub fn is_config_mistake(&self) -> bool {
        !matches!(self, ConfigError::Qubesdb { .. })
    }
}

/// Anything keys can be read from: the qubesdb client, or a map in unit tests.
pub trait KeySource {
    fn read_key(&mut self, path: &str) -> Result<Option<Vec<u8>>, cloudstore_qubesdb::Error>;
}

impl KeySource for QubesDb {
    fn read_key(&mut self, path: &str) -> Result<Option<Vec<u8>>, cloudstore_qubesdb::Error> {
        self.read(path)
    }
}

impl KeySource for BTreeMap<String, String> {
    fn read_key(&mut self, path: &str) -> Result<Option<Vec<u8>>, cloudstore_qubesdb::Error> {
        Ok(self.get(path).map(|v| v.as_bytes().to_vec()))
    }
}

/// The raw text of a key and the path it came from: `/cloudstore/<key>` if present,
/// else `/vm-config/cloudstore.<key>`, else `None`.
pub fn read_raw(
    db: &mut impl KeySource,
    key: Key,
) -> Result<Option<(String, String)>, ConfigError> {
    for path in [key.primary_path(), key.fallback_path()] {
        let got = db.read_key(&path).map_err(|source| ConfigError::Qubesdb {
            key_path: path.clone(),
            source,
        })?;
        if let Some(bytes) = got {
            let text = String::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 {
                key_path: path.clone(),
            })?;
            return Ok(Some((path, text)));
        }
    }
    Ok(None)
}

/// The whole configuration of this qube.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub role: Setting<Role>,
    pub volumes: Setting<Vec<VolumeName>>,
    pub remote: Setting<String>,
    pub user: Setting<String>,
    pub mountpoint: Setting<Option<PathBuf>>,
}

impl Config {
    /// Reads and checks every key.
    pub fn load(db: &mut impl KeySource) -> Result<Config, ConfigError> {
        let role = load_role(db)?;
        Config::load_rest(db, role)
    }

    /// Volume names as one space-separated string (for messages and `status`).
    pub fn volumes_text(&self) -> String {
        let names: Vec<&str> = self.volumes.value.iter().map(VolumeName::as_str).collect();
        names.join(" ")
    }

    fn load_rest(db: &mut impl KeySource, role: Setting<Role>) -> Result<Config, ConfigError> {
        let volumes = match read_raw(db, Key::Volumes)? {
            None => Setting {
                value: Vec::new(),
                origin: Origin::Default,
            },
            Some((path, text)) => Setting {
                value: parse_volumes(&text).map_err(|e| invalid(&path, &text, e.to_string()))?,
                origin: Origin::Qubesdb(path),
            },
        };
        let remote = match read_raw(db, Key::Remote)? {
            None => Setting {
                value: DEFAULT_REMOTE.to_owned(),
                origin: Origin::Default,
            },
            Some((path, text)) => {
                let t = text.trim();
                if t.is_empty() || t.chars().any(char::is_control) {
                    return Err(invalid(
                        &path,
                        &text,
                        "an rclone remote is `name:path` or a directory, one line of text".into(),
                    ));
                }
                Setting {
                    value: t.to_owned(),
                    origin: Origin::Qubesdb(path),
                }
            }
        };
        let user = match read_raw(db, Key::User)? {
            None => Setting {
                value: "user".to_owned(),
                origin: Origin::Default,
            },
            Some((path, text)) => {
                let t = text.trim();
                if !valid_user_name(t) {
                    return Err(invalid(
                        &path,
                        &text,
                        "a user name is 1 to 32 characters of a-z 0-9 _ -, starting with a letter or _".into(),
                    ));
                }
                Setting {
                    value: t.to_owned(),
                    origin: Origin::Qubesdb(path),
                }
            }
        };
        let mountpoint = match read_raw(db, Key::Mountpoint)? {
            None => Setting {
                value: None,
                origin: Origin::Default,
            },
            Some((path, text)) => {
                let t = text.trim();
                let p = PathBuf::from(t);
                let clean = p.is_absolute()
                    && !t.chars().any(char::is_control)
                    && p.components()
                        .all(|c| !matches!(c, std::path::Component::ParentDir));
                if !clean {
                    return Err(invalid(
                        &path,
                        &text,
                        "the mountpoint must be an absolute path without '..'".into(),
                    ));
                }
                Setting {
                    value: Some(p),
                    origin: Origin::Qubesdb(path),
                }
            }
        };
        Ok(Config {
            role,
            volumes,
            remote,
            user,
            mountpoint,
        })
    }
}

fn invalid(path: &str, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key_path: path.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

/// A Linux account name as `useradd` accepts by default (`NAME_REGEX` of Debian's adduser).
fn valid_user_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Reads just the role.
pub fn load_role(db: &mut impl KeySource) -> Result<Setting<Role>, ConfigError> {
    match read_raw(db, Key::Role)? {
        None => Err(ConfigError::MissingRole {
            primary: Key::Role.primary_path(),
            fallback: Key::Role.fallback_path(),
        }),
        Some((path, text)) => match text.trim().parse::<Role>() {
            Ok(role) => Ok(Setting {
                value: role,
                origin: Origin::Qubesdb(path),
            }),
            Err(()) => Err(invalid(
                &path,
                &text,
                "the role must be one of storage, transfer, consumer".into(),
            )),
        },
    }
}

/// The qubesdb watches that cover every key: the `/cloudstore/` directory, and each
/// fallback path exactly (a `/vm-config/` prefix watch would wake us for unrelated keys).
pub fn watch_paths() -> Vec<String> {
    let mut v = vec![PRIMARY_PREFIX.to_owned()];
    v.extend(Key::ALL.into_iter().map(Key::fallback_path));
    v
}

/// Registers [`watch_paths`] on `db`.
pub fn watch(db: &mut QubesDb) -> Result<(), ConfigError> {
    for p in watch_paths() {
        db.watch(&p).map_err(|source| ConfigError::Qubesdb {
            key_path: p.clone(),
            source,
        })?;
    }
    Ok(())
}

/// What differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Role {
        from: Role,
        to: Role,
    },
    Volumes {
        added: Vec<VolumeName>,
        removed: Vec<VolumeName>,
    },
    Remote {
        from: String,
        to: String,
    },
    User {
        from: String,
        to: String,
    },
    Mountpoint {
        from: Option<PathBuf>,
        to: Option<PathBuf>,
    },
    /// Same value, now read from another path (e.g. `/cloudstore/role` appeared beside
    /// `/vm-config/cloudstore.role`).
    Origin {
        key: Key,
        from: Origin,
        to: Origin,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names(v: &[VolumeName]) -> String {
            if v.is_empty() {
                "none".into()
            } else {
                v.iter()
                    .map(VolumeName::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
        match self {
            Change::Role { from, to } => write!(f, "role {from} -> {to}"),
            Change::Volumes { added, removed } => {
                write!(
                    f,
                    "volumes added: {}; removed: {}",
                    names(added),
                    names(removed)
                )
            }
            Change::Remote { from, to } => write!(f, "remote {from} -> {to}"),
            Change::User { from, to } => write!(f, "user {from} -> {to}"),
            Change::Mountpoint { from, to } => write!(f, "mountpoint {from:?} -> {to:?}"),
            Change::Origin { key, from, to } => {
                write!(f, "{} now read from {to} (was {from})", key.name())
            }
        }
    }
}

/// The changes from `old` to `new`, role first.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    if old.role.value != new.role.value {
        out.push(Change::Role {
            from: old.role.value,
            to: new.role.value,
        });
    }
    let added: Vec<VolumeName> = new
        .volumes
        .value
        .iter()
        .filter(|v| !old.volumes.value.contains(v))
        .cloned()
        .collect();
    let removed: Vec<VolumeName> = old
        .volumes
        .value
        .iter()
        .filter(|v| !new.volumes.value.contains(v))
        .cloned()
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        out.push(Change::Volumes { added, removed });
    }
    if old.remote.value != new.remote.value {
        out.push(Change::Remote {
            from: old.remote.value.clone(),
            to: new.remote.value.clone(),
        });
    }
    if old.user.value != new.user.value {
        out.push(Change::User {
            from: old.user.value.clone(),
            to: new.user.value.clone(),
        });
    }
    if old.mountpoint.value != new.mountpoint.value {
        out.push(Change::Mountpoint {
            from: old.mountpoint.value.clone(),
            to: new.mountpoint.value.clone(),
        });
    }
    let origins = [
        (Key::Role, &old.role.origin, &new.role.origin),
        (Key::Volumes, &old.volumes.origin, &new.volumes.origin),
        (Key::Remote, &old.remote.origin, &new.remote.origin),
        (Key::User, &old.user.origin, &new.user.origin),
        (
            Key::Mountpoint,
            &old.mountpoint.origin,
            &new.mountpoint.origin,
        ),
    ];
    for (key, from, to) in origins {
        if from != to {
            out.push(Change::Origin {
                key,
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    out
}

/// An in-memory qubesdb for tests: `KeySource` is implemented for the map.
#[cfg(test)]
pub(crate) fn fake_db(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::fake_db as db;

    #[test]
    fn primary_keys_parse() {
        let c = Config::load(&mut db(&[
            ("/cloudstore/role", "storage"),
            ("/cloudstore/volumes", " work,photos  work\tnotes "),
            ("/cloudstore/remote", "onedrive:Other"),
            ("/cloudstore/user", "alice"),
            ("/cloudstore/mountpoint", "/home/alice/Cloud"),
        ]))
        .unwrap();
        assert_eq!(c.role.value, Role::Storage);
        assert_eq!(c.role.origin, Origin::Qubesdb("/cloudstore/role".into()));
        assert_eq!(
            c.volumes_text(),
            "work photos notes",
            "split on space/comma, deduplicated"
        );
        assert_eq!(c.remote.value, "onedrive:Other");
        assert_eq!(c.user.value, "alice");
        assert_eq!(c.mountpoint.value, Some(PathBuf::from("/home/alice/Cloud")));
    }

    #[test]
    fn defaults_apply_when_absent() {
        let c = Config::load(&mut db(&[("/cloudstore/role", "transfer")])).unwrap();
        assert!(c.volumes.value.is_empty());
        assert_eq!(c.volumes.origin, Origin::Default);
        assert_eq!(c.remote.value, DEFAULT_REMOTE);
        assert_eq!(c.remote.origin, Origin::Default);
        assert_eq!(c.user.value, "user");
        assert_eq!(c.mountpoint.value, None);
    }

    #[test]
    fn fallback_is_used_only_when_primary_is_absent() {
        let c = Config::load(&mut db(&[
            ("/vm-config/cloudstore.role", "consumer"),
            ("/vm-config/cloudstore.volumes", "work"),
        ]))
        .unwrap();
        assert_eq!(c.role.value, Role::Consumer);
        assert_eq!(
            c.role.origin,
            Origin::Qubesdb("/vm-config/cloudstore.role".into())
        );
        assert_eq!(c.volumes_text(), "work");

        // Both present: /cloudstore/ wins, per key.
        let c = Config::load(&mut db(&[
            ("/cloudstore/role", "storage"),
            ("/vm-config/cloudstore.role", "consumer"),
            ("/vm-config/cloudstore.volumes", "photos"),
        ]))
        .unwrap();
        assert_eq!(c.role.value, Role::Storage);
        assert_eq!(
            c.volumes.origin,
            Origin::Qubesdb("/vm-config/cloudstore.volumes".into())
        );

        // An empty primary value is a value (no volumes), not an absence.
        let c = Config::load(&mut db(&[
            ("/cloudstore/role", "storage"),
            ("/cloudstore/volumes", ""),
            ("/vm-config/cloudstore.volumes", "photos"),
        ]))
        .unwrap();
        assert!(c.volumes.value.is_empty());
        assert_eq!(
            c.volumes.origin,
            Origin::Qubesdb("/cloudstore/volumes".into())
        );
    }

    #[test]
    fn invalid_primary_is_not_masked_by_valid_fallback() {
        let err = Config::load(&mut db(&[
            ("/cloudstore/role", "bogus"),
            ("/vm-config/cloudstore.role", "storage"),
        ]))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"bogus\"") && msg.contains("/cloudstore/role"),
            "{msg}"
        );
        assert!(err.is_config_mistake());
    }

    #[test]
    fn role_errors_name_value_and_path() {
        let err = load_role(&mut db(&[("/vm-config/cloudstore.role", "Storage")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"Storage\""), "{msg}");
        assert!(msg.contains("/vm-config/cloudstore.role"), "{msg}");
        assert!(msg.contains("storage, transfer, consumer"), "{msg}");

        let err = load_role(&mut db(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/cloudstore/role") && msg.contains("/vm-config/cloudstore.role"),
            "{msg}"
        );
        assert!(matches!(err, ConfigError::MissingRole { .. }));

        for bad in ["", " ", "storage consumer", "storage\n\nx"] {
            assert!(
                load_role(&mut db(&[("/cloudstore/role", bad)])).is_err(),
                "{bad:?}"
            );
        }
        // Surrounding whitespace (a trailing newline from a script) is forgiven.
        assert_eq!(
            load_role(&mut db(&[("/cloudstore/role", "consumer\n")]))
                .unwrap()
                .value,
            Role::Consumer
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("/cloudstore/volumes", "work ../etc"),
            ("/cloudstore/volumes", "Work"),
            ("/vm-config/cloudstore.volumes", "-x"),
            ("/cloudstore/remote", "   "),
            ("/cloudstore/remote", "a:\x01b"),
            ("/cloudstore/user", "root;rm"),
            ("/cloudstore/mountpoint", "relative/path"),
            ("/cloudstore/mountpoint", "/home/user/../../etc"),
        ];
        for (path, value) in cases {
            let err = Config::load(&mut db(&[("/cloudstore/role", "consumer"), (path, value)]))
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(path), "{path}={value:?}: {msg}");
            assert!(err.is_config_mistake());
        }
    }

    #[test]
    fn non_utf8_value_is_named() {
        struct Raw;
        impl KeySource for Raw {
            fn read_key(
                &mut self,
                path: &str,
            ) -> Result<Option<Vec<u8>>, cloudstore_qubesdb::Error> {
                Ok((path == "/cloudstore/role").then(|| vec![0xff, 0xfe]))
            }
        }
        let err = load_role(&mut Raw).unwrap_err();
        assert!(err.to_string().contains("/cloudstore/role"), "{err}");
    }

    #[test]
    fn volume_names() {
        for ok in ["work", "a", "0", "my-photos_2", &"a".repeat(32)] {
            assert!(validate_volume_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "wörk",
            "a b",
            "a/b",
            ".",
            "..",
            "a.b",
            &"a".repeat(33),
            "a\0",
        ] {
            let e = validate_volume_name(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn key_paths_and_watch_paths() {
        assert_eq!(Key::Role.primary_path(), "/cloudstore/role");
        assert_eq!(
            Key::Volumes.fallback_path(),
            "/vm-config/cloudstore.volumes"
        );
        assert_eq!(Key::from_path("/cloudstore/volumes"), Some(Key::Volumes));
        assert_eq!(
            Key::from_path("/vm-config/cloudstore.remote"),
            Some(Key::Remote)
        );
        assert_eq!(Key::from_path("/cloudstore/"), None);
        assert_eq!(Key::from_path("/vm-config/cloudstore.unknown"), None);
        assert_eq!(Key::from_path("/name"), None);
        let w = watch_paths();
        assert!(w.contains(&"/cloudstore/".to_string()));
        for k in Key::ALL {
            assert!(w.contains(&k.fallback_path()));
            assert!(cloudstore_qubesdb::check_path(
                &k.fallback_path(),
                cloudstore_qubesdb::PathKind::Key
            )
            .is_ok());
        }
    }

    #[test]
    fn diff_reports_each_change() {
        let a = Config::load(&mut db(&[
            ("/cloudstore/role", "storage"),
            ("/cloudstore/volumes", "work photos"),
        ]))
        .unwrap();
        assert!(diff(&a, &a).is_empty());
        let b = Config::load(&mut db(&[
            ("/cloudstore/role", "storage"),
            ("/cloudstore/volumes", "photos notes"),
        ]))
        .unwrap();
        assert_eq!(
            diff(&a, &b),
            vec![Change::Volumes {
                added: vec![validate_volume_name("notes").unwrap()],
                removed: vec![validate_volume_name("work").unwrap()],
            }]
        );
        let c = Config::load(&mut db(&[
            ("/vm-config/cloudstore.role", "consumer"),
            ("/cloudstore/volumes", "work photos"),
        ]))
        .unwrap();
        let d = diff(&a, &c);
        assert_eq!(
            d[0],
            Change::Role {
                from: Role::Storage,
                to: Role::Consumer
            }
        );
        assert!(matches!(d[1], Change::Origin { key: Key::Role, .. }));
        assert_eq!(d[0].to_string(), "role storage -> consumer");
    }
}
