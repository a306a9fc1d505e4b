//! `rollout status`: what a set's status and its nodes' objects say about its rollout, told the
//! way `kubectl rollout status` tells a DaemonSet's. Pure: the watch that feeds it is
//! [`crate::plugin::status_watch`].
//!
//! The set's `Progressing` condition decides, as it does for a Deployment: `RolloutComplete`
//! (or `PartitionRolledOut`, as kubectl counts a StatefulSet's partitioned rollout done) for the
//! current generation ends the wait; `ProgressDeadlineExceeded`, or `Valid=False`, fails it.
//! Anything the operator has not yet observed is waited for, never judged.

use staticpodset_api::{NodeStaticPods, SetKey, StaticPodSet};

use crate::conditions::{
    find_condition, PROGRESSING, REASON_PARTITION_ROLLED_OUT, REASON_PAUSED,
    REASON_PROGRESS_DEADLINE_EXCEEDED, REASON_ROLLOUT_COMPLETE, VALID,
};

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still rolling out: the line to print, and wait on.
    Waiting(String),
    /// Finished: the line to print; the command succeeds.
    Done(String),
    /// Will not finish without a change to the set: the error; the command fails.
    Failed(String),
}

/// The verdict on `set`'s rollout. `nodes` are the cluster's NodeStaticPods when they could be
/// read (they tell how many nodes were handed the new revision); `None` when they could not.
pub fn assess(set: &StaticPodSet, nodes: Option<&[NodeStaticPods]>) -> Verdict {
    let key = key_of(set);
    let generation = set.metadata.generation.unwrap_or(0);
    let status = set.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    if status.is_none() || observed < generation {
        return Verdict::Waiting(format!(
            "Waiting for StaticPodSet {key} spec update to be observed..."
        ));
    }
    // A condition written for an older generation says nothing about this one.
    let current = |type_: &str| {
        find_condition(status, type_)
            .filter(|c| c.observed_generation.is_none_or(|g| g >= generation))
    };
    if let Some(valid) = current(VALID).filter(|c| c.status == "False") {
        return Verdict::Failed(format!(
            "StaticPodSet {key} is not valid ({}): {}",
            valid.reason, valid.message
        ));
    }
    let progressing = current(PROGRESSING);
    let reason = progressing.map(|c| c.reason.as_str()).unwrap_or("");
    let message = progressing.map(|c| c.message.as_str()).unwrap_or("");
    let desired = status.map(|s| s.desired_number_scheduled).unwrap_or(0);
    let updated = status.map(|s| s.updated_number_scheduled).unwrap_or(0);
    match reason {
        REASON_PROGRESS_DEADLINE_EXCEEDED => Verdict::Failed(format!(
            "StaticPodSet {key} exceeded its progress deadline: {message}"
        )),
        REASON_ROLLOUT_COMPLETE => {
            Verdict::Done(format!("StaticPodSet {key} successfully rolled out"))
        }
        REASON_PARTITION_ROLLED_OUT => Verdict::Done(format!(
            "StaticPodSet {key} partitioned roll out complete: {updated} of {desired} nodes \
             updated, the partition holds back the others"
        )),
        REASON_PAUSED => Verdict::Waiting(format!(
            "Waiting for StaticPodSet {key} rollout to finish: the rollout is paused, \
             {updated} of {desired} nodes updated..."
        )),
        _ => {
            let update = status.and_then(|s| s.update_revision.as_deref());
            let handed = nodes.zip(update).map(|(nodes, update)| {
                nodes
                    .iter()
                    .flat_map(|n| &n.spec.pods)
                    .filter(|p| p.set_namespace == key.namespace && p.set_name == key.name)
                    .filter(|p| p.revision == update)
                    .count()
            });
            match handed {
                Some(handed) if (handed as i64) < i64::from(desired) => Verdict::Waiting(format!(
                    "Waiting for StaticPodSet {key} rollout to finish: {handed} out of \
                         {desired} new nodes have been updated..."
                )),
                _ => Verdict::Waiting(format!(
                    "Waiting for StaticPodSet {key} rollout to finish: {updated} of {desired} \
                     updated nodes are available..."
                )),
            }
        }
    }
}

/// One line per node of the set that is not yet available at the update revision, saying where
/// it stands, by node name. Empty when nothing is known of the update revision.
pub fn node_lines(set: &StaticPodSet, nodes: &[NodeStaticPods]) -> Vec<String> {
    let key = key_of(set);
    let Some(update) = set
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref())
    else {
        return Vec::new();
    };
    let mut lines: Vec<(String, String)> = nodes
        .iter()
        .filter_map(|object| {
            let node = object.metadata.name.clone().unwrap_or_default();
            let entry = object
                .spec
                .pods
                .iter()
                .find(|p| p.set_namespace == key.namespace && p.set_name == key.name)?;
            let report = object.status.as_ref().and_then(|s| {
                s.pods
                    .iter()
                    .find(|p| p.set_namespace == key.namespace && p.set_name == key.name)
            });
            let mirror = report.and_then(|r| r.mirror_pod.as_ref());
            let running = mirror.and_then(|m| m.revision.as_deref());
            let ready = mirror.is_some_and(|m| m.ready);
            let runs = running.map_or("no pod yet".to_string(), |r| format!("runs {r}"));
            let line = match &entry.last_failure {
                Some(f) if f.revision == update => {
                    format!(
                        "node {node}: failed revision {update} ({}), {runs}",
                        f.reason
                    )
                }
                _ if entry.revision != update => {
                    format!("node {node}: waiting for revision {update}, {runs}")
                }
                _ if running != Some(update) => {
                    format!("node {node}: updating to revision {update}, {runs}")
                }
                _ if !ready => format!("node {node}: revision {update} is not Ready yet"),
                _ => return None,
            };
            let note = report
                .and_then(|r| r.message.as_deref())
                .filter(|m| !m.is_empty());
            let line = match note {
                Some(note) => format!("{line}: {note}"),
                None => line,
            };
            Some((node, line))
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, line)| line).collect()
}

/// The lines of `current` not printed last time (`previous`), in order: a watch prints each
/// state once, as kubectl prints a status line only when it changes.
pub fn fresh_lines<'a>(previous: &[String], current: &'a [String]) -> Vec<&'a String> {
    current.iter().filter(|l| !previous.contains(l)).collect()
}

fn key_of(set: &StaticPodSet) -> SetKey {
    SetKey::new(
        set.metadata.namespace.clone().unwrap_or_default(),
        set.metadata.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;
