//! Execution Context Tokens: parse, verify and sign (the profile in `spec/ect.md`).
//!
//! Both draft revisions are read (-00: `typ` `wimse-exec+jwt`, `par`, `ext`; -01: `exec+jwt`,
//! `pred`, `ect_ext`); verified tokens are normalised to one parent list and one `ext` object.
//! Every refusal carries a [`RejectCode`], which is the `code` the HTTP API answers with.
//!
//! This crate is shared by the coordinator (`unwind`, which re-exports it as `unwind::ect`) and
//! the agent library (`unwind-agent`), so an agent does not depend on the coordinator's
//! database and server stack.

pub mod claims;
pub mod config;
pub mod header;
pub mod jws;
pub mod keys;
pub mod spiffe;
pub mod trust;
pub mod verify;

#[cfg(test)]
pub(crate) mod testutil;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use claims::{CheckpointInfo, is_error_node};
pub use config::{EctConfig, TrustConfig, TrustIssuerConfig};
pub use keys::{KeyAlg, KeyError, SigningKey};
pub use trust::TrustStore;
pub use verify::{Verifier, VerifyPolicy};

/// Why a token (or a request carrying one) was refused. The serialised name is the API's
/// error `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    Malformed,
    TooLarge,
    InvalidHeader,
    AlgNotAllowed,
    InvalidTyp,
    UnknownIssuer,
    UnknownKey,
    InvalidSignature,
    InvalidClaims,
    Expired,
    NotYetValid,
    InvalidCheckpoint,
    RollbackUriNotAllowed,
    JtiConflict,
    UnknownParent,
    WidMismatch,
    ParentAfterChild,
    ParentNotLinkable,
    Cycle,
    WorkflowTerminated,
}

impl RejectCode {
    /// The API error code, e.g. `"invalid_signature"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::InvalidHeader => "invalid_header",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::InvalidTyp => "invalid_typ",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_key",
            Self::InvalidSignature => "invalid_signature",
            Self::InvalidClaims => "invalid_claims",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidCheckpoint => "invalid_checkpoint",
            Self::RollbackUriNotAllowed => "rollback_uri_not_allowed",
            Self::JtiConflict => "jti_conflict",
            Self::UnknownParent => "unknown_parent",
            Self::WidMismatch => "wid_mismatch",
            Self::ParentAfterChild => "parent_after_child",
            Self::ParentNotLinkable => "parent_not_linkable",
            Self::Cycle => "cycle",
            Self::WorkflowTerminated => "workflow_terminated",
        }
    }

    /// The HTTP status a single-token ingest answers with for this refusal.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Malformed => 400,
            Self::JtiConflict | Self::WorkflowTerminated => 409,
            Self::TooLarge => 413,
            _ => 422,
        }
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token: the code plus a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Rejection {
    pub code: RejectCode,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// Which draft revision's names a token uses (or Unwind writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    #[default]
    #[serde(rename = "draft-00")]
    Draft00,
    #[serde(rename = "draft-01")]
    Draft01,
}

impl Profile {
    /// The JOSE `typ` header value of this revision.
    pub fn typ(self) -> &'static str {
        match self {
            Self::Draft00 => "wimse-exec+jwt",
            Self::Draft01 => "exec+jwt",
        }
    }
    /// The claim name of the parent list.
    pub fn parents_claim(self) -> &'static str {
        match self {
            Self::Draft00 => "par",
            Self::Draft01 => "pred",
        }
    }
    /// The claim name of the extension object.
    pub fn ext_claim(self) -> &'static str {
        match self {
            Self::Draft00 => "ext",
            Self::Draft01 => "ect_ext",
        }
    }
}

/// The verified JOSE header fields Unwind keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EctHeader {
    pub alg: String,
    pub typ: String,
    pub kid: String,
}

/// A token whose signature, header and claims verified, with claims normalised
/// (one `parents` list, one `ext` object; -00's top-level `pol`/`pol_decision` moved into `ext`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedEct {
    /// The compact JWS exactly as received.
    pub token: String,
    pub header: EctHeader,
    pub profile: Profile,
    pub jti: String,
    pub iss: String,
    pub sub: Option<String>,
    /// `aud`, normalised to a list.
    pub aud: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub wid: Option<String>,
    pub exec_act: String,
    pub parents: Vec<String>,
    pub ext: Map<String, Value>,
    pub inp_hash: Option<String>,
    pub out_hash: Option<String>,
    /// The full claims object as signed (original names), for storage and display.
    pub claims: Map<String, Value>,
    /// Lowercase hex SHA-256 of `token`; identical tokens have identical hashes.
    pub content_hash: String,
}

impl VerifiedEct {
    /// True for the error nodes that detectors and planners look for (see [`is_error_node`]).
    pub fn is_error(&self) -> bool {
        is_error_node(&self.exec_act, &self.ext)
    }

    /// The checkpoint fields, when this is a `checkpoint` ECT.
    pub fn checkpoint(&self) -> Option<CheckpointInfo> {
        if self.exec_act == claims::EXEC_ACT_CHECKPOINT {
            CheckpointInfo::from_ext(&self.ext).ok()
        } else {
            None
        }
    }
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}
