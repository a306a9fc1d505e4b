//! Which selected nodes a set may run on, as the DaemonSet controller decides it from taints
//! and tolerations. Pure.
//!
//! The kubelet runs a static pod whatever the node's taints say, so the operator is the only
//! place that can respect them. The rules are the DaemonSet controller's: a node is targeted only
//! if the pod tolerates every `NoSchedule` and `NoExecute` taint on it, counting the tolerations
//! the controller adds to every daemon pod. A pod that already runs on a node keeps running
//! there when only a `NoSchedule` taint is not tolerated (as a DaemonSet's pod does: NoSchedule
//! keeps new pods away, NoExecute evicts); an untolerated `NoExecute` taint removes it.
//! `tolerationSeconds` is not a countdown here: a toleration that names it tolerates the taint
//! (the DaemonSet controller's own placement check ignores it too; only eviction looks at it).

use k8s_openapi::api::core::v1::{Node, PodSpec, Taint, Toleration};

/// Taint effect that keeps new pods off a node.
pub const NO_SCHEDULE: &str = "NoSchedule";
/// Taint effect that evicts pods that do not tolerate it.
pub const NO_EXECUTE: &str = "NoExecute";

/// The tolerations the DaemonSet controller adds to every daemon pod
/// (`AddOrUpdateDaemonPodTolerations`), so that a node-level daemon keeps running on a node in
/// trouble: `(key, effect)`, each with operator `Exists`.
const DAEMON_TOLERATIONS: &[(&str, &str)] = &[
    ("node.kubernetes.io/not-ready", NO_EXECUTE),
    ("node.kubernetes.io/unreachable", NO_EXECUTE),
    ("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/unschedulable", NO_SCHEDULE),
];
/// Added only for pods on the host network, which need no pod network to work.
const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// Whether `toleration` tolerates `taint` (the scheduler's `ToleratesTaint`): the effect matches
/// (an empty effect matches all), the key matches (an empty key with `Exists` matches all), and
/// the value is equal for `Equal` (or an empty operator) or ignored for `Exists`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "Exists" => true,
        "" | "Equal" => {
            // An empty key is only valid with Exists; with Equal it matches nothing.
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The template's tolerations plus the DaemonSet controller's automatic ones.
pub fn daemon_tolerations(spec: Option<&PodSpec>) -> Vec<Toleration> {
    let mut out: Vec<Toleration> = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".into()),
        effect: Some(effect.to_string()),
        ..Default::default()
    };
    out.extend(DAEMON_TOLERATIONS.iter().map(|(k, e)| exists(k, e)));
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        out.push(exists(NETWORK_UNAVAILABLE, NO_SCHEDULE));
    }
    out
}

/// The node's `NoSchedule` and `NoExecute` taints that no toleration tolerates. Empty when the
/// set may run there. `running`: the set already has its entry on the node, so only
/// `NoExecute` taints count.
pub fn untolerated<'a>(
    tolerations: &[Toleration],
    node: &'a Node,
    running: bool,
) -> Vec<&'a Taint> {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == NO_EXECUTE || (!running && t.effect == NO_SCHEDULE))
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .collect()
}

