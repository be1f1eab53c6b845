//! Where the runtime lives: `tx_sqlx::__private` or `tx_core::__private`, whichever the
//! user's crate depends on (under whatever name it renamed it to).

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::Ident;

/// The path of the runtime module for the crate being compiled.
///
/// Deterministic order: `tx-sqlx` when the crate depends on it (it re-exports tx-core), else
/// `tx-core`; inside tx-sqlx itself, its `tx-core` dependency; inside tx-core (its tests and
/// doctests), `::tx_core`. With no manifest to read, `::tx_sqlx`.
pub(crate) fn private_path() -> TokenStream {
    if let Ok(FoundCrate::Name(name)) = crate_name("tx-sqlx") {
        return path_of(&name);
    }
    match crate_name("tx-core") {
        Ok(FoundCrate::Name(name)) => path_of(&name),
        Ok(FoundCrate::Itself) => quote!(::tx_core::__private),
        Err(_) => quote!(::tx_sqlx::__private),
    }
}

fn path_of(name: &str) -> TokenStream {
    let ident = Ident::new(name, Span::call_site());
    quote!(::#ident::__private)
}

#[cfg(test)]
mod tests {
    use super::private_path;
    use std::process::Command;

    /// `proc-macro-crate` reads `CARGO_MANIFEST_DIR`, which is process-wide, so each manifest
    /// is checked in a child run of this test binary.
    #[test]
    fn resolution_follows_the_dependencies() {
        if let Ok(expected) = std::env::var("TX_MACROS_EXPECT_PATH") {
            assert_eq!(private_path().to_string(), expected);
            return;
        }
        let package = |name: &str| {
            format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n")
        };
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{}[dependencies]\ntx-core = \"0.1\"\n", package("app")),
                ":: tx_core :: __private",
            ),
            (
                format!("{}[dependencies]\ntx-sqlx = \"0.1\"\n", package("app")),
                ":: tx_sqlx :: __private",
            ),
            (
                format!(
                    "{}[dependencies]\ntx-core = \"0.1\"\ntx-sqlx = \"0.1\"\n",
                    package("app")
                ),
                ":: tx_sqlx :: __private",
            ),
            (
                // the workspace's tests crate: tx-sqlx, and tx-core as a dev-dependency
                format!(
                    "{}[dependencies]\ntx-sqlx = \"0.1\"\n[dev-dependencies]\ntx-core = \"0.1\"\n",
                    package("tests")
                ),
                ":: tx_sqlx :: __private",
            ),
            (
                format!(
                    "{}[dependencies]\ntxs = {{ package = \"tx-sqlx\", version = \"0.1\" }}\n",
                    package("app")
                ),
                ":: txs :: __private",
            ),
            (
                format!(
                    "{}[dependencies]\nengine = {{ package = \"tx-core\", version = \"0.1\" }}\n",
                    package("app")
                ),
                ":: engine :: __private",
            ),
            (
                format!(
                    "{}[dependencies]\ntx-macros = \"0.1\"\n",
                    package("tx-core")
                ),
                ":: tx_core :: __private",
            ),
            (
                format!("{}[dependencies]\ntx-core = \"0.1\"\n", package("tx-sqlx")),
                ":: tx_core :: __private",
            ),
        ];
        let exe = std::env::current_exe().expect("test binary");
        for (i, (manifest, expected)) in cases.into_iter().enumerate() {
            let dir = std::env::temp_dir()
                .join(format!("tx-macros-resolution-{}-{i}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::write(dir.join("Cargo.toml"), &manifest).expect("write manifest");
            let out = Command::new(&exe)
                .args([
                    "--exact",
                    "krate::tests::resolution_follows_the_dependencies",
                    "--nocapture",
                ])
                .env("CARGO_MANIFEST_DIR", &dir)
                .env("TX_MACROS_EXPECT_PATH", expected)
                .output()
                .expect("run child");
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "manifest:\n{manifest}\nexpected {expected}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
