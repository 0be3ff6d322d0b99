//! Go's `encoding/json`, as it decodes a JSON object into a struct of `string` and `int`
//! fields without tags (the seed's `ProvisionRequest`; `DecommissionRequest`'s tags name
//! its fields the same, and `*int` is a pointer).
//!
//! The rules followed (Go 1.25, `encoding/json/decode.go` `object`, `fold.go` `foldName`):
//! - **Keys**: a key fills the field whose name it equals; else the one whose name it equals
//!   after Go's folding (ASCII case, and the three runes whose fold is an ASCII letter:
//!   `ı`→`I`, `ſ`→`S`, the Kelvin sign `K`→`K`). A key that fills no field is ignored.
//! - **Duplicates**: keys are applied in document order, so the last key that fills a field
//!   wins, whatever its case (`{"LabID":1,"labid":2}` gives 2).
//! - **`null`** leaves a `string` or `int` field as it was (so `{"LabID":5,"LabID":null}` is
//!   5) and sets a pointer to nil.
//! - **Types**: a `string` field takes only a JSON string; an `int` only a JSON number
//!   written as an integer that fits in 64 bits (`1.5`, `1.0`, `1e2`, `"5"`, `true` are
//!   refused, as Go's `strconv.ParseInt` refuses them). A refusal names the field and what
//!   it got; Go refuses the whole message on such an error, and so does this.
//! - **Top level**: an object, or `null` (every field left unset); anything else is refused.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The Go type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    /// `*int`: `null` sets it back to nil.
    IntPtr,
}

/// A field's value after decoding; `Unset` is Go's zero value (or nil).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Slot {
    #[default]
    Unset,
    Str(String),
    Int(i64),
}

impl Slot {
    /// The string, `""` when unset (Go's zero value).
    pub fn text(&self) -> &str {
        match self {
            Slot::Str(s) => s,
            _ => "",
        }
    }

    /// The integer, `None` when unset.
    pub fn int(&self) -> Option<i64> {
        match self {
            Slot::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// A Go struct: its name (for messages) and its fields in declaration order.
#[derive(Debug)]
pub struct GoStruct {
    pub name: &'static str,
    pub fields: &'static [(&'static str, Kind)],
}

impl GoStruct {
    /// Decodes a value into one slot per field, as `json.Unmarshal` fills the struct.
    pub fn decode<'de, D: Deserializer<'de>>(&'static self, d: D) -> Result<Vec<Slot>, D::Error> {
        d.deserialize_any(StructVisitor(self))
    }

    /// The field `key` fills: an exact match first, else a folded one.
    pub fn field_of(&self, key: &str) -> Option<usize> {
        if let Some(i) = self.fields.iter().position(|(name, _)| *name == key) {
            return Some(i);
        }
        let folded = fold(key);
        self.fields.iter().position(|(name, _)| fold(name) == folded)
    }
}

/// Go's `foldName`: ASCII letters upper-cased, every other rune replaced by the smallest rune
/// of its case-folding orbit. Only `ı`, `ſ` and `K` fold to an ASCII letter; the field names
/// are ASCII, so any other rune folds to something no field name holds and is kept as is.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            '\u{0131}' => 'I',
            '\u{017F}' => 'S',
            '\u{212A}' => 'K',
            other => other,
        })
        .collect()
}

