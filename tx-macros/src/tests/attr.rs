//! The grammar and value rules of the attribute's keys.

use crate::ast::{Args, Manager};
use crate::valid::parse_duration_ms;

fn parse(s: &str) -> syn::Result<Args> {
    syn::parse_str::<Args>(s)
}

fn err(s: &str) -> String {
    match parse(s) {
        Ok(_) => panic!("`{s}` should not parse"),
        Err(e) => e
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" || "),
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration_ms("250ms"), Ok(250));
    assert_eq!(parse_duration_ms("2s"), Ok(2_000));
    assert_eq!(parse_duration_ms("1m"), Ok(60_000));
    assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
    assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
    assert_eq!(parse_duration_ms(" 5 s "), Ok(5_000));
    assert_eq!(parse_duration_ms("0ms"), Ok(0));
    assert!(parse_duration_ms("").is_err());
    assert!(parse_duration_ms("5").is_err());
    assert!(parse_duration_ms("5 days").is_err());
    assert!(parse_duration_ms("fast").is_err());
    assert!(parse_duration_ms("-5s").is_err());
    assert!(parse_duration_ms("99999999999999999999s").is_err());
}

#[test]
fn full_surface() {
    let a = parse(
        "propagation = REQUIRES_NEW, isolation = Serializable, timeout = \"250ms\", read_only, \
         rollback_for = AppError::Db(_) | AppError::Io { .. }, no_rollback_for = AppError::Warn, \
         manager = self.db, name = \"x\", retry = 3",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.propagation.map(|p| p.0), Some("RequiresNew"));
    assert_eq!(a.isolation.map(|p| p.0), Some("Serializable"));
    assert_eq!(a.timeout_ms.map(|t| t.0), Some(250));
    assert_eq!(a.read_only, Some(true));
    assert!(a.rollback_for.is_some() && a.no_rollback_for.is_some());
    assert!(matches!(a.manager, Some(Manager::Expr(_))));
    assert_eq!(a.name.map(|n| n.value()).as_deref(), Some("x"));
    assert_eq!(a.retry.map(|r| r.0), Some(3));
    assert!(parse("").is_ok());
    assert!(parse("read_only = false, timeout = 5,").is_ok());
    assert_eq!(
        parse("propagation = Propagation::Nested")
            .unwrap()
            .propagation
            .map(|p| p.0),
        Some("Nested")
    );
    assert!(matches!(
        parse("manager = \"orders\"").unwrap().manager,
        Some(Manager::Named(_))
    ));
}

#[test]
fn errors() {
    assert!(err("readOnly").contains("did you mean `read_only`"));
    assert!(err("foo = 1").contains("the valid keys are `propagation`"));
    assert!(err("timeout = 1, timeout = 2").contains("duplicate key `timeout`"));
    assert!(err("propagation = RequireNew").contains("did you mean `RequiresNew`"));
    assert!(err("isolation = Snapshot").contains("`Serializable`"));
    assert!(err("timeout = 0").contains("greater than zero"));
    assert!(err("timeout = \"0s\"").contains("greater than zero"));
    assert!(err("timeout = -1").contains("negative"));
    assert!(err("timeout = \"soon\"").contains("cannot parse timeout"));
    assert!(err("timeout = 1.5").contains("whole number"));
    assert!(err("read_only = \"yes\"").contains("`true` or `false`"));
    assert!(err("retry = -1").contains("cannot be negative"));
    assert!(err("retry").contains("needs a value"));
    assert!(err("manager = \"\"").contains("cannot be empty"));
    assert!(err("name = orders").contains("string literal"));
    assert!(err("rollback_for = ").contains("pattern"));
    assert!(err("propagation = \"REQUIRES_NEW\"").contains("without quotes"));
    // several errors are all reported
    let many = err("foo = 1, timeout = 0, retry = -1");
    assert!(many.contains("unknown key") && many.contains("zero") && many.contains("negative"));
}
