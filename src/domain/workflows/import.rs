//! The product brief's JSON shape of a workflow, accepted as an import format and converted
//! to the typed form. Errors name the bad field by its path in the file, e.g.
//! `[1].triggers.business_hours.hours.mon[0][1]`. Unknown keys are refused (a typo would
//! otherwise silently widen a workflow).
//!
//! ```json
//! {"name": "...", "enabled": true, "priority": 0, "default": false,
//!  "triggers": {"business_hours": {"timezone": "Europe/Berlin",
//!                                  "hours": {"mon": [["09:00","17:00"]]},
//!                                  "holidays": ["2026-12-25"],
//!                                  "closures": [{"from": "2026-12-24T12:00:00Z",
//!                                                "until": "2026-12-27T00:00:00Z"}],
//!                                  "inside": true} | true | false,
//!               "visitor_location": ["DE","AT"], "page_url_contains": "/pricing" | [...],
//!               "visitor_type": "new" | [...], "attributes": {"plan": "pro" | ["a","b"] | true}},
//!  "actions": {"auto_assign": true, "assignment_type": "skill_based",
//!              "required_skills": ["billing" | {"skill": "billing", "min_level": 5,
//!                                               "relax_after": 120}],
//!              "welcome_message": "...", "queue_message": "...", "max_wait_time": 300,
//!              "on_max_wait": "keep_waiting" | "overflow" | "offline_message" | "close",
//!              "overflow_skills": ["general"], "max_wait_message": "..."}}
//! ```
//! `business_hours: true` / `false` mean inside / outside the default calendar, Monday to
//! Friday 09:00-17:00 UTC (the brief names no calendar for that form); the typed form spells
//! it out, so a listing shows exactly what was assumed.

use serde_json::{Map, Value};

use super::model::{self as m, Actions, Calendar, Definition, HoursCondition, Trigger};
use crate::domain::validate;
use crate::error::FieldViolation;

/// One imported workflow, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Name.
    pub name: String,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// The tenant default.
    pub is_default: bool,
    /// Triggers and actions.
    pub definition: Definition,
}

