//! Routing strategies: pure functions over agent snapshots and a chat's needs that pick an
//! agent and record, for every candidate, why they were or were not chosen. That record
//! (a [`Decision`]) is serde-serialisable: it is what an assignment stores and what
//! ExplainAssignment and ExplainRouting return.
//!
//! Eligible: status available, online (an open stream), open chats below capacity, and every
//! required skill at its minimum level. Orders, each ending in the agent id so that a
//! decision never depends on input order:
//! - round-robin: assigned longest ago first, never-assigned before anyone;
//! - least-active: fewest open chats, then as round-robin;
//! - skill-based: the highest *lowest* level among the required skills first (the weakest
//!   required skill decides, so a specialist in one skill does not outrank an all-rounder
//!   who barely has the other), then the higher sum of those levels, then as least-active.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::agents::AgentStatus;
use super::workflows::model::{Actions, OnMaxWait, OverflowTarget, SkillNeed, Strategy};
use crate::ids::UserId;

/// What routing knows about one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSnapshot {
    /// Agent id.
    pub id: UserId,
    /// Display name, for messages.
    pub name: String,
    /// Self-set status.
    pub status: AgentStatus,
    /// Holds an open stream on some node.
    pub online: bool,
    /// External chats assigned and not closed.
    pub open_chats: u32,
    /// Most concurrent external chats.
    pub capacity: u32,
    /// (skill, level).
    pub skills: Vec<(String, i16)>,
    /// When they were last given a chat; survives restarts (`users.last_assigned_at`).
    pub last_assigned_at: Option<DateTime<Utc>>,
}

/// What a chat needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatNeeds {
    /// Strategy.
    pub strategy: Strategy,
    /// Required skills, each possibly relaxed after a wait.
    pub required_skills: Vec<SkillNeed>,
    /// How long the chat has waited so far.
    pub waited_seconds: u64,
}

/// Why an agent is not eligible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Skip {
    /// Status is not available.
    NotAvailable {
        /// Their status.
        status: String,
    },
    /// No open stream.
    Offline,
    /// At (or over) capacity.
    AtCapacity {
        /// Open chats.
        open: u32,
        /// Capacity.
        capacity: u32,
    },
    /// Lacks a required skill.
    MissingSkill {
        /// The skill.
        skill: String,
    },
    /// Has a required skill below its minimum level.
    SkillTooLow {
        /// The skill.
        skill: String,
        /// Their level.
        level: i16,
        /// The minimum.
        min_level: i16,
    },
}

/// Where an eligible agent stood when the decision was made: what ranked them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Open chats.
    #[serde(default)]
    pub open: u32,
    /// Capacity.
    #[serde(default)]
    pub capacity: u32,
    /// Their last assignment; none if never assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_assigned_at: Option<DateTime<Utc>>,
}

impl Standing {
    fn of(a: &AgentSnapshot) -> Self {
        Self {
            open: a.open_chats,
            capacity: a.capacity,
            last_assigned_at: a.last_assigned_at,
        }
    }

    fn text(&self) -> String {
        let last = match self.last_assigned_at {
            Some(t) => format!("last assigned {}", t.to_rfc3339()),
            None => "never assigned".to_owned(),
        };
        format!("{}/{} chats, {last}", self.open, self.capacity)
    }
}

/// The verdict on one candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// Chosen.
    Chosen {
        /// Where they stood.
        #[serde(flatten)]
        standing: Standing,
    },
    /// Eligible but ranked behind the chosen agent.
    Outranked {
        /// 2 = second, ...
        rank: u32,
        /// Where they stood.
        #[serde(flatten)]
        standing: Standing,
    },
    /// Not eligible.
    Skipped(Skip),
}

/// One candidate and its verdict. Its readable message is derived when asked for
/// ([`Candidate::message`]), not kept: a dispatcher pass decides for every waiting chat over
/// every agent, and formatting and storing a message per candidate cost more than deciding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Agent id.
    pub agent: UserId,
    /// Display name.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The message as stored by earlier builds, whose verdicts lack the standing.
    #[serde(rename = "message", default, skip_serializing)]
    pub stored_message: Option<String>,
}

