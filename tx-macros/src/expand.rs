//! Code generation: turns an annotated `async fn` (or every `async fn` of an annotated `impl`
//! block) into a thin call of `__private::transactional` / `__private::transactional_retry`.
//!
//! No transaction logic lives here, and no rule: `valid` has accepted the function before any
//! code is written. The expansion builds a `static` definition, picks the manager, writes the
//! rollback rule as a `fn(&E) -> bool` and hands the body future over.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Block, FnArg, ImplItem, Item, Pat, Signature, Stmt, Type};

use crate::ast::{Args, FnItem, Function, Manager, Receiver, ResultType, returns_result_in_impl};
use crate::attr::method_args;
use crate::helpers::{
    ReplaceSelf, StripMut, body_mentions, collect_bindings, combine, contains_impl_trait,
    is_self_field, is_transactional_attr, respan, tokens_mention, unwrap_type,
};
use crate::valid;

/// Entry point shared by the proc-macro and the unit tests. `private` is the path of the
/// runtime module (`::tx_sqlx::__private` or `::tx_core::__private`).
pub(crate) fn expand(args: TokenStream, item: TokenStream, private: &TokenStream) -> TokenStream {
    let args = match syn::parse2::<Args>(args) {
        Ok(args) => args,
        Err(e) => return with_item(e, item),
    };
    // A function: its body stays tokens. Anything else is parsed whole, to be expanded (an
    // `impl` block) or rejected.
    if let Ok(f) = syn::parse2::<FnItem>(item.clone()) {
        return match expand_fn(&args, &Function::from_tokens(&f), private) {
            Ok((attrs, sig, body)) => {
                let vis = &f.vis;
                quote!(#(#attrs)* #vis #sig #body)
            }
            Err(e) => with_item(e, item),
        };
    }
    let parsed = match syn::parse2::<Item>(item.clone()) {
        Ok(parsed) => parsed,
        Err(e) => return with_item(valid::unparseable(&item, &e), item),
    };
    let result = match parsed {
        Item::Impl(imp) => Ok(expand_impl(&args, imp, private)),
        other => Err(valid::not_a_fn(&other)),
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
        let res = valid::method_manager(&f.sig, args, own).and_then(|()| {
            expand_fn(
                args,
                &Function::parsed(&f.attrs, &f.sig, &f.block, true),
                private,
            )
        });
        match res {
            Ok((attrs, sig, body)) => {
                f.attrs = attrs;
                f.sig = sig;
                // the new body, printed as it is
                f.block.stmts = vec![Stmt::Item(Item::Verbatim(body.stream()))];
            }
            Err(e) => combine(&mut errors, e),
        }
    }
    let mut out = errors.map_or_else(TokenStream::new, |e| e.to_compile_error());
    out.extend(imp.into_token_stream());
    out
}

/// How the expansion names the function's types.
struct Typing<'a> {
    /// The declared return type.
    ret_ty: &'a Type,
    /// `E` of `Result<T, E>`, when it can be named (not an `impl Trait`).
    err: Option<&'a Type>,
    /// The return type is an alias (`AppResult<T>`), or a type that is no `Result` at all:
    /// its parts are named through `__private::TxResult`, so that a type that is not a
    /// `Result` is one error, at the type.
    alias: bool,
    /// Where type errors about the error type are reported: at `E`, or at the alias's name.
    check_span: Span,
    /// The runtime path, spanned at `check_span`.
    private: TokenStream,
}

impl<'a> Typing<'a> {
    fn new(ret: ResultType<'a>, private: &TokenStream) -> Self {
        let err = ret.err.filter(|e| !contains_impl_trait(e));
        let check_span = match err {
            Some(e) => e.span(),
            // an alias such as `io::Result<T>`: point at its name
            None => match unwrap_type(ret.ty) {
                Type::Path(tp) => tp
                    .path
                    .segments
                    .last()
                    .map_or_else(|| ret.ty.span(), |s| s.ident.span()),
                other => other.span(),
            },
        };
        Typing {
            ret_ty: ret.ty,
            err,
            alias: err.is_none() && !contains_impl_trait(ret.ty),
            check_span,
            private: respan(private, check_span),
        }
    }

