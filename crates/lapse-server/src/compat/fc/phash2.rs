//! `:erlang.phash2/1` of a JSON-decoded term, bit for bit as the BEAM computes it
//! (`erts/emulator/beam/erl_term_hashing.c`, `make_hash2`), so that `/stats` shows the seed's
//! `spec_hash`: `FcExCp.SpecHash.hash/1` is `spec |> Enum.sort() |> Enum.into(%{}) |>
//! :erlang.phash2() |> Integer.to_string(16)`. Sorting and rebuilding a map gives the same map,
//! so that is the phash2 of the spec map as Jason decoded it, in uppercase hex without leading
//! zeros (1 to 7 digits: phash2's range is 2^27).
//!
//! The JSON value is read as Jason decodes it: objects are maps with binary keys, strings are
//! binaries, integers integers, numbers with a fraction or exponent floats, arrays lists,
//! `true`/`false`/`null` the atoms `true`/`false`/`nil`. phash2 is documented as stable across
//! releases and machines; the test vectors below were printed by OTP 25's `erlang:phash2/1`.
//! Integers beyond 64 bits do not arise (serde_json reads them as floats, Jason as bignums).

use serde_json::Value;

/// The seed's `spec_hash` of a spec: uppercase hex of [`phash2`].
pub fn spec_hash(spec: &Value) -> String {
    format!("{:X}", phash2(spec))
}

/// `:erlang.phash2(term)` of the term Jason decodes `value` into.
pub fn phash2(value: &Value) -> u32 {
    term(value, 0) & ((1 << 27) - 1)
}

const HCONST: u32 = 0x9e37_79b9;
const HCONST_2: u32 = 0x3c6e_f372;
const HCONST_3: u32 = 0xdaa6_6d2b;
const HCONST_4: u32 = 0x78dd_e6e4;
const HCONST_10: u32 = 0x2e2a_c13a;
const HCONST_11: u32 = 0xcc62_3af3;
const HCONST_12: u32 = 0x6a99_b4ac;
const HCONST_13: u32 = 0x08d1_2e65;
const HCONST_16: u32 = 0xe377_9b90;
const HCONST_19: u32 = 0xbe1e_08bb;
/// `NIL_DEF`, the type code of `[]` (`erl_term.h`) that `UINT32_HASH(NIL_DEF, HCONST_2)` mixes in.
const NIL_DEF: u32 = 0x2;
/// `[]` hashed first (`hash == 0`).
const NIL_FIRST: u32 = 3_468_870_702;

/// Bob Jenkins' mix, as `MIX(a, b, c)`.
fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 13);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 8);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 13);
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 12);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 16);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 5);
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 3);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 10);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 15);
    (a, b, c)
}

/// `UINT32_HASH_2(x, y, constant)` into `hash`.
fn hash2(hash: u32, x: u32, y: u32, constant: u32) -> u32 {
    mix(constant.wrapping_add(x), constant.wrapping_add(y), hash).2
}

/// `UINT32_HASH(x, constant)`.
fn hash1(hash: u32, x: u32, constant: u32) -> u32 {
    hash2(hash, x, 0, constant)
}

/// The atom table's hash of an atom's name (`atom_hash` in `atom.c`: hashpjw over its
/// bytes); the names here are ASCII.
fn atom_value(name: &str) -> u32 {
    let mut h: u32 = 0;
    for &v in name.as_bytes() {
        h = (h << 4).wrapping_add(u32::from(v));
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
            h ^= g;
        }
    }
    h
}

fn atom(name: &str, hash: u32) -> u32 {
    if hash == 0 { atom_value(name) } else { hash1(hash, atom_value(name), HCONST_3) }
}

fn nil(hash: u32) -> u32 {
    if hash == 0 { NIL_FIRST } else { hash1(hash, NIL_DEF, HCONST_2) }
}

fn integer(n: i128, hash: u32) -> u32 {
    if (-(1 << 27)..(1 << 27)).contains(&n) {
        // SINT32_HASH: negative numbers are mixed twice.
        let y = n as i32;
        let hash = if y < 0 { hash1(hash, y.wrapping_neg() as u32, HCONST) } else { hash };
        hash1(hash, y as u32, HCONST)
    } else {
        let constant = if n < 0 { HCONST_10 } else { HCONST_11 };
        let t = n.unsigned_abs() as u64;
        hash2(hash, t as u32, (t >> 32) as u32, constant)
    }
}

fn float(f: f64, hash: u32) -> u32 {
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    hash2(hash, (bits >> 32) as u32, bits as u32, HCONST_12)
}

