-- Join tokens (issue 4): a node cloned from an enrolled one enrolls itself with one of
-- these. Only the token's sha256 is kept; it is shown once at creation. A token works until
-- it expires or is revoked.
create table join_token (
    join_token_id uuid primary key,
    environment_id uuid not null references environment on delete cascade,
    name text not null,
    token_hash text not null constraint join_token_hash_key unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    revoked_at timestamptz,
    uses integer not null default 0
);
