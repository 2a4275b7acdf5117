//! The handshake: the first bytes each way, before any frame. The client states the protocol
//! versions it speaks, the role of the connection and the features it wants; the server
//! answers with the version chosen (the highest both speak) or an error naming both ranges.
//!
//! ```text
//! client hello (20 bytes)              server welcome (26 + n bytes)
//!  0  8  magic "CSTORE\r\n"             0  8  magic "CSTORE\r\n"
//!  8  2  min version (u16 LE)           8  2  status: 0 accepted, else an error code
//! 10  2  max version                   10  2  chosen version (0 when refused)
//! 12  1  role (1 Volume, 2 Sync)       12  2  server min version
//! 13  3  reserved, 0                   14  2  server max version
//! 16  4  feature bits wanted           16  4  feature bits granted (wanted ∩ offered)
//!                                      20  4  max frame payload the server accepts
//!                                      24  2  message length n (≤ 1024)
//!                                      26  n  message (UTF-8): why it was refused
//! ```

use std::io::{self, Read, Write};

use crate::error::{ErrorCode, RemoteError};
use crate::frame::MAX_PAYLOAD;

/// The first bytes of both hello messages. The CR LF catches a stream that mangles line
/// endings, as PNG's signature does; the rest says whose protocol this is.
pub const MAGIC: [u8; 8] = *b"CSTORE\r\n";

/// The protocol version this build speaks best.
pub const VERSION: u16 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_VERSION: u16 = 1;

const HELLO_LEN: usize = 20;
const WELCOME_LEN: usize = 26;
/// Longest refusal message in a welcome: enough to name both version ranges and the reason.
const MAX_WELCOME_MESSAGE: usize = 1024;

/// What a connection is for: its qrexec service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `cloudstore.Volume+VOLUME`: a consumer's filesystem.
    Volume,
    /// `cloudstore.Sync`: the transfer qube's sync.
    Sync,
}

impl Role {
    pub fn code(self) -> u8 {
        match self {
            Role::Volume => 1,
            Role::Sync => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Role> {
        match c {
            1 => Some(Role::Volume),
            2 => Some(Role::Sync),
            _ => None,
        }
    }
}

/// Feature bits. Unknown bits are ignored (a peer may offer what we do not know); the
/// granted set is what both sides named.
pub mod features {
    /// The server pushes journal entries after `Subscribe`.
    pub const PUSH: u32 = 1 << 0;
    /// Changes are answered with the attributes they left: `Write` with `WrittenAttr` (the
    /// file's), `Create` with `Created` and `Unlink` with `Unlinked` (the parent
    /// directory's), so a client can answer the stat the kernel sends after each of them
    /// without asking.
    pub const ATTRS_AFTER: u32 = 1 << 1;
    /// A read-only `Open` of a regular file of at most [`crate::OPEN_HEAD_MAX`] bytes is
    /// answered `OpenedWith`: the handle, the attributes and the whole content, so a small
    /// file is opened and read in one round trip.
    pub const OPEN_HEAD: u32 = 1 << 2;
    /// A `Stat` by path of a regular file of at most [`crate::STAT_HEAD_MAX`] bytes is
    /// answered `AttrWith`: the attributes and the whole content, so the open and read
    /// that usually follow the lookup of a small file need no round trip.
    pub const STAT_HEAD: u32 = 1 << 3;
    /// The server knows `MkdirWith`: a directory and a first file inside in one step.
    pub const MKDIR_WITH: u32 = 1 << 4;
    /// Every feature this build knows.
    pub const ALL: u32 = PUSH | ATTRS_AFTER | OPEN_HEAD | STAT_HEAD | MKDIR_WITH;
}

/// The client's side of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub role: Role,
    pub features: u32,
}

impl Hello {
    /// This build's versions and features for `role`.
    pub fn new(role: Role) -> Hello {
        Hello {
            min_version: MIN_VERSION,
            max_version: VERSION,
            role,
            features: features::ALL,
        }
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.min_version.to_le_bytes());
        b[10..12].copy_from_slice(&self.max_version.to_le_bytes());
        b[12] = self.role.code();
        b[16..20].copy_from_slice(&self.features.to_le_bytes());
        b
    }
}

