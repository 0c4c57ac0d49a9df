//! Every problem in a scenario file, each at `file:line:col`: parsing that does not stop at
//! the first error.
//!
//! Three passes, each run only when the one before found nothing (a later pass would
//! otherwise report consequences of an earlier error):
//! 1. **syntax**: toml's recovering parser reports every malformed line;
//! 2. **schema** (unknown keys, wrong types, unknown variants): serde stops at the first
//!    error, so the document is deserialised again with the offending entry removed, until
//!    it deserialises or nothing more can be removed; an error caused by a removal (a
//!    missing field that was removed) is not reported;
//! 3. **semantics** ([`Scenario::problems`]): each problem names a dotted key
//!    (`faults[1].duration_s`), placed at that key in the file, or at the nearest table
//!    that holds it when the key is not written (a default).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use relay::config::line_column;
use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};
use toml::Spanned;

use super::Scenario;

/// A semantic problem: the dotted key at fault (`churners[0].stop_s`) and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key, as a user would write it.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: &str, message: String) -> Self {
        Self {
            key: key.to_owned(),
            message,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A problem placed in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Each schema pass removes at least one entry, so this bounds the passes of a file with
/// many errors; it is far above what anyone fixes in one go.
const SCHEMA_PASSES_MAX: usize = 100;

/// Parse and validate scenario text, or every problem found, in file order; the paths it
/// names are relative to `directory`.
pub(super) fn parse(text: &str, directory: &Path) -> Result<Scenario, Vec<Located>> {
    let (mut root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let mut located: Vec<Located> = syntax_errors
            .iter()
            .map(|error| locate_error(text, error, error.span().unwrap_or(0..0)))
            .collect();
        located.sort_by_key(|problem| (problem.line, problem.column));
        return Err(located);
    }
    resolve_paths(&mut root, directory);
    let scenario = deserialise_all(text, &root)?;
    let problems = scenario.problems();
    if problems.is_empty() {
        return Ok(scenario);
    }
    let mut located: Vec<Located> = problems
        .into_iter()
        .map(|problem| {
            let offset = key_offset(root.get_ref(), &problem.key);
            let (line, column) = line_column(text, offset);
            Located {
                line,
                column,
                message: problem.to_string(),
            }
        })
        .collect();
    located.sort_by_key(|problem| (problem.line, problem.column));
    Err(located)
}

/// Make the paths a scenario names (`upstreams.table`) absolute, relative to the scenario
/// file's `directory`, before they are read: the scenario then reads the same files however
/// it is serialised and loaded again (swarm draws, a shrunk scenario in another folder).
fn resolve_paths(root: &mut Spanned<DeTable<'_>>, directory: &Path) {
    let Some(DeValue::Table(upstreams)) = root.get_mut().get_mut("upstreams").map(Spanned::get_mut)
    else {
        return;
    };
    let Some(DeValue::String(table)) = upstreams.get_mut("table").map(Spanned::get_mut) else {
        return;
    };
    let joined = directory.join(table.as_ref());
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    *table = Cow::Owned(absolute.to_string_lossy().into_owned());
}

/// Deserialise `root`; on schema errors, remove each offending entry and try again, to
/// report them all.
fn deserialise_all<'i>(text: &str, root: &Spanned<DeTable<'i>>) -> Result<Scenario, Vec<Located>> {
    let mut working = root.clone();
    let mut found: Vec<Located> = Vec::new();
    let mut removed_keys: BTreeSet<String> = BTreeSet::new();
    let mut emptied: Vec<Range<usize>> = Vec::new();
    for _ in 0..SCHEMA_PASSES_MAX {
        let error = match Scenario::deserialize(Deserializer::from(working.clone())) {
            Ok(scenario) if found.is_empty() => return Ok(scenario),
            Ok(_) => break,
            Err(error) => error,
        };
        let Some(span) = error.span() else {
            if missing_field(error.message()).is_none_or(|field| !removed_keys.contains(field)) {
                found.push(locate_error(text, &error, 0..0));
            }
            break;
        };
        // An error about a table an earlier pass removed entries from (a field now
        // missing, an inline table now empty) is a consequence, not a problem.
        let span = element_at_fault(&working, &span, error.message()).unwrap_or(span);
        let caused_by_removal = emptied.contains(&span)
            || missing_field(error.message()).is_some_and(|field| removed_keys.contains(field));
        if !caused_by_removal {
            let problem = locate_error(text, &error, span.clone());
            if found.contains(&problem) {
                break;
            }
            found.push(problem);
        }
        match remove_entry_at(working.get_mut(), &span) {
            Some(Removed { key, container }) => {
                removed_keys.insert(key);
                emptied.extend(container);
            }
            None => break,
        }
    }
    found.sort_by_key(|problem| (problem.line, problem.column));
    Err(found)
}

