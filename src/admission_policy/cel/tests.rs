use super::*;

#[test]
fn literals_escape_quotes_and_backslashes() {
    assert_eq!(lit("it's"), r"'it\'s'");
    assert_eq!(lit(r"a\b"), r"'a\\b'");
    assert_eq!(lit("a\nb"), r"'a\nb'");
}

#[test]
fn parentheses_balance_in_every_expression() {
    let c = Constants {
        presets: "{}".to_owned(),
        defaults: "{}".to_owned(),
        default_in_place: "disabled",
        no_such_preset: "x".to_owned(),
    };
    let all: Vec<String> = variables(&c)
        .into_iter()
        .map(|v| v.expression)
        .chain([mutation_patch()])
        .collect();
    for e in all {
        let mut depth: i64 = 0;
        let mut in_str = false;
        let mut escaped = false;
        for ch in e.chars() {
            if in_str {
                match (escaped, ch) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '\'') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match ch {
                '\'' => in_str = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "unbalanced: {e}");
        }
        assert_eq!(depth, 0, "unbalanced: {e}");
        assert!(!in_str, "unterminated string: {e}");
    }
}

#[test]
fn only_whitespace_outside_strings_changes() {
    let long = format!(
        "a ? '{}, x ? y : z' : [{}]",
        "s".repeat(120),
        (0..60)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let laid = layout(&long);
    assert!(laid.lines().count() > 1, "{laid}");
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(squash(&laid), squash(&long));
    assert!(laid.contains(&format!("'{}, x ? y : z'", "s".repeat(120))));
    assert_eq!(layout("a ? b : c"), "a ? b : c");
}
