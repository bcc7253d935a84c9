-- The dashboard (issue 14): a truthful sync state, recent changes, conflicts, verify and
-- repair, lag and throughput history.

-- Who paused a layer's sync and when (shown with the paused state), and since when its
-- nodes have been seen to differ (the monitor sets it when it first sees them differ and
-- clears it when they agree again).
alter table layer add column paused_at timestamptz;
alter table layer add column paused_by text;
alter table layer add column out_of_sync_since timestamptz;
update layer set paused_at = now(), paused_by = 'an operator (before this version recorded who)' where paused;

-- An agent's health, kept apart from the result of the node's last job (agent_state): every
-- node with an agent is polled, whatever its last job said. health_error says why the last
-- poll failed. last_report is the agent's report summary of the last heartbeat (change list
-- position, conflicts, content still to fetch).
alter table node add column health text not null default 'unknown'
    constraint node_health_check check (health in ('unknown', 'up', 'down'));
alter table node add column health_error text;
alter table node add column health_checked_at timestamptz;
alter table node add column last_report jsonb;

-- File changes as the agents recorded them (from their report summaries), for the recent
-- changes lists; the monitor keeps the newest per environment. node_name stays when the
-- node is removed. version identifies one change across nodes (each node records it once);
-- content (the start of the content's hash) lets the lists show once a content that several
-- nodes recorded with versions of their own (each resolving the same conflict).
create table file_change (
    file_change_id bigint generated always as identity primary key,
    environment_id uuid not null references environment on delete cascade,
    node_id uuid references node on delete set null,
    node_name text not null,
    recorded_at timestamptz not null,
    path text not null,
    kind text not null,
    entry text not null,
    origin text not null,
    via text,
    size bigint not null,
    from_path text,
    version text not null,
    content text not null default ''
);
create index file_change_environment_idx on file_change (environment_id, file_change_id desc);
create index file_change_node_idx on file_change (node_id, file_change_id desc);

-- Conflict copies seen in an environment, for the event timeline and the API (the agents
-- hold the truth; the conflict center asks them). resolved_at is set when the copy is gone.
create table conflict (
    environment_id uuid not null references environment on delete cascade,
    path text not null,
    original text,
    loser_node text not null,
    first_seen_at timestamptz not null default now(),
    resolved_at timestamptz,
    constraint conflict_pkey primary key (environment_id, path)
);

-- Verify and repair runs of an environment (compare the nodes' trees; make them agree),
-- claimed like jobs with `for update skip locked`; result is what was compared and what
-- differs.
create table sync_check (
    sync_check_id uuid primary key,
    environment_id uuid not null references environment on delete cascade,
    kind text not null constraint sync_check_kind_check check (kind in ('verify', 'repair')),
    state text not null default 'queued' constraint sync_check_state_check check (state in ('queued', 'running', 'succeeded', 'failed')),
    requested_by text not null,
    result jsonb,
    error text,
    claimed_by text,
    heartbeat_at timestamptz,
    created_at timestamptz not null default now(),
    finished_at timestamptz
);
create index sync_check_environment_idx on sync_check (environment_id, created_at desc);
create index sync_check_runnable_idx on sync_check (created_at) where state in ('queued', 'running');

-- One sample per node per heartbeat for the charts: the largest replication lag the agent
-- measured, its byte counters (throughput is the difference between samples) and what it
-- had pending. Older samples are deleted (serve --sample-retention-days).
create table node_sample (
    node_id uuid not null references node on delete cascade,
    sampled_at timestamptz not null default now(),
    lag_ms bigint,
    bytes_in bigint not null,
    bytes_out bigint not null,
    pending bigint not null,
    constraint node_sample_pkey primary key (node_id, sampled_at)
);
create index node_sample_time_idx on node_sample (sampled_at);