/// The field a "missing field `x`" error names.
fn missing_field(message: &str) -> Option<&str> {
    message
        .trim()
        .strip_prefix("missing field `")?
        .split('`')
        .next()
}

/// What [`remove_entry_at`] removed: the key's name and the span of the table it was in.
struct Removed {
    key: String,
    container: Option<Range<usize>>,
}

/// Remove the innermost entry (a key with its value, or an element of an array of tables)
/// whose key or value covers `span`. (A table's own span covers only its header, so every
/// table is searched, not only the covering ones.)
fn remove_entry_at(table: &mut DeTable<'_>, span: &Range<usize>) -> Option<Removed> {
    let covers = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let mut covering = None;
    for (key, value) in table.iter_mut() {
        let value_span = value.span();
        let deeper = match value.get_mut() {
            DeValue::Table(inner) => remove_entry_at(inner, span).map(|removed| Removed {
                container: removed.container.or_else(|| Some(value_span.clone())),
                ..removed
            }),
            DeValue::Array(array) => remove_element_at(array, span),
            _ => None,
        };
        if deeper.is_some() {
            return deeper;
        }
        if covering.is_none() && (covers(key.span()) || covers(value_span)) {
            covering = Some(key.clone());
        }
    }
    let key = covering?;
    table.remove(&key);
    Some(Removed {
        key: key.into_inner().into_owned(),
        container: None,
    })
}

/// Within an array of tables: remove inside an element, or the element covering `span`.
fn remove_element_at(array: &mut DeArray<'_>, span: &Range<usize>) -> Option<Removed> {
    let covers = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let mut covering = None;
    for (index, element) in array.as_mut().iter_mut().enumerate() {
        let element_span = element.span();
        if let DeValue::Table(inner) = element.get_mut() {
            if let Some(removed) = remove_entry_at(inner, span) {
                return Some(Removed {
                    container: removed.container.or(Some(element_span)),
                    ..removed
                });
            }
        }
        if covering.is_none() && covers(element_span) {
            covering = Some(index);
        }
    }
    let index = covering?;
    let mut kept = DeArray::new();
    for (position, element) in array.iter().enumerate() {
        if position != index {
            kept.push(element.clone());
        }
    }
    *array = kept;
    Some(Removed {
        key: format!("[{index}]"),
        container: None,
    })
}

/// An error inside an internally tagged table (a `[[faults]]` entry) carries the span of
/// the whole array's first header: find the element that fails on its own, by
/// deserialising the document with only that element kept.
fn element_at_fault(
    root: &Spanned<DeTable<'_>>,
    span: &Range<usize>,
    message: &str,
) -> Option<Range<usize>> {
    let (key, array) = root.get_ref().iter().find_map(|(key, value)| {
        let array = value.get_ref().as_array()?;
        (value.span() == *span).then_some((key, array))
    })?;
    array.iter().find_map(|element| {
        let mut alone = root.clone();
        let mut kept = DeArray::new();
        kept.push(element.clone());
        let slot = alone.get_mut().get_mut(key)?;
        *slot.get_mut() = DeValue::Array(kept);
        match Scenario::deserialize(Deserializer::from(alone)) {
            Err(error) if error.message() == message => Some(element.span()),
            _ => None,
        }
    })
}

