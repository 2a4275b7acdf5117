//! gocryptfs-compatible volume format: crypto core, content and name encryption, config file. No I/O.
#![forbid(unsafe_code)]
