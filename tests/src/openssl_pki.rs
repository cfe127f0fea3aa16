//! Certificates, OCSP responses and handshakes made by Debian's `openssl`,
//! for the OCSP stapling and client-certificate tests: the CA, its leaves
//! and its OCSP responder are the ones an operator would use
//! (`openssl req`, `openssl x509 -req`, `openssl ocsp -index … -respout`),
//! and `openssl s_client` judges what tlsfront sends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{run_cmd, CmdOutput};

/// What a leaf certificate is for (its extendedKeyUsage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// serverAuth, with `DNS:<cn>` as subjectAltName.
    Server,
    /// clientAuth.
    Client,
}

/// A certificate and key made by [`OpensslCa::issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf alone (PEM).
    pub cert: PathBuf,
    /// The leaf, then the CA certificate (PEM): what `tls.cert` is given.
    pub chain: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Its serial number, upper-case hex as `openssl x509 -serial` prints it.
    pub serial: String,
}

/// A CA made with `openssl req -x509`, with its files in a directory.
pub struct OpensslCa {
    dir: PathBuf,
    name: String,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA key (PEM).
    pub key: PathBuf,
}

/// Runs `openssl ARGS…` in `dir` (at most 30 s) and fails the test, with
/// its output, unless it exits 0.
fn openssl(dir: &Path, args: &[&str]) -> CmdOutput {
    openssl_with(crate::prereq::tool("openssl"), dir, args)
}

fn openssl_with(mut cmd: Command, dir: &Path, args: &[&str]) -> CmdOutput {
    cmd.current_dir(dir).args(args);
    let shown = format!("{cmd:?}");
    let out = run_cmd(cmd, b"", Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "{shown}\n{}", out.describe());
    out
}

impl OpensslCa {
    /// A new CA called `name` (its CN), with files `<name>-ca.pem|key` in `dir`.
    pub fn new(dir: &Path, name: &str) -> OpensslCa {
        let cert = dir.join(format!("{name}-ca.pem"));
        let key = dir.join(format!("{name}-ca.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-keyout",
                &key.display().to_string(),
                "-out",
                &cert.display().to_string(),
            ],
        );
        OpensslCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
        }
    }

    /// A leaf for `cn`, signed by this CA, as `<stem>.pem|key` and
    /// `<stem>.chain.pem`.
    pub fn issue(&self, stem: &str, cn: &str, usage: Usage) -> Issued {
        let dir = &self.dir;
        let (cert, key, chain, csr, ext) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.chain.pem")),
            dir.join(format!("{stem}.csr")),
            dir.join(format!("{stem}.ext")),
        );
        let extensions = match usage {
            Usage::Server => format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{cn}\n"
            ),
            Usage::Client => "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=clientAuth\n"
                .to_string(),
        };
        std::fs::write(&ext, extensions).expect("write extensions file");
        let path = |p: &Path| p.display().to_string();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &path(&key),
                "-out",
                &path(&csr),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &path(&csr),
                "-CA",
                &path(&self.cert),
                "-CAkey",
                &path(&self.key),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &path(&ext),
                "-out",
                &path(&cert),
            ],
        );
        let serial_out = openssl(dir, &["x509", "-noout", "-serial", "-in", &path(&cert)]);
        let serial = serial_out
            .stdout
            .trim()
            .strip_prefix("serial=")
            .unwrap_or_else(|| panic!("openssl x509 -serial: {}", serial_out.describe()))
            .to_string();
        let read = |p: &Path| std::fs::read_to_string(p).expect("read PEM");
        std::fs::write(&chain, read(&cert) + &read(&self.cert)).expect("write chain");
        Issued {
            cert,
            chain,
            key,
            serial,
        }
    }

    /// An OCSP response for `leaf` signed by this CA (as its own responder),
    /// saying `status` (`V` valid or `R` revoked, the index file's letters),
    /// valid for one day from now, or from `made_at` (a date `faketime`
    /// understands: the response is then made as if at that time).
    pub fn ocsp_response(&self, leaf: &Issued, status: char, made_at: Option<&str>, out: &Path) {
        let index = self
            .dir
            .join(format!("{}-index-{}.txt", self.name, leaf.serial));
        let revoked = if status == 'R' { "210101000000Z" } else { "" };
        std::fs::write(
            &index,
            format!(
                "{status}\t301231235959Z\t{revoked}\t{}\tunknown\t/CN=leaf\n",
                leaf.serial
            ),
        )
        .expect("write OCSP index");
        let path = |p: &Path| p.display().to_string();
        let args = [
            "ocsp",
            "-index",
            &path(&index),
            "-rsigner",
            &path(&self.cert),
            "-rkey",
            &path(&self.key),
            "-CA",
            &path(&self.cert),
            "-issuer",
            &path(&self.cert),
            "-cert",
            &path(&leaf.cert),
            "-ndays",
            "1",
            "-respout",
            &path(out),
        ];
        match made_at {
            None => {
                openssl(&self.dir, &args);
            }
            Some(when) => {
                let mut cmd = crate::prereq::tool("faketime");
                cmd.args([when, "openssl"]);
                openssl_with(cmd, &self.dir, &args);
            }
        }
    }
}

/// `openssl s_client` to `127.0.0.1:port` for `localhost` (or the
/// `-servername` in `extra`), sending an HTTP/1.0 request and reading until
/// the server closes (at most 20 s).
pub fn s_client(port: u16, extra: &[&str]) -> CmdOutput {
    let mut cmd = crate::prereq::tool("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-ign_eof",
    ]);
    if !extra.contains(&"-servername") {
        cmd.args(["-servername", "localhost"]);
    }
    cmd.args(extra);
    let out = run_cmd(cmd, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(20));
    assert!(
        !out.timed_out(),
        "s_client did not finish in 20 s\n{}",
        out.describe()
    );
    out
}

/// True when `out` (of [`s_client`]) got the built-in upstream's answer.
pub fn served(out: &CmdOutput) -> bool {
    out.stdout.contains("HTTP/1.1 200") || out.stdout.contains("HTTP/1.0 200")
}

/// True when `out` (of [`s_client`] with `-sess_in`) resumed its session.
pub fn reused(out: &CmdOutput) -> bool {
    out.stdout.lines().any(|l| l.starts_with("Reused, "))
}
