//! Scoring requests gathered into batches. One worker thread owns the forward passes: it
//! takes every request waiting when it becomes free (up to `MAX_BATCH`), scores them in one
//! pass, and answers each. Under load this turns many small passes, each paying the fixed
//! cost of every op and competing for the same two cores, into a few larger ones; alone, a
//! request is scored at once.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::error::ApiError;
use super::top_k;
use crate::model::SasRec;

/// The most histories one pass scores.
const MAX_BATCH: usize = 64;

struct Job {
    history: Vec<u32>,
    k: usize,
    exclude_seen: bool,
    reply: oneshot::Sender<Result<Vec<(u32, f32)>, String>>,
}

/// The handle requests are sent through; the worker stops when it is dropped.
pub(super) struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    pub fn start(model: Arc<SasRec>) -> Batcher {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("recsys-scorer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    score(&model, batch);
                }
            })
            .expect("the scoring thread starts");
        Batcher { jobs }
    }

    /// The best `k` items after `history` (ids below the model's item count, non-empty).
    pub async fn recommend(
        &self,
        history: Vec<u32>,
        k: usize,
        exclude_seen: bool,
    ) -> Result<Vec<(u32, f32)>, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            history,
            k,
            exclude_seen,
            reply,
        };
        let gone = || ApiError::internal("the scoring thread has stopped");
        self.jobs.send(job).map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(ApiError::internal)
    }
}

/// Scores a batch and answers every job (a job whose client left is skipped).
fn score(model: &SasRec, batch: Vec<Job>) {
    let histories: Vec<&[u32]> = batch.iter().map(|job| job.history.as_slice()).collect();
    match model.score_histories(&histories) {
        Ok(rows) => {
            for (job, scores) in batch.into_iter().zip(rows) {
                let excluded: &[u32] = if job.exclude_seen { &job.history } else { &[] };
                let _ = job.reply.send(Ok(top_k(&scores, job.k, excluded)));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
    }
}
