//! Hands freed heap memory back to the kernel. The allocator (mimalloc, see `main.rs`) returns
//! the pages a thread frees by itself, about a second after the free (its purge delay); after
//! bursts (argon2 takes 19 MiB per hash, thousands of streams open at once and each setup
//! allocates and frees rows and buffers) that keeps the resident size close to what is live.
//! `mi_collect`, which [`release_free_heap`] calls, forces it only for the calling thread's
//! heap and the shared arenas, not process-wide as glibc's `malloc_trim` did; a process that
//! measures its own memory sets the delay to zero instead ([`purge_at_once`]).
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often a node collects (on a blocking thread; milliseconds for a heap of a few hundred
/// MiB). A server's memory is settled once this has passed, the purge delay included.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns free pages of the allocator to the kernel.
pub fn release_free_heap() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// mimalloc's `mi_option_purge_delay` (its place in v3's `mi_option_e`; the sys crate
/// names no constant for it).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// Makes the allocator hand freed pages back at once instead of after its purge delay (1 s),
/// for a process that measures its own memory (the load generator with the server inside):
/// `mi_collect` covers only the calling thread, so pages freed by other threads before a
/// sample would otherwise leave during what is measured, and hide it.
pub fn purge_at_once() {
    // SAFETY: setting an option takes no pointers and is allowed at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, 0);
    }
}

/// Trims every [`TRIM_EVERY`] until `stop` is cancelled.
pub async fn trim_periodically(stop: CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let took = tokio::task::spawn_blocking(|| {
            let started = Instant::now();
            release_free_heap();
            started.elapsed()
        })
        .await;
        if let Ok(took) = took {
            tracing::debug!(
                micros = took.as_micros() as u64,
                "returned free heap to the kernel"
            );
        }
    }
}
