//! A strict check of the Prometheus text exposition format
//! ([`check_prometheus_text`]), so that a scrape of `metrics.listen` is judged
//! by the format's rules, not by tlsfront's own renderer.

use std::collections::{BTreeMap, HashSet};

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

/// A Go `strconv.ParseFloat` value as the text format allows.
fn valid_value(s: &str) -> bool {
    matches!(s, "+Inf" | "-Inf" | "NaN") || (s.parse::<f64>().is_ok() && !s.contains("inf"))
}

/// Parses `{a="x",b="y"}` strictly; returns the labels in order.
fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut out = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                '\n' => return Err("newline in a label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated value of label {name}"))?;
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after label {name}: {rest:?}"));
        }
    }
    let mut seen = HashSet::new();
    for (n, _) in &out {
        if !seen.insert(n) {
            return Err(format!("label {n} twice"));
        }
    }
    Ok(out)
}

/// One sample line of the text format, as [`check_prometheus_text`] read it.
#[derive(Debug, Clone)]
pub struct PromSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl PromSample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`check_prometheus_text`] found: the families' types and the samples.
#[derive(Debug, Clone, Default)]
pub struct PromText {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<PromSample>,
}

impl PromText {
    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn select(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&PromSample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// Sum of [`PromText::select`].
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).iter().map(|s| s.value).sum()
    }
}

