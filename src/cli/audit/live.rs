//! `unwind verify --live`: recomputes a running coordinator's whole hash chain, a page at a
//! time (`GET /v1/ledger/entries`), and checks its signed head (`GET /v1/ledger/head`).
//! Memory stays constant: only the previous entry's hash is kept.

use std::path::Path;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Reported, audit_result, count_findings, finding_lines, read_jwks};
use crate::api::ledger::HEAD_TYP;
use crate::cli::CliError;
use crate::cli::client::{Client, Output};
use crate::ect::jws;
use crate::ledger::chain;

/// Entries fetched per request (the endpoint's maximum).
const PAGE: u32 = 1000;

const CHECK: &str = "chain";

/// Walks chain entries in the order the server lists them and reports, in chain order, every
/// entry that does not recompute or does not link to the one before.
pub struct ChainWalk {
    next_seq: i64,
    prev_hash: String,
    /// Chain hash of each entry walked, only for the one the head names.
    head_seq: i64,
    hash_at_head: Option<String>,
    pub entries: u64,
    pub findings: Vec<Reported>,
}

impl ChainWalk {
    /// A walk from entry 1, remembering the hash of entry `head_seq`.
    pub fn new(head_seq: i64) -> Self {
        Self {
            next_seq: 1,
            prev_hash: chain::GENESIS.to_string(),
            head_seq,
            hash_at_head: None,
            entries: 0,
            findings: Vec::new(),
        }
    }

    fn finding(&mut self, jti: &str, detail: String) {
        self.findings.push(Reported {
            check: CHECK,
            jti: jti.to_string(),
            detail,
        });
    }

    /// One entry, as listed: position, jti, stored previous and own hash, the stored token.
    pub fn entry(
        &mut self,
        seq: i64,
        jti: &str,
        prev_hash: &str,
        chain_hash: &str,
        token: Option<&str>,
    ) {
        self.entries += 1;
        if seq != self.next_seq {
            self.finding(
                jti,
                format!(
                    "chain entry {} is missing: the entry after {} is {seq}",
                    self.next_seq,
                    self.next_seq - 1
                ),
            );
        }
        if prev_hash != self.prev_hash {
            self.finding(
                jti,
                format!(
                    "chain entry {seq} does not follow entry {}: prev_hash {prev_hash} is not {}",
                    seq - 1,
                    self.prev_hash
                ),
            );
        }
        match token {
            None => self.finding(
                jti,
                format!("chain entry {seq} has no token: its ledger row is missing"),
            ),
            Some(token) => match chain::next(prev_hash, &chain::token_hash(token)) {
                Ok(hash) if hash == chain_hash => {}
                Ok(hash) => self.finding(
                    jti,
                    format!(
                        "chain entry {seq} is broken: SHA-256(prev_hash || SHA-256(token)) is \
                         {hash}, the ledger says {chain_hash}"
                    ),
                ),
                Err(e) => self.finding(jti, format!("chain entry {seq} is unusable: {e}")),
            },
        }
        if seq == self.head_seq {
            self.hash_at_head = Some(chain_hash.to_string());
        }
        self.next_seq = seq + 1;
        self.prev_hash = chain_hash.to_string();
    }

    /// Whether the walk has reached the head.
    pub fn done(&self) -> bool {
        self.next_seq > self.head_seq
    }

    /// Ends the walk: the head's entry must exist and carry the head's hash.
    pub fn finish(mut self, head_hash: &str) -> (u64, Vec<Reported>) {
        if self.head_seq > 0 {
            match self.hash_at_head.clone() {
                None => self.finding(
                    "-",
                    format!(
                        "the signed head names entry {}, which the ledger does not list",
                        self.head_seq
                    ),
                ),
                Some(hash) if hash != head_hash => self.finding(
                    "-",
                    format!(
                        "entry {} has hash {hash}, the signed head says {head_hash}",
                        self.head_seq
                    ),
                ),
                Some(_) => {}
            }
        }
        (self.entries, self.findings)
    }
}

