//! sd_notify: READY, STATUS and WATCHDOG to systemd when it supervises us.