impl Candidate {
    /// Readable, e.g. "agent Ana: 3/3 chats".
    pub fn message(&self, strategy: Strategy) -> String {
        if let Some(m) = &self.stored_message {
            return m.clone();
        }
        let name = &self.name;
        let strategy = strategy.as_str();
        match &self.verdict {
            Verdict::Chosen { standing } => {
                format!("agent {name}: chosen by {strategy} ({})", standing.text())
            }
            Verdict::Outranked { rank, standing } => format!(
                "agent {name}: eligible, ranked {rank} by {strategy} ({})",
                standing.text()
            ),
            Verdict::Skipped(s) => skip_message(name, s),
        }
    }
}

/// A routing decision with its reasons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The strategy used.
    pub strategy: Strategy,
    /// The chosen agent, if any is eligible.
    pub chosen: Option<UserId>,
    /// Skills dropped because the chat waited long enough.
    pub relaxed_skills: Vec<String>,
    /// Every candidate: the chosen one, then the outranked in rank order, then the skipped in
    /// input order.
    pub candidates: Vec<Candidate>,
}

impl ChatNeeds {
    /// What a chat routed by `actions` needs after `waited_seconds` of waiting. Once the max
    /// wait has passed and the action is an overflow, the requirements widen: to nobody's
    /// skills (all agents) or to the overflow skills instead of the required ones. The other
    /// max-wait actions (offline message, close) are the dispatcher's to carry out; until
    /// then the chat keeps its requirements.
    pub fn for_actions(actions: &Actions, waited_seconds: u64) -> Self {
        let overflowed = actions
            .max_wait_seconds
            .is_some_and(|max| waited_seconds >= u64::from(max));
        let required_skills = match (&actions.on_max_wait, overflowed) {
            (OnMaxWait::Overflow(OverflowTarget::AllAgents), true) => Vec::new(),
            (OnMaxWait::Overflow(OverflowTarget::Skills(skills)), true) => skills
                .iter()
                .map(|s| SkillNeed {
                    skill: s.clone(),
                    min_level: None,
                    relax_after_seconds: None,
                })
                .collect(),
            _ => actions.required_skills.clone(),
        };
        Self {
            strategy: actions.strategy,
            required_skills,
            waited_seconds,
        }
    }
}

/// The skills still required after `waited_seconds`, and the ones relaxed.
pub fn effective_skills(needs: &[SkillNeed], waited_seconds: u64) -> (Vec<SkillNeed>, Vec<String>) {
    let mut kept = Vec::new();
    let mut relaxed = Vec::new();
    for n in needs {
        match n.relax_after_seconds {
            Some(after) if waited_seconds >= u64::from(after) => relaxed.push(n.skill.clone()),
            _ => kept.push(n.clone()),
        }
    }
    (kept, relaxed)
}

fn level_of(a: &AgentSnapshot, skill: &str) -> Option<i16> {
    a.skills.iter().find(|(s, _)| s == skill).map(|(_, l)| *l)
}

/// Why `a` cannot take a chat needing `skills`; None when eligible.
pub fn ineligibility(a: &AgentSnapshot, skills: &[SkillNeed]) -> Option<Skip> {
    if a.status != AgentStatus::Available {
        return Some(Skip::NotAvailable {
            status: a.status.as_str().to_owned(),
        });
    }
    if !a.online {
        return Some(Skip::Offline);
    }
    if a.open_chats >= a.capacity {
        return Some(Skip::AtCapacity {
            open: a.open_chats,
            capacity: a.capacity,
        });
    }
    for need in skills {
        match (level_of(a, &need.skill), need.min_level) {
            (None, _) => {
                return Some(Skip::MissingSkill {
                    skill: need.skill.clone(),
                });
            }
            (Some(level), Some(min)) if level < min => {
                return Some(Skip::SkillTooLow {
                    skill: need.skill.clone(),
                    level,
                    min_level: min,
                });
            }
            _ => {}
        }
    }
    None
}

/// Never-assigned first, then the oldest assignment.
fn rotation_key(a: &AgentSnapshot) -> (bool, Option<DateTime<Utc>>) {
    (a.last_assigned_at.is_some(), a.last_assigned_at)
}

