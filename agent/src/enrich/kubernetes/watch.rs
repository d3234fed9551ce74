//! List+watch of one kind into its index, with kube-runtime's watcher: a complete list fills a
//! fresh index that replaces the old one (first start, 410 Gone, API-server restart), watch events
//! update it in place, bookmarks keep the resume point fresh, errors back off (0.8s to 30s).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

use super::store::{Index, Shared};

/// Pause before a new watcher after one ended (it does not on its own) or could not resume.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// The watch for one kind; runs until the runtime stops.
pub async fn run<I>(client: kube::Client, shared: Arc<Shared<I>>, fresh: impl Fn() -> I, config: watcher::Config)
where
    I: Index,
    <I::Object as kube::Resource>::DynamicType: Default,
{
    loop {
        let api: Api<I::Object> = Api::all(client.clone());
        let mut stream = watcher(api, config.clone()).default_backoff().boxed();
        // The list in progress; dropped whole if the list fails part-way.
        let mut staging: Option<I> = None;
        let mut dropped = 0u64;
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Init) => {
                    staging = Some(fresh());
                    dropped = 0;
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    if let Some(s) = &mut staging
                        && !s.apply(&obj)
                    {
                        dropped += 1;
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(s) = staging.take() {
                        let (objects, keys) = (s.len(), s.keys());
                        shared.replace(s);
                        if dropped > 0 {
                            shared.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
                            tracing::warn!(kind = I::KIND, dropped, "more objects than enrichment keeps; some ignored");
                        }
                        tracing::info!(kind = I::KIND, objects, addresses = keys, "kubernetes: listed");
                    }
                }
                Ok(watcher::Event::Apply(obj)) => {
                    let mut kept = true;
                    shared.update(|i| kept = i.apply(&obj));
                    shared.stats.events.fetch_add(1, Ordering::Relaxed);
                    if !kept {
                        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(watcher::Event::Delete(obj)) => {
                    shared.update(|i| i.delete(&obj));
                    shared.stats.events.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if let watcher::Error::WatchError(status) = &e
                        && status.code == 410
                    {
                        tracing::info!(kind = I::KIND, "kubernetes: watch expired ({}); re-listing", status.message);
                    } else if is_gone_at_start(&e) {
                        // The watcher would retry the same expired resourceVersion: start afresh.
                        tracing::info!(kind = I::KIND, "kubernetes: resourceVersion expired; re-listing");
                        break;
                    } else {
                        tracing::warn!(kind = I::KIND, "kubernetes: {e} (retrying with backoff)");
                    }
                }
            }
        }
        drop(staging);
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

/// A watch refused with HTTP 410 (rather than a 410 event in the stream).
fn is_gone_at_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}
