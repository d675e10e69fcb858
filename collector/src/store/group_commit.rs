//! Group commit, shared by the stores that write results through one thread of their own
//! (SQLite, PostgreSQL): every insert request waiting when a transaction starts joins it, so a
//! hundred agents share one durable commit instead of paying one each. The store supplies how a
//! group is committed; this module owns the queue, the thread, the replies and the shutdown.

use super::{BatchClock, InsertReport};
use crate::error::CollectorError;
use egresswatch_wire::ProbeResult;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

/// Most insert requests folded into one transaction.
pub(super) const MAX_GROUP: usize = 256;
/// Requests waiting for the writer; beyond it a sender waits (ingest slows, nothing is lost).
const QUEUE: usize = 1024;

/// One `Store::insert_results` call, waiting for its group.
pub(super) struct InsertRequest {
    pub agent_id: String,
    pub results: Vec<ProbeResult>,
    pub clock: BatchClock,
    pub now_unix_ms: i64,
    reply: mpsc::SyncSender<Result<InsertReport, CollectorError>>,
}

/// The writer thread and the queue to it.
pub(super) struct GroupWriter {
    sender: Mutex<Option<mpsc::SyncSender<InsertRequest>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl GroupWriter {
    /// Starts the thread. `commit` stores one group in one transaction and returns a report
    /// per request, in order; when it fails nothing of the group is stored, and every sender
    /// hears so (its agent resends). It may take the requests' results (the new ones move on to
    /// the feed): nothing reads them after it.
    pub(super) fn start(
        mut commit: impl FnMut(&mut [InsertRequest]) -> Result<Vec<InsertReport>, CollectorError>
            + Send
            + 'static,
    ) -> Result<GroupWriter, CollectorError> {
        let (tx, rx) = mpsc::sync_channel::<InsertRequest>(QUEUE);
        let handle = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    match commit(&mut group) {
                        Ok(reports) => {
                            for (request, report) in group.into_iter().zip(reports) {
                                let _ = request.reply.send(Ok(report));
                            }
                        }
                        Err(e) => {
                            let cause = Arc::new(e);
                            for request in group {
                                let _ = request.reply.send(Err(CollectorError::store(
                                    "storing a group of results",
                                    cause.clone(),
                                )));
                            }
                        }
                    }
                }
            })
            .map_err(|e| CollectorError::io("starting the store writer", e))?;
        Ok(GroupWriter {
            sender: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Queues one request and waits until its group is committed (or failed).
    pub(super) fn insert(
        &self,
        agent_id: &str,
        results: Vec<ProbeResult>,
        clock: BatchClock,
        now_unix_ms: i64,
    ) -> Result<InsertReport, CollectorError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = InsertRequest {
            agent_id: agent_id.to_string(),
            results,
            clock,
            now_unix_ms,
            reply,
        };
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| CollectorError::store("inserting results", "the store is closed"))?;
        let stopped = || CollectorError::store("inserting results", "the store writer has stopped");
        sender.send(request).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Finishes the queued writes and stops the thread (graceful shutdown).
    pub(super) fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }
}
