//! The one parser for durations on both binaries' command lines.

use std::time::Duration;

/// Parses a command-line duration: anything `humantime` reads (`500ms`, `30s`, `5m`, `1h30m`),
/// or a bare number of seconds (`90`), which the chart and older flags pass.
pub fn parse_flag(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("{text:?} is not a duration: {e}"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse_flag("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_flag("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_flag(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse_flag("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_flag("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_flag("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "s", "5x", "-1s", "five"] {
            assert!(parse_flag(bad).is_err(), "{bad}");
        }
    }
}
