-- Dead letters: requests that finally failed after their retries (sluice.resilience.dead_letters).
-- A letter's id is its seq; attempts hold JSON text; times are epoch seconds.

-- AUTOINCREMENT: an id is never reused, even after the newest letters are purged.
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT,
    provider TEXT,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]',
    body TEXT NOT NULL,
    clipped INTEGER NOT NULL DEFAULT 0,
    content_type TEXT,
    key_id TEXT,
    key_prefix TEXT,
    replays INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_at ON dead_letters (at);
CREATE INDEX dead_letters_model ON dead_letters (model, seq);
CREATE INDEX dead_letters_route ON dead_letters (route, seq);
