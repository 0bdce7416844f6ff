//! The typed workflow: triggers and actions as the engine evaluates them and as they are
//! stored (serde, in `workflows.definition`, versioned by [`Definition::version`]), plus the
//! field checks both the gRPC conversion and the JSON import build it with, so a bad value is
//! reported under whichever field name the caller used.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::FieldViolation;

/// The stored form's version; bumped when the shape changes incompatibly.
pub const DEFINITION_VERSION: u32 = 1;

/// Longest message text a workflow sends.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// Most items in any list of a workflow (intervals, holidays, countries, patterns, ...).
pub const MAX_LIST: usize = 200;

/// Triggers and actions of one workflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Shape version, [`DEFINITION_VERSION`].
    pub version: u32,
    /// When it applies.
    #[serde(default)]
    pub trigger: Trigger,
    /// What it does.
    #[serde(default)]
    pub actions: Actions,
}

impl Default for Definition {
    fn default() -> Self {
        Self {
            version: DEFINITION_VERSION,
            trigger: Trigger::default(),
            actions: Actions::default(),
        }
    }
}

/// When a workflow applies: every set condition must hold; the empty trigger always does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Trigger {
    /// Inside or outside a business-hours calendar.
    pub business_hours: Option<HoursCondition>,
    /// Upper-case ISO 3166-1 alpha-2 codes; empty = any.
    pub countries: Vec<String>,
    /// Page URL patterns (see [`url_matches`](super::select::url_matches)); empty = any.
    pub page_urls: Vec<String>,
    /// Visitor types; empty = any.
    pub visitor_types: Vec<VisitorType>,
    /// Custom attribute conditions; all must hold.
    pub attributes: Vec<AttributeCondition>,
}

impl Trigger {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Trigger::default()
    }
}

/// The business-hours condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoursCondition {
    /// The calendar.
    pub calendar: Calendar,
    /// False: holds while open; true: holds while closed.
    #[serde(default)]
    pub outside: bool,
}

/// A business-hours calendar in local wall-clock time of an IANA zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calendar {
    /// IANA zone name, checked by [`time_zone`] when built.
    pub time_zone: String,
    /// Opening intervals.
    #[serde(default)]
    pub intervals: Vec<Interval>,
    /// Closed local dates.
    #[serde(default)]
    pub holidays: Vec<NaiveDate>,
    /// One-off closures.
    #[serde(default)]
    pub closures: Vec<Closure>,
}

/// An opening interval on one ISO weekday: `[start, end)` minutes after local midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// 1 = Monday ... 7 = Sunday.
    pub weekday: u8,
    /// Start, 0..=1439.
    pub start: WallTime,
    /// End, 1..=1440, after start.
    pub end: WallTime,
}

/// Minutes after local midnight, written "HH:MM" (up to "24:00").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WallTime(u16);

impl WallTime {
    /// 00:00.
    pub const MIDNIGHT: WallTime = WallTime(0);
    /// Minutes after midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }
    /// From minutes after midnight, at most 24:00.
    pub fn from_minutes(m: u16) -> Option<Self> {
        (m <= 1440).then_some(Self(m))
    }
    /// Parses "HH:MM" (two digits each; 24:00 allowed as the end of a day).
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 5 || b[2] != b':' || !s.is_char_boundary(2) {
            return None;
        }
        let (h, m) = (s[..2].parse::<u16>().ok()?, s[3..].parse::<u16>().ok()?);
        if !b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit) || m > 59 {
            return None;
        }
        let total = h * 60 + m;
        (total <= 1440).then_some(Self(total))
    }
}

impl std::fmt::Display for WallTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl TryFrom<String> for WallTime {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("{s:?} is not HH:MM"))
    }
}

impl From<WallTime> for String {
    fn from(t: WallTime) -> String {
        t.to_string()
    }
}

/// A one-off closure `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// First closed moment.
    pub start: DateTime<Utc>,
    /// First open moment again.
    pub end: DateTime<Utc>,
}

