//! A throw-away CA ([`Pki`]) and the leaf certificates it issues ([`Leaf`]).

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use crate::clients::Trust;
use crate::files::write_file;

/// A leaf certificate and its key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; returns (cert path, key path).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let c = write_file(dir, &format!("{stem}.pem"), &self.cert_pem);
        let k = write_file(dir, &format!("{stem}.key"), &self.key_pem);
        (c, k)
    }
}

/// A throw-away CA that issues leaf certificates for the tests.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    /// The CA certificate as PEM (for `curl --cacert`, `openssl -CAfile`).
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "tlsfront test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("self-sign CA");
        Pki {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A leaf for `names` (DNS SANs; the first is also the CN), signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names.clone()).expect("leaf params");
        if let Some(cn) = names.first() {
            p.distinguished_name.push(DnType::CommonName, cn.as_str());
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Trust only this CA.
    pub fn trust(&self) -> Trust {
        Trust::Roots(vec![self.ca_der.clone()])
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
