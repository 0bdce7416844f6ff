//! Which workflow applies to a visitor: pure over the tenant's workflows in order, the
//! visitor's context and an instant. The first enabled, non-default workflow whose trigger
//! holds applies; else the tenant's enabled default workflow; else the built-in defaults.
//! Every workflow that did not apply gets the first condition that failed, typed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::Openness;
use super::model::{Actions, AttributeTest, Definition, Trigger, VisitorType};
use crate::ids::WorkflowId;

/// A workflow as selection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workflow {
    /// Id.
    pub id: WorkflowId,
    /// Name.
    pub name: String,
    /// Disabled workflows never apply.
    pub enabled: bool,
    /// The tenant default (applies when no other does).
    pub is_default: bool,
    /// Place in the order.
    pub position: i32,
    /// Triggers and actions.
    pub definition: Definition,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What routing knows about the visitor of a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisitorContext {
    /// Upper-case ISO country code, when known.
    pub country: Option<String>,
    /// Page the chat starts from.
    pub page_url: String,
    /// Visitor type.
    pub visitor_type: VisitorType,
    /// Custom attributes.
    pub attributes: BTreeMap<String, String>,
}

/// Where the applied actions came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum Applied {
    /// A workflow whose trigger held.
    Workflow {
        /// Its id.
        id: WorkflowId,
        /// Its name.
        name: String,
    },
    /// The tenant's default workflow.
    TenantDefault {
        /// Its id.
        id: WorkflowId,
        /// Its name.
        name: String,
    },
    /// Built-in defaults.
    BuiltIn,
}

impl Applied {
    /// The applied workflow's id, unless built in.
    pub fn workflow_id(&self) -> Option<WorkflowId> {
        match self {
            Applied::Workflow { id, .. } | Applied::TenantDefault { id, .. } => Some(*id),
            Applied::BuiltIn => None,
        }
    }
}

/// The first condition of a workflow that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "condition")]
pub enum Failed {
    /// Disabled.
    Disabled,
    /// The business-hours condition did not hold.
    BusinessHours {
        /// Whether the condition wanted "outside hours".
        wanted_outside: bool,
        /// What the calendar said.
        openness: Openness,
        /// When the calendar next opens or closes (within a year or so), if it does.
        changes_at: Option<DateTime<Utc>>,
    },
    /// The country is not listed.
    Country {
        /// The visitor's, if known.
        country: Option<String>,
        /// The listed ones.
        wanted: Vec<String>,
    },
    /// No URL pattern matched.
    PageUrl {
        /// The visitor's page.
        page_url: String,
        /// The patterns.
        patterns: Vec<String>,
    },
    /// The visitor type is not listed.
    VisitorType {
        /// The visitor's.
        visitor_type: VisitorType,
        /// The listed ones.
        wanted: Vec<VisitorType>,
    },
    /// An attribute condition did not hold.
    Attribute {
        /// Attribute key.
        key: String,
        /// The visitor's value, if any.
        value: Option<String>,
        /// The test.
        test: AttributeTest,
    },
    /// Its trigger held, but an earlier workflow applied.
    Shadowed {
        /// The one that applied.
        by: WorkflowId,
    },
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Disabled => write!(f, "disabled"),
            Failed::BusinessHours {
                wanted_outside,
                openness,
                changes_at,
            } => {
                let wanted = if *wanted_outside { "outside" } else { "inside" };
                write!(
                    f,
                    "business hours: wanted {wanted} hours, calendar is {openness}"
                )?;
                match changes_at {
                    Some(t) => write!(f, " until {}", t.to_rfc3339()),
                    None => Ok(()),
                }
            }
            Failed::Country { country, wanted } => match country {
                Some(c) => write!(f, "country {c} not in [{}]", wanted.join(", ")),
                None => write!(f, "country unknown, wanted one of [{}]", wanted.join(", ")),
            },
            Failed::PageUrl { page_url, patterns } => {
                write!(f, "page URL {page_url:?} matches none of {patterns:?}")
            }
            Failed::VisitorType {
                visitor_type,
                wanted,
            } => {
                let w: Vec<&str> = wanted.iter().map(|t| t.as_str()).collect();
                write!(
                    f,
                    "visitor type {} not in [{}]",
                    visitor_type.as_str(),
                    w.join(", ")
                )
            }
            Failed::Attribute { key, value, test } => {
                let wanted = match test {
                    AttributeTest::Equals(v) => format!("= {v:?}"),
                    AttributeTest::OneOf(vs) => format!("one of {vs:?}"),
                    AttributeTest::Present => "present".to_owned(),
                };
                match value {
                    Some(v) => write!(f, "attribute {key} is {v:?}, wanted {wanted}"),
                    None => write!(f, "attribute {key} is missing, wanted {wanted}"),
                }
            }
            Failed::Shadowed { by } => write!(f, "trigger holds, but workflow {by} applies first"),
        }
    }
}

