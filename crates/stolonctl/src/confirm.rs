//! The yes/no confirmation prompt of `init` and `promote`.

use std::io::{BufRead, Write};

/// The question Stolon asks.
pub const PROMPT: &str = "Are you sure you want to continue? [yes/no] ";

/// Prints `message` (no newline) and reads lines until one is exactly `yes` or `no`; anything
/// else prints `Please enter 'yes' or 'no'` and asks again. End of input is an error.
pub fn ask(input: &mut dyn BufRead, out: &mut dyn Write, message: &str) -> anyhow::Result<bool> {
    // Bounded only by the input: every iteration consumes one line or ends.
    loop {
        write!(out, "{message}")?;
        out.flush()?;
        let mut line = String::new();
        let n = input
            .read_line(&mut line)
            .map_err(|e| anyhow::anyhow!("error reading input: {e}"))?;
        if n == 0 {
            anyhow::bail!("error reading input: EOF");
        }
        match line.strip_suffix('\n').unwrap_or(&line) {
            "yes" => return Ok(true),
            "no" => return Ok(false),
            _ => writeln!(out, "Please enter 'yes' or 'no'")?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> (anyhow::Result<bool>, String) {
        let mut out = Vec::new();
        let r = ask(&mut input.as_bytes(), &mut out, PROMPT);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn accepts_exact_yes_and_no_only() {
        let (r, out) = run("yes\n");
        assert!(r.unwrap());
        assert_eq!(out, PROMPT);
        let (r, _) = run("no\n");
        assert!(!r.unwrap());
        let (r, out) = run("y\nYES\n yes\nyes\n");
        assert!(r.unwrap());
        assert_eq!(
            out,
            format!("{PROMPT}Please enter 'yes' or 'no'\n").repeat(3) + PROMPT
        );
    }

    #[test]
    fn end_of_input_is_an_error() {
        let (r, _) = run("maybe\n");
        assert_eq!(r.unwrap_err().to_string(), "error reading input: EOF");
        let (r, _) = run("");
        assert!(r.is_err());
    }
}
