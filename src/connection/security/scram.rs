//! The client side of SCRAM (RFC 5802, <https://www.rfc-editor.org/rfc/rfc5802>; SHA-256 in
//! RFC 7677, <https://www.rfc-editor.org/rfc/rfc7677>) as Kafka uses it: no channel binding
//! (GS2 header `n,,`), no authorization identity.
//!
//! Why the server's signature is checked: SCRAM authenticates both ways. A server that answers
//! `v=` with anything but HMAC(ServerKey, AuthMessage) does not know the salted password — an
//! impostor that could only collect our proof — and is rejected.
//!
//! Primitives from ring (which rustls already brings): PBKDF2, HMAC, the hashes, the CSPRNG for
//! the nonce. Not done: SASLprep of the user name and password (RFC 4013); the Java client does
//! not do it either, so ASCII credentials behave alike.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

/// The hash a SCRAM mechanism is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// Kafka's limits on the iteration count (`ScramMechanism`: 4096..=16384); we accept up to a
/// bound that keeps a hostile server from making us spin.
const ITERATIONS_MIN: u32 = 4096;
const ITERATIONS_MAX: u32 = 1_000_000;

/// One SCRAM exchange: client-first, then client-final from the server-first, then the
/// server-final verified.
pub(crate) struct ScramClient {
    hash: ScramHash,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    /// The server key and AuthMessage, once client-final is built: what `v=` must sign.
    expected: Option<(hmac::Key, String)>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A new exchange with a fresh nonce from the system CSPRNG.
    pub(crate) fn new(hash: ScramHash, username: &str, password: &str) -> Result<Self, String> {
        let mut nonce = [0u8; 24];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "the system random generator failed".to_owned())?;
        Ok(Self::with_nonce(
            hash,
            username,
            password,
            &B64.encode(nonce),
        ))
    }

    /// With a given nonce: for the RFC test vectors.
    pub(crate) fn with_nonce(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
        // RFC 5802 5.1: `=` and `,` in the user name are escaped.
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Self {
            hash,
            password: password.to_owned(),
            client_nonce: nonce.to_owned(),
            client_first_bare: format!("n={name},r={nonce}"),
            expected: None,
        }
    }

    /// The client-first message.
    pub(crate) fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client-final message (with the proof) for the server-first message.
    pub(crate) fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "server-first message is not UTF-8".to_owned())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => return Err("server-first requires an extension (m=)".into()),
                Some(("e", v)) => return Err(format!("server error: {v}")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("server-first has no nonce (r=)")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the server's nonce does not extend ours".into());
        }
        let salt = B64
            .decode(salt.ok_or("server-first has no salt (s=)")?)
            .map_err(|e| format!("server-first salt is not base64: {e}"))?;
        let iterations: u32 = iterations
            .ok_or("server-first has no iteration count (i=)")?
            .parse()
            .map_err(|_| "server-first iteration count is not a number".to_owned())?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(format!(
                "iteration count {iterations} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}"
            ));
        }
        let mut salted = vec![0u8; self.hash.len()];
        pbkdf2::derive(
            self.hash.pbkdf2(),
            std::num::NonZeroU32::new(iterations).expect("checked above"),
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(self.hash.hmac(), &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());
        // c=biws: base64 of the GS2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac::sign(&salted, b"Server Key");
        self.expected = Some((
            hmac::Key::new(self.hash.hmac(), server_key.as_ref()),
            auth_message,
        ));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: `v=` must be the server signature (constant-time
    /// comparison); `e=` is the server's error.
    pub(crate) fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ServerFinal> {
        let (server_key, auth_message) = self.expected.as_ref().ok_or(ServerFinal::Invalid(
            "server-final before client-final".into(),
        ))?;
        let text = std::str::from_utf8(server_final)
            .map_err(|_| ServerFinal::Invalid("server-final message is not UTF-8".into()))?;
        let first = text.split(',').next().unwrap_or_default();
        if let Some(error) = first.strip_prefix("e=") {
            return Err(ServerFinal::Error(error.to_owned()));
        }
        let signature = first.strip_prefix("v=").ok_or(ServerFinal::Invalid(
            "server-final has no server signature (v=)".into(),
        ))?;
        let signature = B64
            .decode(signature)
            .map_err(|_| ServerFinal::Invalid("server-final signature is not base64".into()))?;
        hmac::verify(server_key, auth_message.as_bytes(), &signature).map_err(|_| {
            ServerFinal::Invalid(
                "its SCRAM server signature does not verify: it does not know the password (an impostor, or a broker whose credentials for this user differ)".into(),
            )
        })
    }
}

/// Why a server-final message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerFinal {
    /// The server reported an error (`e=`): our credentials were refused.
    Error(String),
    /// The server did not prove itself.
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: the SCRAM-SHA-256 exchange for user "user", password "pencil".
    #[test]
    fn rfc7677_sha256_test_vector() {
        let mut client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = client.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn a_wrong_server_signature_is_rejected() {
        let mut client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        client
            .client_final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        // The RFC's signature with its first character changed.
        let err = client
            .verify_server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(
            matches!(&err, ServerFinal::Invalid(m) if m.contains("does not verify")),
            "{err:?}"
        );
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(ServerFinal::Error("invalid-proof".into()))
        );
        assert!(matches!(
            client.verify_server_final(b"x=1"),
            Err(ServerFinal::Invalid(_))
        ));
    }

    #[test]
    fn the_server_nonce_must_extend_ours_and_iterations_are_bounded() {
        let mut client = ScramClient::with_nonce(ScramHash::Sha512, "u", "p", "abc");
        let err = client.client_final(b"r=xyz123,s=AAAA,i=4096").unwrap_err();
        assert!(err.contains("does not extend ours"), "{err}");
        let err = client.client_final(b"r=abc,s=AAAA,i=4096").unwrap_err();
        assert!(err.contains("does not extend ours"), "{err}");
        let err = client.client_final(b"r=abcd,s=AAAA,i=1").unwrap_err();
        assert!(err.contains("iteration count 1"), "{err}");
        let err = client
            .client_final(b"r=abcd,s=AAAA,i=4000000000")
            .unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn user_names_are_escaped_and_nonces_are_fresh() {
        let client = ScramClient::with_nonce(ScramHash::Sha256, "a=b,c", "p", "n");
        assert_eq!(client.client_first(), b"n,,n=a=3Db=2Cc,r=n");
        let a = ScramClient::new(ScramHash::Sha256, "u", "p").unwrap();
        let b = ScramClient::new(ScramHash::Sha256, "u", "p").unwrap();
        assert_ne!(a.client_nonce, b.client_nonce);
        assert_eq!(a.client_nonce.len(), 32);
        assert!(!a.client_nonce.contains(','));
    }
}
