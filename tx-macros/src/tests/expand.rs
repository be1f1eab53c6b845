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
        out.contains(
            "let __tx_self = :: tx_core :: __private :: retry_clone :: < Arc < Self > > (& self)"
        ),
        "{out}"
    );
    assert!(
        out.contains("let mut a = :: tx_core :: __private :: retry_clone :: < String > (& a)"),
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
        out.contains("static __TX_DEFINITION : :: tx_core :: __private :: TransactionDefinition ="),
        "{out}"
    );
}

#[test]
fn retry_with_impl_trait_parameters_names_no_type() {
    let out = run(
        "retry = 1",
        "async fn f(a: impl Clone + Display, b: &impl Display, c: String) -> Result<(), E> { let _ = (a, b, c); Ok(()) }",
    );
    assert!(
        out.contains("let a = :: tx_core :: __private :: retry_clone (& a)"),
        "{out}"
    );
    assert!(
        out.contains("let c = :: tx_core :: __private :: retry_clone :: < String > (& c)"),
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
