//! A stand-in for the parts of Qubes OS that cloudstore talks to, faithful at the
//! interfaces the agent uses, so that the real `cloudstore` binary runs unchanged.
//!
//! Each interface is one module; the `qubes-sim` binary is a thin command line over them.
//! Today: [`qubesdb`], a daemon speaking the real qubesdb wire protocol. The qrexec stand-in
//! and the per-qube process trees join as further modules.

pub mod qubesdb;
