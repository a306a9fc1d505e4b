//! The CRD files checked in under `crds/` must be what the Rust types generate, and must fit
//! `kubectl apply`.

use std::path::Path;

/// Client-side `kubectl apply` stores the whole object as compact JSON in the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation, and the API server allows at most
/// 262,144 bytes of annotations per object. The margin leaves room for other annotations and for
/// the CRD to grow a little without surprises.
const ANNOTATION_LIMIT: usize = 262_144;
const MARGIN: usize = 62_144;

const REGENERATE: &str = "run `make crds` and commit the result";

#[test]
fn checked_in_crds_are_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The helm chart installs the same files from its own crds/ folder (helm reads no other path).
    let chart_dir = crate_dir.join("../charts/staticpodset/crds");
    let files = staticpodset_api::crd_files().expect("CRDs render as YAML");
    assert_eq!(files.len(), 3);
    for (name, generated) in files {
        for path in [crate_dir.join(&name), chart_dir.join(&name)] {
            check_file(&path, &generated);
        }
    }
}

fn check_file(path: &Path, generated: &str) {
    let checked_in = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGENERATE}", path.display()));
    assert!(
        checked_in == generated,
        "{} is stale: it differs from what the Rust types generate; {REGENERATE}",
        path.display()
    );
}

#[test]
fn crds_fit_the_last_applied_annotation() {
    for crd in staticpodset_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let size = serde_json::to_vec(&crd).expect("CRD serializes").len();
        assert!(
            size < ANNOTATION_LIMIT - MARGIN,
            "{name} is {size} bytes of compact JSON; client-side `kubectl apply` needs it well under \
             {ANNOTATION_LIMIT} (limit here {}) to fit the last-applied-configuration annotation",
            ANNOTATION_LIMIT - MARGIN
        );
    }
}

#[test]
fn checked_in_files_are_one_crd_each() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in staticpodset_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap_or_default();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
            .collect();
        assert_eq!(docs.len(), 1, "{name}: {REGENERATE}");
        assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
        assert_eq!(docs[0]["metadata"]["name"].as_str(), Some(name.as_str()));
    }
}
