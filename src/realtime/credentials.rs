//! A handshake's credentials: which request headers the session check reads, which of them
//! are sent on to the app, and the keys over them.
//!
//! The headers read are `Cookie`, `Host`, `auth.forward_headers` and `Authorization`; the
//! cache key (SHA-256) covers exactly the bytes the session route gets, so two requests
//! share an answer only when the app saw the same credentials. A request without a cookie
//! or `Authorization`, or with more than `auth.max_credential_bytes` of them, is refused
//! before the app is asked.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// Why a handshake's credentials are not even looked at.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CredentialError {
    #[error("no credentials: a Socket.IO handshake needs the session cookie (or Authorization)")]
    Missing,
    #[error(
        "credentials of {bytes} bytes are over the limit of {max} bytes (auth.max_credential_bytes)"
    )]
    TooLarge { bytes: usize, max: usize },
}

/// The SHA-256 of a handshake's credential headers: what the cache and the session binding
/// compare. Two requests with the same key sent the session route the same bytes.
pub type CredentialKey = [u8; 32];

/// What a handshake presented: the headers forwarded to the session route and their keys.
#[derive(Debug, Clone)]
pub struct Credentials {
    key: CredentialKey,
    secret: CredentialKey,
    headers: HeaderMap,
}

impl Credentials {
    /// Over every header read: what the session cache is keyed by.
    pub fn key(&self) -> &CredentialKey {
        &self.key
    }

    /// Over every header read except those that describe the client rather than who it is
    /// ([`describes_the_client`]): what an open session is bound to. `Cookie`, `Authorization`
    /// and any header of the app's own in `auth.forward_headers` (an API key, a tenant) are in
    /// it, since the app may authenticate on any of them. `User-Agent`, `Host` or the client
    /// address prove nothing (anyone can send them), and they legitimately differ between one
    /// client's requests: Node's socket.io-client sends a `User-Agent` on polling requests but
    /// none on its WebSocket upgrade, and a phone's address changes.
    pub fn secret(&self) -> &CredentialKey {
        &self.secret
    }

    /// The headers sent on to the app, on the session route and any other call made for
    /// this socket (a `subscribe`'s authorization).
    pub(super) fn forwarded(&self) -> &HeaderMap {
        &self.headers
    }
}

/// Headers that say what and where the client is, not who: left out of a session's binding.
fn describes_the_client(name: &HeaderName) -> bool {
    [
        header::HOST,
        header::USER_AGENT,
        header::FORWARDED,
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-real-ip"),
    ]
    .contains(name)
}

/// Which headers a request's credentials are made of (from `[auth]`), and their bound.
pub(super) struct CredentialReader {
    /// Every header the key covers, in a fixed order; `forwarded` says which are sent on.
    read: Vec<HeaderName>,
    forwarded: Vec<bool>,
    max_credential_bytes: usize,
}

impl CredentialReader {
    pub(super) fn new(config: &AuthConfig) -> Self {
        let mut forward = config.forward_headers.clone();
        // The app sees the host the browser used, as it does for its pages.
        forward.push(header::HOST);
        let mut read = forward.clone();
        read.extend([header::COOKIE, header::AUTHORIZATION]);
        read.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        read.dedup();
        let forwarded = read.iter().map(|name| forward.contains(name)).collect();
        Self {
            read,
            forwarded,
            max_credential_bytes: config.max_credential_bytes,
        }
    }

    /// The request headers [`Self::credentials`] reads.
    pub(super) fn read_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.read.iter()
    }

    /// The credentials in a request: the headers forwarded to the session route, and a key
    /// over every header read (`Cookie` lines — HTTP/2 crumbs included — joined with "; " as
    /// RFC 9113 §8.2.3 says, so the app and the key see the same cookie). Refused without
    /// asking the app when there is neither a cookie nor `Authorization`, or when they are
    /// over `auth.max_credential_bytes`.
    pub(super) fn credentials(
        &self,
        request_headers: &HeaderMap,
    ) -> Result<Credentials, CredentialError> {
        if !request_headers.contains_key(header::COOKIE)
            && !request_headers.contains_key(header::AUTHORIZATION)
        {
            return Err(CredentialError::Missing);
        }
        let bytes: usize = self
            .read
            .iter()
            .flat_map(|name| request_headers.get_all(name))
            .map(|value| value.len())
            .sum();
        if bytes > self.max_credential_bytes {
            return Err(CredentialError::TooLarge {
                bytes,
                max: self.max_credential_bytes,
            });
        }
        let mut digest = Sha256::new();
        let mut secret = Sha256::new();
        let mut headers = HeaderMap::new();
        for (name, forwarded) in self.read.iter().zip(&self.forwarded) {
            let values = canonical_values(name, request_headers);
            let is_secret = !describes_the_client(name);
            // Length-prefixed, so no two different header sets hash the same bytes.
            let mut update = |bytes: &[u8]| {
                digest.update(bytes);
                if is_secret {
                    secret.update(bytes);
                }
            };
            update(&(name.as_str().len() as u64).to_be_bytes());
            update(name.as_str().as_bytes());
            update(&(values.len() as u64).to_be_bytes());
            for value in &values {
                update(&(value.len() as u64).to_be_bytes());
                update(value.as_bytes());
            }
            if *forwarded {
                for value in values {
                    headers.append(name.clone(), value);
                }
            }
        }
        Ok(Credentials {
            key: digest.finalize().into(),
            secret: secret.finalize().into(),
            headers,
        })
    }
}

