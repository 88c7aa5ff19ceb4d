//! The one place tests get keys and certificates, made at test time with the `openssl` command:
//! signing keys for `private_key_jwt` (with their public halves) and a private CA with server and
//! client certificates for `https` and `tls_client_auth`. Nothing here is committed or reused
//! between runs; a missing `openssl` fails the test with how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// The subject of [`Pki::client_cert`], as RFC 4514 writes it.
pub const CLIENT_SUBJECT: &str = "CN=bearerd-client";

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails or is missing.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run `openssl` ({error}): install it (Debian: apt-get install openssl)")
        });
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A P-256 key in PKCS#8 PEM (`BEGIN PRIVATE KEY`) at `dir/name`.
pub fn ec_key(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    );
    dir.join(name)
}

/// A 2048-bit RSA key in PKCS#8 PEM (`BEGIN PRIVATE KEY`) at `dir/name`.
pub fn rsa_key(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            name,
        ],
    );
    dir.join(name)
}

/// The same EC key rewritten in SEC1 form (`BEGIN EC PRIVATE KEY`, OpenSSL's "traditional").
pub fn to_sec1(dir: &Path, pkcs8: &Path, name: &str) -> PathBuf {
    let input = pkcs8.to_str().expect("UTF-8 path");
    openssl(dir, &["ec", "-in", input, "-out", name]);
    dir.join(name)
}

/// The public half of a PEM private key as a JWK with `kid` and `alg` (RS256 or ES256), the way a
/// client registers it in its `jwks`.
pub fn public_jwk(key_file: &Path, kid: &str) -> Value {
    let pem = std::fs::read(key_file).expect("read the key");
    let der = PrivateKeyDer::from_pem_slice(&pem).expect("a PEM private key");
    let der = match &der {
        PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der(),
        _ => panic!("expected a PKCS#8 key in {}", key_file.display()),
    };
    if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
        let components: signature::RsaPublicKeyComponents<Vec<u8>> = rsa.public().into();
        return json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        });
    }
    let point = ec_point(der, key_file);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    })
}

/// The public half of the P-256 key in PKCS#8 PEM at `key_file`, as an uncompressed point
/// (`0x04 ‖ x ‖ y`, what the in-process endpoint's key clients take).
pub fn ec_public_point(key_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(key_file).expect("read the key");
    match PrivateKeyDer::from_pem_slice(&pem).expect("a PEM private key") {
        PrivateKeyDer::Pkcs8(der) => ec_point(der.secret_pkcs8_der(), key_file),
        _ => panic!("expected a PKCS#8 key in {}", key_file.display()),
    }
}

fn ec_point(pkcs8: &[u8], key_file: &Path) -> Vec<u8> {
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap_or_else(|_| panic!("an RSA or P-256 key in {}", key_file.display()));
    let point = ec.public_key().as_ref().to_vec();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    point
}

/// A private CA, a server certificate for 127.0.0.1 and localhost, and a client certificate with
/// subject [`CLIENT_SUBJECT`], all P-256 and valid for a day, in `dir`.
pub struct Pki {
    dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        let ca_key = ec_key(dir, "ca.key");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=bearerd test CA",
                "-days",
                "1",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "ca.pem",
            ],
        );
        assert!(ca_key.is_file());
        let pki = Pki {
            dir: dir.to_owned(),
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        pki.leaf(
            "server",
            "/CN=127.0.0.1",
            &[
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "basicConstraints=critical,CA:FALSE",
                "extendedKeyUsage=serverAuth",
            ],
        );
        pki.client_certificate("client");
        pki
    }

    /// Another client certificate from the CA with subject [`CLIENT_SUBJECT`] and a new key:
    /// `(NAME.pem, NAME.key)`.
    pub fn client_certificate(&self, name: &str) -> (PathBuf, PathBuf) {
        self.leaf(
            name,
            &format!("/{CLIENT_SUBJECT}"),
            &[
                "basicConstraints=critical,CA:FALSE",
                "extendedKeyUsage=clientAuth",
            ],
        )
    }

    /// `NAME.pem` signed by the CA for a new key `NAME.key`.
    fn leaf(&self, name: &str, subject: &str, extensions: &[&str]) -> (PathBuf, PathBuf) {
        let key = format!("{name}.key");
        ec_key(&self.dir, &key);
        let cert = format!("{name}.pem");
        let mut args = vec![
            "req", "-x509", "-new", "-key", &key, "-CA", "ca.pem", "-CAkey", "ca.key", "-subj",
            subject, "-days", "1", "-out", &cert,
        ];
        for extension in extensions {
            args.extend(["-addext", extension]);
        }
        openssl(&self.dir, &args);
        (self.dir.join(cert), self.dir.join(key))
    }

    /// RFC 8705 §3.1: base64url(SHA-256(DER of the client certificate)), the `cnf` claim's
    /// `x5t#S256` of a token bound to it.
    pub fn client_thumbprint(&self) -> String {
        let der = CertificateDer::from_pem_file(&self.client_cert).expect("client certificate");
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()))
    }
}
