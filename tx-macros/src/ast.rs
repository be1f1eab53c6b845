//! The typed view of what the attribute is given: its keys ([`Args`]) and the function it is
//! on ([`Function`]: receiver, return type, error type). Built without judging anything; the
//! rules are in `valid`, the code in `expand`.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{
    AttrStyle, Attribute, Block, Expr, FnArg, GenericArgument, Ident, LitStr, Pat, PathArguments,
    ReturnType, Signature, Type, Visibility,
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

/// A free function or a method given to the attribute alone: its signature is parsed, its
/// body is kept as tokens. The body is handed to the compiler as written, so parsing it here
/// would only be done twice (and the macro runs unoptimized in a dev build).
pub(crate) struct FnItem {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    /// What is inside the braces.
    pub(crate) body: TokenStream,
}

impl Parse for FnItem {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body = match input.parse::<Group>()? {
            g if g.delimiter() == Delimiter::Brace => g.stream(),
            g => return Err(syn::Error::new(g.span(), "expected a function body")),
        };
        Ok(FnItem {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

/// One function the attribute applies to, as written.
pub(crate) struct Function<'a> {
    /// Its outer attributes.
    pub(crate) attrs: Vec<Attribute>,
    /// Its signature, as parsed.
    pub(crate) sig: &'a Signature,
    /// Its body, as tokens.
    pub(crate) body: Body,
    /// It is a method of an annotated `impl` block (so it is named `Type::method`).
    pub(crate) in_impl: bool,
}

/// A function's body as tokens: what the expansion puts back around the engine call.
pub(crate) struct Body {
    /// The inner attributes at its start (`#![allow(..)]`).
    pub(crate) inner_attrs: TokenStream,
    /// Its statements.
    pub(crate) stmts: TokenStream,
}

impl<'a> Function<'a> {
    /// A function whose body is still tokens (see [`FnItem`]).
    pub(crate) fn from_tokens(item: &'a FnItem) -> Self {
        Function {
            attrs: item.attrs.clone(),
            sig: &item.sig,
            body: split_inner_attrs(&item.body),
            in_impl: false,
        }
    }

    /// A function parsed with its body (a method of an annotated `impl` block), whose
    /// `attrs` hold the outer and the inner attributes.
    pub(crate) fn parsed(
        attrs: &[Attribute],
        sig: &'a Signature,
        block: &Block,
        in_impl: bool,
    ) -> Self {
        let (outer, inner): (Vec<&Attribute>, Vec<&Attribute>) = attrs
            .iter()
            .partition(|a| matches!(a.style, AttrStyle::Outer));
        let mut inner_attrs = TokenStream::new();
        inner_attrs.extend(inner.into_iter().map(ToTokens::to_token_stream));
        let mut stmts = TokenStream::new();
        stmts.extend(block.stmts.iter().map(ToTokens::to_token_stream));
        Function {
            attrs: outer.into_iter().cloned().collect(),
            sig,
            body: Body { inner_attrs, stmts },
            in_impl,
        }
    }

    /// How it takes `self`.
    pub(crate) fn receiver(&self) -> Receiver {
        Receiver::of(self.sig)
    }
}

/// Splits the inner attributes (`#![..]`, each three token trees) off the start of a body.
fn split_inner_attrs(body: &TokenStream) -> Body {
    let trees: Vec<TokenTree> = body.clone().into_iter().collect();
    let mut at = 0;
    while let [
        TokenTree::Punct(hash),
        TokenTree::Punct(bang),
        TokenTree::Group(g),
        ..,
    ] = &trees[at..]
        && hash.as_char() == '#'
        && bang.as_char() == '!'
        && g.delimiter() == Delimiter::Bracket
    {
        at += 3;
    }
    if at == 0 {
        return Body {
            inner_attrs: TokenStream::new(),
            stmts: body.clone(),
        };
    }
    let mut trees = trees.into_iter();
    Body {
        inner_attrs: trees.by_ref().take(at).collect(),
        stmts: trees.collect(),
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
