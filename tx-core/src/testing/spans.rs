//! A tracing layer that keeps every span and event, for tests of what the engine traces.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A span as a [`SpanCapture`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedSpan {
    /// The span's name (`"tx"` for the engine's spans).
    pub name: &'static str,
    /// Where the parent is in [`SpanCapture::spans`] (span ids are reused after close;
    /// indexes are not).
    pub parent: Option<usize>,
    /// The fields recorded at creation and later, as text.
    pub fields: BTreeMap<String, String>,
    /// Whether the span has closed.
    pub closed: bool,
}

impl CapturedSpan {
    /// The value of `field`, if recorded.
    #[must_use]
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// Asserts the value of each of `fields` (`None`: not recorded).
    ///
    /// # Panics
    ///
    /// At the first field whose value differs.
    pub fn assert_fields(&self, fields: &[(&str, Option<&str>)]) {
        for (field, value) in fields {
            assert_eq!(self.get(field), *value, "{field} of {self:#?}");
        }
    }
}

/// An event as a [`SpanCapture`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedEvent {
    /// The event's target (`"tx"` for the engine's lines).
    pub target: String,
    /// Its fields as text, the message under `"message"`.
    pub fields: BTreeMap<String, String>,
    /// Where the span it happened in is in [`SpanCapture::spans`].
    pub span: Option<usize>,
}

impl CapturedEvent {
    /// The event's message (empty if it has none).
    #[must_use]
    pub fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

#[derive(Debug, Default)]
struct Captured {
    spans: Vec<CapturedSpan>,
    events: Vec<CapturedEvent>,
    /// Open span id -> its index in `spans`.
    live: HashMap<u64, usize>,
}

impl Captured {
    fn index_of(&self, id: &Id) -> Option<usize> {
        self.live.get(&id.into_u64()).copied()
    }
}

/// A [`Layer`] that records every span it is shown (with its parent and fields) and every
/// event (with the span it happened in), in order. Clones share the record.
///
/// Put it under a [`Registry`](tracing_subscriber::Registry), as the default subscriber of a
/// thread or of the process, then read [`spans`](Self::spans) and
/// [`events`](Self::events). A [per-layer filter](Layer::with_filter) narrows what it sees.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// use tx_core::testing::{NoopManager, SpanCapture};
/// use tx_core::{TransactionTemplate, TxError};
///
/// let capture = SpanCapture::default();
/// let subscriber = tracing_subscriber::registry().with(capture.clone());
/// let template = TransactionTemplate::new(NoopManager::new()).name("shop::order");
/// let r: Result<(), TxError> = tracing::subscriber::with_default(subscriber, || {
///     tokio::runtime::Builder::new_current_thread()
///         .build()
///         .unwrap()
///         .block_on(template.execute(|_| async { Ok(()) }))
/// });
/// r.unwrap();
/// let spans = capture.spans();
/// assert_eq!(spans[0].get("name"), Some("shop::order"));
/// assert_eq!(spans[0].get("outcome"), Some("committed"));
/// assert!(spans[0].closed);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SpanCapture(Arc<Mutex<Captured>>);

impl SpanCapture {
    /// The spans so far, in the order they were created.
    #[must_use]
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.lock().spans.clone()
    }

    /// The events so far, in order.
    #[must_use]
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.lock().events.clone()
    }

    /// The record, also after a panic while it was held (a test that fails in one thread must
    /// not hide what the others traced).
    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fields `record` visits, and the record, locked.
    fn visit(
        &self,
        record: impl FnOnce(&mut Fields<'_>),
    ) -> (BTreeMap<String, String>, MutexGuard<'_, Captured>) {
        let mut fields = BTreeMap::new();
        record(&mut Fields(&mut fields));
        (fields, self.lock())
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanCapture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let (fields, mut c) = self.visit(|f| attrs.record(f));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .and_then(|p| c.index_of(&p.id()));
        let index = c.spans.len();
        c.spans.push(CapturedSpan {
            name: attrs.metadata().name(),
            parent,
            fields,
            closed: false,
        });
        c.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut c = self.lock();
        if let Some(index) = c.index_of(id) {
            values.record(&mut Fields(&mut c.spans[index].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let (fields, mut c) = self.visit(|f| event.record(f));
        let span = ctx.event_span(event).and_then(|s| c.index_of(&s.id()));
        c.events.push(CapturedEvent {
            target: event.metadata().target().to_owned(),
            fields,
            span,
        });
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut c = self.lock();
        if let Some(index) = c.live.remove(&id.into_u64()) {
            c.spans[index].closed = true;
        }
    }
}
