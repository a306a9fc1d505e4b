//! One pass over the manifest directory: scan, plan, execute. Blocking file I/O only; the API side
//! (what is assigned, where the status goes) and holding writes back for a pre-pull belong to the
//! caller.

use std::time::SystemTime;

use staticpodset_api::keys::parse_manifest_file_name;
use staticpodset_api::{ManifestPhase, PodReport};
use tracing::{info, info_span, warn};

use crate::manifest_dir::{Action, DirError, ManifestDir, PodKey};
use crate::plan::{owner, plan, Assignment, Plan, SetKey};
use crate::report::{outcomes, unreadable_dir, SetOutcome};

/// What one pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct DirSync {
    /// One outcome per assigned set.
    pub sets: Vec<SetOutcome>,
    /// Reports for owned files that could not be removed.
    pub removals: Vec<PodReport>,
    /// Manifests written.
    pub written: u64,
    /// Manifests removed.
    pub removed: u64,
    /// Whether anything failed (reading the directory, a write, a removal).
    pub failed: bool,
    /// The pods defined by files the agent does not own, with their file names (for the URL
    /// source's conflict check).
    pub foreign_pods: Vec<(String, PodKey)>,
}

impl DirSync {
    /// Assigned sets in conflict.
    pub fn conflicts(&self) -> usize {
        self.sets
            .iter()
            .filter(|s| s.phase == ManifestPhase::Conflict)
            .count()
    }
}

/// Brings the directory to the `assigned` state. Call it only with API data in hand: the caller's
/// knowing what is assigned is what allows removals.
pub fn sync_directory(dir: &ManifestDir, assigned: &[Assignment], now: SystemTime) -> DirSync {
    match scan_and_plan(dir, assigned) {
        Ok(plan) => execute_plan(dir, &plan, now),
        Err(unreadable) => unreadable,
    }
}

/// The first half of a sync: scan the directory and decide. `Err` holds the outcome when the
/// directory cannot be read (nothing is written or removed then). Between the halves the caller
/// may hold back writes (see [`crate::prepull`]); each action re-checks the file it was planned
/// for, so a change in between is never clobbered.
pub fn scan_and_plan(dir: &ManifestDir, assigned: &[Assignment]) -> Result<Plan, DirSync> {
    let scan = dir.scan().map_err(|e| {
        warn!(error = %e, "cannot read the manifest directory; nothing written or removed");
        let sets: Vec<SetKey> = assigned.iter().map(|a| SetKey::of(&a.entry)).collect();
        DirSync {
            sets: unreadable_dir(&sets, &e),
            removals: Vec::new(),
            written: 0,
            removed: 0,
            failed: true,
            foreign_pods: Vec::new(),
        }
    })?;
    let mut plan = plan(Some(assigned), &scan);
    plan.foreign_pods = scan
        .files
        .iter()
        .filter(|f| owner(f).is_none())
        .filter_map(|f| Some((f.name.clone(), f.info.pod.clone()?)))
        .collect();
    Ok(plan)
}

/// The second half of a sync: carry out `plan`'s actions and say what came of each set.
pub fn execute_plan(dir: &ManifestDir, plan: &Plan, now: SystemTime) -> DirSync {
    let results = dir.execute(&plan.actions);
    let mut sync = DirSync {
        sets: Vec::new(),
        removals: Vec::new(),
        written: 0,
        removed: 0,
        failed: false,
        foreign_pods: plan.foreign_pods.clone(),
    };
    for (action, result) in plan.actions.iter().zip(&results) {
        let set = parse_manifest_file_name(action.file_name())
            .map(|(ns, name)| format!("{ns}/{name}"))
            .unwrap_or_default();
        let _span = info_span!("manifest", set = %set, file = action.file_name()).entered();
        match (action, result) {
            (Action::Write { expected, .. }, Ok(())) => {
                sync.written += 1;
                if expected.is_some() {
                    info!("manifest rewritten");
                } else {
                    info!("manifest written");
                }
            }
            (Action::Remove { .. }, Ok(())) => {
                sync.removed += 1;
                info!("manifest removed");
            }
            // A concurrent edit: not a failure, the change's own inotify event brings the next sync.
            (_, Err(e @ DirError::Changed { .. })) => {
                info!(reason = %e, "manifest action deferred")
            }
            (_, Err(e)) => {
                sync.failed = true;
                warn!(error = %e, "manifest action failed");
            }
        }
    }
    (sync.sets, sync.removals) = outcomes(plan, &results, now);
    sync
}
