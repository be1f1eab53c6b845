//! Code generation: turns an annotated `async fn` (or every `async fn` of an annotated `impl`
//! block) into a thin call of `__private::transactional` / `__private::transactional_retry`.
//!
//! No transaction logic lives here: the expansion builds a `static` definition, picks the
//! manager, writes the rollback rule as a `fn(&E) -> bool` and hands the body future over.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{
    AttrStyle, Attribute, Block, FnArg, GenericArgument, ImplItem, Item, Pat, PathArguments,
    ReturnType, Signature, Type,
};

use crate::args::{Args, Manager};

/// Entry point shared by the proc-macro and the unit tests. `private` is the path of the
/// runtime module (`::tx_sqlx::__private` or `::tx_core::__private`).
pub(crate) fn expand(args: TokenStream, item: TokenStream, private: &TokenStream) -> TokenStream {
    let args = match syn::parse2::<Args>(args) {
        Ok(args) => args,
        Err(e) => return with_item(e, item),
    };
    let parsed = match syn::parse2::<Item>(item.clone()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let msg = if looks_like_bodyless_fn(&item) {
                BODYLESS.to_owned()
            } else {
                format!("#[transactional] could not parse this item: {e}")
            };
            return with_item(syn::Error::new(e.span(), msg), item);
        }
    };
    let result = match parsed {
        Item::Fn(f) => expand_fn(&args, &f.attrs, &f.sig, &f.block, private, false).map(
            |(attrs, sig, block)| {
                let vis = &f.vis;
                quote!(#(#attrs)* #vis #sig #block)
            },
        ),
        Item::Impl(imp) => Ok(expand_impl(&args, imp, private)),
        other => Err(not_a_fn(&other)),
    };
    match result {
        Ok(tokens) => tokens,
        Err(e) => with_item(e, item),
    }
}

/// The error, plus the item unchanged so that the rest of the crate reports nothing else.
fn with_item(err: syn::Error, item: TokenStream) -> TokenStream {
    let mut out = err.to_compile_error();
    out.extend(item);
    out
}

fn looks_like_bodyless_fn(item: &TokenStream) -> bool {
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let has_fn = tokens
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i == "fn"));
    let ends_semi = matches!(tokens.last(), Some(TokenTree::Punct(p)) if p.as_char() == ';');
    has_fn && ends_semi
}

const BODYLESS: &str = "#[transactional] needs a function with a body: put it on the `async fn` of an impl (or on a trait method's default body), not on a declaration";

const WHERE_IT_GOES: &str = "it goes on an `async fn` returning `Result<T, E>` (with `E: From<TxError>`), or on an `impl` block to make it the default for the block's `async fn`s returning `Result`";

fn not_a_fn(item: &Item) -> syn::Error {
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

fn is_transactional_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "transactional")
}

/// `#[transactional(...)] impl ... { ... }`: the default for every `async fn` returning a
/// `Result` in the block. A method's own `#[transactional(...)]` replaces the block's keys,
/// except `manager`, which it inherits when it names none (Spring's method-level annotation
/// keeps the class's transaction manager). Both are expanded here, so the method's attribute
/// sees the block's manager.
///
/// Errors are reported once each, next to the block with every other method expanded, so a
/// mistake in one method does not hide the others' or repeat itself.
fn expand_impl(args: &Args, mut imp: syn::ItemImpl, private: &TokenStream) -> TokenStream {
    let mut errors: Option<syn::Error> = None;
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let own_args;
        let (args, own) = match f.attrs.iter().position(is_transactional_attr) {
            Some(at) => {
                let attr = f.attrs.remove(at);
                match method_args(&attr, args) {
                    Ok(a) => {
                        own_args = a;
                        (&own_args, true)
                    }
                    Err(e) => {
                        combine(&mut errors, e);
                        continue;
                    }
                }
            }
            None if f.sig.asyncness.is_none() || !returns_result_in_impl(&f.sig.output) => {
                continue; // Spring's class-level annotation also only concerns transactional methods
            }
            None => (args, false),
        };
        let has_receiver = matches!(f.sig.inputs.first(), Some(FnArg::Receiver(_)));
        let res = if !has_receiver && args.manager_uses_self() {
            let name = f.sig.ident.unraw();
            let whose = if own {
                "its #[transactional] inherits the impl block's manager"
            } else {
                "the impl block's #[transactional] takes its manager"
            };
            Err(syn::Error::new(
                f.sig.ident.span(),
                format!(
                    "{whose} from `self`, but `{name}` has no `self` receiver; give `{name}` its own #[transactional(manager = ...)] or move it to another impl block"
                ),
            ))
        } else {
            expand_fn(args, &f.attrs, &f.sig, &f.block, private, true)
        };
        match res {
            Ok((attrs, sig, block)) => {
                f.attrs = attrs;
                f.sig = sig;
                f.block = block;
            }
            Err(e) => combine(&mut errors, e),
        }
    }
    let mut out = errors.map_or_else(TokenStream::new, |e| e.to_compile_error());
    out.extend(imp.into_token_stream());
    out
}

fn combine(errors: &mut Option<syn::Error>, e: syn::Error) {
    match errors {
        Some(all) => all.combine(e),
        None => *errors = Some(e),
    }
}

