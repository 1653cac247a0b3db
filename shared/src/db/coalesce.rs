//! Group commit for the repository's hot writes: calls made at the same time are
//! written together, in one statement and one commit.
//!
//! A caller hands its item to a [`Coalescer`] and waits for its own answer. A few flush
//! loops each take the first waiting item and every other item already waiting (up to
//! a batch limit), write them with one call of the batch function, and hand each caller
//! its answer. An item that arrives alone is written alone, at once: nothing waits for
//! a batch to fill. Under load, the items that arrive while the loops are busy become
//! the next batch, so one commit (and one WAL flush) covers many tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use sea_orm::DbErr;

use super::RepoError;

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
    pub(super) fn start(flushers: usize, max_batch: usize, write: BatchFn<I, O>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..flushers.max(1) {
            let receiver = Arc::clone(&receiver);
            let write = Arc::clone(&write);
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < max_batch {
                            match receiver.try_recv() {
                                Ok(item) => batch.push(item),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
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
