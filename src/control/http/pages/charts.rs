//! Pictures drawn on the server as inline SVG (no script, no chart library): replication
//! lag and receive throughput per node over the last hour (from `node_sample`, one point
//! per heartbeat), and the mesh as a topology: each node with its sync state, each pair's
//! connection as both agents report it, and the cross-environment link.

use std::collections::BTreeMap;

use crate::control::AppState;
use crate::control::db;
use crate::control::health::bytes;
use crate::control::http::Error;
use crate::control::ops::status::EnvStatus;

const W: f64 = 560.0;
const H: f64 = 150.0;
const PAD: f64 = 6.0;
/// How far back the charts look.
const WINDOW_S: f64 = 3600.0;

pub struct Series {
    pub name: String,
    /// `c0`..`c5`: the node's colour.
    pub class: String,
    pub points: String,
    pub last: String,
}

#[derive(Default)]
pub struct Chart {
    pub title: String,
    pub series: Vec<Series>,
    pub y_max: String,
    /// "last 12 min".
    pub span: String,
    /// Every value is zero (nothing to draw but the baseline).
    pub flat: bool,
    pub width: u32,
    pub height: u32,
}

pub struct TopoNode {
    pub name: String,
    pub x: f64,
    pub y: f64,
    pub class: String,
    pub label: String,
}

pub struct TopoEdge {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
    /// `edge-up`, `edge-half` (one side connected) or `edge-down`.
    pub class: String,
    pub title: String,
}

#[derive(Default)]
pub struct Charts {
    pub lag: Chart,
    pub throughput: Chart,
    pub nodes: Vec<TopoNode>,
    pub edges: Vec<TopoEdge>,
    /// The other environment, when linked: (label, x, y).
    pub remote: Option<(String, f64, f64)>,
    pub has_samples: bool,
}

impl Charts {
    pub fn list(&self) -> [&Chart; 2] {
        [&self.lag, &self.throughput]
    }
}

/// A chart of `values` (node → [(seconds ago, value)]) over the last `window` seconds.
fn chart(title: &str, values: &BTreeMap<String, Vec<(f64, f64)>>, fmt: impl Fn(f64) -> String, order: &[String], window: f64) -> Chart {
    let top = values.values().flatten().map(|(_, v)| *v).fold(0.0f64, f64::max);
    let max = top.max(1.0);
    let series = values
        .iter()
        .map(|(name, pts)| Series {
            name: name.clone(),
            class: format!("c{}", order.iter().position(|n| n == name).unwrap_or(0) % 6),
            points: pts.iter().map(|(ago, v)| format!("{:.1},{:.1}", PAD + (W - 2.0 * PAD) * (1.0 - ago / window), H - PAD - (H - 2.0 * PAD) * (v / max))).collect::<Vec<_>>().join(" "),
            last: pts.last().map(|(_, v)| fmt(*v)).unwrap_or_default(),
        })
        .collect();
    let span = if window >= 3599.0 { "last hour".to_owned() } else { format!("last {} min", (window / 60.0).ceil() as u64) };
    Chart { title: title.to_owned(), series, y_max: fmt(top), span, flat: top <= 0.0, width: W as u32, height: H as u32 }
}

pub async fn build(st: &AppState, s: &EnvStatus) -> Result<Charts, Error> {
    let samples = db::reports::samples(&st.pool, s.layer.layer_id, WINDOW_S).await?;
    let now = time::OffsetDateTime::now_utc();
    let name_of = |id: uuid::Uuid| s.nodes.iter().find(|n| n.node_id == id).map(|n| n.name.clone());
    let order: Vec<String> = s.nodes.iter().map(|n| n.name.clone()).collect();
    let mut lag: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut rate: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut prev: BTreeMap<uuid::Uuid, &db::reports::SampleRow> = BTreeMap::new();
    for x in &samples {
        let Some(name) = name_of(x.node_id) else { continue };
        let ago = (now - x.sampled_at).as_seconds_f64().clamp(0.0, WINDOW_S);
        lag.entry(name.clone()).or_default().push((ago, x.lag_ms.unwrap_or(0) as f64));
        if let Some(p) = prev.get(&x.node_id) {
            let dt = (x.sampled_at - p.sampled_at).as_seconds_f64();
            if dt > 0.0 && x.bytes_in >= p.bytes_in {
                rate.entry(name).or_default().push((ago, (x.bytes_in - p.bytes_in) as f64 / dt));
            }
        }
        prev.insert(x.node_id, x);
    }
    // The charts span what there is (a minute at least), up to an hour.
    let window = samples.first().map(|x| (now - x.sampled_at).as_seconds_f64()).unwrap_or(60.0).clamp(60.0, WINDOW_S);
    let mut c = Charts {
        has_samples: !samples.is_empty(),
        lag: chart("Replication lag (largest measured while changes arrived)", &lag, |v| format!("{v:.0} ms"), &order, window),
        throughput: chart("Received from peers", &rate, |v| format!("{}/s", bytes(v as u64)), &order, window),
        ..Charts::default()
    };
    // The mesh: nodes on a circle, each pair's connection as the two agents see it.
    let live: Vec<(&db::NodeRow, &crate::control::health::NodeSync)> = s.nodes.iter().zip(&s.node_sync).filter(|(n, _)| !n.agent_state.leaving()).collect();
    let (cx, cy, r) = (150.0, 120.0, if live.len() <= 1 { 0.0 } else { 85.0 });
    for (i, (n, ns)) in live.iter().enumerate() {
        let a = std::f64::consts::TAU * i as f64 / live.len().max(1) as f64 - std::f64::consts::FRAC_PI_2;
        c.nodes.push(TopoNode { name: n.name.clone(), x: cx + r * a.cos(), y: cy + r * a.sin(), class: format!("sync-{}", ns.state.class()), label: ns.state.as_str().to_owned() });
    }
    for i in 0..live.len() {
        for j in i + 1..live.len() {
            let sees =
                |a: &db::NodeRow, b: &db::NodeRow| a.status().and_then(|s| s.peers.get(&b.name)).is_some_and(|p| p.connected) && live.iter().any(|(n, ns)| n.node_id == a.node_id && ns.reachable);
            let (ab, ba) = (sees(live[i].0, live[j].0), sees(live[j].0, live[i].0));
            let (class, word) = match (ab, ba) {
                (true, true) => ("edge-up", "connected both ways"),
                (false, false) => ("edge-down", "not connected"),
                _ => ("edge-half", "connected one way only"),
            };
            c.edges.push(TopoEdge { x1: c.nodes[i].x, y1: c.nodes[i].y, x2: c.nodes[j].x, y2: c.nodes[j].y, class: class.into(), title: format!("{} – {}: {word}", live[i].0.name, live[j].0.name) });
        }
    }
    if let Some((leader, _)) = live.iter().find(|(n, _)| n.status().and_then(|s| s.link.as_ref()).is_some_and(|l| l.leader)) {
        let l = leader.status().and_then(|s| s.link.clone()).unwrap_or_default();
        let (rx, ry) = (330.0, 120.0);
        let from = c.nodes.iter().find(|t| t.name == leader.name).map(|t| (t.x, t.y)).unwrap_or((cx, cy));
        let state = serde_json::to_value(l.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        c.edges.push(TopoEdge {
            x1: from.0,
            y1: from.1,
            x2: rx,
            y2: ry,
            class: if state == "connected" { "edge-up link".into() } else { "edge-down link".into() },
            title: format!("cross-environment link via {}: {state}", leader.name),
        });
        c.remote = Some((format!("other environment ({state})"), rx, ry));
    }
    Ok(c)
}
