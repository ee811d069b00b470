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

/// `/readyz`'s certificate line: the served leaf is checked against the clock, its key and
/// the name the API server dials.
#[test]
fn the_served_certificate_is_checked() {
    let names = [
        "webhook.system.svc".to_owned(),
        "*.pool.example".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let g = crate::certs::generate(&names, 2).expect("generate");
    let l = load_pem(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), "c", "k").expect("load");
    let r = CertResolver::new(&l);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ok = r.check(now, None).unwrap();
    assert!(ok.starts_with("CN=webhook.system.svc, valid for "), "{ok}");
    for name in [
        "webhook.system.svc",
        "WEBHOOK.system.svc.",
        "a.pool.example",
        "127.0.0.1",
    ] {
        assert!(r.check(now, Some(name)).is_ok(), "{name}");
    }
    for name in [
        "other.system.svc",
        "a.b.pool.example",
        "pool.example",
        "127.0.0.2",
        "::1",
    ] {
        let e = r.check(now, Some(name)).unwrap_err();
        assert!(matches!(e, CertError::NameMismatch { .. }), "{name}: {e}");
        assert!(
            e.to_string().contains("does not cover --tls-server-name"),
            "{e}"
        );
    }
    let e = r.check(l.not_after, None).unwrap_err();
    assert!(matches!(e, CertError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    let e = r.check(l.not_before - 1, None).unwrap_err();
    assert!(matches!(e, CertError::NotYetValid { .. }), "{e}");

    // A key that is not the certificate's (the loader refuses such a pair; built by hand).
    let other = pair();
    let other = load_pem(
        other.cert_pem.as_bytes(),
        other.key_pem.as_bytes(),
        "c",
        "k",
    )
    .unwrap();
    let mismatched = Loaded {
        key: Arc::new(CertifiedKey::new(l.key.cert.clone(), other.key.key.clone())),
        ..l.clone()
    };
    r.set(&mismatched);
    let e = r.check(now, None).unwrap_err();
    assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
    r.set(&l);
    assert!(r.check(now, None).is_ok());
}
