//! The dispatcher's plan: given a tenant's waiting chats and its agents as they stand, which
//! chat goes to which agent now. Pure: the coming dispatcher reactor reads both under row
//! locks, asks for a plan, and writes the assignments it gets back in the same transaction,
//! so two nodes planning at once never give an agent more than their capacity.
//!
//! Chats are served in queue order (higher priority first, then the longest waiting, then by
//! id), each by [`routing::decide`] over the agents as the earlier assignments of the same
//! plan left them: an agent given a chat counts it against their capacity and moves to the
//! back of the rotation. A chat nobody can take now keeps its place; a later chat with other
//! needs (say, no skills) may still be served in the same plan.

use chrono::{DateTime, Utc};

use super::routing::{self, AgentSnapshot, ChatNeeds, Decision};
use crate::ids::{ConversationId, UserId};

/// A chat waiting for an agent, with what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The chat.
    pub conversation: ConversationId,
    /// Higher is served first.
    pub priority: i32,
    /// When it started waiting.
    pub enqueued_at: DateTime<Utc>,
    /// Strategy and skills, from the workflow that routed it (the wait is filled in here).
    pub needs: ChatNeeds,
    /// Agents it is not given to (it was taken back from them).
    pub excluded: Vec<UserId>,
}

/// One assignment of a plan, with the decision that made it (stored as its reasons).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The chat.
    pub conversation: ConversationId,
    /// Its new agent.
    pub agent: UserId,
    /// The agent's new last-assignment time (what round-robin rotates by).
    pub assigned_at: DateTime<Utc>,
    /// Why this agent, and why not each other.
    pub decision: Decision,
}

/// The order chats are served in.
fn queue_order(w: &Waiting) -> (std::cmp::Reverse<i32>, DateTime<Utc>, ConversationId) {
    (std::cmp::Reverse(w.priority), w.enqueued_at, w.conversation)
}

