//! Parsing `#[transactional(key = value, ...)]`.
//!
//! Every value is checked here, at compile time, and each error points at the offending token
//! with a message that says what is allowed.

use proc_macro2::{Span, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Pat, Token, UnOp};

/// The keys `#[transactional]` accepts, in the order the docs list them.
pub(crate) const KEYS: &[&str] = &[
    "propagation",
    "isolation",
    "timeout",
    "read_only",
    "rollback_for",
    "no_rollback_for",
    "manager",
    "name",
    "retry",
];

/// (CamelCase variant of `tx_core::Propagation`, Spring's SCREAMING_CASE spelling)
pub(crate) const PROPAGATIONS: &[(&str, &str)] = &[
    ("Required", "REQUIRED"),
    ("RequiresNew", "REQUIRES_NEW"),
    ("Nested", "NESTED"),
    ("Supports", "SUPPORTS"),
    ("NotSupported", "NOT_SUPPORTED"),
    ("Mandatory", "MANDATORY"),
    ("Never", "NEVER"),
];

/// (CamelCase variant of `tx_core::Isolation`, Spring's SCREAMING_CASE spelling)
pub(crate) const ISOLATIONS: &[(&str, &str)] = &[
    ("Default", "DEFAULT"),
    ("ReadUncommitted", "READ_UNCOMMITTED"),
    ("ReadCommitted", "READ_COMMITTED"),
    ("RepeatableRead", "REPEATABLE_READ"),
    ("Serializable", "SERIALIZABLE"),
];

/// Which transaction manager a scope uses.
#[derive(Clone)]
pub(crate) enum Manager {
    /// `manager = "orders"`: registered with `register_manager("orders", ..)`.
    Named(LitStr),
    /// `manager = self.db`, `manager = db()`: evaluated once per call.
    Expr(Box<Expr>),
}