fn rank(strategy: Strategy, skills: &[SkillNeed], eligible: &mut [&AgentSnapshot]) {
    match strategy {
        Strategy::RoundRobin => eligible.sort_by_key(|a| (rotation_key(a), a.id)),
        Strategy::LeastActive => eligible.sort_by_key(|a| (a.open_chats, rotation_key(a), a.id)),
        Strategy::SkillBased => eligible.sort_by_key(|a| {
            let levels: Vec<i16> = skills
                .iter()
                .filter_map(|n| level_of(a, &n.skill))
                .collect();
            let min = levels.iter().copied().min().unwrap_or(0);
            let sum: i32 = levels.iter().map(|l| i32::from(*l)).sum();
            (
                std::cmp::Reverse(min),
                std::cmp::Reverse(sum),
                a.open_chats,
                rotation_key(a),
                a.id,
            )
        }),
    }
}

fn skip_message(name: &str, s: &Skip) -> String {
    match s {
        Skip::NotAvailable { status } => format!("agent {name}: {status}"),
        Skip::Offline => format!("agent {name}: offline (no open stream)"),
        Skip::AtCapacity { open, capacity } => format!("agent {name}: {open}/{capacity} chats"),
        Skip::MissingSkill { skill } => format!("agent {name}: lacks skill {skill}"),
        Skip::SkillTooLow {
            skill,
            level,
            min_level,
        } => format!("agent {name}: skill {skill} level {level} < {min_level}"),
    }
}

