//! The thread that fdatasyncs segment files while the writer thread commits
//! redb: the two device flushes overlap instead of adding up (a commit
//! already costs redb two with quick repair). One job at a time; the writer
//! always collects the result before its next batch.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam::channel::{self, Receiver, Sender};

pub(crate) struct SyncThread {
    jobs: Option<Sender<Vec<Arc<File>>>>,
    results: Receiver<io::Result<()>>,
    handle: Option<JoinHandle<()>>,
    pending: Pending,
}

/// The sync started last, until `wait` takes its result.
enum Pending {
    Nothing,
    OnThread,
    /// The thread was gone and the sync ran inline.
    Done(io::Result<()>),
}

impl SyncThread {
    pub(crate) fn start() -> io::Result<SyncThread> {
        let (jobs, job_rx) = channel::bounded::<Vec<Arc<File>>>(1);
        let (result_tx, results) = channel::bounded(1);
        let handle = thread::Builder::new()
            .name("spool-segsync".into())
            .spawn(move || {
                for files in job_rx {
                    if result_tx.send(sync_all(&files)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(SyncThread {
            jobs: Some(jobs),
            results,
            handle: Some(handle),
            pending: Pending::Nothing,
        })
    }

    /// Starts fdatasyncing `files` on the thread.
    pub(crate) fn start_sync(&mut self, files: Vec<Arc<File>>) {
        assert!(
            matches!(self.pending, Pending::Nothing),
            "one segment sync at a time"
        );
        let jobs = self.jobs.as_ref().expect("jobs is only taken on drop");
        self.pending = match jobs.send(files) {
            Ok(()) => Pending::OnThread,
            Err(unsent) => Pending::Done(sync_all(&unsent.into_inner())),
        };
    }

    /// The result of the sync started last; `Ok` when none is pending.
    pub(crate) fn wait(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => Ok(()),
            Pending::Done(result) => result,
            Pending::OnThread => self
                .results
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the segment sync thread stopped"))),
        }
    }
}

fn sync_all(files: &[Arc<File>]) -> io::Result<()> {
    files.iter().try_for_each(|file| file.sync_data())
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        let _ = self.wait();
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
