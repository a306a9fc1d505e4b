//! Plain-text tables as kubectl prints them: upper-case headers, columns left-aligned and three
//! spaces apart, no trailing blanks. Pure.

/// What a table shows for an absent value, as kubectl does.
pub const NONE: &str = "<none>";

/// The table with `header` and `rows` (each as long as `header`), one line per row, each line
/// ending in a newline.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `value`, or [`NONE`] when it is absent or empty.
pub fn or_none(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => NONE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_blanks() {
        let rows = vec![
            vec!["1".to_string(), "abc".to_string(), "".to_string()],
            vec!["10".to_string(), "d".to_string(), "why".to_string()],
        ];
        assert_eq!(
            render(&["N", "HASH", "CAUSE"], &rows),
            "N    HASH   CAUSE\n1    abc\n10   d      why\n"
        );
        assert_eq!(or_none(None), "<none>");
        assert_eq!(or_none(Some("")), "<none>");
        assert_eq!(or_none(Some("x")), "x");
    }
}
