//! The configured webhook receivers (`[[hitl.webhooks]]`), with their secrets resolved once at
//! start-up: a receiver whose secret cannot be found stops the start with the key named.

use std::fmt;

use crate::config::{ConfigError, HitlConfig};

/// One receiver of signed events.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    secret: Vec<u8>,
}

// Never print the secret.
impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookTarget {
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
        }
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// The receivers of `config`; `secret_env` is looked up with `env` (the process environment in
/// production). An inline `secret` wins over `secret_env`.
pub fn resolve(
    config: &HitlConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<WebhookTarget>, ConfigError> {
    let mut out = Vec::with_capacity(config.webhooks.len());
    for (i, hook) in config.webhooks.iter().enumerate() {
        let key = |name: &str| format!("hitl.webhooks[{i}].{name}");
        match reqwest::Url::parse(&hook.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(ConfigError::Key {
                    key: key("url"),
                    message: format!("not an http(s) URL: {}", hook.url),
                });
            }
        }
        let secret = match (&hook.secret, &hook.secret_env) {
            (Some(secret), _) => secret.clone(),
            (None, Some(var)) => env(var).ok_or_else(|| ConfigError::Key {
                key: key("secret_env"),
                message: format!("the environment variable {var} is not set"),
            })?,
            (None, None) => {
                return Err(ConfigError::Key {
                    key: key("secret"),
                    message: "give secret or secret_env".into(),
                });
            }
        };
        if secret.is_empty() {
            return Err(ConfigError::Key {
                key: key("secret"),
                message: "the secret is empty".into(),
            });
        }
        out.push(WebhookTarget::new(hook.url.clone(), secret.into_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookConfig;

    fn config(secret: Option<&str>, secret_env: Option<&str>) -> HitlConfig {
        HitlConfig {
            webhooks: vec![WebhookConfig {
                url: "https://hooks.example/unwind".into(),
                secret: secret.map(str::to_string),
                secret_env: secret_env.map(str::to_string),
            }],
            ..HitlConfig::default()
        }
    }

    #[test]
    fn secrets_come_inline_or_from_the_environment() {
        let inline = resolve(&config(Some("s1"), None), |_| None).unwrap();
        assert_eq!(inline[0].secret(), b"s1");
        let from_env = resolve(&config(None, Some("HOOK_SECRET")), |v| {
            (v == "HOOK_SECRET").then(|| "s2".to_string())
        })
        .unwrap();
        assert_eq!(from_env[0].secret(), b"s2");
    }

    #[test]
    fn a_missing_variable_names_the_key_and_the_variable() {
        let err = resolve(&config(None, Some("HOOK_SECRET")), |_| None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hitl.webhooks[0].secret_env"), "{text}");
        assert!(text.contains("HOOK_SECRET"), "{text}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = WebhookTarget::new("https://h.example", "topsecret");
        assert!(!format!("{t:?}").contains("topsecret"));
    }
}