/// What the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept {
    pub min_version: u16,
    pub max_version: u16,
    /// The role this service serves; a hello naming the other is refused with `BadRole`.
    pub role: Role,
    pub features: u32,
}

impl Accept {
    pub fn new(role: Role) -> Accept {
        Accept {
            min_version: MIN_VERSION,
            max_version: VERSION,
            role,
            features: features::ALL,
        }
    }
}

/// What both sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub version: u16,
    pub role: Role,
    pub features: u32,
    /// The largest frame payload the server accepts.
    pub max_payload: u32,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// handshake I/O failed: {0}
    #[error("handshake I/O failed: {0}")]
    Io(#[from] io::Error),
    /// the peer closed the stream during the handshake ({got} of {expected} bytes)
    #[error("the peer closed the stream during the handshake ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    /// the peer does not speak the cloudstore protocol (magic {found:02x?})
    #[error("the peer does not speak the cloudstore protocol (magic {found:02x?})")]
    BadMagic { found: Vec<u8> },
    /// no common protocol version: client speaks {client_min}..={client_max}, server speaks {server_min}..={server_max}
    #[error("no common protocol version: client speaks {client_min}..={client_max}, server speaks {server_min}..={server_max}")]
    BadVersion {
        client_min: u16,
        client_max: u16,
        server_min: u16,
        server_max: u16,
    },
    /// the server refused the connection: {0}
    #[error("the server refused the connection: {0}")]
    Refused(RemoteError),
    /// the client's hello is malformed: {0}
    #[error("the client's hello is malformed: {0}")]
    Malformed(String),
}

impl HandshakeError {
    /// The error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::Io(_) | HandshakeError::Truncated { .. } => ErrorCode::ConnectionLost,
            HandshakeError::BadMagic { .. } => ErrorCode::BadMagic,
            HandshakeError::BadVersion { .. } => ErrorCode::BadVersion,
            HandshakeError::Refused(e) => e.code,
            HandshakeError::Malformed(_) => ErrorCode::Malformed,
        }
    }
}

