//! Values shared by the unit tests of several modules.

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use staticpodset_api::AssignedPod;

/// The entry set `set` (namespace `ns`) writes for `revision`.
pub fn entry(set: &str, revision: &str) -> AssignedPod {
    AssignedPod {
        set_namespace: "ns".into(),
        set_name: set.into(),
        revision: revision.into(),
        revision_name: format!("{set}-{revision}"),
        file_name: format!("staticpodset_ns_{set}.yaml"),
        ..Default::default()
    }
}

/// A pod template of one container `c` running `image`.
pub fn template(image: &str) -> PodTemplateSpec {
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
