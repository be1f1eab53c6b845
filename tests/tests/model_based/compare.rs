//! Compares an observed run with one world of the model.

use super::model::{Expected, Pattern};
use super::runner::Observation;

/// The differences (empty: the world matches).
pub fn compare(e: &Expected, o: &Observation) -> Vec<String> {
    let mut d = Vec::new();
    if o.hung {
        d.push("the program did not finish (hang)".to_owned());
    }
    if e.root != o.root {
        d.push(format!("root: expected {:?}, observed {:?}", e.root, o.root));
    }
    let keys: std::collections::BTreeSet<&String> =
        e.results.keys().chain(o.results.keys()).collect();
    for k in keys {
        let (x, y) = (e.results.get(k), o.results.get(k));
        if x != y {
            d.push(format!("result of {k}: expected {x:?}, observed {y:?}"));
        }
    }
    if e.starts != o.starts {
        d.push(format!(
            "body starts: expected {:?}, observed {:?}",
            e.starts, o.starts
        ));
    }
    let missing: Vec<&String> = e.rows.difference(&o.rows).collect();
    let extra: Vec<&String> = o
        .rows
        .iter()
        .filter(|r| !e.rows.contains(*r) && !e.maybe_rows.contains(*r))
        .collect();
    if !missing.is_empty() {
        d.push(format!("rows missing (lost): {missing:?}"));
    }
    if !extra.is_empty() {
        d.push(format!("rows that must not be there: {extra:?}"));
    }
    let tag_of = |entry: &str| entry.split(':').next().unwrap_or("").to_owned();
    let ordered: Vec<String> = o
        .log
        .iter()
        .filter(|x| !x.starts_with("reg ") && !e.patterns.contains_key(&tag_of(x)))
        .cloned()
        .collect();
    if ordered != e.log {
        d.push(format!(
            "hook log:\n      expected {:?}\n      observed {:?}",
            e.log, ordered
        ));
    }
    for (tag, pattern) in &e.patterns {
        let phases: Vec<&str> = o
            .log
            .iter()
            .filter(|x| tag_of(x) == *tag)
            .map(|x| &x[tag.len() + 1..])
            .collect();
        if !matches_pattern(&phases, *pattern) {
            d.push(format!(
                "hooks of {tag} (completed after a cut): expected {pattern:?}, observed {phases:?}"
            ));
        }
    }
    d
}

fn matches_pattern(phases: &[&str], pattern: Pattern) -> bool {
    let p: Vec<&str> = phases
        .iter()
        .copied()
        .filter(|x| !x.starts_with("aci="))
        .collect();
    match pattern {
        Pattern::RolledBack => {
            p == ["bcpl", "acpl(R)"] || p == ["bc", "bcpl", "acpl(R)"]
        }
        Pattern::Committed => p == ["bc", "bcpl", "ac", "acpl(C)"],
        Pattern::Unknown => {
            let Some((last, rest)) = p.split_last() else {
                return false;
            };
            let order = ["bc", "bcpl", "ac"];
            *last == "acpl(U)"
                && rest.windows(2).all(|w| {
                    order.iter().position(|x| *x == w[0]) < order.iter().position(|x| *x == w[1])
                })
                && rest.iter().all(|x| order.contains(x))
        }
    }
}
