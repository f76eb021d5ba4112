//! CronJob schedules: the standard five-field syntax and the `@` descriptors, as upstream's
//! parser (robfig/cron v3 `ParseStandard`) reads them, and the next activation time.
//!
//! Hand-written rather than taken from a crate: validation must answer with robfig's own error
//! texts (kubectl shows them), and its rules differ from the maintained Rust parsers in ways
//! that change when jobs run. `croner` accepts `7` for Sunday and `L`/`W`/`#`, combines a
//! restricted day-of-month and day-of-week its own way, and works on chrono; `cron` wants a
//! seconds field. robfig ORs the two day fields unless either starts with `*` or `?` (a
//! `*/n` with n > 1 counts as restricted), reads `N/step` as `N-max/step`, and has `@every`.

use std::time::Duration;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// Set when a field was written as `*` or `?` (robfig's star bit), which decides how the two
/// day fields combine.
const STAR: u64 = 1 << 63;

/// The allowed values of one field and its names.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Minute, hour, day of month, month and day of week as bit sets, in a time zone.
    Fields {
        /// Bit n: minute n.
        minute: u64,
        /// Bit n: hour n.
        hour: u64,
        /// Bit n: day n of the month.
        day_of_month: u64,
        /// Bit n: month n (January is 1).
        month: u64,
        /// Bit n: weekday n (Sunday is 0).
        day_of_week: u64,
        /// The schedule's zone; `None` is the controller's (UTC).
        zone: Option<TimeZone>,
    },
    /// `@every <duration>`: that long after the given time, on a whole second.
    Every(Duration),
}

/// Parses a schedule as `cron.ParseStandard` does; the error is robfig's text.
pub fn parse_standard(spec: &str) -> Result<Schedule, String> {
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    let mut spec = spec;
    let mut zone = None;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let equals = spec.find('=').unwrap_or(0);
        let Some(space) = spec.find(' ') else {
            return Err(format!("provided bad location {}", &spec[equals + 1..]));
        };
        let name = &spec[equals + 1..space];
        zone = Some(load_zone(name).map_err(|e| format!("provided bad location {name}: {e}"))?);
        spec = spec[space..].trim();
    }
    if spec.starts_with('@') {
        return descriptor(spec, zone);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    Ok(Schedule::Fields {
        minute: field(fields[0], &MINUTES)?,
        hour: field(fields[1], &HOURS)?,
        day_of_month: field(fields[2], &DAYS_OF_MONTH)?,
        month: field(fields[3], &MONTHS)?,
        day_of_week: field(fields[4], &DAYS_OF_WEEK)?,
        zone,
    })
}

/// A time zone by its IANA name, with Go's `LoadLocation` words when it is unknown.
pub fn load_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

fn bits(start: u32, end: u32, step: u32) -> u64 {
    (start..=end)
        .step_by(step as usize)
        .fold(0, |bits, n| bits | 1 << n)
}

fn all(bounds: &Bounds) -> u64 {
    bits(bounds.min, bounds.max, 1) | STAR
}

/// A comma-separated list of ranges.
fn field(text: &str, bounds: &Bounds) -> Result<u64, String> {
    text.split(',')
        .filter(|r| !r.is_empty())
        .try_fold(0, |bits, range| Ok(bits | self::range(range, bounds)?))
}

/// `*`, `?`, `n`, `a-b`, each optionally `/step`; `n/step` runs from n to the maximum.
fn range(expr: &str, bounds: &Bounds) -> Result<u64, String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut extra);
    if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (start, end, extra) = (bounds.min, bounds.max, STAR);
    } else {
        start = int_or_name(low_and_high[0], bounds)?;
        end = match low_and_high.len() {
            1 => start,
            2 => int_or_name(low_and_high[1], bounds)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        extra = 0;
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = int(range_and_step[1])?;
            if single {
                end = bounds.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < bounds.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            bounds.min
        ));
    }
    if end > bounds.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            bounds.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(bits(start, end, step) | extra)
}

fn int_or_name(expr: &str, bounds: &Bounds) -> Result<u32, String> {
    let lower = expr.to_ascii_lowercase();
    match bounds.names.iter().find(|(name, _)| *name == lower) {
        Some((_, value)) => Ok(*value),
        None => int(expr),
    }
}

/// A non-negative integer, with Go's `strconv.Atoi` words when it is not one.
fn int(expr: &str) -> Result<u32, String> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    let failure = |why: &str| {
        format!("failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: {why}")
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(failure("invalid syntax"));
    }
    let value: i64 = expr.parse().map_err(|_| failure("value out of range"))?;
    if value < 0 {
        return Err(format!("negative number ({value}) not allowed: {expr}"));
    }
    // Anything this large is beyond every field's maximum; the range check says so.
    Ok(value.min(u32::MAX as i64) as u32)
}

