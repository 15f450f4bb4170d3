//! RFC 3339 timestamps, to and from nanoseconds since the Unix epoch, and `strftime`-style
//! formats of them ([`TimeFormat`]), without a calendar crate (civil-date conversions after
//! Howard Hinnant's algorithms). Times are UTC.

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `2026-11-21T14:00:00.123Z` (millisecond precision, UTC).
pub fn format_rfc3339_millis(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos / 1_000_000) % 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

/// One piece of a [`TimeFormat`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum TimeItem {
    Text(String),
    /// A conversion: its letter, and for `%Nf` the number of digits.
    Spec(char, u8),
}

/// A `strftime`-style format of UTC times, checked when parsed: `%Y %y %m %d %e %j %H %I %M
/// %S %p %a %A %b %h %B %u %w %F %T %D %R %z %Z %s %n %t %%`, and, as in Envoy's
/// `%START_TIME(…)%`, `%f` (nanoseconds, 9 digits) or `%1f`…`%9f` (that many digits of the
/// fraction of the second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat(Vec<TimeItem>);

const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

impl TimeFormat {
    /// Parses `format`; an unknown or unfinished `%` conversion is an error naming it.
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            let mut spec = chars.next().ok_or_else(|| format!("time format {format:?} ends in a lone %"))?;
            let mut digits = 9;
            if let Some(n) = spec.to_digit(10).filter(|n| (1..=9).contains(n)) {
                digits = n as u8;
                spec = chars.next().filter(|&f| f == 'f').ok_or_else(|| format!("%{n} must be followed by f in time format {format:?}"))?;
            }
            match spec {
                '%' => text.push('%'),
                'n' => text.push('\n'),
                't' => text.push('\t'),
                'Y' | 'y' | 'm' | 'd' | 'e' | 'j' | 'H' | 'I' | 'M' | 'S' | 'p' | 'a' | 'A' | 'b' | 'h' | 'B' | 'u' | 'w' | 'F'
                | 'T' | 'D' | 'R' | 'z' | 'Z' | 's' | 'f' => {
                    if !text.is_empty() {
                        items.push(TimeItem::Text(std::mem::take(&mut text)));
                    }
                    items.push(TimeItem::Spec(spec, digits));
                }
                other => return Err(format!("unknown conversion %{other} in time format {format:?}")),
            }
        }
        if !text.is_empty() {
            items.push(TimeItem::Text(text));
        }
        Ok(Self(items))
    }

    /// Appends `unix_nanos` in this format to `out`.
    pub fn write(&self, unix_nanos: u64, out: &mut String) {
        use std::fmt::Write as _;
        let secs = unix_nanos / 1_000_000_000;
        let days = (secs / 86_400) as i64;
        let (year, month, day) = civil_from_days(days);
        let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
        // 1970-01-01 was a Thursday.
        let weekday = ((days + 4) % 7) as usize;
        let month_name = MONTHS[(month - 1) as usize];
        for item in &self.0 {
            let _ = match item {
                TimeItem::Text(t) => {
                    out.push_str(t);
                    Ok(())
                }
                TimeItem::Spec(spec, digits) => match spec {
                    'Y' => write!(out, "{year:04}"),
                    'y' => write!(out, "{:02}", year.rem_euclid(100)),
                    'm' => write!(out, "{month:02}"),
                    'd' => write!(out, "{day:02}"),
                    'e' => write!(out, "{day:2}"),
                    'j' => write!(out, "{:03}", days - days_from_civil(year, 1, 1) + 1),
                    'H' => write!(out, "{h:02}"),
                    'I' => write!(out, "{:02}", (h + 11) % 12 + 1),
                    'M' => write!(out, "{m:02}"),
                    'S' => write!(out, "{s:02}"),
                    'p' => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
                    'a' => write!(out, "{}", &WEEKDAYS[weekday][..3]),
                    'A' => write!(out, "{}", WEEKDAYS[weekday]),
                    'b' | 'h' => write!(out, "{}", &month_name[..3]),
                    'B' => write!(out, "{month_name}"),
                    'u' => write!(out, "{}", if weekday == 0 { 7 } else { weekday }),
                    'w' => write!(out, "{weekday}"),
                    'F' => write!(out, "{year:04}-{month:02}-{day:02}"),
                    'T' => write!(out, "{h:02}:{m:02}:{s:02}"),
                    'D' => write!(out, "{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
                    'R' => write!(out, "{h:02}:{m:02}"),
                    'z' => write!(out, "+0000"),
                    'Z' => write!(out, "UTC"),
                    's' => write!(out, "{secs}"),
                    _ => {
                        let nanos = unix_nanos % 1_000_000_000;
                        write!(out, "{:0width$}", nanos / 10u64.pow(9 - u32::from(*digits)), width = usize::from(*digits))
                    }
                },
            };
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into Unix nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = std::str::from_utf8(b.get(range)?).ok()?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = std::str::from_utf8(&b[start..i]).ok()?;
        if digits.is_empty() {
            return None;
        }
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        nanos = padded.parse().ok()?;
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let offset = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = 1_795_269_600_123_000_000;
        assert_eq!(format_rfc3339_millis(t), "2026-11-21T14:00:00.123Z");
        assert_eq!(parse_rfc3339("2026-11-21T14:00:00.123Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-11-21T16:00:00.123+02:00"), Some(t));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn time_formats_write_envoys_start_time_conversions() {
        // 2026-11-21T14:05:09.123456789Z, a Saturday, day 325 of the year.
        let t = 1_795_269_909_123_456_789;
        let render = |f: &str| {
            let mut out = String::new();
            TimeFormat::parse(f).expect("valid").write(t, &mut out);
            out
        };
        assert_eq!(render("%Y/%m/%dT%H:%M:%S%z %s"), "2026/11/21T14:05:09+0000 1795269909");
        assert_eq!(render("%s.%3f|%6f|%f|%1f"), "1795269909.123|123456|123456789|1");
        assert_eq!(
            render("%F %T %Z|%a %A %b %B %j %u %w|%D %R %I%p %e|100%%"),
            "2026-11-21 14:05:09 UTC|Sat Saturday Nov November 325 6 6|11/21/26 14:05 02PM 21|100%"
        );
        assert_eq!(render("at %H"), "at 14");
        for bad in ["%Q", "%", "%3x", "%0f"] {
            assert!(TimeFormat::parse(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn rejects_malformed_times() {
        for bad in ["", "2026-11-21", "2026-13-01T00:00:00Z", "2026-11-21T14:00:00", "2026-11-21T14:00:00.Z", "x026-11-21T14:00:00Z", "2026-11-21T14:00:00+0200"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