/// Where a toml error points (`span`), with its message in the words a scenario author
/// uses.
fn locate_error(text: &str, error: &toml::de::Error, span: Range<usize>) -> Located {
    let (line, column) = line_column(text, span.start);
    let mut message = plain_words(error.message().trim());
    if message == "duplicate key" {
        if let Some(key) = text.get(span) {
            message = format!("duplicate key `{}`", key.trim());
        }
    }
    Located {
        line,
        column,
        message,
    }
}

/// serde's type names (`expected u64`) as a scenario author would say them.
fn plain_words(message: &str) -> String {
    const WORDS: [(&str, &str); 10] = [
        ("expected u8", "expected a non-negative integer"),
        ("expected u16", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i32", "expected an integer"),
        ("expected i64", "expected an integer"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut message = message.to_owned();
    for (serde_words, plain) in WORDS {
        if let Some(at) = message.find(serde_words) {
            let end = at + serde_words.len();
            let whole_word = !message[end..].starts_with(|c: char| c.is_ascii_alphanumeric());
            if whole_word {
                message.replace_range(at..end, plain);
            }
        }
    }
    message
}

/// The byte offset of the dotted `key` (`a.b[2].c`, `swarm."relay.x"`) in the file: the
/// key itself when written, else the nearest enclosing entry that is, else the start.
fn key_offset(root: &DeTable<'_>, key: &str) -> usize {
    let mut offset = 0;
    let mut table = Some(root);
    let mut steps = key_steps(key).into_iter().peekable();
    while let Some(step) = steps.next() {
        let Some(current) = table else { break };
        let Some((name, value)) = current
            .iter()
            .find(|(name, _)| name.get_ref().as_ref() == step.name)
        else {
            break;
        };
        offset = name.span().start;
        let mut value = value;
        if let Some(index) = step.index {
            let Some(element) = value
                .get_ref()
                .as_array()
                .and_then(|array| array.get(index))
            else {
                break;
            };
            offset = element.span().start;
            value = element;
        }
        table = value.get_ref().as_table();
        if steps.peek().is_none() {
            break;
        }
    }
    offset
}

/// One step of a dotted key: a name and, for arrays of tables, an index.
struct KeyStep {
    name: String,
    index: Option<usize>,
}

/// `faults[1].duration_s` → `faults` `[1]`, `duration_s`; quoted segments stay whole.
fn key_steps(key: &str) -> Vec<KeyStep> {
    let mut steps = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        let (segment, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let mut step = KeyStep {
            name: segment.to_owned(),
            index: None,
        };
        rest = tail;
        if let Some(indexed) = rest.strip_prefix('[') {
            let end = indexed.find(']').unwrap_or(indexed.len());
            step.index = indexed[..end].parse().ok();
            rest = indexed.get(end + 1..).unwrap_or("");
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
        steps.push(step);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_steps_split_indices_and_quoted_segments() {
        let steps = key_steps("swarm.\"relay.server.max_connections\"");
        let names: Vec<&str> = steps.iter().map(|step| step.name.as_str()).collect();
        assert_eq!(names, ["swarm", "relay.server.max_connections"]);
        let steps = key_steps("faults[1].duration_s");
        assert_eq!(steps[0].name, "faults");
        assert_eq!(steps[0].index, Some(1));
        assert_eq!(steps[1].name, "duration_s");
    }

    #[test]
    fn serde_type_names_become_plain_words() {
        assert_eq!(
            plain_words("invalid value: integer `-5`, expected u64"),
            "invalid value: integer `-5`, expected a non-negative integer"
        );
        assert_eq!(plain_words("expected u640"), "expected u640");
    }
}
