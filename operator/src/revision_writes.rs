//! The set's StaticPodRevisions and configuration bundles on the API server: making sure the
//! rendered revision exists and is the newest, and pruning history beyond the limit. The
//! decisions are [`crate::revisions`]'; this module only performs them.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;
use staticpodset_api::keys::LABEL_SET_NAME;
use staticpodset_api::{SetKey, StaticPodRevision, StaticPodSet};

use crate::config;
use crate::context::Context;
use crate::error::{is_already_exists, is_conflict, is_not_found};
use crate::node_writes::OPERATOR_MANAGER;
use crate::render::Rendered;
use crate::revisions::{self, Ensure};
use crate::Error;

pub(crate) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_MANAGER.into()),
        ..Default::default()
    }
}

/// The set's revisions as the API server has them now (not as the cache has them): for the rare
/// decisions that write, where a cache lagging behind our own last write would mis-number.
pub(crate) async fn live_history(
    ctx: &Context,
    set: &StaticPodSet,
    key: &SetKey,
) -> Result<Vec<Arc<StaticPodRevision>>, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{LABEL_SET_NAME}={name}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::RevisionWrite {
            op: "listing",
            set: key.clone(),
            namespace: namespace.to_string(),
            revision: selector.clone(),
            source,
        })?;
    let all: Vec<Arc<StaticPodRevision>> = list.items.into_iter().map(Arc::new).collect();
    Ok(revisions::history_of(
        &all,
        namespace,
        name,
        set.metadata.uid.as_deref(),
    ))
}

/// Makes sure the StaticPodRevision of `rendered` exists and is the set's newest; returns its
/// number. Costs no API call when `cached` (the set's history as the cache has it) shows it is
/// already.
pub async fn ensure(
    ctx: &Context,
    set: &StaticPodSet,
    key: &SetKey,
    cached: &[Arc<StaticPodRevision>],
    rendered: &Rendered,
) -> Result<i64, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let set_key = key.clone();
    let history_error = |problem| Error::History {
        set: set_key.clone(),
        problem,
    };
    if let Ensure::Current { number, .. } =
        revisions::ensure(cached, name, rendered).map_err(history_error)?
    {
        return Ok(number);
    }
    let history = live_history(ctx, set, key).await?;
    let decision = revisions::ensure(&history, name, rendered).map_err(history_error)?;
    let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), namespace);
    let write_error = |op: &'static str, revision: &str| {
        let (set, namespace, revision) = (key.clone(), namespace.to_string(), revision.to_string());
        move |source| Error::RevisionWrite {
            op,
            set,
            namespace,
            revision,
            source,
        }
    };
    match &decision {
        Ensure::Current { .. } => {}
        Ensure::Create {
            name: object,
            number,
        } => {
            let revision = revisions::revision_object(set, rendered, *number)
                .ok_or_else(|| history_error(revisions::HistoryProblem::NoUid))?;
            let params = PostParams {
                field_manager: Some(OPERATOR_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&params, &revision).await {
                Ok(_) => {}
                // Not in the set's history, yet there: another set's of the same name.
                Err(e) if is_already_exists(&e) => {
                    return Err(Error::RevisionTaken {
                        set: set_key.clone(),
                        revision: object.clone(),
                    })
                }
                Err(e) => return Err(write_error("creating", object)(e)),
            }
            ctx.metrics
                .revision_writes
                .with_label_values(&["create"])
                .inc();
            tracing::info!(revision = number, hash = %rendered.revision, "created revision");
        }
        Ensure::Renumber {
            name: object,
            from,
            to,
            adopt,
        } => {
            let Some(existing) = history.iter().find(|r| r.name_any() == *object) else {
                // `ensure` renumbers only what the history holds.
                return Err(history_error(revisions::HistoryProblem::NotInHistory(
                    object.clone(),
                )));
            };
            let mut metadata = json!({ "resourceVersion": existing.resource_version() });
            if *adopt {
                let mut owners = existing.owner_references().to_vec();
                owners.extend(revisions::owner_reference(set));
                metadata["ownerReferences"] = json!(owners);
            }
            let patch = json!({ "metadata": metadata, "spec": { "revision": to } });
            api.patch(object, &patch_params(), &Patch::Merge(patch))
                .await
                .map_err(write_error("renumbering", object))?;
            ctx.metrics
                .revision_writes
                .with_label_values(&["renumber"])
                .inc();
            tracing::info!(from, to, adopt, hash = %rendered.revision, "reused an earlier revision as the newest");
        }
    }
    Ok(decision.number())
}

/// Deletes the revisions [`crate::decide`] found beyond `spec.revisionHistoryLimit`; returns
/// the names of those deleted. Failures are logged, not returned: the next reconcile tries
/// again, and a revision kept a little longer harms nothing.
pub async fn prune_history(
    ctx: &Context,
    key: &SetKey,
    prune: &[StaticPodRevision],
) -> BTreeSet<String> {
    let mut deleted = BTreeSet::new();
    let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), &key.namespace);
    for old in prune {
        // Only the very object we looked at: not one renumbered (reused) since.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: old.uid(),
                resource_version: old.resource_version(),
            }),
            ..Default::default()
        };
        let object = old.name_any();
        match api.delete(&object, &params).await {
            Ok(_) => {
                ctx.metrics
                    .revision_writes
                    .with_label_values(&["delete"])
                    .inc();
                tracing::info!(revision = old.spec.revision, hash = %old.spec.hash, "deleted an old revision beyond the history limit");
                deleted.insert(object.clone());
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(error) => {
                tracing::warn!(%error, revision = %object, "deleting an old revision; retried on the next reconcile")
            }
        }
    }
    deleted
}

/// Deletes the configuration bundles of a set that no revision of its history names any more
/// (`deleted`: revision objects deleted just now, which the cache may still hold). Only for sets
/// that have or had configuration, so other sets cost no API call. Failures are logged: a bundle
/// kept a little longer harms nothing.
pub async fn prune_config(
    ctx: &Context,
    key: &SetKey,
    history: &[Arc<StaticPodRevision>],
    current: Option<&config::Resolved>,
    deleted: &BTreeSet<String>,
) {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let had_config = !revisions::config_hashes(history.iter().map(|r| &**r)).is_empty();
    let mut keep = revisions::config_hashes(
        history
            .iter()
            .filter(|r| !deleted.contains(&r.name_any()))
            .map(|r| &**r),
    );
    if current.is_none() && !had_config {
        return;
    }
    keep.extend(current.map(|c| c.hash.clone()));
    match config::prune_bundles(
        &ctx.client,
        &ctx.settings.config_namespace,
        namespace,
        name,
        &keep,
    )
    .await
    {
        Ok(gone) if !gone.is_empty() => {
            ctx.metrics
                .bundle_writes
                .with_label_values(&["delete"])
                .inc_by(gone.len() as u64);
            tracing::info!(bundles = ?gone, "deleted configuration bundles no revision names");
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "pruning configuration bundles; retried on the next reconcile");
        }
    }
}
