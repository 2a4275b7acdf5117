//! qubesdb client: reads and watches keys of the qube's configuration database.
