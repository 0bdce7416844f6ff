//! Business hours: whether a calendar is open at an instant. Intervals are local wall-clock
//! times of the calendar's IANA zone (chrono-tz), so "09:00-17:00" stays that on both sides
//! of a daylight saving change; holidays are local dates; closures are instants.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::model::{Calendar, WallTime};

/// Why a calendar is open or closed at an instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Openness {
    /// Inside an opening interval.
    Open {
        /// Local weekday, 1 = Monday.
        weekday: u8,
        /// The interval's start.
        start: WallTime,
        /// The interval's end.
        end: WallTime,
    },
    /// No interval covers the local time.
    OutsideHours {
        /// Local weekday, 1 = Monday.
        weekday: u8,
        /// Local time of day.
        local_time: WallTime,
    },
    /// The local date is a holiday.
    Holiday {
        /// The date.
        date: NaiveDate,
    },
    /// A one-off closure covers the instant.
    Closure {
        /// Closure start.
        start: DateTime<Utc>,
        /// Closure end.
        end: DateTime<Utc>,
    },
    /// The stored zone name is unknown (only when it was stored by something that skipped
    /// validation); treated as closed.
    UnknownTimeZone,
}

impl Openness {
    /// Whether this means open.
    pub fn is_open(&self) -> bool {
        matches!(self, Openness::Open { .. })
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The short English name of an ISO weekday.
pub fn day_name(weekday: u8) -> &'static str {
    DAYS.get(usize::from(weekday.saturating_sub(1)))
        .copied()
        .unwrap_or("?")
}

impl std::fmt::Display for Openness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Openness::Open {
                weekday,
                start,
                end,
            } => write!(f, "open ({} {start}-{end})", day_name(*weekday)),
            Openness::OutsideHours {
                weekday,
                local_time,
            } => write!(
                f,
                "closed ({} {local_time} is outside the opening hours)",
                day_name(*weekday)
            ),
            Openness::Holiday { date } => write!(f, "closed (holiday {date})"),
            Openness::Closure { start, end } => write!(
                f,
                "closed (closure {} to {})",
                start.to_rfc3339(),
                end.to_rfc3339()
            ),
            Openness::UnknownTimeZone => write!(f, "closed (unknown time zone)"),
        }
    }
}

impl Calendar {
    /// Whether the calendar is open at `at`, and why.
    pub fn openness(&self, at: DateTime<Utc>) -> Openness {
        let Ok(tz) = self.time_zone.parse::<chrono_tz::Tz>() else {
            return Openness::UnknownTimeZone;
        };
        if let Some(c) = self.closures.iter().find(|c| c.start <= at && at < c.end) {
            return Openness::Closure {
                start: c.start,
                end: c.end,
            };
        }
        let local = at.with_timezone(&tz);
        let date = local.date_naive();
        if self.holidays.contains(&date) {
            return Openness::Holiday { date };
        }
        let weekday = local.weekday().number_from_monday() as u8;
        // Whole minutes: an interval ending 17:00 is closed from 17:00:00 on.
        let minute = (local.hour() * 60 + local.minute()) as u16;
        match self.intervals.iter().find(|i| {
            i.weekday == weekday && i.start.minutes() <= minute && minute < i.end.minutes()
        }) {
            Some(i) => Openness::Open {
                weekday,
                start: i.start,
                end: i.end,
            },
            None => Openness::OutsideHours {
                weekday,
                local_time: WallTime::from_minutes(minute).unwrap_or(WallTime::MIDNIGHT),
            },
        }
    }
}

/// How far ahead [`Calendar::next_change`] looks.
pub const HORIZON_DAYS: i64 = 400;

impl Calendar {
    /// The first instant after `at` at which the calendar opens if it is closed at `at`, or
    /// closes if it is open; None when that does not happen within [`HORIZON_DAYS`] (or the
    /// zone is unknown). This is what a widget's "back at 09:00" and a timer that re-checks
    /// queued chats when hours open are computed from.
    pub fn next_change(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.time_zone.parse::<chrono_tz::Tz>().ok()?;
        let open_now = self.openness(at).is_open();
        let mut closure_points: Vec<DateTime<Utc>> = self
            .closures
            .iter()
            .flat_map(|c| [c.start, c.end])
            .filter(|c| *c > at)
            .collect();
        closure_points.sort();
        let mut next_closure = 0;
        let first = at.with_timezone(&tz).date_naive();
        // Day by day, so that the usual answer (today or within a few days) costs a handful
        // of zone conversions, not a year's worth.
        for offset in 0..=HORIZON_DAYS {
            let day = first.checked_add_signed(Duration::days(offset))?;
            let weekday = day.weekday().number_from_monday() as u8;
            // Midnight matters too: holidays start and end there.
            let mut local_minutes = vec![0u16];
            for i in self.intervals.iter().filter(|i| i.weekday == weekday) {
                local_minutes.extend([i.start.minutes(), i.end.minutes()]);
            }
            let midnight = day.and_hms_opt(0, 0, 0)?;
            let mut candidates: Vec<DateTime<Utc>> = local_minutes
                .into_iter()
                .flat_map(|m| utc_instants(&tz, midnight + Duration::minutes(i64::from(m))))
                .filter(|c| *c > at)
                .collect();
            let day_end = utc_instants(&tz, midnight + Duration::days(1))
                .first()
                .copied()?;
            while let Some(c) = closure_points.get(next_closure).filter(|c| **c < day_end) {
                candidates.push(*c);
                next_closure += 1;
            }
            candidates.sort();
            candidates.dedup();
            if let Some(c) = candidates
                .into_iter()
                .find(|c| self.openness(*c).is_open() != open_now)
            {
                return Some(c);
            }
        }
        None
    }
}

