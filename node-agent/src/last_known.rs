//! The node's last-known state: what the agent needs to keep, heal and serve its node's static
//! pods with no API server at all. Pure: [`encode`] and [`decode`] turn it into the bytes of the
//! state file and back; [`crate::state_file`] does the I/O.
//!
//! A never-restarted agent has this state in memory while the API server is down. An agent that
//! restarts then (the kubelet restarts crashed containers, a node reboots) would otherwise know
//! nothing until the API server answers: it could not put back a deleted manifest, and a kubelet
//! polling its static pod URL would get no pods at all. So after every sync that the API server's
//! state drove, the agent saves its NodeStaticPods spec, the manifests of the revisions the entries
//! name and the node's manifest source; on start it loads them and acts on them until the API
//! server answers, whose state then wins.
//!
//! The file is trusted no more than the API server's objects: the whole body carries a SHA-256
//! checksum (a torn or bit-flipped file is refused whole), and every manifest is checked again
//! against its entry's content digest before it is written or served, exactly as a manifest read
//! from the API server is ([`crate::revisions`]). A state that fails either check is reported and
//! treated as no state: the agent then leaves the directory as it is, it never removes anything
//! because a state is missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use staticpodset_api::digest::{manifest_digest, sha256_hex};
use staticpodset_api::{
    AssignedPod, ManifestSource, NodeStaticPods, NodeStaticPodsSpec, SetKey, StaticPodRevision,
    StaticPodRevisionSpec,
};

/// The format this agent writes and reads. A file of another format is refused (as no state).
pub const FORMAT: u32 = 1;

/// A StaticPodRevision by `(namespace, name)`, as the revision cache keys it.
pub type RevisionKey = (String, String);

/// The first line of a state file, before the checksum.
const MAGIC: &str = "staticpodset-agent-state";

/// Everything the agent acts on for its node, as saved after a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastKnown {
    /// [`FORMAT`].
    pub format: u32,
    /// The node the state belongs to: a file of another node's is refused.
    pub node: String,
    /// When it was saved, in seconds since the epoch.
    pub saved_at: u64,
    /// `metadata.generation` of the NodeStaticPods it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// How the node's pods reach the kubelet.
    pub mode: ManifestSource,
    /// The node's entries, as the operator wrote them.
    pub pods: Vec<AssignedPod>,
    /// The manifests of the revisions the entries name (of those the agent had).
    pub revisions: Vec<SavedRevision>,
    /// Per set, the revision that last ran Ready on the node: what node-local fallback puts back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_ready: Vec<ReadyRevision>,
    /// Node-local fallbacks in force: the entry's revision was given up for an earlier one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<Fallback>,
}

/// One revision's manifest as the agent verified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedRevision {
    /// Namespace of the StaticPodRevision (the set's).
    pub namespace: String,
    /// Name of the StaticPodRevision.
    pub name: String,
    /// The set it belongs to.
    pub set_name: String,
    /// Its revision (hash).
    pub hash: String,
    /// The content digest of `manifest`, as the agent computed it.
    pub digest: String,
    /// The rendered manifest.
    pub manifest: Value,
}

impl SavedRevision {
    /// The key the revision cache keeps it under.
    pub fn key(&self) -> RevisionKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// The revision as the API server would return it: what the revision cache verifies against
    /// the entries, as it does every read.
    pub fn to_object(&self) -> StaticPodRevision {
        StaticPodRevision {
            metadata: ObjectMeta {
                namespace: Some(self.namespace.clone()),
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: StaticPodRevisionSpec {
                set_name: self.set_name.clone(),
                // Neither is read by the agent: the number is the operator's, and the template
                // only serves a rollback.
                revision: 0,
                template: Value::Null,
                hash: self.hash.clone(),
                digest: Some(self.digest.clone()),
                manifest: self.manifest.clone(),
            },
        }
    }
}

/// The revision that last ran Ready on the node for one set, with its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyRevision {
    /// Namespace of the set.
    pub set_namespace: String,
    /// Name of the set.
    pub set_name: String,
    /// The revision (hash).
    pub revision: String,
    /// The content digest of `manifest`.
    pub digest: String,
    /// The manifest.
    pub manifest: Value,
}

impl ReadyRevision {
    /// The set it belongs to.
    pub fn set(&self) -> SetKey {
        SetKey::new(self.set_namespace.clone(), self.set_name.clone())
    }
}

