//! TLS settings read from PEM files: a client's (a sidecar exporting to an `https://`
//! collector endpoint) and a server's (the collector's OTLP receivers), built into rustls
//! configurations with the ring provider.
//!
//! The files are read when a configuration is checked, so a missing or unreadable file or one
//! without the PEM block it should hold stops the start with its path named. A certificate
//! and its key are read again when their files change ([`Identity`]); CA files are read once. A client
//! trusts the CA certificates of its CA file, or the system's roots when it names none; it
//! presents a certificate (mutual TLS) only when given one, and checks the server's for the
//! name it connects to, or for the one it is given ([`server_name`]). A server asks its
//! clients for certificates only when given the CAs that issue them, and then refuses
//! clients without one.

mod server_name;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
};

/// Why TLS settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or does not hold what it should.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files do not make a usable configuration together.
    #[error("{0}")]
    Settings(String),
}

impl TlsError {
    fn file(path: &Path, reason: impl fmt::Display) -> Self {
        Self::File { path: path.to_owned(), reason: reason.to_string() }
    }
}

/// The cryptography every configuration here uses: ring's. rustls calls it deprecated for
/// its lack of post-quantum key exchange; the other provider, aws-lc-rs, builds a C library
/// of its own, minutes on a two-core machine.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of the PEM file at `path`, in order; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::file(path, pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, pem_reason(e)))?;
    if certificates.is_empty() {
        return Err(TlsError::file(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certificates)
}

/// The first private key (PKCS #8, PKCS #1 or SEC1) of the PEM file at `path`.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::file(path, "holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
        other => TlsError::file(path, pem_reason(other)),
    })
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        other => format!("not a valid PEM file: {other}"),
    }
}

/// CA certificates as a store of trust anchors; `file` names them in errors.
fn root_store(certificates: &[CertificateDer<'static>], file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate.clone()).map_err(|e| TlsError::file(file, format!("a certificate that cannot be a trust anchor: {e}")))?;
    }
    Ok(roots)
}

/// How often, at most, the files of a certificate in use are looked at again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// A certificate chain and the private key of its first certificate, read again when their
/// files change: looked at on a handshake, at most every [`RECHECK`], so a renewed
/// certificate (cert-manager's, say) is presented from the next connection on, without a
/// restart. A renewed pair that cannot be used (unreadable, half written, the key not the
/// certificate's) leaves the pair before it in use, and is logged.
#[derive(Clone)]
pub struct Identity(Arc<LiveIdentity>);

struct LiveIdentity {
    certificate: PathBuf,
    key: PathBuf,
    recheck: Duration,
    state: Mutex<Loaded>,
}

/// The pair in use, and what its files looked like when it was read.
struct Loaded {
    pair: Arc<CertifiedKey>,
    stamps: [Option<(SystemTime, u64)>; 2],
    checked: Instant,
}

/// When a file was last written, and its length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Identity {
    /// Reads the chain from `certificate` and the key from `key`; an error when either
    /// cannot be read or the key is not the certificate's.
    pub fn read(certificate: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::reading_every(certificate, key, RECHECK)
    }

    fn reading_every(certificate: &Path, key: &Path, recheck: Duration) -> Result<Self, TlsError> {
        let stamps = [stamp(certificate), stamp(key)];
        let pair = Arc::new(load_pair(certificate, key)?);
        let state = Mutex::new(Loaded { pair, stamps, checked: Instant::now() });
        Ok(Self(Arc::new(LiveIdentity { certificate: certificate.to_owned(), key: key.to_owned(), recheck, state })))
    }

    /// The pair to present: the one in use, read again first if its files changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let live = &self.0;
        let mut loaded = live.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.checked.elapsed() >= live.recheck {
            loaded.checked = Instant::now();
            let stamps = [stamp(&live.certificate), stamp(&live.key)];
            if stamps != loaded.stamps {
                match load_pair(&live.certificate, &live.key) {
                    Ok(pair) => {
                        tracing::info!(certificate = %live.certificate.display(), "TLS certificate read again after its files changed");
                        (loaded.pair, loaded.stamps) = (Arc::new(pair), stamps);
                    }
                    // Tried again at the next check: a renewal may be half written.
                    Err(error) => tracing::warn!(%error, "the changed TLS certificate cannot be used; the one before stays in use"),
                }
            }
        }
        loaded.pair.clone()
    }
}

