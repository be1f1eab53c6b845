//! Syntax helpers shared by the phases: searching and rewriting token streams, reading types
//! and parameter patterns, and combining errors. Nothing here knows the attribute's keys.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Item, Pat, Type};

/// Whether an attribute is `#[transactional]` (under any path).
pub(crate) fn is_transactional_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "transactional")
}

/// Whether unparsed item tokens look like a function declaration without a body.
pub(crate) fn looks_like_bodyless_fn(item: &TokenStream) -> bool {
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let has_fn = tokens
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i == "fn"));
    let ends_semi = matches!(tokens.last(), Some(TokenTree::Punct(p)) if p.as_char() == ';');
    has_fn && ends_semi
}

/// Adds `e` to the errors found so far.
pub(crate) fn combine(errors: &mut Option<syn::Error>, e: syn::Error) {
    match errors {
        Some(all) => all.combine(e),
        None => *errors = Some(e),
    }
}

/// `tokens` with every span set to `span`: a path of the runtime (`::tx_sqlx::__private`) used
/// in code whose errors must point at one token of the user's function.
pub(crate) fn respan(tokens: &TokenStream, span: Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut ng = Group::new(g.delimiter(), respan(&g.stream(), span));
                ng.set_span(span);
                tt = TokenTree::Group(ng);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys and values.
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

/// `self.a.b...`: a field path of `self`, which a `&self` method can borrow for the whole call.
pub(crate) fn is_self_field(expr: &syn::Expr) -> bool {
    match expr {
        syn::Expr::Field(f) => is_self_field(&f.base) || is_self(&f.base),
        syn::Expr::Paren(p) => is_self_field(&p.expr),
        _ => false,
    }
}

fn is_self(expr: &syn::Expr) -> bool {
    matches!(expr, syn::Expr::Path(p) if p.qself.is_none() && p.path.is_ident("self"))
}

/// The type inside `Group` and parentheses.
pub(crate) fn unwrap_type(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => unwrap_type(&g.elem),
        Type::Paren(p) => unwrap_type(&p.elem),
        other => other,
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
pub(crate) fn body_mentions(tokens: TokenStream, name: &Ident) -> bool {
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
pub(crate) fn tidy(ty: &Type) -> String {
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

/// Whether a type contains `impl Trait` (which cannot be named in a turbofish or a closure
/// parameter).
pub(crate) fn contains_impl_trait(ty: &Type) -> bool {
    tokens_mention(ty.to_token_stream(), &mut |i| i == "impl")
}

/// One identifier bound by a parameter pattern.
pub(crate) struct Binding {
    pub(crate) ident: Ident,
    pub(crate) mutable: bool,
}

/// Every identifier a parameter pattern binds (the first alternative of an or-pattern).
pub(crate) fn collect_bindings(pat: &Pat, out: &mut Vec<Binding>) {
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
pub(crate) struct StripMut<'a>(pub(crate) &'a [Ident]);
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
pub(crate) struct ReplaceSelf;
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