/// The parsed attribute. `None` means "not given" (the default applies).
#[derive(Clone, Default)]
pub(crate) struct Args {
    /// CamelCase variant name, and the value's span.
    pub propagation: Option<(&'static str, Span)>,
    pub isolation: Option<(&'static str, Span)>,
    /// Milliseconds, and the value's span.
    pub timeout_ms: Option<(u64, Span)>,
    pub read_only: Option<bool>,
    pub rollback_for: Option<Pat>,
    pub no_rollback_for: Option<Pat>,
    pub manager: Option<Manager>,
    pub name: Option<LitStr>,
    /// Number of re-runs, and the span of the `retry` key (for errors about it).
    pub retry: Option<(u32, Span)>,
}

impl Args {
    /// True when some key names `self` in an expression (`manager = self.db`).
    pub(crate) fn manager_uses_self(&self) -> bool {
        match &self.manager {
            Some(Manager::Expr(e)) => crate::expand::tokens_mention(
                quote::ToTokens::to_token_stream(e),
                &mut |i: &Ident| i == "self",
            ),
            _ => false,
        }
    }
}

fn keys_list() -> String {
    KEYS.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Spring's (and other frameworks') spellings of our keys, for "did you mean" hints.
fn key_hint(key: &str) -> Option<&'static str> {
    let norm: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    match norm.as_str() {
        "propagation" => Some("propagation"),
        "isolation" | "isolationlevel" => Some("isolation"),
        "timeout" | "timeoutsecs" | "timeoutseconds" => Some("timeout"),
        "readonly" => Some("read_only"),
        "rollbackfor" | "rollbackon" | "rollbackforclassname" => Some("rollback_for"),
        "norollbackfor" | "norollbackon" | "norollbackforclassname" | "commiton" => {
            Some("no_rollback_for")
        }
        "manager" | "transactionmanager" | "value" | "txmanager" | "pool" | "db" => Some("manager"),
        "name" | "label" => Some("name"),
        "retry" | "retries" | "maxretries" | "attempts" => Some("retry"),
        _ => KEYS.iter().copied().find(|k| edit_distance(k, key) <= 2),
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt values.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Looks `name` up in a (CamelCase, SCREAMING_CASE) table; on failure builds the error.
fn enum_value(
    what: &str,
    table: &[(&'static str, &'static str)],
    default: &str,
    name: &str,
    span: Span,
) -> syn::Result<&'static str> {
    if let Some((camel, _)) = table.iter().find(|(c, s)| *c == name || *s == name) {
        return Ok(camel);
    }
    let camel: Vec<String> = table
        .iter()
        .map(|(c, _)| {
            if *c == default {
                format!("`{c}` (the default)")
            } else {
                format!("`{c}`")
            }
        })
        .collect();
    let screaming: Vec<String> = table.iter().map(|(_, s)| format!("`{s}`")).collect();
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let hint = table
        .iter()
        .find(|(c, _)| norm(c) == norm(name) || edit_distance(&norm(c), &norm(name)) <= 2)
        .map(|(c, _)| format!("; did you mean `{c}`?"))
        .unwrap_or_default();
    Err(syn::Error::new(
        span,
        format!(
            "unknown {what} `{name}`{hint}\nexpected one of {}, or Spring's spelling {}",
            camel.join(", "),
            screaming.join(", ")
        ),
    ))
}

/// Parses `propagation = RequiresNew` / `REQUIRES_NEW` / `Propagation::RequiresNew`.
fn parse_enum_value(
    input: ParseStream,
    what: &str,
    type_name: &str,
    table: &[(&'static str, &'static str)],
    default: &str,
) -> syn::Result<(&'static str, Span)> {
    let example = format!("`{what} = {}`", table[1].0);
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        let msg = match enum_value(what, table, default, &lit.value(), lit.span()) {
            Ok(c) => format!("`{what}` takes a name without quotes: write `{what} = {c}`"),
            Err(e) => format!("`{what}` takes a name without quotes, e.g. {example}; and {e}"),
        };
        return Err(syn::Error::new(lit.span(), msg));
    }
    let path: syn::Path = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`{what}` takes one of the names listed in the docs, e.g. {example}"),
        )
    })?;
    let span = path.span();
    let ok_prefix = match path.segments.len() {
        1 => true,
        2 => path.segments[0].ident == type_name,
        _ => false,
    };
    if !ok_prefix
        || path.leading_colon.is_some()
        || !path.segments.iter().all(|s| s.arguments.is_empty())
    {
        return Err(syn::Error::new(
            span,
            format!(
                "`{what}` takes a bare name such as {example} (or `{type_name}::{}`)",
                table[1].0
            ),
        ));
    }
    let last = path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    let value = enum_value(what, table, default, &last, span)?;
    Ok((value, span))
}

/// Parses a duration string: one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`
/// (e.g. `"250ms"`, `"2s"`, `"1m30s"`). Returns milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the duration string is empty".into());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "the number is too large".to_owned())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "" => return Err(format!("`{n}` has no unit (use `ms`, `s`, `m` or `h`)")),
            other => {
                return Err(format!(
                    "unknown unit `{other}` (use `ms`, `s`, `m` or `h`)"
                ));
            }
        };
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| "the duration is too large".to_owned())?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

const TIMEOUT_HELP: &str = "`timeout` takes a positive number of seconds (`timeout = 5`) or a duration string (`timeout = \"250ms\"`, `\"2s\"`, `\"1m\"`)";

