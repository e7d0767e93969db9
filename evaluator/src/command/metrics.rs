//! Reading the metrics a command reports.
//!
//! Two conventions are accepted. OpenEvolve's `evaluate()` returns a dictionary of numbers with
//! `combined_score` as the score; a wrapper prints it as JSON, the whole stdout or its last
//! JSON-object line. ShinkaEvolve writes `metrics.json` into a results directory
//! (`combined_score`, `public` and `private` dictionaries, `text_feedback`) and `correct.json`
//! (`correct`, `error`). A `metrics.json` in the results directory wins over stdout.
//!
//! Nested dictionaries flatten to dotted names (`public.accuracy`), booleans become 0 or 1,
//! strings become feedback text, and anything else is dropped with a note. Python's `json`
//! writes NaN and infinities as bare `NaN`/`Infinity`, which are not JSON: they are read,
//! never stored as metrics (they would not survive a JSON round trip), and noted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{Map, Value};

/// Where ShinkaEvolve-style metrics go, inside the results directory.
pub const METRICS_FILE: &str = "metrics.json";
/// Where ShinkaEvolve-style correctness goes, inside the results directory.
pub const CORRECT_FILE: &str = "correct.json";

/// What a command reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reported {
    /// Every finite number, by flattened name.
    pub metrics: BTreeMap<String, f64>,
    /// Metrics whose value was NaN or infinite, with that value as the program wrote it.
    pub non_finite: BTreeMap<String, String>,
    /// Text the evaluator wrote for the candidate's author (`text_feedback`, string entries).
    pub text: Vec<String>,
    /// Entries that could not be used, each with why.
    pub notes: Vec<String>,
    /// Where the metrics came from (`stdout` or the metrics file's name).
    pub source: String,
}

/// The verdict of a `correct.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correctness {
    pub correct: bool,
    pub error: Option<String>,
}

/// Reads `correct.json` from the results directory, if the command wrote one. `Err` carries
/// feedback saying what is wrong with the file.
pub fn read_correctness(results_dir: &Path) -> Result<Option<Correctness>, String> {
    let Some(text) = read_optional(&results_dir.join(CORRECT_FILE))? else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("results/{CORRECT_FILE} is not valid JSON ({e})"))?;
    let Value::Object(object) = value else {
        return Err(format!("results/{CORRECT_FILE} must hold a JSON object"));
    };
    let correct = match object.get("correct") {
        Some(Value::Bool(correct)) => *correct,
        _ => {
            return Err(format!(
                "results/{CORRECT_FILE} needs `correct`: true or false"
            ))
        }
    };
    let error = match object.get("error") {
        Some(Value::String(error)) if !error.is_empty() => Some(error.clone()),
        _ => None,
    };
    Ok(Some(Correctness { correct, error }))
}

/// Reads the metrics: `metrics.json` in the results directory if present, else stdout.
/// `Err` carries feedback saying what was expected and what was found.
pub fn read_metrics(stdout: &str, results_dir: &Path) -> Result<Reported, String> {
    if let Some(text) = read_optional(&results_dir.join(METRICS_FILE))? {
        let object = parse_object(&text)
            .map_err(|e| format!("results/{METRICS_FILE} does not hold a JSON object: {e}"))?;
        return Ok(flatten(object, METRICS_FILE));
    }
    let object = metrics_on_stdout(stdout)?;
    Ok(flatten(object, "stdout"))
}

/// The most a results file may hold; metrics are small, and the file is read into memory.
const MAX_RESULTS_FILE_BYTES: u64 = 4 << 20;

/// Reads a results file if it exists. The command wrote it, so it may be anything: only a
/// regular file of bounded size is read (a FIFO would block us, `/dev/zero` would not end).
fn read_optional(path: &Path) -> Result<Option<String>, String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot open results/{name} ({e}); write a regular file"
            ))
        }
    };
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read results/{name}: {e}"))?;
    if !metadata.is_file() {
        return Err(format!("results/{name} must be a regular file"));
    }
    if metadata.len() > MAX_RESULTS_FILE_BYTES {
        return Err(format!(
            "results/{name} is {} bytes; at most {MAX_RESULTS_FILE_BYTES} are read",
            metadata.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RESULTS_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read results/{name}: {e}"))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The whole stdout as one JSON object, else its last line that is one.
fn metrics_on_stdout(stdout: &str) -> Result<Map<String, Value>, String> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Err(format!(
            "the command printed nothing on stdout and wrote no results/{METRICS_FILE}: \
             print the metrics as one JSON object (for example {{\"combined_score\": 0.5}})"
        ));
    }
    let whole_error = match parse_object(trimmed) {
        Ok(object) => return Ok(object),
        Err(e) => e,
    };
    if let Some(object) = trimmed
        .lines()
        .rev()
        .find_map(|line| parse_object(line.trim()).ok())
    {
        return Ok(object);
    }
    let last_line = trimmed.lines().last().unwrap_or_default();
    let hint = if last_line.trim_start().starts_with("{'") {
        " (that looks like Python's print(dict), which is not JSON: print json.dumps(metrics))"
    } else {
        ""
    };
    Err(format!(
        "no JSON object found on stdout ({whole_error}); expected the metrics as the whole \
         stdout or its last line, for example {{\"combined_score\": 0.5}}; the last line was: \
         {}{hint}",
        shorten(last_line, 200)
    ))
}

fn parse_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(&admit_non_finite(text)) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!("found {} instead of an object", kind(&other))),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// Marks a NaN or infinity that Python wrote as a bare token; no real string starts with NUL.
const NON_FINITE_MARK: char = '\0';

