use super::*;

fn parse_js(pairs: &[(&str, &str)]) -> Result<Annotations, AnnotationError> {
    parse(pairs.iter().copied(), &Scope::JobSet)
}

#[test]
fn spec_example_message_is_exact() {
    let err = parse_js(&[(ON_EXIT_CODES, "42,abc")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"restart.jobset.dev/on-exit-codes: "42,abc": "abc" is not an exit code (0-255) or range a-b"#
    );
}

#[test]
fn exit_codes_sorted_deduplicated_with_ranges_and_whitespace() {
    assert_eq!(
        parse_exit_codes(" 143 , 42,42, 128-130,129 ").unwrap(),
        vec![42, 128, 129, 130, 143]
    );
    assert_eq!(parse_exit_codes("7-7").unwrap(), vec![7]);
    assert_eq!(parse_exit_codes("007").unwrap(), vec![7]);
    assert_eq!(parse_exit_codes("0").unwrap(), vec![0]);
    assert_eq!(parse_exit_codes("1-255").unwrap().len(), 255);
}

#[test]
fn exit_code_errors_name_the_item_and_the_rule() {
    let cases = [
        (
            "",
            "no exit codes given; expected exit codes (0-255) or ranges a-b, separated by commas",
        ),
        (
            "   ",
            "no exit codes given; expected exit codes (0-255) or ranges a-b, separated by commas",
        ),
        (
            "1,,2",
            "empty item; expected exit codes (0-255) or ranges a-b, separated by commas",
        ),
        ("256", r#""256" is out of range: exit codes are 0-255"#),
        (
            "4294967295",
            r#""4294967295" is out of range: exit codes are 0-255"#,
        ),
        (
            "99999999999999999999999",
            r#""99999999999999999999999" is out of range: exit codes are 0-255"#,
        ),
        (
            "0-4294967295",
            r#""0-4294967295": "4294967295" is out of range: exit codes are 0-255"#,
        ),
        ("-1", r#""-1" is not an exit code (0-255) or range a-b"#),
        ("+5", r#""+5" is not an exit code (0-255) or range a-b"#),
        ("1.5", r#""1.5" is not an exit code (0-255) or range a-b"#),
        (
            "1-2-3",
            r#""1-2-3" is not an exit code (0-255) or range a-b"#,
        ),
        (
            "143-128",
            r#""143-128": a range a-b needs a <= b, and 143 > 128"#,
        ),
        (
            "0-255",
            "expands to 256 exit codes, and the API allows at most 255 (use except-exit-codes for the complement)",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse_exit_codes(input).unwrap_err(),
            want,
            "input {input:?}"
        );
    }
}

#[test]
fn every_key_rejects_bad_values_with_allowed_set() {
    let cases = [
        (
            IN_PLACE,
            "yes",
            "restart.jobset.dev/in-place: \"yes\": allowed values are enabled, disabled, true or false",
        ),
        (
            ACTION,
            "RestartPod",
            "restart.jobset.dev/action: \"RestartPod\": allowed values are Restart or RestartAllContainers",
        ),
        (
            EXCEPT_EXIT_CODES,
            "x",
            "restart.jobset.dev/except-exit-codes: \"x\": \"x\" is not an exit code (0-255) or range a-b",
        ),
        (
            CONTAINERS,
            "Trainer",
            "restart.jobset.dev/containers: \"Trainer\": \"Trainer\" is not a valid container name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
        ),
        (
            CONTAINERS,
            "a,,b",
            "restart.jobset.dev/containers: \"a,,b\": empty item; expected a comma list of container names",
        ),
        (
            REPLICATED_JOBS,
            "-x",
            "restart.jobset.dev/replicated-jobs: \"-x\": \"-x\" is not a valid replicated job name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
        ),
        (
            PRESET,
            " ",
            "restart.jobset.dev/preset: \" \": empty preset name; name a preset of the cluster config",
        ),
        (
            "restart.jobset.dev/in-plce",
            "enabled",
            "restart.jobset.dev/in-plce: \"enabled\": unknown annotation; the keys under restart.jobset.dev/ are in-place, action, on-exit-codes, except-exit-codes, containers, replicated-jobs, preset",
        ),
    ];
    for (key, value, want) in cases {
        assert_eq!(parse_js(&[(key, value)]).unwrap_err().to_string(), want);
    }
}

#[test]
fn on_and_except_together_is_an_error() {
    let err = parse_js(&[(ON_EXIT_CODES, "42"), (EXCEPT_EXIT_CODES, "0")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "restart.jobset.dev/on-exit-codes and restart.jobset.dev/except-exit-codes: \"42\" and \"0\": \
         set one of them, not both (on-exit-codes restarts only on the listed codes, \
         except-exit-codes on every code but the listed ones)"
    );
}

#[test]
fn replicated_jobs_key_only_on_jobset() {
    let err = parse(
        [(REPLICATED_JOBS, "a")],
        &Scope::ReplicatedJob("workers".into()),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "replicated job \"workers\": restart.jobset.dev/replicated-jobs: \"a\": only allowed \
         on the JobSet's own metadata.annotations, not on a replicated job"
    );
}

#[test]
fn valid_annotations_parse_and_foreign_keys_are_ignored() {
    let a = parse_js(&[
        (IN_PLACE, "true"),
        (ACTION, "Restart"),
        (ON_EXIT_CODES, "43,42"),
        (CONTAINERS, "trainer, agent,trainer"),
        (REPLICATED_JOBS, "workers"),
        (PRESET, " fast "),
        (APPLIED, "anything"),
        ("example.com/other", "x"),
    ])
    .unwrap();
    assert_eq!(a.settings.in_place, Some(InPlace::Enabled));
    assert_eq!(a.settings.action, Some(Action::Restart));
    let codes = a.settings.exit_codes.unwrap();
    assert_eq!(
        (codes.operator, codes.values()),
        (Operator::In, &[42u8, 43][..])
    );
    assert_eq!(a.settings.containers.unwrap(), ["trainer", "agent"]);
    assert_eq!(a.replicated_jobs.unwrap(), ["workers"]);
    assert_eq!(a.preset.as_deref(), Some("fast"));
    assert_eq!(
        parse_js(&[(IN_PLACE, "false")]).unwrap().settings.in_place,
        Some(InPlace::Disabled)
    );
}

#[test]
fn huge_values_are_quoted_bounded() {
    let huge = "a".repeat(1 << 20);
    let msg = parse_js(&[(ACTION, &huge)]).unwrap_err().to_string();
    assert!(msg.len() < 300, "message is {} bytes", msg.len());
    assert!(msg.contains("(1048576 bytes)"));
}

#[test]
fn compact_values_renders_runs() {
    let c = ExitCodes::new(Operator::In, "42,43,128-143,200,255").unwrap();
    assert_eq!(c.compact_values(), "42,43,128-143,200,255");
    assert_eq!(ExitCodes::any_failure().compact_values(), "0");
}

/// `n` distinct names `n0,n1,...`.
fn names(n: usize) -> String {
    (0..n)
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn name_lists_are_bounded_before_they_are_read() {
    // At the bounds: 64 names, and 64 names of 63 characters (4,095 bytes).
    assert_eq!(
        parse_names(&names(MAX_LIST_NAMES), "container").map(|v| v.len()),
        Ok(MAX_LIST_NAMES)
    );
    let long: Vec<String> = (0..MAX_LIST_NAMES).map(|i| format!("{i:0>63}")).collect();
    let long = long.join(",");
    assert_eq!(long.len(), MAX_LIST_BYTES - 1);
    assert!(parse_names(&long, "container").is_ok());

    let err = parse_js(&[(CONTAINERS, &names(MAX_LIST_NAMES + 1))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "restart.jobset.dev/containers: {}: a list of container names may have at most \
             4096 bytes and 64 names; this one has 65 names",
            quote(&names(65))
        )
    );
    // 60,000 distinct names (the list that took 10.8 s of CPU to de-duplicate): refused by
    // its size, before it is split.
    let huge = names(60_000);
    let err = parse(
        [(CONTAINERS, huge.as_str())],
        &Scope::ReplicatedJob("workers".into()),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "replicated job \"workers\": restart.jobset.dev/containers: {}: a list of container \
             names may have at most 4096 bytes and 64 names; this one has {} bytes",
            quote(&huge),
            huge.len()
        )
    );
    let err = parse_js(&[(REPLICATED_JOBS, &names(100))]).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "a list of replicated job names may have at most 4096 bytes and 64 names; this \
             one has 100 names"
        ),
        "{err}"
    );
}

#[test]
fn repeated_names_are_kept_once_in_first_order() {
    assert_eq!(
        parse_names("b, a,b ,c,a", "container").unwrap(),
        ["b", "a", "c"]
    );
}