fn parse_timeout(input: ParseStream) -> syn::Result<(u64, Span)> {
    let expr: Expr = input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), TIMEOUT_HELP))?;
    let span = expr.span();
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            let secs: u64 = int.base10_parse().map_err(|_| {
                syn::Error::new_spanned(&expr, format!("invalid timeout: {TIMEOUT_HELP}"))
            })?;
            if secs == 0 {
                return Err(syn::Error::new_spanned(
                    &expr,
                    format!(
                        "timeout must be greater than zero: {TIMEOUT_HELP}; leave `timeout` out for no deadline"
                    ),
                ));
            }
            let ms = secs
                .checked_mul(1_000)
                .ok_or_else(|| syn::Error::new_spanned(&expr, "timeout is too large"))?;
            Ok((ms, span))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match parse_duration_ms(&s.value()) {
            Ok(0) => Err(syn::Error::new_spanned(
                &expr,
                format!(
                    "timeout must be greater than zero: {TIMEOUT_HELP}; leave `timeout` out for no deadline"
                ),
            )),
            Ok(ms) => Ok((ms, span)),
            Err(why) => Err(syn::Error::new_spanned(
                &expr,
                format!(
                    "cannot parse timeout {:?}: {why}\n{TIMEOUT_HELP}",
                    s.value()
                ),
            )),
        },
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => Err(syn::Error::new_spanned(
            &expr,
            format!(
                "timeout seconds must be a whole number; for fractions write milliseconds, e.g. `timeout = \"1500ms\"`\n{TIMEOUT_HELP}"
            ),
        )),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(syn::Error::new_spanned(
            &expr,
            format!("timeout cannot be negative: {TIMEOUT_HELP}"),
        )),
        _ => Err(syn::Error::new_spanned(&expr, TIMEOUT_HELP)),
    }
}

const RETRY_HELP: &str = "`retry` takes a non-negative integer: how many times to re-run the call after a retryable failure (serialization failure, deadlock), e.g. `retry = 5`";

fn parse_retry(input: ParseStream) -> syn::Result<u32> {
    let expr: Expr = input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), RETRY_HELP))?;
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => int.base10_parse::<u32>().map_err(|_| {
            syn::Error::new_spanned(&expr, format!("invalid retry count: {RETRY_HELP}"))
        }),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(syn::Error::new_spanned(
            &expr,
            format!("retry count cannot be negative: {RETRY_HELP}"),
        )),
        _ => Err(syn::Error::new_spanned(&expr, RETRY_HELP)),
    }
}

fn parse_read_only(input: ParseStream) -> syn::Result<bool> {
    const HELP: &str =
        "`read_only` takes `true` or `false` (`read_only` alone means `read_only = true`)";
    let expr: Expr = input.parse().map_err(|e| syn::Error::new(e.span(), HELP))?;
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(other, HELP)),
    }
}

fn parse_pattern(input: ParseStream, key: &str) -> syn::Result<Pat> {
    let help = format!(
        "`{key}` takes a pattern over the function's error type, `|` allowed, e.g. `{key} = AppError::RiskRejected {{ .. }} | AppError::OutOfStock(_)`"
    );
    if input.is_empty() || input.peek(Token![,]) {
        return Err(input.error(help));
    }
    Pat::parse_multi_with_leading_vert(input).map_err(|e| syn::Error::new(e.span(), help))
}

fn parse_manager(input: ParseStream) -> syn::Result<Manager> {
    const HELP: &str = "`manager` takes a registered name (`manager = \"orders\"`) or an expression giving the manager (`manager = self.db`, `manager = db()`)";
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        if lit.value().is_empty() {
            return Err(syn::Error::new(
                lit.span(),
                format!("the manager name cannot be empty: {HELP}"),
            ));
        }
        return Ok(Manager::Named(lit));
    }
    if input.is_empty() || input.peek(Token![,]) {
        return Err(input.error(HELP));
    }
    let expr: Expr = input.parse().map_err(|e| syn::Error::new(e.span(), HELP))?;
    if let Expr::Lit(lit) = &expr {
        return Err(syn::Error::new(lit.span(), HELP));
    }
    Ok(Manager::Expr(Box::new(expr)))
}

