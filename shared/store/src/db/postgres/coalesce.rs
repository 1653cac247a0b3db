//! Group commit for the repository's hot writes: calls made at the same time are
//! written together, in one statement and one commit.
//!
//! A caller hands its item to a [`Coalescer`] and waits for its own answer. A few flush
//! loops each take the first waiting item and every other item already waiting (up to
//! a batch limit), write them with one call of the batch function, and hand each caller
//! its answer. An item that arrives alone is written alone, at once: nothing waits for
//! a batch to fill (under load, a loop only yields a few times first, see
//! `database.batch.linger_yields`). Under load, the items that arrive while the loops are busy become
//! the next batch, so one commit (and one WAL flush) covers many tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use sea_orm::DbErr;

use operator_config::BatchSettings;

use crate::db::rows::RepoError;

// `database.batch.linger_yields`: under load (the previous batch had more than one
// item), a flush loop that has its next first item yields to the runtime this many
// times before it gathers the rest, so callers already running hand their items in and
// the batch is larger. The queue bench, six runs each way, alternated, with 8: 1,923
// against 1,716 tasks completed per second end to end, with PostgreSQL at 68 % of a
// core instead of 75 % (fewer statements for the same tasks). A yield costs
// microseconds, not a timer tick.

type Reply<O> = oneshot::Sender<Result<O, RepoError>>;
type BatchFuture<O> = Pin<Box<dyn Future<Output = Vec<Result<O, RepoError>>> + Send>>;

/// Writes one batch: one answer per item, in the items' order.
pub(super) type BatchFn<I, O> = Arc<dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync>;

pub(super) struct Coalescer<I, O> {
    sender: mpsc::UnboundedSender<(I, Reply<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts `flushers` loops on the current runtime; they stop when the coalescer is
    /// dropped and the items sent before are written.
    pub(super) fn start(tuning: &BatchSettings, write: BatchFn<I, O>) -> Self {
        let (flushers, max_batch, linger_yields) = (
            tuning.flushers,
            tuning.max_size.max(1),
            tuning.linger_yields,
        );
        let (sender, receiver) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..flushers.max(1) {
            let receiver = Arc::clone(&receiver);
            let write = Arc::clone(&write);
            tokio::spawn(async move {
                // The size of this loop's previous batch.
                let mut previous = 0;
                loop {
                    let batch = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        if previous > 1 {
                            for _ in 0..linger_yields {
                                tokio::task::yield_now().await;
                            }
                        }
                        let mut batch = vec![first];
                        while batch.len() < max_batch {
                            match receiver.try_recv() {
                                Ok(item) => batch.push(item),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    previous = batch.len();
                    let (items, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
                    let answers = write(items).await;
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        // A caller that stopped waiting does not need its answer.
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { sender }
    }

    /// Writes `item` with whatever else is waiting; its own answer.
    pub(super) async fn call(&self, item: I) -> Result<O, RepoError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RepoError::Database(DbErr::Custom("the batch writer stopped".to_owned()));
        self.sender.send((item, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
