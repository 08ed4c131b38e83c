//! `unwind keys generate` and `unwind ect sign|verify|decode`: the token tools agent authors
//! and tests use.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::CliError;
use crate::config::{TrustConfig, TrustIssuerConfig};
use crate::ect::{KeyAlg, Profile, SigningKey, TrustStore, Verifier, VerifyPolicy, jws};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a signing key: a private JWK (mode 0600) and its public JWKS.
    ///
    /// Example: unwind keys generate --alg ES256 --out agent.jwk --jwks agent.jwks.json
    Generate {
        #[arg(long, value_enum, ignore_case = true, default_value = "es256")]
        alg: AlgArg,
        /// Where to write the private JWK (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Where to write the public JWKS (printed when absent).
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgArg {
    Es256,
    Es384,
    Eddsa,
}

impl From<AlgArg> for KeyAlg {
    fn from(a: AlgArg) -> Self {
        match a {
            AlgArg::Es256 => KeyAlg::ES256,
            AlgArg::Es384 => KeyAlg::ES384,
            AlgArg::Eddsa => KeyAlg::EdDSA,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    #[value(name = "draft-00")]
    Draft00,
    #[value(name = "draft-01")]
    Draft01,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Draft00 => Profile::Draft00,
            ProfileArg::Draft01 => Profile::Draft01,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EctCommand {
    /// Sign a JSON claims file with a private JWK and print the compact token.
    ///
    /// Missing `jti` (a new UUID), `iat` (now) and `exp` (iat + --ttl) are filled in unless
    /// --exact is given.
    ///
    /// Example: unwind ect sign --key agent.jwk --claims claims.json
    Sign {
        #[arg(long)]
        key: PathBuf,
        /// Claims file, or `-` for standard input.
        #[arg(long)]
        claims: PathBuf,
        /// `typ` of the header: draft-00 (`wimse-exec+jwt`) or draft-01 (`exec+jwt`).
        #[arg(long, value_enum, default_value = "draft-00")]
        profile: ProfileArg,
        /// Lifetime for a filled-in `exp`, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Sign the claims exactly as given.
        #[arg(long)]
        exact: bool,
    },
    /// Verify a token against a JWKS and print its normalised claims.
    ///
    /// Example: unwind ect verify --jwks agent.jwks.json token.jwt
    Verify {
        /// Public keys of the token's issuer.
        #[arg(long)]
        jwks: PathBuf,
        /// Accepted algorithms (repeat); default ES256, ES384, EdDSA.
        #[arg(long = "alg")]
        algorithms: Vec<String>,
        /// Hosts the issuer's rollback_uri may name (repeat); default: any.
        #[arg(long = "rollback-host")]
        rollback_hosts: Vec<String>,
        /// Tolerated clock skew in seconds.
        #[arg(long, default_value_t = 60)]
        clock_skew_s: i64,
        /// Token, a file holding it, or `-` for standard input.
        token: String,
    },
    /// Print a token's header and claims without verifying it.
    ///
    /// Example: unwind ect decode token.jwt
    Decode {
        /// Token, a file holding it, or `-` for standard input.
        token: String,
    },
}

pub async fn keys(cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Generate { alg, out, jwks } => {
            let key =
                SigningKey::generate(alg.into()).map_err(|e| CliError::Failed(e.to_string()))?;
            crate::service::write_private_file(&out, key.to_private_jwk_json().as_bytes())
                .await
                .map_err(|e| CliError::Failed(format!("{}: {e}", out.display())))?;
            let public = serde_json::to_string_pretty(&key.public_jwks())
                .map_err(|e| CliError::Failed(e.to_string()))?;
            match jwks {
                Some(path) => {
                    tokio::fs::write(&path, format!("{public}\n"))
                        .await
                        .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
                    eprintln!(
                        "private key: {} (kid {})\npublic JWKS: {}",
                        out.display(),
                        key.kid(),
                        path.display()
                    );
                }
                None => {
                    eprintln!("private key: {} (kid {})", out.display(), key.kid());
                    println!("{public}");
                }
            }
            Ok(())
        }
    }
}

pub async fn ect(cmd: EctCommand) -> Result<(), CliError> {
    match cmd {
        EctCommand::Sign {
            key,
            claims,
            profile,
            ttl,
            exact,
        } => {
            let key_text = read_text(&key).await?;
            let key = SigningKey::from_private_jwk_json(&key_text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", key.display())))?;
            let text = if claims.as_os_str() == "-" {
                read_stdin().await?
            } else {
                read_text(&claims).await?
            };
            let mut claims: Map<String, Value> = match serde_json::from_str(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(CliError::Usage("the claims must be a JSON object".into())),
                Err(e) => return Err(CliError::Usage(format!("claims are not JSON: {e}"))),
            };
            if !exact {
                fill_defaults(&mut claims, chrono::Utc::now().timestamp(), ttl);
            }
            let token = key
                .sign_ect(&claims, profile.into())
                .map_err(|e| CliError::Failed(e.to_string()))?;
            println!("{token}");
            Ok(())
        }
        EctCommand::Verify {
            jwks,
            algorithms,
            rollback_hosts,
            clock_skew_s,
            token,
        } => {
            let token = token_argument(&token).await?;
            let (_, claims) =
                jws::decode_unverified(&token).map_err(|r| CliError::Failed(r.to_string()))?;
            let iss = claims
                .get("iss")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let hosts = if rollback_hosts.is_empty() {
                rollback_host_of(&claims)
            } else {
                rollback_hosts
            };
            let trust = TrustStore::from_config(&TrustConfig {
                issuers: vec![TrustIssuerConfig {
                    id: iss,
                    jwks_file: Some(jwks.clone()),
                    jwks_url: None,
                    rollback_hosts: hosts,
                    allow_http: true,
                    ..TrustIssuerConfig::default()
                }],
                ..TrustConfig::default()
            })
            .map_err(|e| CliError::Usage(e.to_string()))?;
            let algorithms = if algorithms.is_empty() {
                vec!["ES256".into(), "ES384".into(), "EdDSA".into()]
            } else {
                algorithms
            };
            let policy = VerifyPolicy::from_config(&crate::config::EctConfig {
                algorithms,
                clock_skew_s,
                ..Default::default()
            })
            .map_err(CliError::Usage)?;
            let verifier = Verifier::new(Arc::new(trust), policy);
            let ect = verifier
                .verify(&token, chrono::Utc::now().timestamp())
                .await
                .map_err(|r| CliError::Failed(format!("refused: {r}")))?;
            let out = json!({
                "valid": true,
                "jti": ect.jti, "iss": ect.iss, "wid": ect.wid, "exec_act": ect.exec_act,
                "parents": ect.parents, "iat": ect.iat, "exp": ect.exp, "ext": ect.ext,
                "kid": ect.header.kid, "alg": ect.header.alg, "typ": ect.header.typ,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(())
        }
        EctCommand::Decode { token } => {
            let token = token_argument(&token).await?;
            let (header, claims) =
                jws::decode_unverified(&token).map_err(|r| CliError::Failed(r.to_string()))?;
            let out = json!({ "header": header, "claims": claims });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(())
        }
    }
}

/// `jti`, `iat` and `exp` when the claims file leaves them out.
fn fill_defaults(claims: &mut Map<String, Value>, now: i64, ttl: i64) {
    claims
        .entry("jti")
        .or_insert_with(|| Value::from(uuid::Uuid::new_v4().to_string()));
    let iat = claims
        .entry("iat")
        .or_insert_with(|| Value::from(now))
        .as_i64()
        .unwrap_or(now);
    if !claims.contains_key("exp") {
        claims.insert("exp".into(), Value::from(iat.saturating_add(ttl)));
    }
}

/// With no `--rollback-host`, the checkpoint's own host is allowed: offline verification
/// checks signature and claims, not a deployment's host policy.
fn rollback_host_of(claims: &Value) -> Vec<String> {
    ["ext", "ect_ext"]
        .iter()
        .filter_map(|k| claims.get(*k))
        .filter_map(|ext| ext.get("cascade.rollback_uri"))
        .filter_map(Value::as_str)
        .filter_map(|uri| reqwest::Url::parse(uri).ok())
        .filter_map(|url| url.host_str().map(str::to_string))
        .collect()
}

async fn token_argument(arg: &str) -> Result<String, CliError> {
    let text = if arg == "-" {
        read_stdin().await?
    } else if arg.matches('.').count() == 2 && !Path::new(arg).exists() {
        arg.to_string()
    } else {
        read_text(Path::new(arg)).await?
    };
    Ok(text.trim().to_string())
}

async fn read_text(path: &Path) -> Result<String, CliError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

async fn read_stdin() -> Result<String, CliError> {
    tokio::task::spawn_blocking(|| {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    })
    .await
    .map_err(|e| CliError::Failed(e.to_string()))?
    .map_err(|e| CliError::Usage(format!("standard input: {e}")))
}
