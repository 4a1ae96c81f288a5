//! Every collective against a sequential reference, for every worker count 1..=16 and
//! awkward lengths (shorter than N, not divisible by N, large).

use ddlab::comm::{thread_group, AllReduceAlgo, Clock, Collective, Comm, CommError, Link, Transfer};
use proptest::prelude::*;

/// Runs `f` on every rank of `group` (one thread each) and returns the ranks' results.
fn on_ranks<R: Send>(
    group: Vec<ddlab::comm::ThreadTransport>,
    algo: AllReduceAlgo,
    f: impl Fn(&mut Comm<ddlab::comm::ThreadTransport>) -> R + Sync,
) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|t| {
                let f = &f;
                s.spawn(move || f(&mut Comm::new(t, algo)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank panicked")).collect()
    })
}

/// Runs `f` on every rank of a fresh thread group and returns the ranks' results.
fn on_group<R: Send>(
    n: usize,
    algo: AllReduceAlgo,
    link: Option<Link>,
    f: impl Fn(&mut Comm<ddlab::comm::ThreadTransport>) -> R + Sync,
) -> Vec<R> {
    on_ranks(thread_group(n, Clock::start(), link, true), algo, f)
}

/// Integer-valued inputs: every partial sum is exact, so any order of reduction gives
/// exactly the sequential sum — and a wrong element cannot hide behind a tolerance.
fn value(rank: usize, i: usize) -> f32 {
    ((rank * 7 + i * 13) % 17) as f32 - 8.0
}

fn check_sum(n: usize, algo: AllReduceAlgo, len: usize) {
    let results = on_group(n, algo, None, |c| {
        let mut buf: Vec<f32> = (0..len).map(|i| value(c.rank(), i)).collect();
        c.all_reduce_sum(&mut buf).unwrap();
        buf
    });
    let want: Vec<f32> = (0..len).map(|i| (0..n).map(|r| value(r, i)).sum()).collect();
    for (rank, got) in results.iter().enumerate() {
        if let Some(i) = (0..len).find(|&i| got[i] != want[i]) {
            panic!(
                "{algo} N={n} len={len}: rank {rank} element {i} is {} but the sum is {}",
                got[i], want[i]
            );
        }
    }
}

#[test]
fn every_allreduce_matches_sequential_sum_for_worker_counts_1_to_16_and_awkward_lengths() {
    for algo in AllReduceAlgo::ALL {
        for n in 1usize..=16 {
            for len in [1, n - 1, n, n + 1, 1000usize] {
                check_sum(n, algo, len);
            }
        }
    }
}

#[test]
fn every_allreduce_matches_sequential_sum_on_a_million_elements() {
    for algo in AllReduceAlgo::ALL {
        for n in 1..=16 {
            check_sum(n, algo, 1 << 20 | 3);
        }
    }
}

