//! Dotenv text: the `env` input, parsed into ordered `KEY=value` pairs, and
//! rendered back into the `shared/.env` file written on the server.
//!
//! The accepted syntax is the common subset of dotenv dialects:
//! `KEY=value`, an optional `export ` prefix, spaces around `=`, `#` comments
//! (whole lines, and ` #` after an unquoted value), blank lines, single quotes
//! (literal, may span lines), double quotes (may span lines; escapes `\n`,
//! `\r`, `\t`, `\"`, `\\`, `\$`), CRLF line ends. Keys match
//! `[A-Za-z_][A-Za-z0-9_]*`. A key given twice keeps its first position and
//! its last value. There is no `$VAR` interpolation: values are taken as written.
//!
//! Values are secrets: no error ever quotes one, only its line and the problem.

use std::fmt;

/// Why a dotenv text could not be read: a line number and the problem, never
/// the text of the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotenvError {
    /// 1-based line where the problem is (for an unterminated quote: where it opens).
    pub line: usize,
    /// What is wrong, without any of the value.
    pub problem: String,
}

impl fmt::Display for DotenvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

impl std::error::Error for DotenvError {}

/// Parses dotenv `text` into `(key, value)` pairs in order of first appearance
/// (a repeated key keeps its last value).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let text = text.replace("\r\n", "\n");
    let mut parser = Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    while let Some((key, value)) = parser.entry()? {
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => pairs.push((key, value)),
        }
    }
    Ok(pairs)
}

/// Renders `pairs` as dotenv text that [`parse`] reads back exactly.
///
/// Plain values are written bare; others in single quotes when that is
/// literal enough (no `'`, `$`, `\r`), else in double quotes with escapes. Single
/// quotes first keeps the file readable the same way by other dotenv readers
/// (Node's `dotenv`, Docker Compose), which differ on double-quote escapes; `$`
/// is written `\$` so `dotenv-expand` (used by Next.js) does not expand it.
/// Keys are expected to be valid (as [`parse`] returns them).
#[allow(
    dead_code,
    reason = "writes shared/.env once the deploy flow sends `env`"
)]
pub fn render(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        out.push_str(key);
        out.push('=');
        if value.chars().all(is_plain) {
            out.push_str(value);
        } else if !value.contains(['\'', '$', '\r']) {
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push('"');
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '$' => out.push_str("\\$"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('\n');
    }
    out
}

/// Characters a value may hold and still be written without quotes.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.,/:@%+=~^".contains(c)
}

