//! The seed fc_ex_cp's `config/desired_vms.exs` (ndrean/microvm-control-planner@2ff3827,
//! read by `lib/desiredStateStore.ex` with `Code.eval_string`): a list of `{vm_id, tenant,
//! spec}` tuples whose specs are atom-keyed maps.
//!
//! ```elixir
//! [
//!   {"web-app-1", "web-app-1",
//!    %{cmd: ["/app/bin/server"], env: %{MIX_ENV: "prod"}, resources: %{vcpu: 2, mem_mb: 512},
//!      lifecycle: "service", warm_pool: %{min: 1, max: 3}}},
//! ]
//! ```
//!
//! **No code is evaluated.** [`parse_terms`] reads the literal subset of Elixir such files use:
//! lists, tuples, maps (`%{key: v}` and `%{"k" => v}`), double-quoted strings (escapes, no
//! `#{}` interpolation), integers (`1_000`, `0x1F`), floats, atoms (`:service`,
//! `:"quoted"`), `true`/`false`/`nil`, and `#` comments. Anything else (a variable, a call, a
//! sigil, interpolation) is an error at its line and column. Input is bounded: the file by
//! [`super::MAX_FILE_BYTES`], nesting by [`MAX_DEPTH`].
//!
//! Each spec becomes JSON as the seed stores it (`Jason.encode!`: atoms are strings, `nil` is
//! `null`; a tuple cannot be encoded and is an error) and is then read as `POST /vms` reads
//! one ([`crate::compat::fc::request::map_spec`]), except that `resources` are only what the
//! file gives (the seed's 2 vCPU / 512 MiB defaults are applied by `/vms` only where the
//! provider enforces them, which a file check cannot know). An entry's `warm_pool` is a pool
//! named after its id, as in TOML. Entries that leave the file are kept (the seed never
//! deletes them), unless the server runs with `--config-delete-removed`.

use serde_json::{Map, Value};

use lapse_core::model::OnExpiry;
use lapse_core::validate;

use super::parse::{ConfigError, Declared, EnvDecl, PoolDecl};

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

/// Parses a `desired_vms.exs` file into what it declares, with `default_provider` for specs
/// that name none and every error at its line and column.
pub fn parse(text: &str, default_provider: &str) -> Result<Declared, Vec<ConfigError>> {
    let top = parse_terms(text).map_err(|e| vec![e])?;
    let Kind::List(entries) = top.kind else {
        return Err(vec![at(&top, "the file must be a list of {vm_id, tenant, spec} tuples")]);
    };
    let mut declared = Declared::default();
    let mut errors = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for entry in &entries {
        match entry_decl(entry, default_provider).and_then(|decl| check(entry, decl, &mut ids)) {
            Ok(decl) => {
                if let Some(w) = decl.warm_pool {
                    declared.pools.push(PoolDecl {
                        name: decl.id.clone(),
                        spec: decl.spec.clone(),
                        min: w.min,
                        max: w.max,
                        version: None,
                        lifecycle: decl.lifecycle,
                    });
                }
                declared.environments.push((decl, None));
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(declared) } else { Err(errors) }
}

/// The checks a TOML entry gets (names, the spec against its provider, the pool's size).
fn check(entry: &Term, decl: EnvDecl, ids: &mut std::collections::BTreeSet<String>) -> Result<EnvDecl, ConfigError> {
    let what = format!("vm {:?}", decl.id);
    let fail = |e: validate::FieldError| at(entry, format!("{what}: {e}"));
    validate::name("vm_id", &decl.id).map_err(fail)?;
    if let Some(t) = &decl.tenant {
        validate::tenant("tenant", t).map_err(fail)?;
    }
    validate::spec(&decl.spec).and_then(|()| lapse_providers::validate_spec(&decl.spec)).map_err(fail)?;
    if let Some(w) = decl.warm_pool {
        validate::pool_size(w.min, w.max).map_err(|e| at(entry, format!("{what}: warm_pool: {}", e.message)))?;
    }
    if !ids.insert(decl.id.clone()) {
        return Err(at(entry, format!("{what} is declared twice")));
    }
    Ok(decl)
}

fn at(term: &Term, message: impl Into<String>) -> ConfigError {
    ConfigError { line: term.line, column: term.column, message: message.into() }
}

fn entry_decl(entry: &Term, default_provider: &str) -> Result<EnvDecl, ConfigError> {
    let shape = "each entry must be a {vm_id, tenant, spec} tuple";
    let Kind::Tuple(parts) = &entry.kind else {
        return Err(at(entry, shape));
    };
    let [id, tenant, spec] = parts.as_slice() else {
        return Err(at(entry, shape));
    };
    let text = |t: &Term, what: &str| match &t.kind {
        Kind::String(s) => Ok(s.clone()),
        _ => Err(at(t, format!("{what} must be a string"))),
    };
    let id_text = text(id, "vm_id")?;
    let tenant_text = text(tenant, "tenant")?;
    let what = format!("vm {id_text:?}");
    let Value::Object(seed) = to_json(spec)? else {
        return Err(at(spec, format!("{what}: the spec must be a map")));
    };
    let mut mapped =
        crate::compat::fc::request::map_spec(&seed, default_provider).map_err(|e| at(spec, format!("{what}: {e}")))?;
    if !mapped.resources_given {
        mapped.spec.resources = None;
    }
    Ok(EnvDecl {
        id: id_text,
        name: None,
        tenant: Some(tenant_text),
        lifecycle: mapped.lifecycle,
        ttl: None,
        on_expiry: OnExpiry::Stop,
        max_retries: None,
        labels: Default::default(),
        spec: mapped.spec,
        warm_pool: mapped.warm_pool,
        seed_spec: Some(mapped.seed_spec),
    })
}

/// A term as `Jason.encode!` writes it (and `Jason.decode!` reads it back).
pub fn to_json(term: &Term) -> Result<Value, ConfigError> {
    Ok(match &term.kind {
        Kind::Integer(n) => {
            if let Ok(i) = i64::try_from(*n) {
                Value::from(i)
            } else if let Ok(u) = u64::try_from(*n) {
                Value::from(u)
            } else {
                return Err(at(term, "an integer beyond 64 bits"));
            }
        }
        Kind::Float(f) => {
            serde_json::Number::from_f64(*f).map(Value::Number).ok_or_else(|| at(term, "not a finite number"))?
        }
        Kind::String(s) => Value::String(s.clone()),
        Kind::Atom(a) => match a.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "nil" => Value::Null,
            other => Value::String(other.to_owned()),
        },
        Kind::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Kind::Tuple(_) => {
            return Err(at(term, "a tuple inside a spec cannot be stored (the seed's Jason.encode! fails on it)"));
        }
        Kind::Map(pairs) => {
            let mut out = Map::new();
            for (k, v) in pairs {
                let key = match &k.kind {
                    Kind::String(s) | Kind::Atom(s) => s.clone(),
                    _ => return Err(at(k, "a map key must be an atom or a string")),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
    })
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
