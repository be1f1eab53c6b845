//! A JetStream stream of one test (or bench run), with the sinks and consumers on it.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, stream::StorageType};
use tx_outbox::nats::JetStreamSink;

/// A stream taking the subjects `<prefix>.>`, deleted by [`cleanup`](Stream::cleanup).
#[derive(Clone)]
pub struct Stream {
    pub js: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl Stream {
    /// A new stream under a unique prefix starting with `prefix`; `None` (the caller skips)
    /// when NATS cannot be reached within 5 s.
    pub async fn open(prefix: &str, storage: StorageType) -> Option<Stream> {
        let client = super::within_5s("NATS", async_nats::connect(super::nats_url())).await?;
        let js = jetstream::new(client);
        let prefix = super::unique(prefix);
        let name = prefix.to_uppercase();
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        Some(Stream { js, name, prefix })
    }

    /// A sink on its own connection (optionally through `via`), publishing under the prefix.
    pub async fn sink(&self, via: Option<&str>) -> JetStreamSink {
        let url = via.map_or_else(super::nats_url, str::to_owned);
        JetStreamSink::connect(&url)
            .await
            .expect("connect the sink")
            .ack_timeout(Duration::from_secs(2))
            .subject_prefix(self.prefix.clone())
    }

    /// The durable pull consumer `durable` on every subject of the stream.
    pub async fn consumer(&self, durable: &str, ack_wait: Duration) -> PullConsumer {
        tx_outbox::nats::durable_pull_consumer(&self.js, &self.name, durable, "", ack_wait)
            .await
            .unwrap()
    }

    /// How many messages the stream stores.
    pub async fn count(&self) -> u64 {
        let mut s = self.js.get_stream(&self.name).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    pub async fn cleanup(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}
