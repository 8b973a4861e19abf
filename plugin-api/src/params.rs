use crate::Metadata;
use std::collections::BTreeMap;
use std::fmt;

/// A resource's parameters, name → value, as the administrator wrote them.
pub type Params = BTreeMap<String, String>;

/// One thing wrong with a resource's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamProblem {
    /// The parameter's name.
    pub name: String,
    /// What is wrong, and what to write instead.
    pub problem: String,
}

impl fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter {}: {}", self.name, self.problem)
    }
}

/// Check `params` against the agent's meta-data before any call: unknown names,
/// missing required parameters and values of the wrong type. Returns every problem.
///
/// Rationale: the host checks, not each agent, so a typo in a parameter name is
/// caught the same way for built-in, native, WebAssembly and OCF agents.
pub fn check_params(meta: &Metadata, params: &Params) -> Result<(), Vec<ParamProblem>> {
    let mut problems = Vec::new();
    for (name, value) in params {
        match meta.parameter(name) {
            None => {
                let known: Vec<&str> = meta.parameters.iter().map(|p| p.name.as_str()).collect();
                let hint = closest(name, &known)
                    .map(|c| format!("did you mean {c:?}? "))
                    .unwrap_or_default();
                problems.push(ParamProblem {
                    name: name.clone(),
                    problem: format!(
                        "unknown to agent {}; {hint}known parameters: {}",
                        meta.name,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
            Some(spec) => {
                if let Err(e) = spec.kind.check(value) {
                    problems.push(ParamProblem {
                        name: name.clone(),
                        problem: e,
                    });
                }
            }
        }
    }
    for spec in meta.parameters.iter().filter(|p| p.required) {
        if !params.contains_key(&spec.name) {
            problems.push(ParamProblem {
                name: spec.name.clone(),
                problem: format!(
                    "required by agent {} but not set; add {}=<{}> ({})",
                    meta.name,
                    spec.name,
                    spec.kind.ocf_name(),
                    spec.description.lines().next().unwrap_or("")
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The known name closest to `name` by edit distance, if it is close enough to be a typo.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::tests::sample;

    fn params(list: &[(&str, &str)]) -> Params {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_good_params() {
        check_params(&sample(), &params(&[("port", "80"), ("mode", "fast")])).unwrap();
    }

    #[test]
    fn reports_unknown_missing_and_mistyped_parameters() {
        let problems =
            check_params(&sample(), &params(&[("prot", "80"), ("mode", "turbo")])).unwrap_err();
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(
            all[0].starts_with("parameter mode: \"turbo\" is not one of"),
            "{all:?}"
        );
        assert!(
            all[1].contains("parameter prot: unknown to agent web; did you mean \"port\"?"),
            "{all:?}"
        );
        assert!(
            all[2]
                .contains("parameter port: required by agent web but not set; add port=<integer>"),
            "{all:?}"
        );
    }

    #[test]
    fn integer_parameters_reject_words() {
        let problems = check_params(&sample(), &params(&[("port", "eighty")])).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "parameter port: not an integer: \"eighty\""
        );
    }
}
