//! Report buckets in an IANA time zone: where each local hour, day or ISO week starts, as
//! UTC instants, with daylight-saving changes taken from the zone (a day is 23 or 25 hours
//! when the clocks change; the repeated hour of a fall-back is two hour buckets with the same
//! local label). Every boundary is a slot boundary, because every zone's offset is a multiple
//! of 15 minutes.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::error::FieldViolation;

/// Size of a report bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketSize {
    /// A local clock hour.
    Hour,
    /// A local calendar day (midnight to midnight).
    Day,
    /// An ISO week, Monday 00:00 to Monday 00:00 local time.
    Week,
}

/// Most buckets one query may return.
pub const MAX_BUCKETS: usize = 1500;
/// Longest range one query may cover.
pub const MAX_RANGE_DAYS: i64 = 732;

/// Parses an IANA zone name; empty means UTC.
pub fn zone(field: &str, name: &str) -> Result<Tz, FieldViolation> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>().map_err(|_| FieldViolation {
        field: field.to_owned(),
        description: format!("unknown IANA time zone {name:?}"),
    })
}

/// The first instant of a local date (its midnight, or the first instant after a gap when
/// midnight does not exist there).
fn day_start(tz: Tz, d: NaiveDate) -> DateTime<Utc> {
    let mut t = d.and_time(NaiveTime::MIN);
    for _ in 0..96 {
        if let Some(x) = tz.from_local_datetime(&t).earliest() {
            return x.with_timezone(&Utc);
        }
        t += Duration::minutes(15);
    }
    // No zone has a gap of a day.
    Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))
}

/// The start of the bucket holding `t`.
pub fn floor(t: DateTime<Utc>, size: BucketSize, tz: Tz) -> DateTime<Utc> {
    let local = t.with_timezone(&tz);
    match size {
        BucketSize::Hour => {
            let into = Duration::minutes(i64::from(local.minute()))
                + Duration::seconds(i64::from(local.second()))
                + Duration::nanoseconds(i64::from(local.nanosecond()));
            t - into
        }
        BucketSize::Day => day_start(tz, local.date_naive()),
        BucketSize::Week => {
            let d = local.date_naive();
            let monday = d - Duration::days(i64::from(d.weekday().num_days_from_monday()));
            day_start(tz, monday)
        }
    }
}

/// The start of the bucket after the one starting at `b`.
pub fn next(b: DateTime<Utc>, size: BucketSize, tz: Tz) -> DateTime<Utc> {
    match size {
        BucketSize::Hour => b + Duration::hours(1),
        BucketSize::Day | BucketSize::Week => {
            let days = if size == BucketSize::Day { 1 } else { 7 };
            let d = b.with_timezone(&tz).date_naive() + Duration::days(days);
            day_start(tz, d)
        }
    }
}

/// Bucket starts covering `[start, end)`, extended to whole buckets, followed by the end of
/// the last one: n buckets give n + 1 instants. Field violations for a bad range.
pub fn bounds(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    size: BucketSize,
    tz: Tz,
) -> Result<Vec<DateTime<Utc>>, FieldViolation> {
    let bad = |d: &str| FieldViolation {
        field: "end_time".into(),
        description: d.into(),
    };
    if end <= start {
        return Err(bad("must be after start_time"));
    }
    if end - start > Duration::days(MAX_RANGE_DAYS) {
        return Err(bad(&format!(
            "the range may cover at most {MAX_RANGE_DAYS} days"
        )));
    }
    let mut out = vec![floor(start, size, tz)];
    while *out.last().expect("never empty") < end {
        if out.len() > MAX_BUCKETS {
            return Err(bad(&format!(
                "at most {MAX_BUCKETS} buckets; choose a larger bucket_size or a shorter range"
            )));
        }
        let n = next(*out.last().expect("never empty"), size, tz);
        out.push(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn days_follow_the_zone_across_daylight_saving() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // Clocks go forward on 2026-03-29: that day is 23 hours long.
        let b = bounds(
            utc(2026, 3, 28, 12, 0),
            utc(2026, 3, 30, 12, 0),
            BucketSize::Day,
            tz,
        )
        .unwrap();
        assert_eq!(
            b,
            vec![
                utc(2026, 3, 27, 23, 0),
                utc(2026, 3, 28, 23, 0),
                utc(2026, 3, 29, 22, 0),
                utc(2026, 3, 30, 22, 0)
            ]
        );
    }

    #[test]
    fn hours_in_a_half_hour_zone_and_weeks_start_on_monday() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        assert_eq!(
            floor(utc(2026, 3, 2, 10, 10), BucketSize::Hour, tz),
            utc(2026, 3, 2, 9, 30)
        );
        // 2026-03-04 is a Wednesday; Monday 2026-03-02 00:00 IST is 03-01 18:30 UTC.
        assert_eq!(
            floor(utc(2026, 3, 4, 12, 0), BucketSize::Week, tz),
            utc(2026, 3, 1, 18, 30)
        );
    }

    #[test]
    fn bad_ranges_and_zones_are_field_errors() {
        let tz = Tz::UTC;
        let t = utc(2026, 1, 1, 0, 0);
        assert_eq!(
            bounds(t, t, BucketSize::Day, tz).unwrap_err().field,
            "end_time"
        );
        assert!(bounds(t, t + Duration::days(800), BucketSize::Week, tz).is_err());
        assert!(bounds(t, t + Duration::days(90), BucketSize::Hour, tz).is_err());
        assert_eq!(
            zone("time_zone", "Mars/Olympus").unwrap_err().field,
            "time_zone"
        );
        assert_eq!(zone("time_zone", "").unwrap(), Tz::UTC);
    }
}
