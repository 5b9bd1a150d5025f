-- Keys, users, teams, roles, the change feed and the hash-chained audit log.
-- JSON columns are JSONB (the audit details stay text: hashed as written); times are epoch seconds.

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    owner_user TEXT,
    owner_team TEXT,
    service_account BOOLEAN NOT NULL DEFAULT FALSE,
    roles JSONB NOT NULL DEFAULT '[]',
    models JSONB NOT NULL DEFAULT '[]',
    policies JSONB NOT NULL DEFAULT '[]',
    quotas JSONB NOT NULL DEFAULT '[]',
    ip_allow JSONB NOT NULL DEFAULT '[]',
    ip_deny JSONB NOT NULL DEFAULT '[]',
    signing BOOLEAN NOT NULL DEFAULT FALSE,
    signing_secret TEXT,
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    rotated_to TEXT,
    grace_until DOUBLE PRECISION
);
CREATE INDEX api_keys_owner_user ON api_keys (owner_user, id);
CREATE INDEX api_keys_owner_team ON api_keys (owner_team, id);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    email TEXT,
    teams JSONB NOT NULL DEFAULT '[]',
    roles JSONB NOT NULL DEFAULT '[]',
    metadata JSONB NOT NULL DEFAULT '{}',
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX users_teams ON users USING gin (teams jsonb_path_ops);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    roles JSONB NOT NULL DEFAULT '[]',
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE roles (
    name TEXT PRIMARY KEY,
    permissions JSONB NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Versions commit in order: each writer appends under an advisory lock held until commit.
CREATE TABLE changes (
    version BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    op TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    client_ip TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_target ON audit_log (target, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- The chain's end, moved in the same transaction as each append: removing the last records shows.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
