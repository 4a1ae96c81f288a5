//! All-reduce algorithms and broadcast, written once over [`Transport`].
//!
//! Each message carries a [`Tag`] (chunk, round) so the lab can animate what moved.
//! Every algorithm leaves bit-identical results on all ranks: each sum is computed once
//! and copied, or computed symmetrically (a + b == b + a in IEEE arithmetic).

use super::{AllReduceAlgo, Collective, Op, Result, Tag, Transfer, Transport};

/// The `c`-th of `n` near-equal chunks of a buffer of `len` elements. Chunks may be empty
/// when `len < n`.
pub fn chunk_range(len: usize, n: usize, c: usize) -> std::ops::Range<usize> {
    (c * len / n)..((c + 1) * len / n)
}

/// Two disjoint chunks of one buffer: one to read (send), one to write (receive into).
fn split_pair(buf: &mut [f32], out: std::ops::Range<usize>, into: std::ops::Range<usize>) -> (&[f32], &mut [f32]) {
    if out.start >= into.end {
        let (lo, hi) = buf.split_at_mut(out.start);
        (&hi[..out.len()], &mut lo[into])
    } else {
        assert!(out.end <= into.start, "chunks {out:?} and {into:?} overlap");
        let (lo, hi) = buf.split_at_mut(into.start);
        (&lo[out], &mut hi[..into.len()])
    }
}

/// Where a slice sits in the whole buffer: all-reducing gradient buckets one by one,
/// chunks are cut as for the whole buffer, so that every element is reduced in the same
/// order (and to the same bits) as in one all-reduce of everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub offset: usize,
    pub total: usize,
}

impl Window {
    pub fn whole(len: usize) -> Window {
        Window { offset: 0, total: len }
    }

    /// Chunk `c` of `n` of the whole buffer, as a range of this window's slice of `len`
    /// (empty when the chunk misses the window).
    fn chunk(self, len: usize, n: usize, c: usize) -> std::ops::Range<usize> {
        let whole = chunk_range(self.total, n, c % n);
        let start = whole.start.clamp(self.offset, self.offset + len) - self.offset;
        let end = whole.end.clamp(self.offset, self.offset + len) - self.offset;
        start..end.max(start)
    }
}

/// Sum-all-reduce with the chosen algorithm. `scratch` is reused across calls (the tree
/// needs one buffer-sized temporary).
pub fn all_reduce_sum<T: Transport + ?Sized>(
    t: &mut T,
    algo: AllReduceAlgo,
    buf: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let whole = Window::whole(buf.len());
    all_reduce_window(t, algo, buf, whole, scratch)
}

/// Sum-all-reduce of the part `window` of a larger buffer (a gradient bucket), with the
/// results bit-identical to those of the whole buffer's all-reduce.
pub fn all_reduce_window<T: Transport + ?Sized>(
    t: &mut T,
    algo: AllReduceAlgo,
    buf: &mut [f32],
    window: Window,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    if t.size() == 1 {
        return Ok(()); // one rank: nothing to do (llm.c's habit)
    }
    t.begin_collective();
    match algo {
        AllReduceAlgo::Ring => {
            let all: Vec<usize> = (0..t.size()).collect();
            ring_over(t, &all, buf, window, 0)
        }
        // Every element meets the same partners in the same order, wherever it sits.
        AllReduceAlgo::Tree => recursive_doubling(t, buf, scratch),
        AllReduceAlgo::Naive => naive(t, buf),
        AllReduceAlgo::Hierarchical => hierarchical(t, buf, window),
        AllReduceAlgo::TwoD => two_dimensional(t, buf, window),
        AllReduceAlgo::Mpi => t.library_all_reduce(buf),
    }
}

/// Ring over a subset of the ranks (`ranks`, in ring order; this rank among them), with
/// rounds numbered from `first_round`: reduce-scatter (N−1 rounds: pass chunk r−i to the
/// right, add the one from the left), then all-gather (N−1 rounds: pass the finished
/// chunks on). After the first phase rank i holds the full sum of chunk i+1; after the
/// second, everybody holds all.
fn ring_over<T: Transport + ?Sized>(
    t: &mut T,
    ranks: &[usize],
    buf: &mut [f32],
    window: Window,
    first_round: u32,
) -> Result<()> {
    let n = ranks.len();
    if n <= 1 {
        return Ok(());
    }
    let me = ranks
        .iter()
        .position(|&r| r == t.rank())
        .expect("this rank is in the ring");
    let len = buf.len();
    let right = ranks[(me + 1) % n];
    let left = ranks[(me + n - 1) % n];
    let chunk = |c: usize| window.chunk(len, n, c);
    for r in 0..n - 1 {
        let send_c = (me + n - r) % n;
        let recv_c = (me + 2 * n - r - 1) % n;
        let (out, into) = split_pair(buf, chunk(send_c), chunk(recv_c));
        let tag = Tag {
            chunk: send_c as u32,
            round: first_round + r as u32,
        };
        t.send_recv(right, out, tag, left, into, Op::Add)?;
    }
    // This rank now holds the full sum of chunk me+1. The others will receive it rounded
    // to the wire format: keep the same rounded values here, so replicas stay identical.
    t.quantize(&mut buf[chunk(me + 1)]);
    for r in 0..n - 1 {
        let send_c = (me + 1 + n - r) % n;
        let recv_c = (me + n - r) % n;
        let (out, into) = split_pair(buf, chunk(send_c), chunk(recv_c));
        let tag = Tag {
            chunk: send_c as u32,
            round: first_round + (n - 1 + r) as u32,
        };
        t.send_recv(right, out, tag, left, into, Op::Copy)?;
    }
    Ok(())
}