/// A node-local fallback the agent made: revision `from` (what the entry asks for) gave way to
/// `to` (what last ran Ready).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Namespace of the set.
    pub set_namespace: String,
    /// Name of the set.
    pub set_name: String,
    /// The revision given up.
    pub from: String,
    /// The revision put back.
    pub to: String,
    /// When, in seconds since the epoch.
    pub at: u64,
    /// Why, for a human.
    pub message: String,
}

impl Fallback {
    /// The set it belongs to.
    pub fn set(&self) -> SetKey {
        SetKey::new(self.set_namespace.clone(), self.set_name.clone())
    }
}

/// Why a state file is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// It does not begin with the state header.
    #[error("not a state file of the node agent (no {MAGIC} header)")]
    NoHeader,
    /// The body is not what the checksum says: torn or altered.
    #[error("checksum mismatch: the header says {expected}, the content hashes to {actual}")]
    Checksum {
        /// The checksum in the header.
        expected: String,
        /// The checksum of the body.
        actual: String,
    },
    /// The body is not a state.
    #[error("cannot parse the state: {0}")]
    Parse(String),
    /// Written by an agent of another format.
    #[error("format {0}, but this agent reads format {FORMAT}")]
    Format(u32),
    /// Another node's state.
    #[error("it is the state of node {0}")]
    OtherNode(String),
}

/// Seconds since the epoch of `t` (0 before it).
pub fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The wall-clock time of `seconds` since the epoch.
pub fn from_epoch_seconds(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

impl LastKnown {
    /// The state of node `node` from its NodeStaticPods `object`, its manifest source `mode`, the
    /// verified manifests `revisions` of the entries, and fallback's memory.
    pub fn capture(
        node: &str,
        object: &NodeStaticPods,
        mode: ManifestSource,
        revisions: Vec<SavedRevision>,
        last_ready: Vec<ReadyRevision>,
        fallbacks: Vec<Fallback>,
        now: SystemTime,
    ) -> Self {
        Self {
            format: FORMAT,
            node: node.to_owned(),
            saved_at: epoch_seconds(now),
            generation: object.metadata.generation,
            mode,
            pods: object.spec.pods.clone(),
            revisions,
            last_ready,
            fallbacks,
        }
    }

    /// The NodeStaticPods the state was taken from, as far as the agent acts on it.
    pub fn to_object(&self) -> NodeStaticPods {
        let mut object = NodeStaticPods::new(
            &self.node,
            NodeStaticPodsSpec {
                pods: self.pods.clone(),
            },
        );
        object.metadata.generation = self.generation;
        object
    }

    /// When it was saved, as an RFC 3339 time, for logs.
    pub fn saved_at_text(&self) -> String {
        humantime::format_rfc3339_seconds(from_epoch_seconds(self.saved_at)).to_string()
    }

    /// Whether `other` holds the same state, whenever it was saved: only a change is written.
    pub fn same_as(&self, other: &LastKnown) -> bool {
        let untimed = |s: &LastKnown| LastKnown {
            saved_at: 0,
            ..s.clone()
        };
        untimed(self) == untimed(other)
    }

    /// The saved revisions whose manifest no longer hashes to the digest recorded with it: they
    /// are left out of what the agent acts on, and their entries wait for the API server.
    pub fn tampered_revisions(&self) -> Vec<RevisionKey> {
        self.revisions
            .iter()
            .filter(|r| manifest_digest(&r.manifest) != r.digest)
            .map(SavedRevision::key)
            .collect()
    }

    /// Fallback's memory by set, dropping revisions whose manifest does not hash to their digest.
    pub fn verified_last_ready(&self) -> BTreeMap<SetKey, Arc<ReadyRevision>> {
        self.last_ready
            .iter()
            .filter(|r| manifest_digest(&r.manifest) == r.digest)
            .map(|r| (r.set(), Arc::new(r.clone())))
            .collect()
    }
}

/// The bytes of the state file: a header line with the body's checksum, then the body (JSON).
pub fn encode(state: &LastKnown) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_string(state)?;
    Ok(format!("{MAGIC} sha256:{}\n{body}", sha256_hex(&body)).into_bytes())
}

