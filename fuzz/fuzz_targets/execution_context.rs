//! The `Execution-Context` header: splitting its field lines into tokens, then verifying each
//! token as the API's authentication does.
//!
//! Input: field values separated by '\n'; a value that is not a valid header value (as axum
//! would receive it) is dropped, as a client could not send it.
//!
//! Properties: no panic; the result is the model (size limit on the raw values first, then
//! comma-separated, trimmed, non-empty entries); tokens hold no comma or outer whitespace and
//! split again to themselves; every token the verifier refuses carries a code.
#![no_main]

use axum::http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use unwind::config::LimitsConfig;
use unwind_ect::header::{HeaderError, split_execution_context};
use unwind_fuzz::{NOW, assert_rejection, block_on, interop_verifier};

fuzz_target!(|data: &[u8]| {
    let limit = LimitsConfig::default().max_execution_context_bytes;
    let values: Vec<HeaderValue> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect();
    // The API refuses values that are not visible ASCII before splitting (401).
    let Ok(lines) = values
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<Vec<&str>, _>>()
    else {
        return;
    };

    let got = split_execution_context(lines.iter().copied(), limit);

    // The model: the sum of the raw values against the limit, then the entries.
    let total: usize = lines.iter().map(|l| l.len()).sum();
    let entries: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    match &got {
        Err(HeaderError::TooLarge { size, limit: l }) => {
            assert!(total > limit, "too large at {total} of {limit}");
            assert_eq!(*l, limit);
            assert!(*size > limit && *size <= total);
        }
        Err(HeaderError::Empty) => {
            assert!(total <= limit);
            assert!(entries.is_empty());
        }
        Ok(tokens) => {
            assert!(total <= limit);
            assert_eq!(tokens, &entries);
            for t in tokens {
                assert!(!t.is_empty() && !t.contains(','));
                assert_eq!(t.trim(), t);
            }
            // One line or one line per token: the same tokens.
            let joined = tokens.join(", ");
            let again = split_execution_context(std::iter::once(joined.as_str()), usize::MAX);
            assert_eq!(again.as_ref(), Ok(tokens));
            let again = split_execution_context(tokens.iter().map(String::as_str), usize::MAX);
            assert_eq!(again.as_ref(), Ok(tokens));
            for t in tokens {
                if let Err(r) = block_on(interop_verifier().verify(t, NOW)) {
                    assert_rejection(&r, &[]);
                }
            }
        }
    }
});
