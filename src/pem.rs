//! PEM files of TLS identities, read the same way wherever Tributary presents one (the
//! registry's https listener, a Postgres client certificate): errors name the setting
//! the file came from.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain (leaf first) and its unencrypted private key; `cert_key` and
/// `key_key` name the settings for messages (`--tls-cert`, `sslcert`, …).
pub fn chain_and_key(
    cert: &Path,
    key: &Path,
    cert_key: &str,
    key_key: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{cert_key} {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_key} {}: no certificate in the file",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{key_key} {}: {e} (a PEM private key, not encrypted)",
            key.display()
        )
    })?;
    Ok((chain, key_der))
}
