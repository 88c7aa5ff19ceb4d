//! The system's root certificates for `https` token endpoints: the distribution's CA bundle
//! alone where there is one, else whatever `rustls-native-certs` finds (the bundle and every
//! file of the hashed directory), and exactly what `SSL_CERT_FILE`/`SSL_CERT_DIR` name when
//! set. It must not decide whom to trust beyond that: `ca_file` is added by `http`.
//!
//! Why not always `rustls-native-certs`: on Debian it reads the bundle and then each of the
//! ~145 files of `/etc/ssl/certs` (about 300 `stat`s and 150 opens), which hold the same roots
//! again, and that was most of the TLS cost of a `run --once` (BENCHMARKS.md, issue 14).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::files;

/// The system's roots, each one a valid trust anchor (others are left out, as reqwest does:
/// stores often hold ancient certificates webpki cannot parse).
pub(super) fn system_roots() -> Vec<CertificateDer<'static>> {
    let chosen_by_environment = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    if !chosen_by_environment
        && let Some(bundle) = openssl_probe::probe().cert_file
        && let Ok(pem) = files::read(&bundle, files::Kind::SystemRoots)
    {
        let roots = valid_anchors(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        if !roots.is_empty() {
            return roots;
        }
    }
    valid_anchors(rustls_native_certs::load_native_certs().certs)
}

fn valid_anchors(
    certificates: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Vec<CertificateDer<'static>> {
    certificates
        .into_iter()
        .filter(|der| webpki::anchor_from_trusted_cert(der).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_alone_holds_the_roots_of_the_whole_store() {
        let Some(bundle) = openssl_probe::probe().cert_file else {
            eprintln!("no system CA bundle here: nothing to compare");
            return;
        };
        if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some()
        {
            return;
        }
        let bytes = |roots: Vec<CertificateDer<'static>>| {
            let mut roots: Vec<Vec<u8>> = roots.iter().map(|root| root.to_vec()).collect();
            roots.sort_unstable();
            roots.dedup();
            roots
        };
        let ours = bytes(system_roots());
        let everything = bytes(valid_anchors(
            rustls_native_certs::load_native_certs().certs,
        ));
        assert!(!ours.is_empty(), "no root read from {}", bundle.display());
        assert!(
            ours.iter()
                .all(|root| everything.binary_search(root).is_ok())
        );
        // On Debian the hashed directory is made from the bundle's sources: the same roots.
        if ours.len() != everything.len() {
            eprintln!(
                "{} roots in {}, {} in the whole store",
                ours.len(),
                bundle.display(),
                everything.len()
            );
        }
    }
}
