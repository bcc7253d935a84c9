//! Gathers the facts `health::assess` decides on, from Postgres (what the last heartbeats
//! recorded), for one environment: every view (the environment page and its live
//! fragment, the environment list, the API, the monitor's events) calls [`load`], so they
//! all say the same thing.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::control::AppState;
use crate::control::db::{self, EnvironmentRow, InstallationRow, JobRow, NodeRow, environments::LayerRow};
use crate::control::health::{self, EnvFacts, EnvSync, LastJob, NodeFacts, NodeSync};
use crate::control::state::AgentState;

/// An environment with its nodes, their latest jobs and what `health::assess` says.
pub struct EnvStatus {
    pub env: EnvironmentRow,
    pub layer: LayerRow,
    pub inst: Option<InstallationRow>,
    pub nodes: Vec<NodeRow>,
    /// The latest job of each node (by node name).
    pub jobs: Vec<JobRow>,
    pub sync: EnvSync,
    /// In the order of `nodes`.
    pub node_sync: Vec<NodeSync>,
}

impl EnvStatus {
    pub fn job_of(&self, node: &NodeRow) -> Option<&JobRow> {
        self.jobs.iter().find(|j| j.node_id == Some(node.node_id))
    }
}

/// Receive rate per node (bytes/s) from the samples of the last minute.
fn rates(samples: &[db::reports::SampleRow]) -> HashMap<Uuid, f64> {
    let mut first: HashMap<Uuid, &db::reports::SampleRow> = HashMap::new();
    let mut last: HashMap<Uuid, &db::reports::SampleRow> = HashMap::new();
    for s in samples {
        first.entry(s.node_id).or_insert(s);
        last.insert(s.node_id, s);
    }
    first
        .into_iter()
        .filter_map(|(id, a)| {
            let b = last.get(&id)?;
            let dt = (b.sampled_at - a.sampled_at).as_seconds_f64();
            (dt > 0.5 && b.bytes_in >= a.bytes_in).then(|| (id, (b.bytes_in - a.bytes_in) as f64 / dt))
        })
        .collect()
}

/// The environment's status, or None when there is no such environment.
pub async fn load(st: &AppState, env_id: Uuid) -> anyhow::Result<Option<EnvStatus>> {
    let Some(env) = db::environments::get(&st.pool, env_id).await? else { return Ok(None) };
    let layer_id = db::environments::cp_layer(&st.pool, env_id).await?;
    let layer = db::environments::layer(&st.pool, layer_id).await?;
    let inst = db::environments::installation(&st.pool, layer_id).await?;
    let nodes = db::nodes::list(&st.pool, layer_id).await?;
    let jobs = db::jobs::latest_per_node(&st.pool, env_id).await?;
    let rates = rates(&db::reports::samples(&st.pool, layer_id, 60.0).await?);
    let generation = inst.as_ref().map(|i| i.generation).unwrap_or(0);
    let facts: Vec<NodeFacts> = nodes
        .iter()
        .map(|n| NodeFacts {
            name: &n.name,
            lifecycle: n.agent_state,
            health: n.health,
            health_error: n.health_error.as_deref(),
            last_heartbeat: n.last_heartbeat_at,
            status: n.status(),
            report: n.report(),
            last_job: jobs.iter().find(|j| j.node_id == Some(n.node_id)).map(|j| LastJob { kind: j.kind, state: j.state, error: j.error.as_deref() }),
            configured: n.config_generation > 0,
            held: n.agent_state == AgentState::Paused && n.config_generation < generation,
            rate: rates.get(&n.node_id).copied(),
        })
        .collect();
    let facts_env = EnvFacts {
        installation: inst.as_ref().map(|i| i.state),
        paused_at: layer.paused_at,
        paused_by: layer.paused_by.as_deref(),
        paused: layer.paused,
        out_of_sync_since: layer.out_of_sync_since,
        heartbeat: st.heartbeat,
        now: time::OffsetDateTime::now_utc(),
    };
    let (sync, node_sync) = health::assess(&facts_env, &facts);
    Ok(Some(EnvStatus { env, layer, inst, nodes, jobs, sync, node_sync }))
}

/// How long an agent may take to answer a dashboard's question.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
