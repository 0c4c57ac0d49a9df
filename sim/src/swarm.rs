//! Swarm ranges: scenario parameters drawn from the seed (TigerBeetle VOPR's swarm testing).
//!
//! A scenario may carry a `[swarm]` table mapping dotted keys of the scenario to ranges:
//!
//! ```toml
//! [swarm]
//! "relay.server.max_connections" = [32, 128]          # integer, inclusive
//! "churners[0].loops_per_node" = [2, 6]
//! "upstreams.flaky_fraction" = [0.0, 0.3]             # float (either bound a float)
//! "network.latency_ms" = { one_of = [[1, 5], [5, 50]] } # any TOML values
//! ```
//!
//! The seed derives every drawn value: each key gets its own SplitMix64 draw keyed by
//! (seed, key), independent of the simulator's RNG, so adding a swarm key never shifts the
//! world's randomness for the others, and the same seed always draws the same options. The
//! run prints the options it drew; replaying the seed draws them again. The drawn scenario
//! is checked like a hand-written one; at load time the all-low and all-high draws are
//! checked, so a typo in a key fails `check`, not a run an hour into a sweep.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::scenario::{Problem, Scenario};

/// One `[swarm]` range.
#[derive(Clone, Debug, PartialEq)]
pub enum SwarmRange {
    /// `[min, max]` of integers, inclusive.
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// `[min, max]` with a float bound; drawn uniformly, rounded to 6 decimals.
    Float {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// `{ one_of = [a, b, …] }`: one of the listed values, uniformly.
    OneOf(Vec<toml::Value>),
}

impl SwarmRange {
    fn from_value(value: toml::Value) -> Result<Self, String> {
        use toml::Value;
        const EXPECTED: &str = "expected [min, max] or { one_of = [values…] }";
        match value {
            Value::Array(bounds) if bounds.len() == 2 => match (&bounds[0], &bounds[1]) {
                (Value::Integer(min), Value::Integer(max)) if min <= max => Ok(Self::Int {
                    min: *min,
                    max: *max,
                }),
                (min, max) => match (as_f64(min), as_f64(max)) {
                    (Some(min), Some(max)) if min <= max && min.is_finite() && max.is_finite() => {
                        Ok(Self::Float { min, max })
                    }
                    (Some(_), Some(_)) => Err(format!(
                        "expected [min, max] with min <= max, got [{min}, {max}]"
                    )),
                    _ => Err(format!("{EXPECTED}, got [{min}, {max}]")),
                },
            },
            Value::Table(mut table) if table.len() == 1 && table.contains_key("one_of") => {
                match table.remove("one_of") {
                    Some(Value::Array(values)) if !values.is_empty() => Ok(Self::OneOf(values)),
                    _ => Err("expected one_of to be a non-empty array".to_owned()),
                }
            }
            other => Err(format!("{EXPECTED}, got {other}")),
        }
    }

    fn to_value(&self) -> toml::Value {
        use toml::Value;
        match self {
            Self::Int { min, max } => {
                Value::Array(vec![Value::Integer(*min), Value::Integer(*max)])
            }
            Self::Float { min, max } => Value::Array(vec![Value::Float(*min), Value::Float(*max)]),
            Self::OneOf(values) => Value::Table(
                [("one_of".to_owned(), Value::Array(values.clone()))]
                    .into_iter()
                    .collect(),
            ),
        }
    }

    /// The value `seed` draws for `key`.
    pub fn draw(&self, seed: u64, key: &str) -> toml::Value {
        let x = splitmix64(seed ^ crate::trace::fnv1a(key.as_bytes()));
        match self {
            Self::Int { min, max } => {
                let span = (i128::from(*max) - i128::from(*min) + 1) as u128;
                let offset = (u128::from(x) % span) as i128;
                toml::Value::Integer((i128::from(*min) + offset) as i64)
            }
            Self::Float { min, max } => {
                let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
                let value = ((min + (max - min) * unit) * 1e6).round() / 1e6;
                toml::Value::Float(value.clamp(*min, *max))
            }
            Self::OneOf(values) => values[(x % values.len() as u64) as usize].clone(),
        }
    }

