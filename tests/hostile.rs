//! Hostile input catalog: the real binary over real TLS on 127.0.0.1, fed what a broken or
//! malicious client could send. Each case gets the right status or a closed connection,
//! never a crash; afterwards the server still answers a normal review and its memory stayed
//! bounded (the figures are printed: `cargo test --test hostile -- --nocapture`).

#[path = "support/admission_reviews.rs"]
mod admission_reviews;
#[path = "support/hardening.rs"]
mod hardening;
#[path = "support/webhook_process.rs"]
mod webhook_process;

use std::time::Duration;

use admission_reviews::*;
use hardening::*;
use jobset_restart_webhook::engine::applied::{MAX_APPLIED_BYTES, MAX_CHANGED_CONTAINERS};
use jobset_restart_webhook::server::{MAX_BODY, MAX_HEAD};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use webhook_process::*;

const ON_EXIT: &str = "restart.jobset.dev/on-exit-codes";
/// Generous: the server idles at a few MiB; a 7 MiB body and the biggest answers of the
/// catalog must not take it anywhere near this.
const MAX_HWM_MIB: u64 = 400;

/// `n` containers named `{prefix}{i}` with a one-character image: 30 bytes of JSON each.
fn wide_containers(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "name": format!("{prefix}{i}"), "image": "x" }))
        .collect()
}

/// The denial of a JobSet that would change `n` containers.
fn too_many(n: usize) -> String {
    format!(
        "in-place restart would change {n} containers of this JobSet, more than the \
         {MAX_CHANGED_CONTAINERS} the webhook changes in one JobSet; select the containers that \
         need it with restart.jobset.dev/containers (container names) or the replicated jobs \
         with restart.jobset.dev/replicated-jobs (replicated job names)"
    )
}

fn body_of(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).unwrap()
}

/// A review of a JobSet whose single pod template has `containers`.
fn jobset_with_containers(uid: &str, containers: Vec<Value>) -> Value {
    let mut js = jobset(&[(IN_PLACE, "enabled")]);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"] =
        Value::Array(containers);
    review(uid, "CREATE", &js)
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
}

/// The admission answer of a 200, parsed.
fn answer(reply: &Reply, case: &str) -> Value {
    match reply {
        Reply::Http(200, body) => serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{case}: 200 without a JSON answer ({e}): {body:.200}")),
        other => panic!("{case}: expected 200, got {}", short(other)),
    }
}

fn short(r: &Reply) -> String {
    match r {
        Reply::Http(s, b) => format!("{s} {:.300}", b),
        Reply::Closed => "closed".to_owned(),
    }
}

async fn tls(w: &Webhook, certs: &Certs) -> tokio_rustls::client::TlsStream<TcpStream> {
    raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await
}

/// An opted-in review on a new connection gets a patch that applies (review uid `uid`).
async fn still_serves(w: &Webhook, certs: &Certs, uid: &str) {
    let js = jobset(&[(IN_PLACE, "enabled")]);
    let body = body_of(&review(uid, "CREATE", &js));
    let a = answer(&send(w, certs, &post_bytes(&body)).await, uid);
    apply_patch(response(&a, uid), &js);
}