/// The keys of a method's own `#[transactional(...)]` inside an annotated block, with the
/// block's `manager` when the method names none.
fn method_args(attr: &Attribute, block: &Args) -> syn::Result<Args> {
    let mut args = match &attr.meta {
        syn::Meta::Path(_) => Args::default(),
        syn::Meta::List(list) => syn::parse2::<Args>(list.tokens.clone())?,
        syn::Meta::NameValue(nv) => {
            return Err(syn::Error::new_spanned(
                &nv.value,
                "#[transactional] takes its keys in parentheses: `#[transactional(key = value, ...)]`",
            ));
        }
    };
    if args.manager.is_none() {
        args.manager.clone_from(&block.manager);
    }
    Ok(args)
}

/// How a method receives `self`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    None,
    Ref,
    RefMut,
    Value,
}

/// `self.a.b...`: a field path of `self`, which a `&self` method can borrow for the whole call.
fn is_self_field(expr: &syn::Expr) -> bool {
    match expr {
        syn::Expr::Field(f) => is_self_field(&f.base) || is_self(&f.base),
        syn::Expr::Paren(p) => is_self_field(&p.expr),
        _ => false,
    }
}

fn is_self(expr: &syn::Expr) -> bool {
    matches!(expr, syn::Expr::Path(p) if p.qself.is_none() && p.path.is_ident("self"))
}

fn unwrap_type(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => unwrap_type(&g.elem),
        Type::Paren(p) => unwrap_type(&p.elem),
        other => other,
    }
}

/// Whether an `impl` block's attribute takes a method with this return type: `Result<..>`
/// under any path (`std::result::Result<T, E>`, `io::Result<T>`), or an alias with type
/// parameters whose name ends in `Result` (`AppResult<T>`). A type that is merely named
/// `...Result` (sqlx's `PgQueryResult`) is not a `Result`, and the method is left alone.
fn returns_result_in_impl(output: &ReturnType) -> bool {
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
fn result_parts(output: &ReturnType) -> Option<Option<&Type>> {
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

/// Whether a token stream mentions an identifier satisfying `pred` (also inside macro calls).
pub(crate) fn tokens_mention(tokens: TokenStream, pred: &mut dyn FnMut(&Ident) -> bool) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => pred(&i),
        TokenTree::Group(g) => tokens_mention(g.stream(), pred),
        _ => false,
    })
}

/// Whether a body uses the binding `name`: as an identifier, or captured by an inline format
/// argument (`format!("{name}")`, `"{name:?}"`), which the tokens only show inside a literal.
fn body_mentions(tokens: TokenStream, name: &Ident) -> bool {
    let name = name.to_string();
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == name,
        TokenTree::Group(g) => body_mentions(g.stream(), &Ident::new(&name, Span::call_site())),
        TokenTree::Literal(lit) => {
            let text = lit.to_string();
            [format!("{{{name}}}"), format!("{{{name}:")]
                .iter()
                .any(|pat| {
                    text.match_indices(pat.as_str())
                        .any(|(at, _)| !text[..at].ends_with('{'))
                })
        }
        TokenTree::Punct(_) => false,
    })
}

/// A type as the user wrote it, without the token printer's spaces (`Option<u32>`).
fn tidy(ty: &Type) -> String {
    let mut out = ty.to_token_stream().to_string();
    for (from, to) in [
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" , ", ", "),
        (" :: ", "::"),
        (":: ", "::"),
        ("& ", "&"),
    ] {
        out = out.replace(from, to);
    }
    out
}

fn contains_impl_trait(ty: &Type) -> bool {
    tokens_mention(ty.to_token_stream(), &mut |i| i == "impl")
}

/// One identifier bound by a parameter pattern.
struct Binding {
    ident: Ident,
    mutable: bool,
}

fn collect_bindings(pat: &Pat, out: &mut Vec<Binding>) {
    match pat {
        Pat::Ident(pi) => {
            out.push(Binding {
                ident: pi.ident.clone(),
                mutable: pi.mutability.is_some(),
            });
            if let Some((_, sub)) = &pi.subpat {
                collect_bindings(sub, out);
            }
        }
        Pat::Tuple(t) => t.elems.iter().for_each(|p| collect_bindings(p, out)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| collect_bindings(p, out)),
        Pat::Struct(s) => s.fields.iter().for_each(|f| collect_bindings(&f.pat, out)),
        Pat::Reference(r) => collect_bindings(&r.pat, out),
        Pat::Slice(s) => s.elems.iter().for_each(|p| collect_bindings(p, out)),
        Pat::Paren(p) => collect_bindings(&p.pat, out),
        Pat::Type(t) => collect_bindings(&t.pat, out),
        Pat::Or(o) => {
            if let Some(first) = o.cases.first() {
                collect_bindings(first, out);
            }
        }
        _ => {}
    }
}

/// Drops `mut` from the bindings of a parameter pattern whose names are in `names` (retry:
/// the per-attempt clone is the mutable one).
struct StripMut<'a>(&'a [Ident]);
impl VisitMut for StripMut<'_> {
    fn visit_pat_ident_mut(&mut self, pi: &mut syn::PatIdent) {
        if pi.by_ref.is_none() && self.0.contains(&pi.ident) {
            pi.mutability = None;
        }
        syn::visit_mut::visit_pat_ident_mut(self, pi);
    }
}