/// Assigns as many of `waiting` as `agents` can take at `now`, oldest first within priority.
pub fn plan(waiting: &[Waiting], agents: &[AgentSnapshot], now: DateTime<Utc>) -> Vec<Assignment> {
    let mut queue: Vec<&Waiting> = waiting.iter().collect();
    queue.sort_by_key(|w| queue_order(w));
    let mut agents = agents.to_vec();
    let mut out = Vec::new();
    for w in queue {
        if !agents.iter().any(|a| a.open_chats < a.capacity) {
            break;
        }
        let waited = (now - w.enqueued_at).num_seconds().max(0);
        let needs = ChatNeeds {
            waited_seconds: u64::try_from(waited).unwrap_or(0),
            ..w.needs.clone()
        };
        let decision = if w.excluded.is_empty() {
            routing::decide(&agents, &needs)
        } else {
            let others: Vec<AgentSnapshot> = agents
                .iter()
                .filter(|a| !w.excluded.contains(&a.id))
                .cloned()
                .collect();
            routing::decide(&others, &needs)
        };
        let Some(chosen) = decision.chosen else {
            continue;
        };
        // Assignments of one plan happen in order: each counts as a moment later than the
        // one before, so the rotation goes on within the plan (and after it, when the
        // dispatcher stores these times).
        let assigned_at = now + chrono::Duration::microseconds(out.len() as i64);
        if let Some(a) = agents.iter_mut().find(|a| a.id == chosen) {
            a.open_chats += 1;
            a.last_assigned_at = Some(assigned_at);
        }
        out.push(Assignment {
            conversation: w.conversation,
            agent: chosen,
            assigned_at,
            decision,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::agents::AgentStatus;
    use crate::domain::workflows::model::{SkillNeed, Strategy};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn agent(name: &str, capacity: u32, skills: &[(&str, i16)]) -> AgentSnapshot {
        AgentSnapshot {
            id: UserId::new(),
            name: name.into(),
            status: AgentStatus::Available,
            online: true,
            open_chats: 0,
            capacity,
            skills: skills.iter().map(|(s, l)| ((*s).to_owned(), *l)).collect(),
            last_assigned_at: None,
        }
    }

    fn chat(priority: i32, waited_from: i64, skills: &[&str]) -> Waiting {
        Waiting {
            conversation: ConversationId::new(),
            priority,
            enqueued_at: at(waited_from),
            needs: ChatNeeds {
                strategy: if skills.is_empty() {
                    Strategy::RoundRobin
                } else {
                    Strategy::SkillBased
                },
                required_skills: skills
                    .iter()
                    .map(|s| SkillNeed {
                        skill: (*s).to_owned(),
                        min_level: None,
                        relax_after_seconds: None,
                    })
                    .collect(),
                waited_seconds: 0,
            },
            excluded: Vec::new(),
        }
    }

    #[test]
    fn fifty_waiting_and_ten_agents_of_three_seats_make_thirty_assignments_in_queue_order() {
        let agents: Vec<AgentSnapshot> = (0..10).map(|i| agent(&format!("a{i}"), 3, &[])).collect();
        // Two priorities, arrival times shuffled against the priorities.
        let waiting: Vec<Waiting> = (0..50)
            .map(|i| chat(if i % 5 == 0 { 10 } else { 0 }, (i * 37) % 50, &[]))
            .collect();
        let plan = plan(&waiting, &agents, at(100));
        assert_eq!(plan.len(), 30);
        let mut per_agent: HashMap<UserId, u32> = HashMap::new();
        for a in &plan {
            *per_agent.entry(a.agent).or_default() += 1;
        }
        assert!(per_agent.values().all(|&n| n == 3), "{per_agent:?}");
        // The served ones are exactly the first 30 in queue order, in that order.
        let mut expected: Vec<&Waiting> = waiting.iter().collect();
        expected.sort_by_key(|w| queue_order(w));
        let served: Vec<ConversationId> = plan.iter().map(|a| a.conversation).collect();
        let first: Vec<ConversationId> = expected[..30].iter().map(|w| w.conversation).collect();
        assert_eq!(served, first);
    }

    #[test]
    fn an_agent_at_or_over_capacity_gets_nothing() {
        let mut full = agent("full", 2, &[]);
        full.open_chats = 3; // capacity lowered below the chats they hold
        let free = agent("free", 1, &[]);
        let waiting = [chat(0, 0, &[]), chat(0, 1, &[])];
        let plan = plan(&waiting, &[full.clone(), free.clone()], at(10));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].agent, free.id);
        assert_eq!(plan[0].conversation, waiting[0].conversation);
    }

    #[test]
    fn a_chat_nobody_can_take_keeps_its_place_and_later_ones_are_served() {
        let generalist = agent("gen", 1, &[]);
        let waiting = [chat(0, 0, &["billing"]), chat(0, 5, &[])];
        let plan = plan(&waiting, std::slice::from_ref(&generalist), at(10));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].conversation, waiting[1].conversation);
    }

    #[test]
    fn a_chat_taken_back_from_an_agent_is_not_given_to_them_again() {
        let (a, b) = (agent("a", 5, &[]), agent("b", 5, &[]));
        let mut back = chat(0, 0, &[]);
        back.excluded = vec![a.id];
        let plan = plan(&[back], &[a.clone(), b.clone()], at(10));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].agent, b.id);
        let alone = plan_for_one(&a);
        assert!(alone.is_empty(), "nobody else: it keeps waiting");
    }

    fn plan_for_one(only: &AgentSnapshot) -> Vec<Assignment> {
        let mut back = chat(0, 0, &[]);
        back.excluded = vec![only.id];
        plan(&[back], std::slice::from_ref(only), at(10))
    }

    #[test]
    fn assignments_in_one_plan_rotate_over_the_agents() {
        let agents = [agent("a", 5, &[]), agent("b", 5, &[])];
        let waiting: Vec<Waiting> = (0..4).map(|i| chat(0, i, &[])).collect();
        let plan = plan(&waiting, &agents, at(10));
        let who: Vec<UserId> = plan.iter().map(|a| a.agent).collect();
        assert_eq!(who.len(), 4);
        assert_ne!(who[0], who[1]);
        assert_eq!(who[0], who[2]);
        assert_eq!(who[1], who[3]);
    }
}