fn read_exact_or(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), HandshakeError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(HandshakeError::Truncated {
                    got,
                    expected: buf.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Highest version in both ranges.
fn choose(a_min: u16, a_max: u16, b_min: u16, b_max: u16) -> Option<u16> {
    let hi = a_max.min(b_max);
    (hi >= a_min.max(b_min) && hi > 0).then_some(hi)
}

/// Runs the client's side: sends `hello`, reads the welcome.
pub fn client_handshake(
    r: &mut dyn Read,
    w: &mut dyn Write,
    hello: &Hello,
) -> Result<Session, HandshakeError> {
    w.write_all(&hello.encode())?;
    w.flush()?;
    let mut b = [0u8; WELCOME_LEN];
    read_exact_or(r, &mut b)?;
    if b[0..8] != MAGIC {
        return Err(HandshakeError::BadMagic {
            found: b[0..8].to_vec(),
        });
    }
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let status = u16_at(8);
    let version = u16_at(10);
    let (server_min, server_max) = (u16_at(12), u16_at(14));
    let granted = u32_at(16);
    let max_payload = u32_at(20);
    let msg_len = u16_at(24) as usize;
    if msg_len > MAX_WELCOME_MESSAGE {
        return Err(HandshakeError::Malformed(format!(
            "welcome message of {msg_len} bytes exceeds {MAX_WELCOME_MESSAGE}"
        )));
    }
    let mut msg = vec![0u8; msg_len];
    read_exact_or(r, &mut msg)?;
    let message = String::from_utf8_lossy(&msg).into_owned();
    if status != 0 {
        let code = ErrorCode::from_u16(status);
        if code == ErrorCode::BadVersion {
            return Err(HandshakeError::BadVersion {
                client_min: hello.min_version,
                client_max: hello.max_version,
                server_min,
                server_max,
            });
        }
        return Err(HandshakeError::Refused(RemoteError::new(code, message)));
    }
    if version < hello.min_version || version > hello.max_version {
        return Err(HandshakeError::BadVersion {
            client_min: hello.min_version,
            client_max: hello.max_version,
            server_min,
            server_max,
        });
    }
    Ok(Session {
        version,
        role: hello.role,
        features: granted & hello.features,
        max_payload,
    })
}

/// Runs the server's side: reads the hello, answers, and returns what was agreed. A refused
/// hello is answered with the reason before the error is returned, so the client can say why.
pub fn server_handshake(
    r: &mut dyn Read,
    w: &mut dyn Write,
    accept: &Accept,
) -> Result<Session, HandshakeError> {
    let mut b = [0u8; HELLO_LEN];
    read_exact_or(r, &mut b)?;
    let refuse = |w: &mut dyn Write, code: ErrorCode, msg: &str| -> io::Result<()> {
        w.write_all(&welcome(accept, code.to_u16(), 0, 0, msg))?;
        w.flush()
    };
    if b[0..8] != MAGIC {
        let e = HandshakeError::BadMagic {
            found: b[0..8].to_vec(),
        };
        let _ = refuse(w, ErrorCode::BadMagic, &e.to_string());
        return Err(e);
    }
    let client_min = u16::from_le_bytes([b[8], b[9]]);
    let client_max = u16::from_le_bytes([b[10], b[11]]);
    let role = Role::from_code(b[12]);
    let wanted = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
    if b[13..16] != [0, 0, 0] || role.is_none() || client_min > client_max {
        let e = HandshakeError::Malformed(format!(
            "role byte {}, reserved {:02x?}, versions {client_min}..={client_max}",
            b[12],
            &b[13..16]
        ));
        let _ = refuse(w, ErrorCode::Malformed, &e.to_string());
        return Err(e);
    }
    let role = role.expect("checked");
    let Some(version) = choose(
        client_min,
        client_max,
        accept.min_version,
        accept.max_version,
    ) else {
        let e = HandshakeError::BadVersion {
            client_min,
            client_max,
            server_min: accept.min_version,
            server_max: accept.max_version,
        };
        let _ = refuse(w, ErrorCode::BadVersion, &e.to_string());
        return Err(e);
    };
    if role != accept.role {
        let e = HandshakeError::Refused(RemoteError::new(
            ErrorCode::BadRole,
            format!(
                "this service serves {:?} connections, the client asked for {role:?}",
                accept.role
            ),
        ));
        let _ = refuse(w, ErrorCode::BadRole, &e.to_string());
        return Err(e);
    }
    let granted = wanted & accept.features;
    w.write_all(&welcome(accept, 0, version, granted, ""))?;
    w.flush()?;
    Ok(Session {
        version,
        role,
        features: granted,
        max_payload: MAX_PAYLOAD as u32,
    })
}

/// The welcome bytes: status 0 accepts `version`, any other status is the refusal's code.
fn welcome(accept: &Accept, status: u16, version: u16, granted: u32, msg: &str) -> Vec<u8> {
    let mut msg = msg.as_bytes();
    if msg.len() > MAX_WELCOME_MESSAGE {
        msg = &msg[..MAX_WELCOME_MESSAGE];
    }
    let mut b = Vec::with_capacity(WELCOME_LEN + msg.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&status.to_le_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&accept.min_version.to_le_bytes());
    b.extend_from_slice(&accept.max_version.to_le_bytes());
    b.extend_from_slice(&granted.to_le_bytes());
    b.extend_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    b.extend_from_slice(msg);
    b
}

/// Reads the client's hello and refuses it with `code` and `message` — for a server that
/// will not serve this caller at all (e.g. `VolumeRefused`: the qube asked for a volume not
/// configured for it). The client's connect fails with [`HandshakeError::Refused`] carrying
/// the message.
pub fn refuse_connection(
    r: &mut dyn Read,
    w: &mut dyn Write,
    code: ErrorCode,
    message: &str,
) -> Result<(), HandshakeError> {
    let mut b = [0u8; HELLO_LEN];
    // The hello is read (if it comes) so the client is not cut off mid-write; its content
    // does not matter.
    let _ = read_exact_or(r, &mut b);
    let accept = Accept::new(Role::Volume);
    w.write_all(&welcome(&accept, code.to_u16(), 0, 0, message))?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_is_chosen() {
        assert_eq!(choose(1, 3, 2, 5), Some(3));
        assert_eq!(choose(1, 1, 1, 1), Some(1));
        assert_eq!(choose(2, 3, 1, 1), None);
        assert_eq!(choose(0, 0, 0, 0), None);
    }
}
