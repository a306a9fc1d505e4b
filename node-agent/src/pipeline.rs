//! One sync of the node as one pipeline: observe → plan → gates → execute.
//!
//! The loop ([`crate::agent`]) gathers what it knows of the node into an [`Observed`]: the
//! assignments with their revisions' manifests, whether their configuration files are in place,
//! the pods the watch shows, the image pulls that finished. [`run`] then
//!
//! 1. points each manifest at its configuration files, or holds the set while they are not in
//!    place (the configuration-files gate, [`config_files::gate`]);
//! 2. routes each set to the manifest directory or to the URL source, holding a set that leaves
//!    the URL until the kubelet has stopped its URL pod (the URL handover gate, [`route`]);
//! 3. scans the manifest directory and plans it ([`plan_dir`]);
//! 4. holds writes until the new pod's images are on the node and until the old pod has stopped
//!    (the pre-pull and stop-first gates, [`gate_files`]);
//! 5. executes the directory's actions ([`execute`]), decides what the URL serves, builds the
//!    report and removes configuration files nothing names any more,
//!
//! and returns a [`SyncOutcome`]: plain data the loop turns into metrics, logs, the URL answer
//! and the status patch, and [`next_wakeup`] into the time of the next sync. Every step but the
//! scan and the execution is a pure function of its inputs. The temp-directory tests run this
//! same function, so they take the path production takes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use staticpodset_api::keys::parse_manifest_file_name;
use staticpodset_api::{ManifestPhase, ManifestSource, PodReport, SetKey};
use tracing::{info, info_span, warn};

use crate::config_files::{self, Cleanup, ConfigReadiness};
use crate::cri::PullResult;
use crate::dir_plan::{plan_dir, Assignment, DirPlan};
use crate::manifest_dir::{Action, DirError, ManifestDir, PodKey};
use crate::metrics::{self, Metrics};
use crate::mirror_pods::{mirror_pod_key, mirror_report, NodePods};
use crate::prepull::{Gate, PrePull};
use crate::report::{self, outcomes, unreadable_dir, Report, SetOutcome};
use crate::resources_dir::ResourcesDir;
use crate::served_pods::{self, ServedPods};
use crate::stop_first::{StopFirst, Stopped};
use crate::surge::{self, Retired};
use crate::url_mode;
use crate::url_source::UrlResponse;

/// The longest a set moving from the URL to a file waits for the URL pod to stop, when
/// stop-first is off (otherwise the stop-first timeout).
pub const URL_HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon configuration files that could not be written are tried again.
pub const CONFIG_RETRY: Duration = Duration::from_secs(5);

/// The directories a sync works on.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    /// The kubelet's static pod directory.
    pub manifests: ManifestDir,
    /// Where configuration files go.
    pub resources: ResourcesDir,
}

/// What the agent knows of the node when a sync begins: plain data, gathered by the loop.
#[derive(Debug)]
pub struct Observed {
    /// The node's name (its mirror pods are named after it).
    pub node: String,
    /// `metadata.generation` of the node's NodeStaticPods, for `status.observedGeneration`.
    pub generation: Option<i64>,
    /// How the node's pods reach the kubelet.
    pub mode: ManifestSource,
    /// Whether this agent serves the kubelet's URL source (`--static-pod-url-addr`).
    pub url_enabled: bool,
    /// One entry per spec entry, with its revision's manifest as far as the agent has it.
    pub assigned: Vec<Assignment>,
    /// Whether the configuration files the manifests need are in place.
    pub config: ConfigReadiness,
    /// The pods bound to the node, `None` until the watch's first complete list: then nothing is
    /// known to run, and nothing is reported.
    pub pods: Option<NodePods>,
    /// Image pulls that finished since the last sync.
    pub pulls: Vec<PullResult>,
    /// When the revision cache wants to read a revision again (revisions are read, not watched:
    /// nothing else wakes the loop for that retry).
    pub revision_retry: Option<Instant>,
    /// The wall clock, for file times and the report.
    pub wall: SystemTime,
    /// The monotonic clock, for the gates' waits.
    pub now: Instant,
    /// Sets whose write replaces the running pod in place even with stop-first on: node-local
    /// fallbacks, whose failing pod serves nothing and whose mirror pod cannot be seen.
    pub in_place: BTreeSet<SetKey>,
}

