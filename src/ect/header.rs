//! The `Execution-Context` HTTP header: one or more compact ECTs, in several field lines or
//! separated by commas (a compact JWS never contains a comma).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("too large")]
    TooLarge,
    #[error("empty")]
    Empty,
}
pub fn split_execution_context<'a>(
    _values: impl Iterator<Item = &'a str>,
    _max_total_bytes: usize,
) -> Result<Vec<String>, HeaderError> {
    todo!()
}
