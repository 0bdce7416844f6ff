DROP TABLE csat_ratings, assignments, queue_entries, workflows, conversation_events, messages,
  conversation_members, conversations, visitors, api_keys, refresh_tokens, agent_skills, users,
  tenants;