impl Observed {
    /// A node in file mode with `assigned` and nothing else known: no URL source, no
    /// configuration files, no pod list, no pulls.
    pub fn files_only(
        node: impl Into<String>,
        assigned: Vec<Assignment>,
        wall: SystemTime,
        now: Instant,
    ) -> Self {
        Self {
            node: node.into(),
            generation: None,
            mode: ManifestSource::File,
            url_enabled: false,
            assigned,
            config: ConfigReadiness::new(),
            pods: None,
            pulls: Vec::new(),
            revision_retry: None,
            wall,
            now,
            in_place: BTreeSet::new(),
        }
    }
}

/// What the pipeline remembers between syncs: the gates' waits and what the URL serves. Owned by
/// the loop, never shared.
#[derive(Debug)]
pub struct SyncMemory {
    /// Pre-pull's waits and what the runtime has, when pre-pull is on.
    pub prepull: Option<PrePull>,
    /// The stop-first swaps under way, when stop-first is on.
    pub stop_first: Option<StopFirst>,
    /// What the URL endpoint serves.
    pub served: ServedPods,
    /// Sets moving from the URL to a file that wait for the URL pod to stop, since when.
    pub url_handover: BTreeMap<SetKey, Instant>,
    /// The longest such a wait lasts.
    pub handover_timeout: Duration,
}

impl SyncMemory {
    /// Nothing remembered yet. `stop_first` is the stop-first timeout when it is on; it bounds
    /// the URL handover as well.
    pub fn new(prepull: Option<PrePull>, stop_first: Option<Duration>) -> Self {
        Self {
            prepull,
            stop_first: stop_first.map(StopFirst::new),
            served: ServedPods::new(),
            url_handover: BTreeMap::new(),
            handover_timeout: stop_first.unwrap_or(URL_HANDOVER_TIMEOUT),
        }
    }
}

/// What one pass over the manifest directory did.
#[derive(Debug, Clone, PartialEq)]
pub struct DirSync {
    /// One outcome per set assigned to the directory.
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
    /// Sets in conflict in the directory.
    pub fn conflicts(&self) -> usize {
        self.sets
            .iter()
            .filter(|s| s.phase == ManifestPhase::Conflict)
            .count()
    }
}

/// The assignments after the configuration-files and URL handover gates, by where they go.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// Every assignment, pointed at its configuration files: what the node needs.
    pub all: Vec<Assignment>,
    /// Those for the manifest directory.
    pub files: Vec<Assignment>,
    /// Those for the URL source.
    pub url: Vec<Assignment>,
}

/// What the gates on the directory plan did, for logs and metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GateEvents {
    /// What pre-pull held, released and wants pulled, when it is on.
    pub prepull: Option<Gate>,
    /// The stop-first swaps begun and finished, when it is on.
    pub stopped: Option<Stopped>,
    /// The old manifests of surge updates removed, and when the next one is due.
    pub retired: Retired,
}

/// The URL source's part of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlOutcome {
    /// What the endpoint answers from now on.
    pub response: UrlResponse,
    /// How many pods it serves.
    pub served: usize,
}

/// The moments the node's state changes by itself: the loop looks again at the earliest even
/// without an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// A freshly written manifest's mirror pod grace runs out (the report changes then).
    pub mirror_grace: Option<SystemTime>,
    /// A revision read is retried.
    pub revision_retry: Option<Instant>,
    /// A held write is released by the pre-pull timeout, or a failed pull is due again.
    pub prepull: Option<Instant>,
    /// A stop-first swap times out.
    pub stop_first: Option<Instant>,
    /// A URL handover times out.
    pub url_handover: Option<Instant>,
    /// Configuration files that could not be written are tried again.
    pub config_retry: Option<Instant>,
    /// A surge update's new pod will have been Ready for minReadySeconds: its old pod goes.
    pub surge_retire: Option<SystemTime>,
}

/// Everything one sync decided and did.
#[derive(Debug)]
pub struct SyncOutcome {
    /// What the pass over the manifest directory did.
    pub files: DirSync,
    /// What the gates on the directory plan did.
    pub gates: GateEvents,
    /// Sets whose write waits for a pre-pull, when pre-pull is on.
    pub waiting_for_images: Option<usize>,
    /// The URL source's answer, when the agent serves one.
    pub url: Option<UrlOutcome>,
    /// One outcome per assigned set, from the source that holds it.
    pub sets: Vec<SetOutcome>,
    /// The status to report, `None` until the pod list is complete (every mirror pod would look
    /// missing).
    pub report: Option<Report>,
    /// The configuration files removed because nothing names them any more, or why that failed;
    /// `None` until the pod list is complete (a running pod may mount any of them).
    pub config_cleanup: Option<Result<Vec<Cleanup>, String>>,
    /// When to look again without an event.
    pub deadlines: Deadlines,
}

