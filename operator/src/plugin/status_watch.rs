//! `rollout status`'s watch: the set and the NodeStaticPods objects, watched until
//! [`crate::plugin::rollout_status::assess`] ends the wait, printing each new line once.

use std::time::Duration;

use futures::{stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use staticpodset_api::{NodeStaticPods, SetKey, StaticPodSet};

use crate::plugin::error::PluginError;
use crate::plugin::print;
use crate::plugin::rollout_status::{assess, fresh_lines, node_lines, Verdict};

/// One change seen by the watch.
enum Change {
    // Boxed: every event carries a whole object, hundreds of bytes moved per change otherwise.
    Set(Box<Result<watcher::Event<StaticPodSet>, watcher::Error>>),
    Nodes(Box<Result<watcher::Event<NodeStaticPods>, watcher::Error>>),
}

/// Watches set `key` until its rollout ends: `Ok` when it completed, an error when it failed,
/// the set went away, or `timeout` (unless zero) passed. With `watch` false, prints the status
/// once and fails only if the rollout did.
pub async fn run(
    client: Client,
    key: &SetKey,
    timeout: Duration,
    watch: bool,
) -> Result<(), PluginError> {
    let sets: Api<StaticPodSet> = Api::namespaced(client.clone(), &key.namespace);
    let set = sets
        .get(&key.name)
        .await
        .map_err(|source| PluginError::Api {
            action: format!("getting StaticPodSet {key}"),
            source,
        })?;
    if !watch {
        let nodes = list_nodes(&client).await;
        return match assess(&set, nodes.as_deref()) {
            Verdict::Failed(message) => Err(PluginError::RolloutFailed(message)),
            Verdict::Waiting(line) | Verdict::Done(line) => print(&format!("{line}\n")),
        };
    }
    let watching = follow(client, sets, key, set);
    if timeout.is_zero() {
        return watching.await;
    }
    tokio::time::timeout(timeout, watching)
        .await
        .map_err(|_| PluginError::TimedOut {
            set: key.clone(),
            after: timeout,
        })?
}

/// The NodeStaticPods objects, or `None` when they cannot be read (a user without the right to
/// list them still gets the set's own counts).
async fn list_nodes(client: &Client) -> Option<Vec<NodeStaticPods>> {
    let api: Api<NodeStaticPods> = Api::all(client.clone());
    api.list(&Default::default()).await.ok().map(|l| l.items)
}

async fn follow(
    client: Client,
    sets: Api<StaticPodSet>,
    key: &SetKey,
    mut set: StaticPodSet,
) -> Result<(), PluginError> {
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let set_events = watcher(sets, by_name)
        .default_backoff()
        .map(|e| Change::Set(Box::new(e)));
    let (store, writer) = reflector::store::<NodeStaticPods>();
    let node_events = reflector::reflector(
        writer,
        watcher(Api::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .map(|e| Change::Nodes(Box::new(e)));
    let mut changes = std::pin::pin!(stream::select(set_events, node_events));

    let mut nodes_synced = false;
    let mut last_error = String::new();
    let mut printed_status = String::new();
    let mut printed_nodes: Vec<String> = Vec::new();
    loop {
        let nodes = nodes_synced.then(|| snapshot(&store));
        let lines = nodes
            .as_deref()
            .map(|n| node_lines(&set, n))
            .unwrap_or_default();
        let verdict = assess(&set, nodes.as_deref());
        let line = match &verdict {
            Verdict::Waiting(line) | Verdict::Done(line) => line.clone(),
            Verdict::Failed(_) => String::new(),
        };
        if line != printed_status && !line.is_empty() {
            print(&format!("{line}\n"))?;
            printed_status = line;
        }
        if !matches!(verdict, Verdict::Done(_)) {
            for fresh in fresh_lines(&printed_nodes, &lines) {
                print(&format!("  {fresh}\n"))?;
            }
        }
        printed_nodes = lines;
        match verdict {
            Verdict::Done(_) => return Ok(()),
            Verdict::Failed(message) => return Err(PluginError::RolloutFailed(message)),
            Verdict::Waiting(_) => {}
        }

        let Some(change) = changes.next().await else {
            return Err(PluginError::Deleted(key.clone()));
        };
        let error = match change {
            Change::Set(event) => match *event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    set = object;
                    None
                }
                Ok(watcher::Event::Delete(_)) => return Err(PluginError::Deleted(key.clone())),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(e),
            },
            Change::Nodes(event) => match *event {
                Ok(watcher::Event::InitDone) => {
                    nodes_synced = true;
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e),
            },
        };
        // The watches retry on their own; tell each new problem once, on stderr, so a watch
        // that cannot recover is not silent.
        if let Some(e) = error {
            let told = e.to_string();
            if told != last_error {
                eprintln!("warning: watching StaticPodSet {key} and its nodes: {told}");
                last_error = told;
            }
        }
    }
}

fn snapshot(store: &Store<NodeStaticPods>) -> Vec<NodeStaticPods> {
    store.state().iter().map(|n| n.as_ref().clone()).collect()
}
