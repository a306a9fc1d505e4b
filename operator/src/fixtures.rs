//! Values shared by the unit tests of several modules.

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
