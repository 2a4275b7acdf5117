//! A stand-in for the parts of Qubes OS that cloudstore talks to, faithful at the
//! interfaces the agent uses, so that the real `cloudstore` binary runs unchanged.
//!
//! Each interface is one module; the `qubes-sim` binary is a thin command line over them.
//! - [`qubesdb`]: a daemon speaking the real qubesdb wire protocol;
//! - [`policy`]: the qrexec policy files, parsed and evaluated as dom0 does;
//! - [`qrexec`]: `qrexec-client-vm` and the service side of a call (socket services with
//!   their descriptor, executable services);
//! - [`broker`]: dom0's qrexec part, one trigger socket per qube;
//! - [`config`], [`dom0`], [`qube`], [`exec`]: `qubes-sim up|exec|down`: each qube a
//!   process tree in its own namespaces with its own users, qubesdb and policy from the
//!   dom0 package's mapping, and the real `cloudstore` agent run as its unit says.

pub mod broker;
pub mod config;
pub mod dom0;
pub mod exec;
pub mod policy;
pub mod qrexec;
pub mod qube;
pub mod qubesdb;
