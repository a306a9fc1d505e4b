//! `staticpods.dev/rollback-to`: restoring an earlier revision's template into the set, or
//! refusing with a reason the user sees. Which revision, and the patches, are
//! [`crate::revisions`]' pure decisions.

use kube::api::Patch;
use kube::{Api, ResourceExt};
use staticpodset_api::keys::ANNOTATION_ROLLBACK_TO;
use staticpodset_api::{SetKey, StaticPodSet};

use crate::conditions::{
    RollbackProblem, EVENT_ROLLED_BACK, REASON_ROLLBACK_REJECTED, REASON_ROLLBACK_REVISION_UNUSABLE,
};
use crate::context::Context;
use crate::error::{api_message, is_invalid, is_not_found};
use crate::revision_writes;
use crate::revisions;
use crate::Error;

/// What a `staticpods.dev/rollback-to` annotation led to.
pub enum Rollback {
    /// The template was restored and the annotation removed, in one write.
    Restored,
    /// The annotation changed while it was acted on; its new value gets its own reconcile.
    Superseded,
    /// Refused: the annotation was removed and a Warning Event published.
    Refused(RollbackProblem),
}

/// Restores the template of revision `value` into the set (a JSON patch replacing
/// `spec.template` whole and removing the annotation), or refuses.
pub async fn rollback(
    set: &StaticPodSet,
    key: &SetKey,
    value: &str,
    ctx: &Context,
) -> Result<Rollback, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let history = revision_writes::live_history(ctx, set, key).await?;
    let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), namespace);
    let target = match revisions::rollback_target(value, &history) {
        Ok(target) => target,
        Err(problem) => return refuse_rollback(ctx, set, &api, value, problem).await,
    };
    let (number, hash) = (target.spec.revision, target.spec.hash.clone());
    if !target.spec.template.is_object() {
        let problem = RollbackProblem {
            reason: REASON_ROLLBACK_REVISION_UNUSABLE,
            message: format!("revision {number} ({hash}) holds no pod template to restore"),
        };
        return refuse_rollback(ctx, set, &api, value, problem).await;
    }
    let patch = revisions::rollback_patch(ANNOTATION_ROLLBACK_TO, value, &target.spec.template);
    let set_key = key.clone();
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Rollback {
        set: set_key.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    match api
        .patch(
            name,
            &revision_writes::patch_params(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {
            ctx.metrics
                .revision_writes
                .with_label_values(&["rollback"])
                .inc();
            let asked = set
                .status
                .as_ref()
                .and_then(|s| s.update_revision.as_deref());
            let note = if asked == Some(hash.as_str()) {
                format!("revision {number} ({hash}) is what the set already asks for; removed {ANNOTATION_ROLLBACK_TO}")
            } else {
                format!("restored spec.template from revision {number} ({hash}); it rolls out as the newest revision")
            };
            tracing::info!(%note, "rolled back");
            ctx.publish(set, false, EVENT_ROLLED_BACK, &note).await;
            Ok(Rollback::Restored)
        }
        // The annotation changed under us (its `test` failed), or today's rules reject the old
        // template; refusing tells them apart, since its own `test` fails in the first case.
        Err(e) if is_invalid(&e) => {
            let problem = RollbackProblem {
                reason: REASON_ROLLBACK_REJECTED,
                message: format!(
                    "the API server rejected the template of revision {number} ({hash}): {}",
                    api_message(&e)
                ),
            };
            refuse_rollback(ctx, set, &api, value, problem).await
        }
        Err(source) => Err(Error::Rollback {
            set: set_key,
            source,
        }),
    }
}

async fn refuse_rollback(
    ctx: &Context,
    set: &StaticPodSet,
    api: &Api<StaticPodSet>,
    value: &str,
    problem: RollbackProblem,
) -> Result<Rollback, Error> {
    let name = set.name_any();
    let set_key = SetKey::new(set.namespace().unwrap_or_default(), name.clone());
    let patch: json_patch::Patch = serde_json::from_value(revisions::drop_annotation_patch(
        ANNOTATION_ROLLBACK_TO,
        value,
    ))
    .map_err(|e| Error::Rollback {
        set: set_key.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    match api
        .patch(
            &name,
            &revision_writes::patch_params(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::warn!(reason = problem.reason, message = %problem.message, "rollback refused");
            ctx.publish(set, true, problem.reason, &problem.message)
                .await;
            Ok(Rollback::Refused(problem))
        }
        Err(e) if is_invalid(&e) || is_not_found(&e) => Ok(Rollback::Superseded),
        Err(source) => Err(Error::Rollback {
            set: set_key,
            source,
        }),
    }
}