/// The chain of `certificate` with the key of `key`, checked to belong together.
fn load_pair(certificate: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let (chain, private_key) = (read_certificates(certificate)?, read_private_key(key)?);
    CertifiedKey::from_der(chain, private_key, &provider()).map_err(|error| {
        let (certificate, key) = (certificate.display(), key.display());
        TlsError::Settings(format!("the certificate of {certificate} and the key of {key} do not make a usable pair: {error}"))
    })
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Identity").field("certificate", &self.0.certificate).field("key", &self.0.key).finish()
    }
}

impl PartialEq for Identity {
    /// The same files, holding the same chain (as last read: comparing reads no file).
    fn eq(&self, other: &Self) -> bool {
        let chain = |i: &Self| i.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pair.cert.clone();
        (&self.0.certificate, &self.0.key) == (&other.0.certificate, &other.0.key) && chain(self) == chain(other)
    }
}

impl Eq for Identity {}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The files a client's or a server's TLS is read from, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates: those a client trusts instead of the system's roots, or those that
    /// issue the client certificates a server asks for.
    pub ca: Option<PathBuf>,
    /// The own certificate chain (a client's only for mutual TLS).
    pub certificate: Option<PathBuf>,
    /// The private key of `certificate`.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether no file is named.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.certificate.is_none() && self.key.is_none()
    }

    /// The own certificate and key, read, if named; `what` names the setting in errors.
    fn identity(&self, what: &str) -> Result<Option<Identity>, TlsError> {
        match (&self.certificate, &self.key) {
            (Some(certificate), Some(key)) => Identity::read(certificate, key).map(Some),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Settings(format!("{what}: a certificate needs its private key file too"))),
            (None, Some(_)) => Err(TlsError::Settings(format!("{what}: a private key needs its certificate file too"))),
        }
    }
}

/// A client's TLS: whom it trusts, and what it presents if asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificates trusted, with their file; none: the system's roots.
    roots: Option<(Vec<CertificateDer<'static>>, PathBuf)>,
    identity: Option<Identity>,
    /// The name the server's certificate is checked for instead of the one connected to.
    server_name: Option<ServerName<'static>>,
}

impl Default for ClientTls {
    /// The system's roots, no certificate of its own.
    fn default() -> Self {
        Self { roots: None, identity: None, server_name: None }
    }
}

impl ClientTls {
    /// Reads `files`; `what` names the setting in errors.
    pub fn read(files: &TlsFiles, what: &str) -> Result<Self, TlsError> {
        let roots = files.ca.as_deref().map(|ca| read_certificates(ca).map(|certificates| (certificates, ca.to_owned()))).transpose()?;
        let tls = Self { roots, identity: files.identity(what)?, server_name: None };
        // The CA file's certificates taken as trust anchors now, not at the first connection
        // (the key was checked against its certificate as it was read).
        if let Some((certificates, file)) = &tls.roots {
            root_store(certificates, file)?;
        }
        Ok(tls)
    }

    /// Checks the server's certificate for `name` (a DNS name or an IP address) instead of
    /// the name connected to; `what` names the setting in errors.
    pub fn with_server_name(mut self, name: &str, what: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::Settings(format!("{what}: {name:?} is not a DNS name or an IP address")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Whether it presents a certificate when the server asks for one.
    pub fn presents_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// What it trusts and presents, in words (`TLS trusting the system's roots`, `TLS
    /// trusting ca.pem, presenting sidecar.pem`).
    pub fn describe(&self) -> String {
        let trusted = self.roots.as_ref().map_or_else(|| "the system's roots".to_owned(), |(_, file)| file.display().to_string());
        let mut text = format!("TLS trusting {trusted}");
        if let Some(name) = &self.server_name {
            text.push_str(&format!(" for the name {}", name.to_str()));
        }
        if let Some(identity) = &self.identity {
            text.push_str(&format!(", presenting {}", identity.0.certificate.display()));
        }
        text
    }

    /// The rustls configuration: the CA file's certificates, or the system's roots (an error
    /// when the system has none that can be read).
    pub fn config(&self) -> Result<ClientConfig, TlsError> {
        let roots = match &self.roots {
            Some((certificates, file)) => root_store(certificates, file)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let builder = match &self.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| TlsError::Settings(e.to_string()))?;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(server_name::ForName::new(verifier, name.clone())))
            }
        };
        Ok(match &self.identity {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(identity.clone())),
            None => builder.with_no_client_auth(),
        })
    }
}

