//! Compact-JWS parsing and the header rules, then the whole verifier on the same token.
//!
//! Input: a token as text when it is UTF-8 containing a '.', otherwise bytes split on 0xFF into
//! parts that are base64url-encoded and joined with '.' (so the fuzzer mutates the JSON of the
//! header and payload directly rather than their base64).
//!
//! Properties: no panic; every refusal is `malformed` (parsing) or a header code (header rules)
//! with a detail; a parsed token re-assembles to the input, agrees with `decode_unverified`, and
//! its header and claims re-encode to a token that parses to the same JSON; a verified token
//! is the input, hashed, with the claims the parser saw.
#![no_main]

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use unwind_ect::RejectCode;
use unwind_ect::claims::normalise;
use unwind_ect::jws::{
    check_header, decode_unverified, is_ect_typ, is_hmac, parse_asymmetric_alg, parse_compact,
};
use unwind_fuzz::{NOW, all_algorithms, assert_rejection, block_on, interop_verifier, same_map};

const MAX_BYTES: usize = 16 * 1024;

fn token_from(data: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(data) {
        Ok(text) if text.contains('.') => Cow::Borrowed(text),
        _ => Cow::Owned(
            data.split(|b| *b == 0xFF)
                .map(|part| URL_SAFE_NO_PAD.encode(part))
                .collect::<Vec<_>>()
                .join("."),
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let token = token_from(data);
    let token = token.as_ref();

    let parsed = parse_compact(token, MAX_BYTES);
    let verified = block_on(interop_verifier().verify(token, NOW));

    let parsed = match parsed {
        Err(r) => {
            assert_rejection(&r, &[RejectCode::Malformed]);
            // The verifier parses first: what the parser refuses, it refuses the same way.
            let v = verified.expect_err("verified a token the parser refused");
            assert_eq!(v.code, RejectCode::Malformed);
            return;
        }
        Ok(p) => p,
    };

    assert!(token.len() <= MAX_BYTES);
    assert_eq!(
        format!("{}.{}", parsed.signing_input, parsed.signature_b64),
        token
    );
    assert!(!parsed.signature_b64.is_empty());

    let (header, claims) =
        decode_unverified(token).expect("decode_unverified refused a parsed token");
    assert_eq!(header, Value::Object(parsed.header.clone()));
    assert_eq!(claims, Value::Object(parsed.claims.clone()));

    // Re-encoding what was parsed gives a token that parses to the same JSON.
    let again = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&parsed.header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&parsed.claims).unwrap()),
        parsed.signature_b64
    );
    let reparsed = parse_compact(&again, usize::MAX).expect("re-encoded token refused");
    assert!(same_map(&reparsed.header, &parsed.header));
    assert!(same_map(&reparsed.claims, &parsed.claims));

    match check_header(&parsed.header, &all_algorithms()) {
        Err(r) => assert_rejection(
            &r,
            &[
                RejectCode::AlgNotAllowed,
                RejectCode::InvalidTyp,
                RejectCode::InvalidHeader,
            ],
        ),
        Ok(h) => {
            assert_eq!(parse_asymmetric_alg(&h.alg_name), Some(h.alg));
            assert!(!is_hmac(h.alg));
            assert!(is_ect_typ(&h.typ));
            assert!(!h.kid.is_empty());
            for member in ["crit", "jku", "jwk", "x5u", "x5c"] {
                assert!(!parsed.header.contains_key(member));
            }
        }
    }

    match verified {
        Err(r) => assert_rejection(&r, &[]),
        Ok(ect) => {
            assert_eq!(ect.token, token);
            assert_eq!(ect.content_hash, unwind_ect::sha256_hex(token.as_bytes()));
            assert_eq!(ect.claims, parsed.claims);
            assert_eq!(
                Some(&Value::String(ect.header.kid.clone())),
                parsed.header.get("kid")
            );
            // The claim stage alone gives the same verified token.
            let again = normalise(
                token,
                ect.header.clone(),
                parsed.claims.clone(),
                interop_verifier().policy().max_parents,
            )
            .expect("normalise refused a verified token");
            assert_eq!(again, ect);
        }
    }
});
