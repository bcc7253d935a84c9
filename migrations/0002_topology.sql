-- Topology scaling (issue 4): a layer's sync can be paused around a redeploy. Nodes being
-- removed keep their row (agent_state 'removing') until their uninstall job ends.
alter table layer add column paused boolean not null default false;