    fn low(&self) -> toml::Value {
        match self {
            Self::Int { min, .. } => toml::Value::Integer(*min),
            Self::Float { min, .. } => toml::Value::Float(*min),
            Self::OneOf(values) => values[0].clone(),
        }
    }

    fn high(&self) -> toml::Value {
        match self {
            Self::Int { max, .. } => toml::Value::Integer(*max),
            Self::Float { max, .. } => toml::Value::Float(*max),
            Self::OneOf(values) => values[values.len() - 1].clone(),
        }
    }
}

fn as_f64(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

impl Serialize for SwarmRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SwarmRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_value(toml::Value::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// One option a seed drew.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    /// The dotted key.
    pub key: String,
    /// The value drawn.
    pub value: toml::Value,
}

impl fmt::Display for Draw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A swarm draw that does not make a valid scenario.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("swarm.\"{key}\" = {value}: {message}")]
pub struct SwarmError {
    /// The swarm key to blame (the last one applied, for errors of the whole scenario).
    pub key: String,
    /// The value drawn.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

/// The scenario `seed` draws: every swarm key set to its drawn value, the `[swarm]` table
/// emptied, validated. Returns the options in key order.
pub fn resolve(scenario: &Scenario, seed: u64) -> Result<(Scenario, Vec<Draw>), SwarmError> {
    resolve_with(scenario, |key, range| range.draw(seed, key))
}

/// Load-time check: the all-low and the all-high draws both make valid scenarios.
pub(crate) fn check(scenario: &Scenario) -> Option<Problem> {
    if scenario.swarm.is_empty() {
        return None;
    }
    [SwarmRange::low, SwarmRange::high]
        .into_iter()
        .find_map(|pick| resolve_with(scenario, |_, range| pick(range)).err())
        .map(|error| Problem {
            key: format!("swarm.\"{}\"", error.key),
            message: format!("{} (drawing {})", error.message, error.value),
        })
}

fn resolve_with(
    scenario: &Scenario,
    pick: impl Fn(&str, &SwarmRange) -> toml::Value,
) -> Result<(Scenario, Vec<Draw>), SwarmError> {
    let mut base = scenario.clone();
    let ranges = std::mem::take(&mut base.swarm);
    if ranges.is_empty() {
        return Ok((base, Vec::new()));
    }
    let mut document = toml::Value::try_from(&base).expect("scenarios always serialise");
    let mut draws = Vec::with_capacity(ranges.len());
    for (key, range) in &ranges {
        let value = pick(key, range);
        let error = |message: String| SwarmError {
            key: key.clone(),
            value: value.to_string(),
            message,
        };
        let steps = parse_path(key).map_err(error)?;
        set(&mut document, &steps, value.clone()).map_err(error)?;
        draws.push(Draw {
            key: key.clone(),
            value,
        });
    }
    let last = draws.last().expect("at least one range");
    let blame = |message: String| SwarmError {
        key: if draws.len() == 1 {
            last.key.clone()
        } else {
            draws
                .iter()
                .map(|d| d.key.as_str())
                .collect::<Vec<_>>()
                .join("\", \"")
        },
        value: if draws.len() == 1 {
            last.value.to_string()
        } else {
            draws
                .iter()
                .map(|d| d.value.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        message,
    };
    let resolved: Scenario = document
        .try_into()
        .map_err(|error: toml::de::Error| blame(error.message().trim().to_owned()))?;
    if let Some(problem) = resolved.problems().into_iter().next() {
        return Err(blame(format!("{}: {}", problem.key, problem.message)));
    }
    Ok((resolved, draws))
}

#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` → `[Key(a), Key(b), Index(2), Key(c)]`.
fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let bad = || {
        format!("expected a dotted key like `relay.server.max_connections` or `churners[0].nodes`, got `{path}`")
    };
    let mut steps = Vec::new();
    for segment in path.split('.') {
        let (name, mut rest) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(bad());
        }
        steps.push(Step::Key(name.to_owned()));
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            let index = rest[1..close].parse().map_err(|_| bad())?;
            steps.push(Step::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad());
            }
        }
    }
    Ok(steps)
}

