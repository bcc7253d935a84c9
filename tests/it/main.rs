//! The integration tests: one binary (link once), real `filesync agent` processes on
//! distinct 127.0.x.y addresses, real sockets, real files. See `support` for the harness.

mod support;

mod agent_churn;
mod agent_config;
mod agent_conflicts;
mod agent_crash;
mod agent_folder;
mod agent_hostile_input;
mod agent_link;
mod agent_names;
mod agent_operations;
mod agent_races;
mod agent_replication;
mod agent_security;
mod agent_versions;
mod control_auth;
mod control_browser;
mod control_clone;
mod control_dashboard;
mod control_enroll;
mod control_hostile;
mod control_http;
mod control_install;
mod control_link;
mod control_login;
mod control_path;
mod control_secrets;
mod control_tokens;
mod control_topology;
mod control_versions;
mod control_workers;
mod proxy_selftest;
mod tidy;
