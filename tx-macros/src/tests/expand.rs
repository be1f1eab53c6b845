//! What the expansion contains, for each form of the attribute.

use quote::quote;

use crate::expand::expand;

pub(super) fn run(args: &str, item: &str) -> String {
    let out = expand(
        args.parse().unwrap(),
        item.parse().unwrap(),
        &quote!(::tx_core::__private),
    );
    out.to_string()
}

/// Asserts that the expansion `out` contains every one of `parts`.
fn has(out: &str, parts: &[&str]) {
    for part in parts {
        assert!(out.contains(part), "missing {part:?} in {out}");
    }
}

/// Asserts that the expansion `out` contains none of `parts`.
fn lacks(out: &str, parts: &[&str]) {
    for part in parts {
        assert!(!out.contains(part), "unexpected {part:?} in {out}");
    }
}

#[test]
fn free_fn_defaults() {
    let out = run(
        "",
        "pub async fn f(x: u32) -> Result<u32, AppError> { Ok(x) }",
    );
    has(
        &out,
        &[
            "pub async fn f (x : u32) -> Result < u32 , AppError >",
            "Propagation :: Required",
            "Isolation :: Default",
            ":: core :: option :: Option :: None , false",
            "ManagerRef :: Default",
            "\"::f\") , false",
            ":: tx_core :: __private :: transactional :: < _ , AppError , _ , _ > (",
            "| _ : & AppError | true",
        ],
    );
    lacks(&out, &["compile_error"]);
}

#[test]
fn self_field_manager_is_borrowed_on_shared_self_and_cloned_otherwise() {
    let shared = run(
        "manager = self.db",
        "async fn f(&self) -> Result<(), E> { Ok(()) }",
    );
    has(
        &shared,
        &["__tx_pick = :: tx_core :: __private :: pick :: Pick (& self . db)"],
    );
    lacks(&shared, &[". clone ()"]);
    let exclusive = run(
        "manager = self.db",
        "async fn f(&mut self) -> Result<(), E> { Ok(()) }",
    );
    has(&exclusive, &["(self . db) . clone ()"]);
    let param = run(
        "manager = db",
        "async fn f(db: Pool) -> Result<(), E> { Ok(()) }",
    );
    has(&param, &["(db) . clone ()"]);
}

#[test]
fn keys_reach_the_definition() {
    let out = run(
        "propagation = REQUIRES_NEW, isolation = SERIALIZABLE, timeout = \"1m30s\", read_only, name = \"n\", manager = \"orders\", no_rollback_for = AppError::A | AppError::B(_)",
        "async fn f() -> Result<(), AppError> { Ok(()) }",
    );
    has(
        &out,
        &[
            "Propagation :: RequiresNew",
            "Isolation :: Serializable",
            "from_millis (90000u64)",
            ", true , \"n\"",
            "ManagerRef :: Named (\"orders\")",
            "! :: core :: matches ! (__tx_err , AppError :: A | AppError :: B (_))",
        ],
    );
}

#[test]
fn retry_clones_by_value_args_and_renames_self() {
    let out = run(
        "retry = 3, manager = self.db",
        "async fn f(self: Arc<Self>, mut a: String, b: &str, unused: Vec<u8>) -> Result<(), E> { a.push_str(b); self.g(a).await }",
    );
    has(
        &out,
        &[
            "transactional_retry",
            "let __tx_self = :: tx_core :: __private :: retry_clone :: < Arc < Self > > (& self)",
            "let mut a = :: tx_core :: __private :: retry_clone :: < String > (& a)",
        ],
    );
    lacks(&out, &["clone (& b)", "clone (& unused)"]);
    has(&out, &["__tx_self . g (a)"]);
    // the outer parameter loses `mut` (the per-attempt clone is the mutable one)
    has(&out, &["a : String"]);
    lacks(&out, &["mut a : String"]);
}

#[test]
fn retry_with_mut_self_is_an_error() {
    let out = run(
        "retry = 2",
        "async fn f(&mut self) -> Result<(), E> { Ok(()) }",
    );
    has(&out, &["compile_error", "`&mut self`"]);
}

#[test]
fn impl_block_default_and_override() {
    let out = run(
        "read_only, manager = self.db",
        "impl S { async fn a(&self) -> Result<(), E> { Ok(()) } #[transactional(propagation = Never)] async fn b(&self) -> Result<(), E> { Ok(()) } #[transactional(manager = \"x\")] async fn c(&self) -> Result<(), E> { Ok(()) } fn d(&self) -> u8 { 1 } async fn e(&self) -> u8 { 1 } async fn f(&self) -> PgQueryResult { todo!() } }",
    );
    // a, b and c are expanded here (b's and c's own attributes are consumed), d, e, f are not
    assert_eq!(out.matches("LazyDefinition :: new").count(), 3, "{out}");
    lacks(&out, &["# [transactional", "compile_error"]);
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
    has(
        &out,
        &[
            "static __TX_DEFINITION : :: tx_core :: __private :: LazyDefinition",
            "concat ! (:: core :: module_path ! () , \"::f\") , false",
        ],
    );
    // a method is known as one from its receiver or from `Self`
    let out = run("", "async fn f(&self) -> Result<(), E> { Ok(()) }");
    has(&out, &["\"::f\") , true"]);
    let out = run("", "async fn f() -> Result<Self, E> { todo!() }");
    has(&out, &["\"::f\") , true"]);
    let out = run("name = \"n\"", "async fn f() -> Result<(), E> { Ok(()) }");
    lacks(&out, &["LazyDefinition"]);
    has(
        &out,
        &["static __TX_DEFINITION : :: tx_core :: __private :: TransactionDefinition ="],
    );
}

#[test]
fn retry_with_impl_trait_parameters_names_no_type() {
    let out = run(
        "retry = 1",
        "async fn f(a: impl Clone + Display, b: &impl Display, c: String) -> Result<(), E> { let _ = (a, b, c); Ok(()) }",
    );
    has(
        &out,
        &[
            "let a = :: tx_core :: __private :: retry_clone (& a)",
            "let c = :: tx_core :: __private :: retry_clone :: < String > (& c)",
        ],
    );
    lacks(&out, &["clone (& b)"]);
}

#[test]
fn misuse() {
    let e = run("", "fn f() -> Result<(), E> { Ok(()) }");
    has(&e, &["needs an `async fn`"]);
    let e = run("", "async fn f() -> u32 { 1 }");
    has(&e, &["returning `Result<T, E>`"]);
    let e = run("", "struct S;");
    has(&e, &["cannot be applied to a struct"]);
    let e = run("", "const C: u8 = 1;");
    has(&e, &["cannot be applied to a const"]);
    let e = run("", "async fn f(&self) -> Result<(), E>;");
    has(&e, &["needs a function with a body"]);
    let e = run(
        "manager = self.db",
        "impl S { async fn new() -> Result<Self, E> { todo!() } }",
    );
    has(&e, &["has no `self` receiver"]);
}
