DROP TABLE agent_presence;
