//! What one reconcile's decision costs the operator's CPU, by cluster size: `decide` for one set
//! over N nodes that each carry S sets' entries and reports, all Ready at the set's revision
//! (the steady case every agent report re-plans). Prints a table; no assertions. Times on a
//! shared machine vary by tens of percent from run to run, so it also counts the heap
//! allocations of one decision, which do not vary and were most of its time.
//!
//! `cargo run --release -p staticpodset-operator --example plan_cost [N...]` (default
//! 300 1000 5000; S = 10 at 300 nodes, else 20, as the scale bench's shapes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, Node, NodeCondition, NodeStatus, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use staticpodset_api::{
    AssignedPod, ManifestPhase, MirrorPodReport, NodeStaticPods, NodeStaticPodsSpec,
    NodeStaticPodsStatus, PodReport, SetKey, StaticPodSet, StaticPodSetSpec,
};
use staticpodset_operator::decide::{decide, evaluate, Snapshot};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn set(name: &str) -> StaticPodSet {
    let mut set = StaticPodSet::new(
        name,
        StaticPodSetSpec {
            template: template("registry.example/proxy:1"),
            ..Default::default()
        },
    );
    set.metadata.namespace = Some("bench".into());
    set.metadata.generation = Some(1);
    set
}

fn node(name: &str, since: Time) -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("zone".into(), "a".into())])),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(since),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    })
}

/// A node object carrying `entries` (the sets' own, as `decide` first wrote them), each Ready.
fn object(node: &str, entries: &[AssignedPod], since: &Time) -> Arc<NodeStaticPods> {
    let mut object = NodeStaticPods::new(node, NodeStaticPodsSpec::default());
    object.spec.pods = entries.to_vec();
    object.status = Some(NodeStaticPodsStatus {
        pods: entries
            .iter()
            .map(|entry| (&entry.set_name, &entry.revision))
            .map(|(name, revision)| PodReport {
                set_namespace: "bench".into(),
                set_name: name.clone(),
                phase: ManifestPhase::Written,
                written_revision: Some(revision.clone()),
                mirror_pod: Some(MirrorPodReport {
                    name: format!("{name}-{node}"),
                    uid: "00000000-0000-0000-0000-000000000000".into(),
                    revision: Some(revision.clone()),
                    up_to_date: true,
                    ready: true,
                    ready_since: Some(since.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    Arc::new(object)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![300, 1000, 5000]
    } else {
        sizes
    };
    println!("nodes  sets/node  median ms  min ms  allocations  runs");
    for n in sizes {
        let per_node = if n <= 300 { 10 } else { 20 };
        let names: Vec<String> = (0..per_node).map(|i| format!("set-{i:03}")).collect();
        let sets: Vec<StaticPodSet> = names.iter().map(|n| set(n)).collect();
        let evaluations: Vec<_> = sets
            .iter()
            .map(|s| evaluate(s, "bench", &s.name_any(), &Ok(None)))
            .collect();
        let since = Time(Timestamp::now() - Duration::from_secs(3600));
        let node_names: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
        let nodes: Vec<Arc<Node>> = node_names.iter().map(|n| node(n, since.clone())).collect();
        let keys: Vec<SetKey> = names
            .iter()
            .map(|n| SetKey::new("bench".to_string(), n.clone()))
            .collect();
        // Each set's entry as its first reconcile over empty nodes writes it.
        let entries: Vec<AssignedPod> = (0..per_node)
            .map(|i| {
                let mut entry = decide(&Snapshot {
                    set: &sets[i],
                    key: &keys[i],
                    evaluation: &evaluations[i],
                    revision_number: Some(1),
                    rollback_failed: None,
                    nodes: &nodes[..1],
                    objects: &BTreeMap::new(),
                    history: &[],
                    now: Timestamp::now(),
                    resync: Duration::from_secs(300),
                })
                .writes
                .remove(0)
                .entry
                .expect("a put");
                entry.assigned_time = Some(since.clone());
                entry
            })
            .collect();
        let stored: Vec<Arc<NodeStaticPods>> = node_names
            .iter()
            .map(|n| object(n, &entries, &since))
            .collect();
        let key = keys[0].clone();
        let runs = (100_000 / n).clamp(30, 200);
        let mut times = Vec::with_capacity(runs);
        let mut allocations = 0;
        for _ in 0..runs {
            let counted = ALLOCATIONS.load(Ordering::Relaxed);
            let started = Instant::now();
            // As a reconcile does: the store's objects by name, then the decision.
            let objects: BTreeMap<String, Arc<NodeStaticPods>> =
                stored.iter().map(|o| (o.name_any(), o.clone())).collect();
            let decision = decide(&Snapshot {
                set: &sets[0],
                key: &key,
                evaluation: &evaluations[0],
                revision_number: Some(1),
                rollback_failed: None,
                nodes: &nodes,
                objects: &objects,
                history: &[],
                now: Timestamp::now(),
                resync: Duration::from_secs(300),
            });
            times.push(started.elapsed());
            allocations = ALLOCATIONS.load(Ordering::Relaxed) - counted;
            assert!(
                decision.writes.is_empty(),
                "a steady set writes nothing: {} writes",
                decision.writes.len()
            );
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{n:>5}  {per_node:>9}  {:>9.2}  {:>6.2}  {allocations:>11}  {runs:>4}",
            ms(times[times.len() / 2]),
            ms(times[0])
        );
    }
}
