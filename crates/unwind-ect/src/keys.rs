//! Signing keys: generation (aws-lc-rs), the private JWK file format, RFC 7638 key ids, and
//! signing of ECTs with either draft's names.
//!
//! jsonwebtoken cannot generate keys and its `encode` writes header members of its own choosing,
//! so keys come from aws-lc-rs and the compact JWS is assembled here, with a header of exactly
//! `alg`, `typ` and `kid`.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
    PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Profile;

/// Algorithms Unwind can generate keys for and sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyAlg {
    ES256,
    ES384,
    EdDSA,
}

impl KeyAlg {
    /// The JOSE algorithm.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }

    fn ecdsa(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            Self::ES256 => Some(&ECDSA_P256_SHA256_FIXED_SIGNING),
            Self::ES384 => Some(&ECDSA_P384_SHA384_FIXED_SIGNING),
            Self::EdDSA => None,
        }
    }

    fn curve(self) -> &'static str {
        match self {
            Self::ES256 => "P-256",
            Self::ES384 => "P-384",
            Self::EdDSA => "Ed25519",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

fn invalid(msg: impl Into<String>) -> KeyError {
    KeyError::Invalid(msg.into())
}

/// A private signing key with its public JWK. Cheap to clone (shared); `Debug` shows only the
/// algorithm and key id.
#[derive(Clone)]
pub struct SigningKey {
    inner: Arc<Inner>,
}

struct Inner {
    alg: KeyAlg,
    encoding: EncodingKey,
    /// EC: the private scalar `d`; Ed25519: the 32-byte seed.
    private: Vec<u8>,
    /// EC: the uncompressed point `04 || x || y`; Ed25519: the 32-byte public key.
    public: Vec<u8>,
    /// Public JWK with `kid`, `alg` and `use`.
    jwk: Jwk,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.inner.alg)
            .field("kid", &self.inner.kid)
            .finish_non_exhaustive()
    }
}

/// The private JWK file format (RFC 7517/7518/8037 members).
#[derive(Serialize, Deserialize)]
struct PrivateJwk {
    kty: String,
    crv: String,
    x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    d: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
}

