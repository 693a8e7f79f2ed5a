-- The ledger on PostgreSQL: the tables of the SQLite ledger, with counters per writer.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE events (
    id          TEXT PRIMARY KEY,          -- {unit}:{journal}:{seq}
    unit        TEXT     NOT NULL,
    journal     TEXT     NOT NULL,
    seq         BIGINT   NOT NULL,
    kind        TEXT     NOT NULL,
    ts          TEXT,                      -- the unit's wall time, as sent
    received_ms BIGINT   NOT NULL,         -- the ledger's clock
    resent      SMALLINT NOT NULL,         -- the stored copy said "resent": true
    digest      TEXT     NOT NULL,         -- sha256 of the envelope without "resent"
    envelope    TEXT     NOT NULL          -- the payload as received
);
CREATE UNIQUE INDEX events_by_seq ON events (unit, journal, seq);
CREATE INDEX events_by_ts ON events (ts);
CREATE TABLE journals (
    unit          TEXT   NOT NULL,
    journal       TEXT   NOT NULL,
    base          BIGINT NOT NULL,         -- 1..base acknowledged before this ledger
    prefix        BIGINT NOT NULL,         -- 1..prefix held or at most base
    max_seq       BIGINT NOT NULL,         -- highest seq held (0: none)
    held          BIGINT NOT NULL,         -- events stored
    ack_published BIGINT NOT NULL,         -- highest ack published (or read back)
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL,
    PRIMARY KEY (unit, journal)
);
CREATE TABLE units (
    unit           TEXT PRIMARY KEY,
    active_journal TEXT,                   -- the journal acks are published for
    status_journal TEXT,                   -- the journal the latest status named
    status         TEXT,                   -- latest status payload
    status_ms      BIGINT
);
-- One row per counter and ledger process: writers never wait on each other's counts.
CREATE TABLE counters (
    name   TEXT   NOT NULL,
    writer TEXT   NOT NULL,
    value  BIGINT NOT NULL,
    PRIMARY KEY (name, writer)
);
CREATE TABLE rejects (
    n           BIGSERIAL PRIMARY KEY,
    received_ms BIGINT NOT NULL,
    topic       TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    bytes       BIGINT NOT NULL,
    excerpt     TEXT   NOT NULL
);
