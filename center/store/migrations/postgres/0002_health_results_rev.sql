-- Health reports, command results, and a revision per journal row so that
-- several writers can tell when another one moved a journal.
ALTER TABLE journals ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
CREATE TABLE unit_health (
    unit        TEXT PRIMARY KEY,
    health      TEXT   NOT NULL,           -- latest health payload, as received
    received_ms BIGINT NOT NULL
);
CREATE TABLE command_results (
    event_id TEXT PRIMARY KEY,             -- the `command` event that says it
    unit     TEXT NOT NULL,
    command  TEXT,                         -- the envelope id the unit answered (null: unreadable)
    name     TEXT,
    result   TEXT NOT NULL,                -- applied | rejected
    reason   TEXT,
    ts       TEXT
);
CREATE INDEX command_results_by_command ON command_results (command);