/// Runs one sync: every step of the pipeline, in order (see the module documentation). Blocking
/// file I/O: call it on the blocking pool.
pub fn run(dirs: &NodeDirs, observed: Observed, memory: &mut SyncMemory) -> SyncOutcome {
    // Before anything can fail: a lost result would leave its image "pulling" for good.
    record_pulls(memory, &observed.pulls);
    let routed = route(&observed, &dirs.resources.host, memory);
    let (mut files, gates) = match dirs.manifests.scan() {
        Ok(scan) => {
            let mut plan = plan_dir(Some(&routed.files), &scan);
            let gates = gate_files(&mut plan, &routed.files, &observed, memory);
            (execute(&dirs.manifests, &plan, observed.wall), gates)
        }
        Err(e) => {
            warn!(error = %e, "cannot read the manifest directory; nothing written or removed");
            (unreadable(&routed.files, &e), GateEvents::default())
        }
    };
    if let Some(book) = &memory.prepull {
        book.annotate(&mut files.sets);
    }
    let mut sets = files.sets.clone();
    let url = observed.url_enabled.then(|| {
        let pods = observed.pods.as_ref();
        let decision = served_pods::plan_url(
            &routed.url,
            &memory.served,
            &files.foreign_pods,
            // Without the pod list the kubelet may be running any set from the URL.
            |set| pods.is_none_or(|p| p.mirror_from_url(&observed.node, set)),
            observed.wall,
        );
        let outcome = UrlOutcome {
            response: url_mode::answer(&decision),
            served: decision.served.len(),
        };
        memory.served = decision.served;
        sets = served_pods::merge_outcomes(std::mem::take(&mut sets), decision.outcomes);
        outcome
    });
    let report = build_report(&observed, &sets, &files.removals);
    let config_cleanup = observed
        .pods
        .as_ref()
        .map(|pods| clean_config(dirs, &routed.all, &memory.served, pods));
    // Until the pod list is complete only the resync looks again: the pod watch's first list
    // wakes the loop anyway.
    let deadlines = match &report {
        Some(report) => Deadlines {
            surge_retire: gates.retired.next,
            ..deadlines(&observed, memory, report)
        },
        None => Deadlines::default(),
    };
    SyncOutcome {
        waiting_for_images: memory.prepull.as_ref().map(PrePull::waiting),
        files,
        gates,
        url,
        sets,
        report,
        config_cleanup,
        deadlines,
    }
}

/// Takes in the image pulls that finished.
fn record_pulls(memory: &mut SyncMemory, pulls: &[PullResult]) {
    if let Some(book) = &mut memory.prepull {
        for done in pulls {
            book.record(&done.image, done.result.clone(), done.at);
        }
    }
}

/// Plan, first step: the configuration-files gate, then each set to the directory or the URL
/// (by the node's mode), then the URL handover gate on the directory's share. `host_root` is the
/// resources directory as the kubelet sees it.
pub fn route(observed: &Observed, host_root: &str, memory: &mut SyncMemory) -> Routed {
    let all = config_files::gate(observed.assigned.clone(), &observed.config, host_root);
    let (files, url) = served_pods::split(observed.mode, &all);
    let files = if observed.url_enabled {
        let served = &memory.served;
        let pods = observed.pods.as_ref();
        served_pods::hold_for_url_pods(
            files,
            |set| served.contains_key(set) || pods.is_some_and(|p| p.runs_from_url(set)),
            &mut memory.url_handover,
            observed.now,
            memory.handover_timeout,
        )
    } else {
        files
    };
    Routed { all, files, url }
}