impl SigningKey {
    /// Generates a new key.
    pub fn generate(alg: KeyAlg) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg.ecdsa() {
            Some(signing) => EcdsaKeyPair::generate_pkcs8(signing, &rng),
            None => Ed25519KeyPair::generate_pkcs8v1(&rng),
        }
        .map_err(|_| invalid("key generation failed"))?;
        Self::from_pkcs8(alg, pkcs8.as_ref())
    }

    /// Builds a key from a PKCS#8 document (v1 for Ed25519).
    fn from_pkcs8(alg: KeyAlg, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let (private, public, encoding) = match alg.ecdsa() {
            Some(signing) => {
                let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8)
                    .map_err(|e| invalid(format!("EC PKCS#8: {e}")))?;
                let d = AsBigEndian::<aws_lc_rs::encoding::EcPrivateKeyBin>::as_be_bytes(
                    &pair.private_key(),
                )
                .map_err(|_| invalid("cannot export the EC private key"))?;
                (
                    d.as_ref().to_vec(),
                    pair.public_key().as_ref().to_vec(),
                    EncodingKey::from_ec_der(pkcs8),
                )
            }
            None => {
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
                    .map_err(|e| invalid(format!("Ed25519 PKCS#8: {e}")))?;
                let seed = pair
                    .seed()
                    .map_err(|_| invalid("cannot export the Ed25519 seed"))?;
                let seed =
                    AsBigEndian::<aws_lc_rs::encoding::Curve25519SeedBin>::as_be_bytes(&seed)
                        .map_err(|_| invalid("cannot export the Ed25519 seed"))?;
                (
                    seed.as_ref().to_vec(),
                    pair.public_key().as_ref().to_vec(),
                    EncodingKey::from_ed_der(pkcs8),
                )
            }
        };
        let mut jwk = public_jwk_of(alg, &public)?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| invalid(format!("thumbprint: {e}")))?;
        jwk.common = CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::from(alg.algorithm())),
            key_id: Some(kid.clone()),
            ..Default::default()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                alg,
                encoding,
                private,
                public,
                jwk,
                kid,
            }),
        })
    }

    /// Reads a private JWK (EC `kty,crv,x,y,d` or OKP `kty,crv=Ed25519,x,d`). The key id is
    /// always the RFC 7638 thumbprint, whatever `kid` the file carries, so one key has one id.
    pub fn from_private_jwk_json(json: &str) -> Result<Self, KeyError> {
        let jwk: PrivateJwk =
            serde_json::from_str(json).map_err(|e| invalid(format!("private JWK: {e}")))?;
        let alg = match (jwk.kty.as_str(), jwk.crv.as_str()) {
            ("EC", "P-256") => KeyAlg::ES256,
            ("EC", "P-384") => KeyAlg::ES384,
            ("OKP", "Ed25519") => KeyAlg::EdDSA,
            (kty, crv) => return Err(invalid(format!("unsupported key kty={kty} crv={crv}"))),
        };
        if let Some(named) = &jwk.alg
            && named != alg_name(alg)
        {
            return Err(invalid(format!(
                "alg `{named}` does not fit crv {}",
                jwk.crv
            )));
        }
        let d = b64_field(&jwk.d, "d")?;
        let x = b64_field(&jwk.x, "x")?;
        let pkcs8 = match alg.ecdsa() {
            Some(signing) => {
                let y = b64_field(
                    jwk.y
                        .as_deref()
                        .ok_or_else(|| invalid("EC key without y"))?,
                    "y",
                )?;
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                EcdsaKeyPair::from_private_key_and_public_key(signing, &d, &point)
                    .map_err(|e| invalid(format!("EC key: {e}")))?
                    .to_pkcs8v1()
                    .map_err(|_| invalid("cannot encode the EC key"))?
            }
            None => Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                .map_err(|e| invalid(format!("Ed25519 key: {e}")))?
                .to_pkcs8v1()
                .map_err(|_| invalid("cannot encode the Ed25519 key"))?,
        };
        Self::from_pkcs8(alg, pkcs8.as_ref())
    }

    /// The private JWK (for the key file), with `kid`, `alg` and `use: "sig"`.
    pub fn to_private_jwk_json(&self) -> String {
        let inner = &self.inner;
        let (kty, x, y) = match inner.alg {
            KeyAlg::EdDSA => ("OKP", b64(&inner.public), None),
            _ => {
                let coords = inner.public.get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(coords.len() / 2);
                ("EC", b64(x), Some(b64(y)))
            }
        };
        let jwk = PrivateJwk {
            kty: kty.into(),
            crv: inner.alg.curve().into(),
            x,
            y,
            d: b64(&inner.private),
            kid: Some(inner.kid.clone()),
            alg: Some(alg_name(inner.alg).into()),
            use_: Some("sig".into()),
        };
        serde_json::to_string_pretty(&jwk).unwrap_or_default()
    }

    /// The public JWK, with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> Jwk {
        self.inner.jwk.clone()
    }

    /// A JWKS holding only this key's public JWK.
    pub fn public_jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public_jwk()],
        }
    }

    /// RFC 7638 SHA-256 thumbprint, base64url.
    pub fn kid(&self) -> &str {
        &self.inner.kid
    }

    pub fn key_alg(&self) -> KeyAlg {
        self.inner.alg
    }

    pub fn alg(&self) -> Algorithm {
        self.inner.alg.algorithm()
    }

    /// Signs `claims` as a compact JWS with header `{alg, typ, kid}` and nothing else.
    pub fn sign(&self, claims: &Map<String, Value>, typ: &str) -> Result<String, KeyError> {
        let header = serde_json::json!({
            "alg": alg_name(self.inner.alg),
            "typ": typ,
            "kid": self.inner.kid,
        });
        let header = serde_json::to_vec(&header).map_err(|e| KeyError::Sign(e.to_string()))?;
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut out = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 100);
        URL_SAFE_NO_PAD.encode_string(&header, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        let sig = jsonwebtoken::crypto::sign(out.as_bytes(), &self.inner.encoding, self.alg())
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        out.push('.');
        out.push_str(&sig);
        Ok(out)
    }

    /// Signs arbitrary header and payload bytes (tests forge tokens with unusual headers or
    /// JSON that `sign` would never produce).
    #[cfg(test)]
    pub(crate) fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.inner.encoding, self.alg())
            .expect("test signing");
        format!("{input}.{sig}")
    }

    /// Signs an ECT with the `typ` of `profile`. The claim names are the caller's; see
    /// [`Profile::parents_claim`] and [`Profile::ext_claim`].
    pub fn sign_ect(
        &self,
        claims: &Map<String, Value>,
        profile: Profile,
    ) -> Result<String, KeyError> {
        self.sign(claims, profile.typ())
    }
}

fn alg_name(alg: KeyAlg) -> &'static str {
    match alg {
        KeyAlg::ES256 => "ES256",
        KeyAlg::ES384 => "ES384",
        KeyAlg::EdDSA => "EdDSA",
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_field(value: &str, name: &str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| invalid(format!("{name}: {e}")))
}

