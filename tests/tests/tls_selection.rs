//! Certificate selection by SNI, ALPN negotiation and protocol versions.

use tlsfront_tests::*;

struct SniSetup {
    pki: Pki,
    a: Leaf,
    b: Leaf,
    default: Leaf,
    fe: Frontend,
    _dir: TempDir,
}

fn sni_setup() -> SniSetup {
    let pki = Pki::new();
    let leaves = SniLeaves::new(&pki);
    let fe = Frontend::start(&leaves.opts());
    let SniLeaves {
        default, a, b, dir, ..
    } = leaves;
    SniSetup {
        pki,
        a,
        b,
        default,
        fe,
        _dir: dir,
    }
}

#[test]
fn sni_name_selects_its_own_certificate() {
    let s = sni_setup();
    // Full verification against the CA for the requested name, and the exact leaf.
    let cfg = ClientSpec::new(s.pki.trust()).build();
    for (name, leaf) in [("a.example", &s.a), ("b.example", &s.b)] {
        let c = TlsClient::connect(s.fe.addr(), cfg.clone(), name)
            .unwrap_or_else(|e| panic!("handshake with SNI {name} failed: {e}\n{}", s.fe.output()));
        assert!(
            c.leaf_der().as_ref() == Some(&leaf.der),
            "SNI {name}: served a different certificate"
        );
    }
}

#[test]
fn unknown_sni_name_gets_the_default_certificate() {
    let s = sni_setup();
    let cfg = ClientSpec::new(Trust::AnyCert).build();
    let c = TlsClient::connect(s.fe.addr(), cfg, "unknown.example").unwrap_or_else(|e| {
        panic!(
            "handshake with SNI unknown.example failed: {e}\n{}",
            s.fe.output()
        )
    });
    let got = c.leaf_der().expect("server sent no certificate");
    assert!(
        got == s.default.der,
        "unknown.example did not get the default (tls.cert) certificate"
    );
    assert!(got != s.a.der && got != s.b.der);
}

fn alpn_frontend(pki: &Pki, dir: &TempDir) -> Frontend {
    let (c, k) = pki.leaf(&["localhost"]).write(dir.path(), "localhost");
    Frontend::start(&[
        ("tls.cert", c.to_str().unwrap()),
        ("tls.key", k.to_str().unwrap()),
        ("tls.alpn", "h2,http/1.1"),
    ])
}

#[test]
fn alpn_picks_http11_when_client_offers_only_http11() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let fe = alpn_frontend(&pki, &dir);
    let c = TlsClient::connect(
        fe.addr(),
        ClientSpec::new(pki.trust()).alpn(&["http/1.1"]).build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", fe.output()));
    assert_eq!(c.alpn().as_deref(), Some("http/1.1"));
}

#[test]
fn alpn_picks_h2_when_client_offers_h2_and_http11() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let fe = alpn_frontend(&pki, &dir);
    let c = TlsClient::connect(
        fe.addr(),
        ClientSpec::new(pki.trust())
            .alpn(&["h2", "http/1.1"])
            .build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", fe.output()));
    assert_eq!(c.alpn().as_deref(), Some("h2"));
}

#[test]
fn alpn_is_absent_when_client_offers_none() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let fe = alpn_frontend(&pki, &dir);
    let c = TlsClient::connect(fe.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
        .unwrap_or_else(|e| panic!("handshake without ALPN failed: {e}\n{}", fe.output()));
    assert_eq!(c.alpn(), None);
}

#[test]
fn default_protocols_negotiate_tls13_and_allow_tls12() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (c, k) = pki.leaf(&["localhost"]).write(dir.path(), "localhost");
    let fe = Frontend::start(&[
        ("tls.cert", c.to_str().unwrap()),
        ("tls.key", k.to_str().unwrap()),
    ]);
    for (v, expect) in [
        (Versions::Both, rustls::ProtocolVersion::TLSv1_3),
        (Versions::Tls12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let cfg = ClientSpec::new(pki.trust()).versions(v).build();
        let mut cl = TlsClient::connect(fe.addr(), cfg, "localhost")
            .unwrap_or_else(|e| panic!("{v:?} handshake failed: {e}\n{}", fe.output()));
        assert_eq!(cl.version(), Some(expect), "{v:?}");
        let (resp, end) = cl.request(b"GET / HTTP/1.0\r\n\r\n", IO_TIMEOUT);
        assert!(
            is_http_200(&resp),
            "{v:?}: no HTTP 200 ({end:?}): {}",
            String::from_utf8_lossy(&resp)
        );
    }
}

