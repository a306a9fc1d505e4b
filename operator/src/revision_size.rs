//! How large a set's pod may be. Every distinct pod of a set is stored as one StaticPodRevision,
//! one value in etcd, so a pod whose revision etcd would refuse can never be rolled out; it is
//! refused before anything is written instead (`Valid=False TemplateTooLarge`). Pure.

use std::io;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde::Serialize;
use serde_json::Value;

/// The most bytes the rendered manifest and the template of a set may take together, measured
/// as the API server stores them (JSON, see [`stored_json_len`]).
///
/// A StaticPodRevision holds both, so the bound is on their sum. Why 512 KiB certainly fits:
///
/// - etcd refuses requests over `--max-request-bytes`, 1.5 MiB (1,536 KiB) by default, and a
///   custom resource is stored as one JSON value;
/// - the revision is manifest + template (at most 512 KiB) + the operator's field-manager record
///   in `managedFields`. That record names every map key of both but no value, and lists are
///   recorded whole (both fields are schemaless), so it is at most 1.5 times the JSON it
///   describes (the worst case, one-character keys of one-character values): at most 768 KiB;
/// - metadata, labels, owner reference, `setName`, `hash`, `digest` and `revision`: under 4 KiB.
///
/// 512 + 768 + 4 = 1,284 KiB, which leaves about 250 KiB of etcd's limit for the request's own
/// framing. The API server's 3 MiB limit on request bodies is further away still.
pub const MAX_REVISION_CONTENT_BYTES: usize = 512 * 1024;

/// A set whose revision would not fit into etcd.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the rendered pod ({manifest} bytes of JSON) and spec.template ({template} bytes) come to \
     {total} bytes, over the {limit} bytes a StaticPodRevision can hold (it stores both, and \
     etcd refuses objects over 1.5 MiB); make the template smaller, for example by moving large \
     files into a configMap or secret volume"
)]
pub struct TooLarge {
    /// The rendered manifest, in bytes as stored.
    pub manifest: usize,
    /// The set's `spec.template`, in bytes as stored.
    pub template: usize,
    /// Their sum.
    pub total: usize,
    /// [`MAX_REVISION_CONTENT_BYTES`].
    pub limit: usize,
}

/// Checks that the revision of `manifest`, rendered from `template`, fits into etcd.
pub fn check(manifest: &Value, template: &PodTemplateSpec) -> Result<(), TooLarge> {
    let manifest = stored_json_len(manifest);
    let template = stored_json_len(template);
    let total = manifest.saturating_add(template);
    if total <= MAX_REVISION_CONTENT_BYTES {
        return Ok(());
    }
    Err(TooLarge {
        manifest,
        template,
        total,
        limit: MAX_REVISION_CONTENT_BYTES,
    })
}

/// The length of `value` as JSON the way the API server writes it: compact, and with Go's
/// escaping, which writes `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026` (six bytes for one)
/// and U+2028 and U+2029 as `\u2028`, `\u2029` (six bytes for three). A template full of shell
/// redirections is measurably larger stored than serde writes it.
pub fn stored_json_len<T: Serialize>(value: &T) -> usize {
    let mut counter = StoredLen::default();
    // Writing into the counter cannot fail, and every value measured here was serialized
    // before (to render it), so serialization does not fail either.
    if serde_json::to_writer(&mut counter, value).is_err() {
        return usize::MAX;
    }
    counter.len
}

/// Counts bytes as Go's JSON encoder would write them. Serde escapes none of these characters,
/// and JSON syntax uses none of them, so every occurrence is inside a string.
#[derive(Default)]
struct StoredLen {
    len: usize,
    /// How many bytes of `E2 80 A8` / `E2 80 A9` (U+2028, U+2029) were just seen, so that a
    /// sequence split across writes is still recognised.
    prefix: usize,
}

impl io::Write for StoredLen {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.len += match b {
                b'<' | b'>' | b'&' => 6,
                _ => 1,
            };
            self.prefix = match (self.prefix, b) {
                (_, 0xE2) => 1,
                (1, 0x80) => 2,
                (2, 0xA8 | 0xA9) => {
                    // The three bytes counted become a six-byte escape.
                    self.len += 3;
                    0
                }
                _ => 0,
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::template;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn annotate(t: &mut PodTemplateSpec, key: &str, value: String) {
        t.metadata = Some(ObjectMeta {
            annotations: Some([(key.to_string(), value)].into()),
            ..Default::default()
        });
    }

    #[test]
    fn stored_length_counts_go_escapes() {
        assert_eq!(stored_json_len(&json!({"a": "b"})), 9);
        // "<>&" is three bytes for serde, eighteen for the API server.
        assert_eq!(stored_json_len(&json!("<>&")), 2 + 18);
        // U+2028 is three bytes of UTF-8, six escaped; other non-ASCII is written as is.
        assert_eq!(stored_json_len(&json!("\u{2028}")), 2 + 6);
        assert_eq!(stored_json_len(&json!("\u{2029}é")), 2 + 6 + 2);
        assert_eq!(
            stored_json_len(&json!("\u{20ac}")),
            2 + 3,
            "E2 82 AC is not escaped"
        );
    }

    #[test]
    fn a_template_within_the_bound_passes() {
        let t = template("img:1");
        let manifest = serde_json::to_value(&t).unwrap();
        assert_eq!(check(&manifest, &t), Ok(()));
    }

    #[test]
    fn a_template_over_the_bound_is_refused_with_both_sizes() {
        let mut t = template("img:1");
        let big = "x".repeat(MAX_REVISION_CONTENT_BYTES / 2);
        annotate(&mut t, "big", big);
        let manifest = json!({"metadata": {"annotations": {"big": "y"}}});
        // The template alone is over half the bound, twice it is over the bound.
        let err = check(&serde_json::to_value(&t).unwrap(), &t).unwrap_err();
        assert_eq!(err.total, err.manifest + err.template);
        assert!(err.total > MAX_REVISION_CONTENT_BYTES);
        let message = err.to_string();
        assert!(
            message.contains(&format!("{} bytes", err.total))
                && message.contains(&format!("over the {MAX_REVISION_CONTENT_BYTES} bytes")),
            "{message}"
        );
        // A template dropped from the manifest still counts: the revision stores it.
        assert_eq!(check(&manifest, &t), Ok(()), "half the bound fits");
        let shell = "a>b&&c<d".repeat(MAX_REVISION_CONTENT_BYTES / 16);
        annotate(&mut t, "script", shell);
        // 256 KiB as serde writes it, 896 KiB as the API server stores it.
        assert!(serde_json::to_vec(&t).unwrap().len() < MAX_REVISION_CONTENT_BYTES);
        assert!(check(&manifest, &t).is_err(), "escaped, it is over");
    }
}
