//! Label and field selectors: the `labelSelector` / `fieldSelector` query strings of list and
//! watch requests, and `metav1.LabelSelector` objects (PDBs, workloads).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unable to parse requirement {requirement:?}: {why}")]
    Label {
        requirement: String,
        why: &'static str,
    },
    #[error("invalid selector: {selector:?}; can't understand {term:?}")]
    Field { selector: String, term: String },
    #[error("field label not supported: {field}")]
    UnsupportedField { field: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Operator,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => {
                !value.is_some_and(|v| self.values.contains(v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A parsed `labelSelector` query (`a=b,c!=d,e in (f,g),!h`). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelQuery {
    requirements: Vec<Requirement>,
}

impl LabelQuery {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    let fail = |why| SelectorError::Label {
        requirement: term.to_owned(),
        why,
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement {
            key: valid_key(key.trim(), term)?,
            op: Operator::DoesNotExist,
            values: vec![],
        });
    }
    for (token, op) in [
        ("!=", Operator::NotEquals),
        ("==", Operator::Equals),
        ("=", Operator::Equals),
    ] {
        if let Some((key, value)) = term.split_once(token) {
            return Ok(Requirement {
                key: valid_key(key.trim(), term)?,
                op,
                values: vec![value.trim().to_owned()],
            });
        }
    }
    for (token, op) in [(" notin ", Operator::NotIn), (" in ", Operator::In)] {
        if let Some((key, rest)) = term.split_once(token) {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| fail("expected a parenthesised value list"))?;
            let values: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() && op == Operator::In {
                return Err(fail("for 'in' operator, at least one value is required"));
            }
            return Ok(Requirement {
                key: valid_key(key.trim(), term)?,
                op,
                values,
            });
        }
    }
    Ok(Requirement {
        key: valid_key(term, term)?,
        op: Operator::Exists,
        values: vec![],
    })
}

fn valid_key(key: &str, term: &str) -> Result<String, SelectorError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(SelectorError::Label {
            requirement: term.to_owned(),
            why: "invalid label key",
        })
    }
}

/// A parsed `fieldSelector` query (`spec.nodeName=x,status.phase!=Succeeded`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldQuery {
    terms: Vec<(String, bool, String)>,
}

impl FieldQuery {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let parsed = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError::Field {
                    selector: text.to_owned(),
                    term: term.to_owned(),
                });
            };
            terms.push((
                parsed.0.trim().to_owned(),
                parsed.1,
                parsed.2.trim().to_owned(),
            ));
        }
        Ok(Self { terms })
    }

    /// Checks every field against `supported` (the fields the resource can be selected by).
    pub fn check_fields(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .terms
            .iter()
            .find(|(f, _, _)| !supported.contains(&f.as_str()))
        {
            Some((field, _, _)) => Err(SelectorError::UnsupportedField {
                field: field.clone(),
            }),
            None => Ok(()),
        }
    }

    /// `field_value` returns the object's value for a supported field ("" when unset).
    pub fn matches(&self, field_value: impl Fn(&str) -> String) -> bool {
        self.terms
            .iter()
            .all(|(f, eq, v)| (field_value(f) == *v) == *eq)
    }
}

/// Whether a `metav1.LabelSelector` matches labels; a selector with no requirements matches all.
pub fn label_selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|expr| {
        let values = expr.values.clone().unwrap_or_default();
        let op = match expr.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => return false,
        };
        Requirement {
            key: expr.key.clone(),
            op,
            values,
        }
        .matches(labels)
    });
    by_labels && by_expressions
}

/// A selector with neither matchLabels nor matchExpressions.
pub fn label_selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_query_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let m = |q: &str| LabelQuery::parse(q).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (api, web)"));
        assert!(!m("app notin (api,web)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("missing!=x"));
    }

    #[test]
    fn label_query_rejects_garbage() {
        assert!(LabelQuery::parse("app in web").is_err());
        assert!(LabelQuery::parse("a b").is_err());
    }

    #[test]
    fn field_query() {
        let q = FieldQuery::parse("spec.nodeName=worker-01,status.phase!=Succeeded").unwrap();
        assert!(q.check_fields(&["spec.nodeName", "status.phase"]).is_ok());
        assert_eq!(
            q.check_fields(&["spec.nodeName"]),
            Err(SelectorError::UnsupportedField {
                field: "status.phase".into()
            })
        );
        let value = |phase: &'static str| {
            move |f: &str| {
                if f == "spec.nodeName" {
                    "worker-01".into()
                } else {
                    phase.into()
                }
            }
        };
        assert!(q.matches(value("Running")));
        assert!(!q.matches(value("Succeeded")));
        assert!(FieldQuery::parse("nonsense").is_err());
    }

    #[test]
    fn label_selector_objects() {
        let l = labels(&[("app", "db")]);
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "db")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "canary".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
        };
        assert!(label_selector_matches(&sel, Some(&l)));
        assert!(!label_selector_matches(&sel, None));
        assert!(label_selector_is_empty(&LabelSelector::default()));
        assert!(!label_selector_is_empty(&sel));
    }
}
