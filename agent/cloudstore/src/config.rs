//! The qube's cloudstore configuration, read from qubesdb (`/cloudstore/<key>`, falling back
//! to `/vm-config/cloudstore.<key>` on a stock dom0).
