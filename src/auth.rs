//! Long-term credentials (RFC 8489 §9.2): static users, TURN REST API
//! secrets, stateless nonces, and the constant-time MESSAGE-INTEGRITY check.
//!
//! Nothing here keeps per-source state: a nonce is a timestamp plus an HMAC
//! over it and the client's transport address, so a flood of unauthenticated
//! requests costs CPU but no memory.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// A long-term credential key: MD5(username ":" realm ":" password).
pub type Key = [u8; 16];

/// The credential sources of one configuration.
#[derive(Clone)]
pub struct Credentials {
    realm: String,
    /// Static users: name -> key.
    users: HashMap<String, Key>,
    /// REST API shared secrets, newest first; all are accepted (rotation).
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Why a request did not authenticate; each becomes a 401 and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No such static user, and no valid REST username.
    #[error("unknown user")]
    UnknownUser,
    /// A REST credential past its expiry.
    #[error("time-limited credential expired")]
    Expired,
    /// The key does not verify MESSAGE-INTEGRITY.
    #[error("MESSAGE-INTEGRITY does not match")]
    BadIntegrity,
}

/// A request whose MESSAGE-INTEGRITY verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The USERNAME it authenticated as.
    pub username: String,
    /// The long-term key that verified it.
    pub key: Key,
    /// Unix time the REST credential expires; `None` for static users.
    pub expires_unix: Option<u64>,
}

impl Authenticated {
    /// The user part: the name after `<expiry>:` of a REST credential, or
    /// the static user's name.
    pub fn user(&self) -> &str {
        user_part(&self.username, self.expires_unix.is_some())
    }
}

/// The user part of `username`: after `<expiry>:` when `rest`, else all.
pub fn user_part(username: &str, rest: bool) -> &str {
    if rest {
        username.split_once(':').map_or("", |(_, u)| u)
    } else {
        username
    }
}

impl Credentials {
    /// Build from a realm, static `(name, password)` pairs and REST secrets.
    pub fn new(realm: &str, users: &[(String, String)], secrets: &[String]) -> Self {
        let users = users
            .iter()
            .map(|(name, password)| (name.clone(), long_term_key(name, realm, password)))
            .collect();
        Self {
            realm: realm.to_owned(),
            users,
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        }
    }

    /// The realm sent in 401/438 answers.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Whether any credential could ever succeed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.secrets.is_empty()
    }

    /// Check a request's MESSAGE-INTEGRITY for `username`, trying the static
    /// user, then every REST secret. `verify` is handed each candidate key and
    /// must compare in constant time ([`verify_integrity`]).
    pub fn authenticate(
        &self,
        username: &str,
        now_unix: u64,
        verify: impl Fn(&Key) -> bool,
    ) -> Result<Authenticated, AuthError> {
        if let Some(key) = self.users.get(username) {
            return if verify(key) {
                Ok(Authenticated {
                    username: username.to_owned(),
                    key: *key,
                    expires_unix: None,
                })
            } else {
                Err(AuthError::BadIntegrity)
            };
        }
        let Some(expiry) = rest_expiry(username) else {
            return Err(AuthError::UnknownUser);
        };
        if self.secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        if expiry <= now_unix {
            return Err(AuthError::Expired);
        }
        for secret in &self.secrets {
            let password = rest_password(secret, username);
            let key = long_term_key(username, &self.realm, &password);
            if verify(&key) {
                return Ok(Authenticated {
                    username: username.to_owned(),
                    key,
                    expires_unix: Some(expiry),
                });
            }
        }
        Err(AuthError::BadIntegrity)
    }
}

/// The expiry of a TURN REST API username: `<expiry>` or `<expiry>:<user>`.
pub fn rest_expiry(username: &str) -> Option<u64> {
    let stamp = username.split_once(':').map_or(username, |(t, _)| t);
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// The TURN REST API password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = HmacSha1::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The long-term key, derived by the `turn` crate (MD5 of user:realm:pass).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> Key {
    let v = turn::auth::generate_auth_key(username, realm, password);
    let mut key = [0u8; 16];
    if v.len() == key.len() {
        key.copy_from_slice(&v);
    }
    key
}

