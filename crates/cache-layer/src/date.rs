//! HTTP-date parsing (RFC 9110 §5.6.7) in all three historic formats, to Unix seconds.
//!
//! Returns `None` on anything malformed; callers decide what an invalid date means.

/// Parses an IMF-fixdate, an RFC 850 date or an asctime date into seconds since the Unix epoch;
/// `None` when malformed.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let s = s.trim_matches(|c: char| c == ' ' || c == '\t');
    if s.len() > 64 || !s.is_ascii() {
        return None;
    }
    parse_imf_fixdate(s)
        .or_else(|| parse_rfc850(s))
        .or_else(|| parse_asctime(s))
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

// Names are matched without regard to case: senders that shout (`THU`, `AUG`, `gMT`) still
// mean a valid date, and nothing else could be meant.
fn month(s: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .and_then(|i| u32::try_from(i + 1).ok())
}

fn is_day(names: &[&str], s: &str) -> bool {
    names.iter().any(|d| d.eq_ignore_ascii_case(s))
}

fn is_gmt(s: &str) -> bool {
    s.eq_ignore_ascii_case("GMT")
}

fn num(s: &str, len: usize) -> Option<u32> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn time_of_day(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split(':');
    let h = num(it.next()?, 2)?;
    let m = num(it.next()?, 2)?;
    let sec = num(it.next()?, 2)?;
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some((h, m, sec))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let (day, rest) = s.split_once(", ")?;
    if !is_day(&DAYS, day) {
        return None;
    }
    let mut it = rest.split(' ');
    let d = num(it.next()?, 2)?;
    let mo = month(it.next()?)?;
    let y = num(it.next()?, 4)?;
    let t = time_of_day(it.next()?)?;
    if !is_gmt(it.next()?) || it.next().is_some() {
        return None;
    }
    to_unix(y, mo, d, t)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn parse_rfc850(s: &str) -> Option<u64> {
    let (day, rest) = s.split_once(", ")?;
    if !is_day(&LONG_DAYS, day) {
        return None;
    }
    let mut it = rest.split(' ');
    let mut date = it.next()?.split('-');
    let d = num(date.next()?, 2)?;
    let mo = month(date.next()?)?;
    let yy = num(date.next()?, 2)?;
    if date.next().is_some() {
        return None;
    }
    let t = time_of_day(it.next()?)?;
    if !is_gmt(it.next()?) || it.next().is_some() {
        return None;
    }
    // RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is in the past century.
    let y = if yy < 70 { 2000 + yy } else { 1900 + yy };
    to_unix(y, mo, d, t)
}

/// `Sun Nov  6 08:49:37 1994`
fn parse_asctime(s: &str) -> Option<u64> {
    let mut it = s.split(' ').filter(|p| !p.is_empty());
    let day = it.next()?;
    if !is_day(&DAYS, day) {
        return None;
    }
    let mo = month(it.next()?)?;
    let dstr = it.next()?;
    let d = if dstr.len() == 1 {
        num(dstr, 1)?
    } else {
        num(dstr, 2)?
    };
    let t = time_of_day(it.next()?)?;
    let y = num(it.next()?, 4)?;
    if it.next().is_some() {
        return None;
    }
    to_unix(y, mo, d, t)
}

fn to_unix(y: u32, mo: u32, d: u32, (h, mi, s): (u32, u32, u32)) -> Option<u64> {
    if !(1970..=9999).contains(&y) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s.min(59));
    u64::try_from(secs).ok()
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats Unix seconds as an IMF-fixdate.
///
/// ```
/// use cache_layer::date::{format_http_date, parse_http_date};
/// assert_eq!(format_http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
/// assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
/// ```
pub fn format_http_date(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (inverse of days_from_civil).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // 1970-01-01 was a Thursday.
    let wd = usize::try_from((days + 3).rem_euclid(7)).unwrap_or(0);
    let mi = usize::try_from(m - 1).unwrap_or(0);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[wd % 7],
        d,
        MONTHS[mi % 12],
        y,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = 784_111_777;

    #[test]
    fn three_formats() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(T));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(T));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(T));
        assert_eq!(parse_http_date("SUN, 06 NOV 1994 08:49:37 gmt"), Some(T));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "0",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(s), None, "{s}");
        }
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_http_date(T), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_http_date(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse_http_date(&s);
        }

        #[test]
        fn round_trip(secs in 0u64..253_402_300_799) {
            prop_assert_eq!(parse_http_date(&format_http_date(secs)), Some(secs));
        }
    }
}
