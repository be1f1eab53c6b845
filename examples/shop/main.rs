//! The shop demo: the classic `@Transactional` cases, printed with the rows that prove them.
//!
//! ```text
//! cargo run --example shop                                   # embedded SQLite, no set-up
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example shop
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example shop
//! RUST_LOG=tx=debug cargo run --example shop                 # + the engine's log, in a span per scope (ids, outcome)
//! ```
//!
//! On PostgreSQL the tables go to the schema `tx_shop_demo`, on MariaDB to the database
//! `tx_shop_demo` (both recreated on each run and left for inspection); on SQLite to two
//! database files in a temporary directory.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use tx_examples::demo;
use tx_examples::shop::{DEMO_NAMESPACE, Target, run_demo};

#[tokio::main]
async fn main() -> ExitCode {
    demo::init_logging();

    let url = std::env::var("DATABASE_URL").ok();
    let Some(target) = Target::from_url(url.as_deref()) else {
        eprintln!("DATABASE_URL must be postgres://, mysql:// or mariadb:// (or unset for SQLite)");
        return ExitCode::FAILURE;
    };
    let dir = match demo::temp_dir() {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    match &target {
        Target::Sqlite => println!(
            "tx shop demo on SQLite: {}/shop.db, audit log in audit.db (set DATABASE_URL for PostgreSQL or MariaDB)\n",
            dir.path().display()
        ),
        Target::Postgres(_) => println!("tx shop demo on PostgreSQL, schema {DEMO_NAMESPACE}\n"),
        Target::MySql(_) => println!("tx shop demo on MariaDB/MySQL, database {DEMO_NAMESPACE}\n"),
    }
    match run_demo(&target, dir.path()).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