/// A workflow that did not apply, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// Workflow id.
    pub workflow_id: WorkflowId,
    /// Workflow name.
    pub name: String,
    /// First failed condition.
    pub failed: Failed,
    /// Readable form of `failed`.
    pub message: String,
}

/// The outcome of [`select`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Where the actions came from.
    pub applied: Applied,
    /// The actions that apply.
    pub actions: Actions,
    /// Every other workflow in order (the default one only when it was not needed and
    /// therefore not listed), with its first failed condition.
    pub misses: Vec<Miss>,
}

/// Whether `url` matches `pattern`, ASCII case-insensitively. Without `*` the pattern matches
/// anywhere in the URL ("contains"); with `*` (any run of characters, also none) it must
/// match the whole URL, so "*/pricing" means "ends with /pricing".
pub fn url_matches(pattern: &str, url: &str) -> bool {
    let (p, u) = (pattern.to_ascii_lowercase(), url.to_ascii_lowercase());
    if !p.contains('*') {
        return u.contains(&p);
    }
    let parts: Vec<&str> = p.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !u.starts_with(first) {
        return false;
    }
    let mut rest = &u[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The first condition of `trigger` that fails for `v` at `at`; None when all hold.
pub fn first_failure(trigger: &Trigger, v: &VisitorContext, at: DateTime<Utc>) -> Option<Failed> {
    if let Some(h) = &trigger.business_hours {
        let openness = h.calendar.openness(at);
        if openness.is_open() == h.outside {
            return Some(Failed::BusinessHours {
                wanted_outside: h.outside,
                openness,
                changes_at: h.calendar.next_change(at),
            });
        }
    }
    if !trigger.countries.is_empty()
        && !v
            .country
            .as_ref()
            .is_some_and(|c| trigger.countries.iter().any(|w| w.eq_ignore_ascii_case(c)))
    {
        return Some(Failed::Country {
            country: v.country.clone(),
            wanted: trigger.countries.clone(),
        });
    }
    if !trigger.page_urls.is_empty()
        && !trigger
            .page_urls
            .iter()
            .any(|p| url_matches(p, &v.page_url))
    {
        return Some(Failed::PageUrl {
            page_url: v.page_url.clone(),
            patterns: trigger.page_urls.clone(),
        });
    }
    if !trigger.visitor_types.is_empty() && !trigger.visitor_types.contains(&v.visitor_type) {
        return Some(Failed::VisitorType {
            visitor_type: v.visitor_type,
            wanted: trigger.visitor_types.clone(),
        });
    }
    for c in &trigger.attributes {
        let value = v.attributes.get(&c.key);
        let holds = match (&c.test, value) {
            (_, None) => false,
            (AttributeTest::Present, Some(_)) => true,
            (AttributeTest::Equals(w), Some(x)) => w == x,
            (AttributeTest::OneOf(ws), Some(x)) => ws.contains(x),
        };
        if !holds {
            return Some(Failed::Attribute {
                key: c.key.clone(),
                value: value.cloned(),
                test: c.test.clone(),
            });
        }
    }
    None
}

fn miss(w: &Workflow, failed: Failed) -> Miss {
    Miss {
        workflow_id: w.id,
        name: w.name.clone(),
        message: failed.to_string(),
        failed,
    }
}

/// Selects the workflow for `v` at `at` from `workflows` in evaluation order.
pub fn select(workflows: &[Workflow], v: &VisitorContext, at: DateTime<Utc>) -> Selection {
    let mut applied: Option<&Workflow> = None;
    let mut misses = Vec::new();
    for w in workflows.iter().filter(|w| !w.is_default) {
        if !w.enabled {
            misses.push(miss(w, Failed::Disabled));
            continue;
        }
        match (first_failure(&w.definition.trigger, v, at), applied) {
            (Some(f), _) => misses.push(miss(w, f)),
            (None, Some(first)) => misses.push(miss(w, Failed::Shadowed { by: first.id })),
            (None, None) => applied = Some(w),
        }
    }
    let default = workflows.iter().find(|w| w.is_default);
    let (applied, actions) = match (applied, default) {
        (Some(w), d) => {
            if let Some(d) = d {
                // The default stands behind every workflow; a match shadows it.
                let f = if d.enabled {
                    Failed::Shadowed { by: w.id }
                } else {
                    Failed::Disabled
                };
                misses.push(miss(d, f));
            }
            (
                Applied::Workflow {
                    id: w.id,
                    name: w.name.clone(),
                },
                w.definition.actions.clone(),
            )
        }
        (None, Some(d)) if d.enabled => (
            Applied::TenantDefault {
                id: d.id,
                name: d.name.clone(),
            },
            d.definition.actions.clone(),
        ),
        (None, d) => {
            if let Some(d) = d {
                misses.push(miss(d, Failed::Disabled));
            }
            (Applied::BuiltIn, Actions::default())
        }
    };
    Selection {
        applied,
        actions,
        misses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::workflows::model::{
        AttributeCondition, Calendar, HoursCondition, Interval, Strategy, WallTime,
    };
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        // Tue 1 Dec 2026 10:00 UTC = 11:00 in Berlin.
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()
    }

    fn visitor() -> VisitorContext {
        VisitorContext {
            country: Some("DE".into()),
            page_url: "https://shop.example/en/Pricing?x=1".into(),
            visitor_type: VisitorType::Returning,
            attributes: [("plan".to_owned(), "pro".to_owned())].into(),
        }
    }

    fn wf(name: &str, trigger: Trigger) -> Workflow {
        Workflow {
            id: WorkflowId::new(),
            name: name.into(),
            enabled: true,
            is_default: false,
            position: 0,
            definition: Definition {
                trigger,
                ..Default::default()
            },
            created_at: at(),
            updated_at: at(),
        }
    }

    fn hours(outside: bool) -> Trigger {
        let t = |s| WallTime::parse(s).unwrap();
        Trigger {
            business_hours: Some(HoursCondition {
                calendar: Calendar {
                    time_zone: "Europe/Berlin".into(),
                    intervals: vec![Interval {
                        weekday: 2,
                        start: t("09:00"),
                        end: t("12:00"),
                    }],
                    holidays: vec![],
                    closures: vec![],
                },
                outside,
            }),
            ..Default::default()
        }
    }

    fn failure(t: Trigger) -> Option<Failed> {
        first_failure(&t, &visitor(), at())
    }

    #[test]
    fn the_empty_trigger_always_matches() {
        assert_eq!(failure(Trigger::default()), None);
    }

    #[test]
    fn business_hours_inside_and_outside() {
        assert_eq!(failure(hours(false)), None);
        assert!(matches!(
            failure(hours(true)),
            Some(Failed::BusinessHours {
                wanted_outside: true,
                ..
            })
        ));
        let late = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(); // 13:00 Berlin
        assert!(first_failure(&hours(false), &visitor(), late).is_some());
        assert!(first_failure(&hours(true), &visitor(), late).is_none());
    }

    #[test]
    fn countries() {
        let t = |c: &[&str]| Trigger {
            countries: c.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(failure(t(&["AT", "DE"])), None);
        let f = failure(t(&["FR"])).unwrap();
        assert_eq!(f.to_string(), "country DE not in [FR]");
        let mut v = visitor();
        v.country = None;
        assert!(first_failure(&t(&["DE"]), &v, at()).is_some());
    }

    #[test]
    fn page_url_contains_and_wildcards() {
        let u = "https://shop.example/en/Pricing?x=1";
        assert!(url_matches("/pricing", u));
        assert!(url_matches("*/pricing*", u));
        assert!(url_matches("https://shop.example/*/pricing?*", u));
        assert!(!url_matches("*/pricing", u)); // anchored at the end
        assert!(!url_matches("/billing", u));
        assert!(url_matches("*", "")); // validation refuses this pattern; matching stays total
        assert!(!url_matches("a*a", "a"));
        let t = Trigger {
            page_urls: vec!["/billing".into(), "/pricing".into()],
            ..Default::default()
        };
        assert_eq!(failure(t), None);
        let t = Trigger {
            page_urls: vec!["/billing".into()],
            ..Default::default()
        };
        assert!(matches!(failure(t), Some(Failed::PageUrl { .. })));
    }

    #[test]
    fn visitor_types() {
        let t = |v: Vec<VisitorType>| Trigger {
            visitor_types: v,
            ..Default::default()
        };
        assert_eq!(
            failure(t(vec![VisitorType::Returning, VisitorType::Identified])),
            None
        );
        assert_eq!(
            failure(t(vec![VisitorType::New])).unwrap().to_string(),
            "visitor type returning not in [new]"
        );
    }

    #[test]
    fn attributes_equals_one_of_present() {
        let t = |key: &str, test: AttributeTest| Trigger {
            attributes: vec![AttributeCondition {
                key: key.into(),
                test,
            }],
            ..Default::default()
        };
        assert_eq!(
            failure(t("plan", AttributeTest::Equals("pro".into()))),
            None
        );
        assert_eq!(
            failure(t(
                "plan",
                AttributeTest::OneOf(vec!["free".into(), "pro".into()])
            )),
            None
        );
        assert_eq!(failure(t("plan", AttributeTest::Present)), None);
        assert!(failure(t("plan", AttributeTest::Equals("Pro".into()))).is_some());
        assert_eq!(
            failure(t("team", AttributeTest::Present))
                .unwrap()
                .to_string(),
            "attribute team is missing, wanted present"
        );
    }

    #[test]
    fn the_first_failing_condition_is_reported() {
        let mut t = hours(true);
        t.countries = vec!["FR".into()];
        assert!(matches!(failure(t), Some(Failed::BusinessHours { .. })));
    }

    #[test]
    fn first_enabled_match_applies_and_every_other_says_why_not() {
        let mut disabled = wf("disabled", Trigger::default());
        disabled.enabled = false;
        let french = wf(
            "french",
            Trigger {
                countries: vec!["FR".into()],
                ..Default::default()
            },
        );
        let mut pricing = wf(
            "pricing",
            Trigger {
                page_urls: vec!["/pricing".into()],
                ..Default::default()
            },
        );
        pricing.definition.actions.strategy = Strategy::LeastActive;
        let catch_all = wf("catch-all", Trigger::default());
        let list = vec![
            disabled.clone(),
            french.clone(),
            pricing.clone(),
            catch_all.clone(),
        ];
        let s = select(&list, &visitor(), at());
        assert_eq!(
            s.applied,
            Applied::Workflow {
                id: pricing.id,
                name: "pricing".into()
            }
        );
        assert_eq!(s.actions.strategy, Strategy::LeastActive);
        let why: Vec<(&str, &Failed)> = s
            .misses
            .iter()
            .map(|m| (m.name.as_str(), &m.failed))
            .collect();
        assert_eq!(why.len(), 3);
        assert_eq!(why[0], ("disabled", &Failed::Disabled));
        assert!(matches!(why[1], ("french", Failed::Country { .. })));
        assert_eq!(why[2], ("catch-all", &Failed::Shadowed { by: pricing.id }));
    }

    #[test]
    fn the_tenant_default_then_the_built_in_defaults() {
        let french = wf(
            "french",
            Trigger {
                countries: vec!["FR".into()],
                ..Default::default()
            },
        );
        let mut default = wf("default", Trigger::default());
        default.is_default = true;
        default.definition.actions.strategy = Strategy::SkillBased;
        // The default is listed first but only applies when nothing else does.
        let s = select(&[default.clone(), french.clone()], &visitor(), at());
        assert_eq!(
            s.applied,
            Applied::TenantDefault {
                id: default.id,
                name: "default".into()
            }
        );
        assert_eq!(s.actions.strategy, Strategy::SkillBased);
        assert_eq!(s.misses.len(), 1);

        default.enabled = false;
        let s = select(&[french, default], &visitor(), at());
        assert_eq!(s.applied, Applied::BuiltIn);
        assert_eq!(s.actions, Actions::default());
        assert_eq!(s.misses.len(), 2);
        assert_eq!(s.misses[1].failed, Failed::Disabled);

        let s = select(&[], &visitor(), at());
        assert_eq!(s.applied, Applied::BuiltIn);
        assert!(s.actions.auto_assign);
    }
}