/// Rewrites the bare tokens `NaN`, `Infinity` and `-Infinity` outside strings into marked
/// strings, so that the rest of the text parses as JSON and the values can be reported.
fn admit_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            let escaped = c == '\\';
            let len = if escaped {
                c.len_utf8() + rest[1..].chars().next().map_or(0, char::len_utf8)
            } else {
                c.len_utf8()
            };
            out.push_str(&rest[..len]);
            in_string = c != '"';
            rest = &rest[len..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|token| rest.starts_with(token))
        {
            out.push_str(&format!("\"{}{token}\"", "\\u0000"));
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn flatten(object: Map<String, Value>, source: &str) -> Reported {
    let mut reported = Reported {
        source: source.to_string(),
        ..Reported::default()
    };
    flatten_into(&mut reported, "", object);
    reported
}

fn flatten_into(reported: &mut Reported, prefix: &str, object: Map<String, Value>) {
    for (key, value) in object {
        let name = format!("{prefix}{key}");
        match value {
            Value::Number(number) => match number.as_f64() {
                Some(x) if x.is_finite() => {
                    reported.metrics.insert(name, x);
                }
                _ => reported.notes.push(format!(
                    "`{name}` = {number} does not fit a 64-bit float; dropped"
                )),
            },
            Value::Bool(flag) => {
                reported.metrics.insert(name, if flag { 1.0 } else { 0.0 });
            }
            Value::Object(inner) => flatten_into(reported, &format!("{name}."), inner),
            Value::String(text) => match text.strip_prefix(NON_FINITE_MARK) {
                Some(token) => {
                    reported.notes.push(format!("`{name}` is {token}; dropped"));
                    reported.non_finite.insert(name, token.to_string());
                }
                None if name == "text_feedback" => reported.text.push(text),
                None => reported.text.push(format!("{name}: {text}")),
            },
            Value::Null | Value::Array(_) => reported.notes.push(format!(
                "`{name}` is {}, not a number; dropped",
                kind(&value)
            )),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `limit` characters of `text`, with an ellipsis where it was cut.
pub(crate) fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_stdout(stdout: &str) -> Result<Reported, String> {
        read_metrics(stdout, Path::new("/nonexistent-results-dir"))
    }

    #[test]
    fn openevolve_dictionary_on_the_last_line() {
        let stdout = "warming up\n{\"not\": \"this\"}\nstep 3\n\
                      {\"combined_score\": 0.75, \"speed\": 3, \"valid\": true, \"error\": \"slow\"}\n";
        let reported = from_stdout(stdout).unwrap();
        assert_eq!(reported.metrics["combined_score"], 0.75);
        assert_eq!(reported.metrics["speed"], 3.0);
        assert_eq!(reported.metrics["valid"], 1.0);
        assert_eq!(reported.text, vec!["error: slow".to_string()]);
        assert!(!reported.metrics.contains_key("not"));
        assert_eq!(reported.source, "stdout");
    }

    #[test]
    fn whole_stdout_may_be_one_pretty_printed_object() {
        let reported =
            from_stdout("{\n  \"combined_score\": 2,\n  \"public\": {\"a\": 1}\n}\n").unwrap();
        assert_eq!(reported.metrics["combined_score"], 2.0);
        assert_eq!(reported.metrics["public.a"], 1.0);
    }

    #[test]
    fn python_non_finite_tokens_are_read_and_noted_not_stored() {
        let reported =
            from_stdout("{\"combined_score\": NaN, \"x\": -Infinity, \"s\": \"NaN in text\"}")
                .unwrap();
        assert!(reported.metrics.is_empty());
        assert_eq!(reported.non_finite["combined_score"], "NaN");
        assert_eq!(reported.non_finite["x"], "-Infinity");
        assert_eq!(reported.text, vec!["s: NaN in text".to_string()]);
    }

    #[test]
    fn escaped_quotes_do_not_confuse_the_string_tracking() {
        let text = r#"{"a": "say \"NaN\" \\", "b": Infinity}"#;
        let reported = from_stdout(text).unwrap();
        assert_eq!(reported.text, vec![r#"a: say "NaN" \"#.to_string()]);
        assert_eq!(reported.non_finite["b"], "Infinity");
    }

    #[test]
    fn garbage_names_what_was_expected() {
        let error =
            from_stdout("Traceback (most recent call last):\nValueError: boom\n").unwrap_err();
        assert!(error.contains("no JSON object found on stdout"), "{error}");
        assert!(error.contains("ValueError: boom"), "{error}");
        let error = from_stdout("  \n").unwrap_err();
        assert!(error.contains("printed nothing"), "{error}");
        let error = from_stdout("{'combined_score': 0.5}").unwrap_err();
        assert!(error.contains("print json.dumps(metrics)"), "{error}");
        let error = from_stdout("[1, 2]").unwrap_err();
        assert!(error.contains("an array instead of an object"), "{error}");
    }

    #[test]
    fn arrays_and_nulls_are_dropped_with_a_note() {
        let reported =
            from_stdout("{\"combined_score\": 1, \"history\": [1, 2], \"extra\": null}").unwrap();
        assert_eq!(reported.metrics.len(), 1);
        assert_eq!(reported.notes.len(), 2);
        assert!(
            reported.notes[0].contains("`extra` is null"),
            "{:?}",
            reported.notes
        );
    }
}
