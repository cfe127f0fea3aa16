//! `tlsfront stats`'s table: the control socket's JSON (`Stats::to_json`)
//! laid out with one column per worker and a total column.

/// Renders the JSON of `Stats::to_json` as a table: one column per
/// worker and a total column.
pub fn render_table(json: &serde_json::Value) -> String {
    let workers = json["workers"].as_array().cloned().unwrap_or_default();
    let total = json["total"].as_object().cloned().unwrap_or_default();
    let mut header = vec!["counter".to_string()];
    for w in &workers {
        let cpu = w["cpu"]
            .as_u64()
            .map(|c| format!("@cpu{c}"))
            .unwrap_or_default();
        header.push(format!("w{}{cpu}", w["worker"]));
    }
    header.push("total".to_string());
    let mut rows = vec![header];
    for name in total.keys() {
        let mut row = vec![name.clone()];
        for w in &workers {
            row.push(w[name.as_str()].to_string());
        }
        row.push(total[name].to_string());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<w$}", w = widths[i]));
            } else {
                out.push_str(&format!("  {cell:>w$}", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}
