//! Every rejection of `#[transactional]`, in the order of the "Compile-time errors" section of
//! the attribute's docs: where it is, the function, the keys, and each key's value. Each error
//! points at the offending token and says what is allowed.
//!
//! The value rules parse as they check (a value is read the way its key needs: a name, a
//! duration, a pattern, ...); `attr` calls them for each key, `expand` calls the others before
//! generating anything. What only the compiler can see on the expansion (`E: From<TxError>`,
//! `Clone` under `retry`, patterns against `E`) is worded by `tx_core::__private`.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprLit, ExprUnary, FnArg, Ident, Item, Lit, LitStr, Pat, ReturnType, Token, Type, UnOp,
};

use crate::ast::{Args, Function, Manager, Receiver, ResultType, result_parts};
use crate::helpers::{
    edit_distance, is_transactional_attr, looks_like_bodyless_fn, tidy, unwrap_type,
};

// ---- what the attribute is on ------------------------------------------------------------

const BODYLESS: &str = "#[transactional] needs a function with a body: put it on the `async fn` of an impl (or on a trait method's default body), not on a declaration";

const WHERE_IT_GOES: &str = "it goes on an `async fn` returning `Result<T, E>` (with `E: From<TxError>`), or on an `impl` block to make it the default for the block's `async fn`s returning `Result`";

/// The attribute on an item that is neither a function nor an `impl` block.
pub(crate) fn not_a_fn(item: &Item) -> syn::Error {
    let (what, span): (&str, Span) = match item {
        Item::Struct(s) => ("a struct", s.struct_token.span),
        Item::Enum(e) => ("an enum", e.enum_token.span),
        Item::Union(u) => ("a union", u.union_token.span),
        Item::Const(c) => ("a const", c.const_token.span),
        Item::Static(s) => ("a static", s.static_token.span),
        Item::Trait(t) => (
            "a trait definition (annotate the `async fn`s of its impls, or a method's default body)",
            t.trait_token.span,
        ),
        Item::Mod(m) => ("a module", m.mod_token.span),
        Item::Type(t) => ("a type alias", t.type_token.span),
        Item::Use(u) => ("a `use` declaration", u.use_token.span),
        Item::ExternCrate(e) => ("an `extern crate`", e.extern_token.span),
        Item::ForeignMod(f) => ("an `extern` block", f.abi.extern_token.span),
        Item::Macro(m) => ("a macro", m.mac.path.span()),
        Item::TraitAlias(t) => ("a trait alias", t.trait_token.span),
        Item::Verbatim(tokens) if looks_like_bodyless_fn(tokens) => {
            let span = tokens
                .clone()
                .into_iter()
                .find(|t| matches!(t, TokenTree::Ident(i) if i == "fn"))
                .map_or_else(|| item.span(), |t| t.span());
            return syn::Error::new(span, BODYLESS);
        }
        other => ("this item", other.span()),
    };
    syn::Error::new(
        span,
        format!("#[transactional] cannot be applied to {what}: {WHERE_IT_GOES}"),
    )
}

/// The item did not parse (a declaration without a body, or something else).
pub(crate) fn unparseable(item: &TokenStream, e: &syn::Error) -> syn::Error {
    let msg = if looks_like_bodyless_fn(item) {
        BODYLESS.to_owned()
    } else {
        format!("#[transactional] could not parse this item: {e}")
    };
    syn::Error::new(e.span(), msg)
}

/// A method's own attribute in an annotated block written `#[transactional = ..]`.
pub(crate) fn keys_not_in_parentheses(nv: &syn::MetaNameValue) -> syn::Error {
    syn::Error::new_spanned(
        &nv.value,
        "#[transactional] takes its keys in parentheses: `#[transactional(key = value, ...)]`",
    )
}

// ---- the function --------------------------------------------------------------------------

