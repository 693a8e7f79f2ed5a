-- Health reports, command results, and a revision per journal row so that
-- several writers can tell when another one moved a journal.
ALTER TABLE journals ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
CREATE TABLE unit_health (
    unit        TEXT PRIMARY KEY,
    health      TEXT    NOT NULL,          -- latest health payload, as received
    received_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE command_results (
    event_id TEXT PRIMARY KEY,             -- the `command` event that says it
    unit     TEXT NOT NULL,
    command  TEXT,                         -- the envelope id the unit answered (null: unreadable)
    name     TEXT,
    result   TEXT NOT NULL,                -- applied | rejected
    reason   TEXT,
    ts       TEXT
) WITHOUT ROWID;
CREATE INDEX command_results_by_command ON command_results (command);
INSERT OR IGNORE INTO command_results
    SELECT id, unit, json_extract(envelope, '$.data.command'), json_extract(envelope, '$.data.name'),
           json_extract(envelope, '$.data.result'), json_extract(envelope, '$.data.reason'), ts
    FROM events
    WHERE kind = 'command' AND json_valid(envelope)
      AND json_type(envelope, '$.data.result') = 'text';
