//! The cloudstore inter-qube protocol: handshake, frames, messages. Knows nothing of crypto or FUSE.
#![forbid(unsafe_code)]