async fn send(w: &Webhook, certs: &Certs, bytes: &[u8]) -> Reply {
    let mut s = tls(w, certs).await;
    exchange(&mut s, bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_catalog() {
    bounded(240, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let mut w = Webhook::start(&[
            &certs.args().each_ref().map(String::as_str)[..],
            &["--targets", "jobsets,pods", "--tls-handshake-timeout", "2s"],
        ]
        .concat());
        let pid = w.pid();
        let idle = mem(pid);
        println!("idle: {idle}");
        let mut statuses: Vec<(&str, String)> = Vec::new();

        // --- Bodies that are not what they claim -------------------------------------------

        // 100k `[`: at the top level, and as the object (kept raw, skipped without
        // recursion), and inside a container field the engine reads (serde_json's depth
        // limit).
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
            let r = send(&w, &certs, &c.bytes).await;
            assert_eq!(r.status(), Some(400), "{}: {}", c.name, short(&r));
            statuses.push((c.name, short(&r)));
        }
        // Balanced 100k-deep value inside restartPolicyRules of an opted-in JobSet: the
        // engine cannot read the spec and says so (denial 400), without overflowing its stack.
        let deep_rules = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let mut r = jobset_with_containers("deep-rules", vec![json!({"name": "a"})]);
        let placeholder = "\"@@DEEP@@\"";
        r["request"]["object"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
            ["spec"]["containers"][0]["restartPolicyRules"] = json!("@@DEEP@@");
        let text = serde_json::to_string(&r).unwrap().replace(placeholder, &deep_rules);
        let reply = send(&w, &certs, &post_bytes(text.as_bytes())).await;
        let a = answer(&reply, "deep restartPolicyRules");
        assert_eq!(a["response"]["allowed"], false, "{a}");
        assert_eq!(a["response"]["status"]["code"], 400, "{a}");
        assert!(
            a["response"]["status"]["message"].as_str().unwrap().len() < 1024,
            "{a}"
        );
        statuses.push(("100k-deep restartPolicyRules", "200, denied 400".into()));

        // Duplicate keys: in the envelope they are refused; in an annotation map the last
        // one wins, as in the API server's own decoding.
        let dup_envelope = br#"{"apiVersion":"admission.k8s.io/v1","apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"d","kind":{"group":"","kind":"Pod"},"operation":"CREATE"}}"#;
        let r = send(&w, &certs, &post_bytes(dup_envelope)).await;
        assert_eq!(r.status(), Some(400), "duplicate apiVersion: {}", short(&r));
        assert!(short(&r).contains("duplicate field"), "{}", short(&r));
        statuses.push(("duplicate envelope key", short(&r)));
        let js = jobset(&[(IN_PLACE, "disabled")]);
        let text = serde_json::to_string(&review("dup-ann", "CREATE", &js)).unwrap().replace(
            r#""restart.jobset.dev/in-place":"disabled""#,
            r#""restart.jobset.dev/in-place":"disabled","restart.jobset.dev/in-place":"enabled""#,
        );
        assert!(text.contains(r#""enabled""#));
        let a = answer(&send(&w, &certs, &post_bytes(text.as_bytes())).await, "dup annotation");
        assert_eq!(a["response"]["allowed"], true);
        assert_eq!(a["response"]["patchType"], "JSONPatch", "last value (enabled) wins: {a}");
        statuses.push(("duplicate annotation key", "200, patched (last wins)".into()));
        // A duplicate field in a container: the view cannot be built, the JobSet opts in,
        // so it is refused with a plain reason.
        let text = serde_json::to_string(&review("dup-ctr", "CREATE", &jobset(&[(IN_PLACE, "enabled")])))
            .unwrap()
            .replace(r#""name":"trainer""#, r#""name":"trainer","name":"other""#);
        let a = answer(&send(&w, &certs, &post_bytes(text.as_bytes())).await, "dup container");
        assert_eq!(a["response"]["allowed"], false, "{a}");
        assert_eq!(a["response"]["status"]["code"], 400, "{a}");
        statuses.push(("duplicate container field", "200, denied 400".into()));

        // Annotation values of 1 MiB: denied with a short message (values are quoted to 80
        // characters), or accepted when valid.
        let mib = 1 << 20;
        for (key, value) in [
            (IN_PLACE, "x".repeat(mib)),
            (ON_EXIT, "9".repeat(mib)),
            (ON_EXIT, format!("{}x", "1,".repeat(mib / 2))),
            ("restart.jobset.dev/containers", "a".repeat(mib)),
            ("restart.jobset.dev/no-such-key", "v".repeat(mib)),
        ] {
            let rv = review("big-ann", "CREATE", &jobset(&[(IN_PLACE, "enabled"), (key, &value)]));
            let reply = send(&w, &certs, &post_bytes(&body_of(&rv))).await;
            let Reply::Http(200, body) = &reply else {
                panic!("1 MiB {key}: {}", short(&reply))
            };
            assert!(body.len() < 2048, "1 MiB {key}: answer of {} bytes", body.len());
            let a: Value = serde_json::from_str(body).unwrap();
            assert_eq!(a["response"]["allowed"], false, "{a}");
            assert_eq!(a["response"]["status"]["code"], 422, "{a}");
            let msg = a["response"]["status"]["message"].as_str().unwrap();
            assert!(msg.starts_with(key) && msg.contains("bytes)"), "{msg}");
        }
        statuses.push(("1 MiB invalid annotation values (5 kinds)", "200, denied 422, answer < 2 KiB".into()));
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
                review("uk", "CREATE", &jobset(&[(IN_PLACE, "enabled"), (&unknown_key, "v")])),
                200,
            ),
            ("1 MiB string as replicatedJobs", review("wt", "CREATE", &wrong_type), 200),
            ("1 MiB string as request.kind", bad_kind, 400),
            ("1 MiB apiVersion", bad_version, 400),
        ] {
            let reply = send(&w, &certs, &post_bytes(&body_of(&rv))).await;
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

        // Valid but 1 MiB: "1,1,1,...,1" expands to one code.
        let ones = vec!["1"; mib / 2].join(",");
        let js = jobset(&[(IN_PLACE, "enabled"), (ON_EXIT, &ones)]);
        let a = answer(
            &send(&w, &certs, &post_bytes(&body_of(&review("ones", "CREATE", &js)))).await,
            "1 MiB valid codes",
        );
        let out = apply_patch(response(&a, "ones"), &js);
        assert_eq!(
            out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
                ["restartPolicyRules"][0]["exitCodes"]["values"],
            json!([1])
        );
        statuses.push(("1 MiB valid exit-code list", "200, patched".into()));

        // Exit-code ranges beyond u8 and other numeric edge cases.
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
                &send(&w, &certs, &post_bytes(&body_of(&review("codes", "CREATE", &js)))).await,
                spec,
            );
            assert_eq!(a["response"]["status"]["code"], 422, "{spec}: {a}");
            let msg = a["response"]["status"]["message"].as_str().unwrap();
            assert!(msg.contains(want), "{spec}: {msg}");
        }
        let js = jobset(&[(IN_PLACE, "enabled"), (ON_EXIT, "0000000000000000000042")]);
        let a = answer(
            &send(&w, &certs, &post_bytes(&body_of(&review("zeros", "CREATE", &js)))).await,
            "leading zeros",
        );
        assert_eq!(a["response"]["patchType"], "JSONPatch", "{a}");
        statuses.push(("exit codes 0-4294967295 and 8 more", "200, denied 422".into()));

        // Non-UTF-8: the whole body, inside a JSON string, in a header, in the path.
        let mut inside = body_of(&review("utf", "CREATE", &jobset(&[(IN_PLACE, "enabled")])));
        let at = inside.windows(7).position(|w| w == b"trainer").unwrap();
        inside[at] = 0xff;
        for (name, bytes) in [
            ("0xff 0xfe body", post_bytes(&[0xff, 0xfe, 0x00, 0x80])),
            ("0xff inside a JSON string", post_bytes(&inside)),
        ] {
            let r = send(&w, &certs, &bytes).await;
            assert_eq!(r.status(), Some(400), "{name}: {}", short(&r));
            assert!(short(&r).contains("UTF-8"), "{name}: {}", short(&r));
            statuses.push((name, short(&r)));
        }
        let mut head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\xff\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        let r = send(&w, &certs, &head).await;
        assert!(matches!(r.status(), Some(400 | 415) | None), "0xff in a header: {}", short(&r));
        statuses.push(("0xff in a header value", short(&r)));
        head = b"POST /mut\xffate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".to_vec();
        let r = send(&w, &certs, &head).await;
        assert!(matches!(r.status(), Some(400) | None), "0xff in the path: {}", short(&r));
        statuses.push(("0xff in the path", short(&r)));

        // Framing tricks: overflowing and conflicting lengths, both CL and TE.
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
            let r = send(&w, &certs, &bytes).await;
            assert!(
                r.status().is_none_or(|s| ok.contains(&s)),
                "{name}: {}",
                short(&r)
            );
            statuses.push((name, short(&r)));
        }

        // Content-Length and chunked together, followed by a pipelined request: the first is
        // answered, then the connection closes (RFC 9112 6.1), so nothing can be smuggled.
        let mut s = tls(&w, &certs).await;
        let normal = post_bytes(&body_of(&review("pipelined", "CREATE", &jobset(&[]))));
        let smuggle = [
            &b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            &normal,
        ]
        .concat();
        let r = exchange(&mut s, &smuggle).await;
        assert_eq!(r.status(), Some(400), "{}", short(&r));
        let r = read_reply(&mut s, Duration::from_secs(10)).await;
        assert_eq!(r, Reply::Closed, "the request after CL+TE must not be served");
        statuses.push(("CL + TE, then a pipelined request", "400, then closed".into()));

        // --- Sizes ------------------------------------------------------------------------

        // 20k containers: more than one review may change, refused with a short answer
        // (it was a 10 MB patch and an 887 KiB `applied` annotation, over the API server's
        // 256 KiB for all annotations).
        let rv = jobset_with_containers("wide", wide_containers("c", 20_000));
        let bytes = body_of(&rv);
        let reply = send(&w, &certs, &post_bytes(&bytes)).await;
        let a = answer(&reply, "20k containers");
        assert_eq!(response(&a, "wide")["status"]["code"], 422, "{a}");
        assert_eq!(response(&a, "wide")["status"]["message"], too_many(20_000), "{a}");
        let answer_len = if let Reply::Http(_, b) = &reply { b.len() } else { 0 };
        assert!(answer_len < 2048, "{answer_len}");
        statuses.push((
            "20k containers",
            format!(
                "200, denied 422, request {} KiB, answer {answer_len} bytes",
                bytes.len() / 1024
            ),
        ));
        // As many as one review may change, with long names: patched, and the `applied`
        // summary is cut to its bound.
        let long = format!("{}-", "n".repeat(56));
        let rv = jobset_with_containers("cap", wide_containers(&long, MAX_CHANGED_CONTAINERS));
        let reply = send(&w, &certs, &post_bytes(&body_of(&rv))).await;
        let a = answer(&reply, "containers at the cap");
        let out = apply_patch(response(&a, "cap"), &rv["request"]["object"]);
        let ctrs = out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
            ["containers"]
            .as_array()
            .unwrap();
        assert_eq!(ctrs.len(), MAX_CHANGED_CONTAINERS);
        assert!(ctrs.iter().all(|c| c["restartPolicy"] == "Never"));
        let applied = out["metadata"]["annotations"][APPLIED].as_str().unwrap_or_default();
        assert!(applied.len() <= MAX_APPLIED_BYTES, "{}", applied.len());
        assert!(applied.ends_with(" more"), "{applied:.200}");
        let answer_len = if let Reply::Http(_, b) = &reply { b.len() } else { 0 };
        statuses.push((
            "1024 containers with 58-character names",
            format!(
                "200, patched, answer {} KiB, `applied` annotation {} bytes",
                answer_len / 1024,
                applied.len()
            ),
        ));

        // A valid review of 6.9 MiB (under the 7 MiB limit): served.
        let mut js = jobset(&[(IN_PLACE, "enabled")]);
        let filler = "f".repeat(6_900_000 - 1_500);
        js["metadata"]["annotations"]["example.com/filler"] = json!(filler);
        let rv = review("big", "CREATE", &js);
        let bytes = body_of(&rv);
        assert!((6_800_000..7 << 20).contains(&bytes.len()), "{}", bytes.len());
        let a = answer(&send(&w, &certs, &post_bytes(&bytes)).await, "6.9 MiB review");
        apply_patch(response(&a, "big"), &js);
        statuses.push(("6.9 MiB valid review", "200, patched".into()));
        // And one byte over the limit, declared: 413 before the body is read.
        let r = send(&w, &certs, post_head((7 << 20) + 1).as_bytes()).await;
        assert_eq!(r.status(), Some(413), "{}", short(&r));
        statuses.push(("Content-Length 7 MiB + 1", short(&r)));

        // --- Transport --------------------------------------------------------------------

        // Random bytes and a broken ClientHello on the TLS port: closed, counted.
        let mut rng = Rng::new(0x5eed);
        let hello_garbage: Vec<u8> = [
            &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03][..],
            &rng.bytes(0x40 - 6),
        ]
        .concat();
        let huge_record = vec![0x16, 0x03, 0x03, 0xff, 0xff, 0x01];
        let transport: Vec<(&str, Vec<u8>)> = vec![
            ("64 KiB of random bytes", rng.bytes(64 * 1024)),
            ("ClientHello with a garbage body", hello_garbage),
            ("TLS record header claiming 64 KiB, then silence", huge_record),
            ("plain HTTP/1.1 on the TLS port", post_bytes(b"{}")),
            (
                "HTTP/2 preface on the TLS port",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            ),
        ];
        let errors_before = w.metric("jobset_restart_webhook_tls_handshake_errors_total").await;
        for (name, bytes) in &transport {
            let mut s = TcpStream::connect(w.tls).await.unwrap();
            let _ = s.write_all(bytes).await;
            let r = read_reply(&mut s, Duration::from_secs(10)).await;
            assert_eq!(r, Reply::Closed, "{name}");
            statuses.push((name, "closed".into()));
        }
        let errors_after = w.metric("jobset_restart_webhook_tls_handshake_errors_total").await;
        assert!(errors_after >= errors_before + 4.0, "{errors_before} -> {errors_after}");

        // HTTP/2 prior knowledge over TLS negotiated as HTTP/1.1, and over no ALPN at all.
        for alpn in [&[&b"http/1.1"[..]][..], &[][..]] {
            let mut s = raw_tls(w.tls, &certs.ca, alpn).await;
            let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
            let r = exchange(&mut s, preface).await;
            assert!(matches!(r.status(), Some(400 | 505) | None), "h2 preface: {}", short(&r));
            statuses.push(("HTTP/2 prior knowledge on HTTP/1.1 (TLS)", short(&r)));
        }
        // The same on the plain admin port, and random bytes there.
        for (name, bytes) in [
            ("HTTP/2 preface on the admin port", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
            ("random bytes on the admin port", rng.bytes(4096)),
        ] {
            let mut s = TcpStream::connect(w.admin).await.unwrap();
            let r = exchange(&mut s, &bytes).await;
            assert!(matches!(r.status(), Some(400 | 505) | None), "{name}: {}", short(&r));
            statuses.push((name, short(&r)));
        }

        // --- Still serving, memory bounded --------------------------------------------------
        let c = w.client(&[&certs.ca]);
        let js = jobset(&[(IN_PLACE, "enabled")]);
        let r = c
            .post(w.url("/mutate"))
            .header("content-type", "application/json")
            .body(body_of(&review("after", "CREATE", &js)))
            .send()
            .await
            .expect("a normal review after the catalog");
        assert_eq!(r.status(), 200);
        let a: Value = r.json().await.unwrap();
        apply_patch(response(&a, "after"), &js);
        assert!(w.wait_exit(Duration::ZERO).is_none(), "the server exited");
        assert_eq!(w.metric("jobset_restart_webhook_panics_total").await, 0.0);

        let after = mem(pid);
        println!("after the catalog: {after}");
        for (name, outcome) in &statuses {
            println!("  {name:<50} {outcome}");
        }
        assert!(
            after.hwm_kib < MAX_HWM_MIB * 1024,
            "peak memory {after} over {MAX_HWM_MIB} MiB"
        );
    })
    .await;
}