/// The roots of the system's certificate store (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else
/// the distribution's bundle).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(TlsError::Settings(format!("the system has no trusted CA certificates ({why}); name a CA file")));
    }
    Ok(roots)
}

/// A server's TLS: what it presents, and whom it asks for certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    identity: Identity,
    /// The CAs that issue the client certificates required, with their file; none: clients
    /// are not asked for one.
    client_roots: Option<(Vec<CertificateDer<'static>>, PathBuf)>,
}

impl ServerTls {
    /// Reads `files` (a certificate and its key are required); `what` names the setting in errors.
    pub fn read(files: &TlsFiles, what: &str) -> Result<Self, TlsError> {
        let identity = files.identity(what)?.ok_or_else(|| TlsError::Settings(format!("{what}: TLS needs a certificate and its key")))?;
        let client_roots = files.ca.as_deref().map(|ca| read_certificates(ca).map(|c| (c, ca.to_owned()))).transpose()?;
        let tls = Self { identity, client_roots };
        // Built once here, so CAs that cannot verify client certificates are found at the start.
        tls.config(&[])?;
        Ok(tls)
    }

    /// Whether clients must present a certificate issued by the configured CAs.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_roots.is_some()
    }

    /// The rustls configuration, offering `alpn` (most preferred first).
    pub fn config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let builder = match &self.client_roots {
            Some((certificates, file)) => {
                let roots = Arc::new(root_store(certificates, file)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::file(file, format!("cannot verify client certificates with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(self.identity.clone()));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::Pki;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("meshlens-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temporary directory");
            Self(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn missing_and_empty_files_are_named_with_what_is_wrong() {
        let dir = Dir::new("files");
        let missing = dir.0.join("missing.pem");
        let error = read_certificates(&missing).expect_err("missing").to_string();
        assert!(error.contains("missing.pem") && error.contains("cannot read it"), "{error}");
        let text = dir.file("text.pem", "not a certificate\n");
        let error = read_certificates(&text).expect_err("no block").to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let error = read_private_key(&text).expect_err("no key").to_string();
        assert!(error.contains("holds no PEM private key"), "{error}");
        let broken = dir.file("broken.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let error = read_certificates(&broken).expect_err("broken base64").to_string();
        assert!(error.contains("not a valid PEM file"), "{error}");
    }

    #[test]
    fn a_certificate_without_its_key_and_a_server_without_either_are_refused() {
        let dir = Dir::new("pairs");
        let files = TlsFiles { certificate: Some(dir.file("c.pem", "")), ..TlsFiles::default() };
        let error = ClientTls::read(&files, "telemetry.tls").expect_err("no key").to_string();
        assert_eq!(error, "telemetry.tls: a certificate needs its private key file too");
        let files = TlsFiles { key: Some(dir.file("k.pem", "")), ..TlsFiles::default() };
        let error = ClientTls::read(&files, "telemetry.tls").expect_err("no certificate").to_string();
        assert_eq!(error, "telemetry.tls: a private key needs its certificate file too");
        let error = ServerTls::read(&TlsFiles::default(), "--otlp-tls").expect_err("nothing").to_string();
        assert_eq!(error, "--otlp-tls: TLS needs a certificate and its key");
        let system = ClientTls::read(&TlsFiles::default(), "t").expect("the system's roots");
        assert!(!system.presents_certificate());
        assert_eq!(system.describe(), "TLS trusting the system's roots");
    }

    /// Runs a handshake between the two in memory; the error of the side that failed.
    fn handshake(client: ClientConfig, server: ServerConfig, name: &str) -> Result<(), rustls::Error> {
        presented(client, server, name).map(drop)
    }

    /// The certificate the server presented in a handshake between the two in memory.
    fn presented(client: ClientConfig, server: ServerConfig, name: &str) -> Result<CertificateDer<'static>, rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("server name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("to memory");
            server.read_tls(&mut bytes.as_slice()).expect("from memory");
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).expect("to memory");
            client.read_tls(&mut bytes.as_slice()).expect("from memory");
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                // The server learns of a refused certificate from the client's last flight.
                let mut bytes = Vec::new();
                client.write_tls(&mut bytes).expect("to memory");
                server.read_tls(&mut bytes.as_slice()).expect("from memory");
                server.process_new_packets()?;
                let presented = client.peer_certificates().and_then(|chain| chain.first().cloned());
                return presented.map(CertificateDer::into_owned).ok_or(rustls::Error::NoCertificatesPresented);
            }
        }
        Err(rustls::Error::General("the handshake did not end".into()))
    }

    #[test]
    fn a_client_trusting_the_ca_file_connects_and_mutual_tls_refuses_clients_without_a_certificate() {
        let dir = Dir::new("handshake");
        let ca = |name| Pki::new(&dir.0, name).expect("a test CA");
        let (servers, clients, other) = (ca("servers"), ca("clients"), ca("other"));
        let (servers_ca, clients_ca, other_ca) = (&servers.ca, &clients.ca, &other.ca);
        let (certificate, key) = servers.issue("collector", &["collector.example"]).expect("a test certificate");
        let (client_certificate, client_key) = clients.issue("sidecar", &["sidecar"]).expect("a test certificate");
        let (stranger_certificate, stranger_key) = other.issue("stranger", &["sidecar"]).expect("a test certificate");

        let server = |ca: Option<&PathBuf>| {
            let files = TlsFiles { ca: ca.cloned(), certificate: Some(certificate.clone()), key: Some(key.clone()) };
            ServerTls::read(&files, "server").expect("server TLS").config(&[b"h2"]).expect("server config")
        };
        let client = |ca: &PathBuf, identity: Option<(&PathBuf, &PathBuf)>| {
            let (certificate, key) = identity.map_or((None, None), |(c, k)| (Some(c.clone()), Some(k.clone())));
            ClientTls::read(&TlsFiles { ca: Some(ca.clone()), certificate, key }, "client").expect("client TLS").config().expect("config")
        };

        assert_eq!(handshake(client(servers_ca, None), server(None), "collector.example"), Ok(()));
        let wrong_name = handshake(client(servers_ca, None), server(None), "elsewhere.example");
        assert!(matches!(wrong_name, Err(rustls::Error::InvalidCertificate(_))), "{wrong_name:?}");
        let untrusted = handshake(client(other_ca, None), server(None), "collector.example");
        assert!(matches!(untrusted, Err(rustls::Error::InvalidCertificate(_))), "{untrusted:?}");

        let mutual = || server(Some(clients_ca));
        let with_certificate = client(servers_ca, Some((&client_certificate, &client_key)));
        assert_eq!(handshake(with_certificate, mutual(), "collector.example"), Ok(()));
        let without = handshake(client(servers_ca, None), mutual(), "collector.example");
        assert!(matches!(without, Err(rustls::Error::NoCertificatesPresented)), "{without:?}");
        let stranger = handshake(client(servers_ca, Some((&stranger_certificate, &stranger_key))), mutual(), "collector.example");
        assert!(matches!(stranger, Err(rustls::Error::InvalidCertificate(_))), "{stranger:?}");
    }

    #[test]
    fn a_server_name_checks_the_certificate_for_that_name_whatever_was_connected_to() {
        let dir = Dir::new("server-name");
        let pki = Pki::new(&dir.0, "names").expect("a test CA");
        let (certificate, key) = pki.issue("collector", &["collector.example"]).expect("a test certificate");
        let files = TlsFiles { ca: None, certificate: Some(certificate), key: Some(key) };
        let server = || ServerTls::read(&files, "server").expect("server").config(&[]).expect("config");
        let client = |name: Option<&str>| {
            let tls = ClientTls::read(&TlsFiles { ca: Some(pki.ca.clone()), ..TlsFiles::default() }, "client").expect("client");
            let tls = match name {
                Some(name) => tls.with_server_name(name, "telemetry.tls.server_name").expect("a name"),
                None => tls,
            };
            tls.config().expect("config")
        };
        let by_address = handshake(client(None), server(), "10.0.0.7");
        assert!(matches!(by_address, Err(rustls::Error::InvalidCertificate(_))), "{by_address:?}");
        assert_eq!(handshake(client(Some("collector.example")), server(), "10.0.0.7"), Ok(()));
        let other = handshake(client(Some("other.example")), server(), "collector.example");
        assert!(matches!(other, Err(rustls::Error::InvalidCertificate(_))), "the given name, not the connected one: {other:?}");
        let other_ca = Pki::new(&dir.0, "other").expect("a test CA").ca;
        let untrusted = ClientTls::read(&TlsFiles { ca: Some(other_ca), ..TlsFiles::default() }, "c").expect("other CA");
        let untrusted = untrusted.with_server_name("collector.example", "n").expect("a name").config().expect("config");
        let untrusted = handshake(untrusted, server(), "10.0.0.7");
        assert!(matches!(untrusted, Err(rustls::Error::InvalidCertificate(_))), "the chain is still checked: {untrusted:?}");
        let error = ClientTls::default().with_server_name("not a name!", "telemetry.tls.server_name").expect_err("bad").to_string();
        assert_eq!(error, "telemetry.tls.server_name: \"not a name!\" is not a DNS name or an IP address");
        let described = ClientTls::default().with_server_name("collector.example", "n").expect("a name").describe();
        assert_eq!(described, "TLS trusting the system's roots for the name collector.example");
    }

    #[test]
    fn a_renewed_certificate_is_presented_from_the_next_handshake_and_a_broken_renewal_is_not() {
        let dir = Dir::new("renewal");
        let pki = Pki::new(&dir.0, "renewal").expect("a test CA");
        let ca = pki.ca.clone();
        let (certificate, key) = pki.issue("collector", &["collector.example"]).expect("a test certificate");
        let server = ServerTls { identity: Identity::reading_every(&certificate, &key, Duration::ZERO).expect("read"), client_roots: None };
        let client =
            || ClientTls::read(&TlsFiles { ca: Some(ca.clone()), ..TlsFiles::default() }, "c").expect("client").config().expect("config");
        let first = presented(client(), server.config(&[]).expect("config"), "collector.example").expect("handshake");
        assert_eq!(first.as_ref(), read_certificates(&certificate).expect("first")[0].as_ref());

        // Renewed in place (the same names, a new key), then a renewal caught half written.
        let (renewed, renewed_key) = pki.issue("renewed", &["collector.example"]).expect("a test certificate");
        std::fs::copy(&renewed, &certificate).expect("copy");
        std::fs::copy(&renewed_key, &key).expect("copy");
        let config = server.config(&[]).expect("config");
        let second = presented(client(), config.clone(), "collector.example").expect("handshake");
        assert_eq!(second.as_ref(), read_certificates(&renewed).expect("renewed")[0].as_ref(), "the renewed one, same configuration");
        assert_ne!(first, second);
        std::fs::write(&certificate, "-----BEGIN CERTIFICATE-----\n").expect("half written");
        let third = presented(client(), config, "collector.example").expect("the renewed pair stays in use");
        assert_eq!(third, second);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_read() {
        let dir = Dir::new("mismatch");
        let pki = Pki::new(&dir.0, "mismatch").expect("a test CA");
        let (certificate, _) = pki.issue("a", &["a.example"]).expect("a test certificate");
        let (_, other_key) = pki.issue("b", &["b.example"]).expect("a test certificate");
        let files = TlsFiles { ca: None, certificate: Some(certificate), key: Some(other_key) };
        let error = ServerTls::read(&files, "server").expect_err("mismatch").to_string();
        assert!(error.contains("do not make a usable pair"), "{error}");
        let error = ClientTls::read(&files, "client").expect_err("mismatch").to_string();
        assert!(error.contains("do not make a usable pair"), "{error}");
    }
}
