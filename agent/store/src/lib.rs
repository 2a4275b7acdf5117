//! The storage back end: ciphertext trees confined beneath a volume root, change journal,
//! version history.
//!
//! The storage qube holds ciphertext only and never decrypts. A [`Store`] manages a data
//! directory (default [`DEFAULT_DATA_DIR`]):
//!
//! ```text
//! <data>/lock                         flock: one process per data directory
//! <data>/volumes/<volume>/tree/       the gocryptfs root, as is (other tools can read it)
//! <data>/volumes/<volume>/journal/    journal.log: the change journal (see `journal`)
//! <data>/volumes/<volume>/versions/   <id>.data + <id>.meta per preserved version
//! <data>/volumes/<volume>/conflicts/  <id>.data + <id>.meta per parked conflict copy
//! <data>/volumes/<volume>/staging/    puts being streamed (same filesystem: rename is atomic)
//! ```
//!
//! Every [`Volume`] operation takes [`RelPath`]s (validated with [`parse_path`] or
//! [`RelPath::new`]) and is confined beneath the tree with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`; symlinks are stored and read, never
//! followed. Every change is journaled before it is made (a machine crash that loses the
//! journal's last records makes every reader rescan); every overwrite, delete and
//! first in-place modification of a session keeps the previous content as a version first.
//! The API is synchronous and thread-safe: share `Arc<Store>` / `Arc<Volume>` between
//! connection threads. Errors carry an errno-like [`ErrorKind`].

mod crc32;
mod error;
mod journal;
mod modes;
mod path;
mod sequential;
mod store;
mod sys;
mod types;
mod versions;
mod volume;

pub use error::{ErrorKind, Result, StoreError};
pub use journal::{acting_for, Notice, Subscription};
pub use modes::{set_descriptor_mode, stat_descriptor};
pub use path::{
    parse_path, validate_volume_name, PathProblem, RelPath, MAX_COMPONENT_LEN, MAX_PATH_LEN,
    MAX_VOLUME_NAME_LEN,
};
pub use sequential::{ReadAhead, WriteOut};
pub use store::{current_boot_id, Clock, Store, StoreConfig, DEFAULT_DATA_DIR, VOLUME_SUBDIRS};
pub use types::{
    Attr, ChangeEntry, ChangeKind, Changes, DirEntry, DirPage, Expect, FileState, FileType,
    RenameMode, SetAttr, StatFs, TimeSet, Timespec,
};
pub use versions::{PruneReport, RetentionPolicy, VersionId, VersionInfo, VersionReason};
pub use volume::{
    ConflictInfo, Created, FileKey, FileReader, Made, PutOptions, Volume, VolumeStats, MAX_READ,
    MAX_READDIR_PAGE, MAX_SYMLINK_TARGET,
};