/// The rules for one function: given once, `async`, returning a `Result` (whose type it
/// returns), and with `retry`, no exclusive borrow among its parameters. `E: From<TxError>`,
/// `Clone` parameters under `retry` and patterns that must match `E` are checked by the
/// compiler on the expansion, with messages set in `tx_core::__private`.
pub(crate) fn function<'a>(f: &Function<'a>, args: &Args) -> syn::Result<ResultType<'a>> {
    let sig = f.sig;
    if let Some(dup) = f.attrs.iter().find(|a| is_transactional_attr(a)) {
        return Err(syn::Error::new_spanned(
            dup,
            "#[transactional] is given twice on this function; merge the two attributes into one",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            format!(
                "#[transactional] needs an `async fn`: the transaction is bound to the call's future; make `{}` async",
                sig.ident.unraw()
            ),
        ));
    }
    let (Some(err), ReturnType::Type(_, ty)) = (result_parts(&sig.output), &sig.output) else {
        let name = sig.ident.unraw();
        let what = "#[transactional] needs a function returning `Result<T, E>` with `E: From<TxError>` (an `Err` is what rolls the transaction back)";
        return Err(match &sig.output {
            ReturnType::Default => {
                syn::Error::new(sig.ident.span(), format!("{what}; `{name}` returns `()`"))
            }
            ReturnType::Type(_, ty) => {
                syn::Error::new_spanned(ty, format!("{what}; `{name}` returns `{}`", tidy(ty)))
            }
        });
    };
    if let Some((n, retry_span)) = args.retry
        && n > 0
    {
        retry_borrows(f, retry_span)?;
    }
    Ok(ResultType { ty, err })
}

/// `retry` with `&mut self` or a `&mut` parameter: one exclusive borrow cannot be handed to
/// several attempts.
fn retry_borrows(f: &Function<'_>, retry_span: Span) -> syn::Result<()> {
    let requested = || syn::Error::new(retry_span, "`retry` is requested here");
    if f.receiver() == Receiver::RefMut {
        let receiver_tokens = match f.sig.inputs.first() {
            Some(FnArg::Receiver(r)) => quote::ToTokens::to_token_stream(r),
            _ => quote::ToTokens::to_token_stream(&f.sig.ident),
        };
        let mut e = syn::Error::new_spanned(
            receiver_tokens,
            "`retry` cannot be used with `&mut self`: each attempt runs a fresh body future, and an exclusive borrow cannot be handed to more than one; take `&self` (with interior mutability for state), or drop `retry`",
        );
        e.combine(requested());
        return Err(e);
    }
    for input in &f.sig.inputs {
        let FnArg::Typed(pt) = input else { continue };
        if let Type::Reference(tr) = unwrap_type(&pt.ty)
            && tr.mutability.is_some()
        {
            let mut e = syn::Error::new_spanned(
                &pt.ty,
                "`retry` cannot be used with a `&mut` parameter: each attempt runs a fresh body future, and an exclusive borrow cannot be handed to more than one; pass it by value (it is cloned per attempt) or drop `retry`",
            );
            e.combine(requested());
            return Err(e);
        }
    }
    Ok(())
}

/// A method of an annotated block without a `self` receiver whose manager (its own attribute's,
/// inherited, or the block's) is an expression of `self`.
pub(crate) fn method_manager(sig: &syn::Signature, args: &Args, own: bool) -> syn::Result<()> {
    let has_receiver = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
    if has_receiver || !args.manager_uses_self() {
        return Ok(());
    }
    let name = sig.ident.unraw();
    let whose = if own {
        "its #[transactional] inherits the impl block's manager"
    } else {
        "the impl block's #[transactional] takes its manager"
    };
    Err(syn::Error::new(
        sig.ident.span(),
        format!(
            "{whose} from `self`, but `{name}` has no `self` receiver; give `{name}` its own #[transactional(manager = ...)] or move it to another impl block"
        ),
    ))
}

// ---- the keys ----------------------------------------------------------------------------

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

/// Something other than a key where a key is expected.
pub(crate) fn not_key_value(tt: &TokenTree) -> syn::Error {
    let mut msg = format!("expected `key = value`; the valid keys are {}", keys_list());
    if let TokenTree::Ident(_) | TokenTree::Literal(_) = tt {
        msg.push_str(", e.g. `#[transactional(propagation = RequiresNew)]`");
    }
    syn::Error::new(tt.span(), msg)
}