/// Jenkins' one-at-a-time block hash of a binary, seeded with `HCONST_13 + hash`.
fn binary(bytes: &[u8], hash: u32) -> u32 {
    let initval = HCONST_13.wrapping_add(hash);
    if bytes.is_empty() {
        return initval;
    }
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    let (mut a, mut b, mut c) = (HCONST, HCONST, initval);
    let mut chunks = bytes.chunks_exact(12);
    for k in &mut chunks {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        (a, b, c) = mix(a, b, c);
    }
    let rest = chunks.remainder();
    c = c.wrapping_add(bytes.len() as u32);
    for (i, &byte) in rest.iter().enumerate() {
        let byte = u32::from(byte);
        match i {
            0..=3 => a = a.wrapping_add(byte << (8 * i)),
            4..=7 => b = b.wrapping_add(byte << (8 * (i - 4))),
            // The first byte of c is the length's.
            _ => c = c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    mix(a, b, c).2
}

fn is_byte(v: &Value) -> Option<u32> {
    v.as_u64().filter(|n| *n <= 255).map(|n| n as u32)
}

fn list(items: &[Value], mut hash: u32) -> u32 {
    let mut i = 0;
    loop {
        if i == items.len() {
            return nil(hash);
        }
        // A run of bytes (a string's characters) is hashed four at a time.
        let (mut count, mut run) = (0, 0u32);
        while let Some(byte) = items.get(i).and_then(is_byte) {
            run = (run << 8).wrapping_add(byte);
            if count == 3 {
                hash = hash1(hash, run, HCONST_4);
                (count, run) = (0, 0);
            } else {
                count += 1;
            }
            i += 1;
        }
        if count > 0 {
            hash = hash1(hash, run, HCONST_4);
        }
        if let Some(head) = items.get(i) {
            hash = term(head, hash);
            i += 1;
        }
    }
}

fn map(entries: &serde_json::Map<String, Value>, hash: u32) -> u32 {
    let hash = hash1(hash, entries.len() as u32, HCONST_16);
    if entries.is_empty() {
        return hash;
    }
    // Each pair is hashed on its own and the pairs xored: the order does not count.
    let pairs = entries.iter().fold(0, |acc, (k, v)| acc ^ term(v, binary(k.as_bytes(), 0)));
    hash1(hash, pairs, HCONST_19)
}

fn term(value: &Value, hash: u32) -> u32 {
    match value {
        Value::Null => atom("nil", hash),
        Value::Bool(true) => atom("true", hash),
        Value::Bool(false) => atom("false", hash),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => integer(i128::from(i), hash),
            (None, Some(u), _) => integer(i128::from(u), hash),
            (None, None, f) => float(f.unwrap_or(0.0), hash),
        },
        Value::String(s) => binary(s.as_bytes(), hash),
        Value::Array(items) => list(items, hash),
        Value::Object(entries) => map(entries, hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erlang:phash2/1` on OTP 25 (`escript`, printed with `~.16B`), of the term Jason
    /// decodes each JSON text into: every kind of term and each branch of the algorithm
    /// (small and large integers, negatives, floats and zero, binaries of 0, 1, 12+ bytes and
    /// non-ASCII, byte runs in lists, nested maps, atoms first and not first).
    const VECTORS: &[(&str, &str)] = &[
        ("{}", "25D741D"),
        ("null", "74FC"),
        ("true", "7B9B5"),
        ("false", "6C8395"),
        ("0", "549D10D"),
        ("1", "27E3EA"),
        ("-1", "2A07B5D"),
        ("255", "2AA98BD"),
        ("134217727", "6B62F77"),
        ("134217728", "BC856B"),
        ("-134217729", "492F3AE"),
        ("9223372036854775807", "1ADFC9D"),
        ("18446744073709551615", "32F5BD6"),
        ("-9223372036854775808", "785DD07"),
        ("1.5", "9E641B"),
        ("0.0", "13E89D8"),
        ("-2.25e10", "340E4E4"),
        ("\"\"", "D12E65"),
        ("\"a\"", "6B93A8F"),
        ("\"hello world!\"", "1882573"),
        ("\"0123456789abcdefghijklmnopq\"", "363BB42"),
        ("\"\\u00e9\"", "532CC35"),
        ("[]", "6C2C42E"),
        ("[1,2,3]", "18980CC"),
        ("[1,2,3,4,5]", "3EFF0CA"),
        ("[\"a\"]", "33345DE"),
        ("[1,\"a\",2,300]", "2E0E66C"),
        ("[[]]", "5BF3474"),
        ("[null,true]", "778FF1D"),
        ("{\"a\":1}", "1E0EE4A"),
        ("{\"cmd\":[\"sleep\"]}", "2EBDA22"),
        ("{\"a\":{\"b\":[]},\"c\":null}", "325432C"),
        // A spec of the seed's README shape, with `role` and an integer env value.
        (
            r#"{"cmd":["/app/bin/server"],"env":{"PORT":4000,"MIX_ENV":"prod"},"resources":{"vcpu":2,"mem_mb":512},
               "lifecycle":"service","role":"api","warm_pool":{"min":1,"max":3}}"#,
            "5F845FB",
        ),
    ];

    #[test]
    fn phash2_matches_the_beam() {
        for (json, want) in VECTORS {
            let value: Value = serde_json::from_str(json).unwrap();
            assert_eq!(spec_hash(&value), *want, "{json}");
        }
    }

    #[test]
    fn a_map_of_more_than_32_keys_hashes_as_the_beam_does() {
        // A HAMT, not a flatmap, in the BEAM: `maps:from_list([{integer_to_binary(I), I} || I <- lists:seq(1, 40)])`.
        let big: serde_json::Map<String, Value> = (1..=40).map(|i| (i.to_string(), Value::from(i))).collect();
        assert_eq!(spec_hash(&Value::Object(big)), "769020B");
    }

    #[test]
    fn key_order_does_not_count() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":[2],"c":{"d":null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"c":{"d":null},"b":[2],"a":1}"#).unwrap();
        assert_eq!(phash2(&a), phash2(&b));
    }
}
