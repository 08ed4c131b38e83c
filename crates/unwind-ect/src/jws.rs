//! Compact JWS parsing: exactly three base64url parts, size limit, strict JSON (duplicate keys
//! refused), header rules (`alg` allow-list before any key lookup, `typ`, `kid`, no key
//! material or URLs in the header).
//!
//! The token is parsed here, once, and the raw parts are handed to the signature check, so
//! nothing downstream re-parses a header that a lenient parser might read differently.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{RejectCode, Rejection};

/// A compact JWS split into its parts, header and payload decoded as strict JSON objects.
/// Nothing in it has been verified yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedJws {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`, the bytes the signature covers.
    pub signing_input: String,
    /// The third part, as received.
    pub signature_b64: String,
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectCode::Malformed, detail)
}

/// Splits and decodes a compact JWS. Refuses (`malformed`) a token over `max_bytes`, anything
/// but three non-empty base64url parts (so unsigned L1 tokens and JWE are refused), header or
/// payload that is not a JSON object, and duplicate JSON keys anywhere.
pub fn parse_compact(token: &str, max_bytes: usize) -> Result<ParsedJws, Rejection> {
    if token.len() > max_bytes {
        return Err(malformed(format!(
            "token is {} bytes, more than the limit of {max_bytes}",
            token.len()
        )));
    }
    let (header_b64, payload_b64, signature_b64) = split_three(token)?;
    if signature_b64.is_empty() {
        return Err(malformed("unsigned token (empty signature part)"));
    }
    // The signature is decoded again by the verifier; checking it here keeps every
    // encoding error `malformed` rather than a signature failure.
    let sig_len = decoded_len(signature_b64, "signature")?;
    if sig_len == 0 {
        return Err(malformed("empty signature"));
    }
    let header = decode_object(header_b64, "header")?;
    let claims = decode_object(payload_b64, "payload")?;
    Ok(ParsedJws {
        header,
        claims,
        signing_input: token[..header_b64.len() + 1 + payload_b64.len()].to_owned(),
        signature_b64: signature_b64.to_owned(),
    })
}

/// Decodes header and payload without verifying anything (for display, e.g. `unwind ect
/// decode`). The same strict parsing rules apply, except that the signature may be empty.
pub fn decode_unverified(token: &str) -> Result<(Value, Value), Rejection> {
    let token = token.trim();
    let (header_b64, payload_b64, signature_b64) = split_three(token)?;
    if !signature_b64.is_empty() {
        decoded_len(signature_b64, "signature")?;
    }
    let header = decode_object(header_b64, "header")?;
    let claims = decode_object(payload_b64, "payload")?;
    Ok((Value::Object(header), Value::Object(claims)))
}

fn split_three(token: &str) -> Result<(&str, &str, &str), Rejection> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            if h.is_empty() || p.is_empty() {
                return Err(malformed("empty header or payload part"));
            }
            Ok((h, p, s))
        }
        _ => Err(malformed(
            "a compact JWS has exactly three parts separated by '.'",
        )),
    }
}

fn decoded_len(part: &str, what: &str) -> Result<usize, Rejection> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map(|bytes| bytes.len())
        .map_err(|e| malformed(format!("{what} is not base64url without padding: {e}")))
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| malformed(format!("{what} is not base64url without padding: {e}")))?;
    match parse_strict_json(&bytes).map_err(|e| malformed(format!("{what}: {e}")))? {
        Value::Object(map) => Ok(map),
        _ => Err(malformed(format!("{what} is not a JSON object"))),
    }
}

/// Parses JSON into a `Value`, refusing duplicate object keys at any depth (serde_json would
/// silently keep the last one, so two parsers could disagree on what was signed).
pub fn parse_strict_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A `DeserializeSeed` building a `serde_json::Value` that errors on a repeated key.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate JSON key `{key}`")));
            }
            let value = access.next_value_seed(StrictValue)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// The header fields the verifier needs, after the header rules passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedHeader {
    pub alg: Algorithm,
    pub alg_name: String,
    pub typ: String,
    pub kid: String,
}

/// Header members that would bring key material, key locations or extensions the verifier does
/// not understand; their presence refuses the token (`invalid_header`).
const FORBIDDEN_HEADER_MEMBERS: &[&str] = &["crit", "jku", "jwk", "x5u", "x5c"];

