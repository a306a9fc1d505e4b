//! The merge patches `rollout undo`, `pause`, `resume` and `restart` send: each changes exactly
//! the field kubectl's command of the same name changes. Pure.

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use staticpodset_api::keys::{ANNOTATION_RESTARTED_AT, ANNOTATION_ROLLBACK_TO};

use crate::plugin::error::PluginError;

/// Asks the operator to restore revision `number`'s template: the set's
/// `staticpods.dev/rollback-to` annotation (a string, as annotations are).
pub fn rollback_to(number: i64) -> Value {
    json!({"metadata": {"annotations": {ANNOTATION_ROLLBACK_TO: number.to_string()}}})
}

/// Sets `spec.paused` to `want` on set `name`, whose `spec.paused` is `paused`; refused, as
/// kubectl refuses it, when nothing would change.
pub fn pause(name: &str, paused: bool, want: bool) -> Result<Value, PluginError> {
    if paused == want {
        return Err(PluginError::PauseUnchanged {
            name: name.to_string(),
            state: if want {
                "is already paused"
            } else {
                "is not paused"
            },
        });
    }
    Ok(json!({"spec": {"paused": want}}))
}

/// A new `staticpods.dev/restartedAt` on the pod template: a new template, so a new revision
/// that restarts every node's pod, as `kubectl rollout restart` does with
/// `kubectl.kubernetes.io/restartedAt`.
pub fn restart(now: Timestamp) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {
        ANNOTATION_RESTARTED_AT: restarted_at(now),
    }}}}})
}

/// `now` in RFC 3339, to the second, in UTC (`2025-06-01T12:00:00Z`).
pub fn restarted_at(now: Timestamp) -> String {
    match Timestamp::from_second(now.as_second()) {
        Ok(second) => second.to_string(),
        Err(_) => now.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_is_the_annotation_as_a_string() {
        assert_eq!(
            rollback_to(3),
            json!({"metadata": {"annotations": {"staticpods.dev/rollback-to": "3"}}})
        );
    }

    #[test]
    fn pause_and_resume_flip_spec_paused_or_are_refused() {
        assert_eq!(
            pause("web", false, true).unwrap(),
            json!({"spec": {"paused": true}})
        );
        assert_eq!(
            pause("web", true, false).unwrap(),
            json!({"spec": {"paused": false}})
        );
        assert_eq!(
            pause("web", true, true).unwrap_err().to_string(),
            "staticpodsets.staticpods.dev \"web\" is already paused"
        );
        assert_eq!(
            pause("web", false, false).unwrap_err().to_string(),
            "staticpodsets.staticpods.dev \"web\" is not paused"
        );
    }

    #[test]
    fn restart_stamps_the_template_in_rfc3339_seconds() {
        let now: Timestamp = "2025-06-01T12:00:00.123456Z".parse().unwrap();
        assert_eq!(restarted_at(now), "2025-06-01T12:00:00Z");
        assert_eq!(
            restart(now),
            json!({"spec": {"template": {"metadata": {"annotations": {
                "staticpods.dev/restartedAt": "2025-06-01T12:00:00Z"
            }}}}})
        );
    }
}