/// The ranks of each node, in rank order (nodes in the order of their first rank), and
/// the ranks of this rank's node.
fn nodes_of<T: Transport + ?Sized>(t: &T) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut nodes: Vec<Vec<usize>> = Vec::new();
    for r in 0..t.size() {
        let node = t.node_of(r);
        match nodes.iter_mut().find(|m| t.node_of(m[0]) == node) {
            Some(members) => members.push(r),
            None => nodes.push(vec![r]),
        }
    }
    let mine = nodes
        .iter()
        .find(|m| m.contains(&t.rank()))
        .expect("every rank is in a node")
        .clone();
    (nodes, mine)
}

/// Hierarchical (ChainerMN's `hierarchical`): reduce inside each node to its first rank
/// (the leader), ring all-reduce among the leaders, broadcast inside each node. Only
/// the leaders cross the slow inter-node link.
fn hierarchical<T: Transport + ?Sized>(t: &mut T, buf: &mut [f32], window: Window) -> Result<()> {
    let rank = t.rank();
    let (nodes, members) = nodes_of(t);
    let leader = members[0];
    let leaders: Vec<usize> = nodes.iter().map(|m| m[0]).collect();
    let last_round = 1 + 2 * (leaders.len() as u32).saturating_sub(1);
    if rank == leader {
        for &m in &members[1..] {
            t.recv(m, buf, Op::Add)?;
        }
        ring_over(t, &leaders, buf, window, 1)?;
        t.quantize(buf); // keep what the members will receive
        for &m in &members[1..] {
            t.send(
                m,
                buf,
                Tag {
                    chunk: 0,
                    round: last_round,
                },
            )?;
        }
        Ok(())
    } else {
        t.send(leader, buf, Tag { chunk: 0, round: 0 })?;
        t.recv(leader, buf, Op::Copy)
    }
}

/// Two-dimensional (ChainerMN's `two_dimensional`): split the buffer into S shards (S =
/// the largest node's size) and give each member of a node its shards; reduce every shard
/// inside the node to its owner, all-reduce each shard among its owners across the nodes
/// (a ring per shard), then send every shard back inside the node. Works for uneven nodes.
fn two_dimensional<T: Transport + ?Sized>(t: &mut T, buf: &mut [f32], window: Window) -> Result<()> {
    let rank = t.rank();
    let (nodes, members) = nodes_of(t);
    let shards = nodes.iter().map(Vec::len).max().unwrap_or(1);
    let len = buf.len();
    let owner = |node: &[usize], c: usize| node[c % node.len()];
    // 1. intra-node reduce of every shard to its owner
    for c in 0..shards {
        let o = owner(&members, c);
        let range = window.chunk(len, shards, c);
        if rank == o {
            for &m in members.iter().filter(|&&m| m != o) {
                t.recv(m, &mut buf[range.clone()], Op::Add)?;
            }
        } else {
            t.send(
                o,
                &buf[range],
                Tag {
                    chunk: c as u32,
                    round: 0,
                },
            )?;
        }
    }
    // 2. inter-node all-reduce of each shard among its owners
    for c in 0..shards {
        let owners: Vec<usize> = nodes.iter().map(|node| owner(node, c)).collect();
        if owners.contains(&rank) {
            // The ring cuts the shard as it would cut the whole buffer's shard c.
            let range = window.chunk(len, shards, c);
            let shard = chunk_range(window.total, shards, c);
            let inner = Window {
                offset: (window.offset + range.start).saturating_sub(shard.start),
                total: shard.len(),
            };
            ring_over(t, &owners, &mut buf[range], inner, 1)?;
        }
    }
    // 3. intra-node broadcast of every shard from its owner
    let last_round = 1 + 2 * (nodes.len() as u32).saturating_sub(1);
    for c in 0..shards {
        let o = owner(&members, c);
        let range = window.chunk(len, shards, c);
        if rank == o {
            t.quantize(&mut buf[range.clone()]);
            for &m in members.iter().filter(|&&m| m != o) {
                t.send(
                    m,
                    &buf[range.clone()],
                    Tag {
                        chunk: c as u32,
                        round: last_round,
                    },
                )?;
            }
        } else {
            t.recv(o, &mut buf[range], Op::Copy)?;
        }
    }
    Ok(())
}