/// The JobSet that made a 48 MB answer and ~100 MiB of peak memory per review: 90k
/// containers in 2.7 MB (under the API server's 3 MiB request limit). Four at once, each on
/// its own connection: every one is refused (422) with a short answer, and the server's peak
/// memory stays far from the Deployment's 128 MiB limit (it was 370 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_jobsets_are_refused_with_a_bounded_answer() {
    /// Growth of the peak over the idle server: measured 8 MiB (release and debug builds);
    /// the four bodies alone may take 16 MiB of buffers when they arrive together.
    const MAX_GROWTH_MIB: u64 = 48;
    bounded(120, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = Webhook::start(&certs.args().each_ref().map(String::as_str));
        let idle = mem(w.pid());
        let rv = jobset_with_containers("wide-90k", wide_containers("c", 90_000));
        let bytes = std::sync::Arc::new(post_bytes(&body_of(&rv)));
        assert!(
            (2_600_000..3 << 20).contains(&bytes.len()),
            "{}",
            bytes.len()
        );
        let mut streams = Vec::new();
        for _ in 0..4 {
            streams.push(tls(&w, &certs).await);
        }
        let sends = streams.into_iter().map(|mut s| {
            let bytes = bytes.clone();
            tokio::spawn(async move { exchange(&mut s, &bytes).await })
        });
        let mut sizes = Vec::new();
        for send in sends {
            let reply = send.await.unwrap();
            let a = answer(&reply, "90k containers");
            let r = response(&a, "wide-90k");
            assert_eq!(r["allowed"], false, "{a}");
            assert_eq!(r["status"]["code"], 422, "{a}");
            assert_eq!(r["status"]["message"], too_many(90_000), "{a}");
            assert!(r.get("patch").is_none(), "{a}");
            let Reply::Http(_, body) = &reply else {
                unreachable!()
            };
            assert!(body.len() < 1024, "answer of {} bytes", body.len());
            sizes.push(body.len());
        }
        let after = mem(w.pid());
        println!(
            "4 x 90k containers ({} KiB each): answers of {sizes:?} bytes; idle {idle}, after \
             {after}",
            bytes.len() / 1024
        );
        assert!(
            after.hwm_kib < idle.hwm_kib + MAX_GROWTH_MIB * 1024,
            "peak memory {after} (idle {idle})"
        );
        still_serves(&w, &certs, "after").await;
    })
    .await;
}

