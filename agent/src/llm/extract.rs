//! Finding the program in a model's reply, which may wrap it in prose or a code fence.

/// The first `(kernel ...)` form of `reply`, from its opening to its matching parenthesis.
/// The error is written for the model to read in a debug retry.
pub fn extract_program(reply: &str) -> Result<&str, String> {
    let Some(start) = reply.find("(kernel") else {
        return Err(
            "the reply has no program: write one AKL program starting with \"(kernel NAME\"".into(),
        );
    };
    let mut depth = 0usize;
    for (offset, c) in reply[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(&reply[start..=start + offset]);
                }
            }
            _ => {}
        }
    }
    let line = reply[..start].lines().count().max(1);
    Err(format!(
        "the program starting on line {line} of the reply is not closed: \
         {depth} parenthes{} still open at the end; close every list",
        if depth == 1 { "is is" } else { "es are" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_program_inside_prose_and_fences() {
        let reply = "Here is my kernel:\n```lisp\n(kernel w (mask (and causal (> kv (- q 8)))))\n```\nIt narrows the window.";
        assert_eq!(
            extract_program(reply).unwrap(),
            "(kernel w (mask (and causal (> kv (- q 8)))))"
        );
    }

    #[test]
    fn says_what_is_missing() {
        assert!(extract_program("I cannot do that.")
            .unwrap_err()
            .contains("no program"));
        let open = extract_program("(kernel w (mask (and causal").unwrap_err();
        assert!(open.contains("3 parentheses are still open"), "{open}");
    }
}
