-- Hardening (issue 13) and folder identity (issue 11, item 12).

-- Join tokens are short and counted: a token enrolls at most max_uses clones (1 unless
-- chosen otherwise). Tokens created before this migration had no limit; they get the
-- default of one use, so a token already used once is spent.
alter table join_token add column max_uses integer not null default 1
    constraint join_token_max_uses_check check (max_uses between 1 and 100);

-- A node enrolled as a clone: the token that enrolled it and the node it was cloned from
-- (its webroot, install prefix, ports and SSH user were copied from that node's row).
alter table node add column enrolled_by uuid references join_token on delete set null;
alter table node add column clone_of text;

-- Folder identity: the installation's generation grows by one each time its sync path
-- changes; agents get folder_id = '<environment>:<sync path>:<generation>'. A node's
-- config_generation is the generation of the last configuration written to it (0: none),
-- so a node the control plane could not reconfigure is visibly behind.
alter table installation add column generation integer not null default 1;
alter table node add column config_generation integer not null default 0;
-- Agents installed before this migration run the first generation's configuration.
update node set config_generation = 1 where agent_state in ('running', 'unreachable', 'failed');

-- API tokens expire, can be revoked, and show when they were last used. Tokens created
-- before this migration expire 90 days after it.
alter table api_token add column expires_at timestamptz not null default now() + interval '90 days';
alter table api_token add column revoked_at timestamptz;
alter table api_token add column last_used_at timestamptz;

-- Failed logins, shared by every `filesync serve` process: one row per client address
-- ('ip:<addr>') and per user name ('user:<name>'). After a few failures a key must wait
-- until locked_until (exponential backoff) before a password is even checked.
create table login_throttle (
    throttle_key text primary key,
    failures integer not null default 0,
    locked_until timestamptz,
    last_failure_at timestamptz not null default now()
);

-- Addresses a user logged in from successfully: a per-user lock (set off by guesses from
-- elsewhere) does not apply to them, so strangers cannot lock the operator out.
create table login_trusted (
    username text not null,
    address text not null,
    last_success_at timestamptz not null default now(),
    constraint login_trusted_pkey primary key (username, address)
);