/// Who the visitor is to the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitorType {
    /// First visit.
    New,
    /// Has visited before.
    Returning,
    /// Logged in on the tenant's site and verified.
    Identified,
}

impl VisitorType {
    /// Spelling in messages and in the import format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Returning => "returning",
            Self::Identified => "identified",
        }
    }
    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "new" => Self::New,
            "returning" => Self::Returning,
            "identified" => Self::Identified,
            _ => return None,
        })
    }
}

/// A condition on one custom attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeCondition {
    /// Attribute key.
    pub key: String,
    /// The test.
    pub test: AttributeTest,
}

/// How an attribute is tested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeTest {
    /// Equals this value (exactly).
    Equals(String),
    /// Equals one of these values.
    OneOf(Vec<String>),
    /// Present with any value.
    Present,
}

/// Assignment strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fair rotation: assigned longest ago first.
    #[default]
    RoundRobin,
    /// Fewest open chats first.
    LeastActive,
    /// Highest level in the required skills first, then least active.
    SkillBased,
}

impl Strategy {
    /// Spelling in messages and in the import format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastActive => "least_active",
            Self::SkillBased => "skill_based",
        }
    }
}

/// A skill an agent must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkillNeed {
    /// Skill name (lower case).
    pub skill: String,
    /// Lowest accepted level; None = any.
    #[serde(default)]
    pub min_level: Option<i16>,
    /// Dropped once the chat has waited this many seconds; None = never.
    #[serde(default)]
    pub relax_after_seconds: Option<u32>,
}

/// What happens at the max wait.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMaxWait {
    /// Keep waiting.
    #[default]
    KeepWaiting,
    /// Widen the search.
    Overflow(OverflowTarget),
    /// Stop waiting; take a message and an email address.
    OfflineMessage,
    /// Close the chat.
    Close,
}

/// Where an overflow looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowTarget {
    /// Any agent, no skills required.
    AllAgents,
    /// Agents with these skills instead of the required ones.
    Skills(Vec<String>),
}

/// What a workflow does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Actions {
    /// Assign automatically; false leaves the chat queued for agents to pick.
    pub auto_assign: bool,
    /// Assignment strategy.
    pub strategy: Strategy,
    /// Skills an agent must have (for every strategy).
    pub required_skills: Vec<SkillNeed>,
    /// Sent when the chat starts.
    pub welcome_message: String,
    /// Sent when the chat is queued.
    pub queue_message: String,
    /// Longest wait before `on_max_wait`; None = no limit.
    pub max_wait_seconds: Option<u32>,
    /// What happens after the max wait.
    pub on_max_wait: OnMaxWait,
    /// Told to the visitor at the max wait.
    pub max_wait_message: String,
    /// Queue priority, higher first.
    pub priority: i32,
    /// An assigned agent who has not replied within this long loses the chat to the next
    /// agent (it returns to the queue at its place); None = never.
    pub reroute_after_seconds: Option<u32>,
    /// How long an agent who went offline keeps the chats that wait for their answer
    /// before those go back to the queue at their place.
    pub offline_grace_seconds: u32,
    /// When set, the dispatcher offers a chat instead of assigning it: the agent takes it
    /// with AcceptChat within this long, or it goes to the next agent. None = assign at once.
    pub offer_timeout_seconds: Option<u32>,
}

/// The offline grace period when a workflow sets none.
pub const DEFAULT_OFFLINE_GRACE_SECONDS: u32 = 120;

impl Default for Actions {
    /// The built-in defaults: auto-assign round-robin, no skills, no max wait.
    fn default() -> Self {
        Self {
            auto_assign: true,
            strategy: Strategy::RoundRobin,
            required_skills: Vec::new(),
            welcome_message: String::new(),
            queue_message: String::new(),
            max_wait_seconds: None,
            on_max_wait: OnMaxWait::KeepWaiting,
            max_wait_message: String::new(),
            priority: 0,
            reroute_after_seconds: None,
            offline_grace_seconds: DEFAULT_OFFLINE_GRACE_SECONDS,
            offer_timeout_seconds: None,
        }
    }
}

