//! Hiding communication behind backward: the gradient is cut into buckets (whole layers,
//! last layer first, at least `--bucket-kb` each), and a communication thread all-reduces
//! each bucket as soon as backward has produced it, while backward goes on with earlier
//! layers (PyTorch DDP's buckets, Horovod's tensor fusion, ChainerMN's double buffering).
//! Buckets are reduced with the whole buffer's chunking, so the results are bit-identical
//! to one all-reduce after backward.

use std::ops::Range;

use super::ctx::{RunCtx, SegEnd};
use super::{CollectiveKind, Event, Phase};
use crate::comm::{all_reduce_window, BellReceiver, BellSender, Comm, ThreadTransport, Transfer, Transport, Window};
use crate::nn::Mlp;

/// Contiguous gradient ranges in the order backward finishes them: the last layers first.
/// The first bucket also holds the `extra` values past the parameters (the step's flags).
pub fn buckets(mlp: &Mlp, bucket_bytes: usize, extra: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut end = mlp.num_params() + extra;
    let mut start = end;
    for layer in mlp.layers().iter().rev() {
        start = layer.offset;
        if (end - start) * std::mem::size_of::<f32>() >= bucket_bytes {
            out.push(start..end);
            end = start;
        }
    }
    if end > 0 || out.is_empty() {
        out.push(0..end.max(start));
    }
    out.retain(|r| !r.is_empty());
    out
}

/// A bucket to all-reduce (its values travel in `data`).
struct Job {
    bucket: usize,
    step: u64,
    data: Vec<f32>,
    record: bool,
}

/// A bucket done.
struct Done {
    bucket: usize,
    data: Result<Vec<f32>, SegEnd>,
    bytes: u64,
    waited_ns: u64,
}

/// The worker's end of an overlapped exchange.
pub struct Overlap {
    buckets: Vec<Range<usize>>,
    /// Staging buffers, one per bucket, while not in flight.
    staging: Vec<Option<Vec<f32>>>,
    jobs: BellSender<Job>,
    done: BellReceiver<Done>,
    /// Which layer closes each bucket (its lowest).
    closes: Vec<usize>,
    in_flight: usize,
    record: bool,
}