/// Parses a file holding one workflow object or a list of them. On error, every bad field
/// found (in all workflows) is returned.
pub fn parse(text: &str) -> Result<Vec<Imported>, Vec<FieldViolation>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        vec![FieldViolation::new(
            "",
            format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        )]
    })?;
    let mut errs = Vec::new();
    let items: Vec<(String, &Value)> = match &value {
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]."), v))
            .collect(),
        v => vec![(String::new(), v)],
    };
    if items.is_empty() {
        errs.push(FieldViolation::new("", "the list holds no workflow"));
    }
    let mut out = Vec::new();
    for (prefix, v) in items {
        let mut cx = Cx {
            errs: &mut errs,
            prefix,
        };
        if let Some(w) = cx.workflow(v) {
            out.push(w);
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

struct Cx<'a> {
    errs: &'a mut Vec<FieldViolation>,
    prefix: String,
}

const DAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Cx<'_> {
    fn path(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }
    fn bad(&mut self, field: &str, d: impl Into<String>) {
        let p = self.path(field);
        self.errs.push(FieldViolation::new(&p, d));
    }
    fn check<T>(&mut self, r: Result<T, FieldViolation>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(mut e) => {
                e.field = self.path(&e.field);
                self.errs.push(e);
                None
            }
        }
    }
    fn object<'v>(
        &mut self,
        field: &str,
        v: &'v Value,
        keys: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(o) = v.as_object() else {
            self.bad(field, "must be an object");
            return None;
        };
        for k in o.keys().filter(|k| !keys.contains(&k.as_str())) {
            let f = if field.is_empty() {
                k.clone()
            } else {
                format!("{field}.{k}")
            };
            self.bad(
                &f,
                format!("unknown field; expected one of {}", keys.join(", ")),
            );
        }
        Some(o)
    }
    fn string<'v>(&mut self, field: &str, v: &'v Value) -> Option<&'v str> {
        let s = v.as_str();
        if s.is_none() {
            self.bad(field, "must be a string");
        }
        s
    }
    fn boolean(&mut self, field: &str, v: &Value) -> Option<bool> {
        let b = v.as_bool();
        if b.is_none() {
            self.bad(field, "must be true or false");
        }
        b
    }
    fn integer(&mut self, field: &str, v: &Value) -> Option<i64> {
        let n = v.as_i64();
        if n.is_none() {
            self.bad(field, "must be an integer");
        }
        n
    }
    /// A string or a list of strings, as (field of each item, item).
    fn strings<'v>(&mut self, field: &str, v: &'v Value) -> Vec<(String, &'v str)> {
        match v {
            Value::String(s) => vec![(field.to_owned(), s.as_str())],
            Value::Array(list) => {
                if self.check(m::list_len(field, list.len())).is_none() {
                    return vec![];
                }
                list.iter()
                    .enumerate()
                    .filter_map(|(i, x)| {
                        let f = format!("{field}[{i}]");
                        self.string(&f, x).map(|s| (f, s))
                    })
                    .collect()
            }
            _ => {
                self.bad(field, "must be a string or a list of strings");
                vec![]
            }
        }
    }

    fn workflow(&mut self, v: &Value) -> Option<Imported> {
        let keys = [
            "name", "enabled", "priority", "default", "triggers", "actions",
        ];
        let o = self.object("", v, &keys)?;
        let name = match o.get("name") {
            Some(n) => self
                .string("name", n)
                .and_then(|s| self.check(validate::text("name", s, 200))),
            None => {
                self.bad("name", "is required");
                None
            }
        };
        let enabled = o
            .get("enabled")
            .map_or(Some(true), |b| self.boolean("enabled", b));
        let is_default = o
            .get("default")
            .map_or(Some(false), |b| self.boolean("default", b));
        let priority = match o.get("priority") {
            Some(p) => self
                .integer("priority", p)
                .and_then(|n| self.check(m::priority("priority", n))),
            None => Some(0),
        };
        let trigger = match o.get("triggers") {
            Some(t) => self.triggers(t),
            None => Some(Trigger::default()),
        };
        let actions = match o.get("actions") {
            Some(a) => self.actions(a),
            None => Some(Actions::default()),
        };
        let (name, enabled, is_default, priority, trigger, mut actions) =
            (name?, enabled?, is_default?, priority?, trigger?, actions?);
        if is_default && !trigger.is_empty() {
            self.bad("triggers", "must be empty on the default workflow");
            return None;
        }
        actions.priority = priority;
        Some(Imported {
            name,
            enabled,
            is_default,
            definition: Definition {
                trigger,
                actions,
                ..Default::default()
            },
        })
    }

    fn triggers(&mut self, v: &Value) -> Option<Trigger> {
        let keys = [
            "business_hours",
            "visitor_location",
            "page_url_contains",
            "visitor_type",
            "attributes",
        ];
        let o = self.object("triggers", v, &keys)?;
        let before = self.errs.len();
        let mut t = Trigger::default();
        if let Some(b) = o.get("business_hours") {
            t.business_hours = self.business_hours("triggers.business_hours", b);
        }
        if let Some(c) = o.get("visitor_location") {
            for (f, s) in self.strings("triggers.visitor_location", c) {
                if let Some(code) = self.check(m::country(&f, s)) {
                    t.countries.push(code);
                }
            }
        }
        if let Some(p) = o.get("page_url_contains") {
            for (f, s) in self.strings("triggers.page_url_contains", p) {
                if let Some(pat) = self.check(m::url_pattern(&f, s)) {
                    t.page_urls.push(pat);
                }
            }
        }
        if let Some(vt) = o.get("visitor_type") {
            for (f, s) in self.strings("triggers.visitor_type", vt) {
                match m::VisitorType::parse(s) {
                    Some(x) => t.visitor_types.push(x),
                    None => self.bad(&f, "must be new, returning or identified"),
                }
            }
        }
        if let Some(a) = o.get("attributes") {
            self.attributes("triggers.attributes", a, &mut t);
        }
        (self.errs.len() == before).then_some(t)
    }

    fn attributes(&mut self, field: &str, v: &Value, t: &mut Trigger) {
        let Some(o) = v.as_object() else {
            self.bad(field, "must be an object of attribute conditions");
            return;
        };
        for (k, cond) in o {
            let f = format!("{field}.{k}");
            let Some(key) = self.check(m::attribute_key(&f, k)) else {
                continue;
            };
            let test = match cond {
                Value::String(s) => self
                    .check(m::attribute_value(&f, s))
                    .map(m::AttributeTest::Equals),
                Value::Array(_) => {
                    let vals: Vec<String> = self
                        .strings(&f, cond)
                        .into_iter()
                        .filter_map(|(fi, s)| self.check(m::attribute_value(&fi, s)))
                        .collect();
                    Some(m::AttributeTest::OneOf(vals))
                }
                Value::Bool(true) => Some(m::AttributeTest::Present),
                _ => {
                    self.bad(&f, "must be a value, a list of values, or true (present)");
                    None
                }
            };
            if let Some(test) = test {
                t.attributes.push(m::AttributeCondition { key, test });
            }
        }
    }

    fn business_hours(&mut self, field: &str, v: &Value) -> Option<HoursCondition> {
        if let Some(inside) = v.as_bool() {
            return Some(HoursCondition {
                calendar: default_calendar(),
                outside: !inside,
            });
        }
        let keys = ["timezone", "hours", "holidays", "closures", "inside"];
        let o = self.object(field, v, &keys)?;
        let before = self.errs.len();
        let tz_field = format!("{field}.timezone");
        let time_zone = match o.get("timezone") {
            Some(z) => self
                .string(&tz_field, z)
                .and_then(|s| self.check(m::time_zone(&tz_field, s))),
            None => {
                self.bad(&tz_field, "is required");
                None
            }
        };
        let mut intervals = Vec::new();
        match o.get("hours") {
            Some(h) => self.hours(&format!("{field}.hours"), h, &mut intervals),
            None => self.bad(&format!("{field}.hours"), "is required"),
        }
        let mut holidays = Vec::new();
        if let Some(h) = o.get("holidays") {
            for (f, s) in self.strings(&format!("{field}.holidays"), h) {
                if let Some(d) = self.check(m::date(&f, s)) {
                    holidays.push(d);
                }
            }
        }
        let mut closures = Vec::new();
        if let Some(Value::Array(list)) = o.get("closures") {
            for (i, c) in list.iter().enumerate() {
                let f = format!("{field}.closures[{i}]");
                if let Some(c) = self.closure(&f, c) {
                    closures.push(c);
                }
            }
        } else if o.get("closures").is_some() {
            self.bad(&format!("{field}.closures"), "must be a list");
        }
        let inside = o
            .get("inside")
            .map_or(Some(true), |b| self.boolean(&format!("{field}.inside"), b));
        if self.errs.len() != before {
            return None;
        }
        Some(HoursCondition {
            calendar: Calendar {
                time_zone: time_zone?,
                intervals,
                holidays,
                closures,
            },
            outside: !inside?,
        })
    }

    fn hours(&mut self, field: &str, v: &Value, out: &mut Vec<m::Interval>) {
        let Some(o) = self.object(field, v, &DAY_KEYS) else {
            return;
        };
        if o.is_empty() {
            self.bad(field, "must have at least one opening interval");
        }
        for (day, list) in o {
            let Some(n) = DAY_KEYS.iter().position(|d| d == day) else {
                continue;
            };
            let f = format!("{field}.{day}");
            let Some(list) = list.as_array() else {
                self.bad(&f, "must be a list of [\"HH:MM\", \"HH:MM\"] pairs");
                continue;
            };
            for (i, pair) in list.iter().enumerate() {
                let fi = format!("{f}[{i}]");
                let Some([s, e]) = pair.as_array().map(Vec::as_slice) else {
                    self.bad(&fi, "must be a [\"HH:MM\", \"HH:MM\"] pair");
                    continue;
                };
                let (fs, fe) = (format!("{fi}[0]"), format!("{fi}[1]"));
                let start = self
                    .string(&fs, s)
                    .and_then(|x| self.check(m::wall_time(&fs, x)));
                let end = self
                    .string(&fe, e)
                    .and_then(|x| self.check(m::wall_time(&fe, x)));
                if let (Some(start), Some(end)) = (start, end)
                    && let Some(iv) = self.check(m::interval(n as u8 + 1, start, end, &fe))
                {
                    out.push(iv);
                }
            }
        }
    }

    fn closure(&mut self, field: &str, v: &Value) -> Option<m::Closure> {
        let o = self.object(field, v, &["from", "until"])?;
        let instant = |cx: &mut Self, key: &str| {
            let f = format!("{field}.{key}");
            match o.get(key) {
                Some(x) => {
                    cx.string(&f, x)
                        .and_then(|s| match chrono::DateTime::parse_from_rfc3339(s) {
                            Ok(t) => Some(t.with_timezone(&chrono::Utc)),
                            Err(_) => {
                                cx.bad(
                                    &f,
                                    "must be an RFC 3339 date-time like 2026-12-24T12:00:00Z",
                                );
                                None
                            }
                        })
                }
                None => {
                    cx.bad(&f, "is required");
                    None
                }
            }
        };
        let from = instant(self, "from");
        let until = instant(self, "until");
        self.check(m::closure(from?, until?, &format!("{field}.until")))
    }

    fn actions(&mut self, v: &Value) -> Option<Actions> {
        let keys = [
            "auto_assign",
            "assignment_type",
            "required_skills",
            "welcome_message",
            "queue_message",
            "max_wait_time",
            "on_max_wait",
            "overflow_skills",
            "max_wait_message",
        ];
        let o = self.object("actions", v, &keys)?;
        let before = self.errs.len();
        let mut a = Actions::default();
        if let Some(b) = o
            .get("auto_assign")
            .and_then(|b| self.boolean("actions.auto_assign", b))
        {
            a.auto_assign = b;
        }
        if let Some(s) = o.get("assignment_type") {
            match self.string("actions.assignment_type", s) {
                Some("round_robin") => a.strategy = m::Strategy::RoundRobin,
                Some("least_active") => a.strategy = m::Strategy::LeastActive,
                Some("skill_based") => a.strategy = m::Strategy::SkillBased,
                Some(_) => self.bad(
                    "actions.assignment_type",
                    "must be round_robin, least_active or skill_based",
                ),
                None => {}
            }
        }
        if let Some(Value::Array(list)) = o.get("required_skills") {
            for (i, s) in list.iter().enumerate() {
                if let Some(need) = self.skill_need(&format!("actions.required_skills[{i}]"), s) {
                    if a.required_skills.iter().any(|n| n.skill == need.skill) {
                        self.bad(&format!("actions.required_skills[{i}]"), "is listed twice");
                    }
                    a.required_skills.push(need);
                }
            }
        } else if o.get("required_skills").is_some() {
            self.bad("actions.required_skills", "must be a list");
        }
        for (key, slot) in [
            ("welcome_message", &mut a.welcome_message),
            ("queue_message", &mut a.queue_message),
            ("max_wait_message", &mut a.max_wait_message),
        ] {
            let f = format!("actions.{key}");
            if let Some(x) = o.get(key)
                && let Some(s) = self.string(&f, x)
                && let Some(s) = self.check(m::message(&f, s))
            {
                *slot = s;
            }
        }
        if let Some(x) = o.get("max_wait_time")
            && let Some(n) = self.integer("actions.max_wait_time", x)
        {
            let n = u64::try_from(n).unwrap_or(u64::MAX);
            a.max_wait_seconds = self
                .check(m::max_wait("actions.max_wait_time", n))
                .flatten();
        }
        let mut overflow = Vec::new();
        if let Some(x) = o.get("overflow_skills") {
            for (f, s) in self.strings("actions.overflow_skills", x) {
                if let Some(n) = self.check(m::skill_name(&f, s)) {
                    overflow.push(n);
                }
            }
        }
        if let Some(x) = o.get("on_max_wait") {
            a.on_max_wait = match self.string("actions.on_max_wait", x) {
                Some("keep_waiting") => m::OnMaxWait::KeepWaiting,
                Some("overflow") if overflow.is_empty() => {
                    m::OnMaxWait::Overflow(m::OverflowTarget::AllAgents)
                }
                Some("overflow") => m::OnMaxWait::Overflow(m::OverflowTarget::Skills(overflow)),
                Some("offline_message") => m::OnMaxWait::OfflineMessage,
                Some("close") => m::OnMaxWait::Close,
                Some(_) => {
                    self.bad(
                        "actions.on_max_wait",
                        "must be keep_waiting, overflow, offline_message or close",
                    );
                    m::OnMaxWait::KeepWaiting
                }
                None => m::OnMaxWait::KeepWaiting,
            };
        } else if !overflow.is_empty() {
            self.bad("actions.overflow_skills", "needs on_max_wait: overflow");
        }
        (self.errs.len() == before).then_some(a)
    }

    fn skill_need(&mut self, field: &str, v: &Value) -> Option<m::SkillNeed> {
        if let Some(s) = v.as_str() {
            return self
                .check(m::skill_name(field, s))
                .map(|skill| m::SkillNeed {
                    skill,
                    min_level: None,
                    relax_after_seconds: None,
                });
        }
        let o = self.object(field, v, &["skill", "min_level", "relax_after"])?;
        let sf = format!("{field}.skill");
        let skill = match o.get("skill") {
            Some(s) => self
                .string(&sf, s)
                .and_then(|s| self.check(m::skill_name(&sf, s))),
            None => {
                self.bad(&sf, "is required");
                None
            }
        };
        let lf = format!("{field}.min_level");
        let min_level = match o.get("min_level") {
            Some(n) => self.integer(&lf, n).and_then(|n| {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                self.check(m::min_level(&lf, n))
            }),
            None => Some(None),
        };
        let rf = format!("{field}.relax_after");
        let relax = match o.get("relax_after") {
            Some(n) => self.integer(&rf, n).and_then(|n| {
                let n = u64::try_from(n).unwrap_or(u64::MAX);
                self.check(m::max_wait(&rf, n))
            }),
            None => Some(None),
        };
        Some(m::SkillNeed {
            skill: skill?,
            min_level: min_level?,
            relax_after_seconds: relax?,
        })
    }
}

