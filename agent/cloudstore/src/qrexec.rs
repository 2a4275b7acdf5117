//! qrexec socket services, seen from the service side.
//!
//! A socket-based qrexec service is an `AF_UNIX` stream socket found at
//! `/etc/qubes-rpc/SERVICE` (or a symlink to one). For each call, qrexec-agent connects to it
//! and, before any of the caller's data, writes the *service descriptor*:
//! `SERVICE+ARGUMENT SOURCE_VM\0` (QubesOS/qubes-core-qrexec doc/execution.rst, "Qubes RPC
//! Command Syntax" steps 5–8 and "Types of qrexec services" item 2). Everything after the NUL
//! is the caller's byte stream; what we write back is the caller's stdout.
//!
//! The descriptor comes from qrexec-agent (trusted) and names the calling qube as dom0's
//! qrexec-daemon established it, so it is the source of truth for *who* calls. It still gets
//! parsed strictly: a malformed one means something other than qrexec-agent connected.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// qrexec refuses `SERVICE+ARG` longer than NAME_MAX for a file lookup (execution.rst,
/// "Qubes RPC service execution"); a qube name is at most 31 characters (core-admin
/// qubes/vm/__init__.py `validate_name`). Calls to dom0 add two more short tokens. 1 KiB
/// leaves room for all of it and keeps a hostile peer from making us buffer more.
pub const MAX_DESCRIPTOR_LEN: usize = 1024;

/// Longest qube name Qubes accepts (core-admin qubes/vm/__init__.py `validate_name`).
const MAX_QUBE_NAME_LEN: usize = 31;

/// One parsed service call: which service, with which argument, from which qube.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCall {
    pub service: String,
    pub argument: String,
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// the peer closed the connection before the end of the qrexec service descriptor
    #[error("the peer closed the connection before the end of the qrexec service descriptor")]
    Truncated,
    /// the descriptor is longer than the limit, so the peer is not qrexec-agent
    #[error("qrexec service descriptor longer than {MAX_DESCRIPTOR_LEN} bytes")]
    TooLong,
    #[error("qrexec service descriptor is not UTF-8")]
    NotUtf8,
    #[error("malformed qrexec service descriptor {0:?}: expected \"SERVICE+ARGUMENT SOURCE\"")]
    Malformed(String),
    #[error("invalid calling qube name {0:?} in the qrexec service descriptor")]
    BadSource(String),
    #[error("reading the qrexec service descriptor: {0}")]
    Io(#[from] io::Error),
}