#[derive(Debug, Deserialize)]
struct Head {
    seq: i64,
    chain_hash: String,
    sig: String,
}

#[derive(Debug, Deserialize)]
struct EntryPage {
    items: Vec<Entry>,
    next_after: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    seq: i64,
    jti: String,
    prev_hash: String,
    chain_hash: String,
    token: Option<String>,
}

fn unexpected(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("unexpected {what} answer: {e}"))
}

/// Checks the head's signature and that it signs the head's own fields; `Some(detail)` when
/// not.
fn head_signature_finding(head: &Head, keys: &JwkSet) -> Option<String> {
    let parsed = match jws::parse_compact(&head.sig, 64 * 1024) {
        Ok(p) => p,
        Err(e) => return Some(format!("the head's signature is not a compact JWS: {e}")),
    };
    if parsed.header.get("typ").and_then(Value::as_str) != Some(HEAD_TYP) {
        return Some(format!("the head's signature is not of type {HEAD_TYP}"));
    }
    let Some(kid) = parsed.header.get("kid").and_then(Value::as_str) else {
        return Some("the head's signature names no kid".into());
    };
    let Some(jwk) = keys.find(kid) else {
        return Some(format!(
            "the head is signed with kid `{kid}`, not among the keys"
        ));
    };
    let alg = match parsed
        .header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(jws::parse_asymmetric_alg)
    {
        Some(alg) => alg,
        None => return Some("the head's signature has no usable alg".into()),
    };
    let verified = DecodingKey::from_jwk(jwk).and_then(|key| {
        jsonwebtoken::crypto::verify(
            &parsed.signature_b64,
            parsed.signing_input.as_bytes(),
            &key,
            alg,
        )
    });
    match verified {
        Ok(true) => {}
        Ok(false) => return Some(format!("the head's signature does not verify with `{kid}`")),
        Err(e) => return Some(format!("the head's signature cannot be checked: {e}")),
    }
    let signed_seq = parsed.claims.get("seq").and_then(Value::as_i64);
    let signed_hash = parsed.claims.get("chain_hash").and_then(Value::as_str);
    if signed_seq != Some(head.seq) || signed_hash != Some(head.chain_hash.as_str()) {
        return Some("the head's fields differ from what its signature covers".into());
    }
    None
}

