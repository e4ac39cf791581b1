//! Origin check for Socket.IO handshakes: the guard against cross-site WebSocket hijacking.
//!
//! Sockets are authenticated by cookie, and a browser sends cookies to our host whatever page
//! opened the connection. So a handshake whose `Origin` is another site is refused unless that
//! origin is allowed. A request without `Origin` passes: browsers always send it cross-origin.

use http::{HeaderMap, Uri, header};

use crate::proxy::effective_host;

#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    allow_any: bool,
    trust_forwarded: bool,
}

impl OriginPolicy {
    pub fn new(allowed_origins: &[String], trust_forwarded: bool) -> Self {
        Self {
            allowed: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            allow_any: allowed_origins.iter().any(|o| o == "*"),
            trust_forwarded,
        }
    }

    /// `Err` carries the reason, for the log line.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin
            .to_str()
            .map_err(|_| "Origin header is not text".to_string())?;
        if self.allow_any || self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return Ok(());
        }
        let origin_host = origin
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_ascii_lowercase()));
        let host = effective_host(headers, self.trust_forwarded);
        match (origin_host, host) {
            (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
            (_, host) => Err(format!(
                "origin `{origin}` is neither the request's host `{}` nor in realtime.allowed_origins",
                host.unwrap_or("(none)")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn same_host_and_missing_origin_pass() {
        let p = OriginPolicy::new(&[], false);
        assert!(p.check(&headers(None, "app.test")).is_ok());
        assert!(
            p.check(&headers(Some("https://app.test:8443"), "app.test:8443"))
                .is_ok()
        );
        assert!(
            p.check(&headers(Some("http://APP.test"), "app.test"))
                .is_ok()
        );
    }

    #[test]
    fn other_sites_are_refused_unless_allowed() {
        let p = OriginPolicy::new(&["https://admin.test".into()], false);
        assert!(
            p.check(&headers(Some("https://evil.test"), "app.test"))
                .is_err()
        );
        assert!(p.check(&headers(Some("null"), "app.test")).is_err());
        assert!(
            p.check(&headers(Some("https://app.test.evil.test"), "app.test"))
                .is_err()
        );
        assert!(
            p.check(&headers(Some("https://admin.test"), "app.test"))
                .is_ok()
        );
    }

    #[test]
    fn forwarded_host_counts_only_when_trusted() {
        let mut h = headers(Some("https://public.test"), "127.0.0.1:3000");
        h.insert("x-forwarded-host", HeaderValue::from_static("public.test"));
        assert!(OriginPolicy::new(&[], false).check(&h).is_err());
        assert!(OriginPolicy::new(&[], true).check(&h).is_ok());
    }
}