struct StructVisitor(&'static GoStruct);

impl<'de> Visitor<'de> for StructVisitor {
    type Value = Vec<Slot>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object (Go struct {})", self.0.name)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Slot>, E> {
        Ok(vec![Slot::Unset; self.0.fields.len()])
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Slot>, A::Error> {
        let mut slots = vec![Slot::Unset; self.0.fields.len()];
        while let Some(key) = map.next_key::<String>()? {
            let Some(i) = self.0.field_of(&key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let (name, kind) = self.0.fields[i];
            match map.next_value_seed(FieldSeed { name, kind })? {
                Some(value) => slots[i] = value,
                None if kind == Kind::IntPtr => slots[i] = Slot::Unset,
                None => {}
            }
        }
        Ok(slots)
    }
}

/// One field's value; `None` for `null`.
struct FieldSeed {
    name: &'static str,
    kind: Kind,
}

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Option<Slot>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Slot>, D::Error> {
        d.deserialize_any(self)
    }
}

impl FieldSeed {
    fn refuse<E: de::Error>(&self, got: impl fmt::Display) -> E {
        let wanted = match self.kind {
            Kind::Str => "a JSON string",
            Kind::Int | Kind::IntPtr => "a JSON integer (a Go int)",
        };
        E::custom(format!("{} must be {wanted}, not {got}", self.name))
    }

    fn int<E: de::Error>(&self, n: i64) -> Result<Option<Slot>, E> {
        match self.kind {
            Kind::Int | Kind::IntPtr => Ok(Some(Slot::Int(n))),
            Kind::Str => Err(self.refuse(format!("the number {n}"))),
        }
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Option<Slot>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Str => "a string",
            Kind::Int | Kind::IntPtr => "an integer",
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Slot>, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<Slot>, E> {
        Err(self.refuse(format!("the boolean {v}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<Slot>, E> {
        self.int(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<Slot>, E> {
        match i64::try_from(v) {
            Ok(n) => self.int(n),
            Err(_) if self.kind == Kind::Str => Err(self.refuse(format!("the number {v}"))),
            Err(_) => Err(self.refuse(format!("{v}, which overflows a 64-bit int"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<Slot>, E> {
        match self.kind {
            Kind::Str => Err(self.refuse(format!("the number {v}"))),
            Kind::Int | Kind::IntPtr => Err(self.refuse(format!("{v}, which is not written as an integer"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<Slot>, E> {
        match self.kind {
            Kind::Str => Ok(Some(Slot::Str(v.to_owned()))),
            Kind::Int | Kind::IntPtr => Err(self.refuse(format!("the string {:?}", shown(v)))),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Option<Slot>, E> {
        match self.kind {
            Kind::Str => Ok(Some(Slot::Str(v))),
            Kind::Int | Kind::IntPtr => Err(self.refuse(format!("the string {:?}", shown(&v)))),
        }
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Option<Slot>, A::Error> {
        Err(self.refuse("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Option<Slot>, A::Error> {
        Err(self.refuse("an object"))
    }
}

/// At most 40 characters of a refused string.
fn shown(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQ: GoStruct =
        GoStruct { name: "R", fields: &[("LabID", Kind::Int), ("Name", Kind::Str), ("Lab", Kind::IntPtr)] };

    fn check(json: &str) -> Result<Vec<Slot>, String> {
        let mut d = serde_json::Deserializer::from_str(json);
        let out = REQ.decode(&mut d).map_err(|e| e.to_string())?;
        d.end().map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn ok(json: &str) -> (Option<i64>, String, Option<i64>) {
        let s = check(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        (s[0].int(), s[1].text().to_owned(), s[2].int())
    }

    #[test]
    fn keys_match_exactly_or_folded_and_the_last_wins() {
        assert_eq!(ok(r#"{"LabID":1,"Name":"a"}"#), (Some(1), "a".into(), None));
        assert_eq!(ok(r#"{"labid":1,"NAME":"a","lAb":3}"#), (Some(1), "a".into(), Some(3)));
        assert_eq!(ok(r#"{"LabID":1,"labid":2}"#), (Some(2), String::new(), None), "document order");
        assert_eq!(ok(r#"{"labid":2,"LabID":1}"#), (Some(1), String::new(), None));
        // Go's folding: the dotless i, the long s and the Kelvin sign fold to ASCII letters.
        assert_eq!(ok("{\"Lab\u{0131}D\":7,\"Name\":\"x\"}"), (Some(7), "x".into(), None));
        // The dotted capital I folds to a lower-case i in Go, which no folded name holds.
        assert_eq!(REQ.field_of("Lab\u{0130}D"), None);
        assert_eq!(ok(r#"{"LabIDs":1,"Other":true,"Name2":[1]}"#), (None, String::new(), None), "unknown keys");
        assert_eq!(ok("null"), (None, String::new(), None));
    }

    #[test]
    fn null_keeps_a_value_but_nils_a_pointer() {
        assert_eq!(ok(r#"{"LabID":5,"LabID":null,"Name":"a","name":null}"#), (Some(5), "a".into(), None));
        assert_eq!(ok(r#"{"Lab":5,"lab":null}"#), (None, String::new(), None));
    }

    #[test]
    fn types_are_go_types() {
        for (json, words) in [
            (r#"{"LabID":1.5}"#, "LabID must be a JSON integer (a Go int), not 1.5"),
            (r#"{"LabID":1.0}"#, "not written as an integer"),
            (r#"{"LabID":1e2}"#, "not written as an integer"),
            (r#"{"LabID":"5"}"#, "not the string \"5\""),
            (r#"{"LabID":true}"#, "not the boolean true"),
            (r#"{"LabID":18446744073709551615}"#, "overflows"),
            (r#"{"LabID":[1]}"#, "not an array"),
            (r#"{"Name":5}"#, "Name must be a JSON string, not the number 5"),
            (r#"{"Name":{}}"#, "not an object"),
            ("[]", "a JSON object"),
            ("5", "a JSON object"),
        ] {
            let e = check(json).unwrap_err();
            assert!(e.contains(words), "{json}: {e}");
        }
        assert_eq!(ok(r#"{"LabID":-9223372036854775808}"#).0, Some(i64::MIN));
    }
}