#[test]
fn allreduce_mean_leaves_bit_identical_replicas_for_arbitrary_floats() {
    for algo in AllReduceAlgo::ALL {
        for n in [2, 3, 6, 8] {
            let results = on_group(n, algo, None, |c| {
                let mut buf: Vec<f32> = (0..777)
                    .map(|i| ((c.rank() * 31 + i) as f32 * 0.377).sin() * 1e3)
                    .collect();
                c.all_reduce_mean(&mut buf).unwrap();
                buf
            });
            for r in &results[1..] {
                assert!(
                    r.iter().zip(&results[0]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{algo} N={n}: replicas differ"
                );
            }
            for (i, &got) in results[0].iter().enumerate() {
                let want = (0..n)
                    .map(|r| f64::from(((r * 31 + i) as f32 * 0.377).sin() * 1e3))
                    .sum::<f64>()
                    / n as f64;
                assert!(
                    (f64::from(got) - want).abs() < 1e-3,
                    "{algo} N={n} element {i}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn broadcast_from_every_root_and_barrier() {
    for n in 1..=9 {
        for root in 0..n {
            let results = on_group(n, AllReduceAlgo::Ring, None, |c| {
                let mut buf = vec![c.rank() as f32; 5];
                c.broadcast(&mut buf, root).unwrap();
                c.barrier().unwrap();
                c.barrier().unwrap();
                buf
            });
            assert!(
                results.iter().all(|b| b == &vec![root as f32; 5]),
                "N={n} root={root}: {results:?}"
            );
        }
    }
}

#[test]
fn ring_moves_two_n_minus_one_rounds_of_one_nth_chunks() {
    let n = 4;
    let len = 1000;
    let results = on_group(n, AllReduceAlgo::Ring, None, |c| {
        let mut buf = vec![1.0; len];
        c.all_reduce_sum(&mut buf).unwrap();
        let mut log: Vec<Transfer> = Vec::new();
        c.drain_transfers(&mut log);
        log
    });
    for (rank, log) in results.iter().enumerate() {
        assert_eq!(log.len(), 2 * (n - 1), "rank {rank} sends one chunk per round");
        for (r, t) in log.iter().enumerate() {
            assert_eq!((t.from, t.to, t.round as usize), (rank, (rank + 1) % n, r));
            assert_eq!(t.bytes, (len / n * 4) as u64);
            assert!(t.end_ns >= t.start_ns);
        }
    }
}

#[test]
fn an_aborted_group_releases_every_waiting_rank() {
    // Rank 0 gives up instead of joining the all-reduce; the others must not hang.
    for algo in AllReduceAlgo::ALL {
        let results = on_group(4, algo, None, |c| {
            if c.rank() == 0 {
                c.transport().abort_group();
                return Err(CommError::Aborted);
            }
            let mut buf = vec![1.0; 64];
            c.all_reduce_sum(&mut buf)
        });
        assert!(
            results.iter().all(|r| r == &Err(CommError::Aborted)),
            "{algo}: {results:?}"
        );
    }
}

#[test]
fn emulated_link_delays_every_message_by_at_least_alpha_plus_bytes_over_beta() {
    // 2 ms latency, 1 Gbit/s: the ring at N=3 makes 4 rounds of 1/3 of 30 000 floats.
    let link = Link::new(2000.0, 1.0).unwrap();
    let len = 30_000;
    let results = on_group(3, AllReduceAlgo::Ring, Some(link), |c| {
        let mut buf = vec![1.0; len];
        let t0 = std::time::Instant::now();
        c.all_reduce_sum(&mut buf).unwrap();
        (t0.elapsed(), buf[0])
    });
    let per_round = link.message_time(len / 3 * 4);
    for (elapsed, v) in results {
        assert_eq!(v, 3.0);
        // A lower bound only: sleep never returns early, so this cannot flake.
        assert!(elapsed >= per_round * 4, "{elapsed:?} < 4 × {per_round:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_allreduce_equals_the_sequential_sum(n in 1usize..=16, len in 1usize..3000, algo_i in 0usize..3, seed in 0u64..1000) {
        let algo = AllReduceAlgo::ALL[algo_i];
        let v = |rank: usize, i: usize| (((rank as u64 * 2654435761 + i as u64 * 40503 + seed) % 64) as f32) - 32.0;
        let results = on_group(n, algo, None, |c| {
            let mut buf: Vec<f32> = (0..len).map(|i| v(c.rank(), i)).collect();
            c.all_reduce_sum(&mut buf).unwrap();
            buf
        });
        let want: Vec<f32> = (0..len).map(|i| (0..n).map(|r| v(r, i)).sum()).collect();
        for got in results {
            prop_assert_eq!(&got, &want);
        }
    }
}

#[test]
fn every_algorithm_takes_at_least_what_the_alpha_beta_model_says() {
    // Everyone starts together (a barrier), so the emulated link can only be slower than
    // the model: each round waits α + bytes/β (naive at N=2: one message each way).
    let link = Link::new(300.0, 2.0).unwrap();
    let len = 20_000;
    for (algo, n) in [
        (AllReduceAlgo::Ring, 2),
        (AllReduceAlgo::Ring, 4),
        (AllReduceAlgo::Tree, 2),
        (AllReduceAlgo::Tree, 4),
        (AllReduceAlgo::Naive, 2),
    ] {
        let times = on_group(n, algo, Some(link), |c| {
            let mut buf = vec![1.0; len];
            c.barrier().unwrap();
            let t0 = std::time::Instant::now();
            c.all_reduce_sum(&mut buf).unwrap();
            t0.elapsed()
        });
        let model = ddlab::comm::alpha_beta(algo, n, len * 4, &link);
        let slowest = times.into_iter().max().unwrap();
        assert!(slowest >= model, "{algo} N={n}: {slowest:?} < model {model:?}");
    }
}

#[test]
fn node_aware_algorithms_take_at_least_what_the_alpha_beta_model_says_and_beat_the_flat_ring() {
    // 8 ranks on 2 emulated nodes: a slow link between nodes, a fast one inside.
    // (Slow enough that the sleeps dwarf any scheduling noise of 8 threads on few cores.)
    let (inter, intra) = (Link::new(2000.0, 0.2).unwrap(), Link::new(5.0, 40.0).unwrap());
    let len = 50_000;
    let mut slowest = std::collections::HashMap::new();
    for algo in [AllReduceAlgo::Ring, AllReduceAlgo::Hierarchical, AllReduceAlgo::TwoD] {
        let topology = ddlab::comm::Topology::nodes(8, 2, Some(inter), Some(intra));
        let times = on_ranks(
            ddlab::comm::thread_group_on(topology, Clock::start(), false),
            algo,
            |c| {
                let mut buf = vec![1.0; len];
                c.barrier().unwrap();
                let t0 = std::time::Instant::now();
                c.all_reduce_sum(&mut buf).unwrap();
                t0.elapsed()
            },
        );
        let model = ddlab::comm::alpha_beta_on(algo, 8, 2, len * 4, &inter, Some(&intra));
        let t = times.into_iter().max().unwrap();
        assert!(t >= model, "{algo}: {t:?} < model {model:?}");
        slowest.insert(algo, t);
    }
    // The model says hierarchical moves 2·B/2 across nodes where the ring moves 14·B/8.
    assert!(
        slowest[&AllReduceAlgo::Hierarchical] < slowest[&AllReduceAlgo::Ring],
        "{slowest:?}"
    );
    assert!(
        slowest[&AllReduceAlgo::TwoD] < slowest[&AllReduceAlgo::Ring],
        "{slowest:?}"
    );
}

#[test]
fn sixteen_bit_gradients_halve_the_bytes_keep_replicas_identical_and_sum_in_f32() {
    use ddlab::comm::{Transport, Wire};
    let len = 10_007;
    let value = |rank: usize, i: usize| ((rank * 131 + i * 7) as f32 * 0.0137).sin() * 3.0;
    for wire in [Wire::F16, Wire::Bf16] {
        for algo in AllReduceAlgo::ALL {
            for n in [2, 3, 4, 5, 8] {
                let results = on_group(n, algo, None, |c| {
                    let mut buf: Vec<f32> = (0..len).map(|i| value(c.rank(), i)).collect();
                    // as the engine does: parameters first (exact), then 16-bit gradients
                    let mut params = vec![c.rank() as f32 + 0.1; 3];
                    c.broadcast(&mut params, 0).unwrap();
                    let before = c.bytes_sent();
                    c.transport_mut().set_wire(wire);
                    c.all_reduce_sum(&mut buf).unwrap();
                    (buf, c.bytes_sent() - before, params)
                });
                let f32_bytes = on_group(n, algo, None, |c| {
                    let mut buf = vec![0.0f32; len];
                    c.all_reduce_sum(&mut buf).unwrap();
                    c.bytes_sent()
                });
                for (rank, (buf, bytes, params)) in results.iter().enumerate() {
                    assert_eq!(params, &vec![0.1; 3], "parameters travel exactly");
                    assert_eq!(2 * bytes, f32_bytes[rank], "{wire} {algo} N={n}: half the bytes");
                    assert!(
                        buf.iter().zip(&results[0].0).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{wire} {algo} N={n}: replicas differ"
                    );
                }
                // Each hop rounds once to 8 (bf16) or 11 (f16) significant bits.
                let tol = if wire == Wire::F16 { 2e-3 } else { 2e-2 } * n as f32;
                for (i, &got) in results[0].0.iter().enumerate() {
                    let want: f32 = (0..n).map(|r| value(r, i)).sum();
                    assert!(
                        (got - want).abs() <= tol * 3.0,
                        "{wire} {algo} N={n} [{i}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn f16_overflow_becomes_infinity_never_a_silent_nan() {
    use ddlab::comm::{Transport, Wire};
    for algo in AllReduceAlgo::ALL {
        let results = on_group(2, algo, None, |c| {
            c.transport_mut().set_wire(Wire::F16);
            let mut buf = vec![40_000.0f32, 1.0];
            c.all_reduce_sum(&mut buf).unwrap();
            buf
        });
        for r in results {
            assert!(r[0].is_infinite() && !r[0].is_nan(), "{algo}: {r:?}");
            assert_eq!(r[1], 2.0);
        }
    }
}

/// As `on_group`, on ranks placed on `nodes` emulated nodes.
fn on_nodes<R: Send>(
    n: usize,
    nodes: usize,
    algo: AllReduceAlgo,
    f: impl Fn(&mut Comm<ddlab::comm::ThreadTransport>) -> R + Sync,
) -> Vec<R> {
    let topology = ddlab::comm::Topology::nodes(n, nodes, None, None);
    on_ranks(ddlab::comm::thread_group_on(topology, Clock::start(), true), algo, f)
}

#[test]
fn node_aware_allreduces_match_the_sequential_sum_for_even_and_uneven_nodes() {
    for algo in [AllReduceAlgo::Hierarchical, AllReduceAlgo::TwoD] {
        for (n, nodes) in [
            (1, 1),
            (2, 1),
            (2, 2),
            (4, 2),
            (5, 2),
            (6, 3),
            (7, 3),
            (8, 2),
            (8, 4),
            (9, 4),
            (10, 3),
            (16, 4),
        ] {
            for len in [1, nodes, n - 1, n + 1, 1000, 4099] {
                let len = len.max(1);
                let results = on_nodes(n, nodes, algo, |c| {
                    let mut buf: Vec<f32> = (0..len).map(|i| value(c.rank(), i)).collect();
                    c.all_reduce_sum(&mut buf).unwrap();
                    buf
                });
                let want: Vec<f32> = (0..len).map(|i| (0..n).map(|r| value(r, i)).sum()).collect();
                for (rank, got) in results.iter().enumerate() {
                    assert_eq!(got, &want, "{algo} N={n} nodes={nodes} len={len}: rank {rank}");
                }
            }
        }
    }
}

#[test]
fn hierarchical_sends_only_the_leaders_across_nodes() {
    // 8 ranks on 2 nodes: only ranks 0 and 4 (the leaders) talk across the node boundary.
    let topology = ddlab::comm::Topology::nodes(8, 2, None, None);
    let logs = on_nodes(8, 2, AllReduceAlgo::Hierarchical, |c| {
        let mut buf = vec![1.0; 100];
        c.all_reduce_sum(&mut buf).unwrap();
        let mut log = Vec::new();
        c.drain_transfers(&mut log);
        log
    });
    for t in logs.iter().flatten() {
        if topology.node_of[t.from] != topology.node_of[t.to] {
            assert!([0, 4].contains(&t.from) && [0, 4].contains(&t.to), "{t:?}");
        }
    }
}

#[test]
fn bucket_by_bucket_all_reduce_is_bit_identical_to_the_whole() {
    use ddlab::comm::{all_reduce_window, Window};
    let len = 1003;
    let value = |rank: usize, i: usize| ((rank * 31 + i) as f32 * 0.377).sin() * 10.0;
    for algo in AllReduceAlgo::ALL {
        for (n, nodes) in [(2, 1), (3, 1), (4, 2), (5, 2), (8, 4)] {
            let whole = on_nodes(n, nodes, algo, |c| {
                let mut buf: Vec<f32> = (0..len).map(|i| value(c.rank(), i)).collect();
                c.all_reduce_sum(&mut buf).unwrap();
                buf
            });
            for cuts in [vec![500], vec![1, 2, 3, 1000], vec![333, 666], vec![7, 100, 900]] {
                let bucketed = on_nodes(n, nodes, algo, |c| {
                    let mut buf: Vec<f32> = (0..len).map(|i| value(c.rank(), i)).collect();
                    let mut bounds = vec![0];
                    bounds.extend(&cuts);
                    bounds.push(len);
                    // last bucket first, as backward produces them
                    let mut scratch = Vec::new();
                    for w in bounds.windows(2).rev() {
                        let window = Window {
                            offset: w[0],
                            total: len,
                        };
                        let t = c.transport_mut();
                        all_reduce_window(t, algo, &mut buf[w[0]..w[1]], window, &mut scratch).unwrap();
                    }
                    buf
                });
                for (a, b) in whole.iter().zip(&bucketed) {
                    assert!(
                        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{algo} N={n} nodes={nodes} cuts={cuts:?}"
                    );
                }
            }
        }
    }
}

/// A message is read in the format its sender wrote it in, whatever the receiver's own
/// is: a rank that switched to 16-bit values alone (`set_wire` is safe to call) gets
/// its values through rounded, never reads past the sender's half-size buffer, and the
/// f32 reply reaches the 16-bit rank whole.
#[test]
fn a_message_is_read_in_its_senders_wire_format() {
    use ddlab::comm::{Op, Tag, Transport, Wire};
    let mut group = thread_group(2, Clock::start(), None, false);
    let (mut a, mut b) = (group.remove(0), group.remove(0));
    a.set_wire(Wire::F16);
    let sent: Vec<f32> = (0..1000).map(|i| i as f32 * 0.3).collect();
    let reply: Vec<f32> = (0..1000).map(|i| i as f32 * 0.7 + 0.1).collect();
    let (at_a, at_b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut into = vec![0.0; reply.len()];
            a.send_recv(1, &sent, Tag::default(), 1, &mut into, Op::Copy).unwrap();
            into
        });
        let b = s.spawn(|| {
            let mut into = vec![0.0; sent.len()];
            b.send_recv(0, &reply, Tag::default(), 0, &mut into, Op::Copy).unwrap();
            into
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let rounded: Vec<f32> = sent.iter().map(|&v| Wire::F16.round(v)).collect();
    assert_ne!(rounded, sent, "the values must show the rounding");
    assert_eq!(at_b, rounded);
    assert_eq!(at_a, reply);
}

/// A rank that panics between posting its message and completing it (here: its own
/// receive finds a message of the wrong length) aborts the group and takes its message
/// back or waits out the read before its buffer goes: the peer gets the whole message or
/// `Aborted`, never freed memory, and nobody waits forever.
#[test]
fn a_rank_that_panics_with_a_message_posted_aborts_the_group_and_its_buffer_outlives_the_read() {
    use ddlab::comm::{Op, Tag, Transport};
    let mut group = thread_group(2, Clock::start(), None, false);
    let (mut a, mut b) = (group.remove(0), group.remove(0));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sent = vec![1.5f32; 4096];
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut into = vec![0.0; 4];
            // b sends 3 values where a expects 4: a's receive panics with a's message posted
            let _ = a.send_recv(1, &sent, Tag::default(), 1, &mut into, Op::Copy);
        }))
        .is_err();
        drop(sent); // (the buffer the peer may have been reading)
        let _ = tx.send(panicked);
    });
    let tx_b = {
        let (tx2, rx2) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // b first sends its short message (a takes it and panics), then receives a's.
            let short = b.send(0, &[1.0, 2.0, 3.0], Tag::default());
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut into = vec![0.0f32; 4096];
            let got = b.recv(0, &mut into, Op::Copy);
            let whole = got.is_ok() && into.iter().all(|&v| v == 1.5);
            let _ = tx2.send((short.is_err(), got.err(), whole));
        });
        rx2
    };
    let limit = std::time::Duration::from_secs(10);
    let a_panicked = rx.recv_timeout(limit).expect("rank a ended");
    assert!(a_panicked, "a's receive must panic on a message of the wrong length");
    let (short_aborted, err, whole) = tx_b.recv_timeout(limit).expect("rank b was released, not left waiting");
    assert!(
        short_aborted,
        "b's own send was never completed by a: it must be aborted"
    );
    assert!(
        whole || err == Some(CommError::Aborted),
        "b got a partial or foreign message: {err:?}"
    );
}