/// A header's values as the session route gets them: `Cookie` lines (or HTTP/2 crumbs)
/// joined into one, every other header line as it came.
fn canonical_values(name: &HeaderName, headers: &HeaderMap) -> Vec<HeaderValue> {
    let values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
    if name != header::COOKIE || values.len() < 2 {
        return values;
    }
    let joined = values
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    match HeaderValue::from_bytes(&joined) {
        Ok(one) => vec![one],
        // Cannot happen (valid values joined by "; " stay valid); if it did, every line is
        // still keyed and forwarded.
        Err(_) => values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> CredentialReader {
        CredentialReader::new(&AuthConfig {
            max_credential_bytes: 1024,
            ..AuthConfig::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn key(auth: &CredentialReader, pairs: &[(&str, &str)]) -> CredentialKey {
        *auth.credentials(&headers(pairs)).unwrap().key()
    }

    #[test]
    fn the_key_covers_every_cookie_line_not_just_the_first() {
        let auth = auth();
        let both = key(&auth, &[("cookie", "lang=en"), ("cookie", "sid=alice")]);
        let first = key(&auth, &[("cookie", "lang=en")]);
        assert_ne!(both, first);
        // HTTP/2 crumbs and one joined line are the same bytes for the app, so the same key.
        assert_eq!(both, key(&auth, &[("cookie", "lang=en; sid=alice")]));
        let forwarded = auth
            .credentials(&headers(&[("cookie", "lang=en"), ("cookie", "sid=alice")]))
            .unwrap()
            .headers;
        let cookies: Vec<_> = forwarded.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["lang=en; sid=alice"]);
    }

    #[test]
    fn the_key_covers_every_forwarded_header_and_authorization() {
        let auth = auth();
        let base = [("cookie", "sid=a"), ("host", "a.test"), ("user-agent", "x")];
        let k = key(&auth, &base);
        for changed in [
            [("cookie", "sid=a"), ("host", "b.test"), ("user-agent", "x")],
            [("cookie", "sid=a"), ("host", "a.test"), ("user-agent", "y")],
            [
                ("cookie", "sid=a"),
                ("host", "a.test"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
            [
                ("cookie", "sid=a"),
                ("host", "a.test"),
                ("authorization", "Bearer t"),
            ],
        ] {
            assert_ne!(k, key(&auth, &changed), "{changed:?}");
        }
        // The secret covers what identifies the user (cookie, Authorization, the app's own
        // headers), not what describes the client.
        let secret = |pairs: &[(&str, &str)]| *auth.credentials(&headers(pairs)).unwrap().secret();
        assert_eq!(
            secret(&base),
            secret(&[("cookie", "sid=a"), ("user-agent", "z")])
        );
        assert_ne!(secret(&base), secret(&[("cookie", "sid=b")]));
        assert_ne!(
            secret(&base),
            secret(&[("cookie", "sid=a"), ("authorization", "Bearer t")])
        );
        // A header of the app's own is a credential too.
        let config = AuthConfig {
            forward_headers: vec![header::COOKIE, HeaderName::from_static("x-tenant")],
            ..AuthConfig::default()
        };
        let tenant = CredentialReader::new(&config);
        let secret_of =
            |pairs: &[(&str, &str)]| *tenant.credentials(&headers(pairs)).unwrap().secret();
        assert_ne!(
            secret_of(&[("cookie", "sid=a"), ("x-tenant", "a")]),
            secret_of(&[("cookie", "sid=a"), ("x-tenant", "b")])
        );
        // A header nobody reads does not change the key.
        let mut unread = base.to_vec();
        unread.push(("accept-language", "fr"));
        assert_eq!(k, key(&auth, &unread));
        // Length prefixes: moving bytes between values changes the key.
        assert_ne!(
            key(&auth, &[("cookie", "a"), ("user-agent", "bc")]),
            key(&auth, &[("cookie", "ab"), ("user-agent", "c")])
        );
    }

    #[test]
    fn credentials_are_required_and_bounded() {
        let auth = auth();
        assert_eq!(
            auth.credentials(&headers(&[("host", "a.test")]))
                .unwrap_err(),
            CredentialError::Missing
        );
        assert!(
            auth.credentials(&headers(&[("authorization", "Bearer t")]))
                .is_ok()
        );
        let big = "x".repeat(1025);
        assert!(matches!(
            auth.credentials(&headers(&[("cookie", &big)])).unwrap_err(),
            CredentialError::TooLarge {
                bytes: 1025,
                max: 1024
            }
        ));
    }
}
