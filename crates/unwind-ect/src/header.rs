//! The `Execution-Context` HTTP header: one or more compact ECTs, in several field lines or
//! separated by commas (a compact JWS never contains a comma).

/// Why an `Execution-Context` header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The field lines together are larger than the limit (answered 431 `too_large`).
    #[error("Execution-Context is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// No token at all (absent, or only separators and whitespace).
    #[error("Execution-Context carries no token")]
    Empty,
}

/// Splits the values of all `Execution-Context` field lines into tokens: each line may hold
/// several comma-separated tokens; tokens are trimmed and empty entries dropped. The size limit
/// applies to the sum of the raw field values, checked before any splitting.
pub fn split_execution_context<'a>(
    values: impl Iterator<Item = &'a str>,
    max_total_bytes: usize,
) -> Result<Vec<String>, HeaderError> {
    let mut total = 0usize;
    let mut tokens = Vec::new();
    for value in values {
        total = total.saturating_add(value.len());
        if total > max_total_bytes {
            return Err(HeaderError::TooLarge {
                size: total,
                limit: max_total_bytes,
            });
        }
        tokens.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    if tokens.is_empty() {
        return Err(HeaderError::Empty);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token() {
        let got = split_execution_context(["a.b.c"].into_iter(), 100).unwrap();
        assert_eq!(got, vec!["a.b.c"]);
    }

    #[test]
    fn several_lines_and_commas() {
        let got = split_execution_context(
            [" a.b.c , d.e.f", "g.h.i", ",, ,", "j.k.l,"].into_iter(),
            100,
        )
        .unwrap();
        assert_eq!(got, vec!["a.b.c", "d.e.f", "g.h.i", "j.k.l"]);
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(
            split_execution_context(std::iter::empty(), 100),
            Err(HeaderError::Empty)
        );
        assert_eq!(
            split_execution_context([" , ", ""].into_iter(), 100),
            Err(HeaderError::Empty)
        );
    }

    #[test]
    fn total_size_is_limited() {
        let line = "x".repeat(60);
        let err = split_execution_context([line.as_str(), line.as_str()].into_iter(), 100);
        assert_eq!(
            err,
            Err(HeaderError::TooLarge {
                size: 120,
                limit: 100
            })
        );
        assert!(split_execution_context([line.as_str()].into_iter(), 60).is_ok());
    }
}
