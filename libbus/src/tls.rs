//! TLS configuration (rustls with the *ring* provider) for `tls://`
//! addresses: the client side, and PEM loading the daemon shares.

use std::{path::Path, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore, ServerConfig,
};

use crate::{Error, Result};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: String) -> impl FnOnce(rustls::Error) -> Error {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: rustls::pki_types::pem::Error| {
        Error::Tls(format!("reading certificates from {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::Tls(format!("reading a private key from {}: {e}", path.display())))
}

/// The CA certificates in `ca_file`, as trust roots.
fn roots(ca_file: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(tls_err(format!("CA certificate in {}", ca_file.display())))?;
    }
    Ok(roots)
}

/// A client configuration trusting exactly the CA certificates in
/// `ca_file`, presenting `client` (certificate chain and key, PEM files)
/// if given.
pub fn client_config(ca_file: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS client".into()))?
        .with_root_certificates(roots(ca_file)?);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(tls_err(format!("client certificate {}", cert.display())))?,
    };
    Ok(Arc::new(config))
}

/// A server configuration presenting `cert_file` (a PEM chain) with
/// `key_file`. With `client_ca`, it asks each client for a certificate and
/// verifies one presented against that CA (a client may also present none,
/// and authenticate otherwise).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS server".into()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| Error::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)
        .map_err(tls_err(format!("certificate {}", cert_file.display())))?;
    Ok(Arc::new(config))
}

/// The DNS names (subject alternative names) of `cert`, a client
/// certificate the server already verified: what a daemon maps to a user.
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(str::to_owned).collect())
        .unwrap_or_default()
}
