//! `unwind verify --live`: recomputes a running coordinator's whole hash chain, a page at a
//! time (`GET /v1/ledger/entries`), and checks its signed head (`GET /v1/ledger/head`); then
//! every record the API serves (`GET /v1/ects`) against the token it serves and the chain;
//! with `--head FILE`, positions Unwind signed earlier ([`super::pins`]); with
//! `--database-url`, the tables themselves ([`super::tables`]). Memory: one jti and token
//! hash per entry.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Reported, audit_result, count_findings, finding_lines, read_jwks};
use crate::api::ledger::HEAD_TYP;
use crate::cli::CliError;
use crate::cli::client::{Client, Output};
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
    /// Token hash of every jti walked.
    pub chained: HashMap<String, String>,
    /// Positions whose (jti, chain hash) is kept, for pinned heads.
    watch: HashSet<i64>,
    pub watched: HashMap<i64, (String, String)>,
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
            chained: HashMap::new(),
            watch: HashSet::new(),
            watched: HashMap::new(),
        }
    }

    /// Keeps the jti and chain hash of the entries at these positions.
    pub fn watching(mut self, seqs: impl IntoIterator<Item = i64>) -> Self {
        self.watch.extend(seqs);
        self
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
        if self.watch.contains(&seq) {
            self.watched
                .insert(seq, (jti.to_string(), chain_hash.to_string()));
        }
        if let Some(token) = token {
            self.chained
                .insert(jti.to_string(), chain::token_hash(token));
        }
        self.next_seq = seq + 1;
        self.prev_hash = chain_hash.to_string();
    }

    /// Whether the walk has reached the head.
    pub fn done(&self) -> bool {
        self.next_seq > self.head_seq
    }

    /// Ends the walk: the head's entry must exist and carry the head's hash.
    pub fn finish(&mut self, head_hash: &str) {
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
    let claims = match super::pins::verify(&head.sig, keys, &[HEAD_TYP]) {
        Ok((_, claims)) => claims,
        Err(e) => return Some(format!("the head's signature: {e}")),
    };
    let signed_seq = claims.get("seq").and_then(Value::as_i64);
    let signed_hash = claims.get("chain_hash").and_then(Value::as_str);
    if signed_seq != Some(head.seq) || signed_hash != Some(head.chain_hash.as_str()) {
        return Some("the head's fields differ from what its signature covers".into());
    }
    None
}

/// What `unwind verify --live` is given besides the client.
pub struct LiveOptions<'a> {
    pub jwks: Option<&'a Path>,
    /// Saved heads or receipts (`--head`).
    pub head: Option<&'a Path>,
    /// The ledger's database, read directly (`--database-url`).
    pub database_url: Option<&'a str>,
}

fn reported(check: &'static str, jti: &str, detail: String) -> Reported {
    Reported {
        check,
        jti: jti.to_string(),
        detail,
    }
}

/// `unwind verify --live`.
pub async fn verify_live(
    client: &Client,
    options: &LiveOptions<'_>,
    url: &str,
) -> Result<(), CliError> {
    let keys: JwkSet = match options.jwks {
        Some(path) => read_jwks(path).map_err(|e| CliError::Usage(e.to_string()))?,
        None => serde_json::from_value(client.get(&[".well-known", "jwks.json"], &[]).await?)
            .map_err(|e| unexpected("JWKS", e))?,
    };
    let (pins, pin_findings) = match options.head {
        Some(path) => super::pins::load(path, &keys)?,
        None => (Vec::new(), Vec::new()),
    };
    let head: Head = serde_json::from_value(client.get(&["v1", "ledger", "head"], &[]).await?)
        .map_err(|e| unexpected("ledger head", e))?;
    let mut findings = Vec::new();
    if let Some(detail) = head_signature_finding(&head, &keys) {
        findings.push(reported(CHECK, "-", detail));
    }

    let mut walk = ChainWalk::new(head.seq).watching(pins.iter().map(|p| p.seq));
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
    walk.finish(&head.chain_hash);
    let entries = walk.entries;
    findings.append(&mut walk.findings);
    findings.extend(
        pin_findings
            .into_iter()
            .map(|d| reported(PIN_CHECK, "-", d)),
    );
    findings.extend(pin_mismatches(&pins, &walk, head.seq));
    let records = served_records(client, &walk.chained, &mut findings).await?;
    if let Some(database_url) = options.database_url {
        let store = crate::store::connect(database_url)
            .await
            .map_err(|e| CliError::Usage(format!("--database-url: {e}")))?;
        let tables = store
            .ledger_tables()
            .await
            .map_err(|e| CliError::Failed(format!("reading the ledger's tables: {e}")))?;
        // Decoding every token is CPU work: off the async threads.
        let table_findings = tokio::task::spawn_blocking(move || super::tables::check(&tables))
            .await
            .map_err(|e| CliError::Failed(format!("the table check stopped: {e}")))?;
        findings.extend(table_findings);
    }

    match client.output {
        Output::Json => super::super::rollback::print_json(&json!({
            "url": url,
            "head": {"seq": head.seq, "chain_hash": head.chain_hash},
            "keys": if options.jwks.is_some() { "jwks" } else { "served" },
            "entries": entries,
            "records": records,
            "pins": pins.len(),
            "tables": options.database_url.is_some(),
            "findings": findings,
            "ok": findings.is_empty(),
        }))?,
        Output::Text => {
            let mut out = finding_lines(&findings);
            if options.jwks.is_none() {
                out.push_str(
                    "note: the head's signature was checked with the keys the server serves; \
                     give --jwks with independently obtained keys for an independent check\n",
                );
            }
            if options.head.is_none() {
                out.push_str(
                    "note: a chain recomputed after an edit is consistent with itself; give \
                     --head with a head saved earlier (ledger-heads.jsonl, a receipt) to catch \
                     that\n",
                );
            }
            out.push_str(&format!(
                "{url}: {entries} chain entries up to the signed head (seq {}), {records} \
                 records, {} pinned positions{}: {}\n",
                head.seq,
                pins.len(),
                if options.database_url.is_some() {
                    ", tables"
                } else {
                    ""
                },
                count_findings(findings.len())
            ));
            print!("{out}");
        }
    }
    audit_result(&findings, &format!("the ledger at {url}"))
}