fn is_key_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    /// Skips the rest of the line, including its `\n`.
    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    fn error(&self, line: usize, problem: &str) -> DotenvError {
        DotenvError {
            line,
            problem: problem.into(),
        }
    }

    /// The next `KEY=value`, skipping blank and comment lines; `None` at the end.
    fn entry(&mut self) -> Result<Option<(String, String)>, DotenvError> {
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(None),
                Some('\n') | Some('\r') => {
                    self.skip_line();
                }
                Some('#') => self.skip_line(),
                Some(_) => break,
            }
        }
        let line = self.line;
        if self.starts_with_export() {
            self.pos += "export".len();
            self.skip_blanks();
        }
        let key = self.key()?;
        self.skip_blanks();
        if self.peek() != Some('=') {
            return Err(self.error(line, "expected KEY=value (no `=` after the key)"));
        }
        self.pos += 1;
        let had_blank = self.peek().is_some_and(is_blank);
        self.skip_blanks();
        let value = match self.peek() {
            Some('\'') => self.single_quoted()?,
            Some('"') => self.double_quoted()?,
            _ => self.unquoted(had_blank),
        };
        Ok(Some((key, value)))
    }

    /// `export` followed by blanks and then a key (so a key named `export` still works).
    fn starts_with_export(&self) -> bool {
        let word = "export"
            .chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i) == Some(c));
        if !word || !self.peek_at(6).is_some_and(is_blank) {
            return false;
        }
        let mut i = 6;
        while self.peek_at(i).is_some_and(is_blank) {
            i += 1;
        }
        self.peek_at(i).is_some_and(is_key_start)
    }

    fn line_has_equals(&self) -> bool {
        self.chars[self.pos..]
            .iter()
            .take_while(|&&c| c != '\n')
            .any(|&c| c == '=')
    }

    fn key(&mut self) -> Result<String, DotenvError> {
        let line = self.line;
        if !self.line_has_equals() {
            return Err(self.error(line, "expected KEY=value (no `=` on this line)"));
        }
        if !self.peek().is_some_and(is_key_start) {
            return Err(self.error(
                line,
                "invalid key name (expected KEY=value, the key made of letters, digits and `_`, not starting with a digit)",
            ));
        }
        let mut key = String::new();
        while let Some(c) = self.peek().filter(|&c| is_key_char(c)) {
            key.push(c);
            self.pos += 1;
        }
        match self.peek() {
            None | Some('=') => Ok(key),
            Some(c) if is_blank(c) => Ok(key),
            Some('\n') | Some('\r') => {
                Err(self.error(line, "expected KEY=value (no `=` after the key)"))
            }
            Some(_) => Err(self.error(
                line,
                "invalid key name (only letters, digits and `_` are allowed)",
            )),
        }
    }

    /// After a closing quote: blanks, then an optional comment, then the end of the line.
    fn after_quote(&mut self) -> Result<(), DotenvError> {
        let line = self.line;
        self.skip_blanks();
        match self.peek() {
            None => Ok(()),
            Some('\n') | Some('#') => {
                self.skip_line();
                Ok(())
            }
            Some('\r') if self.peek_at(1).is_none_or(|c| c == '\n') => {
                self.skip_line();
                Ok(())
            }
            Some(_) => Err(self.error(line, "unexpected text after the closing quote")),
        }
    }

    fn single_quoted(&mut self) -> Result<String, DotenvError> {
        let start = self.line;
        self.pos += 1;
        let mut value = String::new();
        loop {
            match self.bump() {
                None => return Err(self.error(start, "unterminated single quote starting here")),
                Some('\'') => break,
                Some(c) => value.push(c),
            }
        }
        self.after_quote()?;
        Ok(value)
    }

    fn double_quoted(&mut self) -> Result<String, DotenvError> {
        let start = self.line;
        self.pos += 1;
        let mut value = String::new();
        loop {
            match self.bump() {
                None => return Err(self.error(start, "unterminated double quote starting here")),
                Some('"') => break,
                Some('\\') => match self.bump() {
                    None => {
                        return Err(self.error(start, "unterminated double quote starting here"));
                    }
                    Some('n') => value.push('\n'),
                    Some('r') => value.push('\r'),
                    Some('t') => value.push('\t'),
                    Some('"') => value.push('"'),
                    Some('\\') => value.push('\\'),
                    Some('$') => value.push('$'),
                    // Unknown escapes stay as written.
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                },
                Some(c) => value.push(c),
            }
        }
        self.after_quote()?;
        Ok(value)
    }

    /// An unquoted value: up to the end of the line or a ` #` comment, trimmed.
    fn unquoted(&mut self, mut after_blank: bool) -> String {
        let mut value = String::new();
        while let Some(c) = self.bump() {
            match c {
                '\n' => break,
                '#' if after_blank => {
                    self.skip_line();
                    break;
                }
                c => {
                    after_blank = is_blank(c);
                    value.push(c);
                }
            }
        }
        let trimmed = value.trim_end_matches([' ', '\t', '\r']);
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_pairs_comments_blank_lines_and_export() {
        let text = "# a comment\n\nA=1\nexport B=two words\n  C = spaced  \nD=\nexport=x\n\t# indented comment\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "spaced"),
                ("D", ""),
                ("export", "x")
            ])
        );
    }

    #[test]
    fn inline_comments_need_a_blank_before_the_hash() {
        let text = "COLOR=#fff\nURL=http://x/#frag\nA=value # comment\nB= # only a comment\nC='q' # after quote\nD=\"d\"#tight\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("COLOR", "#fff"),
                ("URL", "http://x/#frag"),
                ("A", "value"),
                ("B", ""),
                ("C", "q"),
                ("D", "d"),
            ])
        );
    }

    #[test]
    fn single_quotes_are_literal_and_may_span_lines() {
        let text = "A='$HOME \\n \"x\" # not a comment'\nB='line one\nline two'\nC=after\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("A", "$HOME \\n \"x\" # not a comment"),
                ("B", "line one\nline two"),
                ("C", "after"),
            ])
        );
    }

    #[test]
    fn double_quotes_unescape_and_may_span_lines() {
        let text = "A=\"a\\nb\\tc \\\"q\\\" \\\\ \\$HOME \\x\"\nKEY=\"-----BEGIN KEY-----\nabc\n-----END KEY-----\"\nZ=z\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("A", "a\nb\tc \"q\" \\ $HOME \\x"),
                ("KEY", "-----BEGIN KEY-----\nabc\n-----END KEY-----"),
                ("Z", "z"),
            ])
        );
    }

    #[test]
    fn crlf_input_reads_like_lf() {
        let text = "A=1\r\nB=\"x\r\ny\"\r\n# c\r\nC='z'\r\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[("A", "1"), ("B", "x\ny"), ("C", "z")])
        );
    }

    #[test]
    fn last_duplicate_wins_in_first_position() {
        let text = "A=1\nB=2\nA=3\n";
        assert_eq!(parse(text).unwrap(), pairs(&[("A", "3"), ("B", "2")]));
    }

    #[test]
    fn errors_name_the_line_and_never_the_value() {
        let secret = "hunter2-SECRET";
        let cases = [
            (format!("A=1\n{secret}\n"), 2, "expected KEY=value"),
            (format!("A=1\nKEY {secret}\n"), 2, "expected KEY=value"),
            (format!("A=1\n\n1BAD={secret}\n"), 3, "invalid key name"),
            (format!("BAD-KEY={secret}\n"), 1, "invalid key name"),
            (
                format!("A=1\nB=\"{secret}\nmore\n"),
                2,
                "unterminated double quote",
            ),
            (format!("B='{secret}\n"), 1, "unterminated single quote"),
            (
                format!("B='x' {secret}\n"),
                1,
                "unexpected text after the closing quote",
            ),
            (format!("B=\"{secret}\\"), 1, "unterminated double quote"),
        ];
        for (text, line, problem) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.problem.contains(problem), "{text:?}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn render_chooses_bare_single_or_double_quotes() {
        let text = render(&pairs(&[
            ("A", "plain-value_1.2/x:y@z"),
            ("B", ""),
            ("C", "two words # and\nlines"),
            ("D", "it's $5"),
        ]));
        assert_eq!(
            text,
            "A=plain-value_1.2/x:y@z\nB=\nC='two words # and\nlines'\nD=\"it's \\$5\"\n"
        );
    }

    /// A small deterministic generator (xorshift), so the property test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn render_then_parse_round_trips_tricky_values() {
        let pieces = [
            "a",
            "Z",
            "0",
            " ",
            "  ",
            "\t",
            "\n",
            "\r",
            "\r\n",
            "'",
            "\"",
            "\\",
            "\\n",
            "\\\"",
            "$",
            "${HOME}",
            "$HOME",
            "#",
            " #",
            "# x",
            "=",
            "export ",
            "é",
            "日本",
            "🚀",
            "`",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "\u{0}",
            "\u{7f}",
            "%",
            "'\"'",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..3000 {
            let count = 1 + rng.below(4);
            let list: Vec<(String, String)> = (0..count)
                .map(|i| {
                    let len = rng.below(8);
                    let value: String = (0..len).map(|_| pieces[rng.below(pieces.len())]).collect();
                    (format!("K{i}_{round}"), value)
                })
                .collect();
            let text = render(&list);
            assert_eq!(parse(&text).unwrap(), list, "rendered as {text:?}");
        }
    }
}
