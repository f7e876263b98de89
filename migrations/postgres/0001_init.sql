-- Trellis schema on PostgreSQL (docs/design-postgres.md §3): every SQLite migration in
-- ../ folded into one file, because a fresh database needs no backfill. Applied by
-- store::postgres's own Migrator, with its own _sqlx_migrations table in the schema the
-- connection's search_path names first.
-- Times are BIGINT milliseconds since the Unix epoch (UTC), as on SQLite.
-- Leases are timed by the database's clock, never a runner's: runners' clocks may differ.
CREATE FUNCTION trellis_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
  AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE customers (
    id          text COLLATE "C" PRIMARY KEY,
    profile     jsonb  NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    version     bigint NOT NULL DEFAULT 0
);
-- 0004's trigger. BEFORE, so it changes NEW instead of running a second UPDATE. It fires
-- whenever profile is in the SET list, upserts included, as SQLite's UPDATE OF does.
CREATE FUNCTION customers_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER customers_version BEFORE UPDATE OF profile ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_bump_version();

-- Who may write a customer's journey state, and until when (§5.1). One row per customer,
-- made with the customer. It is narrow and separate, so a claim never rewrites the profile.
CREATE TABLE customer_leases (
    customer_id  text COLLATE "C" PRIMARY KEY,
    runner_id    text,
    token        bigint NOT NULL DEFAULT 0,
    expires_at   bigint NOT NULL DEFAULT 0
);
CREATE SEQUENCE lease_tokens;
CREATE FUNCTION customers_lease_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_leases (customer_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER customers_lease AFTER INSERT ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_lease_row();

CREATE TABLE events (
    customer_id  text COLLATE "C" NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    id           text COLLATE "C",
    name         text   NOT NULL,
    at           bigint NOT NULL,
    properties   jsonb  NOT NULL,
    received_at  bigint NOT NULL,
    processed    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (customer_id, seq)
);
CREATE UNIQUE INDEX events_id ON events (id);     -- a resent id is refused, as on SQLite (§7)
CREATE INDEX events_unprocessed ON events (seq) INCLUDE (customer_id) WHERE NOT processed;
CREATE INDEX events_by_customer ON events (customer_id, at);

CREATE TABLE workflow_versions (
    workflow_id  text COLLATE "C" NOT NULL, version text NOT NULL, source text NOT NULL,
    path text NOT NULL, loaded_at bigint NOT NULL,
    PRIMARY KEY (workflow_id, version)
);
CREATE TABLE workflows (
    id text COLLATE "C" PRIMARY KEY, current_version text NOT NULL,
    paused boolean NOT NULL DEFAULT false
);

CREATE TABLE enrollments (
    customer_id       text COLLATE "C" NOT NULL,
    id                text COLLATE "C" NOT NULL,
    workflow_id       text COLLATE "C" NOT NULL,
    workflow_version  text NOT NULL,
    active            boolean NOT NULL,
    node              text,
    wake_at           bigint,
    state             jsonb  NOT NULL,
    entered_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    PRIMARY KEY (customer_id, id)
);
CREATE UNIQUE INDEX enrollments_one_active ON enrollments (customer_id, workflow_id) WHERE active;
CREATE INDEX enrollments_due ON enrollments (wake_at) INCLUDE (customer_id, workflow_id) WHERE active;
CREATE INDEX enrollments_by_customer ON enrollments (customer_id, workflow_id, entered_at);

CREATE TABLE messages (
    customer_id       text COLLATE "C" NOT NULL,
    key               text COLLATE "C" NOT NULL,    -- idempotency key; also the Message-ID
    enrollment_id     text,
    workflow_id       text COLLATE "C" NOT NULL,
    node              text NOT NULL,
    channel           text NOT NULL,
    template          text,
    category          text NOT NULL,
    status            text NOT NULL,
    payload           jsonb NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   bigint,
    last_error        text,
    provider_id       text,
    delivery_status   text,
    delivery_is_final boolean NOT NULL DEFAULT false,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    sent_at           bigint,
    counts_at         bigint,
    claimed_by        text,      -- the outbox lease (§5.2): set while status = 'sending'
    lease_token       bigint,
    lease_expires_at  bigint,
    PRIMARY KEY (customer_id, key)
);
CREATE UNIQUE INDEX messages_key ON messages (key);  -- lookups by key (reports, outcomes)
CREATE INDEX messages_due ON messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX messages_leased ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_by_customer ON messages (customer_id, created_at);
CREATE INDEX messages_caps ON messages (customer_id, counts_at) WHERE counts_at IS NOT NULL;

CREATE TABLE attempts (
    customer_id text COLLATE "C" NOT NULL, message_key text COLLATE "C" NOT NULL,
    attempt integer NOT NULL, at bigint NOT NULL, outcome text NOT NULL, detail text,
    PRIMARY KEY (customer_id, message_key, attempt)
);
CREATE TABLE conversions (
    customer_id text COLLATE "C" NOT NULL, enrollment_id text COLLATE "C" NOT NULL,
    workflow_id text COLLATE "C" NOT NULL, event text NOT NULL, value double precision,
    arm text, message_key text, at bigint NOT NULL,
    PRIMARY KEY (customer_id, enrollment_id)
);
CREATE TABLE settings (name text COLLATE "C" PRIMARY KEY, value text NOT NULL);
CREATE TABLE segment_members (
    customer_id text COLLATE "C" NOT NULL, segment text COLLATE "C" NOT NULL, since bigint NOT NULL,
    PRIMARY KEY (customer_id, segment)
);
CREATE INDEX segment_members_by_segment ON segment_members (segment, customer_id);
CREATE TABLE suppressions (                        -- keyed by address: a reference table (§7)
    channel text NOT NULL, address text COLLATE "C" NOT NULL, reason text NOT NULL, at bigint NOT NULL,
    PRIMARY KEY (channel, address)
);
CREATE TABLE scheduled_fires (
    customer_id text COLLATE "C" NOT NULL, workflow_id text COLLATE "C" NOT NULL, fire_at bigint NOT NULL,
    PRIMARY KEY (customer_id, workflow_id)
);
CREATE INDEX scheduled_fires_due ON scheduled_fires (fire_at) INCLUDE (customer_id);
CREATE TABLE trigger_fires (
    customer_id text COLLATE "C" NOT NULL, workflow_id text COLLATE "C" NOT NULL, occurrence bigint NOT NULL,
    PRIMARY KEY (customer_id, workflow_id, occurrence)
);
CREATE INDEX trigger_fires_by_customer ON trigger_fires (customer_id, occurrence);

-- Singletons (§5.5): 'sweep' (segments, traits, time triggers kept scheduled).
CREATE TABLE leader_leases (
    name text COLLATE "C" PRIMARY KEY, runner_id text NOT NULL, token bigint NOT NULL,
    expires_at bigint NOT NULL, last_run_at bigint
);

-- SQLite's 0005: a channel's due messages without walking the other channels' first.
CREATE INDEX messages_due_by_channel ON messages (channel, next_attempt_at) WHERE status = 'pending';

-- The API's lookup by address (§3.1: SQLite's COLLATE NOCASE becomes lower()).
CREATE INDEX customers_by_email ON customers (lower(profile->>'email'));
CREATE INDEX customers_by_phone ON customers ((profile->>'phone'));

-- SQLite's CAST(json_extract(x, '$.value') AS REAL), for order_stats: a number as it is, a
-- string by its longest numeric prefix (0 when it has none), true 1 and false 0, JSON null
-- NULL, an object or array 0.
CREATE FUNCTION trellis_real(v jsonb) RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'number' THEN (v #>> '{}')::double precision
        WHEN 'string' THEN COALESCE(substring(v #>> '{}' FROM
            '^\s*([+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?)'), '0')::double precision
        WHEN 'boolean' THEN CASE WHEN v = 'true'::jsonb THEN 1.0 ELSE 0.0 END
        WHEN 'null' THEN NULL
        ELSE 0.0
    END
$$;
