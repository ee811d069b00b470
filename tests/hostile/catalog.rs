//! The cases of `hostile_input_catalog`, one function per kind of input, run in the order of
//! [`CATALOG`] against one server. Each records what it saw in `statuses` (printed at the end).

use std::time::Duration;

use jobset_restart_webhook::engine::applied::{
    MAX_APPLIED_BYTES, MAX_CHANGED_CONTAINERS, MAX_CONTAINERS,
};
use jobset_restart_webhook::engine::too_many_containers;
use serde_json::{Value, json};
use testkit::admission_reviews::*;
use testkit::hardening::*;
use testkit::webhook_process::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::{
    Case, ON_EXIT, answer, body_of, jobset_with_containers, send, short, tls, too_many,
    wide_containers,
};

/// What each case saw: (case, status or outcome).
pub type Statuses = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug)]
pub enum Section {
    DeepNesting,
    DuplicateKeys,
    HugeAnnotationValues,
    ValidMegabyteCodeList,
    ExitCodeEdges,
    NonUtf8,
    Framing,
    Smuggling,
    WideReview,
    ContainersAtTheCap,
    LargestReview,
    Transport,
}

/// Every case, in the order they run (the transport cases last: they count handshake errors).
pub const CATALOG: [Section; 12] = [
    Section::DeepNesting,
    Section::DuplicateKeys,
    Section::HugeAnnotationValues,
    Section::ValidMegabyteCodeList,
    Section::ExitCodeEdges,
    Section::NonUtf8,
    Section::Framing,
    Section::Smuggling,
    Section::WideReview,
    Section::ContainersAtTheCap,
    Section::LargestReview,
    Section::Transport,
];

impl Section {
    pub async fn run(self, w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
        match self {
            Section::DeepNesting => deep_nesting(w, certs, statuses).await,
            Section::DuplicateKeys => duplicate_keys(w, certs, statuses).await,
            Section::HugeAnnotationValues => huge_annotation_values(w, certs, statuses).await,
            Section::ValidMegabyteCodeList => valid_megabyte_code_list(w, certs, statuses).await,
            Section::ExitCodeEdges => exit_code_edges(w, certs, statuses).await,
            Section::NonUtf8 => non_utf8(w, certs, statuses).await,
            Section::Framing => framing(w, certs, statuses).await,
            Section::Smuggling => smuggling(w, certs, statuses).await,
            Section::WideReview => wide_review(w, certs, statuses).await,
            Section::ContainersAtTheCap => containers_at_the_cap(w, certs, statuses).await,
            Section::LargestReview => largest_review(w, certs, statuses).await,
            Section::Transport => transport(w, certs, statuses).await,
        }
    }
}

/// 100k `[`: at the top level, and as the object (kept raw, skipped without
/// recursion), and inside a container field the engine reads (serde_json's depth
/// limit).
async fn deep_nesting(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let deep = "[".repeat(100_000);
    let cases = [
        Case {
            name: "100k [ as the body",
            bytes: post_bytes(deep.as_bytes()),
        },
        Case {
            name: "100k [ as request.object",
            bytes: post_bytes(
                format!(
                    r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"deep","kind":{{"group":"jobset.x-k8s.io","version":"v1alpha2","kind":"JobSet"}},"operation":"CREATE","object":{deep}}}}}"#
                )
                .as_bytes(),
            ),
        },
        Case {
            name: "100k {\"a\": as the body",
            bytes: post_bytes(r#"{"a":"#.repeat(100_000).as_bytes()),
        },
    ];
    for c in cases {
        let r = send(w, certs, &c.bytes).await;
        assert_eq!(r.status(), Some(400), "{}: {}", c.name, short(&r));
        statuses.push((c.name, short(&r)));
    }
    // Balanced 100k-deep value inside restartPolicyRules of an opted-in JobSet: the
    // engine cannot read the spec and says so (denial 400), without overflowing its stack.
    let deep_rules = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut r = jobset_with_containers("deep-rules", vec![json!({"name": "a"})]);
    let placeholder = "\"@@DEEP@@\"";
    r["request"]["object"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
        [0]["restartPolicyRules"] = json!("@@DEEP@@");
    let text = serde_json::to_string(&r)
        .unwrap()
        .replace(placeholder, &deep_rules);
    let reply = send(w, certs, &post_bytes(text.as_bytes())).await;
    let a = answer(&reply, "deep restartPolicyRules");
    assert_eq!(a["response"]["allowed"], false, "{a}");
    assert_eq!(a["response"]["status"]["code"], 400, "{a}");
    assert!(
        a["response"]["status"]["message"].as_str().unwrap().len() < 1024,
        "{a}"
    );
    statuses.push(("100k-deep restartPolicyRules", "200, denied 400".into()));
}