#[test]
fn tls_protocols_13_only_refuses_a_tls12_only_client() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (c, k) = pki.leaf(&["localhost"]).write(dir.path(), "localhost");
    let fe = Frontend::start(&[
        ("tls.cert", c.to_str().unwrap()),
        ("tls.key", k.to_str().unwrap()),
        ("tls.protocols", "1.3"),
    ]);
    let r12 = TlsClient::connect(
        fe.addr(),
        ClientSpec::new(pki.trust())
            .versions(Versions::Tls12)
            .build(),
        "localhost",
    );
    // The refusal itself: a protocol_version alert from the server (RFC
    // 8446 §4.2.1), not a reset or a timeout.
    let err = match r12 {
        Ok(_) => panic!("a TLS 1.2-only client completed a handshake with tls.protocols = 1.3"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("received fatal alert: ProtocolVersion"),
        "a TLS 1.2-only client was refused, but not with a protocol_version alert: {err}\n{}",
        fe.output()
    );
    let r13 = TlsClient::connect(
        fe.addr(),
        ClientSpec::new(pki.trust())
            .versions(Versions::Tls13)
            .build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("TLS 1.3 handshake failed: {e}\n{}", fe.output()));
    assert_eq!(r13.version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

/// A frontend with a default certificate (`localhost`), a wildcard
/// `*.example.com` and an exact `api.example.com`, each from the test CA.
struct WildcardSetup {
    pki: Pki,
    default: Leaf,
    wild: Leaf,
    exact: Leaf,
    fe: Frontend,
    dir: TempDir,
}

fn wildcard_setup() -> WildcardSetup {
    let pki = Pki::new();
    let dir = temp_dir();
    let default = pki.leaf(&["localhost"]);
    let wild = pki.leaf(&["*.example.com"]);
    let exact = pki.leaf(&["api.example.com"]);
    let (dc, dk) = default.write(dir.path(), "default");
    let (wc, wk) = wild.write(dir.path(), "wild");
    let (ec, ek) = exact.write(dir.path(), "exact");
    let fe = Frontend::start(&[
        ("tls.cert", dc.to_str().unwrap()),
        ("tls.key", dk.to_str().unwrap()),
        ("tls.sni.*.example.com.cert", wc.to_str().unwrap()),
        ("tls.sni.*.example.com.key", wk.to_str().unwrap()),
        ("tls.sni.api.example.com.cert", ec.to_str().unwrap()),
        ("tls.sni.api.example.com.key", ek.to_str().unwrap()),
    ]);
    WildcardSetup {
        pki,
        default,
        wild,
        exact,
        fe,
        dir,
    }
}

/// `pem` without its line breaks, to compare two PEM texts.
fn pem_body(pem: &str) -> String {
    pem.split_whitespace().collect()
}

impl WildcardSetup {
    /// The leaf `openssl s_client` is served when it sends SNI `name`
    /// (`None`: `-noservername`, no SNI at all), as PEM without line breaks.
    fn served_to_s_client(&self, name: Option<&str>) -> String {
        let mut cmd = tlsfront_tests::prereq::tool("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", self.fe.port),
        ]);
        match name {
            Some(n) => cmd.args(["-servername", n]),
            None => cmd.arg("-noservername"),
        };
        let out = run_cmd(cmd, b"", CLI_TIMEOUT);
        let begin = out.stdout.find("-----BEGIN CERTIFICATE-----");
        let end = out.stdout.find("-----END CERTIFICATE-----");
        match (begin, end) {
            (Some(b), Some(e)) if b < e => {
                pem_body(&out.stdout[b..e + "-----END CERTIFICATE-----".len()])
            }
            _ => panic!(
                "s_client (SNI {name:?}) printed no certificate\n{}\n{}",
                out.describe(),
                self.fe.output()
            ),
        }
    }

    /// Asserts that SNI `name` is served `leaf` (called `which` in the message).
    fn assert_served(&self, name: Option<&str>, leaf: &Leaf, which: &str) {
        assert_eq!(
            self.served_to_s_client(name),
            pem_body(&leaf.cert_pem),
            "SNI {name:?} was not served the {which} certificate"
        );
    }

    /// `curl --resolve NAME:PORT:127.0.0.1 --cacert CA https://NAME:PORT/`:
    /// curl verifies the served certificate against the CA and `name`.
    fn curl(&self, name: &str) -> CmdOutput {
        let ca = write_file(self.dir.path(), "ca.pem", &self.pki.ca_pem);
        let port = self.fe.port;
        let mut cmd = tlsfront_tests::prereq::tool("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ]);
        cmd.arg("--resolve").arg(format!("{name}:{port}:127.0.0.1"));
        cmd.arg("--cacert").arg(&ca);
        cmd.arg(format!("https://{name}:{port}/"));
        run_cmd(cmd, b"", CLI_TIMEOUT)
    }
}

#[test]
fn a_wildcard_certificate_is_served_for_one_leftmost_label() {
    let s = wildcard_setup();
    s.assert_served(Some("www.example.com"), &s.wild, "*.example.com");
    s.assert_served(Some("a.b.example.com"), &s.default, "default");
    s.assert_served(Some("example.com"), &s.default, "default");
}

#[test]
fn an_exact_sni_name_wins_over_a_matching_wildcard() {
    let s = wildcard_setup();
    s.assert_served(Some("api.example.com"), &s.exact, "api.example.com");
}

#[test]
fn sni_names_match_case_insensitively() {
    let s = wildcard_setup();
    s.assert_served(Some("WWW.Example.COM"), &s.wild, "*.example.com");
    s.assert_served(Some("API.EXAMPLE.com"), &s.exact, "api.example.com");
}

#[test]
fn a_client_without_sni_gets_the_default_certificate() {
    let s = wildcard_setup();
    s.assert_served(None, &s.default, "default");
}

#[test]
fn curl_verifies_the_wildcard_certificate_for_its_name() {
    let s = wildcard_setup();
    let out = s.curl("www.example.com");
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "200"),
        "curl to www.example.com\n{}\n{}",
        out.describe(),
        s.fe.output()
    );
    // Two labels below example.com: the default (localhost) certificate,
    // which curl refuses for that name (exit 60: peer certificate).
    let out = s.curl("a.b.example.com");
    assert_eq!(
        out.code(),
        Some(60),
        "curl to a.b.example.com should fail verification\n{}",
        out.describe()
    );
}