fn descriptor(spec: &str, zone: Option<TimeZone>) -> Result<Schedule, String> {
    let fields = |minute, hour, day_of_month, month, day_of_week| Schedule::Fields {
        minute,
        hour,
        day_of_month,
        month,
        day_of_week,
        zone: zone.clone(),
    };
    let (every_month, every_day, every_weekday) =
        (all(&MONTHS), all(&DAYS_OF_MONTH), all(&DAYS_OF_WEEK));
    Ok(match spec {
        "@yearly" | "@annually" => fields(1, 1, 1 << 1, 1 << 1, every_weekday),
        "@monthly" => fields(1, 1, 1 << 1, every_month, every_weekday),
        "@weekly" => fields(1, 1, every_day, every_month, 1),
        "@daily" | "@midnight" => fields(1, 1, every_day, every_month, every_weekday),
        "@hourly" => fields(1, all(&HOURS), every_day, every_month, every_weekday),
        _ => match spec.strip_prefix("@every ") {
            Some(text) => {
                let duration = go_duration(text)
                    .map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
                // At least a second, and whole seconds.
                Schedule::Every(Duration::from_secs(duration.as_secs().max(1)))
            }
            None => return Err(format!("unrecognized descriptor: {spec}")),
        },
    })
}

/// A Go duration (`1h30m`, `90s`, `1.5h`), as `time.ParseDuration` reads it; negative
/// durations come out as zero (a schedule rounds them up to a second).
fn go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let nanos = match unit {
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        total += value * nanos;
    }
    if total > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(if negative {
        Duration::ZERO
    } else {
        Duration::from_nanos(total as u64)
    })
}

impl Schedule {
    /// The schedule in `zone` unless it names its own (what `TZ=<zone> ` in front does).
    pub fn in_zone(mut self, wanted: TimeZone) -> Schedule {
        if let Schedule::Fields { zone, .. } = &mut self {
            zone.get_or_insert(wanted);
        }
        self
    }

    /// The first activation strictly after `after`, or `None` when there is none within five
    /// years (the 30th of February).
    pub fn next(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(every) => {
                let whole = Timestamp::from_second(after.as_second()).ok()?;
                whole
                    .checked_add(jiff::SignedDuration::try_from(*every).ok()?)
                    .ok()
            }
            Schedule::Fields {
                minute,
                hour,
                day_of_month,
                month,
                day_of_week,
                zone,
            } => {
                let zone = zone.clone().unwrap_or(TimeZone::UTC);
                let fields = [*minute, *hour, *day_of_month, *month, *day_of_week];
                next_in_zone(&fields, after.to_zoned(zone)).map(|z| z.timestamp())
            }
        }
    }
}

fn has(set: u64, n: i8) -> bool {
    set & (1 << n) != 0
}

fn day_matches(fields: &[u64; 5], date: Date) -> bool {
    let [_, _, day_of_month, _, day_of_week] = *fields;
    let on_day = has(day_of_month, date.day());
    let on_weekday = has(day_of_week, date.weekday().to_sunday_zero_offset());
    if day_of_month & STAR != 0 || day_of_week & STAR != 0 {
        on_day && on_weekday
    } else {
        on_day || on_weekday
    }
}

fn midnight(zone: &TimeZone, date: Date) -> Option<Zoned> {
    DateTime::from(date).to_zoned(zone.clone()).ok()
}

