//! The `Unwind-Signature` header of webhook requests (api.md "HITL webhook"):
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. The timestamp is inside
//! the MAC so that a receiver can refuse old requests replayed to it.

use aws_lc_rs::hmac;

/// The header's name.
pub const HEADER: &str = "Unwind-Signature";

fn mac(secret: &[u8], t: i64, body: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

/// The header value for `body` signed at `t`.
pub fn header_value(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).as_ref()))
}

/// True when `header` signs `body` with `secret` and its `t` is within `tolerance_s` of `now`
/// (the check a receiver makes; the comparison takes constant time).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now.abs_diff(t) > tolerance_s.unsigned_abs() {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signed = format!("{t}.");
    let mut message = signed.into_bytes();
    message.extend_from_slice(body);
    v1.iter()
        .any(|sig| hmac::verify(&key, &message, sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently (Python hmac).
        assert_eq!(
            header_value(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn verify_checks_mac_and_age() {
        let h = header_value(b"k", 100, b"body");
        assert!(verify(b"k", &h, b"body", 100, 300));
        assert!(!verify(b"k", &h, b"bodY", 100, 300));
        assert!(!verify(b"other", &h, b"body", 100, 300));
        assert!(!verify(b"k", &h, b"body", 1000, 300));
        assert!(!verify(b"k", "v1=00", b"body", 100, 300));
    }
}
