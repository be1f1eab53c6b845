//! The grammar of `#[transactional(key = value, ...)]`: keys separated by commas, each read
//! into [`Args`] by its rule in `valid`. Every error is collected, so that one attribute reports
//! all its mistakes at once.

use proc_macro2::TokenTree;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Ident, Token};

use crate::ast::Args;
use crate::helpers::combine;
use crate::valid;

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors: Option<syn::Error> = None;
        let mut seen: Vec<String> = Vec::new();

        while !input.is_empty() {
            if input.peek(Ident::peek_any) {
                if let Err(e) = key_value(input, &mut args, &mut seen) {
                    combine(&mut errors, e);
                    skip_value(input);
                }
            } else {
                let tt: TokenTree = input.parse()?;
                combine(&mut errors, valid::not_key_value(&tt));
                skip_value(input);
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

/// One `key = value` (or `read_only` alone) into `args`.
fn key_value(input: ParseStream, args: &mut Args, seen: &mut Vec<String>) -> syn::Result<()> {
    let key = input.call(Ident::parse_any)?;
    let key_str = key.to_string();
    let known = valid::KEYS.contains(&key_str.as_str());
    let duplicate = known && seen.contains(&key_str);
    seen.push(key_str.clone());
    let has_eq = input.peek(Token![=]);
    if has_eq {
        input.parse::<Token![=]>()?;
    }
    if !known {
        return Err(valid::unknown_key(&key));
    }
    if duplicate {
        return Err(valid::duplicate_key(&key));
    }
    if !has_eq && key_str != "read_only" {
        return Err(valid::needs_value(&key));
    }
    match key_str.as_str() {
        "propagation" => args.propagation = Some(valid::propagation(input)?),
        "isolation" => args.isolation = Some(valid::isolation(input)?),
        "timeout" => args.timeout_ms = Some(valid::timeout(input)?),
        "read_only" => args.read_only = Some(!has_eq || valid::read_only(input)?),
        "rollback_for" => args.rollback_for = Some(valid::pattern(input, "rollback_for")?),
        "no_rollback_for" => {
            args.no_rollback_for = Some(valid::pattern(input, "no_rollback_for")?);
        }
        "manager" => args.manager = Some(valid::manager(input)?),
        "name" => args.name = Some(valid::name(input)?),
        "retry" => args.retry = Some((valid::retry(input)?, key.span())),
        _ => unreachable!("every key of KEYS is handled"),
    }
    if !input.is_empty() && !input.peek(Token![,]) {
        return Err(valid::after_value(input, &key));
    }
    Ok(())
}

/// Skips the rest of a bad value, up to the next `,`, so later keys are still checked.
fn skip_value(input: ParseStream) {
    while !input.is_empty() && !input.peek(Token![,]) {
        if input.parse::<TokenTree>().is_err() {
            break;
        }
    }
}

/// The keys of a method's own `#[transactional(...)]` inside an annotated block, with the
/// block's `manager` when the method names none.
pub(crate) fn method_args(attr: &Attribute, block: &Args) -> syn::Result<Args> {
    let mut args = match &attr.meta {
        syn::Meta::Path(_) => Args::default(),
        syn::Meta::List(list) => syn::parse2::<Args>(list.tokens.clone())?,
        syn::Meta::NameValue(nv) => return Err(valid::keys_not_in_parentheses(nv)),
    };
    if args.manager.is_none() {
        args.manager.clone_from(&block.manager);
    }
    Ok(args)
}