/// A POST /mutate head of exactly `len` bytes (a padding header makes up the length), for
/// a body of `body_len` bytes; `None` for `body_len` leaves the head unterminated, as a
/// client that stalls in its headers.
fn padded_head(len: usize, body_len: Option<usize>) -> Vec<u8> {
    let start = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{}X-Pad: ",
        body_len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"))
    );
    let end = if body_len.is_some() { "\r\n\r\n" } else { "" };
    let pad = len - start.len() - end.len();
    [start.as_bytes(), &vec![b'p'; pad], end.as_bytes()].concat()
}

/// `body` as a chunked request (64 KiB chunks).
fn chunked_post(body: &[u8]) -> Vec<u8> {
    let mut out = b"POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Request heads are bounded by `MAX_HEAD` (hyper's HTTP/1 read buffer): a longer head gets
/// 431 and a closed connection at once (not at the header deadline), is counted, and the
/// server keeps serving. The bound is on the head only: bodies stream through that buffer,
/// so a body of exactly 7 MiB is still served and 7 MiB + 1 still gets 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_the_bound_get_431_and_bodies_are_not_cut() {
    bounded(180, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        // A long header deadline: only the head bound can explain a prompt answer.
        let mut w = Webhook::start(
            &[
                &certs.args().each_ref().map(String::as_str)[..],
                &["--header-read-timeout", "60s"],
            ]
            .concat(),
        );
        let js = jobset(&[(IN_PLACE, "enabled")]);
        let small = body_of(&review("head", "CREATE", &js));

        // A head of exactly MAX_HEAD bytes is served; one byte more is not.
        let mut s = tls(&w, &certs).await;
        let bytes = [&padded_head(MAX_HEAD, Some(small.len()))[..], &small].concat();
        let a = answer(&exchange(&mut s, &bytes).await, "head of MAX_HEAD bytes");
        apply_patch(response(&a, "head"), &js);

        let mut too_large = 0.0;
        for (name, bytes) in [
            (
                "head of MAX_HEAD + 1 bytes",
                padded_head(MAX_HEAD + 1, Some(0)),
            ),
            ("a 1 MiB header line", padded_head(1 << 20, Some(0))),
            // As the 400 KB heads that held 114 MiB over 256 connections: never terminated.
            ("390 KB of head, then silence", padded_head(390_000, None)),
        ] {
            let mut s = tls(&w, &certs).await;
            let start = std::time::Instant::now();
            let r = exchange(&mut s, &bytes).await;
            assert_eq!(r, Reply::Http(431, String::new()), "{name}");
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: {:?}",
                start.elapsed()
            );
            let after = read_reply(&mut s, Duration::from_secs(10)).await;
            assert_eq!(
                after,
                Reply::Closed,
                "{name}: the connection must close after 431"
            );
            too_large += 1.0;
        }
        assert_eq!(
            w.metric(r#"jobset_restart_webhook_bad_requests_total{code="431"}"#)
                .await,
            too_large
        );

        // Bodies: exactly MAX_BODY with Content-Length and chunked, then MAX_BODY + 1 sent in
        // full, chunked (no length to refuse it by up front).
        let mut big = body_of(&review("body", "CREATE", &js));
        big.resize(MAX_BODY, b' ');
        for (name, bytes) in [
            ("7 MiB body, Content-Length", post_bytes(&big)),
            ("7 MiB body, chunked", chunked_post(&big)),
        ] {
            let a = answer(&send(&w, &certs, &bytes).await, name);
            apply_patch(response(&a, "body"), &js);
        }
        big.push(b' ');
        let r = send(&w, &certs, &chunked_post(&big)).await;
        assert_eq!(r.status(), Some(413), "7 MiB + 1, chunked: {}", short(&r));

        // Still serving.
        let a = answer(&send(&w, &certs, &post_bytes(&small)).await, "after");
        apply_patch(response(&a, "head"), &js);
        assert!(w.wait_exit(Duration::ZERO).is_none(), "the server exited");
        assert_eq!(w.metric("jobset_restart_webhook_panics_total").await, 0.0);
    })
    .await;
}

