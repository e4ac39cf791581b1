//! What a failed check says: a section's verdict on one of its keys (`Invalid`), and the one
//! line a user reads (`ConfigError`), which adds where the value came from.

/// A configuration that cannot be used, explained in one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: key `{key}` from {source_name}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub source_name: String,
    pub reason: String,
}

/// A key whose value a section refuses, and why. Sections do not know the layers a value
/// came through; `Config::load` names the source.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) key: &'static str,
    pub(super) reason: String,
}

impl Invalid {
    pub(super) fn new(key: &'static str, reason: impl Into<String>) -> Self {
        Self {
            key,
            reason: reason.into(),
        }
    }
}

/// Counts, sizes and timeouts where 0 would stop the part that uses them, each given with
/// whether it is 0: the first such key found, in the order given.
pub(super) fn at_least_one(values: &[(&'static str, bool)]) -> Result<(), Invalid> {
    match values.iter().find(|(_, zero)| *zero) {
        Some((key, _)) => Err(Invalid::new(key, "must be at least 1")),
        None => Ok(()),
    }
}
