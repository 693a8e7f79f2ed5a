-- What `send --db` published (one row per signed envelope and destination) and
-- each unit's answer to it: the centre's book of desired documents.
CREATE TABLE desired_documents (
    id          TEXT    NOT NULL,          -- the envelope's id
    target      TEXT    NOT NULL,          -- a unit id, or _all for the whole site
    site        TEXT    NOT NULL,
    name        TEXT    NOT NULL,          -- level, lights, cards, points, or a command's name
    topic       TEXT    NOT NULL,
    retained    INTEGER NOT NULL,          -- 1: a desired document, 0: a one-shot command
    issued_ms   BIGINT  NOT NULL,
    expires_ms  BIGINT  NOT NULL,          -- the envelope's expires_at
    sent_ms     BIGINT  NOT NULL,
    envelope    TEXT    NOT NULL,          -- the signed payload as published
    rejected    INTEGER NOT NULL,          -- 1: a unit rejected it (never in force)
    replaced_by TEXT,                      -- the document put back in its place, if any
    restored_ms BIGINT,                    -- last time it was put back as the retained one
    PRIMARY KEY (id, target)
);
CREATE INDEX desired_documents_by_target ON desired_documents (site, name, target, sent_ms);
CREATE TABLE desired_outcomes (
    document    TEXT    NOT NULL,          -- desired_documents.id
    unit        TEXT    NOT NULL,
    result      TEXT    NOT NULL,          -- applied, rejected, no_answer, offline
    reason      TEXT,
    detail      TEXT,
    at_ms       BIGINT  NOT NULL,
    PRIMARY KEY (document, unit, result)
);
