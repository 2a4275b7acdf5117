//! UTC times without a calendar dependency (`versions` output, `restore --at`, conflict
//! names, HTTP dates): Howard Hinnant's `days_from_civil` / `civil_from_days` (chrono's
//! algorithm too).

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(secs: i64, _nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month 1-12, day 1-31) of day `z` counted from 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `@UNIXSECONDS`, `YYYY-MM-DD`, `YYYY-MM-DD HH:MM` or `YYYY-MM-DD HH:MM:SS`
/// (also with `T` between date and time), all UTC, into Unix seconds. A date alone means
/// its end (23:59:59), so `--at 2026-11-20` restores what the file was that day.
pub fn parse_utc(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{text:?} is not a time: use YYYY-MM-DD, \"YYYY-MM-DD HH:MM[:SS]\" (UTC) or @UNIXSECONDS"
        )
    };
    let t = text.trim().trim_end_matches(" UTC").trim_end_matches('Z');
    if let Some(s) = t.strip_prefix('@') {
        return s.parse().map_err(|_| bad());
    }
    let (date, time) = match t.split_once([' ', 'T']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let dp: Vec<&str> = date.split('-').collect();
    if dp.len() != 3 || dp[0].len() != 4 || dp[1].len() != 2 || dp[2].len() != 2 {
        return Err(bad());
    }
    let y: i64 = dp[0].parse().map_err(|_| bad())?;
    let m: u32 = dp[1].parse().map_err(|_| bad())?;
    let d: u32 = dp[2].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let (hh, mm, ss) = match time {
        None => (23, 59, 59),
        Some(tm) => {
            let tp: Vec<&str> = tm.split(':').collect();
            if !(tp.len() == 2 || tp.len() == 3) || tp.iter().any(|p| p.len() != 2) {
                return Err(bad());
            }
            let n = |s: &str, max: i64| s.parse::<i64>().ok().filter(|v| (0..=max).contains(v));
            (
                n(tp[0], 23).ok_or_else(bad)?,
                n(tp[1], 59).ok_or_else(bad)?,
                tp.get(2).map_or(Some(0), |s| n(s, 60)).ok_or_else(bad)?,
            )
        }
    };
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return Err(bad());
    }
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_utc(0, 0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000, 0), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(951_782_400, 0), "2000-02-29 00:00:00 UTC");
        assert_eq!(parse_utc("2023-11-14 22:13:20").unwrap(), 1_700_000_000);
        assert_eq!(parse_utc("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert_eq!(parse_utc("2023-11-14 22:13").unwrap(), 1_699_999_980);
        assert_eq!(parse_utc("1970-01-01").unwrap(), 86_399);
        assert_eq!(parse_utc("@42").unwrap(), 42);
        for t in [-86_400 * 365 * 3, 0, 1, 4_102_444_800] {
            assert_eq!(parse_utc(&format_utc(t, 0)).unwrap(), t);
        }
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "yesterday",
            "2023-02-30",
            "2023-13-01",
            "2023-1-1",
            "2023-11-14 25:00",
            "@x",
        ] {
            let e = parse_utc(bad).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }
}