fn parse_name(input: ParseStream) -> syn::Result<LitStr> {
    const HELP: &str = "`name` takes a string literal, e.g. `name = \"orders::place\"` (default: the module path and function name)";
    if input.peek(LitStr) {
        return input.parse();
    }
    let span = if input.is_empty() || input.peek(Token![,]) {
        input.span()
    } else {
        input.parse::<TokenTree>()?.span()
    };
    Err(syn::Error::new(span, HELP))
}

/// Skips the rest of a bad value, up to the next `,`, so later keys are still checked.
fn skip_value(input: ParseStream) {
    while !input.is_empty() && !input.peek(Token![,]) {
        if input.parse::<TokenTree>().is_err() {
            break;
        }
    }
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors: Option<syn::Error> = None;
        let mut push = |e: syn::Error| match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        };
        let mut seen: Vec<String> = Vec::new();

        while !input.is_empty() {
            if !input.peek(Ident::peek_any) {
                let tt: TokenTree = input.parse()?;
                let mut msg = format!("expected `key = value`; the valid keys are {}", keys_list());
                if let TokenTree::Ident(_) | TokenTree::Literal(_) = &tt {
                    msg.push_str(", e.g. `#[transactional(propagation = RequiresNew)]`");
                }
                push(syn::Error::new(tt.span(), msg));
                skip_value(input);
            } else {
                let key = input.call(Ident::parse_any)?;
                let key_str = key.to_string();
                let known = KEYS.contains(&key_str.as_str());
                let duplicate = known && seen.contains(&key_str);
                if !known {
                    let hint = key_hint(&key_str)
                        .map(|k| format!("; did you mean `{k}`?"))
                        .unwrap_or_default();
                    push(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown key `{key_str}` in #[transactional]{hint}\nthe valid keys are {}",
                            keys_list()
                        ),
                    ));
                } else if duplicate {
                    push(syn::Error::new(
                        key.span(),
                        format!("duplicate key `{key_str}`: each key may be given only once"),
                    ));
                }
                seen.push(key_str.clone());

                let has_eq = input.peek(Token![=]);
                if has_eq {
                    input.parse::<Token![=]>()?;
                }
                if !known || duplicate {
                    skip_value(input);
                } else if !has_eq && key_str != "read_only" {
                    push(syn::Error::new(
                        key.span(),
                        format!("`{key_str}` needs a value: `{key_str} = ...`"),
                    ));
                    skip_value(input);
                } else {
                    let result: syn::Result<()> = (|| {
                        match key_str.as_str() {
                            "propagation" => {
                                args.propagation = Some(parse_enum_value(
                                    input,
                                    "propagation",
                                    "Propagation",
                                    PROPAGATIONS,
                                    "Required",
                                )?);
                            }
                            "isolation" => {
                                args.isolation = Some(parse_enum_value(
                                    input,
                                    "isolation",
                                    "Isolation",
                                    ISOLATIONS,
                                    "Default",
                                )?);
                            }
                            "timeout" => args.timeout_ms = Some(parse_timeout(input)?),
                            "read_only" => {
                                args.read_only = Some(if has_eq {
                                    parse_read_only(input)?
                                } else {
                                    true
                                });
                            }
                            "rollback_for" => {
                                args.rollback_for = Some(parse_pattern(input, "rollback_for")?);
                            }
                            "no_rollback_for" => {
                                args.no_rollback_for =
                                    Some(parse_pattern(input, "no_rollback_for")?);
                            }
                            "manager" => args.manager = Some(parse_manager(input)?),
                            "name" => args.name = Some(parse_name(input)?),
                            "retry" => args.retry = Some((parse_retry(input)?, key.span())),
                            _ => unreachable!("every key of KEYS is handled"),
                        }
                        if !input.is_empty() && !input.peek(Token![,]) {
                            return Err(input.error(format!(
                                "unexpected token after the value of `{key_str}`; separate keys with `,`"
                            )));
                        }
                        Ok(())
                    })();
                    if let Err(e) = result {
                        push(e);
                        skip_value(input);
                    }
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        match errors {
            Some(e) => Err(e),
            None => Ok(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