/// Duplicate keys: in the envelope they are refused; in an annotation map the last
/// one wins, as in the API server's own decoding.
async fn duplicate_keys(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let dup_envelope = br#"{"apiVersion":"admission.k8s.io/v1","apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"d","kind":{"group":"","kind":"Pod"},"operation":"CREATE"}}"#;
    let r = send(w, certs, &post_bytes(dup_envelope)).await;
    assert_eq!(r.status(), Some(400), "duplicate apiVersion: {}", short(&r));
    assert!(short(&r).contains("duplicate field"), "{}", short(&r));
    statuses.push(("duplicate envelope key", short(&r)));
    let js = jobset(&[(IN_PLACE, "disabled")]);
    let text = serde_json::to_string(&review("dup-ann", "CREATE", &js))
        .unwrap()
        .replace(
            r#""restart.jobset.dev/in-place":"disabled""#,
            r#""restart.jobset.dev/in-place":"disabled","restart.jobset.dev/in-place":"enabled""#,
        );
    assert!(text.contains(r#""enabled""#));
    let a = answer(
        &send(w, certs, &post_bytes(text.as_bytes())).await,
        "dup annotation",
    );
    assert_eq!(a["response"]["allowed"], true);
    assert_eq!(
        a["response"]["patchType"], "JSONPatch",
        "last value (enabled) wins: {a}"
    );
    statuses.push((
        "duplicate annotation key",
        "200, patched (last wins)".into(),
    ));
    // A duplicate field in a container: the view cannot be built, the JobSet opts in,
    // so it is refused with a plain reason.
    let text = serde_json::to_string(&review(
        "dup-ctr",
        "CREATE",
        &jobset(&[(IN_PLACE, "enabled")]),
    ))
    .unwrap()
    .replace(r#""name":"trainer""#, r#""name":"trainer","name":"other""#);
    let a = answer(
        &send(w, certs, &post_bytes(text.as_bytes())).await,
        "dup container",
    );
    assert_eq!(a["response"]["allowed"], false, "{a}");
    assert_eq!(a["response"]["status"]["code"], 400, "{a}");
    statuses.push(("duplicate container field", "200, denied 400".into()));
}

/// Annotation values of 1 MiB: denied with a short message (values are quoted to 80
/// characters), or accepted when valid.
async fn huge_annotation_values(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mib = 1 << 20;
    for (key, value) in [
        (IN_PLACE, "x".repeat(mib)),
        (ON_EXIT, "9".repeat(mib)),
        (ON_EXIT, format!("{}x", "1,".repeat(mib / 2))),
        ("restart.jobset.dev/containers", "a".repeat(mib)),
        ("restart.jobset.dev/no-such-key", "v".repeat(mib)),
    ] {
        let rv = review(
            "big-ann",
            "CREATE",
            &jobset(&[(IN_PLACE, "enabled"), (key, &value)]),
        );
        let reply = send(w, certs, &post_bytes(&body_of(&rv))).await;
        let Reply::Http(200, body) = &reply else {
            panic!("1 MiB {key}: {}", short(&reply))
        };
        assert!(
            body.len() < 2048,
            "1 MiB {key}: answer of {} bytes",
            body.len()
        );
        let a: Value = serde_json::from_str(body).unwrap();
        assert_eq!(a["response"]["allowed"], false, "{a}");
        assert_eq!(a["response"]["status"]["code"], 422, "{a}");
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.starts_with(key) && msg.contains("bytes)"), "{msg}");
    }
    statuses.push((
        "1 MiB invalid annotation values (5 kinds)",
        "200, denied 422, answer < 2 KiB".into(),
    ));
    // 1 MiB where the message would quote it: an unknown key of ours (named in full),
    // a string where a list belongs (the parser quotes it), in the object and in the
    // envelope. Regression: these answers were 1 MiB before messages were capped.
    let big = "k".repeat(mib);
    let unknown_key = format!("restart.jobset.dev/{big}");
    let mut wrong_type = jobset(&[(IN_PLACE, "enabled")]);
    wrong_type["spec"]["replicatedJobs"] = json!(big);
    let mut bad_kind = review("bk", "CREATE", &jobset(&[]));
    bad_kind["request"]["kind"] = json!(big);
    let mut bad_version = review("bv", "CREATE", &jobset(&[]));
    bad_version["apiVersion"] = json!(big);
    for (name, rv, want) in [
        (
            "1 MiB unknown annotation key",
            review(
                "uk",
                "CREATE",
                &jobset(&[(IN_PLACE, "enabled"), (&unknown_key, "v")]),
            ),
            200,
        ),
        (
            "1 MiB string as replicatedJobs",
            review("wt", "CREATE", &wrong_type),
            200,
        ),
        ("1 MiB string as request.kind", bad_kind, 400),
        ("1 MiB apiVersion", bad_version, 400),
    ] {
        let reply = send(w, certs, &post_bytes(&body_of(&rv))).await;
        let Reply::Http(status, body) = &reply else {
            panic!("{name}: closed")
        };
        assert_eq!(*status, want, "{name}: {}", short(&reply));
        assert!(body.len() < 2048, "{name}: answer of {} bytes", body.len());
        assert!(body.contains("message cut"), "{name}: {body}");
        if want == 200 {
            let a: Value = serde_json::from_str(body).unwrap();
            assert_eq!(a["response"]["allowed"], false, "{name}: {a}");
        }
        statuses.push((name, format!("{status}, {} byte answer", body.len())));
    }
}

/// Valid but 1 MiB: "1,1,1,...,1" expands to one code.
async fn valid_megabyte_code_list(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mib = 1 << 20;
    let ones = vec!["1"; mib / 2].join(",");
    let js = jobset(&[(IN_PLACE, "enabled"), (ON_EXIT, &ones)]);
    let a = answer(
        &send(
            w,
            certs,
            &post_bytes(&body_of(&review("ones", "CREATE", &js))),
        )
        .await,
        "1 MiB valid codes",
    );
    let out = apply_patch(response(&a, "ones"), &js);
    assert_eq!(
        out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["restartPolicyRules"]
            [0]["exitCodes"]["values"],
        json!([1])
    );
    statuses.push(("1 MiB valid exit-code list", "200, patched".into()));
}

/// Exit-code ranges beyond u8 and other numeric edge cases.
async fn exit_code_edges(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    for (spec, want) in [
        ("0-4294967295", "out of range"),
        ("4294967296", "out of range"),
        ("18446744073709551616-1", "out of range"),
        ("0-255", "at most 255"),
        ("-1", "not an exit code"),
        ("1e3", "not an exit code"),
        ("0x10", "not an exit code"),
        ("255-0", "a <= b"),
        ("\u{0661}", "not an exit code"), // an Arabic-Indic digit one
    ] {
        let js = jobset(&[(IN_PLACE, "enabled"), (ON_EXIT, spec)]);
        let a = answer(
            &send(
                w,
                certs,
                &post_bytes(&body_of(&review("codes", "CREATE", &js))),
            )
            .await,
            spec,
        );
        assert_eq!(a["response"]["status"]["code"], 422, "{spec}: {a}");
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{spec}: {msg}");
    }
    let js = jobset(&[(IN_PLACE, "enabled"), (ON_EXIT, "0000000000000000000042")]);
    let a = answer(
        &send(
            w,
            certs,
            &post_bytes(&body_of(&review("zeros", "CREATE", &js))),
        )
        .await,
        "leading zeros",
    );
    assert_eq!(a["response"]["patchType"], "JSONPatch", "{a}");
    statuses.push((
        "exit codes 0-4294967295 and 8 more",
        "200, denied 422".into(),
    ));
}

/// Non-UTF-8: the whole body, inside a JSON string, in a header, in the path.
async fn non_utf8(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mut inside = body_of(&review("utf", "CREATE", &jobset(&[(IN_PLACE, "enabled")])));
    let at = inside.windows(7).position(|w| w == b"trainer").unwrap();
    inside[at] = 0xff;
    for (name, bytes) in [
        ("0xff 0xfe body", post_bytes(&[0xff, 0xfe, 0x00, 0x80])),
        ("0xff inside a JSON string", post_bytes(&inside)),
    ] {
        let r = send(w, certs, &bytes).await;
        assert_eq!(r.status(), Some(400), "{name}: {}", short(&r));
        assert!(short(&r).contains("UTF-8"), "{name}: {}", short(&r));
        statuses.push((name, short(&r)));
    }
    let mut head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\xff\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    let r = send(w, certs, &head).await;
    assert!(
        matches!(r.status(), Some(400 | 415) | None),
        "0xff in a header: {}",
        short(&r)
    );
    statuses.push(("0xff in a header value", short(&r)));
    head = b"POST /mut\xffate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".to_vec();
    let r = send(w, certs, &head).await;
    assert!(
        matches!(r.status(), Some(400) | None),
        "0xff in the path: {}",
        short(&r)
    );
    statuses.push(("0xff in the path", short(&r)));
}

/// Framing tricks: overflowing and conflicting lengths, both CL and TE.
async fn framing(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mib = 1 << 20;
    for (name, bytes, ok) in [
        (
            "Content-Length overflow",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999999999999999\r\n\r\n{}".to_vec(),
            &[400, 413][..],
        ),
        (
            "two Content-Lengths",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            &[400][..],
        ),
        (
            "Content-Length and chunked",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            &[400][..],
        ),
        (
            "a header line of 1 MiB",
            [
                &b"POST /mutate HTTP/1.1\r\nX-Big: "[..],
                &vec![b'a'; mib],
                b"\r\n\r\n",
            ]
            .concat(),
            &[431][..],
        ),
        (
            "10k headers",
            [
                &b"POST /mutate HTTP/1.1\r\n"[..],
                &b"X-A: b\r\n".repeat(10_000),
                b"\r\n",
            ]
            .concat(),
            &[431, 400][..],
        ),
    ] {
        let r = send(w, certs, &bytes).await;
        assert!(
            r.status().is_none_or(|s| ok.contains(&s)),
            "{name}: {}",
            short(&r)
        );
        statuses.push((name, short(&r)));
    }
}

/// Content-Length and chunked together, followed by a pipelined request: the first is
/// answered, then the connection closes (RFC 9112 6.1), so nothing can be smuggled.
async fn smuggling(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mut s = tls(w, certs).await;
    let normal = post_bytes(&body_of(&review("pipelined", "CREATE", &jobset(&[]))));
    let smuggle = [
        &b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        &normal,
    ]
    .concat();
    let r = exchange(&mut s, &smuggle).await;
    assert_eq!(r.status(), Some(400), "{}", short(&r));
    let r = read_reply(&mut s, Duration::from_secs(10)).await;
    assert_eq!(
        r,
        Reply::Closed,
        "the request after CL+TE must not be served"
    );
    statuses.push((
        "CL + TE, then a pipelined request",
        "400, then closed".into(),
    ));
}

/// As many containers as a review reads ([`MAX_CONTAINERS`]), more than it may change:
/// refused with a short answer (20k were a 10 MB patch and an 887 KiB `applied` annotation,
/// over the API server's 256 KiB for all annotations); 20k are refused by the bound on the
/// containers read, before any is read.
async fn wide_review(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    for (n, want) in [
        (MAX_CONTAINERS, too_many(MAX_CONTAINERS)),
        (20_000, too_many_containers(20_000)),
    ] {
        let rv = jobset_with_containers("wide", wide_containers("c", n));
        let bytes = body_of(&rv);
        let reply = send(w, certs, &post_bytes(&bytes)).await;
        let a = answer(&reply, "wide");
        assert_eq!(response(&a, "wide")["status"]["code"], 422, "{a}");
        assert_eq!(response(&a, "wide")["status"]["message"], want, "{a}");
        let answer_len = if let Reply::Http(_, b) = &reply {
            b.len()
        } else {
            0
        };
        assert!(answer_len < 2048, "{answer_len}");
        statuses.push((
            if n == 20_000 {
                "20k containers"
            } else {
                "4,096 containers"
            },
            format!(
                "200, denied 422, request {} KiB, answer {answer_len} bytes",
                bytes.len() / 1024
            ),
        ));
    }
}

/// As many as one review may change, with long names: patched, and the `applied`
/// summary is cut to its bound.
async fn containers_at_the_cap(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let long = format!("{}-", "n".repeat(56));
    let rv = jobset_with_containers("cap", wide_containers(&long, MAX_CHANGED_CONTAINERS));
    let reply = send(w, certs, &post_bytes(&body_of(&rv))).await;
    let a = answer(&reply, "containers at the cap");
    let out = apply_patch(response(&a, "cap"), &rv["request"]["object"]);
    let ctrs =
        out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
    assert_eq!(ctrs.len(), MAX_CHANGED_CONTAINERS);
    assert!(ctrs.iter().all(|c| c["restartPolicy"] == "Never"));
    let applied = out["metadata"]["annotations"][APPLIED]
        .as_str()
        .unwrap_or_default();
    assert!(applied.len() <= MAX_APPLIED_BYTES, "{}", applied.len());
    assert!(applied.ends_with(" more"), "{applied:.200}");
    let answer_len = if let Reply::Http(_, b) = &reply {
        b.len()
    } else {
        0
    };
    statuses.push((
        "1024 containers with 58-character names",
        format!(
            "200, patched, answer {} KiB, `applied` annotation {} bytes",
            answer_len / 1024,
            applied.len()
        ),
    ));
}

/// A valid review of 6.9 MiB (under the 7 MiB limit): served.
async fn largest_review(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mut js = jobset(&[(IN_PLACE, "enabled")]);
    let filler = "f".repeat(6_900_000 - 1_500);
    js["metadata"]["annotations"]["example.com/filler"] = json!(filler);
    let rv = review("big", "CREATE", &js);
    let bytes = body_of(&rv);
    assert!(
        (6_800_000..7 << 20).contains(&bytes.len()),
        "{}",
        bytes.len()
    );
    let a = answer(&send(w, certs, &post_bytes(&bytes)).await, "6.9 MiB review");
    apply_patch(response(&a, "big"), &js);
    statuses.push(("6.9 MiB valid review", "200, patched".into()));
    // And one byte over the limit, declared: 413 before the body is read.
    let r = send(w, certs, post_head((7 << 20) + 1).as_bytes()).await;
    assert_eq!(r.status(), Some(413), "{}", short(&r));
    statuses.push(("Content-Length 7 MiB + 1", short(&r)));
}

/// Random bytes and a broken ClientHello on the TLS port: closed, counted.
async fn transport(w: &Webhook, certs: &Certs, statuses: &mut Statuses) {
    let mut rng = Rng::new(0x5eed);
    let hello_garbage: Vec<u8> = [
        &[
            0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03,
        ][..],
        &rng.bytes(0x40 - 6),
    ]
    .concat();
    let huge_record = vec![0x16, 0x03, 0x03, 0xff, 0xff, 0x01];
    let transport: Vec<(&str, Vec<u8>)> = vec![
        ("64 KiB of random bytes", rng.bytes(64 * 1024)),
        ("ClientHello with a garbage body", hello_garbage),
        (
            "TLS record header claiming 64 KiB, then silence",
            huge_record,
        ),
        ("plain HTTP/1.1 on the TLS port", post_bytes(b"{}")),
        (
            "HTTP/2 preface on the TLS port",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
    ];
    let errors_before = w
        .metric("jobset_restart_webhook_tls_handshake_errors_total")
        .await;
    for (name, bytes) in &transport {
        let mut s = TcpStream::connect(w.tls).await.unwrap();
        let _ = s.write_all(bytes).await;
        let r = read_reply(&mut s, Duration::from_secs(10)).await;
        assert_eq!(r, Reply::Closed, "{name}");
        statuses.push((name, "closed".into()));
    }
    let errors_after = w
        .metric("jobset_restart_webhook_tls_handshake_errors_total")
        .await;
    assert!(
        errors_after >= errors_before + 4.0,
        "{errors_before} -> {errors_after}"
    );

    // HTTP/2 prior knowledge over TLS negotiated as HTTP/1.1, and over no ALPN at all.
    for alpn in [&[&b"http/1.1"[..]][..], &[][..]] {
        let mut s = raw_tls(w.tls, &certs.ca, alpn).await;
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let r = exchange(&mut s, preface).await;
        assert!(
            matches!(r.status(), Some(400 | 505) | None),
            "h2 preface: {}",
            short(&r)
        );
        statuses.push(("HTTP/2 prior knowledge on HTTP/1.1 (TLS)", short(&r)));
    }
    // The same on the plain admin port, and random bytes there.
    for (name, bytes) in [
        (
            "HTTP/2 preface on the admin port",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("random bytes on the admin port", rng.bytes(4096)),
    ] {
        let mut s = TcpStream::connect(w.admin).await.unwrap();
        let r = exchange(&mut s, &bytes).await;
        assert!(
            matches!(r.status(), Some(400 | 505) | None),
            "{name}: {}",
            short(&r)
        );
        statuses.push((name, short(&r)));
    }
}
