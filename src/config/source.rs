//! Where a value came from, in words a user recognises, and figment's errors in one line.

use figment::Figment;

use super::error::ConfigError;

/// A layer under a name people recognise ("command-line flag `--upstream`"): figment names a
/// serialized value by its Rust type and source line, which means nothing to a user.
pub(super) struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: figment::Provider> Named<P> {
    pub(super) fn new(name: &'static str, inner: P) -> Self {
        Self { name, inner }
    }
}

impl<P: figment::Provider> figment::Provider for Named<P> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Names where `key` got its value: a file path, an environment variable, or the defaults.
pub(super) fn source_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(meta) => describe(meta, key),
        None => "the defaults".into(),
    }
}

/// "TOML file /app/sidecar.toml", "`SIDECAR_` environment variable(s) `SIDECAR_SERVER__PORT`"…
fn describe(meta: &figment::Metadata, key: &str) -> String {
    match &meta.source {
        Some(source) => format!("{} {source}", meta.name),
        // The env provider has no source; name the exact variable instead.
        None if meta.name.contains("environment") => {
            format!("environment variable `{}`", env_variable(key))
        }
        None => meta.name.to_string(),
    }
}

/// The `SIDECAR_` variable that set `key`, spelled as it is in the environment: figment
/// lowercases names and matches the prefix in any case, and a variable may set a whole
/// section (`SIDECAR_REALTIME='{path="/ws"}'`), so the longest key prefix that names a
/// variable is the one.
fn env_variable(key: &str) -> String {
    let segments: Vec<&str> = key.split('.').collect();
    let set: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    (1..=segments.len())
        .rev()
        .map(|n| format!("SIDECAR_{}", segments[..n].join("__")))
        .find_map(|wanted| {
            set.iter()
                .find(|name| name.trim().eq_ignore_ascii_case(&wanted))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| format!("SIDECAR_{}", key.replace('.', "__").to_uppercase()))
}

/// figment's own text puts its list of choices in one more pair of backticks
/// (``polling` or `websocket``); the list reads cleanly without them.
fn reason_of(kind: &figment::error::Kind) -> String {
    use figment::error::{Kind, OneOf};
    match kind {
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown variant: found `{found}`, expected {}",
                OneOf(expected)
            )
        }
        Kind::UnknownField(found, expected) => {
            format!(
                "unknown field: found `{found}`, expected {}",
                OneOf(expected)
            )
        }
        other => one_line(&other.to_string()),
    }
}

pub(super) fn from_figment(figment: &Figment, error: figment::Error) -> ConfigError {
    // A list entry's index (`realtime.transports.0`) is no key anyone wrote; the value found
    // in the reason says which entry it is.
    let written: Vec<&str> = error
        .path
        .iter()
        .map(String::as_str)
        .filter(|segment| segment.parse::<usize>().is_err())
        .collect();
    let key = if written.is_empty() {
        "(top level)".to_string()
    } else {
        written.join(".")
    };
    let source_name = match &error.metadata {
        Some(meta) => describe(meta, &key),
        None => source_of(figment, &key),
    };
    ConfigError {
        key,
        source_name,
        reason: reason_of(&error.kind),
    }
}

/// Parser messages come with a multi-line source excerpt; a startup error is one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}