/// `unwind verify --live`.
pub async fn verify_live(client: &Client, jwks: Option<&Path>, url: &str) -> Result<(), CliError> {
    let keys: JwkSet = match jwks {
        Some(path) => read_jwks(path).map_err(|e| CliError::Usage(e.to_string()))?,
        None => serde_json::from_value(client.get(&[".well-known", "jwks.json"], &[]).await?)
            .map_err(|e| unexpected("JWKS", e))?,
    };
    let head: Head = serde_json::from_value(client.get(&["v1", "ledger", "head"], &[]).await?)
        .map_err(|e| unexpected("ledger head", e))?;
    let mut findings = Vec::new();
    if let Some(detail) = head_signature_finding(&head, &keys) {
        findings.push(Reported {
            check: CHECK,
            jti: "-".into(),
            detail,
        });
    }

    let mut walk = ChainWalk::new(head.seq);
    let mut after = 0i64;
    let limit = PAGE.to_string();
    while !walk.done() {
        let page: EntryPage = serde_json::from_value(
            client
                .get(
                    &["v1", "ledger", "entries"],
                    &[("after", &after.to_string()), ("limit", &limit)],
                )
                .await?,
        )
        .map_err(|e| unexpected("ledger entries", e))?;
        for e in page.items.iter().take_while(|e| e.seq <= head.seq) {
            walk.entry(
                e.seq,
                &e.jti,
                &e.prev_hash,
                &e.chain_hash,
                e.token.as_deref(),
            );
        }
        match page.next_after {
            Some(next) if next > after => after = next,
            _ => break,
        }
    }
    let (entries, chain_findings) = walk.finish(&head.chain_hash);
    findings.extend(chain_findings);

    match client.output {
        Output::Json => super::super::rollback::print_json(&json!({
            "url": url,
            "head": {"seq": head.seq, "chain_hash": head.chain_hash},
            "keys": if jwks.is_some() { "jwks" } else { "served" },
            "entries": entries,
            "findings": findings,
            "ok": findings.is_empty(),
        }))?,
        Output::Text => {
            let mut out = finding_lines(&findings);
            if jwks.is_none() {
                out.push_str(
                    "note: the head's signature was checked with the keys the server serves; \
                     give --jwks with independently obtained keys for an independent check\n",
                );
            }
            out.push_str(&format!(
                "{url}: {entries} chain entries up to the signed head (seq {}): {}\n",
                head.seq,
                count_findings(findings.len())
            ));
            print!("{out}");
        }
    }
    audit_result(&findings, &format!("the ledger at {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed chain of `n` entries: (seq, jti, prev, hash, token).
    fn chain_of(n: i64) -> Vec<(i64, String, String, String, String)> {
        let mut prev = chain::GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let token = format!("tok-{seq}");
                let hash = chain::next(&prev, &chain::token_hash(&token)).unwrap();
                let entry = (seq, format!("j{seq}"), prev.clone(), hash.clone(), token);
                prev = hash;
                entry
            })
            .collect()
    }

    fn walk(entries: &[(i64, String, String, String, String)], head: i64) -> Vec<String> {
        let mut w = ChainWalk::new(head);
        for (seq, jti, prev, hash, token) in entries {
            w.entry(*seq, jti, prev, hash, Some(token));
        }
        let head_hash = entries
            .iter()
            .find(|e| e.0 == head)
            .map(|e| e.3.clone())
            .unwrap_or_default();
        w.finish(&head_hash)
            .1
            .into_iter()
            .map(|f| format!("{} {}", f.jti, f.detail))
            .collect()
    }

    #[test]
    fn a_sound_chain_has_no_findings() {
        assert!(walk(&chain_of(5), 5).is_empty());
        assert!(walk(&[], 0).is_empty());
    }

    #[test]
    fn an_edited_token_names_its_entry_first() {
        let mut c = chain_of(5);
        c[2].4 = "tok-edited".into();
        let found = walk(&c, 5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("j3 chain entry 3 is broken"),
            "{found:?}"
        );
    }

    #[test]
    fn a_rewritten_hash_breaks_the_link_to_the_next_entry() {
        let mut c = chain_of(4);
        // Entry 2's token and hash rewritten consistently: entry 3 no longer follows it.
        c[1].4 = "tok-forged".into();
        c[1].3 = chain::next(&c[1].2, &chain::token_hash("tok-forged")).unwrap();
        let found = walk(&c, 4);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("j3 chain entry 3 does not follow entry 2"));
    }

    #[test]
    fn a_missing_entry_and_a_missing_head_are_found() {
        let mut c = chain_of(4);
        c.remove(1);
        let found = walk(&c, 4);
        assert!(found[0].contains("chain entry 2 is missing"), "{found:?}");
        let short = chain_of(2);
        let mut w = ChainWalk::new(3);
        for (seq, jti, prev, hash, token) in &short {
            w.entry(*seq, jti, prev, hash, Some(token));
        }
        let (_, found) = w.finish("ff");
        assert!(found[0].detail.contains("does not list"), "{found:?}");
    }

    #[test]
    fn a_head_that_disagrees_with_its_entry_is_found() {
        let c = chain_of(3);
        let mut w = ChainWalk::new(3);
        for (seq, jti, prev, hash, token) in &c {
            w.entry(*seq, jti, prev, hash, Some(token));
        }
        let (n, found) = w.finish("00");
        assert_eq!(n, 3);
        assert!(
            found[0].detail.contains("the signed head says 00"),
            "{found:?}"
        );
    }
}
