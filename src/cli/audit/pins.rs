//! `unwind verify --live --head FILE`: positions and hashes Unwind signed earlier (a pinned
//! head, a receipt, a batch receipt), checked against the chain as it is now. A chain
//! recomputed after an edit is consistent with itself and with the head it serves; it cannot
//! keep the hash a saved head names.
//!
//! The file holds one JSON document or JSON lines (`ledger-heads.jsonl`), each one of: a signed
//! head (`GET /v1/ledger/head`, a line of the heads file), a `ledger.head` webhook event, a
//! receipt, an ingest answer carrying one, or a batch answer with its `batch_receipt`. Only
//! what the signature covers is used.

use std::path::Path;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use serde_json::{Map, Value};

use crate::api::ledger::{BATCH_RECEIPT_TYP, HEAD_TYP, RECEIPT_TYP};
use crate::cli::CliError;
use crate::ect::jws;

/// One signed position of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub seq: i64,
    pub chain_hash: String,
    /// The token at that position, for receipts.
    pub jti: Option<String>,
    /// What signed it, for the report (`head signed at <iat>`, `receipt`).
    pub what: String,
}

/// Reads the signed values of `path`: pins, and a finding for each signature that does not
/// verify with `keys`. A file that is not JSON (or JSON lines) is a usage error.
pub fn load(path: &Path, keys: &JwkSet) -> Result<(Vec<Pin>, Vec<String>), CliError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{shown}: cannot be read: {e}")))?;
    let documents: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(doc) => vec![doc],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| CliError::Usage(format!("{shown}: line {}: not JSON: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?,
    };
    let mut sigs = Vec::new();
    for doc in &documents {
        collect_sigs(doc, &mut sigs);
    }
    if sigs.is_empty() {
        return Err(CliError::Usage(format!(
            "{shown}: no signed head or receipt (a JSON object with `sig`, `receipt` or \
             `batch_receipt`)"
        )));
    }
    let mut pins = Vec::new();
    let mut findings = Vec::new();
    for sig in sigs {
        match verify(&sig, keys, &[HEAD_TYP, RECEIPT_TYP, BATCH_RECEIPT_TYP]) {
            Ok((typ, claims)) => pins.extend(pins_of(&typ, &claims)),
            Err(detail) => findings.push(format!("{shown}: {detail}")),
        }
    }
    Ok((pins, findings))
}

/// The signatures a document carries (a head's or receipt's `sig`, an answer's receipt, a
/// batch's receipt, an event's head).
fn collect_sigs(doc: &Value, out: &mut Vec<String>) {
    let Some(obj) = doc.as_object() else {
        return;
    };
    if let Some(sig) = obj.get("sig").and_then(Value::as_str) {
        out.push(sig.to_string());
    }
    if let Some(sig) = obj.get("batch_receipt").and_then(Value::as_str) {
        out.push(sig.to_string());
    }
    for member in ["receipt", "head"] {
        if let Some(inner) = obj.get(member) {
            collect_sigs(inner, out);
        }
    }
}

fn pins_of(typ: &str, claims: &Map<String, Value>) -> Vec<Pin> {
    let pin = |c: &Map<String, Value>, what: String| -> Option<Pin> {
        Some(Pin {
            seq: c.get("seq")?.as_i64()?,
            chain_hash: c.get("chain_hash")?.as_str()?.to_string(),
            jti: c.get("jti").and_then(Value::as_str).map(str::to_string),
            what,
        })
    };
    let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
    match typ {
        BATCH_RECEIPT_TYP => claims
            .get("entries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .filter_map(|e| pin(e, format!("batch receipt signed at {iat}")))
            .collect(),
        RECEIPT_TYP => pin(claims, format!("receipt signed at {iat}"))
            .into_iter()
            .collect(),
        // A head names no jti; an empty ledger's head (seq 0) pins nothing.
        _ => pin(claims, format!("head signed at {iat}"))
            .filter(|p| p.seq > 0)
            .map(|p| Pin { jti: None, ..p })
            .into_iter()
            .collect(),
    }
}

/// Verifies a compact JWS of one of `typs` with `keys`; its `typ` and claims, or why not.
pub fn verify(
    sig: &str,
    keys: &JwkSet,
    typs: &[&str],
) -> Result<(String, Map<String, Value>), String> {
    let parsed =
        jws::parse_compact(sig, 64 * 1024).map_err(|e| format!("not a compact JWS: {e}"))?;
    let typ = parsed
        .header
        .get("typ")
        .and_then(Value::as_str)
        .filter(|t| typs.contains(t))
        .ok_or_else(|| format!("the signature is not of type {}", typs.join(" or ")))?
        .to_string();
    let kid = parsed
        .header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or("the signature names no kid")?;
    let jwk = keys
        .find(kid)
        .ok_or_else(|| format!("signed with kid `{kid}`, not among the keys"))?;
    let alg = parsed
        .header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(jws::parse_asymmetric_alg)
        .ok_or("the signature has no usable alg")?;
    let verified = DecodingKey::from_jwk(jwk).and_then(|key| {
        jsonwebtoken::crypto::verify(
            &parsed.signature_b64,
            parsed.signing_input.as_bytes(),
            &key,
            alg,
        )
    });
    match verified {
        Ok(true) => Ok((typ, parsed.claims)),
        Ok(false) => Err(format!("the signature does not verify with `{kid}`")),
        Err(e) => Err(format!("the signature cannot be checked: {e}")),
    }
}
