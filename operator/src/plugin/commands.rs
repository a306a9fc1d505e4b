//! The conductor of `kubectl staticpodset`: reads what a command needs, lets the pure modules
//! decide, sends the patch, prints. No decision of its own.

use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use staticpodset_api::keys::LABEL_SET_NAME;
use staticpodset_api::{NodeStaticPods, SetKey, StaticPodRevision, StaticPodSet};

use crate::plugin::cli::{Cli, Command, Rollout};
use crate::plugin::connect::connect;
use crate::plugin::error::PluginError;
use crate::plugin::output::{self, Format};
use crate::plugin::undo::{self, UndoPlan};
use crate::plugin::{history, nodes, patches, print, status_watch};

/// How kubectl names a set in its messages: `staticpodset.staticpods.dev/<name>`.
const RESOURCE: &str = "staticpodset.staticpods.dev";

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<(), PluginError> {
    let (client, namespace) = connect(&cli.connection).await?;
    let key = |set: &str| SetKey::new(namespace.clone(), set);
    match cli.command {
        Command::Nodes { set, output } => show_nodes(&client, &key(&set), output).await,
        Command::Rollout { command } => match command {
            Rollout::Status {
                set,
                timeout,
                watch,
            } => status_watch::run(client, &key(&set), timeout, watch).await,
            Rollout::History {
                set,
                revision,
                output,
            } => show_history(&client, &key(&set), revision, output).await,
            Rollout::Undo { set, to_revision } => roll_back(&client, &key(&set), to_revision).await,
            Rollout::Pause { set } => set_paused(&client, &key(&set), true).await,
            Rollout::Resume { set } => set_paused(&client, &key(&set), false).await,
            Rollout::Restart { set } => {
                let key = key(&set);
                get_set(&client, &key).await?;
                patch_set(&client, &key, patches::restart(Timestamp::now())).await?;
                print(&format!("{RESOURCE}/{} restarted\n", key.name))
            }
        },
    }
}

async fn show_nodes(
    client: &Client,
    key: &SetKey,
    output: Option<Format>,
) -> Result<(), PluginError> {
    get_set(client, key).await?;
    let api: Api<NodeStaticPods> = Api::all(client.clone());
    let objects = api
        .list(&ListParams::default())
        .await
        .map_err(|source| PluginError::Api {
            action: "listing NodeStaticPods".into(),
            source,
        })?;
    let rows = nodes::rows(&objects.items, key);
    match output {
        Some(format) => print(&output::render(&rows, format, "the nodes")?),
        None if rows.is_empty() => {
            eprintln!("No node runs StaticPodSet {key}.");
            Ok(())
        }
        None => print(&nodes::table(&rows)),
    }
}

async fn show_history(
    client: &Client,
    key: &SetKey,
    revision: Option<i64>,
    output: Option<Format>,
) -> Result<(), PluginError> {
    get_set(client, key).await?;
    let revisions = list_revisions(client, key).await?;
    let Some(number) = revision else {
        let rows = history::rows(&revisions);
        return match output {
            Some(format) => print(&output::render(&rows, format, "the history")?),
            None => print(&format!(
                "{RESOURCE}/{}\n{}",
                key.name,
                history::table(&rows, Timestamp::now())
            )),
        };
    };
    let found = history::find(&revisions, number).ok_or(PluginError::Revision {
        set: key.clone(),
        reason: undo::UndoError::NotFound(number),
    })?;
    let template: &Value = &found.spec.template;
    match output {
        Some(format) => print(&output::render(template, format, "the template")?),
        None => print(&history::revision_text(
            &key.name,
            found,
            &output::render(template, Format::Yaml, "the template")?,
        )),
    }
}

async fn roll_back(client: &Client, key: &SetKey, to_revision: i64) -> Result<(), PluginError> {
    let set = get_set(client, key).await?;
    let revisions = list_revisions(client, key).await?;
    let numbers: Vec<i64> = revisions.iter().map(|r| r.spec.revision).collect();
    let current = set.status.as_ref().and_then(|s| s.update_revision_number);
    let plan = undo::plan(&numbers, current, Some(to_revision)).map_err(|reason| {
        PluginError::Revision {
            set: key.clone(),
            reason,
        }
    })?;
    match plan {
        UndoPlan::AlreadyAt(n) => print(&format!(
            "{RESOURCE}/{} skipped rollback (current template already matches revision {n})\n",
            key.name
        )),
        UndoPlan::RollBackTo(n) => {
            patch_set(client, key, patches::rollback_to(n)).await?;
            print(&format!("{RESOURCE}/{} rolled back\n", key.name))
        }
    }
}

async fn set_paused(client: &Client, key: &SetKey, want: bool) -> Result<(), PluginError> {
    let set = get_set(client, key).await?;
    patch_set(
        client,
        key,
        patches::pause(&key.name, set.spec.paused, want)?,
    )
    .await?;
    let done = if want { "paused" } else { "resumed" };
    print(&format!("{RESOURCE}/{} {done}\n", key.name))
}

async fn get_set(client: &Client, key: &SetKey) -> Result<StaticPodSet, PluginError> {
    let api: Api<StaticPodSet> = Api::namespaced(client.clone(), &key.namespace);
    api.get(&key.name).await.map_err(|source| PluginError::Api {
        action: format!("getting StaticPodSet {key}"),
        source,
    })
}

async fn list_revisions(
    client: &Client,
    key: &SetKey,
) -> Result<Vec<StaticPodRevision>, PluginError> {
    let api: Api<StaticPodRevision> = Api::namespaced(client.clone(), &key.namespace);
    let selector = format!("{LABEL_SET_NAME}={}", key.name);
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .map_err(|source| PluginError::Api {
            action: format!("listing the StaticPodRevisions of StaticPodSet {key}"),
            source,
        })
}

async fn patch_set(client: &Client, key: &SetKey, patch: Value) -> Result<(), PluginError> {
    let api: Api<StaticPodSet> = Api::namespaced(client.clone(), &key.namespace);
    api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|source| PluginError::Api {
            action: format!("patching StaticPodSet {key}"),
            source,
        })
}