    /// The error type, as named in the turbofish and the closures (`None`: inferred).
    fn err_type(&self) -> Option<TokenStream> {
        let (ret_ty, p) = (self.ret_ty, &self.private);
        match self.err {
            Some(e) => Some(e.to_token_stream()),
            None if self.alias => {
                Some(quote_spanned!(self.check_span=> <#ret_ty as #p::TxResult>::Error))
            }
            None => None,
        }
    }
}

/// Expands one function. Returns its outer attributes, its signature (unchanged except that
/// `retry` drops `mut` from parameters it clones per attempt) and the new body, braces
/// included.
fn expand_fn(
    args: &Args,
    f: &Function<'_>,
    private: &TokenStream,
) -> syn::Result<(Vec<Attribute>, Signature, Group)> {
    let typing = Typing::new(valid::function(f, args)?, private);
    let p = private;
    let check_span = typing.check_span;
    let def_stmt = definition(args, f, p);
    let manager_stmts = manager(args, f.receiver(), p);
    let rollback_on = rollback_rule(args, &typing);
    let fake_return = fake_return(&typing);

    // `E: From<TxError>` is checked once, as `E: TransactionalError` (whose
    // `#[diagnostic::on_unimplemented]` says what to do), by the runtime's entry point: its
    // call is located at the error type, which it names in a turbofish, so the compiler
    // reports the bound once, there.
    let at_check = |name: &str| Ident::new(name, check_span.resolved_at(Span::mixed_site()));
    let (manager_l, def_l, make_l) = (
        at_check("__tx_manager"),
        at_check("__tx_definition"),
        at_check("__tx_make_body"),
    );
    let turbofish = typing
        .err_type()
        .map(|e| quote_spanned!(check_span=> ::<_, #e, _>));
    let make = Ident::new("__tx_make_body", Span::mixed_site());
    let tp = &typing.private;
    let mut new_sig = f.sig.clone();

    let call = match args.retry.filter(|(n, _)| *n > 0) {
        None => {
            let stmts = &f.body.stmts;
            let call = quote_spanned! {check_span=>
                #tp::transactional #turbofish(#manager_l, #def_l, #rollback_on, #make_l).await
            };
            let call = wrap_alias(&typing, call);
            quote! {
                let #make = move || async move {
                    #fake_return
                    #stmts
                };
                #call
            }
        }
        Some((n, _)) => {
            let (clones, stmts) = retry_clones(f, &mut new_sig, p)?;
            let classify = classifier(&typing, p);
            let call = quote_spanned! {check_span=>
                #tp::transactional_retry #turbofish(#manager_l, #def_l, #n, #rollback_on, #classify, #make_l).await
            };
            let call = wrap_alias(&typing, call);
            quote! {
                let #make = move || {
                    #clones
                    async move {
                        #fake_return
                        #stmts
                    }
                };
                #call
            }
        }
    };

    let inner_attrs = &f.body.inner_attrs;
    let body = quote! {
        #inner_attrs
        #def_stmt
        #manager_stmts
        #call
    };
    Ok((f.attrs.clone(), new_sig, Group::new(Delimiter::Brace, body)))
}

/// With an alias return type, the call's `Result` is handed back as the declared type.
fn wrap_alias(typing: &Typing<'_>, call: TokenStream) -> TokenStream {
    let (ret_ty, p) = (typing.ret_ty, &typing.private);
    if typing.alias {
        quote_spanned!(typing.check_span=> <#ret_ty as #p::TxResult>::from_result(#call))
    } else {
        call
    }
}

/// `let __tx_definition: &'static TransactionDefinition = ..;`: a `static`, built at compile
/// time. Default name: `Type::method` for a method, the module path and name for a free
/// function. A method's attribute cannot see its `impl`, so the type is read from the path of
/// an item declared here (`std::any::type_name`), once, when the definition is first used.
fn definition(args: &Args, f: &Function<'_>, p: &TokenStream) -> TokenStream {
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
    match &args.name {
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
            let sig = f.sig;
            let fn_name = sig.ident.unraw().to_string();
            let method = f.in_impl
                || f.receiver() != Receiver::None
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
    }
}

/// `let __tx_manager = ..;`. A method call, so that method resolution reaches the manager
/// behind a reference or a smart pointer (`db: &'a PgTxPool`, `Box<PgTxPool>`); see
/// `__private::pick`.
fn manager(args: &Args, receiver: Receiver, p: &TokenStream) -> TokenStream {
    let manager = Ident::new("__tx_manager", Span::mixed_site());
    match &args.manager {
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
    }
}

/// The rollback rule, a closure coerced to `fn(&E) -> bool`; a pattern that cannot match `E`
/// is a type error at the pattern.
fn rollback_rule(args: &Args, typing: &Typing<'_>) -> TokenStream {
    let err = Ident::new("__tx_err", Span::mixed_site());
    let err_param = match typing.err {
        Some(e) => quote!(#err: &#e),
        None => quote!(#err),
    };
    match (&args.rollback_for, &args.no_rollback_for) {
        (None, None) => match typing.err {
            Some(e) => quote!(|_: &#e| true),
            None => quote!(|_| true),
        },
        (Some(r), None) => quote!(|#err_param| ::core::matches!(#err, #r)),
        (None, Some(n)) => quote!(|#err_param| !::core::matches!(#err, #n)),
        (Some(r), Some(n)) => {
            quote!(|#err_param| ::core::matches!(#err, #r) && !::core::matches!(#err, #n))
        }
    }
}

/// The retry classifier: whether an error is, or carries, a retryable failure. Decided here,
/// where the error type is known, by autoref specialisation (an engine or driver error, else
/// any `Error`'s source chain, else nothing to see).
fn classifier(typing: &Typing<'_>, p: &TokenStream) -> TokenStream {
    let err = Ident::new("__tx_err", Span::mixed_site());
    let ret_ty = typing.ret_ty;
    let named = match typing.err {
        Some(e) => Some(quote!(#e)),
        None if !contains_impl_trait(ret_ty) => Some(quote!(<#ret_ty as #p::TxResult>::Error)),
        None => None,
    };
    let Some(e) = named else {
        return quote!(#p::opaque);
    };
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
}

/// Dead code fixing the body's output type, so `?` and `return` inside the body convert into
/// the declared error type exactly as in the original function.
fn fake_return(typing: &Typing<'_>) -> TokenStream {
    let (ret_ty, p) = (typing.ret_ty, &typing.private);
    if contains_impl_trait(ret_ty) {
        return quote!();
    }
    let fake_ty = if typing.alias {
        quote_spanned!(typing.check_span=> ::core::result::Result<<#ret_ty as #p::TxResult>::Ok, <#ret_ty as #p::TxResult>::Error>)
    } else {
        ret_ty.to_token_stream()
    };
    let fake = Ident::new("__tx_fake_return", Span::mixed_site());
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
}

/// With `retry`: the statements cloning, for each attempt, what the body uses by value (a
/// by-value `self` becomes `__tx_self` in the body), and the statements to run. Parameters
/// cloned that way lose `mut` in `sig` (the per-attempt clone is the mutable one).
fn retry_clones(
    f: &Function<'_>,
    sig: &mut Signature,
    p: &TokenStream,
) -> syn::Result<(TokenStream, TokenStream)> {
    let mut clones = TokenStream::new();
    let mut stmts = f.body.stmts.clone();
    let body_tokens = &f.body.stmts;
    if f.receiver() == Receiver::Value
        && let Some(FnArg::Receiver(r)) = f.sig.inputs.first()
        && tokens_mention(body_tokens.clone(), &mut |i| i == "self")
    {
        let mutable = r.mutability.is_some() && r.reference.is_none();
        // parsed only here, to tell `self` the receiver from `self` in paths and macros
        let mut body_block: Block = syn::parse2(quote!({ #stmts }))?;
        ReplaceSelf.visit_block_mut(&mut body_block);
        stmts = TokenStream::new();
        stmts.extend(body_block.stmts.iter().map(ToTokens::to_token_stream));
        let self_ident = Ident::new("__tx_self", Span::call_site());
        let span = r.ty.span();
        let clone = respan(p, span);
        let m = mutable.then(|| quote!(mut));
        let self_ty = &r.ty;
        clones.extend(quote_spanned! {span=>
            let #m #self_ident = #clone::retry_clone::<#self_ty>(&self);
        });
        if mutable && let Some(FnArg::Receiver(r)) = sig.inputs.first_mut() {
            r.mutability = None;
        }
    }
    for (idx, input) in f.sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = input else { continue };
        if matches!(unwrap_type(&pt.ty), Type::Reference(_)) && matches!(&*pt.pat, Pat::Ident(_)) {
            continue; // a shared reference is `Copy`: every attempt gets it
        }
        let mut bindings = Vec::new();
        collect_bindings(&pt.pat, &mut bindings);
        let span = pt.ty.span();
        let clone = respan(p, span);
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
            // the type is named when the parameter is a plain binding, so a missing `Clone`
            // is reported once, at the type
            let turbofish = match &*pt.pat {
                // `impl Trait` cannot be named in a turbofish (E0562)
                Pat::Ident(_) if !contains_impl_trait(&pt.ty) => {
                    let ty = &pt.ty;
                    quote_spanned!(span=> ::<#ty>)
                }
                _ => quote!(),
            };
            clones.extend(quote_spanned! {span=>
                let #m #ident = #clone::retry_clone #turbofish(&#use_ident);
            });
            if b.mutable {
                strip_here.push(ident.clone());
            }
        }
        if !strip_here.is_empty()
            && let Some(FnArg::Typed(npt)) = sig.inputs.iter_mut().nth(idx)
        {
            StripMut(&strip_here).visit_pat_mut(&mut npt.pat);
        }
    }
    Ok((clones, stmts))
}
