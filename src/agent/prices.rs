//! Model prices and the cost of a usage record.
//!
//! Prices are US dollars per million tokens for input, output, cache writes and cache reads.
//! The built-in table covers current Claude and OpenAI models; `[prices."<model>"]` in the
//! config overrides or adds entries. Model names are matched exactly first, then after dropping
//! a context suffix like `[1m]`, then by the longest known prefix (`claude-opus-4-8-20261001`
//! prices as `claude-opus-4-8`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

impl Price {
    /// Anthropic's rule: cache writes cost 1.25× input, cache reads 0.1× input.
    const fn anthropic(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cache_write: input * 1.25,
            cache_read: input * 0.1,
        }
    }
    /// OpenAI: cached input at the cached rate; writes are not billed extra.
    const fn openai(input: f64, cached: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cache_write: input,
            cache_read: cached,
        }
    }
}

/// Tokens of one usage record, split the way prices apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Input tokens billed at the input rate (not cached, not cache writes).
    pub input: u64,
    pub output: u64,
    pub cache_write: u64,
    pub cache_read: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_write + self.cache_read
    }
    pub fn add(&mut self, o: &Tokens) {
        self.input += o.input;
        self.output += o.output;
        self.cache_write += o.cache_write;
        self.cache_read += o.cache_read;
    }
}

const BUILT_IN: &[(&str, Price)] = &[
    ("claude-opus-4-8", Price::anthropic(5.0, 25.0)),
    ("claude-opus-4-7", Price::anthropic(5.0, 25.0)),
    ("claude-opus-4-6", Price::anthropic(5.0, 25.0)),
    ("claude-opus-4-5", Price::anthropic(5.0, 25.0)),
    ("claude-opus-4-1", Price::anthropic(15.0, 75.0)),
    ("claude-opus-4", Price::anthropic(15.0, 75.0)),
    ("claude-sonnet-4-6", Price::anthropic(3.0, 15.0)),
    ("claude-sonnet-4-5", Price::anthropic(3.0, 15.0)),
    ("claude-sonnet-4", Price::anthropic(3.0, 15.0)),
    ("claude-haiku-4-5", Price::anthropic(1.0, 5.0)),
    ("claude-3-5-haiku", Price::anthropic(0.8, 4.0)),
    ("gpt-6.1-sol", Price::openai(1.25, 0.125, 10.0)),
    ("gpt-6-sol", Price::openai(1.25, 0.125, 10.0)),
    ("gpt-5.5", Price::openai(1.25, 0.125, 10.0)),
    ("gpt-5-codex", Price::openai(1.25, 0.125, 10.0)),
    ("gpt-5-mini", Price::openai(0.25, 0.025, 2.0)),
    ("gpt-5", Price::openai(1.25, 0.125, 10.0)),
    ("o4-mini", Price::openai(1.1, 0.275, 4.4)),
];

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    overrides: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn new(overrides: BTreeMap<String, Price>) -> PriceTable {
        PriceTable { overrides }
    }

    pub fn get(&self, model: &str) -> Option<Price> {
        let base = model.split('[').next().unwrap_or(model).trim();
        for name in [model, base] {
            if let Some(p) = self.overrides.get(name) {
                return Some(*p);
            }
            if let Some((_, p)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
                return Some(*p);
            }
        }
        let over = self.overrides.iter().map(|(n, p)| (n.as_str(), *p));
        over.chain(BUILT_IN.iter().copied())
            .filter(|(n, _)| base.starts_with(n))
            .max_by_key(|(n, _)| n.len())
            .map(|(_, p)| p)
    }

    /// USD for `t` on `model`; `None` when the model has no price.
    pub fn cost(&self, model: &str, t: &Tokens) -> Option<f64> {
        let p = self.get(model)?;
        Some(
            (t.input as f64 * p.input
                + t.output as f64 * p.output
                + t.cache_write as f64 * p.cache_write
                + t.cache_read as f64 * p.cache_read)
                / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_cost_matches_the_cli() {
        // agent-clis.md: 1655 in, 17454 cache write, 24 out on opus → $0.1179625
        let t = Tokens {
            input: 1655,
            output: 24,
            cache_write: 17454,
            cache_read: 0,
        };
        let c = PriceTable::default()
            .cost("claude-opus-4-8[1m]", &t)
            .unwrap();
        assert!((c - 0.1179625).abs() < 1e-12, "{c}");
    }

    #[test]
    fn lookup_rules() {
        let mut o = BTreeMap::new();
        o.insert(
            "my-model".to_string(),
            Price {
                input: 1.0,
                output: 2.0,
                cache_write: 0.0,
                cache_read: 0.0,
            },
        );
        o.insert(
            "claude-opus-4-8".to_string(),
            Price {
                input: 9.0,
                output: 9.0,
                cache_write: 9.0,
                cache_read: 9.0,
            },
        );
        let t = PriceTable::new(o);
        assert_eq!(t.get("my-model").unwrap().output, 2.0);
        assert_eq!(
            t.get("claude-opus-4-8").unwrap().input,
            9.0,
            "overrides win"
        );
        assert_eq!(
            t.get("claude-sonnet-4-6-20270101").unwrap().input,
            3.0,
            "longest prefix"
        );
        assert_eq!(
            t.get("claude-opus-4-1-x").unwrap().input,
            15.0,
            "not claude-opus-4"
        );
        assert!(t.get("unknown").is_none());
        assert!(t.cost("unknown", &Tokens::default()).is_none());
    }
}
