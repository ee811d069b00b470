//! Line breaks and indentation for the generated expressions.

/// Lays a generated expression out on lines of about [`LINE_WIDTH`] characters, breaking
/// before `?`, `:`, `&&`, `||`, `+` and after `,` once a line is long, and indenting by
/// bracket depth, so that the printed YAML (a block scalar per expression) can be read.
/// Only whitespace outside string literals changes, which CEL ignores.
pub fn layout(expr: &str) -> String {
    const LINE_WIDTH: usize = 96;
    let mut out = String::with_capacity(expr.len() + expr.len() / 8);
    let mut line = 0usize;
    let mut depth = 0usize;
    let (mut in_str, mut escaped) = (false, false);
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        if in_str {
            out.push(c);
            line += 1;
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '\'') => in_str = false,
                _ => {}
            }
            continue;
        }
        let rest = chars.get(i..).unwrap_or_default();
        let breaks_before = |ops: &[&str]| {
            ops.iter().any(|op| {
                let op: Vec<char> = op.chars().collect();
                rest.starts_with(&op)
            })
        };
        match c {
            '\'' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let newline = |out: &mut String, line: &mut usize, depth: usize| {
            out.push('\n');
            for _ in 0..depth {
                out.push_str("  ");
            }
            *line = depth * 2;
        };
        if c == ' ' && line > LINE_WIDTH && breaks_before(&["? ", ": ", "&& ", "|| ", "+ "]) {
            newline(&mut out, &mut line, depth);
            continue;
        }
        out.push(c);
        line += 1;
        if c == ',' && rest.first() == Some(&' ') && line > LINE_WIDTH {
            i += 1;
            newline(&mut out, &mut line, depth);
        }
    }
    out
}