/// Renames `self` (the value, not `self::` paths) to `__tx_self` in a body, not descending into
/// nested items, which have their own `self`.
struct ReplaceSelf;
impl VisitMut for ReplaceSelf {
    fn visit_expr_path_mut(&mut self, e: &mut syn::ExprPath) {
        if e.qself.is_none() && e.path.leading_colon.is_none() && e.path.segments.len() == 1 {
            let seg = &mut e.path.segments[0];
            if seg.ident == "self" {
                seg.ident = Ident::new("__tx_self", seg.ident.span());
            }
        }
    }
    fn visit_item_mut(&mut self, _: &mut Item) {}
    fn visit_macro_mut(&mut self, m: &mut syn::Macro) {
        m.tokens = replace_self_tokens(std::mem::take(&mut m.tokens));
    }
}

fn replace_self_tokens(tokens: TokenStream) -> TokenStream {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::with_capacity(tts.len());
    for (i, tt) in tts.iter().enumerate() {
        match tt {
            TokenTree::Ident(id) if id == "self" => {
                let path_follows =
                    matches!(tts.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                if path_follows {
                    out.push(tt.clone());
                } else {
                    out.push(TokenTree::Ident(Ident::new("__tx_self", id.span())));
                }
            }
            TokenTree::Group(g) => {
                let mut ng = Group::new(g.delimiter(), replace_self_tokens(g.stream()));
                ng.set_span(g.span());
                out.push(TokenTree::Group(ng));
            }
            other => out.push(other.clone()),
        }
    }
    out.into_iter().collect()
}

/// With an alias return type, the call's `Result` is handed back as the declared type.
fn wrap_alias(alias: bool, ret_ty: &Type, span: Span, call: TokenStream) -> TokenStream {
    if alias {
        quote_spanned!(span=> <#ret_ty as __TxResult>::__tx_from(#call))
    } else {
        call
    }
}

/// Expands one function. Returns its outer attributes, its signature (unchanged except that
/// `retry` drops `mut` from parameters it clones per attempt) and the new body.
fn expand_fn(
    args: &Args,
    attrs: &[Attribute],
    sig: &Signature,
    block: &Block,
    private: &TokenStream,
    in_impl: bool,
) -> syn::Result<(Vec<Attribute>, Signature, Block)> {
    let p = private;
    if let Some(dup) = attrs.iter().find(|a| is_transactional_attr(a)) {
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
    let Some(err_ty) = result_parts(&sig.output) else {
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
    let ReturnType::Type(_, ret_ty) = &sig.output else {
        unreachable!("result_parts checked the return type")
    };

    let receiver = match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => match unwrap_type(&r.ty) {
            Type::Reference(tr) if tr.mutability.is_some() => Receiver::RefMut,
            Type::Reference(_) => Receiver::Ref,
            _ => Receiver::Value,
        },
        _ => Receiver::None,
    };
    let retry = args.retry.filter(|(n, _)| *n > 0);

    // ---- the static definition --------------------------------------------------------
    let def = Ident::new("__tx_definition", Span::mixed_site());
    let propagation = format_ident!("{}", args.propagation.map_or("Required", |p| p.0));
    let isolation = format_ident!("{}", args.isolation.map_or("Default", |p| p.0));
    let timeout = match args.timeout_ms {
        Some((ms, _)) => {
            quote!(::core::option::Option::Some(#p::Duration::from_millis(#ms)))
        }
        None => quote!(::core::option::Option::None),
    };
    let read_only = args.read_only.unwrap_or(false);
    // Default name: `Type::method` for a method, the module path and name for a free function.
    // A method's attribute cannot see its `impl`, so the type is read from the path of an item
    // declared here (`std::any::type_name`), once, when the definition is first used.
    let def_stmt = match &args.name {
        Some(lit) => quote! {
            let #def: &'static #p::TransactionDefinition = {
                static __TX_DEFINITION: #p::TransactionDefinition = #p::TransactionDefinition::__const(
                    #p::Propagation::#propagation,
                    #p::Isolation::#isolation,
                    #timeout,
                    #read_only,
                    #lit,
                );
                &__TX_DEFINITION
            };
        },
        None => {
            let fn_name = sig.ident.unraw().to_string();
            let method = in_impl
                || matches!(sig.inputs.first(), Some(FnArg::Receiver(_)))
                || tokens_mention(sig.to_token_stream(), &mut |i| i == "Self");
            let here = Ident::new("__tx_here", Span::mixed_site());
            let free_name = format!("::{fn_name}");
            quote! {
                let #def: &'static #p::TransactionDefinition = {
                    fn #here() {}
                    static __TX_DEFINITION: #p::LazyDefinition = #p::LazyDefinition::new(
                        #p::Propagation::#propagation,
                        #p::Isolation::#isolation,
                        #timeout,
                        #read_only,
                    );
                    __TX_DEFINITION.get(#here, ::core::concat!(::core::module_path!(), #free_name), #method)
                };
            }
        }
    };

    // ---- the manager ------------------------------------------------------------------
    let manager = Ident::new("__tx_manager", Span::mixed_site());
    // A method call, so that method resolution reaches the manager behind a reference or a smart
    // pointer (`db: &'a PgTxPool`, `Box<PgTxPool>`); see `__private::pick`.
    let manager_stmts = match &args.manager {
        None => quote!(let #manager = #p::ManagerRef::Default;),
        Some(Manager::Named(lit)) => quote!(let #manager = #p::ManagerRef::Named(#lit);),
        // `manager = self.a.b` on a `&self` method: borrowed, not cloned. This is every call's
        // hot path, and cloning a pool handle writes its reference count, one cache line
        // shared by every core.
        Some(Manager::Expr(expr)) if receiver == Receiver::Ref && is_self_field(expr) => {
            let span = expr.span();
            let pick = Ident::new("__tx_pick", span.resolved_at(Span::mixed_site()));
            quote_spanned! {span=>
                let #pick = #p::pick::Pick(&#expr);
                let #manager = {
                    use #p::pick::*;
                    (&#pick).__tx_manager_ref()
                };
            }
        }
        Some(Manager::Expr(expr)) => {
            // Evaluated once, before the body; cloning the handle (an `Arc` increment for a
            // `TxPool`) ends the borrow of `self` or of a parameter the body moves, so
            // `&mut self`, by-value `self` and `manager = db` work, and `db()` may return the
            // manager or a reference to it.
            let span = expr.span();
            let handle = Ident::new("__tx_manager_handle", span.resolved_at(Span::mixed_site()));
            let grouped = Group::new(Delimiter::Parenthesis, expr.to_token_stream());
            quote_spanned! {span=>
                #[allow(clippy::clone_on_copy, clippy::redundant_clone)]
                let #handle = #grouped.clone();
                let #handle = #p::pick::Pick(&#handle);
                let #manager = {
                    use #p::pick::*;
                    (&#handle).__tx_manager_ref()
                };
            }
        }
    };

    // ---- the rollback rule ------------------------------------------------------------
    // Written as a closure coerced to `fn(&E) -> bool`; a pattern that cannot match `E` is a
    // type error at the pattern.
    let err = Ident::new("__tx_err", Span::mixed_site());
    let err_param = match err_ty {
        Some(e) if !contains_impl_trait(e) => quote!(#err: &#e),
        _ => quote!(#err),
    };
    let rollback_on = match (&args.rollback_for, &args.no_rollback_for) {
        (None, None) => match err_ty {
            Some(e) if !contains_impl_trait(e) => quote!(|_: &#e| true),
            _ => quote!(|_| true),
        },
        (Some(r), None) => quote!(|#err_param| ::core::matches!(#err, #r)),
        (None, Some(n)) => quote!(|#err_param| !::core::matches!(#err, #n)),
        (Some(r), Some(n)) => {
            quote!(|#err_param| ::core::matches!(#err, #r) && !::core::matches!(#err, #n))
        }
    };

    let check_span = match err_ty {
        Some(e) if !contains_impl_trait(e) => e.span(),
        // an alias such as `io::Result<T>`: point at its name
        _ => match unwrap_type(ret_ty) {
            Type::Path(tp) => tp
                .path
                .segments
                .last()
                .map_or_else(|| ret_ty.span(), |s| s.ident.span()),
            other => other.span(),
        },
    };

    // ---- the retry classifier ---------------------------------------------------------
    // Whether an error is, or carries, a retryable failure: decided here, where the error type
    // is known, by autoref specialisation (an engine or driver error, else any `Error`'s
    // source chain, else nothing to see).
    let classify = match err_ty {
        Some(e) if !contains_impl_trait(e) => Some(quote!(#e)),
        _ if !contains_impl_trait(ret_ty) => Some(quote!(<#ret_ty as __TxResult>::Error)),
        _ => None,
    }
    .map_or_else(
        || quote!(#p::opaque),
        |e| {
            quote! {
                |#err: &#e| {
                    #[allow(unused_imports)]
                    use #p::{ViaEngineError as _, ViaNothing as _, ViaSource as _};
                    // The borrows pick the first applicable `Via*` impl.
                    #[allow(clippy::needless_borrow)]
                    let verdict = (&&&#p::Probe(#err)).__tx_verdict();
                    verdict
                }
            }
        },
    );

    // ---- the body ---------------------------------------------------------------------
    // The fake return fixes the async block's output type, so `?` and `return` inside the body
    // convert into the declared error type exactly as in the original function.
    // With an alias (`AppResult<T>`, or a type that is no `Result` at all) the types go through
    // `__TxResult`, so that a type that is not a `Result` is one error, at the type.
    let alias =
        !matches!(err_ty, Some(e) if !contains_impl_trait(e)) && !contains_impl_trait(ret_ty);
    let fake_ty = if alias {
        quote_spanned!(check_span=> ::core::result::Result<<#ret_ty as __TxResult>::Ok, <#ret_ty as __TxResult>::Error>)
    } else {
        ret_ty.to_token_stream()
    };
    let fake = Ident::new("__tx_fake_return", Span::mixed_site());
    let fake_return = if contains_impl_trait(ret_ty) {
        quote!()
    } else {
        quote! {
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::empty_loop,
                clippy::let_unit_value,
                clippy::let_with_type_underscore,
                clippy::needless_return,
                clippy::unreachable
            )]
            if false {
                let #fake: #fake_ty = loop {};
                return #fake;
            }
        }
    };

    // ---- the call ---------------------------------------------------------------------
    // `E: From<TxError>` is checked once, as `E: TransactionalError` (whose
    // `#[diagnostic::on_unimplemented]` says what to do), by a pass-through to the runtime; the
    // call is located at the error type so the message points there.
    let at_check = |name: &str| Ident::new(name, check_span.resolved_at(Span::mixed_site()));
    let (manager_l, def_l, make_l) = (
        at_check("__tx_manager"),
        at_check("__tx_definition"),
        at_check("__tx_make_body"),
    );
    let run = Ident::new("__tx_run", check_span);
    // The error type is named in a turbofish so the compiler reports the bound once, there.
    let (err_helper, turbofish) = match err_ty {
        Some(e) if !contains_impl_trait(e) => {
            (quote!(), quote_spanned!(check_span=> ::<_, #e, _, _>))
        }
        _ if !contains_impl_trait(ret_ty) => (
            quote_spanned! {check_span=>
                #[diagnostic::on_unimplemented(
                    message = "`{Self}` is not a `Result`: #[transactional] needs a function returning `Result<T, E>` with `E: From<TxError>`",
                    label = "not a `Result`",
                    note = "an `Err` is what rolls the transaction back; return a `Result` (or an alias of one), or drop #[transactional]"
                )]
                trait __TxResult: ::core::marker::Sized {
                    type Ok;
                    type Error;
                    fn __tx_from(r: ::core::result::Result<Self::Ok, Self::Error>) -> Self;
                }
                impl<T, E> __TxResult for ::core::result::Result<T, E> {
                    type Ok = T;
                    type Error = E;
                    fn __tx_from(r: Self) -> Self {
                        r
                    }
                }
            },
            quote_spanned!(check_span=> ::<_, <#ret_ty as __TxResult>::Error, _, _>),
        ),
        _ => (quote!(), quote!()),
    };
    let make = Ident::new("__tx_make_body", Span::mixed_site());
    let (outer_attrs, inner_attrs): (Vec<Attribute>, Vec<Attribute>) = attrs
        .iter()
        .cloned()
        .partition(|a| matches!(a.style, AttrStyle::Outer));
    let mut new_sig = sig.clone();

    // items first (helpers of this expansion), then the statements
    let (items, call) = match retry {
        None => {
            let stmts = &block.stmts;
            let items = quote_spanned! {check_span=>
                #[allow(clippy::future_not_send)] // Send exactly when the body's future is
                fn #run<'a, T: 'a, E: #p::TransactionalError + 'a, F, Fut>(
                    manager: #p::ManagerRef<'a>,
                    definition: &'static #p::TransactionDefinition,
                    rollback_on: fn(&E) -> bool,
                    make_body: F,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<T, E>> + 'a
                where
                    F: ::core::ops::FnOnce() -> Fut + 'a,
                    Fut: ::core::future::Future<Output = ::core::result::Result<T, E>> + 'a,
                {
                    #p::transactional(manager, definition, rollback_on, make_body)
                }
                #err_helper
            };
            let call = quote_spanned! {check_span=>
                #run #turbofish(#manager_l, #def_l, #rollback_on, #make_l).await
            };
            let call = wrap_alias(alias, ret_ty, check_span, call);
            (
                items,
                quote! {
                    let #make = move || async move {
                        #fake_return
                        #(#stmts)*
                    };
                    #call
                },
            )
        }
        Some((n, retry_span)) => {
            let mut clones = TokenStream::new();
            let retry_clone = Ident::new("__tx_retry_clone", Span::call_site());
            let mut body_block = block.clone();
            let body_tokens = block.to_token_stream();
            match receiver {
                Receiver::RefMut => {
                    let receiver_tokens = match sig.inputs.first() {
                        Some(FnArg::Receiver(r)) => r.to_token_stream(),
                        _ => sig.ident.to_token_stream(),
                    };
                    let mut e = syn::Error::new_spanned(
                        receiver_tokens,
                        "`retry` cannot be used with `&mut self`: each attempt runs a fresh body future, and an exclusive borrow cannot be handed to more than one; take `&self` (with interior mutability for state), or drop `retry`",
                    );
                    e.combine(syn::Error::new(retry_span, "`retry` is requested here"));
                    return Err(e);
                }
                Receiver::Value => {
                    let mutable = match sig.inputs.first() {
                        Some(FnArg::Receiver(r)) => r.mutability.is_some() && r.reference.is_none(),
                        _ => false,
                    };
                    if tokens_mention(body_tokens.clone(), &mut |i| i == "self") {
                        ReplaceSelf.visit_block_mut(&mut body_block);
                        let self_ident = Ident::new("__tx_self", Span::call_site());
                        let span = match sig.inputs.first() {
                            Some(FnArg::Receiver(r)) => r.ty.span(),
                            _ => Span::call_site(),
                        };
                        let m = mutable.then(|| quote!(mut));
                        let self_ty = match sig.inputs.first() {
                            Some(FnArg::Receiver(r)) => r.ty.to_token_stream(),
                            _ => quote!(Self),
                        };
                        clones.extend(quote_spanned! {span=>
                            let #m #self_ident = #retry_clone::<#self_ty>(&self);
                        });
                        if mutable && let Some(FnArg::Receiver(r)) = new_sig.inputs.first_mut() {
                            r.mutability = None;
                        }
                    }
                }
                Receiver::Ref | Receiver::None => {}
            }
            for (idx, input) in sig.inputs.iter().enumerate() {
                let FnArg::Typed(pt) = input else { continue };
                let ty = unwrap_type(&pt.ty);
                if let Type::Reference(tr) = ty {
                    if tr.mutability.is_some() {
                        let mut e = syn::Error::new_spanned(
                            &pt.ty,
                            "`retry` cannot be used with a `&mut` parameter: each attempt runs a fresh body future, and an exclusive borrow cannot be handed to more than one; pass it by value (it is cloned per attempt) or drop `retry`",
                        );
                        e.combine(syn::Error::new(retry_span, "`retry` is requested here"));
                        return Err(e);
                    }
                    if matches!(&*pt.pat, Pat::Ident(_)) {
                        continue; // a shared reference is `Copy`: every attempt gets it
                    }
                }
                let mut bindings = Vec::new();
                collect_bindings(&pt.pat, &mut bindings);
                let span = pt.ty.span();
                let mut strip_here = Vec::new();
                for b in bindings {
                    if !body_mentions(body_tokens.clone(), &b.ident) {
                        continue;
                    }
                    let ident = &b.ident;
                    let mut use_ident = ident.clone();
                    use_ident.set_span(span);
                    let m = b.mutable.then(|| quote!(mut));
                    // by-value parameters are cloned for each attempt (`retry` needs them `Clone`);
                    // the type is named when the parameter is a plain binding, so a missing
                    // `Clone` is reported once, at the type
                    let turbofish = match &*pt.pat {
                        // `impl Trait` cannot be named in a turbofish (E0562)
                        Pat::Ident(_) if !contains_impl_trait(&pt.ty) => {
                            let ty = &pt.ty;
                            quote_spanned!(span=> ::<#ty>)
                        }
                        _ => quote!(),
                    };
                    clones.extend(quote_spanned! {span=>
                        let #m #ident = #retry_clone #turbofish(&#use_ident);
                    });
                    if b.mutable {
                        strip_here.push(ident.clone());
                    }
                }
                if !strip_here.is_empty()
                    && let Some(FnArg::Typed(npt)) = new_sig.inputs.iter_mut().nth(idx)
                {
                    StripMut(&strip_here).visit_pat_mut(&mut npt.pat);
                }
            }
            let stmts = &body_block.stmts;
            let clone_helper = if clones.is_empty() {
                quote!()
            } else {
                quote! {
                    #[diagnostic::on_unimplemented(
                        message = "`retry` runs the body once per attempt, so a parameter of type `{Self}` taken by value must be `Clone`",
                        label = "cloned for each attempt of `retry`",
                        note = "derive or implement `Clone` for it, take it by reference, or drop `retry`"
                    )]
                    trait __TxRetryClone: ::core::clone::Clone {}
                    impl<T: ::core::clone::Clone> __TxRetryClone for T {}
                    fn #retry_clone<T: __TxRetryClone>(value: &T) -> T {
                        ::core::clone::Clone::clone(value)
                    }
                }
            };
            let items = quote_spanned! {check_span=>
                #[allow(clippy::future_not_send)] // Send exactly when the body's future is
                fn #run<'a, T: 'a, E: #p::TransactionalError + 'a, F, Fut>(
                    manager: #p::ManagerRef<'a>,
                    definition: &'static #p::TransactionDefinition,
                    retries: u32,
                    rollback_on: fn(&E) -> bool,
                    classify: fn(&E) -> #p::Verdict,
                    make_body: F,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<T, E>> + 'a
                where
                    F: ::core::ops::FnMut() -> Fut + 'a,
                    Fut: ::core::future::Future<Output = ::core::result::Result<T, E>> + 'a,
                {
                    #p::transactional_retry(manager, definition, retries, rollback_on, classify, make_body)
                }
                #err_helper
                #clone_helper
            };
            let call = quote_spanned! {check_span=>
                #run #turbofish(#manager_l, #def_l, #n, #rollback_on, #classify, #make_l).await
            };
            let call = wrap_alias(alias, ret_ty, check_span, call);
            (
                items,
                quote! {
                    let #make = move || {
                        #clones
                        async move {
                            #fake_return
                            #(#stmts)*
                        }
                    };
                    #call
                },
            )
        }
    };

    let new_block: Block = syn::parse2(quote! {
        {
            #(#inner_attrs)*
            #items
            #def_stmt
            #manager_stmts
            #call
        }
    })?;
    Ok((outer_attrs, new_sig, new_block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str, item: &str) -> String {
        let out = expand(
            args.parse().unwrap(),
            item.parse().unwrap(),
            &quote!(::tx_core::__private),
        );
        out.to_string()
    }

    #[test]
    fn free_fn_defaults() {
        let out = run(
            "",
            "pub async fn f(x: u32) -> Result<u32, AppError> { Ok(x) }",
        );
        assert!(
            out.contains("pub async fn f (x : u32) -> Result < u32 , AppError >"),
            "{out}"
        );
        assert!(out.contains("Propagation :: Required"), "{out}");
        assert!(out.contains("Isolation :: Default"), "{out}");
        assert!(
            out.contains(":: core :: option :: Option :: None , false"),
            "{out}"
        );
        assert!(out.contains("ManagerRef :: Default"), "{out}");
        assert!(out.contains("\"::f\") , false"), "{out}");
        assert!(
            out.contains(":: tx_core :: __private :: transactional ("),
            "{out}"
        );
        assert!(
            out.contains("E : :: tx_core :: __private :: TransactionalError"),
            "{out}"
        );
        assert!(out.contains("| _ : & AppError | true"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn self_field_manager_is_borrowed_on_shared_self_and_cloned_otherwise() {
        let shared = run(
            "manager = self.db",
            "async fn f(&self) -> Result<(), E> { Ok(()) }",
        );
        assert!(
            shared.contains("__tx_pick = :: tx_core :: __private :: pick :: Pick (& self . db)"),
            "{shared}"
        );
        assert!(!shared.contains(". clone ()"), "{shared}");
        let exclusive = run(
            "manager = self.db",
            "async fn f(&mut self) -> Result<(), E> { Ok(()) }",
        );
        assert!(exclusive.contains("(self . db) . clone ()"), "{exclusive}");
        let param = run(
            "manager = db",
            "async fn f(db: Pool) -> Result<(), E> { Ok(()) }",
        );
        assert!(param.contains("(db) . clone ()"), "{param}");
    }

    #[test]
    fn keys_reach_the_definition() {
        let out = run(
            "propagation = REQUIRES_NEW, isolation = SERIALIZABLE, timeout = \"1m30s\", read_only, name = \"n\", manager = \"orders\", no_rollback_for = AppError::A | AppError::B(_)",
            "async fn f() -> Result<(), AppError> { Ok(()) }",
        );
        assert!(out.contains("Propagation :: RequiresNew"), "{out}");
        assert!(out.contains("Isolation :: Serializable"), "{out}");
        assert!(out.contains("from_millis (90000u64)"), "{out}");
        assert!(out.contains(", true , \"n\""), "{out}");
        assert!(out.contains("ManagerRef :: Named (\"orders\")"), "{out}");
        assert!(
            out.contains("! :: core :: matches ! (__tx_err , AppError :: A | AppError :: B (_))"),
            "{out}"
        );
    }

    #[test]
    fn retry_clones_by_value_args_and_renames_self() {
        let out = run(
            "retry = 3, manager = self.db",
            "async fn f(self: Arc<Self>, mut a: String, b: &str, unused: Vec<u8>) -> Result<(), E> { a.push_str(b); self.g(a).await }",
        );
        assert!(out.contains("transactional_retry"), "{out}");
        assert!(
            out.contains("let __tx_self = __tx_retry_clone :: < Arc < Self > > (& self)"),
            "{out}"
        );
        assert!(
            out.contains("let mut a = __tx_retry_clone :: < String > (& a)"),
            "{out}"
        );
        assert!(!out.contains("clone (& b)"), "{out}");
        assert!(!out.contains("clone (& unused)"), "{out}");
        assert!(out.contains("__tx_self . g (a)"), "{out}");
        // the outer parameter loses `mut` (the per-attempt clone is the mutable one)
        assert!(out.contains("a : String"), "{out}");
        assert!(!out.contains("mut a : String"), "{out}");
    }

    #[test]
    fn retry_with_mut_self_is_an_error() {
        let out = run(
            "retry = 2",
            "async fn f(&mut self) -> Result<(), E> { Ok(()) }",
        );
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("`&mut self`"), "{out}");
    }

    #[test]
    fn impl_block_default_and_override() {
        let out = run(
            "read_only, manager = self.db",
            "impl S { async fn a(&self) -> Result<(), E> { Ok(()) } #[transactional(propagation = Never)] async fn b(&self) -> Result<(), E> { Ok(()) } #[transactional(manager = \"x\")] async fn c(&self) -> Result<(), E> { Ok(()) } fn d(&self) -> u8 { 1 } async fn e(&self) -> u8 { 1 } async fn f(&self) -> PgQueryResult { todo!() } }",
        );
        // a, b and c are expanded here (b's and c's own attributes are consumed), d, e, f are not
        assert_eq!(out.matches("LazyDefinition :: new").count(), 3, "{out}");
        assert!(!out.contains("# [transactional"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
        // a: the block's read_only; b: its own keys (not read-only) with the block's manager;
        // c: its own manager
        let defs: Vec<&str> = out.split("LazyDefinition :: new").skip(1).collect();
        assert!(
            defs[0].contains("Propagation :: Required") && defs[0].contains("None , true"),
            "{}",
            defs[0]
        );
        assert!(
            defs[1].contains("Propagation :: Never") && defs[1].contains("None , false"),
            "{}",
            defs[1]
        );
        assert_eq!(
            out.matches("__tx_pick = :: tx_core :: __private :: pick :: Pick (& self . db)")
                .count(),
            2,
            "{out}"
        );
        assert_eq!(
            out.matches("ManagerRef :: Named (\"x\")").count(),
            1,
            "{out}"
        );
        assert_eq!(out.matches("LazyDefinition :: new").count(), 3, "{out}");
    }

    #[test]
    fn default_name_is_read_once_per_function_and_a_given_name_is_const() {
        let out = run("", "async fn f() -> Result<(), E> { Ok(()) }");
        assert!(
            out.contains("static __TX_DEFINITION : :: tx_core :: __private :: LazyDefinition"),
            "{out}"
        );
        assert!(
            out.contains("concat ! (:: core :: module_path ! () , \"::f\") , false"),
            "{out}"
        );
        // a method is known as one from its receiver or from `Self`
        let out = run("", "async fn f(&self) -> Result<(), E> { Ok(()) }");
        assert!(out.contains("\"::f\") , true"), "{out}");
        let out = run("", "async fn f() -> Result<Self, E> { todo!() }");
        assert!(out.contains("\"::f\") , true"), "{out}");
        let out = run("name = \"n\"", "async fn f() -> Result<(), E> { Ok(()) }");
        assert!(!out.contains("LazyDefinition"), "{out}");
        assert!(
            out.contains(
                "static __TX_DEFINITION : :: tx_core :: __private :: TransactionDefinition ="
            ),
            "{out}"
        );
    }

    #[test]
    fn retry_with_impl_trait_parameters_names_no_type() {
        let out = run(
            "retry = 1",
            "async fn f(a: impl Clone + Display, b: &impl Display, c: String) -> Result<(), E> { let _ = (a, b, c); Ok(()) }",
        );
        assert!(out.contains("let a = __tx_retry_clone (& a)"), "{out}");
        assert!(
            out.contains("let c = __tx_retry_clone :: < String > (& c)"),
            "{out}"
        );
        assert!(!out.contains("clone (& b)"), "{out}");
    }

    #[test]
    fn misuse() {
        let e = run("", "fn f() -> Result<(), E> { Ok(()) }");
        assert!(e.contains("needs an `async fn`"), "{e}");
        let e = run("", "async fn f() -> u32 { 1 }");
        assert!(e.contains("returning `Result<T, E>`"), "{e}");
        let e = run("", "struct S;");
        assert!(e.contains("cannot be applied to a struct"), "{e}");
        let e = run("", "const C: u8 = 1;");
        assert!(e.contains("cannot be applied to a const"), "{e}");
        let e = run("", "async fn f(&self) -> Result<(), E>;");
        assert!(e.contains("needs a function with a body"), "{e}");
        let e = run(
            "manager = self.db",
            "impl S { async fn new() -> Result<Self, E> { todo!() } }",
        );
        assert!(e.contains("has no `self` receiver"), "{e}");
    }
}

/// The size of the expansion, in tokens (an identifier, punctuation mark, literal or delimited
/// group each counts one): the code every annotated function adds to its crate's compile time.
#[cfg(test)]
mod size {
    use super::*;

    fn count(tokens: TokenStream) -> usize {
        tokens
            .into_iter()
            .map(|tt| match tt {
                TokenTree::Group(g) => 1 + count(g.stream()),
                _ => 1,
            })
            .sum()
    }

    /// (what, attribute arguments, function, most tokens the expansion may add)
    const CASES: &[(&str, &str, &str, usize)] = &[
        (
            "plain free fn",
            "",
            "async fn f(x: u32) -> Result<u32, AppError> { Ok(x) }",
            450,
        ),
        (
            "&self, manager = self.db",
            "manager = self.db",
            "async fn f(&self, x: u32) -> Result<u32, AppError> { Ok(x) }",
            480,
        ),
        (
            "every key",
            "propagation = RequiresNew, isolation = Serializable, timeout = \"2s\", read_only, no_rollback_for = AppError::Warn, manager = self.db, name = \"n\"",
            "async fn f(&self, x: u32) -> Result<u32, AppError> { Ok(x) }",
            480,
        ),
        (
            "retry = 3, two by-value parameters",
            "retry = 3, manager = self.db",
            "async fn f(&self, a: String, b: Vec<u8>) -> Result<usize, AppError> { Ok(a.len() + b.len()) }",
            // includes the retry classifier (~50 tokens), which decides at the call site whether
            // the returned error carries a retryable failure
            700,
        ),
    ];

    #[test]
    fn expansion_stays_small() {
        for (what, args, item, most) in CASES {
            let input = count(item.parse().unwrap());
            let out = count(expand(
                args.parse().unwrap(),
                item.parse().unwrap(),
                &quote!(::tx_sqlx::__private),
            ));
            println!("{what}: {input} tokens in, {out} out (+{})", out - input);
            assert!(
                out - input <= *most,
                "{what}: the expansion adds {} tokens",
                out - input
            );
        }
    }
}
