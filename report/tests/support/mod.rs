//! What the report's tests share: reading Markdown tables.

/// The cells of a Markdown table row, trimmed.
pub fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}
