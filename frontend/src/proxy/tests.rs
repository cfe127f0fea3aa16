//! PROXY protocol headers, byte for byte.

#[test]
fn proxy_protocol_v1_names_both_ends() {
    let h = super::proxy_protocol_header(
        1,
        "192.0.2.1:5000".parse().expect("addr"),
        "198.51.100.2:443".parse().expect("addr"),
    );
    assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
}

#[test]
fn proxy_protocol_v2_is_the_binary_form() {
    let h = super::proxy_protocol_header(
        2,
        "192.0.2.1:5000".parse().expect("addr"),
        "198.51.100.2:443".parse().expect("addr"),
    );
    assert_eq!(&h[..12], b"\r\n\r\n\x00\r\nQUIT\n");
    assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
    assert_eq!(&h[16..20], &[192, 0, 2, 1]);
    assert_eq!(&h[20..24], &[198, 51, 100, 2]);
    assert_eq!(&h[24..28], &[0x13, 0x88, 0x01, 0xbb]);
}
