//! Renders a manifest as YAML that YAML 1.1 and YAML 1.2 readers decode identically.
//!
//! The kubelet reads manifests with a YAML 1.1 parser, where unquoted `yes`, `on`, `n`, `0755`,
//! `1_000` or `12:30` are booleans and numbers. General-purpose YAML 1.2 emitters leave those
//! unquoted, and a string field that decodes as a boolean makes the whole manifest fail to parse,
//! which kills the running static pod. So this emitter writes a string plain only when it is
//! unmistakably a string in both versions, and double-quotes (with JSON escapes) everything else.

use serde_json::Value;

/// Renders `value` as a block-style YAML document (ending in a newline).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(
    out: &mut String,
    map: &serde_json::Map<String, Value>,
    indent: usize,
    inline_first: bool,
) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !inline_first {
            pad(out, indent);
        }
        out.push_str(&string_text(key));
        out.push(':');
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                write_map(out, inner, indent + 2, false);
            }
            // Sequences sit at their key's indentation, as kubectl and kubeadm write them.
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, indent);
            }
            scalar => {
                out.push(' ');
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(inner) if !inner.is_empty() => {
                out.push(' ');
                write_map(out, inner, indent + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, indent + 2);
            }
            scalar => {
                out.push(' ');
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar, or an empty collection in flow style.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

fn string_text(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_owned()
    } else {
        // JSON string escapes are a subset of YAML double-quoted escapes in both versions.
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// Words YAML 1.1 resolves to booleans or null (in any of their accepted spellings).
const YAML11_WORDS: &[&str] = &["y", "yes", "n", "no", "true", "false", "on", "off", "null"];

/// A string starting with a letter, `/`, or dashes then a letter (command-line flags), made only of
/// characters that carry no YAML meaning there, and not a YAML 1.1 keyword. That start rules out
/// every number, date, sexagesimal, special float and document marker in both versions.
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.trim_start_matches('-').chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || (first == '/' && !s.starts_with('-')))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-:=@+".contains(c))
        && !s.ends_with(':')
        && !YAML11_WORDS.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(value: &Value) {
        let text = to_yaml(value);
        let back: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(&back, value, "\n{text}");
    }

    #[test]
    fn writes_kubernetes_style_block_yaml() {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "vip", "annotations": {"staticpods.dev/set": "kube-system/vip"}},
            "spec": {
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                "args": ["--port=8080", "yes"], "env": []}],
                "hostNetwork": true,
                "securityContext": {},
            },
        });
        assert_eq!(
            to_yaml(&pod),
            "apiVersion: v1\n\
             kind: Pod\n\
             metadata:\n  annotations:\n    staticpods.dev/set: kube-system/vip\n  name: vip\n\
             spec:\n  containers:\n  - args:\n    - --port=8080\n    - \"yes\"\n    env: []\n    \
             image: registry.k8s.io/pause:3.10\n    name: c\n  hostNetwork: true\n  securityContext: {}\n"
        );
        round_trip(&pod);
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for word in [
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "N",
            "true",
            "null",
            "~",
            "0755",
            "0x1f",
            "1e3",
            "1_000",
            ".5",
            ".inf",
            "12:30",
            "2024-01-01",
            "",
            " x",
            "x ",
            "a: b",
            "- c",
            "#d",
            "a #b",
            "key:",
            "*ref",
            "&anchor",
            "!tag",
            "%dir",
            "@at",
            "`tick",
            "'q'",
            "\"dq\"",
            "line\nbreak",
            "tab\t",
            "ünïcode",
            "{x}",
            "[x]",
            "a,b",
            "?",
            "|",
            ">",
        ] {
            assert!(!is_plain_safe(word), "{word:?} should be quoted");
            round_trip(&json!({ word: word }));
        }
        for plain in [
            "v1",
            "registry.k8s.io/pause:3.10",
            "/etc/kubernetes",
            "--x=1",
            "-v",
            "yesno",
        ] {
            assert!(is_plain_safe(plain), "{plain:?} should be plain");
            round_trip(&json!({ plain: plain }));
        }
        for quoted in ["-", "--", "---", "-1", "--1", "-.inf", "-/x", "- x"] {
            assert!(!is_plain_safe(quoted), "{quoted:?} should be quoted");
            round_trip(&json!([quoted]));
        }
    }

    #[test]
    fn nested_and_empty_collections_round_trip() {
        round_trip(&json!({
            "a": [[1, 2], [], [{"b": null}], {"c": [true, false, 1.5, -3, 0]}],
            "d": {"e": {"f": {}}},
            "g": [],
        }));
        round_trip(&json!([]));
        round_trip(&json!({}));
        round_trip(&json!("scalar"));
    }
}
