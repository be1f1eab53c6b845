//! What the expansion contains, for each form of the attribute.

use quote::quote;

use crate::expand::expand;

/// The expansion of `item` under `#[transactional(args)]`, as token text.
struct Expansion(String);

fn run(args: &str, item: &str) -> Expansion {
    let out = expand(
        args.parse().unwrap(),
        item.parse().unwrap(),
        &quote!(::tx_core::__private),
    );
    Expansion(out.to_string())
}

impl Expansion {
    /// Asserts that the expansion contains every one of `parts`.
    fn has(&self, parts: &[&str]) -> &Self {
        for part in parts {
            assert!(self.0.contains(part), "missing {part:?} in {}", self.0);
        }
        self
    }

    /// Asserts that the expansion contains none of `parts`.
    fn lacks(&self, parts: &[&str]) -> &Self {
        for part in parts {
            assert!(!self.0.contains(part), "unexpected {part:?} in {}", self.0);
        }
        self
    }

    /// How often `part` occurs in the expansion.
    fn count(&self, part: &str) -> usize {
        self.0.matches(part).count()
    }
}

#[test]
fn free_fn_defaults() {
    run(
        "",
        "pub async fn f(x: u32) -> Result<u32, AppError> { Ok(x) }",
    )
    .has(&[
        "pub async fn f (x : u32) -> Result < u32 , AppError >",
        "Propagation :: Required",
        "Isolation :: Default",
        ":: core :: option :: Option :: None , false",
        "ManagerRef :: Default",
        "\"::f\") , false",
        ":: tx_core :: __private :: transactional :: < _ , AppError , _ > (",
        "| _ : & AppError | true",
    ])
    .lacks(&["compile_error"]);
}

#[test]
fn self_field_manager_is_borrowed_on_shared_self_and_cloned_otherwise() {
    let manager = "manager = self.db";
    run(manager, "async fn f(&self) -> Result<(), E> { Ok(()) }")
        .has(&["__tx_pick = :: tx_core :: __private :: pick :: Pick (& self . db)"])
        .lacks(&[". clone ()"]);
    run(manager, "async fn f(&mut self) -> Result<(), E> { Ok(()) }")
        .has(&["(self . db) . clone ()"]);
    run(
        "manager = db",
        "async fn f(db: Pool) -> Result<(), E> { Ok(()) }",
    )
    .has(&["(db) . clone ()"]);
}

#[test]
fn keys_reach_the_definition() {
    run(
        "propagation = REQUIRES_NEW, isolation = SERIALIZABLE, timeout = \"1m30s\", read_only, name = \"n\", manager = \"orders\", no_rollback_for = AppError::A | AppError::B(_)",
        "async fn f() -> Result<(), AppError> { Ok(()) }",
    )
    .has(&[
        "Propagation :: RequiresNew",
        "Isolation :: Serializable",
        "from_millis (90000u64)",
        ", true , \"n\"",
        "ManagerRef :: Named (\"orders\")",
        "! :: core :: matches ! (__tx_err , AppError :: A | AppError :: B (_))",
    ]);
}

#[test]
fn retry_clones_by_value_args_and_renames_self() {
    run(
        "retry = 3, manager = self.db",
        "async fn f(self: Arc<Self>, mut a: String, b: &str, unused: Vec<u8>) -> Result<(), E> { a.push_str(b); self.g(a).await }",
    )
    .has(&[
        "transactional_retry",
        "let __tx_self = :: tx_core :: __private :: retry_clone :: < Arc < Self > > (& self)",
        "let mut a = :: tx_core :: __private :: retry_clone :: < String > (& a)",
        "__tx_self . g (a)",
        // the outer parameter loses `mut` (the per-attempt clone is the mutable one)
        "a : String",
    ])
    .lacks(&["clone (& b)", "clone (& unused)", "mut a : String"]);
}

