DROP TABLE timers;
DROP TABLE reactor_cursors;
DROP TABLE spine_entries;
DROP TABLE spine_heads;
