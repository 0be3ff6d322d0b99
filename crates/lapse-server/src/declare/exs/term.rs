//! The literal subset of Elixir terms that seed `.exs` files use (see [`super`]): a small
//! recursive-descent reader with line and column on every term and error, nesting bounded by
//! [`MAX_DEPTH`]. Nothing is evaluated.

use crate::declare::parse::ConfigError;

/// The deepest nesting of lists, tuples and maps read.
pub const MAX_DEPTH: usize = 64;

/// A term and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub line: usize,
    pub column: usize,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Integer(i128),
    Float(f64),
    String(String),
    Atom(String),
    List(Vec<Term>),
    Tuple(Vec<Term>),
    Map(Vec<(Term, Term)>),
}

/// Parses a whole file as one term. Total: no text makes it panic.
pub fn parse_terms(text: &str) -> Result<Term, ConfigError> {
    let mut p = Parser { chars: text.chars().collect(), at: 0, line: 1, column: 1 };
    let term = p.term(0)?;
    p.skip_blank();
    if p.peek().is_some() {
        return Err(p.error("unexpected text after the list"));
    }
    Ok(term)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek2(&self) -> Option<char> {
        self.chars.get(self.at + 1).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError { line: self.line, column: self.column, message: message.into() }
    }

    /// Skips whitespace and `#` comments.
    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn term(&mut self, depth: usize) -> Result<Term, ConfigError> {
        self.skip_blank();
        let (line, column) = (self.line, self.column);
        let make = |kind| Ok(Term { line, column, kind });
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH}")));
        }
        match self.peek() {
            None => Err(self.error("expected a term, found the end of the file")),
            Some('[') => {
                self.bump();
                make(Kind::List(self.sequence(']', depth)?))
            }
            Some('{') => {
                self.bump();
                make(Kind::Tuple(self.sequence('}', depth)?))
            }
            Some('%') if self.peek2() == Some('{') => {
                self.bump();
                self.bump();
                make(Kind::Map(self.pairs(depth)?))
            }
            Some('"') => make(Kind::String(self.string()?)),
            Some(':') if self.peek2() == Some('"') => {
                self.bump();
                make(Kind::Atom(self.string()?))
            }
            Some(':') if self.peek2().is_some_and(is_ident_start) => {
                self.bump();
                make(Kind::Atom(self.ident()))
            }
            Some(c) if c.is_ascii_digit() || (c == '-' && self.peek2().is_some_and(|d| d.is_ascii_digit())) => {
                make(self.number()?)
            }
            Some(c) if is_ident_start(c) => {
                let word = self.ident();
                match word.as_str() {
                    "true" | "false" | "nil" => make(Kind::Atom(word)),
                    _ => Err(ConfigError {
                        line,
                        column,
                        message: format!(
                            "{word:?} is not a literal (only literal terms are read; no code is evaluated)"
                        ),
                    }),
                }
            }
            Some(c) => Err(self.error(format!("unexpected {c:?} (only literal terms are read; no code is evaluated)"))),
        }
    }

    /// Terms separated by commas up to `close` (a trailing comma allowed).
    fn sequence(&mut self, close: char, depth: usize) -> Result<Vec<Term>, ConfigError> {
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            if self.peek() == Some(close) {
                self.bump();
                return Ok(items);
            }
            items.push(self.term(depth + 1)?);
            self.skip_blank();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(c) if c == close => {}
                _ => return Err(self.error(format!("expected ',' or {close:?}"))),
            }
        }
    }

    /// A map's pairs up to `}`: `key: value` (an atom key) or `key => value`.
    fn pairs(&mut self, depth: usize) -> Result<Vec<(Term, Term)>, ConfigError> {
        let mut pairs = Vec::new();
        loop {
            self.skip_blank();
            if self.peek() == Some('}') {
                self.bump();
                return Ok(pairs);
            }
            let (line, column) = (self.line, self.column);
            let shorthand = match self.peek() {
                Some(c) if is_ident_start(c) => {
                    let save = (self.at, self.line, self.column);
                    let word = self.ident();
                    if self.peek() == Some(':') && self.peek2().is_some_and(char::is_whitespace) {
                        self.bump();
                        Some(Term { line, column, kind: Kind::Atom(word) })
                    } else {
                        (self.at, self.line, self.column) = save;
                        None
                    }
                }
                Some('"') => {
                    let save = (self.at, self.line, self.column);
                    let word = self.string()?;
                    if self.peek() == Some(':') && self.peek2().is_some_and(char::is_whitespace) {
                        self.bump();
                        Some(Term { line, column, kind: Kind::Atom(word) })
                    } else {
                        (self.at, self.line, self.column) = save;
                        None
                    }
                }
                _ => None,
            };
            let key = match shorthand {
                Some(key) => key,
                None => {
                    let key = self.term(depth + 1)?;
                    self.skip_blank();
                    if !(self.peek() == Some('=') && self.peek2() == Some('>')) {
                        return Err(self.error("expected '=>' after a map key (or write it as key: value)"));
                    }
                    self.bump();
                    self.bump();
                    key
                }
            };
            let value = self.term(depth + 1)?;
            pairs.push((key, value));
            self.skip_blank();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn ident(&mut self) -> String {
        let mut word = String::new();
        while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '@') {
            word.push(c);
            self.bump();
        }
        if let Some(c) = self.peek().filter(|c| *c == '?' || *c == '!') {
            word.push(c);
            self.bump();
        }
        word
    }

    /// A double-quoted string with the usual escapes; `#{` (interpolation) is refused.
    fn string(&mut self) -> Result<String, ConfigError> {
        self.bump(); // the opening quote
        let mut out = String::new();
        loop {
            let (line, column) = (self.line, self.column);
            match self.bump() {
                None => return Err(self.error("a string is not closed")),
                Some('"') => return Ok(out),
                Some('#') if self.peek() == Some('{') => {
                    return Err(ConfigError {
                        line,
                        column,
                        message: "interpolation (#{...}) is code; write the value".into(),
                    });
                }
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('e') => out.push('\u{1b}'),
                    Some('0') => out.push('\0'),
                    Some('s') => out.push(' '),
                    Some(c @ ('"' | '\\' | '#')) => out.push(c),
                    Some(c) => return Err(ConfigError { line, column, message: format!("unknown escape \\{c}") }),
                    None => return Err(self.error("a string is not closed")),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<Kind, ConfigError> {
        let (line, column) = (self.line, self.column);
        let bad = |message: String| ConfigError { line, column, message };
        let negative = self.peek() == Some('-');
        if negative {
            self.bump();
        }
        if self.peek() == Some('0') && self.peek2() == Some('x') {
            self.bump();
            self.bump();
            let digits = self.digits(|c| c.is_ascii_hexdigit());
            let n =
                i128::from_str_radix(&digits, 16).map_err(|_| bad(format!("bad hexadecimal integer 0x{digits}")))?;
            return Ok(Kind::Integer(if negative { -n } else { n }));
        }
        let whole = self.digits(|c| c.is_ascii_digit());
        let mut text = format!("{}{whole}", if negative { "-" } else { "" });
        let mut is_float = false;
        if self.peek() == Some('.') && self.peek2().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            is_float = true;
            text.push('.');
            text.push_str(&self.digits(|c| c.is_ascii_digit()));
            if matches!(self.peek(), Some('e' | 'E')) {
                self.bump();
                text.push('e');
                if let Some(sign) = self.peek().filter(|c| *c == '-' || *c == '+') {
                    self.bump();
                    text.push(sign);
                }
                text.push_str(&self.digits(|c| c.is_ascii_digit()));
            }
        }
        if self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.error("unexpected character in a number"));
        }
        if is_float {
            text.parse().map(Kind::Float).map_err(|_| bad(format!("bad float {text}")))
        } else {
            text.parse().map(Kind::Integer).map_err(|_| bad(format!("integer {text} is too large")))
        }
    }

    /// Digits (and `_` separators between them).
    fn digits(&mut self, is_digit: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if is_digit(c) {
                out.push(c);
            } else if c != '_' || !self.peek2().is_some_and(&is_digit) {
                break;
            }
            self.bump();
        }
        out
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}
