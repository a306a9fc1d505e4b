//! The kubelet's URL source as the loop sees it: which mode this node is in (the agent's default,
//! or its Node's label), and the answers it hands the endpoint ([`crate::url_source`]). What is
//! served is decided in [`crate::served_pods`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use staticpodset_api::keys::MANIFEST_SOURCE;
use staticpodset_api::ManifestSource;
use tracing::{debug, warn};

use crate::served_pods::{self, UrlDecision};
use crate::url_source::{UrlResponse, UrlSource};

/// The Node's `staticpods.dev/manifest-source` label, if it has one.
pub fn source_label(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(MANIFEST_SOURCE)
        .map(String::as_str)
}

/// The node's mode: `File` without a URL source, else the Node's `label` (when it has a valid
/// one) over the agent's default. A warning about the label is logged once, when it changes;
/// `last_warning` is the one logged last.
pub fn node_mode(
    url: Option<&UrlSource>,
    label: Option<&str>,
    last_warning: &mut Option<String>,
) -> ManifestSource {
    let Some(url) = url else {
        return ManifestSource::File;
    };
    let mode = served_pods::effective_mode(url.default_mode, label, true);
    if mode.warning != *last_warning {
        if let Some(w) = &mode.warning {
            warn!(warning = %w, "manifest source");
        }
        *last_warning = mode.warning;
    }
    mode.source
}

/// The endpoint's answer for `decision`: the served pods, or an error (which keeps the kubelet's
/// pods) while the list would be incomplete or larger than the kubelet reads.
pub fn answer(decision: &UrlDecision) -> UrlResponse {
    if let Some(why) = &decision.incomplete {
        return UrlResponse::Unavailable(why.clone());
    }
    match served_pods::pod_list_body(&decision.served) {
        Ok(body) => UrlResponse::Pods(Arc::new(body)),
        Err(why) => UrlResponse::Unavailable(why),
    }
}

/// Hands the endpoint a new answer, logging when it changes.
pub fn publish(url: &UrlSource, response: UrlResponse) {
    let changed = url.response.send_if_modified(|current| {
        let changed = *current != response;
        if changed {
            *current = response.clone();
        }
        changed
    });
    if changed {
        match &response {
            UrlResponse::Unavailable(why) => {
                warn!(reason = %why, "the static pod URL answers an error; the kubelet keeps its pods")
            }
            UrlResponse::Pods(body) => debug!(bytes = body.len(), "static pod URL list changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::served_pods::{Served, ServedPods};
    use staticpodset_api::SetKey;
    use std::time::UNIX_EPOCH;
    use tokio::sync::watch;

    fn url(default_mode: ManifestSource) -> (UrlSource, watch::Receiver<UrlResponse>) {
        let (response, rx) = watch::channel(UrlResponse::Unavailable("starting".into()));
        let source = UrlSource {
            response,
            default_mode,
            node_label: true,
        };
        (source, rx)
    }

    fn decision(served: ServedPods, incomplete: Option<&str>) -> UrlDecision {
        UrlDecision {
            served,
            outcomes: Vec::new(),
            incomplete: incomplete.map(str::to_owned),
        }
    }

    #[test]
    fn without_a_url_source_the_mode_is_file_whatever_the_label() {
        let mut warned = None;
        assert_eq!(
            node_mode(None, Some("url"), &mut warned),
            ManifestSource::File
        );
        assert_eq!(warned, None);
    }

    #[test]
    fn the_label_chooses_and_a_bad_one_is_remembered_once() {
        let (source, _rx) = url(ManifestSource::File);
        let mut warned = None;
        assert_eq!(
            node_mode(Some(&source), Some("url"), &mut warned),
            ManifestSource::Url
        );
        assert_eq!(warned, None);
        assert_eq!(
            node_mode(Some(&source), Some("URL"), &mut warned),
            ManifestSource::File
        );
        let first = warned.clone().expect("a warning");
        assert!(first.contains("not file, url or both"), "{first}");
        node_mode(Some(&source), Some("URL"), &mut warned);
        assert_eq!(warned.as_deref(), Some(first.as_str()));
        node_mode(Some(&source), None, &mut warned);
        assert_eq!(warned, None);
    }

    #[test]
    fn an_incomplete_list_is_an_error_and_a_complete_one_the_pods() {
        let served = ServedPods::from([(
            SetKey::new("ns", "a"),
            Served {
                revision: "r1".into(),
                manifest: Arc::new(serde_json::json!({"kind": "Pod"})),
                since: UNIX_EPOCH,
            },
        )]);
        assert_eq!(
            answer(&decision(served.clone(), Some("set ns/b unknown"))),
            UrlResponse::Unavailable("set ns/b unknown".into())
        );
        let UrlResponse::Pods(body) = answer(&decision(served.clone(), None)) else {
            panic!("pods expected")
        };
        assert_eq!(
            body.as_slice(),
            served_pods::pod_list_body(&served).expect("body")
        );
    }

    #[test]
    fn publishing_the_same_answer_changes_nothing() {
        let (source, mut rx) = url(ManifestSource::Url);
        rx.mark_unchanged();
        publish(&source, UrlResponse::Unavailable("starting".into()));
        assert!(!rx.has_changed().expect("sender alive"));
        publish(&source, UrlResponse::Pods(Arc::new(b"{}".to_vec())));
        assert!(rx.has_changed().expect("sender alive"));
    }
}
