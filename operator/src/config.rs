//! ConfigMap and Secret volumes of a set's template: their data becomes a config hash, the
//! volumes become hostPath volumes at a path holding that hash, and the data goes into a bundle
//! Secret the node agents read (see `staticpodset_api::config_files` for the contract).
//!
//! Everything here is pure but [`fetch`], [`ensure_bundle`] and [`prune_bundles`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, HostPathVolumeSource, PodTemplateSpec, Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use staticpodset_api::config_files::{
    bundle_name, data_key, default_mode, is_safe_file_name, volume_path, ConfigKind, Layout,
    VolumeLayout, ANNOTATION_VOLUMES, CONFIG_HASH, DEFAULT_RESOURCES_ROOT, LABEL_SET_NAMESPACE,
};
use staticpodset_api::keys::LABEL_SET_NAME;
use staticpodset_api::{SetKey, StaticPodSet};

use crate::conditions::{REASON_CONFIG_NOT_FOUND, REASON_INVALID_CONFIG};
use crate::render::revision_of;

/// A Secret holds at most 1 MiB; leave room for its metadata.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024 - 16 * 1024;

/// One configMap or secret volume of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigVolume {
    /// Index in `spec.template.spec.volumes`, for messages.
    pub index: usize,
    /// The volume's name (its directory on the node).
    pub volume: String,
    /// ConfigMap or Secret.
    pub kind: ConfigKind,
    /// The object's name in the set's namespace.
    pub source: String,
    /// A missing object is an empty directory instead of an error.
    pub optional: bool,
    /// Permission bits of the files.
    pub mode: u32,
}

/// The configMap and secret volumes of `template`, in order.
pub fn config_volumes(template: &PodTemplateSpec) -> Vec<ConfigVolume> {
    let volumes = template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mode = |m: Option<i32>, kind| {
        m.and_then(|m| u32::try_from(m).ok())
            .map_or(default_mode(kind), |m| m & 0o777)
    };
    volumes
        .iter()
        .enumerate()
        .filter_map(|(index, v)| {
            if let Some(cm) = &v.config_map {
                Some(ConfigVolume {
                    index,
                    volume: v.name.clone(),
                    kind: ConfigKind::ConfigMap,
                    source: cm.name.clone(),
                    optional: cm.optional.unwrap_or(false),
                    mode: mode(cm.default_mode, ConfigKind::ConfigMap),
                })
            } else {
                v.secret.as_ref().map(|s| ConfigVolume {
                    index,
                    volume: v.name.clone(),
                    kind: ConfigKind::Secret,
                    source: s.secret_name.clone().unwrap_or_default(),
                    optional: s.optional.unwrap_or(false),
                    mode: mode(s.default_mode, ConfigKind::Secret),
                })
            }
        })
        .collect()
}

/// The files of one ConfigMap or Secret, by key; `None` when the object does not exist.
pub type ObjectData = Option<BTreeMap<String, Vec<u8>>>;

/// The data of the objects the volumes name, by kind and name.
pub type Fetched = BTreeMap<(ConfigKind, String), ObjectData>;

/// A set's configuration, ready to render and to bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The config hash: it changes with any byte of data, any key, mode or volume.
    pub hash: String,
    /// Each volume's kind, source and mode.
    pub layout: Layout,
    /// The files, by [`data_key`].
    pub data: BTreeMap<String, Vec<u8>>,
}

/// Why a set's configuration cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `ConfigNotFound` or `InvalidConfig`.
    pub reason: &'static str,
    /// One `path: message` line each.
    pub problems: Vec<String>,
}

fn kind_name(kind: ConfigKind) -> (&'static str, &'static str) {
    match kind {
        ConfigKind::ConfigMap => ("configMap", "ConfigMap"),
        ConfigKind::Secret => ("secret", "Secret"),
    }
}