/// robfig's search: move to the first matching month, then day, hour and minute, starting
/// over from the month whenever a field wraps. Days and months step on the calendar, hours
/// and minutes in absolute time, so a time skipped by a DST change does not run that day and
/// one repeated runs twice, as upstream.
fn next_in_zone(fields: &[u64; 5], after: Zoned) -> Option<Zoned> {
    let [minute, hour, _, month, _] = *fields;
    let zone = after.time_zone().clone();
    // The next whole minute: the seconds field of a standard schedule is always 0.
    let start = after.timestamp().as_second().div_euclid(60) * 60 + 60;
    let mut t = Timestamp::from_second(start).ok()?.to_zoned(zone.clone());
    let year_limit = t.year() + 5;
    let mut moved = false;
    'wrap: loop {
        if t.year() > year_limit {
            return None;
        }
        while !has(month, t.month()) {
            if !moved {
                moved = true;
                t = midnight(&zone, t.date().first_of_month())?;
            }
            t = midnight(&zone, t.date().checked_add(1.month()).ok()?)?;
            if t.month() == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(fields, t.date()) {
            if !moved {
                moved = true;
                t = midnight(&zone, t.date())?;
            }
            t = midnight(&zone, t.date().tomorrow().ok()?)?;
            if t.day() == 1 {
                continue 'wrap;
            }
        }
        while !has(hour, t.hour()) {
            if !moved {
                moved = true;
                t = t
                    .with()
                    .minute(0)
                    .second(0)
                    .subsec_nanosecond(0)
                    .build()
                    .ok()?;
            }
            t = t.checked_add(1.hour()).ok()?;
            if t.hour() == 0 {
                continue 'wrap;
            }
        }
        while !has(minute, t.minute()) {
            moved = true;
            t = t.checked_add(1.minute()).ok()?;
            if t.minute() == 0 {
                continue 'wrap;
            }
        }
        return Some(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        parse_standard(spec)
            .unwrap()
            .next(at(after))
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        assert_eq!(
            next("* * * * *", "2024-05-01T10:00:00Z"),
            "2024-05-01T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-05-01T10:00:30Z"),
            "2024-05-01T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2024-05-01T10:01:00Z"),
            "2024-05-01T10:15:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2024-05-01T10:46:00Z"),
            "2024-05-01T11:05:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2024-05-01T13:00:00Z"),
            "2024-05-01T17:00:00Z"
        );
        assert_eq!(
            next("30 2 * FEB,mar *", "2024-05-01T00:00:00Z"),
            "2025-02-01T02:30:00Z"
        );
        assert_eq!(
            next("0 0 * * SUN", "2024-05-01T00:00:00Z"),
            "2024-05-05T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2024-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(next("0 0 31 2 *", "2024-03-01T00:00:00Z"), "", "never");
    }

    #[test]
    fn restricted_day_fields_combine_with_or_and_a_star_makes_and() {
        // The 13th, and every Friday.
        assert_eq!(
            next("0 0 13 * 5", "2024-05-01T00:00:00Z"),
            "2024-05-03T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * 5", "2024-05-10T00:00:00Z"),
            "2024-05-13T00:00:00Z"
        );
        // `*/1` keeps the star, `*/2` does not.
        assert_eq!(
            next("0 0 */1 * 5", "2024-05-01T00:00:00Z"),
            "2024-05-03T00:00:00Z"
        );
        // Odd days or Mondays (an AND would wait for Monday the 13th).
        assert_eq!(
            next("0 0 */2 * 1", "2024-05-01T00:00:00Z"),
            "2024-05-03T00:00:00Z"
        );
    }

    #[test]
    fn descriptors() {
        let after = "2024-05-01T10:20:00Z";
        assert_eq!(next("@hourly", after), "2024-05-01T11:00:00Z");
        assert_eq!(next("@daily", after), "2024-05-02T00:00:00Z");
        assert_eq!(next("@midnight", after), "2024-05-02T00:00:00Z");
        assert_eq!(next("@weekly", after), "2024-05-05T00:00:00Z");
        assert_eq!(next("@monthly", after), "2024-06-01T00:00:00Z");
        assert_eq!(next("@yearly", after), "2025-01-01T00:00:00Z");
        assert_eq!(next("@annually", after), "2025-01-01T00:00:00Z");
        assert_eq!(
            next("@every 1h30m", "2024-05-01T10:20:00.5Z"),
            "2024-05-01T11:50:00Z"
        );
        assert_eq!(next("@every 10ms", after), "2024-05-01T10:20:01Z");
    }

    #[test]
    fn time_zones_move_the_wall_clock() {
        let paris = parse_standard("0 9 * * *")
            .unwrap()
            .in_zone(load_zone("Europe/Paris").unwrap());
        // 09:00 in Paris is 07:00 UTC in summer, 08:00 in winter.
        assert_eq!(
            paris.next(at("2024-05-01T08:00:00Z")).unwrap().to_string(),
            "2024-05-02T07:00:00Z"
        );
        assert_eq!(
            paris.next(at("2024-12-01T00:00:00Z")).unwrap().to_string(),
            "2024-12-01T08:00:00Z"
        );
        // 02:30 does not exist on the day clocks go forward: that day is skipped.
        let gap = parse_standard("30 2 * * *")
            .unwrap()
            .in_zone(load_zone("Europe/Paris").unwrap());
        assert_eq!(
            gap.next(at("2024-03-30T02:00:00Z")).unwrap().to_string(),
            "2024-04-01T00:30:00Z"
        );
        assert_eq!(
            next("TZ=Asia/Tokyo 0 9 * * *", "2024-05-01T00:00:00Z"),
            "2024-05-02T00:00:00Z"
        );
        assert_eq!(
            load_zone("Mars/Olympus").unwrap_err(),
            "unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn errors_are_robfigs() {
        let error = |spec: &str| parse_standard(spec).unwrap_err();
        assert_eq!(error(""), "empty spec string");
        assert_eq!(
            error("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            error("0-60 * * * *"),
            "end of range (60) above maximum (59): 0-60"
        );
        assert_eq!(
            error("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            error("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(error("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(error("1/2/3 * * * *"), "too many slashes: 1/2/3");
        assert_eq!(error("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            error("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            error("@fortnightly"),
            "unrecognized descriptor: @fortnightly"
        );
        assert_eq!(
            error("@every 5d"),
            "failed to parse duration @every 5d: time: unknown unit \"d\" in duration \"5d\""
        );
    }
}