/// 256 connections (the shipped Deployment's --max-connections) each send 390 KB of head
/// and stall, then 256 more each send a head just under `MAX_HEAD` and stall. The first are
/// answered 431 at once; the others are held until the header deadline, and what they hold
/// is bounded by `MAX_HEAD`. Before the bound (hyper's ~400 KiB read buffer), the 390 KB
/// heads alone held 114 MiB (release build, 11 MiB idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_hold_bounded_memory() {
    const CONNECTIONS: usize = 256;
    /// Growth of the peak over the idle server: measured 25-27 MiB (release and debug).
    const MAX_GROWTH_MIB: u64 = 64;
    bounded(180, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = Webhook::start(
            &[
                &certs.args().each_ref().map(String::as_str)[..],
                &["--header-read-timeout", "60s", "--max-connections", "256"],
            ]
            .concat(),
        );
        let idle = mem(w.pid());

        let over = padded_head(390_000, None);
        let mut answered = Vec::new();
        for i in 0..CONNECTIONS {
            let mut s = tls(&w, &certs).await;
            let r = exchange(&mut s, &over).await;
            assert_eq!(r.status(), Some(431), "390 KB head #{i}: {}", short(&r));
            answered.push(s);
        }
        let after_over = mem(w.pid());
        // The server closes them after its linger time (2 s), though the client keeps them.
        eventually(
            Duration::from_secs(10),
            "the 431 connections to close",
            || async {
                let open = w.metric("jobset_restart_webhook_connections_open").await;
                (open == 0.0).then_some(())
            },
        )
        .await;

        let under = padded_head(MAX_HEAD - 512, None);
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS - 1 {
            let mut s = tls(&w, &certs).await;
            s.write_all(&under).await.unwrap();
            s.flush().await.unwrap();
            held.push(s);
        }
        eventually(
            Duration::from_secs(10),
            "the stalled connections",
            || async {
                let open = w.metric("jobset_restart_webhook_connections_open").await;
                (open >= (CONNECTIONS - 1) as f64).then_some(())
            },
        )
        .await;
        // Time for the server to read every head it was sent.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = mem(w.pid());
        println!(
            "{CONNECTIONS} x {} bytes of head: idle {idle}, after {after_over}; then {} x {} \
             bytes, stalled: {after}",
            over.len(),
            CONNECTIONS - 1,
            under.len()
        );
        assert!(
            after.hwm_kib < idle.hwm_kib + MAX_GROWTH_MIB * 1024,
            "peak memory {after} (idle {idle})"
        );
        // On the last connection the cap allows.
        still_serves(&w, &certs, "beside").await;
        drop((answered, held));
    })
    .await;
}