/// Picks an agent for a chat with `needs` from `agents`, with every candidate's reason.
pub fn decide(agents: &[AgentSnapshot], needs: &ChatNeeds) -> Decision {
    let (skills, relaxed_skills) = effective_skills(&needs.required_skills, needs.waited_seconds);
    let mut eligible = Vec::new();
    let mut skipped = Vec::new();
    for a in agents {
        match ineligibility(a, &skills) {
            None => eligible.push(a),
            Some(s) => skipped.push(Candidate {
                agent: a.id,
                name: a.name.clone(),
                verdict: Verdict::Skipped(s),
                stored_message: None,
            }),
        }
    }
    rank(needs.strategy, &skills, &mut eligible);
    let mut candidates: Vec<Candidate> = eligible
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let standing = Standing::of(a);
            let verdict = if i == 0 {
                Verdict::Chosen { standing }
            } else {
                Verdict::Outranked {
                    rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    standing,
                }
            };
            Candidate {
                agent: a.id,
                name: a.name.clone(),
                verdict,
                stored_message: None,
            }
        })
        .collect();
    candidates.extend(skipped);
    Decision {
        strategy: needs.strategy,
        chosen: eligible.first().map(|a| a.id),
        relaxed_skills,
        candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn id(n: u128) -> UserId {
        UserId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn agent(n: u128, name: &str) -> AgentSnapshot {
        AgentSnapshot {
            id: id(n),
            name: name.into(),
            status: AgentStatus::Available,
            online: true,
            open_chats: 0,
            capacity: 3,
            skills: vec![],
            last_assigned_at: None,
        }
    }

    fn needs(
        strategy: Strategy,
        skills: &[(&str, Option<i16>, Option<u32>)],
        waited: u64,
    ) -> ChatNeeds {
        ChatNeeds {
            strategy,
            required_skills: skills
                .iter()
                .map(|(s, min, relax)| SkillNeed {
                    skill: s.to_string(),
                    min_level: *min,
                    relax_after_seconds: *relax,
                })
                .collect(),
            waited_seconds: waited,
        }
    }

    fn messages(d: &Decision) -> Vec<String> {
        d.candidates.iter().map(|c| c.message(d.strategy)).collect()
    }

    #[test]
    fn a_stored_decision_reads_back_with_its_messages_old_and_new() {
        let mut ana = agent(1, "Ana");
        ana.open_chats = 1;
        let d = decide(
            &[ana, agent(2, "Bo")],
            &needs(Strategy::LeastActive, &[], 0),
        );
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("message"), "{text}");
        let back: Decision = serde_json::from_str(&text).unwrap();
        assert_eq!(messages(&back), messages(&d));
        assert_eq!(
            messages(&back)[1],
            "agent Ana: eligible, ranked 2 by least_active (1/3 chats, never assigned)"
        );
        // Earlier builds stored each message, and verdicts without the standing.
        let old = r#"{"strategy":"round_robin","chosen":null,"relaxed_skills":[],
            "candidates":[{"agent":"00000000-0000-0000-0000-000000000001","name":"Ana",
            "verdict":{"verdict":"chosen"},"message":"agent Ana: chosen by round_robin (x)"}]}"#;
        let old: Decision = serde_json::from_str(old).unwrap();
        assert_eq!(messages(&old), ["agent Ana: chosen by round_robin (x)"]);
    }

    #[test]
    fn eligibility_names_each_reason() {
        let mut away = agent(1, "Away");
        away.status = AgentStatus::Away;
        let mut offline = agent(2, "Gone");
        offline.online = false;
        let mut full = agent(3, "Full");
        full.open_chats = 3;
        let mut low = agent(4, "Low");
        low.skills = vec![("billing".into(), 2)];
        let none = agent(5, "None");
        let mut ok = agent(6, "Ok");
        ok.skills = vec![("billing".into(), 5)];
        let d = decide(
            &[away, offline, full, low, none, ok],
            &needs(Strategy::RoundRobin, &[("billing", Some(3), None)], 0),
        );
        assert_eq!(d.chosen, Some(id(6)));
        assert_eq!(
            messages(&d),
            [
                "agent Ok: chosen by round_robin (0/3 chats, never assigned)",
                "agent Away: away",
                "agent Gone: offline (no open stream)",
                "agent Full: 3/3 chats",
                "agent Low: skill billing level 2 < 3",
                "agent None: lacks skill billing",
            ]
        );
    }

    #[test]
    fn over_capacity_is_not_eligible_and_nobody_eligible_means_no_choice() {
        let mut over = agent(1, "Over");
        over.open_chats = 5;
        over.capacity = 2;
        let d = decide(&[over], &needs(Strategy::LeastActive, &[], 0));
        assert_eq!(d.chosen, None);
        assert_eq!(messages(&d), ["agent Over: 5/2 chats"]);
    }

    #[test]
    fn round_robin_rotates_never_assigned_first_then_oldest_then_by_id() {
        let mut a = agent(3, "A");
        a.last_assigned_at = Some(t(5));
        let mut b = agent(2, "B");
        b.last_assigned_at = Some(t(1));
        let c = agent(9, "C");
        let d = agent(4, "D");
        let mut agents = vec![a, b, c, d];
        let rr = needs(Strategy::RoundRobin, &[], 0);
        // Never-assigned C and D first, D by the smaller id.
        assert_eq!(decide(&agents, &rr).chosen, Some(id(4)));
        // Simulate the rotation: each pick is stamped and the next goes to the next in line.
        let mut order = Vec::new();
        for step in 0..5 {
            let chosen = decide(&agents, &rr).chosen.unwrap();
            order.push(chosen);
            agents
                .iter_mut()
                .find(|x| x.id == chosen)
                .unwrap()
                .last_assigned_at = Some(t(10 + step));
        }
        assert_eq!(order, [id(4), id(9), id(2), id(3), id(4)]);
        // Equal stamps: ties by id.
        let mut x = agent(7, "X");
        let mut y = agent(6, "Y");
        x.last_assigned_at = Some(t(0));
        y.last_assigned_at = Some(t(0));
        assert_eq!(decide(&[x, y], &rr).chosen, Some(id(6)));
    }

    #[test]
    fn least_active_fewest_chats_then_longest_since_assignment() {
        let mut a = agent(1, "A");
        a.open_chats = 2;
        let mut b = agent(2, "B");
        b.open_chats = 1;
        b.last_assigned_at = Some(t(3));
        let mut c = agent(3, "C");
        c.open_chats = 1;
        c.last_assigned_at = Some(t(1));
        let d = decide(&[a, b, c], &needs(Strategy::LeastActive, &[], 0));
        assert_eq!(d.chosen, Some(id(3)));
        assert_eq!(d.candidates[1].agent, id(2));
        assert!(matches!(
            d.candidates[1].verdict,
            Verdict::Outranked { rank: 2, .. }
        ));
        assert_eq!(d.candidates[2].agent, id(1));
    }

    #[test]
    fn skill_based_highest_weakest_level_first_then_least_active() {
        let skills = [("billing", None, None), ("german", None, None)];
        let mut specialist = agent(1, "Specialist");
        specialist.skills = vec![("billing".into(), 10), ("german".into(), 2)];
        let mut all_rounder = agent(2, "AllRounder");
        all_rounder.skills = vec![("billing".into(), 6), ("german".into(), 6)];
        all_rounder.open_chats = 2;
        let mut equal_busy = agent(3, "EqualBusy");
        equal_busy.skills = vec![("billing".into(), 6), ("german".into(), 6)];
        equal_busy.open_chats = 1;
        let mut lacks = agent(4, "Lacks");
        lacks.skills = vec![("billing".into(), 10)];
        let d = decide(
            &[specialist, all_rounder, equal_busy, lacks],
            &needs(Strategy::SkillBased, &skills, 0),
        );
        // Min level 6 beats min level 2; among the two 6/6, fewer open chats wins.
        let order: Vec<UserId> = d.candidates.iter().map(|c| c.agent).collect();
        assert_eq!(order, [id(3), id(2), id(1), id(4)]);
        assert_eq!(
            d.candidates[3].message(d.strategy),
            "agent Lacks: lacks skill german"
        );
        // Same minimum: the higher sum first.
        let mut p = agent(5, "P");
        p.skills = vec![("billing".into(), 6), ("german".into(), 9)];
        let mut q = agent(6, "Q");
        q.skills = vec![("billing".into(), 6), ("german".into(), 7)];
        assert_eq!(
            decide(&[q, p], &needs(Strategy::SkillBased, &skills, 0)).chosen,
            Some(id(5))
        );
    }

    #[test]
    fn a_skill_is_relaxed_after_its_wait() {
        let mut generalist = agent(1, "Gen");
        generalist.skills = vec![("english".into(), 5)];
        let skills = [("english", None, None), ("billing", Some(5), Some(120))];
        let before = decide(
            &[generalist.clone()],
            &needs(Strategy::SkillBased, &skills, 119),
        );
        assert_eq!(before.chosen, None);
        assert!(before.relaxed_skills.is_empty());
        let after = decide(&[generalist], &needs(Strategy::SkillBased, &skills, 120));
        assert_eq!(after.chosen, Some(id(1)));
        assert_eq!(after.relaxed_skills, ["billing"]);
    }

    #[test]
    fn an_overflow_widens_the_requirements_once_the_max_wait_has_passed() {
        let actions = Actions {
            strategy: Strategy::SkillBased,
            required_skills: vec![SkillNeed {
                skill: "billing".into(),
                min_level: Some(8),
                relax_after_seconds: None,
            }],
            max_wait_seconds: Some(300),
            on_max_wait: OnMaxWait::Overflow(OverflowTarget::Skills(vec!["general".into()])),
            ..Default::default()
        };
        let mut general = agent(1, "General");
        general.skills = vec![("general".into(), 1)];
        let before = ChatNeeds::for_actions(&actions, 299);
        assert_eq!(before.required_skills[0].skill, "billing");
        assert_eq!(decide(&[general.clone()], &before).chosen, None);
        let after = ChatNeeds::for_actions(&actions, 300);
        assert_eq!(decide(&[general.clone()], &after).chosen, Some(id(1)));
        let everyone = Actions {
            on_max_wait: OnMaxWait::Overflow(OverflowTarget::AllAgents),
            ..actions.clone()
        };
        assert!(
            ChatNeeds::for_actions(&everyone, 300)
                .required_skills
                .is_empty()
        );
        let close = Actions {
            on_max_wait: OnMaxWait::Close,
            ..actions
        };
        assert_eq!(ChatNeeds::for_actions(&close, 999).required_skills.len(), 1);
    }

    #[test]
    fn a_decision_serialises_with_typed_reasons() {
        let mut full = agent(1, "Full");
        full.open_chats = 3;
        let d = decide(
            &[full, agent(2, "Free")],
            &needs(Strategy::RoundRobin, &[], 0),
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["strategy"], "round_robin");
        assert_eq!(json["candidates"][1]["verdict"]["verdict"], "skipped");
        assert_eq!(json["candidates"][1]["verdict"]["reason"], "at_capacity");
        let back: Decision = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
    }
}
