//! The `Execution-Context` HTTP header: one or more compact ECTs, in several field lines or
//! separated by commas (a compact JWS never contains a comma).