/// A taint as `kubectl describe node` shows it: `key=value:Effect`, or `key:Effect`.
pub fn describe(taint: &Taint) -> String {
    match taint.value.as_deref().filter(|v| !v.is_empty()) {
        Some(value) => format!("{}={value}:{}", taint.key, taint.effect),
        None => format!("{}:{}", taint.key, taint.effect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(key: &str, operator: &str, value: Option<&str>, effect: &str) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_string()),
            operator: (!operator.is_empty()).then(|| operator.to_string()),
            value: value.map(str::to_string),
            effect: (!effect.is_empty()).then(|| effect.to_string()),
            toleration_seconds: None,
        }
    }

    fn node(taints: Vec<Taint>) -> Node {
        Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_operator_and_effect() {
        let effects = [NO_SCHEDULE, NO_EXECUTE, "PreferNoSchedule"];
        for taint_effect in effects {
            let t = taint("k", Some("v"), taint_effect);
            for tol_effect in ["", NO_SCHEDULE, NO_EXECUTE, "PreferNoSchedule"] {
                let effect_ok = tol_effect.is_empty() || tol_effect == taint_effect;
                let case =
                    |k: &str, op: &str, v: Option<&str>| tolerates(&tol(k, op, v, tol_effect), &t);
                // Exists on the key, whatever the value.
                assert_eq!(
                    case("k", "Exists", None),
                    effect_ok,
                    "{taint_effect}/{tol_effect}"
                );
                // Exists without a key: every taint of the effect.
                assert_eq!(case("", "Exists", None), effect_ok);
                // Equal (explicit or by default): the value must match.
                assert_eq!(case("k", "Equal", Some("v")), effect_ok);
                assert_eq!(case("k", "", Some("v")), effect_ok);
                assert!(!case("k", "Equal", Some("w")));
                assert!(!case("k", "Equal", None));
                // Another key, an empty key with Equal, an unknown operator: never.
                assert!(!case("other", "Exists", None));
                assert!(!case("", "Equal", Some("v")));
                assert!(!case("k", "Gt", Some("v")));
            }
        }
        // A taint without value is matched by Equal with an empty or absent value.
        let bare = taint("k", None, NO_SCHEDULE);
        assert!(tolerates(&tol("k", "Equal", None, ""), &bare));
        assert!(tolerates(&tol("k", "Equal", Some(""), ""), &bare));
        assert!(!tolerates(&tol("k", "Equal", Some("v"), ""), &bare));
    }

    #[test]
    fn control_plane_nodes_need_the_toleration() {
        let cp = node(vec![taint(
            "node-role.kubernetes.io/control-plane",
            None,
            NO_SCHEDULE,
        )]);
        let plain = daemon_tolerations(Some(&PodSpec::default()));
        assert_eq!(untolerated(&plain, &cp, false).len(), 1);
        // Already running there: a NoSchedule taint does not evict it.
        assert!(untolerated(&plain, &cp, true).is_empty());
        let tolerating = daemon_tolerations(Some(&PodSpec {
            tolerations: Some(vec![tol(
                "node-role.kubernetes.io/control-plane",
                "Exists",
                None,
                NO_SCHEDULE,
            )]),
            ..Default::default()
        }));
        assert!(untolerated(&tolerating, &cp, false).is_empty());
    }

    #[test]
    fn no_execute_removes_a_running_pod() {
        let n = node(vec![taint("dedicated", Some("db"), NO_EXECUTE)]);
        let plain = daemon_tolerations(None);
        let left = untolerated(&plain, &n, true);
        assert_eq!(left.len(), 1);
        assert_eq!(describe(left[0]), "dedicated=db:NoExecute");
        // PreferNoSchedule never excludes.
        let soft = node(vec![taint("k", None, "PreferNoSchedule")]);
        assert!(untolerated(&plain, &soft, false).is_empty());
    }

    #[test]
    fn daemon_tolerations_are_automatic() {
        let troubled = node(vec![
            taint("node.kubernetes.io/not-ready", None, NO_EXECUTE),
            taint("node.kubernetes.io/unreachable", None, NO_EXECUTE),
            taint("node.kubernetes.io/disk-pressure", None, NO_SCHEDULE),
            taint("node.kubernetes.io/memory-pressure", None, NO_SCHEDULE),
            taint("node.kubernetes.io/pid-pressure", None, NO_SCHEDULE),
            taint("node.kubernetes.io/unschedulable", None, NO_SCHEDULE),
        ]);
        assert!(untolerated(&daemon_tolerations(None), &troubled, false).is_empty());
        // network-unavailable only for host-network pods.
        let no_network = node(vec![taint(NETWORK_UNAVAILABLE, None, NO_SCHEDULE)]);
        assert_eq!(
            untolerated(
                &daemon_tolerations(Some(&PodSpec::default())),
                &no_network,
                false
            )
            .len(),
            1
        );
        let host = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        assert!(untolerated(&daemon_tolerations(Some(&host)), &no_network, false).is_empty());
    }
}