/// Resolves the volumes against the fetched objects. `Ok(None)` when the template has no
/// configMap or secret volume.
pub fn resolve(
    namespace: &str,
    volumes: &[ConfigVolume],
    fetched: &Fetched,
) -> Result<Option<Resolved>, ConfigProblem> {
    if volumes.is_empty() {
        return Ok(None);
    }
    let mut missing = Vec::new();
    let mut invalid = Vec::new();
    let mut layout = Layout::new();
    let mut data = BTreeMap::new();
    for v in volumes {
        let (field, kind) = kind_name(v.kind);
        let at = format!("spec.template.spec.volumes[{}].{field}", v.index);
        if v.source.is_empty() {
            invalid.push(format!("{at}: names no {kind}"));
            continue;
        }
        let files = match fetched.get(&(v.kind, v.source.clone())).cloned().flatten() {
            Some(files) => files,
            None if v.optional => BTreeMap::new(),
            None => {
                missing.push(format!(
                    "{at}: {kind} {namespace}/{} not found (mark it optional: true to run without it)",
                    v.source
                ));
                continue;
            }
        };
        for (key, bytes) in files {
            let k = data_key(&v.volume, &key);
            if !is_safe_file_name(&key) || k.len() > 253 {
                invalid.push(format!(
                    "{at}: key {key:?} of {kind} {namespace}/{} cannot be a file name here",
                    v.source
                ));
                continue;
            }
            data.insert(k, bytes);
        }
        layout.insert(
            v.volume.clone(),
            VolumeLayout {
                kind: v.kind,
                source: v.source.clone(),
                mode: v.mode,
            },
        );
    }
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_BUNDLE_BYTES {
        invalid.push(format!(
            "spec.template.spec.volumes: the ConfigMaps and Secrets hold {size} bytes, over the \
             {MAX_BUNDLE_BYTES} bytes a set's configuration may have"
        ));
    }
    if !missing.is_empty() {
        missing.extend(invalid);
        return Err(ConfigProblem {
            reason: REASON_CONFIG_NOT_FOUND,
            problems: missing,
        });
    }
    if !invalid.is_empty() {
        return Err(ConfigProblem {
            reason: REASON_INVALID_CONFIG,
            problems: invalid,
        });
    }
    let encoded: BTreeMap<&String, Value> = data
        .iter()
        .map(|(k, v)| (k, json!(ByteString(v.clone()))))
        .collect();
    let hash = revision_of(&json!({ "layout": layout, "data": encoded }));
    Ok(Some(Resolved { hash, layout, data }))
}

/// The template the set renders: configMap and secret volumes replaced by hostPath volumes of
/// type `Directory` (so a pod whose files are missing does not start on an empty directory) and
/// the config hash annotated. Without configuration, an annotation a user put under our key is
/// dropped, so the agent never looks for a bundle that does not exist.
pub fn localize(
    template: &PodTemplateSpec,
    namespace: &str,
    set: &str,
    resolved: Option<&Resolved>,
) -> PodTemplateSpec {
    let mut out = template.clone();
    let meta = out.metadata.get_or_insert_with(ObjectMeta::default);
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.remove(CONFIG_HASH);
    let Some(resolved) = resolved else {
        if annotations.is_empty() {
            meta.annotations = None;
        }
        return out;
    };
    annotations.insert(CONFIG_HASH.to_string(), resolved.hash.clone());
    if let Some(volumes) = out.spec.as_mut().and_then(|s| s.volumes.as_mut()) {
        for v in volumes
            .iter_mut()
            .filter(|v| v.config_map.is_some() || v.secret.is_some())
        {
            *v = Volume {
                name: v.name.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: volume_path(
                        DEFAULT_RESOURCES_ROOT,
                        namespace,
                        set,
                        &resolved.hash,
                        &v.name,
                    ),
                    type_: Some("Directory".into()),
                }),
                ..Default::default()
            };
        }
    }
    out
}

/// The bundle Secret of set `namespace/set` at `resolved`'s hash, in `bundle_namespace`.
/// Immutable: a hash names one content forever.
pub fn bundle(namespace: &str, set: &str, resolved: &Resolved, bundle_namespace: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(bundle_name(namespace, set, &resolved.hash)),
            namespace: Some(bundle_namespace.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_SET_NAME.to_string(), set.to_string()),
                (LABEL_SET_NAMESPACE.to_string(), namespace.to_string()),
                (CONFIG_HASH.to_string(), resolved.hash.clone()),
            ])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_VOLUMES.to_string(),
                serde_json::to_string(&resolved.layout).unwrap_or_default(),
            )])),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some("Opaque".into()),
        data: Some(
            resolved
                .data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The sets whose template has a configMap (`kind` ConfigMap) or secret volume naming
/// `namespace/name`.
pub fn sets_referencing(
    sets: &[std::sync::Arc<StaticPodSet>],
    kind: ConfigKind,
    namespace: &str,
    name: &str,
) -> Vec<SetKey> {
    sets.iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace))
        .filter(|s| {
            config_volumes(&s.spec.template)
                .iter()
                .any(|v| v.kind == kind && v.source == name)
        })
        .map(|s| SetKey::new(namespace, s.name_any()))
        .collect()
}