/// Reads the descriptor byte by byte so not one byte of the caller's stream that follows
/// the NUL is consumed here; the stream can then be handed as-is to the protocol.
pub fn read_descriptor(stream: &mut impl Read) -> Result<ServiceCall, DescriptorError> {
    let mut raw = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(DescriptorError::Truncated),
            Ok(_) if byte[0] == 0 => break,
            Ok(_) => {
                if raw.len() == MAX_DESCRIPTOR_LEN {
                    return Err(DescriptorError::TooLong);
                }
                raw.push(byte[0]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let text = String::from_utf8(raw).map_err(|_| DescriptorError::NotUtf8)?;
    parse_descriptor(&text)
}

/// Parses `SERVICE+ARGUMENT SOURCE[ TARGET_TYPE TARGET]` (without the NUL).
pub fn parse_descriptor(text: &str) -> Result<ServiceCall, DescriptorError> {
    let malformed = || DescriptorError::Malformed(text.to_owned());
    let tokens: Vec<&str> = text.split(' ').collect();
    // Two tokens for VM-to-VM calls; four for calls to dom0 (execution.rst step 8).
    if !(tokens.len() == 2 || tokens.len() == 4) || tokens.iter().any(|t| t.is_empty()) {
        return Err(malformed());
    }
    let (service, argument) = match tokens[0].split_once('+') {
        Some((service, argument)) => (service, argument),
        None => (tokens[0], ""),
    };
    if service.is_empty() {
        return Err(malformed());
    }
    let source = tokens[1];
    if !is_valid_qube_name(source) {
        return Err(DescriptorError::BadSource(source.to_owned()));
    }
    Ok(ServiceCall {
        service: service.to_owned(),
        argument: argument.to_owned(),
        source: source.to_owned(),
    })
}

/// The program a consumer or the transfer qube runs to call a service in another qube:
/// `$CLOUDSTORE_QREXEC_CLIENT` if set (the Qubes stand-in of the tests), else Qubes'
/// `qrexec-client-vm` (`qrexec-client-vm TARGET SERVICE+ARG`: with no local program its
/// stdin/stdout are the stream; exit 126 when dom0's policy denies the call).
pub fn client_program() -> std::ffi::OsString {
    match std::env::var_os(CLIENT_ENV) {
        Some(p) if !p.is_empty() => p,
        _ => "qrexec-client-vm".into(),
    }
}

/// See [`client_program`].
pub const CLIENT_ENV: &str = "CLOUDSTORE_QREXEC_CLIENT";

/// Connects to a socket service the way qrexec-agent does: connect, then the descriptor
/// `SERVICE+ARG SOURCE\0`; the stream then carries the caller's bytes. For tests and tools
/// on the storage qube itself.
pub fn connect_socket_service(
    socket: &Path,
    service: &str,
    argument: &str,
    source: &str,
) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(&descriptor(service, argument, source))?;
    Ok(stream)
}

/// The descriptor bytes qrexec-agent writes for a call: always with the `+`, even when the
/// argument is empty (`cloudstore.Sync+ transfer`), as libqrexec/exec.c builds it.
pub fn descriptor(service: &str, argument: &str, source: &str) -> Vec<u8> {
    let mut d = format!("{service}+{argument} {source}").into_bytes();
    d.push(0);
    d
}

/// Qube names as core-admin accepts them: a letter first, then letters, digits, `_.-`
/// (qubes/vm/__init__.py `validate_name`), at most 31 characters.
pub fn is_valid_qube_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_QUBE_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_vm_to_vm_descriptor() {
        let call = parse_descriptor("cloudstore.Volume+work my-work").unwrap();
        assert_eq!(
            call,
            ServiceCall {
                service: "cloudstore.Volume".into(),
                argument: "work".into(),
                source: "my-work".into()
            }
        );
    }

    #[test]
    fn descriptors_round_trip_like_qrexec_agent_writes_them() {
        assert_eq!(
            descriptor("cloudstore.Sync", "", "transfer"),
            b"cloudstore.Sync+ transfer\0"
        );
        for (svc, arg) in [("cloudstore.Sync", ""), ("cloudstore.Volume", "work")] {
            let d = descriptor(svc, arg, "my-work");
            let call = read_descriptor(&mut &d[..]).unwrap();
            assert_eq!((call.service.as_str(), call.argument.as_str()), (svc, arg));
        }
    }

    #[test]
    fn a_service_without_argument_has_an_empty_one() {
        let call = parse_descriptor("cloudstore.Sync transfer").unwrap();
        assert_eq!(call.service, "cloudstore.Sync");
        assert_eq!(call.argument, "");
        let call = parse_descriptor("cloudstore.Sync+ transfer").unwrap();
        assert_eq!(call.argument, "");
    }

    #[test]
    fn the_argument_keeps_everything_after_the_first_plus() {
        let call = parse_descriptor("svc+a+b src").unwrap();
        assert_eq!(call.argument, "a+b");
    }

    #[test]
    fn rejects_malformed_descriptors() {
        for bad in [
            "", "svc", "svc  src", "svc src ", " svc src", "+arg src", "a b c",
        ] {
            assert!(
                matches!(parse_descriptor(bad), Err(DescriptorError::Malformed(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn rejects_bad_source_names() {
        for bad in ["-x", "1qube", "a/b", "qube\u{e9}", &"a".repeat(32)] {
            let text = format!("svc+arg {bad}");
            assert!(
                matches!(parse_descriptor(&text), Err(DescriptorError::BadSource(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn reading_stops_exactly_at_the_nul() {
        let mut stream: &[u8] = b"cloudstore.Volume+work my-work\0PAYLOAD";
        let call = read_descriptor(&mut stream).unwrap();
        assert_eq!(call.argument, "work");
        assert_eq!(stream, b"PAYLOAD");
    }

    #[test]
    fn reading_refuses_truncated_and_oversized_descriptors() {
        let mut truncated: &[u8] = b"cloudstore.Volume+work my-wo";
        assert!(matches!(
            read_descriptor(&mut truncated),
            Err(DescriptorError::Truncated)
        ));
        let long = vec![b'a'; MAX_DESCRIPTOR_LEN + 10];
        assert!(matches!(
            read_descriptor(&mut long.as_slice()),
            Err(DescriptorError::TooLong)
        ));
        let mut not_utf8: &[u8] = b"svc+\xff src\0";
        assert!(matches!(
            read_descriptor(&mut not_utf8),
            Err(DescriptorError::NotUtf8)
        ));
    }
}