/// Applies the header rules in order: `alg` (present, a string, never `none` or HMAC whatever
/// the allow-list says, then in `allowed`), `typ`, forbidden members, `kid`. Runs before any
/// key lookup so a disallowed algorithm never reaches key resolution.
pub fn check_header(
    header: &Map<String, Value>,
    allowed: &[Algorithm],
) -> Result<CheckedHeader, Rejection> {
    let alg_name = match header.get("alg") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::AlgNotAllowed,
                "alg is not a string",
            ));
        }
        None => {
            return Err(Rejection::new(
                RejectCode::AlgNotAllowed,
                "header has no alg",
            ));
        }
    };
    let alg = parse_asymmetric_alg(alg_name)
        .filter(|alg| allowed.contains(alg))
        .ok_or_else(|| {
            Rejection::new(
                RejectCode::AlgNotAllowed,
                format!("alg `{alg_name}` is not allowed"),
            )
        })?;

    let typ = match header.get("typ") {
        Some(Value::String(t)) if is_ect_typ(t) => t.clone(),
        Some(Value::String(t)) => {
            return Err(Rejection::new(
                RejectCode::InvalidTyp,
                format!("typ `{t}` is neither wimse-exec+jwt nor exec+jwt"),
            ));
        }
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidTyp,
                "typ is not a string",
            ));
        }
        None => return Err(Rejection::new(RejectCode::InvalidTyp, "header has no typ")),
    };

    if let Some(name) = FORBIDDEN_HEADER_MEMBERS
        .iter()
        .find(|m| header.contains_key(**m))
    {
        return Err(Rejection::new(
            RejectCode::InvalidHeader,
            format!("header member `{name}` is not accepted"),
        ));
    }

    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidHeader,
                "kid must be a non-empty string",
            ));
        }
        None => {
            return Err(Rejection::new(
                RejectCode::InvalidHeader,
                "header has no kid",
            ));
        }
    };

    Ok(CheckedHeader {
        alg,
        alg_name: alg_name.clone(),
        typ,
        kid,
    })
}

/// Maps an `alg` name to an asymmetric algorithm; `none`, every `HS*` and unknown names give
/// `None`, so they can never be allowed by configuration.
pub fn parse_asymmetric_alg(name: &str) -> Option<Algorithm> {
    match name {
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EdDSA" => Some(Algorithm::EdDSA),
        "PS256" => Some(Algorithm::PS256),
        "PS384" => Some(Algorithm::PS384),
        "PS512" => Some(Algorithm::PS512),
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        _ => None,
    }
}

