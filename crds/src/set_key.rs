//! The one name both binaries use for a StaticPodSet: its namespace and name.

use std::fmt;

use crate::node_static_pods::AssignedPod;

/// A StaticPodSet, by namespace and name. Displays as `<namespace>/<name>`, the form the
/// `staticpods.dev/set` annotation carries and every log line and Event uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetKey {
    /// The set's namespace.
    pub namespace: String,
    /// The set's name.
    pub name: String,
}

impl SetKey {
    /// The key of the set `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of the set a node's assignment comes from.
    pub fn of(pod: &AssignedPod) -> Self {
        Self::new(pod.set_namespace.clone(), pod.set_name.clone())
    }

    /// Parses `<namespace>/<name>` (the `staticpods.dev/set` annotation); `None` unless both
    /// parts are non-empty.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Self::new(namespace, name))
    }
}

impl fmt::Display for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_parses_back() {
        let key = SetKey::new("kube-system", "vip");
        assert_eq!(key.to_string(), "kube-system/vip");
        assert_eq!(SetKey::parse("kube-system/vip"), Some(key));
        for bad in ["", "/", "a/", "/b", "a/b/c", "ab"] {
            assert_eq!(SetKey::parse(bad), None, "{bad}");
        }
    }
}
