//! The default name of a `#[transactional]` function: `Type::method` for a method (Spring's
//! `Class.method`), the module path and the function's name for a free function.
//!
//! An attribute on a method cannot see the `impl` it is in, so the expansion declares an empty
//! `fn` inside the function's body and passes it here: `std::any::type_name` of that item is the
//! enclosing path, `crate::module::Type::method::{{closure}}::item` (or
//! `<crate::Type as crate::Trait>::...` in a trait impl), from which the type is read once per
//! function and process. The format of `type_name` is not guaranteed: a path that is not
//! understood gives the free-function name, never an error.

use std::any::type_name;
use std::borrow::Cow;
use std::sync::OnceLock;

use crate::definition::TransactionDefinition;
use crate::{Isolation, Propagation};

/// The `static` definition of a `#[transactional]` function without a `name`: built at compile
/// time but for the name, which is read on the first call.
pub struct LazyDefinition {
    unnamed: TransactionDefinition,
    /// A name built at run time (`Type::method`), kept here so that the definition can borrow
    /// it for `'static`: every clone of the definition (one per transaction) then copies a
    /// reference instead of allocating the string anew.
    built_name: OnceLock<String>,
    named: OnceLock<TransactionDefinition>,
}

impl LazyDefinition {
    /// The definition's keys; the name comes from [`LazyDefinition::get`].
    pub const fn new(
        propagation: Propagation,
        isolation: Isolation,
        timeout: Option<std::time::Duration>,
        read_only: bool,
    ) -> Self {
        LazyDefinition {
            unnamed: TransactionDefinition::__const(propagation, isolation, timeout, read_only, ""),
            built_name: OnceLock::new(),
            named: OnceLock::new(),
        }
    }

    /// The definition, named after the function: `marker` is an item declared in its body,
    /// `free_name` is `concat!(module_path!(), "::", fn_name)` (the name of a free function),
    /// and `method` is true when the signature shows a method (a `self` receiver or `Self`).
    pub fn get<F>(
        &'static self,
        marker: F,
        free_name: &'static str,
        method: bool,
    ) -> &'static TransactionDefinition {
        self.named.get_or_init(|| {
            let name: &'static str = match default_name(marker, free_name, method) {
                Cow::Borrowed(name) => name,
                Cow::Owned(name) => self.built_name.get_or_init(|| name),
            };
            self.unnamed.clone().name(name)
        })
    }
}

/// `Type::method` when `marker` (an item declared in the function's body) is inside a method,
/// else `free_name`. Without `method`, the enclosing segment counts as a type when it is spelt
/// as one (`CamelCase`, or a `<..>` / `(..)` / `&..` / `[..]` type), not as a function or module.
fn default_name<F>(marker: F, free_name: &'static str, method: bool) -> Cow<'static, str> {
    drop(marker);
    let fn_name = free_name.rsplit("::").next().unwrap_or(free_name);
    owner_type(type_name::<F>(), fn_name, method).map_or(Cow::Borrowed(free_name), |ty| {
        Cow::Owned(format!("{ty}::{fn_name}"))
    })
}

/// The name of the type `fn_name` is a method of, from the path of an item in its body.
fn owner_type<'s>(marker_path: &'s str, fn_name: &str, method: bool) -> Option<&'s str> {
    // `<path of the enclosing fn>::<marker>`, the enclosing fn being `<owner>::<fn_name>`; the
    // body of an `async fn` adds a `{{closure}}` segment
    let (mut enclosing, _marker) = split_last(marker_path)?;
    while let Some(outer) = enclosing.strip_suffix("::{{closure}}") {
        enclosing = outer;
    }
    let (owner, name) = split_last(enclosing)?;
    if name != fn_name {
        return None;
    }
    // `<crate::Type as crate::Trait>`: the implementing type
    let owner = match owner.strip_prefix('<').and_then(|o| o.strip_suffix('>')) {
        Some(qualified) => split_top_level(qualified, " as ").map_or(qualified, |(ty, _)| ty),
        None => owner,
    };
    let ty = last_segment(strip_generics(owner));
    let looks_like_type = ty.starts_with(|c: char| c.is_ascii_uppercase() || "<(&[*".contains(c));
    (method || looks_like_type).then_some(ty)
}

/// `a::b<c::d>::e` -> (`a::b<c::d>`, `e`): split at the last `::` outside brackets.
fn split_last(path: &str) -> Option<(&str, &str)> {
    let at = top_level_positions(path, "::").last()?;
    Some((&path[..at], &path[at + 2..]))
}

/// The first occurrence of `sep` outside brackets.
fn split_top_level<'s>(s: &'s str, sep: &str) -> Option<(&'s str, &'s str)> {
    let at = top_level_positions(s, sep).next()?;
    Some((&s[..at], &s[at + sep.len()..]))
}

/// `crate::Repo<T>` -> `crate::Repo`; a type that is not a path is kept whole.
fn strip_generics(ty: &str) -> &str {
    match ty.find('<') {
        Some(at) if at > 0 && ty.ends_with('>') => &ty[..at],
        _ => ty,
    }
}

/// `crate::module::Type` -> `Type` (a tuple, reference or slice type is kept whole).
fn last_segment(ty: &str) -> &str {
    split_last(ty).map_or(ty, |(_, last)| last)
}

fn top_level_positions<'s>(s: &'s str, sep: &'s str) -> impl Iterator<Item = usize> + 's {
    let mut depth = 0i32;
    s.char_indices().filter_map(move |(i, c)| {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        (depth == 0 && s[i..].starts_with(sep)).then_some(i)
    })
}

#[cfg(test)]
mod tests {
    use super::owner_type;

    #[test]
    fn owners() {
        let cases = [
            (
                "app::orders::OrderService::place::__tx_here",
                "place",
                false,
                Some("OrderService"),
            ),
            (
                "app::OrderService::place::{{closure}}::__tx_here",
                "place",
                true,
                Some("OrderService"),
            ),
            ("app::Repo<_>::get::__tx_here", "get", true, Some("Repo")),
            (
                "<app::m::Pg as app::m::Counter>::bump::__tx_here",
                "bump",
                true,
                Some("Pg"),
            ),
            (
                "<app::Repo<_> as app::Tr<u8>>::t::__tx_here",
                "t",
                true,
                Some("Repo"),
            ),
            (
                "<(u8, app::S) as app::Tr>::t::__tx_here",
                "t",
                true,
                Some("(u8, app::S)"),
            ),
            (
                "app::m::Counter::reset::__tx_here",
                "reset",
                true,
                Some("Counter"),
            ),
            // free functions: in a module, in another function, in a closure
            ("app::orders::place::__tx_here", "place", false, None),
            ("app::main::local::__tx_here", "local", false, None),
            (
                "app::main::{{closure}}::local::{{closure}}::__tx_here",
                "local",
                false,
                None,
            ),
            // not the expected shape: the free-function name
            ("something else", "place", true, None),
            ("app::other::__tx_here", "place", true, None),
        ];
        for (path, name, method, expected) in cases {
            assert_eq!(owner_type(path, name, method), expected, "{path}");
        }
    }
}
