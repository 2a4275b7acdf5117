//! Logging: journald with structured fields under systemd, readable stderr otherwise.
