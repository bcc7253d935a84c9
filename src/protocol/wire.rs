//! Bodies agents exchange over their mutually authenticated HTTP/2 link (postcard-encoded).
//!
//! Replication is a long-poll: a peer asks `GET /v1/changes?since=N` and the node answers
//! with every index entry whose local sequence number is above `N` (its own changes and
//! the ones it applied from others, so changes are relayed), plus the content of small
//! files it changed itself inline. With nothing new it holds the request until something
//! changes. On (re)connect the same request is the anti-entropy catch-up.

use serde::{Deserialize, Serialize};

use super::{Entry, NodeId};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesQuery {
    /// Highest sequence number of this node the asker has processed.
    pub since: u64,
    /// The asker's view of this node's index incarnation; a mismatch restarts from 0.
    pub index_id: u64,
    /// How long the node may hold the request when it has nothing newer (milliseconds).
    pub wait_ms: u64,
    /// Items the asker has accepted but not yet written (reported in this node's status).
    pub pending: u64,
    /// The asker's node name, for this node's status and log.
    pub from: String,
    /// The folder the asker syncs (`folder_id` in its config; empty if unset). A node that
    /// syncs another folder (another environment, an old sync path, an older generation)
    /// refuses the ask.
    pub folder: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesResponse {
    pub node_id: NodeId,
    pub node_name: String,
    pub index_id: u64,
    /// (sequence number, entry), ascending.
    pub entries: Vec<(u64, Entry)>,
    /// Content of small files, keyed by their BLAKE3 hash.
    pub blobs: Vec<Blob>,
    /// The highest sequence the asker may record after processing this page.
    pub last_seq: u64,
    /// More pages are waiting; ask again at once.
    pub more: bool,
    /// The folder this node syncs (see `ChangesQuery::folder`); the asker refuses a page
    /// from another folder.
    pub folder: String,
}

/// Version of the bodies in this module. Sent as the `x-filesync-protocol` header by askers
/// and answerers: a node that speaks another version is refused with a message that says
/// to upgrade, instead of a decoding error.
pub const PROTOCOL: u32 = 2;
pub const PROTOCOL_HEADER: &str = "x-filesync-protocol";

/// Whether two folder ids may exchange pages: equal, or either side has none configured
/// (agents run by hand without a control plane).
pub fn same_folder(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || a == b
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blob {
    pub hash: [u8; 32],
    /// Encoded as a byte string: in postcard the same bytes as a sequence of `u8` (length,
    /// then the bytes), but copied in one go instead of one element at a time.
    #[serde(with = "byte_string")]
    pub data: Vec<u8>,
}

mod byte_string {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// Why a content request could not be served (HTTP 409).
pub const CONTENT_CHANGED: &str = "content changed since it was announced";

#[cfg(test)]
mod blob_encoding_tests {
    use super::Blob;

    /// The byte-string encoding of `Blob::data` is the one a plain `Vec<u8>` had: agents of
    /// both versions read each other's pages.
    #[test]
    fn blob_bytes_encode_like_a_u8_sequence() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Old {
            hash: [u8; 32],
            data: Vec<u8>,
        }
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let new = postcard::to_allocvec(&Blob { hash: [3; 32], data: data.clone() }).unwrap();
        let old = postcard::to_allocvec(&Old { hash: [3; 32], data: data.clone() }).unwrap();
        assert_eq!(new, old);
        let back: Blob = postcard::from_bytes(&old).unwrap();
        assert_eq!(back.data, data);
        let back: Old = postcard::from_bytes(&new).unwrap();
        assert_eq!(back.data, data);
    }
}
