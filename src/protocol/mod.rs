//! The shared vocabulary of replication: validated relative paths, version vectors, index
//! entries, the conflict rule and the bodies agents exchange. No IO, no tokio, no sqlx:
//! everything here is a pure function or a plain value, so it is unit-tested exhaustively.

pub mod agent_toml;
pub mod conflict;
pub mod entry;
pub mod path;
pub mod report;
pub mod status;
pub mod version;
pub mod versions;
pub mod wire;

pub use entry::{Entry, EntryKind, NodeId};
pub use path::{PathError, RelPath};
pub use version::{Ordering as VersionOrdering, VersionVector};