/// Constant-time MESSAGE-INTEGRITY check over the pieces returned by
/// [`crate::wire::StunView::integrity`].
pub fn verify_integrity(key: &[u8], header: &[u8], body: &[u8], mac: &[u8]) -> bool {
    let Ok(mut h) = HmacSha1::new_from_slice(key) else {
        return false;
    };
    h.update(header);
    h.update(body);
    h.verify_slice(mac).is_ok()
}

/// Issues and checks stateless nonces: `base64url(issued_at || mac)` where
/// mac = HMAC-SHA1(key, issued_at || transport || client address)[..8]:
/// 16 characters, so a challenge to a 28-byte Allocate fits in 56 bytes.
///
/// Several keys may be given: the first signs, every one verifies, so a
/// fleet sharing them accepts each other's nonces and a key can be rotated
/// (add the new one first, drop the old one a nonce lifetime later).
#[derive(Clone)]
pub struct NonceIssuer {
    keys: Vec<Vec<u8>>,
    lifetime_secs: u64,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

/// What a presented nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Issued by this key for this client, and fresh.
    Valid,
    /// Ours but too old, or not ours at all: either way the client gets 438
    /// and a fresh one.
    Stale,
}

const NONCE_MAC_LEN: usize = 8;

impl NonceIssuer {
    /// A new issuer with a secret key and nonce lifetime in seconds.
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        Self::with_keys(vec![key.to_vec()], lifetime_secs)
    }

    /// An issuer signing with the first of `keys` and accepting nonces of
    /// any of them (an empty list gets a random key).
    pub fn with_keys(mut keys: Vec<Vec<u8>>, lifetime_secs: u64) -> Self {
        if keys.is_empty() {
            keys.push(rand::random::<[u8; 32]>().to_vec());
        }
        Self {
            keys,
            lifetime_secs,
        }
    }

    fn mac(key: &[u8], issued: u32, tcp: bool, client: &SocketAddr) -> [u8; NONCE_MAC_LEN] {
        let mut h = HmacSha1::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        h.update(&issued.to_be_bytes());
        h.update(&[u8::from(tcp)]);
        match client {
            SocketAddr::V4(a) => h.update(&a.ip().octets()),
            SocketAddr::V6(a) => h.update(&a.ip().octets()),
        }
        h.update(&client.port().to_be_bytes());
        let full = h.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    /// A fresh nonce for this client.
    pub fn issue(&self, now_unix: u64, tcp: bool, client: &SocketAddr) -> String {
        let issued = now_unix as u32;
        let mut raw = [0u8; 4 + NONCE_MAC_LEN];
        raw[..4].copy_from_slice(&issued.to_be_bytes());
        let key = self.keys.first().map_or(&[][..], Vec::as_slice);
        raw[4..].copy_from_slice(&Self::mac(key, issued, tcp, client));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Check a nonce presented by this client.
    pub fn check(&self, nonce: &[u8], now_unix: u64, tcp: bool, client: &SocketAddr) -> NonceState {
        let mut raw = [0u8; 4 + NONCE_MAC_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return NonceState::Stale,
        }
        let issued = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        // Every key is tried, whichever matches.
        let ours = self.keys.iter().fold(false, |ok, key| {
            ok | bool::from(Self::mac(key, issued, tcp, client).ct_eq(&raw[4..]))
        });
        if !ours {
            return NonceState::Stale;
        }
        // Wrapping arithmetic on the 32-bit stamp keeps this valid past 2106.
        let age = (now_unix as u32).wrapping_sub(issued);
        if u64::from(age) >= self.lifetime_secs {
            NonceState::Stale
        } else {
            NonceState::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_of_any_listed_key_verify_and_the_first_signs() {
        let client: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let (a, b) = (
            b"nonce-secret-a-0123".to_vec(),
            b"nonce-secret-b-0123".to_vec(),
        );
        let old = NonceIssuer::with_keys(vec![a.clone()], 600);
        let rotated = NonceIssuer::with_keys(vec![b.clone(), a.clone()], 600);
        let fresh = NonceIssuer::with_keys(vec![b.clone()], 600);
        let n = old.issue(1000, false, &client);
        assert_eq!(
            rotated.check(n.as_bytes(), 1001, false, &client),
            NonceState::Valid
        );
        assert_eq!(
            fresh.check(n.as_bytes(), 1001, false, &client),
            NonceState::Stale
        );
        let m = rotated.issue(1000, false, &client);
        assert_eq!(
            fresh.check(m.as_bytes(), 1001, false, &client),
            NonceState::Valid
        );
        // Bound to the client as before.
        let other: SocketAddr = "192.0.2.7:5001".parse().unwrap();
        assert_eq!(
            rotated.check(m.as_bytes(), 1001, false, &other),
            NonceState::Stale
        );
        // No keys: a random one, consistent with itself only.
        let r = NonceIssuer::with_keys(vec![], 600);
        let k = r.issue(1000, true, &client);
        assert_eq!(
            r.check(k.as_bytes(), 1001, true, &client),
            NonceState::Valid
        );
        assert_eq!(
            old.check(k.as_bytes(), 1001, true, &client),
            NonceState::Stale
        );
    }

    #[test]
    fn rest_usernames_parse_their_expiry() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry(":alice"), None);
        assert_eq!(rest_expiry("+5:alice"), None);
    }

    #[test]
    fn rest_password_matches_the_turn_crate() {
        let secret = "s3cret";
        // turn's generator uses "now + ttl" for the username; rebuild it.
        let (user, pass) =
            turn::auth::generate_long_term_credentials(secret, std::time::Duration::from_secs(60))
                .unwrap();
        assert_eq!(rest_password(secret.as_bytes(), &user), pass);
    }

    #[test]
    fn rest_credentials_accept_any_configured_secret_and_reject_expiry() {
        let creds = Credentials::new("r", &[], &["new".into(), "old".into()]);
        let user = "2000:bob";
        let old_key = long_term_key(user, "r", &rest_password(b"old", user));
        let ok = creds.authenticate(user, 1000, |k| k == &old_key).unwrap();
        assert_eq!(ok.expires_unix, Some(2000));
        assert_eq!(
            creds.authenticate(user, 2000, |k| k == &old_key),
            Err(AuthError::Expired)
        );
        assert_eq!(
            creds.authenticate(user, 1000, |_| false),
            Err(AuthError::BadIntegrity)
        );
        assert_eq!(
            creds.authenticate("carol", 1000, |_| true),
            Err(AuthError::UnknownUser)
        );
    }

    #[test]
    fn static_users_authenticate() {
        let creds = Credentials::new("r", &[("alice".into(), "pw".into())], &[]);
        let key = long_term_key("alice", "r", "pw");
        assert_eq!(
            creds.authenticate("alice", 0, |k| k == &key).unwrap().key,
            key
        );
        assert_eq!(
            creds.authenticate("alice", 0, |_| false),
            Err(AuthError::BadIntegrity)
        );
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_client() {
        let n = NonceIssuer::new([9; 32], 600);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let nonce = n.issue(10_000, false, &a);
        assert_eq!(
            n.check(nonce.as_bytes(), 10_599, false, &a),
            NonceState::Valid
        );
        assert_eq!(
            n.check(nonce.as_bytes(), 10_600, false, &a),
            NonceState::Stale
        );
        assert_eq!(
            n.check(nonce.as_bytes(), 10_001, false, &b),
            NonceState::Stale
        );
        assert_eq!(
            n.check(nonce.as_bytes(), 10_001, true, &a),
            NonceState::Stale
        );
        assert_eq!(n.check(b"garbage", 10_001, false, &a), NonceState::Stale);
    }
}
