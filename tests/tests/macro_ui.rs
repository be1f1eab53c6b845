//! trybuild UI tests of `#[transactional]`: every accepted form compiles and runs
//! (`tests/ui/pass/`), and every kind of misuse fails with the checked message at the offending
//! token (`tests/ui/fail/*.stderr`). Regenerate the `.stderr` files with `TRYBUILD=overwrite`
//! and read each one before committing it.

#[test]
fn macro_ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
