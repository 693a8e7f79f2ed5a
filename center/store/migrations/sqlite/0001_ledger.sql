-- The ledger as first released (PRAGMA user_version 1, before schema_version).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE events (
    id          TEXT PRIMARY KEY,          -- {unit}:{journal}:{seq}
    unit        TEXT    NOT NULL,
    journal     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    ts          TEXT,                      -- the unit's wall time, as sent
    received_ms INTEGER NOT NULL,          -- the ledger's clock
    resent      INTEGER NOT NULL,          -- the stored copy said "resent": true
    digest      TEXT    NOT NULL,          -- sha256 of the envelope without "resent"
    envelope    TEXT    NOT NULL           -- the payload as received
) WITHOUT ROWID;
CREATE UNIQUE INDEX events_by_seq ON events (unit, journal, seq);
CREATE TABLE journals (
    unit          TEXT    NOT NULL,
    journal       TEXT    NOT NULL,
    base          INTEGER NOT NULL,        -- 1..base acknowledged before this ledger
    prefix        INTEGER NOT NULL,        -- 1..prefix held or at most base
    max_seq       INTEGER NOT NULL,        -- highest seq held (0: none)
    held          INTEGER NOT NULL,        -- events stored
    ack_published INTEGER NOT NULL,        -- highest ack published (or read back)
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    PRIMARY KEY (unit, journal)
) WITHOUT ROWID;
CREATE TABLE units (
    unit           TEXT PRIMARY KEY,
    active_journal TEXT,                   -- the journal acks are published for
    status_journal TEXT,                   -- the journal the latest status named
    status         TEXT,                   -- latest status payload
    status_ms      INTEGER
) WITHOUT ROWID;
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE rejects (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    excerpt     TEXT    NOT NULL
);
