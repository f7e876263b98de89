-- Trellis schema. Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE customers (
    id          TEXT PRIMARY KEY,
    profile     TEXT NOT NULL,              -- JSON of model::Customer
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT UNIQUE,               -- the sender's id; a resend with the same id is refused
    customer_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    at           INTEGER NOT NULL,          -- the event's own timestamp
    properties   TEXT NOT NULL,             -- JSON object
    received_at  INTEGER NOT NULL,
    processed    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX events_unprocessed ON events (seq) WHERE processed = 0;
CREATE INDEX events_by_customer ON events (customer_id, at);

-- Every version of every workflow ever loaded, so customers in flight keep theirs.
CREATE TABLE workflow_versions (
    workflow_id  TEXT NOT NULL,
    version      TEXT NOT NULL,             -- content hash of the file
    source       TEXT NOT NULL,             -- the YAML text
    path         TEXT NOT NULL,
    loaded_at    INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE workflows (
    id               TEXT PRIMARY KEY,
    current_version  TEXT NOT NULL,
    paused           INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE enrollments (
    id                TEXT PRIMARY KEY,
    workflow_id       TEXT NOT NULL,
    workflow_version  TEXT NOT NULL,
    customer_id       TEXT NOT NULL,
    active            INTEGER NOT NULL,
    node              TEXT,
    wake_at           INTEGER,
    state             TEXT NOT NULL,        -- JSON of engine::Enrollment
    entered_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX enrollments_one_active ON enrollments (workflow_id, customer_id) WHERE active = 1;
CREATE INDEX enrollments_due ON enrollments (wake_at) WHERE active = 1;
CREATE INDEX enrollments_by_customer ON enrollments (customer_id, workflow_id, entered_at);

-- The transactional outbox: written with the enrollment's new state, drained by the dispatcher.
CREATE TABLE messages (
    key              TEXT PRIMARY KEY,      -- idempotency key; also the Message-ID
    enrollment_id    TEXT,
    workflow_id      TEXT NOT NULL,
    node             TEXT NOT NULL,
    customer_id      TEXT NOT NULL,
    channel          TEXT NOT NULL,         -- email, sms, webhook
    template         TEXT,
    category         TEXT NOT NULL,         -- marketing or transactional
    status           TEXT NOT NULL,         -- pending, sending, sent, failed, suppressed, cancelled
    payload          TEXT NOT NULL,         -- JSON of the rendered message
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    last_error       TEXT,
    provider_id      TEXT,
    delivery_status  TEXT,                  -- from provider delivery reports: delivered, undelivered, …
    delivery_is_final INTEGER NOT NULL DEFAULT 0, -- a final report is never replaced by an interim one
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX messages_due ON messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX messages_by_customer ON messages (customer_id, created_at);

CREATE TABLE attempts (
    message_key  TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    outcome      TEXT NOT NULL,             -- sent, retry, failed
    detail       TEXT,
    PRIMARY KEY (message_key, attempt)
);

CREATE TABLE conversions (
    enrollment_id  TEXT PRIMARY KEY,
    workflow_id    TEXT NOT NULL,
    customer_id    TEXT NOT NULL,
    event          TEXT NOT NULL,
    value          REAL,
    arm            TEXT,
    message_key    TEXT,                    -- the message credited: the last one received within the attribution window
    at             INTEGER NOT NULL
);

CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- Segment membership as last computed; a change fires segment_entered / segment_exited once.
CREATE TABLE segment_members (
    segment      TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    since        INTEGER NOT NULL,
    PRIMARY KEY (segment, customer_id)
);
CREATE INDEX segment_members_by_customer ON segment_members (customer_id);

-- Addresses that must never be sent to again: hard bounces, complaints.
CREATE TABLE suppressions (
    channel  TEXT NOT NULL,
    address  TEXT NOT NULL,
    reason   TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (channel, address)
);

-- The next occurrence of each time-based trigger (schedule, date attribute) per customer.
CREATE TABLE scheduled_fires (
    workflow_id  TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    fire_at      INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, customer_id)
);
CREATE INDEX scheduled_fires_due ON scheduled_fires (fire_at);

-- Occurrences already handled: a broadcast never enrolls anyone twice for one occurrence.
CREATE TABLE trigger_fires (
    workflow_id  TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    occurrence   INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, customer_id, occurrence)
);
