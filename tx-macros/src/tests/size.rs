//! The size of the expansion, in tokens (an identifier, punctuation mark, literal or delimited
//! group each counts one): the code every annotated function adds to its crate's compile time.

use proc_macro2::{TokenStream, TokenTree};
use quote::quote;

use crate::expand::expand;

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
        240,
    ),
    (
        "&self, manager = self.db",
        "manager = self.db",
        "async fn f(&self, x: u32) -> Result<u32, AppError> { Ok(x) }",
        270,
    ),
    (
        "every key",
        "propagation = RequiresNew, isolation = Serializable, timeout = \"2s\", read_only, no_rollback_for = AppError::Warn, manager = self.db, name = \"n\"",
        "async fn f(&self, x: u32) -> Result<u32, AppError> { Ok(x) }",
        270,
    ),
    (
        "retry = 3, two by-value parameters",
        "retry = 3, manager = self.db",
        "async fn f(&self, a: String, b: Vec<u8>) -> Result<usize, AppError> { Ok(a.len() + b.len()) }",
        // includes the retry classifier (~50 tokens), which decides at the call site whether
        // the returned error carries a retryable failure; the per-attempt clone helper is
        // defined once in `__private`
        390,
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