/// Monday to Friday 09:00-17:00 UTC: what `business_hours: true` refers to.
pub fn default_calendar() -> Calendar {
    let (nine, five) = (
        m::WallTime::from_minutes(9 * 60).unwrap_or(m::WallTime::MIDNIGHT),
        m::WallTime::from_minutes(17 * 60).unwrap_or(m::WallTime::MIDNIGHT),
    );
    Calendar {
        time_zone: "UTC".into(),
        intervals: (1..=5)
            .map(|d| m::Interval {
                weekday: d,
                start: nine,
                end: five,
            })
            .collect(),
        holidays: vec![],
        closures: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn the_briefs_shape_converts_to_the_typed_form() {
        let w = parse(
            r#"{"name": "Berlin office", "priority": 5,
                "triggers": {"business_hours": {"timezone": "Europe/Berlin",
                                                "hours": {"mon": [["09:00","12:00"],["13:00","17:00"]]},
                                                "holidays": ["2026-12-25"]},
                             "visitor_location": ["de","AT"], "page_url_contains": "/pricing",
                             "visitor_type": ["new", "returning"], "attributes": {"plan": "pro", "team": true}},
                "actions": {"auto_assign": true, "assignment_type": "skill_based",
                            "required_skills": ["billing", {"skill": "german", "min_level": 5, "relax_after": 120}],
                            "welcome_message": "Hi", "queue_message": "Please wait",
                            "max_wait_time": 300, "on_max_wait": "overflow", "max_wait_message": "Sorry"}}"#,
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        let w = &w[0];
        assert_eq!(w.name, "Berlin office");
        assert!(w.enabled && !w.is_default);
        let t = &w.definition.trigger;
        let h = t.business_hours.as_ref().unwrap();
        assert!(!h.outside);
        assert_eq!(h.calendar.intervals.len(), 2);
        assert_eq!(h.calendar.intervals[1].weekday, 1);
        assert_eq!(t.countries, ["DE", "AT"]);
        assert_eq!(t.page_urls, ["/pricing"]);
        assert_eq!(
            t.visitor_types,
            [m::VisitorType::New, m::VisitorType::Returning]
        );
        assert_eq!(t.attributes.len(), 2);
        let a = &w.definition.actions;
        assert_eq!(a.strategy, m::Strategy::SkillBased);
        assert_eq!(a.priority, 5);
        assert_eq!(a.required_skills[1].min_level, Some(5));
        assert_eq!(a.required_skills[1].relax_after_seconds, Some(120));
        assert_eq!(a.max_wait_seconds, Some(300));
        assert_eq!(
            a.on_max_wait,
            m::OnMaxWait::Overflow(m::OverflowTarget::AllAgents)
        );
    }

    #[test]
    fn business_hours_true_and_false_use_the_default_calendar() {
        let w = parse(r#"[{"name": "a", "triggers": {"business_hours": false}}]"#).unwrap();
        let h = w[0].definition.trigger.business_hours.as_ref().unwrap();
        assert!(h.outside);
        assert_eq!(h.calendar, default_calendar());
    }

    #[test]
    fn errors_name_the_bad_field_in_every_workflow() {
        let f = fields(
            r#"[{"name": "ok", "triggers": {"business_hours": {"timezone": "Mars/Base", "hours": {"mon": [["17:00","09:00"]], "tue": [["9:00","10:00"]]}}}},
                {"name": "", "triggers": {"visitor_location": ["DEU"], "visitor_type": "alien"},
                 "actions": {"assignment_type": "random", "max_wait_time": -1, "colour": 1}}]"#,
        );
        assert_eq!(
            f,
            [
                "[0].triggers.business_hours.timezone",
                "[0].triggers.business_hours.hours.mon[0][1]",
                "[0].triggers.business_hours.hours.tue[0][0]",
                "[1].name",
                "[1].triggers.visitor_location[0]",
                "[1].triggers.visitor_type",
                "[1].actions.colour",
                "[1].actions.assignment_type",
                "[1].actions.max_wait_time",
            ]
        );
        assert_eq!(
            fields(
                r#"{"name": "x", "triggers": {"business_hours": {"timezone": "UTC", "hours": {}}}}"#
            ),
            ["triggers.business_hours.hours"]
        );
        assert_eq!(fields("{"), [""]);
        assert_eq!(fields("[]"), [""]);
        assert_eq!(fields(r#"{"triggers": {}}"#), ["name"]);
        assert_eq!(
            fields(r#"{"name": "d", "default": true, "triggers": {"visitor_type": "new"}}"#),
            ["triggers"]
        );
    }
}