/// The instants a local wall-clock time denotes: one, two (the repeated hour when clocks go
/// back) or, inside the skipped hour when clocks go forward, the first valid minute after it.
fn utc_instants(tz: &chrono_tz::Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    for shift in 0..=180 {
        let l = local + Duration::minutes(shift);
        match tz.from_local_datetime(&l) {
            chrono::LocalResult::Single(t) => return vec![t.with_timezone(&Utc)],
            chrono::LocalResult::Ambiguous(a, b) => {
                return vec![a.with_timezone(&Utc), b.with_timezone(&Utc)];
            }
            chrono::LocalResult::None => {}
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::workflows::model::{Closure, Interval};
    use chrono::TimeZone;

    fn t(s: &str) -> WallTime {
        WallTime::parse(s).unwrap()
    }

    fn berlin_weekdays() -> Calendar {
        Calendar {
            time_zone: "Europe/Berlin".into(),
            intervals: (1..=5)
                .flat_map(|d| {
                    [
                        Interval {
                            weekday: d,
                            start: t("09:00"),
                            end: t("12:00"),
                        },
                        Interval {
                            weekday: d,
                            start: t("13:00"),
                            end: t("17:00"),
                        },
                    ]
                })
                .collect(),
            holidays: vec![NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()],
            closures: vec![],
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn several_intervals_a_day() {
        let c = berlin_weekdays();
        // Tue 1 Dec 2026, CET = UTC+1.
        assert!(c.openness(utc(2026, 12, 1, 8, 0)).is_open()); // 09:00 local
        assert!(!c.openness(utc(2026, 12, 1, 7, 59)).is_open()); // 08:59
        assert!(!c.openness(utc(2026, 12, 1, 11, 30)).is_open()); // 12:30 lunch
        assert!(c.openness(utc(2026, 12, 1, 12, 0)).is_open()); // 13:00
        assert!(!c.openness(utc(2026, 12, 1, 16, 0)).is_open()); // 17:00 exclusive
        // Saturday 5 Dec.
        assert_eq!(
            c.openness(utc(2026, 12, 5, 10, 0)),
            Openness::OutsideHours {
                weekday: 6,
                local_time: t("11:00")
            }
        );
    }

    #[test]
    fn intervals_are_local_wall_clock_across_both_dst_changes() {
        let c = berlin_weekdays();
        // Summer time starts Sun 29 Mar 2026. Fri 27 Mar (CET, UTC+1): 09:00 local = 08:00Z.
        assert!(c.openness(utc(2026, 3, 27, 8, 0)).is_open());
        assert!(!c.openness(utc(2026, 3, 27, 7, 30)).is_open());
        // Mon 30 Mar (CEST, UTC+2): 09:00 local = 07:00Z; 08:00Z is 10:00 local.
        assert!(c.openness(utc(2026, 3, 30, 7, 0)).is_open());
        assert!(!c.openness(utc(2026, 3, 30, 6, 59)).is_open());
        assert!(!c.openness(utc(2026, 3, 30, 15, 0)).is_open()); // 17:00 CEST
        assert!(c.openness(utc(2026, 3, 27, 15, 0)).is_open()); // 16:00 CET
        // Winter time starts Sun 25 Oct 2026. Fri 23 Oct: CEST; Mon 26 Oct: CET.
        assert!(c.openness(utc(2026, 10, 23, 7, 0)).is_open());
        assert!(!c.openness(utc(2026, 10, 26, 7, 0)).is_open()); // 08:00 CET
        assert!(c.openness(utc(2026, 10, 26, 8, 0)).is_open());
    }

    #[test]
    fn the_skipped_and_repeated_hours_of_a_dst_sunday() {
        let c = Calendar {
            time_zone: "Europe/Berlin".into(),
            intervals: vec![Interval {
                weekday: 7,
                start: t("02:00"),
                end: t("03:00"),
            }],
            holidays: vec![],
            closures: vec![],
        };
        // 29 Mar 2026: 02:00-03:00 local does not exist (01:00Z is 03:00 CEST).
        assert!(!c.openness(utc(2026, 3, 29, 0, 59)).is_open()); // 01:59 CET
        assert!(!c.openness(utc(2026, 3, 29, 1, 0)).is_open()); // 03:00 CEST
        // 25 Oct 2026: 02:00-03:00 local happens twice, open both times.
        assert!(c.openness(utc(2026, 10, 25, 0, 30)).is_open()); // 02:30 CEST
        assert!(c.openness(utc(2026, 10, 25, 1, 30)).is_open()); // 02:30 CET
        assert!(!c.openness(utc(2026, 10, 25, 2, 0)).is_open()); // 03:00 CET
    }

    #[test]
    fn holidays_are_local_dates_and_closures_are_instants() {
        let mut c = berlin_weekdays();
        // Fri 25 Dec 2026 10:00 local is a holiday.
        assert_eq!(
            c.openness(utc(2026, 12, 25, 9, 0)),
            Openness::Holiday {
                date: NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()
            }
        );
        // 24 Dec 23:30Z is already the 25th in Berlin (and a Friday otherwise closed anyway);
        // Thu 24 Dec 10:00 local is open.
        assert!(c.openness(utc(2026, 12, 24, 9, 0)).is_open());
        let start = utc(2026, 12, 24, 12, 0);
        c.closures.push(Closure {
            start,
            end: utc(2026, 12, 24, 14, 0),
        });
        assert!(matches!(c.openness(start), Openness::Closure { .. }));
        assert!(c.openness(utc(2026, 12, 24, 14, 0)).is_open()); // 15:00 local, end exclusive
    }

    #[test]
    fn the_next_change_finds_the_next_opening_and_closing() {
        let c = berlin_weekdays();
        // Tue 1 Dec 2026 10:00 local: open until the lunch break at 12:00 local (11:00Z).
        assert_eq!(
            c.next_change(utc(2026, 12, 1, 9, 0)),
            Some(utc(2026, 12, 1, 11, 0))
        );
        // In the lunch break: open again at 13:00 local.
        assert_eq!(
            c.next_change(utc(2026, 12, 1, 11, 30)),
            Some(utc(2026, 12, 1, 12, 0))
        );
        // Friday evening: open again on Monday 09:00 local.
        assert_eq!(
            c.next_change(utc(2026, 12, 4, 18, 0)),
            Some(utc(2026, 12, 7, 8, 0))
        );
        // Thu 24 Dec after hours: Fri 25 is a holiday, so Monday 28th.
        assert_eq!(
            c.next_change(utc(2026, 12, 24, 17, 0)),
            Some(utc(2026, 12, 28, 8, 0))
        );
        // Across the spring DST change: Fri 27 Mar 17:00 CET -> Mon 30 Mar 09:00 CEST = 07:00Z.
        assert_eq!(
            c.next_change(utc(2026, 3, 27, 16, 30)),
            Some(utc(2026, 3, 30, 7, 0))
        );
        // A calendar that never opens never changes.
        let never = Calendar {
            intervals: vec![],
            ..berlin_weekdays()
        };
        assert_eq!(never.next_change(utc(2026, 12, 1, 9, 0)), None);
    }

    #[test]
    fn the_next_change_of_a_closure_and_of_a_skipped_hour() {
        let mut c = berlin_weekdays();
        let (start, end) = (utc(2026, 12, 1, 9, 0), utc(2026, 12, 1, 10, 0));
        c.closures.push(Closure { start, end });
        assert_eq!(c.next_change(utc(2026, 12, 1, 8, 30)), Some(start));
        assert_eq!(c.next_change(start), Some(end));
        // An interval starting inside the skipped hour opens when the clock reaches 03:00.
        let sunday = Calendar {
            time_zone: "Europe/Berlin".into(),
            intervals: vec![Interval {
                weekday: 7,
                start: t("02:30"),
                end: t("04:00"),
            }],
            holidays: vec![],
            closures: vec![],
        };
        assert_eq!(
            sunday.next_change(utc(2026, 3, 28, 12, 0)),
            Some(utc(2026, 3, 29, 1, 0))
        );
    }

    #[test]
    fn an_unknown_zone_is_closed_not_a_panic() {
        let mut c = berlin_weekdays();
        c.time_zone = "Nowhere/Land".into();
        assert_eq!(
            c.openness(utc(2026, 12, 1, 9, 0)),
            Openness::UnknownTimeZone
        );
    }
}
