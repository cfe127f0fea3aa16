//! OCSP stapling from files: `tls.ocsp` and `tls.sni.<name>.ocsp`.
//!
//! An operator (or a cron job running `openssl ocsp -respout`) keeps a DER
//! OCSP response beside each certificate; tlsfront reads it at start and on
//! every reload and rustls staples it (`CertifiedKey::ocsp`). A response that
//! would make clients refuse the connection or that vouches for nothing is
//! not stapled: one for another certificate (serial number, issuer name or
//! issuer key differ), one past its `nextUpdate`, one not yet valid, or one
//! that is not a successful basic response. The certificate is then served
//! without a staple and the reason is logged; the server always starts.
//!
//! The signature of the response is not checked here: clients check it
//! against the issuer, and a response tlsfront cannot match to the
//! certificate it serves is refused before that.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::Decode;
use x509_cert::Certificate;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

/// A response whose `thisUpdate` is at most this far in the future is
/// accepted: the responder's clock and ours may differ a little.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// Why an OCSP response file is not stapled.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum OcspError {
    /// The file could not be read.
    #[error("OCSP response {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a usable response for the certificate it is set for.
    #[error("OCSP response {}: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
}

/// What a usable response says, for the start-up and reload log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `good`, `revoked` or `unknown`.
    pub status: &'static str,
    /// `nextUpdate`, if the response has one.
    pub next_update: Option<SystemTime>,
}

/// Reads the response at `path` and checks it against `chain` (leaf first,
/// then its issuer if the file has it) at `now`. `Ok` carries the bytes to
/// staple, unchanged.
pub fn load(
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(Vec<u8>, Checked), OcspError> {
    let der = std::fs::read(path).map_err(|source| OcspError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let checked = check(&der, chain, now).map_err(|reason| OcspError::Unusable {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok((der, checked))
}

/// Checks a DER OCSP response against `chain` at `now`; `Err` says why it
/// must not be stapled.
pub fn check(der: &[u8], chain: &[CertificateDer<'_>], now: SystemTime) -> Result<Checked, String> {
    let response =
        OcspResponse::from_der(der).map_err(|e| format!("not a DER OCSP response ({e})"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!(
            "response status is {:?}, not successful",
            response.response_status
        ));
    }
    let bytes = response
        .response_bytes
        .ok_or("a successful response without responseBytes")?;
    if bytes.response_type != BasicOcspResponse::OID {
        return Err(format!(
            "response type {} is not id-pkix-ocsp-basic",
            bytes.response_type
        ));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("malformed BasicOCSPResponse ({e})"))?;

    let leaf_der = chain.first().ok_or("no certificate to match")?;
    let leaf = Certificate::from_der(leaf_der)
        .map_err(|e| format!("the certificate cannot be parsed to match it ({e})"))?;
    let issuer = chain.get(1).and_then(|c| Certificate::from_der(c).ok());
    let issuer_name = x509_cert::der::Encode::to_der(&leaf.tbs_certificate.issuer)
        .map_err(|e| format!("encoding the certificate's issuer ({e})"))?;
    let serial = leaf.tbs_certificate.serial_number.as_bytes();

    let mut why_not = String::from("it holds no response");
    for single in &basic.tbs_response_data.responses {
        let id = &single.cert_id;
        if id.serial_number.as_bytes() != serial {
            why_not = format!(
                "it is for serial number {}, the certificate has {}",
                hex(id.serial_number.as_bytes()),
                hex(serial)
            );
            continue;
        }
        let algorithm = id.hash_algorithm.oid;
        let name_hash = digest(algorithm, &issuer_name)?;
        if id.issuer_name_hash.as_bytes() != name_hash.as_slice() {
            why_not = "its issuer name hash is not that of the certificate's issuer".into();
            continue;
        }
        if let Some(issuer) = &issuer {
            let key = issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            if id.issuer_key_hash.as_bytes() != digest(algorithm, key)?.as_slice() {
                why_not = "its issuer key hash is not that of the issuer in the chain".into();
                continue;
            }
        }
        let this_update = single.this_update.0.to_system_time();
        if this_update > now + CLOCK_SKEW {
            return Err(format!(
                "not valid yet: thisUpdate is {}",
                single.this_update.0.to_date_time()
            ));
        }
        let next_update = single.next_update.map(|t| t.0.to_system_time());
        if let Some(next) = next_update {
            if next < now {
                return Err(format!(
                    "expired: nextUpdate was {}",
                    single
                        .next_update
                        .map(|t| t.0.to_date_time().to_string())
                        .unwrap_or_default()
                ));
            }
        }
        let status = match single.cert_status {
            CertStatus::Good(_) => "good",
            CertStatus::Revoked(_) => "revoked",
            CertStatus::Unknown(_) => "unknown",
        };
        return Ok(Checked {
            status,
            next_update,
        });
    }
    Err(format!("not for this certificate: {why_not}"))
}

/// The CertID hash of `data` with the algorithm the response names.
fn digest(algorithm: ObjectIdentifier, data: &[u8]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::digest;
    let alg = if algorithm == SHA1 {
        &digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if algorithm == SHA256 {
        &digest::SHA256
    } else if algorithm == SHA384 {
        &digest::SHA384
    } else if algorithm == SHA512 {
        &digest::SHA512
    } else {
        return Err(format!("unsupported CertID hash algorithm {algorithm}"));
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_no_ocsp_response_are_refused_saying_so() {
        let leaf =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("self-signed");
        let reason = check(
            b"not DER at all",
            &[leaf.cert.der().clone()],
            SystemTime::now(),
        )
        .expect_err("garbage");
        assert!(reason.contains("not a DER OCSP response"), "{reason}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err =
            load(Path::new("/nonexistent/r.der"), &[], SystemTime::now()).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/r.der"), "{err}");
    }
}