// ---- field checks shared by every way a definition is built ----

fn bad(field: &str, d: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, d)
}

/// An IANA time zone name.
pub fn time_zone(field: &str, s: &str) -> Result<String, FieldViolation> {
    s.parse::<chrono_tz::Tz>()
        .map(|tz| tz.name().to_owned())
        .map_err(|_| bad(field, "must be an IANA time zone such as Europe/Berlin"))
}

/// An ISO weekday 1-7.
pub fn weekday(field: &str, n: u32) -> Result<u8, FieldViolation> {
    match u8::try_from(n) {
        Ok(d @ 1..=7) => Ok(d),
        _ => Err(bad(
            field,
            "must be an ISO weekday, 1 (Monday) to 7 (Sunday)",
        )),
    }
}

/// A "HH:MM" time.
pub fn wall_time(field: &str, s: &str) -> Result<WallTime, FieldViolation> {
    WallTime::parse(s).ok_or_else(|| bad(field, "must be a time as HH:MM, 00:00 to 24:00"))
}

/// An interval, `end_field` named when the end is not after the start.
pub fn interval(
    day: u8,
    start: WallTime,
    end: WallTime,
    end_field: &str,
) -> Result<Interval, FieldViolation> {
    if end <= start {
        return Err(bad(end_field, format!("must be after the start {start}")));
    }
    if start.minutes() == 1440 {
        return Err(bad(end_field, "an interval cannot start at 24:00"));
    }
    Ok(Interval {
        weekday: day,
        start,
        end,
    })
}

/// A "YYYY-MM-DD" date.
pub fn date(field: &str, s: &str) -> Result<NaiveDate, FieldViolation> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10)
        .ok_or_else(|| bad(field, "must be a date as YYYY-MM-DD"))
}

/// A closure whose end is after its start.
pub fn closure(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    end_field: &str,
) -> Result<Closure, FieldViolation> {
    if end <= start {
        return Err(bad(end_field, "must be after the start"));
    }
    Ok(Closure { start, end })
}

/// An ISO 3166-1 alpha-2 code (two ASCII letters), upper-cased.
pub fn country(field: &str, s: &str) -> Result<String, FieldViolation> {
    let c = s.trim();
    if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(c.to_ascii_uppercase())
    } else {
        Err(bad(
            field,
            "must be an ISO 3166-1 alpha-2 country code such as DE",
        ))
    }
}

/// A page URL pattern: 1-2048 characters, no whitespace or control characters.
pub fn url_pattern(field: &str, s: &str) -> Result<String, FieldViolation> {
    let p = s.trim();
    if p.is_empty() || p.chars().all(|c| c == '*') {
        return Err(bad(field, "must contain more than wildcards"));
    }
    if p.len() > 2048 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(field, "must be at most 2048 characters without spaces"));
    }
    Ok(p.to_owned())
}

/// An attribute key: 1-64 of `[A-Za-z0-9_.-]`.
pub fn attribute_key(field: &str, s: &str) -> Result<String, FieldViolation> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(bad(field, "must be 1-64 of A-Z, a-z, 0-9, '_', '.', '-'"))
    }
}

/// An attribute value: at most 1000 characters.
pub fn attribute_value(field: &str, s: &str) -> Result<String, FieldViolation> {
    if s.chars().count() > 1000 {
        Err(bad(field, "must be at most 1000 characters"))
    } else {
        Ok(s.to_owned())
    }
}

/// A skill name as agents carry them (lower-cased).
pub fn skill_name(field: &str, s: &str) -> Result<String, FieldViolation> {
    super::super::validate::skill(field, s, 1).map(|(n, _)| n)
}

/// A minimum skill level: 0 = any, else 1-10.
pub fn min_level(field: &str, n: u32) -> Result<Option<i16>, FieldViolation> {
    match n {
        0 => Ok(None),
        1..=10 => Ok(Some(n as i16)),
        _ => Err(bad(field, "must be 0 (any) or 1-10")),
    }
}

