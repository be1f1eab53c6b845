//! The typed view of what the attribute is given: its keys ([`Args`]) and the function it is
//! on ([`Function`]: receiver, return type, error type). Built without judging anything; the
//! rules are in `valid`, the code in `expand`.

use proc_macro2::Span;
use syn::{
    Attribute, Block, Expr, FnArg, GenericArgument, Ident, LitStr, Pat, PathArguments, ReturnType,
    Signature, Type,
};

use crate::helpers::{tokens_mention, unwrap_type};

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
            Some(Manager::Expr(e)) => {
                tokens_mention(quote::ToTokens::to_token_stream(e), &mut |i: &Ident| {
                    i == "self"
                })
            }
            _ => false,
        }
    }
}

/// How a method receives `self`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receiver {
    /// A free function or an associated function.
    None,
    /// `&self`.
    Ref,
    /// `&mut self`.
    RefMut,
    /// `self`, `mut self`, `self: Arc<Self>`, ...
    Value,
}

impl Receiver {
    /// How `sig` receives `self`.
    pub(crate) fn of(sig: &Signature) -> Self {
        match sig.inputs.first() {
            Some(FnArg::Receiver(r)) => match unwrap_type(&r.ty) {
                Type::Reference(tr) if tr.mutability.is_some() => Receiver::RefMut,
                Type::Reference(_) => Receiver::Ref,
                _ => Receiver::Value,
            },
            _ => Receiver::None,
        }
    }
}

/// One function the attribute applies to, as written.
pub(crate) struct Function<'a> {
    /// Its attributes, outer and inner.
    pub(crate) attrs: &'a [Attribute],
    pub(crate) sig: &'a Signature,
    pub(crate) block: &'a Block,
    /// It is a method of an annotated `impl` block (so it is named `Type::method`).
    pub(crate) in_impl: bool,
    pub(crate) receiver: Receiver,
}

impl<'a> Function<'a> {
    pub(crate) fn new(
        attrs: &'a [Attribute],
        sig: &'a Signature,
        block: &'a Block,
        in_impl: bool,
    ) -> Self {
        Function {
            attrs,
            sig,
            block,
            in_impl,
            receiver: Receiver::of(sig),
        }
    }
}

/// The return type of a function accepted by `valid`: `Result<T, E>` or an alias of one.
#[derive(Clone, Copy)]
pub(crate) struct ResultType<'a> {
    /// The declared return type.
    pub(crate) ty: &'a Type,
    /// `E` when written out (`Result<T, E>`); `None` for an alias (`io::Result<T>`).
    pub(crate) err: Option<&'a Type>,
}

/// Whether an `impl` block's attribute takes a method with this return type: `Result<..>`
/// under any path (`std::result::Result<T, E>`, `io::Result<T>`), or an alias with type
/// parameters whose name ends in `Result` (`AppResult<T>`). A type that is merely named
/// `...Result` (sqlx's `PgQueryResult`) is not a `Result`, and the method is left alone.
pub(crate) fn returns_result_in_impl(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    let Type::Path(tp) = unwrap_type(ty) else {
        return false;
    };
    let Some(last) = tp.path.segments.last() else {
        return false;
    };
    let has_type_params = matches!(&last.arguments, PathArguments::AngleBracketed(ab)
        if ab.args.iter().any(|a| matches!(a, GenericArgument::Type(_))));
    last.ident == "Result" || (has_type_params && last.ident.to_string().ends_with("Result"))
}

/// For `Result<T, E>` (any path ending in `Result`): `Some(Some(E))`; for an alias with one
/// parameter (`io::Result<T>`): `Some(None)`; otherwise `None`.
pub(crate) fn result_parts(output: &ReturnType) -> Option<Option<&Type>> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(tp) = unwrap_type(ty) else {
        return None;
    };
    let last = tp.path.segments.last()?;
    if !last.ident.to_string().ends_with("Result") {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(ab) => {
            let tys: Vec<&Type> = ab
                .args
                .iter()
                .filter_map(|a| match a {
                    GenericArgument::Type(t) => Some(t),
                    _ => None,
                })
                .collect();
            Some(if tys.len() == 2 { Some(tys[1]) } else { None })
        }
        _ => Some(None),
    }
}