#[test]
fn retry_with_mut_self_is_an_error() {
    run(
        "retry = 2",
        "async fn f(&mut self) -> Result<(), E> { Ok(()) }",
    )
    .has(&["compile_error", "`&mut self`"]);
}

#[test]
fn impl_block_default_and_override() {
    let out = run(
        "read_only, manager = self.db",
        "impl S { async fn a(&self) -> Result<(), E> { Ok(()) } #[transactional(propagation = Never)] async fn b(&self) -> Result<(), E> { Ok(()) } #[transactional(manager = \"x\")] async fn c(&self) -> Result<(), E> { Ok(()) } fn d(&self) -> u8 { 1 } async fn e(&self) -> u8 { 1 } async fn f(&self) -> PgQueryResult { todo!() } }",
    );
    // a, b and c are expanded here (b's and c's own attributes are consumed), d, e, f are not
    assert_eq!(out.count("LazyDefinition :: new"), 3, "{}", out.0);
    out.lacks(&["# [transactional", "compile_error"]);
    // a: the block's read_only; b: its own keys (not read-only) with the block's manager;
    // c: its own manager
    let defs: Vec<&str> = out.0.split("LazyDefinition :: new").skip(1).collect();
    for (def, propagation, read_only) in
        [(defs[0], "Required", "true"), (defs[1], "Never", "false")]
    {
        assert!(
            def.contains(&format!("Propagation :: {propagation}"))
                && def.contains(&format!("None , {read_only}")),
            "{def}"
        );
    }
    for (part, n) in [
        (
            "__tx_pick = :: tx_core :: __private :: pick :: Pick (& self . db)",
            2,
        ),
        ("ManagerRef :: Named (\"x\")", 1),
    ] {
        assert_eq!(out.count(part), n, "{part}: {}", out.0);
    }
}

#[test]
fn default_name_is_read_once_per_function_and_a_given_name_is_const() {
    run("", "async fn f() -> Result<(), E> { Ok(()) }").has(&[
        "static __TX_DEFINITION : :: tx_core :: __private :: LazyDefinition",
        "concat ! (:: core :: module_path ! () , \"::f\") , false",
    ]);
    // a method is known as one from its receiver or from `Self`
    for item in [
        "async fn f(&self) -> Result<(), E> { Ok(()) }",
        "async fn f() -> Result<Self, E> { todo!() }",
    ] {
        run("", item).has(&["\"::f\") , true"]);
    }
    run("name = \"n\"", "async fn f() -> Result<(), E> { Ok(()) }")
        .lacks(&["LazyDefinition"])
        .has(&["static __TX_DEFINITION : :: tx_core :: __private :: TransactionDefinition ="]);
}

#[test]
fn retry_with_impl_trait_parameters_names_no_type() {
    run(
        "retry = 1",
        "async fn f(a: impl Clone + Display, b: &impl Display, c: String) -> Result<(), E> { let _ = (a, b, c); Ok(()) }",
    )
    .has(&[
        "let a = :: tx_core :: __private :: retry_clone (& a)",
        "let c = :: tx_core :: __private :: retry_clone :: < String > (& c)",
    ])
    .lacks(&["clone (& b)"]);
}

#[test]
fn misuse() {
    for (args, item, error) in [
        (
            "",
            "fn f() -> Result<(), E> { Ok(()) }",
            "needs an `async fn`",
        ),
        ("", "async fn f() -> u32 { 1 }", "returning `Result<T, E>`"),
        ("", "struct S;", "cannot be applied to a struct"),
        ("", "const C: u8 = 1;", "cannot be applied to a const"),
        (
            "",
            "async fn f(&self) -> Result<(), E>;",
            "needs a function with a body",
        ),
        (
            "manager = self.db",
            "impl S { async fn new() -> Result<Self, E> { todo!() } }",
            "has no `self` receiver",
        ),
    ] {
        run(args, item).has(&[error]);
    }
}