/// A message a workflow sends: trimmed, at most [`MAX_MESSAGE_CHARS`].
pub fn message(field: &str, s: &str) -> Result<String, FieldViolation> {
    let t = s.trim();
    if t.chars().count() > MAX_MESSAGE_CHARS {
        Err(bad(
            field,
            format!("must be at most {MAX_MESSAGE_CHARS} characters"),
        ))
    } else {
        Ok(t.to_owned())
    }
}

/// A queue priority, -100..=100.
pub fn priority(field: &str, n: i64) -> Result<i32, FieldViolation> {
    match i32::try_from(n) {
        Ok(p) if (-100..=100).contains(&p) => Ok(p),
        _ => Err(bad(field, "must be -100 to 100")),
    }
}

/// A list length check.
pub fn list_len(field: &str, n: usize) -> Result<(), FieldViolation> {
    if n > MAX_LIST {
        Err(bad(field, format!("must have at most {MAX_LIST} entries")))
    } else {
        Ok(())
    }
}

/// A max wait: 0 = none, else at most a day.
pub fn max_wait(field: &str, n: u64) -> Result<Option<u32>, FieldViolation> {
    match n {
        0 => Ok(None),
        1..=86_400 => Ok(Some(n as u32)),
        _ => Err(bad(field, "must be 0 (no limit) to 86400 seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_parse_strictly() {
        assert_eq!(WallTime::parse("09:30").unwrap().minutes(), 570);
        assert_eq!(WallTime::parse("24:00").unwrap().minutes(), 1440);
        assert_eq!(WallTime::parse("00:00").unwrap().minutes(), 0);
        for bad in [
            "9:30", "09:60", "24:01", "25:00", "0930", "09:3a", "+9:30", "", "é9:30",
        ] {
            assert!(WallTime::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn field_checks_name_the_field() {
        assert_eq!(time_zone("tz", "Europe/Berlin").unwrap(), "Europe/Berlin");
        assert_eq!(time_zone("tz", "Mars/Olympus").unwrap_err().field, "tz");
        assert_eq!(country("c", "de").unwrap(), "DE");
        assert!(country("c", "DEU").is_err());
        assert!(country("c", "D1").is_err());
        let (nine, five) = (
            WallTime::parse("09:00").unwrap(),
            WallTime::parse("17:00").unwrap(),
        );
        assert!(interval(1, nine, five, "end").is_ok());
        assert_eq!(interval(1, five, nine, "x.end").unwrap_err().field, "x.end");
        assert!(interval(1, nine, nine, "end").is_err());
        assert!(date("d", "2026-12-25").is_ok());
        assert!(date("d", "2026-13-01").is_err());
        assert!(date("d", "2026-1-1").is_err());
        assert!(weekday("w", 0).is_err() && weekday("w", 8).is_err());
        assert!(url_pattern("u", "**").is_err());
        assert!(priority("p", 101).is_err());
        assert_eq!(min_level("m", 0).unwrap(), None);
        assert!(min_level("m", 11).is_err());
    }

    #[test]
    fn the_stored_form_round_trips_and_carries_its_version() {
        let d = Definition {
            trigger: Trigger {
                business_hours: Some(HoursCondition {
                    calendar: Calendar {
                        time_zone: "Europe/Berlin".into(),
                        intervals: vec![Interval {
                            weekday: 1,
                            start: WallTime(540),
                            end: WallTime(1020),
                        }],
                        holidays: vec![NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()],
                        closures: vec![],
                    },
                    outside: false,
                }),
                attributes: vec![AttributeCondition {
                    key: "plan".into(),
                    test: AttributeTest::OneOf(vec!["pro".into()]),
                }],
                ..Default::default()
            },
            actions: Actions {
                on_max_wait: OnMaxWait::Overflow(OverflowTarget::Skills(vec!["general".into()])),
                ..Default::default()
            },
            ..Default::default()
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(
            json["trigger"]["business_hours"]["calendar"]["intervals"][0]["start"],
            "09:00"
        );
        let back: Definition = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
    }
}
