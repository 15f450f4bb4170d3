//! Certificates for TLS tests: a CA and the certificates it issues, as PEM files.
//!
//! Compiled for this crate's tests and, with the `test-pki` feature, for the tests of the
//! crates that read TLS files (the sidecar's configuration, the end-to-end tests). A key
//! that cannot be made or a file that cannot be written is an error for the test to report.

use std::{
    io,
    path::{Path, PathBuf},
};

/// A certificate-making error as an I/O one, the kind writing the files gives.
fn failed(error: rcgen::Error) -> io::Error {
    io::Error::other(error)
}

/// A CA whose certificate is written to `<name>-ca.pem` in a directory, and which writes
/// the certificates it issues into the same directory.
pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate.
    pub ca: PathBuf,
    dir: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its certificate written to `<name>-ca.pem` in `dir`.
    pub fn new(dir: impl AsRef<Path>, name: &str) -> io::Result<Self> {
        let dir = dir.as_ref().to_owned();
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&key).map_err(failed)?;
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, certificate.pem())?;
        Ok(Self { issuer: rcgen::Issuer::new(params, key), ca, dir })
    }

    /// A certificate for `names` (host names or IP addresses) and its key, written to
    /// `<file>.pem` and `<file>-key.pem`.
    pub fn issue(&self, file: &str, names: &[&str]) -> io::Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certificate = rcgen::CertificateParams::new(names).map_err(failed)?.signed_by(&key, &self.issuer).map_err(failed)?;
        let (cert_path, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}-key.pem")));
        std::fs::write(&cert_path, certificate.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}