/// Recursive doubling: in round k, rank i swaps its whole buffer with rank i XOR 2ᵏ and
/// both add. For N not a power of two, the ranks beyond the largest power of two p first
/// hand their buffer to rank i−p, and get the result back at the end.
fn recursive_doubling<T: Transport + ?Sized>(t: &mut T, buf: &mut [f32], scratch: &mut Vec<f32>) -> Result<()> {
    let (n, rank) = (t.size(), t.rank());
    let p = 1usize << (usize::BITS - 1 - n.leading_zeros()); // largest power of two ≤ n
    let whole = |round: usize| Tag {
        chunk: 0,
        round: round as u32,
    };
    let extra = n > p;
    // Every exchange: round our buffer to the wire format first, so that what we keep is
    // what the partner receives (a + b on one side equals b + a on the other).
    if rank >= p {
        t.quantize(buf);
        t.send(rank - p, buf, whole(0))?;
        return t.recv(rank - p, buf, Op::Copy);
    }
    if extra && rank + p < n {
        t.recv(rank + p, buf, Op::Add)?;
    }
    scratch.clear();
    scratch.resize(buf.len(), 0.0);
    let mut round = usize::from(extra);
    let mut mask = 1;
    while mask < p {
        let partner = rank ^ mask;
        t.quantize(buf);
        t.send_recv(partner, buf, whole(round), partner, scratch, Op::Copy)?;
        // mine + theirs on one side, theirs + mine on the other: the same float.
        buf.iter_mut().zip(scratch.iter()).for_each(|(a, &b)| *a += b);
        mask <<= 1;
        round += 1;
    }
    // The result on the wire format's grid everywhere: what a folded-in rank receives
    // below is then exactly what every rank here keeps.
    t.quantize(buf);
    if extra && rank + p < n {
        t.send(rank + p, buf, whole(round))?;
    }
    Ok(())
}

/// Naive: rank 0 receives everyone's buffer (in rank order) and adds, then sends the sum
/// to each rank in turn. Rank 0's link carries 2(N−1) whole buffers.
fn naive<T: Transport + ?Sized>(t: &mut T, buf: &mut [f32]) -> Result<()> {
    let (n, rank) = (t.size(), t.rank());
    if rank == 0 {
        for from in 1..n {
            t.recv(from, buf, Op::Add)?;
        }
        t.quantize(buf); // keep what the others will receive
        for to in 1..n {
            t.send(to, buf, Tag { chunk: 0, round: 1 })?;
        }
        Ok(())
    } else {
        t.send(0, buf, Tag { chunk: 0, round: 0 })?;
        t.recv(0, buf, Op::Copy)
    }
}

/// Binomial-tree broadcast from `root`: ⌈log₂N⌉ rounds.
pub fn broadcast<T: Transport + ?Sized>(t: &mut T, buf: &mut [f32], root: usize) -> Result<()> {
    t.begin_collective();
    let (n, rank) = (t.size(), t.rank());
    let rel = (rank + n - root) % n; // rank relative to the root
    let mut mask = 1;
    while mask < n {
        if rel & mask != 0 {
            t.recv((rank + n - mask) % n, buf, Op::Copy)?;
            break;
        }
        mask <<= 1;
    }
    // Forward to the subtree below us, the largest first.
    let mut round = mask.trailing_zeros();
    mask >>= 1;
    while mask > 0 {
        if rel + mask < n {
            t.send((rank + mask) % n, buf, Tag { chunk: 0, round })?;
        }
        mask >>= 1;
        round += 1;
    }
    Ok(())
}

/// A [`Collective`] over any [`Transport`], with a chosen all-reduce algorithm.
pub struct Comm<T: Transport> {
    transport: T,
    algo: AllReduceAlgo,
    scratch: Vec<f32>,
}

impl<T: Transport> Comm<T> {
    pub fn new(transport: T, algo: AllReduceAlgo) -> Self {
        Comm {
            transport,
            algo,
            scratch: Vec::new(),
        }
    }
    pub fn algo(&self) -> AllReduceAlgo {
        self.algo
    }
    pub fn transport(&self) -> &T {
        &self.transport
    }
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    pub fn drain_transfers(&mut self, out: &mut Vec<Transfer>) {
        self.transport.drain_transfers(out);
    }
    pub fn bytes_sent(&self) -> u64 {
        self.transport.bytes_sent()
    }
}

impl<T: Transport> Collective for Comm<T> {
    fn rank(&self) -> usize {
        self.transport.rank()
    }
    fn size(&self) -> usize {
        self.transport.size()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        all_reduce_sum(&mut self.transport, self.algo, buf, &mut self.scratch)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        // Parameters travel exactly, whatever format gradients use.
        let wire = self.transport.wire();
        self.transport.set_wire(crate::comm::Wire::F32);
        let result = broadcast(&mut self.transport, buf, root);
        self.transport.set_wire(wire);
        result
    }
    fn barrier(&mut self) -> Result<()> {
        self.transport.barrier()
    }
}