impl Overlap {
    /// Starts the communication thread on `comm` inside `scope`.
    pub fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        ctx: &'env RunCtx<'env>,
        comm: &'env mut Comm<ThreadTransport>,
        rank: usize,
        extra: usize,
        record: bool,
    ) -> Overlap {
        let buckets = buckets(&ctx.mlp, ctx.exp.bucket_kb * 1024, extra);
        let closes = buckets
            .iter()
            .map(|b| ctx.mlp.layers().iter().position(|l| l.offset == b.start).unwrap_or(0))
            .collect();
        let (jobs, job_rx) = crate::comm::channel::<Job>();
        let (done_tx, done) = crate::comm::channel::<Done>();
        let total = ctx.mlp.num_params() + extra;
        let ranges = buckets.clone();
        std::thread::Builder::new()
            .name(format!("ddlab-comm-{rank}"))
            .spawn_scoped(scope, move || {
                // (on a full machine it goes to the group's core; it keeps the usual time
                // slices: measured idle, a worker's short ones cost overlap 4 %)
                crate::comm::gather_with_the_group();
                communicate(ctx, comm, rank, &ranges, total, job_rx, done_tx)
            })
            .expect("the OS can start a thread");
        Overlap {
            staging: buckets.iter().map(|b| Some(vec![0.0; b.len()])).collect(),
            buckets,
            jobs,
            done,
            closes,
            in_flight: 0,
            record,
        }
    }

    /// Called by backward when layer `l`'s gradient is final: stages it, and sends its
    /// bucket off when the bucket is complete. `grads` is the whole buffer with the flags.
    pub fn layer_done(&mut self, l: usize, layer_grads: &[f32], layer_offset: usize, flags: &[f32], step: u64) {
        let Some(b) = self.buckets.iter().position(|r| r.contains(&layer_offset)) else {
            return;
        };
        let bucket = self.buckets[b].clone();
        let Some(staged) = self.staging[b].as_mut() else { return };
        let at = layer_offset - bucket.start;
        staged[at..at + layer_grads.len()].copy_from_slice(layer_grads);
        if self.closes[b] == l {
            let mut data = self.staging[b].take().expect("staged");
            if b == 0 {
                // The first bucket ends with the step's flags, after the last layer.
                let n = data.len() - flags.len();
                data[n..].copy_from_slice(flags);
            }
            self.in_flight += 1;
            let _ = self.jobs.send(Job {
                bucket: b,
                step,
                data,
                record: self.record,
            });
        }
    }

    /// Waits for every bucket in flight and writes the reduced values back into `grads`.
    /// Returns (bytes sent, ns waited for other workers).
    pub fn finish(&mut self, grads: &mut [f32]) -> Result<(u64, u64), SegEnd> {
        let (mut bytes, mut waited) = (0, 0);
        let mut failed = None;
        while self.in_flight > 0 {
            let done = self.done.recv().ok_or(SegEnd::Aborted)?;
            self.in_flight -= 1;
            bytes += done.bytes;
            waited += done.waited_ns;
            match done.data {
                Ok(data) => {
                    grads[self.buckets[done.bucket].clone()].copy_from_slice(&data);
                    self.staging[done.bucket] = Some(data);
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((bytes, waited)),
        }
    }

    pub fn set_recording(&mut self, on: bool) {
        self.record = on;
    }
}

/// The communication thread: all-reduces (mean) each bucket it is sent, in order.
fn communicate(
    ctx: &RunCtx,
    comm: &mut Comm<ThreadTransport>,
    rank: usize,
    buckets: &[Range<usize>],
    total: usize,
    jobs: BellReceiver<Job>,
    done: BellSender<Done>,
) {
    crate::nn::flush_denormals();
    let algo = comm.algo();
    let inv = 1.0 / comm.transport().size() as f32;
    let mut scratch = Vec::new();
    let mut transfers: Vec<Transfer> = Vec::new();
    while let Some(mut job) = jobs.recv() {
        let range = &buckets[job.bucket];
        let (bytes0, waited0) = (comm.bytes_sent(), comm.transport().waited_ns());
        comm.transport_mut().set_recording(job.record);
        let start_ns = ctx.clock.ns();
        let window = Window {
            offset: range.start,
            total,
        };
        let result = all_reduce_window(comm.transport_mut(), algo, &mut job.data, window, &mut scratch);
        job.data.iter_mut().for_each(|v| *v *= inv);
        let end_ns = ctx.clock.ns();
        ctx.sink.send(Event::Phase {
            worker: rank,
            step: job.step,
            phase: Phase::AllReduce,
            start_ns,
            end_ns,
        });
        if job.record {
            comm.drain_transfers(&mut transfers);
            for transfer in transfers.drain(..) {
                ctx.sink.send(Event::Transfer {
                    step: job.step,
                    collective: CollectiveKind::AllReduce,
                    transfer,
                });
            }
        }
        let failed = result.is_err();
        let _ = done.send(Done {
            bucket: job.bucket,
            data: result.map(|_| job.data).map_err(|_| SegEnd::Aborted),
            bytes: comm.bytes_sent() - bytes0,
            waited_ns: comm.transport().waited_ns() - waited0,
        });
        if failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_buffer_last_layers_first() {
        let mlp = Mlp::new(64, &[128, 32], 10);
        let p = mlp.num_params();
        for kb in [1, 4, 16, 1024] {
            let b = buckets(&mlp, kb * 1024, 2);
            assert_eq!(b[0].end, p + 2, "{kb} KB: the first bucket ends with the flags");
            assert_eq!(b.last().unwrap().start, 0, "{kb} KB");
            for w in b.windows(2) {
                assert_eq!(w[1].end, w[0].start, "{kb} KB: contiguous, descending");
            }
        }
        assert_eq!(buckets(&mlp, 1024 * 1024, 2).len(), 1, "one big bucket");
        assert_eq!(buckets(&mlp, 1, 2).len(), 3, "a bucket per layer");
    }
}