/// A key that is not one of [`KEYS`], with a "did you mean" for known spellings.
pub(crate) fn unknown_key(key: &Ident) -> syn::Error {
    let key_str = key.to_string();
    let hint = key_hint(&key_str)
        .map(|k| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    syn::Error::new(
        key.span(),
        format!(
            "unknown key `{key_str}` in #[transactional]{hint}\nthe valid keys are {}",
            keys_list()
        ),
    )
}

/// A key given a second time.
pub(crate) fn duplicate_key(key: &Ident) -> syn::Error {
    syn::Error::new(
        key.span(),
        format!("duplicate key `{key}`: each key may be given only once"),
    )
}

/// A key other than `read_only` without `= value`.
pub(crate) fn needs_value(key: &Ident) -> syn::Error {
    syn::Error::new(key.span(), format!("`{key}` needs a value: `{key} = ...`"))
}

/// More tokens after a value, before the next `,`.
pub(crate) fn after_value(input: ParseStream, key: &Ident) -> syn::Error {
    input.error(format!(
        "unexpected token after the value of `{key}`; separate keys with `,`"
    ))
}

// ---- the values --------------------------------------------------------------------------

/// `propagation = RequiresNew` / `REQUIRES_NEW` / `Propagation::RequiresNew`.
pub(crate) fn propagation(input: ParseStream) -> syn::Result<(&'static str, Span)> {
    parse_enum_value(
        input,
        "propagation",
        "Propagation",
        PROPAGATIONS,
        "Required",
    )
}

/// `isolation = Serializable` / `SERIALIZABLE` / `Isolation::Serializable`.
pub(crate) fn isolation(input: ParseStream) -> syn::Result<(&'static str, Span)> {
    parse_enum_value(input, "isolation", "Isolation", ISOLATIONS, "Default")
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

/// A value read as an expression; `help` when it is none.
fn value_expr(input: ParseStream, help: &str) -> syn::Result<Expr> {
    input.parse().map_err(|e| syn::Error::new(e.span(), help))
}

/// `-N` where a count or a duration is expected.
fn is_negative(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            ..
        })
    )
}

/// `timeout = 5` (seconds) or `timeout = "250ms"`: milliseconds, greater than zero.
pub(crate) fn timeout(input: ParseStream) -> syn::Result<(u64, Span)> {
    let expr = value_expr(input, TIMEOUT_HELP)?;
    let fail = |msg: String| syn::Error::new_spanned(&expr, msg);
    let ms = match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            let secs: u64 = int
                .base10_parse()
                .map_err(|_| fail(format!("invalid timeout: {TIMEOUT_HELP}")))?;
            secs.checked_mul(1_000)
                .ok_or_else(|| fail("timeout is too large".to_owned()))?
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => parse_duration_ms(&s.value()).map_err(|why| {
            fail(format!(
                "cannot parse timeout {:?}: {why}\n{TIMEOUT_HELP}",
                s.value()
            ))
        })?,
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => {
            return Err(fail(format!(
                "timeout seconds must be a whole number; for fractions write milliseconds, e.g. `timeout = \"1500ms\"`\n{TIMEOUT_HELP}"
            )));
        }
        _ if is_negative(&expr) => {
            return Err(fail(format!("timeout cannot be negative: {TIMEOUT_HELP}")));
        }
        _ => return Err(fail(TIMEOUT_HELP.to_owned())),
    };
    if ms == 0 {
        return Err(fail(format!(
            "timeout must be greater than zero: {TIMEOUT_HELP}; leave `timeout` out for no deadline"
        )));
    }
    Ok((ms, expr.span()))
}

const RETRY_HELP: &str = "`retry` takes a non-negative integer: how many times to re-run the call after a retryable failure (serialization failure, deadlock), e.g. `retry = 5`";

/// `retry = 3`: a non-negative integer.
pub(crate) fn retry(input: ParseStream) -> syn::Result<u32> {
    let expr = value_expr(input, RETRY_HELP)?;
    let message = match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u32>() {
            Ok(n) => return Ok(n),
            Err(_) => format!("invalid retry count: {RETRY_HELP}"),
        },
        _ if is_negative(&expr) => format!("retry count cannot be negative: {RETRY_HELP}"),
        _ => RETRY_HELP.to_owned(),
    };
    Err(syn::Error::new_spanned(&expr, message))
}

/// `read_only = true` / `false` (`read_only` alone is handled by `attr`).
pub(crate) fn read_only(input: ParseStream) -> syn::Result<bool> {
    const HELP: &str =
        "`read_only` takes `true` or `false` (`read_only` alone means `read_only = true`)";
    match value_expr(input, HELP)? {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(other, HELP)),
    }
}

/// `rollback_for = PATTERN` / `no_rollback_for = PATTERN`.
pub(crate) fn pattern(input: ParseStream, key: &str) -> syn::Result<Pat> {
    let help = format!(
        "`{key}` takes a pattern over the function's error type, `|` allowed, e.g. `{key} = AppError::RiskRejected {{ .. }} | AppError::OutOfStock(_)`"
    );
    if input.is_empty() || input.peek(Token![,]) {
        return Err(input.error(help));
    }
    Pat::parse_multi_with_leading_vert(input).map_err(|e| syn::Error::new(e.span(), help))
}

/// `manager = "name"` or `manager = EXPR`.
pub(crate) fn manager(input: ParseStream) -> syn::Result<Manager> {
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

/// `name = "..."`.
pub(crate) fn name(input: ParseStream) -> syn::Result<LitStr> {
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