const PIN_CHECK: &str = "head";
const RECORD_CHECK: &str = "record";

/// Each pinned position must still hold the pinned hash (and, for receipts, the jti).
fn pin_mismatches(pins: &[super::pins::Pin], walk: &ChainWalk, head_seq: i64) -> Vec<Reported> {
    let mut out = Vec::new();
    for pin in pins {
        let jti = pin.jti.as_deref().unwrap_or("-");
        if pin.seq > head_seq {
            out.push(reported(
                PIN_CHECK,
                jti,
                format!(
                    "a {} names entry {}; the ledger's head is entry {head_seq}: entries were \
                     removed",
                    pin.what, pin.seq
                ),
            ));
            continue;
        }
        match walk.watched.get(&pin.seq) {
            None => out.push(reported(
                PIN_CHECK,
                jti,
                format!(
                    "a {} names entry {}, which the ledger does not list",
                    pin.what, pin.seq
                ),
            )),
            Some((entry_jti, hash)) => {
                if *hash != pin.chain_hash {
                    out.push(reported(
                        PIN_CHECK,
                        entry_jti,
                        format!(
                            "entry {} has hash {hash}; a {} says {}: the chain was rewritten",
                            pin.seq, pin.what, pin.chain_hash
                        ),
                    ));
                }
                if let Some(pinned) = &pin.jti
                    && pinned != entry_jti
                {
                    out.push(reported(
                        PIN_CHECK,
                        entry_jti,
                        format!(
                            "entry {} is {entry_jti}; a {} says {pinned}",
                            pin.seq, pin.what
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct RecordPage {
    items: Vec<Value>,
    next_cursor: Option<String>,
}

/// Every record `GET /v1/ects` serves: in the chain with the same token, and every field it
/// serves equal to what its token states. Returns how many were read.
async fn served_records(
    client: &Client,
    chained: &HashMap<String, String>,
    findings: &mut Vec<Reported>,
) -> Result<u64, CliError> {
    let mut cursor: Option<String> = None;
    let mut count = 0u64;
    let limit = PAGE.to_string();
    loop {
        let mut query = vec![("limit", limit.as_str())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let page: RecordPage = serde_json::from_value(client.get(&["v1", "ects"], &query).await?)
            .map_err(|e| unexpected("ECT list", e))?;
        for item in &page.items {
            count += 1;
            for (jti, detail) in record_mismatches(item, chained) {
                findings.push(reported(RECORD_CHECK, &jti, detail));
            }
        }
        match page.next_cursor {
            Some(next) if !page.items.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    Ok(count)
}

/// What is wrong with one served record: (jti, detail).
pub fn record_mismatches(item: &Value, chained: &HashMap<String, String>) -> Vec<(String, String)> {
    let served_jti = item.get("jti").and_then(Value::as_str).unwrap_or("-");
    let mut out = Vec::new();
    let Some(token) = item.get("token").and_then(Value::as_str) else {
        out.push((served_jti.to_string(), "served without its token".into()));
        return out;
    };
    match chained.get(served_jti) {
        None => out.push((
            served_jti.to_string(),
            "served by the API but not in the chain".into(),
        )),
        Some(hash) if *hash != chain::token_hash(token) => out.push((
            served_jti.to_string(),
            "served with another token than the chain's".into(),
        )),
        Some(_) => {}
    }
    let ect = match chain::token_ect(token) {
        Ok(ect) => ect,
        Err(e) => {
            out.push((
                served_jti.to_string(),
                format!("its token does not decode: {e}"),
            ));
            return out;
        }
    };
    let from_token = json!({
        "jti": ect.jti,
        "wid": ect.wid,
        "iss": ect.iss,
        "exec_act": ect.exec_act,
        "par": ect.parents,
        "iat": ect.iat,
        "exp": ect.exp,
        "ext": ect.ext,
        "claims": ect.claims,
    });
    if let Value::Object(fields) = from_token {
        for (name, want) in fields {
            let have = item.get(&name).unwrap_or(&Value::Null);
            if *have != want {
                out.push((
                    served_jti.to_string(),
                    format!("served {name} {have} differs from its token's {want}"),
                ));
            }
        }
    }
    out
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
        w.finish(&head_hash);
        w.findings
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
        w.finish("ff");
        let found = w.findings;
        assert!(found[0].detail.contains("does not list"), "{found:?}");
    }

    #[test]
    fn a_head_that_disagrees_with_its_entry_is_found() {
        let c = chain_of(3);
        let mut w = ChainWalk::new(3);
        for (seq, jti, prev, hash, token) in &c {
            w.entry(*seq, jti, prev, hash, Some(token));
        }
        w.finish("00");
        let (n, found) = (w.entries, w.findings);
        assert_eq!(n, 3);
        assert!(
            found[0].detail.contains("the signed head says 00"),
            "{found:?}"
        );
    }
}
