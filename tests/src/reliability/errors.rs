//! Errors of the code under test: the error type of the bodies, error chains, injected panics.

use std::sync::Once;

use tx_sqlx::TxError;

/// The error type of the transactional bodies under test.
#[derive(Debug)]
pub enum AppError {
    /// A failure the test injected on purpose.
    Injected(&'static str),
    /// The bank's business rule: a balance may not go below zero.
    Insufficient,
    /// Everything from the engine and the driver.
    Tx(TxError),
}

impl From<TxError> for AppError {
    fn from(e: TxError) -> Self {
        AppError::Tx(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Tx(e.into())
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Injected(what) => write!(f, "injected failure: {what}"),
            AppError::Insufficient => f.write_str("insufficient funds"),
            AppError::Tx(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppError::Tx(e) => e.source(),
            _ => None,
        }
    }
}

/// `e` and its sources, joined (for messages and "names the cause" checks).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(" <- ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether a `sqlx::Error` matching `pred` is somewhere in `e`'s source chain.
pub fn has_sqlx_source(
    e: &(dyn std::error::Error + 'static),
    pred: impl Fn(&sqlx::Error) -> bool,
) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<sqlx::Error>().is_some_and(&pred) {
            return true;
        }
        source = s.source();
    }
    false
}

/// Marker in the message of every panic a test injects on purpose.
pub const INJECTED_PANIC: &str = "[injected panic]";

/// Keeps the default panic output for every panic except the injected ones (which would
/// otherwise flood the test output). Process-wide; installed once.
pub fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.contains(INJECTED_PANIC) {
                default(info);
            }
        }));
    });
}
