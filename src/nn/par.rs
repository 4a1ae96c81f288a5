//! The threads one worker computes with (`--threads T`, DESIGN.md decision 10): a rayon
//! pool of its own, as a rank has its `OMP_NUM_THREADS`.
//!
//! Every split made here cuts along the outputs (rows or columns of a result, ranges of
//! parameters) and never along a sum: each value is computed by one thread, adding its
//! terms in the same order as one thread would. So T threads give the same bits as one.

use std::sync::Arc;

use rayon::prelude::*;

/// Fewest values a piece of elementwise work is worth a thread for: below this, waking a
/// thread and joining it costs more than the work (a few µs against about 0.1 ns a value).
const MIN_PIECE: usize = 16 * 1024;

/// A worker's compute threads: itself alone (T = 1: no pool, no hand-over, the code runs
/// on the calling thread as it always did), or a rayon pool of T threads.
#[derive(Debug, Clone)]
pub struct Threads {
    count: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Default for Threads {
    fn default() -> Self {
        Threads::one()
    }
}

impl Threads {
    /// The calling thread alone.
    pub fn one() -> Threads {
        Threads { count: 1, pool: None }
    }

    /// `count` threads: a pool of its own when more than one, each of its threads named
    /// `ddlab-compute-I`, with subnormals flushed (as every training thread), then handed
    /// to `on_start(I)` (e.g. to pin it to a core). Fails only if the OS starts no thread.
    pub fn new(count: usize, on_start: impl Fn(usize) + Send + Sync + 'static) -> Result<Threads, String> {
        if count <= 1 {
            return Ok(Threads::one());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(count)
            .thread_name(|i| format!("ddlab-compute-{i}"))
            .start_handler(move |i| {
                super::flush_denormals();
                on_start(i);
            })
            .build()
            .map_err(|e| format!("could not start {count} compute threads: {e}"))?;
        Ok(Threads {
            count,
            pool: Some(Arc::new(pool)),
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs `f` on these threads: inline for one, inside the pool otherwise (the caller
    /// waits). `f` gets the `Par` to split its work with.
    pub fn run<R: Send>(&self, f: impl FnOnce(Par) -> R + Send) -> R {
        match &self.pool {
            None => f(Par::SERIAL),
            Some(pool) => pool.install(|| f(Par(self.count))),
        }
    }
}

/// Inside `Threads::run`: how many threads the work may be split over. Only `run` makes
/// one with more than one thread, so parallel work never lands on rayon's global pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Par(usize);

impl Par {
    /// One thread: the calling one.
    pub const SERIAL: Par = Par(1);

    pub fn threads(self) -> usize {
        self.0
    }

    /// How `gemm` splits a product: over tiles of the output, never along the sum.
    pub(crate) fn gemm(self) -> gemm::Parallelism {
        if self.0 <= 1 {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(self.0)
        }
    }

    /// The length of the pieces to cut `len` values into (a multiple of `unit`), one per
    /// thread at most, none worth less than `MIN_PIECE` values of work when the whole
    /// costs `work` values; `None` when one piece it is.
    pub fn piece_len(self, len: usize, unit: usize, work: usize) -> Option<usize> {
        let units = len / unit.max(1);
        let pieces = self.0.min(work / MIN_PIECE).min(units);
        (pieces > 1).then(|| units.div_ceil(pieces) * unit.max(1))
    }

    /// Calls `f(start, piece)` on consecutive pieces of `data` (each a whole number of
    /// `unit`s; `start` is the piece's first index), on several threads when the work
    /// (`work`, in values touched) is worth it.
    pub fn pieces_mut<T: Send>(
        self,
        data: &mut [T],
        unit: usize,
        work: usize,
        f: impl Fn(usize, &mut [T]) + Send + Sync,
    ) {
        match self.piece_len(data.len(), unit, work) {
            None => f(0, data),
            Some(len) => data
                .par_chunks_mut(len)
                .enumerate()
                .for_each(|(i, piece)| f(i * len, piece)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_between_units_and_cover_everything_once() {
        let threads = Threads::new(3, |_| {}).unwrap();
        let mut data = vec![0u32; 100_000];
        threads.run(|par| {
            assert_eq!(par.threads(), 3);
            par.pieces_mut(&mut data, 7, 100_000, |start, piece| {
                assert_eq!(start % 7, 0, "a piece starts at a unit");
                piece.iter_mut().enumerate().for_each(|(i, v)| *v += (start + i) as u32);
            })
        });
        assert!(data.iter().enumerate().all(|(i, &v)| v == i as u32));
    }

    #[test]
    fn small_work_stays_on_one_thread_and_one_thread_needs_no_pool() {
        assert_eq!(Par(4).piece_len(1000, 1, 1000), None);
        assert_eq!(Par(4).piece_len(1 << 20, 1, 1 << 20), Some(1 << 18));
        assert_eq!(Par::SERIAL.piece_len(1 << 20, 1, 1 << 20), None);
        let one = Threads::new(1, |_| panic!("no thread is started for one")).unwrap();
        assert!(one.pool.is_none());
        assert_eq!(one.run(|par| par), Par::SERIAL);
    }
}
