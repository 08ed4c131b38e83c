//! `unwind export` writes a workflow's evidence to one file; `unwind verify` audits such a file
//! offline: signatures, claims, DAG rules and the rollbacks' evidence (the checks are in
//! [`checks`]). Exit codes of `verify`: 0 no findings, [`FINDINGS_EXIT_CODE`] findings, 2 a
//! file that cannot be read or is not an export.

pub mod checks;
pub mod live;
pub mod pins;
pub mod tables;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::CliError;
use super::client::{Client, ClientArgs, Output};
use crate::api::workflows::EXPORT_FORMAT;
use crate::ect::jws::{self, CheckedHeader, ParsedJws};
use crate::ect::{Rejection, VerifiedEct};

/// Exit code of `unwind verify` when the audit has findings.
pub const FINDINGS_EXIT_CODE: u8 = 4;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The workflow to export.
    #[arg(long)]
    pub wid: String,
    /// Write to this file instead of standard output (written whole or not at all).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An export written by `unwind export`.
    #[arg(required_unless_present = "live")]
    pub file: Option<PathBuf>,
    /// Instead of a file: recompute the whole hash chain of the coordinator at `--url` and
    /// check its signed head.
    #[arg(long, conflicts_with = "file")]
    pub live: bool,
    /// With `--live`: a head or receipt Unwind signed earlier (a line of
    /// `<data_dir>/ledger-heads.jsonl` or the whole file, `GET /v1/ledger/head`, an ingest
    /// answer, a `ledger.head` event); the chain must still hold what it names.
    #[arg(long, requires = "live")]
    pub head: Option<PathBuf>,
    /// With `--live`: also read the ledger's tables from this database and check them against
    /// the chain (row counts and positions, columns against tokens, edges against `par`).
    #[arg(long, requires = "live")]
    pub database_url: Option<String>,
    /// Public keys obtained independently (a JWKS); default: the file's own `keys`, or with
    /// `--live` the keys the coordinator serves.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// Seconds a parent's `iat` may be after its child's (ingest's default tolerance).
    #[arg(long, default_value_t = 60)]
    pub clock_skew_s: i64,
    /// Where the coordinator is (`--live`), and the output format: one line per finding and a
    /// summary, or one JSON report.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `unwind export`: streams `GET /v1/workflows/{wid}/export` to stdout or a file.
