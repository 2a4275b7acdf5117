//! sd_notify: READY, STATUS and WATCHDOG to systemd when it supervises us.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd, or a
//! unit that is not `Type=notify`). Failures to notify are logged and otherwise ignored:
//! a lost status line must never stop a role.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    // unset_env = false: the variables stay for later notifications from this process.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The service is up: `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What the agent is doing now (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The service is shutting down.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for, following `sd_watchdog_enabled(3)`:
/// `WATCHDOG_USEC` set to a positive number, and `WATCHDOG_PID`, if set, naming us.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Pings systemd's watchdog from the loop that proves we are alive: the caller checks
/// [`Watchdog::until_due`] to bound its waits and calls [`Watchdog::ping_if_due`] each
/// turn, so a stuck loop stops the pings and systemd restarts the unit.
#[derive(Debug)]
pub struct Watchdog {
    period: Duration,
    next: Instant,
}

impl Watchdog {
    /// `None` unless the unit sets `WatchdogSec=`.
    pub fn from_env() -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
            .map(Watchdog::new)
    }

    /// Pings at half of systemd's `interval`, as sd_watchdog_enabled(3) recommends.
    pub fn new(interval: Duration) -> Watchdog {
        let period = interval / 2;
        Watchdog {
            period,
            next: Instant::now(),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Time left until the next ping is due (zero if overdue).
    pub fn until_due(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Sends `WATCHDOG=1` if a ping is due; returns whether it did.
    pub fn ping_if_due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        send(&[NotifyState::Watchdog]);
        self.next = now + self.period;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_rules() {
        let d = watchdog_interval_from(Some("30000000"), None, 7);
        assert_eq!(d, Some(Duration::from_secs(30)));
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("8"), 7),
            None,
            "meant for another process"
        );
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("abc"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
    }

    #[test]
    fn pings_at_half_interval() {
        let mut w = Watchdog::new(Duration::from_secs(10));
        assert_eq!(w.period(), Duration::from_secs(5));
        assert!(w.ping_if_due(), "first ping is immediate");
        assert!(!w.ping_if_due(), "not again before the period");
        assert!(w.until_due() > Duration::from_secs(4));
    }
}