/// Checks `text` against the Prometheus text exposition format 0.0.4, more
/// strictly than a scraper would: every line is a comment, `# HELP`,
/// `# TYPE` or a well-formed sample; every sample belongs to a family
/// declared by a `# TYPE` before it (a histogram's `_bucket`, `_sum`,
/// `_count`), the lines of a family are one group, no family is declared
/// twice, no series (name and labels) appears twice; a histogram's buckets
/// have an `le` label, are cumulative, end with `+Inf` and that bucket
/// equals `_count`. Every error found is listed.
pub fn check_prometheus_text(text: &str) -> Result<PromText, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = PromText::default();
    let mut family_done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    if !text.ends_with('\n') {
        errors.push("the text does not end with a newline".to_string());
    }
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let words: Vec<&str> = c.trim_start().splitn(3, ' ').collect();
            match words.first().copied() {
                Some("TYPE") => {
                    if words.len() != 3 {
                        errors.push(format!("line {n}: TYPE needs a name and a type: {line:?}"));
                        continue;
                    }
                    let (name, ty) = (words[1], words[2].trim());
                    if !valid_metric_name(name) {
                        errors.push(format!("line {n}: bad metric name {name:?}"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        errors.push(format!("line {n}: bad type {ty:?}"));
                    }
                    if out.types.insert(name.to_string(), ty.to_string()).is_some() {
                        errors.push(format!("line {n}: family {name} declared twice"));
                    }
                    if let Some(prev) = current.replace(name.to_string()) {
                        family_done.insert(prev);
                    }
                }
                Some("HELP") if words.len() < 2 || !valid_metric_name(words[1]) => {
                    errors.push(format!("line {n}: bad HELP line {line:?}"));
                }
                _ => {}
            }
            continue;
        }
        // name{labels} value [timestamp]
        let (name_labels, rest) = match line.find('}') {
            Some(i) if line[..i].contains('{') => (&line[..=i], line[i + 1..].trim_start()),
            _ => match line.split_once(' ') {
                Some((a, b)) => (a, b),
                None => {
                    errors.push(format!("line {n}: no value: {line:?}"));
                    continue;
                }
            },
        };
        let (name, labels) = match name_labels.find('{') {
            Some(i) => (&name_labels[..i], &name_labels[i..]),
            None => (name_labels, ""),
        };
        if !valid_metric_name(name) {
            errors.push(format!("line {n}: bad metric name {name:?}"));
        }
        let labels = if labels.is_empty() {
            Vec::new()
        } else {
            match parse_labels(labels) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("line {n}: {e}: {line:?}"));
                    continue;
                }
            }
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        if parts.is_empty() || parts.len() > 2 || !valid_value(parts[0]) {
            errors.push(format!("line {n}: bad value/timestamp {rest:?}"));
            continue;
        }
        if parts.len() == 2 && parts[1].parse::<i64>().is_err() {
            errors.push(format!("line {n}: bad timestamp {:?}", parts[1]));
        }
        let value = match parts[0] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap(),
        };
        // Which family?
        let family = match &current {
            Some(f) => {
                let ty = out.types.get(f).map(String::as_str).unwrap_or("");
                let ok = name == f
                    || (ty == "histogram"
                        && [
                            format!("{f}_bucket"),
                            format!("{f}_sum"),
                            format!("{f}_count"),
                        ]
                        .contains(&name.to_string()))
                    || (ty == "summary"
                        && [format!("{f}_sum"), format!("{f}_count")].contains(&name.to_string()));
                ok.then(|| f.clone())
            }
            None => None,
        };
        if family.is_none() {
            let why = if out.types.contains_key(name)
                || family_done.iter().any(|f| name.starts_with(f.as_str()))
            {
                "outside its family's group"
            } else {
                "without a # TYPE line before it"
            };
            errors.push(format!("line {n}: sample {name} {why}"));
        }
        let mut sorted = labels.clone();
        sorted.sort();
        if !series.insert(format!("{name}{sorted:?}")) {
            errors.push(format!("line {n}: series {name}{labels:?} appears twice"));
        }
        out.samples.push(PromSample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets ending with +Inf == _count.
    for (family, ty) in &out.types {
        if ty != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in out
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let Some(le) = s.label("le") else {
                errors.push(format!("{family}_bucket without le: {s:?}"));
                continue;
            };
            let le = match le {
                "+Inf" => f64::INFINITY,
                v => match v.parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => {
                        errors.push(format!("{family}_bucket: bad le {v:?}"));
                        continue;
                    }
                },
            };
            let mut rest: Vec<_> = s
                .labels
                .iter()
                .filter(|(n, _)| n != "le")
                .cloned()
                .collect();
            rest.sort();
            by_series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((le, s.value));
        }
        if by_series.is_empty() {
            errors.push(format!("histogram {family} has no buckets"));
        }
        for (labels, buckets) in &by_series {
            for w in buckets.windows(2) {
                if !(w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
                    errors.push(format!(
                        "{family}{labels}: buckets not increasing/cumulative: {buckets:?}"
                    ));
                    break;
                }
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY {
                errors.push(format!("{family}{labels}: no +Inf bucket: {buckets:?}"));
            }
            let count: Vec<f64> = out
                .samples
                .iter()
                .filter(|s| {
                    let mut l = s.labels.clone();
                    l.sort();
                    s.name == format!("{family}_count") && format!("{l:?}") == *labels
                })
                .map(|s| s.value)
                .collect();
            if count != [last.1] {
                errors.push(format!(
                    "{family}{labels}: _count {count:?} differs from the +Inf bucket {}",
                    last.1
                ));
            }
            let has_sum = out.samples.iter().any(|s| {
                let mut l = s.labels.clone();
                l.sort();
                s.name == format!("{family}_sum") && format!("{l:?}") == *labels
            });
            if !has_sum {
                errors.push(format!("{family}{labels}: no _sum"));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod self_tests {
    use super::*;

    const GOOD: &str =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{w=\"0\"} 1\na_total{w=\"1\"} 2\n\
# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 1.5\nh_count 3\n";

    #[test]
    fn prometheus_check_accepts_a_valid_exposition() {
        let m = check_prometheus_text(GOOD).unwrap();
        assert_eq!(m.sum("a_total", &[]), 3.0);
        assert_eq!(m.types["h"], "histogram");
    }

    #[test]
    fn prometheus_check_finds_each_kind_of_error() {
        for (bad, why) in [
            ("a_total 1\n", "without a # TYPE"),
            ("# TYPE a counter\na 1\na 2\n", "appears twice"),
            ("# TYPE a counter\n# TYPE a counter\na 1\n", "declared twice"),
            ("# TYPE a counter\na{x=\"1} 1\n", "unterminated"),
            ("# TYPE a counter\na one\n", "bad value"),
            ("# TYPE a counter\n# TYPE b counter\nb 1\na 1\n", "outside its family"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "_count"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "cumulative"),
            ("# TYPE a counter\na 1", "newline"),
        ] {
            let errs = check_prometheus_text(bad).expect_err(bad);
            assert!(errs.iter().any(|e| e.contains(why)), "{bad:?}: {errs:?}");
        }
    }
}