pub async fn export(args: ExportArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let mut response = client
        .get_raw(
            &["v1", "workflows", &args.wid, "export"],
            &[],
            "application/json",
        )
        .await?;
    let broken = |e: &dyn std::fmt::Display| {
        CliError::Failed(format!("the export of {} was cut off: {e}", args.wid))
    };
    match &args.out {
        None => {
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = response.chunk().await.map_err(|e| broken(&e))? {
                stdout
                    .write_all(&chunk)
                    .map_err(|e| CliError::Failed(format!("standard output: {e}")))?;
            }
            stdout
                .flush()
                .map_err(|e| CliError::Failed(format!("standard output: {e}")))?;
        }
        Some(path) => {
            // Written beside the target and renamed at the end, so an interrupted export never
            // leaves a file that looks complete.
            let partial = partial_path(path);
            let write_err =
                |e: std::io::Error| CliError::Failed(format!("{}: {e}", partial.display()));
            let mut file = tokio::fs::File::create(&partial).await.map_err(write_err)?;
            let mut bytes = 0u64;
            let copied: Result<(), CliError> = async {
                use tokio::io::AsyncWriteExt;
                while let Some(chunk) = response.chunk().await.map_err(|e| broken(&e))? {
                    bytes += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(write_err)?;
                }
                file.flush().await.map_err(write_err)?;
                file.sync_all().await.map_err(write_err)
            }
            .await;
            drop(file);
            if let Err(e) = copied {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            tokio::fs::rename(&partial, path)
                .await
                .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
            match client.output {
                Output::Json => println!(
                    "{}",
                    json!({"wid": args.wid, "file": path.display().to_string(), "bytes": bytes})
                ),
                Output::Text => eprintln!(
                    "exported workflow {} to {} ({bytes} bytes)",
                    args.wid,
                    path.display()
                ),
            }
        }
    }
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// The export document as `verify` reads it. Unknown members are allowed, so a later format
/// revision with more members still reads.
#[derive(Debug, Deserialize)]
struct ExportFile {
    format: String,
    wid: String,
    coordinator_id: String,
    keys: JwkSet,
    #[serde(default)]
    issuers: Vec<FileIssuer>,
    #[serde(default)]
    rollbacks: Vec<FileRollback>,
    tokens: Vec<FileToken>,
}

#[derive(Debug, Deserialize)]
struct FileIssuer {
    id: String,
    kids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct FileToken {
    jti: String,
    token: String,
    #[serde(default)]
    chain: Option<FileChainEntry>,
}

/// A token's entry in the ledger's hash chain, as exported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileChainEntry {
    pub seq: i64,
    pub prev_hash: String,
    pub chain_hash: String,
}

/// What the evidence check needs of a rollback resource.
#[derive(Debug, Clone, Deserialize)]
pub struct FileRollback {
    pub rollback_id: String,
    pub status: String,
    #[serde(default)]
    pub evidence: FileEvidence,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FileEvidence {
    pub rollback_start: Option<String>,
    pub rollback_complete: Option<String>,
}

/// Where the keys that checked the signatures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The export's own `keys`: only shows the file is consistent with itself.
    File,
    /// A JWKS given with `--jwks`.
    Jwks,
}

/// One token of the file, decoded once for every check.
pub struct AuditToken {
    /// The `jti` listed beside the token in the file.
    pub listed_jti: String,
    /// Split, decoded and header-checked; `Err` when the token is not a usable compact JWS.
    pub parsed: Result<(ParsedJws, CheckedHeader), Rejection>,
    /// Claims checked and normalised (no clock: an old export still verifies); `None` when
    /// `parsed` failed.
    pub ect: Option<Result<VerifiedEct, Rejection>>,
    /// The compact JWS exactly as listed (the chain hashes these bytes).
    pub token: String,
    /// Its hash-chain entry; `None` in exports written before the chain existed.
    pub chain: Option<FileChainEntry>,
}

impl AuditToken {
    /// The token's own `jti` when its claims could be read, else the one listed beside it.
    pub fn jti(&self) -> &str {
        match &self.ect {
            Some(Ok(ect)) => &ect.jti,
            _ => &self.listed_jti,
        }
    }

    /// The token's claims, when they are well-formed.
    pub fn verified(&self) -> Option<&VerifiedEct> {
        self.ect.as_ref().and_then(|e| e.as_ref().ok())
    }
}

/// Everything the checks look at.
pub struct Audit {
    pub wid: String,
    pub coordinator_id: String,
    /// Keys by `kid` (a `kid` listed twice keeps its first key), or why one cannot be used.
    pub keys: HashMap<String, Result<DecodingKey, String>>,
    pub key_source: KeySource,
    /// The `kid`s the file names as the coordinator's.
    pub coordinator_kids: HashSet<String>,
    pub tokens: Vec<AuditToken>,
    pub rollbacks: Vec<FileRollback>,
    pub clock_skew_s: i64,
}

/// Why a file cannot be audited at all (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot be read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an Unwind export: {detail}")]
    NotAnExport { path: String, detail: String },
    #[error("{path}: not a JWKS: {detail}")]
    NotAJwks { path: String, detail: String },
}

/// Every algorithm a token may name; an export is audited whatever the deployment allowed.
const ALGORITHMS: &[&str] = &[
    "ES256", "ES384", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512",
];

/// Upper bound for one token in an audit (generous: the ledger's own limit is configurable).
const MAX_TOKEN_BYTES: usize = 1024 * 1024;

impl Audit {
    /// Reads an export and, when given, an independent JWKS, and decodes every token.
    pub fn load(file: &Path, jwks: Option<&Path>, clock_skew_s: i64) -> Result<Self, LoadError> {
        let shown = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        let export: ExportFile =
            serde_json::from_slice(&bytes).map_err(|e| LoadError::NotAnExport {
                path: shown.clone(),
                detail: e.to_string(),
            })?;
        if export.format != EXPORT_FORMAT {
            return Err(LoadError::NotAnExport {
                path: shown,
                detail: format!("format is `{}`, expected `{EXPORT_FORMAT}`", export.format),
            });
        }
        let (set, key_source) = match jwks {
            None => (export.keys, KeySource::File),
            Some(path) => (read_jwks(path)?, KeySource::Jwks),
        };
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let Some(kid) = &jwk.common.key_id {
                keys.entry(kid.clone())
                    .or_insert_with(|| DecodingKey::from_jwk(jwk).map_err(|e| e.to_string()));
            }
        }
        let coordinator_kids = export
            .issuers
            .iter()
            .filter(|i| i.id == export.coordinator_id)
            .flat_map(|i| i.kids.iter().cloned())
            .collect();
        let algorithms: Vec<_> = ALGORITHMS
            .iter()
            .filter_map(|a| jws::parse_asymmetric_alg(a))
            .collect();
        let tokens = export
            .tokens
            .into_iter()
            .map(|t| decode(t, &algorithms))
            .collect();
        Ok(Self {
            wid: export.wid,
            coordinator_id: export.coordinator_id,
            keys,
            key_source,
            coordinator_kids,
            tokens,
            rollbacks: export.rollbacks,
            clock_skew_s,
        })
    }
}

