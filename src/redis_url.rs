//! The `cluster.redis_url` and `cluster.tls_ca_file` settings turned into a Redis client
//! configuration, and URLs made safe to show. A leaf: the configuration checks a URL with it
//! at load time, the cluster connects with what it gives.
//!
//! Redis may be a single server (`redis://`, `rediss://` for TLS), a Redis Cluster
//! (`redis-cluster://`, `rediss-cluster://`) or a server behind Sentinel (`redis-sentinel://`,
//! `rediss-sentinel://`), in fred's URL syntax.

use std::sync::Arc;

use fred::prelude::Config as RedisConfig;
use fred::types::RespVersion;

/// The URL schemes taken, fred's (its `valkey…` spellings aside).
const SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
    "rediss-sentinel://",
];

/// The client configuration for `url` (fred's URL syntax, see the module doc), trusting the
/// CA certificates of the PEM file `ca_file` besides the system's when there is one. An
/// error names the configuration key to fix and why, without the URL's passwords.
pub fn redis_config(
    url: &str,
    ca_file: Option<&str>,
) -> Result<RedisConfig, (&'static str, String)> {
    let shown = redact(url);
    if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err((
            "cluster.redis_url",
            format!(
                "`{shown}` must start with {} (or be empty for a single instance)",
                SCHEMES.join(", ")
            ),
        ));
    }
    let mut config = RedisConfig::from_url(url).map_err(|e| {
        (
            "cluster.redis_url",
            format!("`{shown}` is not a Redis URL: {}", e.details()),
        )
    })?;
    config.version = RespVersion::RESP3;
    if let Some(ca_file) = ca_file {
        if config.tls.is_none() {
            return Err((
                "cluster.tls_ca_file",
                format!(
                    "is set but cluster.redis_url `{shown}` does not use TLS (rediss://, \
                     rediss-cluster:// or rediss-sentinel://)"
                ),
            ));
        }
        let trusted = trusting(ca_file).map_err(|e| ("cluster.tls_ca_file", e))?;
        config.tls = Some(fred::types::config::TlsConnector::from(trusted).into());
    }
    Ok(config)
}

/// A TLS client configuration trusting the system's CA certificates and those of `ca_file`.
fn trusting(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // The system's certificates that load (a missing system store is no reason to refuse the
    // file's).
    let (system, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut added = 0usize;
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("cannot read `{ca_file}`: {e}"))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| format!("`{ca_file}` is not a PEM file of certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("`{ca_file}` holds a certificate rustls cannot use: {e}"))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!("`{ca_file}` holds no PEM certificate"));
    }
    tracing::debug!(
        system,
        added,
        "trusting the CA certificates of cluster.tls_ca_file"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The URL without its credentials (the user and password before the host, Sentinel's
/// `sentinelPassword`), for logs and errors.
pub fn redact(url: &str) -> String {
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    };
    const SECRET: &str = "sentinelPassword=";
    match shown.find(SECRET) {
        Some(start) => {
            let value = start + SECRET.len();
            let end = shown[value..].find('&').map_or(shown.len(), |e| value + e);
            format!("{}***{}", &shown[..value], &shown[end..])
        }
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact("redis://:secret@db:6379"),
            "redis://***@db:6379"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            super::redact("rediss://app:secret@db:6380/0"),
            "rediss://***@db:6380/0"
        );
        assert_eq!(
            super::redact(
                "redis-sentinel://:secret@s1:26379?sentinelServiceName=m&sentinelPassword=hush&node=s2:26379"
            ),
            "redis-sentinel://***@s1:26379?sentinelServiceName=m&sentinelPassword=***&node=s2:26379"
        );
    }

    #[test]
    fn managed_redis_urls_are_taken() {
        let cluster = super::redis_config(
            "redis-cluster://app:secret@10.0.0.1:7000?node=10.0.0.2:7000&node=10.0.0.3:7000",
            None,
        )
        .expect("a cluster URL");
        assert!(cluster.server.is_clustered());
        assert_eq!(cluster.username.as_deref(), Some("app"));
        assert_eq!(cluster.password.as_deref(), Some("secret"));
        let tls = super::redis_config("rediss://:secret@db:6380", None).expect("a TLS URL");
        assert!(tls.tls.is_some() && tls.server.is_centralized());
        let tls_cluster =
            super::redis_config("rediss-cluster://db:7000", None).expect("a TLS cluster URL");
        assert!(tls_cluster.tls.is_some() && tls_cluster.server.is_clustered());
        let sentinel = super::redis_config(
            "redis-sentinel://s1:26379/0?node=s2:26379&sentinelServiceName=mymaster",
            None,
        )
        .expect("a Sentinel URL");
        assert!(sentinel.server.is_sentinel());
    }

    #[test]
    fn bad_urls_name_the_key_without_the_password() {
        let (key, reason) =
            super::redis_config("http://:secret@db:6379", None).expect_err("not Redis");
        assert_eq!(key, "cluster.redis_url");
        assert!(!reason.contains("secret"), "{reason}");
        let (key, reason) =
            super::redis_config("redis-sentinel://:secret@s1:26379", None).expect_err("no service");
        assert_eq!(key, "cluster.redis_url");
        assert!(!reason.contains("secret"), "{reason}");
        let (key, _) =
            super::redis_config("redis://db:6379", Some("/etc/ca.pem")).expect_err("no TLS");
        assert_eq!(key, "cluster.tls_ca_file");
        let (key, reason) = super::redis_config("rediss://db:6379", Some("/nonexistent/ca.pem"))
            .expect_err("no such file");
        assert_eq!(key, "cluster.tls_ca_file");
        assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
    }
}
