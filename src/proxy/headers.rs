//! Header rewriting between client and app: hop-by-hop removal and `X-Forwarded-*`.

use std::fmt::Write;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies conventionally drop. `HTTP2-Settings` belongs to an h2c upgrade
/// (RFC 7540 §3.2.1), which is never passed on. `Proxy-Authenticate` is the proxy's own.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "proxy-connection"
            | "http2-settings"
    )
}

/// End-to-end headers a `Connection` header may name but never removes: without them the app
/// would see another host (`Host`), lose the user's session or credentials, get a different
/// framing, or lose the client address sockgate vouches for. A client listing them in
/// `Connection` is not a reason to drop them (nginx keeps them too).
const NEVER_HOP_BY_HOP: [HeaderName; 9] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::COOKIE,
    header::AUTHORIZATION,
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// HTTP/2 carries the host in `:authority`; the HTTP/1.1 app (its pages and its session
/// route, and Astro checks it) needs a `Host` header.
pub fn host_from_authority<B>(req: &mut http::Request<B>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(value) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, value);
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names, except the
/// end-to-end ones in [`NEVER_HOP_BY_HOP`]. One look at each name: most messages carry none
/// of them, or one or two (`Connection`, `Keep-Alive`), and only those present are removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !NEVER_HOP_BY_HOP.contains(name))
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    while let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() {
        headers.remove(name);
    }
}

/// The protocol an `Upgrade` request asks for, if it is one sockgate passes on (HTTP/1.1
/// only). An `h2c` upgrade never is: tunnelled, it would let the client speak HTTP/2 straight
/// to the app, with forwarded headers of its own choosing; it is served as a plain request.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE).filter(|_| asks)?;
    let h2c = protocol.to_str().map_or(true, |v| {
        v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))
    });
    (!h2c).then(|| protocol.clone())
}

/// The client's address as an `X-Forwarded-For` value (worked out once per connection).
pub fn forwarded_for(client_ip: IpAddr) -> HeaderValue {
    let mut text = String::with_capacity(39);
    let _ = write!(text, "{client_ip}");
    // An IP address is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What the app should learn about the original request.
pub struct Forwarded<'a> {
    /// The client's address, from [`forwarded_for`].
    pub client: &'a HeaderValue,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    /// Keep (append to) what an upstream load balancer already set.
    pub trust_incoming: bool,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets `X-Forwarded-For/-Proto/-Host`. Untrusted incoming values are replaced: a client must
/// not be able to pose as another IP to the app.
pub fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let prior_for = fwd
        .trust_incoming
        .then(|| headers.get(&X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|prior| !prior.trim().is_empty());
    let chain = match prior_for {
        Some(prior) => {
            let ip = fwd.client.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
        }
        None => Some(fwd.client.clone()),
    };
    if let Some(v) = chain {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(fwd.trust_incoming && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    }
    if !(fwd.trust_incoming && headers.contains_key(&X_FORWARDED_HOST)) {
        match fwd.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

/// The host the client addressed: `X-Forwarded-Host` when trusted, else `Host`.
pub fn effective_host(headers: &HeaderMap, trust_forwarded: bool) -> Option<&str> {
    let forwarded = trust_forwarded
        .then(|| headers.get(&X_FORWARDED_HOST))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    forwarded.or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Drop"),
        );
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn strips_hop_headers_without_a_connection_header_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.test"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key(header::HOST) && h.contains_key("x-keep"));
        let untouched = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, untouched);
    }

    #[test]
    fn forwarded_overwrites_untrusted_and_appends_trusted() {
        let host = HeaderValue::from_static("app.test");
        let client = forwarded_for("10.0.0.1".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let fwd = Forwarded {
            client: &client,
            proto: "http",
            host: Some(&host),
            trust_incoming: false,
        };
        set_forwarded(&mut h, &fwd);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.test");

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            &Forwarded {
                trust_incoming: true,
                ..fwd
            },
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_protocol(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        h.insert(header::UPGRADE, HeaderValue::from_static("H2C"));
        assert!(upgrade_protocol(&h).is_none());
    }

    #[test]
    fn connection_cannot_name_end_to_end_headers_away() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, Host, cookie, x-forwarded-for, http2-settings"),
        );
        h.insert(header::HOST, HeaderValue::from_static("app.test"));
        h.insert(header::COOKIE, HeaderValue::from_static("sid=1"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABk"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        assert!(!h.contains_key("http2-settings"));
    }
}
