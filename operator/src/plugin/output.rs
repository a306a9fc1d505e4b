//! `-o json|yaml`: the machine-readable forms of what the plugin prints. Pure.

use serde::Serialize;

use crate::plugin::error::PluginError;

/// The output formats `-o` takes besides the default table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Indented JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `value` in `format`, ending in a newline; `what` names it in an error.
pub fn render<T: Serialize>(
    value: &T,
    format: Format,
    what: &'static str,
) -> Result<String, PluginError> {
    match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|text| text + "\n")
            .map_err(|e| PluginError::Output {
                what,
                format: "json",
                message: e.to_string(),
            }),
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| PluginError::Output {
            what,
            format: "yaml",
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_end_in_a_newline() {
        let value = serde_json::json!({"revision": 2});
        assert_eq!(
            render(&value, Format::Json, "x").unwrap(),
            "{\n  \"revision\": 2\n}\n"
        );
        assert_eq!(render(&value, Format::Yaml, "x").unwrap(), "revision: 2\n");
    }
}
