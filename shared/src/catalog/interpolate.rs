//! `${NAME}` environment placeholders in apply files, for values only known
//! where the file is applied (the simulator's address in the local run, an
//! account's first period).

use super::Problem;

/// Replaces every `${NAME}` with `lookup(NAME)`. `$${` stands for a literal
/// `${`; lines whose first non-blank character is `#` are comments and left
/// as they are, so a comment may mention a placeholder. Every unset or empty
/// variable and every malformed placeholder is reported with its line.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let number = number + 1;
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let Some(end) = tail.find('}') else {
                    problems.push(placeholder_problem(
                        number,
                        "`${` has no closing `}`; write ${NAME}, or $${ for a literal ${",
                    ));
                    out.push_str(after);
                    rest = "";
                    continue;
                };
                let name = &tail[..end];
                if !is_variable_name(name) {
                    problems.push(placeholder_problem(
                        number,
                        &format!("${{{name}}} is not a variable name; use letters, digits and _ (not starting with a digit)"),
                    ));
                } else {
                    match lookup(name) {
                        Some(value) if value.contains(['\n', '\r']) => {
                            problems.push(placeholder_problem(
                                number,
                                &format!("${{{name}}} contains a line break; a placeholder's value must fit on its line"),
                            ));
                        }
                        Some(value) if !value.is_empty() => out.push_str(&value),
                        _ => problems.push(placeholder_problem(
                            number,
                            &format!("${{{name}}} is not set; set the environment variable {name} (or write the value into the file)"),
                        )),
                    }
                }
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn placeholder_problem(line: usize, message: &str) -> Problem {
    Problem::file(format!("line {line}"), line, message)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SIM" => Some("http://127.0.0.1:4000".into()),
            "DAY" => Some("2025-01-14".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn placeholders_are_replaced_by_their_variables() {
        let text = "base_url: \"${SIM}/routit\"\nfirst_period: ${DAY}\n";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "base_url: \"http://127.0.0.1:4000/routit\"\nfirst_period: 2025-01-14\n"
        );
    }

    #[test]
    fn text_without_placeholders_is_unchanged_including_lone_dollars() {
        let text = "name: costs in $ and $5\nother: $\n";
        assert_eq!(interpolate(text, env).unwrap(), text);
    }

    #[test]
    fn a_doubled_dollar_is_a_literal_placeholder() {
        assert_eq!(interpolate("x: $${SIM}\n", env).unwrap(), "x: ${SIM}\n");
    }

    #[test]
    fn every_unset_or_empty_variable_is_named_with_its_line() {
        let problems =
            interpolate("a: ${NOPE}\nb: ${SIM}\nc: ${EMPTY} ${ALSO_NOPE}\n", env).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("line 1: ${NOPE} is not set; set the environment variable NOPE")
        );
        assert!(text[1].starts_with("line 3: ${EMPTY} is not set"));
        assert!(text[2].starts_with("line 3: ${ALSO_NOPE} is not set"));
    }

    #[test]
    fn full_line_comments_are_not_interpolated() {
        let text = "  # uses ${NOPE}\na: 1\n";
        assert_eq!(interpolate(text, env).unwrap(), text);
    }

    #[test]
    fn malformed_placeholders_and_multi_line_values_are_refused() {
        let problems = interpolate("a: ${1X}\nb: ${SIM\nc: ${MULTI}\n", env).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("${1X} is not a variable name"), "{text:?}");
        assert!(
            text[1].starts_with("line 2: `${` has no closing"),
            "{text:?}"
        );
        assert!(
            text[2].contains("${MULTI} contains a line break"),
            "{text:?}"
        );
    }
}