/// True for an HMAC algorithm, which is never accepted.
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// `typ` of either draft: `wimse-exec+jwt` or `exec+jwt`, case-insensitive, with an optional
/// `application/` media-type prefix.
pub fn is_ect_typ(typ: &str) -> bool {
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    bare.eq_ignore_ascii_case("wimse-exec+jwt") || bare.eq_ignore_ascii_case("exec+jwt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, payload: &str, sig: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), sig)
    }

    fn header_map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    const HDR: &str = r#"{"alg":"ES256","typ":"wimse-exec+jwt","kid":"k1"}"#;

    #[test]
    fn parses_three_parts() {
        let t = token(HDR, r#"{"a":{"b":[1,2,{"c":null}]}}"#, "c2ln");
        let p = parse_compact(&t, 16384).unwrap();
        assert_eq!(p.header["kid"], "k1");
        assert_eq!(p.claims["a"]["b"][2], json!({"c": null}));
        assert_eq!(p.signature_b64, "c2ln");
        assert_eq!(format!("{}.c2ln", p.signing_input), t);
    }

    #[test]
    fn over_size_limit_is_malformed() {
        let t = token(HDR, &format!(r#"{{"x":"{}"}}"#, "a".repeat(20000)), "c2ln");
        let e = parse_compact(&t, 16384).unwrap_err();
        assert_eq!(e.code, RejectCode::Malformed);
        assert!(parse_compact(&t, 1 << 20).is_ok());
    }

    #[test]
    fn two_or_four_parts_are_malformed() {
        let two = format!("{}.{}", b64(HDR), b64("{}"));
        assert_eq!(
            parse_compact(&two, 16384).unwrap_err().code,
            RejectCode::Malformed
        );
        let four = format!("{}.c2ln", token(HDR, "{}", "c2ln"));
        assert_eq!(
            parse_compact(&four, 16384).unwrap_err().code,
            RejectCode::Malformed
        );
    }

    #[test]
    fn unsigned_token_is_malformed() {
        let t = token(r#"{"alg":"none"}"#, r#"{"iss":"x"}"#, "");
        assert_eq!(
            parse_compact(&t, 16384).unwrap_err().code,
            RejectCode::Malformed
        );
    }

    #[test]
    fn bad_base64_is_malformed() {
        for sig in ["c2ln=", "c2l*", "c2ln+/"] {
            let t = token(HDR, "{}", sig);
            assert_eq!(
                parse_compact(&t, 16384).unwrap_err().code,
                RejectCode::Malformed,
                "{sig}"
            );
        }
        let padded = format!("{}=.{}.c2ln", b64(HDR), b64("{}"));
        assert_eq!(
            parse_compact(&padded, 16384).unwrap_err().code,
            RejectCode::Malformed
        );
        let not_b64 = format!("{}.%%%.c2ln", b64(HDR));
        assert_eq!(
            parse_compact(&not_b64, 16384).unwrap_err().code,
            RejectCode::Malformed
        );
    }

    #[test]
    fn non_object_json_is_malformed() {
        for payload in ["[1]", "\"x\"", "12", "{", "{} x"] {
            let t = token(HDR, payload, "c2ln");
            assert_eq!(
                parse_compact(&t, 16384).unwrap_err().code,
                RejectCode::Malformed,
                "{payload}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_malformed_anywhere() {
        let cases = [
            (
                r#"{"alg":"ES256","alg":"none","typ":"exec+jwt","kid":"k"}"#,
                "{}",
            ),
            (HDR, r#"{"jti":"a","jti":"b"}"#),
            (HDR, r#"{"ext":{"k":1,"k":2}}"#),
            (HDR, r#"{"x":[{"a":1,"a":1}]}"#),
        ];
        for (h, p) in cases {
            let e = parse_compact(&token(h, p, "c2ln"), 16384).unwrap_err();
            assert_eq!(e.code, RejectCode::Malformed, "{h} {p}");
            assert!(e.detail.contains("duplicate"), "{}", e.detail);
        }
    }

    #[test]
    fn decode_unverified_allows_empty_signature() {
        let t = token(HDR, r#"{"jti":"a"}"#, "");
        let (h, c) = decode_unverified(&t).unwrap();
        assert_eq!(h["alg"], "ES256");
        assert_eq!(c["jti"], "a");
        assert!(decode_unverified("a.b").is_err());
    }

    #[test]
    fn alg_none_and_hmac_refused_whatever_the_allow_list() {
        let all = [
            Algorithm::ES256,
            Algorithm::HS256,
            Algorithm::HS384,
            Algorithm::HS512,
        ];
        for alg in ["none", "HS256", "HS384", "HS512", "hs256", "RS1"] {
            let h = header_map(json!({"alg": alg, "typ": "exec+jwt", "kid": "k"}));
            assert_eq!(
                check_header(&h, &all).unwrap_err().code,
                RejectCode::AlgNotAllowed,
                "{alg}"
            );
        }
        let h = header_map(json!({"typ": "exec+jwt", "kid": "k"}));
        assert_eq!(
            check_header(&h, &all).unwrap_err().code,
            RejectCode::AlgNotAllowed
        );
        let h = header_map(json!({"alg": 7, "typ": "exec+jwt", "kid": "k"}));
        assert_eq!(
            check_header(&h, &all).unwrap_err().code,
            RejectCode::AlgNotAllowed
        );
    }

    #[test]
    fn alg_outside_allow_list_refused() {
        let h = header_map(json!({"alg": "ES384", "typ": "exec+jwt", "kid": "k"}));
        assert_eq!(
            check_header(&h, &[Algorithm::ES256]).unwrap_err().code,
            RejectCode::AlgNotAllowed
        );
        assert!(check_header(&h, &[Algorithm::ES256, Algorithm::ES384]).is_ok());
    }

    #[test]
    fn typ_spellings() {
        for typ in [
            "wimse-exec+jwt",
            "exec+jwt",
            "WIMSE-EXEC+JWT",
            "Exec+JWT",
            "application/wimse-exec+jwt",
            "Application/exec+jwt",
        ] {
            let h = header_map(json!({"alg": "ES256", "typ": typ, "kid": "k"}));
            assert!(check_header(&h, &[Algorithm::ES256]).is_ok(), "{typ}");
        }
        for typ in [
            json!("JWT"),
            json!("exec+jwt "),
            json!("application/jwt"),
            json!(1),
        ] {
            let h = header_map(json!({"alg": "ES256", "typ": typ, "kid": "k"}));
            assert_eq!(
                check_header(&h, &[Algorithm::ES256]).unwrap_err().code,
                RejectCode::InvalidTyp
            );
        }
        let h = header_map(json!({"alg": "ES256", "kid": "k"}));
        assert_eq!(
            check_header(&h, &[Algorithm::ES256]).unwrap_err().code,
            RejectCode::InvalidTyp
        );
    }

    #[test]
    fn key_material_and_crit_in_header_refused() {
        for member in ["jku", "jwk", "x5u", "x5c", "crit"] {
            let mut h = header_map(json!({"alg": "ES256", "typ": "exec+jwt", "kid": "k"}));
            h.insert(member.into(), json!("x"));
            let e = check_header(&h, &[Algorithm::ES256]).unwrap_err();
            assert_eq!(e.code, RejectCode::InvalidHeader, "{member}");
        }
    }

    #[test]
    fn kid_required() {
        for h in [
            json!({"alg": "ES256", "typ": "exec+jwt"}),
            json!({"alg": "ES256", "typ": "exec+jwt", "kid": ""}),
            json!({"alg": "ES256", "typ": "exec+jwt", "kid": 3}),
        ] {
            let e = check_header(&header_map(h), &[Algorithm::ES256]).unwrap_err();
            assert_eq!(e.code, RejectCode::InvalidHeader);
        }
    }
}
