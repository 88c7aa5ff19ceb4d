//! The assertions bearerd signs (RFC 7523): `private_key_jwt` and self-signed `jwt_bearer`
//! ones with a key read from its PEM (RSA, or EC P-256), `client_secret_jwt` ones with HS256.
//! It reads no file and no clock: the key's text and `now` are arguments.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::secret::Secret;

/// How long a `private_key_jwt` client assertion is valid.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

pub(super) const ASSERTION_TYPE: &str = crate::config::JWT_BEARER_ASSERTION_TYPE;

/// A signing key for `private_key_jwt`.
enum SigningKey {
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
}

impl SigningKey {
    fn from_pem(key_pem: &Secret) -> Result<Self, String> {
        // pem::Error's Display may quote a line of the file: never show it.
        let der =
            PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(
                |error| match error {
                    rustls_pki_types::pem::Error::NoItemsFound => {
                        "no PEM private key found (expected \
                    BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)"
                            .to_owned()
                    }
                    _ => "the private key is not valid PEM".to_owned(),
                },
            )?;
        let rng = SystemRandom::new();
        let p256 = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        match der {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(key) = RsaKeyPair::from_pkcs8(der) {
                    return Ok(Self::Rs256(key));
                }
                match EcdsaKeyPair::from_pkcs8(p256, der, &rng) {
                    Ok(key) => Ok(Self::Es256(key)),
                    Err(error) => Err(format!(
                        "the PKCS#8 private key is neither an RSA key (of at least 2048 bits) \
                         nor an EC P-256 key ({error})"
                    )),
                }
            }
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(Self::Rs256)
                .map_err(|error| format!("the RSA private key was rejected: {error}")),
            PrivateKeyDer::Sec1(der) => {
                EcdsaKeyPair::from_pkcs8(p256, &sec1_to_pkcs8(der.secret_sec1_der()), &rng)
                    .map(Self::Es256)
                    .map_err(|error| {
                        format!("the EC private key is not a P-256 key ring accepts: {error}")
                    })
            }
            _ => Err("unsupported private key type: expected RSA or EC P-256".to_owned()),
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Self::Rs256(_) => "RS256",
            Self::Es256(_) => "ES256",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            Self::Rs256(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| "RSA signing failed".to_owned())?;
                Ok(signature)
            }
            Self::Es256(key) => key
                .sign(&rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_owned()),
        }
    }
}

/// Wraps a SEC1 `ECPrivateKey` (`BEGIN EC PRIVATE KEY`) for P-256 into PKCS#8 v1, the only EC
/// form ring reads.
pub(super) fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALGORITHM: [u8; 21] = [
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut content = vec![0x02, 0x01, 0x00];
    content.extend_from_slice(&ALGORITHM);
    content.push(0x04);
    der_length(&mut content, sec1.len());
    content.extend_from_slice(sec1);
    let mut out = vec![0x30];
    der_length(&mut out, content.len());
    out.extend_from_slice(&content);
    out
}

fn der_length(out: &mut Vec<u8>, length: usize) {
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|byte| **byte == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// An RFC 7523 client assertion: `iss` = `sub` = client id, a unique `jti`, valid for
/// [`ASSERTION_LIFETIME`] from `now`.
pub(super) fn client_assertion(
    key_pem: &Secret,
    key_id: Option<&str>,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, String> {
    let claims = claims(client_id, client_id, audience, now)?;
    sign_with_key(key_pem, key_id, &claims)
}

/// The claims of a self-signed `jwt_bearer` grant assertion.
pub(super) struct GrantClaims<'a> {
    pub(super) issuer: &'a str,
    pub(super) subject: &'a str,
    pub(super) audience: &'a str,
    /// Also a `scope` claim: Google's token endpoint reads the scopes from the assertion.
    pub(super) scope: Option<&'a str>,
}

/// An RFC 7523 §2.1 grant assertion signed with the private key in `key_pem` (RS256 or
/// ES256), valid for [`ASSERTION_LIFETIME`] from `now`.
pub(super) fn grant_assertion(
    key_pem: &Secret,
    key_id: Option<&str>,
    grant: &GrantClaims<'_>,
    now: SystemTime,
) -> Result<Secret, String> {
    let mut claims = claims(grant.issuer, grant.subject, grant.audience, now)?;
    if let (Some(scope), Value::Object(map)) = (grant.scope, &mut claims) {
        map.insert("scope".to_owned(), scope.into());
    }
    sign_with_key(key_pem, key_id, &claims)
}

fn sign_with_key(key_pem: &Secret, key_id: Option<&str>, claims: &Value) -> Result<Secret, String> {
    let key = SigningKey::from_pem(key_pem)?;
    jws(key.algorithm(), key_id, claims, |input| key.sign(input))
}

/// A `client_secret_jwt` assertion (OIDC Core §9): HS256 with the client secret as the key,
/// `iss` = `sub` = client id, a unique `jti`, valid for [`ASSERTION_LIFETIME`] from `now`.
pub(super) fn secret_assertion(
    secret: &Secret,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, String> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let claims = claims(client_id, client_id, audience, now)?;
    jws("HS256", None, &claims, |input| {
        Ok(ring::hmac::sign(&key, input).as_ref().to_vec())
    })
}

fn claims(issuer: &str, subject: &str, audience: &str, now: SystemTime) -> Result<Value, String> {
    let mut jti = [0_u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| "no randomness for the assertion's jti".to_owned())?;
    let issued_at = Clock::unix_seconds(now);
    Ok(serde_json::json!({
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": issued_at,
        "exp": issued_at + ASSERTION_LIFETIME.as_secs(),
    }))
}

/// A compact JWS of `claims`, signed by `sign`.
fn jws(
    algorithm: &str,
    key_id: Option<&str>,
    claims: &Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Secret, String> {
    let mut header = Map::new();
    header.insert("alg".to_owned(), algorithm.into());
    header.insert("typ".to_owned(), "JWT".into());
    if let Some(key_id) = key_id {
        header.insert("kid".to_owned(), key_id.into());
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(signing_input.as_bytes())?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::fixtures::{EC_SEC1, RSA_PKCS1};

    #[test]
    fn a_key_names_its_algorithm() {
        let algorithm =
            |pem: &str| SigningKey::from_pem(&Secret::new(pem)).map(|key| key.algorithm());
        assert_eq!(algorithm(RSA_PKCS1), Ok("RS256"));
        assert_eq!(algorithm(EC_SEC1), Ok("ES256"));
    }
}
