//! A throw-away CA ([`Pki`]) and the leaf certificates it issues ([`Leaf`]).

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use tempfile::TempDir;

use crate::clients::Trust;
use crate::files::{temp_dir, write_file};

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

/// A default leaf for `localhost` and leaves for `a.example` and
/// `b.example`, written to a directory of their own, with the tlsfront
/// options that serve them ([`SniLeaves::opts`]).
pub struct SniLeaves {
    pub default: Leaf,
    pub a: Leaf,
    pub b: Leaf,
    /// Holds the certificate and key files.
    pub dir: TempDir,
    /// Cert and key paths of `default`, `a` and `b`, in that order.
    paths: [String; 6],
}

impl SniLeaves {
    /// Issues the three leaves with `pki` and writes them.
    pub fn new(pki: &Pki) -> SniLeaves {
        let dir = temp_dir();
        let default = pki.leaf(&["localhost"]);
        let a = pki.leaf(&["a.example"]);
        let b = pki.leaf(&["b.example"]);
        let (dc, dk) = default.write(dir.path(), "default");
        let (ac, ak) = a.write(dir.path(), "a");
        let (bc, bk) = b.write(dir.path(), "b");
        let paths = [dc, dk, ac, ak, bc, bk].map(|p| p.display().to_string());
        SniLeaves {
            default,
            a,
            b,
            dir,
            paths,
        }
    }

    /// `tls.cert` and `tls.key` for the default leaf, `tls.sni.NAME.cert`
    /// and `tls.sni.NAME.key` for the other two.
    pub fn opts(&self) -> [(&'static str, &str); 6] {
        let p = &self.paths;
        [
            ("tls.cert", &p[0]),
            ("tls.key", &p[1]),
            ("tls.sni.a.example.cert", &p[2]),
            ("tls.sni.a.example.key", &p[3]),
            ("tls.sni.b.example.cert", &p[4]),
            ("tls.sni.b.example.key", &p[5]),
        ]
    }
}
