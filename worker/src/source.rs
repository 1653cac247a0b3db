//! The apalis backend that feeds workers from our queue.
//!
//! apalis polls a backend only when its service has a free slot (the concurrency
//! layer), so a claim, and with it a lease, is taken only when a task can start at once.
//! An idle source waits inside the queue's `claim` (a blocking pop on Redis, a wake-up
//! on the embedded queue), not in a polling loop. Queue errors are logged and retried
//! after a pause: a Redis outage stalls workers, it does not stop them.

use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{RandomId, Task, WorkerContext};
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use futures::future::BoxFuture;
use operator_store::queue::{Claim, QueueError, SharedQueue};
use tracing::warn;

/// How long one claim call waits for work before the source loops (and notices shutdown).
const CLAIM_WAIT: Duration = Duration::from_secs(1);
/// Pause after a queue error before claiming again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct ClaimSource {
    queue: SharedQueue,
    worker_id: String,
    lease: Duration,
    pending: Option<BoxFuture<'static, Option<Claim>>>,
    closing: Option<BoxFuture<'static, ()>>,
}

impl ClaimSource {
    pub fn new(queue: SharedQueue, worker_id: String, lease: Duration) -> Self {
        Self {
            queue,
            worker_id,
            lease,
            pending: None,
            closing: None,
        }
    }

    fn claim_once(&self) -> BoxFuture<'static, Option<Claim>> {
        let queue = SharedQueue::clone(&self.queue);
        let worker_id = self.worker_id.clone();
        let lease = self.lease;
        Box::pin(async move {
            match queue.claim(&worker_id, lease, CLAIM_WAIT).await {
                Ok(claim) => claim,
                Err(error) => {
                    warn!(error = %error, "claiming from the queue failed; retrying");
                    tokio::time::sleep(ERROR_PAUSE).await;
                    None
                }
            }
        })
    }
}

impl Backend for ClaimSource {
    type Task = Task<Claim>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        context: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if self.pending.is_none() {
                self.pending = Some(self.claim_once());
            }
            let Some(pending) = self.pending.as_mut() else {
                return Poll::Pending;
            };
            match pending.as_mut().poll(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(claim)) => {
                    self.pending = None;
                    return Poll::Ready(Some(Ok(Task::new(claim))));
                }
                // Nothing arrived while waiting: wait again (the claim call itself waits,
                // so this loop does not spin).
                Poll::Ready(None) => self.pending = None,
            }
        }
    }

    fn poll_close(
        &mut self,
        context: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // A claim in flight at shutdown may still succeed: hand such a task straight back.
        if self.closing.is_none() {
            let pending = self.pending.take();
            let queue = SharedQueue::clone(&self.queue);
            self.closing = Some(Box::pin(async move {
                let Some(pending) = pending else { return };
                if let Some(claim) = pending.await
                    && let Err(error) = queue.requeue(&claim, None).await
                {
                    warn!(task_id = %claim.task_id, error = %error, "handing back a claim at shutdown failed; its lease will expire");
                }
            }));
        }
        match self.closing.as_mut() {
            Some(closing) => closing.as_mut().poll(context).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl BackendConfig for ClaimSource {
    type Args = Claim;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