fn read_jwks(path: &Path) -> Result<JwkSet, LoadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| LoadError::NotAJwks {
        path: shown,
        detail: e.to_string(),
    })
}

fn decode(t: FileToken, algorithms: &[jsonwebtoken::Algorithm]) -> AuditToken {
    let parsed = jws::parse_compact(&t.token, MAX_TOKEN_BYTES).and_then(|p| {
        let header = jws::check_header(&p.header, algorithms)?;
        Ok((p, header))
    });
    let ect = parsed.as_ref().ok().map(|(p, h)| {
        let header = crate::ect::EctHeader {
            alg: h.alg_name.clone(),
            typ: h.typ.clone(),
            kid: h.kid.clone(),
        };
        // The ledger's own parent limit is configurable; any list is read here.
        crate::ect::claims::normalise(&t.token, header, p.claims.clone(), usize::MAX)
    });
    AuditToken {
        listed_jti: t.jti,
        parsed,
        ect,
        token: t.token,
        chain: t.chain,
    }
}

/// One finding of the audit, as printed.
#[derive(Debug, Serialize)]
pub struct Reported {
    pub check: &'static str,
    pub jti: String,
    pub detail: String,
}

/// `unwind verify`: loads, runs every check, prints, and exits by the result.
pub async fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let Some(file) = args.file.clone() else {
        let client = Client::new(&args.client)?;
        let options = live::LiveOptions {
            jwks: args.jwks.as_deref(),
            head: args.head.as_deref(),
            database_url: args.database_url.as_deref(),
        };
        return live::verify_live(&client, &options, &args.client.url).await;
    };
    let (jwks, skew) = (args.jwks.clone(), args.clock_skew_s);
    let shown = file.display().to_string();
    // Reading and checking signatures is CPU work: off the async threads.
    let audited = tokio::task::spawn_blocking(move || {
        Audit::load(&file, jwks.as_deref(), skew).map(|audit| {
            let findings = checks::run(&audit);
            (audit, findings)
        })
    })
    .await
    .map_err(|e| CliError::Failed(format!("the audit stopped: {e}")))?;
    let (audit, findings) = audited.map_err(|e| CliError::Usage(e.to_string()))?;
    let file = shown;
    match args.client.output {
        Output::Json => {
            let report = json!({
                "file": file,
                "wid": audit.wid,
                "coordinator_id": audit.coordinator_id,
                "keys": audit.key_source,
                "tokens": audit.tokens.len(),
                "rollbacks": audit.rollbacks.len(),
                "checks": checks::CHECKS.iter().map(|c| c.name).collect::<Vec<_>>(),
                "findings": findings,
                "ok": findings.is_empty(),
            });
            super::rollback::print_json(&report)?;
        }
        Output::Text => {
            let mut out = finding_lines(&findings);
            if audit.key_source == KeySource::File {
                out.push_str(
                    "note: signatures were checked with the keys in the file itself; give \
                     --jwks with independently obtained keys for an independent check\n",
                );
            }
            out.push_str(&format!(
                "{file}: workflow {}, {} tokens, {} rollbacks, {} checks: {}\n",
                audit.wid,
                audit.tokens.len(),
                audit.rollbacks.len(),
                checks::CHECKS.len(),
                count_findings(findings.len())
            ));
            print!("{out}");
        }
    }
    audit_result(&findings, &file)
}

/// "no findings", "1 finding", "N findings".
fn count_findings(n: usize) -> String {
    match n {
        0 => "no findings".to_string(),
        1 => "1 finding".to_string(),
        n => format!("{n} findings"),
    }
}

/// One line per finding, `check  jti  detail`.
fn finding_lines(findings: &[Reported]) -> String {
    findings
        .iter()
        .map(|f| format!("{}  {}  {}\n", f.check, f.jti, f.detail))
        .collect()
}

/// Success without findings, else [`FINDINGS_EXIT_CODE`] naming what was audited.
fn audit_result(findings: &[Reported], audited: &str) -> Result<(), CliError> {
    if findings.is_empty() {
        Ok(())
    } else {
        Err(CliError::Findings(format!(
            "{} finding(s) in {audited}",
            findings.len()
        )))
    }
}
