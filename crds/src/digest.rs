//! The content address of a rendered static pod: one implementation for the operator, which
//! computes it when it renders a set, and for the node agent, which recomputes it for every
//! manifest it is about to write or serve.
//!
//! A manifest's [`manifest_digest`] is the SHA-256 (lowercase hex, 64 characters) of its
//! [`canonical_json`] without the `staticpods.dev/revision` annotation; its revision
//! ([`revision_of`]) is the first [`REVISION_LEN`] characters of that. The revision names the
//! StaticPodRevision and shows on mirror pods; it has 40 bits, enough against accidents but not
//! against someone who can create StaticPodRevisions and spends the ~2^40 hashes a second preimage
//! of it costs. So the operator hands every node the full digest, in the NodeStaticPods entry that
//! only the operator writes, and the agent runs a manifest only if its digest is that one.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keys::ANNOTATION_REVISION;

/// Number of hex characters of the digest kept as the revision: 40 bits, so an accidental
/// collision between two revisions of one set is not a practical concern.
pub const REVISION_LEN: usize = 10;

/// Number of hex characters of a full digest (SHA-256).
pub const DIGEST_LEN: usize = 64;

/// The full digest of a manifest: the lowercase hex SHA-256 of its canonical JSON, without its
/// `staticpods.dev/revision` annotation (the revision is a hash of everything else, so it cannot
/// be part of its own input). Key order and whitespace never change it; any value does.
pub fn manifest_digest(manifest: &Value) -> String {
    match without_revision(manifest) {
        Some(stripped) => sha256_hex(&canonical_json(&stripped)),
        None => sha256_hex(&canonical_json(manifest)),
    }
}

/// The revision of a manifest: the first [`REVISION_LEN`] characters of [`manifest_digest`].
pub fn revision_of(manifest: &Value) -> String {
    let mut digest = manifest_digest(manifest);
    digest.truncate(REVISION_LEN);
    digest
}

/// Whether `digest` looks like a full digest: [`DIGEST_LEN`] lowercase hex characters.
pub fn is_full_digest(digest: &str) -> bool {
    digest.len() == DIGEST_LEN
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A copy of `manifest` without the revision annotation, or `None` when it has none (the copy
/// would be the manifest itself).
fn without_revision(manifest: &Value) -> Option<Value> {
    manifest
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .filter(|a| a.contains_key(ANNOTATION_REVISION))?;
    let mut copy = manifest.clone();
    if let Some(annotations) = copy
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(ANNOTATION_REVISION);
    }
    Some(copy)
}

/// Lowercase hex SHA-256 of `text`: the digest of a manifest, and the checksum of the node
/// agent's saved state.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(DIGEST_LEN);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Serializes JSON with object keys sorted at every level and no whitespace.
///
/// We sort explicitly instead of trusting `serde_json::Map` to be a BTreeMap: any crate in the
/// build can turn on serde_json's `preserve_order` feature, which would silently make revisions
/// depend on insertion order.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Scalars have exactly one serde_json rendering.
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": "x"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#
        );
        // Escaping is JSON's, so keys and strings with quotes stay unambiguous.
        assert_eq!(canonical_json(&json!({"k\"": "v\n"})), r#"{"k\"":"v\n"}"#);
        let mut map = serde_json::Map::new();
        map.insert("b".into(), json!(1));
        map.insert("a".into(), json!({"c": "x", "d": [{"y": 2, "z": 1}]}));
        assert_eq!(canonical_json(&Value::Object(map)), canonical_json(&a));
    }

    #[test]
    fn known_values() {
        // Pins the hash function and the canonical form: changing either restarts every static
        // pod in every cluster on upgrade, so it must be a deliberate decision.
        assert_eq!(revision_of(&json!({"b": 1, "a": "x"})), "cdab067e9f");
        assert_eq!(revision_of(&Value::String("ns/vip".into())), "3fd4bc2a74");
        let digest = manifest_digest(&json!({"b": 1, "a": "x"}));
        assert!(digest.starts_with("cdab067e9f"), "{digest}");
        assert!(is_full_digest(&digest), "{digest}");
    }

    fn pod(revision: Option<&str>) -> Value {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "vip", "annotations": {"staticpods.dev/set": "ns/vip"}},
            "spec": {"containers": [{"name": "c", "image": "img:1"}]},
        });
        if let Some(revision) = revision {
            pod["metadata"]["annotations"][ANNOTATION_REVISION] = json!(revision);
        }
        pod
    }

    #[test]
    fn the_revision_annotation_is_not_part_of_the_digest() {
        let plain = manifest_digest(&pod(None));
        assert_eq!(manifest_digest(&pod(Some("0123456789"))), plain);
        assert_eq!(manifest_digest(&pod(Some(&plain[..REVISION_LEN]))), plain);
        assert_eq!(revision_of(&pod(Some("x"))), plain[..REVISION_LEN]);
        // Every other annotation is.
        let mut other = pod(Some("x"));
        other["metadata"]["annotations"]["team"] = json!("net");
        assert_ne!(manifest_digest(&other), plain);
    }

    #[test]
    fn any_change_of_content_changes_the_digest() {
        let base = manifest_digest(&pod(None));
        let mut image = pod(None);
        image["spec"]["containers"][0]["image"] = json!("img:2");
        let mut command = pod(None);
        command["spec"]["containers"][0]["command"] = json!(["sh"]);
        for changed in [image, command, json!({}), json!(null)] {
            assert_ne!(manifest_digest(&changed), base, "{changed}");
        }
    }

    #[test]
    fn full_digests_are_64_lowercase_hex() {
        assert!(is_full_digest(&"a".repeat(64)));
        assert!(!is_full_digest(&"A".repeat(64)));
        assert!(!is_full_digest(&"a".repeat(63)));
        assert!(!is_full_digest("cdab067e9f"));
        assert!(!is_full_digest(&format!("{}g", "a".repeat(63))));
    }
}