/// The state in `bytes`, if it is a whole, unaltered state of node `node` in this agent's format.
pub fn decode(bytes: &[u8], node: &str) -> Result<LastKnown, StateError> {
    let text = std::str::from_utf8(bytes).map_err(|e| StateError::Parse(e.to_string()))?;
    let (header, body) = text.split_once('\n').ok_or(StateError::NoHeader)?;
    let expected = header
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.trim().strip_prefix("sha256:"))
        .ok_or(StateError::NoHeader)?;
    let actual = sha256_hex(body);
    if actual != expected {
        return Err(StateError::Checksum {
            expected: expected.to_owned(),
            actual,
        });
    }
    let state: LastKnown =
        serde_json::from_str(body).map_err(|e| StateError::Parse(e.to_string()))?;
    if state.format != FORMAT {
        return Err(StateError::Format(state.format));
    }
    if state.node != node {
        return Err(StateError::OtherNode(state.node));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use staticpodset_api::keys::ANNOTATION_REVISION;

    fn manifest(image: &str) -> (Value, String) {
        let mut m = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "ns", "annotations": {}},
            "spec": {"containers": [{"name": "main", "image": image}]}});
        let digest = manifest_digest(&m);
        m["metadata"]["annotations"][ANNOTATION_REVISION] = json!(digest[..10].to_string());
        (m, digest)
    }

    fn state() -> LastKnown {
        let (m, digest) = manifest("busybox:1");
        let hash = digest[..10].to_string();
        let entry = AssignedPod {
            set_namespace: "ns".into(),
            set_name: "web".into(),
            revision: hash.clone(),
            revision_name: format!("web-{hash}"),
            digest: Some(digest.clone()),
            file_name: "staticpodset_ns_web.yaml".into(),
            ..AssignedPod::default()
        };
        let mut object = NodeStaticPods::new("node-a", NodeStaticPodsSpec { pods: vec![entry] });
        object.metadata.generation = Some(7);
        LastKnown::capture(
            "node-a",
            &object,
            ManifestSource::Url,
            vec![SavedRevision {
                namespace: "ns".into(),
                name: format!("web-{hash}"),
                set_name: "web".into(),
                hash,
                digest,
                manifest: m,
            }],
            Vec::new(),
            Vec::new(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    #[test]
    fn a_saved_state_loads_as_it_was() {
        let s = state();
        let bytes = encode(&s).expect("encode");
        assert_eq!(decode(&bytes, "node-a"), Ok(s.clone()));
        let object = s.to_object();
        assert_eq!(object.metadata.name.as_deref(), Some("node-a"));
        assert_eq!(object.metadata.generation, Some(7));
        assert_eq!(object.spec.pods, s.pods);
        assert!(s.tampered_revisions().is_empty());
    }

    #[test]
    fn a_torn_or_altered_file_is_refused_whole() {
        let bytes = encode(&state()).expect("encode");
        let torn = &bytes[..bytes.len() - 20];
        assert!(matches!(
            decode(torn, "node-a"),
            Err(StateError::Checksum { .. })
        ));
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        let altered = text.replace("busybox:1", "busybox:2");
        assert!(matches!(
            decode(altered.as_bytes(), "node-a"),
            Err(StateError::Checksum { .. })
        ));
        assert_eq!(decode(b"{}", "node-a"), Err(StateError::NoHeader));
        assert_eq!(decode(b"", "node-a"), Err(StateError::NoHeader));
        assert!(matches!(
            decode(&[0xff, 0xfe, b'\n'], "node-a"),
            Err(StateError::Parse(_))
        ));
    }

    #[test]
    fn another_nodes_or_formats_state_is_refused() {
        let bytes = encode(&state()).expect("encode");
        assert_eq!(
            decode(&bytes, "node-b"),
            Err(StateError::OtherNode("node-a".into()))
        );
        let mut future = state();
        future.format = 2;
        let bytes = encode(&future).expect("encode");
        assert_eq!(decode(&bytes, "node-a"), Err(StateError::Format(2)));
    }

    #[test]
    fn a_manifest_that_is_not_its_digest_is_found() {
        // A consistent file whose manifest was swapped and checksummed again: the checksum holds,
        // the content digest does not.
        let mut s = state();
        s.revisions[0].manifest["spec"]["containers"][0]["image"] = json!("evil:1");
        let key = s.revisions[0].key();
        let loaded = decode(&encode(&s).expect("encode"), "node-a").expect("decodes");
        assert_eq!(loaded.tampered_revisions(), vec![key]);
    }

    #[test]
    fn only_a_change_is_worth_saving() {
        let a = state();
        let mut later = a.clone();
        later.saved_at += 30;
        assert!(a.same_as(&later));
        later.mode = ManifestSource::File;
        assert!(!a.same_as(&later));
    }
}