/// The public JWK (without common parameters) of a raw public key.
fn public_jwk_of(alg: KeyAlg, public: &[u8]) -> Result<Jwk, KeyError> {
    let algorithm = match alg {
        KeyAlg::EdDSA => AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: b64(public),
        }),
        KeyAlg::ES256 | KeyAlg::ES384 => {
            let coords = match public.split_first() {
                Some((0x04, rest)) if rest.len() % 2 == 0 => rest,
                _ => return Err(invalid("EC public key is not an uncompressed point")),
            };
            let (x, y) = coords.split_at(coords.len() / 2);
            AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: if alg == KeyAlg::ES256 {
                    EllipticCurve::P256
                } else {
                    EllipticCurve::P384
                },
                x: b64(x),
                y: b64(y),
            })
        }
    };
    Ok(Jwk {
        common: CommonParameters::default(),
        algorithm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::DecodingKey;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        match json!({"iss": "spiffe://x/a", "jti": "j1"}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn generate_sign_verify_every_alg() {
        for alg in [KeyAlg::ES256, KeyAlg::ES384, KeyAlg::EdDSA] {
            let key = SigningKey::generate(alg).unwrap();
            let token = key.sign(&claims(), "exec+jwt").unwrap();
            let (h, _) = crate::jws::decode_unverified(&token).unwrap();
            assert_eq!(
                h,
                json!({"alg": alg_name(alg), "typ": "exec+jwt", "kid": key.kid()})
            );
            let parts: Vec<&str> = token.rsplitn(2, '.').collect();
            let dk = DecodingKey::from_jwk(&key.public_jwk()).unwrap();
            assert!(
                jsonwebtoken::crypto::verify(parts[0], parts[1].as_bytes(), &dk, key.alg())
                    .unwrap()
            );
        }
    }

    #[test]
    fn kid_is_rfc7638_thumbprint() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256).unwrap(), key.kid());
        assert_eq!(jwk.common.key_id.as_deref(), Some(key.kid()));
        assert_eq!(key.kid().len(), 43);
        let ed = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        assert_eq!(
            ed.public_jwk().thumbprint(ThumbprintHash::SHA256).unwrap(),
            ed.kid()
        );
    }

    #[test]
    fn private_jwk_round_trip() {
        for alg in [KeyAlg::ES256, KeyAlg::ES384, KeyAlg::EdDSA] {
            let key = SigningKey::generate(alg).unwrap();
            let text = key.to_private_jwk_json();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["use"], "sig");
            assert_eq!(v["alg"], alg_name(alg));
            assert!(v["d"].is_string());
            let back = SigningKey::from_private_jwk_json(&text).unwrap();
            assert_eq!(back.kid(), key.kid());
            assert_eq!(back.public_jwk(), key.public_jwk());
            // The reloaded key signs tokens the original's public key verifies.
            let token = back.sign(&claims(), "exec+jwt").unwrap();
            let parts: Vec<&str> = token.rsplitn(2, '.').collect();
            let dk = DecodingKey::from_jwk(&key.public_jwk()).unwrap();
            assert!(
                jsonwebtoken::crypto::verify(parts[0], parts[1].as_bytes(), &dk, key.alg())
                    .unwrap()
            );
        }
    }

    #[test]
    fn private_jwk_refusals() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let mut v: Value = serde_json::from_str(&key.to_private_jwk_json()).unwrap();
        // Mismatched private and public halves.
        let other: Value = serde_json::from_str(
            &SigningKey::generate(KeyAlg::ES256)
                .unwrap()
                .to_private_jwk_json(),
        )
        .unwrap();
        v["d"] = other["d"].clone();
        assert!(SigningKey::from_private_jwk_json(&v.to_string()).is_err());
        assert!(SigningKey::from_private_jwk_json(r#"{"kty":"oct","k":"abc"}"#).is_err());
        assert!(SigningKey::from_private_jwk_json("not json").is_err());
        let mut v: Value = serde_json::from_str(&key.to_private_jwk_json()).unwrap();
        v["alg"] = json!("ES384");
        assert!(SigningKey::from_private_jwk_json(&v.to_string()).is_err());
    }

    #[test]
    fn debug_hides_private_key() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let v: Value = serde_json::from_str(&key.to_private_jwk_json()).unwrap();
        let d = v["d"].as_str().unwrap();
        let debug = format!("{key:?}");
        assert!(!debug.contains(d));
        assert!(debug.contains(key.kid()));
    }

    #[test]
    fn send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<SigningKey>();
    }

    #[test]
    fn sign_ect_uses_profile_typ() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        for p in [Profile::Draft00, Profile::Draft01] {
            let (h, _) =
                crate::jws::decode_unverified(&key.sign_ect(&claims(), p).unwrap()).unwrap();
            assert_eq!(h["typ"], p.typ());
        }
    }
}
