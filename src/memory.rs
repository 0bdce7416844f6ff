//! Hands freed heap memory back to the kernel. glibc keeps what the program frees in its
//! per-thread arenas; after bursts (argon2 takes 19 MiB per hash, thousands of streams open
//! at once and each setup allocates and frees rows and buffers) those pages stay resident
//! between the live allocations, and the process holds two to three times the memory its
//! streams use. Trimming now and then keeps the resident size close to what is live.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often a node trims. A trim of a heap of a few hundred MiB takes milliseconds, on a
/// blocking thread.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns free pages of every malloc arena to the kernel (glibc only; elsewhere a no-op).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim takes no pointers and may be called at any time.
        unsafe {
            malloc_trim(0);
        }
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
