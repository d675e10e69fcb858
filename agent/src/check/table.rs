//! The `check` table for people: one row per host/port/family, the detail last and unpadded.

use egresswatch_wire::ProbeResult;

/// The table for people: one row per host/port/family.
pub fn render_table(results: &[ProbeResult]) -> String {
    render_table_labelled(results, |r| r.target.clone())
}

/// The table with the HOST cell of each row given by `host` (e.g. an MX exchanger and its domain).
pub fn render_table_labelled(
    results: &[ProbeResult],
    host: impl Fn(&ProbeResult) -> String,
) -> String {
    let header = [
        "HOST", "PORT", "FAMILY", "ADDRESS", "OUTCOME", "CONNECT", "TLS", "DETAIL",
    ];
    let rows: Vec<[String; 8]> = results
        .iter()
        .map(|r| {
            [
                printable(&host(r)),
                r.port.to_string(),
                r.family.to_string(),
                r.address
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.outcome.to_string(),
                r.timings
                    .connect_us
                    .map(|us| format!("{:.1} ms", f64::from(us) / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                r.tls
                    .as_ref()
                    .map(|t| t.version.clone())
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "-".into()),
                printable(&r.detail),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()).take(7) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 7 {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// Text from the network, made safe for a terminal: control characters become '?'.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::Outcome;

    #[test]
    fn table_escapes_control_characters() {
        let x = ProbeResult {
            target: "mx.example".into(),
            port: 25,
            outcome: Outcome::BadBanner,
            address: Some("198.18.0.25".parse().unwrap()),
            detail: "greeting was 554 \u{1b}[31mred".into(),
            ..Default::default()
        };
        let t = render_table(&[x]);
        assert!(!t.contains('\u{1b}'));
        assert!(t.starts_with("HOST"));
    }
}
