//! A line diff of two texts in unified format, by longest common subsequence: small
//! programs, so the quadratic table is cheap and the result is a minimal edit.

/// One line of an edit script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// The shortest edit script from `old` to `new`, line by line.
pub fn line_edits<'a>(old: &'a str, new: &'a str) -> Vec<Edit<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut edits = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            edits.push(Edit::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff -u writes a changed line.
            edits.push(Edit::Removed(a[i]));
            i += 1;
        } else {
            edits.push(Edit::Added(b[j]));
            j += 1;
        }
    }
    edits
}

/// A unified diff with `context` unchanged lines around each change, under `---`/`+++`
/// headers naming the two sides; empty when the texts have the same lines.
pub fn unified_diff(
    old: &str,
    new: &str,
    old_name: &str,
    new_name: &str,
    context: usize,
) -> String {
    let edits = line_edits(old, new);
    let changed: Vec<usize> = (0..edits.len())
        .filter(|&k| !matches!(edits[k], Edit::Same(_)))
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    // Group changes whose context windows touch into hunks of edit indices [start, end).
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let start = k.saturating_sub(context);
        let end = (k + 1 + context).min(edits.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    // Line numbers (1-based) in old and new where each edit index starts.
    let mut old_line = vec![1usize; edits.len() + 1];
    let mut new_line = vec![1usize; edits.len() + 1];
    for (k, edit) in edits.iter().enumerate() {
        old_line[k + 1] = old_line[k] + usize::from(!matches!(edit, Edit::Added(_)));
        new_line[k + 1] = new_line[k] + usize::from(!matches!(edit, Edit::Removed(_)));
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for (start, end) in hunks {
        let old_count = old_line[end] - old_line[start];
        let new_count = new_line[end] - new_line[start];
        // A side with no lines is numbered by the line before the hunk, as diff -u does.
        let first = |line: usize, count: usize| if count == 0 { line - 1 } else { line };
        out.push_str(&format!(
            "@@ -{},{old_count} +{},{new_count} @@\n",
            first(old_line[start], old_count),
            first(new_line[start], new_count)
        ));
        for edit in &edits[start..end] {
            let (mark, line) = match edit {
                Edit::Same(l) => (' ', l),
                Edit::Removed(l) => ('-', l),
                Edit::Added(l) => ('+', l),
            };
            out.push(mark);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