/// The gates on the directory plan made from `files`: pre-pull first (images are pulled while
/// the old pod still serves), then stop-first, then the removal of surge updates' old pods.
/// Each edits `plan` and says what it did.
pub fn gate_files(
    plan: &mut DirPlan,
    files: &[Assignment],
    observed: &Observed,
    memory: &mut SyncMemory,
) -> GateEvents {
    let prepull = memory
        .prepull
        .as_mut()
        .map(|book| book.gate(plan, files, observed.now));
    let stopped = memory.stop_first.as_mut().map(|stop_first| {
        // Before the pod list is complete nothing is known to run: replaced in place.
        let pods = observed.pods.as_ref();
        stop_first.gate(
            plan,
            |decision| {
                !observed.in_place.contains(&decision.set)
                    && pods
                        .zip(decision.pod.as_ref())
                        .is_some_and(|(pods, pod)| pods.runs(&observed.node, &decision.set, pod))
            },
            observed.now,
        )
    });
    // Without the pod list nothing is known to be Ready: every old pod stays.
    let retired = match observed.pods.as_ref() {
        Some(pods) => surge::retire(
            plan,
            |set, pod, revision| {
                let mirror = pods.get(&mirror_pod_key(pod, &observed.node))?;
                let report = mirror_report(&mirror, &set.to_string(), Some(revision))?;
                (report.up_to_date && report.ready).then(|| {
                    report
                        .ready_since
                        .map_or(observed.wall, |t| SystemTime::from(t.0))
                })
            },
            observed.wall,
        ),
        None => Retired::default(),
    };
    GateEvents {
        prepull,
        stopped,
        retired,
    }
}

/// Execute: carries out `plan`'s actions in the directory and says what came of each set. Each
/// action re-checks the file it was planned for, so a change since the scan is never clobbered.
pub fn execute(dir: &ManifestDir, plan: &DirPlan, wall: SystemTime) -> DirSync {
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
            .map(|(namespace, name)| SetKey::new(namespace, name).to_string())
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
    (sync.sets, sync.removals) = outcomes(plan, &results, wall);
    sync
}

/// The pass when the directory cannot be read: nothing written or removed, every set in error.
fn unreadable(files: &[Assignment], error: &DirError) -> DirSync {
    let sets: Vec<SetKey> = files.iter().map(|a| SetKey::of(&a.entry)).collect();
    DirSync {
        sets: unreadable_dir(&sets, error),
        removals: Vec::new(),
        written: 0,
        removed: 0,
        failed: true,
        foreign_pods: Vec::new(),
    }
}

/// The status from the sets' outcomes and their mirror pods; `None` without the pod list.
fn build_report(
    observed: &Observed,
    sets: &[SetOutcome],
    removals: &[PodReport],
) -> Option<Report> {
    let pods = observed.pods.as_ref()?;
    let mut built = report::build(
        &observed.node,
        observed.generation,
        sets,
        removals,
        |key| pods.get(key),
        observed.wall,
    );
    if observed.url_enabled {
        built.status.manifest_source = Some(observed.mode);
    }
    Some(built)
}

/// Removes the configuration files nothing on the node names any more: not an assigned revision,
/// not an owned manifest on disk, not a served pod, not a running (mirror) pod. Returns what was
/// removed; a failure is retried on the next sync.
fn clean_config(
    dirs: &NodeDirs,
    assigned: &[Assignment],
    served: &ServedPods,
    pods: &NodePods,
) -> Result<Vec<Cleanup>, String> {
    let on_disk = dirs.resources.on_disk().map_err(|e| e.to_string())?;
    // The manifests on disk are read again only when there are configuration files that they
    // might name: nodes without any pay nothing on every sync.
    if on_disk.is_empty() {
        return Ok(Vec::new());
    }
    let scan = dirs.manifests.scan().map_err(|e| e.to_string())?;
    let referenced = config_files::referenced(assigned, served, pods.config_hashes(), &scan);
    let mut done = Vec::new();
    for step in config_files::cleanup(&on_disk, &referenced) {
        dirs.resources.apply(&step).map_err(|e| e.to_string())?;
        done.push(step);
    }
    Ok(done)
}

/// Collects the pipeline's clocks after a sync.
fn deadlines(observed: &Observed, memory: &SyncMemory, report: &Report) -> Deadlines {
    Deadlines {
        mirror_grace: report.recheck_at,
        revision_retry: observed.revision_retry,
        prepull: memory.prepull.as_ref().and_then(PrePull::next_wakeup),
        stop_first: memory.stop_first.as_ref().and_then(StopFirst::next_wakeup),
        url_handover: memory
            .url_handover
            .values()
            .min()
            .map(|since| *since + memory.handover_timeout),
        config_retry: observed
            .config
            .values()
            .any(Result::is_err)
            .then(|| observed.now + CONFIG_RETRY),
        surge_retire: None,
    }
}

