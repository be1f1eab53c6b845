//! Compares an observed run with one world of the model.

use super::model::{Expected, Item, Pattern};
use super::runner::{Calls, Observation};

/// The differences (empty: the world matches).
pub fn compare(e: &Expected, o: &Observation) -> Vec<String> {
    let mut d = Vec::new();
    if o.hung {
        d.push("the program did not finish (hang)".to_owned());
    }
    if e.calls != o.calls {
        calls(&e.calls, &o.calls, &mut d);
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
    if !matches_log(&e.log, &ordered) {
        d.push(format!(
            "hook log:\n      expected {}\n      observed {:?}",
            show(&e.log),
            ordered
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

/// Where the calls ended differently, one line per root, result or body-starts mismatch.
fn calls(e: &Calls, o: &Calls, d: &mut Vec<String>) {
    if e.root != o.root {
        d.push(format!(
            "root: expected {:?}, observed {:?}",
            e.root, o.root
        ));
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
}

fn matches_pattern(phases: &[&str], pattern: Pattern) -> bool {
    let p: Vec<&str> = phases
        .iter()
        .copied()
        .filter(|x| !x.starts_with("aci="))
        .collect();
    match pattern {
        Pattern::RolledBack => p == ["bcpl", "acpl(R)"] || p == ["bc", "bcpl", "acpl(R)"],
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

fn count(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| match i {
            Item::Entry(_) => 1,
            Item::Par(a, b) => count(a) + count(b),
        })
        .sum()
}

fn tags(items: &[Item], out: &mut std::collections::BTreeSet<String>) {
    for i in items {
        match i {
            Item::Entry(e) => {
                out.insert(e.split(':').next().unwrap_or("").to_owned());
            }
            Item::Par(a, b) => {
                tags(a, out);
                tags(b, out);
            }
        }
    }
}

/// Whether `observed` is `expected` with joined branches interleaved: a join's entries form
/// one block (the join ends before the code after it runs), in which each branch's entries
/// (told apart by their hook tags) keep their order.
fn matches_log(expected: &[Item], observed: &[String]) -> bool {
    let mut pos = 0;
    for item in expected {
        match item {
            Item::Entry(e) => {
                if observed.get(pos) != Some(e) {
                    return false;
                }
                pos += 1;
            }
            Item::Par(a, b) => {
                let n = count(a) + count(b);
                let Some(block) = observed.get(pos..pos + n) else {
                    return false;
                };
                let mut ta = std::collections::BTreeSet::new();
                tags(a, &mut ta);
                let (in_a, in_b): (Vec<String>, Vec<String>) = block
                    .iter()
                    .cloned()
                    .partition(|x| ta.contains(x.split(':').next().unwrap_or("")));
                if !matches_log(a, &in_a) || !matches_log(b, &in_b) {
                    return false;
                }
                pos += n;
            }
        }
    }
    pos == observed.len()
}

fn show(items: &[Item]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|i| match i {
            Item::Entry(e) => format!("{e:?}"),
            Item::Par(a, b) => format!("join({} | {})", show(a), show(b)),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
