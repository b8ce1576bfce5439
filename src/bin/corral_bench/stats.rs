//! Percentiles and the result table.

use std::time::Duration;

use serde::Serialize;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and p99 of a sample set, with the sample count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Dist {
    pub p50: f64,
    pub p99: f64,
    pub n: usize,
}

impl Dist {
    pub fn of(samples: &[f64]) -> Option<Dist> {
        Some(Dist {
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            n: samples.len(),
        })
    }
}

/// How a metric is judged against its target.
#[derive(Debug, Clone, Serialize)]
pub enum Target {
    /// corral p50 / floor p50 at most this.
    RatioAtMost(f64),
    /// corral p50 below this absolute value (in the metric's unit).
    Below(f64),
    /// corral p50 at most this absolute value.
    AtMost(f64),
    /// Informational, no target.
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    pub corral: Option<Dist>,
    pub floor: Option<Dist>,
    pub ratio: Option<f64>,
    pub target: Target,
    pub target_text: String,
    pub pass: Option<bool>,
}

impl Row {
    pub fn new(metric: &str, unit: &str, corral: &[f64], floor: &[f64], target: Target) -> Row {
        let corral = Dist::of(corral);
        let floor = Dist::of(floor);
        let ratio = match (corral, floor) {
            (Some(c), Some(f)) if f.p50 > 0.0 => Some(c.p50 / f.p50),
            _ => None,
        };
        let (pass, target_text) = match &target {
            Target::RatioAtMost(r) => (ratio.map(|x| x <= *r), format!("<= {r}x floor")),
            Target::Below(b) => (corral.map(|c| c.p50 < *b), format!("< {b} {unit}")),
            Target::AtMost(b) => (corral.map(|c| c.p50 <= *b), format!("<= {b} {unit}")),
            Target::None => (None, "-".into()),
        };
        Row {
            metric: metric.into(),
            unit: unit.into(),
            corral,
            floor,
            ratio,
            target,
            target_text,
            pass,
        }
    }
}

fn fmt_dist(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!("{:.3} / {:.3} (n={})", d.p50, d.p99, d.n),
        None => "-".into(),
    }
}

/// A Markdown table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | unit | corral p50 / p99 | floor p50 / p99 | ratio | target | result |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let result = match r.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "-",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.metric,
            r.unit,
            fmt_dist(&r.corral),
            fmt_dist(&r.floor),
            r.ratio.map(|x| format!("{x:.2}x")).unwrap_or("-".into()),
            r.target_text,
            result
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
    }

    #[test]
    fn ratio_and_verdict() {
        let r = Row::new("x", "ms", &[4.0], &[2.0], Target::RatioAtMost(2.0));
        assert_eq!(r.ratio, Some(2.0));
        assert_eq!(r.pass, Some(true));
        let r = Row::new("x", "ms", &[10.0], &[], Target::Below(10.0));
        assert_eq!(r.pass, Some(false));
    }
}
