use super::*;

fn pair() -> crate::certs::Generated {
    crate::certs::generate(&["localhost".to_owned()], 1).expect("generate")
}

#[test]
fn loads_a_generated_pair() {
    let g = pair();
    let l = load_pem(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), "c", "k").expect("load");
    assert!(l.subject.contains("localhost"));
    assert_eq!(l.names, ["DNSName(localhost)"]);
    assert!(l.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let g = pair();
    let other = pair();
    let e = load_pem(b"garbage", g.key_pem.as_bytes(), "tls.crt", "tls.key")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "tls.crt: no CERTIFICATE block found");
    let e = load_pem(g.cert_pem.as_bytes(), b"", "tls.crt", "tls.key")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("tls.key: not a PEM private key"), "{e}");
    let e = load_pem(
        g.cert_pem.as_bytes(),
        other.key_pem.as_bytes(),
        "tls.crt",
        "tls.key",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "tls.key is not the private key of the certificate in tls.crt"
    );
    let broken = g.cert_pem.replace("MII", "xyz");
    let e = load_pem(
        broken.as_bytes(),
        g.key_pem.as_bytes(),
        "tls.crt",
        "tls.key",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("tls.crt: "), "{e}");
}
