//! The threads that serve connections: one event loop each (a current-thread tokio
//! runtime), the process's main thread being the first. The listener's thread accepts;
//! each connection goes to the next worker in turn and stays there: its tasks, its
//! timers and its socket's readiness are that worker's alone, and only what crosses
//! connections (the hub's channels, a publication's wake-ups) goes between threads.
//!
//! Why not tokio's multi-thread scheduler: with one worker (one core) it spills the
//! tasks that one epoll turn wakes beyond its 256-slot local queue into a global queue
//! it visits only every 61 ticks, so at a few hundred busy connections some wait tens
//! of milliseconds while the rest are served (measured with `scripts/bench`: round-trip
//! p99 ~60 ms against ~9 ms on a current-thread runtime at 500 connections, 1 KiB).
//! A loop per core keeps every connection's turn fair and uses every core.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The extra worker threads (the calling thread's runtime is worker 0).
pub struct Workers {
    others: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Start `n - 1` worker threads beside the caller's.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(false);
        let mut others = Vec::new();
        let mut threads = Vec::new();
        for i in 1..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            others.push(rt.handle().clone());
            let mut stopped = stop.subscribe();
            let (running, started) = std::sync::mpsc::channel();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wsx-worker-{i}"))
                    .spawn(move || {
                        // A current-thread runtime runs its tasks only inside block_on.
                        rt.block_on(async move {
                            let _ = running.send(());
                            let _ = stopped.wait_for(|s| *s).await;
                        });
                    })?,
            );
            // Running (and named) before the server says it is open.
            let _ = started.recv();
        }
        Ok(Workers {
            others,
            threads,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// How many threads serve connections.
    pub fn count(&self) -> usize {
        self.others.len() + 1
    }

    /// Serve `tcp` with `serve` on the next worker, tracked by `tasks`.
    pub fn spawn<F, Fut>(&self, tasks: &TaskTracker, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count();
        if i == 0 {
            tasks.spawn(serve(tcp));
            return;
        }
        // Move the socket to the other loop: out of this one's epoll, into that one's.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "could not hand a connection to a worker");
                return;
            }
        };
        self.others[i - 1].spawn(tasks.track_future(async move {
            match TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => debug!(error = %e, "could not register a connection"),
            }
        }));
    }

    /// Stop the worker threads (their remaining tasks are dropped) and wait for them.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