/// How long the loop may wait for an event after a sync: until the earliest of `deadlines`, and
/// never longer than `resync`. `now` and `wall` are the clocks when the sync ends; a deadline
/// already past means at once.
pub fn next_wakeup(
    deadlines: &Deadlines,
    now: Instant,
    wall: SystemTime,
    resync: Duration,
) -> Duration {
    let Deadlines {
        mirror_grace,
        revision_retry,
        prepull,
        stop_first,
        url_handover,
        config_retry,
        surge_retire,
    } = deadlines;
    let grace = [mirror_grace, surge_retire]
        .into_iter()
        .flatten()
        .map(|t| t.duration_since(wall).unwrap_or_default());
    [
        revision_retry,
        prepull,
        stop_first,
        url_handover,
        config_retry,
    ]
    .into_iter()
    .flatten()
    .map(|t| t.saturating_duration_since(now))
    .chain(grace)
    .fold(resync, Duration::min)
}

/// Logs what the gates and the configuration cleanup did: once per change, not every sync.
pub fn log_events(outcome: &SyncOutcome) {
    if let Some(gate) = &outcome.gates.prepull {
        for (set, revision) in &gate.held {
            info!(set = %set, %revision, "manifest write held until the node has the new pod's images");
        }
        for released in &gate.released {
            let waited_ms = millis(released.waited);
            match &released.deadline_passed {
                None => info!(set = %released.set, revision = %released.revision, waited_ms,
                              "images on the node; writing the manifest"),
                Some(note) => warn!(set = %released.set, revision = %released.revision, waited_ms,
                                    %note, "writing the manifest without its images"),
            }
        }
    }
    if let Some(stopped) = &outcome.gates.stopped {
        for set in &stopped.started {
            info!(set = %set, "revision change: removing the old manifest first, writing the new one once the old pod has stopped");
        }
        for (set, waited, timed_out) in &stopped.finished {
            let waited_ms = millis(*waited);
            if *timed_out {
                warn!(set = %set, waited_ms, "the old pod did not stop in time; writing the new manifest anyway");
            } else {
                info!(set = %set, waited_ms, "old pod stopped; writing the new manifest");
            }
        }
    }
    for set in &outcome.gates.retired.removed {
        info!(set = %set, "surge: the new pod is available; removing the old pod's manifest");
    }
    match &outcome.config_cleanup {
        Some(Ok(done)) => {
            for step in done {
                let (set, action) = match step {
                    Cleanup::Prune(set, _) => (set, "pruned"),
                    Cleanup::RemoveSet(set) => (set, "removed"),
                };
                info!(set = %set, ?step, action, "configuration files no longer needed");
            }
        }
        Some(Err(e)) => {
            warn!(error = %e, "cleaning up configuration files; retried on the next sync")
        }
        None => {}
    }
}

/// A wait in whole milliseconds, for logs.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SyncOutcome {
    /// Counts what one sync did: manifests written and removed, conflicts, failures, the gates'
    /// waits and swaps, the URL's pods and the configuration files cleaned up.
    pub fn record(&self, metrics: &Metrics) {
        let outcome = self;
        let files = &outcome.files;
        metrics.manifests_written.inc_by(files.written);
        metrics.manifests_removed.inc_by(files.removed);
        metrics.conflicts.set(metrics::gauge(files.conflicts()));
        if files.failed {
            metrics.sync_errors.inc();
        }
        if let Some(gate) = &outcome.gates.prepull {
            for released in &gate.released {
                let outcome = match released.deadline_passed {
                    None => "images_ready",
                    Some(_) => "deadline_passed",
                };
                metrics.prepull_waits.with_label_values(&[outcome]).inc();
            }
        }
        if let Some(waiting) = outcome.waiting_for_images {
            metrics.prepull_waiting.set(metrics::gauge(waiting));
        }
        if let Some(stopped) = &outcome.gates.stopped {
            for (_, _, timed_out) in &stopped.finished {
                let result = if *timed_out { "timeout" } else { "stopped" };
                metrics.stop_first_swaps.with_label_values(&[result]).inc();
            }
        }
        if let Some(url) = &outcome.url {
            metrics.url_served_pods.set(metrics::gauge(url.served));
        }
        if let Some(Ok(done)) = &outcome.config_cleanup {
            for step in done {
                match step {
                    Cleanup::Prune(_, hashes) => metrics
                        .config_files
                        .with_label_values(&["pruned"])
                        .inc_by(hashes.len() as u64),
                    Cleanup::RemoveSet(_) => {
                        metrics.config_files.with_label_values(&["removed"]).inc()
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