/// The selector of every bundle of set `namespace/set`.
pub fn bundle_selector(namespace: &str, set: &str) -> String {
    format!("{LABEL_SET_NAMESPACE}={namespace},{LABEL_SET_NAME}={set}")
}

/// A ConfigMap or Secret, by kind, namespace and name.
pub type ObjectKey = (ConfigKind, String, String);

/// The data of the ConfigMaps and Secrets sets name, kept while their watch shows them unchanged,
/// so that a reconcile (many per rollout) reads them from the API only after they changed.
///
/// The metadata watch records the resourceVersion of every object some set names
/// ([`ConfigCache::observe`]); a cached read is used only while its resourceVersion is the one
/// the watch last saw. A read whose object changed meanwhile is kept under the old version and so
/// is never used.
#[derive(Debug, Default)]
pub struct ConfigCache {
    inner: std::sync::Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// The last resourceVersion the watch (or a read) showed, per named object.
    seen: BTreeMap<ObjectKey, String>,
    /// Data as read, with the resourceVersion of the read; `None`: not found.
    read: BTreeMap<ObjectKey, (String, ObjectData)>,
}

impl ConfigCache {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding the lock leaves plain maps behind; they are still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A watch event: `version` is the object's resourceVersion, `None` when it was deleted or no
    /// set names it (then nothing is kept of it).
    pub fn observe(&self, key: ObjectKey, version: Option<String>) {
        let mut state = self.state();
        match version {
            Some(v) => {
                state.seen.insert(key, v);
            }
            None => {
                state.seen.remove(&key);
                state.read.remove(&key);
            }
        }
    }

    /// Forgets every version the watch showed (it relists): reads are used again only once the
    /// relist showed their object unchanged.
    pub fn forget_seen(&self) {
        self.state().seen.clear();
    }

    /// The cached data of `key`, if it is still what the watch shows.
    pub fn lookup(&self, key: &ObjectKey) -> Option<ObjectData> {
        let state = self.state();
        let (version, data) = state.read.get(key)?;
        (state.seen.get(key) == Some(version)).then(|| data.clone())
    }

    /// Records a read at `version` (empty for "not found"). If the watch has shown nothing of the
    /// object yet, the read's version is what is current.
    pub fn store(&self, key: ObjectKey, version: String, data: ObjectData) {
        let mut state = self.state();
        state
            .seen
            .entry(key.clone())
            .or_insert_with(|| version.clone());
        state.read.insert(key, (version, data));
    }
}

/// Reads the objects the volumes name from the set's namespace, from `cache` when unchanged.
pub async fn fetch(
    client: &Client,
    cache: &ConfigCache,
    metrics: &crate::metrics::Metrics,
    namespace: &str,
    volumes: &[ConfigVolume],
) -> Result<Fetched, kube::Error> {
    let mut fetched = Fetched::new();
    for v in volumes {
        let key = (v.kind, v.source.clone());
        if v.source.is_empty() || fetched.contains_key(&key) {
            continue;
        }
        let object: ObjectKey = (v.kind, namespace.to_string(), v.source.clone());
        if let Some(files) = cache.lookup(&object) {
            metrics.config_reads.with_label_values(&["cache"]).inc();
            fetched.insert(key, files);
            continue;
        }
        metrics.config_reads.with_label_values(&["api"]).inc();
        let (version, files) = match v.kind {
            ConfigKind::ConfigMap => {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .get_opt(&v.source)
                    .await?;
                let version = cm
                    .as_ref()
                    .and_then(|c| c.resource_version())
                    .unwrap_or_default();
                (
                    version,
                    cm.map(|cm| {
                        let mut files: BTreeMap<String, Vec<u8>> = cm
                            .binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        files.extend(
                            cm.data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes())),
                        );
                        files
                    }),
                )
            }
            ConfigKind::Secret => {
                let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(&v.source)
                    .await?;
                let version = secret
                    .as_ref()
                    .and_then(|s| s.resource_version())
                    .unwrap_or_default();
                (
                    version,
                    secret.map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect()
                    }),
                )
            }
        };
        cache.store(object, version, files.clone());
        fetched.insert(key, files);
    }
    Ok(fetched)
}

