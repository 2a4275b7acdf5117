//! The cloudstore inter-qube protocol: handshake, frames, messages, and a multiplexing
//! client and server over any byte stream (a qrexec pipe pair or socket). It moves opaque
//! ciphertext bytes and ciphertext path names: it knows nothing of crypto, FUSE or the
//! volume format. The wire format is specified byte by byte in docs/protocol.md.
//!
//! - [`handshake`]: magic, version range, role and features; fails naming both versions.
//! - [`frame`]: 16-byte header (length, type, flags, request id) and a payload of at most
//!   [`MAX_PAYLOAD`] bytes, checked before anything is allocated.
//! - [`Request`], [`Response`], [`Push`]: the operations, in a hand-written little-endian
//!   encoding where every accepted payload re-encodes to the same bytes.
//! - [`Client`]: thread-safe calls over one stream (request ids, in-flight window, timeouts,
//!   push channel, streaming [`Download`]/[`Upload`]).
//! - [`serve`]: the server loop; a bounded worker pool runs a [`Handler`].
//! - [`queue::WorkQueue`]: the job queue of that pool, shared with the consumer's.
//! - [`buffers`]: large frame payloads kept for reuse.
#![forbid(unsafe_code)]

pub mod buffers;
mod client;
mod error;
pub mod frame;
pub mod handshake;
mod message;
pub mod queue;
mod server;
mod types;
mod wire;

pub use client::{ByteStream, Client, ClientConfig, Download, PendingCall, Upload};
pub use error::{ErrorCode, RemoteError, MAX_ERROR_MESSAGE};
pub use frame::{
    read_frame, write_frame, Frame, FrameError, FrameType, FLAG_FINAL, HEADER_LEN, MAX_PAYLOAD,
};
pub use handshake::{
    client_handshake, features, refuse_connection, server_handshake, Accept, HandshakeError, Hello,
    Role, Session, MAGIC, MIN_VERSION, VERSION,
};
pub use message::{
    decode_error, encode_error, Body, Op, Push, Request, Response, MAX_IO, MAX_MKDIR_FILE,
    OPEN_HEAD_MAX, STAT_HEAD_MAX,
};
pub use server::{
    serve, Call, DownloadWriter, Handler, Pusher, ServeError, ServeStats, ServerConfig,
    UploadReader, CHUNK_SIZE, STREAM_WINDOW,
};
pub use types::{
    check_path, Attr, ChangeEntry, ChangeKind, Changes, DirEntry, DirPage, Expect, FileRef,
    FileState, FileType, OpenFlags, RenameMode, SetAttr, StatFs, TimeSet, Timespec, TreeEntry,
    TreePage, VersionInfo, VersionList, VersionReason, MAX_CHANGES_PAGE, MAX_LINK_TARGET,
    MAX_NAME_LEN, MAX_PATH_LEN, MAX_READDIR_PAGE, MAX_TREE_PAGE, MAX_VERSION_LIST,
};
pub use wire::DecodeError;
