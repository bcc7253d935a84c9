//! The states the control plane records for nodes, jobs and installations, as enums. They
//! are stored as text in Postgres (readable in `psql`, stable across versions) and cross
//! the API as the same strings; an unknown string in the database is an error, never a
//! silent default.

use sqlx::Postgres;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident => $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name { $($(#[$vdoc])* #[serde(rename = $s)] $v),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$v),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                $name::parse(s).ok_or_else(|| format!("unknown {} {s:?} in the database", stringify!($name)).into())
            }
        }

        impl sqlx::Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as sqlx::Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
    };
}

text_enum! {
    /// What the control plane knows about a node's agent.
    AgentState {
        NotInstalled => "not installed",
        /// The last job succeeded and the agent answers heartbeats.
        Running => "running",
        /// Installed, but the agent stopped answering heartbeats.
        Unreachable => "unreachable",
        /// The last job failed.
        Failed => "failed",
        /// Held paused by the control plane: its configuration is older than the
        /// installation's (a sync path change could not reach it). Resumed when a
        /// reconfigure reaches it.
        Paused => "paused",
        /// Being removed (scale in): not a peer any more, its uninstall job is queued.
        Removing => "removing",
        /// Removed while unreachable: never contacted again.
        Gone => "gone",
    }
}

impl AgentState {
    /// Whether the node is leaving or has left the layer (no peer, no job, no heartbeat).
    pub fn leaving(self) -> bool {
        matches!(self, AgentState::Removing | AgentState::Gone)
    }

    /// Whether an agent is installed and expected to answer (heartbeats, pause/resume).
    pub fn has_agent(self) -> bool {
        matches!(self, AgentState::Running | AgentState::Unreachable | AgentState::Paused)
    }
}

text_enum! {
    JobKind {
        Install => "install",
        Reconfigure => "reconfigure",
        Uninstall => "uninstall",
        Verify => "verify",
    }
}

text_enum! {
    JobState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
    }
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

text_enum! {
    /// The add-on installation of a layer.
    InstallState {
        Installing => "installing",
        /// A sync path change: every node was paused, is being reconfigured, and is
        /// resumed once every job ended.
        ChangingPath => "changing path",
        Installed => "installed",
        Failed => "failed",
        Uninstalling => "uninstalling",
    }
}

text_enum! {
    /// The add-on's synchronization mode (the manifest's `mode` field).
    Mode {
        OneEnv => "one_env",
        TwoEnvs => "two_envs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_text() {
        for s in AgentState::ALL {
            assert_eq!(AgentState::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        for s in JobKind::ALL {
            assert_eq!(JobKind::parse(s.as_str()), Some(*s));
        }
        for s in InstallState::ALL {
            assert_eq!(InstallState::parse(&s.to_string()), Some(*s));
        }
        assert_eq!(AgentState::parse("running "), None);
    }
}