fn set(document: &mut toml::Value, steps: &[Step], value: toml::Value) -> Result<(), String> {
    let mut here = document;
    let mut walked = String::new();
    for (position, step) in steps.iter().enumerate() {
        let last = position + 1 == steps.len();
        here = match (step, here) {
            (Step::Key(key), toml::Value::Table(table)) => {
                if last {
                    table.insert(key.clone(), value);
                    return Ok(());
                }
                walked = if walked.is_empty() {
                    key.clone()
                } else {
                    format!("{walked}.{key}")
                };
                table
                    .get_mut(key)
                    .ok_or_else(|| format!("the scenario has no `{walked}`"))?
            }
            (Step::Index(index), toml::Value::Array(items)) => {
                let len = items.len();
                walked = format!("{walked}[{index}]");
                if last {
                    return Err(format!("`{walked}`: expected a key after the index"));
                }
                items
                    .get_mut(*index)
                    .ok_or_else(|| format!("the scenario has no `{walked}` ({len} entries)"))?
            }
            (Step::Key(key), _) => return Err(format!("`{walked}` is not a table (at `{key}`)")),
            (Step::Index(_), _) => return Err(format!("`{walked}` is not an array")),
        };
    }
    Err("empty key".to_owned())
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_keys_and_indices() {
        assert_eq!(
            parse_path("churners[1].mix.keepalive").unwrap(),
            [
                Step::Key("churners".into()),
                Step::Index(1),
                Step::Key("mix".into()),
                Step::Key("keepalive".into())
            ]
        );
        for bad in ["", "a..b", "a[x]", "a[1", "a[1]b", "A.b", "a.b "] {
            assert!(parse_path(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn draws_stay_in_range_depend_on_seed_and_key_and_repeat() {
        let range = SwarmRange::Int { min: 50, max: 200 };
        let values: Vec<i64> = (0..500)
            .map(|seed| range.draw(seed, "k").as_integer().unwrap())
            .collect();
        assert!(values.iter().all(|v| (50..=200).contains(v)));
        assert!(
            values.contains(&50) && values.contains(&200),
            "bounds are reachable"
        );
        assert_eq!(range.draw(7, "k"), range.draw(7, "k"));
        let other_key: Vec<i64> = (0..500)
            .map(|seed| range.draw(seed, "j").as_integer().unwrap())
            .collect();
        assert_ne!(values, other_key);
        let float = SwarmRange::Float { min: 0.1, max: 0.2 };
        let f = float.draw(3, "f").as_float().unwrap();
        assert!((0.1..=0.2).contains(&f), "{f}");
        assert_eq!((f * 1e6).round() / 1e6, f, "rounded to 6 decimals");
        let full = SwarmRange::Int {
            min: i64::MIN,
            max: i64::MAX,
        };
        let _ = full.draw(1, "no overflow");
    }

    #[test]
    fn ranges_parse_from_toml_with_clear_errors() {
        let parse = |text: &str| {
            toml::from_str::<toml::Table>(&format!("r = {text}"))
                .map(|t| SwarmRange::from_value(t["r"].clone()))
                .unwrap()
        };
        assert_eq!(parse("[1, 3]"), Ok(SwarmRange::Int { min: 1, max: 3 }));
        assert_eq!(
            parse("[0, 0.5]"),
            Ok(SwarmRange::Float { min: 0.0, max: 0.5 })
        );
        assert_eq!(
            parse("{ one_of = [true, false] }"),
            Ok(SwarmRange::OneOf(vec![
                toml::Value::Boolean(true),
                toml::Value::Boolean(false)
            ]))
        );
        assert_eq!(
            parse("[3, 1]"),
            Err("expected [min, max] with min <= max, got [3, 1]".to_owned())
        );
        assert!(parse("[1, 2, 3]")
            .unwrap_err()
            .starts_with("expected [min, max] or"));
        assert!(parse("{ one_of = [] }").is_err());
        assert!(parse("{ any_of = [1] }").is_err());
    }
}
