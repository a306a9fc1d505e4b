//! The admission dry run of a set's mirror pod against the API server (see
//! [`crate::admission`] for what is sent, when, and what the answer means).

use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::Api;
use staticpodset_api::SetKey;

use crate::admission::{self, labels_fingerprint, Verdict, VerdictKey};
use crate::context::Context;
use crate::node_writes::OPERATOR_MANAGER;
use crate::render::Rendered;
use crate::Error;

/// The verdict of the cluster's admission chain on the mirror pod `rendered` would have on
/// `node`: from the cache while the revision and the namespace's labels are unchanged, else
/// from a server-side dry-run create (nothing is stored).
pub async fn verdict(
    ctx: &Context,
    key: &SetKey,
    rendered: &Rendered,
    node: &Node,
) -> Result<Verdict, Error> {
    let namespace_labels = ctx
        .namespaces
        .get(&kube::runtime::reflector::ObjectRef::new(&key.namespace))
        .and_then(|ns| ns.metadata.labels.clone())
        .unwrap_or_default();
    let cache_key = VerdictKey {
        set: key.clone(),
        revision: rendered.revision.clone(),
        namespace_labels: labels_fingerprint(&namespace_labels),
    };
    let now = Instant::now();
    if let Some(verdict) = ctx.admission.get(&cache_key, now) {
        ctx.metrics
            .admission_checks
            .with_label_values(&["cached"])
            .inc();
        return Ok(verdict);
    }
    let pod: Pod = serde_json::from_value(admission::mirror_pod(
        &rendered.manifest,
        &rendered.revision,
        node,
    ))
    .map_err(|e| Error::AdmissionCheck {
        set: key.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    let params = PostParams {
        dry_run: true,
        field_manager: Some(OPERATOR_MANAGER.into()),
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let asked = Instant::now();
    let verdict = match api.create(&params, &pod).await {
        Ok(_) => Verdict::Admitted,
        Err(error) => match admission::classify(&error) {
            Some(verdict) => verdict,
            None => {
                ctx.metrics
                    .admission_checks
                    .with_label_values(&["error"])
                    .inc();
                return Err(Error::AdmissionCheck {
                    set: key.clone(),
                    source: error,
                });
            }
        },
    };
    let result = match verdict {
        Verdict::Admitted => "admitted",
        Verdict::Denied(_) => "denied",
    };
    ctx.metrics
        .admission_checks
        .with_label_values(&[result])
        .inc();
    tracing::info!(
        revision = %rendered.revision,
        node = node.metadata.name.as_deref().unwrap_or_default(),
        result,
        elapsed_ms = asked.elapsed().as_millis() as u64,
        "admission dry run of the mirror pod"
    );
    ctx.admission.put(cache_key, verdict.clone(), now);
    Ok(verdict)
}