/// Creates the bundle unless it exists (a hash names one content, so an existing one is it).
pub async fn ensure_bundle(client: &Client, bundle: &Secret) -> Result<bool, kube::Error> {
    let api: Api<Secret> = Api::namespaced(
        client.clone(),
        bundle.metadata.namespace.as_deref().unwrap_or_default(),
    );
    match api.create(&PostParams::default(), bundle).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the bundles of set `namespace/set` whose hash is not in `keep`; returns their names.
pub async fn prune_bundles(
    client: &Client,
    bundle_namespace: &str,
    namespace: &str,
    set: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), bundle_namespace);
    let list = api
        .list_metadata(&ListParams::default().labels(&bundle_selector(namespace, set)))
        .await?;
    let mut deleted = Vec::new();
    for bundle in list.items {
        let hash = bundle
            .labels()
            .get(CONFIG_HASH)
            .cloned()
            .unwrap_or_default();
        if keep.contains(&hash) {
            continue;
        }
        let name = bundle.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, SecretVolumeSource};

    fn template() -> PodTemplateSpec {
        let mut t = crate::fixtures::template("busybox");
        t.spec.as_mut().unwrap().volumes = Some(vec![
            Volume {
                name: "conf".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "web-conf".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("web-tls".into()),
                    default_mode: Some(0o640),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "host".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/srv".into(),
                    type_: None,
                }),
                ..Default::default()
            },
        ]);
        t
    }

    fn fetched(conf: &str) -> Fetched {
        Fetched::from([
            (
                (ConfigKind::ConfigMap, "web-conf".to_string()),
                Some(BTreeMap::from([(
                    "index.html".to_string(),
                    conf.as_bytes().to_vec(),
                )])),
            ),
            (
                (ConfigKind::Secret, "web-tls".to_string()),
                Some(BTreeMap::from([("tls.key".to_string(), b"k".to_vec())])),
            ),
        ])
    }

    #[test]
    fn volumes_are_found_with_their_modes() {
        let v = config_volumes(&template());
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].kind, v[0].mode, v[0].index),
            (ConfigKind::ConfigMap, 0o644, 0)
        );
        assert_eq!(
            (v[1].kind, v[1].mode, v[1].index),
            (ConfigKind::Secret, 0o640, 1)
        );
        let plain = crate::fixtures::template("busybox");
        assert!(config_volumes(&plain).is_empty());
        assert_eq!(resolve("ns", &[], &Fetched::new()), Ok(None));
    }

    #[test]
    fn the_hash_follows_the_data() {
        let v = config_volumes(&template());
        let a = resolve("ns", &v, &fetched("one")).unwrap().unwrap();
        let again = resolve("ns", &v, &fetched("one")).unwrap().unwrap();
        let b = resolve("ns", &v, &fetched("two")).unwrap().unwrap();
        assert_eq!(a.hash, again.hash);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.data["conf.index.html"], b"one");
        assert_eq!(a.layout["tls"].mode, 0o640);
        // A mode is part of the files, so of the hash.
        let mut other_mode = v.clone();
        other_mode[1].mode = 0o600;
        assert_ne!(
            resolve("ns", &other_mode, &fetched("one"))
                .unwrap()
                .unwrap()
                .hash,
            a.hash
        );
    }

    #[test]
    fn missing_objects_are_reported_unless_optional() {
        let mut v = config_volumes(&template());
        let mut f = fetched("one");
        f.insert((ConfigKind::Secret, "web-tls".into()), None);
        let problem = resolve("ns", &v, &f).unwrap_err();
        assert_eq!(problem.reason, REASON_CONFIG_NOT_FOUND);
        assert_eq!(problem.problems.len(), 1);
        assert!(problem.problems[0]
            .starts_with("spec.template.spec.volumes[1].secret: Secret ns/web-tls not found"));
        v[1].optional = true;
        let r = resolve("ns", &v, &f).unwrap().unwrap();
        assert!(r.layout.contains_key("tls"));
        assert!(!r.data.keys().any(|k| k.starts_with("tls.")));
    }

    #[test]
    fn unusable_keys_and_oversized_data_are_invalid() {
        let v = config_volumes(&template());
        let mut f = fetched("one");
        f.insert(
            (ConfigKind::ConfigMap, "web-conf".into()),
            Some(BTreeMap::from([("../escape".to_string(), vec![])])),
        );
        assert_eq!(
            resolve("ns", &v, &f).unwrap_err().reason,
            REASON_INVALID_CONFIG
        );
        let big = "x".repeat(MAX_BUNDLE_BYTES + 1);
        let problem = resolve("ns", &v, &fetched(&big)).unwrap_err();
        assert_eq!(problem.reason, REASON_INVALID_CONFIG);
        assert!(problem.problems[0].contains("bytes"), "{problem:?}");
    }

    #[test]
    fn localizing_replaces_only_config_volumes() {
        let v = config_volumes(&template());
        let r = resolve("ns", &v, &fetched("one")).unwrap().unwrap();
        let t = localize(&template(), "ns", "web", Some(&r));
        let vols = t.spec.unwrap().volumes.unwrap();
        let hp = vols[0].host_path.as_ref().unwrap();
        assert_eq!(
            hp.path,
            format!(
                "/etc/kubernetes/static-pod-resources/ns/web/{}/conf",
                r.hash
            )
        );
        assert_eq!(hp.type_.as_deref(), Some("Directory"));
        assert!(vols[0].config_map.is_none() && vols[1].secret.is_none());
        assert_eq!(vols[2].host_path.as_ref().unwrap().path, "/srv");
        assert_eq!(
            t.metadata.unwrap().annotations.unwrap()[CONFIG_HASH],
            r.hash
        );
        // Our annotation is ours: a template without configuration loses it.
        let mut plain = crate::fixtures::template("busybox");
        plain
            .metadata
            .get_or_insert_with(Default::default)
            .annotations = Some(BTreeMap::from([(
            CONFIG_HASH.to_string(),
            "0123456789".to_string(),
        )]));
        assert!(localize(&plain, "ns", "web", None)
            .metadata
            .unwrap()
            .annotations
            .is_none());
    }

    #[test]
    fn cached_data_is_used_only_while_the_watch_shows_it_unchanged() {
        let cache = ConfigCache::default();
        let key: ObjectKey = (ConfigKind::ConfigMap, "ns".into(), "conf".into());
        let data = Some(BTreeMap::from([("k".to_string(), b"v1".to_vec())]));
        assert_eq!(cache.lookup(&key), None);
        // Read before the watch saw it: the read's version is current.
        cache.store(key.clone(), "10".into(), data.clone());
        assert_eq!(cache.lookup(&key), Some(data.clone()));
        // The watch shows a change: the read is stale.
        cache.observe(key.clone(), Some("11".into()));
        assert_eq!(cache.lookup(&key), None);
        // A read that raced the change and returned the old version stays unused.
        cache.store(key.clone(), "10".into(), data.clone());
        assert_eq!(cache.lookup(&key), None);
        cache.store(key.clone(), "11".into(), None);
        assert_eq!(cache.lookup(&key), Some(None));
        // Deleted (or named by no set): nothing kept.
        cache.observe(key.clone(), None);
        assert_eq!(cache.lookup(&key), None);
    }

    #[test]
    fn bundles_are_immutable_labelled_and_keyed_by_volume() {
        let v = config_volumes(&template());
        let r = resolve("ns", &v, &fetched("one")).unwrap().unwrap();
        let b = bundle("ns", "web", &r, "sps-system");
        assert_eq!(
            b.metadata.name.as_deref(),
            Some(&*format!("staticpodset.ns.web.{}", r.hash))
        );
        assert_eq!(b.metadata.namespace.as_deref(), Some("sps-system"));
        assert_eq!(b.immutable, Some(true));
        let labels = b.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_SET_NAMESPACE], "ns");
        assert_eq!(labels[CONFIG_HASH], r.hash);
        let layout: Layout =
            serde_json::from_str(&b.metadata.annotations.unwrap()[ANNOTATION_VOLUMES]).unwrap();
        assert_eq!(layout, r.layout);
        let data = b.data.unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["conf.index.html", "tls.tls.key"]
        );
    }
}
