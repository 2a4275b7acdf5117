//! qubesdb client: reads, lists and watches keys of the qube's configuration database.
//!
//! Speaks the real daemon's wire protocol over its local UNIX socket, as
//! QubesOS/qubes-core-qubesdb `client/qdb-client.c` does (`qdb_open`, `qdb_read`,
//! `qdb_list`, `qdb_multiread`, `qdb_write`, `qdb_rm`, `qdb_watch`, `qdb_read_watch`,
//! `qdb_watch_fd`). The format is in [`wire`], the path and value rules in [`path`].
//!
//! One connection carries commands and watch events: the daemon may send a
//! `QDB_RESP_WATCH` at any time, even between the parts of a multi-part answer, so every
//! command's reply loop sets such events aside and [`QubesDb::next_event`] hands them out
//! first, in arrival order.

pub mod path;
pub mod wire;

mod client;

pub use client::{Error, QubesDb, DEFAULT_RO_SOCKET, DEFAULT_SOCKET};
pub use path::{check_path, check_value, PathKind, PathProblem, ValueProblem};
