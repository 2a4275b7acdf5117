//! The qubesdb wire format: one fixed-size header (`struct qdb_hdr`), optionally followed by
//! `data_len` bytes of value.
//!
//! Follows QubesOS/qubes-core-qubesdb `include/qubesdb.h`. The C struct is sent as raw
//! memory, so its layout is that of the C compiler on Linux: `uint8_t type` at offset 0,
//! `char path[64]` at 1..65, three bytes of padding, `uint32_t data_len` at 68..72 in the
//! host's byte order. Client and daemon always run on the same machine (a UNIX socket), so
//! native byte order is what the real daemon reads and writes.

/// `QDB_MAX_PATH`: the path field is 64 bytes, NUL included, so a path has at most 63 bytes.
pub const MAX_PATH_FIELD: usize = 64;

/// Longest path in bytes: the field minus its terminating NUL.
pub const MAX_PATH_LEN: usize = MAX_PATH_FIELD - 1;

/// `QDB_MAX_DATA` from `include/qubesdb.h`.
pub const MAX_DATA: usize = 3072;

/// Longest value the real daemon accepts in a write: `verify_hdr()` in
/// `daemon/db-cmds.c` rejects `data_len >= QDB_MAX_DATA`, so 3071 bytes is the real limit
/// even though the client library (`client/qdb-client.c`, `qdb_write`) lets 3072 through.
pub const MAX_VALUE_LEN: usize = MAX_DATA - 1;

/// `sizeof(struct qdb_hdr)` on Linux (see the module comment for the layout).
pub const HEADER_LEN: usize = 72;

const DATA_LEN_OFFSET: usize = 68;

/// `enum qdb_msg` of `include/qubesdb.h`, in its order (the values are the C enum's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    CmdRead = 0,
    CmdWrite = 1,
    CmdMultiread = 2,
    CmdList = 3,
    CmdRm = 4,
    CmdWatch = 5,
    CmdUnwatch = 6,
    RespOk = 7,
    RespErrorNoent = 8,
    RespError = 9,
    RespRead = 10,
    RespMultiread = 11,
    RespList = 12,
    RespWatch = 13,
}

impl MsgType {
    pub fn from_u8(raw: u8) -> Option<MsgType> {
        use MsgType::*;
        Some(match raw {
            0 => CmdRead,
            1 => CmdWrite,
            2 => CmdMultiread,
            3 => CmdList,
            4 => CmdRm,
            5 => CmdWatch,
            6 => CmdUnwatch,
            7 => RespOk,
            8 => RespErrorNoent,
            9 => RespError,
            10 => RespRead,
            11 => RespMultiread,
            12 => RespList,
            13 => RespWatch,
            _ => return None,
        })
    }
}

/// One decoded header. `kind` stays raw so that a daemon can answer an unknown command
/// with `QDB_RESP_ERROR` as the real one does, instead of failing to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    /// The path bytes before the first NUL (all 64 if the sender put no NUL).
    pub path: Vec<u8>,
    pub data_len: u32,
}

impl Header {
    /// A header with a path that the caller has already checked to fit (≤ 63 bytes).
    pub fn new(kind: MsgType, path: &[u8], data_len: u32) -> Header {
        assert!(
            path.len() <= MAX_PATH_LEN,
            "qubesdb path longer than 63 bytes"
        );
        Header {
            kind: kind as u8,
            path: path.to_vec(),
            data_len,
        }
    }

    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u8(self.kind)
    }

    /// The path as text, for messages and comparisons (lossy on invalid UTF-8).
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[0] = self.kind;
        let n = self.path.len().min(MAX_PATH_LEN);
        buf[1..1 + n].copy_from_slice(&self.path[..n]);
        buf[DATA_LEN_OFFSET..HEADER_LEN].copy_from_slice(&self.data_len.to_ne_bytes());
        buf
    }

    pub fn decode(buf: &[u8; HEADER_LEN]) -> Header {
        let field = &buf[1..1 + MAX_PATH_FIELD];
        let end = field.iter().position(|&b| b == 0).unwrap_or(MAX_PATH_FIELD);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&buf[DATA_LEN_OFFSET..HEADER_LEN]);
        Header {
            kind: buf[0],
            path: field[..end].to_vec(),
            data_len: u32::from_ne_bytes(len_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_struct_qdb_hdr() {
        let h = Header::new(MsgType::CmdWrite, b"/cloudstore/role", 7);
        let buf = h.encode();
        assert_eq!(buf.len(), 72);
        assert_eq!(buf[0], 1, "QDB_CMD_WRITE is the second enum value");
        assert_eq!(&buf[1..17], b"/cloudstore/role");
        assert!(
            buf[17..68].iter().all(|&b| b == 0),
            "NUL-terminated, padded"
        );
        assert_eq!(&buf[68..72], &7u32.to_ne_bytes());
        assert_eq!(Header::decode(&buf), h);
    }

    #[test]
    fn enum_values_follow_qubesdb_h() {
        assert_eq!(MsgType::RespOk as u8, 7);
        assert_eq!(MsgType::RespWatch as u8, 13);
        for raw in 0..=13u8 {
            assert_eq!(MsgType::from_u8(raw).map(|m| m as u8), Some(raw));
        }
        assert_eq!(MsgType::from_u8(14), None);
        assert_eq!(MsgType::from_u8(0xff), None);
    }

    #[test]
    fn decode_without_nul_takes_whole_field() {
        let mut buf = [b'a'; HEADER_LEN];
        buf[0] = 0;
        let h = Header::decode(&buf);
        assert_eq!(h.path.len(), 64);
    }

    #[test]
    #[should_panic(expected = "longer than 63")]
    fn overlong_path_is_a_programming_error() {
        Header::new(MsgType::CmdRead, &[b'/'; 64], 0);
    }
}
