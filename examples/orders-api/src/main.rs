//! `cargo run -p orders-api`: serves the order API on 127.0.0.1:3000 (`PORT` to change it),
//! on SQLite in a temporary directory, or on the server of `DATABASE_URL` (in the schema or
//! database `orders_api_demo`, created anew).

use std::error::Error;

use orders_api::{Target, mysql, postgres, sqlite};

/// The schema (PostgreSQL) or database (MariaDB) the demo uses.
const NAMESPACE: &str = "orders_api_demo";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tx=info".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL").ok();
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| format!("PORT {p:?}: {e}"))?,
        Err(_) => 3000,
    };
    let dir = tempfile::tempdir()?;
    let target = Target::from_url(url.as_deref()).ok_or_else(|| {
        format!("DATABASE_URL {url:?}: expected postgres://, mysql://, mariadb:// or sqlite:")
    })?;
    let (app, on) = match target {
        Target::Sqlite => (
            sqlite::router(sqlite::connect(dir.path()).await?),
            format!("SQLite in {}", dir.path().display()),
        ),
        Target::Postgres(url) => (
            postgres::router(postgres::connect(&url, NAMESPACE).await?),
            format!("PostgreSQL, schema {NAMESPACE}"),
        ),
        Target::MySql(url) => (
            mysql::router(mysql::connect(&url, NAMESPACE).await?),
            format!("MariaDB/MySQL, database {NAMESPACE}"),
        ),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("orders-api on {base} ({on}). Try:");
    println!(
        "  curl -i -X POST {base}/orders -H 'content-type: application/json' \
         -d '{{\"account\":1,\"product\":100,\"quantity\":2}}'"
    );
    println!("  curl -i {base}/accounts/1");
    println!(
        "  curl -i -X POST {base}/transfers -H 'content-type: application/json' \
         -d '{{\"from\":10,\"to\":11,\"amount\":100}}'"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
