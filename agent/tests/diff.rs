//! The LCS line diff: hand-made cases in unified format, and a property that applying the
//! edit script rebuilds both texts with as many common lines as a brute-force LCS.

use agent::diff::{line_edits, unified_diff, Edit};
use proptest::prelude::*;

#[test]
fn a_changed_parameter_gives_one_hunk_with_context() {
    let old = "(kernel w\n  (param W int 1024 (pow2 16 65536))\n  (mask causal)\n  (score s)\n  (norm softmax)\n  (tile q 32 kv 128))\n";
    let new = "(kernel w\n  (param W int 2048 (pow2 16 65536))\n  (mask causal)\n  (score s)\n  (norm softmax)\n  (tile q 32 kv 128))\n";
    let expected = "--- a\n+++ b\n@@ -1,5 +1,5 @@\n (kernel w\n-  (param W int 1024 (pow2 16 65536))\n+  (param W int 2048 (pow2 16 65536))\n   (mask causal)\n   (score s)\n   (norm softmax)\n";
    assert_eq!(unified_diff(old, new, "a", "b", 3), expected);
}

#[test]
fn distant_changes_make_separate_hunks_and_inserts_count_lines_right() {
    let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
    let new = "0\n1\n2\n3\n4\n5\n6\n7\n8\n10\n";
    let expected = "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+0\n@@ -9,1 +9,0 @@\n-9\n";
    assert_eq!(unified_diff(old, new, "a", "b", 0), expected);
    let expected = "--- a\n+++ b\n@@ -1,2 +1,3 @@\n+0\n 1\n 2\n@@ -7,4 +8,3 @@\n 7\n 8\n-9\n 10\n";
    assert_eq!(unified_diff(old, new, "a", "b", 2), expected);
    // Context wide enough to join them: one hunk.
    assert_eq!(
        unified_diff(old, new, "a", "b", 4).matches("@@ -").count(),
        1
    );
}

#[test]
fn equal_texts_have_no_diff() {
    assert_eq!(unified_diff("a\nb\n", "a\nb\n", "x", "y", 3), "");
    assert_eq!(unified_diff("", "", "x", "y", 3), "");
    assert_eq!(
        unified_diff("", "a\n", "x", "y", 3),
        "--- x\n+++ y\n@@ -0,0 +1,1 @@\n+a\n"
    );
}

/// Longest common subsequence length by plain recursion over a memo table.
fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let mut table = vec![vec![0; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[i][j] = if a[i - 1] == b[j - 1] {
                table[i - 1][j - 1] + 1
            } else {
                table[i - 1][j].max(table[i][j - 1])
            };
        }
    }
    table[a.len()][b.len()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn edits_rebuild_both_texts_and_keep_a_longest_common_subsequence(
        a in prop::collection::vec(0..4u8, 0..10),
        b in prop::collection::vec(0..4u8, 0..10),
    ) {
        let old: String = a.iter().map(|x| format!("{x}\n")).collect();
        let new: String = b.iter().map(|x| format!("{x}\n")).collect();
        let edits = line_edits(&old, &new);
        let rebuilt_old: Vec<&str> = edits.iter().filter_map(|e| match e {
            Edit::Same(l) | Edit::Removed(l) => Some(*l),
            Edit::Added(_) => None,
        }).collect();
        let rebuilt_new: Vec<&str> = edits.iter().filter_map(|e| match e {
            Edit::Same(l) | Edit::Added(l) => Some(*l),
            Edit::Removed(_) => None,
        }).collect();
        let old_lines: Vec<&str> = old.lines().collect();
        let new_lines: Vec<&str> = new.lines().collect();
        prop_assert_eq!(&rebuilt_old, &old_lines);
        prop_assert_eq!(&rebuilt_new, &new_lines);
        let same = edits.iter().filter(|e| matches!(e, Edit::Same(_))).count();
        prop_assert_eq!(same, lcs_len(&old_lines, &new_lines));
    }
}
