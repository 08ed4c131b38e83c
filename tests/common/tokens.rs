//! Hand-made tokens for refusal tests: any header, any claims, signed with a test key
//! through the JOSE primitives directly (so the header carries exactly what the test wants).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;
use unwind::ect::SigningKey;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64_json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// The PKCS#8 form of a test key's private part (ES256 keys only).
fn encoding_key(key: &SigningKey) -> EncodingKey {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let jwk: Value = serde_json::from_str(&key.to_private_jwk_json()).unwrap();
    let part = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
    let mut public = vec![4u8];
    public.extend(part("x"));
    public.extend(part("y"));
    let pair = EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &part("d"),
        &public,
    )
    .unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    EncodingKey::from_ec_der(pkcs8.as_ref())
}

/// A compact JWS with exactly this header and these claims, signed ES256 with `key`.
pub fn sign_raw(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &encoding_key(key), Algorithm::ES256).unwrap();
    format!("{input}.{sig}")
}

/// The standard header for a test key.
pub fn header(key: &SigningKey) -> Value {
    serde_json::json!({"alg": "ES256", "typ": "wimse-exec+jwt", "kid": key.kid()})
}
